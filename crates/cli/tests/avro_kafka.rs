//! Standard clients read a dataset's Avro state topic on a real Kafka cluster: confluent-kafka's
//! Python `AvroDeserializer`, with its `SchemaRegistryClient` pointed at tenantsync's
//! `/v1/schema-registry`, and fastavro alone (the schema fetched by the id in each message's
//! header) both decode every message, and the last value of each key equals the master store.
//! The dataset's JSON Schema evolves once, compatibly, midway, so the topic holds values written
//! with two Avro versions.
//!
//! Runs when `TENANTSYNC_TEST_KAFKA` names a cluster (`dev/kafka up`) and
//! `TENANTSYNC_TEST_PYTHON` names a python with `confluent-kafka[avro]` and `fastavro`.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{KafkaTarget, Server};
use serde_json::{Map, Value, json};
use tenantsync_core::DatasetName;

const DATASET: &str = "contracts";
const PARTITIONS: u32 = 3;
const TENANTS: usize = 5;
const KEYS: usize = 40;
const TEST: &str = "avro_kafka";

/// The first version of the dataset's schema: every construct the Avro derivation maps.
fn schema_v1() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "name": {"type": "string"},
            "quantity": {"type": "integer"},
            "price": {"type": "number"},
            "active": {"type": "boolean"},
            "status": {"type": "string", "enum": ["new", "paid", "shipped"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "address": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "city": {"type": "string"},
                    "zip": {"type": "string"}
                },
                "required": ["city"]
            },
            "note": {"type": "string"}
        },
        "required": ["name", "quantity", "price", "active", "status", "tags"]
    })
}

/// The second version: one more optional field, a backward-compatible change.
fn schema_v2() -> Value {
    let mut schema = schema_v1();
    schema["properties"]["discount"] = json!({"type": "number"});
    schema
}

/// Fields of type `number`: JSON keeps `10` and `10.0` apart, Avro's `double` does not.
const NUMBER_FIELDS: [&str; 2] = ["price", "discount"];

