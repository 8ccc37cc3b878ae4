//! Compatibility of JSON Schemas (draft 2020-12), with Confluent Schema Registry's modes.
//!
//! "A reader using schema R can read what a writer using schema W wrote" means: every JSON value
//! valid under W is valid under R. [`check`] proves that keyword by keyword and reports, with a
//! pointer into the new schema, every place where it cannot. It must never call compatible what
//! may not be: it may refuse a harmless change, never accept a harmful one.
//!
//! Understood: `type` (`integer` within `number`), `enum`, `const`, `properties`, `required`,
//! `additionalProperties`, `items` (one schema), `minItems`, `maxItems`, `minimum`, `maximum`,
//! `exclusiveMinimum`, `exclusiveMaximum`, `minLength`, `maxLength`, `pattern` (only an
//! unchanged pattern is compatible) and the `true`/`false` schemas. Ignored, since they never
//! change what is valid: `title`, `description`, `default`, `examples`, `$comment`, `format`,
//! `deprecated`, `readOnly`, `writeOnly`, and at the root `$id` and a `$schema` naming 2020-12.
//! Any other keyword is a break unless it is the same on both sides (its `$ref`s, if any, must
//! be local pointers reaching the same text in both schemas); `patternProperties`,
//! `unevaluatedProperties`, `unevaluatedItems` and another draft's `$schema` change what their
//! siblings mean, so they are a break even then. Two identical subschemas at the same place are
//! always compatible (under the same condition on `$ref`s).

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use keywords::{
    ARRAY, FRACTION, INTEGER, Keywords, OBJECT, STRING, additional, as_schema, bound_text, kind,
    nested_id, num_cmp, types,
};

mod keywords;

/// A compatibility mode, spelled as Confluent Schema Registry spells it. Backward: a reader
/// using the new schema can read data written with the old one. Forward: a reader using the old
/// schema can read data written with the new one. Full: both. Transitive: against every earlier
/// version, not just the latest. None: no check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Compatibility {
    #[default]
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
    None,
}

/// One reason a schema change is incompatible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Break {
    /// JSON pointer into the new schema where the break is ("" for the whole schema).
    pub pointer: String,
    /// The earlier version it breaks against.
    pub version: u32,
    pub message: String,
}

impl Compatibility {
    const ALL: [Self; 7] = [
        Self::Backward,
        Self::BackwardTransitive,
        Self::Forward,
        Self::ForwardTransitive,
        Self::Full,
        Self::FullTransitive,
        Self::None,
    ];

    /// `BACKWARD`, ... as Confluent spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
            Self::None => "NONE",
        }
    }

    /// Parses Confluent's spelling; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|mode| mode.as_str() == s)
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive
        )
    }

    /// The new schema must read what the old ones wrote.
    fn backward(self) -> bool {
        matches!(
            self,
            Self::Backward | Self::BackwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    /// The old schemas must read what the new one writes.
    fn forward(self) -> bool {
        matches!(
            self,
            Self::Forward | Self::ForwardTransitive | Self::Full | Self::FullTransitive
        )
    }
}

/// What breaks if `new` is registered after `history` (every earlier version, oldest first, with
/// its version number) under `mode`. Empty: compatible.
pub fn check(mode: Compatibility, new: &Value, history: &[(u32, Value)]) -> Vec<Break> {
    let against = match mode {
        Compatibility::None => return Vec::new(),
        mode if mode.transitive() => history,
        _ => history.last().map(std::slice::from_ref).unwrap_or_default(),
    };
    let mut breaks = Vec::new();
    for (version, old) in against {
        if mode.backward() {
            Walk::new(old, new, true, *version).run(&mut breaks);
        }
        if mode.forward() {
            Walk::new(new, old, false, *version).run(&mut breaks);
        }
    }
    breaks
}

static TRUE: Value = Value::Bool(true);
static FALSE: Value = Value::Bool(false);

/// One subset question: is every value valid under `writer` valid under `reader`?
struct Walk<'a> {
    writer: &'a Value,
    reader: &'a Value,
    reader_is_new: bool,
    version: u32,
    /// `$ref`s may be resolved as pointers from the roots (no nested `$id` moves their base).
    local_refs: bool,
}

