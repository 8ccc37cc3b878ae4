//! Subscriptions: create, update, delete, and acknowledged progress.

use chrono::{DateTime, Utc};
use tenantsync_core::SubscriptionName;
use tenantsync_store::{FeedPosition, MasterStore, Progress, Subscription, TenantSelection};

use crate::common::*;

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

pub(crate) async fn subscriptions_crud_and_acks(store: &dyn MasterStore) {
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
