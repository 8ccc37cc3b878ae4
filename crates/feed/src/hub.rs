//! Live wake-ups, shared by every reader of an instance.
//!
//! One [`tail`] task per partition of each dataset's state log reads every state this or any
//! other instance publishes and tells the [`Hub`] which tenant changed. Readers waiting at the
//! end of a tenant's feed sleep on that tenant's signal instead of polling the store, so a
//! thousand idle long-polls cost no store reads, and a change wakes only the readers of its
//! tenant. The state log is read once per instance, whatever the number of readers.
//!
//! The hub also remembers each tenant's end (one past its highest seq) as last read from the
//! store, and whether anything was published for the tenant since. A reader positioned at a
//! clean end has nothing to read and skips the store. A state is published only after its
//! change committed to the store, so an end measured before the wake-up is never trusted after
//! it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry;
use tenantsync_core::{DatasetName, Record, TenantId};
use tenantsync_dataset::{CommitObserver, Datasets, PerDataset};
use tenantsync_log::{Log, Partition};
use tenantsync_store::{Dataset, FeedStore, Offset};

use tenantsync_supervisor::{MetricsSource, ServiceError, Supervisor};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::tenant_feed::TailCache;

/// How long one read of the state log waits for new entries before asking again.
const TAIL_WAIT: Duration = Duration::from_secs(10);
const TAIL_BATCH: usize = 1_000;
/// How often the hub forgets tenants no one waits on.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

struct Tenant {
    /// Sends the tenant's generation to its waiters.
    changed: Option<watch::Sender<u64>>,
    /// The hub's clock when the tenant last changed (or its entry was created). The clock only
    /// grows, so a generation is never seen twice, even across a sweep that forgot the tenant.
    generation: u64,
    /// The end last read from the store, with the generation at the time of the read.
    end: Option<(Offset, u64)>,
    /// A state of the tenant was published or committed: it has records (or tombstones), so
    /// [`Hub::tenants`] keeps listing it however long nobody reads it.
    published: bool,
    /// The tenant's latest records, shared by its live readers; kept while any reader waits.
    tail: Option<Arc<tokio::sync::Mutex<TailCache>>>,
}

