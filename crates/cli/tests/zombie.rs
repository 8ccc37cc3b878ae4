//! Zombie fencing on a real Kafka cluster: a processor frozen (SIGSTOP) past its session
//! timeout, while the other instance takes its partitions and publishes newer versions, must
//! not publish its stale states when it is resumed (SIGCONT). A consumer of the state topic
//! reading committed entries never sees a key's version go down, and ends with the master
//! store's values.
//!
//! Runs when `TENANTSYNC_TEST_KAFKA` names a cluster (`dev/kafka up --brokers 3`); the mock
//! cluster has no group coordinator fencing to test.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{KafkaTarget, Server};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use serde_json::Value;

const DATASET: &str = "zombie";
const PARTITIONS: u32 = 4;
const TENANTS: usize = 8;
const KEYS: usize = 10;
/// Freeze-and-resume rounds: each is one more chance to catch the frozen instance mid-batch.
const ROUNDS: usize = 3;

type Key = (String, String);

/// What the state-topic consumer saw.
#[derive(Default)]
struct Seen {
    /// Per key, the highest version seen and the data at that version.
    latest: BTreeMap<Key, (u64, Value)>,
    /// Every time a key's version went down: (key, highest before, version after).
    regressions: Vec<(Key, u64, u64)>,
    entries: u64,
}

/// Reads the state topic from the start with `isolation.level=read_committed` until `stop`.
fn watch_state(
    servers: String,
    topic: String,
    group: String,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) {
    let consumer: BaseConsumer = common::kafka_group_config(&servers, &group)
        .set("isolation.level", "read_committed")
        .create()
        .expect("state consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    while !stop.load(Ordering::Relaxed) {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.expect("consuming the state topic");
        let version: u64 = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "version").and_then(|h| h.value))
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
            .expect("a version header");
        let record: Value = serde_json::from_slice(message.payload().expect("no deletes here"))
            .expect("a JSON record");
        let key = (
            record["tenant"].as_str().unwrap().to_owned(),
            record["id"].as_str().unwrap().to_owned(),
        );
        let mut seen = seen.lock().unwrap();
        seen.entries += 1;
        match seen.latest.get(&key) {
            Some((highest, _)) if version < *highest => {
                let highest = *highest;
                seen.regressions.push((key, highest, version));
            }
            _ => {
                seen.latest.insert(key, (version, record["data"].clone()));
            }
        }
    }
}

