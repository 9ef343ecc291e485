//! The population sharded over gateways (`docs/scaling.md`, "Past one
//! gateway"), every part a real `joinery gateway serve` on one PostgreSQL:
//! two gateways each holding one shard (`--holds-shard 0/2`, `1/2`), one
//! answering analysts from them (`--answer-from-shards`, a gateway
//! certificate), and one holding everyone, as before. The answering
//! gateway's row-level extract is the whole gateway's, row for row, before
//! and after a delivery moves the data on; its tables agree with it within
//! disclosure control's noise. A shard answers no analyst, gives its part
//! to no certificate but a gateway's, and an answering gateway missing a
//! shard, or given one shard twice, answers nothing rather than part.

mod common;

use std::path::PathBuf;

use common::*;
use joinery_crypto::tls::TlsFiles;
use joinery_proto::v1::ShardRequest;
use joinery_proto::v1::shard_client::ShardClient;
use sqlx::Row;

/// Everyone the query keeps, by agency combination and sex: a breakdown by
/// a recorded value, so the answering gateway chooses which combinations
/// are safe to list from every shard's counts.
const QUERY: &str = "reference_date: 2026-06-30\nrows: agencies\ncolumns: sex\n";

#[tokio::test(flavor = "multi_thread")]
async fn shards_answer_together_what_one_gateway_holding_everyone_answers() {
    let Some(url) = fresh_postgres("shards").await else {
        return;
    };
    let d = Deployment::new();
    write_signed_agreement(&d.agreements_dir(), |text| {
        text.replace(
            "roles:\n",
            "roles:\n  case_review:\n    description: Case review.\n    access: row_level\n    analysts: [case-reviewer]\n",
        )
    });
    joinery_ok(&[
        "pki",
        "issue",
        "--dir",
        &d.pki(),
        "--analyst",
        "case-reviewer",
    ]);
    joinery_ok(&["pki", "issue", "--dir", &d.pki(), "--gateway", "answering"]);
    let reviewer = (
        d.path("pki/analysts/analyst-case-reviewer.pem"),
        d.path("pki/analysts/analyst-case-reviewer.key"),
    );
    let answering_cert = (
        d.path("pki/gateways/gateway-answering.pem"),
        d.path("pki/gateways/gateway-answering.key"),
    );
    let query = d.path("query.yaml");
    std::fs::write(&query, QUERY).unwrap();
    let query = query.to_str().unwrap();
    let probe = d.path("probe.yaml");
    std::fs::write(&probe, format!("{QUERY}# asked of the whole gateway\n")).unwrap();
    let probe = probe.to_str().unwrap().to_owned();

    // Linking only when told, so the data moves only when the test moves it.
    let quiet = ["--linkage-interval-secs", "3600"];
    let whole = d.start_gateway(Some(&url), &quiet);
    let synth = d.synth(400, 11);
    d.deliver(&whole.address, &synth, &THREE_AGENCIES[..2]);
    d.on_store(&["gateway", "relink"], Some(&url));

    let shard = |listen: &str, which: &str| {
        d.start_gateway_at(
            listen,
            Some(&url),
            &[quiet[0], quiet[1], "--holds-shard", which],
        )
    };
    let shard0_listen = free_local_address();
    let (mut shard0, mut shard1) = (shard(&shard0_listen, "0/2"), shard("127.0.0.1:0", "1/2"));
    let answer_from = |shards: &str, metrics: &str| {
        d.start_gateway(
            Some(&url),
            &[
                quiet[0],
                quiet[1],
                "--answer-from-shards",
                shards,
                "--shard-tls-cert",
                answering_cert.0.to_str().unwrap(),
                "--shard-tls-key",
                answering_cert.1.to_str().unwrap(),
                "--metrics-listen",
                metrics,
            ],
        )
    };
    let metrics = free_local_address();
    let answering = answer_from(&format!("{},{}", shard0.address, shard1.address), &metrics);
    let asks = |outcome: &str| -> u64 {
        let page = http_get(&metrics, "/metrics");
        let series = format!("joinery_gateway_shard_asks_total{{outcome=\"{outcome}\"}} ");
        page.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .unwrap_or_else(|| panic!("no {series} in {page}"))
            .parse()
            .unwrap()
    };

    let extract = |gateway: &str| {
        let out = d.client(&["query", "extract", query], gateway, reviewer.clone(), &[]);
        String::from_utf8(out.stdout).unwrap()
    };
    let db = open_database(&url).await;
    for round in ["two agencies", "after the third agency's delivery"] {
        // The whole gateway answers from what it holds while it catches
        // up (the shards are asked at the data's generation): wait for it,
        // asking another question (the same one would be released here
        // and replayed by the answering gateway, shards unasked).
        let mut caught_up = false;
        for _ in 0..100 {
            if run(&d, &whole.address, &probe)["newer_data_pending"] == false {
                caught_up = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(caught_up, "{round}: the whole gateway never caught up");
        let from_shards = extract(&answering.address);
        let members = from_shards.lines().count() - 1;
        assert!(members > 100, "{round}: {members} members\n{from_shards}");
        let from_whole = extract(&whole.address);
        let differ: Vec<_> = from_shards
            .lines()
            .zip(from_whole.lines())
            .filter(|(a, b)| a != b)
            .take(3)
            .collect();
        assert!(
            from_shards == from_whole,
            "{round}: the shards' members together ({members}) are not the whole gateway's ({}): {differ:?}",
            from_whole.lines().count() - 1
        );
        let table = run(&d, &answering.address, query);
        let generation: i64 = sqlx::query("SELECT n FROM data_generation WHERE id = 1")
            .fetch_one(&db)
            .await
            .unwrap()
            .get(0);
        assert_eq!(table["data_generation"], generation, "{round}: {table}");
        let total = table["rows"]
            .as_array()
            .and_then(|rows| rows.last())
            .and_then(|row| row["cells"]["total"].as_u64())
            .unwrap_or_else(|| panic!("{round}: no total in {table}"));
        assert!(
            total.abs_diff(members as u64) <= 30,
            "{round}: a total of {total} for {members} members: a shard's part is missing or counted twice"
        );
        // A median (each shard's values, not their medians, are merged).
        let wait = run(
            &d,
            &answering.address,
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/docs/queries/camhs-median-wait.yaml"
            ),
        );
        assert_eq!(wait["data_generation"], generation, "{wait}");
        // The next round: the third agency delivers and is linked in; the
        // shards catch up when next asked.
        d.deliver(&whole.address, &synth, &THREE_AGENCIES[2..]);
        d.on_store(&["gateway", "relink"], Some(&url));
    }

    // The answering gateway's certificate renewed and the old one revoked,
    // the answering gateway left running: a shard restarted (so the
    // connection to it is made again, under the new revocation list) is
    // reached with the new certificate.
    joinery_ok(&[
        "pki",
        "revoke",
        "--dir",
        &d.pki(),
        "--cert",
        answering_cert.0.to_str().unwrap(),
    ]);
    let renewed = d.path("renewed");
    joinery_ok(&[
        "pki",
        "issue",
        "--dir",
        &d.pki(),
        "--gateway",
        "answering",
        "--out",
        renewed.to_str().unwrap(),
    ]);
    install_renamed(
        &renewed,
        &d.path("pki/gateways"),
        &["gateway-answering.key", "gateway-answering.pem"],
    );
    shard0.stop();
    shard0 = shard(&shard0_listen, "0/2");
    // The answering gateway looks at its files at most once a second.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let renewal = d.path("after-renewal.yaml");
    std::fs::write(&renewal, format!("{QUERY}# after the renewal\n")).unwrap();
    let table = run(&d, &answering.address, renewal.to_str().unwrap());
    assert!(
        table["rows"].as_array().is_some_and(|r| !r.is_empty()),
        "{table}"
    );

    // A shard answers no analyst itself, and gives its part to no
    // certificate but a gateway's.
    fails_saying(
        d.client_command(
            &["query", "run", query],
            &shard0.address,
            d.analyst_cert(),
            &[],
        ),
        "holds shard 0/2 of the population",
    );
    let part = ShardRequest {
        query: QUERY.to_owned(),
        reference_date: "2026-06-30".to_owned(),
        generation: 1,
        ..ShardRequest::default()
    };
    for (who, cert) in [
        ("an analyst", d.analyst_cert()),
        ("an agency", d.org_cert(COUNCIL)),
    ] {
        let status = shard_client(&d, &shard0.address, cert)
            .await
            .label_counts(part.clone())
            .await
            .expect_err("a shard's true counts for a certificate not a gateway's");
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "{who}: {status:?}"
        );
    }
    // The whole gateway holds no shard to give.
    let status = shard_client(&d, &whole.address, answering_cert.clone())
        .await
        .label_counts(part)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");

    // Questions not asked before (an answer already released is replayed
    // from the ledger, shards or none).
    let another = |name: &str, columns: &str| {
        let path = d.path(name);
        std::fs::write(&path, QUERY.replace("columns: sex", columns)).unwrap();
        path.to_str().unwrap().to_owned()
    };
    // One shard given twice: refused, naming the fix.
    let twice = answer_from(
        &format!("{},{}", shard0.address, shard0.address),
        &free_local_address(),
    );
    let by_segment = another("by-segment.yaml", "columns: segment");
    fails_saying(
        d.client_command(
            &["query", "run", &by_segment],
            &twice.address,
            d.analyst_cert(),
            &[],
        ),
        "one for each shard",
    );
    // A shard down: nothing is answered from the other alone.
    let missing = shard1.address.clone();
    assert!(shard1.is_running());
    shard1.stop();
    let by_overlap = another("by-overlap.yaml", "columns: agency_overlap");
    fails_saying(
        d.client_command(
            &["query", "run", &by_overlap],
            &answering.address,
            d.analyst_cert(),
            &[],
        ),
        &missing,
    );
    // Every step asked of the shards is counted; the last one failed.
    // Two rounds of an extract (members), a table by a recorded value
    // (label counts, then the table) and a median (the table).
    let answered = asks("answered");
    assert!(answered >= 8, "{answered} steps answered, not 8");
    assert_eq!(asks("failed"), 1);
    let log = answering.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

/// The adversary of the promise that analysts are answered while data
/// moves: three agencies deliver a new population in batches of five, each
/// its own commit and data generation, while an analyst asks the answering
/// gateway one question after another. Every question is answered, at a
/// generation between the data's before and after it, however often the
/// data moved while the shards worked it out.
#[tokio::test(flavor = "multi_thread")]
async fn answers_from_shards_keep_coming_while_deliveries_land() {
    let Some(url) = fresh_postgres("shards_under_load").await else {
        return;
    };
    let d = Deployment::new();
    joinery_ok(&["pki", "issue", "--dir", &d.pki(), "--gateway", "answering"]);
    let quiet = ["--linkage-interval-secs", "3600"];
    let whole = d.start_gateway(Some(&url), &quiet);
    d.deliver(&whole.address, &d.synth(300, 11), &THREE_AGENCIES[..1]);
    let shard =
        |which: &str| d.start_gateway(Some(&url), &[quiet[0], quiet[1], "--holds-shard", which]);
    let (shard0, shard1) = (shard("0/2"), shard("1/2"));
    let answering = d.start_gateway(
        Some(&url),
        &[
            quiet[0],
            quiet[1],
            "--answer-from-shards",
            &format!("{},{}", shard0.address, shard1.address),
            "--shard-tls-cert",
            d.path("pki/gateways/gateway-answering.pem")
                .to_str()
                .unwrap(),
            "--shard-tls-key",
            d.path("pki/gateways/gateway-answering.key")
                .to_str()
                .unwrap(),
        ],
    );
    let query = d.path("query.yaml");
    std::fs::write(&query, QUERY).unwrap();
    let query = query.to_str().unwrap();
    // The shards load their people once, before the data starts moving.
    run(&d, &answering.address, query);

    let db = open_database(&url).await;
    let generation = || async {
        sqlx::query("SELECT n FROM data_generation WHERE id = 1")
            .fetch_one(&db)
            .await
            .unwrap()
            .get::<i64, _>(0)
    };
    let synth = d.synth(300, 12);
    let mut agents: Vec<_> = THREE_AGENCIES
        .iter()
        .map(|(org, dataset)| {
            let config = d.agent_config(
                org,
                &whole.address,
                &synth.join(format!("extracts/{dataset}.csv")),
                &synth.join(format!("mappings/{dataset}.yaml")),
            );
            let text = std::fs::read_to_string(&config).unwrap();
            std::fs::write(&config, text.replace("batch_size: 200", "batch_size: 5")).unwrap();
            d.spawn_agent(&config)
        })
        .collect();
    let (mut asked, mut while_moving) = (0, 0);
    while asked < 4 || agents.iter_mut().any(|a| matches!(a.try_wait(), Ok(None))) {
        let before = generation().await;
        let out = d.client_output(
            &["query", "run", query],
            &answering.address,
            d.analyst_cert(),
            &["--format", "json"],
        );
        let after = generation().await;
        asked += 1;
        assert!(
            out.status.success(),
            "question {asked} unanswered while the data moved from generation {before} to {after}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let at = table["data_generation"].as_i64().unwrap();
        assert!(
            (before..=after).contains(&at),
            "question {asked} answered at generation {at}, outside {before}..={after}"
        );
        if after > before {
            while_moving += 1;
        }
        assert!(asked < 200, "the deliveries never finished");
    }
    for agent in agents {
        // 3: delivered, with the synthetic extract's bad rows quarantined.
        let (code, _, stderr) = finish(agent);
        assert!(matches!(code, 0 | 3), "exit {code}: {stderr}");
    }
    assert!(
        while_moving >= 3,
        "only {while_moving} of {asked} questions were asked while the data moved: the adversary did not press"
    );
    let log = answering.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

/// Shards on SQLite are refused at start, saying why: a SQLite store is one
/// gateway's own, and it has no snapshot to share between gateways.
#[test]
fn shards_on_sqlite_are_refused_at_start() {
    let d = Deployment::new();
    joinery_ok(&["pki", "issue", "--dir", &d.pki(), "--gateway", "answering"]);
    let cert = d.path("pki/gateways/gateway-answering.pem");
    let key = d.path("pki/gateways/gateway-answering.key");
    let holding = ["--holds-shard", "0/2"];
    let answering = [
        "--answer-from-shards",
        "127.0.0.1:7443,127.0.0.1:7444",
        "--shard-tls-cert",
        cert.to_str().unwrap(),
        "--shard-tls-key",
        key.to_str().unwrap(),
    ];
    for shards in [&holding[..], &answering[..]] {
        let mut gateway = d
            .gateway_command("127.0.0.1:0", None, shards)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while gateway.try_wait().unwrap().is_none() {
            if started.elapsed() > std::time::Duration::from_secs(30) {
                let _ = gateway.kill();
                panic!("a gateway with {shards:?} on SQLite started");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = gateway.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("need every gateway on one PostgreSQL database"),
            "{stderr}"
        );
    }
}

/// `joinery query run QUERY --format json` as the test analyst.
fn run(d: &Deployment, gateway: &str, query: &str) -> serde_json::Value {
    let out = d.client(
        &["query", "run", query],
        gateway,
        d.analyst_cert(),
        &["--format", "json"],
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A `joinery.v1.Shard` client of the gateway at `address` with `cert`.
async fn shard_client(
    d: &Deployment,
    address: &str,
    (cert, key): (PathBuf, PathBuf),
) -> ShardClient<tonic::transport::Channel> {
    let tls = joinery_crypto::tls::client_config(&TlsFiles {
        ca: d.ca(),
        cert,
        key,
        crl: None,
    })
    .unwrap();
    ShardClient::new(
        joinery_proto::channel::connect(address, "localhost", tls)
            .await
            .unwrap(),
    )
}
