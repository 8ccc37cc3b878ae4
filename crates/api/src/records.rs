//! `/v1/datasets/{dataset}/tenants/{tenant}/records/{id}`: write one record (PUT, PATCH,
//! DELETE) and read its current state (GET); and the outcome of a change by its id.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tenantsync_core::{ChangeId, Op, Record, TenantId};

use crate::extract::{self, Wait, WriteQuery};
use crate::write;
use crate::{ApiError, AppState};

type RecordPath = Path<(String, String, String)>;

pub fn record_json(record: &Record) -> Value {
    json!({
        "tenant": record.tenant,
        "id": record.id,
        "version": record.version,
        "data": record.data,
        "updated_at": record.updated_at,
    })
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("a number is a valid header value")
}

/// The common path of PUT, PATCH and DELETE.
async fn write_one(
    state: Arc<AppState>,
    (dataset, tenant, id): (String, String, String),
    query: Result<Query<WriteQuery>, QueryRejection>,
    headers: HeaderMap,
    op: Op,
    body: Option<Bytes>,
) -> Result<Response, ApiError> {
    let query = extract::query(query)?;
    let dataset = extract::dataset(&state, &dataset).await?;
    let (tenant, id) = extract::tenant_and_id(&tenant, &id)?;
    let pre = extract::preconditions(&headers)?;
    let data = body.map(|b| extract::json_object(&b)).transpose()?;
    let explicit_key = pre.change_id.is_some();
    let change = write::change(op, tenant, id, data, pre.change_id, pre.expected_version)?;
    if explicit_key {
        write::check_key(&state, &dataset, &change, write::KEY_HEADER).await?;
    }
    let waiter =
        (query.wait == Some(Wait::Applied)).then(|| write::register(&state, &dataset, &change));
    write::submit(&state, &dataset, std::slice::from_ref(&change)).await?;

    let Some(waiter) = waiter else {
        let location = write::status_url(&dataset, &change);
        return Ok((
            StatusCode::ACCEPTED,
            [(header::LOCATION, location)],
            Json(json!({ "change_id": change.change_id })),
        )
            .into_response());
    };
    let applied = write::wait_applied(&state, &dataset, &change, waiter, write::KEY_HEADER).await?;
    let record = write::applied_reply(&change, &applied, write::KEY_HEADER)?;
    let mut response = Json(record_json(&record)).into_response();
    response
        .headers_mut()
        .insert(header::ETAG, etag(record.version));
    Ok(response)
}

pub async fn put(
    State(state): State<Arc<AppState>>,
    Path(path): RecordPath,
    query: Result<Query<WriteQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = extract::body(body, state.config.max_body_bytes)?;
    write_one(state, path, query, headers, Op::Upsert, Some(body)).await
}

pub async fn patch(
    State(state): State<Arc<AppState>>,
    Path(path): RecordPath,
    query: Result<Query<WriteQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = extract::body(body, state.config.max_body_bytes)?;
    write_one(state, path, query, headers, Op::Patch, Some(body)).await
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(path): RecordPath,
    query: Result<Query<WriteQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    write_one(state, path, query, headers, Op::Delete, None).await
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    Path((dataset, tenant, id)): RecordPath,
) -> Result<Response, ApiError> {
    let dataset = extract::dataset(&state, &dataset).await?;
    let (tenant, id) = extract::tenant_and_id(&tenant, &id)?;
    match state.store.get(&dataset.name, &tenant, &id).await? {
        Some(record) if !record.is_deleted() => {
            let mut response = Json(record_json(&record)).into_response();
            response
                .headers_mut()
                .insert(header::ETAG, etag(record.version));
            Ok(response)
        }
        Some(_) => Err(ApiError::NotFound(format!(
            "record {tenant}:{id} was deleted"
        ))),
        None => Err(ApiError::NotFound(format!(
            "record {tenant}:{id} does not exist in dataset {}",
            dataset.name
        ))),
    }
}

/// `GET /v1/datasets/{dataset}/tenants/{tenant}/changes/{change_id}`: what became of a change.
/// `pending` means the master store has no outcome for it yet (or never heard of it). `id` is
/// the record the change id belongs to: the first change applied with it; a later change of
/// another record with the same id was refused (`key_reused`, never stored, so never shown here).
pub async fn change_status(
    State(state): State<Arc<AppState>>,
    Path((dataset, tenant, change_id)): RecordPath,
) -> Result<Response, ApiError> {
    let dataset = extract::dataset(&state, &dataset).await?;
    let tenant = TenantId::new(tenant)?;
    let change_id = ChangeId::new(change_id)?;
    let stored = state
        .store
        .outcome(&dataset.name, &tenant, &change_id)
        .await?;
    let Some(stored) = stored else {
        return Ok(Json(json!({"change_id": change_id, "status": "pending"})).into_response());
    };
    // `Outcome` serialises as the status and its members: {"status": "applied", "version": 3},
    // {"status": "rejected", "reason": "version_conflict", "current_version": 2}, ...
    let mut body = serde_json::to_value(&stored.outcome).expect("an outcome serialises");
    body["change_id"] = json!(change_id);
    body["id"] = json!(stored.id);
    Ok(Json(body).into_response())
}
