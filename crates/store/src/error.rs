use thiserror::Error;

/// Everything that can go wrong with a master store.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("invalid store URL {0:?}: expected sqlite://FILE or postgres://USER@HOST:PORT/DB")]
    InvalidUrl(String),
    #[error("dataset {dataset} is declared with {existing} partitions, not {requested}")]
    DatasetMismatch {
        dataset: String,
        existing: u32,
        requested: u32,
    },
    #[error("stored data is corrupt ({what}): {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// A number the caller passed does not fit the store's signed 64-bit columns.
    #[error("{what} {value} is out of range: the store keeps signed 64-bit integers")]
    OutOfRange { what: &'static str, value: u64 },
    /// The caller broke a method's documented precondition.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("sqlite error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres pool error: {0}")]
    Pool(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// Whether retrying later may succeed. The one place that decides it.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Sqlite(_)
                | StoreError::Postgres(_)
                | StoreError::Pool(_)
                | StoreError::Io(_)
        )
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        match error {
            deadpool_postgres::PoolError::Backend(e) => StoreError::Postgres(e),
            other => StoreError::Pool(other.to_string()),
        }
    }
}

impl tenantsync_core::Classify for StoreError {
    fn class(&self) -> tenantsync_core::ErrorClass {
        tenantsync_core::ErrorClass::transient_if(self.is_transient())
    }
}
