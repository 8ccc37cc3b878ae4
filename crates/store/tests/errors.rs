//! Error classification against real errors: what SQLite and PostgreSQL actually return for a
//! constraint violation, a lock held by another connection, an undefined column, a terminated
//! connection or a server that does not answer, classified by [`StoreError::class`]. Also that
//! no error shows a URL's password.

mod common;

use std::time::Duration;

use tenantsync_core::url::StoreUrl;
use tenantsync_store::postgres::PostgresStore;
use tenantsync_store::sqlite::SqliteStore;
use tenantsync_store::{CoordinationStore, ErrorClass, RecordStore, StoreError};

use common::*;

fn class_of(error: impl Into<StoreError>) -> (ErrorClass, String) {
    let error = error.into();
    (error.class(), error.to_string())
}

#[test]
fn sqlite_unique_violation_and_undefined_column_are_permanent() {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY); INSERT INTO t VALUES ('a')")
        .unwrap();
    for statement in ["INSERT INTO t VALUES ('a')", "UPDATE t SET nope = 1"] {
        let error = conn.execute(statement, []).unwrap_err();
        let (class, message) = class_of(error);
        assert_eq!(class, ErrorClass::Permanent, "{statement}: {message}");
    }
}

#[test]
fn sqlite_database_locked_by_another_connection_is_transient() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked.db");
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder.execute_batch("CREATE TABLE t (k TEXT)").unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let other = rusqlite::Connection::open(&path).unwrap();
    // Fail at once instead of waiting for the holder.
    other.busy_timeout(Duration::ZERO).unwrap();
    let error = other.execute_batch("BEGIN IMMEDIATE").unwrap_err();
    assert_eq!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy),
        "{error}"
    );
    let (class, message) = class_of(error);
    assert_eq!(class, ErrorClass::Transient, "{message}");
    holder.execute_batch("ROLLBACK").unwrap();
}

/// An outstanding batch id handed out again fails with the database's unique-key error, which
/// no retry can fix.
#[tokio::test]
async fn sqlite_store_unique_violation_is_permanent() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("store.db"))
        .await
        .unwrap();
    assert!(
        store
            .claim_batch(&ds("items"), 0, 0, 0, "b-1", 1_000)
            .await
            .unwrap()
    );
    let error = store
        .claim_batch(&ds("items"), 0, 1, 1, "b-1", 1_000)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Sqlite(_)), "{error:?}");
    assert_eq!(error.class(), ErrorClass::Permanent, "{error}");
}

async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test]
async fn postgres_undefined_column_and_unique_violation_are_permanent() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let client = pg_client(&schema.url).await;
    client
        .batch_execute("CREATE TABLE t (k text PRIMARY KEY); INSERT INTO t VALUES ('a')")
        .await
        .unwrap();

    let error = client.execute("SELECT nope FROM t", &[]).await.unwrap_err();
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::UNDEFINED_COLUMN)
    );
    let (class, message) = class_of(error);
    assert_eq!(class, ErrorClass::Permanent, "{message}");

    let error = client
        .execute("INSERT INTO t VALUES ('a')", &[])
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );
    let (class, message) = class_of(error);
    assert_eq!(class, ErrorClass::Permanent, "{message}");

    let error = client
        .execute("SELECT * FROM no_such_table", &[])
        .await
        .unwrap_err();
    let (class, message) = class_of(error);
    assert_eq!(class, ErrorClass::Permanent, "{message}");
}

/// What an operator's mistake looks like through the store: a column the store writes was
/// renamed, so every apply fails the same way until someone repairs the schema.
#[tokio::test]
async fn postgres_store_on_an_altered_table_fails_permanently() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let store = PostgresStore::connect(&schema.url).await.unwrap();
    let client = pg_client(&schema.url).await;
    client
        .batch_execute("ALTER TABLE records RENAME COLUMN seq TO seq_renamed")
        .await
        .unwrap();
    let batch = at(0, vec![upsert("c1", "acme", "a", serde_json::json!({}))]);
    let error = store.apply(&ds("items"), 0, &batch, 1).await.unwrap_err();
    assert!(matches!(error, StoreError::Postgres(_)), "{error:?}");
    assert_eq!(error.class(), ErrorClass::Permanent, "{error}");

    // And a unique violation through the store.
    assert!(
        store
            .claim_batch(&ds("items"), 0, 0, 0, "b-1", 1_000)
            .await
            .unwrap()
    );
    let error = store
        .claim_batch(&ds("items"), 0, 1, 1, "b-1", 1_000)
        .await
        .unwrap_err();
    assert_eq!(error.class(), ErrorClass::Permanent, "{error}");
}

