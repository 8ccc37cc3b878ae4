//! `tenantsync-bench sinks`: database sinks against a real PostgreSQL (`--postgres`; databases
//! `tenantsync_bench_sink*` are created there afresh and dropped at the end).
//!
//! Phase 1, throughput: `--records` records over `--tenants` tenants are written through the
//! bulk API and applied; then a PostgreSQL sink is defined, and the time until its table holds
//! them all gives rows per second from a backlog. `--sqlite` does the same with a SQLite sink
//! next, alone.
//!
//! Phase 2, latency: single-record PUTs at `--rate` per second (open loop, each a new record);
//! a trigger in the sink database `NOTIFY`s each row the sink writes, and write -> row visible
//! is the time from sending the PUT to the notification (sent at the sink's commit).
//!
//! `--with-broken-sink` defines, before both phases, a sink whose database is unreachable
//! ([`BrokenSink`]), to measure what it costs the others. Other benches (webhooks) take one
//! the same way: `BrokenSink::define(&client, &base, postgres_url, DATASET, mode)` after the
//! dataset is declared, and keep the value alive while they measure.
//!
//! The server is the `tenantsync` binary as a child process, as in `subscribers`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_postgres::AsyncMessage;

use crate::subscribers::{ServerProcess, now_micros, tenantsync_binary};
use crate::{DATASET, dataset_progress, declare_over_http, service_db};

const DATABASE: &str = "tenantsync_bench_sink";
const BROKEN_DATABASE: &str = "tenantsync_bench_sink_broken";
const TABLE: &str = "items";
const BULK_LINES: u64 = 1_000;
/// How long a phase may take before the bench gives up.
const PHASE_LIMIT: Duration = Duration::from_secs(600);

#[derive(Debug, Args)]
pub struct SinksArgs {
    /// The PostgreSQL server of the sink databases.
    #[arg(long, value_name = "URL")]
    postgres: String,
    /// Records of the backlog (phase 1).
    #[arg(long, default_value_t = 200_000)]
    records: u64,
    /// Tenants of the backlog and of the writes.
    #[arg(long, default_value_t = 50)]
    tenants: u64,
    /// Bytes of filler in each record's data.
    #[arg(long, default_value_t = 200)]
    record_bytes: usize,
    /// Also time a SQLite sink from the same backlog.
    #[arg(long)]
    sqlite: bool,
    /// Writes per second of the latency phase.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Seconds of the latency phase.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Partitions of the bench dataset.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Defines a sink whose database is unreachable beside the measured ones, for the whole run.
    #[arg(long)]
    with_broken_sink: bool,
    /// How the broken sink's database is unreachable.
    #[arg(long, value_enum, default_value = "silent")]
    broken_sink_mode: Unreachable,
    /// The `tenantsync` binary to run as the server [default: the one next to this binary].
    #[arg(long, env = "TENANTSYNC_BIN", value_name = "PATH")]
    tenantsync: Option<PathBuf>,
}

