//! The batcher stage: per dataset, one task across all instances sharing the store reads the
//! state log, forms batches with the core [`Batcher`], appends them to the batches log and
//! checkpoints its positions in the master store.
//!
//! # Crash safety
//!
//! The checkpoint (stored with [`CoordinationStore::renew_batcher`]) holds, per state-log partition,
//! the [`Batcher::safe_offset`] read after the last durable append, and per batches-log
//! partition the offset from which recovery must read: that of the oldest appended batch that
//! may cover a state offset at or above the checkpointed ones. After a crash the next claimant
//! reads the batches log from there, gives each tenant's highest covered offset to
//! [`Batcher::with_emitted`], and re-reads the state log from the checkpointed offsets. So a
//! record is never lost (everything below the checkpoint is in a durable batch) and never
//! batched twice (everything above it that a durable batch covers is skipped).
//!
//! # One batcher per dataset
//!
//! A task batches a dataset only while it holds the dataset's claim in the store
//! ([`CoordinationStore::claim_batcher`]), renewed with every checkpoint; a renewal that finds the
//! claim taken over stops the task. An instance that stalls longer than the claim's lease and
//! then appends before its next renewal can still emit batches the new claimant emits again
//! with other bounds: the records carry their versions, so applying them by version stays
//! idempotent.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tenantsync_core::{DatasetName, TenantId};
use tenantsync_dataset::{Datasets, DecodeError, PerDataset};
use tenantsync_log::{Log, LogError, Offset, Partition};
use tenantsync_store::{BatcherClaim, CoordinationStore, Dataset, StoreError};
use tenantsync_supervisor::{MetricsSource, ServiceError, Supervisor};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{Batch, Batcher, BatchesError, Limits, SourceRecord, message, millis, now_ms};

/// Tuning of the batcher stage.
#[derive(Debug, Clone)]
pub struct StageConfig {
    /// Limits of datasets not in `dataset_limits`.
    pub limits: Limits,
    pub dataset_limits: HashMap<DatasetName, Limits>,
    /// This instance's name in the store's batcher claims; an instance restarted with the same
    /// name takes its claims back at once.
    pub owner: String,
    /// How long a claim lasts without renewal; another instance takes a dataset over this long
    /// after its batcher stopped renewing.
    pub claim_lease: Duration,
    /// How often positions are checkpointed (and the claim renewed).
    pub checkpoint_interval: Duration,
    /// Records held in memory, open and sealed, before the stage stops reading the state log
    /// until it has emitted some.
    pub max_buffered: usize,
    /// Most state-log entries read at once from one partition.
    pub read_max: usize,
    /// Most batches appended to the batches log in one call.
    pub append_max: usize,
}

impl StageConfig {
    pub fn limits_of(&self, dataset: &DatasetName) -> Limits {
        self.dataset_limits
            .get(dataset)
            .copied()
            .unwrap_or(self.limits)
    }
}

impl Default for StageConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            dataset_limits: HashMap::new(),
            owner: "tenantsync".to_owned(),
            claim_lease: Duration::from_secs(10),
            checkpoint_interval: Duration::from_millis(250),
            max_buffered: 200_000,
            read_max: 2_000,
            append_max: 64,
        }
    }
}

/// Counters of the stage's work since start.
#[derive(Debug, Default)]
pub struct StageStats {
    /// State-log records taken in (buffered, or skipped as already in a durable batch).
    pub read: AtomicU64,
    /// Records appended in batches.
    pub records: AtomicU64,
    /// Batches appended.
    pub batches: AtomicU64,
    /// State-log entries skipped because they do not decode as a record.
    pub undecodable: AtomicU64,
}

/// The stage's position, as stored in the store's batcher claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Checkpoint {
    /// Per state-log partition, the offset to read from.
    source: Vec<Offset>,
    /// Per batches-log partition, where recovery starts reading.
    batches_from: Vec<Offset>,
    /// The batches-log partition of the next batch.
    next_partition: Partition,
}

/// Turns every dataset's state log into batches; see the module docs.
pub struct BatcherStage {
    log: Arc<dyn Log>,
    store: Arc<dyn CoordinationStore>,
    datasets: Arc<Datasets>,
    config: StageConfig,
    stats: StageStats,
    emitted: watch::Sender<u64>,
}

