//! HTTP batch workers through the real binary: `POST .../batches/lease` hands out single-tenant
//! batches of a dataset's state, a lease is never live twice, a worker that dies holding a
//! batch only delays it (its lease expires and the same batch comes back, unchanged), an
//! acknowledged batch never comes back, and records the batcher holds in memory survive a
//! SIGKILL of the server. The workers' test also runs with the Kafka backend on a real cluster
//! when `TENANTSYNC_TEST_KAFKA` names one.
//!
//! Every written record's id starts with its tenant (`{tenant}.k{n}`) and every upsert carries
//! its tenant in its data, so a batch that mixes tenants shows, deletes included.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{KafkaTarget, Server};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tenantsync_core::{TenantId, partition_for_tenant};

const DATASET: &str = "inventory";

/// A record's (tenant, id).
type Key = (String, String);
/// A record's version and data (`None` once deleted).
type State = (u64, Option<Value>);
/// Each record's state as the last write left it.
type Expected = BTreeMap<Key, State>;

/// What the writes did: each record's last state, and every state a write produced.
#[derive(Default)]
struct Written {
    last: Expected,
    all: HashMap<(Key, u64), Option<Value>>,
    /// States of changes whose own version no answer told (see `write`).
    unversioned: Vec<(Key, Option<Value>)>,
}

impl Written {
    /// Every record a batch of `batches` carries is one the writes produced, in that state.
    fn assert_produced<'a>(&self, batches: impl IntoIterator<Item = &'a Batch>) {
        for batch in batches {
            for (id, version, data) in &batch.records {
                let key = ((batch.tenant.clone(), id.clone()), *version);
                let produced = self.all.get(&key) == Some(data)
                    || self
                        .unversioned
                        .iter()
                        .any(|(k, d)| k == &key.0 && d == data);
                assert!(
                    produced,
                    "batch {} carries {}:{id} v{version} {data:?} as no write left it (writes left {:?})",
                    batch.id,
                    batch.tenant,
                    self.all.get(&key)
                );
            }
        }
    }
}

/// A batch as a worker received it, checked to be well formed.
#[derive(Debug, Clone)]
struct Batch {
    id: String,
    tenant: String,
    first_offset: u64,
    last_offset: u64,
    /// (id, version, data or `None` for a delete), in batch order.
    records: Vec<(String, u64, Option<Value>)>,
    /// The whole body but `lease_expires_at`: what must not change between deliveries.
    contents: Value,
}

