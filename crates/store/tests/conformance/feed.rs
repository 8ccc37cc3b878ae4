//! The feed: a tenant's records by seq, tombstone purges and horizons, tenant ends, seqs given
//! to records written before schema version 2, and feeds read during applies and purges.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use serde_json::json;
use tenantsync_core::{Change, DatasetName, Record};
use tenantsync_store::{FeedPosition, FeedRecord, MasterStore, TenantFeed};

use crate::common::*;
use crate::{apply_ok, ends, feed, get, one, page};

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

pub(crate) async fn feed_orders_by_seq_and_pages(store: &dyn MasterStore) {
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

pub(crate) async fn feed_skips_tombstones_below_live_from(store: &dyn MasterStore) {
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

pub(crate) async fn purge_tombstones_raises_horizon_and_floor(store: &dyn MasterStore) {
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

pub(crate) async fn tenant_ends_lists_every_tenant(store: &dyn MasterStore) {
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

pub(crate) async fn feeds_never_mix_tenants_and_datasets(store: &dyn MasterStore) {
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
pub(crate) async fn legacy_records_get_ranked_seqs(store: &dyn MasterStore) {
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

pub(crate) const LEGACY: &[v1::LegacyRecord] = &[
    v1::LegacyRecord {
        tenant: "acme",
        id: "é",
        version: 1,
        data: Some(r#"{"e": 1}"#),
    },
    v1::LegacyRecord {
        tenant: "acme",
        id: "b",
        version: 2,
        data: Some("{}"),
    },
    v1::LegacyRecord {
        tenant: "globex",
        id: "x",
        version: 1,
        data: Some("{}"),
    },
    v1::LegacyRecord {
        tenant: "acme",
        id: "a",
        version: 1,
        data: Some(r#"{"v": 1}"#),
    },
    v1::LegacyRecord {
        tenant: "acme",
        id: "c",
        version: 3,
        data: None,
    },
];

/// A writer applies batches of one tenant while a reader pages through its feed from 0. Once
/// the reader has caught up, what it holds (each key at its latest seq) is exactly the store.
pub(crate) async fn feed_pages_miss_no_write_under_concurrent_applies(store: Arc<dyn MasterStore>) {
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
pub(crate) async fn versions_never_go_down_under_concurrent_purges(store: Arc<dyn MasterStore>) {
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
