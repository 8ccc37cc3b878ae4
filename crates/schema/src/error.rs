use tenantsync_store::StoreError;

/// Why a schema or a contract operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The schema is not one tenantsync accepts: not valid JSON Schema (or Avro), a remote
    /// `$ref`, or a construct that has no Avro equivalent. `pointer` is a JSON pointer into the
    /// schema ("" for the whole).
    #[error("invalid schema at '{pointer}': {message}")]
    Invalid { pointer: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}
