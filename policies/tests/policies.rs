//! The policy crate end to end: the shipped examples, line-precise errors and
//! warnings, the JSON Schema, signatures, validity in time, explain and diff.

use std::path::{Path, PathBuf};

use joinery_policies::check::{Severity, check};
use joinery_policies::explain::{Format, explain};
use joinery_policies::model::{Access, Transform};
use joinery_policies::{Agreement, PolicyError, SignedAgreement, diff::diff, signing};
use rand::{Rng, SeedableRng};
use time::OffsetDateTime;
use time::macros::datetime;

const TODAY: OffsetDateTime = datetime!(2026-11-23 12:00 UTC);

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn example(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name),
    )
    .unwrap()
}

#[test]
fn the_shipped_examples_are_valid() {
    assert_eq!(examples().len(), 3);
    for path in examples() {
        let checked = check(&std::fs::read_to_string(&path).unwrap(), TODAY);
        let errors: Vec<String> = checked.errors().map(ToString::to_string).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
    }
}

#[test]
fn the_shipped_schema_is_the_generated_one() {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("agreement.schema.json"),
    )
    .unwrap();
    assert_eq!(
        shipped,
        joinery_policies::schema(),
        "regenerate with: joinery policy schema > policies/agreement.schema.json"
    );
}

#[test]
fn errors_point_at_line_and_column_and_say_how_to_fix() {
    let text = example("minimal.yaml").replace(
        "  safe_projects: Service planning.",
        "  safe_projects: Service planning.\n  safe_pizza: yes",
    );
    let checked = check(&text, TODAY);
    let error = checked.errors().next().expect("unknown key is an error");
    let line = text.lines().position(|l| l.contains("safe_pizza")).unwrap() + 1;
    assert_eq!(error.at.line, line, "{error}");
    assert!(error.message.contains("safe_pizza"), "{error}");
    assert!(!error.help.is_empty());

    // A rule that spans fields: names may only be dropped.
    let text = example("children-at-risk-stratification.yaml").replacen(
        "      given_name: drop",
        "      given_name: keep",
        1,
    );
    let checked = check(&text, TODAY);
    let error = checked.errors().next().expect("sending a name is an error");
    let line = text
        .lines()
        .position(|l| l.contains("given_name: keep"))
        .unwrap()
        + 1;
    assert_eq!((error.at.line, error.at.column), (line, 7), "{error}");
    assert!(error.help.contains("drop"), "{error}");

    // A dataset nobody declared.
    let text = example("minimal.yaml").replace("sends: [referrals]", "sends: [referrals, extras]");
    assert!(
        check(&text, TODAY)
            .errors()
            .any(|e| e.message.contains("extras"))
    );
    // local_id must be pseudonymised.
    let text = example("minimal.yaml").replace("local_id: pseudonymise", "local_id: keep");
    assert!(
        check(&text, TODAY)
            .errors()
            .any(|e| e.message.contains("local_id"))
    );
}

/// Every misspelt key is reported in one go, each with the key it most
/// likely means; a key like no other is left out with what is nested under
/// it; the report stops at the first error of another kind.
#[test]
fn every_unknown_key_is_reported_with_what_it_likely_means() {
    let text = example("children-at-risk-stratification.yaml")
        .replacen("title:", "titel:", 1)
        .replacen("retention_days: 1095", "retension_days: 1095", 1)
        .replacen("minimum_cell_count:", "minimum_cel_count:", 1)
        .replacen("five_safes:", "notes:\n  a: 1\n  b: 2\nfive_safes:", 1);
    let checked = check(&text, TODAY);
    assert!(checked.agreement.is_none());
    let errors: Vec<(String, String)> = checked
        .errors()
        .map(|e| (e.message.clone(), e.help.clone()))
        .collect();
    for (key, meant) in [
        ("titel", Some("title")),
        ("retension_days", Some("retention_days")),
        ("minimum_cel_count", Some("minimum_cell_count")),
        ("notes", None),
    ] {
        let (_, help) = errors
            .iter()
            .find(|(m, _)| m.contains(&format!("unknown field `{key}`")))
            .unwrap_or_else(|| panic!("{key} not reported: {errors:#?}"));
        match meant {
            Some(meant) => assert_eq!(help, &format!("did you mean `{meant}`?")),
            None => assert!(help.contains("remove the key"), "{help}"),
        }
    }
    assert_eq!(
        errors.len(),
        4,
        "no echo of a key read as meant: {errors:#?}"
    );
    // A wrong value ends the report after the unknown keys before it: the
    // one after it (`notes`) is not reached.
    let text = text.replacen("p_percent: 10", "p_percent: ten", 1);
    let checked = check(&text, TODAY);
    let errors: Vec<String> = checked.errors().map(|e| e.message.clone()).collect();
    assert!(errors[0].contains("titel"), "{errors:#?}");
    assert!(errors.last().unwrap().contains("invalid"), "{errors:#?}");
    assert!(!errors.iter().any(|e| e.contains("notes")), "{errors:#?}");
}

