//! Poison entries: an entry on a changes topic that is not a change (here written by a plain
//! rdkafka producer, as another team's service might) is recorded with its partition, offset
//! and reason, counted in `/metrics`, shown at `GET /v1/datasets/{dataset}/rejected`, and
//! skipped; the changes after it on the same partition are applied.

mod common;

use std::time::Duration;

use common::KafkaTarget;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{Value, json};
use tenantsync_core::{TenantId, partition_for_tenant};

const DATASET: &str = "poison";
const PARTITIONS: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_changes_are_recorded_and_skipped() {
    let kafka = KafkaTarget::mock(1, DATASET, PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let server = common::Server::start(dir.path(), &kafka.server_args()).await;
    common::declare(&server, DATASET, PARTITIONS).await;
    let client = common::http_client();
    let record = |id: &str| {
        server.url(&format!(
            "/v1/datasets/{DATASET}/tenants/acme/records/{id}?wait=applied"
        ))
    };

    let r = client
        .put(record("before"))
        .json(&json!({"n": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);

    // Three kinds of garbage on acme's partition: not JSON, JSON that is no change, no value.
    let partition = partition_for_tenant(&TenantId::new("acme").unwrap(), PARTITIONS) as i32;
    let topic = format!("tenantsync.{DATASET}.changes");
    let producer: BaseProducer = common::kafka_group_config(kafka.servers(), "poison-writer")
        .create()
        .unwrap();
    for value in [
        Some(&b"\xffnot json"[..]),
        Some(&br#"{"hello":"world"}"#[..]),
        None,
    ] {
        let mut message = BaseRecord::<[u8], [u8]>::to(&topic)
            .partition(partition)
            .key(&b"acme:x"[..]);
        if let Some(value) = value {
            message = message.payload(value);
        }
        producer.send(message).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    // A change after the garbage, on the same partition, is applied.
    let r = client
        .put(record("after"))
        .json(&json!({"n": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let r = client
        .get(server.url(&format!(
            "/v1/datasets/{DATASET}/tenants/acme/records/after"
        )))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["data"], json!({"n": 2}));

    let r = client
        .get(server.url(&format!("/v1/datasets/{DATASET}/rejected")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let entries = body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{body}");
    // "before" is offset 0 of the partition, the garbage 1 to 3.
    for (entry, offset) in entries.iter().zip(1..) {
        assert_eq!(entry["partition"], json!(partition), "{entry}");
        assert_eq!(entry["offset"], json!(offset), "{entry}");
        assert!(!entry["reason"].as_str().unwrap().is_empty(), "{entry}");
    }
    assert!(entries[2]["reason"].as_str().unwrap().contains("no value"));
    assert_eq!(body["dropped"], json!(0));

    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tenantsync_processor_undecodable_total 3"),
        "{metrics}"
    );

    // An undeclared dataset has no such list.
    let r = client
        .get(server.url("/v1/datasets/nope/rejected"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
