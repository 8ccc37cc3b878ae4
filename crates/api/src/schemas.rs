//! `/v1/datasets/{dataset}/schema`: a dataset's data contract, its JSON Schema in versions.
//!
//! Registering needs `admin`; reading needs any scope on the dataset. The rules of
//! registration (a valid schema, no remote `$ref`, the compatibility mode, an Avro equivalent
//! for a dataset that asks for Avro) are the schema crate's: this module maps its verdicts to
//! HTTP, and reports the records that already violate a new schema, read page by page (never
//! the whole dataset in memory). It never changes a record.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tenantsync_core::{DatasetName, EntityId, InvalidInput};
use tenantsync_schema::{Compatibility, RegisterError, SchemaError, Validator};
use tenantsync_store::{Dataset, SchemaFormat, StoredSchema};

use crate::auth::{Admin, Caller};
use crate::extract::{self, ApiBody};
use crate::{ApiError, AppState};

/// Records of a violations report shown as examples; the rest are only counted.
const VIOLATION_EXAMPLES: usize = 10;
/// Records read per store call while looking for violations.
const SCAN_PAGE: usize = 500;

/// `{"schema": <JSON Schema>, "compatibility": "BACKWARD"}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = SchemaRegistration)]
#[serde(deny_unknown_fields)]
struct PutBody {
    /// A JSON Schema (draft 2020-12) of a record's data.
    schema: Value,
    /// The dataset's compatibility mode from now on.
    #[serde(default)]
    #[schema(
        pattern = "^(BACKWARD|BACKWARD_TRANSITIVE|FORWARD|FORWARD_TRANSITIVE|FULL|FULL_TRANSITIVE|NONE)$"
    )]
    compatibility: Option<String>,
}

/// The problem a refused schema gets: 422 with the pointer into the schema.
pub(crate) fn schema_error(e: SchemaError) -> ApiError {
    match e {
        SchemaError::Invalid { pointer, message } => ApiError::SchemaRefused {
            detail: format!("the schema is refused at '{pointer}': {message}"),
            errors: vec![json!({ "pointer": pointer, "message": message })],
        },
        SchemaError::Store(e) => e.into(),
    }
}

/// The problem a refused registration gets: 422 for an invalid schema, 409 listing what breaks.
pub(crate) fn register_error(e: RegisterError) -> ApiError {
    match e {
        RegisterError::Invalid(e) => schema_error(e),
        RegisterError::Incompatible { mode, breaks } => ApiError::SchemaIncompatible {
            detail: format!(
                "the schema is incompatible with the dataset's earlier versions under {}: {} change(s) break; see breaks, or change the mode with \"compatibility\"",
                mode.as_str(),
                breaks.len()
            ),
            breaks: breaks.iter().map(|b| json!(b)).collect(),
        },
        RegisterError::Store(e) => e.into(),
    }
}

/// 403 unless the caller has a scope on the dataset, then 404 unless it is declared.
async fn seen(state: &AppState, caller: &Caller, name: String) -> Result<Dataset, ApiError> {
    let name = DatasetName::new(name)?;
    if !caller.sees_dataset(&name) {
        return Err(ApiError::Forbidden(format!(
            "this token has no scope on dataset {name}"
        )));
    }
    extract::dataset(state, &name).await
}

/// A version as every answer shows it.
async fn version_json(state: &AppState, stored: &StoredSchema) -> Result<Value, ApiError> {
    let schema: Value = serde_json::from_str(&stored.schema).map_err(|e| {
        ApiError::Internal(format!(
            "schema {} of dataset {} is not JSON: {e}",
            stored.id, stored.dataset
        ))
    })?;
    let mode = state
        .schemas
        .compatibility(Some(&stored.dataset))
        .await
        .map_err(schema_error)?;
    Ok(json!({
        "dataset": stored.dataset,
        "version": stored.version,
        "id": stored.id,
        "schema": schema,
        "compatibility": mode.as_str(),
        "created_at": stored.created_at,
    }))
}

async fn json_versions(state: &AppState, dataset: &Dataset) -> Result<Vec<StoredSchema>, ApiError> {
    state
        .schemas
        .versions(&dataset.name, SchemaFormat::Json)
        .await
        .map_err(schema_error)
}

