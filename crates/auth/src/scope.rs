//! Scopes: what a token may do, written `admin`, `write:{dataset|*}:{tenant|*}` or
//! `read:{dataset|*}:{tenant|*}`.
//!
//! `admin` implies every other scope. `write` does not imply `read`: a producer that may write a
//! tenant's records is not thereby allowed to read them. Dataset names and tenant ids compare
//! exactly, as everywhere in tenantsync: `read:*:acme` does not cover `acme2` or `ACME`.

use std::fmt;
use std::str::FromStr;

use tenantsync_core::{DatasetName, TenantId};

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    Write,
}

/// One dataset, or all (`*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Datasets {
    All,
    One(DatasetName),
}

/// One tenant, or all (`*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Tenants {
    All,
    One(TenantId),
}

/// One scope of a token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every route, every dataset, every tenant, and the admin routes.
    Admin,
    /// Records of the named datasets and tenants.
    Records {
        access: Access,
        datasets: Datasets,
        tenants: Tenants,
    },
}

/// Why a scope string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid scope {scope:?}: {reason}; write admin, read:DATASET:TENANT or write:DATASET:TENANT, with * for all datasets or all tenants"
)]
pub struct InvalidScope {
    pub scope: String,
    pub reason: String,
}

impl Scope {
    /// The tenants this scope covers for `access` in `dataset`: `None` for none at all.
    fn tenants_for(&self, access: Access, dataset: &DatasetName) -> Option<&Tenants> {
        match self {
            Scope::Admin => Some(&Tenants::All),
            Scope::Records {
                access: a,
                datasets,
                tenants,
            } => (*a == access && datasets.covers(dataset)).then_some(tenants),
        }
    }

    /// Whether this scope allows `access` to `tenant`'s records in `dataset`.
    pub fn allows(&self, access: Access, dataset: &DatasetName, tenant: &TenantId) -> bool {
        self.tenants_for(access, dataset).is_some_and(|t| match t {
            Tenants::All => true,
            Tenants::One(one) => one == tenant,
        })
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Scope::Admin)
    }

    /// Whether this scope allows `access` to every tenant of `dataset`, including tenants that
    /// do not exist yet (what a subscription over all tenants needs).
    pub fn allows_every_tenant(&self, access: Access, dataset: &DatasetName) -> bool {
        self.tenants_for(access, dataset) == Some(&Tenants::All)
    }

    /// Whether this scope allows anything at all in `dataset`.
    pub fn mentions_dataset(&self, dataset: &DatasetName) -> bool {
        match self {
            Scope::Admin => true,
            Scope::Records { datasets, .. } => datasets.covers(dataset),
        }
    }
}

impl Datasets {
    fn covers(&self, dataset: &DatasetName) -> bool {
        match self {
            Datasets::All => true,
            Datasets::One(d) => d == dataset,
        }
    }
}

impl FromStr for Scope {
    type Err = InvalidScope;

    fn from_str(s: &str) -> Result<Self, InvalidScope> {
        let invalid = |reason: String| InvalidScope {
            scope: s.to_owned(),
            reason,
        };
        if s == "admin" {
            return Ok(Scope::Admin);
        }
        let mut parts = s.split(':');
        let (Some(access), Some(dataset), Some(tenant), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid(
                "it does not have three parts separated by ':'".into(),
            ));
        };
        let access = match access {
            "read" => Access::Read,
            "write" => Access::Write,
            other => return Err(invalid(format!("{other:?} is neither read nor write"))),
        };
        let datasets = match dataset {
            "*" => Datasets::All,
            name => Datasets::One(DatasetName::new(name).map_err(|e| invalid(e.to_string()))?),
        };
        let tenants = match tenant {
            "*" => Tenants::All,
            id => Tenants::One(TenantId::new(id).map_err(|e| invalid(e.to_string()))?),
        };
        Ok(Scope::Records {
            access,
            datasets,
            tenants,
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Admin => f.write_str("admin"),
            Scope::Records {
                access,
                datasets,
                tenants,
            } => {
                let access = match access {
                    Access::Read => "read",
                    Access::Write => "write",
                };
                let datasets = match datasets {
                    Datasets::All => "*",
                    Datasets::One(d) => d.as_str(),
                };
                let tenants = match tenants {
                    Tenants::All => "*",
                    Tenants::One(t) => t.as_str(),
                };
                write!(f, "{access}:{datasets}:{tenants}")
            }
        }
    }
}

