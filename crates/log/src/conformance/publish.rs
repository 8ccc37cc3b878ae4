//! Cases: publishing a batch's output and committing its positions as one step.

use super::*;

/// Polls `member` until it has delivered `want` entries, returning them.
async fn poll_until(member: &mut dyn GroupConsumer, want: usize) -> Vec<Entry> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + GROUP_DEADLINE;
    while seen.len() < want {
        assert!(
            Instant::now() < deadline,
            "member delivered {} of {want} entries within {GROUP_DEADLINE:?}",
            seen.len()
        );
        seen.extend(member.poll(want, POLL_WAIT).await.expect("poll"));
    }
    seen
}

/// What a partition holds for readers, from its start, once it holds at least `count` entries
/// (a published transaction becomes readable a moment after its commit on Kafka).
async fn readable(
    log: &dyn Log,
    topic: &str,
    partition: Partition,
    count: usize,
) -> Vec<(String, String)> {
    let deadline = Instant::now() + GROUP_DEADLINE;
    loop {
        let entries: Vec<(String, String)> = read_all(log, topic, partition, 0)
            .await
            .iter()
            .map(|e| (text(&e.key), value_text(e)))
            .collect();
        if entries.len() >= count || Instant::now() >= deadline {
            return entries;
        }
        tokio::time::sleep(POLL_WAIT).await;
    }
}

/// Polls every entry of a fresh topic with `partitions` partitions of `each` entries, as a new
/// member of a new group; returns the member and the group.
async fn polled_member(
    log: &dyn Log,
    case: &str,
    partitions: u32,
    each: usize,
) -> (Box<dyn GroupConsumer>, String, String) {
    let input = new_topic(log, &format!("{case}-in"), partitions).await;
    fill(log, &input, partitions, each).await;
    let group = unique_topic("group");
    let mut member = log.consume(&group, &input).await.expect("consume");
    poll_until(&mut *member, partitions as usize * each).await;
    (member, group, input)
}

/// A publish makes its messages readable, in order per partition; reading on from past the
/// last of them finds nothing (and does not fail), however the backend marks a publish.
pub async fn publish_appends_and_reads_on_past_it(log: &dyn Log) {
    let (member, _, _) = polled_member(log, "publish_appends", 2, 5).await;
    let output = new_topic(log, "publish_appends-out", 2).await;
    let publisher = member.publisher();
    publisher
        .publish(
            vec![Output::new(
                &output,
                vec![msg(0, "a", "1"), msg(1, "b", "2"), msg(0, "c", "3")],
            )],
            vec![(0, 5), (1, 4)],
        )
        .await
        .expect("publish");
    // Messages only: fine too.
    publisher
        .publish(
            vec![Output::new(&output, vec![msg(1, "d", "4")])],
            Vec::new(),
        )
        .await
        .expect("publish messages only");
    assert_eq!(
        readable(log, &output, 0, 2).await,
        vec![("a".into(), "1".into()), ("c".into(), "3".into())]
    );
    assert_eq!(
        readable(log, &output, 1, 2).await,
        vec![("b".into(), "2".into()), ("d".into(), "4".into())]
    );
    for p in 0..2 {
        let end = log.end_offset(&output, p).await.expect("end_offset");
        let past = read_all(log, &output, p, 0)
            .await
            .last()
            .map_or(0, |e| e.offset + 1);
        let rest = log
            .read(&output, p, past, 10, Duration::from_millis(100))
            .await
            .expect("read past the last entry");
        assert!(
            rest.is_empty(),
            "partition {p}: {rest:?} after the last entry (end {end})"
        );
    }
}

/// A publish commits its offsets for the member's group; offsets alone may be published.
pub async fn publish_commits_offsets(log: &dyn Log) {
    let (member, group, input) = polled_member(log, "publish_commits", 2, 5).await;
    let output = new_topic(log, "publish_commits-out", 1).await;
    let publisher = member.publisher();
    publisher
        .publish(
            vec![Output::new(&output, vec![msg(0, "a", "1")])],
            vec![(0, 5), (1, 4)],
        )
        .await
        .expect("publish");
    let committed = |p| log.committed(&group, &input, p);
    assert_eq!(committed(0).await.expect("committed"), Some(5));
    assert_eq!(committed(1).await.expect("committed"), Some(4));
    publisher
        .publish(Vec::new(), vec![(1, 5)])
        .await
        .expect("publish offsets only");
    assert_eq!(committed(1).await.expect("committed"), Some(5));
}

/// Two members of a new group on a fresh input topic, after the group moved some of the
/// partitions `a` had polled to `b`: a publisher `a` made before that (bound to every partition
/// it polled), `b`, and what `b` polled so far.
struct Split {
    group: String,
    input: String,
    stale: Box<dyn Publisher>,
    /// Kept so that the group keeps `b`'s assignment as it is.
    _a: Box<dyn GroupConsumer>,
    b: Box<dyn GroupConsumer>,
    got_b: Vec<Entry>,
}

/// Partitions of the input topic of [`split`], and entries in each.
const SPLIT_PARTITIONS: u32 = 4;
const SPLIT_EACH: usize = 3;

