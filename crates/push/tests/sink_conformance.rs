//! The conformance suite of `SinkTable`, written once and run on every backend: SQLite always,
//! PostgreSQL when `TENANTSYNC_TEST_POSTGRES` names a server (each case in a database of its
//! own, created for it and dropped after). One function per clause of the trait's contract.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{TimeZone, Utc};
use serde_json::{Value, json};
use tenantsync_core::{ChangeId, EntityId, Record, TenantId};
use tenantsync_push::PushError;
use tenantsync_push::sinks::definition::{Definition, SinkSpec};
use tenantsync_push::sinks::table::{self, SinkTable, TenantWrite};
use tenantsync_push::sinks::{CheckError, check};
use tenantsync_store::{FeedPosition, FeedRecord};

const POSTGRES_ENV: &str = "TENANTSYNC_TEST_POSTGRES";

enum Backend {
    Sqlite {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
    },
    Postgres {
        base: String,
        name: String,
        client: tokio_postgres::Client,
    },
}

/// A sink database of the case's own.
struct Harness {
    backend: Backend,
    url: String,
}

static DATABASES: AtomicU64 = AtomicU64::new(0);

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {POSTGRES_ENV}: {e}"));
    tokio::spawn(conn);
    client
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[after_scheme..]
        .find('/')
        .map_or(base.len(), |i| after_scheme + i);
    format!("{}/{name}{query}", &base[..host_end])
}

impl Harness {
    async fn sqlite() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sink.db");
        let url = format!("sqlite://{}", path.display());
        Some(Self {
            backend: Backend::Sqlite { _dir: dir, path },
            url,
        })
    }

    async fn postgres() -> Option<Self> {
        let Ok(base) = std::env::var(POSTGRES_ENV) else {
            eprintln!("skipping PostgreSQL test: {POSTGRES_ENV} is not set");
            return None;
        };
        let name = format!(
            "ts_sink_{}_{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed),
            Utc::now().timestamp_micros()
        );
        connect(&base)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        let url = with_database(&base, &name);
        let client = connect(&url).await;
        Some(Self {
            backend: Backend::Postgres { base, name, client },
            url,
        })
    }

    fn definition(&self, table: &str, columns: Value) -> Definition {
        let kind = match self.backend {
            Backend::Sqlite { .. } => "sqlite",
            Backend::Postgres { .. } => "postgres",
        };
        let spec: SinkSpec = serde_json::from_value(json!({
            "kind": kind, "url": self.url, "dataset": "items", "tenants": "*",
            "table": table, "columns": columns,
        }))
        .unwrap();
        Definition::from_spec(spec).unwrap()
    }

    async fn open(&self, sink: &str, definition: &Definition) -> Box<dyn SinkTable> {
        table::open(sink, definition).await.unwrap()
    }

    /// Runs SQL of the test's own: `sqlite` on SQLite, `postgres` on PostgreSQL.
    async fn exec(&self, sqlite: &str, postgres: &str) {
        match &self.backend {
            Backend::Sqlite { path, .. } => {
                let conn = rusqlite::Connection::open(path).unwrap();
                conn.busy_timeout(std::time::Duration::from_secs(10))
                    .unwrap();
                conn.execute_batch(sqlite).unwrap();
            }
            Backend::Postgres { client, .. } => client.batch_execute(postgres).await.unwrap(),
        }
    }

    /// The table's rows: (tenant, id, version, data), by tenant and id.
    async fn rows(&self, table: &str) -> Vec<(String, String, i64, Value)> {
        let sql = format!("SELECT tenant, id, version, data FROM {table} ORDER BY tenant, id");
        let raw: Vec<(String, String, i64, String)> = match &self.backend {
            Backend::Sqlite { path, .. } => {
                let conn = rusqlite::Connection::open(path).unwrap();
                let mut statement = conn.prepare(&sql).unwrap();
                statement
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect()
            }
            Backend::Postgres { client, .. } => client
                .query(&sql.replace("data FROM", "data::text FROM"), &[])
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                .collect(),
        };
        raw.into_iter()
            .map(|(t, i, v, d)| (t, i, v, serde_json::from_str(&d).unwrap()))
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Backend::Postgres { base, name, .. } = &self.backend {
            // Drop may run inside the test's runtime, which cannot be blocked on.
            let (base, name) = (base.clone(), name.clone());
            let done = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let client = connect(&base).await;
                    if let Err(e) = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await
                    {
                        eprintln!("could not drop test database {name}: {e}");
                    }
                });
            });
            let _ = done.join();
        }
    }
}

