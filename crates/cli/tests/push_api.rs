//! The push delivery API seen from outside the binary (`/v1/webhooks`, `/v1/sinks`), with
//! authentication on:
//!
//! - **Webhooks**: created (201 with the signing secret, shown only then), read, listed,
//!   updated (200, no secret), rotated (200 with the new secret), replayed, deleted; the secrets
//!   and header values are in no other answer, audit entry, `/metrics` or log line.
//! - **Refusals**: 400 naming the field, 403 for a token that cannot read a covered tenant
//!   (before and after an update), 404 for what does not exist, 422 naming `url` for an address
//!   the SSRF guard refuses (the server runs without `--webhook-allow-private-networks`), 400
//!   for a replay's bad cursor.
//! - **Sinks**: a SQLite sink (and a PostgreSQL one when `TENANTSYNC_TEST_POSTGRES` is set)
//!   created, read, listed, updated and deleted, never showing a password; 422 for a table of
//!   another shape.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{create_token, pg};
use reqwest::Method;
use serde_json::{Value, json};

const DATASET: &str = "items";

/// A `tenantsync serve` with authentication on whose log (at debug level) is kept in a file,
/// to be searched for secrets.
struct Logged {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
    admin: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Logged {
    async fn start() -> Logged {
        let dir = tempfile::tempdir().unwrap();
        let admin = create_token(dir.path(), "admin", &["admin"]);
        let log = dir.path().join("serve.log");
        let mut child = Command::new(common::binary())
            .arg("serve")
            .args(["--data-dir", &dir.path().display().to_string()])
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("tenantsync starts");
        let stdout = child.stdout.take().unwrap();
        let addr = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let addr = lines
                .by_ref()
                .map_while(Result::ok)
                .find_map(|l| {
                    l.strip_prefix("tenantsync listening on http://")
                        .map(|a| a.parse::<SocketAddr>().unwrap())
                })
                .expect("tenantsync prints its address");
            // Keeps reading, so that the server never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            addr
        })
        .await
        .unwrap();
        let server = Logged {
            child,
            addr,
            log,
            admin,
            http: reqwest::Client::new(),
            _dir: dir,
        };
        common::eventually("the server is ready", Duration::from_secs(60), || async {
            let r = server.http.get(server.url("/readyz")).send().await;
            r.is_ok_and(|r| r.status() == 200)
        })
        .await;
        let (status, body) = server
            .send(
                &server.admin,
                Method::PUT,
                &format!("/v1/datasets/{DATASET}"),
                Some(json!({"partitions": 2})),
            )
            .await;
        assert!(status < 300, "declare: {status} {body}");
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn data_dir(&self) -> &Path {
        self._dir.path()
    }

