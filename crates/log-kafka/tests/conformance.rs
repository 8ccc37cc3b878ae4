//! The log conformance suite on librdkafka's in-process mock cluster.
//!
//! The mock has no CreateTopics admin request, so topics are created on the mock just before
//! `ensure_topic` (see `common::PreCreatingLog`); everything else is the plain [`KafkaLog`].

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
