//! Turning raw request parts into validated domain values, with errors that name the field.
//!
//! The extractors [`ApiQuery`] and [`ApiBody`] reject with an [`ApiError`], so a malformed query
//! or body renders as problem+json like every other error; handlers never see axum's own
//! rejections. Extractors run in the order of a handler's arguments: a handler puts the one
//! that checks the caller's scope ([`Allowed`], [`Admin`](crate::auth::Admin)) before them, so
//! that a caller without the scope gets 403 whatever else is wrong with its request.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tenantsync_auth::Access;
use tenantsync_core::{ChangeId, DatasetName, EntityId, InvalidInput, Object, TenantId};
use tenantsync_store::Dataset;

use crate::auth::Caller;
use crate::{ApiError, AppState};

/// `?wait=applied`: answer only once the processor applied the change.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WriteQuery {
    /// `applied`: answer once the processor applied the change, with the record.
    #[serde(default)]
    #[param(inline)]
    pub wait: Option<Wait>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Wait {
    Applied,
}

/// A query parameter given in seconds: `default` when absent, capped at `max`; 400 naming
/// `field` unless a finite number `>= 0`.
pub fn seconds(
    field: &'static str,
    value: Option<f64>,
    default: Duration,
    max: Duration,
) -> Result<Duration, ApiError> {
    match value {
        None => Ok(default),
        // Past what a Duration holds is past `max` too.
        Some(s) if s.is_finite() && s >= 0.0 => {
            Ok(Duration::try_from_secs_f64(s).map_or(max, |d| d.min(max)))
        }
        Some(s) => Err(InvalidInput::new(
            field,
            format!("must be a number of seconds >= 0, got {s}"),
        )
        .into()),
    }
}

/// The query string, deserialized; 400 naming `query` when it does not fit `T`.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::from_request_parts(parts, state)
            .await
            .map(|Query(t)| ApiQuery(t))
            .map_err(|e| InvalidInput::new("query", e.body_text()).into())
    }
}

/// The request body, at most [`ApiConfig::max_body_bytes`](crate::ApiConfig) long: a longer
/// one, announced or streamed, gets 413. The one place request bodies are read.
#[derive(Debug)]
pub struct ApiBody(pub Bytes);

impl FromRequest<Arc<AppState>> for ApiBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let limit = state.config.max_body_bytes;
        let request =
            request.map(|body| axum::body::Body::new(http_body_util::Limited::new(body, limit)));
        Bytes::from_request(request, state)
            .await
            .map(ApiBody)
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge { limit }
                } else {
                    ApiError::BadBody(rejection.body_text())
                }
            })
    }
}

/// The dataset, which must be declared.
pub async fn dataset(state: &AppState, name: &DatasetName) -> Result<Dataset, ApiError> {
    state
        .datasets
        .get(name)
        .await?
        .ok_or_else(|| ApiError::UnknownDataset(name.to_string()))
}

/// The dataset and tenant named in the path, once the caller is known to have `access` to
/// them: 400 for a malformed name, then 403 without the scope, and only then 404 for a dataset
/// that is not declared, so that a caller learns nothing about datasets it may not see.
pub async fn authorized(
    state: &AppState,
    caller: &Caller,
    access: Access,
    dataset: &str,
    tenant: &str,
) -> Result<(Dataset, TenantId), ApiError> {
    let (name, tenant) = (DatasetName::new(dataset)?, TenantId::new(tenant)?);
    caller.require(access, &name, &tenant)?;
    Ok((self::dataset(state, &name).await?, tenant))
}

/// A check of the caller's access to what the path names, run by the extractor [`Allowed`].
pub trait AccessCheck {
    /// What the check hands to the handler once it passed.
    type Granted: Send;

    fn check(
        state: &AppState,
        caller: Caller,
        path: &PathParams,
    ) -> impl Future<Output = Result<Self::Granted, ApiError>> + Send;
}

/// What the check `C` grants. A malformed path gets axum's own answer, as from a `Path`
/// argument; a failed check its [`ApiError`].
#[derive(Debug)]
pub struct Allowed<C: AccessCheck>(pub C::Granted);

impl<C: AccessCheck> FromRequestParts<Arc<AppState>> for Allowed<C> {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Response> {
        let caller = Caller::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        C::check(state, caller, &PathParams(params))
            .await
            .map(Allowed)
            .map_err(IntoResponse::into_response)
    }
}

/// The path's parameters by name.
pub struct PathParams(HashMap<String, String>);

impl PathParams {
    /// The parameter, or "" when the route has none of that name (which no name accepts).
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", String::as_str)
    }
}

/// The caller, and the declared dataset and tenant the path's `{dataset}` and `{tenant}` name.
#[derive(Debug)]
pub struct Tenant {
    pub caller: Caller,
    pub dataset: Dataset,
    pub tenant: TenantId,
}

/// Which [`Access`] a [`TenantAccess`] checks: [`Read`] or [`Write`].
pub trait AccessKind {
    const ACCESS: Access;
}

#[derive(Debug)]
pub enum Read {}

impl AccessKind for Read {
    const ACCESS: Access = Access::Read;
}

#[derive(Debug)]
pub enum Write {}

impl AccessKind for Write {
    const ACCESS: Access = Access::Write;
}

/// [`authorized`] for `A` on the tenant the path's `{dataset}` and `{tenant}` name.
#[derive(Debug)]
pub struct TenantAccess<A>(PhantomData<A>);

impl<A: AccessKind> AccessCheck for TenantAccess<A> {
    type Granted = Tenant;

    async fn check(
        state: &AppState,
        caller: Caller,
        path: &PathParams,
    ) -> Result<Tenant, ApiError> {
        let (dataset, tenant) = authorized(
            state,
            &caller,
            A::ACCESS,
            path.get("dataset"),
            path.get("tenant"),
        )
        .await?;
        Ok(Tenant {
            caller,
            dataset,
            tenant,
        })
    }
}

/// An `Idempotency-Key` a writer sent: ids with the reserved prefix are tenantsync's own.
pub fn writer_change_id(field: &'static str, key: &str) -> Result<ChangeId, InvalidInput> {
    let id = ChangeId::new(key).map_err(|e| InvalidInput::new(field, e.reason))?;
    if id.is_reserved() {
        return Err(InvalidInput::new(
            field,
            format!(
                "keys starting with {:?} are reserved for tenantsync's own changes",
                ChangeId::RESERVED_PREFIX
            ),
        ));
    }
    Ok(id)
}

pub fn tenant_and_id(tenant: &str, id: &str) -> Result<(TenantId, EntityId), ApiError> {
    Ok((TenantId::new(tenant)?, EntityId::new(id)?))
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
        .map(|k| writer_change_id("Idempotency-Key", k))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_past_what_a_duration_holds_are_capped_not_a_panic() {
        let max = Duration::from_secs(30);
        for huge in [1.8446744073709552e19, f64::MAX] {
            assert_eq!(
                seconds("wait", Some(huge), Duration::ZERO, max).unwrap(),
                max
            );
        }
        assert_eq!(
            seconds("wait", Some(0.5), Duration::ZERO, max).unwrap(),
            Duration::from_millis(500)
        );
        assert!(seconds("wait", Some(f64::NAN), Duration::ZERO, max).is_err());
        assert!(seconds("wait", Some(-1.0), Duration::ZERO, max).is_err());
    }
}
