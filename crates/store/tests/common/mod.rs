//! Test support shared by the store's integration tests: one fresh store per test (a temp dir
//! for SQLite, a fresh schema for PostgreSQL), change builders, and a reference model of the
//! `MasterStore` contract written independently of the store's own rules.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use serde_json::Value;
use tenantsync_core::{
    Change, ChangeId, DatasetName, EntityId, Object, Op, Outcome, Record, RejectReason, TenantId,
};
use tenantsync_store::{
    LoggedChange, MasterStore, Offset, StoredOutcome, postgres::PostgresStore, sqlite::SqliteStore,
};

mod pg_schema;
pub use pg_schema::{PgSchema, admin};

/// A store and whatever must outlive it. Fields drop in order: the store first, then its
/// temp dir or schema.
pub struct Harness {
    pub store: Arc<dyn MasterStore>,
    _guard: Guard,
}

enum Guard {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres(PgSchema),
}

pub async fn sqlite() -> Option<Harness> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("store.db"))
        .await
        .expect("open sqlite store");
    Some(Harness {
        store: Arc::new(store),
        _guard: Guard::Sqlite(dir),
    })
}

pub async fn postgres() -> Option<Harness> {
    let schema = PgSchema::create().await?;
    let store = PostgresStore::connect(&schema.url)
        .await
        .expect("connect postgres store");
    Some(Harness {
        store: Arc::new(store),
        _guard: Guard::Postgres(schema),
    })
}

/// Stores whose database was created by schema version 1 (before records had a `seq`) and
/// holds records written then, for checking what migrating such a database does.
pub mod v1 {
    use super::*;

    /// A record written under schema version 1, in dataset `items`.
    pub struct LegacyRecord {
        pub tenant: &'static str,
        pub id: &'static str,
        pub version: i64,
        /// `None`: a tombstone.
        pub data: Option<&'static str>,
    }

    /// Each legacy record's outcome, change id `legacy:{id}`, stored before outcomes had a
    /// time.
    const LEGACY_OUTCOMES: &str = "INSERT INTO applied_changes \
         (dataset, tenant, change_id, id, status, version) \
         SELECT dataset, tenant, 'legacy:' || id, id, 'applied', version FROM records";

    /// Partition 0 of `items` had applied this many offsets when the database was migrated.
    pub const POSITION: i64 = 10;

