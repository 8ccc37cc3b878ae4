//! `/v1/webhooks`: define, inspect, rotate the secret of, replay and delete webhook endpoints.
//!
//! Defining or seeing an endpoint needs read access to everything it covers, as a
//! subscription does (its deliveries are those tenants' data); an update also needs access to
//! everything it covered before. A definition is checked without I/O first (400 naming the
//! field), then its URL by the SSRF guard, when it is new or changes (422 naming `url`).
//!
//! The signing secret is in exactly two answers: the one creating the endpoint and the one
//! rotating it. No other answer, audit entry or log line carries a secret or a header value.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use tenantsync_core::InvalidInput;
use tenantsync_push::webhooks::definition::{Definition, WebhookSpec};
use tenantsync_push::webhooks::replay::{self, ReplayError, ReplayFrom};
use tenantsync_store::{PushKind, PushPut};

use crate::admin::audit;
use crate::auth::Caller;
use crate::extract::{ApiBody, ApiQuery};
use crate::push::{self as shared, CAS_ATTEMPTS};
use crate::{ApiError, AppState};

const KIND: PushKind = <Definition as shared::Target>::KIND;

/// Attempts listed when the request names no `limit`, and the most it may name.
const ATTEMPTS_DEFAULT_LIMIT: usize = 100;
const ATTEMPTS_MAX_LIMIT: usize = 1_000;

/// Refuses a URL the SSRF guard refuses, by its form and by what its host resolves to (422
/// naming `url`). Delivery checks again at every connection: a name may resolve elsewhere later.
async fn check_url(state: &AppState, url: &str) -> Result<(), ApiError> {
    let refused = |e: tenantsync_push::webhooks::ssrf::UrlRefused| ApiError::FieldRefused {
        field: "url".to_owned(),
        detail: e.to_string(),
    };
    let url = state.webhook_guard.check_url(url).map_err(refused)?;
    state
        .webhook_guard
        .check_resolved(&url)
        .await
        .map_err(refused)
}

/// `PUT /v1/webhooks/{name}`: 201 with the signing secret when created, 200 when updated or
/// unchanged (no secret).
#[utoipa::path(
    put,
    path = "/v1/webhooks/{name}",
    operation_id = "webhooks_put",
    tag = "webhooks",
    params(crate::openapi::schemas::TargetPath),
    request_body(content = crate::openapi::schemas::WebhookSpecDoc, content_type = "application/json"),
    responses(
        (status = 200, description = "Updated or unchanged", body = crate::openapi::schemas::TargetPutDoc),
        (status = 201, description = "Created, with its signing secret", body = crate::openapi::schemas::TargetPutDoc),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::UnprocessableContent),
    )
)]
pub async fn put(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let name = shared::target_name(name)?;
    let spec: WebhookSpec = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadBody(format!(
            "expected {{\"url\": \"https://...\", \"datasets\": [\"inventory\"], \"tenants\": [\"acme\"] or \"*\", \"headers\": {{...}}, \"max_rate\": N, \"enabled\": true}}: {e}"
        ))
    })?;
    // The URL this request's guard check passed, so that a retry after a conflict does not
    // resolve it again.
    let mut checked: Option<String> = None;
    for _ in 0..CAS_ATTEMPTS {
        let previous = state.store.push(KIND, name.as_str()).await?;
        let old = previous
            .as_ref()
            .map(shared::parse::<Definition>)
            .transpose()?;
        let (definition, secret) = Definition::from_spec(spec.clone(), old.as_ref())?;
        let scope = definition.scope();
        if !shared::reads(&caller, &scope) {
            return Err(ApiError::Forbidden(
                "this token may not read every dataset and tenant the webhook would cover"
                    .to_owned(),
            ));
        }
        if let Some(old) = &old {
            shared::require(
                &caller,
                &old.scope(),
                &shared::what::<Definition>(name.as_str()),
            )?;
        }
        shared::require_declared(&state, &scope).await?;
        let url_changed = old.as_ref().is_none_or(|o| o.url != definition.url);
        if url_changed && checked.as_deref() != Some(definition.url.as_str()) {
            check_url(&state, &definition.url).await?;
            checked = Some(definition.url.clone());
        }
        let expected = previous.as_ref().map_or(0, |p| p.revision);
        let Some((put, stored)) =
            shared::put(&state, KIND, &name, &definition.to_json(), expected).await?
        else {
            continue;
        };
        let shown = definition.shown();
        audit(
            state.store.as_ref(),
            caller.subject(),
            match put {
                PushPut::Created => "webhook.created",
                PushPut::Unchanged => "webhook.unchanged",
                _ => "webhook.updated",
            },
            name.as_str(),
            shown.clone(),
        )
        .await?;
        let mut body = shared::put_json(&stored, shown);
        return Ok(match (put, secret) {
            (PushPut::Created, Some(secret)) => {
                body["secret"] = json!(secret);
                (StatusCode::CREATED, Json(body)).into_response()
            }
            _ => (StatusCode::OK, Json(body)).into_response(),
        });
    }
    Err(shared::conflict(KIND, &name))
}

