//! End-to-end tests of the change feeds and subscriptions through the real `tenantsync` binary
//! (embedded log, SQLite store, a temp data dir and port per test), looking only through the
//! HTTP API: a tenant's feed as JSON pages, long-polls and Server-Sent Events, reading one's own
//! `?wait=applied` writes, cursors across a SIGKILL, tombstone retention (410 and subscription
//! resets), isolation from a client that stops reading, subscriptions and `/metrics`.
//!
//! Every reader keeps a [`Replica`] built only from what the feed delivered; it checks that no
//! key's version ever goes down, and is compared with the server's records read one by one with
//! `GET .../records/{id}`. Nothing waits by sleeping: conditions (a purge, a waiting long-poll,
//! a cut-off stream, all read from `/metrics`) are polled with a deadline. No assertion is about
//! time.

mod common;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, metric};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::header::CONTENT_TYPE;
use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

/// How long any single awaited condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// A running server with its own data dir and a client.
struct Feed {
    server: Server,
    client: reqwest::Client,
    // Dropped after the server (fields drop in order), so the process never outlives its dir.
    _dir: tempfile::TempDir,
}

/// One page of a tenant's feed.
#[derive(Debug)]
struct Page {
    changes: Vec<Value>,
    cursor: String,
    up_to_date: bool,
}

impl Feed {
    async fn start(args: &[&str]) -> Feed {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path(), args).await;
        Feed {
            server,
            client: reqwest::Client::new(),
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    async fn declare(&self, dataset: &str, partitions: u32) {
        common::declare(&self.server, dataset, partitions).await;
    }

    /// PUT ?wait=applied; returns the record's new version.
    async fn put(&self, dataset: &str, tenant: &str, id: &str, data: Value) -> u64 {
        let url = self.url(&record_path(dataset, tenant, id)) + "?wait=applied";
        applied(self.client.put(url).json(&data)).await
    }

    /// DELETE ?wait=applied; returns the tombstone's version.
    async fn delete(&self, dataset: &str, tenant: &str, id: &str) -> u64 {
        let url = self.url(&record_path(dataset, tenant, id)) + "?wait=applied";
        applied(self.client.delete(url)).await
    }

    /// Bulk NDJSON write without waiting; every line must be accepted.
    async fn bulk(&self, dataset: &str, lines: &[Value]) {
        let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let url = self.url(&format!("/v1/datasets/{dataset}/changes"));
        let r = self.client.post(url).body(body).send().await.unwrap();
        let body = expect_json(r, 200, "bulk write").await;
        let results = body["results"].as_array().expect("results");
        assert_eq!(results.len(), lines.len(), "one result per line: {body}");
        assert!(results.iter().all(|l| l["status"] == 202), "{body}");
    }

    /// The server's live records of a tenant among `ids`, read one by one.
    async fn server_state(
        &self,
        dataset: &str,
        tenant: &str,
        ids: impl IntoIterator<Item = &String>,
    ) -> BTreeMap<String, (u64, Value)> {
        let mut out = BTreeMap::new();
        for id in ids {
            let r = self.get(&record_path(dataset, tenant, id)).await;
            match r.status().as_u16() {
                200 => {
                    let body: Value = r.json().await.unwrap();
                    assert_eq!(body["tenant"], tenant);
                    let version = body["version"].as_u64().unwrap();
                    out.insert(id.clone(), (version, body["data"].clone()));
                }
                404 => {}
                other => panic!("GET record {tenant}:{id}: {other}"),
            }
        }
        out
    }

    async fn feed_raw(&self, dataset: &str, tenant: &str, query: &str) -> Response {
        self.get(&feed_path(dataset, tenant, query)).await
    }

    /// One page of the tenant's feed; expects 200.
    async fn page(&self, dataset: &str, tenant: &str, query: &str) -> Page {
        let r = self.feed_raw(dataset, tenant, query).await;
        let body = expect_json(r, 200, "GET feed page").await;
        Page {
            changes: changes(&body).clone(),
            cursor: body["cursor"].as_str().expect("a cursor").to_owned(),
            up_to_date: body["up_to_date"].as_bool().expect("up_to_date"),
        }
    }

    /// Reads pages from `cursor` (a snapshot when `None`) until one is up to date, applying
    /// every change to `replica`; returns the cursor to continue from and the changes read.
    async fn follow(
        &self,
        dataset: &str,
        tenant: &str,
        cursor: Option<&str>,
        limit: usize,
        replica: &mut Replica,
    ) -> (String, Vec<Value>) {
        let deadline = Instant::now() + DEADLINE;
        let mut cursor = cursor.map(str::to_owned);
        let mut read = Vec::new();
        loop {
            let page = self
                .page(dataset, tenant, &feed_query(cursor.as_deref(), limit, None))
                .await;
            assert!(page.changes.len() <= limit, "{page:?}");
            page.changes.iter().for_each(|c| replica.apply(c));
            read.extend(page.changes);
            if page.up_to_date {
                return (page.cursor, read);
            }
            cursor = Some(page.cursor);
            assert!(Instant::now() < deadline, "the feed never caught up");
        }
    }

    async fn metrics(&self) -> String {
        let r = self.get("/metrics").await;
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    /// Polls `/metrics` until `series` is at least `min`.
    async fn wait_metric(&self, series: &str, min: f64) {
        common::wait_metric(&self.server, None, series, min, DEADLINE).await;
    }

    /// Waits until this instance's retention task purged at least `n` tombstones.
    async fn wait_purged(&self, n: u64) {
        self.wait_metric("tenantsync_tombstones_purged_total", n as f64)
            .await;
    }

    async fn put_subscription(&self, name: &str, spec: &Value) -> Response {
        let url = self.url(&format!("/v1/subscriptions/{name}"));
        self.client.put(url).json(spec).send().await.unwrap()
    }

    /// Creates a subscription; expects 201.
    async fn subscribe(&self, name: &str, spec: Value) -> Value {
        let r = self.put_subscription(name, &spec).await;
        expect_json(r, 201, "PUT new subscription").await
    }

    async fn subscription(&self, name: &str) -> Value {
        let r = self.get(&format!("/v1/subscriptions/{name}")).await;
        expect_json(r, 200, "GET subscription").await
    }

    async fn lag(&self, name: &str) -> Value {
        self.subscription(name).await["lag"].clone()
    }

    async fn batch_raw(&self, name: &str, query: &str) -> Response {
        self.get(&format!("/v1/subscriptions/{name}/changes?{query}"))
            .await
    }

    /// `GET /v1/subscriptions/{name}/changes?QUERY`: `Some(batch)` on 200, `None` on 204.
    async fn batch(&self, name: &str, query: &str) -> Option<Value> {
        let r = self.batch_raw(name, query).await;
        if r.status() == StatusCode::NO_CONTENT {
            return None;
        }
        Some(expect_json(r, 200, "GET subscription batch").await)
    }

    async fn ack_raw(&self, name: &str, cursor: &str) -> Response {
        let url = self.url(&format!("/v1/subscriptions/{name}/ack"));
        let body = json!({ "cursor": cursor });
        self.client.post(url).json(&body).send().await.unwrap()
    }

    /// Acknowledges `batch` with `POST .../ack`; expects 204.
    async fn ack(&self, name: &str, batch: &Value) {
        let r = self.ack_raw(name, batch["cursor"].as_str().unwrap()).await;
        assert_eq!(r.status(), 204);
    }
}

fn record_path(dataset: &str, tenant: &str, id: &str) -> String {
    format!("/v1/datasets/{dataset}/tenants/{tenant}/records/{id}")
}

fn feed_path(dataset: &str, tenant: &str, query: &str) -> String {
    format!("/v1/datasets/{dataset}/tenants/{tenant}/changes?{query}")
}

/// Sends a record write made with `?wait=applied`; returns the record's version after it.
async fn applied(request: RequestBuilder) -> u64 {
    let r = request.send().await.unwrap();
    let body = expect_json(r, 200, "write ?wait=applied").await;
    body["version"].as_u64().expect("a version")
}

fn feed_query(cursor: Option<&str>, limit: usize, wait: Option<u64>) -> String {
    let mut q = format!("limit={limit}");
    if let Some(c) = cursor {
        q += &format!("&cursor={c}");
    }
    if let Some(w) = wait {
        q += &format!("&wait={w}");
    }
    q
}

/// A bulk-write line upserting a record.
fn upsert(tenant: &str, id: &str, data: Value) -> Value {
    json!({ "op": "upsert", "tenant": tenant, "id": id, "data": data })
}

fn changes(body: &Value) -> &Vec<Value> {
    body["changes"].as_array().expect("changes")
}

/// Expects `status` and a JSON body; returns the body.
async fn expect_json(r: Response, status: u16, what: &str) -> Value {
    let got = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(got.as_u16(), status, "{what}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"))
}

/// Expects an RFC 9457 problem with `status` (and `field`, when given); returns it.
async fn expect_problem(r: Response, status: u16, field: Option<&str>, what: &str) -> Value {
    let content_type = r
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = expect_json(r, status, what).await;
    assert_eq!(
        content_type.as_deref(),
        Some("application/problem+json"),
        "{what}: {body}"
    );
    assert_eq!(body["status"], status, "{what}: {body}");
    let type_ok = body["type"]
        .as_str()
        .is_some_and(|t| t.starts_with("urn:tenantsync:problem:"));
    assert!(type_ok, "{what}: {body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{what}: {body}"
    );
    if let Some(field) = field {
        assert_eq!(body["field"], field, "{what}: {body}");
    }
    body
}

/// A consumer's copy of one tenant, built only from delivered changes.
#[derive(Debug, Default)]
struct Replica {
    records: BTreeMap<String, (u64, Value)>,
    /// Every (id, version) delivered, deletes included, to count repeats.
    delivered: HashMap<(String, u64), usize>,
    /// The highest version delivered per key.
    highest: HashMap<String, u64>,
}

impl Replica {
    fn apply(&mut self, change: &Value) {
        let id = change["id"].as_str().expect("an id").to_owned();
        let version = change["version"].as_u64().expect("a version");
        let highest = self.highest.entry(id.clone()).or_default();
        assert!(
            version >= *highest,
            "the version of {id} went down: {highest} then {change}"
        );
        *highest = version;
        *self.delivered.entry((id.clone(), version)).or_default() += 1;
        match change["op"].as_str() {
            Some("upsert") => {
                assert!(change["data"].is_object(), "upsert without data: {change}");
                self.records.insert(id, (version, change["data"].clone()));
            }
            Some("delete") => {
                assert!(change["data"].is_null(), "delete with data: {change}");
                self.records.remove(&id);
            }
            _ => panic!("unknown op: {change}"),
        }
    }

