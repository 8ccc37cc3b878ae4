//! `tenantsync-bench debezium`: the debezium source draining a backlog, against the real
//! Debezium PostgreSQL connector (Kafka Connect standalone, started with `dev/debezium`), a real
//! Kafka cluster (`--kafka-servers`) and a real PostgreSQL (`--postgres`, `wal_level=logical`).
//!
//! A table of `--events` rows is snapshotted by the connector (one event per row, op `r`) until
//! its topic holds them all; the connector is then stopped. Then a debezium source is defined
//! on the topic and timed until the events are in the changes log (ingested) and applied, from
//! the first event in (the consumer group's join before it is printed apart). How long the
//! connector took to write the backlog is printed beside it.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::json;
use tenantsync::serve;

use crate::{Common, DATASET, Env, SHUTDOWN, dataset_progress, declare_over_http, service_db};

#[derive(Debug, Args)]
pub struct DebeziumArgs {
    #[command(flatten)]
    common: Common,
    /// The PostgreSQL server the connector captures (a database `tenantsync_bench_debezium` is
    /// created there afresh, and dropped at the end).
    #[arg(long, value_name = "URL")]
    postgres: String,
    /// Rows in the table, hence events in the backlog.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// A librdkafka property for the source's consumer (its definition's `kafka_options`),
    /// e.g. `max.partition.fetch.bytes=16777216`; repeatable.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    kafka_options: Vec<String>,
    /// The `dev/debezium` script [default: the one of this source tree].
    #[arg(long)]
    dev_debezium: Option<PathBuf>,
}

const DATABASE: &str = "tenantsync_bench_debezium";
const SOURCE: &str = "bench_debezium";

/// A Kafka Connect worker under a temp dir; stopped when dropped, however the bench ends.
struct Worker {
    script: PathBuf,
    dir: tempfile::TempDir,
}

impl Worker {
    fn path(&self) -> PathBuf {
        self.dir.path().join("worker")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .args(["down", "--dir"])
            .arg(self.path())
            .status();
    }
}

/// The connector's properties: the table's snapshot, then nothing more.
fn connector(postgres: &str, topic_prefix: &str) -> anyhow::Result<String> {
    let config: tokio_postgres::Config = postgres.parse().context("--postgres is not a URL")?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    let password = config
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    Ok(format!(
        "name={DATABASE}
connector.class=io.debezium.connector.postgresql.PostgresConnector
database.hostname={host}
database.port={port}
database.user={user}
database.password={password}
database.dbname={DATABASE}
topic.prefix={topic_prefix}
plugin.name=pgoutput
slot.name={DATABASE}
publication.name={DATABASE}
publication.autocreate.mode=filtered
table.include.list=public.items
snapshot.mode=initial
topic.creation.default.replication.factor=-1
topic.creation.default.partitions=1
"
    ))
}

/// Events in the topic (0 while it does not exist).
fn topic_end(probe: &BaseConsumer, topic: &str) -> i64 {
    probe
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .map_or(0, |(_, high)| high)
}

