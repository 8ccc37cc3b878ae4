//! The keywords of one subschema as the compatibility check reads them, and the comparisons of
//! JSON values and numbers it needs. It never decides compatibility (the parent module does).

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

/// Kinds of JSON values, as bits: `number` is `INTEGER | FRACTION`.
pub(super) const NULL: u8 = 1;
pub(super) const BOOLEAN: u8 = 2;
pub(super) const OBJECT: u8 = 4;
pub(super) const ARRAY: u8 = 8;
pub(super) const INTEGER: u8 = 16;
pub(super) const FRACTION: u8 = 32;
pub(super) const STRING: u8 = 64;
pub(super) const ANY: u8 = 127;

const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "$comment",
    "format",
    "deprecated",
    "readOnly",
    "writeOnly",
];
const DRAFT_2020_12: &[&str] = &[
    "https://json-schema.org/draft/2020-12/schema",
    "https://json-schema.org/draft/2020-12/schema#",
];
/// Keywords that change what their understood siblings mean, so that even unchanged they make
/// the keyword-by-keyword comparison wrong.
const ENTANGLED: &[&str] = &[
    "patternProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
];

/// A lower or upper bound on numbers.
#[derive(Clone, Copy)]
pub(super) struct Bound<'a> {
    pub(super) n: &'a Number,
    pub(super) exclusive: bool,
    pub(super) keyword: &'static str,
}

/// The understood keywords of one subschema.
pub(super) struct Keywords<'a> {
    pub(super) kinds: u8,
    pub(super) types: Option<&'a Value>,
    pub(super) enumeration: Option<&'a Vec<Value>>,
    pub(super) constant: Option<&'a Value>,
    pub(super) properties: Option<&'a Map<String, Value>>,
    pub(super) required: Vec<&'a str>,
    pub(super) min_length: Option<u64>,
    pub(super) max_length: Option<u64>,
    pub(super) min_items: Option<u64>,
    pub(super) max_items: Option<u64>,
    pub(super) lower: Option<Bound<'a>>,
    pub(super) upper: Option<Bound<'a>>,
    pub(super) pattern: Option<&'a str>,
    /// Keywords not understood (unknown, or malformed), compatible only when unchanged.
    pub(super) unknown: Vec<&'a str>,
    /// Keywords that are a break whenever the subschemas differ.
    pub(super) entangled: Vec<&'a str>,
}

impl<'a> Keywords<'a> {
    pub(super) fn parse(schema: &'a Map<String, Value>, root: bool) -> Self {
        let mut k = Keywords {
            kinds: ANY,
            types: None,
            enumeration: None,
            constant: None,
            properties: None,
            required: Vec::new(),
            min_length: None,
            max_length: None,
            min_items: None,
            max_items: None,
            lower: None,
            upper: None,
            pattern: None,
            unknown: Vec::new(),
            entangled: Vec::new(),
        };
        for (name, value) in schema {
            let understood = match name.as_str() {
                n if ANNOTATIONS.contains(&n) => Some(()),
                "$id" if root => Some(()),
                "$schema" if root => {
                    if !DRAFT_2020_12.contains(&value.as_str().unwrap_or_default()) {
                        k.entangled.push(name);
                    }
                    Some(())
                }
                n if ENTANGLED.contains(&n) => {
                    k.entangled.push(name);
                    Some(())
                }
                "type" => type_kinds(value).map(|kinds| {
                    k.kinds = kinds;
                    k.types = Some(value);
                }),
                "enum" => value.as_array().map(|values| k.enumeration = Some(values)),
                "const" => {
                    k.constant = Some(value);
                    Some(())
                }
                "properties" => value
                    .as_object()
                    .filter(|m| m.values().all(|s| s.is_object() || s.is_boolean()))
                    .map(|m| k.properties = Some(m)),
                "required" => value.as_array().and_then(|names| {
                    let names: Option<Vec<&str>> = names.iter().map(Value::as_str).collect();
                    names.map(|names| k.required = names)
                }),
                "additionalProperties" | "items" => {
                    (value.is_object() || value.is_boolean()).then_some(())
                }
                "minLength" => count(value).map(|n| k.min_length = Some(n)),
                "maxLength" => count(value).map(|n| k.max_length = Some(n)),
                "minItems" => count(value).map(|n| k.min_items = Some(n)),
                "maxItems" => count(value).map(|n| k.max_items = Some(n)),
                "minimum" | "exclusiveMinimum" => bound(name, value).map(|b| {
                    k.lower = Some(k.lower.map_or(b, |a| stricter(a, b, Ordering::Greater)));
                }),
                "maximum" | "exclusiveMaximum" => bound(name, value).map(|b| {
                    k.upper = Some(k.upper.map_or(b, |a| stricter(a, b, Ordering::Less)));
                }),
                "pattern" => value.as_str().map(|p| k.pattern = Some(p)),
                _ => None,
            }
            .is_some();
            if !understood {
                k.unknown.push(name);
            }
        }
        k
    }

