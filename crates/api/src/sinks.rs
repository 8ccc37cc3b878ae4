//! `/v1/sinks`: define, inspect and delete database sinks (a table in a consumer's database kept
//! identical to a dataset).
//!
//! Access as for webhooks: reading everything the sink covers (and, for an update, everything
//! it covered before). A definition is checked without I/O first (400 naming the field), then
//! by connecting to the sink's database and preparing its table (422 saying what is wrong)
//! before it is stored. The sink's URL is shown without its password, in answers, the audit log
//! and logs alike.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tenantsync_push::sinks;
use tenantsync_push::sinks::definition::{Definition, SinkSpec};
use tenantsync_store::{PushKind, PushPut};

use crate::admin::audit;
use crate::auth::Caller;
use crate::extract::ApiBody;
use crate::push::{self as shared, CAS_ATTEMPTS};
use crate::{ApiError, AppState};

const KIND: PushKind = <Definition as shared::Target>::KIND;

/// Whether `new` needs its database checked again: it is new, or it writes somewhere else or
/// otherwise (enabling or disabling alone does not).
fn needs_check(old: Option<&Definition>, new: &Definition) -> bool {
    old.is_none_or(|old| {
        let mut old = old.clone();
        old.enabled = new.enabled;
        old != *new
    })
}

/// `PUT /v1/sinks/{name}`: 201 created, 200 updated or unchanged.
#[utoipa::path(
    put,
    path = "/v1/sinks/{name}",
    operation_id = "sinks_put",
    tag = "sinks",
    params(crate::openapi::schemas::TargetPath),
    request_body(content = crate::openapi::schemas::SinkSpecDoc, content_type = "application/json"),
    responses(
        (status = 200, description = "Updated or unchanged", body = crate::openapi::schemas::TargetPutDoc),
        (status = 201, description = "Created", body = crate::openapi::schemas::TargetPutDoc),
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
    let spec: SinkSpec = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadBody(format!(
            "expected {{\"kind\": \"postgres\" or \"sqlite\", \"url\": \"...\", \"dataset\": \"inventory\", \"tenants\": [\"acme\"] or \"*\", \"table\": \"items\", \"columns\": {{...}}}}: {e}"
        ))
    })?;
    let definition = Definition::from_spec(spec)?;
    let scope = definition.scope();
    if !shared::reads(&caller, &scope) {
        return Err(ApiError::Forbidden(
            "this token may not read every tenant the sink would cover".to_owned(),
        ));
    }
    shared::require_declared(&state, &scope).await?;
    let mut checked = false;
    for _ in 0..CAS_ATTEMPTS {
        let previous = state.store.push(KIND, name.as_str()).await?;
        let old = previous
            .as_ref()
            .map(shared::parse::<Definition>)
            .transpose()?;
        if let Some(old) = &old {
            shared::require(
                &caller,
                &old.scope(),
                &shared::what::<Definition>(name.as_str()),
            )?;
        }
        if !checked && needs_check(old.as_ref(), &definition) {
            sinks::check(&definition).await.map_err(|e| match e {
                sinks::CheckError::Database { url, reason } => ApiError::FieldRefused {
                    field: "url".to_owned(),
                    detail: format!("the sink database {url} cannot be used: {reason}"),
                },
                sinks::CheckError::Table(detail) => ApiError::FieldRefused {
                    field: "table".to_owned(),
                    detail,
                },
            })?;
            checked = true;
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
                PushPut::Created => "sink.created",
                PushPut::Unchanged => "sink.unchanged",
                _ => "sink.updated",
            },
            name.as_str(),
            shown.clone(),
        )
        .await?;
        let status = if put == PushPut::Created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        return Ok((status, Json(shared::put_json(&stored, shown))).into_response());
    }
    Err(shared::conflict(KIND, &name))
}

/// `GET /v1/sinks`: the sinks the caller may read, with their status.
#[utoipa::path(
    get,
    path = "/v1/sinks",
    operation_id = "sinks_list",
    tag = "sinks",
    responses(
        (status = 200, description = "The sinks the caller may read", body = crate::openapi::schemas::SinkList),
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let claims = shared::claims(&state, KIND).await?;
    let mut all = Vec::new();
    for stored in state.store.pushes(KIND).await? {
        let definition = shared::parse::<Definition>(&stored)?;
        if shared::reads(&caller, &definition.scope()) {
            all.push(shared::target_json(
                &stored,
                definition.shown(),
                definition.enabled,
                &claims,
            ));
        }
    }
    Ok(Json(json!({ "sinks": all })))
}

/// `GET /v1/sinks/{name}`: the definition (never the password) and its status.
#[utoipa::path(
    get,
    path = "/v1/sinks/{name}",
    operation_id = "sinks_show",
    tag = "sinks",
    params(crate::openapi::schemas::TargetPath),
    responses(
        (status = 200, description = "The sink and its status", body = crate::openapi::schemas::TargetDoc),
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
        definition.enabled,
        &claims,
    )))
}

/// `DELETE /v1/sinks/{name}`: 204. The sink's table and the position kept in its database are
/// left as they are (they are the consumer's).
#[utoipa::path(
    delete,
    path = "/v1/sinks/{name}",
    operation_id = "sinks_delete",
    tag = "sinks",
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
