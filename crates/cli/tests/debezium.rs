//! Debezium end to end: the real Debezium PostgreSQL connector (Kafka Connect standalone, started
//! with `dev/debezium`) captures four databases into a real Kafka cluster, and one `tenantsync
//! serve` reads the topics through two `debezium` sources:
//!
//! - `clients`: three client databases, one tenant each, the tenant from the database name (one
//!   of them through the definition's `map`), read by a `topic_pattern`;
//! - `shared`: one database holding three tenants, the tenant from the `tenant_id` column (with
//!   REPLICA IDENTITY FULL, so that deletes carry it), read by its `topics`.
//!
//! Rows exist before the connectors start (the snapshot, op `r`); then inserts, updates,
//! deletes and primary-key changes (a delete and a create) are committed, some transactions
//! rolled back, while Kafka Connect is SIGKILLed right after it sent events whose offsets it has
//! not flushed, and started again, so that it sends them again. Then:
//!
//! 1. the master store equals the source tables, row for row (data = the row's columns, the
//!    jsonb column as JSON);
//! 2. every record's version, tombstones included, is the number of effective changes a model
//!    of the committed statements counts for it: an event applied twice would raise it;
//! 3. Connect did send events again (so 2 tested something), and `GET /v1/sources/{name}` shows
//!    each source running, with changes ingested, none rejected and no error, though the
//!    sources were defined before Debezium created their topics.
//!
//! Runs when `TENANTSYNC_TEST_POSTGRES` (wal_level=logical), `TENANTSYNC_TEST_KAFKA` and
//! `TENANTSYNC_TEST_DEBEZIUM` are set; the worker's files go under
//! `TENANTSYNC_TEST_DEBEZIUM_DIR` when set. The worker is stopped and the databases (and their
//! replication slots) dropped however the test ends.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::model::Model;
use common::{Server, WorkChange, pg};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Map, Value, json};

const DATASET: &str = "items";
const CLIENTS: [&str; 3] = ["tsdbz_client_a", "tsdbz_client_b", "tsdbz_client_c"];
/// The client database whose tenant the `clients` source's map names.
const MAPPED: (&str, &str) = ("tsdbz_client_c", "client-c");
const SHARED: &str = "tsdbz_shared";
const SHARED_TENANTS: [&str; 3] = ["shared-1", "shared-2", "shared-3"];
const TABLE: &str = "CREATE TABLE public.items (
    id bigint PRIMARY KEY,
    tenant_id text,
    name text,
    qty int,
    tags jsonb
)";
/// Rows per database before the connectors start.
const SNAPSHOT_ROWS: i64 = 25;
/// Transactions committed (or rolled back) before the kill, and again after the restart.
const TRANSACTIONS: usize = 150;
/// Ids of the last rows, one per tenant: once they are applied, so is everything before.
const MARKER_ID: i64 = 1_000_000;

/// The services the test needs, or `None` after a skip notice.
fn services() -> Option<(String, String)> {
    let postgres = pg::server("the Debezium test")?;
    let kafka = std::env::var(common::REAL_KAFKA_VAR).unwrap_or_default();
    if kafka.trim().is_empty() || std::env::var_os("TENANTSYNC_TEST_DEBEZIUM").is_none() {
        eprintln!(
            "skipping the Debezium test: set TENANTSYNC_TEST_KAFKA (dev/kafka up) and \
             TENANTSYNC_TEST_DEBEZIUM=1 (needs java and mvn for dev/debezium)"
        );
        return None;
    }
    Some((postgres, kafka.trim().to_owned()))
}

/// A Kafka Connect worker started with `dev/debezium`; stopped (`down`) when dropped, however
/// the test ends, its files kept for a look unless [`Worker::delete`] said otherwise.
struct Worker {
    dir: PathBuf,
    delete: bool,
    _temp: Option<tempfile::TempDir>,
}