/// Whether any of `scopes` allows `access` to `tenant`'s records in `dataset`.
pub fn any_allows(
    scopes: &[Scope],
    access: Access,
    dataset: &DatasetName,
    tenant: &TenantId,
) -> bool {
    scopes.iter().any(|s| s.allows(access, dataset, tenant))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ds(s: &str) -> DatasetName {
        DatasetName::new(s).unwrap()
    }

    fn t(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    #[test]
    fn scopes_parse_and_print_back() {
        for s in [
            "admin",
            "read:*:*",
            "write:*:*",
            "read:inventory:*",
            "write:*:acme",
            "read:inventory:acme",
        ] {
            let scope: Scope = s.parse().unwrap();
            assert_eq!(scope.to_string(), s);
        }
    }

    #[test]
    fn bad_scopes_are_refused_with_the_reason() {
        for (s, reason) in [
            ("", "three parts"),
            ("admin:x", "three parts"),
            ("read", "three parts"),
            ("read:inventory", "three parts"),
            ("read:inventory:acme:extra", "three parts"),
            ("delete:inventory:acme", "neither read nor write"),
            ("Read:inventory:acme", "neither read nor write"),
            ("read:Inventory:acme", "dataset"),
            ("read:inventory:ACME", "tenant"),
            ("read:inventory:", "tenant"),
            ("read:**:acme", "dataset"),
        ] {
            let err = s.parse::<Scope>().unwrap_err();
            assert!(
                err.to_string().contains(reason),
                "{s:?}: {err} should mention {reason:?}"
            );
        }
    }

    #[test]
    fn tenants_and_datasets_compare_exactly_and_write_does_not_imply_read() {
        let scope: Scope = "read:inventory:acme".parse().unwrap();
        assert!(scope.allows(Access::Read, &ds("inventory"), &t("acme")));
        assert!(!scope.allows(Access::Read, &ds("inventory"), &t("acme2")));
        assert!(!scope.allows(Access::Read, &ds("inventory"), &t("acm")));
        assert!(!scope.allows(Access::Read, &ds("inventory2"), &t("acme")));
        assert!(!scope.allows(Access::Write, &ds("inventory"), &t("acme")));
        let write: Scope = "write:*:*".parse().unwrap();
        assert!(write.allows(Access::Write, &ds("any"), &t("one")));
        assert!(!write.allows(Access::Read, &ds("any"), &t("one")));
        assert!(Scope::Admin.allows(Access::Read, &ds("any"), &t("one")));
        assert!(Scope::Admin.allows(Access::Write, &ds("any"), &t("one")));
    }

    fn name() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "acme", "acme2", "a-b", "a_b"]).prop_map(String::from)
    }

    fn part() -> impl Strategy<Value = String> {
        prop_oneof![Just("*".to_owned()), name()]
    }

    proptest! {
        /// `allows` agrees with the rule written out on the scope's text.
        #[test]
        fn allows_matches_the_text_of_the_scope(
            write in any::<bool>(),
            admin in any::<bool>(),
            scope_ds in part(),
            scope_t in part(),
            want_write in any::<bool>(),
            req_ds in name(),
            req_t in name(),
        ) {
            let text = if admin {
                "admin".to_owned()
            } else {
                format!("{}:{scope_ds}:{scope_t}", if write { "write" } else { "read" })
            };
            let scope: Scope = text.parse().unwrap();
            let access = if want_write { Access::Write } else { Access::Read };
            let expected = admin
                || (write == want_write
                    && (scope_ds == "*" || scope_ds == req_ds)
                    && (scope_t == "*" || scope_t == req_t));
            prop_assert_eq!(scope.allows(access, &ds(&req_ds), &t(&req_t)), expected);
        }
    }
}
