//! The store's one error type and the one place that decides whether an error is worth retrying.
//!
//! [`StoreError::class`] reads the database's own diagnosis: the SQLSTATE of a PostgreSQL error,
//! the extended result code of a SQLite one. Nothing else in the workspace may decide that a
//! store error is transient. No error built here carries a URL with its password: URLs appear
//! only as `tenantsync_core::url` types, which never show one.

use rusqlite::ffi;
use tenantsync_core::url::UrlError;
use thiserror::Error;

/// Everything that can go wrong with a master store.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Shows no password: see [`tenantsync_core::url`].
    #[error("invalid store URL: {0}")]
    InvalidUrl(UrlError),
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
    #[error("postgres error: {}", postgres_reason(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// No pooled connection could be had in time (the database is down or overloaded).
    #[error("postgres pool error: {0}")]
    Pool(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

pub use tenantsync_core::ErrorClass;

impl StoreError {
    /// Whether retrying later may succeed. The one place that decides it:
    ///
    /// - PostgreSQL, by SQLSTATE: class 40 (serialization failure, deadlock; but not 40002, an
    ///   integrity constraint violation found at commit), class 08 (connection exceptions),
    ///   57P01-57P03 (admin shutdown, crash shutdown, cannot connect now), 57014 (query
    ///   cancelled, as a statement timeout does), 53000, 53200 and 53300 (insufficient
    ///   resources, out of memory, too many connections) and 55P03 (lock not available) are
    ///   transient. Every other SQLSTATE is permanent, among them class 23 (integrity
    ///   constraints), 42 (syntax errors and access rules: undefined table 42P01 or column
    ///   42703, insufficient privilege 42501), 22 (data exceptions), 28 (authentication) and
    ///   53100 (disk full). An error without a SQLSTATE is transient when the connection is
    ///   closed or an I/O error caused it (refused, reset, timed out), permanent otherwise (a
    ///   row that does not convert, a protocol error).
    /// - SQLite, by primary result code: BUSY and LOCKED (another connection holds the lock),
    ///   NOMEM, INTERRUPT, PROTOCOL (a lock race in WAL mode), SCHEMA (the statement is
    ///   prepared again) and IOERR are transient. IOERR is transient because SQLite rolls the
    ///   transaction back on it and leaves the file consistent, and its usual causes (a
    ///   network file system or a device briefly unavailable) pass; IOERR_CORRUPTFS is the
    ///   exception and permanent. Everything else is permanent: CONSTRAINT, FULL, READONLY,
    ///   CORRUPT, NOTADB, PERM, CANTOPEN, ERROR (undefined table or column, SQL errors) and
    ///   every rusqlite error that is not SQLite's (a conversion, a misuse).
    /// - A pool that had no connection in time is transient; so is an I/O error of the store's
    ///   own (the SQLite file's directory, the writer thread), unless the file system refuses
    ///   (permission denied, read-only, storage full, not found).
    /// - [`Corrupt`](Self::Corrupt), [`InvalidArgument`](Self::InvalidArgument),
    ///   [`OutOfRange`](Self::OutOfRange), [`InvalidUrl`](Self::InvalidUrl) and
    ///   [`DatasetMismatch`](Self::DatasetMismatch) are permanent.
    pub fn class(&self) -> ErrorClass {
        match self {
            StoreError::Sqlite(e) => sqlite_class(e),
            StoreError::Postgres(e) => postgres_class(e),
            StoreError::Pool(_) => ErrorClass::Transient,
            StoreError::Io(e) => io_class(e),
            StoreError::InvalidUrl(_)
            | StoreError::DatasetMismatch { .. }
            | StoreError::Corrupt { .. }
            | StoreError::OutOfRange { .. }
            | StoreError::InvalidArgument(_) => ErrorClass::Permanent,
        }
    }

    /// `class() == ErrorClass::Transient`.
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }
}

