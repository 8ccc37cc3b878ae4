//! `GET /metrics`: Prometheus text exposition (OpenMetrics). Labels are bounded: services,
//! datasets, partitions, subscriptions and transports, never tenants.
//!
//! Each scrape builds a new registry: every component registers its current figures there
//! ([`MetricsSource`]: the processor, the batcher, the hub, the supervisor's services), and
//! this module adds the API's own counters and what is computed at scrape time, lag, so a
//! scrape costs a store read per partition and per lagging subscription tenant.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge as PromGauge};
use prometheus_client::registry::Registry;
use tenantsync_feed::subscriptions;

use crate::{ApiError, AppState};

/// Counters of the API's delivery to subscribers.
#[derive(Debug, Default)]
pub struct ApiMetrics {
    /// Long-poll requests waiting right now: feed pages, subscription batches and batch leases.
    pub long_polls: AtomicI64,
    /// Open SSE streams.
    pub sse_streams: AtomicI64,
    /// Records delivered by JSON feed pages, SSE events and subscription batches.
    pub delivered_feed: AtomicU64,
    pub delivered_sse: AtomicU64,
    pub delivered_subscription: AtomicU64,
    /// SSE streams ended because their client stopped reading.
    pub sse_cut_off: AtomicU64,
    /// SSE streams and waiting long-polls ended because their token was revoked.
    pub revoked: AtomicU64,
}

/// Holds a gauge up by one while alive.
pub struct Gauge<'a>(&'a AtomicI64);

impl<'a> Gauge<'a> {
    pub fn hold(gauge: &'a AtomicI64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Gauge(gauge)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: &AtomicU64) {
    registry.register(name, help, ConstCounter::new(value.load(Ordering::Relaxed)));
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    registry.register(name, help, ConstGauge::new(value));
}

type Labels = Vec<(&'static str, String)>;

/// Records counted per lagging tenant for the subscription lag gauges: a scrape stays cheap,
/// and a subscription that far behind shows it anyway.
const LAG_COUNT_LIMIT: usize = 100;

#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics_metrics",
    tag = "meta",
    responses(
        (status = 200, description = "Prometheus text exposition (OpenMetrics)", body = String, content_type = "application/openmetrics-text"),
        (status = 403, response = crate::openapi::Forbidden),
    )
)]
pub async fn metrics(
    State(state): State<Arc<AppState>>,
    caller: crate::auth::Caller,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let mut registry = Registry::with_prefix("tenantsync");

    for source in &state.metrics_sources {
        source.register_metrics(&mut registry);
    }
    let lag = Family::<Labels, PromGauge>::default();
    for dataset in state.datasets.all().await? {
        let topic = state.datasets.topics().changes(&dataset.name);
        for partition in 0..dataset.partitions {
            let end = state.log.end_offset(&topic, partition).await?;
            let applied = state.store.position(&dataset.name, partition).await?;
            lag.get_or_create(&vec![
                ("dataset", dataset.name.to_string()),
                ("partition", partition.to_string()),
            ])
            .set(end.saturating_sub(applied) as i64);
        }
    }
    registry.register(
        "processor_lag",
        "Changes logged but not yet applied, per partition",
        lag,
    );

    let m = &state.metrics;
    let deliveries = Family::<Labels, Counter>::default();
    for (transport, value) in [
        ("pull", &m.delivered_feed),
        ("sse", &m.delivered_sse),
        ("subscription", &m.delivered_subscription),
    ] {
        deliveries
            .get_or_create(&vec![("transport", transport.to_owned())])
            .inc_by(value.load(Ordering::Relaxed));
    }
    registry.register(
        "deliveries",
        "Records delivered to subscribers since start, by transport",
        deliveries,
    );
    gauge(
        &mut registry,
        "sse_streams",
        "Open SSE streams",
        m.sse_streams.load(Ordering::Relaxed),
    );
    gauge(
        &mut registry,
        "long_polls_waiting",
        "Long-poll requests waiting",
        m.long_polls.load(Ordering::Relaxed),
    );
    counter(
        &mut registry,
        "sse_cut_off",
        "SSE streams ended because the client stopped reading",
        &m.sse_cut_off,
    );
    counter(
        &mut registry,
        "revoked_requests",
        "SSE streams and waiting long-polls ended because their token was revoked",
        &m.revoked,
    );

    let (changes, seconds, tenants) = (
        Family::<Labels, PromGauge>::default(),
        Family::<Labels, PromGauge<f64, std::sync::atomic::AtomicU64>>::default(),
        Family::<Labels, PromGauge>::default(),
    );
    for subscription in state.store.subscriptions().await? {
        let lags = subscriptions::lag(
            state.store.as_ref(),
            &state.hub,
            &subscription,
            LAG_COUNT_LIMIT,
        )
        .await?;
        let labels = vec![("subscription", subscription.name.to_string())];
        changes
            .get_or_create(&labels)
            .set(lags.iter().map(|l| l.changes as i64).sum());
        seconds
            .get_or_create(&labels)
            .set(lags.iter().map(|l| l.seconds).fold(0.0, f64::max));
        tenants.get_or_create(&labels).set(lags.len() as i64);
    }
    registry.register(
        "subscription_lag_changes",
        "Records not yet acknowledged, per subscription (counted up to 100 per tenant)",
        changes,
    );
    registry.register(
        "subscription_lag_seconds",
        "Age of the oldest record not yet acknowledged, per subscription",
        seconds,
    );
    registry.register(
        "subscription_lagging_tenants",
        "Tenants with records not yet acknowledged, per subscription",
        tenants,
    );

    let mut body = String::new();
    encode(&mut body, &registry).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}
