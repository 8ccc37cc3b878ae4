//! The independent check of validation: a fixed corpus of (schema, data) cases, hand-written
//! tricky ones plus ones generated from a fixed seed, judged by our [`Validator`] and by
//! Python's reference `jsonschema` (`Draft202012Validator`, no format checking, a registry that
//! retrieves nothing), run through `TENANTSYNC_TEST_PYTHON`. Every verdict must agree. A schema
//! we refuse must be refused by Python too (`check_schema` fails, or validating raises because a
//! reference does not resolve), unless the case says why only we refuse it. A few cases are
//! where Python departs from the specification (Unicode `\d`, binary floating-point
//! `multipleOf`): there the verdicts must stay opposite, each with the reason.

#[path = "validate_gen.rs"]
mod generate;

use std::path::PathBuf;
use std::process::Command;

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tenantsync_schema::{SchemaError, Validator};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Verdict {
    Valid,
    Invalid,
    /// The schema is refused (or, for Python, cannot be used to judge this data).
    Refused,
}

#[derive(Debug, Serialize)]
struct Case {
    name: String,
    schema: Value,
    data: Value,
    /// Why only we refuse this schema, when we do and Python may not.
    only_us: Option<&'static str>,
    /// Why our verdict is expected to be the opposite of Python's.
    differs: Option<&'static str>,
    ours: Verdict,
}

#[derive(Debug, Deserialize)]
struct Theirs {
    verdict: Verdict,
    why: Option<String>,
}

const REMOTE: &str = "a reference outside the schema is refused when the schema is registered, \
                      even when the data never reaches it (Python only fails on reaching it)";
const DANGLING: &str = "a local reference that resolves nowhere is refused when the schema is \
                        registered, even when the data never reaches it";
const DIALECT: &str = "only draft 2020-12 is accepted; another `$schema` is refused";
const BACKTRACKING: &str = "patterns run on a linear-time engine: look-around and \
                            back-references are refused";

/// Where Python's `jsonschema` departs from the specification, and our verdict is the
/// specification's.
const ECMA_CLASSES: &str = "patterns follow ECMA-262, as the specification says: \\d and \\w \
                            match ASCII only (Python's `re` matches any Unicode digit or letter)";
const FLOAT_DIVISION: &str = "0.07 and 1e308 are multiples of 0.01; Python divides in binary \
                              floating point and sees a remainder (7.000000000000001) or overflows";

const PYTHON_JUDGE: &str = r#"
import json, sys
import referencing
from jsonschema import Draft202012Validator, exceptions

out = []
for case in json.load(open(sys.argv[1], encoding="utf-8")):
    schema = case["schema"]
    try:
        Draft202012Validator.check_schema(schema)
    except exceptions.SchemaError as error:
        out.append({"verdict": "refused", "why": "check_schema: " + error.message})
        continue
    # An empty registry: no reference is ever retrieved.
    validator = Draft202012Validator(schema, registry=referencing.Registry())
    try:
        valid = validator.is_valid(case["data"])
        out.append({"verdict": "valid" if valid else "invalid", "why": None})
    except Exception as error:
        out.append({"verdict": "refused", "why": type(error).__name__ + ": " + str(error)})
json.dump(out, open(sys.argv[2], "w", encoding="utf-8"))
"#;

fn ours(schema: &Value, data: &Value) -> Verdict {
    let object = data.as_object().expect("every case's data is an object");
    match Validator::new(schema) {
        Ok(validator) => match validator.validate(object) {
            Ok(()) => Verdict::Valid,
            Err(_) => Verdict::Invalid,
        },
        Err(SchemaError::Invalid { .. }) => Verdict::Refused,
        Err(other) => panic!("unexpected error {other:?} for {schema}"),
    }
}

struct Corpus(Vec<Case>);

impl Corpus {
    fn add(&mut self, name: &str, schema: Value, data: &[Value]) {
        self.add_refused_by_us(name, schema, data, None);
    }

