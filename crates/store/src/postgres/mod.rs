//! The PostgreSQL backend, for deployments that outgrow one machine or already run PostgreSQL.
//!
//! Connections come from a deadpool pool; tables live in the first schema of the URL's
//! `search_path` (`?options=-csearch_path%3Dmy_schema`), so several stores can share a database.
//! Concurrency is the database's: each concern's module says which statement or lock makes its
//! contract hold when several processes call at once, and pipelines its statements so that a
//! call costs a handful of round trips whatever its size. Pipelined statements are joined with
//! `tokio::try_join!(biased; ...)`, in the order they are sent: once a statement of a
//! transaction fails, the server refuses every later one with 25P02 (transaction aborted), and
//! only the first error says what went wrong and whether a retry may help. Unbiased, `try_join!`
//! would return whichever failed future it happens to poll first.
//!
//! This module holds the pool, migrations and what several concerns share (the erasure gate,
//! row helpers); each concern's trait is implemented in a module of its own, with its
//! statements. None of them may decide what a change does itself: that is [`crate::apply`].

mod access;
mod coordination;
mod erasure;
mod feed;
mod push;
mod records;
mod rejected;
mod schemas;
mod sources;
mod subscriptions;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tenantsync_core::Record;
use tenantsync_core::url::{PostgresUrl, UrlError};
use tokio_postgres::{NoTls, Row};
use tracing::info;

use crate::StoreError;
use crate::migrations::{self, Migration};
use crate::rows::RecordRow;

const POOL_SIZE: usize = 16;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a caller waits for a pooled connection before giving up with a (transient) error.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// Serialises migrations across processes; per schema, so stores in different schemas of one
/// database do not wait for each other.
const MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock(\
     hashtext('tenantsync-store-migrations:' || coalesce(current_schema(), '')))";

/// Keeps `finish_erasure` (which takes the gate exclusively, first) from committing while a
/// batch that saw an erasure running is still writing; otherwise the refusals that batch stores
/// would outlive the erasure. A batch that takes the gate reads the running erasures again
/// after it: if a finish committed in between, that read (and the loads, read again) see it.
/// A lock rather than row locks on `tenant_erasures`: PostgreSQL queues a shared request
/// behind a waiting exclusive one, so a busy tenant's batches cannot starve the finish. One
/// gate per schema; only batches of tenants being erased take it.
const ERASURE_GATE_SHARED: &str = "SELECT pg_advisory_xact_lock_shared(\
     hashtext('tenantsync-store-erasures:' || coalesce(current_schema(), '')))";
const ERASURE_GATE: &str = "SELECT pg_advisory_xact_lock(\
     hashtext('tenantsync-store-erasures:' || coalesce(current_schema(), '')))";

/// The PostgreSQL master store.
pub struct PostgresStore {
    pool: Pool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

/// The driver's configuration of `url`, with a connect timeout of 10 s and `application` as the
/// application name unless the URL sets them. Every PostgreSQL connection tenantsync opens (the
/// store's, an outbox's) is configured here. Its errors name the option, never its value.
pub fn driver_config(
    url: &PostgresUrl,
    application: &str,
) -> Result<tokio_postgres::Config, UrlError> {
    let mut config: tokio_postgres::Config = url
        .connection_string()
        .parse()
        .map_err(|e: tokio_postgres::Error| UrlError::refused_by_driver(&e))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name(application);
    }
    Ok(config)
}

impl PostgresStore {
    /// Connects to the database at `url` (a `postgres://` URL; `options=-csearch_path%3DS`
    /// selects the schema) and applies missing migrations. TLS is not supported yet.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_url(&url.parse()?).await
    }

    /// [`PostgresStore::connect`] to a parsed URL.
    pub async fn connect_url(url: &PostgresUrl) -> Result<Self, StoreError> {
        let config = driver_config(url, "tenantsync")?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        let mut client = pool.get().await?;
        migrate(&mut client).await?;
        Ok(Self { pool })
    }
}

async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute(MIGRATION_LOCK, &[]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tenantsync_migrations (
             version    bigint      NOT NULL PRIMARY KEY,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let current: i64 = tx
        .query_one(
            "SELECT coalesce(max(version), 0)::bigint FROM tenantsync_migrations",
            &[],
        )
        .await?
        .get(0);
    let known = migrations::latest(migrations::POSTGRES);
    if current > known {
        return Err(StoreError::Corrupt {
            what: "schema version",
            detail: format!(
                "database is at schema version {current}, newer than this build's {known}"
            ),
        });
    }
    for Migration { version, name, sql } in migrations::POSTGRES {
        if *version <= current {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO tenantsync_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        info!(migration = name, "applied postgres migration");
    }
    tx.commit().await?;
    Ok(())
}

fn record_row(row: &Row) -> Result<Record, StoreError> {
    RecordRow {
        tenant: row.try_get(0)?,
        id: row.try_get(1)?,
        version: row.try_get(2)?,
        data: row.try_get(3)?,
        updated_at: row.try_get(4)?,
        change_id: row.try_get(5)?,
    }
    .into_record()
}

/// The entry a 1-based `WITH ORDINALITY` slot number points at.
fn slot<T>(slots: &mut [T], ordinal: i64) -> Result<&mut T, StoreError> {
    usize::try_from(ordinal - 1)
        .ok()
        .and_then(|i| slots.get_mut(i))
        .ok_or_else(|| corrupt_id("lookup slot", format!("slot {ordinal} was not asked for")))
}

fn corrupt_id(what: &'static str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: detail.to_string(),
    }
}
