//! Compaction of `Cleanup::Compact` topics: keep the last entry of every key.
//!
//! One pass per partition, up to the end offset at its start: scan keys in offset order on a
//! read connection (values are not read), remember the last offset of each key, and every time a
//! key shows up again queue its previous offset for deletion. Deletions go to the writer in
//! chunks of [`CHUNK`], so appends are never held up by more than one chunk. At the end, the last
//! entries that are tombstones older than the retention are deleted too.
//!
//! Safe against concurrent appends: an entry below the pass's end that is superseded stays
//! superseded whatever is appended later. This module must never delete the last entry of a key
//! unless it is an expired tombstone, and never touches a `Cleanup::Delete` topic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tenantsync_log::{Cleanup, CompactionStats, LogError, Offset, Partition};
use tracing::{debug, warn};

use crate::writer::Command;
use crate::{Shared, TopicHandle};

/// Rows scanned per read, and entries deleted per write transaction.
const CHUNK: usize = 2_000;
/// The background pass never runs more often than this.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Compaction state of a log: one pass at a time, and what each partition looked like after
/// its last pass, to skip partitions with nothing new to do.
#[derive(Default)]
pub(crate) struct Compactor {
    running: tokio::sync::Mutex<()>,
    marks: Mutex<HashMap<(i64, Partition), Mark>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    end: Offset,
    retention_ms: i64,
    /// When the oldest tombstone kept by the last pass expires, if any was kept.
    next_expiry_ms: Option<i64>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One compaction pass over a topic; nothing for a `Cleanup::Delete` topic.
pub(crate) async fn compact_topic(
    shared: &Shared,
    topic: &Arc<TopicHandle>,
) -> Result<CompactionStats, LogError> {
    let Cleanup::Compact {
        tombstone_retention,
    } = topic.cleanup()
    else {
        return Ok(CompactionStats::default());
    };
    let retention_ms = tombstone_retention.as_millis().min(i64::MAX as u128) as i64;
    let _running = shared.compaction.running.lock().await;
    let mut stats = CompactionStats::default();
    for partition in 0..topic.partitions {
        let s = compact_partition(shared, topic, partition, retention_ms).await?;
        stats.superseded_removed += s.superseded_removed;
        stats.tombstones_removed += s.tombstones_removed;
    }
    if stats != CompactionStats::default() {
        debug!(topic = %topic.name, ?stats, "compacted");
    }
    Ok(stats)
}

async fn compact_partition(
    shared: &Shared,
    topic: &Arc<TopicHandle>,
    partition: Partition,
    retention_ms: i64,
) -> Result<CompactionStats, LogError> {
    let end = topic.end(partition);
    let started_ms = now_ms();
    let mark_key = (topic.id, partition);
    let previous = shared
        .compaction
        .marks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&mark_key)
        .copied();
    if let Some(mark) = previous {
        let unchanged = mark.end == end && mark.retention_ms == retention_ms;
        if unchanged && mark.next_expiry_ms.is_none_or(|t| started_ms < t) {
            return Ok(CompactionStats::default());
        }
    }

    let mut stats = CompactionStats::default();
    // Last (offset, tombstone, timestamp) of every key seen so far.
    let mut last: HashMap<Vec<u8>, (Offset, bool, i64)> = HashMap::new();
    let mut doomed: Vec<(Offset, bool)> = Vec::new();
    let mut from = 0;
    loop {
        let rows = shared
            .readers
            .scan_keys(topic.clone(), partition, from, end, CHUNK)
            .await?;
        let Some(tail) = rows.last() else { break };
        from = tail.offset + 1;
        let full = rows.len() == CHUNK;
        for row in rows {
            if let Some((previous, _, _)) =
                last.insert(row.key, (row.offset, row.tombstone, row.timestamp_ms))
            {
                doomed.push((previous, false));
            }
        }
        if doomed.len() >= CHUNK {
            delete(
                shared,
                topic,
                partition,
                std::mem::take(&mut doomed),
                &mut stats,
            )
            .await?;
        }
        if !full {
            break;
        }
    }
    let cutoff = started_ms.saturating_sub(retention_ms);
    let mut next_expiry_ms: Option<i64> = None;
    for (offset, tombstone, timestamp_ms) in last.values() {
        if !tombstone {
            continue;
        }
        if *timestamp_ms < cutoff {
            doomed.push((*offset, true));
        } else {
            let expiry = timestamp_ms.saturating_add(retention_ms);
            next_expiry_ms = Some(next_expiry_ms.map_or(expiry, |t| t.min(expiry)));
        }
    }
    doomed.sort_unstable();
    for chunk in doomed.chunks(CHUNK) {
        delete(shared, topic, partition, chunk.to_vec(), &mut stats).await?;
    }
    shared
        .compaction
        .marks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            mark_key,
            Mark {
                end,
                retention_ms,
                next_expiry_ms,
            },
        );
    Ok(stats)
}

async fn delete(
    shared: &Shared,
    topic: &TopicHandle,
    partition: Partition,
    offsets: Vec<(Offset, bool)>,
    stats: &mut CompactionStats,
) -> Result<(), LogError> {
    let (superseded, tombstones) = shared
        .call(|reply| Command::Delete {
            topic_id: topic.id,
            partition,
            offsets,
            reply,
        })
        .await?;
    stats.superseded_removed += superseded;
    stats.tombstones_removed += tombstones;
    Ok(())
}

/// Compacts every compacted topic every `interval`, until the log is gone.
pub(crate) fn spawn_background(shared: Weak<Shared>, interval: Duration) {
    let interval = interval.max(MIN_INTERVAL);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; start one interval after opening.
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            if shared.writer.is_closed() {
                return;
            }
            let topics: Vec<Arc<TopicHandle>> = shared
                .topics
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .filter(|t| matches!(t.cleanup(), Cleanup::Compact { .. }))
                .cloned()
                .collect();
            for topic in topics {
                match compact_topic(&shared, &topic).await {
                    Ok(_) => {}
                    Err(LogError::Closed) => return,
                    Err(error) => {
                        warn!(%error, topic = %topic.name, "background compaction failed")
                    }
                }
            }
        }
    });
}
