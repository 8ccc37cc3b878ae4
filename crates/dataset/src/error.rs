use tenantsync_core::{Classify, ErrorClass};
use tenantsync_log::LogError;
use tenantsync_store::StoreError;
use thiserror::Error;

/// What can go wrong declaring or looking up a dataset.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DatasetError {
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("master store: {0}")]
    Store(#[from] StoreError),
    #[error("dataset {dataset} has {partitions} partitions; it must have 1 to {max}")]
    InvalidPartitions {
        dataset: String,
        partitions: u32,
        max: u32,
    },
}

impl Classify for DatasetError {
    fn class(&self) -> ErrorClass {
        match self {
            DatasetError::Log(e) => e.class(),
            DatasetError::Store(e) => e.class(),
            DatasetError::InvalidPartitions { .. } => ErrorClass::Permanent,
        }
    }
}

/// Why a log entry is not a valid record of its log. Such an entry was written by something
/// other than tenantsync (or is corrupt): it never becomes valid, so readers skip it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("entry has no value")]
    NoValue,
    #[error("key is not UTF-8")]
    KeyNotUtf8,
    #[error("invalid key: {0}")]
    Key(String),
    #[error("value is not valid JSON for this log: {0}")]
    Json(String),
    #[error("invalid change: {0}")]
    Invalid(String),
    #[error("value is for {value} but key is {key}")]
    KeyMismatch { value: String, key: String },
    #[error("tombstone lacks the {0} header")]
    MissingHeader(&'static str),
    #[error("tombstone header {0} is invalid")]
    BadHeader(&'static str),
}
