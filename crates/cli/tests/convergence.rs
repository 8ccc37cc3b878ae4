//! Convergence (issue 3, "done when"): seven independent subscribers build copies of a dataset
//! while a workload of upserts, patches, deletes and re-creates runs and `tenantsync serve` (Kafka
//! backend on librdkafka's in-process mock cluster) is SIGKILLed and restarted, on a new port
//! each time. At the end every copy must equal the master store, record for record, and no
//! subscriber may ever have seen a key's version go down.
//!
//! The subscribers, each with its own copy:
//! - `pull-all`, `pull-small-pages`: one long-poll loop per tenant on the tenant feed, each
//!   tenant with its own cursor (the second with tiny pages and started late, so its snapshot
//!   spans many pages of a busy dataset);
//! - `subscription`: one subscription covering every tenant, acknowledging through `?cursor=`
//!   and `POST .../ack` in turn, honouring `reset`;
//! - `sse-1`, `sse-2`: one Server-Sent Events stream per tenant, resuming with `Last-Event-ID`
//!   after every kill and after dropping the stream on purpose (the second started late);
//! - `kafka-a`, `kafka-b`: plain rdkafka consumer groups on the state topic, keeping the highest
//!   version per key as the README says (`kafka-a` restarts its consumer once and resumes from
//!   its committed offsets; `kafka-b` starts late).
//!
//! The HTTP clients now and then stop reading for up to a second, so they are behind when a
//! kill comes and must resume from their cursors. Once the workload stopped, each tenant gets
//! a last record (its "finale"); an HTTP client is done when it holds every finale it follows
//! (the feeds have no gaps, so it then holds everything before), a Kafka group when it has read
//! the state topic to its end. No client decides it is done by a timer.
//!
//! The reference is the master store read through the API: every key the test ever wrote,
//! read with `GET .../records/{id}` once the processor has caught up (deleted = absent).
//!
//! The same test runs against a real Kafka cluster when `TENANTSYNC_TEST_KAFKA` names one.
//!
//! `TENANTSYNC_CONVERGENCE_KILLS` sets the number of kills (default 4),
//! `TENANTSYNC_CONVERGENCE_CHANGES` the minimum number of changes (default 3000) and
//! `TENANTSYNC_CONVERGENCE_SEED` the seed of the workload and the kill points (printed).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{KafkaTarget, Server, WorkChange, env_or, send_retryable};
use futures::FutureExt;
use futures::future::BoxFuture;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Headers;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const DATASET: &str = "convergence";
const PARTITIONS: u32 = 4;
const TENANTS: usize = 8;
const IDS_PER_TENANT: usize = 24;
const WORKERS: usize = 4;
const SUBSCRIPTION: &str = "convergence-all";
/// The id of each tenant's last record, written once the workload stopped.
const FINALE_ID: &str = "finale";
/// Retry pause after a connection error or a 5xx (the server is down or restarting).
const BACKOFF: Duration = Duration::from_millis(50);
/// How long the clients have to catch up once the processor has.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

type Key = (String, String);

/// A live record as a copy holds it.
#[derive(Debug, Clone, PartialEq)]
struct Held {
    version: u64,
    data: Value,
    updated_at: Value,
}

/// One subscriber's copy of the dataset, with what it noticed on the way.
#[derive(Default)]
struct Replica {
    records: BTreeMap<Key, Held>,
    /// Per key, the highest version this subscriber was ever shown and what it said (`None`
    /// for a delete); kept through deletes and resets.
    highest: HashMap<Key, (u64, Option<Value>)>,
    /// Versions going down, or one version shown with two different contents.
    anomalies: Vec<String>,
    deliveries: u64,
    /// 410s (tenant feeds, SSE `gone`) and subscription `reset`s: copies of a tenant dropped.
    restarts_from_snapshot: u64,
    /// Connections lost or refused (kills).
    reconnects: u64,
    /// Times the client paused or dropped its SSE stream of its own accord, to fall behind.
    pauses: u64,
    /// Kafka entries read again after the consumer restarted from its committed offsets.
    redeliveries: u64,
    /// Per tenant (or per partition), what the client last got: shown if it never finishes.
    last: BTreeMap<String, String>,
    /// Per tenant, the tenant feed cursor a pull client holds.
    cursors: BTreeMap<String, String>,
}

