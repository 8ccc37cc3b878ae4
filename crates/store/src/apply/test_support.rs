//! Builders and a reference model of one key, shared by the tests of [`super::decide`] and
//! [`super::plan`].

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::json;
use tenantsync_core::{
    Change, ChangeId, EntityId, Object, Op, Outcome, Record, RejectReason, TenantId,
};

pub(crate) fn obj(v: serde_json::Value) -> Object {
    v.as_object().unwrap().clone()
}

pub(crate) fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap()
}

pub(crate) fn change(
    id: &str,
    op: Op,
    data: Option<serde_json::Value>,
    expected_version: Option<u64>,
) -> Change {
    Change {
        change_id: ChangeId::new(id).unwrap(),
        op,
        tenant: TenantId::new("acme").unwrap(),
        id: EntityId::new("sku-1").unwrap(),
        data: data.map(obj),
        expected_version,
        accepted_at: now(),
    }
}

pub(crate) fn upsert(id: &str, data: serde_json::Value) -> Change {
    change(id, Op::Upsert, Some(data), None)
}

pub(crate) fn record(version: u64, data: Option<serde_json::Value>) -> Record {
    Record {
        tenant: TenantId::new("acme").unwrap(),
        id: EntityId::new("sku-1").unwrap(),
        version,
        data: data.map(obj),
        updated_at: Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap(),
        change_id: ChangeId::new("old").unwrap(),
    }
}

/// A reference model of one key, written independently of `decide`: the state is (stored
/// version, live data). Ops and data come from tiny domains so that identical data, conflicts
/// and re-creates happen often.
#[derive(Debug, Clone)]
pub(crate) struct ModelOp {
    pub op: Op,
    pub value: Option<u8>,
    pub expected: Option<u64>,
}

pub(crate) fn model_step(state: &mut (u64, Option<Object>), op: &ModelOp) -> Outcome {
    let live_version = if state.1.is_some() { state.0 } else { 0 };
    if let Some(e) = op.expected {
        let ok = if e == 0 {
            state.1.is_none()
        } else {
            state.1.is_some() && e == state.0
        };
        if !ok {
            return Outcome::Rejected {
                reason: RejectReason::VersionConflict,
                current_version: live_version,
            };
        }
    }
    let next = match op.op {
        Op::Upsert => Some(model_data(op.value)),
        Op::Patch => match &state.1 {
            None => {
                return Outcome::Rejected {
                    reason: RejectReason::NotFound,
                    current_version: 0,
                };
            }
            Some(old) => {
                let mut new = old.clone();
                match op.value {
                    Some(v) => {
                        new.insert(format!("k{}", v % 3), json!(v));
                    }
                    None => {
                        new.remove("k0");
                    }
                }
                Some(new)
            }
        },
        Op::Delete => None,
    };
    if next == state.1 {
        return Outcome::Unchanged { version: state.0 };
    }
    state.0 += 1;
    state.1 = next;
    Outcome::Applied { version: state.0 }
}

pub(crate) fn model_data(value: Option<u8>) -> Object {
    match value {
        Some(v) => obj(json!({ format!("k{}", v % 3): v })),
        None => Object::new(),
    }
}

pub(crate) fn to_change(i: usize, op: &ModelOp) -> Change {
    let data = match op.op {
        Op::Upsert => Some(json!(model_data(op.value))),
        Op::Patch => Some(match op.value {
            Some(v) => json!({ format!("k{}", v % 3): v }),
            None => json!({"k0": null}),
        }),
        Op::Delete => None,
    };
    change(&format!("c{i}"), op.op, data, op.expected)
}

pub(crate) fn model_op() -> impl Strategy<Value = ModelOp> {
    (
        prop_oneof![Just(Op::Upsert), Just(Op::Patch), Just(Op::Delete)],
        proptest::option::of(0u8..4),
        proptest::option::of(0u64..5),
    )
        .prop_map(|(op, value, expected)| ModelOp {
            op,
            value,
            expected,
        })
}
