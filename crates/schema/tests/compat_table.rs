//! The compatibility table: for every mode, schema changes with their expected verdicts and the
//! pointers (into the new schema) of what breaks; transitive modes against a longer history; and
//! a randomized check that a change called compatible never refuses data the old schema
//! accepted, with the jsonschema validator as the judge.

use serde_json::{Value, json};
use tenantsync_schema::compat::check;
use tenantsync_schema::{Break, Compatibility};

const MODES: [Compatibility; 7] = [
    Compatibility::Backward,
    Compatibility::BackwardTransitive,
    Compatibility::Forward,
    Compatibility::ForwardTransitive,
    Compatibility::Full,
    Compatibility::FullTransitive,
    Compatibility::None,
];
const OK: bool = true;
const NO: bool = false;

/// One schema change. `verdicts` are in the order of [`MODES`]; `backward` and `forward` are the
/// pointers of the breaks found in each direction (new reading old, old reading new).
struct Case {
    name: &'static str,
    old: Value,
    new: Value,
    verdicts: [bool; 7],
    backward: &'static [&'static str],
    forward: &'static [&'static str],
}

fn object(properties: Value) -> Value {
    json!({"type": "object", "properties": properties})
}

fn closed(properties: Value) -> Value {
    json!({"type": "object", "properties": properties, "additionalProperties": false})
}

