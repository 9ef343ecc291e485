//! Enforcement of signed agreements at both ends, against real processes:
//! a hand-built malicious client, agent and gateway disagreeing on the
//! agreement, agreements that are unsigned, tampered with, expired or not yet
//! valid, an agreement expiring mid-stream, and the National Data Opt-out.

mod common;

use common::ingest::*;
use common::*;
use joinery_proto::v1::query_client::QueryClient;
use joinery_proto::v1::{AckStatus, Batch, CountsRequest, Event, RejectReason};
use tonic::Code;

/// A one-record batch whose record is changed by `edit`.
fn malicious(dataset: &str, seed: u8, edit: impl Fn(&mut joinery_proto::v1::Record)) -> Batch {
    let mut batch = batch_for(dataset, seed, 1);
    let body = batch.body.as_mut().unwrap();
    edit(&mut body.records[0]);
    batch.batch_id = body.digest();
    batch
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malicious_client_cannot_store_what_the_agreement_forbids() {
    let d = Deployment::new();
    let gateway = d.start_gateway(None, &[]);
    let mut session = Session::open(&gateway.address, org_config(&d, SALT), hello(&d, SALT))
        .await
        .unwrap();

    let cases: Vec<(&str, Batch, RejectReason)> = vec![
        (
            "a dataset it is not party to",
            malicious("csc_referrals", 1, |_| {}),
            RejectReason::DatasetNotAllowed,
        ),
        (
            "an extra field",
            malicious("salt_contacts", 2, |r| {
                r.attributes.insert("family_name".into(), "SMITH".into());
            }),
            RejectReason::FieldNotAllowed,
        ),
        (
            "a day-precision date of birth",
            malicious("salt_contacts", 3, |r| {
                r.attributes
                    .insert("date_of_birth".into(), "2015-04-03".into());
            }),
            RejectReason::FieldNotAllowed,
        ),
        (
            "a full date where the month is allowed",
            malicious("salt_contacts", 4, |r| {
                r.attributes
                    .insert("birth_month".into(), "2015-04-03".into());
            }),
            RejectReason::ValueNotAllowed,
        ),
        (
            "a full postcode where the district is allowed",
            malicious("salt_contacts", 5, |r| {
                r.attributes
                    .insert("postcode_district".into(), "LS6 2AB".into());
            }),
            RejectReason::ValueNotAllowed,
        ),
        (
            "an event type the agreement does not list",
            malicious("salt_contacts", 6, |r| {
                r.events.push(Event {
                    event_type: "camhs_referral".into(),
                    date: "2024-01-02".into(),
                    attributes: Default::default(),
                });
            }),
            RejectReason::EventNotAllowed,
        ),
    ];
    for (case, batch, reason) in cases {
        let ack = session.send(batch).await.unwrap();
        assert_eq!(ack.status(), AckStatus::Rejected, "{case}");
        assert_eq!(ack.reason(), reason, "{case}: {}", ack.detail);
        assert!(
            !ack.detail.contains("SMITH") && !ack.detail.contains("2AB"),
            "no values in reasons: {}",
            ack.detail
        );
    }
    // A whole batch is rejected when one record in it breaks the rules.
    let mut mixed = batch(7, 20);
    let body = mixed.body.as_mut().unwrap();
    body.records[13]
        .attributes
        .insert("ethnicity".into(), "WBRI".into());
    mixed.batch_id = body.digest();
    let ack = session.send(mixed).await.unwrap();
    assert_eq!(ack.reason(), RejectReason::FieldNotAllowed);
    assert!(ack.detail.contains("record 13"), "{}", ack.detail);

    // Nothing of any of it was stored.
    let mut client = QueryClient::new(
        channel(&gateway.address, org_config(&d, SALT))
            .await
            .unwrap(),
    );
    assert!(
        client
            .counts(CountsRequest {})
            .await
            .unwrap()
            .into_inner()
            .datasets
            .is_empty()
    );
    // An allowed batch still goes through on the same session.
    assert_eq!(
        session.send(batch(8, 3)).await.unwrap().status(),
        AckStatus::Committed
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_and_gateway_must_hold_the_same_signed_agreement() {
    let d = Deployment::new();
    let gateway = d.start_gateway(None, &[]);

    let mut other_version = hello(&d, CAMHS);
    other_version.agreement_version = 2;
    let Err((code, message)) =
        Session::open(&gateway.address, org_config(&d, CAMHS), other_version).await
    else {
        panic!("an agreement version the gateway does not hold must be refused");
    };
    assert_eq!(code, Code::FailedPrecondition, "{message}");

    // The agent holds a different text of the same id and version, properly signed.
    let synth = d.synth(50, 42);
    let variant = write_signed_agreement(&d.path("agent-copy"), |t| {
        t.replace("retention_days: 1095", "retention_days: 1000")
    });
    let config = d.agent_config_under(
        &variant,
        CAMHS,
        &gateway.address,
        &synth.join("extracts/camhs_referrals.csv"),
        &synth.join("mappings/camhs_referrals.yaml"),
    );
    let (code, _, stderr) = finish(d.spawn_agent(&config));
    assert_eq!(code, 1);
    assert!(stderr.contains("digests differ"), "{stderr}");

    // An organisation that is not a party (a valid certificate nonetheless).
    joinery_ok(&["pki", "issue", "--dir", &d.pki(), "--org", "RZZ"]);
    let Err((code, _)) =
        Session::open(&gateway.address, org_config(&d, "RZZ"), hello(&d, "RZZ")).await
    else {
        panic!("a non-party must be refused");
    };
    assert_eq!(code, Code::PermissionDenied);
}

/// A new version of an agreement, signed and dropped into the gateway's
/// agreements folder, is put in force without a restart and audited; a
/// file that does not load (unsigned) changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_agreement_version_is_put_in_force_without_a_restart() {
    let d = Deployment::new();
    let gateway = d.start_gateway(None, &[]);
    let synth = d.synth(50, 7);
    let version_two = write_signed_agreement(&d.path("version-2"), |t| {
        t.replacen("version: 1", "version: 2", 1)
    });
    let config = d.agent_config_under(
        &version_two,
        CAMHS,
        &gateway.address,
        &synth.join("extracts/camhs_referrals.csv"),
        &synth.join("mappings/camhs_referrals.yaml"),
    );
    let (code, _, stderr) = finish(d.spawn_agent(&config));
    assert_eq!(code, 1, "the gateway does not hold version 2 yet: {stderr}");

    // Unsigned first (as while it is being copied in): refused, nothing changes.
    let dropped = d.agreements_dir().join("version-2.yaml");
    std::fs::copy(&version_two, &dropped).unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let (code, _, _) = finish(d.spawn_agent(&config));
    assert_eq!(code, 1, "an unsigned file is not put in force");
    // Its signatures arrive: in force within a few seconds.
    std::fs::copy(
        joinery_policies::signing::signature_path(&version_two),
        joinery_policies::signing::signature_path(&dropped),
    )
    .unwrap();
    let mut delivered = false;
    for _ in 0..30 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let (code, stdout, _) = finish(d.spawn_agent(&config));
        if code == 0 || code == 3 {
            assert!(stdout.contains("stored"), "{stdout}");
            delivered = true;
            break;
        }
    }
    assert!(delivered, "version 2 was not put in force");
    assert!(gateway.stop().success());
    let report = d.audit_report_today();
    assert!(
        report.contains("children-at-risk-stratification v2 (digest"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_refuse_agreements_that_are_not_in_force() {
    let d = Deployment::new();
    let gateway = d.start_gateway(None, &[]);
    let synth = d.synth(50, 42);
    let extract = synth.join("extracts/salt_contacts.csv");
    let mapping = synth.join("mappings/salt_contacts.yaml");
    let today = time::OffsetDateTime::now_utc().date();
    let days = time::Duration::days;

    let cases: Vec<(&str, std::path::PathBuf, &str)> = vec![
        (
            "unsigned",
            {
                let path = write_signed_agreement(&d.path("unsigned"), |t| t);
                std::fs::remove_file(joinery_policies::signing::signature_path(&path)).unwrap();
                path
            },
            "missing or invalid signatures",
        ),
        (
            "tampered",
            {
                let path = write_signed_agreement(&d.path("tampered"), |t| t);
                let text = std::fs::read_to_string(&path).unwrap();
                std::fs::write(
                    &path,
                    text.replace("date_of_birth: month", "date_of_birth: keep"),
                )
                .unwrap();
                path
            },
            "missing or invalid signatures",
        ),
        (
            "expired",
            write_signed_agreement(&d.path("expired"), |t| {
                with_dates(t, today - days(400), today - days(100), today - days(1))
            }),
            "expired",
        ),
        (
            "not yet valid",
            write_signed_agreement(&d.path("future"), |t| {
                with_dates(t, today + days(10), today + days(180), today + days(365))
            }),
            "comes into force",
        ),
    ];
    for (case, agreement, expected) in cases {
        let config = d.agent_config_under(&agreement, SALT, &gateway.address, &extract, &mapping);
        let (code, stdout, stderr) = finish(d.spawn_agent(&config));
        assert_eq!(code, 1, "{case}: {stdout}");
        assert!(stderr.contains(expected), "{case}: {stderr}");
    }
    let mut client = QueryClient::new(
        channel(&gateway.address, org_config(&d, SALT))
            .await
            .unwrap(),
    );
    assert!(
        client
            .counts(CountsRequest {})
            .await
            .unwrap()
            .into_inner()
            .datasets
            .is_empty(),
        "nothing was sent"
    );

    // A mapping for a dataset the organisation may not send is refused before sending.
    let council_mapping = synth.join("mappings/csc_referrals.yaml");
    let config = d.agent_config(
        SALT,
        &gateway.address,
        &synth.join("extracts/csc_referrals.csv"),
        &council_mapping,
    );
    let (code, _, stderr) = finish(d.spawn_agent(&config));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("does not let RY9 send dataset csc_referrals"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agreement_expiring_mid_stream_stops_acceptance() {
    let d = Deployment::new();
    let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(6);
    let expires = expires
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    write_signed_agreement(&d.agreements_dir(), |t| {
        let line = t
            .lines()
            .find(|l| l.starts_with("expires:"))
            .unwrap()
            .to_owned();
        t.replace(&line, &format!("expires: {expires}"))
    });
    let gateway = d.start_gateway(None, &[]);
    let mut session = Session::open(&gateway.address, org_config(&d, SALT), hello(&d, SALT))
        .await
        .unwrap();
    assert_eq!(
        session.send(batch(1, 5)).await.unwrap().status(),
        AckStatus::Committed
    );
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    let ack = session.send(batch(2, 5)).await.unwrap();
    assert_eq!(ack.status(), AckStatus::Rejected);
    assert_eq!(
        ack.reason(),
        RejectReason::AgreementNotInForce,
        "{}",
        ack.detail
    );
    // New sessions are refused too.
    assert!(
        Session::open(&gateway.address, org_config(&d, SALT), hello(&d, SALT))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn opted_out_people_are_withheld_and_counted() {
    let d = Deployment::new();
    let synth = d.synth(300, 5);
    // Opt out every fifth valid NHS number the council holds.
    let extract = synth.join("extracts/csc_referrals.csv");
    let rows = csv_rows(&extract, b',');
    let numbers: std::collections::BTreeSet<String> = rows
        .iter()
        .filter_map(|r| joinery_agent::validate::nhs_number(&r[5]).ok())
        .collect();
    let opted_out: Vec<&String> = numbers.iter().step_by(5).collect();
    assert!(opted_out.len() > 5);
    std::fs::write(
        d.opt_out_list(),
        opted_out
            .iter()
            .map(|n| format!("{n}\n"))
            .collect::<String>(),
    )
    .unwrap();

    let gateway = d.start_gateway(None, &[]);
    let config = d.agent_config(
        COUNCIL,
        &gateway.address,
        &extract,
        &synth.join("mappings/csc_referrals.yaml"),
    );
    let (_, stdout, stderr) = finish(d.spawn_agent(&config));

    // Broken rows are quarantined before the opt-out is checked; every other
    // row of an opted-out child is withheld.
    let quarantined_lines: std::collections::BTreeSet<u64> = csv_rows(
        &d.path(&format!(
            "quarantine/{COUNCIL}/csc_referrals.quarantine.csv"
        )),
        b',',
    )
    .iter()
    .filter(|r| &r[2] == "quarantined")
    .map(|r| r[1].parse().unwrap())
    .collect();
    let withheld_rows = rows
        .iter()
        .filter(|r| !quarantined_lines.contains(&r.position().unwrap().line()))
        .filter(|r| {
            joinery_agent::validate::nhs_number(&r[5]).is_ok_and(|n| opted_out.contains(&&n))
        })
        .count();
    assert!(withheld_rows > 0);
    assert!(
        stdout.contains(&format!(
            "withheld {withheld_rows:>6}  National Data Opt-out"
        )),
        "{stdout}\n{stderr}"
    );

    let db = open_database(&d.sqlite_url()).await;
    let stored: i64 = sqlx::Row::get(
        &sqlx::query("SELECT COUNT(*) AS n FROM records")
            .fetch_one(&db)
            .await
            .unwrap(),
        "n",
    );
    assert_eq!(
        stored as usize,
        rows.len() - quarantined_lines.len() - withheld_rows
    );
}

#[test]
fn policy_check_reports_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/examples/minimal.yaml");
    let text = std::fs::read_to_string(example).unwrap().replace(
        "date_of_birth: year",
        "date_of_birth: keep\n      given_name: keep",
    );
    let path = dir.path().join("draft.yaml");
    std::fs::write(&path, &text).unwrap();
    let output = joinery()
        .args(["policy", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .position(|l| l.contains("given_name: keep"))
        .unwrap()
        + 1;
    assert!(
        stdout.contains(&format!(
            "{}:{line}:7: error: referrals.given_name",
            path.display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("help: names never leave the agency"),
        "{stdout}"
    );
    assert!(stdout.contains("1 error,"), "{stdout}");

    // explain and diff on the shipped examples work from the command line too.
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/examples");
    let html = joinery_ok(&[
        "policy",
        "explain",
        "--format",
        "html",
        examples.join("minimal.yaml").to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&html.stdout).starts_with("<!DOCTYPE html>"));
    let widened = dir.path().join("v2.yaml");
    std::fs::write(
        &widened,
        std::fs::read_to_string(examples.join("minimal.yaml"))
            .unwrap()
            .replace("version: 1", "version: 2")
            .replace("retention_days: 365", "retention_days: 730"),
    )
    .unwrap();
    let diff = joinery()
        .args(["policy", "diff"])
        .arg(examples.join("minimal.yaml"))
        .arg(&widened)
        .output()
        .unwrap();
    assert_eq!(diff.status.code(), Some(2), "a widening diff exits 2");
    assert!(
        String::from_utf8_lossy(&diff.stdout)
            .contains("WIDENS datasets.referrals.retention_days: 365 -> 730 days")
    );
}

/// An agreement that coarsens the date of birth to its quarter and the
/// postcode to its area: the agents send only those, the gateway accepts
/// and stores nothing finer, analysts still get ages (counted from the
/// quarter's first day), and identifiability reads the coarsened values.
#[tokio::test(flavor = "multi_thread")]
async fn an_agreement_coarsened_to_birth_quarter_and_postcode_area_is_sent_and_answered() {
    let d = Deployment::new();
    write_signed_agreement(&d.agreements_dir(), |t| {
        t.replace("date_of_birth: month", "date_of_birth: quarter")
            .replace("postcode: district", "postcode: area")
    });
    let gateway = d.start_gateway(None, &[]);
    let synth = d.synth(400, 3);
    d.deliver(&gateway.address, &synth, &THREE_AGENCIES);
    let db = open_database(&d.sqlite_url()).await;
    let finer: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM records WHERE birth_month IS NOT NULL OR postcode_district IS NOT NULL",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        finer, 0,
        "nothing finer than the agreement allows is stored"
    );
    let attributes: Vec<String> = sqlx::query_scalar("SELECT attributes FROM records")
        .fetch_all(&db)
        .await
        .unwrap();
    assert!(attributes.len() > 400, "{} records", attributes.len());
    let (mut quarters, mut areas) = (0, 0);
    for text in &attributes {
        let a: std::collections::BTreeMap<String, String> = serde_json::from_str(text).unwrap();
        if let Some(q) = a.get("birth_quarter") {
            let (year, quarter) = q.split_once("-Q").unwrap();
            assert!(
                year.len() == 4 && ["1", "2", "3", "4"].contains(&quarter),
                "{q}"
            );
            quarters += 1;
        }
        if let Some(area) = a.get("postcode_area") {
            assert!(
                (1..=2).contains(&area.len()) && area.bytes().all(|b| b.is_ascii_uppercase()),
                "{area}"
            );
            areas += 1;
        }
    }
    assert!(quarters * 10 > attributes.len() * 9, "{quarters} quarters");
    assert!(areas * 10 > attributes.len() * 8, "{areas} areas");

    // Ages by band, as an analyst: most children have one.
    let question = d.path("ages.yaml");
    std::fs::write(&question, "rows: { age_bands: [0, 5, 11, 16] }\n").unwrap();
    let out = d.client(
        &[
            "query",
            "run",
            question.to_str().unwrap(),
            "--format",
            "csv",
        ],
        &gateway.address,
        d.analyst_cert(),
        &[],
    );
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let count = |label: &str| -> f64 {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{label},")))
            .and_then(|l| l.split(',').nth(1)?.parse().ok())
            .unwrap_or(0.0)
    };
    let aged: f64 = ["0-4", "5-10", "11-15", "16+"]
        .iter()
        .map(|l| count(l))
        .sum();
    // A small "unknown" is suppressed, and one band with it (so it cannot
    // be had from the total): most children are still in a band shown.
    assert!(
        aged > 0.6 * count("total") && aged > 5.0 * count("unknown"),
        "{table}"
    );

    // Identifiability counts the children by what is stored: the quarter
    // and the area.
    let report = d.on_store(&["gateway", "identifiability"], None);
    let stored = report
        .lines()
        .find(|l| l.starts_with("  as stored"))
        .unwrap_or_else(|| panic!("{report}"));
    let children: u32 = stored
        .split_once("): ")
        .and_then(|(_, rest)| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{stored}"));
    assert!(children > 300, "{report}");
}
