//! A PostgreSQL schema of its own for each test, from `TENANTSYNC_TEST_POSTGRES`. Shared by the
//! store's tests and by the binary's tests that run on a PostgreSQL store (which include this
//! file by path), so that every test against the shared server cleans up the same way.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

pub const POSTGRES_ENV: &str = "TENANTSYNC_TEST_POSTGRES";

/// A schema of its own in the test database, dropped when the test ends (even by a panic).
pub struct PgSchema {
    pub base_url: String,
    pub name: String,
    /// The base URL with this schema as its search_path.
    pub url: String,
}

static SCHEMAS: AtomicU64 = AtomicU64::new(0);

impl PgSchema {
    /// `None`, after printing a skip notice, when no test database is configured.
    pub async fn create() -> Option<Self> {
        let Ok(base_url) = std::env::var(POSTGRES_ENV) else {
            eprintln!("skipping PostgreSQL test: {POSTGRES_ENV} is not set");
            return None;
        };
        let name = format!(
            "ts_store_{}_{}",
            std::process::id(),
            SCHEMAS.fetch_add(1, Ordering::Relaxed)
        );
        let client = admin(&base_url).await;
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
            ))
            .await
            .expect("create test schema");
        let sep = if base_url.contains('?') { '&' } else { '?' };
        let url = format!("{base_url}{sep}options=-csearch_path%3D{name}");
        Some(Self {
            base_url,
            name,
            url,
        })
    }
}

/// A connection of the test's own, outside any store.
pub async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {POSTGRES_ENV}={url}: {e}"));
    tokio::spawn(conn);
    client
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        // Drop may run inside the test's runtime, which cannot be blocked on; a thread with a
        // runtime of its own can.
        let (url, name) = (self.base_url.clone(), self.name.clone());
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let client = admin(&url).await;
                if let Err(e) = client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .await
                {
                    eprintln!("could not drop test schema {name}: {e}");
                }
            });
        });
        let _ = done.join();
    }
}
