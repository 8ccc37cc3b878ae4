//! `tenantsync-bench`: measurements, never tests. Each subcommand sets up its own backends (a
//! temp dir, or an in-process Kafka mock cluster), drives load, and prints figures. It is a
//! binary of its own so that its clients and histograms never ship in `tenantsync`; it runs
//! the server through the `tenantsync` library in process, or (`subscribers`, `webhooks`) the
//! `tenantsync` binary as a child process.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::{Args, Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use serde_json::json;
use tenantsync::backends::{open_log, open_store};
use tenantsync::config::{FileConfig, KafkaSettings, ServeArgs, Settings};
use tenantsync::serve;
use tenantsync_core::{Change, ChangeId, DatasetName, EntityId, Op, TenantId, Topics};
use tenantsync_dataset::{Datasets, changes};
use tenantsync_processor::{Processor, ProcessorConfig};
use tenantsync_store::Dataset;
use tenantsync_supervisor::{RestartPolicy, Supervisor};

mod batches;
mod contracts;
mod debezium;
mod outbox;
mod publish;
mod restart;
mod service_db;
mod sinks;
mod subscribers;
mod webhooks;

const DATASET: &str = "bench";
/// How long a bench waits for its services to stop.
const SHUTDOWN: Duration = Duration::from_secs(30);

/// Measures tenantsync's throughput and latency; prints figures, changes nothing outside a
/// temp dir. Build with --release for figures worth comparing.
#[derive(Debug, Parser)]
#[command(name = "tenantsync-bench", version, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Processor throughput: pre-fill the changes log, then time the processor draining it.
    Processor(ProcessorArgs),
    /// HTTP: single-record PUTs accepted per second, then accept->applied latency at a fixed rate.
    Http(HttpArgs),
    /// Change-feed subscribers: write->delivery latency to many long-poll or SSE subscribers,
    /// and server memory per idle subscriber. Runs the `tenantsync` binary as the server.
    Subscribers(subscribers::SubscribersArgs),
    /// Publishing a batch's states with its consumed offsets: one transaction vs. a plain append
    /// and commit (the cost of exactly-once publishing).
    Publish(publish::PublishArgs),
    /// Kafka: SIGKILL and restart -> first change applied, with static or renamed membership.
    /// Runs the `tenantsync` binary.
    Restart(restart::RestartArgs),
    /// The batcher: fairness across tenants of Zipf-distributed volume, applied -> batch
    /// latency, batch sizes and CPU time per record.
    Batches(batches::BatchesArgs),
    /// The postgres-outbox source: a backlog of outbox rows relayed and applied per second, then
    /// commit->applied latency at a fixed rate. Needs a PostgreSQL with wal_level=logical.
    Outbox(outbox::OutboxArgs),
    /// The debezium source: a backlog of Debezium events (a table's snapshot by the real
    /// connector, in a real Kafka cluster) ingested and applied per second. Needs
    /// --kafka-servers, a PostgreSQL with wal_level=logical, java and mvn (dev/debezium).
    Debezium(debezium::DebeziumArgs),
    /// Webhooks: signed records delivered per second from a backlog, and write -> received
    /// latency at a fixed rate, alone and beside a dead and a failing endpoint. Runs the
    /// `tenantsync` binary.
    Webhooks(webhooks::WebhooksArgs),
    /// Database sinks: rows per second into a PostgreSQL (and SQLite) sink from a backlog, then
    /// write -> row visible latency at a fixed rate. Needs a PostgreSQL (--postgres); runs the
    /// `tenantsync` binary.
    Sinks(sinks::SinksArgs),
}

