//! Push targets: definitions revised only when their text changes and written by
//! compare-and-set, one claim per target fenced by epoch (also by a replay), progress that lands
//! only under the current epoch, bounded attempts, and deletes that take everything kept for a
//! target with them, also while writers race them.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tenantsync_store::{
    FeedPosition, MasterStore, PushAttempt, PushClaim, PushKind, PushProgress, PushPut, StoreError,
    StoredPush,
};

use crate::common::{ds, tenant};

const WEBHOOK: PushKind = PushKind::Webhook;
const SINK: PushKind = PushKind::Sink;

/// A time with microseconds only, as the store keeps it.
fn at_micros(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(1_900_000_000_000_000 + micros).unwrap()
}

fn stored(
    kind: PushKind,
    name: &str,
    definition: &str,
    revision: u64,
    created: i64,
    updated: i64,
) -> StoredPush {
    StoredPush {
        kind,
        name: name.to_owned(),
        definition: definition.to_owned(),
        revision,
        created_at: at_micros(created),
        updated_at: at_micros(updated),
    }
}

fn claim(
    name: &str,
    owner: &str,
    epoch: u64,
    lease_until_ms: i64,
    status: Option<&str>,
) -> PushClaim {
    PushClaim {
        name: name.to_owned(),
        owner: owner.to_owned(),
        epoch,
        lease_until_ms,
        status: status.map(str::to_owned),
    }
}

/// An entry whose columns all differ, so that a swapped column shows.
fn progress(dataset: &str, t: &str, next_seq: u64, state: Option<&str>) -> PushProgress {
    PushProgress {
        dataset: ds(dataset),
        tenant: tenant(t),
        position: FeedPosition {
            next_seq,
            live_from: next_seq * 10 + 1,
        },
        state: state.map(str::to_owned),
        updated_at: at_micros(next_seq as i64 * 7 + 3),
    }
}

/// The `i`th attempt; odd ones failed without an answer.
fn attempt(i: u32) -> PushAttempt {
    PushAttempt {
        at: at_micros(i64::from(i) * 1_001),
        message: format!("msg_{i}"),
        dataset: ds(if i.is_multiple_of(3) {
            "items"
        } else {
            "orders"
        }),
        tenant: tenant(if i.is_multiple_of(2) {
            "acme"
        } else {
            "globex"
        }),
        records: i * 2 + 1,
        status: i
            .is_multiple_of(2)
            .then_some(if i.is_multiple_of(4) { 200 } else { 503 }),
        latency_ms: i * 3 + 5,
        error: (!i.is_multiple_of(2)).then(|| format!("connection refused ({i})")),
    }
}

async fn put(
    store: &dyn MasterStore,
    kind: PushKind,
    name: &str,
    definition: &str,
    expected: Option<u64>,
    micros: i64,
) -> (PushPut, Option<StoredPush>) {
    store
        .put_push(kind, name, definition, expected, at_micros(micros))
        .await
        .expect("put push")
}

async fn claims(store: &dyn MasterStore, kind: PushKind) -> Vec<PushClaim> {
    store.push_claims(kind).await.expect("push claims")
}

async fn entries(store: &dyn MasterStore, kind: PushKind, name: &str) -> Vec<PushProgress> {
    store
        .push_progress(kind, name)
        .await
        .expect("push progress")
}

async fn attempts(store: &dyn MasterStore, kind: PushKind, name: &str) -> Vec<PushAttempt> {
    store
        .push_attempts(kind, name, 1_000)
        .await
        .expect("push attempts")
}

async fn claim_at(
    store: &dyn MasterStore,
    kind: PushKind,
    name: &str,
    owner: &str,
    now_ms: i64,
) -> Option<u64> {
    store
        .claim_push(kind, name, owner, now_ms, 500)
        .await
        .expect("claim")
}

async fn renew(
    store: &dyn MasterStore,
    kind: PushKind,
    name: &str,
    epoch: u64,
    now_ms: i64,
    status: Option<&str>,
) -> bool {
    store
        .renew_push(kind, name, epoch, now_ms, 500, status)
        .await
        .expect("renew")
}

async fn release(store: &dyn MasterStore, kind: PushKind, name: &str, epoch: u64) -> bool {
    store
        .release_push(kind, name, epoch)
        .await
        .expect("release")
}

/// Progress written under `epoch`.
async fn set(
    store: &dyn MasterStore,
    kind: PushKind,
    name: &str,
    epoch: u64,
    entries: &[PushProgress],
) -> bool {
    store
        .set_push_progress(kind, name, epoch, entries)
        .await
        .expect("set progress")
}

async fn claim_ok(
    store: &dyn MasterStore,
    kind: PushKind,
    name: &str,
    owner: &str,
    now: i64,
) -> u64 {
    claim_at(store, kind, name, owner, now)
        .await
        .expect("the claim is free")
}

