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
pub mod openapi;
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
use tenantsync_batcher::BatchQueue;
use tenantsync_dataset::{AppliedHub, Datasets};
use tenantsync_feed::{CursorKey, Hub};
use tenantsync_log::Log;
use tenantsync_push::webhooks::ssrf::Guard;
use tenantsync_retention::Erasures;
use tenantsync_schema::Schemas;
use tenantsync_store::MasterStore;
use tenantsync_supervisor::{MetricsSource, Supervisor};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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

/// The routes: those open to all (the health checks and this API's OpenAPI document), those
/// behind [`auth::authenticate`] (where each handler checks the scope its request needs), and
/// the schema registry's, relative to [`SCHEMA_REGISTRY`] (authenticated by its own layers).
///
/// Every route is registered with `routes!`, which takes its path, methods and documentation
/// from the handler's `#[utoipa::path]`: a route cannot exist without its documentation.
/// Handlers of one path go in one `routes!`.
fn routes() -> (Routes, Routes, Routes) {
    let open = OpenApiRouter::default()
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(openapi::serve));
    let authenticated = OpenApiRouter::default()
        .routes(routes!(datasets::list))
        .routes(routes!(datasets::declare, datasets::show))
        .routes(routes!(rejected::list))
        .routes(routes!(schemas::put, schemas::latest))
        .routes(routes!(schemas::versions))
        .routes(routes!(schemas::version))
        .routes(routes!(
            records::put,
            records::patch,
            records::delete,
            records::get
        ))
        .routes(routes!(records::change_status))
        .routes(routes!(write::bulk))
        .routes(routes!(feed::changes))
        .routes(routes!(batches::lease))
        .routes(routes!(batches::ack))
        .routes(routes!(subscriptions::list))
        .routes(routes!(
            subscriptions::put,
            subscriptions::show,
            subscriptions::delete
        ))
        .routes(routes!(subscriptions::changes))
        .routes(routes!(subscriptions::ack))
        .routes(routes!(sources::list))
        .routes(routes!(sources::put, sources::show, sources::delete))
        .routes(routes!(sources::rejected))
        .routes(routes!(webhooks::list))
        .routes(routes!(webhooks::put, webhooks::show, webhooks::delete))
        .routes(routes!(webhooks::rotate_secret))
        .routes(routes!(webhooks::attempts))
        .routes(routes!(webhooks::replay))
        .routes(routes!(sinks::list))
        .routes(routes!(sinks::put, sinks::show, sinks::delete))
        .routes(routes!(admin::create, admin::list))
        .routes(routes!(admin::revoke))
        .routes(routes!(admin::audit_log))
        .routes(routes!(erasure::start))
        .routes(routes!(erasure::status))
        .routes(routes!(metrics::metrics));
    (open, authenticated, schema_registry::routes())
}

/// Routes with their documentation, before the state is given.
type Routes = OpenApiRouter<Arc<AppState>>;

/// Where the Schema-Registry-compatible API is.
const SCHEMA_REGISTRY: &str = "/v1/schema-registry";

/// The OpenAPI 3.1 document of [`router`], served at `GET /openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (open, authenticated, registry) = routes();
    let registry = OpenApiRouter::default().nest(SCHEMA_REGISTRY, registry);
    openapi::document(
        open.into_openapi(),
        authenticated.into_openapi(),
        registry.into_openapi(),
    )
}

/// The whole API: [`routes`] with their fallbacks, the open ones as they are, every other one
/// behind [`auth::authenticate`].
pub fn router(state: Arc<AppState>) -> Router {
    let (open, authenticated, registry) = routes();
    let open = Router::from(open).method_not_allowed_fallback(error::method_not_allowed);
    let authenticated = Router::from(authenticated)
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
            SCHEMA_REGISTRY,
            schema_registry::router(registry.into(), state.clone()),
        )
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}
