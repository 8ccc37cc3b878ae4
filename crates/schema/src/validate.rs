//! A dataset's JSON Schema compiled for validation.
//!
//! Every schema is read as draft 2020-12, whatever it says: a `$schema` naming another dialect is
//! refused, and so is a schema the 2020-12 meta-schema rejects. `format` is an annotation, as
//! the specification's default says: it is never checked.
//!
//! It must never reach outside the schema: every `$ref` and `$dynamicRef` must resolve inside
//! the document (a local fragment, or an `$id` or `$anchor` the document defines), checked
//! before compiling so the refusal names the reference; and the compiler is given a retriever
//! that refuses every retrieval, so nothing is fetched even if a reference slips through.
//! Patterns run on a linear-time regex engine: a tenant's schema cannot make a write take
//! exponential time, and a pattern that engine cannot compile (look-around, back-references)
//! makes the schema invalid. No input makes it panic.

use std::collections::{HashMap, HashSet};

use jsonschema::error::ValidationErrorKind;
use jsonschema::{Draft, PatternOptions, Registry, Resource, Retrieve, Uri};
use serde::Serialize;
use serde_json::{Map, Value};
use tenantsync_core::Object;

use crate::SchemaError;

/// The only dialect accepted in `$schema` (with or without an empty fragment).
const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// Where a schema without `$id` lives, as the compiler names it.
const ROOT_URI: &str = "json-schema:///";

/// How deeply a schema document may nest. Compiling and meta-validating recurse through the
/// document, so an unbounded depth could exhaust the stack; real schemas are far shallower.
const MAX_DEPTH: usize = 64;

/// One way data violates a schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// JSON pointer into the data ("" for the whole object).
    pub pointer: String,
    pub message: String,
}

