//! What the webhook tests need around a server: receivers that record every request they get,
//! copies built from what they received, the official Standard Webhooks verifier (Python), and
//! a DNS server whose answer a test changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

use super::Server;
use super::model::Model;

/// How a receiver answers.
#[derive(Clone, Debug)]
pub enum Answer {
    /// 200 at once.
    Ok,
    /// This status at once.
    Status(u16),
    /// Nothing for this long, then 503 (by then the server has given up on the attempt).
    Hang(Duration),
    /// `then` for `during` from the receiver's first request, 200 afterwards.
    First { during: Duration, then: Box<Answer> },
}

/// One request a receiver got.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Its place in the receiver's arrival order.
    pub n: usize,
    pub at: Instant,
    /// Lowercase names.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// What the receiver answered (a hang: the 503 it gives if the client waits that long);
    /// `None` while it decides.
    pub status: Option<u16>,
}

impl Delivery {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("delivery {} has no {name} header", self.n))
    }

    pub fn id(&self) -> &str {
        self.header("webhook-id")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "delivery {} is not JSON ({e}): {}",
                self.n,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Whether the receiver took it (answered 2xx).
    pub fn accepted(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// (dataset, tenant) of its batch.
    pub fn stream(&self) -> (String, String) {
        let body = self.json();
        (
            body["dataset"].as_str().expect("dataset").to_owned(),
            body["tenant"].as_str().expect("tenant").to_owned(),
        )
    }
}

struct ReceiverState {
    deliveries: Mutex<Vec<Delivery>>,
    answer: Mutex<Answer>,
    first: OnceLock<Instant>,
}

/// An HTTP endpoint in the test process that records every request (headers, raw body, order
/// of arrival) and answers as told.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(answer: Answer) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, answer)
    }

    /// A receiver on a given port of 127.0.0.1 (`0`: any).
    pub async fn start_on(port: u16, answer: Answer) -> Receiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        Self::serve(listener, answer)
    }

    fn serve(listener: tokio::net::TcpListener, answer: Answer) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ReceiverState {
            deliveries: Mutex::new(Vec::new()),
            answer: Mutex::new(answer),
            first: OnceLock::new(),
        });
        let handler_state = state.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let state = handler_state.clone();
            async move { receive(&state, &headers, body).await }
        });
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { addr, state, task }
    }

    /// The URL the server is to deliver to.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn set_answer(&self, answer: Answer) {
        *self.state.answer.lock().unwrap() = answer;
    }

    /// Every request so far, in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.deliveries.lock().unwrap().clone()
    }

    /// The copy of the dataset built from the accepted deliveries.
    pub fn copy(&self) -> Copy {
        Copy::build(&self.deliveries())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(state: &ReceiverState, headers: &HeaderMap, body: Bytes) -> StatusCode {
    let now = Instant::now();
    let first = *state.first.get_or_init(|| now);
    let n = {
        let mut deliveries = state.deliveries.lock().unwrap();
        let n = deliveries.len();
        deliveries.push(Delivery {
            n,
            at: now,
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body.to_vec(),
            status: None,
        });
        n
    };
    let mut answer = state.answer.lock().unwrap().clone();
    if let Answer::First { during, then } = answer {
        answer = if now < first + during {
            *then
        } else {
            Answer::Ok
        };
    }
    let (status, hang) = match answer {
        Answer::Ok | Answer::First { .. } => (200, None),
        Answer::Status(s) => (s, None),
        Answer::Hang(d) => (503, Some(d)),
    };
    // Recorded before hanging: the server hangs up after its timeout, which drops this future.
    state.deliveries.lock().unwrap()[n].status = Some(status);
    if let Some(d) = hang {
        tokio::time::sleep(d).await;
    }
    StatusCode::from_u16(status).unwrap()
}

/// A consumer's copy of a dataset built from deliveries, by (tenant, id): the newest version it
/// saw and the record's data (`None`: deleted).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Copy(pub BTreeMap<(String, String), CopyRecord>);

/// A record in a [`Copy`]: its version, and its data (`None`: deleted).
pub type CopyRecord = (u64, Option<Map<String, Value>>);

impl Copy {
    /// Applies the accepted deliveries in arrival order, as a receiver would: a reset drops the
    /// tenant's records first; an upsert or a delete applies when its version is newer than
    /// the copy's.
    pub fn build(deliveries: &[Delivery]) -> Copy {
        let mut copy = Copy::default();
        for d in deliveries.iter().filter(|d| d.accepted()) {
            copy.apply(&d.json());
        }
        copy
    }

    pub fn apply(&mut self, body: &Value) {
        assert_eq!(body["type"], "changes", "{body}");
        let tenant = body["tenant"].as_str().expect("tenant").to_owned();
        if body["reset"] == Value::Bool(true) {
            self.0.retain(|(t, _), _| *t != tenant);
        }
        for change in body["changes"].as_array().expect("changes") {
            let id = change["id"].as_str().expect("id").to_owned();
            let version = change["version"].as_u64().expect("version");
            let data = match change["op"].as_str() {
                Some("upsert") => Some(change["data"].as_object().expect("data").clone()),
                Some("delete") => None,
                other => panic!("unknown op {other:?}: {change}"),
            };
            let entry = self.0.entry((tenant.clone(), id));
            match entry {
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    if version > e.get().0 {
                        e.insert((version, data));
                    }
                }
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert((version, data));
                }
            }
        }
    }

    /// The records that exist, with their versions.
    pub fn live(&self) -> BTreeMap<(String, String), (u64, Map<String, Value>)> {
        self.0
            .iter()
            .filter_map(|(k, (v, d))| d.as_ref().map(|d| (k.clone(), (*v, d.clone()))))
            .collect()
    }
}