#[test]
fn risky_choices_are_warnings() {
    let text = example("children-at-risk-stratification.yaml")
        .replacen("      date_of_birth: month", "      date_of_birth: keep", 1)
        .replacen("      postcode: district", "      postcode: keep", 1)
        .replacen(
            "      ethnicity: keep",
            "      ethnicity: keep\n      case_notes: keep",
            1,
        )
        .replace("minimum_cell_count: 8", "minimum_cell_count: 3")
        .replace("epsilon: 20,", "epsilon: 50,")
        .replace("expires: 2028-12-31", "expires: 2031-12-31")
        .replace("access: aggregates", "access: row_level");
    let checked = check(&text, TODAY);
    assert!(checked.is_valid(), "{:?}", checked.diagnostics);
    let warnings: Vec<String> = checked.warnings().map(|w| w.message.clone()).collect();
    for expected in [
        "does not mention row-level outputs",
        "day-precision date of birth",
        "free text",
        "below 5",
        "three years",
        "weak guarantee",
    ] {
        assert!(
            warnings.iter().any(|w| w.contains(expected)),
            "no warning about {expected}: {warnings:?}"
        );
    }
    assert!(
        checked
            .diagnostics
            .iter()
            .all(|d| d.severity == Severity::Warning)
    );
}

/// Fuzzy linkage on encodings an operator holding a register can attack is
/// warned about: a version before 6, or version 6 or 7 beside a birth date or
/// postcode kept in clear finer than the year or area.
#[test]
fn encodings_a_register_can_attack_are_warnings() {
    let warnings = |text: &str| -> Vec<String> {
        let checked = check(text, TODAY);
        assert!(checked.is_valid(), "{:?}", checked.diagnostics);
        checked.warnings().map(|w| w.message.clone()).collect()
    };
    let v5 = example("children-at-risk-stratification.yaml");
    let version = "lets an operator of the gateway holding a register";
    let clear = "finer than the year";
    let found = warnings(&v5);
    assert!(found.iter().any(|w| w.contains(version)), "{found:?}");
    assert!(!found.iter().any(|w| w.contains(clear)), "{found:?}");

    for hardened in ["6", "7"] {
        let text = v5.replacen("    version: 5\n", &format!("    version: {hardened}\n"), 1);
        assert_ne!(text, v5, "the example's encoding version moved");
        let found = warnings(&text);
        assert!(!found.iter().any(|w| w.contains(version)), "{found:?}");
        assert!(found.iter().any(|w| w.contains(clear)), "{found:?}");

        let coarse = text
            .replace("      date_of_birth: month", "      date_of_birth: year")
            .replace("      postcode: district", "      postcode: area");
        let found = warnings(&coarse);
        assert!(
            !found
                .iter()
                .any(|w| w.contains(version) || w.contains(clear)),
            "{found:?}"
        );
    }
}

/// Writes `text` as an agreement whose signatories use fresh keys; returns
/// (agreement path, key paths).
fn with_fresh_keys(dir: &Path, text: &str) -> (PathBuf, Vec<PathBuf>) {
    let mut agreement: Agreement = serde_saphyr::from_str(text).unwrap();
    let mut keys = Vec::new();
    for (i, signatory) in agreement.signatories.iter_mut().enumerate() {
        let key = dir.join(format!("signer{i}.key"));
        signatory.public_key = signing::keygen(&key).unwrap();
        keys.push(key);
    }
    let path = dir.join("agreement.yaml");
    std::fs::write(&path, serde_saphyr::to_string(&agreement).unwrap()).unwrap();
    (path, keys)
}

