//! Configuration of `tenantsync serve`: defaults, then the TOML file (`--config`), then
//! `TENANTSYNC_*` environment variables, then flags. `Settings::load` merges the layers and
//! `Settings::validate` checks them without I/O, naming the offending field.

mod webhooks;

pub use webhooks::WebhooksSection;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;
use tenantsync_api::WriteQuota;
use tenantsync_auth::JwtConfig;
use tenantsync_batcher::Limits;
use tenantsync_core::url::{LogUrl, StoreUrl};
use tenantsync_core::{DatasetName, TenantId, Topics};
use tenantsync_dataset::MAX_PARTITIONS;
use tenantsync_sources::{Definition, SourceName};

pub const DEFAULT_DATA_DIR: &str = "./tenantsync-data";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_TOMBSTONE_RETENTION_SECS: u64 = 7 * 24 * 3600;
pub const DEFAULT_IDEMPOTENCY_RETENTION_SECS: u64 = 7 * 24 * 3600;
/// Changes per second each tenant may write.
pub const DEFAULT_TENANT_WRITE_RATE: u32 = 2_000;
/// The burst is this many times the rate when not set.
pub const DEFAULT_BURST_FACTOR: u32 = 2;

/// Flags of `tenantsync serve`. Each flag can also be set by the environment variable shown.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// TOML configuration file; flags and environment variables override its values.
    #[arg(long, env = "TENANTSYNC_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for the embedded log and the SQLite store [default: ./tenantsync-data].
    #[arg(long, env = "TENANTSYNC_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address the HTTP API listens on [default: 127.0.0.1:7070]; port 0 picks a free port.
    #[arg(long, env = "TENANTSYNC_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// The log: embedded://DIR or kafka://HOST:PORT[,HOST:PORT...] [default: embedded://DATA_DIR].
    #[arg(long, env = "TENANTSYNC_LOG", value_name = "URL")]
    pub log: Option<String>,
    /// The master store: sqlite://FILE or postgres://USER@HOST:PORT/DB [default: sqlite://DATA_DIR/store.sqlite3].
    // The value may hold a password: --help must not show it, and clap's own parse errors
    // would repeat it, so it is parsed in `Settings::merge`.
    #[arg(
        long,
        env = "TENANTSYNC_STORE",
        value_name = "URL",
        hide_env_values = true
    )]
    pub store: Option<String>,
    /// A librdkafka property for every Kafka client, as KEY=VALUE (repeatable), e.g.
    /// --kafka-option security.protocol=ssl.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub kafka_options: Vec<(String, String)>,
    /// Replication factor of the topics created on Kafka [default: 3]; their min.insync.replicas
    /// is one less (at least 1, at most 2). Start-up fails on a cluster with fewer brokers.
    #[arg(long, env = "TENANTSYNC_KAFKA_REPLICATION_FACTOR", value_name = "N")]
    pub kafka_replication_factor: Option<u16>,
    /// This instance's name: unique among the instances sharing a log and a store, and the same
    /// after a restart [default: HOST/LISTEN_ADDRESS]. On Kafka it makes the instance a static
    /// member of the processors' group, so a restarted instance takes its partitions back at
    /// once (within the session timeout) instead of after a rebalance.
    #[arg(long, env = "TENANTSYNC_INSTANCE_NAME", value_name = "NAME")]
    pub instance_name: Option<String>,
    /// Prefix of topic names: PREFIX.DATASET.changes and PREFIX.DATASET.state [default: tenantsync].
    #[arg(long, env = "TENANTSYNC_TOPIC_PREFIX", value_name = "PREFIX")]
    pub topic_prefix: Option<String>,
    /// Largest accepted request body in bytes [default: 1048576].
    #[arg(long, env = "TENANTSYNC_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// How long ?wait=applied waits for the processor, in seconds [default: 10].
    #[arg(long, env = "TENANTSYNC_APPLY_TIMEOUT_SECS", value_name = "SECS")]
    pub apply_timeout_secs: Option<u64>,
    /// On SIGTERM or Ctrl-C, how long in-flight requests and background services get to stop
    /// before the server exits anyway, in seconds [default: 10].
    #[arg(long, env = "TENANTSYNC_SHUTDOWN_TIMEOUT_SECS", value_name = "SECS")]
    pub shutdown_timeout_secs: Option<u64>,
    /// How long deletes stay visible as tombstones, in the state log and in change feeds, in
    /// seconds; a feed reader further behind must start over from a snapshot [default: 604800].
    #[arg(long, env = "TENANTSYNC_TOMBSTONE_RETENTION_SECS", value_name = "SECS")]
    pub tombstone_retention_secs: Option<u64>,
    /// How long a change's idempotency key is remembered, in seconds: a retry within it is
    /// applied once; after it the key is pruned, and a retry is applied again unless its
    /// version check refuses it [default: 604800].
    #[arg(
        long,
        env = "TENANTSYNC_IDEMPOTENCY_RETENTION_SECS",
        value_name = "SECS"
    )]
    pub idempotency_retention_secs: Option<u64>,
    /// Longest long-poll `wait` of a change feed or subscription, in seconds [default: 30].
    #[arg(long, env = "TENANTSYNC_MAX_WAIT_SECS", value_name = "SECS")]
    pub max_wait_secs: Option<u64>,
    /// Interval of SSE heartbeat comments, in seconds [default: 15].
    #[arg(long, env = "TENANTSYNC_SSE_HEARTBEAT_SECS", value_name = "SECS")]
    pub sse_heartbeat_secs: Option<u64>,
    /// How long an SSE client may stop reading before its stream is ended, in seconds
    /// [default: 30]. It resumes with Last-Event-ID.
    #[arg(long, env = "TENANTSYNC_SSE_STALL_TIMEOUT_SECS", value_name = "SECS")]
    pub sse_stall_timeout_secs: Option<u64>,
    /// Changes per second each tenant may write, across all instances sharing the store (each
    /// grants its share); beyond its burst a tenant gets 429 with Retry-After while other
    /// tenants are unaffected [default: 2000]. Per-tenant overrides go in the config file's
    /// [quotas.tenants] table.
    #[arg(
        long,
        env = "TENANTSYNC_TENANT_WRITE_RATE",
        value_name = "CHANGES_PER_SEC"
    )]
    pub tenant_write_rate: Option<u32>,
    /// Changes a tenant may write at once before the rate applies, across all instances
    /// [default: 2 x the rate].
    #[arg(long, env = "TENANTSYNC_TENANT_WRITE_BURST", value_name = "CHANGES")]
    pub tenant_write_burst: Option<u32>,
    /// Most records per batch of the batches log [default: 500]. Per-dataset overrides go in
    /// the config file's [batches.datasets.<dataset>] table.
    #[arg(long, env = "TENANTSYNC_BATCH_MAX_RECORDS", value_name = "RECORDS")]
    pub batch_max_records: Option<usize>,
    /// Most bytes of records per batch; a larger single record forms a batch alone
    /// [default: 1048576].
    #[arg(long, env = "TENANTSYNC_BATCH_MAX_BYTES", value_name = "BYTES")]
    pub batch_max_bytes: Option<usize>,
    /// Longest a record waits for its batch to fill before the batch is sealed anyway
    /// [default: 1000].
    #[arg(long, env = "TENANTSYNC_BATCH_MAX_WAIT_MS", value_name = "MS")]
    pub batch_max_wait_ms: Option<u64>,
    /// Let webhook endpoints be on loopback, private, link-local, CGNAT and other non-public
    /// addresses (on-premises receivers, tests). Off by default: an endpoint whose host is or
    /// resolves to such an address is refused when defined and at every connection. To allow
    /// only some networks, list them in the config file's [webhooks] allow_networks.
    #[arg(long, env = "TENANTSYNC_WEBHOOK_ALLOW_PRIVATE_NETWORKS")]
    pub webhook_allow_private_networks: bool,
    /// Refuse webhook endpoints whose URL is plain http://; only https:// is accepted.
    #[arg(long, env = "TENANTSYNC_WEBHOOK_HTTPS_ONLY")]
    pub webhook_https_only: bool,
    /// Let every request in with full (admin) rights, without a token. For local demos only:
    /// anyone who can reach the port can read and write every tenant.
    #[arg(long, env = "TENANTSYNC_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// The configuration file. Every field is optional; unknown fields are an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub instance_name: Option<String>,
    pub listen: Option<String>,
    pub log: Option<String>,
    pub store: Option<String>,
    pub topic_prefix: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub apply_timeout_secs: Option<u64>,
    pub shutdown_timeout_secs: Option<u64>,
    pub tombstone_retention_secs: Option<u64>,
    pub idempotency_retention_secs: Option<u64>,
    pub max_wait_secs: Option<u64>,
    pub sse_heartbeat_secs: Option<u64>,
    pub sse_stall_timeout_secs: Option<u64>,
    pub tenant_write_rate: Option<u32>,
    pub tenant_write_burst: Option<u32>,
    #[serde(default)]
    pub insecure_no_auth: bool,
    #[serde(default)]
    pub quotas: QuotasSection,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub kafka: KafkaSection,
    #[serde(default)]
    pub processor: ProcessorSection,
    #[serde(default)]
    pub batches: BatchesSection,
    /// `[webhooks]`: how webhook endpoints are reached and retried.
    #[serde(default)]
    pub webhooks: WebhooksSection,
    /// Datasets declared at start-up.
    #[serde(default)]
    pub datasets: Vec<DatasetSection>,
    /// `[sources.NAME]`: sources defined at start-up, in the form `PUT /v1/sources/NAME` takes.
    #[serde(default)]
    pub sources: BTreeMap<String, toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// librdkafka properties passed through to every client.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    pub replication_factor: Option<u16>,
}