impl Replica {
    /// Applies one delivered state of a key. `state` is `None` for a delete.
    ///
    /// HTTP subscribers apply what the feed says, which must never go down. Kafka consumers
    /// follow the documented rule, keeping the highest version per key (`keep_highest`): a
    /// lower version is ignored, and it is an anomaly only if it comes from the log in order
    /// (not `redelivered`: a consumer that restarts from its committed offsets reads older
    /// entries again, which is how Kafka works, not the log going down).
    fn apply(
        &mut self,
        tenant: &str,
        id: &str,
        version: u64,
        state: Option<(Value, Value)>,
        keep_highest: bool,
        redelivered: bool,
    ) {
        self.deliveries += 1;
        self.redeliveries += u64::from(redelivered);
        let key = (tenant.to_owned(), id.to_owned());
        let content = state.as_ref().map(|(data, _)| data.clone());
        match self.highest.get(&key) {
            Some((seen, _)) if version < *seen => {
                if !redelivered {
                    self.anomalies.push(format!(
                        "{tenant}:{id} went down from version {seen} to {version}"
                    ));
                }
                if keep_highest {
                    return;
                }
            }
            Some((seen, seen_content)) if version == *seen && *seen_content != content => {
                self.anomalies.push(format!(
                    "{tenant}:{id} version {version} shown as {seen_content:?} and as {content:?}"
                ));
            }
            _ => {
                self.highest.insert(key.clone(), (version, content));
            }
        }
        match state {
            Some((data, updated_at)) => {
                self.records.insert(
                    key,
                    Held {
                        version,
                        data,
                        updated_at,
                    },
                );
            }
            None => {
                self.records.remove(&key);
            }
        }
    }

    /// Applies a change of a tenant feed or subscription batch.
    fn apply_change(&mut self, tenant: &str, change: &Value) {
        let id = change["id"].as_str().expect("a change has an id");
        let version = change["version"].as_u64().expect("a change has a version");
        let state = match change["op"].as_str() {
            Some("upsert") => Some((change["data"].clone(), change["updated_at"].clone())),
            Some("delete") => None,
            other => panic!("unknown op {other:?} in {change}"),
        };
        self.apply(tenant, id, version, state, false, false);
    }

    /// Whether the copy holds the tenant's finale record, written after the workload: the
    /// last change of the tenant, so every earlier one was delivered too (the feeds have no
    /// gaps).
    fn has_finale(&self, tenant: &str) -> bool {
        self.records
            .contains_key(&(tenant.to_owned(), FINALE_ID.to_owned()))
    }

    /// Drops everything held of a tenant: the feed said to start over from a snapshot.
    fn drop_tenant(&mut self, tenant: &str) {
        self.restarts_from_snapshot += 1;
        self.records.retain(|(t, _), _| t != tenant);
    }
}

type Shared = Arc<Mutex<Replica>>;

/// What every client shares: where the server is now.
#[derive(Clone)]
struct Ctx {
    /// The current base URL: each restart listens on a new port.
    base: watch::Receiver<String>,
    /// How many restarts happened; late clients wait for the first.
    restarts: watch::Receiver<usize>,
    tenants: Arc<Vec<String>>,
    seed: u64,
}

impl Ctx {
    fn base(&self) -> String {
        self.base.borrow().clone()
    }

    /// A generator of its own for each client task, derived from the run's seed.
    fn rng(&self, salt: &str) -> StdRng {
        // FNV-1a: stable across runs and Rust versions, so a seed replays the same behaviour.
        let hash = salt.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        StdRng::seed_from_u64(self.seed ^ hash)
    }

    async fn after_first_restart(&self) {
        let mut restarts = self.restarts.clone();
        let _ = restarts.wait_for(|n| *n >= 1).await;
    }
}

/// Now and then (with probability `p`) a subscriber stops reading for a while, falls behind
/// and must resume from where it was.
async fn maybe_pause(rng: &mut StdRng, copy: &Shared, p: f64) {
    if rng.random_bool(p) {
        copy.lock().unwrap().pauses += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..1000))).await;
    }
}

/// Counts a lost or refused connection (a kill) and pauses before the client asks again.
async fn back_off(copy: &Shared) {
    copy.lock().unwrap().reconnects += 1;
    tokio::time::sleep(BACKOFF).await;
}

/// Notes why a tenant's request failed, then [`back_off`].
async fn back_off_tenant(copy: &Shared, tenant: &str, error: &str) {
    let last = format!("error {error}");
    copy.lock().unwrap().last.insert(tenant.to_owned(), last);
    back_off(copy).await;
}

fn feed_url(base: &str, tenant: &str) -> String {
    format!("{base}/v1/datasets/{DATASET}/tenants/{tenant}/changes")
}

