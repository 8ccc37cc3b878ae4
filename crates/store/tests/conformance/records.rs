//! Records: declaring datasets, the rules of `apply` case by case, outcomes, scans.

use std::sync::Arc;

use serde_json::json;
use tenantsync_core::{Change, Object, Outcome, RejectReason};
use tenantsync_store::{DataCheck, Dataset, MasterStore, StoreError};

use crate::common::*;
use crate::{apply_ok, get, one};

pub(crate) async fn declare_and_list_datasets(store: &dyn MasterStore) {
    assert!(store.datasets().await.unwrap().is_empty());
    let zeta = Dataset {
        name: ds("zeta"),
        partitions: 3,
    };
    let alpha = Dataset {
        name: ds("alpha"),
        partitions: 1,
    };
    store.declare_dataset(&zeta).await.unwrap();
    store.declare_dataset(&alpha).await.unwrap();
    store
        .declare_dataset(&zeta)
        .await
        .expect("redeclaring is a no-op");
    let err = store
        .declare_dataset(&Dataset {
            name: ds("zeta"),
            partitions: 4,
        })
        .await
        .unwrap_err();
    match err {
        StoreError::DatasetMismatch {
            dataset,
            existing,
            requested,
        } => {
            assert_eq!((dataset.as_str(), existing, requested), ("zeta", 3, 4));
        }
        other => panic!("expected a dataset mismatch, got {other:?}"),
    }
    assert!(
        !StoreError::DatasetMismatch {
            dataset: "x".into(),
            existing: 1,
            requested: 2
        }
        .is_transient()
    );
    assert_eq!(store.datasets().await.unwrap(), vec![alpha, zeta]);
}

pub(crate) async fn upsert_get_and_unchanged_data(store: &dyn MasterStore) {
    assert_eq!(get(store, "acme", "sku-1").await, None);
    let a = apply_ok(
        store,
        "items",
        &at(0, vec![upsert("c1", "acme", "sku-1", json!({"qty": 1}))]),
        1,
    )
    .await;
    assert_eq!(a.outcomes, vec![applied(1)]);
    let r = get(store, "acme", "sku-1").await.expect("record");
    assert_eq!(
        a.states,
        vec![r.clone()],
        "the returned state is the stored record"
    );
    assert_eq!(
        (
            r.tenant.as_str(),
            r.id.as_str(),
            r.version,
            r.change_id.as_str()
        ),
        ("acme", "sku-1", 1, "c1")
    );
    assert_eq!(r.data, Some(obj(json!({"qty": 1}))));

    assert_eq!(
        one(
            store,
            1,
            upsert("c2", "acme", "sku-1", json!({"qty": 2, "x": true}))
        )
        .await,
        applied(2)
    );
    assert_eq!(
        one(store, 2, upsert("c3", "acme", "sku-1", json!({"qty": 3}))).await,
        applied(3)
    );
    let r3 = get(store, "acme", "sku-1").await.unwrap();
    assert_eq!(
        r3.data,
        Some(obj(json!({"qty": 3}))),
        "upsert replaces, never merges"
    );

    // Identical data: no new version, the record (including its change id) stays as it was.
    let same = apply_ok(
        store,
        "items",
        &at(3, vec![upsert("c4", "acme", "sku-1", json!({"qty": 3}))]),
        4,
    )
    .await;
    assert_eq!(same.outcomes, vec![unchanged(3)]);
    assert_eq!(same.states, vec![r3.clone()]);
    assert_eq!(get(store, "acme", "sku-1").await.unwrap(), r3);
}

pub(crate) async fn patch_is_json_merge_patch(store: &dyn MasterStore) {
    assert_eq!(
        one(store, 0, patch("p0", "acme", "a", json!({"x": 1}))).await,
        not_found()
    );
    assert_eq!(
        get(store, "acme", "a").await,
        None,
        "a rejected patch creates nothing"
    );
    one(
        store,
        1,
        upsert(
            "c1",
            "acme",
            "a",
            json!({"a": 1, "b": {"c": 1, "d": 2}, "k": [1, 2]}),
        ),
    )
    .await;
    assert_eq!(
        one(
            store,
            2,
            patch(
                "p1",
                "acme",
                "a",
                json!({"a": null, "b": {"c": 5, "e": null}, "k": [3], "n": {"m": 1}})
            )
        )
        .await,
        applied(2)
    );
    assert_eq!(
        get(store, "acme", "a").await.unwrap().data,
        Some(obj(json!({"b": {"c": 5, "d": 2}, "k": [3], "n": {"m": 1}})))
    );
    // A patch that leaves the data as it was creates no version.
    assert_eq!(
        one(
            store,
            3,
            patch("p2", "acme", "a", json!({"b": {"c": 5}, "gone": null}))
        )
        .await,
        unchanged(2)
    );
    // Patching a deleted record is not found, with current version 0.
    one(store, 4, delete("d1", "acme", "a")).await;
    assert_eq!(
        one(store, 5, patch("p3", "acme", "a", json!({"x": 1}))).await,
        not_found()
    );
    assert_eq!(get(store, "acme", "a").await.unwrap().version, 3);
}

