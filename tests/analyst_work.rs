//! Ordinary analyst work still flows under disclosure control: on what
//! `joinery demo` leaves behind (three agencies' national-format extracts,
//! delivered over mutual TLS and linked), a gateway started as the demo
//! prints answers every example in `docs/queries/` and every built-in
//! indicator, within the default privacy budget, and each released number
//! is the true one (the engine over the gateway's own store) to within the
//! protection applied: noise of SD 5 per count (15 for events), rounding
//! to 5, percentages from noisy counts, medians from a noisy search.

mod common;

use std::path::PathBuf;

use common::*;
use joinery_gateway::analytics::{self, CellData, Labels, model::AnalystQuery, model::Measure};
use serde_json::Value;

/// Six standard deviations of the count noise.
const SIX_SD: f64 = 30.0;

/// Whether `shown` is the released form of `cell` under `measure`.
fn within(measure: &Measure, cell: &CellData, shown: f64) -> bool {
    let rounding = 2.5;
    match measure {
        Measure::Children => (shown - cell.people as f64).abs() <= SIX_SD + rounding,
        Measure::Events(_) => (shown - cell.hits as f64).abs() <= 3.0 * SIX_SD + rounding,
        Measure::Share(_) => {
            let (hits, people) = (cell.hits as f64, cell.people as f64);
            let low = 100.0 * (hits - SIX_SD).max(0.0) / (people + SIX_SD);
            let high = (100.0 * (hits + SIX_SD) / (people - SIX_SD).max(1.0)).min(100.0);
            (low - 0.5..=high + 0.5).contains(&shown)
        }
        Measure::MedianDays(_) | Measure::MedianChange(_) => {
            // Between the true values' 10th and 90th percentiles where the
            // cell has enough of them; else within their range.
            let mut values = cell.values.clone();
            values.sort_unstable();
            let n = values.len();
            let (low, high) = if n >= 60 {
                (values[n / 10], values[n - 1 - n / 10])
            } else {
                (values[0], values[n - 1])
            };
            (low as f64 - 1.0..=high as f64 + 1.0).contains(&shown)
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn examples_and_indicators_answer_within_the_protection() {
    let (d, printed) = Deployment::demo(3000);
    assert!(printed.contains("Risk tiers"), "{printed}");
    let gateway = d.start_gateway(None, &["--linkage-interval-secs", "36000"]);
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
    let analyst: (PathBuf, PathBuf) = (
        d.path("pki/analysts/analyst-demo-analyst.pem"),
        d.path("pki/analysts/analyst-demo-analyst.key"),
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut questions: Vec<(String, String)> = Vec::new();
    for entry in std::fs::read_dir(root.join("docs/queries")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue; // query.schema.json
        }
        questions.push((
            path.display().to_string(),
            std::fs::read_to_string(&path).unwrap(),
        ));
    }
    questions.sort();
    let library = repo("gateway/library/indicators.yaml");
    for name in library.lines().filter_map(|l| l.strip_prefix("- name: ")) {
        questions.push((format!("indicator {name}"), format!("indicator: {name}\n")));
    }
    assert!(questions.len() >= 20, "{} questions", questions.len());

    let today = time::OffsetDateTime::now_utc().date();
    let (mut checked, mut shown) = (0, 0);
    let mut last = Value::Null;
    for (what, text) in &questions {
        let file = d.path("question.yaml");
        std::fs::write(&file, text).unwrap();
        let out = d.client_output(
            &["query", "run", file.to_str().unwrap(), "--format", "json"],
            &gateway.address,
            analyst.clone(),
            &[],
        );
        assert!(
            out.status.success(),
            "{what} was not answered: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let table: Value = serde_json::from_slice(&out.stdout).unwrap();
        // The examples and the library use only what the example agreement
        // shares.
        assert_eq!(table["warnings"], serde_json::json!([]), "{what}");
        last = table.clone();
        let query = AnalystQuery::parse(text).unwrap();
        let reference = query.reference_date.unwrap_or(today);
        let truth = analytics::tabulate(&query, &people, reference, &Labels::default());
        let full = truth.with_totals();
        let columns: Vec<String> = truth
            .columns
            .iter()
            .cloned()
            .chain(["total".to_owned()])
            .collect();
        let rows = table["rows"].as_array().unwrap();
        assert_eq!(rows.len(), full.len(), "{what}: rows");
        for (i, row) in rows.iter().enumerate() {
            for (j, column) in columns.iter().enumerate() {
                checked += 1;
                if let Some(value) = row["cells"][column].as_f64() {
                    shown += 1;
                    assert!(
                        within(&query.measure, &full[i][j], value),
                        "{what}: {} / {column} shows {value} for {:?}",
                        row["label"],
                        (full[i][j].people, full[i][j].hits, full[i][j].values.len())
                    );
                }
            }
        }
    }
    // A question about something no agreement shares is answered with a
    // warning naming it (on standard error, and in the JSON).
    let file = d.path("unshared.yaml");
    std::fs::write(&file, "cohort: { has: { event: school_exclusion } }\n").unwrap();
    let out = d.client_output(
        &["query", "run", file.to_str().unwrap(), "--format", "json"],
        &gateway.address,
        analyst.clone(),
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success()
            && stderr.contains(
                "warning: event type `school_exclusion` is shared by no agreement in force"
            ),
        "{stderr}"
    );
    let table: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        table["warnings"].as_array().map(Vec::len),
        Some(1),
        "{table}"
    );
    // A table by period shows no total across the periods, and says what
    // its `-` means.
    let by_period = root.join("docs/queries/camhs-seen-within-18-weeks.yaml");
    let out = d.client_output(
        &["query", "run", by_period.to_str().unwrap()],
        &gateway.address,
        analyst.clone(),
        &[],
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains(" -\n") && printed.contains("-: nothing to show, not a suppressed value"),
        "{printed}"
    );
    println!(
        "{} questions, {checked} cells, {shown} shown, each within the protection",
        questions.len()
    );
    assert!(
        shown * 3 >= checked,
        "most of the work is visible: {shown} of {checked} cells shown"
    );

    // The last question asked again is answered with the same release.
    let again = d.client_output(
        &[
            "query",
            "run",
            d.path("question.yaml").to_str().unwrap(),
            "--format",
            "json",
        ],
        &gateway.address,
        analyst,
        &[],
    );
    let again: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["rows"], last["rows"]);
}