/// How this instance uses a Kafka log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    pub options: Vec<(String, String)>,
    pub replication_factor: u16,
    /// The instance name; `None` until `serve` knows its listen address (the default).
    pub instance_name: Option<String>,
}

/// Replication factor of created topics unless configured.
pub const DEFAULT_REPLICATION_FACTOR: u16 = 3;

/// `[quotas.tenants.<tenant>]`: a tenant's own write quota.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotasSection {
    #[serde(default)]
    pub tenants: BTreeMap<TenantId, TenantQuotaSection>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantQuotaSection {
    /// Changes per second.
    pub write_rate: u32,
    /// [default: 2 x write_rate]
    pub write_burst: Option<u32>,
}

/// `[auth]`: `[auth.jwt]` accepts JWTs from an identity provider besides API tokens.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    pub jwt: Option<JwtConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorSection {
    pub max_batch: Option<usize>,
}

/// `[batches]`: limits of every dataset's batches; `[batches.datasets.<dataset>]` overrides
/// them for one dataset (each key optional, falling back to `[batches]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchesSection {
    pub max_records: Option<usize>,
    pub max_bytes: Option<usize>,
    pub max_wait_ms: Option<u64>,
    #[serde(default)]
    pub datasets: BTreeMap<DatasetName, BatchLimitsSection>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchLimitsSection {
    pub max_records: Option<usize>,
    pub max_bytes: Option<usize>,
    pub max_wait_ms: Option<u64>,
}

