//! JSON data to Avro values, following the schema, with a pointer into the data on failure.

use std::collections::HashMap;

use apache_avro::schema::{Namespace, RecordSchema, Schema};
use apache_avro::types::Value as Avro;
use serde_json::Value;
use tenantsync_core::Object;

use super::resolution::describe;
use super::{AvroSchema, EncodeError};

/// Where in the data a value is; rendered as a JSON pointer only on failure.
enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    fn render(&self, out: &mut String) {
        match self {
            Path::Root => {}
            Path::Key(parent, key) => {
                parent.render(out);
                out.push('/');
                out.push_str(&key.replace('~', "~0").replace('/', "~1"));
            }
            Path::Index(parent, i) => {
                parent.render(out);
                out.push('/');
                out.push_str(&i.to_string());
            }
        }
    }
}

fn fail(path: &Path, message: impl Into<String>) -> EncodeError {
    let mut pointer = String::new();
    path.render(&mut pointer);
    EncodeError {
        pointer,
        message: message.into(),
    }
}

fn kind(data: &Value) -> &'static str {
    match data {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl AvroSchema {
    /// `data` as the Avro value of this record schema.
    pub(super) fn to_avro(&self, data: &Object) -> Result<Avro, EncodeError> {
        let Schema::Record(record) = &self.schema else {
            return Err(fail(&Path::Root, "the schema is not a record"));
        };
        self.record(record, &None, data, &Path::Root)
    }

    fn value(
        &self,
        schema: &Schema,
        ns: &Namespace,
        data: &Value,
        path: &Path,
    ) -> Result<Avro, EncodeError> {
        let expected = |what: &str| fail(path, format!("expected {what}, got {}", kind(data)));
        Ok(match schema {
            Schema::Ref { name } => {
                let Some(target) = self.names.get(&name.fully_qualified_name(ns)) else {
                    return Err(fail(
                        path,
                        format!("unknown type '{}'", name.fullname(None)),
                    ));
                };
                return self.value(target, ns, data, path);
            }
            Schema::Null if data.is_null() => Avro::Null,
            Schema::Null => return Err(expected("null")),
            Schema::Boolean => Avro::Boolean(data.as_bool().ok_or_else(|| expected("a boolean"))?),
            Schema::Int | Schema::Date | Schema::TimeMillis => {
                let i = integer(data)
                    .ok_or_else(|| expected("an integer"))?
                    .and_then(|i| i32::try_from(i).ok())
                    .ok_or_else(|| {
                        fail(path, "integer out of the range of an Avro int (32 bits)")
                    })?;
                match schema {
                    Schema::Date => Avro::Date(i),
                    Schema::TimeMillis => Avro::TimeMillis(i),
                    _ => Avro::Int(i),
                }
            }
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => {
                let i = integer(data)
                    .ok_or_else(|| expected("an integer"))?
                    .ok_or_else(|| {
                        fail(path, "integer out of the range of an Avro long (64 bits)")
                    })?;
                match schema {
                    Schema::TimeMicros => Avro::TimeMicros(i),
                    Schema::TimestampMillis => Avro::TimestampMillis(i),
                    Schema::TimestampMicros => Avro::TimestampMicros(i),
                    Schema::TimestampNanos => Avro::TimestampNanos(i),
                    Schema::LocalTimestampMillis => Avro::LocalTimestampMillis(i),
                    Schema::LocalTimestampMicros => Avro::LocalTimestampMicros(i),
                    Schema::LocalTimestampNanos => Avro::LocalTimestampNanos(i),
                    _ => Avro::Long(i),
                }
            }
            Schema::Float => {
                let f = data.as_f64().ok_or_else(|| expected("a number"))? as f32;
                if !f.is_finite() {
                    return Err(fail(path, "number out of the range of an Avro float"));
                }
                Avro::Float(f)
            }
            Schema::Double => {
                let f = data.as_f64().ok_or_else(|| expected("a number"))?;
                // An integer a double cannot hold exactly would decode as another number.
                let exact = match (data.as_i64(), data.as_u64()) {
                    (Some(i), _) => (-LONG_LIMIT..LONG_LIMIT).contains(&f) && f as i64 == i,
                    (None, Some(u)) => f < 2.0 * LONG_LIMIT && f as u64 == u,
                    (None, None) => true,
                };
                if !exact {
                    return Err(fail(
                        path,
                        "integer not exactly representable as an Avro double",
                    ));
                }
                Avro::Double(f)
            }
            Schema::String => {
                Avro::String(data.as_str().ok_or_else(|| expected("a string"))?.into())
            }
            Schema::Uuid => {
                let s = data.as_str().ok_or_else(|| expected("a UUID string"))?;
                apache_avro::Uuid::parse_str(s)
                    .map_err(|e| fail(path, format!("not a UUID: {e}")))?;
                Avro::String(s.into())
            }
            Schema::Bytes => Avro::Bytes(latin1(data).ok_or_else(|| {
                expected("a string of code points up to U+00FF (Avro's JSON form of bytes)")
            })?),
            Schema::Fixed(fixed) => {
                let bytes = latin1(data).ok_or_else(|| {
                    expected("a string of code points up to U+00FF (Avro's JSON form of fixed)")
                })?;
                if bytes.len() != fixed.size {
                    return Err(fail(
                        path,
                        format!("expected {} bytes, got {}", fixed.size, bytes.len()),
                    ));
                }
                Avro::Fixed(fixed.size, bytes)
            }
            Schema::Enum(e) => {
                let s = data.as_str().ok_or_else(|| expected("a string"))?;
                let Some(i) = e.symbols.iter().position(|sym| sym == s) else {
                    return Err(fail(
                        path,
                        format!("'{s}' is not a symbol of the enum {}", e.name.name),
                    ));
                };
                Avro::Enum(i as u32, s.into())
            }
            Schema::Array(array) => {
                let items = data.as_array().ok_or_else(|| expected("an array"))?;
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    out.push(self.value(&array.items, ns, item, &Path::Index(path, i))?);
                }
                Avro::Array(out)
            }
            Schema::Map(map) => {
                let entries = data.as_object().ok_or_else(|| expected("an object"))?;
                let mut out = HashMap::with_capacity(entries.len());
                for (key, value) in entries {
                    out.insert(
                        key.clone(),
                        self.value(&map.types, ns, value, &Path::Key(path, key))?,
                    );
                }
                Avro::Map(out)
            }
            Schema::Record(record) => {
                let obj = data.as_object().ok_or_else(|| expected("an object"))?;
                return self.record(record, ns, obj, path);
            }
            Schema::Union(union) => {
                let variants = union.variants();
                if data.is_null()
                    && let Some(i) = variants.iter().position(|v| matches!(v, Schema::Null))
                {
                    return Ok(Avro::Union(i as u32, Box::new(Avro::Null)));
                }
                let mut candidates = variants
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| !matches!(v, Schema::Null));
                let mut first_error = None;
                let mut tried = 0;
                for (i, variant) in candidates.by_ref() {
                    tried += 1;
                    match self.value(variant, ns, data, path) {
                        Ok(value) => return Ok(Avro::Union(i as u32, Box::new(value))),
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                return Err(match first_error {
                    // With a single branch besides null, its own error says more.
                    Some(e) if tried == 1 => e,
                    _ => fail(
                        path,
                        format!(
                            "{} fits no branch of the union {}",
                            kind(data),
                            describe(schema)
                        ),
                    ),
                });
            }
            Schema::Decimal(_) | Schema::BigDecimal | Schema::Duration => {
                return Err(fail(
                    path,
                    "this logical type has no JSON form tenantsync encodes",
                ));
            }
        })
    }

    fn record(
        &self,
        record: &RecordSchema,
        ns: &Namespace,
        data: &Object,
        path: &Path,
    ) -> Result<Avro, EncodeError> {
        for key in data.keys() {
            let known = record
                .lookup
                .get(key)
                .and_then(|&i| record.fields.get(i))
                .is_some_and(|f| f.name == *key);
            if !known {
                return Err(fail(
                    &Path::Key(path, key),
                    format!(
                        "not a field of the Avro record {}: it would be lost",
                        record.name.name
                    ),
                ));
            }
        }
        let ns = record.name.fully_qualified_name(ns).namespace;
        let mut fields = Vec::with_capacity(record.fields.len());
        for field in &record.fields {
            let at = Path::Key(path, &field.name);
            let value = match (data.get(&field.name), &field.default) {
                (Some(value), _) => self.value(&field.schema, &ns, value, &at)?,
                (None, Some(default)) => {
                    self.value(&field.schema, &ns, default, &at).map_err(|e| {
                        fail(
                            &at,
                            format!(
                                "absent, and the field's default does not fit: {}",
                                e.message
                            ),
                        )
                    })?
                }
                (None, None) => self
                    .value(&field.schema, &ns, &Value::Null, &at)
                    .map_err(|_| fail(&at, "a field without a default is absent"))?,
            };
            fields.push((field.name.clone(), value));
        }
        Ok(Avro::Record(fields))
    }
}

/// 2^63: the first integer beyond a long, exactly representable as a double.
const LONG_LIMIT: f64 = 9_223_372_036_854_775_808.0;

/// A JSON integer as a long: `None` when not an integer (a number with a zero fraction is one,
/// as in JSON Schema), `Some(None)` when one beyond a long.
fn integer(data: &Value) -> Option<Option<i64>> {
    let n = data.as_number()?;
    if let Some(i) = n.as_i64() {
        return Some(Some(i));
    }
    if n.is_u64() {
        return Some(None);
    }
    let f = n.as_f64()?;
    if f.fract() != 0.0 {
        return None;
    }
    Some((-LONG_LIMIT..LONG_LIMIT).contains(&f).then_some(f as i64))
}

/// Avro's JSON form of bytes: each code point up to U+00FF is one byte.
fn latin1(data: &Value) -> Option<Vec<u8>> {
    data.as_str()?
        .chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect()
}
