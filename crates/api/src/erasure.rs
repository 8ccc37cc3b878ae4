//! Tenant erasure over HTTP: `DELETE /v1/tenants/{tenant}` starts it, and
//! `GET /v1/tenants/{tenant}/erasure` shows its progress. The job itself is a supervised
//! service of its own (`tenantsync_retention::Erasures`); while it runs, the tenant's writes are
//! refused here with 409.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tenantsync_core::TenantId;
use tenantsync_store::Erasure;

use crate::auth::Caller;
use crate::{ApiError, AppState};

/// 409 while the tenant is being erased.
pub fn check_writable(state: &AppState, tenant: &TenantId) -> Result<(), ApiError> {
    if state.erasures.is_erasing(tenant) {
        return Err(ApiError::TenantErasing(tenant.to_string()));
    }
    Ok(())
}

fn erasure_json(e: &Erasure) -> Value {
    json!({
        "tenant": e.tenant,
        "state": if e.finished_at.is_some() { "finished" } else { "running" },
        "started_at": e.started_at,
        "finished_at": e.finished_at,
        "erased": e.erased,
    })
}

fn status_url(tenant: &TenantId) -> String {
    format!("/v1/tenants/{tenant}/erasure")
}

/// `DELETE /v1/tenants/{tenant}`: starts erasing the tenant (or reports the erasure already
/// running): `202 Accepted`, with the progress URL in `Location`.
#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}",
    operation_id = "erasure_start",
    tag = "tenants",
    params(crate::openapi::schemas::TenantPath),
    responses(
        (status = 202, description = "The erasure started (or was running)", body = crate::openapi::schemas::ErasureDoc, headers(("Location" = String, description = "Where its progress is"))),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
pub async fn start(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let tenant = TenantId::new(tenant)?;
    let erasure = state.erasures.start(&tenant, caller.subject()).await?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, status_url(&tenant))],
        Json(erasure_json(&erasure)),
    )
        .into_response())
}

/// `GET /v1/tenants/{tenant}/erasure`: the last erasure of the tenant.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/erasure",
    operation_id = "erasure_status",
    tag = "tenants",
    params(crate::openapi::schemas::TenantPath),
    responses(
        (status = 200, description = "The tenant's last erasure", body = crate::openapi::schemas::ErasureDoc),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
pub async fn status(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let tenant = TenantId::new(tenant)?;
    let erasure = state
        .store
        .erasure(&tenant)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("tenant {tenant} was never erased")))?;
    Ok(Json(erasure_json(&erasure)))
}
