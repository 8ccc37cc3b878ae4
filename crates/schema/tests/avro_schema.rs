//! Avro schemas: what a JSON Schema derives to (or why not, and where), the encoding of every
//! type in the Confluent wire format, and Avro's schema resolution as breaks.

use apache_avro::Schema;
use apache_avro::types::Value as Avro;
use serde_json::{Value, json};
use tenantsync_core::Object;
use tenantsync_schema::SchemaError;
use tenantsync_schema::avro::AvroSchema;

fn derive(schema: Value) -> Value {
    let avro = AvroSchema::derive(&schema, "orders").unwrap_or_else(|e| panic!("{schema}: {e}"));
    serde_json::from_str(avro.text()).unwrap()
}

/// The pointer and message of a refusal.
fn refused(schema: Value) -> (String, String) {
    match AvroSchema::derive(&schema, "orders") {
        Err(SchemaError::Invalid { pointer, message }) => (pointer, message),
        other => panic!("{schema} should be refused, got {other:?}"),
    }
}

fn record(properties: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

/// The Avro type of the single property `p` of a derived record.
fn field_type(property: Value, required: bool) -> Value {
    let avro = derive(record(
        json!({"p": property}),
        if required { &["p"] } else { &[] },
    ));
    avro["fields"][0]["type"].clone()
}

#[test]
fn derives_each_construct() {
    assert_eq!(field_type(json!({"type": "string"}), true), json!("string"));
    assert_eq!(field_type(json!({"type": "integer"}), true), json!("long"));
    assert_eq!(field_type(json!({"type": "number"}), true), json!("double"));
    assert_eq!(
        field_type(json!({"type": "boolean"}), true),
        json!("boolean")
    );
    assert_eq!(field_type(json!({"type": "null"}), true), json!("null"));
    assert_eq!(
        field_type(json!({"type": ["string", "null"]}), true),
        json!(["null", "string"])
    );
    assert_eq!(
        field_type(json!({"type": ["null", "integer"]}), true),
        json!(["null", "long"])
    );
    assert_eq!(
        field_type(json!({"type": "array", "items": {"type": "integer"}}), true),
        json!({"type": "array", "items": "long"})
    );
    assert_eq!(
        field_type(
            json!({"type": "object", "additionalProperties": {"type": "number"}}),
            true
        ),
        json!({"type": "map", "values": "double"})
    );
    assert_eq!(
        field_type(json!({"type": "string", "enum": ["open", "closed"]}), true),
        json!({"type": "enum", "name": "orders_p", "symbols": ["open", "closed"]})
    );
    // Values that are not Avro symbols keep the string.
    assert_eq!(
        field_type(json!({"type": "string", "enum": ["a-b", "c"]}), true),
        json!("string")
    );
    assert_eq!(
        field_type(json!({"enum": ["x", "y"]}), true)["type"],
        json!("enum")
    );
    assert_eq!(
        field_type(json!({"enum": ["x", null]}), true)[0],
        json!("null")
    );
    assert_eq!(field_type(json!({"const": 3}), true), json!("long"));
    // Constraints only: ignored.
    assert_eq!(
        field_type(
            json!({"type": "string", "minLength": 1, "maxLength": 9, "pattern": "^a", "format": "email",
                   "title": "t", "description": "d", "default": "a"}),
            true
        ),
        json!("string")
    );
    assert_eq!(
        field_type(
            json!({"type": "integer", "minimum": -5, "maximum": 9_000_000_000_000_000_000u64 / 1000}),
            true
        ),
        json!("long")
    );
}

#[test]
fn optional_properties_are_nullable_with_a_null_default() {
    let avro = derive(record(
        json!({"a": {"type": "string"}, "b": {"type": ["integer", "null"]}, "c": {"type": "null"}, "d": {"type": "boolean"}}),
        &["d"],
    ));
    assert_eq!(
        avro["fields"],
        json!([
            {"name": "a", "type": ["null", "string"], "default": null},
            {"name": "b", "type": ["null", "long"], "default": null},
            {"name": "c", "type": "null", "default": null},
            {"name": "d", "type": "boolean"},
        ])
    );
}

#[test]
fn nested_records_get_unique_names_from_their_path() {
    let inner = |props: Value| record(props, &[]);
    let avro = derive(record(
        json!({
            "address": inner(json!({"city": {"type": "string"}})),
            "lines": {"type": "array", "items": inner(json!({"sku": {"type": "string"}}))},
            "tags": {"type": "object", "additionalProperties": inner(json!({}))},
            // Would be named like `address`'s nested record without deduplication.
            "address_geo": inner(json!({})),
            "x": inner(json!({"geo": inner(json!({}))})),
        }),
        &["address", "lines", "tags", "address_geo", "x"],
    ));
    assert_eq!(avro["name"], "orders");
    let names: Vec<String> = avro["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let t = &f["type"];
            t.get("name")
                .or(t.get("items").and_then(|i| i.get("name")))
                .or(t.get("values").and_then(|v| v.get("name")))
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        names,
        [
            "orders_address",
            "orders_address_geo",
            "orders_lines_item",
            "orders_tags_value",
            "orders_x"
        ]
    );
    // The generated schema parses as Avro (names valid and unique).
    Schema::parse_str(&avro.to_string()).unwrap();
}

#[test]
fn the_record_name_is_made_a_valid_avro_name() {
    let empty = record(json!({}), &[]);
    for (dataset, name) in [
        ("orders", "orders"),
        ("web-hits", "web_hits"),
        ("9lives", "_9lives"),
        ("string", "string_2"),
    ] {
        let avro = AvroSchema::derive(&empty, dataset).unwrap();
        let text: Value = serde_json::from_str(avro.text()).unwrap();
        assert_eq!(text["name"], name);
    }
}

#[test]
fn refuses_what_has_no_avro_equivalent_with_a_pointer() {
    let prop = |p: Value| record(json!({"p": p}), &[]);
    let cases = [
        (
            json!({"type": "object", "properties": {}}),
            "",
            "additionalProperties: false",
        ),
        (
            prop(json!({"type": "object", "properties": {"a": {"type": "string"}}})),
            "/properties/p",
            "would not equal",
        ),
        (
            prop(json!({"type": "object", "properties": {}, "additionalProperties": true})),
            "/properties/p/additionalProperties",
            "Avro would drop",
        ),
        (
            prop(
                json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "string"}}),
            ),
            "/properties/p/additionalProperties",
            "both",
        ),
        (
            prop(json!({"type": "object"})),
            "/properties/p",
            "additionalProperties",
        ),
        (
            prop(json!({"anyOf": [{"type": "string"}]})),
            "/properties/p/anyOf",
            "anyOf",
        ),
        (
            prop(json!({"oneOf": [{"type": "string"}]})),
            "/properties/p/oneOf",
            "oneOf",
        ),
        (
            prop(json!({"type": "string", "allOf": [{}]})),
            "/properties/p/allOf",
            "allOf",
        ),
        (
            prop(json!({"type": "string", "not": {}})),
            "/properties/p/not",
            "not",
        ),
        (
            prop(json!({"$ref": "#/$defs/a"})),
            "/properties/p/$ref",
            "$ref",
        ),
        (
            prop(json!({"type": "string", "if": {}})),
            "/properties/p/if",
            "if",
        ),
        (
            prop(
                json!({"type": "object", "patternProperties": {"a": {}}, "additionalProperties": false}),
            ),
            "/properties/p/patternProperties",
            "patternProperties",
        ),
        (
            prop(
                json!({"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "string"}}),
            ),
            "/properties/p/prefixItems",
            "prefixItems",
        ),
        (prop(json!({"type": "array"})), "/properties/p", "items"),
        (
            prop(json!({"type": ["string", "integer"]})),
            "/properties/p/type",
            "union",
        ),
        (
            prop(json!({"type": ["string", "integer", "null"]})),
            "/properties/p/type",
            "union",
        ),
        (
            prop(json!({"enum": ["a", 1]})),
            "/properties/p/enum",
            "union",
        ),
        (
            prop(json!({"enum": [{"a": 1}]})),
            "/properties/p/enum",
            "object",
        ),
        (prop(json!({})), "/properties/p", "no `type`"),
        (prop(json!(true)), "/properties/p", "any value"),
        (prop(json!(false)), "/properties/p", "no value"),
        (
            prop(json!({"type": "date"})),
            "/properties/p/type",
            "unknown type",
        ),
        (
            prop(json!({"type": "integer", "maximum": 1e20})),
            "/properties/p/maximum",
            "long",
        ),
        (
            prop(json!({"type": "integer", "minimum": -1e20})),
            "/properties/p/minimum",
            "long",
        ),
        (
            prop(json!({"type": "integer", "exclusiveMaximum": 18_446_744_073_709_551_615u64})),
            "/properties/p/exclusiveMaximum",
            "long",
        ),
        (
            record(json!({"a-b": {"type": "string"}}), &[]),
            "/properties/a-b",
            "Avro field name",
        ),
        (
            record(json!({"a/b": {"type": "string"}}), &[]),
            "/properties/a~1b",
            "Avro field name",
        ),
        (
            record(json!({"a": {"type": "string"}}), &["a", "b"]),
            "/required/1",
            "'b'",
        ),
        (
            json!({"type": "object", "additionalProperties": {"type": "string"}}),
            "",
            "record",
        ),
        (json!({"type": "string"}), "", "record"),
        (
            record(
                json!({"a": {"type": "array", "items": {"type": "array", "items": {"type": "object"}}}}),
                &[],
            ),
            "/properties/a/items/items",
            "additionalProperties",
        ),
    ];
    for (schema, pointer, message) in cases {
        let (at, why) = refused(schema.clone());
        assert_eq!(at, pointer, "{schema}: {why}");
        assert!(
            why.contains(message),
            "{schema}: '{why}' should mention '{message}'"
        );
    }
}

