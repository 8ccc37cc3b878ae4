//! A sink table in PostgreSQL.
//!
//! Connections come from a small deadpool pool configured by
//! [`tenantsync_store::postgres::driver_config`] (the one place PostgreSQL connections are
//! configured); a connection found closed is replaced on the next call, so a sink reconnects
//! after its database comes back. tenantsync's own tables live in the data table's schema.
//! Rows go in as arrays (`unnest`), a few thousand per statement, so a backlog costs a handful
//! of statements per page.
//!
//! Concurrency: [`SinkTable::prepare`] takes a transaction-scoped advisory lock, so two
//! prepares (a check and a run) never race to create the same table; every write first
//! updates the sink's fence row, whose row lock serialises writers of one sink, and the fence
//! compares epochs after any writer it waited for committed.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tenantsync_core::url::PostgresUrl;
use tenantsync_core::{ErrorClass, TenantId};
use tenantsync_store::postgres::driver_config;
use tenantsync_store::{FeedPosition, StoreError};
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

use super::definition::ColumnType;
use super::table::{
    Changes, ExtraValue, FoundColumn, SinkTable, Statements as Sql, TableSpec, TenantWrite,
    position, shape_difference, to_i64,
};
use crate::PushError;

/// Connections per sink: one writes; a second lets a check or a lag read not wait for it.
const POOL_SIZE: usize = 2;
const POOL_WAIT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Rows per upsert statement: large enough that a page is one statement, small enough that a
/// reset of a large tenant does not build one huge message.
const CHUNK: usize = 5_000;
/// The application name the sink's connections show in `pg_stat_activity`.
const APPLICATION: &str = "tenantsync-sink";

const PREPARE_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('tenantsync-sink-prepare'))";

/// A sink table in a PostgreSQL database.
pub struct PostgresTable {
    pool: Pool,
    spec: TableSpec,
    sql: Sql,
}