/// The records the model says exist, as [`Copy::live`] shows them.
pub fn model_live(model: &Model) -> BTreeMap<(String, String), (u64, Map<String, Value>)> {
    model
        .records
        .iter()
        .filter_map(|(k, (v, d))| d.as_ref().map(|d| (k.clone(), (*v, d.clone()))))
        .collect()
}

/// The records of the master store that exist (from `store_records`), as [`Copy::live`] shows
/// them.
pub fn store_live(
    stored: &BTreeMap<(String, String), tenantsync_core::Record>,
) -> BTreeMap<(String, String), (u64, Map<String, Value>)> {
    stored
        .iter()
        .filter_map(|(k, r)| r.data.as_ref().map(|d| (k.clone(), (r.version, d.clone()))))
        .collect()
}

/// No record's version goes down in the receiver's sequence of deliveries (all of them, taken
/// or not).
pub fn assert_versions_never_decrease(what: &str, deliveries: &[Delivery]) {
    let mut seen: HashMap<(String, String, String), (u64, usize)> = HashMap::new();
    for d in deliveries {
        let body = d.json();
        let (dataset, tenant) = d.stream();
        for change in body["changes"].as_array().expect("changes") {
            let key = (
                dataset.clone(),
                tenant.clone(),
                change["id"].as_str().expect("id").to_owned(),
            );
            let version = change["version"].as_u64().expect("version");
            if let Some((before, n)) = seen.get(&key) {
                assert!(
                    version >= *before,
                    "{what}: {key:?} went from version {before} (delivery {n}) down to {version} \
                     (delivery {})",
                    d.n
                );
            }
            seen.insert(key, (version, d.n));
        }
    }
}

