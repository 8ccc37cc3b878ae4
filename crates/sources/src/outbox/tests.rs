//! The relay against a real PostgreSQL (`TENANTSYNC_TEST_POSTGRES`, a superuser's URL; each
//! test makes its own database and drops it). The hand-over to the ingest is a recorder here,
//! so these tests see exactly what the relay submits and when the slot moves.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tenantsync_core::{Classify, ErrorClass};
use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::definition::Definition;
use crate::ingest::Candidate;

const DEADLINE: Duration = Duration::from_secs(30);

fn base_url() -> Option<String> {
    match std::env::var("TENANTSYNC_TEST_POSTGRES") {
        Ok(url) => Some(url),
        Err(_) => {
            eprintln!("skipped: set TENANTSYNC_TEST_POSTGRES to run the outbox tests");
            None
        }
    }
}

/// `base` with its database replaced by `db`.
fn with_db(base: &str, db: &str) -> String {
    let (head, _) = base.rsplit_once('/').expect("a URL with a database");
    format!("{head}/{db}")
}

async fn client(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// A database of its own with a Debezium-style outbox (plus `seq`, a sequence column that a
/// polling relay would use, to show why it must not).
struct Scratch {
    base: String,
    name: String,
    url: String,
    db: Client,
}

impl Scratch {
    async fn new(base: &str) -> Self {
        let name = format!("outbox_{}_{}", std::process::id(), rand_suffix());
        client(base)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let url = with_db(base, &name);
        let db = client(&url).await;
        db.batch_execute(
            "CREATE TABLE outbox (
                 seq bigserial,
                 id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                 aggregatetype text NOT NULL DEFAULT 'items',
                 aggregateid text NOT NULL,
                 type text DEFAULT 'upsert',
                 payload jsonb,
                 tenant text,
                 expected_version bigint
             );
             CREATE TABLE other (n int)",
        )
        .await
        .unwrap();
        Self {
            base: base.to_owned(),
            name,
            url,
            db,
        }
    }

    fn outbox(&self, extra: serde_json::Value) -> Outbox {
        let mut json = serde_json::json!({"kind": "postgres-outbox", "url": self.url});
        for (k, v) in extra.as_object().unwrap() {
            json[k] = v.clone();
        }
        match Definition::parse(&json).unwrap() {
            Definition::PostgresOutbox(o) => o,
            Definition::Debezium(_) => unreachable!(),
        }
    }

    async fn confirmed(&self, slot: &str) -> Lsn {
        let row = self
            .db
            .query_one(
                "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap();
        Lsn(u64::from(row.get::<_, PgLsn>(0)))
    }

    async fn drop(self, source: &SourceName, outbox: &Outbox) {
        drop_replication(outbox, source).await.unwrap();
        drop(self.db);
        client(&self.base)
            .await
            .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .await
            .unwrap();
    }
}

/// Slots are the server's, not a database's: a source name of its own per test and run.
fn source_name(label: &str) -> SourceName {
    SourceName::new(format!("{label}_{}", rand_suffix())).unwrap()
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{}_{nanos}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Inserts a row and returns its id.
async fn insert(db: &impl tokio_postgres::GenericClient, tenant: &str, record: &str) -> String {
    db.query_one(
        "INSERT INTO outbox (aggregateid, payload, tenant) VALUES ($1, jsonb_build_object('r', $1::text), $2) RETURNING id::text",
        &[&record, &tenant],
    )
    .await
    .unwrap()
    .get(0)
}

fn shard(source: &SourceName, shard: u32, shards: u32) -> Shard {
    Shard {
        source: source.clone(),
        shard,
        shards,
    }
}

type Recorded = Arc<Mutex<Vec<Read>>>;

/// Records what the relay hands over; or fails every hand-over, as a changes log that is down.
struct Recorder {
    reads: Recorded,
    fail: bool,
    /// How long a failing hand-over takes, as a changes log timing out does.
    fail_after: Duration,
}

impl Recorder {
    fn new(reads: &Recorded) -> Self {
        Self {
            reads: reads.clone(),
            fail: false,
            fail_after: Duration::ZERO,
        }
    }
}

impl Handover for Recorder {
    async fn hand_over(&self, reads: Vec<Read>) -> Result<(), SourceError> {
        self.reads.lock().unwrap().extend(reads);
        if self.fail {
            tokio::time::sleep(self.fail_after).await;
            return Err(SourceError::database(
                ErrorClass::Transient,
                "the changes log is down",
            ));
        }
        Ok(())
    }
}

fn changes(recorded: &Recorded) -> Vec<Candidate> {
    recorded
        .lock()
        .unwrap()
        .iter()
        .filter_map(|r| match r {
            Read::Change(c) => Some(c.clone()),
            Read::Rejected { .. } => None,
        })
        .collect()
}

/// Runs the relay of `shard` until `done` holds of what it submitted and its slot was then
/// advanced past all the WAL written so far (or the deadline), then stops it; returns how the
/// run ended.
async fn relay_until(
    scratch: &Scratch,
    outbox: &Outbox,
    shard: &Shard,
    figures: &Figures,
    recorded: &Recorded,
    done: impl Fn(&[Read]) -> bool,
) -> Result<(), SourceError> {
    let stop = CancellationToken::new();
    let recorder = Recorder::new(recorded);
    let run = relay(outbox, shard, figures, &stop, &recorder);
    let watch = async {
        let start = Instant::now();
        loop {
            // A copy, the lock released: `done` may look at other shards' recorders.
            let seen = recorded.lock().unwrap().clone();
            if done(&seen) {
                break;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "the relay did not deliver in time"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let written: PgLsn = scratch
            .db
            .query_one("SELECT pg_current_wal_insert_lsn()", &[])
            .await
            .unwrap()
            .get(0);
        let slot = slot_name(&shard.source, shard.shard);
        while scratch.confirmed(&slot).await.0 < u64::from(written)
            || figures.snapshot().lag_unit.is_none()
        {
            assert!(
                start.elapsed() < DEADLINE,
                "the slot was not advanced in time"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.cancel();
    };
    let (result, ()) = tokio::join!(run, watch);
    result
}

#[tokio::test]
async fn rows_come_in_commit_order_whatever_their_sequence_and_rolled_back_ones_never() {
    let Some(base) = base_url() else { return };
    let scratch = Scratch::new(&base).await;
    let source = source_name("commit_order");
    let outbox = scratch.outbox(serde_json::json!({}));
    prepare(&outbox, &source).await.unwrap();

    // `early` takes the lower sequence value but commits last: a relay polling by `seq` that
    // read after `late` committed would skip it.
    let mut early_conn = client(&scratch.url).await;
    let early = early_conn.transaction().await.unwrap();
    let early_id = insert(&early, "t1", "a").await;
    let mut late_conn = client(&scratch.url).await;
    let late = late_conn.transaction().await.unwrap();
    let late_ids = [
        insert(&late, "t1", "b").await,
        insert(&late, "t1", "b").await,
        insert(&late, "t1", "c").await,
    ];
    late.commit().await.unwrap();
    let mut rolled_back_conn = client(&scratch.url).await;
    let rolled_back = rolled_back_conn.transaction().await.unwrap();
    let rolled_back_id = insert(&rolled_back, "t1", "x").await;
    rolled_back.rollback().await.unwrap();
    early.commit().await.unwrap();
    let last_id = insert(&scratch.db, "t1", "d").await;

    let recorded = Recorded::default();
    let figures = Figures::default();
    relay_until(
        &scratch,
        &outbox,
        &shard(&source, 0, 1),
        &figures,
        &recorded,
        |r| r.len() >= 5,
    )
    .await
    .unwrap();
    let got: Vec<String> = changes(&recorded)
        .into_iter()
        .map(|c| c.change_id)
        .collect();
    let mut expected = late_ids.to_vec();
    expected.push(early_id);
    expected.push(last_id);
    assert_eq!(got, expected);
    assert!(!got.contains(&rolled_back_id));
    // Rows of one transaction share its commit LSN and are numbered in insertion order.
    let positions: Vec<String> = changes(&recorded).into_iter().map(|c| c.position).collect();
    let commit = positions[0].split_once('#').unwrap().0;
    assert_eq!(positions[..3], [0, 1, 2].map(|i| format!("{commit}#{i}")));
    let shown = figures.snapshot();
    assert_eq!(shown.lag_unit.as_deref(), Some("wal_bytes"));
    assert!(shown.position.is_some());
    scratch.drop(&source, &outbox).await;
}

#[tokio::test]
async fn rows_handed_over_but_not_confirmed_durable_are_read_again_with_the_same_ids() {
    let Some(base) = base_url() else { return };
    let scratch = Scratch::new(&base).await;
    let source = source_name("redo");
    let outbox = scratch.outbox(serde_json::json!({}));
    prepare(&outbox, &source).await.unwrap();
    let slot = slot_name(&source, 0);
    // One transaction, so that the failing run's one hand-over has all the rows (the relay
    // hands over whole transactions, in batches).
    let mut writer = client(&scratch.url).await;
    let tx = writer.transaction().await.unwrap();
    for i in 0..10 {
        insert(&tx, "t1", &format!("r{i}")).await;
    }
    tx.commit().await.unwrap();
    let before = scratch.confirmed(&slot).await;

    // The ingest fails (the changes log is down): the run fails, the slot stays.
    let stop = CancellationToken::new();
    let seen = Recorded::default();
    let failed = relay(
        &outbox,
        &shard(&source, 0, 1),
        &Figures::default(),
        &stop,
        &Recorder {
            reads: seen.clone(),
            fail: true,
            // Long enough for a position confirmed before the hand-over to reach the server
            // (status updates go at most every STATUS_INTERVAL), so that the slot would show it.
            fail_after: STATUS_INTERVAL * 5,
        },
    )
    .await;
    assert_eq!(failed.unwrap_err().class(), ErrorClass::Transient);
    assert_eq!(scratch.confirmed(&slot).await, before);
    let first = changes(&seen);
    assert_eq!(first.len(), 10);

    // The next run reads the same rows with the same change ids and positions.
    let again = Recorded::default();
    relay_until(
        &scratch,
        &outbox,
        &shard(&source, 0, 1),
        &Figures::default(),
        &again,
        |r| r.len() >= 10,
    )
    .await
    .unwrap();
    assert_eq!(changes(&again), first);
    let after = scratch.confirmed(&slot).await;
    assert!(after > before, "{after} > {before}");

    // Once handed over, they are not read again.
    let last = insert(&scratch.db, "t1", "r10").await;
    let third = Recorded::default();
    relay_until(
        &scratch,
        &outbox,
        &shard(&source, 0, 1),
        &Figures::default(),
        &third,
        |r| !r.is_empty(),
    )
    .await
    .unwrap();
    let ids: Vec<String> = changes(&third).into_iter().map(|c| c.change_id).collect();
    assert_eq!(ids, [last]);
    scratch.drop(&source, &outbox).await;
}

#[tokio::test]
async fn rows_committed_while_the_relay_runs_come_round_after_round() {
    let Some(base) = base_url() else { return };
    let scratch = Scratch::new(&base).await;
    let source = source_name("rounds");
    let outbox = scratch.outbox(serde_json::json!({}));
    prepare(&outbox, &source).await.unwrap();
    let stop = CancellationToken::new();
    let (this, figures) = (shard(&source, 0, 1), Figures::default());
    let recorded = Recorded::default();
    let recorder = Recorder::new(&recorded);
    let run = relay(&outbox, &this, &figures, &stop, &recorder);
    let write = async {
        let mut written = Vec::new();
        for i in 0..5 {
            written.push(insert(&scratch.db, "t1", &format!("r{i}")).await);
            let start = Instant::now();
            while changes(&recorded).len() < written.len() {
                assert!(start.elapsed() < DEADLINE, "row {i} was not relayed");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        stop.cancel();
        written
    };
    let (result, written) = tokio::join!(run, write);
    result.unwrap();
    let ids: Vec<String> = changes(&recorded)
        .into_iter()
        .map(|c| c.change_id)
        .collect();
    assert_eq!(ids, written);
    scratch.drop(&source, &outbox).await;
}

#[tokio::test]
async fn a_lost_connection_fails_the_run_as_transient_and_the_next_run_resumes() {
    let Some(base) = base_url() else { return };
    let scratch = Scratch::new(&base).await;
    let source = source_name("lost_connection");
    let outbox = scratch.outbox(serde_json::json!({}));
    prepare(&outbox, &source).await.unwrap();
    let first = insert(&scratch.db, "t1", "r1").await;

    let stop = CancellationToken::new();
    let recorded = Recorded::default();
    let (this, figures) = (shard(&source, 0, 1), Figures::default());
    let recorder = Recorder::new(&recorded);
    let run = relay(&outbox, &this, &figures, &stop, &recorder);
    // Once the first row is through, the relay's backend is killed, as a server restart does.
    let kill = async {
        let start = Instant::now();
        while recorded.lock().unwrap().is_empty() {
            assert!(start.elapsed() < DEADLINE);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        scratch
            .db
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'tenantsync-outbox' AND datname = current_database()",
                &[],
            )
            .await
            .unwrap();
    };
    let (ended, ()) = tokio::join!(run, kill);
    let error = ended.unwrap_err();
    assert_eq!(error.class(), ErrorClass::Transient, "{error}");

    let second = insert(&scratch.db, "t1", "r2").await;
    let resumed = Recorded::default();
    relay_until(
        &scratch,
        &outbox,
        &shard(&source, 0, 1),
        &Figures::default(),
        &resumed,
        |r| {
            r.iter()
                .any(|r| matches!(r, Read::Change(c) if c.change_id == second))
        },
    )
    .await
    .unwrap();
    // At least once: the first row only if the kill came before its advance.
    let ids: Vec<String> = changes(&resumed).into_iter().map(|c| c.change_id).collect();
    assert!(
        ids == [second.clone()] || ids == [first.clone(), second.clone()],
        "{ids:?}"
    );
    scratch.drop(&source, &outbox).await;
}

#[tokio::test]
async fn shards_split_the_tenants_and_together_relay_every_row_once_in_order() {
    let Some(base) = base_url() else { return };
    let scratch = Scratch::new(&base).await;
    let source = source_name("split");
    let outbox = scratch.outbox(serde_json::json!({"shards": 3}));
    prepare(&outbox, &source).await.unwrap();
    let mut written: Vec<(String, String)> = Vec::new();
    let mut conn = client(&scratch.url).await;
    for batch in 0..20 {
        let tx = conn.transaction().await.unwrap();
        for i in 0..15 {
            let tenant = format!("tenant-{}", (batch * 7 + i) % 30);
            let id = insert(&tx, &tenant, &format!("r{}", i % 4)).await;
            written.push((tenant, id));
        }
        tx.commit().await.unwrap();
    }
    let recorded: Vec<Recorded> = (0..3).map(|_| Recorded::default()).collect();
    let total = || {
        recorded
            .iter()
            .map(|r| r.lock().unwrap().len())
            .sum::<usize>()
    };
    let runs = (0..3).map(|s| {
        let recorded = &recorded[s as usize];
        let outbox = &outbox;
        let source = &source;
        let total = &total;
        let scratch = &scratch;
        let expected = written.len();
        async move {
            let figures = Figures::default();
            relay_until(
                scratch,
                outbox,
                &shard(source, s, 3),
                &figures,
                recorded,
                |_| total() >= expected,
            )
            .await
        }
    });
    for result in futures::future::join_all(runs).await {
        result.unwrap();
    }
    let mut all = Vec::new();
    for (s, recorded) in recorded.iter().enumerate() {
        let got = changes(recorded);
        assert!(!got.is_empty(), "shard {s} relayed nothing");
        for c in &got {
            assert_eq!(rows::shard_of(c.tenant.as_deref().unwrap(), 3), s as u32);
        }
        all.extend(got);
    }
    assert_eq!(all.len(), written.len(), "every row exactly once");
    // Per tenant, the order written (one writer: commit order and insertion order).
    for tenant in (0..30).map(|t| format!("tenant-{t}")) {
        let expected: Vec<&String> = written
            .iter()
            .filter(|(t, _)| *t == tenant)
            .map(|(_, id)| id)
            .collect();
        let got: Vec<&String> = all
            .iter()
            .filter(|c| c.tenant.as_deref() == Some(tenant.as_str()))
            .map(|c| &c.change_id)
            .collect();
        assert_eq!(got, expected, "{tenant}");
    }
    scratch.drop(&source, &outbox).await;
}

#[tokio::test]
async fn delete_after_relay_deletes_what_was_relayed_and_keeps_rejected_rows() {
    let Some(base) = base_url() else { return };
    let scratch = Scratch::new(&base).await;
    let source = source_name("deleting");
    let outbox = scratch.outbox(serde_json::json!({"delete_after_relay": true}));
    prepare(&outbox, &source).await.unwrap();
    insert(&scratch.db, "t1", "r1").await;
    insert(&scratch.db, "t1", "r2").await;
    scratch
        .db
        .execute(
            "INSERT INTO outbox (aggregateid, tenant, expected_version, payload) \
             VALUES ('r3', 't1', 1, NULL)",
            &[],
        )
        .await
        .unwrap();
    // A row the relay cannot read (no operation): rejected, and left for a person to look at.
    scratch
        .db
        .execute(
            "INSERT INTO outbox (aggregateid, tenant, type) VALUES ('r4', 't1', NULL)",
            &[],
        )
        .await
        .unwrap();
    let recorded = Recorded::default();
    let stop = CancellationToken::new();
    let (this, figures) = (shard(&source, 0, 1), Figures::default());
    let recorder = Recorder::new(&recorded);
    let run = relay(&outbox, &this, &figures, &stop, &recorder);
    let left = async || -> Vec<String> {
        let rows = scratch
            .db
            .query("SELECT aggregateid FROM outbox", &[])
            .await
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    };
    let watch = async {
        let start = Instant::now();
        while left().await.len() > 1 {
            assert!(start.elapsed() < DEADLINE, "relayed rows were not deleted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.cancel();
    };
    let (result, ()) = tokio::join!(run, watch);
    result.unwrap();
    let left = left().await;
    assert_eq!(left, ["r4"]);
    let rejected = recorded
        .lock()
        .unwrap()
        .iter()
        .filter(|r| matches!(r, Read::Rejected { reason, .. } if reason.contains("operation")))
        .count();
    assert_eq!(rejected, 1);
    scratch.drop(&source, &outbox).await;
}

#[tokio::test]
async fn an_idle_outbox_in_a_busy_database_still_advances_its_slot() {
    let Some(base) = base_url() else { return };
    let scratch = Scratch::new(&base).await;
    let source = source_name("idle");
    let outbox = scratch.outbox(serde_json::json!({}));
    prepare(&outbox, &source).await.unwrap();
    let slot = slot_name(&source, 0);
    let before = scratch.confirmed(&slot).await;
    scratch
        .db
        .batch_execute("INSERT INTO other SELECT generate_series(1, 1000)")
        .await
        .unwrap();
    let written: PgLsn = scratch
        .db
        .query_one("SELECT pg_current_wal_insert_lsn()", &[])
        .await
        .unwrap()
        .get(0);
    let stop = CancellationToken::new();
    let (this, figures) = (shard(&source, 0, 1), Figures::default());
    let nothing = Recorded::default();
    let recorder = Recorder::new(&nothing);
    let run = relay(&outbox, &this, &figures, &stop, &recorder);
    let watch = async {
        let start = Instant::now();
        while scratch.confirmed(&slot).await.0 < u64::from(written) {
            assert!(
                start.elapsed() < DEADLINE,
                "the slot stayed behind the other table's WAL"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
    };
    let (result, ()) = tokio::join!(run, watch);
    result.unwrap();
    assert!(scratch.confirmed(&slot).await > before);
    assert!(nothing.lock().unwrap().is_empty());
    scratch.drop(&source, &outbox).await;
}

#[tokio::test]
async fn prepare_says_what_is_wrong_and_drop_replication_removes_slots_and_publication() {
    let Some(base) = base_url() else { return };
    let scratch = Scratch::new(&base).await;
    let source = source_name("checked");
    let refusal = |outbox: Outbox| {
        let source = source.clone();
        async move { prepare(&outbox, &source).await.unwrap_err().0 }
    };

    let e = refusal(scratch.outbox(serde_json::json!({"table": "missing"}))).await;
    assert!(e.contains("\"public\".\"missing\" does not exist"), "{e}");
    let e = refusal(scratch.outbox(serde_json::json!({"columns": {"tenant": "org"}}))).await;
    assert!(e.contains("no column \"org\" (the tenant)"), "{e}");
    scratch
        .db
        .batch_execute("CREATE TABLE bad (LIKE outbox); ALTER TABLE bad ALTER payload TYPE text")
        .await
        .unwrap();
    let e = refusal(scratch.outbox(serde_json::json!({"table": "bad"}))).await;
    assert!(
        e.contains("\"payload\" (the payload) is of type text"),
        "{e}"
    );

    let role = format!("{}_relay", scratch.name);
    scratch
        .db
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .await
        .unwrap();
    let (scheme, rest) = scratch.url.split_once("://").unwrap();
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    let as_role = format!("{scheme}://{role}@{host}");
    let outbox_as_role = |extra: serde_json::Value| {
        let mut json = serde_json::json!({"kind": "postgres-outbox", "url": as_role});
        for (k, v) in extra.as_object().unwrap() {
            json[k] = v.clone();
        }
        match Definition::parse(&json).unwrap() {
            Definition::PostgresOutbox(o) => o,
            Definition::Debezium(_) => unreachable!(),
        }
    };
    let e = refusal(outbox_as_role(serde_json::json!({}))).await;
    assert!(e.contains("may not SELECT"), "{e}");
    scratch
        .db
        .batch_execute(&format!("GRANT SELECT ON outbox TO {role}"))
        .await
        .unwrap();
    let e = refusal(outbox_as_role(
        serde_json::json!({"delete_after_relay": true}),
    ))
    .await;
    assert!(e.contains("may not DELETE"), "{e}");
    let e = refusal(outbox_as_role(serde_json::json!({}))).await;
    assert!(e.contains("REPLICATION"), "{e}");
    scratch
        .db
        .batch_execute(&format!("ALTER ROLE {role} REPLICATION"))
        .await
        .unwrap();
    let e = refusal(outbox_as_role(serde_json::json!({}))).await;
    assert!(
        e.contains(&format!("CREATE PUBLICATION tenantsync_{source}")),
        "{e}"
    );

    let unreachable = Outbox {
        url: "postgres://root:hunter2@127.0.0.1:1/x".parse().unwrap(),
        ..scratch.outbox(serde_json::json!({}))
    };
    let e = refusal(unreachable).await;
    assert!(e.starts_with("cannot reach"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");

    // Made by a superuser: the publication and one slot per shard, then gone with the source.
    let outbox = scratch.outbox(serde_json::json!({"shards": 2}));
    prepare(&outbox, &source).await.unwrap();
    prepare(&outbox, &source).await.unwrap();
    let count = async |sql: &str| -> i64 { scratch.db.query_one(sql, &[]).await.unwrap().get(0) };
    let slots = &format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'tenantsync_{source}_%'"
    );
    let publications =
        &format!("SELECT count(*) FROM pg_publication WHERE pubname = 'tenantsync_{source}'");
    assert_eq!(count(slots).await, 2);
    assert_eq!(count(publications).await, 1);
    drop_replication(&outbox, &source).await.unwrap();
    assert_eq!(count(slots).await, 0);
    assert_eq!(count(publications).await, 0);
    scratch
        .db
        .batch_execute(&format!("DROP OWNED BY {role}"))
        .await
        .unwrap();
    let name = scratch.name.clone();
    scratch.drop(&source, &outbox).await;
    client(&base)
        .await
        .batch_execute(&format!("DROP ROLE {name}_relay"))
        .await
        .unwrap();
}
