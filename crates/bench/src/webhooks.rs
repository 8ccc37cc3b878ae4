//! `tenantsync-bench webhooks`: signed records delivered per second to a local receiver from a
//! backlog, and write -> received latency at a fixed write rate, alone and with a dead endpoint
//! (a port that accepts connections and never answers) and a failing one (always 500) beside
//! the healthy one.
//!
//! The server is the `tenantsync` binary as a child process (as in `subscribers`), allowed to
//! deliver to 127.0.0.1; the receivers run in this process and verify nothing: they count the
//! records of every batch they get and, for records that carry their write time, record write
//! -> arrival. Server, writer and receivers share the machine's cores.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::http::StatusCode;
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::subscribers::{ServerProcess, now_micros, tenantsync_binary};

#[derive(Debug, Args)]
pub struct WebhooksArgs {
    /// Records written before the endpoint is created, for the backlog run.
    #[arg(long, default_value_t = 100_000)]
    backlog: usize,
    /// Tenants the records are spread over.
    #[arg(long, default_value_t = 100)]
    tenants: usize,
    /// Writes per second in the latency runs.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Seconds of writing in each latency run.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Partitions of each dataset.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// The `tenantsync` binary to run as the server [default: the one next to this binary; build
    /// it with `cargo build -p tenantsync`, adding --release for a release bench].
    #[arg(long, env = "TENANTSYNC_BIN", value_name = "PATH")]
    tenantsync: Option<PathBuf>,
    /// The server's `retry_schedule_secs`, comma-separated (e.g. `1`: failed messages retried
    /// every second, which keeps the failing endpoint busy) [default: the product's default].
    #[arg(long, value_name = "SECS,...")]
    retry_schedule_secs: Option<String>,
}

/// What a receiver counted.
struct Counts {
    records: AtomicU64,
    messages: AtomicU64,
    /// Records written at or after this (microseconds since the Unix epoch) are measured.
    measure_from_us: AtomicU64,
    latencies: Mutex<Histogram<u64>>,
}

/// A receiver in this process: answers 200 to everything and counts.
struct Receiver {
    url: String,
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> anyhow::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let counts = Arc::new(Counts {
            records: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            measure_from_us: AtomicU64::new(u64::MAX),
            latencies: Mutex::new(Histogram::new(3)?),
        });
        let shared = counts.clone();
        let app = axum::Router::new().fallback(move |body: Bytes| {
            let counts = shared.clone();
            async move {
                let now = now_micros();
                let Ok(body) = serde_json::from_slice::<Value>(&body) else {
                    return StatusCode::BAD_REQUEST;
                };
                let changes = body["changes"].as_array().map_or(&[][..], Vec::as_slice);
                let from = counts.measure_from_us.load(Ordering::Relaxed);
                let mut latencies = Vec::new();
                for c in changes {
                    if let Some(sent) = c["data"]["sent_us"].as_u64()
                        && sent >= from
                    {
                        latencies.push(now.saturating_sub(sent).max(1));
                    }
                }
                if !latencies.is_empty() {
                    let mut h = counts.latencies.lock().expect("histogram lock");
                    for l in latencies {
                        h.record(l).ok();
                    }
                }
                counts.messages.fetch_add(1, Ordering::Relaxed);
                counts
                    .records
                    .fetch_add(changes.len() as u64, Ordering::Relaxed);
                StatusCode::OK
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver { url, counts, task })
    }

    fn records(&self) -> u64 {
        self.counts.records.load(Ordering::Relaxed)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port that accepts connections and never answers (nor reads).
async fn dead_endpoint() -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    Ok((url, task))
}

/// An endpoint that answers 500 to everything.
async fn failing_endpoint() -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let app = axum::Router::new().fallback(|| async { StatusCode::INTERNAL_SERVER_ERROR });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, task))
}

/// The server under test, killed on drop.
/// A config file holding the server's retry schedule, when one is given; kept while the
/// server runs.
fn schedule_config(retry_schedule_secs: Option<&str>) -> anyhow::Result<tempfile::NamedTempFile> {
    let file = tempfile::NamedTempFile::new().context("cannot create the config file")?;
    if let Some(s) = retry_schedule_secs {
        std::fs::write(
            file.path(),
            format!("[webhooks]\nretry_schedule_secs = [{s}]\n"),
        )?;
    }
    Ok(file)
}

