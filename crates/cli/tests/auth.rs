//! Authentication (401), authorization (403), write quotas (429) and the audit log, through the
//! real binary with authentication on.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, create_token};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A server with authentication on, an admin token, and `inventory` and `users` declared.
struct Secured {
    server: Server,
    _dir: tempfile::TempDir,
    admin: String,
    http: reqwest::Client,
}

impl Secured {
    async fn start(args: &[&str]) -> Secured {
        let dir = tempfile::tempdir().unwrap();
        let admin = create_token(dir.path(), "admin", &["admin"]);
        let server = Server::start_secure(dir.path(), args).await;
        let secured = Secured {
            server,
            _dir: dir,
            admin,
            http: reqwest::Client::new(),
        };
        for dataset in ["inventory", "users"] {
            let r = secured
                .send(
                    &secured.admin,
                    Method::PUT,
                    &format!("/v1/datasets/{dataset}"),
                    Some(json!({"partitions": 2})),
                )
                .await;
            assert_eq!(r.status(), StatusCode::CREATED);
        }
        secured
    }

    fn request(&self, token: &str, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.server.url(path))
            .bearer_auth(token)
    }

    async fn send(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = self.request(token, method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    /// A token made through the admin API.
    async fn token(&self, name: &str, scopes: &[&str]) -> String {
        let r = self
            .send(
                &self.admin,
                Method::POST,
                "/v1/tokens",
                Some(json!({"name": name, "scopes": scopes})),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: Value = r.json().await.unwrap();
        body["token"].as_str().unwrap().to_owned()
    }

    async fn put(&self, token: &str, dataset: &str, tenant: &str, id: &str) -> reqwest::Response {
        self.send(
            token,
            Method::PUT,
            &format!("/v1/datasets/{dataset}/tenants/{tenant}/records/{id}?wait=applied"),
            Some(json!({"n": 1})),
        )
        .await
    }

    async fn subscribe(&self, token: &str, name: &str, tenants: Value) -> reqwest::Response {
        self.send(
            token,
            Method::PUT,
            &format!("/v1/subscriptions/{name}"),
            Some(json!({"datasets": ["inventory"], "tenants": tenants})),
        )
        .await
    }

    async fn bulk(
        &self,
        token: &str,
        dataset: &str,
        lines: &[(&str, String)],
    ) -> reqwest::Response {
        let body: String = lines
            .iter()
            .map(|(tenant, id)| {
                format!(
                    "{}\n",
                    json!({"op": "upsert", "tenant": tenant, "id": id, "data": {"n": 1}})
                )
            })
            .collect();
        self.request(
            token,
            Method::POST,
            &format!("/v1/datasets/{dataset}/changes"),
        )
        .body(body)
        .send()
        .await
        .unwrap()
    }
}

async fn problem_type(r: reqwest::Response) -> String {
    let body: Value = r.json().await.unwrap();
    body["type"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_valid_credentials_get_401() {
    let s = Secured::start(&[]).await;
    let revoked = s.token("gone", &["read:*:*"]).await;
    let r = s
        .send(&s.admin, Method::DELETE, "/v1/tokens/gone", None)
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let unknown = format!("tsk_{}", "A".repeat(43));
    let record = "/v1/datasets/inventory/tenants/acme/records/a";
    let paths = [
        (Method::GET, record),
        (Method::PUT, record),
        (Method::GET, "/v1/datasets/inventory/tenants/acme/changes"),
        (Method::POST, "/v1/datasets/inventory/changes"),
        (Method::GET, "/v1/datasets"),
        (Method::GET, "/v1/subscriptions"),
        (Method::GET, "/v1/tokens"),
        (Method::GET, "/v1/audit"),
        (Method::DELETE, "/v1/tenants/acme"),
        (Method::GET, "/metrics"),
        (Method::GET, "/no/such/route"),
    ];
    let authorizations = [
        None,
        Some("Basic YWRtaW46YWRtaW4=".to_owned()),
        Some("Bearer".to_owned()),
        Some("Bearer not-a-token".to_owned()),
        Some(format!("Bearer {unknown}")),
        Some(format!("Bearer {revoked}")),
        // No JWT verifier is configured, so a JWT is not a credential here.
        Some("Bearer eyJhbGciOiJIUzI1NiJ9.eyJ0ZW5hbnQiOiJhY21lIn0.c2ln".to_owned()),
    ];
    for (method, path) in &paths {
        for authorization in &authorizations {
            let mut request = s.http.request(method.clone(), s.server.url(path));
            if let Some(value) = authorization {
                request = request.header("authorization", value);
            }
            let r = request.send().await.unwrap();
            assert_eq!(
                r.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {authorization:?}"
            );
            assert!(r.headers().contains_key("www-authenticate"));
            assert_eq!(
                problem_type(r).await,
                "urn:tenantsync:problem:unauthenticated"
            );
        }
    }
    for open in ["/healthz", "/readyz"] {
        let r = s.http.get(s.server.url(open)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{open}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_without_the_scope_get_403() {
    let s = Secured::start(&[]).await;
    let reader = s.token("reader", &["read:inventory:acme"]).await;
    let writer = s.token("writer", &["write:inventory:acme"]).await;
    assert_eq!(
        s.put(&s.admin, "inventory", "acme2", "a").await.status(),
        StatusCode::OK
    );

    // Writes: the writer may, the reader may not; write does not imply read.
    assert_eq!(
        s.put(&writer, "inventory", "acme", "a").await.status(),
        StatusCode::OK
    );
    let forbidden_writes = [
        (&reader, "inventory", "acme"),
        (&writer, "inventory", "acme2"),
        (&writer, "inventory", "acme_"),
        (&writer, "inventory", "acm"),
        (&writer, "users", "acme"),
        // Refused before the dataset is looked up: a caller learns nothing of datasets it
        // cannot see.
        (&writer, "undeclared", "acme"),
    ];
    for (token, dataset, tenant) in forbidden_writes {
        let r = s.put(token, dataset, tenant, "a").await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{dataset}/{tenant}");
        assert_eq!(problem_type(r).await, "urn:tenantsync:problem:forbidden");
    }
    let record = |tenant: &str| format!("/v1/datasets/inventory/tenants/{tenant}/records/a");

    // A write's `?wait=applied` reply shows `data` only to a caller that may also read it: a
    // patch merges into data the writer never sent.
    let patched = format!("{}?wait=applied", record("acme"));
    let secret = json!({"secret": "written by admin"});
    let r = s.send(&s.admin, Method::PUT, &patched, Some(secret)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = s
        .send(&writer, Method::PATCH, &patched, Some(json!({"n": 2})))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let reply: Value = r.json().await.unwrap();
    assert_eq!(reply["version"], 3, "{reply}");
    assert!(reply.get("data").is_none(), "{reply}");
    let both = s
        .token("both", &["read:inventory:acme", "write:inventory:acme"])
        .await;
    let r = s
        .send(&both, Method::PATCH, &patched, Some(json!({"n": 3})))
        .await;
    let reply: Value = r.json().await.unwrap();
    assert_eq!(reply["data"], json!({"secret": "written by admin", "n": 3}));
    let line = json!({"op": "patch", "tenant": "acme", "id": "a", "data": {"n": 4}});
    let r = s
        .request(
            &writer,
            Method::POST,
            "/v1/datasets/inventory/changes?wait=applied",
        )
        .body(format!("{line}\n"))
        .send()
        .await
        .unwrap();
    let reply: Value = r.json().await.unwrap();
    assert_eq!(reply["results"][0]["status"], 200, "{reply}");
    assert!(
        reply["results"][0]["record"].get("data").is_none(),
        "{reply}"
    );

    let r = s.send(&reader, Method::GET, &record("acme"), None).await;
    assert_eq!(r.status(), StatusCode::OK);
    for (token, path) in [
        (&writer, record("acme")),
        (&reader, record("acme2")),
        (
            &reader,
            "/v1/datasets/inventory/tenants/acme2/changes".to_owned(),
        ),
        (
            &reader,
            "/v1/datasets/users/tenants/acme/changes".to_owned(),
        ),
        (&reader, "/v1/datasets/undeclared".to_owned()),
        (&reader, "/v1/tokens".to_owned()),
        (&reader, "/v1/audit".to_owned()),
        (&reader, "/v1/tenants/acme/erasure".to_owned()),
        (&reader, "/metrics".to_owned()),
    ] {
        let r = s.send(token, Method::GET, &path, None).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "GET {path}");
    }
    for (method, path, body) in [
        (Method::PUT, "/v1/datasets/more", json!({"partitions": 1})),
        (
            Method::POST,
            "/v1/tokens",
            json!({"name": "x", "scopes": ["admin"]}),
        ),
        (Method::DELETE, "/v1/tokens/writer", json!({})),
        (Method::DELETE, "/v1/tenants/acme", json!({})),
    ] {
        let r = s.send(&reader, method.clone(), path, Some(body)).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{method} {path}");
    }

    // Batch workers see every tenant's batches: reading one tenant is not enough, and neither is
    // every tenant of another dataset; an undeclared dataset is refused the same way.
    let every_tenant = s.token("batch-worker", &["read:inventory:*"]).await;
    for (token, dataset) in [
        (&reader, "inventory"),
        (&reader, "undeclared"),
        (&writer, "inventory"),
        (&every_tenant, "users"),
        (&every_tenant, "undeclared"),
    ] {
        for path in [
            format!("/v1/datasets/{dataset}/batches/lease?wait=0"),
            format!("/v1/datasets/{dataset}/batches/0-0-0/ack"),
        ] {
            let r = s.send(token, Method::POST, &path, None).await;
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "POST {path}");
            assert_eq!(problem_type(r).await, "urn:tenantsync:problem:forbidden");
        }
    }
    let r = s
        .send(
            &every_tenant,
            Method::POST,
            "/v1/datasets/inventory/batches/lease?wait=0&lease=1",
            None,
        )
        .await;
    assert!(
        [StatusCode::OK, StatusCode::NO_CONTENT].contains(&r.status()),
        "{}",
        r.status()
    );
    let r = s
        .send(
            &every_tenant,
            Method::POST,
            "/v1/datasets/inventory/batches/0-999999-999999/ack",
            None,
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "allowed, not outstanding"
    );

    // The dataset list shows only what the token has a scope on.
    let r = s.send(&reader, Method::GET, "/v1/datasets", None).await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["datasets"],
        json!([{"name": "inventory", "partitions": 2, "formats": ["json"]}])
    );

    // Bulk: each line is checked; a token with no scope on the dataset is refused outright.
    let r = s
        .bulk(
            &writer,
            "inventory",
            &[("acme", "b".into()), ("acme2", "b".into())],
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["results"][0]["status"], 202, "{body}");
    assert_eq!(body["results"][1]["status"], 403, "{body}");
    let r = s.bulk(&writer, "users", &[("acme", "b".into())]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = s
        .send(
            &s.admin,
            Method::GET,
            &record("acme2").replace("/a", "/b"),
            None,
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "the refused line was not applied"
    );

    // Subscriptions: only over tenants the token may read, and only readable by such tokens.
    assert_eq!(
        s.subscribe(&reader, "mine", json!(["acme"])).await.status(),
        StatusCode::CREATED
    );
    for tenants in [json!("*"), json!(["acme", "acme2"]), json!(["acme_"])] {
        let r = s.subscribe(&reader, "wider", tenants.clone()).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{tenants}");
    }
    assert_eq!(
        s.subscribe(&s.admin, "all", json!("*")).await.status(),
        StatusCode::CREATED
    );
    for (method, path) in [
        (Method::GET, "/v1/subscriptions/all"),
        (Method::GET, "/v1/subscriptions/all/changes"),
        (Method::DELETE, "/v1/subscriptions/all"),
    ] {
        let r = s.send(&reader, method.clone(), path, None).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{method} {path}");
    }
    // Taking over a subscription by redefining it is refused too.
    assert_eq!(
        s.subscribe(&reader, "all", json!(["acme"])).await.status(),
        StatusCode::FORBIDDEN
    );
    let r = s
        .send(&reader, Method::GET, "/v1/subscriptions", None)
        .await;
    let body: Value = r.json().await.unwrap();
    let names: Vec<&str> = body["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mine"]);
    let r = s
        .send(&reader, Method::GET, "/v1/subscriptions/mine/changes", None)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let batch: Value = r.json().await.unwrap();
    assert_eq!(batch["tenant"], "acme");

    // Cursors are bound to their tenant and tamper-evident: 400, and never another tenant's data.
    let r = s
        .send(
            &s.admin,
            Method::GET,
            "/v1/datasets/inventory/tenants/acme2/changes",
            None,
        )
        .await;
    let other: Value = r.json().await.unwrap();
    let other = other["cursor"].as_str().unwrap().to_owned();
    let r = s
        .send(
            &reader,
            Method::GET,
            &format!("/v1/datasets/inventory/tenants/acme/changes?cursor={other}"),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let sub_cursor = batch["cursor"].as_str().unwrap();
    let mut tampered = sub_cursor.to_owned().into_bytes();
    tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for cursor in [tampered.as_str(), other.as_str()] {
        let r = s
            .send(
                &reader,
                Method::POST,
                "/v1/subscriptions/mine/ack",
                Some(json!({"cursor": cursor})),
            )
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(!r.text().await.unwrap().contains("acme2"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_write_quota_gets_429_while_others_write_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tenantsync.toml");
    std::fs::write(&config, "[quotas.tenants.vip]\nwrite_rate = 10000\n").unwrap();
    let s = Secured::start(&[
        "--tenant-write-rate",
        "20",
        "--tenant-write-burst",
        "100",
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    let writer = s.token("writer", &["write:*:*"]).await;
    let lines = |tenant: &'static str, n: usize| -> Vec<(&'static str, String)> {
        (0..n).map(|i| (tenant, format!("r{i}"))).collect()
    };

    // The burst passes, then the tenant is refused: whole request, with Retry-After.
    let r = s.bulk(&writer, "inventory", &lines("big", 100)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = s.bulk(&writer, "inventory", &lines("big", 30)).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(problem_type(r).await, "urn:tenantsync:problem:rate-limited");
    let r = s.put(&writer, "inventory", "big", "one-more").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));

    // Meanwhile every other tenant writes on, applied, its bucket untouched by big's burst;
    // the look-alike `big2` is another tenant with its own bucket.
    for tenant in ["small", "big2"] {
        let r = s.put(&writer, "inventory", tenant, "a").await;
        assert_eq!(r.status(), StatusCode::OK, "{tenant}");
        let r = s.bulk(&writer, "inventory", &lines(tenant, 50)).await;
        let body: Value = r.json().await.unwrap();
        assert!(
            body["results"]
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l["status"] == 202),
            "{body}"
        );
    }
    // In a mixed request, only big's lines are refused.
    let mut mixed = lines("big", 5);
    mixed.extend(lines("small", 5));
    let r = s.bulk(&writer, "inventory", &mixed).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let statuses: Vec<i64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, [429, 429, 429, 429, 429, 202, 202, 202, 202, 202]);

    // More than a burst in one request can never pass: 413, not a retry loop.
    let r = s.bulk(&writer, "inventory", &lines("fresh", 101)).await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["results"][0]["status"], 413, "{body}");

    // A tenant with its own quota in the config file is not held to the default.
    let r = s.bulk(&writer, "inventory", &lines("vip", 1000)).await;
    let body: Value = r.json().await.unwrap();
    assert!(
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["status"] == 202),
        "{body}"
    );

    // Once the bucket refills, big may write again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = s.put(&writer, "inventory", "big", "later").await.status();
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert!(Instant::now() < deadline, "big never got through again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_are_audited_and_tokens_managed_over_http() {
    let s = Secured::start(&[]).await;
    let ingest = s.token("ingest", &["write:inventory:acme"]).await;
    let r = s
        .send(
            &s.admin,
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "ingest", "scopes": ["admin"]})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = s
        .send(
            &s.admin,
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "bad", "scopes": ["read:inventory"]})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let r = s.send(&s.admin, Method::GET, "/v1/tokens", None).await;
    let listed = r.text().await.unwrap();
    assert!(listed.contains("ingest") && listed.contains("write:inventory:acme"));
    assert!(
        !listed.contains(&ingest) && !listed.contains("hash"),
        "{listed}"
    );

    let sub = Some(json!({"datasets": ["inventory"], "tenants": ["acme"]}));
    for method in [Method::PUT, Method::PUT, Method::DELETE] {
        let body = (method == Method::PUT).then(|| sub.clone().unwrap());
        let r = s
            .send(&s.admin, method, "/v1/subscriptions/billing", body)
            .await;
        assert!(r.status().is_success());
    }
    let r = s
        .send(&s.admin, Method::DELETE, "/v1/tokens/ingest", None)
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        s.put(&ingest, "inventory", "acme", "a").await.status(),
        StatusCode::UNAUTHORIZED,
        "a revoked token fails on its next request"
    );

    let r = s.send(&s.admin, Method::GET, "/v1/audit", None).await;
    let audit: Value = r.json().await.unwrap();
    let entries: Vec<(String, String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("cli", "token.created", "admin"),
        ("admin", "token.created", "ingest"),
        ("admin", "subscription.created", "billing"),
        ("admin", "subscription.updated", "billing"),
        ("admin", "subscription.deleted", "billing"),
        ("admin", "token.revoked", "ingest"),
    ];
    let expected: Vec<(String, String, String)> = expected
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(entries, expected);
    assert!(
        !audit.to_string().contains(&ingest),
        "never a token's secret"
    );
    // Paging with `after`.
    let r = s
        .send(&s.admin, Method::GET, "/v1/audit?after=4&limit=1", None)
        .await;
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["entries"][0]["action"], "subscription.deleted");
    assert_eq!(page["next"], 5);
}

/// A JWT from the team's identity provider, HS256 with the secret of the config file below.
fn jwt(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

const JWT_SECRET: &str = "a-test-secret-of-at-least-32-bytes!";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_grant_their_tenant_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tenantsync.toml");
    std::fs::write(
        &config,
        format!(
            "[auth.jwt]\nhs256_secret = \"{JWT_SECRET}\"\naudience = \"tenantsync\"\n\
             issuer = \"https://idp.example\"\ntenant_claim = \"org\"\n"
        ),
    )
    .unwrap();
    let s = Secured::start(&["--config", config.to_str().unwrap()]).await;
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "sub": "svc-1", "org": "acme", "scope": "openid read write:inventory admin",
        "aud": "tenantsync", "iss": "https://idp.example", "exp": now + 300,
    });
    let token = jwt(claims.clone());
    assert_eq!(
        s.put(&token, "inventory", "acme", "a").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        s.put(&s.admin, "users", "acme", "a").await.status(),
        StatusCode::OK
    );
    for path in [
        "/v1/datasets/inventory/tenants/acme/records/a",
        "/v1/datasets/users/tenants/acme/records/a",
    ] {
        let r = s.send(&token, Method::GET, path, None).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    // Its tenant only, writes only where the scope says, and never admin.
    assert_eq!(
        s.put(&token, "users", "acme", "b").await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.put(&token, "inventory", "acme2", "a").await.status(),
        StatusCode::FORBIDDEN
    );
    let r = s.send(&token, Method::GET, "/v1/tokens", None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    let mut expired = claims.clone();
    expired["exp"] = json!(now - 3600);
    let mut foreign = claims.clone();
    foreign["aud"] = json!("another-service");
    let mut no_tenant = claims.clone();
    no_tenant.as_object_mut().unwrap().remove("org");
    let forged = {
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[2] = jwt(json!({"x": 1})).split('.').nth(2).unwrap().to_owned();
        parts.join(".")
    };
    for bad in [jwt(expired), jwt(foreign), jwt(no_tenant), forged] {
        let r = s
            .send(
                &bad,
                Method::GET,
                "/v1/datasets/inventory/tenants/acme/records/a",
                None,
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
}

/// With no token in the store, `serve` says how to create the first one.
#[test]
fn serve_without_tokens_says_how_to_create_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tenantsync"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let hint = stderr
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("tenantsync token create --scope admin"));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(hint.is_some(), "no hint on stderr");
}
