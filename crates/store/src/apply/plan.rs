//! What a batch does to the records it addresses: each key and change id loaded once, every
//! change decided in order, the result ready to be written in one transaction.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use tenantsync_core::{ChangeId, DatasetName, EntityId, Outcome, Record, RejectReason, TenantId};
use tracing::warn;

use super::decide::{Decision, decide};
use super::{live_version, truncate_to_micros};
use crate::{Applied, DataCheck, LoggedChange, Offset, StoredOutcome};

/// What a backend must load before planning a batch: each distinct key and change id the batch
/// mentions, once, in order of first appearance. The backend answers with one slot per entry
/// (`None`: no such record / not applied), so planning needs no hashing or cloning.
#[derive(Debug)]
pub(crate) struct Lookups<'a> {
    pub keys: Vec<(&'a TenantId, &'a EntityId)>,
    pub change_ids: Vec<(&'a TenantId, &'a ChangeId)>,
    /// The batch's distinct tenants, sorted: those whose running erasure [`plan_batch`] needs.
    pub tenants: Vec<&'a TenantId>,
    /// For each change of the batch, the index of its key in `keys`...
    key_of: Vec<usize>,
    /// ...and of its change id in `change_ids`.
    id_of: Vec<usize>,
}

pub(crate) fn lookups(changes: &[LoggedChange]) -> Lookups<'_> {
    let mut key_index: HashMap<(&str, &str), usize> = HashMap::with_capacity(changes.len());
    let mut id_index: HashMap<(&str, &str), usize> = HashMap::with_capacity(changes.len());
    let mut out = Lookups {
        keys: Vec::with_capacity(changes.len()),
        change_ids: Vec::with_capacity(changes.len()),
        tenants: Vec::new(),
        key_of: Vec::with_capacity(changes.len()),
        id_of: Vec::with_capacity(changes.len()),
    };
    for logged in changes {
        let c = &logged.change;
        let k = slot(
            &mut key_index,
            &mut out.keys,
            (c.tenant.as_str(), c.id.as_str()),
            (&c.tenant, &c.id),
        );
        let i = slot(
            &mut id_index,
            &mut out.change_ids,
            (c.tenant.as_str(), c.change_id.as_str()),
            (&c.tenant, &c.change_id),
        );
        out.key_of.push(k);
        out.id_of.push(i);
    }
    out.tenants = out.keys.iter().map(|(tenant, _)| *tenant).collect();
    out.tenants.sort_unstable();
    out.tenants.dedup();
    out
}

/// The slot of `key` in `list`, pushing `item` there when the key is new.
fn slot<'a, T>(
    index: &mut HashMap<(&'a str, &'a str), usize>,
    list: &mut Vec<T>,
    key: (&'a str, &'a str),
    item: T,
) -> usize {
    let next = list.len();
    let slot = *index.entry(key).or_insert(next);
    if slot == next {
        list.push(item);
    }
    slot
}

/// The tenants of the keys a backend found absent (`records` answers `lookups.keys` slot for
/// slot): those whose version floor [`plan_batch`] may need, each once.
pub(crate) fn tenants_creating<'a>(
    lookups: &Lookups<'a>,
    records: &[Option<Record>],
) -> Vec<&'a TenantId> {
    let mut tenants: Vec<&TenantId> = lookups
        .keys
        .iter()
        .zip(records)
        .filter(|(_, record)| record.is_none())
        .map(|((tenant, _), _)| *tenant)
        .collect();
    tenants.sort_unstable();
    tenants.dedup();
    tenants
}

/// What a batch does, ready to be written in one transaction.
#[derive(Debug)]
pub(crate) struct Plan {
    /// What [`crate::RecordStore::apply`] returns.
    pub applied: Applied,
    /// The records the batch altered, as indices into `applied.states` with the seq to store
    /// (the offset of the change that last wrote the record), sorted by key so that concurrent
    /// writers lock rows in the same order.
    pub written: Vec<(usize, Offset)>,
    /// The changes applied for the first time, as indices into the batch (and
    /// `applied.outcomes`): their outcomes are to be stored.
    pub first_applied: Vec<usize>,
    /// The partition's new position: never below the stored one.
    pub position: Offset,
}

