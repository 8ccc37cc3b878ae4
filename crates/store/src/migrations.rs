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

pub(crate) const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_initial",
        sql: include_str!("../migrations/sqlite/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "0002_feed_and_subscriptions",
        sql: include_str!("../migrations/sqlite/0002_feed_and_subscriptions.sql"),
    },
    Migration {
        version: 3,
        name: "0003_tokens",
        sql: include_str!("../migrations/sqlite/0003_tokens.sql"),
    },
];

pub(crate) const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_initial",
        sql: include_str!("../migrations/postgres/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "0002_feed_and_subscriptions",
        sql: include_str!("../migrations/postgres/0002_feed_and_subscriptions.sql"),
    },
    Migration {
        version: 3,
        name: "0003_tokens",
        sql: include_str!("../migrations/postgres/0003_tokens.sql"),
    },
];

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
