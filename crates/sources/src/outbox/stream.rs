//! The outbox's replication connection: a `START_REPLICATION ... LOGICAL` stream of one slot
//! (the `pgwire-replication` client), opened with the connection parameters of the outbox's
//! URL, over plain TCP like every other PostgreSQL connection of tenantsync.
//!
//! It only opens the stream and says how its failures are classified; what is read and what is
//! confirmed is the relay's business ([`super::Relay`]). It must never put the password in an
//! error or a log line.

use std::time::{Duration, Instant};

use pgwire_replication::{PgWireError, ReplicationClient, ReplicationConfig};
use tenantsync_core::ErrorClass;
use tenantsync_core::url::PostgresUrl;
use tokio_postgres::config::Host;

use super::pgoutput::Lsn;
use super::{IDLE_WAKEUP, OutboxError, SLOT_BUSY_RETRY, STATUS_INTERVAL};
use tenantsync_store::postgres::driver_config;

/// Opens the stream of `slot` at `confirmed`, the slot's confirmed position: the server
/// reports nothing as confirmed beyond it until the relay says so, and streams from it
/// (PostgreSQL starts a logical stream at the slot's confirmed position at the earliest).
/// Returns once the server accepted the start and holds the slot for this connection.
pub(super) async fn open(
    url: &PostgresUrl,
    slot: &str,
    publication: &str,
    confirmed: Lsn,
) -> Result<ReplicationClient, OutboxError> {
    let config = replication_config(url, slot, publication, confirmed)?;
    let started = Instant::now();
    loop {
        let attempt = async {
            let mut client = ReplicationClient::connect(config.clone()).await?;
            client.wait_started().await?;
            Ok::<_, PgWireError>(client)
        };
        match attempt.await {
            Ok(client) => return Ok(client),
            // The previous run's walsender may still be ending (it releases the slot as it
            // exits); anything else, or a slot held longer, is for the caller to classify.
            Err(error)
                if sqlstate(&error) == Some("55006") && started.elapsed() < SLOT_BUSY_RETRY =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => {
                return Err(OutboxError::Replication {
                    slot: slot.to_owned(),
                    error,
                });
            }
        }
    }
}

fn replication_config(
    url: &PostgresUrl,
    slot: &str,
    publication: &str,
    confirmed: Lsn,
) -> Result<ReplicationConfig, OutboxError> {
    let parsed = driver_config(url, super::APPLICATION)?;
    let host = match parsed.get_hosts().first() {
        Some(Host::Tcp(name)) => name.clone(),
        Some(Host::Unix(directory)) => directory.to_string_lossy().into_owned(),
        None => "localhost".to_owned(),
    };
    let password = match parsed.get_password() {
        Some(bytes) => String::from_utf8(bytes.to_vec()).map_err(|_| OutboxError::Config {
            problem: "the password is not UTF-8",
        })?,
        None => String::new(),
    };
    let position = pgwire_replication::Lsn(confirmed.0);
    let config = ReplicationConfig::new(
        host,
        parsed.get_user().unwrap_or_default(),
        password,
        parsed.get_dbname().unwrap_or_default(),
        slot,
        publication,
    )
    .with_port(parsed.get_ports().first().copied().unwrap_or(5432))
    .with_start_lsn(position)
    .with_ack_lsn(position)
    .with_status_interval(STATUS_INTERVAL)
    .with_wakeup_interval(IDLE_WAKEUP)
    .with_application_name(parsed.get_application_name().unwrap_or_default().to_owned());
    Ok(config)
}

/// The SQLSTATE of a server error (the client keeps only its text, `... (SQLSTATE 55006)`).
fn sqlstate(error: &PgWireError) -> Option<&str> {
    let PgWireError::Server(message) = error else {
        return None;
    };
    let at = message.rfind("(SQLSTATE ")? + "(SQLSTATE ".len();
    message.get(at..at + 5)
}

/// A lost connection, a server shutting down or starting, too many connections, and a slot
/// another session holds are transient; an authentication failure, a missing publication, a
/// malformed or oversized message are permanent.
pub(super) fn class(error: &PgWireError) -> ErrorClass {
    match error {
        PgWireError::Io(_) | PgWireError::Task(_) | PgWireError::Internal(_) => {
            ErrorClass::Transient
        }
        PgWireError::Server(_) => match sqlstate(error) {
            Some(code)
                if code == "55006"
                    || code.starts_with("57P")
                    || code.starts_with("08")
                    || code.starts_with("53") =>
            {
                ErrorClass::Transient
            }
            _ => ErrorClass::Permanent,
        },
        _ => ErrorClass::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_are_classified_by_their_sqlstate() {
        let server = |text: &str| PgWireError::Server(text.to_owned());
        let busy = server("replication slot \"s\" is active for PID 7 (SQLSTATE 55006)");
        assert_eq!(sqlstate(&busy), Some("55006"));
        assert_eq!(class(&busy), ErrorClass::Transient);
        let killed = server("terminating connection due to administrator command (SQLSTATE 57P01)");
        assert_eq!(class(&killed), ErrorClass::Transient);
        let missing = server("publication \"p\" does not exist (SQLSTATE 42704)");
        assert_eq!(class(&missing), ErrorClass::Permanent);
        assert_eq!(class(&server("no code")), ErrorClass::Permanent);
        assert_eq!(
            class(&PgWireError::Auth("refused".into())),
            ErrorClass::Permanent
        );
    }

    #[test]
    fn the_connection_parameters_come_from_the_url_and_the_password_is_not_shown() {
        let url: PostgresUrl = "postgres://relay:s3cret@db.example:6543/shop"
            .parse()
            .unwrap();
        let config = replication_config(&url, "slot", "publication", Lsn(42)).unwrap();
        assert_eq!(
            (config.host.as_str(), config.port, config.user.as_str()),
            ("db.example", 6543, "relay")
        );
        assert_eq!(
            (config.password.as_str(), config.database.as_str()),
            ("s3cret", "shop")
        );
        assert_eq!(config.start_lsn, pgwire_replication::Lsn(42));
        assert_eq!(config.ack_lsn, Some(pgwire_replication::Lsn(42)));
        assert!(!config.display_connection().contains("s3cret"));
    }
}
