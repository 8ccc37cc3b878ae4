//! The rules of applying changes, written once for both backends: what one change does to one
//! record ([`decide`]) and what a batch does to the records it addresses ([`plan_batch`]).
//!
//! Everything here is pure: no I/O, no clock, no randomness. A backend loads the current state
//! of every key and the stored outcome of every change id a batch mentions, calls
//! [`plan_batch`], and writes the plan back in the same transaction. Keeping the rules out of
//! the backends is what makes SQLite and PostgreSQL agree record for record; this module must
//! never grow backend-specific behaviour.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use tenantsync_core::{
    Change, ChangeId, DatasetName, EntityId, Object, Op, Outcome, Record, RejectReason, TenantId,
    merge_patch,
};
use tracing::warn;

use crate::{Applied, LoggedChange, Offset, StoredOutcome};

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
///
/// A change that breaks [`Change::validate`] (the edge rejects those) never destroys data here:
/// an upsert without data changes nothing, a patch without data is an empty patch, and data on
/// a delete is ignored.
pub(crate) fn decide(current: Option<&Record>, change: &Change, now: DateTime<Utc>) -> Decision {
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
            Some((old, _)) => {
                let Some(patch) = &change.data else {
                    return unchanged;
                };
                let new = merge_patch(old, patch);
                if &new == old {
                    unchanged
                } else {
                    write(Some(new))
                }
            }
        },
        Op::Delete => match live {
            None => unchanged,
            Some(_) => write(None),
        },
    }
}

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
    /// What [`crate::MasterStore::apply`] returns.
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
/// it has no stored outcome the log no longer holds what was applied there (a recreated topic),
/// so it is reported `unchanged`, not stored, and a warning is logged. Any other change of a
/// tenant in `erasing` whose id is not an erasure id ([`ChangeId::is_erasure`]) is rejected
/// `tenant_erasing` with its record's live version, and stored.
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
                decide(current[k].as_ref(), change, now)
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

/// The version of a live record; 0 when it is absent or deleted (as rejections report it).
fn live_version(record: Option<&Record>) -> u64 {
    record.filter(|r| !r.is_deleted()).map_or(0, |r| r.version)
}

