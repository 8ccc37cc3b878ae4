//! The `postgres-outbox` kind: relays the rows a service inserts into its outbox table, read
//! through PostgreSQL's logical decoding with the built-in `pgoutput` plugin, over an ordinary
//! connection with the SQL functions (`pg_logical_slot_peek_binary_changes`,
//! `pg_replication_slot_advance`). ARCHITECTURE.md ("Sources: the outbox relay") argues why it
//! neither skips nor doubles.
//!
//! Each shard has its own logical replication slot, `tenantsync_{source}_{shard}`, on one
//! publication of the table (inserts only), `tenantsync_{source}`. A round peeks whole committed
//! transactions in commit order, hands this shard's rows to the ingest, and only once they are
//! durable in the changes log advances the slot past them. It must never advance the slot past a
//! transaction it did not hand over, and never past a WAL position whose commits it may not
//! have seen whole (see [`Relay::boundary`]).

mod check;
pub mod pgoutput;
pub mod rows;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tenantsync_core::url::{PostgresUrl, UrlError};
use tenantsync_core::{Classify, ErrorClass};
use tenantsync_store::StoreError;
use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use check::{drop_replication, prepare};
use pgoutput::{Assembler, Lsn, StreamError};

use crate::figures::Figures;
use crate::ingest::Read;
use crate::runner::ShardContext;
use crate::{Outbox, SourceError, SourceName};

/// The most pgoutput messages one peek asks for (a row is one message, a transaction adds two).
/// PostgreSQL checks the limit only after a whole transaction, so a larger one still comes
/// whole. Large, because each peek decodes the WAL from the slot's restart point again: fewer
/// peeks under backlog cost less.
pub const MAX_MESSAGES: i32 = 20_000;

/// How long a caught-up shard waits before peeking again. Every committed row waits up to this
/// long before it is read, so it bounds the relay's share of commit -> applied latency (half of
/// it on average); 10 ms keeps that share a tenth of the 100 ms p99 target, for about 100
/// cheap queries a second per idle shard.
pub const POLL: Duration = Duration::from_millis(10);

