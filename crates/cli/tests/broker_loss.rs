//! Broker loss on a real 3-node Kafka cluster: with writes running through two instances, one
//! broker is SIGKILLed and restarted, then one instance is SIGKILLed and restarted. Every
//! accepted change is applied exactly once, the state topic's last value of every key equals
//! the master store, and a plain consumer group's copy converges to it.
//!
//! Runs when `TENANTSYNC_TEST_KAFKA` names a cluster started by `dev/kafka` and
//! `TENANTSYNC_TEST_KAFKA_DIR` its directory (`.ci/run` sets both), since the test stops and
//! starts one of its brokers.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{KafkaTarget, Server};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use serde_json::{Value, json};

const DATASET: &str = "brokerloss";
const PARTITIONS: u32 = 4;
const TENANTS: usize = 6;
const KEYS: usize = 10;
/// The broker the test kills: not the one every client bootstraps from first.
const BROKER: &str = "2";

type Key = (String, String);

/// Runs `dev/kafka ARGS --dir DIR`, failing the test with its output when it fails.
fn dev_kafka(dir: &str, args: &[&str]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../dev/kafka");
    let output = Command::new(script)
        .args(args)
        .args(["--dir", dir])
        .output()
        .expect("running dev/kafka");
    assert!(
        output.status.success(),
        "dev/kafka {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Builds a copy of the state topic as a plain consumer group would: from the start, each key's
/// last value, committing as it goes. Returns once `done(copy)`, or panics at the deadline.
fn consumer_group_copy(
    servers: &str,
    topic: &str,
    group: &str,
    done: impl Fn(&BTreeMap<Key, Value>) -> bool,
) -> BTreeMap<Key, Value> {
    let consumer: BaseConsumer = common::kafka_group_config(servers, group)
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut copy = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done(&copy) {
        assert!(
            Instant::now() < deadline,
            "the consumer group's copy did not converge within 120 s"
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.expect("consuming the state topic");
        let record: Value =
            serde_json::from_slice(message.payload().expect("no deletes")).expect("JSON");
        copy.insert(
            (
                record["tenant"].as_str().unwrap().to_owned(),
                record["id"].as_str().unwrap().to_owned(),
            ),
            json!({ "version": record["version"], "data": record["data"] }),
        );
        let _ = consumer.commit_message(&message, CommitMode::Async);
    }
    copy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_survive_a_broker_and_an_instance_killed() {
    let Some(kafka) = KafkaTarget::real("broker-loss") else {
        return;
    };
    let Ok(cluster_dir) = std::env::var("TENANTSYNC_TEST_KAFKA_DIR") else {
        eprintln!(
            "skipping broker loss: TENANTSYNC_TEST_KAFKA_DIR (the dev/kafka --dir of the cluster) is not set"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("store.sqlite3").display());
    let mut args = kafka.server_args();
    args.extend(["--store", &store, "--apply-timeout-secs", "90"].map(String::from));
    let a = Server::start(&dir.path().join("a"), &args).await;
    let mut b = Server::start(&dir.path().join("b"), &args).await;
    common::declare(&a, DATASET, PARTITIONS).await;
    let bases = [a.url(""), b.url("")];

    // One writer: round n sets every key to {"n": n}, through the instances in turn (a retry
    // after a failure goes to the other one, with the same idempotency keys). Each round is
    // accepted before the next starts, so every key ends at the last round's data and at one
    // version per round: any change lost or applied twice shows.
    let writing = Arc::new(AtomicBool::new(true));
    let rounds = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn({
        let (writing, rounds, bases) = (writing.clone(), rounds.clone(), bases.clone());
        async move {
            let client = common::http_client();
            let mut turn = 0usize;
            while writing.load(Ordering::Relaxed) {
                let n = rounds.load(Ordering::Relaxed);
                let changes = common::upsert_round(n, TENANTS, KEYS);
                let next_base = || {
                    turn += 1;
                    bases[turn % 2].clone()
                };
                common::submit(
                    &client,
                    DATASET,
                    &changes,
                    next_base,
                    Duration::from_millis(100),
                )
                .await;
                rounds.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let progressed = |from: usize| {
        let rounds = rounds.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while rounds.load(Ordering::Relaxed) < from + 5 {
                assert!(Instant::now() < deadline, "writes stalled for 120 s");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    progressed(0).await;
    dev_kafka(&cluster_dir, &["stop-broker", BROKER]);
    progressed(rounds.load(Ordering::Relaxed)).await;
    dev_kafka(&cluster_dir, &["start-broker", BROKER]);
    progressed(rounds.load(Ordering::Relaxed)).await;
    b.kill();
    progressed(rounds.load(Ordering::Relaxed)).await;
    b.restart().await;
    progressed(rounds.load(Ordering::Relaxed)).await;
    writing.store(false, Ordering::Relaxed);
    writer.await.unwrap();
    let rounds = rounds.load(Ordering::Relaxed);
    common::wait_caught_up(&a, DATASET).await;
    common::wait_caught_up(&b, DATASET).await;

    // Every key: the last round's data, at one version per round.
    let client = common::http_client();
    let mut master = BTreeMap::new();
    for t in 0..TENANTS {
        for k in 0..KEYS {
            let (tenant, id) = (format!("t{t}"), format!("k{k}"));
            let url = a.url(&format!(
                "/v1/datasets/{DATASET}/tenants/{tenant}/records/{id}"
            ));
            let record: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            assert_eq!(
                (record["version"].as_u64(), &record["data"]),
                (Some(rounds as u64), &json!({ "n": rounds - 1 })),
                "{tenant}:{id} after {rounds} rounds"
            );
            master.insert(
                (tenant, id),
                json!({ "version": record["version"], "data": record["data"] }),
            );
        }
    }
    let (servers, topic, group) = (
        kafka.servers().to_owned(),
        kafka.state_topic(DATASET),
        kafka.group("copy"),
    );
    let expected = master.clone();
    let copy = tokio::task::spawn_blocking(move || {
        consumer_group_copy(&servers, &topic, &group, |copy| copy == &expected)
    })
    .await
    .unwrap();
    assert_eq!(copy, master);
    eprintln!(
        "{rounds} rounds of {} writes through a broker and an instance killed",
        TENANTS * KEYS
    );
}