/// One tenant of a long-poll pull client: `GET .../changes?cursor=&wait=1` in a loop.
async fn pull_tenant(
    ctx: Ctx,
    client: reqwest::Client,
    copy: Shared,
    tenant: String,
    limit: Option<usize>,
) {
    let mut rng = ctx.rng(&format!("pull-{limit:?}-{tenant}"));
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}?wait=1", feed_url(&ctx.base(), &tenant));
        if let Some(limit) = limit {
            url.push_str(&format!("&limit={limit}"));
        }
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page = match send_retryable(client.get(&url), &[200, 410]).await {
            Ok(r) if r.status() == 410 => {
                copy.lock().unwrap().drop_tenant(&tenant);
                cursor = None;
                continue;
            }
            Ok(r) => r.json::<Value>().await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        // No answer, or its body was cut off by a kill: ask again from the same cursor.
        let page = match page {
            Ok(page) => page,
            Err(error) => {
                back_off_tenant(&copy, &tenant, &error).await;
                continue;
            }
        };
        let done = {
            let mut copy = copy.lock().unwrap();
            let changes = page["changes"].as_array().expect("changes");
            for change in changes {
                copy.apply_change(&tenant, change);
            }
            let last = format!(
                "{} changes, up_to_date {}, cursor {}",
                changes.len(),
                page["up_to_date"],
                page["cursor"]
            );
            copy.last.insert(tenant.clone(), last);
            let cursor = page["cursor"].as_str().expect("a cursor").to_owned();
            copy.cursors.insert(tenant.clone(), cursor);
            copy.has_finale(&tenant) && page["up_to_date"] == true
        };
        cursor = Some(page["cursor"].as_str().expect("a cursor").to_owned());
        if done {
            return;
        }
        maybe_pause(&mut rng, &copy, 0.2).await;
    }
}

