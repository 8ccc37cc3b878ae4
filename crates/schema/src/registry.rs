//! [`Schemas`]: registering schema versions under the compatibility rules, and the per-dataset
//! contract every write and the processor read from a cache.
//!
//! The store is the truth: every registration is a compare-and-set on the latest version
//! ([`SchemaStore::put_schema`]), so instances registering at once never both create the same
//! version, and a registration that lost starts over against the new history. The cache holds
//! each dataset's [`Contract`] as last read from the store; a registration through this
//! instance drops its dataset's entry at once, and the `schemas` service drops the whole cache
//! when the store's generation says that anything changed elsewhere, within about a second.
//! A read of the cache never waits for the store when the entry is there: it runs on every
//! write.
//!
//! It never decides what compatibility means (that is [`compat`](crate::compat) and
//! [`AvroSchema::can_read`]) and never publishes or creates topics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use serde_json::Value;
use tenantsync_core::{DatasetName, Object, Topics};
use tenantsync_store::{
    ContractSettings, MasterStore, SchemaFormat, SchemaPut, StoreError, StoredSchema,
};
use tenantsync_supervisor::{ServiceError, Supervisor};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::avro::AvroSchema;
use crate::{Break, Compatibility, SchemaError, Validator, Violation, compat};

/// How often the `schemas` service reads the store's generation.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// Registrations that lose the compare-and-set to another instance start over at most this many
/// times; more means the dataset is being registered in a tight loop elsewhere.
const REGISTER_ATTEMPTS: usize = 10;

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

impl From<SchemaError> for RegisterError {
    fn from(error: SchemaError) -> Self {
        match error {
            SchemaError::Store(e) => RegisterError::Store(e),
            invalid @ SchemaError::Invalid { .. } => RegisterError::Invalid(invalid),
        }
    }
}

/// The contracts this instance read, and a count of the times it dropped them: a contract
/// read from the store is kept only if nothing was dropped while it was being read, since
/// what it read may be what the drop was about.
#[derive(Default)]
struct Cache {
    drops: u64,
    contracts: HashMap<DatasetName, Arc<Contract>>,
}

/// Registration and the cache of contracts. One per process, shared.
pub struct Schemas {
    store: Arc<dyn MasterStore>,
    topics: Topics,
    cache: RwLock<Cache>,
    /// The store's generation when the service last looked; `None` before it did.
    generation: Mutex<Option<u64>>,
    /// This instance's registrations and settings changes happen one at a time, so that they
    /// never race each other (instances still may: the store's compare-and-set settles it).
    writes: tokio::sync::Mutex<()>,
}

impl Schemas {
    pub fn new(store: Arc<dyn MasterStore>, topics: Topics) -> Self {
        Self {
            store,
            topics,
            cache: RwLock::default(),
            generation: Mutex::default(),
            writes: tokio::sync::Mutex::default(),
        }
    }

    /// Starts the `schemas` service, which refreshes the cache when another instance on the
    /// store registered something (it polls the store's generation every second).
    pub fn supervise(self: &Arc<Self>, supervisor: &Supervisor) {
        let schemas = Arc::clone(self);
        supervisor.spawn("schemas", move |stop| {
            let schemas = Arc::clone(&schemas);
            async move { schemas.watch(stop).await }
        });
    }

    async fn watch(&self, stop: CancellationToken) -> Result<(), ServiceError> {
        let mut tick = tokio::time::interval(REFRESH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            self.refresh().await.map_err(|e| match e {
                SchemaError::Store(e) => ServiceError::from_error(e),
                other => ServiceError::permanent(other),
            })?;
        }
    }

    /// One step of the `schemas` service: reads the store's generation and drops every cached
    /// contract when it changed since the last step (or this is the first). Returns whether it
    /// dropped them. Public so that a caller that must see other instances' registrations at
    /// once (a test) need not wait for the service.
    pub async fn refresh(&self) -> Result<bool, SchemaError> {
        let now = self.store.schemas_generation().await?;
        let changed = {
            let mut seen = self
                .generation
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let changed = *seen != Some(now);
            *seen = Some(now);
            changed
        };
        if changed {
            debug!(
                generation = now,
                "schemas changed on the store; dropping cached contracts"
            );
            let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
            cache.drops += 1;
            cache.contracts.clear();
        }
        Ok(changed)
    }