    fn repeats(&self) -> usize {
        self.delivered.values().map(|n| n - 1).sum()
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:03}")).collect()
}

/// (op, id, version) of each change, to compare with [`op`]s.
fn summary<'a>(changes: impl IntoIterator<Item = &'a Value>) -> Vec<(String, String, u64)> {
    changes
        .into_iter()
        .map(|c| {
            let field = |name: &str| c[name].as_str().unwrap().to_owned();
            (field("op"), field("id"), c["version"].as_u64().unwrap())
        })
        .collect()
}

fn op(op: &str, id: &str, version: u64) -> (String, String, u64) {
    (op.to_owned(), id.to_owned(), version)
}

/// A metric's value: the line that starts with `series` followed by a space.
/// The server's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

// Server-Sent Events --------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
enum SseItem {
    Event {
        event: String,
        id: Option<String>,
        data: String,
    },
    Comment(String),
}

/// A minimal SSE reader over a streaming response.
struct SseStream {
    response: Response,
    buffer: Vec<u8>,
    pending: VecDeque<SseItem>,
}

impl SseStream {
    /// Opens the tenant's feed as SSE; expects 200 `text/event-stream`.
    async fn open(f: &Feed, dataset: &str, tenant: &str, query: &str, last: Option<&str>) -> Self {
        let response = Self::request(f, dataset, tenant, query, last).await;
        assert_eq!(response.status(), 200, "SSE open");
        let content_type = response.headers()[CONTENT_TYPE].to_str().unwrap();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        SseStream {
            response,
            buffer: Vec::new(),
            pending: VecDeque::new(),
        }
    }