pub(crate) async fn push_definitions_are_revised_only_when_changed(store: &dyn MasterStore) {
    assert_eq!(store.push(WEBHOOK, "orders").await.unwrap(), None);
    assert!(store.pushes(WEBHOOK).await.unwrap().is_empty());

    let v1 = r#"{"url":"https://example.com/hook"}"#;
    let created = stored(WEBHOOK, "orders", v1, 1, 1, 1);
    assert_eq!(
        put(store, WEBHOOK, "orders", v1, None, 1).await,
        (PushPut::Created, Some(created.clone()))
    );
    assert_eq!(
        store.push(WEBHOOK, "orders").await.unwrap(),
        Some(created.clone())
    );

    // The same text again changes nothing, not even the time.
    assert_eq!(
        put(store, WEBHOOK, "orders", v1, None, 2).await,
        (PushPut::Unchanged, Some(created.clone()))
    );

    // Text that differs, even only in its spacing, is a change; created_at is kept.
    let v2 = r#"{"url": "https://example.com/hook"}"#;
    let updated = stored(WEBHOOK, "orders", v2, 2, 1, 3);
    assert_eq!(
        put(store, WEBHOOK, "orders", v2, None, 3).await,
        (PushPut::Updated, Some(updated.clone()))
    );
    assert_eq!(
        put(store, WEBHOOK, "orders", v2, None, 4).await,
        (PushPut::Unchanged, Some(updated))
    );
    // Going back to an earlier text is a change too.
    let orders = stored(WEBHOOK, "orders", v1, 3, 1, 5);
    assert_eq!(
        put(store, WEBHOOK, "orders", v1, None, 5).await,
        (PushPut::Updated, Some(orders.clone()))
    );

    // Listed by name in byte order ('-' < '0' < '_' < 'a'), each with its own revision.
    let huge = format!(
        r#"{{"headers":"{}","note":"ünïcödé ✓"}}"#,
        "x".repeat(1 << 20)
    );
    for (name, definition) in [
        ("a_b", "{}"),
        ("ab", huge.as_str()),
        ("a0", ""),
        ("a-b", "[]"),
    ] {
        assert_eq!(
            put(store, WEBHOOK, name, definition, None, 7).await.0,
            PushPut::Created
        );
    }
    assert_eq!(
        put(store, WEBHOOK, "a0", " ", None, 9).await.0,
        PushPut::Updated
    );
    let listed = store.pushes(WEBHOOK).await.unwrap();
    assert_eq!(
        listed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["a-b", "a0", "a_b", "ab", "orders"]
    );
    assert_eq!(
        listed.iter().map(|s| s.revision).collect::<Vec<_>>(),
        [1, 2, 1, 1, 3]
    );
    assert_eq!(listed[1], stored(WEBHOOK, "a0", " ", 2, 7, 9));
    assert_eq!(listed[3].definition, huge, "large definitions round-trip");
    assert_eq!(listed[4], orders);
}

pub(crate) async fn push_puts_compare_and_set(store: &dyn MasterStore) {
    // Some(0): only if the target does not exist.
    assert_eq!(
        put(store, SINK, "orders", "{}", Some(1), 1).await,
        (PushPut::Conflict, None),
        "a revision expected of a target that does not exist"
    );
    assert_eq!(store.push(SINK, "orders").await.unwrap(), None);
    let v1 = stored(SINK, "orders", "{}", 1, 2, 2);
    assert_eq!(
        put(store, SINK, "orders", "{}", Some(0), 2).await,
        (PushPut::Created, Some(v1.clone()))
    );
    for (expected, definition) in [
        (Some(0), "{}"),
        (Some(0), "{\"a\":1}"),
        (Some(2), "{\"a\":1}"),
        (Some(2), "{}"),
        (Some(u64::MAX), "x"),
    ] {
        assert_eq!(
            put(store, SINK, "orders", definition, expected, 3).await,
            (PushPut::Conflict, Some(v1.clone())),
            "{expected:?} {definition}: the stored revision is 1"
        );
    }
    assert_eq!(
        put(store, SINK, "orders", "{}", Some(1), 4).await,
        (PushPut::Unchanged, Some(v1)),
        "the same text at the expected revision"
    );
    let v2 = stored(SINK, "orders", "{\"a\":1}", 2, 2, 5);
    assert_eq!(
        put(store, SINK, "orders", "{\"a\":1}", Some(1), 5).await,
        (PushPut::Updated, Some(v2.clone()))
    );
    // Two writers that read revision 1: the second one's change is refused, not lost.
    assert_eq!(
        put(store, SINK, "orders", "{\"b\":1}", Some(1), 6).await,
        (PushPut::Conflict, Some(v2.clone()))
    );
    assert_eq!(store.push(SINK, "orders").await.unwrap(), Some(v2));
    assert_eq!(
        put(store, SINK, "orders", "{\"b\":1}", Some(2), 7).await,
        (
            PushPut::Updated,
            Some(stored(SINK, "orders", "{\"b\":1}", 3, 2, 7))
        )
    );
}

