/// Names of a dataset's topics: `{prefix}.{dataset}.changes`, `.state` and `.batches`.
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

    pub fn changes(&self, dataset: &crate::DatasetName) -> String {
        format!("{}.{dataset}.changes", self.prefix)
    }

    pub fn state(&self, dataset: &crate::DatasetName) -> String {
        format!("{}.{dataset}.state", self.prefix)
    }

    pub fn batches(&self, dataset: &crate::DatasetName) -> String {
        format!("{}.{dataset}.batches", self.prefix)
    }
}

impl Default for Topics {
    fn default() -> Self {
        Self::new(Self::DEFAULT_PREFIX)
    }
}
