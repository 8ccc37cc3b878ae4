//! Records under load: overlapping concurrent appliers, and a model-based property test that
//! replays random logs in random deliveries against a reference model.

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;
use tenantsync_core::Change;
use tenantsync_store::{LoggedChange, MasterStore};

use crate::common::*;

/// A log over a few tenants and ids with every kind of change, duplicates included.
fn random_log(rng: &mut SplitMix, len: usize) -> Vec<Change> {
    let tenants = ["acme", "globex", "initech"];
    let mut log: Vec<Change> = Vec::with_capacity(len);
    for i in 0..len {
        if i > 0 && rng.below(10) == 0 {
            // A producer retry: the same change appended again later.
            let earlier = log[rng.below(i as u64) as usize].clone();
            log.push(earlier);
            continue;
        }
        let t = tenants[rng.below(3) as usize];
        let id = format!("id-{}", rng.below(5));
        let v = rng.below(3);
        let mut c = match rng.below(4) {
            0 | 1 => upsert(&format!("c{i}"), t, &id, json!({"v": v})),
            2 => patch(&format!("c{i}"), t, &id, json!({format!("k{v}"): i})),
            _ => delete(&format!("c{i}"), t, &id),
        };
        if rng.below(4) == 0 {
            c.expected_version = Some(rng.below(4));
        }
        log.push(c);
    }
    log
}

/// Splits `0..len` into consecutive batches of 1 to `max` changes.
fn random_split(rng: &mut SplitMix, len: usize, max: u64) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < len {
        let end = (start + 1 + rng.below(max) as usize).min(len);
        out.push((start, end));
        start = end;
    }
    out
}

