//! `tenantsync-bench batches`: the batcher stage alone, in process, on the embedded log, with
//! tenants of Zipf-distributed volume (the largest writing `--top-share` of all records).
//!
//! 1. **Live.** A producer appends records to a dataset's state log at `--rate` records/s
//!    (each stamped `updated_at` just before its append) while the stage batches them and a
//!    consumer tails the batches log. Reported: time from a record's `updated_at` to the
//!    consumer reading its batch, for small tenants (all but the 10 largest) and the largest;
//!    and the batch size distribution.
//! 2. **Backlog.** `--backlog` records are appended to a second dataset's state log first; then
//!    a stage drains them alone. Reported: the stage's CPU time per record (process CPU time,
//!    nothing else running), and Jain's fairness index of the records emitted per tenant among
//!    the tenants still backlogged: those holding at least two batches' worth, counted until
//!    the first of them has emitted its last record. `--emit-delay-ms` slows the batches log
//!    down; `--read-first` holds every batch back until the whole backlog is read, so that the
//!    index measures the batcher's round robin alone rather than the order the state log's
//!    partitions are read in.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::Args;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tenantsync_batcher::message;
use tenantsync_batcher::{BatcherStage, Limits, StageConfig};
use tenantsync_core::{ChangeId, DatasetName, EntityId, Record, TenantId, Topics};
use tenantsync_dataset::{Datasets, state};
use tenantsync_log::{
    CompactionStats, Entry, GroupConsumer, Log, LogError, Message, Offset, Partition, TopicSpec,
};
use tenantsync_log_embedded::{EmbeddedLog, EmbeddedOptions};
use tenantsync_store::{Dataset, MasterStore};
use tenantsync_supervisor::{RestartPolicy, Supervisor};
use tokio_util::sync::CancellationToken;

use super::SHUTDOWN;

#[derive(Debug, Args)]
pub struct BatchesArgs {
    /// Tenants; tenant `t1` is the largest, `tN` the smallest.
    #[arg(long, default_value_t = 10_000)]
    tenants: usize,
    /// Share of all records written by the largest tenant; the Zipf exponent is solved for it.
    #[arg(long, default_value_t = 0.5)]
    top_share: f64,
    /// Partitions of the datasets (and their batches logs).
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Records per second in the live phase.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Seconds of the live phase.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Records of the backlog phase.
    #[arg(long, default_value_t = 500_000)]
    backlog: u64,
    /// Bytes of data per record.
    #[arg(long, default_value_t = 100)]
    record_bytes: usize,
    #[arg(long, default_value_t = Limits::DEFAULT_MAX_RECORDS)]
    max_records: usize,
    #[arg(long, default_value_t = Limits::DEFAULT_MAX_BYTES)]
    max_bytes: usize,
    #[arg(long, default_value_t = 100)]
    max_wait_ms: u64,
    /// In the backlog phase, delay each append to the batches log by this much: a broker
    /// slower than the batcher, so that tenants queue up in the batcher.
    #[arg(long, default_value_t = 0)]
    emit_delay_ms: u64,
    /// In the backlog phase, hold every batch back until the batcher has read the whole
    /// backlog: every tenant is then backlogged in the batcher, and its round robin alone
    /// decides who goes first.
    #[arg(long)]
    read_first: bool,
}

/// A log whose appends to batches logs take `delay` longer, and wait until `gate` is true.
struct SlowBatches {
    inner: Arc<dyn Log>,
    delay: Duration,
    gate: tokio::sync::watch::Receiver<bool>,
}

#[async_trait::async_trait]
impl Log for SlowBatches {
    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<(), LogError> {
        self.inner.ensure_topic(spec).await
    }