/// A client following every tenant, one task each (`follow` is [`pull_tenant`] or
/// [`sse_tenant`]); done when every tenant's task is.
async fn each_tenant<F, Fut>(
    ctx: Ctx,
    client: reqwest::Client,
    copy: Shared,
    limit: Option<usize>,
    follow: F,
) where
    F: Fn(Ctx, reqwest::Client, Shared, String, Option<usize>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tasks: Vec<JoinHandle<()>> = ctx
        .tenants
        .iter()
        .map(|t| {
            let (ctx, client, copy) = (ctx.clone(), client.clone(), copy.clone());
            tokio::spawn(follow(ctx, client, copy, t.clone(), limit))
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// A long-poll client following every tenant, each with its own cursor.
async fn pull_client(ctx: Ctx, copy: Shared, limit: Option<usize>) {
    each_tenant(ctx, common::http_client(), copy, limit, pull_tenant).await;
}

/// A subscription covering every tenant. A batch is acknowledged by passing its cursor to the
/// next `GET .../changes`, or every fourth time through `POST .../ack`.
async fn subscription_client(ctx: Ctx, copy: Shared, limit: usize) {
    let client = common::http_client();
    let mut rng = ctx.rng("subscription");
    let mut unacked: Option<String> = None;
    let mut batches = 0u64;
    loop {
        let base = ctx.base();
        if let Some(cursor) = unacked.as_ref().filter(|_| batches % 4 == 3) {
            let ack = client
                .post(format!("{base}/v1/subscriptions/{SUBSCRIPTION}/ack"))
                .json(&json!({ "cursor": cursor }));
            if send_retryable(ack, &[204]).await.is_err() {
                back_off(&copy).await;
                continue;
            }
            unacked = None;
        }
        let mut url =
            format!("{base}/v1/subscriptions/{SUBSCRIPTION}/changes?wait=1&limit={limit}");
        if let Some(cursor) = &unacked {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let batch = match send_retryable(client.get(&url), &[200, 204]).await {
            Ok(r) if r.status() == 204 => {
                // Nothing pending, and the last batch acknowledged.
                unacked = None;
                let copy = copy.lock().unwrap();
                if ctx.tenants.iter().all(|t| copy.has_finale(t)) {
                    return;
                }
                continue;
            }
            Ok(r) => r.json::<Value>().await.ok(),
            Err(_) => None,
        };
        let Some(batch) = batch else {
            back_off(&copy).await;
            continue;
        };
        assert_eq!(batch["dataset"], DATASET, "{batch}");
        let tenant = batch["tenant"].as_str().expect("a batch names its tenant");
        {
            let mut copy = copy.lock().unwrap();
            if batch["reset"] == true {
                copy.drop_tenant(tenant);
            }
            let changes = batch["changes"].as_array().expect("changes");
            for change in changes {
                copy.apply_change(tenant, change);
            }
            let last = format!(
                "reset {}, {} changes, up_to_date {}, cursor {}",
                batch["reset"],
                changes.len(),
                batch["up_to_date"],
                batch["cursor"]
            );
            copy.last.insert(tenant.to_owned(), last);
        }
        unacked = Some(batch["cursor"].as_str().expect("a cursor").to_owned());
        batches += 1;
        // Batches come back to back while tenants are pending: pause rarely, or the client
        // would sleep through every kill.
        maybe_pause(&mut rng, &copy, 0.03).await;
    }
}

/// One server-sent event.
#[derive(Debug, Default)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: String,
}

/// Parses one event block (the text between blank lines); `None` for comments only.
fn parse_event(block: &str) -> Option<SseEvent> {
    let mut event = SseEvent::default();
    let mut any = false;
    for line in block.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with(':') || line.is_empty() {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        any = true;
        match field {
            "event" => event.event = value.to_owned(),
            "id" => event.id = Some(value.to_owned()),
            "data" => {
                if !event.data.is_empty() {
                    event.data.push('\n');
                }
                event.data.push_str(value);
            }
            _ => {}
        }
    }
    any.then_some(event)
}

/// Why an SSE connection ended.
enum StreamEnd {
    /// The tenant's finale arrived: done.
    Done,
    /// Reconnect (with the last event id, if any).
    Reconnect,
    /// Reconnect after a pause, having dropped the stream on purpose.
    Pause,
}

/// One tenant of an SSE client: streams the tenant feed, resuming with `Last-Event-ID`.
async fn sse_tenant(
    ctx: Ctx,
    client: reqwest::Client,
    copy: Shared,
    tenant: String,
    limit: Option<usize>,
) {
    let mut rng = ctx.rng(&format!("sse-{limit:?}-{tenant}"));
    let mut last_id: Option<String> = None;
    loop {
        let mut url = feed_url(&ctx.base(), &tenant);
        if let Some(limit) = limit {
            url.push_str(&format!("?limit={limit}"));
        }
        let mut request = client.get(&url).header("Accept", "text/event-stream");
        if let Some(id) = &last_id {
            request = request.header("Last-Event-ID", id);
        }
        let mut response = match send_retryable(request, &[200, 410]).await {
            Ok(r) if r.status() == 410 => {
                copy.lock().unwrap().drop_tenant(&tenant);
                last_id = None;
                continue;
            }
            Ok(r) => r,
            Err(error) => {
                back_off_tenant(&copy, &tenant, &error).await;
                continue;
            }
        };
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "sse {tenant}: content type {content_type:?}"
        );
        let mut buffer: Vec<u8> = Vec::new();
        // This stream is dropped after this many changes, to resume later.
        let mut drop_after: u32 = rng.random_range(10..60);
        let end = 'stream: loop {
            // Heartbeats come every second: five silent seconds mean a dead connection.
            let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk()).await;
            let Ok(Ok(Some(bytes))) = chunk else {
                copy.lock().unwrap().reconnects += 1;
                break StreamEnd::Reconnect;
            };
            buffer.extend_from_slice(&bytes);
            while let Some(at) = buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = buffer.drain(..at + 2).collect();
                let block = std::str::from_utf8(&block).expect("events are UTF-8");
                let Some(event) = parse_event(block) else {
                    continue;
                };
                match event.event.as_str() {
                    "change" => {
                        let change: Value = serde_json::from_str(&event.data)
                            .unwrap_or_else(|e| panic!("sse {tenant}: {e}: {}", event.data));
                        last_id = Some(event.id.expect("a change event has an id"));
                        let done = {
                            let mut copy = copy.lock().unwrap();
                            copy.apply_change(&tenant, &change);
                            copy.last
                                .insert(tenant.clone(), format!("change {change} at {last_id:?}"));
                            copy.has_finale(&tenant)
                        };
                        if done {
                            break 'stream StreamEnd::Done;
                        }
                        drop_after -= 1;
                        if drop_after == 0 {
                            break 'stream StreamEnd::Pause;
                        }
                    }
                    "up-to-date" => {
                        last_id = Some(event.id.expect("an up-to-date event has an id"));
                        copy.lock()
                            .unwrap()
                            .last
                            .insert(tenant.clone(), format!("up-to-date at {last_id:?}"));
                    }
                    "gone" => {
                        copy.lock().unwrap().drop_tenant(&tenant);
                        last_id = None;
                        break 'stream StreamEnd::Reconnect;
                    }
                    other => panic!("sse {tenant}: unknown event {other:?}: {event:?}"),
                }
            }
        };
        match end {
            StreamEnd::Done => return,
            StreamEnd::Reconnect => {}
            StreamEnd::Pause => {
                drop(response);
                copy.lock().unwrap().pauses += 1;
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..1000))).await;
            }
        }
    }
}

/// An SSE client following every tenant, each with its own stream.
async fn sse_client(ctx: Ctx, copy: Shared, limit: Option<usize>) {
    // No overall timeout: it would cut every stream. A dead stream is noticed by its silence.
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    each_tenant(ctx, client, copy, limit, sse_tenant).await;
}

