//! The processor.
//!
//! The processor consumes each dataset's changes log as a member of one consumer group, applies
//! each batch to the master store (which records the consumed position in the same transaction),
//! publishes the resulting full records, or tombstones, to the dataset's state log keyed
//! `tenant:id` (and, for a dataset that asks for Avro, to its Avro state log too, in the same
//! atomic publish, each state encoded with the newest Avro version its data fits), and only then
//! commits its position in the changes log. It must never publish a state that the master store
//! has not committed, and never commit a position whose states are not yet published: that
//! ordering is what makes a SIGKILL at any instant harmless.
//!
//! Each batch is applied with the dataset's data contract as it stands then (`check`): a patch
//! whose merged result violates the latest schema is rejected by the store, not applied.

mod check;
mod error;
mod processor;

pub use error::ProcessorError;
pub use processor::{Processor, ProcessorConfig, ProcessorStats};
