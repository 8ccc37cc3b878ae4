//! The `MasterStore` conformance suite, written once and run against every backend.
//!
//! Each case is a plain async fn over `&dyn MasterStore`; the `conformance!` macro instantiates
//! all of them for a backend, each on a fresh store (its own temp dir or PostgreSQL schema), so
//! they run in parallel. PostgreSQL cases read `TENANTSYNC_TEST_POSTGRES` and print a skip
//! notice when it is unset. A backend is done when this suite passes on it.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;
use tenantsync_core::{
    Change, ChangeId, DatasetName, Outcome, Record, RejectReason, SubscriptionName, TokenName,
};
use tenantsync_store::{
    AuditEntry, BatchLease, BatcherClaim, Dataset, Erasure, FeedPosition, FeedRecord, LoggedChange,
    MasterStore, Progress, StoreError, StoredToken, Subscription, TenantFeed, TenantSelection,
};

use common::*;

macro_rules! conformance {
    ($backend:ident: [$($case:ident),* $(,)?], shared: [$($shared:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(h) = super::common::$backend().await else { return };
                    super::$case(&*h.store).await;
                }
            )*

            // Cases that share the store between concurrent tasks.
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $shared() {
                    let Some(h) = super::common::$backend().await else { return };
                    super::$shared(Arc::clone(&h.store)).await;
                }
            )*

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn legacy_records_get_ranked_seqs() {
                let Some(h) = super::common::v1::$backend(super::LEGACY).await else { return };
                super::legacy_records_get_ranked_seqs(&*h.store).await;
            }

            #[test]
            fn model_based() {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                let Some(h) = rt.block_on(super::common::$backend()) else { return };
                super::model_based(&rt, &*h.store);
            }

            use std::sync::Arc;
        }
    };
}

macro_rules! suite {
    ($($backend:ident),*) => {
        $(
            conformance!($backend: [
                declare_and_list_datasets,
                upsert_get_and_unchanged_data,
                patch_is_json_merge_patch,
                delete_and_recreate_continue_the_version,
                expected_versions,
                rejections_are_stored_outcomes,
                idempotent_reapply_of_the_same_batch,
                reapply_below_the_position,
                position_never_moves_backwards,
                duplicate_change_ids,
                change_id_reused_for_another_record,
                states_content_and_order,
                outcome_lookups,
                scan_pages_in_byte_order_with_tombstones,
                tenants_and_datasets_never_mixed,
                failed_apply_leaves_nothing_behind,
                empty_and_huge_values,
                check_succeeds,
                feed_orders_by_seq_and_pages,
                feed_skips_tombstones_below_live_from,
                purge_tombstones_raises_horizon_and_floor,
                tenant_ends_lists_every_tenant,
                subscriptions_crud_and_acks,
                feeds_never_mix_tenants_and_datasets,
                tokens_are_stored_by_hash_and_revoked,
                audit_log_appends_and_pages,
                secrets_are_created_once,
                erasure_lifecycle,
                batcher_claim_lifecycle,
                batch_dispatch_moves_by_compare_and_set,
                expired_batches_are_retaken_earliest_first,
                batch_acks,
                batch_datasets_are_independent,
            ], shared: [
                concurrent_overlapping_applies,
                feed_pages_miss_no_write_under_concurrent_applies,
                versions_never_go_down_under_concurrent_purges,
                secret_racers_agree,
                erasure_finish_racing_applies_leaves_no_rejection,
                batcher_claim_racers_one_wins,
                batch_claim_racers_one_wins,
                batch_retake_racers_take_each_lease_once,
            ]);
        )*
    };
}

suite!(sqlite, postgres);

async fn apply_ok(
    store: &dyn MasterStore,
    dataset: &str,
    batch: &[LoggedChange],
    next_offset: u64,
) -> tenantsync_store::Applied {
    store
        .apply(&ds(dataset), 0, batch, next_offset)
        .await
        .expect("apply")
}

/// Applies one change at `offset` and returns its outcome.
async fn one(store: &dyn MasterStore, offset: u64, c: Change) -> tenantsync_core::Outcome {
    let applied = apply_ok(store, "items", &at(offset, vec![c]), offset + 1).await;
    assert_eq!(applied.outcomes.len(), 1);
    applied.outcomes[0].clone()
}

async fn get(store: &dyn MasterStore, t: &str, id: &str) -> Option<Record> {
    store
        .get(&ds("items"), &tenant(t), &eid(id))
        .await
        .expect("get")
}

