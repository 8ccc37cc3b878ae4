//! `tenantsync-bench outbox`: the postgres-outbox source against a real PostgreSQL (the service
//! database, `--postgres`, with `wal_level=logical`).
//!
//! Phase 1, throughput: with the server stopped, commit `--rows` outbox rows (a backlog the
//! source's replication slot keeps), then start the server and time until the rows are in the
//! changes log (relayed) and applied. The same rows' insert rate alone is printed as the
//! database's own figure on this machine.
//!
//! Phase 2, latency: one row per transaction at `--rate` rows per second; for each, the time
//! from its COMMIT returning to the processor applying it (this instance's applied hub).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use tenantsync::serve;
use tenantsync_core::{Change, ChangeId, DatasetName, EntityId, Op, TenantId};

use crate::{Common, DATASET, Env, SHUTDOWN, dataset_progress, declare_over_http, service_db};

#[derive(Debug, Args)]
pub struct OutboxArgs {
    #[command(flatten)]
    common: Common,
    /// The PostgreSQL server of the outbox (a database `tenantsync_bench_outbox` is created
    /// there afresh, and dropped at the end).
    #[arg(long, value_name = "URL")]
    postgres: String,
    /// Rows of the throughput phase.
    #[arg(long, default_value_t = 200_000)]
    rows: u64,
    /// Rows per transaction in the throughput phase.
    #[arg(long, default_value_t = 100)]
    rows_per_transaction: u64,
    /// Rows per second of the latency phase.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Seconds of the latency phase.
    #[arg(long, default_value_t = 10)]
    duration: u64,
}

const DATABASE: &str = "tenantsync_bench_outbox";
const SOURCE: &str = "bench_outbox";

pub async fn run(args: OutboxArgs) -> anyhow::Result<()> {
    let (admin, service) = service_db::fresh_database(&args.postgres, DATABASE).await?;
    let url = service_db::with_database(&args.postgres, DATABASE);
    service
        .batch_execute(
            "CREATE TABLE outbox (id text PRIMARY KEY, aggregatetype text NOT NULL, \
             aggregateid text NOT NULL, type text NOT NULL, payload jsonb, tenant text, \
             expected_version bigint)",
        )
        .await?;

    let env = Env::new(&args.common)?;
    let settings = env.source_bench_settings()?;
    let client = reqwest::Client::new();
    let running = serve::start(&settings).await?;
    let base = format!("http://{}", running.addr);
    declare_over_http(&client, &base, args.common.partitions).await?;
    let r = client
        .put(format!("{base}/v1/sources/{SOURCE}"))
        .json(&json!({"kind": "postgres-outbox", "url": url}))
        .send()
        .await?;
    anyhow::ensure!(
        r.status() == 201,
        "defining the source: {}",
        r.text().await?
    );
    running.stop(SHUTDOWN).await?;

    // Phase 1: a backlog, then the relay draining it.
    eprintln!(
        "phase 1: committing {} outbox rows while tenantsync is stopped...",
        args.rows
    );
    let tenants = args.common.tenants.max(1) as u64;
    let inserted = Instant::now();
    let mut i = 0;
    while i < args.rows {
        let n = args.rows_per_transaction.min(args.rows - i);
        let values: Vec<String> = (i..i + n)
            .map(|k| {
                format!(
                    "('row-{k}', '{DATASET}', 'item-{}', 'upsert', '{{\"qty\": {k}}}', 'tenant-{}')",
                    k % 100,
                    k % tenants
                )
            })
            .collect();
        service
            .batch_execute(&format!(
                "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, tenant) VALUES {}",
                values.join(",")
            ))
            .await?;
        i += n;
    }
    let insert_rate = args.rows as f64 / inserted.elapsed().as_secs_f64();
    let running = serve::start(&settings).await?;
    let base = format!("http://{}", running.addr);
    let started = Instant::now();
    let (mut relayed_at, mut applied_at) = (None, None);
    while applied_at.is_none() {
        let (in_log, applied) = dataset_progress(&client, &base).await?;
        if relayed_at.is_none() && in_log >= args.rows {
            relayed_at = Some(started.elapsed());
        }
        if applied >= args.rows {
            applied_at = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let relayed = args.rows as f64 / relayed_at.expect("relayed before applied").as_secs_f64();
    let applied = args.rows as f64 / applied_at.expect("applied").as_secs_f64();

    // Phase 2: commit -> applied, one row per transaction at a fixed rate.
    eprintln!(
        "phase 2: {} rows/s for {} s, one per transaction...",
        args.rate, args.duration
    );
    let hub = running.processor.applied();
    let dataset = DatasetName::new(DATASET)?;
    let histogram = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3)?));
    let total = args.rate * args.duration;
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let start = tokio::time::Instant::now();
    let service = Arc::new(service);
    let mut handles = Vec::with_capacity(total as usize);
    for k in 0..total {
        tokio::time::sleep_until(start + interval * k as u32).await;
        let tenant = format!("tenant-{}", k % tenants);
        let change = Change {
            change_id: ChangeId::new(format!("live-{k}"))?,
            op: Op::Upsert,
            tenant: TenantId::new(tenant.as_str())?,
            id: EntityId::new(format!("live-{}", k % 100))?,
            data: None,
            expected_version: None,
            accepted_at: Utc::now(),
        };
        let mut waiter = hub.register(&dataset, &change);
        let (service, histogram) = (service.clone(), histogram.clone());
        handles.push(tokio::spawn(async move {
            service
                .execute(
                    "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, tenant) \
                     VALUES ($1, $2, $3, 'upsert', jsonb_build_object('n', $4::bigint), $5)",
                    &[
                        &change.change_id.as_str(),
                        &DATASET,
                        &change.id.as_str(),
                        &(k as i64),
                        &tenant,
                    ],
                )
                .await?;
            let committed = Instant::now();
            tokio::time::timeout(Duration::from_secs(30), waiter.outcome())
                .await
                .context("a row was not applied within 30 s")?;
            let micros = committed.elapsed().as_micros() as u64;
            histogram.lock().expect("lock").record(micros.max(1))?;
            anyhow::Ok(())
        }));
    }
    let achieved = total as f64 / start.elapsed().as_secs_f64();
    for h in handles {
        h.await??;
    }
    let h = histogram.lock().expect("lock").clone();
    println!(
        "outbox ({:?} log, {}): backlog of {} rows relayed at {relayed:.0} rows/s and applied at \
         {applied:.0} rows/s (the same rows inserted at {insert_rate:.0} rows/s); at {achieved:.0} \
         rows/s: commit->applied p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
        args.common.log,
        env.store_url.split("://").next().unwrap_or(""),
        args.rows,
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        h.len(),
    );
    running.stop(SHUTDOWN).await?;
    // Dropping the database drops the source's slot first.
    service_db::drop_database(&admin, DATABASE).await?;
    Ok(())
}
