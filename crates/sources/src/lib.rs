//! Sources: changes taken straight from where they are committed, instead of through the HTTP
//! API. Two kinds:
//!
//! - `postgres-outbox` (`outbox/`): a service writes an outbox row in the same transaction as its
//!   business data; tenantsync relays committed rows in commit order through PostgreSQL's
//!   logical decoding. One outbox can be split by tenant hash into shards relayed by several
//!   instances.
//! - `debezium` (`debezium/`): Debezium change events read from Kafka topics, mapped by table to
//!   datasets, with the tenant from a column or from the source database.
//!
//! Definitions live in the master store (`SourceStore`), put there by the API or the config
//! file (`definition.rs` parses and checks them without I/O; `check` connects). Every instance
//! runs its share of the shards, each under a claim in the store (`runner.rs`). Whatever a source
//! reads enters through `ingest.rs`, the same checks, quotas and changes log as an API write,
//! with a change id derived from the source position, so reading again never applies twice.
//!
//! A source never applies a change itself, and never moves its position in the source (slot,
//! consumer offsets) past what the changes log does not yet hold durably.

mod debezium;
mod definition;
mod error;
mod figures;
mod ingest;
mod metrics;
mod outbox;
mod runner;

pub use definition::{
    Debezium, Definition, DefinitionError, MAX_SHARDS, OnTruncate, Outbox, OutboxColumns,
    SourceName, TableMapping, TenantFrom, Topics,
};
pub use error::{CheckError, SourceError};
pub use figures::{Figures, ShardStatus};
pub use ingest::{Candidate, Ingest, KEEP_REJECTED, Read};
pub use runner::{LEASE, ShardContext, Sources};

use tenantsync_dataset::Datasets;
use tenantsync_store::{SourcePut, SourceStore, StoredSource};

/// Checks by connecting that a definition can run, and creates what it needs there (an
/// outbox's publication and replication slots, from which on its rows are kept for the relay).
/// The API answers 422 with the reason when it fails. Idempotent.
pub async fn prepare(source: &SourceName, definition: &Definition) -> Result<(), CheckError> {
    match definition {
        Definition::PostgresOutbox(o) => outbox::prepare(o, source).await,
        Definition::Debezium(d) => debezium::check(d).await,
    }
}

/// Why a definition was not stored.
#[derive(Debug, thiserror::Error)]
pub enum DefineError {
    /// The source exists with another kind or shard count, which cannot change in place.
    #[error(
        "source {name} exists as a {kind} source of {shards} shard(s); its kind and shards \
         cannot change (each shard has its own position): delete it and create it again"
    )]
    Conflict {
        name: SourceName,
        kind: &'static str,
        shards: u32,
    },
    #[error("dataset {0} is not declared; declare it first with PUT /v1/datasets/{0}")]
    UnknownDataset(tenantsync_core::DatasetName),
    #[error(transparent)]
    Check(#[from] CheckError),
    #[error(transparent)]
    Store(#[from] tenantsync_store::StoreError),
    #[error(transparent)]
    Dataset(#[from] tenantsync_dataset::DatasetError),
}

/// Stores a source's definition (`json`, the text that parsed into `definition`), after checking
/// that it may replace the stored one, that the datasets it names exist, and, when `connect`,
/// [`prepare`]-ing it. The instances start running it within a second.
pub async fn define(
    store: &dyn SourceStore,
    datasets: &Datasets,
    name: &SourceName,
    definition: &Definition,
    json: &serde_json::Value,
    connect: bool,
) -> Result<(SourcePut, u64), DefineError> {
    if let Some(existing) = store.source(name.as_str()).await? {
        let same_shape = parse_stored(&existing).ok().map(|e| (e.kind(), e.shards()));
        if let Some((kind, shards)) = same_shape
            && (kind, shards) != (definition.kind(), definition.shards())
        {
            return Err(DefineError::Conflict {
                name: name.clone(),
                kind,
                shards,
            });
        }
    }
    for dataset in definition.datasets() {
        if datasets.get(dataset).await?.is_none() {
            return Err(DefineError::UnknownDataset(dataset.clone()));
        }
    }
    if connect {
        prepare(name, definition).await?;
    }
    Ok(store
        .put_source(name.as_str(), &json.to_string(), chrono::Utc::now())
        .await?)
}

/// Parses a stored definition.
pub fn parse_stored(stored: &StoredSource) -> Result<Definition, DefinitionError> {
    let json: serde_json::Value = serde_json::from_str(&stored.definition)
        .map_err(|e| DefinitionError::new("definition", e.to_string()))?;
    Definition::parse(&json)
}

/// Releases what a deleted source held in the systems it read (an outbox's replication slots,
/// which would otherwise keep the database's WAL forever). Best effort: failures are logged.
pub async fn release(source: &SourceName, definition: &Definition) {
    if let Definition::PostgresOutbox(o) = definition
        && let Err(error) = outbox::drop_replication(o, source).await
    {
        tracing::error!(%source, %error, "could not drop the replication slots of a deleted source; drop them by hand, or the database keeps its WAL for them");
    }
}
