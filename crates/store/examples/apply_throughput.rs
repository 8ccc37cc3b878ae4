//! Measures `MasterStore::apply` throughput: batches of 1,000 changes (70% upserts of new and
//! existing keys, 20% merge patches, 10% deletes, over 50 tenants) applied one after another,
//! as the processor does for one partition.
//!
//! ```text
//! cargo run --release -p tenantsync-store --example apply_throughput            # SQLite
//! cargo run --release -p tenantsync-store --example apply_throughput -- postgres://root@127.0.0.1:5432/test
//! ```
//!
//! The PostgreSQL run creates a schema of its own and drops it afterwards.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::json;
use tenantsync_core::{Change, ChangeId, DatasetName, EntityId, Op, TenantId};
use tenantsync_store::{LoggedChange, MasterStore};

const BATCH: usize = 1_000;
const BATCHES: usize = 200;
const TENANTS: u64 = 50;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1);
    match url {
        None => {
            let dir = tempfile::tempdir()?;
            let store = tenantsync_store::sqlite::SqliteStore::open(&dir.path().join("bench.db")).await?;
            run("sqlite", &store).await?;
        }
        Some(base) => {
            let schema = format!("ts_bench_{}", std::process::id());
            let (admin, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            admin
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"))
                .await?;
            let sep = if base.contains('?') { '&' } else { '?' };
            let url = format!("{base}{sep}options=-csearch_path%3D{schema}");
            let result = async {
                let store = tenantsync_store::postgres::PostgresStore::connect(&url).await?;
                run("postgres", &store).await
            }
            .await;
            admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await?;
            result?;
        }
    }
    Ok(())
}

async fn run(name: &str, store: &dyn MasterStore) -> Result<(), Box<dyn std::error::Error>> {
    let dataset = DatasetName::new("bench")?;
    let mut rng = 0x5EED_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut created = 0u64;
    let mut latencies = Vec::with_capacity(BATCHES);
    let mut offset = 0u64;
    let started = Instant::now();
    for _ in 0..BATCHES {
        let mut batch = Vec::with_capacity(BATCH);
        for _ in 0..BATCH {
            let roll = next() % 10;
            // A new key 40% of the time, else an existing one.
            let key = if roll < 4 || created == 0 {
                created += 1;
                created - 1
            } else {
                next() % created
            };
            let tenant = TenantId::new(format!("tenant-{}", key % TENANTS))?;
            let id = EntityId::new(format!("sku-{key}"))?;
            let (op, data) = match roll {
                0..=6 => (
                    Op::Upsert,
                    Some(json!({"name": format!("item {key}"), "qty": next() % 100, "price": 9.99, "tags": ["a", "b"]})),
                ),
                7 | 8 => (Op::Patch, Some(json!({"qty": next() % 100}))),
                _ => (Op::Delete, None),
            };
            batch.push(LoggedChange {
                offset,
                change: Change {
                    change_id: ChangeId::new(format!("c-{offset}"))?,
                    op,
                    tenant,
                    id,
                    data: data.and_then(|d| d.as_object().cloned()),
                    expected_version: None,
                    accepted_at: Utc::now(),
                },
            });
            offset += 1;
        }
        let t = Instant::now();
        store.apply(&dataset, 0, &batch, offset).await?;
        latencies.push(t.elapsed());
    }
    let total = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let applying: Duration = latencies.iter().sum();
    println!(
        "{name}: {} changes in {BATCHES} batches of {BATCH}: {:.0} changes/s in apply \
         ({:.0}/s wall incl. generation); per batch p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        BATCHES * BATCH,
        (BATCHES * BATCH) as f64 / applying.as_secs_f64(),
        (BATCHES * BATCH) as f64 / total.as_secs_f64(),
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(latencies[latencies.len() - 1]),
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
