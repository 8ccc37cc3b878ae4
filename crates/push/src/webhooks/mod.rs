//! Webhooks: changes pushed to outside HTTP endpoints, signed per Standard Webhooks v1.

pub mod definition;
pub mod deliver;
pub mod message;
pub mod replay;
pub mod send;
pub mod sign;
pub mod ssrf;
#[cfg(test)]
pub(crate) mod test_dns;

use std::time::Duration;

use tenantsync_store::StoredPush;

use crate::PushError;
use crate::runner::TargetContext;

/// Webhook delivery settings of an instance.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Send to private, loopback and link-local addresses too (on-premises use, tests).
    pub allow_private_networks: bool,
    /// Refuse `http://` endpoints.
    pub https_only: bool,
    /// How long an attempt may take before it counts as failed.
    pub timeout: Duration,
    /// Networks allowed even when private (CIDRs), with `allow_private_networks` off.
    pub allow_networks: Vec<String>,
    /// Resolve endpoints' names with this DNS server instead of the system's.
    pub dns_server: Option<std::net::SocketAddr>,
    /// Delays before the retries of a failed message: the first attempt is immediate, the
    /// n-th retry waits the n-th delay (the last one repeats), with jitter.
    pub retry_schedule: Vec<Duration>,
    /// An endpoint failing without a success for this long is disabled.
    pub disable_after: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            allow_private_networks: false,
            https_only: false,
            timeout: Duration::from_secs(15),
            allow_networks: Vec::new(),
            dns_server: None,
            retry_schedule: [5, 300, 1800, 7200, 18000, 36000, 36000]
                .map(Duration::from_secs)
                .to_vec(),
            disable_after: Duration::from_secs(5 * 24 * 3600),
        }
    }
}

/// Whether the stored endpoint is to be delivered (it is enabled).
pub fn runs(stored: &StoredPush) -> bool {
    definition::Definition::parse(&stored.definition).is_ok_and(|d| d.runs())
}

/// Delivers the endpoint until `ctx.stop` (or until it disables itself: see [`deliver`]).
pub async fn run(ctx: &TargetContext, stored: &StoredPush) -> Result<(), PushError> {
    let definition =
        definition::Definition::parse(&stored.definition).map_err(PushError::Definition)?;
    let settings = &ctx.settings.webhooks;
    let guard = ssrf::Guard::new(settings).map_err(|e| PushError::Definition(e.to_string()))?;
    let sender =
        send::Sender::new(guard, settings).map_err(|e| PushError::Definition(e.to_string()))?;
    let transport = deliver::Http::new(sender, &definition)?;
    deliver::deliver(ctx, stored, &definition, transport).await
}
