//! schemathesis (from PyPI) against a live server and its own `GET /openapi.json`: no answer is
//! a server error, and every answer conforms to the document (its status is documented for the
//! operation, and so are its content type, headers and body). Runs when `TENANTSYNC_TEST_PYTHON`
//! names a python with `schemathesis` installed; prints a skip notice otherwise.
//!
//! The server's long-polls are capped at a second (`--max-wait-secs 1`), so that an example that
//! asks for a long wait costs a second, not thirty. Nothing is excluded: every operation of the
//! document is exercised, with every check below. The stateful phase is not run: it chains calls
//! by the document's links, and this API's document declares none.

mod common;

use std::process::Command;

use common::{Server, create_token, http_client, wait_caught_up_as};
use serde_json::json;

/// The checks run on every answer.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance";

/// Examples per operation and phase: enough to reach every status an operation documents
/// with the data below, few enough that a run takes about a minute on two cores.
const MAX_EXAMPLES: &str = "60";

/// The tenants the data is written for; the document's examples name `acme`.
const TENANTS: [&str; 3] = ["acme", "globex", "initech"];

/// The seed of every run, so that a failure reproduces.
const SEED: &str = "14";

/// Hooks module: how a bulk write's body goes on the wire. The document describes it as an
/// array of changes sent as NDJSON, a media type schemathesis has no serializer for.
const HOOKS: &str = r#"
import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    items = value if isinstance(value, list) else [value]
    return "".join(json.dumps(item) + "\n" for item in items).encode()
"#;

#[tokio::test(flavor = "multi_thread")]
async fn every_answer_conforms_to_the_openapi_document() {
    let Some(python) = common::webhooks::python("every_answer_conforms_to_the_openapi_document")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let admin = create_token(dir.path(), "schemathesis-admin", &["admin"]);
    let server = Server::start_secure(
        dir.path(),
        &[
            "--max-wait-secs",
            "1",
            "--apply-timeout-secs",
            "30",
            "--tenant-write-rate",
            "1000000",
        ],
    )
    .await;

    // Data for the document's examples to find (dataset `inventory`, tenant `acme`, record
    // `sku-1`, subscription `everything`, schema id 1 and its subject): two datasets with
    // records, written without a schema, then a schema and Avro on one of them.
    let client = http_client();
    for (dataset, partitions) in [("inventory", 2), ("users", 1)] {
        let r = client
            .put(server.url(&format!("/v1/datasets/{dataset}")))
            .bearer_auth(&admin)
            .json(&json!({ "partitions": partitions }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "declare {dataset}");
        let lines: String = (0..20)
            .map(|i| {
                let line = json!({
                    "op": "upsert", "tenant": TENANTS[i % TENANTS.len()],
                    "id": format!("sku-{i}"),
                    "data": {"n": i, "name": format!("record {i}"), "tags": ["a", "b"]},
                });
                format!("{line}\n")
            })
            .collect();
        let r = client
            .post(server.url(&format!("/v1/datasets/{dataset}/changes")))
            .bearer_auth(&admin)
            .body(lines)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "bulk write to {dataset}");
        wait_caught_up_as(&server, dataset, Some(&admin)).await;
    }
    // A schema, and Avro on, so that the schema registry has a subject
    // (`tenantsync.inventory.state.avro-value`).
    let schema = json!({"schema": {
        "type": "object",
        "properties": {
            "n": {"type": "integer"},
            "name": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "additionalProperties": false,
    }});
    let r = client
        .put(server.url("/v1/datasets/inventory/schema"))
        .bearer_auth(&admin)
        .json(&schema)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "schema: {:?}", r.text().await);
    let r = client
        .put(server.url("/v1/datasets/inventory"))
        .bearer_auth(&admin)
        .json(&json!({"partitions": 2, "formats": ["json", "avro"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "avro on: {:?}", r.text().await);
    let r = client
        .put(server.url("/v1/subscriptions/everything"))
        .bearer_auth(&admin)
        .json(&json!({"datasets": ["inventory", "users"], "tenants": "*"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "subscription");

    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(scratch.path().join("tenantsync_hooks.py"), HOOKS).unwrap();
    let started = std::time::Instant::now();
    let output = tokio::task::spawn_blocking({
        let url = server.url("/openapi.json");
        let scratch = scratch.path().to_owned();
        move || {
            Command::new(python)
                .args(["-m", "schemathesis.cli", "run", &url])
                .args(["--header", &format!("Authorization: Bearer {admin}")])
                .args(["--checks", CHECKS])
                .args(["--phases", "examples,coverage,fuzzing"])
                .args(["--max-examples", MAX_EXAMPLES, "--seed", SEED])
                // One worker: hypothesis on CPython 3.11 fails (`AST constructor recursion
                // depth mismatch`) when workers describe strategies at the same time.
                .args(["--request-timeout", "20", "--workers", "1"])
                .args(["--no-color", "--report-dir"])
                .arg(scratch.join("report"))
                .env("SCHEMATHESIS_HOOKS", "tenantsync_hooks")
                // Its example database goes there too, not into the source tree.
                .current_dir(&scratch)
                .env("PYTHONPATH", &scratch)
                .output()
                .expect("TENANTSYNC_TEST_PYTHON runs")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!(
        "schemathesis ran for {:.0?}:\n{stdout}\n{stderr}",
        started.elapsed()
    );
    assert!(
        output.status.success(),
        "schemathesis found answers that do not conform to /openapi.json ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // The server survived the run.
    let r = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
