//! Sources: definitions revised only when their text changes, shard claims fenced by epoch,
//! rejections recorded once per position and bounded, and deletes that take everything kept
//! for a source with them, also while claimers and recorders race them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use tenantsync_store::{
    MasterStore, SourcePut, SourceRejectedPage, SourceRejection, SourceShard, StoreError,
    StoredSource,
};

/// A time with microseconds only, as the store keeps it.
fn at_micros(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(1_900_000_000_000_000 + micros).unwrap()
}

fn rejection(position: &str, reason: &str) -> SourceRejection {
    SourceRejection {
        position: position.to_owned(),
        reason: reason.to_owned(),
        at: at_micros(position.len() as i64 * 1_001),
    }
}

fn shard(
    shard: u32,
    owner: &str,
    epoch: u64,
    lease_until_ms: i64,
    status: Option<&str>,
) -> SourceShard {
    SourceShard {
        shard,
        owner: owner.to_owned(),
        epoch,
        lease_until_ms,
        status: status.map(str::to_owned),
    }
}

async fn put(
    store: &dyn MasterStore,
    name: &str,
    definition: &str,
    micros: i64,
) -> (SourcePut, u64) {
    store
        .put_source(name, definition, at_micros(micros))
        .await
        .expect("put source")
}

async fn shards(store: &dyn MasterStore, name: &str) -> Vec<SourceShard> {
    store.source_shards(name).await.expect("source shards")
}

async fn page(
    store: &dyn MasterStore,
    name: &str,
    after: Option<u64>,
    limit: usize,
) -> SourceRejectedPage {
    store
        .source_rejected(name, after, limit)
        .await
        .expect("source rejections")
}

/// The page's rejections without their ids.
fn entries(page: &SourceRejectedPage) -> Vec<SourceRejection> {
    page.entries.iter().map(|(_, e)| e.clone()).collect()
}

fn ids(page: &SourceRejectedPage) -> Vec<u64> {
    page.entries.iter().map(|(id, _)| *id).collect()
}

fn empty_page() -> SourceRejectedPage {
    SourceRejectedPage {
        entries: vec![],
        dropped: 0,
    }
}

pub(crate) async fn source_definitions_are_revised_only_when_changed(store: &dyn MasterStore) {
    assert_eq!(store.source("orders").await.unwrap(), None);
    assert!(store.sources().await.unwrap().is_empty());

    let v1 = r#"{"kind":"postgres-outbox","table":"outbox"}"#;
    assert_eq!(put(store, "orders", v1, 1).await, (SourcePut::Created, 1));
    let stored = StoredSource {
        name: "orders".into(),
        definition: v1.into(),
        revision: 1,
        updated_at: at_micros(1),
    };
    assert_eq!(store.source("orders").await.unwrap(), Some(stored.clone()));

    // The same text again changes nothing, not even the time.
    assert_eq!(put(store, "orders", v1, 2).await, (SourcePut::Unchanged, 1));
    assert_eq!(store.source("orders").await.unwrap(), Some(stored));

    // Text that differs, even only in its spacing (the store does not parse it), is a change.
    let v2 = r#"{"kind": "postgres-outbox","table":"outbox"}"#;
    assert_eq!(put(store, "orders", v2, 3).await, (SourcePut::Updated, 2));
    assert_eq!(put(store, "orders", v2, 4).await, (SourcePut::Unchanged, 2));
    // Going back to an earlier text is a change too.
    assert_eq!(put(store, "orders", v1, 5).await, (SourcePut::Updated, 3));
    let orders = StoredSource {
        name: "orders".into(),
        definition: v1.into(),
        revision: 3,
        updated_at: at_micros(5),
    };
    assert_eq!(store.source("orders").await.unwrap(), Some(orders.clone()));
    assert_eq!(put(store, "orders", v1, 6).await, (SourcePut::Unchanged, 3));

    // Listed by name in byte order ('-' < '0' < '_' < 'a'); each keeps its own revision.
    let huge = format!(
        r#"{{"tables":"{}","note":"ünïcödé ✓"}}"#,
        "x".repeat(1 << 20)
    );
    for (name, definition) in [
        ("a_b", "{}"),
        ("ab", huge.as_str()),
        ("a0", ""),
        ("a-b", "[]"),
    ] {
        assert_eq!(
            put(store, name, definition, 7).await,
            (SourcePut::Created, 1)
        );
    }
    assert_eq!(put(store, "a0", "", 8).await, (SourcePut::Unchanged, 1));
    assert_eq!(put(store, "a0", " ", 9).await, (SourcePut::Updated, 2));
    let listed = store.sources().await.unwrap();
    assert_eq!(
        listed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["a-b", "a0", "a_b", "ab", "orders"]
    );
    assert_eq!(
        listed.iter().map(|s| s.revision).collect::<Vec<_>>(),
        [1, 2, 1, 1, 3]
    );
    assert_eq!(listed[3].definition, huge, "large definitions round-trip");
    assert_eq!(listed[1].updated_at, at_micros(9));
    assert_eq!(listed[4], orders);
}