pub(crate) async fn push_kinds_are_separate_namespaces(store: &dyn MasterStore) {
    put(store, WEBHOOK, "orders", "{\"w\":1}", None, 1).await;
    assert_eq!(store.push(SINK, "orders").await.unwrap(), None);
    assert!(store.pushes(SINK).await.unwrap().is_empty());
    assert_eq!(
        claim_at(store, SINK, "orders", "a", 0).await,
        None,
        "a sink without a definition, whatever the webhooks"
    );
    assert!(
        !store
            .replace_push_progress(SINK, "orders", &[progress("items", "acme", 1, None)])
            .await
            .unwrap()
    );
    store
        .record_push_attempts(SINK, "orders", &[attempt(0)], 10)
        .await
        .unwrap();
    assert!(attempts(store, SINK, "orders").await.is_empty());

    assert_eq!(
        put(store, SINK, "orders", "{\"s\":1}", Some(0), 2).await,
        (
            PushPut::Created,
            Some(stored(SINK, "orders", "{\"s\":1}", 1, 2, 2))
        )
    );
    let w = claim_ok(store, WEBHOOK, "orders", "a", 0).await;
    assert_eq!(w, 1);
    assert_eq!(claim_ok(store, SINK, "orders", "b", 0).await, 1);
    assert!(
        set(
            store,
            WEBHOOK,
            "orders",
            w,
            &[progress("items", "acme", 5, None)]
        )
        .await
    );
    store
        .record_push_attempts(WEBHOOK, "orders", &[attempt(1)], 10)
        .await
        .unwrap();

    assert_eq!(
        claims(store, WEBHOOK).await,
        [claim("orders", "a", 1, 500, None)]
    );
    assert_eq!(
        claims(store, SINK).await,
        [claim("orders", "b", 1, 500, None)]
    );
    assert!(entries(store, SINK, "orders").await.is_empty());
    assert!(attempts(store, SINK, "orders").await.is_empty());
    assert_eq!(attempts(store, WEBHOOK, "orders").await, [attempt(1)]);

    // Deleting the sink leaves the webhook of the same name alone.
    assert!(store.delete_push(SINK, "orders").await.unwrap());
    assert!(!store.delete_push(SINK, "orders").await.unwrap());
    assert_eq!(
        store
            .push(WEBHOOK, "orders")
            .await
            .unwrap()
            .unwrap()
            .revision,
        1
    );
    assert_eq!(
        claims(store, WEBHOOK).await,
        [claim("orders", "a", 1, 500, None)]
    );
    assert!(claims(store, SINK).await.is_empty());
    assert_eq!(
        entries(store, WEBHOOK, "orders").await,
        [progress("items", "acme", 5, None)]
    );
    assert_eq!(attempts(store, WEBHOOK, "orders").await, [attempt(1)]);
    assert!(renew(store, WEBHOOK, "orders", w, 100, None).await);
}