async fn split(log: &dyn Log, case: &str) -> Split {
    let input = new_topic(log, &format!("{case}-in"), SPLIT_PARTITIONS).await;
    fill(log, &input, SPLIT_PARTITIONS, SPLIT_EACH).await;
    let group = unique_topic("group");
    let mut a = log.consume(&group, &input).await.expect("consume a");
    poll_until(&mut *a, SPLIT_PARTITIONS as usize * SPLIT_EACH).await;
    let stale = a.publisher();
    let mut b = log.consume(&group, &input).await.expect("consume b");
    // Wait until the group has moved some partitions to b (both poll: a Kafka rebalance needs
    // every member to take part).
    let deadline = Instant::now() + GROUP_DEADLINE;
    let mut got_b = Vec::new();
    while b.assignment().is_empty() || a.assignment().len() == SPLIT_PARTITIONS as usize {
        assert!(
            Instant::now() < deadline,
            "the group never gave b a partition"
        );
        let (ra, rb) = tokio::join!(a.poll(20, POLL_WAIT), b.poll(20, POLL_WAIT));
        ra.expect("poll a");
        got_b.extend(rb.expect("poll b"));
    }
    Split {
        group,
        input,
        stale,
        _a: a,
        b,
        got_b,
    }
}

impl Split {
    /// Every input partition's offset past its last entry: what `a` would commit.
    fn all_offsets() -> Vec<(Partition, Offset)> {
        (0..SPLIT_PARTITIONS)
            .map(|p| (p, SPLIT_EACH as Offset))
            .collect()
    }

    /// Asserts the group committed nothing (the stale publish was refused).
    async fn assert_nothing_committed(&self, log: &dyn Log) {
        for p in 0..SPLIT_PARTITIONS {
            assert_eq!(
                log.committed(&self.group, &self.input, p)
                    .await
                    .expect("committed"),
                None,
                "partition {p}: a fenced publish committed"
            );
        }
    }

    /// `b` re-reads its partitions from the start and publishes `outputs` with their offsets.
    async fn publish_as_b(&mut self, outputs: Vec<Output>) {
        let owned = self.b.assignment();
        let want = owned.len() * SPLIT_EACH;
        let mut entries: Vec<Entry> = std::mem::take(&mut self.got_b)
            .into_iter()
            .filter(|e| owned.contains(&e.partition))
            .collect();
        if entries.len() < want {
            entries.extend(poll_until(&mut *self.b, want - entries.len()).await);
        }
        let offsets: Vec<(Partition, Offset)> =
            owned.iter().map(|p| (*p, SPLIT_EACH as Offset)).collect();
        self.b
            .publisher()
            .publish(outputs, offsets)
            .await
            .expect("the new owner publishes");
    }
}

/// A publisher bound to a poll made before a rebalance took partitions away is refused with
/// `NotOwner`, and none of its messages or offsets ever becomes visible; the new owner's
/// publish then goes through.
pub async fn publisher_fenced_after_losing_a_partition(log: &dyn Log) {
    let output = new_topic(log, "publisher_fenced-out", 1).await;
    let mut split = split(log, "publisher_fenced").await;
    match split
        .stale
        .publish(
            vec![Output::new(&output, vec![msg(0, "stale", "x")])],
            Split::all_offsets(),
        )
        .await
    {
        Err(LogError::NotOwner { .. }) => {}
        other => panic!("a publish bound to lost partitions must be NotOwner, got {other:?}"),
    }
    split.assert_nothing_committed(log).await;
    split
        .publish_as_b(vec![Output::new(&output, vec![msg(0, "fresh", "y")])])
        .await;
    assert_eq!(
        readable(log, &output, 0, 1).await,
        vec![("fresh".into(), "y".into())],
        "only the new owner's message may be readable"
    );
}

/// A publish to two topics is all or nothing: a fenced publisher's messages reach neither
/// topic, and the new owner's reach both, each in its order.
pub async fn publish_to_two_topics_is_all_or_nothing(log: &dyn Log) {
    let first = new_topic(log, "publish_two-first", 2).await;
    let second = new_topic(log, "publish_two-second", 2).await;
    let mut split = split(log, "publish_two").await;
    let outputs = |tag: &str| {
        vec![
            Output::new(
                &first,
                vec![
                    msg(0, &format!("{tag}-1"), "a"),
                    msg(1, &format!("{tag}-2"), "b"),
                ],
            ),
            Output::new(
                &second,
                vec![
                    msg(1, &format!("{tag}-3"), "c"),
                    msg(1, &format!("{tag}-4"), "d"),
                ],
            ),
        ]
    };
    match split
        .stale
        .publish(outputs("stale"), Split::all_offsets())
        .await
    {
        Err(LogError::NotOwner { .. }) => {}
        other => panic!("a publish bound to lost partitions must be NotOwner, got {other:?}"),
    }
    split.assert_nothing_committed(log).await;
    split.publish_as_b(outputs("fresh")).await;
    let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
    assert_eq!(
        readable(log, &first, 0, 1).await,
        vec![pair("fresh-1", "a")]
    );
    assert_eq!(
        readable(log, &first, 1, 1).await,
        vec![pair("fresh-2", "b")]
    );
    assert_eq!(readable(log, &second, 0, 0).await, Vec::new());
    assert_eq!(
        readable(log, &second, 1, 2).await,
        vec![pair("fresh-3", "c"), pair("fresh-4", "d")],
        "only the new owner's messages may be readable, in order"
    );
}
