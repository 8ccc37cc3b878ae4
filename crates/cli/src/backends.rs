//! The one place that turns URLs into backends.

use std::sync::Arc;

use anyhow::Context;
use tenantsync_log::Log;
use tenantsync_log_embedded::{EmbeddedLog, EmbeddedOptions};
use tenantsync_log_kafka::{KafkaConfig, KafkaLog};
use tenantsync_store::MasterStore;

/// `embedded://DIR` or `kafka://HOST:PORT[,HOST:PORT...]`.
pub async fn open_log(
    url: &str,
    kafka_options: &[(String, String)],
) -> anyhow::Result<Arc<dyn Log>> {
    if let Some(dir) = url.strip_prefix("embedded://") {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create log dir {dir}"))?;
        let log = EmbeddedLog::open(dir.as_ref(), EmbeddedOptions::default())
            .await
            .with_context(|| format!("cannot open the embedded log in {dir}"))?;
        Ok(Arc::new(log))
    } else if let Some(servers) = url.strip_prefix("kafka://") {
        let config = KafkaConfig {
            bootstrap_servers: servers.to_owned(),
            options: kafka_options.to_vec(),
            client_id: "tenantsync".to_owned(),
        };
        let log = KafkaLog::connect(config)
            .await
            .with_context(|| format!("cannot connect to Kafka at {servers}"))?;
        Ok(Arc::new(log))
    } else {
        anyhow::bail!("invalid log: {url:?} must be embedded://DIR or kafka://HOST:PORT")
    }
}

/// `sqlite://FILE` or `postgres://...`.
pub async fn open_store(url: &str) -> anyhow::Result<Arc<dyn MasterStore>> {
    if let Some(path) = url.strip_prefix("sqlite://")
        && let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create store dir {}", parent.display()))?;
    }
    tenantsync_store::open(url)
        .await
        .with_context(|| format!("cannot open the master store {}", redact(url)))
}

/// A URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