/// Plans a batch. `records` and `outcomes` answer `lookups` slot for slot with the stored state
/// (`None`: never existed) and the stored outcome with its owning record (`None`: never
/// applied); `position` is the partition's stored position; `floors` holds the version floor
/// (the highest purged tombstone version) of tenants that have one, at least of those with a key
/// the batch creates: a created key starts above it. A backend loads `floors` after `records`,
/// so that a tombstone purged in between is seen in one or the other.
///
/// A change whose id already has an outcome, in the store or earlier in this batch, changes
/// nothing: if the outcome belongs to the same record it is a duplicate and reports that
/// outcome; if it belongs to another record the id was reused, and the change is rejected
/// `key_reused` with its own record's live version, and not stored (so that the id stays the
/// first record's). A change at an offset below `position` is not applied again; if
/// it has no stored outcome the log no longer holds what was applied there (a recreated topic)
/// or its outcome was pruned past the idempotency window, so it is reported `unchanged`, not
/// stored, and a warning is logged. Any other change of a
/// tenant in `erasing` whose id is not an erasure id ([`ChangeId::is_erasure`]) is rejected
/// `tenant_erasing` with its record's live version, and stored. A patch whose result `check`
/// refuses is rejected `schema_violation` with its record's live version, and stored.
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan_batch(
    dataset: &DatasetName,
    partition: u32,
    changes: &[LoggedChange],
    lookups: &Lookups<'_>,
    position: Offset,
    next_offset: Offset,
    records: Vec<Option<Record>>,
    outcomes: Vec<Option<StoredOutcome>>,
    floors: &HashMap<TenantId, u64>,
    erasing: &HashSet<TenantId>,
    check: Option<&dyn DataCheck>,
    now: DateTime<Utc>,
) -> Plan {
    let now = truncate_to_micros(now);
    let mut current = records;
    let mut known = outcomes;
    // A backend answering with fewer slots than asked must not make this panic.
    current.resize(lookups.keys.len(), None);
    known.resize(lookups.change_ids.len(), None);
    let mut dirty = vec![false; current.len()];
    let mut seqs = vec![0; current.len()];
    let mut last_seen = vec![0usize; current.len()];
    let mut results = Vec::with_capacity(changes.len());
    let mut after = Vec::with_capacity(changes.len());
    let mut first_applied = Vec::new();

    for (index, logged) in changes.iter().enumerate() {
        let change = &logged.change;
        let (k, c) = (lookups.key_of[index], lookups.id_of[index]);
        last_seen[k] = index;
        if let Some(stored) = &known[c] {
            if stored.id == change.id {
                results.push(stored.outcome.clone());
            } else {
                // Not stored: the id stays the first record's, and a redelivery of this change
                // is refused the same way.
                results.push(Outcome::Rejected {
                    reason: RejectReason::KeyReused,
                    current_version: live_version(current[k].as_ref()),
                });
            }
        } else if logged.offset < position {
            warn!(
                %dataset, partition, offset = logged.offset, position, tenant = %change.tenant,
                change_id = %change.change_id,
                "change below the stored position has no stored outcome; not applying it"
            );
            let version = current[k].as_ref().map_or(0, |r| r.version);
            results.push(Outcome::Unchanged { version });
        } else {
            let mut decision = if !erasing.is_empty()
                && !change.change_id.is_erasure()
                && erasing.contains(&change.tenant)
            {
                Decision::Keep(Outcome::Rejected {
                    reason: RejectReason::TenantErasing,
                    current_version: live_version(current[k].as_ref()),
                })
            } else {
                decide(current[k].as_ref(), change, check, now)
            };
            if let (None, Decision::Write(created)) = (&current[k], &mut decision) {
                created.version += floors.get(&change.tenant).copied().unwrap_or(0);
            }
            let outcome = decision.outcome();
            if let Decision::Write(record) = decision {
                current[k] = Some(record);
                dirty[k] = true;
                seqs[k] = logged.offset;
            }
            known[c] = Some(StoredOutcome {
                id: change.id.clone(),
                outcome: outcome.clone(),
            });
            first_applied.push(index);
            results.push(outcome);
        }
        after.push(current[k].clone());
    }

    let mut order: Vec<usize> = (0..current.len()).collect();
    order.sort_unstable_by_key(|&k| last_seen[k]);
    let mut states = Vec::with_capacity(order.len());
    let mut written = Vec::new();
    for k in order {
        if let Some(record) = current[k].take() {
            if dirty[k] {
                written.push((states.len(), seqs[k]));
            }
            states.push(record);
        }
    }
    written.sort_unstable_by(|&(a, _), &(b, _)| {
        let (a, b): (&Record, &Record) = (&states[a], &states[b]);
        (&a.tenant, &a.id).cmp(&(&b.tenant, &b.id))
    });

    Plan {
        applied: Applied {
            outcomes: results,
            states,
            records: after,
            previous_position: position,
        },
        written,
        first_applied,
        position: position.max(next_offset),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;
    use tenantsync_core::{Change, Op, RecordKey};

    use super::*;
    use crate::apply::test_support::*;

    fn logged(offset: Offset, c: Change) -> LoggedChange {
        LoggedChange { offset, change: c }
    }

    fn keyed(c: Change, id: &str) -> Change {
        Change {
            id: EntityId::new(id).unwrap(),
            ..c
        }
    }

    type Stored<K, V> = HashMap<K, V>;

    fn plan(
        changes: &[LoggedChange],
        position: Offset,
        next: Offset,
        records: Stored<RecordKey, Record>,
        outcomes: Stored<(TenantId, ChangeId), StoredOutcome>,
    ) -> Plan {
        plan_at(changes, position, next, records, outcomes, now())
    }

    /// Plans with no stored outcomes, while the tenants in `erasing` are being erased.
    fn plan_erasing(
        changes: &[LoggedChange],
        records: Stored<RecordKey, Record>,
        erasing: &[&str],
    ) -> Plan {
        let erasing = erasing.iter().map(|t| TenantId::new(*t).unwrap()).collect();
        let next = changes.len() as u64;
        plan_with(
            changes,
            0,
            next,
            records,
            HashMap::new(),
            &erasing,
            None,
            now(),
        )
    }

    fn plan_at(
        changes: &[LoggedChange],
        position: Offset,
        next: Offset,
        records: Stored<RecordKey, Record>,
        outcomes: Stored<(TenantId, ChangeId), StoredOutcome>,
        at: DateTime<Utc>,
    ) -> Plan {
        plan_with(
            changes,
            position,
            next,
            records,
            outcomes,
            &HashSet::new(),
            None,
            at,
        )
    }

    /// Plans as a backend would: answering the lookups slot for slot from the "stored" maps.
    #[allow(clippy::too_many_arguments)]
    fn plan_with(
        changes: &[LoggedChange],
        position: Offset,
        next: Offset,
        records: Stored<RecordKey, Record>,
        outcomes: Stored<(TenantId, ChangeId), StoredOutcome>,
        erasing: &HashSet<TenantId>,
        check: Option<&dyn DataCheck>,
        at: DateTime<Utc>,
    ) -> Plan {
        let dataset = DatasetName::new("items").unwrap();
        let l = lookups(changes);
        let r = l
            .keys
            .iter()
            .map(|(t, id)| {
                records
                    .get(&RecordKey::new((*t).clone(), (*id).clone()))
                    .cloned()
            })
            .collect();
        let o = l
            .change_ids
            .iter()
            .map(|(t, c)| outcomes.get(&((*t).clone(), (*c).clone())).cloned())
            .collect();
        plan_batch(
            &dataset,
            0,
            changes,
            &l,
            position,
            next,
            r,
            o,
            &HashMap::new(),
            erasing,
            check,
            at,
        )
    }

    fn written_records(p: &Plan) -> Vec<&Record> {
        p.written
            .iter()
            .map(|&(i, _)| &p.applied.states[i])
            .collect()
    }

    #[test]
    fn batch_reads_each_key_once_and_orders_states_by_last_appearance() {
        let changes = vec![
            logged(0, keyed(upsert("c1", json!({"v": 1})), "a")),
            logged(1, keyed(upsert("c2", json!({"v": 1})), "b")),
            logged(2, keyed(upsert("c3", json!({"v": 2})), "a")),
            logged(3, keyed(change("c4", Op::Delete, None, None), "never")),
        ];
        let l = lookups(&changes);
        assert_eq!(l.keys.len(), 3);
        assert_eq!(l.change_ids.len(), 4);
        assert_eq!(l.key_of, vec![0, 1, 0, 2]);
        let p = plan(&changes, 0, 4, HashMap::new(), HashMap::new());
        assert_eq!(
            p.applied.outcomes,
            vec![
                Outcome::Applied { version: 1 },
                Outcome::Applied { version: 1 },
                Outcome::Applied { version: 2 },
                Outcome::Unchanged { version: 0 },
            ]
        );
        let ids: Vec<_> = p.applied.states.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            ["b", "a"],
            "last appearance order; never-existing keys left out"
        );
        let w = written_records(&p);
        assert_eq!(w.len(), 2);
        assert_eq!(
            (w[0].id.as_str(), w[0].version),
            ("a", 2),
            "written in key order"
        );
        assert_eq!((w[1].id.as_str(), w[1].version), ("b", 1));
        assert_eq!(p.first_applied, vec![0, 1, 2, 3]);
        assert_eq!(p.position, 4);
    }

    #[test]
    fn duplicate_change_id_in_one_batch_reports_the_first_outcome() {
        let c = upsert("same", json!({"v": 1}));
        let again = upsert("same", json!({"v": 2}));
        let p = plan(
            &[logged(0, c), logged(1, again)],
            0,
            2,
            HashMap::new(),
            HashMap::new(),
        );
        assert_eq!(
            p.applied.outcomes,
            vec![
                Outcome::Applied { version: 1 },
                Outcome::Applied { version: 1 }
            ]
        );
        assert_eq!(p.applied.states[0].data, Some(obj(json!({"v": 1}))));
        assert_eq!(p.first_applied, vec![0]);
    }

    #[test]
    fn stored_outcomes_and_the_position_prevent_reapplication() {
        let stored = record(3, Some(json!({"v": 3})));
        let records = HashMap::from([(stored.key(), stored.clone())]);
        let c = upsert("done", json!({"v": 9}));
        let outcomes = HashMap::from([(
            (c.tenant.clone(), c.change_id.clone()),
            StoredOutcome {
                id: c.id.clone(),
                outcome: Outcome::Applied { version: 2 },
            },
        )]);
        let below = upsert("lost", json!({"v": 10}));
        let p = plan(&[logged(5, c), logged(6, below)], 10, 7, records, outcomes);
        assert_eq!(
            p.applied.outcomes,
            vec![
                Outcome::Applied { version: 2 },
                Outcome::Unchanged { version: 3 }
            ]
        );
        assert_eq!(p.applied.states, vec![stored]);
        assert!(p.written.is_empty());
        assert!(p.first_applied.is_empty());
        assert_eq!(p.position, 10, "the position never moves backwards");
    }

    const REUSED: RejectReason = RejectReason::KeyReused;

    #[test]
    fn a_change_id_reused_for_another_record_is_rejected_and_not_stored() {
        // In one batch: "k1" first names a change of sku-1, then one of "b", then of sku-1 again.
        let changes = [
            logged(0, upsert("k1", json!({"v": 1}))),
            logged(1, keyed(upsert("k1", json!({"b": 1})), "b")),
            logged(2, keyed(upsert("k2", json!({"b": 2})), "b")),
            logged(3, keyed(upsert("k1", json!({"b": 3})), "b")),
            logged(4, upsert("k1", json!({"v": 2}))),
        ];
        let p = plan(&changes, 0, 5, HashMap::new(), HashMap::new());
        assert_eq!(
            p.applied.outcomes,
            vec![
                Outcome::Applied { version: 1 },
                Outcome::Rejected {
                    reason: REUSED,
                    current_version: 0
                },
                Outcome::Applied { version: 1 },
                // Its own record's live version at that point of the batch.
                Outcome::Rejected {
                    reason: REUSED,
                    current_version: 1
                },
                // A true duplicate still reports the first outcome.
                Outcome::Applied { version: 1 },
            ]
        );
        assert_eq!(p.first_applied, vec![0, 2], "reuses are not stored");
        let data: Vec<_> = p
            .applied
            .states
            .iter()
            .map(|r| (r.id.as_str(), r.data.clone()))
            .collect();
        assert_eq!(
            data,
            [
                ("b", Some(obj(json!({"b": 2})))),
                ("sku-1", Some(obj(json!({"v": 1})))),
            ]
        );

        // Against a stored outcome, at any offset (a redelivery below the position included).
        let stored = record(3, Some(json!({"v": 3})));
        let outcomes = HashMap::from([(
            (stored.tenant.clone(), ChangeId::new("k1").unwrap()),
            StoredOutcome {
                id: EntityId::new("b").unwrap(),
                outcome: Outcome::Applied { version: 1 },
            },
        )]);
        let records = HashMap::from([(stored.key(), stored.clone())]);
        for position in [0, 10] {
            let p = plan(
                &[logged(5, upsert("k1", json!({"v": 9})))],
                position,
                6,
                records.clone(),
                outcomes.clone(),
            );
            assert_eq!(
                p.applied.outcomes,
                vec![Outcome::Rejected {
                    reason: REUSED,
                    current_version: 3
                }]
            );
            assert!(p.written.is_empty() && p.first_applied.is_empty());
            assert_eq!(p.applied.states, vec![stored.clone()]);
        }
    }

    #[test]
    fn a_tenant_being_erased_takes_only_erasure_changes() {
        const ERASING: RejectReason = RejectReason::TenantErasing;
        let stored = record(3, Some(json!({"v": 3})));
        let records = HashMap::from([(stored.key(), stored.clone())]);
        let erasure = format!("{}items:sku-1", ChangeId::ERASURE_PREFIX);
        let other = |c: Change| Change {
            tenant: TenantId::new("globex").unwrap(),
            ..c
        };
        let changes = [
            logged(0, upsert("u1", json!({"v": 4}))),
            logged(1, keyed(upsert("u2", json!({"new": 1})), "b")),
            // Reserved, but not an erasure id.
            logged(2, upsert("tenantsync:other", json!({"v": 5}))),
            logged(3, other(upsert("g1", json!({"g": 1})))),
            logged(4, change(&erasure, Op::Delete, None, None)),
            logged(5, upsert("u3", json!({"v": 6}))),
        ];
        let p = plan_erasing(&changes, records.clone(), &["acme"]);
        assert_eq!(
            p.applied.outcomes,
            vec![
                Outcome::Rejected {
                    reason: ERASING,
                    current_version: 3
                },
                Outcome::Rejected {
                    reason: ERASING,
                    current_version: 0
                },
                Outcome::Rejected {
                    reason: ERASING,
                    current_version: 3
                },
                Outcome::Applied { version: 1 },
                Outcome::Applied { version: 4 },
                // After the erasure's delete, the live version is 0.
                Outcome::Rejected {
                    reason: ERASING,
                    current_version: 0
                },
            ]
        );
        assert_eq!(
            p.first_applied,
            vec![0, 1, 2, 3, 4, 5],
            "rejections are stored"
        );
        let w = written_records(&p);
        assert_eq!(
            w.len(),
            2,
            "only globex's upsert and the erasure's delete write"
        );
        assert_eq!((w[0].tenant.as_str(), w[0].data.is_none()), ("acme", true));
        assert_eq!(w[1].tenant.as_str(), "globex");

        // Nobody erasing: the same batch applies as usual.
        let p = plan_erasing(&changes, records, &[]);
        assert_eq!(p.applied.outcomes[0], Outcome::Applied { version: 4 });
        assert_eq!(p.applied.outcomes[1], Outcome::Applied { version: 1 });
    }

    /// Refuses a negative `"n"`.
    struct NonNegative;

    impl DataCheck for NonNegative {
        fn check(&self, data: &tenantsync_core::Object) -> Result<(), String> {
            match data.get("n").and_then(serde_json::Value::as_i64) {
                Some(n) if n < 0 => Err(format!("/n: {n} is negative")),
                _ => Ok(()),
            }
        }
    }

    #[test]
    fn a_patch_refused_by_the_check_is_stored_as_a_schema_violation() {
        const VIOLATION: RejectReason = RejectReason::SchemaViolation;
        let stored = record(3, Some(json!({"n": 1})));
        let records = HashMap::from([(stored.key(), stored.clone())]);
        let changes = [
            logged(0, change("p1", Op::Patch, Some(json!({"n": -1})), None)),
            logged(1, change("p2", Op::Patch, Some(json!({"n": 2})), None)),
            logged(2, change("p3", Op::Patch, Some(json!({"n": -2})), None)),
            // An upsert is the writer's to check, never the store's.
            logged(3, upsert("u1", json!({"n": -3}))),
        ];
        let p = plan_with(
            &changes,
            0,
            4,
            records.clone(),
            HashMap::new(),
            &HashSet::new(),
            Some(&NonNegative),
            now(),
        );
        assert_eq!(
            p.applied.outcomes,
            vec![
                Outcome::Rejected {
                    reason: VIOLATION,
                    current_version: 3
                },
                Outcome::Applied { version: 4 },
                Outcome::Rejected {
                    reason: VIOLATION,
                    current_version: 4
                },
                Outcome::Applied { version: 5 },
            ]
        );
        assert_eq!(p.first_applied, vec![0, 1, 2, 3], "rejections are stored");
        let after: Vec<_> = p
            .applied
            .records
            .iter()
            .map(|r| r.clone().unwrap().data)
            .collect();
        assert_eq!(
            after,
            [
                json!({"n": 1}),
                json!({"n": 2}),
                json!({"n": 2}),
                json!({"n": -3})
            ]
            .map(|v| Some(obj(v))),
            "a rejected patch leaves the record as it was"
        );

        // Without a check the same batch applies every change.
        let p = plan(&changes, 0, 4, records, HashMap::new());
        assert!(
            p.applied
                .outcomes
                .iter()
                .all(|o| matches!(o, Outcome::Applied { .. })),
            "{:?}",
            p.applied.outcomes
        );
    }

    #[test]
    fn now_is_truncated_to_microseconds() {
        let t = now() + chrono::Duration::nanoseconds(1_234_567);
        let changes = [logged(0, upsert("c", json!({})))];
        let p = plan_at(&changes, 0, 1, HashMap::new(), HashMap::new(), t);
        let expected = now() + chrono::Duration::microseconds(1_234);
        assert_eq!(p.applied.states[0].updated_at, expected);
    }

    // A reference model of one key, written independently of `decide`: the state is

    proptest! {
        #[test]
        fn replanning_with_stored_outcomes_is_a_no_op(ops in proptest::collection::vec(model_op(), 1..30)) {
            let changes: Vec<_> = ops
                .iter()
                .enumerate()
                .map(|(i, op)| logged(i as u64, to_change(i, op)))
                .collect();
            let first = plan(&changes, 0, changes.len() as u64, HashMap::new(), HashMap::new());
            let records: HashMap<_, _> =
                first.applied.states.iter().map(|r| (r.key(), r.clone())).collect();
            let outcomes: HashMap<_, _> = first
                .first_applied
                .iter()
                .map(|&i| {
                    let c = &changes[i].change;
                    let stored = StoredOutcome { id: c.id.clone(), outcome: first.applied.outcomes[i].clone() };
                    ((c.tenant.clone(), c.change_id.clone()), stored)
                })
                .collect();
            for position in [0, changes.len() as u64] {
                let again = plan(&changes, position, 0, records.clone(), outcomes.clone());
                // Not `records`: for a change not applied now that is the key's state at that
                // point of the batch, which after a replan is the final state.
                prop_assert_eq!(&again.applied.outcomes, &first.applied.outcomes);
                prop_assert_eq!(&again.applied.states, &first.applied.states);
                prop_assert!(again.written.is_empty());
                prop_assert!(again.first_applied.is_empty());
            }
        }
    }
}