pub(crate) async fn source_claim_lifecycle(store: &dyn MasterStore) {
    assert_eq!(
        store
            .claim_source("orders", 0, "a", 1_000, 500)
            .await
            .unwrap(),
        None,
        "a source without a definition cannot be claimed"
    );
    assert!(shards(store, "orders").await.is_empty());
    put(store, "orders", "{}", 0).await;
    assert!(
        !store
            .renew_source("orders", 0, 1, 0, 500, None)
            .await
            .unwrap(),
        "nothing to renew before the first claim"
    );
    assert!(!store.release_source("orders", 0, 1).await.unwrap());
    assert_eq!(
        store
            .claim_source("orders", 0, "a", 1_000, 500)
            .await
            .unwrap(),
        Some(1),
        "the first claim is epoch 1"
    );
    assert_eq!(
        shards(store, "orders").await,
        [shard(0, "a", 1, 1_500, None)]
    );
    // a's lease runs until 1500.
    for now in [1_200, 1_499] {
        assert_eq!(
            store
                .claim_source("orders", 0, "b", now, 500)
                .await
                .unwrap(),
            None
        );
    }
    let status = r#"{"position":"0/16B3748","lag_rows":3}"#;
    assert!(
        store
            .renew_source("orders", 0, 1, 1_400, 500, Some(status))
            .await
            .unwrap()
    );
    assert_eq!(
        shards(store, "orders").await,
        [shard(0, "a", 1, 1_900, Some(status))]
    );
    assert_eq!(
        store
            .claim_source("orders", 0, "b", 1_899, 500)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .claim_source("orders", 0, "b", 1_900, 500)
            .await
            .unwrap(),
        Some(2),
        "another owner takes the claim once the lease expired"
    );
    assert_eq!(
        shards(store, "orders").await,
        [shard(0, "b", 2, 2_400, Some(status))],
        "the status is kept across claims"
    );

    // a was fenced: its renewals and releases change nothing.
    assert!(
        !store
            .renew_source("orders", 0, 1, 1_950, 10_000, Some("stale"))
            .await
            .unwrap()
    );
    assert!(!store.release_source("orders", 0, 1).await.unwrap());
    assert_eq!(
        shards(store, "orders").await,
        [shard(0, "b", 2, 2_400, Some(status))]
    );

    // A lease that expired can be renewed while nobody took the claim over; without a status
    // the stored one stays.
    assert!(
        store
            .renew_source("orders", 0, 2, 9_000, 500, None)
            .await
            .unwrap()
    );
    assert_eq!(
        shards(store, "orders").await,
        [shard(0, "b", 2, 9_500, Some(status))]
    );
    assert_eq!(
        store
            .claim_source("orders", 0, "c", 9_499, 500)
            .await
            .unwrap(),
        None
    );
    // The same owner (restarted) takes its own claim at once, with a new epoch.
    assert_eq!(
        store
            .claim_source("orders", 0, "b", 9_100, 500)
            .await
            .unwrap(),
        Some(3)
    );
    assert!(
        !store
            .renew_source("orders", 0, 2, 9_100, 500, None)
            .await
            .unwrap()
    );
    assert!(
        store
            .renew_source("orders", 0, 3, 9_200, 500, Some(""))
            .await
            .unwrap()
    );
    assert_eq!(
        shards(store, "orders").await,
        [shard(0, "b", 3, 9_700, Some(""))],
        "an empty status is stored as empty, not as none"
    );

    // A release frees the shard at once for anyone, keeping owner, epoch and status.
    assert!(!store.release_source("orders", 0, 2).await.unwrap());
    assert!(store.release_source("orders", 0, 3).await.unwrap());
    assert_eq!(
        shards(store, "orders").await,
        [shard(0, "b", 3, i64::MIN, Some(""))]
    );
    assert_eq!(
        store
            .claim_source("orders", 0, "c", i64::MIN, 500)
            .await
            .unwrap(),
        Some(4),
        "a released claim is free whatever the time"
    );
    assert!(!store.release_source("orders", 0, 3).await.unwrap());
    assert_eq!(
        shards(store, "orders").await,
        [shard(0, "c", 4, i64::MIN + 500, Some(""))]
    );

    // Shards, and the same shard of another source, are claimed independently; listed by shard.
    put(store, "billing", "{}", 0).await;
    assert_eq!(
        store
            .claim_source("orders", u32::MAX, "d", 10_000, 500)
            .await
            .unwrap(),
        Some(1)
    );
    assert_eq!(
        store
            .claim_source("orders", 7, "e", 10_000, 500)
            .await
            .unwrap(),
        Some(1)
    );
    assert_eq!(
        store
            .claim_source("billing", 0, "f", 10_000, 500)
            .await
            .unwrap(),
        Some(1)
    );
    assert!(
        store
            .renew_source("billing", 0, 1, 10_000, 500, Some("b"))
            .await
            .unwrap()
    );
    assert_eq!(
        shards(store, "orders").await,
        [
            shard(0, "c", 4, i64::MIN + 500, Some("")),
            shard(7, "e", 1, 10_500, None),
            shard(u32::MAX, "d", 1, 10_500, None),
        ]
    );
    assert_eq!(
        shards(store, "billing").await,
        [shard(0, "f", 1, 10_500, Some("b"))]
    );
    assert!(
        !store
            .renew_source("billing", 7, 1, 10_000, 500, None)
            .await
            .unwrap()
    );

    assert!(
        matches!(
            store
                .renew_source("orders", 0, u64::MAX, 10_000, 500, None)
                .await,
            Err(StoreError::OutOfRange { .. })
        ),
        "an epoch beyond the store's integers is an error, not a wrap"
    );
    assert!(matches!(
        store.release_source("orders", 0, u64::MAX).await,
        Err(StoreError::OutOfRange { .. })
    ));
}

