//! Turning raw request parts into validated domain values, with errors that name the field.

use axum::body::Bytes;
use axum::extract::Query;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use tenantsync_core::{ChangeId, DatasetName, EntityId, InvalidInput, Object, TenantId};
use tenantsync_store::Dataset;

use crate::{ApiError, AppState};

/// `?wait=applied`: answer only once the processor applied the change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteQuery {
    #[serde(default)]
    pub wait: Option<Wait>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Wait {
    Applied,
}

pub fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(t)| t)
        .map_err(|e| InvalidInput::new("query", e.body_text()).into())
}

/// The dataset named in the path, which must be declared.
pub async fn dataset(state: &AppState, raw: &str) -> Result<Dataset, ApiError> {
    let name = DatasetName::new(raw)?;
    state
        .datasets
        .get(&name)
        .await?
        .ok_or_else(|| ApiError::UnknownDataset(name.to_string()))
}

pub fn tenant_and_id(tenant: &str, id: &str) -> Result<(TenantId, EntityId), ApiError> {
    Ok((TenantId::new(tenant)?, EntityId::new(id)?))
}

/// A request body, with the body-limit rejection turned into 413.
pub fn body(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::BadBody(rejection.body_text())
        }
    })
}

/// A body that must be one JSON object.
pub fn json_object(bytes: &[u8]) -> Result<Object, ApiError> {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::BadBody(
            "the body must be a JSON object, like {\"name\": \"value\"}".to_owned(),
        )),
        Err(e) => Err(ApiError::BadBody(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

/// `Idempotency-Key`, `If-Match: "<version>"` and `If-None-Match: *`.
pub struct Preconditions {
    pub change_id: Option<ChangeId>,
    pub expected_version: Option<u64>,
}

pub fn preconditions(headers: &HeaderMap) -> Result<Preconditions, ApiError> {
    let text = |name: &'static str| -> Result<Option<&str>, ApiError> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map(str::trim)
                    .map_err(|_| InvalidInput::new(name, "must be visible ASCII").into())
            })
            .transpose()
    };
    let change_id = text("Idempotency-Key")?
        .map(|k| ChangeId::new(k).map_err(|e| InvalidInput::new("Idempotency-Key", e.reason)))
        .transpose()?;
    let if_match = text("If-Match")?
        .map(|v| {
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v)
                .parse::<u64>()
                .ok()
                .filter(|&v| v >= 1)
                .ok_or_else(|| {
                    InvalidInput::new(
                        "If-Match",
                        format!(
                            "{v:?} is not a record version; send the ETag of a GET, like \"3\""
                        ),
                    )
                })
        })
        .transpose()?;
    let if_none_match = match text("If-None-Match")? {
        None => None,
        Some("*") => Some(0),
        Some(v) => {
            return Err(InvalidInput::new(
                "If-None-Match",
                format!("{v:?} is not supported; only * (create only if absent) is"),
            )
            .into());
        }
    };
    let expected_version = match (if_match, if_none_match) {
        (Some(_), Some(_)) => {
            return Err(InvalidInput::new(
                "If-None-Match",
                "send either If-Match or If-None-Match, not both",
            )
            .into());
        }
        (a, b) => a.or(b),
    };
    Ok(Preconditions {
        change_id,
        expected_version,
    })
}
