//! The subscriptions concern on SQLite. Every write runs on the one writer thread, so an ack
//! and a delete of its subscription never interleave.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Row, TransactionBehavior, params};
use tenantsync_core::SubscriptionName;

use super::SqliteStore;
use crate::rows;
use crate::{Progress, StoreError, Subscription, SubscriptionStore};

const SELECT_SUBSCRIPTION: &str =
    "SELECT name, datasets, tenants, created_at FROM subscriptions WHERE name = ?1";
const SELECT_PROGRESS: &str = "SELECT dataset, tenant, next_seq, live_from, acked_at \
     FROM subscription_progress WHERE name = ?1 ORDER BY dataset, tenant";
const ACK: &str = "INSERT INTO subscription_progress \
     (name, dataset, tenant, next_seq, live_from, acked_at) \
     SELECT ?1, ?3, ?4, ?5, ?6, ?7 WHERE EXISTS \
     (SELECT 1 FROM subscriptions WHERE name = ?1 AND created_at = ?2) \
     ON CONFLICT (name, dataset, tenant) DO UPDATE SET next_seq = excluded.next_seq, \
     live_from = excluded.live_from, acked_at = excluded.acked_at";

type SubscriptionRow = (String, String, Option<String>, i64);

fn subscription_row(row: &Row<'_>) -> rusqlite::Result<SubscriptionRow> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

#[async_trait]
impl SubscriptionStore for SqliteStore {
    async fn put_subscription(
        &self,
        subscription: &Subscription,
    ) -> Result<(Subscription, bool), StoreError> {
        let subscription = subscription.clone();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (datasets, tenants) = rows::subscription_to_row(&subscription)?;
            let name = subscription.name.as_str();
            let existing: Option<i64> = tx
                .query_row(
                    "SELECT created_at FROM subscriptions WHERE name = ?1",
                    [name],
                    |row| row.get(0),
                )
                .optional()?;
            let created = existing.is_none();
            let created_at = existing.unwrap_or(rows::to_micros(subscription.created_at));
            tx.execute(
                "INSERT INTO subscriptions (name, datasets, tenants, created_at) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (name) DO UPDATE \
                 SET datasets = excluded.datasets, tenants = excluded.tenants",
                params![name, datasets, tenants, created_at],
            )?;
            tx.commit()?;
            Ok((
                Subscription {
                    created_at: rows::from_micros("subscription created_at", created_at)?,
                    ..subscription
                },
                created,
            ))
        })
        .await
    }

    async fn subscription(
        &self,
        name: &SubscriptionName,
    ) -> Result<Option<Subscription>, StoreError> {
        let name = name.clone();
        self.read(move |conn| {
            conn.prepare_cached(SELECT_SUBSCRIPTION)?
                .query_row([name.as_str()], subscription_row)
                .optional()?
                .map(|(name, datasets, tenants, created_at)| {
                    rows::subscription_from_row(name, &datasets, tenants.as_deref(), created_at)
                })
                .transpose()
        })
        .await
    }

    async fn subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT name, datasets, tenants, created_at FROM subscriptions ORDER BY name",
            )?
            .query_map([], subscription_row)?
            .map(|row| {
                let (name, datasets, tenants, created_at) = row?;
                rows::subscription_from_row(name, &datasets, tenants.as_deref(), created_at)
            })
            .collect()
        })
        .await
    }

    async fn delete_subscription(&self, name: &SubscriptionName) -> Result<bool, StoreError> {
        let name = name.clone();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "DELETE FROM subscription_progress WHERE name = ?1",
                [name.as_str()],
            )?;
            let deleted =
                tx.execute("DELETE FROM subscriptions WHERE name = ?1", [name.as_str()])?;
            tx.commit()?;
            Ok(deleted > 0)
        })
        .await
    }

    async fn subscription_progress(
        &self,
        name: &SubscriptionName,
    ) -> Result<Vec<Progress>, StoreError> {
        let name = name.clone();
        self.read(move |conn| {
            conn.prepare_cached(SELECT_PROGRESS)?
                .query_map([name.as_str()], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                })?
                .map(|row| {
                    let (dataset, tenant, next_seq, live_from, acked_at) = row?;
                    rows::progress_from_row(dataset, tenant, next_seq, live_from, acked_at)
                })
                .collect()
        })
        .await
    }

    async fn ack(
        &self,
        name: &SubscriptionName,
        created_at: DateTime<Utc>,
        progress: &Progress,
    ) -> Result<bool, StoreError> {
        let (name, progress) = (name.clone(), progress.clone());
        self.write(move |conn| {
            let written = conn.prepare_cached(ACK)?.execute(params![
                name.as_str(),
                rows::to_micros(created_at),
                progress.dataset.as_str(),
                progress.tenant.as_str(),
                rows::to_i64("progress seq", progress.position.next_seq)?,
                rows::to_i64("progress live_from", progress.position.live_from)?,
                rows::to_micros(progress.acked_at),
            ])?;
            Ok(written > 0)
        })
        .await
    }
}
