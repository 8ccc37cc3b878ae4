//! The HTTP API. One module per resource; every error is an [`ApiError`] rendered as RFC 9457
//! `application/problem+json`. Handlers validate at the edge (into `tenantsync-core` types) and
//! never hold business rules: the rules of applying a change live in the master store.

pub mod admin;
pub mod auth;
mod batches;
mod datasets;
mod erasure;
mod error;
mod extract;
mod feed;
mod health;
pub mod instances;
mod metrics;
mod push;
mod records;
mod rejected;
pub mod revocation;
mod schema_registry;
mod schemas;
mod sinks;
mod sources;
mod subscriptions;
mod webhooks;
mod write;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use tenantsync_batcher::BatchQueue;
use tenantsync_dataset::{AppliedHub, Datasets};
use tenantsync_feed::{CursorKey, Hub};
use tenantsync_log::Log;
use tenantsync_push::webhooks::ssrf::Guard;
use tenantsync_retention::Erasures;
use tenantsync_schema::Schemas;
use tenantsync_store::MasterStore;
use tenantsync_supervisor::{MetricsSource, Supervisor};

pub use auth::Auth;
pub use error::ApiError;
pub use instances::Instances;
pub use metrics::ApiMetrics;
pub use tenantsync_dataset::{WriteQuota, WriteQuotas};

/// Settings of the API, validated by the binary.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest request body accepted; larger bodies get 413.
    pub max_body_bytes: usize,
    /// How long `?wait=applied` waits for the processor before answering 504.
    pub apply_timeout: Duration,
    pub feed: FeedConfig,
}

/// Settings of the change feeds and subscriptions.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// Changes per page (or batch) when the request names no `limit`.
    pub default_limit: usize,
    /// The largest `limit` accepted.
    pub max_limit: usize,
    /// The longest long-poll `wait`; longer requests are capped to it.
    pub max_wait: Duration,
    /// Interval of SSE heartbeat comments.
    pub sse_heartbeat: Duration,
    /// SSE events buffered per stream ahead of the client.
    pub sse_buffer: usize,
    /// How long an SSE stream may sit with a full buffer (its client not reading) before it is
    /// ended; the client resumes from its last event id.
    pub sse_stall_timeout: Duration,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            default_limit: 100,
            max_limit: 1_000,
            max_wait: Duration::from_secs(30),
            sse_heartbeat: Duration::from_secs(15),
            sse_buffer: 64,
            sse_stall_timeout: Duration::from_secs(30),
        }
    }
}

impl ApiConfig {
    pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
    pub const DEFAULT_APPLY_TIMEOUT: Duration = Duration::from_secs(10);
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: Self::DEFAULT_MAX_BODY_BYTES,
            apply_timeout: Self::DEFAULT_APPLY_TIMEOUT,
            feed: FeedConfig::default(),
        }
    }
}

/// What every handler shares.
pub struct AppState {
    pub log: Arc<dyn Log>,
    pub store: Arc<dyn MasterStore>,
    pub datasets: Arc<Datasets>,
    /// Data contracts: schemas, their registration and the cache writes are checked against.
    pub schemas: Arc<Schemas>,
    /// Where `?wait=applied` writers wait for this instance's processor.
    pub applied: Arc<AppliedHub>,
    /// Live wake-ups for feed readers.
    pub hub: Arc<Hub>,
    pub metrics: ApiMetrics,
    pub config: ApiConfig,
    /// How callers are authenticated.
    pub auth: Auth,
    /// Signs and checks feed and subscription cursors.
    pub cursor_key: CursorKey,
    /// Per-tenant write quotas.
    pub quotas: Arc<WriteQuotas>,
    /// Tenant erasures: which tenants' writes are refused, and how to start one.
    pub erasures: Arc<Erasures>,
    /// The HTTP workers' batch queue.
    pub batches: BatchQueue,
    /// Which webhook URLs may be reached: checked when an endpoint is defined.
    pub webhook_guard: Guard,
    /// The components whose figures `/metrics` shows.
    pub metrics_sources: Vec<Arc<dyn MetricsSource>>,
    /// Runs the background services; `/readyz` reports the failing ones.
    pub supervisor: Supervisor,
}