impl Violation {
    /// Violations as one line of text (`at '/qty': ...; at '': ...`), for the places that keep
    /// a reason as text: a patch's rejection, a source's rejected entry.
    pub fn describe(violations: &[Violation]) -> String {
        violations
            .iter()
            .map(|v| format!("at '{}': {}", v.pointer, v.message))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A JSON Schema (draft 2020-12) compiled once; cheap to share.
#[derive(Debug)]
pub struct Validator {
    schema: Value,
    compiled: jsonschema::Validator,
}

impl Validator {
    /// Compiles `schema`, refusing an invalid schema and one that refers to anything outside
    /// itself (remote or file `$ref`s are never fetched).
    pub fn new(schema: &Value) -> Result<Self, SchemaError> {
        if depth_exceeds(schema, MAX_DEPTH) {
            return Err(invalid(
                "",
                format!("the schema nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        if let Err(error) = jsonschema::draft202012::meta::validate(schema) {
            return Err(invalid(
                error.instance_path().as_str(),
                format!("not a valid draft 2020-12 schema: {error}"),
            ));
        }
        check_references(schema)?;
        let compiled = jsonschema::options()
            .with_draft(Draft::Draft202012)
            .should_validate_formats(false)
            .with_retriever(RefuseRetrieval)
            .with_pattern_options(PatternOptions::regex())
            .build(schema)
            .map_err(|error| compile_error(schema, &error))?;
        Ok(Validator {
            schema: schema.clone(),
            compiled,
        })
    }

    /// The schema as given.
    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// Checks `data`; the violations (at most [`Validator::MAX_VIOLATIONS`]) when it fails.
    pub fn validate(&self, data: &Object) -> Result<(), Vec<Violation>> {
        let instance = Value::Object(data.clone());
        let violations: Vec<Violation> = self
            .compiled
            .iter_errors(&instance)
            .take(Self::MAX_VIOLATIONS)
            .map(|error| Violation {
                pointer: error.instance_path().as_str().to_owned(),
                message: error.to_string(),
            })
            .collect();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }
}

impl Validator {
    pub const MAX_VIOLATIONS: usize = 20;
}

fn invalid(pointer: &str, message: impl Into<String>) -> SchemaError {
    SchemaError::Invalid {
        pointer: pointer.to_owned(),
        message: message.into(),
    }
}

/// A compile error's instance path is the place in the schema (the compiler reads the schema as
/// its instance); an uncompilable `pattern` is reported at the subschema holding it, so the
/// pointer is made to name the keyword itself.
fn compile_error(schema: &Value, error: &jsonschema::ValidationError<'_>) -> SchemaError {
    let mut pointer = error.instance_path().as_str().to_owned();
    if let ValidationErrorKind::Format { format } = error.kind() {
        let holder = schema
            .pointer(&pointer)
            .and_then(|holder| holder.get("pattern"));
        if format == "regex" && holder == Some(error.instance().as_ref()) {
            pointer.push_str("/pattern");
        }
    }
    invalid(&pointer, error.to_string())
}

/// The compiler's retriever: a schema is only ever what it contains.
struct RefuseRetrieval;

impl Retrieve for RefuseRetrieval {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!("'{uri}' is outside the schema: references are never fetched").into())
    }
}

fn depth_exceeds(value: &Value, limit: usize) -> bool {
    if limit == 0 {
        return true;
    }
    match value {
        Value::Array(items) => items.iter().any(|item| depth_exceeds(item, limit - 1)),
        Value::Object(map) => map.values().any(|item| depth_exceeds(item, limit - 1)),
        _ => false,
    }
}

/// Keywords whose value is one subschema, an array of subschemas, or an object of subschemas
/// (draft 2020-12, plus `definitions`, which the compiler also reads as a place for schemas).
const ONE_SCHEMA: &[&str] = &[
    "additionalProperties",
    "contains",
    "contentSchema",
    "else",
    "if",
    "items",
    "not",
    "propertyNames",
    "then",
    "unevaluatedItems",
    "unevaluatedProperties",
];
const SCHEMA_ARRAYS: &[&str] = &["allOf", "anyOf", "oneOf", "prefixItems"];
const SCHEMA_MAPS: &[&str] = &[
    "$defs",
    "definitions",
    "dependentSchemas",
    "patternProperties",
    "properties",
];

/// A reference found in the schema, with the base URI it is resolved against.
struct Reference {
    pointer: String,
    base: Uri<String>,
    target: String,
}

/// What the document defines and refers to, gathered by one walk over its subschemas.
struct Walk<'a> {
    /// Every resource (the root, each `$id`) by its URI without fragment.
    resources: HashMap<String, &'a Value>,
    /// `(resource URI, name)` of every `$anchor` and `$dynamicAnchor`.
    anchors: HashSet<(String, String)>,
    references: Vec<Reference>,
    registry: Registry,
}

/// Refuses, with the pointer of the reference, any `$ref` or `$dynamicRef` that does not
/// resolve inside the document; also refuses a `$schema` naming another dialect anywhere (an
/// embedded resource would otherwise switch the compiler to that dialect).
fn check_references(schema: &Value) -> Result<(), SchemaError> {
    let registry = Registry::try_new(ROOT_URI, Resource::from_contents(Value::Bool(true)))
        .map_err(|error| invalid("", error.to_string()))?;
    let root =
        Uri::parse(ROOT_URI.to_owned()).map_err(|(error, _)| invalid("", error.to_string()))?;
    let mut walk = Walk {
        resources: HashMap::new(),
        anchors: HashSet::new(),
        references: Vec::new(),
        registry,
    };
    walk.schema(schema, &root, &mut String::new())?;
    for reference in &walk.references {
        walk.resolve(reference)?;
    }
    Ok(())
}

impl<'a> Walk<'a> {
    fn schema(
        &mut self,
        schema: &'a Value,
        base: &Uri<String>,
        pointer: &mut String,
    ) -> Result<(), SchemaError> {
        let Value::Object(map) = schema else {
            return Ok(());
        };
        if let Some(dialect) = map.get("$schema") {
            let named = dialect.as_str().unwrap_or_default();
            if named.strip_suffix('#').unwrap_or(named) != DIALECT {
                return Err(invalid(
                    &format!("{pointer}/$schema"),
                    format!("only draft 2020-12 ('{DIALECT}') is supported"),
                ));
            }
        }
        let mut base = base.clone();
        if let Some(Value::String(id)) = map.get("$id") {
            base = self.join(&base, id, &format!("{pointer}/$id"))?;
            self.resources.insert(without_fragment(&base), schema);
        } else if pointer.is_empty() {
            self.resources.insert(without_fragment(&base), schema);
        }
        for keyword in ["$anchor", "$dynamicAnchor"] {
            if let Some(Value::String(name)) = map.get(keyword) {
                self.anchors.insert((without_fragment(&base), name.clone()));
            }
        }
        for keyword in ["$ref", "$dynamicRef"] {
            if let Some(Value::String(target)) = map.get(keyword) {
                self.references.push(Reference {
                    pointer: format!("{pointer}/{}", escape(keyword)),
                    base: base.clone(),
                    target: target.clone(),
                });
            }
        }
        self.subschemas(map, &base, pointer)
    }

    fn subschemas(
        &mut self,
        map: &'a Map<String, Value>,
        base: &Uri<String>,
        pointer: &mut String,
    ) -> Result<(), SchemaError> {
        for (keyword, value) in map {
            let keyword = keyword.as_str();
            let children: Vec<(String, &'a Value)> = if ONE_SCHEMA.contains(&keyword) {
                vec![(String::new(), value)]
            } else if SCHEMA_ARRAYS.contains(&keyword) {
                match value {
                    Value::Array(items) => items
                        .iter()
                        .enumerate()
                        .map(|(index, item)| (format!("/{index}"), item))
                        .collect(),
                    _ => Vec::new(),
                }
            } else if SCHEMA_MAPS.contains(&keyword) {
                match value {
                    Value::Object(entries) => entries
                        .iter()
                        .map(|(name, item)| (format!("/{}", escape(name)), item))
                        .collect(),
                    _ => Vec::new(),
                }
            } else {
                Vec::new()
            };
            for (suffix, child) in children {
                let length = pointer.len();
                pointer.push('/');
                pointer.push_str(&escape(keyword));
                pointer.push_str(&suffix);
                let result = self.schema(child, base, pointer);
                pointer.truncate(length);
                result?;
            }
        }
        Ok(())
    }

    fn join(
        &self,
        base: &Uri<String>,
        reference: &str,
        at: &str,
    ) -> Result<Uri<String>, SchemaError> {
        let base = base.borrow();
        self.registry
            .resolve_against(&base, reference)
            .map(|uri| (*uri).clone())
            .map_err(|error| {
                invalid(
                    at,
                    format!("'{reference}' is not a valid URI reference: {error}"),
                )
            })
    }

    fn resolve(&self, reference: &Reference) -> Result<(), SchemaError> {
        let target = self.join(&reference.base, &reference.target, &reference.pointer)?;
        let outside = || {
            invalid(
                &reference.pointer,
                format!(
                    "'{}' does not resolve inside the schema (references are never fetched)",
                    reference.target
                ),
            )
        };
        let Some(resource) = self.resources.get(&without_fragment(&target)) else {
            return Err(outside());
        };
        let fragment = target
            .fragment()
            .map(|fragment| fragment.decode().to_string_lossy().into_owned())
            .unwrap_or_default();
        let found = if fragment.is_empty() {
            true
        } else if fragment.starts_with('/') {
            resource.pointer(&fragment).is_some()
        } else {
            self.anchors
                .contains(&(without_fragment(&target), fragment.clone()))
        };
        if found { Ok(()) } else { Err(outside()) }
    }
}

fn without_fragment(uri: &Uri<String>) -> String {
    let text = uri.as_str();
    match text.find('#') {
        Some(at) => text[..at].to_owned(),
        None => text.to_owned(),
    }
}

/// Escapes a JSON pointer segment (RFC 6901).
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn refusal(schema: Value) -> (String, String) {
        match Validator::new(&schema) {
            Err(SchemaError::Invalid { pointer, message }) => (pointer, message),
            other => panic!("{schema} should be refused, got {other:?}"),
        }
    }

    fn data(value: Value) -> Object {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn refuses_references_outside_the_schema_at_the_reference() {
        for (schema, at) in [
            (
                json!({"properties": {"a": {"$ref": "https://example.com/s.json"}}}),
                "/properties/a/$ref",
            ),
            (
                json!({"items": {"$dynamicRef": "file:///etc/passwd#x"}}),
                "/items/$dynamicRef",
            ),
            (
                json!({"$id": "https://example.com/r", "anyOf": [{"$ref": "other"}]}),
                "/anyOf/0/$ref",
            ),
            (
                json!({"$defs": {"a~b/c": {"$ref": "#/$defs/missing"}}}),
                "/$defs/a~0b~1c/$ref",
            ),
            (json!({"not": {"$ref": "#no-anchor"}}), "/not/$ref"),
        ] {
            let (pointer, message) = refusal(schema);
            assert_eq!(pointer, at);
            assert!(
                message.contains("does not resolve inside the schema"),
                "{message}"
            );
        }
    }

    #[test]
    fn the_retriever_refuses_what_the_walk_does_not_see() {
        // A pointer into an unknown keyword reaches a remote reference only the compiler finds.
        let (_, message) = refusal(json!({
            "x-hidden": {"$ref": "https://example.com/s.json"},
            "properties": {"a": {"$ref": "#/x-hidden"}},
        }));
        assert!(message.contains("never fetched"), "{message}");
    }

    #[test]
    fn accepts_references_inside_the_schema() {
        let validator = Validator::new(&json!({
            "$id": "https://example.com/root",
            "$defs": {
                "id": {"$id": "id", "type": "integer"},
                "name": {"$anchor": "name", "type": "string"},
                "a b": {"minimum": 0},
            },
            "properties": {
                "id": {"$ref": "id"},
                "name": {"$ref": "#name"},
                "n": {"$ref": "#/$defs/a%20b"},
                "self": {"$ref": "#"},
                "remote-looking": {"const": {"$ref": "https://example.com/data"}},
            },
        }))
        .unwrap();
        assert_eq!(
            validator.validate(&data(json!({"id": 1, "name": "x", "n": 2}))),
            Ok(())
        );
        let violations = validator
            .validate(&data(json!({"id": "1", "self": {"n": -1}})))
            .unwrap_err();
        let pointers: Vec<&str> = violations.iter().map(|v| v.pointer.as_str()).collect();
        assert_eq!(pointers, ["/id", "/self/n"]);
    }

    #[test]
    fn only_draft_2020_12() {
        let (pointer, _) = refusal(json!({"$schema": "http://json-schema.org/draft-07/schema#"}));
        assert_eq!(pointer, "/$schema");
        let (pointer, _) = refusal(json!({"properties": {"a": {"$id": "https://example.com/a",
            "$schema": "https://json-schema.org/draft/2019-09/schema"}}}));
        assert_eq!(pointer, "/properties/a/$schema");
        Validator::new(&json!({"$schema": "https://json-schema.org/draft/2020-12/schema#"}))
            .unwrap();
    }

    #[test]
    fn invalid_schemas_are_refused_at_the_offending_place() {
        assert_eq!(
            refusal(json!({"properties": {"a": {"type": "strin"}}})).0,
            "/properties/a/type"
        );
        assert_eq!(refusal(json!({"required": ["a", "a"]})).0, "/required");
        assert_eq!(
            refusal(json!({"items": {"pattern": "("}})).0,
            "/items/pattern"
        );
        // Look-around needs a backtracking engine, which patterns never run on.
        assert_eq!(
            refusal(json!({"items": {"pattern": "(?=a)"}})).0,
            "/items/pattern"
        );
        assert_eq!(refusal(json!("string")).0, "");
    }

    #[test]
    fn format_is_an_annotation() {
        let validator = Validator::new(&json!({"properties": {"e": {"format": "email"}}})).unwrap();
        assert_eq!(
            validator.validate(&data(json!({"e": "not an email"}))),
            Ok(())
        );
    }

    #[test]
    fn violations_name_the_place_in_the_data() {
        let schema = json!({
            "properties": {"a": {"type": "string"}, "b": {"items": {"type": "integer"}}},
            "required": ["c"],
        });
        let validator = Validator::new(&schema).unwrap();
        assert_eq!(validator.schema(), &schema);
        let violations = validator
            .validate(&data(json!({"a": 1, "b": [1, "x"]})))
            .unwrap_err();
        let found: Vec<(&str, &str)> = violations
            .iter()
            .map(|v| (v.pointer.as_str(), v.message.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                ("/a", "1 is not of type \"string\""),
                ("/b/1", "\"x\" is not of type \"integer\""),
                ("", "\"c\" is a required property"),
            ]
        );
    }
}