    pub async fn sqlite(records: &[LegacyRecord]) -> Option<Harness> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("store.db");
        {
            let conn = rusqlite::Connection::open(&path).expect("open sqlite file");
            conn.execute_batch(include_str!("../../migrations/sqlite/0001_initial.sql"))
                .expect("schema version 1");
            conn.execute_batch(
                "CREATE TABLE tenantsync_migrations (
                     version    INTEGER NOT NULL PRIMARY KEY,
                     name       TEXT    NOT NULL,
                     applied_at TEXT    NOT NULL
                 );
                 INSERT INTO tenantsync_migrations VALUES (1, '0001_initial', '')",
            )
            .expect("migrations table");
            for r in records {
                conn.execute(
                    "INSERT INTO records (dataset, tenant, id, version, data, updated_at, \
                     change_id) VALUES ('items', ?1, ?2, ?3, ?4, 0, 'legacy')",
                    rusqlite::params![r.tenant, r.id, r.version, r.data],
                )
                .expect("legacy record");
            }
            conn.execute_batch(LEGACY_OUTCOMES)
                .expect("legacy outcomes");
            conn.execute(
                "INSERT INTO positions (dataset, partition, next_offset) VALUES ('items', 0, ?1)",
                [POSITION],
            )
            .expect("legacy position");
        }
        let store = SqliteStore::open(&path)
            .await
            .expect("open and migrate sqlite store");
        Some(Harness {
            store: Arc::new(store),
            _guard: Guard::Sqlite(dir),
        })
    }

    pub async fn postgres(records: &[LegacyRecord]) -> Option<Harness> {
        let schema = PgSchema::create().await?;
        {
            let client = admin(&schema.url).await;
            client
                .batch_execute(include_str!("../../migrations/postgres/0001_initial.sql"))
                .await
                .expect("schema version 1");
            client
                .batch_execute(
                    "CREATE TABLE tenantsync_migrations (
                         version    bigint      NOT NULL PRIMARY KEY,
                         name       text        NOT NULL,
                         applied_at timestamptz NOT NULL DEFAULT now()
                     );
                     INSERT INTO tenantsync_migrations (version, name) VALUES (1, '0001_initial')",
                )
                .await
                .expect("migrations table");
            for r in records {
                client
                    .execute(
                        "INSERT INTO records (dataset, tenant, id, version, data, updated_at, \
                         change_id) VALUES ('items', $1, $2, $3, $4::text::json, now(), 'legacy')",
                        &[&r.tenant, &r.id, &r.version, &r.data],
                    )
                    .await
                    .expect("legacy record");
            }
            client
                .batch_execute(LEGACY_OUTCOMES)
                .await
                .expect("legacy outcomes");
            client
                .execute(
                    "INSERT INTO positions (dataset, partition, next_offset) \
                     VALUES ('items', 0, $1)",
                    &[&POSITION],
                )
                .await
                .expect("legacy position");
        }
        let store = PostgresStore::connect(&schema.url)
            .await
            .expect("connect and migrate postgres store");
        Some(Harness {
            store: Arc::new(store),
            _guard: Guard::Postgres(schema),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Builders

pub fn ds(name: &str) -> DatasetName {
    DatasetName::new(name).unwrap()
}

pub fn tenant(t: &str) -> TenantId {
    TenantId::new(t).unwrap()
}

pub fn eid(id: &str) -> EntityId {
    EntityId::new(id).unwrap()
}

pub fn cid(c: &str) -> ChangeId {
    ChangeId::new(c).unwrap()
}

pub fn obj(v: Value) -> Object {
    v.as_object().expect("a JSON object").clone()
}

pub fn change(change_id: &str, op: Op, t: &str, id: &str, data: Option<Value>) -> Change {
    Change {
        change_id: cid(change_id),
        op,
        tenant: tenant(t),
        id: eid(id),
        data: data.map(obj),
        expected_version: None,
        accepted_at: Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap(),
    }
}

pub fn upsert(change_id: &str, t: &str, id: &str, data: Value) -> Change {
    change(change_id, Op::Upsert, t, id, Some(data))
}

pub fn patch(change_id: &str, t: &str, id: &str, data: Value) -> Change {
    change(change_id, Op::Patch, t, id, Some(data))
}

pub fn delete(change_id: &str, t: &str, id: &str) -> Change {
    change(change_id, Op::Delete, t, id, None)
}

pub fn expecting(mut c: Change, version: u64) -> Change {
    c.expected_version = Some(version);
    c
}

/// Numbers a batch's changes with consecutive offsets from `first`.
pub fn at(first: Offset, changes: Vec<Change>) -> Vec<LoggedChange> {
    changes
        .into_iter()
        .zip(first..)
        .map(|(change, offset)| LoggedChange { offset, change })
        .collect()
}

pub const fn applied(version: u64) -> Outcome {
    Outcome::Applied { version }
}

pub const fn unchanged(version: u64) -> Outcome {
    Outcome::Unchanged { version }
}

pub const fn conflict(current_version: u64) -> Outcome {
    Outcome::Rejected {
        reason: RejectReason::VersionConflict,
        current_version,
    }
}

pub const fn not_found() -> Outcome {
    Outcome::Rejected {
        reason: RejectReason::NotFound,
        current_version: 0,
    }
}

pub const fn key_reused(current_version: u64) -> Outcome {
    Outcome::Rejected {
        reason: RejectReason::KeyReused,
        current_version,
    }
}

/// A stored outcome owned by record `id`.
pub fn owned(id: &str, outcome: Outcome) -> StoredOutcome {
    StoredOutcome {
        id: eid(id),
        outcome,
    }
}

// ---------------------------------------------------------------------------------------------
// Reference model

/// What the model knows of a record: everything but `updated_at`, which is the store's clock.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRecord {
    pub version: u64,
    pub data: Option<Object>,
    pub change_id: ChangeId,
}

impl ModelRecord {
    pub fn of(r: &Record) -> Self {
        Self {
            version: r.version,
            data: r.data.clone(),
            change_id: r.change_id.clone(),
        }
    }
}

/// The contract as a plain in-memory state machine over one dataset: a change log is replayed
/// in offset order, each change id taking effect once, at its first occurrence, and belonging to
/// the record of that occurrence.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub records: BTreeMap<(TenantId, EntityId), ModelRecord>,
    /// What the store must hold for each change id: its first outcome and its record.
    pub outcomes: HashMap<(TenantId, ChangeId), StoredOutcome>,
}

