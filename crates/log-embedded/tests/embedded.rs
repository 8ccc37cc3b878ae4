//! Behaviour of the embedded log beyond the shared conformance suite: persistence across
//! reopen and SIGKILL, the data dir lock, compaction counts, group ownership.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use tenantsync_log::{Cleanup, Entry, Log, LogError, Message, Offset, TopicSpec};
use tenantsync_log_embedded::{EmbeddedLog, EmbeddedOptions};

const DEADLINE: Duration = Duration::from_secs(30);

fn quiet() -> EmbeddedOptions {
    EmbeddedOptions {
        compaction_interval: None,
    }
}

async fn open(dir: &Path) -> EmbeddedLog {
    EmbeddedLog::open(dir, quiet()).await.expect("open")
}

fn spec(name: &str, partitions: u32, cleanup: Cleanup) -> TopicSpec {
    TopicSpec {
        name: name.to_string(),
        partitions,
        cleanup,
    }
}

fn compact(retention: Duration) -> Cleanup {
    Cleanup::Compact {
        tombstone_retention: retention,
    }
}

fn put(partition: u32, key: &str, value: &str) -> Message {
    Message {
        partition,
        key: key.as_bytes().to_vec(),
        value: Some(value.as_bytes().to_vec()),
        headers: vec![("h".to_string(), value.as_bytes().to_vec())],
    }
}

fn delete(partition: u32, key: &str) -> Message {
    Message {
        partition,
        key: key.as_bytes().to_vec(),
        value: None,
        headers: Vec::new(),
    }
}

