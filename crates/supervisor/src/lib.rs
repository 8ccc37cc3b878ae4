//! The one supervisor of every background service: the processor of each dataset, the hub's
//! tails, the batcher, tombstone retention, tenant erasure, and whatever comes next.
//!
//! A service is a name and a function that starts one run of it. The supervisor starts it,
//! keeps its status, restarts it after a failure on one policy (exponential backoff with
//! jitter, [`RestartPolicy`]), and stops it on shutdown. Every run gets a cancellation token and
//! must return soon after the token is cancelled; shutdown waits for every run to return, up to
//! a bound. A run that returns `Ok` finished its work and is not restarted (a one-off job); one
//! that returns an error or panics is restarted after the policy's delay, whatever the class of
//! the error: a transient error is expected to heal by itself, a permanent one needs an
//! operator, and is reported as such (log, `/readyz`, `/metrics`) until a run succeeds.
//!
//! The supervisor never decides what an error means: each error type says it ([`Classify`]), in
//! the crate that defines it, and the service passes that on in its [`ServiceError`].

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

pub use tenantsync_core::{Classify, ErrorClass};

/// Why a run of a service ended early. Its message is shown in logs and in `/readyz`, so it must
/// never contain a secret.
#[derive(Debug)]
pub struct ServiceError {
    class: ErrorClass,
    message: String,
}

impl ServiceError {
    pub fn new(class: ErrorClass, error: impl fmt::Display) -> Self {
        Self {
            class,
            message: error.to_string(),
        }
    }

    pub fn transient(error: impl fmt::Display) -> Self {
        Self::new(ErrorClass::Transient, error)
    }

    pub fn permanent(error: impl fmt::Display) -> Self {
        Self::new(ErrorClass::Permanent, error)
    }

    /// A failed run, classified the way the error itself says.
    pub fn from_error(error: impl Classify + fmt::Display) -> Self {
        Self::new(error.class(), error)
    }

    pub fn class(&self) -> ErrorClass {
        self.class
    }
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ServiceError {}

/// When a failed service runs again: after `initial`, doubling with each failure in a row up to
/// `max`, each delay drawn uniformly from its upper half so that services failing together do
/// not retry in lockstep. A run that lasted `healthy_after` starts the count over.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub healthy_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(30),
        }
    }
}

impl RestartPolicy {
    /// The delay before the next run after `failures` failures in a row (at least 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let step = self
            .initial
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
            .min(self.max);
        step.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

/// What a service is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    /// Failed; waiting for its next run.
    Backoff,
    /// Returned `Ok`: its work is done.
    Finished,
    /// Stopped by shutdown or [`Supervisor::stop`].
    Stopped,
}

/// A service's status, as `/readyz` and `/metrics` show it.
#[derive(Debug, Clone)]
pub struct ServiceStatus {
    pub name: String,
    pub state: State,
    /// Failures in a row (0 once a run lasted the policy's `healthy_after`, or succeeded).
    pub failures: u32,
    /// Runs restarted after a failure since start.
    pub restarts: u64,
    /// The last failure, while the service has not been healthy since.
    pub last_error: Option<(ErrorClass, String)>,
}

impl ServiceStatus {
    /// Failed and not healthy since: waiting to run again, or running again for less than the
    /// policy's `healthy_after`.
    pub fn is_failing(&self) -> bool {
        self.last_error.is_some() && matches!(self.state, State::Running | State::Backoff)
    }
}

/// A component whose figures appear in `/metrics`. `/metrics` builds a new registry for every
/// scrape and asks each source to register its current values there, so sources keep plain
/// counters and never depend on the HTTP layer.
pub trait MetricsSource: Send + Sync {
    fn register_metrics(&self, registry: &mut Registry);
}

/// Shutdown did not finish in time; these services were still running.
#[derive(Debug, thiserror::Error)]
#[error("services still running after {grace:?}: {}", still_running.join(", "))]
pub struct ShutdownTimeout {
    pub grace: Duration,
    pub still_running: Vec<String>,
}

struct Entry {
    state: State,
    failures: u32,
    restarts: Arc<AtomicU64>,
    last_error: Option<(ErrorClass, String)>,
    /// When the current run started, to tell a healthy run from a quick failure.
    started: Instant,
    stop: CancellationToken,
}

struct Inner {
    policy: RestartPolicy,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    services: Mutex<BTreeMap<String, Entry>>,
}

