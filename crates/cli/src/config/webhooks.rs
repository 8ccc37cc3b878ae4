//! `[webhooks]` of the configuration file and the `--webhook-*` flags: how webhook endpoints
//! are reached (the SSRF guard's switches, the DNS server), how long an attempt may take, the
//! retry schedule and when a failing endpoint is disabled. Checked without I/O; every error
//! names its key.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use serde::Deserialize;
use tenantsync_push::webhooks::WebhookSettings;
use tenantsync_push::webhooks::ssrf::Guard;

/// How long an attempt may take, in seconds, unless configured.
pub const DEFAULT_TIMEOUT_SECS: u64 = 15;
/// Delays before the retries of a failed message, in seconds, unless configured: 5 s, 5 min,
/// 30 min, 2 h, 5 h, 10 h, 10 h.
pub const DEFAULT_RETRY_SCHEDULE_SECS: [u64; 7] = [5, 300, 1800, 7200, 18000, 36000, 36000];
/// An endpoint failing without a success for this long (5 days) is disabled, unless configured.
pub const DEFAULT_DISABLE_AFTER_SECS: u64 = 5 * 24 * 3600;

/// `[webhooks]`; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksSection {
    /// Let endpoints be on loopback, private, link-local and other non-public addresses.
    #[serde(default)]
    pub allow_private_networks: bool,
    /// Networks (CIDRs) endpoints may be on even though they are not public.
    #[serde(default)]
    pub allow_networks: Vec<String>,
    /// Refuse `http://` endpoints.
    #[serde(default)]
    pub https_only: bool,
    pub timeout_secs: Option<u64>,
    pub retry_schedule_secs: Option<Vec<u64>>,
    pub disable_after_secs: Option<u64>,
    /// `IP:PORT` of the DNS server that resolves endpoints' names, instead of the system's.
    pub dns_server: Option<String>,
}

impl WebhooksSection {
    /// The settings, with the flags' switches over the file's.
    pub fn settings(
        self,
        allow_private_networks: bool,
        https_only: bool,
    ) -> anyhow::Result<WebhookSettings> {
        let dns_server = self
            .dns_server
            .map(|s| {
                s.parse::<SocketAddr>().map_err(|_| {
                    anyhow::anyhow!(
                        "invalid webhooks.dns_server: {s:?} is not an address like 10.0.0.2:53"
                    )
                })
            })
            .transpose()?;
        let timeout = self.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if timeout == 0 {
            bail!("invalid webhooks.timeout_secs: must be at least 1");
        }
        let schedule = self
            .retry_schedule_secs
            .unwrap_or_else(|| DEFAULT_RETRY_SCHEDULE_SECS.to_vec());
        if schedule.is_empty() {
            bail!(
                "invalid webhooks.retry_schedule_secs: name at least one delay (the last one repeats)"
            );
        }
        let disable_after = self
            .disable_after_secs
            .unwrap_or(DEFAULT_DISABLE_AFTER_SECS);
        if disable_after == 0 {
            bail!("invalid webhooks.disable_after_secs: must be at least 1");
        }
        let settings = WebhookSettings {
            allow_private_networks: allow_private_networks || self.allow_private_networks,
            allow_networks: self.allow_networks,
            https_only: https_only || self.https_only,
            timeout: Duration::from_secs(timeout),
            dns_server,
            retry_schedule: schedule.into_iter().map(Duration::from_secs).collect(),
            disable_after: Duration::from_secs(disable_after),
        };
        // The guard is the one parser of the allowed networks (CIDRs or single addresses);
        // without the DNS server, building it does no I/O.
        Guard::new(&WebhookSettings {
            dns_server: None,
            ..settings.clone()
        })
        .map_err(|e| anyhow::anyhow!("invalid webhooks.{e}"))?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(toml: &str) -> WebhooksSection {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = WebhooksSection::default().settings(false, false).unwrap();
        assert!(!s.allow_private_networks && !s.https_only);
        assert_eq!(s.timeout, Duration::from_secs(15));
        assert_eq!(
            s.retry_schedule,
            [5, 300, 1800, 7200, 18000, 36000, 36000].map(Duration::from_secs)
        );
        assert_eq!(s.disable_after, Duration::from_secs(432_000));
        assert_eq!(s.dns_server, None);
    }

    #[test]
    fn the_file_sets_everything_and_flags_switch_on() {
        let s = section(
            r#"
            allow_networks = ["10.1.0.0/16", "fd00::/8", "192.168.7.7"]
            timeout_secs = 3
            retry_schedule_secs = [1, 2]
            disable_after_secs = 60
            dns_server = "127.0.0.1:5353"
            "#,
        )
        .settings(true, true)
        .unwrap();
        assert!(s.allow_private_networks && s.https_only);
        assert_eq!(s.allow_networks.len(), 3);
        assert_eq!(s.timeout, Duration::from_secs(3));
        assert_eq!(s.retry_schedule, [1, 2].map(Duration::from_secs));
        assert_eq!(s.disable_after, Duration::from_secs(60));
        assert_eq!(s.dns_server, Some("127.0.0.1:5353".parse().unwrap()));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "allow_networks = [\"10.0.0.0/99\"]",
                "webhooks.allow_networks",
            ),
            ("dns_server = \"8.8.8.8\"", "webhooks.dns_server"),
            ("timeout_secs = 0", "webhooks.timeout_secs"),
            ("retry_schedule_secs = []", "webhooks.retry_schedule_secs"),
            ("disable_after_secs = 0", "webhooks.disable_after_secs"),
        ];
        for (toml, key) in cases {
            let err = section(toml).settings(false, false).unwrap_err();
            assert!(err.to_string().contains(key), "{toml}: {err}");
        }
        let unknown = toml::from_str::<WebhooksSection>("timeout = 3").unwrap_err();
        assert!(unknown.to_string().contains("timeout"), "{unknown}");
    }
}