/// Checks everything one batch must satisfy on its own: one tenant, the one whose state-log
/// partition it names, `count` records and at most `max_records`, an id naming its range.
fn parse_batch(mut body: Value, partitions: u32, max_records: usize) -> (Batch, DateTime<Utc>) {
    let expires: DateTime<Utc> = body["lease_expires_at"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no lease_expires_at: {body}"));
    body.as_object_mut().unwrap().remove("lease_expires_at");
    let (batch, _) = parse_contents(body, partitions, max_records);
    (batch, expires)
}

/// [`parse_batch`] for a batch without a lease (as the batches log carries it); also returns
/// its source partition.
fn parse_contents(body: Value, partitions: u32, max_records: usize) -> (Batch, u32) {
    assert_eq!(body["dataset"], DATASET, "{body}");
    let id = body["id"].as_str().expect("an id").to_owned();
    let tenant = body["tenant"].as_str().expect("a tenant").to_owned();
    let source = &body["source"];
    let partition = source["partition"].as_u64().expect("a source partition") as u32;
    let first_offset = source["first_offset"].as_u64().expect("a first offset");
    let last_offset = source["last_offset"].as_u64().expect("a last offset");
    assert_eq!(id, format!("{partition}-{first_offset}-{last_offset}"));
    assert!(first_offset <= last_offset, "{body}");
    assert_eq!(
        partition,
        partition_for_tenant(&TenantId::new(&tenant).unwrap(), partitions),
        "a batch comes from its tenant's state-log partition: {body}"
    );
    let records = body["records"].as_array().expect("records");
    assert!(
        !records.is_empty() && records.len() <= max_records,
        "{} records: {body}",
        records.len()
    );
    assert_eq!(body["count"], records.len(), "count: {body}");
    let records = records
        .iter()
        .map(|r| {
            let rid = r["id"].as_str().expect("a record id").to_owned();
            assert!(
                rid.starts_with(&format!("{tenant}.")),
                "record {rid} of another tenant in a batch of {tenant}"
            );
            let version = r["version"].as_u64().expect("a version");
            assert!(r["updated_at"].is_string(), "{r}");
            let data = match r["op"].as_str() {
                Some("upsert") => {
                    assert_eq!(r["data"]["tenant"], tenant.as_str(), "{r}");
                    Some(r["data"].clone())
                }
                Some("delete") => {
                    assert!(r["data"].is_null(), "{r}");
                    None
                }
                op => panic!("op {op:?}: {r}"),
            };
            (rid, version, data)
        })
        .collect();
    let batch = Batch {
        id,
        tenant,
        first_offset,
        last_offset,
        records,
        contents: body,
    };
    (batch, partition)
}

/// Writes `lines` in one bulk request with `?wait=applied`, so every change is applied (not
/// necessarily batched) on return, and notes each record's new state in `written`.
async fn write(client: &reqwest::Client, server: &Server, lines: &[Value], written: &mut Written) {
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let r = client
        .post(server.url(&format!("/v1/datasets/{DATASET}/changes?wait=applied")))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let reply: Value = r.json().await.unwrap();
    let results = reply["results"].as_array().expect("results");
    assert_eq!(results.len(), lines.len());
    for (i, (result, line)) in results.iter().zip(lines).enumerate() {
        assert_eq!(result["status"], 200, "{line} -> {result}");
        // A change re-applied after a processor restart, or found applied in the store, is
        // answered with its record's current state, which a later line of this request may
        // already have changed: such a line says nothing certain about its own change.
        let superseded = lines[i + 1..]
            .iter()
            .any(|later| later["tenant"] == line["tenant"] && later["id"] == line["id"]);
        let record = &result["record"];
        let key = (
            record["tenant"].as_str().unwrap().to_owned(),
            record["id"].as_str().unwrap().to_owned(),
        );
        assert_eq!(
            (key.0.as_str(), key.1.as_str()),
            (
                line["tenant"].as_str().unwrap(),
                line["id"].as_str().unwrap()
            )
        );
        let version = record["version"].as_u64().expect("a version");
        let data = Some(record["data"].clone()).filter(|d| !d.is_null());
        // What the answer shows is a state some write left, whichever line it belongs to.
        written.all.insert((key.clone(), version), data.clone());
        if superseded {
            // The answer may already be a later line's state; this line's own change left
            // its own data at a version the answer may not tell.
            let own = Some(line["data"].clone()).filter(|d| !d.is_null());
            written.unversioned.push((key, own));
            continue;
        }
        assert_eq!(data.is_none(), line["op"] == "delete", "{result}");
        if let Some((previous, _)) = written.last.get(&key) {
            assert!(version > *previous, "{key:?}: {previous} then {version}");
        }
        written.last.insert(key, (version, data));
    }
}

fn upsert(tenant: &str, k: usize, n: usize) -> Value {
    json!({"op": "upsert", "tenant": tenant, "id": format!("{tenant}.k{k}"),
           "data": {"tenant": tenant, "n": n}})
}

fn delete(tenant: &str, k: usize) -> Value {
    json!({"op": "delete", "tenant": tenant, "id": format!("{tenant}.k{k}")})
}

/// The records of `expected` no batch of `batches` carries in that state; empty once every
/// record's last state was handed out.
fn missing<'a>(
    expected: &'a Expected,
    batches: impl IntoIterator<Item = &'a Batch>,
) -> Vec<(&'a Key, &'a State)> {
    let mut carried: HashMap<(&str, &str, u64), &Option<Value>> = HashMap::new();
    for batch in batches {
        for (id, version, data) in &batch.records {
            carried.insert((&batch.tenant, id, *version), data);
        }
    }
    expected
        .iter()
        .filter(|((tenant, id), (version, data))| {
            carried.get(&(tenant.as_str(), id.as_str(), *version)) != Some(&data)
        })
        .collect()
}

