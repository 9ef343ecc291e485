//! Exactly once by content: an extract delivered again under another file
//! name, cut into other batches, stores nothing twice; an extract that grew
//! stores only what is new. On SQLite and on PostgreSQL.

mod common;

use common::*;
use sqlx::Row;

async fn totals(db: &sqlx::AnyPool) -> (i64, i64) {
    let records = sqlx::query("SELECT COUNT(*) AS n FROM records")
        .fetch_one(db)
        .await
        .unwrap()
        .get::<i64, _>("n");
    let events = sqlx::query("SELECT COUNT(*) AS n FROM events")
        .fetch_one(db)
        .await
        .unwrap()
        .get::<i64, _>("n");
    (records, events)
}

/// Runs the council's agent on `extract` with `batch_size`, returning what it printed.
fn deliver(d: &Deployment, gateway: &str, extract: &std::path::Path, batch_size: u32) -> String {
    let mapping = d.path("synth/mappings/csc_referrals.yaml");
    let config = d.agent_config(COUNCIL, gateway, extract, &mapping);
    let yaml = std::fs::read_to_string(&config)
        .unwrap()
        .replace("batch_size: 200", &format!("batch_size: {batch_size}"));
    std::fs::write(&config, yaml).unwrap();
    let (code, stdout, stderr) = finish(d.spawn_agent(&config));
    assert!(code == 0 || code == 3, "{stdout}\n{stderr}");
    stdout
}

