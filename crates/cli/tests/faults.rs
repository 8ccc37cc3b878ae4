//! Store faults seen from outside the running binary.
//!
//! - A permanent store error (a column the store writes, renamed away under the running server)
//!   fails the service `processor/{dataset}` visibly: by name and with the database's reason in
//!   `/readyz`, which answers 503, and in `/metrics`; the supervisor restarts it with backoff,
//!   not in a tight loop, and once the column is back the change waiting behind it is applied.
//! - A transient one (the database ends every connection of the server, as a PostgreSQL restart
//!   does) heals by itself: every write answered 202 is applied, and the instance never reports
//!   the failure as permanent.
//!
//! Both need PostgreSQL from `TENANTSYNC_TEST_POSTGRES` (unset: a printed notice and a pass).
//! Each test has its own schema, data dir, port and `application_name`, so they run in parallel
//! with every other test on the same server. Nothing waits by sleeping: conditions are polled
//! with a deadline.

mod common;
#[path = "../../store/tests/common/pg_schema.rs"]
mod pg_schema;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Server;
use pg_schema::PgSchema;
use serde_json::{Value, json};

const DATASET: &str = "items";
const PROCESSOR: &str = "processor/items";

/// The test's own schema, and its own connection to it. The server's connections carry the
/// schema's name as their `application_name`, so the test can find them in `pg_stat_activity`.
struct Postgres {
    schema: PgSchema,
    admin: tokio_postgres::Client,
}

impl Postgres {
    /// `None`, after printing a skip notice, when no test database is configured.
    async fn create() -> Option<Self> {
        let schema = PgSchema::create().await?;
        let admin = pg_schema::admin(&schema.url).await;
        Some(Self { schema, admin })
    }

    /// The server's `--store`: the schema as the search path, its name as the
    /// `application_name` of every connection.
    fn store_url(&self) -> String {
        format!("{}&application_name={}", self.schema.url, self.schema.name)
    }

    async fn execute(&self, sql: &str) {
        self.admin
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// Ends every connection the server holds, the way a PostgreSQL restart or an
    /// administrator does (SQLSTATE 57P01 to whoever is mid-query, a closed socket to the
    /// idle). Returns how many it ended.
    async fn terminate_server_connections(&self) -> i64 {
        self.admin
            .query_one(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) \
                 FROM pg_stat_activity WHERE application_name = $1",
                &[&self.schema.name],
            )
            .await
            .expect("pg_terminate_backend")
            .get(0)
    }
}

/// `tenantsync serve` on a PostgreSQL store in a schema of its own, with dataset `items`.
struct Fixture {
    // Fields drop in order: the server is killed before its schema is dropped, and the schema
    // before the data dir.
    server: Server,
    client: reqwest::Client,
    pg: Postgres,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start(partitions: u32) -> Option<Fixture> {
        let pg = Postgres::create().await?;
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path(), &["--store", &pg.store_url()]).await;
        common::declare(&server, DATASET, partitions).await;
        Some(Fixture {
            server,
            client: common::http_client(),
            pg,
            _dir: dir,
        })
    }

    fn record_url(&self, id: &str) -> String {
        self.server
            .url(&format!("/v1/datasets/{DATASET}/tenants/acme/records/{id}"))
    }

    /// PUT of record `id`; with `wait`, `?wait=applied`. Returns the status.
    async fn put(&self, id: &str, data: &Value, wait: bool) -> u16 {
        let mut url = self.record_url(id);
        if wait {
            url.push_str("?wait=applied");
        }
        let r = self.client.put(url).json(data).send().await.unwrap();
        r.status().as_u16()
    }

    /// The record's data once it has been applied: `Err` while it is not (404) or the store
    /// does not answer (503).
    async fn applied_data(&self, id: &str) -> Result<Value, String> {
        let r = self
            .client
            .get(self.record_url(id))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match r.status().as_u16() {
            200 => Ok(r.json::<Value>().await.unwrap()["data"].clone()),
            status @ (404 | 503) => Err(format!("GET {id}: {status}")),
            status => panic!("GET {id}: unexpected {status}: {:?}", r.text().await),
        }
    }

    async fn readyz(&self) -> (u16, Value) {
        let r = self.client.get(self.server.url("/readyz")).send().await;
        let r = r.expect("GET /readyz");
        (r.status().as_u16(), r.json().await.expect("a JSON /readyz"))
    }

    /// A per-service figure of `/metrics`, e.g. `tenantsync_service_failing`, for `service`.
    async fn service_metric(&self, name: &str, service: &str) -> Option<u64> {
        let r = self.client.get(self.server.url("/metrics")).send().await;
        let text = r.expect("GET /metrics").text().await.unwrap();
        let prefix = format!("{name}{{service=\"{service}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map(|v| v.trim().parse().expect("an integer"))
    }
}