impl MetricsSource for BatcherStage {
    fn register_metrics(&self, registry: &mut Registry) {
        let stats = &self.stats;
        for (name, help, value) in [
            (
                "batcher_read",
                "State-log records taken in by the batcher",
                &stats.read,
            ),
            (
                "batcher_records",
                "Records appended to batches logs",
                &stats.records,
            ),
            ("batcher_batches", "Batches appended", &stats.batches),
            (
                "batcher_undecodable",
                "State-log entries the batcher skipped as undecodable",
                &stats.undecodable,
            ),
        ] {
            registry.register(name, help, ConstCounter::new(value.load(Ordering::Relaxed)));
        }
    }
}

/// Starts the service `batcher/{dataset}`.
impl PerDataset for BatcherStage {
    fn start(self: Arc<Self>, supervisor: &Supervisor, dataset: &Dataset) {
        let dataset = dataset.clone();
        supervisor.spawn(format!("batcher/{}", dataset.name), move |stop| {
            let (stage, dataset) = (self.clone(), dataset.clone());
            async move {
                stage
                    .run_dataset(&dataset, &stop)
                    .await
                    .map_err(ServiceError::from_error)
            }
        });
    }
}

impl BatcherStage {
    pub fn new(
        log: Arc<dyn Log>,
        store: Arc<dyn CoordinationStore>,
        datasets: Arc<Datasets>,
        config: StageConfig,
    ) -> Self {
        Self {
            log,
            store,
            datasets,
            config,
            stats: StageStats::default(),
            emitted: watch::Sender::new(0),
        }
    }

    pub fn stats(&self) -> &StageStats {
        &self.stats
    }

    /// Changes after every durable append of batches by this instance, so HTTP workers waiting
    /// for a batch here wake at once.
    pub fn emitted(&self) -> watch::Receiver<u64> {
        self.emitted.subscribe()
    }