/// The changes of one round, as bulk lines. `evolved`: the second schema is registered, so the
/// new field may be written.
fn round(round: usize, evolved: bool) -> String {
    let statuses = ["new", "paid", "shipped"];
    let mut lines = String::new();
    for t in 0..TENANTS {
        for i in 0..KEYS {
            let (tenant, id) = (format!("tenant-{t}"), format!("item-{i}"));
            let n = round * 7 + t * 3 + i;
            let line = match (round + i) % 6 {
                0..=2 => {
                    let mut data = json!({
                        "name": format!("item {i} of {tenant}, round {round}"),
                        "quantity": (n as i64 - 50) * 1_000_003,
                        // Whole and fractional values alike.
                        "price": if n.is_multiple_of(2) { json!(n) } else { json!(n as f64 + 0.25) },
                        "active": n.is_multiple_of(3),
                        "status": statuses[n % 3],
                        "tags": (0..n % 4).map(|k| format!("tag-{k}")).collect::<Vec<_>>(),
                    });
                    if n % 2 == 1 {
                        data["address"] = if n % 4 == 1 {
                            json!({"city": format!("city-{t}")})
                        } else {
                            json!({"city": format!("city-{t}"), "zip": format!("{n:05}")})
                        };
                    }
                    if n.is_multiple_of(5) {
                        data["note"] = json!("ünïcode ✓");
                    }
                    if evolved && !n.is_multiple_of(3) {
                        data["discount"] = json!(n as f64 / 8.0);
                    }
                    json!({"op": "upsert", "tenant": tenant, "id": id, "data": data})
                }
                3 => {
                    // A merge patch that keeps the record valid (of a deleted record: refused).
                    let mut patch = json!({
                        "quantity": n,
                        "note": null,
                        "address": {"city": format!("patched-{round}"), "zip": null},
                        "tags": ["patched"],
                    });
                    if evolved {
                        patch["discount"] = json!(0.5);
                    }
                    json!({"op": "patch", "tenant": tenant, "id": id, "data": patch})
                }
                _ => json!({"op": "delete", "tenant": tenant, "id": id}),
            };
            lines.push_str(&format!("{line}\n"));
        }
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_clients_decode_the_avro_state_topic_and_match_the_master_store() {
    let Some(python) = common::webhooks::python(TEST) else {
        return;
    };
    let Some(kafka) = KafkaTarget::real(TEST) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let admin = common::create_token(dir.path(), "admin", &["admin"]);
    let reader = common::create_token(dir.path(), "reader", &[&format!("read:{DATASET}:*")]);
    let mut args = kafka.server_args();
    // One broker is enough to read Avro: `dev/kafka up --brokers 1` will do.
    args.extend(
        [
            "--tenant-write-rate",
            "1000000",
            "--kafka-replication-factor",
            "1",
        ]
        .map(String::from),
    );
    let server = Server::start_secure(dir.path(), &args).await;
    let client = reqwest::Client::new();

    let declared = client
        .put(server.url(&format!("/v1/datasets/{DATASET}")))
        .bearer_auth(&admin)
        .json(&json!({"partitions": PARTITIONS, "formats": ["json", "avro"]}))
        .send()
        .await
        .unwrap();
    assert!(
        declared.status().is_success(),
        "declare: {}",
        declared.status()
    );
    register(&client, &server, &admin, &schema_v1()).await;
    for r in 0..2 {
        write(&client, &server, &admin, round(r, false)).await;
    }
    // Caught up before the schema evolves, so that values written with the first Avro version
    // stay the last of some keys.
    common::wait_caught_up_as(&server, DATASET, Some(&admin)).await;
    register(&client, &server, &admin, &schema_v2()).await;
    for r in 2..4 {
        write(&client, &server, &admin, round(r, true)).await;
    }
    common::wait_caught_up_as(&server, DATASET, Some(&admin)).await;

    // The master store, through the API: every key ever written, deleted ones as null.
    let mut expected: BTreeMap<String, Value> = BTreeMap::new();
    for t in 0..TENANTS {
        for i in 0..KEYS {
            let (tenant, id) = (format!("tenant-{t}"), format!("item-{i}"));
            let response = client
                .get(server.url(&format!(
                    "/v1/datasets/{DATASET}/tenants/{tenant}/records/{id}"
                )))
                .bearer_auth(&admin)
                .send()
                .await
                .unwrap();
            let data = match response.status().as_u16() {
                200 => normalize(&response.json::<Value>().await.unwrap()["data"]),
                404 => Value::Null,
                other => panic!("GET {tenant}/{id}: {other}"),
            };
            expected.insert(format!("{tenant}:{id}"), data);
        }
    }
    let live = expected.values().filter(|v| !v.is_null()).count();
    assert!(
        live > 0 && live < expected.len(),
        "some records live ({live}), some deleted"
    );

    let topic = kafka
        .topics()
        .state_avro(&DatasetName::new(DATASET).unwrap());
    let servers = kafka.servers().to_owned();
    let ends = {
        let (servers, topic) = (servers.clone(), topic.clone());
        tokio::task::spawn_blocking(move || common::topic_ends(&servers, &topic, PARTITIONS))
            .await
            .unwrap()
    };
    let input = json!({
        "servers": servers,
        "topic": topic,
        "ends": ends,
        "group": kafka.group("avro-reader"),
        "registry": server.url("/v1/schema-registry"),
        "token": reader,
    });
    let decoded = tokio::task::spawn_blocking(move || decode(&python, &input))
        .await
        .unwrap();

    let ids: Vec<u64> = serde_json::from_value(decoded["schema_ids"].clone()).unwrap();
    assert!(
        ids.len() >= 2,
        "values written with both Avro versions, got schema ids {ids:?}"
    );
    for reader in ["confluent", "fastavro"] {
        let got: BTreeMap<String, Value> = decoded[reader]
            .as_object()
            .unwrap_or_else(|| panic!("{reader}: {decoded}"))
            .iter()
            .map(|(k, v)| (k.clone(), normalize(v)))
            .collect();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{reader}: the keys of the Avro topic"
        );
        for (key, want) in &expected {
            assert_eq!(&got[key], want, "{reader}: the last value of {key}");
        }
    }

    let metrics = client
        .get(server.url("/metrics"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        common::metric(&metrics, "tenantsync_processor_avro_unencodable_total"),
        Some(0.0),
        "every state fits an Avro version"
    );
    assert!(
        common::metric(&metrics, "tenantsync_processor_avro_published_total").unwrap_or(0.0) > 0.0
    );
}

async fn register(client: &reqwest::Client, server: &Server, admin: &str, schema: &Value) {
    let response = client
        .put(server.url(&format!("/v1/datasets/{DATASET}/schema")))
        .bearer_auth(admin)
        .json(&json!({ "schema": schema }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 201, "registering a schema: {body}");
}

/// Sends bulk lines; every line must be accepted (a patch of a deleted record is refused only
/// when it is applied).
async fn write(client: &reqwest::Client, server: &Server, admin: &str, lines: String) {
    let reply: Value = client
        .post(server.url(&format!("/v1/datasets/{DATASET}/changes")))
        .bearer_auth(admin)
        .body(lines)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let results = reply["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{reply}"));
    assert!(results.iter().all(|r| r["status"] == 202), "{reply}");
}

/// A record's data as compared: fields that are absent and fields that are null are the same
/// (an optional field the writer's Avro version lacks reads as absent; one it has, as null),
/// and `number` fields are floats.
fn normalize(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| {
                    let v = match v.as_f64() {
                        Some(f) if NUMBER_FIELDS.contains(&k.as_str()) => json!(f),
                        _ => normalize(v),
                    };
                    (k.clone(), v)
                })
                .collect::<Map<String, Value>>(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

/// Reads the whole Avro topic twice in Python (confluent-kafka's `AvroDeserializer` with its
/// `SchemaRegistryClient`, then fastavro alone) and returns the last value per key of each, with
/// every schema id seen.
fn decode(python: &Path, input: &Value) -> Value {
    let mut child = Command::new(python)
        .args(["-c", DECODE_PY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("TENANTSYNC_TEST_PYTHON runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.to_string().as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Python readers failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the Python readers printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

const DECODE_PY: &str = r#"
import io, json, struct, sys, time, urllib.request
import fastavro
from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import SerializationContext, MessageField

cfg = json.load(sys.stdin)
topic, ends = cfg["topic"], cfg["ends"]

# Every message of the topic, reading committed entries only, from the beginning to `ends`.
consumer = Consumer({
    "bootstrap.servers": cfg["servers"],
    "group.id": cfg["group"],
    "enable.auto.commit": False,
    "isolation.level": "read_committed",
})
consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(len(ends))])
messages = []
deadline = time.time() + 120
def done():
    positions = consumer.position([TopicPartition(topic, p) for p in range(len(ends))])
    # An empty partition has no position (a negative sentinel) until something is fetched.
    return all(ends[tp.partition] == 0 or tp.offset >= ends[tp.partition] for tp in positions)
while not done():
    if time.time() > deadline:
        sys.exit("did not reach the ends %s within 120 s" % ends)
    msg = consumer.poll(0.5)
    if msg is None:
        continue
    if msg.error():
        sys.exit("consuming: %s" % msg.error())
    messages.append((msg.partition(), msg.offset(), msg.key().decode(), msg.value()))
consumer.close()
messages.sort(key=lambda m: (m[0], m[1]))

# confluent-kafka's deserializer, with the registry client a Kafka team would configure: HTTP
# Basic, the token as the password.
registry = SchemaRegistryClient({
    "url": cfg["registry"],
    "basic.auth.user.info": "analytics:" + cfg["token"],
})
deserializer = AvroDeserializer(registry)
context = SerializationContext(topic, MessageField.VALUE)
confluent = {}
for _, _, key, value in messages:
    confluent[key] = None if value is None else deserializer(value, context)

# fastavro alone: the header, the schema by id over plain HTTP, the Avro binary body.
schemas = {}
def schema(schema_id):
    if schema_id not in schemas:
        request = urllib.request.Request(
            "%s/schemas/ids/%d" % (cfg["registry"], schema_id),
            headers={"Authorization": "Bearer " + cfg["token"]},
        )
        with urllib.request.urlopen(request) as response:
            text = json.load(response)["schema"]
        schemas[schema_id] = fastavro.parse_schema(json.loads(text))
    return schemas[schema_id]
plain = {}
for partition, offset, key, value in messages:
    if value is None:
        plain[key] = None
        continue
    magic, schema_id = struct.unpack(">bI", value[:5])
    if magic != 0:
        sys.exit("%s at %d/%d: magic byte %d" % (key, partition, offset, magic))
    body = io.BytesIO(value[5:])
    plain[key] = fastavro.schemaless_reader(body, schema(schema_id))
    if body.tell() != len(value) - 5:
        sys.exit("%s at %d/%d: %d bytes left over" % (key, partition, offset, len(value) - 5 - body.tell()))

json.dump({"confluent": confluent, "fastavro": plain, "schema_ids": sorted(schemas)}, sys.stdout)
"#;