/// Every delivery of one `webhook-id` carries the changes of its first delivery, or some of
/// them.
pub fn assert_same_id_same_changes(what: &str, deliveries: &[Delivery]) {
    // By webhook-id: the first delivery's place, (dataset, tenant) and changes.
    type First = (usize, (String, String), BTreeSet<String>);
    let mut first: HashMap<String, First> = HashMap::new();
    for d in deliveries {
        let changes: BTreeSet<String> = d.json()["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .map(Value::to_string)
            .collect();
        match first.get(d.id()) {
            None => {
                first.insert(d.id().to_owned(), (d.n, d.stream(), changes));
            }
            Some((n, stream, before)) => {
                assert_eq!(
                    *stream,
                    d.stream(),
                    "{what}: webhook-id {} names batches of two streams",
                    d.id()
                );
                assert!(
                    changes.is_subset(before),
                    "{what}: delivery {} (webhook-id {}) carries changes that its first delivery \
                     ({n}) did not: {:?}",
                    d.n,
                    d.id(),
                    changes.difference(before).collect::<Vec<_>>()
                );
            }
        }
    }
}

/// Per dataset and tenant, messages go out one after the other: a message is never sent again
/// once the next one was, and the next one follows only once it was taken (answered 2xx) or
/// superseded (each of its records comes again, at a newer version, in a later delivery: a
/// retry re-reads the feed, where a record changed since holds only its newest version).
pub fn assert_in_order(what: &str, deliveries: &[Delivery]) {
    let mut current: HashMap<(String, String), &Delivery> = HashMap::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    for (i, d) in deliveries.iter().enumerate() {
        assert!(
            !done.contains(d.id()),
            "{what}: delivery {} sends message {} again after the message after it",
            d.n,
            d.id()
        );
        let stream = d.stream();
        if let Some(previous) = current.get(&stream)
            && previous.id() != d.id()
        {
            let superseded = || {
                previous.json()["changes"]
                    .as_array()
                    .expect("changes")
                    .iter()
                    .all(|c| {
                        deliveries[i..].iter().any(|later| {
                            later.stream() == stream
                                && later.json()["changes"].as_array().is_some_and(|cs| {
                                    cs.iter().any(|l| {
                                        l["id"] == c["id"]
                                            && l["version"].as_u64() > c["version"].as_u64()
                                    })
                                })
                        })
                    })
            };
            assert!(
                previous.accepted() || superseded(),
                "{what}: delivery {} ({stream:?}) came before the message before it was taken \
                 or superseded (its last attempt, delivery {}, was answered {:?}); the stream's \
                 deliveries: {:#?}",
                d.n,
                previous.n,
                previous.status,
                deliveries
                    .iter()
                    .filter(|e| e.stream() == stream)
                    .map(summary)
                    .collect::<Vec<_>>()
            );
            done.insert(previous.id().to_owned());
        }
        current.insert(stream, d);
    }
}

/// A delivery in a line: its place, id, status and changes (id and version).
pub fn summary(d: &Delivery) -> String {
    let changes: Vec<String> = d.json()["changes"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| format!("{}@{}", c["id"].as_str().unwrap_or("?"), c["version"]))
                .collect()
        })
        .unwrap_or_default();
    format!(
        "#{} {} {:?} reset={} [{}]",
        d.n,
        d.id(),
        d.status,
        d.json()["reset"],
        changes.join(" ")
    )
}

/// The python that has the official Standard Webhooks library, from `TENANTSYNC_TEST_PYTHON`;
/// `None` after a skip notice when it is unset.
pub fn python(test: &str) -> Option<PathBuf> {
    match std::env::var_os("TENANTSYNC_TEST_PYTHON") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            eprintln!(
                "skipping {test}: TENANTSYNC_TEST_PYTHON is not set \
                 (TENANTSYNC_TEST_PYTHON=$(dev/python venv | tail -n1))"
            );
            None
        }
    }
}

const VERIFY_PY: &str = r#"
import json, sys
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
out = []
for case in json.load(sys.stdin):
    try:
        Webhook(case["secret"]).verify(bytes.fromhex(case["body"]), case["headers"])
        out.append(None)
    except WebhookVerificationError as e:
        out.append(type(e).__name__ + ": " + str(e))
json.dump(out, sys.stdout)
"#;

/// What to verify: a body and headers as received, and the secret to verify them with.
pub struct Case<'a> {
    pub secret: &'a str,
    pub body: &'a [u8],
    pub headers: &'a BTreeMap<String, String>,
}

