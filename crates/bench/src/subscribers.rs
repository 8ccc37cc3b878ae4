//! `tenantsync-bench subscribers`: delivery latency from a write to many concurrent change-feed
//! subscribers (long-poll or SSE), and the server's memory per idle subscriber connection.
//!
//! The server runs as a child process (`tenantsync serve` on a temp dir), so its resident
//! memory can be read from `/proc` apart from the clients'. The `tenantsync` binary is the one
//! next to this binary (the same target dir), unless `--tenantsync` or `TENANTSYNC_BIN` names
//! another; it is never built from here, so an old one there is measured as it is. Subscribers follow tenants round
//! robin; the writer sends PUTs open loop at a fixed rate, each carrying its send time, and
//! every subscriber of the tenant records send -> delivery. Clients and server share the
//! machine's cores, so the figures include the clients' own scheduling.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::DATASET;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// `GET .../changes?cursor=&wait=30` in a loop.
    LongPoll,
    /// One `text/event-stream` response per subscriber.
    Sse,
}

#[derive(Debug, Args)]
pub struct SubscribersArgs {
    /// Concurrent subscribers.
    #[arg(long, default_value_t = 1_000)]
    subscribers: usize,
    /// How subscribers read.
    #[arg(long, value_enum, default_value = "long-poll")]
    mode: Mode,
    /// Tenants; subscriber i follows tenant i mod tenants.
    #[arg(long, default_value_t = 1_000)]
    tenants: usize,
    /// Writes per second while measuring.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Seconds of writing.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Partitions of the bench dataset.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Records of about 1 KiB seeded into tenant `big` before measuring. Stalled clients read
    /// its snapshot; seed it in the run without them too, so that the two compare.
    #[arg(long, default_value_t = 0)]
    big_tenant_records: usize,
    /// Misbehaving clients: SSE streams of tenant `big` whose clients never read.
    #[arg(long, default_value_t = 0)]
    stalled_sse: usize,
    /// Misbehaving clients: subscriptions over every tenant whose client took one batch, never
    /// acknowledged it and went away.
    #[arg(long, default_value_t = 0)]
    abandoned_subscriptions: usize,
    /// The `tenantsync` binary to run as the server [default: the one next to this binary; build
    /// it with `cargo build -p tenantsync`, adding --release for a release bench].
    #[arg(long, env = "TENANTSYNC_BIN", value_name = "PATH")]
    tenantsync: Option<PathBuf>,
}

/// The `tenantsync` binary the server runs from: `explicit` if given, else the one in this
/// executable's directory, where cargo puts every binary of the workspace.
pub(crate) fn tenantsync_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        anyhow::ensure!(
            path.is_file(),
            "the tenantsync binary given by --tenantsync or TENANTSYNC_BIN, {}, is not a file",
            path.display()
        );
        return Ok(path);
    }
    let this = std::env::current_exe().context("cannot find this executable's path")?;
    let dir = this.parent().unwrap_or(Path::new("."));
    let path = dir.join(format!("tenantsync{}", std::env::consts::EXE_SUFFIX));
    anyhow::ensure!(
        path.is_file(),
        "no tenantsync binary next to this one ({}): build it with `cargo build -p tenantsync` \
         (with --release for a release bench), or pass --tenantsync PATH or set TENANTSYNC_BIN",
        path.display()
    );
    Ok(path)
}

/// Reads a started `tenantsync serve`'s stdout until it says where it listens; returns that
/// address and keeps draining the rest, so that the server never blocks on a full pipe.
pub(crate) fn listening_address(child: &mut Child) -> anyhow::Result<String> {
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(addr) = line.strip_prefix("tenantsync listening on http://") {
                    break addr.to_owned();
                }
            }
            _ => bail!("the server exited before listening"),
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    Ok(addr)
}

/// The server under test, killed on drop.
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) base: String,
    pub(crate) dir: tempfile::TempDir,
    binary: PathBuf,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    pub(crate) fn start(binary: PathBuf) -> anyhow::Result<Self> {
        // A short stall timeout, so that stalled clients are cut off within a run.
        Self::start_with(binary, &["--sse-stall-timeout-secs", "5"])
    }

    /// `tenantsync serve` on a port of its own and a data dir of its own, with the bench's
    /// tenant write rate and `args`.
    pub(crate) fn start_with(binary: PathBuf, args: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("cannot create a temp dir")?;
        let mut child = Command::new(&binary)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--tenant-write-rate",
                &crate::BENCH_TENANT_WRITE_RATE.to_string(),
            ])
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {} serve", binary.display()))?;
        let addr = listening_address(&mut child)?;
        Ok(Self {
            child,
            base: format!("http://{addr}"),
            dir,
            binary,
        })
    }

    /// An admin token made with `tenantsync token create` on the server's data dir (a separate
    /// process: the bench never opens the server's store itself).
    pub(crate) fn admin_token(&self) -> anyhow::Result<String> {
        let out = Command::new(&self.binary)
            .args(["token", "create", "--scope", "admin", "--data-dir"])
            .arg(self.dir.path())
            .env("RUST_LOG", "warn")
            .output()
            .context("cannot run tenantsync token create")?;
        anyhow::ensure!(
            out.status.success(),
            "tenantsync token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)?
            .lines()
            .last()
            .map(str::to_owned)
            .context("tenantsync token create printed no token")
    }

    /// Resident memory of the server process, in KiB.
    fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/PID/status")
    }
}

pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

struct Shared {
    latencies: Mutex<Histogram<u64>>,
    delivered: AtomicU64,
    /// Subscribers that read their first page (so are positioned at the end of the feed).
    ready: AtomicU64,
    errors: AtomicU64,
    /// Writes sent before this are warm-up and not measured.
    measure_from_us: AtomicU64,
}

impl Shared {
    async fn record(&self, change: &Value) {
        let Some(sent) = change["data"]["sent_us"].as_u64() else {
            return;
        };
        if sent < self.measure_from_us.load(Ordering::Relaxed) {
            return;
        }
        let latency = now_micros().saturating_sub(sent);
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.latencies.lock().await.record(latency.max(1)).ok();
    }
}

pub async fn run(args: SubscribersArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.tenants > 0 && args.subscribers > 0,
        "--tenants and --subscribers must be at least 1"
    );
    anyhow::ensure!(
        args.stalled_sse == 0 || args.big_tenant_records > 0,
        "--stalled-sse needs --big-tenant-records: a stalled client stalls on tenant big's snapshot"
    );
    let binary = tenantsync_binary(args.tenantsync.clone())?;
    tenantsync::serve::raise_fd_limit();
    let server = ServerProcess::start(binary)?;
    let base = server.base.clone();
    let client = crate::client_with_token(&server.admin_token()?)?
        .pool_max_idle_per_host(args.subscribers + 64)
        .build()?;
    crate::declare_over_http(&client, &base, args.partitions).await?;
    // Warm the server up (allocator arenas, statement caches) before the baseline.
    for i in 0..200 {
        client
            .put(format!(
                "{base}/v1/datasets/{DATASET}/tenants/tenant-{}/records/warm",
                i % args.tenants
            ))
            .json(&json!({"warm": i}))
            .send()
            .await?;
    }
    seed_big_tenant(&client, &base, args.big_tenant_records).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = server.rss_kib()?;
    // Held until the end: a stalled client keeps its connection open and never reads.
    let mut stalled = Vec::with_capacity(args.stalled_sse);
    for _ in 0..args.stalled_sse {
        stalled.push(
            client
                .get(format!("{base}/v1/datasets/{DATASET}/tenants/big/changes"))
                .header("accept", "text/event-stream")
                .send()
                .await?
                .error_for_status()?,
        );
    }
    for n in 0..args.abandoned_subscriptions {
        let name = format!("{base}/v1/subscriptions/abandoned-{n}");
        client
            .put(&name)
            .json(&json!({"datasets": [DATASET], "tenants": "*"}))
            .send()
            .await?
            .error_for_status()?;
        // One batch taken, never acknowledged; then a long-poll dropped mid-wait.
        client
            .get(format!("{name}/changes"))
            .send()
            .await?
            .error_for_status()?;
        let _ = client
            .get(format!("{name}/changes?wait=30"))
            .timeout(Duration::from_millis(200))
            .send()
            .await;
    }

    let shared = Arc::new(Shared {
        latencies: Mutex::new(Histogram::new(3)?),
        delivered: AtomicU64::new(0),
        ready: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        measure_from_us: AtomicU64::new(u64::MAX),
    });
    eprintln!(
        "connecting {} {:?} subscribers...",
        args.subscribers, args.mode
    );
    let mut tasks = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let url = format!(
            "{base}/v1/datasets/{DATASET}/tenants/tenant-{}/changes",
            i % args.tenants
        );
        let (client, shared) = (client.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            let result = match args.mode {
                Mode::LongPoll => long_poll(&client, &url, &shared).await,
                Mode::Sse => sse(&client, &url, &shared).await,
            };
            if result.is_err() {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
        }));
        // Pace the connection storm.
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let connect_deadline = Instant::now() + Duration::from_secs(120);
    while shared.ready.load(Ordering::Relaxed) < args.subscribers as u64 {
        anyhow::ensure!(
            Instant::now() < connect_deadline,
            "subscribers did not all connect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let every long-poll settle into its wait (or every stream into its idle state).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = server.rss_kib()?;
    let per_connection = (idle.saturating_sub(baseline)) as f64 / args.subscribers as f64;
    eprintln!(
        "server RSS: {baseline} KiB before, {idle} KiB with {} idle subscribers = {per_connection:.1} KiB each",
        args.subscribers
    );

    eprintln!("writing {} changes/s for {} s...", args.rate, args.duration);
    shared
        .measure_from_us
        .store(now_micros(), Ordering::Relaxed);
    let total = args.rate * args.duration;
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let start = tokio::time::Instant::now();
    let write_errors = Arc::new(AtomicU64::new(0));
    let mut writes = Vec::with_capacity(total as usize);
    let mut peak = idle;
    for i in 0..total {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let tenant = i as usize % args.tenants;
        // A new record per write: a subscriber behind by two writes of one record would be
        // shown only the latest, and the count of deliveries would not add up.
        let url = format!("{base}/v1/datasets/{DATASET}/tenants/tenant-{tenant}/records/item-{i}");
        let (client, errors) = (client.clone(), write_errors.clone());
        writes.push(tokio::spawn(async move {
            let sent = client
                .put(url)
                .json(&json!({"sent_us": now_micros(), "n": i}))
                .send()
                .await;
            if !matches!(sent, Ok(r) if r.status() == 202) {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }));
        if i % args.rate == 0 {
            peak = peak.max(server.rss_kib()?);
        }
    }
    for w in writes {
        w.await?;
    }
    // Every subscriber of a tenant receives every write of it.
    let subscribers_of = |tenant: usize| {
        (args.subscribers / args.tenants + usize::from(tenant < args.subscribers % args.tenants))
            as u64
    };
    let expected: u64 = (0..total)
        .map(|i| subscribers_of(i as usize % args.tenants))
        .sum();
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    while shared.delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(server.rss_kib()?);
    }
    let h = shared.latencies.lock().await.clone();
    println!(
        "subscribers ({:?}, {} subscribers over {} tenants, {} writes/s for {} s): \
         write->delivery p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         {} of {} deliveries, {} write errors, {} subscriber errors; \
         server RSS {} KiB idle baseline, {:.1} KiB per idle subscriber, peak {} KiB",
        args.mode,
        args.subscribers,
        args.tenants,
        args.rate,
        args.duration,
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.9) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        shared.delivered.load(Ordering::Relaxed),
        expected,
        write_errors.load(Ordering::Relaxed),
        shared.errors.load(Ordering::Relaxed),
        baseline,
        per_connection,
        peak,
    );
    if !stalled.is_empty() || args.abandoned_subscriptions > 0 {
        let metrics = client
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        for line in metrics.lines().filter(|l| {
            l.starts_with("tenantsync_sse_cut_off_total")
                || l.starts_with("tenantsync_subscription_lagging_tenants")
        }) {
            println!("  {line}");
        }
    }
    drop(stalled);
    for t in tasks {
        t.abort();
    }
    Ok(())
}

