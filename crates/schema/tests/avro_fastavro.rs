//! Records encoded with a derived Avro schema decode, with fastavro (an independent Avro
//! implementation), to the JSON data they were encoded from.
//!
//! Runs when `TENANTSYNC_TEST_PYTHON` names a python with `fastavro` installed; prints a skip
//! notice otherwise.

use std::io::Write;
use std::process::Command;

use serde_json::{Map, Value, json};
use tenantsync_schema::avro::AvroSchema;

/// Not symmetric in its bytes, so a wrong byte order shows.
const SCHEMA_ID: u32 = 0x0001_0203;
const RECORDS: usize = 400;

/// Checks each payload's header, strips it, decodes the rest with fastavro and compares it with
/// the expected value; prints every mismatch and exits non-zero when there is one.
const DECODE: &str = r#"
import io, json, sys
import fastavro

lines = open(sys.argv[1]).read().splitlines()
schema = fastavro.parse_schema(json.loads(lines[0]))
schema_id = int(sys.argv[2])
bad = 0
for n, line in enumerate(lines[1:]):
    case = json.loads(line)
    payload = bytes.fromhex(case["hex"])
    if payload[0] != 0 or int.from_bytes(payload[1:5], "big") != schema_id:
        print(f"record {n}: bad header {payload[:5].hex()}", file=sys.stderr)
        bad += 1
        continue
    body = io.BytesIO(payload[5:])
    decoded = fastavro.schemaless_reader(body, schema, None)
    if body.read():
        print(f"record {n}: trailing bytes", file=sys.stderr)
        bad += 1
    elif decoded != case["expected"]:
        print(f"record {n}: decoded {decoded!r}, expected {case['expected']!r}", file=sys.stderr)
        bad += 1
print(f"{len(lines) - 1} records, {bad} mismatches")
sys.exit(1 if bad else 0)
"#;

/// SplitMix64: a seeded generator, so a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    fn integer(&mut self) -> i64 {
        match self.below(4) {
            0 => [i64::MIN, i64::MAX, 0, -1][self.below(4) as usize],
            1 => self.next() as i64,
            _ => self.below(2000) as i64 - 1000,
        }
    }
    fn number(&mut self) -> f64 {
        match self.below(3) {
            0 => self.integer() as f64,
            1 => (self.next() as i64) as f64 / 1e6,
            _ => {
                let mantissa = (self.below(1 << 52) as f64) / (1u64 << 52) as f64 + 1.0;
                let exponent = self.below(600) as i32 - 300;
                let sign = if self.chance(2) { -1.0 } else { 1.0 };
                sign * mantissa * 10f64.powi(exponent)
            }
        }
    }
    fn string(&mut self) -> String {
        const CHARS: [char; 12] = [
            'a', 'Z', '0', ' ', '"', '\\', '\n', 'é', '中', '😀', '\u{0}', '~',
        ];
        (0..self.below(12))
            .map(|_| CHARS[self.below(CHARS.len() as u64) as usize])
            .collect()
    }
}

