//! The conformance suite every [`Log`] backend must pass.
//!
//! Each case is a `pub async fn case(log: &dyn Log)` that panics on a contract violation; the
//! [`log_conformance_suite!`](crate::log_conformance_suite) macro turns every case into one
//! test in the backend's own test crate:
//!
//! ```ignore
//! async fn make() -> tenantsync_log::conformance::Fixture { /* a fresh log */ }
//! tenantsync_log::log_conformance_suite!(make);
//! ```
//!
//! Cases name their topics `conf-{case}-{unique}` so that several cases (and several runs) can
//! share one cluster. They never sleep to wait for a condition: they poll with short waits up to
//! a deadline ([`GROUP_DEADLINE`]), which must be generous because a Kafka group rebalance takes
//! seconds. They assert on content, never on timing. This module must never depend on a backend.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{
    Cleanup, Entry, GroupConsumer, Log, LogError, Message, Offset, Output, Partition, Publisher,
    TopicSpec,
};

/// A fresh log for one case, and whatever must live as long as it (a temp dir, a mock cluster).
/// `log` is declared first so it is dropped before `guard`.
pub struct Fixture {
    pub log: Arc<dyn Log>,
    pub guard: Box<dyn std::any::Any + Send>,
}

/// What a suite's `make` returns: a [`Fixture`], or `Option<Fixture>` for a backend that may
/// be absent (an external service the environment does not name), where `None` skips the case
/// and `make` says why.
pub trait MaybeFixture {
    fn into_fixture(self) -> Option<Fixture>;
}

impl MaybeFixture for Fixture {
    fn into_fixture(self) -> Option<Fixture> {
        Some(self)
    }
}

impl MaybeFixture for Option<Fixture> {
    fn into_fixture(self) -> Option<Fixture> {
        self
    }
}

/// How long a case may wait for a consumer group to deliver what it must.
pub const GROUP_DEADLINE: Duration = Duration::from_secs(60);

/// How long one whole case may run before it is reported as hung.
pub const CASE_DEADLINE: Duration = Duration::from_secs(240);

/// The short wait used when polling a condition.
const POLL_WAIT: Duration = Duration::from_millis(200);