pub(crate) async fn delete_and_recreate_continue_the_version(store: &dyn MasterStore) {
    assert_eq!(
        one(store, 0, delete("d0", "acme", "a")).await,
        unchanged(0),
        "delete of an absent record"
    );
    assert_eq!(
        get(store, "acme", "a").await,
        None,
        "a no-op delete leaves no tombstone"
    );
    one(store, 1, upsert("c1", "acme", "a", json!({"v": 1}))).await;
    one(store, 2, upsert("c2", "acme", "a", json!({"v": 2}))).await;
    let del = apply_ok(store, "items", &at(3, vec![delete("d1", "acme", "a")]), 4).await;
    assert_eq!(del.outcomes, vec![applied(3)]);
    let tomb = get(store, "acme", "a").await.expect("tombstone");
    assert_eq!(
        (tomb.version, tomb.data.clone(), tomb.change_id.as_str()),
        (3, None, "d1")
    );
    assert!(tomb.is_deleted());
    assert_eq!(del.states, vec![tomb.clone()], "tombstones are republished");
    assert_eq!(
        one(store, 4, delete("d2", "acme", "a")).await,
        unchanged(3),
        "delete of a deleted record"
    );
    assert_eq!(get(store, "acme", "a").await.unwrap(), tomb);
    // If-None-Match (expected version 0) succeeds on a tombstone, continuing above it.
    assert_eq!(
        one(
            store,
            5,
            expecting(upsert("c3", "acme", "a", json!({"v": 3})), 0)
        )
        .await,
        applied(4)
    );
    assert_eq!(
        one(
            store,
            6,
            expecting(upsert("c4", "acme", "a", json!({"v": 4})), 0)
        )
        .await,
        conflict(4)
    );
    assert_eq!(
        get(store, "acme", "a").await.unwrap().data,
        Some(obj(json!({"v": 3})))
    );
}

pub(crate) async fn expected_versions(store: &dyn MasterStore) {
    assert_eq!(
        one(
            store,
            0,
            expecting(upsert("c0", "acme", "a", json!({"v": 0})), 5)
        )
        .await,
        conflict(0)
    );
    assert_eq!(
        one(
            store,
            1,
            expecting(upsert("c1", "acme", "a", json!({"v": 1})), 0)
        )
        .await,
        applied(1)
    );
    assert_eq!(
        one(
            store,
            2,
            expecting(upsert("c2", "acme", "a", json!({"v": 2})), 1)
        )
        .await,
        applied(2)
    );
    assert_eq!(
        one(
            store,
            3,
            expecting(upsert("c3", "acme", "a", json!({"v": 3})), 1)
        )
        .await,
        conflict(2)
    );
    assert_eq!(
        one(
            store,
            4,
            expecting(patch("c4", "acme", "a", json!({"p": 1})), 2)
        )
        .await,
        applied(3)
    );
    assert_eq!(
        one(store, 5, expecting(delete("c5", "acme", "a"), 2)).await,
        conflict(3)
    );
    assert_eq!(
        one(store, 6, expecting(delete("c6", "acme", "a"), 3)).await,
        applied(4)
    );
    assert_eq!(
        one(store, 7, expecting(upsert("c7", "acme", "a", json!({})), 4)).await,
        conflict(0),
        "a tombstone has no live version"
    );
    let r = get(store, "acme", "a").await.unwrap();
    assert_eq!((r.version, r.data), (4, None));
}

pub(crate) async fn rejections_are_stored_outcomes(store: &dyn MasterStore) {
    one(store, 0, upsert("c1", "acme", "a", json!({"v": 1}))).await;
    let stale = expecting(upsert("stale", "acme", "a", json!({"v": 9})), 2);
    assert_eq!(one(store, 1, stale.clone()).await, conflict(1));
    assert_eq!(
        store
            .outcome(&ds("items"), &tenant("acme"), &cid("stale"))
            .await
            .unwrap(),
        Some(owned("a", conflict(1)))
    );
    // The record reaches version 2, where the precondition would hold; redelivering the
    // rejected change still reports the first outcome and changes nothing.
    one(store, 2, upsert("c2", "acme", "a", json!({"v": 2}))).await;
    assert_eq!(one(store, 3, stale).await, conflict(1));
    assert_eq!(
        get(store, "acme", "a").await.unwrap().data,
        Some(obj(json!({"v": 2})))
    );
    let missing = patch("nf", "acme", "nope", json!({}));
    assert_eq!(one(store, 4, missing).await, not_found());
    assert_eq!(
        store
            .outcome(&ds("items"), &tenant("acme"), &cid("nf"))
            .await
            .unwrap(),
        Some(owned("nope", not_found()))
    );
}

