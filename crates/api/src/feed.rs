//! `GET /v1/datasets/{dataset}/tenants/{tenant}/changes`: a tenant's change feed, snapshot then
//! live, as JSON pages (with optional long-poll) or as Server-Sent Events.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tenantsync_core::{DatasetName, InvalidInput, TenantId};
use tenantsync_feed::{
    CursorKey, FeedCursor, FeedError, Page, change_json, read_or_wait, read_page,
};
use tenantsync_store::FeedPosition;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::extract::{self, Allowed, ApiQuery, Read, Tenant, TenantAccess};
use crate::metrics::Gauge;
use crate::revocation::TokenWatch;
use crate::{ApiError, AppState};

/// `?cursor=&limit=&wait=`, shared with subscriptions.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// Where to continue: the `cursor` of the previous answer.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Changes per answer, at most the server's `max_limit`.
    #[serde(default)]
    #[param(minimum = 1)]
    pub limit: Option<usize>,
    /// Seconds to long-poll when nothing is new (capped at the server's `max_wait`).
    #[serde(default)]
    #[param(minimum = 0)]
    pub wait: Option<f64>,
}

impl FeedQuery {
    pub fn limit(&self, state: &AppState) -> Result<usize, ApiError> {
        let max = state.config.feed.max_limit;
        match self.limit {
            None => Ok(state.config.feed.default_limit.min(max)),
            Some(n) if (1..=max).contains(&n) => Ok(n),
            Some(n) => {
                Err(InvalidInput::new("limit", format!("must be 1 to {max}, got {n}")).into())
            }
        }
    }

    /// The wait, capped at the server's maximum.
    pub fn wait(&self, state: &AppState) -> Result<Duration, ApiError> {
        extract::seconds(
            "wait",
            self.wait,
            Duration::ZERO,
            state.config.feed.max_wait,
        )
    }
}

fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().starts_with("text/event-stream"))
        })
}

#[utoipa::path(
    get,
    path = "/v1/datasets/{dataset}/tenants/{tenant}/changes",
    operation_id = "feed_changes",
    tag = "feeds",
    params(crate::openapi::schemas::TenantFeedPath, FeedQuery, crate::openapi::schemas::FeedHeaders),
    responses(
        (status = 200, description = "A page of the tenant's changes, or with `Accept: text/event-stream` a stream of `change` and `up-to-date` events", content(
            (crate::openapi::schemas::FeedPage = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 410, response = crate::openapi::Gone),
    )
)]
pub async fn changes(
    State(state): State<Arc<AppState>>,
    Allowed(Tenant {
        dataset, tenant, ..
    }): Allowed<TenantAccess<Read>>,
    ApiQuery(query): ApiQuery<FeedQuery>,
    headers: HeaderMap,
    token: TokenWatch,
) -> Result<Response, ApiError> {
    let dataset = dataset.name;
    let limit = query.limit(&state)?;
    let sse = wants_event_stream(&headers);
    // An SSE client resuming after a disconnect sends the last event id it saw.
    let last_event_id = headers
        .get("last-event-id")
        .filter(|_| sse)
        .map(|v| {
            v.to_str()
                .map_err(|_| InvalidInput::new("Last-Event-ID", "must be visible ASCII"))
        })
        .transpose()?;
    let cursor = match (query.cursor.as_deref(), last_event_id) {
        (_, Some(id)) if !id.is_empty() => Some(("Last-Event-ID", id)),
        (Some(c), _) => Some(("cursor", c)),
        _ => None,
    };
    let position = match cursor {
        None => None,
        Some((field, raw)) => {
            let cursor = FeedCursor::decode(raw, &state.cursor_key)
                .map_err(|e| InvalidInput::new(field, e.to_string()))?;
            cursor
                .check(&dataset, &tenant)
                .map_err(|e| InvalidInput::new(field, e.to_string()))?;
            Some(cursor.position)
        }
    };
    // Checked for SSE too, where it does not apply, so that a bad value is an error everywhere.
    let wait = query.wait(&state)?;
    if sse {
        return stream(state, dataset, tenant, position, limit, token).await;
    }
    let page = {
        let _waiting = (!wait.is_zero()).then(|| Gauge::hold(&state.metrics.long_polls));
        let read = |wait| {
            read_or_wait(
                state.store.as_ref(),
                &state.hub,
                &dataset,
                &tenant,
                position,
                limit,
                wait,
            )
        };
        // A long-poll answers with what there is when the server begins to stop, rather than
        // hold up the shutdown; 401 when its token is revoked meanwhile.
        token
            .guard(async {
                tokio::select! {
                    page = read(wait) => page,
                    _ = state.supervisor.stopping() => read(Duration::ZERO).await,
                }
            })
            .await??
    };
    state
        .metrics
        .delivered_feed
        .fetch_add(page.records.len() as u64, Ordering::Relaxed);
    Ok(Json(page_json(&state.cursor_key, &dataset, &tenant, &page)).into_response())
}