impl Worker {
    fn new() -> Worker {
        let millis = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let name = format!("debezium-e2e-{}-{millis:x}", std::process::id());
        match std::env::var_os("TENANTSYNC_TEST_DEBEZIUM_DIR") {
            Some(base) => {
                let dir = PathBuf::from(base).join(name);
                std::fs::create_dir_all(&dir).unwrap();
                Worker {
                    dir,
                    delete: false,
                    _temp: None,
                }
            }
            None => {
                let temp = tempfile::tempdir().unwrap();
                Worker {
                    dir: temp.path().join(name),
                    delete: false,
                    _temp: Some(temp),
                }
            }
        }
    }

    fn run(&self, args: &[&str]) {
        let dir = self.dir.display().to_string();
        let status = Command::new(pg::dev_script("debezium"))
            .args(args)
            .args(["--dir", &dir])
            .status()
            .expect("dev/debezium runs");
        assert!(
            status.success(),
            "dev/debezium {args:?} failed (log: {dir}/connect.log)"
        );
    }

    /// When the worker last flushed its source offsets.
    fn flushed_at(&self) -> Option<SystemTime> {
        std::fs::metadata(self.dir.join("offsets"))
            .and_then(|m| m.modified())
            .ok()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let dir = self.dir.display().to_string();
        let mut down = Command::new(pg::dev_script("debezium"));
        down.args(["down", "--dir", &dir]);
        if self.delete {
            down.arg("--delete");
        }
        let _ = down.status();
    }
}

/// Drops the test's databases (and with them the connectors' slots) when dropped, after the
/// worker (declared later, so dropped first) stopped using them.
struct Databases {
    server: String,
}

impl Drop for Databases {
    fn drop(&mut self) {
        let server = self.server.clone();
        // Drop runs inside the test's runtime, which cannot block on itself.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                for db in CLIENTS.iter().chain([&SHARED]) {
                    pg::drop_database(&server, db).await;
                }
            })
        })
        .join();
    }
}

/// One captured database.
struct ServiceDb {
    name: &'static str,
    client: tokio_postgres::Client,
    rows: Rows,
}

/// What the workload knows of a database's rows.
#[derive(Clone)]
struct Rows {
    /// The tenant of every row (a client database), or `None`: from `tenant_id` (the shared one).
    tenant: Option<String>,
    /// The live rows: id -> tenant.
    live: BTreeMap<i64, String>,
    next_id: i64,
}

impl Rows {
    fn tenant_for_new_row(&self, rng: &mut StdRng) -> String {
        self.tenant
            .clone()
            .unwrap_or_else(|| SHARED_TENANTS[rng.random_range(0..SHARED_TENANTS.len())].to_owned())
    }

    fn random_live(&self, rng: &mut StdRng) -> Option<(i64, String)> {
        let n = self.live.len();
        (n > 0).then(|| {
            let (id, tenant) = self.live.iter().nth(rng.random_range(0..n)).unwrap();
            (*id, tenant.clone())
        })
    }
}

fn tags(rng: &mut StdRng, seq: usize) -> Option<Value> {
    (!rng.random_bool(0.1)).then(
        || json!({"seq": seq, "labels": ["x", format!("l{}", seq % 4)], "nested": {"k": seq % 3}}),
    )
}

fn upsert(tenant: &str, id: i64, row: Value) -> WorkChange {
    WorkChange {
        key: String::new(),
        op: "upsert",
        tenant: tenant.to_owned(),
        id: id.to_string(),
        data: Some(row.as_object().expect("a row").clone()),
        expected_version: None,
    }
}

fn delete(tenant: &str, id: i64) -> WorkChange {
    WorkChange {
        key: String::new(),
        op: "delete",
        tenant: tenant.to_owned(),
        id: id.to_string(),
        data: None,
        expected_version: None,
    }
}

async fn insert_row(
    tx: &tokio_postgres::Transaction<'_>,
    id: i64,
    tenant: &str,
    name: &str,
    qty: i32,
    tags: Option<Value>,
) -> Value {
    tx.query_one(
        "INSERT INTO items VALUES ($1, $2, $3, $4, $5) RETURNING to_jsonb(items)",
        &[&id, &tenant, &name, &qty, &tags],
    )
    .await
    .unwrap()
    .get(0)
}

