//! What can stop a push target's run, and whether waiting helps (`Classify`).

use tenantsync_core::{Classify, ErrorClass};
use tenantsync_store::StoreError;

/// Why a target's run ended. Messages never carry a secret: URLs appear only in their redacted
/// form, and no signing secret or header value is ever part of one.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("the master store: {0}")]
    Store(#[from] StoreError),
    /// The sink's database, with whether retrying may help.
    #[error("the sink database: {message}")]
    Sink { message: String, class: ErrorClass },
    /// The sink's table exists with another shape (says what differs); fixed by changing the
    /// table or the definition.
    #[error("the sink's table: {0}")]
    Table(String),
    /// The stored definition cannot run (it does not parse, or names something that does not
    /// exist); fixed by defining the target again.
    #[error("{0}")]
    Definition(String),
    /// Another instance took the target over, or an operator moved its position (a replay):
    /// this run must end without writing anything more.
    #[error("the target's claim was taken over")]
    Fenced,
}

impl PushError {
    pub fn sink(class: ErrorClass, message: impl Into<String>) -> Self {
        PushError::Sink {
            message: message.into(),
            class,
        }
    }
}

impl Classify for PushError {
    fn class(&self) -> ErrorClass {
        match self {
            PushError::Store(e) => e.class(),
            PushError::Sink { class, .. } => *class,
            PushError::Definition(_) | PushError::Table(_) => ErrorClass::Permanent,
            PushError::Fenced => ErrorClass::Transient,
        }
    }
}