    /// Drops the dataset's contract after this instance changed it.
    fn forget(&self, dataset: &DatasetName) {
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        cache.drops += 1;
        cache.contracts.remove(dataset);
    }

    /// The dataset's contract, from the cache (filled on first use, refreshed by the service and
    /// at once after a registration through this instance).
    pub async fn contract(&self, dataset: &DatasetName) -> Result<Arc<Contract>, SchemaError> {
        let drops = {
            let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(contract) = cache.contracts.get(dataset) {
                return Ok(Arc::clone(contract));
            }
            cache.drops
        };
        let contract = Arc::new(self.load(dataset).await?);
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        if cache.drops != drops {
            return Ok(contract);
        }
        Ok(Arc::clone(
            cache.contracts.entry(dataset.clone()).or_insert(contract),
        ))
    }

    /// The dataset's contract as the store has it now.
    async fn load(&self, dataset: &DatasetName) -> Result<Contract, SchemaError> {
        let (json, avro, settings) = tokio::try_join!(
            self.store.schema_versions(dataset, SchemaFormat::Json),
            self.store.schema_versions(dataset, SchemaFormat::Avro),
            self.store.contract_settings(dataset),
        )?;
        let json = match json.last() {
            Some(latest) => Some(JsonVersion {
                version: latest.version,
                id: latest.id,
                validator: Arc::new(stored(Validator::new(&json_of(latest)?), latest)?),
            }),
            None => None,
        };
        let avro_versions = parse_avro(&avro)?
            .into_iter()
            .rev()
            .map(|(version, id, schema)| AvroVersion {
                version,
                id,
                schema,
            })
            .collect();
        Ok(Contract {
            json,
            avro: settings.avro,
            avro_versions,
        })
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
        Validator::new(schema).map_err(RegisterError::from)?;
        // Stored in one spelling, so that the same schema sent twice is the same text.
        let text = serde_json::to_string(&sorted(schema)).map_err(|e| invalid("", e))?;
        let _writes = self.writes.lock().await;
        if let Some(mode) = compatibility {
            self.update_settings(dataset, |s| {
                s.compatibility = Some(mode.as_str().to_owned())
            })
            .await?;
        }
        for _ in 0..REGISTER_ATTEMPTS {
            let mode = self.compatibility(Some(dataset)).await?;
            let (history, settings) = tokio::try_join!(
                self.store.schema_versions(dataset, SchemaFormat::Json),
                self.store.contract_settings(dataset),
            )?;
            if let Some(latest) = history.last().filter(|l| l.schema == text) {
                // As Confluent's registry does: the same schema again is the version it is,
                // whatever the mode says today.
                let avro = match settings.avro {
                    true => self.latest(dataset, SchemaFormat::Avro).await?,
                    false => None,
                };
                return Ok(Registered {
                    schema: latest.clone(),
                    created: false,
                    avro,
                });
            }
            let earlier = history
                .iter()
                .map(|s| Ok((s.version, json_of(s)?)))
                .collect::<Result<Vec<_>, SchemaError>>()?;
            let breaks = compat::check(mode, schema, &earlier);
            if !breaks.is_empty() {
                return Err(RegisterError::Incompatible { mode, breaks });
            }
            // Derived and checked before anything is stored: a dataset asking for Avro never
            // gets a JSON version without its Avro one.
            let derived = match settings.avro {
                true => Some(AvroSchema::derive(schema, dataset.as_str())?),
                false => None,
            };
            if let Some(derived) = &derived {
                self.avro_breaks(dataset, mode, derived).await?;
            }
            let expected = history.last().map_or(0, |l| l.version);
            let put = self
                .store
                .put_schema(dataset, SchemaFormat::Json, &text, expected)
                .await?;
            let (schema, created) = match put {
                SchemaPut::Conflict => continue,
                SchemaPut::Existing(s) => (s, false),
                SchemaPut::Created(s) => (s, true),
            };
            self.forget(dataset);
            let avro = match (created, derived) {
                (true, Some(derived)) => Some(self.put_avro(dataset, &derived).await?.0),
                _ => None,
            };
            return Ok(Registered {
                schema,
                created,
                avro,
            });
        }
        Err(busy(dataset))
    }