/// Refuses data whose `"qty"` is not a number: a stand-in for a dataset's schema.
struct QtyIsANumber;

impl DataCheck for QtyIsANumber {
    fn check(&self, data: &Object) -> Result<(), String> {
        match data.get("qty") {
            Some(qty) if !qty.is_number() => Err(format!("/qty: {qty} is not a number")),
            _ => Ok(()),
        }
    }
}

pub(crate) async fn patches_refused_by_the_check_are_stored_rejections(store: &dyn MasterStore) {
    let violation = |current_version| Outcome::Rejected {
        reason: RejectReason::SchemaViolation,
        current_version,
    };
    let check: Arc<dyn DataCheck> = Arc::new(QtyIsANumber);
    let checked = |batch: Vec<Change>, first: u64| {
        let check = Arc::clone(&check);
        async move {
            let next = first + batch.len() as u64;
            store
                .apply_checked(&ds("items"), 0, &at(first, batch), next, Some(check))
                .await
                .expect("apply")
                .outcomes
        }
    };
    let outcomes = checked(
        vec![
            upsert("c1", "acme", "a", json!({"qty": 1})),
            patch("bad", "acme", "a", json!({"qty": "many"})),
            patch("good", "acme", "a", json!({"qty": 2, "note": "x"})),
            // Upserts are the writers' to check: the store applies them as they come.
            upsert("c2", "acme", "b", json!({"qty": "few"})),
            // A patch that leaves the data as it was is not checked.
            patch("same", "acme", "b", json!({"qty": "few"})),
        ],
        0,
    )
    .await;
    assert_eq!(
        outcomes,
        vec![
            applied(1),
            violation(1),
            applied(2),
            applied(1),
            unchanged(1)
        ]
    );
    let a = get(store, "acme", "a").await.unwrap();
    assert_eq!(
        (a.version, a.data),
        (2, Some(obj(json!({"qty": 2, "note": "x"}))))
    );
    assert_eq!(
        store
            .outcome(&ds("items"), &tenant("acme"), &cid("bad"))
            .await
            .unwrap(),
        Some(owned("a", violation(1))),
        "stored like the other rejections"
    );

    // Redelivered, even without a check, the rejection reports its first outcome and the record
    // keeps its data.
    let again = patch("bad", "acme", "a", json!({"qty": "many"}));
    assert_eq!(one(store, 5, again).await, violation(1));
    assert_eq!(get(store, "acme", "a").await.unwrap().version, 2);
    // The check is of the merged result: a patch fixing a record that violates passes.
    let fix = patch("fix", "acme", "b", json!({"qty": 3}));
    assert_eq!(checked(vec![fix], 6).await, vec![applied(2)]);
    let b = get(store, "acme", "b").await.unwrap();
    assert_eq!(b.data, Some(obj(json!({"qty": 3}))));
}

fn mixed_batch() -> Vec<Change> {
    vec![
        upsert("m1", "acme", "a", json!({"v": 1})),
        upsert("m2", "acme", "b", json!({"v": 1})),
        patch("m3", "acme", "a", json!({"w": 2})),
        delete("m4", "acme", "b"),
        upsert("m5", "globex", "a", json!({"g": 1})),
        expecting(upsert("m6", "acme", "c", json!({})), 3),
        patch("m7", "acme", "zz", json!({"x": 1})),
        upsert("m8", "acme", "a", json!({"v": 1, "w": 2})),
        delete("m9", "acme", "never"),
        upsert("m10", "acme", "b", json!({"back": true})),
    ]
}

pub(crate) async fn idempotent_reapply_of_the_same_batch(store: &dyn MasterStore) {
    let batch = at(0, mixed_batch());
    let first = apply_ok(store, "items", &batch, 10).await;
    assert_eq!(
        first.outcomes,
        vec![
            applied(1),
            applied(1),
            applied(2),
            applied(2),
            applied(1),
            conflict(0),
            not_found(),
            unchanged(2),
            unchanged(0),
            applied(3),
        ]
    );
    let before = scan_all(store, &ds("items"), &tenant("acme"), 100).await;
    for _ in 0..2 {
        let again = apply_ok(store, "items", &batch, 10).await;
        // Not `records`: for a change not applied now that is its key's state at that point of
        // the batch, which on a redelivery is the state the first delivery left.
        assert_eq!(
            (&again.outcomes, &again.states),
            (&first.outcomes, &first.states),
            "same outcomes and the same states, updated_at included"
        );
    }
    assert_eq!(
        scan_all(store, &ds("items"), &tenant("acme"), 100).await,
        before,
        "no new versions"
    );
    assert_eq!(store.position(&ds("items"), 0).await.unwrap(), 10);
}

