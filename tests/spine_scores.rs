//! The person spine's scores on PostgreSQL: a run that writes scores after
//! rows without one (new people join the spine with no score; fuzzy links
//! carry one) must not wedge on parameter types (sqlx's `Any` driver binds
//! an absent value without a type).

mod common;

use common::*;
use joinery_gateway::rekey::LinkMethod;
use joinery_gateway::storage::{
    FittedModel, LinkChanges, LinkageEntities, SpineAssignment, Storage, StorageError,
};
use joinery_linkage::LinkageParams;

async fn scores_round_trip(url: &str) {
    let storage = Storage::open(url).await.unwrap();
    let assignment = |i: usize, score: Option<f64>| SpineAssignment {
        person_id: format!("person-{i}"),
        spine_id: format!("person-{}", i - i % 2),
        method: if score.is_some() {
            LinkMethod::Fuzzy
        } else {
            LinkMethod::Unlinked
        },
        score,
    };
    let fitted = FittedModel {
        model: "{}".into(),
        quality: "[]".into(),
        entities: 150,
    };
    // First statements with no score at all, then mixed, then all scored;
    // the same statement shapes again, as later linkage runs write them.
    let mut runs = 0;
    // Links are not what this test is about: none are stored.
    let no_entities = LinkageEntities::new(&LinkageParams::canonical_version(5));
    let no_links = LinkChanges::between(&no_entities, 5, None, &[]);
    for round in 0..3 {
        let batches: [Vec<SpineAssignment>; 3] = [
            (0..50).map(|i| assignment(i, None)).collect(),
            (50..100)
                .map(|i| assignment(i, (i % 3 == 0).then_some(0.5 + i as f64 / 1000.0)))
                .collect(),
            (100..150)
                .map(|i| assignment(i, Some(12.25 + round as f64)))
                .collect(),
        ];
        for batch in &batches {
            // The first of a round as a full run (its model saved), the
            // rest as incremental runs building on the run before.
            let (fitted, expected) = match runs % 3 {
                0 => (Some(&fitted), None),
                _ => (None, Some(runs)),
            };
            let saved = storage
                .save_linkage(5, fitted, expected, batch, &[], &no_links)
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(saved, runs + 1, "each saved run moves the count on");
            runs = saved;
        }
    }
    // A run that built on an older count is refused, and writes nothing.
    let stale = storage
        .save_linkage(
            5,
            None,
            Some(runs - 1),
            &[assignment(0, Some(99.0))],
            &[],
            &no_links,
        )
        .await;
    assert!(
        matches!(stale, Err(StorageError::LinkageMovedOn)),
        "{stale:?}"
    );
    // What was written reads back: scores exactly, absent ones absent.
    let db = open_database(url).await;
    for (person, expected) in [
        ("person-51", Some(0.551)),
        ("person-52", None),
        ("person-120", Some(14.25)),
    ] {
        let score: Option<f64> =
            sqlx::query_scalar("SELECT score FROM person_spine WHERE person_id = $1")
                .bind(person)
                .fetch_one(&db)
                .await
                .unwrap();
        assert_eq!(score, expected, "{person}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn spine_scores_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    scores_round_trip(&Storage::sqlite_url(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn spine_scores_on_postgres() {
    let Some(url) = fresh_postgres("spine_scores").await else {
        return;
    };
    scores_round_trip(&url).await;
}