    /// Registers an Avro schema given directly, under the dataset's mode with Avro's rules.
    pub async fn register_avro(
        &self,
        dataset: &DatasetName,
        schema: &str,
    ) -> Result<Registered, RegisterError> {
        let parsed = AvroSchema::parse(schema)?;
        let _writes = self.writes.lock().await;
        let (schema, created) = self.put_avro(dataset, &parsed).await?;
        Ok(Registered {
            schema,
            created,
            avro: None,
        })
    }

    /// Puts an Avro version after checking it under the dataset's mode, starting over when
    /// another instance registered one in between. Whether it was created.
    async fn put_avro(
        &self,
        dataset: &DatasetName,
        schema: &AvroSchema,
    ) -> Result<(StoredSchema, bool), RegisterError> {
        for _ in 0..REGISTER_ATTEMPTS {
            let mode = self.compatibility(Some(dataset)).await?;
            let history = self.avro_breaks(dataset, mode, schema).await?;
            let expected = history.last().map_or(0, |(version, ..)| *version);
            let put = self
                .store
                .put_schema(dataset, SchemaFormat::Avro, schema.text(), expected)
                .await?;
            let done = match put {
                SchemaPut::Conflict => continue,
                SchemaPut::Existing(s) => (s, false),
                SchemaPut::Created(s) => (s, true),
            };
            self.forget(dataset);
            return Ok(done);
        }
        Err(busy(dataset))
    }

    /// The dataset's Avro history, oldest first, after checking that `schema` may follow it
    /// under `mode`; `Incompatible` when it may not. The same text as the latest version always
    /// may (registering it again changes nothing).
    async fn avro_breaks(
        &self,
        dataset: &DatasetName,
        mode: Compatibility,
        schema: &AvroSchema,
    ) -> Result<Vec<(u32, u32, Arc<AvroSchema>)>, RegisterError> {
        let stored = self
            .store
            .schema_versions(dataset, SchemaFormat::Avro)
            .await?;
        let history = parse_avro(&stored)?;
        if stored.last().is_some_and(|l| l.schema == schema.text()) {
            return Ok(history);
        }
        let breaks = avro_check(mode, schema, &history);
        if !breaks.is_empty() {
            return Err(RegisterError::Incompatible { mode, breaks });
        }
        Ok(history)
    }

    /// What would break if the Avro `schema` were registered, checked against version `against`
    /// (`None`: under the dataset's mode, as registration would). Against a given version the
    /// mode says in which direction(s) to check (`NONE`: backward), and that version alone; a
    /// version the dataset does not have is `Invalid`.
    pub async fn check_avro(
        &self,
        dataset: &DatasetName,
        schema: &str,
        against: Option<u32>,
    ) -> Result<Vec<Break>, RegisterError> {
        let parsed = AvroSchema::parse(schema)?;
        let mode = self.compatibility(Some(dataset)).await?;
        let stored = self
            .store
            .schema_versions(dataset, SchemaFormat::Avro)
            .await?;
        let history = parse_avro(&stored)?;
        let Some(version) = against else {
            if stored.last().is_some_and(|l| l.schema == parsed.text()) {
                return Ok(Vec::new());
            }
            return Ok(avro_check(mode, &parsed, &history));
        };
        let Some(one) = history.iter().find(|(v, ..)| *v == version) else {
            return Err(invalid(
                "",
                format!("dataset {dataset} has no Avro schema version {version}"),
            )
            .into());
        };
        let mode = match mode {
            Compatibility::None => Compatibility::Backward,
            other => other,
        };
        Ok(avro_check(mode, &parsed, std::slice::from_ref(one)))
    }