#[test]
fn parse_takes_records_and_text_is_stable_and_keeps_defaults() {
    let given = r#"{"type":"record","name":"r","namespace":"ns","fields":[
        {"name":"a","type":"long"},
        {"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"],"default":"X"}},
        {"name":"o","type":["null","string"],"default":null}]}"#;
    let schema = AvroSchema::parse(given).unwrap();
    let text = schema.text();
    let json: Value = serde_json::from_str(text).unwrap();
    assert_eq!(json["fields"][2]["default"], Value::Null);
    assert_eq!(json["fields"][1]["type"]["default"], "X");
    assert_eq!(json["namespace"], "ns");
    assert_eq!(AvroSchema::parse(text).unwrap().text(), text);

    for bad in [
        r#""string""#,
        r#"{"type":"enum","name":"E","symbols":["a"]}"#,
        r#"{"type":"record","name":"r","fields":[{"name":"a","type":"nope"}]}"#,
        "not json",
    ] {
        assert!(
            matches!(AvroSchema::parse(bad), Err(SchemaError::Invalid { .. })),
            "{bad}"
        );
    }
    let decimal = r#"{"type":"record","name":"r","fields":[{"name":"a","type":{"type":"bytes","logicalType":"decimal","precision":4,"scale":2}}]}"#;
    match AvroSchema::parse(decimal) {
        Err(SchemaError::Invalid { pointer, .. }) => assert_eq!(pointer, "/fields/0/type"),
        other => panic!("{other:?}"),
    }
}