fn main() -> std::process::ExitCode {
    tenantsync::run_main(run(Cli::parse().command))
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogBackend {
    /// The embedded log in a temp dir.
    Embedded,
    /// An in-process librdkafka mock cluster (3 brokers).
    KafkaMock,
    /// A real Kafka cluster at --kafka-servers (topics get a prefix of their own per run).
    Kafka,
}

#[derive(Debug, Args)]
struct Common {
    /// Which log to measure.
    #[arg(long, value_enum, default_value = "embedded")]
    log: LogBackend,
    /// Bootstrap servers of the cluster for --log kafka, e.g. the last line of `dev/kafka up`.
    #[arg(long, value_name = "HOST:PORT,...")]
    kafka_servers: Option<String>,
    /// Replication factor of the topics created for --log kafka.
    #[arg(long, default_value_t = 3)]
    kafka_replication_factor: u16,
    /// Master store URL [default: SQLite in the temp dir].
    #[arg(long)]
    store: Option<String>,
    /// Partitions of the bench dataset.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Distinct tenants in the workload.
    #[arg(long, default_value_t = 1000)]
    tenants: u32,
}

#[derive(Debug, Args)]
struct ProcessorArgs {
    #[command(flatten)]
    common: Common,
    /// Changes to process.
    #[arg(long, default_value_t = 200_000)]
    changes: u64,
    /// Processor batch size.
    #[arg(long, default_value_t = ProcessorConfig::DEFAULT_MAX_BATCH)]
    batch: usize,
    /// Data fields per record (`f0`, `f1`, ... of mixed types), with a JSON Schema registered
    /// for them; 0: the two-field records of the other benches, and no schema.
    #[arg(long, default_value_t = 0)]
    fields: usize,
    /// Also publish every state to the Avro state topic (needs --fields).
    #[arg(long, requires = "fields")]
    avro: bool,
}

#[derive(Debug, Args)]
struct HttpArgs {
    #[command(flatten)]
    common: Common,
    /// Seconds of each phase.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Concurrent connections in the throughput phase.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Requests per second in the latency phase (PUT ?wait=applied, open loop).
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// During the latency phase, one more tenant (`noisy`) also writes this many changes per
    /// second, as bulk requests of 1,000 changes, ignoring Retry-After.
    #[arg(long, default_value_t = 0)]
    noisy_rate: u64,
    /// The server's --tenant-write-rate [default: the server's default].
    #[arg(long)]
    tenant_write_rate: Option<u32>,
    /// Data fields per PUT (`f0`, `f1`, ... of mixed types); 0: the one-field body of earlier
    /// runs.
    #[arg(long, default_value_t = 0)]
    fields: usize,
    /// Register a JSON Schema of the --fields fields before the run, so that every PUT is
    /// validated.
    #[arg(long, requires = "fields")]
    schema: bool,
}

/// Backends for one run; keeps the temp dir and mock cluster alive.
struct Env {
    dir: tempfile::TempDir,
    log_url: String,
    kafka: KafkaSettings,
    topics: Topics,
    store_url: String,
    _cluster: Option<MockCluster<'static, DefaultProducerContext>>,
}

impl Env {
    fn new(common: &Common) -> anyhow::Result<Env> {
        let dir = tempfile::tempdir().context("cannot create a temp dir")?;
        let store_url = common
            .store
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("store.sqlite3").display()));
        let mut topics = Topics::default();
        let (log_url, cluster) = match common.log {
            LogBackend::Embedded => (format!("embedded://{}", dir.path().display()), None),
            LogBackend::Kafka => {
                let servers = common
                    .kafka_servers
                    .clone()
                    .context("--log kafka needs --kafka-servers")?;
                let run = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_millis();
                topics = Topics::new(format!("bench-{run}"));
                (format!("kafka://{servers}"), None)
            }
            LogBackend::KafkaMock => {
                let cluster = MockCluster::new(3).context("cannot start the mock cluster")?;
                let topics = Topics::default();
                let name = DatasetName::new(DATASET)?;
                for topic in [
                    topics.changes(&name),
                    topics.state(&name),
                    topics.batches(&name),
                ] {
                    cluster.create_topic(&topic, common.partitions as i32, 3)?;
                }
                (
                    format!("kafka://{}", cluster.bootstrap_servers()),
                    Some(cluster),
                )
            }
        };
        Ok(Env {
            dir,
            log_url,
            kafka: KafkaSettings {
                options: Vec::new(),
                replication_factor: match common.log {
                    LogBackend::Kafka => common.kafka_replication_factor,
                    _ => 3,
                },
                instance_name: None,
            },
            topics: topics.clone(),
            store_url,
            _cluster: cluster,
        })
    }
}

impl Env {
    /// A server on this run's backends for the source benches: authentication off, as the
    /// sources' writes never pass it, and write quotas out of the way.
    fn source_bench_settings(&self) -> anyhow::Result<Settings> {
        Settings::merge(
            ServeArgs {
                data_dir: Some(self.dir.path().to_owned()),
                listen: Some("127.0.0.1:0".into()),
                log: Some(self.log_url.clone()),
                topic_prefix: Some(self.topics.prefix().to_owned()),
                kafka_replication_factor: Some(self.kafka.replication_factor),
                store: Some(self.store_url.clone()),
                tenant_write_rate: Some(1_000_000),
                insecure_no_auth: true,
                ..ServeArgs::default()
            },
            FileConfig::default(),
        )
    }
}

