//! Property test of the batcher stage end to end, on the embedded log and a SQLite store: random
//! tenant interleavings (one tenant writing far more than the others), partition counts, batch
//! limits, pauses and crashes. A crash shuts the stage's runtime down wherever its tasks are
//! (mid-read, mid-append, mid-checkpoint) without a final checkpoint; a new stage then takes
//! the claim over from the store. Afterwards the batches log must hold every record written,
//! each batch one tenant's records in order and within its limits, and a batch id found twice
//! must name the same contents.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use proptest::prelude::*;
use tenantsync_batcher::message::{self, BatchMessage};
use tenantsync_batcher::{BatcherStage, Limits, StageConfig};
use tenantsync_core::{ChangeId, EntityId, Op, Record, TenantId};
use tenantsync_dataset::state;
use tenantsync_log::Entry;
use tenantsync_supervisor::{RestartPolicy, Supervisor};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
enum Step {
    /// Append `n` writes to the state log; tenant 0 writes most of them.
    Write {
        n: usize,
        seed: u64,
    },
    Pause(Duration),
    Crash,
}

#[derive(Debug, Clone)]
struct Case {
    partitions: u32,
    limits: Limits,
    max_buffered: usize,
    read_max: usize,
    append_max: usize,
    steps: Vec<Step>,
}

fn case() -> impl Strategy<Value = Case> {
    let step = prop_oneof![
        4 => (1usize..40, any::<u64>()).prop_map(|(n, seed)| Step::Write { n, seed }),
        2 => (0u64..15).prop_map(|ms| Step::Pause(Duration::from_millis(ms))),
        1 => Just(Step::Crash),
    ];
    (
        1u32..4,
        (1usize..8, 60usize..600, 0u64..10),
        1usize..60,
        1usize..20,
        1usize..5,
        prop::collection::vec(step, 1..14),
    )
        .prop_map(
            |(
                partitions,
                (max_records, max_bytes, wait_ms),
                max_buffered,
                read_max,
                append_max,
                steps,
            )| Case {
                partitions,
                limits: Limits {
                    max_records,
                    max_bytes,
                    max_wait: Duration::from_millis(wait_ms),
                },
                max_buffered,
                read_max,
                append_max,
                steps,
            },
        )
}

mod common;

use common::{Fixture, fixture};

const TENANTS: usize = 6;
const IDS: u64 = 5;

/// A stage on its own runtime, so that a crash stops every one of its tasks at once.
struct Running {
    runtime: tokio::runtime::Runtime,
    shutdown: CancellationToken,
}

fn start(fx: &Fixture, case: &Case) -> Running {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut config = StageConfig {
        limits: case.limits,
        owner: "test".into(),
        checkpoint_interval: Duration::from_millis(3),
        max_buffered: case.max_buffered,
        read_max: case.read_max,
        append_max: case.append_max,
        ..StageConfig::default()
    };
    config.dataset_limits.clear();
    let stage = Arc::new(BatcherStage::new(
        fx.log.clone(),
        fx.store.clone(),
        fx.datasets.clone(),
        config,
    ));
    let supervisor = Supervisor::new(RestartPolicy::default());
    {
        let _inside = runtime.enter();
        tenantsync_dataset::supervise(&supervisor, fx.datasets.clone(), vec![stage]);
    }
    Running {
        runtime,
        shutdown: supervisor.shutdown_token(),
    }
}

/// What was written: per record key, every version in order, and each state entry's size.
#[derive(Default)]
struct Written {
    versions: HashMap<(String, String), u64>,
    /// (tenant, id, version) of every state entry.
    all: HashSet<(String, String, u64)>,
}

async fn write(fx: &Fixture, written: &mut Written, n: usize, seed: u64) {
    let mut rng = seed;
    let mut messages = Vec::with_capacity(n);
    for _ in 0..n {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let pick = (rng >> 33) % 100;
        // Tenant 0 writes 70% of the records, the others share the rest.
        let tenant = if pick < 70 {
            0
        } else {
            1 + (pick as usize % (TENANTS - 1))
        };
        let tenant = format!("t{tenant}");
        let id = format!("r{}", (rng >> 17) % IDS);
        let delete = (rng >> 9).is_multiple_of(7);
        let version = written
            .versions
            .entry((tenant.clone(), id.clone()))
            .or_insert(0);
        *version += 1;
        let record = Record {
            tenant: TenantId::new(&tenant).unwrap(),
            id: EntityId::new(&id).unwrap(),
            version: *version,
            data: (!delete).then(|| {
                serde_json::json!({"tenant": tenant, "pad": "x".repeat((rng >> 40) as usize % 80)})
                    .as_object()
                    .unwrap()
                    .clone()
            }),
            updated_at: Utc::now(),
            change_id: ChangeId::new(format!("c-{tenant}-{id}-{version}")).unwrap(),
        };
        written.all.insert((tenant, id, *version));
        messages.push(state::encode(&record, fx.dataset.partitions));
    }
    let topic = fx.datasets.topics().state(&fx.dataset.name);
    fx.log.append(&topic, messages).await.unwrap();
}