    fn add_refused_by_us(
        &mut self,
        name: &str,
        schema: Value,
        data: &[Value],
        only_us: Option<&'static str>,
    ) {
        self.push(name, schema, data, only_us, None);
    }

    fn differ(&mut self, name: &str, schema: Value, data: &[Value], why: &'static str) {
        self.push(name, schema, data, None, Some(why));
    }

    fn push(
        &mut self,
        name: &str,
        schema: Value,
        data: &[Value],
        only_us: Option<&'static str>,
        differs: Option<&'static str>,
    ) {
        for (index, data) in data.iter().enumerate() {
            self.0.push(Case {
                name: format!("{name} #{index}"),
                ours: ours(&schema, data),
                schema: schema.clone(),
                data: data.clone(),
                only_us,
                differs,
            });
        }
    }
}

fn hand_written(corpus: &mut Corpus) {
    corpus.add(
        "integer accepts integral floats",
        json!({"properties": {"n": {"type": "integer"}}}),
        &[
            json!({"n": 1.0}),
            json!({"n": 1.5}),
            json!({"n": 1e300}),
            json!({"n": -0.0}),
            json!({"n": "1"}),
            json!({"n": true}),
        ],
    );
    corpus.add(
        "const compares numbers by value and booleans apart",
        json!({"properties": {"n": {"const": 1}}}),
        &[json!({"n": 1.0}), json!({"n": true}), json!({"n": 2})],
    );
    corpus.add(
        "enum of mixed types",
        json!({"properties": {"v": {"enum": [1, "1", null, true, [1], {"a": 1}]}}}),
        &[
            json!({"v": 1.0}),
            json!({"v": "1"}),
            json!({"v": null}),
            json!({"v": false}),
            json!({"v": [1.0]}),
            json!({"v": [true]}),
            json!({"v": {"a": 1.0}}),
            json!({"v": {"a": 1, "b": 2}}),
            json!({"v": 0}),
        ],
    );
    corpus.add(
        "enum of true does not take 1",
        json!({"properties": {"v": {"enum": [true, 0]}}}),
        &[json!({"v": 1}), json!({"v": false}), json!({"v": 0.0})],
    );
    corpus.add(
        "empty enum",
        json!({"properties": {"v": {"enum": []}}}),
        &[json!({}), json!({"v": null})],
    );
    corpus.add(
        "lengths count code points",
        json!({"properties": {"s": {"maxLength": 2, "minLength": 2}}}),
        &[
            json!({"s": "😀😀"}),
            json!({"s": "éé"}),
            json!({"s": "e\u{301}"}),
            json!({"s": "😀"}),
            json!({"s": "abc"}),
            json!({"s": "😀😀😀"}),
        ],
    );
    corpus.add(
        "patterns are searched, not anchored",
        json!({"properties": {"s": {"pattern": "b"}, "t": {"pattern": "^[a-c]+$"}}}),
        &[
            json!({"s": "abc"}),
            json!({"s": "xyz"}),
            json!({"t": "abc"}),
            json!({"t": "abd"}),
            json!({"t": ""}),
            json!({"s": 5}),
        ],
    );
    corpus.add(
        "a pattern's dot is one code point",
        json!({"properties": {"s": {"pattern": "^.$"}}}),
        &[
            json!({"s": "😀"}),
            json!({"s": "é"}),
            json!({"s": "e\u{301}"}),
        ],
    );
    corpus.add(
        "pattern quantifiers and alternation",
        json!({"patternProperties": {"^x-": {"type": "string"}}, "properties": {"id": {"pattern": "^[A-Z]{2}-[0-9]{3}$|^none$"}}}),
        &[
            json!({"id": "AB-123", "x-a": "s"}),
            json!({"id": "none"}),
            json!({"id": "AB-12"}),
            json!({"x-a": 1}),
        ],
    );
    corpus.add_refused_by_us(
        "look-ahead pattern",
        json!({"properties": {"s": {"pattern": "^(?=a)"}}}),
        &[json!({"s": "ab"}), json!({"s": "b"})],
        Some(BACKTRACKING),
    );
    corpus.add_refused_by_us(
        "back-reference pattern",
        json!({"properties": {"s": {"pattern": "^(a)\\1$"}}}),
        &[json!({"s": "aa"})],
        Some(BACKTRACKING),
    );
    corpus.add(
        "invalid pattern",
        json!({"properties": {"s": {"pattern": "(unclosed"}}}),
        &[json!({})],
    );
    corpus.add(
        "invalid pattern property",
        json!({"patternProperties": {"[": true}}),
        &[json!({})],
    );
    corpus.add(
        "nested required",
        json!({"properties": {"a": {"type": "object", "required": ["b"],
            "properties": {"b": {"required": ["c"]}}}}}),
        &[
            json!({}),
            json!({"a": {}}),
            json!({"a": {"b": {}}}),
            json!({"a": {"b": {"c": null}}}),
            json!({"a": {"b": 1}}),
        ],
    );
    corpus.add(
        "additionalProperties with a schema",
        json!({"properties": {"a": true}, "patternProperties": {"^x": {"type": "integer"}},
            "additionalProperties": {"type": "string"}}),
        &[
            json!({"a": 1, "x1": 2, "z": "s"}),
            json!({"x1": "s"}),
            json!({"z": 1}),
            json!({"a": [], "xyz": 0}),
        ],
    );
    corpus.add(
        "additionalProperties false",
        json!({"properties": {"a": true}, "additionalProperties": false}),
        &[json!({"a": 1}), json!({"a": 1, "b": 2}), json!({})],
    );
    corpus.add(
        "const objects",
        json!({"properties": {"o": {"const": {"a": [1, {"b": null}]}}}}),
        &[
            json!({"o": {"a": [1.0, {"b": null}]}}),
            json!({"o": {"a": [1, {"b": null}], "c": 1}}),
            json!({"o": {"a": [true, {"b": null}]}}),
            json!({"o": {"a": [{"b": null}, 1]}}),
        ],
    );
    corpus.add(
        "uniqueItems",
        json!({"properties": {"l": {"uniqueItems": true}}}),
        &[
            json!({"l": [1, 1.0]}),
            json!({"l": [0, false]}),
            json!({"l": [1, true]}),
            json!({"l": [{"a": 1}, {"a": 1.0}]}),
            json!({"l": [[1], [true]]}),
            json!({"l": [{"a": 1, "b": 2}, {"b": 2, "a": 1}]}),
            json!({"l": ["a", "b", "a"]}),
            json!({"l": []}),
        ],
    );
    corpus.add(
        "minProperties and maxProperties",
        json!({"minProperties": 1, "maxProperties": 2}),
        &[json!({}), json!({"a": 1}), json!({"a": 1, "b": 2, "c": 3})],
    );
    corpus.add(
        "dependentRequired",
        json!({"dependentRequired": {"a": ["b", "c"]}}),
        &[
            json!({"a": 1}),
            json!({"a": 1, "b": 1}),
            json!({"a": 1, "b": 1, "c": 1}),
            json!({"b": 1}),
        ],
    );
    corpus.add(
        "dependentSchemas",
        json!({"dependentSchemas": {"a": {"properties": {"b": {"type": "string"}}}}}),
        &[
            json!({"a": 1, "b": 1}),
            json!({"a": 1, "b": "s"}),
            json!({"b": 1}),
        ],
    );
    corpus.add(
        "prefixItems with items false",
        json!({"properties": {"t": {"prefixItems": [{"type": "string"}, {"type": "integer"}],
            "items": false}}}),
        &[
            json!({"t": ["a", 1]}),
            json!({"t": ["a", 1, 2]}),
            json!({"t": ["a"]}),
            json!({"t": [1]}),
            json!({"t": []}),
        ],
    );
    corpus.add(
        "contains with minContains and maxContains",
        json!({"properties": {"l": {"contains": {"type": "integer"}, "minContains": 2,
            "maxContains": 3}}}),
        &[
            json!({"l": [1, "a", 2]}),
            json!({"l": [1, "a"]}),
            json!({"l": [1, 2, 3, 4]}),
            json!({"l": [1.0, 2.0]}),
        ],
    );
    corpus.add(
        "$defs with a local $ref",
        json!({"$defs": {"pos": {"type": "integer", "minimum": 0}},
            "properties": {"n": {"$ref": "#/$defs/pos"}}}),
        &[
            json!({"n": -1}),
            json!({"n": 3}),
            json!({"n": 2.0}),
            json!({}),
        ],
    );
    corpus.add(
        "$ref beside other keywords",
        json!({"$defs": {"s": {"type": "string"}},
            "properties": {"a": {"$ref": "#/$defs/s", "maxLength": 1}}}),
        &[json!({"a": "x"}), json!({"a": "xy"}), json!({"a": 1})],
    );
    corpus.add(
        "$ref to an escaped pointer",
        json!({"$defs": {"a b": {"type": "string"}, "c/d": {"type": "integer"}, "e~f": {"const": 1}},
            "properties": {"x": {"$ref": "#/$defs/a%20b"}, "y": {"$ref": "#/$defs/c~1d"},
                "z": {"$ref": "#/$defs/e~0f"}}}),
        &[
            json!({"x": "s", "y": 1, "z": 1}),
            json!({"x": 1}),
            json!({"y": "s"}),
            json!({"z": 2}),
        ],
    );
    corpus.add(
        "$ref to an $anchor",
        json!({"$defs": {"x": {"$anchor": "thing", "type": "string"}},
            "properties": {"a": {"$ref": "#thing"}}}),
        &[json!({"a": "s"}), json!({"a": 1})],
    );
    corpus.add(
        "$ref to an embedded $id",
        json!({"$id": "https://example.com/root.json",
            "$defs": {"x": {"$id": "item.json", "type": "integer"}},
            "properties": {"a": {"$ref": "item.json"},
                "b": {"$ref": "https://example.com/item.json"}}}),
        &[
            json!({"a": 1, "b": 2}),
            json!({"a": "s"}),
            json!({"b": "s"}),
        ],
    );
    corpus.add(
        "recursive $ref to the root",
        json!({"properties": {"child": {"$ref": "#"}}, "required": ["id"]}),
        &[
            json!({"id": 1, "child": {"id": 2, "child": {"id": 3}}}),
            json!({"id": 1, "child": {"id": 2, "child": {}}}),
            json!({"child": {"id": 2}}),
        ],
    );
    corpus.add(
        "$dynamicRef to a $dynamicAnchor",
        json!({"$dynamicAnchor": "node", "properties": {"kids": {"items": {"$dynamicRef": "#node"}},
            "name": {"type": "string"}}}),
        &[
            json!({"name": "a", "kids": [{"name": "b"}]}),
            json!({"name": "a", "kids": [{"name": 1}]}),
        ],
    );
    corpus.add(
        "$ref into an unknown keyword",
        json!({"x-lib": {"s": {"type": "string"}}, "properties": {"a": {"$ref": "#/x-lib/s"}}}),
        &[json!({"a": "s"}), json!({"a": 1})],
    );
    corpus.add_refused_by_us(
        "remote $ref",
        json!({"properties": {"a": {"$ref": "https://example.com/s.json"}}}),
        &[json!({}), json!({"a": 1})],
        Some(REMOTE),
    );
    corpus.add_refused_by_us(
        "remote $ref relative to a remote $id",
        json!({"$id": "https://example.com/root.json", "properties": {"a": {"$ref": "other.json"}}}),
        &[json!({}), json!({"a": 1})],
        Some(REMOTE),
    );
    corpus.add_refused_by_us(
        "relative $ref without a base",
        json!({"properties": {"a": {"$ref": "other.json#/x"}}}),
        &[json!({}), json!({"a": 1})],
        Some(REMOTE),
    );
    corpus.add_refused_by_us(
        "file $ref",
        json!({"properties": {"a": {"$ref": "file:///etc/passwd"}}}),
        &[json!({}), json!({"a": 1})],
        Some(REMOTE),
    );
    corpus.add_refused_by_us(
        "remote $dynamicRef",
        json!({"properties": {"a": {"$dynamicRef": "https://example.com/s.json#meta"}}}),
        &[json!({}), json!({"a": 1})],
        Some(REMOTE),
    );
    corpus.add_refused_by_us(
        "dangling local $ref",
        json!({"properties": {"a": {"$ref": "#/$defs/missing"}}}),
        &[json!({}), json!({"a": 1})],
        Some(DANGLING),
    );
    corpus.add_refused_by_us(
        "missing anchor",
        json!({"properties": {"a": {"$ref": "#nowhere"}}}),
        &[json!({}), json!({"a": 1})],
        Some(DANGLING),
    );
    corpus.add_refused_by_us(
        "another dialect",
        json!({"$schema": "http://json-schema.org/draft-07/schema#",
            "properties": {"a": {"type": "string"}}}),
        &[json!({"a": "s"}), json!({"a": 1})],
        Some(DIALECT),
    );
    corpus.add_refused_by_us(
        "another dialect in an embedded resource",
        json!({"$defs": {"x": {"$id": "https://example.com/x",
            "$schema": "https://json-schema.org/draft/2019-09/schema"}}}),
        &[json!({})],
        Some(DIALECT),
    );
    corpus.add(
        "the 2020-12 dialect, with or without an empty fragment",
        json!({"$schema": "https://json-schema.org/draft/2020-12/schema",
            "properties": {"a": {"$schema": "https://json-schema.org/draft/2020-12/schema#",
                "type": "string"}}}),
        &[json!({"a": "s"}), json!({"a": 1})],
    );
    corpus.add(
        "format is an annotation",
        json!({"properties": {"e": {"format": "email"}, "d": {"format": "date"},
            "i": {"format": "ipv4"}, "u": {"format": "no-such-format"}}}),
        &[json!({"e": "not an email", "d": "2020-13-45", "i": "999.1.1.1", "u": "x"})],
    );
    corpus.add(
        "content keywords are annotations",
        json!({"properties": {"j": {"contentMediaType": "application/json",
            "contentEncoding": "base64", "contentSchema": {"type": "object"}}}}),
        &[json!({"j": "%%% not base64"}), json!({"j": "e30="})],
    );
    corpus.add(
        "unevaluatedProperties",
        json!({"properties": {"a": true}, "allOf": [{"properties": {"b": true}}],
            "unevaluatedProperties": false}),
        &[json!({"a": 1, "b": 1}), json!({"c": 1})],
    );
    corpus.add(
        "unevaluatedItems",
        json!({"properties": {"l": {"prefixItems": [true], "unevaluatedItems": {"type": "string"}}}}),
        &[json!({"l": [1, "a"]}), json!({"l": [1, 2]})],
    );
    corpus.add(
        "if then else",
        json!({"if": {"required": ["card"]}, "then": {"required": ["cvv"]},
            "else": {"properties": {"cvv": false}}}),
        &[
            json!({"card": 1, "cvv": 2}),
            json!({"card": 1}),
            json!({"cvv": 2}),
            json!({}),
        ],
    );
    corpus.add(
        "oneOf with both matching",
        json!({"oneOf": [{"required": ["a"]}, {"required": ["b"]}]}),
        &[json!({"a": 1}), json!({"a": 1, "b": 1}), json!({})],
    );
    corpus.add(
        "not",
        json!({"not": {"required": ["secret"]}}),
        &[json!({"secret": 1}), json!({"public": 1})],
    );
    corpus.add(
        "propertyNames",
        json!({"propertyNames": {"maxLength": 2, "pattern": "^[a-z]+$"}}),
        &[
            json!({"ab": 1}),
            json!({"abc": 1}),
            json!({"A": 1}),
            json!({"é": 1}),
        ],
    );
    corpus.add(
        "numeric bounds",
        json!({"properties": {"n": {"minimum": 0, "exclusiveMaximum": 10, "multipleOf": 2.5}}}),
        &[
            json!({"n": 0}),
            json!({"n": 7.5}),
            json!({"n": 10}),
            json!({"n": -2.5}),
            json!({"n": 3}),
        ],
    );
    corpus.add(
        "multipleOf an integer",
        json!({"properties": {"n": {"multipleOf": 3}}}),
        &[
            json!({"n": 9}),
            json!({"n": 9.0}),
            json!({"n": 10}),
            json!({"n": 4.5}),
        ],
    );
    corpus.add(
        "large integers",
        json!({"properties": {"n": {"maximum": 9007199254740992_u64}, "m": {"minimum": -9223372036854775808_i64}}}),
        &[
            json!({"n": 9007199254740992_u64}),
            json!({"n": 18446744073709551615_u64}),
            json!({"m": -9223372036854775808_i64}),
        ],
    );
    corpus.differ(
        "\\d and \\w are ASCII-only",
        json!({"properties": {"d": {"pattern": "^\\d$"}, "w": {"pattern": "^\\w+$"}}}),
        &[json!({"d": "\u{663}"}), json!({"w": "é"})],
        ECMA_CLASSES,
    );
    corpus.add(
        "\\d and \\w on ASCII",
        json!({"properties": {"d": {"pattern": "^\\d$"}, "w": {"pattern": "^\\w+$"}}}),
        &[
            json!({"d": "7"}),
            json!({"d": "x"}),
            json!({"w": "a_1"}),
            json!({"w": "a-1"}),
        ],
    );
    corpus.differ(
        "multipleOf a decimal fraction",
        json!({"properties": {"f": {"multipleOf": 0.01}}}),
        &[json!({"f": 0.07}), json!({"f": 1e308})],
        FLOAT_DIVISION,
    );
    corpus.add(
        "multipleOf a decimal fraction, exactly",
        json!({"properties": {"f": {"multipleOf": 0.01}}}),
        &[json!({"f": 0.5}), json!({"f": 0.015}), json!({"f": 3})],
    );
    corpus.add(
        "boolean schemas",
        json!({"properties": {"yes": true, "no": false}}),
        &[json!({"yes": 1}), json!({"no": 1}), json!({})],
    );
    corpus.add("the false schema", json!(false), &[json!({})]);
    corpus.add(
        "the true schema",
        json!(true),
        &[json!({"a": [1, {"b": null}]})],
    );
    corpus.add("the empty schema", json!({}), &[json!({})]);
    corpus.add(
        "type lists",
        json!({"properties": {"v": {"type": ["string", "null"]}}}),
        &[json!({"v": null}), json!({"v": "s"}), json!({"v": 0})],
    );
    corpus.add(
        "a root that is not an object type",
        json!({"type": "array"}),
        &[json!({})],
    );
    corpus.add(
        "unknown keywords are ignored",
        json!({"x-note": "anything", "properties": {"a": {"x-more": {"type": "string"}}}}),
        &[json!({"a": 1})],
    );
    for (name, schema) in [
        ("unknown type", json!({"type": "strin"})),
        (
            "negative minLength",
            json!({"properties": {"a": {"minLength": -1}}}),
        ),
        (
            "fractional maxItems",
            json!({"properties": {"a": {"maxItems": 1.5}}}),
        ),
        ("required not an array", json!({"required": "a"})),
        ("required with duplicates", json!({"required": ["a", "a"]})),
        (
            "a property schema that is a number",
            json!({"properties": {"a": 1}}),
        ),
        (
            "multipleOf zero",
            json!({"properties": {"a": {"multipleOf": 0}}}),
        ),
        ("type of a wrong kind", json!({"type": 5})),
        ("a schema that is a string", json!("string")),
        ("a schema that is an array", json!([{"type": "string"}])),
        ("$ref not a string", json!({"$ref": 1})),
        (
            "$id with a fragment",
            json!({"$id": "https://example.com/a#frag"}),
        ),
        ("allOf empty", json!({"allOf": []})),
        ("enum not an array", json!({"enum": 1})),
    ] {
        corpus.add(name, schema, &[json!({})]);
    }
}

