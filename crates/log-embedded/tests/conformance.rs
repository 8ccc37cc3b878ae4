//! The `Log` conformance suite on the embedded backend, one fresh data dir per case.

use std::sync::Arc;

use tenantsync_log::conformance::Fixture;
use tenantsync_log_embedded::{EmbeddedLog, EmbeddedOptions};

async fn make() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default())
        .await
        .expect("open embedded log");
    Fixture {
        log: Arc::new(log),
        guard: Box::new(dir),
    }
}

tenantsync_log::log_conformance_suite!(make);