/// Commits (or, one time in ten, rolls back) a transaction of 1 to 4 statements on `db`, and
/// applies what it committed to the model: each row event the connector will send, as the
/// change tenantsync must make of it.
async fn transaction(db: &mut ServiceDb, model: &mut Model, rng: &mut StdRng, seq: usize) {
    let before = db.rows.clone();
    let rows = &mut db.rows;
    let mut changes = Vec::new();
    let tx = db.client.transaction().await.unwrap();
    for _ in 0..rng.random_range(1..=4) {
        let picked = rows.random_live(rng);
        match (rng.random_range(0..100), picked) {
            (0..35, _) | (_, None) => {
                let (id, tenant) = (rows.next_id, rows.tenant_for_new_row(rng));
                rows.next_id += 1;
                let row = insert_row(&tx, id, &tenant, &format!("n{seq}"), 1, tags(rng, seq)).await;
                rows.live.insert(id, tenant.clone());
                changes.push(upsert(&tenant, id, row));
            }
            (35..70, Some((id, tenant))) => {
                let row: Value = tx
                    .query_one(
                        "UPDATE items SET qty = qty + 1, name = $2, tags = $3 WHERE id = $1 \
                         RETURNING to_jsonb(items)",
                        &[&id, &format!("u{seq}"), &tags(rng, seq)],
                    )
                    .await
                    .unwrap()
                    .get(0);
                changes.push(upsert(&tenant, id, row));
            }
            (70..85, Some((id, tenant))) => {
                tx.execute("DELETE FROM items WHERE id = $1", &[&id])
                    .await
                    .unwrap();
                rows.live.remove(&id);
                changes.push(delete(&tenant, id));
            }
            (_, Some((id, tenant))) => {
                // A primary-key change: Debezium sends a delete of the old key and a create.
                let new_id = rows.next_id;
                rows.next_id += 1;
                let row: Value = tx
                    .query_one(
                        "UPDATE items SET id = $2 WHERE id = $1 RETURNING to_jsonb(items)",
                        &[&id, &new_id],
                    )
                    .await
                    .unwrap()
                    .get(0);
                rows.live.remove(&id);
                rows.live.insert(new_id, tenant.clone());
                changes.push(delete(&tenant, id));
                changes.push(upsert(&tenant, new_id, row));
            }
        }
    }
    if rng.random_bool(0.1) {
        tx.rollback().await.unwrap();
        db.rows = before;
    } else {
        tx.commit().await.unwrap();
        for change in &changes {
            model.apply(change);
        }
    }
}

/// The connector file of one database.
fn connector(name: &str, prefix: &str, postgres: &tokio_postgres::Config) -> String {
    let host = match postgres.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = postgres.get_ports().first().copied().unwrap_or(5432);
    let user = postgres.get_user().unwrap_or("postgres");
    let password = postgres
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    format!(
        "name={name}
connector.class=io.debezium.connector.postgresql.PostgresConnector
database.hostname={host}
database.port={port}
database.user={user}
database.password={password}
database.dbname={name}
topic.prefix={prefix}
plugin.name=pgoutput
slot.name={name}
publication.name={name}
publication.autocreate.mode=filtered
table.include.list=public.items
snapshot.mode=initial
topic.creation.default.replication.factor=-1
topic.creation.default.partitions=1
"
    )
}

/// Sum of the topics' end offsets (0 for a topic not created yet).
fn written(probe: &BaseConsumer, topics: &[String]) -> i64 {
    topics
        .iter()
        .map(|t| {
            probe
                .fetch_watermarks(t, 0, Duration::from_secs(10))
                .map_or(0, |(_, high)| high)
        })
        .sum()
}