fn tenant(t: &str) -> TenantId {
    TenantId::new(t).unwrap()
}

/// A record of tenant `t` (`data: None`: a tombstone).
fn rec(seq: u64, t: &str, id: &str, version: u64, data: Option<Value>) -> FeedRecord {
    FeedRecord {
        seq,
        record: Record {
            tenant: tenant(t),
            id: EntityId::new(id).unwrap(),
            version,
            data: data.map(|d| d.as_object().unwrap().clone()),
            updated_at: Utc.timestamp_opt(1_700_000_000 + seq as i64, 0).unwrap(),
            change_id: ChangeId::new(format!("c{seq}")).unwrap(),
        },
    }
}

/// Writes under epoch 1, without a reset, moving the tenant to `next`.
async fn put(t: &dyn SinkTable, tenant: &TenantId, records: &[FeedRecord], next: u64) {
    t.write(1, tenant, false, records, pos(next)).await.unwrap();
}

fn pos(next_seq: u64) -> FeedPosition {
    FeedPosition {
        next_seq,
        live_from: 1,
    }
}

fn row(t: &str, id: &str, version: i64, data: Value) -> (String, String, i64, Value) {
    (t.into(), id.into(), version, data)
}

fn progress_of(entries: &[(&str, u64)]) -> HashMap<TenantId, FeedPosition> {
    entries.iter().map(|(t, p)| (tenant(t), pos(*p))).collect()
}

async fn creates_and_reuses_the_table(h: &Harness) {
    let d = h.definition("items", json!({}));
    let t = h.open("s1", &d).await;
    t.prepare().await.unwrap();
    t.prepare().await.unwrap();
    assert_eq!(h.rows("items").await, vec![]);
    assert_eq!(t.progress().await.unwrap(), HashMap::new());
    put(
        &*t,
        &tenant("a"),
        &[rec(0, "a", "x", 1, Some(json!({"n": 1})))],
        1,
    )
    .await;
    drop(t);
    let t = h.open("s1", &d).await;
    t.prepare().await.unwrap();
    assert_eq!(
        h.rows("items").await,
        vec![row("a", "x", 1, json!({"n": 1}))]
    );
    assert_eq!(t.progress().await.unwrap(), progress_of(&[("a", 1)]));
    check(&d).await.unwrap();
}

