//! `/v1/datasets`: declare and inspect datasets.

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
use crate::{ApiError, AppState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeclareBody {
    partitions: u32,
}

fn dataset_json(d: &Dataset) -> serde_json::Value {
    json!({"name": d.name, "partitions": d.partitions})
}

/// `PUT /v1/datasets/{dataset}` with `{"partitions": N}`: 201 when created, 200 when it existed
/// with the same partition count, 409 when it exists with another. Needs `admin`.
pub async fn declare(
    State(state): State<Arc<AppState>>,
    _: Admin,
    Path(name): Path<String>,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let name = DatasetName::new(name)?;
    // Through an object first: serde would also accept the sequence form `[8]` for a struct.
    let object = serde_json::Value::Object(extract::json_object(&body)?);
    let DeclareBody { partitions } = serde_json::from_value(object).map_err(|e| {
        ApiError::BadBody(format!(
            "the body must be {{\"partitions\": N}} with N from 1 to {MAX_PARTITIONS}: {e}"
        ))
    })?;
    let dataset = Dataset { name, partitions };
    let status = match state.datasets.declare(&dataset).await? {
        Declared::Created => StatusCode::CREATED,
        Declared::Existing => StatusCode::OK,
    };
    Ok((status, Json(dataset_json(&dataset))).into_response())
}

/// `GET /v1/datasets/{dataset}`: the dataset and, per partition, how far the processor got:
/// `end_offset` of the changes log, `applied` (the master store's position) and `committed`
/// (the processor group's position, reached once the states are published). The processor has
/// caught up when all three are equal. Open to a caller with any scope on the dataset.
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
    let mut body = dataset_json(&dataset);
    body["progress"] = json!(partitions);
    Ok(Json(body).into_response())
}

/// `GET /v1/datasets`: the datasets the caller has a scope on.
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let all = state.datasets.all().await?;
    let all: Vec<_> = all
        .iter()
        .filter(|d| caller.sees_dataset(&d.name))
        .map(dataset_json)
        .collect();
    Ok(Json(json!({ "datasets": all })).into_response())
}