    /// Turns Avro publishing on or off for the dataset. Turning it on derives and registers an
    /// Avro version from the latest JSON Schema when the dataset has no Avro version yet; when
    /// that schema has no Avro equivalent, it is `Invalid` and the setting is left as it was.
    pub async fn set_avro(&self, dataset: &DatasetName, on: bool) -> Result<(), RegisterError> {
        let _writes = self.writes.lock().await;
        if on {
            let (json, avro) = tokio::try_join!(
                self.latest(dataset, SchemaFormat::Json),
                self.latest(dataset, SchemaFormat::Avro),
            )?;
            if let (Some(json), None) = (json, avro) {
                let derived = AvroSchema::derive(&json_of(&json)?, dataset.as_str())?;
                self.put_avro(dataset, &derived).await?;
            }
        }
        self.update_settings(dataset, |s| s.avro = on).await?;
        Ok(())
    }

    /// The dataset's mode (its own, else the store-wide one, else `BACKWARD`).
    pub async fn compatibility(
        &self,
        dataset: Option<&DatasetName>,
    ) -> Result<Compatibility, SchemaError> {
        if let Some(dataset) = dataset {
            let settings = self.store.contract_settings(dataset).await?;
            if let Some(mode) = settings.compatibility {
                return parse_mode(&mode);
            }
        }
        match self.store.default_compatibility().await? {
            Some(mode) => parse_mode(&mode),
            None => Ok(Compatibility::default()),
        }
    }

    /// Sets the dataset's mode, or the store-wide one when `dataset` is `None`.
    pub async fn set_compatibility(
        &self,
        dataset: Option<&DatasetName>,
        mode: Compatibility,
    ) -> Result<(), SchemaError> {
        let _writes = self.writes.lock().await;
        match dataset {
            Some(dataset) => {
                self.update_settings(dataset, |s| s.compatibility = Some(mode.as_str().into()))
                    .await
            }
            None => Ok(self.store.set_default_compatibility(mode.as_str()).await?),
        }
    }

    /// The Schema Registry subject of the dataset's Avro state topic: `{topic}-value`.
    pub fn subject(&self, dataset: &DatasetName) -> String {
        subject(&self.topics, dataset)
    }

    /// The dataset whose Avro state topic `subject` names, if any.
    pub fn subject_dataset(&self, subject: &str) -> Option<DatasetName> {
        subject_dataset(&self.topics, subject)
    }

    /// Reads, changes and writes the dataset's settings. Callers hold `writes`; another
    /// instance changing the other setting at the same moment may be overwritten.
    async fn update_settings(
        &self,
        dataset: &DatasetName,
        change: impl FnOnce(&mut ContractSettings),
    ) -> Result<(), SchemaError> {
        let mut settings = self.store.contract_settings(dataset).await?;
        change(&mut settings);
        self.store.set_contract_settings(dataset, &settings).await?;
        self.forget(dataset);
        Ok(())
    }

    async fn latest(
        &self,
        dataset: &DatasetName,
        format: SchemaFormat,
    ) -> Result<Option<StoredSchema>, StoreError> {
        Ok(self.store.schema_versions(dataset, format).await?.pop())
    }

    /// Every version of the dataset's schema in `format`, oldest first, read from the store
    /// (not the cache): what the API lists and serves.
    pub async fn versions(
        &self,
        dataset: &DatasetName,
        format: SchemaFormat,
    ) -> Result<Vec<StoredSchema>, SchemaError> {
        Ok(self.store.schema_versions(dataset, format).await?)
    }

    /// The version with this id, of any dataset and format, read from the store.
    pub async fn by_id(&self, id: u32) -> Result<Option<StoredSchema>, SchemaError> {
        Ok(self.store.schema_by_id(id).await?)
    }
}

/// What breaks if `new` follows `history` (oldest first) under `mode`, with Avro's rules:
/// backward, the new schema reads data written with the earlier ones; forward, they read data
/// written with it; full, both; against the latest, or every one when transitive.
fn avro_check(
    mode: Compatibility,
    new: &AvroSchema,
    history: &[(u32, u32, Arc<AvroSchema>)],
) -> Vec<Break> {
    use Compatibility as C;
    let (backward, forward, transitive) = match mode {
        C::None => return Vec::new(),
        C::Backward => (true, false, false),
        C::BackwardTransitive => (true, false, true),
        C::Forward => (false, true, false),
        C::ForwardTransitive => (false, true, true),
        C::Full => (true, true, false),
        C::FullTransitive => (true, true, true),
    };
    let against = match transitive {
        true => history,
        false => &history[history.len().saturating_sub(1)..],
    };
    let mut breaks = Vec::new();
    for (version, _, old) in against {
        if backward {
            breaks.extend(AvroSchema::can_read(new, old, *version));
        }
        if forward {
            breaks.extend(AvroSchema::can_read(old, new, *version));
        }
    }
    breaks
}

