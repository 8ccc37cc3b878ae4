//! What an outbox needs in its database, checked and created: `wal_level = logical`, the table
//! and its columns with usable types, the role's privileges, the publication and one slot per
//! shard (`prepare`); and their removal when the source is deleted (`drop_replication`).
//!
//! Each refusal is its own [`OutboxCheckError`] variant, saying what to do. None of them ever
//! shows the URL but in its redacted form.

use std::time::{Duration, Instant};

use tenantsync_core::url::UrlError;
use tokio_postgres::Client;
use tracing::{error, info, warn};

use super::{OutboxError, connect, driving, publication_name, quoted_table, slot_name};
use crate::{CheckError, Outbox, SourceError, SourceName};

/// Why an outbox cannot run, found by connecting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxCheckError {
    #[error("url: {0}")]
    Url(UrlError),
    #[error("cannot reach the outbox's database: {0}")]
    Unreachable(String),
    #[error(
        "the database runs with wal_level = {found}; set wal_level = logical in \
         postgresql.conf and restart it"
    )]
    WalLevel { found: String },
    #[error("table {table} does not exist (or the role cannot see it)")]
    NoTable { table: String },
    #[error(
        "table {table} has no column {column:?} (the {role}); create it, or name the right one in columns.{role}"
    )]
    NoColumn {
        table: String,
        role: &'static str,
        column: String,
    },
    #[error("column {column:?} (the {role}) is of type {found}; it must be {expected}")]
    ColumnType {
        role: &'static str,
        column: String,
        found: String,
        expected: &'static str,
    },
    #[error("role {role} may not {privilege} {table}: GRANT {privilege} ON {table} TO {role}")]
    Privilege {
        role: String,
        privilege: &'static str,
        table: String,
    },
    #[error(
        "role {role} may not create replication slots: ALTER ROLE {role} REPLICATION (or use a \
         superuser)"
    )]
    NoReplication { role: String },
    #[error(
        "publication {publication} does not exist and role {role} may not create it (it must \
         own {table} and may CREATE in the database): create it as the table's owner with \
         CREATE PUBLICATION {publication} FOR TABLE {table} WITH (publish = 'insert')"
    )]
    NoPublication {
        publication: String,
        role: String,
        table: String,
    },
    #[error(
        "no replication slot is free for {slot}: raise max_replication_slots (restart needed), \
         or drop unused slots"
    )]
    NoFreeSlot { slot: String },
    #[error(
        "creating replication slot {slot} waited {}s for the transactions open on the server \
         to end (a slot starts where no transaction spans it): end long-running or idle-in-\
         transaction sessions (see pg_stat_activity) and try again",
        SLOT_WAIT.as_secs()
    )]
    SlotWaits { slot: String },
    #[error("replication slot {slot} exists but {problem}; drop it or rename the source")]
    ForeignSlot { slot: String, problem: String },
    #[error("the outbox's database refused: {0}")]
    Refused(String),
}

impl From<OutboxCheckError> for CheckError {
    fn from(error: OutboxCheckError) -> Self {
        CheckError(error.to_string())
    }
}

/// How long `prepare` lets the creation of a slot wait for the transactions open on the
/// server: it is awaited by `PUT /v1/sources/{name}` and by start-up for the config file's
/// sources, which must not hang behind a session left idle in a transaction.
const SLOT_WAIT: Duration = Duration::from_secs(30);

fn sqlstate(error: &OutboxError) -> Option<&str> {
    match error {
        OutboxError::Postgres {
            error: tenantsync_store::StoreError::Postgres(e),
            ..
        } => e.code().map(|c| c.code()),
        _ => None,
    }
}

impl From<OutboxError> for OutboxCheckError {
    fn from(error: OutboxError) -> Self {
        let sqlstate = sqlstate(&error).map(str::to_owned);
        match error {
            OutboxError::Url(e) => OutboxCheckError::Url(e),
            OutboxError::Postgres { during, error } => {
                match sqlstate.as_deref() {
                    // Connection failures and refused logins (28xxx) before any statement.
                    _ if during == "connecting" => OutboxCheckError::Unreachable(error.to_string()),
                    Some("53400") => OutboxCheckError::NoFreeSlot {
                        slot: String::new(),
                    },
                    _ => OutboxCheckError::Refused(format!("{during}: {error}")),
                }
            }
            OutboxError::ConnectionEnded => OutboxCheckError::Unreachable(error.to_string()),
            OutboxError::Slot { slot, problem } => OutboxCheckError::ForeignSlot { slot, problem },
            other => OutboxCheckError::Refused(other.to_string()),
        }
    }
}

/// Checks that `outbox` can be relayed (the API's 422 when not), then creates the publication
/// and every shard's slot (from then on the database keeps the outbox's WAL for the relay).
/// Idempotent.
pub async fn prepare(outbox: &Outbox, source: &SourceName) -> Result<(), CheckError> {
    let checked = async {
        let (client, connection) = connect(&outbox.url).await?;
        driving(connection, async {
            Ok(checked(&client, outbox, source).await)
        })
        .await
    };
    checked
        .await
        .map_err(OutboxCheckError::from)?
        .map_err(CheckError::from)
}