fn data(value: Value) -> Object {
    value.as_object().unwrap().clone()
}

/// Encodes, checks the header, and decodes the body with apache_avro.
fn round_trip(schema: &AvroSchema, value: Value) -> Avro {
    let bytes = schema.encode(0x0102_0304, &data(value)).unwrap();
    assert_eq!(bytes[..5], [0, 1, 2, 3, 4]);
    let parsed = Schema::parse_str(schema.text()).unwrap();
    let mut body = &bytes[5..];
    let decoded = apache_avro::from_avro_datum(&parsed, &mut body, None).unwrap();
    assert!(body.is_empty(), "trailing bytes");
    decoded
}

fn fields(value: Avro) -> Vec<(String, Avro)> {
    match value {
        Avro::Record(fields) => fields,
        other => panic!("{other:?}"),
    }
}

#[test]
fn encodes_every_derived_type() {
    let schema = AvroSchema::derive(
        &record(
            json!({
                "s": {"type": "string"}, "i": {"type": "integer"}, "n": {"type": "number"},
                "b": {"type": "boolean"}, "z": {"type": "null"}, "e": {"enum": ["A", "B"]},
                "a": {"type": "array", "items": {"type": "integer"}},
                "m": {"type": "object", "additionalProperties": {"type": "string"}},
                "r": record(json!({"x": {"type": "number"}}), &["x"]),
                "u": {"type": ["string", "null"]}, "o": {"type": "string"},
            }),
            &["s", "i", "n", "b", "z", "e", "a", "m", "r", "u"],
        ),
        "t",
    )
    .unwrap();
    let decoded = fields(round_trip(
        &schema,
        json!({"s": "é", "i": -7, "n": 2, "b": true, "z": null, "e": "B", "a": [1, 2], "m": {"k": "v"},
               "r": {"x": 1.5}, "u": null}),
    ));
    let get = |name: &str| decoded.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(get("s"), Avro::String("é".into()));
    assert_eq!(get("i"), Avro::Long(-7));
    assert_eq!(get("n"), Avro::Double(2.0));
    assert_eq!(get("b"), Avro::Boolean(true));
    assert_eq!(get("z"), Avro::Null);
    assert_eq!(get("e"), Avro::Enum(1, "B".into()));
    assert_eq!(get("a"), Avro::Array(vec![Avro::Long(1), Avro::Long(2)]));
    assert_eq!(
        get("m"),
        Avro::Map([("k".to_string(), Avro::String("v".into()))].into())
    );
    assert_eq!(
        get("r"),
        Avro::Record(vec![("x".into(), Avro::Double(1.5))])
    );
    assert_eq!(get("u"), Avro::Union(0, Box::new(Avro::Null)));
    // Absent optional field: null.
    assert_eq!(get("o"), Avro::Union(0, Box::new(Avro::Null)));

    let decoded = fields(round_trip(
        &schema,
        json!({"s": "", "i": 4.0, "n": 1e300, "b": false, "z": null, "e": "A", "a": [], "m": {},
               "r": {"x": -0.5}, "u": "x", "o": "y"}),
    ));
    let get = |name: &str| decoded.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(get("i"), Avro::Long(4));
    assert_eq!(get("n"), Avro::Double(1e300));
    assert_eq!(get("u"), Avro::Union(1, Box::new(Avro::String("x".into()))));
    assert_eq!(get("o"), Avro::Union(1, Box::new(Avro::String("y".into()))));
}