async fn stored_once(postgres: Option<String>) {
    let d = Deployment::new();
    let synth = d.synth(300, 31);
    let gateway = d.start_gateway(postgres.as_deref(), &[]);
    let db = open_database(postgres.as_deref().unwrap_or(&d.sqlite_url())).await;
    let original = synth.join("extracts/csc_referrals.csv");
    deliver(&d, &gateway.address, &original, 200);
    let first = totals(&db).await;
    assert!(first.0 > 100, "{first:?}");

    // The same extract under another name, in batches of another size.
    let renamed = d.path("referrals-resent-under-another-name.csv");
    std::fs::copy(&original, &renamed).unwrap();
    let out = deliver(&d, &gateway.address, &renamed, 77);
    assert_eq!(totals(&db).await, first, "nothing stored twice: {out}");
    assert!(out.contains(" 0 stored,"), "{out}");

    // The extract grown by two rows: those two, and only they, are stored.
    let text = std::fs::read_to_string(&original).unwrap();
    let last = text.lines().last().unwrap();
    let id = last.split(',').next().unwrap();
    let grown = d.path("referrals-next-month.csv");
    std::fs::write(
        &grown,
        format!(
            "{text}{}\n{}\n",
            last.replacen(id, &format!("{id}-new1"), 1),
            last.replacen(id, &format!("{id}-new2"), 1)
        ),
    )
    .unwrap();
    let out = deliver(&d, &gateway.address, &grown, 200);
    let (records, _) = totals(&db).await;
    assert_eq!(records, first.0 + 2, "only the new rows: {out}");
    assert!(gateway.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resent_extract_is_stored_once_on_sqlite() {
    stored_once(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resent_extract_is_stored_once_on_postgres() {
    let Some(url) = fresh_postgres("exactly_once").await else {
        return;
    };
    stored_once(Some(url)).await;
}

/// The case: the council's CIN census XML (the demo's) sent again
/// under another file name stores nothing twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_cin_census_resent_under_another_name_is_stored_once() {
    let (d, _) = Deployment::demo(400);
    let gateway = d.start_gateway(None, &[]);
    let db = open_database(&d.sqlite_url()).await;
    let cin = |db: &sqlx::AnyPool| {
        let db = db.clone();
        async move {
            sqlx::query("SELECT COUNT(*) AS n FROM records WHERE dataset = 'cin'")
                .fetch_one(&db)
                .await
                .unwrap()
                .get::<i64, _>("n")
        }
    };
    let before = (cin(&db).await, totals(&db).await);
    assert!(before.0 > 50, "the demo delivered its census: {before:?}");

    let demo_config = std::fs::read_to_string(d.path(&format!("agents/{COUNCIL}.yaml"))).unwrap();
    let year = demo_config
        .split("kind: cin_census")
        .nth(1)
        .and_then(|rest| rest.lines().find_map(|l| l.trim().strip_prefix("year: ")))
        .unwrap()
        .to_owned();
    let renamed = d.path("census-resubmitted.xml");
    std::fs::copy(
        d.path(&format!("synth/national/{COUNCIL}/cin_census.xml")),
        &renamed,
    )
    .unwrap();
    let header = demo_config.split("sources:").next().unwrap();
    let header: String = header
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("address:") {
                format!("  address: {}", gateway.address)
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let config = d.path("resend.yaml");
    std::fs::write(
        &config,
        format!(
            "{header}\nsources:\n- kind: cin_census\n  path: {}\n  dataset: cin\n  year: {year}\n",
            renamed.display()
        ),
    )
    .unwrap();
    let (code, out, err) = finish(d.spawn_agent(&config));
    assert!(code == 0 || code == 3, "{out}\n{err}");
    assert_eq!(
        (cin(&db).await, totals(&db).await),
        before,
        "nothing stored twice: {out}"
    );
    assert!(out.contains(" 0 stored,"), "{out}");
    assert!(gateway.stop().success());
}

/// A source declared a full snapshot replaces the agency's earlier
/// snapshots of the dataset once it is delivered whole: rows gone from the
/// extract are retired (audited), moved rows are not held twice.
async fn snapshots_replace(postgres: Option<String>) {
    let d = Deployment::new();
    let synth = d.synth(300, 37);
    let gateway = d.start_gateway(postgres.as_deref(), &[]);
    let db = open_database(postgres.as_deref().unwrap_or(&d.sqlite_url())).await;
    let mapping = d.path("synth/mappings/csc_referrals.yaml");
    let snapshot = |extract: &std::path::Path| {
        let config = d.agent_config(COUNCIL, &gateway.address, extract, &mapping);
        let yaml = std::fs::read_to_string(&config).unwrap();
        std::fs::write(
            &config,
            format!("{}\n    snapshot: true\n", yaml.trim_end()),
        )
        .unwrap();
        let (code, out, err) = finish(d.spawn_agent(&config));
        assert!(code == 0 || code == 3, "{out}\n{err}");
        let stored: u64 = out
            .split(" sent, ")
            .nth(1)
            .and_then(|rest| rest.split(" stored").next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{out}"));
        (out, stored)
    };
    let text = std::fs::read_to_string(synth.join("extracts/csc_referrals.csv")).unwrap();
    let (header, rows) = text.split_once('\n').unwrap();
    let rows: Vec<&str> = rows.lines().collect();
    let month = |name: &str, lines: &[&str]| {
        let path = d.path(name);
        std::fs::write(&path, format!("{header}\n{}\n", lines.join("\n"))).unwrap();
        path
    };
    // Month one: every row.
    let (out, first) = snapshot(&month("referrals-2026-10.csv", &rows));
    assert_eq!(totals(&db).await.0 as u64, first, "{out}");
    assert!(
        out.contains("replaced the earlier ones at the gateway (0 records retired)"),
        "{out}"
    );
    // Month two: ten rows gone from the top (the rest move up a line each).
    let (out, second) = snapshot(&month("referrals-2026-11.csv", &rows[10..]));
    assert!(second < first, "{out}");
    assert_eq!(
        totals(&db).await.0 as u64,
        second,
        "only month two is held: {out}"
    );
    assert!(out.contains(&format!("({first} records retired)")), "{out}");
    // The audit log says so.
    let retired: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM audit_log WHERE kind = 'snapshot_replaced'")
            .fetch_one(&db)
            .await
            .unwrap()
            .get("n");
    assert_eq!(retired, 2);
    // Month two again, under another name: still held once.
    let again = d.path("referrals-2026-11-resent.csv");
    std::fs::copy(d.path("referrals-2026-11.csv"), &again).unwrap();
    snapshot(&again);
    assert_eq!(totals(&db).await.0 as u64, second);
    assert!(gateway.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_replaces_the_last_on_sqlite() {
    snapshots_replace(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_replaces_the_last_on_postgres() {
    let Some(url) = fresh_postgres("snapshots").await else {
        return;
    };
    snapshots_replace(Some(url)).await;
}
