//! Service databases for the source tests: a fresh PostgreSQL database per test on the server
//! `TENANTSYNC_TEST_POSTGRES` names, with an outbox table, and the replication slots the test
//! leaves dropped at its end (a forgotten slot keeps the server's WAL forever).

use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

/// The outbox table with the default column names (those of Debezium's outbox event router,
/// plus the tenant and an optional expected version).
pub const OUTBOX_TABLE: &str = "CREATE TABLE outbox (
    seq bigserial,
    id text PRIMARY KEY,
    aggregatetype text NOT NULL,
    aggregateid text NOT NULL,
    type text NOT NULL,
    payload jsonb,
    tenant text,
    expected_version bigint
)";

/// The server's URL, or `None` (after a skip notice naming `test`) when it is not set.
pub fn server(test: &str) -> Option<String> {
    match std::env::var("TENANTSYNC_TEST_POSTGRES") {
        Ok(url) => Some(url),
        Err(_) => {
            eprintln!(
                "skipping {test}: set TENANTSYNC_TEST_POSTGRES to a PostgreSQL URL (wal_level=logical)"
            );
            None
        }
    }
}

/// `server` with its database replaced by `database`.
pub fn with_database(server: &str, database: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (server, String::new()),
    };
    let at = base.rfind('/').expect("a database in the URL");
    format!("{}/{database}{query}", &base[..at])
}

/// Connects, retrying for up to 60 s (the server may be restarting).
pub async fn connect(url: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match tokio_postgres::connect(url, NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                return client;
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "cannot connect to PostgreSQL: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Drops `database` (and the replication slots in it) if it exists, and creates it empty.
/// Returns its URL.
pub async fn fresh_database(server: &str, database: &str) -> String {
    drop_database(server, database).await;
    let admin = connect(server).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .unwrap();
    with_database(server, database)
}

/// Drops `database` and its replication slots, if they exist.
pub async fn drop_database(server: &str, database: &str) {
    let admin = connect(server).await;
    // A slot in use by a process still running (a killed server's last call) is dropped once
    // that ends.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dropped = admin
            .query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE database = $1 AND NOT active",
                &[&database],
            )
            .await;
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE database = $1",
                &[&database],
            )
            .await
            .unwrap()
            .get(0);
        if dropped.is_ok() && left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slots of {database} stay active"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .await
        .unwrap();
}

/// The path of a script under `dev/`.
pub fn dev_script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../dev")
        .join(name)
}
