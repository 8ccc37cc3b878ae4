//! Configuration of `tenantsync serve`: defaults, then the TOML file (`--config`), then
//! `TENANTSYNC_*` environment variables, then flags. `Settings::load` merges the layers and
//! `Settings::validate` checks them without I/O, naming the offending field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;
use tenantsync_core::{DatasetName, Topics};
use tenantsync_processor::MAX_PARTITIONS;

pub const DEFAULT_DATA_DIR: &str = "./tenantsync-data";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
pub const DEFAULT_TOMBSTONE_RETENTION_SECS: u64 = 7 * 24 * 3600;

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
    #[arg(long, env = "TENANTSYNC_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// A librdkafka property for every Kafka client, as KEY=VALUE (repeatable), e.g.
    /// --kafka-option security.protocol=ssl.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub kafka_options: Vec<(String, String)>,
    /// Prefix of topic names: PREFIX.DATASET.changes and PREFIX.DATASET.state [default: tenantsync].
    #[arg(long, env = "TENANTSYNC_TOPIC_PREFIX", value_name = "PREFIX")]
    pub topic_prefix: Option<String>,
    /// Largest accepted request body in bytes [default: 1048576].
    #[arg(long, env = "TENANTSYNC_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// How long ?wait=applied waits for the processor, in seconds [default: 10].
    #[arg(long, env = "TENANTSYNC_APPLY_TIMEOUT_SECS", value_name = "SECS")]
    pub apply_timeout_secs: Option<u64>,
    /// How long deletes stay visible as tombstones, in the state log and in change feeds, in
    /// seconds; a feed reader further behind must start over from a snapshot [default: 604800].
    #[arg(long, env = "TENANTSYNC_TOMBSTONE_RETENTION_SECS", value_name = "SECS")]
    pub tombstone_retention_secs: Option<u64>,
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
    pub listen: Option<String>,
    pub log: Option<String>,
    pub store: Option<String>,
    pub topic_prefix: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub apply_timeout_secs: Option<u64>,
    pub tombstone_retention_secs: Option<u64>,
    pub max_wait_secs: Option<u64>,
    pub sse_heartbeat_secs: Option<u64>,
    pub sse_stall_timeout_secs: Option<u64>,
    #[serde(default)]
    pub kafka: KafkaSection,
    #[serde(default)]
    pub processor: ProcessorSection,
    /// Datasets declared at start-up.
    #[serde(default)]
    pub datasets: Vec<DatasetSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// librdkafka properties passed through to every client.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorSection {
    pub max_batch: Option<usize>,
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
    pub log: String,
    pub store: String,
    pub kafka_options: Vec<(String, String)>,
    pub topic_prefix: String,
    pub max_body_bytes: usize,
    pub apply_timeout: Duration,
    pub tombstone_retention: Duration,
    pub max_batch: usize,
    pub feed: tenantsync_api::FeedConfig,
    pub datasets: Vec<DatasetSection>,
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
        let log = args
            .log
            .or(file.log)
            .unwrap_or_else(|| format!("embedded://{}", data_dir.display()));
        let store = args
            .store
            .or(file.store)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("store.sqlite3").display()));
        // Flags add to (and override) the file's Kafka options, key by key.
        let mut kafka = file.kafka.options;
        kafka.extend(args.kafka_options);
        let settings = Settings {
            listen,
            log,
            store,
            kafka_options: kafka.into_iter().collect(),
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
            tombstone_retention: Duration::from_secs(
                args.tombstone_retention_secs
                    .or(file.tombstone_retention_secs)
                    .unwrap_or(DEFAULT_TOMBSTONE_RETENTION_SECS),
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
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every field without I/O; the error names the field.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.log.starts_with("embedded://") || self.log.starts_with("kafka://")) {
            bail!(
                "invalid log: {:?} must be embedded://DIR or kafka://HOST:PORT[,HOST:PORT...]",
                self.log
            );
        }
        if self.log == "embedded://" || self.log == "kafka://" {
            bail!("invalid log: {:?} names no directory or broker", self.log);
        }
        if !(self.store.starts_with("sqlite://")
            || self.store.starts_with("postgres://")
            || self.store.starts_with("postgresql://"))
        {
            bail!(
                "invalid store: {:?} must be sqlite://FILE or postgres://USER@HOST:PORT/DB",
                self.store
            );
        }
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
        if self.apply_timeout.is_zero() {
            bail!("invalid apply_timeout_secs: must be at least 1");
        }
        if self.tombstone_retention.is_zero() {
            bail!("invalid tombstone_retention_secs: must be at least 1");
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
        assert_eq!(s.log, "embedded://./tenantsync-data");
        assert_eq!(s.store, "sqlite://./tenantsync-data/store.sqlite3");
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
        assert_eq!(s.log, "kafka://broker:9092");
        assert_eq!(
            s.kafka_options,
            vec![
                ("client.rack".to_owned(), "b".to_owned()),
                ("security.protocol".to_owned(), "ssl".to_owned())
            ]
        );
        assert_eq!(s.datasets[0].name.as_str(), "inventory");
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
        let zero: FileConfig =
            toml::from_str("[[datasets]]\nname = \"d\"\npartitions = 0").unwrap();
        let err = Settings::merge(args(&[]), zero).unwrap_err();
        assert!(err.to_string().contains("datasets[0].partitions"), "{err}");
    }
}
