//! The rules of applying changes, written once for both backends: what one change does to one
//! record ([`decide`]) and what a batch does to the records it addresses ([`plan`]).
//!
//! Everything here is pure: no I/O, no clock, no randomness. A backend loads the current state
//! of every key and the stored outcome of every change id a batch mentions, calls
//! [`plan_batch`], and writes the plan back in the same transaction. Keeping the rules out of
//! the backends is what makes SQLite and PostgreSQL agree record for record; this module must
//! never grow backend-specific behaviour.

mod decide;
mod plan;
#[cfg(test)]
mod test_support;

use chrono::{DateTime, Utc};
use tenantsync_core::Record;

pub(crate) use plan::{lookups, plan_batch, tenants_creating};

/// The version of a live record; 0 when it is absent or deleted (as rejections report it).
fn live_version(record: Option<&Record>) -> u64 {
    record.filter(|r| !r.is_deleted()).map_or(0, |r| r.version)
}

/// Both backends store microseconds; truncating before deciding keeps what `apply` returns
/// equal to what a later `get` reads.
fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}
