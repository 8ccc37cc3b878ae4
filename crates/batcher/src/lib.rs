//! The batcher: turns a dataset's state log into single-tenant batches, emits them fairly
//! across tenants to the dataset's batches log, and serves them to HTTP workers under leases.
//!
//! - [`Batcher`] is the pure core: no I/O, no clock. The caller pushes each state-log entry as
//!   a [`SourceRecord`] with the current [`Instant`](std::time::Instant), calls
//!   [`Batcher::tick`] by [`Batcher::next_deadline`], appends what [`Batcher::next_batch`]
//!   returns to the batches log, and checkpoints [`Batcher::safe_offset`] as its source
//!   position. Being deterministic, it is tested without a log, a clock or a sleep.
//! - [`stage`] is that caller: one claimed task per dataset, crash-safe through checkpoints in
//!   the master store.
//! - [`message`] is the batches log's entry format, what consumers receive.
//! - [`queue`] hands batches to HTTP workers with a visibility timeout.
//!
//! The rest of this page is the core's contract.
//!
//! # Contract
//!
//! For any sequence of calls (records of one partition pushed in offset order):
//!
//! - **One tenant per batch.** Every [`Batch`] holds the records of exactly one tenant, all from
//!   one partition of the state log, in offset order. State is kept per (tenant, partition), so
//!   not even a tenant found in two partitions (which the partitioner never does) mixes them.
//! - **Within limits.** A batch holds at most [`Limits::max_records`] records and at most
//!   [`Limits::max_bytes`] bytes (key plus value of each record), except a single record larger
//!   than `max_bytes`, which forms a batch alone. A batch is sealed when it is full, when the
//!   next record would not fit, or by [`Batcher::tick`] once its oldest record has waited
//!   [`Limits::max_wait`].
//! - **Nothing lost, nothing twice.** Every record pushed is, exactly once, either put in one
//!   batch or skipped because it is covered: at or below the offset given for its tenant to
//!   [`Batcher::with_emitted`], or at or below an offset already pushed for its partition
//!   (a re-read). A tenant's batches are returned by [`Batcher::next_batch`] in its offset
//!   order.
//! - **Stable ids.** A [`BatchId`] is a pure function of the range it covers,
//!   `{partition}-{first_offset}-{last_offset}`. Within a partition every offset belongs to one
//!   record of one tenant, and every record to at most one batch, so the first offset alone is
//!   unique and two batches with the same id cover the same records. The same id is never given
//!   to different contents: re-forming a range after a restart yields the same id only if it
//!   covers the same records (as the state log still holds them).
//! - **Fairness.** [`Batcher::next_batch`] serves tenants with sealed batches by deficit round
//!   robin with a quantum of `max_records` records: per round every backlogged tenant gets the
//!   same share of records whatever its volume, and a tenant whose batch was just sealed is
//!   served within one round.
//! - **Bounded memory.** The batcher holds the records it buffers (open and sealed, not yet
//!   returned), a few words per partition, and the offsets given to `with_emitted` until a later
//!   record of that tenant passes them. A tenant with nothing buffered costs nothing.
//!
//! # Crash safety
//!
//! The batcher keeps nothing durable itself; the wiring makes it safe with two rules.
//!
//! 1. It commits a partition's source position only as [`Batcher::safe_offset`], read after
//!    taking batches from `next_batch` and committed only once those batches are durably in the
//!    batches log. Everything below that offset is in a durable batch or covered by one, so a
//!    crash never loses a record below the committed position, and a record at or above it is
//!    read again.
//! 2. On restart it reads each tenant's highest covered offset back from the batches log, gives
//!    them to [`Batcher::with_emitted`], and re-reads every partition from its committed
//!    position. A tenant's batches are emitted in its offset order, so what its durable batches
//!    cover is all of its records up to that offset: the batcher skips exactly those, and the
//!    re-formed batches start after the last durable one. A batch that was returned but not
//!    yet durable at the crash is simply formed again, perhaps with other bounds (and so
//!    another id); since it never reached the batches log, no consumer saw the first one.
//!
//! A retried append of the same [`Batch`] (an append that failed after writing it) carries the
//! same id and contents, so consumers deduplicate by id.

mod batcher;
mod error;
pub mod message;
pub mod queue;
pub mod stage;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tenantsync_core::TenantId;

pub use batcher::Batcher;
pub use error::{BatcherError, BatchesError};
pub use queue::{BatchQueue, Leased};
pub use stage::{BatcherStage, StageConfig, StageStats};

/// The wall clock in milliseconds since the Unix epoch, as the store's leases count time.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A duration in milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// When a batch is sealed: at `max_records` records, at `max_bytes` bytes, or `max_wait` after
/// its oldest record was pushed, whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// At most this many records per batch; at least 1. Also the fairness quantum.
    pub max_records: usize,
    /// At most this many bytes (keys plus values) per batch, except a single larger record;
    /// at least 1.
    pub max_bytes: usize,
    /// How long a record may wait in an open batch before [`Batcher::tick`] seals it. Zero
    /// seals at every tick.
    pub max_wait: Duration,
}

