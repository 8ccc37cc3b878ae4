//! Outbox crash test: a service commits outbox rows in transactions of random size over 30
//! tenants (some rolled back; upserts, patches, deletes, expected versions) while `tenantsync
//! serve`, relaying the outbox, is SIGKILLed again and again and the service's PostgreSQL is
//! restarted once with a crash-like stop. Then:
//!
//! 1. the master store equals a model of the committed rows, record for record (so nothing was
//!    lost and nothing applied twice: a second application would raise a version);
//! 2. no row of a rolled-back transaction was ever applied;
//! 3. every state the state log shows for a key is the model's state at that version, in
//!    rising versions: each tenant's rows were applied in commit order, and those of one
//!    transaction in insertion order.
//!
//! Runs when `TENANTSYNC_TEST_POSTGRES` names a server with `wal_level=logical`; restarting it
//! needs `dev/postgres restart` to work (root, a Debian cluster), or
//! `TENANTSYNC_TEST_POSTGRES_RESTART=0` to skip that step. `TENANTSYNC_OUTBOX_ROWS` (default
//! 20000), `TENANTSYNC_OUTBOX_KILLS` (default 10) and `TENANTSYNC_OUTBOX_SEED` set the workload.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::outbox::OutboxWriter;
use common::{Server, env_or, pg};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tenantsync_core::{ChangeId, DatasetName, TenantId};
use tenantsync_log::Log;
use tokio::sync::Mutex;

