//! A running target's figures: what `GET /v1/webhooks/{name}`, `GET /v1/sinks/{name}` and
//! `/metrics` show. The holder of a target's claim stores them with every renewal (JSON), so any
//! instance can answer for any target, and counters continue across claims and restarts.

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The last delivery attempt, as shown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LastAttempt {
    pub at: Option<DateTime<Utc>>,
    /// The HTTP status answered (webhooks), if any.
    pub status: Option<u16>,
    pub latency_ms: u32,
    pub error: Option<String>,
}

/// One target's figures as stored with its claim and shown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetStatus {
    /// `starting`, `running` (delivering or caught up), `retrying` (some tenant's message
    /// waits for its next attempt), `failing` (the last attempt failed), `disabled`.
    pub state: String,
    /// Records delivered (webhooks: in messages answered 2xx; sinks: rows written).
    pub delivered: u64,
    /// Failed attempts.
    pub failed: u64,
    /// Attempts that were retries of a message that failed before.
    pub retried: u64,
    /// Failed attempts since the last success.
    pub failure_streak: u64,
    /// When the current streak of failures started (`None` after a success).
    pub failing_since: Option<DateTime<Utc>>,
    /// Records still to deliver, counted up to a limit per tenant.
    pub lag_changes: u64,
    /// Age of the oldest record still to deliver; 0 when caught up.
    pub lag_seconds: f64,
    pub last_attempt: Option<LastAttempt>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

/// The live figures of a target this instance runs.
#[derive(Debug, Default)]
pub struct Figures(Mutex<TargetStatus>);

impl Figures {
    /// Continues from a target's stored status.
    pub fn resume(stored: TargetStatus) -> Self {
        Self(Mutex::new(TargetStatus {
            state: "starting".into(),
            ..stored
        }))
    }

    pub fn set_state(&self, state: &str) {
        self.lock().state = state.into();
    }

    /// Records an attempt that succeeded with `records` records.
    pub fn success(&self, records: u64, attempt: LastAttempt, retry: bool) {
        let mut s = self.lock();
        s.delivered += records;
        s.retried += u64::from(retry);
        s.failure_streak = 0;
        s.failing_since = None;
        s.last_success_at = attempt.at;
        s.last_attempt = Some(attempt);
    }

    /// Records an attempt that failed.
    pub fn failure(&self, attempt: LastAttempt, retry: bool) {
        let mut s = self.lock();
        s.failed += 1;
        s.retried += u64::from(retry);
        s.failure_streak += 1;
        if s.failing_since.is_none() {
            s.failing_since = attempt.at;
        }
        if let Some(error) = &attempt.error {
            s.last_error = Some(error.clone());
            s.last_error_at = attempt.at;
        }
        s.last_attempt = Some(attempt);
    }

    pub fn set_lag(&self, changes: u64, seconds: f64) {
        let mut s = self.lock();
        s.lag_changes = changes;
        s.lag_seconds = seconds;
    }

    /// Records an error that ended a run or held a target back (an unreachable database).
    pub fn set_error(&self, error: String) {
        let mut s = self.lock();
        s.last_error = Some(error);
        s.last_error_at = Some(Utc::now());
    }

    pub fn snapshot(&self) -> TargetStatus {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TargetStatus> {
        self.0.lock().expect("figures lock")
    }
}