/// Every entry of the batches log, per partition in offset order.
async fn batches(fx: &Fixture) -> Vec<Vec<Entry>> {
    let topic = fx.datasets.topics().batches(&fx.dataset.name);
    let mut all = Vec::new();
    for partition in 0..fx.dataset.partitions {
        let mut entries = Vec::new();
        loop {
            let from = entries.last().map_or(0, |e: &Entry| e.offset + 1);
            let read = fx
                .log
                .read(&topic, partition, from, 10_000, Duration::ZERO)
                .await
                .unwrap();
            if read.is_empty() {
                break;
            }
            entries.extend(read);
        }
        all.push(entries);
    }
    all
}

fn covered(all: &[Vec<Entry>]) -> HashSet<(String, String, u64)> {
    all.iter()
        .flatten()
        .filter_map(|e| message::decode(e).ok())
        .flat_map(|b| {
            let tenant = b.tenant.to_string();
            b.records
                .into_iter()
                .map(move |r| (tenant.clone(), r.id.to_string(), r.version))
        })
        .collect()
}

fn check(case: &Case, written: &Written, all: &[Vec<Entry>]) -> Result<(), TestCaseError> {
    let mut by_id: HashMap<String, BatchMessage> = HashMap::new();
    // Per tenant, its batches (deduplicated by id) in source order.
    let mut per_tenant: BTreeMap<String, BTreeMap<u64, BatchMessage>> = BTreeMap::new();
    for entry in all.iter().flatten() {
        let batch = message::decode(entry).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let headers =
            message::decode_headers(entry).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&headers.id, &batch.id);
        prop_assert_eq!(headers.count, batch.records.len());
        prop_assert_eq!(batch.count, batch.records.len());
        prop_assert!(!batch.records.is_empty());
        // One tenant per batch: every record's data names the batch's tenant.
        for r in &batch.records {
            if r.op == Op::Upsert {
                let data = r.data.as_ref().unwrap();
                prop_assert_eq!(data["tenant"].as_str(), Some(batch.tenant.as_str()));
            }
        }
        // Within limits.
        prop_assert!(batch.records.len() <= case.limits.max_records);
        let bytes: usize = batch
            .records
            .iter()
            .map(|r| serde_json::to_vec(r).unwrap().len())
            .sum();
        prop_assert!(
            bytes <= case.limits.max_bytes || batch.records.len() == 1,
            "batch {} holds {bytes} bytes, limit {}",
            batch.id,
            case.limits.max_bytes
        );
        // A batch found twice has the same contents.
        if let Some(first) = by_id.get(batch.id.as_str()) {
            prop_assert_eq!(first, &batch, "two batches with id {}", batch.id);
            continue;
        }
        by_id.insert(batch.id.to_string(), batch.clone());
        per_tenant
            .entry(batch.tenant.to_string())
            .or_default()
            .insert(batch.source.first_offset, batch);
    }
    // Nothing twice and in order: a tenant's batches cover disjoint, increasing ranges, and its
    // records' versions of each key only grow.
    let mut seen = HashSet::new();
    for (tenant, batches) in &per_tenant {
        let mut last_offset = None;
        let mut versions: HashMap<String, u64> = HashMap::new();
        for batch in batches.values() {
            if let Some(last) = last_offset {
                prop_assert!(
                    batch.source.first_offset > last,
                    "{tenant}: overlapping batches"
                );
            }
            last_offset = Some(batch.source.last_offset);
            for r in &batch.records {
                let previous = versions.insert(r.id.to_string(), r.version);
                prop_assert!(
                    previous.is_none_or(|v| v < r.version),
                    "{tenant}/{}: out of order",
                    r.id
                );
                prop_assert!(
                    seen.insert((tenant.clone(), r.id.to_string(), r.version)),
                    "{tenant}/{} v{} in two batches",
                    r.id,
                    r.version
                );
            }
        }
    }
    // Nothing lost.
    let missing: Vec<_> = written.all.difference(&seen).take(5).collect();
    prop_assert!(missing.is_empty(), "lost records, e.g. {missing:?}");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, max_shrink_iters: 50, ..ProptestConfig::default() })]

    #[test]
    fn batches_are_single_tenant_complete_ordered_and_within_limits(case in case()) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let fx = rt.block_on(fixture(case.partitions));
        let mut written = Written::default();
        let mut running = start(&fx, &case);
        for step in &case.steps {
            match step {
                Step::Write { n, seed } => rt.block_on(write(&fx, &mut written, *n, *seed)),
                Step::Pause(d) => std::thread::sleep(*d),
                Step::Crash => {
                    running.runtime.shutdown_background();
                    running = start(&fx, &case);
                }
            }
        }
        // Let the stage catch up, then stop it gracefully.
        let deadline = Instant::now() + Duration::from_secs(30);
        let all = loop {
            let all = rt.block_on(batches(&fx));
            if written.all.is_subset(&covered(&all)) || Instant::now() > deadline {
                break all;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        running.shutdown.cancel();
        running.runtime.shutdown_timeout(Duration::from_secs(5));
        check(&case, &written, &all)?;
    }
}
