//! Cases: consumer groups.

use super::*;

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
