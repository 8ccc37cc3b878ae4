//! A sink table in a SQLite file (`sqlite://FILE`).
//!
//! One connection per sink, in WAL mode (the consumer's readers never wait for the sink's
//! writes) with a busy timeout (a consumer's own write holding the lock delays the sink instead
//! of failing it). Every call runs on the blocking pool, never on the async runtime's threads.
//! Transactions begin IMMEDIATE, taking the write lock first, so two sinks on one file (or a
//! check beside a run) serialise instead of failing to upgrade a read lock. The file's
//! directory must exist: a sink never creates directories.
//!
//! SQLite has no `jsonb` or `timestamptz`: `data` is JSON text, `updated_at` RFC 3339 text
//! (UTC, to the microsecond), booleans 0 or 1. Types are compared by SQLite's affinity.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params, params_from_iter};
use tenantsync_core::{ErrorClass, TenantId};
use tenantsync_store::{FeedPosition, StoreError};

use super::definition::ColumnType;
use super::table::{
    Changes, ExtraValue, FoundColumn, SinkTable, Statements as Sql, TableSpec, TenantWrite,
    position, rfc3339, shape_difference, to_i64,
};
use crate::PushError;

const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A sink table in a SQLite database file.
pub struct SqliteTable {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    spec: TableSpec,
    sql: Sql,
}

/// SQLite's type of a column of `ty`, as created.
fn sqlite_type(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Text | ColumnType::Json => "TEXT",
        ColumnType::Bigint | ColumnType::Boolean => "INTEGER",
        ColumnType::Double => "REAL",
    }
}

/// The affinity SQLite gives a declared type (section 3.1 of "Datatypes In SQLite").
fn affinity(declared: &str) -> &'static str {
    let t = declared.to_ascii_uppercase();
    if t.contains("INT") {
        "INTEGER"
    } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
        "TEXT"
    } else if t.contains("BLOB") || t.is_empty() {
        "BLOB"
    } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
        "REAL"
    } else {
        "NUMERIC"
    }
}

fn statements(spec: &TableSpec) -> Sql {
    let (table, _) = spec.quoted();
    let (mut create, mut insert, mut values, mut set) =
        (String::new(), String::new(), String::new(), String::new());
    for (i, (name, ty, _)) in spec.columns.iter().enumerate() {
        create.push_str(&format!(", \"{name}\" {}", sqlite_type(*ty)));
        insert.push_str(&format!(", \"{name}\""));
        values.push_str(&format!(", ?{}", i + 6));
        set.push_str(&format!(", \"{name}\" = excluded.\"{name}\""));
    }
    Sql {
        own_tables: "CREATE TABLE IF NOT EXISTS tenantsync_sink_progress (
                     sink       TEXT    NOT NULL,
                     tenant     TEXT    NOT NULL,
                     dataset    TEXT    NOT NULL,
                     table_name TEXT    NOT NULL,
                     next_seq   INTEGER NOT NULL,
                     live_from  INTEGER NOT NULL,
                     updated_at TEXT    NOT NULL,
                     PRIMARY KEY (sink, tenant)
                 );
                 CREATE TABLE IF NOT EXISTS tenantsync_sink_fence (
                     sink  TEXT    NOT NULL PRIMARY KEY,
                     epoch INTEGER NOT NULL
                 )"
        .to_owned(),
        create_table: format!(
            "CREATE TABLE {table} (
                     tenant     TEXT    NOT NULL,
                     id         TEXT    NOT NULL,
                     version    INTEGER NOT NULL,
                     data       TEXT    NOT NULL,
                     updated_at TEXT    NOT NULL{create},
                     PRIMARY KEY (tenant, id)
                 )"
        ),
        clear_new_table: "DELETE FROM tenantsync_sink_progress WHERE table_name = ?1".to_owned(),
        drop_stale: "DELETE FROM tenantsync_sink_progress \
                 WHERE sink = ?1 AND (dataset <> ?2 OR table_name <> ?3)"
            .to_owned(),
        read_progress: "SELECT tenant, next_seq, live_from FROM tenantsync_sink_progress \
                 WHERE sink = ?1 AND dataset = ?2 AND table_name = ?3"
            .to_owned(),
        fence: "INSERT INTO tenantsync_sink_fence (sink, epoch) VALUES (?1, ?2) \
                 ON CONFLICT (sink) DO UPDATE SET epoch = max(epoch, excluded.epoch) \
                 RETURNING epoch"
            .to_owned(),
        reset: format!("DELETE FROM {table} WHERE tenant = ?1"),
        upsert: format!(
            "INSERT INTO {table} AS t (tenant, id, version, data, updated_at{insert}) \
                 VALUES (?1, ?2, ?3, ?4, ?5{values}) \
                 ON CONFLICT (tenant, id) DO UPDATE SET version = excluded.version, \
                     data = excluded.data, updated_at = excluded.updated_at{set} \
                 WHERE t.version < excluded.version"
        ),
        delete: format!("DELETE FROM {table} WHERE tenant = ?1 AND id = ?2 AND version <= ?3"),
        write_progress: "INSERT INTO tenantsync_sink_progress \
                     (sink, tenant, dataset, table_name, next_seq, live_from, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (sink, tenant) DO UPDATE SET dataset = excluded.dataset, \
                     table_name = excluded.table_name, next_seq = excluded.next_seq, \
                     live_from = excluded.live_from, updated_at = excluded.updated_at"
            .to_owned(),
        table,
    }
}

