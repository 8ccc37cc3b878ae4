//! JSON Schema to Avro: the mapping in the parent module's table, refusing the rest.

use std::collections::HashSet;

use serde_json::{Map, Value, json};

use super::{child, invalid};
use crate::SchemaError;

const PRIMITIVES: [&str; 14] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string", "record", "enum",
    "array", "map", "fixed", "union",
];

/// Keywords that change which values are accepted in ways a plain Avro type cannot express.
const REFUSED: [&str; 16] = [
    "$ref",
    "$dynamicRef",
    "$recursiveRef",
    "anyOf",
    "oneOf",
    "allOf",
    "not",
    "if",
    "then",
    "else",
    "patternProperties",
    "prefixItems",
    "additionalItems",
    "dependentSchemas",
    "unevaluatedProperties",
    "unevaluatedItems",
];

/// The Avro schema (as JSON) of a record's data, a record named after `name`.
pub(super) fn avro_json(json_schema: &Value, name: &str) -> Result<Value, SchemaError> {
    let mut deriver = Deriver {
        // A named type called like a primitive would not parse in every client.
        used: PRIMITIVES.iter().map(|p| p.to_string()).collect(),
    };
    let avro = deriver.ty(json_schema, "", &avro_name(name))?;
    if avro.get("type") != Some(&json!("record")) {
        return Err(invalid(
            "",
            "a record's schema must be an object with `properties` and `additionalProperties: false`",
        ));
    }
    Ok(avro)
}

struct Deriver {
    /// Names of named types given so far: Avro names must be unique in a schema.
    used: HashSet<String>,
}

impl Deriver {
    fn unique(&mut self, candidate: &str) -> String {
        let mut name = candidate.to_string();
        let mut n = 2;
        while self.used.contains(&name) {
            name = format!("{candidate}_{n}");
            n += 1;
        }
        self.used.insert(name.clone());
        name
    }

    /// The Avro type (as JSON) of values accepted by `schema`, at `ptr` in the JSON Schema;
    /// `name` is the name a named type made here gets (made unique).
    fn ty(&mut self, schema: &Value, ptr: &str, name: &str) -> Result<Value, SchemaError> {
        let obj = match schema {
            Value::Object(obj) => obj,
            Value::Bool(true) => {
                return Err(invalid(
                    ptr,
                    "`true` accepts any value, which has no Avro equivalent: give a `type`",
                ));
            }
            Value::Bool(false) => {
                return Err(invalid(
                    ptr,
                    "`false` accepts no value: it has no Avro equivalent",
                ));
            }
            _ => return Err(invalid(ptr, "a schema must be an object")),
        };
        for keyword in REFUSED {
            if obj.contains_key(keyword) {
                return Err(invalid(
                    &child(ptr, keyword),
                    format!("`{keyword}` has no Avro equivalent"),
                ));
            }
        }
        let (types, types_ptr) = types(obj, ptr)?;
        let nullable = types.contains(&"null");
        let others: Vec<&str> = types.iter().copied().filter(|t| *t != "null").collect();
        let ty = match others.as_slice() {
            [] => return Ok(json!("null")),
            [one] => self.single(one, obj, ptr, name)?,
            _ => {
                return Err(invalid(
                    &types_ptr,
                    format!(
                        "a union of types other than with null ({}) has no Avro equivalent here",
                        others.join(", ")
                    ),
                ));
            }
        };
        Ok(if nullable { json!(["null", ty]) } else { ty })
    }

    fn single(
        &mut self,
        ty: &str,
        obj: &Map<String, Value>,
        ptr: &str,
        name: &str,
    ) -> Result<Value, SchemaError> {
        Ok(match ty {
            "string" => match obj.get("enum").and_then(enum_symbols) {
                Some(symbols) => {
                    json!({"type": "enum", "name": self.unique(name), "symbols": symbols})
                }
                None => json!("string"),
            },
            "integer" => {
                check_long_bounds(obj, ptr)?;
                json!("long")
            }
            "number" => json!("double"),
            "boolean" => json!("boolean"),
            "array" => match obj.get("items") {
                Some(items) => {
                    let items = self.ty(items, &child(ptr, "items"), &format!("{name}_item"))?;
                    json!({"type": "array", "items": items})
                }
                None => {
                    return Err(invalid(
                        ptr,
                        "an array without `items` may hold any value, which has no Avro equivalent",
                    ));
                }
            },
            "object" => self.object(obj, ptr, name)?,
            other => {
                return Err(invalid(
                    &child(ptr, "type"),
                    format!("unknown type '{other}'"),
                ));
            }
        })
    }

    fn object(
        &mut self,
        obj: &Map<String, Value>,
        ptr: &str,
        name: &str,
    ) -> Result<Value, SchemaError> {
        let properties = match obj.get("properties") {
            None => None,
            Some(Value::Object(p)) => Some(p),
            Some(_) => return Err(invalid(&child(ptr, "properties"), "must be an object")),
        };
        let has_properties = properties.is_some_and(|p| !p.is_empty());
        let extra_ptr = child(ptr, "additionalProperties");
        match obj.get("additionalProperties") {
            Some(Value::Bool(false)) => self.record(obj, properties, ptr, name),
            Some(values @ Value::Object(_)) if !has_properties => {
                let values = self.ty(values, &extra_ptr, &format!("{name}_value"))?;
                Ok(json!({"type": "map", "values": values}))
            }
            Some(Value::Object(_)) => Err(invalid(
                &extra_ptr,
                "an object with both `properties` and an `additionalProperties` schema has no Avro \
                 equivalent (a record cannot carry extra fields, a map cannot type fields apart)",
            )),
            Some(Value::Bool(true)) | None => Err(invalid(
                if obj.contains_key("additionalProperties") {
                    &extra_ptr
                } else {
                    ptr
                },
                "an object that allows properties beyond its `properties` needs \
                 `additionalProperties: false` (or, without `properties`, an \
                 `additionalProperties` schema for a map): Avro would drop the extra fields, so \
                 the decoded value would not equal the stored one",
            )),
            Some(_) => Err(invalid(&extra_ptr, "must be a boolean or a schema")),
        }
    }