    /// The values this subschema is limited to by `enum` and `const`, of kinds it allows.
    pub(super) fn finite(&self) -> Option<Vec<&'a Value>> {
        let values: Vec<&Value> = match (self.enumeration, self.constant) {
            (None, None) => return None,
            (Some(e), c) => e
                .iter()
                .filter(|v| c.is_none_or(|c| same_instance(v, c)))
                .collect(),
            (None, Some(c)) => vec![c],
        };
        Some(
            values
                .into_iter()
                .filter(|v| kind(v) & self.kinds != 0)
                .collect(),
        )
    }

    pub(super) fn allows_value(&self, v: &Value) -> bool {
        self.enumeration
            .is_none_or(|e| e.iter().any(|x| same_instance(x, v)))
            && self.constant.is_none_or(|c| same_instance(c, v))
    }
}

pub(super) fn type_kinds(v: &Value) -> Option<u8> {
    let one = |t: &Value| match t.as_str()? {
        "null" => Some(NULL),
        "boolean" => Some(BOOLEAN),
        "object" => Some(OBJECT),
        "array" => Some(ARRAY),
        "number" => Some(INTEGER | FRACTION),
        "integer" => Some(INTEGER),
        "string" => Some(STRING),
        _ => None,
    };
    match v {
        Value::Array(ts) => ts.iter().try_fold(0, |k, t| Some(k | one(t)?)),
        t => one(t),
    }
}

pub(super) fn kind(v: &Value) -> u8 {
    match v {
        Value::Null => NULL,
        Value::Bool(_) => BOOLEAN,
        Value::Object(_) => OBJECT,
        Value::Array(_) => ARRAY,
        Value::String(_) => STRING,
        Value::Number(n) if n.is_f64() && n.as_f64().is_some_and(|f| f.fract() != 0.0) => FRACTION,
        Value::Number(_) => INTEGER,
    }
}

pub(super) fn types(t: Option<&Value>) -> String {
    match t {
        None => "any type".to_owned(),
        Some(Value::Array(ts)) => {
            let names: Vec<&str> = ts.iter().filter_map(Value::as_str).collect();
            names.join(" or ")
        }
        Some(t) => t.as_str().unwrap_or_default().to_owned(),
    }
}

/// A non-negative integer keyword (`2.0` counts as 2, as draft 2020-12 says).
fn count(v: &Value) -> Option<u64> {
    let n = v.as_number()?;
    n.as_u64().or_else(|| {
        let f = n.as_f64()?;
        (f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64).then_some(f as u64)
    })
}

fn bound<'a>(name: &str, v: &'a Value) -> Option<Bound<'a>> {
    let (exclusive, keyword) = match name {
        "minimum" => (false, "minimum"),
        "maximum" => (false, "maximum"),
        "exclusiveMinimum" => (true, "exclusiveMinimum"),
        _ => (true, "exclusiveMaximum"),
    };
    let n = v.as_number()?;
    Some(Bound {
        n,
        exclusive,
        keyword,
    })
}

