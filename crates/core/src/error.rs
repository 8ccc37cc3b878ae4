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
