//! Batches for HTTP workers: `POST /v1/datasets/{dataset}/batches/lease` hands out the next
//! single-tenant batch under a lease (visibility timeout), `POST .../batches/{id}/ack`
//! completes it. A worker must be able to read every tenant of the dataset, since the queue
//! hands out any tenant's batch.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tenantsync_batcher::BatchId;
use tenantsync_core::{DatasetName, InvalidInput};

use crate::auth::Caller;
use crate::extract::{self, AccessCheck, Allowed, ApiQuery, PathParams};
use crate::metrics::Gauge;
use crate::revocation::TokenWatch;
use crate::{ApiError, AppState};

/// Lease length when the request names none.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// The longest lease a worker may ask for.
pub const MAX_LEASE: Duration = Duration::from_secs(3600);

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LeaseQuery {
    /// Seconds to long-poll when no batch is ready (capped at the feed's `max_wait`).
    #[serde(default)]
    #[param(minimum = 0)]
    wait: Option<f64>,
    /// Seconds the batch stays leased to this worker before it is handed out again (more than
    /// 0, capped at an hour; 30 by default).
    #[serde(default)]
    #[param(exclusive_minimum = 0)]
    lease: Option<f64>,
}

/// 403 unless the caller may read every tenant of the dataset; checked before the dataset is
/// looked up.
fn authorize(caller: &Caller, dataset: &str) -> Result<DatasetName, ApiError> {
    let name = DatasetName::new(dataset)?;
    if caller.reads_every_tenant(&name) {
        Ok(name)
    } else {
        Err(ApiError::Forbidden(format!(
            "batch workers see every tenant's batches: this token needs the scope read:{name}:* (or a wider one)"
        )))
    }
}

/// [`authorize`]d to lease the batches of the dataset the path names; the dataset is not looked
/// up yet.
pub enum BatchWorker {}

impl AccessCheck for BatchWorker {
    type Granted = DatasetName;

    async fn check(
        _: &AppState,
        caller: Caller,
        path: &PathParams,
    ) -> Result<DatasetName, ApiError> {
        authorize(&caller, path.get("dataset"))
    }
}

/// `POST /v1/datasets/{dataset}/batches/lease?wait=S&lease=S`: `200` with the batch and
/// `lease_expires_at`, or `204` when none is ready within `wait`.
#[utoipa::path(
    post,
    path = "/v1/datasets/{dataset}/batches/lease",
    operation_id = "batches_lease",
    tag = "batches",
    params(crate::openapi::schemas::DatasetPath, LeaseQuery),
    responses(
        (status = 200, description = "The next batch, leased to the caller", body = crate::openapi::schemas::LeasedBatch),
        (status = 204, description = "No batch was ready within `wait`"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
pub async fn lease(
    State(state): State<Arc<AppState>>,
    Allowed(name): Allowed<BatchWorker>,
    ApiQuery(query): ApiQuery<LeaseQuery>,
    token: TokenWatch,
) -> Result<Response, ApiError> {
    let wait = extract::seconds(
        "wait",
        query.wait,
        Duration::ZERO,
        state.config.feed.max_wait,
    )?;
    let lease = extract::seconds("lease", query.lease, DEFAULT_LEASE, MAX_LEASE)?;
    if lease.is_zero() {
        return Err(InvalidInput::new("lease", "must be more than 0 seconds").into());
    }
    let dataset = extract::dataset(&state, &name).await?;
    let leased = {
        let _waiting = (!wait.is_zero()).then(|| Gauge::hold(&state.metrics.long_polls));
        // A lease taken just as the token is revoked is dropped unanswered, as when its client
        // goes away: the batch is handed out again once the lease expires.
        token
            .guard(state.batches.lease(&dataset, lease, wait))
            .await??
    };
    let Some(leased) = leased else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let mut body =
        serde_json::to_value(&leased.batch).map_err(|e| ApiError::Internal(e.to_string()))?;
    body["lease_expires_at"] = serde_json::json!(leased.expires_at);
    Ok(Json(body).into_response())
}

/// `POST /v1/datasets/{dataset}/batches/{id}/ack`: `204` once completed; `404` if the batch
/// is not outstanding (acknowledged before, or never handed out).
#[utoipa::path(
    post,
    path = "/v1/datasets/{dataset}/batches/{id}/ack",
    operation_id = "batches_ack",
    tag = "batches",
    params(crate::openapi::schemas::BatchPath),
    responses(
        (status = 204, description = "The batch is completed"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
pub async fn ack(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((dataset, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let name = authorize(&caller, &dataset)?;
    let id: BatchId = id.parse().map_err(|e: tenantsync_batcher::BatcherError| {
        ApiError::from(InvalidInput::new("id", e.to_string()))
    })?;
    let dataset = extract::dataset(&state, &name).await?;
    if state.batches.ack(&dataset, &id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound(format!(
            "batch {id} of dataset {name} is not leased: it was acknowledged already, or never handed out"
        )))
    }
}