/// Calls `check` until it returns `Ok`, at most `timeout`; panics with its last `Err`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(why) => assert!(
                Instant::now() < deadline,
                "{what}: not after {timeout:?}; last: {why}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The most failures of one service the documented restart policy lets happen within `window`,
/// counting from the moment it had failed `after` times in a row: the delay after failure `k`
/// is drawn from the upper half of `100 ms * 2^(k-1)`, capped at 30 s, so it is never shorter
/// than half of that. The first failure in the window may come at once (its delay may have run
/// before the window began); each further one needs a whole delay of its own first.
fn most_failures_within(after: u64, window: Duration) -> u64 {
    let mut failures = 1;
    let mut spent = Duration::ZERO;
    for k in after + 1.. {
        let step = Duration::from_millis(100).saturating_mul(1 << (k - 1).min(20));
        spent += step.min(Duration::from_secs(30)) / 2;
        if spent > window {
            break;
        }
        failures += 1;
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_store_error_is_reported_by_service_and_retried_with_backoff() {
    let Some(f) = Fixture::start(1).await else {
        return;
    };
    assert_eq!(f.put("first", &json!({"n": 1}), true).await, 200);

    // Every apply writes records.seq: with the column gone, each attempt fails with SQLSTATE
    // 42703 (undefined column), which no retry can heal.
    let schema = &f.pg.schema.name;
    f.pg.execute(&format!(
        "ALTER TABLE {schema}.records RENAME COLUMN seq TO seq_moved"
    ))
    .await;
    assert_eq!(f.put("second", &json!({"n": 2}), false).await, 202);

    let failing = eventually(
        "processor reported failing permanently",
        Duration::from_secs(60),
        || async {
            let (status, body) = f.readyz().await;
            let service = &body["failing_services"][PROCESSOR];
            if status == 503 && service["permanent"] == true {
                Ok(service.clone())
            } else {
                Err(format!("{status} {body}"))
            }
        },
    )
    .await;
    // Every attempt fails for the same reason, and says it: the first statement that failed,
    // not one the aborted transaction refused after it (25P02).
    let names_the_cause = |service: &Value| {
        let error = service["error"].as_str().expect("an error message");
        assert!(
            error.contains(r#"column "seq""#) && error.contains("42703"),
            "the reason names the column and its SQLSTATE: {service}"
        );
    };
    names_the_cause(&failing);
    assert!(failing["failures"].as_u64() >= Some(1), "{failing}");
    assert!(failing["restarts"].as_u64() >= Some(1), "{failing}");
    assert_eq!(
        f.service_metric("tenantsync_service_failing", PROCESSOR)
            .await,
        Some(1)
    );

    // Backoff. The supervisor keeps restarting the processor (so an operator's fix is picked
    // up without a restart of the process), but with delays that grow, not in a tight loop,
    // which would show thousands of restarts a second here. The count is read twice, and the
    // window the test measures (from before the first request was sent to after the second
    // reply arrived) contains the instants the server read both figures. Between two
    // failures the server runs the processor and sleeps a whole delay, at least half of the
    // documented step: a slow or loaded machine only adds time between failures, and a late
    // test only widens the measured window and with it the allowance, so the bound below is
    // exceeded only when the delays are shorter than the policy says.
    let restarts = || f.service_metric("tenantsync_service_restarts_total", PROCESSOR);
    let (first, since) = eventually("three restarts", Duration::from_secs(60), || async {
        let sent = Instant::now();
        match restarts().await {
            Some(n) if n >= 3 => Ok((n, sent)),
            other => Err(format!("restarts {other:?}")),
        }
    })
    .await;
    let later = eventually(
        "two seconds of restarts",
        Duration::from_secs(60),
        || async {
            let n = restarts().await.expect("restarts");
            let window = since.elapsed();
            if window >= Duration::from_secs(2) {
                Ok((n, window))
            } else {
                Err(format!("{window:?}"))
            }
        },
    )
    .await;
    let (last, window) = later;
    assert!(last >= first, "restarts went down: {first} then {last}");
    let allowed = most_failures_within(first, window);
    assert!(
        last - first <= allowed,
        "{} restarts within {window:?} after {first}: the restart policy allows at most {allowed}",
        last - first
    );
    let (status, body) = f.readyz().await;
    assert_eq!(status, 503, "{body}");
    let failing = &body["failing_services"][PROCESSOR];
    assert_eq!(failing["permanent"], true, "{body}");
    assert!(failing["failures"].as_u64() >= Some(3), "{body}");
    names_the_cause(failing);

    // The fix: the column is back. The next restart applies the change that waited.
    f.pg.execute(&format!(
        "ALTER TABLE {schema}.records RENAME COLUMN seq_moved TO seq"
    ))
    .await;
    let data = eventually(
        "second change applied after the fix",
        Duration::from_secs(120),
        || f.applied_data("second"),
    )
    .await;
    assert_eq!(data, json!({"n": 2}));
    // The supervisor calls a run healthy once it has lasted 30 s (its `healthy_after`): until
    // then the processor is still listed with its last, permanent error and /readyz answers
    // 503. Then it is ready again, with nothing failing.
    let body = eventually(
        "ready again after the fix",
        Duration::from_secs(120),
        || async {
            match f.readyz().await {
                (200, body) => Ok(body),
                (status, body) => Err(format!("{status} {body}")),
            }
        },
    )
    .await;
    assert_eq!(body["failing_services"], json!({}), "{body}");
    assert_eq!(
        f.service_metric("tenantsync_service_failing", PROCESSOR)
            .await,
        Some(0)
    );
}

const WRITERS: u64 = 4;
const WRITES_PER_WRITER: u64 = 150;
/// Times every connection of the server is ended while the writers write.
const TERMINATIONS: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_store_connections_heal_by_themselves() {
    let Some(f) = Fixture::start(2).await else {
        return;
    };
    let f = Arc::new(f);
    // Applied: the processor and the pool hold connections before the first termination.
    assert_eq!(f.put("first", &json!({"n": 0}), true).await, 200);

    // Every write the server accepted, with its data.
    let accepted: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (f, accepted) = (f.clone(), accepted.clone());
        writers.push(tokio::spawn(async move {
            for n in 0..WRITES_PER_WRITER {
                let (id, data) = (format!("w{w}-{n}"), json!({"w": w, "n": n}));
                // A write may meet a dead connection: 503 is an honest answer to that (the
                // error is transient), 500 would call it permanent.
                match f.put(&id, &data, false).await {
                    202 => accepted.lock().unwrap().push((id, data)),
                    503 => {}
                    status => panic!("PUT {id}: {status}"),
                }
            }
        }));
    }
    // Watches /readyz the whole time: a permanent failure would stay listed for at least 30 s
    // (until its service ran healthy that long), so polling cannot miss one.
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = tokio::spawn({
        let (f, watching) = (f.clone(), watching.clone());
        async move {
            let mut transient_seen = std::collections::BTreeSet::new();
            while watching.load(Ordering::Relaxed) {
                let (_, body) = f.readyz().await;
                for (name, service) in body["failing_services"].as_object().unwrap() {
                    assert_eq!(
                        service["permanent"], false,
                        "a lost connection reported as permanent: {body}"
                    );
                    transient_seen.insert(name.clone());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            transient_seen
        }
    });

    let mut terminated = 0;
    for round in 1..=TERMINATIONS {
        // Spread over the load: each round waits for more accepted writes.
        let target = round * WRITERS * WRITES_PER_WRITER / (TERMINATIONS + 1);
        eventually("writes accepted", Duration::from_secs(120), || async {
            let n = accepted.lock().unwrap().len() as u64;
            if n >= target || writers.iter().all(|w| w.is_finished()) {
                Ok(())
            } else {
                Err(format!("{n} of {target}"))
            }
        })
        .await;
        terminated += f.pg.terminate_server_connections().await;
    }
    for writer in writers {
        writer.await.unwrap();
    }
    assert!(terminated > 0, "no connection of the server was ended");

    let accepted = std::mem::take(&mut *accepted.lock().unwrap());
    assert!(!accepted.is_empty(), "no write was accepted");
    for (id, data) in &accepted {
        let got = eventually(&format!("{id} applied"), Duration::from_secs(120), || {
            f.applied_data(id)
        })
        .await;
        assert_eq!(&got, data, "record {id}");
    }
    eventually("ready", Duration::from_secs(60), || async {
        match f.readyz().await {
            (200, _) => Ok(()),
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await;
    watching.store(false, Ordering::Relaxed);
    let transient_seen = watcher.await.unwrap();
    eprintln!(
        "{} writes accepted and applied; {terminated} connections ended; \
         services seen failing transiently: {transient_seen:?}",
        accepted.len()
    );
}