/// The bench dataset's progress summed over its partitions: (changes in the changes log,
/// changes applied).
async fn dataset_progress(client: &reqwest::Client, base: &str) -> anyhow::Result<(u64, u64)> {
    let body: serde_json::Value = client
        .get(format!("{base}/v1/datasets/{DATASET}"))
        .send()
        .await?
        .json()
        .await?;
    let sum = |field: &str| -> u64 {
        body["progress"]
            .as_array()
            .map_or(0, |ps| ps.iter().filter_map(|p| p[field].as_u64()).sum())
    };
    Ok((sum("end_offset"), sum("applied")))
}

async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Processor(args) => processor(args).await,
        BenchCommand::Http(args) => http(args).await,
        BenchCommand::Subscribers(args) => subscribers::run(args).await,
        BenchCommand::Batches(args) => batches::run(args).await,
        BenchCommand::Outbox(args) => outbox::run(args).await,
        BenchCommand::Debezium(args) => debezium::run(args).await,
        BenchCommand::Sinks(args) => sinks::run(args).await,
        BenchCommand::Publish(args) => publish::run(args).await,
        BenchCommand::Restart(args) => restart::run(args).await,
        BenchCommand::Webhooks(args) => webhooks::run(args).await,
    }
}

/// The write rate given to the subscribers bench's server, whose seed writes one tenant's
/// records as fast as it can: no tenant is held back (the quota check itself still runs).
const BENCH_TENANT_WRITE_RATE: u32 = 10_000_000;

/// Creates an admin token in the store at `store_url` (before the server starts, so that it
/// needs no running API): the benches measure with authentication on, as production runs.
async fn admin_token(store_url: &str) -> anyhow::Result<String> {
    let store = open_store(&store_url.parse()?).await?;
    let (_, minted) = tenantsync_api::admin::create_token(
        store.as_ref(),
        "bench",
        None,
        &[tenantsync_auth::Scope::Admin],
    )
    .await?;
    Ok(minted.secret)
}

/// An HTTP client builder that sends `token` with every request.
fn client_with_token(token: &str) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut value = reqwest::header::HeaderValue::try_from(format!("Bearer {token}"))?;
    value.set_sensitive(true);
    let headers = reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, value)]);
    Ok(reqwest::Client::builder().default_headers(headers))
}

