//! Random small JSON Schemas and JSON objects over one small vocabulary (property names,
//! numbers, strings), so generated data often meets a generated schema's names and bounds.
//! Shared by the validation property test and the validation corpus (included with `#[path]`);
//! a few generated keywords have values the meta-schema refuses, so refusals are exercised too.
#![allow(dead_code)]

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Value};

/// Property names schemas and data share ("é" has a two-byte UTF-8 encoding).
const NAMES: &[&str] = &["a", "b", "c", "é"];

/// Strings whose lengths in code points, bytes and UTF-16 units differ for some.
const STRINGS: &[&str] = &[
    "", "a", "ab", "abc", "é", "éé", "😀", "😀😀", "a1", "Z", "1", "b c",
];

/// Patterns every engine involved reads alike ("[" and "(" are invalid).
const PATTERNS: &[&str] = &[
    "^a", "b$", "^[a-z]*$", "[0-9]", "^.{2}$", "é", "^(a|b)+$", "^$", "😀", "[", "(",
];

pub fn name() -> impl Strategy<Value = String> {
    select(NAMES).prop_map(str::to_owned)
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-3i64..5).prop_map(Value::from),
        select(&[1.0, -0.5, 2.5, 0.0, 3.0, 1e300][..]).prop_map(Value::from),
    ]
}

pub fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        3 => number(),
        3 => select(STRINGS).prop_map(Value::from),
    ]
}

pub fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(name(), inner, 0..3)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

pub fn object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(name(), value(), 0..4).prop_map(|map| map.into_iter().collect())
}

fn count() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => (0u64..4).prop_map(Value::from),
        1 => select(&[-1.0, 1.0, 2.5][..]).prop_map(Value::from),
    ]
}

fn type_name() -> impl Strategy<Value = Value> {
    select(
        &[
            "object", "array", "string", "integer", "number", "boolean", "null", "strin",
        ][..],
    )
    .prop_map(Value::from)
}

fn names() -> impl Strategy<Value = Value> {
    prop::collection::vec(name(), 0..3)
        .prop_map(|names| names.into_iter().map(Value::from).collect())
}

fn entry(keyword: &'static str) -> impl Fn(Value) -> (String, Value) {
    move |value| (keyword.to_owned(), value)
}

/// A keyword that holds no subschema.
fn assertion() -> impl Strategy<Value = (String, Value)> {
    prop_oneof![
        3 => prop_oneof![
            type_name(),
            prop::collection::vec(type_name(), 1..3).prop_map(Value::Array),
        ]
        .prop_map(entry("type")),
        2 => prop::collection::vec(value(), 0..4).prop_map(|v| ("enum".to_owned(), Value::Array(v))),
        1 => value().prop_map(entry("const")),
        1 => number().prop_map(entry("minimum")),
        1 => number().prop_map(entry("maximum")),
        1 => number().prop_map(entry("exclusiveMinimum")),
        1 => number().prop_map(entry("exclusiveMaximum")),
        1 => select(&[1.0, 2.0, 0.5, 3.0, 0.0][..]).prop_map(|m| ("multipleOf".to_owned(), Value::from(m))),
        1 => count().prop_map(entry("minLength")),
        1 => count().prop_map(entry("maxLength")),
        1 => count().prop_map(entry("minItems")),
        1 => count().prop_map(entry("maxItems")),
        1 => count().prop_map(entry("minProperties")),
        1 => count().prop_map(entry("maxProperties")),
        1 => any::<bool>().prop_map(|b| ("uniqueItems".to_owned(), Value::Bool(b))),
        2 => select(PATTERNS).prop_map(|p| ("pattern".to_owned(), Value::from(p))),
        3 => names().prop_map(entry("required")),
        1 => prop::collection::btree_map(name(), names(), 1..3)
            .prop_map(|map| ("dependentRequired".to_owned(), Value::Object(map.into_iter().collect()))),
        1 => select(&["email", "date", "ipv4", "unknown"][..]).prop_map(|f| ("format".to_owned(), Value::from(f))),
    ]
}

/// A keyword whose value is made of subschemas.
fn applicator(inner: BoxedStrategy<Value>) -> impl Strategy<Value = (String, Value)> {
    let map = |keyword: &'static str, key: BoxedStrategy<String>, inner: BoxedStrategy<Value>| {
        prop::collection::btree_map(key, inner, 1..3)
            .prop_map(move |map| (keyword.to_owned(), Value::Object(map.into_iter().collect())))
    };
    let list = |keyword: &'static str, inner: BoxedStrategy<Value>| {
        prop::collection::vec(inner, 1..3).prop_map(move |v| (keyword.to_owned(), Value::Array(v)))
    };
    prop_oneof![
        4 => map("properties", name().boxed(), inner.clone()),
        1 => map("patternProperties", select(PATTERNS).prop_map(str::to_owned).boxed(), inner.clone()),
        1 => map("dependentSchemas", name().boxed(), inner.clone()),
        2 => inner.clone().prop_map(entry("additionalProperties")),
        1 => inner.clone().prop_map(entry("propertyNames")),
        2 => inner.clone().prop_map(entry("items")),
        1 => list("prefixItems", inner.clone()),
        1 => inner.clone().prop_map(entry("contains")),
        2 => list("anyOf", inner.clone()),
        2 => list("allOf", inner.clone()),
        1 => list("oneOf", inner.clone()),
        1 => inner.clone().prop_map(entry("not")),
        1 => inner.clone().prop_map(entry("if")),
        1 => inner.clone().prop_map(entry("then")),
        1 => inner.prop_map(entry("else")),
    ]
}

fn object_of(entries: impl IntoIterator<Item = (String, Value)>) -> Value {
    Value::Object(entries.into_iter().collect())
}

/// A small schema: boolean, or an object of a few assertions and applicators, nested a few
/// levels deep.
pub fn schema() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        1 => any::<bool>().prop_map(Value::Bool),
        6 => prop::collection::vec(assertion(), 0..3).prop_map(object_of),
    ];
    leaf.prop_recursive(3, 24, 3, |inner| {
        (
            prop::collection::vec(assertion(), 0..3),
            prop::collection::vec(applicator(inner), 1..3),
        )
            .prop_map(|(assertions, applicators)| {
                object_of(assertions.into_iter().chain(applicators))
            })
    })
}
