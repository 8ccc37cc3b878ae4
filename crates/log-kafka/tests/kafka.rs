//! Kafka-specific behaviour of the backend, on librdkafka's in-process mock cluster: what the
//! conformance suite cannot say because it knows nothing of Kafka (configuration, topic
//! creation without an admin API, what lands in the partitions, group hand-over).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{MockHost, unique};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::topic_partition_list::{Offset as KafkaOffset, TopicPartitionList};
use tenantsync_log::{
    Cleanup, Entry, GroupConsumer, Log, LogError, Message, Offset, Partition, TopicSpec,
};
use tenantsync_log_kafka::{KafkaConfig, KafkaLog, RESERVED_KEYS};

/// Generous: a group rebalance on the mock takes a few seconds.
const DEADLINE: Duration = Duration::from_secs(90);
const POLL_WAIT: Duration = Duration::from_millis(200);

fn spec(name: &str, partitions: u32) -> TopicSpec {
    TopicSpec {
        name: name.to_string(),
        partitions,
        cleanup: Cleanup::Delete,
    }
}

fn msg(partition: Partition, key: &str, value: &str) -> Message {
    Message {
        partition,
        key: key.as_bytes().to_vec(),
        value: Some(value.as_bytes().to_vec()),
        headers: vec![("seq".to_string(), value.as_bytes().to_vec())],
    }
}

/// A topic created on the mock and ensured through the log.
async fn topic(mock: &MockHost, log: &KafkaLog, prefix: &str, partitions: u32) -> String {
    let name = unique(prefix);
    mock.create_topic(&name, partitions).expect("create topic");
    log.ensure_topic(&spec(&name, partitions))
        .await
        .expect("ensure pre-created topic");
    name
}

/// `per_partition` messages per partition, keyed `p{p}` with values `{p}-{i}` from `start`.
async fn fill(log: &KafkaLog, topic: &str, partitions: u32, start: usize, per_partition: usize) {
    let mut messages = Vec::new();
    for i in start..start + per_partition {
        for p in 0..partitions {
            messages.push(msg(p, &format!("p{p}"), &format!("{p}-{i}")));
        }
    }
    log.append(topic, messages).await.expect("append");
}

fn value(entry: &Entry) -> String {
    String::from_utf8_lossy(entry.value.as_deref().unwrap_or_default()).into_owned()
}

