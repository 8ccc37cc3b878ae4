//! Records of a chosen number of typed fields, and the JSON Schema that describes them: the
//! workload of the data-contract benchmarks (`http --fields N [--schema]`, `processor --fields N
//! [--avro]`).

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use tenantsync_core::Object;

/// Field `i`'s JSON Schema type, in turn: integer, string, number, boolean.
fn kind(i: usize) -> &'static str {
    ["integer", "string", "number", "boolean"][i % 4]
}

/// A record of `fields` fields `f0`, `f1`, ... with random values of their types.
pub fn record(fields: usize, rng: &mut StdRng) -> Object {
    (0..fields)
        .map(|i| {
            let value = match kind(i) {
                "integer" => json!(rng.random_range(0..1_000_000)),
                "string" => json!(format!("value-{}", rng.random_range(0..10_000))),
                "number" => json!(rng.random_range(0.0..1000.0)),
                _ => json!(rng.random_bool(0.5)),
            };
            (format!("f{i}"), value)
        })
        .collect()
}

/// The JSON Schema of [`record`]'s records: every field required and typed, nothing else
/// allowed (so that an Avro schema can be derived from it), strings bounded.
pub fn schema(fields: usize) -> Value {
    let properties: serde_json::Map<String, Value> = (0..fields)
        .map(|i| {
            let mut property = json!({"type": kind(i)});
            if kind(i) == "string" {
                property["maxLength"] = json!(64);
            }
            (format!("f{i}"), property)
        })
        .collect();
    let required: Vec<String> = (0..fields).map(|i| format!("f{i}")).collect();
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}