fn sign(path: &Path, key: &Path) -> Result<String, PolicyError> {
    let bytes = std::fs::read(path).unwrap();
    let agreement: Agreement = serde_saphyr::from_str(&String::from_utf8_lossy(&bytes)).unwrap();
    signing::sign(path, &agreement, &bytes, key)
}

#[test]
fn in_force_only_with_every_signature_over_the_exact_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (path, keys) =
        with_fresh_keys(dir.path(), &example("children-at-risk-stratification.yaml"));
    assert!(matches!(
        SignedAgreement::load(&path),
        Err(PolicyError::Unsigned { .. })
    ));
    assert_eq!(sign(&path, &keys[0]).unwrap(), "Dr A. Example");
    sign(&path, &keys[1]).unwrap();
    let err = SignedAgreement::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("C. Example") && !err.contains("Dr A. Example"),
        "{err}"
    );
    sign(&path, &keys[2]).unwrap();
    let signed = SignedAgreement::load(&path).unwrap();
    assert_eq!(signed.digest.len(), 64);
    assert!(signed.may_send("RX9", "camhs_referrals"));
    assert!(!signed.may_send("RX9", "csc_referrals"));

    // A key that is not a signatory's cannot sign.
    let stranger = dir.path().join("stranger.key");
    signing::keygen(&stranger).unwrap();
    assert!(matches!(
        sign(&path, &stranger),
        Err(PolicyError::NotASignatory { .. })
    ));

    // Any edit after signing breaks it.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("retention_days: 1095", "retention_days: 1096"),
    )
    .unwrap();
    assert!(matches!(
        SignedAgreement::load(&path),
        Err(PolicyError::Unsigned { .. })
    ));
}

#[test]
fn in_force_between_valid_from_and_the_end_of_expiry_day() {
    let dir = tempfile::tempdir().unwrap();
    let (path, keys) = with_fresh_keys(dir.path(), &example("minimal.yaml"));
    sign(&path, &keys[0]).unwrap();
    let signed = SignedAgreement::load(&path).unwrap();
    assert!(signed.in_force_at(datetime!(2026-01-01 00:00 UTC)).is_ok());
    assert!(signed.in_force_at(datetime!(2027-12-31 23:59 UTC)).is_ok());
    let expired = signed
        .in_force_at(datetime!(2028-01-01 00:00 UTC))
        .unwrap_err()
        .to_string();
    assert!(expired.contains("expired"), "{expired}");
    let early = signed
        .in_force_at(datetime!(2025-12-31 23:59 UTC))
        .unwrap_err()
        .to_string();
    assert!(early.contains("comes into force"), "{early}");
}

#[test]
fn diff_flags_what_widens_access() {
    let old: Agreement =
        serde_saphyr::from_str(&example("children-at-risk-stratification.yaml")).unwrap();
    let mut new = old.clone();
    new.version = 2;
    let dataset = new.datasets.get_mut("csc_referrals").unwrap();
    dataset
        .fields
        .insert("date_of_birth".into(), Transform::Keep);
    dataset.fields.insert("ethnicity".into(), Transform::Drop);
    dataset.retention_days = 2000;
    new.outputs.minimum_cell_count = 5;
    new.outputs.privacy.epsilon = 40.0;
    new.outputs.privacy.noise_sd = 2.0;
    new.outputs.dominance.k = 95;
    new.outputs.p_percent = 5;
    new.roles.get_mut("analyst").unwrap().access = Access::RowLevel;
    let changes = diff(&old, &new);
    let widening: Vec<&str> = changes
        .iter()
        .filter(|c| c.widens)
        .map(|c| c.path.as_str())
        .collect();
    for path in [
        "datasets.csc_referrals.fields.date_of_birth",
        "datasets.csc_referrals.retention_days",
        "outputs.minimum_cell_count",
        "outputs.privacy.epsilon",
        "outputs.privacy.noise_sd",
        "outputs.dominance",
        "outputs.p_percent",
        "roles.analyst.access",
    ] {
        assert!(widening.contains(&path), "{path} should widen: {changes:?}");
    }
    // Values read as the agreement writes them.
    let access = changes
        .iter()
        .find(|c| c.path == "roles.analyst.access")
        .unwrap();
    assert!(
        access.to_string().contains("aggregates -> row_level"),
        "{access}"
    );
    let narrowing = changes
        .iter()
        .find(|c| c.path == "datasets.csc_referrals.fields.ethnicity")
        .unwrap();
    assert!(!narrowing.widens);
    assert!(
        diff(&old, &old).iter().all(|c| c.path == "version"),
        "only the version complaint"
    );
}