#[derive(Default)]
struct DatasetTenants {
    tenants: HashMap<TenantId, Tenant>,
    /// Bumped for every state of the dataset: what subscriptions covering all tenants wait on.
    changed: Option<watch::Sender<u64>>,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct HubStats {
    /// States read from the state logs.
    pub states_seen: AtomicU64,
    /// Tombstones purged from the master store by this instance's retention task.
    pub tombstones_purged: AtomicU64,
}

/// See the module documentation.
#[derive(Default)]
pub struct Hub {
    state: Mutex<State>,
    stats: HubStats,
}

#[derive(Default)]
struct State {
    datasets: HashMap<DatasetName, DatasetTenants>,
    /// Bumped for every change of any tenant.
    clock: u64,
}

impl State {
    fn tenant(&mut self, dataset: &DatasetName, tenant: &TenantId) -> &mut Tenant {
        let clock = self.clock;
        self.datasets
            .entry(dataset.clone())
            .or_default()
            .tenants
            .entry(tenant.clone())
            .or_insert_with(|| Tenant {
                changed: None,
                generation: clock,
                end: None,
                published: false,
                tail: None,
            })
    }
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    pub fn stats(&self) -> &HubStats {
        &self.stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_tenant<T>(
        &self,
        dataset: &DatasetName,
        tenant: &TenantId,
        f: impl FnOnce(&mut Tenant) -> T,
    ) -> T {
        f(self.lock().tenant(dataset, tenant))
    }

    /// A receiver that changes whenever a state of the tenant is published.
    pub fn watch(&self, dataset: &DatasetName, tenant: &TenantId) -> watch::Receiver<u64> {
        self.with_tenant(dataset, tenant, |t| {
            t.changed
                .get_or_insert_with(|| watch::Sender::new(t.generation))
                .subscribe()
        })
    }

    /// A receiver that changes whenever a state of any tenant of the dataset is published.
    pub fn watch_dataset(&self, dataset: &DatasetName) -> watch::Receiver<u64> {
        self.lock()
            .datasets
            .entry(dataset.clone())
            .or_default()
            .changed
            .get_or_insert_with(|| watch::Sender::new(0))
            .subscribe()
    }

    /// The tenant's generation, to pass to [`record_end`](Hub::record_end) after reading the
    /// store.
    pub fn generation(&self, dataset: &DatasetName, tenant: &TenantId) -> u64 {
        let state = self.lock();
        state
            .datasets
            .get(dataset)
            .and_then(|ds| ds.tenants.get(tenant))
            .map_or(state.clock, |t| t.generation)
    }

    /// Remembers the tenant's end as read from the store by a read that started at
    /// `generation`.
    pub fn record_end(
        &self,
        dataset: &DatasetName,
        tenant: &TenantId,
        end: Offset,
        generation: u64,
    ) {
        self.with_tenant(dataset, tenant, |t| {
            // A read of a newer generation replaces; of the same one, the higher end wins.
            if t.end.is_none_or(|(e, g)| (g, e) < (generation, end)) {
                t.end = Some((end, generation));
            }
        });
    }

    /// The tenant's end, if it is known and nothing was published for the tenant since it was
    /// read: a reader at or past it has nothing to read.
    pub fn known_end(&self, dataset: &DatasetName, tenant: &TenantId) -> Option<Offset> {
        let state = self.lock();
        let t = state.datasets.get(dataset)?.tenants.get(tenant)?;
        t.end.filter(|&(_, g)| g == t.generation).map(|(e, _)| e)
    }

    /// Forgets what no one needs: signals and tails of tenants nobody waits on, and entries of
    /// tenants without records (a read or wait for any tenant id creates one, so without this
    /// the hub would grow with every id ever asked for). A tenant with records, known from the
    /// store or from a published state, is never forgotten: [`tenants`](Hub::tenants) lists it. [`sweeper`](Hub::sweeper) calls it
    /// every few seconds; it is safe at any moment.
    pub fn sweep(&self) {
        for ds in self.lock().datasets.values_mut() {
            ds.tenants.retain(|_, t| {
                if t.changed.as_ref().is_none_or(|c| c.receiver_count() == 0) {
                    t.changed = None;
                    t.tail = None;
                }
                t.changed.is_some() || t.published || t.end.is_some_and(|(end, _)| end > 0)
            });
        }
    }

    /// Every tenant the hub knows of in the dataset (those with records when the hub started,
    /// and those published since), ordered.
    pub fn tenants(&self, dataset: &DatasetName) -> Vec<TenantId> {
        let mut tenants: Vec<TenantId> = self
            .lock()
            .datasets
            .get(dataset)
            .map(|ds| ds.tenants.keys().cloned().collect())
            .unwrap_or_default();
        tenants.sort_unstable();
        tenants
    }

    /// The tenant's shared tail, created empty at `position` if there is none.
    pub(crate) fn tail(
        &self,
        dataset: &DatasetName,
        tenant: &TenantId,
        position: Offset,
    ) -> Arc<tokio::sync::Mutex<TailCache>> {
        self.with_tenant(dataset, tenant, |t| {
            t.tail
                .get_or_insert_with(|| Arc::new(tokio::sync::Mutex::new(TailCache::new(position))))
                .clone()
        })
    }

    /// Records that states of these tenants were published (the state-log tail calls this
    /// once per read, with a tenant per state).
    pub fn notify(&self, dataset: &DatasetName, tenants: &[TenantId]) {
        self.stats
            .states_seen
            .fetch_add(tenants.len() as u64, Ordering::Relaxed);
        self.changed(dataset, tenants.iter());
    }

    /// Bumps the tenants' generations and wakes their waiters.
    fn changed<'a>(&self, dataset: &DatasetName, tenants: impl Iterator<Item = &'a TenantId>) {
        let mut tenants = tenants.peekable();
        if tenants.peek().is_none() {
            return;
        }
        let mut state = self.lock();
        if let Some(changed) = state
            .datasets
            .get(dataset)
            .and_then(|ds| ds.changed.as_ref())
        {
            changed.send_modify(|n| *n += 1);
        }
        for tenant in tenants {
            state.clock += 1;
            let clock = state.clock;
            let t = state.tenant(dataset, tenant);
            t.generation = clock;
            t.published = true;
            if let Some(changed) = &t.changed {
                if changed.receiver_count() == 0 {
                    // Nobody waits: forget the signal and the tail (a reader rebuilds them).
                    t.changed = None;
                    t.tail = None;
                } else {
                    changed.send_replace(t.generation);
                }
            }
        }
    }

    /// Records that `count` tombstones of the dataset were purged: every shared tail of the
    /// dataset is dropped, so that the next read of a position behind a tenant's new horizon goes
    /// to the store and is told it is gone.
    pub fn purged(&self, dataset: &DatasetName, count: u64) {
        self.stats
            .tombstones_purged
            .fetch_add(count, Ordering::Relaxed);
        if let Some(ds) = self.lock().datasets.get_mut(dataset) {
            for t in ds.tenants.values_mut() {
                t.tail = None;
            }
        }
    }

    /// Notes the state log's end offsets, then loads every tenant's end from the store:
    /// whatever the store applied before that load is in the loaded ends, and whatever it
    /// applies after is published past the noted offsets. Returns where to start tailing.
    async fn begin(
        &self,
        log: &dyn Log,
        store: &dyn FeedStore,
        dataset: &Dataset,
        topic: &str,
    ) -> Result<Vec<Offset>, ServiceError> {
        let mut from = Vec::with_capacity(dataset.partitions as usize);
        for partition in 0..dataset.partitions {
            from.push(
                log.end_offset(topic, partition)
                    .await
                    .map_err(ServiceError::from_error)?,
            );
        }
        let ends = store
            .tenant_ends(&dataset.name)
            .await
            .map_err(ServiceError::from_error)?;
        for (tenant, end) in ends {
            let generation = self.generation(&dataset.name, &tenant);
            self.record_end(&dataset.name, &tenant, end, generation);
        }
        Ok(from)
    }

