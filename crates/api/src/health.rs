//! Liveness and readiness.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use tenantsync_supervisor::ErrorClass;

use crate::AppState;

/// Alive: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "health_healthz",
    tag = "meta",
    responses(
        (status = 200, description = "The process answers", body = crate::openapi::schemas::Healthz),
    )
)]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready: the log and the master store answer, and no background service fails with a
/// permanent error. Services failing with a transient error are listed too, as what they are:
/// trouble expected to heal by itself.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "health_readyz",
    tag = "meta",
    responses(
        (status = 200, description = "Ready", body = crate::openapi::schemas::Readyz),
        (status = 503, description = "Not ready: the log or the store does not answer, or a service fails permanently", body = crate::openapi::schemas::Readyz),
    )
)]
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    let log = state.log.check().await.map_err(|e| e.to_string());
    let store = state.store.check().await.map_err(|e| e.to_string());
    let show = |r: &Result<(), String>| match r {
        Ok(()) => json!("ok"),
        Err(e) => json!(e),
    };
    let mut failing = Map::new();
    let mut permanent = false;
    for service in state.supervisor.failing() {
        let Some((class, error)) = service.last_error else {
            continue;
        };
        permanent |= class == ErrorClass::Permanent;
        failing.insert(
            service.name,
            json!({
                "error": error,
                "permanent": class == ErrorClass::Permanent,
                "failures": service.failures,
                "restarts": service.restarts,
            }),
        );
    }
    let ready = log.is_ok() && store.is_ok() && !permanent;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ready { "ready" } else { "unavailable" },
            "log": show(&log),
            "store": show(&store),
            "failing_services": failing,
        })),
    )
}
