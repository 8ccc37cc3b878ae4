//! Instances sharing one store, seen from outside the binary.
//!
//! - **Quotas hold across instances.** Two `tenantsync serve` processes share a master store
//!   (SQLite, and PostgreSQL when `TENANTSYNC_TEST_POSTGRES` is set) and a log (librdkafka's
//!   mock cluster, in this process); one tenant writes through both as fast as it can. The
//!   changes admitted (202) are at most 120% of its rate times the measured wall time, plus its
//!   burst. Each instance alone would admit its full quota, twice that in total.
//! - **The registry.** Instances register under `--instance-name`; one stopped with SIGTERM
//!   deregisters before it exits, and the other then counts one instance.
//! - **Idempotency keys expire.** With a short `--idempotency-retention-secs`, a retry inside
//!   the window is applied once; the key's outcome then disappears from the store, and a retry
//!   is applied again, unless its precondition refuses it.
//!
//! Nothing waits by sleeping: conditions are polled with a deadline; the only timing is the
//! rate bound, computed from the measured wall time.

mod common;
#[path = "../../store/tests/common/pg_schema.rs"]
mod pg_schema;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{KafkaTarget, Server};
use pg_schema::PgSchema;
use serde_json::{Value, json};

const DATASET: &str = "items";
const TENANT: &str = "acme";
/// The tenant's quota: changes per second, and burst.
const RATE: u64 = 100;
const BURST: u64 = 100;
/// How long the tenant writes.
const RUN: Duration = Duration::from_secs(4);
/// Concurrent writers per instance.
const WRITERS: usize = 4;

