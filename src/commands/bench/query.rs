//! `joinery-bench query`: the latency of an analyst's stratified indicator
//! table over a large linked population, on SQLite or PostgreSQL.
//!
//! A population of `--children` children is stored through the gateway's
//! own storage (batches of records and events as ingest writes them: known
//! to the council, CAMHS and speech and language therapy in the usual
//! proportions, with referrals, CP plans, care episodes, A&E attendances and
//! contacts), then `docs/queries/risk-tiers-by-segment.yaml` is answered
//! through the same path as `joinery.v1.Query/Run` (minus the network):
//! the first answer loads the population, later ones (each as of another
//! day, so none is a replay) use it from memory until the data changes.
//! Then a delivery is stored and the population brought up to date, both
//! by reading only the people it changed and by reading everyone (the
//! bench fails unless the two agree), and through the service: how long
//! until answers reflect it.
//! Figures: load time, p50 and p90 of the warm answers, peak memory, the
//! memory the population holds, and the catch-up times.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use joinery_crypto::identity::PeerIdentity;
use joinery_gateway::agreements::Agreements;
use joinery_gateway::analytics::{Interner, Population};
use joinery_gateway::query::QueryService;
use joinery_gateway::rekey::{LinkMethod, Rekeyer};
use joinery_gateway::storage::{NewBatch, NewEvent, NewRecord, Storage};
use joinery_proto::v1::RunRequest;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use time::{Date, Duration as Days};

use super::{peak_rss_kib, percentile, rss_kib};

#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// Children in the linked population.
    #[arg(long, default_value_t = 1_000_000)]
    children: usize,
    /// Answers to time after the first.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Records in the delivery stored after the warm answers (half new
    /// records of children held, half new children), to measure bringing
    /// the population up to date.
    #[arg(long, default_value_t = 10_000)]
    delivery: usize,
    /// Measure on this PostgreSQL database instead of SQLite (a scratch
    /// database: the population is left in it).
    #[arg(long)]
    postgres_url: Option<String>,
}

pub(super) const QUERY: &str = include_str!("../../../docs/queries/risk-tiers-by-segment.yaml");
const RECORDS_PER_BATCH: usize = 5000;
/// Records per batch of the delivery, as agents send them.
const DELIVERY_BATCH: usize = 1000;