/// `PUT /v1/datasets/{dataset}/schema` with `{"schema": <JSON Schema>, "compatibility": MODE}`
/// (mode optional; given, it becomes the dataset's mode first): 201 with the new version, 200
/// with the latest when it is identical. Either way, records that violate the schema are
/// counted in `violations`, with the first examples. Needs `admin`.
#[utoipa::path(
    put,
    path = "/v1/datasets/{dataset}/schema",
    operation_id = "schemas_put",
    tag = "schemas",
    params(crate::openapi::schemas::DatasetPath),
    request_body(content = PutBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Identical to the latest version", body = crate::openapi::schemas::SchemaVersion),
        (status = 201, description = "Registered as a new version", body = crate::openapi::schemas::SchemaVersion),
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
    _: Admin,
    Path(name): Path<String>,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let name = DatasetName::new(name)?;
    let dataset = extract::dataset(&state, &name).await?;
    // Through an object first: serde would also accept the sequence form for a struct.
    let object = Value::Object(extract::json_object(&body)?);
    let PutBody {
        schema,
        compatibility,
    } = serde_json::from_value(object).map_err(|e| {
        ApiError::BadBody(format!(
            "the body must be {{\"schema\": <a JSON Schema>, \"compatibility\": \"BACKWARD\"}} (compatibility optional): {e}"
        ))
    })?;
    let compatibility = compatibility
        .map(|mode| {
            Compatibility::parse(&mode).ok_or_else(|| {
                InvalidInput::new(
                    "compatibility",
                    format!(
                        "{mode:?} is not a mode; use BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE or NONE"
                    ),
                )
            })
        })
        .transpose()?;
    let registered = state
        .schemas
        .register_json(&dataset.name, &schema, compatibility)
        .await
        .map_err(register_error)?;
    let mut answer = version_json(&state, &registered.schema).await?;
    if let Some(avro) = &registered.avro {
        answer["avro"] = json!({ "version": avro.version, "id": avro.id });
    }
    let validator = Validator::new(&schema).map_err(schema_error)?;
    let report = violations(&state, &dataset, &validator).await?;
    if report.count > 0 {
        answer["violations"] = json!({ "count": report.count, "examples": report.examples });
    }
    let status = if registered.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(answer)).into_response())
}

#[derive(Debug, Default)]
struct Violations {
    count: u64,
    examples: Vec<Value>,
}

/// Checks every live record of the dataset against `validator`, tenant by tenant, a page of
/// [`SCAN_PAGE`] records at a time.
async fn violations(
    state: &AppState,
    dataset: &Dataset,
    validator: &Validator,
) -> Result<Violations, ApiError> {
    let mut report = Violations::default();
    for (tenant, _) in state.store.tenant_ends(&dataset.name).await? {
        let mut after: Option<EntityId> = None;
        loop {
            let page = state
                .store
                .scan(&dataset.name, &tenant, after.as_ref(), SCAN_PAGE)
                .await?;
            for record in &page {
                let Some(data) = &record.data else { continue };
                if let Err(errors) = validator.validate(data) {
                    report.count += 1;
                    if report.examples.len() < VIOLATION_EXAMPLES {
                        report.examples.push(json!({
                            "tenant": record.tenant,
                            "id": record.id,
                            "errors": errors,
                        }));
                    }
                }
            }
            match page.last() {
                Some(last) if page.len() == SCAN_PAGE => after = Some(last.id.clone()),
                _ => break,
            }
        }
    }
    Ok(report)
}

/// `GET /v1/datasets/{dataset}/schema`: the latest version; 404 when the dataset has none.
#[utoipa::path(
    get,
    path = "/v1/datasets/{dataset}/schema",
    operation_id = "schemas_latest",
    tag = "schemas",
    params(crate::openapi::schemas::DatasetPath),
    responses(
        (status = 200, description = "The latest version", body = crate::openapi::schemas::SchemaVersion),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
pub async fn latest(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let dataset = seen(&state, &caller, name).await?;
    let latest = json_versions(&state, &dataset)
        .await?
        .pop()
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "dataset {0} has no schema; register one with PUT /v1/datasets/{0}/schema",
                dataset.name
            ))
        })?;
    Ok(Json(version_json(&state, &latest).await?))
}

/// `GET /v1/datasets/{dataset}/schema/versions`: every version, oldest first, without the
/// schemas.
#[utoipa::path(
    get,
    path = "/v1/datasets/{dataset}/schema/versions",
    operation_id = "schemas_versions",
    tag = "schemas",
    params(crate::openapi::schemas::DatasetPath),
    responses(
        (status = 200, description = "Every version, oldest first", body = crate::openapi::schemas::SchemaVersionList),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
pub async fn versions(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let dataset = seen(&state, &caller, name).await?;
    let versions = json_versions(&state, &dataset).await?;
    Ok(Json(json!({
        "dataset": dataset.name,
        "versions": versions.iter().map(|v| json!({
            "version": v.version,
            "id": v.id,
            "created_at": v.created_at,
        })).collect::<Vec<_>>(),
    })))
}

/// `GET /v1/datasets/{dataset}/schema/versions/{version}`: one version.
#[utoipa::path(
    get,
    path = "/v1/datasets/{dataset}/schema/versions/{version}",
    operation_id = "schemas_version",
    tag = "schemas",
    params(crate::openapi::schemas::SchemaVersionPath),
    responses(
        (status = 200, description = "The version", body = crate::openapi::schemas::SchemaVersion),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
pub async fn version(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let dataset = seen(&state, &caller, name).await?;
    let number = version
        .parse::<u32>()
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| {
            InvalidInput::new(
                "version",
                format!("{version:?} is not a version number (1, 2, ...)"),
            )
        })?;
    let stored = json_versions(&state, &dataset)
        .await?
        .into_iter()
        .find(|v| v.version == number)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "dataset {} has no schema version {number}",
                dataset.name
            ))
        })?;
    Ok(Json(version_json(&state, &stored).await?))
}
