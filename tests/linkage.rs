//! Fuzzy linkage accuracy on the synthetic population, through
//! `joinery-bench linkage` (the agent's mapping and encoding, the gateway's
//! matching): most council records lack an NHS number, and F1 must stay at
//! or above 0.98, with NHS numbers and on names, dates and postcodes alone,
//! and two children of one household (twins, siblings) are not joined (on
//! names, dates and postcodes alone, at most once in this small set).

mod common;

use common::*;

/// What one `bench linkage` run reports.
struct Figures {
    f1: f64,
    /// Wrong links between two children of one household (twins, siblings).
    household: u64,
    /// The extracts it linked.
    extracts: u64,
    /// F1 over the pairs whose records the agent sent (not quarantined).
    f1_sent: f64,
}

/// Runs `bench linkage` with `args`, checks its missed-pair estimate
/// against the truth, and returns its figures.
fn bench_linkage(args: &[&str]) -> Figures {
    let output = joinery_bench_ok(args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{stdout}");
    let after = |label: &str| {
        stdout
            .split(label)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {label:?} in:\n{stdout}"))
            .to_owned()
    };
    let f1 = after("F1 ").parse().expect("F1 is a number");
    let household = after("one household (siblings, twins): ")
        .parse()
        .expect("a count");
    let extracts = after("records from ").parse().expect("a count");
    let f1_sent = stdout
        .lines()
        .find(|l| l.contains("over the rest:"))
        .and_then(|l| l.rsplit("F1 ").next())
        .and_then(|f| f.trim().parse().ok())
        .unwrap_or_else(|| panic!("no F1 over the records sent in:\n{stdout}"));
    // The model's label-free estimate of the pairs it missed is near the
    // count against the truth.
    let all = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("all:"))
        .unwrap_or_else(|| panic!("no quality totals in:\n{stdout}"));
    let number = |text: &str| -> f64 {
        let n = text.split([' ', ')']).next().unwrap_or_default();
        n.parse()
            .unwrap_or_else(|_| panic!("not a number at {text:?} in {all}"))
    };
    let (_, missed) = all
        .split_once("expected missed among compared pairs ")
        .unwrap_or_else(|| panic!("no expected misses in {all}"));
    let expected = number(missed);
    let measured = number(missed.split_once("(measured ").map_or("", |m| m.1));
    let links = number(all.trim_start().trim_start_matches("all: "));
    // Within a factor of two either way, give or take 2% of the links: on
    // a set this small the model's calibration moves with the random key,
    // and pairs just under the threshold (siblings more than misses here)
    // are a few dozen. (On `joinery synth --profile messy` at 20,000 and
    // 100,000 children the estimate is within 15% of the truth.)
    let slack = 10.0 + 0.02 * links;
    assert!(
        expected <= 2.0 * measured + slack && expected >= measured / 2.0 - slack,
        "expected missed {expected} against {measured} measured: {all}"
    );
    Figures {
        f1,
        household,
        extracts,
        f1_sent,
    }
}

