//! Test support: librdkafka's in-process mock cluster, owned by a thread of its own.
//!
//! `MockCluster` holds a raw pointer, so it is neither `Send` nor `Sync`; the thread owns it
//! and takes commands over a channel, which makes the handle `Send` (a conformance fixture's
//! guard must be). The cluster is destroyed when every handle is dropped.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::mocking::MockCluster;
use tenantsync_log::{
    CompactionStats, Entry, GroupConsumer, Log, LogError, Message, Offset, Partition, TopicSpec,
};
use tenantsync_log_kafka::{KafkaConfig, KafkaLog};

enum Command {
    CreateTopic {
        name: String,
        partitions: u32,
        reply: mpsc::Sender<Result<(), String>>,
    },
}

/// A handle on a mock cluster living on its own thread.
#[derive(Clone)]
pub struct MockHost {
    commands: mpsc::Sender<Command>,
    pub bootstrap_servers: String,
}

/// Brokers in the mock cluster; topics are replicated on all of them, so `acks=all` waits for
/// followers as on a real cluster.
pub const BROKERS: i32 = 3;

impl MockHost {
    pub fn start() -> MockHost {
        let (commands, received) = mpsc::channel::<Command>();
        let (servers_tx, servers_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("mock-cluster".into())
            .spawn(move || {
                let cluster = MockCluster::new(BROKERS).expect("starting the mock cluster");
                servers_tx
                    .send(cluster.bootstrap_servers())
                    .expect("test waits for the servers");
                for command in received {
                    match command {
                        Command::CreateTopic {
                            name,
                            partitions,
                            reply,
                        } => {
                            let result = cluster
                                .create_topic(&name, partitions as i32, BROKERS)
                                .map_err(|e| e.to_string());
                            let _ = reply.send(result);
                        }
                    }
                }
            })
            .expect("spawning the mock cluster thread");
        let bootstrap_servers = servers_rx.recv().expect("mock cluster started");
        MockHost {
            commands,
            bootstrap_servers,
        }
    }

    /// Creates a topic as an operator would (the mock has no CreateTopics admin request).
    pub fn create_topic(&self, name: &str, partitions: u32) -> Result<(), String> {
        let (reply, result) = mpsc::channel();
        self.commands
            .send(Command::CreateTopic {
                name: name.to_string(),
                partitions,
                reply,
            })
            .map_err(|_| "mock cluster thread is gone".to_string())?;
        result
            .recv()
            .map_err(|_| "mock cluster thread is gone".to_string())?
    }

    pub fn config(&self) -> KafkaConfig {
        short_sessions(KafkaConfig::new(&self.bootstrap_servers))
    }

    pub async fn connect(&self) -> KafkaLog {
        KafkaLog::connect(self.config())
            .await
            .expect("connecting to the mock cluster")
    }
}

/// The variable naming a real Kafka cluster (its bootstrap list) for the real-broker tests.
pub const REAL_KAFKA_VAR: &str = "TENANTSYNC_TEST_KAFKA";

/// The client config for the real cluster [`REAL_KAFKA_VAR`] names, with short group sessions
/// as on the mock; `None`, after a skip
/// notice (once per test binary), when the variable is unset.
pub fn real_cluster_config() -> Option<KafkaConfig> {
    let servers = std::env::var(REAL_KAFKA_VAR).unwrap_or_default();
    if servers.trim().is_empty() {
        static NOTICE: std::sync::Once = std::sync::Once::new();
        NOTICE.call_once(|| {
            eprintln!(
                "skipping the real Kafka cluster tests: {REAL_KAFKA_VAR} is not set \
                 (TENANTSYNC_TEST_KAFKA=$(dev/kafka up --brokers 3 | tail -n1))"
            )
        });
        return None;
    }
    Some(short_sessions(KafkaConfig::new(servers.trim())))
}

/// Group settings that make rebalances take seconds, not most of a minute; 6 s is the shortest
/// session a broker accepts by default.
fn short_sessions(config: KafkaConfig) -> KafkaConfig {
    config
        .with_option("session.timeout.ms", "6000")
        .with_option("heartbeat.interval.ms", "500")
}

/// A topic name unique to this process and call.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The Kafka log, with topics pre-created on the mock the way an operator would before
/// `ensure_topic` (which then takes its "admin API unavailable, topic exists" path). Every
/// other call goes straight to [`KafkaLog`].
pub struct PreCreatingLog {
    pub log: KafkaLog,
    pub mock: MockHost,
}

#[async_trait]
impl Log for PreCreatingLog {
    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<(), LogError> {
        // "already exists" is expected when a case ensures a topic twice.
        let _ = self.mock.create_topic(&spec.name, spec.partitions);
        self.log.ensure_topic(spec).await
    }

    async fn append(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Offset>, LogError> {
        self.log.append(topic, messages).await
    }

    async fn read(
        &self,
        topic: &str,
        partition: Partition,
        from: Offset,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Entry>, LogError> {
        self.log.read(topic, partition, from, max, wait).await
    }

    async fn end_offset(&self, topic: &str, partition: Partition) -> Result<Offset, LogError> {
        self.log.end_offset(topic, partition).await
    }

    async fn consume(&self, group: &str, topic: &str) -> Result<Box<dyn GroupConsumer>, LogError> {
        self.log.consume(group, topic).await
    }

    async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: Partition,
    ) -> Result<Option<Offset>, LogError> {
        self.log.committed(group, topic, partition).await
    }

    async fn compact(&self, topic: &str) -> Result<CompactionStats, LogError> {
        self.log.compact(topic).await
    }

    async fn check(&self) -> Result<(), LogError> {
        self.log.check().await
    }
}

/// A fresh mock cluster and a log on it, as `Arc<dyn Log>`.
pub async fn pre_creating_log() -> (Arc<dyn Log>, MockHost) {
    let mock = MockHost::start();
    let log = mock.connect().await;
    (
        Arc::new(PreCreatingLog {
            log,
            mock: mock.clone(),
        }),
        mock,
    )
}

/// Logs to the test output when `RUST_LOG` asks for it.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
