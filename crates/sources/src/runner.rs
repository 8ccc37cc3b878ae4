//! Running sources: which shards this instance runs, and the run of one shard.
//!
//! The `sources` service looks at the stored definitions every [`SCAN`] and at how many
//! instances are live, and wants `ceil(shards / live)` shards of each source here: it starts a
//! `source/{name}/{shard}` service for a shard it lacks (which runs only if it gets the shard's
//! claim in the store) and stops its highest shards beyond its share (which release their
//! claims at once, for another instance to take).
//!
//! A shard's run takes the claim, then reads while renewing it every [`RENEW`] with its figures.
//! It ends when the claim is lost (taken over after this instance stalled past [`LEASE`]), when
//! the definition changed or was deleted (the `sources` service starts it again on the new
//! one), or on stop, releasing the claim. A killed instance's claims expire after [`LEASE`].
//!
//! The claim keeps a shard on one instance at a time almost always; correctness does not rest
//! on it. A stalled holder that wakes up after a takeover may still append rows the new holder
//! appends too: both carry the same change ids, and the processor applies an id once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tenantsync_core::Classify;
use tenantsync_store::SourceStore;
use tenantsync_supervisor::{ServiceError, Supervisor};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::definition::{Definition, SourceName};
use crate::figures::{Figures, ShardStatus};
use crate::ingest::{Ingest, Read};
use crate::{SourceError, debezium, outbox};

/// How often the `sources` service looks at the definitions and the live instances.
pub const SCAN: Duration = Duration::from_secs(1);
/// How long a shard's claim lasts without renewal: how soon another instance takes over from
/// a killed one.
pub const LEASE: Duration = Duration::from_secs(10);
/// How often a shard's holder renews its claim and stores its figures.
pub const RENEW: Duration = Duration::from_secs(2);

/// What a shard's reader works with.
pub struct ShardContext {
    pub source: SourceName,
    pub shard: u32,
    pub shards: u32,
    pub ingest: Arc<Ingest>,
    pub figures: Arc<Figures>,
    /// Cancelled when the run must end (stop, claim lost, definition changed).
    pub stop: CancellationToken,
    /// This instance's name.
    pub instance: String,
}

impl ShardContext {
    /// Appends what the shard read; see [`Ingest::submit`].
    pub async fn submit(&self, reads: Vec<Read>) -> Result<(), SourceError> {
        self.ingest
            .submit(&self.source, &self.figures, reads, &self.stop)
            .await
    }
}

/// The sources component of one instance.
pub struct Sources {
    store: Arc<dyn SourceStore>,
    ingest: Arc<Ingest>,
    instance: String,
    /// How many instances are live (this one included), for each one's share of the shards.
    live: Arc<dyn Fn() -> u32 + Send + Sync>,
    /// Shards this instance runs, with their figures.
    running: Mutex<HashMap<(SourceName, u32), Arc<Figures>>>,
}

fn service_name(source: &SourceName, shard: u32) -> String {
    format!("source/{source}/{shard}")
}