async fn read_all(log: &dyn Log, topic: &str, partition: u32) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    let mut from = 0;
    loop {
        let batch = log
            .read(topic, partition, from, 1000, Duration::ZERO)
            .await
            .expect("read");
        let Some(last) = batch.last() else {
            return out;
        };
        from = last.offset + 1;
        out.extend(batch);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let state = "state";
    let changes = "changes";
    let before_changes;
    {
        let log = open(dir.path()).await;
        log.ensure_topic(&spec(changes, 2, Cleanup::Delete))
            .await
            .unwrap();
        log.ensure_topic(&spec(state, 1, compact(Duration::ZERO)))
            .await
            .unwrap();
        log.append(
            changes,
            vec![put(0, "a", "1"), put(1, "b", "2"), put(0, "c", "3")],
        )
        .await
        .unwrap();
        // The state topic ends with a tombstone that compaction will remove: the partition's
        // tail is gone, yet its offsets must not be handed out again.
        let offsets = log
            .append(
                state,
                vec![put(0, "k", "1"), put(0, "j", "2"), delete(0, "k")],
            )
            .await
            .unwrap();
        assert_eq!(offsets, vec![0, 1, 2]);
        let deadline = Instant::now() + DEADLINE;
        let mut removed = (0, 0);
        while removed.1 == 0 {
            assert!(Instant::now() < deadline, "the tombstone never expired");
            let stats = log.compact(state).await.unwrap();
            removed.0 += stats.superseded_removed;
            removed.1 += stats.tombstones_removed;
            tokio::task::yield_now().await;
        }
        assert_eq!(removed, (1, 1));
        let left: Vec<Offset> = read_all(&log, state, 0)
            .await
            .iter()
            .map(|e| e.offset)
            .collect();
        assert_eq!(left, vec![1]);

        let mut member = log.consume("g", changes).await.unwrap();
        member.commit(&[(0, 2), (1, 1)]).await.unwrap();
        before_changes = (
            read_all(&log, changes, 0).await,
            read_all(&log, changes, 1).await,
        );
        drop(member);
        log.close().await.unwrap();
    }

    let log = open(dir.path()).await;
    assert_eq!(log.end_offset(changes, 0).await.unwrap(), 2);
    assert_eq!(log.end_offset(changes, 1).await.unwrap(), 1);
    assert_eq!(log.end_offset(state, 0).await.unwrap(), 3);
    assert_eq!(read_all(&log, changes, 0).await, before_changes.0);
    assert_eq!(read_all(&log, changes, 1).await, before_changes.1);
    assert_eq!(log.committed("g", changes, 0).await.unwrap(), Some(2));
    assert_eq!(log.committed("g", changes, 1).await.unwrap(), Some(1));
    assert_eq!(log.committed("other", changes, 0).await.unwrap(), None);

    // Offsets continue; the compacted tail's offset 2 is not reused.
    assert_eq!(
        log.append(changes, vec![put(0, "d", "4"), put(1, "e", "5")])
            .await
            .unwrap(),
        vec![2, 1]
    );
    assert_eq!(
        log.append(state, vec![put(0, "k", "again")]).await.unwrap(),
        vec![3]
    );
    // Topic definitions survived.
    assert!(matches!(
        log.ensure_topic(&spec(changes, 3, Cleanup::Delete)).await,
        Err(LogError::TopicMismatch {
            expected: 3,
            actual: 2,
            ..
        })
    ));
    log.ensure_topic(&spec(state, 1, compact(Duration::ZERO)))
        .await
        .unwrap();
    // A new member resumes at the committed offsets.
    let mut member = log.consume("g", changes).await.unwrap();
    let mut first: BTreeMap<u32, Offset> = BTreeMap::new();
    let deadline = Instant::now() + DEADLINE;
    while first.len() < 2 {
        assert!(Instant::now() < deadline, "the member delivered nothing");
        for e in member.poll(10, Duration::from_millis(100)).await.unwrap() {
            first.entry(e.partition).or_insert(e.offset);
        }
    }
    assert_eq!(first, BTreeMap::from([(0, 2), (1, 1)]));
    drop(member);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_lock_rejects_a_second_open() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path()).await;
    match EmbeddedLog::open(dir.path(), quiet()).await {
        Err(LogError::Config(message)) => {
            assert!(
                message.contains("is in use by another tenantsync process")
                    && message.contains(&dir.path().display().to_string()),
                "message: {message}"
            );
        }
        Err(other) => panic!("expected a config error, got {other}"),
        Ok(_) => panic!("a second open of the same data dir succeeded"),
    }
    first.close().await.unwrap();
    let second = open(dir.path()).await;
    second.check().await.unwrap();
    second.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_log_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path()).await;
    log.ensure_topic(&spec("t", 1, Cleanup::Delete))
        .await
        .unwrap();
    log.close().await.unwrap();
    assert!(matches!(
        log.append("t", vec![put(0, "k", "v")]).await,
        Err(LogError::Closed)
    ));
    assert!(log.check().await.is_err());
    // Closing twice is harmless.
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_stats_count_what_was_removed() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path()).await;
    let topic = "state";
    log.ensure_topic(&spec(topic, 2, compact(Duration::from_secs(3600))))
        .await
        .unwrap();
    // Partition 0: a x3, b x2, c value then tombstone; partition 1: one of each.
    log.append(
        topic,
        vec![
            put(0, "a", "1"),
            put(0, "b", "1"),
            put(0, "a", "2"),
            put(0, "c", "1"),
            put(1, "a", "x"),
            put(0, "b", "2"),
            delete(0, "c"),
            put(0, "a", "3"),
            put(1, "b", "y"),
        ],
    )
    .await
    .unwrap();
    let stats = log.compact(topic).await.unwrap();
    assert_eq!(stats.superseded_removed, 4);
    assert_eq!(stats.tombstones_removed, 0, "the tombstone is young");
    let left: Vec<(String, Option<String>)> = read_all(&log, topic, 0)
        .await
        .into_iter()
        .map(|e| {
            (
                String::from_utf8(e.key).unwrap(),
                e.value.map(|v| String::from_utf8(v).unwrap()),
            )
        })
        .collect();
    assert_eq!(
        left,
        vec![
            ("b".to_string(), Some("2".to_string())),
            ("c".to_string(), None),
            ("a".to_string(), Some("3".to_string())),
        ]
    );
    assert_eq!(read_all(&log, topic, 1).await.len(), 2);
    // Nothing new: nothing removed.
    assert_eq!(log.compact(topic).await.unwrap(), Default::default());

    // Supersede more, over several chunks' worth, and shorten the retention to zero: the
    // tombstone goes too.
    let many: Vec<Message> = (0..5000)
        .map(|i| put(1, &format!("k{}", i % 10), &i.to_string()))
        .collect();
    log.append(topic, many).await.unwrap();
    log.ensure_topic(&spec(topic, 2, compact(Duration::ZERO)))
        .await
        .unwrap();
    let mut total = (0, 0);
    let deadline = Instant::now() + DEADLINE;
    while total.1 == 0 {
        assert!(Instant::now() < deadline, "the tombstone never expired");
        let stats = log.compact(topic).await.unwrap();
        total.0 += stats.superseded_removed;
        total.1 += stats.tombstones_removed;
        tokio::task::yield_now().await;
    }
    assert_eq!(total, (4990, 1));
    assert_eq!(read_all(&log, topic, 0).await.len(), 2);
    let p1 = read_all(&log, topic, 1).await;
    assert_eq!(p1.len(), 12, "a, b and the last of k0..k9");
    assert_eq!(log.end_offset(topic, 1).await.unwrap(), 5002);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_compaction_runs() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(
        dir.path(),
        EmbeddedOptions {
            compaction_interval: Some(Duration::from_millis(20)),
        },
    )
    .await
    .unwrap();
    log.ensure_topic(&spec("state", 1, compact(Duration::from_secs(3600))))
        .await
        .unwrap();
    log.append(
        "state",
        (0..100).map(|i| put(0, "same", &i.to_string())).collect(),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = read_all(&log, "state", 0).await;
        if left.len() == 1 {
            assert_eq!(left[0].offset, 99);
            break;
        }
        assert!(Instant::now() < deadline, "background compaction never ran");
        // Wait on something real rather than sleeping: a read that times out quickly.
        log.read("state", 0, 100, 1, Duration::from_millis(20))
            .await
            .unwrap();
    }
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_policy_cannot_flip() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path()).await;
    log.ensure_topic(&spec("changes", 1, Cleanup::Delete))
        .await
        .unwrap();
    let err = log
        .ensure_topic(&spec("changes", 1, compact(Duration::ZERO)))
        .await
        .expect_err("turning a delete topic into a compacted one");
    assert!(matches!(err, LogError::Config(_)), "{err}");
    assert!(err.to_string().contains("changes"));
    assert!(matches!(
        log.ensure_topic(&spec("bad", 0, Cleanup::Delete)).await,
        Err(LogError::Config(_))
    ));
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_commit_a_partition_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path()).await;
    log.ensure_topic(&spec("t", 2, Cleanup::Delete))
        .await
        .unwrap();
    let mut a = log.consume("g", "t").await.unwrap();
    assert_eq!(a.assignment(), vec![0, 1]);
    a.commit(&[(1, 0)]).await.unwrap();
    let mut b = log.consume("g", "t").await.unwrap();
    assert_eq!(a.assignment(), vec![0]);
    assert_eq!(b.assignment(), vec![1]);
    assert!(matches!(
        a.commit(&[(1, 5)]).await,
        Err(LogError::NotOwner { partition: 1, .. })
    ));
    // b has not polled yet, but owns partition 1 since it joined.
    b.commit(&[(1, 3)]).await.unwrap();
    assert_eq!(log.committed("g", "t", 1).await.unwrap(), Some(3));
    drop(b);
    // Partition 1 came back to a, but as a new ownership: until a polls (and restarts the
    // partition at the committed offset) it cannot commit for it.
    assert_eq!(a.assignment(), vec![0, 1]);
    assert!(matches!(
        a.commit(&[(1, 4)]).await,
        Err(LogError::NotOwner { partition: 1, .. })
    ));
    assert!(a.poll(10, Duration::ZERO).await.unwrap().is_empty());
    a.commit(&[(1, 4)]).await.unwrap();
    assert!(matches!(
        a.commit(&[(7, 1)]).await,
        Err(LogError::UnknownPartition { partition: 7, .. })
    ));
    drop(a);
    log.close().await.unwrap();
}
