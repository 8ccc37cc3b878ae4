//! What the document says of the shapes that handlers build by hand (`json!`) or take from other
//! crates: path parameters, request bodies and response bodies. Documentation only: no handler
//! reads or writes these types, and schemathesis checks the running server against them.
#![allow(dead_code)] // the fields are read by the derives only

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use utoipa::openapi::schema::{Array, ArrayBuilder, OneOfBuilder, Schema};
use utoipa::openapi::{Object, ObjectBuilder, RefOr, Type};
use utoipa::{IntoParams, PartialSchema, ToSchema};

mod integrations;
pub use integrations::*;

/// `[a-z0-9][a-z0-9_-]{0,62}`: tenant ids, dataset, subscription and token names.
pub fn slug() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[a-z0-9][a-z0-9_-]{0,62}$"))
        .build()
}

/// A token's scopes, at least one: `admin`, or `{read|write}:{dataset|*}:{tenant|*}`.
pub fn scopes() -> Array {
    let slug = "[a-z0-9][a-z0-9_-]{0,62}";
    let scope = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(format!(
            "^(admin|(read|write):(\\*|{slug}):(\\*|{slug}))$"
        )));
    ArrayBuilder::new().items(scope).min_items(Some(1)).build()
}

/// A record's id: 1 to 512 bytes of UTF-8 without control characters.
fn entity_id() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(512))
        .description(Some("1 to 512 bytes of UTF-8 without control characters"))
        .build()
}

/// A source's name: 1 to 40 of `a-z`, `0-9` and `_`, starting with a letter.
fn source_name() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[a-z][a-z0-9_]{0,39}$"))
        .build()
}

/// A webhook's or sink's name: 1 to 64 of `a-z`, `0-9`, `_` and `-`, starting with a letter or
/// digit.
fn target_name() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[a-z0-9][a-z0-9_-]{0,63}$"))
        .build()
}