pub(crate) async fn reapply_below_the_position(store: &dyn MasterStore) {
    let log = at(0, mixed_batch());
    let first = apply_ok(store, "items", &log[..5], 5).await;
    let second = apply_ok(store, "items", &log[5..], 10).await;
    assert_eq!(store.position(&ds("items"), 0).await.unwrap(), 10);
    let snapshot = scan_all(store, &ds("items"), &tenant("acme"), 100).await;

    // A processor that crashed before committing re-reads the first batch.
    let again = apply_ok(store, "items", &log[..5], 5).await;
    assert_eq!(
        again.outcomes, first.outcomes,
        "stored outcomes, not new ones"
    );
    // The states are the current ones, after everything applied so far.
    let current_b = get(store, "acme", "b").await.unwrap();
    assert_eq!(current_b.data, Some(obj(json!({"back": true}))));
    let ids: Vec<_> = again
        .states
        .iter()
        .map(|r| (r.tenant.as_str(), r.id.as_str(), r.version))
        .collect();
    assert_eq!(
        ids,
        [("acme", "a", 2), ("acme", "b", 3), ("globex", "a", 1)]
    );
    assert_eq!(again.states[1], current_b);

    // A batch straddling the position: the part below reports stored outcomes, the rest applies.
    let more = at(10, vec![upsert("n1", "acme", "a", json!({"n": 1}))]);
    let straddle: Vec<_> = log[8..].iter().cloned().chain(more).collect();
    let s = apply_ok(store, "items", &straddle, 11).await;
    assert_eq!(
        s.outcomes,
        vec![
            second.outcomes[3].clone(),
            second.outcomes[4].clone(),
            applied(3)
        ]
    );
    assert_eq!(store.position(&ds("items"), 0).await.unwrap(), 11);
    let after = scan_all(store, &ds("items"), &tenant("acme"), 100).await;
    assert_eq!(after.len(), snapshot.len());
    assert_eq!(after[0].version, 3);
    assert_eq!(after[1..], snapshot[1..]);
}

pub(crate) async fn position_never_moves_backwards(store: &dyn MasterStore) {
    let items = ds("items");
    assert_eq!(store.position(&items, 0).await.unwrap(), 0);
    apply_ok(
        store,
        "items",
        &at(0, vec![upsert("c1", "acme", "a", json!({}))]),
        10,
    )
    .await;
    assert_eq!(
        store.position(&items, 0).await.unwrap(),
        10,
        "next_offset may pass the last change"
    );
    apply_ok(store, "items", &[], 5).await;
    assert_eq!(store.position(&items, 0).await.unwrap(), 10);
    apply_ok(
        store,
        "items",
        &at(3, vec![upsert("c1", "acme", "a", json!({}))]),
        4,
    )
    .await;
    assert_eq!(store.position(&items, 0).await.unwrap(), 10);
    apply_ok(store, "items", &[], 25).await;
    assert_eq!(store.position(&items, 0).await.unwrap(), 25);
    // Positions are per dataset and partition.
    assert_eq!(store.position(&items, 1).await.unwrap(), 0);
    assert_eq!(store.position(&ds("other"), 0).await.unwrap(), 0);
    store.apply(&items, 1, &[], 7).await.unwrap();
    assert_eq!(store.position(&items, 1).await.unwrap(), 7);
    assert_eq!(store.position(&items, 0).await.unwrap(), 25);
}

pub(crate) async fn duplicate_change_ids(store: &dyn MasterStore) {
    // In one batch: the second occurrence reports the first's outcome and changes nothing.
    let a = apply_ok(
        store,
        "items",
        &at(
            0,
            vec![
                upsert("dup", "acme", "a", json!({"v": 1})),
                upsert("dup", "acme", "a", json!({"v": 2})),
            ],
        ),
        2,
    )
    .await;
    assert_eq!(a.outcomes, vec![applied(1), applied(1)]);
    assert_eq!(a.states.len(), 1);
    assert_eq!(a.states[0].data, Some(obj(json!({"v": 1}))));
    // In a later batch, at a higher offset (a producer retry appended twice): same.
    let b = apply_ok(
        store,
        "items",
        &at(
            2,
            vec![
                upsert("x", "acme", "a", json!({"v": 3})),
                delete("dup", "acme", "a"),
            ],
        ),
        4,
    )
    .await;
    assert_eq!(b.outcomes, vec![applied(2), applied(1)]);
    let r = get(store, "acme", "a").await.unwrap();
    assert_eq!((r.version, r.data.clone()), (2, Some(obj(json!({"v": 3})))));
    assert_eq!(b.states, vec![r]);
    // Change ids are scoped to a tenant and a dataset.
    assert_eq!(
        one(store, 4, upsert("dup", "globex", "a", json!({"v": 1}))).await,
        applied(1)
    );
    let other = store
        .apply(
            &ds("other"),
            0,
            &at(0, vec![upsert("dup", "acme", "a", json!({"o": 1}))]),
            1,
        )
        .await
        .unwrap();
    assert_eq!(other.outcomes, vec![applied(1)]);
}

