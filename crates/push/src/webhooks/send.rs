//! One HTTP attempt at a webhook endpoint: the POST with its Standard Webhooks headers, and
//! what came of it ([`Attempt`]), for the delivery loop to record and decide on.
//!
//! The client never follows a redirect (the target could be anywhere, and the guard checked
//! only the first host), never uses a proxy (the proxy would do the lookup the guard must do),
//! and resolves names only through the [`Guard`]. This module must never put a header value,
//! a signature or the URL's query in an [`Attempt`]'s error.

use std::error::Error as _;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT};
use reqwest::{Url, redirect};

use super::WebhookSettings;
use super::ssrf::{Guard, Refused};

/// Headers an endpoint's own headers may not set: the signed ones, and those that frame the
/// request.
pub const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
];

/// Whether an endpoint may not set the header `name` (any case).
pub fn reserved_header(name: &str) -> bool {
    RESERVED_HEADERS
        .iter()
        .any(|reserved| reserved.eq_ignore_ascii_case(name))
}

/// What came of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The response's status, when there was a response.
    pub status: Option<u16>,
    /// From the start of the attempt to the response's head (or the failure).
    pub latency: Duration,
    /// The response's `Retry-After`, in seconds or as an HTTP date.
    pub retry_after: Option<Duration>,
    /// The endpoint answered 410 Gone: it asks not to be sent anything more.
    pub gone: bool,
    /// What went wrong; `None` only for a 2xx.
    pub error: Option<String>,
}

/// The webhook client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("the webhook HTTP client: {0}")]
pub struct SenderError(String);

/// Sends webhook attempts. One per instance, shared by every endpoint (cheap to clone): the
/// settings it holds (guard, timeout) are the instance's, a client's connection pool is kept
/// per host anyway, so endpoints do not share connections, and one client loads the TLS roots
/// once instead of once per endpoint.
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    guard: Guard,
    timeout: Duration,
    user_agent: HeaderValue,
}

impl Sender {
    pub fn new(guard: Guard, settings: &WebhookSettings) -> Result<Sender, SenderError> {
        let client = reqwest::Client::builder()
            .redirect(redirect::Policy::none())
            .no_proxy()
            .timeout(settings.timeout)
            .dns_resolver(guard.clone())
            .build()
            .map_err(|e| SenderError(e.to_string()))?;
        let user_agent =
            HeaderValue::from_str(&format!("tenantsync/{}", env!("CARGO_PKG_VERSION")))
                .expect("a version is a valid header value");
        Ok(Sender {
            client,
            guard,
            timeout: settings.timeout,
            user_agent,
        })
    }

    /// POSTs `body` to `url`, signed: one attempt, never retried here.
    pub async fn send(
        &self,
        url: &Url,
        headers: &[(String, String)],
        id: &str,
        timestamp: i64,
        signature: &str,
        body: Bytes,
    ) -> Attempt {
        let started = Instant::now();
        let failed = |error: String| Attempt {
            status: None,
            latency: started.elapsed(),
            retry_after: None,
            gone: false,
            error: Some(error),
        };
        // The client resolves names through the guard, but connects to an IP-literal host
        // without asking any resolver: those are checked here, before every attempt.
        if let Err(refused) = self.guard.check_url(url.as_str()) {
            return failed(Refused(refused).to_string());
        }
        let headers = match self.headers(headers, id, timestamp, signature) {
            Ok(headers) => headers,
            Err(error) => return failed(error),
        };
        let response = self
            .client
            .post(url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(error) => return failed(self.describe(&error)),
        };
        let latency = started.elapsed();
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, SystemTime::now()));
        let error = if status.is_success() {
            None
        } else if status.is_redirection() {
            Some(format!("redirect {} not followed", status.as_u16()))
        } else {
            Some(status.to_string())
        };
        Attempt {
            status: Some(status.as_u16()),
            latency,
            retry_after,
            gone: status == reqwest::StatusCode::GONE,
            error,
        }
    }

    fn headers(
        &self,
        own: &[(String, String)],
        id: &str,
        timestamp: i64,
        signature: &str,
    ) -> Result<HeaderMap, String> {
        let mut map = HeaderMap::new();
        map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        map.insert(USER_AGENT, self.user_agent.clone());
        for (name, value) in own {
            if reserved_header(name) {
                continue;
            }
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("the header name {name:?} is not valid"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("the value of header {name} is not valid"))?;
            map.insert(header, value);
        }
        let signed = [
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature.to_owned()),
        ];
        for (name, value) in signed {
            let value = HeaderValue::from_str(&value)
                .map_err(|_| format!("the {name} header is not valid"))?;
            map.insert(HeaderName::from_static(name), value);
        }
        Ok(map)
    }

    /// What went wrong, in words, from the client's error chain, without its URL.
    fn describe(&self, error: &reqwest::Error) -> String {
        if error.is_timeout() {
            return format!("timed out after {}", seconds(self.timeout));
        }
        let mut source = error.source();
        let mut deepest = None;
        while let Some(cause) = source {
            if let Some(refused) = cause.downcast_ref::<Refused>() {
                return refused.to_string();
            }
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                return match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                    std::io::ErrorKind::TimedOut => {
                        format!("timed out after {}", seconds(self.timeout))
                    }
                    _ => format!("could not connect: {io}"),
                };
            }
            deepest = Some(cause);
            source = cause.source();
        }
        match deepest {
            Some(cause) if error.is_connect() => format!("could not connect: {cause}"),
            Some(cause) => format!("the request failed: {cause}"),
            None => "the request failed".into(),
        }
    }
}

fn seconds(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{} ms", duration.as_millis())
    }
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3); a date in the past is no
/// wait at all.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests;
