//! Cases: topics, appends and reads.

use super::*;

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
