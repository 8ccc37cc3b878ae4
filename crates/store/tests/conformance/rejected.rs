//! Rejected entries: recorded once per (dataset, partition, offset), paged in recording order,
//! bounded per dataset with the drops counted, and ordered for a reader paging while several
//! recorders race.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use tenantsync_store::{MasterStore, RejectedEntry, RejectedPage};

use crate::common::*;

/// A time with microseconds only, as the store keeps it.
fn at_micros(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(1_900_000_000_000_000 + micros).unwrap()
}

fn entry(partition: u32, offset: u64, reason: &str) -> RejectedEntry {
    RejectedEntry {
        partition,
        offset,
        reason: reason.to_owned(),
        at: at_micros(i64::try_from(offset).unwrap() * 1_001 + i64::from(partition)),
    }
}

async fn page(
    store: &dyn MasterStore,
    dataset: &str,
    after: Option<u64>,
    limit: usize,
) -> RejectedPage {
    store
        .rejected(&ds(dataset), after, limit)
        .await
        .expect("rejected entries")
}

/// The page's entries without their ids.
fn entries(page: &RejectedPage) -> Vec<RejectedEntry> {
    page.entries.iter().map(|(_, e)| e.clone()).collect()
}

fn ids(page: &RejectedPage) -> Vec<u64> {
    page.entries.iter().map(|(id, _)| *id).collect()
}

pub(crate) async fn rejected_entries_are_recorded_once_and_paged_in_order(store: &dyn MasterStore) {
    let items = ds("items");
    let empty = page(store, "items", None, 10).await;
    assert_eq!(
        empty,
        RejectedPage {
            entries: vec![],
            dropped: 0
        }
    );

    let first = [
        entry(0, 5, "invalid JSON at 1:1"),
        entry(1, 2, "unknown op"),
    ];
    store.record_rejected(&items, &first, 100).await.unwrap();
    let p = page(store, "items", None, 10).await;
    assert_eq!(entries(&p), first.to_vec(), "in the order recorded");
    assert_eq!(p.dropped, 0);
    let first_ids = ids(&p);
    assert!(
        first_ids[0] < first_ids[1],
        "ids increase in recording order"
    );

    // The same entries again, with another reason and time, and one new entry; and a repeat
    // within one call.
    let mut again = entry(0, 5, "another reason");
    again.at = at_micros(999_999);
    store
        .record_rejected(
            &items,
            &[again, entry(0, 7, "empty key"), entry(1, 2, "unknown op")],
            100,
        )
        .await
        .unwrap();
    store
        .record_rejected(&items, &[entry(2, 1, "first"), entry(2, 1, "second")], 100)
        .await
        .unwrap();
    let p = page(store, "items", None, 10).await;
    assert_eq!(
        entries(&p),
        vec![
            entry(0, 5, "invalid JSON at 1:1"),
            entry(1, 2, "unknown op"),
            entry(0, 7, "empty key"),
            entry(2, 1, "first"),
        ],
        "recording an entry again changes nothing"
    );
    assert_eq!(&ids(&p)[..2], &first_ids[..], "kept entries keep their ids");
    let all = ids(&p);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
    assert_eq!(p.dropped, 0);

    // Paging by the last id seen.
    let one = page(store, "items", Some(all[0]), 1).await;
    assert_eq!(one.entries, vec![p.entries[1].clone()]);
    let rest = page(store, "items", Some(all[1]), 10).await;
    assert_eq!(rest.entries, p.entries[2..].to_vec());
    assert!(
        page(store, "items", Some(all[3]), 10)
            .await
            .entries
            .is_empty()
    );
    assert!(
        page(store, "items", Some(u64::MAX), 10)
            .await
            .entries
            .is_empty()
    );
    assert!(page(store, "items", None, 0).await.entries.is_empty());

    // Datasets are separate, also for the same partition and offset.
    store
        .record_rejected(&ds("orders"), &[entry(0, 5, "in orders")], 100)
        .await
        .unwrap();
    assert_eq!(
        entries(&page(store, "orders", None, 10).await),
        vec![entry(0, 5, "in orders")]
    );
    assert_eq!(page(store, "items", None, 10).await, p);
    assert_eq!(page(store, "nothing", None, 10).await, empty);
}

