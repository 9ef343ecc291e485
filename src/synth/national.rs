//! The synthetic agencies' records again, in the national formats they would
//! really send: the council's CIN census XML, SSDA903 tables and Ofsted
//! Annex A lists; the CAMHS trust's MHSDS-style tables; the community trust's
//! CSDS-style tables and a FHIR bulk export.
//!
//! Every file describes the same children as the CSV extracts and the ground
//! truth: the same local ids, the identity each agency recorded (the CIN
//! census and SSDA903 carry no names or NHS numbers, as in life), and the same
//! referral and contact dates. What the CSV extracts do not say (placements,
//! assessments, care contacts' outcomes) is drawn from a generator of its own,
//! so adding formats never changes the CSV extracts. The national files are
//! clean: bad input is exercised by the readers' own tests.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use time::{Date, Duration, Month};

use joinery_agent::config::{NationalFormat, SourceConfig, SqlTable};

use super::{Layout, Recorded, SynthAgency};

/// One agency's record of one child, with the dates its CSV rows hold.
pub(super) struct AgencyRecord {
    pub recorded: Recorded,
    pub male: bool,
    pub dates: Vec<Date>,
}

/// A source written for an agency in a national format (or a database
/// table), with the agent configuration that reads it.
#[derive(Debug, Clone)]
pub struct NationalSource {
    pub organisation: &'static str,
    pub dataset: &'static str,
    /// The file or directory written.
    pub path: PathBuf,
    pub config: SourceConfig,
}

/// The collection year (by the year it ends, on 31 March) holding `day`.
fn collection_year(day: Date) -> i32 {
    if day.month() <= Month::March {
        day.year()
    } else {
        day.year() + 1
    }
}

/// Writes every national format for `agency`'s records under `dir`.
pub(super) fn write(
    dir: &Path,
    agency: &SynthAgency,
    records: &[AgencyRecord],
    seed: u64,
    reference: Date,
) -> anyhow::Result<Vec<NationalSource>> {
    // Its own stream: the CSV extracts stay as they were.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6e61_7469_6f6e_616c);
    let national = |format: &str, path: PathBuf, dataset, year| NationalSource {
        organisation: agency.organisation,
        dataset,
        config: SourceConfig::National(NationalFormat {
            format: format.to_owned(),
            path: path.clone(),
            dataset: dataset.to_owned(),
            year,
            code_lists: None,
            files: Default::default(),
            snapshot: false,
        }),
        path,
    };
    let year = collection_year(reference);
    Ok(match agency.layout {
        Layout::Council => {
            let cin = dir.join("cin_census.xml");
            cin_census(&cin, records, year, reference, &mut rng)?;
            let lac = dir.join("ssda903");
            ssda903(&lac, records, reference, &mut rng)?;
            let annex = dir.join("annex_a");
            annex_a(&annex, records, reference, &mut rng)?;
            let cases = dir.join("cases.sqlite");
            let mapping = dir.join("cases.yaml");
            cases_database(&cases, &mapping, records, &mut rng)?;
            vec![
                national("cin_census", cin, "cin", Some(year)),
                national("ssda903", lac, "lac", Some(year)),
                national("annex_a", annex, "annex_a", None),
                NationalSource {
                    organisation: agency.organisation,
                    dataset: "csc_cases",
                    config: SourceConfig::Sql(SqlTable {
                        url: format!("sqlite://{}", cases.display()),
                        table: Some("referrals".to_owned()),
                        query: None,
                        mapping,
                        watermark: "updated_at".to_owned(),
                        key: "id".to_owned(),
                    }),
                    path: cases,
                },
            ]
        }
        Layout::Camhs => {
            let mhsds = dir.join("mhsds");
            health_tables(&mhsds, Tables::MHSDS, records, reference, &mut rng)?;
            vec![national("mhsds", mhsds, "camhs", None)]
        }
        Layout::Salt => {
            let csds = dir.join("csds");
            health_tables(&csds, Tables::CSDS, records, reference, &mut rng)?;
            let fhir = dir.join("fhir");
            fhir_export(&fhir, records, reference, &mut rng)?;
            vec![
                national("csds", csds, "salt", None),
                national("fhir", fhir, "salt_fhir", None),
            ]
        }
        // No national format here reads an emergency department's records
        // (ECDS): its CSV extract is all there is.
        Layout::AcuteAe => Vec::new(),
    })
}

/// The mapping of the council's case-management table.
const CASES_MAPPING: &str = "\
# The council's case-management database, read by the agent's sql source.
dataset: csc_cases
fields:
  local_id: child_id
  nhs_number: nhs_number
  given_name: forename
  family_name: surname
  date_of_birth: { column: dob, format: iso }
  sex: gender
  postcode: postcode
attributes:
  ethnicity: ethnicity
events:
  - type: csc_referral
    date: { column: referred, format: iso }
    attributes:
      source: source
";

