use tenantsync_core::{Classify, ErrorClass};
use tenantsync_log::LogError;
use tenantsync_schema::SchemaError;
use tenantsync_store::StoreError;
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProcessorError {
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("master store: {0}")]
    Store(#[from] StoreError),
    /// The dataset's data contract could not be read.
    #[error("data contract: {0}")]
    Schema(#[from] SchemaError),
}

impl Classify for ProcessorError {
    fn class(&self) -> ErrorClass {
        match self {
            ProcessorError::Log(e) => e.class(),
            ProcessorError::Store(e) => e.class(),
            ProcessorError::Schema(SchemaError::Store(e)) => e.class(),
            // A stored schema that does not compile fails the same way until someone fixes it.
            ProcessorError::Schema(SchemaError::Invalid { .. }) => ErrorClass::Permanent,
        }
    }
}
