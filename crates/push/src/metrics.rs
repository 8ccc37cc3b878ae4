//! `/metrics` figures of the push targets this instance runs: per webhook endpoint (label
//! `endpoint`) and per sink (label `sink`), records delivered, attempts failed and retried, and
//! lag. Never labelled by tenant (one series per tenant would grow without bound), and never
//! carrying a URL, a header or a secret.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tenantsync_store::PushKind;
use tenantsync_supervisor::MetricsSource;

use crate::Push;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: String,
}

/// One kind's families, registered under `{prefix}_...`.
struct Families<L> {
    delivered: Family<L, Gauge<u64, AtomicU64>>,
    failed: Family<L, Gauge<u64, AtomicU64>>,
    retried: Family<L, Gauge<u64, AtomicU64>>,
    lag_changes: Family<L, Gauge<u64, AtomicU64>>,
    lag_seconds: Family<L, Gauge<f64, AtomicU64>>,
}

impl<L> Families<L>
where
    L: Clone + std::fmt::Debug + std::hash::Hash + Eq + EncodeLabelSet + Send + Sync + 'static,
{
    fn new() -> Self {
        Self {
            delivered: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            lag_changes: Family::default(),
            lag_seconds: Family::default(),
        }
    }

    fn set(&self, label: &L, status: &crate::TargetStatus) {
        self.delivered.get_or_create(label).set(status.delivered);
        self.failed.get_or_create(label).set(status.failed);
        self.retried.get_or_create(label).set(status.retried);
        self.lag_changes
            .get_or_create(label)
            .set(status.lag_changes);
        self.lag_seconds
            .get_or_create(label)
            .set(status.lag_seconds);
    }

    fn register(self, registry: &mut Registry, prefix: &str, what: &str) {
        registry.register(
            format!("{prefix}_delivered_records"),
            format!(
                "Records delivered by each {what} this instance runs (counted since it was created)"
            ),
            self.delivered,
        );
        registry.register(
            format!("{prefix}_failed_attempts"),
            format!("Failed delivery attempts of each {what} this instance runs"),
            self.failed,
        );
        registry.register(
            format!("{prefix}_retried_attempts"),
            format!(
                "Delivery attempts of each {what} this instance runs that retried a failed one"
            ),
            self.retried,
        );
        registry.register(
            format!("{prefix}_lag_changes"),
            format!("Changes each {what} this instance runs has still to deliver (counted up to a limit per tenant)"),
            self.lag_changes,
        );
        registry.register(
            format!("{prefix}_lag_seconds"),
            format!("Age of the oldest change each {what} this instance runs has still to deliver"),
            self.lag_seconds,
        );
    }
}

impl MetricsSource for Push {
    fn register_metrics(&self, registry: &mut Registry) {
        let webhooks = Families::<EndpointLabel>::new();
        let sinks = Families::<SinkLabel>::new();
        for (kind, name, status) in self.figures() {
            match kind {
                PushKind::Webhook => webhooks.set(&EndpointLabel { endpoint: name }, &status),
                PushKind::Sink => sinks.set(&SinkLabel { sink: name }, &status),
            }
        }
        webhooks.register(registry, "webhook", "webhook endpoint");
        sinks.register(registry, "sink", "sink");
    }
}
