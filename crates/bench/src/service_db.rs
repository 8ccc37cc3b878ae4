//! The service database of the source benches (`outbox`, `debezium`): a database of its own on
//! the `--postgres` server, created afresh and dropped with its replication slots at the end.

use anyhow::Context;
use tokio_postgres::NoTls;

pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .context("cannot connect to --postgres")?;
    tokio::spawn(connection);
    Ok(client)
}

/// `server`'s URL with its database replaced by `database`.
pub fn with_database(server: &str, database: &str) -> String {
    let (base, query) = server.split_once('?').unwrap_or((server, ""));
    let at = base.rfind('/').map_or(base.len(), |i| i);
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("{}/{database}{query}", &base[..at])
}

/// Drops `database` and the replication slots in it (a slot blocks the drop), if they exist.
pub async fn drop_database(admin: &tokio_postgres::Client, database: &str) -> anyhow::Result<()> {
    // Two statements: a batch of several runs as one transaction, where DROP DATABASE cannot.
    admin
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE database = $1",
            &[&database],
        )
        .await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .await?;
    Ok(())
}

/// Drops `database` if it exists and creates it empty; returns a client of the server and
/// one of the new database.
pub async fn fresh_database(
    server: &str,
    database: &str,
) -> anyhow::Result<(tokio_postgres::Client, tokio_postgres::Client)> {
    let admin = connect(server).await?;
    drop_database(&admin, database).await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await?;
    let service = connect(&with_database(server, database)).await?;
    Ok((admin, service))
}