    async fn send(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, text) = self.send_text(token, method, path, body).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn send_text(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, String) {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let r = request.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An address the SSRF guard lets through (TEST-NET-1, never routed): the endpoints of these
/// tests are disabled, so nothing is sent to it.
const PUBLIC_URL: &str = "https://192.0.2.1/hook";
const HEADER_VALUE: &str = "Bearer receiver-token-5f3a";

fn webhook(tenants: Value) -> Value {
    json!({
        "url": PUBLIC_URL,
        "datasets": [DATASET],
        "tenants": tenants,
        "headers": {"Authorization": HEADER_VALUE},
        "enabled": false,
    })
}

#[tokio::test]
async fn webhooks_are_defined_rotated_and_deleted_and_their_secrets_shown_only_once() {
    let s = Logged::start().await;
    let admin = s.admin.as_str();

    let (status, created) = s
        .send(
            admin,
            Method::PUT,
            "/v1/webhooks/orders",
            Some(webhook(json!("*"))),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().expect("a secret").to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(created["name"], "orders");
    assert!(created["created_at"].is_string(), "{created}");
    assert_eq!(created["headers"], json!(["authorization"]), "{created}");
    assert!(!created.to_string().contains(HEADER_VALUE), "{created}");

    // Read, listed: the state, no secret.
    let (status, shown) = s
        .send_text(admin, Method::GET, "/v1/webhooks/orders", None)
        .await;
    assert_eq!(status, 200, "{shown}");
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["state"], "disabled", "{shown}");
    assert_eq!(shown["url"], PUBLIC_URL);
    for field in ["delivered", "failed", "retried", "failure_streak"] {
        assert_eq!(shown[field], 0, "{field}: {shown}");
    }
    assert!(shown["lag"]["changes"].is_number(), "{shown}");
    let (status, list) = s.send(admin, Method::GET, "/v1/webhooks", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 1, "{list}");

    // Updated: 200, the same secret kept and not shown.
    let mut changed = webhook(json!(["acme"]));
    changed["url"] = json!("https://192.0.2.2/other");
    let (status, updated) = s
        .send(
            admin,
            Method::PUT,
            "/v1/webhooks/orders",
            Some(changed.clone()),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert!(updated.get("secret").is_none(), "{updated}");
    assert_eq!(updated["tenants"], json!(["acme"]));

    // Rotated: a new secret, the old one expiring in a day.
    let (status, rotated) = s
        .send(
            admin,
            Method::POST,
            "/v1/webhooks/orders/rotate-secret",
            None,
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let second = rotated["secret"].as_str().unwrap().to_owned();
    assert!(
        second.starts_with("whsec_") && second != secret,
        "{rotated}"
    );
    assert!(
        rotated["previous_secrets_expire_at"].is_string(),
        "{rotated}"
    );

    // Attempts: none yet; the limit is bounded.
    let (status, attempts) = s
        .send(
            admin,
            Method::GET,
            "/v1/webhooks/orders/attempts?limit=5",
            None,
        )
        .await;
    assert_eq!((status, attempts["attempts"].clone()), (200, json!([])));
    for limit in ["0", "1001", "x"] {
        let path = format!("/v1/webhooks/orders/attempts?limit={limit}");
        let (status, body) = s.send(admin, Method::GET, &path, None).await;
        assert_eq!(status, 400, "{limit}: {body}");
    }

    // Replay: exactly one of since and cursor; a bad cursor is 400 naming it.
    let (status, body) = s
        .send(
            admin,
            Method::POST,
            "/v1/webhooks/orders/replay",
            Some(json!({"cursor": "not-a-cursor"})),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("cursor")),
        "{body}"
    );
    for bad in [
        json!({}),
        json!({"since": "2026-01-01T00:00:00Z", "cursor": "x"}),
    ] {
        let (status, body) = s
            .send(
                admin,
                Method::POST,
                "/v1/webhooks/orders/replay",
                Some(bad.clone()),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, body) = s
        .send(
            admin,
            Method::POST,
            "/v1/webhooks/orders/replay",
            Some(json!({"since": "2026-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert!(body["tenants"].is_u64(), "{body}");

    // Neither secret nor the header value is in any other answer, the audit log, /metrics or
    // the server's log.
    let mut seen = String::new();
    for path in [
        "/v1/webhooks",
        "/v1/webhooks/orders",
        "/v1/webhooks/orders/attempts",
        "/v1/audit?limit=1000",
        "/metrics",
    ] {
        let (status, text) = s.send_text(admin, Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}: {text}");
        seen.push_str(&text);
    }
    assert!(seen.contains("webhook.created") && seen.contains("webhook.secret_rotated"));
    seen.push_str(&s.log_text());
    for secret in [secret.as_str(), second.as_str(), HEADER_VALUE] {
        let key = secret.trim_start_matches("whsec_");
        assert!(!seen.contains(key), "{secret} shown");
    }

    // Deleted: 204, then 404 everywhere.
    let (status, _) = s
        .send(admin, Method::DELETE, "/v1/webhooks/orders", None)
        .await;
    assert_eq!(status, 204);
    for (method, path) in [
        (Method::GET, "/v1/webhooks/orders"),
        (Method::DELETE, "/v1/webhooks/orders"),
        (Method::POST, "/v1/webhooks/orders/rotate-secret"),
        (Method::GET, "/v1/webhooks/orders/attempts"),
    ] {
        let (status, body) = s.send(admin, method.clone(), path, None).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
    }
    let (status, body) = s
        .send(
            admin,
            Method::POST,
            "/v1/webhooks/orders/replay",
            Some(json!({"since": "2026-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn webhook_refusals_name_the_field_and_the_guard_refuses_private_addresses() {
    let s = Logged::start().await;
    let admin = s.admin.as_str();
    let cases = [
        (
            "url",
            json!({"url": "ftp://192.0.2.1/", "datasets": [DATASET], "tenants": "*"}),
        ),
        (
            "datasets",
            json!({"url": PUBLIC_URL, "datasets": [], "tenants": "*"}),
        ),
        (
            "tenants",
            json!({"url": PUBLIC_URL, "datasets": [DATASET], "tenants": []}),
        ),
        (
            "headers.webhook-id",
            json!({"url": PUBLIC_URL, "datasets": [DATASET], "tenants": "*", "headers": {"webhook-id": "x"}}),
        ),
        (
            "max_rate",
            json!({"url": PUBLIC_URL, "datasets": [DATASET], "tenants": "*", "max_rate": 0}),
        ),
    ];
    for (field, body) in cases {
        let (status, answer) = s
            .send(admin, Method::PUT, "/v1/webhooks/w", Some(body))
            .await;
        assert_eq!(
            (status, answer["field"].as_str()),
            (400, Some(field)),
            "{answer}"
        );
    }
    let (status, answer) = s
        .send(
            admin,
            Method::PUT,
            "/v1/webhooks/Not%20A%20Name",
            Some(webhook(json!("*"))),
        )
        .await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (400, Some("name")),
        "{answer}"
    );
    let (status, answer) = s
        .send(
            admin,
            Method::PUT,
            "/v1/webhooks/w",
            Some(json!({"url": PUBLIC_URL})),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    let mut undeclared = webhook(json!("*"));
    undeclared["datasets"] = json!(["nowhere"]);
    let (status, answer) = s
        .send(admin, Method::PUT, "/v1/webhooks/w", Some(undeclared))
        .await;
    assert_eq!(status, 404, "{answer}");

    // The SSRF guard, at creation and when the URL changes.
    let mut private = webhook(json!("*"));
    private["url"] = json!("http://127.0.0.1:9/hook");
    let (status, answer) = s
        .send(admin, Method::PUT, "/v1/webhooks/w", Some(private.clone()))
        .await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (422, Some("url")),
        "{answer}"
    );
    assert!(
        answer["detail"].as_str().unwrap().contains("127.0.0.1"),
        "{answer}"
    );
    let (status, _) = s
        .send(
            admin,
            Method::PUT,
            "/v1/webhooks/w",
            Some(webhook(json!("*"))),
        )
        .await;
    assert_eq!(status, 201);
    let (status, answer) = s
        .send(admin, Method::PUT, "/v1/webhooks/w", Some(private))
        .await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (422, Some("url")),
        "{answer}"
    );
    let (_, shown) = s.send(admin, Method::GET, "/v1/webhooks/w", None).await;
    assert_eq!(shown["url"], PUBLIC_URL, "a refused URL is not stored");

    // A token that reads one tenant: it may define an endpoint of that tenant only, and loses
    // sight of it once it covers another.
    let reader = create_token(s.data_dir(), "reader", &[&format!("read:{DATASET}:acme")]);
    let (status, answer) = s
        .send(
            &reader,
            Method::PUT,
            "/v1/webhooks/r",
            Some(webhook(json!(["acme", "globex"]))),
        )
        .await;
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = s
        .send(
            &reader,
            Method::PUT,
            "/v1/webhooks/r",
            Some(webhook(json!("*"))),
        )
        .await;
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = s
        .send(
            &reader,
            Method::PUT,
            "/v1/webhooks/r",
            Some(webhook(json!(["acme"]))),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    let (_, list) = s.send(&reader, Method::GET, "/v1/webhooks", None).await;
    let names: Vec<&str> = list["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["r"], "the reader sees only what it may read");
    let (status, _) = s
        .send(
            admin,
            Method::PUT,
            "/v1/webhooks/r",
            Some(webhook(json!(["acme", "globex"]))),
        )
        .await;
    assert_eq!(status, 200);
    for (method, path, body) in [
        (Method::GET, "/v1/webhooks/r", None),
        (
            Method::PUT,
            "/v1/webhooks/r",
            Some(webhook(json!(["acme"]))),
        ),
        (Method::POST, "/v1/webhooks/r/rotate-secret", None),
        (Method::GET, "/v1/webhooks/r/attempts", None),
        (
            Method::POST,
            "/v1/webhooks/r/replay",
            Some(json!({"since": "2026-01-01T00:00:00Z"})),
        ),
        (Method::DELETE, "/v1/webhooks/r", None),
    ] {
        let (status, answer) = s.send(&reader, method.clone(), path, body).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
    }
}

fn sink(kind: &str, url: &str, table: &str) -> Value {
    json!({"kind": kind, "url": url, "dataset": DATASET, "tenants": "*", "table": table})
}

/// Creates, reads, lists, updates and deletes a sink at `url`; `wrong_table` is a table of
/// another shape there.
async fn sink_lifecycle(
    s: &Logged,
    kind: &str,
    url: &str,
    wrong_table: &str,
    password: Option<&str>,
) {
    let admin = s.admin.as_str();
    let (status, created) = s
        .send(
            admin,
            Method::PUT,
            &format!("/v1/sinks/{kind}-copy"),
            Some(sink(kind, url, "items_copy")),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["table"], "items_copy");
    let (status, shown) = s
        .send(admin, Method::GET, &format!("/v1/sinks/{kind}-copy"), None)
        .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(
        (shown["dataset"].as_str(), shown["kind"].as_str()),
        (Some(DATASET), Some(kind))
    );
    assert!(
        shown["state"].is_string() && shown["lag"]["changes"].is_number(),
        "{shown}"
    );
    let mut disabled = sink(kind, url, "items_copy");
    disabled["enabled"] = json!(false);
    let (status, updated) = s
        .send(
            admin,
            Method::PUT,
            &format!("/v1/sinks/{kind}-copy"),
            Some(disabled),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    let (_, shown) = s
        .send(admin, Method::GET, &format!("/v1/sinks/{kind}-copy"), None)
        .await;
    assert_eq!(shown["state"], "disabled", "{shown}");

    let (status, answer) = s
        .send(
            admin,
            Method::PUT,
            &format!("/v1/sinks/{kind}-wrong"),
            Some(sink(kind, url, wrong_table)),
        )
        .await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (422, Some("table")),
        "{answer}"
    );
    let (status, _) = s
        .send(admin, Method::GET, &format!("/v1/sinks/{kind}-wrong"), None)
        .await;
    assert_eq!(status, 404, "a refused sink is not stored");

    let (_, list) = s.send_text(admin, Method::GET, "/v1/sinks", None).await;
    assert!(list.contains(&format!("\"{kind}-copy\"")), "{list}");
    if let Some(password) = password {
        let (_, audit) = s
            .send_text(admin, Method::GET, "/v1/audit?limit=1000", None)
            .await;
        let (_, metrics) = s.send_text(admin, Method::GET, "/metrics", None).await;
        for text in [list, audit, metrics, s.log_text()] {
            assert!(!text.contains(password), "the password is shown");
        }
    }
    let (status, _) = s
        .send(
            admin,
            Method::DELETE,
            &format!("/v1/sinks/{kind}-copy"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = s
        .send(
            admin,
            Method::DELETE,
            &format!("/v1/sinks/{kind}-copy"),
            None,
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn sinks_are_defined_checked_and_deleted() {
    let s = Logged::start().await;
    let admin = s.admin.as_str();
    let db = s.data_dir().join("copy.sqlite3");
    let sqlite_url = format!("sqlite://{}", db.display());
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE other (tenant TEXT, id TEXT, payload TEXT)")
        .unwrap();

    // Refused without I/O, naming the field; 403 for a token that cannot read every tenant.
    let cases = [
        ("url", sink("postgres", &sqlite_url, "t")),
        ("table", sink("sqlite", &sqlite_url, "s.t")),
        (
            "tenants",
            json!({"kind": "sqlite", "url": sqlite_url, "dataset": DATASET, "tenants": [], "table": "t"}),
        ),
    ];
    for (field, body) in cases {
        let (status, answer) = s.send(admin, Method::PUT, "/v1/sinks/x", Some(body)).await;
        assert_eq!(
            (status, answer["field"].as_str()),
            (400, Some(field)),
            "{answer}"
        );
    }
    let reader = create_token(s.data_dir(), "reader", &[&format!("read:{DATASET}:acme")]);
    let (status, answer) = s
        .send(
            &reader,
            Method::PUT,
            "/v1/sinks/x",
            Some(sink("sqlite", &sqlite_url, "t")),
        )
        .await;
    assert_eq!(status, 403, "{answer}");
    let (status, _) = s.send(admin, Method::GET, "/v1/sinks/nothing", None).await;
    assert_eq!(status, 404);

    sink_lifecycle(&s, "sqlite", &sqlite_url, "other", None).await;

    let Some(server) = pg::server("the PostgreSQL sink API test") else {
        return;
    };
    let database = "tenantsync_push_api_sink";
    let url = pg::fresh_database(&server, database).await;
    pg::connect(&url)
        .await
        .batch_execute("CREATE TABLE other (tenant text, id text, version text)")
        .await
        .unwrap();
    // A password the server does not ask for (trust authentication): it must still never be
    // shown.
    let with_password = url.replacen("://root@", "://root:hunter2-sink@", 1);
    let url = if with_password != url {
        with_password
    } else {
        url
    };
    sink_lifecycle(&s, "postgres", &url, "other", Some("hunter2-sink")).await;
    pg::drop_database(&server, database).await;
}
