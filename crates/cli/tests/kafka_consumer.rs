//! A team outside tenantsync consumes a dataset's state topic with a plain Kafka client in its
//! own consumer group, as the README describes, and rebuilds an identical copy of the master
//! store: live records by key, tombstones removing them. Likewise its batches topic, batch by
//! batch. Both run on librdkafka's in-process mock cluster and, when `TENANTSYNC_TEST_KAFKA`
//! names one, on a real cluster.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::KafkaTarget;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Headers;
use serde_json::{Value, json};
use tenantsync_core::{EntityId, TenantId, partition_for_tenant};

const DATASET: &str = "orders";
const PARTITIONS: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_consumer_group_rebuilds_the_master_store() {
    rebuild_the_master_store(KafkaTarget::mock(1, DATASET, PARTITIONS)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_consumer_group_rebuilds_the_master_store_from_a_real_cluster() {
    if let Some(kafka) = KafkaTarget::real("kafka-consumer-state") {
        rebuild_the_master_store(kafka).await;
    }
}

async fn rebuild_the_master_store(kafka: KafkaTarget) {
    let state_topic = &kafka.state_topic(DATASET);
    let dir = tempfile::tempdir().unwrap();
    let server = common::Server::start(dir.path(), &kafka.server_args()).await;
    common::declare(&server, DATASET, PARTITIONS).await;

    // Creates, updates, patches and deletes over several tenants, some keys deleted and written
    // again, some deleted for good.
    let mut lines = String::new();
    for round in 0..5 {
        for t in 0..6 {
            for i in 0..20 {
                let (tenant, id) = (format!("tenant-{t}"), format!("order-{i}"));
                let line = match (round + i) % 5 {
                    0 | 1 => json!({"op": "upsert", "tenant": tenant, "id": id,
                                   "data": {"round": round, "total": i * 10}}),
                    2 => json!({"op": "patch", "tenant": tenant, "id": id,
                                "data": {"note": format!("r{round}"), "total": null}}),
                    _ => json!({"op": "delete", "tenant": tenant, "id": id}),
                };
                lines.push_str(&format!("{line}\n"));
            }
        }
    }
    let client = reqwest::Client::new();
    let reply: Value = client
        .post(server.url(&format!("/v1/datasets/{DATASET}/changes")))
        .body(lines)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        reply["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == 202),
        "{reply}"
    );
    common::wait_caught_up(&server, DATASET).await;

    // What the master store holds, read through the API.
    let mut expected: BTreeMap<String, Value> = BTreeMap::new();
    for t in 0..6 {
        for i in 0..20 {
            let (tenant, id) = (format!("tenant-{t}"), format!("order-{i}"));
            let r = client
                .get(server.url(&format!(
                    "/v1/datasets/{DATASET}/tenants/{tenant}/records/{id}"
                )))
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                let body: Value = r.json().await.unwrap();
                expected.insert(format!("{tenant}:{id}"), body);
            } else {
                assert_eq!(r.status(), 404);
            }
        }
    }
    assert!(
        !expected.is_empty() && expected.len() < 120,
        "some records live, some deleted"
    );

    // The outside team's consumer: any Kafka client, its own group, from the beginning.
    let consumer: BaseConsumer =
        common::kafka_group_config(kafka.servers(), &kafka.group("analytics-team"))
            .create()
            .unwrap();
    consumer.subscribe(&[state_topic]).unwrap();
    let ends = common::topic_ends(kafka.servers(), state_topic, PARTITIONS);
    let mut next = vec![0i64; PARTITIONS as usize];
    let mut copy: BTreeMap<String, Value> = BTreeMap::new();
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while next.iter().zip(&ends).any(|(n, e)| n < e) {
        assert!(Instant::now() < deadline, "consumed {next:?} of {ends:?}");
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            common::follow_position(&consumer, &mut next);
            continue;
        };
        let message = message.unwrap();
        let key = std::str::from_utf8(message.key().unwrap())
            .unwrap()
            .to_owned();
        let (tenant, id) = key.split_once(':').unwrap();
        // Partitioned by tenant, exactly as Kafka's default partitioner would place the tenant.
        let tenant_id = TenantId::new(tenant).unwrap();
        assert_eq!(
            message.partition() as u32,
            partition_for_tenant(&tenant_id, PARTITIONS)
        );
        EntityId::new(id).unwrap();
        let headers = message.headers().unwrap();
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| std::str::from_utf8(v).unwrap().to_owned())
                .unwrap_or_else(|| panic!("{key} lacks the {name} header"))
        };
        assert_eq!(header("tenant"), tenant);
        let version: u64 = header("version").parse().unwrap();
        let previous = versions.insert(key.clone(), version).unwrap_or(0);
        assert!(
            version >= previous,
            "{key} went from {previous} to {version}"
        );
        match message.payload() {
            Some(value) => {
                let record: Value = serde_json::from_slice(value).unwrap();
                assert_eq!(record["version"], version);
                assert_eq!(header("change-id"), record["change_id"]);
                copy.insert(key, record);
            }
            None => {
                header("change-id");
                copy.remove(&key);
            }
        }
        next[message.partition() as usize] = message.offset() + 1;
        common::follow_position(&consumer, &mut next);
    }

    assert_eq!(copy.len(), expected.len(), "live records in the copy");
    for (key, record) in &expected {
        let got = &copy[key];
        for field in ["tenant", "id", "version", "data", "updated_at"] {
            assert_eq!(got[field], record[field], "{key}: {field}");
        }
    }
}

