//! Data checked against the dataset's latest JSON Schema at every entry point, through the real
//! binary:
//!
//! - **Single writes**: a PUT whose data violates the schema is refused with 422 problem+json
//!   listing `errors` with JSON pointers, and nothing enters the log; a valid one is applied.
//! - **Bulk**: each violating line is reported on its line (422 with its `errors`), the other
//!   lines are applied.
//! - **Patches** are checked on their merged result when applied: `?wait=applied` answers 422,
//!   the record keeps its data, and the change status says `schema_violation`.
//! - **Sources** (when `TENANTSYNC_TEST_POSTGRES` is set): an outbox row whose data violates the
//!   schema is listed under the source's rejected entries with the violations, and the rows
//!   around it arrive.

mod common;

use std::time::Duration;

use common::outbox::OutboxWriter;
use common::{Server, WorkChange, pg};
use reqwest::Response;
use serde_json::{Value, json};

const DATASET: &str = "items";

/// The schema of every test: a name and a non-negative integer quantity, both required.
fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "qty": {"type": "integer", "minimum": 0}
        },
        "required": ["name", "qty"]
    })
}

async fn register_schema(server: &Server) {
    let r = reqwest::Client::new()
        .put(server.url(&format!("/v1/datasets/{DATASET}/schema")))
        .json(&json!({ "schema": schema() }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 201, "registering the schema: {body}");
}

fn record_url(server: &Server, id: &str) -> String {
    server.url(&format!("/v1/datasets/{DATASET}/tenants/acme/records/{id}"))
}

/// The record's (version, data), or `None` when it does not exist.
async fn record(server: &Server, id: &str) -> Option<(u64, Value)> {
    let r = reqwest::get(record_url(server, id)).await.unwrap();
    if r.status() == 404 {
        return None;
    }
    assert_eq!(r.status(), 200, "GET record {id}");
    let body: Value = r.json().await.unwrap();
    Some((body["version"].as_u64().unwrap(), body["data"].clone()))
}

/// Asserts a schema violation reply: 422, problem+json, and `errors` whose pointers include
/// every one of `pointers`, each with a message. Returns the body.
async fn expect_violation(r: Response, pointers: &[&str], what: &str) -> Value {
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 422, "{what}: {body}");
    assert_eq!(
        content_type.as_deref(),
        Some("application/problem+json"),
        "{what}: {body}"
    );
    check_violation(&body, pointers, what);
    body
}

/// The members of a schema violation problem, in a reply or a bulk line.
fn check_violation(body: &Value, pointers: &[&str], what: &str) {
    assert_eq!(body["status"], 422, "{what}: {body}");
    assert_eq!(
        body["type"], "urn:tenantsync:problem:schema-violation",
        "{what}: {body}"
    );
    let errors = body["errors"].as_array().unwrap_or_else(|| {
        panic!("{what}: no errors: {body}");
    });
    assert!(!errors.is_empty(), "{what}: {body}");
    for error in errors {
        assert!(error["pointer"].is_string(), "{what}: {body}");
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {body}"
        );
    }
    for pointer in pointers {
        assert!(
            errors.iter().any(|e| e["pointer"] == *pointer),
            "{what}: no error at {pointer}: {body}"
        );
    }
}

