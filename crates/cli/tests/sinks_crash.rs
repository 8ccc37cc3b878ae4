//! Database sinks under crashes, and an unreachable sink database beside healthy ones.
//!
//! The crash test keeps a PostgreSQL sink (when `TENANTSYNC_TEST_POSTGRES` names a server) and a
//! SQLite sink of one dataset, all tenants, while a workload of upserts, patches, deletes and
//! expected versions over 20 tenants runs and `tenantsync serve` is SIGKILLed again and again:
//! during the workload, right after the sinks are disabled, and while they reset tenants whose
//! deletes were purged by tombstone retention under them. Then:
//!
//! 1. the master store's live records equal a model of the accepted changes;
//! 2. both sink tables equal the master store row for row (tenant, id, version, data; deleted
//!    records absent), so nothing was lost, nothing applied twice, and the reset removed the
//!    rows whose tombstones were purged;
//! 3. a trigger in the PostgreSQL sink database saw no row's version go down: no update to a
//!    lower version, no insert below the version a row had when it was deleted;
//! 4. both sinks' status shows them running without an error.
//!
//! The master store is the default SQLite one in the data dir: the kills aim at the sinks'
//! transactions, the store's own crash safety is the crash test's; and so the SQLite half of
//! the test needs nothing installed.
//!
//! `TENANTSYNC_SINK_CRASH_KILLS` (default 12, at least 10), `TENANTSYNC_SINK_CRASH_CHANGES`
//! (default 20000) and `TENANTSYNC_SINK_CRASH_SEED` set the workload.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::model::{Model, next_change};
use common::{Server, WorkChange, env_or, pg};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

const DATASET: &str = "sinkcrash";
const PARTITIONS: u32 = 4;
const TENANTS: usize = 20;
const IDS_PER_TENANT: usize = 30;
const WORKERS: usize = 4;
const LINES_PER_REQUEST: usize = 20;
const TABLE: &str = "items";
/// Tenants whose deletes are purged while the sinks are disabled.
const RESET_TENANTS: usize = 5;
const DEADLINE: Duration = Duration::from_secs(180);

/// A sink table's rows by (tenant, id): version and data.
type Rows = BTreeMap<(String, String), (u64, Value)>;

/// Version decreases and inserts below a deleted version, recorded by triggers on the sink
/// table. Installed once tenantsync created the table.
const AUDIT: &str = "
CREATE TABLE sink_audit (
    at timestamptz NOT NULL DEFAULT now(),
    what text NOT NULL,
    tenant text NOT NULL,
    id text NOT NULL,
    old_version bigint,
    new_version bigint NOT NULL
);
-- The highest version each row had when it was deleted.
CREATE TABLE sink_deleted (tenant text, id text, version bigint NOT NULL, PRIMARY KEY (tenant, id));
CREATE FUNCTION audit_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.version < OLD.version THEN
        INSERT INTO sink_audit (what, tenant, id, old_version, new_version)
        VALUES ('update', OLD.tenant, OLD.id, OLD.version, NEW.version);
    END IF;
    RETURN NEW;
END $$;
CREATE FUNCTION audit_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sink_deleted VALUES (OLD.tenant, OLD.id, OLD.version)
    ON CONFLICT (tenant, id) DO UPDATE SET version = greatest(sink_deleted.version, excluded.version);
    RETURN OLD;
END $$;
CREATE FUNCTION audit_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    deleted bigint;
BEGIN
    SELECT version INTO deleted FROM sink_deleted WHERE tenant = NEW.tenant AND id = NEW.id;
    IF deleted IS NOT NULL AND NEW.version < deleted THEN
        INSERT INTO sink_audit (what, tenant, id, old_version, new_version)
        VALUES ('insert', NEW.tenant, NEW.id, deleted, NEW.version);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_update BEFORE UPDATE ON items FOR EACH ROW EXECUTE FUNCTION audit_update();
CREATE TRIGGER audit_delete AFTER DELETE ON items FOR EACH ROW EXECUTE FUNCTION audit_delete();
CREATE TRIGGER audit_insert BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION audit_insert();
";

