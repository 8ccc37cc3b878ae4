//! A quick throughput check of the embedded log, not a timed test: it asserts nothing about
//! speed and is ignored by default. Run in release:
//!
//! ```text
//! cargo test -p tenantsync-log-embedded --release --test throughput -- --ignored --nocapture
//! ```

use std::sync::Arc;
use std::time::Instant;

use tenantsync_log::{Cleanup, Log, Message, TopicSpec};
use tenantsync_log_embedded::{EmbeddedLog, EmbeddedOptions};

const PARTITIONS: u32 = 8;

fn message(i: u64) -> Message {
    let tenant = format!("tenant-{}", i % 37);
    Message {
        partition: (i % PARTITIONS as u64) as u32,
        key: format!("{tenant}:record-{i}").into_bytes(),
        value: Some(
            format!(
                r#"{{"tenant":"{tenant}","id":"record-{i}","version":1,"data":{{"name":"item {i}","qty":{i},"tags":["a","b"]}},"updated_at":"2025-01-01T00:00:00Z","change_id":"0190f1f2-aaaa-bbbb-cccc-{i:012}"}}"#
            )
            .into_bytes(),
        ),
        headers: vec![("tenant".to_string(), tenant.into_bytes())],
    }
}

async fn setup() -> (tempfile::TempDir, Arc<EmbeddedLog>) {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(
        dir.path(),
        EmbeddedOptions {
            compaction_interval: None,
        },
    )
    .await
    .unwrap();
    log.ensure_topic(&TopicSpec {
        name: "bench".to_string(),
        partitions: PARTITIONS,
        cleanup: Cleanup::Delete,
    })
    .await
    .unwrap();
    (dir, Arc::new(log))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput figures; run in release with --ignored --nocapture"]
async fn single_message_appends_from_64_tasks() {
    const TASKS: u64 = 64;
    const EACH: u64 = 1_000;
    let (_dir, log) = setup().await;
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    log.append("bench", vec![message(t * EACH + i)])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    let stats = log.write_stats();
    println!(
        "single-message appends, {TASKS} tasks: {} appends in {:.2?} = {:.0} appends/s; \
         {} transactions, {:.1} appends per transaction",
        stats.appends,
        elapsed,
        stats.appends as f64 / elapsed.as_secs_f64(),
        stats.transactions,
        stats.appends as f64 / stats.transactions as f64
    );
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput figures; run in release with --ignored --nocapture"]
async fn batched_appends() {
    const BATCH: u64 = 1_000;
    for tasks in [1u64, 4] {
        let batches_each = 200 / tasks;
        let (_dir, log) = setup().await;
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let log = log.clone();
                tokio::spawn(async move {
                    for b in 0..batches_each {
                        let base = (t * batches_each + b) * BATCH;
                        let messages = (base..base + BATCH).map(message).collect();
                        log.append("bench", messages).await.unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
        let elapsed = start.elapsed();
        let stats = log.write_stats();
        println!(
            "{BATCH}-message batches, {tasks} task(s): {} entries in {:.2?} = {:.0} entries/s; \
             {} transactions",
            stats.entries,
            elapsed,
            stats.entries as f64 / elapsed.as_secs_f64(),
            stats.transactions
        );
        log.close().await.unwrap();
    }
}
