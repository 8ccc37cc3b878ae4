//! `tenantsync token create | list | revoke` through the real binary, against the store of a
//! running server.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::Server;

fn token(dir: &Path, args: &[&str]) -> Output {
    let (sub, rest) = args.split_first().expect("a subcommand");
    Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args(["token", sub, "--data-dir"])
        .arg(dir)
        .args(rest)
        .env("RUST_LOG", "warn")
        .output()
        .expect("tenantsync runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_created_listed_and_revoked_while_the_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_secure(dir.path(), &[] as &[&str]).await;
    let http = reqwest::Client::new();
    let datasets = |token: &str| {
        http.get(server.url("/v1/datasets"))
            .bearer_auth(token)
            .send()
    };

    let created = token(
        dir.path(),
        &[
            "create",
            "--scope",
            "admin",
            "--scope",
            "read:inventory:acme",
            "--name",
            "root",
        ],
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let out = stdout(&created);
    let secret = out.lines().last().expect("output").to_owned();
    assert!(secret.starts_with("tsk_") && secret.len() == 47, "{out}");
    // The running server accepts it at once.
    assert_eq!(datasets(&secret).await.unwrap().status(), 200);

    // Without --name, the token gets a name of its own.
    let unnamed = token(dir.path(), &["create", "--scope", "write:*:*"]);
    assert!(unnamed.status.success(), "{}", stderr(&unnamed));
    let other = stdout(&unnamed).lines().last().unwrap().to_owned();
    assert_ne!(other, secret);

    let listed = token(dir.path(), &["list"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let list = stdout(&listed);
    assert!(
        list.contains("root") && list.contains("admin read:inventory:acme"),
        "{list}"
    );
    assert!(list.contains("write:*:*"), "{list}");
    assert!(
        !list.contains(&secret) && !list.contains(&other),
        "never shows a token: {list}"
    );
    assert_eq!(list.lines().count(), 2, "{list}");

    // Refusals name what is wrong and change nothing.
    let taken = token(
        dir.path(),
        &["create", "--scope", "admin", "--name", "root"],
    );
    assert!(!taken.status.success());
    assert!(
        stderr(&taken).contains("exists already"),
        "{}",
        stderr(&taken)
    );
    for bad in ["read:Inventory:acme", "delete:*:*", "read:*", "admin:*"] {
        let refused = token(dir.path(), &["create", "--scope", bad]);
        assert!(!refused.status.success(), "{bad} accepted");
        assert!(
            stderr(&refused).contains("invalid scope"),
            "{}",
            stderr(&refused)
        );
    }
    let no_scope = token(dir.path(), &["create", "--name", "empty"]);
    assert!(!no_scope.status.success());
    assert_eq!(stdout(&token(dir.path(), &["list"])).lines().count(), 2);

    let revoked = token(dir.path(), &["revoke", "root"]);
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    // The server trusts a token it has checked for a second (revocations through its own API
    // apply at once): within that, the revoked token stops working.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while datasets(&secret).await.unwrap().status() != 401 {
        assert!(
            std::time::Instant::now() < deadline,
            "the revoked token still works"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let again = token(dir.path(), &["revoke", "root"]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("no token is named root"),
        "{}",
        stderr(&again)
    );
    let list = stdout(&token(dir.path(), &["list"]));
    assert!(
        !list.contains("root") && list.contains("write:*:*"),
        "{list}"
    );
}