/// A subschema and where it is: the pointer of the nearest place that exists in its document
/// (an absent `items` or `additionalProperties` is `true`, located at its parent).
#[derive(Clone)]
struct At<'a> {
    schema: &'a Value,
    ptr: String,
}

impl<'a> At<'a> {
    fn child(&self, keyword: &str) -> Option<At<'a>> {
        let schema = self.schema.get(keyword)?;
        Some(At {
            schema,
            ptr: format!("{}/{}", self.ptr, escape(keyword)),
        })
    }

    /// The keyword's pointer when this subschema has it, else the subschema's.
    fn keyword(&self, keyword: &str) -> String {
        match self.schema.get(keyword) {
            Some(_) => format!("{}/{}", self.ptr, escape(keyword)),
            None => self.ptr.clone(),
        }
    }

    /// The subschema under `keyword` when it is one, else `true` here.
    fn sub(&self, keyword: &str) -> At<'a> {
        match self.child(keyword) {
            Some(at) if at.schema.is_boolean() || at.schema.is_object() => at,
            _ => At {
                schema: &TRUE,
                ptr: self.ptr.clone(),
            },
        }
    }

    /// The subschema a property `name` meets, and whether `properties` lists it.
    fn property(&self, name: &str) -> (At<'a>, bool) {
        match self.schema.get("properties").and_then(|p| p.get(name)) {
            Some(schema) => {
                let ptr = format!("{}/properties/{}", self.ptr, escape(name));
                (At { schema, ptr }, true)
            }
            None => (self.sub("additionalProperties"), false),
        }
    }
}

impl<'a> Walk<'a> {
    fn new(writer: &'a Value, reader: &'a Value, reader_is_new: bool, version: u32) -> Self {
        let local_refs = !nested_id(writer) && !nested_id(reader);
        Walk {
            writer,
            reader,
            reader_is_new,
            version,
            local_refs,
        }
    }

    fn run(&self, out: &mut Vec<Break>) {
        let (w, r) = (self.writer, self.reader);
        let at = |schema| At {
            schema,
            ptr: String::new(),
        };
        self.subset(&at(w), &at(r), out);
    }