/// How many entries the dataset's changes log holds, over every partition.
async fn logged(server: &Server) -> u64 {
    common::wait_caught_up(server, DATASET).await;
    let body: Value = reqwest::get(server.url(&format!("/v1/datasets/{DATASET}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["progress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["end_offset"].as_u64().unwrap())
        .sum()
}

#[tokio::test]
async fn writes_are_checked_against_the_latest_schema() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[] as &[&str]).await;
    common::declare(&server, DATASET, 2).await;
    register_schema(&server).await;
    let client = reqwest::Client::new();

    // Single writes: refused before anything is appended.
    let r = client
        .put(record_url(&server, "a"))
        .json(&json!({"name": 5, "qty": -1}))
        .send()
        .await
        .unwrap();
    expect_violation(r, &["/name", "/qty"], "a PUT with two bad members").await;
    let r = client
        .put(record_url(&server, "a"))
        .json(&json!({"name": "bolt"}))
        .send()
        .await
        .unwrap();
    expect_violation(r, &[], "a PUT missing a required member").await;
    assert_eq!(record(&server, "a").await, None);
    assert_eq!(logged(&server).await, 0, "nothing entered the log");

    let r = client
        .put(format!("{}?wait=applied", record_url(&server, "a")))
        .json(&json!({"name": "bolt", "qty": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = client
        .put(record_url(&server, "z"))
        .json(&json!({"name": "nut", "qty": 0, "extra": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());

    // Bulk: each bad line on its line, the others applied.
    let lines = [
        json!({"op": "upsert", "tenant": "acme", "id": "b", "data": {"name": "washer", "qty": 1}}),
        json!({"op": "upsert", "tenant": "acme", "id": "c", "data": {"name": "screw", "qty": "ten"}}),
        json!({"op": "patch", "tenant": "acme", "id": "a", "data": {"qty": 4}}),
        json!({"op": "upsert", "tenant": "acme", "id": "d", "data": {"qty": 2}}),
        json!({"op": "delete", "tenant": "acme", "id": "z"}),
    ];
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let r = client
        .post(server.url(&format!("/v1/datasets/{DATASET}/changes?wait=applied")))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let reply: Value = r.json().await.unwrap();
    let results = reply["results"].as_array().unwrap();
    let statuses: Vec<(u64, u64)> = results
        .iter()
        .map(|r| (r["line"].as_u64().unwrap(), r["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        [(1, 200), (2, 422), (3, 200), (4, 422), (5, 200)],
        "{reply}"
    );
    check_violation(&results[1], &["/qty"], "bulk line 2");
    check_violation(&results[3], &[], "bulk line 4");
    assert_eq!(
        record(&server, "b").await,
        Some((1, json!({"name": "washer", "qty": 1})))
    );
    assert_eq!(record(&server, "c").await, None);
    assert_eq!(record(&server, "d").await, None);
    assert_eq!(
        record(&server, "a").await,
        Some((2, json!({"name": "bolt", "qty": 4})))
    );
    assert_eq!(record(&server, "z").await, None, "deleted");

    // A patch is checked on its merged result when applied.
    let r = client
        .patch(format!("{}?wait=applied", record_url(&server, "a")))
        .header("Idempotency-Key", "breaks-qty")
        .json(&json!({"qty": -5}))
        .send()
        .await
        .unwrap();
    expect_violation(r, &["/qty"], "a patch making qty negative").await;
    let r = client
        .patch(format!("{}?wait=applied", record_url(&server, "a")))
        .header("Idempotency-Key", "drops-name")
        .json(&json!({"name": null}))
        .send()
        .await
        .unwrap();
    expect_violation(r, &[], "a patch removing a required member").await;
    assert_eq!(
        record(&server, "a").await,
        Some((2, json!({"name": "bolt", "qty": 4}))),
        "the record keeps its data"
    );
    for key in ["breaks-qty", "drops-name"] {
        let status: Value = reqwest::get(server.url(&format!(
            "/v1/datasets/{DATASET}/tenants/acme/changes/{key}"
        )))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        assert_eq!(
            status,
            json!({"change_id": key, "id": "a", "status": "rejected", "reason": "schema_violation", "current_version": 2}),
        );
    }
    // Without waiting it is accepted, and rejected when applied.
    let r = client
        .patch(record_url(&server, "a"))
        .header("Idempotency-Key", "later")
        .json(&json!({"qty": 1.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let status_url = server.url(&format!(
        "/v1/datasets/{DATASET}/tenants/acme/changes/later"
    ));
    common::eventually(
        "the unwaited patch is rejected",
        Duration::from_secs(30),
        || async {
            let status: Value = reqwest::get(&status_url)
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            status["reason"] == "schema_violation"
        },
    )
    .await;
    // A patch that keeps the data valid applies.
    let r = client
        .patch(format!("{}?wait=applied", record_url(&server, "a")))
        .json(&json!({"qty": 7, "color": "grey"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(
        record(&server, "a").await,
        Some((3, json!({"name": "bolt", "qty": 7, "color": "grey"})))
    );
}

#[tokio::test]
async fn a_sources_violating_changes_are_rejected_and_the_valid_ones_arrive() {
    let Some(server_url) = pg::server("the source schema validation test") else {
        return;
    };
    let db = "tenantsync_schema_source";
    let url = pg::fresh_database(&server_url, db).await;
    pg::connect(&url)
        .await
        .batch_execute(pg::OUTBOX_TABLE)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[] as &[&str]).await;
    common::declare(&server, DATASET, 2).await;
    register_schema(&server).await;
    let r = reqwest::Client::new()
        .put(server.url("/v1/sources/shop"))
        .json(&json!({"kind": "postgres-outbox", "url": url}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    let row = |key: &str, op: &'static str, id: &str, data: Value| WorkChange {
        key: key.into(),
        op,
        tenant: "acme".into(),
        id: id.into(),
        data: data.as_object().cloned(),
        expected_version: None,
    };
    let mut outbox = OutboxWriter::new(&url, vec!["acme".into()], 1, 1).await;
    outbox
        .commit(
            DATASET,
            &[
                row("r1", "upsert", "a", json!({"name": "bolt", "qty": 1})),
                row("r2", "upsert", "b", json!({"name": "nut", "qty": -1})),
                row("r3", "upsert", "c", json!({"qty": 2})),
                row("r4", "patch", "a", json!({"qty": 3})),
                row("r5", "upsert", "d", json!({"name": "washer", "qty": 4})),
            ],
        )
        .await;
    common::eventually(
        "the rows after the violating ones arrive",
        Duration::from_secs(90),
        || async { record(&server, "d").await.is_some() },
    )
    .await;
    assert_eq!(
        record(&server, "a").await,
        Some((2, json!({"name": "bolt", "qty": 3})))
    );
    assert_eq!(record(&server, "b").await, None);
    assert_eq!(record(&server, "c").await, None);

    let rejected: Value = reqwest::get(server.url("/v1/sources/shop/rejected"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reasons: Vec<&str> = rejected["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 2, "{rejected}");
    assert!(
        reasons
            .iter()
            .all(|r| r.contains("violates the dataset's schema")),
        "{rejected}"
    );
    assert!(reasons[0].contains("/qty"), "{rejected}");

    let r = reqwest::Client::new()
        .delete(server.url("/v1/sources/shop"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    drop(server);
    pg::drop_database(&server_url, db).await;
}