/// An agreement may send the date of birth as a quarter and the postcode
/// as an area; explain says what analysis loses by each precision, and the
/// diff calls coarsening a narrowing and the way back a widening.
#[test]
fn birth_quarter_and_postcode_area_are_allowed_and_their_cost_is_explained() {
    let text = example("children-at-risk-stratification.yaml");
    let coarse = text
        .replace("date_of_birth: month", "date_of_birth: quarter")
        .replace("postcode: district", "postcode: area");
    assert_ne!(coarse, text);
    let checked = check(&coarse, TODAY);
    let errors: Vec<String> = checked.errors().map(ToString::to_string).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let new = checked.agreement.unwrap();
    let dataset = &new.datasets["csc_referrals"];
    assert_eq!(dataset.fields["date_of_birth"], Transform::Quarter);
    assert_eq!(dataset.fields["postcode"], Transform::Area);

    let explained = explain(&new, Format::Text);
    for said in [
        "reduced to quarter and year of birth (e.g. 2015-Q2); ages are counted from the first day of the birth quarter, so on any day about 12% of children are counted a year older than they are",
        "reduced to the postcode area (e.g. LS); places are known only to the area",
    ] {
        assert!(explained.contains(said), "{said:?} in:\n{explained}");
    }
    let old: Agreement = serde_saphyr::from_str(&text).unwrap();
    assert!(
        explain(&old, Format::Text).contains("birth month, so on any day about 4% of children"),
        "a month costs less"
    );
    let change = |from: &Agreement, to: &Agreement| {
        diff(from, to)
            .into_iter()
            .find(|c| c.path == "datasets.csc_referrals.fields.date_of_birth")
            .unwrap()
    };
    assert!(!change(&old, &new).widens);
    assert!(change(&new, &old).widens);
    let postcode = diff(&new, &old)
        .into_iter()
        .find(|c| c.path == "datasets.csc_referrals.fields.postcode")
        .unwrap();
    assert!(postcode.widens, "area back to district widens");

    // Not for other fields.
    let wrong = text.replace("ethnicity: keep", "ethnicity: area");
    let checked = check(&wrong, TODAY);
    assert!(
        checked.errors().next().is_some(),
        "area is only for postcodes"
    );
}

#[test]
fn explain_in_every_format() {
    let agreement: Agreement =
        serde_saphyr::from_str(&example("children-in-care-health-outcomes.yaml")).unwrap();
    let text = explain(&agreement, Format::Text);
    assert!(
        text.contains("lac_episodes") && text.contains("never sent"),
        "{text}"
    );
    assert!(
        text.contains("replaced by an age band (0-0, 1-4, 5-9, 10-15, 16-17, 18+)"),
        "{text}"
    );
    // Periods in years, fields in words.
    assert!(text.contains("kept for 7 years (2555 days)"), "{text}");
    assert!(
        text.contains("date of birth") && !text.contains("date_of_birth"),
        "{text}"
    );
    let markdown = explain(&agreement, Format::Markdown);
    assert!(markdown.starts_with("# Health outcomes of children in care"));
    assert!(markdown.contains("| Field | How it is protected |"));
    let mut hostile = agreement.clone();
    hostile.title = "<script>alert(1)</script>".into();
    let html = explain(&hostile, Format::Html);
    assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"));
}

