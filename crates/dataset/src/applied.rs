//! Where writers wait for their change to be applied (`?wait=applied`).
//!
//! The processor hands every batch's outcomes to the hub, which wakes exactly the writers
//! waiting for those changes: no polling of the store, no herd woken per batch. A change applied
//! by another instance (Kafka, shared store) never reaches this hub; writers cover that by
//! checking the store now and then (see the API).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tenantsync_core::{Change, ChangeId, DatasetName, EntityId, Outcome, Record, TenantId};
use tenantsync_store::{Applied, LoggedChange, MasterStore, StoreError, StoredOutcome};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// A change: its id is unique per (dataset, tenant) only for one record; a reuse of the id for
/// another record is another change (which the store refuses), so the record id is part of it.
type Key = (DatasetName, TenantId, EntityId, ChangeId);

/// A change's outcome and the record right after it (`None` while the key does not exist).
pub type AppliedChange = (Outcome, Option<Record>);

/// Waiters by change, each with its id (so a dropped waiter can remove itself).
type Waiters = HashMap<Key, Vec<(u64, oneshot::Sender<AppliedChange>)>>;

#[derive(Default)]
pub struct AppliedHub {
    waiters: Mutex<Waiters>,
    next_id: AtomicU64,
}

impl AppliedHub {
    /// Registers interest in a change. Register before checking the store, so an outcome that
    /// arrives in between is not missed.
    pub fn register(self: &Arc<Self>, dataset: &DatasetName, change: &Change) -> Waiter {
        let key = key(dataset, change);
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

    /// Hands a batch's results (see `Applied`) to whoever waits for them.
    pub fn notify(&self, dataset: &DatasetName, changes: &[LoggedChange], applied: &Applied) {
        let mut waiters = self.lock();
        if waiters.is_empty() {
            return;
        }
        for ((c, outcome), record) in changes.iter().zip(&applied.outcomes).zip(&applied.records) {
            if let Some(list) = waiters.remove(&key(dataset, &c.change)) {
                for (_, tx) in list {
                    let _ = tx.send((outcome.clone(), record.clone()));
                }
            }
        }
    }

    /// How many writers are waiting.
    pub fn waiting(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        // A panic while holding this lock leaves the map consistent; keep serving.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn key(dataset: &DatasetName, change: &Change) -> Key {
    (
        dataset.clone(),
        change.tenant.clone(),
        change.id.clone(),
        change.change_id.clone(),
    )
}

/// One writer's wait for one change; unregisters itself when dropped.
pub struct Waiter {
    hub: Arc<AppliedHub>,
    key: Key,
    id: u64,
    rx: oneshot::Receiver<AppliedChange>,
}

impl Waiter {
    /// The outcome, once this instance's processor applies the change. Never returns if
    /// another instance applies it.
    pub async fn outcome(&mut self) -> AppliedChange {
        match (&mut self.rx).await {
            Ok(outcome) => outcome,
            // Only the hub drops senders, and only after sending: unreachable, but never spin.
            Err(_) => std::future::pending().await,
        }
    }
}

/// How a change's wait ended.
#[derive(Debug)]
pub enum Settled {
    /// Applied by this instance: the outcome and the record exactly as the change left it.
    Here(AppliedChange),
    /// Found in the store, applied by another instance sharing it. The stored outcome is the
    /// change id's owner's, which may be another record's (a reused key).
    Stored(StoredOutcome),
}

impl Waiter {
    /// Waits until the change has an outcome: handed over by this instance's processor, or found
    /// in the store (looked up every `recheck`) when another instance applied it; `None` once
    /// `deadline` passes first. The waiter must have been registered before the change was
    /// appended, so that an outcome handed over in between is not missed.
    pub async fn settled(
        &mut self,
        store: &dyn MasterStore,
        dataset: &DatasetName,
        change: &Change,
        recheck: std::time::Duration,
        deadline: Instant,
    ) -> Result<Option<Settled>, StoreError> {
        loop {
            let next_look = Instant::now() + recheck;
            tokio::select! {
                applied = self.outcome() => return Ok(Some(Settled::Here(applied))),
                _ = tokio::time::sleep_until(next_look.min(deadline)) => {}
            }
            if let Some(stored) = store
                .outcome(dataset, &change.tenant, &change.change_id)
                .await?
            {
                return Ok(Some(Settled::Stored(stored)));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
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
    use tenantsync_core::Op;

    use super::*;

    fn change(tenant: &str, id: &str, change_id: &str) -> Change {
        Change {
            change_id: ChangeId::new(change_id).unwrap(),
            op: Op::Delete,
            tenant: TenantId::new(tenant).unwrap(),
            id: EntityId::new(id).unwrap(),
            data: None,
            expected_version: None,
            accepted_at: Utc::now(),
        }
    }

    #[tokio::test]
    async fn wakes_exactly_the_waiters_of_applied_changes() {
        let hub = Arc::new(AppliedHub::default());
        let ds = DatasetName::new("d").unwrap();
        let mine = change("a", "x", "c1");
        let mut w1 = hub.register(&ds, &mine);
        let mut w1_again = hub.register(&ds, &mine);
        let other_tenant = hub.register(&ds, &change("b", "x", "c1"));
        let other_record = hub.register(&ds, &change("a", "y", "c1"));
        assert_eq!(hub.waiting(), 4);
        let outcome = Outcome::Applied { version: 4 };
        let applied = Applied {
            outcomes: vec![outcome.clone()],
            states: vec![],
            records: vec![None],
            previous_position: 0,
        };
        let logged = LoggedChange {
            offset: 0,
            change: mine,
        };
        hub.notify(&ds, &[logged], &applied);
        assert_eq!(w1.outcome().await, (outcome.clone(), None));
        assert_eq!(w1_again.outcome().await, (outcome, None));
        assert_eq!(
            hub.waiting(),
            2,
            "c1 of tenant b, and c1 reused for record y, are other changes"
        );
        drop((other_tenant, other_record));
        assert_eq!(hub.waiting(), 0, "a dropped waiter unregisters");
    }
}
