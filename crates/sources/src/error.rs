//! What can stop a source's run, and whether waiting helps (`Classify`).

use tenantsync_core::{Classify, ErrorClass};
use tenantsync_dataset::DatasetError;
use tenantsync_log::LogError;
use tenantsync_schema::SchemaError;
use tenantsync_store::StoreError;

/// Why a source shard's run ended. Messages never carry a password: URLs appear only in their
/// redacted form, and the database's and Kafka's own messages name no credentials.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("the changes log: {0}")]
    Log(#[from] LogError),
    #[error("the master store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// A dataset's data contract could not be read.
    #[error("the data contract: {0}")]
    Schema(#[from] SchemaError),
    /// The service database (the outbox's PostgreSQL), with whether retrying may help.
    #[error("{message}")]
    Database { message: String, class: ErrorClass },
    /// Kafka (the Debezium topics).
    #[error("{message}")]
    Kafka { message: String, class: ErrorClass },
    /// The run was asked to stop while it waited.
    #[error("stopped")]
    Stopped,
}

impl SourceError {
    pub fn database(class: ErrorClass, message: impl Into<String>) -> Self {
        SourceError::Database {
            message: message.into(),
            class,
        }
    }

    pub fn kafka(class: ErrorClass, message: impl Into<String>) -> Self {
        SourceError::Kafka {
            message: message.into(),
            class,
        }
    }
}

impl Classify for SourceError {
    fn class(&self) -> ErrorClass {
        match self {
            SourceError::Log(e) => e.class(),
            SourceError::Store(e) => e.class(),
            SourceError::Dataset(e) => e.class(),
            SourceError::Schema(SchemaError::Store(e)) => e.class(),
            // A stored schema that does not compile fails the same way until someone fixes it.
            SourceError::Schema(SchemaError::Invalid { .. }) => ErrorClass::Permanent,
            SourceError::Database { class, .. } | SourceError::Kafka { class, .. } => *class,
            SourceError::Stopped => ErrorClass::Transient,
        }
    }
}

/// Why a definition cannot run, found by connecting (the API's 422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CheckError(pub String);