fn sq(error: rusqlite::Error) -> PushError {
    let error = StoreError::Sqlite(error);
    PushError::sink(error.class(), error.to_string())
}

impl SqliteTable {
    /// Opens (or creates) the database file; its directory must exist.
    pub async fn open(path: PathBuf, spec: TableSpec) -> Result<Self, PushError> {
        let sql = statements(&spec);
        let conn = blocking(move || {
            let conn = Connection::open(&path).map_err(sq)?;
            conn.busy_timeout(BUSY_TIMEOUT).map_err(sq)?;
            let mode: String = conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
                .map_err(sq)?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(PushError::sink(
                    ErrorClass::Permanent,
                    format!("cannot enable the WAL journal (got {mode})"),
                ));
            }
            Ok(conn)
        })
        .await?;
        Ok(Self {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                spec,
                sql,
            }),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &TableSpec, &Sql) -> Result<T, PushError> + Send + 'static,
    ) -> Result<T, PushError> {
        let inner = self.inner.clone();
        blocking(move || {
            let mut conn = inner.conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut conn, &inner.spec, &inner.sql)
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PushError> + Send + 'static,
) -> Result<T, PushError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        PushError::sink(
            ErrorClass::Transient,
            format!("the sink's database call did not finish: {e}"),
        )
    })?
}