/// Sends bulk requests of 1,000 changes of tenant `noisy` at `rate` changes per second for
/// `duration` (open loop, ignoring Retry-After); returns the changes accepted and refused.
async fn noisy_tenant(
    client: reqwest::Client,
    base: String,
    rate: u64,
    duration: Duration,
) -> (u64, u64) {
    const LINES: u64 = 1_000;
    let body: String = (0..LINES)
        .map(|i| {
            let line =
                json!({"op": "upsert", "tenant": "noisy", "id": format!("n{i}"), "data": {"i": i}});
            format!("{line}\n")
        })
        .collect();
    let interval = Duration::from_secs_f64(LINES as f64 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut sent = Vec::new();
    for i in 0u32.. {
        let at = start + interval * i;
        if at >= start + duration {
            break;
        }
        tokio::time::sleep_until(at).await;
        let request = client
            .post(format!("{base}/v1/datasets/{DATASET}/changes"))
            .body(body.clone());
        sent.push(tokio::spawn(async move {
            let Ok(r) = request.send().await else {
                return (0, 0);
            };
            if r.status() == 429 {
                return (0, LINES);
            }
            let results: serde_json::Value = r.json().await.unwrap_or_default();
            let lines = results["results"].as_array().cloned().unwrap_or_default();
            let accepted = lines.iter().filter(|l| l["status"] == 202).count() as u64;
            (accepted, lines.len() as u64 - accepted)
        }));
    }
    let (mut accepted, mut refused) = (0, 0);
    for s in sent {
        let (a, r) = s.await.unwrap_or_default();
        accepted += a;
        refused += r;
    }
    (accepted, refused)
}

/// Declares the bench dataset through the API of the server at `base`.
async fn declare_over_http(
    client: &reqwest::Client,
    base: &str,
    partitions: u32,
) -> anyhow::Result<()> {
    let declared = client
        .put(format!("{base}/v1/datasets/{DATASET}"))
        .json(&json!({ "partitions": partitions }))
        .send()
        .await?;
    anyhow::ensure!(
        declared.status().is_success(),
        "declare: {}",
        declared.status()
    );
    Ok(())
}

fn tenant(i: u32) -> TenantId {
    TenantId::new(format!("tenant-{i}")).expect("valid")
}

async fn processor(args: ProcessorArgs) -> anyhow::Result<()> {
    let env = Env::new(&args.common)?;
    let log = open_log(&env.log_url.parse()?, &env.kafka).await?;
    let store = open_store(&env.store_url.parse()?).await?;
    let datasets = Arc::new(Datasets::new(
        log.clone(),
        store.clone(),
        env.topics.clone(),
        Duration::from_secs(3600),
    ));
    let dataset = Dataset {
        name: DatasetName::new(DATASET)?,
        partitions: args.common.partitions,
    };
    datasets.declare(&dataset).await?;

    eprintln!("filling the changes log with {} changes...", args.changes);
    let mut rng = StdRng::seed_from_u64(1);
    let topic = env.topics.changes(&dataset.name);
    let fill = Instant::now();
    let mut written = 0;
    while written < args.changes {
        let n = (args.changes - written).min(5_000);
        let batch = (0..n)
            .map(|i| {
                let change = Change {
                    change_id: ChangeId::new(format!("c{}", written + i)).expect("valid"),
                    op: if rng.random_bool(0.2) {
                        Op::Patch
                    } else {
                        Op::Upsert
                    },
                    tenant: tenant(rng.random_range(0..args.common.tenants)),
                    id: EntityId::new(format!("item-{}", rng.random_range(0..100))).expect("valid"),
                    data: Some(if args.fields == 0 {
                        json!({"qty": rng.random_range(0..1000), "name": "widget"})
                            .as_object()
                            .cloned()
                            .unwrap_or_default()
                    } else {
                        contracts::record(args.fields, &mut rng)
                    }),
                    expected_version: None,
                    accepted_at: Utc::now(),
                };
                changes::encode(&change, dataset.partitions)
            })
            .collect();
        log.append(&topic, batch).await?;
        written += n;
    }
    let fill = fill.elapsed();
    eprintln!(
        "filled in {:.2} s ({:.0} appends/s); processing...",
        fill.as_secs_f64(),
        args.changes as f64 / fill.as_secs_f64()
    );

    let schemas = Arc::new(tenantsync_schema::Schemas::new(
        store.clone(),
        datasets.topics().clone(),
    ));
    if args.fields > 0 {
        if args.avro {
            datasets.ensure_avro_topic(&dataset).await?;
            schemas.set_avro(&dataset.name, true).await?;
        }
        schemas
            .register_json(&dataset.name, &contracts::schema(args.fields), None)
            .await?;
    }
    let processor = Arc::new(Processor::new(
        log,
        store,
        datasets.clone(),
        schemas,
        ProcessorConfig {
            max_batch: args.batch,
            ..ProcessorConfig::default()
        },
    ));
    let supervisor = Supervisor::new(RestartPolicy::default());
    let start = Instant::now();
    tenantsync_dataset::supervise(&supervisor, datasets, vec![processor.clone()]);
    let mut last_report = Instant::now();
    while processor.stats().changes.load(Ordering::Relaxed) < args.changes {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if last_report.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "  {} applied",
                processor.stats().changes.load(Ordering::Relaxed)
            );
            last_report = Instant::now();
        }
    }
    let elapsed = start.elapsed();
    supervisor.shutdown(SHUTDOWN).await?;
    let stats = processor.stats();
    println!(
        "processor ({:?} log, {}): {} changes in {:.2} s = {:.0} changes/s; {} batches, {} states published ({} as Avro, {} unencodable)",
        args.common.log,
        env.store_url.split("://").next().unwrap_or(""),
        args.changes,
        elapsed.as_secs_f64(),
        args.changes as f64 / elapsed.as_secs_f64(),
        stats.batches.load(Ordering::Relaxed),
        stats.states_published.load(Ordering::Relaxed),
        stats.avro_published.load(Ordering::Relaxed),
        stats.avro_unencodable.load(Ordering::Relaxed),
    );
    drop(env.dir);
    Ok(())
}