/// Seeds tenant `big` with `records` records of about 1 KiB, in NDJSON batches.
async fn seed_big_tenant(
    client: &reqwest::Client,
    base: &str,
    records: usize,
) -> anyhow::Result<()> {
    let filler = "x".repeat(1_000);
    for start in (0..records).step_by(500) {
        let body: String = (start..(start + 500).min(records))
            .map(|i| {
                json!({"op": "upsert", "tenant": "big", "id": format!("r{i}"), "data": {"filler": filler}})
                    .to_string()
                    + "\n"
            })
            .collect();
        client
            .post(format!("{base}/v1/datasets/{DATASET}/changes"))
            .body(body)
            .send()
            .await?
            .error_for_status()?;
    }
    Ok(())
}

async fn long_poll(client: &reqwest::Client, url: &str, shared: &Shared) -> anyhow::Result<()> {
    let mut cursor: Option<String> = None;
    loop {
        // Cursors are base64url: safe in a query string as they are.
        let url = match &cursor {
            Some(c) => format!("{url}?wait=30&cursor={c}"),
            None => format!("{url}?wait=30"),
        };
        let page: Value = client
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if cursor.is_none() {
            shared.ready.fetch_add(1, Ordering::Relaxed);
        }
        for change in page["changes"].as_array().into_iter().flatten() {
            shared.record(change).await;
        }
        cursor = page["cursor"].as_str().map(str::to_owned);
    }
}

async fn sse(client: &reqwest::Client, url: &str, shared: &Shared) -> anyhow::Result<()> {
    let response = client
        .get(url)
        .header("accept", "text/event-stream")
        .send()
        .await?
        .error_for_status()?;
    let mut body = response.bytes_stream();
    let mut buffer = Vec::new();
    let mut ready = false;
    while let Some(chunk) = body.next().await {
        buffer.extend_from_slice(&chunk?);
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buffer.drain(..end + 2).collect();
            let event = String::from_utf8_lossy(&event);
            if !ready && event.contains("event: up-to-date") {
                ready = true;
                shared.ready.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: "))
                && event.contains("event: change")
            {
                shared.record(&serde_json::from_str(data)?).await;
            }
        }
    }
    Ok(())
}