/// While no row of this shard arrives, the slot is still advanced past WAL written by other
/// tables, at most this often (or at once when this much WAL piled up), so that an idle outbox
/// in a busy database does not make the server keep WAL.
pub const IDLE_ADVANCE_EVERY: Duration = Duration::from_secs(1);
pub const IDLE_ADVANCE_BYTES: u64 = 1 << 20;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
            OutboxError::Url(_) | OutboxError::Slot { .. } | OutboxError::Stream { .. } => {
                ErrorClass::Permanent
            }
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
    // The driver's configuration errors name the option, never its value.
    let mut config: tokio_postgres::Config = url
        .connection_string()
        .parse()
        .map_err(|e: tokio_postgres::Error| UrlError::refused_by_driver(&e))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("tenantsync-outbox");
    }
    config
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
        previous_insert: None,
        last_advance: Instant::now(),
        delete: None,
        assembler: Assembler::new(&outbox.schema, &outbox.table),
    };
    let work = async {
        relay.start(&client).await?;
        loop {
            let full = relay.round(&client, handover).await?;
            if !full {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        }
    };
    tokio::select! {
        _ = stop.cancelled() => Ok(()),
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
    /// The slot's confirmed position as this run left it.
    confirmed: Lsn,
    /// `pg_current_wal_insert_lsn()` as the previous round saw it.
    previous_insert: Option<Lsn>,
    last_advance: Instant,
    /// `DELETE ... WHERE id = ANY($1)` when `delete_after_relay`.
    delete: Option<String>,
    /// Kept across reads, with the relations it was told of: PostgreSQL 15 describes them
    /// again in every read, but nothing is lost by remembering.
    assembler: Assembler,
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

    /// One peek, hand-over, delete and advance; returns whether the peek was full (more may
    /// be waiting).
    async fn round(
        &mut self,
        client: &Client,
        handover: &impl Handover,
    ) -> Result<bool, SourceError> {
        let (insert, flush) = {
            let row = client
                .query_one(
                    "SELECT pg_current_wal_insert_lsn(), pg_current_wal_flush_lsn()",
                    &[],
                )
                .await
                .map_err(OutboxError::postgres("reading the WAL position"))?;
            (
                Lsn(u64::from(row.get::<_, PgLsn>(0))),
                Lsn(u64::from(row.get::<_, PgLsn>(1))),
            )
        };
        let boundary = self.boundary(insert, flush);

        let messages = client
            .query(
                "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, $2, \
                 'proto_version', '1', 'publication_names', $3)",
                &[&self.slot, &MAX_MESSAGES, &self.publication],
            )
            .await
            .map_err(OutboxError::postgres("reading the slot"))?;
        let full = messages.len() >= MAX_MESSAGES as usize;
        let stream = |error| OutboxError::Stream {
            slot: self.slot.clone(),
            error,
        };
        let mut transactions = Vec::new();
        for message in &messages {
            if let Some(tx) = self.assembler.push(message.get(0)).map_err(stream)? {
                transactions.push(tx);
            }
        }
        drop(messages);
        if self.assembler.in_transaction() {
            return Err(stream(StreamError::Unfinished).into());
        }

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
        // The oldest transaction not yet relayed is the first one read, as of this read.
        let lag_seconds = transactions
            .iter()
            .find(|tx| !tx.rows.is_empty())
            .map_or(0.0, |tx| age(tx.commit_time));
        let relayed = !mapped.reads.is_empty();
        if relayed {
            handover.hand_over(mapped.reads).await?;
        }
        if let Some(delete) = &self.delete
            && !mapped.relayed_ids.is_empty()
        {
            // Before the advance: a crash between the two re-reads rows already deleted (the
            // WAL still has them), which is harmless; the other order could leave rows behind.
            client
                .execute(delete.as_str(), &[&mapped.relayed_ids])
                .await
                .map_err(OutboxError::postgres("deleting relayed rows"))?;
        }

        let mut target = transactions.last().map(|tx| tx.end_lsn);
        if !full && let Some(boundary) = boundary {
            let due = relayed
                || self.last_advance.elapsed() >= IDLE_ADVANCE_EVERY
                || boundary.0.saturating_sub(self.confirmed.0) >= IDLE_ADVANCE_BYTES;
            if due && target.is_none_or(|t| boundary > t) {
                target = Some(boundary);
            }
        }
        if let Some(target) = target.filter(|t| *t > self.confirmed) {
            self.advance(client, target).await?;
        }
        self.figures.set_position(self.confirmed.to_string());
        self.figures.set_lag(
            Some(flush.0.saturating_sub(self.confirmed.0)),
            "wal_bytes",
            Some(lag_seconds),
        );
        Ok(full)
    }

    /// A WAL position that no record straddles and that the coming peek decodes up to, so that
    /// every commit before it is in the peek's result: the slot may then be advanced to it even
    /// when the peek found nothing for this shard.
    ///
    /// `pg_current_wal_insert_lsn()` is where the next record will start, so no record
    /// straddles it; once `pg_current_wal_flush_lsn()` has passed it, the peek (which decodes
    /// up to the flushed end of WAL as it starts) reads every record before it. The flush
    /// position itself may fall inside a record (the WAL writer flushes whole pages), and
    /// advancing there would skip a commit record that starts before it and was not decoded.
    fn boundary(&mut self, insert: Lsn, flush: Lsn) -> Option<Lsn> {
        let candidates = [Some(insert), self.previous_insert];
        self.previous_insert = Some(insert);
        candidates
            .into_iter()
            .flatten()
            .filter(|b| *b <= flush)
            .max()
    }

    async fn advance(&mut self, client: &Client, target: Lsn) -> Result<(), OutboxError> {
        // GREATEST: a stalled holder of this shard may have advanced the slot further while
        // this one read; moving back is refused by PostgreSQL, and not needed.
        let row = client
            .query_one(
                "SELECT a.end_lsn FROM pg_replication_slots s, \
                 pg_replication_slot_advance($1, GREATEST($2, s.confirmed_flush_lsn)) a \
                 WHERE s.slot_name = $1",
                &[&self.slot, &PgLsn::from(target.0)],
            )
            .await
            .map_err(OutboxError::postgres("advancing the slot"))?;
        let end: Option<PgLsn> = row.get(0);
        self.confirmed = Lsn(end.map_or(target.0, u64::from)).max(self.confirmed);
        self.last_advance = Instant::now();
        Ok(())
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