#[test]
fn the_parser_survives_damaged_files() {
    // A bounded, deterministic stand-in for the cargo-fuzz target in policies/fuzz.
    let seeds: Vec<Vec<u8>> = examples()
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for _ in 0..1500 {
        let mut bytes = seeds[rng.random_range(0..seeds.len())].clone();
        for _ in 0..rng.random_range(1..8) {
            let at = rng.random_range(0..bytes.len());
            match rng.random_range(0..3) {
                0 => bytes[at] = rng.random(),
                1 => {
                    bytes.remove(at);
                }
                _ => {
                    const YAML_SYNTAX: &[u8] = b": -{}[]\n\"'&*!|>#";
                    bytes.insert(at, YAML_SYNTAX[rng.random_range(0..YAML_SYNTAX.len())]);
                }
            }
        }
        let _ = check(&String::from_utf8_lossy(&bytes), TODAY);
    }
}

#[test]
fn agreements_may_link_on_fields_beyond_the_canonical_five() {
    let base = example("children-at-risk-stratification.yaml");
    let listed = base.replace(
        "  fields: [given_name, family_name, date_of_birth, sex, postcode]",
        "  fields: [given_name, family_name, date_of_birth, sex, postcode, school_urn]",
    );
    assert_ne!(listed, base, "the example's linkage fields moved");
    // Listed without saying how it is encoded.
    let checked = check(&listed, TODAY);
    let error = checked
        .errors()
        .next()
        .expect("an unencoded field is an error");
    assert!(error.message.contains("school_urn"), "{error}");
    assert!(error.help.contains("linkage.encoding.fields"), "{error}");

    let encoded = listed.replace(
        "    scheme: keyed-bloom\n    version: 5\n",
        "    scheme: keyed-bloom\n    version: 5\n    fields:\n      - { field: school_urn, tokens: whole, bits: 64, hashes: 4, salt: { field: date_of_birth, take: { prefix: 4 } } }\n",
    );
    let checked = check(&encoded, TODAY);
    assert_eq!(
        checked.errors().count(),
        0,
        "{:?}",
        checked.errors().collect::<Vec<_>>()
    );
    let agreement: Agreement = serde_saphyr::from_str(&encoded).unwrap();
    let params = agreement.linkage.params().unwrap();
    let last = params.fields.last().unwrap();
    assert_eq!(
        (last.field.as_str(), last.bits, last.hashes),
        ("school_urn", 64, 4)
    );
    // The canonical five, the full name made from them (from version 3:
    // salted with the postcode district), and school_urn.
    assert_eq!(params.fields.len(), 7);
    let full_name = params.fields.iter().find(|f| f.field == "full_name");
    assert_eq!(
        full_name
            .and_then(|f| f.salt.as_ref())
            .map(|s| s.field.as_str()),
        Some("postcode")
    );
    // Without the postcode, version 3's full name would go unsalted: it is
    // left out (version 2 salts it with the day and month of birth), and so
    // are version 6's encodings again under the postcode (the others still
    // stand in for the fields they covered).
    for (version, with_full_name) in [(3, false), (2, true), (6, false)] {
        let without_postcode = encoded
            .replace("sex, postcode, school_urn]", "sex, school_urn]")
            .replace(
                "version: 5\n    fields",
                &format!("version: {version}\n    fields"),
            );
        let agreement: Agreement = serde_saphyr::from_str(&without_postcode).unwrap();
        let params = agreement.linkage.params().unwrap();
        assert!(!params.fields.iter().any(|f| f.field == "postcode"));
        params.validate().unwrap();
        assert!(
            !params
                .fields
                .iter()
                .any(|f| f.salt.as_ref().is_some_and(|s| s.field == "postcode")),
            "version {version}"
        );
        assert_eq!(
            params.fields.iter().any(|f| f.field == "full_name"),
            with_full_name,
            "version {version}"
        );
        assert!(
            params
                .fields
                .iter()
                .all(|f| f.field == "sex" || f.field == "date_of_birth" || f.salt.is_some()),
            "version {version}: every name salted"
        );
    }
    let explained = explain(&agreement, Format::Markdown);
    assert!(
        explained.contains("school_urn is encoded as one whole value in a 64-bit filter"),
        "{explained}"
    );

    // Bad encodings are named.
    for (from, to, expected) in [
        (
            "bits: 64, hashes: 4",
            "bits: 100, hashes: 4",
            "school_urn: bits must be a power of two",
        ),
        (
            "field: school_urn, tokens",
            "field: sex, tokens",
            "sex has a built-in encoding",
        ),
        (
            "field: date_of_birth, take",
            "field: gp_practice, take",
            "not listed",
        ),
    ] {
        let text = encoded.replace(from, to);
        let checked = check(&text, TODAY);
        assert!(
            checked.errors().any(|e| e.message.contains(expected)),
            "{expected}: {:?}",
            checked.errors().collect::<Vec<_>>()
        );
    }
    let unlisted = encoded.replace(", postcode, school_urn]", ", postcode]");
    assert!(
        check(&unlisted, TODAY)
            .errors()
            .any(|e| e.message.contains("school_urn is encoded but not listed"))
    );

    // Changing an encoding without a new version is called out.
    let old = agreement.clone();
    let mut new = agreement;
    new.linkage.encoding.fields[0].bits = 128;
    let changes = diff(&old, &new);
    assert!(
        changes
            .iter()
            .any(|c| c.path == "linkage.encoding" && c.description.contains("bump")),
        "{changes:?}"
    );
}

