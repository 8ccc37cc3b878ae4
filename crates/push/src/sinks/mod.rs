//! Database sinks: a table in a consumer's own database kept identical to a dataset.
//!
//! [`definition`] is what a sink is; [`table`] the table behind one trait ([`table::SinkTable`])
//! with its PostgreSQL ([`postgres`]) and SQLite ([`sqlite`]) backends; [`deliver`] the run
//! that follows the dataset's feed and writes it. A sink's progress and fence live in its own
//! database, written in the transactions that write its rows: the copy never goes back in
//! version, a crash anywhere loses nothing and applies nothing twice, and an instance that took
//! the sink over continues exactly where the table says.

pub mod definition;
pub mod deliver;
pub mod postgres;
pub mod sqlite;
pub mod table;

use tenantsync_store::StoredPush;

pub use deliver::run;

use crate::PushError;

/// Whether the stored sink is to be delivered (it is enabled).
pub fn runs(stored: &StoredPush) -> bool {
    definition::Definition::parse(&stored.definition).is_ok_and(|d| d.enabled)
}

/// Why a sink cannot be used as defined: the API answers 422 with it. Messages name the
/// database only by its redacted URL, and never hold a password.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The database cannot be reached, or refused (authentication, permissions, a file that
    /// cannot be opened).
    #[error("url: the sink database {url} cannot be used: {reason}")]
    Database { url: String, reason: String },
    /// The table exists with another shape; says what differs.
    #[error("table: {0}")]
    Table(String),
}

impl CheckError {
    /// The field of the definition at fault (`url` or `table`).
    pub fn field(&self) -> &'static str {
        match self {
            CheckError::Database { .. } => "url",
            CheckError::Table(_) => "table",
        }
    }
}

/// Connects to the sink's database and prepares its table (creating it when absent, as the
/// sink's run would), so that a sink that cannot work is refused when it is defined.
pub async fn check(definition: &definition::Definition) -> Result<(), CheckError> {
    let url = definition
        .store_url()
        .map(|u| u.to_string())
        .unwrap_or_else(|_| "(invalid)".to_owned());
    let refused = |error: PushError| match error {
        PushError::Table(message) => CheckError::Table(message),
        other => CheckError::Database {
            url: url.clone(),
            reason: match other {
                PushError::Sink { message, .. } => message,
                other => other.to_string(),
            },
        },
    };
    // Preparing concerns the table, not a sink: no sink's progress is touched but the
    // table's, when it is created.
    let table = table::open("", definition).await.map_err(refused)?;
    table.prepare().await.map_err(refused)
}