#[async_trait]
impl SinkTable for SqliteTable {
    async fn prepare(&self) -> Result<(), PushError> {
        self.with(|conn, spec, sql| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sq)?;
            tx.execute_batch(&sql.own_tables).map_err(sq)?;
            let kind: Option<String> = tx
                .query_row(
                    "SELECT type FROM sqlite_master WHERE name = ?1",
                    [&spec.table],
                    |row| row.get(0),
                )
                .optional()
                .map_err(sq)?;
            match kind.as_deref() {
                None => {
                    tx.execute_batch(&sql.create_table).map_err(sq)?;
                    tx.execute(&sql.clear_new_table, [&spec.table])
                        .map_err(sq)?;
                }
                Some("table") => {
                    let mut found = Vec::new();
                    let mut primary_key: Vec<(i64, String)> = Vec::new();
                    let mut info = tx
                        .prepare(&format!("PRAGMA table_info({})", sql.table))
                        .map_err(sq)?;
                    let mut rows = info.query([]).map_err(sq)?;
                    while let Some(row) = rows.next().map_err(sq)? {
                        let name: String = row.get(1).map_err(sq)?;
                        let declared: String = row.get(2).map_err(sq)?;
                        let not_null: bool = row.get(3).map_err(sq)?;
                        let default: Option<String> = row.get(4).map_err(sq)?;
                        let pk: i64 = row.get(5).map_err(sq)?;
                        if pk > 0 {
                            primary_key.push((pk, name.clone()));
                        }
                        found.push(FoundColumn {
                            name,
                            ty: affinity(&declared).to_owned(),
                            optional: !not_null || default.is_some(),
                        });
                    }
                    drop(rows);
                    drop(info);
                    primary_key.sort();
                    let primary_key: Vec<String> =
                        primary_key.into_iter().map(|(_, n)| n).collect();
                    let mut wanted: Vec<(String, String)> = [
                        ("tenant", "TEXT"),
                        ("id", "TEXT"),
                        ("version", "INTEGER"),
                        ("data", "TEXT"),
                        ("updated_at", "TEXT"),
                    ]
                    .iter()
                    .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
                    .collect();
                    for (name, ty, _) in &spec.columns {
                        wanted.push((name.clone(), sqlite_type(*ty).to_owned()));
                    }
                    if let Some(difference) =
                        shape_difference(&spec.table, &wanted, &found, &primary_key)
                    {
                        return Err(PushError::Table(difference));
                    }
                }
                Some(other) => {
                    return Err(PushError::Table(format!(
                        "{} exists and is a {other}, not a table",
                        spec.table
                    )));
                }
            }
            tx.execute(
                &sql.drop_stale,
                params![spec.sink, spec.dataset.as_str(), spec.table],
            )
            .map_err(sq)?;
            tx.commit().map_err(sq)
        })
        .await
    }

    async fn progress(&self) -> Result<HashMap<TenantId, FeedPosition>, PushError> {
        self.with(|conn, spec, sql| {
            let mut statement = conn.prepare_cached(&sql.read_progress).map_err(sq)?;
            let rows = statement
                .query_map(
                    params![spec.sink, spec.dataset.as_str(), spec.table],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, i64>(1)?,
                            row.get::<_, i64>(2)?,
                        ))
                    },
                )
                .map_err(sq)?;
            let mut progress = HashMap::new();
            for row in rows {
                let (tenant, next_seq, live_from) = row.map_err(sq)?;
                // A tenant id tenantsync did not write there cannot be delivered to.
                if let Ok(tenant) = TenantId::new(tenant) {
                    progress.insert(tenant, position(next_seq, live_from));
                }
            }
            Ok(progress)
        })
        .await
    }

    async fn write_all(&self, epoch: u64, writes: &[TenantWrite<'_>]) -> Result<(), PushError> {
        let epoch = to_i64(epoch)?;
        let mut owned = Vec::with_capacity(writes.len());
        for w in writes {
            owned.push((
                w.tenant.as_str().to_owned(),
                w.reset,
                Changes::of(&self.inner.spec, w.records),
                to_i64(w.next.next_seq)?,
                to_i64(w.next.live_from)?,
            ));
        }
        self.with(move |conn, spec, sql| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sq)?;
            let stored: i64 = tx
                .prepare_cached(&sql.fence)
                .map_err(sq)?
                .query_row(params![spec.sink, epoch], |row| row.get(0))
                .map_err(sq)?;
            if stored > epoch {
                // Dropping the transaction rolls it back.
                return Err(PushError::Fenced);
            }
            for (tenant, reset, changes, next_seq, live_from) in &owned {
                if *reset {
                    tx.execute(&sql.reset, [tenant]).map_err(sq)?;
                }
                let mut upsert = tx.prepare_cached(&sql.upsert).map_err(sq)?;
                for row in &changes.rows {
                    let mut values = vec![
                        SqlValue::Text(tenant.clone()),
                        SqlValue::Text(row.id.clone()),
                        SqlValue::Integer(row.version),
                        SqlValue::Text(row.data.clone()),
                        SqlValue::Text(rfc3339(row.updated_at)),
                    ];
                    values.extend(row.extras.iter().map(sql_value));
                    upsert.execute(params_from_iter(values)).map_err(sq)?;
                }
                let mut delete = tx.prepare_cached(&sql.delete).map_err(sq)?;
                for (id, version) in &changes.tombstones {
                    delete.execute(params![tenant, id, version]).map_err(sq)?;
                }
                tx.prepare_cached(&sql.write_progress)
                    .map_err(sq)?
                    .execute(params![
                        spec.sink,
                        tenant,
                        spec.dataset.as_str(),
                        spec.table,
                        next_seq,
                        live_from,
                        rfc3339(Utc::now()),
                    ])
                    .map_err(sq)?;
            }
            tx.commit().map_err(sq)
        })
        .await
    }
}

fn sql_value(value: &ExtraValue) -> SqlValue {
    match value {
        ExtraValue::Text(Some(s)) => SqlValue::Text(s.clone()),
        ExtraValue::Bigint(Some(n)) => SqlValue::Integer(*n),
        ExtraValue::Double(Some(x)) => SqlValue::Real(*x),
        ExtraValue::Boolean(Some(b)) => SqlValue::Integer(i64::from(*b)),
        _ => SqlValue::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::affinity;

    #[test]
    fn affinities_follow_sqlite() {
        for (declared, expected) in [
            ("INTEGER", "INTEGER"),
            ("bigint", "INTEGER"),
            ("TEXT", "TEXT"),
            ("varchar(10)", "TEXT"),
            ("REAL", "REAL"),
            ("double precision", "REAL"),
            ("", "BLOB"),
            ("boolean", "NUMERIC"),
        ] {
            assert_eq!(affinity(declared), expected, "{declared}");
        }
    }
}