/// Each partition's applied position, as the instance reports it. A 503 (the log busy with a
/// rebalance) is an answer to ask again, as in `common::wait_caught_up`.
async fn applied(server: &Server) -> Vec<u64> {
    let url = server.url(&format!("/v1/datasets/{DATASET}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let body: Value = loop {
        let r = reqwest::get(&url).await.unwrap();
        if r.status() != 503 {
            assert!(r.status().is_success(), "GET {url}: {}", r.status());
            break r.json().await.unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "GET {url} answered 503 for 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    body["progress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["applied"].as_u64().unwrap())
        .collect()
}

/// SIGSTOPs the process at a moment it does not hold the shared SQLite file's write lock.
///
/// A process stopped inside a write transaction keeps the whole file locked, so no other
/// instance can write at all until it resumes: that is how one SQLite file shared by processes
/// behaves, not what this test is about (a stalled processor's publishes, fenced by Kafka).
/// After stopping it, the test takes the write lock itself, waiting up to 2 s (longer than any
/// transaction of a running instance); if it cannot, the stopped process holds it, and is
/// resumed and stopped again.
async fn freeze_outside_a_store_write(pid: u32, store: &std::path::Path) {
    let pid = Pid::from_raw(pid as i32);
    for _ in 0..50 {
        kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
        let file = store.to_owned();
        let free = tokio::task::spawn_blocking(move || {
            let conn = rusqlite::Connection::open(file).expect("open the store file");
            conn.busy_timeout(Duration::from_secs(2))
                .expect("busy timeout");
            conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;").is_ok()
        })
        .await
        .expect("lock probe");
        if free {
            return;
        }
        kill(pid, Signal::SIGCONT).expect("SIGCONT");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the instance held the store's write lock at every one of 50 tries to stop it");
}

/// The master store's version and data of every key.
async fn master(server: &Server) -> BTreeMap<Key, (u64, Value)> {
    let client = reqwest::Client::new();
    let mut out = BTreeMap::new();
    for t in 0..TENANTS {
        for k in 0..KEYS {
            let (tenant, id) = (format!("t{t}"), format!("k{k}"));
            let url = server.url(&format!(
                "/v1/datasets/{DATASET}/tenants/{tenant}/records/{id}"
            ));
            let record: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            out.insert(
                (tenant, id),
                (record["version"].as_u64().unwrap(), record["data"].clone()),
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_processor_never_publishes_over_newer_states() {
    let Some(kafka) = KafkaTarget::real("zombie") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("store.sqlite3").display());
    let mut args = kafka.server_args();
    args.extend(["--store", &store, "--apply-timeout-secs", "60"].map(String::from));
    let mut frozen = Server::start(&dir.path().join("a"), &args).await;
    let live = Server::start(&dir.path().join("b"), &args).await;
    common::declare(&live, DATASET, PARTITIONS).await;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = std::thread::spawn({
        let (servers, topic, group) = (
            kafka.servers().to_owned(),
            kafka.state_topic(DATASET),
            kafka.group("state-reader"),
        );
        let (seen, stop) = (seen.clone(), stop.clone());
        move || watch_state(servers, topic, group, seen, stop)
    });

    // Writes through the live instance never stop until the end: every key is written over
    // and over, so the instance that takes over publishes newer versions of the very keys the
    // frozen one may have applied but not published.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = tokio::spawn({
        let (writing, base) = (writing.clone(), live.url(""));
        async move {
            let client = common::http_client();
            let mut n = 0usize;
            while writing.load(Ordering::Relaxed) {
                let changes = common::upsert_round(n, TENANTS, KEYS);
                common::submit(
                    &client,
                    DATASET,
                    &changes,
                    || base.clone(),
                    Duration::from_millis(50),
                )
                .await;
                n += 1;
            }
            n
        }
    });

    for round in 0..ROUNDS {
        // Freeze while both are busy, then wait until the live instance has applied more on
        // every partition: the frozen one's session expired and its partitions moved.
        common::wait_for_progress(&live, DATASET).await;
        let before = applied(&live).await;
        freeze_outside_a_store_write(frozen.pid(), &dir.path().join("store.sqlite3")).await;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let now = applied(&live).await;
            if now.iter().zip(&before).all(|(n, b)| n > b) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: the live instance never took over every partition ({before:?} -> {now:?})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        kill(Pid::from_raw(frozen.pid() as i32), Signal::SIGCONT).expect("SIGCONT");
        // Let the resumed instance rejoin and take partitions back before the next round.
        common::wait_for_progress(&frozen, DATASET).await;
        common::wait_for_progress(&live, DATASET).await;
    }

    writing.store(false, Ordering::Relaxed);
    let rounds_written = writer.await.unwrap();
    common::wait_caught_up(&live, DATASET).await;
    let master = master(&live).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let caught_up = {
            let seen = seen.lock().unwrap();
            master
                .iter()
                .all(|(k, (v, _))| seen.latest.get(k).is_some_and(|(s, _)| s >= v))
        };
        if caught_up || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    frozen.kill();

    let seen = seen.lock().unwrap();
    eprintln!(
        "{ROUNDS} freezes, {rounds_written} rounds of {} writes, {} state entries read",
        TENANTS * KEYS,
        seen.entries
    );
    assert!(
        seen.regressions.is_empty(),
        "a read_committed consumer saw {} versions go down, e.g. {:?}",
        seen.regressions.len(),
        &seen.regressions[..seen.regressions.len().min(5)]
    );
    let differences: BTreeSet<&Key> = master
        .iter()
        .filter(|(k, value)| seen.latest.get(*k) != Some(value))
        .map(|(k, _)| k)
        .collect();
    assert!(
        differences.is_empty(),
        "the state topic's last values differ from the master store for {differences:?}"
    );
}
