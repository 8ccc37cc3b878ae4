//! The tenantsync domain model: dataset names, tenant and entity ids, record keys, changes,
//! records, topic names, the tenant partitioner, and backend URLs (parsed once, shown without
//! passwords).
//!
//! This crate does no I/O. Every other crate speaks in these types, so validation happens once,
//! at the edge, and a value of one of these types is valid by construction.

mod change;
mod error;
mod ids;
mod partitioner;
mod record;
mod topics;
pub mod url;

pub use change::{Change, ChangeId, Op, merge_patch};
pub use error::{Classify, ErrorClass, InvalidInput};
pub use ids::{DatasetName, EntityId, RecordKey, SubscriptionName, TenantId, TokenName};
pub use partitioner::{murmur2, partition_for_tenant};
pub use record::{Outcome, Record, RejectReason};
pub use topics::Topics;

/// A JSON object: the shape of every record's data.
pub type Object = serde_json::Map<String, serde_json::Value>;