pub(crate) async fn deleting_a_source_removes_everything_kept_for_it(store: &dyn MasterStore) {
    assert!(!store.delete_source("orders").await.unwrap());
    for name in ["orders", "billing"] {
        put(store, name, "{}", 0).await;
        put(store, name, "{\"v\":2}", 1).await;
        for s in [0, 1] {
            let epoch = store
                .claim_source(name, s, "a", 1_000, 500)
                .await
                .unwrap()
                .unwrap();
            assert!(
                store
                    .renew_source(name, s, epoch, 1_000, 500, Some("st"))
                    .await
                    .unwrap()
            );
        }
        let three: Vec<_> = ["p1", "p2", "p3"]
            .iter()
            .map(|p| rejection(p, "bad"))
            .collect();
        store.record_source_rejected(name, &three, 2).await.unwrap();
    }
    let billing_shards = shards(store, "billing").await;
    let billing_rejected = page(store, "billing", None, 10).await;
    assert_eq!(billing_rejected.dropped, 1);
    assert_eq!(billing_shards.len(), 2);

    assert!(store.delete_source("orders").await.unwrap());
    assert_eq!(store.source("orders").await.unwrap(), None);
    assert!(shards(store, "orders").await.is_empty());
    assert_eq!(
        page(store, "orders", None, 10).await,
        empty_page(),
        "dropped count gone too"
    );
    assert!(
        !store
            .renew_source("orders", 0, 1, 1_100, 500, None)
            .await
            .unwrap(),
        "the holder learns at its next renewal"
    );
    assert!(!store.release_source("orders", 1, 1).await.unwrap());
    assert_eq!(
        store
            .claim_source("orders", 0, "b", 1_100, 500)
            .await
            .unwrap(),
        None,
        "a deleted source cannot be claimed"
    );
    store
        .record_source_rejected("orders", &[rejection("p9", "late")], 10)
        .await
        .unwrap();
    assert_eq!(
        page(store, "orders", None, 10).await,
        empty_page(),
        "nothing is recorded for a source without a definition"
    );
    assert!(!store.delete_source("orders").await.unwrap());

    // The other source is untouched.
    assert_eq!(
        store
            .sources()
            .await
            .unwrap()
            .iter()
            .map(|s| (s.name.as_str(), s.revision))
            .collect::<Vec<_>>(),
        [("billing", 2)]
    );
    assert_eq!(shards(store, "billing").await, billing_shards);
    assert_eq!(page(store, "billing", None, 10).await, billing_rejected);

    // Created again, the source starts afresh.
    assert_eq!(
        put(store, "orders", "{\"v\":2}", 2).await,
        (SourcePut::Created, 1)
    );
    assert!(shards(store, "orders").await.is_empty());
    assert_eq!(page(store, "orders", None, 10).await, empty_page());
    assert_eq!(
        store
            .claim_source("orders", 0, "b", 1_100, 500)
            .await
            .unwrap(),
        Some(1),
        "the old claim (a's live lease, epoch 1) is gone"
    );
    assert_eq!(
        shards(store, "orders").await,
        [shard(0, "b", 1, 1_600, None)]
    );
    store
        .record_source_rejected("orders", &[rejection("p1", "again")], 10)
        .await
        .unwrap();
    let p = page(store, "orders", None, 10).await;
    assert_eq!(entries(&p), [rejection("p1", "again")]);
    assert_eq!(p.dropped, 0);
}