pub async fn run(args: DebeziumArgs) -> anyhow::Result<()> {
    let kafka_options = args
        .kafka_options
        .iter()
        .map(|o| {
            let (k, v) = o
                .split_once('=')
                .with_context(|| format!("--kafka-option {o:?} is not KEY=VALUE"))?;
            Ok((k.to_owned(), serde_json::Value::from(v)))
        })
        .collect::<anyhow::Result<serde_json::Map<_, _>>>()?;
    let kafka = args
        .common
        .kafka_servers
        .clone()
        .context("the debezium bench needs --kafka-servers (the cluster Debezium writes to)")?;
    let script = args
        .dev_debezium
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../dev/debezium"));
    let (admin, service) = service_db::fresh_database(&args.postgres, DATABASE).await?;
    let tenants = args.common.tenants.max(1);
    service
        .batch_execute(&format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, tenant_id text, name text, qty int, \
             tags jsonb);
             INSERT INTO items SELECT i, 'tenant-' || (i % {tenants}), 'item ' || i, i % 100, \
             jsonb_build_object('k', i % 10, 'labels', jsonb_build_array('a', 'b')) \
             FROM generate_series(1, {}) AS i",
            args.events
        ))
        .await?;

    // The backlog: the connector's snapshot of the table, one event per row.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let prefix = format!("bench_debezium_{run}");
    let topic = format!("{prefix}.public.items");
    let worker = Worker {
        script,
        dir: tempfile::tempdir().context("cannot create a temp dir")?,
    };
    let file = worker.dir.path().join("bench.properties");
    std::fs::write(&file, connector(&args.postgres, &prefix)?)?;
    eprintln!(
        "snapshotting {} rows with Debezium into {topic}...",
        args.events
    );
    let snapshot_started = Instant::now();
    let file = file.display().to_string();
    let snapshot = tokio::task::spawn_blocking(move || {
        let status = Command::new(&worker.script)
            .args(["up", "--kafka", &kafka, "--dir"])
            .arg(worker.path())
            .arg(&file)
            // Its last line (the REST URL) is not a figure of the bench.
            .stdout(std::process::Stdio::null())
            .status()
            .context("cannot run dev/debezium")?;
        anyhow::ensure!(status.success(), "dev/debezium up failed");
        let probe: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &kafka)
            .create()?;
        let deadline = Instant::now() + Duration::from_secs(600);
        while topic_end(&probe, &topic) < args.events as i64 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the snapshot did not reach {} events in 10 minutes",
                args.events
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let elapsed = snapshot_started.elapsed();
        drop(worker);
        Ok((elapsed, topic, kafka))
    })
    .await??;
    let (snapshot_elapsed, topic, kafka) = snapshot;

    // The source draining the backlog.
    let env = Env::new(&args.common)?;
    let settings = env.source_bench_settings()?;
    let client = reqwest::Client::new();
    let running = serve::start(&settings).await?;
    let base = format!("http://{}", running.addr);
    declare_over_http(&client, &base, args.common.partitions).await?;
    eprintln!("ingesting {} events from {topic}...", args.events);
    let started = Instant::now();
    let r = client
        .put(format!("{base}/v1/sources/{SOURCE}"))
        .json(&json!({
            "kind": "debezium",
            "kafka": kafka,
            "topics": [topic],
            "kafka_options": kafka_options,
            "tables": {"public.items": {"dataset": DATASET, "tenant": {"column": "tenant_id"}}},
        }))
        .send()
        .await?;
    anyhow::ensure!(
        r.status() == 201,
        "defining the source: {}",
        r.text().await?
    );
    let (mut first_at, mut ingested_at, mut applied_at) = (None, None, None);
    let deadline = Instant::now() + Duration::from_secs(1_800);
    while applied_at.is_none() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the backlog was not applied in 30 minutes"
        );
        let (in_log, applied) = dataset_progress(&client, &base).await?;
        if first_at.is_none() && in_log > 0 {
            first_at = Some(started.elapsed());
        }
        if ingested_at.is_none() && in_log >= args.events {
            ingested_at = Some(started.elapsed());
        }
        if applied >= args.events {
            applied_at = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status: serde_json::Value = client
        .get(format!("{base}/v1/sources/{SOURCE}"))
        .send()
        .await?
        .json()
        .await?;
    anyhow::ensure!(
        status["rejected"] == 0,
        "the source rejected events: {status}"
    );
    let first = first_at.expect("a first event before the last");
    let rate = |at: Option<Duration>| {
        args.events as f64 / (at.expect("reached").saturating_sub(first)).as_secs_f64()
    };
    println!(
        "debezium ({:?} log, {}{}): backlog of {} events (a table's snapshot over {tenants} \
         tenants, schemas on) ingested at {:.0} events/s and applied at {:.0} events/s, counted \
         from the first event ingested ({:.1} s after the source was defined: the consumer \
         group's join); Debezium wrote the backlog in {:.1} s, Connect's start included",
        args.common.log,
        env.store_url.split("://").next().unwrap_or(""),
        args.kafka_options
            .iter()
            .map(|o| format!(", {o}"))
            .collect::<String>(),
        args.events,
        rate(ingested_at),
        rate(applied_at),
        first.as_secs_f64(),
        snapshot_elapsed.as_secs_f64(),
    );
    running.stop(SHUTDOWN).await?;
    service_db::drop_database(&admin, DATABASE).await?;
    Ok(())
}
