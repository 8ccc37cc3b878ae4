use thiserror::Error;

/// A value from outside (a path segment, a header, a body field) that is not acceptable.
///
/// `field` names what the caller sent ("tenant", "id", "If-Match", ...) so an API can tell a
/// person exactly what to fix.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {field}: {reason}")]
#[non_exhaustive]
pub struct InvalidInput {
    pub field: &'static str,
    pub reason: String,
}

impl InvalidInput {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// Whether retrying later may succeed: the one question every error of a background service is
/// asked. Each crate answers it for its own errors, in one place, from the error's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Expected to heal by itself: a lost connection, a busy database, a broker failing over.
    Transient,
    /// Fails the same way until someone changes something: a missing column, a violated
    /// constraint, no permission, a full disk, corrupt data.
    Permanent,
}

impl ErrorClass {
    pub fn transient_if(transient: bool) -> Self {
        if transient {
            ErrorClass::Transient
        } else {
            ErrorClass::Permanent
        }
    }
}

/// An error that knows its [`ErrorClass`].
pub trait Classify {
    fn class(&self) -> ErrorClass;
}
