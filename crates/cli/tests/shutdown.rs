//! Graceful shutdown under load: SIGTERM while 64 writers keep writing. `serve` must stop every
//! background service and exit 0 within its shutdown timeout (an instance whose services do not
//! stop in time exits 1, naming them), and nothing it answered 202 may be lost: after a restart
//! every accepted write is in the master store.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Server;
use serde_json::{Value, json};

const WRITERS: u64 = 64;
const DATASET: &str = "shut";
/// Accepted writes before the signal, so that it lands in the middle of the load.
const BEFORE_SIGNAL: u64 = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_writes_stops_cleanly_and_loses_nothing_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--shutdown-timeout-secs", "10"]).await;
    common::declare(&server, DATASET, 4).await;

    let accepted: Arc<Mutex<Vec<(String, String, u64)>>> = Arc::default();
    let count = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (accepted, count) = (accepted.clone(), count.clone());
        let base = server.url(&format!(
            "/v1/datasets/{DATASET}/tenants/t{}/records",
            w % 8
        ));
        writers.push(tokio::spawn(async move {
            let client = common::http_client();
            for n in 0.. {
                let id = format!("w{w}-{n}");
                let sent = client
                    .put(format!("{base}/{id}"))
                    .json(&json!({ "writer": w, "n": n }))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 202 => {
                        accepted
                            .lock()
                            .unwrap()
                            .push((format!("t{}", w % 8), id, n));
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    // Shutting down: refused connections, or a 503 from a draining server.
                    Err(_) => return,
                    Ok(r) if r.status().is_server_error() => return,
                    Ok(r) => panic!("unexpected {} for {id}", r.status()),
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while count.load(Ordering::Relaxed) < BEFORE_SIGNAL {
        assert!(Instant::now() < deadline, "the writers made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let pid = nix::unistd::Pid::from_raw(server.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    // The server's own bound is 10 s; the wait allows for process teardown on a busy machine.
    let status = common::wait_exit(&mut server, Duration::from_secs(20))
        .await
        .expect("tenantsync did not exit within 20 s of SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    for writer in writers {
        writer.await.unwrap();
    }
    let accepted = std::mem::take(&mut *accepted.lock().unwrap());
    assert!(accepted.len() as u64 >= BEFORE_SIGNAL);

    server.restart().await;
    common::wait_caught_up(&server, DATASET).await;
    let client = common::http_client();
    let mut missing = Vec::new();
    for (tenant, id, n) in &accepted {
        let r = client
            .get(server.url(&format!(
                "/v1/datasets/{DATASET}/tenants/{tenant}/records/{id}"
            )))
            .send()
            .await
            .unwrap();
        if r.status() != 200 {
            missing.push(format!("{tenant}/{id}: {}", r.status()));
            continue;
        }
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["data"]["n"], json!(n), "{tenant}/{id}: {body}");
    }
    assert!(
        missing.is_empty(),
        "{} of {} accepted writes lost after SIGTERM, e.g. {:?}",
        missing.len(),
        accepted.len(),
        &missing[..missing.len().min(5)]
    );
}
