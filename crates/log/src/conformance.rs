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

use crate::{Cleanup, Entry, GroupConsumer, Log, LogError, Message, Offset, Partition, TopicSpec};

/// A fresh log for one case, and whatever must live as long as it (a temp dir, a mock cluster).
/// `log` is declared first so it is dropped before `guard`.
pub struct Fixture {
    pub log: Arc<dyn Log>,
    pub guard: Box<dyn std::any::Any + Send>,
}

/// How long a case may wait for a consumer group to deliver what it must.
pub const GROUP_DEADLINE: Duration = Duration::from_secs(60);

/// How long one whole case may run before it is reported as hung.
pub const CASE_DEADLINE: Duration = Duration::from_secs(240);

/// The short wait used when polling a condition.
const POLL_WAIT: Duration = Duration::from_millis(200);

/// Generates one test per conformance case. `$make` is a path to an `async fn() -> Fixture`
/// that returns a fresh log for each case. Each test runs on its own multi-thread runtime with
/// two workers (what `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` would build;
/// built here so the backend's test crate needs no tokio macros).
#[macro_export]
macro_rules! log_conformance_suite {
    ($make:path) => {
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
                    let fixture: $crate::conformance::Fixture = $make().await;
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

// ---------------------------------------------------------------------------------------------
// Topics

/// `ensure_topic` twice with the same spec succeeds and changes nothing.
pub async fn ensure_topic_is_idempotent(log: &dyn Log) {
    let topic = new_topic(log, "ensure_topic_is_idempotent", 3).await;
    fill(log, &topic, 3, 2).await;
    log.ensure_topic(&delete_spec(&topic, 3))
        .await
        .expect("second ensure_topic with the same spec");
    for p in 0..3 {
        assert_eq!(log.end_offset(&topic, p).await.expect("end_offset"), 2);
    }
    let compacted = unique_topic("ensure_topic_is_idempotent_compact");
    let spec = TopicSpec {
        name: compacted.clone(),
        partitions: 2,
        cleanup: Cleanup::Compact {
            tombstone_retention: Duration::from_secs(3600),
        },
    };
    log.ensure_topic(&spec).await.expect("ensure compact topic");
    log.ensure_topic(&spec)
        .await
        .expect("ensure compact topic again");
}

/// A partition-count mismatch is `TopicMismatch`, naming both counts.
pub async fn ensure_topic_rejects_partition_mismatch(log: &dyn Log) {
    let topic = new_topic(log, "ensure_topic_rejects_partition_mismatch", 2).await;
    match log.ensure_topic(&delete_spec(&topic, 5)).await {
        Err(LogError::TopicMismatch {
            topic: t,
            expected,
            actual,
        }) => {
            assert_eq!(t, topic);
            assert_eq!(expected, 5);
            assert_eq!(actual, 2);
        }
        other => panic!("expected TopicMismatch, got {other:?}"),
    }
    // The topic is untouched.
    log.ensure_topic(&delete_spec(&topic, 2))
        .await
        .expect("the original spec still matches");
}

// ---------------------------------------------------------------------------------------------
// Append and read

/// Offsets are 0, 1, 2.. per partition, returned in input order, across calls.
pub async fn append_returns_offsets_per_partition_in_order(log: &dyn Log) {
    let topic = new_topic(log, "append_returns_offsets_per_partition_in_order", 3).await;
    let first = log
        .append(
            &topic,
            vec![
                msg(0, "a", "0"),
                msg(2, "b", "1"),
                msg(0, "c", "2"),
                msg(1, "d", "3"),
                msg(0, "e", "4"),
                msg(2, "f", "5"),
            ],
        )
        .await
        .expect("append");
    assert_eq!(first, vec![0, 0, 1, 0, 2, 1]);
    let second = log
        .append(&topic, vec![msg(2, "g", "6"), msg(0, "h", "7")])
        .await
        .expect("append");
    assert_eq!(second, vec![2, 3]);
    let single = log
        .append(&topic, vec![msg(1, "i", "8")])
        .await
        .expect("append");
    assert_eq!(single, vec![1]);

    let p0: Vec<String> = read_all(log, &topic, 0, 0)
        .await
        .iter()
        .map(value_text)
        .collect();
    assert_eq!(p0, ["0", "2", "4", "7"]);
    let p2: Vec<String> = read_all(log, &topic, 2, 0)
        .await
        .iter()
        .map(value_text)
        .collect();
    assert_eq!(p2, ["1", "5", "6"]);
}

/// Appending no messages succeeds with no offsets.
pub async fn append_of_nothing_returns_nothing(log: &dyn Log) {
    let topic = new_topic(log, "append_of_nothing_returns_nothing", 1).await;
    let offsets = log.append(&topic, Vec::new()).await.expect("empty append");
    assert!(offsets.is_empty());
    assert_eq!(log.end_offset(&topic, 0).await.expect("end_offset"), 0);
}

/// `read` starts at any offset, returns entries in order, and never more than `max`.
pub async fn read_from_any_offset_respects_max(log: &dyn Log) {
    let topic = new_topic(log, "read_from_any_offset_respects_max", 2).await;
    fill(log, &topic, 2, 10).await;
    for from in [0u64, 1, 5, 9] {
        let all = read_all(log, &topic, 1, from).await;
        let offsets: Vec<Offset> = all.iter().map(|e| e.offset).collect();
        assert_eq!(
            offsets,
            (from..10).collect::<Vec<_>>(),
            "reading from {from}"
        );
        for e in &all {
            assert_eq!(e.partition, 1);
            assert_eq!(value_text(e), format!("v1-{}", e.offset));
        }
    }
    for max in [1usize, 3, 7] {
        let got = log
            .read(&topic, 0, 2, max, Duration::ZERO)
            .await
            .expect("read");
        assert!(!got.is_empty(), "read of available entries returned none");
        assert!(got.len() <= max, "read returned {} > max {max}", got.len());
        let offsets: Vec<Offset> = got.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, (2..2 + got.len() as Offset).collect::<Vec<_>>());
    }
    // Even with a wait, available entries are returned at once and capped at max.
    let got = log
        .read(&topic, 0, 0, 4, Duration::from_secs(30))
        .await
        .expect("read");
    assert!(!got.is_empty() && got.len() <= 4);
    assert_eq!(got[0].offset, 0);
}

/// Reading at or past the end returns nothing once the wait runs out.
pub async fn read_past_end_returns_empty(log: &dyn Log) {
    let topic = new_topic(log, "read_past_end_returns_empty", 1).await;
    let got = log
        .read(&topic, 0, 0, 10, Duration::ZERO)
        .await
        .expect("read of an empty partition");
    assert!(got.is_empty());
    fill(log, &topic, 1, 3).await;
    let got = log
        .read(&topic, 0, 3, 10, Duration::from_millis(100))
        .await
        .expect("read at the end");
    assert!(got.is_empty(), "read at the end returned {got:?}");
    let got = log
        .read(&topic, 0, 50, 10, Duration::ZERO)
        .await
        .expect("read past the end");
    assert!(got.is_empty(), "read past the end returned {got:?}");
}

/// A reader waiting on an empty partition returns the entry another task appends.
pub async fn read_waits_for_append(log: &dyn Log) {
    let topic = new_topic(log, "read_waits_for_append", 2).await;
    // Something in the other partition must not wake the reader with nothing.
    let reader = log.read(&topic, 1, 0, 10, Duration::from_secs(30));
    tokio::pin!(reader);
    // Give the reader a head start so the append below lands while it waits; it must not
    // return during it (the partition is empty and its wait is long).
    tokio::select! {
        got = &mut reader => panic!("read of an empty partition returned early: {got:?}"),
        _ = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            log.append(&topic, vec![msg(0, "other", "x")]).await.expect("append");
            tokio::time::sleep(Duration::from_millis(300)).await;
        } => {}
    }
    let (got, appended) = tokio::join!(reader, async {
        log.append(&topic, vec![msg(1, "key", "woken")])
            .await
            .expect("append")
    });
    assert_eq!(appended, vec![0]);
    let got = got.expect("read");
    assert_eq!(got.len(), 1, "the waiting reader returned {got:?}");
    assert_eq!(got[0].offset, 0);
    assert_eq!(got[0].partition, 1);
    assert_eq!(text(&got[0].key), "key");
    assert_eq!(value_text(&got[0]), "woken");
}

