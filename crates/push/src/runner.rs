//! Running push targets: which targets this instance delivers, and the run of one target.
//!
//! The `push` service looks at the stored targets every [`SCAN`] and at how many instances are
//! live, and wants `ceil(targets / live)` of them here: it starts a `webhook/{name}` or
//! `sink/{name}` service for a target it lacks (which runs only if it gets the target's claim in
//! the store) and stops targets beyond its share (which release their claims at once, for
//! another instance to take).
//!
//! A target's run takes the claim, then delivers while renewing it every [`RENEW`] with its
//! figures. It ends when the claim is lost (taken over after this instance stalled past
//! [`LEASE`], or fenced by a replay), when the definition changed or was deleted (the `push`
//! service starts it again on the new one), or on stop, releasing the claim. A killed
//! instance's claims expire after [`LEASE`].
//!
//! Correctness does not rest on the claim alone: a webhook's progress writes carry the claim's
//! epoch and a sink's transactions a fence in its own database, so a holder that lost the claim
//! never moves a position.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tenantsync_core::Classify;
use tenantsync_feed::{CursorKey, Hub};
use tenantsync_store::{MasterStore, PushKind, PushProgress, StoredPush};
use tenantsync_supervisor::{ServiceError, Supervisor};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::figures::{Figures, TargetStatus};
use crate::{PushError, sinks, webhooks};

/// How often the `push` service looks at the targets and the live instances.
pub const SCAN: Duration = Duration::from_secs(1);
/// How long a target's claim lasts without renewal: how soon another instance takes over from
/// a killed one.
pub const LEASE: Duration = Duration::from_secs(10);
/// How often a target's holder renews its claim and stores its figures.
pub const RENEW: Duration = Duration::from_secs(2);

/// Settings of push delivery, from the instance's configuration.
#[derive(Debug, Clone, Default)]
pub struct PushSettings {
    pub webhooks: webhooks::WebhookSettings,
}

/// What a target's delivery works with.
pub struct TargetContext {
    pub kind: PushKind,
    pub name: String,
    /// The claim's epoch: progress written with it lands only while the claim is this run's.
    pub epoch: u64,
    /// The target's creation time: tells it from a deleted target of the same name.
    pub created_at: DateTime<Utc>,
    pub store: Arc<dyn MasterStore>,
    pub hub: Arc<Hub>,
    /// Signs the cursors a webhook's messages carry.
    pub cursor_key: Arc<CursorKey>,
    pub figures: Arc<Figures>,
    pub settings: Arc<PushSettings>,
    /// Cancelled when the run must end (stop, claim lost, definition changed).
    pub stop: CancellationToken,
}

impl TargetContext {
    /// Writes progress entries under this run's claim; [`PushError::Fenced`] when the claim was
    /// lost (the run must end).
    pub async fn set_progress(&self, entries: &[PushProgress]) -> Result<(), PushError> {
        if self
            .store
            .set_push_progress(self.kind, &self.name, self.epoch, entries)
            .await?
        {
            Ok(())
        } else {
            Err(PushError::Fenced)
        }
    }
}

/// The push component of one instance.
pub struct Push {
    store: Arc<dyn MasterStore>,
    hub: Arc<Hub>,
    cursor_key: Arc<CursorKey>,
    settings: Arc<PushSettings>,
    instance: String,
    /// How many instances are live (this one included), for each one's share of the targets.
    live: Arc<dyn Fn() -> u32 + Send + Sync>,
    /// Targets this instance runs, with their figures.
    running: Mutex<HashMap<(PushKind, String), Arc<Figures>>>,
}

fn service_name(kind: PushKind, name: &str) -> String {
    format!("{}/{name}", kind.as_str())
}

