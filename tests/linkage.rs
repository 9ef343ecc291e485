//! Fuzzy linkage accuracy on the synthetic population, through
//! `joinery bench linkage` (the agent's mapping and encoding, the gateway's
//! matching): most council records lack an NHS number, and F1 must stay at
//! or above 0.98, with NHS numbers and on names, dates and postcodes alone.

mod common;

use common::*;

fn f1(args: &[&str]) -> f64 {
    let output = joinery_ok(args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{stdout}");
    stdout
        .split("F1 ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no F1 in:\n{stdout}"))
}

#[test]
fn synthetic_population_links_with_f1_of_at_least_0_98() {
    let d = Deployment::new();
    let synth = d.synth(3000, 41);
    let data = synth.to_str().unwrap();
    let truth = synth.join("ground_truth.csv");
    let truth = truth.to_str().unwrap();
    let pairs = d.path("pairs.csv");
    let key = d.path("linkage.key");
    let key = key.to_str().unwrap();
    let with_nhs = f1(&[
        "bench",
        "linkage",
        "--data",
        data,
        "--truth",
        truth,
        "--linkage-key",
        key,
        "--out",
        pairs.to_str().unwrap(),
    ]);
    assert!(with_nhs >= 0.98, "F1 {with_nhs}");
    assert!(
        csv_rows(&pairs, b',').len() > 100,
        "predicted pairs written"
    );
    let fuzzy_only = f1(&[
        "bench",
        "linkage",
        "--data",
        data,
        "--truth",
        truth,
        "--linkage-key",
        key,
        "--fuzzy-only",
    ]);
    assert!(fuzzy_only >= 0.98, "F1 {fuzzy_only}");
}