fn subject(topics: &Topics, dataset: &DatasetName) -> String {
    format!("{}-value", topics.state_avro(dataset))
}

fn subject_dataset(topics: &Topics, subject: &str) -> Option<DatasetName> {
    let name = subject
        .strip_suffix("-value")?
        .strip_prefix(topics.prefix())?
        .strip_prefix('.')?
        .strip_suffix(".state.avro")?;
    let dataset = DatasetName::new(name).ok()?;
    // Only the very name the topic has (a prefix may itself contain dots).
    (topics.state_avro(&dataset) == subject.strip_suffix("-value")?).then_some(dataset)
}

/// `value` with every object's keys in order: serde_json keeps them as inserted when a
/// dependency turns its `preserve_order` feature on, and the stored text must not depend on it.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sorted(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// Each stored Avro version parsed, as (version, id, schema), in the order given.
fn parse_avro(versions: &[StoredSchema]) -> Result<Vec<(u32, u32, Arc<AvroSchema>)>, SchemaError> {
    versions
        .iter()
        .map(|s| {
            Ok((
                s.version,
                s.id,
                Arc::new(stored(AvroSchema::parse(&s.schema), s)?),
            ))
        })
        .collect()
}

/// A stored JSON Schema's text, parsed.
fn json_of(schema: &StoredSchema) -> Result<Value, SchemaError> {
    stored(
        serde_json::from_str(&schema.schema).map_err(|e| invalid("", e)),
        schema,
    )
}

/// A stored schema was accepted when it was registered: one that does not parse now is the
/// store's problem (or this build's), never the caller's.
fn stored<T>(result: Result<T, SchemaError>, schema: &StoredSchema) -> Result<T, SchemaError> {
    result.map_err(|e| match e {
        SchemaError::Invalid { pointer, message } => SchemaError::Store(StoreError::Corrupt {
            what: "stored schema",
            detail: format!(
                "{} {:?} version {} (id {}) at '{pointer}': {message}",
                schema.dataset, schema.format, schema.version, schema.id
            ),
        }),
        other => other,
    })
}

fn parse_mode(mode: &str) -> Result<Compatibility, SchemaError> {
    Compatibility::parse(mode).ok_or_else(|| {
        SchemaError::Store(StoreError::Corrupt {
            what: "compatibility mode",
            detail: format!("unknown mode {mode:?}"),
        })
    })
}

fn invalid(pointer: &str, message: impl std::fmt::Display) -> SchemaError {
    SchemaError::Invalid {
        pointer: pointer.to_owned(),
        message: message.to_string(),
    }
}

/// Registrations elsewhere kept winning the compare-and-set; worth retrying later.
fn busy(dataset: &DatasetName) -> RegisterError {
    RegisterError::Store(StoreError::Io(std::io::Error::other(format!(
        "schema registration on dataset {dataset} kept losing to concurrent registrations"
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_name_the_avro_state_topic() {
        let topics = Topics::new("acme.prod");
        let orders = DatasetName::new("orders").unwrap();
        assert_eq!(
            subject(&topics, &orders),
            "acme.prod.orders.state.avro-value"
        );
        assert_eq!(
            subject_dataset(&topics, "acme.prod.orders.state.avro-value"),
            Some(orders)
        );
        for other in [
            "acme.prod.orders.state.avro-key",
            "acme.prod.orders.state-value",
            "acme.orders.state.avro-value",
            "other.prod.orders.state.avro-value",
            "acme.prod.Orders.state.avro-value",
            "acme.prod.a.b.state.avro-value",
            "orders-value",
        ] {
            assert_eq!(subject_dataset(&topics, other), None, "{other}");
        }
    }
}
