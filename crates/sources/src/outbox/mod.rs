//! The `postgres-outbox` kind: relays the rows a service inserts into its outbox table, read
//! through PostgreSQL's logical decoding with the built-in `pgoutput` plugin, streamed over a
//! replication connection (`START_REPLICATION ... LOGICAL`, see [`stream`]), which decodes each
//! WAL record once. An ordinary connection beside it prepares the slot, deletes relayed rows
//! when asked, and reads the lag. ARCHITECTURE.md ("Sources: the outbox relay") argues why it
//! neither skips nor doubles.
//!
//! Each shard has its own logical replication slot, `tenantsync_{source}_{shard}`, on one
//! publication of the table (inserts only), `tenantsync_{source}`. The relay collects whole
//! committed transactions in commit order, hands this shard's rows to the ingest, and only
//! once they are durable in the changes log confirms their end to the server. It must never
//! confirm a position past a transaction it did not hand over, and a keepalive's position only
//! when no transaction is open or waiting (see [`Relay::take`]).

mod check;
pub mod pgoutput;
pub mod rows;
mod stream;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tenantsync_core::url::{PostgresUrl, UrlError};
use tenantsync_core::{Classify, ErrorClass};
use tenantsync_store::StoreError;
use tenantsync_store::postgres::driver_config;
use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use check::{drop_replication, prepare};
use pgoutput::{Assembler, Lsn, Message, StreamError, Transaction};
use pgwire_replication::{PgWireError, ReplicationClient, ReplicationEvent};

use crate::figures::Figures;
use crate::ingest::Read;
use crate::runner::ShardContext;
use crate::{Outbox, SourceError, SourceName};

/// Collected transactions are handed over once no event arrived for this long: a burst of
/// commits goes over as one batch, a lone commit waits only this long.
pub const LINGER: Duration = Duration::from_millis(2);

/// ... or once the oldest collected transaction waited this long, so that a steady stream of
/// commits (no quiet moment) still goes over; a bound on the relay's share of commit ->
/// applied latency.
pub const MAX_BATCH_WAIT: Duration = Duration::from_millis(10);

/// ... or once this many rows were collected (a transaction is never split, so a larger one
/// still comes whole): the batch size under backlog.
pub const MAX_BATCH_ROWS: usize = 10_000;

/// How soon a confirmed position reaches the server (the replication client sends a status
/// update at most this often, and only when the position moved).
pub const STATUS_INTERVAL: Duration = Duration::from_millis(100);

/// How often the client wakes up on an idle stream to send a status update, which also makes
/// the server send a keepalive with its position, through which the slot moves past WAL
/// written by other tables.
pub const IDLE_WAKEUP: Duration = Duration::from_secs(1);

/// How often the server's WAL flush position is read for the lag figure.
pub const LAG_EVERY: Duration = Duration::from_secs(1);

/// How long a stopping relay waits for the server to end the stream (and release the slot).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a starting relay retries a slot that is still held, typically by this shard's
/// previous run whose walsender has not yet exited.
const SLOT_BUSY_RETRY: Duration = Duration::from_secs(5);

/// The outbox's connections' application name (in `pg_stat_activity`), unless the URL sets one.
const APPLICATION: &str = "tenantsync-outbox";