fn statements(spec: &TableSpec) -> Sql {
    let (table, schema) = spec.quoted();
    let progress = format!("{schema}tenantsync_sink_progress");
    let fence = format!("{schema}tenantsync_sink_fence");
    let mut create_columns = String::new();
    let (mut insert_columns, mut select, mut unnest, mut aliases, mut set) = (
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    );
    for (i, (name, ty, _)) in spec.columns.iter().enumerate() {
        let (sql_type, array, cast) = match ty {
            ColumnType::Text => ("text", "text[]", ""),
            ColumnType::Bigint => ("bigint", "int8[]", ""),
            ColumnType::Double => ("double precision", "float8[]", ""),
            ColumnType::Boolean => ("boolean", "bool[]", ""),
            ColumnType::Json => ("jsonb", "text[]", "::jsonb"),
        };
        create_columns.push_str(&format!(", \"{name}\" {sql_type}"));
        insert_columns.push_str(&format!(", \"{name}\""));
        select.push_str(&format!(", u.c{i}{cast}"));
        unnest.push_str(&format!(", ${}::{array}", i + 6));
        aliases.push_str(&format!(", c{i}"));
        set.push_str(&format!(", \"{name}\" = excluded.\"{name}\""));
    }
    Sql {
        own_tables: format!(
            "CREATE TABLE IF NOT EXISTS {progress} (
                     sink       text        NOT NULL,
                     tenant     text        NOT NULL,
                     dataset    text        NOT NULL,
                     table_name text        NOT NULL,
                     next_seq   bigint      NOT NULL,
                     live_from  bigint      NOT NULL,
                     updated_at timestamptz NOT NULL,
                     PRIMARY KEY (sink, tenant)
                 );
                 CREATE TABLE IF NOT EXISTS {fence} (
                     sink  text   NOT NULL PRIMARY KEY,
                     epoch bigint NOT NULL
                 )"
        ),
        create_table: format!(
            "CREATE TABLE {table} (
                     tenant     text        NOT NULL,
                     id         text        NOT NULL,
                     version    bigint      NOT NULL,
                     data       jsonb       NOT NULL,
                     updated_at timestamptz NOT NULL{create_columns},
                     PRIMARY KEY (tenant, id)
                 )"
        ),
        clear_new_table: format!("DELETE FROM {progress} WHERE table_name = $1"),
        drop_stale: format!(
            "DELETE FROM {progress} WHERE sink = $1 AND (dataset <> $2 OR table_name <> $3)"
        ),
        read_progress: format!(
            "SELECT tenant, next_seq, live_from FROM {progress} \
                 WHERE sink = $1 AND dataset = $2 AND table_name = $3"
        ),
        fence: format!(
            "INSERT INTO {fence} AS f (sink, epoch) VALUES ($1, $2) \
                 ON CONFLICT (sink) DO UPDATE SET epoch = greatest(f.epoch, excluded.epoch) \
                 RETURNING epoch"
        ),
        reset: format!("DELETE FROM {table} WHERE tenant = $1"),
        upsert: format!(
            "INSERT INTO {table} AS t (tenant, id, version, data, updated_at{insert_columns}) \
                 SELECT $1, u.id, u.version, u.data::jsonb, u.updated_at{select} \
                 FROM unnest($2::text[], $3::int8[], $4::text[], $5::timestamptz[]{unnest}) \
                      AS u(id, version, data, updated_at{aliases}) \
                 ON CONFLICT (tenant, id) DO UPDATE SET version = excluded.version, \
                     data = excluded.data, updated_at = excluded.updated_at{set} \
                 WHERE t.version < excluded.version"
        ),
        delete: format!(
            "DELETE FROM {table} AS t USING unnest($2::text[], $3::int8[]) AS u(id, version) \
                 WHERE t.tenant = $1 AND t.id = u.id AND t.version <= u.version"
        ),
        write_progress: format!(
            "INSERT INTO {progress} \
                     (sink, tenant, dataset, table_name, next_seq, live_from, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, now()) \
                 ON CONFLICT (sink, tenant) DO UPDATE SET dataset = excluded.dataset, \
                     table_name = excluded.table_name, next_seq = excluded.next_seq, \
                     live_from = excluded.live_from, updated_at = excluded.updated_at"
        ),
        table,
    }
}

/// The columns every sink table has, with PostgreSQL's names of their types.
fn wanted_columns(spec: &TableSpec) -> Vec<(String, String)> {
    let mut wanted: Vec<(String, String)> = [
        ("tenant", "text"),
        ("id", "text"),
        ("version", "bigint"),
        ("data", "jsonb"),
        ("updated_at", "timestamp with time zone"),
    ]
    .iter()
    .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
    .collect();
    for (name, ty, _) in &spec.columns {
        let ty = match ty {
            ColumnType::Text => "text",
            ColumnType::Bigint => "bigint",
            ColumnType::Double => "double precision",
            ColumnType::Boolean => "boolean",
            ColumnType::Json => "jsonb",
        };
        wanted.push((name.clone(), ty.to_owned()));
    }
    wanted
}

fn pg(error: tokio_postgres::Error) -> PushError {
    store_error(StoreError::Postgres(error))
}

/// The store's classification of database errors is the one place that decides what is worth
/// retrying; its messages carry no URL.
fn store_error(error: StoreError) -> PushError {
    PushError::sink(error.class(), error.to_string())
}

