//! The `sql` source: a council's case-management table read straight from
//! the database, incrementally. On SQLite through a real agent process and
//! gateway (a second run sends only the rows added or changed since the
//! first), and on PostgreSQL through the reader itself (rows in watermark
//! order, a resumed read continuing exactly after the last row, type errors
//! named by column).

mod common;

use std::path::Path;

use common::*;
use joinery_agent::config::SqlTable;
use joinery_agent::row::RowOutcome;
use joinery_agent::source::Source;
use joinery_agent::source::sql::SqlSource;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

const MAPPING: &str = "\
dataset: csc_referrals
fields:
  local_id: child_id
  nhs_number: nhs_number
  given_name: forename
  family_name: surname
  date_of_birth: { column: dob, format: iso }
  sex: gender
  postcode: postcode
attributes:
  ethnicity: ethnicity
events:
  - type: csc_referral
    date: { column: referred, format: iso }
    attributes:
      source: source
";

const CREATE: &str = "CREATE TABLE referrals (id INTEGER PRIMARY KEY, child_id TEXT NOT NULL, nhs_number TEXT, \
     forename TEXT, surname TEXT, dob TEXT, gender TEXT, postcode TEXT, ethnicity TEXT, referred TEXT, source TEXT, \
     updated_at TEXT NOT NULL)";

async fn pool(url: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap()
}

/// Inserts referral `id` (of child `id % 7`), last changed at `updated`.
async fn insert(db: &AnyPool, id: i64, updated: &str) {
    sqlx::query(
        "INSERT INTO referrals (id, child_id, nhs_number, forename, surname, dob, gender, postcode, ethnicity, referred, source, updated_at) \
         VALUES ($1, $2, NULL, 'Ada', 'Lovelace', '2014-03-02', '2', 'LS6 2AB', 'WBRI', '2024-01-05', '3A', $3)",
    )
    .bind(id)
    .bind(format!("LA{:04}", id % 7))
    .bind(updated.to_owned())
    .execute(db)
    .await
    .unwrap();
}

fn table(url: &str, mapping: &Path) -> SqlTable {
    SqlTable {
        url: url.to_owned(),
        table: Some("referrals".to_owned()),
        query: None,
        mapping: mapping.to_owned(),
        watermark: "updated_at".to_owned(),
        key: "id".to_owned(),
    }
}

/// Reads every row, on a blocking thread as the agent does.
async fn read_all(mut source: SqlSource) -> (Vec<(u64, String)>, SqlSource) {
    tokio::task::spawn_blocking(move || {
        let mut rows = Vec::new();
        while let Some(row) = source.next_row() {
            let row = row.unwrap();
            match row.outcome {
                RowOutcome::Valid { row: person, .. } => rows.push((row.line, person.local_id)),
                RowOutcome::Quarantined(p) => rows.push((row.line, format!("quarantined: {p}"))),
            }
        }
        (rows, source)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_agent_run_sends_only_new_and_changed_rows() {
    let d = Deployment::new();
    let database = d.path("cases.db");
    let url = format!("sqlite://{}?mode=rwc", database.display());
    let db = pool(&url).await;
    sqlx::query(CREATE).execute(&db).await.unwrap();
    for id in 1..=40 {
        insert(&db, id, &format!("2025-01-01T10:{:02}:00", id % 3)).await;
    }
    let mapping = d.path("referrals.yaml");
    std::fs::write(&mapping, MAPPING).unwrap();

    let gateway = d.start_gateway(None, &[]);
    let config = d.agent_config(COUNCIL, &gateway.address, Path::new(""), Path::new(""));
    let text = std::fs::read_to_string(&config).unwrap();
    let head = text.split("sources:").next().unwrap();
    let source = serde_saphyr::to_string(&vec![joinery_agent::config::SourceConfig::Sql(table(
        &url, &mapping,
    ))])
    .unwrap();
    std::fs::write(&config, format!("{head}sources:\n{source}")).unwrap();

    let (code, out, err) = finish(d.spawn_agent(&config));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("40 sent"), "{out}");
    assert!(
        !out.contains("sqlite://") && !err.contains("sqlite://"),
        "the URL is not printed"
    );

    // Nothing new: nothing sent.
    let (code, out, err) = finish(d.spawn_agent(&config));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("0 sent"), "{out}");

    // Three new referrals and one changed: exactly those four.
    for id in 41..=43 {
        insert(&db, id, "2025-02-01T09:00:00").await;
    }
    sqlx::query(
        "UPDATE referrals SET source = '6', updated_at = '2025-02-02T00:00:00' WHERE id = 5",
    )
    .execute(&db)
    .await
    .unwrap();
    let (code, out, err) = finish(d.spawn_agent(&config));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("4 sent"), "{out}");
    gateway.stop();

    let store = open_database(&d.sqlite_url()).await;
    let stored: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM records WHERE dataset = 'csc_referrals'")
            .fetch_one(&store)
            .await
            .unwrap();
    assert_eq!(stored, 44, "40, then 3 new and 1 changed");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_rows_come_in_watermark_order_and_a_resumed_read_continues_after_the_last() {
    let Some(url) = fresh_postgres("sql_source").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("referrals.yaml");
    std::fs::write(&mapping, MAPPING).unwrap();
    let db = pool(&url).await;
    sqlx::query(sqlx::AssertSqlSafe(
        CREATE.replace("INTEGER PRIMARY KEY", "BIGINT PRIMARY KEY"),
    ))
    .execute(&db)
    .await
    .unwrap();
    // Inserted out of order; several rows share a watermark.
    for id in [9, 3, 7, 1, 5, 2, 8, 4, 6, 10] {
        insert(&db, id, &format!("2025-01-0{}", 1 + id % 3)).await;
    }
    let today = time::OffsetDateTime::now_utc().date();
    let source = SqlSource::open(&table(&url, &mapping), today).unwrap();
    let (rows, _) = read_all(source).await;
    let order: Vec<String> = rows.iter().map(|(_, id)| id.clone()).collect();
    // Watermark day 1 (ids 3, 6, 9), day 2 (1, 4, 7, 10), day 3 (2, 5, 8).
    let expected: Vec<String> = [3, 6, 9, 1, 4, 7, 10, 2, 5, 8]
        .iter()
        .map(|id| format!("LA{:04}", id % 7))
        .collect();
    assert_eq!(order, expected);

    // Stop after four rows; a new reader resumed there reads the other six.
    let mut first = SqlSource::open(&table(&url, &mapping), today).unwrap();
    let at = tokio::task::spawn_blocking(move || {
        for _ in 0..4 {
            first.next_row().unwrap().unwrap();
        }
        first.position()
    })
    .await
    .unwrap();
    let mut resumed = SqlSource::open(&table(&url, &mapping), today).unwrap();
    resumed.resume(at).unwrap();
    let (rest, _) = read_all(resumed).await;
    assert_eq!(
        rest.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>(),
        expected[4..]
    );

    // A date column must be cast to text: the error names the column.
    sqlx::query("ALTER TABLE referrals ALTER COLUMN dob TYPE date USING dob::date")
        .execute(&db)
        .await
        .unwrap();
    let Err(err) = SqlSource::open(&table(&url, &mapping), today) else {
        panic!("a date column is refused")
    };
    let err = err.to_string();
    assert!(
        err.contains("\"dob\"") && err.contains("cast it to text"),
        "{err}"
    );
    assert!(!err.contains("2014"), "{err}");
}
