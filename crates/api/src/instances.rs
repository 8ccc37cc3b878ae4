//! This instance's place among the instances sharing the master store: it heartbeats its name
//! into the store's registry ([`CoordinationStore::heartbeat_instance`]), counts the live ones,
//! and shares the write quotas out among them ([`WriteQuotas::set_instances`]).
//!
//! An instance is live while its last heartbeat is at most [`LIVE_WINDOW`] old; each one
//! heartbeats every [`HEARTBEAT`], so a new instance is counted by the others within a
//! heartbeat, and one that was killed stops being counted after [`LIVE_WINDOW`] (plus a
//! heartbeat). A clean shutdown deregisters at once. While the store does not answer, the last
//! count stays in force. Instances compare each other's clocks, so their hosts' clocks must be
//! in step (NTP keeps them well within the window).
//!
//! This module never refuses a request itself: it only says how many instances share a quota.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tenantsync_store::{CoordinationStore, StoreError};
use tenantsync_supervisor::{MetricsSource, ServiceError};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::WriteQuotas;

/// How often an instance renews its registration and recounts the live ones.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// An instance whose last heartbeat is older than this is not live.
pub const LIVE_WINDOW: Duration = Duration::from_secs(5);
/// Registrations older than this are deleted (instances killed, or renamed, long ago).
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// Heartbeats between two deletions of old registrations.
const FORGET_EVERY: u32 = 60;

/// This instance in the registry, and the count of live instances it shares quotas with.
pub struct Instances {
    store: Arc<dyn CoordinationStore>,
    name: String,
    quotas: Arc<WriteQuotas>,
    live: AtomicU32,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Instances {
    pub fn new(store: Arc<dyn CoordinationStore>, name: String, quotas: Arc<WriteQuotas>) -> Self {
        Self {
            store,
            name,
            quotas,
            live: AtomicU32::new(1),
        }
    }

    /// This instance's name in the registry.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Live instances at the last heartbeat, this one included.
    pub fn live(&self) -> u32 {
        self.live.load(Ordering::Relaxed)
    }

    /// One heartbeat: registers this instance as seen now, counts the live instances (this one
    /// always among them) and shares the quotas out among them. Returns the count. `serve`
    /// calls it once before it accepts requests, so that the first one is already measured
    /// against this instance's share.
    pub async fn heartbeat(&self) -> Result<u32, StoreError> {
        let now = now_ms();
        self.store.heartbeat_instance(&self.name, now).await?;
        let live = self
            .store
            .live_instances(now.saturating_sub(ms(LIVE_WINDOW)))
            .await?;
        // Counted even if its own row is missing: clocks stepped back, or a racing forget.
        let others = live.iter().filter(|n| **n != self.name).count();
        let count = u32::try_from(others + 1).unwrap_or(u32::MAX);
        let before = self.live.swap(count, Ordering::Relaxed);
        self.quotas.set_instances(count);
        if before != count {
            info!(
                instances = count,
                "live instances changed; write quotas shared among them"
            );
        }
        Ok(count)
    }

    /// The `instances` service: a heartbeat every [`HEARTBEAT`] until `stop`, then a
    /// deregistration, so that the others stop counting this instance at once. A failed
    /// heartbeat ends the run (the supervisor runs it again); the count stays as it was.
    pub async fn run(&self, stop: CancellationToken) -> Result<(), ServiceError> {
        let mut ticks = tokio::time::interval(HEARTBEAT);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut beats = 0u32;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticks.tick() => {}
            }
            self.heartbeat().await.map_err(ServiceError::from_error)?;
            beats = beats.wrapping_add(1);
            if beats.is_multiple_of(FORGET_EVERY) {
                let before = now_ms().saturating_sub(ms(FORGET_AFTER));
                self.store
                    .forget_instances(before)
                    .await
                    .map_err(ServiceError::from_error)?;
            }
        }
        if let Err(error) = self.store.deregister_instance(&self.name).await {
            // The others stop counting this instance after LIVE_WINDOW anyway.
            warn!(%error, instance = %self.name, "cannot deregister from the instance registry");
        }
        Ok(())
    }
}

impl MetricsSource for Instances {
    fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "live_instances",
            "Instances sharing the store and the write quotas, as this instance last counted",
            ConstGauge::new(i64::from(self.live())),
        );
    }
}
