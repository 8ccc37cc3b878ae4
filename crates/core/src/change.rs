use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{EntityId, InvalidInput, Object, RecordKey, TenantId};

/// The idempotency key of a change, unique per dataset and tenant. Producers choose it (the
/// `Idempotency-Key` header, an outbox row id, a CDC source position); when they don't, the API
/// makes one up.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ChangeId(String);

impl ChangeId {
    pub const MAX_LEN: usize = 255;

    /// Change ids starting with this are made by tenantsync itself; the API refuses them from
    /// writers. [`ChangeId::new`] accepts them: the store and the server build them.
    pub const RESERVED_PREFIX: &str = "tenantsync:";

    /// Change ids of the deletes a tenant erasure makes (within [`Self::RESERVED_PREFIX`]).
    /// While a tenant is being erased, the store applies only its changes with such ids.
    pub const ERASURE_PREFIX: &str = "tenantsync:erasure:";

    pub fn new(s: impl Into<String>) -> Result<Self, InvalidInput> {
        let s = s.into();
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(InvalidInput::new(
                "idempotency_key",
                format!("must be 1 to {} bytes, got {}", Self::MAX_LEN, s.len()),
            ));
        }
        if s.chars().any(|c| c.is_control()) {
            return Err(InvalidInput::new(
                "idempotency_key",
                "must not contain control characters",
            ));
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether tenantsync itself made this id (it starts with [`Self::RESERVED_PREFIX`]).
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with(Self::RESERVED_PREFIX)
    }

    /// Whether this is the id of a tenant erasure's change (it starts with
    /// [`Self::ERASURE_PREFIX`]).
    pub fn is_erasure(&self) -> bool {
        self.0.starts_with(Self::ERASURE_PREFIX)
    }
}

impl fmt::Display for ChangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ChangeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// What a change does to its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Replace the record's data (creating the record if absent).
    Upsert,
    /// Apply a JSON Merge Patch (RFC 7396) to the existing record's data.
    Patch,
    /// Delete the record, leaving a tombstone that keeps its version.
    Delete,
}

/// One create/update/delete of a tenant-scoped record, as carried on a dataset's changes log.
///
/// `expected_version` is an optimistic-concurrency precondition: `Some(v)` with `v >= 1` means
/// "apply only if the record exists at version `v`", `Some(0)` means "apply only if the record
/// does not exist" (`If-None-Match: *`). A change whose precondition fails is rejected, and the
/// rejection is stored as the change's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub change_id: ChangeId,
    pub op: Op,
    pub tenant: TenantId,
    pub id: EntityId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Object>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u64>,
    /// When the write API (or relay) accepted the change.
    pub accepted_at: DateTime<Utc>,
}

impl Change {
    /// Checks the invariants a change must hold before it is appended to a log: upserts and
    /// patches carry a data object, deletes carry none.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        match (self.op, &self.data) {
            (Op::Upsert | Op::Patch, None) => Err(InvalidInput::new(
                "data",
                "an upsert or patch needs a JSON object as data",
            )),
            (Op::Delete, Some(_)) => Err(InvalidInput::new("data", "a delete carries no data")),
            _ => Ok(()),
        }
    }

    pub fn key(&self) -> RecordKey {
        RecordKey::new(self.tenant.clone(), self.id.clone())
    }
}

/// Applies a JSON Merge Patch (RFC 7396) to an object. `null` members remove keys; nested
/// objects merge; everything else replaces.
pub fn merge_patch(target: &Object, patch: &Object) -> Object {
    let mut doc = serde_json::Value::Object(target.clone());
    json_patch::merge(&mut doc, &serde_json::Value::Object(patch.clone()));
    match doc {
        serde_json::Value::Object(map) => map,
        // A merge of an object patch into an object always yields an object.
        _ => unreachable!("merge patch of two objects is an object"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(v: serde_json::Value) -> Object {
        v.as_object().unwrap().clone()
    }

    /// Examples from RFC 7396, appendix A, restricted to object targets and patches.
    #[test]
    fn merge_patch_follows_rfc_7396() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (target, patch, expected) in cases {
            assert_eq!(merge_patch(&obj(target), &obj(patch)), obj(expected));
        }
    }

    #[test]
    fn change_validation() {
        let mut c = Change {
            change_id: ChangeId::new("c1").unwrap(),
            op: Op::Delete,
            tenant: TenantId::new("acme").unwrap(),
            id: EntityId::new("1").unwrap(),
            data: None,
            expected_version: None,
            accepted_at: Utc::now(),
        };
        assert!(c.validate().is_ok());
        c.op = Op::Upsert;
        assert_eq!(c.validate().unwrap_err().field, "data");
        c.data = Some(Object::new());
        assert!(c.validate().is_ok());
        let back: Change = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn change_ids_reject_empty_long_and_control() {
        assert!(ChangeId::new("").is_err());
        assert!(ChangeId::new("x".repeat(256)).is_err());
        assert!(ChangeId::new("a\tb").is_err());
        assert!(ChangeId::new("order-17/retry").is_ok());
    }

    #[test]
    fn reserved_and_erasure_ids() {
        let id = |s: &str| ChangeId::new(s).unwrap();
        assert!(ChangeId::ERASURE_PREFIX.starts_with(ChangeId::RESERVED_PREFIX));
        for (s, reserved, erasure) in [
            ("order-17", false, false),
            ("tenantsync", false, false),
            ("Tenantsync:x", false, false),
            ("x-tenantsync:erasure:1", false, false),
            ("tenantsync:", true, false),
            ("tenantsync:other", true, false),
            ("tenantsync:erasure", true, false),
            ("tenantsync:erasure:", true, true),
            ("tenantsync:erasure:items:sku-1", true, true),
        ] {
            assert_eq!(id(s).is_reserved(), reserved, "{s}");
            assert_eq!(id(s).is_erasure(), erasure, "{s}");
        }
    }
}