    async fn request(
        f: &Feed,
        dataset: &str,
        tenant: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> Response {
        let mut request = f.client.get(f.url(&feed_path(dataset, tenant, query)));
        request = request.header("Accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        request.send().await.unwrap()
    }

    /// The next event or comment; `None` when the stream ended. Fails the test after
    /// [`DEADLINE`] without one.
    async fn next(&mut self) -> Option<SseItem> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                self.parse_block(std::str::from_utf8(&block).expect("UTF-8 events"));
                continue;
            }
            let chunk = tokio::time::timeout(DEADLINE, self.response.chunk())
                .await
                .expect("an SSE event or comment within the deadline")
                .expect("the SSE stream reads");
            self.buffer.extend_from_slice(&chunk?);
        }
    }

    fn parse_block(&mut self, block: &str) {
        let (mut event, mut id, mut data) = (None, None, Vec::new());
        for line in block.lines().filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match name {
                "" => self
                    .pending
                    .push_back(SseItem::Comment(value.trim().to_owned())),
                "event" => event = Some(value.to_owned()),
                "id" => id = Some(value.to_owned()),
                "data" => data.push(value),
                other => panic!("unexpected SSE field {other:?} in {block:?}"),
            }
        }
        if event.is_some() || id.is_some() || !data.is_empty() {
            self.pending.push_back(SseItem::Event {
                event: event.unwrap_or_else(|| "message".to_owned()),
                id,
                data: data.join("\n"),
            });
        }
    }

    /// The next event, skipping comments (heartbeats): (event, id, data).
    async fn next_event(&mut self) -> (String, String, String) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(
                Instant::now() < deadline,
                "no SSE event within the deadline"
            );
            if let SseItem::Event { event, id, data } = self.next().await.expect("more events") {
                return (event, id.expect("every feed event has an id"), data);
            }
        }
    }

    /// The next event, which must be a change; applies it to `replica`, returns it and its id.
    async fn next_change(&mut self, replica: &mut Replica) -> (Value, String) {
        let (event, id, data) = self.next_event().await;
        assert_eq!(event, "change", "{data}");
        let change = serde_json::from_str(&data).unwrap();
        replica.apply(&change);
        (change, id)
    }

    /// Reads change events into `replica` until an `up-to-date` event; returns the changes and
    /// that event's id.
    async fn until_up_to_date(&mut self, replica: &mut Replica) -> (Vec<Value>, String) {
        let mut changes = Vec::new();
        loop {
            let (event, id, data) = self.next_event().await;
            match event.as_str() {
                "change" => {
                    let change: Value = serde_json::from_str(&data).unwrap();
                    replica.apply(&change);
                    changes.push(change);
                }
                "up-to-date" => return (changes, id),
                other => panic!("unexpected event {other}: {data}"),
            }
        }
    }
}

// 1. Snapshot, then live, each write readable as soon as `?wait=applied` answered --------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_live_in_order_reading_your_writes() {
    let f = Feed::start(&[]).await;
    f.declare("items", 4).await;
    let all = ids("r", 30);
    // Another tenant writes the same ids: its records must never show up in acme's feed.
    for (i, id) in all.iter().enumerate() {
        f.put("items", "acme", id, json!({ "n": i })).await;
        f.put("items", "globex", id, json!({ "other": i })).await;
    }
    for id in &all[0..5] {
        f.put("items", "acme", id, json!({ "rev": 2 })).await;
    }
    for id in &all[10..15] {
        f.delete("items", "acme", id).await;
    }
    f.delete("items", "acme", &all[20]).await;
    assert_eq!(
        f.put("items", "acme", &all[20], json!({ "rev": 3 })).await,
        3
    );
    let expected = f.server_state("items", "acme", &all).await;
    assert_eq!(expected.len(), 25);

    // The snapshot, 7 at a time: the live records exactly once each, no deletes (the reader
    // never held the deleted records), every page but the last full.
    let mut replica = Replica::default();
    let mut cursor: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let page = f
            .page("items", "acme", &feed_query(cursor.as_deref(), 7, None))
            .await;
        page.changes.iter().for_each(|c| replica.apply(c));
        pages.push(page.changes.len());
        cursor = Some(page.cursor);
        if page.up_to_date {
            break;
        }
        assert!(pages.len() < 10, "the snapshot never ended: {pages:?}");
    }
    // 25 changes making the 25 records: each live record once, and no delete.
    assert_eq!(pages, [7, 7, 7, 4]);
    assert_eq!(replica.records, expected);
    let mut cursor = cursor.unwrap();

    // Live, one write at a time, each read once the write was answered: it arrives alone, as
    // written (read your writes).
    let steps = [
        ("upsert", &all[0]),
        ("delete", &all[1]),
        ("upsert", &all[10]), // recreated after its delete
        ("delete", &all[20]),
        ("upsert", &all[20]),
    ];
    for (kind, id) in steps {
        let version = if kind == "upsert" {
            f.put("items", "acme", id, json!({ "live": kind })).await
        } else {
            f.delete("items", "acme", id).await
        };
        if id == &all[10] {
            assert!(
                version > 2,
                "a recreated record continues above its tombstone"
            );
        }
        let page = f
            .page("items", "acme", &feed_query(Some(&cursor), 10, None))
            .await;
        assert_eq!(summary(&page.changes), [op(kind, id, version)], "{page:?}");
        assert!(page.up_to_date);
        page.changes.iter().for_each(|c| replica.apply(c));
        cursor = page.cursor;
    }

    // Several writes before the next read: one change per key, at its latest state, in the
    // order of the keys' last writes, whatever the page size.
    let new_id = "r999".to_owned();
    let v_new = f
        .put("items", "acme", &new_id, json!({ "new": true }))
        .await;
    let v2a = f.put("items", "acme", &all[2], json!({ "b": 1 })).await;
    let v3a = f.put("items", "acme", &all[3], json!({ "b": 1 })).await;
    let v2d = f.delete("items", "acme", &all[2]).await;
    let v4 = f.put("items", "acme", &all[4], json!({ "b": 1 })).await;
    let v3b = f.put("items", "acme", &all[3], json!({ "b": 2 })).await;
    let v5d = f.delete("items", "acme", &all[5]).await;
    assert!(v2d > v2a && v3b > v3a);
    let (cursor, read) = f
        .follow("items", "acme", Some(&cursor), 2, &mut replica)
        .await;
    assert_eq!(
        summary(&read),
        [
            op("upsert", &new_id, v_new),
            op("delete", &all[2], v2d),
            op("upsert", &all[4], v4),
            op("upsert", &all[3], v3b),
            op("delete", &all[5], v5d),
        ]
    );

    // Nothing more, and the copy is the server's state, record for record.
    let page = f.page("items", "acme", &format!("cursor={cursor}")).await;
    assert!(page.changes.is_empty() && page.up_to_date);
    assert_eq!(page.cursor, cursor, "an empty page keeps the position");
    let every: Vec<String> = all.iter().cloned().chain([new_id]).collect();
    assert_eq!(
        replica.records,
        f.server_state("items", "acme", &every).await
    );

    // The other tenant's feed holds its own records only.
    let mut other = Replica::default();
    f.follow("items", "globex", None, 100, &mut other).await;
    assert_eq!(other.records.len(), 30);
    assert_eq!(other.records, f.server_state("items", "globex", &all).await);
}

