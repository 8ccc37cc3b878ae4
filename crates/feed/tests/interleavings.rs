//! Feed readers against a store being written, under many interleavings.
//!
//! Each case runs a writer (applying changes to a SQLite master store in offset order, as the
//! processor does), a publisher (telling the hub about written tenants some time after the
//! write committed, as the state-log tail does) and several readers per tenant (some starting
//! with a snapshot before any write, some midway, each with its own page size and long-poll
//! wait), all as concurrent tasks on a multi-threaded runtime with random yields. Readers share
//! the hub's tails, so the tail cache and the known-end shortcut are exercised by concurrent
//! refreshes and wake-ups. At the end every reader's copy must equal the store, and no reader
//! may ever have seen a key's version go down.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::Fixture;
use proptest::prelude::*;
use serde_json::json;
use tenantsync_core::TenantId;
use tenantsync_feed::read_or_wait;
use tenantsync_store::FeedPosition;
use tokio::sync::mpsc;

const TENANTS: usize = 3;
const KEYS: u8 = 6;

#[derive(Debug, Clone)]
struct Write {
    tenant: usize,
    key: u8,
    delete: bool,
    value: u8,
}

#[derive(Debug, Clone)]
struct Reader {
    tenant: usize,
    limit: usize,
    /// Starts after this many writes (0: before any).
    start_after: usize,
    /// Long-poll wait, in milliseconds.
    wait_ms: u64,
}

fn write() -> impl Strategy<Value = Write> {
    (0..TENANTS, 0..KEYS, prop::bool::weighted(0.25), any::<u8>()).prop_map(
        |(tenant, key, delete, value)| Write {
            tenant,
            key,
            delete,
            value,
        },
    )
}

fn reader(writes: usize) -> impl Strategy<Value = Reader> {
    (0..TENANTS, 1usize..5, 0..=writes, 0u64..20).prop_map(
        |(tenant, limit, start_after, wait_ms)| Reader {
            tenant,
            limit,
            start_after,
            wait_ms,
        },
    )
}

fn case() -> impl Strategy<Value = (Vec<Write>, Vec<Reader>, u64)> {
    prop::collection::vec(write(), 1..60).prop_flat_map(|writes| {
        let n = writes.len();
        (
            Just(writes),
            prop::collection::vec(reader(n), 1..7),
            any::<u64>(),
        )
    })
}

fn tenant(i: usize) -> TenantId {
    TenantId::new(format!("t{i}")).unwrap()
}

/// A cheap deterministic generator for yields and delays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    async fn maybe_yield(&mut self) {
        match self.next() % 4 {
            0 => tokio::task::yield_now().await,
            1 => tokio::time::sleep(Duration::from_micros(self.next() % 500)).await,
            _ => {}
        }
    }
}

/// What one reader built: key -> (version, live).
#[derive(Default)]
struct Copy {
    records: HashMap<String, (u64, bool)>,
    regressions: Vec<String>,
}

async fn run_case(
    writes: Vec<Write>,
    readers: Vec<Reader>,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut fixture = Fixture::new().await;
    let (store, hub, dataset) = (
        fixture.store.clone(),
        fixture.hub.clone(),
        fixture.dataset.clone(),
    );
    let (written_tx, written) = tokio::sync::watch::channel(0usize);

    // The publisher: notifies the hub of a written tenant some time after the write.
    let (publish, mut to_publish) = mpsc::unbounded_channel::<usize>();
    let publisher = {
        let (hub, dataset) = (hub.clone(), dataset.clone());
        let mut rng = Rng(seed ^ 1);
        tokio::spawn(async move {
            while let Some(t) = to_publish.recv().await {
                rng.maybe_yield().await;
                hub.notify(&dataset, &[tenant(t)]);
                // The hub forgets idle tenants at any moment.
                if rng.next().is_multiple_of(8) {
                    hub.sweep();
                }
            }
        })
    };

    let mut reader_tasks = Vec::new();
    for (r, spec) in readers.iter().cloned().enumerate() {
        let (store, hub, dataset) = (store.clone(), hub.clone(), dataset.clone());
        let mut written = written.clone();
        let mut rng = Rng(seed.wrapping_add(r as u64 * 7919));
        let total = writes.len();
        reader_tasks.push(tokio::spawn(async move {
            written.wait_for(|&n| n >= spec.start_after).await.unwrap();
            let t = tenant(spec.tenant);
            let mut copy = Copy::default();
            let mut position: Option<FeedPosition> = None;
            loop {
                rng.maybe_yield().await;
                let finished = *written.borrow() >= total;
                let page = read_or_wait(
                    store.as_ref(),
                    &hub,
                    &dataset,
                    &t,
                    position,
                    spec.limit,
                    Duration::from_millis(spec.wait_ms),
                )
                .await
                .expect("no purge in this test, so never gone");
                for r in &page.records {
                    let key = r.record.id.to_string();
                    let (seen, _) = copy.records.get(&key).copied().unwrap_or((0, false));
                    if r.record.version < seen {
                        copy.regressions
                            .push(format!("{key}: v{} after v{seen}", r.record.version));
                    }
                    copy.records
                        .insert(key, (r.record.version, !r.record.is_deleted()));
                }
                position = Some(page.next);
                // Everything was written and published before this read started, and the
                // read found nothing more: the copy is complete.
                if finished && page.up_to_date && page.records.is_empty() {
                    return copy;
                }
            }
        }));
    }

    let mut rng = Rng(seed);
    for (i, w) in writes.iter().enumerate() {
        rng.maybe_yield().await;
        // At offset i, as the processor applies the partition in order.
        let data = (!w.delete).then(|| json!({"v": w.value, "i": i}));
        fixture
            .apply(tenant(w.tenant).as_str(), &format!("k{}", w.key), data)
            .await;
        publish.send(w.tenant).unwrap();
        if i + 1 < writes.len() {
            written_tx.send_replace(i + 1);
        }
    }
    // The last write is published before readers learn that writing finished, so a reader
    // that then finds nothing new has seen everything.
    drop(publish);
    publisher.await.unwrap();
    written_tx.send_replace(writes.len());

    for (spec, task) in readers.iter().zip(reader_tasks) {
        let copy = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .map_err(|_| TestCaseError::fail(format!("reader {spec:?} never caught up")))?
            .unwrap();
        prop_assert!(
            copy.regressions.is_empty(),
            "{spec:?}: {:?}",
            copy.regressions
        );
        let expected: HashMap<String, u64> = store
            .scan(&dataset, &tenant(spec.tenant), None, 1_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| !r.is_deleted())
            .map(|r| (r.id.to_string(), r.version))
            .collect();
        let live: HashMap<String, u64> = copy
            .records
            .into_iter()
            .filter(|(_, (_, live))| *live)
            .map(|(k, (v, _))| (k, v))
            .collect();
        prop_assert_eq!(&live, &expected, "reader {:?}", spec);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn readers_converge_and_versions_never_go_down((writes, readers, seed) in case()) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run_case(writes, readers, seed))?;
    }
}
