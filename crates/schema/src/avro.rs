//! Avro: schemas derived from JSON Schemas, their compatibility, and the encoding of a record's
//! data in the Confluent wire format.
//!
//! A derived Avro schema must read back exactly the data the JSON Schema accepts: decoding an
//! encoded record gives the stored JSON object again (an absent optional field decodes as
//! `null`). So [`AvroSchema::derive`] maps only what has an exact Avro equivalent and refuses
//! the rest at registration, with a JSON pointer into the JSON Schema:
//!
//! | JSON Schema (draft 2020-12) | Avro |
//! |---|---|
//! | `object` with `properties` and `additionalProperties: false` | `record`, fields in property name order; nested records and enums named from their path (`{dataset}_{property}`, `..._item`, `..._value`, with `_2`... when taken) |
//! | a property listed in `required` | a field of its type |
//! | a property not in `required` | `["null", T]` with `"default": null` |
//! | `string` | `string` |
//! | `string` with an `enum` of valid Avro symbols (`[A-Za-z_][A-Za-z0-9_]*`) | `enum` |
//! | `string` with any other `enum` | `string` |
//! | `integer` | `long` |
//! | `number` | `double` (an integer a double cannot hold exactly is refused when encoding) |
//! | `boolean` | `boolean` |
//! | `null` | `null` |
//! | `type: [T, "null"]` (either order) | `["null", T]` |
//! | `enum` or `const` without `type` | the type of its values, as above |
//! | `array` with `items` | `array` |
//! | `object` without `properties`, with an `additionalProperties` schema | `map` |
//!
//! The record is named after the dataset, made a valid Avro name (`web-hits` -> `web_hits`).
//!
//! Refused: an object without `additionalProperties: false` (Avro would drop its extra fields),
//! an object with both `properties` and an `additionalProperties` schema, `true`/`false` and
//! type-less schemas, `anyOf`, `oneOf`, `allOf`, `not`, `if`/`then`/`else`, `$ref`,
//! `$dynamicRef`, `patternProperties`, `prefixItems`, `additionalItems`, `dependentSchemas`,
//! `unevaluatedProperties`, `unevaluatedItems`, unions of types other than with `null`, an
//! `array` without `items`, property names that are not Avro names, a `required` name missing
//! from `properties`, and `integer` bounds beyond a long. Keywords that only constrain values
//! (`minimum`, `maximum`, `pattern`, `minLength`, `format`, `title`, `description`, `default`,
//! ...) are ignored: the data has already passed the JSON Schema.
//!
//! An Avro schema given directly ([`AvroSchema::parse`]) must be a record; the logical types
//! `decimal`, `big-decimal` and `duration` (no JSON form here) and `uuid` on `fixed` are refused.
//! Its encoding from JSON follows the schema: `int`/`long` from JSON integers, `float`/`double`
//! from any JSON number (`float` rounds to single precision), `bytes`/`fixed` from strings of code points up to U+00FF (Avro's JSON
//! encoding), an absent field from its default (or `null` when its type is nullable), a union's
//! branch from the value (the first branch it fits).
//!
//! This module never panics on data and never decides which version encodes a record (the
//! processor picks the newest that fits).

mod derive;
mod encode;
mod resolution;

use std::collections::HashMap;

use apache_avro::schema::{Name, ResolvedSchema, Schema};
use apache_avro::schema_compatibility::SchemaCompatibility;
use serde_json::{Value, json};
use tenantsync_core::Object;

use crate::{Break, SchemaError};

/// A parsed Avro schema of a record's data.
#[derive(Debug)]
pub struct AvroSchema {
    /// Always a record.
    schema: Schema,
    /// Its named types by full name, for `Ref`s.
    names: HashMap<Name, Schema>,
    text: String,
}

/// Why data could not be encoded with a schema.
#[derive(Debug, thiserror::Error)]
#[error("data does not fit the Avro schema at '{pointer}': {message}")]
pub struct EncodeError {
    pub pointer: String,
    pub message: String,
}

impl AvroSchema {
    /// Derives an Avro record schema named `name` from a JSON Schema; refuses (pointing into the
    /// JSON Schema) what has no Avro equivalent. `name` is made a valid Avro name (characters
    /// other than `[A-Za-z0-9_]` become `_`, a leading digit gets a `_` before it).
    pub fn derive(json_schema: &Value, name: &str) -> Result<Self, SchemaError> {
        let avro = derive::avro_json(json_schema, name)?;
        let schema = Schema::parse(&avro)
            .map_err(|e| invalid("", format!("the derived Avro schema does not parse: {e}")))?;
        Self::from_schema(schema)
    }

