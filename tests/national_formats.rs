//! The national formats end to end: `joinery synth` writes the council's CIN
//! census XML, SSDA903 tables and Annex A lists, the CAMHS trust's MHSDS
//! tables and the community trust's CSDS tables and FHIR export, and the
//! council's case-management table in SQLite; three agents
//! (separate processes) read them under the example agreement and stream
//! them over mutual TLS to a gateway on SQLite. Every row the readers produce
//! is stored, with each of its events the agreement allows, none is
//! quarantined, no NHS number or postcode reaches a log or report, and each
//! council child is one person whichever of its datasets (with the NHS number
//! or without) a record came in.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::*;
use joinery_agent::config::SourceConfig;
use joinery_agent::row::RowOutcome;
use sqlx::Row;

/// (organisation, source kind, dataset, path under `synth/national/ORG/`).
const SOURCES: &[(&str, &str, &str, &str)] = &[
    (COUNCIL, "cin_census", "cin", "cin_census.xml"),
    (COUNCIL, "ssda903", "lac", "ssda903"),
    (COUNCIL, "annex_a", "annex_a", "annex_a"),
    (CAMHS, "mhsds", "camhs", "mhsds"),
    (SALT, "csds", "salt", "csds"),
    (SALT, "fhir", "salt_fhir", "fhir"),
    // The council's case-management database (already in the agreement).
    (COUNCIL, "sql", "csc_cases", "cases.sqlite"),
];

/// The collection year (ending 31 March) holding today, as synth dates its
/// returns.
fn collection_year() -> i32 {
    let today = time::OffsetDateTime::now_utc().date();
    if today.month() <= time::Month::March {
        today.year()
    } else {
        today.year() + 1
    }
}

