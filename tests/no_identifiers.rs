//! No identifiers in any output: known names, NHS numbers, local ids, dates of
//! birth and postcodes are planted in an extract (in good rows and in every
//! kind of broken row), the whole pipeline runs with debug logging and traces
//! exported to an OTLP receiver in the test, and every log, error, summary,
//! quarantine report, exported span, metric, and the gateway's database files
//! (records and the audit log) are searched for them.

mod common;

use std::path::PathBuf;

use common::*;

const MAPPING: &str = "\
dataset: csc_referrals
fields:
  local_id: Child ID
  nhs_number: NHS Number
  family_name: Surname
  given_name: Forename
  date_of_birth: { column: DOB, format: dd/mm/yyyy }
  sex: Gender
  postcode: Postcode
events:
  - type: csc_referral
    date: { column: Referral Date, format: dd/mm/yyyy }
";

/// A valid NHS number in the never-issued 999 range, built from `seed`.
fn nhs(seed: u32) -> String {
    (seed..)
        .map(|s| format!("999{:06}", s % 1_000_000))
        .find_map(|nine| {
            joinery_agent::validate::nhs_check_digit(nine.as_bytes()).map(|c| format!("{nine}{c}"))
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_identifier_reaches_any_output() {
    let receiver = otlp::Receiver::start().await;
    let d = Deployment::new().with_env(receiver.env());
    let valid = [nhs(424_242), nhs(515_151)];
    // Fails Modulus 11: the last digit is changed.
    let invalid = {
        let mut n = nhs(616_161);
        let last = n.pop().unwrap();
        n.push(if last == '9' {
            '0'
        } else {
            char::from(last as u8 + 1)
        });
        n
    };
    let rows = [
        format!(
            "QZ-CANARY-001,Quillfeather,Zebulonia,14/03/2012,2,{},ZZ9 9ZZ,01/02/2024",
            valid[0]
        ),
        format!(
            "QZ-CANARY-002,Marchbanksy,Thaddeusina,27/11/2009,1,{},ZY1 1QQ,05/06/2023",
            valid[1]
        ),
        format!("QZ-CANARY-003,Pendleworthy,Ximenaria,02/07/2015,2,{invalid},ZX3 3XX,03/03/2024"),
        // Broken rows, each carrying identifiers.
        "QZ-CANARY-004,Ravensclawe,Octaviusz,31/02/2013,1,,ZW4 4WW,01/01/2024".to_owned(),
        "QZ-CANARY-005,Sunderbeamy,Persephonez,19/08/2011,2".to_owned(),
        "QZ-CANARY-006,Thistledownie,Quentinaro,01/01/2099,1,,ZV5 5VV,01/01/2024".to_owned(),
        "QZ-CANARY-007,\"Umbrageous,Rosalindez,05/05/2014,2,,ZU6 6UU,01/01/2024".to_owned(),
        "QZ-CANARY-008,Vexleyham,Sebastiana,06/06/2016,1,,ZT7 7TT,01/01/2024".to_owned(),
    ];
    let extract = d.path("canary.csv");
    std::fs::write(
        &extract,
        format!(
            "Child ID,Surname,Forename,DOB,Gender,NHS Number,Postcode,Referral Date\n{}\n",
            rows.join("\n")
        ),
    )
    .unwrap();
    let mapping = d.path("canary.yaml");
    std::fs::write(&mapping, MAPPING).unwrap();

    let metrics = free_local_address();
    let gateway = d.start_gateway(None, &["--metrics-listen", &metrics]);
    let config = d.agent_config(COUNCIL, &gateway.address, &extract, &mapping);
    let (code, agent_out, agent_err) = finish(d.spawn_agent(&config));
    assert_eq!(code, 3, "{agent_out}\n{agent_err}");
    assert!(agent_out.contains("quarantined"), "{agent_out}");

    // A mapping naming a missing column fails before anything is sent, naming the column.
    let bad_mapping = d.path("bad.yaml");
    std::fs::write(&bad_mapping, MAPPING.replace("Postcode", "Home Postcode")).unwrap();
    let bad_config = d.agent_config(COUNCIL, &gateway.address, &extract, &bad_mapping);
    let (bad_code, bad_out, bad_err) = finish(d.spawn_agent(&bad_config));
    assert_eq!(bad_code, 1);
    assert!(bad_err.contains("\"Home Postcode\""), "{bad_err}");

    // A file without its header row, and one whose first line is blank:
    // each stops with the file and what is wrong, showing none of its rows.
    let body = rows[..2].join("\n");
    let mut refused = Vec::new();
    for (name, text, expected) in [
        (
            "headerless.csv",
            format!("{body}\n"),
            "must start with its header row",
        ),
        ("blank-first.csv", format!("\n{body}\n"), "line 1 is blank"),
        (
            "blank-then-header.csv",
            format!(
                "\r\nChild ID,Surname,Forename,DOB,Gender,NHS Number,Postcode,Referral Date\n{body}\n"
            ),
            "line 1 is blank",
        ),
    ] {
        let file = d.path(name);
        std::fs::write(&file, text).unwrap();
        let config = d.agent_config(COUNCIL, &gateway.address, &file, &mapping);
        let (code, out, err) = finish(d.spawn_agent(&config));
        assert_eq!(code, 1, "{name}: {out}\n{err}");
        assert!(
            err.contains(name) && err.contains(expected),
            "{name}: {err}"
        );
        refused.push((
            format!("{name} agent output"),
            [out.into_bytes(), err.into_bytes()].concat(),
        ));
    }

    // Query as an analyst too, so the query path's logs are searched.
    let query = d.client(
        &["query", "overlap"],
        &gateway.address,
        d.analyst_cert(),
        &[],
    );
    let exposition = http_get(&metrics, "/metrics");
    assert!(
        exposition.contains("joinery_gateway_batches_total"),
        "{exposition}"
    );
    let gateway_log = gateway.log_text();
    assert!(gateway.stop().success());

    // Spans from both processes reach the collector, joined into one trace:
    // the gateway's session is a child of the agent's run.
    let spans = receiver.spans();
    let named = |service: &str, name: &str| {
        spans
            .iter()
            .filter(|r| r.service.contains(service) && r.span.name == name)
            .map(|r| r.span.clone())
            .collect::<Vec<_>>()
    };
    let agent_runs = named("joinery-agent", "agent_run");
    let sessions = named("joinery-gateway", "ingest_session");
    assert!(
        !agent_runs.is_empty() && !sessions.is_empty(),
        "spans received: {:?}",
        spans
            .iter()
            .map(|r| (&r.service, &r.span.name))
            .collect::<Vec<_>>()
    );
    assert!(
        sessions.iter().any(|s| agent_runs
            .iter()
            .any(|a| a.trace_id == s.trace_id && a.span_id == s.parent_span_id)),
        "an ingest session must be a child of an agent run"
    );
    assert!(
        named("joinery-gateway", "batch")
            .iter()
            .any(|b| sessions.iter().any(|s| s.span_id == b.parent_span_id))
    );

    let mut haystacks: Vec<(String, Vec<u8>)> = vec![
        ("exported spans".into(), format!("{spans:?}").into_bytes()),
        ("gateway metrics".into(), exposition.into_bytes()),
        ("agent stdout".into(), agent_out.into_bytes()),
        ("agent stderr".into(), agent_err.into_bytes()),
        ("failed agent stdout".into(), bad_out.into_bytes()),
        ("failed agent stderr".into(), bad_err.into_bytes()),
        ("query output".into(), [query.stdout, query.stderr].concat()),
        ("gateway log".into(), gateway_log.into_bytes()),
    ];
    haystacks.extend(refused);
    let report = d.path(&format!(
        "quarantine/{COUNCIL}/csc_referrals.quarantine.csv"
    ));
    let quarantine = std::fs::read_to_string(&report).unwrap();
    assert!(
        quarantine.lines().count() >= 6,
        "quarantine report lists the broken rows: {quarantine}"
    );
    let mut files: Vec<PathBuf> = vec![report];
    for entry in std::fs::read_dir(d.gateway_data_dir()).unwrap() {
        files.push(entry.unwrap().path()); // joinery.db, its WAL, gateway.key
    }
    for file in files {
        haystacks.push((file.display().to_string(), std::fs::read(&file).unwrap()));
    }

    let mut needles: Vec<String> = vec![
        "Quillfeather",
        "Zebulonia",
        "Marchbanksy",
        "Thaddeusina",
        "Pendleworthy",
        "Ximenaria",
        "Ravensclawe",
        "Octaviusz",
        "Sunderbeamy",
        "Persephonez",
        "Thistledownie",
        "Quentinaro",
        "Umbrageous",
        "Rosalindez",
        "Vexleyham",
        "Sebastiana",
        "QZ-CANARY",
        "ZZ9 9ZZ",
        "ZZ99ZZ",
        "ZY1 1QQ",
        "ZX3 3XX",
        "ZW4 4WW",
        "ZV5 5VV",
        "ZU6 6UU",
        "ZT7 7TT",
        "14/03/2012",
        "2012-03-14",
        "27/11/2009",
        "2009-11-27",
        "02/07/2015",
        "2015-07-02",
        "31/02/2013",
        "19/08/2011",
        "01/01/2099",
        "05/05/2014",
        "06/06/2016",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    for number in valid.iter().chain([&invalid]) {
        needles.push(number.clone());
        needles.push(format!(
            "{} {} {}",
            &number[..3],
            &number[3..6],
            &number[6..]
        ));
    }
    // Positive control: the search does find the canaries where they are.
    let input = std::fs::read_to_string(&extract).unwrap().to_uppercase();
    // (Reformatted needles - ISO dates, spaced NHS numbers, compact postcode - are not.)
    let as_written = |n: &&String| {
        let spaced_number = n.len() == 12 && n.as_bytes()[3] == b' ';
        let iso_date = n.contains('-') && !n.starts_with("QZ");
        !spaced_number && !iso_date && n.as_str() != "ZZ99ZZ"
    };
    for needle in needles.iter().filter(as_written) {
        assert!(
            input.contains(&needle.to_uppercase()),
            "control: {needle} not in the input"
        );
    }
    let mut leaks = Vec::new();
    for (name, bytes) in &haystacks {
        let text = String::from_utf8_lossy(bytes).to_uppercase();
        for needle in &needles {
            if text.contains(&needle.to_uppercase()) {
                leaks.push(format!("{needle} in {name}"));
            }
        }
    }
    assert!(leaks.is_empty(), "identifiers leaked: {leaks:?}");
}