    fn new_side<'b>(&self, w: &'b At<'a>, r: &'b At<'a>) -> &'b At<'a> {
        if self.reader_is_new { r } else { w }
    }

    /// `(old, new)` from `(writer, reader)`.
    fn old_new<T>(&self, w: T, r: T) -> (T, T) {
        if self.reader_is_new { (w, r) } else { (r, w) }
    }

    fn refused(&self) -> String {
        match self.reader_is_new {
            true => format!(
                "data valid under version {} is refused by the new schema",
                self.version
            ),
            false => format!(
                "data valid under the new schema is refused by version {}",
                self.version
            ),
        }
    }

    fn push(&self, out: &mut Vec<Break>, pointer: String, message: String) {
        out.push(Break {
            pointer,
            version: self.version,
            message,
        });
    }

    fn subset(&self, w: &At<'a>, r: &At<'a>, out: &mut Vec<Break>) {
        if self.same(w.schema, r.schema) || w.schema == &FALSE {
            return;
        }
        let new = self.new_side(w, r);
        let not_a_schema = |out: &mut Vec<Break>| {
            let message = if r.schema == &FALSE {
                let what = self.old_new("the schema became `false`", "`false` became a schema");
                format!("{}: {}", what.0, self.refused())
            } else {
                format!(
                    "the schema at {} is neither an object nor a boolean",
                    show(&new.ptr)
                )
            };
            self.push(out, new.ptr.clone(), message);
        };
        let Some(wm) = as_schema(w.schema) else {
            return not_a_schema(out);
        };
        let wk = Keywords::parse(wm, std::ptr::eq(w.schema, self.writer));
        let finite = wk.finite();
        let kinds = match &finite {
            Some(values) => values.iter().fold(0, |k, v| k | kind(v)),
            None => wk.kinds,
        };
        if kinds == 0 {
            return; // nothing is valid under the writer's schema
        }
        let Some(rm) = as_schema(r.schema) else {
            return not_a_schema(out);
        };
        let rk = Keywords::parse(rm, std::ptr::eq(r.schema, self.reader));
        self.unknown(w, r, &wk, &rk, out);
        if kinds & !rk.kinds != 0 {
            let (old, new_types) = self.old_new(&wk, &rk);
            let verb = match (old.kinds, new_types.kinds) {
                (o, n) if n & !o == 0 => "narrowed",
                (o, n) if o & !n == 0 => "widened",
                _ => "changed",
            };
            let message = format!(
                "type {verb} from {} to {}: {}",
                types(old.types),
                types(new_types.types),
                self.refused()
            );
            self.push(out, new.keyword("type"), message);
        }
        self.values(w, r, &finite, &rk, out);
        if kinds & STRING != 0 {
            self.strings(w, r, &wk, &rk, out);
        }
        if kinds & (INTEGER | FRACTION) != 0 {
            self.numbers(w, r, &wk, &rk, out);
        }
        if kinds & ARRAY != 0 {
            self.count(w, r, "minItems", wk.min_items, rk.min_items, false, out);
            self.count(w, r, "maxItems", wk.max_items, rk.max_items, true, out);
            self.subset(&w.sub("items"), &r.sub("items"), out);
        }
        if kinds & OBJECT != 0 {
            self.objects(w, r, &wk, &rk, out);
        }
    }

    fn unknown(&self, w: &At<'a>, r: &At<'a>, wk: &Keywords, rk: &Keywords, out: &mut Vec<Break>) {
        let new = self.new_side(w, r);
        let names: BTreeSet<&str> = (wk.unknown.iter().chain(&rk.unknown))
            .chain(wk.entangled.iter().chain(&rk.entangled))
            .copied()
            .collect();
        for name in names {
            let entangled = wk.entangled.contains(&name) || rk.entangled.contains(&name);
            let unchanged = match (w.schema.get(name), r.schema.get(name)) {
                (Some(a), Some(b)) => match (name, a) {
                    // The keyword's own value is a reference, not a subschema holding one.
                    ("$ref", Value::String(target)) => {
                        a == b && self.ref_same(target, &mut HashSet::new())
                    }
                    ("$ref" | "$dynamicRef" | "$recursiveRef", _) => false,
                    _ => self.same(a, b),
                },
                _ => false,
            };
            if unchanged && !entangled {
                continue;
            }
            let message = if name == "$schema" && entangled {
                "`$schema` names a draft other than 2020-12, which the compatibility check does \
                 not understand"
                    .to_owned()
            } else {
                format!(
                    "keyword `{name}` at {} is not understood by the compatibility check",
                    show(&new.ptr)
                )
            };
            self.push(out, new.keyword(name), message);
        }
    }

    /// `enum` and `const`.
    fn values(
        &self,
        w: &At<'a>,
        r: &At<'a>,
        finite: &Option<Vec<&Value>>,
        rk: &Keywords,
        out: &mut Vec<Break>,
    ) {
        if rk.enumeration.is_none() && rk.constant.is_none() {
            return;
        }
        let new = self.new_side(w, r);
        let keyword = if new.schema.get("enum").is_some() {
            "enum"
        } else {
            "const"
        };
        let Some(values) = finite else {
            let restriction = if rk.enumeration.is_some() {
                "enum"
            } else {
                "const"
            };
            let what = self.old_new("added", "removed").0;
            let message = format!("`{restriction}` {what}: {}", self.refused());
            return self.push(out, new.keyword(keyword), message);
        };
        for v in values.iter().filter(|v| !rk.allows_value(v)) {
            let (old, _) = self.old_new("no longer allowed", "newly allowed");
            let message = format!("value `{}` is {old}: {}", brief(v), self.refused());
            self.push(out, new.keyword(keyword), message);
        }
    }

    fn strings(&self, w: &At<'a>, r: &At<'a>, wk: &Keywords, rk: &Keywords, out: &mut Vec<Break>) {
        self.count(w, r, "minLength", wk.min_length, rk.min_length, false, out);
        self.count(w, r, "maxLength", wk.max_length, rk.max_length, true, out);
        if rk.pattern.is_some() && wk.pattern != rk.pattern {
            let (old, new) = self.old_new(wk.pattern, rk.pattern);
            let what = match (old, new) {
                (None, Some(_)) => "`pattern` added".to_owned(),
                (Some(_), None) => "`pattern` removed".to_owned(),
                (old, new) => format!(
                    "`pattern` changed from `{}` to `{}` (only an unchanged pattern is known to \
                     accept the same strings)",
                    old.unwrap_or_default(),
                    new.unwrap_or_default()
                ),
            };
            let message = format!("{what}: {}", self.refused());
            self.push(out, self.new_side(w, r).keyword("pattern"), message);
        }
    }

    fn numbers(&self, w: &At<'a>, r: &At<'a>, wk: &Keywords, rk: &Keywords, out: &mut Vec<Break>) {
        for (lower, wb, rb) in [(true, wk.lower, rk.lower), (false, wk.upper, rk.upper)] {
            let implied = match (wb, rb) {
                (_, None) => true,
                (None, Some(_)) => false,
                (Some(wb), Some(rb)) => match (num_cmp(wb.n, rb.n), lower) {
                    (Ordering::Equal, _) => wb.exclusive || !rb.exclusive,
                    (o, true) => o == Ordering::Greater,
                    (o, false) => o == Ordering::Less,
                },
            };
            if implied {
                continue;
            }
            let (old, new) = self.old_new(wb, rb);
            let side = if lower { "lower" } else { "upper" };
            let message = format!(
                "{side} bound {} from {} to {}: {}",
                self.old_new("tightened", "relaxed").0,
                bound_text(old, lower),
                bound_text(new, lower),
                self.refused()
            );
            let at = self.new_side(w, r);
            let pointer = new.map_or(at.ptr.clone(), |b| at.keyword(b.keyword));
            self.push(out, pointer, message);
        }
    }

    /// `minLength`, `maxLength`, `minItems`, `maxItems`.
    #[allow(clippy::too_many_arguments)]
    fn count(
        &self,
        w: &At<'a>,
        r: &At<'a>,
        keyword: &str,
        wn: Option<u64>,
        rn: Option<u64>,
        max: bool,
        out: &mut Vec<Break>,
    ) {
        let implied = match (max, wn, rn) {
            (true, _, None) => true,
            (true, None, Some(_)) => false,
            (true, Some(wn), Some(rn)) => wn <= rn,
            (false, wn, rn) => wn.unwrap_or(0) >= rn.unwrap_or(0),
        };
        if implied {
            return;
        }
        let (old, new) = self.old_new(wn, rn);
        let text = |n: Option<u64>| n.map_or("none".to_owned(), |n| n.to_string());
        let message = format!(
            "`{keyword}` {} from {} to {}: {}",
            self.old_new("tightened", "relaxed").0,
            text(old),
            text(new),
            self.refused()
        );
        self.push(out, self.new_side(w, r).keyword(keyword), message);
    }

    fn objects(&self, w: &At<'a>, r: &At<'a>, wk: &Keywords, rk: &Keywords, out: &mut Vec<Break>) {
        let new = self.new_side(w, r);
        for name in rk.required.iter().filter(|n| !wk.required.contains(n)) {
            let message = if self.reader_is_new {
                format!(
                    "property `{name}` became required: data written under version {} without \
                     it is refused",
                    self.version
                )
            } else {
                format!(
                    "property `{name}` is no longer required: data written without it is \
                     refused by version {}",
                    self.version
                )
            };
            self.push(out, new.keyword("required"), message);
        }
        let names: BTreeSet<&str> = [wk.properties, rk.properties]
            .into_iter()
            .flatten()
            .flat_map(|p| p.keys().map(String::as_str))
            .collect();
        for name in names {
            let ((wp, w_listed), (rp, r_listed)) = (w.property(name), r.property(name));
            if rp.schema == &FALSE && wp.schema != &FALSE && !r_listed {
                let message = if self.reader_is_new {
                    format!(
                        "property `{name}` was removed while additionalProperties is false: \
                         data written with it under version {} is refused",
                        self.version
                    )
                } else {
                    format!(
                        "property `{name}` was added, but version {} has additionalProperties \
                         false: data written with it is refused by version {}",
                        self.version, self.version
                    )
                };
                self.push(out, self.new_side(&wp, &rp).ptr.clone(), message);
                continue;
            }
            if w_listed == r_listed {
                self.subset(&wp, &rp, out);
                continue;
            }
            // The pointer alone does not name a property met by additionalProperties.
            let (old_listed, _) = self.old_new(w_listed, r_listed);
            let context = match old_listed {
                true => format!(
                    "property `{name}` (listed in version {}, under additionalProperties in the \
                     new schema)",
                    self.version
                ),
                false => format!(
                    "property `{name}` (listed in the new schema, under additionalProperties in \
                     version {})",
                    self.version
                ),
            };
            let mut nested = Vec::new();
            self.subset(&wp, &rp, &mut nested);
            out.extend(nested.into_iter().map(|b| Break {
                message: format!("{context}: {}", b.message),
                ..b
            }));
        }
        let (wa, ra) = (w.sub("additionalProperties"), r.sub("additionalProperties"));
        if ra.schema == &FALSE && wa.schema != &FALSE {
            let (old, new_value) = self.old_new(additional(w.schema), additional(r.schema));
            let message = format!(
                "additionalProperties changed from {old} to {new_value}: data with properties \
                 that are not listed is refused{}",
                self.old_new(
                    " by the new schema".to_owned(),
                    format!(" by version {}", self.version)
                )
                .0
            );
            return self.push(out, new.keyword("additionalProperties"), message);
        }
        self.subset(&wa, &ra, out);
    }

    /// Identical, and so are the targets of every `$ref` in it, transitively.
    fn same(&self, a: &'a Value, b: &'a Value) -> bool {
        a == b && self.refs_same(a, &mut HashSet::new())
    }

    fn refs_same(&self, v: &'a Value, seen: &mut HashSet<&'a str>) -> bool {
        match v {
            Value::Array(items) => items.iter().all(|x| self.refs_same(x, seen)),
            Value::Object(map) => map.iter().all(|(k, x)| match (k.as_str(), x) {
                ("$ref", Value::String(target)) => self.ref_same(target, seen),
                ("$ref" | "$dynamicRef" | "$recursiveRef", _) => false,
                _ => self.refs_same(x, seen),
            }),
            _ => true,
        }
    }

    fn ref_same(&self, target: &'a str, seen: &mut HashSet<&'a str>) -> bool {
        if !seen.insert(target) {
            return true;
        }
        let Some(pointer) = target.strip_prefix('#') else {
            return false;
        };
        if !self.local_refs || pointer.contains('%') {
            return false;
        }
        match (self.writer.pointer(pointer), self.reader.pointer(pointer)) {
            (Some(a), Some(b)) => a == b && self.refs_same(a, seen),
            _ => false,
        }
    }
}

