//! `/v1/datasets/{dataset}/tenants/{tenant}/records/{id}`: write one record (PUT, PATCH,
//! DELETE) and read its current state (GET); and the outcome of a change by its id.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tenantsync_auth::Access;
use tenantsync_core::{ChangeId, DatasetName, EntityId, Op, TenantId};

use crate::auth::Caller;
use crate::extract::{
    self, Allowed, ApiBody, ApiQuery, Tenant, TenantAccess, Wait, Write, WriteQuery,
};
use crate::write;
use crate::{ApiError, AppState};

type RecordPath = Path<(String, String, String)>;

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("a number is a valid header value")
}

/// The common path of PUT, PATCH and DELETE.
async fn write_one(
    state: Arc<AppState>,
    Tenant {
        caller,
        dataset,
        tenant,
    }: Tenant,
    id: String,
    query: WriteQuery,
    headers: HeaderMap,
    op: Op,
    body: Option<Bytes>,
) -> Result<Response, ApiError> {
    let id = EntityId::new(id)?;
    let pre = extract::preconditions(&headers)?;
    let data = body.map(|b| extract::json_object(&b)).transpose()?;
    let explicit_key = pre.change_id.is_some();
    let change = write::change(op, tenant, id, data, pre.change_id, pre.expected_version)?;
    crate::erasure::check_writable(&state, &change.tenant)?;
    write::take_quota(&state, &change.tenant, 1)?;
    // A delete carries no data and needs no contract.
    let contract = match op {
        Op::Delete => Default::default(),
        Op::Upsert | Op::Patch => write::contract(&state, &dataset).await?,
    };
    write::check_data(&contract, &change)?;
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
    let record = write::applied_reply(&change, &applied, write::KEY_HEADER, &contract)?;
    let mut response = Json(write::written_json(&caller, &dataset.name, &record)).into_response();
    response
        .headers_mut()
        .insert(header::ETAG, etag(record.version));
    Ok(response)
}

#[utoipa::path(
    put,
    path = "/v1/datasets/{dataset}/tenants/{tenant}/records/{id}",
    operation_id = "records_put",
    tag = "records",
    params(crate::openapi::schemas::RecordPath, WriteQuery, crate::openapi::schemas::WriteHeaders),
    request_body(content = crate::openapi::schemas::Data, description = "The record's new data", content_type = "application/json"),
    responses(
        (status = 200, description = "Applied (`?wait=applied`): the record as the change left it", body = crate::openapi::schemas::WrittenRecord, headers(("ETag" = String, description = "The record's version, quoted"))),
        (status = 202, description = "Durably accepted", body = crate::openapi::schemas::Accepted, headers(("Location" = String, description = "Where the change's outcome is"))),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::UnprocessableContent),
        (status = 429, response = crate::openapi::TooManyRequests),
        (status = 504, response = crate::openapi::GatewayTimeout),
    )
)]
pub async fn put(
    State(state): State<Arc<AppState>>,
    Allowed(tenant): Allowed<TenantAccess<Write>>,
    path: RecordPath,
    ApiQuery(query): ApiQuery<WriteQuery>,
    headers: HeaderMap,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let Path((_, _, id)) = path;
    write_one(state, tenant, id, query, headers, Op::Upsert, Some(body)).await
}

#[utoipa::path(
    patch,
    path = "/v1/datasets/{dataset}/tenants/{tenant}/records/{id}",
    operation_id = "records_patch",
    tag = "records",
    params(crate::openapi::schemas::RecordPath, WriteQuery, crate::openapi::schemas::WriteHeaders),
    request_body(content = crate::openapi::schemas::Data, description = "A JSON Merge Patch (RFC 7396) of the record's data", content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "Applied (`?wait=applied`): the record as the change left it", body = crate::openapi::schemas::WrittenRecord, headers(("ETag" = String, description = "The record's version, quoted"))),
        (status = 202, description = "Durably accepted", body = crate::openapi::schemas::Accepted, headers(("Location" = String, description = "Where the change's outcome is"))),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::UnprocessableContent),
        (status = 429, response = crate::openapi::TooManyRequests),
        (status = 504, response = crate::openapi::GatewayTimeout),
    )
)]
pub async fn patch(
    State(state): State<Arc<AppState>>,
    Allowed(tenant): Allowed<TenantAccess<Write>>,
    path: RecordPath,
    ApiQuery(query): ApiQuery<WriteQuery>,
    headers: HeaderMap,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let Path((_, _, id)) = path;
    write_one(state, tenant, id, query, headers, Op::Patch, Some(body)).await
}

#[utoipa::path(
    delete,
    path = "/v1/datasets/{dataset}/tenants/{tenant}/records/{id}",
    operation_id = "records_delete",
    tag = "records",
    params(crate::openapi::schemas::RecordPath, WriteQuery, crate::openapi::schemas::WriteHeaders),
    responses(
        (status = 200, description = "Applied (`?wait=applied`): the record as the change left it", body = crate::openapi::schemas::WrittenRecord, headers(("ETag" = String, description = "The record's version, quoted"))),
        (status = 202, description = "Durably accepted", body = crate::openapi::schemas::Accepted, headers(("Location" = String, description = "Where the change's outcome is"))),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 422, response = crate::openapi::UnprocessableContent),
        (status = 429, response = crate::openapi::TooManyRequests),
        (status = 504, response = crate::openapi::GatewayTimeout),
    )
)]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Allowed(tenant): Allowed<TenantAccess<Write>>,
    path: RecordPath,
    ApiQuery(query): ApiQuery<WriteQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((_, _, id)) = path;
    write_one(state, tenant, id, query, headers, Op::Delete, None).await
}

#[utoipa::path(
    get,
    path = "/v1/datasets/{dataset}/tenants/{tenant}/records/{id}",
    operation_id = "records_get",
    tag = "records",
    params(crate::openapi::schemas::RecordPath),
    responses(
        (status = 200, description = "The record", body = crate::openapi::schemas::RecordDoc, headers(("ETag" = String, description = "The record's version, quoted"))),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((dataset, tenant, id)): RecordPath,
) -> Result<Response, ApiError> {
    let (dataset, tenant) =
        extract::authorized(&state, &caller, Access::Read, &dataset, &tenant).await?;
    let id = EntityId::new(id)?;
    match state.store.get(&dataset.name, &tenant, &id).await? {
        Some(record) if !record.is_deleted() => {
            let mut response = Json(write::record_json(&record)).into_response();
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
/// Its writer may ask, so `write` on the tenant is enough, as is `read`: the answer holds no data.
#[utoipa::path(
    get,
    path = "/v1/datasets/{dataset}/tenants/{tenant}/changes/{change_id}",
    operation_id = "records_change_status",
    tag = "records",
    params(crate::openapi::schemas::ChangePath),
    responses(
        (status = 200, description = "What became of the change", body = crate::openapi::schemas::ChangeStatus),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
pub async fn change_status(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((dataset, tenant, change_id)): RecordPath,
) -> Result<Response, ApiError> {
    let (name, tenant) = (DatasetName::new(dataset)?, TenantId::new(tenant)?);
    if !caller.allows(Access::Write, &name, &tenant) {
        caller.require(Access::Read, &name, &tenant)?;
    }
    let dataset = extract::dataset(&state, &name).await?;
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
