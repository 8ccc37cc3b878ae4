//! Where writers wait for their change to be applied (`?wait=applied`).
//!
//! The processor hands every batch's outcomes to the hub, which wakes exactly the writers
//! waiting for those changes: no polling of the store, no herd woken per batch. A change applied
//! by another instance (Kafka, shared store) never reaches this hub; writers cover that by
//! checking the store now and then (see the API).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tenantsync_core::{ChangeId, DatasetName, Outcome, TenantId};
use tenantsync_store::LoggedChange;
use tokio::sync::oneshot;

type Key = (DatasetName, TenantId, ChangeId);

#[derive(Default)]
pub struct AppliedHub {
    waiters: Mutex<HashMap<Key, Vec<(u64, oneshot::Sender<Outcome>)>>>,
    next_id: AtomicU64,
}

impl AppliedHub {
    /// Registers interest in a change. Register before checking the store, so an outcome that
    /// arrives in between is not missed.
    pub fn register(
        self: &Arc<Self>,
        dataset: &DatasetName,
        tenant: &TenantId,
        change_id: &ChangeId,
    ) -> Waiter {
        let key = (dataset.clone(), tenant.clone(), change_id.clone());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock().entry(key.clone()).or_default().push((id, tx));
        Waiter {
            hub: self.clone(),
            key,
            id,
            rx,
        }
    }

    /// Hands a batch's outcomes to whoever waits for them.
    pub(crate) fn notify(
        &self,
        dataset: &DatasetName,
        changes: &[LoggedChange],
        outcomes: &[Outcome],
    ) {
        let mut waiters = self.lock();
        if waiters.is_empty() {
            return;
        }
        for (c, outcome) in changes.iter().zip(outcomes) {
            let key = (
                dataset.clone(),
                c.change.tenant.clone(),
                c.change.change_id.clone(),
            );
            if let Some(list) = waiters.remove(&key) {
                for (_, tx) in list {
                    let _ = tx.send(outcome.clone());
                }
            }
        }
    }

    /// How many writers are waiting.
    pub fn waiting(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<(u64, oneshot::Sender<Outcome>)>>> {
        // A panic while holding this lock leaves the map consistent; keep serving.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One writer's wait for one change; unregisters itself when dropped.
pub struct Waiter {
    hub: Arc<AppliedHub>,
    key: Key,
    id: u64,
    rx: oneshot::Receiver<Outcome>,
}

impl Waiter {
    /// The outcome, once this instance's processor applies the change. Never returns if
    /// another instance applies it.
    pub async fn outcome(&mut self) -> Outcome {
        match (&mut self.rx).await {
            Ok(outcome) => outcome,
            // Only the hub drops senders, and only after sending: unreachable, but never spin.
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut waiters = self.hub.lock();
        if let Some(list) = waiters.get_mut(&self.key) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                waiters.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use tenantsync_core::{Change, EntityId, Op};

    use super::*;

    fn change(tenant: &str, id: &str) -> LoggedChange {
        LoggedChange {
            offset: 0,
            change: Change {
                change_id: ChangeId::new(id).unwrap(),
                op: Op::Delete,
                tenant: TenantId::new(tenant).unwrap(),
                id: EntityId::new("x").unwrap(),
                data: None,
                expected_version: None,
                accepted_at: Utc::now(),
            },
        }
    }

    #[tokio::test]
    async fn wakes_exactly_the_waiters_of_applied_changes() {
        let hub = Arc::new(AppliedHub::default());
        let ds = DatasetName::new("d").unwrap();
        let a = TenantId::new("a").unwrap();
        let b = TenantId::new("b").unwrap();
        let c1 = ChangeId::new("c1").unwrap();
        let mut w1 = hub.register(&ds, &a, &c1);
        let mut w1_again = hub.register(&ds, &a, &c1);
        let w_other_tenant = hub.register(&ds, &b, &c1);
        assert_eq!(hub.waiting(), 3);
        let outcome = Outcome::Applied { version: 4 };
        hub.notify(&ds, &[change("a", "c1")], std::slice::from_ref(&outcome));
        assert_eq!(w1.outcome().await, outcome.clone());
        assert_eq!(w1_again.outcome().await, outcome);
        assert_eq!(hub.waiting(), 1, "tenant b's change c1 is another change");
        drop(w_other_tenant);
        assert_eq!(hub.waiting(), 0, "a dropped waiter unregisters");
    }
}