/// A number from the server's `/metrics`, `None` while it does not show it.
async fn metric(server: &Server, name: &str) -> Option<f64> {
    let text = reqwest::get(server.url("/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Counts of one writer's answers.
#[derive(Default)]
struct Counts {
    admitted: AtomicU64,
    refused: AtomicU64,
}

/// Writes single-change PUTs through `base` until `until`, counting 202s and 429s; any other
/// answer fails the test.
async fn write_until(base: String, writer: usize, until: Instant, counts: Arc<Counts>) {
    let client = common::http_client();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let url = format!("{base}/v1/datasets/{DATASET}/tenants/{TENANT}/records/w{writer}-{n}");
        let r = client.put(url).json(&json!({"n": n})).send().await.unwrap();
        match r.status().as_u16() {
            202 => counts.admitted.fetch_add(1, Ordering::Relaxed),
            429 => counts.refused.fetch_add(1, Ordering::Relaxed),
            other => panic!("unexpected {other}: {}", r.text().await.unwrap_or_default()),
        };
    }
}

/// Two instances on `store`, one tenant writing through both as fast as it can.
async fn quota_holds_across_two_instances(dir: &Path, store: &str) {
    let kafka = KafkaTarget::mock(1, DATASET, 2);
    let mut args = [
        "--insecure-no-auth",
        "--tenant-write-rate",
        &RATE.to_string(),
        "--tenant-write-burst",
        &BURST.to_string(),
        "--store",
        store,
    ]
    .map(String::from)
    .to_vec();
    args.extend(kafka.server_args());
    let a = Server::start_secure(&dir.join("a"), &args).await;
    let b = Server::start_secure(&dir.join("b"), &args).await;
    common::declare(&a, DATASET, 2).await;
    for server in [&a, &b] {
        common::eventually(
            "both instances count two live instances",
            Duration::from_secs(60),
            || async { metric(server, "tenantsync_live_instances").await == Some(2.0) },
        )
        .await;
        let url = server.url(&format!("/v1/datasets/{DATASET}"));
        common::eventually(
            "both instances know the dataset",
            Duration::from_secs(60),
            || async { reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) },
        )
        .await;
    }

    let per_instance = [Arc::new(Counts::default()), Arc::new(Counts::default())];
    let start = Instant::now();
    let until = start + RUN;
    let mut writers = Vec::new();
    for (server, counts) in [&a, &b].into_iter().zip(&per_instance) {
        for w in 0..WRITERS {
            writers.push(tokio::spawn(write_until(
                server.url(""),
                writers.len() * WRITERS + w,
                until,
                counts.clone(),
            )));
        }
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();

    let admitted: Vec<u64> = per_instance
        .iter()
        .map(|c| c.admitted.load(Ordering::Relaxed))
        .collect();
    let refused: u64 = per_instance
        .iter()
        .map(|c| c.refused.load(Ordering::Relaxed))
        .sum();
    let total: u64 = admitted.iter().sum();
    let bound = 1.2 * RATE as f64 * elapsed + BURST as f64;
    eprintln!(
        "admitted {admitted:?} (total {total}), refused {refused}, in {elapsed:.2} s; \
         bound {bound:.0}"
    );
    assert!(
        refused > 0,
        "the tenant never wrote faster than its quota: the test shows nothing"
    );
    assert!(
        admitted.iter().all(|&n| n > 0),
        "both instances admit some: {admitted:?}"
    );
    assert!(
        total as f64 <= bound,
        "admitted {total} changes in {elapsed:.2} s through two instances, more than 120% of \
         the quota ({RATE}/s, burst {BURST}): at most {bound:.0}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quota_holds_across_instances_sharing_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("store.sqlite3").display());
    quota_holds_across_two_instances(dir.path(), &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quota_holds_across_instances_sharing_postgres() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    quota_holds_across_two_instances(dir.path(), &schema.url).await;
}

/// A clean shutdown deregisters at once (before the process exits), and the survivor then
/// counts one instance; each registers under its `--instance-name`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_instance_leaves_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = KafkaTarget::mock(1, DATASET, 1);
    let store_url = format!("sqlite://{}", dir.path().join("store.sqlite3").display());
    let args = |name: &str| {
        let mut args = ["--store", &store_url, "--instance-name", name]
            .map(String::from)
            .to_vec();
        args.extend(kafka.server_args());
        args
    };
    let a = Server::start(&dir.path().join("a"), &args("alpha")).await;
    let mut b = Server::start(&dir.path().join("b"), &args("beta")).await;
    let store = tenantsync_store::open(&store_url.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        store.live_instances(i64::MIN).await.unwrap(),
        ["alpha", "beta"]
    );
    common::eventually(
        "a counts two live instances",
        Duration::from_secs(60),
        || async { metric(&a, "tenantsync_live_instances").await == Some(2.0) },
    )
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(b.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exit = common::wait_exit(&mut b, Duration::from_secs(30)).await;
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}");
    assert_eq!(
        store.live_instances(i64::MIN).await.unwrap(),
        ["alpha"],
        "beta deregistered on its way out"
    );
    common::eventually(
        "a counts one live instance",
        Duration::from_secs(60),
        || async { metric(&a, "tenantsync_live_instances").await == Some(1.0) },
    )
    .await;
}

/// `PUT ?wait=applied` of `{"k": value}` with an idempotency key and extra headers; returns
/// the status and the body.
async fn put(
    server: &Server,
    id: &str,
    key: &str,
    value: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .put(server.url(&format!(
            "/v1/datasets/{DATASET}/tenants/{TENANT}/records/{id}?wait=applied"
        )))
        .header("Idempotency-Key", key)
        .json(&json!({ "k": value }));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let r = request.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

async fn get_json(server: &Server, path: &str) -> Value {
    reqwest::get(server.url(path))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn change_status(server: &Server, key: &str) -> Value {
    get_json(
        server,
        &format!("/v1/datasets/{DATASET}/tenants/{TENANT}/changes/{key}"),
    )
    .await
}

async fn record(server: &Server, id: &str) -> (u64, Value) {
    let r = get_json(
        server,
        &format!("/v1/datasets/{DATASET}/tenants/{TENANT}/records/{id}"),
    )
    .await;
    (r["version"].as_u64().unwrap(), r["data"]["k"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_keys_are_pruned_after_their_window() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--idempotency-retention-secs", "5"]).await;
    common::declare(&server, DATASET, 1).await;

    let (status, _) = put(&server, "a", "key-1", "first", &[]).await;
    assert_eq!(status, 200);
    let (status, _) = put(&server, "a", "key-2", "second", &[]).await;
    assert_eq!(status, 200);
    let (status, _) = put(&server, "b", "key-b", "only", &[("If-None-Match", "*")]).await;
    assert_eq!(status, 200);
    assert_eq!(record(&server, "a").await, (2, json!("second")));

    // Inside the window: a late retry of the first change is that change, applied once; it
    // does not undo the second.
    let (status, retry) = put(&server, "a", "key-1", "first", &[]).await;
    assert_eq!(status, 200, "{retry}");
    assert_eq!(record(&server, "a").await, (2, json!("second")));
    assert_eq!(change_status(&server, "key-1").await["version"], 1);

    // Once older than the window the outcomes disappear: the status route can no longer tell
    // an old change from one not applied yet.
    for key in ["key-1", "key-2", "key-b"] {
        common::eventually("the outcome is pruned", Duration::from_secs(60), || async {
            change_status(&server, key).await["status"] == "pending"
        })
        .await;
    }
    assert!(metric(&server, "tenantsync_idempotency_keys_pruned_total").await >= Some(3.0));

    // After it, a retry is a new change: applied again (here undoing the second change)...
    let (status, again) = put(&server, "a", "key-1", "first", &[]).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(record(&server, "a").await, (3, json!("first")));
    // ...unless its precondition refuses it.
    let (status, refused) = put(&server, "b", "key-b", "only", &[("If-None-Match", "*")]).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(record(&server, "b").await, (1, json!("only")));
}
