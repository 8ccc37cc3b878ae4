//! `GET /v1/datasets/{dataset}/rejected`: the entries of a dataset's changes log that the
//! processor skipped because they are not changes (written by another producer, or corrupt),
//! each with its partition, offset and reason. Needs `admin`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};
use tenantsync_core::{DatasetName, InvalidInput};

use crate::auth::Admin;
use crate::extract::{self, ApiQuery};
use crate::{ApiError, AppState};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1_000;

/// `?after=&limit=` of a page of rejected entries (of a dataset, or of a source).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RejectedQuery {
    /// Entries after this id (the `next` of the previous page).
    pub after: Option<u64>,
    /// Entries per page: 1 to 1,000, 100 by default.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

impl RejectedQuery {
    /// The page size asked for: 100 by default, at most 1,000.
    pub fn limit(&self) -> Result<usize, ApiError> {
        match self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            Some(n) => {
                Err(InvalidInput::new("limit", format!("must be 1 to {MAX_LIMIT}, got {n}")).into())
            }
        }
    }
}

#[utoipa::path(
    get,
    path = "/v1/datasets/{dataset}/rejected",
    operation_id = "rejected_list",
    tag = "datasets",
    params(crate::openapi::schemas::DatasetPath, RejectedQuery),
    responses(
        (status = 200, description = "A page of the entries the processor skipped", body = crate::openapi::schemas::RejectedPageDoc),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    _: Admin,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<RejectedQuery>,
) -> Result<Json<Value>, ApiError> {
    let name = DatasetName::new(name)?;
    let limit = query.limit()?;
    let dataset = extract::dataset(&state, &name).await?;
    let page = state
        .store
        .rejected(&dataset.name, query.after, limit)
        .await?;
    let next = page.entries.last().map(|(id, _)| *id).or(query.after);
    Ok(Json(json!({
        "entries": page.entries.iter().map(|(id, e)| json!({
            "id": id,
            "partition": e.partition,
            "offset": e.offset,
            "reason": e.reason,
            "at": e.at,
        })).collect::<Vec<_>>(),
        "next": next,
        "dropped": page.dropped,
    })))
}