/// A consumer of the state topic in its own group.
fn kafka_consumer(servers: &str, group: &str, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = common::kafka_group_config(servers, group)
        .set("session.timeout.ms", "6000")
        .create()
        .expect("a consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// A plain Kafka consumer group building a copy from the state topic: upsert by key, delete on
/// a tombstone, ignore a version lower than the one held. Commits now and then; with
/// `restart_after`, closes its consumer after that many messages and carries on with a new one
/// from the group's committed offsets. Done once it has read up to `ends` (the state topic's
/// end once the processor caught up).
async fn kafka_group(
    servers: String,
    group: String,
    topic: String,
    copy: Shared,
    ends: Arc<OnceLock<Vec<i64>>>,
    restart_after: Option<u64>,
) {
    let mut consumer = kafka_consumer(&servers, &group, &topic);
    let mut next = vec![0i64; PARTITIONS as usize];
    let mut consumed = 0u64;
    loop {
        common::follow_position(&consumer, &mut next);
        if let Some(ends) = ends.get()
            && next.iter().zip(ends).all(|(n, e)| n >= e)
        {
            return;
        }
        let message = match tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await
        {
            Ok(Ok(message)) => message,
            Ok(Err(error)) => {
                eprintln!("{group}: {error}");
                continue;
            }
            Err(_) => continue,
        };
        let key = std::str::from_utf8(message.key().expect("a key")).expect("a UTF-8 key");
        let (tenant, id) = key.split_once(':').expect("key tenant:id");
        let headers = message.headers().expect("headers");
        let version: u64 = headers
            .iter()
            .find(|h| h.key == "version")
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
            .unwrap_or_else(|| panic!("{group}: {key} lacks a version header"));
        let state = message.payload().map(|value| {
            let record: Value = serde_json::from_slice(value).expect("a JSON value");
            assert_eq!(record["version"], version, "{group}: {key}: {record}");
            (record["data"].clone(), record["updated_at"].clone())
        });
        let partition = message.partition() as usize;
        let redelivered = message.offset() < next[partition];
        {
            let mut copy = copy.lock().unwrap();
            copy.apply(tenant, id, version, state, true, redelivered);
            let last = format!("offset {} of {key}", message.offset());
            copy.last.insert(format!("partition {partition}"), last);
        }
        next[partition] = next[partition].max(message.offset() + 1);
        consumed += 1;
        if consumed.is_multiple_of(50) {
            consumer
                .commit_message(&message, CommitMode::Async)
                .unwrap_or_else(|e| eprintln!("{group}: commit failed: {e}"));
        }
        drop(message);
        if restart_after == Some(consumed) {
            drop(consumer);
            copy.lock().unwrap().reconnects += 1;
            consumer = kafka_consumer(&servers, &group, &topic);
        }
    }
}

/// What the workload believes of a key: whether it is live (one writer per tenant, changes
/// applied in order, no preconditions, so this is exact).
type Liveness = HashMap<Key, bool>;

/// The next change of one of the writer's tenants. Most go to a small set of ids written
/// again and again (creates, updates, patches, deletes, re-creates). The others create
/// short-lived records with ids of their own, updated a little and deleted for good: a delete
/// a subscriber missed is never repaired by a later write of that id.
fn next_change(
    rng: &mut StdRng,
    live: &mut Liveness,
    tenant: &str,
    seq: u64,
    w: usize,
) -> WorkChange {
    let key = format!("w{w}-{seq}");
    let live_temps: Vec<String> = live
        .iter()
        .filter(|((t, id), l)| **l && t == tenant && id.starts_with("tmp-"))
        .map(|((_, id), _)| id.clone())
        .collect();
    let (id, roll) = match rng.random_range(0..100) {
        0..7 => (format!("tmp-{w}-{seq}"), 0),
        7..27 if !live_temps.is_empty() => (
            live_temps[rng.random_range(0..live_temps.len())].clone(),
            rng.random_range(45..100),
        ),
        _ => (
            format!("item-{}", rng.random_range(0..IDS_PER_TENANT)),
            rng.random_range(0..100),
        ),
    };
    let k = (tenant.to_owned(), id.clone());
    let is_live = live.get(&k).copied().unwrap_or(false);
    // Mostly (re-)creates of absent keys; updates, patches and deletes of live ones. Now and
    // then a patch of an absent key (refused) and a delete of one (no change).
    let op = match (is_live, roll) {
        (false, 0..85) | (true, 0..45) => "upsert",
        (false, 85..92) | (true, 45..75) => "patch",
        _ => "delete",
    };
    let data = match op {
        // Small value ranges: some upserts leave the data as it was (no new version).
        "upsert" => json!({
            "n": rng.random_range(0..4),
            "tag": format!("t{}", rng.random_range(0..3)),
            "nested": {"a": rng.random_range(0..3)},
        }),
        "patch" => json!({
            "n": rng.random_range(0..4),
            "tag": if rng.random_bool(0.3) { Value::Null } else { json!("p") },
            "nested": {"b": rng.random_range(0..3)},
        }),
        _ => Value::Null,
    };
    match op {
        "upsert" => {
            live.insert(k, true);
        }
        "delete" => {
            live.insert(k, false);
        }
        _ => {}
    }
    WorkChange {
        key,
        op,
        tenant: tenant.to_owned(),
        id,
        data: data.as_object().cloned(),
        expected_version: None,
    }
}

/// Sends changes until they were accepted, retrying through kills against wherever the server
/// listens now.
async fn submit(client: &reqwest::Client, base: &watch::Receiver<String>, changes: &[WorkChange]) {
    let base = || base.borrow().clone();
    common::submit(client, DATASET, changes, base, BACKOFF).await;
}

/// One writer: its own tenants, batches of changes at a modest pace until the kills are over
/// and at least `min_changes` were written in all. Returns every key it wrote.
async fn workload(
    w: usize,
    tenants: Vec<String>,
    seed: u64,
    base: watch::Receiver<String>,
    killing_done: Arc<AtomicBool>,
    submitted: Arc<AtomicUsize>,
    min_changes: usize,
) -> Vec<Key> {
    let client = common::http_client();
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(w as u64));
    let mut live = Liveness::new();
    let mut seq = 0u64;
    while !(killing_done.load(Ordering::SeqCst) && submitted.load(Ordering::SeqCst) >= min_changes)
    {
        // Past the minimum, only a trickle until the last kill: the mock cluster keeps 5 MiB per
        // partition, and a run with many kills must stay well below it.
        let trickle = submitted.load(Ordering::SeqCst) >= min_changes;
        let n = if trickle || rng.random_bool(0.25) {
            1
        } else {
            rng.random_range(2..=12)
        };
        let batch: Vec<WorkChange> = (0..n)
            .map(|_| {
                seq += 1;
                let tenant = &tenants[rng.random_range(0..tenants.len())];
                next_change(&mut rng, &mut live, tenant, seq, w)
            })
            .collect();
        submit(&client, &base, &batch).await;
        submitted.fetch_add(batch.len(), Ordering::SeqCst);
        let pause = if trickle { 400 } else { 200 };
        tokio::time::sleep(Duration::from_millis(rng.random_range(pause / 2..pause))).await;
    }
    live.into_keys().collect()
}

/// The master store, read through the API: every key ever written.
async fn reference(base: &str, written: &BTreeSet<Key>) -> BTreeMap<Key, Held> {
    let client = reqwest::Client::new();
    let mut out = BTreeMap::new();
    for (tenant, id) in written {
        let r = client
            .get(format!(
                "{base}/v1/datasets/{DATASET}/tenants/{tenant}/records/{id}"
            ))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => {
                let record: Value = r.json().await.unwrap();
                assert_eq!(record["tenant"], tenant.as_str());
                assert_eq!(record["id"], id.as_str());
                out.insert(
                    (tenant.clone(), id.clone()),
                    Held {
                        version: record["version"].as_u64().unwrap(),
                        data: record["data"].clone(),
                        updated_at: record["updated_at"].clone(),
                    },
                );
            }
            404 => {}
            s => panic!("GET {tenant}:{id}: {s}: {:?}", r.text().await),
        }
    }
    out
}