/// A team outside tenantsync reads a dataset's batches topic with a plain Kafka client in its
/// own consumer group: every batch is one tenant's, its headers say what its value says, and
/// the batches carry every record's last state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_reach_a_kafka_consumer_group() {
    batches_reach_a_consumer_group(KafkaTarget::mock(1, DATASET, PARTITIONS)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_reach_a_kafka_consumer_group_on_a_real_cluster() {
    if let Some(kafka) = KafkaTarget::real("kafka-consumer-batches") {
        batches_reach_a_consumer_group(kafka).await;
    }
}

async fn batches_reach_a_consumer_group(kafka: KafkaTarget) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = kafka.server_args();
    args.extend(["--batch-max-records", "25", "--batch-max-wait-ms", "100"].map(String::from));
    let server = common::Server::start(dir.path(), &args).await;
    common::declare(&server, DATASET, PARTITIONS).await;

    // Five tenants, one much busier; every key written twice, some deleted.
    let mut lines = String::new();
    for round in 0..2 {
        for t in 0..5 {
            let tenant = format!("tenant-{t}");
            for i in 0..if t == 0 { 80 } else { 15 } {
                let id = format!("{tenant}.order-{i}");
                let line = if round == 1 && i % 7 == 3 {
                    json!({"op": "delete", "tenant": tenant, "id": id})
                } else {
                    json!({"op": "upsert", "tenant": tenant, "id": id,
                           "data": {"tenant": tenant, "round": round}})
                };
                lines.push_str(&format!("{line}\n"));
            }
        }
    }
    let client = reqwest::Client::new();
    let reply: Value = client
        .post(server.url(&format!("/v1/datasets/{DATASET}/changes?wait=applied")))
        .body(lines)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // (tenant, id) -> the last version written and whether it is deleted.
    let mut expected: BTreeMap<(String, String), (u64, bool)> = BTreeMap::new();
    for result in reply["results"].as_array().unwrap() {
        assert_eq!(result["status"], 200, "{result}");
        let record = &result["record"];
        expected.insert(
            (
                record["tenant"].as_str().unwrap().to_owned(),
                record["id"].as_str().unwrap().to_owned(),
            ),
            (
                record["version"].as_u64().unwrap(),
                record["data"].is_null(),
            ),
        );
    }
    assert_eq!(expected.len(), 140);

    let topic = kafka.batches_topic(DATASET);
    let consumer: StreamConsumer =
        common::kafka_group_config(kafka.servers(), &kafka.group("batch-team"))
            .create()
            .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut carried: BTreeMap<(String, String, u64), bool> = BTreeMap::new();
    let mut batches = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let covered = |carried: &BTreeMap<(String, String, u64), bool>| {
        expected.iter().all(|((tenant, id), (version, deleted))| {
            carried.get(&(tenant.clone(), id.clone(), *version)) == Some(deleted)
        })
    };
    while !covered(&carried) {
        assert!(
            Instant::now() < deadline,
            "after 60 s, {} batches carry {} of {} records",
            batches.len(),
            carried.len(),
            expected.len()
        );
        let message = match tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await
        {
            Ok(message) => message.unwrap(),
            Err(_) => continue,
        };
        let batch: Value = serde_json::from_slice(message.payload().expect("a value")).unwrap();
        let headers = message.headers().expect("headers");
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| std::str::from_utf8(v).unwrap().to_owned())
                .unwrap_or_else(|| panic!("batch {batch} lacks the {name} header"))
        };
        let id = header("batch-id");
        assert_eq!(batch["id"], id.as_str());
        assert_eq!(message.key(), Some(id.as_bytes()), "keyed by batch id");
        let tenant = header("tenant");
        assert_eq!(batch["tenant"], tenant.as_str());
        assert_eq!(batch["dataset"], DATASET);
        let records = batch["records"].as_array().unwrap();
        assert!(!records.is_empty() && records.len() <= 25, "{batch}");
        assert_eq!(header("count"), records.len().to_string());
        assert_eq!(batch["count"], records.len());
        for (name, field) in [
            ("source-partition", "partition"),
            ("source-first-offset", "first_offset"),
            ("source-last-offset", "last_offset"),
        ] {
            assert_eq!(header(name), batch["source"][field].to_string(), "{name}");
        }
        // One tenant per batch: every record is the header's tenant's.
        for record in records {
            let rid = record["id"].as_str().unwrap();
            assert!(
                rid.starts_with(&format!("{tenant}.")),
                "{rid} in a batch of {tenant}"
            );
            let deleted = record["op"] == "delete";
            assert_eq!(deleted, record["data"].is_null(), "{record}");
            if !deleted {
                assert_eq!(record["data"]["tenant"], tenant.as_str());
            }
            carried.insert(
                (
                    tenant.clone(),
                    rid.to_owned(),
                    record["version"].as_u64().unwrap(),
                ),
                deleted,
            );
        }
        assert!(batches.insert(id.clone()), "batch {id} read twice");
    }
}
