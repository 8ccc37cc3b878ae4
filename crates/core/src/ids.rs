//! Validated identifiers. Ids are compared byte for byte: nothing is ever case-folded, trimmed or
//! otherwise normalised, because two tenants whose ids differ only in case are two tenants.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::InvalidInput;

/// `[a-z0-9][a-z0-9_-]{0,62}`: the shape of tenant ids and dataset names.
fn check_slug(field: &'static str, s: &str) -> Result<(), InvalidInput> {
    let bytes = s.as_bytes();
    let ok_first = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let ok_rest = |b: u8| ok_first(b) || b == b'_' || b == b'-';
    if bytes.is_empty() || bytes.len() > 63 {
        return Err(InvalidInput::new(
            field,
            format!("must be 1 to 63 characters long, got {}", bytes.len()),
        ));
    }
    if !ok_first(bytes[0]) || !bytes[1..].iter().all(|&b| ok_rest(b)) {
        return Err(InvalidInput::new(
            field,
            format!(
                "{s:?} must match [a-z0-9][a-z0-9_-]{{0,62}} (lowercase ASCII letters, digits, '_' and '-', starting with a letter or digit)"
            ),
        ));
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $field:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Result<Self, InvalidInput> {
                let s = s.into();
                ($check)($field, s.as_str())?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidInput;
            fn from_str(s: &str) -> Result<Self, InvalidInput> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A tenant id: `[a-z0-9][a-z0-9_-]{0,62}`, compared exactly.
    TenantId,
    "tenant",
    check_slug
);

string_id!(
    /// A dataset name (`inventory`, `users`): `[a-z0-9][a-z0-9_-]{0,62}`. It becomes part of
    /// topic names, so it is kept to characters every Kafka cluster accepts.
    DatasetName,
    "dataset",
    check_slug
);

string_id!(
    /// The name of a subscription: `[a-z0-9][a-z0-9_-]{0,62}`.
    SubscriptionName,
    "subscription",
    check_slug
);

string_id!(
    /// The name of an API token: `[a-z0-9][a-z0-9_-]{0,62}`.
    TokenName,
    "name",
    check_slug
);

string_id!(
    /// An entity id within a tenant: 1 to 512 bytes of UTF-8 without control characters.
    EntityId,
    "id",
    |field, s: &str| {
        if s.is_empty() || s.len() > 512 {
            return Err(InvalidInput::new(
                field,
                format!("must be 1 to 512 bytes of UTF-8, got {} bytes", s.len()),
            ));
        }
        if let Some(c) = s.chars().find(|c| c.is_control()) {
            return Err(InvalidInput::new(
                field,
                format!("must not contain control characters, found U+{:04X}", c as u32),
            ));
        }
        Ok(())
    }
);

/// The log key of a record: `{tenant}:{id}`. Tenant ids never contain `:`, so the key splits
/// unambiguously at its first `:` even when the entity id contains more.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordKey {
    pub tenant: TenantId,
    pub id: EntityId,
}

impl RecordKey {
    pub fn new(tenant: TenantId, id: EntityId) -> Self {
        Self { tenant, id }
    }

    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        let (tenant, id) = s.split_once(':').ok_or_else(|| {
            InvalidInput::new("key", format!("{s:?} is not of the form tenant:id"))
        })?;
        Ok(Self {
            tenant: TenantId::new(tenant)?,
            id: EntityId::new(id)?,
        })
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.tenant, self.id)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn tenant_ids_are_validated_not_normalised() {
        for ok in ["a", "acme", "acme-2", "a_b", "0", &"x".repeat(63)] {
            assert!(TenantId::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Acme",
            "-acme",
            "_a",
            "acme!",
            "acme ",
            " acme",
            "ac:me",
            "ａcme",
            &"x".repeat(64),
        ] {
            let err = TenantId::new(bad).unwrap_err();
            assert_eq!(err.field, "tenant", "{bad}");
        }
        assert_ne!(
            TenantId::new("acme").unwrap(),
            TenantId::new("acme2").unwrap()
        );
    }

    #[test]
    fn entity_ids_allow_utf8_but_not_control_characters() {
        assert!(EntityId::new("sku:42/ä€😀").is_ok());
        assert!(EntityId::new("x".repeat(512)).is_ok());
        assert!(EntityId::new("x".repeat(513)).is_err());
        assert!(EntityId::new("").is_err());
        assert!(EntityId::new("a\nb").is_err());
        assert!(EntityId::new("a\u{7f}b").is_err());
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<TenantId>("\"Acme\"").is_err());
        assert_eq!(
            serde_json::from_str::<TenantId>("\"acme\"")
                .unwrap()
                .as_str(),
            "acme"
        );
    }

    proptest! {
        #[test]
        fn record_keys_round_trip(tenant in "[a-z0-9][a-z0-9_-]{0,62}", id in "[^\\p{Cc}]{1,100}") {
            let key = RecordKey::new(TenantId::new(tenant).unwrap(), EntityId::new(id).unwrap());
            prop_assert_eq!(RecordKey::parse(&key.to_string()).unwrap(), key);
        }
    }
}