/// `end_offset` is 0 for a fresh partition and one past the last appended entry.
pub async fn end_offset_tracks_appends(log: &dyn Log) {
    let topic = new_topic(log, "end_offset_tracks_appends", 2).await;
    assert_eq!(log.end_offset(&topic, 0).await.expect("end_offset"), 0);
    assert_eq!(log.end_offset(&topic, 1).await.expect("end_offset"), 0);
    fill(log, &topic, 1, 4).await;
    assert_eq!(log.end_offset(&topic, 0).await.expect("end_offset"), 4);
    assert_eq!(log.end_offset(&topic, 1).await.expect("end_offset"), 0);
    let offsets = log
        .append(&topic, vec![msg(1, "a", "b")])
        .await
        .expect("append");
    assert_eq!(offsets, vec![0]);
    assert_eq!(log.end_offset(&topic, 1).await.expect("end_offset"), 1);
}

/// Keys, values, headers (order, duplicates, binary) and tombstones come back exactly.
pub async fn entries_round_trip_exactly(log: &dyn Log) {
    let topic = new_topic(log, "entries_round_trip_exactly", 2).await;
    let before_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let binary: Vec<u8> = (0..=255u8).collect();
    let messages = vec![
        Message {
            partition: 1,
            key: b"tenant-a:record/1".to_vec(),
            value: Some(br#"{"data":{"n":1}}"#.to_vec()),
            headers: vec![
                ("tenant".to_string(), b"tenant-a".to_vec()),
                ("version".to_string(), b"7".to_vec()),
                ("dup".to_string(), b"first".to_vec()),
                ("dup".to_string(), b"second".to_vec()),
            ],
        },
        Message {
            partition: 1,
            key: b"tenant-a:record/1".to_vec(),
            value: None,
            headers: vec![
                ("tenant".to_string(), b"tenant-a".to_vec()),
                ("change-id".to_string(), b"c-9".to_vec()),
            ],
        },
        Message {
            partition: 1,
            key: binary.clone(),
            value: Some(binary.iter().rev().copied().collect()),
            headers: vec![("bin".to_string(), binary.clone())],
        },
        Message {
            partition: 1,
            key: "tenant-b:\u{e9}t\u{e9}-\u{1f600}".as_bytes().to_vec(),
            value: Some(vec![b'x'; 100_000]),
            headers: Vec::new(),
        },
        Message {
            partition: 1,
            key: b"k".to_vec(),
            value: None,
            headers: Vec::new(),
        },
    ];
    let offsets = log.append(&topic, messages.clone()).await.expect("append");
    assert_eq!(offsets, vec![0, 1, 2, 3, 4]);
    let got = read_all(log, &topic, 1, 0).await;
    assert_eq!(got.len(), messages.len());
    let after_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    for (i, (m, e)) in messages.iter().zip(&got).enumerate() {
        assert_eq!(e.partition, 1);
        assert_eq!(e.offset, i as Offset);
        assert_eq!(e.key, m.key, "key of entry {i}");
        assert_eq!(e.value, m.value, "value of entry {i}");
        assert_eq!(e.headers, m.headers, "headers of entry {i}");
        // A loose bound: the append time is a wall-clock time, not a counter.
        assert!(
            e.timestamp_ms >= before_ms - 60_000 && e.timestamp_ms <= after_ms + 60_000,
            "timestamp {} of entry {i} is not near the append time",
            e.timestamp_ms
        );
    }
}

/// Operations on a topic that was never created fail with `UnknownTopic`.
pub async fn unknown_topic_is_an_error(log: &dyn Log) {
    let topic = unique_topic("unknown_topic_is_an_error");
    fn is_unknown(r: &Result<impl std::fmt::Debug, LogError>, topic: &str) -> bool {
        matches!(r, Err(LogError::UnknownTopic { topic: t }) if t == topic)
    }
    let r = log.append(&topic, vec![msg(0, "k", "v")]).await;
    assert!(is_unknown(&r, &topic), "append: {r:?}");
    let r = log.read(&topic, 0, 0, 10, Duration::ZERO).await;
    assert!(is_unknown(&r, &topic), "read: {r:?}");
    let r = log.end_offset(&topic, 0).await;
    assert!(is_unknown(&r, &topic), "end_offset: {r:?}");
    let r = log.consume("conf-group", &topic).await.map(|_| ());
    assert!(is_unknown(&r, &topic), "consume: {r:?}");
    // An error message names the topic.
    let message = log
        .end_offset(&topic, 0)
        .await
        .expect_err("end_offset of an unknown topic")
        .to_string();
    assert!(message.contains(&topic), "message {message:?}");
}

/// Operations on a partition past the topic's count fail with `UnknownPartition`, and a bad
/// message fails its whole append without writing the others.
pub async fn unknown_partition_is_an_error(log: &dyn Log) {
    let topic = new_topic(log, "unknown_partition_is_an_error", 2).await;
    fn is_unknown(r: &Result<impl std::fmt::Debug, LogError>, topic: &str) -> bool {
        matches!(
            r,
            Err(LogError::UnknownPartition { topic: t, partition: 2, partitions: 2 }) if t == topic
        )
    }
    let r = log.append(&topic, vec![msg(2, "k", "v")]).await;
    assert!(is_unknown(&r, &topic), "append: {r:?}");
    let r = log
        .append(&topic, vec![msg(0, "k", "v"), msg(2, "k", "v")])
        .await;
    assert!(is_unknown(&r, &topic), "append of a mixed batch: {r:?}");
    let r = log.read(&topic, 2, 0, 10, Duration::ZERO).await;
    assert!(is_unknown(&r, &topic), "read: {r:?}");
    let r = log.end_offset(&topic, 2).await;
    assert!(is_unknown(&r, &topic), "end_offset: {r:?}");
    assert_eq!(
        log.end_offset(&topic, 0).await.expect("end_offset"),
        0,
        "a rejected append wrote to a valid partition"
    );
}

/// 16 tasks appending 200 single messages each get distinct offsets; every message is readable
/// exactly once, each task's messages in the order it appended them.
pub async fn concurrent_appenders_get_distinct_offsets(log: &dyn Log) {
    const TASKS: usize = 16;
    const EACH: usize = 200;
    const PARTITIONS: u32 = 2;
    let topic = new_topic(log, "concurrent_appenders_get_distinct_offsets", PARTITIONS).await;
    let tasks = (0..TASKS).map(|t| {
        let topic = topic.clone();
        async move {
            let partition = (t as u32) % PARTITIONS;
            let mut offsets = Vec::with_capacity(EACH);
            for i in 0..EACH {
                let o = log
                    .append(
                        &topic,
                        vec![msg(partition, &format!("t{t}"), &format!("{i}"))],
                    )
                    .await
                    .expect("append");
                assert_eq!(o.len(), 1);
                offsets.push(o[0]);
            }
            (partition, offsets)
        }
    });
    let results = futures::future::join_all(tasks).await;
    let mut all: BTreeSet<(Partition, Offset)> = BTreeSet::new();
    for (t, (partition, offsets)) in results.iter().enumerate() {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "task {t}: offsets not increasing"
        );
        for o in offsets {
            assert!(all.insert((*partition, *o)), "offset {o} given twice");
        }
    }
    let mut per_task: Vec<Vec<usize>> = vec![Vec::new(); TASKS];
    for p in 0..PARTITIONS {
        let entries = read_all(log, &topic, p, 0).await;
        let expected = TASKS.div_ceil(PARTITIONS as usize) * EACH;
        assert_eq!(entries.len(), expected, "partition {p}");
        assert_eq!(
            log.end_offset(&topic, p).await.expect("end"),
            expected as u64
        );
        for e in entries {
            let t: usize = text(&e.key)[1..].parse().expect("task key");
            per_task[t].push(value_text(&e).parse().expect("task value"));
        }
    }
    for (t, seq) in per_task.iter().enumerate() {
        assert_eq!(
            seq,
            &(0..EACH).collect::<Vec<_>>(),
            "task {t}: messages missing, duplicated or out of order"
        );
    }
}