// 2. No gap between snapshot and live ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_gap_between_snapshot_and_live_under_writes() {
    let f = Arc::new(Feed::start(&[]).await);
    f.declare("busy", 2).await;
    let all = ids("k", 200);
    // 150 records first, so that the snapshot takes many pages.
    let lines: Vec<Value> = all[..150]
        .iter()
        .map(|id| upsert("t1", id, json!({ "seed": id })))
        .collect();
    f.bulk("busy", &lines).await;
    common::wait_caught_up(&f.server, "busy").await;

    let writes = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (f, writes, stop, all) = (f.clone(), writes.clone(), stop.clone(), all.clone());
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(7);
            for n in 0..3_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let id = &all[rng.random_range(0..all.len())];
                let url = f.url(&record_path("busy", "t1", id));
                let request = if rng.random_bool(0.25) {
                    f.client.delete(url)
                } else {
                    f.client.put(url).json(&json!({ "n": n }))
                };
                assert_eq!(request.send().await.unwrap().status(), 202, "write {n}");
                writes.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let deadline = Instant::now() + DEADLINE;
    while writes.load(Ordering::Relaxed) < 20 {
        assert!(Instant::now() < deadline, "the writer never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // A snapshot 5 at a time while the writer runs, then live long-polls.
    let mut replica = Replica::default();
    let before_snapshot = writes.load(Ordering::Relaxed);
    let (mut cursor, _) = f.follow("busy", "t1", None, 5, &mut replica).await;
    let after_snapshot = writes.load(Ordering::Relaxed);
    assert!(
        after_snapshot > before_snapshot,
        "the snapshot was meant to overlap writes"
    );
    while writes.load(Ordering::Relaxed) < after_snapshot + 300 && !writer.is_finished() {
        let page = f
            .page("busy", "t1", &feed_query(Some(&cursor), 5, Some(1)))
            .await;
        page.changes.iter().for_each(|c| replica.apply(c));
        cursor = page.cursor;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();

    // Once everything is applied, one more catch-up leaves the copy equal to the server.
    common::wait_caught_up(&f.server, "busy").await;
    f.follow("busy", "t1", Some(&cursor), 5, &mut replica).await;
    assert_eq!(replica.records, f.server_state("busy", "t1", &all).await);
}

// 3. Cursors survive a SIGKILL ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_survive_a_sigkill() {
    let mut f = Feed::start(&[]).await;
    f.declare("durable", 3).await;
    let all = ids("d", 40);
    for id in &all[..20] {
        f.put("durable", "t", id, json!({ "v": 1 })).await;
    }
    // One reader stops in the middle of its snapshot, another is up to date.
    let mut mid = Replica::default();
    let first = f.page("durable", "t", "limit=8").await;
    assert!(!first.up_to_date);
    first.changes.iter().for_each(|c| mid.apply(c));
    let mut done = Replica::default();
    let (caught_up, _) = f.follow("durable", "t", None, 100, &mut done).await;

    for id in &all[..5] {
        f.delete("durable", "t", id).await;
    }
    for id in &all[15..30] {
        f.put("durable", "t", id, json!({ "v": 2 })).await;
    }
    f.server.restart().await; // SIGKILL, then start again
    for id in &all[25..40] {
        f.put("durable", "t", id, json!({ "v": 3 })).await;
    }
    f.delete("durable", "t", &all[39]).await;

    let expected = f.server_state("durable", "t", &all).await;
    assert_eq!(expected.len(), 34);
    for (cursor, copy) in [(first.cursor, &mut mid), (caught_up, &mut done)] {
        f.follow("durable", "t", Some(&cursor), 8, copy).await;
        assert_eq!(copy.records, expected);
    }
    assert_eq!(done.repeats(), 0);
}

// 4. Long-poll --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_answers_with_the_change_or_an_empty_page() {
    let f = Arc::new(Feed::start(&[]).await);
    f.declare("lp", 2).await;
    f.put("lp", "t", "a", json!({ "x": 1 })).await;
    let (cursor, _) = f.follow("lp", "t", None, 10, &mut Replica::default()).await;

    // Nothing new: wait=1 answers an empty page at the same position, up to date.
    let page = f
        .page("lp", "t", &feed_query(Some(&cursor), 10, Some(1)))
        .await;
    assert!(page.changes.is_empty() && page.up_to_date, "{page:?}");
    assert_eq!(page.cursor, cursor);

    // A write while a long-poll waits wakes it with the change.
    let waiting = {
        let (f, query) = (f.clone(), feed_query(Some(&cursor), 10, Some(10)));
        tokio::spawn(async move { f.page("lp", "t", &query).await })
    };
    f.wait_metric("tenantsync_long_polls_waiting", 1.0).await;
    let version = f.put("lp", "t", "b", json!({ "x": 2 })).await;
    let page = waiting.await.unwrap();
    assert_eq!(summary(&page.changes), [op("upsert", "b", version)]);
    assert!(page.up_to_date);
    assert_ne!(page.cursor, cursor);

    // A long-poll on another tenant gets none of this tenant's changes.
    let other = {
        let f = f.clone();
        tokio::spawn(async move { f.page("lp", "quiet", "wait=1").await })
    };
    f.put("lp", "t", "c", json!({ "x": 3 })).await;
    let quiet = other.await.unwrap();
    assert!(quiet.changes.is_empty() && quiet.up_to_date, "{quiet:?}");
}