/// What can go wrong with the outbox's database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// Shows no password.
    #[error("the outbox's URL: {0}")]
    Url(#[from] UrlError),
    /// A statement failed; `during` says which step.
    #[error("{during}: {error}")]
    Postgres {
        during: &'static str,
        error: StoreError,
    },
    #[error("the connection to the outbox's database ended")]
    ConnectionEnded,
    /// The slot exists but is not one this source can read.
    #[error("replication slot {slot}: {problem}")]
    Slot { slot: String, problem: String },
    #[error("slot {slot}: {error}")]
    Stream { slot: String, error: StreamError },
    /// The replication stream failed (its messages show no password).
    #[error("the replication stream of slot {slot}: {error}")]
    Replication { slot: String, error: PgWireError },
    /// The URL's parameters cannot be used for the replication connection.
    #[error("the outbox's URL: {problem}")]
    Config { problem: &'static str },
}

impl OutboxError {
    fn postgres(during: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |error| OutboxError::Postgres {
            during,
            error: StoreError::Postgres(error),
        }
    }
}

impl Classify for OutboxError {
    /// Connection loss, a restarting server and a slot another session holds (a previous run
    /// not yet gone, a stalled instance during a takeover) are transient; a PostgreSQL error is
    /// classified as the store classifies it (a missing table or privilege is permanent). A
    /// slot of another kind and an undecodable message are permanent.
    fn class(&self) -> ErrorClass {
        match self {
            OutboxError::Postgres {
                error: StoreError::Postgres(e),
                ..
            } if e.code().is_some_and(|c| c.code() == "55006") => ErrorClass::Transient,
            OutboxError::Postgres { error, .. } => error.class(),
            OutboxError::ConnectionEnded => ErrorClass::Transient,
            OutboxError::Replication { error, .. } => stream::class(error),
            OutboxError::Url(_)
            | OutboxError::Config { .. }
            | OutboxError::Slot { .. }
            | OutboxError::Stream { .. } => ErrorClass::Permanent,
        }
    }
}

impl From<OutboxError> for SourceError {
    fn from(error: OutboxError) -> Self {
        SourceError::database(error.class(), error.to_string())
    }
}

/// `tenantsync_{source}_{shard}`: at most 63 bytes for a name of at most 40.
pub fn slot_name(source: &SourceName, shard: u32) -> String {
    format!("tenantsync_{source}_{shard}")
}

/// `tenantsync_{source}`, shared by the source's shards.
pub fn publication_name(source: &SourceName) -> String {
    format!("tenantsync_{source}")
}

/// `"schema"."table"`, quoted: the names are taken exactly as the definition gives them (they
/// are plain identifiers, checked by the definition).
fn quoted_table(outbox: &Outbox) -> String {
    format!("\"{}\".\"{}\"", outbox.schema, outbox.table)
}

type Connection =
    tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>;

async fn connect(url: &PostgresUrl) -> Result<(Client, Connection), OutboxError> {
    driver_config(url, APPLICATION)?
        .connect(NoTls)
        .await
        .map_err(OutboxError::postgres("connecting"))
}

/// Runs `work` (which uses the connection's client) while driving the connection beside it, so
/// that nothing outlives the caller.
async fn driving<T>(
    connection: Connection,
    work: impl Future<Output = Result<T, OutboxError>>,
) -> Result<T, OutboxError> {
    tokio::select! {
        ended = connection => Err(match ended {
            Ok(()) => OutboxError::ConnectionEnded,
            Err(e) => OutboxError::postgres("the connection")(e),
        }),
        result = work => result,
    }
}

/// Runs one shard until `ctx.stop` is cancelled (then `Ok`) or something fails (then the
/// supervisor runs it again, and it resumes from the slot).
pub async fn run(outbox: &Outbox, ctx: &ShardContext) -> Result<(), SourceError> {
    let shard = Shard {
        source: ctx.source.clone(),
        shard: ctx.shard,
        shards: ctx.shards,
    };
    let result = relay(outbox, &shard, &ctx.figures, &ctx.stop, ctx).await;
    match result {
        Err(_) if ctx.stop.is_cancelled() => Ok(()),
        result => result,
    }
}

/// Which part of a source a relay reads.
#[derive(Debug, Clone)]
pub(crate) struct Shard {
    pub source: SourceName,
    pub shard: u32,
    pub shards: u32,
}

/// Where a relay hands what it read.
pub(crate) trait Handover: Sync {
    /// Returns only once every read is durable in the changes log or recorded as rejected;
    /// an error means none of them may be taken as durable.
    fn hand_over(&self, reads: Vec<Read>) -> impl Future<Output = Result<(), SourceError>> + Send;
}

impl Handover for ShardContext {
    fn hand_over(&self, reads: Vec<Read>) -> impl Future<Output = Result<(), SourceError>> + Send {
        self.submit(reads)
    }
}

/// The relay loop.
pub(crate) async fn relay(
    outbox: &Outbox,
    shard: &Shard,
    figures: &Figures,
    stop: &CancellationToken,
    handover: &impl Handover,
) -> Result<(), SourceError> {
    let (client, connection) = connect(&outbox.url).await?;
    let mut relay = Relay {
        outbox,
        shard,
        slot: slot_name(&shard.source, shard.shard),
        publication: publication_name(&shard.source),
        figures,
        confirmed: Lsn(0),
        server_end: Lsn(0),
        flushed: None,
        delete: None,
        assembler: Assembler::new(&outbox.schema, &outbox.table),
    };
    let work = async {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            started = relay.start(&client) => started?,
        }
        let mut replication = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            opened = stream::open(&outbox.url, &relay.slot, &relay.publication, relay.confirmed) => opened?,
        };
        let result = relay
            .follow(&client, &mut replication, stop, handover)
            .await;
        // Ends the stream so that the server releases the slot before the next run starts; a
        // failure here changes nothing (the server ends the stream with the connection).
        let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, replication.shutdown()).await;
        result
    };
    tokio::select! {
        ended = connection => Err(match ended {
            Ok(()) => OutboxError::ConnectionEnded,
            Err(e) => OutboxError::postgres("the connection")(e),
        }.into()),
        result = work => result,
    }
}