/// `check` succeeds on a working log.
pub async fn check_succeeds(log: &dyn Log) {
    log.check().await.expect("check");
}

// ---------------------------------------------------------------------------------------------
// Consumer groups

/// A sole member owns every partition and delivers every entry of each, in order.
pub async fn member_gets_every_entry_of_every_partition(log: &dyn Log) {
    const PARTITIONS: u32 = 3;
    const EACH: usize = 20;
    let topic = new_topic(
        log,
        "member_gets_every_entry_of_every_partition",
        PARTITIONS,
    )
    .await;
    fill(log, &topic, PARTITIONS, EACH).await;
    let group = unique_topic("group");
    let mut member = log.consume(&group, &topic).await.expect("consume");
    let mut seen = Seen::default();
    drive("member", &mut *member, &mut seen, false, |s| {
        s.has_all(PARTITIONS, EACH)
    })
    .await;
    assert_complete(&seen, PARTITIONS, EACH);
    // Without commits or rebalances, nothing is delivered twice and order holds across polls.
    for (p, entries) in &seen.by_partition {
        let offsets: Vec<Offset> = entries.iter().map(|e| e.offset).collect();
        assert_eq!(
            offsets,
            (0..EACH as Offset).collect::<Vec<_>>(),
            "partition {p}"
        );
    }
    let mut assignment = member.assignment();
    assignment.sort_unstable();
    assert_eq!(assignment, (0..PARTITIONS).collect::<Vec<_>>());
}

