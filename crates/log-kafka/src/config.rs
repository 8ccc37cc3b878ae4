//! Kafka client configuration: the typed settings tenantsync relies on, plus a pass-through list
//! of any other librdkafka property.
//!
//! Every client this crate builds (producer, admin, readers, group members) gets the same
//! pass-through options. Properties whose value the backend's guarantees depend on are
//! *reserved*: [`KafkaConfig::validate`] rejects them in the pass-through list, naming the key,
//! so an option can never silently weaken durability or offset handling. This module must never
//! do I/O: building a librdkafka configuration is done in memory.

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use tenantsync_log::LogError;

/// The `client.id` used when none is configured.
pub const DEFAULT_CLIENT_ID: &str = "tenantsync";

/// Pass-through keys that conflict with what the backend sets itself, with the reason.
///
/// Keys are compared case-insensitively after trimming. Aliases librdkafka accepts for a
/// reserved property are reserved too.
pub const RESERVED_KEYS: &[(&str, &str)] = &[
    ("bootstrap.servers", "set from the kafka:// URL"),
    (
        "metadata.broker.list",
        "alias of bootstrap.servers, set from the kafka:// URL",
    ),
    ("client.id", "set from the client_id setting"),
    ("group.id", "set per consumer group by tenantsync"),
    (
        "group.instance.id",
        "set per group member from the instance name (static membership)",
    ),
    (
        "enable.idempotence",
        "always true: retries must not duplicate or reorder",
    ),
    (
        "acks",
        "always all: an append is acknowledged by every in-sync replica",
    ),
    ("request.required.acks", "alias of acks, always all"),
    (
        "transactional.id",
        "set per group member from the instance name (transactional publishing)",
    ),
    (
        "partition.assignment.strategy",
        "eager assignment: a publish is fenced by the generation of its assignment",
    ),
    (
        "enable.auto.commit",
        "always false: offsets are committed after the work is durable",
    ),
    (
        "auto.commit.enable",
        "alias of enable.auto.commit, always false",
    ),
    (
        "enable.auto.offset.store",
        "always false: offsets are committed explicitly",
    ),
    (
        "auto.offset.reset",
        "always earliest: a new group starts at the start of a partition",
    ),
    ("isolation.level", "always read_committed"),
    (
        "allow.auto.create.topics",
        "always false: topics are created with their partition count and cleanup policy",
    ),
    ("enable.partition.eof", "always false"),
];

/// How to reach a Kafka-protocol cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list (librdkafka's `bootstrap.servers`).
    pub bootstrap_servers: String,
    /// Any other librdkafka property (`KEY=VALUE`), passed to every client in order. Reserved
    /// keys ([`RESERVED_KEYS`]) are rejected by [`validate`](Self::validate).
    pub options: Vec<(String, String)>,
    /// `client.id` of every client, shown in broker logs and quotas.
    pub client_id: String,
    /// A name unique to this process among those sharing the cluster and stable across its
    /// restarts. Group members then use static membership (`group.instance.id`), so a restarted
    /// instance takes its partitions back at once, and their transactional producers get stable
    /// ids, so a restarted instance aborts what its previous run left open. `None`: dynamic
    /// membership and random transactional ids.
    pub instance_name: Option<String>,
    /// Replication factor of the topics this backend creates (`min.insync.replicas` is one less,
    /// between 1 and 2); `None`: the broker's `default.replication.factor`. When set,
    /// [`KafkaLog::connect`](crate::KafkaLog::connect) fails on a cluster with fewer brokers.
    pub replication_factor: Option<u16>,
}

