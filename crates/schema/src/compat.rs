//! Compatibility of JSON Schemas, with Confluent Schema Registry's modes.
//!
//! STUB: the compat engineer replaces this file.

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    /// `BACKWARD`, ... as Confluent spells it.
    pub fn as_str(self) -> &'static str {
        unimplemented!()
    }

    /// Parses Confluent's spelling; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let _ = s;
        unimplemented!()
    }
}

/// What breaks if `new` is registered after `history` (every earlier version, oldest first, with
/// its version number) under `mode`. Empty: compatible.
pub fn check(mode: Compatibility, new: &Value, history: &[(u32, Value)]) -> Vec<Break> {
    let _ = (mode, new, history);
    unimplemented!()
}
