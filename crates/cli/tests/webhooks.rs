//! Webhooks end to end: `tenantsync serve` delivering to receivers in the test process.
//!
//! Every delivery verifies with the official Standard Webhooks library (across a secret
//! rotation); a failing and a hanging endpoint hold back only themselves, and every receiver's
//! copy converges to the master store with no version going down; 410 Gone disables an
//! endpoint, which resumes where it stopped when enabled again; a replay sends again; the SSRF
//! guard refuses private addresses at creation and at connection time.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::model::{Model, next_change};
use common::webhooks::{
    Answer, Case, Copy, DnsResponder, Receiver, assert_in_order, assert_same_id_same_changes,
    assert_versions_never_decrease, attempts, create_webhook, get_text, model_live, put_webhook,
    python, store_live, verify, webhook, webhook_config,
};
use common::{Server, declare, eventually, store_records, submit, wait_caught_up};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

const DATASET: &str = "orders";
const WITHIN: Duration = Duration::from_secs(120);

/// Settings that make failures quick to see: attempts give up after 1 s and retries come 1, 1
/// and 2 s apart.
const QUICK: &str = "timeout_secs = 1\nretry_schedule_secs = [1, 1, 2]";

fn tenants(n: usize) -> Vec<String> {
    (0..n).map(|t| format!("tenant-{t}")).collect()
}

/// A workload of upserts, patches and deletes over `tenants`, kept in a model.
struct Workload {
    rng: StdRng,
    model: Model,
    tenants: Vec<String>,
    seq: usize,
}

impl Workload {
    fn new(seed: u64, tenants: Vec<String>) -> Self {
        eprintln!("webhook workload seed {seed}");
        Self {
            rng: StdRng::seed_from_u64(seed),
            model: Model::default(),
            tenants,
            seq: 0,
        }
    }