async fn http(args: HttpArgs) -> anyhow::Result<()> {
    // The latency phase opens a connection per request in flight.
    serve::raise_fd_limit();
    let env = Env::new(&args.common)?;
    let settings = Settings::merge(
        ServeArgs {
            data_dir: Some(env.dir.path().to_owned()),
            listen: Some("127.0.0.1:0".into()),
            log: Some(env.log_url.clone()),
            topic_prefix: Some(env.topics.prefix().to_owned()),
            kafka_replication_factor: Some(env.kafka.replication_factor),
            store: Some(env.store_url.clone()),
            tenant_write_rate: args.tenant_write_rate,
            ..ServeArgs::default()
        },
        FileConfig::default(),
    )?;
    let client = client_with_token(&admin_token(&env.store_url).await?)?;
    let running = serve::start(&settings).await?;
    let base = format!("http://{}", running.addr);
    let client = client
        .pool_max_idle_per_host(args.connections * 2)
        .build()?;
    declare_over_http(&client, &base, args.common.partitions).await?;
    if args.schema {
        let registered = client
            .put(format!("{base}/v1/datasets/{DATASET}/schema"))
            .json(&json!({ "schema": contracts::schema(args.fields) }))
            .send()
            .await?;
        anyhow::ensure!(
            registered.status().is_success(),
            "registering the schema: {}",
            registered.status()
        );
    }

    // Phase 1: closed loop, as many PUTs as `connections` clients get accepted.
    eprintln!(
        "phase 1: {} connections sending PUTs for {} s...",
        args.connections, args.duration
    );
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let (client, base, tenants) = (client.clone(), base.clone(), args.common.tenants);
        let fields = args.fields;
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(c as u64);
            let mut accepted = 0u64;
            while Instant::now() < deadline {
                let url = format!(
                    "{base}/v1/datasets/{DATASET}/tenants/tenant-{}/records/item-{}",
                    rng.random_range(0..tenants),
                    rng.random_range(0..100)
                );
                let body = if fields == 0 {
                    json!({"qty": rng.random_range(0..1000)})
                } else {
                    serde_json::Value::Object(contracts::record(fields, &mut rng))
                };
                let r = client.put(url).json(&body).send().await;
                if matches!(r, Ok(r) if r.status() == 202) {
                    accepted += 1;
                }
            }
            accepted
        }));
    }
    let phase1 = Instant::now();
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await?;
    }
    let put_rate = accepted as f64 / phase1.elapsed().as_secs_f64();
    eprintln!("phase 1 done; letting the processor drain...");
    while running.processor.stats().changes.load(Ordering::Relaxed) < accepted {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Phase 2: open loop at a fixed rate, PUT ?wait=applied; latency from send to applied reply.
    eprintln!(
        "phase 2: {} PUT ?wait=applied per second for {} s...",
        args.rate, args.duration
    );
    let histogram = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3)?));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let noisy = (args.noisy_rate > 0).then(|| {
        tokio::spawn(noisy_tenant(
            client.clone(),
            base.clone(),
            args.noisy_rate,
            Duration::from_secs(args.duration),
        ))
    });
    let total = args.rate * args.duration;
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let start = tokio::time::Instant::now();
    let mut handles = Vec::with_capacity(total as usize);
    let mut rng = StdRng::seed_from_u64(99);
    for i in 0..total {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let url = format!(
            "{base}/v1/datasets/{DATASET}/tenants/tenant-{}/records/item-{}?wait=applied",
            rng.random_range(0..args.common.tenants),
            rng.random_range(0..100)
        );
        let body = if args.fields == 0 {
            json!({ "n": i })
        } else {
            serde_json::Value::Object(contracts::record(args.fields, &mut rng))
        };
        let (client, histogram, errors) = (client.clone(), histogram.clone(), errors.clone());
        handles.push(tokio::spawn(async move {
            let sent = Instant::now();
            match client.put(url).json(&body).send().await {
                Ok(r) if r.status() == 200 => {
                    let micros = sent.elapsed().as_micros() as u64;
                    histogram.lock().expect("lock").record(micros).ok();
                }
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let achieved = total as f64 / start.elapsed().as_secs_f64();
    for h in handles {
        h.await?;
    }
    if let Some(noisy) = noisy {
        let (accepted, refused) = noisy.await?;
        println!(
            "noisy tenant at {} changes/s: {accepted} changes accepted, {refused} refused with 429",
            args.noisy_rate
        );
    }
    let h = histogram.lock().expect("lock").clone();
    println!(
        "http ({:?} log, {}): {:.0} PUTs/s accepted with {} connections; at {:.0} PUT ?wait=applied/s: \
         accept->applied p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples, {} errors)",
        args.common.log,
        env.store_url.split("://").next().unwrap_or(""),
        put_rate,
        args.connections,
        achieved,
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        h.len(),
        errors.load(Ordering::Relaxed),
    );
    running.stop(SHUTDOWN).await?;
    Ok(())
}
