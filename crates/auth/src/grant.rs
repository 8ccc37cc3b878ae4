//! What an authenticated caller may do, whichever way it authenticated: a stored API token
//! ([`Grant::from_token`]) or a JWT from an identity provider ([`crate::jwt`]).
//!
//! A grant only ever narrows: it holds the scopes the credential carried and nothing else, so an
//! empty grant allows nothing (default deny).

use tenantsync_core::{DatasetName, TenantId};

use crate::scope::{Access, InvalidScope, Scope, any_allows};

/// What an authenticated caller may do: who it is (for the audit log) and its scopes.
///
/// `subject` names the credential, never a secret: an API token's name, or `jwt:` and the JWT's
/// `sub` claim. Token names cannot contain `:`, so the two kinds never collide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub subject: String,
    pub scopes: Vec<Scope>,
}

impl Grant {
    /// A grant for a stored API token: the subject is the token's name, and its scopes are the
    /// stored scope strings that still parse.
    ///
    /// A stored string that no longer parses (written by an older version, or edited by hand) is
    /// skipped rather than failing the whole token, and returned so that the caller can log it;
    /// skipping only ever removes access.
    pub fn from_token(name: &str, scopes: &[String]) -> (Grant, Vec<InvalidScope>) {
        let mut parsed = Vec::with_capacity(scopes.len());
        let mut invalid = Vec::new();
        for text in scopes {
            match text.parse::<Scope>() {
                Ok(scope) => parsed.push(scope),
                Err(error) => invalid.push(error),
            }
        }
        let grant = Grant {
            subject: name.to_owned(),
            scopes: parsed,
        };
        (grant, invalid)
    }

    /// Whether any of the grant's scopes allows `access` to `tenant`'s records in `dataset`.
    pub fn allows(&self, access: Access, dataset: &DatasetName, tenant: &TenantId) -> bool {
        any_allows(&self.scopes, access, dataset, tenant)
    }

    /// Whether the grant holds `admin` (every route, dataset and tenant).
    pub fn is_admin(&self) -> bool {
        self.scopes.iter().any(Scope::is_admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(s: &str) -> DatasetName {
        DatasetName::new(s).unwrap()
    }

    fn t(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn from_token_names_the_subject_and_parses_every_scope() {
        let (grant, invalid) = Grant::from_token(
            "ingest-acme",
            &strings(&["write:inventory:acme", "read:*:acme"]),
        );
        assert!(invalid.is_empty());
        assert_eq!(grant.subject, "ingest-acme");
        assert_eq!(
            grant.scopes,
            vec![
                "write:inventory:acme".parse::<Scope>().unwrap(),
                "read:*:acme".parse::<Scope>().unwrap(),
            ]
        );
        assert!(grant.allows(Access::Write, &ds("inventory"), &t("acme")));
        assert!(grant.allows(Access::Read, &ds("users"), &t("acme")));
        assert!(!grant.allows(Access::Write, &ds("users"), &t("acme")));
        assert!(!grant.allows(Access::Read, &ds("users"), &t("acme2")));
        assert!(!grant.is_admin());
    }

    #[test]
    fn from_token_skips_and_reports_scopes_that_no_longer_parse() {
        let (grant, invalid) = Grant::from_token(
            "old",
            &strings(&["read:inventory:acme", "read:inventory", "delete:*:*", ""]),
        );
        assert_eq!(
            grant.scopes,
            vec!["read:inventory:acme".parse::<Scope>().unwrap()]
        );
        let refused: Vec<&str> = invalid.iter().map(|e| e.scope.as_str()).collect();
        assert_eq!(refused, ["read:inventory", "delete:*:*", ""]);
        assert!(grant.allows(Access::Read, &ds("inventory"), &t("acme")));
        assert!(!grant.allows(Access::Write, &ds("inventory"), &t("acme")));
    }

    #[test]
    fn a_token_without_scopes_allows_nothing() {
        let (grant, invalid) = Grant::from_token("empty", &[]);
        assert!(invalid.is_empty());
        assert!(grant.scopes.is_empty());
        assert!(!grant.allows(Access::Read, &ds("inventory"), &t("acme")));
        assert!(!grant.allows(Access::Write, &ds("inventory"), &t("acme")));
        assert!(!grant.is_admin());
    }

    #[test]
    fn admin_allows_everything() {
        let (grant, invalid) = Grant::from_token("root", &strings(&["admin"]));
        assert!(invalid.is_empty());
        assert!(grant.is_admin());
        assert!(grant.allows(Access::Read, &ds("any"), &t("one")));
        assert!(grant.allows(Access::Write, &ds("other"), &t("two")));
    }
}