/// The checks, then the creation of the publication and slots.
async fn checked(
    client: &Client,
    outbox: &Outbox,
    source: &SourceName,
) -> Result<(), OutboxCheckError> {
    let refused =
        |during: &'static str| move |e| OutboxCheckError::from(OutboxError::postgres(during)(e));
    let wal_level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(refused("reading wal_level"))?
        .get(0);
    if wal_level != "logical" {
        return Err(OutboxCheckError::WalLevel { found: wal_level });
    }
    let table = quoted_table(outbox);
    let row = client
        .query_one(
            "SELECT current_user::text, r.rolsuper OR r.rolreplication, c.oid IS NOT NULL, \
                    coalesce(has_table_privilege(c.oid, 'SELECT'), false), \
                    coalesce(has_table_privilege(c.oid, 'DELETE'), false), \
                    r.rolsuper OR (coalesce(pg_has_role(c.relowner, 'USAGE'), false) \
                        AND has_database_privilege(current_database(), 'CREATE')) \
             FROM pg_roles r LEFT JOIN pg_class c ON c.oid = to_regclass($1) \
             WHERE r.rolname = current_user",
            &[&table],
        )
        .await
        .map_err(refused("reading the role and table"))?;
    let (role, may_replicate, exists): (String, bool, bool) = (row.get(0), row.get(1), row.get(2));
    let (may_select, may_delete, may_publish): (bool, bool, bool) =
        (row.get(3), row.get(4), row.get(5));
    if !exists {
        return Err(OutboxCheckError::NoTable { table });
    }
    let columns: Vec<(String, String)> = client
        .query(
            "SELECT a.attname::text, t.typname::text FROM pg_attribute a \
             JOIN pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            &[&table],
        )
        .await
        .map_err(refused("reading the table's columns"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (role_name, column) in outbox.columns.all() {
        let (expected, allowed): (&'static str, &[&str]) = match role_name {
            "payload" => ("json or jsonb", &["json", "jsonb"]),
            "expected_version" => ("smallint, integer or bigint", &["int2", "int4", "int8"]),
            _ => ("text, varchar or uuid", &["text", "varchar", "uuid"]),
        };
        match columns.iter().find(|(name, _)| name == column) {
            None if role_name == "expected_version" => {}
            None => {
                return Err(OutboxCheckError::NoColumn {
                    table,
                    role: role_name,
                    column: column.to_owned(),
                });
            }
            Some((_, found)) if !allowed.contains(&found.as_str()) => {
                return Err(OutboxCheckError::ColumnType {
                    role: role_name,
                    column: column.to_owned(),
                    found: found.clone(),
                    expected,
                });
            }
            Some(_) => {}
        }
    }
    let privilege = |privilege| OutboxCheckError::Privilege {
        role: role.clone(),
        privilege,
        table: table.clone(),
    };
    if !may_select {
        return Err(privilege("SELECT"));
    }
    if outbox.delete_after_relay && !may_delete {
        return Err(privilege("DELETE"));
    }
    if !may_replicate {
        return Err(OutboxCheckError::NoReplication { role });
    }
    let publication = publication_name(source);
    let published: bool = client
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_publication WHERE pubname = $1)",
            &[&publication],
        )
        .await
        .map_err(refused("reading publications"))?
        .get(0);
    if !published && !may_publish {
        return Err(OutboxCheckError::NoPublication {
            publication,
            role,
            table,
        });
    }
    ensure_publication(client, outbox, &publication).await?;
    // This connection is prepare's own, so the setting ends with it.
    client
        .batch_execute(&format!(
            "SET statement_timeout = {}",
            SLOT_WAIT.as_millis()
        ))
        .await
        .map_err(refused("setting a statement timeout"))?;
    for shard in 0..outbox.shards {
        let slot = slot_name(source, shard);
        ensure_slot(client, &slot).await.map_err(|e| {
            if sqlstate(&e) == Some("57014") {
                return OutboxCheckError::SlotWaits { slot: slot.clone() };
            }
            match e.into() {
                OutboxCheckError::NoFreeSlot { .. } => OutboxCheckError::NoFreeSlot { slot },
                other => other,
            }
        })?;
    }
    Ok(())
}