impl Model {
    pub fn replay(log: &[Change]) -> Self {
        let mut m = Self::default();
        for c in log {
            m.apply(c);
        }
        m
    }

    /// Applies `c` to the model and returns the outcome the store must report for it now.
    pub fn apply(&mut self, c: &Change) -> Outcome {
        let id_key = (c.tenant.clone(), c.change_id.clone());
        let key = (c.tenant.clone(), c.id.clone());
        let current = self.records.get(&key);
        let stored = current.map_or(0, |r| r.version);
        let live = current.and_then(|r| r.data.clone());
        let live_version = if live.is_some() { stored } else { 0 };
        if let Some(o) = self.outcomes.get(&id_key) {
            // A duplicate reports the first outcome; the id reused for another record is
            // refused, and stays the first record's.
            return if o.id == c.id {
                o.outcome.clone()
            } else {
                key_reused(live_version)
            };
        }
        let outcome = 'decide: {
            if let Some(e) = c.expected_version {
                let ok = match e {
                    0 => live.is_none(),
                    v => live.is_some() && v == stored,
                };
                if !ok {
                    break 'decide conflict(live_version);
                }
            }
            let next = match c.op {
                Op::Upsert => c.data.clone(),
                Op::Patch => match &live {
                    None => break 'decide not_found(),
                    Some(old) => {
                        let mut doc = Value::Object(old.clone());
                        merge(&mut doc, &Value::Object(c.data.clone().unwrap_or_default()));
                        match doc {
                            Value::Object(m) => Some(m),
                            _ => unreachable!(),
                        }
                    }
                },
                Op::Delete => None,
            };
            if next == live {
                break 'decide unchanged(stored);
            }
            self.records.insert(
                key,
                ModelRecord {
                    version: stored + 1,
                    data: next,
                    change_id: c.change_id.clone(),
                },
            );
            applied(stored + 1)
        };
        self.outcomes.insert(
            id_key,
            StoredOutcome {
                id: c.id.clone(),
                outcome: outcome.clone(),
            },
        );
        outcome
    }

    pub fn get(&self, t: &TenantId, id: &EntityId) -> Option<&ModelRecord> {
        self.records.get(&(t.clone(), id.clone()))
    }
}

/// RFC 7396, written out here so the model does not share code with the store.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Object::new());
    }
    let Value::Object(t) = target else {
        unreachable!()
    };
    for (k, v) in patch {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Every record of a tenant, read page by page.
pub async fn scan_all(
    store: &dyn MasterStore,
    dataset: &DatasetName,
    t: &TenantId,
    page: usize,
) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    loop {
        let after = out.last().map(|r| r.id.clone());
        let got = store
            .scan(dataset, t, after.as_ref(), page)
            .await
            .expect("scan");
        assert!(got.len() <= page, "scan returned more than its limit");
        let done = got.len() < page;
        out.extend(got);
        if done {
            return out;
        }
    }
}

/// Asserts that the store holds exactly the model's records for these tenants, and the
/// model's outcome for every change id.
pub async fn assert_matches_model(
    store: &dyn MasterStore,
    dataset: &DatasetName,
    tenants: &[TenantId],
    model: &Model,
) {
    for t in tenants {
        let stored: Vec<_> = scan_all(store, dataset, t, 7)
            .await
            .iter()
            .map(|r| (r.id.clone(), ModelRecord::of(r)))
            .collect();
        let expected: Vec<_> = model
            .records
            .iter()
            .filter(|((rt, _), _)| rt == t)
            .map(|((_, id), r)| (id.clone(), r.clone()))
            .collect();
        assert_eq!(
            stored, expected,
            "records of tenant {t} in dataset {dataset}"
        );
    }
    for ((t, c), outcome) in &model.outcomes {
        let stored = store.outcome(dataset, t, c).await.expect("outcome");
        assert_eq!(stored.as_ref(), Some(outcome), "outcome of {t}/{c}");
    }
}

/// A small deterministic generator (splitmix64) for randomised tests that do not shrink.
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
