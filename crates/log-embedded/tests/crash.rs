//! An acknowledged append survives SIGKILL: a child process appends and prints what was
//! acknowledged, the test kills it at a random moment, reopens the data dir and checks.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tenantsync_log::{Cleanup, Log, Message, TopicSpec};
use tenantsync_log_embedded::{EmbeddedLog, EmbeddedOptions};

const CHILD_ENV: &str = "TENANTSYNC_LOG_CRASH_CHILD_DIR";
const TOPIC: &str = "crash";
const PARTITIONS: u32 = 3;
const ROUNDS: usize = 3;

fn spec() -> TopicSpec {
    TopicSpec {
        name: TOPIC.to_string(),
        partitions: PARTITIONS,
        cleanup: Cleanup::Delete,
    }
}

/// Not a test on its own: the child process of `acknowledged_appends_survive_sigkill`.
#[test]
#[ignore = "run by acknowledged_appends_survive_sigkill in a child process"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let log = Arc::new(
            EmbeddedLog::open(std::path::Path::new(&dir), EmbeddedOptions::default())
                .await
                .unwrap(),
        );
        log.ensure_topic(&spec()).await.unwrap();
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let tasks: Vec<_> = (0..8u32)
            .map(|task| {
                let log = log.clone();
                let out = out.clone();
                tokio::spawn(async move {
                    for i in 0u64.. {
                        let partition = (task + i as u32) % PARTITIONS;
                        let value = format!("{task}-{i}-{}", std::process::id());
                        let batch = 1 + (i % 3) as usize;
                        let messages = (0..batch)
                            .map(|j| Message {
                                partition,
                                key: format!("{task}").into_bytes(),
                                value: Some(format!("{value}-{j}").into_bytes()),
                                headers: Vec::new(),
                            })
                            .collect();
                        let offsets = log.append(TOPIC, messages).await.unwrap();
                        let mut out = out.lock().unwrap();
                        for (j, o) in offsets.iter().enumerate() {
                            writeln!(out, "ack {partition} {o} {value}-{j}").unwrap();
                        }
                        out.flush().unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: BTreeMap<(u32, u64), String> = BTreeMap::new();
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--ignored", "--nocapture"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        // Kill after a varying number of acknowledgements, mid-stream.
        let kill_after = 300 + round * 277;
        let mut seen = 0;
        let mut lines = stdout.lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(ack) = parse(&line) {
                acked.insert(ack.0, ack.1);
                seen += 1;
                if seen == kill_after {
                    child.kill().unwrap();
                    break;
                }
            }
        }
        assert_eq!(seen, kill_after, "the child stopped early in round {round}");
        // What the child printed before it died was acknowledged too.
        for line in lines {
            let Ok(line) = line else { break };
            if let Some(ack) = parse(&line) {
                acked.insert(ack.0, ack.1);
            }
        }
        child.wait().unwrap();
        check(dir.path(), &acked);
    }
}

fn parse(line: &str) -> Option<((u32, u64), String)> {
    let mut parts = line.strip_prefix("ack ")?.split(' ');
    let partition = parts.next()?.parse().ok()?;
    let offset = parts.next()?.parse().ok()?;
    Some(((partition, offset), parts.next()?.to_string()))
}

fn check(dir: &std::path::Path, acked: &BTreeMap<(u32, u64), String>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let options = EmbeddedOptions {
            compaction_interval: None,
        };
        let log = EmbeddedLog::open(dir, options).await.unwrap();
        for p in 0..PARTITIONS {
            let end = log.end_offset(TOPIC, p).await.unwrap();
            let mut next = 0;
            while next < end {
                let entries = log
                    .read(TOPIC, p, next, 1000, Duration::ZERO)
                    .await
                    .unwrap();
                for e in entries {
                    assert_eq!(e.offset, next, "partition {p} has a gap");
                    next += 1;
                    if let Some(value) = acked.get(&(p, e.offset)) {
                        assert_eq!(
                            e.value.as_deref(),
                            Some(value.as_bytes()),
                            "partition {p} offset {}",
                            e.offset
                        );
                    }
                }
            }
        }
        for ((p, o), value) in acked {
            let end = log.end_offset(TOPIC, *p).await.unwrap();
            assert!(
                *o < end,
                "acknowledged {value} at {p}/{o} is lost (end {end})"
            );
        }
        log.close().await.unwrap();
    });
}