impl KafkaConfig {
    /// A configuration for `bootstrap_servers` with no pass-through options.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            options: Vec::new(),
            client_id: DEFAULT_CLIENT_ID.to_string(),
            instance_name: None,
            replication_factor: None,
        }
    }

    /// Sets [`replication_factor`](Self::replication_factor).
    pub fn with_replication_factor(mut self, factor: u16) -> Self {
        self.replication_factor = Some(factor);
        self
    }

    /// Sets [`instance_name`](Self::instance_name).
    pub fn with_instance_name(mut self, name: impl Into<String>) -> Self {
        self.instance_name = Some(name.into());
        self
    }

    /// The `group.instance.id` of this instance's member of a group on `topic`: Kafka allows
    /// only ASCII letters, digits, `.`, `_` and `-`, so other characters become `_`.
    pub(crate) fn member_instance_id(&self, topic: &str) -> Option<String> {
        let name = self.instance_name.as_deref()?.trim();
        let id: String = format!("{name}.{topic}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Some(id.chars().take(249).collect())
    }

    /// Adds a pass-through librdkafka property.
    pub fn with_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((key.into(), value.into()));
        self
    }

    /// Checks the configuration without any I/O: servers well formed, client id present, no
    /// reserved or duplicate pass-through key, and every option accepted by librdkafka (unknown
    /// property names and invalid values are reported here rather than at connect time).
    pub fn validate(&self) -> Result<(), LogError> {
        self.validate_servers()?;
        if self.client_id.trim().is_empty() {
            return Err(LogError::Config("kafka client_id must not be empty".into()));
        }
        if self.replication_factor == Some(0) {
            return Err(LogError::Config(
                "the kafka replication factor must be at least 1".into(),
            ));
        }
        if self
            .instance_name
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            return Err(LogError::Config(
                "the instance name must not be empty".into(),
            ));
        }
        let mut seen: Vec<String> = Vec::with_capacity(self.options.len());
        for (key, _) in &self.options {
            let normalized = key.trim().to_ascii_lowercase();
            if normalized.is_empty() {
                return Err(LogError::Config("kafka option with an empty key".into()));
            }
            if let Some((reserved, why)) = RESERVED_KEYS.iter().find(|(k, _)| *k == normalized) {
                return Err(LogError::Config(format!(
                    "kafka option {key:?} is reserved ({reserved}: {why})"
                )));
            }
            if seen.contains(&normalized) {
                return Err(LogError::Config(format!(
                    "kafka option {key:?} is given more than once"
                )));
            }
            seen.push(normalized);
        }
        // librdkafka checks names and values when a property is set, in memory.
        self.client_config(ClientRole::Producer)
            .create_native_config()
            .map_err(|error| match error {
                // Not the value: it may be a password (sasl.password under a mistyped key).
                rdkafka::error::KafkaError::ClientConfig(_, description, key, _value) => {
                    LogError::Config(format!(
                        "kafka option {key:?} is rejected by librdkafka: {description}"
                    ))
                }
                other => LogError::Config(format!("kafka options are rejected: {other}")),
            })?;
        Ok(())
    }

    fn validate_servers(&self) -> Result<(), LogError> {
        let servers = self.bootstrap_servers.trim();
        if servers.is_empty() {
            return Err(LogError::Config(
                "kafka bootstrap_servers must list at least one host:port".into(),
            ));
        }
        for server in servers.split(',') {
            let server = server.trim();
            let well_formed = !server.is_empty()
                && !server.contains(['/', '?', '#', ' '])
                && server
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !well_formed {
                return Err(LogError::Config(format!(
                    "kafka bootstrap_servers entry {server:?} is not host:port"
                )));
            }
        }
        Ok(())
    }

    /// The librdkafka configuration for one kind of client: tuning defaults first, then the
    /// pass-through options (which may override the defaults), then the reserved properties.
    pub(crate) fn client_config(&self, role: ClientRole) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set_log_level(log_level());
        match &role {
            ClientRole::Producer | ClientRole::Transactional { .. } => {
                // Many sends in flight (the idempotent producer keeps order with up to 5), and a
                // short linger so that concurrent appends share requests.
                // An append to an unreachable partition fails after 30 s (librdkafka's default
                // is 5 minutes), so that callers see the outage and can retry or report it.
                config
                    .set("max.in.flight.requests.per.connection", "5")
                    .set("linger.ms", "2")
                    .set("message.timeout.ms", "30000");
                if matches!(role, ClientRole::Transactional { .. }) {
                    // A process frozen inside a transaction holds up the readers of its
                    // partitions (and the group's next owner) until the cluster aborts it.
                    // librdkafka needs message.timeout.ms <= transaction.timeout.ms.
                    config
                        .set("transaction.timeout.ms", "10000")
                        .set("message.timeout.ms", "10000");
                }
            }
            ClientRole::Admin => {}
            ClientRole::Reader | ClientRole::Group { .. } | ClientRole::OffsetLookup { .. } => {
                // A fetch waiting at the end of a partition returns early on new data on a real
                // broker; a short cap keeps latency low where it does not (the mock cluster).
                // Small prefetch per consumer: readers are pooled, so there may be many.
                config
                    .set("fetch.wait.max.ms", "100")
                    .set("queued.max.messages.kbytes", "4096");
            }
        }
        for (key, value) in &self.options {
            config.set(key.trim(), value);
        }
        config
            .set("bootstrap.servers", self.bootstrap_servers.trim())
            .set("client.id", self.client_id.trim())
            .set("allow.auto.create.topics", "false");
        match role {
            ClientRole::Producer => {
                config.set("enable.idempotence", "true").set("acks", "all");
            }
            ClientRole::Transactional { id } => {
                config
                    .set("enable.idempotence", "true")
                    .set("acks", "all")
                    .set("transactional.id", id);
            }
            ClientRole::Admin => {}
            ClientRole::Reader => {
                set_consumer_properties(&mut config);
                // librdkafka assigns partitions by hand only in a consumer with a group id. A
                // reader never subscribes or commits, so it never joins this group.
                config.set("group.id", format!("{}-reader", self.client_id.trim()));
            }
            ClientRole::Group { group, instance } => {
                set_consumer_properties(&mut config);
                config
                    .set("group.id", group)
                    .set("partition.assignment.strategy", "range,roundrobin");
                if let Some(instance) = instance {
                    config.set("group.instance.id", instance);
                }
            }
            ClientRole::OffsetLookup { group } => {
                set_consumer_properties(&mut config);
                config.set("group.id", group);
            }
        }
        config
    }
}

