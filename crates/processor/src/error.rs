use tenantsync_core::{Classify, ErrorClass};
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
}

impl Classify for ProcessorError {
    fn class(&self) -> ErrorClass {
        match self {
            ProcessorError::Log(e) => e.class(),
            ProcessorError::Store(e) => e.class(),
        }
    }
}
