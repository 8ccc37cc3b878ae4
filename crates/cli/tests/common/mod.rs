//! Harness for tests that run the real `tenantsync` binary as a process.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod model;
pub mod outbox;
pub mod pg;
pub mod webhooks;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use serde_json::{Map, Value, json};
use tenantsync_core::{DatasetName, EntityId, Record, TenantId, Topics};

/// The binary under test: this build's, or the one `TENANTSYNC_TEST_BINARY` names (to show that
/// a test fails on an earlier build).
pub fn binary() -> PathBuf {
    std::env::var_os("TENANTSYNC_TEST_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tenantsync")))
}

/// A running `tenantsync serve`.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    args: Vec<String>,
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts `tenantsync serve` with authentication off and write quotas out of the way, for
    /// tests of everything but security: see [`Server::start_secure`].
    pub async fn start(data_dir: &Path, args: &[impl AsRef<str>]) -> Server {
        let mut all = vec![
            "--insecure-no-auth".to_owned(),
            "--tenant-write-rate".to_owned(),
            "1000000".to_owned(),
        ];
        all.extend(args.iter().map(|s| s.as_ref().to_owned()));
        Self::start_secure(data_dir, &all).await
    }

    /// Starts `tenantsync serve --data-dir DIR --listen 127.0.0.1:0 ARGS...` and waits until
    /// `/readyz` answers 200.
    pub async fn start_secure(data_dir: &Path, args: &[impl AsRef<str>]) -> Server {
        let mut all = vec![
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
        ];
        all.extend(args.iter().map(|s| s.as_ref().to_owned()));
        Self::spawn(data_dir, all).await
    }

    async fn spawn(data_dir: &Path, args: Vec<String>) -> Server {
        let mut child = Command::new(binary())
            .arg("serve")
            .args(&args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("tenantsync starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("tenantsync listening on http://") {
                    let _ = tx.send(addr.parse::<SocketAddr>().expect("an address"));
                }
            }
        });
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
            .await
            .unwrap()
            .unwrap_or_else(|_| panic!("tenantsync did not print its address; args {args:?}"));
        let server = Server {
            child,
            addr,
            args,
            data_dir: data_dir.to_owned(),
        };
        server.wait_ready().await;
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(self.url("/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "tenantsync never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same server again on the same port and data dir.
    pub async fn restart(&mut self) {
        self.kill();
        let mut args = self.args.clone();
        let i = args.iter().position(|a| a == "--listen").expect("--listen") + 1;
        args[i] = self.addr.to_string();
        // The port was just released; another process could take it, so retry a few times.
        let data_dir = self.data_dir.clone();
        *self = Self::spawn(&data_dir, args).await;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit (after a signal), returning its exit status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait")
    }
}

/// Creates a token with `tenantsync token create` on the server's data dir and returns it.
pub fn create_token(data_dir: &Path, name: &str, scopes: &[&str]) -> String {
    create_token_in(
        &["--data-dir", &data_dir.display().to_string()],
        name,
        scopes,
    )
}

/// Creates a token with `tenantsync token create`, `store_args` naming the store as `serve`
/// would (`--data-dir DIR`, `--store URL`), and returns it.
pub fn create_token_in(store_args: &[&str], name: &str, scopes: &[&str]) -> String {
    let mut command = Command::new(binary());
    command.args(["token", "create"]).args(store_args);
    command.args(["--name", name]);
    for scope in scopes {
        command.args(["--scope", scope]);
    }
    let out = command.output().expect("tenantsync token create runs");
    assert!(
        out.status.success(),
        "token create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    stdout.lines().last().expect("the token").to_owned()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of a series in a `/metrics` body.
pub fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        Some(value.trim().parse().expect("a number"))
    })
}

