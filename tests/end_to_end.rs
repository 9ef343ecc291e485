//! End to end: a gateway and three agencies' agents as separate processes over
//! mutual TLS, once on SQLite and once on PostgreSQL.
//!
//! Checks that every row is accounted for (stored = read − quarantined), that
//! person ids are shared across agencies exactly where the ground truth has
//! the same valid NHS number, that a repeated run stores nothing twice, and
//! that fuzzy linkage (`joinery gateway relink`) then puts the records of
//! one child on one spine person, against the ground truth.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use common::*;
use sqlx::Row;

const AGENCIES: [(&str, &str, u8); 3] = [
    (COUNCIL, "csc_referrals", b','),
    (CAMHS, "camhs_referrals", b','),
    (SALT, "salt_contacts", b';'),
];

#[tokio::test(flavor = "multi_thread")]
async fn three_agencies_on_sqlite() {
    end_to_end(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_agencies_on_postgres() {
    let Some(url) = fresh_postgres("end_to_end").await else {
        return;
    };
    end_to_end(Some(url)).await;
}

async fn end_to_end(postgres: Option<String>) {
    let d = Deployment::new();
    let synth = d.synth(400, 11);
    let gateway = d.start_gateway(postgres.as_deref(), &[]);

    // All three agents at once.
    let configs: Vec<_> = AGENCIES
        .iter()
        .map(|(org, dataset, _)| {
            d.agent_config(
                org,
                &gateway.address,
                &synth.join(format!("extracts/{dataset}.csv")),
                &synth.join(format!("mappings/{dataset}.yaml")),
            )
        })
        .collect();
    let agents: Vec<_> = configs.iter().map(|c| d.spawn_agent(c)).collect();
    for ((org, _, _), agent) in AGENCIES.iter().zip(agents) {
        let (code, stdout, stderr) = finish(agent);
        // Synthetic extracts always contain broken rows: 3 = quarantined, rest delivered.
        assert_eq!(code, 3, "agent {org}: {stdout}\n{stderr}");
        // Not on a terminal: progress comes as log lines, a source's end
        // with its row count.
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(" read ") && l.contains("rows=")),
            "agent {org}: no progress line in\n{stderr}"
        );
    }

    let url = postgres.clone().unwrap_or_else(|| d.sqlite_url());
    let db = open_database(&url).await;

    // Every input row is either stored or quarantined.
    let stored = stored_per_organisation(&db).await;
    for (org, dataset, delimiter) in AGENCIES {
        let input = csv_rows(&synth.join(format!("extracts/{dataset}.csv")), delimiter).len();
        let quarantined =
            quarantined_rows(&d.path(&format!("quarantine/{org}/{dataset}.quarantine.csv")));
        assert!(quarantined > 0, "{org}: synthetic data has broken rows");
        assert_eq!(
            stored[org] as usize,
            input - quarantined,
            "{org}: stored = read - quarantined"
        );
    }

    check_person_ids(&d, &synth.join("ground_truth.csv"), &db).await;

    // Run the council's agent again: its spool knows the extract is
    // delivered, and it ends the session it opened in order (the gateway
    // logs no broken stream).
    let log_before = gateway.log_text().len();
    let (code, stdout, _) = finish(d.spawn_agent(&configs[0]));
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("already delivered"), "{stdout}");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let since = gateway.log_text()[log_before..].to_owned();
    assert!(
        !since.contains("ingest stream ended by error"),
        "an agent with nothing new broke its stream:\n{since}"
    );
    assert!(
        d.path(&format!("spool/{COUNCIL}/batches"))
            .read_dir()
            .unwrap()
            .next()
            .is_none(),
        "spool empty"
    );

    // `agent resend` says what it would send again, and with --yes makes
    // the next run send everything again: every batch is a duplicate and
    // nothing new is stored.
    let config = configs[0].to_str().unwrap();
    let asked = joinery()
        .args(["agent", "resend", "--config", config])
        .output()
        .unwrap();
    assert!(!asked.status.success());
    let asked = String::from_utf8_lossy(&asked.stdout);
    assert!(
        asked.contains("csc_referrals") && asked.contains("add --yes"),
        "{asked}"
    );
    let (code, stdout, _) = finish(d.spawn_agent(&configs[0]));
    assert!(
        stdout.contains("already delivered"),
        "nothing forgotten yet: {stdout}"
    );
    assert_eq!(code, 0);
    let done = joinery_ok(&["agent", "resend", "--config", config, "--yes"]);
    assert!(String::from_utf8_lossy(&done.stdout).contains("sent again on the next run"));
    let (code, stdout, _) = finish(d.spawn_agent(&configs[0]));
    assert_eq!(code, 3);
    assert!(stdout.contains(" 0 stored,"), "{stdout}");
    assert!(
        stdout.contains(&format!("{} already stored", stored[COUNCIL])),
        "{stdout}"
    );
    assert_eq!(stored_per_organisation(&db).await, stored);

    // Each agency's view of its own deliveries agrees with the database; it
    // sees no other agency's. An analyst may not ask: two calls a delivery
    // apart would give the delivery's exact size.
    for (org, dataset, _) in AGENCIES {
        let counts = d.client(&["query", "counts"], &gateway.address, d.org_cert(org), &[]);
        let counts = String::from_utf8_lossy(&counts.stdout);
        let line = counts
            .lines()
            .find(|l| l.starts_with(org) && l.contains(dataset))
            .unwrap_or_else(|| panic!("{org} missing from {counts}"));
        assert!(
            line.trim_end().ends_with(&stored[org].to_string()),
            "{line}"
        );
        for (other, _, _) in AGENCIES.iter().filter(|(o, _, _)| *o != org) {
            assert!(!counts.contains(other), "{org} sees {other}: {counts}");
        }
    }
    let refused = d.client_output(
        &["query", "counts"],
        &gateway.address,
        d.analyst_cert(),
        &[],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("only to the agency that sent them"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    assert!(gateway.stop().success(), "gateway exits cleanly on SIGTERM");

    // Fuzzy linkage onto the person spine.
    let relinked = d.on_store(&["gateway", "relink"], postgres.as_deref());
    assert!(relinked.contains("full run"), "{relinked}");
    check_spine(&d, &synth.join("ground_truth.csv"), &db).await;

    // Every batch (and the re-run's duplicates) is in an intact, signed audit chain.
    let verified = d.on_store(&["audit", "verify"], postgres.as_deref());
    assert!(
        verified.contains("audit log intact") && verified.contains("1 signed checkpoints"),
        "{verified}"
    );
}

async fn stored_per_organisation(db: &sqlx::AnyPool) -> BTreeMap<String, i64> {
    sqlx::query("SELECT organisation, COUNT(*) AS n FROM records GROUP BY organisation")
        .fetch_all(db)
        .await
        .expect("count records")
        .iter()
        .map(|r| (r.get::<String, _>("organisation"), r.get::<i64, _>("n")))
        .collect()
}

fn quarantined_rows(report: &Path) -> usize {
    csv_rows(report, b',')
        .iter()
        .filter(|r| &r[2] == "quarantined")
        .count()
}

async fn check_person_ids(d: &Deployment, ground_truth: &Path, db: &sqlx::AnyPool) {
    let truth_by_pseudonym = truth_by_pseudonym(d, ground_truth);
    let rows = sqlx::query("SELECT DISTINCT organisation, local_pseudonym, person_id FROM records")
        .fetch_all(db)
        .await
        .expect("read records");
    let mut people: HashMap<String, Vec<&Truth>> = HashMap::new();
    for row in &rows {
        let key = (
            row.get::<String, _>("organisation"),
            row.get::<String, _>("local_pseudonym"),
        );
        let truth = truth_by_pseudonym
            .get(&key)
            .unwrap_or_else(|| panic!("stored record {key:?} is in no agency's ground truth"));
        people.entry(row.get("person_id")).or_default().push(truth);
    }

    let mut linked_across_agencies = 0;
    for (person, records) in &people {
        let organisations: BTreeSet<_> = records.iter().map(|t| &t.organisation).collect();
        assert_eq!(
            organisations.len(),
            records.len(),
            "person {person}: one record per agency"
        );
        if records.len() > 1 {
            linked_across_agencies += 1;
            let numbers: BTreeSet<_> = records.iter().map(|t| t.valid_nhs.clone()).collect();
            assert_eq!(
                numbers.len(),
                1,
                "person {person} joins records with different NHS numbers"
            );
            assert!(
                numbers.iter().all(Option::is_some),
                "person {person} linked without an NHS number"
            );
        }
    }
    // Conversely, every valid NHS number held by several agencies is one person.
    let mut person_of_number: HashMap<&str, BTreeSet<&String>> = HashMap::new();
    for (person, records) in &people {
        for t in records {
            if let Some(n) = &t.valid_nhs {
                person_of_number.entry(n).or_default().insert(person);
            }
        }
    }
    for (number, persons) in &person_of_number {
        assert_eq!(
            persons.len(),
            1,
            "NHS number {number} split over {persons:?}"
        );
    }
    assert!(
        linked_across_agencies > 20,
        "only {linked_across_agencies} people linked across agencies"
    );
    // And children who share an NHS number link even when the rest of their record differs.
    let children_linked: BTreeSet<_> = people
        .values()
        .filter(|r| r.len() > 1)
        .map(|r| r[0].child.clone())
        .collect();
    assert_eq!(children_linked.len(), linked_across_agencies);
}

/// An agreement on the hardened encoding (version 7, with only the birth
/// year and postcode area kept in clear) works from end to end: every
/// agent encodes under it, the gateway takes its encodings (each one the
/// size version 7's filters make), and fuzzy linkage puts each child's
/// records on one spine person ([`check_spine`]: F1 at least 0.97).
#[tokio::test(flavor = "multi_thread")]
async fn a_hardened_agreement_links_from_end_to_end() {
    let d = Deployment::new();
    write_signed_agreement(&d.agreements_dir(), |text| {
        let hardened = text
            .replacen("    version: 5\n", "    version: 7\n", 1)
            .replace("      date_of_birth: month", "      date_of_birth: year")
            .replace("      postcode: district", "      postcode: area");
        assert_ne!(hardened, text, "the example agreement's encoding moved");
        hardened
    });
    let synth = d.synth(400, 11);
    let gateway = d.start_gateway(None, &[]);
    let agents: Vec<_> = AGENCIES
        .iter()
        .map(|(org, dataset, _)| {
            let config = d.agent_config(
                org,
                &gateway.address,
                &synth.join(format!("extracts/{dataset}.csv")),
                &synth.join(format!("mappings/{dataset}.yaml")),
            );
            (org, d.spawn_agent(&config))
        })
        .collect();
    for (org, agent) in agents {
        let (code, stdout, stderr) = finish(agent);
        assert_eq!(code, 3, "agent {org}: {stdout}\n{stderr}");
    }
    assert!(gateway.stop().success());

    let db = open_database(&d.sqlite_url()).await;
    let params = joinery_linkage::LinkageParams::canonical_version(7);
    let bytes: i64 = params.fields.iter().map(|f| i64::from(f.bits) / 8).sum();
    let stored: Vec<(i64, i64, i64)> = sqlx::query(
        "SELECT params_version, length(filters), COUNT(*) FROM linkage_entities \
         GROUP BY params_version, length(filters)",
    )
    .fetch_all(&db)
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1), row.get(2)))
    .collect();
    assert!(
        matches!(stored[..], [(7, b, n)] if b == bytes && n > 300),
        "{stored:?}, against version 7's {bytes} bytes"
    );

    let relinked = d.on_store(&["gateway", "relink"], None);
    assert!(relinked.contains("full run"), "{relinked}");
    check_spine(&d, &synth.join("ground_truth.csv"), &db).await;
}