    async fn append(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Offset>, LogError> {
        if topic.ends_with(".batches") {
            let mut gate = self.gate.clone();
            gate.wait_for(|open| *open)
                .await
                .map_err(|_| LogError::Closed)?;
            tokio::time::sleep(self.delay).await;
        }
        self.inner.append(topic, messages).await
    }

    async fn read(
        &self,
        topic: &str,
        partition: Partition,
        from: Offset,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Entry>, LogError> {
        self.inner.read(topic, partition, from, max, wait).await
    }

    async fn end_offset(&self, topic: &str, partition: Partition) -> Result<Offset, LogError> {
        self.inner.end_offset(topic, partition).await
    }

    async fn consume(&self, group: &str, topic: &str) -> Result<Box<dyn GroupConsumer>, LogError> {
        self.inner.consume(group, topic).await
    }

    async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: Partition,
    ) -> Result<Option<Offset>, LogError> {
        self.inner.committed(group, topic, partition).await
    }

    async fn compact(&self, topic: &str) -> Result<CompactionStats, LogError> {
        self.inner.compact(topic).await
    }

    async fn check(&self) -> Result<(), LogError> {
        self.inner.check().await
    }
}

/// Tenant ranks drawn with probability proportional to `rank^-s`.
struct Zipf {
    cumulative: Vec<f64>,
    exponent: f64,
}

impl Zipf {
    /// The distribution over `n` ranks whose first rank has probability `top_share`.
    fn with_top_share(n: usize, top_share: f64) -> Zipf {
        let share = |s: f64| 1.0 / (1..=n).map(|r| (r as f64).powf(-s)).sum::<f64>();
        let (mut lo, mut hi) = (0.0, 10.0);
        for _ in 0..60 {
            let mid = (lo + hi) / 2.0;
            if share(mid) < top_share {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let exponent = (lo + hi) / 2.0;
        let mut total = 0.0;
        let mut cumulative: Vec<f64> = (1..=n)
            .map(|r| {
                total += (r as f64).powf(-exponent);
                total
            })
            .collect();
        for c in &mut cumulative {
            *c /= total;
        }
        Zipf {
            cumulative,
            exponent,
        }
    }

    /// A rank, 1-based.
    fn sample(&self, rng: &mut StdRng) -> usize {
        let u: f64 = rng.random();
        self.cumulative
            .partition_point(|&c| c < u)
            .min(self.cumulative.len() - 1)
            + 1
    }
}

struct Bench {
    _dir: tempfile::TempDir,
    log: Arc<dyn Log>,
    store: Arc<dyn MasterStore>,
    datasets: Arc<Datasets>,
    config: StageConfig,
    args: BatchesArgs,
    zipf: Zipf,
}

pub async fn run(args: BatchesArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temp dir")?;
    let log: Arc<dyn Log> = Arc::new(
        EmbeddedLog::open(
            dir.path(),
            EmbeddedOptions {
                compaction_interval: None,
            },
        )
        .await?,
    );
    let store = tenantsync_store::open(&tenantsync_core::url::StoreUrl::Sqlite(
        dir.path().join("store.sqlite3"),
    ))
    .await?;
    let datasets = Arc::new(Datasets::new(
        log.clone(),
        store.clone(),
        Topics::default(),
        Duration::from_secs(3600),
    ));
    let limits = Limits {
        max_records: args.max_records,
        max_bytes: args.max_bytes,
        max_wait: Duration::from_millis(args.max_wait_ms),
    };
    limits.validate()?;
    let zipf = Zipf::with_top_share(args.tenants, args.top_share);
    println!(
        "{} tenants, Zipf exponent {:.3} (t1 writes {:.1}% of records), {} partitions, limits {} records / {} bytes / {} ms",
        args.tenants,
        zipf.exponent,
        100.0 * zipf.cumulative[0],
        args.partitions,
        limits.max_records,
        limits.max_bytes,
        args.max_wait_ms
    );
    let bench = Bench {
        _dir: dir,
        log,
        store,
        datasets,
        config: StageConfig {
            limits,
            owner: "bench".into(),
            max_buffered: 2_000_000,
            ..StageConfig::default()
        },
        args,
        zipf,
    };
    bench.live().await?;
    bench.backlog().await
}

impl Bench {
    async fn declare(&self, name: &str) -> anyhow::Result<Dataset> {
        let dataset = Dataset {
            name: DatasetName::new(name)?,
            partitions: self.args.partitions,
        };
        self.datasets.declare(&dataset).await?;
        Ok(dataset)
    }

    /// A stage; with `slow`, on a log whose batch appends are delayed and wait for the gate.
    fn stage(
        &self,
        slow: Option<(Duration, tokio::sync::watch::Receiver<bool>)>,
    ) -> (Arc<BatcherStage>, Supervisor) {
        let log: Arc<dyn Log> = match slow {
            None => self.log.clone(),
            Some((delay, gate)) => Arc::new(SlowBatches {
                inner: self.log.clone(),
                delay,
                gate,
            }),
        };
        let stage = Arc::new(BatcherStage::new(
            log,
            self.store.clone(),
            self.datasets.clone(),
            self.config.clone(),
        ));
        let supervisor = Supervisor::new(RestartPolicy::default());
        tenantsync_dataset::supervise(&supervisor, self.datasets.clone(), vec![stage.clone()]);
        (stage, supervisor)
    }

    /// `n` state-log messages of Zipf-drawn tenants, stamped now.
    fn records(&self, rng: &mut StdRng, n: usize) -> Vec<tenantsync_log::Message> {
        let data = serde_json::json!({ "p": "x".repeat(self.args.record_bytes) });
        let data = data.as_object().cloned().unwrap_or_default();
        (0..n)
            .map(|_| {
                let rank = self.zipf.sample(rng);
                let id = rng.random_range(0..100_000u32);
                let record = Record {
                    tenant: TenantId::new(format!("t{rank}")).expect("a valid tenant id"),
                    id: EntityId::new(format!("r{id}")).expect("a valid entity id"),
                    version: 1,
                    data: Some(data.clone()),
                    updated_at: Utc::now(),
                    change_id: ChangeId::new(format!("c{id}")).expect("a valid change id"),
                };
                state::encode(&record, self.args.partitions)
            })
            .collect()
    }

    async fn live(&self) -> anyhow::Result<()> {
        let dataset = self.declare("live").await?;
        let (_stage, supervisor) = self.stage(None);
        let state_topic = self.datasets.topics().state(&dataset.name);
        let batches_topic = self.datasets.topics().batches(&dataset.name);

        // The consumer: one reader per batches-log partition.
        let consumed = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let mut readers = Vec::new();
        for partition in 0..dataset.partitions {
            let (log, topic, consumed, stop) = (
                self.log.clone(),
                batches_topic.clone(),
                consumed.clone(),
                stop.clone(),
            );
            readers.push(tokio::spawn(async move {
                let mut small = Histogram::<u64>::new(3).expect("valid histogram");
                let mut large = Histogram::<u64>::new(3).expect("valid histogram");
                let mut appended = Histogram::<u64>::new(3).expect("valid histogram");
                let mut sizes = Histogram::<u64>::new(3).expect("valid histogram");
                let mut from = 0;
                while !stop.is_cancelled() {
                    let entries = log
                        .read(&topic, partition, from, 1_000, Duration::from_millis(100))
                        .await?;
                    let now = Utc::now();
                    for entry in &entries {
                        from = entry.offset + 1;
                        let batch = message::decode(entry).map_err(anyhow::Error::msg)?;
                        let rank: usize = batch.tenant.as_str()[1..].parse()?;
                        sizes.record(batch.records.len() as u64)?;
                        for r in &batch.records {
                            let micros = (now - r.updated_at).num_microseconds().unwrap_or(0);
                            let h = if rank <= 10 { &mut large } else { &mut small };
                            h.record(micros.max(0) as u64)?;
                            if rank > 10 {
                                let ms = entry.timestamp_ms - r.updated_at.timestamp_millis();
                                appended.record(ms.max(0) as u64)?;
                            }
                        }
                        consumed.fetch_add(batch.records.len() as u64, Ordering::Relaxed);
                    }
                }
                anyhow::Ok((small, large, appended, sizes))
            }));
        }

        // The producer: appends every 5 ms, open loop.
        let mut rng = StdRng::seed_from_u64(1);
        let tick = Duration::from_millis(5);
        let per_tick = (self.args.rate as f64 * tick.as_secs_f64()).max(1.0);
        let started = tokio::time::Instant::now();
        let end = started + Duration::from_secs(self.args.duration);
        let mut produced = 0u64;
        let mut owed = 0.0;
        let mut next = started;
        while next < end {
            tokio::time::sleep_until(next).await;
            owed += per_tick;
            let n = owed as usize;
            owed -= n as f64;
            self.log
                .append(&state_topic, self.records(&mut rng, n))
                .await?;
            produced += n as u64;
            next += tick;
        }
        let elapsed = started.elapsed();
        println!(
            "live: appended {produced} records in {:.1} s ({:.0}/s)",
            elapsed.as_secs_f64(),
            produced as f64 / elapsed.as_secs_f64()
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while consumed.load(Ordering::Relaxed) < produced && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        supervisor.shutdown(SHUTDOWN).await?;
        let mut small = Histogram::<u64>::new(3)?;
        let mut large = Histogram::<u64>::new(3)?;
        let mut appended = Histogram::<u64>::new(3)?;
        let mut sizes = Histogram::<u64>::new(3)?;
        for reader in readers {
            let (s, l, a, z) = reader.await??;
            small.add(s)?;
            large.add(l)?;
            appended.add(a)?;
            sizes.add(z)?;
        }
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "live: applied -> batch read, small tenants (t11..): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} records (target p99 <= {} ms)",
            ms(&small, 0.5),
            ms(&small, 0.99),
            small.max() as f64 / 1000.0,
            small.len(),
            self.args.max_wait_ms + 5
        );
        println!(
            "live: applied -> batch appended (the log's timestamp, whole ms), small tenants: p50 {} ms, p99 {} ms, max {} ms",
            appended.value_at_quantile(0.5),
            appended.value_at_quantile(0.99),
            appended.max()
        );
        println!(
            "live: applied -> batch read, 10 largest tenants: p50 {:.1} ms, p99 {:.1} ms over {} records",
            ms(&large, 0.5),
            ms(&large, 0.99),
            large.len()
        );
        println!(
            "live: {} batches; records per batch p10 {} / p50 {} / p90 {} / p99 {} / max {}; mean {:.1}",
            sizes.len(),
            sizes.value_at_quantile(0.1),
            sizes.value_at_quantile(0.5),
            sizes.value_at_quantile(0.9),
            sizes.value_at_quantile(0.99),
            sizes.max(),
            sizes.mean()
        );
        Ok(())
    }

    async fn backlog(&self) -> anyhow::Result<()> {
        let dataset = self.declare("backlog").await?;
        let state_topic = self.datasets.topics().state(&dataset.name);
        let mut rng = StdRng::seed_from_u64(2);
        let mut per_tenant: HashMap<String, u64> = HashMap::new();
        let mut appended = 0;
        while appended < self.args.backlog {
            let n = (self.args.backlog - appended).min(10_000) as usize;
            let messages = self.records(&mut rng, n);
            for m in &messages {
                // The key is `tenant:id`.
                let key = String::from_utf8_lossy(&m.key);
                let tenant = key.split(':').next().unwrap_or_default().to_owned();
                *per_tenant.entry(tenant).or_default() += 1;
            }
            self.log.append(&state_topic, messages).await?;
            appended += n as u64;
        }
        println!(
            "backlog: {appended} records of {} tenants in the state log; draining",
            per_tenant.len()
        );

        let cpu_before = cpu_time();
        let started = Instant::now();
        let (gate, closed) = tokio::sync::watch::channel(!self.args.read_first);
        let slow = (self.args.emit_delay_ms > 0 || self.args.read_first)
            .then(|| (Duration::from_millis(self.args.emit_delay_ms), closed));
        let (stage, supervisor) = self.stage(slow);
        if self.args.read_first {
            while stage.stats().read.load(Ordering::Relaxed) < appended {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            println!(
                "backlog: all records read into the batcher after {:.2} s; emitting",
                started.elapsed().as_secs_f64()
            );
            gate.send_replace(true);
        }
        while stage.stats().records.load(Ordering::Relaxed) < appended {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let elapsed = started.elapsed();
        let cpu = cpu_time() - cpu_before;
        supervisor.shutdown(SHUTDOWN).await?;
        println!(
            "backlog: drained in {:.2} s ({:.0} records/s, appends to the batches log delayed {} ms); batcher CPU {:.2} s = {:.2} us per record",
            elapsed.as_secs_f64(),
            appended as f64 / elapsed.as_secs_f64(),
            self.args.emit_delay_ms,
            cpu.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / appended as f64
        );

        // Emission times per tenant, from the batches log.
        let topic = self.datasets.topics().batches(&dataset.name);
        let mut emitted: Vec<(i64, String, u64)> = Vec::new();
        for partition in 0..dataset.partitions {
            let mut from = 0;
            loop {
                let entries: Vec<Entry> = self
                    .log
                    .read(&topic, partition, from, 10_000, Duration::ZERO)
                    .await?;
                let Some(last) = entries.last() else { break };
                from = last.offset + 1;
                for e in &entries {
                    let h = message::decode_headers(e).map_err(anyhow::Error::msg)?;
                    emitted.push((e.timestamp_ms, h.tenant.to_string(), h.count as u64));
                }
            }
        }
        emitted.sort();
        let threshold = 2 * self.args.max_records as u64;
        let backlogged: Vec<&String> = per_tenant
            .iter()
            .filter(|(_, n)| **n >= threshold)
            .map(|(t, _)| t)
            .collect();
        let mut last_at: HashMap<&str, i64> = HashMap::new();
        for (at, tenant, _) in &emitted {
            last_at.insert(tenant, *at);
        }
        let first_done = backlogged
            .iter()
            .filter_map(|t| last_at.get(t.as_str()))
            .min()
            .copied()
            .unwrap_or(i64::MAX);
        let start_ms = emitted.first().map_or(0, |e| e.0);
        let mut share: HashMap<&str, u64> = HashMap::new();
        for (at, tenant, count) in &emitted {
            // With --read-first, leave out the one append the batcher took before the gate
            // opened, when it had read only a little.
            let counted = !self.args.read_first || *at > start_ms;
            if counted && *at <= first_done {
                *share.entry(tenant).or_default() += count;
            }
        }
        let xs: Vec<f64> = backlogged
            .iter()
            .map(|t| share.get(t.as_str()).copied().unwrap_or(0) as f64)
            .collect();
        let sum: f64 = xs.iter().sum();
        let squares: f64 = xs.iter().map(|x| x * x).sum();
        let jain = if squares > 0.0 {
            sum * sum / (xs.len() as f64 * squares)
        } else {
            0.0
        };
        println!(
            "backlog: {} tenants held >= {threshold} records; over the first {} ms (until the first of them finished) they emitted {:.0} records, min {:.0} / max {:.0} per tenant: Jain's index {jain:.3} (target >= 0.95)",
            backlogged.len(),
            first_done.saturating_sub(start_ms),
            sum,
            xs.iter().copied().fold(f64::INFINITY, f64::min),
            xs.iter().copied().fold(0.0, f64::max),
        );
        let mut done = Histogram::<u64>::new(3)?;
        for (tenant, at) in &last_at {
            if per_tenant.get(*tenant).is_some_and(|n| *n < threshold) {
                done.record((at - start_ms).max(0) as u64)?;
            }
        }
        let top = last_at.get("t1").map_or(0, |at| at - start_ms);
        println!(
            "backlog: the other tenants' backlogs were fully emitted by p50 {} ms / p99 {} ms / max {} ms after the first batch; t1's by {top} ms",
            done.value_at_quantile(0.5),
            done.value_at_quantile(0.99),
            done.max()
        );
        Ok(())
    }
}

/// This process's CPU time, user plus system.
fn cpu_time() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF).map_or(Duration::ZERO, |u| {
        let t = |tv: nix::sys::time::TimeVal| {
            Duration::from_secs(tv.tv_sec() as u64) + Duration::from_micros(tv.tv_usec() as u64)
        };
        t(u.user_time()) + t(u.system_time())
    })
}