/// Creates the source's publication of the table's inserts unless it exists, and points it at
/// the table when it publishes another one (the definition's table changed).
pub(super) async fn ensure_publication(
    client: &Client,
    outbox: &Outbox,
    publication: &str,
) -> Result<(), OutboxError> {
    let rows = client
        .query(
            "SELECT p.pubinsert, t.schemaname::text, t.tablename::text FROM pg_publication p \
             LEFT JOIN pg_publication_tables t ON t.pubname = p.pubname WHERE p.pubname = $1",
            &[&publication],
        )
        .await
        .map_err(OutboxError::postgres("reading the publication"))?;
    let table = quoted_table(outbox);
    if rows.is_empty() {
        let created = client
            .batch_execute(&format!(
                "CREATE PUBLICATION {publication} FOR TABLE {table} WITH (publish = 'insert')"
            ))
            .await;
        return match created {
            // Another shard created it meanwhile.
            Err(e) if e.code().is_some_and(|c| c.code() == "42710") => Ok(()),
            other => {
                info!(%publication, %table, "created the outbox's publication");
                other.map_err(OutboxError::postgres("creating the publication"))
            }
        };
    }
    let only_ours = rows.len() == 1
        && rows[0].get::<_, bool>(0)
        && rows[0].get::<_, Option<String>>(1).as_deref() == Some(outbox.schema.as_str())
        && rows[0].get::<_, Option<String>>(2).as_deref() == Some(outbox.table.as_str());
    if !only_ours {
        warn!(%publication, %table, "the outbox's publication published something else; setting it to the table's inserts");
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {publication} SET TABLE {table}; \
                 ALTER PUBLICATION {publication} SET (publish = 'insert')"
            ))
            .await
            .map_err(OutboxError::postgres("altering the publication"))?;
    }
    Ok(())
}

/// Creates the slot unless it exists; refuses one of another plugin or database.
pub(super) async fn ensure_slot(client: &Client, slot: &str) -> Result<(), OutboxError> {
    let existing = client
        .query_opt(
            "SELECT plugin::text, database::text = current_database()::text, slot_type \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(OutboxError::postgres("reading the slot"))?;
    if let Some(row) = existing {
        let (plugin, here): (Option<String>, Option<bool>) = (row.get(0), row.get(1));
        let problem = match (plugin.as_deref(), here) {
            (Some("pgoutput"), Some(true)) => return Ok(()),
            (Some("pgoutput"), _) => "belongs to another database".to_owned(),
            (plugin, _) => format!("uses plugin {}", plugin.unwrap_or("none (physical)")),
        };
        return Err(OutboxError::Slot {
            slot: slot.to_owned(),
            problem,
        });
    }
    let created = client
        .query_one(
            "SELECT lsn FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await;
    match created {
        Ok(row) => {
            let lsn: tokio_postgres::types::PgLsn = row.get(0);
            info!(%slot, %lsn, "created a replication slot: the outbox's rows committed from here on are relayed");
            Ok(())
        }
        Err(e) if e.code().is_some_and(|c| c.code() == "42710") => Ok(()),
        Err(e) => Err(OutboxError::postgres("creating the slot")(e)),
    }
}

/// How long [`drop_replication`] waits for a slot still in use by a relay that has not yet
/// noticed the source is gone (it notices within a claim renewal).
const DROP_WAIT: Duration = Duration::from_secs(15);

/// Drops the source's slots (every shard's, whatever the shard count was) and publication.
/// A slot left behind keeps the database's WAL forever, so every failure is logged as an error
/// with what to drop by hand.
pub async fn drop_replication(outbox: &Outbox, source: &SourceName) -> Result<(), SourceError> {
    let publication = publication_name(source);
    let result = async {
        let (client, connection) = connect(&outbox.url).await?;
        driving(connection, dropped(&client, source, &publication)).await
    }
    .await;
    if let Err(e) = &result {
        error!(
            %source,
            error = %e,
            "could not drop the replication slots tenantsync_{source}_N or publication {publication}: \
             drop them by hand (pg_drop_replication_slot), or the database keeps its WAL for them"
        );
    }
    result.map_err(SourceError::from)
}

async fn dropped(
    client: &Client,
    source: &SourceName,
    publication: &str,
) -> Result<(), OutboxError> {
    let pattern = format!("^tenantsync_{source}_[0-9]+$");
    let deadline = Instant::now() + DROP_WAIT;
    loop {
        let slots = client
            .query(
                "SELECT slot_name::text, active_pid FROM pg_replication_slots \
                     WHERE slot_name ~ $1 AND database = current_database()",
                &[&pattern],
            )
            .await
            .map_err(OutboxError::postgres("listing the slots"))?;
        if slots.is_empty() {
            break;
        }
        let late = Instant::now() >= deadline;
        for row in slots {
            let (slot, pid): (String, Option<i32>) = (row.get(0), row.get(1));
            if let Some(pid) = pid {
                if !late {
                    continue;
                }
                warn!(%slot, pid, "a replication slot of a deleted source is still in use; ending that session");
                client
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .map_err(OutboxError::postgres("ending the session holding a slot"))?;
            }
            match client
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await
            {
                Ok(_) => info!(%slot, "dropped the replication slot of a deleted source"),
                // Taken again, or gone meanwhile: the next pass sees.
                Err(e)
                    if e.code()
                        .is_some_and(|c| matches!(c.code(), "55006" | "42704")) => {}
                Err(e) => return Err(OutboxError::postgres("dropping a slot")(e)),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    client
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {publication}"))
        .await
        .map_err(OutboxError::postgres("dropping the publication"))
}