/// A commit is visible through `committed`; other partitions and groups have none.
pub async fn commit_then_committed(log: &dyn Log) {
    let topic = new_topic(log, "commit_then_committed", 2).await;
    fill(log, &topic, 2, 10).await;
    let group = unique_topic("group");
    assert_eq!(
        log.committed(&group, &topic, 0).await.expect("committed"),
        None
    );
    let mut member = log.consume(&group, &topic).await.expect("consume");
    let mut seen = Seen::default();
    drive("member", &mut *member, &mut seen, false, |s| {
        s.has_all(2, 10)
    })
    .await;
    member.commit(&[(0, 5)]).await.expect("commit");
    assert_eq!(
        log.committed(&group, &topic, 0).await.expect("committed"),
        Some(5)
    );
    assert_eq!(
        log.committed(&group, &topic, 1).await.expect("committed"),
        None
    );
    member.commit(&[(0, 10), (1, 3)]).await.expect("commit");
    assert_eq!(
        log.committed(&group, &topic, 0).await.expect("committed"),
        Some(10)
    );
    assert_eq!(
        log.committed(&group, &topic, 1).await.expect("committed"),
        Some(3)
    );
    let other = unique_topic("other-group");
    assert_eq!(
        log.committed(&other, &topic, 0).await.expect("committed"),
        None
    );
}

