//! Harness for tests that run the real `tenantsync` binary as a process.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `tenantsync serve`.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    args: Vec<String>,
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts `tenantsync serve --data-dir DIR --listen 127.0.0.1:0 ARGS...` and waits until
    /// `/readyz` answers 200.
    pub async fn start(data_dir: &Path, args: &[&str]) -> Server {
        let mut all = vec![
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        Self::spawn(data_dir, all).await
    }

    async fn spawn(data_dir: &Path, args: Vec<String>) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
            .arg("serve")
            .args(&args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("tenantsync starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("tenantsync listening on http://") {
                    let _ = tx.send(addr.parse::<SocketAddr>().expect("an address"));
                }
            }
        });
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
            .await
            .unwrap()
            .unwrap_or_else(|_| panic!("tenantsync did not print its address; args {args:?}"));
        let server = Server {
            child,
            addr,
            args,
            data_dir: data_dir.to_owned(),
        };
        server.wait_ready().await;
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(self.url("/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "tenantsync never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same server again on the same port and data dir.
    pub async fn restart(&mut self) {
        self.kill();
        let mut args = self.args.clone();
        let i = args.iter().position(|a| a == "--listen").expect("--listen") + 1;
        args[i] = self.addr.to_string();
        // The port was just released; another process could take it, so retry a few times.
        let data_dir = self.data_dir.clone();
        *self = Self::spawn(&data_dir, args).await;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit (after a signal), returning its exit status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Declares a dataset through the API.
pub async fn declare(server: &Server, dataset: &str, partitions: u32) {
    let r = reqwest::Client::new()
        .put(server.url(&format!("/v1/datasets/{dataset}")))
        .json(&serde_json::json!({ "partitions": partitions }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "declare {dataset}: {}", r.status());
}

/// Waits until the processor has applied, published and committed everything in the dataset's
/// changes log (`GET /v1/datasets/{dataset}` shows end_offset == applied == committed).
pub async fn wait_caught_up(server: &Server, dataset: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let body: serde_json::Value = client
            .get(server.url(&format!("/v1/datasets/{dataset}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let done = body["progress"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["end_offset"] == p["applied"] && p["applied"] == p["committed"]);
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the processor never caught up: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the process exits on its own (after a signal), polling up to `timeout`; `None`
/// if it is still running then. Unlike [`Server::wait`], a server that ignores the signal fails
/// the test instead of hanging it.
pub async fn wait_exit(server: &mut Server, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = server.child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The master store's position summed over a dataset's partitions: how many changes-log
/// entries the processor has applied. 0 while the server is unreachable.
pub async fn applied_total(server: &Server, dataset: &str) -> u64 {
    let Ok(response) = reqwest::Client::new()
        .get(server.url(&format!("/v1/datasets/{dataset}")))
        .send()
        .await
    else {
        return 0;
    };
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    body["progress"].as_array().map_or(0, |ps| {
        ps.iter().filter_map(|p| p["applied"].as_u64()).sum()
    })
}