impl PostgresTable {
    /// A table at `url`; connects on first use.
    pub fn new(url: &PostgresUrl, spec: TableSpec) -> Result<Self, PushError> {
        let config = driver_config(url, APPLICATION)
            .map_err(|e| PushError::Definition(format!("url: {e}")))?;
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
            .map_err(|e| PushError::sink(ErrorClass::Permanent, e.to_string()))?;
        let sql = statements(&spec);
        Ok(Self { pool, spec, sql })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, PushError> {
        self.pool
            .get()
            .await
            .map_err(|e| store_error(StoreError::from(e)))
    }
}

#[async_trait]
impl SinkTable for PostgresTable {
    async fn prepare(&self) -> Result<(), PushError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute(PREPARE_LOCK, &[]).await.map_err(pg)?;
        tx.batch_execute(&self.sql.own_tables).await.map_err(pg)?;
        let table = &self.sql.table;
        let kind: Option<String> = tx
            .query_one(
                "SELECT (SELECT c.relkind::text FROM pg_class c WHERE c.oid = to_regclass($1))",
                &[table],
            )
            .await
            .map_err(pg)?
            .get(0);
        match kind.as_deref() {
            None => {
                tx.batch_execute(&self.sql.create_table).await.map_err(pg)?;
                tx.execute(&self.sql.clear_new_table, &[&self.spec.table])
                    .await
                    .map_err(pg)?;
            }
            Some("r" | "p") => {
                let found = tx
                    .query(
                        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
                             NOT a.attnotnull OR a.atthasdef OR a.attidentity::text <> '' \
                             OR a.attgenerated::text <> '' \
                         FROM pg_attribute a \
                         WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 \
                             AND NOT a.attisdropped \
                         ORDER BY a.attnum",
                        &[table],
                    )
                    .await
                    .map_err(pg)?
                    .iter()
                    .map(|row| FoundColumn {
                        name: row.get(0),
                        ty: row.get(1),
                        optional: row.get(2),
                    })
                    .collect::<Vec<_>>();
                let primary_key: Vec<String> = tx
                    .query(
                        "SELECT a.attname::text \
                         FROM pg_index i \
                         CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                         WHERE i.indrelid = to_regclass($1) AND i.indisprimary \
                         ORDER BY k.ord",
                        &[table],
                    )
                    .await
                    .map_err(pg)?
                    .iter()
                    .map(|row| row.get(0))
                    .collect();
                if let Some(difference) = shape_difference(
                    &self.spec.table,
                    &wanted_columns(&self.spec),
                    &found,
                    &primary_key,
                ) {
                    return Err(PushError::Table(difference));
                }
            }
            Some(_) => {
                return Err(PushError::Table(format!(
                    "{} exists and is not a table",
                    self.spec.table
                )));
            }
        }
        tx.execute(
            &self.sql.drop_stale,
            &[
                &self.spec.sink,
                &self.spec.dataset.as_str(),
                &self.spec.table,
            ],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)
    }

    async fn progress(&self) -> Result<HashMap<TenantId, FeedPosition>, PushError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &self.sql.read_progress,
                &[
                    &self.spec.sink,
                    &self.spec.dataset.as_str(),
                    &self.spec.table,
                ],
            )
            .await
            .map_err(pg)?;
        let mut progress = HashMap::new();
        for row in rows {
            let tenant: String = row.get(0);
            // A tenant id tenantsync did not write there cannot be delivered to: left alone.
            if let Ok(tenant) = TenantId::new(tenant) {
                progress.insert(tenant, position(row.get(1), row.get(2)));
            }
        }
        Ok(progress)
    }

    async fn write_all(&self, epoch: u64, writes: &[TenantWrite<'_>]) -> Result<(), PushError> {
        let epoch_i64 = to_i64(epoch)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let fence = tx.prepare_cached(&self.sql.fence).await.map_err(pg)?;
        let stored: i64 = tx
            .query_one(&fence, &[&self.spec.sink, &epoch_i64])
            .await
            .map_err(pg)?
            .get(0);
        if stored > epoch_i64 {
            // Dropping the transaction rolls it back.
            return Err(PushError::Fenced);
        }
        for write in writes {
            self.write_tenant(&tx, write).await?;
        }
        tx.commit().await.map_err(pg)
    }
}

