//! NHS pseudonyms made through independent keyholders (issue #25): three
//! agencies deliver through two real `joinery keyholder serve` processes,
//! and the records of one NHS number still link exactly across agencies.
//! Then the attacks. The gateway's operator, holding the gateway's key,
//! with one agency's help (its linkage key and its certificate), tries to
//! reverse the stored NHS pseudonyms: offline, by computing the pseudonym of
//! every NHS number in the population as agents used to (it matches none);
//! online, by asking a keyholder to evaluate guesses with the agency's
//! certificate (refused past the agency's daily allowance); nor can it
//! compute another agency's local pseudonyms from its true local ids, each
//! agency's being under its own key. An analyst and
//! an organisation outside the agreement are refused outright. A keyholder
//! answering with another key is caught by its proof before anything is
//! sent. No NHS number appears in any keyholder's log or ledger.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use common::keyholders::{Keyholder, deliver_through, keyholder_entry, start_keyholder};
use common::*;
use joinery::sandbox::naming_keyholders;
use joinery_crypto::oblivious::Blinded;
use joinery_crypto::pseudonym::Pseudonymiser;
use joinery_gateway::rekey::Rekeyer;
use joinery_proto::v1::EvaluateRequest;
use joinery_proto::v1::keyholder_client::KeyholderClient;
use sqlx::Row;

const KEYHOLDER_A: &str = "keyholder-a.test";
const KEYHOLDER_B: &str = "keyholder-b.test";

/// Asks `keyholder` to evaluate `guesses` as `org` (its certificate).
async fn ask(
    d: &Deployment,
    keyholder: &Keyholder,
    cert: (PathBuf, PathBuf),
    guesses: &[String],
) -> Result<usize, (tonic::Code, String)> {
    let tls = joinery_crypto::tls::client_config(&common::ingest::files(d, cert)).unwrap();
    let channel = joinery_proto::channel::connect(&keyholder.address, keyholder.name, tls)
        .await
        .expect("connect to the keyholder");
    let blinded = Blinded::new(guesses);
    KeyholderClient::new(channel)
        .evaluate(EvaluateRequest {
            agreement: AGREEMENT.to_owned(),
            blinded: blinded.elements,
        })
        .await
        .map(|answer| answer.into_inner().evaluated.len())
        .map_err(|status| (status.code(), status.message().to_owned()))
}

