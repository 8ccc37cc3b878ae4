//! Erasure: the lifecycle of a tenant erasure and how it fences the tenant's changes out of
//! `apply`, also when a finish races applies.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::json;
use tenantsync_core::{Change, ChangeId, Outcome, Record, RejectReason};
use tenantsync_store::{Erasure, FeedPosition, LoggedChange, MasterStore};

use crate::common::*;
use crate::{apply_ok, ends, feed, page};

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

pub(crate) async fn erasure_lifecycle(store: &dyn MasterStore) {
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
pub(crate) async fn erasure_finish_racing_applies_leaves_no_rejection(store: Arc<dyn MasterStore>) {
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