/// Schemas and data from the shared generators, drawn with a fixed seed: the same corpus on
/// every run.
fn generated(corpus: &mut Corpus, schemas: usize, data_per_schema: usize) {
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[14; 32]),
    );
    let schema_strategy = generate::schema().boxed();
    let data_strategy = generate::object().prop_map(Value::Object).boxed();
    for index in 0..schemas {
        let schema = schema_strategy.new_tree(&mut runner).unwrap().current();
        let data: Vec<Value> = (0..data_per_schema)
            .map(|_| data_strategy.new_tree(&mut runner).unwrap().current())
            .collect();
        corpus.add(&format!("generated {index}"), schema, &data);
    }
}

fn python(test: &str) -> Option<PathBuf> {
    match std::env::var_os("TENANTSYNC_TEST_PYTHON") {
        Some(python) if !python.is_empty() => Some(PathBuf::from(python)),
        _ => {
            eprintln!(
                "skipping {test}: TENANTSYNC_TEST_PYTHON is not set \
                 (TENANTSYNC_TEST_PYTHON=$(dev/python venv | tail -n1))"
            );
            None
        }
    }
}

#[test]
fn verdicts_agree_with_python_jsonschema() {
    let Some(python) = python("verdicts_agree_with_python_jsonschema") else {
        return;
    };
    let mut corpus = Corpus(Vec::new());
    hand_written(&mut corpus);
    generated(&mut corpus, 160, 2);
    let cases = corpus.0;

    let dir = tempfile::tempdir().unwrap();
    let (script, input, output) = (
        dir.path().join("judge.py"),
        dir.path().join("corpus.json"),
        dir.path().join("verdicts.json"),
    );
    std::fs::write(&script, PYTHON_JUDGE).unwrap();
    std::fs::write(&input, serde_json::to_vec_pretty(&cases).unwrap()).unwrap();
    let run = Command::new(&python)
        .arg(&script)
        .arg(&input)
        .arg(&output)
        .output()
        .expect("TENANTSYNC_TEST_PYTHON runs");
    assert!(
        run.status.success(),
        "the Python judge failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let theirs: Vec<Theirs> = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
    assert_eq!(theirs.len(), cases.len());

    let mut disagreements = Vec::new();
    let mut counts = std::collections::BTreeMap::<(Verdict, Verdict), usize>::new();
    for (case, theirs) in cases.iter().zip(&theirs) {
        *counts.entry((case.ours, theirs.verdict)).or_default() += 1;
        let agree = match case.differs {
            // A documented difference must stay one: both judge the data, oppositely.
            Some(_) => {
                case.ours != theirs.verdict
                    && case.ours != Verdict::Refused
                    && theirs.verdict != Verdict::Refused
            }
            None => {
                case.ours == theirs.verdict
                    || (case.ours == Verdict::Refused && case.only_us.is_some())
            }
        };
        if !agree {
            disagreements.push(format!(
                "{}: schema {} data {}: ours {:?}{}, Python's {:?}{}",
                case.name,
                case.schema,
                case.data,
                case.ours,
                Validator::new(&case.schema)
                    .err()
                    .map(|error| format!(" ({error})"))
                    .unwrap_or_default(),
                theirs.verdict,
                theirs
                    .why
                    .as_ref()
                    .map(|why| format!(" ({why})"))
                    .unwrap_or_default(),
            ));
        }
    }
    eprintln!(
        "{} cases; (ours, Python's) verdicts: {counts:?}",
        cases.len()
    );
    for disagreement in &disagreements {
        eprintln!("DISAGREEMENT {disagreement}");
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} verdicts disagree with Python's jsonschema (listed above)",
        disagreements.len(),
        cases.len()
    );
    // The corpus exercises every verdict, so agreement is not vacuous.
    for verdict in [Verdict::Valid, Verdict::Invalid, Verdict::Refused] {
        let both = counts.get(&(verdict, verdict)).copied().unwrap_or_default();
        assert!(both >= 30, "only {both} cases are {verdict:?} for both");
    }
}