pub async fn run(args: SinksArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.tenants > 0 && args.rate > 0,
        "--tenants and --rate must be at least 1"
    );
    let binary = tenantsync_binary(args.tenantsync.clone())?;
    let server = ServerProcess::start(binary)?;
    let base = server.base.clone();
    let client = crate::client_with_token(&server.admin_token()?)?
        .pool_max_idle_per_host(256)
        .build()?;
    declare_over_http(&client, &base, args.partitions).await?;
    let (admin, sink_db) = service_db::fresh_database(&args.postgres, DATABASE).await?;
    let sink_url = service_db::with_database(&args.postgres, DATABASE);
    let broken = if args.with_broken_sink {
        Some(
            BrokenSink::define(
                &client,
                &base,
                &args.postgres,
                DATASET,
                args.broken_sink_mode,
            )
            .await?,
        )
    } else {
        None
    };

    // Phase 1: a backlog, then a new sink copying it.
    eprintln!(
        "writing {} records over {} tenants...",
        args.records, args.tenants
    );
    let written = Instant::now();
    write_backlog(&client, &base, &args).await?;
    let deadline = Instant::now() + PHASE_LIMIT;
    loop {
        let (end, applied) = dataset_progress(&client, &base).await?;
        if end > 0 && applied >= end {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the backlog was never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "backlog written and applied in {:.1} s",
        written.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    define_sink(&client, &base, "bench-pg", "postgres", &sink_url).await?;
    wait_rows((&client, &base, "bench-pg"), args.records, || async {
        pg_count(&sink_db).await
    })
    .await?;
    let pg_secs = started.elapsed().as_secs_f64();
    println!(
        "sinks: backlog of {} records over {} tenants ({} B filler) into PostgreSQL: {:.2} s, \
         {:.0} rows/s{}",
        args.records,
        args.tenants,
        args.record_bytes,
        pg_secs,
        args.records as f64 / pg_secs,
        broken_note(&broken)
    );
    if args.sqlite {
        let file = server.dir.path().join("sink.sqlite3");
        let started = Instant::now();
        define_sink(
            &client,
            &base,
            "bench-lite",
            "sqlite",
            &format!("sqlite://{}", file.display()),
        )
        .await?;
        wait_rows((&client, &base, "bench-lite"), args.records, || {
            let file = file.clone();
            async move {
                tokio::task::spawn_blocking(move || sqlite_count(&file))
                    .await
                    .unwrap_or(0)
            }
        })
        .await?;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "sinks: the same backlog into SQLite: {secs:.2} s, {:.0} rows/s",
            args.records as f64 / secs
        );
        // Out of the way of the latency phase.
        client
            .delete(format!("{base}/v1/sinks/bench-lite"))
            .send()
            .await?
            .error_for_status()?;
    }

    // Phase 2: write -> row visible in the PostgreSQL sink.
    latency(&client, &base, &sink_url, &sink_db, &args, &broken).await?;
    if broken.is_some() {
        let status: serde_json::Value = client
            .get(format!("{base}/v1/sinks/{}", BrokenSink::NAME))
            .send()
            .await?
            .json()
            .await?;
        println!("  the broken sink: {status}");
    }
    drop(server);
    drop(sink_db);
    service_db::drop_database(&admin, DATABASE).await?;
    if broken.is_some() {
        service_db::drop_database(&admin, BROKEN_DATABASE).await?;
    }
    Ok(())
}

fn broken_note(broken: &Option<BrokenSink>) -> String {
    broken.as_ref().map_or(String::new(), |b| {
        format!(" (with a {:?} unreachable sink beside it)", b.mode)
    })
}

async fn write_backlog(
    client: &reqwest::Client,
    base: &str,
    args: &SinksArgs,
) -> anyhow::Result<()> {
    let filler = "x".repeat(args.record_bytes);
    let mut sending = JoinSet::new();
    for start in (0..args.records).step_by(BULK_LINES as usize) {
        let body: String = (start..(start + BULK_LINES).min(args.records))
            .map(|i| {
                let line = json!({"op": "upsert", "tenant": format!("tenant-{}", i % args.tenants), "id": format!("r{i}"), "data": {"n": i, "filler": filler}});
                format!("{line}\n")
            })
            .collect();
        let request = client
            .post(format!("{base}/v1/datasets/{DATASET}/changes"))
            .body(body);
        sending.spawn(async move {
            let reply: serde_json::Value = request.send().await?.error_for_status()?.json().await?;
            let refused = reply["results"]
                .as_array()
                .context("no results")?
                .iter()
                .filter(|r| r["status"] != 202)
                .count();
            anyhow::ensure!(refused == 0, "{refused} lines refused");
            Ok(())
        });
        while sending.len() >= 4 {
            sending.join_next().await.context("a task")???;
        }
    }
    while let Some(sent) = sending.join_next().await {
        sent??;
    }
    Ok(())
}