/// Each tenant's batches, in state-log order, cover disjoint ranges (no state-log entry is in
/// two batches), and a record's versions go up from one batch to the next and within a batch.
/// (Only while the processor publishes each state once: after a restart it republishes the
/// current state of the keys it re-reads, and a batch may then carry a version twice.)
fn assert_ordered_per_tenant<'a>(batches: impl IntoIterator<Item = &'a Batch>) {
    let mut by_tenant: BTreeMap<&str, Vec<&Batch>> = BTreeMap::new();
    for batch in batches {
        by_tenant.entry(&batch.tenant).or_default().push(batch);
    }
    for (tenant, mut batches) in by_tenant {
        batches.sort_by_key(|b| b.first_offset);
        for pair in batches.windows(2) {
            assert!(
                pair[0].last_offset < pair[1].first_offset,
                "{tenant}: batches {} and {} overlap",
                pair[0].id,
                pair[1].id
            );
        }
        let mut versions: HashMap<&str, (u64, &str)> = HashMap::new();
        for batch in &batches {
            for (id, version, _) in &batch.records {
                if let Some((previous, in_batch)) = versions.insert(id, (*version, &batch.id)) {
                    assert!(
                        *version > previous,
                        "{tenant}:{id}: version {previous} (batch {in_batch}) then {version} (batch {})",
                        batch.id
                    );
                }
            }
        }
    }
}

fn lease_url(server: &Server, query: &str) -> String {
    server.url(&format!("/v1/datasets/{DATASET}/batches/lease?{query}"))
}

fn ack_url(server: &Server, id: &str) -> String {
    server.url(&format!("/v1/datasets/{DATASET}/batches/{id}/ack"))
}

/// One delivery of a batch to a worker, and what the worker did with it.
#[derive(Debug)]
struct Delivery {
    worker: usize,
    batch: Batch,
    /// When the lease request was sent, and when its reply was in.
    sent: DateTime<Utc>,
    received: DateTime<Utc>,
    expires: DateTime<Utc>,
    outcome: Outcome,
}

#[derive(Debug)]
enum Outcome {
    /// The worker "crashed": it dropped the batch without acknowledging it.
    Dropped,
    /// The ack's status, when its reply was in, and (after a 204) the status of a second ack.
    Acked {
        status: u16,
        done: DateTime<Utc>,
        again: Option<u16>,
    },
}

/// What every worker saw, shared.
#[derive(Default)]
struct Book {
    deliveries: Vec<Delivery>,
    /// When each lease request that got a 204 was sent.
    empty: Vec<DateTime<Utc>>,
}

impl Book {
    /// The delivery whose ack got 204, per batch id.
    fn acked(&self) -> HashMap<&str, &Delivery> {
        self.deliveries
            .iter()
            .filter(|d| matches!(d.outcome, Outcome::Acked { status: 204, .. }))
            .map(|d| (d.batch.id.as_str(), d))
            .collect()
    }

    /// Fails if a lease requested after a batch's acknowledgement (204) handed that batch out.
    fn assert_none_after_ack(&self) {
        let mut acked_at: HashMap<&str, DateTime<Utc>> = HashMap::new();
        for d in &self.deliveries {
            if let Outcome::Acked {
                status: 204, done, ..
            } = d.outcome
            {
                let at = acked_at.entry(&d.batch.id).or_insert(done);
                *at = (*at).min(done);
            }
        }
        for d in &self.deliveries {
            if let Some(&at) = acked_at.get(d.batch.id.as_str()) {
                assert!(
                    d.sent < at,
                    "batch {} leased to worker {} at {}, after its ack at {at}",
                    d.batch.id,
                    d.worker,
                    d.sent
                );
            }
        }
    }
}

/// Settings of the shared-workers test.
const PARTITIONS: u32 = 3;
const MAX_RECORDS: usize = 20;
const WORKERS: usize = 6;
/// How many deliveries the workers drop on purpose, over the whole run.
const DROPS: usize = 8;
const LEASE_SECS: u64 = 2;