    /// Claims the dataset and batches it until `stop`; waits while another instance holds the
    /// claim. A failed run starts over from the last checkpoint.
    async fn run_dataset(
        &self,
        dataset: &Dataset,
        stop: &CancellationToken,
    ) -> Result<(), BatchesError> {
        let lease_ms = millis(self.config.claim_lease);
        loop {
            match self
                .store
                .claim_batcher(&dataset.name, &self.config.owner, now_ms(), lease_ms)
                .await?
            {
                Some(claim) => {
                    info!(dataset = %dataset.name, epoch = claim.epoch, "batching dataset");
                    match self.batch(dataset, claim, stop).await {
                        // Not a failure: wait while the other instance holds the claim.
                        Err(BatchesError::ClaimLost) => {
                            info!(dataset = %dataset.name, "another instance took over batching this dataset")
                        }
                        done => return done,
                    }
                }
                None => debug!(dataset = %dataset.name, "another instance batches this dataset"),
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.config.claim_lease / 2) => {}
            }
        }
    }

    /// Batches the dataset under `claim` until shutdown (`Ok`) or an error.
    async fn batch(
        &self,
        dataset: &Dataset,
        claim: BatcherClaim,
        shutdown: &CancellationToken,
    ) -> Result<(), BatchesError> {
        self.log
            .ensure_topic(&self.datasets.batches_topic(dataset))
            .await?;
        let checkpoint = match &claim.checkpoint {
            Some(bytes) => Some(decode_checkpoint(dataset, bytes)?),
            None => None,
        };
        let mut run = Run::recover(self, dataset, claim.epoch, checkpoint).await?;
        let (tx, mut rx) = mpsc::channel(2 * dataset.partitions as usize);
        let mut readers = JoinSet::new();
        let state_topic = self.datasets.topics().state(&dataset.name);
        for (partition, &from) in run.start.iter().enumerate() {
            readers.spawn(read_partition(
                self.log.clone(),
                state_topic.clone(),
                partition as Partition,
                from,
                self.config.read_max,
                tx.clone(),
            ));
        }
        drop(tx);

        // One append is in flight at a time, while reading goes on: the batches it carries
        // were taken from the core, so positions are checkpointed only between appends.
        // Checkpoints are written in the background too, one at a time, so that sealed batches
        // never wait for the store.
        let mut inflight: Option<Append> = None;
        let mut renewal: Option<Renewal> = None;
        let mut next_checkpoint = Instant::now() + self.config.checkpoint_interval;
        loop {
            if inflight.is_none() {
                if renewal.is_none() && Instant::now() >= next_checkpoint {
                    renewal = Some(run.start_checkpoint(self, false));
                    next_checkpoint = Instant::now() + self.config.checkpoint_interval;
                }
                inflight = run.start_append(self);
            }
            // The next checkpoint is something to wake for only once it can start.
            let checkpoint_due = renewal.is_none().then_some(next_checkpoint);
            let wake = run
                .batcher
                .next_deadline()
                .into_iter()
                .chain(checkpoint_due)
                .min();
            let room = run.batcher.buffered() < self.config.max_buffered;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    if let Some(append) = inflight.take() {
                        run.finish_append(self, append).await?;
                    }
                    if let Some(renewal) = renewal.take() {
                        checked_renewal(renewal.await)?;
                    }
                    run.checkpoint(self, true).await?;
                    return Ok(());
                }
                done = async { renewal.as_mut().expect("guarded").await }, if renewal.is_some() => {
                    renewal = None;
                    checked_renewal(done)?;
                }
                done = async { (&mut inflight.as_mut().expect("guarded").task).await }, if inflight.is_some() => {
                    let append = inflight.take().expect("guarded");
                    run.appended(self, append, done)?;
                }
                chunk = rx.recv(), if room => match chunk {
                    Some(chunk) => run.push(self, chunk?),
                    None => return Err(BatchesError::Stopped("a state-log reader")),
                },
                _ = sleep_until(wake), if inflight.is_none() && wake.is_some() => {}
            }
            run.batcher.tick(Instant::now());
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Batches on their way to the batches log.
struct Append {
    task: tokio::task::JoinHandle<Result<Vec<Offset>, LogError>>,
    /// Per batch: the batches-log partition, and the source partition, last source offset and
    /// record count it covers.
    covers: Vec<(Partition, Partition, Offset, u64)>,
}

/// One claim's batching of one dataset.
struct Run<'a> {
    dataset: &'a Dataset,
    topic: String,
    epoch: u64,
    batcher: Batcher,
    /// Per state-log partition, where reading started (the position until a record is pushed).
    start: Vec<Offset>,
    /// Per batches-log partition, appended batches that may still cover offsets at or above
    /// the source positions: (offset, source partition, last source offset), in offset order.
    pending: Vec<VecDeque<(Offset, Partition, Offset)>>,
    /// Per batches-log partition, one past the last batch appended.
    ends: Vec<Offset>,
    next_partition: Partition,
}

impl<'a> Run<'a> {
    /// Reads back what the batches log holds past the checkpoint and sets up a batcher that
    /// skips it.
    async fn recover(
        stage: &BatcherStage,
        dataset: &'a Dataset,
        epoch: u64,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Run<'a>, BatchesError> {
        let partitions = dataset.partitions as usize;
        let checkpoint = checkpoint.unwrap_or(Checkpoint {
            source: vec![0; partitions],
            batches_from: vec![0; partitions],
            next_partition: 0,
        });
        let topic = stage.datasets.topics().batches(&dataset.name);
        let mut covered: HashMap<TenantId, Offset> = HashMap::new();
        let mut pending = vec![VecDeque::new(); partitions];
        let mut ends = vec![0; partitions];
        for (q, &from) in checkpoint.batches_from.iter().enumerate() {
            let q_partition = q as Partition;
            let mut from = from;
            loop {
                let entries = stage
                    .log
                    .read(&topic, q_partition, from, 1_000, Duration::ZERO)
                    .await?;
                let Some(last) = entries.last() else { break };
                from = last.offset + 1;
                for entry in &entries {
                    match message::decode_headers(entry) {
                        Ok(h) if (h.source.partition as usize) < partitions => {
                            let offset = covered.entry(h.tenant).or_insert(h.source.last_offset);
                            *offset = (*offset).max(h.source.last_offset);
                            pending[q].push_back((
                                entry.offset,
                                h.source.partition,
                                h.source.last_offset,
                            ));
                        }
                        Ok(_) | Err(_) => {
                            warn!(dataset = %dataset.name, partition = q, offset = entry.offset, "skipping a batches-log entry that is not a batch of this dataset");
                        }
                    }
                }
            }
            ends[q] = from.max(stage.log.end_offset(&topic, q_partition).await?);
        }
        let recovered: usize = pending.iter().map(VecDeque::len).sum();
        info!(dataset = %dataset.name, recovered, tenants = covered.len(), "batcher recovered");
        Ok(Run {
            dataset,
            topic,
            epoch,
            batcher: Batcher::new(stage.config.limits_of(&dataset.name)).with_emitted(covered),
            start: checkpoint.source,
            pending,
            ends,
            next_partition: checkpoint.next_partition % dataset.partitions.max(1),
        })
    }

