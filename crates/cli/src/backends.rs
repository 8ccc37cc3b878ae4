//! The one place that opens backends, from URLs parsed by `tenantsync_core::url`. Messages show
//! URLs only through those types, which never show a password.

use std::sync::Arc;

use anyhow::Context;
use tenantsync_core::url::{LogUrl, StoreUrl};
use tenantsync_log::Log;
use tenantsync_log_embedded::{EmbeddedLog, EmbeddedOptions};
use tenantsync_log_kafka::{KafkaConfig, KafkaLog};
use tenantsync_store::MasterStore;

use crate::config::KafkaSettings;

/// Opens the embedded log (creating its directory) or connects to Kafka.
pub async fn open_log(url: &LogUrl, kafka: &KafkaSettings) -> anyhow::Result<Arc<dyn Log>> {
    match url {
        LogUrl::Embedded(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create log dir {}", dir.display()))?;
            let log = EmbeddedLog::open(dir, EmbeddedOptions::default())
                .await
                .with_context(|| format!("cannot open the embedded log in {}", dir.display()))?;
            Ok(Arc::new(log))
        }
        LogUrl::Kafka(servers) => {
            let config = KafkaConfig {
                options: kafka.options.clone(),
                instance_name: kafka.instance_name.clone(),
                replication_factor: Some(kafka.replication_factor),
                ..KafkaConfig::new(servers.clone())
            };
            let log = KafkaLog::connect(config)
                .await
                .with_context(|| format!("cannot connect to Kafka at {servers}"))?;
            Ok(Arc::new(log))
        }
    }
}

/// Opens the master store, creating a SQLite file's directory first.
pub async fn open_store(url: &StoreUrl) -> anyhow::Result<Arc<dyn MasterStore>> {
    if let StoreUrl::Sqlite(file) = url
        && let Some(parent) = file.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create store dir {}", parent.display()))?;
    }
    tenantsync_store::open(url)
        .await
        .with_context(|| format!("cannot open the master store {url}"))
}