/// An HTTP worker: leases (`wait=1`), then acknowledges (and acknowledges again, expecting
/// 404) or, now and then while the drop budget lasts, drops the batch as if it had crashed.
/// Its first batch is always dropped, so redeliveries happen early. Stops at `stop`; acks
/// whatever it holds then.
async fn worker(
    n: usize,
    base: String,
    book: Arc<Mutex<Book>>,
    stop: Arc<AtomicBool>,
    drops_left: Arc<AtomicUsize>,
) {
    let client = common::http_client();
    let mut rng = StdRng::seed_from_u64(n as u64);
    let mut first = true;
    let lease = format!("{base}/v1/datasets/{DATASET}/batches/lease?wait=1&lease={LEASE_SECS}");
    while !stop.load(Ordering::SeqCst) {
        let sent = Utc::now();
        let r = client.post(&lease).send().await.unwrap();
        let received = Utc::now();
        match r.status() {
            StatusCode::NO_CONTENT => {
                book.lock().unwrap().empty.push(sent);
                continue;
            }
            StatusCode::OK => {}
            status => panic!("lease: {status} {:?}", r.text().await),
        }
        let (batch, expires) = parse_batch(r.json().await.unwrap(), PARTITIONS, MAX_RECORDS);
        let drop_it = (first || rng.random_bool(0.25))
            && !stop.load(Ordering::SeqCst)
            && drops_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| d.checked_sub(1))
                .is_ok();
        first = false;
        let outcome = if drop_it {
            Outcome::Dropped
        } else {
            let ack = format!("{base}/v1/datasets/{DATASET}/batches/{}/ack", batch.id);
            let status = client.post(&ack).send().await.unwrap().status().as_u16();
            let done = Utc::now();
            let again = if status == 204 {
                Some(client.post(&ack).send().await.unwrap().status().as_u16())
            } else {
                None
            };
            Outcome::Acked {
                status,
                done,
                again,
            }
        };
        book.lock().unwrap().deliveries.push(Delivery {
            worker: n,
            batch,
            sent,
            received,
            expires,
            outcome,
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_workers_share_batches_without_overlapping_leases() {
    share_batches(Vec::new(), Duration::from_secs(30)).await;
}

/// The same with the Kafka backend on a real cluster, when `TENANTSYNC_TEST_KAFKA` names one:
/// the batches log is a Kafka topic and the batcher a consumer of the state topic. A replicated
/// cluster acknowledges more slowly, hence the longer deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_workers_share_batches_on_a_real_kafka_cluster() {
    if let Some(kafka) = KafkaTarget::real("batches") {
        share_batches(kafka.server_args(), Duration::from_secs(90)).await;
    }
}

/// Workers lease and acknowledge batches from a server started with `log_args` (nothing: the
/// embedded log), until every record's last state was handed out, within `within`.
async fn share_batches(log_args: Vec<String>, within: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = log_args;
    args.extend([
        "--batch-max-records".to_owned(),
        MAX_RECORDS.to_string(),
        "--batch-max-wait-ms".to_owned(),
        "50".to_owned(),
    ]);
    let server = Server::start(dir.path(), &args).await;
    common::declare(&server, DATASET, PARTITIONS).await;
    let client = common::http_client();

    // The workers start before anything is written: they wait on an empty queue, then take
    // batches as the batcher forms them.
    let book = Arc::new(Mutex::new(Book::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let drops_left = Arc::new(AtomicUsize::new(DROPS));
    let workers: Vec<_> = (0..WORKERS)
        .map(|n| {
            tokio::spawn(worker(
                n,
                server.url(""),
                book.clone(),
                stop.clone(),
                drops_left.clone(),
            ))
        })
        .collect();

    // 2,000 changes over 50 tenants, half of them to t00; keys written again and deleted.
    let mut rng = StdRng::seed_from_u64(2024);
    let tenants: Vec<String> = (0..50).map(|t| format!("t{t:02}")).collect();
    let mut live = HashSet::new();
    let mut lines = Vec::new();
    for n in 0..2_000 {
        let t = if n % 2 == 0 {
            0
        } else {
            rng.random_range(1..50)
        };
        let k = rng.random_range(0..if t == 0 { 150 } else { 12 });
        let line = if live.contains(&(t, k)) && rng.random_bool(0.15) {
            live.remove(&(t, k));
            delete(&tenants[t], k)
        } else {
            live.insert((t, k));
            upsert(&tenants[t], k, n)
        };
        lines.push(line);
    }
    let mut written = Written::default();
    for chunk in lines.chunks(250) {
        write(&client, &server, chunk, &mut written).await;
    }
    assert!(
        written.last.values().any(|(_, d)| d.is_none()),
        "some records deleted"
    );

    // Done once every drop happened, every batch handed out was acknowledged, the acknowledged
    // batches carry every record's last state, and after all that a lease found nothing.
    let deadline = Instant::now() + within;
    let mut settled_since: Option<DateTime<Utc>> = None;
    loop {
        {
            let book = book.lock().unwrap();
            book.assert_none_after_ack();
            let acked = book.acked();
            let settled = drops_left.load(Ordering::SeqCst) == 0
                && book
                    .deliveries
                    .iter()
                    .all(|d| acked.contains_key(d.batch.id.as_str()))
                && missing(&written.last, acked.values().map(|d| &d.batch)).is_empty();
            if settled {
                let since = *settled_since.get_or_insert_with(Utc::now);
                if book.empty.iter().any(|&sent| sent >= since) {
                    break;
                }
            } else {
                settled_since = None;
            }
            assert!(
                Instant::now() < deadline,
                "not done after {within:?}: {} deliveries, {} acked, {} drops left, {} records missing, e.g. {:?}",
                book.deliveries.len(),
                acked.len(),
                drops_left.load(Ordering::SeqCst),
                missing(&written.last, acked.values().map(|d| &d.batch)).len(),
                missing(&written.last, acked.values().map(|d| &d.batch)).first(),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }

    let book = std::mem::take(&mut *book.lock().unwrap());
    let mut by_id: BTreeMap<&str, Vec<&Delivery>> = BTreeMap::new();
    for d in &book.deliveries {
        by_id.entry(&d.batch.id).or_default().push(d);
    }
    book.assert_none_after_ack();
    let mut redelivered = 0;
    for (id, deliveries) in &mut by_id {
        deliveries.sort_by_key(|d| d.received);
        // The same batch every time.
        for d in deliveries.iter() {
            assert_eq!(
                d.batch.contents, deliveries[0].batch.contents,
                "batch {id} changed between deliveries"
            );
        }
        // A lease is live once: the next delivery only once the previous lease expired.
        for pair in deliveries.windows(2) {
            assert!(
                pair[1].received >= pair[0].expires,
                "batch {id} leased to worker {} at {} while worker {}'s lease ran to {}",
                pair[1].worker,
                pair[1].received,
                pair[0].worker,
                pair[0].expires
            );
        }
        // Acknowledged exactly once, 404 for any other ack (never handed out after: checked above).
        let acks: Vec<(u16, DateTime<Utc>, Option<u16>)> = deliveries
            .iter()
            .filter_map(|d| match d.outcome {
                Outcome::Acked {
                    status,
                    done,
                    again,
                } => Some((status, done, again)),
                Outcome::Dropped => None,
            })
            .collect();
        let ok: Vec<_> = acks.iter().filter(|a| a.0 == 204).collect();
        assert_eq!(ok.len(), 1, "batch {id}: acks {acks:?}");
        assert!(
            acks.iter().all(|a| a.0 == 204 || a.0 == 404),
            "{id}: {acks:?}"
        );
        assert_eq!(ok[0].2, Some(404), "batch {id}: a second ack");
        // A dropped batch came back.
        if let Some(i) = deliveries
            .iter()
            .position(|d| matches!(d.outcome, Outcome::Dropped))
        {
            assert!(
                i + 1 < deliveries.len(),
                "dropped batch {id} never came back"
            );
        }
        if deliveries.len() > 1 {
            redelivered += 1;
        }
    }
    let dropped = book
        .deliveries
        .iter()
        .filter(|d| matches!(d.outcome, Outcome::Dropped))
        .count();
    assert_eq!(dropped, DROPS);
    assert!(redelivered > 0);
    let batches: Vec<&Batch> = by_id.values().map(|d| &d[0].batch).collect();
    assert_ordered_per_tenant(batches.iter().copied());
    written.assert_produced(batches.iter().copied());
    assert!(missing(&written.last, batches.iter().copied()).is_empty());
    assert!(
        batches.iter().any(|b| b.records.len() == MAX_RECORDS),
        "t00's volume fills batches"
    );
    let worked: BTreeSet<usize> = book.deliveries.iter().map(|d| d.worker).collect();
    println!(
        "{} batches, {} deliveries, {redelivered} redelivered, workers {worked:?}",
        batches.len(),
        book.deliveries.len()
    );

    // Nothing is left, and the queue stays as it is on bad requests.
    let r = client
        .post(lease_url(&server, "wait=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for bad in ["nonsense", "1-2", "a-1-2", "1-2-x", "-1-2-3"] {
        let r = client.post(ack_url(&server, bad)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "ack {bad}");
    }
    let r = client
        .post(ack_url(&server, "2-999999-999999"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "never handed out");
    for query in ["lease=0", "lease=-1", "wait=-1", "lease=soon"] {
        let r = client.post(lease_url(&server, query)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{query}");
    }
    let r = client
        .post(server.url("/v1/datasets/undeclared/batches/lease"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_records_survive_sigkill() {
    const PARTITIONS: u32 = 2;
    const MAX_RECORDS: usize = 1_000;
    let dir = tempfile::tempdir().unwrap();
    // Records wait up to 3 s in the batcher's memory: a kill right after a write finds them
    // there, applied and in the state log but in no batch.
    let mut server = Server::start(
        dir.path(),
        &[
            "--batch-max-wait-ms",
            "3000",
            "--batch-max-records",
            &MAX_RECORDS.to_string(),
        ],
    )
    .await;
    common::declare(&server, DATASET, PARTITIONS).await;
    let client = common::http_client();
    let tenants = ["acme", "globex", "initech", "umbrella", "hooli"];
    let round = |from: usize, per_tenant: usize| -> Vec<Value> {
        (from..from + per_tenant)
            .flat_map(|k| tenants.iter().map(move |t| upsert(t, k, k)))
            .collect()
    };
    let mut written = Written::default();

    // Kill 1: everything written is still buffered. The processor has committed it, so it
    // does not publish it again after the restart: only the batcher's recovery can save it.
    write(&client, &server, &round(0, 12), &mut written).await;
    common::wait_caught_up(&server, DATASET).await;
    server.restart().await; // SIGKILL, then the same command again

    // Kill 2: one batch is leased (not acknowledged), newer records are buffered.
    write(&client, &server, &round(12, 8), &mut written).await;
    let r = client
        .post(lease_url(&server, "wait=10&lease=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "a batch within the max wait");
    let (held, _) = parse_batch(r.json().await.unwrap(), PARTITIONS, MAX_RECORDS);
    write(&client, &server, &round(20, 3), &mut written).await;
    common::wait_caught_up(&server, DATASET).await;
    server.restart().await;

    write(&client, &server, &round(23, 2), &mut written).await;
    // A few keys written again: their batches must carry the new version.
    let again: Vec<Value> = tenants.iter().map(|t| upsert(t, 0, 100)).collect();
    write(&client, &server, &again, &mut written).await;

    // Lease and acknowledge until every record's last state was handed out, then until the
    // queue is empty.
    let mut acked: BTreeMap<String, Batch> = BTreeMap::new();
    let mut held_again = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "{} records missing after 30 s, e.g. {:?}",
            missing(&written.last, acked.values()).len(),
            missing(&written.last, acked.values()).first()
        );
        let done = missing(&written.last, acked.values()).is_empty();
        let wait = if done { 0 } else { 5 };
        let r = client
            .post(lease_url(&server, &format!("wait={wait}&lease=30")))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::NO_CONTENT {
            if done {
                break;
            }
            continue;
        }
        assert_eq!(r.status(), StatusCode::OK);
        let (batch, _) = parse_batch(r.json().await.unwrap(), PARTITIONS, MAX_RECORDS);
        if batch.id == held.id {
            assert_eq!(batch.contents, held.contents, "the held batch changed");
            held_again = true;
        }
        assert!(
            !acked.contains_key(&batch.id),
            "batch {} handed out after its ack",
            batch.id
        );
        let r = client
            .post(ack_url(&server, &batch.id))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "ack {}", batch.id);
        acked.insert(batch.id.clone(), batch);
    }
    assert!(held_again, "the batch leased before the kill came back");
    let r = client
        .post(ack_url(&server, &held.id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "acknowledged already");
    // The processor had committed everything before each kill, so the state log holds each
    // written state once: a state in two batches was batched twice across a kill.
    assert_ordered_per_tenant(acked.values());
    written.assert_produced(acked.values());
    let mut seen = HashSet::new();
    for batch in acked.values() {
        for (id, version, _) in &batch.records {
            assert!(
                seen.insert((&batch.tenant, id, version)),
                "{}:{id} v{version} is in two batches (or the processor published it twice)",
                batch.tenant
            );
        }
    }
    // This process batched what was written after the last restart, and says so in /metrics.
    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{metrics}"))
    };
    assert!(value("tenantsync_batcher_records_total ") >= 5, "{metrics}");
    assert!(value("tenantsync_batcher_batches_total ") >= 1, "{metrics}");
    assert_eq!(value("tenantsync_batcher_undecodable_total "), 0);
}
