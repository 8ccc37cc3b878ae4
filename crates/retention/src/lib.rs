//! How long data is kept: tombstones are purged once past their retention
//! ([`tombstones`]), and a tenant can be erased from every dataset ([`Erasures`]). Both run as
//! supervised services; every step they take is idempotent, so a run cut off anywhere (a
//! failure, a SIGKILL) is simply run again.
//!
//! Neither decides how a change applies: erasure deletes through the changes log like any
//! writer, and the store's rules do the rest.

mod erasure;
pub mod tombstones;

pub use erasure::Erasures;
