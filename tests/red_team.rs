//! The red team: an analyst with an ordinary certificate and the documented
//! query language attacks disclosure control on a real gateway holding
//! three agencies' synthetic extracts, delivered by real agents over mutual
//! TLS. Each attack is scored against the truth (the gateway's own store,
//! read here) and must recover no exact small count, and no membership,
//! beyond what chance gives:
//!
//! 1. percentages back-solved against the child count of the same cell;
//! 2. differencing by set algebra: a child singled out by a referral date
//!    and an age no one else shares, added to a released cohort only if
//!    known to another agency — the old guard's refusal was the oracle;
//! 3. zero against suppressed, on a cohort of that one child;
//! 4. labels: a breakdown's categories must not depend on the cohort;
//! 5. repetition: the same question again must give nothing new;
//! 6. an interval audit of a two-way table with its totals (the bounds a
//!    linear programme gives line by line), under the rounding alone;
//! 7. delivery counts, which analysts may not see.
//!
//! Figures print with `cargo test --test red_team -- --nocapture`.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use common::*;
use joinery_gateway::analytics::{self, Labels, Person, model::AnalystQuery};
use serde_json::Value;

/// The threshold: noisy counts up to 7 are suppressed.
const SMALL: std::ops::RangeInclusive<u64> = 1..=7;

struct Analyst<'a> {
    d: &'a Deployment,
    address: String,
    cert: (PathBuf, PathBuf),
    asked: std::cell::Cell<usize>,
}

impl Analyst<'_> {
    /// The released table for `query`, or the refusal's message.
    fn ask(&self, query: &str) -> Result<Value, String> {
        let n = self.asked.get();
        self.asked.set(n + 1);
        let file = self.d.path(&format!("red-team-{n}.yaml"));
        std::fs::write(&file, query).unwrap();
        let out = self.d.client_output(
            &["query", "run", file.to_str().unwrap(), "--format", "json"],
            &self.address,
            self.cert.clone(),
            &[],
        );
        if out.status.success() {
            Ok(serde_json::from_slice(&out.stdout).unwrap())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

/// A released cell: a count or number, or None when suppressed or empty.
fn value(table: &Value, row: usize, column: &str) -> Option<f64> {
    table["rows"][row]["cells"][column].as_f64()
}

/// A table's column labels, the total last (JSON objects come sorted).
fn columns(table: &Value) -> Vec<String> {
    let mut columns: Vec<String> = table["rows"][0]["cells"]
        .as_object()
        .map(|o| o.keys().filter(|k| *k != "total").cloned().collect())
        .unwrap_or_default();
    columns.push("total".to_owned());
    columns
}

fn row_labels(table: &Value) -> Vec<String> {
    table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["label"].as_str().unwrap().to_owned())
        .collect()
}

/// The true table of `query` over `people`, with totals, by row and column label.
fn truth(
    query: &str,
    people: &[std::sync::Arc<Person>],
) -> HashMap<(String, String), analytics::CellData> {
    let q = AnalystQuery::parse(query).unwrap();
    let reference = q.reference_date.unwrap();
    let table = analytics::tabulate(&q, people, reference, &Labels::default());
    let full = table.with_totals();
    let rows = table.rows.iter().cloned().chain(["total".to_owned()]);
    let mut out = HashMap::new();
    for (i, row) in rows.enumerate() {
        let columns = table.columns.iter().cloned().chain(["total".to_owned()]);
        for (j, column) in columns.enumerate() {
            out.insert((row.clone(), column), full[i][j].clone());
        }
    }
    out
}

/// The released tables seen, for the zero check.
fn no_zero_shown(table: &Value) {
    for row in table["rows"].as_array().unwrap() {
        for (column, cell) in row["cells"].as_object().unwrap() {
            assert_ne!(
                cell.as_f64(),
                Some(0.0),
                "a zero shown in {} / {column}: {table}",
                row["label"]
            );
        }
    }
}

/// Synthetic extracts of 1,500 children (or `JOINERY_RED_TEAM_CHILDREN`)
/// delivered by three real agents.
#[tokio::test(flavor = "multi_thread")]
async fn an_adversarial_analyst_learns_nothing_exact() {
    let children: u32 = std::env::var("JOINERY_RED_TEAM_CHILDREN")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1500);
    let d = Deployment::new();
    let synth = d.synth(children, 23);
    let gateway = d.start_gateway(None, &[]);
    d.deliver(&gateway.address, &synth, &THREE_AGENCIES);
    assert!(gateway.stop().success());
    // Link once, then serve with linkage idle, so the truth read here is
    // what the gateway answers from.
    d.on_store(&["gateway", "relink"], None);
    let gateway = d.start_gateway(None, &["--linkage-interval-secs", "36000"]);
    attack(&d, &gateway.address, d.analyst_cert()).await;
}