/// A fresh snapshot of every tenant through the feed, page by page.
async fn fresh_snapshot(base: &str, tenants: &[String]) -> Replica {
    let client = reqwest::Client::new();
    let mut copy = Replica::default();
    for tenant in tenants {
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{}?limit=10", feed_url(base, tenant));
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let page: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
            for change in page["changes"].as_array().unwrap() {
                assert_eq!(
                    change["op"], "upsert",
                    "a snapshot holds no deletes: {change}"
                );
                copy.apply_change(tenant, change);
            }
            cursor = Some(page["cursor"].as_str().unwrap().to_owned());
            if page["up_to_date"] == true {
                break;
            }
        }
    }
    copy
}

/// Every difference between a copy and the reference.
fn differences(copy: &BTreeMap<Key, Held>, reference: &BTreeMap<Key, Held>) -> Vec<String> {
    let mut out = Vec::new();
    for (key, want) in reference {
        match copy.get(key) {
            None => out.push(format!("{key:?} missing (store has {want:?})")),
            Some(got) if got != want => {
                out.push(format!("{key:?}: copy has {got:?}, store has {want:?}"))
            }
            Some(_) => {}
        }
    }
    for (key, got) in copy {
        if !reference.contains_key(key) {
            out.push(format!(
                "{key:?} should be absent (deleted), copy has {got:?}"
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_subscriber_copy_converges_to_the_master_store_through_sigkills() {
    run(KafkaTarget::mock(1, DATASET, PARTITIONS)).await;
}

/// The same on a real cluster, when `TENANTSYNC_TEST_KAFKA` names one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_subscriber_copy_converges_on_a_real_kafka_cluster() {
    if let Some(kafka) = KafkaTarget::real("convergence") {
        run(kafka).await;
    }
}

async fn run(kafka: KafkaTarget) {
    let started = Instant::now();
    let kills = env_or("TENANTSYNC_CONVERGENCE_KILLS", 4).max(1) as usize;
    let min_changes = env_or("TENANTSYNC_CONVERGENCE_CHANGES", 3000) as usize;
    let seed = env_or("TENANTSYNC_CONVERGENCE_SEED", rand::random());
    eprintln!(
        "convergence: seed {seed} (TENANTSYNC_CONVERGENCE_SEED), {kills} kills, >= {min_changes} changes"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut args = kafka.killable_server_args();
    args.extend(["--sse-heartbeat-secs", "1"].map(String::from));
    let server = Server::start(dir.path(), &args).await;
    common::declare(&server, DATASET, PARTITIONS).await;
    let r = reqwest::Client::new()
        .put(server.url(&format!("/v1/subscriptions/{SUBSCRIPTION}")))
        .json(&json!({"datasets": [DATASET], "tenants": "*"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);

    let tenants: Vec<String> = (0..TENANTS).map(|t| format!("tenant-{t}")).collect();
    let (base_tx, base_rx) = watch::channel(server.url(""));
    let (restarts_tx, restarts_rx) = watch::channel(0usize);
    let ctx = Ctx {
        base: base_rx.clone(),
        restarts: restarts_rx,
        tenants: Arc::new(tenants.clone()),
        seed,
    };

    // The subscribers. Some start at once, on an empty dataset; the others after the first
    // restart, with a snapshot of a busy one.
    let names = [
        "pull-all",
        "pull-small-pages",
        "subscription",
        "sse-1",
        "sse-2",
        "kafka-a",
        "kafka-b",
    ];
    let copies: Vec<(&str, Shared)> = names.iter().map(|n| (*n, Shared::default())).collect();
    let copy = |name: &str| copies.iter().find(|(n, _)| *n == name).unwrap().1.clone();
    let kafka_ends: Arc<OnceLock<Vec<i64>>> = Arc::default();
    let kafka_client = |name: &str, restart_after| {
        kafka_group(
            kafka.servers().to_owned(),
            kafka.group(&format!("convergence-{name}")),
            kafka.state_topic(DATASET),
            copy(name),
            kafka_ends.clone(),
            restart_after,
        )
    };
    // (name, whether it starts after the first restart, the client)
    let clients: Vec<(&str, bool, BoxFuture<'static, ()>)> = vec![
        (
            "pull-all",
            false,
            pull_client(ctx.clone(), copy("pull-all"), None).boxed(),
        ),
        (
            "pull-small-pages",
            true,
            pull_client(ctx.clone(), copy("pull-small-pages"), Some(7)).boxed(),
        ),
        (
            "subscription",
            false,
            subscription_client(ctx.clone(), copy("subscription"), 25).boxed(),
        ),
        (
            "sse-1",
            false,
            sse_client(ctx.clone(), copy("sse-1"), None).boxed(),
        ),
        (
            "sse-2",
            true,
            sse_client(ctx.clone(), copy("sse-2"), Some(5)).boxed(),
        ),
        ("kafka-a", false, kafka_client("kafka-a", Some(400)).boxed()),
        ("kafka-b", true, kafka_client("kafka-b", None).boxed()),
    ];
    let clients: Vec<(&str, JoinHandle<()>)> = clients
        .into_iter()
        .map(|(name, late, client)| {
            let ctx = ctx.clone();
            let handle = tokio::spawn(async move {
                if late {
                    ctx.after_first_restart().await;
                }
                client.await;
            });
            (name, handle)
        })
        .collect();

    // The workload.
    let killing_done = Arc::new(AtomicBool::new(false));
    let submitted = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let mine: Vec<String> = tenants.iter().skip(w).step_by(WORKERS).cloned().collect();
        workers.push(tokio::spawn(workload(
            w,
            mine,
            seed,
            base_rx.clone(),
            killing_done.clone(),
            submitted.clone(),
            min_changes,
        )));
    }

    // The kills: each at a random moment after the processor made progress, so they hit
    // recovery and steady processing alike; each restart listens on a new port.
    let killer = {
        let done = killing_done.clone();
        let args = args.clone();
        let data_dir = dir.path().to_owned();
        let mut server = server;
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ 0x6b11_15ee);
            for k in 0..kills {
                common::wait_for_progress(&server, DATASET).await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..2000))).await;
                server.kill();
                server = Server::start(&data_dir, &args).await;
                base_tx.send_replace(server.url(""));
                restarts_tx.send_replace(k + 1);
            }
            done.store(true, Ordering::SeqCst);
            (server, base_tx, restarts_tx)
        })
    };
    let (server, _base_tx, _restarts_tx) = killer.await.unwrap();
    let mut written: BTreeSet<Key> = BTreeSet::new();
    for w in workers {
        written.extend(w.await.unwrap());
    }
    let total = submitted.load(Ordering::SeqCst);
    eprintln!(
        "convergence: {total} changes written through {kills} kills in {:.1?}",
        started.elapsed()
    );

    // The end: each tenant's finale record, its last change; once the processor applied,
    // published and committed everything, every client must catch up with what it was given.
    let client = reqwest::Client::new();
    for tenant in &tenants {
        let finale = WorkChange {
            key: format!("{tenant}-finale"),
            op: "upsert",
            tenant: tenant.clone(),
            id: FINALE_ID.into(),
            data: json!({"finale": true}).as_object().cloned(),
            expected_version: None,
        };
        submit(&client, &base_rx, &[finale]).await;
    }
    common::wait_caught_up(&server, DATASET).await;
    let ends = {
        let (servers, topic) = (kafka.servers().to_owned(), kafka.state_topic(DATASET));
        tokio::task::spawn_blocking(move || common::topic_ends(&servers, &topic, PARTITIONS))
            .await
            .unwrap()
    };
    kafka_ends.set(ends.clone()).unwrap();
    let drain_deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    for (name, handle) in clients {
        match tokio::time::timeout_at(drain_deadline, handle).await {
            Ok(joined) => joined.unwrap_or_else(|e| panic!("{name} failed: {e}")),
            Err(_) => {
                let (mut report, cursors) = {
                    let copy = copy(name);
                    let copy = copy.lock().unwrap();
                    let missing: Vec<&String> =
                        tenants.iter().filter(|t| !copy.has_finale(t)).collect();
                    let cursors: Vec<(String, String)> = missing
                        .iter()
                        .filter_map(|t| Some(((*t).clone(), copy.cursors.get(*t)?.clone())))
                        .collect();
                    let report = format!(
                        "{} deliveries, {} records held, finales missing for {missing:?}; last \
                         responses: {:#?}",
                        copy.deliveries,
                        copy.records.len(),
                        copy.last
                    );
                    (report, cursors)
                };
                // What the server answers now from the stuck cursors, and without one.
                let base = server.url("");
                let client = reqwest::Client::new();
                for (tenant, cursor) in cursors {
                    for url in [
                        format!("{}?cursor={cursor}", feed_url(&base, &tenant)),
                        feed_url(&base, &tenant),
                    ] {
                        let body = match client.get(&url).send().await {
                            Ok(r) => r.text().await.unwrap_or_default(),
                            Err(e) => e.to_string(),
                        };
                        report.push_str(&format!("\nGET {url}\n  -> {body}"));
                    }
                }
                panic!(
                    "seed {seed}: {name} did not catch up within {DRAIN_TIMEOUT:?} after the \
                     processor did: {report}"
                );
            }
        }
    }

    let base = server.url("");
    let workload_keys = written.len();
    written.extend(tenants.iter().map(|t| (t.clone(), FINALE_ID.to_owned())));
    let reference = reference(&base, &written).await;
    let live = reference.keys().filter(|(_, id)| id != FINALE_ID).count();
    eprintln!(
        "convergence: the store holds {live} live records of the {workload_keys} keys written; \
         state topic ends {ends:?}",
    );
    assert!(
        live > 0 && live < workload_keys,
        "the workload leaves some keys live and some deleted"
    );
    let fresh = fresh_snapshot(&base, &tenants).await;
    let diff = differences(&fresh.records, &reference);
    assert!(
        diff.is_empty(),
        "a fresh snapshot differs from the store: {diff:#?}"
    );

    let mut failures = Vec::new();
    for (name, copy) in &copies {
        let copy = copy.lock().unwrap();
        eprintln!(
            "convergence: {name:<16} {:>5} deliveries ({} redelivered), {:>3} reconnects, {:>3} \
             pauses, {} restarts from a snapshot, {} anomalies, {} records",
            copy.deliveries,
            copy.redeliveries,
            copy.reconnects,
            copy.pauses,
            copy.restarts_from_snapshot,
            copy.anomalies.len(),
            copy.records.len()
        );
        let diff = differences(&copy.records, &reference);
        if !diff.is_empty() {
            failures.push(format!(
                "{name}: {} differences from the store, e.g. {:#?}",
                diff.len(),
                &diff[..diff.len().min(10)]
            ));
        }
        if !copy.anomalies.is_empty() {
            failures.push(format!(
                "{name}: {} version anomalies, e.g. {:#?}",
                copy.anomalies.len(),
                &copy.anomalies[..copy.anomalies.len().min(10)]
            ));
        }
        // Default tombstone retention is a week: nothing is purged during the test.
        if copy.restarts_from_snapshot != 0 {
            failures.push(format!(
                "{name}: told {} times to start over from a snapshot with nothing purged",
                copy.restarts_from_snapshot
            ));
        }
    }
    assert!(failures.is_empty(), "seed {seed}: {failures:#?}");
    eprintln!(
        "convergence: all 7 copies equal the store ({:.1?})",
        started.elapsed()
    );
}
