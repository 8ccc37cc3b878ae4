//! Backend-specific behaviour the conformance suite cannot express through the trait alone:
//! durability across reopen, opening by URL, migrations, and two store instances (two
//! processes) sharing one database.

mod common;

use std::sync::Arc;

use serde_json::json;
use tenantsync_core::Change;
use tenantsync_core::url::StoreUrl;
use tenantsync_store::postgres::PostgresStore;
use tenantsync_store::sqlite::SqliteStore;
use tenantsync_store::{Dataset, LoggedChange, MasterStore, RecordStore, StoreError};

use common::*;

#[tokio::test]
async fn sqlite_state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    // The parent directory does not exist yet: open creates it.
    let path = dir.path().join("nested").join("store.db");
    let batch = at(
        0,
        vec![
            upsert("c1", "acme", "a", json!({"v": 1})),
            delete("c2", "acme", "b"),
        ],
    );
    let first = {
        let store = SqliteStore::open(&path).await.unwrap();
        store
            .declare_dataset(&Dataset {
                name: ds("items"),
                partitions: 2,
            })
            .await
            .unwrap();
        store.apply(&ds("items"), 1, &batch, 7).await.unwrap()
    };
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.datasets().await.unwrap().len(), 1);
    assert_eq!(store.position(&ds("items"), 1).await.unwrap(), 7);
    assert_eq!(
        store
            .get(&ds("items"), &tenant("acme"), &eid("a"))
            .await
            .unwrap()
            .as_ref(),
        first.states.first()
    );
    let again = store.apply(&ds("items"), 1, &batch, 7).await.unwrap();
    assert_eq!(
        (again.outcomes, again.states),
        (first.outcomes, first.states),
        "re-applying after reopen changes nothing"
    );

    // The schema was migrated once, and the journal is a WAL.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let migrations: i64 = conn
        .query_row("SELECT count(*) FROM tenantsync_migrations", [], |r| {
            r.get(0)
        })
        .unwrap();
    // Every migration once: 0001_initial, 0002_feed_and_subscriptions, 0003_tokens,
    // 0004_audit_secrets_erasures, 0005_batches, 0006_rejected_entries, 0007_instances,
    // 0008_outcome_times, 0009_sources, 0010_push and 0011_schemas.
    assert_eq!(migrations, 11);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn sqlite_refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    drop(SqliteStore::open(&path).await.unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO tenantsync_migrations (version, name, applied_at) VALUES (999, 'future', '')",
        [],
    )
    .unwrap();
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Corrupt {
                what: "schema version",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn open_picks_the_backend_from_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let store = tenantsync_store::open(&url.parse().unwrap()).await.unwrap();
    store.check().await.unwrap();
    for bad in ["mysql://x", "sqlite:/x", ""] {
        let err = StoreError::from(bad.parse::<StoreUrl>().expect_err("an error"));
        assert!(matches!(err, StoreError::InvalidUrl(_)), "{bad}: {err:?}");
        assert!(!err.is_transient());
    }
}

#[tokio::test]
async fn postgres_bad_url_is_invalid_and_hides_the_password() {
    // Refused here, then by the driver (an option it does not know).
    for url in [
        "postgres://me:secret@db:notaport/x",
        "postgres://me:secret@db/x?password=secret&bogus=1",
    ] {
        let err = PostgresStore::connect(url).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidUrl(_)), "{err:?}");
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(!format!("{err:?}").contains("secret"), "{err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_connects_migrate_once() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let connects: Vec<_> = (0..4)
        .map(|_| {
            let url = schema.url.clone();
            tokio::spawn(async move { PostgresStore::connect(&url).await })
        })
        .collect();
    for c in connects {
        c.await.unwrap().expect("every concurrent connect succeeds");
    }
    let store = tenantsync_store::open(&schema.url.parse().unwrap())
        .await
        .unwrap();
    store.check().await.unwrap();
    let (client, conn) = tokio_postgres::connect(&schema.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let n: i64 = client
        .query_one("SELECT count(*) FROM tenantsync_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 11, "each migration applied exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schemas_are_separate_stores() {
    let (Some(a), Some(b)) = (PgSchema::create().await, PgSchema::create().await) else {
        return;
    };
    // Shadowed, not dropped: the schemas outlive the stores.
    let (a, b) = (
        PostgresStore::connect(&a.url).await.unwrap(),
        PostgresStore::connect(&b.url).await.unwrap(),
    );
    let batch = at(0, vec![upsert("c1", "acme", "a", json!({"v": 1}))]);
    a.apply(&ds("items"), 0, &batch, 1).await.unwrap();
    assert!(
        b.get(&ds("items"), &tenant("acme"), &eid("a"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(b.position(&ds("items"), 0).await.unwrap(), 0);
    assert_eq!(
        b.apply(&ds("items"), 0, &batch, 1).await.unwrap().outcomes,
        vec![applied(1)]
    );
}

/// Two store instances over one database, as two processors in two processes after a
/// rebalance: both apply the whole partition at once, and each change still applies once.
async fn two_instances_share_a_partition(a: Arc<dyn MasterStore>, b: Arc<dyn MasterStore>) {
    let log: Vec<Change> = (0..200)
        .map(|i| match i % 5 {
            0..=2 => upsert(
                &format!("c{i}"),
                "acme",
                &format!("k{}", i % 7),
                json!({"i": i}),
            ),
            3 => patch(
                &format!("c{i}"),
                "acme",
                &format!("k{}", i % 7),
                json!({"p": i}),
            ),
            _ => delete(&format!("c{i}"), "acme", &format!("k{}", i % 7)),
        })
        .collect();
    let model = Model::replay(&log);
    let log = Arc::new(log);
    let tasks: Vec<_> = [(a.clone(), 7usize), (b, 13usize)]
        .into_iter()
        .map(|(store, step)| {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                for start in (0..log.len()).step_by(step) {
                    let end = (start + step).min(log.len());
                    let batch: Vec<_> = (start..end)
                        .map(|i| LoggedChange {
                            offset: i as u64,
                            change: log[i].clone(),
                        })
                        .collect();
                    store
                        .apply(&ds("items"), 0, &batch, end as u64)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_matches_model(&*a, &ds("items"), &[tenant("acme")], &model).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_instances_share_a_partition() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let a = Arc::new(SqliteStore::open(&path).await.unwrap());
    let b = Arc::new(SqliteStore::open(&path).await.unwrap());
    two_instances_share_a_partition(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_instances_share_a_partition() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let a = Arc::new(PostgresStore::connect(&schema.url).await.unwrap());
    let b = Arc::new(PostgresStore::connect(&schema.url).await.unwrap());
    two_instances_share_a_partition(a, b).await;
}
