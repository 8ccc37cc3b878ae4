//! Measures `MasterStore::apply` throughput: batches of changes (70% upserts, 20% merge
//! patches, 10% deletes, over 50 tenants) applied one after another, as the processor does for
//! one partition.
//!
//! ```text
//! cargo run --release -p tenantsync-store --example apply_throughput -- [OPTIONS] [POSTGRES_URL]
//!   --batch N     changes per batch (default 1000)
//!   --batches N   batches (default 200)
//!   --keys N      a fixed key space of N keys, all created up front (default: a growing key
//!                 space, a new key for 40% of the changes, the rest spread over all keys so far)
//! ```
//!
//! Without a URL it measures SQLite in a temp dir; with one, PostgreSQL in a schema of its own,
//! dropped afterwards. Figures are per `apply` call, fsync included.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::json;
use tenantsync_core::{Change, ChangeId, DatasetName, EntityId, Op, TenantId};
use tenantsync_store::{LoggedChange, MasterStore};

const TENANTS: u64 = 50;

struct Options {
    batch: usize,
    batches: usize,
    keys: Option<u64>,
    url: Option<String>,
}

fn options() -> Result<Options, Box<dyn std::error::Error>> {
    let mut o = Options {
        batch: 1_000,
        batches: 200,
        keys: None,
        url: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--batch" => o.batch = value()?.parse()?,
            "--batches" => o.batches = value()?.parse()?,
            "--keys" => o.keys = Some(value()?.parse()?),
            _ if !arg.starts_with("--") => o.url = Some(arg),
            _ => return Err(format!("unknown option {arg}").into()),
        }
    }
    Ok(o)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let o = options()?;
    match &o.url {
        None => {
            let dir = tempfile::tempdir()?;
            let store =
                tenantsync_store::sqlite::SqliteStore::open(&dir.path().join("bench.db")).await?;
            run("sqlite", &store, &o).await?;
        }
        Some(base) => {
            let schema = format!("ts_bench_{}", std::process::id());
            let (admin, conn) = tokio_postgres::connect(base, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            admin
                .batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
                ))
                .await?;
            let sep = if base.contains('?') { '&' } else { '?' };
            let url = format!("{base}{sep}options=-csearch_path%3D{schema}");
            let result = async {
                let store = tenantsync_store::postgres::PostgresStore::connect(&url).await?;
                run("postgres", &store, &o).await
            }
            .await;
            admin
                .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                .await?;
            result?;
        }
    }
    Ok(())
}

async fn run(
    name: &str,
    store: &dyn MasterStore,
    o: &Options,
) -> Result<(), Box<dyn std::error::Error>> {
    let (batch_len, batches) = (o.batch, o.batches);
    let dataset = DatasetName::new("bench")?;
    let mut rng = 0x5EED_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut created = 0u64;
    let mut latencies = Vec::with_capacity(batches);
    let mut offset = 0u64;
    if let Some(keys) = o.keys {
        // Create the key space first, unmeasured.
        let mut batch = Vec::new();
        for key in 0..keys {
            batch.push(LoggedChange {
                offset,
                change: Change {
                    change_id: ChangeId::new(format!("c-{offset}"))?,
                    op: Op::Upsert,
                    tenant: TenantId::new(format!("tenant-{}", key % TENANTS))?,
                    id: EntityId::new(format!("sku-{key}"))?,
                    data: json!({"name": format!("item {key}"), "qty": 0})
                        .as_object()
                        .cloned(),
                    expected_version: None,
                    accepted_at: Utc::now(),
                },
            });
            offset += 1;
            if batch.len() == 10_000 || key + 1 == keys {
                store.apply(&dataset, 0, &batch, offset).await?;
                batch.clear();
            }
        }
    }
    let started = Instant::now();
    for _ in 0..batches {
        let mut batch = Vec::with_capacity(batch_len);
        for _ in 0..batch_len {
            let roll = next() % 10;
            let key = match o.keys {
                Some(keys) => next() % keys,
                // A new key 40% of the time, else an existing one.
                None if roll < 4 || created == 0 => {
                    created += 1;
                    created - 1
                }
                None => next() % created,
            };
            let tenant = TenantId::new(format!("tenant-{}", key % TENANTS))?;
            let id = EntityId::new(format!("sku-{key}"))?;
            let (op, data) = match roll {
                0..=6 => (
                    Op::Upsert,
                    Some(
                        json!({"name": format!("item {key}"), "qty": next() % 100, "price": 9.99, "tags": ["a", "b"]}),
                    ),
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
    let total_changes = batches * batch_len;
    let keys = o.keys.map_or_else(
        || format!("{created} keys (growing)"),
        |k| format!("{k} keys"),
    );
    println!(
        "{name}: {total_changes} changes in {batches} batches of {batch_len} over {keys}: \
         {:.0} changes/s in apply ({:.0}/s wall incl. generation); \
         per batch p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        total_changes as f64 / applying.as_secs_f64(),
        total_changes as f64 / total.as_secs_f64(),
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(latencies[latencies.len() - 1]),
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