#[test]
fn synthetic_population_links_with_f1_of_at_least_0_98() {
    let d = Deployment::new();
    // A fixed population (its dates do not move with today's) under a
    // fixed key (below): the figures repeat exactly, so the bounds are not
    // met by luck on one run and missed on the next.
    let synth = d.path("synth");
    joinery_ok(&[
        "synth",
        "--out",
        synth.to_str().unwrap(),
        "--children",
        "3000",
        "--seed",
        "41",
        "--reference-date",
        "2026-12-01",
    ]);
    let data = synth.to_str().unwrap();
    let truth = synth.join("ground_truth.csv");
    let truth = truth.to_str().unwrap();
    let pairs = d.path("pairs.csv");
    let key = d.path("fixed-linkage.key");
    std::fs::write(&key, "5a".repeat(32)).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let args = |extra: &[&str]| -> Vec<String> {
        let key = key.to_str().unwrap();
        let common = [
            "linkage",
            "--data",
            data,
            "--truth",
            truth,
            "--linkage-key",
            key,
        ];
        common.iter().chain(extra).map(|a| a.to_string()).collect()
    };
    let bench =
        |extra: &[&str]| bench_linkage(&args(extra).iter().map(String::as_str).collect::<Vec<_>>());
    let with_nhs = bench(&["--out", pairs.to_str().unwrap()]);
    assert!(with_nhs.f1 >= 0.98, "F1 {}", with_nhs.f1);
    // Rows the agent quarantines (synth damages some) cost recall that the
    // figure over the records sent leaves out.
    assert!(
        with_nhs.f1_sent >= with_nhs.f1 && with_nhs.f1_sent >= 0.99,
        "F1 over the records sent {}",
        with_nhs.f1_sent
    );
    // Children of one household without NHS numbers meet the same odds as
    // below: under random keys CI once saw 1 of 43 twin pairs joined; this
    // population under this key joins none.
    assert!(
        with_nhs.household == 0,
        "{} twins or siblings joined",
        with_nhs.household
    );
    assert!(
        csv_rows(&pairs, b',').len() > 100,
        "predicted pairs written"
    );
    // On names, dates and postcodes alone a household's children can meet
    // the rarest sibling look-alike (same initial, same birth year, the
    // given names a few letters alike): at 100,000 children about 20 wrong
    // links within households in 100,000 pairs (`joinery-bench linkage`),
    // so now and then one (under random keys: none in half of 12 runs, one
    // in the rest); this population under this key joins none.
    let fuzzy_only = bench(&["--fuzzy-only"]);
    assert!(fuzzy_only.f1 >= 0.98, "F1 {}", fuzzy_only.f1);
    assert!(
        fuzzy_only.household == 0,
        "{} twins or siblings joined",
        fuzzy_only.household
    );
    // Two parties only: about 600 true pairs here, so a dozen misses cost
    // two points of F1 (it is 0.98 at 500k records a side).
    let two = bench(&[
        "--fuzzy-only",
        "--datasets",
        "csc_referrals,camhs_referrals",
    ]);
    assert!(two.f1 >= 0.95, "F1 {}", two.f1);
    assert_eq!(
        (fuzzy_only.extracts, two.extracts),
        (3, 2),
        "extracts linked"
    );
    let output = joinery_bench()
        .args(args(&["--datasets", "csc_referrals,no_such_dataset"]))
        .output()
        .expect("run joinery");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("2 named, 1 found"), "{stderr}");
}

/// `joinery gateway linkage-report`'s lines: each pair of organisations
/// with its fuzzy links, expected wrong links and expected missed pairs.
fn linkage_report_pairs(report: &str) -> Vec<(String, u64, f64, f64)> {
    report
        .lines()
        .filter_map(|line| {
            let (organisations, rest) = line.trim().split_once(": ")?;
            let links = rest.split(" fuzzy links").next()?.parse().ok()?;
            let after = |label: &str| -> Option<f64> {
                rest.split(label)
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            };
            Some((
                organisations.to_owned(),
                links,
                after("expected wrong ")?,
                after("expected missed ")?,
            ))
        })
        .collect()
}

/// `joinery gateway relink` against the gateway's store (PostgreSQL at
/// `database`, else SQLite); returns its output.
fn relink(d: &Deployment, database: Option<&str>, full: bool) -> String {
    let command: &[&str] = if full {
        &["gateway", "relink", "--full"]
    } else {
        &["gateway", "relink"]
    };
    d.on_store(command, database)
}

async fn spine(db: &sqlx::AnyPool) -> std::collections::BTreeMap<String, String> {
    use sqlx::Row;
    sqlx::query("SELECT person_id, spine_id FROM person_spine")
        .fetch_all(db)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("person_id"), r.get("spine_id")))
        .collect()
}

/// One line of `joinery gateway identifiability`.
#[derive(Debug, PartialEq)]
struct Exposure {
    children: u64,
    classes: u64,
    /// Percent of children singled out (k = 1).
    singled_out: f64,
}

fn identifiability_lines(report: &str) -> Vec<Exposure> {
    let number = |line: &str, before: &str| -> f64 {
        let (head, _) = line
            .split_once(before)
            .unwrap_or_else(|| panic!("no {before:?} in {line}"));
        head.rsplit([' ', ','])
            .find(|w| !w.is_empty())
            .unwrap()
            .trim_end_matches('%')
            .parse()
            .unwrap()
    };
    report
        .lines()
        .filter(|l| l.starts_with("  ") && l.contains(" children, "))
        .map(|l| Exposure {
            children: number(l, " children,") as u64,
            classes: number(l, " classes;") as u64,
            singled_out: number(l.split_once("(k = 1) ").unwrap().1, ", k < 5"),
        })
        .collect()
}