#[test]
fn encodes_types_only_given_directly() {
    let schema = AvroSchema::parse(
        r#"{"type":"record","name":"r","namespace":"ns","fields":[
            {"name":"i","type":"int"}, {"name":"f","type":"float"}, {"name":"by","type":"bytes"},
            {"name":"fx","type":{"type":"fixed","name":"F","size":2}},
            {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
            {"name":"d","type":{"type":"int","logicalType":"date"}},
            {"name":"id","type":{"type":"string","logicalType":"uuid"}},
            {"name":"un","type":["long","string"]},
            {"name":"again","type":["null","F"],"default":null},
            {"name":"dflt","type":"string","default":"zz"}]}"#,
    )
    .unwrap();
    let decoded = fields(round_trip(
        &schema,
        json!({"i": 5, "f": 0.5, "by": "\u{0}\u{ff}", "fx": "ab", "ts": 1_700_000_000_000i64, "d": 19000,
               "id": "67e55044-10b1-426f-9247-bb680e5fe0c8", "un": "s", "again": "xy"}),
    ));
    let get = |name: &str| decoded.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(get("i"), Avro::Int(5));
    assert_eq!(get("f"), Avro::Float(0.5));
    assert_eq!(get("by"), Avro::Bytes(vec![0, 255]));
    assert_eq!(get("fx"), Avro::Fixed(2, b"ab".to_vec()));
    assert_eq!(get("ts"), Avro::TimestampMillis(1_700_000_000_000));
    assert_eq!(get("d"), Avro::Date(19000));
    assert_eq!(
        get("un"),
        Avro::Union(1, Box::new(Avro::String("s".into())))
    );
    assert_eq!(
        get("again"),
        Avro::Union(1, Box::new(Avro::Fixed(2, b"xy".to_vec())))
    );
    assert_eq!(get("dflt"), Avro::String("zz".into()));
}

