use tenantsync_log::LogError;
use tenantsync_store::StoreError;
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProcessorError {
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

impl ProcessorError {
    pub fn is_transient(&self) -> bool {
        match self {
            ProcessorError::Log(e) => e.is_transient(),
            ProcessorError::Store(e) => e.is_transient(),
            ProcessorError::InvalidPartitions { .. } => false,
        }
    }
}
