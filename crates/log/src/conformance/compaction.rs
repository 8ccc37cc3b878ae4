//! Cases: compaction.

use super::*;

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