    /// Buffers a chunk from a reader. A record's `max_wait` counts from when the state log
    /// appended it, not from when it was read, so reading late never makes a batch wait longer.
    fn push(&mut self, stage: &BatcherStage, chunk: Vec<Decoded>) {
        let (now, wall_ms) = (Instant::now(), now_ms());
        for decoded in chunk {
            match decoded {
                Ok(record) => {
                    stage.stats.read.fetch_add(1, Ordering::Relaxed);
                    let age = Duration::from_millis(
                        u64::try_from(wall_ms - record.appended_at_ms).unwrap_or(0),
                    );
                    let appended = now.checked_sub(age).unwrap_or(now);
                    self.batcher.push(record, appended);
                }
                Err((partition, offset, reason)) => {
                    stage.stats.undecodable.fetch_add(1, Ordering::Relaxed);
                    warn!(dataset = %self.dataset.name, partition, offset, %reason, "skipping undecodable state-log entry");
                }
            }
        }
    }

    /// Takes up to `append_max` sealed batches and starts appending them, each to the next
    /// batches-log partition in turn; `None` when nothing is sealed.
    fn start_append(&mut self, stage: &BatcherStage) -> Option<Append> {
        let batches: Vec<Batch> = std::iter::from_fn(|| self.batcher.next_batch())
            .take(stage.config.append_max)
            .collect();
        if batches.is_empty() {
            return None;
        }
        let partitions = self.dataset.partitions.max(1);
        let mut messages = Vec::with_capacity(batches.len());
        let mut covers = Vec::with_capacity(batches.len());
        for batch in &batches {
            messages.push(message::encode(
                &self.dataset.name,
                batch,
                self.next_partition,
            ));
            covers.push((
                self.next_partition,
                batch.partition,
                batch.last_offset,
                batch.records.len() as u64,
            ));
            self.next_partition = (self.next_partition + 1) % partitions;
        }
        let (log, topic) = (stage.log.clone(), self.topic.clone());
        Some(Append {
            task: tokio::spawn(async move { log.append(&topic, messages).await }),
            covers,
        })
    }

    /// Waits for an append to be durable and records it.
    async fn finish_append(
        &mut self,
        stage: &BatcherStage,
        mut append: Append,
    ) -> Result<(), BatchesError> {
        let done = (&mut append.task).await;
        self.appended(stage, append, done)
    }