fn set_consumer_properties(config: &mut ClientConfig) {
    config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false");
}

/// Which client a configuration is for.
#[derive(Debug, Clone)]
pub(crate) enum ClientRole {
    Producer,
    Admin,
    /// A pooled random-access reader: no group, partitions assigned by hand.
    Reader,
    /// A member of a consumer group, static when it has an instance id.
    Group {
        group: String,
        instance: Option<String>,
    },
    /// The transactional producer of a group member.
    Transactional {
        id: String,
    },
    /// A client that only looks up a group's committed offsets, never joining it.
    OffsetLookup {
        group: String,
    },
}

/// librdkafka only emits log lines at or above this level, so it follows what `tracing` would
/// keep for the `librdkafka` target.
fn log_level() -> RDKafkaLogLevel {
    use tracing::Level;
    if tracing::enabled!(target: "librdkafka", Level::DEBUG) {
        RDKafkaLogLevel::Debug
    } else if tracing::enabled!(target: "librdkafka", Level::INFO) {
        RDKafkaLogLevel::Info
    } else if tracing::enabled!(target: "librdkafka", Level::WARN) {
        RDKafkaLogLevel::Warning
    } else {
        RDKafkaLogLevel::Error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> KafkaConfig {
        KafkaConfig::new("localhost:9092")
    }

    fn config_error(config: &KafkaConfig) -> String {
        match config.validate() {
            Err(LogError::Config(message)) => message,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn plain_config_is_valid() {
        config().validate().expect("valid");
        config()
            .with_option("compression.type", "lz4")
            .with_option("session.timeout.ms", "10000")
            .validate()
            .expect("valid with tuning options");
    }

    #[test]
    fn every_reserved_key_is_rejected_naming_it() {
        for (key, _) in RESERVED_KEYS {
            let message = config_error(&config().with_option(*key, "x"));
            assert!(message.contains(key), "{message}");
            // Case and surrounding spaces do not hide a reserved key.
            let shouted = format!(" {} ", key.to_ascii_uppercase());
            let message = config_error(&config().with_option(shouted, "x"));
            assert!(message.contains("reserved"), "{message}");
        }
    }

    #[test]
    fn duplicate_and_empty_keys_are_rejected() {
        let message = config_error(
            &config()
                .with_option("linger.ms", "1")
                .with_option("Linger.ms", "2"),
        );
        assert!(message.contains("more than once"), "{message}");
        let message = config_error(&config().with_option(" ", "1"));
        assert!(message.contains("empty key"), "{message}");
    }

    #[test]
    fn librdkafka_rejects_unknown_keys_and_bad_values() {
        let message = config_error(&config().with_option("no.such.property", "1"));
        assert!(message.contains("no.such.property"), "{message}");
        let message = config_error(&config().with_option("linger.ms", "soon"));
        assert!(message.contains("linger.ms"), "{message}");
    }

    #[test]
    fn servers_must_be_host_port() {
        for bad in [
            "",
            "localhost",
            "localhost:port",
            "a:1,,b:2",
            "kafka://a:1",
            ":9092",
        ] {
            let message = config_error(&KafkaConfig::new(bad));
            assert!(message.contains("bootstrap_servers"), "{bad:?}: {message}");
        }
        KafkaConfig::new("a:1, b:2")
            .validate()
            .expect("two servers");
        let message = config_error(&KafkaConfig {
            client_id: " ".into(),
            ..config()
        });
        assert!(message.contains("client_id"), "{message}");
    }

    #[test]
    fn new_takes_the_default_client_id() {
        let config = KafkaConfig::new("a:9092,b:9093");
        assert_eq!(config.bootstrap_servers, "a:9092,b:9093");
        assert_eq!(config.client_id, DEFAULT_CLIENT_ID);
    }

    #[test]
    fn rejected_values_are_not_shown() {
        let message = config_error(&config().with_option("sasl.pasword", "S3cret-pw"));
        assert!(message.contains("sasl.pasword"), "{message}");
        assert!(!message.contains("S3cret-pw"), "{message}");
    }

    #[test]
    fn reserved_properties_win_and_options_override_defaults() {
        let config = config().with_option("linger.ms", "7");
        let producer = config.client_config(ClientRole::Producer);
        assert_eq!(producer.get("linger.ms"), Some("7"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        assert_eq!(producer.get("acks"), Some("all"));
        let group = config.client_config(ClientRole::Group {
            group: "g".into(),
            instance: None,
        });
        assert_eq!(group.get("group.id"), Some("g"));
        assert_eq!(group.get("enable.auto.commit"), Some("false"));
        assert_eq!(group.get("auto.offset.reset"), Some("earliest"));
        let reader = config.client_config(ClientRole::Reader);
        assert_eq!(reader.get("group.id"), Some("tenantsync-reader"));
        assert_eq!(reader.get("allow.auto.create.topics"), Some("false"));
    }
}
