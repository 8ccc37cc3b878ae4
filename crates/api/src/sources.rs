//! `/v1/sources`: define, inspect and delete sources (changes read straight from service
//! databases: a PostgreSQL outbox, Debezium topics). Every route needs `admin`; definitions and
//! deletions are audited, without their secrets.
//!
//! A definition is checked without I/O first (400 naming the field), then by connecting (422
//! saying what is wrong) before it is stored; the instances pick it up within a second.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tenantsync_sources::{DefineError, Definition, DefinitionError, ShardStatus, SourceName};
use tenantsync_store::{SourcePut, StoredSource};

use crate::admin::audit;
use crate::auth::Admin;
use crate::extract::{self, ApiBody, ApiQuery};
use crate::rejected::RejectedQuery;
use crate::{ApiError, AppState};

impl From<DefinitionError> for ApiError {
    fn from(e: DefinitionError) -> Self {
        ApiError::InvalidField {
            field: e.field,
            detail: e.reason,
        }
    }
}

fn source_name(name: String) -> Result<SourceName, ApiError> {
    Ok(SourceName::new(name)?)
}

fn parse(stored: &StoredSource) -> Result<Definition, ApiError> {
    tenantsync_sources::parse_stored(stored)
        .map_err(|e| ApiError::Internal(format!("stored source {}: {e}", stored.name)))
}

/// `PUT /v1/sources/{name}`: 201 created, 200 updated or unchanged.
#[utoipa::path(
    put,
    path = "/v1/sources/{name}",
    operation_id = "sources_put",
    tag = "sources",
    params(crate::openapi::schemas::SourcePath),
    request_body(content = crate::openapi::schemas::SourceDefinition, content_type = "application/json"),
    responses(
        (status = 200, description = "Updated or unchanged", body = crate::openapi::schemas::SourcePutDoc),
        (status = 201, description = "Created", body = crate::openapi::schemas::SourcePutDoc),
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
    Admin(caller): Admin,
    Path(name): Path<String>,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let name = source_name(name)?;
    let json = Value::Object(extract::json_object(&body)?);
    let definition = Definition::parse(&json)?;
    let (put, revision) = tenantsync_sources::define(
        state.store.as_ref(),
        &state.datasets,
        &name,
        &definition,
        &json,
        true,
    )
    .await
    .map_err(|e| match e {
        DefineError::Conflict { .. } => ApiError::Conflict(e.to_string()),
        DefineError::UnknownDataset(_) | DefineError::Check(_) => {
            ApiError::CheckFailed(e.to_string())
        }
        DefineError::Store(e) => e.into(),
        DefineError::Dataset(e) => e.into(),
    })?;
    let shown = definition.shown();
    audit(
        state.store.as_ref(),
        caller.subject(),
        match put {
            SourcePut::Created => "source.created",
            SourcePut::Updated => "source.updated",
            SourcePut::Unchanged => "source.unchanged",
        },
        name.as_str(),
        shown.clone(),
    )
    .await?;
    let status = match put {
        SourcePut::Created => StatusCode::CREATED,
        SourcePut::Updated | SourcePut::Unchanged => StatusCode::OK,
    };
    Ok((
        status,
        Json(json!({"name": name.as_str(), "revision": revision, "definition": shown})),
    )
        .into_response())
}

/// `GET /v1/sources`: every source with its figures.
#[utoipa::path(
    get,
    path = "/v1/sources",
    operation_id = "sources_list",
    tag = "sources",
    responses(
        (status = 200, description = "Every source with its figures", body = crate::openapi::schemas::SourceList),
        (status = 403, response = crate::openapi::Forbidden),
    )
)]
pub async fn list(State(state): State<Arc<AppState>>, _: Admin) -> Result<Json<Value>, ApiError> {
    let mut sources = Vec::new();
    for stored in state.store.sources().await? {
        sources.push(source_json(&state, &stored).await?);
    }
    Ok(Json(json!({ "sources": sources })))
}

/// `GET /v1/sources/{name}`: the definition (secrets hidden), its state and figures, per shard
/// and in total.
#[utoipa::path(
    get,
    path = "/v1/sources/{name}",
    operation_id = "sources_show",
    tag = "sources",
    params(crate::openapi::schemas::SourcePath),
    responses(
        (status = 200, description = "The source, its state and figures", body = crate::openapi::schemas::SourceDoc),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
pub async fn show(
    State(state): State<Arc<AppState>>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let name = source_name(name)?;
    let stored = found(&state, &name).await?;
    Ok(Json(source_json(&state, &stored).await?))
}

async fn found(state: &AppState, name: &SourceName) -> Result<StoredSource, ApiError> {
    state
        .store
        .source(name.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("source {name} does not exist")))
}