#[test]
fn privacy_settings_that_protect_nothing_are_errors() {
    for (from, to, expected) in [
        ("noise_sd: 5,", "noise_sd: 0.5,", "noise_sd 0.5 is below 1"),
        ("epsilon: 20,", "epsilon: 0,", "must be above 0"),
        ("delta: 1.0e-9", "delta: 0.01", "at most 1e-5"),
        (
            "dominance: { n: 2, k: 90 }",
            "dominance: { n: 0, k: 90 }",
            "not a rule",
        ),
        ("p_percent: 10", "p_percent: 150", "over 100"),
    ] {
        let text = example("children-at-risk-stratification.yaml").replace(from, to);
        let checked = check(&text, TODAY);
        let errors: Vec<String> = checked.errors().map(|e| e.message.clone()).collect();
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{to}: {errors:?}"
        );
    }
    let explained = joinery_policies::explain::explain(
        &check(&example("children-at-risk-stratification.yaml"), TODAY)
            .agreement
            .unwrap(),
        joinery_policies::explain::Format::Text,
    );
    assert!(
        explained.contains("epsilon 20 and delta 1e-9"),
        "{explained}"
    );
    assert!(explained.contains("about 41 two-way tables"), "{explained}");
}

/// Keyholders are named as their certificates name them, once each; explain
/// says who must collude; diff says every pseudonym changes, and calls
/// fewer keyholders a widening.
#[test]
fn nhs_number_keyholders_are_checked_explained_and_diffed() {
    let text = example("children-at-risk-stratification.yaml");
    let with = |list: &str| {
        text.replace(
            "linkage:\n",
            &format!("linkage:\n  nhs_number_keyholders: {list}\n"),
        )
    };
    let two = with("[keyholder-a.example, keyholder-b.example]");
    let checked = check(&two, TODAY);
    let errors: Vec<String> = checked.errors().map(ToString::to_string).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let new = checked.agreement.unwrap();
    assert_eq!(new.linkage.nhs_number_keyholders.len(), 2);
    let explained = explain(&new, Format::Text);
    assert!(
        explained.contains(
            "through 2 independent keyholders (keyholder-a.example, keyholder-b.example)"
        ) && explained.contains("every keyholder's collusion"),
        "{explained}"
    );

    for (bad, says) in [
        ("[keyholder a]", "is not a host name"),
        ("[k.example, k.example]", "listed twice"),
        ("[-k.example]", "is not a host name"),
    ] {
        let errors: Vec<String> = check(&with(bad), TODAY)
            .errors()
            .map(ToString::to_string)
            .collect();
        assert!(errors.iter().any(|e| e.contains(says)), "{bad}: {errors:?}");
    }

    let old: Agreement = serde_saphyr::from_str(&text).unwrap();
    let one: Agreement = serde_saphyr::from_str(&with("[keyholder-a.example]")).unwrap();
    let change = |from: &Agreement, to: &Agreement| {
        diff(from, to)
            .into_iter()
            .find(|c| c.path == "linkage.nhs_number_keyholders")
            .expect("the keyholders' change is reported")
    };
    assert!(
        change(&old, &new)
            .description
            .contains("every NHS pseudonym changes")
    );
    assert!(!change(&old, &new).widens);
    assert!(change(&new, &one).widens, "fewer keyholders widen");
    assert!(change(&new, &old).widens);
}