/// Verifies each case with `standardwebhooks.webhooks.Webhook(secret).verify(body, headers)`
/// run by `python`: `Ok` when it verifies, the library's error otherwise.
pub fn verify(python: &std::path::Path, cases: &[Case<'_>]) -> Vec<Result<(), String>> {
    let input: Vec<Value> = cases
        .iter()
        .map(|c| {
            let hex: String = c.body.iter().map(|b| format!("{b:02x}")).collect();
            serde_json::json!({"secret": c.secret, "body": hex, "headers": c.headers})
        })
        .collect();
    let mut child = Command::new(python)
        .args(["-c", VERIFY_PY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("TENANTSYNC_TEST_PYTHON runs");
    let input = serde_json::to_vec(&input).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "the verifier failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Option<String>> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results.len(), cases.len());
    results
        .into_iter()
        .map(|r| match r {
            None => Ok(()),
            Some(e) => Err(e),
        })
        .collect()
}

/// Writes a config file with a `[webhooks]` section of `settings` (TOML lines) into `dir`, and
/// returns the server arguments that use it.
pub fn webhook_config(dir: &std::path::Path, settings: &str) -> Vec<String> {
    let path = dir.join("webhooks.toml");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&path, format!("[webhooks]\n{settings}\n")).unwrap();
    vec!["--config".to_owned(), path.display().to_string()]
}

/// `PUT /v1/webhooks/{name}`: the status and the answer.
pub async fn put_webhook(server: &Server, name: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .put(server.url(&format!("/v1/webhooks/{name}")))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Creates the endpoint and returns its signing secret.
pub async fn create_webhook(server: &Server, name: &str, body: &Value) -> String {
    let (status, answer) = put_webhook(server, name, body).await;
    assert_eq!(status, 201, "PUT /v1/webhooks/{name}: {answer}");
    let secret = answer["secret"].as_str().expect("a secret").to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    secret
}

/// `GET` of a path under the server: the status and the answer's text.
pub async fn get_text(server: &Server, path: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(server.url(path))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// `GET /v1/webhooks/{name}`.
pub async fn webhook(server: &Server, name: &str) -> Value {
    let (status, text) = get_text(server, &format!("/v1/webhooks/{name}")).await;
    assert_eq!(status, 200, "GET /v1/webhooks/{name}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// `GET /v1/webhooks/{name}/attempts`, as a list, newest first.
pub async fn attempts(server: &Server, name: &str) -> Vec<Value> {
    let (status, text) = get_text(server, &format!("/v1/webhooks/{name}/attempts")).await;
    assert_eq!(status, 200, "GET /v1/webhooks/{name}/attempts: {text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    match body {
        Value::Array(list) => list,
        Value::Object(mut o) => match o.remove("attempts") {
            Some(Value::Array(list)) => list,
            _ => panic!("no attempts list: {text}"),
        },
        _ => panic!("no attempts list: {text}"),
    }
}

/// A DNS server (UDP, on 127.0.0.1) that answers A queries for one name with an address the
/// test can change, AAAA queries for it with no address, and any other name with NXDOMAIN.
pub struct DnsResponder {
    pub addr: SocketAddr,
    name: String,
    answer: Arc<Mutex<Ipv4Addr>>,
    /// The A answers given, in order.
    answered: Arc<Mutex<Vec<Ipv4Addr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl DnsResponder {
    pub async fn start(name: &str, answer: Ipv4Addr) -> DnsResponder {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let answer = Arc::new(Mutex::new(answer));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (name, answer, answered) = (name.clone(), answer.clone(), answered.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 1500];
                loop {
                    let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                        continue;
                    };
                    let ip = *answer.lock().unwrap();
                    if let Some((reply, gave)) = dns_reply(&buf[..len], &name, ip) {
                        if let Some(gave) = gave {
                            answered.lock().unwrap().push(gave);
                        }
                        let _ = socket.send_to(&reply, from).await;
                    }
                }
            })
        };
        DnsResponder {
            addr,
            name,
            answer,
            answered,
            task,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn set(&self, ip: Ipv4Addr) {
        *self.answer.lock().unwrap() = ip;
    }

    pub fn answered(&self) -> Vec<Ipv4Addr> {
        self.answered.lock().unwrap().clone()
    }
}

impl Drop for DnsResponder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The reply to one query (RFC 1035 4.1), and the address it gives, if any; `None` for what is
/// not a standard query of one question.
fn dns_reply(query: &[u8], name: &str, ip: Ipv4Addr) -> Option<(Vec<u8>, Option<Ipv4Addr>)> {
    if query.len() < 12 || query[2] & 0x80 != 0 || (query[2] >> 3) & 0x0f != 0 {
        return None;
    }
    if u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question_end = at + 4;
    let question = query.get(12..question_end)?;
    let ours = labels.join(".") == name;
    let give = (ours && qtype == 1).then_some(ip);

    let mut reply = Vec::with_capacity(question_end + 16);
    reply.extend_from_slice(&query[0..2]); // id
    // QR, the query's RD, RA; NOERROR for our name, NXDOMAIN for any other.
    reply.push(0x80 | (query[2] & 0x01));
    reply.push(0x80 | if ours { 0 } else { 3 });
    reply.extend_from_slice(&1u16.to_be_bytes()); // questions
    reply.extend_from_slice(&u16::from(give.is_some()).to_be_bytes()); // answers
    reply.extend_from_slice(&[0, 0, 0, 0]); // authority, additional
    reply.extend_from_slice(question);
    if let Some(ip) = give {
        reply.extend_from_slice(&[0xc0, 0x0c]); // the name: a pointer to the question's
        reply.extend_from_slice(&1u16.to_be_bytes()); // A
        reply.extend_from_slice(&1u16.to_be_bytes()); // IN
        reply.extend_from_slice(&0u32.to_be_bytes()); // TTL 0: never cached
        reply.extend_from_slice(&4u16.to_be_bytes());
        reply.extend_from_slice(&ip.octets());
    }
    Some((reply, give))
}
