//! Crash test: drives a workload through `tenantsync serve` while SIGKILLing it at random
//! moments, then checks that the master store equals a reference model of the accepted changes,
//! that the state log's last value per key equals the master store, and that no key's version
//! ever went down on the state log.
//!
//! The Kafka runs include one with two processes in one consumer group sharing the master store,
//! killed in turn, so partitions move between them.
//!
//! The Kafka runs go against librdkafka's in-process mock cluster and, when
//! `TENANTSYNC_TEST_KAFKA` names one, against a real cluster too (with fewer kills and changes by
//! default).
//!
//! `TENANTSYNC_CRASH_KILLS` sets the number of kills (default 20; a multi-process run splits them
//! between its processes), `TENANTSYNC_CRASH_CHANGES` the minimum number of changes (default
//! 20000), `TENANTSYNC_CRASH_SEED` the workload's seed.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::model::{Model, next_change};
use common::{KafkaTarget, Server, WorkChange, env_or};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tenantsync_core::{DatasetName, Record, Topics};
use tenantsync_log::Log;
use tokio::sync::Mutex;

const DATASET: &str = "crash";
const PARTITIONS: u32 = 8;
const TENANTS: usize = 24;
const IDS_PER_TENANT: usize = 40;
const WORKERS: usize = 8;
const LINES_PER_REQUEST: usize = 40;
/// Kills and changes of a run on a real cluster, unless the variables below say otherwise.
const REAL_KILLS: u64 = 10;
const REAL_CHANGES: u64 = 10_000;

/// Sends changes until every one was accepted, retrying through kills on the next instance
/// when there are several.
async fn submit(client: &reqwest::Client, bases: &[String], changes: &[WorkChange]) {
    let mut next = bases.iter().cycle().cloned();
    let base = || next.next().unwrap();
    common::submit(client, DATASET, changes, base, Duration::from_millis(25)).await;
}

enum Backend {
    /// The embedded log can be opened by one process at a time: the test opens it after the
    /// server's last kill.
    Embedded,
    Kafka(KafkaTarget),
}

impl Backend {
    fn args(&self) -> Vec<String> {
        match self {
            Backend::Embedded => vec![],
            Backend::Kafka(kafka) => kafka.killable_server_args(),
        }
    }

    fn topics(&self) -> Topics {
        match self {
            Backend::Embedded => Topics::default(),
            Backend::Kafka(kafka) => kafka.topics(),
        }
    }

    /// The default number of kills and of changes: fewer on a real cluster, where a restarted
    /// member waits out the killed one's session before it owns partitions again.
    fn default_workload(&self) -> (u64, u64) {
        match self {
            Backend::Kafka(kafka) if kafka.is_real() => (REAL_KILLS, REAL_CHANGES),
            _ => (20, 20_000),
        }
    }

    async fn open_log(&self, data_dir: &std::path::Path) -> Arc<dyn Log> {
        match self {
            Backend::Embedded => Arc::new(
                tenantsync_log_embedded::EmbeddedLog::open(data_dir, Default::default())
                    .await
                    .unwrap(),
            ),
            Backend::Kafka(kafka) => Arc::new(
                tenantsync_log_kafka::KafkaLog::connect(tenantsync_log_kafka::KafkaConfig {
                    client_id: "crash-test".into(),
                    ..tenantsync_log_kafka::KafkaConfig::new(kafka.servers())
                })
                .await
                .unwrap(),
            ),
        }
    }
}