    /// Records a finished append: what its batches cover, for checkpoints.
    fn appended(
        &mut self,
        stage: &BatcherStage,
        append: Append,
        done: Result<Result<Vec<Offset>, LogError>, tokio::task::JoinError>,
    ) -> Result<(), BatchesError> {
        let offsets = done.map_err(|_| BatchesError::Stopped("an append to the batches log"))??;
        let mut records = 0;
        for (&offset, &(q, source_partition, last_offset, count)) in
            offsets.iter().zip(&append.covers)
        {
            let q = q as usize;
            self.pending[q].push_back((offset, source_partition, last_offset));
            self.ends[q] = self.ends[q].max(offset + 1);
            records += count;
        }
        stage.stats.records.fetch_add(records, Ordering::Relaxed);
        stage
            .stats
            .batches
            .fetch_add(append.covers.len() as u64, Ordering::Relaxed);
        stage.emitted.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Stores the positions every durable batch allows, renewing the claim; `release` lets
    /// another instance take the claim at once (at shutdown).
    async fn checkpoint(
        &mut self,
        stage: &BatcherStage,
        release: bool,
    ) -> Result<(), BatchesError> {
        let renew = self.start_checkpoint(stage, release);
        checked_renewal(renew.await)
    }

    /// Computes the checkpoint now (it covers only batches already durable) and starts storing
    /// it; the task answers whether the claim was still ours.
    fn start_checkpoint(&mut self, stage: &BatcherStage, release: bool) -> Renewal {
        let source: Vec<Offset> = self
            .start
            .iter()
            .enumerate()
            .map(|(p, &start)| self.batcher.safe_offset(p as Partition).unwrap_or(start))
            .collect();
        let batches_from = self
            .pending
            .iter_mut()
            .zip(&self.ends)
            .map(|(pending, &end)| {
                while let Some(&(_, p, last)) = pending.front()
                    && last < source.get(p as usize).copied().unwrap_or(Offset::MAX)
                {
                    pending.pop_front();
                }
                pending.front().map_or(end, |&(offset, _, _)| offset)
            })
            .collect();
        let checkpoint = Checkpoint {
            source,
            batches_from,
            next_partition: self.next_partition,
        };
        let bytes = serde_json::to_vec(&checkpoint).expect("a checkpoint serialises");
        let lease_ms = if release {
            0
        } else {
            millis(stage.config.claim_lease)
        };
        let (store, dataset, epoch) = (stage.store.clone(), self.dataset.name.clone(), self.epoch);
        tokio::spawn(async move {
            store
                .renew_batcher(&dataset, epoch, now_ms(), lease_ms, Some(&bytes))
                .await
        })
    }
}

/// A checkpoint on its way to the store.
type Renewal = tokio::task::JoinHandle<Result<bool, StoreError>>;

fn checked_renewal(
    done: Result<Result<bool, StoreError>, tokio::task::JoinError>,
) -> Result<(), BatchesError> {
    match done.map_err(|_| BatchesError::Stopped("a checkpoint"))?? {
        true => Ok(()),
        false => Err(BatchesError::ClaimLost),
    }
}

/// A state-log entry as the batcher buffers it, or where it is and why it does not decode.
type Decoded = Result<SourceRecord, (Partition, Offset, DecodeError)>;

/// What a reader hands the batching loop.
type Chunk = Result<Vec<Decoded>, LogError>;

/// Reads one state-log partition from `from` into `tx`, decoding as it goes (off the batching
/// loop, one task per partition), until the receiver is gone.
async fn read_partition(
    log: Arc<dyn Log>,
    topic: String,
    partition: Partition,
    mut from: Offset,
    max: usize,
    tx: mpsc::Sender<Chunk>,
) {
    loop {
        let chunk = match log
            .read(&topic, partition, from, max, Duration::from_millis(500))
            .await
        {
            Ok(entries) if entries.is_empty() => continue,
            Ok(entries) => {
                from = entries.last().map_or(from, |e| e.offset + 1);
                Ok(entries
                    .iter()
                    .map(|e| message::source_record(e).map_err(|why| (e.partition, e.offset, why)))
                    .collect())
            }
            Err(error) => Err(error),
        };
        let failed = chunk.is_err();
        if tx.send(chunk).await.is_err() || failed {
            return;
        }
    }
}

fn decode_checkpoint(dataset: &Dataset, bytes: &[u8]) -> Result<Checkpoint, BatchesError> {
    let checkpoint: Checkpoint =
        serde_json::from_slice(bytes).map_err(|e| BatchesError::Checkpoint(e.to_string()))?;
    let partitions = dataset.partitions as usize;
    if checkpoint.source.len() != partitions || checkpoint.batches_from.len() != partitions {
        return Err(BatchesError::Checkpoint(format!(
            "it is for {} partitions, the dataset has {partitions}",
            checkpoint.source.len()
        )));
    }
    Ok(checkpoint)
}