/// Feeds an SSE stream from `first` on until the client goes away, stops reading, or its
/// position is gone.
async fn produce(
    state: Arc<AppState>,
    dataset: DatasetName,
    tenant: TenantId,
    first: Page,
    limit: usize,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    let _open = Gauge::hold(&state.metrics.sse_streams);
    let config = &state.config.feed;
    // False once the client has not taken an event within the stall timeout.
    let send = |event: Event| async {
        let sent = tx.send_timeout(Ok(event), config.sse_stall_timeout).await;
        if sent.is_err() {
            state.metrics.sse_cut_off.fetch_add(1, Ordering::Relaxed);
        }
        sent.is_ok()
    };
    let mut page = first;
    let mut was_up_to_date = false;
    loop {
        for record in &page.records {
            let after = FeedPosition {
                next_seq: record.seq + 1,
                live_from: page.next.live_from,
            };
            let Ok(event) = Event::default()
                .event("change")
                .id(cursor_at(&state.cursor_key, &dataset, &tenant, after))
                .json_data(change_json(record))
            else {
                continue;
            };
            if !send(event).await {
                return;
            }
            state.metrics.delivered_sse.fetch_add(1, Ordering::Relaxed);
        }
        if page.up_to_date && !was_up_to_date {
            let event = Event::default()
                .event("up-to-date")
                .id(cursor_at(&state.cursor_key, &dataset, &tenant, page.next))
                .data("{}");
            if !send(event).await {
                return;
            }
        }
        was_up_to_date = page.up_to_date;
        let next = tokio::select! {
            _ = tx.closed() => return,
            // The client reconnects (to another instance) and resumes from its last event id.
            _ = state.supervisor.stopping() => return,
            next = read_or_wait(state.store.as_ref(), &state.hub, &dataset, &tenant, Some(page.next), limit, config.max_wait) => next,
        };
        page = match next {
            Ok(page) => page,
            Err(FeedError::Gone) => {
                let problem = ApiError::from(FeedError::Gone).problem().1;
                if let Ok(event) = Event::default().event("gone").json_data(problem) {
                    send(event).await;
                }
                return;
            }
            // The client reconnects and resumes from its last event id.
            Err(FeedError::Store(error)) => {
                tracing::warn!(%error, "SSE stream ended: the store failed");
                return;
            }
        };
    }
}

fn cursor_at(
    key: &CursorKey,
    dataset: &DatasetName,
    tenant: &TenantId,
    position: FeedPosition,
) -> String {
    FeedCursor {
        dataset: dataset.clone(),
        tenant: tenant.clone(),
        position,
    }
    .encode(key)
}

fn page_json(key: &CursorKey, dataset: &DatasetName, tenant: &TenantId, page: &Page) -> Value {
    json!({
        "changes": page.records.iter().map(change_json).collect::<Vec<_>>(),
        "cursor": cursor_at(key, dataset, tenant, page.next),
        "up_to_date": page.up_to_date,
    })
}

/// The SSE variant. The first page is read before answering, so a bad or expired position gets
/// its 400 or 410 as a status. A producer task then reads page after page into a bounded
/// channel that the response drains as the client reads: a client that stops reading fills the
/// channel, and after `sse_stall_timeout` its producer gives up and the stream ends (the client
/// resumes from its last event id). Every event's id is the cursor just past it. When the
/// caller's token is revoked, the stream ends with a `revoked` event ([`TokenWatch::stream`]),
/// and its producer stops as its channel closes.
async fn stream(
    state: Arc<AppState>,
    dataset: DatasetName,
    tenant: TenantId,
    position: Option<FeedPosition>,
    limit: usize,
    token: TokenWatch,
) -> Result<Response, ApiError> {
    let first = read_page(
        state.store.as_ref(),
        &state.hub,
        &dataset,
        &tenant,
        position,
        limit,
    )
    .await?;
    let heartbeat = state.config.feed.sse_heartbeat;
    let (tx, rx) = mpsc::channel(state.config.feed.sse_buffer);
    tokio::spawn(produce(state, dataset, tenant, first, limit, tx));
    Ok(Sse::new(token.stream(ReceiverStream::new(rx)))
        .keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat"))
        .into_response())
}
