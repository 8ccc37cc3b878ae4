//! Validation never panics: random small schemas are either compiled or refused as invalid
//! (with a pointer into the schema), and compiled ones check random objects, reporting at most
//! `MAX_VIOLATIONS` violations whose pointers name places in the data. Hand-picked hostile
//! schemas (huge numbers, deep nesting, odd patterns) get the same treatment.

#[path = "validate_gen.rs"]
mod generate;

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use tenantsync_schema::{SchemaError, Validator};

/// Compiles `schema` and checks every object; fails the case on anything but a compiled
/// validator or an `Invalid` refusal pointing into the schema.
fn check(schema: &Value, data: &[Map<String, Value>]) -> Result<(), TestCaseError> {
    match Validator::new(schema) {
        Ok(validator) => {
            prop_assert_eq!(validator.schema(), schema);
            for object in data {
                if let Err(violations) = validator.validate(object) {
                    prop_assert!(!violations.is_empty());
                    prop_assert!(violations.len() <= Validator::MAX_VIOLATIONS);
                    let whole = Value::Object(object.clone());
                    for violation in &violations {
                        prop_assert!(
                            whole.pointer(&violation.pointer).is_some(),
                            "{:?} does not point into {}",
                            violation,
                            whole
                        );
                    }
                }
            }
        }
        Err(SchemaError::Invalid { pointer, message }) => {
            prop_assert!(!message.is_empty());
            prop_assert!(
                schema.pointer(&pointer).is_some(),
                "'{}' ({}) does not point into {}",
                pointer,
                message,
                schema
            );
        }
        Err(other) => prop_assert!(false, "unexpected error {other:?} for {schema}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_schemas_compile_or_are_refused(
        schema in generate::schema(),
        data in prop::collection::vec(generate::object(), 1..4),
    ) {
        check(&schema, &data)?;
    }

    #[test]
    fn any_json_is_compiled_or_refused(
        schema in generate::value(),
        data in prop::collection::vec(generate::object(), 1..3),
    ) {
        check(&schema, &data)?;
    }

    #[test]
    fn odd_references_compile_or_are_refused(
        id in prop_oneof![Just(String::new()), ".{0,10}", "[a-z]{1,5}:(//)?[a-z/.#%]{0,10}"],
        anchor in "[A-Za-z_#/%.-]{0,6}",
        reference in prop_oneof![".{0,10}", "[a-z]{1,5}:(//)?[a-z/.#%]{0,10}", "#[A-Za-z_/%~0-9-]{0,8}"],
        data in prop::collection::vec(generate::object(), 1..3),
    ) {
        let mut schema = json!({
            "$defs": {"x": {"$anchor": anchor, "$dynamicAnchor": anchor, "type": "string"}},
            "properties": {"a": {"$ref": reference}, "b": {"$dynamicRef": reference}},
        });
        if !id.is_empty() {
            schema["$id"] = json!(id);
            schema["$defs"]["y"] = json!({"$id": id, "$ref": reference});
        }
        check(&schema, &data)?;
    }

    #[test]
    fn odd_patterns_compile_or_are_refused(
        pattern in ".{0,12}",
        data in prop::collection::vec(generate::object(), 1..3),
    ) {
        let schema = json!({
            "additionalProperties": {"pattern": pattern},
            "patternProperties": {pattern.clone(): true},
            "propertyNames": {"pattern": pattern},
        });
        check(&schema, &data)?;
    }
}

#[test]
fn huge_numbers_compile_or_are_refused() {
    let huge = [
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1e308),
        json!(-1e308),
        json!(f64::MIN_POSITIVE),
        json!(5e-324),
    ];
    let data: Vec<Map<String, Value>> = huge
        .iter()
        .map(|n| Map::from_iter([("a".to_owned(), n.clone())]))
        .chain([Map::from_iter([("a".to_owned(), json!("x".repeat(100)))])])
        .collect();
    for number in &huge {
        for keyword in [
            "minimum",
            "maximum",
            "exclusiveMinimum",
            "exclusiveMaximum",
            "multipleOf",
            "minLength",
            "maxLength",
            "minItems",
            "maxItems",
            "minProperties",
            "maxProperties",
            "minContains",
            "maxContains",
        ] {
            let schema = json!({
                "properties": {"a": {keyword: number, "contains": true}},
                keyword: number,
            });
            check(&schema, &data).unwrap();
        }
    }
}

#[test]
fn deep_schemas_are_refused_and_deep_data_is_checked() {
    let mut schema = json!({"type": "string"});
    for _ in 0..300 {
        schema = json!({"properties": {"a": schema}});
    }
    match Validator::new(&schema) {
        Err(SchemaError::Invalid { pointer, .. }) => assert_eq!(pointer, ""),
        other => panic!("a schema 600 levels deep should be refused, got {other:?}"),
    }
    // The deepest data a JSON parser hands over (serde_json stops at 128 levels), against a
    // schema that recurses as deep as the data goes.
    let recursive = Validator::new(&json!({
        "additionalProperties": {"$ref": "#"},
        "items": {"$ref": "#"},
        "not": {"type": "string"},
    }))
    .unwrap();
    let mut data = json!("leaf");
    for level in 0..126 {
        data = if level % 2 == 0 {
            json!([data])
        } else {
            json!({ "a": data })
        };
    }
    let Value::Object(object) = json!({ "a": data }) else {
        unreachable!()
    };
    let violations = recursive.validate(&object).unwrap_err();
    assert_eq!(violations.len(), 1);
    let whole = Value::Object(object);
    assert_eq!(whole.pointer(&violations[0].pointer), Some(&json!("leaf")));
}

#[test]
fn many_violations_are_capped() {
    let validator = Validator::new(&json!({"additionalProperties": {"type": "string"}})).unwrap();
    let object: Map<String, Value> = (0..100).map(|i| (format!("p{i}"), json!(i))).collect();
    let violations = validator.validate(&object).unwrap_err();
    assert_eq!(violations.len(), Validator::MAX_VIOLATIONS);
}