/// After the only member is dropped, a new member of the group starts each partition at the
/// committed offset (at 0 where none was committed).
pub async fn new_member_resumes_at_committed_offset(log: &dyn Log) {
    const PARTITIONS: u32 = 3;
    const EACH: usize = 10;
    let topic = new_topic(log, "new_member_resumes_at_committed_offset", PARTITIONS).await;
    fill(log, &topic, PARTITIONS, EACH).await;
    let group = unique_topic("group");
    {
        let mut first = log.consume(&group, &topic).await.expect("consume");
        let mut seen = Seen::default();
        drive("first", &mut *first, &mut seen, false, |s| {
            s.has_all(PARTITIONS, EACH)
        })
        .await;
        first.commit(&[(0, 4), (1, 7)]).await.expect("commit");
    }
    assert_eq!(
        log.committed(&group, &topic, 0).await.expect("committed"),
        Some(4)
    );
    let mut second = log.consume(&group, &topic).await.expect("consume again");
    let mut seen = Seen::default();
    drive("second", &mut *second, &mut seen, false, |s| {
        (0..PARTITIONS).all(|p| s.distinct(p).last() == Some(&(EACH as Offset - 1)))
    })
    .await;
    for (p, start) in [(0, 4), (1, 7), (2, 0)] {
        let offsets: Vec<Offset> = seen.by_partition[&p].iter().map(|e| e.offset).collect();
        assert_eq!(
            offsets,
            (start..EACH as Offset).collect::<Vec<_>>(),
            "partition {p} must resume at {start}"
        );
    }
}

/// Two groups on one topic each get every entry; one's commits do not move the other.
pub async fn groups_are_independent(log: &dyn Log) {
    const PARTITIONS: u32 = 2;
    const EACH: usize = 8;
    let topic = new_topic(log, "groups_are_independent", PARTITIONS).await;
    fill(log, &topic, PARTITIONS, EACH).await;
    let g1 = unique_topic("group-one");
    let g2 = unique_topic("group-two");
    let mut m1 = log.consume(&g1, &topic).await.expect("consume g1");
    let mut seen1 = Seen::default();
    drive("group one", &mut *m1, &mut seen1, true, |s| {
        s.has_all(PARTITIONS, EACH)
    })
    .await;
    assert_complete(&seen1, PARTITIONS, EACH);
    assert_eq!(
        log.committed(&g1, &topic, 0).await.expect("committed"),
        Some(EACH as Offset)
    );
    assert_eq!(
        log.committed(&g2, &topic, 0).await.expect("committed"),
        None
    );
    let mut m2 = log.consume(&g2, &topic).await.expect("consume g2");
    let mut seen2 = Seen::default();
    drive("group two", &mut *m2, &mut seen2, true, |s| {
        s.has_all(PARTITIONS, EACH)
    })
    .await;
    assert_complete(&seen2, PARTITIONS, EACH);
    m2.commit(&[(1, 2)]).await.expect("commit g2");
    assert_eq!(
        log.committed(&g1, &topic, 1).await.expect("committed"),
        Some(EACH as Offset),
        "group two's commit moved group one"
    );
    assert_eq!(
        log.committed(&g2, &topic, 1).await.expect("committed"),
        Some(2)
    );
}

