//! The subscriptions concern on PostgreSQL. An `ack` takes a share lock on its subscription's
//! row and deleting a subscription deletes the row before its progress, so an ack racing a
//! delete never leaves progress behind.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tenantsync_core::SubscriptionName;
use tokio_postgres::Row;

use super::PostgresStore;
use crate::rows;
use crate::{Progress, StoreError, Subscription, SubscriptionStore};

/// `xmax = 0` holds for a row this statement inserted, not for one it updated: it tells a
/// creation from an update in one statement, race-free.
const PUT_SUBSCRIPTION: &str = "INSERT INTO subscriptions (name, datasets, tenants, created_at) \
     VALUES ($1, $2, $3, $4) \
     ON CONFLICT (name) DO UPDATE SET datasets = excluded.datasets, tenants = excluded.tenants \
     RETURNING name, datasets, tenants, created_at, xmax = 0";
const SELECT_SUBSCRIPTION: &str =
    "SELECT name, datasets, tenants, created_at FROM subscriptions WHERE name = $1";
const SELECT_SUBSCRIPTIONS: &str =
    "SELECT name, datasets, tenants, created_at FROM subscriptions ORDER BY name";
/// First of the two statements of a delete: it takes the row lock an `ack` waits for.
const DELETE_SUBSCRIPTION: &str = "DELETE FROM subscriptions WHERE name = $1";
/// Second, with a snapshot taken after the first got its lock: it sees every progress row an
/// ack committed before.
const DELETE_PROGRESS: &str = "DELETE FROM subscription_progress WHERE name = $1";
const SELECT_PROGRESS: &str = "SELECT dataset, tenant, next_seq, live_from, acked_at \
     FROM subscription_progress WHERE name = $1 ORDER BY dataset, tenant";
/// Writes only if the subscription exists with this `created_at`; `FOR SHARE` makes a
/// concurrent delete either wait for this ack (and then delete its row) or win (and this one
/// writes nothing).
const ACK: &str = "INSERT INTO subscription_progress \
     (name, dataset, tenant, next_seq, live_from, acked_at) \
     SELECT name, $3, $4, $5, $6, $7 FROM subscriptions \
     WHERE name = $1 AND created_at = $2 FOR SHARE \
     ON CONFLICT (name, dataset, tenant) DO UPDATE SET next_seq = excluded.next_seq, \
     live_from = excluded.live_from, acked_at = excluded.acked_at";

/// A row of (name, datasets, tenants, created_at).
fn subscription_row(row: &Row) -> Result<Subscription, StoreError> {
    let datasets: &str = row.try_get(1)?;
    let tenants: Option<&str> = row.try_get(2)?;
    rows::subscription_from_row(row.try_get(0)?, datasets, tenants, row.try_get(3)?)
}

#[async_trait]
impl SubscriptionStore for PostgresStore {
    async fn put_subscription(
        &self,
        subscription: &Subscription,
    ) -> Result<(Subscription, bool), StoreError> {
        let (datasets, tenants) = rows::subscription_to_row(subscription)?;
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(PUT_SUBSCRIPTION).await?;
        let row = client
            .query_one(
                &stmt,
                &[
                    &subscription.name.as_str(),
                    &datasets,
                    &tenants,
                    &rows::to_micros(subscription.created_at),
                ],
            )
            .await?;
        Ok((subscription_row(&row)?, row.try_get(4)?))
    }

    async fn subscription(
        &self,
        name: &SubscriptionName,
    ) -> Result<Option<Subscription>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_SUBSCRIPTION).await?;
        client
            .query_opt(&stmt, &[&name.as_str()])
            .await?
            .as_ref()
            .map(subscription_row)
            .transpose()
    }

    async fn subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_SUBSCRIPTIONS).await?;
        client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(subscription_row)
            .collect()
    }

    async fn delete_subscription(&self, name: &SubscriptionName) -> Result<bool, StoreError> {
        let name = name.as_str();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let (delete_subscription, delete_progress) = tokio::try_join!(
            biased;
            tx.prepare_cached(DELETE_SUBSCRIPTION),
            tx.prepare_cached(DELETE_PROGRESS),
        )?;
        // Pipelined; the server runs them in this order, which is what keeps acks out.
        let (deleted, _) = tokio::try_join!(
            biased;
            async { tx.execute(&delete_subscription, &[&name]).await },
            async { tx.execute(&delete_progress, &[&name]).await },
        )?;
        tx.commit().await?;
        Ok(deleted > 0)
    }

    async fn subscription_progress(
        &self,
        name: &SubscriptionName,
    ) -> Result<Vec<Progress>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SELECT_PROGRESS).await?;
        client
            .query(&stmt, &[&name.as_str()])
            .await?
            .iter()
            .map(|row| {
                rows::progress_from_row(
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                    row.try_get(4)?,
                )
            })
            .collect()
    }

    async fn ack(
        &self,
        name: &SubscriptionName,
        created_at: DateTime<Utc>,
        progress: &Progress,
    ) -> Result<bool, StoreError> {
        let next_seq = rows::to_i64("next_seq", progress.position.next_seq)?;
        let live_from = rows::to_i64("live_from", progress.position.live_from)?;
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(ACK).await?;
        let written = client
            .execute(
                &stmt,
                &[
                    &name.as_str(),
                    &rows::to_micros(created_at),
                    &progress.dataset.as_str(),
                    &progress.tenant.as_str(),
                    &next_seq,
                    &live_from,
                    &rows::to_micros(progress.acked_at),
                ],
            )
            .await?;
        Ok(written > 0)
    }
}