fn cases() -> Vec<Case> {
    let name = json!({"type": "string"});
    let any_of = json!({"anyOf": [{"type": "string"}, {"type": "integer"}]});
    vec![
        Case {
            name: "add an optional property, closed content model",
            old: closed(json!({"name": name})),
            new: closed(json!({"name": name, "color": {"type": "string"}})),
            verdicts: [OK, OK, NO, NO, NO, NO, OK],
            backward: &[],
            forward: &["/properties/color"],
        },
        Case {
            name: "add an optional property, open content model",
            old: object(json!({"name": name})),
            new: object(json!({"name": name, "color": {"type": "string"}})),
            verdicts: [NO, NO, OK, OK, NO, NO, OK],
            backward: &["/properties/color/type"],
            forward: &[],
        },
        Case {
            name: "add an optional property that accepts anything, open content model",
            old: object(json!({"name": name})),
            new: object(json!({"name": name, "note": {"description": "free text"}})),
            verdicts: [OK, OK, OK, OK, OK, OK, OK],
            backward: &[],
            forward: &[],
        },
        Case {
            name: "add a required property",
            old: object(json!({"name": name})),
            new: json!({"type": "object", "properties": {"name": name, "color": {}},
                        "required": ["color"]}),
            verdicts: [NO, NO, OK, OK, NO, NO, OK],
            backward: &["/required"],
            forward: &[],
        },
        Case {
            name: "a property is no longer required",
            old: json!({"type": "object", "properties": {"name": name}, "required": ["name"]}),
            new: json!({"type": "object", "properties": {"name": name}, "required": []}),
            verdicts: [OK, OK, NO, NO, NO, NO, OK],
            backward: &[],
            forward: &["/required"],
        },
        Case {
            name: "remove a property, additionalProperties true",
            old: object(json!({"name": name, "note": {"type": "string"}})),
            new: object(json!({"name": name})),
            verdicts: [OK, OK, NO, NO, NO, NO, OK],
            backward: &[],
            forward: &[""],
        },
        Case {
            name: "remove a property, additionalProperties false",
            old: closed(json!({"name": name, "note": {"type": "string"}})),
            new: closed(json!({"name": name})),
            verdicts: [NO, NO, OK, OK, NO, NO, OK],
            backward: &["/additionalProperties"],
            forward: &[],
        },
        Case {
            name: "widen a type: integer to number",
            old: object(json!({"qty": {"type": "integer"}})),
            new: object(json!({"qty": {"type": "number"}})),
            verdicts: [OK, OK, NO, NO, NO, NO, OK],
            backward: &[],
            forward: &["/properties/qty/type"],
        },
        Case {
            name: "widen a type: add null",
            old: object(json!({"note": {"type": "string"}})),
            new: object(json!({"note": {"type": ["string", "null"]}})),
            verdicts: [OK, OK, NO, NO, NO, NO, OK],
            backward: &[],
            forward: &["/properties/note/type"],
        },
        Case {
            name: "narrow a type: number to integer",
            old: object(json!({"qty": {"type": "number"}})),
            new: object(json!({"qty": {"type": "integer"}})),
            verdicts: [NO, NO, OK, OK, NO, NO, OK],
            backward: &["/properties/qty/type"],
            forward: &[],
        },
        Case {
            name: "change a type: string to integer",
            old: object(json!({"code": {"type": "string"}})),
            new: object(json!({"code": {"type": "integer"}})),
            verdicts: [NO, NO, NO, NO, NO, NO, OK],
            backward: &["/properties/code/type"],
            forward: &["/properties/code/type"],
        },
        Case {
            name: "additionalProperties true to false",
            old: object(json!({"name": name})),
            new: closed(json!({"name": name})),
            verdicts: [NO, NO, OK, OK, NO, NO, OK],
            backward: &["/additionalProperties"],
            forward: &[],
        },
        Case {
            name: "additionalProperties false to true",
            old: closed(json!({"name": name})),
            new: json!({"type": "object", "properties": {"name": name},
                        "additionalProperties": true}),
            verdicts: [OK, OK, NO, NO, NO, NO, OK],
            backward: &[],
            forward: &["/additionalProperties"],
        },
        Case {
            name: "additionalProperties true to a schema",
            old: object(json!({"name": name})),
            new: json!({"type": "object", "properties": {"name": name},
                        "additionalProperties": {"type": "integer"}}),
            verdicts: [NO, NO, OK, OK, NO, NO, OK],
            backward: &["/additionalProperties/type"],
            forward: &[],
        },
        Case {
            name: "add an enum value",
            old: object(json!({"size": {"enum": ["s", "m"]}})),
            new: object(json!({"size": {"enum": ["s", "m", "l"]}})),
            verdicts: [OK, OK, NO, NO, NO, NO, OK],
            backward: &[],
            forward: &["/properties/size/enum"],
        },
        Case {
            name: "remove an enum value",
            old: object(json!({"size": {"enum": ["s", "m", "l"]}})),
            new: object(json!({"size": {"enum": ["s", "m"]}})),
            verdicts: [NO, NO, OK, OK, NO, NO, OK],
            backward: &["/properties/size/enum"],
            forward: &[],
        },
        Case {
            name: "change a const",
            old: object(json!({"kind": {"const": "a"}})),
            new: object(json!({"kind": {"const": "b"}})),
            verdicts: [NO, NO, NO, NO, NO, NO, OK],
            backward: &["/properties/kind/const"],
            forward: &["/properties/kind/const"],
        },
        Case {
            name: "tighten a bound: maxLength 20 to 10",
            old: object(json!({"name": {"type": "string", "maxLength": 20}})),
            new: object(json!({"name": {"type": "string", "maxLength": 10}})),
            verdicts: [NO, NO, OK, OK, NO, NO, OK],
            backward: &["/properties/name/maxLength"],
            forward: &[],
        },
        Case {
            name: "relax a bound: minimum 0 to -10",
            old: object(json!({"qty": {"type": "integer", "minimum": 0}})),
            new: object(json!({"qty": {"type": "integer", "minimum": -10}})),
            verdicts: [OK, OK, NO, NO, NO, NO, OK],
            backward: &[],
            forward: &["/properties/qty/minimum"],
        },
        Case {
            name: "minimum 0 becomes exclusiveMinimum 0",
            old: object(json!({"qty": {"type": "number", "minimum": 0}})),
            new: object(json!({"qty": {"type": "number", "exclusiveMinimum": 0}})),
            verdicts: [NO, NO, OK, OK, NO, NO, OK],
            backward: &["/properties/qty/exclusiveMinimum"],
            forward: &[],
        },
        Case {
            name: "tighten maxItems, widen items",
            old: object(json!({"tags": {"type": "array", "items": {"type": "integer"}}})),
            new: object(
                json!({"tags": {"type": "array", "items": {"type": "number"},
                                        "maxItems": 5}}),
            ),
            verdicts: [NO, NO, NO, NO, NO, NO, OK],
            backward: &["/properties/tags/maxItems"],
            forward: &["/properties/tags/items/type"],
        },
        Case {
            name: "add a pattern",
            old: object(json!({"sku": {"type": "string"}})),
            new: object(json!({"sku": {"type": "string", "pattern": "^[A-Z]+$"}})),
            verdicts: [NO, NO, OK, OK, NO, NO, OK],
            backward: &["/properties/sku/pattern"],
            forward: &[],
        },
        Case {
            name: "change a pattern",
            old: object(json!({"sku": {"type": "string", "pattern": "^[A-Z]+$"}})),
            new: object(json!({"sku": {"type": "string", "pattern": "^[A-Z0-9]+$"}})),
            verdicts: [NO, NO, NO, NO, NO, NO, OK],
            backward: &["/properties/sku/pattern"],
            forward: &["/properties/sku/pattern"],
        },
        Case {
            name: "a nested property becomes required",
            old: object(json!({"address": object(json!({"city": name}))})),
            new: object(
                json!({"address": {"type": "object", "properties": {"city": name},
                                           "required": ["city"]}}),
            ),
            verdicts: [NO, NO, OK, OK, NO, NO, OK],
            backward: &["/properties/address/required"],
            forward: &[],
        },
        Case {
            name: "a property whose name needs escaping narrows",
            old: object(json!({"a/b~c": {"type": "number"}})),
            new: object(json!({"a/b~c": {"type": "integer"}})),
            verdicts: [NO, NO, OK, OK, NO, NO, OK],
            backward: &["/properties/a~1b~0c/type"],
            forward: &[],
        },
        Case {
            name: "annotations changed only",
            old: object(json!({"when": {"type": "string", "format": "date"}})),
            new: json!({"title": "T", "$comment": "c", "type": "object", "properties": {
                "when": {"type": "string", "format": "date-time", "description": "d",
                         "examples": ["x"], "default": "y", "deprecated": true,
                         "readOnly": true}}}),
            verdicts: [OK, OK, OK, OK, OK, OK, OK],
            backward: &[],
            forward: &[],
        },
        Case {
            name: "an unsupported keyword changed",
            old: object(json!({"code": any_of})),
            new: object(json!({"code": {"anyOf": [{"type": "string"}, {"type": "null"}]}})),
            verdicts: [NO, NO, NO, NO, NO, NO, OK],
            backward: &["/properties/code/anyOf"],
            forward: &["/properties/code/anyOf"],
        },
        Case {
            name: "an unsupported keyword added",
            old: object(json!({"code": {"type": "string"}})),
            new: object(json!({"code": {"type": "string", "not": {"const": ""}}})),
            verdicts: [NO, NO, NO, NO, NO, NO, OK],
            backward: &["/properties/code/not"],
            forward: &["/properties/code/not"],
        },
        Case {
            name: "an unsupported keyword unchanged while another property widens",
            old: object(json!({"code": any_of, "qty": {"type": "integer"}})),
            new: object(json!({"code": any_of, "qty": {"type": "number"}})),
            verdicts: [OK, OK, NO, NO, NO, NO, OK],
            backward: &[],
            forward: &["/properties/qty/type"],
        },
        Case {
            name: "unsupported keywords, schema unchanged",
            old: json!({"$defs": {"q": {"type": "integer"}}, "allOf": [{"$ref": "#/$defs/q"}]}),
            new: json!({"$defs": {"q": {"type": "integer"}}, "allOf": [{"$ref": "#/$defs/q"}]}),
            verdicts: [OK, OK, OK, OK, OK, OK, OK],
            backward: &[],
            forward: &[],
        },
        Case {
            name: "an unchanged $ref whose target changed",
            old: json!({"$defs": {"q": {"type": "integer"}},
                        "properties": {"qty": {"$ref": "#/$defs/q"}}}),
            new: json!({"$defs": {"q": {"type": "number"}},
                        "properties": {"qty": {"$ref": "#/$defs/q"}}}),
            verdicts: [NO, NO, NO, NO, NO, NO, OK],
            backward: &["/$defs", "/properties/qty/$ref"],
            forward: &["/$defs", "/properties/qty/$ref"],
        },
        Case {
            name: "patternProperties unchanged while a property changes",
            old: json!({"patternProperties": {"^x-": {"type": "string"}},
                        "properties": {"name": name}}),
            new: json!({"patternProperties": {"^x-": {"type": "string"}},
                        "properties": {"name": name, "x-id": {}}}),
            verdicts: [NO, NO, NO, NO, NO, NO, OK],
            backward: &["/patternProperties"],
            forward: &["/patternProperties"],
        },
        Case {
            name: "another draft's $schema",
            old: json!({"$schema": "http://json-schema.org/draft-07/schema#",
                        "properties": {"name": {"maxLength": 5}}}),
            new: json!({"$schema": "http://json-schema.org/draft-07/schema#",
                        "properties": {"name": {"maxLength": 9}}}),
            verdicts: [NO, NO, NO, NO, NO, NO, OK],
            backward: &["/$schema"],
            forward: &["/$schema", "/properties/name/maxLength"],
        },
        Case {
            name: "the new schema is false",
            old: object(json!({"name": name})),
            new: json!(false),
            verdicts: [NO, NO, OK, OK, NO, NO, OK],
            backward: &[""],
            forward: &[],
        },
    ]
}