/// The council's case-management table in SQLite: a row per referral, its
/// last change time the watermark. Written on a thread with its own runtime
/// (synth may run inside the demo's).
fn cases_database(
    path: &Path,
    mapping: &Path,
    records: &[AgencyRecord],
    rng: &mut ChaCha8Rng,
) -> anyhow::Result<()> {
    std::fs::write(mapping, CASES_MAPPING)
        .with_context(|| format!("writing {}", mapping.display()))?;
    let _ = std::fs::remove_file(path);
    let mut rows = Vec::new();
    for record in records {
        let r = &record.recorded;
        for &day in &record.dates {
            rows.push([
                r.local_id.clone(),
                r.nhs.clone().unwrap_or_default(),
                super::title_case(&r.given),
                super::title_case(&r.family),
                iso(r.dob),
                if record.male { "1" } else { "2" }.to_owned(),
                r.postcode.clone(),
                pick(rng, super::ETHNICITY).to_owned(),
                iso(day),
                pick(rng, super::COUNCIL_REFERRAL_SOURCES).to_owned(),
                format!("{}T09:00:00", iso(day)),
            ]);
        }
    }
    let url = format!("sqlite://{}?mode=rwc", path.display());
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(write_cases(&url, &rows))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the SQLite writer failed"))?
    })
    .with_context(|| format!("writing {}", path.display()))
}