/// A sink's definition.
fn sink(kind: &str, url: &str) -> Value {
    json!({"kind": kind, "url": url, "dataset": DATASET, "tenants": "*", "table": TABLE})
}

/// Defines (or redefines) a sink on a server that may be restarting; returns the status
/// answered (200 or 201).
async fn put_sink(client: &reqwest::Client, server: &Server, name: &str, body: &Value) -> u16 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let request = client
            .put(server.url(&format!("/v1/sinks/{name}")))
            .json(body);
        match common::send_retryable(request, &[200, 201]).await {
            Ok(r) => return r.status().as_u16(),
            Err(e) => assert!(Instant::now() < deadline, "PUT sink {name}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /v1/sinks/{name}`.
async fn sink_status(client: &reqwest::Client, server: &Server, name: &str) -> Value {
    let r = client
        .get(server.url(&format!("/v1/sinks/{name}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET sink {name}");
    r.json().await.unwrap()
}

/// The rows of the PostgreSQL sink table.
async fn pg_rows(db: &tokio_postgres::Client) -> Rows {
    db.query(
        &format!("SELECT tenant, id, version, data FROM {TABLE}"),
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        let version: i64 = r.get(2);
        ((r.get(0), r.get(1)), (version as u64, r.get::<_, Value>(3)))
    })
    .collect()
}

/// Whether the PostgreSQL sink's table exists.
async fn pg_table_exists(db: &tokio_postgres::Client) -> bool {
    db.query_one(&format!("SELECT to_regclass('{TABLE}') IS NOT NULL"), &[])
        .await
        .unwrap()
        .get(0)
}

/// The rows of the SQLite sink table (none while it does not exist), read as a consumer would,
/// while tenantsync writes.
fn sqlite_rows(path: &Path) -> Rows {
    if !path.exists() {
        return Rows::new();
    }
    let db =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    db.busy_timeout(Duration::from_secs(30)).unwrap();
    let Ok(mut query) = db.prepare(&format!("SELECT tenant, id, version, data FROM {TABLE}"))
    else {
        return Rows::new(); // not created yet
    };
    query
        .query_map([], |r| {
            let data: String = r.get(3)?;
            Ok((
                (r.get(0)?, r.get(1)?),
                (
                    r.get::<_, i64>(2)? as u64,
                    serde_json::from_str(&data).expect("JSON data"),
                ),
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The sinks of a test: SQLite always, PostgreSQL when the server is given.
struct Sinks {
    sqlite: PathBuf,
    pg: Option<tokio_postgres::Client>,
}

impl Sinks {
    /// Each sink's rows, named.
    async fn rows(&self) -> Vec<(&'static str, Rows)> {
        let path = self.sqlite.clone();
        let mut all = vec![(
            "sqlite",
            tokio::task::spawn_blocking(move || sqlite_rows(&path))
                .await
                .unwrap(),
        )];
        if let Some(db) = &self.pg {
            all.push(("postgres", pg_rows(db).await));
        }
        all
    }

    fn names(&self) -> Vec<&'static str> {
        let mut names = vec!["sqlite"];
        if self.pg.is_some() {
            names.push("postgres");
        }
        names
    }

    /// The sum of the versions in the sink that shows the most work, as a progress mark.
    async fn progress(&self) -> u64 {
        self.rows()
            .await
            .iter()
            .map(|(_, rows)| rows.values().map(|(v, _)| v).sum::<u64>())
            .max()
            .unwrap_or(0)
    }

    /// Waits until every sink holds `rows` (at least those keys at those versions).
    async fn wait_for(&self, what: &str, rows: &Rows) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut missing = Vec::new();
            for (name, have) in self.rows().await {
                if let Some((key, _)) = rows
                    .iter()
                    .find(|(key, (v, _))| have.get(*key).is_none_or(|(hv, _)| hv < v))
                {
                    missing.push((name, key.clone()));
                }
            }
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never happened: {what}; missing, for one: {missing:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The live records of the master store, as sink rows.
async fn live_rows(store_url: &str, tenants: &[String]) -> Rows {
    common::store_records(store_url, DATASET, tenants)
        .await
        .into_iter()
        .filter_map(|(key, r)| Some((key, (r.version, Value::Object(r.data?)))))
        .collect()
}

fn server_config(path: &Path, tombstone_retention_secs: u64) {
    std::fs::write(
        path,
        format!("tombstone_retention_secs = {tombstone_retention_secs}\n"),
    )
    .unwrap();
}

/// Sends changes until every one was accepted, through kills.
async fn submit(client: &reqwest::Client, base: &str, changes: &[WorkChange]) {
    let base = base.to_owned();
    common::submit(
        client,
        DATASET,
        changes,
        || base.clone(),
        Duration::from_millis(25),
    )
    .await;
}

/// The feed's cursor at the end of a tenant, read now.
async fn end_cursor(client: &reqwest::Client, server: &Server, tenant: &str) -> String {
    let mut cursor: Option<String> = None;
    loop {
        let query = cursor
            .as_ref()
            .map_or(String::new(), |c| format!("?cursor={c}"));
        let page: Value = client
            .get(server.url(&format!(
                "/v1/datasets/{DATASET}/tenants/{tenant}/changes{query}"
            )))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        cursor = Some(page["cursor"].as_str().expect("a cursor").to_owned());
        if page["up_to_date"] == true {
            return cursor.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sinks_survive_sigkill_and_a_tombstone_reset() {
    let kills = (env_or("TENANTSYNC_SINK_CRASH_KILLS", 12) as usize).max(10);
    let min_changes = env_or("TENANTSYNC_SINK_CRASH_CHANGES", 20_000) as usize;
    let seed = env_or("TENANTSYNC_SINK_CRASH_SEED", rand::random());
    let pg_server = pg::server("the PostgreSQL sink of the sink crash test (SQLite's runs)");
    eprintln!(
        "sink crash test: seed {seed} (TENANTSYNC_SINK_CRASH_SEED), {kills} kills, \
         >= {min_changes} changes, PostgreSQL sink: {}",
        pg_server.is_some()
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tenantsync.toml");
    // A week, as by default, while records are deleted and written again: a purged tombstone
    // would let a record start over at version 1, which a sink must follow.
    server_config(&config, 7 * 24 * 3600);
    let data_dir = dir.path().join("data");
    let server = Server::start(&data_dir, &["--config", config.to_str().unwrap()]).await;
    common::declare(&server, DATASET, PARTITIONS).await;
    let client = common::http_client();

    let sqlite = dir.path().join("sink.sqlite3");
    let r = put_sink(
        &client,
        &server,
        "lite",
        &sink("sqlite", &format!("sqlite://{}", sqlite.display())),
    )
    .await;
    assert_eq!(r, 201);
    let mut sinks = Sinks { sqlite, pg: None };
    if let Some(pg_server) = &pg_server {
        let url = pg::fresh_database(pg_server, "tenantsync_sink_crash").await;
        assert_eq!(
            put_sink(&client, &server, "pg", &sink("postgres", &url)).await,
            201
        );
        let db = pg::connect(&url).await;
        common::eventually("the sink table is created", DEADLINE, || {
            pg_table_exists(&db)
        })
        .await;
        db.batch_execute(AUDIT).await.unwrap();
        sinks.pg = Some(db);
    }
    let sinks = Arc::new(sinks);
    let base = server.url("");
    let server = Arc::new(Mutex::new(server));

    let tenants: Vec<String> = (0..TENANTS).map(|t| format!("tenant-{t:02}")).collect();
    let model = Arc::new(std::sync::Mutex::new(Model::default()));
    let killing_done = Arc::new(AtomicBool::new(false));
    let submitted = Arc::new(AtomicUsize::new(0));

    // Phase 1: the workload, with kills once the sinks write, at random moments.
    let workload_kills = kills - 3;
    let killer = {
        let (server, sinks) = (server.clone(), sinks.clone());
        let (done, submitted) = (killing_done.clone(), submitted.clone());
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
            for kill in 0..workload_kills {
                let due = min_changes * (kill + 1) / (workload_kills + 1);
                while submitted.load(Ordering::SeqCst) < due {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let before = sinks.progress().await;
                common::eventually("the sinks write", DEADLINE, || async {
                    sinks.progress().await > before
                })
                .await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
                server.lock().await.restart().await;
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let my_tenants: Vec<String> = tenants.iter().skip(w).step_by(WORKERS).cloned().collect();
        let (model, done, submitted) = (model.clone(), killing_done.clone(), submitted.clone());
        let base = base.clone();
        workers.push(tokio::spawn(async move {
            let client = common::http_client();
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(w as u64));
            let mut seq = 0;
            while !(done.load(Ordering::SeqCst) && submitted.load(Ordering::SeqCst) >= min_changes)
            {
                let tenant = &my_tenants[rng.random_range(0..my_tenants.len())];
                let n = if rng.random_bool(0.2) {
                    1
                } else {
                    LINES_PER_REQUEST
                };
                let batch: Vec<WorkChange> = {
                    let mut model = model.lock().unwrap();
                    (0..n)
                        .map(|_| {
                            seq += 1;
                            let c = next_change(
                                &mut rng,
                                &model,
                                tenant,
                                IDS_PER_TENANT,
                                seq * WORKERS + w,
                            );
                            model.apply(&c);
                            c
                        })
                        .collect()
                };
                submit(&client, &base, &batch).await;
                submitted.fetch_add(batch.len(), Ordering::SeqCst);
            }
        }));
    }
    killer.await.unwrap();
    for w in workers {
        w.await.unwrap();
    }
    let mut server = Arc::try_unwrap(server).ok().unwrap().into_inner();

    // Phase 2: the sinks are disabled, a kill makes sure no run of them is left, and with a
    // tombstone retention of 1 s some tenants' deletes are purged before the sinks see them.
    let defined: Vec<(&str, Value)> = sinks
        .names()
        .into_iter()
        .map(|name| {
            let body = if name == "sqlite" {
                sink("sqlite", &format!("sqlite://{}", sinks.sqlite.display()))
            } else {
                sink(
                    "postgres",
                    &pg::with_database(pg_server.as_ref().unwrap(), "tenantsync_sink_crash"),
                )
            };
            (if name == "sqlite" { "lite" } else { "pg" }, body)
        })
        .collect();
    for (name, body) in &defined {
        let mut body = body.clone();
        body["enabled"] = json!(false);
        assert_eq!(put_sink(&client, &server, name, &body).await, 200);
    }
    server_config(&config, 1);
    server.restart().await;
    let base = server.url("");
    let mut deletes = Vec::new();
    let mut cursors = Vec::new();
    {
        let mut model = model.lock().unwrap();
        for tenant in &tenants[..RESET_TENANTS] {
            let live: Vec<String> = model
                .records
                .iter()
                .filter(|((t, _), (_, data))| t == tenant && data.is_some())
                .map(|((_, id), _)| id.clone())
                .collect();
            for id in live.iter().step_by(2) {
                let c = WorkChange {
                    key: format!("reset-{tenant}-{id}"),
                    op: "delete",
                    tenant: tenant.clone(),
                    id: id.clone(),
                    data: None,
                    expected_version: None,
                };
                model.apply(&c);
                deletes.push(c);
            }
        }
    }
    for tenant in &tenants[..RESET_TENANTS] {
        cursors.push((tenant, end_cursor(&client, &server, tenant).await));
    }
    submit(&client, &base, &deletes).await;
    eprintln!(
        "sink crash test: {} records deleted over {RESET_TENANTS} tenants while the sinks are \
         disabled",
        deletes.len()
    );
    // Purged: a cursor from before the deletes is behind the tenant's tombstone horizon.
    for (tenant, cursor) in &cursors {
        let url = server.url(&format!(
            "/v1/datasets/{DATASET}/tenants/{tenant}/changes?cursor={cursor}"
        ));
        common::eventually(
            &format!("{tenant}'s deletes are purged"),
            DEADLINE,
            || async { client.get(&url).send().await.unwrap().status() == 410 },
        )
        .await;
    }
    for (name, body) in &defined {
        assert_eq!(put_sink(&client, &server, name, body).await, 200);
    }
    // Kills while the sinks reset the tenants.
    let mut rng = StdRng::seed_from_u64(seed ^ 0xdead);
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..1_500))).await;
        server.restart().await;
    }

    // A last record per tenant: once a sink holds it, it holds everything the tenant had before
    // (a tenant's changes are delivered in order).
    let mut last = Rows::new();
    for t in &tenants {
        let r = client
            .put(server.url(&format!(
                "/v1/datasets/{DATASET}/tenants/{t}/records/last?wait=applied"
            )))
            .timeout(Duration::from_secs(120))
            .json(&json!({"done": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let outcome: Value = r.json().await.unwrap();
        // A new record's version continues above the tenant's purged tombstones, which the
        // model does not know of: it takes the version the server gave.
        let version = outcome["version"].as_u64().expect("a version");
        model.lock().unwrap().records.insert(
            (t.clone(), "last".into()),
            (version, json!({"done": true}).as_object().cloned()),
        );
        last.insert((t.clone(), "last".into()), (version, json!({"done": true})));
    }
    sinks.wait_for("every tenant's last record", &last).await;
    for (name, _) in &defined {
        // The status shown is the one its holder stored at its last renewal.
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            let status = sink_status(&client, &server, name).await;
            if status["state"] == "running" {
                break status;
            }
            assert!(Instant::now() < deadline, "{name} is not running: {status}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        eprintln!("sink crash test: sink {name}: {status}");
        assert_eq!(status["last_error"], Value::Null, "{name}: {status}");
        assert_eq!(status["failure_streak"], 0, "{name}: {status}");
    }
    server.kill();
    eprintln!(
        "sink crash test: {} changes submitted through {kills} kills",
        submitted.load(Ordering::SeqCst) + deletes.len()
    );

    // 1. The store's live records are the model's.
    let store_url = format!("sqlite://{}", data_dir.join("store.sqlite3").display());
    let live = live_rows(&store_url, &tenants).await;
    let model_live: Rows = std::mem::take(&mut *model.lock().unwrap())
        .records
        .into_iter()
        .filter_map(|(key, (v, data))| Some((key, (v, Value::Object(data?)))))
        .collect();
    assert_eq!(live, model_live, "the store's live records vs the model");

    // 2. Each sink table is the store, row for row.
    for (name, rows) in sinks.rows().await {
        let extra: Vec<_> = rows.keys().filter(|k| !live.contains_key(*k)).collect();
        let wrong: Vec<_> = live
            .iter()
            .filter(|(k, v)| rows.get(*k) != Some(v))
            .map(|(k, v)| (k, v, rows.get(k)))
            .collect();
        assert!(
            extra.is_empty() && wrong.is_empty(),
            "the {name} sink differs from the store: rows not in the store {extra:?}, \
             rows missing or different (store, sink) {wrong:?}"
        );
        eprintln!(
            "sink crash test: the {name} sink holds the store's {} rows",
            rows.len()
        );
    }

    // 3. No version went down in the PostgreSQL sink.
    if let Some(db) = &sinks.pg {
        let audit = db
            .query(
                "SELECT what, tenant, id, old_version, new_version FROM sink_audit",
                &[],
            )
            .await
            .unwrap();
        let audit: Vec<(String, String, String, Option<i64>, i64)> = audit
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect();
        assert!(
            audit.is_empty(),
            "versions went down in the sink: {audit:?}"
        );
        let deleted: i64 = db
            .query_one("SELECT count(*) FROM sink_deleted", &[])
            .await
            .unwrap()
            .get(0);
        eprintln!("sink crash test: the audit saw {deleted} rows deleted, no version decrease");
    }
}

/// A TCP proxy to a PostgreSQL server that can be cut: then it closes every connection and
/// each new one at once, as a database that went away would.
struct Proxy {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    connections: Arc<std::sync::Mutex<JoinSet<()>>>,
    _accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let accept = {
            let (open, connections) = (open.clone(), connections.clone());
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        continue; // dropped: closed at once
                    }
                    let upstream = upstream.clone();
                    connections.lock().unwrap().spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                }
            })
        };
        Proxy {
            addr,
            open,
            connections,
            _accept: accept,
        }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.connections.lock().unwrap().abort_all();
    }

    fn heal(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// The host and port of a `postgres://` URL.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").expect("a URL").1;
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    }
}

/// `url` with its host and port replaced by `addr`.
fn through(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let user = authority
        .rsplit_once('@')
        .map_or(String::new(), |(user, _)| format!("{user}@"));
    format!("{scheme}://{user}{addr}{path}")
}

/// A sink whose database becomes unreachable holds back only itself: the other sinks of the
/// dataset keep converging, its status says why, and it catches up once its database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_sink_database_holds_back_only_its_sink() {
    let Some(pg_server) = pg::server("the unreachable sink test") else {
        return;
    };
    let healthy_url = pg::fresh_database(&pg_server, "tenantsync_sink_healthy").await;
    let broken_direct = pg::fresh_database(&pg_server, "tenantsync_sink_broken").await;
    let proxy = Proxy::start(host_port(&broken_direct)).await;
    let broken_url = through(&broken_direct, proxy.addr);

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[] as &[&str]).await;
    common::declare(&server, DATASET, PARTITIONS).await;
    let client = common::http_client();
    let sqlite = dir.path().join("sink.sqlite3");
    for (name, body) in [
        ("healthy-pg", sink("postgres", &healthy_url)),
        (
            "healthy-lite",
            sink("sqlite", &format!("sqlite://{}", sqlite.display())),
        ),
        ("broken", sink("postgres", &broken_url)),
    ] {
        assert_eq!(put_sink(&client, &server, name, &body).await, 201, "{name}");
    }
    let healthy = Sinks {
        sqlite,
        pg: Some(pg::connect(&healthy_url).await),
    };
    let broken = pg::connect(&broken_direct).await;

    let write = |round: u64| {
        let changes: Vec<WorkChange> = (0..TENANTS * 10)
            .map(|i| WorkChange {
                key: format!("round{round}-{i}"),
                op: "upsert",
                tenant: format!("tenant-{:02}", i % TENANTS),
                id: format!("item-{}", i / TENANTS),
                data: json!({"round": round}).as_object().cloned(),
                expected_version: None,
            })
            .collect();
        let expected: Rows = changes
            .iter()
            .map(|c| {
                (
                    (c.tenant.clone(), c.id.clone()),
                    (round, json!({"round": round})),
                )
            })
            .collect();
        (changes, expected)
    };
    let (changes, first) = write(1);
    submit(&client, &server.url(""), &changes).await;
    healthy
        .wait_for("the first round in the healthy sinks", &first)
        .await;
    common::eventually("the first round in the broken sink", DEADLINE, || async {
        pg_table_exists(&broken).await && pg_rows(&broken).await == first
    })
    .await;

    proxy.cut();
    let (changes, second) = write(2);
    submit(&client, &server.url(""), &changes).await;
    healthy
        .wait_for(
            "the second round in the healthy sinks, the broken one cut off",
            &second,
        )
        .await;
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        let status = sink_status(&client, &server, "broken").await;
        if status["last_error"].is_string() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the broken sink never says why: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("the broken sink: {status}");
    assert_ne!(status["state"], "running", "{status}");
    assert_eq!(
        pg_rows(&broken).await,
        first,
        "nothing reached the cut-off database"
    );
    for name in ["healthy-pg", "healthy-lite"] {
        let status = sink_status(&client, &server, name).await;
        assert_eq!(status["last_error"], Value::Null, "{name}: {status}");
    }

    proxy.heal();
    common::eventually(
        "the broken sink catches up once its database is back",
        DEADLINE,
        || async { pg_rows(&broken).await == second },
    )
    .await;
}