    /// Parses an Avro schema given directly (it must be a record).
    pub fn parse(text: &str) -> Result<Self, SchemaError> {
        let json: Value =
            serde_json::from_str(text).map_err(|e| invalid("", format!("not JSON: {e}")))?;
        refuse_unencodable(&json, "")?;
        let schema = Schema::parse(&json).map_err(|e| invalid("", e.to_string()))?;
        Self::from_schema(schema)
    }

    fn from_schema(schema: Schema) -> Result<Self, SchemaError> {
        if !matches!(schema, Schema::Record(_)) {
            return Err(invalid(
                "",
                "the Avro schema of a record's data must be a record",
            ));
        }
        let names = ResolvedSchema::try_from(&schema)
            .map_err(|e| invalid("", e.to_string()))?
            .get_names()
            .iter()
            .map(|(name, schema)| (name.clone(), (*schema).clone()))
            .collect();
        // apache_avro's Parsing Canonical Form drops defaults, which readers need; its
        // serialisation keeps them and is stable (fields in order, attributes sorted).
        let text = serde_json::to_string(&schema).map_err(|e| invalid("", e.to_string()))?;
        Ok(Self {
            schema,
            names,
            text,
        })
    }

    /// The schema's canonical JSON text, as registered and served.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// What breaks if a reader with `reader` reads data written with `writer` (Avro's schema
    /// resolution rules). Empty: it can. Each break's pointer is into the reader's [`text`]
    /// (`/fields/2/type/1`...), as deep as the failing field could be located. Stricter than
    /// Avro's specification in one way: a reader's enum must have every symbol of the writer's,
    /// even when it has a default.
    ///
    /// [`text`]: AvroSchema::text
    pub fn can_read(reader: &AvroSchema, writer: &AvroSchema, writer_version: u32) -> Vec<Break> {
        match SchemaCompatibility::can_read(&writer.schema, &reader.schema) {
            Ok(()) => Vec::new(),
            Err(error) => vec![resolution::explain(
                &reader.schema,
                &writer.schema,
                &error,
                writer_version,
                ("", &[]),
            )],
        }
    }

    /// Encodes `data` in the Confluent wire format: byte 0, the 4-byte big-endian `schema_id`,
    /// then the Avro binary encoding.
    pub fn encode(&self, schema_id: u32, data: &Object) -> Result<Vec<u8>, EncodeError> {
        let value = self.to_avro(data)?;
        let body = apache_avro::to_avro_datum(&self.schema, value).map_err(|e| EncodeError {
            pointer: String::new(),
            message: e.to_string(),
        })?;
        let mut out = Vec::with_capacity(5 + body.len());
        out.push(0);
        out.extend_from_slice(&schema_id.to_be_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }
}

/// Refuses logical types whose values have no JSON form here, or that apache_avro would
/// misread.
fn refuse_unencodable(json: &Value, ptr: &str) -> Result<(), SchemaError> {
    match json {
        Value::Object(obj) => {
            if let Some(Value::String(logical)) = obj.get("logicalType") {
                let on_fixed = obj.get("type") == Some(&json!("fixed"));
                match logical.as_str() {
                    "decimal" | "big-decimal" | "duration" => {
                        return Err(invalid(
                            ptr,
                            format!(
                                "the logical type '{logical}' has no JSON form tenantsync encodes"
                            ),
                        ));
                    }
                    "uuid" if on_fixed => {
                        return Err(invalid(
                            ptr,
                            "a uuid on `fixed` is not supported: use a string",
                        ));
                    }
                    _ => {}
                }
            }
            for (key, value) in obj {
                if key != "default" {
                    refuse_unencodable(value, &child(ptr, key))?;
                }
            }
            Ok(())
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| refuse_unencodable(item, &child(ptr, &i.to_string()))),
        _ => Ok(()),
    }
}

/// `ptr` followed by the JSON pointer token `key`.
fn child(ptr: &str, key: &str) -> String {
    format!("{ptr}/{}", key.replace('~', "~0").replace('/', "~1"))
}

fn invalid(pointer: &str, message: impl Into<String>) -> SchemaError {
    SchemaError::Invalid {
        pointer: pointer.to_string(),
        message: message.into(),
    }
}
