//! How long data is kept: tombstones are purged once past their retention
//! ([`tombstones`]), idempotency keys (change outcomes) likewise ([`IdempotencyPruner`]), and a
//! tenant can be erased from every dataset ([`Erasures`]). All run as supervised services;
//! every step they take is idempotent, so a run cut off anywhere (a failure, a SIGKILL) is
//! simply run again.
//!
//! None decides how a change applies: erasure deletes through the changes log like any
//! writer, and the store's rules do the rest.

mod erasure;
pub mod idempotency;
pub mod tombstones;

use std::time::Duration;

pub use erasure::Erasures;
pub use idempotency::IdempotencyPruner;

/// How often a retention service runs for a given retention: a quarter of it, within 1 s to
/// 60 s.
pub fn interval(retention: Duration) -> Duration {
    (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}