fn record(properties: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

fn json_schema() -> Value {
    record(
        json!({
            "id": {"type": "integer"},
            "name": {"type": "string", "minLength": 0},
            "price": {"type": "number"},
            "active": {"type": "boolean"},
            "status": {"type": "string", "enum": ["open", "closed", "on_hold"]},
            "label": {"type": "string", "enum": ["a-b", "c d"]},
            "note": {"type": ["string", "null"]},
            "discount": {"type": "number"},
            "nothing": {"type": "null"},
            "lines": {"type": "array", "items": record(json!({
                "sku": {"type": "string"},
                "n": {"type": "integer"},
                "tags": {"type": "array", "items": {"type": "string"}},
            }), &["sku", "n"])},
            "attrs": {"type": "object", "additionalProperties": {"type": "string"}},
            "scores": {"type": "object", "additionalProperties": {"type": ["number", "null"]}},
            "address": record(json!({
                "city": {"type": "string"},
                "zip": {"type": ["null", "string"]},
                "geo": record(json!({"lat": {"type": "number"}, "lon": {"type": "number"}}), &["lat", "lon"]),
            }), &["city"]),
        }),
        &[
            "id", "name", "price", "active", "status", "lines", "attrs", "address",
        ],
    )
}

/// Sets `key` in the data when the generator includes it, and in the expected decoded value
/// either way: an absent optional field decodes as null.
fn optional(
    rng: &mut Rng,
    data: &mut Map<String, Value>,
    expected: &mut Map<String, Value>,
    key: &str,
    value: Value,
) {
    if rng.chance(2) {
        data.insert(key.into(), value.clone());
        expected.insert(key.into(), value);
    } else {
        expected.insert(key.into(), Value::Null);
    }
}

/// A record's data and what fastavro should decode it to.
fn generate(rng: &mut Rng) -> (Value, Value) {
    let mut data = Map::new();
    let mut expected = Map::new();
    let mut both = |key: &str, value: Value| {
        data.insert(key.into(), value.clone());
        expected.insert(key.into(), value);
    };
    both("id", json!(rng.integer()));
    both("name", json!(rng.string()));
    both("price", json!(rng.number()));
    both("active", json!(rng.chance(2)));
    both(
        "status",
        json!(["open", "closed", "on_hold"][rng.below(3) as usize]),
    );
    let lines: Vec<(Value, Value)> = (0..rng.below(4))
        .map(|_| {
            let mut line = Map::new();
            let mut exp = Map::new();
            line.insert("sku".into(), json!(rng.string()));
            line.insert("n".into(), json!(rng.integer()));
            exp.clone_from(&line);
            let tags: Vec<String> = (0..rng.below(3)).map(|_| rng.string()).collect();
            optional(rng, &mut line, &mut exp, "tags", json!(tags));
            (Value::Object(line), Value::Object(exp))
        })
        .collect();
    both(
        "attrs",
        Value::Object(
            (0..rng.below(4))
                .map(|_| (rng.string(), json!(rng.string())))
                .collect(),
        ),
    );
    let (lines, lines_expected): (Vec<Value>, Vec<Value>) = lines.into_iter().unzip();
    data.insert("lines".into(), json!(lines));
    expected.insert("lines".into(), json!(lines_expected));

    let mut address = Map::new();
    let mut address_expected = Map::new();
    address.insert("city".into(), json!(rng.string()));
    address_expected.clone_from(&address);
    let zip = if rng.chance(3) {
        Value::Null
    } else {
        json!(rng.string())
    };
    optional(rng, &mut address, &mut address_expected, "zip", zip);
    let geo = json!({"lat": rng.number(), "lon": rng.number()});
    optional(rng, &mut address, &mut address_expected, "geo", geo);
    data.insert("address".into(), Value::Object(address));
    expected.insert("address".into(), Value::Object(address_expected));

    let label = json!(["a-b", "c d"][rng.below(2) as usize]);
    optional(rng, &mut data, &mut expected, "label", label);
    let note = if rng.chance(3) {
        Value::Null
    } else {
        json!(rng.string())
    };
    optional(rng, &mut data, &mut expected, "note", note);
    let discount = json!(rng.number());
    optional(rng, &mut data, &mut expected, "discount", discount);
    optional(rng, &mut data, &mut expected, "nothing", Value::Null);
    let scores: Map<String, Value> = (0..rng.below(3))
        .map(|_| {
            (
                rng.string(),
                if rng.chance(3) {
                    Value::Null
                } else {
                    json!(rng.number())
                },
            )
        })
        .collect();
    optional(
        rng,
        &mut data,
        &mut expected,
        "scores",
        Value::Object(scores),
    );
    (Value::Object(data), Value::Object(expected))
}

#[test]
fn fastavro_decodes_what_derived_schemas_encode() {
    let Ok(python) = std::env::var("TENANTSYNC_TEST_PYTHON") else {
        eprintln!("skipped: set TENANTSYNC_TEST_PYTHON to a python with fastavro installed");
        return;
    };
    let schema = AvroSchema::derive(&json_schema(), "orders").unwrap();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "{}", schema.text()).unwrap();
    let mut rng = Rng(14);
    for _ in 0..RECORDS {
        let (data, expected) = generate(&mut rng);
        let bytes = schema
            .encode(SCHEMA_ID, data.as_object().unwrap())
            .unwrap_or_else(|e| panic!("{data}: {e}"));
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(file, "{}", json!({"hex": hex, "expected": expected})).unwrap();
    }
    file.flush().unwrap();
    let output = Command::new(&python)
        .arg("-c")
        .arg(DECODE)
        .arg(file.path())
        .arg(SCHEMA_ID.to_string())
        .output()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "fastavro disagrees:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("{RECORDS} records, 0 mismatches")),
        "{stdout}"
    );
}