/// Two live members of one group split the partitions (never owning one at the same time) and
/// together deliver every entry.
pub async fn two_members_share_partitions(log: &dyn Log) {
    const PARTITIONS: u32 = 4;
    const EACH: usize = 25;
    let topic = new_topic(log, "two_members_share_partitions", PARTITIONS).await;
    fill(log, &topic, PARTITIONS, EACH).await;
    let group = unique_topic("group");
    let mut a = log.consume(&group, &topic).await.expect("consume a");
    let mut b = log.consume(&group, &topic).await.expect("consume b");
    let mut seen = Seen::default();
    let mut both_owned = false;
    let deadline = Instant::now() + GROUP_DEADLINE;
    while !(both_owned && seen.has_all(PARTITIONS, EACH)) {
        assert!(
            Instant::now() < deadline,
            "two members did not share the partitions and deliver everything within \
             {GROUP_DEADLINE:?} (shared: {both_owned})"
        );
        // Both are polled at once: a Kafka rebalance needs every member to take part.
        let (ra, rb) = tokio::join!(a.poll(20, POLL_WAIT), b.poll(20, POLL_WAIT));
        let (ea, eb) = (ra.expect("poll a"), rb.expect("poll b"));
        seen.add("a", &ea);
        seen.add("b", &eb);
        commit_delivered(&mut *a, &ea).await;
        commit_delivered(&mut *b, &eb).await;
        let (pa, pb): (BTreeSet<Partition>, BTreeSet<Partition>) = (
            a.assignment().into_iter().collect(),
            b.assignment().into_iter().collect(),
        );
        assert!(
            pa.is_disjoint(&pb),
            "partitions owned by both members at once: a {pa:?}, b {pb:?}"
        );
        assert!(pa.iter().chain(&pb).all(|p| *p < PARTITIONS));
        if !pa.is_empty() && !pb.is_empty() {
            both_owned = true;
        }
    }
    assert_complete(&seen, PARTITIONS, EACH);
}

/// A member waiting at the end of its partitions delivers entries appended later.
pub async fn member_sees_entries_appended_while_polling(log: &dyn Log) {
    const PARTITIONS: u32 = 2;
    let topic = new_topic(
        log,
        "member_sees_entries_appended_while_polling",
        PARTITIONS,
    )
    .await;
    fill(log, &topic, PARTITIONS, 3).await;
    let group = unique_topic("group");
    let mut member = log.consume(&group, &topic).await.expect("consume");
    let mut seen = Seen::default();
    drive("member", &mut *member, &mut seen, true, |s| {
        s.has_all(PARTITIONS, 3)
    })
    .await;
    // Append while a poll is waiting.
    let (got, _) = tokio::join!(member.poll(10, Duration::from_secs(30)), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        log.append(&topic, vec![msg(1, "k1-3", "v1-3")])
            .await
            .expect("append")
    });
    seen.add("member", &got.expect("poll"));
    log.append(&topic, vec![msg(0, "k0-3", "v0-3")])
        .await
        .expect("append");
    drive("member", &mut *member, &mut seen, true, |s| {
        s.has_all(PARTITIONS, 4)
    })
    .await;
    assert_complete(&seen, PARTITIONS, 4);
}

// ---------------------------------------------------------------------------------------------
// Compaction

