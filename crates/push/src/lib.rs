//! Push delivery: tenantsync sends changes to consumers instead of waiting to be asked.
//!
//! A push target is a webhook endpoint ([`webhooks`]: signed HTTP POSTs of one tenant's batch of
//! one dataset, Standard Webhooks v1) or a database sink ([`sinks`]: a table in the consumer's own
//! PostgreSQL or SQLite database kept identical to a dataset). Targets are defined in the master
//! store ([`tenantsync_store::PushStore`]) and each is delivered by one instance at a time, under
//! a claim ([`runner`]): the `push` service starts a `webhook/{name}` or `sink/{name}` service per
//! target this instance holds.
//!
//! A target's progress is a position in each tenant's change feed (read from the master store
//! by seq, as subscriptions read it; see [`follow`]), never an in-memory queue: memory per target
//! is bounded however far behind it is, and whoever takes a target over continues from the
//! stored position. A webhook's positions are kept in the master store; a sink's in its own
//! database, in the transaction that writes its rows. A target that fell behind tombstone
//! retention is sent a new snapshot of the tenant, marked `reset`.
//!
//! Every target runs on its own: a slow, failing or hanging one holds back only itself.

pub mod definition;
pub mod error;
pub mod figures;
pub mod follow;
mod metrics;
pub mod runner;
pub mod sinks;
pub mod webhooks;

pub use error::PushError;
pub use figures::{Figures, TargetStatus};
pub use runner::{Push, PushSettings, TargetContext};
