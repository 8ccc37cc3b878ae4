//! `restart`: how long after a SIGKILL and a restart the instance applies a change again, with
//! and without static group membership on Kafka.
//!
//! One `tenantsync serve` process on a real cluster (a child process, as in production) holds
//! every partition. Each round SIGKILLs it, starts it again on the same data dir and port, and
//! times until a write answered with `?wait=applied` comes back applied. `--membership static`
//! restarts it under the same `--instance-name` (it rejoins as the same static member and gets
//! its partitions back at once); `renamed` under a new name each time (as a dynamic member
//! would: the group waits for the killed member's session to time out, 45 s by default).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::json;

use crate::subscribers::{listening_address, tenantsync_binary};
use crate::{Common, DATASET, Env};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Membership {
    /// The same --instance-name after every restart.
    Static,
    /// A new --instance-name after every restart.
    Renamed,
}

#[derive(Debug, Args)]
pub struct RestartArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, value_enum, default_value = "static")]
    membership: Membership,
    /// Kill-and-restart rounds.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// The `tenantsync` binary [default: the one next to this binary].
    #[arg(long, env = "TENANTSYNC_BIN", value_name = "PATH")]
    tenantsync: Option<PathBuf>,
}

struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(
    binary: &PathBuf,
    env: &Env,
    listen: &str,
    name: &str,
) -> anyhow::Result<(Server, String)> {
    let mut child = Command::new(binary)
        .args([
            "serve",
            "--insecure-no-auth",
            "--listen",
            listen,
            "--instance-name",
            name,
        ])
        .args(["--log", &env.log_url, "--topic-prefix", env.topics.prefix()])
        .args([
            "--kafka-replication-factor",
            &env.kafka.replication_factor.to_string(),
        ])
        .arg("--data-dir")
        .arg(env.dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let addr = listening_address(&mut child)?;
    Ok((Server { child }, addr))
}

/// Writes one change with `?wait=applied` until one comes back applied (200).
async fn write_applied(client: &reqwest::Client, base: &str, n: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let url = format!("{base}/v1/datasets/{DATASET}/tenants/t/records/r?wait=applied");
        let sent = client
            .put(url)
            .header("Idempotency-Key", format!("restart-{n}-{attempt}"))
            .json(&json!({ "n": n }))
            .send()
            .await;
        if matches!(&sent, Ok(r) if r.status() == reqwest::StatusCode::OK) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "nothing applied within 300 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn run(args: RestartArgs) -> anyhow::Result<()> {
    let binary = tenantsync_binary(args.tenantsync)?;
    let env = Env::new(&args.common)?;
    anyhow::ensure!(
        env.log_url.starts_with("kafka://"),
        "restart measures Kafka group membership: pass --log kafka"
    );
    // A fixed port, so that every restart listens where the last one did.
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let client = reqwest::Client::new();
    let (mut server, addr) = start(&binary, &env, &listen, "bench-restart-0")?;
    let base = format!("http://{addr}");
    crate::declare_over_http(&client, &base, args.common.partitions).await?;
    write_applied(&client, &base, 0).await?;
    let mut times = Vec::new();
    for round in 1..=args.rounds {
        drop(server);
        let killed = Instant::now();
        let name = match args.membership {
            Membership::Static => "bench-restart-0".to_owned(),
            Membership::Renamed => format!("bench-restart-{round}"),
        };
        let (restarted, _) = start(&binary, &env, &listen, &name)?;
        server = restarted;
        let listening = killed.elapsed();
        write_applied(&client, &base, round).await?;
        let applied = killed.elapsed();
        eprintln!(
            "  round {round}: listening after {:.2} s, first change applied after {:.2} s",
            listening.as_secs_f64(),
            applied.as_secs_f64()
        );
        times.push(applied.as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "restart ({:?} membership, {} partitions): SIGKILL -> first change applied, median {:.2} s, max {:.2} s over {} rounds",
        args.membership,
        args.common.partitions,
        times[times.len() / 2],
        times[times.len() - 1],
        times.len()
    );
    drop(server);
    Ok(())
}