/// `GET /v1/webhooks`: the endpoints the caller may read, with their status.
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    operation_id = "webhooks_list",
    tag = "webhooks",
    responses(
        (status = 200, description = "The endpoints the caller may read", body = crate::openapi::schemas::WebhookList),
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let claims = shared::claims(&state, KIND).await?;
    let mut webhooks = Vec::new();
    for stored in state.store.pushes(KIND).await? {
        let definition = shared::parse::<Definition>(&stored)?;
        if shared::reads(&caller, &definition.scope()) {
            webhooks.push(shared::target_json(
                &stored,
                definition.shown(),
                definition.runs(),
                &claims,
            ));
        }
    }
    Ok(Json(json!({ "webhooks": webhooks })))
}

/// `GET /v1/webhooks/{name}`: the definition (no secret, header names only) and its status.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{name}",
    operation_id = "webhooks_show",
    tag = "webhooks",
    params(crate::openapi::schemas::TargetPath),
    responses(
        (status = 200, description = "The endpoint and its status", body = crate::openapi::schemas::TargetDoc),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
pub async fn show(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (_, stored, definition) = shared::find::<Definition>(&state, &caller, name).await?;
    let claims = shared::claims(&state, KIND).await?;
    Ok(Json(shared::target_json(
        &stored,
        definition.shown(),
        definition.runs(),
        &claims,
    )))
}

/// `DELETE /v1/webhooks/{name}`: 204; its holder stops at its next renewal.
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{name}",
    operation_id = "webhooks_delete",
    tag = "webhooks",
    params(crate::openapi::schemas::TargetPath),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (name, _, _) = shared::find::<Definition>(&state, &caller, name).await?;
    shared::delete(&state, &caller, KIND, &name).await
}

