//! The API's one error type and its RFC 9457 rendering. Details of internal failures are logged
//! here and never sent to the client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tenantsync_batcher::BatchesError;
use tenantsync_core::InvalidInput;
use tenantsync_dataset::DatasetError;
use tenantsync_feed::FeedError;
use tenantsync_feed::subscriptions::SubscriptionError;
use tenantsync_log::LogError;
use tenantsync_schema::{SchemaError, Violation};
use tenantsync_store::StoreError;
use tracing::error;

#[derive(Debug)]
#[non_exhaustive]
pub enum ApiError {
    /// A path segment, header, query parameter or body field is not acceptable.
    Invalid(InvalidInput),
    /// The body is not what the route takes (malformed JSON, not an object, ...).
    BadBody(String),
    /// A field of a body, named by its path (`columns.tenant`), is not acceptable (400).
    InvalidField {
        field: String,
        detail: String,
    },
    /// The body is well formed but cannot work, as found by checking it against the systems it
    /// names (an unreachable database, a missing table): 422.
    CheckFailed(String),
    /// As [`CheckFailed`](ApiError::CheckFailed), for one field of the body, named (a webhook
    /// URL the SSRF guard refuses): 422.
    FieldRefused {
        field: String,
        detail: String,
    },
    UnknownDataset(String),
    NotFound(String),
    /// The change's precondition failed.
    VersionConflict {
        detail: String,
        current_version: u64,
    },
    /// The change's id (its idempotency key) already belongs to a change of another record of
    /// the tenant: applying it would be mistaken for a duplicate, so it is refused. `field`
    /// names where the key came from (`Idempotency-Key`, or a bulk line's `idempotency_key`).
    KeyReused {
        field: &'static str,
        detail: String,
    },
    /// The change's data violates the dataset's latest schema (422): `errors` says where, each
    /// with a JSON pointer into the data; empty when the violations are no longer known (a patch
    /// rejected at apply time, when the data it was checked against has changed since).
    SchemaViolation {
        detail: String,
        errors: Vec<Violation>,
    },
    /// The dataset exists with another partition count.
    Conflict(String),
    PayloadTooLarge {
        limit: usize,
    },
    /// Accepted, durably logged, but not applied within the wait.
    ApplyTimeout {
        change_id: String,
        status_url: String,
    },
    /// The feed position is past tombstone retention: start over from a snapshot.
    Gone(String),
    /// No credentials, or credentials that do not identify a caller (401).
    Unauthenticated(String),
    /// The caller is known but its scopes do not cover the request (403).
    Forbidden(String),
    /// The tenant wrote faster than its quota allows; retry after the given time (429).
    RateLimited {
        tenant: String,
        retry_after: std::time::Duration,
    },
    /// One request carries more changes of a tenant than its burst: it can never pass (413).
    OverBurst {
        tenant: String,
        changes: u32,
        burst: u32,
    },
    /// The tenant is being erased: its writes are refused until the erasure finishes (409).
    TenantErasing(String),
    /// The log or the store failed with a transient error (503 with `Retry-After`): the client
    /// is told which, the detail is logged, not sent.
    Unavailable {
        what: &'static str,
        detail: String,
    },
    /// Anything else that is not the caller's fault (500): the detail is logged, not sent.
    Internal(String),
    MethodNotAllowed,
    /// A schema tenantsync does not accept (not valid, a remote `$ref`, no Avro equivalent):
    /// 422 with `errors: [{"pointer", "message"}]`, pointers into the schema.
    SchemaRefused {
        detail: String,
        errors: Vec<Value>,
    },
    /// A schema that breaks the dataset's compatibility mode: 409 with
    /// `breaks: [{"pointer", "version", "message"}]`.
    SchemaIncompatible {
        detail: String,
        breaks: Vec<Value>,
    },
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, String, Map<String, Value>) {
        let mut ext = Map::new();
        let (status, kind, detail) = match self {
            ApiError::Invalid(e) => {
                ext.insert("field".into(), json!(e.field));
                (StatusCode::BAD_REQUEST, "invalid-input", e.to_string())
            }
            ApiError::BadBody(d) => (StatusCode::BAD_REQUEST, "invalid-body", d.clone()),
            ApiError::InvalidField { field, detail } => {
                ext.insert("field".into(), json!(field));
                (
                    StatusCode::BAD_REQUEST,
                    "invalid-input",
                    format!("{field}: {detail}"),
                )
            }
            ApiError::CheckFailed(d) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "check-failed", d.clone())
            }
            ApiError::FieldRefused { field, detail } => {
                ext.insert("field".into(), json!(field));
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "check-failed",
                    format!("{field}: {detail}"),
                )
            }
            ApiError::UnknownDataset(d) => (
                StatusCode::NOT_FOUND,
                "unknown-dataset",
                format!(
                    "dataset {d} is not declared; declare it with PUT /v1/datasets/{d} and a body like {{\"partitions\": 8}}"
                ),
            ),
            ApiError::NotFound(d) => (StatusCode::NOT_FOUND, "not-found", d.clone()),
            ApiError::VersionConflict {
                detail,
                current_version,
            } => {
                ext.insert("current_version".into(), json!(current_version));
                (StatusCode::CONFLICT, "version-conflict", detail.clone())
            }
            ApiError::KeyReused { field, detail } => {
                ext.insert("field".into(), json!(field));
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "key-reused",
                    detail.clone(),
                )
            }
            ApiError::SchemaViolation { detail, errors } => {
                ext.insert("errors".into(), json!(errors));
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "schema-violation",
                    detail.clone(),
                )
            }
            ApiError::Conflict(d) => (StatusCode::CONFLICT, "conflict", d.clone()),
            ApiError::PayloadTooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                format!(
                    "the request body is larger than the limit of {limit} bytes; split it or raise max_body_bytes"
                ),
            ),
            ApiError::ApplyTimeout {
                change_id,
                status_url,
            } => {
                ext.insert("change_id".into(), json!(change_id));
                ext.insert("status_url".into(), json!(status_url));
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    "apply-timeout",
                    format!(
                        "change {change_id} is durably accepted but was not applied in time; poll {status_url} for its outcome"
                    ),
                )
            }
            ApiError::Gone(d) => (StatusCode::GONE, "cursor-gone", d.clone()),
            ApiError::Unauthenticated(d) => {
                (StatusCode::UNAUTHORIZED, "unauthenticated", d.clone())
            }
            ApiError::Forbidden(d) => (StatusCode::FORBIDDEN, "forbidden", d.clone()),
            ApiError::RateLimited {
                tenant,
                retry_after,
            } => {
                ext.insert(
                    "retry_after_secs".into(),
                    json!(retry_after_secs(*retry_after)),
                );
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    format!(
                        "tenant {tenant} is writing faster than its quota; retry after {} s",
                        retry_after_secs(*retry_after)
                    ),
                )
            }
            ApiError::OverBurst {
                tenant,
                changes,
                burst,
            } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "over-burst",
                format!(
                    "the request carries {changes} changes of tenant {tenant}, more than its burst of {burst}; send at most {burst} per request"
                ),
            ),
            ApiError::TenantErasing(tenant) => (
                StatusCode::CONFLICT,
                "tenant-erasing",
                format!(
                    "tenant {tenant} is being erased; its writes are refused until the erasure finishes (GET /v1/tenants/{tenant}/erasure)"
                ),
            ),
            ApiError::Unavailable { what, .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("the {what} is unavailable; retry shortly"),
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "an internal error occurred; it has been logged".to_owned(),
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "this route does not support that method".to_owned(),
            ),
            ApiError::SchemaRefused { detail, errors } => {
                ext.insert("errors".into(), json!(errors));
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid-schema",
                    detail.clone(),
                )
            }
            ApiError::SchemaIncompatible { detail, breaks } => {
                ext.insert("breaks".into(), json!(breaks));
                (StatusCode::CONFLICT, "incompatible-schema", detail.clone())
            }
        };
        (status, kind, detail, ext)
    }
}