    /// The `hub/sweep` service: [`sweep`](Hub::sweep)s every few seconds until `stop`.
    pub async fn sweeper(&self, stop: CancellationToken) -> Result<(), ServiceError> {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(SWEEP_INTERVAL) => self.sweep(),
            }
        }
    }
}

impl MetricsSource for Hub {
    fn register_metrics(&self, registry: &mut Registry) {
        for (name, help, value) in [
            (
                "states_seen",
                "States read from the state logs for live wake-ups",
                &self.stats.states_seen,
            ),
            (
                "tombstones_purged",
                "Tombstones purged from the master store past retention",
                &self.stats.tombstones_purged,
            ),
        ] {
            registry.register(name, help, ConstCounter::new(value.load(Ordering::Relaxed)));
        }
    }
}

/// The hub's tails of the state logs: the service `hub/{dataset}` per dataset, which reads
/// every partition of the dataset's state log and tells the hub which tenants changed. A run
/// that fails starts again where the last one stopped, so no wake-up is skipped.
pub struct HubTails {
    pub hub: Arc<Hub>,
    pub log: Arc<dyn Log>,
    pub store: Arc<dyn FeedStore>,
    pub datasets: Arc<Datasets>,
}

impl PerDataset for HubTails {
    fn start(self: Arc<Self>, supervisor: &Supervisor, dataset: &Dataset) {
        let dataset = dataset.clone();
        // Where each partition's tail is, kept across runs; `None` until the first run began.
        let positions: Arc<Mutex<Option<Vec<Offset>>>> = Arc::default();
        supervisor.spawn(format!("hub/{}", dataset.name), move |stop| {
            let (tails, dataset, positions) = (self.clone(), dataset.clone(), positions.clone());
            async move { tails.run(&dataset, &positions, stop).await }
        });
    }
}

impl HubTails {
    async fn run(
        &self,
        dataset: &Dataset,
        positions: &Mutex<Option<Vec<Offset>>>,
        stop: CancellationToken,
    ) -> Result<(), ServiceError> {
        let topic = self.datasets.topics().state(&dataset.name);
        let started = positions.lock().expect("tail positions lock").clone();
        let from = match started {
            Some(from) => from,
            None => {
                let from = self
                    .hub
                    .begin(self.log.as_ref(), self.store.as_ref(), dataset, &topic)
                    .await?;
                *positions.lock().expect("tail positions lock") = Some(from.clone());
                info!(dataset = %dataset.name, partitions = dataset.partitions, "tailing the state log");
                from
            }
        };
        let tails = from.into_iter().enumerate().map(|(partition, from)| {
            self.tail(
                &dataset.name,
                &topic,
                partition as Partition,
                from,
                positions,
                &stop,
            )
        });
        futures::future::try_join_all(tails).await.map(drop)
    }

    /// Reads one partition of a state log from `from` on, notifying the hub of every state and
    /// keeping its position in `positions`, until `stop` or a failed read.
    async fn tail(
        &self,
        dataset: &DatasetName,
        topic: &str,
        partition: Partition,
        mut from: Offset,
        positions: &Mutex<Option<Vec<Offset>>>,
        stop: &CancellationToken,
    ) -> Result<(), ServiceError> {
        loop {
            let entries = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                read = self.log.read(topic, partition, from, TAIL_BATCH, TAIL_WAIT) => {
                    read.map_err(ServiceError::from_error)?
                }
            };
            let Some(last) = entries.last() else { continue };
            from = last.offset + 1;
            // Keys are `tenant:id`; a key that does not parse wakes nobody.
            let tenants: Vec<TenantId> = entries
                .iter()
                .filter_map(|entry| {
                    let key = std::str::from_utf8(&entry.key).ok()?;
                    TenantId::new(key.split_once(':')?.0).ok()
                })
                .collect();
            self.hub.notify(dataset, &tenants);
            if let Some(positions) = positions.lock().expect("tail positions lock").as_mut() {
                positions[partition as usize] = from;
            }
        }
    }
}

/// The processor of this instance tells the hub of each batch as soon as it is committed, ahead
/// of the state log: a writer answered after `?wait=applied` then finds its write in the feed.
impl CommitObserver for Hub {
    fn committed(&self, dataset: &DatasetName, states: &[Record]) {
        self.changed(dataset, states.iter().map(|r| &r.tenant));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tenant first seen through a published state, and never read since, stays listed: a
    /// subscription, webhook or sink covering all tenants finds its tenants through this list.
    #[test]
    fn a_published_tenant_outlives_sweeps_and_an_asked_for_one_does_not() {
        let hub = Hub::new();
        let dataset = DatasetName::new("items").unwrap();
        let (published, asked) = (TenantId::new("t1").unwrap(), TenantId::new("t2").unwrap());
        hub.notify(&dataset, std::slice::from_ref(&published));
        drop(hub.watch(&dataset, &asked));
        hub.sweep();
        assert_eq!(hub.tenants(&dataset), vec![published]);
    }
}
