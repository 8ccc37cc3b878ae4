//! What every component knows about a dataset, below the processor, the feeds and the batcher:
//! the registry of declared datasets and their topics, the changes-log and state-log record
//! formats, the per-tenant write quotas every change passes before it is appended (from the
//! API or a source), and how a committed batch is announced (commit observers, the applied
//! hub).
//!
//! It holds formats and names, never a processing rule: how a change applies is the master
//! store's business, when it applies the processor's.

mod applied;
pub mod changes;
mod error;
mod quota;
mod registry;
pub mod state;

pub use applied::{AppliedChange, AppliedHub, Settled, Waiter};
pub use error::{DatasetError, DecodeError};
pub use quota::{QuotaError, WriteQuota, WriteQuotas};
pub use registry::{Datasets, Declared, MAX_PARTITIONS, PerDataset, supervise};
pub use tenantsync_core::Topics;

use tenantsync_core::{DatasetName, Record};

/// Told of every batch the processor committed to the master store, before its writers are
/// answered and before its states are published: a reader in this process that learns of the
/// change this way reads it from the store, so a writer that got its answer and then reads a
/// feed of this instance sees its own write.
pub trait CommitObserver: Send + Sync {
    /// `states` are the batch's records as committed.
    fn committed(&self, dataset: &DatasetName, states: &[Record]);
}
