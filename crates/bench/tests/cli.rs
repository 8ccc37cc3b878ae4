//! The `tenantsync-bench` command line: every subcommand explains its flags, and `subscribers`
//! says clearly when it has no `tenantsync` binary to run as the server. The benches themselves
//! are measurements and are not run here.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `program ARGS...` to completion (failing the test if it runs for a minute).
fn run(program: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("TENANTSYNC_BIN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tenantsync-bench starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{} {args:?} still running after 60 s", program.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn bench(args: &[&str]) -> Output {
    run(Path::new(env!("CARGO_BIN_EXE_tenantsync-bench")), args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_for_every_subcommand() {
    let cases: [(&[&str], &[&str]); 5] = [
        (
            &["--help"],
            &["processor", "http", "subscribers", "batches"],
        ),
        (
            &["processor", "--help"],
            &["--log", "--partitions", "--tenants", "--changes", "--batch"],
        ),
        (
            &["http", "--help"],
            &["--log", "--duration", "--connections", "--rate"],
        ),
        (
            &["subscribers", "--help"],
            &[
                "--subscribers",
                "--mode",
                "--rate",
                "--duration",
                "--tenantsync",
                "TENANTSYNC_BIN",
            ],
        ),
        (
            &["batches", "--help"],
            &[
                "--tenants",
                "--top-share",
                "--rate",
                "--backlog",
                "--read-first",
            ],
        ),
    ];
    for (args, flags) in cases {
        let out = bench(args);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "tenantsync-bench {args:?}: {:?}\n{}",
            out.status,
            text(&out.stderr)
        );
        for flag in flags {
            assert!(
                stdout.contains(flag),
                "tenantsync-bench {args:?} does not mention {flag}:\n{stdout}"
            );
        }
    }
}

#[test]
fn subscribers_refuses_a_tenantsync_path_that_is_not_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("tenantsync");
    let out = bench(&["subscribers", "--tenantsync", missing.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "ran without a server binary");
    assert!(
        stderr.contains(missing.to_str().unwrap()) && stderr.contains("--tenantsync"),
        "the error should name the path and the flag: {stderr}"
    );
}

#[test]
fn subscribers_looks_for_tenantsync_next_to_itself() {
    // A copy of this binary in a directory of its own, with no tenantsync beside it. Inside the
    // target dir, so that a hard link usually works and saves copying the binary.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let alone = dir.path().join("tenantsync-bench");
    let original = env!("CARGO_BIN_EXE_tenantsync-bench");
    if std::fs::hard_link(original, &alone).is_err() {
        std::fs::copy(original, &alone).unwrap();
    }
    let out = run(&alone, &["subscribers"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "ran without a server binary");
    let expected = dir.path().join("tenantsync");
    assert!(
        stderr.contains(&format!(
            "no tenantsync binary next to this one ({})",
            expected.display()
        )) && stderr.contains("cargo build -p tenantsync")
            && stderr.contains("TENANTSYNC_BIN"),
        "the error should say where it looked and how to fix it: {stderr}"
    );
}
