//! `/v1/subscriptions`: named subscriptions over datasets and tenants, their single-tenant
//! batches, acknowledgements and lag.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use tenantsync_core::{DatasetName, InvalidInput, SubscriptionName, TenantId};
use tenantsync_feed::change_json;
use tenantsync_feed::subscriptions::{self, Batch};
use tenantsync_store::{Subscription, TenantSelection};

use crate::admin::audit;
use crate::auth::Caller;
use crate::extract::{self, AccessCheck, Allowed, ApiBody, ApiQuery, PathParams};
use crate::feed::FeedQuery;
use crate::metrics::Gauge;
use crate::revocation::TokenWatch;
use crate::{ApiError, AppState};

/// Records counted per lagging tenant in a subscription's `lag`.
const LAG_COUNT_LIMIT: usize = 10_000;

/// `PUT` body: `{"datasets": ["inventory"], "tenants": ["acme", "globex"] | "*"}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = SubscriptionSpec)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[schema(schema_with = crate::openapi::schemas::slug_list, min_items = 1)]
    datasets: Vec<DatasetName>,
    #[schema(value_type = crate::openapi::schemas::Tenants)]
    tenants: Tenants,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Tenants {
    List(Vec<TenantId>),
    All(String),
}

fn subscription_json(s: &Subscription) -> Value {
    json!({
        "name": s.name,
        "datasets": s.datasets,
        "tenants": match &s.tenants {
            TenantSelection::All => json!("*"),
            TenantSelection::Only(t) => json!(t),
        },
        "created_at": s.created_at,
    })
}

/// The subscription named, if the caller may read everything it covers (else 403).
async fn find(state: &AppState, caller: &Caller, name: &str) -> Result<Subscription, ApiError> {
    let name = SubscriptionName::new(name)?;
    let subscription = state
        .store
        .subscription(&name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("subscription {name} does not exist")))?;
    caller.require_subscription(&subscription)?;
    Ok(subscription)
}

/// The subscription the path's `{name}` names, as [`find`] finds it.
pub enum ReadSubscription {}

impl AccessCheck for ReadSubscription {
    type Granted = Subscription;

    async fn check(
        state: &AppState,
        caller: Caller,
        path: &PathParams,
    ) -> Result<Subscription, ApiError> {
        find(state, &caller, path.get("name")).await
    }
}

/// `PUT /v1/subscriptions/{name}`: creates or updates a subscription. The caller must be
/// allowed to read every dataset and tenant it covers, and, when it exists, everything it
/// covered before.
#[utoipa::path(
    put,
    path = "/v1/subscriptions/{name}",
    operation_id = "subscriptions_put",
    tag = "subscriptions",
    params(crate::openapi::schemas::NamePath),
    request_body(content = Spec, content_type = "application/json"),
    responses(
        (status = 200, description = "Updated", body = crate::openapi::schemas::SubscriptionDoc),
        (status = 201, description = "Created", body = crate::openapi::schemas::SubscriptionDoc),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 413, response = crate::openapi::PayloadTooLarge),
    )
)]
pub async fn put(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let name = SubscriptionName::new(name)?;
    let spec: Spec = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadBody(format!(
            "expected {{\"datasets\": [\"inventory\"], \"tenants\": [\"acme\"] or \"*\"}}: {e}"
        ))
    })?;
    let mut datasets = spec.datasets;
    datasets.sort_unstable();
    datasets.dedup();
    if datasets.is_empty() {
        return Err(InvalidInput::new("datasets", "name at least one dataset").into());
    }
    let tenants = match spec.tenants {
        Tenants::All(s) if s == "*" => TenantSelection::All,
        Tenants::All(s) => {
            return Err(InvalidInput::new(
                "tenants",
                format!("{s:?} is neither a list of tenant ids nor \"*\" (all tenants)"),
            )
            .into());
        }
        Tenants::List(mut list) => {
            list.sort_unstable();
            list.dedup();
            if list.is_empty() {
                return Err(
                    InvalidInput::new("tenants", "name at least one tenant, or \"*\"").into(),
                );
            }
            TenantSelection::Only(list)
        }
    };
    if !caller.reads_subscription(&datasets, &tenants) {
        return Err(ApiError::Forbidden(
            "this token may not read every dataset and tenant the subscription would cover"
                .to_owned(),
        ));
    }
    if let Some(existing) = state.store.subscription(&name).await? {
        caller.require_subscription(&existing)?;
    }
    for dataset in &datasets {
        extract::dataset(&state, dataset).await?;
    }
    let (stored, created) = state
        .store
        .put_subscription(&Subscription {
            name,
            datasets,
            tenants,
            created_at: Utc::now(),
        })
        .await?;
    audit(
        state.store.as_ref(),
        caller.subject(),
        if created {
            "subscription.created"
        } else {
            "subscription.updated"
        },
        stored.name.as_str(),
        subscription_json(&stored),
    )
    .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(subscription_json(&stored))).into_response())
}

