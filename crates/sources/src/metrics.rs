//! `/metrics` figures of the source shards this instance runs, labelled by source (never by
//! tenant): changes ingested and rejected, and lag.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tenantsync_supervisor::MetricsSource;

use crate::Sources;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

impl MetricsSource for Sources {
    fn register_metrics(&self, registry: &mut Registry) {
        let ingested = Family::<SourceLabel, Gauge<u64, std::sync::atomic::AtomicU64>>::default();
        let rejected = Family::<SourceLabel, Gauge<u64, std::sync::atomic::AtomicU64>>::default();
        let lag = Family::<SourceLabel, Gauge<u64, std::sync::atomic::AtomicU64>>::default();
        let lag_seconds =
            Family::<SourceLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let shards = Family::<SourceLabel, Gauge>::default();
        for (source, _, status) in self.figures() {
            let label = SourceLabel {
                source: source.to_string(),
            };
            ingested.get_or_create(&label).inc_by(status.ingested);
            rejected.get_or_create(&label).inc_by(status.rejected);
            lag.get_or_create(&label).inc_by(status.lag.unwrap_or(0));
            let seconds = lag_seconds.get_or_create(&label);
            seconds.set(seconds.get().max(status.lag_seconds.unwrap_or(0.0)));
            shards.get_or_create(&label).inc();
        }
        registry.register(
            "source_changes_ingested",
            "Changes appended to the changes log by the source shards this instance runs (counted since each shard was created)",
            ingested,
        );
        registry.register(
            "source_changes_rejected",
            "Rows or events of the source shards this instance runs that could not become a change (see GET /v1/sources/{name}/rejected)",
            rejected,
        );
        registry.register(
            "source_lag",
            "How far behind its source each source is, summed over the shards run here, in the source's unit (outbox: WAL bytes; debezium: events)",
            lag,
        );
        registry.register(
            "source_lag_seconds",
            "Age of the oldest change not yet taken, the largest over the shards run here",
            lag_seconds,
        );
        registry.register(
            "source_shards_running",
            "Source shards this instance runs",
            shards,
        );
    }
}