pub(crate) async fn push_claim_lifecycle(store: &dyn MasterStore) {
    assert_eq!(
        claim_at(store, WEBHOOK, "orders", "a", 1_000).await,
        None,
        "a target without a definition cannot be claimed"
    );
    assert!(claims(store, WEBHOOK).await.is_empty());
    put(store, WEBHOOK, "orders", "{}", None, 0).await;
    assert!(
        !renew(store, WEBHOOK, "orders", 1, 0, None).await,
        "nothing to renew before the first claim"
    );
    assert!(!release(store, WEBHOOK, "orders", 1).await);
    assert!(
        claims(store, WEBHOOK).await.is_empty(),
        "targets never claimed are absent"
    );
    assert_eq!(
        claim_at(store, WEBHOOK, "orders", "a", 1_000).await,
        Some(1),
        "the first claim is epoch 1"
    );
    assert_eq!(
        claims(store, WEBHOOK).await,
        [claim("orders", "a", 1, 1_500, None)]
    );
    for now in [1_200, 1_499] {
        assert_eq!(claim_at(store, WEBHOOK, "orders", "b", now).await, None);
    }
    let status = r#"{"lag":3,"delivered":10}"#;
    assert!(renew(store, WEBHOOK, "orders", 1, 1_400, Some(status)).await);
    assert_eq!(
        claims(store, WEBHOOK).await,
        [claim("orders", "a", 1, 1_900, Some(status))]
    );
    assert_eq!(claim_at(store, WEBHOOK, "orders", "b", 1_899).await, None);
    assert_eq!(
        claim_at(store, WEBHOOK, "orders", "b", 1_900).await,
        Some(2),
        "another owner takes the claim once the lease expired"
    );
    assert_eq!(
        claims(store, WEBHOOK).await,
        [claim("orders", "b", 2, 2_400, Some(status))],
        "the status is kept across claims"
    );

    // a was fenced: its renewals, releases and progress writes change nothing.
    assert!(
        !store
            .renew_push(WEBHOOK, "orders", 1, 1_950, 10_000, Some("stale"))
            .await
            .unwrap()
    );
    assert!(!release(store, WEBHOOK, "orders", 1).await);
    assert!(
        !set(
            store,
            WEBHOOK,
            "orders",
            1,
            &[progress("items", "acme", 1, None)]
        )
        .await
    );
    assert_eq!(
        claims(store, WEBHOOK).await,
        [claim("orders", "b", 2, 2_400, Some(status))]
    );
    assert!(entries(store, WEBHOOK, "orders").await.is_empty());

    // A lease that expired can be renewed while nobody took the claim over; without a status
    // the stored one stays.
    assert!(renew(store, WEBHOOK, "orders", 2, 9_000, None).await);
    assert_eq!(
        claims(store, WEBHOOK).await,
        [claim("orders", "b", 2, 9_500, Some(status))]
    );
    assert_eq!(claim_at(store, WEBHOOK, "orders", "c", 9_499).await, None);
    // The same owner (restarted) takes its own claim at once, with a new epoch.
    assert_eq!(
        claim_at(store, WEBHOOK, "orders", "b", 9_100).await,
        Some(3)
    );
    assert!(!renew(store, WEBHOOK, "orders", 2, 9_100, None).await);
    assert!(renew(store, WEBHOOK, "orders", 3, 9_200, Some("")).await);
    assert_eq!(
        claims(store, WEBHOOK).await,
        [claim("orders", "b", 3, 9_700, Some(""))],
        "an empty status is stored as empty, not as none"
    );

    // A release frees the claim at once for anyone, keeping owner, epoch and status.
    assert!(!release(store, WEBHOOK, "orders", 2).await);
    assert!(release(store, WEBHOOK, "orders", 3).await);
    assert_eq!(
        claims(store, WEBHOOK).await,
        [claim("orders", "b", 3, i64::MIN, Some(""))]
    );
    assert_eq!(
        claim_at(store, WEBHOOK, "orders", "c", i64::MIN).await,
        Some(4),
        "a released claim is free whatever the time"
    );
    assert!(!release(store, WEBHOOK, "orders", 3).await);

    // Targets are claimed independently, listed by name.
    put(store, WEBHOOK, "billing", "{}", None, 0).await;
    assert_eq!(
        claim_at(store, WEBHOOK, "billing", "d", 10_000).await,
        Some(1)
    );
    assert_eq!(
        claims(store, WEBHOOK).await,
        [
            claim("billing", "d", 1, 10_500, None),
            claim("orders", "c", 4, i64::MIN + 500, Some(""))
        ]
    );

    assert!(
        matches!(
            store
                .renew_push(WEBHOOK, "orders", u64::MAX, 10_000, 500, None)
                .await,
            Err(StoreError::OutOfRange { .. })
        ),
        "an epoch beyond the store's integers is an error, not a wrap"
    );
    assert!(matches!(
        store.release_push(WEBHOOK, "orders", u64::MAX).await,
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(matches!(
        store
            .set_push_progress(WEBHOOK, "orders", u64::MAX, &[])
            .await,
        Err(StoreError::OutOfRange { .. })
    ));
}

pub(crate) async fn push_progress_is_written_under_the_current_epoch(store: &dyn MasterStore) {
    put(store, WEBHOOK, "orders", "{}", None, 0).await;
    let first = [progress("items", "acme", 3, None)];
    assert!(
        !set(store, WEBHOOK, "orders", 1, &first).await,
        "no claim, no progress"
    );
    assert!(entries(store, WEBHOOK, "orders").await.is_empty());
    let epoch = claim_ok(store, WEBHOOK, "orders", "a", 0).await;
    assert!(set(store, WEBHOOK, "orders", epoch, &[]).await);
    assert!(set(store, WEBHOOK, "orders", epoch, &first).await);
    assert_eq!(entries(store, WEBHOOK, "orders").await, first);

    // Entries are listed by (dataset, tenant) in byte order, whatever the order written; each
    // replaces its own, and a state comes and goes. Within one call the last entry of a
    // (dataset, tenant) is the one kept.
    let retrying = r#"{"message":"msg_1","end":9,"attempts":2,"next_at_ms":1234}"#;
    assert!(
        set(
            store,
            WEBHOOK,
            "orders",
            epoch,
            &[
                progress("orders", "acme", 1, Some(retrying)),
                progress("items", "globex", 4, Some("")),
                progress("items", "acme_eu", 2, None),
                progress("items", "acme-eu", 8, Some("first")),
                progress("items", "acme", 9, Some(retrying)),
                progress("items", "acme-eu", 6, Some("last")),
                progress("items-2", "acme", 1, None),
            ]
        )
        .await
    );
    let mut expected = vec![
        progress("items", "acme", 9, Some(retrying)),
        progress("items", "acme-eu", 6, Some("last")),
        progress("items", "acme_eu", 2, None),
        progress("items", "globex", 4, Some("")),
        progress("items-2", "acme", 1, None),
        progress("orders", "acme", 1, Some(retrying)),
    ];
    assert_eq!(entries(store, WEBHOOK, "orders").await, expected);
    assert!(
        set(
            store,
            WEBHOOK,
            "orders",
            epoch,
            &[progress("items", "acme", 10, None)]
        )
        .await
    );
    expected[0] = progress("items", "acme", 10, None);
    assert_eq!(
        entries(store, WEBHOOK, "orders").await,
        expected,
        "the state went"
    );

    // A release keeps the epoch, so the holder's writes still land until someone claims.
    assert!(release(store, WEBHOOK, "orders", epoch).await);
    assert!(
        set(
            store,
            WEBHOOK,
            "orders",
            epoch,
            &[progress("items", "acme", 11, None)]
        )
        .await
    );
    expected[0] = progress("items", "acme", 11, None);
    let next = claim_ok(store, WEBHOOK, "orders", "b", 0).await;
    assert_eq!(next, epoch + 1);

    // A stale epoch writes nothing, none of its entries.
    assert!(
        !set(
            store,
            WEBHOOK,
            "orders",
            epoch,
            &[
                progress("items", "acme", 12, None),
                progress("zzz", "acme", 1, None)
            ]
        )
        .await
    );
    assert_eq!(entries(store, WEBHOOK, "orders").await, expected);
    // All or none also when an entry cannot be stored.
    let mut huge = progress("zzz", "acme", 1, None);
    huge.position.next_seq = u64::MAX;
    assert!(matches!(
        store
            .set_push_progress(
                WEBHOOK,
                "orders",
                next,
                &[progress("items", "acme", 13, None), huge]
            )
            .await,
        Err(StoreError::OutOfRange { .. })
    ));
    assert_eq!(entries(store, WEBHOOK, "orders").await, expected);

    // Another target's progress is its own.
    put(store, WEBHOOK, "billing", "{}", None, 0).await;
    assert!(entries(store, WEBHOOK, "billing").await.is_empty());
    assert!(
        !set(store, WEBHOOK, "billing", next, &first).await,
        "an epoch of another target"
    );
    assert!(entries(store, WEBHOOK, "billing").await.is_empty());
    assert!(entries(store, WEBHOOK, "nothing").await.is_empty());
}

pub(crate) async fn replacing_progress_fences_the_holder(store: &dyn MasterStore) {
    let replay = [
        progress("items", "acme", 0, None),
        progress("items", "globex", 2, None),
    ];
    assert!(
        !store
            .replace_push_progress(WEBHOOK, "orders", &replay)
            .await
            .unwrap(),
        "no target, nothing written"
    );
    assert!(entries(store, WEBHOOK, "orders").await.is_empty());
    put(store, WEBHOOK, "orders", "{}", None, 0).await;
    let epoch = claim_ok(store, WEBHOOK, "orders", "a", 1_000).await;
    assert!(renew(store, WEBHOOK, "orders", epoch, 1_000, Some("st")).await);
    let before = [
        progress("items", "acme", 40, Some("retrying")),
        progress("orders", "acme", 7, None),
    ];
    assert!(set(store, WEBHOOK, "orders", epoch, &before).await);

    assert!(
        store
            .replace_push_progress(WEBHOOK, "orders", &replay)
            .await
            .unwrap()
    );
    let replaced = vec![replay[0].clone(), replay[1].clone(), before[1].clone()];
    assert_eq!(
        entries(store, WEBHOOK, "orders").await,
        replaced,
        "entries not given are kept"
    );
    assert_eq!(
        claims(store, WEBHOOK).await,
        [claim("orders", "a", epoch + 1, i64::MIN, Some("st"))],
        "fenced: a new epoch, the lease ended, owner and status kept"
    );
    // The holder learns at its next write, and its writes never land.
    assert!(!set(store, WEBHOOK, "orders", epoch, &before).await);
    assert!(!renew(store, WEBHOOK, "orders", epoch, 1_100, None).await);
    assert!(!release(store, WEBHOOK, "orders", epoch).await);
    assert_eq!(entries(store, WEBHOOK, "orders").await, replaced);
    // Whoever claims next (at once, whatever the time) reads the replay.
    assert_eq!(
        claim_at(store, WEBHOOK, "orders", "b", i64::MIN).await,
        Some(epoch + 2)
    );
    assert_eq!(entries(store, WEBHOOK, "orders").await, replaced);

    // A target never claimed has no holder to fence: its first claim reads the entries.
    put(store, WEBHOOK, "billing", "{}", None, 0).await;
    assert!(
        store
            .replace_push_progress(WEBHOOK, "billing", &replay)
            .await
            .unwrap()
    );
    assert!(
        store
            .replace_push_progress(WEBHOOK, "billing", &[])
            .await
            .unwrap()
    );
    assert_eq!(
        claims(store, WEBHOOK)
            .await
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["orders"]
    );
    assert_eq!(claim_ok(store, WEBHOOK, "billing", "c", 0).await, 1);
    assert_eq!(entries(store, WEBHOOK, "billing").await, replay);
    let mut huge = progress("zzz", "acme", 1, None);
    huge.position.live_from = u64::MAX;
    assert!(matches!(
        store
            .replace_push_progress(WEBHOOK, "billing", &[huge])
            .await,
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(
        renew(store, WEBHOOK, "billing", 1, 0, None).await,
        "a replay that failed fenced nobody"
    );
}

pub(crate) async fn deleting_a_push_target_removes_everything_kept_for_it(store: &dyn MasterStore) {
    assert!(!store.delete_push(WEBHOOK, "orders").await.unwrap());
    for name in ["orders", "billing"] {
        put(store, WEBHOOK, name, "{}", None, 1).await;
        put(store, WEBHOOK, name, "{\"v\":2}", None, 2).await;
        for owner in ["a", "a", "b"] {
            // Three claims (the last after a's lease expired), then a replay: epoch 4.
            store
                .claim_push(
                    WEBHOOK,
                    name,
                    owner,
                    if owner == "b" { 10_000 } else { 0 },
                    500,
                )
                .await
                .unwrap();
        }
        assert!(
            store
                .replace_push_progress(WEBHOOK, name, &[progress("items", "acme", 1, None)])
                .await
                .unwrap()
        );
        assert_eq!(claim_ok(store, WEBHOOK, name, "b", 10_000).await, 5);
        assert!(
            store
                .renew_push(WEBHOOK, name, 5, 10_000, 500, Some("st"))
                .await
                .unwrap()
        );
        assert!(
            store
                .set_push_progress(
                    WEBHOOK,
                    name,
                    5,
                    &[progress("items", "globex", 3, Some("s"))]
                )
                .await
                .unwrap()
        );
        store
            .record_push_attempts(WEBHOOK, name, &[attempt(0), attempt(1)], 10)
            .await
            .unwrap();
    }
    let billing = (
        store.push(WEBHOOK, "billing").await.unwrap(),
        entries(store, WEBHOOK, "billing").await,
        attempts(store, WEBHOOK, "billing").await,
    );
    assert_eq!(billing.1.len(), 2);

    assert!(store.delete_push(WEBHOOK, "orders").await.unwrap());
    assert_eq!(store.push(WEBHOOK, "orders").await.unwrap(), None);
    assert_eq!(
        claims(store, WEBHOOK).await,
        [claim("billing", "b", 5, 10_500, Some("st"))]
    );
    assert!(entries(store, WEBHOOK, "orders").await.is_empty());
    assert!(attempts(store, WEBHOOK, "orders").await.is_empty());
    // The holder learns at its next write; nothing can be written for a deleted target.
    assert!(!renew(store, WEBHOOK, "orders", 5, 10_100, None).await);
    assert!(
        !set(
            store,
            WEBHOOK,
            "orders",
            5,
            &[progress("items", "acme", 9, None)]
        )
        .await
    );
    assert!(!release(store, WEBHOOK, "orders", 5).await);
    assert!(
        !store
            .replace_push_progress(WEBHOOK, "orders", &[progress("items", "acme", 9, None)])
            .await
            .unwrap()
    );
    assert_eq!(claim_at(store, WEBHOOK, "orders", "c", 10_100).await, None);
    store
        .record_push_attempts(WEBHOOK, "orders", &[attempt(2)], 10)
        .await
        .unwrap();
    assert!(entries(store, WEBHOOK, "orders").await.is_empty());
    assert!(attempts(store, WEBHOOK, "orders").await.is_empty());
    assert!(
        claims(store, WEBHOOK)
            .await
            .iter()
            .all(|c| c.name != "orders")
    );
    assert!(!store.delete_push(WEBHOOK, "orders").await.unwrap());

    // The other target is untouched.
    assert_eq!(
        (
            store.push(WEBHOOK, "billing").await.unwrap(),
            entries(store, WEBHOOK, "billing").await,
            attempts(store, WEBHOOK, "billing").await,
        ),
        billing
    );

    // Created again, the target starts afresh, with epochs above the old ones: the old holder
    // (epoch 5) is fenced from the new target.
    assert_eq!(
        put(store, WEBHOOK, "orders", "{\"v\":2}", Some(0), 20).await,
        (
            PushPut::Created,
            Some(stored(WEBHOOK, "orders", "{\"v\":2}", 1, 20, 20))
        )
    );
    assert!(entries(store, WEBHOOK, "orders").await.is_empty());
    assert!(attempts(store, WEBHOOK, "orders").await.is_empty());
    assert!(
        claims(store, WEBHOOK)
            .await
            .iter()
            .all(|c| c.name != "orders")
    );
    assert!(
        !set(
            store,
            WEBHOOK,
            "orders",
            5,
            &[progress("items", "acme", 9, None)]
        )
        .await
    );
    assert_eq!(
        claim_at(store, WEBHOOK, "orders", "c", 10_100).await,
        Some(6),
        "the old claim (b's live lease) is gone, its epoch is not reused"
    );
    assert!(!renew(store, WEBHOOK, "orders", 5, 10_100, None).await);
    assert!(
        !set(
            store,
            WEBHOOK,
            "orders",
            5,
            &[progress("items", "acme", 9, None)]
        )
        .await
    );
    assert!(entries(store, WEBHOOK, "orders").await.is_empty());
    assert_eq!(
        claims(store, WEBHOOK).await,
        [
            claim("billing", "b", 5, 10_500, Some("st")),
            claim("orders", "c", 6, 10_600, None)
        ],
        "the status went with the old target"
    );

    // Deleted again, now at epoch 6, and once more created: the epochs go on rising.
    assert!(store.delete_push(WEBHOOK, "orders").await.unwrap());
    put(store, WEBHOOK, "orders", "{}", None, 30).await;
    assert!(
        store
            .replace_push_progress(WEBHOOK, "orders", &[progress("items", "acme", 1, None)])
            .await
            .unwrap()
    );
    assert_eq!(claim_ok(store, WEBHOOK, "orders", "d", 0).await, 7);
    // A target deleted before its first claim gets epoch 1 when created again.
    put(store, SINK, "fresh", "{}", None, 0).await;
    assert!(store.delete_push(SINK, "fresh").await.unwrap());
    put(store, SINK, "fresh", "{}", None, 0).await;
    assert_eq!(claim_ok(store, SINK, "fresh", "d", 0).await, 1);
}

pub(crate) async fn push_attempts_are_bounded_newest_first(store: &dyn MasterStore) {
    store
        .record_push_attempts(WEBHOOK, "orders", &[attempt(0)], 10)
        .await
        .unwrap();
    assert!(
        attempts(store, WEBHOOK, "orders").await.is_empty(),
        "no target, nothing recorded"
    );
    put(store, WEBHOOK, "orders", "{}", None, 0).await;
    put(store, WEBHOOK, "billing", "{}", None, 0).await;
    store
        .record_push_attempts(WEBHOOK, "orders", &[], 3)
        .await
        .unwrap();
    assert!(attempts(store, WEBHOOK, "orders").await.is_empty());

    let five: Vec<_> = (0..5).map(attempt).collect();
    store
        .record_push_attempts(WEBHOOK, "orders", &five, 10)
        .await
        .unwrap();
    let newest_first: Vec<_> = five.iter().rev().cloned().collect();
    assert_eq!(
        attempts(store, WEBHOOK, "orders").await,
        newest_first,
        "the last recorded first"
    );
    assert_eq!(
        store.push_attempts(WEBHOOK, "orders", 2).await.unwrap(),
        newest_first[..2]
    );
    assert!(
        store
            .push_attempts(WEBHOOK, "orders", 0)
            .await
            .unwrap()
            .is_empty()
    );

    // Newest is the last recorded, whatever its time says.
    let mut late = attempt(5);
    late.at = at_micros(-1);
    late.error = Some(String::new());
    late.status = Some(u16::MAX);
    late.records = u32::MAX;
    late.latency_ms = u32::MAX;
    store
        .record_push_attempts(WEBHOOK, "orders", &[late.clone(), attempt(6)], 4)
        .await
        .unwrap();
    assert_eq!(
        attempts(store, WEBHOOK, "orders").await,
        [attempt(6), late.clone(), attempt(4), attempt(3)],
        "the oldest beyond the newest 4 were dropped"
    );

    // Another target's bound is its own, and keeping none drops everything.
    store
        .record_push_attempts(WEBHOOK, "billing", &[attempt(7), attempt(8)], 1)
        .await
        .unwrap();
    assert_eq!(attempts(store, WEBHOOK, "billing").await, [attempt(8)]);
    assert_eq!(attempts(store, WEBHOOK, "orders").await.len(), 4);
    store
        .record_push_attempts(WEBHOOK, "orders", &[attempt(9)], 0)
        .await
        .unwrap();
    assert!(attempts(store, WEBHOOK, "orders").await.is_empty());
    store
        .record_push_attempts(WEBHOOK, "orders", &[attempt(10)], 5)
        .await
        .unwrap();
    assert_eq!(attempts(store, WEBHOOK, "orders").await, [attempt(10)]);
    assert_eq!(attempts(store, WEBHOOK, "billing").await, [attempt(8)]);
}

/// Several instances start the same target at once, when it was never claimed, when its lease
/// expired and when it was released: exactly one gets it each time.
pub(crate) async fn push_claim_racers_one_wins(store: Arc<dyn MasterStore>) {
    const RACERS: usize = 8;
    put(&*store, SINK, "orders", "{}", None, 0).await;
    for (round, now) in [(1u64, 1_000i64), (2, 2_000), (3, 2_500)] {
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
        let tasks: Vec<_> = (0..RACERS)
            .map(|i| {
                let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    let epoch = store
                        .claim_push(SINK, "orders", &format!("owner-{i}"), now, 1_000)
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
            claims(&*store, SINK).await,
            [claim(
                "orders",
                &format!("owner-{winner}"),
                round,
                now + 1_000,
                None
            )]
        );
        for i in (0..RACERS).filter(|&i| i != winner) {
            assert_eq!(
                store
                    .claim_push(SINK, "orders", &format!("owner-{i}"), now + 999, 1_000)
                    .await
                    .unwrap(),
                None
            );
        }
        if round == 2 {
            // Round 3 races for a released claim, before its lease would have expired.
            assert!(release(&*store, SINK, "orders", round).await);
        }
    }
}

/// A holder writes progress while a replay moves the same position: whatever the holder wrote
/// before the replay is replaced, and nothing it writes after it lands.
pub(crate) async fn push_progress_racing_a_replay_never_lands_after_it(
    store: Arc<dyn MasterStore>,
) {
    const ROUNDS: usize = 20;
    put(&*store, WEBHOOK, "orders", "{}", None, 0).await;
    let replay = [progress("items", "acme", 0, Some("replayed"))];
    for round in 0..ROUNDS {
        let epoch = claim_ok(&*store, WEBHOOK, "orders", "holder", i64::MAX - 1_000).await;
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let holder = {
            let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                let mut seq = 1;
                while store
                    .set_push_progress(
                        WEBHOOK,
                        "orders",
                        epoch,
                        &[progress("items", "acme", seq, None)],
                    )
                    .await
                    .expect("progress")
                {
                    seq += 1;
                }
                seq - 1
            })
        };
        barrier.wait().await;
        assert!(
            store
                .replace_push_progress(WEBHOOK, "orders", &replay)
                .await
                .unwrap()
        );
        let landed = holder.await.unwrap();
        assert_eq!(
            entries(&*store, WEBHOOK, "orders").await,
            replay,
            "round {round}: the holder wrote {landed} positions, none after the replay"
        );
    }
}

/// Instances claim a target never claimed while a replay writes its progress: the winner either
/// claimed after the replay (and reads its entries) or before it (and is fenced).
pub(crate) async fn push_claims_racing_a_replay_read_it_or_are_fenced(store: Arc<dyn MasterStore>) {
    const ROUNDS: usize = 20;
    const CLAIMERS: usize = 3;
    let replay = [progress("items", "acme", 7, Some("replayed"))];
    for round in 0..ROUNDS {
        let name = format!("t{round}");
        put(&*store, WEBHOOK, &name, "{}", None, 0).await;
        let barrier = Arc::new(tokio::sync::Barrier::new(CLAIMERS + 1));
        let claimers: Vec<_> = (0..CLAIMERS)
            .map(|i| {
                let (store, barrier, name) =
                    (Arc::clone(&store), Arc::clone(&barrier), name.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let epoch = store
                        .claim_push(WEBHOOK, &name, &format!("c{i}"), 0, 1_000)
                        .await
                        .expect("claim")?;
                    // What a holder starts from.
                    Some((
                        epoch,
                        store.push_progress(WEBHOOK, &name).await.expect("progress"),
                    ))
                })
            })
            .collect();
        barrier.wait().await;
        assert!(
            store
                .replace_push_progress(WEBHOOK, &name, &replay)
                .await
                .unwrap()
        );
        let mut won = Vec::new();
        for c in claimers {
            won.extend(c.await.unwrap());
        }
        let current = claims(&*store, WEBHOOK)
            .await
            .into_iter()
            .find(|c| c.name == name)
            .expect("claimed");
        // A claim fenced by the replay is free again: another claimer may have taken it after.
        assert!(!won.is_empty(), "round {round}");
        for (epoch, read) in won {
            if epoch == current.epoch {
                assert_eq!(
                    read, replay,
                    "round {round}: unfenced, so it read the replay"
                );
            } else {
                assert!(epoch < current.epoch, "round {round}");
                assert!(
                    !store
                        .renew_push(WEBHOOK, &name, epoch, 0, 1_000, None)
                        .await
                        .unwrap()
                );
            }
        }
        assert_eq!(entries(&*store, WEBHOOK, &name).await, replay);
    }
}

/// Claimers, progress writers, replays and recorders race a delete: whatever committed before
/// it is gone with it, and nothing that came after it leaves anything behind, so the target
/// created again starts afresh, with epochs above any the racers got.
pub(crate) async fn push_delete_racing_writes_leaves_nothing(store: Arc<dyn MasterStore>) {
    const ROUNDS: usize = 20;
    const RACERS: usize = 3;
    let mut highest = 0;
    for round in 0..ROUNDS {
        assert_eq!(
            put(&*store, WEBHOOK, "orders", "{}", None, 0).await.0,
            PushPut::Created,
            "round {round}"
        );
        assert!(
            entries(&*store, WEBHOOK, "orders").await.is_empty(),
            "round {round}"
        );
        // A holder whose claim the delete races, and whose epoch must never come back.
        let held = claim_ok(&*store, WEBHOOK, "orders", "holder", 0).await;
        assert!(
            held > highest,
            "round {round}: epoch {held} after {highest}"
        );
        highest = held;
        let barrier = Arc::new(tokio::sync::Barrier::new(4 * RACERS + 1));
        let mut tasks = Vec::new();
        for i in 0..RACERS {
            let entry = [progress("items", "acme", i as u64 + 1, None)];
            let (s, b) = (Arc::clone(&store), Arc::clone(&barrier));
            tasks.push(tokio::spawn(async move {
                b.wait().await;
                // Past the holder's lease: a takeover.
                s.claim_push(WEBHOOK, "orders", &format!("c{i}"), 1_000, 500)
                    .await
                    .expect("claim")
                    .unwrap_or(0)
            }));
            let (s, b, e) = (Arc::clone(&store), Arc::clone(&barrier), entry.clone());
            tasks.push(tokio::spawn(async move {
                b.wait().await;
                s.set_push_progress(WEBHOOK, "orders", held, &e)
                    .await
                    .expect("progress");
                0
            }));
            let (s, b, e) = (Arc::clone(&store), Arc::clone(&barrier), entry);
            tasks.push(tokio::spawn(async move {
                b.wait().await;
                s.replace_push_progress(WEBHOOK, "orders", &e)
                    .await
                    .expect("replay");
                0
            }));
            let (s, b) = (Arc::clone(&store), Arc::clone(&barrier));
            tasks.push(tokio::spawn(async move {
                b.wait().await;
                s.record_push_attempts(WEBHOOK, "orders", &[attempt(i as u32)], 2)
                    .await
                    .expect("record");
                0
            }));
        }
        barrier.wait().await;
        assert!(
            store.delete_push(WEBHOOK, "orders").await.unwrap(),
            "round {round}"
        );
        for t in tasks {
            highest = highest.max(t.await.unwrap());
        }
        assert!(claims(&*store, WEBHOOK).await.is_empty(), "round {round}");
        assert!(
            entries(&*store, WEBHOOK, "orders").await.is_empty(),
            "round {round}"
        );
        assert!(
            attempts(&*store, WEBHOOK, "orders").await.is_empty(),
            "round {round}"
        );
    }
}