#[tokio::test(flavor = "multi_thread")]
async fn nhs_pseudonyms_made_through_keyholders_link_and_resist_the_gateway_with_an_agency() {
    let d = Deployment::new();
    write_signed_agreement(
        &d.agreements_dir(),
        naming_keyholders(&[KEYHOLDER_A, KEYHOLDER_B]),
    );
    // A keyholder without its key does not start (a new key would
    // silently change every pseudonym made through it).
    let mut keyless = joinery();
    keyless.args(
        d.sandbox
            .keyholder_serve_args(KEYHOLDER_A, &d.path("keyholder-data/none")),
    );
    fails_saying(keyless, "joinery keyholder init");

    let synth = d.synth(300, 5);
    let largest = THREE_AGENCIES
        .iter()
        .map(|(_, dataset)| csv_rows(&synth.join(format!("extracts/{dataset}.csv")), b',').len())
        .max()
        .unwrap() as u64;
    // Each agency's extract fits its allowance; twice as many guesses do not.
    let allowance = 2 * largest;
    let metrics = free_local_address();
    let a = start_keyholder(&d, KEYHOLDER_A, "a", allowance, Some(&metrics));
    let b = start_keyholder(&d, KEYHOLDER_B, "b", allowance, None);
    let gateway = d.start_gateway(None, &[]);

    // An agent not told where the keyholders are stops, saying what to add.
    let (org, dataset) = THREE_AGENCIES[0];
    let extract = synth.join(format!("extracts/{dataset}.csv"));
    let mapping = synth.join(format!("mappings/{dataset}.yaml"));
    let config = d.agent_config(org, &gateway.address, &extract, &mapping);
    let (code, _, stderr) = finish(d.spawn_agent(&config));
    assert!(![0, joinery_agent::summary::EXIT_QUARANTINED].contains(&code));
    assert!(
        stderr.contains(&format!(
            "add {{ name: {KEYHOLDER_A}, address: HOST:PORT, public_key: HEX }} under keyholders"
        )),
        "{stderr}"
    );

    // A keyholder answering with another key (restored from the wrong
    // backup, or an impostor holding its certificate) is caught by the
    // proof checked against the key the agency pinned: the run stops,
    // naming it, and nothing is stored.
    let impostor = start_keyholder(&d, KEYHOLDER_A, "a-other-key", allowance, None);
    assert_ne!(impostor.public_key, a.public_key);
    let mut yaml = std::fs::read_to_string(&config).unwrap();
    yaml.push_str("keyholders:\n");
    yaml.push_str(&keyholder_entry(&a, &impostor.address));
    yaml.push_str(&keyholder_entry(&b, &b.address));
    std::fs::write(&config, yaml).unwrap();
    let (code, _, stderr) = finish(d.spawn_agent(&config));
    assert!(![0, joinery_agent::summary::EXIT_QUARANTINED].contains(&code));
    assert!(
        stderr.contains(KEYHOLDER_A) && stderr.contains("answered with another key"),
        "{stderr}"
    );
    let db = open_database(&d.sqlite_url()).await;
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM records")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(stored, 0, "nothing made with the other key was sent");
    drop(impostor);

    let agent_logs = deliver_through(&d, &gateway.address, &synth, &[&a, &b], |yaml| yaml);

    // Exact linkage still works: every stored record of one valid NHS
    // number carries one pseudonym, and two numbers never share one.
    let truth = truth_by_pseudonym(&d, &synth.join("ground_truth.csv"));
    let rows = sqlx::query(
        "SELECT organisation, local_pseudonym, nhs_pseudonym FROM records WHERE nhs_pseudonym IS NOT NULL",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let mut pseudonyms_of: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut numbers_of: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut agencies_of: HashMap<String, BTreeSet<String>> = HashMap::new();
    for row in &rows {
        let key = (
            row.get::<String, _>("organisation"),
            row.get::<String, _>("local_pseudonym"),
        );
        let pseudonym: String = row.get("nhs_pseudonym");
        let t = &truth[&key];
        let number = t
            .valid_nhs
            .clone()
            .expect("only valid numbers are pseudonymised");
        pseudonyms_of
            .entry(number.clone())
            .or_default()
            .insert(pseudonym.clone());
        numbers_of
            .entry(pseudonym.clone())
            .or_default()
            .insert(number);
        agencies_of
            .entry(pseudonym)
            .or_default()
            .insert(t.organisation.clone());
    }
    assert!(
        rows.len() > 300,
        "{} records with an NHS pseudonym",
        rows.len()
    );
    assert!(
        pseudonyms_of.values().all(|p| p.len() == 1),
        "one pseudonym per number"
    );
    assert!(
        numbers_of.values().all(|n| n.len() == 1),
        "one number per pseudonym"
    );
    let across = agencies_of.values().filter(|o| o.len() >= 2).count();
    assert!(
        across > 50,
        "{across} NHS pseudonyms link records of two or more agencies"
    );

    // The same extract read again (its spool's batches and reading
    // positions lost, its pseudonym cache kept) asks the keyholders for
    // nothing: every number is known from the first run, and every record
    // is recognised as stored.
    let ledger_lines = |k: &Keyholder| {
        std::fs::read_to_string(k.data.join("ledger.jsonl"))
            .unwrap()
            .lines()
            .count()
    };
    let before = (ledger_lines(&a), ledger_lines(&b));
    let (org, _) = THREE_AGENCIES[1];
    let spool = d.path(&format!("spool/{org}"));
    std::fs::remove_dir_all(spool.join("batches")).unwrap();
    std::fs::remove_file(spool.join("checkpoints.json")).unwrap();
    let (code, stdout, stderr) = finish(d.spawn_agent(&d.path(&format!("{org}.agent.yaml"))));
    assert!(
        [0, joinery_agent::summary::EXIT_QUARANTINED].contains(&code),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" 0 stored,"), "{stdout}");
    assert_eq!(
        (ledger_lines(&a), ledger_lines(&b)),
        before,
        "no number evaluated again"
    );

    // Offline: the gateway's key and the agency's linkage key compute the
    // pseudonym of every NHS number as agents without keyholders do; none
    // is stored.
    let register: BTreeSet<String> = csv_rows(&synth.join("ground_truth.csv"), b',')
        .iter()
        .filter_map(|row| joinery_agent::validate::nhs_number(&row[4]).ok())
        .collect();
    let rekeyer = Rekeyer::new(&d.gateway_key());
    let agent = Pseudonymiser::new(&d.linkage_key(), "agent nhs-number");
    let stored: BTreeSet<&String> = numbers_of.keys().collect();
    let recomputed = register
        .iter()
        .filter_map(|n| {
            rekeyer
                .identify(COUNCIL, &[0; 32], &agent.pseudonymise(n.as_bytes()))
                .nhs_pseudonym
        })
        .filter(|p| stored.contains(p))
        .count();
    assert_eq!(
        recomputed, 0,
        "the coalition recomputes no stored pseudonym"
    );

    // Nor another agency's local ids: each agency pseudonymises its own
    // under its own key, so the shared linkage key with the gateway's key
    // computes none of the stored local pseudonyms, though it is given
    // every agency's true local ids (the stored records were mapped to
    // them above, with each agency's own key).
    let shared = Pseudonymiser::new(&d.linkage_key(), "agent local-id");
    let held: BTreeSet<(String, String)> = truth.keys().cloned().collect();
    let guessed = csv_rows(&synth.join("ground_truth.csv"), b',')
        .iter()
        .map(|row| {
            let (org, local) = (&row[1], &row[3]);
            let agent_level = shared.pseudonymise(local.as_bytes());
            let stored = rekeyer.identify(org, &agent_level, &[]).local_pseudonym;
            (org.to_string(), stored)
        })
        .filter(|key| held.contains(key))
        .count();
    assert_eq!(guessed, 0, "the coalition recomputes no local pseudonym");

    // Online: with the council's certificate, guesses beyond the council's
    // allowance are refused, and the refusal says so.
    let guesses: Vec<String> = (0..2 * allowance)
        .map(|i| format!("{:010}", 9_000_000_000 + i))
        .collect();
    let mut answered = 0;
    let mut refusal = None;
    for chunk in guesses.chunks(100) {
        match ask(&d, &a, d.org_cert(COUNCIL), chunk).await {
            Ok(n) => answered += n,
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let (code, message) = refusal.expect("the allowance stops the guessing");
    assert_eq!(code, tonic::Code::ResourceExhausted, "{message}");
    assert!(
        message.contains("allowance") && message.contains(COUNCIL),
        "{message}"
    );
    assert!((answered as u64) < allowance, "{answered} guesses answered");

    // The keyholder's operator sees the guessing in its metrics.
    let exposition = http_get(&metrics, "/metrics");
    let count = |outcome: &str| -> u64 {
        let series = format!("joinery_keyholder_elements_total{{outcome=\"{outcome}\"}} ");
        exposition
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} in {exposition}"))
    };
    assert!(count("over_allowance") >= 100, "{exposition}");
    assert!(count("evaluated") > rows.len() as u64 / 3, "{exposition}");

    // An analyst, and an organisation outside the agreement, are refused.
    let (code, message) = ask(&d, &b, d.analyst_cert(), &guesses[..1])
        .await
        .unwrap_err();
    assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
    joinery_ok(&["pki", "issue", "--dir", &d.pki(), "--org", "ZZ9"]);
    let outsider = (
        PathBuf::from(d.pki()).join("agents/ZZ9.pem"),
        PathBuf::from(d.pki()).join("agents/ZZ9.key"),
    );
    let (code, message) = ask(&d, &b, outsider, &guesses[..1]).await.unwrap_err();
    assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
    assert!(message.contains("lets ZZ9 send data"), "{message}");

    // The keyholders saw no NHS number, and wrote none down.
    for k in [&a, &b] {
        let ledger = std::fs::read_to_string(k.data.join("ledger.jsonl")).unwrap();
        assert!(ledger.lines().count() >= 3, "every answer is in the ledger");
        let log = std::fs::read_to_string(&k.log).unwrap();
        for number in &register {
            assert!(!ledger.contains(number.as_str()) && !log.contains(number.as_str()));
            assert!(!agent_logs.contains(number.as_str()));
        }
    }
}

/// `joinery-bench ingest --keyholders` delivers the same extract through
/// real keyholder processes, and every record arrives.
#[test]
fn the_ingest_bench_delivers_through_keyholders() {
    let output = joinery_bench_ok(&["ingest", "--records", "1500", "--keyholders", "1"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stored = |prefix: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} line in {stdout}"))
    };
    let plain = stored("SQLite ");
    assert!(plain > 1_000, "{stdout}");
    assert_eq!(stored("SQLite through 1 keyholder "), plain, "{stdout}");
}