impl ApiError {
    /// The problem document (RFC 9457) and its status. Internal details are logged here.
    pub(crate) fn problem(&self) -> (StatusCode, Value) {
        if let ApiError::Internal(detail) | ApiError::Unavailable { detail, .. } = self {
            error!(%detail, "request failed");
        }
        let (status, kind, detail, ext) = self.parts();
        let mut body = json!({
            "type": format!("urn:tenantsync:problem:{kind}"),
            "title": status.canonical_reason().unwrap_or("error"),
            "status": status.as_u16(),
            "detail": detail,
        });
        body.as_object_mut().expect("object").extend(ext);
        (status, body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.problem();
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match &self {
            ApiError::Unavailable { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::RateLimited { retry_after, .. } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs(*retry_after)),
                );
            }
            ApiError::Unauthenticated(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"tenantsync\""),
                );
            }
            _ => {}
        }
        response
    }
}

/// `Retry-After` is whole seconds: rounded up, so a client that waits that long gets through.
fn retry_after_secs(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl From<InvalidInput> for ApiError {
    fn from(e: InvalidInput) -> Self {
        ApiError::Invalid(e)
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        if e.is_transient() {
            ApiError::Unavailable {
                what: "log",
                detail: e.to_string(),
            }
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::DatasetMismatch { .. } => ApiError::Conflict(e.to_string()),
            e if e.is_transient() => ApiError::Unavailable {
                what: "master store",
                detail: e.to_string(),
            },
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<DatasetError> for ApiError {
    fn from(e: DatasetError) -> Self {
        match e {
            DatasetError::Log(e) => e.into(),
            DatasetError::Store(e) => e.into(),
            e @ DatasetError::InvalidPartitions { .. } => ApiError::BadBody(e.to_string()),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl ApiError {
    /// A failure to read a dataset's contract to check a write against: never the writer's
    /// fault (a stored schema that does not compile is an internal error).
    pub(crate) fn contract(e: SchemaError) -> Self {
        match e {
            SchemaError::Store(e) => e.into(),
            e @ SchemaError::Invalid { .. } => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<FeedError> for ApiError {
    fn from(e: FeedError) -> Self {
        match e {
            FeedError::Gone => ApiError::Gone(format!(
                "{e}: request the feed again without a cursor, and replace your copy of the tenant with what it returns"
            )),
            FeedError::Store(e) => e.into(),
        }
    }
}

impl ApiError {
    /// A copy of a quota refusal ([`RateLimited`](ApiError::RateLimited) or
    /// [`OverBurst`](ApiError::OverBurst)), for each line of the refused tenant.
    pub(crate) fn clone_quota(&self) -> ApiError {
        match self {
            ApiError::RateLimited {
                tenant,
                retry_after,
            } => ApiError::RateLimited {
                tenant: tenant.clone(),
                retry_after: *retry_after,
            },
            ApiError::OverBurst {
                tenant,
                changes,
                burst,
            } => ApiError::OverBurst {
                tenant: tenant.clone(),
                changes: *changes,
                burst: *burst,
            },
            other => ApiError::Internal(format!("not a quota refusal: {other:?}")),
        }
    }

    /// A subscription operation's error; `field` names where a refused cursor came from.
    pub(crate) fn subscription(e: SubscriptionError, field: &'static str) -> Self {
        match e {
            SubscriptionError::Cursor(e) => InvalidInput::new(field, e.to_string()).into(),
            SubscriptionError::Gone => ApiError::NotFound(e.to_string()),
            SubscriptionError::Store(e) => e.into(),
        }
    }
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; see the README for the API".to_owned())
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

impl From<BatchesError> for ApiError {
    fn from(e: BatchesError) -> Self {
        match e {
            BatchesError::Log(e) => e.into(),
            BatchesError::Store(e) => e.into(),
            e => ApiError::Internal(e.to_string()),
        }
    }
}
