//! Sources seen from outside the binary, against a real PostgreSQL service database (run when
//! `TENANTSYNC_TEST_POSTGRES` is set):
//!
//! - **Definitions**: a bad definition is refused with 400 naming the field, one that cannot
//!   work with 422 saying why (a missing table, an unreachable server), a change of shards with
//!   409; deleting a source drops its replication slots.
//! - **Bad rows**: outbox rows with an invalid tenant, an undeclared dataset or a payload that is
//!   not an object are listed under `/rejected` with their reasons, and the rows after them are
//!   applied.
//! - **Split**: two instances relay one outbox split in four shards, two each; one is SIGKILLed
//!   and the other takes its shards over; the master store equals a model of the committed rows
//!   (nothing lost, nothing applied twice).

mod common;
#[path = "../../store/tests/common/pg_schema.rs"]
mod pg_schema;

use std::collections::BTreeSet;
use std::time::Duration;

use common::outbox::OutboxWriter;
use common::{KafkaTarget, Server, pg};
use pg_schema::PgSchema;
use serde_json::{Value, json};

const DATASET: &str = "orders";

async fn get_json(url: String) -> Value {
    let r = reqwest::get(&url).await.unwrap();
    assert!(r.status().is_success(), "GET {url}: {}", r.status());
    r.json().await.unwrap()
}

