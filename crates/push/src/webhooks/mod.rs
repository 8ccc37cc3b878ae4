//! Webhooks: changes pushed to outside HTTP endpoints, signed per Standard Webhooks v1.

pub mod definition;

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
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            allow_private_networks: false,
            https_only: false,
            timeout: Duration::from_secs(15),
        }
    }
}

/// Whether the stored endpoint is to be delivered (it is enabled).
pub fn runs(stored: &StoredPush) -> bool {
    definition::Definition::parse(&stored.definition).is_ok_and(|d| d.runs())
}

/// Delivers the endpoint until `ctx.stop`.
pub async fn run(_ctx: &TargetContext, _stored: &StoredPush) -> Result<(), PushError> {
    Err(PushError::Definition(
        "webhook delivery is not built yet".into(),
    ))
}