async fn declare_and_list_datasets(store: &dyn MasterStore) {
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

async fn upsert_get_and_unchanged_data(store: &dyn MasterStore) {
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

async fn patch_is_json_merge_patch(store: &dyn MasterStore) {
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

async fn delete_and_recreate_continue_the_version(store: &dyn MasterStore) {
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

async fn expected_versions(store: &dyn MasterStore) {
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

async fn rejections_are_stored_outcomes(store: &dyn MasterStore) {
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

async fn idempotent_reapply_of_the_same_batch(store: &dyn MasterStore) {
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

async fn reapply_below_the_position(store: &dyn MasterStore) {
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

async fn position_never_moves_backwards(store: &dyn MasterStore) {
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

async fn duplicate_change_ids(store: &dyn MasterStore) {
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
async fn change_id_reused_for_another_record(store: &dyn MasterStore) {
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

async fn states_content_and_order(store: &dyn MasterStore) {
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

async fn outcome_lookups(store: &dyn MasterStore) {
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

async fn scan_pages_in_byte_order_with_tombstones(store: &dyn MasterStore) {
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

async fn tenants_and_datasets_never_mixed(store: &dyn MasterStore) {
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

async fn failed_apply_leaves_nothing_behind(store: &dyn MasterStore) {
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

async fn empty_and_huge_values(store: &dyn MasterStore) {
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

async fn check_succeeds(store: &dyn MasterStore) {
    store.check().await.expect("a fresh store is reachable");
}

// ---------------------------------------------------------------------------------------------
// Concurrency

/// A log over a few tenants and ids with every kind of change, duplicates included.
fn random_log(rng: &mut SplitMix, len: usize) -> Vec<Change> {
    let tenants = ["acme", "globex", "initech"];
    let mut log: Vec<Change> = Vec::with_capacity(len);
    for i in 0..len {
        if i > 0 && rng.below(10) == 0 {
            // A producer retry: the same change appended again later.
            let earlier = log[rng.below(i as u64) as usize].clone();
            log.push(earlier);
            continue;
        }
        let t = tenants[rng.below(3) as usize];
        let id = format!("id-{}", rng.below(5));
        let v = rng.below(3);
        let mut c = match rng.below(4) {
            0 | 1 => upsert(&format!("c{i}"), t, &id, json!({"v": v})),
            2 => patch(&format!("c{i}"), t, &id, json!({format!("k{v}"): i})),
            _ => delete(&format!("c{i}"), t, &id),
        };
        if rng.below(4) == 0 {
            c.expected_version = Some(rng.below(4));
        }
        log.push(c);
    }
    log
}

/// Splits `0..len` into consecutive batches of 1 to `max` changes.
fn random_split(rng: &mut SplitMix, len: usize, max: u64) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < len {
        let end = (start + 1 + rng.below(max) as usize).min(len);
        out.push((start, end));
        start = end;
    }
    out
}

/// Several processors apply the same partition at once, each from its own start (0, or the
/// position it read, as after a rebalance) with its own batch boundaries. However their
/// transactions interleave, every change takes effect once and the store ends equal to the
/// reference model; every processor is told the first outcome of each change.
async fn concurrent_overlapping_applies(store: Arc<dyn MasterStore>) {
    const ROUNDS: u64 = 30;
    const TASKS: u64 = 4;
    const LEN: usize = 120;
    for round in 0..ROUNDS {
        let mut rng = SplitMix::new(0xC0FFEE + round);
        let dataset = ds(&format!("round-{round}"));
        let log = Arc::new(random_log(&mut rng, LEN));
        let model = Arc::new(Model::replay(&log));
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let store = Arc::clone(&store);
            let (log, model, dataset) = (Arc::clone(&log), Arc::clone(&model), dataset.clone());
            let from_position = task % 2 == 1;
            let split = random_split(&mut rng, LEN, 25);
            tasks.push(tokio::spawn(async move {
                let start = if from_position {
                    store.position(&dataset, 0).await.unwrap() as usize
                } else {
                    0
                };
                for (begin, end) in split {
                    if end <= start {
                        continue;
                    }
                    let begin = begin.max(start);
                    let batch: Vec<_> = (begin..end)
                        .map(|i| LoggedChange {
                            offset: i as u64,
                            change: log[i].clone(),
                        })
                        .collect();
                    let out = store.apply(&dataset, 0, &batch, end as u64).await.unwrap();
                    for (logged, outcome) in batch.iter().zip(&out.outcomes) {
                        let c = &logged.change;
                        assert_eq!(
                            Some(outcome),
                            model
                                .outcomes
                                .get(&(c.tenant.clone(), c.change_id.clone()))
                                .map(|stored| &stored.outcome),
                            "round {round} task {task} offset {}",
                            logged.offset
                        );
                    }
                    // Versions never go down as seen by one processor.
                    for state in &out.states {
                        let latest = model.get(&state.tenant, &state.id).unwrap();
                        assert!(state.version <= latest.version);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("apply task");
        }
        assert_matches_model(
            &*store,
            &dataset,
            &[tenant("acme"), tenant("globex"), tenant("initech")],
            &model,
        )
        .await;
        assert_eq!(store.position(&dataset, 0).await.unwrap(), LEN as u64);
    }
}

// ---------------------------------------------------------------------------------------------
// Model-based property test

#[derive(Debug, Clone)]
struct Spec {
    /// Reuse the change id of an earlier entry (a producer retry, or a reused idempotency key
    /// with different content).
    dup_of: Option<usize>,
    tenant: u8,
    id: u8,
    op: u8,
    value: u8,
    expected: Option<u64>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        proptest::option::weighted(0.15, 0usize..64),
        0u8..2,
        0u8..3,
        0u8..3,
        0u8..3,
        proptest::option::weighted(0.25, 0u64..4),
    )
        .prop_map(|(dup_of, tenant, id, op, value, expected)| Spec {
            dup_of,
            tenant,
            id,
            op,
            value,
            expected,
        })
}

fn build_log(specs: &[Spec]) -> Vec<Change> {
    let mut log: Vec<Change> = Vec::with_capacity(specs.len());
    for (i, s) in specs.iter().enumerate() {
        let t = ["acme", "globex"][s.tenant as usize];
        let id = ["a", "b", "ä"][s.id as usize];
        let mut c = match s.op {
            0 => upsert("x", t, id, json!({"v": s.value})),
            1 => patch(
                "x",
                t,
                id,
                if s.value == 0 {
                    json!({"v": null})
                } else {
                    json!({"w": s.value})
                },
            ),
            _ => delete("x", t, id),
        };
        c.change_id = match s.dup_of {
            Some(j) if i > 0 => log[j % i].change_id.clone(),
            _ => cid(&format!("c{i}")),
        };
        if let Some(j) = s.dup_of.filter(|_| i > 0) {
            // Keep the tenant of the earlier entry half the time, so the duplicate really is a
            // duplicate (ids are per tenant) rather than a fresh change.
            if j % 2 == 0 {
                c.tenant = log[j % i].tenant.clone();
            }
        }
        c.expected_version = s.expected;
        log.push(c);
    }
    log
}

/// One delivery: back up `rewind` entries from the stored position (a re-read after a crash)
/// and apply up to `len` entries from there.
fn deliveries() -> impl Strategy<Value = Vec<(usize, usize)>> {
    proptest::collection::vec((0usize..6, 1usize..9), 1..12)
}

static CASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn model_based(rt: &tokio::runtime::Runtime, store: &dyn MasterStore) {
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (proptest::collection::vec(spec(), 1..40), deliveries());
    runner
        .run(&strategy, |(specs, deliveries)| {
            let dataset = ds(&format!(
                "case-{}",
                CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            let log = build_log(&specs);
            rt.block_on(run_case(store, &dataset, &log, &deliveries));
            Ok(())
        })
        .unwrap();
}

async fn run_case(
    store: &dyn MasterStore,
    dataset: &tenantsync_core::DatasetName,
    log: &[Change],
    deliveries: &[(usize, usize)],
) {
    let full = Model::replay(log);
    let mut prefixes: HashMap<usize, Model> = HashMap::new();
    let mut position = 0usize;
    let mut plan: Vec<(usize, usize)> = deliveries.to_vec();
    // Whatever the random deliveries left, the rest arrives in one batch.
    plan.push((0, log.len()));
    for (rewind, len) in plan {
        let begin = position.saturating_sub(rewind);
        let end = (begin + len).min(log.len());
        if begin >= end {
            continue;
        }
        let batch: Vec<_> = (begin..end)
            .map(|i| LoggedChange {
                offset: i as u64,
                change: log[i].clone(),
            })
            .collect();
        let out = store
            .apply(dataset, 0, &batch, end as u64)
            .await
            .expect("apply");
        // Each change is considered on the state the store held then: the stored position's
        // prefix for a change below it (a redelivery), its own prefix otherwise. That matters
        // for a reused change id, whose refusal is not stored and reports the live version.
        for (logged, outcome) in batch.iter().zip(&out.outcomes) {
            let i = logged.offset as usize;
            let seen = i.max(position);
            let mut then = prefixes
                .entry(seen)
                .or_insert_with(|| Model::replay(&log[..seen]))
                .clone();
            assert_eq!(
                outcome,
                &then.apply(&logged.change),
                "offset {}",
                logged.offset
            );
        }
        position = position.max(end);
        let model = prefixes
            .entry(position)
            .or_insert_with(|| Model::replay(&log[..position]));
        // States: the model's records after the effective prefix, by last appearance.
        let mut last: Vec<(
            usize,
            (tenantsync_core::TenantId, tenantsync_core::EntityId),
        )> = Vec::new();
        for (i, logged) in batch.iter().enumerate() {
            let key = (logged.change.tenant.clone(), logged.change.id.clone());
            last.retain(|(_, k)| *k != key);
            last.push((i, key));
        }
        let expected: Vec<_> = last
            .iter()
            .filter_map(|(_, (t, id))| model.get(t, id).map(|r| (t.clone(), id.clone(), r.clone())))
            .collect();
        let got: Vec<_> = out
            .states
            .iter()
            .map(|r| (r.tenant.clone(), r.id.clone(), ModelRecord::of(r)))
            .collect();
        assert_eq!(got, expected, "states of batch {begin}..{end}");
        assert_eq!(store.position(dataset, 0).await.unwrap(), position as u64);
    }
    assert_matches_model(store, dataset, &[tenant("acme"), tenant("globex")], &full).await;
}

// ---------------------------------------------------------------------------------------------
// The tenant change feed, tombstone purging and subscriptions

async fn feed(
    store: &dyn MasterStore,
    t: &str,
    from: u64,
    live_from: Option<u64>,
    limit: usize,
) -> TenantFeed {
    store
        .tenant_feed(&ds("items"), &tenant(t), from, live_from, limit)
        .await
        .expect("tenant feed")
}

/// A feed page as (id, seq, version, deleted), for short assertions.
fn page(f: &TenantFeed) -> Vec<(&str, u64, u64, bool)> {
    f.records
        .iter()
        .map(|r| {
            (
                r.record.id.as_str(),
                r.seq,
                r.record.version,
                r.record.is_deleted(),
            )
        })
        .collect()
}

/// Every record of a tenant's feed from `from`, read `limit` at a time, with the last page's
/// end. Each page continues at one past the previous page's last seq.
async fn read_feed(
    store: &dyn MasterStore,
    t: &str,
    mut from: u64,
    live_from: Option<u64>,
    limit: usize,
) -> (Vec<FeedRecord>, u64) {
    let mut out: Vec<FeedRecord> = Vec::new();
    loop {
        let f = feed(store, t, from, live_from, limit).await;
        assert!(f.records.len() <= limit, "a page holds at most its limit");
        let Some(last) = f.records.last() else {
            return (out, f.end);
        };
        assert!(last.seq < f.end, "every seq of a page is below its end");
        from = last.seq + 1;
        out.extend(f.records);
    }
}

async fn purge(store: &dyn MasterStore, before: DateTime<Utc>, limit: usize) -> u64 {
    store
        .purge_tombstones(&ds("items"), before, limit)
        .await
        .expect("purge tombstones")
}

async fn ends(store: &dyn MasterStore, dataset: &str) -> Vec<(String, u64)> {
    store
        .tenant_ends(&ds(dataset))
        .await
        .expect("tenant ends")
        .into_iter()
        .map(|(t, end)| (t.to_string(), end))
        .collect()
}

async fn feed_orders_by_seq_and_pages(store: &dyn MasterStore) {
    assert_eq!(
        feed(store, "acme", 0, None, 10).await,
        TenantFeed {
            records: vec![],
            end: 0,
            horizon: 0
        },
        "a tenant without records"
    );
    apply_ok(
        store,
        "items",
        &at(
            0,
            vec![
                upsert("c0", "acme", "a", json!({"v": 1})),
                upsert("c1", "acme", "b", json!({"v": 1})),
                upsert("c2", "globex", "z", json!({"v": 1})),
                upsert("c3", "acme", "c", json!({"v": 1})),
                upsert("c4", "acme", "a", json!({"v": 2})),
            ],
        ),
        5,
    )
    .await;
    // A record written twice appears once, at the seq of its latest write.
    let full = feed(store, "acme", 0, Some(0), 10).await;
    assert_eq!(
        page(&full),
        [("b", 1, 1, false), ("c", 3, 1, false), ("a", 4, 2, false)]
    );
    assert_eq!((full.end, full.horizon), (5, 0));
    for r in &full.records {
        assert_eq!(
            Some(&r.record),
            get(store, "acme", r.record.id.as_str()).await.as_ref(),
            "a feed record is the stored record"
        );
    }
    for limit in [1, 2, 3] {
        let (all, end) = read_feed(store, "acme", 0, Some(0), limit).await;
        assert_eq!(all, full.records, "pages of {limit}");
        assert_eq!(end, 5);
    }
    // `from` is inclusive, and need not be a stored seq.
    assert_eq!(
        page(&feed(store, "acme", 3, Some(0), 10).await),
        [("c", 3, 1, false), ("a", 4, 2, false)]
    );
    assert_eq!(
        page(&feed(store, "acme", 2, Some(0), 1).await),
        [("c", 3, 1, false)]
    );
    let past = feed(store, "acme", 5, Some(0), 10).await;
    assert!(past.records.is_empty());
    assert_eq!(past.end, 5);
    let none = feed(store, "acme", 0, Some(0), 0).await;
    assert!(none.records.is_empty(), "limit 0");
    assert_eq!(none.end, 5, "limit 0 still tells the end");
    assert_eq!(
        page(&feed(store, "globex", 0, Some(0), 10).await),
        [("z", 2, 1, false)]
    );
    assert_eq!(feed(store, "globex", 0, Some(0), 10).await.end, 3);

    // Unchanged and rejected changes write nothing, so they move no seq; neither does a position
    // beyond the last change.
    let quiet = apply_ok(
        store,
        "items",
        &at(
            5,
            vec![
                upsert("c5", "acme", "a", json!({"v": 2})),
                expecting(upsert("c6", "acme", "b", json!({"v": 9})), 7),
                patch("c7", "acme", "nope", json!({"x": 1})),
            ],
        ),
        20,
    )
    .await;
    assert_eq!(quiet.outcomes, vec![unchanged(2), conflict(1), not_found()]);
    assert_eq!(feed(store, "acme", 0, Some(0), 10).await, full);

    // Within one batch, a key written twice gets the seq of its last write.
    apply_ok(
        store,
        "items",
        &at(
            20,
            vec![
                upsert("c20", "acme", "d", json!({"v": 1})),
                upsert("c21", "acme", "b", json!({"v": 2})),
                upsert("c22", "acme", "d", json!({"v": 2})),
            ],
        ),
        23,
    )
    .await;
    let later = feed(store, "acme", 5, Some(0), 10).await;
    assert_eq!(page(&later), [("b", 21, 2, false), ("d", 22, 2, false)]);
    assert_eq!(later.end, 23);
    assert_eq!(
        page(&feed(store, "acme", 0, Some(0), 10).await),
        [
            ("c", 3, 1, false),
            ("a", 4, 2, false),
            ("b", 21, 2, false),
            ("d", 22, 2, false)
        ]
    );
}

async fn feed_skips_tombstones_below_live_from(store: &dyn MasterStore) {
    apply_ok(
        store,
        "items",
        &at(
            0,
            vec![
                upsert("c0", "acme", "a", json!({"v": 1})),
                upsert("c1", "acme", "b", json!({"v": 1})),
                delete("c2", "acme", "a"),
                upsert("c3", "acme", "c", json!({"v": 1})),
            ],
        ),
        4,
    )
    .await;
    // No live_from: below the end of this read, so a first page shows no deletes.
    let first = feed(store, "acme", 0, None, 10).await;
    assert_eq!(page(&first), [("b", 1, 1, false), ("c", 3, 1, false)]);
    assert_eq!(first.end, 4);
    assert_eq!(
        page(&feed(store, "acme", 0, Some(0), 10).await),
        [("b", 1, 1, false), ("a", 2, 2, true), ("c", 3, 1, false)],
        "tombstones at or after live_from are delivered"
    );
    assert_eq!(
        page(&feed(store, "acme", 0, Some(2), 10).await),
        [("b", 1, 1, false), ("a", 2, 2, true), ("c", 3, 1, false)]
    );
    assert_eq!(
        page(&feed(store, "acme", 0, Some(3), 10).await),
        [("b", 1, 1, false), ("c", 3, 1, false)]
    );
    // live_from skips only tombstones: live records below it are delivered.
    assert_eq!(
        page(&feed(store, "acme", 0, Some(100), 10).await),
        [("b", 1, 1, false), ("c", 3, 1, false)]
    );

    apply_ok(
        store,
        "items",
        &at(
            4,
            vec![
                delete("c4", "acme", "b"),
                upsert("c5", "acme", "e", json!({"v": 1})),
            ],
        ),
        6,
    )
    .await;
    assert_eq!(
        page(&feed(store, "acme", 4, Some(4), 10).await),
        [("b", 4, 2, true), ("e", 5, 1, false)]
    );

    // A snapshot: the first page without live_from, the next ones from its end, then live.
    let first = feed(store, "acme", 0, None, 1).await;
    assert_eq!(page(&first), [("c", 3, 1, false)]);
    let live_from = first.end;
    assert_eq!(live_from, 6);
    let second = feed(store, "acme", 4, Some(live_from), 1).await;
    assert_eq!(
        page(&second),
        [("e", 5, 1, false)],
        "b's delete, below live_from, is skipped"
    );
    assert!(
        feed(store, "acme", 6, Some(live_from), 1)
            .await
            .records
            .is_empty()
    );
    apply_ok(store, "items", &at(6, vec![delete("c6", "acme", "c")]), 7).await;
    assert_eq!(
        page(&feed(store, "acme", 6, Some(live_from), 10).await),
        [("c", 6, 2, true)],
        "a delete after the snapshot is delivered"
    );
}

async fn purge_tombstones_raises_horizon_and_floor(store: &dyn MasterStore) {
    apply_ok(
        store,
        "items",
        &at(
            0,
            vec![
                upsert("c0", "acme", "a", json!({"v": 1})),
                upsert("c1", "acme", "a", json!({"v": 2})),
                delete("c2", "acme", "a"),
                upsert("c3", "acme", "b", json!({"v": 1})),
                delete("c4", "acme", "b"),
                upsert("c5", "acme", "c", json!({"v": 1})),
                upsert("c6", "globex", "x", json!({"v": 1})),
                delete("c7", "globex", "x"),
            ],
        ),
        8,
    )
    .await;
    store
        .apply(
            &ds("other"),
            0,
            &at(
                0,
                vec![
                    upsert("o0", "acme", "a", json!({})),
                    delete("o1", "acme", "a"),
                ],
            ),
            2,
        )
        .await
        .unwrap();
    // Tombstones written from here on are younger than the purge's cutoff.
    let cutoff = Utc::now();
    apply_ok(
        store,
        "items",
        &at(
            8,
            vec![
                upsert("c8", "acme", "d", json!({"v": 1})),
                delete("c9", "acme", "d"),
            ],
        ),
        10,
    )
    .await;
    let reader_before = feed(store, "acme", 0, Some(0), 10).await;
    assert_eq!(
        page(&reader_before),
        [
            ("a", 2, 3, true),
            ("b", 4, 2, true),
            ("c", 5, 1, false),
            ("d", 9, 2, true)
        ]
    );
    assert_eq!((reader_before.end, reader_before.horizon), (10, 0));

    assert_eq!(
        purge(store, Utc::now() - chrono::Duration::days(1), 100).await,
        0,
        "nothing that old"
    );
    assert_eq!(purge(store, cutoff, 0).await, 0, "limit 0");
    assert_eq!(purge(store, cutoff, 2).await, 2, "at most the limit");
    assert_eq!(purge(store, cutoff, 100).await, 1, "the rest");
    assert_eq!(purge(store, cutoff, 100).await, 0, "already purged");

    // Only old tombstones went: live records and younger tombstones stay.
    assert_eq!(get(store, "acme", "a").await, None);
    assert_eq!(get(store, "acme", "b").await, None);
    assert!(
        get(store, "acme", "c")
            .await
            .is_some_and(|r| !r.is_deleted())
    );
    assert!(
        get(store, "acme", "d")
            .await
            .is_some_and(|r| r.is_deleted())
    );
    let x = store
        .get(&ds("items"), &tenant("globex"), &eid("x"))
        .await
        .unwrap();
    assert_eq!(x, None);
    let other = store
        .get(&ds("other"), &tenant("acme"), &eid("a"))
        .await
        .unwrap();
    assert!(
        other.is_some_and(|r| r.is_deleted()),
        "another dataset's tombstones are not purged"
    );
    assert_eq!(
        store
            .tenant_feed(&ds("other"), &tenant("acme"), 0, Some(0), 10)
            .await
            .unwrap()
            .horizon,
        0
    );

    // The horizon is one past the highest purged seq; the end does not move.
    let after = feed(store, "acme", 0, Some(0), 10).await;
    assert_eq!(page(&after), [("c", 5, 1, false), ("d", 9, 2, true)]);
    assert_eq!((after.end, after.horizon), (10, 5));
    // A tenant whose every record was purged keeps its end, and is still listed.
    let globex = feed(store, "globex", 0, Some(0), 10).await;
    assert!(globex.records.is_empty());
    assert_eq!((globex.end, globex.horizon), (8, 8));
    assert_eq!(
        ends(store, "items").await,
        [("acme".to_owned(), 10), ("globex".to_owned(), 8)]
    );
    // Readers that had not read past a purged tombstone are behind.
    let behind = |next_seq, live_from| FeedPosition {
        next_seq,
        live_from,
    };
    assert!(
        behind(3, 0).is_behind(after.horizon),
        "b's delete was missed"
    );
    assert!(behind(0, 4).is_behind(after.horizon));
    assert!(!behind(5, 0).is_behind(after.horizon));
    assert!(
        !behind(0, 5).is_behind(after.horizon),
        "a snapshot from 5 on never needed those deletes"
    );
    assert!(!behind(10, 10).is_behind(after.horizon));
    assert!(!FeedPosition::default().is_behind(0));

    // Keys created in a purged tenant start above the highest version purged there, so a
    // purged key comes back above its old version, and versions never go down.
    let recreated = apply_ok(
        store,
        "items",
        &at(
            10,
            vec![
                upsert("c10", "acme", "a", json!({"v": 4})),
                upsert("c11", "acme", "b", json!({"v": 4})),
                upsert("c12", "acme", "e", json!({"v": 1})),
                upsert("c13", "globex", "y", json!({"v": 1})),
                upsert("c14", "globex", "x", json!({"v": 1})),
                upsert("c15", "acme", "c", json!({"v": 2})),
            ],
        ),
        16,
    )
    .await;
    assert_eq!(
        recreated.outcomes,
        vec![
            applied(4),
            applied(4),
            applied(4),
            applied(3),
            applied(3),
            applied(2)
        ],
        "floors are per tenant, and existing records just continue"
    );
    assert_eq!(get(store, "acme", "a").await.unwrap().version, 4);
    assert_eq!(
        page(&feed(store, "acme", 10, Some(0), 10).await),
        [
            ("a", 10, 4, false),
            ("b", 11, 4, false),
            ("e", 12, 4, false),
            ("c", 15, 2, false)
        ]
    );
    let fresh = store
        .apply(
            &ds("other"),
            0,
            &at(2, vec![upsert("o2", "acme", "n", json!({}))]),
            3,
        )
        .await
        .unwrap();
    assert_eq!(
        fresh.outcomes,
        vec![applied(1)],
        "floors are per dataset too"
    );

    // Purging a lower version later never lowers the floor; the horizon only rises.
    assert_eq!(purge(store, Utc::now(), 100).await, 1, "d's tombstone");
    let f = feed(store, "acme", 0, Some(0), 10).await;
    assert_eq!(f.horizon, 10);
    assert_eq!(f.end, 16);
    assert_eq!(
        one(store, 16, upsert("c16", "acme", "f", json!({}))).await,
        applied(4)
    );
    assert_eq!(
        one(store, 17, upsert("c17", "acme", "d", json!({}))).await,
        applied(4)
    );
}

async fn tenant_ends_lists_every_tenant(store: &dyn MasterStore) {
    assert!(ends(store, "items").await.is_empty());
    apply_ok(
        store,
        "items",
        &at(
            0,
            vec![
                upsert("c0", "b2", "x", json!({})),
                upsert("c1", "a10", "x", json!({})),
                upsert("c2", "a1", "x", json!({})),
                upsert("c3", "a2", "x", json!({})),
                upsert("c4", "b2", "y", json!({})),
                delete("c5", "a1", "x"),
                upsert("c6", "a10", "x", json!({})),
            ],
        ),
        20,
    )
    .await;
    store
        .apply(
            &ds("other"),
            0,
            &at(40, vec![upsert("o", "zz", "x", json!({}))]),
            41,
        )
        .await
        .unwrap();
    // Byte order; a tombstone counts; an unchanged write (c6) and the position do not.
    assert_eq!(
        ends(store, "items").await,
        [
            ("a1".to_owned(), 6),
            ("a10".to_owned(), 2),
            ("a2".to_owned(), 4),
            ("b2".to_owned(), 5)
        ]
    );
    assert_eq!(ends(store, "other").await, [("zz".to_owned(), 41)]);
    for (t, end) in ends(store, "items").await {
        assert_eq!(
            feed(store, &t, 0, Some(0), 1).await.end,
            end,
            "the end tenant_feed reports"
        );
    }
    assert!(ends(store, "nothing").await.is_empty());
}

fn subscription(name: &str, datasets: &[&str], tenants: Option<&[&str]>, at: i64) -> Subscription {
    Subscription {
        name: SubscriptionName::new(name).unwrap(),
        datasets: datasets.iter().map(|d| ds(d)).collect(),
        tenants: match tenants {
            None => TenantSelection::All,
            Some(ts) => TenantSelection::Only(ts.iter().map(|t| tenant(t)).collect()),
        },
        created_at: micros(at),
    }
}

fn micros(at: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at).unwrap()
}

fn progress(dataset: &str, t: &str, next_seq: u64, live_from: u64, acked_at: i64) -> Progress {
    Progress {
        dataset: ds(dataset),
        tenant: tenant(t),
        position: FeedPosition {
            next_seq,
            live_from,
        },
        acked_at: micros(acked_at),
    }
}

async fn subscriptions_crud_and_acks(store: &dyn MasterStore) {
    let name = SubscriptionName::new("billing").unwrap();
    let t1 = 1_900_000_000_000_001;
    assert!(store.subscriptions().await.unwrap().is_empty());
    assert_eq!(store.subscription(&name).await.unwrap(), None);
    assert!(!store.delete_subscription(&name).await.unwrap());
    assert!(
        !store
            .ack(&name, micros(t1), &progress("items", "acme", 1, 0, 5))
            .await
            .unwrap(),
        "no such subscription"
    );

    let created = subscription("billing", &["items", "orders"], None, t1);
    assert_eq!(
        store.put_subscription(&created).await.unwrap(),
        (created.clone(), true)
    );
    assert_eq!(
        store.subscription(&name).await.unwrap(),
        Some(created.clone())
    );
    assert!(store.subscription_progress(&name).await.unwrap().is_empty());

    // Acks, in any order, come back ordered by dataset and tenant; an ack replaces the last
    // one, even with a lower position.
    let acks = [
        progress("orders", "acme", 7, 3, 10),
        progress("items", "globex", 2, 0, 11),
        progress("items", "acme", 9, 9, 12),
        progress("items", "acme", 4, 1, 13),
    ];
    for p in &acks {
        assert!(store.ack(&name, micros(t1), p).await.unwrap());
    }
    let expected = vec![acks[3].clone(), acks[1].clone(), acks[0].clone()];
    assert_eq!(store.subscription_progress(&name).await.unwrap(), expected);
    // A cursor of another incarnation of the subscription is refused.
    assert!(
        !store
            .ack(&name, micros(t1 + 1), &progress("items", "acme", 50, 0, 14))
            .await
            .unwrap()
    );
    assert_eq!(store.subscription_progress(&name).await.unwrap(), expected);

    // An update changes datasets and tenants, and keeps created_at and progress.
    let updated = subscription("billing", &["items"], Some(&["acme", "globex"]), t1 + 500);
    let (stored, was_created) = store.put_subscription(&updated).await.unwrap();
    assert!(!was_created);
    let kept = Subscription {
        created_at: micros(t1),
        ..updated.clone()
    };
    assert_eq!(stored, kept);
    assert_eq!(store.subscription(&name).await.unwrap(), Some(kept.clone()));
    assert_eq!(store.subscription_progress(&name).await.unwrap(), expected);
    assert!(
        !store
            .ack(
                &name,
                micros(t1 + 500),
                &progress("items", "acme", 1, 1, 15)
            )
            .await
            .unwrap(),
        "an update does not change which cursors are valid"
    );
    assert!(
        store
            .ack(&name, micros(t1), &progress("items", "acme", 5, 1, 16))
            .await
            .unwrap()
    );

    // Listing is by name; subscriptions keep their own progress.
    let other = subscription("audit", &["orders"], Some(&["acme"]), 42);
    assert!(store.put_subscription(&other).await.unwrap().1);
    assert_eq!(
        store.subscriptions().await.unwrap(),
        vec![other.clone(), kept]
    );
    assert!(
        store
            .ack(
                &other.name,
                micros(42),
                &progress("orders", "acme", 1, 1, 17)
            )
            .await
            .unwrap()
    );
    assert_eq!(store.subscription_progress(&name).await.unwrap().len(), 3);

    // Delete removes the subscription and its progress, and nothing of another one.
    assert!(store.delete_subscription(&name).await.unwrap());
    assert_eq!(store.subscription(&name).await.unwrap(), None);
    assert!(store.subscription_progress(&name).await.unwrap().is_empty());
    assert!(!store.delete_subscription(&name).await.unwrap());
    assert!(
        !store
            .ack(&name, micros(t1), &progress("items", "acme", 6, 1, 18))
            .await
            .unwrap(),
        "a deleted subscription takes no acks"
    );
    assert_eq!(store.subscriptions().await.unwrap(), vec![other.clone()]);
    assert_eq!(
        store.subscription_progress(&other.name).await.unwrap(),
        vec![progress("orders", "acme", 1, 1, 17)]
    );

    // Recreated under the same name: a new subscription, which old cursors do not fit.
    let again = subscription("billing", &["items"], None, t1 + 1000);
    assert_eq!(
        store.put_subscription(&again).await.unwrap(),
        (again.clone(), true)
    );
    assert!(store.subscription_progress(&name).await.unwrap().is_empty());
    assert!(
        !store
            .ack(&name, micros(t1), &progress("items", "acme", 7, 1, 19))
            .await
            .unwrap()
    );
    assert!(
        store
            .ack(
                &name,
                micros(t1 + 1000),
                &progress("items", "acme", 7, 1, 19)
            )
            .await
            .unwrap()
    );
}

async fn feeds_never_mix_tenants_and_datasets(store: &dyn MasterStore) {
    let (a, b) = (ds("alpha"), ds("beta"));
    for d in [&a, &b] {
        let batch = at(
            0,
            vec![
                upsert("c1", "acme", "1", json!({"who": format!("{d}/acme")})),
                upsert("c2", "acme2", "1", json!({"who": format!("{d}/acme2")})),
                delete("c3", "acme2", "1"),
            ],
        );
        store.apply(d, 0, &batch, 3).await.unwrap();
    }
    store
        .apply(&a, 0, &at(3, vec![upsert("c4", "acme", "2", json!({}))]), 4)
        .await
        .unwrap();
    let read = |d: &DatasetName, t: &str| {
        let (d, t) = (d.clone(), tenant(t));
        async move { store.tenant_feed(&d, &t, 0, Some(0), 100).await.unwrap() }
    };
    let alpha_acme = read(&a, "acme").await;
    assert_eq!(page(&alpha_acme), [("1", 0, 1, false), ("2", 3, 1, false)]);
    assert!(
        alpha_acme
            .records
            .iter()
            .all(|r| r.record.tenant.as_str() == "acme")
    );
    assert_eq!(alpha_acme.end, 4);
    let beta_acme = read(&b, "acme").await;
    assert_eq!(page(&beta_acme), [("1", 0, 1, false)]);
    assert_eq!(
        beta_acme.records[0].record.data,
        Some(obj(json!({"who": "beta/acme"})))
    );
    assert_eq!(beta_acme.end, 1);
    assert_eq!(page(&read(&a, "acme2").await), [("1", 2, 2, true)]);
    assert!(read(&a, "acm").await.records.is_empty());

    // Purging one dataset leaves the other's tombstones and horizons alone.
    assert_eq!(
        store.purge_tombstones(&a, Utc::now(), 100).await.unwrap(),
        1
    );
    assert_eq!(read(&a, "acme2").await.horizon, 3);
    assert_eq!(read(&a, "acme").await.horizon, 0);
    let beta = read(&b, "acme2").await;
    assert_eq!((page(&beta), beta.horizon), (vec![("1", 2, 2, true)], 0));
    assert_eq!(
        ends(store, "alpha").await,
        [("acme".to_owned(), 4), ("acme2".to_owned(), 3)]
    );
    assert_eq!(
        ends(store, "beta").await,
        [("acme".to_owned(), 1), ("acme2".to_owned(), 3)]
    );
}

/// Schema version 2 gives records written before it their rank within their tenant (by id) as
/// their seq: distinct, ordered, and below any offset applied later.
async fn legacy_records_get_ranked_seqs(store: &dyn MasterStore) {
    let f = feed(store, "acme", 0, Some(0), 10).await;
    assert_eq!(
        page(&f),
        [
            ("a", 0, 1, false),
            ("b", 1, 2, false),
            ("c", 2, 3, true),
            ("é", 3, 1, false)
        ]
    );
    assert_eq!(f.end, 4);
    assert_eq!(
        ends(store, "items").await,
        [("acme".to_owned(), 4), ("globex".to_owned(), 1)]
    );
    let position = store.position(&ds("items"), 0).await.unwrap();
    let moved = apply_ok(
        store,
        "items",
        &at(
            position,
            vec![upsert("n1", "acme", "a", json!({"v": "new"}))],
        ),
        position + 1,
    )
    .await;
    assert_eq!(moved.outcomes, vec![applied(2)]);
    assert_eq!(
        page(&feed(store, "acme", 0, Some(0), 10).await),
        [
            ("b", 1, 2, false),
            ("c", 2, 3, true),
            ("é", 3, 1, false),
            ("a", position, 2, false)
        ]
    );
}

const LEGACY: &[common::v1::LegacyRecord] = &[
    common::v1::LegacyRecord {
        tenant: "acme",
        id: "é",
        version: 1,
        data: Some(r#"{"e": 1}"#),
    },
    common::v1::LegacyRecord {
        tenant: "acme",
        id: "b",
        version: 2,
        data: Some("{}"),
    },
    common::v1::LegacyRecord {
        tenant: "globex",
        id: "x",
        version: 1,
        data: Some("{}"),
    },
    common::v1::LegacyRecord {
        tenant: "acme",
        id: "a",
        version: 1,
        data: Some(r#"{"v": 1}"#),
    },
    common::v1::LegacyRecord {
        tenant: "acme",
        id: "c",
        version: 3,
        data: None,
    },
];

/// A writer applies batches of one tenant while a reader pages through its feed from 0. Once
/// the reader has caught up, what it holds (each key at its latest seq) is exactly the store.
async fn feed_pages_miss_no_write_under_concurrent_applies(store: Arc<dyn MasterStore>) {
    const BATCHES: u64 = 40;
    const BATCH: u64 = 6;
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, done) = (Arc::clone(&store), Arc::clone(&done));
        tokio::spawn(async move {
            let mut rng = SplitMix::new(7);
            for b in 0..BATCHES {
                let changes: Vec<Change> = (0..BATCH)
                    .map(|i| {
                        let n = b * BATCH + i;
                        let t = ["acme", "globex"][rng.below(2) as usize];
                        let id = format!("k{}", rng.below(8));
                        match rng.below(3) {
                            0 => delete(&format!("c{n}"), t, &id),
                            _ => upsert(&format!("c{n}"), t, &id, json!({"n": n})),
                        }
                    })
                    .collect();
                let batch = at(b * BATCH, changes);
                store
                    .apply(&ds("items"), 0, &batch, (b + 1) * BATCH)
                    .await
                    .unwrap();
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut seen: BTreeMap<String, (u64, Record)> = BTreeMap::new();
    let mut next = 0;
    loop {
        let finished = done.load(Ordering::SeqCst);
        let f = store
            .tenant_feed(&ds("items"), &tenant("acme"), next, Some(0), 3)
            .await
            .unwrap();
        for r in &f.records {
            assert!(r.seq >= next, "ordered by seq, from `from` on");
            assert!(r.seq < f.end);
            next = r.seq + 1;
            seen.insert(r.record.id.to_string(), (r.seq, r.record.clone()));
        }
        if f.records.is_empty() {
            // Nothing in [next, end): every later write lands at or above the end.
            next = next.max(f.end);
            if finished {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    writer.await.unwrap();
    let stored = scan_all(&*store, &ds("items"), &tenant("acme"), 100).await;
    let held: Vec<Record> = seen.into_values().map(|(_, r)| r).collect();
    assert_eq!(held, stored);
}

/// Purges run while a writer deletes and recreates a few keys: every version the writer is
/// told is above the last one it was told for that key, whichever order the purges and
/// applies interleave in.
async fn versions_never_go_down_under_concurrent_purges(store: Arc<dyn MasterStore>) {
    const BATCHES: u64 = 60;
    const BATCH: u64 = 4;
    let done = Arc::new(AtomicBool::new(false));
    let purger = {
        let (store, done) = (Arc::clone(&store), Arc::clone(&done));
        tokio::spawn(async move {
            let mut purged = 0;
            while !done.load(Ordering::SeqCst) {
                purged += store
                    .purge_tombstones(&ds("items"), Utc::now(), 3)
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
            purged
        })
    };
    let mut rng = SplitMix::new(11);
    let mut last: HashMap<String, u64> = HashMap::new();
    for b in 0..BATCHES {
        let changes: Vec<Change> = (0..BATCH)
            .map(|i| {
                let n = b * BATCH + i;
                let id = format!("k{}", rng.below(3));
                if rng.below(2) == 0 {
                    delete(&format!("c{n}"), "acme", &id)
                } else {
                    upsert(&format!("c{n}"), "acme", &id, json!({"n": n}))
                }
            })
            .collect();
        let batch = at(b * BATCH, changes);
        let out = store
            .apply(&ds("items"), 0, &batch, (b + 1) * BATCH)
            .await
            .unwrap();
        for (logged, outcome) in batch.iter().zip(&out.outcomes) {
            if let tenantsync_core::Outcome::Applied { version } = outcome {
                let key = logged.change.id.to_string();
                let before = last.insert(key.clone(), *version).unwrap_or(0);
                assert!(
                    *version > before,
                    "{key} went from version {before} to {version} at offset {}",
                    logged.offset
                );
            }
        }
    }
    done.store(true, Ordering::SeqCst);
    let purged = purger.await.unwrap();
    eprintln!("{purged} tombstones purged during the run");
    for (key, version) in &last {
        let current = get(&*store, "acme", key).await;
        assert!(
            current.as_ref().is_none_or(|r| r.version == *version),
            "{key}: last told {version}, stored {current:?}"
        );
    }
}

async fn tokens_are_stored_by_hash_and_revoked(store: &dyn MasterStore) {
    let token = |name: &str, hash: &str, scopes: &[&str]| StoredToken {
        name: TokenName::new(name).unwrap(),
        hash: hash.to_owned(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        created_at: DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap(),
    };
    let ci = token("ci", &"a".repeat(64), &["write:inventory:*", "read:*:acme"]);
    let admin = token("admin", &"b".repeat(64), &["admin"]);
    assert!(store.tokens().await.unwrap().is_empty());
    assert!(store.create_token(&ci).await.unwrap());
    assert!(store.create_token(&admin).await.unwrap());
    assert!(
        !store
            .create_token(&token("ci", &"c".repeat(64), &["admin"]))
            .await
            .unwrap(),
        "a name is taken once"
    );
    assert_eq!(
        store.tokens().await.unwrap(),
        vec![admin.clone(), ci.clone()]
    );
    assert_eq!(
        store.token_by_hash(&ci.hash).await.unwrap(),
        Some(ci.clone())
    );
    assert_eq!(store.token_by_hash(&"c".repeat(64)).await.unwrap(), None);
    assert_eq!(
        store.token_by_hash(&ci.hash.to_uppercase()).await.unwrap(),
        None,
        "hashes compare exactly"
    );

    assert!(store.revoke_token(&ci.name).await.unwrap());
    assert!(!store.revoke_token(&ci.name).await.unwrap());
    assert_eq!(store.token_by_hash(&ci.hash).await.unwrap(), None);
    assert_eq!(store.tokens().await.unwrap(), vec![admin]);
    // The name is free again.
    assert!(store.create_token(&ci).await.unwrap());
}

fn audit(
    at: DateTime<Utc>,
    actor: &str,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> AuditEntry {
    AuditEntry {
        // Ignored by append_audit.
        seq: 999,
        at,
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        detail,
    }
}

async fn audit_log_appends_and_pages(store: &dyn MasterStore) {
    assert!(store.audit_log(0, 10).await.unwrap().is_empty());
    let t0 = DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap();
    let entries = [
        audit(
            t0 + chrono::Duration::nanoseconds(789),
            "ci",
            "token.created",
            "deploy",
            json!({"scopes": ["write:*:acme"], "nested": {"n": 1.5, "none": null}}),
        ),
        audit(
            t0,
            "jwt:alice",
            "subscription.deleted",
            "billing",
            json!({}),
        ),
        audit(
            t0,
            "cli",
            "erasure.started",
            "acme",
            json!({"why": "gdpr ✓ \"quoted\""}),
        ),
        audit(
            t0,
            "tenantsync",
            "erasure.finished",
            "acme",
            json!({"erased": 12}),
        ),
        audit(t0, "cli", "token.revoked", "deploy", json!({"n": u64::MAX})),
    ];
    let mut seqs = Vec::new();
    for e in &entries {
        seqs.push(store.append_audit(e).await.unwrap());
    }
    assert_eq!(seqs[0], 1, "seqs start at 1");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "increasing: {seqs:?}");

    let expected: Vec<AuditEntry> = entries
        .iter()
        .zip(&seqs)
        .map(|(e, &seq)| AuditEntry {
            seq,
            at: DateTime::from_timestamp_micros(e.at.timestamp_micros()).unwrap(),
            ..e.clone()
        })
        .collect();
    assert_eq!(expected[0].at, t0, "to the microsecond");
    assert_eq!(store.audit_log(0, 10).await.unwrap(), expected);
    assert_eq!(store.audit_log(0, 2).await.unwrap(), expected[..2]);
    assert_eq!(store.audit_log(seqs[1], 2).await.unwrap(), expected[2..4]);
    assert_eq!(store.audit_log(seqs[3], 2).await.unwrap(), expected[4..]);
    assert!(store.audit_log(seqs[4], 2).await.unwrap().is_empty());
    assert!(store.audit_log(0, 0).await.unwrap().is_empty(), "limit 0");
    assert!(store.audit_log(u64::MAX, 10).await.unwrap().is_empty());
}

async fn secrets_are_created_once(store: &dyn MasterStore) {
    let first: Vec<u8> = (0..=255).collect();
    assert_eq!(store.secret("cursor-hmac", &first).await.unwrap(), first);
    assert_eq!(
        store
            .secret("cursor-hmac", b"another candidate")
            .await
            .unwrap(),
        first,
        "a stored secret is never replaced"
    );
    assert_eq!(store.secret("other", &[0, 0, 7]).await.unwrap(), [0, 0, 7]);
    assert_eq!(store.secret("cursor-hmac", &[]).await.unwrap(), first);
}

/// Several instances starting at once each offer their own secret; all end up with one.
async fn secret_racers_agree(store: Arc<dyn MasterStore>) {
    const RACERS: u8 = 8;
    for round in 0..5 {
        let name = format!("race-{round}");
        let barrier = Arc::new(tokio::sync::Barrier::new(usize::from(RACERS)));
        let tasks: Vec<_> = (0..RACERS)
            .map(|i| {
                let (store, barrier, name) =
                    (Arc::clone(&store), Arc::clone(&barrier), name.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.secret(&name, &[i; 32]).await.expect("secret")
                })
            })
            .collect();
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.expect("racer"));
        }
        assert!(
            got.iter().all(|g| *g == got[0]),
            "round {round}: racers got different secrets"
        );
        assert!(got[0].len() == 32 && got[0].iter().all(|&b| b == got[0][0] && b < RACERS));
        assert_eq!(store.secret(&name, b"late").await.unwrap(), got[0]);
    }
}

const fn erasing(current_version: u64) -> Outcome {
    Outcome::Rejected {
        reason: RejectReason::TenantErasing,
        current_version,
    }
}

fn erasure_id(rest: &str) -> String {
    format!("{}{rest}", ChangeId::ERASURE_PREFIX)
}

async fn apply_to(
    store: &dyn MasterStore,
    dataset: &str,
    first: u64,
    changes: Vec<Change>,
) -> Vec<Outcome> {
    let next = first + changes.len() as u64;
    apply_ok(store, dataset, &at(first, changes), next)
        .await
        .outcomes
}

async fn outcome_of(store: &dyn MasterStore, dataset: &str, t: &str, c: &str) -> Option<Outcome> {
    store
        .outcome(&ds(dataset), &tenant(t), &cid(c))
        .await
        .expect("outcome")
        .map(|o| o.outcome)
}

async fn record_in(store: &dyn MasterStore, dataset: &str, t: &str, id: &str) -> Option<Record> {
    store
        .get(&ds(dataset), &tenant(t), &eid(id))
        .await
        .expect("get")
}

fn truncated(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap()
}

async fn erasure_lifecycle(store: &dyn MasterStore) {
    let acme = tenant("acme");
    assert_eq!(
        apply_to(
            store,
            "items",
            0,
            vec![
                upsert("c0", "acme", "a", json!({"v": 1})),
                upsert("c1", "acme", "a", json!({"v": 2})),
                upsert("c2", "acme", "b", json!({"v": 1})),
                upsert("c3", "globex", "g", json!({"v": 1})),
                delete("c4", "acme", "b"),
            ],
        )
        .await,
        [applied(1), applied(2), applied(1), applied(1), applied(2)]
    );
    apply_to(
        store,
        "other",
        0,
        vec![
            upsert("o0", "acme", "x", json!({})),
            upsert("o1", "globex", "y", json!({})),
        ],
    )
    .await;

    // Nothing runs yet: finishing does nothing.
    assert_eq!(store.erasure(&acme).await.unwrap(), None);
    assert!(store.running_erasures().await.unwrap().is_empty());
    let early = Utc::now();
    assert_eq!(store.finish_erasure(&acme, early).await.unwrap(), 0);
    assert_eq!(store.erasure(&acme).await.unwrap(), None);
    assert!(record_in(store, "items", "acme", "a").await.is_some());

    let t0 = DateTime::from_timestamp_micros(1_900_000_000_000_001).unwrap()
        + chrono::Duration::nanoseconds(999);
    let (started, fresh) = store.start_erasure(&acme, t0).await.unwrap();
    let running = Erasure {
        tenant: acme.clone(),
        started_at: truncated(t0),
        finished_at: None,
        erased: 0,
    };
    assert!(fresh);
    assert_eq!(started, running);
    let (again, fresh) = store
        .start_erasure(&acme, t0 + chrono::Duration::hours(1))
        .await
        .unwrap();
    assert!(!fresh, "one runs already");
    assert_eq!(again, running, "the running one, as it started");

    store.erasure_progress(&acme, 3).await.unwrap();
    let running = Erasure {
        erased: 3,
        ..running
    };
    assert_eq!(store.erasure(&acme).await.unwrap(), Some(running.clone()));
    assert_eq!(
        store.running_erasures().await.unwrap(),
        std::slice::from_ref(&running)
    );
    store.erasure_progress(&tenant("globex"), 5).await.unwrap();
    assert_eq!(
        store.erasure(&tenant("globex")).await.unwrap(),
        None,
        "progress of no erasure is a no-op"
    );

    // While it runs: the tenant's ordinary changes are refused and the refusals stored; the
    // erasure's own apply; other tenants are unaffected; a change applied before still reports
    // its first outcome.
    let during = vec![
        upsert("u5", "acme", "a", json!({"v": 9})),
        upsert("u6", "acme", "new", json!({})),
        upsert("u7", "globex", "g", json!({"v": 2})),
        delete(&erasure_id("items:a"), "acme", "a"),
        delete(&erasure_id("items:b"), "acme", "b"),
        upsert("c0", "acme", "a", json!({"v": 1})),
        upsert("tenantsync:not-erasure", "acme", "a", json!({"v": 3})),
        patch("u8", "acme", "a", json!({"v": 4})),
    ];
    let expected = [
        erasing(2),
        erasing(0),
        applied(2),
        applied(3),
        unchanged(2),
        applied(1),
        erasing(0),
        erasing(0),
    ];
    assert_eq!(apply_to(store, "items", 5, during.clone()).await, expected);
    assert_eq!(
        apply_to(store, "items", 5, during).await,
        expected,
        "a redelivery reports the same"
    );
    assert_eq!(
        outcome_of(store, "items", "acme", "u5").await,
        Some(erasing(2))
    );
    assert_eq!(
        outcome_of(store, "items", "acme", "u6").await,
        Some(erasing(0))
    );
    assert_eq!(record_in(store, "items", "acme", "new").await, None);
    let a = record_in(store, "items", "acme", "a").await.unwrap();
    assert_eq!((a.version, a.is_deleted()), (3, true));
    assert_eq!(
        record_in(store, "items", "globex", "g")
            .await
            .unwrap()
            .version,
        2
    );

    // A live record left in another dataset: nothing is finished and nothing changes.
    assert_eq!(store.finish_erasure(&acme, Utc::now()).await.unwrap(), 1);
    assert_eq!(store.erasure(&acme).await.unwrap(), Some(running.clone()));
    assert!(record_in(store, "items", "acme", "a").await.is_some());
    assert_eq!(
        outcome_of(store, "items", "acme", "u5").await,
        Some(erasing(2))
    );
    assert_eq!(
        apply_to(
            store,
            "other",
            2,
            vec![upsert("o2", "acme", "x", json!({"v": 1}))]
        )
        .await,
        [erasing(1)],
        "still erasing"
    );
    assert_eq!(
        apply_to(
            store,
            "other",
            3,
            vec![delete(&erasure_id("other:x"), "acme", "x")]
        )
        .await,
        [applied(2)]
    );
    let before = feed(store, "acme", 0, Some(0), 10).await;
    assert_eq!(page(&before), [("b", 4, 2, true), ("a", 8, 3, true)]);
    assert_eq!((before.end, before.horizon), (9, 0));

    let t1 = Utc::now();
    assert_eq!(store.finish_erasure(&acme, t1).await.unwrap(), 0);
    let finished = Erasure {
        finished_at: Some(truncated(t1)),
        ..running.clone()
    };
    assert_eq!(store.erasure(&acme).await.unwrap(), Some(finished.clone()));
    assert!(store.running_erasures().await.unwrap().is_empty());

    // Every row of the tenant is gone, in every dataset.
    for dataset in ["items", "other"] {
        assert!(
            scan_all(store, &ds(dataset), &acme, 10).await.is_empty(),
            "{dataset}"
        );
    }
    // Feeds answer an old position Gone: the horizon is the tenant's end.
    let after = feed(store, "acme", 0, None, 10).await;
    assert!(after.records.is_empty());
    assert_eq!((after.end, after.horizon), (9, 9));
    assert!(FeedPosition::default().is_behind(after.horizon));
    let other = store
        .tenant_feed(&ds("other"), &acme, 0, None, 10)
        .await
        .unwrap();
    assert!(other.records.is_empty());
    assert_eq!((other.end, other.horizon), (4, 4));
    assert_eq!(
        ends(store, "items").await,
        [("acme".to_owned(), 9), ("globex".to_owned(), 8)]
    );
    // Its stored outcomes are gone; other tenants' records and outcomes stay.
    for (dataset, c) in [
        ("items", "c0"),
        ("items", "c4"),
        ("items", "u5"),
        ("items", &*erasure_id("items:a")),
        ("items", "tenantsync:not-erasure"),
        ("other", "o0"),
        ("other", "o2"),
        ("other", &*erasure_id("other:x")),
    ] {
        assert_eq!(
            outcome_of(store, dataset, "acme", c).await,
            None,
            "{dataset} {c}"
        );
    }
    assert_eq!(
        outcome_of(store, "items", "globex", "c3").await,
        Some(applied(1))
    );
    assert_eq!(
        outcome_of(store, "items", "globex", "u7").await,
        Some(applied(2))
    );
    assert_eq!(
        outcome_of(store, "other", "globex", "o1").await,
        Some(applied(1))
    );
    assert!(record_in(store, "items", "globex", "g").await.is_some());
    assert!(record_in(store, "other", "globex", "y").await.is_some());

    // Finishing again does nothing.
    assert_eq!(store.finish_erasure(&acme, Utc::now()).await.unwrap(), 0);
    assert_eq!(store.erasure(&acme).await.unwrap(), Some(finished));

    // The tenant takes changes again, and versions continue above what was erased.
    assert_eq!(
        apply_to(
            store,
            "items",
            13,
            vec![
                upsert("n0", "acme", "a", json!({})),
                upsert("n1", "acme", "fresh", json!({})),
            ],
        )
        .await,
        [applied(4), applied(4)]
    );
    assert_eq!(
        apply_to(
            store,
            "other",
            4,
            vec![upsert("n2", "acme", "x", json!({}))]
        )
        .await,
        [applied(3)]
    );

    // Starting again after it finished restarts it.
    let t2 = t0 + chrono::Duration::days(1);
    let (restarted, fresh) = store.start_erasure(&acme, t2).await.unwrap();
    assert!(fresh);
    let restarted_expected = Erasure {
        tenant: acme.clone(),
        started_at: truncated(t2),
        finished_at: None,
        erased: 0,
    };
    assert_eq!(restarted, restarted_expected);
    assert_eq!(
        store.running_erasures().await.unwrap(),
        [restarted_expected]
    );
    assert_eq!(
        apply_to(
            store,
            "items",
            15,
            vec![upsert("n3", "acme", "a", json!({"v": 1}))]
        )
        .await,
        [erasing(4)]
    );
    assert_eq!(store.finish_erasure(&acme, Utc::now()).await.unwrap(), 3);
}

/// Applies of a tenant race the finish of its erasure, on several partitions at once. An apply
/// told `tenant_erasing` ran while the erasure did, so its stored refusal must be gone once the
/// erasure finished; an apply that ran after is stored as usual. A refusal left behind means a
/// batch that saw the erasure running committed after the finish.
async fn erasure_finish_racing_applies_leaves_no_rejection(store: Arc<dyn MasterStore>) {
    const PARTITIONS: u32 = 4;
    const BATCHES: u64 = 30;
    const BATCH: u64 = 3;
    let acme = tenant("acme");
    store.start_erasure(&acme, Utc::now()).await.unwrap();
    // Everyone starts together, the finisher after each applier's first batch.
    let first_done = Arc::new(tokio::sync::Barrier::new(PARTITIONS as usize + 1));
    let tasks: Vec<_> = (0..PARTITIONS)
        .map(|p| {
            let (store, first_done) = (Arc::clone(&store), Arc::clone(&first_done));
            tokio::spawn(async move {
                let mut told = Vec::new();
                for b in 0..BATCHES {
                    let changes: Vec<LoggedChange> = (0..BATCH)
                        .map(|i| LoggedChange {
                            offset: b * BATCH + i,
                            change: upsert(
                                &format!("p{p}-{b}-{i}"),
                                "acme",
                                &format!("k{p}-{b}-{i}"),
                                json!({"b": b}),
                            ),
                        })
                        .collect();
                    let out = store
                        .apply(&ds("items"), p, &changes, (b + 1) * BATCH)
                        .await
                        .expect("apply");
                    for (c, o) in changes.iter().zip(out.outcomes) {
                        told.push((c.change.change_id.clone(), o));
                    }
                    if b == 0 {
                        first_done.wait().await;
                    }
                }
                told
            })
        })
        .collect();
    first_done.wait().await;
    assert_eq!(store.finish_erasure(&acme, Utc::now()).await.unwrap(), 0);
    let (mut refused, mut applied_after) = (0, 0);
    for t in tasks {
        for (change_id, told) in t.await.expect("applier") {
            let stored = store
                .outcome(&ds("items"), &acme, &change_id)
                .await
                .unwrap()
                .map(|o| o.outcome);
            match told {
                Outcome::Rejected {
                    reason: RejectReason::TenantErasing,
                    ..
                } => {
                    refused += 1;
                    assert_eq!(stored, None, "{change_id}: refusal outlived the erasure");
                }
                told => {
                    applied_after += 1;
                    assert_eq!(told, applied(1), "{change_id}");
                    assert_eq!(stored, Some(told), "{change_id}");
                }
            }
        }
    }
    eprintln!("{refused} changes refused during the erasure, {applied_after} applied after");
    assert!(
        refused >= u64::from(PARTITIONS * BATCH as u32),
        "first batches were refused"
    );
    assert!(applied_after > 0, "later changes were applied");
}

fn claim(epoch: u64, checkpoint: Option<&[u8]>) -> Option<BatcherClaim> {
    Some(BatcherClaim {
        epoch,
        checkpoint: checkpoint.map(<[u8]>::to_vec),
    })
}

fn lease(batch_id: &str, partition: u32, offset: u64, expires_at_ms: i64) -> BatchLease {
    BatchLease {
        batch_id: batch_id.to_owned(),
        partition,
        offset,
        expires_at_ms,
    }
}

async fn batcher_claim_lifecycle(store: &dyn MasterStore) {
    let items = ds("items");
    assert!(
        !store.renew_batcher(&items, 1, 0, 500, None).await.unwrap(),
        "nothing to renew before the first claim"
    );
    assert_eq!(
        store.claim_batcher(&items, "a", 1_000, 500).await.unwrap(),
        claim(1, None),
        "the first claim is epoch 1, without a checkpoint"
    );
    // a's lease runs until 1500.
    assert_eq!(
        store.claim_batcher(&items, "b", 1_200, 500).await.unwrap(),
        None
    );
    assert_eq!(
        store.claim_batcher(&items, "b", 1_499, 500).await.unwrap(),
        None
    );
    let cp1: Vec<u8> = (0..=255).collect();
    assert!(
        store
            .renew_batcher(&items, 1, 1_400, 500, Some(&cp1))
            .await
            .unwrap()
    );
    // Renewed until 1900, with a checkpoint of every byte value.
    assert_eq!(
        store.claim_batcher(&items, "b", 1_899, 500).await.unwrap(),
        None
    );
    assert_eq!(
        store.claim_batcher(&items, "b", 1_900, 500).await.unwrap(),
        claim(2, Some(&cp1)),
        "another owner takes the claim once the lease expired, keeping the checkpoint"
    );

    // a was fenced: its renewals change nothing, neither the lease nor the checkpoint.
    assert!(
        !store
            .renew_batcher(&items, 1, 1_950, 10_000, Some(b"stale"))
            .await
            .unwrap()
    );
    assert_eq!(
        store.claim_batcher(&items, "c", 2_399, 500).await.unwrap(),
        None
    );
    assert_eq!(
        store.claim_batcher(&items, "c", 2_400, 500).await.unwrap(),
        claim(3, Some(&cp1)),
        "b's lease still ended at 2400, and the stale checkpoint was not stored"
    );

    // A lease that expired can be renewed while nobody took the claim over.
    assert!(
        store
            .renew_batcher(&items, 3, 9_000, 500, None)
            .await
            .unwrap()
    );
    assert_eq!(
        store.claim_batcher(&items, "d", 9_499, 500).await.unwrap(),
        None
    );
    // The same owner (restarted) takes its own claim at once, with a new epoch.
    assert_eq!(
        store.claim_batcher(&items, "c", 9_100, 500).await.unwrap(),
        claim(4, Some(&cp1)),
        "renewing without a checkpoint kept it"
    );
    assert!(
        !store
            .renew_batcher(&items, 3, 9_100, 500, None)
            .await
            .unwrap()
    );
    assert!(
        store
            .renew_batcher(&items, 4, 9_200, 500, Some(b"cp2"))
            .await
            .unwrap()
    );
    assert_eq!(
        store.claim_batcher(&items, "c", 9_300, 500).await.unwrap(),
        claim(5, Some(b"cp2"))
    );
    assert!(
        store
            .renew_batcher(&items, 5, 9_300, 500, Some(&[]))
            .await
            .unwrap()
    );
    assert_eq!(
        store.claim_batcher(&items, "d", 9_800, 500).await.unwrap(),
        claim(6, Some(&[])),
        "an empty checkpoint is stored as empty, not as none"
    );
    assert!(
        matches!(
            store
                .renew_batcher(&items, u64::MAX, 9_800, 500, None)
                .await,
            Err(StoreError::OutOfRange { .. })
        ),
        "an epoch beyond the store's integers is an error, not a wrap"
    );
}

/// Several instances start their batcher of a dataset at once: exactly one gets the claim.
async fn batcher_claim_racers_one_wins(store: Arc<dyn MasterStore>) {
    const RACERS: usize = 8;
    for (round, now) in [(1u64, 1_000i64), (2, 2_000), (3, 3_000)] {
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
        let tasks: Vec<_> = (0..RACERS)
            .map(|i| {
                let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    let claim = store
                        .claim_batcher(&ds("items"), &format!("owner-{i}"), now, 1_000)
                        .await
                        .expect("claim");
                    (i, claim)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            if let (i, Some(claim)) = t.await.expect("racer") {
                winners.push((i, claim));
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let (winner, won) = winners.pop().expect("one winner");
        assert_eq!(won.epoch, round, "round {round}");
        assert!(
            store
                .renew_batcher(&ds("items"), round, now, 1_000, None)
                .await
                .unwrap(),
            "round {round}: owner-{winner} holds the claim"
        );
        // Everyone else is refused while the winner's lease (until now + 1000) runs.
        for i in (0..RACERS).filter(|&i| i != winner) {
            assert_eq!(
                store
                    .claim_batcher(&ds("items"), &format!("owner-{i}"), now + 999, 1_000)
                    .await
                    .unwrap(),
                None
            );
        }
    }
}

async fn dispatch(store: &dyn MasterStore, dataset: &str) -> Vec<(u32, u64)> {
    store.batch_dispatch(&ds(dataset)).await.expect("dispatch")
}

async fn batch_dispatch_moves_by_compare_and_set(store: &dyn MasterStore) {
    let items = ds("items");
    assert!(dispatch(store, "items").await.is_empty(), "no position yet");
    assert!(
        store
            .claim_batch(&items, 0, 0, 0, "b-0-0", 1_000)
            .await
            .unwrap()
    );
    assert_eq!(dispatch(store, "items").await, vec![(0, 1)]);
    assert_eq!(
        store.batch_lease(&items, "b-0-0").await.unwrap(),
        Some(lease("b-0-0", 0, 0, 1_000))
    );

    // A stale expected position is refused and changes nothing.
    assert!(
        !store
            .claim_batch(&items, 0, 0, 1, "b-0-1", 1_000)
            .await
            .unwrap()
    );
    assert_eq!(store.batch_lease(&items, "b-0-1").await.unwrap(), None);
    // A partition without a position is at 0: expecting anything else is stale, and it stays
    // absent.
    assert!(
        !store
            .claim_batch(&items, 1, 3, 3, "b-1-3", 1_000)
            .await
            .unwrap()
    );
    assert_eq!(dispatch(store, "items").await, vec![(0, 1)]);
    assert_eq!(store.batch_lease(&items, "b-1-3").await.unwrap(), None);

    // The batches log may have gaps: the position moves past the batch handed out.
    assert!(
        store
            .claim_batch(&items, 2, 0, 5, "b-2-5", 2_000)
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_batch(&items, 0, 1, 4, "b-0-4", 3_000)
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_batch(&items, 2, 6, 6, "b-2-6", 4_000)
            .await
            .unwrap()
    );
    assert_eq!(
        dispatch(store, "items").await,
        vec![(0, 5), (2, 7)],
        "sorted by partition"
    );
    assert_eq!(
        store.batch_lease(&items, "b-2-5").await.unwrap(),
        Some(lease("b-2-5", 2, 5, 2_000))
    );
    assert_eq!(
        store.batch_lease(&items, "b-0-4").await.unwrap(),
        Some(lease("b-0-4", 0, 4, 3_000))
    );

    // An offset below the expected position is the caller's bug.
    let err = store
        .claim_batch(&items, 0, 5, 4, "b-0-4-again", 1_000)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err:?}");
    assert!(!err.is_transient());
    // So is a batch id that is still outstanding.
    store
        .claim_batch(&items, 0, 5, 5, "b-0-4", 1_000)
        .await
        .expect_err("b-0-4 is outstanding");
    assert_eq!(dispatch(store, "items").await, vec![(0, 5), (2, 7)]);
    assert_eq!(
        store.batch_lease(&items, "b-0-4-again").await.unwrap(),
        None
    );
    assert_eq!(
        store.batch_lease(&items, "b-0-4").await.unwrap(),
        Some(lease("b-0-4", 0, 4, 3_000)),
        "the failed claims left the lease alone"
    );
    assert_eq!(store.batch_lease(&items, "b-0-404").await.unwrap(), None);
    assert!(
        store
            .claim_batch(&items, 0, 5, u64::MAX, "b-max", 1_000)
            .await
            .is_err(),
        "an offset beyond the store's integers is an error"
    );
    assert_eq!(dispatch(store, "items").await, vec![(0, 5), (2, 7)]);
}

/// HTTP workers on several instances race to hand out the next batch of a partition: each
/// position is taken by exactly one of them.
async fn batch_claim_racers_one_wins(store: Arc<dyn MasterStore>) {
    const RACERS: usize = 8;
    let mut position = 0;
    // Round 0 starts from a partition without a position, the others from a stored one.
    for round in 0..5u64 {
        let offset = position + round; // gaps of growing size
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
        let tasks: Vec<_> = (0..RACERS)
            .map(|i| {
                let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    let id = format!("r{round}-w{i}");
                    let won = store
                        .claim_batch(&ds("items"), 3, position, offset, &id, 1_000)
                        .await
                        .expect("claim batch");
                    (id, won)
                })
            })
            .collect();
        let mut winners = Vec::new();
        let mut ids = Vec::new();
        for t in tasks {
            let (id, won) = t.await.expect("racer");
            if won {
                winners.push(id.clone());
            }
            ids.push(id);
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        for id in &ids {
            let leased = store.batch_lease(&ds("items"), id).await.unwrap();
            if *id == winners[0] {
                assert_eq!(leased, Some(lease(id, 3, offset, 1_000)));
            } else {
                assert_eq!(leased, None, "round {round}: a loser's lease was stored");
            }
        }
        position = offset + 1;
        assert_eq!(dispatch(&*store, "items").await, vec![(3, position)]);
    }
}

async fn expired_batches_are_retaken_earliest_first(store: &dyn MasterStore) {
    let items = ds("items");
    assert_eq!(
        store.retake_expired_batch(&items, 0, 1).await.unwrap(),
        None
    );
    assert!(store.claim_batch(&items, 0, 0, 0, "a", 100).await.unwrap());
    assert!(store.claim_batch(&items, 0, 1, 1, "b", 50).await.unwrap());
    assert!(store.claim_batch(&items, 1, 0, 0, "c", 300).await.unwrap());

    assert_eq!(
        store.retake_expired_batch(&items, 49, 1_000).await.unwrap(),
        None,
        "nothing expired yet"
    );
    assert_eq!(
        store
            .retake_expired_batch(&items, 100, 1_000)
            .await
            .unwrap(),
        Some(lease("b", 0, 1, 1_000)),
        "the earliest expired first, with the new expiry"
    );
    assert_eq!(
        store
            .retake_expired_batch(&items, 100, 1_000)
            .await
            .unwrap(),
        Some(lease("a", 0, 0, 1_000)),
        "a lease expires at its expires_at_ms"
    );
    assert_eq!(
        store
            .retake_expired_batch(&items, 100, 1_000)
            .await
            .unwrap(),
        None,
        "c has not expired, a and b were extended"
    );
    assert_eq!(
        store.batch_lease(&items, "b").await.unwrap(),
        Some(lease("b", 0, 1, 1_000))
    );
    assert_eq!(
        store
            .retake_expired_batch(&items, 999, 2_000)
            .await
            .unwrap(),
        Some(lease("c", 1, 0, 2_000))
    );
    assert_eq!(
        store
            .retake_expired_batch(&items, 999, 2_000)
            .await
            .unwrap(),
        None,
        "not retaken again before the new expiry"
    );
    let mut at_1000 = Vec::new();
    while let Some(l) = store
        .retake_expired_batch(&items, 1_000, 3_000)
        .await
        .unwrap()
    {
        assert_eq!(l.expires_at_ms, 3_000);
        at_1000.push(l.batch_id);
        assert!(at_1000.len() <= 2, "{at_1000:?}");
    }
    at_1000.sort();
    assert_eq!(at_1000, ["a", "b"]);
    assert_eq!(
        store.batch_lease(&items, "c").await.unwrap(),
        Some(lease("c", 1, 0, 2_000))
    );
    assert_eq!(
        dispatch(store, "items").await,
        vec![(0, 2), (1, 1)],
        "retaking does not move the queue"
    );
}

/// Workers on several instances retake expired batches at once: each expired lease goes to
/// exactly one of them, and live ones to none.
async fn batch_retake_racers_take_each_lease_once(store: Arc<dyn MasterStore>) {
    const RACERS: usize = 8;
    const EXPIRED: u64 = 20;
    const LIVE: u64 = 3;
    let items = ds("items");
    for offset in 0..EXPIRED + LIVE {
        let expires = if offset < EXPIRED {
            // Expiries in no particular order, some equal.
            100 + i64::try_from(offset * 7 % 5).unwrap()
        } else {
            10_000
        };
        assert!(
            store
                .claim_batch(&items, 0, offset, offset, &format!("b{offset}"), expires)
                .await
                .unwrap()
        );
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let tasks: Vec<_> = (0..RACERS)
        .map(|_| {
            let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                let mut taken = Vec::new();
                while let Some(l) = store
                    .retake_expired_batch(&ds("items"), 1_000, 5_000)
                    .await
                    .expect("retake")
                {
                    taken.push(l);
                }
                taken
            })
        })
        .collect();
    let mut taken: HashMap<String, usize> = HashMap::new();
    let mut racers_with_some = 0;
    for t in tasks {
        let got = t.await.expect("racer");
        racers_with_some += usize::from(!got.is_empty());
        for l in got {
            assert_eq!(l.expires_at_ms, 5_000);
            assert_eq!(l.batch_id, format!("b{}", l.offset));
            *taken.entry(l.batch_id).or_default() += 1;
        }
    }
    eprintln!("{racers_with_some} of {RACERS} racers retook a lease");
    let expected: HashMap<String, usize> = (0..EXPIRED).map(|o| (format!("b{o}"), 1)).collect();
    assert_eq!(taken, expected, "each expired lease retaken exactly once");
    assert_eq!(
        store
            .retake_expired_batch(&items, 4_999, 6_000)
            .await
            .unwrap(),
        None
    );
    for offset in EXPIRED..EXPIRED + LIVE {
        let id = format!("b{offset}");
        assert_eq!(
            store.batch_lease(&items, &id).await.unwrap(),
            Some(lease(&id, 0, offset, 10_000))
        );
    }
}

async fn batch_acks(store: &dyn MasterStore) {
    let items = ds("items");
    assert!(
        store
            .claim_batch(&items, 0, 0, 0, "x", 1_000)
            .await
            .unwrap()
    );
    assert!(store.claim_batch(&items, 0, 1, 1, "y", 10).await.unwrap());
    assert!(store.ack_batch(&items, "x").await.unwrap());
    assert!(
        !store.ack_batch(&items, "x").await.unwrap(),
        "acknowledged once"
    );
    assert_eq!(store.batch_lease(&items, "x").await.unwrap(), None);
    assert!(!store.ack_batch(&items, "never-handed-out").await.unwrap());
    assert!(
        store.ack_batch(&items, "y").await.unwrap(),
        "an expired lease can still be acknowledged"
    );
    assert_eq!(
        store
            .retake_expired_batch(&items, 1_000_000, 2_000_000)
            .await
            .unwrap(),
        None,
        "acknowledged batches are not retaken"
    );
    assert!(
        !store
            .claim_batch(&items, 0, 0, 0, "x-again", 1_000)
            .await
            .unwrap(),
        "nor handed out again: the position passed them"
    );
    assert_eq!(dispatch(store, "items").await, vec![(0, 2)]);
    // The id is free again for a later batch.
    assert!(
        store
            .claim_batch(&items, 0, 2, 2, "x", 1_000)
            .await
            .unwrap()
    );
    assert_eq!(
        store.batch_lease(&items, "x").await.unwrap(),
        Some(lease("x", 0, 2, 1_000))
    );
}

async fn batch_datasets_are_independent(store: &dyn MasterStore) {
    let (items, orders) = (ds("items"), ds("orders"));
    assert_eq!(
        store.claim_batcher(&items, "a", 0, 1_000).await.unwrap(),
        claim(1, None)
    );
    assert_eq!(
        store.claim_batcher(&orders, "b", 0, 1_000).await.unwrap(),
        claim(1, None),
        "each dataset has its own batcher"
    );
    assert!(
        store
            .renew_batcher(&items, 1, 0, 1_000, Some(b"items"))
            .await
            .unwrap()
    );
    assert_eq!(
        store.claim_batcher(&orders, "b", 1, 1_000).await.unwrap(),
        claim(2, None),
        "a checkpoint belongs to its dataset"
    );
    assert!(
        !store
            .renew_batcher(&items, 2, 1, 1_000, None)
            .await
            .unwrap(),
        "epochs are per dataset"
    );

    assert!(
        store
            .claim_batch(&items, 0, 0, 0, "same-id", 100)
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_batch(&orders, 0, 0, 4, "same-id", 200)
            .await
            .unwrap(),
        "positions and batch ids are per dataset"
    );
    assert_eq!(dispatch(store, "items").await, vec![(0, 1)]);
    assert_eq!(dispatch(store, "orders").await, vec![(0, 5)]);
    assert!(dispatch(store, "other").await.is_empty());
    assert_eq!(
        store
            .retake_expired_batch(&items, 150, 1_000)
            .await
            .unwrap(),
        Some(lease("same-id", 0, 0, 1_000))
    );
    assert_eq!(
        store
            .retake_expired_batch(&items, 300, 1_000)
            .await
            .unwrap(),
        None,
        "orders' expired lease is not items' to retake"
    );
    assert!(store.ack_batch(&items, "same-id").await.unwrap());
    assert_eq!(
        store.batch_lease(&orders, "same-id").await.unwrap(),
        Some(lease("same-id", 0, 4, 200)),
        "acknowledging in items left orders' lease alone"
    );
    assert_eq!(
        store
            .retake_expired_batch(&orders, 300, 1_000)
            .await
            .unwrap(),
        Some(lease("same-id", 0, 4, 1_000))
    );
}