pub(crate) async fn source_rejections_are_recorded_once_per_position_and_paged(
    store: &dyn MasterStore,
) {
    put(store, "orders", "{}", 0).await;
    assert_eq!(page(store, "orders", None, 10).await, empty_page());
    let first = [
        rejection("0/16B3748", "tenant missing"),
        rejection("0/16B3750", "dataset not declared"),
    ];
    store
        .record_source_rejected("orders", &first, 100)
        .await
        .unwrap();
    let p = page(store, "orders", None, 10).await;
    assert_eq!(entries(&p), first.to_vec(), "in the order recorded");
    let first_ids = ids(&p);
    assert!(
        first_ids[0] < first_ids[1],
        "ids increase in recording order"
    );

    // The same positions again, with another reason and time, and one new position; and a
    // repeat within one call.
    let mut again = rejection("0/16B3748", "another reason");
    again.at = at_micros(999_999);
    store
        .record_source_rejected(
            "orders",
            &[
                again,
                rejection("0/16B3760", "not an object"),
                rejection("0/16B3750", "x"),
            ],
            100,
        )
        .await
        .unwrap();
    store
        .record_source_rejected(
            "orders",
            &[rejection("t-0-5", "first"), rejection("t-0-5", "second")],
            100,
        )
        .await
        .unwrap();
    let p = page(store, "orders", None, 10).await;
    assert_eq!(
        entries(&p),
        vec![
            rejection("0/16B3748", "tenant missing"),
            rejection("0/16B3750", "dataset not declared"),
            rejection("0/16B3760", "not an object"),
            rejection("t-0-5", "first"),
        ],
        "recording a kept position again changes nothing"
    );
    assert_eq!(
        &ids(&p)[..2],
        &first_ids[..],
        "kept rejections keep their ids"
    );
    let all = ids(&p);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
    assert_eq!(p.dropped, 0);

    // Paging by the last id seen.
    let one = page(store, "orders", Some(all[0]), 1).await;
    assert_eq!(one.entries, vec![p.entries[1].clone()]);
    let rest = page(store, "orders", Some(all[1]), 10).await;
    assert_eq!(rest.entries, p.entries[2..].to_vec());
    assert!(
        page(store, "orders", Some(all[3]), 10)
            .await
            .entries
            .is_empty()
    );
    assert!(
        page(store, "orders", Some(u64::MAX), 10)
            .await
            .entries
            .is_empty()
    );
    assert!(page(store, "orders", None, 0).await.entries.is_empty());

    // Sources are separate, also for the same position.
    put(store, "billing", "{}", 0).await;
    store
        .record_source_rejected("billing", &[rejection("0/16B3748", "in billing")], 100)
        .await
        .unwrap();
    assert_eq!(
        entries(&page(store, "billing", None, 10).await),
        vec![rejection("0/16B3748", "in billing")]
    );
    assert_eq!(page(store, "orders", None, 10).await, p);
    assert_eq!(page(store, "nothing", None, 10).await, empty_page());
}