/// Generates one test per conformance case. `$make` is a path to an `async fn() -> Fixture`
/// (or `-> Option<Fixture>`, see [`MaybeFixture`]) that returns a fresh log for each case. Each test runs on its own multi-thread runtime with
/// two workers (what `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` would build;
/// built here so the backend's test crate needs no tokio macros).
///
/// `log_conformance_suite!(make, without_transactional_offsets)` leaves out the one case that
/// reads back offsets committed by a [`Publisher`](crate::Publisher): for librdkafka's mock
/// cluster, which accepts transactional offset commits but does not store them. Real backends
/// run the whole suite.
#[macro_export]
macro_rules! log_conformance_suite {
    ($make:path) => {
        $crate::__log_conformance_base!($make; publish_commits_offsets);
    };
    ($make:path, without_transactional_offsets) => {
        $crate::__log_conformance_base!($make;);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_conformance_base {
    ($make:path; $($extra:ident),*) => {
        $crate::__log_conformance_cases!(
            $make;
            ensure_topic_is_idempotent,
            ensure_topic_rejects_partition_mismatch,
            append_returns_offsets_per_partition_in_order,
            append_of_nothing_returns_nothing,
            read_from_any_offset_respects_max,
            read_past_end_returns_empty,
            read_waits_for_append,
            end_offset_tracks_appends,
            entries_round_trip_exactly,
            unknown_topic_is_an_error,
            unknown_partition_is_an_error,
            concurrent_appenders_get_distinct_offsets,
            check_succeeds,
            member_gets_every_entry_of_every_partition,
            commit_then_committed,
            new_member_resumes_at_committed_offset,
            groups_are_independent,
            two_members_share_partitions,
            member_sees_entries_appended_while_polling,
            compaction_keeps_last_value_and_order,
            publish_appends_and_reads_on_past_it,
            publisher_fenced_after_losing_a_partition,
            publish_to_two_topics_is_all_or_nothing,
            $($extra),*
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_conformance_cases {
    ($make:path; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::runtime().block_on(async {
                    let Some(fixture) =
                        $crate::conformance::MaybeFixture::into_fixture($make().await)
                    else {
                        return;
                    };
                    $crate::conformance::within_deadline(
                        stringify!($case),
                        $crate::conformance::$case(&*fixture.log),
                    )
                    .await;
                    drop(fixture);
                });
            }
        )*
    };
}

/// The runtime a case runs on.
#[doc(hidden)]
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the conformance test runtime")
}

/// Runs a case, failing it when it hangs rather than hanging the test binary.
#[doc(hidden)]
pub async fn within_deadline(case: &str, fut: impl Future<Output = ()>) {
    if tokio::time::timeout(CASE_DEADLINE, fut).await.is_err() {
        panic!("conformance case {case} did not finish within {CASE_DEADLINE:?}");
    }
}

/// A topic name unique to this case, process and call.
pub fn unique_topic(case: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "conf-{}-{:x}-{:x}-{n}",
        case.replace('_', "-"),
        std::process::id(),
        nanos as u64
    )
}

fn delete_spec(name: &str, partitions: u32) -> TopicSpec {
    TopicSpec {
        name: name.to_string(),
        partitions,
        cleanup: Cleanup::Delete,
    }
}

async fn new_topic(log: &dyn Log, case: &str, partitions: u32) -> String {
    let name = unique_topic(case);
    log.ensure_topic(&delete_spec(&name, partitions))
        .await
        .unwrap_or_else(|e| panic!("ensure_topic {name}: {e}"));
    name
}

fn msg(partition: Partition, key: &str, value: &str) -> Message {
    Message {
        partition,
        key: key.as_bytes().to_vec(),
        value: Some(value.as_bytes().to_vec()),
        headers: Vec::new(),
    }
}

/// Appends `per_partition` messages to every partition, keyed `k{p}-{i}` with value `v{p}-{i}`.
async fn fill(log: &dyn Log, topic: &str, partitions: u32, per_partition: usize) {
    let mut messages = Vec::new();
    for i in 0..per_partition {
        for p in 0..partitions {
            messages.push(msg(p, &format!("k{p}-{i}"), &format!("v{p}-{i}")));
        }
    }
    log.append(topic, messages)
        .await
        .unwrap_or_else(|e| panic!("append to {topic}: {e}"));
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn value_text(entry: &Entry) -> String {
    entry.value.as_deref().map(text).unwrap_or_default()
}

/// Reads a whole partition from `from` to its end offset (at the time of the call).
async fn read_all(log: &dyn Log, topic: &str, partition: Partition, from: Offset) -> Vec<Entry> {
    let end = log.end_offset(topic, partition).await.expect("end_offset");
    let mut out: Vec<Entry> = Vec::new();
    let mut next = from;
    while next < end {
        let batch = log
            .read(topic, partition, next, 100, Duration::ZERO)
            .await
            .expect("read");
        let Some(last) = batch.last() else {
            break;
        };
        next = last.offset + 1;
        out.extend(batch);
    }
    out
}

/// Entries a group member delivered, per partition, checked for order as they arrive.
#[derive(Default)]
struct Seen {
    by_partition: BTreeMap<Partition, Vec<Entry>>,
}

impl Seen {
    /// Records entries, checking each partition's offsets go up within one poll result.
    fn add(&mut self, who: &str, entries: &[Entry]) {
        let mut last: HashMap<Partition, Offset> = HashMap::new();
        for e in entries {
            if let Some(prev) = last.insert(e.partition, e.offset) {
                assert!(
                    e.offset > prev,
                    "{who}: partition {} delivered offset {} after {prev} in one poll",
                    e.partition,
                    e.offset
                );
            }
            self.by_partition
                .entry(e.partition)
                .or_default()
                .push(e.clone());
        }
    }

    fn distinct(&self, partition: Partition) -> BTreeSet<Offset> {
        self.by_partition
            .get(&partition)
            .map(|v| v.iter().map(|e| e.offset).collect())
            .unwrap_or_default()
    }

    fn has_all(&self, partitions: u32, per_partition: usize) -> bool {
        (0..partitions).all(|p| self.distinct(p).len() >= per_partition)
    }
}

/// Checks what a group delivered: every partition complete from 0, no foreign offsets, contents
/// matching what [`fill`] wrote.
fn assert_complete(seen: &Seen, partitions: u32, per_partition: usize) {
    for p in 0..partitions {
        let expected: BTreeSet<Offset> = (0..per_partition as Offset).collect();
        assert_eq!(
            seen.distinct(p),
            expected,
            "partition {p}: delivered offsets differ from the appended ones"
        );
        for e in &seen.by_partition[&p] {
            assert_eq!(e.partition, p);
            assert_eq!(text(&e.key), format!("k{p}-{}", e.offset));
            assert_eq!(value_text(e), format!("v{p}-{}", e.offset));
        }
    }
}

/// Polls `member` until `done(seen)` or the deadline, committing what it got when `commit`.
async fn drive(
    who: &str,
    member: &mut dyn GroupConsumer,
    seen: &mut Seen,
    commit: bool,
    done: impl Fn(&Seen) -> bool,
) {
    let deadline = Instant::now() + GROUP_DEADLINE;
    while !done(seen) {
        assert!(
            Instant::now() < deadline,
            "{who}: consumer group did not deliver everything within {GROUP_DEADLINE:?}; got {:?}",
            seen.by_partition
                .iter()
                .map(|(p, v)| (*p, v.len()))
                .collect::<Vec<_>>()
        );
        let entries = member.poll(50, POLL_WAIT).await.expect("poll");
        seen.add(who, &entries);
        if commit {
            commit_delivered(member, &entries).await;
        }
    }
}

/// Commits one past the last delivered offset of each partition in `entries`; a partition that
/// moved away meanwhile (`NotOwner`) is fine.
async fn commit_delivered(member: &mut dyn GroupConsumer, entries: &[Entry]) {
    let mut next: BTreeMap<Partition, Offset> = BTreeMap::new();
    for e in entries {
        next.insert(e.partition, e.offset + 1);
    }
    if next.is_empty() {
        return;
    }
    let offsets: Vec<(Partition, Offset)> = next.into_iter().collect();
    match member.commit(&offsets).await {
        Ok(()) | Err(LogError::NotOwner { .. }) => {}
        Err(e) => panic!("commit {offsets:?}: {e}"),
    }
}

mod compaction;
mod groups;
mod publish;
mod reads;

pub use compaction::*;
pub use groups::*;
pub use publish::*;
pub use reads::*;