/// Runs the workload against `instances` processes sharing one log and one master store,
/// SIGKILLing one of them at a time.
async fn run(backend: Backend, data_dir: &std::path::Path, instances: usize) {
    // Several instances split the kills between them, keeping CI's run time in bounds.
    let (default_kills, default_changes) = backend.default_workload();
    let kills = env_or("TENANTSYNC_CRASH_KILLS", default_kills) as usize / instances;
    let min_changes = env_or("TENANTSYNC_CRASH_CHANGES", default_changes) as usize;
    let seed = env_or("TENANTSYNC_CRASH_SEED", rand::random());
    eprintln!(
        "crash test: seed {seed} (TENANTSYNC_CRASH_SEED), {instances} instance(s), {kills} kills, \
         >= {min_changes} changes"
    );

    let store_url = format!("sqlite://{}", data_dir.join("store.sqlite3").display());
    // A restarted Kafka member waits out the killed one's session before it owns partitions.
    let mut args = backend.args();
    args.extend(["--apply-timeout-secs", "90", "--store", &store_url].map(String::from));
    let mut servers = Vec::new();
    for i in 0..instances {
        let dir = data_dir.join(format!("instance-{i}"));
        servers.push(Server::start(&dir, &args).await);
    }
    common::declare(&servers[0], DATASET, PARTITIONS).await;
    let bases: Vec<String> = servers.iter().map(|s| s.url("")).collect();
    let servers: Vec<_> = servers
        .into_iter()
        .map(|s| Arc::new(Mutex::new(s)))
        .collect();

    let tenants: Vec<String> = (0..TENANTS).map(|t| format!("tenant-{t:02}")).collect();
    let model = Arc::new(std::sync::Mutex::new(Model::default()));
    let killing_done = Arc::new(AtomicBool::new(false));
    let submitted = Arc::new(AtomicUsize::new(0));

    // Each kill lands at a random moment after the processors (all of them, through the shared
    // store) applied something, so kills hit recovery and steady processing alike.
    let killer = {
        let servers = servers.clone();
        let done = killing_done.clone();
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
            for _ in 0..kills {
                let mut s = servers[rng.random_range(0..servers.len())].lock().await;
                common::wait_for_progress(&s, DATASET).await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
                s.restart().await;
            }
            done.store(true, Ordering::SeqCst);
        })
    };

    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let my_tenants: Vec<String> = tenants.iter().skip(w).step_by(WORKERS).cloned().collect();
        let (model, done, submitted) = (model.clone(), killing_done.clone(), submitted.clone());
        // Workers start on different instances.
        let mut bases = bases.clone();
        bases.rotate_left(w % instances);
        workers.push(tokio::spawn(async move {
            let client = common::http_client();
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(w as u64));
            let mut history: Vec<WorkChange> = Vec::new();
            let mut seq = 0;
            while !(done.load(Ordering::SeqCst) && submitted.load(Ordering::SeqCst) >= min_changes)
            {
                let tenant = &my_tenants[rng.random_range(0..my_tenants.len())];
                // Past the minimum, only a trickle of single changes until the last kill: the mock
                // cluster keeps just 5 MiB per partition (older entries vanish, as with a
                // retention limit), so the Kafka run must stay well below that.
                let trickle = submitted.load(Ordering::SeqCst) >= min_changes;
                let n = if trickle || rng.random_bool(0.2) {
                    1
                } else {
                    LINES_PER_REQUEST
                };
                let mut batch = Vec::with_capacity(n);
                {
                    let mut model = model.lock().unwrap();
                    for _ in 0..n {
                        // Now and then, submit an earlier change again: a duplicate.
                        if !history.is_empty() && rng.random_bool(0.05) {
                            let dup = history[rng.random_range(0..history.len())].clone();
                            if dup.tenant == *tenant {
                                batch.push(dup);
                                continue;
                            }
                        }
                        seq += 1;
                        let c = next_change(
                            &mut rng,
                            &model,
                            tenant,
                            IDS_PER_TENANT,
                            seq * WORKERS + w,
                        );
                        model.apply(&c);
                        batch.push(c);
                    }
                }
                submit(&client, &bases, &batch).await;
                submitted.fetch_add(batch.len(), Ordering::SeqCst);
                if trickle {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                history.extend(batch);
            }
        }));
    }
    killer.await.unwrap();
    for w in workers {
        w.await.unwrap();
    }

    // Every tenant's changes are in its one partition, in order: once a last write per tenant
    // is applied, everything the tenant was sent before is too. Whichever instance applies it,
    // the writer learns of it (from the shared store when it is another instance).
    let client = reqwest::Client::new();
    for t in &tenants {
        let r = client
            .put(format!(
                "{}/v1/datasets/{DATASET}/tenants/{t}/records/last?wait=applied",
                bases[0]
            ))
            .timeout(Duration::from_secs(120))
            .json(&json!({"done": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        model.lock().unwrap().apply(&WorkChange {
            key: format!("{t}-last"),
            op: "upsert",
            tenant: t.clone(),
            id: "last".into(),
            data: json!({"done": true}).as_object().cloned(),
            expected_version: None,
        });
    }
    // The store commits a batch before the processor publishes it, so the state log may still
    // lag here. Kill once more, then wait until the processors have published and committed
    // everything (which recovery after a kill must achieve on its own).
    let mut servers: Vec<Server> = servers
        .into_iter()
        .map(|s| Arc::try_unwrap(s).ok().unwrap().into_inner())
        .collect();
    servers[0].restart().await;
    common::wait_caught_up(&servers[0], DATASET).await;
    for s in &mut servers {
        s.kill();
    }
    let total = submitted.load(Ordering::SeqCst);
    eprintln!("crash test: {total} changes submitted through {kills} kills");

    let dataset = DatasetName::new(DATASET).unwrap();
    let stored = common::store_records(&store_url, DATASET, &tenants).await;

    // 1. Master store == reference model, record for record.
    std::mem::take(&mut *model.lock().unwrap()).assert_stored(&stored);

    // 2. The state log's last value per key == master store; 3. versions never went down.
    let log = backend.open_log(&data_dir.join("instance-0")).await;
    let topic = backend.topics().state(&dataset);
    let mut last: BTreeMap<(String, String), Record> = BTreeMap::new();
    for p in 0..PARTITIONS {
        let end = log.end_offset(&topic, p).await.unwrap();
        let mut from = 0;
        while from < end {
            let entries = log
                .read(&topic, p, from, 5_000, Duration::from_secs(5))
                .await
                .unwrap();
            if entries.is_empty() {
                // On Kafka the offsets left below the end may hold no readable entry at all: a
                // transaction's commit marker (or an aborted one's entries) takes offsets of its
                // own. The embedded log has no such gaps.
                assert!(
                    matches!(backend, Backend::Kafka(_)),
                    "partition {p} stops at {from} before its end {end}"
                );
                break;
            }
            for e in &entries {
                let r = tenantsync_dataset::state::decode(e).unwrap();
                let key = (r.tenant.to_string(), r.id.to_string());
                if let Some(prev) = last.get(&key) {
                    assert!(
                        r.version >= prev.version,
                        "{key:?} went from version {} to {}",
                        prev.version,
                        r.version
                    );
                }
                last.insert(key, r);
            }
            from = entries.last().unwrap().offset + 1;
        }
    }
    assert_eq!(
        last.len(),
        stored.len(),
        "keys on the state log vs the store"
    );
    for (key, r) in &stored {
        let l = &last[key];
        assert_eq!(
            (l.version, &l.data),
            (r.version, &r.data),
            "state log vs store for {key:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_backend_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    run(Backend::Embedded, dir.path(), 1).await;
}

fn kafka_backend() -> Backend {
    Backend::Kafka(KafkaTarget::mock(3, DATASET, PARTITIONS))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_backend_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    run(kafka_backend(), dir.path(), 1).await;
}

/// Two processes in one consumer group, sharing the master store: partitions move between them
/// as either is killed and restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_processes_share_partitions_through_sigkills() {
    let dir = tempfile::tempdir().unwrap();
    run(kafka_backend(), dir.path(), 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_kafka_backend_survives_sigkill() {
    let Some(kafka) = KafkaTarget::real("crash") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    run(Backend::Kafka(kafka), dir.path(), 1).await;
}

/// [`kafka_processes_share_partitions_through_sigkills`] on a real cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_kafka_processes_share_partitions_through_sigkills() {
    let Some(kafka) = KafkaTarget::real("crash-shared") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    run(Backend::Kafka(kafka), dir.path(), 2).await;
}
