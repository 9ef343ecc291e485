//! Adding a national format is a data-only change: the Emergency Care Data
//! Set-style format in `tests/fixtures/formats/` (a definition and its code
//! lists, nothing else) is named by `formats` in an agent's configuration,
//! and an agent (a separate process) reads an extract in it and streams it
//! over mutual TLS to a gateway on SQLite. Its rows are checked as the
//! built-in formats' are — a code outside the format's list is reported and
//! treated as missing, an attendance naming no patient is quarantined, by
//! line — and every other row is stored with its event.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use joinery_agent::AgentConfig;
use joinery_agent::config::SourceConfig;
use joinery_agent::format::Registry;
use joinery_agent::row::RowOutcome;
use sqlx::Row;

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

/// The agreement's entry for the new dataset, and the trust that sends it.
fn with_ed_attendances(text: String) -> String {
    text.replacen(
        "sends: [salt_contacts, salt, salt_fhir]",
        "sends: [salt_contacts, salt, salt_fhir, ed_attendances]",
        1,
    )
    .replacen(
        "datasets:\n",
        "datasets:\n  ed_attendances:\n    description: Emergency department attendances.\n    \
         retention_days: 1095\n    fields:\n      local_id: pseudonymise\n      \
         nhs_number: pseudonymise\n      given_name: drop\n      family_name: drop\n      \
         date_of_birth: month\n      sex: keep\n      postcode: district\n    events:\n      \
         ae_attendance: { date: keep, attributes: { arrival_mode: keep } }\n",
        1,
    )
}

#[test]
fn a_format_in_a_directory_is_known_beside_the_built_in_ones() {
    let registry = Registry::load(Some(&fixture("formats"))).unwrap();
    let ecds = registry.get("ecds").unwrap();
    assert!(ecds.origin.ends_with("formats"), "{}", ecds.origin);
    assert_eq!(ecds.definition.tables.len(), 2);
    assert!(registry.get("ssda903").is_ok(), "the built-in ones stay");
    // Without the directory the agent does not know it, and says where
    // such formats go.
    let err = Registry::built_in().unwrap().get("ecds").unwrap_err();
    assert!(err.contains("formats"), "{err}");
}

#[tokio::test]
async fn an_agency_adds_a_national_format_as_data_and_sends_it() {
    let d = Deployment::new();
    write_signed_agreement(&d.agreements_dir(), with_ed_attendances);
    let gateway = d.start_gateway(None, &[]);

    // The harness writes a CSV source; replace it with the new format's.
    let config = d.agent_config(SALT, &gateway.address, &PathBuf::new(), &PathBuf::new());
    let text = std::fs::read_to_string(&config).unwrap();
    let head = text.split("sources:").next().unwrap();
    std::fs::write(
        &config,
        format!(
            "{head}formats: '{}'\nsources:\n  - kind: ecds\n    path: '{}'\n    dataset: ed_attendances\n",
            fixture("formats").display(),
            fixture("ecds").display()
        ),
    )
    .unwrap();

    // In process, through the loaded configuration: what the readers make
    // of the files.
    let loaded = AgentConfig::load(&config).unwrap();
    let today = time::OffsetDateTime::now_utc().date();
    let parts = joinery_agent::format::open(&loaded.sources[0], &loaded.registry, today).unwrap();
    let mut valid = Vec::new();
    let mut warned = Vec::new();
    let mut quarantined = Vec::new();
    for (path, row) in joinery_agent::format::read_all(parts).unwrap() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        match row.outcome {
            RowOutcome::Valid {
                row: person,
                warnings,
            } => {
                warned.extend(warnings.iter().map(|w| (row.line, w.to_string())));
                valid.push((file, person.local_id, person.events.len()));
            }
            RowOutcome::Quarantined(problem) => {
                quarantined.push((file, row.line, problem.to_string()))
            }
        }
    }
    assert_eq!(valid.len(), 5 + 6, "{valid:?}");
    assert_eq!(
        warned,
        [(
            7,
            "ae_attendance arrival_mode: code not in code list ARRIVAL_MODE; treated as missing"
                .to_owned()
        )]
    );
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert_eq!(
        (quarantined[0].0.as_str(), quarantined[0].1),
        ("ecds_attendance.csv", 8)
    );
    assert!(
        quarantined[0].2.contains("names no person in Patient"),
        "{:?}",
        quarantined[0]
    );
    assert!(matches!(&loaded.sources[0], SourceConfig::National(f) if f.format == "ecds"));

    // The agent, as a process, over mutual TLS.
    let (code, out, err) = finish(d.spawn_agent(&config));
    assert_eq!(
        code,
        joinery_agent::summary::EXIT_QUARANTINED,
        "rows were quarantined: {out}\n{err}"
    );
    assert!(out.contains("5 rows read, 5 sent, 5 stored"), "{out}");
    assert!(out.contains("7 rows read, 6 sent, 6 stored"), "{out}");
    gateway.stop();

    let db = open_database(&d.sqlite_url()).await;
    let stored: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM records WHERE dataset = 'ed_attendances'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(stored, 11);
    let events = sqlx::query(
        "SELECT attributes FROM events WHERE organisation = $1 AND event_type = 'ae_attendance'",
    )
    .bind(SALT)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(events.len(), 6);
    let coded = events
        .iter()
        .filter(|e| e.get::<String, _>("attributes").contains("arrival_mode"))
        .count();
    assert_eq!(coded, 5, "the code outside the list arrives as missing");
}