pub(crate) async fn source_rejections_are_bounded_per_source(store: &dyn MasterStore) {
    put(store, "orders", "{}", 0).await;
    let five: Vec<_> = (0..5).map(|i| rejection(&format!("p{i}"), "bad")).collect();
    store
        .record_source_rejected("orders", &five, 3)
        .await
        .unwrap();
    let p = page(store, "orders", None, 10).await;
    assert_eq!(entries(&p), five[2..].to_vec(), "the oldest go first");
    assert_eq!(p.dropped, 2);
    let kept_ids = ids(&p);

    // A kept position recorded again changes nothing, and pushes nothing out.
    store
        .record_source_rejected(
            "orders",
            &[rejection("p3", "bad"), rejection("p2", "bad")],
            3,
        )
        .await
        .unwrap();
    assert_eq!(page(store, "orders", None, 10).await, p);

    // A new one pushes the oldest out.
    store
        .record_source_rejected("orders", &[rejection("q", "bad")], 3)
        .await
        .unwrap();
    let p = page(store, "orders", None, 10).await;
    assert_eq!(
        entries(&p),
        vec![
            rejection("p3", "bad"),
            rejection("p4", "bad"),
            rejection("q", "bad")
        ]
    );
    assert_eq!(&ids(&p)[..2], &kept_ids[1..]);
    assert_eq!(p.dropped, 3);

    // A dropped position is forgotten: recorded again, it is the newest (a new id), and
    // dropping it again counts it again.
    store
        .record_source_rejected("orders", &[rejection("p0", "seen again")], 3)
        .await
        .unwrap();
    let p = page(store, "orders", None, 10).await;
    assert_eq!(
        entries(&p),
        vec![
            rejection("p4", "bad"),
            rejection("q", "bad"),
            rejection("p0", "seen again")
        ]
    );
    assert!(ids(&p)[2] > ids(&p)[1]);
    assert_eq!(p.dropped, 4);

    // Another source's bound is its own.
    put(store, "billing", "{}", 0).await;
    store
        .record_source_rejected("billing", &[rejection("x0", "x"), rejection("x1", "x")], 1)
        .await
        .unwrap();
    let billing = page(store, "billing", None, 10).await;
    assert_eq!(entries(&billing), vec![rejection("x1", "x")]);
    assert_eq!(billing.dropped, 1);
    assert_eq!(page(store, "orders", None, 10).await, p);

    // Keeping none drops everything, counted; ids are never reused afterwards.
    let highest = *ids(&p).last().unwrap();
    store
        .record_source_rejected("orders", &[], 0)
        .await
        .unwrap();
    let p = page(store, "orders", None, 10).await;
    assert!(p.entries.is_empty());
    assert_eq!(p.dropped, 7);
    store
        .record_source_rejected("orders", &[rejection("later", "x")], 10)
        .await
        .unwrap();
    let p = page(store, "orders", None, 10).await;
    assert_eq!(entries(&p), vec![rejection("later", "x")]);
    assert!(ids(&p)[0] > highest, "ids are never reused");
    assert_eq!(p.dropped, 7);
}