impl Limits {
    pub const DEFAULT_MAX_RECORDS: usize = 500;
    pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;
    pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(1);

    /// Checks the limits without I/O, naming the first bad field.
    pub fn validate(&self) -> Result<(), BatcherError> {
        if self.max_records == 0 {
            return Err(BatcherError::InvalidLimits {
                field: "max_records",
                reason: "must be at least 1".into(),
            });
        }
        if self.max_bytes == 0 {
            return Err(BatcherError::InvalidLimits {
                field: "max_bytes",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_records: Self::DEFAULT_MAX_RECORDS,
            max_bytes: Self::DEFAULT_MAX_BYTES,
            max_wait: Self::DEFAULT_MAX_WAIT,
        }
    }
}

/// One state-log entry as the batcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    /// The state-log partition it was read from.
    pub partition: u32,
    /// Its offset in that partition.
    pub offset: u64,
    pub tenant: TenantId,
    pub key: Vec<u8>,
    /// `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// When the state log appended it (ms since the Unix epoch), carried for latency figures.
    pub appended_at_ms: i64,
}

impl SourceRecord {
    /// The bytes this record counts against [`Limits::max_bytes`]: key plus value.
    pub fn size(&self) -> usize {
        self.key
            .len()
            .saturating_add(self.value.as_ref().map_or(0, Vec::len))
    }
}

/// A sealed batch: records of one tenant from one partition, in offset order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub id: BatchId,
    pub tenant: TenantId,
    pub partition: u32,
    /// Offset of the first record; the batch covers `first_offset..=last_offset` of its tenant.
    pub first_offset: u64,
    /// Offset of the last record.
    pub last_offset: u64,
    /// Never empty.
    pub records: Vec<SourceRecord>,
}

impl Batch {
    /// The bytes of its records, as counted against [`Limits::max_bytes`].
    pub fn bytes(&self) -> usize {
        self.records
            .iter()
            .fold(0, |n, r| n.saturating_add(r.size()))
    }
}

/// A batch's id: `{partition}-{first_offset}-{last_offset}` in decimal, derived only from the
/// range the batch covers, so a batch formed again from the same records has the same id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BatchId(String);

impl TryFrom<String> for BatchId {
    type Error = BatcherError;

    fn try_from(s: String) -> Result<Self, BatcherError> {
        s.parse()
    }
}

impl From<BatchId> for String {
    fn from(id: BatchId) -> String {
        id.0
    }
}

impl BatchId {
    /// The id of the batch covering `first_offset..=last_offset` of `partition`.
    pub fn for_range(partition: u32, first_offset: u64, last_offset: u64) -> Self {
        Self(format!("{partition}-{first_offset}-{last_offset}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The partition, first and last offsets the id names.
    pub fn range(&self) -> (u32, u64, u64) {
        // Only `for_range` and `from_str` build ids, both in canonical form.
        parse_range(&self.0).unwrap_or_default()
    }
}

fn parse_range(s: &str) -> Option<(u32, u64, u64)> {
    let mut parts = s.split('-');
    let partition = parts.next()?.parse().ok()?;
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    (parts.next().is_none() && first <= last).then_some((partition, first, last))
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for BatchId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for BatchId {
    type Err = BatcherError;

    /// Accepts only the canonical form [`BatchId::for_range`] produces (no sign, no leading
    /// zeros, first offset not above the last), so one range has exactly one id string.
    fn from_str(s: &str) -> Result<Self, BatcherError> {
        match parse_range(s) {
            Some((p, first, last)) if BatchId::for_range(p, first, last).0 == s => {
                Ok(Self(s.to_owned()))
            }
            _ => Err(BatcherError::InvalidBatchId { id: s.to_owned() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_validate_names_the_field() {
        assert!(Limits::default().validate().is_ok());
        let zero_records = Limits {
            max_records: 0,
            ..Limits::default()
        };
        assert!(matches!(
            zero_records.validate(),
            Err(BatcherError::InvalidLimits {
                field: "max_records",
                ..
            })
        ));
        let zero_bytes = Limits {
            max_bytes: 0,
            ..Limits::default()
        };
        assert!(matches!(
            zero_bytes.validate(),
            Err(BatcherError::InvalidLimits {
                field: "max_bytes",
                ..
            })
        ));
        let zero_wait = Limits {
            max_wait: Duration::ZERO,
            ..Limits::default()
        };
        assert!(zero_wait.validate().is_ok());
    }

    #[test]
    fn batch_ids_round_trip_in_canonical_form_only() {
        let id = BatchId::for_range(3, 17, 42);
        assert_eq!(id.as_str(), "3-17-42");
        assert_eq!(id.range(), (3, 17, 42));
        assert_eq!("3-17-42".parse::<BatchId>().unwrap(), id);
        for bad in [
            "",
            "3-17",
            "3-17-42-1",
            "03-17-42",
            "3-+17-42",
            "3-42-17",
            "a-1-2",
            "-1-2-3",
            "3-17-",
        ] {
            assert!(bad.parse::<BatchId>().is_err(), "{bad:?} accepted");
        }
    }
}
