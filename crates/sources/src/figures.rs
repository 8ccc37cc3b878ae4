//! A running shard's figures: what `GET /v1/sources/{name}` and `/metrics` show. The holder of a
//! shard's claim stores them with every renewal, so any instance can answer for any source.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One shard's figures as stored with its claim (JSON) and shown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardStatus {
    /// `starting`, `running` or `failing`.
    pub state: String,
    /// Where the shard has read up to, in the source's terms (an LSN, topic offsets).
    pub position: Option<String>,
    /// How far behind the source the shard is, in `lag_unit`s (`wal_bytes`, `events`).
    pub lag: Option<u64>,
    pub lag_unit: Option<String>,
    /// Age of the oldest change not yet taken; 0 when caught up.
    pub lag_seconds: Option<f64>,
    /// Changes appended to the changes log by this shard (counted by whichever instance held
    /// it, across claims).
    pub ingested: u64,
    /// Rows or events kept under `/rejected`.
    pub rejected: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

/// The live figures of a shard this instance runs; counters start from the stored status, so
/// they continue across claims and restarts.
#[derive(Debug, Default)]
pub struct Figures {
    ingested: AtomicU64,
    rejected: AtomicU64,
    rest: Mutex<ShardStatus>,
}

impl Figures {
    /// Continues from a shard's stored status.
    pub fn resume(stored: ShardStatus) -> Self {
        Self {
            ingested: AtomicU64::new(stored.ingested),
            rejected: AtomicU64::new(stored.rejected),
            rest: Mutex::new(ShardStatus {
                state: "starting".into(),
                ..stored
            }),
        }
    }

    pub fn add_ingested(&self, n: u64) {
        self.ingested.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_rejected(&self, n: u64) {
        self.rejected.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set_state(&self, state: &str) {
        self.lock().state = state.into();
    }

    pub fn set_position(&self, position: String) {
        self.lock().position = Some(position);
    }

    /// How far behind: `amount` in `unit`, and the age of the oldest change not yet taken.
    pub fn set_lag(&self, amount: Option<u64>, unit: &'static str, seconds: Option<f64>) {
        let mut rest = self.lock();
        rest.lag = amount;
        rest.lag_unit = Some(unit.into());
        rest.lag_seconds = seconds;
    }

    pub fn set_error(&self, error: String) {
        let mut rest = self.lock();
        rest.state = "failing".into();
        rest.last_error = Some(error);
        rest.last_error_at = Some(Utc::now());
    }

    pub fn snapshot(&self) -> ShardStatus {
        ShardStatus {
            ingested: self.ingested.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            ..self.lock().clone()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ShardStatus> {
        self.rest.lock().expect("figures lock")
    }
}
