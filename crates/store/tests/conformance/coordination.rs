//! Coordination: the batcher's claim and the HTTP batch queue's positions and leases.

use std::collections::HashMap;
use std::sync::Arc;

use tenantsync_store::{BatchLease, BatcherClaim, MasterStore, StoreError};

use crate::common::*;

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

pub(crate) async fn batcher_claim_lifecycle(store: &dyn MasterStore) {
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
pub(crate) async fn batcher_claim_racers_one_wins(store: Arc<dyn MasterStore>) {
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

pub(crate) async fn batch_dispatch_moves_by_compare_and_set(store: &dyn MasterStore) {
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
pub(crate) async fn batch_claim_racers_one_wins(store: Arc<dyn MasterStore>) {
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

pub(crate) async fn expired_batches_are_retaken_earliest_first(store: &dyn MasterStore) {
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
pub(crate) async fn batch_retake_racers_take_each_lease_once(store: Arc<dyn MasterStore>) {
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

pub(crate) async fn batch_acks(store: &dyn MasterStore) {
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

pub(crate) async fn batch_datasets_are_independent(store: &dyn MasterStore) {
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

pub(crate) async fn instance_registry_lifecycle(store: &dyn MasterStore) {
    assert!(store.live_instances(0).await.unwrap().is_empty());
    store
        .heartbeat_instance("host-b:7070", 1_000)
        .await
        .unwrap();
    store
        .heartbeat_instance("host-a:7070", 1_200)
        .await
        .unwrap();
    assert_eq!(
        store.live_instances(1_000).await.unwrap(),
        ["host-a:7070", "host-b:7070"],
        "seen at or after the time asked, sorted"
    );
    assert_eq!(
        store.live_instances(1_001).await.unwrap(),
        ["host-a:7070"],
        "b was not seen since"
    );
    store
        .heartbeat_instance("host-b:7070", 2_000)
        .await
        .unwrap();
    store
        .heartbeat_instance("host-b:7070", 1_500)
        .await
        .unwrap();
    assert_eq!(
        store.live_instances(1_900).await.unwrap(),
        ["host-b:7070"],
        "a late heartbeat does not move the time back"
    );

    assert!(store.deregister_instance("host-b:7070").await.unwrap());
    assert!(!store.deregister_instance("host-b:7070").await.unwrap());
    assert!(store.live_instances(0).await.unwrap() == ["host-a:7070"]);
    store
        .heartbeat_instance("host-b:7070", 2_100)
        .await
        .unwrap();
    assert_eq!(
        store.live_instances(2_000).await.unwrap(),
        ["host-b:7070"],
        "a deregistered name registers again with its next heartbeat"
    );

    // Names are compared exactly.
    store
        .heartbeat_instance("HOST-b:7070", 2_100)
        .await
        .unwrap();
    assert_eq!(store.live_instances(2_000).await.unwrap().len(), 2);

    assert_eq!(
        store.forget_instances(2_100).await.unwrap(),
        1,
        "only a, seen at 1200"
    );
    assert_eq!(store.live_instances(0).await.unwrap().len(), 2);
    assert_eq!(store.forget_instances(i64::MAX).await.unwrap(), 2);
    assert!(store.live_instances(i64::MIN).await.unwrap().is_empty());
}

/// Many instances heartbeating at once, each several times: every one is registered, with its
/// latest time.
pub(crate) async fn instance_heartbeats_racing_register_all(store: Arc<dyn MasterStore>) {
    let mut tasks = Vec::new();
    for i in 0..16_i64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for beat in 0..5_i64 {
                store
                    .heartbeat_instance(&format!("instance-{i:02}"), 1_000 * beat + i)
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let expected: Vec<String> = (0..16).map(|i| format!("instance-{i:02}")).collect();
    assert_eq!(store.live_instances(4_000).await.unwrap(), expected);
    assert_eq!(store.live_instances(4_008).await.unwrap(), expected[8..]);
}