/// RFC 6901 escaping of one reference token.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn show(pointer: &str) -> &str {
    if pointer.is_empty() {
        "the root"
    } else {
        pointer
    }
}

/// A value in a message, cut short when long.
fn brief(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(60) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Whether every value valid under `writer` is valid under `reader`, by the check.
    fn subset(writer: Value, reader: Value) -> bool {
        let mut out = Vec::new();
        Walk::new(&writer, &reader, true, 1).run(&mut out);
        out.is_empty()
    }

    #[test]
    fn types_and_boolean_schemas() {
        assert!(subset(
            json!({"type": "integer"}),
            json!({"type": "number"})
        ));
        assert!(!subset(
            json!({"type": "number"}),
            json!({"type": "integer"})
        ));
        assert!(subset(
            json!({"type": "string"}),
            json!({"type": ["null", "string"]})
        ));
        assert!(subset(json!(false), json!({"type": "string"})));
        assert!(subset(json!({"type": "string"}), json!(true)));
        assert!(subset(json!(true), json!({"title": "anything"})));
        assert!(!subset(json!(true), json!(false)));
        assert!(!subset(json!(true), json!({"type": "string"})));
        // Nothing is valid under the writer: an integer that must be "a".
        assert!(subset(
            json!({"type": "integer", "enum": ["a"]}),
            json!(false)
        ));
    }

    #[test]
    fn enumerations_are_compared_as_values() {
        assert!(subset(
            json!({"enum": [1, 2.0]}),
            json!({"type": "integer"})
        ));
        assert!(!subset(json!({"enum": [1.5]}), json!({"type": "integer"})));
        assert!(subset(json!({"enum": [1.0]}), json!({"enum": [1]})));
        assert!(subset(json!({"const": "a"}), json!({"enum": ["a", "b"]})));
        assert!(!subset(json!({"type": "string"}), json!({"enum": ["a"]})));
    }

    #[test]
    fn bounds_apply_to_their_kind_only() {
        assert!(subset(
            json!({"exclusiveMinimum": 0}),
            json!({"minimum": 0})
        ));
        assert!(!subset(
            json!({"minimum": 0}),
            json!({"exclusiveMinimum": 0})
        ));
        let both = json!({"minimum": 0, "exclusiveMinimum": 0});
        assert!(subset(both, json!({"exclusiveMinimum": 0})));
        assert!(subset(json!({"type": "string"}), json!({"minimum": 5})));
        assert!(!subset(json!({"type": "number"}), json!({"minimum": 5})));
        assert!(subset(json!({"maxLength": 3}), json!({"maxLength": 4})));
        assert!(!subset(json!({"type": "array"}), json!({"maxItems": 4})));
    }

    #[test]
    fn a_listed_property_meets_the_other_sides_additional_properties() {
        let closed =
            json!({"properties": {"a": {"type": "integer"}}, "additionalProperties": false});
        assert!(subset(
            closed,
            json!({"additionalProperties": {"type": "number"}})
        ));
        let open = json!({"properties": {"a": {"type": "string"}}});
        assert!(!subset(
            open,
            json!({"additionalProperties": {"type": "number"}})
        ));
        let typed = json!({"additionalProperties": {"type": "integer"}});
        assert!(!subset(
            typed,
            json!({"properties": {"a": {"type": "string"}}})
        ));
    }

    #[test]
    fn unchanged_references_must_reach_unchanged_targets() {
        let with = |t: &str| json!({"$defs": {"t": {"type": t}}, "items": {"$ref": "#/$defs/t"}});
        assert!(subset(with("integer"), with("integer")));
        assert!(!subset(with("integer"), with("number")));
        // A nested `$id` moves the base of the references: they are not followed.
        let moved = json!({"items": {"$id": "x", "$ref": "#/$defs/t"}, "properties": {}});
        let changed = json!({"items": {"$id": "x", "$ref": "#/$defs/t"}});
        assert!(!subset(moved, changed));
    }
}
