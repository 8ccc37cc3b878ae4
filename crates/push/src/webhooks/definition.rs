//! What a webhook endpoint is: `PUT /v1/webhooks/{name}`'s body, checked without I/O, and the
//! definition stored from it (with its signing secrets).
//!
//! The signing secrets are part of the stored definition (the master store holds them, as it
//! must to sign); they leave the process only in the answer that creates them (creating the
//! endpoint, rotating). [`Definition::shown`] is the form every other answer and log uses: no
//! secret, and header names without their values (they often carry the receiver's own tokens).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration as TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tenantsync_core::DatasetName;

use crate::definition::{DefinitionError, Tenants};
use crate::follow::Scope;
use crate::webhooks::send::reserved_header;
use crate::webhooks::sign::Secret;

/// How long a rotated-out secret still signs deliveries.
pub const ROTATION_OVERLAP: TimeDelta = TimeDelta::hours(24);

/// `PUT /v1/webhooks/{name}`: `{"url", "datasets", "tenants", "headers", "max_rate",
/// "enabled"}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub url: String,
    pub datasets: Vec<DatasetName>,
    pub tenants: Tenants,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Messages per second at most; none: as fast as the endpoint answers.
    #[serde(default)]
    pub max_rate: Option<u32>,
    #[serde(default = "enabled_default")]
    pub enabled: bool,
}

fn enabled_default() -> bool {
    true
}

/// A signing secret and, once rotated out, until when it still signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningSecret {
    /// `whsec_` + base64 of the key.
    pub secret: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Why tenantsync disabled an endpoint by itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disabled {
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// A webhook endpoint as stored (JSON in the master store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    pub url: String,
    /// Sorted, without duplicates.
    pub datasets: Vec<DatasetName>,
    pub tenants: Tenants,
    pub headers: BTreeMap<String, String>,
    pub max_rate: Option<u32>,
    /// As the operator set it.
    pub enabled: bool,
    /// Set when delivery disabled the endpoint (410 Gone, failing too long); cleared when an
    /// operator enables it again.
    pub disabled: Option<Disabled>,
    /// Newest last; at least one.
    pub secrets: Vec<SigningSecret>,
}

/// A new signing secret, as text.
pub fn new_secret() -> String {
    Secret::generate().expose()
}

impl Definition {
    /// The definition a `PUT` makes: a new endpoint gets a new secret (returned, to be shown
    /// once), an update keeps the secrets and, when it enables the endpoint, clears why it was
    /// disabled.
    pub fn from_spec(
        spec: WebhookSpec,
        previous: Option<&Definition>,
    ) -> Result<(Definition, Option<String>), DefinitionError> {
        let url = check_url_syntax(&spec.url)?;
        let mut datasets = spec.datasets;
        datasets.sort_unstable();
        datasets.dedup();
        if datasets.is_empty() {
            return Err(DefinitionError::new(
                "datasets",
                "name at least one dataset",
            ));
        }
        let selection = spec.tenants.selection()?;
        let mut headers = BTreeMap::new();
        for (name, value) in spec.headers {
            let lower = name.to_ascii_lowercase();
            let field = format!("headers.{lower}");
            if reqwest::header::HeaderName::from_bytes(lower.as_bytes()).is_err() {
                return Err(DefinitionError::new(field, "not a valid HTTP header name"));
            }
            if reserved_header(&lower) {
                return Err(DefinitionError::new(
                    field,
                    "tenantsync sets this header itself",
                ));
            }
            if reqwest::header::HeaderValue::from_str(&value).is_err() {
                // The value is not repeated: it may be a token.
                return Err(DefinitionError::new(
                    field,
                    "the value is not a valid HTTP header value (visible ASCII only)",
                ));
            }
            headers.insert(lower, value);
        }
        if spec.max_rate == Some(0) {
            return Err(DefinitionError::new(
                "max_rate",
                "at least 1 message per second; leave it out for no limit",
            ));
        }
        let (secrets, new) = match previous {
            Some(p) => (p.secrets.clone(), None),
            None => {
                let secret = new_secret();
                (
                    vec![SigningSecret {
                        secret: secret.clone(),
                        expires_at: None,
                    }],
                    Some(secret),
                )
            }
        };
        // Enabling (or leaving enabled) is the operator's answer to why delivery disabled it.
        let disabled = match previous {
            Some(p) if !spec.enabled => p.disabled.clone(),
            _ => None,
        };
        Ok((
            Definition {
                url,
                datasets,
                tenants: Tenants::from_selection(&selection),
                headers,
                max_rate: spec.max_rate,
                enabled: spec.enabled,
                disabled,
                secrets,
            },
            new,
        ))
    }

    /// Parses a stored definition.
    pub fn parse(text: &str) -> Result<Definition, String> {
        serde_json::from_str(text)
            .map_err(|e| format!("the stored webhook definition does not parse: {e}"))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a definition serializes")
    }

    /// Whether deliveries go out: enabled by the operator and not disabled by delivery.
    pub fn runs(&self) -> bool {
        self.enabled && self.disabled.is_none()
    }

    pub fn scope(&self) -> Scope {
        Scope {
            datasets: self.datasets.clone(),
            tenants: self
                .tenants
                .selection()
                .unwrap_or(tenantsync_store::TenantSelection::Only(Vec::new())),
        }
    }