    fn record(
        &mut self,
        obj: &Map<String, Value>,
        properties: Option<&Map<String, Value>>,
        ptr: &str,
        name: &str,
    ) -> Result<Value, SchemaError> {
        let empty = Map::new();
        let properties = properties.unwrap_or(&empty);
        let required_ptr = child(ptr, "required");
        let required: Vec<&str> = match obj.get("required") {
            None => Vec::new(),
            Some(Value::Array(names)) => {
                let mut required = Vec::with_capacity(names.len());
                for (i, n) in names.iter().enumerate() {
                    let at = child(&required_ptr, &i.to_string());
                    let Some(n) = n.as_str() else {
                        return Err(invalid(&at, "must be a string"));
                    };
                    if !properties.contains_key(n) {
                        return Err(invalid(
                            &at,
                            format!(
                                "'{n}' is required but not in `properties`, which \
                                 `additionalProperties: false` makes the only ones allowed"
                            ),
                        ));
                    }
                    required.push(n);
                }
                required
            }
            Some(_) => return Err(invalid(&required_ptr, "must be an array of strings")),
        };
        let record_name = self.unique(name);
        let properties_ptr = child(ptr, "properties");
        let mut fields = Vec::with_capacity(properties.len());
        for (key, schema) in properties {
            let at = child(&properties_ptr, key);
            if !is_avro_name(key) {
                return Err(invalid(
                    &at,
                    format!("'{key}' is not a valid Avro field name ([A-Za-z_][A-Za-z0-9_]*)"),
                ));
            }
            let ty = self.ty(schema, &at, &format!("{record_name}_{key}"))?;
            let field = if required.contains(&key.as_str()) {
                json!({"name": key, "type": ty})
            } else if ty == json!("null") || ty.get(0) == Some(&json!("null")) {
                json!({"name": key, "type": ty, "default": null})
            } else {
                json!({"name": key, "type": ["null", ty], "default": null})
            };
            fields.push(field);
        }
        Ok(json!({"type": "record", "name": record_name, "fields": fields}))
    }
}

/// The JSON types `obj` accepts, and where they are said.
fn types<'a>(
    obj: &'a Map<String, Value>,
    ptr: &str,
) -> Result<(Vec<&'a str>, String), SchemaError> {
    let type_ptr = child(ptr, "type");
    let mut types: Vec<&str> = Vec::new();
    match obj.get("type") {
        Some(Value::String(t)) => types.push(t),
        Some(Value::Array(list)) if !list.is_empty() => {
            for (i, t) in list.iter().enumerate() {
                let Some(t) = t.as_str() else {
                    return Err(invalid(
                        &child(&type_ptr, &i.to_string()),
                        "must be a string",
                    ));
                };
                if !types.contains(&t) {
                    types.push(t);
                }
            }
        }
        Some(_) => {
            return Err(invalid(
                &type_ptr,
                "must be a type name or a non-empty array of them",
            ));
        }
        None => {
            // Without `type`, an `enum` or `const` says the types of the values it allows.
            let (key, values) = match (obj.get("enum"), obj.get("const")) {
                (Some(Value::Array(values)), _) => ("enum", values.iter().collect::<Vec<_>>()),
                (_, Some(value)) => ("const", vec![value]),
                _ => {
                    return Err(invalid(
                        ptr,
                        "no `type`: a value of any type has no Avro equivalent",
                    ));
                }
            };
            for value in values {
                let t = match value {
                    Value::Null => "null",
                    Value::Bool(_) => "boolean",
                    Value::String(_) => "string",
                    Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
                    Value::Number(_) => "number",
                    _ => {
                        return Err(invalid(
                            &child(ptr, key),
                            "an object or array value has no Avro equivalent without a `type`",
                        ));
                    }
                };
                if !types.contains(&t) {
                    types.push(t);
                }
            }
            return Ok((types, child(ptr, key)));
        }
    }
    Ok((types, type_ptr))
}

/// The symbols of a string `enum` when they make an Avro enum.
fn enum_symbols(values: &Value) -> Option<Vec<&str>> {
    let mut symbols = Vec::new();
    for value in values.as_array()? {
        match value {
            Value::Null => {}
            Value::String(s) if is_avro_name(s) && !symbols.contains(&s.as_str()) => {
                symbols.push(s)
            }
            _ => return None,
        }
    }
    (!symbols.is_empty()).then_some(symbols)
}

fn check_long_bounds(obj: &Map<String, Value>, ptr: &str) -> Result<(), SchemaError> {
    // 2^63: the first integer beyond a long, exactly representable as a double.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    for key in ["minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"] {
        let Some(Value::Number(n)) = obj.get(key) else {
            continue;
        };
        let beyond = if n.is_i64() {
            false
        } else if n.is_u64() {
            key.ends_with("aximum")
        } else {
            let f = n.as_f64().unwrap_or(0.0);
            if key.ends_with("inimum") {
                f < -LIMIT
            } else {
                f >= LIMIT
            }
        };
        if beyond {
            return Err(invalid(
                &child(ptr, key),
                "allows integers that do not fit an Avro long (64 bits)",
            ));
        }
    }
    Ok(())
}

fn is_avro_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn avro_name(s: &str) -> String {
    let mut name: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        name.insert(0, '_');
    }
    name
}