/// Whether a shard is run now: held under a live claim, and not failing.
fn shard_state(status: &ShardStatus, live: bool) -> &'static str {
    match (live, status.state.as_str()) {
        (false, _) => "unclaimed",
        (true, "failing") => "failing",
        (true, "starting") => "starting",
        (true, _) => "running",
    }
}

async fn source_json(state: &AppState, stored: &StoredSource) -> Result<Value, ApiError> {
    let definition = parse(stored)?;
    let claims = state.store.source_shards(&stored.name).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let mut shards = Vec::new();
    let (mut ingested, mut rejected, mut lag, mut lag_seconds) = (0u64, 0u64, 0u64, 0f64);
    let mut states = Vec::new();
    for shard in 0..definition.shards() {
        let claim = claims.iter().find(|c| c.shard == shard);
        let status: ShardStatus = claim
            .and_then(|c| c.status.as_deref())
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        let live = claim.is_some_and(|c| c.lease_until_ms > now);
        let shard_state = shard_state(&status, live);
        states.push(shard_state);
        ingested += status.ingested;
        rejected += status.rejected;
        lag += status.lag.unwrap_or(0);
        lag_seconds = lag_seconds.max(status.lag_seconds.unwrap_or(0.0));
        shards.push(json!({
            "shard": shard,
            "state": shard_state,
            "instance": claim.filter(|_| live).map(|c| &c.owner),
            "position": status.position,
            "lag": status.lag,
            "lag_unit": status.lag_unit,
            "lag_seconds": status.lag_seconds,
            "ingested": status.ingested,
            "rejected": status.rejected,
            "last_error": status.last_error,
            "last_error_at": status.last_error_at,
        }));
    }
    // The source's state is its worst shard's.
    let overall = ["failing", "unclaimed", "starting", "running"]
        .into_iter()
        .find(|s| states.contains(s))
        .unwrap_or("unclaimed");
    let last_error = shards
        .iter()
        .filter(|s| !s["last_error"].is_null())
        .max_by_key(|s| s["last_error_at"].as_str().map(str::to_owned))
        .map(|s| s["last_error"].clone());
    Ok(json!({
        "name": stored.name,
        "kind": definition.kind(),
        "revision": stored.revision,
        "updated_at": stored.updated_at,
        "definition": definition.shown(),
        "state": overall,
        "lag": lag,
        "lag_unit": shards.first().map(|s| s["lag_unit"].clone()),
        "lag_seconds": lag_seconds,
        "ingested": ingested,
        "rejected": rejected,
        "last_error": last_error,
        "shards": shards,
    }))
}

/// `DELETE /v1/sources/{name}`: 204. The instance running it stops within seconds; an outbox's
/// replication slots and publication are dropped.
#[utoipa::path(
    delete,
    path = "/v1/sources/{name}",
    operation_id = "sources_delete",
    tag = "sources",
    params(crate::openapi::schemas::SourcePath),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Admin(caller): Admin,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let name = source_name(name)?;
    let stored = found(&state, &name).await?;
    let definition = parse(&stored)?;
    state.store.delete_source(name.as_str()).await?;
    audit(
        state.store.as_ref(),
        caller.subject(),
        "source.deleted",
        name.as_str(),
        json!({}),
    )
    .await?;
    tenantsync_sources::release(&name, &definition).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/sources/{name}/rejected`: rows or events that could not become a change, with their
/// source position and why, oldest first; `dropped` counts those beyond the bound.
#[utoipa::path(
    get,
    path = "/v1/sources/{name}/rejected",
    operation_id = "sources_rejected",
    tag = "sources",
    params(crate::openapi::schemas::SourcePath, RejectedQuery),
    responses(
        (status = 200, description = "Rows or events that could not become a change", body = crate::openapi::schemas::SourceRejectedPage),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
pub async fn rejected(
    State(state): State<Arc<AppState>>,
    _: Admin,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<RejectedQuery>,
) -> Result<Json<Value>, ApiError> {
    let name = source_name(name)?;
    let limit = query.limit()?;
    found(&state, &name).await?;
    let page = state
        .store
        .source_rejected(name.as_str(), query.after, limit)
        .await?;
    let next = page.entries.last().map(|(id, _)| *id).or(query.after);
    Ok(Json(json!({
        "entries": page.entries.iter().map(|(id, r)| json!({
            "id": id,
            "position": r.position,
            "reason": r.reason,
            "at": r.at,
        })).collect::<Vec<_>>(),
        "next": next,
        "dropped": page.dropped,
    })))
}