/// Polls the server's `/metrics` (sending `token`, if any) until `series` is at least `min`;
/// fails the test after `within`.
pub async fn wait_metric(
    server: &Server,
    token: Option<&str>,
    series: &str,
    min: f64,
    within: Duration,
) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + within;
    loop {
        let mut request = client.get(server.url("/metrics"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 200, "/metrics");
        let body = r.text().await.unwrap();
        if metric(&body, series).is_some_and(|v| v >= min) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached {min}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Declares a dataset through the API.
pub async fn declare(server: &Server, dataset: &str, partitions: u32) {
    let r = reqwest::Client::new()
        .put(server.url(&format!("/v1/datasets/{dataset}")))
        .json(&serde_json::json!({ "partitions": partitions }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "declare {dataset}: {}", r.status());
}

/// Waits until the processor has applied, published and committed everything in the dataset's
/// changes log (`GET /v1/datasets/{dataset}` shows end_offset == applied == committed).
pub async fn wait_caught_up(server: &Server, dataset: &str) {
    wait_caught_up_as(server, dataset, None).await
}

/// [`wait_caught_up`], sending `token` on a server with authentication on.
pub async fn wait_caught_up_as(server: &Server, dataset: &str, token: Option<&str>) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut request = client.get(server.url(&format!("/v1/datasets/{dataset}")));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap();
        // A 503 (a broker failing over, a group coordinator moving) is an answer to retry.
        assert!(
            status.is_success() || status == 503,
            "GET /v1/datasets/{dataset}: {status} {body}"
        );
        let done = status.is_success()
            && body["progress"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["end_offset"] == p["applied"] && p["applied"] == p["committed"]);
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the processor never caught up: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the process exits on its own (after a signal), polling up to `timeout`; `None`
/// if it is still running then. Unlike [`Server::wait`], a server that ignores the signal fails
/// the test instead of hanging it.
pub async fn wait_exit(server: &mut Server, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = server.child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The master store's position summed over a dataset's partitions: how many changes-log
/// entries the processor has applied. 0 while the server is unreachable.
pub async fn applied_total(server: &Server, dataset: &str) -> u64 {
    let Ok(response) = reqwest::Client::new()
        .get(server.url(&format!("/v1/datasets/{dataset}")))
        .send()
        .await
    else {
        return 0;
    };
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    body["progress"].as_array().map_or(0, |ps| {
        ps.iter().filter_map(|p| p["applied"].as_u64()).sum()
    })
}

/// Waits until the processor has applied more of the dataset than it had when called, so that a
/// kill right after hits work in progress.
pub async fn wait_for_progress(server: &Server, dataset: &str) {
    let before = applied_total(server, dataset).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while applied_total(server, dataset).await <= before {
        assert!(
            Instant::now() < deadline,
            "the processor made no progress for 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A number from the environment variable `name`, or `default` when it is unset.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An HTTP client whose requests give up after 20 s: one sent to a server that is killed fails
/// instead of hanging.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Sends a request to a server that may be down or restarting: `Ok` when it answers with one of
/// the `expected` statuses, `Err` (saying why) on a connection error or a 5xx, to be tried
/// again. Any other status fails the test.
pub async fn send_retryable(
    request: reqwest::RequestBuilder,
    expected: &[u16],
) -> Result<reqwest::Response, String> {
    let (client, request) = request.build_split();
    let request = request.expect("a valid request");
    let sent = format!(
        "{} {} {:?} {}",
        request.method(),
        request.url(),
        request.headers(),
        request
            .body()
            .and_then(|b| b.as_bytes())
            .map(String::from_utf8_lossy)
            .unwrap_or_default()
    );
    match client.execute(request).await {
        Ok(r) if expected.contains(&r.status().as_u16()) => Ok(r),
        Ok(r) if r.status().is_server_error() => {
            Err(format!("{}: {:?}", r.status(), r.text().await))
        }
        Ok(r) => panic!("unexpected {} for {sent}: {:?}", r.status(), r.text().await),
        Err(e) => Err(e.to_string()),
    }
}

/// A change a workload sends, with its idempotency key: sent again after a kill, it is the same
/// change, not a new one.
#[derive(Clone, Debug)]
pub struct WorkChange {
    pub key: String,
    /// `upsert`, `patch` or `delete`.
    pub op: &'static str,
    pub tenant: String,
    pub id: String,
    pub data: Option<Map<String, Value>>,
    /// `Some(0)`: the record must be absent (If-None-Match: *); `Some(v)`: it must be at version
    /// `v` (If-Match).
    pub expected_version: Option<u64>,
}

impl WorkChange {
    /// The change as a line of a bulk NDJSON write.
    pub fn line(&self) -> Value {
        json!({
            "op": self.op, "tenant": self.tenant, "id": self.id, "data": self.data,
            "idempotency_key": self.key, "expected_version": self.expected_version,
        })
    }

    /// The change as a PUT, PATCH or DELETE of its record.
    fn request(
        &self,
        client: &reqwest::Client,
        base: &str,
        dataset: &str,
    ) -> reqwest::RequestBuilder {
        let url = format!(
            "{base}/v1/datasets/{dataset}/tenants/{}/records/{}",
            self.tenant, self.id
        );
        let request = match self.op {
            "upsert" => client.put(&url).json(self.data.as_ref().unwrap()),
            "patch" => client.patch(&url).json(self.data.as_ref().unwrap()),
            _ => client.delete(&url),
        };
        let request = request.header("Idempotency-Key", &self.key);
        match self.expected_version {
            Some(0) => request.header("If-None-Match", "*"),
            Some(v) => request.header("If-Match", format!("\"{v}\"")),
            None => request,
        }
    }
}

/// Round `n` of a workload that sets every key `t{0..tenants}`/`k{0..keys}` to `{"n": n}`, with
/// idempotency keys of its own.
pub fn upsert_round(n: usize, tenants: usize, keys: usize) -> Vec<WorkChange> {
    (0..tenants * keys)
        .map(|i| WorkChange {
            key: format!("round{n}-{i}"),
            op: "upsert",
            tenant: format!("t{}", i % tenants),
            id: format!("k{}", i / tenants),
            data: Some(json!({ "n": n }).as_object().unwrap().clone()),
            expected_version: None,
        })
        .collect()
}

/// Sends changes until every one was accepted (202), retrying through kills with the same
/// idempotency keys, `pause` apart. Each attempt goes to `base()`: where the server listens now,
/// or the next of several. One change goes through PUT/PATCH/DELETE, several through bulk
/// NDJSON.
pub async fn submit(
    client: &reqwest::Client,
    dataset: &str,
    changes: &[WorkChange],
    mut base: impl FnMut() -> String,
    pause: Duration,
) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        assert!(
            Instant::now() < deadline,
            "the server did not accept changes for 180 s"
        );
        let base = base();
        let accepted = if let [c] = changes {
            send_retryable(c.request(client, &base, dataset), &[202])
                .await
                .is_ok()
        } else {
            let body: String = changes.iter().map(|c| format!("{}\n", c.line())).collect();
            let request = client
                .post(format!("{base}/v1/datasets/{dataset}/changes"))
                .body(body);
            let reply = match send_retryable(request, &[200]).await {
                Ok(r) => r.json::<Value>().await.ok(),
                Err(_) => None,
            };
            if let Some(reply) = &reply {
                let results = reply["results"].as_array().expect("results");
                assert_eq!(results.len(), changes.len());
                for r in results {
                    assert_eq!(r["status"], 202, "a line was refused: {r}");
                }
            }
            reply.is_some()
        };
        if accepted {
            return;
        }
        // The server is down or restarting: retry with the same keys.
        tokio::time::sleep(pause).await;
    }
}

/// librdkafka's in-process mock cluster with a dataset's changes and state topics, which the
/// server cannot create (the mock does not implement CreateTopics). It lives in the test
/// process, so it outlives every server process.
pub struct MockKafka {
    _cluster: MockCluster<'static, DefaultProducerContext>,
    brokers: i32,
    /// The bootstrap servers, for any Kafka client.
    pub servers: String,
    pub state_topic: String,
}

impl MockKafka {
    /// `brokers` brokers; each topic has `partitions` partitions, on every broker.
    pub fn new(brokers: i32, dataset: &str, partitions: u32) -> MockKafka {
        let cluster = MockCluster::new(brokers).unwrap();
        let topics = Topics::default();
        let dataset = DatasetName::new(dataset).unwrap();
        let state_topic = topics.state(&dataset);
        for topic in [
            topics.changes(&dataset),
            state_topic.clone(),
            topics.batches(&dataset),
        ] {
            cluster
                .create_topic(&topic, partitions as i32, brokers)
                .unwrap();
        }
        MockKafka {
            servers: cluster.bootstrap_servers(),
            _cluster: cluster,
            brokers,
            state_topic,
        }
    }

    /// The server's `--log` URL.
    pub fn log_url(&self) -> String {
        format!("kafka://{}", self.servers)
    }
}

/// The variable naming a real Kafka cluster (its bootstrap list) for the real-broker variants
/// of the tests; `dev/kafka up` prints one.
pub const REAL_KAFKA_VAR: &str = "TENANTSYNC_TEST_KAFKA";

/// The Kafka a test runs against: the in-process mock cluster, or the real cluster
/// [`REAL_KAFKA_VAR`] names, where the server creates its topics itself under a topic prefix
/// of the test's own.
pub enum KafkaTarget {
    Mock(MockKafka),
    Real { servers: String, prefix: String },
}

impl KafkaTarget {
    /// A mock cluster with the dataset's topics (see [`MockKafka::new`]).
    pub fn mock(brokers: i32, dataset: &str, partitions: u32) -> KafkaTarget {
        KafkaTarget::Mock(MockKafka::new(brokers, dataset, partitions))
    }

    /// The real cluster, with a topic prefix unique to `test` and to this run, so that tests
    /// sharing the cluster, and reruns against it, never meet each other's topics or groups.
    /// `None`, after a skip notice, when [`REAL_KAFKA_VAR`] is unset.
    pub fn real(test: &str) -> Option<KafkaTarget> {
        let servers = std::env::var(REAL_KAFKA_VAR).unwrap_or_default();
        if servers.trim().is_empty() {
            eprintln!(
                "skipping {test} on a real Kafka cluster: {REAL_KAFKA_VAR} is not set \
                 (TENANTSYNC_TEST_KAFKA=$(dev/kafka up --brokers 3 | tail -n1))"
            );
            return None;
        }
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let prefix = format!(
            "test-{}-{}-{millis:x}",
            test.replace('_', "-"),
            std::process::id()
        );
        Some(KafkaTarget::Real {
            servers: servers.trim().to_owned(),
            prefix,
        })
    }

    pub fn is_real(&self) -> bool {
        matches!(self, KafkaTarget::Real { .. })
    }

    /// The bootstrap servers, for any Kafka client.
    pub fn servers(&self) -> &str {
        match self {
            KafkaTarget::Mock(mock) => &mock.servers,
            KafkaTarget::Real { servers, .. } => servers,
        }
    }

    /// The names of the server's topics.
    pub fn topics(&self) -> Topics {
        match self {
            KafkaTarget::Mock(_) => Topics::default(),
            KafkaTarget::Real { prefix, .. } => Topics::new(prefix.as_str()),
        }
    }

    pub fn state_topic(&self, dataset: &str) -> String {
        self.topics().state(&DatasetName::new(dataset).unwrap())
    }

    pub fn batches_topic(&self, dataset: &str) -> String {
        self.topics().batches(&DatasetName::new(dataset).unwrap())
    }

    /// A consumer group name for a client of the test's own: on a real cluster, under the
    /// test's prefix, so a rerun starts a new group instead of resuming an old one.
    pub fn group(&self, name: &str) -> String {
        match self {
            KafkaTarget::Mock(_) => name.to_owned(),
            KafkaTarget::Real { prefix, .. } => format!("{prefix}.{name}"),
        }
    }

    /// The server arguments for a log on this cluster. On a real cluster, with the short
    /// sessions of [`KafkaTarget::killable_server_args`]: every test's server is SIGKILLed when
    /// the test drops it, and its processor stays a member of the processors' group until its
    /// session times out, holding up the rebalances of later tests in that group.
    pub fn server_args(&self) -> Vec<String> {
        let mut args = vec!["--log".to_owned(), format!("kafka://{}", self.servers())];
        if let KafkaTarget::Mock(mock) = self {
            // Topics on the mock are on every broker; the server checks the count at start-up.
            args.extend([
                "--kafka-replication-factor".to_owned(),
                mock.brokers.to_string(),
            ]);
        }
        if let KafkaTarget::Real { prefix, .. } = self {
            args.extend(["--topic-prefix".to_owned(), prefix.clone()]);
            args.extend(short_sessions());
        }
        args
    }

    /// [`KafkaTarget::server_args`] for a server that is to be SIGKILLed: a killed member of
    /// the processor's group holds its partitions until its session times out, so sessions are
    /// kept short (6 s is the shortest a broker accepts by default).
    pub fn killable_server_args(&self) -> Vec<String> {
        let mut args = self.server_args();
        if let KafkaTarget::Mock(_) = self {
            args.extend(short_sessions());
        }
        args
    }
}

fn short_sessions() -> Vec<String> {
    [
        "--kafka-option",
        "session.timeout.ms=6000",
        "--kafka-option",
        "heartbeat.interval.ms=500",
    ]
    .map(String::from)
    .to_vec()
}

/// A consumer in a group of its own, as a team outside tenantsync would read a state topic:
/// from the beginning, committing only when it says so.
pub fn kafka_group_config(servers: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", servers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    config
}

/// Raises each partition's `next` to the consumer's position, which also moves past offsets
/// that hold no message (transaction markers): the offset of the last message alone never
/// reaches the end of a transactionally written topic.
pub fn follow_position<C: rdkafka::consumer::ConsumerContext>(
    consumer: &impl Consumer<C>,
    next: &mut [i64],
) {
    if let Ok(positions) = consumer.position() {
        for element in positions.elements() {
            if let (Ok(p), rdkafka::Offset::Offset(position)) =
                (usize::try_from(element.partition()), element.offset())
                && p < next.len()
            {
                next[p] = next[p].max(position);
            }
        }
    }
}

/// Each partition's end of a topic, with every transaction on it resolved. Blocks.
pub fn topic_ends(servers: &str, topic: &str, partitions: u32) -> Vec<i64> {
    // The end a reader of committed entries reaches (the last stable offset) stays below an
    // open or just-committed transaction until the cluster has written its markers, which it
    // does after answering the commit: once nothing writes, wait until it equals the end of
    // everything written, so that it covers the last transaction.
    let ends = |isolation: &str| -> Vec<i64> {
        let probe: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", servers)
            .set("isolation.level", isolation)
            .create()
            .unwrap();
        (0..partitions as i32)
            .map(|p| {
                probe
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .unwrap()
                    .1
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stable = ends("read_committed");
        if stable == ends("read_uncommitted") {
            return stable;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: transactions still open after 60 s without writes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every record (tombstones included) of `tenants` in `dataset`, by (tenant, id), read straight
/// from the master store at `store_url` (open it once the server is killed).
pub async fn store_records(
    store_url: &str,
    dataset: &str,
    tenants: &[String],
) -> BTreeMap<(String, String), Record> {
    let store = tenantsync_store::open(&store_url.parse().unwrap())
        .await
        .unwrap();
    let dataset = DatasetName::new(dataset).unwrap();
    let mut stored = BTreeMap::new();
    for t in tenants {
        let tenant = TenantId::new(t.as_str()).unwrap();
        let mut after: Option<EntityId> = None;
        loop {
            let page = store
                .scan(&dataset, &tenant, after.as_ref(), 500)
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for r in page {
                stored.insert((t.clone(), r.id.to_string()), r);
            }
        }
    }
    stored
}

/// Polls until `check` holds, failing the test naming `what` after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