impl BatchLimitsSection {
    /// These limits over `base`; `field` names the section in errors.
    fn over(self, base: Limits, field: &str) -> anyhow::Result<Limits> {
        let limits = Limits {
            max_records: self.max_records.unwrap_or(base.max_records),
            max_bytes: self.max_bytes.unwrap_or(base.max_bytes),
            max_wait: self
                .max_wait_ms
                .map_or(base.max_wait, Duration::from_millis),
        };
        limits
            .validate()
            .with_context(|| format!("invalid {field}"))?;
        Ok(limits)
    }
}

/// A source of the config file, checked without I/O.
#[derive(Clone)]
pub struct ConfiguredSource {
    pub name: SourceName,
    pub definition: Definition,
    /// The definition as given, to be stored: it may hold a password, and is never shown.
    pub json: serde_json::Value,
}

impl std::fmt::Debug for ConfiguredSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfiguredSource")
            .field("name", &self.name)
            .field("definition", &self.definition.shown())
            .finish()
    }
}

fn configured_source(name: String, table: toml::Table) -> anyhow::Result<ConfiguredSource> {
    let name = SourceName::new(name.clone())
        .map_err(|e| anyhow::anyhow!("invalid sources.{name}: {}", e.reason))?;
    let json = serde_json::to_value(table)
        .map_err(|_| anyhow::anyhow!("invalid sources.{name}: not representable as JSON"))?;
    let definition = Definition::parse(&json)
        .map_err(|e| anyhow::anyhow!("invalid sources.{name}.{}: {}", e.field, e.reason))?;
    Ok(ConfiguredSource {
        name,
        definition,
        json,
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSection {
    pub name: DatasetName,
    pub partitions: u32,
}

/// The merged configuration `serve` runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub log: LogUrl,
    /// Shown without its password, wherever it is shown.
    pub store: StoreUrl,
    pub kafka: KafkaSettings,
    pub topic_prefix: String,
    pub max_body_bytes: usize,
    pub apply_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub tombstone_retention: Duration,
    /// How long change outcomes (idempotency keys) are kept.
    pub idempotency_retention: Duration,
    pub max_batch: usize,
    pub feed: tenantsync_api::FeedConfig,
    pub datasets: Vec<DatasetSection>,
    /// Sources defined in the config file, stored (or updated) at start-up.
    pub sources: Vec<ConfiguredSource>,
    /// Every tenant's write quota, unless overridden.
    pub write_quota: WriteQuota,
    pub quota_overrides: HashMap<TenantId, WriteQuota>,
    pub insecure_no_auth: bool,
    pub jwt: Option<JwtConfig>,
    /// Batch limits of datasets not in `dataset_batch_limits`.
    pub batch_limits: Limits,
    pub dataset_batch_limits: HashMap<DatasetName, Limits>,
    /// Webhooks' and sinks' settings.
    pub push: tenantsync_push::PushSettings,
}

/// A quota from a rate and an optional burst (2 x the rate when absent); `field` names the
/// setting in errors.
fn quota(field: &str, rate: u32, burst: Option<u32>) -> anyhow::Result<WriteQuota> {
    let rate = NonZeroU32::new(rate)
        .with_context(|| format!("invalid {field}: the write rate must be at least 1"))?;
    let burst = burst.unwrap_or_else(|| rate.get().saturating_mul(DEFAULT_BURST_FACTOR));
    let burst = NonZeroU32::new(burst)
        .with_context(|| format!("invalid {field}: the write burst must be at least 1"))?;
    Ok(WriteQuota { rate, burst })
}

impl Settings {
    /// Merges defaults, the file named by `--config`, environment and flags, and validates.
    pub fn load(args: ServeArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        Self::merge(args, file)
    }

    pub fn merge(args: ServeArgs, file: FileConfig) -> anyhow::Result<Self> {
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let listen_text = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_text.parse().map_err(|_| {
            anyhow::anyhow!("invalid listen: {listen_text:?} is not an address like 127.0.0.1:7070")
        })?;
        let log = match args.log.or(file.log) {
            Some(url) => url.parse().context("invalid log")?,
            None => LogUrl::Embedded(data_dir.clone()),
        };
        let store = match args.store.or(file.store) {
            Some(url) => url.parse().context("invalid store")?,
            None => StoreUrl::Sqlite(data_dir.join("store.sqlite3")),
        };
        let batch_limits = BatchLimitsSection {
            max_records: args.batch_max_records.or(file.batches.max_records),
            max_bytes: args.batch_max_bytes.or(file.batches.max_bytes),
            max_wait_ms: args.batch_max_wait_ms.or(file.batches.max_wait_ms),
        }
        .over(Limits::default(), "batch limits")?;
        // Flags add to (and override) the file's Kafka options, key by key.
        let mut kafka = file.kafka.options;
        kafka.extend(args.kafka_options);
        let settings = Settings {
            listen,
            log,
            store,
            kafka: KafkaSettings {
                options: kafka.into_iter().collect(),
                replication_factor: args
                    .kafka_replication_factor
                    .or(file.kafka.replication_factor)
                    .unwrap_or(DEFAULT_REPLICATION_FACTOR),
                instance_name: args.instance_name.or(file.instance_name),
            },
            topic_prefix: args
                .topic_prefix
                .or(file.topic_prefix)
                .unwrap_or_else(|| Topics::DEFAULT_PREFIX.to_owned()),
            max_body_bytes: args
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(tenantsync_api::ApiConfig::DEFAULT_MAX_BODY_BYTES),
            apply_timeout: args.apply_timeout_secs.or(file.apply_timeout_secs).map_or(
                tenantsync_api::ApiConfig::DEFAULT_APPLY_TIMEOUT,
                Duration::from_secs,
            ),
            shutdown_timeout: Duration::from_secs(
                args.shutdown_timeout_secs
                    .or(file.shutdown_timeout_secs)
                    .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_SECS),
            ),
            tombstone_retention: Duration::from_secs(
                args.tombstone_retention_secs
                    .or(file.tombstone_retention_secs)
                    .unwrap_or(DEFAULT_TOMBSTONE_RETENTION_SECS),
            ),
            idempotency_retention: Duration::from_secs(
                args.idempotency_retention_secs
                    .or(file.idempotency_retention_secs)
                    .unwrap_or(DEFAULT_IDEMPOTENCY_RETENTION_SECS),
            ),
            feed: {
                let default = tenantsync_api::FeedConfig::default();
                let secs = |arg: Option<u64>, file: Option<u64>, default: Duration| {
                    arg.or(file).map_or(default, Duration::from_secs)
                };
                tenantsync_api::FeedConfig {
                    max_wait: secs(args.max_wait_secs, file.max_wait_secs, default.max_wait),
                    sse_heartbeat: secs(
                        args.sse_heartbeat_secs,
                        file.sse_heartbeat_secs,
                        default.sse_heartbeat,
                    ),
                    sse_stall_timeout: secs(
                        args.sse_stall_timeout_secs,
                        file.sse_stall_timeout_secs,
                        default.sse_stall_timeout,
                    ),
                    ..default
                }
            },
            max_batch: file
                .processor
                .max_batch
                .unwrap_or(tenantsync_processor::ProcessorConfig::DEFAULT_MAX_BATCH),
            datasets: file.datasets,
            sources: file
                .sources
                .into_iter()
                .map(|(name, table)| configured_source(name, table))
                .collect::<anyhow::Result<_>>()?,
            write_quota: quota(
                "tenant_write_rate",
                args.tenant_write_rate
                    .or(file.tenant_write_rate)
                    .unwrap_or(DEFAULT_TENANT_WRITE_RATE),
                args.tenant_write_burst.or(file.tenant_write_burst),
            )?,
            quota_overrides: file
                .quotas
                .tenants
                .into_iter()
                .map(|(tenant, q)| {
                    let field = format!("quotas.tenants.{tenant}");
                    Ok((tenant, quota(&field, q.write_rate, q.write_burst)?))
                })
                .collect::<anyhow::Result<_>>()?,
            insecure_no_auth: args.insecure_no_auth || file.insecure_no_auth,
            jwt: file.auth.jwt,
            batch_limits,
            dataset_batch_limits: file
                .batches
                .datasets
                .into_iter()
                .map(|(dataset, section)| {
                    let field = format!("batches.datasets.{dataset}");
                    Ok((dataset, section.over(batch_limits, &field)?))
                })
                .collect::<anyhow::Result<_>>()?,
            push: tenantsync_push::PushSettings {
                webhooks: file
                    .webhooks
                    .settings(args.webhook_allow_private_networks, args.webhook_https_only)?,
            },
        };
        settings.validate()?;
        Ok(settings)
    }

    /// The flag that points `tenantsync token` at this store: none for the default one.
    /// A store with a password shows `***` in its place.
    pub fn store_flag_hint(&self) -> String {
        let default = StoreUrl::Sqlite(PathBuf::from(DEFAULT_DATA_DIR).join("store.sqlite3"));
        if self.store == default {
            String::new()
        } else {
            format!(" --store '{}'", self.store)
        }
    }

    /// Checks every field without I/O; the error names the field.
    pub fn validate(&self) -> anyhow::Result<()> {
        let prefix_ok = !self.topic_prefix.is_empty()
            && self.topic_prefix.len() <= 100
            && self
                .topic_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !prefix_ok {
            bail!(
                "invalid topic_prefix: {:?} must be 1 to 100 characters of [A-Za-z0-9._-]",
                self.topic_prefix
            );
        }
        if self.max_body_bytes == 0 {
            bail!("invalid max_body_bytes: must be at least 1");
        }
        if self.kafka.replication_factor == 0 {
            bail!("invalid kafka replication_factor: must be at least 1");
        }
        if let Some(name) = &self.kafka.instance_name
            && (name.trim().is_empty() || name.len() > 200)
        {
            bail!("invalid instance_name: {name:?} must be 1 to 200 characters");
        }
        if self.apply_timeout.is_zero() {
            bail!("invalid apply_timeout_secs: must be at least 1");
        }
        if self.shutdown_timeout.is_zero() {
            bail!("invalid shutdown_timeout_secs: must be at least 1");
        }
        if self.tombstone_retention.is_zero() {
            bail!("invalid tombstone_retention_secs: must be at least 1");
        }
        if self.idempotency_retention.is_zero() {
            bail!("invalid idempotency_retention_secs: must be at least 1");
        }
        if self.feed.sse_heartbeat.is_zero() {
            bail!("invalid sse_heartbeat_secs: must be at least 1");
        }
        if self.feed.sse_stall_timeout.is_zero() {
            bail!("invalid sse_stall_timeout_secs: must be at least 1");
        }
        if self.max_batch == 0 || self.max_batch > 100_000 {
            bail!("invalid processor.max_batch: must be 1 to 100000");
        }
        if let Some(jwt) = &self.jwt {
            jwt.validate()?;
        }
        for (i, d) in self.datasets.iter().enumerate() {
            if d.partitions == 0 || d.partitions > MAX_PARTITIONS {
                bail!(
                    "invalid datasets[{i}].partitions: {} must be 1 to {MAX_PARTITIONS}",
                    d.partitions
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn args(flags: &[&str]) -> ServeArgs {
        let mut argv = vec!["serve"];
        argv.extend_from_slice(flags);
        Wrapper::parse_from(argv).args
    }

    #[test]
    fn defaults_point_everything_at_the_data_dir() {
        let s = Settings::merge(args(&[]), FileConfig::default()).unwrap();
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(s.log.to_string(), "embedded://./tenantsync-data");
        assert_eq!(
            s.store.to_string(),
            "sqlite://./tenantsync-data/store.sqlite3"
        );
        assert_eq!(s.topic_prefix, "tenantsync");
    }

    #[test]
    fn flags_override_the_file() {
        let file: FileConfig = toml::from_str(
            r#"
            listen = "127.0.0.1:9000"
            log = "kafka://broker:9092"
            [kafka.options]
            "security.protocol" = "ssl"
            "client.rack" = "a"
            [[datasets]]
            name = "inventory"
            partitions = 8
            "#,
        )
        .unwrap();
        let s = Settings::merge(
            args(&["--listen", "0.0.0.0:1", "--kafka-option", "client.rack=b"]),
            file,
        )
        .unwrap();
        assert_eq!(s.listen.to_string(), "0.0.0.0:1");
        assert_eq!(s.log.to_string(), "kafka://broker:9092");
        assert_eq!(
            s.kafka.options,
            vec![
                ("client.rack".to_owned(), "b".to_owned()),
                ("security.protocol".to_owned(), "ssl".to_owned())
            ]
        );
        assert_eq!(s.datasets[0].name.as_str(), "inventory");
    }

    #[test]
    fn write_quotas_default_to_twice_the_rate_and_take_overrides() {
        let s = Settings::merge(args(&[]), FileConfig::default()).unwrap();
        assert_eq!(s.write_quota.rate.get(), DEFAULT_TENANT_WRITE_RATE);
        assert_eq!(s.write_quota.burst.get(), 2 * DEFAULT_TENANT_WRITE_RATE);
        let file: FileConfig = toml::from_str(
            r#"
            tenant_write_rate = 100
            [quotas.tenants.acme]
            write_rate = 10000
            [quotas.tenants.globex]
            write_rate = 5
            write_burst = 7
            "#,
        )
        .unwrap();
        let s = Settings::merge(args(&["--tenant-write-burst", "150"]), file).unwrap();
        assert_eq!(
            (s.write_quota.rate.get(), s.write_quota.burst.get()),
            (100, 150)
        );
        let acme = s.quota_overrides[&TenantId::new("acme").unwrap()];
        assert_eq!((acme.rate.get(), acme.burst.get()), (10_000, 20_000));
        let globex = s.quota_overrides[&TenantId::new("globex").unwrap()];
        assert_eq!((globex.rate.get(), globex.burst.get()), (5, 7));
        assert!(!s.insecure_no_auth);
    }

    #[test]
    fn idempotency_retention() {
        let s = Settings::merge(args(&[]), FileConfig::default()).unwrap();
        assert_eq!(
            s.idempotency_retention,
            Duration::from_secs(DEFAULT_IDEMPOTENCY_RETENTION_SECS)
        );
        let file: FileConfig = toml::from_str("idempotency_retention_secs = 60").unwrap();
        let s = Settings::merge(args(&[]), file).unwrap();
        assert_eq!(s.idempotency_retention, Duration::from_secs(60));
        let file: FileConfig = toml::from_str("idempotency_retention_secs = 60").unwrap();
        let s = Settings::merge(args(&["--idempotency-retention-secs", "5"]), file).unwrap();
        assert_eq!(s.idempotency_retention, Duration::from_secs(5));
        let err = Settings::merge(
            args(&["--idempotency-retention-secs", "0"]),
            FileConfig::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("idempotency_retention_secs"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases: [(&[&str], &str); 4] = [
            (&["--listen", "nowhere"], "invalid listen"),
            (&["--log", "redis://x"], "invalid log"),
            (&["--store", "mysql://x"], "invalid store"),
            (&["--topic-prefix", "a b"], "invalid topic_prefix"),
        ];
        for (flags, expected) in cases {
            let err = Settings::merge(args(flags), FileConfig::default()).unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
        }
        let unknown = toml::from_str::<FileConfig>("lisen = \"x\"").unwrap_err();
        assert!(unknown.to_string().contains("lisen"), "{unknown}");
        let bad = toml::from_str::<FileConfig>("[[datasets]]\nname = \"Bad\"\npartitions = 1")
            .unwrap_err();
        assert!(bad.to_string().contains("dataset"), "{bad}");
        let err = Settings::merge(args(&["--tenant-write-rate", "0"]), FileConfig::default())
            .unwrap_err();
        assert!(err.to_string().contains("tenant_write_rate"), "{err}");
        let zero_burst: FileConfig =
            toml::from_str("[quotas.tenants.acme]\nwrite_rate = 5\nwrite_burst = 0").unwrap();
        let err = Settings::merge(args(&[]), zero_burst).unwrap_err();
        assert!(err.to_string().contains("quotas.tenants.acme"), "{err}");
        let zero: FileConfig =
            toml::from_str("[[datasets]]\nname = \"d\"\npartitions = 0").unwrap();
        let err = Settings::merge(args(&[]), zero).unwrap_err();
        assert!(err.to_string().contains("datasets[0].partitions"), "{err}");
    }
}