// 5. Refused requests -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_feed_requests_are_refused() {
    let f = Feed::start(&[]).await;
    f.declare("one", 2).await;
    f.declare("two", 2).await;
    f.put("one", "acme", "x", json!({})).await;
    f.put("two", "acme", "x", json!({})).await;
    let acme = f.page("one", "acme", "").await.cursor;

    let (foreign, long) = (
        format!("cursor={acme}"),
        format!("cursor={}", "A".repeat(2000)),
    );
    let cases = [
        ("one", "acme", "cursor=not-a-cursor", Some("cursor")),
        ("one", "acme", "cursor=", Some("cursor")),
        ("one", "acme", long.as_str(), Some("cursor")),
        ("one", "globex", foreign.as_str(), Some("cursor")),
        ("two", "acme", foreign.as_str(), Some("cursor")),
        ("one", "acme", "limit=0", Some("limit")),
        ("one", "acme", "limit=100000", Some("limit")),
        ("one", "acme", "wait=-1", Some("wait")),
        ("one", "acme", "wait=soon", None),
        ("one", "acme", "bogus=1", None),
        ("one", "Acme", "", Some("tenant")),
        ("one", "bad!tenant", "", Some("tenant")),
    ];
    for (dataset, tenant, query, field) in cases {
        let r = f.feed_raw(dataset, tenant, query).await;
        expect_problem(r, 400, field, &format!("{dataset}/{tenant}?{query}")).await;
    }
    let r = f.feed_raw("nope", "acme", "").await;
    let body = expect_problem(r, 404, None, "unknown dataset").await;
    assert_eq!(body["type"], "urn:tenantsync:problem:unknown-dataset");

    // A subscription's cursor is not a tenant feed's, and the other way round.
    f.subscribe("subs", json!({ "datasets": ["one"], "tenants": ["acme"] }))
        .await;
    let batch = f.batch("subs", "").await.expect("a batch");
    let sub_cursor = batch["cursor"].as_str().unwrap();
    let r = f
        .feed_raw("one", "acme", &format!("cursor={sub_cursor}"))
        .await;
    expect_problem(r, 400, Some("cursor"), "a subscription cursor on a feed").await;
    let r = f.batch_raw("subs", &foreign).await;
    expect_problem(r, 400, Some("cursor"), "a feed cursor on a subscription").await;

    // The same checks apply to SSE, as a status before any stream starts.
    let r = SseStream::request(&f, "one", "acme", "", Some("garbage")).await;
    expect_problem(r, 400, Some("Last-Event-ID"), "SSE, bad Last-Event-ID").await;
    let r = SseStream::request(&f, "one", "globex", "", Some(&acme)).await;
    expect_problem(r, 400, Some("Last-Event-ID"), "SSE, foreign Last-Event-ID").await;
    let r = SseStream::request(&f, "one", "acme", "cursor=zzz", None).await;
    expect_problem(r, 400, Some("cursor"), "SSE with a bad cursor").await;

    // The refusals did not disturb the valid cursor.
    let page = f.page("one", "acme", &foreign).await;
    assert!(page.changes.is_empty() && page.up_to_date);
}

// 6. Tombstone retention: 410 -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_behind_purged_tombstones_is_gone() {
    let f = Feed::start(&["--tombstone-retention-secs", "1"]).await;
    f.declare("ret", 2).await;
    let all = ids("g", 5);
    for id in &all {
        f.put("ret", "t", id, json!({ "v": 1 })).await;
    }
    let mut replica = Replica::default();
    let (old, _) = f.follow("ret", "t", None, 10, &mut replica).await;
    let deleted = f.delete("ret", "t", &all[0]).await;
    // Read from the old cursor before the purge: the delete, and a cursor past it. Once the
    // state-log tail has seen all six states, that read leaves the tenant's tail cached on this
    // instance, and the purge must drop it.
    f.wait_metric("tenantsync_states_seen_total", 6.0).await;
    let page = f.page("ret", "t", &format!("cursor={old}")).await;
    assert_eq!(summary(&page.changes), [op("delete", &all[0], deleted)]);
    let past = page.cursor;

    // Once the purge ran, the old cursor is gone: as a JSON page, a long-poll and an SSE
    // Last-Event-ID.
    f.wait_purged(1).await;
    let r = f.feed_raw("ret", "t", &format!("cursor={old}")).await;
    let body = expect_problem(r, 410, None, "a cursor behind the purge").await;
    assert_eq!(body["type"], "urn:tenantsync:problem:cursor-gone");
    let r = f
        .feed_raw("ret", "t", &format!("cursor={old}&wait=1"))
        .await;
    expect_problem(r, 410, None, "a long-poll behind the purge").await;
    let r = SseStream::request(&f, "ret", "t", "", Some(&old)).await;
    let body = expect_problem(r, 410, None, "SSE behind the purge").await;
    assert_eq!(body["type"], "urn:tenantsync:problem:cursor-gone");

    // The cursor past the delete goes on.
    let page = f.page("ret", "t", &format!("cursor={past}")).await;
    assert!(page.changes.is_empty() && page.up_to_date, "{page:?}");
    // A fresh snapshot works, does not hold the deleted record, and follows live changes.
    let mut again = Replica::default();
    let (cursor, _) = f.follow("ret", "t", None, 2, &mut again).await;
    assert_eq!(again.records.len(), 4);
    assert_eq!(again.records, f.server_state("ret", "t", &all).await);
    let v = f.put("ret", "t", &all[0], json!({ "back": true })).await;
    assert!(
        v > deleted,
        "a key written after its purge continues above it"
    );
    let page = f.page("ret", "t", &format!("cursor={cursor}")).await;
    assert_eq!(summary(&page.changes), [op("upsert", &all[0], v)]);
}