/// Once a statement of a transaction fails, the server refuses every later pipelined statement
/// with 25P02 (transaction aborted). The error reported must be the first one: it says what is
/// wrong, and its class decides whether to retry; 25P02 would call every failure permanent.
#[tokio::test]
async fn postgres_store_reports_the_statement_that_failed_not_the_aborted_rest() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let store = PostgresStore::connect(&schema.url).await.unwrap();
    // Prepared and cached before the table changes, as on a running server.
    let first = at(0, vec![upsert("c0", "acme", "a", serde_json::json!({}))]);
    store.apply(&ds("items"), 0, &first, 1).await.unwrap();
    pg_client(&schema.url)
        .await
        .batch_execute("ALTER TABLE records RENAME COLUMN seq TO seq_renamed")
        .await
        .unwrap();
    for attempt in 1..=5 {
        let batch = at(1, vec![upsert("c1", "acme", "b", serde_json::json!({}))]);
        let error = store.apply(&ds("items"), 0, &batch, 2).await.unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("42703") && message.contains(r#"column "seq""#),
            "attempt {attempt}: {message}"
        );
    }
}

#[tokio::test]
async fn postgres_lock_not_available_and_terminated_connections_are_transient() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let mut holder = pg_client(&schema.url).await;
    holder
        .batch_execute("CREATE TABLE t (k text PRIMARY KEY); INSERT INTO t VALUES ('a')")
        .await
        .unwrap();
    let tx = holder.transaction().await.unwrap();
    tx.execute("SELECT k FROM t FOR UPDATE", &[]).await.unwrap();
    let other = pg_client(&schema.url).await;
    let error = other
        .execute("SELECT k FROM t FOR UPDATE NOWAIT", &[])
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
    );
    let (class, message) = class_of(error);
    assert_eq!(class, ErrorClass::Transient, "{message}");
    tx.rollback().await.unwrap();

    // The server ends the session (as a restart or an admin does): the next statement fails
    // with admin_shutdown or on the closed connection, either way transient.
    let pid: i32 = other
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let terminated: bool = holder
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(terminated);
    let error = other.execute("SELECT 1", &[]).await.unwrap_err();
    let (class, message) = class_of(error);
    assert_eq!(class, ErrorClass::Transient, "{message}");
    let error = other.execute("SELECT 1", &[]).await.unwrap_err();
    let (class, message) = class_of(error);
    assert_eq!(class, ErrorClass::Transient, "{message}");
}

/// A server that refuses connections may come up later; the error says so without the
/// password of the URL it was given.
#[tokio::test]
async fn unreachable_postgres_is_transient_and_hides_the_password() {
    // Port 1 on the loopback: nothing listens there, so the connection is refused at once.
    for url in [
        "postgres://root:S3cret-pw@127.0.0.1:1/test",
        "postgres://root@127.0.0.1:1/test?password=S3cret-pw",
    ] {
        let error = PostgresStore::connect(url).await.unwrap_err();
        assert_eq!(error.class(), ErrorClass::Transient, "{error}");
        for shown in [error.to_string(), format!("{error:?}")] {
            assert!(!shown.contains("S3cret-pw"), "{shown}");
        }
    }
    for url in [
        "mysql://root:S3cret-pw@127.0.0.1/test",
        "postgres://root:S3cret-pw@127.0.0.1:notaport/test",
    ] {
        let error = StoreError::from(url.parse::<StoreUrl>().expect_err("refused"));
        assert!(matches!(error, StoreError::InvalidUrl(_)), "{error:?}");
        assert_eq!(error.class(), ErrorClass::Permanent);
        for shown in [error.to_string(), format!("{error:?}")] {
            assert!(!shown.contains("S3cret-pw"), "{shown}");
        }
    }
}