/// The whole API: the health checks open to all, every other route behind
/// [`auth::authenticate`] (and each handler checks the scope its request needs).
pub fn router(state: Arc<AppState>) -> Router {
    let record = "/v1/datasets/{dataset}/tenants/{tenant}/records/{id}";
    let open = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .method_not_allowed_fallback(error::method_not_allowed);
    let authenticated = Router::new()
        .route("/v1/datasets", get(datasets::list))
        .route(
            "/v1/datasets/{dataset}",
            put(datasets::declare).get(datasets::show),
        )
        .route("/v1/datasets/{dataset}/rejected", get(rejected::list))
        .route(
            "/v1/datasets/{dataset}/schema",
            put(schemas::put).get(schemas::latest),
        )
        .route(
            "/v1/datasets/{dataset}/schema/versions",
            get(schemas::versions),
        )
        .route(
            "/v1/datasets/{dataset}/schema/versions/{version}",
            get(schemas::version),
        )
        .route(
            record,
            put(records::put)
                .patch(records::patch)
                .delete(records::delete)
                .get(records::get),
        )
        .route(
            "/v1/datasets/{dataset}/tenants/{tenant}/changes/{change_id}",
            get(records::change_status),
        )
        .route("/v1/datasets/{dataset}/changes", post(write::bulk))
        .route(
            "/v1/datasets/{dataset}/tenants/{tenant}/changes",
            get(feed::changes),
        )
        .route("/v1/datasets/{dataset}/batches/lease", post(batches::lease))
        .route(
            "/v1/datasets/{dataset}/batches/{id}/ack",
            post(batches::ack),
        )
        .route("/v1/subscriptions", get(subscriptions::list))
        .route(
            "/v1/subscriptions/{name}",
            put(subscriptions::put)
                .get(subscriptions::show)
                .delete(subscriptions::delete),
        )
        .route(
            "/v1/subscriptions/{name}/changes",
            get(subscriptions::changes),
        )
        .route("/v1/subscriptions/{name}/ack", post(subscriptions::ack))
        .route("/v1/sources", get(sources::list))
        .route(
            "/v1/sources/{name}",
            put(sources::put).get(sources::show).delete(sources::delete),
        )
        .route("/v1/sources/{name}/rejected", get(sources::rejected))
        .route("/v1/webhooks", get(webhooks::list))
        .route(
            "/v1/webhooks/{name}",
            put(webhooks::put)
                .get(webhooks::show)
                .delete(webhooks::delete),
        )
        .route(
            "/v1/webhooks/{name}/rotate-secret",
            post(webhooks::rotate_secret),
        )
        .route("/v1/webhooks/{name}/attempts", get(webhooks::attempts))
        .route("/v1/webhooks/{name}/replay", post(webhooks::replay))
        .route("/v1/sinks", get(sinks::list))
        .route(
            "/v1/sinks/{name}",
            put(sinks::put).get(sinks::show).delete(sinks::delete),
        )
        .route("/v1/tokens", post(admin::create).get(admin::list))
        .route("/v1/tokens/{name}", delete(admin::revoke))
        .route("/v1/audit", get(admin::audit_log))
        .route("/v1/tenants/{tenant}", delete(erasure::start))
        .route("/v1/tenants/{tenant}/erasure", get(erasure::status))
        .route("/metrics", get(metrics::metrics))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    // Bodies are read only through `extract::ApiBody`, which applies `max_body_bytes`; axum's
    // default limit (2 MiB) would cap a larger configured one.
    open.merge(authenticated)
        .nest(
            "/v1/schema-registry",
            schema_registry::router(state.clone()),
        )
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}