async fn define_sink(
    client: &reqwest::Client,
    base: &str,
    name: &str,
    kind: &str,
    url: &str,
) -> anyhow::Result<()> {
    let r = client
        .put(format!("{base}/v1/sinks/{name}"))
        .json(
            &json!({"kind": kind, "url": url, "dataset": DATASET, "tenants": "*", "table": TABLE}),
        )
        .send()
        .await?;
    let status = r.status();
    if status != 201 {
        bail!("defining the sink {name}: {status} {}", r.text().await?);
    }
    Ok(())
}

/// Polls `count` until it reaches `n`; an error after [`PHASE_LIMIT`] shows the sink's status.
async fn wait_rows<F, Fut>(
    (client, base, sink): (&reqwest::Client, &str, &str),
    n: u64,
    mut count: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = u64>,
{
    let deadline = Instant::now() + PHASE_LIMIT;
    let mut last = 0;
    while last < n {
        if Instant::now() >= deadline {
            let status = client
                .get(format!("{base}/v1/sinks/{sink}"))
                .send()
                .await?
                .text()
                .await?;
            bail!(
                "the sink {sink} holds {last} of {n} rows after {PHASE_LIMIT:?}; it says {status}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = count().await;
    }
    Ok(())
}

/// Rows in the PostgreSQL sink table; 0 before it exists.
async fn pg_count(db: &tokio_postgres::Client) -> u64 {
    db.query_one(&format!("SELECT count(*) FROM {TABLE}"), &[])
        .await
        .map_or(0, |r| r.get::<_, i64>(0) as u64)
}

/// Rows in the SQLite sink table; 0 before it exists.
fn sqlite_count(file: &std::path::Path) -> u64 {
    let Ok(db) =
        rusqlite::Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    let _ = db.busy_timeout(Duration::from_secs(5));
    db.query_row(&format!("SELECT count(*) FROM {TABLE}"), [], |r| {
        r.get::<_, i64>(0)
    })
    .map_or(0, |n| n as u64)
}

/// Notifies `sink_rows` with the id of every row the sink inserts or updates.
const NOTIFY: &str = "
CREATE FUNCTION bench_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sink_rows', NEW.id);
    RETURN NEW;
END $$;
CREATE TRIGGER bench_notify AFTER INSERT OR UPDATE ON items
    FOR EACH ROW EXECUTE FUNCTION bench_notify();
";

async fn latency(
    client: &reqwest::Client,
    base: &str,
    sink_url: &str,
    sink_db: &tokio_postgres::Client,
    args: &SinksArgs,
    broken: &Option<BrokenSink>,
) -> anyhow::Result<()> {
    sink_db.batch_execute(NOTIFY).await?;
    let total = args.rate * args.duration;
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let seen = Arc::new(AtomicU64::new(0));
    let histogram = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3)?));
    let (listener, mut connection) = tokio_postgres::connect(sink_url, tokio_postgres::NoTls)
        .await
        .context("cannot connect to the sink database")?;
    let listening = {
        let (sent, seen, histogram) = (sent.clone(), seen.clone(), histogram.clone());
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                let AsyncMessage::Notification(n) = message else {
                    continue;
                };
                let Some(i) = n
                    .payload()
                    .strip_prefix("lat-")
                    .and_then(|i| i.parse::<usize>().ok())
                else {
                    continue;
                };
                let at = sent[i].load(Ordering::SeqCst);
                if at > 0 {
                    let latency = now_micros().saturating_sub(at).max(1);
                    histogram.lock().expect("histogram").record(latency).ok();
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    listener.batch_execute("LISTEN sink_rows").await?;

    eprintln!("writing {} records/s for {} s...", args.rate, args.duration);
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let start = tokio::time::Instant::now();
    let errors = Arc::new(AtomicU64::new(0));
    let mut writes = Vec::with_capacity(total as usize);
    for i in 0..total {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let url = format!(
            "{base}/v1/datasets/{DATASET}/tenants/tenant-{}/records/lat-{i}",
            i % args.tenants
        );
        let (client, errors, sent) = (client.clone(), errors.clone(), sent.clone());
        writes.push(tokio::spawn(async move {
            sent[i as usize].store(now_micros(), Ordering::SeqCst);
            let r = client.put(url).json(&json!({"n": i})).send().await;
            if !matches!(r, Ok(r) if r.status() == 202) {
                errors.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for w in writes {
        w.await?;
    }
    let drain = Instant::now() + Duration::from_secs(60);
    while seen.load(Ordering::SeqCst) < total && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    listening.abort();
    let h = histogram.lock().expect("histogram").clone();
    println!(
        "sinks: write -> row visible in PostgreSQL at {} writes/s for {} s over {} tenants: \
         p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} of {} rows seen, {} write \
         errors{}",
        args.rate,
        args.duration,
        args.tenants,
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.9) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        seen.load(Ordering::SeqCst),
        total,
        errors.load(Ordering::SeqCst),
        broken_note(broken)
    );
    Ok(())
}

/// How a broken sink's database is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Unreachable {
    /// Connections are accepted and never answered (a database behind a firewall that drops
    /// packets, or a hung server): each attempt waits for the sink's own timeout.
    Silent,
    /// Connections are closed at once (a database that went away).
    Closed,
}

/// A sink defined while its database was reachable (through a TCP proxy to `--postgres`), whose
/// database then became unreachable: the proxy drops every connection it carried and treats
/// new ones as `mode` says. Lives as long as the value.
pub struct BrokenSink {
    mode: Unreachable,
    reachable: Arc<AtomicBool>,
    connections: Arc<std::sync::Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl BrokenSink {
    /// The broken sink's name.
    pub const NAME: &str = "broken";

    /// Creates a database `tenantsync_bench_sink_broken` afresh on `postgres`, defines the sink
    /// [`BrokenSink::NAME`] of all of `dataset`'s tenants on it (through the server at `base`,
    /// with `client`'s credentials), waits until the sink created its table, and cuts the
    /// database off.
    pub async fn define(
        client: &reqwest::Client,
        base: &str,
        postgres: &str,
        dataset: &str,
        mode: Unreachable,
    ) -> anyhow::Result<BrokenSink> {
        let (_, direct) = service_db::fresh_database(postgres, BROKEN_DATABASE).await?;
        let url = service_db::with_database(postgres, BROKEN_DATABASE);
        let upstream = host_port(&url);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let proxied = through(&url, &listener.local_addr()?.to_string());
        let reachable = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let accept = {
            let (reachable, connections) = (reachable.clone(), connections.clone());
            tokio::spawn(async move {
                let mut silent = Vec::new();
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if reachable.load(Ordering::SeqCst) {
                        let upstream = upstream.clone();
                        connections.lock().expect("connections").spawn(async move {
                            if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                                    .await;
                            }
                        });
                    } else if mode == Unreachable::Silent {
                        silent.push(inbound);
                    }
                }
            })
        };
        let r = client
            .put(format!("{base}/v1/sinks/{}", Self::NAME))
            .json(&json!({"kind": "postgres", "url": proxied, "dataset": dataset, "tenants": "*", "table": TABLE}))
            .send()
            .await?;
        let status = r.status();
        if status != 201 {
            bail!("defining the broken sink: {status} {}", r.text().await?);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let exists: bool = direct
                .query_one(&format!("SELECT to_regclass('{TABLE}') IS NOT NULL"), &[])
                .await?
                .get(0);
            if exists {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the broken sink never created its table"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let broken = BrokenSink {
            mode,
            reachable,
            connections,
            accept,
        };
        broken.cut_off();
        eprintln!(
            "defined the sink {:?}, its database now unreachable ({mode:?})",
            Self::NAME
        );
        Ok(broken)
    }

    fn cut_off(&self) {
        self.reachable.store(false, Ordering::SeqCst);
        self.connections.lock().expect("connections").abort_all();
    }
}

impl Drop for BrokenSink {
    fn drop(&mut self) {
        self.cut_off();
        self.accept.abort();
    }
}

/// The host and port of a `postgres://` URL.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    }
}

/// `url` with its host and port replaced by `addr`.
fn through(url: &str, addr: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let user = authority
        .rsplit_once('@')
        .map_or(String::new(), |(user, _)| format!("{user}@"));
    format!("{scheme}://{user}{addr}{path}")
}