async fn write_cases(url: &str, rows: &[[String; 11]]) -> anyhow::Result<()> {
    sqlx::any::install_default_drivers();
    let db = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?;
    sqlx::query(
        "CREATE TABLE referrals (id INTEGER PRIMARY KEY, child_id TEXT NOT NULL, nhs_number TEXT, forename TEXT, \
         surname TEXT, dob TEXT, gender TEXT, postcode TEXT, ethnicity TEXT, referred TEXT, source TEXT, updated_at TEXT NOT NULL)",
    )
    .execute(&db)
    .await?;
    let mut tx = db.begin().await?;
    for (id, row) in rows.iter().enumerate() {
        let mut query = sqlx::query(
            "INSERT INTO referrals (id, child_id, nhs_number, forename, surname, dob, gender, postcode, ethnicity, \
             referred, source, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(id as i64 + 1);
        for value in row {
            query = query.bind(value.clone());
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    db.close().await;
    Ok(())
}

fn iso(d: Date) -> String {
    d.to_string()
}

fn dmy(d: Date) -> String {
    format!("{:02}/{:02}/{}", d.day(), d.month() as u8, d.year())
}

/// A day `0..=span` days after `from`, if not after `until`.
fn after(rng: &mut ChaCha8Rng, from: Date, span: i64, until: Date) -> Option<Date> {
    Some(from + Duration::days(rng.random_range(0..=span))).filter(|d| *d <= until)
}

/// A valid UPN for a council record (or now and then `UN1`-`UN5`: not known).
fn upn(rng: &mut ChaCha8Rng, local_id: &str) -> String {
    if rng.random_bool(0.08) {
        return format!("UN{}", rng.random_range(1..=5));
    }
    let digits: String = local_id.chars().filter(char::is_ascii_digit).collect();
    let twelve = format!(
        "999{:04}{:05}",
        rng.random_range(1000..8000),
        digits.parse::<u64>().unwrap_or(0) % 100_000
    );
    let check = joinery_agent::validate::upn_check_letter(twelve.as_bytes()).unwrap_or(b'A');
    format!("{}{twelve}", check as char)
}

fn csv_writer(path: &Path) -> anyhow::Result<csv::Writer<File>> {
    csv::Writer::from_path(path).with_context(|| format!("creating {}", path.display()))
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn pick<'a>(rng: &mut ChaCha8Rng, from: &[&'a str]) -> &'a str {
    from.choose(rng).copied().unwrap_or_default()
}

/// The council's CIN census: a `<Child>` per record, a `<CINdetails>` per
/// referral date.
fn cin_census(
    path: &Path,
    records: &[AgencyRecord],
    year: i32,
    reference: Date,
    rng: &mut ChaCha8Rng,
) -> anyhow::Result<()> {
    let mut out =
        BufWriter::new(File::create(path).with_context(|| format!("creating {}", path.display()))?);
    writeln!(
        out,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Message>\n  <Header>\n    <CollectionDetails>\n      <Collection>CIN</Collection>\n      <Year>{year}</Year>\n      <ReferenceDate>{year}-03-31</ReferenceDate>\n    </CollectionDetails>\n    <Source>\n      <SourceLevel>L</SourceLevel>\n      <LEA>999</LEA>\n      <SoftwareCode>Joinery synth</SoftwareCode>\n    </Source>\n  </Header>\n  <Children>"
    )?;
    for record in records {
        let r = &record.recorded;
        let mut child = String::new();
        let _ = write!(
            child,
            "    <Child>\n      <ChildIdentifiers>\n        <LAchildID>{}</LAchildID>\n        <UPN>{}</UPN>\n        <PersonBirthDate>{}</PersonBirthDate>\n        <GenderCurrent>{}</GenderCurrent>\n      </ChildIdentifiers>\n      <ChildCharacteristics>\n        <Ethnicity>{}</Ethnicity>\n        <Disabilities>\n",
            r.local_id,
            upn(rng, &r.local_id),
            iso(r.dob),
            if record.male { 1 } else { 2 },
            pick(rng, super::ETHNICITY),
        );
        let disabilities: &[&str] = if rng.random_bool(0.85) {
            &["NONE"]
        } else {
            &["COMM", "LD", "AUT", "MOB"][..rng.random_range(1..=2)]
        };
        for d in disabilities {
            let _ = writeln!(child, "          <Disability>{d}</Disability>");
        }
        child.push_str("        </Disabilities>\n      </ChildCharacteristics>\n");
        for &referred in &record.dates {
            let _ = write!(
                child,
                "      <CINdetails>\n        <CINreferralDate>{}</CINreferralDate>\n        <ReferralSource>{}</ReferralSource>\n        <PrimaryNeedCode>{}</PrimaryNeedCode>\n        <ReferralNFA>{}</ReferralNFA>\n",
                iso(referred),
                pick(rng, super::COUNCIL_REFERRAL_SOURCES),
                pick(rng, &["N1", "N2", "N3", "N4", "N5", "N6", "N7", "N8"]),
                u8::from(rng.random_bool(0.1)),
            );
            if let Some(closed) =
                after(rng, referred, 400, reference).filter(|_| rng.random_bool(0.5))
            {
                let _ = write!(
                    child,
                    "        <CINclosureDate>{}</CINclosureDate>\n        <ReasonForClosure>{}</ReasonForClosure>\n",
                    iso(closed),
                    pick(rng, &["RC7", "RC8", "RC9", "RC5"]),
                );
            }
            if let Some(started) =
                after(rng, referred, 10, reference).filter(|_| rng.random_bool(0.6))
            {
                let _ = write!(
                    child,
                    "        <Assessments>\n          <AssessmentActualStartDate>{}</AssessmentActualStartDate>\n",
                    iso(started)
                );
                if let Some(authorised) = after(rng, started + Duration::days(20), 25, reference) {
                    let _ = writeln!(
                        child,
                        "          <AssessmentAuthorisationDate>{}</AssessmentAuthorisationDate>",
                        iso(authorised)
                    );
                }
                child.push_str("          <FactorsIdentifiedAtAssessment>\n");
                for factor in ["4B", "3A", "1B", "8B", "11A"][..rng.random_range(1..=3)].iter() {
                    let _ = writeln!(
                        child,
                        "            <AssessmentFactors>{factor}</AssessmentFactors>"
                    );
                }
                child.push_str(
                    "          </FactorsIdentifiedAtAssessment>\n        </Assessments>\n",
                );
            }
            if let Some(start) =
                after(rng, referred, 60, reference).filter(|_| rng.random_bool(0.2))
            {
                let _ = write!(
                    child,
                    "        <CINPlanDates>\n          <CINPlanStartDate>{}</CINPlanStartDate>\n",
                    iso(start)
                );
                if let Some(end) =
                    after(rng, start, 365, reference).filter(|_| rng.random_bool(0.5))
                {
                    let _ = writeln!(
                        child,
                        "          <CINPlanEndDate>{}</CINPlanEndDate>",
                        iso(end)
                    );
                }
                child.push_str("        </CINPlanDates>\n");
            }
            if let Some(s47) = after(rng, referred, 20, reference).filter(|_| rng.random_bool(0.15))
            {
                let _ = write!(
                    child,
                    "        <Section47>\n          <S47ActualStartDate>{}</S47ActualStartDate>\n          <ICPCnotRequired>{}</ICPCnotRequired>\n",
                    iso(s47),
                    u8::from(rng.random_bool(0.3)),
                );
                if let Some(icpc) = after(rng, s47, 15, reference) {
                    let _ = writeln!(
                        child,
                        "          <InitialCPConferenceDate>{}</InitialCPConferenceDate>",
                        iso(icpc)
                    );
                    if rng.random_bool(0.6) {
                        let category = pick(rng, &["NEG", "EMO", "PHY", "SAB", "MUL"]);
                        let _ = write!(
                            child,
                            "        </Section47>\n        <ChildProtectionPlans>\n          <CPPstartDate>{}</CPPstartDate>\n          <InitialCategoryOfAbuse>{category}</InitialCategoryOfAbuse>\n          <NumberOfPreviousCPP>{}</NumberOfPreviousCPP>\n",
                            iso(icpc),
                            rng.random_range(0..3),
                        );
                        if let Some(end) =
                            after(rng, icpc, 800, reference).filter(|_| rng.random_bool(0.5))
                        {
                            let _ = write!(
                                child,
                                "          <CPPendDate>{}</CPPendDate>\n          <LatestCategoryOfAbuse>{category}</LatestCategoryOfAbuse>\n",
                                iso(end)
                            );
                        }
                        child.push_str("        </ChildProtectionPlans>\n");
                        child.push_str("      </CINdetails>\n");
                        continue;
                    }
                }
                child.push_str("        </Section47>\n");
            }
            child.push_str("      </CINdetails>\n");
        }
        child.push_str("    </Child>");
        writeln!(out, "{child}")?;
    }
    writeln!(out, "  </Children>\n</Message>")?;
    out.flush()?;
    Ok(())
}

/// The council's SSDA903 tables for the children it looks after (about one
/// in five of its records): a period of care from a referral, in one to three
/// episodes, with health checks and missing episodes.
fn ssda903(
    dir: &Path,
    records: &[AgencyRecord],
    reference: Date,
    rng: &mut ChaCha8Rng,
) -> anyhow::Result<()> {
    create_dir(dir)?;
    let mut header = csv_writer(&dir.join("header.csv"))?;
    header.write_record(["CHILD", "SEX", "DOB", "ETHNIC", "UPN", "MOTHER", "MC_DOB"])?;
    let mut episodes = csv_writer(&dir.join("episodes.csv"))?;
    episodes.write_record([
        "CHILD",
        "DECOM",
        "RNE",
        "LS",
        "CIN",
        "PLACE",
        "PLACE_PROVIDER",
        "DEC",
        "REC",
        "REASON_PLACE_CHANGE",
        "HOME_POST",
        "PL_POST",
        "URN",
    ])?;
    let mut reviews = csv_writer(&dir.join("reviews.csv"))?;
    reviews.write_record(["CHILD", "DOB", "REVIEW", "REVIEW_CODE"])?;
    let mut oc2 = csv_writer(&dir.join("oc2.csv"))?;
    oc2.write_record([
        "CHILD",
        "DOB",
        "SDQ_SCORE",
        "SDQ_REASON",
        "CONVICTED",
        "HEALTH_CHECK",
        "IMMUNISATIONS",
        "TEETH_CHECK",
        "HEALTH_ASSESSMENT",
        "SUBSTANCE_MISUSE",
        "INTERVENTION_RECEIVED",
        "INTERVENTION_OFFERED",
    ])?;
    let mut missing = csv_writer(&dir.join("missing.csv"))?;
    missing.write_record(["CHILD", "DOB", "MISSING", "MIS_START", "MIS_END"])?;
    let mut uasc = csv_writer(&dir.join("uasc.csv"))?;
    uasc.write_record(["CHILD", "SEX", "DOB", "DUC"])?;
    let mut oc3 = csv_writer(&dir.join("oc3.csv"))?;
    oc3.write_record(["CHILD", "DOB", "IN_TOUCH", "ACTIV", "ACCOM"])?;
    let mut ad1 = csv_writer(&dir.join("ad1.csv"))?;
    ad1.write_record([
        "CHILD",
        "DOB",
        "DATE_INT",
        "DATE_MATCH",
        "FOSTER_CARE",
        "NB_ADOPTR",
        "SEX_ADOPTR",
        "LS_ADOPTR",
    ])?;
    let mut placed = csv_writer(&dir.join("placed_for_adoption.csv"))?;
    placed.write_record([
        "CHILD",
        "DOB",
        "DATE_PLACED",
        "DATE_PLACED_CEASED",
        "REASON_PLACED_CEASED",
    ])?;
    let mut prev_perm = csv_writer(&dir.join("prev_perm.csv"))?;
    prev_perm.write_record(["CHILD", "DOB", "PREV_PERM", "LA_PERM", "DATE_PERM"])?;
    let flag = |rng: &mut ChaCha8Rng, p: f64| u8::from(rng.random_bool(p)).to_string();
    for record in records {
        let r = &record.recorded;
        let Some(&first) = record.dates.iter().min() else {
            continue;
        };
        if !rng.random_bool(0.2) {
            continue;
        }
        let Some(mut start) = after(rng, first, 60, reference) else {
            continue;
        };
        let dob = dmy(r.dob);
        header.write_record([
            r.local_id.as_str(),
            if record.male { "1" } else { "2" },
            &dob,
            pick(rng, super::ETHNICITY),
            &upn(rng, &r.local_id),
            "",
            "",
        ])?;
        let district = r.postcode.split(' ').next().unwrap_or_default().to_owned();
        let count = rng.random_range(1..=3);
        for n in 0..count {
            let last = n + 1 == count;
            let end = after(rng, start + Duration::days(30), 300, reference)
                .filter(|_| !last || rng.random_bool(0.5));
            let (rec, reason) = match (end, last) {
                (None, _) => ("", ""),
                (Some(_), false) => ("X1", pick(rng, &["CARPL", "CREQB", "CHILD", "LAREQ"])),
                (Some(_), true) => (pick(rng, &["E13", "E4A", "E41", "E11", "E45"]), ""),
            };
            episodes.write_record([
                r.local_id.as_str(),
                &dmy(start),
                if n == 0 {
                    "S"
                } else {
                    pick(rng, &["P", "T", "L"])
                },
                pick(rng, &["C1", "C2", "V2", "E1"]),
                pick(rng, &["N1", "N2", "N4", "N5"]),
                pick(rng, &["U1", "U3", "U4", "U6", "K2", "R1", "P1"]),
                pick(rng, &["PR1", "PR2", "PR4", "PR5"]),
                &end.map(dmy).unwrap_or_default(),
                rec,
                reason,
                &district,
                pick(rng, &["LS6", "LS8", "BD3", "WF1"]),
                "SC123456",
            ])?;
            if let Some(review) = after(rng, start, 120, end.unwrap_or(reference)) {
                reviews.write_record([
                    r.local_id.as_str(),
                    &dob,
                    &dmy(review),
                    pick(rng, &["PN1", "PN2", "PN4", "PN6"]),
                ])?;
            }
            match end {
                Some(e) if !last => start = e,
                _ => break,
            }
        }
        let age = (reference - r.dob).whole_days() / 365;
        let sdq = (4..=16).contains(&age);
        oc2.write_record([
            r.local_id.clone(),
            dob.clone(),
            if sdq {
                rng.random_range(0..=40).to_string()
            } else {
                String::new()
            },
            if sdq {
                String::new()
            } else {
                "SDQ1".to_owned()
            },
            flag(rng, 0.03),
            flag(rng, 0.85),
            flag(rng, 0.8),
            flag(rng, 0.75),
            flag(rng, 0.85),
            flag(rng, 0.05),
            flag(rng, 0.03),
            flag(rng, 0.04),
        ])?;
        if rng.random_bool(0.1)
            && let Some(gone) = after(rng, start, 200, reference)
        {
            let back = after(rng, gone, 3, reference).map(dmy).unwrap_or_default();
            missing.write_record([
                r.local_id.as_str(),
                &dob,
                pick(rng, &["M", "A"]),
                &dmy(gone),
                &back,
            ])?;
        }
        // Unaccompanied asylum-seeking children, care leavers, adoption and
        // earlier permanence: a few each.
        if age >= 12 && rng.random_bool(0.2) {
            let ceased = after(rng, start, 400, reference)
                .map(dmy)
                .unwrap_or_default();
            uasc.write_record([
                r.local_id.as_str(),
                if record.male { "1" } else { "2" },
                &dob,
                &ceased,
            ])?;
        }
        if age >= 17 {
            oc3.write_record([
                r.local_id.as_str(),
                &dob,
                pick(rng, &["YES", "YES", "NO", "REFU"]),
                pick(rng, &["F2", "P2", "F4", "G6"]),
                pick(rng, &["B1", "D2", "T1", "V2"]),
            ])?;
        }
        if age < 6
            && rng.random_bool(0.3)
            && let Some(decided) = after(rng, start, 180, reference)
        {
            let matched = after(rng, decided, 180, reference);
            ad1.write_record([
                r.local_id.clone(),
                dob.clone(),
                dmy(decided),
                matched.map(dmy).unwrap_or_default(),
                flag(rng, 0.3),
                rng.random_range(1..=2).to_string(),
                pick(rng, &["M1", "F1", "MF"]).to_owned(),
                pick(rng, &["L0", "L11", "L12"]).to_owned(),
            ])?;
            if let Some(placed_on) = matched.and_then(|m| after(rng, m, 60, reference)) {
                let ceased = after(rng, placed_on, 300, reference).filter(|_| rng.random_bool(0.5));
                placed.write_record([
                    r.local_id.clone(),
                    dob.clone(),
                    dmy(placed_on),
                    ceased.map(dmy).unwrap_or_default(),
                    if ceased.is_some() { "E11" } else { "" }.to_owned(),
                ])?;
            }
        }
        if rng.random_bool(0.1) {
            prev_perm.write_record([
                r.local_id.as_str(),
                &dob,
                pick(rng, &["P1", "P2", "P3", "Z1"]),
                "999",
                &dmy(r.dob + Duration::days(400)),
            ])?;
        }
    }
    for mut w in [
        header, episodes, reviews, oc2, missing, uasc, oc3, ad1, placed, prev_perm,
    ] {
        w.flush()?;
    }
    Ok(())
}

/// Ofsted Annex A list 1 (contacts) and list 3 (referrals): a row per
/// referral date.
fn annex_a(
    dir: &Path,
    records: &[AgencyRecord],
    reference: Date,
    rng: &mut ChaCha8Rng,
) -> anyhow::Result<()> {
    create_dir(dir)?;
    let mut contacts = csv_writer(&dir.join("list_1.csv"))?;
    contacts.write_record([
        "Child Unique ID",
        "Gender",
        "Ethnicity",
        "Date of Birth",
        "Age",
        "Date of Contact",
        "Contact Source",
    ])?;
    let mut referrals = csv_writer(&dir.join("list_3.csv"))?;
    referrals.write_record([
        "Child Unique ID",
        "Gender",
        "Ethnicity",
        "Date of Birth",
        "Age",
        "Date of Referral",
        "Referral Source",
        "Referral NFA",
    ])?;
    for record in records {
        let r = &record.recorded;
        let gender = if record.male { "Male" } else { "Female" };
        let ethnicity = pick(rng, super::ETHNICITY);
        let age = ((reference - r.dob).whole_days() / 365).to_string();
        for &day in &record.dates {
            let source = pick(rng, super::COUNCIL_REFERRAL_SOURCES);
            contacts.write_record([
                r.local_id.as_str(),
                gender,
                ethnicity,
                &dmy(r.dob),
                &age,
                &dmy(day),
                source,
            ])?;
            referrals.write_record([
                r.local_id.as_str(),
                gender,
                ethnicity,
                &dmy(r.dob),
                &age,
                &dmy(day),
                source,
                if rng.random_bool(0.1) { "Yes" } else { "No" },
            ])?;
        }
    }
    contacts.flush()?;
    referrals.flush()?;
    Ok(())
}

/// The column names of the MHSDS- or CSDS-style tables.
struct Tables {
    prefix: &'static str,
    mpi: &'static str,
    referral: &'static str,
    service: &'static str,
    contact: &'static str,
    source_column: &'static str,
    sources: &'static [&'static str],
    team_column: &'static str,
    teams: &'static [&'static str],
    mechanism_column: &'static str,
}