/// Of two bounds on the same side, the one that refuses more: the greater lower bound
/// (`stricter_when` Greater) or the lesser upper bound (Less); exclusive wins a tie.
fn stricter<'a>(a: Bound<'a>, b: Bound<'a>, stricter_when: Ordering) -> Bound<'a> {
    match num_cmp(a.n, b.n) {
        Ordering::Equal if b.exclusive => b,
        Ordering::Equal => a,
        o if o == stricter_when => a,
        _ => b,
    }
}

pub(super) fn bound_text(b: Option<Bound>, lower: bool) -> String {
    match (b, lower) {
        (None, _) => "none".to_owned(),
        (Some(b), true) => format!("{} {}", if b.exclusive { ">" } else { ">=" }, b.n),
        (Some(b), false) => format!("{} {}", if b.exclusive { "<" } else { "<=" }, b.n),
    }
}

/// Compares JSON numbers exactly, whether integers or floats.
pub(super) fn num_cmp(a: &Number, b: &Number) -> Ordering {
    fn int(n: &Number) -> Option<i128> {
        n.as_i64().map(i128::from).or(n.as_u64().map(i128::from))
    }
    // An integer against a float: compare with the float's floor, exact below 2^127.
    fn int_float(i: i128, f: f64) -> Ordering {
        if f >= 2f64.powi(127) {
            return Ordering::Less;
        }
        if f < -(2f64.powi(127)) {
            return Ordering::Greater;
        }
        let floor = f.floor();
        match i.cmp(&(floor as i128)) {
            Ordering::Equal if f > floor => Ordering::Less,
            o => o,
        }
    }
    let float = |n: &Number| n.as_f64().unwrap_or(f64::NAN);
    match (int(a), int(b)) {
        (Some(a), Some(b)) => a.cmp(&b),
        (Some(a), None) => int_float(a, float(b)),
        (None, Some(b)) => int_float(b, float(a)).reverse(),
        (None, None) => float(a).partial_cmp(&float(b)).unwrap_or(Ordering::Equal),
    }
}

/// Equality of JSON values as JSON Schema sees it (`1` and `1.0` are equal).
pub(super) fn same_instance(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => num_cmp(a, b) == Ordering::Equal,
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_instance(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, v)| b.get(k).is_some_and(|w| same_instance(v, w)))
        }
        (a, b) => a == b,
    }
}

pub(super) fn as_schema(v: &Value) -> Option<&Map<String, Value>> {
    static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
    match v {
        Value::Object(m) => Some(m),
        Value::Bool(true) => Some(&EMPTY),
        _ => None,
    }
}

/// Whether any subschema below the root has an `$id` (which moves the base of its `$ref`s).
pub(super) fn nested_id(root: &Value) -> bool {
    fn any_id(v: &Value) -> bool {
        match v {
            Value::Object(m) => m.contains_key("$id") || m.values().any(any_id),
            Value::Array(a) => a.iter().any(any_id),
            _ => false,
        }
    }
    match root {
        Value::Object(m) => m.values().any(any_id),
        _ => false,
    }
}

pub(super) fn additional(schema: &Value) -> &'static str {
    match schema.get("additionalProperties") {
        None => "true (absent)",
        Some(Value::Bool(true)) => "true",
        Some(Value::Bool(false)) => "false",
        Some(_) => "a schema",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn numbers_compare_exactly() {
        let n = |v: Value| match v {
            Value::Number(n) => n,
            _ => unreachable!(),
        };
        let cmp = |a: Value, b: Value| num_cmp(&n(a), &n(b));
        assert_eq!(
            cmp(json!(9007199254740993u64), json!(9007199254740992.0)),
            Ordering::Greater
        );
        assert_eq!(cmp(json!(1), json!(1.0)), Ordering::Equal);
        assert_eq!(cmp(json!(-1), json!(-0.5)), Ordering::Less);
        assert_eq!(cmp(json!(0.5), json!(0)), Ordering::Greater);
        assert_eq!(
            num_cmp(&Number::from(u64::MAX), &Number::from(i64::MIN)),
            Ordering::Greater
        );
    }
}