/// Several instances start the same shard at once, when it was never claimed, when its lease
/// expired and when it was released: exactly one gets it each time.
pub(crate) async fn source_claim_racers_one_wins(store: Arc<dyn MasterStore>) {
    const RACERS: usize = 8;
    put(&*store, "orders", "{}", 0).await;
    for (round, now) in [(1u64, 1_000i64), (2, 2_000), (3, 2_500)] {
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
        let tasks: Vec<_> = (0..RACERS)
            .map(|i| {
                let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    let epoch = store
                        .claim_source("orders", 3, &format!("owner-{i}"), now, 1_000)
                        .await
                        .expect("claim");
                    (i, epoch)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            if let (i, Some(epoch)) = t.await.expect("racer") {
                winners.push((i, epoch));
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let (winner, epoch) = winners[0];
        assert_eq!(epoch, round, "round {round}");
        assert_eq!(
            shards(&*store, "orders").await,
            [shard(
                3,
                &format!("owner-{winner}"),
                round,
                now + 1_000,
                None
            )]
        );
        // Everyone else is refused while the winner's lease runs.
        for i in (0..RACERS).filter(|&i| i != winner) {
            assert_eq!(
                store
                    .claim_source("orders", 3, &format!("owner-{i}"), now + 999, 1_000)
                    .await
                    .unwrap(),
                None
            );
        }
        if round == 2 {
            // Round 3 races for a released claim, before its lease would have expired.
            assert!(store.release_source("orders", 3, round).await.unwrap());
        }
    }
}

/// A holder whose lease just expired renews while others try to take the shard over: either
/// its renewal wins and every claim is refused, or one claim wins and the renewal fails.
pub(crate) async fn source_renew_racing_takeover_one_wins(store: Arc<dyn MasterStore>) {
    const CLAIMERS: usize = 4;
    const ROUNDS: i64 = 20;
    put(&*store, "orders", "{}", 0).await;
    let mut epoch = store
        .claim_source("orders", 0, "holder", 0, 1_000)
        .await
        .unwrap()
        .unwrap();
    let mut holder = "holder".to_owned();
    for round in 1..=ROUNDS {
        // The current lease ran until (round - 1) * 10_000 + 1_000; all race at round * 10_000.
        let now = round * 10_000;
        let barrier = Arc::new(tokio::sync::Barrier::new(CLAIMERS + 1));
        let renewer = {
            let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
            let status = format!("round {round}");
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .renew_source("orders", 0, epoch, now, 1_000, Some(&status))
                    .await
                    .expect("renew")
            })
        };
        let claimers: Vec<_> = (0..CLAIMERS)
            .map(|i| {
                let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
                let owner = format!("r{round}-c{i}");
                tokio::spawn(async move {
                    barrier.wait().await;
                    let won = store
                        .claim_source("orders", 0, &owner, now, 1_000)
                        .await
                        .expect("claim");
                    won.map(|epoch| (owner, epoch))
                })
            })
            .collect();
        let renewed = renewer.await.unwrap();
        let mut won = Vec::new();
        for c in claimers {
            won.extend(c.await.unwrap());
        }
        let [claim] = shards(&*store, "orders").await.try_into().unwrap();
        if renewed {
            assert!(
                won.is_empty(),
                "round {round}: renewed, yet claimed by {won:?}"
            );
            assert_eq!(
                (claim.owner.as_str(), claim.epoch),
                (holder.as_str(), epoch)
            );
            assert_eq!(
                claim.status.as_deref(),
                Some(format!("round {round}").as_str())
            );
        } else {
            assert_eq!(won.len(), 1, "round {round}: {won:?}");
            let (owner, new_epoch) = won.pop().unwrap();
            assert_eq!(new_epoch, epoch + 1, "round {round}");
            assert_eq!(
                (claim.owner.as_str(), claim.epoch),
                (owner.as_str(), new_epoch)
            );
            (holder, epoch) = (owner, new_epoch);
        }
        assert_eq!(claim.lease_until_ms, now + 1_000);
    }
}

/// Claimers and recorders race a delete: whatever committed before it is gone with it, and
/// nothing that came after it leaves a claim or a rejection behind, so the source created
/// again starts afresh.
pub(crate) async fn source_delete_racing_claims_and_recorders_leaves_nothing(
    store: Arc<dyn MasterStore>,
) {
    const ROUNDS: usize = 20;
    const RACERS: u32 = 4;
    for round in 0..ROUNDS {
        assert_eq!(
            put(&*store, "orders", "{}", 0).await,
            (SourcePut::Created, 1),
            "round {round}"
        );
        let barrier = Arc::new(tokio::sync::Barrier::new(2 * RACERS as usize + 1));
        let mut tasks = Vec::new();
        for i in 0..RACERS {
            let (claimer, barrier_c) = (Arc::clone(&store), Arc::clone(&barrier));
            tasks.push(tokio::spawn(async move {
                barrier_c.wait().await;
                claimer
                    .claim_source("orders", i, "a", 1_000, 500)
                    .await
                    .expect("claim");
            }));
            let (recorder, barrier_r) = (Arc::clone(&store), Arc::clone(&barrier));
            tasks.push(tokio::spawn(async move {
                barrier_r.wait().await;
                recorder
                    .record_source_rejected("orders", &[rejection(&format!("p{i}"), "bad")], 1)
                    .await
                    .expect("record");
            }));
        }
        barrier.wait().await;
        assert!(
            store.delete_source("orders").await.unwrap(),
            "round {round}"
        );
        for t in tasks {
            t.await.unwrap();
        }
        assert!(shards(&*store, "orders").await.is_empty(), "round {round}");
        assert_eq!(
            page(&*store, "orders", None, 10).await,
            empty_page(),
            "round {round}"
        );
    }
}

/// Recorders race while a reader pages with the last id it saw: once the recorders are done
/// and the reader caught up, it has seen every rejection, once, in id order.
pub(crate) async fn source_rejection_recorders_racing_keep_ids_in_order(
    store: Arc<dyn MasterStore>,
) {
    const RECORDERS: usize = 4;
    const EACH: usize = 40;
    put(&*store, "orders", "{}", 0).await;
    let done = Arc::new(AtomicBool::new(false));
    let recorders: Vec<_> = (0..RECORDERS)
        .map(|r| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..EACH {
                    store
                        .record_source_rejected(
                            "orders",
                            &[rejection(&format!("{r}/{i}"), "bad")],
                            10_000,
                        )
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
    let mut seen: Vec<(u64, SourceRejection)> = Vec::new();
    loop {
        let finished = done.load(Ordering::SeqCst);
        let after = seen.last().map(|(id, _)| *id);
        let p = page(&*store, "orders", after, 7).await;
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
    let positions: BTreeSet<String> = seen.iter().map(|(_, e)| e.position.clone()).collect();
    assert_eq!(positions.len(), seen.len(), "each rejection once");
    let expected: BTreeSet<String> = (0..RECORDERS)
        .flat_map(|r| (0..EACH).map(move |i| format!("{r}/{i}")))
        .collect();
    assert_eq!(positions, expected, "the reader missed no rejection");
    assert_eq!(page(&*store, "orders", None, 1_000).await.entries, seen);
}