#[test]
fn refuses_data_that_does_not_fit_with_a_pointer_into_it() {
    let schema = AvroSchema::derive(
        &record(
            json!({
                "i": {"type": "integer"}, "e": {"enum": ["A"]},
                "a": {"type": "array", "items": record(json!({"x": {"type": "string"}}), &["x"])},
                "m": {"type": "object", "additionalProperties": {"type": "boolean"}},
                "u": {"type": ["number", "null"]},
            }),
            &["i"],
        ),
        "t",
    )
    .unwrap();
    let cases = [
        (json!({"i": "1"}), "/i", "integer"),
        (json!({"i": 1.5}), "/i", "integer"),
        (json!({"i": 18_446_744_073_709_551_615u64}), "/i", "long"),
        (json!({"i": 1e19}), "/i", "long"),
        (json!({}), "/i", "absent"),
        (json!({"i": 1, "e": "B"}), "/e", "symbol"),
        (
            json!({"i": 1, "a": [{"x": "ok"}, {"x": 2}]}),
            "/a/1/x",
            "string",
        ),
        (
            json!({"i": 1, "a": [{"x": "ok", "y~/": 1}]}),
            "/a/0/y~0~1",
            "lost",
        ),
        (json!({"i": 1, "m": {"k": 1}}), "/m/k", "boolean"),
        (json!({"i": 1, "u": "x"}), "/u", "number"),
        (
            json!({"i": 1, "u": 9_007_199_254_740_993i64}),
            "/u",
            "exactly",
        ),
        (json!({"i": 1, "u": u64::MAX}), "/u", "exactly"),
        (json!({"i": 1, "extra": 1}), "/extra", "lost"),
    ];
    // Integers a double holds exactly.
    for u in [json!(1u64 << 53), json!(i64::MIN), json!(u64::MAX - 2047)] {
        schema.encode(1, &data(json!({"i": 1, "u": u}))).unwrap();
    }
    for (value, pointer, message) in cases {
        let error = schema.encode(1, &data(value.clone())).unwrap_err();
        assert_eq!(error.pointer, pointer, "{value}: {error}");
        assert!(
            error.message.contains(message),
            "{value}: '{}' should mention '{message}'",
            error.message
        );
    }
}

fn avro(text: &str) -> AvroSchema {
    AvroSchema::parse(text).unwrap()
}

fn rec(fields: &str) -> AvroSchema {
    avro(&format!(
        r#"{{"type":"record","name":"r","fields":[{fields}]}}"#
    ))
}