#[tokio::test]
async fn connect_rejects_conflicting_pass_through_keys() {
    common::init_tracing();
    // Validation happens before any I/O: nothing listens on this address.
    for (key, _) in RESERVED_KEYS {
        let config = KafkaConfig::new("127.0.0.1:1").with_option(*key, "1");
        match KafkaLog::connect(config).await {
            Err(LogError::Config(message)) => {
                assert!(message.contains(key), "message {message:?} names no {key}")
            }
            other => panic!("{key}: expected a config error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn unreachable_cluster_is_a_transient_error() {
    common::init_tracing();
    let config =
        KafkaConfig::new("127.0.0.1:1").with_option("socket.connection.setup.timeout.ms", "1000");
    match KafkaLog::connect(config).await {
        Err(error) => assert!(error.is_transient(), "{error:?} is not transient"),
        Ok(log) => panic!("connected to nothing: {log:?}"),
    }
}

#[tokio::test]
async fn ensure_topic_with_the_wrong_partition_count_is_a_mismatch() {
    common::init_tracing();
    let mock = MockHost::start();
    let log = mock.connect().await;
    let name = unique("mismatch");
    mock.create_topic(&name, 3).expect("create topic");
    for cleanup in [
        Cleanup::Delete,
        Cleanup::Compact {
            tombstone_retention: Duration::from_secs(60),
        },
    ] {
        let wrong = TopicSpec {
            partitions: 5,
            cleanup,
            ..spec(&name, 0)
        };
        match log.ensure_topic(&wrong).await {
            Err(LogError::TopicMismatch {
                topic,
                expected: 5,
                actual: 3,
            }) => assert_eq!(topic, name),
            other => panic!("expected a mismatch, got {other:?}"),
        }
    }
    log.ensure_topic(&spec(&name, 3))
        .await
        .expect("the right count is accepted");
}

/// The mock has no CreateTopics: `ensure_topic` of a topic nobody created fails naming it, and
/// the metadata lookups it made did not auto-create it (with the broker's default count).
/// Once an operator creates it, `ensure_topic` accepts it.
#[tokio::test]
async fn ensure_topic_without_admin_api_fails_clearly_and_creates_nothing() {
    common::init_tracing();
    let mock = MockHost::start();
    let log = mock.connect().await;
    let name = unique("absent");
    let error = log
        .ensure_topic(&spec(&name, 2))
        .await
        .expect_err("the mock cannot create topics");
    let message = error.to_string();
    assert!(message.contains(&name), "{message}");
    assert!(message.contains("could not be created"), "{message}");
    match log.end_offset(&name, 0).await {
        Err(LogError::UnknownTopic { topic }) => assert_eq!(topic, name),
        other => panic!("the topic was auto-created: {other:?}"),
    }
    mock.create_topic(&name, 2).expect("create topic");
    log.ensure_topic(&spec(&name, 2))
        .await
        .expect("an existing topic with the right count");
    assert_eq!(log.end_offset(&name, 1).await.expect("end offset"), 0);
}

/// What `append` writes lands in the named partitions, in call order, with key, value and
/// headers intact, as seen by a plain Kafka consumer (not this crate's reader).
#[tokio::test]
async fn produced_records_carry_their_partition_and_order() {
    common::init_tracing();
    let mock = MockHost::start();
    let log = mock.connect().await;
    const PARTITIONS: u32 = 3;
    const EACH: usize = 50;
    let name = topic(&mock, &log, "produced", PARTITIONS).await;
    let mut messages = Vec::new();
    let mut expected_offsets = Vec::new();
    for i in 0..EACH {
        for p in (0..PARTITIONS).rev() {
            messages.push(msg(p, &format!("p{p}"), &format!("{p}-{i}")));
            expected_offsets.push(i as Offset);
        }
    }
    let offsets = log.append(&name, messages).await.expect("append");
    assert_eq!(offsets, expected_offsets);

    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &mock.bootstrap_servers)
        .set("group.id", unique("plain-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("plain consumer");
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment
            .add_partition_offset(&name, p as i32, KafkaOffset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let mut got: BTreeMap<i32, Vec<(i64, String, String, String)>> = BTreeMap::new();
    let deadline = Instant::now() + DEADLINE;
    while got.values().map(Vec::len).sum::<usize>() < PARTITIONS as usize * EACH {
        assert!(Instant::now() < deadline, "plain consumer got {got:?}");
        let Some(message) = consumer.poll(POLL_WAIT) else {
            continue;
        };
        let message = message.expect("plain consume");
        let header = message
            .headers()
            .map(|h| h.get(0))
            .map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
            .unwrap_or_default();
        got.entry(message.partition()).or_default().push((
            message.offset(),
            String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
            header,
        ));
    }
    for p in 0..PARTITIONS {
        let expected: Vec<(i64, String, String, String)> = (0..EACH)
            .map(|i| {
                (
                    i as i64,
                    format!("p{p}"),
                    format!("{p}-{i}"),
                    format!("{p}-{i}"),
                )
            })
            .collect();
        assert_eq!(got[&(p as i32)], expected, "partition {p}");
    }
}

/// Reads keep working when the same partition is read from several offsets, backwards, and
/// concurrently (pooled readers are repositioned or added).
#[tokio::test]
async fn reads_reposition_and_run_concurrently() {
    common::init_tracing();
    let mock = MockHost::start();
    let log = mock.connect().await;
    let name = topic(&mock, &log, "reads", 1).await;
    fill(&log, &name, 1, 0, 50).await;
    let mut next = 0;
    while next < 50 {
        let got = log
            .read(&name, 0, next, 7, Duration::ZERO)
            .await
            .expect("read");
        assert!(!got.is_empty() && got.len() <= 7);
        for (i, entry) in got.iter().enumerate() {
            assert_eq!(entry.offset, next + i as Offset);
            assert_eq!(value(entry), format!("0-{}", entry.offset));
        }
        next += got.len() as Offset;
    }
    let back = log
        .read(&name, 0, 3, 2, Duration::ZERO)
        .await
        .expect("read");
    assert_eq!(back.iter().map(|e| e.offset).collect::<Vec<_>>(), [3, 4]);
    let reads = [40u64, 0, 25, 49, 10, 33].map(|from| {
        let log = &log;
        let name = &name;
        async move {
            (
                from,
                log.read(name, 0, from, 5, Duration::from_secs(5)).await,
            )
        }
    });
    for (from, got) in futures::future::join_all(reads).await {
        let got = got.expect("concurrent read");
        assert!(!got.is_empty(), "read from {from} returned nothing");
        for (i, entry) in got.iter().enumerate() {
            assert_eq!(entry.offset, from + i as Offset);
        }
    }
}

/// A read from past the end waits for that offset and skips what comes before it.
#[tokio::test]
async fn read_past_the_end_waits_for_that_offset() {
    common::init_tracing();
    let mock = MockHost::start();
    let log = mock.connect().await;
    let name = topic(&mock, &log, "ahead", 1).await;
    fill(&log, &name, 1, 0, 3).await;
    let (got, _) = tokio::join!(log.read(&name, 0, 5, 10, Duration::from_secs(30)), async {
        fill(&log, &name, 1, 3, 3).await
    });
    let got = got.expect("read");
    assert_eq!(got.first().map(|e| e.offset), Some(5), "{got:?}");
    assert_eq!(value(&got[0]), "0-5");
}

/// Polls `member` until `done`, committing everything it delivers when `commit`.
async fn drive(
    who: &str,
    member: &mut dyn GroupConsumer,
    seen: &mut BTreeMap<Partition, Vec<Offset>>,
    commit: bool,
    done: impl Fn(&BTreeMap<Partition, Vec<Offset>>, &[Partition]) -> bool,
) {
    let deadline = Instant::now() + DEADLINE;
    while !done(seen, &member.assignment()) {
        assert!(
            Instant::now() < deadline,
            "{who}: not done in time; seen {seen:?}, owns {:?}",
            member.assignment()
        );
        let entries = member.poll(100, POLL_WAIT).await.expect("poll");
        let mut next: BTreeMap<Partition, Offset> = BTreeMap::new();
        for e in &entries {
            seen.entry(e.partition).or_default().push(e.offset);
            next.insert(e.partition, e.offset + 1);
        }
        if commit && !next.is_empty() {
            let offsets: Vec<_> = next.into_iter().collect();
            match member.commit(&offsets).await {
                Ok(()) | Err(LogError::NotOwner { .. }) => {}
                Err(error) => panic!("{who}: commit {offsets:?}: {error}"),
            }
        }
    }
}

/// A second member takes partitions from the first (which stops delivering them); when it is
/// dropped with work delivered but not committed, the first takes its partitions back and
/// resumes at the committed offset: nothing is lost, only the uncommitted work is redone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survivor_takes_over_from_the_committed_offset() {
    common::init_tracing();
    let mock = MockHost::start();
    let log = mock.connect().await;
    const PARTITIONS: u32 = 4;
    let name = topic(&mock, &log, "handover", PARTITIONS).await;
    fill(&log, &name, PARTITIONS, 0, 20).await;
    let group = unique("group");
    // a joins alone and owns everything; b joining later makes a give partitions up.
    let mut a = log.consume(&group, &name).await.expect("consume a");
    let mut first = BTreeMap::new();
    drive("a alone", &mut *a, &mut first, false, |_, owned| {
        owned.len() == PARTITIONS as usize
    })
    .await;
    let mut b = log.consume(&group, &name).await.expect("consume b");

    // Phase 1: both work and commit until everything is done and both own partitions.
    let mut seen_a: BTreeMap<Partition, Vec<Offset>> = BTreeMap::new();
    let mut seen_b: BTreeMap<Partition, Vec<Offset>> = BTreeMap::new();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (owned_a, owned_b) = (a.assignment(), b.assignment());
        let all_committed = {
            let mut all = true;
            for p in 0..PARTITIONS {
                all &= log.committed(&group, &name, p).await.expect("committed") == Some(20);
            }
            all
        };
        if !owned_a.is_empty() && !owned_b.is_empty() && all_committed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "phase 1 not done: a owns {owned_a:?}, b owns {owned_b:?}, a saw {seen_a:?}, b saw {seen_b:?}"
        );
        let (ra, rb) = tokio::join!(a.poll(100, POLL_WAIT), b.poll(100, POLL_WAIT));
        for (member, seen, entries) in [
            (&mut a, &mut seen_a, ra.expect("poll a")),
            (&mut b, &mut seen_b, rb.expect("poll b")),
        ] {
            let mut next: BTreeMap<Partition, Offset> = BTreeMap::new();
            for e in &entries {
                seen.entry(e.partition).or_default().push(e.offset);
                next.insert(e.partition, e.offset + 1);
            }
            if !next.is_empty() {
                match member.commit(&next.into_iter().collect::<Vec<_>>()).await {
                    Ok(()) | Err(LogError::NotOwner { .. }) => {}
                    Err(error) => panic!("commit: {error}"),
                }
            }
        }
        let (owned_a, owned_b): (BTreeSet<_>, BTreeSet<_>) = (
            a.assignment().into_iter().collect(),
            b.assignment().into_iter().collect(),
        );
        assert!(
            owned_a.is_disjoint(&owned_b),
            "a {owned_a:?} and b {owned_b:?} overlap"
        );
    }

    // Phase 2: more entries; b delivers its share but never commits it, then goes away.
    let owned_b = b.assignment();
    fill(&log, &name, PARTITIONS, 20, 10).await;
    let mut later_b = BTreeMap::new();
    drive("b", &mut *b, &mut later_b, false, |seen, _| {
        owned_b
            .iter()
            .all(|p| seen.get(p).is_some_and(|o: &Vec<Offset>| o.len() >= 10))
    })
    .await;
    drop(b);

    // Phase 3: a takes everything over. For b's partitions it starts at b's commit (20).
    let mut later_a = BTreeMap::new();
    drive("a", &mut *a, &mut later_a, true, |seen, owned| {
        owned.len() == PARTITIONS as usize
            && (0..PARTITIONS).all(|p| seen.get(&p).and_then(|o| o.last()) == Some(&29))
    })
    .await;
    for p in &owned_b {
        let offsets = &later_a[p];
        let distinct: BTreeSet<Offset> = offsets.iter().copied().collect();
        assert_eq!(
            distinct,
            (20..30).collect::<BTreeSet<_>>(),
            "partition {p} taken over from b must resume at b's committed offset 20: {offsets:?}"
        );
    }
    for p in 0..PARTITIONS {
        assert_eq!(
            log.committed(&group, &name, p).await.expect("committed"),
            Some(30),
            "partition {p}"
        );
    }
}

/// Many more entries than a member buffers, taken a few at a time: it pauses fetching and
/// resumes, again and again, without losing, duplicating or reordering anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_member_gets_everything_once_in_order() {
    common::init_tracing();
    let mock = MockHost::start();
    let log = mock.connect().await.with_group_buffer(40);
    const PARTITIONS: u32 = 2;
    const EACH: usize = 3000;
    let name = topic(&mock, &log, "slow", PARTITIONS).await;
    fill(&log, &name, PARTITIONS, 0, EACH).await;
    let mut member = log.consume(&unique("group"), &name).await.expect("consume");
    let mut seen: BTreeMap<Partition, Vec<Offset>> = BTreeMap::new();
    let deadline = Instant::now() + DEADLINE;
    while seen.values().map(Vec::len).sum::<usize>() < PARTITIONS as usize * EACH {
        assert!(
            Instant::now() < deadline,
            "not everything delivered in time"
        );
        for e in member.poll(7, POLL_WAIT).await.expect("poll") {
            seen.entry(e.partition).or_default().push(e.offset);
        }
    }
    for p in 0..PARTITIONS {
        assert_eq!(
            seen[&p],
            (0..EACH as Offset).collect::<Vec<_>>(),
            "partition {p}"
        );
    }
}

/// A commit naming a partition the member does not own commits the owned ones and reports
/// `NotOwner` for the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_of_a_partition_not_owned_is_not_owner() {
    common::init_tracing();
    let mock = MockHost::start();
    let log = mock.connect().await;
    let name = topic(&mock, &log, "notowner", 2).await;
    fill(&log, &name, 2, 0, 3).await;
    let group = unique("group");
    let mut member = log.consume(&group, &name).await.expect("consume");
    let mut seen = BTreeMap::new();
    drive("member", &mut *member, &mut seen, false, |_, owned| {
        owned.len() == 2
    })
    .await;
    match member.commit(&[(0, 2), (7, 1)]).await {
        Err(LogError::NotOwner { topic, partition }) => {
            assert_eq!(topic, name);
            assert_eq!(partition, 7);
        }
        other => panic!("expected NotOwner, got {other:?}"),
    }
    assert_eq!(
        log.committed(&group, &name, 0).await.expect("committed"),
        Some(2)
    );
}
