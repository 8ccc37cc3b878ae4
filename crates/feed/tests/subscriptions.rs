//! Subscription batches over a real SQLite master store.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::Fixture;
use serde_json::{Value, json};
use tenantsync_core::{SubscriptionName, TenantId};
use tenantsync_feed::CursorKey;
use tenantsync_feed::subscriptions::{ack, next_batch};
use tenantsync_store::{Subscription, TenantSelection};

static KEY: std::sync::LazyLock<CursorKey> = std::sync::LazyLock::new(|| CursorKey::new(b"k"));

/// Some record data; `None` in its place deletes.
fn data() -> Option<Value> {
    Some(json!({"n": 1}))
}

impl Fixture {
    /// A subscription named `sub` to the dataset.
    async fn subscribe(&self, tenants: TenantSelection) -> Subscription {
        self.store
            .put_subscription(&Subscription {
                name: SubscriptionName::new("sub").unwrap(),
                datasets: vec![self.dataset.clone()],
                tenants,
                created_at: Utc::now(),
            })
            .await
            .unwrap()
            .0
    }
}

#[tokio::test]
async fn tenants_with_nothing_to_deliver_do_not_starve_the_others() {
    let mut f = Fixture::new().await;
    // 150 tenants whose only record was deleted: their snapshots are empty.
    for t in 0..150 {
        let tenant = format!("gone-{t:03}");
        f.write(&tenant, "r", data()).await;
        f.write(&tenant, "r", None).await;
    }
    // Sorted after all of them, so probed last.
    f.write("zz-live", "r", data()).await;
    let sub = f.subscribe(TenantSelection::All).await;

    let mut found = None;
    for _ in 0..5 {
        if let Some(batch) = next_batch(f.store.as_ref(), &f.hub, &sub, 10, Duration::ZERO)
            .await
            .unwrap()
        {
            found = Some(batch);
            break;
        }
    }
    let batch = found.expect("the live tenant's batch is found within a few fetches");
    assert_eq!(batch.tenant.as_str(), "zz-live");
    assert_eq!(batch.records.len(), 1);
    assert!(!batch.reset);

    ack(f.store.as_ref(), &KEY, &sub, &batch.cursor.encode(&KEY))
        .await
        .unwrap();
    assert_eq!(
        next_batch(f.store.as_ref(), &f.hub, &sub, 10, Duration::ZERO)
            .await
            .unwrap(),
        None,
        "everything delivered and acknowledged"
    );
}

#[tokio::test]
async fn a_batch_holds_one_tenant_and_is_redelivered_until_acknowledged() {
    let mut f = Fixture::new().await;
    for i in 0..3 {
        f.write("acme", &format!("a{i}"), data()).await;
        f.write("globex", &format!("g{i}"), data()).await;
    }
    let sub = f
        .subscribe(TenantSelection::Only(vec![
            TenantId::new("acme").unwrap(),
            TenantId::new("globex").unwrap(),
        ]))
        .await;
    let fetch = || next_batch(f.store.as_ref(), &f.hub, &sub, 2, Duration::ZERO);

    let first = fetch().await.unwrap().unwrap();
    assert!(
        first
            .records
            .iter()
            .all(|r| r.record.tenant == first.tenant)
    );
    assert_eq!(first.records.len(), 2);
    assert!(!first.up_to_date);
    assert_eq!(
        fetch().await.unwrap().unwrap(),
        first,
        "not acknowledged: the same batch again"
    );

    // Acknowledged: the other tenant, which was acknowledged less recently (never), goes next.
    ack(f.store.as_ref(), &KEY, &sub, &first.cursor.encode(&KEY))
        .await
        .unwrap();
    let second = fetch().await.unwrap().unwrap();
    assert_ne!(second.tenant, first.tenant);

    let mut delivered = first.records.len() + second.records.len();
    ack(f.store.as_ref(), &KEY, &sub, &second.cursor.encode(&KEY))
        .await
        .unwrap();
    while let Some(batch) = fetch().await.unwrap() {
        assert!(
            batch
                .records
                .iter()
                .all(|r| r.record.tenant == batch.tenant)
        );
        delivered += batch.records.len();
        ack(f.store.as_ref(), &KEY, &sub, &batch.cursor.encode(&KEY))
            .await
            .unwrap();
    }
    assert_eq!(delivered, 6);
}
