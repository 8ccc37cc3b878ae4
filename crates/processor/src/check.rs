//! The check the processor hands the master store with each batch: a dataset's data contract,
//! as the store's [`DataCheck`]. The store calls it on the merged result of each patch (the only
//! writes whose full data is known only when they are applied); it must never do I/O, since it
//! runs inside the store's transaction.

use std::sync::Arc;

use tenantsync_core::Object;
use tenantsync_schema::{Contract, Violation};
use tenantsync_store::DataCheck;

/// A dataset's contract as of one batch.
pub(crate) struct ContractCheck(Arc<Contract>);

impl DataCheck for ContractCheck {
    fn check(&self, data: &Object) -> Result<(), String> {
        self.0
            .validate(data)
            .map_err(|violations| Violation::describe(&violations))
    }
}

/// The check for a batch applied under `contract`: `None` when the dataset has no schema
/// (nothing to check).
pub(crate) fn of(contract: &Arc<Contract>) -> Option<Arc<dyn DataCheck>> {
    contract
        .json
        .is_some()
        .then(|| Arc::new(ContractCheck(Arc::clone(contract))) as Arc<dyn DataCheck>)
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tenantsync_schema::{JsonVersion, Validator};

    use super::*;

    #[test]
    fn the_check_refuses_what_the_contract_refuses_and_says_where() {
        let schema = json!({
            "type": "object",
            "properties": {"qty": {"type": "integer"}},
            "required": ["qty"]
        });
        let contract = Contract {
            json: Some(JsonVersion {
                version: 1,
                id: 1,
                validator: Arc::new(Validator::new(&schema).unwrap()),
            }),
            ..Contract::default()
        };
        let check = ContractCheck(Arc::new(contract));
        let data = |v: serde_json::Value| v.as_object().cloned().unwrap();
        assert_eq!(check.check(&data(json!({"qty": 1}))), Ok(()));
        let why = check.check(&data(json!({"qty": "x"}))).unwrap_err();
        assert!(why.contains("'/qty'"), "{why}");
        assert!(check.check(&data(json!({}))).is_err());
        // A contract without a schema takes anything.
        let free = ContractCheck(Arc::new(Contract::default()));
        assert_eq!(free.check(&data(json!({"qty": "x"}))), Ok(()));
    }
}
