//! What the document says of the sources, webhooks, sinks and the schema registry: shapes
//! their handlers build by hand or take from other crates. Documentation only, like the rest
//! of [`super`].
#![allow(dead_code)] // the fields are read by the derives only

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{Tenants, slug, slug_list};

// --- Sources -----------------------------------------------------------------------------

/// A source definition: `{"kind": "postgres-outbox", "url", "table", "columns",
/// "delete_after_relay", "shards"}` or `{"kind": "debezium", "kafka", "topics" or
/// "topic_pattern", "kafka_options", "tables"}` (see the README).
#[derive(ToSchema)]
pub struct SourceDefinition {
    #[schema(pattern = "^(postgres-outbox|debezium)$")]
    kind: String,
}

/// A source as defined: its definition without secrets.
#[derive(ToSchema)]
pub struct SourcePutDoc {
    name: String,
    revision: u64,
    definition: Value,
}

#[derive(ToSchema)]
pub struct SourceShard {
    shard: u32,
    /// `unclaimed`, `starting`, `running` or `failing`.
    state: String,
    instance: Option<String>,
    position: Option<String>,
    lag: Option<u64>,
    lag_unit: Option<String>,
    lag_seconds: Option<f64>,
    ingested: u64,
    rejected: u64,
    last_error: Option<String>,
    last_error_at: Option<DateTime<Utc>>,
}

/// A source, its state and figures, per shard and in total.
#[derive(ToSchema)]
pub struct SourceDoc {
    name: String,
    kind: String,
    revision: u64,
    updated_at: DateTime<Utc>,
    definition: Value,
    state: String,
    lag: u64,
    lag_unit: Option<String>,
    lag_seconds: f64,
    ingested: u64,
    rejected: u64,
    last_error: Option<String>,
    shards: Vec<SourceShard>,
}

#[derive(ToSchema)]
pub struct SourceList {
    sources: Vec<SourceDoc>,
}

#[derive(ToSchema)]
pub struct SourceRejectionDoc {
    id: u64,
    position: String,
    reason: String,
    at: DateTime<Utc>,
}

#[derive(ToSchema)]
pub struct SourceRejectedPage {
    entries: Vec<SourceRejectionDoc>,
    next: Option<u64>,
    dropped: u64,
}

// --- Webhooks and sinks ------------------------------------------------------------------

/// `PUT /v1/webhooks/{name}`.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
#[schema(as = WebhookSpec)]
pub struct WebhookSpecDoc {
    /// An absolute http(s) URL without user info, which the SSRF guard must accept.
    url: String,
    #[schema(schema_with = slug_list)]
    datasets: Vec<String>,
    #[schema(value_type = Tenants)]
    tenants: Value,
    /// Sent with every delivery; never shown again.
    headers: Option<BTreeMap<String, String>>,
    /// Messages per second at most.
    #[schema(minimum = 0)]
    max_rate: Option<u32>,
    enabled: Option<bool>,
}

/// `PUT /v1/sinks/{name}`.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
#[schema(as = SinkSpec)]
pub struct SinkSpecDoc {
    #[schema(pattern = "^(postgres|sqlite)$")]
    kind: String,
    /// The sink database's URL, of the `kind`'s scheme.
    url: String,
    #[schema(schema_with = slug)]
    dataset: String,
    #[schema(value_type = Tenants)]
    tenants: Value,
    /// `table` or `schema.table`.
    table: String,
    /// Extra columns by name: a field of `data`, or `{"field", "type"}`.
    columns: Option<BTreeMap<String, Value>>,
    enabled: Option<bool>,
}

#[derive(ToSchema)]
pub struct LagDoc {
    changes: u64,
    seconds: f64,
}

/// A webhook or sink: its definition as shown (no secrets), with its name, times and status.
#[derive(ToSchema)]
pub struct TargetDoc {
    name: String,
    revision: u64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// `disabled`, `pending`, `starting`, `running`, `retrying` or `failing`.
    state: String,
    instance: Option<String>,
    lag: LagDoc,
    last_attempt: Option<Value>,
    last_success_at: Option<DateTime<Utc>>,
    failure_streak: u64,
    failing_since: Option<DateTime<Utc>>,
    delivered: u64,
    failed: u64,
    retried: u64,
    last_error: Option<String>,
    last_error_at: Option<DateTime<Utc>>,
}

/// A webhook or sink as a `PUT` stored it; a new webhook's answer also has its `secret`.
#[derive(ToSchema)]
pub struct TargetPutDoc {
    name: String,
    revision: u64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// The signing secret of a new webhook, shown this once.
    secret: Option<String>,
}

#[derive(ToSchema)]
pub struct WebhookList {
    webhooks: Vec<TargetDoc>,
}

#[derive(ToSchema)]
pub struct SinkList {
    sinks: Vec<TargetDoc>,
}

#[derive(ToSchema)]
pub struct RotatedSecret {
    secret: String,
    previous_secrets_expire_at: Option<DateTime<Utc>>,
}

#[derive(ToSchema)]
pub struct AttemptDoc {
    at: DateTime<Utc>,
    message_id: String,
    dataset: String,
    tenant: String,
    records: u32,
    status: Option<u16>,
    latency_ms: u32,
    error: Option<String>,
}

#[derive(ToSchema)]
pub struct AttemptList {
    attempts: Vec<AttemptDoc>,
}

#[derive(ToSchema)]
pub struct ReplayedDoc {
    /// Tenants moved back.
    tenants: u64,
}

// --- Schema registry ---------------------------------------------------------------------

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SubjectPath {
    /// `{topic}-value`, the topic a dataset's Avro state topic.
    #[param(min_length = 1, example = "tenantsync.inventory.state.avro-value")]
    subject: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SubjectVersionPath {
    #[param(min_length = 1, example = "tenantsync.inventory.state.avro-value")]
    subject: String,
    /// A version number, or `latest`.
    #[param(pattern = "^([0-9]+|latest|-1)$")]
    version: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SchemaIdPath {
    /// The schema's id, as the wire format carries it.
    #[param(pattern = "^[0-9]+$", example = "1")]
    id: String,
}

/// A version of a subject.
#[derive(ToSchema)]
pub struct RegistrySchema {
    subject: String,
    version: u32,
    id: u32,
    /// The Avro schema, as text.
    schema: String,
}

#[derive(ToSchema)]
pub struct RegistryRegistered {
    id: u32,
    version: u32,
    subject: String,
}

#[derive(ToSchema)]
pub struct RegistrySchemaText {
    schema: String,
}

#[derive(ToSchema)]
pub struct RegistrySubjectVersion {
    subject: String,
    version: u32,
}

#[derive(ToSchema)]
pub struct RegistryVerdict {
    is_compatible: bool,
    /// What breaks, when it is not.
    messages: Vec<String>,
}

#[derive(ToSchema)]
#[allow(non_snake_case)] // Confluent's spelling
pub struct RegistryLevel {
    compatibilityLevel: String,
}

#[derive(ToSchema)]
pub struct RegistryMode {
    compatibility: String,
}

/// `{"compatibility": "BACKWARD"}` (or `compatibilityLevel`).
#[derive(ToSchema)]
#[allow(non_snake_case)] // Confluent's spelling
pub struct RegistryConfigBody {
    compatibility: Option<String>,
    compatibilityLevel: Option<String>,
}