impl Push {
    pub fn new(
        store: Arc<dyn MasterStore>,
        hub: Arc<Hub>,
        cursor_key: Arc<CursorKey>,
        settings: PushSettings,
        instance: String,
        live: Arc<dyn Fn() -> u32 + Send + Sync>,
    ) -> Self {
        Self {
            store,
            hub,
            cursor_key,
            settings: Arc::new(settings),
            instance,
            live,
            running: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &PushSettings {
        &self.settings
    }

    /// Starts the `push` service.
    pub fn supervise(self: &Arc<Self>, supervisor: &Supervisor) {
        let (push, watcher) = (self.clone(), supervisor.clone());
        supervisor.spawn("push", move |stop| {
            let (push, supervisor) = (push.clone(), watcher.clone());
            async move {
                loop {
                    if let Err(e) = push.scan(&supervisor).await {
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

    /// Figures of the targets this instance runs (for `/metrics`), by kind and name.
    pub fn figures(&self) -> Vec<(PushKind, String, TargetStatus)> {
        let running = self.running.lock().expect("running lock");
        let mut all: Vec<_> = running
            .iter()
            .map(|((kind, name), f)| (*kind, name.clone(), f.snapshot()))
            .collect();
        all.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        all
    }

    async fn scan(self: &Arc<Self>, supervisor: &Supervisor) -> Result<(), PushError> {
        let mut wanted = Vec::new();
        for kind in [PushKind::Webhook, PushKind::Sink] {
            for stored in self.store.pushes(kind).await? {
                let runs = match kind {
                    PushKind::Webhook => webhooks::runs(&stored),
                    PushKind::Sink => sinks::runs(&stored),
                };
                if runs {
                    wanted.push(stored);
                } else {
                    // Disabled: a run still going ends at its next renewal (the revision
                    // changed), releasing the claim, and keeps its position.
                }
            }
        }
        let live = (self.live)().max(1) as usize;
        let share = wanted.len().div_ceil(live);
        let held: Vec<(PushKind, String)> = {
            let running = self.running.lock().expect("running lock");
            let mut held: Vec<_> = running.keys().cloned().collect();
            held.sort();
            held
        };
        // Beyond this instance's share: the last by kind and name go first, so that instances
        // agree on which ones move.
        for (kind, name) in held.iter().skip(share) {
            info!(kind = kind.as_str(), %name, "handing a target over to another instance");
            supervisor.stop(&service_name(*kind, name));
        }
        if held.len() < share {
            for stored in wanted {
                if !held
                    .iter()
                    .any(|(k, n)| *k == stored.kind && *n == stored.name)
                {
                    self.clone().start(supervisor, stored);
                }
            }
        }
        Ok(())
    }

    /// Starts the target's service unless it runs; its run ends at once when another instance
    /// holds the claim.
    fn start(self: Arc<Self>, supervisor: &Supervisor, stored: StoredPush) {
        let stored = Arc::new(stored);
        supervisor.spawn(service_name(stored.kind, &stored.name), move |stop| {
            let (push, stored) = (self.clone(), stored.clone());
            async move {
                push.run(&stored, stop)
                    .await
                    // A broken target is its own failure, shown in its status, never the
                    // instance's: it must not make `/readyz` fail for the other work here.
                    .map_err(ServiceError::transient)
            }
        });
    }

    async fn run(&self, stored: &StoredPush, stop: CancellationToken) -> Result<(), PushError> {
        let (kind, name) = (stored.kind, stored.name.as_str());
        let Some(epoch) = self
            .store
            .claim_push(
                kind,
                name,
                &self.instance,
                now_ms(),
                LEASE.as_millis() as i64,
            )
            .await?
        else {
            return Ok(());
        };
        let resumed = self
            .store
            .push_claims(kind)
            .await?
            .into_iter()
            .find(|c| c.name == name)
            .and_then(|c| c.status)
            .and_then(|s| serde_json::from_str::<TargetStatus>(&s).ok())
            .unwrap_or_default();
        let figures = Arc::new(Figures::resume(resumed));
        self.running
            .lock()
            .expect("running lock")
            .insert((kind, name.to_owned()), figures.clone());
        info!(
            kind = kind.as_str(),
            name, epoch, "delivering a push target"
        );
        let ctx = TargetContext {
            kind,
            name: name.to_owned(),
            epoch,
            created_at: stored.created_at,
            store: self.store.clone(),
            hub: self.hub.clone(),
            cursor_key: self.cursor_key.clone(),
            figures: figures.clone(),
            settings: self.settings.clone(),
            stop: stop.child_token(),
        };
        figures.set_state("running");
        let deliver = async {
            match kind {
                PushKind::Webhook => webhooks::run(&ctx, stored).await,
                PushKind::Sink => sinks::run(&ctx, stored).await,
            }
        };
        let result = tokio::select! {
            result = deliver => result,
            result = self.hold(stored, epoch, &figures, &ctx.stop) => result,
        };
        ctx.stop.cancel();
        let result = match result {
            // Another instance (or a replay) took over: nothing failed here.
            Err(PushError::Fenced) => Ok(()),
            other => other,
        };
        if let Err(error) = &result {
            figures.set_error(error.to_string());
            warn!(kind = kind.as_str(), name, %error, class = ?error.class(), "a push target failed");
        }
        self.running
            .lock()
            .expect("running lock")
            .remove(&(kind, name.to_owned()));
        // Whatever ended the run, the figures are kept and the claim given up, so that this
        // instance or another takes the target again at once (after a failure, the
        // supervisor's backoff delays this instance's next try).
        let renewed = self.renew(kind, name, epoch, &figures).await;
        if matches!(renewed, Ok(true)) && (stop.is_cancelled() || result.is_ok()) {
            let _ = self.store.release_push(kind, name, epoch).await;
        }
        result
    }

    /// Renews the claim for another [`LEASE`], storing the figures; false when the claim was
    /// taken over or fenced, or the target deleted.
    async fn renew(
        &self,
        kind: PushKind,
        name: &str,
        epoch: u64,
        figures: &Figures,
    ) -> Result<bool, PushError> {
        let status = serde_json::to_string(&figures.snapshot()).expect("figures serialize");
        Ok(self
            .store
            .renew_push(
                kind,
                name,
                epoch,
                now_ms(),
                LEASE.as_millis() as i64,
                Some(&status),
            )
            .await?)
    }

    /// Renews the claim with the figures until it is lost or the definition changes; returns
    /// `Ok` then (the run ends and is started again as needed).
    async fn hold(
        &self,
        stored: &StoredPush,
        epoch: u64,
        figures: &Figures,
        stop: &CancellationToken,
    ) -> Result<(), PushError> {
        let (kind, name) = (stored.kind, stored.name.as_str());
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(RENEW) => {}
            }
            let current = self.store.push(kind, name).await?;
            if current.is_none_or(|s| s.revision != stored.revision) {
                info!(
                    kind = kind.as_str(),
                    name, "the target's definition changed; starting over"
                );
                return Ok(());
            }
            if !self.renew(kind, name, epoch, figures).await? {
                warn!(
                    kind = kind.as_str(),
                    name, "another instance took this target over"
                );
                return Ok(());
            }
        }
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}