async fn refuses_a_wrong_shape(h: &Harness) {
    let cases = [
        (
            "no_time",
            "CREATE TABLE no_time (tenant TEXT, id TEXT, version INTEGER, data TEXT, PRIMARY KEY (tenant, id))",
            "CREATE TABLE no_time (tenant text, id text, version bigint, data jsonb, PRIMARY KEY (tenant, id))",
            "column updated_at is missing",
        ),
        (
            "text_version",
            "CREATE TABLE text_version (tenant TEXT, id TEXT, version TEXT, data TEXT, updated_at TEXT, PRIMARY KEY (tenant, id))",
            "CREATE TABLE text_version (tenant text, id text, version text, data jsonb, updated_at timestamptz, PRIMARY KEY (tenant, id))",
            "column version is",
        ),
        (
            "id_key",
            "CREATE TABLE id_key (tenant TEXT, id TEXT PRIMARY KEY, version INTEGER, data TEXT, updated_at TEXT)",
            "CREATE TABLE id_key (tenant text, id text PRIMARY KEY, version bigint, data jsonb, updated_at timestamptz)",
            "primary key must be (tenant, id); it is (id)",
        ),
        (
            "strict_extra",
            "CREATE TABLE strict_extra (tenant TEXT, id TEXT, version INTEGER, data TEXT, updated_at TEXT, owner TEXT NOT NULL, PRIMARY KEY (tenant, id))",
            "CREATE TABLE strict_extra (tenant text, id text, version bigint, data jsonb, updated_at timestamptz, owner text NOT NULL, PRIMARY KEY (tenant, id))",
            "column owner",
        ),
    ];
    for (table, sqlite, postgres, expected) in cases {
        h.exec(sqlite, postgres).await;
        let d = h.definition(table, json!({}));
        let t = h.open("s1", &d).await;
        match t.prepare().await {
            Err(PushError::Table(message)) => {
                assert!(message.contains(expected), "{table}: {message}");
                assert!(message.contains(table), "{table}: {message}");
            }
            other => panic!("{table}: a table of another shape is refused, not {other:?}"),
        }
        match check(&d).await {
            Err(e @ CheckError::Table(_)) => {
                assert_eq!(e.field(), "table");
                assert!(e.to_string().contains(expected), "{e}");
            }
            other => panic!("{table}: check refuses the table, not {other:?}"),
        }
    }
    // A column the consumer added that inserts may leave out is fine.
    h.exec(
        "CREATE TABLE roomy (tenant TEXT, id TEXT, version INTEGER, data TEXT, updated_at TEXT, note TEXT, PRIMARY KEY (tenant, id))",
        "CREATE TABLE roomy (tenant text, id text, version bigint, data jsonb, updated_at timestamptz, note text, PRIMARY KEY (tenant, id))",
    )
    .await;
    let t = h.open("s2", &h.definition("roomy", json!({}))).await;
    t.prepare().await.unwrap();
    put(
        &*t,
        &tenant("a"),
        &[rec(0, "a", "x", 1, Some(json!({})))],
        1,
    )
    .await;
    // An extra column of the definition that the table lacks is named.
    let d = h.definition(
        "roomy",
        json!({"price": {"field": "price", "type": "double"}}),
    );
    match h.open("s3", &d).await.prepare().await {
        Err(PushError::Table(message)) => {
            assert!(message.contains("column price is missing"), "{message}")
        }
        other => panic!("a missing extra column is refused, not {other:?}"),
    }
}

async fn never_goes_back_in_version(h: &Harness) {
    let t = h.open("s1", &h.definition("items", json!({}))).await;
    t.prepare().await.unwrap();
    let a = tenant("a");
    put(&*t, &a, &[rec(5, "a", "x", 2, Some(json!({"n": 2})))], 6).await;
    // An older version, then the same version with other data: neither changes the row.
    put(&*t, &a, &[rec(3, "a", "x", 1, Some(json!({"n": 1})))], 7).await;
    put(&*t, &a, &[rec(4, "a", "x", 2, Some(json!({"n": 9})))], 8).await;
    assert_eq!(
        h.rows("items").await,
        vec![row("a", "x", 2, json!({"n": 2}))]
    );
    assert_eq!(t.progress().await.unwrap(), progress_of(&[("a", 8)]));
    put(&*t, &a, &[rec(9, "a", "x", 3, Some(json!({"n": 3})))], 10).await;
    assert_eq!(
        h.rows("items").await,
        vec![row("a", "x", 3, json!({"n": 3}))]
    );
}

async fn deletes_only_when_not_newer(h: &Harness) {
    let t = h.open("s1", &h.definition("items", json!({}))).await;
    t.prepare().await.unwrap();
    let a = tenant("a");
    put(
        &*t,
        &a,
        &[
            rec(0, "a", "x", 3, Some(json!({}))),
            rec(1, "a", "y", 1, Some(json!({}))),
        ],
        2,
    )
    .await;
    // A tombstone older than the row leaves it.
    put(&*t, &a, &[rec(2, "a", "x", 2, None)], 3).await;
    assert_eq!(
        h.rows("items").await,
        vec![row("a", "x", 3, json!({})), row("a", "y", 1, json!({}))]
    );
    // Of the same version or newer, it deletes; of a record not there, it does nothing.
    put(
        &*t,
        &a,
        &[
            rec(3, "a", "x", 3, None),
            rec(4, "a", "y", 5, None),
            rec(5, "a", "z", 1, None),
        ],
        6,
    )
    .await;
    assert_eq!(h.rows("items").await, vec![]);
    assert_eq!(t.progress().await.unwrap(), progress_of(&[("a", 6)]));
}