/// A change id belongs to the record of the first change that used it. Another record's change
/// with the same id is no duplicate: it is refused `key_reused` (never silently dropped),
/// changes nothing, and is not stored, so the first record keeps the id and its outcome.
pub(crate) async fn change_id_reused_for_another_record(store: &dyn MasterStore) {
    let items = ds("items");
    let owner = |c: &'static str| {
        let items = items.clone();
        async move {
            store
                .outcome(&items, &tenant("acme"), &cid(c))
                .await
                .unwrap()
        }
    };
    assert_eq!(
        one(store, 0, upsert("k1", "acme", "a", json!({"v": 1}))).await,
        applied(1)
    );
    let original = get(store, "acme", "a").await.unwrap();

    // In a later batch, for a record that does not exist yet.
    let reuse = apply_ok(
        store,
        "items",
        &at(1, vec![upsert("k1", "acme", "b", json!({"b": 1}))]),
        2,
    )
    .await;
    assert_eq!(reuse.outcomes, vec![key_reused(0)]);
    assert!(reuse.states.is_empty(), "{:?}", reuse.states);
    assert_eq!(reuse.records, vec![None]);
    assert_eq!(get(store, "acme", "b").await, None);
    assert_eq!(owner("k1").await, Some(owned("a", applied(1))));
    assert_eq!(store.position(&items, 0).await.unwrap(), 2);

    // For a live record: the refusal reports that record's version; deletes are refused too.
    one(store, 2, upsert("k2", "acme", "b", json!({"b": 2}))).await;
    assert_eq!(
        one(store, 3, upsert("k1", "acme", "b", json!({"b": 3}))).await,
        key_reused(1)
    );
    assert_eq!(
        one(store, 4, delete("k1", "acme", "b")).await,
        key_reused(1)
    );
    let b = get(store, "acme", "b").await.unwrap();
    assert_eq!(
        (b.version, b.data, b.change_id),
        (1, Some(obj(json!({"b": 2}))), cid("k2"))
    );

    // The original is untouched, and a true duplicate still reports the first outcome.
    assert_eq!(
        one(store, 5, upsert("k1", "acme", "a", json!({"v": 9}))).await,
        applied(1)
    );
    assert_eq!(get(store, "acme", "a").await, Some(original.clone()));
    assert_eq!(owner("k1").await, Some(owned("a", applied(1))));

    // Within one batch: the first change with the id owns it, whatever comes after.
    let batch = at(
        6,
        vec![
            upsert("w", "acme", "c", json!({"c": 1})),
            upsert("w", "acme", "d", json!({"d": 1})),
            patch("w", "acme", "a", json!({"v": 2})),
            upsert("w", "acme", "c", json!({"c": 2})),
        ],
    );
    let first = apply_ok(store, "items", &batch, 10).await;
    assert_eq!(
        first.outcomes,
        vec![applied(1), key_reused(0), key_reused(1), applied(1)]
    );
    assert_eq!(get(store, "acme", "d").await, None);
    assert_eq!(get(store, "acme", "a").await, Some(original));
    let c = get(store, "acme", "c").await.unwrap();
    assert_eq!((c.version, c.data), (1, Some(obj(json!({"c": 1})))));
    assert_eq!(owner("w").await, Some(owned("c", applied(1))));
    // Redelivered below the position: refused again, the same way.
    let again = apply_ok(store, "items", &batch, 10).await;
    assert_eq!(again.outcomes, first.outcomes);
    assert_eq!(again.states, first.states);

    // Ids are per tenant: another tenant's record may use the same id.
    assert_eq!(
        one(store, 10, upsert("k1", "globex", "b", json!({}))).await,
        applied(1)
    );
}