fn source_config(
    synth: &std::path::Path,
    org: &str,
    kind: &str,
    dataset: &str,
    file: &str,
) -> SourceConfig {
    let dir = synth.join("national").join(org);
    let yearly = matches!(kind, "cin_census" | "ssda903");
    serde_json::from_value(match kind {
        "sql" => serde_json::json!({
            "kind": kind,
            "url": format!("sqlite://{}", dir.join(file).display()),
            "table": "referrals",
            "mapping": dir.join("cases.yaml"),
            "watermark": "updated_at",
            "key": "id",
        }),
        _ => serde_json::json!({
            "kind": kind,
            "path": dir.join(file),
            "dataset": dataset,
            "year": yearly.then(collection_year),
        }),
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_national_format_reaches_the_gateway_whole() {
    // The example agreement lists every one of these datasets.
    let d = Deployment::new();
    let agreement: joinery_policies::model::Agreement =
        serde_saphyr::from_str(&std::fs::read_to_string(d.agreement()).unwrap()).unwrap();
    let synth = d.synth(400, 11);
    let today = time::OffsetDateTime::now_utc().date();

    // What the readers make of the files, read here in-process.
    let mut expected_records: BTreeMap<&str, u64> = BTreeMap::new();
    // For the analyst's query below: the council's children with a CP plan,
    // and each council child's sex, from the CIN census.
    let mut with_cp_plan = std::collections::BTreeSet::new();
    let mut sex_of: BTreeMap<String, String> = BTreeMap::new();
    let mut born: BTreeMap<String, time::Date> = BTreeMap::new();
    let mut expected_events: BTreeMap<(String, String), u64> = BTreeMap::new();
    let formats = joinery_agent::format::Registry::built_in().unwrap();
    for (org, kind, dataset, file) in SOURCES {
        let config = source_config(&synth, org, kind, dataset, file);
        let parts = joinery_agent::format::open(&config, &formats, today).unwrap();
        for (_, row) in joinery_agent::format::read_all(parts).unwrap() {
            match row.outcome {
                RowOutcome::Valid { row, .. } => {
                    *expected_records.entry(dataset).or_default() += 1;
                    if *kind == "cin_census" {
                        if let Some(sex) = &row.sex {
                            sex_of.insert(row.local_id.clone(), sex.clone());
                        }
                        if let Some(dob) = row.date_of_birth {
                            born.insert(row.local_id.clone(), dob);
                        }
                        if row.events.iter().any(|e| e.event_type == "cp_plan_start") {
                            with_cp_plan.insert(row.local_id.clone());
                        }
                    }
                    let allowed = &agreement.datasets[*dataset].events;
                    for event in row
                        .events
                        .iter()
                        .filter(|e| allowed.contains_key(&e.event_type))
                    {
                        *expected_events
                            .entry(((*dataset).to_owned(), event.event_type.clone()))
                            .or_default() += 1;
                    }
                }
                RowOutcome::Quarantined(p) => panic!("{kind}: {p}"),
            }
        }
    }

    assert_eq!(
        expected_records.len(),
        SOURCES.len(),
        "every source has rows"
    );

    let gateway = d.start_gateway(None, &[]);
    let mut agents = Vec::new();
    let mut configs = BTreeMap::new();
    for org in [COUNCIL, CAMHS, SALT] {
        // The harness writes a CSV source; replace it with the org's national ones.
        let config = d.agent_config(org, &gateway.address, &PathBuf::new(), &PathBuf::new());
        let text = std::fs::read_to_string(&config).unwrap();
        let head = text.split("sources:").next().unwrap().to_owned();
        let sources: Vec<SourceConfig> = SOURCES
            .iter()
            .filter(|(o, ..)| *o == org)
            .map(|(o, kind, dataset, file)| source_config(&synth, o, kind, dataset, file))
            .collect();
        let sources = serde_saphyr::to_string(&sources).unwrap();
        std::fs::write(&config, format!("{head}sources:\n{sources}")).unwrap();
        agents.push((org, d.spawn_agent(&config)));
        configs.insert(org, config);
    }
    let mut outputs = String::new();
    for (org, agent) in agents {
        let (code, out, err) = finish(agent);
        assert_eq!(code, 0, "{org}: {out}\n{err}");
        outputs.push_str(&out);
        outputs.push_str(&err);
    }
    outputs.push_str(&gateway.log_text());
    for report in std::fs::read_dir(d.path("quarantine")).unwrap().flatten() {
        for file in std::fs::read_dir(report.path()).unwrap().flatten() {
            outputs.push_str(&std::fs::read_to_string(file.path()).unwrap());
        }
    }
    // No NHS number or postcode of the synthetic children in any agent or
    // gateway output or quarantine report (debug logging is on).
    let council = csv_rows(&synth.join("extracts/csc_referrals.csv"), b',');
    let identifiers: Vec<&str> = council
        .iter()
        .flat_map(|r| [r.get(5).unwrap_or(""), r.get(6).unwrap_or("")])
        .filter(|v| v.len() >= 6)
        .collect();
    assert!(identifiers.len() > 100);
    for identifier in identifiers {
        assert!(
            !outputs.contains(identifier),
            "an identifier reached the output"
        );
    }
    gateway.stop();
    d.on_store(&["gateway", "relink", "--full"], None);

    let db = open_database(&d.sqlite_url()).await;
    // Each council child is one person, whichever of its datasets (with the
    // NHS number or without) a record came in.
    let truth = csv_rows(&synth.join("ground_truth.csv"), b',');
    let council_children = truth.iter().filter(|r| &r[1] == COUNCIL).count() as i64;
    let council_people: i64 = sqlx::query_scalar(
        "SELECT COUNT(DISTINCT COALESCE(s.spine_id, r.person_id)) FROM records r \
         LEFT JOIN person_spine s ON s.person_id = r.person_id WHERE r.organisation = $1",
    )
    .bind(COUNCIL)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(council_people, council_children);
    let mut stored_records: BTreeMap<String, u64> = BTreeMap::new();
    for row in sqlx::query("SELECT dataset, COUNT(*) AS n FROM records GROUP BY dataset")
        .fetch_all(&db)
        .await
        .unwrap()
    {
        stored_records.insert(row.get("dataset"), row.get::<i64, _>("n") as u64);
    }
    for (dataset, n) in &expected_records {
        assert_eq!(stored_records.get(*dataset), Some(n), "{dataset} records");
    }
    let mut stored_events: BTreeMap<(String, String), u64> = BTreeMap::new();
    for row in sqlx::query(
        "SELECT r.dataset AS dataset, e.event_type AS event_type, COUNT(*) AS n FROM events e JOIN records r \
         ON r.person_id = e.person_id AND r.organisation = e.organisation AND r.batch_id = e.batch_id \
         AND r.record_index = e.record_index GROUP BY r.dataset, e.event_type",
    )
    .fetch_all(&db)
    .await
    .unwrap()
    {
        stored_events.insert((row.get("dataset"), row.get("event_type")), row.get::<i64, _>("n") as u64);
    }
    stored_events.retain(|(dataset, _), _| expected_records.contains_key(dataset.as_str()));
    assert_eq!(stored_events, expected_events);
    // The events analysts need are there: CP plans, care episodes, health
    // checks, CAMHS referrals and contacts.
    for (dataset, event) in [
        ("cin", "cp_plan_start"),
        ("lac", "lac_episode_start"),
        ("lac", "health_assessment"),
        ("camhs", "camhs_referral"),
        ("camhs", "camhs_contact"),
        ("salt_fhir", "encounter"),
    ] {
        assert!(
            stored_events
                .get(&(dataset.to_owned(), event.to_owned()))
                .is_some_and(|n| *n > 0),
            "no {event} in {dataset}"
        );
    }

    // A case reviewer joins the agreement with a row-level role, and
    // parties may re-identify their own records for direct care (the
    // agreement is signed again); an outsider holds no role.
    write_signed_agreement(&d.agreements_dir(), |text| {
        text.replace(
            "roles:\n",
            "roles:\n  case_review:\n    description: Case review.\n    access: row_level\n    analysts: [case-reviewer]\n",
        )
        .replace(
            "  secondary_suppression: true\n",
            "  secondary_suppression: true\n  reidentify_for_direct_care: true\n",
        )
    });
    for name in ["case-reviewer", "outsider"] {
        joinery_ok(&["pki", "issue", "--dir", &d.pki(), "--analyst", name]);
    }
    let analyst = |name: &str| {
        (
            d.path(&format!("pki/analysts/analyst-{name}.pem")),
            d.path(&format!("pki/analysts/analyst-{name}.key")),
        )
    };

    // An analyst's query through the CLI: children with a CP plan, by sex,
    // disclosure-controlled, against the count from the CIN census itself.
    let gateway = d.start_gateway(None, &[]);
    let query = d.path("cp-plans.yaml");
    std::fs::write(
        &query,
        "cohort: { has: { event: cp_plan_start, dataset: cin } }\nrows: sex\n",
    )
    .unwrap();
    let explained = joinery_ok(&["query", "explain", query.to_str().unwrap()]);
    assert_eq!(
        String::from_utf8_lossy(&explained.stdout).trim(),
        "People: with a cp_plan_start event in cin; counted by sex. Ages and recent periods are counted at the reference date (today when none is given)."
    );
    let out = d.client(
        &["query", "run", query.to_str().unwrap()],
        &gateway.address,
        d.analyst_cert(),
        &["--format", "json"],
    );
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut by_sex = [0u64; 4];
    for child in &with_cp_plan {
        let at = ["female", "male", "indeterminate"]
            .iter()
            .position(|s| sex_of.get(child).map(String::as_str) == Some(*s))
            .unwrap_or(3);
        by_sex[at] += 1;
    }
    assert!(
        by_sex[0] + by_sex[1] > 8,
        "enough CP plans to show: {by_sex:?}"
    );
    // Each cell is the true count to within the noise (SD 5, six of them
    // and the rounding) or suppressed; suppressed only where the noisy
    // count could be below 8.
    let rows = table["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 5, "female, male, indeterminate, unknown, total");
    let truths = by_sex.iter().copied().chain([by_sex.iter().sum()]);
    for (row, truth) in rows.iter().zip(truths) {
        match &row["cells"]["all"] {
            serde_json::Value::Number(n) => {
                let shown = n.as_u64().unwrap();
                assert!(
                    shown.abs_diff(truth) <= 32,
                    "{}: {shown} for {truth}",
                    row["label"]
                );
            }
            other => {
                assert_eq!(other, "suppressed", "{}", row["label"]);
                assert!(truth <= 7 + 30, "{}: {truth} suppressed", row["label"]);
            }
        }
    }
    // The same table as CSV; and an agency's own certificate may not ask.
    let csv = d.client(
        &["query", "run", query.to_str().unwrap()],
        &gateway.address,
        d.analyst_cert(),
        &["--format", "csv"],
    );
    assert!(String::from_utf8_lossy(&csv.stdout).starts_with("sex,all,total\nfemale,"));
    let refused = joinery()
        .args([
            "query",
            "run",
            query.to_str().unwrap(),
            "--gateway",
            &gateway.address,
            "--server-name",
            "localhost",
        ])
        .args(["--tls-ca", d.ca().to_str().unwrap()])
        .args(["--tls-cert", d.org_cert(COUNCIL).0.to_str().unwrap()])
        .args(["--tls-key", d.org_cert(COUNCIL).1.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("analyst certificate"));

    // Differencing: the same cohort less the few children of one age is
    // answered like any other (no refusal to learn from), with its own
    // noise; the first question asked again gets the first answer again.
    let today = time::OffsetDateTime::now_utc().date();
    let age_of = |dob: time::Date| {
        let first = dob.replace_day(1).unwrap();
        let mut age = today.year() - first.year();
        if (today.month() as u8) < (first.month() as u8) {
            age -= 1;
        }
        age
    };
    let mut by_age: BTreeMap<i32, usize> = BTreeMap::new();
    for child in &with_cp_plan {
        if let Some(dob) = born.get(child) {
            *by_age.entry(age_of(*dob)).or_default() += 1;
        }
    }
    let (few_age, _) = by_age
        .iter()
        .find(|(_, n)| (2..=5).contains(*n))
        .expect("an age with 2 to 5 children on CP plans");
    let narrower = d.path("cp-plans-less-one-age.yaml");
    std::fs::write(
        &narrower,
        format!(
            "cohort: {{ all: [ {{ has: {{ event: cp_plan_start, dataset: cin }} }}, {{ not: {{ age: {{ from: {few_age}, to: {few_age} }} }} }} ] }}\nrows: sex\n"
        ),
    )
    .unwrap();
    d.client(
        &["query", "run", narrower.to_str().unwrap()],
        &gateway.address,
        d.analyst_cert(),
        &[],
    );
    let again = d.client(
        &["query", "run", query.to_str().unwrap()],
        &gateway.address,
        d.analyst_cert(),
        &["--format", "json"],
    );
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["rows"], table["rows"], "the first release, replayed");

    // The same query over HTTP/JSON on the gateway's port, with the same
    // certificate: the same answer; an agency's certificate is refused.
    let (status, body) = http_post(
        &d,
        &gateway.address,
        d.analyst_cert(),
        &std::fs::read_to_string(&query).unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let over_http: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(over_http["rows"], table["rows"]);
    let (status, body) = http_post(&d, &gateway.address, d.org_cert(COUNCIL), "rows: sex").await;
    assert_eq!(status, 403, "{body}");
    // What may be asked about, over HTTP and on the command line: the
    // agreement's parties and what they share; an agency may not ask.
    let (status, body) = http_request(
        &d,
        &gateway.address,
        d.analyst_cert(),
        "GET /v1/vocabulary",
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let words: serde_json::Value = serde_json::from_str(&body).unwrap();
    let codes: Vec<&str> = words["organisations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&COUNCIL), "{body}");
    assert!(body.contains("cp_plan_start"), "{body}");
    let (status, body) = http_request(
        &d,
        &gateway.address,
        d.org_cert(COUNCIL),
        "GET /v1/vocabulary",
        "",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let printed = d.client(
        &["query", "vocabulary"],
        &gateway.address,
        d.analyst_cert(),
        &[],
    );
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(
        printed.contains(COUNCIL) && printed.contains("cp_plan_start"),
        "{printed}"
    );
    let (status, body) = http_post(&d, &gateway.address, d.analyst_cert(), "rows: postcode").await;
    assert_eq!(status, 400, "{body}");

    // Roles. The row-level extract: one row per child with a CP plan in the
    // CIN census, under 32-hex project pseudonyms, the same on a second
    // run and over HTTP.
    let extract = |who: (PathBuf, PathBuf)| {
        joinery()
            .args(["query", "extract", query.to_str().unwrap()])
            .args(["--gateway", &gateway.address, "--server-name", "localhost"])
            .args(["--tls-ca", d.ca().to_str().unwrap()])
            .args(["--tls-cert", who.0.to_str().unwrap()])
            .args(["--tls-key", who.1.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let rows = extract(analyst("case-reviewer"));
    assert!(
        rows.status.success(),
        "{}",
        String::from_utf8_lossy(&rows.stderr)
    );
    let csv_text = String::from_utf8_lossy(&rows.stdout).into_owned();
    let mut lines = csv_text.lines();
    assert_eq!(lines.next(), Some("person,sex,column,value"));
    let people: Vec<&str> = lines.map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(people.len(), with_cp_plan.len(), "one row per child");
    assert!(people.windows(2).all(|w| w[0] < w[1]), "distinct, in order");
    assert!(
        people
            .iter()
            .all(|p| p.len() == 32 && p.chars().all(|c| c.is_ascii_hexdigit()))
    );
    let stored_ids: std::collections::HashSet<String> =
        sqlx::query("SELECT person_id FROM records")
            .fetch_all(&db)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect();
    assert!(!stored_ids.is_empty());
    assert!(
        people.iter().all(|p| !stored_ids
            .iter()
            .any(|id| id.contains(p) || p.contains(id.as_str()))),
        "project pseudonyms are not the stored person ids"
    );
    assert_eq!(extract(analyst("case-reviewer")).stdout, rows.stdout);
    let (status, body) = http_request(
        &d,
        &gateway.address,
        analyst("case-reviewer"),
        "POST /v1/extract",
        &std::fs::read_to_string(&query).unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let over_http: serde_json::Value = serde_json::from_str(&body).unwrap();
    let http_people: Vec<&str> = over_http["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["person"].as_str().unwrap())
        .collect();
    assert_eq!(http_people, people);
    // An aggregates role may not extract; an analyst without a role may
    // not even ask for a table.
    let refused = extract(d.analyst_cert());
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no row-level role"));
    // The IG lead's report counts an extract's rows as rows.
    let report = d.audit_report_today();
    assert!(
        report.contains(&format!(
            "x extract, {} person rows released",
            3 * people.len()
        )),
        "{report}"
    );
    let (status, body) = http_post(&d, &gateway.address, analyst("outsider"), "rows: sex").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("holds no role"), "{body}");

    // Direct care: the council's agent resolves the cohort to its own local
    // ids (the children with a CP plan in its CIN census); the CAMHS agent
    // gets only its own (none of the council's ids); an analyst may not.
    let resolve = |org: &str| {
        let config = &configs[org];
        let text = std::fs::read_to_string(config).unwrap();
        let old = text
            .split("address: '")
            .nth(1)
            .and_then(|rest| rest.split('\'').next())
            .unwrap()
            .to_owned();
        std::fs::write(config, text.replace(&old, &gateway.address)).unwrap();
        let out = joinery()
            .args(["agent", "resolve", "--config", config.to_str().unwrap()])
            .args(["--query", query.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        let ids: std::collections::BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .map(str::to_owned)
            .collect();
        (ids, stderr)
    };
    let (ids, _) = resolve(COUNCIL);
    assert_eq!(ids, with_cp_plan, "the council's own children on CP plans");
    let (camhs, camhs_stderr) = resolve(CAMHS);
    assert!(camhs.iter().all(|id| !with_cp_plan.contains(id)));

    // A built-in indicator on the synthetic returns, exactly: the children
    // looked after at the end of the collection year, as the council's own
    // local ids (direct care) and as a row-level count, against what the
    // SSDA903 episodes themselves say (an episode covers the day).
    let year_end =
        time::Date::from_calendar_date(collection_year(), time::Month::March, 31).unwrap();
    let dmy = time::format_description::parse_borrowed::<2>("[day]/[month]/[year]").unwrap();
    let mut looked_after = std::collections::BTreeSet::new();
    let episodes = synth
        .join("national")
        .join(COUNCIL)
        .join("ssda903/episodes.csv");
    for episode in csv_rows(&episodes, b',') {
        let start = time::Date::parse(&episode[1], &dmy).unwrap();
        let end = time::Date::parse(&episode[7], &dmy).ok();
        if start <= year_end && end.is_none_or(|end| end > year_end) {
            looked_after.insert(episode[0].to_owned());
        }
    }
    assert!(
        looked_after.len() > 8,
        "{} looked after",
        looked_after.len()
    );
    std::fs::write(
        &query,
        format!("indicator: children-looked-after\nreference_date: {year_end}\n"),
    )
    .unwrap();
    let (ids, _) = resolve(COUNCIL);
    assert_eq!(ids, looked_after, "children looked after at {year_end}");
    let rows = extract(analyst("case-reviewer"));
    assert_eq!(
        String::from_utf8_lossy(&rows.stdout).lines().count() - 1,
        looked_after.len()
    );
    assert!(
        camhs_stderr.contains("are in the cohort"),
        "{}",
        camhs_stderr
    );
}

/// POSTs `query` to `/v1/query` over HTTP/1.1 and mutual TLS; returns the
/// status and body.
async fn http_post(
    d: &Deployment,
    address: &str,
    who: (std::path::PathBuf, std::path::PathBuf),
    query: &str,
) -> (u16, String) {
    http_request(d, address, who, "POST /v1/query", query).await
}

/// Sends `request` ("METHOD /path") with `query` as its body over
/// HTTP/1.1 and mutual TLS; returns the status and body.
async fn http_request(
    d: &Deployment,
    address: &str,
    (cert, key): (std::path::PathBuf, std::path::PathBuf),
    request: &str,
    query: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = joinery_crypto::tls::client_config(&joinery_crypto::tls::TlsFiles {
        ca: d.ca(),
        cert,
        key,
        crl: None,
    })
    .unwrap();
    config.alpn_protocols.clear();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let request = format!(
        "{request} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/yaml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{query}",
        query.len()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}
