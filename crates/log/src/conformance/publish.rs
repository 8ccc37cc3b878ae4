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
            &output,
            vec![msg(0, "a", "1"), msg(1, "b", "2"), msg(0, "c", "3")],
            vec![(0, 5), (1, 4)],
        )
        .await
        .expect("publish");
    // Messages only: fine too.
    publisher
        .publish(&output, vec![msg(1, "d", "4")], Vec::new())
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
        .publish(&output, vec![msg(0, "a", "1")], vec![(0, 5), (1, 4)])
        .await
        .expect("publish");
    let committed = |p| log.committed(&group, &input, p);
    assert_eq!(committed(0).await.expect("committed"), Some(5));
    assert_eq!(committed(1).await.expect("committed"), Some(4));
    publisher
        .publish(&output, Vec::new(), vec![(1, 5)])
        .await
        .expect("publish offsets only");
    assert_eq!(committed(1).await.expect("committed"), Some(5));
}

/// A publisher bound to a poll made before a rebalance took partitions away is refused with
/// `NotOwner`, and none of its messages or offsets ever becomes visible; the new owner's
/// publish then goes through.
pub async fn publisher_fenced_after_losing_a_partition(log: &dyn Log) {
    const PARTITIONS: u32 = 4;
    let input = new_topic(log, "publisher_fenced-in", PARTITIONS).await;
    let output = new_topic(log, "publisher_fenced-out", 1).await;
    fill(log, &input, PARTITIONS, 3).await;
    let group = unique_topic("group");
    let mut a = log.consume(&group, &input).await.expect("consume a");
    poll_until(&mut *a, 12).await;
    let stale = a.publisher();
    let all: Vec<(Partition, Offset)> = (0..PARTITIONS).map(|p| (p, 3)).collect();
    let mut b = log.consume(&group, &input).await.expect("consume b");
    // Wait until the group has moved some partitions to b (both poll: a Kafka rebalance needs
    // every member to take part).
    let deadline = Instant::now() + GROUP_DEADLINE;
    let mut got_b = Vec::new();
    while b.assignment().is_empty() || a.assignment().len() == PARTITIONS as usize {
        assert!(
            Instant::now() < deadline,
            "the group never gave b a partition"
        );
        let (ra, rb) = tokio::join!(a.poll(20, POLL_WAIT), b.poll(20, POLL_WAIT));
        ra.expect("poll a");
        got_b.extend(rb.expect("poll b"));
    }
    match stale
        .publish(&output, vec![msg(0, "stale", "x")], all.clone())
        .await
    {
        Err(LogError::NotOwner { .. }) => {}
        other => panic!("a publish bound to lost partitions must be NotOwner, got {other:?}"),
    }
    for p in 0..PARTITIONS {
        assert_eq!(
            log.committed(&group, &input, p).await.expect("committed"),
            None,
            "partition {p}: a fenced publish committed"
        );
    }
    // b re-reads its partitions from the start and publishes.
    let owned = b.assignment();
    let want = owned.len() * 3;
    let mut entries: Vec<Entry> = got_b
        .into_iter()
        .filter(|e| owned.contains(&e.partition))
        .collect();
    if entries.len() < want {
        entries.extend(poll_until(&mut *b, want - entries.len()).await);
    }
    let offsets: Vec<(Partition, Offset)> = owned.iter().map(|p| (*p, 3)).collect();
    b.publisher()
        .publish(&output, vec![msg(0, "fresh", "y")], offsets)
        .await
        .expect("the new owner publishes");
    assert_eq!(
        readable(log, &output, 0, 1).await,
        vec![("fresh".into(), "y".into())],
        "only the new owner's message may be readable"
    );
}
