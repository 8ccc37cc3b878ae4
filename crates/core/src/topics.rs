/// Names of a dataset's topics: `{prefix}.{dataset}.changes`, `.state`, `.state.avro` and
/// `.batches`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub const DEFAULT_PREFIX: &'static str = "tenantsync";

    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn changes(&self, dataset: &crate::DatasetName) -> String {
        format!("{}.{dataset}.changes", self.prefix)
    }

    pub fn state(&self, dataset: &crate::DatasetName) -> String {
        format!("{}.{dataset}.state", self.prefix)
    }

    /// The Avro copy of the state log, `{prefix}.{dataset}.state.avro`, for datasets that ask
    /// for Avro: the same keys, values in the Confluent wire format.
    pub fn state_avro(&self, dataset: &crate::DatasetName) -> String {
        format!("{}.{dataset}.state.avro", self.prefix)
    }

    pub fn batches(&self, dataset: &crate::DatasetName) -> String {
        format!("{}.{dataset}.batches", self.prefix)
    }

    /// The processors' consumer group, `{prefix}-processor`: every instance sharing a log and a
    /// store is a member; deployments with other prefixes on the same cluster are not.
    pub fn processor_group(&self) -> String {
        format!("{}-processor", self.prefix)
    }
}

impl Default for Topics {
    fn default() -> Self {
        Self::new(Self::DEFAULT_PREFIX)
    }
}