/// The population `joinery demo` builds from national-format extracts.
#[tokio::test(flavor = "multi_thread")]
async fn the_demo_population_gives_nothing_away() {
    let (d, _) = Deployment::demo(3000);
    let gateway = d.start_gateway(None, &["--linkage-interval-secs", "36000"]);
    let analyst = (
        d.path("pki/analysts/analyst-demo-analyst.pem"),
        d.path("pki/analysts/analyst-demo-analyst.key"),
    );
    attack(&d, &gateway.address, analyst).await;
}

/// Every attack, as the analyst holding `cert`, against the gateway at
/// `address` serving `d`'s store, scored against that store.
async fn attack(d: &Deployment, address: &str, cert: (PathBuf, PathBuf)) {
    let storage = joinery_gateway::storage::Storage::open(&d.sqlite_url())
        .await
        .unwrap();
    let people = storage
        .population(
            &mut joinery_gateway::analytics::Interner::default(),
            joinery_gateway::analytics::Shard::WHOLE,
            None,
        )
        .await
        .unwrap()
        .people;
    assert!(people.len() > 1000, "{} people", people.len());
    let analyst = Analyst {
        d,
        address: address.to_owned(),
        cert: cert.clone(),
        asked: std::cell::Cell::new(0),
    };
    let on = "reference_date: 2026-12-01\n";

    // 1. Percentages back-solved: with the child count c of a cell rounded
    // to 5 (so 2 either side) and its percentage p, the attacker keeps every
    // (numerator, denominator) that fits; one numerator (or complement) in
    // 1..7 is a claim. Small cells make it bite: children referred to CAMHS
    // by year of age and sex, the share never referred to social care.
    let base = format!("{on}rows: {{ age_bands: [0, 5, 11, 16] }}\ncolumns: sex\n");
    let children = analyst.ask(&base).unwrap();
    // The cohort: children referred to CAMHS in the window holding the
    // latest 1,000 or so referrals (children of every age), whatever the
    // population's size.
    let mut referrals: Vec<time::Date> = people
        .iter()
        .flat_map(|p| p.events.iter())
        .filter(|e| &*e.event_type == "camhs_referral")
        .map(|e| e.date)
        .collect();
    referrals.sort_unstable();
    let (from, to) = (
        referrals[referrals.len().saturating_sub(1000)],
        referrals[referrals.len() - 1],
    );
    let small = format!(
        "{on}cohort: {{ has: {{ event: camhs_referral, from: {from}, to: {to} }} }}\nrows: {{ age_bands: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18] }}\ncolumns: sex\n"
    );
    let small_children = analyst.ask(&small).unwrap();
    let back_solve = |c: f64, fits: &dyn Fn(i64, i64) -> bool| {
        let (mut numerators, mut complements) = (BTreeSet::new(), BTreeSet::new());
        for den in (c as i64 - 2).max(1)..=(c as i64 + 2) {
            for num in 0..=den {
                if fits(num, den) {
                    numerators.insert(num as u64);
                    complements.insert((den - num) as u64);
                }
            }
        }
        [numerators, complements].map(|found| {
            (found.len() == 1)
                .then(|| *found.first().unwrap())
                .filter(|n| SMALL.contains(n))
        })
    };
    // The control: the old release, an exact percentage beside the rounded
    // count of a cell over the threshold. The attack takes the condition
    // on which the control finds most.
    let control = |cell: &analytics::CellData| -> Vec<u64> {
        if cell.people <= 7 || cell.hits <= 7 {
            return Vec::new();
        }
        let rounded = ((cell.people + 2) / 5 * 5) as f64;
        let exact = 100.0 * cell.hits as f64 / cell.people as f64;
        let found = back_solve(rounded, &|num, den| {
            (100.0 * num as f64 / den as f64 - exact).abs() < 1e-9
        });
        let truths = [cell.hits, cell.people - cell.hits];
        for (found, truth) in found.iter().zip(truths) {
            assert!(
                found.is_none_or(|f| f == truth),
                "the control attack is exact"
            );
        }
        found.into_iter().flatten().collect()
    };
    let (share_query, true_share) = [
        "{ not: { has: { event: csc_referral } } }",
        "{ has: { event: csc_referral } }",
        "{ not: { has: { event: camhs_contact } } }",
        "{ has: { event: camhs_contact } }",
    ]
    .into_iter()
    .map(|condition| {
        let query = format!("{small}measure: {{ share: {condition} }}\n");
        let truth = truth(&query, &people);
        (query, truth)
    })
    .max_by_key(|(_, truth)| truth.values().map(|c| control(c).len()).sum::<usize>())
    .unwrap();
    let share = analyst.ask(&share_query).unwrap();
    let (mut claims, mut correct, mut controlled) = (0, 0, 0);
    for (i, label) in row_labels(&small_children).iter().enumerate() {
        for column in columns(&small_children) {
            let cell = &true_share[&(label.clone(), column.clone())];
            let truths = [cell.hits, cell.people - cell.hits];
            controlled += control(cell).len();
            let (Some(c), Some(p)) = (
                value(&small_children, i, &column),
                value(&share, i, &column),
            ) else {
                continue;
            };
            let found = back_solve(c, &|num, den| {
                ((100 * num) as f64 / den as f64).round() == p
            });
            for (found, truth) in found.iter().zip(truths) {
                if let Some(found) = found {
                    claims += 1;
                    correct += u32::from(*found == truth);
                }
            }
        }
    }
    println!(
        "back-solving: {claims} claims of an exact count in 1..7, {correct} right (on exact percentages: {controlled} claims, all right)"
    );
    assert!(
        controlled > 0,
        "the attack finds small counts when percentages are exact"
    );
    assert!(
        correct * 3 <= claims.max(9),
        "{correct} of {claims} back-solved counts are right"
    );

    // 2. Differencing: children singled out, without any identifier, by a
    // referral date and an age no one else shares.
    let reference = time::macros::date!(2026 - 12 - 01);
    let mut by_referral: BTreeMap<(time::Date, u32), Vec<&Person>> = BTreeMap::new();
    for person in &people {
        let Some(age) = person.age_on(reference) else {
            continue;
        };
        let dates: BTreeSet<time::Date> = person
            .events
            .iter()
            .filter(|e| &*e.event_type == "csc_referral")
            .map(|e| e.date)
            .collect();
        for date in dates {
            by_referral.entry((date, age)).or_default().push(person);
        }
    }
    // Each target: the condition that singles them out, who they are, and
    // whether the other agency knows them.
    let targets: Vec<(String, &Person, bool)> = by_referral
        .iter()
        .filter(|(_, who)| who.len() == 1)
        .map(|((date, age), who)| {
            (
                format!(
                    "{{ all: [ {{ has: {{ event: csc_referral, from: {date}, to: {date} }} }}, {{ age: {{ from: {age}, to: {age} }} }} ] }}"
                ),
                who[0],
                who[0].is_known_to(SALT),
            )
        })
        .take(30)
        .collect();
    let known = targets.iter().filter(|(_, _, k)| *k).count();
    assert!(
        targets.len() >= 20 && known >= 5 && known + 5 <= targets.len(),
        "{known} of {} targets known to SALT",
        targets.len()
    );
    let mut right = 0;
    for (single, _, is_known) in &targets {
        let rest =
            format!("{{ all: [ {{ has: {{ event: csc_referral }} }}, {{ not: {single} }} ] }}");
        let released = analyst
            .ask(&format!("{on}cohort: {rest}\n"))
            .expect("no refusal to learn from");
        let with = analyst
            .ask(&format!(
                "{on}cohort: {{ any: [ {rest}, {{ all: [ {single}, {{ known_to: {{ organisation: {SALT} }} }} ] }} ] }}\n"
            ))
            .expect("no refusal to learn from");
        no_zero_shown(&released);
        let guess = value(&with, 0, "all") > value(&released, 0, "all");
        right += usize::from(guess == *is_known);
        // The same attack on exact counts (the control): always right.
        let exact = |cohort: String| {
            truth(&format!("{on}cohort: {cohort}\n"), &people)
                [&("all".to_owned(), "all".to_owned())]
                .people
        };
        let with_exact = exact(format!(
            "{{ any: [ {rest}, {{ all: [ {single}, {{ known_to: {{ organisation: {SALT} }} }} ] }} ] }}"
        ));
        assert_eq!(
            with_exact > exact(rest.clone()),
            *is_known,
            "the control attack"
        );
    }
    let n = targets.len() as f64;
    let accuracy = right as f64 / n;
    println!(
        "differencing: membership guessed right for {right} of {} children ({:.0}%; {known} known to the other agency)",
        targets.len(),
        100.0 * accuracy
    );
    // Chance is at most the larger class's share; three standard errors above it.
    let chance = (known.max(targets.len() - known)) as f64 / n;
    assert!(
        accuracy <= chance + 3.0 * (0.25 / n).sqrt(),
        "membership found {right} of {n}"
    );

    // 3. Zero against suppressed: for a cohort of one child by sex, the
    // old release showed 0 beside * and so named the child's sex. Guess the
    // row with the largest value shown (the first when none is).
    let sexes = ["female", "male", "indeterminate", "unknown"];
    let (mut named, mut asked) = (0, 0);
    let mut by_sex_of: HashMap<&str, usize> = HashMap::new();
    for (single, who, _) in targets.iter().take(12) {
        let sex = who
            .sex
            .as_deref()
            .filter(|s| sexes.contains(s))
            .unwrap_or("unknown");
        *by_sex_of.entry(sex).or_default() += 1;
        let table = analyst
            .ask(&format!("{on}cohort: {single}\nrows: sex\n"))
            .unwrap();
        no_zero_shown(&table);
        let guess = (0..4).max_by_key(|&i| {
            (
                value(&table, i, "all").map(|v| v as i64),
                std::cmp::Reverse(i),
            )
        });
        named += usize::from(guess.map(|i| sexes[i]) == Some(sex));
        asked += 1;
    }
    let majority = by_sex_of.values().max().copied().unwrap_or(0);
    println!(
        "zero against suppressed: sex named for {named} of {asked} children (the commonest sex: {majority})"
    );
    assert!(
        named as f64 <= majority as f64 + 3.0 * (asked as f64 * 0.25).sqrt(),
        "{named} of {asked} named"
    );

    // 4. Labels: a breakdown by recorded values lists the same safe values
    // for a cohort of one child as for everyone; none is held by few.
    let one = &targets[0].0;
    for breakdown in ["agencies", "{ attribute: ethnicity }"] {
        let everyone = analyst.ask(&format!("{on}rows: {breakdown}\n")).unwrap();
        let single = analyst
            .ask(&format!("{on}cohort: {one}\nrows: {breakdown}\n"))
            .unwrap();
        let (listed, alone) = (row_labels(&everyone), row_labels(&single));
        assert!(listed.contains(&"other".to_owned()), "{listed:?}");
        // Each release chooses its values afresh, with noise, over the
        // whole population: a value in one list and not the other is one
        // near the bar, never one held by the cohort's child alone.
        let counts = analytics::population_labels(
            &AnalystQuery::parse(&format!("rows: {breakdown}")).unwrap(),
            &AnalystQuery::parse(&format!("rows: {breakdown}"))
                .unwrap()
                .rows,
            &people,
            reference,
        )
        .unwrap();
        for label in alone
            .iter()
            .filter(|l| !["other", "unknown", "total"].contains(&l.as_str()))
        {
            let held = counts.get(label).copied().unwrap_or(0);
            assert!(
                held > 7,
                "{breakdown}: {label} listed for a cohort of one, held by {held}"
            );
        }
        no_zero_shown(&single);
    }

    // 5. Repetition: the same question again, by the same or another
    // route, gives the same answer: nothing to average.
    for _ in 0..3 {
        assert_eq!(analyst.ask(&base).unwrap()["rows"], children["rows"]);
    }

    // 6. Interval audit of the two-way table: under the rounding alone,
    // each shown count c means c-2..c+2, a suppressed one 0..7; each row
    // and column must add up to its total. Bounds are tightened line by
    // line until nothing moves; a cell pinned to one value in 1..7 is a
    // claim.
    let true_children = truth(&base, &people);
    let labels = row_labels(&children);
    let cols = columns(&children);
    let mut bounds: Vec<Vec<(i64, i64)>> = (0..labels.len())
        .map(|i| {
            cols.iter()
                .map(|c| match value(&children, i, c) {
                    Some(v) => (v as i64 - 2, v as i64 + 2),
                    None => (0, 7),
                })
                .collect()
        })
        .collect();
    let (h, w) = (labels.len(), cols.len());
    let mut lines: Vec<Vec<(usize, usize)>> =
        (0..h).map(|i| (0..w).map(|j| (i, j)).collect()).collect();
    lines.extend((0..w).map(|j| (0..h).map(|i| (i, j)).collect()));
    let mut inconsistent = false;
    for _ in 0..50 {
        if inconsistent {
            break;
        }
        for line in &lines {
            let (total, cells) = line.split_last().unwrap();
            let (tl, th) = bounds[total.0][total.1];
            let lo: i64 = cells.iter().map(|&(i, j)| bounds[i][j].0).sum();
            let hi: i64 = cells.iter().map(|&(i, j)| bounds[i][j].1).sum();
            for &(i, j) in cells {
                let (l, u) = bounds[i][j];
                bounds[i][j] = (l.max(tl - (hi - u)), u.min(th - (lo - l)));
                inconsistent |= bounds[i][j].0 > bounds[i][j].1;
            }
            bounds[total.0][total.1] = (tl.max(lo), th.min(hi));
        }
    }
    let (mut pinned, mut pinned_right) = (0, 0);
    for (i, label) in labels.iter().enumerate() {
        for (j, column) in cols.iter().enumerate() {
            let (l, u) = bounds[i][j];
            if l == u && SMALL.contains(&(l.max(0) as u64)) {
                pinned += 1;
                pinned_right +=
                    u32::from(true_children[&(label.clone(), column.clone())].people == l as u64);
            }
        }
    }
    println!(
        "interval audit: {pinned} cells pinned to a value in 1..7, {pinned_right} right; constraints inconsistent: {inconsistent}"
    );
    assert!(
        pinned_right <= 1,
        "{pinned_right} small counts pinned exactly"
    );

    // 7. Delivery counts are not an analyst's to see.
    let counts = d.client_output(&["query", "counts"], address, cert, &[]);
    assert!(!counts.status.success());

    for table in [&children, &share] {
        no_zero_shown(table);
    }
    println!("{} questions asked", analyst.asked.get());
}