/// Delivers `extract` for `org` through a gateway started on the store.
fn deliver(
    d: &Deployment,
    database: Option<&str>,
    org: &str,
    extract: &std::path::Path,
    mapping: &std::path::Path,
) {
    // Its own linker never runs meanwhile (its first tick finds nothing
    // new): the tests link when they choose.
    let gateway = d.start_gateway(database, &["--linkage-interval-secs", "3600"]);
    let config = d.agent_config(org, &gateway.address, extract, mapping);
    let (code, stdout, stderr) = finish(d.spawn_agent(&config));
    assert!(code == 0 || code == 3, "{stdout}\n{stderr}");
    assert!(gateway.stop().success());
}

/// `extract` cut into parts at each of `cuts` (percent of its rows), each
/// part with the header row.
fn parts(d: &Deployment, extract: &std::path::Path, cuts: &[usize]) -> Vec<std::path::PathBuf> {
    let text = std::fs::read_to_string(extract).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let rows = lines.len() - 1;
    let mut bounds: Vec<usize> = cuts.iter().map(|c| 1 + rows * c / 100).collect();
    bounds.insert(0, 1);
    bounds.push(lines.len());
    let name = extract.file_stem().unwrap().to_str().unwrap();
    bounds
        .windows(2)
        .enumerate()
        .map(|(k, w)| {
            let path = d.path(&format!("{name}-{k}.csv"));
            let body = [&lines[..1], &lines[w[0]..w[1]]].concat();
            std::fs::write(&path, body.join("\n") + "\n").unwrap();
            path
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn new_records_join_the_spine_incrementally_on_sqlite() {
    incremental_linking(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn new_records_join_the_spine_incrementally_on_postgres() {
    let Some(url) = fresh_postgres("incremental_linking").await else {
        return;
    };
    incremental_linking(Some(&url)).await;
}

/// New records join the spine incrementally and people keep their ids.
async fn incremental_linking(database: Option<&str>) {
    let d = Deployment::new();
    let synth = d.synth(600, 31);
    let mapping = |dataset: &str| synth.join(format!("mappings/{dataset}.yaml"));
    let extract = |dataset: &str| synth.join(format!("extracts/{dataset}.csv"));

    // The council's extract arrives in two parts.
    let council = parts(&d, &extract("csc_referrals"), &[70]);
    let (first, second) = (&council[0], &council[1]);

    let quality = d.on_store(&["gateway", "linkage-report"], database);
    assert!(quality.contains("no linkage run yet"), "{quality}");
    for (org, dataset) in [(CAMHS, "camhs_referrals"), (SALT, "salt_contacts")] {
        deliver(&d, database, org, &extract(dataset), &mapping(dataset));
    }
    deliver(&d, database, COUNCIL, first, &mapping("csc_referrals"));
    // Each gateway gave the linker's lease back as it stopped, so the next
    // one links at once.
    {
        use sqlx::Row;
        let db = open_database(&database.map_or_else(|| d.sqlite_url(), str::to_owned)).await;
        let until: i64 = sqlx::query("SELECT until FROM linkage_lease WHERE id = 1")
            .fetch_one(&db)
            .await
            .unwrap()
            .get(0);
        assert_eq!(until, 0, "the lease was not given back");
    }
    let report = relink(&d, database, true);
    assert!(report.contains("full run"), "{report}");
    assert!(report.contains("expects"), "{report}");
    // Every pair of the three organisations has fuzzy links, a few of
    // them doubtful by the model's own reckoning.
    let quality = d.on_store(&["gateway", "linkage-report"], database);
    let pairs = linkage_report_pairs(&quality);
    assert_eq!(pairs.len(), 3, "{quality}");
    for (organisations, links, wrong, missed) in &pairs {
        assert!(*links > 0, "{organisations}: {quality}");
        assert!(
            (0.0..*links as f64 / 10.0).contains(wrong),
            "{organisations}: {quality}"
        );
        assert!(*missed >= 0.0, "{organisations}: {quality}");
    }
    // The same evidence gives the same people.
    let again = relink(&d, database, true);
    assert!(again.contains(" 0 person ids moved"), "{again}");
    let db = open_database(&database.map_or_else(|| d.sqlite_url(), str::to_owned)).await;
    let before = spine(&db).await;

    // What the quasi-identifiers stored in clear single out, as stored and
    // coarser: coarsening only merges classes, so it never singles out more
    // children, and every line counts the same children.
    let exposure = d.on_store(&["gateway", "identifiability"], database);
    let lines = identifiability_lines(&exposure);
    assert_eq!(lines.len(), 5, "{exposure}");
    let (stored, coarsest) = (&lines[0], &lines[4]);
    assert!(stored.children > 100, "{exposure}");
    for line in &lines {
        assert_eq!(line.children, stored.children, "{exposure}");
        assert!(
            line.classes <= stored.classes && line.singled_out <= stored.singled_out,
            "{exposure}"
        );
        assert!(
            coarsest.classes < line.classes || line == coarsest,
            "{exposure}"
        );
        assert!(coarsest.singled_out <= line.singled_out, "{exposure}");
    }
    assert!(
        stored.singled_out > 0.0,
        "a small population is exposed as stored: {exposure}"
    );

    // The rest of the council's records: linked incrementally.
    deliver(&d, database, COUNCIL, second, &mapping("csc_referrals"));
    let report = relink(&d, database, false);
    assert!(report.contains("incremental run"), "{report}");
    assert!(!report.contains("(0 new)"), "{report}");
    let after = spine(&db).await;
    // Comparing every pair again under the same model moves nobody.
    let check = d.on_store(&["gateway", "relink", "--same-model"], database);
    assert!(check.contains("same-model run"), "{check}");
    assert!(check.contains(" 0 person ids moved"), "{check}");
    assert_eq!(spine(&db).await, after);
    // The estimate stays the full run's.
    let still = d.on_store(&["gateway", "linkage-report"], database);
    assert_eq!(linkage_report_pairs(&still), pairs, "{still}");
    let kept = before
        .iter()
        .filter(|(person, spine)| after.get(*person) == Some(spine))
        .count();
    assert!(
        kept * 100 >= before.len() * 99,
        "people keep their ids: {kept} of {}",
        before.len()
    );
    assert!(
        after.len() > before.len(),
        "the new records are on the spine"
    );
    // And the whole spine is right against the ground truth.
    check_spine(&d, &synth.join("ground_truth.csv"), &db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_serving_linker_links_each_delivery_as_comparing_every_pair_on_sqlite() {
    deliveries_linked_incrementally(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_serving_linker_links_each_delivery_as_comparing_every_pair_on_postgres() {
    let Some(url) = fresh_postgres("deliveries_linked").await else {
        return;
    };
    deliveries_linked_incrementally(Some(&url)).await;
}

/// A gateway's linker, kept between runs as a serving gateway keeps it,
/// links each of several deliveries reading only the new entities; after
/// the last, comparing every pair under the same model moves nobody. A
/// run by another linker in between is noticed: the kept one then reads
/// every entity again and builds on the links that run stored, and still
/// agrees with comparing every pair.
async fn deliveries_linked_incrementally(database: Option<&str>) {
    use joinery_gateway::linker::{Linker, RunMode};
    let d = Deployment::new();
    let synth = d.synth(600, 43);
    let mapping = |dataset: &str| synth.join(format!("mappings/{dataset}.yaml"));
    let extract = |dataset: &str| synth.join(format!("extracts/{dataset}.csv"));
    // The council's, CAMHS's and SALT's extracts each arrive in parts.
    let council = parts(&d, &extract("csc_referrals"), &[60, 80]);
    let camhs = parts(&d, &extract("camhs_referrals"), &[70]);
    let salt = parts(&d, &extract("salt_contacts"), &[85]);
    let arrive = |org: &str, part: &std::path::Path, dataset: &str| {
        deliver(&d, database, org, part, &mapping(dataset));
    };
    let url = database.map_or_else(|| d.sqlite_url(), str::to_owned);
    let storage = joinery_gateway::storage::Storage::open(&url).await.unwrap();
    let agreements =
        joinery_gateway::agreements::Agreements::load_dir(&d.agreements_dir()).unwrap();
    let params = agreements.linkage_params().remove(0);

    arrive(SALT, &salt[0], "salt_contacts");
    arrive(COUNCIL, &council[0], "csc_referrals");
    arrive(CAMHS, &camhs[0], "camhs_referrals");
    let mut linker = Linker::default();
    let first = linker.run(&storage, &params, RunMode::Refit).await.unwrap();
    assert!(first.full && first.links > 0, "{first:?}");
    for (org, part, dataset) in [
        (COUNCIL, &council[1], "csc_referrals"),
        (CAMHS, &camhs[1], "camhs_referrals"),
        (COUNCIL, &council[2], "csc_referrals"),
    ] {
        arrive(org, part, dataset);
        let run = linker
            .run(&storage, &params, RunMode::Incremental)
            .await
            .unwrap();
        assert!(!run.full && !run.every_pair, "{run:?}");
        assert!(run.pending > 0, "{run:?}");
        assert_eq!(
            run.read, run.pending,
            "only the new entities are read: {run:?}"
        );
        assert!(run.entities > run.read, "{run:?}");
    }
    let db = open_database(&url).await;
    let incremental = spine(&db).await;
    let check = Linker::default()
        .run(&storage, &params, RunMode::SameModel)
        .await
        .unwrap();
    assert!(check.every_pair && !check.full, "{check:?}");
    assert_eq!(check.moved, 0, "{check:?}");
    assert_eq!(spine(&db).await, incremental);

    // Another linker saved a run (the check): what this one kept is no
    // longer trusted, so it reads every entity again, as a gateway that
    // starts or takes the lease over does; but it builds on the links the
    // check stored, comparing only the pairs the new entities make.
    arrive(SALT, &salt[1], "salt_contacts");
    let again = linker
        .run(&storage, &params, RunMode::Incremental)
        .await
        .unwrap();
    assert!(again.pending > 0, "{again:?}");
    assert!(
        !again.every_pair && again.read == again.entities,
        "{again:?}"
    );
    assert!(
        again.candidate_pairs < check.candidate_pairs / 2,
        "only the new entities' pairs are compared: {again:?} against {check:?}"
    );
    let built_on_stored_links = spine(&db).await;
    let recheck = Linker::default()
        .run(&storage, &params, RunMode::SameModel)
        .await
        .unwrap();
    assert_eq!(recheck.moved, 0, "{recheck:?}");
    assert_eq!(spine(&db).await, built_on_stored_links);
    check_spine(&d, &synth.join("ground_truth.csv"), &db).await;
}

/// `bench dice` scans every pair of two files of 1,024-bit filters and
/// counts those at or above the threshold, as anonlink's brute force does;
/// a file that is not whole filters is refused, naming it.
#[test]
fn bench_dice_counts_every_pair_at_the_threshold() {
    let d = Deployment::new();
    let mut sequence = joinery_linkage::sequence::Sequence::new(0x9e37_79b9_7f4a_7c15);
    let mut next = || sequence.next_u64();
    let a: Vec<[u64; 16]> = (0..40)
        .map(|_| std::array::from_fn(|_| next() & next()))
        .collect();
    // The other side: a copy of every fourth filter with a few bits moved,
    // and unrelated filters.
    let b: Vec<[u64; 16]> = (0..60)
        .map(|i| match a.get(i * 4) {
            Some(f) if i % 2 == 0 => {
                std::array::from_fn(|w| f[w] ^ (next() & next() & next() & next()))
            }
            _ => std::array::from_fn(|_| next() & next()),
        })
        .collect();
    let dice = |x: &[u64; 16], y: &[u64; 16]| {
        let ones = |f: &[u64; 16]| f.iter().map(|w| w.count_ones()).sum::<u32>();
        let common: u32 = x.iter().zip(y).map(|(p, q)| (p & q).count_ones()).sum();
        2.0 * f64::from(common) / f64::from(ones(x) + ones(y))
    };
    let expected = a
        .iter()
        .flat_map(|x| b.iter().map(move |y| (x, y)))
        .filter(|(x, y)| dice(x, y) >= 0.8)
        .count();
    assert!(
        expected > 0 && expected < 40,
        "{expected} pairs: the test data tells nothing"
    );
    let write = |name: &str, filters: &[[u64; 16]]| {
        let bytes: Vec<u8> = filters
            .iter()
            .flatten()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        std::fs::write(d.path(name), bytes).unwrap();
        d.path(name).display().to_string()
    };
    let (a_path, b_path) = (write("a.bin", &a), write("b.bin", &b));
    let output = joinery_bench_ok(&["dice", &a_path, &b_path, "--threshold", "0.8"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("40 x 60 filter pairs of 1024 bits"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("; {expected} pairs at Dice >= 0.8")),
        "{stdout}"
    );

    std::fs::write(d.path("short.bin"), [0u8; 100]).unwrap();
    let short = d.path("short.bin").display().to_string();
    let output = joinery_bench()
        .args(["dice", &short, &b_path])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("short.bin: 100 bytes is not a whole number of 128-byte filters"),
        "{stderr}"
    );
}
