//! Retention deletes exactly what is due: batches past their dataset's
//! retention, and everything under an agreement that has ended — records,
//! events, and the linkage encodings, blocking keys and spine places of the
//! records it deleted; it keeps a tombstone so a resent batch is not stored
//! again. On SQLite and PostgreSQL.

mod common;

use common::*;
use sqlx::Row;

#[tokio::test(flavor = "multi_thread")]
async fn retention_on_sqlite() {
    retention(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_on_postgres() {
    let Some(url) = fresh_postgres("retention").await else {
        return;
    };
    retention(Some(url)).await;
}

async fn count(db: &sqlx::AnyPool, sql: &'static str, organisation: &str) -> i64 {
    sqlx::query(sql)
        .bind(organisation)
        .fetch_one(db)
        .await
        .unwrap()
        .get("n")
}

const RECORDS: &str = "SELECT COUNT(*) AS n FROM records WHERE organisation = $1";
const EVENTS: &str = "SELECT COUNT(*) AS n FROM events WHERE organisation = $1";
const ENCODINGS: &str = "SELECT COUNT(*) AS n FROM linkage_entities WHERE organisation = $1";

/// Spine places of person ids no record is held under.
async fn unheld_spine_places(db: &sqlx::AnyPool) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM person_spine s \
         WHERE NOT EXISTS (SELECT 1 FROM records r WHERE r.person_id = s.person_id)",
    )
    .fetch_one(db)
    .await
    .unwrap()
}

async fn retention(postgres: Option<String>) {
    let d = Deployment::new();
    let synth = d.synth(200, 3);
    let gateway = d.start_gateway(postgres.as_deref(), &[]);
    let config = |org: &str, dataset: &str| {
        d.agent_config(
            org,
            &gateway.address,
            &synth.join(format!("extracts/{dataset}.csv")),
            &synth.join(format!("mappings/{dataset}.yaml")),
        )
    };
    let camhs = config(CAMHS, "camhs_referrals");
    finish(d.spawn_agent(&camhs));
    finish(d.spawn_agent(&config(SALT, "salt_contacts")));
    let url = postgres.clone().unwrap_or_else(|| d.sqlite_url());
    let db = open_database(&url).await;
    let (camhs_records, salt_records) = (
        count(&db, RECORDS, CAMHS).await,
        count(&db, RECORDS, SALT).await,
    );
    assert!(camhs_records > 0 && salt_records > 0);
    assert!(count(&db, EVENTS, CAMHS).await > 0);
    let salt_encodings = count(&db, ENCODINGS, SALT).await;
    assert!(count(&db, ENCODINGS, CAMHS).await > 0 && salt_encodings > 0);

    // CAMHS's batches arrived 1096 days ago: one day past the 1095-day retention.
    sqlx::query(
        "UPDATE batches SET received_at = received_at - 1096 * 86400 WHERE organisation = $1",
    )
    .bind(CAMHS)
    .execute(&db)
    .await
    .unwrap();
    let run = |extra: &[&str]| {
        let mut command = vec!["gateway", "retention"];
        command.extend(extra);
        d.on_store(&command, postgres.as_deref())
    };

    let preview = run(&["--dry-run"]);
    assert!(
        preview.contains(&format!("would delete {camhs_records} records")),
        "{preview}"
    );
    assert!(
        preview.contains(&format!("of camhs_referrals from {CAMHS}")),
        "{preview}"
    );
    assert!(!preview.contains(SALT), "{preview}");
    assert_eq!(
        count(&db, RECORDS, CAMHS).await,
        camhs_records,
        "a dry run deletes nothing"
    );

    let done = run(&[]);
    assert!(
        done.contains(&format!("deleted {camhs_records} records in total")),
        "{done}"
    );
    assert_eq!(count(&db, RECORDS, CAMHS).await, 0);
    assert_eq!(count(&db, EVENTS, CAMHS).await, 0);
    assert_eq!(
        count(&db, ENCODINGS, CAMHS).await,
        0,
        "the deleted records' linkage encodings and keys go with them"
    );
    assert_eq!(unheld_spine_places(&db).await, 0);
    assert_eq!(
        (
            count(&db, RECORDS, SALT).await,
            count(&db, ENCODINGS, SALT).await
        ),
        (salt_records, salt_encodings),
        "data within retention is kept"
    );
    assert!(
        run(&[]).contains("deleted 0 records in total"),
        "a second pass finds nothing"
    );

    // The agent resends (its spool lost): its batches are recognised and not stored again.
    std::fs::remove_dir_all(d.path(&format!("spool/{CAMHS}"))).unwrap();
    let (_, stdout, _) = finish(d.spawn_agent(&camhs));
    assert!(stdout.contains(" 0 stored,"), "{stdout}");
    assert_eq!(count(&db, RECORDS, CAMHS).await, 0);

    // The agreement ends (its signed copy in the store's agreements is
    // replaced by one that has expired): everything sent under it goes.
    let today = time::OffsetDateTime::now_utc().date();
    write_signed_agreement(&d.agreements_dir(), |t| {
        with_dates(
            t,
            today - time::Duration::days(30),
            today - time::Duration::days(20),
            today - time::Duration::days(1),
        )
    });
    let done = run(&[]);
    assert!(
        done.contains(&format!("deleted {salt_records} records in total")),
        "{done}"
    );
    assert_eq!(count(&db, RECORDS, SALT).await, 0);
    assert_eq!(count(&db, ENCODINGS, SALT).await, 0);
    assert_eq!(unheld_spine_places(&db).await, 0);
    drop(gateway);
}
