//! The population held for analytics, brought up to date by reading only
//! the people changed since it was loaded, is exactly the population read
//! afresh — after deliveries, linkage runs that join and split people, a
//! snapshot replacing an earlier one and a retention purge — and reads no
//! more people than changed. On SQLite and PostgreSQL.

mod common;

use common::*;
use joinery_gateway::analytics::{Interner, Person, Population};
use joinery_gateway::rekey::LinkMethod;
use joinery_gateway::storage::{
    FittedModel, LinkChanges, LinkageEntities, NewBatch, NewEvent, NewRecord, SpineAssignment,
    Storage,
};
use joinery_linkage::LinkageParams;

fn record(batch: &str, person: &str, n: usize, sex: &str) -> NewRecord {
    NewRecord {
        person_id: person.to_owned(),
        record_key: format!("{batch}-{person}"),
        source_row: n as u64,
        local_pseudonym: format!("local-{person}"),
        nhs_pseudonym: None,
        link_method: LinkMethod::Unlinked,
        sex: Some(sex.to_owned()),
        birth_month: Some(format!("201{}-0{}", n % 10, 1 + n % 9)),
        postcode_district: None,
        attributes: format!(r#"{{"ethnicity":"E{}"}}"#, n % 4),
        events: (0..n % 3 + 1)
            .map(|e| NewEvent {
                event_type: ["referral", "assessment", "cp_plan_start"][e].to_owned(),
                event_date: format!("2025-0{}-1{}", 1 + e, n % 10),
                attributes: format!(r#"{{"source":"{}"}}"#, e),
            })
            .collect(),
        linkage: None,
    }
}

fn batch(
    organisation: &str,
    dataset: &str,
    id: &str,
    snapshot: Option<&str>,
    people: &[String],
) -> NewBatch {
    NewBatch {
        organisation: organisation.to_owned(),
        batch_id: id.to_owned(),
        dataset: dataset.to_owned(),
        snapshot: snapshot.map(str::to_owned),
        sequence: 1,
        agreement: joinery_policies::AgreementRef::new("a", 1),
        records: people
            .iter()
            .enumerate()
            .map(|(n, p)| {
                record(
                    id,
                    p,
                    n + id.len(),
                    if n % 5 == 0 { "unknown" } else { "female" },
                )
            })
            .collect(),
    }
}

fn ids(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

fn joined(person: &str, spine: &str) -> SpineAssignment {
    SpineAssignment {
        person_id: person.to_owned(),
        spine_id: spine.to_owned(),
        method: if person == spine {
            LinkMethod::Unlinked
        } else {
            LinkMethod::Fuzzy
        },
        score: (person != spine).then_some(9.5),
    }
}

/// Brings `held` up to date from its changes, checks it against a fresh
/// read, and returns it with how many people were read again.
async fn catch_up(
    storage: &Storage,
    held: (i64, Population),
    interner: &mut Interner,
) -> ((i64, Population), usize) {
    let changes = storage
        .population_changes(
            held.0,
            usize::MAX,
            interner,
            joinery_gateway::analytics::Shard::WHOLE,
            None,
        )
        .await
        .unwrap()
        .expect("the change log reaches back");
    let read_again = changes.keys.len();
    let updated = held.1.updated(&changes.keys, changes.people);
    let fresh = storage
        .population(
            &mut Interner::default(),
            joinery_gateway::analytics::Shard::WHOLE,
            None,
        )
        .await
        .unwrap();
    assert_eq!(changes.generation, fresh.generation);
    let fresh = Population::new(fresh.people);
    assert_eq!(
        updated.by_key(),
        fresh.by_key(),
        "brought up to date = read afresh"
    );
    ((changes.generation, updated), read_again)
}

async fn changes_equal_a_fresh_read(url: &str) {
    let storage = Storage::open(url).await.unwrap();
    storage
        .commit_batch(batch("LA1", "cin", "b1", None, &ids("p", 0..40)))
        .await
        .unwrap();
    storage
        .commit_batch(batch("RX9", "camhs", "b2", None, &ids("q", 0..40)))
        .await
        .unwrap();
    let mut interner = Interner::default();
    let first = storage
        .population(
            &mut interner,
            joinery_gateway::analytics::Shard::WHOLE,
            None,
        )
        .await
        .unwrap();
    assert_eq!(first.people.len(), 80);
    let mut held = (first.generation, Population::new(first.people));

    // A delivery: five known people's new records, five new people.
    let mut people = ids("p", 0..5);
    people.extend(ids("p", 40..45));
    storage
        .commit_batch(batch("LA1", "cin", "b3", None, &people))
        .await
        .unwrap();
    let mut read;
    (held, read) = catch_up(&storage, held, &mut interner).await;
    assert_eq!(
        read, 10,
        "only the people the delivery was about are read again"
    );
    assert_eq!(held.1.people().len(), 85);

    // Linkage joins two of RX9's children to LA1's, then splits one again.
    let fitted = FittedModel {
        model: "{}".into(),
        quality: "[]".into(),
        entities: 0,
    };
    // Links are not what this test is about: none are stored.
    let no_entities = LinkageEntities::new(&LinkageParams::canonical_version(1));
    let no_links = LinkChanges::between(&no_entities, 1, None, &[]);
    let runs = storage
        .save_linkage(
            1,
            Some(&fitted),
            None,
            &[joined("q0", "p0"), joined("q1", "p1")],
            &[],
            &no_links,
        )
        .await
        .unwrap();
    (held, read) = catch_up(&storage, held, &mut interner).await;
    assert_eq!(
        read, 4,
        "each joined person id's spine person before and after"
    );
    assert_eq!(held.1.people().len(), 83);
    let p0 = held
        .1
        .people()
        .iter()
        .find(|p| p.key == Person::key_of("p0"))
        .unwrap();
    assert_eq!(p0.organisations().len(), 2, "p0 now holds q0's records too");
    storage
        .save_linkage(1, None, Some(runs), &[joined("q1", "q1")], &[], &no_links)
        .await
        .unwrap();
    (held, _) = catch_up(&storage, held, &mut interner).await;
    assert_eq!(held.1.people().len(), 84);

    // A snapshot replacing an earlier one retires the people it no longer holds.
    storage
        .commit_batch(batch(
            "SLT",
            "slt",
            "s1",
            Some("2026-10"),
            &ids("p", 10..20),
        ))
        .await
        .unwrap();
    (held, _) = catch_up(&storage, held, &mut interner).await;
    storage
        .commit_batch(batch(
            "SLT",
            "slt",
            "s2",
            Some("2026-11"),
            &ids("p", 15..25),
        ))
        .await
        .unwrap();
    storage
        .replace_snapshot(
            "SLT",
            "slt",
            "2026-11",
            &joinery_policies::AgreementRef::new("a", 1),
        )
        .await
        .unwrap()
        .expect("the new snapshot is held");
    (held, _) = catch_up(&storage, held, &mut interner).await;

    // Retention deletes RX9's data: its children go, q0 leaves p0.
    let purged = storage
        .purge(
            &joinery_policies::AgreementRef::new("a", 1),
            "camhs",
            time::OffsetDateTime::now_utc().unix_timestamp() + 1,
            false,
        )
        .await
        .unwrap();
    assert_eq!(purged.len(), 1);
    (held, read) = catch_up(&storage, held, &mut interner).await;
    assert!(read >= 40, "{read}");
    assert_eq!(held.1.people().len(), 45);

    // Pruned, the log no longer reaches back: a population that old is read afresh.
    let stale = held.0 - 1;
    storage.prune_population_changes(0).await.unwrap();
    assert!(
        storage
            .population_changes(
                stale,
                usize::MAX,
                &mut interner,
                joinery_gateway::analytics::Shard::WHOLE,
                None
            )
            .await
            .unwrap()
            .is_none()
    );
    let current = storage
        .population_changes(
            held.0,
            usize::MAX,
            &mut interner,
            joinery_gateway::analytics::Shard::WHOLE,
            None,
        )
        .await
        .unwrap()
        .expect("nothing changed since the latest generation");
    assert!(current.keys.is_empty() && current.people.is_empty());
    // More changed than the caller would read one by one: read afresh.
    storage
        .commit_batch(batch("LA1", "cin", "b4", None, &ids("p", 50..60)))
        .await
        .unwrap();
    assert!(
        storage
            .population_changes(
                held.0,
                9,
                &mut interner,
                joinery_gateway::analytics::Shard::WHOLE,
                None
            )
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn population_changes_equal_a_fresh_read_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    changes_equal_a_fresh_read(&Storage::sqlite_url(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn population_changes_equal_a_fresh_read_on_postgres() {
    let Some(url) = fresh_postgres("population_changes").await else {
        return;
    };
    changes_equal_a_fresh_read(&url).await;
}
