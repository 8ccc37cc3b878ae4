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

impl ProcessorError {
    pub fn is_transient(&self) -> bool {
        match self {
            ProcessorError::Log(e) => e.is_transient(),
            ProcessorError::Store(e) => e.is_transient(),
        }
    }
}

impl tenantsync_core::Classify for ProcessorError {
    fn class(&self) -> tenantsync_core::ErrorClass {
        tenantsync_core::ErrorClass::transient_if(self.is_transient())
    }
}