/// `POST /v1/webhooks/{name}/rotate-secret`: a new signing secret, shown in this answer only;
/// the previous ones keep signing until `previous_secrets_expire_at`.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{name}/rotate-secret",
    operation_id = "webhooks_rotate_secret",
    tag = "webhooks",
    params(crate::openapi::schemas::TargetPath),
    responses(
        (status = 200, description = "The new signing secret, shown this once", body = crate::openapi::schemas::RotatedSecret),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
    )
)]
pub async fn rotate_secret(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let name = shared::target_name(name)?;
    for _ in 0..CAS_ATTEMPTS {
        let (_, stored, mut definition) =
            shared::find::<Definition>(&state, &caller, name.to_string()).await?;
        let now = Utc::now();
        let secret = definition.rotate(now);
        let previous_expire_at: Option<DateTime<Utc>> = definition
            .secrets
            .iter()
            .rev()
            .skip(1)
            .filter_map(|s| s.expires_at)
            .max();
        if shared::put(&state, KIND, &name, &definition.to_json(), stored.revision)
            .await?
            .is_none()
        {
            continue;
        }
        audit(
            state.store.as_ref(),
            caller.subject(),
            "webhook.secret_rotated",
            name.as_str(),
            json!({ "previous_secrets_expire_at": previous_expire_at }),
        )
        .await?;
        return Ok(Json(json!({
            "secret": secret,
            "previous_secrets_expire_at": previous_expire_at,
        })));
    }
    Err(shared::conflict(KIND, &name))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AttemptsQuery {
    /// Attempts listed: 1 to 1,000, 100 by default.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// `GET /v1/webhooks/{name}/attempts?limit=N`: the newest delivery attempts, newest first.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{name}/attempts",
    operation_id = "webhooks_attempts",
    tag = "webhooks",
    params(crate::openapi::schemas::TargetPath, AttemptsQuery),
    responses(
        (status = 200, description = "The newest delivery attempts, newest first", body = crate::openapi::schemas::AttemptList),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
pub async fn attempts(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<AttemptsQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = match query.limit {
        None => ATTEMPTS_DEFAULT_LIMIT,
        Some(n) if (1..=ATTEMPTS_MAX_LIMIT).contains(&n) => n,
        Some(n) => {
            return Err(InvalidInput::new(
                "limit",
                format!("must be 1 to {ATTEMPTS_MAX_LIMIT}, got {n}"),
            )
            .into());
        }
    };
    let (name, _, _) = shared::find::<Definition>(&state, &caller, name).await?;
    let attempts = state
        .store
        .push_attempts(KIND, name.as_str(), limit)
        .await?;
    Ok(Json(json!({
        "attempts": attempts.iter().map(|a| json!({
            "at": a.at,
            "message_id": a.message,
            "dataset": a.dataset,
            "tenant": a.tenant,
            "records": a.records,
            "status": a.status,
            "latency_ms": a.latency_ms,
            "error": a.error,
        })).collect::<Vec<_>>(),
    })))
}

/// `POST .../replay` body: exactly one of `since` and `cursor`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = ReplayRequest)]
#[serde(deny_unknown_fields)]
struct Replay {
    since: Option<DateTime<Utc>>,
    cursor: Option<String>,
}

/// `POST /v1/webhooks/{name}/replay`: sends again from a time, or from a delivered message's
/// cursor; 202 with the number of tenants moved. Whoever delivers the endpoint is fenced and
/// continues from the new positions.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{name}/replay",
    operation_id = "webhooks_replay",
    tag = "webhooks",
    params(crate::openapi::schemas::TargetPath),
    request_body(content = Replay, content_type = "application/json"),
    responses(
        (status = 202, description = "The tenants moved back", body = crate::openapi::schemas::ReplayedDoc),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::UnprocessableContent),
    )
)]
pub async fn replay(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let request: Replay = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadBody(format!(
            "expected {{\"since\": \"<RFC 3339 time>\"}} or {{\"cursor\": \"<a delivered message's cursor>\"}}: {e}"
        ))
    })?;
    let (from, detail) = match (request.since, request.cursor) {
        (Some(since), None) => (ReplayFrom::Since(since), json!({ "since": since })),
        (None, Some(cursor)) => (ReplayFrom::Cursor(cursor), json!({ "cursor": true })),
        _ => {
            return Err(InvalidInput::new(
                "since",
                "give exactly one of since (an RFC 3339 time) and cursor",
            )
            .into());
        }
    };
    let (name, _, definition) = shared::find::<Definition>(&state, &caller, name).await?;
    let tenants = replay::replay(
        state.store.as_ref(),
        &state.hub,
        &state.cursor_key,
        name.as_str(),
        &definition,
        from,
    )
    .await
    .map_err(|e| match e {
        ReplayError::Cursor(e) => ApiError::from(InvalidInput::new("cursor", e.to_string())),
        e @ ReplayError::NotCovered(_) => ApiError::FieldRefused {
            field: "cursor".to_owned(),
            detail: e.to_string().trim_start_matches("cursor: ").to_owned(),
        },
        ReplayError::NotFound => ApiError::NotFound(format!("webhook {name} does not exist")),
        ReplayError::Store(e) => e.into(),
    })?;
    let mut detail = detail;
    detail["tenants"] = json!(tenants);
    audit(
        state.store.as_ref(),
        caller.subject(),
        "webhook.replayed",
        name.as_str(),
        detail,
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "tenants": tenants }))).into_response())
}
