//! `joinery-bench region` at a small size on PostgreSQL, as an operator
//! would run it at ten million children: stopped after ingest and run again
//! with the same directory, it goes on from there (the steps done are not
//! redone), links a delivery incrementally, checks that the incremental
//! runs equal comparing every pair (it fails otherwise), answers as an
//! analyst, and refuses to go on with a directory made for another run.

mod common;

use common::*;
use sqlx::Row;

#[tokio::test(flavor = "multi_thread")]
async fn the_region_bench_stops_and_goes_on_and_checks_its_incremental_links() {
    let Some(url) = fresh_postgres("region").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("region");
    let work = work.to_str().unwrap();
    let args = |extra: &[&str]| -> Vec<String> {
        [
            "region",
            "--children",
            "4000",
            "--dir",
            work,
            "--database-url",
            &url,
            "--delivery",
            "600",
            "--answers",
            "3",
        ]
        .iter()
        .chain(extra)
        .map(|a| (*a).to_owned())
        .collect()
    };
    let run = |extra: &[&str]| {
        let output = joinery_bench().args(args(extra)).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        println!("{stdout}");
        (output.status.success(), stdout, stderr)
    };

    let (ok, first, stderr) = run(&["--until", "ingest"]);
    assert!(ok, "{first}\n{stderr}");
    assert!(first.contains("stopped after Ingest"), "{first}");
    assert!(
        first.contains("the database will need about"),
        "the space it needs is said before ingest: {first}"
    );
    assert!(!first.contains("FullLink"), "{first}");
    let db = open_database(&url).await;
    let stored: i64 = sqlx::query("SELECT COUNT(*) AS n FROM records")
        .fetch_one(&db)
        .await
        .unwrap()
        .get("n");
    assert!(stored > 5000, "{stored} records stored");
    // The figure printed is the records the database holds.
    assert!(
        first.contains(&format!("{stored} records stored over mutual TLS")),
        "{stored} stored:\n{first}"
    );

    let (ok, second, stderr) = run(&[]);
    assert!(ok, "{second}\n{stderr}");
    for step in ["Synth", "Ingest"] {
        assert!(
            second.contains(&format!("{step}: done earlier")),
            "{second}"
        );
    }
    for figure in [
        "full link in",
        "warm-up delivery of 1000 rows",
        "delivery of 600 rows",
        "nobody moved",
        "first answer",
        "bytes per child",
    ] {
        assert!(second.contains(figure), "{figure:?} in:\n{second}");
    }
    // The held-back rows were delivered and stored on top of the ingest.
    let after: i64 = sqlx::query("SELECT COUNT(*) AS n FROM records")
        .fetch_one(&db)
        .await
        .unwrap()
        .get("n");
    assert!(after > stored + 1400, "{stored} then {after}");
    let pending: i64 = sqlx::query("SELECT COUNT(*) AS n FROM linkage_entities WHERE linked = 0")
        .fetch_one(&db)
        .await
        .unwrap()
        .get("n");
    assert_eq!(pending, 0, "everything delivered was linked");

    // Everything is done: a third run redoes nothing.
    let (ok, third, _) = run(&[]);
    assert!(ok);
    assert_eq!(third.matches("done earlier").count(), 6, "{third}");

    // Another run's options are refused for this directory.
    let output = joinery_bench()
        .args(["region", "--children", "5000", "--dir", work])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("holds a run of 4000 children"), "{stderr}");
}