const DATASET: &str = "orders";
const PARTITIONS: u32 = 4;
const TENANTS: usize = 30;
const IDS_PER_TENANT: usize = 25;
const MAX_ROWS_PER_TRANSACTION: usize = 20;
const SOURCE: &str = "orders_outbox";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_relay_survives_sigkill_and_a_database_restart() {
    let Some(server_url) = pg::server("the outbox crash test") else {
        return;
    };
    let rows = env_or("TENANTSYNC_OUTBOX_ROWS", 20_000) as usize;
    let kills = env_or("TENANTSYNC_OUTBOX_KILLS", 10) as usize;
    let seed = env_or("TENANTSYNC_OUTBOX_SEED", rand::random());
    let restart_db = env_or("TENANTSYNC_TEST_POSTGRES_RESTART", 1) == 1;
    eprintln!(
        "outbox crash test: seed {seed} (TENANTSYNC_OUTBOX_SEED), {kills} kills, >= {rows} rows"
    );
    let db = "tenantsync_outbox_crash";
    let url = pg::fresh_database(&server_url, db).await;
    pg::connect(&url)
        .await
        .batch_execute(pg::OUTBOX_TABLE)
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--apply-timeout-secs", "90"]).await;
    common::declare(&server, DATASET, PARTITIONS).await;
    let client = common::http_client();
    let r = client
        .put(server.url(&format!("/v1/sources/{SOURCE}")))
        .json(&json!({"kind": "postgres-outbox", "url": url, "table": "outbox"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let server = Arc::new(Mutex::new(server));

    let tenants: Vec<String> = (0..TENANTS).map(|t| format!("tenant-{t:02}")).collect();
    let killing_done = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicUsize::new(0));

    let killer = {
        let (server, done, committed) = (server.clone(), killing_done.clone(), committed.clone());
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
            for kill in 0..kills {
                // Kills land at random moments once rows flow, spread over the workload.
                let due = rows * (kill + 1) / (kills + 1);
                while committed.load(Ordering::SeqCst) < due {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let mut s = server.lock().await;
                common::wait_for_progress(&s, DATASET).await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
                s.restart().await;
                if restart_db && kill == kills / 2 {
                    // A crash-like stop of the service database, while tenantsync runs.
                    let status = std::process::Command::new(pg::dev_script("postgres"))
                        .args(["restart", "--immediate"])
                        .status()
                        .expect("dev/postgres runs");
                    assert!(status.success(), "dev/postgres restart --immediate failed");
                    eprintln!("outbox crash test: the service database was restarted");
                }
            }
            done.store(true, Ordering::SeqCst);
        })
    };

    let mut writer = OutboxWriter::new(&url, tenants.clone(), IDS_PER_TENANT, seed).await;
    while !(killing_done.load(Ordering::SeqCst) && writer.committed_rows >= rows) {
        let past_minimum = writer.committed_rows >= rows;
        writer
            .transaction(
                DATASET,
                if past_minimum {
                    1
                } else {
                    MAX_ROWS_PER_TRANSACTION
                },
                0.1,
            )
            .await;
        committed.store(writer.committed_rows, Ordering::SeqCst);
        if past_minimum {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    killer.await.unwrap();

    // A last row per tenant, then wait until every one is applied: each tenant's rows are
    // relayed in commit order into its one partition, so everything before it is applied too.
    let last = common::outbox::last_rows(&tenants);
    writer.commit(DATASET, &last).await;
    let mut server = Arc::try_unwrap(server).ok().unwrap().into_inner();
    let deadline = Instant::now() + Duration::from_secs(180);
    for t in &tenants {
        loop {
            let r = client
                .get(server.url(&format!("/v1/datasets/{DATASET}/tenants/{t}/records/last")))
                .send()
                .await;
            if r.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "tenant {t}'s last row never arrived"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let status: serde_json::Value = client
        .get(server.url(&format!("/v1/sources/{SOURCE}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    eprintln!(
        "outbox crash test: {} rows committed, {} rolled back; source: {status}",
        writer.committed_rows,
        writer.rolled_back.len()
    );
    assert_eq!(
        status["rejected"], 0,
        "no committed row is invalid: {status}"
    );
    // The state log may lag the store: one more kill, then wait until the processor published
    // and committed everything.
    server.restart().await;
    common::wait_caught_up(&server, DATASET).await;
    server.kill();

    let store_url = format!("sqlite://{}", dir.path().join("store.sqlite3").display());
    // 1. The master store equals the model of the committed rows.
    let model = &writer.model;
    model.assert_stored(&common::store_records(&store_url, DATASET, &tenants).await);
    let store = tenantsync_store::open(&store_url.parse().unwrap())
        .await
        .unwrap();
    let dataset = DatasetName::new(DATASET).unwrap();

    // 2. No row of a rolled-back transaction was applied.
    for (tenant, change_id) in &writer.rolled_back {
        let outcome = store
            .outcome(
                &dataset,
                &TenantId::new(tenant.as_str()).unwrap(),
                &ChangeId::new(change_id.as_str()).unwrap(),
            )
            .await
            .unwrap();
        assert!(
            outcome.is_none(),
            "rolled-back row {change_id} was applied: {outcome:?}"
        );
    }

    // 3. The state log shows each key's states in rising versions, each the model's state at
    //    that version.
    let log = tenantsync_log_embedded::EmbeddedLog::open(dir.path(), Default::default())
        .await
        .unwrap();
    let topic = tenantsync_core::Topics::default().state(&dataset);
    let mut seen = 0;
    let mut last_version: BTreeMap<(String, String), u64> = BTreeMap::new();
    for p in 0..PARTITIONS {
        let end = log.end_offset(&topic, p).await.unwrap();
        let mut from = 0;
        while from < end {
            let entries = log
                .read(&topic, p, from, 5_000, Duration::from_secs(5))
                .await
                .unwrap();
            assert!(
                !entries.is_empty(),
                "partition {p} stops at {from} before {end}"
            );
            for e in &entries {
                let r = tenantsync_dataset::state::decode(e).unwrap();
                let key = (r.tenant.to_string(), r.id.to_string());
                let expected = model
                    .history
                    .get(&key)
                    .and_then(|h| h.get(&r.version))
                    .unwrap_or_else(|| {
                        panic!(
                            "{key:?} reached version {} which the model never had",
                            r.version
                        )
                    });
                assert_eq!(&r.data, expected, "{key:?} at version {}", r.version);
                let previous = last_version.insert(key.clone(), r.version).unwrap_or(0);
                assert!(
                    r.version >= previous,
                    "{key:?} went from version {previous} to {}",
                    r.version
                );
                seen += 1;
            }
            from = entries.last().unwrap().offset + 1;
        }
    }
    eprintln!("outbox crash test: {seen} state-log entries checked against the model");
    drop(store);
    pg::drop_database(&server_url, db).await;
}
