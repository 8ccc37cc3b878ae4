//! A store password never reaches any output of the binary: stdout and stderr (logging at debug
//! level), `/readyz`, `/metrics`, `--help`, and the `token` subcommand's errors, whether the
//! password is in the URL's userinfo or in its `?password=` parameter, and whether the store
//! answers, refuses the connection or the URL is malformed.
//!
//! Starting a server needs PostgreSQL (`TENANTSYNC_TEST_POSTGRES`, with trust authentication,
//! which accepts any password); without it that test prints a skip notice. The others always
//! run: a store on port 1 refuses the connection without any PostgreSQL.

mod common;
#[path = "../../store/tests/common/pg_schema.rs"]
mod pg_schema;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pg_schema::{POSTGRES_ENV, PgSchema};

const PASSWORD: &str = "S3cret-pw";

/// `tenantsync ARGS`, logging everything it logs at debug level.
fn tenantsync(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tenantsync"));
    command
        .args(args)
        .env("RUST_LOG", "debug")
        .env_remove("TENANTSYNC_STORE")
        .env_remove("TENANTSYNC_CONFIG");
    command
}

fn run(command: &mut Command) -> (Output, String) {
    let out = command.output().expect("tenantsync runs");
    let text = format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

fn assert_hidden(what: &str, text: &str) {
    assert!(
        !text.contains(PASSWORD),
        "{what} shows the password:\n{text}"
    );
}

/// Runs `serve` and `token list` against `url`, which must fail with a message containing
/// `expected`, and checks that neither shows the password.
fn assert_refused_without_password(url: &str, expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let commands: [(&str, Command); 3] = [
        ("serve --store", {
            let mut c = tenantsync(&["serve", "--data-dir", data_dir]);
            c.args(["--listen", "127.0.0.1:0", "--store", url]);
            c
        }),
        ("serve with TENANTSYNC_STORE", {
            let mut c = tenantsync(&["serve", "--data-dir", data_dir]);
            c.args(["--listen", "127.0.0.1:0"])
                .env("TENANTSYNC_STORE", url);
            c
        }),
        ("token list --store", {
            let mut c = tenantsync(&["token", "list", "--data-dir", data_dir]);
            c.args(["--store", url]);
            c
        }),
    ];
    for (what, mut command) in commands {
        let (out, text) = run(&mut command);
        assert!(!out.status.success(), "{what} {url} succeeded:\n{text}");
        assert!(
            text.contains(expected),
            "{what} {url} does not say {expected:?}:\n{text}"
        );
        assert_hidden(&format!("{what} (store {url})"), &text);
    }
}

#[test]
fn a_store_that_cannot_be_reached_never_shows_its_password() {
    for url in [
        format!("postgres://root:{PASSWORD}@127.0.0.1:1/test"),
        format!("postgres://root@127.0.0.1:1/test?password={PASSWORD}"),
        format!("postgresql://root@127.0.0.1:1/test?sslmode=disable&password={PASSWORD}"),
    ] {
        assert_refused_without_password(&url, "cannot open the master store");
    }
}

#[test]
fn a_malformed_store_url_never_shows_its_password() {
    for url in [
        format!("postgres://root:{PASSWORD}@127.0.0.1:notaport/test"),
        format!("postgres://root@127.0.0.1:5432/test?password={PASSWORD}&unterminated"),
        format!("postgres://root@127.0.0.1:1/test?PassWord={PASSWORD}"),
        format!("postgres:/root:{PASSWORD}@127.0.0.1:5432/test"),
        format!("postgres://root:{PASSWORD}"),
        format!("postgres://root:{PASSWORD}/test@127.0.0.1:5432"),
        format!("mysql://root:{PASSWORD}@127.0.0.1/test"),
        format!("root:{PASSWORD}@127.0.0.1:5432/test"),
    ] {
        assert_refused_without_password(&url, "invalid store");
    }
}

#[test]
fn help_never_shows_a_store_password() {
    let url = format!("postgres://root:{PASSWORD}@127.0.0.1:5432/test?password={PASSWORD}");
    for args in [
        &["serve", "--help"][..],
        &["token", "list", "--help"],
        &["token", "create", "--help"],
    ] {
        let (out, text) = run(tenantsync(args).env("TENANTSYNC_STORE", &url));
        assert!(out.status.success(), "{args:?}:\n{text}");
        assert!(text.contains("--store"), "{args:?}:\n{text}");
        assert_hidden(&format!("{args:?}"), &text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_never_shows_its_store_password() {
    let Some(in_userinfo) = PgSchema::create().await else {
        return;
    };
    let in_query = PgSchema::create().await.expect("a second schema");
    let (scheme, rest) = in_userinfo.url.split_once("://").expect("a URL");
    let Some((userinfo, rest)) = rest.split_once('@') else {
        eprintln!("skipping the running-server password test: {POSTGRES_ENV} names no user");
        return;
    };
    let user = userinfo.split(':').next().unwrap_or(userinfo);
    for url in [
        format!("{scheme}://{user}:{PASSWORD}@{rest}"),
        format!("{}&password={PASSWORD}", in_query.url),
    ] {
        check_running_server(&url).await;
    }
}

/// Starts `serve` on the store at `url` with authentication on and no token yet (so it prints
/// how to create one), creates a token with `token create`, reads `/readyz` and `/metrics`,
/// stops the server and checks every output.
async fn check_running_server(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let mut child = tenantsync(&["serve", "--data-dir", data_dir])
        .args(["--listen", "127.0.0.1:0", "--store", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tenantsync starts");
    let output = Captured::start(&mut child);
    let addr = output.wait_for_address(&mut child).await;
    let http = common::http_client();
    let readyz = wait_ready(&http, &format!("http://{addr}/readyz")).await;

    let (out, token_output) = run(tenantsync(&["token", "create", "--data-dir", data_dir])
        .args(["--store", url, "--scope", "admin", "--name", "admin"]));
    assert!(out.status.success(), "token create:\n{token_output}");
    let token = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("the token")
        .to_owned();
    let metrics = http
        .get(format!("http://{addr}/metrics"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let metrics = metrics.text().await.unwrap();

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(30)).await;
    let (stdout, stderr) = output.finish();
    assert!(status.success(), "serve exited with {status}:\n{stderr}");
    assert!(stderr.contains("tenantsync started"), "{stderr}");
    assert!(stderr.contains("tenantsync token create"), "{stderr}");
    for (what, text) in [
        ("stdout", &stdout),
        ("stderr", &stderr),
        ("/readyz", &readyz),
        ("/metrics", &metrics),
        ("token create", &token_output),
    ] {
        assert_hidden(&format!("{what} (store {url})"), text);
    }
}

/// Everything a child writes to stdout and stderr, read by two threads.
struct Captured {
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    address: std::sync::mpsc::Receiver<String>,
}

impl Captured {
    fn start(child: &mut Child) -> Self {
        let (tx, address) = std::sync::mpsc::channel();
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out_pipe = child.stdout.take().expect("piped stdout");
        let err_pipe = child.stderr.take().expect("piped stderr");
        let out_text = stdout.clone();
        let err_text = stderr.clone();
        let readers = vec![
            std::thread::spawn(move || {
                for line in BufReader::new(out_pipe).lines().map_while(Result::ok) {
                    if let Some(addr) = line.strip_prefix("tenantsync listening on http://") {
                        let _ = tx.send(addr.to_owned());
                    }
                    out_text.lock().unwrap().push_str(&format!("{line}\n"));
                }
            }),
            std::thread::spawn(move || {
                for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                    err_text.lock().unwrap().push_str(&format!("{line}\n"));
                }
            }),
        ];
        Self {
            stdout,
            stderr,
            readers,
            address,
        }
    }

    /// The address the server printed; panics with its stderr if it exits first.
    async fn wait_for_address(&self, child: &mut Child) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(addr) = self.address.try_recv() {
                return addr;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "serve exited with {status} before listening:\n{}",
                    self.stderr.lock().unwrap()
                );
            }
            assert!(Instant::now() < deadline, "serve never printed its address");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stdout and stderr, once the child has exited and closed both.
    fn finish(self) -> (String, String) {
        for reader in self.readers {
            reader.join().unwrap();
        }
        let stdout = self.stdout.lock().unwrap().clone();
        let stderr = self.stderr.lock().unwrap().clone();
        (stdout, stderr)
    }
}

async fn wait_ready(http: &reqwest::Client, url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(url).send().await
            && r.status() == 200
        {
            return r.text().await.unwrap();
        }
        assert!(Instant::now() < deadline, "the server never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("serve did not exit within {timeout:?} of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