pub(crate) async fn states_content_and_order(store: &dyn MasterStore) {
    one(store, 0, upsert("c0", "acme", "r", json!({"r": 1}))).await;
    let batch = at(
        1,
        vec![
            upsert("c1", "acme", "a", json!({"v": 1})),
            upsert("c2", "acme", "b", json!({"v": 1})),
            upsert("c3", "acme", "a", json!({"v": 2})),
            delete("c4", "acme", "never"),
            expecting(upsert("c5", "acme", "r", json!({"r": 2})), 7),
            upsert("c6", "globex", "a", json!({"g": 1})),
            delete("c7", "acme", "b"),
            patch("c8", "acme", "ghost", json!({"x": 1})),
        ],
    );
    let out = apply_ok(store, "items", &batch, 9).await;
    assert_eq!(out.previous_position, 1, "the position before this batch");
    // Ordered by last appearance: a@2, r@4, globex/a@5, b@6; never-existing keys left out.
    let keys: Vec<_> = out
        .states
        .iter()
        .map(|r| (r.tenant.as_str(), r.id.as_str()))
        .collect();
    assert_eq!(
        keys,
        [("acme", "a"), ("acme", "r"), ("globex", "a"), ("acme", "b")]
    );
    for state in &out.states {
        let stored = store
            .get(&ds("items"), &state.tenant, &state.id)
            .await
            .unwrap();
        assert_eq!(
            Some(state),
            stored.as_ref(),
            "each state is the stored record"
        );
    }
    assert_eq!(out.states[0].version, 2);
    assert_eq!(
        out.states[1].version, 1,
        "an untouched key is republished as it is"
    );
    assert!(out.states[3].is_deleted());
    assert_eq!(out.states[3].version, 2);
    assert!(apply_ok(store, "items", &[], 9).await.states.is_empty());

    // `records`: each change's own result, even when a later change of the batch replaced it.
    let versions: Vec<_> = out
        .records
        .iter()
        .map(|r| r.as_ref().map(|r| (r.version, r.data.clone())))
        .collect();
    let data = |v: serde_json::Value| Some(v.as_object().unwrap().clone());
    assert_eq!(
        versions,
        [
            Some((1, data(json!({"v": 1})))),
            Some((1, data(json!({"v": 1})))),
            Some((2, data(json!({"v": 2})))),
            None,
            Some((1, data(json!({"r": 1})))),
            Some((1, data(json!({"g": 1})))),
            Some((2, None)),
            None,
        ]
    );
}

