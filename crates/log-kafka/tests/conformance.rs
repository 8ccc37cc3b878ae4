//! The log conformance suite on librdkafka's in-process mock cluster and, when
//! `TENANTSYNC_TEST_KAFKA` names one, on a real Kafka cluster (module `real`).
//!
//! The mock has no CreateTopics admin request, so topics are created on the mock just before
//! `ensure_topic` (see `common::PreCreatingLog`); everything else is the plain [`KafkaLog`].
//! On a real cluster `ensure_topic` creates them itself. Every case names its topics and groups
//! uniquely per run, so runs against one cluster never meet.

mod common;

use tenantsync_log::conformance::Fixture;

async fn make() -> Fixture {
    common::init_tracing();
    let (log, mock) = common::pre_creating_log().await;
    Fixture {
        log,
        guard: Box::new(mock),
    }
}

// The mock accepts transactional offset commits but does not store them (the backend commits
// them again outside the transaction, but asynchronously: a read right after may miss them).
tenantsync_log::log_conformance_suite!(make, without_transactional_offsets);

mod real {
    use std::sync::Arc;

    use tenantsync_log::conformance::Fixture;
    use tenantsync_log_kafka::KafkaLog;

    use super::common;

    async fn make() -> Option<Fixture> {
        common::init_tracing();
        let config = common::real_cluster_config()?;
        let log = KafkaLog::connect(config)
            .await
            .expect("connecting to the cluster TENANTSYNC_TEST_KAFKA names");
        Some(Fixture {
            log: Arc::new(log),
            guard: Box::new(()),
        })
    }

    tenantsync_log::log_conformance_suite!(make);
}