/// Compaction keeps the last entry of every key (value or young tombstone), removes nothing
/// else but superseded entries, and never reorders or renumbers. A backend whose broker compacts
/// on its own may remove nothing.
pub async fn compaction_keeps_last_value_and_order(log: &dyn Log) {
    let topic = unique_topic("compaction_keeps_last_value_and_order");
    log.ensure_topic(&TopicSpec {
        name: topic.clone(),
        partitions: 2,
        cleanup: Cleanup::Compact {
            tombstone_retention: Duration::from_secs(3600),
        },
    })
    .await
    .expect("ensure compact topic");
    let mut messages = Vec::new();
    for round in 0..5 {
        for key in ["a", "b", "c", "d"] {
            for p in 0..2 {
                messages.push(msg(p, key, &format!("{key}{round}")));
            }
        }
    }
    // "c" ends deleted, "d" is written again after a delete.
    for p in 0..2 {
        messages.push(Message {
            partition: p,
            key: b"c".to_vec(),
            value: None,
            headers: vec![("why".to_string(), b"deleted".to_vec())],
        });
        messages.push(Message {
            partition: p,
            key: b"d".to_vec(),
            value: None,
            headers: Vec::new(),
        });
        messages.push(msg(p, "d", "d-again"));
        messages.push(msg(p, "a", "a-last"));
    }
    log.append(&topic, messages).await.expect("append");
    let before: Vec<Vec<Entry>> = vec![
        read_all(log, &topic, 0, 0).await,
        read_all(log, &topic, 1, 0).await,
    ];
    let ends = [
        log.end_offset(&topic, 0).await.expect("end"),
        log.end_offset(&topic, 1).await.expect("end"),
    ];
    let stats = log.compact(&topic).await.expect("compact");
    // A second pass must also be safe.
    log.compact(&topic).await.expect("second compact");

    for p in 0..2u32 {
        let after = read_all(log, &topic, p, 0).await;
        let original = &before[p as usize];
        assert_eq!(
            log.end_offset(&topic, p).await.expect("end"),
            ends[p as usize],
            "compaction changed the end offset of partition {p}"
        );
        // Every remaining entry is an original one, unchanged, in the original order.
        let by_offset: HashMap<Offset, &Entry> = original.iter().map(|e| (e.offset, e)).collect();
        assert!(after.windows(2).all(|w| w[0].offset < w[1].offset));
        for e in &after {
            assert_eq!(
                Some(&e),
                by_offset.get(&e.offset),
                "partition {p}: entry at {} was changed by compaction",
                e.offset
            );
        }
        // The last entry of every key survives (the tombstone too: it is young).
        let mut last: HashMap<&[u8], &Entry> = HashMap::new();
        for e in original {
            last.insert(&e.key, e);
        }
        let kept: BTreeSet<Offset> = after.iter().map(|e| e.offset).collect();
        for (key, e) in &last {
            assert!(
                kept.contains(&e.offset),
                "partition {p}: the last entry of key {:?} (offset {}) was removed",
                text(key),
                e.offset
            );
        }
        let values: BTreeMap<String, String> = after
            .iter()
            .map(|e| (text(&e.key), value_text(e)))
            .collect();
        assert_eq!(values["a"], "a-last");
        assert_eq!(values["b"], "b4");
        assert_eq!(values["c"], "", "c must end as a tombstone");
        assert_eq!(values["d"], "d-again");
        // Reads from an offset compaction removed start at the next kept entry.
        let from_zero = log
            .read(&topic, p, 0, 1, Duration::ZERO)
            .await
            .expect("read");
        assert_eq!(from_zero.len(), 1);
        assert_eq!(Some(&from_zero[0].offset), kept.iter().next());
    }
    // What was removed is what the stats say (nothing, for a broker-compacted backend).
    let removed: u64 = before.iter().map(|v| v.len() as u64).sum::<u64>()
        - [
            read_all(log, &topic, 0, 0).await.len() as u64,
            read_all(log, &topic, 1, 0).await.len() as u64,
        ]
        .iter()
        .sum::<u64>();
    assert!(
        stats.superseded_removed + stats.tombstones_removed <= removed,
        "first pass reported {stats:?} but only {removed} entries are gone"
    );
    assert_eq!(stats.tombstones_removed, 0, "a young tombstone was removed");

    // Compacting a Delete topic removes nothing.
    let plain = new_topic(log, "compaction_keeps_last_value_and_order_plain", 1).await;
    log.append(&plain, vec![msg(0, "k", "1"), msg(0, "k", "2")])
        .await
        .expect("append");
    let stats = log.compact(&plain).await.expect("compact a delete topic");
    assert_eq!(stats, crate::CompactionStats::default());
    assert_eq!(read_all(log, &plain, 0, 0).await.len(), 2);
}