pub(crate) async fn outcome_lookups(store: &dyn MasterStore) {
    let items = ds("items");
    assert_eq!(
        store
            .outcome(&items, &tenant("acme"), &cid("c1"))
            .await
            .unwrap(),
        None
    );
    one(store, 0, upsert("c1", "acme", "a", json!({}))).await;
    one(store, 1, upsert("c2", "acme", "a", json!({}))).await;
    assert_eq!(
        store
            .outcome(&items, &tenant("acme"), &cid("c1"))
            .await
            .unwrap(),
        Some(owned("a", applied(1)))
    );
    assert_eq!(
        store
            .outcome(&items, &tenant("acme"), &cid("c2"))
            .await
            .unwrap(),
        Some(owned("a", unchanged(1)))
    );
    assert_eq!(
        store
            .outcome(&items, &tenant("globex"), &cid("c1"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .outcome(&ds("other"), &tenant("acme"), &cid("c1"))
            .await
            .unwrap(),
        None
    );

    // Several at once: answer for answer, in order, repeats included.
    let asked = [
        (tenant("acme"), cid("c2")),
        (tenant("acme"), cid("none")),
        (tenant("globex"), cid("c1")),
        (tenant("acme"), cid("c1")),
        (tenant("acme"), cid("c2")),
    ];
    assert_eq!(
        store.outcomes(&items, &asked).await.unwrap(),
        vec![
            Some(owned("a", unchanged(1))),
            None,
            None,
            Some(owned("a", applied(1))),
            Some(owned("a", unchanged(1))),
        ]
    );
    assert_eq!(
        store.outcomes(&ds("other"), &asked[..1]).await.unwrap(),
        vec![None]
    );
    assert!(store.outcomes(&items, &[]).await.unwrap().is_empty());
}

pub(crate) async fn scan_pages_in_byte_order_with_tombstones(store: &dyn MasterStore) {
    // Byte order of UTF-8 (= code point order): uppercase before lowercase, "z" before "é",
    // U+FF5A before U+1F600 (UTF-16 order would differ), and no locale folding.
    let ids = [
        "b", "a", "Z", "é", "€", "😀", "ｚ", "a/b", "ab", "z", "A", "e", "ä:1", "-", "~",
    ];
    let mut changes: Vec<Change> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| upsert(&format!("c{i}"), "acme", id, json!({"i": i})))
        .collect();
    changes.push(delete("del", "acme", "€"));
    changes.push(upsert("other", "acmf", "0", json!({})));
    changes.push(upsert("other", "acm", "zzz", json!({})));
    apply_ok(store, "items", &at(0, changes), 20).await;

    let mut expected: Vec<&str> = ids.to_vec();
    expected.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for page in [1, 2, 3, 4, 100] {
        let all = scan_all(store, &ds("items"), &tenant("acme"), page).await;
        let got: Vec<&str> = all.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(got, expected, "page size {page}");
        assert!(all.iter().all(|r| r.tenant.as_str() == "acme"));
        let tomb = all.iter().find(|r| r.id.as_str() == "€").unwrap();
        assert!(tomb.is_deleted(), "tombstones are scanned");
    }
    let after_last = store
        .scan(
            &ds("items"),
            &tenant("acme"),
            Some(&eid(expected[expected.len() - 1])),
            10,
        )
        .await
        .unwrap();
    assert!(after_last.is_empty());
    // `after` need not be an existing id.
    let from_mid = store
        .scan(&ds("items"), &tenant("acme"), Some(&eid("aa")), 2)
        .await
        .unwrap();
    let got: Vec<_> = from_mid.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(got, ["ab", "b"]);
    assert!(
        store
            .scan(&ds("items"), &tenant("acme"), None, 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .scan(&ds("items"), &tenant("nobody"), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub(crate) async fn tenants_and_datasets_never_mixed(store: &dyn MasterStore) {
    let (a, b) = (ds("alpha"), ds("beta"));
    for (d, offset) in [(&a, 0), (&b, 0)] {
        let batch = at(
            offset,
            vec![
                upsert("c1", "acme", "1", json!({"who": format!("{d}/acme")})),
                upsert("c1", "acme2", "1", json!({"who": format!("{d}/acme2")})),
            ],
        );
        let out = store.apply(d, 0, &batch, 2).await.unwrap();
        assert_eq!(out.outcomes, vec![applied(1), applied(1)]);
    }
    store
        .apply(&a, 0, &at(2, vec![delete("c2", "acme", "1")]), 3)
        .await
        .unwrap();
    for (d, t, deleted) in [
        (&a, "acme", true),
        (&a, "acme2", false),
        (&b, "acme", false),
        (&b, "acme2", false),
    ] {
        let r = store.get(d, &tenant(t), &eid("1")).await.unwrap().unwrap();
        assert_eq!(r.tenant.as_str(), t);
        if deleted {
            assert_eq!((r.version, r.data), (2, None));
        } else {
            assert_eq!(r.data, Some(obj(json!({"who": format!("{d}/{t}")}))));
        }
        let scanned = store.scan(d, &tenant(t), None, 10).await.unwrap();
        assert_eq!(scanned.len(), 1);
        assert_eq!(scanned[0].tenant.as_str(), t);
    }
}

pub(crate) async fn failed_apply_leaves_nothing_behind(store: &dyn MasterStore) {
    one(store, 0, upsert("c0", "acme", "a", json!({"v": 0}))).await;
    let batch = at(
        1,
        vec![
            upsert("c1", "acme", "a", json!({"v": 1})),
            upsert("c2", "acme", "b", json!({})),
        ],
    );
    let err = store
        .apply(&ds("items"), 0, &batch, u64::MAX)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::OutOfRange { .. }), "{err:?}");
    assert_eq!(get(store, "acme", "a").await.unwrap().version, 1);
    assert_eq!(get(store, "acme", "b").await, None);
    assert_eq!(
        store
            .outcome(&ds("items"), &tenant("acme"), &cid("c1"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.position(&ds("items"), 0).await.unwrap(), 1);
    // The store is still usable, and the batch applies once the offset is sane.
    let ok = apply_ok(store, "items", &batch, 3).await;
    assert_eq!(ok.outcomes, vec![applied(2), applied(1)]);
}

pub(crate) async fn empty_and_huge_values(store: &dyn MasterStore) {
    // Strings that trip up databases: NUL, quotes, non-BMP characters, a long id.
    let long_id = "é".repeat(256);
    let data = json!({
        "nul": "a\u{0}b",
        "quote": "it's \"quoted\" \\",
        "emoji": "😀",
        "nested": {"deep": [1, 2.5, -3, 1e300, 18446744073709551615u64, null, false]},
        "": "empty key",
    });
    assert_eq!(
        one(store, 0, upsert("c0", "acme", &long_id, data.clone())).await,
        applied(1)
    );
    let r = get(store, "acme", &long_id).await.unwrap();
    assert_eq!(r.data, Some(obj(data.clone())));
    assert_eq!(
        one(store, 1, upsert("c1", "acme", &long_id, data)).await,
        unchanged(1)
    );
    assert_eq!(
        one(store, 2, upsert("c2", "acme", "empty", json!({}))).await,
        applied(1)
    );
    assert_eq!(
        get(store, "acme", "empty").await.unwrap().data,
        Some(obj(json!({})))
    );
    let long_change_id = "k".repeat(255);
    assert_eq!(
        one(store, 3, upsert(&long_change_id, "acme", "x", json!({}))).await,
        applied(1)
    );
    assert_eq!(
        store
            .outcome(&ds("items"), &tenant("acme"), &cid(&long_change_id))
            .await
            .unwrap(),
        Some(owned("x", applied(1)))
    );
}

pub(crate) async fn check_succeeds(store: &dyn MasterStore) {
    store.check().await.expect("a fresh store is reachable");
}

/// Waits until the clock has passed `t`, so that what is stored next is stamped after it.
async fn clock_past(t: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    loop {
        let now = chrono::Utc::now();
        if now > t {
            return now;
        }
        tokio::task::yield_now().await;
    }
}

pub(crate) async fn outcomes_are_pruned_oldest_first_in_bounded_batches(store: &dyn MasterStore) {
    let items = ds("items");
    let before_all = chrono::Utc::now();
    one(store, 0, upsert("old-1", "acme", "a", json!({"n": 1}))).await;
    one(store, 1, upsert("old-2", "globex", "b", json!({"n": 1}))).await;
    apply_ok(
        store,
        "other",
        &at(0, vec![upsert("old-3", "acme", "c", json!({}))]),
        1,
    )
    .await;
    let boundary = clock_past(chrono::Utc::now()).await;
    clock_past(boundary).await;
    one(store, 2, upsert("young", "acme", "a", json!({"n": 2}))).await;

    assert_eq!(
        store.prune_outcomes(before_all, 100).await.unwrap(),
        0,
        "nothing was stored before the first apply"
    );
    assert_eq!(
        store.prune_outcomes(boundary, 2).await.unwrap(),
        2,
        "bounded by the limit"
    );
    assert_eq!(
        store.prune_outcomes(boundary, 2).await.unwrap(),
        1,
        "then the rest, across datasets"
    );
    assert_eq!(store.prune_outcomes(boundary, 2).await.unwrap(), 0);
    for (dataset, t, c) in [
        ("items", "acme", "old-1"),
        ("items", "globex", "old-2"),
        ("other", "acme", "old-3"),
    ] {
        assert_eq!(
            store
                .outcome(&ds(dataset), &tenant(t), &cid(c))
                .await
                .unwrap(),
            None,
            "{c} was pruned"
        );
    }
    assert_eq!(
        store
            .outcome(&items, &tenant("acme"), &cid("young"))
            .await
            .unwrap(),
        Some(owned("a", applied(2))),
        "younger than the cut: kept"
    );
    // Records and positions are untouched.
    assert_eq!(get(store, "acme", "a").await.unwrap().version, 2);
    assert_eq!(get(store, "globex", "b").await.unwrap().version, 1);
    assert_eq!(store.position(&items, 0).await.unwrap(), 3);

    // A pruned key is as if never applied: its retry at a new offset is applied again, unless
    // its precondition refuses it; the retry of a kept key is still a duplicate.
    assert_eq!(
        one(store, 3, upsert("young", "acme", "a", json!({"n": 2}))).await,
        applied(2)
    );
    assert_eq!(
        one(store, 4, upsert("old-2", "globex", "b", json!({"n": 9}))).await,
        applied(2),
        "applied again after its key was pruned"
    );
    assert_eq!(
        one(
            store,
            5,
            expecting(upsert("old-1", "acme", "a", json!({"n": 7})), 1)
        )
        .await,
        conflict(2),
        "a retry after the window that carries its version check is refused by it"
    );
    // A change id pruned from one record may now belong to another.
    assert_eq!(
        store
            .outcome(&items, &tenant("acme"), &cid("old-1"))
            .await
            .unwrap(),
        Some(owned("a", conflict(2)))
    );
    // Re-reading below the position applies nothing, even a change whose key was pruned.
    let again = apply_ok(
        store,
        "other",
        &at(0, vec![upsert("old-3", "acme", "c", json!({"n": 3}))]),
        1,
    )
    .await;
    assert_eq!(again.outcomes, vec![unchanged(1)]);
    let c = store
        .get(&ds("other"), &tenant("acme"), &eid("c"))
        .await
        .unwrap();
    assert_eq!(c.map(|r| r.version), Some(1));
    let everything = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(store.prune_outcomes(everything, 1_000).await.unwrap(), 3);
}

pub(crate) const LEGACY: &[v1::LegacyRecord] = &[
    v1::LegacyRecord {
        tenant: "acme",
        id: "a",
        version: 3,
        data: Some("{}"),
    },
    v1::LegacyRecord {
        tenant: "globex",
        id: "b",
        version: 1,
        data: None,
    },
];

/// Outcomes stored before they had a time count as stored at the upgrade: kept for a whole
/// window from then, neither pruned at once nor kept forever.
pub(crate) async fn legacy_outcomes_are_kept_a_window_from_the_upgrade(store: &dyn MasterStore) {
    let items = ds("items");
    let upgraded = chrono::Utc::now();
    let a_minute_before = upgraded - chrono::Duration::minutes(1);
    assert_eq!(store.prune_outcomes(a_minute_before, 100).await.unwrap(), 0);
    assert_eq!(
        store
            .outcome(&items, &tenant("acme"), &cid("legacy:a"))
            .await
            .unwrap(),
        Some(owned("a", applied(3)))
    );
    let later = upgraded + chrono::Duration::seconds(1);
    assert_eq!(store.prune_outcomes(later, 100).await.unwrap(), 2);
    assert_eq!(
        store
            .outcome(&items, &tenant("acme"), &cid("legacy:a"))
            .await
            .unwrap(),
        None
    );
}
