//! What webhooks and sinks share in their definitions: a target's name, the tenants it covers,
//! and the error that names the field at fault. Each kind's definition is in its own module
//! ([`crate::webhooks::definition`], [`crate::sinks::definition`]).

use serde::{Deserialize, Serialize};
use tenantsync_core::TenantId;
use tenantsync_store::TenantSelection;

/// A definition refused before any I/O: `field` names where in the JSON (`url`, `headers.x-key`,
/// `columns.price`). The reason never repeats a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct DefinitionError {
    pub field: String,
    pub reason: String,
}

impl DefinitionError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A target's name: 1 to 64 of `a-z`, `0-9`, `_` and `-`, starting with a letter or digit, so
/// that it is safe in a URL path, a service name and a metric label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TargetName(String);

impl TargetName {
    pub const MAX_LEN: usize = 64;

    pub fn new(name: impl Into<String>) -> Result<Self, DefinitionError> {
        let name = name.into();
        let valid = name.len() <= Self::MAX_LEN
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(name))
        } else {
            Err(DefinitionError::new(
                "name",
                format!(
                    "a name is 1 to {} characters of a-z, 0-9, '_' and '-', starting with a \
                     letter or digit",
                    Self::MAX_LEN
                ),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TargetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The tenants a target covers, as its JSON says it: a list, or `"*"` for all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Tenants {
    List(Vec<TenantId>),
    All(String),
}

impl Tenants {
    /// The selection, sorted and without duplicates; refuses an empty list and any string but
    /// `"*"`.
    pub fn selection(&self) -> Result<TenantSelection, DefinitionError> {
        match self {
            Tenants::All(s) if s == "*" => Ok(TenantSelection::All),
            Tenants::All(s) => Err(DefinitionError::new(
                "tenants",
                format!("{s:?} is neither a list of tenant ids nor \"*\" (all tenants)"),
            )),
            Tenants::List(list) => {
                let mut list = list.clone();
                list.sort_unstable();
                list.dedup();
                if list.is_empty() {
                    Err(DefinitionError::new(
                        "tenants",
                        "name at least one tenant, or \"*\"",
                    ))
                } else {
                    Ok(TenantSelection::Only(list))
                }
            }
        }
    }

    pub fn from_selection(selection: &TenantSelection) -> Self {
        match selection {
            TenantSelection::All => Tenants::All("*".into()),
            TenantSelection::Only(list) => Tenants::List(list.clone()),
        }
    }
}