fn sorted(mut pointers: Vec<String>) -> Vec<String> {
    pointers.sort();
    pointers.dedup();
    pointers
}

fn expected_pointers(case: &Case, mode: Compatibility) -> Vec<String> {
    let (backward, forward) = match mode {
        Compatibility::Backward | Compatibility::BackwardTransitive => (true, false),
        Compatibility::Forward | Compatibility::ForwardTransitive => (false, true),
        Compatibility::Full | Compatibility::FullTransitive => (true, true),
        Compatibility::None => (false, false),
    };
    let mut pointers = Vec::new();
    if backward {
        pointers.extend(case.backward.iter().map(|p| p.to_string()));
    }
    if forward {
        pointers.extend(case.forward.iter().map(|p| p.to_string()));
    }
    sorted(pointers)
}

fn transitive(mode: Compatibility) -> bool {
    matches!(
        mode,
        Compatibility::BackwardTransitive
            | Compatibility::ForwardTransitive
            | Compatibility::FullTransitive
    )
}

#[test]
fn every_mode_gives_the_expected_verdict_and_pointers() {
    let cases = cases();
    assert!(cases.len() >= 12);
    let mut failures = Vec::new();
    for case in &cases {
        // The old schema twice: non-transitive modes look at version 2 only, transitive at both.
        let history = [(1, case.old.clone()), (2, case.old.clone())];
        for (mode, compatible) in MODES.into_iter().zip(case.verdicts) {
            let breaks = check(mode, &case.new, &history);
            let versions: Vec<u32> = match (breaks.is_empty(), transitive(mode)) {
                (true, _) => vec![],
                (false, true) => vec![1, 2],
                (false, false) => vec![2],
            };
            for version in &versions {
                let here: Vec<String> = (breaks.iter().filter(|b| b.version == *version))
                    .map(|b| b.pointer.clone())
                    .collect();
                if sorted(here.clone()) != expected_pointers(case, mode) {
                    failures.push(format!(
                        "{} under {}: pointers {here:?} against version {version}, expected \
                         {:?}",
                        case.name,
                        mode.as_str(),
                        expected_pointers(case, mode)
                    ));
                }
            }
            let mut found: Vec<u32> = breaks.iter().map(|b| b.version).collect();
            found.dedup();
            if breaks.is_empty() != compatible || found != versions {
                failures.push(format!(
                    "{} under {}: expected {}, got {breaks:#?}",
                    case.name,
                    mode.as_str(),
                    if compatible { "compatible" } else { "a break" },
                ));
            }
            assert!(breaks.iter().all(|b| !b.message.is_empty()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn an_empty_history_is_always_compatible() {
    let new = object(json!({"qty": {"type": "integer"}}));
    for mode in MODES {
        assert_eq!(check(mode, &new, &[]), Vec::<Break>::new(), "{mode:?}");
    }
}

fn versions(breaks: &[Break]) -> Vec<u32> {
    let mut versions: Vec<u32> = breaks.iter().map(|b| b.version).collect();
    versions.sort();
    versions.dedup();
    versions
}

/// v1 number, v2 integer (registered while the mode was NONE), v3 adds an optional property.
fn narrowing_history() -> Vec<(u32, Value)> {
    let v1 = object(json!({"qty": {"type": "number"}}));
    let v2 = object(json!({"qty": {"type": "integer"}}));
    let v3 = object(json!({"qty": {"type": "integer"}, "note": {}}));
    vec![(1, v1), (2, v2), (3, v3)]
}

/// v1 integer, v2 number (registered while the mode was NONE), v3 adds an optional property.
fn widening_history() -> Vec<(u32, Value)> {
    let v1 = object(json!({"qty": {"type": "integer"}}));
    let v2 = object(json!({"qty": {"type": "number"}}));
    let v3 = object(json!({"qty": {"type": "number"}, "note": {}}));
    vec![(1, v1), (2, v2), (3, v3)]
}

#[test]
fn transitive_modes_look_at_every_version() {
    let new = |qty: &str| object(json!({"qty": {"type": qty}, "note": {}, "color": {}}));
    let narrowing = narrowing_history();
    let widening = widening_history();
    let cases = [
        (Compatibility::Backward, &narrowing, new("integer"), vec![]),
        (
            Compatibility::BackwardTransitive,
            &narrowing,
            new("integer"),
            vec![1],
        ),
        (Compatibility::Forward, &widening, new("number"), vec![]),
        (
            Compatibility::ForwardTransitive,
            &widening,
            new("number"),
            vec![1],
        ),
        (Compatibility::Full, &widening, new("number"), vec![]),
        (
            Compatibility::FullTransitive,
            &widening,
            new("number"),
            vec![1],
        ),
        (Compatibility::Full, &narrowing, new("integer"), vec![]),
        (
            Compatibility::FullTransitive,
            &narrowing,
            new("integer"),
            vec![1],
        ),
    ];
    for (mode, history, new, expected) in cases {
        let breaks = check(mode, &new, history);
        assert_eq!(versions(&breaks), expected, "{mode:?}: {breaks:#?}");
        for b in &breaks {
            assert_eq!(b.pointer, "/properties/qty/type", "{mode:?}: {b:?}");
        }
    }
    // A break against the latest version is one for both kinds of mode: a transitive mode never
    // passes where its non-transitive one fails.
    let new = object(json!({"qty": {"type": "string"}, "note": {}}));
    for (mode, history, expected) in [
        (Compatibility::Backward, &narrowing, vec![3]),
        (Compatibility::BackwardTransitive, &narrowing, vec![1, 2, 3]),
        (Compatibility::Forward, &widening, vec![3]),
        (Compatibility::ForwardTransitive, &widening, vec![1, 2, 3]),
        (Compatibility::Full, &widening, vec![3]),
        (Compatibility::FullTransitive, &widening, vec![1, 2, 3]),
    ] {
        let breaks = check(mode, &new, history);
        assert_eq!(versions(&breaks), expected, "{mode:?}: {breaks:#?}");
    }
    assert!(check(Compatibility::None, &new, &narrowing).is_empty());
}

#[test]
fn messages_say_what_breaks() {
    let old = object(json!({"qty": {"type": "number"}}));
    let new = json!({"type": "object", "properties": {"qty": {"type": "integer"}},
                     "required": ["age"]});
    let messages: Vec<String> = check(Compatibility::Backward, &new, &[(4, old.clone())])
        .into_iter()
        .map(|b| b.message)
        .collect();
    assert_eq!(
        messages,
        [
            "property `age` became required: data written under version 4 without it is refused",
            "type narrowed from number to integer: data valid under version 4 is refused by the \
             new schema",
        ]
    );
    let forward = check(Compatibility::Forward, &old, &[(4, new)]);
    assert_eq!(forward.len(), 2, "{forward:#?}");
    assert_eq!(
        forward[1].message,
        "type widened from integer to number: data valid under the new schema is refused by \
         version 4"
    );
    assert_eq!(
        forward[0].message,
        "property `age` is no longer required: data written without it is refused by version 4"
    );
    let anyof = check(
        Compatibility::Backward,
        &object(json!({"x": {"anyOf": [{"type": "null"}]}})),
        &[(1, object(json!({"x": {"anyOf": []}})))],
    );
    assert_eq!(
        anyof[0].message,
        "keyword `anyOf` at /properties/x is not understood by the compatibility check"
    );
}

#[test]
fn modes_are_spelled_as_confluent_spells_them() {
    let names = [
        "BACKWARD",
        "BACKWARD_TRANSITIVE",
        "FORWARD",
        "FORWARD_TRANSITIVE",
        "FULL",
        "FULL_TRANSITIVE",
        "NONE",
    ];
    for (mode, name) in MODES.into_iter().zip(names) {
        assert_eq!(mode.as_str(), name);
        assert_eq!(Compatibility::parse(name), Some(mode));
        assert_eq!(serde_json::to_value(mode).unwrap(), json!(name));
    }
    assert_eq!(Compatibility::parse("backward"), None);
    assert_eq!(Compatibility::parse("FULLY"), None);
    assert_eq!(Compatibility::default(), Compatibility::Backward);
}

/// Random numbers from a tape, so that a schema can be varied by changing one draw and
/// generating it again.
struct Tape {
    draws: Vec<u64>,
    at: usize,
    state: u64,
}

impl Tape {
    fn new(seed: u64) -> Self {
        Tape {
            draws: Vec::new(),
            at: 0,
            state: seed,
        }
    }

    fn fresh(&mut self) -> u64 {
        // splitmix64
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if self.at == self.draws.len() {
            let draw = self.fresh();
            self.draws.push(draw);
        }
        self.at += 1;
        self.draws[self.at - 1] % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize].clone()
    }

    /// The same draws but one, replayed from the start.
    fn varied(&mut self) -> Tape {
        let mut draws = self.draws.clone();
        let i = self.below(draws.len() as u64) as usize;
        draws[i] = self.fresh();
        Tape {
            draws,
            at: 0,
            state: self.fresh(),
        }
    }
}

fn pool() -> Vec<Value> {
    vec![
        json!(null),
        json!(true),
        json!(0),
        json!(1),
        json!(-1),
        json!(1.5),
        json!(2),
        json!(""),
        json!("a"),
        json!("ab"),
        json!("ba"),
        json!([]),
        json!({}),
    ]
}

fn random_schema(t: &mut Tape, depth: u32) -> Value {
    match t.below(20) {
        0 => return json!(true),
        1 => return json!(false),
        _ => {}
    }
    let mut s = serde_json::Map::new();
    let names = [
        "string", "integer", "number", "null", "boolean", "array", "object",
    ];
    if t.chance(50) {
        let (first, second) = (t.pick(&names), t.pick(&names));
        let kind = match t.chance(25) && first != second {
            true => json!([first, second]),
            false => json!(first),
        };
        s.insert("type".into(), kind);
    }
    if t.chance(15) {
        let n = 1 + t.below(3);
        let values: Vec<Value> = (0..n).map(|_| t.pick(&pool())).collect();
        s.insert("enum".into(), json!(values));
    }
    if t.chance(5) {
        s.insert("const".into(), t.pick(&pool()));
    }
    let numbers = [json!(-1), json!(0), json!(1), json!(1.5), json!(2)];
    for key in ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] {
        if t.chance(12) {
            s.insert(key.into(), t.pick(&numbers));
        }
    }
    for key in ["minLength", "maxLength", "minItems", "maxItems"] {
        if t.chance(12) {
            s.insert(key.into(), json!(t.below(3)));
        }
    }
    if t.chance(10) {
        s.insert("pattern".into(), json!(t.pick(&["^a", "b$"])));
    }
    if t.chance(10) {
        s.insert("description".into(), json!("d"));
    }
    if depth > 0 {
        if t.chance(20) {
            s.insert("items".into(), random_schema(t, depth - 1));
        }
        if t.chance(40) {
            let mut properties = serde_json::Map::new();
            for name in ["a", "b"] {
                if t.chance(60) {
                    properties.insert(name.into(), random_schema(t, depth - 1));
                }
            }
            s.insert("properties".into(), Value::Object(properties));
        }
        if t.chance(30) {
            let required: Vec<&str> = ["a", "b", "c"]
                .into_iter()
                .filter(|_| t.chance(40))
                .collect();
            s.insert("required".into(), json!(required));
        }
        if t.chance(30) {
            let additional = match t.below(3) {
                0 => json!(false),
                1 => json!(true),
                _ => random_schema(t, depth - 1),
            };
            s.insert("additionalProperties".into(), additional);
        }
        if t.chance(5) {
            s.insert("not".into(), random_schema(t, depth - 1));
        }
    }
    Value::Object(s)
}

fn random_instance(t: &mut Tape, depth: u32) -> Value {
    match (t.below(10), depth) {
        (0 | 1, d) if d > 0 => {
            let n = t.below(4);
            Value::Array((0..n).map(|_| random_instance(t, d - 1)).collect())
        }
        (2 | 3, d) if d > 0 => {
            let mut m = serde_json::Map::new();
            for name in ["a", "b", "c"] {
                if t.chance(50) {
                    m.insert(name.into(), random_instance(t, d - 1));
                }
            }
            Value::Object(m)
        }
        _ => t.pick(&pool()),
    }
}

#[test]
fn a_compatible_change_never_refuses_what_the_old_schema_accepted() {
    let mut t = Tape::new(0x5eed_c0de);
    let mut nontrivial = 0;
    for _ in 0..3000 {
        let mut first = Tape::new(t.fresh());
        let a = random_schema(&mut first, 2);
        let b = match t.chance(70) {
            true => random_schema(&mut first.varied(), 2),
            false => random_schema(&mut Tape::new(t.fresh()), 2),
        };
        let instances: Vec<Value> = (0..40).map(|_| random_instance(&mut t, 2)).collect();
        for (old, new) in [(&a, &b), (&b, &a)] {
            if !check(Compatibility::Backward, new, &[(1, old.clone())]).is_empty() {
                continue;
            }
            let old_validator = jsonschema::draft202012::new(old).unwrap();
            let new_validator = jsonschema::draft202012::new(new).unwrap();
            let mut accepted = 0;
            for x in instances.iter().filter(|x| old_validator.is_valid(x)) {
                accepted += 1;
                assert!(
                    new_validator.is_valid(x),
                    "called compatible, yet {x} is valid under the old schema {old} and not under \
                     the new one {new}"
                );
            }
            if old != new && accepted > 0 {
                nontrivial += 1;
            }
        }
    }
    // Enough compatible pairs that differ and share data for the test to mean something.
    assert!(
        nontrivial > 300,
        "only {nontrivial} compatible pairs were tried"
    );
}