    /// Sends `batches` batches of `per_batch` changes of one tenant each, `pause` apart.
    async fn write(&mut self, server: &Server, batches: usize, per_batch: usize, pause: Duration) {
        let client = common::http_client();
        for b in 0..batches {
            let tenant = self.tenants[b % self.tenants.len()].clone();
            let mut batch = Vec::with_capacity(per_batch);
            for _ in 0..per_batch {
                self.seq += 1;
                let c = next_change(&mut self.rng, &self.model, &tenant, 12, self.seq);
                self.model.apply(&c);
                batch.push(c);
            }
            submit(&client, DATASET, &batch, || server.url(""), pause).await;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    }
}

fn endpoint(url: &str) -> Value {
    json!({"url": url, "datasets": [DATASET], "tenants": "*", "enabled": true})
}

/// A server that may deliver to 127.0.0.1, with `settings` in its `[webhooks]` section.
async fn server(dir: &std::path::Path, settings: &str) -> Server {
    let mut args = webhook_config(dir, settings);
    args.push("--webhook-allow-private-networks".into());
    let server = Server::start(&dir.join("data"), &args).await;
    declare(&server, DATASET, 2).await;
    server
}

fn store_url(server: &Server) -> String {
    format!(
        "sqlite://{}",
        server.data_dir.join("store.sqlite3").display()
    )
}

async fn wait_converged(what: &str, receiver: &Receiver, model: &Model) {
    let expected = model_live(model);
    eventually(&format!("{what}'s copy equals the model"), WITHIN, || {
        let live = receiver.copy().live();
        let done = live == expected;
        async move { done }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deliveries_verify_with_the_official_library_across_a_secret_rotation() {
    let Some(python) = python("deliveries_verify_with_the_official_library") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), "").await;
    let receiver = Receiver::start(Answer::Ok).await;
    let first = create_webhook(&server, "signed", &endpoint(&receiver.url())).await;
    let mut work = Workload::new(rand::random(), tenants(3));
    work.write(&server, 6, 10, Duration::ZERO).await;
    wait_converged("the receiver", &receiver, &work.model).await;
    let before = receiver.deliveries().len();

    let r = reqwest::Client::new()
        .post(server.url("/v1/webhooks/signed/rotate-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "rotate-secret");
    let rotated: Value = r.json().await.unwrap();
    let second = rotated["secret"].as_str().expect("a new secret").to_owned();
    assert!(second.starts_with("whsec_") && second != first, "{rotated}");

    // Once delivery signs with both secrets (it may take the running endpoint a moment to see
    // the rotation), every delivery carries both signatures.
    let signed_twice = |d: &common::webhooks::Delivery| {
        d.n >= before && d.header("webhook-signature").split(' ').count() == 2
    };
    let deadline = std::time::Instant::now() + WITHIN;
    while !receiver.deliveries().iter().any(signed_twice) {
        assert!(
            std::time::Instant::now() < deadline,
            "no delivery was signed by both secrets"
        );
        work.write(&server, 1, 1, Duration::ZERO).await;
        wait_converged("the receiver", &receiver, &work.model).await;
    }
    let both_from = receiver.deliveries().iter().position(signed_twice).unwrap();
    work.write(&server, 6, 10, Duration::ZERO).await;
    wait_converged("the receiver", &receiver, &work.model).await;

    let deliveries = receiver.deliveries();
    // Every delivery verifies with the first secret; those signed since the rotation took
    // effect, with either secret alone; those before the rotation, not with the new one.
    let mut cases = Vec::new();
    let mut expected = Vec::new();
    for d in &deliveries {
        cases.push(Case {
            secret: &first,
            body: &d.body,
            headers: &d.headers,
        });
        expected.push(format!("delivery {} with the first secret", d.n));
        if d.n < before {
            // A check of the check: the new secret did not sign what came before it.
            cases.push(Case {
                secret: &second,
                body: &d.body,
                headers: &d.headers,
            });
            expected.push(format!("!delivery {} with the second secret", d.n));
        } else if d.n >= both_from {
            assert_eq!(
                d.header("webhook-signature").split(' ').count(),
                2,
                "delivery {}: two secrets are live, two signatures",
                d.n
            );
            cases.push(Case {
                secret: &second,
                body: &d.body,
                headers: &d.headers,
            });
            expected.push(format!("delivery {} with the second secret", d.n));
        }
    }
    assert!(deliveries.len() > both_from + 1);
    // A body changed by one byte, and a timestamp moved by 10 minutes, fail.
    let last = deliveries.last().unwrap();
    let mut tampered_body = last.body.clone();
    let i = tampered_body.len() / 2;
    tampered_body[i] ^= 0x01;
    let mut moved = last.headers.clone();
    let ts: i64 = last.header("webhook-timestamp").parse().unwrap();
    moved.insert("webhook-timestamp".into(), (ts - 600).to_string());
    let mut ahead = last.headers.clone();
    ahead.insert("webhook-timestamp".into(), (ts + 600).to_string());
    for (body, headers, what) in [
        (&tampered_body, &last.headers, "a body changed by one byte"),
        (&last.body, &moved, "a timestamp 10 minutes earlier"),
        (&last.body, &ahead, "a timestamp 10 minutes later"),
    ] {
        for secret in [&first, &second] {
            cases.push(Case {
                secret,
                body,
                headers,
            });
            expected.push(format!("!{what}"));
        }
    }
    let results = verify(&python, &cases);
    for (result, what) in results.iter().zip(&expected) {
        match what.strip_prefix('!') {
            Some(what) => assert!(result.is_err(), "{what} verified"),
            None => assert!(result.is_ok(), "{what}: {result:?}"),
        }
    }
    for d in &deliveries {
        assert_eq!(
            d.headers.get("content-type").map(String::as_str),
            Some("application/json"),
            "delivery {}",
            d.n
        );
    }

    // The secrets appear in no answer but the ones that made them.
    for path in [
        "/v1/webhooks",
        "/v1/webhooks/signed",
        "/v1/webhooks/signed/attempts",
    ] {
        let (status, text) = get_text(&server, path).await;
        assert_eq!(status, 200, "GET {path}: {text}");
        for secret in [&first, &second] {
            let key = secret.strip_prefix("whsec_").unwrap();
            assert!(!text.contains(key), "GET {path} shows a secret: {text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_and_a_hanging_endpoint_hold_back_only_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server(dir.path(), QUICK).await;
    let healthy = Receiver::start(Answer::Ok).await;
    let failing = Receiver::start(Answer::First {
        during: Duration::from_secs(3),
        then: Box::new(Answer::Status(500)),
    })
    .await;
    // Longer than the server's 1 s timeout.
    let hanging = Receiver::start(Answer::First {
        during: Duration::from_secs(4),
        then: Box::new(Answer::Hang(Duration::from_secs(3))),
    })
    .await;
    let receivers = [
        ("healthy", &healthy),
        ("failing", &failing),
        ("hanging", &hanging),
    ];
    let mut secrets = Vec::new();
    for (name, receiver) in receivers {
        secrets.push(create_webhook(&server, name, &endpoint(&receiver.url())).await);
    }

    let mut work = Workload::new(rand::random(), tenants(4));
    // About 5 s of writes: the failing and the hanging receivers refuse the first ones.
    work.write(&server, 50, 8, Duration::from_millis(100)).await;
    wait_caught_up(&server, DATASET).await;
    for (name, receiver) in receivers {
        wait_converged(name, receiver, &work.model).await;
    }
    for name in ["failing", "hanging"] {
        eventually(
            &format!("{name} shows its failures and retries"),
            WITHIN,
            || async {
                let w = webhook(&server, name).await;
                w["failed"].as_u64().unwrap_or(0) > 0 && w["retried"].as_u64().unwrap_or(0) > 0
            },
        )
        .await;
    }
    assert!(
        failing.deliveries().iter().any(|d| d.status == Some(500)),
        "the failing receiver refused something"
    );
    assert!(
        hanging.deliveries().iter().any(|d| d.status == Some(503)),
        "the hanging receiver hung on something"
    );
    if let Some(python) = python("a_failing_and_a_hanging_endpoint: signatures") {
        for ((name, receiver), secret) in receivers.iter().zip(&secrets) {
            let deliveries = receiver.deliveries();
            let cases: Vec<Case> = deliveries
                .iter()
                .map(|d| Case {
                    secret,
                    body: &d.body,
                    headers: &d.headers,
                })
                .collect();
            for (d, r) in deliveries.iter().zip(verify(&python, &cases)) {
                assert!(r.is_ok(), "{name}: delivery {}: {r:?}", d.n);
            }
        }
    }

    server.kill();
    let stored = store_records(&store_url(&server), DATASET, &work.tenants).await;
    work.model.assert_stored(&stored);
    let stored = store_live(&stored);
    for (name, receiver) in receivers {
        let deliveries = receiver.deliveries();
        assert_eq!(
            Copy::build(&deliveries).live(),
            stored,
            "{name}'s copy vs the master store"
        );
        assert_versions_never_decrease(name, &deliveries);
        assert_same_id_same_changes(name, &deliveries);
        assert_in_order(name, &deliveries);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gone_disables_the_endpoint_and_enabling_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), QUICK).await;
    let receiver = Receiver::start(Answer::Ok).await;
    create_webhook(&server, "gone", &endpoint(&receiver.url())).await;
    let mut work = Workload::new(rand::random(), tenants(3));
    work.write(&server, 6, 10, Duration::ZERO).await;
    wait_converged("the receiver", &receiver, &work.model).await;

    receiver.set_answer(Answer::Status(410));
    work.write(&server, 6, 10, Duration::ZERO).await;
    eventually("410 Gone disables the endpoint", WITHIN, || async {
        webhook(&server, "gone").await["state"] == "disabled"
    })
    .await;
    let gone: Vec<_> = receiver
        .deliveries()
        .into_iter()
        .filter(|d| d.status == Some(410))
        .collect();
    // Writes made while it is disabled wait for it.
    receiver.set_answer(Answer::Ok);
    work.write(&server, 6, 10, Duration::ZERO).await;
    wait_caught_up(&server, DATASET).await;
    assert_eq!(
        gone.len(),
        1,
        "410 disables at once: no retry after it ({:?})",
        gone.iter().map(|d| d.id()).collect::<Vec<_>>()
    );
    let while_disabled = receiver.deliveries().len();

    let (status, answer) = put_webhook(&server, "gone", &endpoint(&receiver.url())).await;
    assert!(
        status == 200 || status == 201,
        "enabling again: {status} {answer}"
    );
    assert!(answer.get("secret").is_none(), "an update shows no secret");
    wait_converged("the receiver after enabling", &receiver, &work.model).await;
    let deliveries = receiver.deliveries();
    assert!(deliveries.len() > while_disabled);
    assert_versions_never_decrease("the receiver", &deliveries);
    assert_same_id_same_changes("the receiver", &deliveries);
    // The message 410 refused was never taken: what resumes after enabling is in order from
    // there on (it may batch that message's changes with later ones, under another id).
    assert_in_order("before the 410", &deliveries[..gone[0].n]);
    assert_in_order("after enabling", &deliveries[while_disabled..]);
    // Nothing went out while it was disabled, and it resumed with what 410 refused: each of
    // its records came again, at that version or a newer one.
    assert_eq!(while_disabled, gone[0].n + 1, "deliveries while disabled");
    let refused = gone[0].json();
    let tenant = refused["tenant"].as_str().unwrap();
    for c in refused["changes"].as_array().unwrap() {
        let (id, version) = (c["id"].as_str().unwrap(), c["version"].as_u64().unwrap());
        assert!(
            deliveries[while_disabled..].iter().any(|d| {
                let body = d.json();
                d.accepted()
                    && body["tenant"] == tenant
                    && body["changes"].as_array().unwrap().iter().any(|c| {
                        c["id"] == id && c["version"].as_u64().is_some_and(|v| v >= version)
                    })
            }),
            "{tenant}/{id} v{version}, refused with 410, never came again"
        );
    }

    // A replay since a time sends again what changed since then.
    let since = chrono::Utc::now();
    let before = work.model.clone();
    work.write(&server, 6, 10, Duration::ZERO).await;
    wait_converged("the receiver", &receiver, &work.model).await;
    let changed: std::collections::BTreeSet<(String, String, u64)> = work
        .model
        .records
        .iter()
        .filter(|(k, (v, _))| before.records.get(*k).is_none_or(|(w, _)| w != v))
        .map(|((t, id), (v, _))| (t.clone(), id.clone(), *v))
        .collect();
    assert!(!changed.is_empty());
    let replayed_from = receiver.deliveries().len();
    let r = reqwest::Client::new()
        .post(server.url("/v1/webhooks/gone/replay"))
        .json(&json!({"since": since.to_rfc3339()}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "replay: {}", r.status());
    eventually(
        "the replay sends the changes since then again",
        WITHIN,
        || {
            let mut missing = changed.clone();
            for d in receiver.deliveries().iter().skip(replayed_from) {
                if !d.accepted() {
                    continue;
                }
                let body = d.json();
                let tenant = body["tenant"].as_str().unwrap().to_owned();
                for c in body["changes"].as_array().unwrap() {
                    missing.remove(&(
                        tenant.clone(),
                        c["id"].as_str().unwrap().to_owned(),
                        c["version"].as_u64().unwrap(),
                    ));
                }
            }
            async move { missing.is_empty() }
        },
    )
    .await;
    assert_eq!(receiver.copy().live(), model_live(&work.model));
}

/// URLs the guard refuses whatever port they name.
fn private_urls(port: u16) -> Vec<String> {
    vec![
        format!("http://127.0.0.1:{port}/"),
        format!("http://[::1]:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        "http://169.254.169.254/".into(),
        "http://10.0.0.1/".into(),
        format!("http://localhost:{port}/"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ssrf_guard_refuses_private_addresses_at_creation() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[] as &[&str]).await;
    declare(&server, DATASET, 1).await;
    let receiver = Receiver::start(Answer::Ok).await;
    for url in private_urls(receiver.addr.port()) {
        let (status, answer) = put_webhook(&server, "private", &endpoint(&url)).await;
        assert_eq!(status, 422, "{url}: {answer}");
        assert!(answer.to_string().contains("url"), "{url}: {answer}");
    }
    let (status, text) = get_text(&server, "/v1/webhooks/private").await;
    assert_eq!(status, 404, "nothing was created: {text}");
    assert!(receiver.deliveries().is_empty());

    // The same URLs are accepted by a server told to allow private networks: the refusals
    // came from the guard, not from the URLs' syntax.
    let allowed = Server::start(
        &dir.path().join("allowed"),
        &["--webhook-allow-private-networks"],
    )
    .await;
    declare(&allowed, DATASET, 1).await;
    for (i, url) in private_urls(receiver.addr.port()).iter().enumerate() {
        let (status, answer) = put_webhook(&allowed, &format!("p{i}"), &endpoint(url)).await;
        assert_eq!(status, 201, "{url}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ssrf_guard_refuses_a_name_that_turns_to_loopback_after_creation() {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsResponder::start("hooks.example.test", Ipv4Addr::new(203, 0, 113, 10)).await;
    let receiver = Receiver::start(Answer::Ok).await;
    let args = webhook_config(
        dir.path(),
        &format!("{QUICK}\ndns_server = \"{}\"", dns.addr),
    );
    let server = Server::start(&dir.path().join("data"), &args).await;
    declare(&server, DATASET, 1).await;
    let url = format!("http://{}:{}/hook", dns.name(), receiver.addr.port());
    create_webhook(&server, "rebinding", &endpoint(&url)).await;
    assert!(
        dns.answered().contains(&Ipv4Addr::new(203, 0, 113, 10)),
        "the guard resolved the name at creation"
    );

    dns.set(Ipv4Addr::LOCALHOST);
    let switched = chrono::Utc::now();
    let mut work = Workload::new(rand::random(), tenants(2));
    work.write(&server, 4, 5, Duration::ZERO).await;
    eventually(
        "attempts after the switch, refused by the guard",
        WITHIN,
        || async {
            let refused = attempts(&server, "rebinding")
                .await
                .into_iter()
                .filter(|a| {
                    a["at"]
                        .as_str()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .is_some_and(|t| t >= switched)
                        && a["status"].is_null()
                        && a["error"].is_string()
                })
                .count();
            refused >= 2 && dns.answered().contains(&Ipv4Addr::LOCALHOST)
        },
    )
    .await;
    let shown = attempts(&server, "rebinding").await;
    assert!(
        receiver.deliveries().is_empty(),
        "the receiver on 127.0.0.1 got a delivery; attempts: {shown:?}"
    );
    eventually("the endpoint shows its failures", WITHIN, || async {
        webhook(&server, "rebinding").await["failure_streak"]
            .as_u64()
            .unwrap_or(0)
            > 0
    })
    .await;
    assert!(receiver.deliveries().is_empty());
}