impl Tables {
    const MHSDS: Self = Self {
        prefix: "MHS",
        mpi: "MHS001MPI",
        referral: "MHS101Referral",
        service: "MHS102ServiceTypeReferredTo",
        contact: "MHS201CareContact",
        source_column: "SourceOfReferralMH",
        sources: super::CAMHS_REFERRAL_SOURCES,
        team_column: "ServTeamTypeRefToMH",
        teams: &["CAM", "C04", "C10", "C14"],
        mechanism_column: "ConsMechanismMH",
    };
    const CSDS: Self = Self {
        prefix: "CYP",
        mpi: "CYP001MPI",
        referral: "CYP101Referral",
        service: "CYP102ServiceTypeReferredTo",
        contact: "CYP201CareContact",
        source_column: "SourceOfReferralCommunity",
        sources: &["02", "03", "04", "05", "06"],
        team_column: "TeamType",
        teams: &["01"],
        mechanism_column: "ConsMechanism",
    };
}

/// MHSDS- or CSDS-style tables: the patient index, a referral per CSV row's
/// date, the team referred to, and a few care contacts after it.
fn health_tables(
    dir: &Path,
    t: Tables,
    records: &[AgencyRecord],
    reference: Date,
    rng: &mut ChaCha8Rng,
) -> anyhow::Result<()> {
    create_dir(dir)?;
    let mut mpi = csv_writer(&dir.join(format!("{}.csv", t.mpi)))?;
    mpi.write_record([
        "LocalPatientId",
        "NHSNumber",
        "GivenName",
        "FamilyName",
        "PersonBirthDate",
        "Gender",
        "Postcode",
        "EthnicCategory",
    ])?;
    let mut referral = csv_writer(&dir.join(format!("{}.csv", t.referral)))?;
    referral.write_record([
        "ServiceRequestId",
        "LocalPatientId",
        "ReferralRequestReceivedDate",
        t.source_column,
        "ClinRespPriorityType",
        "ServDischDate",
    ])?;
    let mut service = csv_writer(&dir.join(format!("{}.csv", t.service)))?;
    service.write_record([
        "ServiceRequestId",
        t.team_column,
        "ReferClosureDate",
        "ReferRejectionDate",
    ])?;
    let mut contact = csv_writer(&dir.join(format!("{}.csv", t.contact)))?;
    contact.write_record([
        "CareContactId",
        "ServiceRequestId",
        "CareContDate",
        "AttendOrDNACode",
        t.mechanism_column,
    ])?;
    let (mut referrals, mut contacts) = (0u64, 0u64);
    for record in records {
        let r = &record.recorded;
        mpi.write_record([
            r.local_id.as_str(),
            r.nhs.as_deref().unwrap_or_default(),
            &super::title_case(&r.given),
            &super::title_case(&r.family),
            &iso(r.dob),
            if record.male { "1" } else { "2" },
            &r.postcode,
            pick(
                rng,
                &["A", "A", "A", "B", "C", "D", "H", "J", "N", "R", "S", "Z"],
            ),
        ])?;
        for &received in &record.dates {
            referrals += 1;
            let id = format!("{}R{referrals:07}", t.prefix);
            let discharged = after(rng, received + Duration::days(30), 300, reference)
                .filter(|_| rng.random_bool(0.5));
            referral.write_record([
                id.as_str(),
                &r.local_id,
                &iso(received),
                pick(rng, t.sources),
                pick(rng, &["1", "2", "3", "3", "3"]),
                &discharged.map(iso).unwrap_or_default(),
            ])?;
            service.write_record([
                id.as_str(),
                pick(rng, t.teams),
                &discharged.map(iso).unwrap_or_default(),
                "",
            ])?;
            let mut day = received;
            for _ in 0..rng.random_range(0..=3) {
                let Some(next) = after(
                    rng,
                    day + Duration::days(7),
                    60,
                    discharged.unwrap_or(reference),
                ) else {
                    break;
                };
                day = next;
                contacts += 1;
                contact.write_record([
                    format!("{}C{contacts:07}", t.prefix),
                    id.clone(),
                    iso(day),
                    pick(rng, &["5", "5", "5", "6", "3", "2", "4"]).to_owned(),
                    pick(rng, &["01", "01", "02", "11"]).to_owned(),
                ])?;
            }
        }
    }
    for mut w in [mpi, referral, service, contact] {
        w.flush()?;
    }
    Ok(())
}