// 7. Server-Sent Events -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_from_last_event_id_with_heartbeats() {
    let f = Feed::start(&["--sse-heartbeat-secs", "1"]).await;
    f.declare("sse", 2).await;
    let all = ids("a", 10);
    for id in &all {
        f.put("sse", "t", id, json!({ "v": 1 })).await;
    }

    // First connection, 4 per page: read 6 changes, then hang up.
    let mut replica = Replica::default();
    let mut stream = SseStream::open(&f, "sse", "t", "limit=4", None).await;
    let (mut first, mut last_id) = (Vec::new(), String::new());
    for _ in 0..6 {
        let (change, id) = stream.next_change(&mut replica).await;
        first.push(change);
        last_id = id;
    }
    drop(stream);
    let expected: Vec<_> = all[..6].iter().map(|id| op("upsert", id, 1)).collect();
    assert_eq!(summary(&first), expected);

    // Meanwhile: records seen and not yet seen are updated and deleted, one is created.
    let v1 = f.put("sse", "t", &all[1], json!({ "v": 2 })).await;
    let v8 = f.put("sse", "t", &all[8], json!({ "v": 2 })).await;
    let d2 = f.delete("sse", "t", &all[2]).await;
    let d9 = f.delete("sse", "t", &all[9]).await;
    let v10 = f.put("sse", "t", "a010", json!({ "v": 1 })).await;

    // Resuming from the last event id: the rest of the snapshot, then those changes in order,
    // nothing twice, then up to date.
    let mut stream = SseStream::open(&f, "sse", "t", "limit=4", Some(&last_id)).await;
    let (rest, up_to_date_id) = stream.until_up_to_date(&mut replica).await;
    assert_eq!(
        summary(&rest),
        [
            op("upsert", &all[6], 1),
            op("upsert", &all[7], 1),
            op("upsert", &all[1], v1),
            op("upsert", &all[8], v8),
            op("delete", &all[2], d2),
            op("delete", &all[9], d9),
            op("upsert", "a010", v10),
        ]
    );

    // Idle: heartbeat comments keep the connection alive; a live change still arrives (without
    // another up-to-date event, which marks the end of catching up).
    assert_eq!(
        stream.next().await,
        Some(SseItem::Comment("heartbeat".to_owned()))
    );
    let v3 = f.put("sse", "t", &all[3], json!({ "v": 2 })).await;
    let (change, last_id) = stream.next_change(&mut replica).await;
    assert_eq!(summary([&change]), [op("upsert", &all[3], v3)]);
    assert_ne!(last_id, up_to_date_id);
    drop(stream);

    // Resuming at the end: up to date at once, then only what is new.
    let mut stream = SseStream::open(&f, "sse", "t", "", Some(&last_id)).await;
    let (nothing, _) = stream.until_up_to_date(&mut replica).await;
    assert!(nothing.is_empty(), "{nothing:?}");
    let d3 = f.delete("sse", "t", &all[3]).await;
    let (change, _) = stream.next_change(&mut replica).await;
    assert_eq!(summary([&change]), [op("delete", &all[3], d3)]);
    assert_eq!(replica.repeats(), 0);
    let every: Vec<String> = all.iter().cloned().chain(["a010".into()]).collect();
    assert_eq!(replica.records, f.server_state("sse", "t", &every).await);

    // The up-to-date event's id is a cursor too, for the JSON feed as well. The feed holds
    // states, not history: a003's update was overtaken by its delete.
    let page = f.page("sse", "t", &format!("cursor={up_to_date_id}")).await;
    assert_eq!(summary(&page.changes), [op("delete", &all[3], d3)]);
}

// 8. Isolation from a client that stops reading -----------------------------------------------