async fn a_record_twice_in_one_write_keeps_its_highest_version(h: &Harness) {
    let t = h.open("s1", &h.definition("items", json!({}))).await;
    t.prepare().await.unwrap();
    put(
        &*t,
        &tenant("a"),
        &[
            rec(0, "a", "x", 1, Some(json!({"n": 1}))),
            rec(3, "a", "x", 3, Some(json!({"n": 3}))),
            rec(1, "a", "x", 2, Some(json!({"n": 2}))),
            rec(2, "a", "y", 2, Some(json!({"n": 2}))),
            rec(4, "a", "y", 3, None),
        ],
        5,
    )
    .await;
    assert_eq!(
        h.rows("items").await,
        vec![row("a", "x", 3, json!({"n": 3}))]
    );
}

async fn reset_replaces_the_tenants_rows(h: &Harness) {
    let t = h.open("s1", &h.definition("items", json!({}))).await;
    t.prepare().await.unwrap();
    put(
        &*t,
        &tenant("a"),
        &[
            rec(0, "a", "x", 1, Some(json!({}))),
            rec(1, "a", "y", 4, Some(json!({}))),
        ],
        2,
    )
    .await;
    put(
        &*t,
        &tenant("b"),
        &[rec(0, "b", "x", 1, Some(json!({})))],
        1,
    )
    .await;
    // The new snapshot holds y at a lower version than the table (versions restart after a
    // record was deleted and purged) and z; x is gone.
    t.write(
        1,
        &tenant("a"),
        true,
        &[
            rec(7, "a", "y", 1, Some(json!({"new": true}))),
            rec(8, "a", "z", 1, Some(json!({}))),
        ],
        pos(9),
    )
    .await
    .unwrap();
    assert_eq!(
        h.rows("items").await,
        vec![
            row("a", "y", 1, json!({"new": true})),
            row("a", "z", 1, json!({})),
            row("b", "x", 1, json!({})),
        ]
    );
    assert_eq!(
        t.progress().await.unwrap(),
        progress_of(&[("a", 9), ("b", 1)])
    );
}

async fn progress_is_saved_with_the_rows(h: &Harness) {
    let t = h.open("s1", &h.definition("items", json!({}))).await;
    t.prepare().await.unwrap();
    let a = tenant("a");
    put(&*t, &a, &[rec(0, "a", "x", 1, Some(json!({})))], 1).await;
    // A row the database refuses fails the whole write.
    h.exec(
        "CREATE TRIGGER poison BEFORE INSERT ON items WHEN NEW.id = 'poison' \
         BEGIN SELECT RAISE(ABORT, 'poisoned'); END;",
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.id = 'poison' THEN RAISE EXCEPTION 'poisoned'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER poison BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION poison();",
    )
    .await;
    let failed = t
        .write(
            1,
            &a,
            true,
            &[
                rec(1, "a", "y", 1, Some(json!({}))),
                rec(2, "a", "poison", 1, Some(json!({}))),
            ],
            pos(3),
        )
        .await;
    assert!(matches!(failed, Err(PushError::Sink { .. })), "{failed:?}");
    assert_eq!(h.rows("items").await, vec![row("a", "x", 1, json!({}))]);
    assert_eq!(t.progress().await.unwrap(), progress_of(&[("a", 1)]));
}