impl Sources {
    pub fn new(
        store: Arc<dyn SourceStore>,
        ingest: Arc<Ingest>,
        instance: String,
        live: Arc<dyn Fn() -> u32 + Send + Sync>,
    ) -> Self {
        Self {
            store,
            ingest,
            instance,
            live,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Starts the `sources` service.
    pub fn supervise(self: &Arc<Self>, supervisor: &Supervisor) {
        let (sources, watcher) = (self.clone(), supervisor.clone());
        supervisor.spawn("sources", move |stop| {
            let (sources, supervisor) = (sources.clone(), watcher.clone());
            async move {
                loop {
                    if let Err(e) = sources.scan(&supervisor).await {
                        return Err(ServiceError::from_error(e));
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(SCAN) => {}
                    }
                }
            }
        });
    }

    /// Figures of the shards this instance runs, by source (for `/metrics`).
    pub fn figures(&self) -> Vec<(SourceName, u32, ShardStatus)> {
        let running = self.running.lock().expect("running lock");
        let mut all: Vec<_> = running
            .iter()
            .map(|((source, shard), f)| (source.clone(), *shard, f.snapshot()))
            .collect();
        all.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        all
    }

    fn held(&self, source: &SourceName) -> Vec<u32> {
        let running = self.running.lock().expect("running lock");
        let mut held: Vec<u32> = running
            .keys()
            .filter(|(s, _)| s == source)
            .map(|(_, shard)| *shard)
            .collect();
        held.sort_unstable();
        held
    }

    async fn scan(self: &Arc<Self>, supervisor: &Supervisor) -> Result<(), SourceError> {
        let live = (self.live)().max(1);
        for stored in self.store.sources().await? {
            let Ok(name) = SourceName::new(stored.name.clone()) else {
                continue;
            };
            let definition = match crate::parse_stored(&stored) {
                Ok(d) => d,
                Err(error) => {
                    warn!(source = %name, %error, "a stored source definition does not parse; not running it");
                    continue;
                }
            };
            let shards = definition.shards();
            let share = shards.div_ceil(live) as usize;
            let held = self.held(&name);
            // Beyond this instance's share: the highest shards go first, so that instances
            // agree on which ones move.
            for &shard in held.iter().skip(share) {
                info!(source = %name, shard, "handing a shard over to another instance");
                supervisor.stop(&service_name(&name, shard));
            }
            if held.len() < share {
                for shard in (0..shards).filter(|s| !held.contains(s)) {
                    self.clone()
                        .start(supervisor, &name, shard, stored.revision, &definition);
                }
            }
        }
        Ok(())
    }

    /// Starts the shard's service unless it runs; its run ends at once when another instance
    /// holds the claim.
    fn start(
        self: Arc<Self>,
        supervisor: &Supervisor,
        source: &SourceName,
        shard: u32,
        revision: u64,
        definition: &Definition,
    ) {
        let (source, definition) = (source.clone(), Arc::new(definition.clone()));
        supervisor.spawn(service_name(&source, shard), move |stop| {
            let (sources, source, definition) = (self.clone(), source.clone(), definition.clone());
            async move {
                sources
                    .run_shard(&source, shard, revision, &definition, stop)
                    .await
                    // A broken source is its own failure, shown in its status, never the
                    // instance's: it must not make `/readyz` fail for the other work here.
                    .map_err(ServiceError::transient)
            }
        });
    }

    async fn run_shard(
        &self,
        source: &SourceName,
        shard: u32,
        revision: u64,
        definition: &Definition,
        stop: CancellationToken,
    ) -> Result<(), SourceError> {
        let now = now_ms();
        let Some(epoch) = self
            .store
            .claim_source(
                source.as_str(),
                shard,
                &self.instance,
                now,
                LEASE.as_millis() as i64,
            )
            .await?
        else {
            return Ok(());
        };
        let stored = self
            .store
            .source_shards(source.as_str())
            .await?
            .into_iter()
            .find(|s| s.shard == shard)
            .and_then(|s| s.status)
            .and_then(|s| serde_json::from_str::<ShardStatus>(&s).ok())
            .unwrap_or_default();
        let figures = Arc::new(Figures::resume(stored));
        self.running
            .lock()
            .expect("running lock")
            .insert((source.clone(), shard), figures.clone());
        info!(%source, shard, epoch, "running a source shard");
        let ctx = ShardContext {
            source: source.clone(),
            shard,
            shards: definition.shards(),
            ingest: self.ingest.clone(),
            figures: figures.clone(),
            stop: stop.child_token(),
            instance: self.instance.clone(),
        };
        figures.set_state("running");
        let read = async {
            match definition {
                Definition::PostgresOutbox(o) => outbox::run(o, &ctx).await,
                Definition::Debezium(d) => debezium::run(d, &ctx).await,
            }
        };
        let result = tokio::select! {
            result = read => result,
            result = self.hold(source, shard, epoch, revision, &figures, &ctx.stop) => result,
        };
        ctx.stop.cancel();
        if let Err(error) = &result {
            figures.set_error(error.to_string());
            warn!(%source, shard, %error, class = ?error.class(), "a source shard failed");
        }
        self.running
            .lock()
            .expect("running lock")
            .remove(&(source.clone(), shard));
        // Whatever ended the run, the figures are kept and the claim given up, so that this
        // instance or another takes the shard again at once (after a failure, the supervisor's
        // backoff delays this instance's next try).
        let renewed = self.renew(source, shard, epoch, &figures).await;
        if matches!(renewed, Ok(true)) && (stop.is_cancelled() || result.is_ok()) {
            let _ = self
                .store
                .release_source(source.as_str(), shard, epoch)
                .await;
        }
        result
    }

    /// Renews the shard's claim for another [`LEASE`], storing its figures; false when the
    /// claim was taken over or the source deleted.
    async fn renew(
        &self,
        source: &SourceName,
        shard: u32,
        epoch: u64,
        figures: &Figures,
    ) -> Result<bool, SourceError> {
        let status = serde_json::to_string(&figures.snapshot()).expect("figures serialize");
        Ok(self
            .store
            .renew_source(
                source.as_str(),
                shard,
                epoch,
                now_ms(),
                LEASE.as_millis() as i64,
                Some(&status),
            )
            .await?)
    }

    /// Renews the claim with the shard's figures until it is lost or the definition changes;
    /// returns `Ok` then (the run ends and is started again as needed).
    async fn hold(
        &self,
        source: &SourceName,
        shard: u32,
        epoch: u64,
        revision: u64,
        figures: &Figures,
        stop: &CancellationToken,
    ) -> Result<(), SourceError> {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(RENEW) => {}
            }
            let current = self.store.source(source.as_str()).await?;
            if current.is_none_or(|s| s.revision != revision) {
                info!(%source, shard, "the source's definition changed; starting over");
                return Ok(());
            }
            if !self.renew(source, shard, epoch, figures).await? {
                warn!(%source, shard, "another instance took this source shard over");
                return Ok(());
            }
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