/// The bound on the server's resident memory in the isolation test (a debug build holding a
/// stalled stream, a few MB of records, and the other clients).
const RSS_BOUND_KIB: u64 = 200 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sse_client_is_cut_off_and_others_get_everything() {
    let f = Arc::new(Feed::start(&["--sse-stall-timeout-secs", "2"]).await);
    f.declare("iso", 2).await;

    // The stalled client: a raw connection with a tiny receive buffer that never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(f.server.addr).await.unwrap();
    let request = format!(
        "GET /v1/datasets/iso/tenants/stalled/changes HTTP/1.1\r\nHost: {}\r\n\
         Accept: text/event-stream\r\n\r\n",
        f.server.addr
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    f.wait_metric("tenantsync_sse_streams", 1.0).await;

    // The healthy clients, on another tenant: one SSE, one long-polling.
    let sse_copy = Arc::new(Mutex::new(Replica::default()));
    let poll_copy = Arc::new(Mutex::new(Replica::default()));
    let sse_client = {
        let (f, copy) = (f.clone(), sse_copy.clone());
        tokio::spawn(async move {
            let mut stream = SseStream::open(&f, "iso", "healthy", "", None).await;
            loop {
                let (event, _, data) = stream.next_event().await;
                if event == "change" {
                    copy.lock()
                        .unwrap()
                        .apply(&serde_json::from_str(&data).unwrap());
                }
            }
        })
    };
    let poll_client = {
        let (f, copy) = (f.clone(), poll_copy.clone());
        tokio::spawn(async move {
            let mut cursor: Option<String> = None;
            loop {
                let query = feed_query(cursor.as_deref(), 50, Some(5));
                let page = f.page("iso", "healthy", &query).await;
                page.changes
                    .iter()
                    .for_each(|c| copy.lock().unwrap().apply(c));
                cursor = Some(page.cursor);
            }
        })
    };

    // About 6 MiB for the stalled tenant, interleaved with the healthy tenant's changes.
    let blob = "x".repeat(8 * 1024);
    let healthy = ids("h", 40);
    let mut rng = StdRng::seed_from_u64(3);
    for round in 0..8 {
        let lines: Vec<Value> = (0..100)
            .map(|i| upsert("stalled", &format!("s{round}-{i}"), json!({ "blob": blob })))
            .collect();
        f.bulk("iso", &lines).await;
        let lines: Vec<Value> = (0..10)
            .map(|i| {
                let id = &healthy[rng.random_range(0..healthy.len())];
                if rng.random_bool(0.2) {
                    json!({ "op": "delete", "tenant": "healthy", "id": id })
                } else {
                    upsert("healthy", id, json!({ "round": round, "i": i }))
                }
            })
            .collect();
        f.bulk("iso", &lines).await;
    }
    common::wait_caught_up(&f.server, "iso").await;

    // Both healthy clients get every change.
    let expected = f.server_state("iso", "healthy", &healthy).await;
    assert!(!expected.is_empty());
    let deadline = Instant::now() + DEADLINE;
    loop {
        let sse_done = sse_copy.lock().unwrap().records == expected;
        let poll_done = poll_copy.lock().unwrap().records == expected;
        if sse_done && poll_done {
            break;
        }
        assert!(
            !sse_client.is_finished() && !poll_client.is_finished(),
            "a client failed"
        );
        assert!(
            Instant::now() < deadline,
            "healthy clients did not converge (sse {sse_done}, long-poll {poll_done})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The stalled stream is cut off after the stall timeout, and memory stays bounded.
    f.wait_metric("tenantsync_sse_cut_off_total", 1.0).await;
    let rss = rss_kib(f.server.pid());
    eprintln!("isolation: server RSS {rss} KiB");
    assert!(
        rss < RSS_BOUND_KIB,
        "server RSS {rss} KiB is above {RSS_BOUND_KIB} KiB"
    );
    sse_client.abort();
    poll_client.abort();
    drop(stalled);
}

// 9. Subscriptions ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_lifecycle_and_validation() {
    let f = Feed::start(&[]).await;
    f.declare("sd", 2).await;
    f.declare("se", 2).await;
    f.put("sd", "acme", "x", json!({})).await;

    let created = f
        .subscribe(
            "billing",
            json!({ "datasets": ["sd"], "tenants": ["acme"] }),
        )
        .await;
    assert_eq!(created["tenants"], json!(["acme"]));
    let spec = json!({ "datasets": ["sd", "se"], "tenants": "*" });
    let r = f.put_subscription("billing", &spec).await;
    let updated = expect_json(r, 200, "PUT existing subscription").await;
    assert_eq!(updated["created_at"], created["created_at"]);
    assert_eq!(updated["tenants"], "*");
    assert_eq!(updated["datasets"], json!(["sd", "se"]));
    let shown = f.subscription("billing").await;
    assert_eq!(shown["created_at"], created["created_at"]);
    assert_eq!(shown["tenants"], "*");
    let list = expect_json(f.get("/v1/subscriptions").await, 200, "GET subscriptions").await;
    assert_eq!(list["subscriptions"][0]["name"], "billing");

    let bad = [
        (json!({ "datasets": [], "tenants": "*" }), Some("datasets")),
        (
            json!({ "datasets": ["sd"], "tenants": "all" }),
            Some("tenants"),
        ),
        (
            json!({ "datasets": ["sd"], "tenants": [] }),
            Some("tenants"),
        ),
        (json!({ "datasets": ["sd"] }), None),
        (
            json!({ "datasets": ["sd"], "tenants": "*", "extra": 1 }),
            None,
        ),
        (
            json!({ "datasets": ["sd"], "tenants": ["Not A Tenant"] }),
            None,
        ),
    ];
    for (body, field) in bad {
        let r = f.put_subscription("other", &body).await;
        expect_problem(r, 400, field, &body.to_string()).await;
    }
    let r = f
        .put_subscription("other", &json!({ "datasets": ["nope"], "tenants": "*" }))
        .await;
    let problem = expect_problem(r, 404, None, "an unknown dataset").await;
    assert_eq!(problem["type"], "urn:tenantsync:problem:unknown-dataset");
    let r = f.get("/v1/subscriptions/other").await;
    expect_problem(r, 404, None, "a refused PUT created nothing").await;

    // Delete, then a cursor of the deleted subscription is foreign to its successor.
    let batch = f.batch("billing", "").await.expect("a batch");
    let stale = batch["cursor"].as_str().unwrap().to_owned();
    for status in [204, 404] {
        let url = f.url("/v1/subscriptions/billing");
        let r = f.client.delete(url).send().await.unwrap();
        assert_eq!(r.status(), status, "DELETE");
    }
    for path in [
        "/v1/subscriptions/billing",
        "/v1/subscriptions/billing/changes",
    ] {
        expect_problem(f.get(path).await, 404, None, path).await;
    }
    let r = f.ack_raw("billing", &stale).await;
    expect_problem(r, 404, None, "ack on a missing subscription").await;

    let recreated = f.subscribe("billing", spec).await;
    assert_ne!(recreated["created_at"], created["created_at"]);
    let r = f.batch_raw("billing", &format!("cursor={stale}")).await;
    expect_problem(r, 400, Some("cursor"), "a stale cursor on GET").await;
    let r = f.ack_raw("billing", &stale).await;
    expect_problem(r, 400, Some("cursor"), "a stale cursor on ack").await;
    let r = f.ack_raw("billing", "garbage").await;
    expect_problem(r, 400, Some("cursor"), "a malformed cursor on ack").await;
    // The new subscription starts from scratch: the record is delivered again.
    let batch = f.batch("billing", "").await.expect("a batch");
    assert_eq!(summary(changes(&batch)), [op("upsert", "x", 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_batches_acks_lag_and_fairness() {
    let f = Arc::new(Feed::start(&[]).await);
    f.declare("fair", 4).await;
    let mut lines: Vec<Value> = (0..500)
        .map(|i| upsert("alpha", &format!("alpha-{i:03}"), json!({ "i": i })))
        .collect();
    for tenant in ["bravo", "charlie"] {
        lines.push(upsert(tenant, &format!("{tenant}-0"), json!({})));
    }
    f.bulk("fair", &lines).await;
    common::wait_caught_up(&f.server, "fair").await;
    f.subscribe("fan", json!({ "datasets": ["fair"], "tenants": "*" }))
        .await;

    // Without an ack the same batch comes again.
    let first = f.batch("fan", "limit=50").await.expect("a batch");
    let again = f.batch("fan", "limit=50").await;
    assert_eq!(
        again.as_ref(),
        Some(&first),
        "an unacknowledged batch is redelivered"
    );
    assert_eq!(changes(&first).len(), 50);

    // Lag: every tenant pending, with its count.
    let lag = f.lag("fan").await;
    let pending: BTreeMap<&str, u64> = lag
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            assert_eq!(l["dataset"], "fair");
            assert_eq!(l["reset_pending"], false);
            assert!(l["seconds"].as_f64().unwrap() >= 0.0);
            (
                l["tenant"].as_str().unwrap(),
                l["changes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        pending,
        BTreeMap::from([("alpha", 500), ("bravo", 1), ("charlie", 1)])
    );

    // Drain, acknowledging alternately with ?cursor= and POST /ack.
    let mut copies: BTreeMap<String, Replica> = BTreeMap::new();
    let mut order: Vec<(String, usize)> = Vec::new();
    let mut batch = Some(first);
    while let Some(b) = batch {
        let tenant = b["tenant"].as_str().unwrap().to_owned();
        assert_eq!(b["dataset"], "fair");
        assert_eq!(b["reset"], false);
        assert!(!changes(&b).is_empty(), "an empty batch: {b}");
        let copy = copies.entry(tenant.clone()).or_default();
        for change in changes(&b) {
            let id = change["id"].as_str().unwrap();
            assert!(
                id.starts_with(&format!("{tenant}-")),
                "batch of {tenant} holds {id}"
            );
            copy.apply(change);
        }
        order.push((tenant, changes(&b).len()));
        assert!(
            order.len() < 100,
            "the subscription never drained: {order:?}"
        );
        let cursor = b["cursor"].as_str().unwrap();
        batch = if order.len().is_multiple_of(2) {
            f.batch("fan", &format!("limit=50&cursor={cursor}")).await
        } else {
            f.ack("fan", &b).await;
            f.batch("fan", "limit=50").await
        };
    }
    // The small tenants were served before the large one's backlog was drained.
    let alpha_before = |tenant: &str| -> usize {
        let at = order.iter().position(|(t, _)| t == tenant).unwrap();
        order[..at]
            .iter()
            .filter(|(t, _)| t == "alpha")
            .map(|(_, n)| n)
            .sum()
    };
    assert!(alpha_before("bravo") < 500, "{order:?}");
    assert!(alpha_before("charlie") < 500, "{order:?}");
    assert_eq!(order.len(), 12, "{order:?}");
    for (tenant, copy) in &copies {
        assert_eq!(copy.repeats(), 0, "{tenant}");
        assert_eq!(
            copy.records,
            f.server_state("fair", tenant, copy.records.keys()).await
        );
    }
    assert_eq!(copies["alpha"].records.len(), 500);
    assert_eq!(f.lag("fan").await, json!([]));

    // A later change wakes a waiting subscriber with a batch of its tenant only.
    let waiting = {
        let f = f.clone();
        tokio::spawn(async move { f.batch("fan", "limit=50&wait=10").await })
    };
    f.wait_metric("tenantsync_long_polls_waiting", 1.0).await;
    let version = f
        .put("fair", "bravo", "bravo-1", json!({ "late": true }))
        .await;
    let b = waiting.await.unwrap().expect("a batch");
    assert_eq!(b["tenant"], "bravo");
    assert_eq!(summary(changes(&b)), [op("upsert", "bravo-1", version)]);
    let lag = f.lag("fan").await;
    assert_eq!(lag.as_array().unwrap().len(), 1, "{lag}");
    assert_eq!(lag[0]["tenant"], "bravo");
    assert_eq!(lag[0]["changes"], 1);
    f.ack("fan", &b).await;
    assert!(f.batch("fan", "wait=1").await.is_none());
    assert_eq!(f.lag("fan").await, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_resets_a_tenant_past_tombstone_retention() {
    let f = Feed::start(&["--tombstone-retention-secs", "1"]).await;
    f.declare("rs", 2).await;
    for id in ["r1", "r2", "r3"] {
        f.put("rs", "t", id, json!({ "id": id })).await;
    }
    f.subscribe("late", json!({ "datasets": ["rs"], "tenants": ["t"] }))
        .await;
    let b = f.batch("late", "").await.expect("a batch");
    assert_eq!(changes(&b).len(), 3);
    assert_eq!(b["reset"], false);
    f.ack("late", &b).await;

    // A delete the subscriber does not acknowledge before it is purged.
    f.delete("rs", "t", "r1").await;
    f.wait_purged(1).await;
    let lag = f.lag("late").await;
    assert_eq!(lag.as_array().unwrap().len(), 1, "{lag}");
    assert_eq!(lag[0]["tenant"], "t");
    assert_eq!(lag[0]["reset_pending"], true, "{lag}");
    let b = f.batch("late", "").await.expect("a reset batch");
    assert_eq!(b["reset"], true, "{b}");
    assert_eq!(b["tenant"], "t");
    // A new snapshot: the live records only, never the purged one.
    assert_eq!(
        summary(changes(&b)),
        [op("upsert", "r2", 1), op("upsert", "r3", 1)]
    );
    f.ack("late", &b).await;
    assert!(f.batch("late", "").await.is_none());
    assert_eq!(f.lag("late").await, json!([]));
}

// 10. /metrics --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_bounded_labels() {
    let f = Feed::start(&[]).await;
    f.declare("met", 3).await;
    // Distinctive tenant ids, to be sure none appears anywhere in the exposition.
    let tenants = ["tenant-qzx1", "tenant-qzx2"];
    for t in tenants {
        for id in ["a", "b", "c"] {
            f.put("met", t, id, json!({})).await;
        }
    }
    // Covering every tenant: it knows of both as soon as their writes were answered.
    f.subscribe("watcher", json!({ "datasets": ["met"], "tenants": "*" }))
        .await;

    let r = f.get("/metrics").await;
    assert_eq!(r.status(), 200);
    let content_type = r.headers()[CONTENT_TYPE].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text")
            || content_type.starts_with("text/plain"),
        "{content_type}"
    );
    let before = r.text().await.unwrap();
    for partition in 0..3 {
        let series =
            format!("tenantsync_processor_lag{{dataset=\"met\",partition=\"{partition}\"}}");
        assert!(metric(&before, &series).is_some(), "{series} in {before}");
    }
    let watcher =
        |name: &str| format!("tenantsync_subscription_{name}{{subscription=\"watcher\"}}");
    let deliveries = |body: &str, transport: &str| {
        let series = format!("tenantsync_deliveries_total{{transport=\"{transport}\"}}");
        metric(body, &series).expect("deliveries")
    };
    assert_eq!(
        metric(&before, &watcher("lag_changes")),
        Some(6.0),
        "{before}"
    );
    assert_eq!(metric(&before, &watcher("lagging_tenants")), Some(2.0));
    assert!(metric(&before, &watcher("lag_seconds")).is_some());

    // Deliveries count up; acknowledging everything empties the subscription's lag.
    f.follow("met", tenants[0], None, 100, &mut Replica::default())
        .await;
    while let Some(b) = f.batch("watcher", "").await {
        f.ack("watcher", &b).await;
    }
    let after = f.metrics().await;
    assert!(
        deliveries(&after, "pull") >= deliveries(&before, "pull") + 3.0,
        "{after}"
    );
    assert!(deliveries(&after, "subscription") >= 6.0, "{after}");
    assert_eq!(metric(&after, &watcher("lag_changes")), Some(0.0));

    // No label anywhere carries a tenant id: the only label names are bounded ones.
    for body in [&before, &after] {
        for t in tenants {
            assert!(!body.contains(t), "tenant id {t} in /metrics:\n{body}");
        }
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let Some((_, labels)) = line.split_once('{') else {
                continue;
            };
            let labels = labels.split_once('}').expect("closing brace").0;
            for pair in labels.split(',') {
                let name = pair.split_once('=').expect("name=value").0;
                assert!(
                    [
                        "dataset",
                        "partition",
                        "service",
                        "subscription",
                        "transport"
                    ]
                    .contains(&name),
                    "unexpected label {name} in {line}"
                );
            }
        }
    }
}
