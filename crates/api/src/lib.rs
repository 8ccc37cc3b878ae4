//! The HTTP API. One module per resource; every error is an [`ApiError`] rendered as RFC 9457
//! `application/problem+json`. Handlers validate at the edge (into `tenantsync-core` types) and
//! never hold business rules: the rules of applying a change live in the master store.

mod datasets;
mod error;
mod extract;
mod health;
mod records;
mod write;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use tenantsync_log::Log;
use tenantsync_processor::{AppliedHub, Datasets};
use tenantsync_store::MasterStore;

pub use error::ApiError;

/// Settings of the API, validated by the binary.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest request body accepted; larger bodies get 413.
    pub max_body_bytes: usize,
    /// How long `?wait=applied` waits for the processor before answering 504.
    pub apply_timeout: Duration,
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
        }
    }
}

/// What every handler shares.
pub struct AppState {
    pub log: Arc<dyn Log>,
    pub store: Arc<dyn MasterStore>,
    pub datasets: Arc<Datasets>,
    /// Where `?wait=applied` writers wait for this instance's processor.
    pub applied: Arc<AppliedHub>,
    pub config: ApiConfig,
}

/// The whole API.
pub fn router(state: Arc<AppState>) -> Router {
    let record = "/v1/datasets/{dataset}/tenants/{tenant}/records/{id}";
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v1/datasets", get(datasets::list))
        .route(
            "/v1/datasets/{dataset}",
            put(datasets::declare).get(datasets::show),
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
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state)
}
