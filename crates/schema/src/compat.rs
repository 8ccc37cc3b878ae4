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
use serde_json::{Map, Number, Value};

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

/// Kinds of JSON values, as bits: `number` is `INTEGER | FRACTION`.
const NULL: u8 = 1;
const BOOLEAN: u8 = 2;
const OBJECT: u8 = 4;
const ARRAY: u8 = 8;
const INTEGER: u8 = 16;
const FRACTION: u8 = 32;
const STRING: u8 = 64;
const ANY: u8 = 127;

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

/// A lower or upper bound on numbers.
#[derive(Clone, Copy)]
struct Bound<'a> {
    n: &'a Number,
    exclusive: bool,
    keyword: &'static str,
}

/// The understood keywords of one subschema.
struct Keywords<'a> {
    kinds: u8,
    types: Option<&'a Value>,
    enumeration: Option<&'a Vec<Value>>,
    constant: Option<&'a Value>,
    properties: Option<&'a Map<String, Value>>,
    required: Vec<&'a str>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    lower: Option<Bound<'a>>,
    upper: Option<Bound<'a>>,
    pattern: Option<&'a str>,
    /// Keywords not understood (unknown, or malformed), compatible only when unchanged.
    unknown: Vec<&'a str>,
    /// Keywords that are a break whenever the subschemas differ.
    entangled: Vec<&'a str>,
}

impl<'a> Keywords<'a> {
    fn parse(schema: &'a Map<String, Value>, root: bool) -> Self {
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
    fn finite(&self) -> Option<Vec<&'a Value>> {
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

    fn allows_value(&self, v: &Value) -> bool {
        self.enumeration
            .is_none_or(|e| e.iter().any(|x| same_instance(x, v)))
            && self.constant.is_none_or(|c| same_instance(c, v))
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
        let (Some(wm), Some(rm)) = (as_schema(w.schema), as_schema(r.schema)) else {
            let message = if r.schema == &FALSE {
                let what = self.old_new("the schema became `false`", "`false` became a schema");
                format!("{}: {}", what.0, self.refused())
            } else {
                format!(
                    "the schema at {} is neither an object nor a boolean",
                    show(&new.ptr)
                )
            };
            return self.push(out, new.ptr.clone(), message);
        };
        let wk = Keywords::parse(wm, std::ptr::eq(w.schema, self.writer));
        let rk = Keywords::parse(rm, std::ptr::eq(r.schema, self.reader));
        let finite = wk.finite();
        let kinds = match &finite {
            Some(values) => values.iter().fold(0, |k, v| k | kind(v)),
            None => wk.kinds,
        };
        if kinds == 0 {
            return; // nothing is valid under the writer's schema
        }
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

fn as_schema(v: &Value) -> Option<&Map<String, Value>> {
    static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
    match v {
        Value::Object(m) => Some(m),
        Value::Bool(true) => Some(&EMPTY),
        _ => None,
    }
}

fn type_kinds(v: &Value) -> Option<u8> {
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

fn kind(v: &Value) -> u8 {
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

fn types(t: Option<&Value>) -> String {
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

fn bound_text(b: Option<Bound>, lower: bool) -> String {
    match (b, lower) {
        (None, _) => "none".to_owned(),
        (Some(b), true) => format!("{} {}", if b.exclusive { ">" } else { ">=" }, b.n),
        (Some(b), false) => format!("{} {}", if b.exclusive { "<" } else { "<=" }, b.n),
    }
}

/// Compares JSON numbers exactly, whether integers or floats.
fn num_cmp(a: &Number, b: &Number) -> Ordering {
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
fn same_instance(a: &Value, b: &Value) -> bool {
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

/// Whether any subschema below the root has an `$id` (which moves the base of its `$ref`s).
fn nested_id(root: &Value) -> bool {
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

fn additional(schema: &Value) -> &'static str {
    match schema.get("additionalProperties") {
        None => "true (absent)",
        Some(Value::Bool(true)) => "true",
        Some(Value::Bool(false)) => "false",
        Some(_) => "a schema",
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
