use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap as AxumHeaders, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;

use super::*;
use crate::webhooks::ssrf::UrlRefused;
use crate::webhooks::test_dns::TestDns;

type Seen = Arc<Mutex<Vec<(AxumHeaders, Bytes)>>>;

/// A local endpoint with one route per behaviour; `/ok` records what it was sent.
async fn endpoint() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let app = Router::new()
        .route(
            "/ok",
            post(move |headers: AxumHeaders, body: Bytes| async move {
                record.lock().unwrap().push((headers, body));
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/fail",
            post(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .route("/gone", post(|| async { StatusCode::GONE }))
        .route(
            "/moved",
            post(|| async { (StatusCode::FOUND, [("location", "/ok")]).into_response() }),
        )
        .route(
            "/busy",
            post(|| async {
                (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "120")]).into_response()
            }),
        )
        .route("/hang", post(std::future::pending::<StatusCode>));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

fn open_settings() -> WebhookSettings {
    WebhookSettings {
        allow_private_networks: true,
        ..WebhookSettings::default()
    }
}

fn sender(settings: WebhookSettings) -> Sender {
    Sender::new(Guard::new(&settings).unwrap(), &settings).unwrap()
}

async fn post_to(sender: &Sender, url: &str) -> Attempt {
    let url = Url::parse(url).unwrap();
    sender
        .send(
            &url,
            &[],
            "msg_1",
            1614265330,
            "v1,c2ln",
            Bytes::from_static(b"{}"),
        )
        .await
}

#[tokio::test]
async fn a_2xx_succeeds_with_the_signed_headers_and_the_endpoints_own() {
    let (addr, seen) = endpoint().await;
    let sender = sender(open_settings());
    let url = Url::parse(&format!("http://{addr}/ok")).unwrap();
    let own = [
        ("authorization".to_owned(), "Bearer abc".to_owned()),
        ("webhook-id".to_owned(), "msg_forged".to_owned()),
        ("Content-Type".to_owned(), "text/plain".to_owned()),
    ];
    let body = Bytes::from_static(br#"{"changes":[]}"#);
    let attempt = sender
        .send(
            &url,
            &own,
            "msg_1",
            1614265330,
            "v1,c2ln v1,b2xk",
            body.clone(),
        )
        .await;
    assert_eq!(attempt.status, Some(204));
    assert_eq!(attempt.error, None);
    assert!(!attempt.gone);

    let seen = seen.lock().unwrap();
    let (headers, received) = &seen[0];
    assert_eq!(received, &body);
    let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
    assert_eq!(header("content-type"), "application/json");
    assert_eq!(header("webhook-id"), "msg_1");
    assert_eq!(header("webhook-timestamp"), "1614265330");
    assert_eq!(header("webhook-signature"), "v1,c2ln v1,b2xk");
    assert_eq!(
        header("user-agent"),
        format!("tenantsync/{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(header("authorization"), "Bearer abc");
    assert_eq!(headers.get_all("webhook-id").iter().count(), 1);
    assert_eq!(headers.get_all("content-type").iter().count(), 1);
}

#[tokio::test]
async fn failures_say_what_happened() {
    let (addr, _) = endpoint().await;
    let sender = sender(open_settings());

    let failed = post_to(&sender, &format!("http://{addr}/fail")).await;
    assert_eq!(failed.status, Some(500));
    assert_eq!(failed.error.as_deref(), Some("500 Internal Server Error"));
    assert!(!failed.gone);

    let gone = post_to(&sender, &format!("http://{addr}/gone")).await;
    assert_eq!(gone.status, Some(410));
    assert!(gone.gone);
    assert!(gone.error.is_some());

    let moved = post_to(&sender, &format!("http://{addr}/moved")).await;
    assert_eq!(moved.status, Some(302));
    assert_eq!(moved.error.as_deref(), Some("redirect 302 not followed"));

    let busy = post_to(&sender, &format!("http://{addr}/busy")).await;
    assert_eq!(busy.status, Some(429));
    assert_eq!(busy.retry_after, Some(Duration::from_secs(120)));
}

#[tokio::test]
async fn a_refused_connection_says_so_without_the_query() {
    // A port that was just free: nothing listens there.
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let sender = sender(open_settings());
    let attempt = post_to(&sender, &format!("http://{addr}/hook?token=hunter2")).await;
    assert_eq!(attempt.status, None);
    let error = attempt.error.unwrap();
    assert_eq!(error, "connection refused");
}

#[tokio::test]
async fn a_hanging_endpoint_times_out() {
    let (addr, _) = endpoint().await;
    let sender = sender(WebhookSettings {
        timeout: Duration::from_millis(300),
        ..open_settings()
    });
    let attempt = post_to(&sender, &format!("http://{addr}/hang?token=hunter2")).await;
    assert_eq!(attempt.status, None);
    assert_eq!(attempt.error.as_deref(), Some("timed out after 300 ms"));
}

#[tokio::test]
async fn the_guard_refuses_private_endpoints_before_sending() {
    let (addr, seen) = endpoint().await;
    let sender = sender(WebhookSettings::default());
    let port = addr.port();
    for host in [
        "127.0.0.1".to_owned(),
        "[::1]".to_owned(),
        "[::ffff:127.0.0.1]".to_owned(),
        "169.254.169.254".to_owned(),
        "10.0.0.1".to_owned(),
        "localhost".to_owned(),
    ] {
        let attempt = post_to(&sender, &format!("http://{host}:{port}/ok?token=hunter2")).await;
        assert_eq!(attempt.status, None, "{host}");
        let error = attempt.error.unwrap();
        assert!(
            error.starts_with("address refused by the SSRF guard: "),
            "{host}: {error}"
        );
        assert!(!error.contains("hunter2"), "{error}");
    }
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_name_that_turns_private_after_its_check_is_refused_at_send_time() {
    let (addr, seen) = endpoint().await;
    let dns = TestDns::start("hooks.example.test", Ipv4Addr::new(203, 0, 113, 10)).await;
    let settings = WebhookSettings {
        dns_server: Some(dns.addr),
        ..WebhookSettings::default()
    };
    let guard = Guard::new(&settings).unwrap();
    let sender = Sender::new(guard.clone(), &settings).unwrap();

    let url = guard
        .check_url(&format!("http://hooks.example.test:{}/ok", addr.port()))
        .unwrap();
    guard.check_resolved(&url).await.unwrap();

    // The name now points at this machine, where the endpoint listens.
    dns.set(Ipv4Addr::LOCALHOST);
    assert!(matches!(
        guard.check_resolved(&url).await,
        Err(UrlRefused::Address { .. })
    ));
    let attempt = sender
        .send(&url, &[], "msg_1", 1, "v1,c2ln", Bytes::from_static(b"{}"))
        .await;
    assert_eq!(attempt.status, None);
    let error = attempt.error.unwrap();
    assert_eq!(
        error,
        "address refused by the SSRF guard: hooks.example.test: 127.0.0.1 is a loopback address"
    );
    assert!(seen.lock().unwrap().is_empty());

    // The same name, with private networks allowed, reaches the endpoint: the refusal above
    // was the guard's, not a broken lookup.
    let open = WebhookSettings {
        allow_private_networks: true,
        ..settings
    };
    let sender = Sender::new(Guard::new(&open).unwrap(), &open).unwrap();
    let attempt = sender
        .send(&url, &[], "msg_1", 1, "v1,c2ln", Bytes::from_static(b"{}"))
        .await;
    assert_eq!(attempt.error, None);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn retry_after_reads_seconds_and_dates() {
    let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
    assert_eq!(
        parse_retry_after("120", now),
        Some(Duration::from_secs(120))
    );
    assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
        Some(Duration::from_secs(60))
    );
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
        Some(Duration::ZERO)
    );
    assert_eq!(parse_retry_after("soon", now), None);
    assert_eq!(parse_retry_after("-5", now), None);
}

#[test]
fn reserved_headers_are_matched_in_any_case() {
    assert!(reserved_header("Webhook-Signature"));
    assert!(reserved_header("CONTENT-TYPE"));
    assert!(!reserved_header("authorization"));
    assert!(!reserved_header("user-agent"));
}

/// The client speaks TLS to an `https` endpoint (a TLS backend is built in): what reaches a
/// plain socket there is a TLS handshake record.
#[tokio::test]
async fn https_endpoints_get_a_tls_handshake() {
    use tokio::io::AsyncReadExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let first_byte = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        socket.read_u8().await.unwrap()
    });
    let sender = sender(open_settings());
    let attempt = post_to(&sender, &format!("https://{addr}/hook")).await;
    assert_eq!(attempt.status, None);
    // 0x16: a TLS handshake record (the ClientHello). Without a TLS backend the client would
    // not connect at all.
    let first_byte = tokio::time::timeout(Duration::from_secs(30), first_byte)
        .await
        .expect("the client never connected")
        .unwrap();
    assert_eq!(first_byte, 0x16);
}