/// Every event in the topics, and how many of them repeat an earlier one (same topic, key,
/// operation and source position): those Connect sent again.
fn read_events(kafka: &str, topics: &[String]) -> (usize, usize) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("group.id", "tenantsync-test-debezium-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .create()
        .unwrap();
    let mut ends = HashMap::new();
    let mut list = TopicPartitionList::new();
    for t in topics {
        let (_, high) = probe
            .fetch_watermarks(t, 0, Duration::from_secs(10))
            .unwrap();
        ends.insert(t.clone(), high);
        list.add_partition_offset(t, 0, Offset::Beginning).unwrap();
    }
    consumer.assign(&list).unwrap();
    let (mut events, mut seen) = (0, HashSet::new());
    let mut next: HashMap<String, i64> = topics.iter().map(|t| (t.clone(), 0)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while next.iter().any(|(t, n)| *n < ends[t]) {
        assert!(Instant::now() < deadline, "could not read the topics back");
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.unwrap();
        next.insert(message.topic().to_owned(), message.offset() + 1);
        let Some(payload) = message.payload() else {
            continue; // a tombstone
        };
        let value: Value = serde_json::from_slice(payload).unwrap();
        let payload = value.get("payload").unwrap_or(&value);
        events += 1;
        seen.insert((
            message.topic().to_owned(),
            message.key().map(<[u8]>::to_vec),
            payload["op"].to_string(),
            payload["source"]["lsn"].to_string(),
        ));
    }
    (events, events - seen.len())
}

async fn source_status(server: &Server, name: &str) -> Value {
    let r = reqwest::get(server.url(&format!("/v1/sources/{name}")))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET /v1/sources/{name}");
    r.json().await.unwrap()
}

/// Every row of every database, as (tenant, id) -> the row's columns.
async fn source_tables(dbs: &[ServiceDb]) -> BTreeMap<(String, String), Map<String, Value>> {
    let mut rows = BTreeMap::new();
    for db in dbs {
        for row in db
            .client
            .query("SELECT id, to_jsonb(items) FROM items", &[])
            .await
            .unwrap()
        {
            let id: i64 = row.get(0);
            let data: Value = row.get(1);
            let tenant = db
                .rows
                .tenant
                .clone()
                .unwrap_or_else(|| data["tenant_id"].as_str().unwrap().to_owned());
            rows.insert((tenant, id.to_string()), data.as_object().unwrap().clone());
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn debezium_sources_mirror_the_databases_across_a_connect_crash() {
    let Some((server_url, kafka)) = services() else {
        return;
    };
    let seed = common::env_or("TENANTSYNC_DEBEZIUM_SEED", rand::random());
    eprintln!("Debezium test: seed {seed} (TENANTSYNC_DEBEZIUM_SEED)");
    let mut rng = StdRng::seed_from_u64(seed);
    let run = format!(
        "{:x}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    // Topics of this run only: a rerun on the same cluster never reads an earlier run's events.
    let prefix = |db: &str| format!("{db}_{run}");
    let topic = |db: &str| format!("{}.public.items", prefix(db));
    let topics: Vec<String> = CLIENTS.iter().chain([&SHARED]).map(|d| topic(d)).collect();

    // The databases, with the rows the snapshot will send.
    let databases = Databases {
        server: server_url.clone(),
    };
    let mut dbs = Vec::new();
    let mut model = Model::default();
    for &name in CLIENTS.iter().chain([&SHARED]) {
        let url = pg::fresh_database(&server_url, name).await;
        let client = pg::connect(&url).await;
        client.batch_execute(TABLE).await.unwrap();
        let tenant = if name == SHARED {
            client
                .batch_execute("ALTER TABLE items REPLICA IDENTITY FULL")
                .await
                .unwrap();
            None
        } else if name == MAPPED.0 {
            Some(MAPPED.1.to_owned())
        } else {
            Some(name.to_string())
        };
        let mut db = ServiceDb {
            name,
            client,
            rows: Rows {
                tenant,
                live: BTreeMap::new(),
                next_id: SNAPSHOT_ROWS + 1,
            },
        };
        let tx = db.client.transaction().await.unwrap();
        let mut snapshot = Vec::new();
        for id in 1..=SNAPSHOT_ROWS {
            let tenant = db.rows.tenant_for_new_row(&mut rng);
            let row = insert_row(&tx, id, &tenant, &format!("s{id}"), 0, tags(&mut rng, 0)).await;
            db.rows.live.insert(id, tenant.clone());
            snapshot.push(upsert(&tenant, id, row));
        }
        tx.commit().await.unwrap();
        snapshot.iter().for_each(|c| model.apply(c));
        dbs.push(db);
    }

    // tenantsync, its dataset, then the sources (before their topics exist).
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[] as &[&str]).await;
    common::declare(&server, DATASET, 4).await;
    let client_pattern = format!("tsdbz_client_[abc]_{run}\\.public\\.items");
    let sources = [
        (
            "clients",
            json!({
                "kind": "debezium",
                "kafka": kafka,
                "topic_pattern": client_pattern,
                "tables": {"public.items": {
                    "dataset": DATASET,
                    "tenant": {"from": "database", "map": {MAPPED.0: MAPPED.1}},
                }},
            }),
        ),
        (
            "shared",
            json!({
                "kind": "debezium",
                "kafka": kafka,
                "topics": [topic(SHARED)],
                "tables": {"public.items": {"dataset": DATASET, "tenant": {"column": "tenant_id"}}},
            }),
        ),
    ];
    for (name, definition) in &sources {
        let r = reqwest::Client::new()
            .put(server.url(&format!("/v1/sources/{name}")))
            .json(definition)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{name}: {}", r.text().await.unwrap());
    }

    // One worker, one connector (slot, topic prefix) per database: the snapshot first.
    let mut worker = Worker::new();
    let postgres: tokio_postgres::Config = server_url.parse().unwrap();
    let connectors = worker.dir.join("given");
    std::fs::create_dir_all(&connectors).unwrap();
    let mut files = Vec::new();
    for db in &dbs {
        let file = connectors.join(format!("{}.properties", db.name));
        std::fs::write(&file, connector(db.name, &prefix(db.name), &postgres)).unwrap();
        files.push(file.display().to_string());
    }
    let mut up = vec!["up", "--kafka", &kafka];
    up.extend(files.iter().map(String::as_str));
    let started = Instant::now();
    tokio::task::block_in_place(|| worker.run(&up));
    eprintln!(
        "Debezium test: Connect up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Changes made during the snapshot could be in it already; wait until it is in.
    let snapshot_rows = SNAPSHOT_ROWS as u64;
    common::eventually(
        "the snapshot is ingested",
        Duration::from_secs(120),
        || async {
            source_status(&server, "clients").await["ingested"].as_u64() >= Some(3 * snapshot_rows)
                && source_status(&server, "shared").await["ingested"].as_u64()
                    >= Some(snapshot_rows)
        },
    )
    .await;

    // Changes, with Connect killed between its sending events and flushing their offsets.
    let steps = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (steps, stop) = (steps.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seq = 0;
            while !(stop.load(Ordering::SeqCst) && seq >= 2 * TRANSACTIONS) {
                let db = &mut dbs[seq % 4];
                transaction(db, &mut model, &mut rng, seq).await;
                seq += 1;
                steps.store(seq, Ordering::SeqCst);
                // Paced, so that Connect streams while the test kills it.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (dbs, model, rng)
        })
    };
    while steps.load(Ordering::SeqCst) < TRANSACTIONS {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka)
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let flushed = worker.flushed_at();
        let before = written(&probe, &topics);
        while written(&probe, &topics) == before {
            assert!(Instant::now() < deadline, "Connect sends no events");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Events came after the last flush: they are sent again after the restart.
        if worker.flushed_at() == flushed {
            tokio::task::block_in_place(|| worker.run(&["kill"]));
            break;
        }
    }
    eprintln!(
        "Debezium test: Connect killed after {} transactions",
        steps.load(Ordering::SeqCst)
    );
    let started = Instant::now();
    tokio::task::block_in_place(|| worker.run(&["start"]));
    eprintln!(
        "Debezium test: Connect started again in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let resumed = steps.load(Ordering::SeqCst);
    while steps.load(Ordering::SeqCst) < resumed + TRANSACTIONS {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (mut dbs, mut model, _) = writer.await.unwrap();

    // A last row per tenant; once each is applied, so is everything before it.
    let mut markers = Vec::new();
    for db in &mut dbs {
        let tenants: Vec<String> = match &db.rows.tenant {
            Some(t) => vec![t.clone()],
            None => SHARED_TENANTS.iter().map(|t| t.to_string()).collect(),
        };
        let tx = db.client.transaction().await.unwrap();
        for (k, tenant) in tenants.iter().enumerate() {
            let id = MARKER_ID + k as i64;
            let row = insert_row(&tx, id, tenant, "last", 0, None).await;
            markers.push(upsert(tenant, id, row));
        }
        tx.commit().await.unwrap();
    }
    markers.iter().for_each(|c| model.apply(c));
    let http = common::http_client();
    for m in &markers {
        let url = server.url(&format!(
            "/v1/datasets/{DATASET}/tenants/{}/records/{}",
            m.tenant, m.id
        ));
        common::eventually(
            &format!("tenant {}'s last row is applied", m.tenant),
            Duration::from_secs(180),
            || async { http.get(&url).send().await.is_ok_and(|r| r.status() == 200) },
        )
        .await;
    }
    common::wait_caught_up(&server, DATASET).await;

    // 3. Connect sent events again; the sources ran without rejecting any.
    let (events, resent) = tokio::task::block_in_place(|| read_events(&kafka, &topics));
    eprintln!("Debezium test: {events} events in the topics, {resent} of them sent again");
    assert!(
        resent > 0,
        "Connect sent nothing again after its kill: the test shows nothing"
    );
    for (name, _) in &sources {
        let status = source_status(&server, name).await;
        eprintln!("Debezium test: {name}: {status}");
        assert_eq!(status["state"], "running", "{name}: {status}");
        assert!(status["ingested"].as_u64() > Some(0), "{name}: {status}");
        assert_eq!(status["rejected"], 0, "{name}: {status}");
        // Nothing failed: Kafka stayed up, and a listed topic Debezium has not created yet
        // is not an error.
        assert!(status["last_error"].is_null(), "{name}: {status}");
    }
    server.kill();

    let tenants: Vec<String> = dbs
        .iter()
        .filter_map(|db| db.rows.tenant.clone())
        .chain(SHARED_TENANTS.iter().map(|t| t.to_string()))
        .collect();
    let store_url = format!("sqlite://{}", dir.path().join("store.sqlite3").display());
    let stored = common::store_records(&store_url, DATASET, &tenants).await;
    let tables = source_tables(&dbs).await;

    // 1. The master store's live records equal the source tables, row for row.
    let live: BTreeMap<(String, String), Map<String, Value>> = stored
        .iter()
        .filter_map(|(k, r)| r.data.clone().map(|d| (k.clone(), d)))
        .collect();
    assert_eq!(live.len(), tables.len(), "number of live records");
    for (key, row) in &tables {
        assert_eq!(live.get(key), Some(row), "{key:?}");
        assert!(row["tags"].is_object() || row["tags"].is_null(), "{key:?}");
    }
    assert!(
        live.values().any(|d| d["tags"].is_object()),
        "the jsonb column arrives as JSON"
    );

    // 2. Every record's version is the model's count of its effective changes.
    let model_live = model.records.values().filter(|(_, d)| d.is_some()).count();
    assert_eq!(model_live, tables.len(), "the model agrees with the tables");
    assert_eq!(stored.len(), model.records.len(), "number of records");
    for (key, (version, data)) in &model.records {
        let r = stored
            .get(key)
            .unwrap_or_else(|| panic!("{key:?} is missing from the master store"));
        assert_eq!((r.version, &r.data), (*version, data), "{key:?}");
    }
    eprintln!(
        "Debezium test: {} records ({} live) match the tables and the model",
        stored.len(),
        live.len()
    );

    drop(dbs);
    worker.delete = true;
    drop(worker);
    drop(databases);
}
