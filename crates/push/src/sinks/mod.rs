//! Database sinks: a table in a consumer's own database kept identical to a dataset.

pub mod definition;

use tenantsync_store::StoredPush;

use crate::PushError;
use crate::runner::TargetContext;

/// Whether the stored sink is to be delivered (it is enabled).
pub fn runs(stored: &StoredPush) -> bool {
    definition::Definition::parse(&stored.definition).is_ok_and(|d| d.enabled)
}

/// Delivers the sink until `ctx.stop`.
pub async fn run(_ctx: &TargetContext, _stored: &StoredPush) -> Result<(), PushError> {
    Err(PushError::Definition(
        "sink delivery is not built yet".into(),
    ))
}