#[test]
fn can_read_follows_avro_resolution() {
    let v1 = rec(r#"{"name":"a","type":"long"}"#);
    let readable = [
        // Same schema.
        (rec(r#"{"name":"a","type":"long"}"#), &v1),
        // An added field with a default.
        (
            rec(
                r#"{"name":"a","type":"long"},{"name":"b","type":["null","string"],"default":null}"#,
            ),
            &v1,
        ),
        // Promotion long -> double.
        (rec(r#"{"name":"a","type":"double"}"#), &v1),
        // Made nullable.
        (
            rec(r#"{"name":"a","type":["null","long"],"default":null}"#),
            &v1,
        ),
    ];
    for (reader, writer) in &readable {
        assert_eq!(
            AvroSchema::can_read(reader, writer, 1),
            vec![],
            "{} reading {}",
            reader.text(),
            writer.text()
        );
    }
    // A removed field is skipped by the reader.
    assert_eq!(AvroSchema::can_read(&rec(""), &v1, 1), vec![]);

    // An added field without a default.
    let breaks = AvroSchema::can_read(
        &rec(r#"{"name":"a","type":"long"},{"name":"b","type":"string"}"#),
        &v1,
        1,
    );
    assert_eq!(breaks.len(), 1);
    assert_eq!(breaks[0].pointer, "/fields/1");
    assert_eq!(breaks[0].version, 1);
    assert!(
        breaks[0].message.contains("'b'") && breaks[0].message.contains("no default"),
        "{}",
        breaks[0].message
    );

    // Narrowed type.
    let breaks = AvroSchema::can_read(&rec(r#"{"name":"a","type":"int"}"#), &v1, 3);
    assert_eq!(breaks[0].pointer, "/fields/0/type");
    assert!(
        breaks[0]
            .message
            .contains("written as \"long\" by version 3"),
        "{}",
        breaks[0].message
    );

    // Nested: a record inside an optional field.
    let nested = |t: &str| {
        rec(&format!(
            r#"{{"name":"x","type":"long"}},{{"name":"n","type":["null",{{"type":"record","name":"n","fields":[{{"name":"c","type":"{t}"}}]}}],"default":null}}"#
        ))
    };
    let breaks = AvroSchema::can_read(&nested("string"), &nested("long"), 2);
    assert_eq!(
        breaks[0].pointer, "/fields/1/type/1/fields/0/type",
        "{}",
        breaks[0].message
    );
    assert!(
        breaks[0].message.contains("field 'n.c'"),
        "{}",
        breaks[0].message
    );

    // A removed enum symbol, no default.
    let e = |symbols: &str| {
        rec(&format!(
            r#"{{"name":"e","type":{{"type":"enum","name":"E","symbols":[{symbols}]}}}}"#
        ))
    };
    assert_eq!(
        AvroSchema::can_read(&e(r#""A","B""#), &e(r#""A""#), 1),
        vec![]
    );
    let breaks = AvroSchema::can_read(&e(r#""A""#), &e(r#""A","B""#), 1);
    assert!(
        breaks[0].message.contains("symbols"),
        "{}",
        breaks[0].message
    );

    // Renamed record.
    let other = avro(r#"{"type":"record","name":"s","fields":[{"name":"a","type":"long"}]}"#);
    assert!(
        AvroSchema::can_read(&other, &v1, 1)[0]
            .message
            .contains("names")
    );
}

#[test]
fn derived_evolution_adding_an_optional_property_is_readable_both_ways() {
    let old = AvroSchema::derive(&record(json!({"a": {"type": "string"}}), &["a"]), "d").unwrap();
    let new = AvroSchema::derive(
        &record(
            json!({"a": {"type": "string"}, "b": {"type": "integer"}}),
            &["a"],
        ),
        "d",
    )
    .unwrap();
    assert_eq!(AvroSchema::can_read(&new, &old, 1), vec![]);
    assert_eq!(AvroSchema::can_read(&old, &new, 2), vec![]);
    let required = AvroSchema::derive(
        &record(
            json!({"a": {"type": "string"}, "b": {"type": "integer"}}),
            &["a", "b"],
        ),
        "d",
    )
    .unwrap();
    assert_eq!(AvroSchema::can_read(&required, &old, 1).len(), 1);
}

#[test]
fn can_read_explains_unions_and_enum_defaults() {
    // A writer's branch the reader's union lacks.
    let breaks = AvroSchema::can_read(
        &rec(r#"{"name":"a","type":["null","long"],"default":null}"#),
        &rec(r#"{"name":"a","type":["null","string"],"default":null}"#),
        4,
    );
    assert_eq!(breaks[0].pointer, "/fields/0/type");
    assert!(
        breaks[0].message.contains("may write \"string\""),
        "{}",
        breaks[0].message
    );
    // A writer's plain type the reader's union lacks.
    let breaks = AvroSchema::can_read(
        &rec(r#"{"name":"a","type":["null","string"],"default":null}"#),
        &rec(r#"{"name":"a","type":"long"}"#),
        4,
    );
    assert!(
        breaks[0].message.contains("field 'a'"),
        "{}",
        breaks[0].message
    );
    // Arrays of unions that do not match: explained, and the explanation ends.
    let breaks = AvroSchema::can_read(
        &rec(r#"{"name":"a","type":{"type":"array","items":["null","long"]}}"#),
        &rec(r#"{"name":"a","type":{"type":"array","items":["null","string"]}}"#),
        4,
    );
    assert_eq!(breaks.len(), 1);
    // Stricter than Avro's specification: an enum default is not relied on to read symbols
    // the reader does not know (apache_avro's resolution; Confluent's would accept it).
    let e = |symbols: &str| {
        rec(&format!(
            r#"{{"name":"e","type":{{"type":"enum","name":"E","symbols":[{symbols}],"default":"A"}}}}"#
        ))
    };
    let breaks = AvroSchema::can_read(&e(r#""A""#), &e(r#""A","B""#), 1);
    assert!(
        breaks[0].message.contains("not relied on"),
        "{}",
        breaks[0].message
    );
}

mod properties {
    use proptest::prelude::*;
    use serde_json::{Value, json};
    use tenantsync_schema::avro::AvroSchema;

    const KEYS: [&str; 10] = ["i", "e", "a", "m", "u", "s", "r", "x", "by", "fx"];

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(KEYS.to_vec()).prop_map(String::from),
            1 => "[a-z~/_-]{0,3}",
        ]
    }

    fn data() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            prop::sample::select(vec![
                "A",
                "B",
                "ab",
                "\u{100}",
                "67e55044-10b1-426f-9247-bb680e5fe0c8"
            ])
            .prop_map(Value::from),
            "\\PC{0,4}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(key(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn object() -> impl Strategy<Value = serde_json::Map<String, Value>> {
        prop::collection::btree_map(key(), data(), 0..8).prop_map(|m| m.into_iter().collect())
    }

    /// Small JSON Schemas, mostly of shapes the derivation takes, some it refuses.
    fn json_schema() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![prop::sample::select(vec![
            json!({"type": "string"}),
            json!({"type": "integer", "minimum": 0}),
            json!({"type": "number"}),
            json!({"type": "boolean"}),
            json!({"type": "null"}),
            json!({"type": ["string", "null"]}),
            json!({"enum": ["A", "B"]}),
            json!({"type": "string", "enum": ["a b"]}),
            json!({"type": ["string", "integer"]}),
            json!({"type": "integer", "maximum": 1e30}),
            json!({}),
            json!(true),
            json!({"anyOf": [{"type": "string"}]}),
        ]),];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                inner.clone().prop_map(|items| json!({"type": "array", "items": items})),
                inner.clone().prop_map(|values| json!({"type": "object", "additionalProperties": values})),
                (prop::collection::btree_map(key(), inner, 0..5), prop::collection::vec(key(), 0..3), any::<bool>()).prop_map(
                    |(properties, required, closed)| {
                        let mut schema = json!({"type": "object", "properties": properties, "required": required});
                        if closed {
                            schema["additionalProperties"] = json!(false);
                        }
                        schema
                    }
                ),
            ]
        })
    }

    fn all_types() -> AvroSchema {
        AvroSchema::parse(
            r#"{"type":"record","name":"r","fields":[
                {"name":"i","type":"int"}, {"name":"e","type":{"type":"enum","name":"E","symbols":["A","B"]}},
                {"name":"a","type":{"type":"array","items":["null","float","string"]}},
                {"name":"m","type":{"type":"map","values":"r"}, "default": {}},
                {"name":"u","type":["null","long","double","boolean"]},
                {"name":"s","type":{"type":"string","logicalType":"uuid"},"default":"67e55044-10b1-426f-9247-bb680e5fe0c8"},
                {"name":"r","type":["null","r"],"default":null},
                {"name":"by","type":"bytes","default":""},
                {"name":"fx","type":["null",{"type":"fixed","name":"F","size":2}],"default":null}]}"#,
        )
        .unwrap()
    }

    proptest! {
        #[test]
        fn encoding_any_data_never_panics(data in object()) {
            let schema = all_types();
            if let Ok(bytes) = schema.encode(7, &data) {
                prop_assert_eq!(&bytes[..5], &[0, 0, 0, 0, 7]);
            }
        }

        #[test]
        fn derivation_never_panics_and_what_it_derives_is_stable(schema in json_schema(), data in object()) {
            let root = json!({"type": "object", "properties": {"x": schema}, "additionalProperties": false});
            match AvroSchema::derive(&root, "d") {
                // A refusal is of the JSON Schema, never of an Avro schema the mapping made.
                Err(e) => prop_assert!(!e.to_string().contains("derived Avro schema"), "{}", e),
                Ok(avro) => {
                    let again = AvroSchema::parse(avro.text()).unwrap();
                    prop_assert_eq!(again.text(), avro.text());
                    prop_assert!(AvroSchema::can_read(&avro, &again, 1).is_empty());
                    let _ = avro.encode(1, &data);
                }
            }
        }
    }
}