impl PostgresTable {
    /// One tenant's part of a [`SinkTable::write_all`] transaction.
    async fn write_tenant(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        write: &TenantWrite<'_>,
    ) -> Result<(), PushError> {
        let TenantWrite {
            tenant,
            reset,
            records,
            next,
        } = *write;
        let changes = Changes::of(&self.spec, records);
        let (next_seq, live_from) = (to_i64(next.next_seq)?, to_i64(next.live_from)?);
        let tenant = tenant.as_str();
        if reset {
            let reset = tx.prepare_cached(&self.sql.reset).await.map_err(pg)?;
            tx.execute(&reset, &[&tenant]).await.map_err(pg)?;
        }
        if !changes.rows.is_empty() {
            let upsert = tx.prepare_cached(&self.sql.upsert).await.map_err(pg)?;
            for chunk in changes.rows.chunks(CHUNK) {
                let ids: Vec<&str> = chunk.iter().map(|r| r.id.as_str()).collect();
                let versions: Vec<i64> = chunk.iter().map(|r| r.version).collect();
                let data: Vec<&str> = chunk.iter().map(|r| r.data.as_str()).collect();
                let times: Vec<_> = chunk.iter().map(|r| r.updated_at).collect();
                let extras: Vec<Box<dyn ToSql + Sync + Send>> = (self.spec.columns.iter())
                    .enumerate()
                    .map(|(i, (_, ty, _))| extra_array(*ty, chunk.iter().map(|r| &r.extras[i])))
                    .collect();
                let mut params: Vec<&(dyn ToSql + Sync)> =
                    vec![&tenant, &ids, &versions, &data, &times];
                params.extend(extras.iter().map(|b| &**b as &(dyn ToSql + Sync)));
                tx.execute(&upsert, &params).await.map_err(pg)?;
            }
        }
        if !changes.tombstones.is_empty() {
            let delete = tx.prepare_cached(&self.sql.delete).await.map_err(pg)?;
            let ids: Vec<&str> = changes.tombstones.iter().map(|t| t.0.as_str()).collect();
            let versions: Vec<i64> = changes.tombstones.iter().map(|t| t.1).collect();
            tx.execute(&delete, &[&tenant, &ids, &versions])
                .await
                .map_err(pg)?;
        }
        let progress = tx
            .prepare_cached(&self.sql.write_progress)
            .await
            .map_err(pg)?;
        tx.execute(
            &progress,
            &[
                &self.spec.sink,
                &tenant,
                &self.spec.dataset.as_str(),
                &self.spec.table,
                &next_seq,
                &live_from,
            ],
        )
        .await
        .map_err(pg)?;
        Ok(())
    }
}

/// One extra column's values as an array parameter of the column's type.
fn extra_array<'a>(
    ty: ColumnType,
    values: impl Iterator<Item = &'a ExtraValue>,
) -> Box<dyn ToSql + Sync + Send> {
    let values: Vec<&ExtraValue> = values.collect();
    match ty {
        ColumnType::Bigint => Box::new(
            values
                .iter()
                .map(|v| match v {
                    ExtraValue::Bigint(x) => *x,
                    _ => None,
                })
                .collect::<Vec<Option<i64>>>(),
        ),
        ColumnType::Double => Box::new(
            values
                .iter()
                .map(|v| match v {
                    ExtraValue::Double(x) => *x,
                    _ => None,
                })
                .collect::<Vec<Option<f64>>>(),
        ),
        ColumnType::Boolean => Box::new(
            values
                .iter()
                .map(|v| match v {
                    ExtraValue::Boolean(x) => *x,
                    _ => None,
                })
                .collect::<Vec<Option<bool>>>(),
        ),
        ColumnType::Text | ColumnType::Json => Box::new(
            values
                .iter()
                .map(|v| match v {
                    ExtraValue::Text(x) => x.clone(),
                    _ => None,
                })
                .collect::<Vec<Option<String>>>(),
        ),
    }
}

impl std::fmt::Debug for PostgresTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTable")
            .field("table", &self.spec.table)
            .finish_non_exhaustive()
    }
}