async fn put_source(server: &Server, name: &str, definition: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .put(server.url(&format!("/v1/sources/{name}")))
        .json(&definition)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn slots(server_url: &str, database: &str) -> i64 {
    pg::connect(server_url)
        .await
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE database = $1",
            &[&database],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn definitions_are_checked_and_bad_rows_are_kept_with_their_reasons() {
    let Some(server_url) = pg::server("the source definition and bad-row tests") else {
        return;
    };
    let db = "tenantsync_source_rows";
    let url = pg::fresh_database(&server_url, db).await;
    let service = pg::connect(&url).await;
    service.batch_execute(pg::OUTBOX_TABLE).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[] as &[&str]).await;
    common::declare(&server, DATASET, 2).await;

    // Refused without I/O, naming the field.
    let (status, body) = put_source(
        &server,
        "rows",
        json!({"kind": "postgres-outbox", "url": url, "shards": 0}),
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("shards")),
        "{body}"
    );
    let (status, body) = put_source(
        &server,
        "Bad Name",
        json!({"kind": "postgres-outbox", "url": url}),
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("name")),
        "{body}"
    );
    // Refused after connecting, saying why.
    let (status, body) = put_source(
        &server,
        "rows",
        json!({"kind": "postgres-outbox", "url": url, "table": "missing"}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("missing"),
        "{body}"
    );
    let unreachable = pg::with_database("postgres://root:hunter2@127.0.0.1:1/x", db);
    let (status, body) = put_source(
        &server,
        "rows",
        json!({"kind": "postgres-outbox", "url": unreachable}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        !body.to_string().contains("hunter2"),
        "the password leaked: {body}"
    );

    let (status, body) = put_source(
        &server,
        "rows",
        json!({"kind": "postgres-outbox", "url": url}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(
        slots(&server_url, db).await >= 1,
        "the source's slot exists once it is defined"
    );
    let (status, body) = put_source(
        &server,
        "rows",
        json!({"kind": "postgres-outbox", "url": url, "shards": 2}),
    )
    .await;
    assert_eq!(status, 409, "{body}");

    let insert = "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, tenant) \
                  VALUES ($1, $2, $3, $4, $5::text::jsonb, $6)";
    // (id, dataset, record, payload, tenant): upserts.
    let rows = [
        ("r1", DATASET, "a", r#"{"n": 1}"#, "acme"),
        ("r2", DATASET, "b", r#"{"n": 2}"#, "Not A Tenant!"),
        ("r3", "undeclared", "c", r#"{"n": 3}"#, "acme"),
        ("r4", DATASET, "d", "[1, 2]", "acme"),
        ("r5", DATASET, "e", r#"{"n": 5}"#, "acme"),
    ];
    for (id, dataset, record, payload, tenant) in rows {
        service
            .execute(
                insert,
                &[&id, &dataset, &record, &"upsert", &payload, &tenant],
            )
            .await
            .unwrap();
    }
    let record =
        |id: &str| server.url(&format!("/v1/datasets/{DATASET}/tenants/acme/records/{id}"));
    common::eventually(
        "the row after the bad ones is applied",
        Duration::from_secs(90),
        || async {
            reqwest::get(record("e"))
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
    assert_eq!(reqwest::get(record("a")).await.unwrap().status(), 200);
    assert_eq!(reqwest::get(record("d")).await.unwrap().status(), 404);

    let rejected = get_json(server.url("/v1/sources/rows/rejected")).await;
    let reasons: Vec<&str> = rejected["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 3, "{rejected}");
    assert!(
        reasons[0].contains("tenant \"Not A Tenant!\""),
        "{rejected}"
    );
    assert!(
        reasons[1].contains("dataset \"undeclared\" is not declared"),
        "{rejected}"
    );
    assert!(reasons[2].contains("must be a JSON object"), "{rejected}");
    assert!(
        rejected["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["position"].as_str().is_some_and(|p| !p.is_empty()))
    );
    common::eventually(
        "the source reports its counts",
        Duration::from_secs(90),
        || async {
            let status = get_json(server.url("/v1/sources/rows")).await;
            status["ingested"] == 2 && status["rejected"] == 3 && status["state"] == "running"
        },
    )
    .await;
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        common::metric(
            &metrics,
            "tenantsync_source_changes_rejected{source=\"rows\"}"
        ),
        Some(3.0),
        "{metrics}"
    );

    let r = reqwest::Client::new()
        .delete(server.url("/v1/sources/rows"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    common::eventually(
        "deleting the source drops its slots",
        Duration::from_secs(90),
        || async { slots(&server_url, db).await == 0 },
    )
    .await;
    assert_eq!(
        reqwest::get(server.url("/v1/sources/rows"))
            .await
            .unwrap()
            .status(),
        404
    );
    drop(server);
    pg::drop_database(&server_url, db).await;
}

/// The instances running the source's shards, by shard, from `GET /v1/sources/{name}`.
async fn holders(server: &Server, name: &str) -> Vec<Option<String>> {
    let Ok(r) = reqwest::get(server.url(&format!("/v1/sources/{name}"))).await else {
        return Vec::new();
    };
    let status: Value = r.json().await.unwrap_or_default();
    status["shards"]
        .as_array()
        .map(|shards| {
            shards
                .iter()
                .map(|s| {
                    (s["state"] == "running").then(|| s["instance"].as_str().unwrap().to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_split_an_outbox_and_one_takes_over_from_the_other() {
    let Some(server_url) = pg::server("the outbox split test") else {
        return;
    };
    let Some(store) = PgSchema::create().await else {
        return;
    };
    let db = "tenantsync_source_split";
    let url = pg::fresh_database(&server_url, db).await;
    pg::connect(&url)
        .await
        .batch_execute(pg::OUTBOX_TABLE)
        .await
        .unwrap();
    let kafka = KafkaTarget::mock(1, DATASET, 4);
    let mut args = vec!["--store".to_owned(), store.url.clone()];
    args.extend(kafka.killable_server_args());
    let dir = tempfile::tempdir().unwrap();
    let mut a = Server::start(&dir.path().join("a"), &args).await;
    let b = Server::start(&dir.path().join("b"), &args).await;
    common::declare(&a, DATASET, 4).await;
    let (status, body) = put_source(
        &a,
        "split",
        json!({"kind": "postgres-outbox", "url": url, "shards": 4}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    common::eventually(
        "the two instances run two shards each",
        Duration::from_secs(90),
        || async {
            let holders = holders(&b, "split").await;
            let names: BTreeSet<_> = holders.iter().flatten().collect();
            holders.len() == 4 && holders.iter().all(Option::is_some) && names.len() == 2
        },
    )
    .await;

    let tenants: Vec<String> = (0..30).map(|t| format!("tenant-{t:02}")).collect();
    let mut writer = OutboxWriter::new(&url, tenants.clone(), 10, 7).await;
    while writer.committed_rows < 2_000 {
        writer.transaction(DATASET, 10, 0.1).await;
    }
    a.kill();
    while writer.committed_rows < 4_000 {
        writer.transaction(DATASET, 10, 0.1).await;
    }
    common::eventually(
        "the remaining instance runs all four shards",
        Duration::from_secs(90),
        || async {
            let holders = holders(&b, "split").await;
            let names: BTreeSet<_> = holders.iter().flatten().collect();
            holders.len() == 4 && holders.iter().all(Option::is_some) && names.len() == 1
        },
    )
    .await;
    let last = common::outbox::last_rows(&tenants);
    writer.commit(DATASET, &last).await;
    for t in &tenants {
        let url = b.url(&format!("/v1/datasets/{DATASET}/tenants/{t}/records/last"));
        common::eventually(
            "every tenant's last row is applied",
            Duration::from_secs(90),
            || async { reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) },
        )
        .await;
    }

    writer
        .model
        .assert_stored(&common::store_records(&store.url, DATASET, &tenants).await);
    drop(b);
    pg::drop_database(&server_url, db).await;
}