struct Relay<'a> {
    outbox: &'a Outbox,
    shard: &'a Shard,
    slot: String,
    publication: String,
    figures: &'a Figures,
    /// The position this run reported to the server as confirmed (the slot's at the start).
    confirmed: Lsn,
    /// The furthest WAL position the server said it had sent.
    server_end: Lsn,
    /// `pg_current_wal_flush_lsn()` and when it was read, for the lag figure.
    flushed: Option<(Lsn, Instant)>,
    /// `DELETE ... WHERE id = ANY($1)` when `delete_after_relay`.
    delete: Option<String>,
    /// Kept for the life of the stream, with the relations it was told of.
    assembler: Assembler,
}

/// Whole transactions read and not yet handed over, and the position that may be confirmed
/// once they are durable.
#[derive(Default)]
struct Batch {
    transactions: Vec<Transaction>,
    rows: usize,
    /// The end of the last transaction collected, or a keepalive's position received outside
    /// any transaction after it: every commit before it is in this batch or already durable.
    safe: Option<Lsn>,
    /// When the first transaction was collected.
    since: Option<Instant>,
}

impl Relay<'_> {
    /// Makes sure the publication and the slot exist (they normally do, from `prepare`), and
    /// reads where the slot stands.
    async fn start(&mut self, client: &Client) -> Result<(), OutboxError> {
        check::ensure_publication(client, self.outbox, &self.publication).await?;
        check::ensure_slot(client, &self.slot).await?;
        let row = client
            .query_one(
                "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .map_err(OutboxError::postgres("reading the slot"))?;
        let confirmed: Option<PgLsn> = row.get(0);
        self.confirmed = Lsn(confirmed.map_or(0, u64::from));
        if self.outbox.delete_after_relay {
            let id_type: String = client
                .query_one(
                    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
                     WHERE attrelid = to_regclass($1) AND attname = $2 AND NOT attisdropped",
                    &[&quoted_table(self.outbox), &self.outbox.columns.id],
                )
                .await
                .map_err(OutboxError::postgres("reading the id column's type"))?
                .get(0);
            // Compared in the column's own type, so that its index serves the delete.
            self.delete = Some(format!(
                "DELETE FROM {} WHERE \"{}\" = ANY($1::text[]::{id_type}[])",
                quoted_table(self.outbox),
                self.outbox.columns.id
            ));
        }
        info!(source = %self.shard.source, shard = self.shard.shard, slot = %self.slot, position = %self.confirmed, "relaying an outbox");
        self.figures.set_position(self.confirmed.to_string());
        Ok(())
    }

    /// Reads the stream until `stop`: collects whole transactions, hands them over in batches
    /// ([`LINGER`], [`MAX_BATCH_WAIT`], [`MAX_BATCH_ROWS`]), and confirms a position only once
    /// every commit before it is durable.
    async fn follow(
        &mut self,
        client: &Client,
        replication: &mut ReplicationClient,
        stop: &CancellationToken,
        handover: &impl Handover,
    ) -> Result<(), SourceError> {
        let mut batch = Batch::default();
        loop {
            // With nothing collected, wait as long as it takes; otherwise until the batch is due.
            let due = batch.since.map(|since| {
                let quiet = tokio::time::Instant::now() + LINGER;
                quiet.min(tokio::time::Instant::from_std(since + MAX_BATCH_WAIT))
            });
            let event = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = sleep_until(due) => None,
                event = replication.recv() => Some(event),
            };
            let Some(event) = event else {
                self.flush(client, replication, &mut batch, handover)
                    .await?;
                continue;
            };
            let event = event
                .map_err(|error| OutboxError::Replication {
                    slot: self.slot.clone(),
                    error,
                })?
                .ok_or(OutboxError::ConnectionEnded)?;
            self.take(event, &mut batch)?;
            if batch.rows >= MAX_BATCH_ROWS
                || batch
                    .since
                    .is_some_and(|since| since.elapsed() >= MAX_BATCH_WAIT)
            {
                self.flush(client, replication, &mut batch, handover)
                    .await?;
            } else if batch.transactions.is_empty() && batch.safe.is_some() {
                // A keepalive with nothing pending: confirm at once, nothing to hand over.
                self.flush(client, replication, &mut batch, handover)
                    .await?;
            }
        }
    }

    /// Adds one event of the stream to the batch.
    fn take(&mut self, event: ReplicationEvent, batch: &mut Batch) -> Result<(), OutboxError> {
        let stream_error = |error| OutboxError::Stream {
            slot: self.slot.clone(),
            error,
        };
        // The client decodes Begin and Commit itself; the assembler is given them back as
        // messages, so that it checks the order of the whole stream as it did any read.
        let completed = match event {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => self.assembler.push_message(Message::Begin {
                final_lsn: Lsn(final_lsn.0),
                commit_time: commit_time_micros,
                xid,
            }),
            ReplicationEvent::Commit {
                lsn,
                end_lsn,
                commit_time_micros,
            } => self.assembler.push_message(Message::Commit {
                commit_lsn: Lsn(lsn.0),
                end_lsn: Lsn(end_lsn.0),
                commit_time: commit_time_micros,
            }),
            ReplicationEvent::XLogData { data, wal_end, .. } => {
                self.server_end = self.server_end.max(Lsn(wal_end.0));
                self.assembler.push(&data)
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                let wal_end = Lsn(wal_end.0);
                self.server_end = self.server_end.max(wal_end);
                // The server sends a transaction only whole, at its commit, so outside a
                // transaction every commit before its position was sent before it (and is in
                // this batch); inside one, the open transaction may commit before it.
                if !self.assembler.in_transaction() {
                    batch.safe = batch.safe.max(Some(wal_end));
                }
                Ok(None)
            }
            // Logical decoding messages are not outbox rows; the stream never stops by itself
            // (no stop position is set).
            ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => Ok(None),
        }
        .map_err(stream_error)?;
        if let Some(tx) = completed {
            batch.safe = batch.safe.max(Some(tx.end_lsn));
            batch.rows += tx.rows.len();
            batch.since.get_or_insert_with(Instant::now);
            batch.transactions.push(tx);
        }
        Ok(())
    }

    /// Hands the batch's rows of this shard over, deletes them when asked, and only then
    /// confirms the batch's safe position to the server.
    async fn flush(
        &mut self,
        client: &Client,
        replication: &ReplicationClient,
        batch: &mut Batch,
        handover: &impl Handover,
    ) -> Result<(), SourceError> {
        let Batch {
            transactions, safe, ..
        } = std::mem::take(batch);
        let mut mapped = rows::Mapped::default();
        for tx in &transactions {
            rows::map(
                tx,
                &self.outbox.columns,
                self.shard.shard,
                self.shard.shards,
                &mut mapped,
            );
        }
        // The oldest transaction not yet relayed is the first one of the batch.
        let lag_seconds = transactions
            .iter()
            .find(|tx| !tx.rows.is_empty())
            .map_or(0.0, |tx| age(tx.commit_time));
        drop(transactions);
        if !mapped.reads.is_empty() {
            handover.hand_over(mapped.reads).await?;
        }
        if let Some(delete) = &self.delete
            && !mapped.relayed_ids.is_empty()
        {
            // Before the confirmation: a crash between the two re-reads rows already deleted
            // (the WAL still has them), which is harmless; the other order could leave rows
            // behind.
            client
                .execute(delete.as_str(), &[&mapped.relayed_ids])
                .await
                .map_err(OutboxError::postgres("deleting relayed rows"))?;
        }
        if let Some(safe) = safe.filter(|s| *s > self.confirmed) {
            replication.update_applied_lsn(pgwire_replication::Lsn(safe.0));
            self.confirmed = safe;
        }
        self.figures.set_position(self.confirmed.to_string());
        let server = self.server_position(client).await?;
        self.figures.set_lag(
            Some(server.0.saturating_sub(self.confirmed.0)),
            "wal_bytes",
            Some(lag_seconds),
        );
        Ok(())
    }

    /// The server's WAL flush position, read at most every [`LAG_EVERY`] (the stream's own
    /// position lags it under backlog), never behind what the stream showed.
    async fn server_position(&mut self, client: &Client) -> Result<Lsn, OutboxError> {
        let flushed = match self.flushed {
            Some((flushed, at)) if at.elapsed() < LAG_EVERY => flushed,
            _ => {
                let row = client
                    .query_one("SELECT pg_current_wal_flush_lsn()", &[])
                    .await
                    .map_err(OutboxError::postgres("reading the WAL position"))?;
                let flushed = Lsn(u64::from(row.get::<_, PgLsn>(0)));
                self.flushed = Some((flushed, Instant::now()));
                flushed
            }
        };
        Ok(flushed.max(self.server_end))
    }
}

async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Seconds since `commit_time` (microseconds since 2000-01-01 UTC), never negative (the
/// database's clock may be ahead of ours).
fn age(commit_time: i64) -> f64 {
    const POSTGRES_EPOCH_SECS: i64 = 946_684_800;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let committed = POSTGRES_EPOCH_SECS as f64 + commit_time as f64 / 1e6;
    (now.as_secs_f64() - committed).max(0.0)
}