/// `GET /v1/subscriptions`: the subscriptions the caller may read.
#[utoipa::path(
    get,
    path = "/v1/subscriptions",
    operation_id = "subscriptions_list",
    tag = "subscriptions",
    responses(
        (status = 200, description = "The subscriptions the caller may read", body = crate::openapi::schemas::SubscriptionList),
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let all = state.store.subscriptions().await?;
    Ok(Json(json!({
        "subscriptions": all
            .iter()
            .filter(|s| caller.reads_subscription(&s.datasets, &s.tenants))
            .map(subscription_json)
            .collect::<Vec<_>>()
    })))
}

#[utoipa::path(
    get,
    path = "/v1/subscriptions/{name}",
    operation_id = "subscriptions_show",
    tag = "subscriptions",
    params(crate::openapi::schemas::NamePath),
    responses(
        (status = 200, description = "The subscription and its lag", body = crate::openapi::schemas::SubscriptionDetail),
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
    let subscription = find(&state, &caller, &name).await?;
    let lag = subscriptions::lag(
        state.store.as_ref(),
        &state.hub,
        &subscription,
        LAG_COUNT_LIMIT,
    )
    .await?;
    let mut body = subscription_json(&subscription);
    body["lag"] = json!(
        lag.iter()
            .map(|l| json!({
                "dataset": l.dataset,
                "tenant": l.tenant,
                "changes": l.changes,
                "seconds": l.seconds,
                "reset_pending": l.reset_pending,
            }))
            .collect::<Vec<_>>()
    );
    Ok(Json(body))
}

#[utoipa::path(
    delete,
    path = "/v1/subscriptions/{name}",
    operation_id = "subscriptions_delete",
    tag = "subscriptions",
    params(crate::openapi::schemas::NamePath),
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
    let subscription = find(&state, &caller, &name).await?;
    if state.store.delete_subscription(&subscription.name).await? {
        audit(
            state.store.as_ref(),
            caller.subject(),
            "subscription.deleted",
            subscription.name.as_str(),
            json!({}),
        )
        .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The next batch: one tenant's changes. `?cursor=` acknowledges the previous batch first.
/// `204 No Content` when nothing is pending after `?wait=`.
#[utoipa::path(
    get,
    path = "/v1/subscriptions/{name}/changes",
    operation_id = "subscriptions_changes",
    tag = "subscriptions",
    params(crate::openapi::schemas::NamePath, FeedQuery),
    responses(
        (status = 200, description = "The next batch: one tenant's changes", body = crate::openapi::schemas::SubscriptionBatch),
        (status = 204, description = "Nothing pending within `wait`"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
pub async fn changes(
    State(state): State<Arc<AppState>>,
    Allowed(subscription): Allowed<ReadSubscription>,
    ApiQuery(query): ApiQuery<FeedQuery>,
    token: TokenWatch,
) -> Result<Response, ApiError> {
    let (limit, wait) = (query.limit(&state)?, query.wait(&state)?);
    if let Some(cursor) = &query.cursor {
        subscriptions::ack(
            state.store.as_ref(),
            &state.cursor_key,
            &subscription,
            cursor,
        )
        .await
        .map_err(|e| ApiError::subscription(e, "cursor"))?;
    }
    let batch = {
        let _waiting = (!wait.is_zero()).then(|| Gauge::hold(&state.metrics.long_polls));
        let next =
            subscriptions::next_batch(state.store.as_ref(), &state.hub, &subscription, limit, wait);
        token
            .guard(next)
            .await?
            .map_err(|e| ApiError::subscription(e, "cursor"))?
    };
    let Some(batch) = batch else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    state
        .metrics
        .delivered_subscription
        .fetch_add(batch.records.len() as u64, Ordering::Relaxed);
    Ok(Json(batch_json(&state, &batch)).into_response())
}

fn batch_json(state: &AppState, batch: &Batch) -> Value {
    json!({
        "dataset": batch.dataset,
        "tenant": batch.tenant,
        "reset": batch.reset,
        "changes": batch.records.iter().map(change_json).collect::<Vec<_>>(),
        "cursor": batch.cursor.encode(&state.cursor_key),
        "up_to_date": batch.up_to_date,
    })
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = CursorBody)]
#[serde(deny_unknown_fields)]
struct Ack {
    cursor: String,
}

/// `POST .../ack` with `{"cursor": "..."}`: records that the batch was processed.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{name}/ack",
    operation_id = "subscriptions_ack",
    tag = "subscriptions",
    params(crate::openapi::schemas::NamePath),
    request_body(content = Ack, content_type = "application/json"),
    responses(
        (status = 204, description = "The batch is acknowledged"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 413, response = crate::openapi::PayloadTooLarge),
    )
)]
pub async fn ack(
    State(state): State<Arc<AppState>>,
    Allowed(subscription): Allowed<ReadSubscription>,
    ApiBody(body): ApiBody,
) -> Result<StatusCode, ApiError> {
    let ack: Ack = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadBody(format!(
            "expected {{\"cursor\": \"<a batch's cursor>\"}}: {e}"
        ))
    })?;
    subscriptions::ack(
        state.store.as_ref(),
        &state.cursor_key,
        &subscription,
        &ack.cursor,
    )
    .await
    .map_err(|e| ApiError::subscription(e, "cursor"))?;
    Ok(StatusCode::NO_CONTENT)
}