async fn declare(
    client: &reqwest::Client,
    base: &str,
    dataset: &str,
    partitions: u32,
) -> anyhow::Result<()> {
    let r = client
        .put(format!("{base}/v1/datasets/{dataset}"))
        .json(&json!({ "partitions": partitions }))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "declare {dataset}: {}", r.status());
    Ok(())
}

async fn create_endpoint(
    client: &reqwest::Client,
    base: &str,
    name: &str,
    url: &str,
    dataset: &str,
) -> anyhow::Result<()> {
    let r = client
        .put(format!("{base}/v1/webhooks/{name}"))
        .json(&json!({"url": url, "datasets": [dataset], "tenants": "*", "enabled": true}))
        .send()
        .await?;
    let status = r.status();
    anyhow::ensure!(
        status == 201,
        "PUT /v1/webhooks/{name}: {status} {}",
        r.text().await.unwrap_or_default()
    );
    Ok(())
}

/// Waits until the processor applied everything written to the dataset.
async fn wait_applied(client: &reqwest::Client, base: &str, dataset: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let body: Value = client
            .get(format!("{base}/v1/datasets/{dataset}"))
            .send()
            .await?
            .json()
            .await?;
        let done = body["progress"].as_array().is_some_and(|ps| {
            ps.iter()
                .all(|p| p["end_offset"] == p["applied"] && p["applied"] == p["committed"])
        });
        if done {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{dataset} was not applied in 600 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `receiver` counted at least `records`, at most `within`; returns whether it did.
async fn wait_records(receiver: &Receiver, records: u64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while receiver.records() < records {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// One line of the table.
struct Row {
    run: String,
    records: u64,
    expected: u64,
    per_second: Option<f64>,
    latencies: Option<Histogram<u64>>,
}

pub async fn run(args: WebhooksArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.tenants > 0 && args.rate > 0,
        "--tenants and --rate must be at least 1"
    );
    let binary = tenantsync_binary(args.tenantsync.clone())?;
    tenantsync::serve::raise_fd_limit();
    // Attempts keep the default timeout (15 s), which the dead endpoint runs into.
    let config = schedule_config(args.retry_schedule_secs.as_deref())?;
    let config_path = config.path().display().to_string();
    let server = ServerProcess::start_with(
        binary,
        &[
            "--insecure-no-auth",
            "--webhook-allow-private-networks",
            "--config",
            &config_path,
        ],
    )?;
    let base = server.base.clone();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let mut rows = Vec::new();

    // (a) A backlog: every record written and applied first, then the endpoint created.
    declare(&client, &base, "backlog", args.partitions).await?;
    eprintln!("writing a backlog of {} records...", args.backlog);
    let mut i = 0;
    while i < args.backlog {
        let n = (args.backlog - i).min(1_000);
        let body: String = (i..i + n)
            .map(|k| {
                format!(
                    "{}\n",
                    json!({"op": "upsert", "tenant": format!("tenant-{}", k % args.tenants),
                           "id": format!("item-{k}"),
                           "data": {"n": k, "name": format!("record {k}"), "price": k % 1000, "tags": ["a", "b"]}})
                )
            })
            .collect();
        let r = client
            .post(format!("{base}/v1/datasets/backlog/changes"))
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "bulk write: {}", r.status());
        i += n;
    }
    wait_applied(&client, &base, "backlog").await?;
    let receiver = Receiver::start().await?;
    let start = Instant::now();
    create_endpoint(&client, &base, "backlog", &receiver.url, "backlog").await?;
    let all = wait_records(&receiver, args.backlog as u64, Duration::from_secs(600)).await;
    let elapsed = start.elapsed().as_secs_f64();
    eprintln!(
        "backlog: {} records in {} messages in {elapsed:.2} s{}",
        receiver.records(),
        receiver.counts.messages.load(Ordering::Relaxed),
        if all { "" } else { " (gave up waiting)" }
    );
    rows.push(Row {
        run: format!(
            "backlog of {} records over {} tenants",
            args.backlog, args.tenants
        ),
        records: receiver.records(),
        expected: args.backlog as u64,
        per_second: Some(receiver.records() as f64 / elapsed),
        latencies: None,
    });
    drop(receiver);

    // (b) Write -> received at a fixed rate: alone, then beside a dead and a failing endpoint,
    // then alone again (how much two runs alone differ).
    let mut helpers = Vec::new();
    for (n, beside) in [("alone", false), ("beside", true), ("alone-again", false)] {
        let dataset = format!("latency-{n}");
        declare(&client, &base, &dataset, args.partitions).await?;
        let receiver = Receiver::start().await?;
        create_endpoint(
            &client,
            &base,
            &format!("healthy-{n}"),
            &receiver.url,
            &dataset,
        )
        .await?;
        if beside {
            let (dead, dead_task) = dead_endpoint().await?;
            let (failing, failing_task) = failing_endpoint().await?;
            create_endpoint(&client, &base, &format!("dead-{n}"), &dead, &dataset).await?;
            create_endpoint(&client, &base, &format!("failing-{n}"), &failing, &dataset).await?;
            helpers.extend([dead_task, failing_task]);
        }
        // Warm-up: one record per tenant, so that every tenant's stream has been delivered once
        // (and the dead endpoint holds a connection per tenant) before measuring.
        for t in 0..args.tenants {
            client
                .put(format!(
                    "{base}/v1/datasets/{dataset}/tenants/tenant-{t}/records/warm"
                ))
                .json(&json!({"warm": t}))
                .send()
                .await?
                .error_for_status()?;
        }
        anyhow::ensure!(
            wait_records(&receiver, args.tenants as u64, Duration::from_secs(60)).await,
            "the warm-up records never arrived ({n})"
        );
        let warm = receiver.records();
        eprintln!(
            "{n}: writing {} records/s for {} s...",
            args.rate, args.duration
        );
        receiver
            .counts
            .measure_from_us
            .store(now_micros(), Ordering::Relaxed);
        let total = args.rate * args.duration;
        let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
        let start = tokio::time::Instant::now();
        let errors = Arc::new(AtomicU64::new(0));
        let mut writes = Vec::with_capacity(total as usize);
        for i in 0..total {
            tokio::time::sleep_until(start + interval * i as u32).await;
            let url = format!(
                "{base}/v1/datasets/{dataset}/tenants/tenant-{}/records/item-{i}",
                i as usize % args.tenants
            );
            let (client, errors) = (client.clone(), errors.clone());
            writes.push(tokio::spawn(async move {
                let sent = client
                    .put(url)
                    .json(&json!({"sent_us": now_micros(), "n": i, "name": format!("record {i}")}))
                    .send()
                    .await;
                if !matches!(sent, Ok(r) if r.status() == 202) {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for w in writes {
            w.await?;
        }
        wait_records(&receiver, warm + total, Duration::from_secs(60)).await;
        let errors = errors.load(Ordering::Relaxed);
        if errors > 0 {
            eprintln!("{n}: {errors} writes were not accepted");
        }
        let h = receiver
            .counts
            .latencies
            .lock()
            .expect("histogram lock")
            .clone();
        rows.push(Row {
            run: if beside {
                format!(
                    "{} writes/s, beside a dead and a failing endpoint",
                    args.rate
                )
            } else {
                format!("{} writes/s, alone", args.rate)
            },
            records: receiver.records() - warm,
            expected: total,
            per_second: None,
            latencies: Some(h),
        });
    }
    for h in helpers {
        h.abort();
    }

    println!(
        "webhooks ({} partitions per dataset, {} tenants; records/s from a backlog, write -> received in ms):",
        args.partitions, args.tenants
    );
    println!(
        "{:<62} {:>15} {:>10} {:>8} {:>8} {:>8} {:>8}",
        "run", "records", "records/s", "p50", "p90", "p99", "max"
    );
    let ms = |h: &Histogram<u64>, q: f64| format!("{:.1}", h.value_at_quantile(q) as f64 / 1000.0);
    for r in rows {
        let (p50, p90, p99, max) = match &r.latencies {
            Some(h) => (
                ms(h, 0.5),
                ms(h, 0.9),
                ms(h, 0.99),
                format!("{:.1}", h.max() as f64 / 1000.0),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<62} {:>15} {:>10} {:>8} {:>8} {:>8} {:>8}",
            r.run,
            format!("{}/{}", r.records, r.expected),
            r.per_second.map_or("-".into(), |p| format!("{p:.0}")),
            p50,
            p90,
            p99,
            max
        );
    }
    Ok(())
}
