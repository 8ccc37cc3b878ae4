//! [`Schemas`]: registering schema versions under the compatibility rules, and the per-dataset
//! contract every write and the processor read from a cache.
//!
//! STUB: the registry engineer replaces the bodies; the signatures are the interface the API,
//! the sources and the processor code against.

use std::sync::Arc;

use serde_json::Value;
use tenantsync_core::{DatasetName, Object, Topics};
use tenantsync_store::{MasterStore, StoredSchema};
use tenantsync_supervisor::Supervisor;

use crate::avro::AvroSchema;
use crate::{Break, Compatibility, SchemaError, Validator, Violation};

/// The latest JSON Schema version of a dataset, compiled.
#[derive(Debug, Clone)]
pub struct JsonVersion {
    pub version: u32,
    pub id: u32,
    pub validator: Arc<Validator>,
}

/// An Avro schema version of a dataset, parsed.
#[derive(Debug, Clone)]
pub struct AvroVersion {
    pub version: u32,
    /// The id the wire format carries.
    pub id: u32,
    pub schema: Arc<AvroSchema>,
}

/// A dataset's data contract as this instance knows it.
#[derive(Debug, Clone, Default)]
pub struct Contract {
    /// The latest JSON Schema version; `None` when the dataset has none (any object is valid).
    pub json: Option<JsonVersion>,
    /// Whether the dataset's states are also published as Avro.
    pub avro: bool,
    /// Every Avro version, newest first (the processor encodes with the newest that fits).
    pub avro_versions: Vec<AvroVersion>,
}

impl Contract {
    /// Checks data against the latest JSON Schema; `Ok` when there is none.
    pub fn validate(&self, data: &Object) -> Result<(), Vec<Violation>> {
        match &self.json {
            Some(json) => json.validator.validate(data),
            None => Ok(()),
        }
    }
}

/// What a registration did.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The version registered, or the latest one when it has the same text.
    pub schema: StoredSchema,
    /// `false`: the latest version was identical; nothing changed.
    pub created: bool,
    /// The Avro version derived from a JSON Schema registration, when the dataset asks for Avro.
    pub avro: Option<StoredSchema>,
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// Not a schema tenantsync accepts (API: 422).
    #[error(transparent)]
    Invalid(SchemaError),
    /// Breaks the dataset's compatibility mode (API: 409, listing the breaks).
    #[error("the schema is incompatible with the dataset's earlier versions under {mode:?}")]
    Incompatible {
        mode: Compatibility,
        breaks: Vec<Break>,
    },
    #[error(transparent)]
    Store(#[from] tenantsync_store::StoreError),
}

/// Registration and the cache of contracts. One per process, shared.
pub struct Schemas {
    store: Arc<dyn MasterStore>,
    topics: Topics,
}

impl Schemas {
    pub fn new(store: Arc<dyn MasterStore>, topics: Topics) -> Self {
        Self { store, topics }
    }

    /// Starts the `schemas` service, which refreshes the cache when another instance on the
    /// store registered something (it polls the store's generation every second).
    pub fn supervise(self: &Arc<Self>, supervisor: &Supervisor) {
        let _ = supervisor;
        unimplemented!()
    }

    /// The dataset's contract, from the cache (filled on first use, refreshed by the service and
    /// at once after a registration through this instance).
    pub async fn contract(&self, dataset: &DatasetName) -> Result<Arc<Contract>, SchemaError> {
        let _ = (dataset, &self.store, &self.topics);
        unimplemented!()
    }

    /// Registers a JSON Schema version: refused when it is invalid, needs a remote `$ref`,
    /// breaks the dataset's mode, or (for a dataset asking for Avro) has no Avro equivalent.
    /// `compatibility`, when given, becomes the dataset's mode first.
    pub async fn register_json(
        &self,
        dataset: &DatasetName,
        schema: &Value,
        compatibility: Option<Compatibility>,
    ) -> Result<Registered, RegisterError> {
        let _ = (dataset, schema, compatibility);
        unimplemented!()
    }

    /// Registers an Avro schema given directly, under the dataset's mode with Avro's rules.
    pub async fn register_avro(
        &self,
        dataset: &DatasetName,
        schema: &str,
    ) -> Result<Registered, RegisterError> {
        let _ = (dataset, schema);
        unimplemented!()
    }

    /// What would break if the Avro `schema` were registered, checked against version `against`
    /// (`None`: under the dataset's mode, as registration would).
    pub async fn check_avro(
        &self,
        dataset: &DatasetName,
        schema: &str,
        against: Option<u32>,
    ) -> Result<Vec<Break>, RegisterError> {
        let _ = (dataset, schema, against);
        unimplemented!()
    }

    /// Turns Avro publishing on or off for the dataset. Turning it on derives and registers an
    /// Avro version from the latest JSON Schema when the dataset has no Avro version yet.
    pub async fn set_avro(&self, dataset: &DatasetName, on: bool) -> Result<(), RegisterError> {
        let _ = (dataset, on);
        unimplemented!()
    }

    /// The dataset's mode (its own, else the store-wide one, else `BACKWARD`).
    pub async fn compatibility(
        &self,
        dataset: Option<&DatasetName>,
    ) -> Result<Compatibility, SchemaError> {
        let _ = dataset;
        unimplemented!()
    }

    /// Sets the dataset's mode, or the store-wide one when `dataset` is `None`.
    pub async fn set_compatibility(
        &self,
        dataset: Option<&DatasetName>,
        mode: Compatibility,
    ) -> Result<(), SchemaError> {
        let _ = (dataset, mode);
        unimplemented!()
    }
}