// --- Path parameters ---------------------------------------------------------------------

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DatasetPath {
    /// The dataset's name.
    #[param(schema_with = slug, example = "inventory")]
    dataset: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SchemaVersionPath {
    #[param(schema_with = slug, example = "inventory")]
    dataset: String,
    /// The version's number, from 1.
    #[param(pattern = "^[1-9][0-9]*$")]
    version: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TenantFeedPath {
    #[param(schema_with = slug, example = "inventory")]
    dataset: String,
    /// The tenant's id.
    #[param(schema_with = slug, example = "acme")]
    tenant: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RecordPath {
    #[param(schema_with = slug, example = "inventory")]
    dataset: String,
    #[param(schema_with = slug, example = "acme")]
    tenant: String,
    /// The record's id within the tenant.
    #[param(schema_with = entity_id, example = "sku-1")]
    id: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ChangePath {
    #[param(schema_with = slug, example = "inventory")]
    dataset: String,
    #[param(schema_with = slug, example = "acme")]
    tenant: String,
    /// The change's id: its `Idempotency-Key`, or the `change_id` a write answered.
    #[param(min_length = 1, max_length = 255)]
    change_id: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct BatchPath {
    #[param(schema_with = slug, example = "inventory")]
    dataset: String,
    /// The batch's id, `{partition}-{first_offset}-{last_offset}`.
    #[param(pattern = "^[0-9]+-[0-9]+-[0-9]+$")]
    id: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct NamePath {
    /// The subscription's or token's name.
    #[param(schema_with = slug, example = "everything")]
    name: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SourcePath {
    /// The source's name.
    #[param(schema_with = source_name)]
    name: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TargetPath {
    /// The webhook's or sink's name.
    #[param(schema_with = target_name)]
    name: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TenantPath {
    /// The tenant's id.
    #[param(schema_with = slug, example = "acme")]
    tenant: String,
}

/// `Idempotency-Key`, `If-Match` and `If-None-Match` of a single-record write.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct WriteHeaders {
    /// The change's id: a retry with the same key is applied once. 1 to 255 bytes, not
    /// starting with `tenantsync:`.
    #[param(
        rename = "Idempotency-Key",
        min_length = 1,
        max_length = 255,
        nullable = false
    )]
    idempotency_key: Option<String>,
    /// Apply only if the record is at this version: the `ETag` of a GET, like `"3"`.
    #[param(rename = "If-Match", nullable = false)]
    if_match: Option<String>,
    /// `*`: apply only if the record does not exist.
    #[param(rename = "If-None-Match", nullable = false)]
    if_none_match: Option<String>,
}

/// `Last-Event-ID` of an SSE client resuming its stream.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct FeedHeaders {
    /// With `Accept: text/event-stream`: the id of the last event received, a cursor.
    #[param(rename = "Last-Event-ID", nullable = false)]
    last_event_id: Option<String>,
}

// --- Records and changes -----------------------------------------------------------------

/// A record's data: any JSON object.
#[derive(ToSchema)]
pub struct Data(BTreeMap<String, Value>);

/// A record as stored.
#[derive(ToSchema)]
pub struct RecordDoc {
    tenant: String,
    id: String,
    #[schema(minimum = 1)]
    version: u64,
    data: Data,
    updated_at: DateTime<Utc>,
}

/// A record as a write with `?wait=applied` left it: `data` is null for a delete, and absent
/// when the caller may write but not read the tenant.
#[derive(ToSchema)]
pub struct WrittenRecord {
    tenant: String,
    id: String,
    version: u64,
    data: Option<Data>,
    updated_at: DateTime<Utc>,
}

/// A change durably accepted; its outcome is at the `Location`.
#[derive(ToSchema)]
pub struct Accepted {
    change_id: String,
}

/// What became of a change.
#[derive(ToSchema)]
pub struct ChangeStatus {
    change_id: String,
    /// `pending`: no outcome yet (or the change is unknown).
    #[schema(pattern = "^(pending|applied|unchanged|rejected)$")]
    status: String,
    /// The record the change id belongs to (not when pending).
    id: Option<String>,
    /// The record's version after the change (`applied`, `unchanged`).
    version: Option<u64>,
    /// Why it was rejected (`version_conflict`, `not_found`, `tenant_erasing`, ...).
    reason: Option<String>,
    /// The record's version when the change was rejected.
    current_version: Option<u64>,
}

/// The result of one line of a bulk write: `status` 202 (accepted), 200 (applied, with
/// `?wait=applied`), or the status of its problem, whose members it then carries.
#[derive(ToSchema)]
pub struct BulkLineResult {
    /// The line's number in the body, from 1.
    #[schema(minimum = 1)]
    line: u64,
    status: u16,
    change_id: Option<String>,
    record: Option<WrittenRecord>,
    r#type: Option<String>,
    title: Option<String>,
    detail: Option<String>,
    field: Option<String>,
    current_version: Option<u64>,
    status_url: Option<String>,
    retry_after_secs: Option<u64>,
}

/// The results of a bulk write, one per non-blank line, in order.
#[derive(ToSchema)]
pub struct BulkResults {
    results: Vec<BulkLineResult>,
}

/// A record's state as a feed or a batch carries it.
#[derive(ToSchema)]
pub struct FeedChange {
    #[schema(pattern = "^(upsert|delete)$")]
    op: String,
    id: String,
    version: u64,
    /// Null for a delete.
    data: Option<Data>,
    updated_at: DateTime<Utc>,
}

/// A page of a tenant's change feed.
#[derive(ToSchema)]
pub struct FeedPage {
    changes: Vec<FeedChange>,
    /// Where the next page starts.
    cursor: String,
    /// The page reached the tenant's latest change.
    up_to_date: bool,
}

// --- Datasets ----------------------------------------------------------------------------

#[derive(ToSchema)]
pub struct DatasetDoc {
    name: String,
    partitions: u32,
    /// `["json"]`, or `["json", "avro"]` when states are also published as Avro.
    formats: Vec<String>,
}

#[derive(ToSchema)]
pub struct DatasetList {
    datasets: Vec<DatasetDoc>,
}

/// How far the processor got in one partition.
#[derive(ToSchema)]
pub struct PartitionProgress {
    partition: u32,
    end_offset: u64,
    applied: u64,
    committed: u64,
}

#[derive(ToSchema)]
pub struct DatasetProgress {
    name: String,
    partitions: u32,
    formats: Vec<String>,
    progress: Vec<PartitionProgress>,
}

#[derive(ToSchema)]
pub struct RejectedEntryDoc {
    id: u64,
    partition: u32,
    offset: u64,
    reason: String,
    at: DateTime<Utc>,
}

/// A page of the changes-log entries the processor skipped.
#[derive(ToSchema)]
pub struct RejectedPageDoc {
    entries: Vec<RejectedEntryDoc>,
    /// The `after` of the next page.
    next: Option<u64>,
    /// Entries no longer kept.
    dropped: u64,
}

// --- Dataset schemas ---------------------------------------------------------------------

/// A version of a dataset's schema.
#[derive(ToSchema)]
pub struct SchemaVersion {
    dataset: String,
    version: u32,
    /// Its id, shared with the schema registry.
    id: u32,
    /// The JSON Schema.
    schema: Value,
    /// The dataset's compatibility mode.
    compatibility: String,
    created_at: DateTime<Utc>,
    /// The Avro schema derived from it (datasets published as Avro): `{"version", "id"}`.
    avro: Option<Value>,
    /// Records already stored that violate it: `{"count", "examples"}`.
    violations: Option<Value>,
}

#[derive(ToSchema)]
pub struct SchemaVersionSummary {
    version: u32,
    id: u32,
    created_at: DateTime<Utc>,
}

#[derive(ToSchema)]
pub struct SchemaVersionList {
    dataset: String,
    versions: Vec<SchemaVersionSummary>,
}

// --- Batches -----------------------------------------------------------------------------

#[derive(ToSchema)]
pub struct SourceRangeDoc {
    partition: u32,
    first_offset: u64,
    last_offset: u64,
}

/// A leased batch: one tenant's records.
#[derive(ToSchema)]
pub struct LeasedBatch {
    id: String,
    dataset: String,
    tenant: String,
    count: u64,
    source: SourceRangeDoc,
    records: Vec<FeedChange>,
    lease_expires_at: DateTime<Utc>,
}

// --- Subscriptions -----------------------------------------------------------------------

/// Tenants: a list of tenant ids (at least one), or `"*"` for every tenant, present and future.
pub struct Tenants;

impl PartialSchema for Tenants {
    fn schema() -> RefOr<Schema> {
        let list = ArrayBuilder::new().items(slug()).min_items(Some(1));
        let all = ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["*"]));
        OneOfBuilder::new()
            .item(list)
            .item(all)
            .description(Some(
                "A list of tenant ids (at least one), or \"*\" for every tenant",
            ))
            .into()
    }
}

impl ToSchema for Tenants {}

pub fn slug_list() -> Array {
    ArrayBuilder::new().items(slug()).build()
}

#[derive(ToSchema)]
pub struct SubscriptionDoc {
    name: String,
    datasets: Vec<String>,
    tenants: Tenants,
    created_at: DateTime<Utc>,
}

#[derive(ToSchema)]
pub struct SubscriptionList {
    subscriptions: Vec<SubscriptionDoc>,
}

#[derive(ToSchema)]
pub struct TenantLagDoc {
    dataset: String,
    tenant: String,
    changes: u64,
    seconds: f64,
    reset_pending: bool,
}

#[derive(ToSchema)]
pub struct SubscriptionDetail {
    name: String,
    datasets: Vec<String>,
    tenants: Tenants,
    created_at: DateTime<Utc>,
    /// The covered tenants with something to deliver.
    lag: Vec<TenantLagDoc>,
}

/// A subscription's next batch: one tenant's changes.
#[derive(ToSchema)]
pub struct SubscriptionBatch {
    dataset: String,
    tenant: String,
    /// Replace your copy of the tenant with this batch and those that follow.
    reset: bool,
    changes: Vec<FeedChange>,
    /// Acknowledges this batch.
    cursor: String,
    up_to_date: bool,
}

// --- Tokens and audit --------------------------------------------------------------------

#[derive(ToSchema)]
pub struct TokenDoc {
    name: String,
    scopes: Vec<String>,
    created_at: DateTime<Utc>,
}

/// A new token, shown this once.
#[derive(ToSchema)]
pub struct CreatedToken {
    name: String,
    scopes: Vec<String>,
    created_at: DateTime<Utc>,
    token: String,
}

#[derive(ToSchema)]
pub struct TokenList {
    tokens: Vec<TokenDoc>,
}

#[derive(ToSchema)]
pub struct AuditEntryDoc {
    seq: u64,
    at: DateTime<Utc>,
    actor: String,
    action: String,
    target: String,
    detail: Value,
}

#[derive(ToSchema)]
pub struct AuditPage {
    entries: Vec<AuditEntryDoc>,
    /// The `after` of the next page.
    next: u64,
}

// --- Tenant erasure ----------------------------------------------------------------------

#[derive(ToSchema)]
pub struct ErasureDoc {
    tenant: String,
    #[schema(pattern = "^(running|finished)$")]
    state: String,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    /// Records erased so far.
    erased: u64,
}

// --- Health ------------------------------------------------------------------------------

#[derive(ToSchema)]
pub struct Healthz {
    #[schema(pattern = "^ok$")]
    status: String,
}

#[derive(ToSchema)]
pub struct FailingService {
    error: String,
    permanent: bool,
    failures: u64,
    restarts: u64,
}

#[derive(ToSchema)]
pub struct Readyz {
    #[schema(pattern = "^(ready|unavailable)$")]
    status: String,
    /// `ok`, or why the log does not answer.
    log: String,
    /// `ok`, or why the master store does not answer.
    store: String,
    failing_services: BTreeMap<String, FailingService>,
}