/// Runs services by name. Cheap to clone; every clone is the same supervisor.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("services", &self.lock().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Supervisor {
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                policy,
                shutdown: CancellationToken::new(),
                tracker: TaskTracker::new(),
                services: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Starts a service: `run` is called for each run with a token that is cancelled on
    /// shutdown or [`stop`](Self::stop). Returns false, and starts nothing, if a service of this
    /// name is running or waiting to restart, or shutdown has begun.
    pub fn spawn<F, Fut>(&self, name: impl Into<String>, mut run: F) -> bool
    where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), ServiceError>> + Send + 'static,
    {
        let name = name.into();
        let stop = {
            let mut services = self.lock();
            if self.inner.shutdown.is_cancelled()
                || services
                    .get(&name)
                    .is_some_and(|e| matches!(e.state, State::Running | State::Backoff))
            {
                return false;
            }
            let stop = self.inner.shutdown.child_token();
            let restarts = services
                .get(&name)
                .map_or_else(Default::default, |e| e.restarts.clone());
            services.insert(
                name.clone(),
                Entry {
                    state: State::Running,
                    failures: 0,
                    restarts,
                    last_error: None,
                    started: Instant::now(),
                    stop: stop.clone(),
                },
            );
            stop
        };
        let supervisor = self.clone();
        self.inner.tracker.spawn(async move {
            supervisor.supervise(name, &mut run, stop).await;
        });
        true
    }

    async fn supervise<F, Fut>(&self, name: String, run: &mut F, stop: CancellationToken)
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), ServiceError>> + Send + 'static,
    {
        loop {
            // Its own task, so that a panic is a failure of this run rather than of the loop.
            let result = match tokio::spawn(run(stop.clone())).await {
                Ok(result) => result,
                Err(join) => Err(ServiceError::permanent(format!("panicked: {join}"))),
            };
            if stop.is_cancelled() {
                if let Err(error) = &result {
                    info!(service = %name, %error, "service ended with an error while stopping");
                }
                self.update(&name, |e| e.state = State::Stopped);
                return;
            }
            let error = match result {
                Ok(()) => {
                    self.update(&name, |e| {
                        e.state = State::Finished;
                        e.failures = 0;
                        e.last_error = None;
                    });
                    return;
                }
                Err(error) => error,
            };
            let policy = &self.inner.policy;
            let mut failures = 0;
            self.update(&name, |e| {
                if e.started.elapsed() >= policy.healthy_after {
                    e.failures = 0;
                }
                e.failures += 1;
                failures = e.failures;
                e.state = State::Backoff;
                e.last_error = Some((error.class(), error.to_string()));
                e.restarts.fetch_add(1, Ordering::Relaxed);
            });
            let delay = policy.delay(failures);
            match error.class() {
                ErrorClass::Transient => {
                    warn!(service = %name, %error, failures, retry_in = ?delay, "service failed; restarting")
                }
                ErrorClass::Permanent => {
                    error!(service = %name, %error, failures, retry_in = ?delay, "service failed and needs attention; restarting")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => {
                    self.update(&name, |e| e.state = State::Stopped);
                    return;
                }
                _ = tokio::time::sleep(delay) => {}
            }
            self.update(&name, |e| {
                e.state = State::Running;
                e.started = Instant::now();
            });
        }
    }

    /// Stops one service (its run's token is cancelled; it is not restarted). Returns whether
    /// it was running or waiting to restart.
    pub fn stop(&self, name: &str) -> bool {
        let services = self.lock();
        match services.get(name) {
            Some(e) if matches!(e.state, State::Running | State::Backoff) => {
                e.stop.cancel();
                true
            }
            _ => false,
        }
    }

    /// Cancelled when shutdown begins; for work that is not a service (the HTTP server).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Returns once shutdown has begun: for work that should end early then (a long-poll).
    pub async fn stopping(&self) {
        self.inner.shutdown.cancelled().await
    }

    /// Stops every service and waits until each has returned, at most `grace`.
    pub async fn shutdown(&self, grace: Duration) -> Result<(), ShutdownTimeout> {
        self.inner.shutdown.cancel();
        self.inner.tracker.close();
        if tokio::time::timeout(grace, self.inner.tracker.wait())
            .await
            .is_ok()
        {
            return Ok(());
        }
        let still_running = self
            .lock()
            .iter()
            .filter(|(_, e)| matches!(e.state, State::Running | State::Backoff))
            .map(|(name, _)| name.clone())
            .collect();
        Err(ShutdownTimeout {
            grace,
            still_running,
        })
    }

    /// Every service started so far, by name.
    pub fn statuses(&self) -> Vec<ServiceStatus> {
        let healthy_after = self.inner.policy.healthy_after;
        self.lock()
            .iter()
            .map(|(name, e)| {
                let healthy = e.state == State::Running && e.started.elapsed() >= healthy_after;
                ServiceStatus {
                    name: name.clone(),
                    state: e.state,
                    failures: if healthy { 0 } else { e.failures },
                    restarts: e.restarts.load(Ordering::Relaxed),
                    last_error: if healthy { None } else { e.last_error.clone() },
                }
            })
            .collect()
    }

    /// The services failing now (see [`ServiceStatus::is_failing`]).
    pub fn failing(&self) -> Vec<ServiceStatus> {
        self.statuses()
            .into_iter()
            .filter(ServiceStatus::is_failing)
            .collect()
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut Entry)) {
        if let Some(entry) = self.lock().get_mut(name) {
            f(entry);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        // A panic while holding this lock leaves only plain status fields behind: keep going.
        self.inner
            .services
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl MetricsSource for Supervisor {
    /// `service_restarts` and `service_failing`, per service.
    fn register_metrics(&self, registry: &mut Registry) {
        type Labels = Vec<(&'static str, String)>;
        let restarts = Family::<Labels, Counter>::default();
        let failing = Family::<Labels, Gauge>::default();
        for status in self.statuses() {
            let is_failing = status.is_failing();
            let labels = vec![("service", status.name)];
            restarts.get_or_create(&labels).inc_by(status.restarts);
            failing.get_or_create(&labels).set(i64::from(is_failing));
        }
        registry.register(
            "service_restarts",
            "Runs of a background service restarted after a failure",
            restarts,
        );
        registry.register(
            "service_failing",
            "1 while a background service is failing (/readyz says why)",
            failing,
        );
    }
}

#[cfg(test)]
mod tests;
