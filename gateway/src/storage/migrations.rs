//! Schema migrations, embedded in the binary: one folder per backend
//! (`gateway/migrations/sqlite`, `gateway/migrations/postgres`), same versions.

use std::borrow::Cow;

use sqlx::SqlStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use super::Backend;

/// (version, description, SQLite script, PostgreSQL script)
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/sqlite/0001_initial.sql"),
        include_str!("../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "audit",
        include_str!("../../migrations/sqlite/0002_audit.sql"),
        include_str!("../../migrations/postgres/0002_audit.sql"),
    ),
    (
        3,
        "linkage",
        include_str!("../../migrations/sqlite/0003_linkage.sql"),
        include_str!("../../migrations/postgres/0003_linkage.sql"),
    ),
    (
        4,
        "local_ids",
        include_str!("../../migrations/sqlite/0004_local_ids.sql"),
        include_str!("../../migrations/postgres/0004_local_ids.sql"),
    ),
    (
        5,
        "query_cohorts",
        include_str!("../../migrations/sqlite/0005_query_cohorts.sql"),
        include_str!("../../migrations/postgres/0005_query_cohorts.sql"),
    ),
    (
        6,
        "data_generation",
        include_str!("../../migrations/sqlite/0006_data_generation.sql"),
        include_str!("../../migrations/postgres/0006_data_generation.sql"),
    ),
    (
        7,
        "releases",
        include_str!("../../migrations/sqlite/0007_releases.sql"),
        include_str!("../../migrations/postgres/0007_releases.sql"),
    ),
    (
        8,
        "linkage_status",
        include_str!("../../migrations/sqlite/0008_linkage_status.sql"),
        include_str!("../../migrations/postgres/0008_linkage_status.sql"),
    ),
    (
        9,
        "record_keys",
        include_str!("../../migrations/sqlite/0009_record_keys.sql"),
        include_str!("../../migrations/postgres/0009_record_keys.sql"),
    ),
    (
        10,
        "snapshots",
        include_str!("../../migrations/sqlite/0010_snapshots.sql"),
        include_str!("../../migrations/postgres/0010_snapshots.sql"),
    ),
    (
        11,
        "linkage_quality",
        include_str!("../../migrations/sqlite/0011_linkage_quality.sql"),
        include_str!("../../migrations/postgres/0011_linkage_quality.sql"),
    ),
    (
        12,
        "linkage_runs",
        include_str!("../../migrations/sqlite/0012_linkage_runs.sql"),
        include_str!("../../migrations/postgres/0012_linkage_runs.sql"),
    ),
    (
        13,
        "population_changes",
        include_str!("../../migrations/sqlite/0013_population_changes.sql"),
        include_str!("../../migrations/postgres/0013_population_changes.sql"),
    ),
    (
        14,
        "unused_indexes",
        include_str!("../../migrations/sqlite/0014_unused_indexes.sql"),
        include_str!("../../migrations/postgres/0014_unused_indexes.sql"),
    ),
    (
        15,
        "records_by_content",
        include_str!("../../migrations/sqlite/0015_records_by_content.sql"),
        include_str!("../../migrations/postgres/0015_records_by_content.sql"),
    ),
    (
        16,
        "block_keys_on_entities",
        include_str!("../../migrations/sqlite/0016_block_keys_on_entities.sql"),
        include_str!("../../migrations/postgres/0016_block_keys_on_entities.sql"),
    ),
    (
        17,
        "unheld_encodings",
        include_str!("../../migrations/sqlite/0017_unheld_encodings.sql"),
        include_str!("../../migrations/postgres/0017_unheld_encodings.sql"),
    ),
    (
        18,
        "bytewise_text",
        include_str!("../../migrations/sqlite/0018_bytewise_text.sql"),
        include_str!("../../migrations/postgres/0018_bytewise_text.sql"),
    ),
    (
        19,
        "stored_links",
        include_str!("../../migrations/sqlite/0019_stored_links.sql"),
        include_str!("../../migrations/postgres/0019_stored_links.sql"),
    ),
];

pub(super) fn for_backend(backend: Backend) -> Migrator {
    through(backend, i64::MAX)
}

/// The migrations up to and including version `last`: a schema as an
/// earlier release left it, for upgrade tests.
pub(super) fn through(backend: Backend, last: i64) -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .filter(|&&(version, ..)| version <= last)
        .map(|&(version, description, sqlite, postgres)| {
            let sql = match backend {
                Backend::Sqlite => sqlite,
                Backend::Postgres => postgres,
            };
            Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                SqlStr::from_static(sql),
                false,
            )
        })
        .collect::<Vec<_>>();
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}