    /// Adds a new secret, which signs from now on; the others sign for another
    /// [`ROTATION_OVERLAP`] at most, and those past their time are dropped. Returns the new one.
    pub fn rotate(&mut self, now: DateTime<Utc>) -> String {
        let until = now + ROTATION_OVERLAP;
        self.secrets
            .retain(|s| s.expires_at.is_none_or(|t| t > now));
        for s in &mut self.secrets {
            s.expires_at = Some(s.expires_at.map_or(until, |t| t.min(until)));
        }
        let secret = new_secret();
        self.secrets.push(SigningSecret {
            secret: secret.clone(),
            expires_at: None,
        });
        secret
    }

    /// The secrets that sign a delivery at `now`, newest first.
    pub fn live_secrets(&self, now: DateTime<Utc>) -> Vec<&str> {
        self.secrets
            .iter()
            .rev()
            .filter(|s| s.expires_at.is_none_or(|t| t > now))
            .map(|s| s.secret.as_str())
            .collect()
    }

    /// The definition as answers and logs show it: no secret, header names only.
    pub fn shown(&self) -> Value {
        json!({
            "url": self.url,
            "datasets": self.datasets,
            "tenants": self.tenants,
            "headers": self.headers.keys().collect::<Vec<_>>(),
            "max_rate": self.max_rate,
            "enabled": self.enabled,
            "disabled": self.disabled,
            "secrets": self.secrets.iter().map(|s| json!({"expires_at": s.expires_at})).collect::<Vec<_>>(),
        })
    }
}

/// The URL's syntax: absolute http(s) with a host and no user info. Whether its host may be
/// reached is the SSRF guard's question, asked with I/O.
fn check_url_syntax(url: &str) -> Result<String, DefinitionError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| DefinitionError::new("url", format!("not an absolute URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(DefinitionError::new(
            "url",
            "the scheme must be https or http",
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(DefinitionError::new("url", "the URL has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(DefinitionError::new(
            "url",
            "user info in the URL is refused; send credentials in a header",
        ));
    }
    Ok(parsed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: Value) -> WebhookSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_new_endpoint_gets_a_secret_that_answers_never_show() {
        let (d, secret) = Definition::from_spec(
            spec(json!({"url": "https://example.com/hook", "datasets": ["b", "a", "b"], "tenants": "*", "headers": {"X-Key": "s3cret"}})),
            None,
        )
        .unwrap();
        let secret = secret.unwrap();
        assert!(secret.starts_with("whsec_"));
        assert_eq!(d.datasets.len(), 2);
        let shown = d.shown().to_string();
        assert!(
            !shown.contains(&secret) && !shown.contains("s3cret"),
            "{shown}"
        );
        assert!(shown.contains("x-key"));
        // An update keeps the secret and makes no new one.
        let (updated, none) = Definition::from_spec(
            spec(json!({"url": "https://example.com/other", "datasets": ["a"], "tenants": ["t1"]})),
            Some(&d),
        )
        .unwrap();
        assert_eq!(none, None);
        assert_eq!(updated.secrets, d.secrets);
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (
                json!({"url": "ftp://x/", "datasets": ["a"], "tenants": "*"}),
                "url",
            ),
            (
                json!({"url": "https://u:p@x/", "datasets": ["a"], "tenants": "*"}),
                "url",
            ),
            (
                json!({"url": "https://x/", "datasets": [], "tenants": "*"}),
                "datasets",
            ),
            (
                json!({"url": "https://x/", "datasets": ["a"], "tenants": []}),
                "tenants",
            ),
            (
                json!({"url": "https://x/", "datasets": ["a"], "tenants": "all"}),
                "tenants",
            ),
            (
                json!({"url": "https://x/", "datasets": ["a"], "tenants": "*", "headers": {"webhook-id": "1"}}),
                "headers.webhook-id",
            ),
            (
                json!({"url": "https://x/", "datasets": ["a"], "tenants": "*", "headers": {"x": "a\nb"}}),
                "headers.x",
            ),
            (
                json!({"url": "https://x/", "datasets": ["a"], "tenants": "*", "max_rate": 0}),
                "max_rate",
            ),
        ];
        for (body, field) in cases {
            let e = Definition::from_spec(spec(body.clone()), None).unwrap_err();
            assert_eq!(e.field, field, "{body}");
        }
    }

    #[test]
    fn rotation_keeps_the_old_secret_for_a_day() {
        let (mut d, first) = Definition::from_spec(
            spec(json!({"url": "https://x/", "datasets": ["a"], "tenants": "*"})),
            None,
        )
        .unwrap();
        let now = Utc::now();
        let second = d.rotate(now);
        assert_eq!(
            d.live_secrets(now),
            vec![second.as_str(), first.as_deref().unwrap()]
        );
        let later = now + ROTATION_OVERLAP + TimeDelta::seconds(1);
        assert_eq!(d.live_secrets(later), vec![second.as_str()]);
        let third = d.rotate(later);
        assert_eq!(d.secrets.len(), 2, "the expired secret is dropped");
        assert_eq!(d.live_secrets(later), vec![third.as_str(), second.as_str()]);
    }

    #[test]
    fn enabling_again_clears_why_delivery_disabled_it() {
        let body = json!({"url": "https://x/", "datasets": ["a"], "tenants": "*"});
        let (mut d, _) = Definition::from_spec(spec(body.clone()), None).unwrap();
        d.disabled = Some(Disabled {
            reason: "410 Gone".into(),
            at: Utc::now(),
        });
        assert!(!d.runs());
        let (again, _) = Definition::from_spec(spec(body), Some(&d)).unwrap();
        assert!(again.runs());
    }
}