/// A FHIR bulk export of the community trust's records: a Patient (UK Core
/// NHS number identifier), a ServiceRequest and EpisodeOfCare per referral,
/// and an Encounter per contact.
fn fhir_export(
    dir: &Path,
    records: &[AgencyRecord],
    reference: Date,
    rng: &mut ChaCha8Rng,
) -> anyhow::Result<()> {
    use serde_json::json;
    create_dir(dir)?;
    let open = |name: &str| -> anyhow::Result<BufWriter<File>> {
        let path = dir.join(name);
        Ok(BufWriter::new(
            File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        ))
    };
    let (mut patients, mut requests, mut episodes, mut encounters) = (
        open("Patient.ndjson")?,
        open("ServiceRequest.ndjson")?,
        open("EpisodeOfCare.ndjson")?,
        open("Encounter.ndjson")?,
    );
    let mut n = 0u64;
    for record in records {
        let r = &record.recorded;
        let mut identifiers =
            vec![json!({"system": "https://example.nhs.uk/Id/local-patient", "value": r.local_id})];
        if let Some(nhs) = &r.nhs {
            identifiers.push(json!({"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}));
        }
        let patient = json!({
            "resourceType": "Patient",
            "id": r.local_id,
            "meta": {"profile": ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient"]},
            "identifier": identifiers,
            "name": [{"use": "official", "family": super::title_case(&r.family), "given": [super::title_case(&r.given)]}],
            "gender": if record.male { "male" } else { "female" },
            "birthDate": iso(r.dob),
            "address": [{"use": "home", "postalCode": r.postcode}],
        });
        writeln!(patients, "{patient}")?;
        let subject = json!({"reference": format!("Patient/{}", r.local_id)});
        for &day in &record.dates {
            n += 1;
            let request = json!({
                "resourceType": "ServiceRequest",
                "id": format!("sr{n}"),
                "status": "active",
                "intent": "order",
                "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "410290005"}]}],
                "priority": pick(rng, &["routine", "routine", "urgent"]),
                "subject": subject,
                "authoredOn": iso(day),
            });
            writeln!(requests, "{request}")?;
            let end = after(rng, day + Duration::days(30), 300, reference)
                .filter(|_| rng.random_bool(0.5));
            let mut period = json!({"start": iso(day)});
            if let Some(end) = end {
                period["end"] = json!(iso(end));
            }
            let episode = json!({
                "resourceType": "EpisodeOfCare",
                "id": format!("eoc{n}"),
                "status": if end.is_some() { "finished" } else { "active" },
                "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "310026008"}]}],
                "patient": subject,
                "period": period,
            });
            writeln!(episodes, "{episode}")?;
            let mut seen = day;
            for k in 0..rng.random_range(1..=2) {
                let Some(next) = after(rng, seen + Duration::days(7), 60, end.unwrap_or(reference))
                else {
                    break;
                };
                seen = next;
                let encounter = json!({
                    "resourceType": "Encounter",
                    "id": format!("enc{n}-{k}"),
                    "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "serviceType": {"coding": [{"system": "http://snomed.info/sct", "code": "310026008"}]},
                    "subject": subject,
                    "period": {"start": format!("{}T10:00:00+00:00", iso(seen))},
                });
                writeln!(encounters, "{encounter}")?;
            }
        }
    }
    for mut w in [patients, requests, episodes, encounters] {
        w.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use joinery_agent::config::SourceConfig;
    use joinery_agent::format::Registry;
    use joinery_agent::mapping::Mapping;
    use joinery_agent::person::PersonRow;
    use joinery_agent::row::RowOutcome;
    use joinery_agent::source::Source;
    use joinery_agent::source::csv::CsvSource;
    use time::macros::date;

    use super::*;

    /// Every row of a source, through the agent's own readers.
    fn read(source: &SourceConfig, today: Date) -> (Vec<PersonRow>, Vec<String>) {
        let mut rows = Vec::new();
        let mut problems = Vec::new();
        let parts =
            joinery_agent::format::open(source, &Registry::built_in().unwrap(), today).unwrap();
        for (path, row) in joinery_agent::format::read_all(parts).unwrap() {
            match row.outcome {
                RowOutcome::Valid {
                    row: person,
                    warnings,
                } => {
                    problems.extend(
                        warnings
                            .iter()
                            .map(|w| format!("{} line {}: {w}", path.display(), row.line)),
                    );
                    rows.push(person);
                }
                RowOutcome::Quarantined(p) => {
                    problems.push(format!("{} line {}: {p}", path.display(), row.line))
                }
            }
        }
        (rows, problems)
    }

    /// The first event of each source that records a CSV row's date.
    const CSV_DATE_EVENT: &[(&str, &str)] = &[
        ("cin_census", "referral"),
        ("ssda903", ""),
        ("annex_a", "contact"),
        ("mhsds", "camhs_referral"),
        ("csds", "community_referral"),
        ("fhir", "service_request"),
        ("sql", "csc_referral"),
    ];

    /// What the formats can say that synth never does.
    const NOT_GENERATED: &[&str] = &[
        "death",
        "camhs_referral_rejected",
        "ae_attendance",
        "mother",
    ];

    #[test]
    fn every_national_format_reads_back_clean_and_as_the_csv_extracts_say() {
        let reference = date!(2026 - 01 - 15);
        let dir = tempfile::tempdir().unwrap();
        let output = super::super::generate(
            dir.path(),
            &crate::synth::Population::tidy(400, 5, reference),
        )
        .unwrap();
        let kinds: BTreeSet<&str> = output.national.iter().map(|s| s.config.kind()).collect();
        assert_eq!(kinds, CSV_DATE_EVENT.iter().map(|(k, _)| *k).collect());
        for source in &output.national {
            let kind = source.config.kind();
            let (rows, mut problems) = read(&source.config, reference);
            // Mistyped NHS numbers are recorded as the agency recorded them.
            problems.retain(|p| !p.contains("nhs_number: NHS number fails the Modulus 11 check"));
            assert!(problems.is_empty(), "{kind}: {problems:#?}");
            assert!(rows.len() > 50, "{kind}: {} rows", rows.len());

            // Every event and attribute the format's tables can carry arrives.
            let mappings: Vec<Mapping> = match &source.config {
                SourceConfig::Sql(table) => vec![Mapping::load(&table.mapping).unwrap()],
                _ => Registry::built_in()
                    .unwrap()
                    .get(kind)
                    .unwrap()
                    .definition
                    .tables
                    .clone()
                    .into_iter()
                    .filter(|t| t.file.as_ref().is_none_or(|f| source.path.join(f).exists()))
                    .map(|t| t.mapping)
                    .collect(),
            };
            let mut expected = BTreeSet::new();
            for m in &mappings {
                expected.extend(m.attributes.keys().cloned());
                for e in &m.events {
                    expected.insert(e.event_type.clone());
                    expected.extend(e.attributes.keys().map(|a| format!("{}.{a}", e.event_type)));
                }
            }
            expected.retain(|name| {
                !NOT_GENERATED
                    .iter()
                    .any(|n| name == n || name.starts_with(&format!("{n}.")))
            });
            let mut seen = BTreeSet::new();
            for row in &rows {
                seen.extend(row.attributes.keys().cloned());
                for e in &row.events {
                    seen.insert(e.event_type.clone());
                    seen.extend(e.attributes.keys().map(|a| format!("{}.{a}", e.event_type)));
                }
            }
            let missing: Vec<_> = expected.difference(&seen).collect();
            assert!(missing.is_empty(), "{}: never arrived: {missing:?}", kind);

            // The same people, with the identity the agency's CSV extract holds.
            let (agency, extract, mapping) = output
                .extracts
                .iter()
                .find(|(a, _, _)| a.organisation == source.organisation)
                .unwrap();
            let map = Mapping::load(mapping).unwrap();
            let mut csv = CsvSource::open(extract, &map, mapping, reference).unwrap();
            let mut known: BTreeMap<String, PersonRow> = BTreeMap::new();
            let mut csv_dates = BTreeSet::new();
            while let Some(row) = csv.next_row() {
                if let RowOutcome::Valid { row, .. } = row.unwrap().outcome {
                    csv_dates.insert((row.local_id.clone(), row.events[0].date));
                    known.insert(row.local_id.clone(), row);
                }
            }
            let mut dates = BTreeSet::new();
            let event = CSV_DATE_EVENT.iter().find(|(k, _)| *k == kind).unwrap().1;
            for row in &rows {
                let Some(csv_row) = known.get(&row.local_id) else {
                    // Only a row the CSV extract damaged has no clean twin.
                    continue;
                };
                let same =
                    |a: &Option<String>, b: &Option<String>| a.is_none() || b.is_none() || a == b;
                assert!(
                    same(&row.nhs_number, &csv_row.nhs_number),
                    "{}: NHS number of {}",
                    kind,
                    row.local_id
                );
                assert!(
                    same(&row.given_name, &csv_row.given_name),
                    "{}: given name",
                    kind
                );
                assert!(
                    same(&row.family_name, &csv_row.family_name),
                    "{}: family name",
                    kind
                );
                assert!(row.sex.is_none() || row.sex == csv_row.sex, "{}: sex", kind);
                assert!(
                    row.date_of_birth.is_none() || row.date_of_birth == csv_row.date_of_birth,
                    "{}: birth date",
                    kind
                );
                assert!(
                    row.postcode.is_none() || row.postcode == csv_row.postcode,
                    "{}: postcode",
                    kind
                );
                dates.extend(
                    row.events
                        .iter()
                        .filter(|e| e.event_type == event)
                        .map(|e| (row.local_id.clone(), e.date)),
                );
            }
            let mut truth = csv::Reader::from_path(&output.ground_truth).unwrap();
            let truth: BTreeSet<String> = truth
                .records()
                .map(Result::unwrap)
                .filter(|r| &r[1] == agency.organisation)
                .map(|r| r[3].to_owned())
                .collect();
            let strangers: Vec<_> = rows
                .iter()
                .filter(|r| !truth.contains(&r.local_id))
                .collect();
            assert!(
                strangers.is_empty(),
                "{}: not in the ground truth: {}",
                kind,
                strangers.len()
            );
            if !event.is_empty() {
                let unmatched: Vec<_> = csv_dates.difference(&dates).collect();
                assert!(
                    unmatched.is_empty(),
                    "{}: CSV dates missing: {unmatched:?}",
                    kind
                );
            }
        }
    }
}