/// Both backends store microseconds; truncating before deciding keeps what `apply` returns
/// equal to what a later `get` reads.
pub(crate) fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;
    use serde_json::json;
    use tenantsync_core::RecordKey;

    use super::*;

    fn obj(v: serde_json::Value) -> Object {
        v.as_object().unwrap().clone()
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap()
    }

    fn change(
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

    fn upsert(id: &str, data: serde_json::Value) -> Change {
        change(id, Op::Upsert, Some(data), None)
    }

    fn record(version: u64, data: Option<serde_json::Value>) -> Record {
        Record {
            tenant: TenantId::new("acme").unwrap(),
            id: EntityId::new("sku-1").unwrap(),
            version,
            data: data.map(obj),
            updated_at: Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap(),
            change_id: ChangeId::new("old").unwrap(),
        }
    }

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
        let r = written(decide(None, &upsert("c1", json!({"a": 1})), now()));
        assert_eq!(r.version, 1);
        assert_eq!(r.data, Some(obj(json!({"a": 1}))));
        assert_eq!(r.change_id.as_str(), "c1");
        assert_eq!(r.updated_at, now());
    }

    #[test]
    fn upsert_replaces_data_and_bumps_version() {
        let cur = record(4, Some(json!({"a": 1, "b": 2})));
        let r = written(decide(Some(&cur), &upsert("c", json!({"a": 2})), now()));
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
        let o = kept(decide(Some(&cur), &upsert("c", json!({"a": 1})), now()));
        assert_eq!(o, Outcome::Unchanged { version: 4 });
    }

    #[test]
    fn upsert_after_delete_continues_above_the_tombstone() {
        let cur = record(7, None);
        let r = written(decide(Some(&cur), &upsert("c", json!({})), now()));
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
        let r = written(decide(Some(&cur), &p, now()));
        assert_eq!(r.version, 3);
        assert_eq!(r.data, Some(obj(json!({"b": {"c": 5, "d": 2}, "e": [1]}))));
    }

    #[test]
    fn patch_that_changes_nothing_is_unchanged() {
        let cur = record(2, Some(json!({"a": 1})));
        for patch in [json!({}), json!({"a": 1}), json!({"zzz": null})] {
            let p = change("p", Op::Patch, Some(patch), None);
            assert_eq!(
                kept(decide(Some(&cur), &p, now())),
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
        assert_eq!(kept(decide(None, &p, now())), not_found);
        assert_eq!(kept(decide(Some(&record(3, None)), &p, now())), not_found);
    }

    #[test]
    fn delete_tombstones_live_record() {
        let cur = record(3, Some(json!({"a": 1})));
        let r = written(decide(
            Some(&cur),
            &change("d", Op::Delete, None, None),
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
            kept(decide(None, &d, now())),
            Outcome::Unchanged { version: 0 }
        );
        assert_eq!(
            kept(decide(Some(&record(3, None)), &d, now())),
            Outcome::Unchanged { version: 3 }
        );
    }

    #[test]
    fn expected_version_zero_means_absent_or_deleted() {
        let c = change("c", Op::Upsert, Some(json!({"a": 1})), Some(0));
        assert_eq!(written(decide(None, &c, now())).version, 1);
        assert_eq!(
            written(decide(Some(&record(5, None)), &c, now())).version,
            6
        );
        assert_eq!(
            kept(decide(Some(&record(5, Some(json!({})))), &c, now())),
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
        assert_eq!(written(decide(Some(&cur), &ok, now())).version, 6);
        for (op, data) in [
            (Op::Upsert, Some(json!({"a": 2}))),
            (Op::Patch, Some(json!({"a": 2}))),
            (Op::Delete, None),
        ] {
            let stale = change("c", op, data.clone(), Some(4));
            assert_eq!(
                kept(decide(Some(&cur), &stale, now())),
                Outcome::Rejected {
                    reason: CONFLICT,
                    current_version: 5
                }
            );
            // Absent and deleted records have no live version: current_version is 0.
            let expect = change("c", op, data, Some(5));
            for absent in [None, Some(&record(5, None))] {
                assert_eq!(
                    kept(decide(absent, &expect, now())),
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
            kept(decide(Some(&cur), &c, now())),
            Outcome::Rejected { .. }
        ));
        let c = change("c", Op::Upsert, Some(json!({"a": 1})), Some(5));
        assert_eq!(
            kept(decide(Some(&cur), &c, now())),
            Outcome::Unchanged { version: 5 }
        );
    }

    #[test]
    fn delete_with_if_none_match_on_tombstone_is_unchanged() {
        let c = change("d", Op::Delete, None, Some(0));
        assert_eq!(
            kept(decide(Some(&record(2, None)), &c, now())),
            Outcome::Unchanged { version: 2 }
        );
    }

    #[test]
    fn invalid_changes_never_destroy_data() {
        let cur = record(2, Some(json!({"a": 1})));
        let no_data = change("c", Op::Upsert, None, None);
        assert_eq!(
            kept(decide(Some(&cur), &no_data, now())),
            Outcome::Unchanged { version: 2 }
        );
        let empty_patch = change("c", Op::Patch, None, None);
        assert_eq!(
            kept(decide(Some(&cur), &empty_patch, now())),
            Outcome::Unchanged { version: 2 }
        );
        let delete_with_data = change("c", Op::Delete, Some(json!({"x": 1})), None);
        assert_eq!(
            written(decide(Some(&cur), &delete_with_data, now())).data,
            None
        );
    }

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
        plan_with(changes, 0, next, records, HashMap::new(), &erasing, now())
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
            at,
        )
    }

    /// Plans as a backend would: answering the lookups slot for slot from the "stored" maps.
    fn plan_with(
        changes: &[LoggedChange],
        position: Offset,
        next: Offset,
        records: Stored<RecordKey, Record>,
        outcomes: Stored<(TenantId, ChangeId), StoredOutcome>,
        erasing: &HashSet<TenantId>,
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

    #[test]
    fn now_is_truncated_to_microseconds() {
        let t = now() + chrono::Duration::nanoseconds(1_234_567);
        let changes = [logged(0, upsert("c", json!({})))];
        let p = plan_at(&changes, 0, 1, HashMap::new(), HashMap::new(), t);
        let expected = now() + chrono::Duration::microseconds(1_234);
        assert_eq!(p.applied.states[0].updated_at, expected);
    }

    // A reference model of one key, written independently of `decide`: the state is
    // (stored version, live data). Ops and data come from tiny domains so that identical
    // data, conflicts and re-creates happen often.
    #[derive(Debug, Clone)]
    struct ModelOp {
        op: Op,
        value: Option<u8>,
        expected: Option<u64>,
    }

    fn model_step(state: &mut (u64, Option<Object>), op: &ModelOp) -> Outcome {
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

    fn model_data(value: Option<u8>) -> Object {
        match value {
            Some(v) => obj(json!({ format!("k{}", v % 3): v })),
            None => Object::new(),
        }
    }

    fn to_change(i: usize, op: &ModelOp) -> Change {
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

    fn model_op() -> impl Strategy<Value = ModelOp> {
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

    proptest! {
        #[test]
        fn decide_agrees_with_the_reference_model(ops in proptest::collection::vec(model_op(), 1..40)) {
            let mut model: (u64, Option<Object>) = (0, None);
            let mut current: Option<Record> = None;
            for (i, op) in ops.iter().enumerate() {
                let expected = model_step(&mut model, op);
                let decision = decide(current.as_ref(), &to_change(i, op), now());
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
