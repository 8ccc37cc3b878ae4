//! What one change does to one record.

use chrono::{DateTime, Utc};
use tenantsync_core::{Change, Object, Op, Outcome, Record, RejectReason, merge_patch};
use tracing::debug;

use super::live_version;
use crate::DataCheck;

/// What one change does to one record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    /// The record becomes this (a tombstone when `data` is `None`); the outcome is
    /// [`Outcome::Applied`] with the record's new version.
    Write(Record),
    /// The record stays as it is; the outcome is [`Outcome::Unchanged`] or
    /// [`Outcome::Rejected`].
    Keep(Outcome),
}

impl Decision {
    pub(crate) fn outcome(&self) -> Outcome {
        match self {
            Decision::Write(record) => Outcome::Applied {
                version: record.version,
            },
            Decision::Keep(outcome) => outcome.clone(),
        }
    }
}

/// Decides what `change` does to a record whose current state is `current` (`None`: never
/// existed; `Some` with `data == None`: a tombstone).
///
/// The rules, in order:
/// 1. The precondition. `expected_version == Some(0)` requires the record to be absent or
///    deleted; `Some(v)` requires it live at version `v`. Otherwise the change is rejected
///    `version_conflict` with the live version (0 when absent or deleted).
/// 2. The operation. Upsert replaces the data. Patch merges (RFC 7396) into the live data and
///    is rejected `not_found` without live data. Delete leaves a tombstone; deleting an absent or
///    deleted record is `unchanged`.
/// 3. A result equal to the current data is `unchanged` and keeps the version; anything else
///    gets the current version (a tombstone's included) plus one.
/// 4. A patch's new data is held to `check` (the dataset's contract) and rejected
///    `schema_violation` with the live version when it fails. Upserts are checked by their
///    writers before they enter the log, deletes need no check (see [`DataCheck`]).
///
/// A change that breaks [`Change::validate`] (the edge rejects those) never destroys data here:
/// an upsert without data changes nothing, a patch without data is an empty patch, and data on
/// a delete is ignored.
pub(crate) fn decide(
    current: Option<&Record>,
    change: &Change,
    check: Option<&dyn DataCheck>,
    now: DateTime<Utc>,
) -> Decision {
    let live: Option<(&Object, u64)> =
        current.and_then(|r| r.data.as_ref().map(|data| (data, r.version)));
    let live_version = live_version(current);
    // The version a new write continues from: a tombstone keeps its version.
    let stored_version = current.map_or(0, |r| r.version);

    if let Some(expected) = change.expected_version {
        let holds = match (expected, live) {
            (0, None) => true,
            (0, Some(_)) => false,
            (v, Some((_, version))) => v == version,
            (_, None) => false,
        };
        if !holds {
            return Decision::Keep(Outcome::Rejected {
                reason: RejectReason::VersionConflict,
                current_version: live_version,
            });
        }
    }

    let write = |data: Option<Object>| {
        Decision::Write(Record {
            tenant: change.tenant.clone(),
            id: change.id.clone(),
            version: stored_version + 1,
            data,
            updated_at: now,
            change_id: change.change_id.clone(),
        })
    };
    let unchanged = Decision::Keep(Outcome::Unchanged {
        version: stored_version,
    });

    match change.op {
        Op::Upsert => match (&change.data, live) {
            (None, _) => unchanged,
            (Some(new), Some((old, _))) if new == old => unchanged,
            (Some(new), _) => write(Some(new.clone())),
        },
        Op::Patch => match live {
            None => Decision::Keep(Outcome::Rejected {
                reason: RejectReason::NotFound,
                current_version: 0,
            }),
            Some((old, version)) => {
                let Some(patch) = &change.data else {
                    return unchanged;
                };
                let new = merge_patch(old, patch);
                if &new == old {
                    return unchanged;
                }
                if let Some(Err(why)) = check.map(|check| check.check(&new)) {
                    debug!(
                        tenant = %change.tenant, id = %change.id, change_id = %change.change_id,
                        %why, "patch rejected: its result violates the dataset's schema"
                    );
                    return Decision::Keep(Outcome::Rejected {
                        reason: RejectReason::SchemaViolation,
                        current_version: version,
                    });
                }
                write(Some(new))
            }
        },
        Op::Delete => match live {
            None => unchanged,
            Some(_) => write(None),
        },
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;
    use tenantsync_core::{Object, Op, Outcome, Record, RejectReason};

    use super::*;
    use crate::apply::test_support::*;

    fn written(decision: Decision) -> Record {
        match decision {
            Decision::Write(r) => r,
            Decision::Keep(o) => panic!("expected a write, got {o:?}"),
        }
    }

    fn kept(decision: Decision) -> Outcome {
        match decision {
            Decision::Keep(o) => o,
            Decision::Write(r) => panic!("expected no write, got {r:?}"),
        }
    }

    const CONFLICT: RejectReason = RejectReason::VersionConflict;

    #[test]
    fn upsert_creates_at_version_1() {
        let r = written(decide(None, &upsert("c1", json!({"a": 1})), None, now()));
        assert_eq!(r.version, 1);
        assert_eq!(r.data, Some(obj(json!({"a": 1}))));
        assert_eq!(r.change_id.as_str(), "c1");
        assert_eq!(r.updated_at, now());
    }

    #[test]
    fn upsert_replaces_data_and_bumps_version() {
        let cur = record(4, Some(json!({"a": 1, "b": 2})));
        let r = written(decide(
            Some(&cur),
            &upsert("c", json!({"a": 2})),
            None,
            now(),
        ));
        assert_eq!(r.version, 5);
        assert_eq!(
            r.data,
            Some(obj(json!({"a": 2}))),
            "upsert replaces, never merges"
        );
    }

    #[test]
    fn identical_upsert_is_unchanged() {
        let cur = record(4, Some(json!({"a": 1})));
        let o = kept(decide(
            Some(&cur),
            &upsert("c", json!({"a": 1})),
            None,
            now(),
        ));
        assert_eq!(o, Outcome::Unchanged { version: 4 });
    }

    #[test]
    fn upsert_after_delete_continues_above_the_tombstone() {
        let cur = record(7, None);
        let r = written(decide(Some(&cur), &upsert("c", json!({})), None, now()));
        assert_eq!(r.version, 8);
        assert_eq!(r.data, Some(Object::new()));
    }

    #[test]
    fn patch_merges_into_live_record() {
        let cur = record(2, Some(json!({"a": 1, "b": {"c": 1, "d": 2}})));
        let p = change(
            "p",
            Op::Patch,
            Some(json!({"a": null, "b": {"c": 5}, "e": [1]})),
            None,
        );
        let r = written(decide(Some(&cur), &p, None, now()));
        assert_eq!(r.version, 3);
        assert_eq!(r.data, Some(obj(json!({"b": {"c": 5, "d": 2}, "e": [1]}))));
    }

    #[test]
    fn patch_that_changes_nothing_is_unchanged() {
        let cur = record(2, Some(json!({"a": 1})));
        for patch in [json!({}), json!({"a": 1}), json!({"zzz": null})] {
            let p = change("p", Op::Patch, Some(patch), None);
            assert_eq!(
                kept(decide(Some(&cur), &p, None, now())),
                Outcome::Unchanged { version: 2 }
            );
        }
    }

    #[test]
    fn patch_of_absent_or_deleted_is_not_found() {
        let p = change("p", Op::Patch, Some(json!({"a": 1})), None);
        let not_found = Outcome::Rejected {
            reason: RejectReason::NotFound,
            current_version: 0,
        };
        assert_eq!(kept(decide(None, &p, None, now())), not_found);
        assert_eq!(
            kept(decide(Some(&record(3, None)), &p, None, now())),
            not_found
        );
    }

    #[test]
    fn delete_tombstones_live_record() {
        let cur = record(3, Some(json!({"a": 1})));
        let r = written(decide(
            Some(&cur),
            &change("d", Op::Delete, None, None),
            None,
            now(),
        ));
        assert_eq!(r.version, 4);
        assert_eq!(r.data, None);
        assert_eq!(r.change_id.as_str(), "d");
    }

    #[test]
    fn delete_of_absent_or_deleted_is_unchanged() {
        let d = change("d", Op::Delete, None, None);
        assert_eq!(
            kept(decide(None, &d, None, now())),
            Outcome::Unchanged { version: 0 }
        );
        assert_eq!(
            kept(decide(Some(&record(3, None)), &d, None, now())),
            Outcome::Unchanged { version: 3 }
        );
    }

    #[test]
    fn expected_version_zero_means_absent_or_deleted() {
        let c = change("c", Op::Upsert, Some(json!({"a": 1})), Some(0));
        assert_eq!(written(decide(None, &c, None, now())).version, 1);
        assert_eq!(
            written(decide(Some(&record(5, None)), &c, None, now())).version,
            6
        );
        assert_eq!(
            kept(decide(Some(&record(5, Some(json!({})))), &c, None, now())),
            Outcome::Rejected {
                reason: CONFLICT,
                current_version: 5
            }
        );
    }

    #[test]
    fn expected_version_must_match_the_live_version() {
        let cur = record(5, Some(json!({"a": 1})));
        let ok = change("c", Op::Upsert, Some(json!({"a": 2})), Some(5));
        assert_eq!(written(decide(Some(&cur), &ok, None, now())).version, 6);
        for (op, data) in [
            (Op::Upsert, Some(json!({"a": 2}))),
            (Op::Patch, Some(json!({"a": 2}))),
            (Op::Delete, None),
        ] {
            let stale = change("c", op, data.clone(), Some(4));
            assert_eq!(
                kept(decide(Some(&cur), &stale, None, now())),
                Outcome::Rejected {
                    reason: CONFLICT,
                    current_version: 5
                }
            );
            // Absent and deleted records have no live version: current_version is 0.
            let expect = change("c", op, data, Some(5));
            for absent in [None, Some(&record(5, None))] {
                assert_eq!(
                    kept(decide(absent, &expect, None, now())),
                    Outcome::Rejected {
                        reason: CONFLICT,
                        current_version: 0
                    }
                );
            }
        }
    }

    #[test]
    fn precondition_is_checked_before_identical_data() {
        let cur = record(5, Some(json!({"a": 1})));
        let c = change("c", Op::Upsert, Some(json!({"a": 1})), Some(4));
        assert!(matches!(
            kept(decide(Some(&cur), &c, None, now())),
            Outcome::Rejected { .. }
        ));
        let c = change("c", Op::Upsert, Some(json!({"a": 1})), Some(5));
        assert_eq!(
            kept(decide(Some(&cur), &c, None, now())),
            Outcome::Unchanged { version: 5 }
        );
    }

    #[test]
    fn delete_with_if_none_match_on_tombstone_is_unchanged() {
        let c = change("d", Op::Delete, None, Some(0));
        assert_eq!(
            kept(decide(Some(&record(2, None)), &c, None, now())),
            Outcome::Unchanged { version: 2 }
        );
    }

    #[test]
    fn invalid_changes_never_destroy_data() {
        let cur = record(2, Some(json!({"a": 1})));
        let no_data = change("c", Op::Upsert, None, None);
        assert_eq!(
            kept(decide(Some(&cur), &no_data, None, now())),
            Outcome::Unchanged { version: 2 }
        );
        let empty_patch = change("c", Op::Patch, None, None);
        assert_eq!(
            kept(decide(Some(&cur), &empty_patch, None, now())),
            Outcome::Unchanged { version: 2 }
        );
        let delete_with_data = change("c", Op::Delete, Some(json!({"x": 1})), None);
        assert_eq!(
            written(decide(Some(&cur), &delete_with_data, None, now())).data,
            None
        );
    }

    /// A check that refuses data holding `"bad"`, and counts what it was asked.
    #[derive(Default)]
    struct NoBad(std::sync::atomic::AtomicUsize);

    impl DataCheck for NoBad {
        fn check(&self, data: &Object) -> Result<(), String> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match data.get("bad") {
                Some(_) => Err("/bad: not allowed".to_owned()),
                None => Ok(()),
            }
        }
    }

    #[test]
    fn a_patch_whose_result_fails_the_check_is_rejected_and_keeps_the_record() {
        let check = NoBad::default();
        let cur = record(4, Some(json!({"a": 1})));
        let bad = change("p", Op::Patch, Some(json!({"bad": true})), None);
        assert_eq!(
            kept(decide(Some(&cur), &bad, Some(&check), now())),
            Outcome::Rejected {
                reason: RejectReason::SchemaViolation,
                current_version: 4
            }
        );
        // The merged result is what is checked: a patch that removes the offending member of
        // a record that has it passes, though the record before it would not.
        let had = record(4, Some(json!({"a": 1, "bad": 1})));
        let fix = change("p", Op::Patch, Some(json!({"bad": null})), None);
        let r = written(decide(Some(&had), &fix, Some(&check), now()));
        assert_eq!((r.version, r.data), (5, Some(obj(json!({"a": 1})))));
        let good = change("p", Op::Patch, Some(json!({"a": 2})), None);
        assert_eq!(
            written(decide(Some(&cur), &good, Some(&check), now())).version,
            5
        );
    }

    #[test]
    fn only_patches_that_change_a_record_are_checked() {
        let check = NoBad::default();
        let cur = record(4, Some(json!({"bad": 1})));
        let cases = [
            // Upserts are checked at the edge, deletes need none.
            (change("u", Op::Upsert, Some(json!({"bad": 2})), None), 5),
            (change("d", Op::Delete, None, None), 5),
            // A patch that changes nothing, or whose precondition fails, is decided first.
            (change("p", Op::Patch, Some(json!({"bad": 1})), None), 4),
            (change("p", Op::Patch, Some(json!({"bad": 3})), Some(3)), 4),
        ];
        for (c, version) in cases {
            let decision = decide(Some(&cur), &c, Some(&check), now());
            assert_eq!(
                match decision {
                    Decision::Write(r) => r.version,
                    Decision::Keep(Outcome::Unchanged { version })
                    | Decision::Keep(Outcome::Rejected {
                        reason: RejectReason::VersionConflict,
                        current_version: version,
                    }) => version,
                    other => panic!("{c:?}: {other:?}"),
                },
                version,
                "{c:?}"
            );
        }
        assert_eq!(check.0.load(std::sync::atomic::Ordering::Relaxed), 0);
        // A patch of an absent record is not_found, not a violation.
        let absent = change("p", Op::Patch, Some(json!({"bad": 1})), None);
        assert_eq!(
            kept(decide(None, &absent, Some(&check), now())),
            Outcome::Rejected {
                reason: RejectReason::NotFound,
                current_version: 0
            }
        );
    }

    proptest! {
        #[test]
        fn decide_agrees_with_the_reference_model(ops in proptest::collection::vec(model_op(), 1..40)) {
            let mut model: (u64, Option<Object>) = (0, None);
            let mut current: Option<Record> = None;
            for (i, op) in ops.iter().enumerate() {
                let expected = model_step(&mut model, op);
                let decision = decide(current.as_ref(), &to_change(i, op), None, now());
                prop_assert_eq!(decision.outcome(), expected.clone());
                if let Decision::Write(r) = decision {
                    let before = current.as_ref().map_or(0, |c| c.version);
                    prop_assert_eq!(r.version, before + 1, "versions grow by exactly one");
                    prop_assert_eq!(r.change_id.as_str(), format!("c{i}"));
                    current = Some(r);
                } else {
                    let applied = matches!(expected, Outcome::Applied { .. });
                    prop_assert!(!applied, "the model applied what decide kept");
                }
                prop_assert_eq!(current.as_ref().map_or(0, |r| r.version), model.0);
                prop_assert_eq!(current.as_ref().and_then(|r| r.data.clone()), model.1.clone());
            }
        }
    }
}
