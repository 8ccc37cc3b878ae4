//! The check the processor hands the master store with each batch: a dataset's data contract,
//! as the store's [`DataCheck`]. The store calls it on the merged result of each patch (the only
//! writes whose full data is known only when they are applied); it must never do I/O, since it
//! runs inside the store's transaction.

use std::sync::Arc;

use tenantsync_core::{DatasetName, Object};
use tenantsync_schema::{Contract, SchemaError, Schemas};
use tenantsync_store::DataCheck;

/// A dataset's contract as of one batch.
pub(crate) struct ContractCheck(Arc<Contract>);

impl DataCheck for ContractCheck {
    fn check(&self, data: &Object) -> Result<(), String> {
        self.0.validate(data).map_err(|violations| {
            violations
                .iter()
                .map(|v| format!("at '{}': {}", v.pointer, v.message))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

/// The check for a batch of `dataset`: `None` when the dataset has no schema (nothing to check).
pub(crate) async fn for_batch(
    schemas: &Schemas,
    dataset: &DatasetName,
) -> Result<Option<Arc<dyn DataCheck>>, SchemaError> {
    let contract = schemas.contract(dataset).await?;
    Ok(contract
        .json
        .is_some()
        .then(|| Arc::new(ContractCheck(contract)) as Arc<dyn DataCheck>))
}
