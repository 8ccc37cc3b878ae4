//! Property test of the HTTP workers' batch queue against a model: random leases by several
//! workers, acknowledgements (timely, late and repeated), clock advances past lease expiries,
//! and batches appended meanwhile, over 1 to 4 batches-log partitions. The queue's clock is
//! given explicitly, so expiries are exact and nothing sleeps.

use std::collections::HashMap;

use chrono::Utc;
use proptest::prelude::*;
use tenantsync_batcher::message::{self, BatchMessage};
use tenantsync_batcher::{Batch, BatchId, BatchQueue, Leased};
use tenantsync_core::{ChangeId, EntityId, Record, TenantId, Topics};
use tenantsync_dataset::state;
use tenantsync_log::Entry;

const LEASE_MS: i64 = 1_000;

#[derive(Debug, Clone)]
enum Step {
    Append(usize),
    Lease {
        worker: usize,
    },
    /// The worker acknowledges the `nth` batch it ever leased (maybe long expired, maybe
    /// acknowledged before).
    Ack {
        worker: usize,
        nth: usize,
    },
    Advance(i64),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        1 => (1usize..5).prop_map(Step::Append),
        4 => (0usize..3).prop_map(|worker| Step::Lease { worker }),
        3 => (0usize..3, 0usize..6).prop_map(|(worker, nth)| Step::Ack { worker, nth }),
        2 => (0i64..1_500).prop_map(Step::Advance),
    ];
    prop::collection::vec(step, 1..60)
}

#[derive(Debug, Clone, PartialEq)]
enum Status {
    Available,
    Leased { worker: usize, until: i64 },
    Acked,
}

mod common;

use common::{Fixture, fixture};

/// Appends the next one-record batch, to partitions in turn; returns its id.
async fn append(fx: &Fixture, next: &mut u64) -> BatchId {
    let offset = *next;
    *next += 1;
    let record = Record {
        tenant: TenantId::new(format!("t{}", offset % 3)).unwrap(),
        id: EntityId::new(format!("r{offset}")).unwrap(),
        version: 1,
        data: Some(serde_json::Map::new()),
        updated_at: Utc::now(),
        change_id: ChangeId::new(format!("c{offset}")).unwrap(),
    };
    let m = state::encode(&record, 1);
    let entry = Entry {
        partition: 0,
        offset,
        key: m.key,
        value: m.value,
        headers: m.headers,
        timestamp_ms: 0,
    };
    let batch = Batch {
        id: BatchId::for_range(0, offset, offset),
        tenant: record.tenant.clone(),
        partition: 0,
        first_offset: offset,
        last_offset: offset,
        records: vec![message::source_record(&entry).unwrap()],
    };
    let q = (offset % u64::from(fx.dataset.partitions)) as u32;
    let topic = fx.datasets.topics().batches(&fx.dataset.name);
    fx.log
        .append(&topic, vec![message::encode(&fx.dataset.name, &batch, q)])
        .await
        .unwrap();
    batch.id
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn leases_never_overlap_and_every_batch_is_done_once(partitions in 1u32..5, steps in steps()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let fx = rt.block_on(fixture(partitions));
        let (_emitted, wake) = tokio::sync::watch::channel(0);
        let queue = BatchQueue::new(fx.log.clone(), fx.store.clone(), Topics::default(), wake);
        let mut model: HashMap<BatchId, Status> = HashMap::new();
        // Appended order per partition, to check new batches are taken in offset order.
        let mut order: Vec<BatchId> = Vec::new();
        let mut contents: HashMap<BatchId, BatchMessage> = HashMap::new();
        let mut leased_by: HashMap<usize, Vec<BatchId>> = HashMap::new();
        let mut next = 0;
        let mut now = 1_000_000i64;

        let check_lease = |model: &HashMap<BatchId, Status>, order: &[BatchId], got: &Option<Leased>, now: i64| -> Result<(), TestCaseError> {
            let expired: Vec<(&BatchId, i64)> = model.iter().filter_map(|(id, s)| match s {
                Status::Leased { until, .. } if *until <= now => Some((id, *until)),
                _ => None,
            }).collect();
            let available = order.iter().any(|id| model[id] == Status::Available);
            match got {
                None => {
                    prop_assert!(expired.is_empty(), "an expired lease was not handed out again");
                    prop_assert!(!available, "a new batch was not handed out");
                }
                Some(leased) => {
                    let id = &leased.batch.id;
                    match &model[id] {
                        Status::Acked => prop_assert!(false, "acknowledged batch {id} handed out again"),
                        Status::Leased { until, .. } => {
                            prop_assert!(*until <= now, "batch {id} handed out during a live lease");
                            let earliest = expired.iter().map(|e| e.1).min().unwrap();
                            prop_assert_eq!(*until, earliest, "not the earliest expired lease");
                        }
                        Status::Available => {
                            prop_assert!(expired.is_empty(), "a new batch before an expired one");
                            // The oldest available batch of its partition.
                            let partitions = u64::from(partitions);
                            let (_, first) = id.range().1.checked_rem(partitions).map(|q| (q, order.iter().find(|b| b.range().1 % partitions == q && model[*b] == Status::Available))).unwrap();
                            prop_assert_eq!(first, Some(id));
                        }
                    }
                    prop_assert_eq!(leased.expires_at.timestamp_millis(), now + LEASE_MS);
                }
            }
            Ok(())
        };

        for step in &steps {
            match step {
                Step::Append(n) => {
                    for _ in 0..*n {
                        let id = rt.block_on(append(&fx, &mut next));
                        model.insert(id.clone(), Status::Available);
                        order.push(id);
                    }
                }
                Step::Lease { worker } => {
                    let got = rt.block_on(queue.lease_at(&fx.dataset, now, LEASE_MS)).unwrap();
                    check_lease(&model, &order, &got, now)?;
                    if let Some(leased) = got {
                        let id = leased.batch.id.clone();
                        if let Some(first) = contents.get(&id) {
                            prop_assert_eq!(first, &leased.batch, "batch {} changed between deliveries", id);
                        }
                        contents.insert(id.clone(), leased.batch);
                        model.insert(id.clone(), Status::Leased { worker: *worker, until: now + LEASE_MS });
                        leased_by.entry(*worker).or_default().push(id);
                    }
                }
                Step::Ack { worker, nth } => {
                    let Some(id) = leased_by.get(worker).and_then(|l| l.get(*nth)).cloned() else { continue };
                    let acked = rt.block_on(queue.ack(&fx.dataset, &id)).unwrap();
                    let outstanding = matches!(model[&id], Status::Leased { .. });
                    prop_assert_eq!(acked, outstanding, "ack of {} answered {}", id, acked);
                    model.insert(id, Status::Acked);
                }
                Step::Advance(ms) => now += ms,
            }
        }

        // Drain: every batch not acknowledged is handed out (once its lease expires) and then
        // acknowledged; none is lost.
        now += LEASE_MS;
        loop {
            let got = rt.block_on(queue.lease_at(&fx.dataset, now, LEASE_MS)).unwrap();
            check_lease(&model, &order, &got, now)?;
            let Some(leased) = got else { break };
            let id = leased.batch.id;
            prop_assert!(rt.block_on(queue.ack(&fx.dataset, &id)).unwrap());
            model.insert(id, Status::Acked);
        }
        let left: Vec<_> = model.iter().filter(|(_, s)| **s != Status::Acked).collect();
        prop_assert!(left.is_empty(), "never completed: {left:?}");
        prop_assert_eq!(rt.block_on(fx.store.batch_dispatch(&fx.dataset.name)).unwrap().len() as u64, u64::from(partitions).min(next));
    }
}
