use thiserror::Error;

use crate::Partition;

/// Boxed error of a backend's client library.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong talking to a log.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LogError {
    #[error("topic {topic} does not exist")]
    UnknownTopic { topic: String },
    #[error("partition {partition} of topic {topic} does not exist (the topic has {partitions})")]
    UnknownPartition {
        topic: String,
        partition: Partition,
        partitions: u32,
    },
    #[error(
        "topic {topic} has {actual} partitions but {expected} are configured (an existing topic \
         is never changed: delete it, or use another topic prefix)"
    )]
    TopicMismatch {
        topic: String,
        expected: u32,
        actual: u32,
    },
    #[error("partition {partition} of topic {topic} is not owned by this consumer")]
    NotOwner { topic: String, partition: Partition },
    #[error("invalid log configuration: {0}")]
    Config(String),
    #[error("{context}: {source}")]
    Backend {
        context: String,
        /// Set by the backend, the one place that knows its client library's error kinds.
        transient: bool,
        #[source]
        source: BoxError,
    },
    #[error("the log is shut down")]
    Closed,
}

impl LogError {
    pub fn backend(
        context: impl Into<String>,
        transient: bool,
        source: impl Into<BoxError>,
    ) -> Self {
        LogError::Backend {
            context: context.into(),
            transient,
            source: source.into(),
        }
    }

    /// Whether retrying the same call later may succeed (connectivity, a broker restarting).
    pub fn is_transient(&self) -> bool {
        match self {
            LogError::Backend { transient, .. } => *transient,
            LogError::NotOwner { .. } => true,
            _ => false,
        }
    }
}

impl tenantsync_core::Classify for LogError {
    fn class(&self) -> tenantsync_core::ErrorClass {
        tenantsync_core::ErrorClass::transient_if(self.is_transient())
    }
}
