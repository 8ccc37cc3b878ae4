//! `/v1/datasets`: declare and inspect datasets, and the formats their states are published in
//! (`json` always; `avro` on request, which creates the Avro state topic and turns Avro
//! publishing on in the dataset's contract).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tenantsync_core::DatasetName;
use tenantsync_dataset::{Declared, MAX_PARTITIONS};
use tenantsync_store::Dataset;

use crate::auth::{Admin, Caller};
use crate::extract::{self, ApiBody};
use crate::{ApiError, AppState, schemas};

/// `{"partitions": N}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = DatasetDeclaration)]
#[serde(deny_unknown_fields)]
struct DeclareBody {
    /// The dataset's partition count, fixed once declared.
    #[schema(minimum = 1, maximum = 1024)]
    partitions: u32,
    /// `["json"]` (the default) or `["json", "avro"]`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    formats: Option<serde_json::Value>,
}

/// Whether `formats` asks for Avro: it must hold `json`, and nothing but `json` and `avro`,
/// each once. Absent means `["json"]`.
fn wants_avro(formats: Option<&serde_json::Value>) -> Result<bool, ApiError> {
    let Some(formats) = formats else {
        return Ok(false);
    };
    let refused = |detail: String| ApiError::InvalidField {
        field: "formats".to_owned(),
        detail,
    };
    let formats: Vec<String> = serde_json::from_value(formats.clone()).map_err(|_| {
        refused(format!(
            "{formats} is not a list of formats, like [\"json\", \"avro\"]"
        ))
    })?;
    for (i, format) in formats.iter().enumerate() {
        if format != "json" && format != "avro" {
            return Err(refused(format!(
                "{format:?} is not a format; use [\"json\"] or [\"json\", \"avro\"]"
            )));
        }
        if formats[..i].contains(format) {
            return Err(refused(format!("{format:?} is given twice")));
        }
    }
    if !formats.iter().any(|f| f == "json") {
        return Err(refused(
            "states are always published as json; use [\"json\"] or [\"json\", \"avro\"]"
                .to_owned(),
        ));
    }
    Ok(formats.iter().any(|f| f == "avro"))
}

fn dataset_json(d: &Dataset, avro: bool) -> serde_json::Value {
    let formats: &[&str] = if avro { &["json", "avro"] } else { &["json"] };
    json!({"name": d.name, "partitions": d.partitions, "formats": formats})
}

/// Whether the dataset's states are also published as Avro, as its contract settings in the
/// store say.
pub(crate) async fn avro_on(state: &AppState, name: &DatasetName) -> Result<bool, ApiError> {
    Ok(state.store.contract_settings(name).await?.avro)
}

/// `PUT /v1/datasets/{dataset}` with `{"partitions": N, "formats": ["json", "avro"]}`
/// (formats optional, `["json"]` by default): 201 when created, 200 when it existed with the
/// same partition count, 409 when it exists with another. Asking for Avro creates the Avro
/// state topic and turns Avro publishing on (422 when the latest schema has no Avro
/// equivalent); declaring without it turns it off. Needs `admin`.
#[utoipa::path(
    put,
    path = "/v1/datasets/{dataset}",
    operation_id = "datasets_declare",
    tag = "datasets",
    params(crate::openapi::schemas::DatasetPath),
    request_body(content = DeclareBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The dataset existed with this partition count", body = crate::openapi::schemas::DatasetDoc),
        (status = 201, description = "The dataset was declared", body = crate::openapi::schemas::DatasetDoc),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::UnprocessableContent),
    )
)]
pub async fn declare(
    State(state): State<Arc<AppState>>,
    _: Admin,
    Path(name): Path<String>,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let name = DatasetName::new(name)?;
    // Through an object first: serde would also accept the sequence form `[8]` for a struct.
    let object = serde_json::Value::Object(extract::json_object(&body)?);
    let DeclareBody {
        partitions,
        formats,
    } = serde_json::from_value(object).map_err(|e| {
        ApiError::BadBody(format!(
            "the body must be {{\"partitions\": N, \"formats\": [\"json\", \"avro\"]}} with N from 1 to {MAX_PARTITIONS} (formats optional): {e}"
        ))
    })?;
    let avro = wants_avro(formats.as_ref())?;
    let dataset = Dataset { name, partitions };
    let status = match state.datasets.declare(&dataset).await? {
        Declared::Created => StatusCode::CREATED,
        Declared::Existing => StatusCode::OK,
    };
    if avro {
        state.datasets.ensure_avro_topic(&dataset).await?;
    }
    // Only a change of the setting goes through the contract: it bumps every instance's cache.
    if avro || avro_on(&state, &dataset.name).await? {
        state
            .schemas
            .set_avro(&dataset.name, avro)
            .await
            .map_err(|e| match schemas::register_error(e) {
                ApiError::SchemaRefused { detail, errors } => ApiError::SchemaRefused {
                    detail: format!(
                        "formats: avro needs an Avro equivalent of the dataset's latest schema; {detail}"
                    ),
                    errors,
                },
                e => e,
            })?;
    }
    Ok((status, Json(dataset_json(&dataset, avro))).into_response())
}

/// `GET /v1/datasets/{dataset}`: the dataset and, per partition, how far the processor got:
/// `end_offset` of the changes log, `applied` (the master store's position) and `committed`
/// (the processor group's position, reached once the states are published). The processor has
/// caught up when all three are equal. Open to a caller with any scope on the dataset.
#[utoipa::path(
    get,
    path = "/v1/datasets/{dataset}",
    operation_id = "datasets_show",
    tag = "datasets",
    params(crate::openapi::schemas::DatasetPath),
    responses(
        (status = 200, description = "The dataset and the processor's progress per partition", body = crate::openapi::schemas::DatasetProgress),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
pub async fn show(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let name = DatasetName::new(name)?;
    if !caller.sees_dataset(&name) {
        return Err(ApiError::Forbidden(format!(
            "this token has no scope on dataset {name}"
        )));
    }
    let dataset = extract::dataset(&state, &name).await?;
    let topic = state.datasets.topics().changes(&dataset.name);
    let mut partitions = Vec::with_capacity(dataset.partitions as usize);
    for p in 0..dataset.partitions {
        let end = state.log.end_offset(&topic, p).await?;
        let applied = state.store.position(&dataset.name, p).await?;
        let committed = state
            .log
            .committed(&state.datasets.topics().processor_group(), &topic, p)
            .await?
            .unwrap_or(0);
        partitions.push(json!({
            "partition": p, "end_offset": end, "applied": applied, "committed": committed,
        }));
    }
    let mut body = dataset_json(&dataset, avro_on(&state, &dataset.name).await?);
    body["progress"] = json!(partitions);
    Ok(Json(body).into_response())
}

/// `GET /v1/datasets`: the datasets the caller has a scope on.
#[utoipa::path(
    get,
    path = "/v1/datasets",
    operation_id = "datasets_list",
    tag = "datasets",
    responses(
        (status = 200, description = "The datasets the caller has a scope on", body = crate::openapi::schemas::DatasetList),
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let mut shown = Vec::new();
    for d in state.datasets.all().await? {
        if caller.sees_dataset(&d.name) {
            shown.push(dataset_json(&d, avro_on(&state, &d.name).await?));
        }
    }
    Ok(Json(json!({ "datasets": shown })).into_response())
}