fn sqlite_class(error: &rusqlite::Error) -> ErrorClass {
    let rusqlite::Error::SqliteFailure(failure, _) = error else {
        return ErrorClass::Permanent;
    };
    if failure.extended_code == ffi::SQLITE_IOERR_CORRUPTFS {
        return ErrorClass::Permanent;
    }
    match failure.extended_code & 0xff {
        ffi::SQLITE_BUSY
        | ffi::SQLITE_LOCKED
        | ffi::SQLITE_NOMEM
        | ffi::SQLITE_INTERRUPT
        | ffi::SQLITE_PROTOCOL
        | ffi::SQLITE_SCHEMA
        | ffi::SQLITE_IOERR => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

fn postgres_class(error: &tokio_postgres::Error) -> ErrorClass {
    if let Some(state) = error.code() {
        return sqlstate_class(state.code());
    }
    if error.is_closed() {
        return ErrorClass::Transient;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        // A refused, reset or timed-out connection, or a socket file not there while the
        // server restarts: the server may come back.
        if cause.is::<std::io::Error>() {
            return ErrorClass::Transient;
        }
        source = cause.source();
    }
    ErrorClass::Permanent
}

/// The class of a five-character SQLSTATE.
fn sqlstate_class(code: &str) -> ErrorClass {
    match code {
        // Integrity constraint violation found at commit: the transaction itself is wrong.
        "40002" => ErrorClass::Permanent,
        "57P01" | "57P02" | "57P03" | "57014" | "53000" | "53200" | "53300" | "55P03" => {
            ErrorClass::Transient
        }
        _ if code.starts_with("40") || code.starts_with("08") => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

/// What went wrong, for a person: a `tokio_postgres::Error` says only "db error" for everything
/// the server refused, so the server's severity, SQLSTATE and message are added (not its DETAIL
/// or HINT, which can quote row values), and to a failure of the connection its I/O cause.
fn postgres_reason(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!(
            "{error}: {} {}: {}",
            db.severity(),
            db.code().code(),
            db.message()
        );
    }
    match std::error::Error::source(error).and_then(|c| c.downcast_ref::<std::io::Error>()) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

fn io_class(error: &std::io::Error) -> ErrorClass {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::PermissionDenied
        | ErrorKind::NotFound
        | ErrorKind::ReadOnlyFilesystem
        | ErrorKind::StorageFull
        | ErrorKind::InvalidInput => ErrorClass::Permanent,
        _ => ErrorClass::Transient,
    }
}

impl From<UrlError> for StoreError {
    fn from(error: UrlError) -> Self {
        StoreError::InvalidUrl(error)
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
    fn class(&self) -> ErrorClass {
        StoreError::class(self)
    }
}

#[cfg(test)]
mod tests {
    use tenantsync_core::url::StoreUrl;

    use super::*;

    #[test]
    fn sqlstates_are_classified_by_class_and_code() {
        for transient in [
            "40001", "40P01", "40003", "08006", "08001", "57P01", "57P02", "57P03", "57014",
            "53300", "53200", "55P03",
        ] {
            assert_eq!(
                sqlstate_class(transient),
                ErrorClass::Transient,
                "{transient}"
            );
        }
        for permanent in [
            "23505", "23503", "42P01", "42703", "42501", "42601", "53100", "22001", "22P02",
            "40002", "28P01", "3D000", "XX001",
        ] {
            assert_eq!(
                sqlstate_class(permanent),
                ErrorClass::Permanent,
                "{permanent}"
            );
        }
    }

    #[test]
    fn sqlite_codes_are_classified_by_primary_code() {
        let failure =
            |extended_code| rusqlite::Error::SqliteFailure(ffi::Error::new(extended_code), None);
        for transient in [
            ffi::SQLITE_BUSY,
            ffi::SQLITE_BUSY_SNAPSHOT,
            ffi::SQLITE_LOCKED,
            ffi::SQLITE_LOCKED_SHAREDCACHE,
            ffi::SQLITE_IOERR,
            ffi::SQLITE_IOERR_FSYNC,
            ffi::SQLITE_PROTOCOL,
        ] {
            assert!(
                StoreError::from(failure(transient)).is_transient(),
                "{transient}"
            );
        }
        for permanent in [
            ffi::SQLITE_CONSTRAINT_UNIQUE,
            ffi::SQLITE_CONSTRAINT_PRIMARYKEY,
            ffi::SQLITE_FULL,
            ffi::SQLITE_READONLY,
            ffi::SQLITE_CORRUPT,
            ffi::SQLITE_NOTADB,
            ffi::SQLITE_PERM,
            ffi::SQLITE_ERROR,
            ffi::SQLITE_IOERR_CORRUPTFS,
        ] {
            assert_eq!(
                StoreError::from(failure(permanent)).class(),
                ErrorClass::Permanent,
                "{permanent}"
            );
        }
        assert_eq!(
            StoreError::from(rusqlite::Error::QueryReturnedNoRows).class(),
            ErrorClass::Permanent
        );
    }

    #[test]
    fn the_store_own_errors_are_permanent_and_pools_transient() {
        let permanent = [
            StoreError::from("x://".parse::<StoreUrl>().unwrap_err()),
            StoreError::DatasetMismatch {
                dataset: "d".into(),
                existing: 1,
                requested: 2,
            },
            StoreError::Corrupt {
                what: "row",
                detail: "bad".into(),
            },
            StoreError::OutOfRange {
                what: "offset",
                value: u64::MAX,
            },
            StoreError::InvalidArgument("offset below position".into()),
            StoreError::Io(std::io::Error::from(std::io::ErrorKind::PermissionDenied)),
        ];
        for e in permanent {
            assert_eq!(e.class(), ErrorClass::Permanent, "{e}");
            assert!(!e.is_transient());
        }
        assert!(StoreError::Pool("timed out waiting for a connection".into()).is_transient());
        assert!(
            StoreError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
                .is_transient()
        );
    }
}
