//! Avro's schema resolution failures as breaks a person can act on, pointing into the reader.

use apache_avro::error::CompatibilityError;
use apache_avro::schema::{RecordSchema, Schema, SchemaKind};
use apache_avro::schema_compatibility::SchemaCompatibility;

use crate::Break;

/// Explains `error`, found reading `writer` with `reader` (the whole schemas or parts of them
/// at `at`: a pointer into the reader's text and the field names leading there).
pub(super) fn explain(
    reader: &Schema,
    writer: &Schema,
    error: &CompatibilityError,
    version: u32,
    at: (&str, &[&str]),
) -> Break {
    let mut path = at.1.to_vec();
    let depth = path.len();
    let mut innermost = error;
    while let CompatibilityError::FieldTypeMismatch(field, inner) = innermost {
        path.push(field.as_str());
        innermost = inner;
    }
    let (pointer, read_as) = locate(reader, &path[depth..]);
    let (_, written_as) = locate(writer, &path[depth..]);
    let pointer = format!("{}{pointer}", at.0);
    let place = if path.is_empty() {
        "the record".to_string()
    } else {
        format!("field '{}'", path.join("."))
    };
    let message = match innermost {
        CompatibilityError::MissingDefaultValue(field) => {
            let (pointer, _) = locate(reader, &[&path[depth..], &[field.as_str()]].concat());
            // The field itself, not its type.
            let pointer = pointer.strip_suffix("/type").unwrap_or(&pointer);
            path.push(field);
            return Break {
                pointer: format!("{}{pointer}", at.0),
                version,
                message: format!(
                    "the reader's field '{}' is not in version {version}'s schema and has no default",
                    path.join(".")
                ),
            };
        }
        CompatibilityError::MissingUnionElements => {
            if let (Some(written_as), Some(read_as)) = (written_as, read_as) {
                // The writer's branch that no reader branch reads: when the reader has a branch
                // of the same type, say what breaks inside it.
                let unread = branches(written_as).iter().find(|wb| {
                    !branches(read_as)
                        .iter()
                        .any(|rb| SchemaCompatibility::can_read(wb, rb).is_ok())
                });
                if let Some(wb) = unread {
                    let same = branches(read_as)
                        .iter()
                        .enumerate()
                        .find(|(_, rb)| same_type(wb, rb));
                    // Only into a branch: the same two types again would not end.
                    let into_branch = matches!(read_as, Schema::Union(_))
                        || matches!(written_as, Schema::Union(_));
                    if let Some((i, rb)) = same
                        && into_branch
                        && let Err(inner) = SchemaCompatibility::can_read(wb, rb)
                    {
                        let pointer = match read_as {
                            Schema::Union(_) => format!("{pointer}/{i}"),
                            _ => pointer,
                        };
                        return explain(rb, wb, &inner, version, (&pointer, &path));
                    }
                    return Break {
                        pointer,
                        version,
                        message: format!(
                            "{place}: version {version} may write {}, which the reader's {} \
                             cannot read",
                            describe(wb),
                            describe(read_as)
                        ),
                    };
                }
            }
            format!("{place}: a branch of version {version}'s union cannot be read by the reader")
        }
        CompatibilityError::WrongType { .. } | CompatibilityError::TypeExpected { .. } => {
            match (written_as, read_as) {
                (Some(w), Some(r)) => format!(
                    "{place}: written as {} by version {version}, cannot be read as {}",
                    describe(w),
                    describe(r)
                ),
                _ => format!("{place}: version {version}'s type cannot be read as the reader's"),
            }
        }
        CompatibilityError::MissingSymbols => format!(
            "{place}: the reader's enum lacks symbols version {version} may write (an enum's \
             default is not relied on)"
        ),
        CompatibilityError::NameMismatch {
            writer_name,
            reader_name,
        } => format!(
            "{place}: version {version} names the type '{writer_name}', the reader \
             '{reader_name}' (names must match)"
        ),
        other => format!("{place}: {other}"),
    };
    Break {
        pointer,
        version,
        message,
    }
}

/// A union's branches, or the type itself.
fn branches(schema: &Schema) -> &[Schema] {
    match schema {
        Schema::Union(u) => u.variants(),
        other => std::slice::from_ref(other),
    }
}

/// Whether two union branches are the same type (Avro allows one branch per type or name).
fn same_type(a: &Schema, b: &Schema) -> bool {
    match (a, b) {
        (Schema::Record(a), Schema::Record(b)) => a.name == b.name,
        (Schema::Enum(a), Schema::Enum(b)) => a.name == b.name,
        (Schema::Fixed(a), Schema::Fixed(b)) => a.name == b.name,
        _ => SchemaKind::from(a) == SchemaKind::from(b),
    }
}

/// Where the field at `path` (field names, outermost first) is in `schema`'s text, and its type.
fn locate<'s>(schema: &'s Schema, path: &[&str]) -> (String, Option<&'s Schema>) {
    let mut pointer = String::new();
    let mut current = schema;
    for field in path {
        let Some((at, record)) = record_with(current, field, pointer.clone()) else {
            return (pointer, None);
        };
        let Some(found) = record.fields.iter().position(|f| f.name == *field) else {
            return (pointer, None);
        };
        pointer = format!("{at}/fields/{found}/type");
        current = &record.fields[found].schema;
    }
    (pointer, Some(current))
}

/// The record with a field `field` that `schema` is or contains (through unions, arrays and
/// maps), and its pointer.
fn record_with<'s>(
    schema: &'s Schema,
    field: &str,
    ptr: String,
) -> Option<(String, &'s RecordSchema)> {
    match schema {
        Schema::Record(r) if r.fields.iter().any(|f| f.name == field) => Some((ptr, r)),
        Schema::Union(u) => u
            .variants()
            .iter()
            .enumerate()
            .find_map(|(i, v)| record_with(v, field, format!("{ptr}/{i}"))),
        Schema::Array(a) => record_with(&a.items, field, format!("{ptr}/items")),
        Schema::Map(m) => record_with(&m.types, field, format!("{ptr}/values")),
        _ => None,
    }
}

pub(super) fn describe(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => format!("record {}", r.name.name),
        Schema::Enum(e) => format!("enum {}", e.name.name),
        Schema::Fixed(f) => format!("fixed {}", f.name.name),
        Schema::Ref { name } => name.name.clone(),
        Schema::Array(a) => format!("array of {}", describe(&a.items)),
        Schema::Map(m) => format!("map of {}", describe(&m.types)),
        Schema::Union(u) => format!(
            "union [{}]",
            u.variants()
                .iter()
                .map(describe)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => serde_json::to_string(other).unwrap_or_else(|_| format!("{other:?}")),
    }
}
