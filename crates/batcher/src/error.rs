use thiserror::Error;

/// What the batcher's pure core can refuse. It never fails on records: every record pushed is
/// either buffered or, being at or below what is already covered, skipped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BatcherError {
    /// A [`Limits`](crate::Limits) field is out of range; `field` names it as configured.
    #[error("invalid batch limit {field}: {reason}")]
    InvalidLimits { field: &'static str, reason: String },
    /// A string that is not a batch id in its canonical form (`{partition}-{first}-{last}`).
    #[error("invalid batch id {id:?}: expected {{partition}}-{{first_offset}}-{{last_offset}}")]
    InvalidBatchId { id: String },
}

/// Why the batcher stage or the batch queue could not go on.
#[derive(Debug, Error)]
pub enum BatchesError {
    #[error(transparent)]
    Log(#[from] tenantsync_log::LogError),
    #[error(transparent)]
    Store(#[from] tenantsync_store::StoreError),
    /// The checkpoint stored with the dataset's batcher claim does not fit the dataset.
    #[error("the batcher checkpoint in the master store is unusable: {0}")]
    Checkpoint(String),
    /// Another instance holds the dataset's batcher claim now; this one must stop batching.
    #[error("another instance took over this dataset's batcher")]
    ClaimLost,
    /// A task the stage depends on ended.
    #[error("{0} stopped")]
    Stopped(&'static str),
}

impl tenantsync_core::Classify for BatchesError {
    fn class(&self) -> tenantsync_core::ErrorClass {
        use tenantsync_core::ErrorClass;
        match self {
            BatchesError::Log(e) => e.class(),
            BatchesError::Store(e) => e.class(),
            // Another claimant, or a reader task that ended: the next run claims and reads anew.
            BatchesError::ClaimLost | BatchesError::Stopped(_) => ErrorClass::Transient,
            BatchesError::Checkpoint(_) => ErrorClass::Permanent,
        }
    }
}