pub(crate) async fn rejected_entries_are_bounded_per_dataset(store: &dyn MasterStore) {
    let items = ds("items");
    let five: Vec<RejectedEntry> = (0..5).map(|o| entry(0, o, "bad")).collect();
    store.record_rejected(&items, &five, 3).await.unwrap();
    let p = page(store, "items", None, 10).await;
    assert_eq!(entries(&p), five[2..].to_vec(), "the oldest go first");
    assert_eq!(p.dropped, 2);
    let kept_ids = ids(&p);

    // A dropped entry recorded again stays dropped, and is not counted twice.
    store
        .record_rejected(&items, &[entry(0, 0, "bad"), entry(0, 3, "bad")], 3)
        .await
        .unwrap();
    assert_eq!(page(store, "items", None, 10).await, p);

    // A new entry pushes the oldest out.
    store
        .record_rejected(&items, &[entry(1, 1, "bad")], 3)
        .await
        .unwrap();
    let p = page(store, "items", None, 10).await;
    assert_eq!(
        entries(&p),
        vec![entry(0, 3, "bad"), entry(0, 4, "bad"), entry(1, 1, "bad")]
    );
    assert_eq!(&ids(&p)[..2], &kept_ids[1..]);
    assert_eq!(p.dropped, 3);

    // Another dataset's bound is its own.
    let orders = ds("orders");
    store
        .record_rejected(&orders, &[entry(0, 0, "x"), entry(0, 1, "x")], 1)
        .await
        .unwrap();
    assert_eq!(
        page(store, "orders", None, 10).await,
        RejectedPage {
            entries: vec![(
                ids(&page(store, "orders", None, 10).await)[0],
                entry(0, 1, "x")
            )],
            dropped: 1
        }
    );
    assert_eq!(page(store, "items", None, 10).await, p);

    // Keeping none drops everything, counted; ids are never reused afterwards.
    let highest = *ids(&p).last().unwrap();
    store.record_rejected(&items, &[], 0).await.unwrap();
    let p = page(store, "items", None, 10).await;
    assert!(p.entries.is_empty());
    assert_eq!(p.dropped, 6);
    store
        .record_rejected(&items, &[entry(3, 9, "later")], 10)
        .await
        .unwrap();
    let p = page(store, "items", None, 10).await;
    assert_eq!(entries(&p), vec![entry(3, 9, "later")]);
    assert!(ids(&p)[0] > highest, "ids are never reused");
    assert_eq!(p.dropped, 6);
}

/// Recorders of several partitions race while a reader pages with the last id it saw: once the
/// recorders are done and the reader caught up, it has seen every entry, once, in id order.
pub(crate) async fn rejected_recorders_racing_keep_ids_in_order(store: Arc<dyn MasterStore>) {
    const PARTITIONS: u32 = 4;
    const PER_PARTITION: u64 = 40;
    let done = Arc::new(AtomicBool::new(false));
    let recorders: Vec<_> = (0..PARTITIONS)
        .map(|partition| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for offset in 0..PER_PARTITION {
                    store
                        .record_rejected(&ds("items"), &[entry(partition, offset, "bad")], 10_000)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let finisher = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            for r in recorders {
                r.await.unwrap();
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut seen: Vec<(u64, RejectedEntry)> = Vec::new();
    loop {
        let finished = done.load(Ordering::SeqCst);
        let after = seen.last().map(|(id, _)| *id);
        let p = page(&*store, "items", after, 7).await;
        let read = p.entries.len();
        seen.extend(p.entries);
        if read == 0 {
            if finished {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    finisher.await.unwrap();
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "ids in order");
    let keys: BTreeSet<(u32, u64)> = seen.iter().map(|(_, e)| (e.partition, e.offset)).collect();
    assert_eq!(keys.len(), seen.len(), "each entry once");
    let expected: BTreeSet<(u32, u64)> = (0..PARTITIONS)
        .flat_map(|p| (0..PER_PARTITION).map(move |o| (p, o)))
        .collect();
    assert_eq!(keys, expected, "the reader missed no entry");
    assert_eq!(page(&*store, "items", None, 1_000).await.entries, seen);
}