async fn several_tenants_commit_together(h: &Harness) {
    let t = h.open("s1", &h.definition("items", json!({}))).await;
    t.prepare().await.unwrap();
    let (a, b) = (tenant("a"), tenant("b"));
    let (ra, rb) = (
        [rec(0, "a", "x", 1, Some(json!({})))],
        [rec(0, "b", "y", 2, Some(json!({})))],
    );
    t.write_all(
        1,
        &[
            TenantWrite {
                tenant: &a,
                reset: false,
                records: &ra,
                next: pos(1),
            },
            TenantWrite {
                tenant: &b,
                reset: true,
                records: &rb,
                next: pos(1),
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        h.rows("items").await,
        vec![row("a", "x", 1, json!({})), row("b", "y", 2, json!({}))]
    );
    assert_eq!(
        t.progress().await.unwrap(),
        progress_of(&[("a", 1), ("b", 1)])
    );
    // One tenant's refused row fails every tenant's part of the write.
    h.exec(
        "CREATE TRIGGER poison BEFORE INSERT ON items WHEN NEW.id = 'poison' \
         BEGIN SELECT RAISE(ABORT, 'poisoned'); END;",
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.id = 'poison' THEN RAISE EXCEPTION 'poisoned'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER poison BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION poison();",
    )
    .await;
    let (ra, rb) = (
        [rec(1, "a", "z", 1, Some(json!({})))],
        [rec(1, "b", "poison", 1, Some(json!({})))],
    );
    let failed = t
        .write_all(
            1,
            &[
                TenantWrite {
                    tenant: &a,
                    reset: true,
                    records: &ra,
                    next: pos(2),
                },
                TenantWrite {
                    tenant: &b,
                    reset: false,
                    records: &rb,
                    next: pos(2),
                },
            ],
        )
        .await;
    assert!(matches!(failed, Err(PushError::Sink { .. })), "{failed:?}");
    assert_eq!(
        h.rows("items").await,
        vec![row("a", "x", 1, json!({})), row("b", "y", 2, json!({}))]
    );
    assert_eq!(
        t.progress().await.unwrap(),
        progress_of(&[("a", 1), ("b", 1)])
    );
}

async fn fencing(h: &Harness) {
    let d = h.definition("items", json!({}));
    let t = h.open("s1", &d).await;
    t.prepare().await.unwrap();
    let a = tenant("a");
    t.write(
        5,
        &a,
        false,
        &[rec(0, "a", "x", 1, Some(json!({})))],
        pos(1),
    )
    .await
    .unwrap();
    // An older holder, on a connection of its own, writes nothing.
    let old = h.open("s1", &d).await;
    let fenced = old
        .write(4, &a, true, &[rec(1, "a", "y", 1, Some(json!({})))], pos(2))
        .await;
    assert!(matches!(fenced, Err(PushError::Fenced)), "{fenced:?}");
    assert_eq!(h.rows("items").await, vec![row("a", "x", 1, json!({}))]);
    assert_eq!(t.progress().await.unwrap(), progress_of(&[("a", 1)]));
    // The same epoch goes on; a higher one takes over and fences the lower.
    t.write(
        5,
        &a,
        false,
        &[rec(1, "a", "y", 1, Some(json!({})))],
        pos(2),
    )
    .await
    .unwrap();
    old.write(
        6,
        &a,
        false,
        &[rec(2, "a", "z", 1, Some(json!({})))],
        pos(3),
    )
    .await
    .unwrap();
    let fenced = t.write(5, &a, false, &[], pos(4)).await;
    assert!(matches!(fenced, Err(PushError::Fenced)), "{fenced:?}");
    assert_eq!(t.progress().await.unwrap(), progress_of(&[("a", 3)]));
    // Fences are per sink: another sink on the table starts at its own.
    let other = h.open("s2", &d).await;
    other
        .write(
            1,
            &tenant("b"),
            false,
            &[rec(0, "b", "x", 1, Some(json!({})))],
            pos(1),
        )
        .await
        .unwrap();
}

async fn a_recreated_table_clears_progress(h: &Harness) {
    let d = h.definition("items", json!({}));
    let other = h.definition("others", json!({}));
    let (t, o) = (h.open("s1", &d).await, h.open("s2", &other).await);
    t.prepare().await.unwrap();
    o.prepare().await.unwrap();
    put(
        &*t,
        &tenant("a"),
        &[rec(0, "a", "x", 1, Some(json!({})))],
        3,
    )
    .await;
    put(
        &*o,
        &tenant("a"),
        &[rec(0, "a", "x", 1, Some(json!({})))],
        4,
    )
    .await;
    h.exec("DROP TABLE items", "DROP TABLE items").await;
    t.prepare().await.unwrap();
    assert_eq!(t.progress().await.unwrap(), HashMap::new());
    assert_eq!(h.rows("items").await, vec![]);
    o.prepare().await.unwrap();
    assert_eq!(o.progress().await.unwrap(), progress_of(&[("a", 4)]));
    // The sink moved to another table (or dataset): its old positions do not apply there.
    let moved = h.open("s2", &d).await;
    moved.prepare().await.unwrap();
    assert_eq!(moved.progress().await.unwrap(), HashMap::new());
    assert_eq!(
        h.open("s2", &other).await.progress().await.unwrap(),
        HashMap::new()
    );
}

/// (id, price, qty, active, label, tags, order)
type Extras = (
    String,
    Option<f64>,
    Option<i64>,
    Option<bool>,
    Option<String>,
    Option<Value>,
    Option<i64>,
);

async fn extra_typed_columns(h: &Harness) {
    let d = h.definition(
        "items",
        json!({
            "price": {"field": "price", "type": "double"},
            "qty": {"field": "qty", "type": "bigint"},
            "active": {"field": "active", "type": "boolean"},
            "label": {"field": "label", "type": "text"},
            "tags": "tags",
            "order": {"field": "rank", "type": "bigint"},
        }),
    );
    let t = h.open("s1", &d).await;
    t.prepare().await.unwrap();
    t.prepare().await.unwrap();
    let a = tenant("a");
    put(&*t, &a, &[
            rec(0, "a", "right", 1, Some(json!({"price": 2.5, "qty": 3, "active": true, "label": "x", "tags": ["a"], "rank": 7}))),
            rec(1, "a", "wrong", 1, Some(json!({"price": "2.5", "qty": 1.5, "active": "yes", "label": 12, "tags": {"k": null}, "rank": null}))),
            rec(2, "a", "missing", 1, Some(json!({}))),
        ], 3).await;
    let sql = "SELECT id, price, qty, active, label, tags, \"order\" FROM items ORDER BY id";
    let found: Vec<Extras> = match &h.backend {
        Backend::Sqlite { path, .. } => {
            let conn = rusqlite::Connection::open(path).unwrap();
            let mut statement = conn.prepare(sql).unwrap();
            statement
                .query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get::<_, Option<i64>>(3)?.map(|b| b != 0),
                        r.get(4)?,
                        r.get::<_, Option<String>>(5)?
                            .map(|s| serde_json::from_str(&s).unwrap()),
                        r.get(6)?,
                    ))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect()
        }
        Backend::Postgres { client, .. } => client
            .query(&sql.replace("tags,", "tags::text,"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    r.get(1),
                    r.get(2),
                    r.get(3),
                    r.get(4),
                    r.get::<_, Option<String>>(5)
                        .map(|s| serde_json::from_str(&s).unwrap()),
                    r.get(6),
                )
            })
            .collect(),
    };
    assert_eq!(
        found,
        vec![
            ("missing".into(), None, None, None, None, None, None),
            (
                "right".into(),
                Some(2.5),
                Some(3),
                Some(true),
                Some("x".into()),
                Some(json!(["a"])),
                Some(7)
            ),
            (
                "wrong".into(),
                None,
                None,
                None,
                Some("12".into()),
                Some(json!({"k": null})),
                None
            ),
        ]
    );
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(h) = crate::Harness::sqlite().await else { return };
                    crate::$case(&h).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(h) = crate::Harness::postgres().await else { return };
                    crate::$case(&h).await;
                }
            )*
        }
    };
}

conformance![
    creates_and_reuses_the_table,
    refuses_a_wrong_shape,
    never_goes_back_in_version,
    deletes_only_when_not_newer,
    a_record_twice_in_one_write_keeps_its_highest_version,
    reset_replaces_the_tenants_rows,
    progress_is_saved_with_the_rows,
    several_tenants_commit_together,
    fencing,
    a_recreated_table_clears_progress,
    extra_typed_columns,
];