pub async fn run(args: QueryArgs) -> anyhow::Result<ExitCode> {
    let dir = tempfile::Builder::new()
        .prefix("joinery-bench-query-")
        .tempdir()?;
    let url = args
        .postgres_url
        .clone()
        .unwrap_or_else(|| Storage::sqlite_url(dir.path()));
    let engine = if args.postgres_url.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let storage = Storage::open(&url).await?;

    let started = Instant::now();
    let (records, events) = store_population(&storage, args.children).await?;
    let stored = started.elapsed();
    println!(
        "bench query on {engine}: stored {} children ({records} records, {events} events) in {:.1} s ({:.0} records+events/s)",
        args.children,
        stored.as_secs_f64(),
        (records + events) as f64 / stored.as_secs_f64()
    );

    // The example agreement's output rules and roles (j.bloggs holds an
    // aggregates role), as the demo deploys it.
    let text = include_str!("../../../policies/examples/children-at-risk-stratification.yaml");
    let agreement = joinery_policies::check::check(text, time::OffsetDateTime::now_utc())
        .agreement
        .context("the example agreement parses")?;
    let agreements = Agreements::from_verified(vec![joinery_policies::SignedAgreement {
        agreement,
        digest: String::new(),
        path: "children-at-risk-stratification.yaml".into(),
    }]);
    let key = joinery_crypto::keys::SecretKey::generate()?;
    let service = QueryService::new(
        storage.clone(),
        joinery_gateway::agreements::LiveAgreements::fixed(agreements),
        Rekeyer::new(&key),
        joinery_gateway::query::Source::new(&joinery_gateway::config::Answering::Whole)?,
    );
    let analyst = PeerIdentity::Analyst("j.bloggs".into());
    let request = RunRequest {
        query: QUERY.to_owned(),
    };
    let before = rss_kib(std::process::id());
    let started = Instant::now();
    let table = service.answer(&analyst, &request).await?;
    let first = started.elapsed();
    // What the loaded population holds: resident memory after the first
    // answer over before it (an allocator may reuse pages freed by the
    // storing above, so this is a floor).
    let held = rss_kib(std::process::id())
        .zip(before)
        .map(|(after, before)| after.saturating_sub(before) * 1024);
    // Each later question asks as of another day, so each is worked out
    // from the population in memory (the same question of the same data
    // would be replayed from the releases kept).
    let today = time::OffsetDateTime::now_utc().date();
    let mut times: Vec<Duration> = Vec::with_capacity(args.runs);
    for day in 1..=args.runs {
        let request = RunRequest {
            query: format!(
                "{QUERY}\nreference_date: {}\n",
                today - Days::days(day as i64)
            ),
        };
        let started = Instant::now();
        service.answer(&analyst, &request).await?;
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "risk tiers by segment ({} rows x {} columns): first answer (loads the population) {:.0} ms; \
         then p50 {:.0} ms, p90 {:.0} ms over {} answers; peak memory {:.0} MiB",
        table.rows.len(),
        table.columns.len(),
        first.as_secs_f64() * 1000.0,
        percentile(&times, 0.5).as_secs_f64() * 1000.0,
        percentile(&times, 0.9).as_secs_f64() * 1000.0,
        args.runs,
        peak_rss_kib(std::process::id()).unwrap_or(0) as f64 / 1024.0
    );
    if let Some(held) = held {
        println!(
            "held for analytics after the first answer: {:.0} MiB more resident than before it = {:.0} bytes per child",
            held as f64 / (1024.0 * 1024.0),
            held as f64 / args.children as f64
        );
    }
    if args.delivery > 0 {
        catch_up(&service, &storage, &analyst, args.children, args.delivery).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Stores a delivery of `records` records and measures bringing the
/// population up to date: from the change log and by reading everyone
/// (which must agree), then through the service, until an answer reflects
/// the delivery.
async fn catch_up(
    service: &QueryService,
    storage: &Storage,
    analyst: &PeerIdentity,
    children: usize,
    records: usize,
) -> anyhow::Result<()> {
    let mut interner = Interner::default();
    let before = storage
        .population(
            &mut interner,
            joinery_gateway::analytics::Shard::WHOLE,
            None,
        )
        .await?;
    let held = Population::new(before.people);
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let mut delivery = Source {
        organisation: "E08000099",
        dataset: "cin",
        reach: 1.0,
        batch: Vec::with_capacity(DELIVERY_BATCH),
        batches: 1_000_000,
    };
    let today = time::OffsetDateTime::now_utc().date();
    for i in 0..records {
        // Every other record a child held already, the rest new children.
        let child = if i % 2 == 0 {
            rng.random_range(0..children)
        } else {
            children + i
        };
        let born = today - Days::days(rng.random_range(0..19 * 365));
        delivery.batch.push(NewRecord {
            record_key: format!("delivery-{i}"),
            ..record(
                child,
                "female",
                born,
                child_events("cin", born, today, &mut rng),
            )
        });
        if delivery.batch.len() == DELIVERY_BATCH {
            flush(storage, &mut delivery).await?;
        }
    }
    flush(storage, &mut delivery).await?;

    let started = Instant::now();
    let changes = storage
        .population_changes(
            before.generation,
            usize::MAX,
            &mut interner,
            joinery_gateway::analytics::Shard::WHOLE,
            None,
        )
        .await?
        .context("the change log reaches back to the population loaded")?;
    let changed = changes.keys.len();
    let updated = held.updated(&changes.keys, changes.people);
    let from_changes = started.elapsed();
    let started = Instant::now();
    let fresh = storage
        .population(
            &mut Interner::default(),
            joinery_gateway::analytics::Shard::WHOLE,
            None,
        )
        .await?;
    let from_everyone = started.elapsed();
    let fresh = Population::new(fresh.people);
    anyhow::ensure!(
        updated.by_key() == fresh.by_key(),
        "the population brought up to date from its changes differs from reading everyone"
    );
    println!(
        "a delivery of {records} records ({changed} people changed): up to date from the change log in {:.0} ms, \
         by reading everyone in {:.0} ms (the same {} people)",
        from_changes.as_secs_f64() * 1000.0,
        from_everyone.as_secs_f64() * 1000.0,
        fresh.people().len()
    );
    drop((held, updated, fresh));

    // Through the service: answers come from the population held while it
    // catches up in the background; ask until one reflects the delivery.
    let generation = storage.data_generation().await?;
    let started = Instant::now();
    for day in 100.. {
        let request = RunRequest {
            query: format!("{QUERY}\nreference_date: {}\n", today - Days::days(day)),
        };
        let table = service.answer(analyst, &request).await?;
        if table.data_generation == generation {
            println!(
                "through the service: an answer reflected the delivery {:.0} ms after it was stored \
                 (asking again and again, each answer {:.0} ms or so)",
                started.elapsed().as_secs_f64() * 1000.0,
                started.elapsed().as_secs_f64() * 1000.0 / (day - 99) as f64
            );
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "no answer reflected the delivery within 10 minutes"
        );
    }
    Ok(())
}

/// One agency's dataset in the synthetic population.
struct Source {
    organisation: &'static str,
    dataset: &'static str,
    reach: f64,
    batch: Vec<NewRecord>,
    batches: u64,
}

/// Stores `children` children's records; returns (records, events).
async fn store_population(storage: &Storage, children: usize) -> anyhow::Result<(u64, u64)> {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let today = time::OffsetDateTime::now_utc().date();
    let mut sources = [
        ("E08000099", "cin", 0.55),
        ("RX9", "camhs", 0.35),
        ("RY9", "salt", 0.35),
        ("RY9", "salt_fhir", 0.2),
    ]
    .map(|(organisation, dataset, reach)| Source {
        organisation,
        dataset,
        reach,
        batch: Vec::with_capacity(RECORDS_PER_BATCH),
        batches: 0,
    });
    let (mut records, mut events) = (0u64, 0u64);
    for child in 0..children {
        let born = today - Days::days(rng.random_range(0..19 * 365));
        let sex = if rng.random_bool(0.5) {
            "female"
        } else {
            "male"
        };
        for source in &mut sources {
            if !rng.random_bool(source.reach) {
                continue;
            }
            let record_events = child_events(source.dataset, born, today, &mut rng);
            events += record_events.len() as u64;
            records += 1;
            source.batch.push(NewRecord {
                record_key: format!("{}-{child}", source.dataset),
                local_pseudonym: format!("{}{}", person_id(child), source.dataset),
                ..record(child, sex, born, record_events)
            });
            if source.batch.len() == RECORDS_PER_BATCH {
                flush(storage, source).await?;
            }
        }
    }
    for source in &mut sources {
        flush(storage, source).await?;
    }
    Ok((records, events))
}

/// Child number `child`'s stored person id.
fn person_id(child: usize) -> String {
    format!(
        "{:032x}",
        (child as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
    )
}

/// A record of child number `child`.
fn record(child: usize, sex: &str, born: Date, events: Vec<NewEvent>) -> NewRecord {
    NewRecord {
        person_id: person_id(child),
        record_key: child.to_string(),
        source_row: child as u64,
        local_pseudonym: person_id(child),
        nhs_pseudonym: None,
        link_method: LinkMethod::ExactNhs,
        sex: Some(sex.to_owned()),
        birth_month: Some(format!("{:04}-{:02}", born.year(), born.month() as u8)),
        postcode_district: None,
        attributes: "{}".to_owned(),
        events,
        linkage: None,
    }
}

async fn flush(storage: &Storage, source: &mut Source) -> anyhow::Result<()> {
    if source.batch.is_empty() {
        return Ok(());
    }
    source.batches += 1;
    storage
        .commit_batch(NewBatch {
            snapshot: None,
            organisation: source.organisation.to_owned(),
            batch_id: format!("{}-{}", source.dataset, source.batches),
            dataset: source.dataset.to_owned(),
            sequence: source.batches,
            agreement: joinery_policies::AgreementRef::new("bench", 1),
            records: std::mem::take(&mut source.batch),
        })
        .await?;
    Ok(())
}

/// A child's events in one dataset.
fn child_events(dataset: &str, born: Date, today: Date, rng: &mut ChaCha8Rng) -> Vec<NewEvent> {
    let mut out = Vec::new();
    let mut event = |rng: &mut ChaCha8Rng, event_type: &str, attributes: &str| {
        let span = (today - born).whole_days().max(1);
        let date = born + Days::days(rng.random_range(0..span));
        out.push(NewEvent {
            event_type: event_type.to_owned(),
            event_date: date.to_string(),
            attributes: attributes.to_owned(),
        });
    };
    match dataset {
        "cin" => {
            for _ in 0..rng.random_range(1..=3) {
                event(rng, "referral", r#"{"source":"3A"}"#);
            }
            if rng.random_bool(0.12) {
                event(rng, "cp_plan_start", r#"{"category_of_abuse":"NEG"}"#);
            }
            if rng.random_bool(0.08) {
                event(rng, "lac_episode_start", r#"{"placement_type":"U4"}"#);
                if rng.random_bool(0.2) {
                    event(rng, "missing_episode", r#"{"kind":"M"}"#);
                }
            }
        }
        "camhs" => {
            event(rng, "camhs_referral", r#"{"source":"A1"}"#);
            for _ in 0..rng.random_range(0..=3) {
                event(rng, "camhs_contact", r#"{"attendance":"5"}"#);
            }
        }
        "salt" => {
            event(rng, "community_referral", r#"{"source":"04"}"#);
            for _ in 0..rng.random_range(0..=3) {
                event(rng, "community_contact", r#"{"attendance":"5"}"#);
            }
        }
        _ => {
            for _ in 0..rng.random_range(0..=3) {
                event(rng, "ae_attendance", "{}");
            }
        }
    }
    out
}
