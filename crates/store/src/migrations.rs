//! The schema migrations of both backends, embedded from `migrations/{sqlite,postgres}/*.sql`.
//!
//! A migration, once released, is never edited: a schema change is a new file with the next
//! version. Each backend records applied versions in its `tenantsync_migrations` table and runs
//! the missing ones, in order, in one transaction at open.

/// One schema migration.
#[derive(Debug)]
pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Both backends' lists, from one list of versions and names: every migration exists for both,
/// as `migrations/{sqlite,postgres}/NAME.sql`.
macro_rules! migrations {
    ($($version:literal => $name:literal),* $(,)?) => {
        pub(crate) const SQLITE: &[Migration] = &[$(Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("../migrations/sqlite/", $name, ".sql")),
        }),*];

        pub(crate) const POSTGRES: &[Migration] = &[$(Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("../migrations/postgres/", $name, ".sql")),
        }),*];
    };
}

migrations! {
    1 => "0001_initial",
    2 => "0002_feed_and_subscriptions",
    3 => "0003_tokens",
    4 => "0004_audit_secrets_erasures",
    5 => "0005_batches",
    6 => "0006_rejected_entries",
    7 => "0007_instances",
    8 => "0008_outcome_times",
    9 => "0009_sources",
    10 => "0010_push",
    11 => "0011_schemas",
}

/// The newest version a list knows, to refuse a database migrated by a newer build.
pub(crate) fn latest(migrations: &[Migration]) -> i64 {
    migrations.last().map_or(0, |m| m.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_dense_and_named_after_them() {
        for list in [SQLITE, POSTGRES] {
            for (i, m) in list.iter().enumerate() {
                assert_eq!(m.version, i as i64 + 1);
                assert!(m.name.starts_with(&format!("{:04}_", m.version)));
                assert!(!m.sql.trim().is_empty());
            }
        }
        assert_eq!(
            SQLITE.iter().map(|m| m.name).collect::<Vec<_>>(),
            POSTGRES.iter().map(|m| m.name).collect::<Vec<_>>(),
            "both backends share one schema history"
        );
    }
}