/// Several processors apply the same partition at once, each from its own start (0, or the
/// position it read, as after a rebalance) with its own batch boundaries. However their
/// transactions interleave, every change takes effect once and the store ends equal to the
/// reference model; every processor is told the first outcome of each change.
pub(crate) async fn concurrent_overlapping_applies(store: Arc<dyn MasterStore>) {
    const ROUNDS: u64 = 30;
    const TASKS: u64 = 4;
    const LEN: usize = 120;
    for round in 0..ROUNDS {
        let mut rng = SplitMix::new(0xC0FFEE + round);
        let dataset = ds(&format!("round-{round}"));
        let log = Arc::new(random_log(&mut rng, LEN));
        let model = Arc::new(Model::replay(&log));
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let store = Arc::clone(&store);
            let (log, model, dataset) = (Arc::clone(&log), Arc::clone(&model), dataset.clone());
            let from_position = task % 2 == 1;
            let split = random_split(&mut rng, LEN, 25);
            tasks.push(tokio::spawn(async move {
                let start = if from_position {
                    store.position(&dataset, 0).await.unwrap() as usize
                } else {
                    0
                };
                for (begin, end) in split {
                    if end <= start {
                        continue;
                    }
                    let begin = begin.max(start);
                    let batch: Vec<_> = (begin..end)
                        .map(|i| LoggedChange {
                            offset: i as u64,
                            change: log[i].clone(),
                        })
                        .collect();
                    let out = store.apply(&dataset, 0, &batch, end as u64).await.unwrap();
                    for (logged, outcome) in batch.iter().zip(&out.outcomes) {
                        let c = &logged.change;
                        assert_eq!(
                            Some(outcome),
                            model
                                .outcomes
                                .get(&(c.tenant.clone(), c.change_id.clone()))
                                .map(|stored| &stored.outcome),
                            "round {round} task {task} offset {}",
                            logged.offset
                        );
                    }
                    // Versions never go down as seen by one processor.
                    for state in &out.states {
                        let latest = model.get(&state.tenant, &state.id).unwrap();
                        assert!(state.version <= latest.version);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("apply task");
        }
        assert_matches_model(
            &*store,
            &dataset,
            &[tenant("acme"), tenant("globex"), tenant("initech")],
            &model,
        )
        .await;
        assert_eq!(store.position(&dataset, 0).await.unwrap(), LEN as u64);
    }
}

#[derive(Debug, Clone)]
struct Spec {
    /// Reuse the change id of an earlier entry (a producer retry, or a reused idempotency key
    /// with different content).
    dup_of: Option<usize>,
    tenant: u8,
    id: u8,
    op: u8,
    value: u8,
    expected: Option<u64>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        proptest::option::weighted(0.15, 0usize..64),
        0u8..2,
        0u8..3,
        0u8..3,
        0u8..3,
        proptest::option::weighted(0.25, 0u64..4),
    )
        .prop_map(|(dup_of, tenant, id, op, value, expected)| Spec {
            dup_of,
            tenant,
            id,
            op,
            value,
            expected,
        })
}

fn build_log(specs: &[Spec]) -> Vec<Change> {
    let mut log: Vec<Change> = Vec::with_capacity(specs.len());
    for (i, s) in specs.iter().enumerate() {
        let t = ["acme", "globex"][s.tenant as usize];
        let id = ["a", "b", "ä"][s.id as usize];
        let mut c = match s.op {
            0 => upsert("x", t, id, json!({"v": s.value})),
            1 => patch(
                "x",
                t,
                id,
                if s.value == 0 {
                    json!({"v": null})
                } else {
                    json!({"w": s.value})
                },
            ),
            _ => delete("x", t, id),
        };
        c.change_id = match s.dup_of {
            Some(j) if i > 0 => log[j % i].change_id.clone(),
            _ => cid(&format!("c{i}")),
        };
        if let Some(j) = s.dup_of.filter(|_| i > 0) {
            // Keep the tenant of the earlier entry half the time, so the duplicate really is a
            // duplicate (ids are per tenant) rather than a fresh change.
            if j % 2 == 0 {
                c.tenant = log[j % i].tenant.clone();
            }
        }
        c.expected_version = s.expected;
        log.push(c);
    }
    log
}

/// One delivery: back up `rewind` entries from the stored position (a re-read after a crash)
/// and apply up to `len` entries from there.
fn deliveries() -> impl Strategy<Value = Vec<(usize, usize)>> {
    proptest::collection::vec((0usize..6, 1usize..9), 1..12)
}

static CASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub(crate) fn model_based(rt: &tokio::runtime::Runtime, store: &dyn MasterStore) {
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (proptest::collection::vec(spec(), 1..40), deliveries());
    runner
        .run(&strategy, |(specs, deliveries)| {
            let dataset = ds(&format!(
                "case-{}",
                CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            let log = build_log(&specs);
            rt.block_on(run_case(store, &dataset, &log, &deliveries));
            Ok(())
        })
        .unwrap();
}

async fn run_case(
    store: &dyn MasterStore,
    dataset: &tenantsync_core::DatasetName,
    log: &[Change],
    deliveries: &[(usize, usize)],
) {
    let full = Model::replay(log);
    let mut prefixes: HashMap<usize, Model> = HashMap::new();
    let mut position = 0usize;
    let mut plan: Vec<(usize, usize)> = deliveries.to_vec();
    // Whatever the random deliveries left, the rest arrives in one batch.
    plan.push((0, log.len()));
    for (rewind, len) in plan {
        let begin = position.saturating_sub(rewind);
        let end = (begin + len).min(log.len());
        if begin >= end {
            continue;
        }
        let batch: Vec<_> = (begin..end)
            .map(|i| LoggedChange {
                offset: i as u64,
                change: log[i].clone(),
            })
            .collect();
        let out = store
            .apply(dataset, 0, &batch, end as u64)
            .await
            .expect("apply");
        // Each change is considered on the state the store held then: the stored position's
        // prefix for a change below it (a redelivery), its own prefix otherwise. That matters
        // for a reused change id, whose refusal is not stored and reports the live version.
        for (logged, outcome) in batch.iter().zip(&out.outcomes) {
            let i = logged.offset as usize;
            let seen = i.max(position);
            let mut then = prefixes
                .entry(seen)
                .or_insert_with(|| Model::replay(&log[..seen]))
                .clone();
            assert_eq!(
                outcome,
                &then.apply(&logged.change),
                "offset {}",
                logged.offset
            );
        }
        position = position.max(end);
        let model = prefixes
            .entry(position)
            .or_insert_with(|| Model::replay(&log[..position]));
        // States: the model's records after the effective prefix, by last appearance.
        let mut last: Vec<(
            usize,
            (tenantsync_core::TenantId, tenantsync_core::EntityId),
        )> = Vec::new();
        for (i, logged) in batch.iter().enumerate() {
            let key = (logged.change.tenant.clone(), logged.change.id.clone());
            last.retain(|(_, k)| *k != key);
            last.push((i, key));
        }
        let expected: Vec<_> = last
            .iter()
            .filter_map(|(_, (t, id))| model.get(t, id).map(|r| (t.clone(), id.clone(), r.clone())))
            .collect();
        let got: Vec<_> = out
            .states
            .iter()
            .map(|r| (r.tenant.clone(), r.id.clone(), ModelRecord::of(r)))
            .collect();
        assert_eq!(got, expected, "states of batch {begin}..{end}");
        assert_eq!(store.position(dataset, 0).await.unwrap(), position as u64);
    }
    assert_matches_model(store, dataset, &[tenant("acme"), tenant("globex")], &full).await;
}
