//! `joinery synth`: a synthetic population of children and the extracts three
//! agencies (four in the messy profile) would hold about them, with the
//! errors real extracts have.
//!
//! Each agency has its own layout (column names, date formats, codes,
//! separator). Children overlap between agencies. Identity errors are made
//! once per child per agency (as a record system would hold them), at the
//! rates of the chosen [`Profile`]: missing NHS numbers (most often at the
//! council), mistyped NHS numbers, nicknames, typos, moved postcodes, day and
//! month swapped in the date of birth, and in the messy profile changed and
//! double-barrelled family names, dates a day or a year out, unknown sex
//! codes and placeholder dates and postcodes.
//! Children live in households: siblings share a family name and a postcode,
//! and twins a date of birth too (the hardest pairs for fuzzy linkage to
//! keep apart). `ground_truth.csv` gives each child's household.
//! A few rows are broken outright (impossible dates, wrong column counts,
//! missing ids) to exercise quarantine. `ground_truth.csv` says which child
//! each agency record is. Output is deterministic for a seed.
//!
//! The same records are also written in the national formats each agency
//! would really send (`national`), under `national/<organisation>/`.
//!
//! NHS numbers are drawn from the 999 test range, which the NHS never
//! issues and which holds about 909,000 valid numbers. A population larger
//! than [`TEST_RANGE_CHILDREN`] (a region-scale benchmark) draws from the
//! whole 9 range instead (900 000 0000 to 999 999 9999): no number there is
//! issued to a patient (England issues 3, 4, 6 and 7; Scotland's CHI and
//! Northern Ireland have their own ranges below 4) and NHS England's own
//! test patients live there. No two children share a number either way.
//!
//! `opt-out.txt` is a National Data Opt-out list for the population (the
//! agent's `national_data_opt_out`, which an agreement that applies the
//! opt-out requires): [`OPTED_OUT`] of the children, one NHS number a line,
//! `#` comments allowed.

mod national;
mod profile;

pub use national::NationalSource;
pub use profile::Profile;

use profile::{Rates, chance, misspell};

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use time::{Date, Duration};

/// One agency in the synthetic deployment.
#[derive(Debug, Clone)]
pub struct SynthAgency {
    pub organisation: &'static str,
    pub description: &'static str,
    pub dataset: &'static str,
    /// Probability that a child is known to this agency.
    reach: f64,
    /// Probability that this agency's record of a child lacks an NHS
    /// number, in the tidy profile and in the messy one.
    nhs_missing: f64,
    nhs_missing_messy: f64,
    /// Whether the tidy profile has this agency (the messy one has all).
    tidy: bool,
    layout: Layout,
}

impl SynthAgency {
    fn nhs_missing(&self, profile: Profile) -> f64 {
        match profile {
            Profile::Tidy => self.nhs_missing,
            Profile::Messy => self.nhs_missing_messy,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Layout {
    Council,
    Camhs,
    Salt,
    AcuteAe,
}

const AGENCIES: &[SynthAgency] = &[
    SynthAgency {
        organisation: "E08000099",
        description: "council children's social care",
        dataset: "csc_referrals",
        reach: 0.55,
        nhs_missing: 0.45,
        nhs_missing_messy: 0.55,
        tidy: true,
        layout: Layout::Council,
    },
    SynthAgency {
        organisation: "RX9",
        description: "CAMHS (mental health trust)",
        dataset: "camhs_referrals",
        reach: 0.35,
        nhs_missing: 0.04,
        nhs_missing_messy: 0.04,
        tidy: true,
        layout: Layout::Camhs,
    },
    SynthAgency {
        organisation: "RY9",
        description: "speech and language therapy (community trust)",
        dataset: "salt_contacts",
        reach: 0.35,
        nhs_missing: 0.12,
        nhs_missing_messy: 0.12,
        tidy: true,
        layout: Layout::Salt,
    },
    SynthAgency {
        organisation: "RW9",
        description: "emergency department (acute trust)",
        dataset: "ae_attendances",
        reach: 0.40,
        nhs_missing: 0.02,
        nhs_missing_messy: 0.02,
        tidy: false,
        layout: Layout::AcuteAe,
    },
];

/// The agencies a profile's population is known to, in the order their
/// extracts are written.
pub fn agencies(profile: Profile) -> impl Iterator<Item = &'static SynthAgency> {
    AGENCIES
        .iter()
        .filter(move |a| a.tidy || profile == Profile::Messy)
}

/// The share of children on the synthetic opt-out list (about a twentieth
/// of England's patients had opted out by 2024; fewer here, so most
/// children still show).
pub const OPTED_OUT: f64 = 0.02;

/// Where the generated files are.
#[derive(Debug, Clone)]
pub struct SynthOutput {
    pub extracts: Vec<(SynthAgency, PathBuf, PathBuf)>,
    /// The same records in national formats.
    pub national: Vec<NationalSource>,
    pub ground_truth: PathBuf,
    /// The population's National Data Opt-out list.
    pub opt_out: PathBuf,
    pub rows: usize,
}

/// A child's true identity.
struct Child {
    id: usize,
    /// The id of the household's first child.
    household: usize,
    given: &'static str,
    family: String,
    /// The family name the child had before it changed (messy profile).
    former_family: Option<String>,
    dob: Date,
    male: bool,
    nhs: String,
    postcode: String,
}

/// How one agency recorded one child.
struct Recorded {
    local_id: String,
    given: String,
    family: String,
    dob: Date,
    /// Recorded as unknown (whatever the child's sex).
    sex_unknown: bool,
    nhs: Option<String>,
    postcode: String,
}

/// The population [`generate`] writes.
#[derive(Debug, Clone)]
pub struct Population {
    pub children: usize,
    /// The same seed gives the same files.
    pub seed: u64,
    /// The date the extracts are taken.
    pub reference: Date,
    /// When given, replaces every agency's own share of the children it
    /// knows (a bench uses it for two large overlapping extracts).
    pub reach: Option<f64>,
    pub profile: Profile,
    /// Also write the national formats (`national`); a region-scale
    /// benchmark, whose agents read the CSV extracts, leaves them out.
    pub national_formats: bool,
}

impl Population {
    /// `children` children, tidy, every agency at its own reach, with the
    /// national formats.
    pub fn tidy(children: usize, seed: u64, reference: Date) -> Self {
        Self {
            children,
            seed,
            reference,
            reach: None,
            profile: Profile::Tidy,
            national_formats: true,
        }
    }
}

/// Writes the population's records for every agency under `out`.
pub fn generate(out: &Path, spec: &Population) -> anyhow::Result<SynthOutput> {
    let Population {
        children,
        seed,
        reference,
        reach,
        profile,
        national_formats,
    } = spec.clone();
    let extracts_dir = out.join("extracts");
    let mappings_dir = out.join("mappings");
    std::fs::create_dir_all(&extracts_dir)
        .with_context(|| format!("creating {}", extracts_dir.display()))?;
    std::fs::create_dir_all(&mappings_dir)
        .with_context(|| format!("creating {}", mappings_dir.display()))?;
    if children > MAX_CHILDREN {
        anyhow::bail!(
            "at most {MAX_CHILDREN} children: synthetic NHS numbers come from the unissued 9 range, \
             and no two children share one"
        );
    }
    if let Some(reach) = reach.filter(|r| !(0.0..=1.0).contains(r)) {
        anyhow::bail!("reach must be a share from 0 to 1, not {reach}");
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let numbers = NhsRange::for_children(children);
    let mut issued = std::collections::HashSet::with_capacity(children);
    let mut population: Vec<Child> = (0..children)
        .map(|id| child(&mut rng, id, reference, numbers, &mut issued))
        .collect();
    into_households(&mut population, seed, reference);
    let rates = profile.rates();
    change_family_names(&mut population, seed, &rates);

    let opt_out = out.join("opt-out.txt");
    write_opt_out(&opt_out, &population, seed)?;

    let truth_path = out.join("ground_truth.csv");
    let mut truth = csv::Writer::from_path(&truth_path)
        .with_context(|| format!("creating {}", truth_path.display()))?;
    truth.write_record([
        "child_id",
        "organisation",
        "dataset",
        "local_id",
        "recorded_nhs_number",
        "household",
    ])?;

    let mut extracts = Vec::new();
    let mut national = Vec::new();
    let mut rows = 0;
    for (index, agency) in agencies(profile).enumerate() {
        let extract = extracts_dir.join(format!("{}.csv", agency.dataset));
        let mapping = mappings_dir.join(format!("{}.yaml", agency.dataset));
        std::fs::write(&mapping, mapping_yaml(agency.layout))
            .with_context(|| format!("writing {}", mapping.display()))?;
        let mut writer = writer(agency.layout, &extract)?;
        writer.write_record(header(agency.layout))?;
        let mut records = Vec::new();
        for c in &population {
            if !rng.random_bool(reach.unwrap_or(agency.reach)) {
                continue;
            }
            let recorded = record_of(&mut rng, c, agency, index, reference, profile, &rates);
            truth.write_record([
                c.id.to_string().as_str(),
                agency.organisation,
                agency.dataset,
                &recorded.local_id,
                recorded.nhs.as_deref().unwrap_or(""),
                c.household.to_string().as_str(),
            ])?;
            let mut dates = Vec::new();
            for _ in 0..rng.random_range(1..=3) {
                let event = random_date(&mut rng, c.dob, reference);
                let mut fields = row(agency.layout, &recorded, c.male, event, &mut rng);
                break_row(&mut rng, agency.layout, &mut fields);
                writer.write_record(&fields)?;
                dates.push(event);
                rows += 1;
            }
            if national_formats {
                records.push(national::AgencyRecord {
                    recorded,
                    male: c.male,
                    dates,
                });
            }
        }
        writer.flush()?;
        if national_formats {
            let national_dir = out.join("national").join(agency.organisation);
            std::fs::create_dir_all(&national_dir)
                .with_context(|| format!("creating {}", national_dir.display()))?;
            national.extend(national::write(
                &national_dir,
                agency,
                &records,
                seed,
                reference,
            )?);
        }
        extracts.push((agency.clone(), extract, mapping));
    }
    truth.flush()?;
    Ok(SynthOutput {
        extracts,
        national,
        ground_truth: truth_path,
        opt_out,
        rows,
    })
}

/// Writes the opt-out list: [`OPTED_OUT`] of the children, drawn from a
/// sequence of their own (the extracts are the same with or without it).
fn write_opt_out(path: &Path, population: &[Child], seed: u64) -> anyhow::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6f70_742d_6f75_7421);
    let mut text = String::from(
        "# National Data Opt-out list (synthetic): one NHS number a line, spaces allowed;\n\
         # blank lines and lines starting with # are ignored. Records of these children\n\
         # are withheld by the agent wherever the agreement applies the opt-out.\n",
    );
    for c in population.iter().filter(|_| rng.random_bool(OPTED_OUT)) {
        text.push_str(&c.nhs);
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The most children whose NHS numbers come from the 999 test range: most
/// of its valid numbers, so drawing one not yet issued stays quick.
pub const TEST_RANGE_CHILDREN: usize = 800_000;

/// The most children one population can have (see `NhsRange`): a fifth
/// of the 9 range's valid numbers.
pub const MAX_CHILDREN: usize = 20_000_000;

/// Where a population's NHS numbers come from: the first nine digits (the
/// tenth is the Modulus 11 check digit) are drawn from `first..last+1`.
#[derive(Debug, Clone, Copy)]
struct NhsRange {
    first: u32,
    count: u32,
}

impl NhsRange {
    /// The 999 test range for populations it holds, else the 9 range.
    fn for_children(children: usize) -> Self {
        if children <= TEST_RANGE_CHILDREN {
            Self {
                first: 999_000_000,
                count: 1_000_000,
            }
        } else {
            Self {
                first: 900_000_000,
                count: 100_000_000,
            }
        }
    }
}

fn child(
    rng: &mut ChaCha8Rng,
    id: usize,
    reference: Date,
    numbers: NhsRange,
    issued: &mut std::collections::HashSet<u32>,
) -> Child {
    let male = rng.random_bool(0.5);
    let given = NAMES.given(male).choose(rng).copied().unwrap_or("ALEX");
    Child {
        id,
        household: id,
        given,
        family: NAMES
            .family
            .choose(rng)
            .copied()
            .unwrap_or("SMITH")
            .to_owned(),
        former_family: None,
        dob: reference - Duration::days(rng.random_range(0..19 * 365)),
        male,
        nhs: loop {
            // As in life, no two children share an NHS number.
            let (first_nine, n) = nhs_number(rng, numbers);
            if issued.insert(first_nine) {
                break n;
            }
        },
        postcode: postcode(rng),
    }
}

/// Share of children who are a younger sibling of the child before them
/// (same family name and postcode), and share of those who are that
/// child's twin (born the same day too): about 1.5% of children are the
/// second of twins, as in England.
const SIBLING: f64 = 0.25;
const TWIN_OF_SIBLING: f64 = 0.06;

/// Makes some children siblings or twins of the child before them. Drawn
/// from a stream of its own, so the children's other details are the same
/// as without households.
fn into_households(population: &mut [Child], seed: u64, reference: Date) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x686f_7573_6568_6f6c);
    for i in 1..population.len() {
        if !rng.random_bool(SIBLING) {
            continue;
        }
        let (before, after) = population.split_at_mut(i);
        let (elder, child) = (&before[i - 1], &mut after[0]);
        child.household = elder.household;
        child.family = elder.family.clone();
        child.postcode = elder.postcode.clone();
        if rng.random_bool(TWIN_OF_SIBLING) {
            child.dob = elder.dob;
            // Twins are never given the same name.
            let names = NAMES.given(child.male);
            while child.given == elder.given {
                child.given = names.choose(&mut rng).copied().unwrap_or("ALEX");
            }
        } else if (child.dob - elder.dob).abs() < Duration::days(300) {
            // Other siblings are born at least ten months apart.
            let gap = Duration::days(rng.random_range(300..1_500));
            child.dob = if elder.dob + gap <= reference {
                elder.dob + gap
            } else {
                elder.dob - gap
            };
        }
    }
}

/// Makes some family names double-barrelled, and gives some children a
/// former family name (changed on adoption, or a parent's marriage), the
/// same for a household's children. Drawn from a stream of its own; the
/// tidy profile makes neither.
fn change_family_names(population: &mut [Child], seed: u64, rates: &Rates) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6661_6d69_6c69_6573);
    let surname = |rng: &mut ChaCha8Rng| NAMES.family.choose(rng).copied().unwrap_or("JONES");
    for i in 0..population.len() {
        let head = population[i].household;
        if head != population[i].id {
            let (family, former) = (
                population[head].family.clone(),
                population[head].former_family.clone(),
            );
            population[i].family = family;
            population[i].former_family = former;
            continue;
        }
        if chance(&mut rng, rates.double_barrelled) {
            let second = surname(&mut rng);
            let child = &mut population[i];
            if second != child.family {
                child.family = format!("{}-{second}", child.family);
            }
        }
        if chance(&mut rng, rates.surname_changed) {
            let former = surname(&mut rng);
            let child = &mut population[i];
            if former != child.family {
                child.former_family = Some(former.to_owned());
            }
        }
    }
}

fn record_of(
    rng: &mut ChaCha8Rng,
    c: &Child,
    agency: &SynthAgency,
    index: usize,
    reference: Date,
    profile: Profile,
    rates: &Rates,
) -> Recorded {
    let mut given = c.given.to_owned();
    if rng.random_bool(rates.nickname)
        && let Some(nickname) = NAMES.nicknames.get(c.given)
    {
        given = (*nickname).to_owned();
    }
    let mut family = c.family.clone();
    if rng.random_bool(rates.family_typo) {
        family = misspell(rng, &family, rates.any_typo);
    }
    let mut dob = c.dob;
    if rng.random_bool(rates.day_month_swap)
        && dob.day() <= 12
        && dob.day() != dob.month() as u8
        && let Some(swapped) = time::Month::try_from(dob.day())
            .ok()
            .and_then(|month| Date::from_calendar_date(dob.year(), month, dob.month() as u8).ok())
            // A records system refuses a birth date in the future.
            .filter(|swapped| *swapped <= reference)
    {
        dob = swapped;
    }
    let nhs = if rng.random_bool(agency.nhs_missing(profile)) {
        None
    } else if rng.random_bool(rates.nhs_mistyped) {
        Some(mistype(rng, &c.nhs))
    } else {
        Some(c.nhs.clone())
    };
    let mut postcode = if rng.random_bool(rates.moved) {
        postcode(rng)
    } else {
        c.postcode.clone()
    };
    // The messy profile's errors, drawn after the tidy profile's.
    if chance(rng, rates.given_typo) {
        given = misspell(rng, &given, true);
    }
    if let Some(former) = &c.former_family
        && chance(rng, rates.former_surname_recorded)
    {
        family = former.clone();
    } else if let Some((first, second)) = family.split_once('-')
        && chance(rng, rates.part_recorded)
    {
        family = if rng.random_bool(0.5) { first } else { second }.to_owned();
    }
    // As with the swap above, an error that would put the birth in the
    // future is one a records system refuses: the date stays as it was.
    if chance(rng, rates.day_out) {
        let out = if rng.random_bool(0.5) {
            dob - Duration::days(1)
        } else {
            dob + Duration::days(1)
        };
        if out <= reference {
            dob = out;
        }
    }
    if chance(rng, rates.year_typo) {
        // The last digit of the year keyed wrong (a digit that keeps the
        // birth in the past).
        let decade = dob.year() - dob.year() % 10;
        let typos: Vec<Date> = (decade..decade + 10)
            .filter(|&year| year != dob.year())
            .filter_map(|year| dob.replace_year(year).ok())
            .filter(|typo| *typo <= reference)
            .collect();
        if !typos.is_empty() {
            dob = typos[rng.random_range(0..typos.len())];
        }
    }
    if chance(rng, rates.placeholder_dob) {
        dob = Date::from_calendar_date(1900, time::Month::January, 1).expect("a date");
    }
    let sex_unknown = chance(rng, rates.unknown_sex);
    if chance(rng, rates.placeholder_postcode) {
        postcode = "ZZ99 3VZ".to_owned();
    } else if chance(rng, rates.no_postcode) {
        postcode.clear();
    }
    let local_id = match agency.layout {
        Layout::Council => format!("LA{:07}", c.id * 7 + index),
        Layout::Camhs => format!("M{:08}", c.id * 13 + 5),
        Layout::Salt => format!("S-{:06}", c.id * 3 + 1),
        Layout::AcuteAe => format!("RW9{:07}", c.id * 11 + 3),
    };
    Recorded {
        local_id,
        given,
        family,
        dob,
        sex_unknown,
        nhs,
        postcode,
    }
}

fn header(layout: Layout) -> Vec<&'static str> {
    match layout {
        Layout::Council => vec![
            "Child ID",
            "Surname",
            "Forename",
            "DOB",
            "Gender",
            "NHS Number",
            "Postcode",
            "Ethnicity",
            "Referral Date",
            "Referral Source",
        ],
        Layout::Camhs => vec![
            "LocalPatientId",
            "NHSNumber",
            "PatientName",
            "PersonBirthDate",
            "Gender",
            "Postcode",
            "ReferralRequestReceivedDate",
            "SourceOfReferralMH",
        ],
        Layout::Salt => vec![
            "Patient ID",
            "NHS No",
            "First Name",
            "Last Name",
            "Date of Birth",
            "Sex",
            "Post Code",
            "Contact Date",
        ],
        Layout::AcuteAe => vec![
            "MRN",
            "NHS_NUMBER",
            "SURNAME",
            "FORENAME",
            "BIRTH_DATE",
            "SEX",
            "POSTCODE",
            "ARRIVAL_DTTM",
        ],
    }
}

fn row(
    layout: Layout,
    r: &Recorded,
    male_child: bool,
    event: Date,
    rng: &mut ChaCha8Rng,
) -> Vec<String> {
    let dmy = |d: Date| format!("{:02}/{:02}/{}", d.day(), d.month() as u8, d.year());
    let compact = |d: Date| format!("{}{:02}{:02}", d.year(), d.month() as u8, d.day());
    let nhs = r.nhs.clone().unwrap_or_default();
    // Each system's own code for a sex, and for one it was not told.
    let sex = |male: &'static str, female: &'static str, unknown: &'static str| {
        if r.sex_unknown {
            unknown
        } else if male_child {
            male
        } else {
            female
        }
        .to_owned()
    };
    match layout {
        Layout::Council => vec![
            r.local_id.clone(),
            title_case(&r.family),
            title_case(&r.given),
            dmy(r.dob),
            sex("1", "2", "0"),
            nhs,
            r.postcode.clone(),
            ETHNICITY.choose(rng).copied().unwrap_or("WBRI").to_owned(),
            dmy(event),
            COUNCIL_REFERRAL_SOURCES
                .choose(rng)
                .copied()
                .unwrap_or("1A")
                .to_owned(),
        ],
        Layout::Camhs => vec![
            r.local_id.clone(),
            nhs,
            format!("{}, {}", r.family, title_case(&r.given)),
            r.dob.to_string(),
            sex("1", "2", "X"),
            r.postcode.replace(' ', ""),
            compact(event),
            CAMHS_REFERRAL_SOURCES
                .choose(rng)
                .copied()
                .unwrap_or("A1")
                .to_owned(),
        ],
        Layout::Salt => vec![
            r.local_id.clone(),
            if nhs.len() == 10 {
                format!("{} {} {}", &nhs[..3], &nhs[3..6], &nhs[6..])
            } else {
                nhs
            },
            title_case(&r.given),
            title_case(&r.family),
            compact(r.dob),
            sex("Male", "Female", "Unknown"),
            r.postcode.to_lowercase(),
            dmy(event),
        ],
        Layout::AcuteAe => vec![
            r.local_id.clone(),
            nhs,
            r.family.clone(),
            r.given.clone(),
            format!("{} 00:00:00", r.dob),
            sex("M", "F", "U"),
            r.postcode.clone(),
            format!(
                "{event} {:02}:{:02}:00",
                rng.random_range(0..24),
                rng.random_range(0..60)
            ),
        ],
    }
}

/// Damages about one row in a hundred the way real extracts are damaged.
fn break_row(rng: &mut ChaCha8Rng, layout: Layout, fields: &mut Vec<String>) {
    // An impossible date of birth, written in the layout's own format.
    let (dob, impossible) = match layout {
        Layout::Council => (3, "31/02/2015"),
        Layout::Camhs => (3, "2015-02-31"),
        Layout::Salt => (4, "20150231"),
        Layout::AcuteAe => (4, "2015-02-31 00:00:00"),
    };
    match rng.random_range(0..1000) {
        0..=3 => fields[dob] = impossible.to_owned(),
        4..=6 => {
            fields.pop(); // a field lost
        }
        7..=8 => fields[0].clear(), // no local id
        _ => {}
    }
}

fn mapping_yaml(layout: Layout) -> &'static str {
    match layout {
        Layout::Council => {
            "\
# Council children's social care referrals (case management system export).
dataset: csc_referrals
fields:
  local_id: Child ID
  nhs_number: NHS Number
  family_name: Surname
  given_name: Forename
  date_of_birth: { column: DOB, format: dd/mm/yyyy }
  sex: { column: Gender, codes: { \"1\": male, \"2\": female } }
  postcode: Postcode
attributes:
  ethnicity: Ethnicity
events:
  - type: csc_referral
    date: { column: Referral Date, format: dd/mm/yyyy }
    attributes:
      source: Referral Source
"
        }
        Layout::Camhs => {
            "\
# CAMHS referrals (MHSDS-style extract).
dataset: camhs_referrals
fields:
  local_id: LocalPatientId
  nhs_number: NHSNumber
  full_name: { column: PatientName, order: surname_comma_forename }
  date_of_birth: { column: PersonBirthDate, format: iso }
  sex: Gender
  postcode: Postcode
events:
  - type: camhs_referral
    date: { column: ReferralRequestReceivedDate, format: yyyymmdd }
    attributes:
      source: SourceOfReferralMH
"
        }
        Layout::Salt => {
            "\
# Speech and language therapy contacts (spreadsheet export: ';' separated, CRLF).
dataset: salt_contacts
delimiter: ';'
fields:
  local_id: Patient ID
  nhs_number: NHS No
  given_name: First Name
  family_name: Last Name
  date_of_birth: { column: Date of Birth, format: yyyymmdd }
  sex: Sex
  postcode: Post Code
events:
  - type: salt_contact
    date: { column: Contact Date, format: dd/mm/yyyy }
"
        }
        Layout::AcuteAe => {
            "\
# Emergency department attendances (acute trust's patient administration system).
dataset: ae_attendances
fields:
  local_id: MRN
  nhs_number: NHS_NUMBER
  family_name: SURNAME
  given_name: FORENAME
  date_of_birth: { column: BIRTH_DATE, format: iso }
  sex: SEX
  postcode: POSTCODE
events:
  - type: ae_attendance
    date: { column: ARRIVAL_DTTM, format: iso }
"
        }
    }
}

fn writer(layout: Layout, path: &Path) -> anyhow::Result<csv::Writer<File>> {
    let mut builder = csv::WriterBuilder::new();
    builder.flexible(true);
    if let Layout::Salt = layout {
        builder.delimiter(b';').terminator(csv::Terminator::CRLF);
    }
    builder
        .from_path(path)
        .with_context(|| format!("creating {}", path.display()))
}

fn random_date(rng: &mut ChaCha8Rng, after: Date, before: Date) -> Date {
    let span = (before - after).whole_days().max(1);
    after + Duration::days(rng.random_range(0..span))
}

/// A valid NHS number in the never-issued 999 range.
/// A valid NHS number from `range`, with its first nine digits.
fn nhs_number(rng: &mut ChaCha8Rng, range: NhsRange) -> (u32, String) {
    loop {
        let first_nine = range.first + rng.random_range(0..range.count);
        let nine = first_nine.to_string();
        if let Some(check) = joinery_agent::validate::nhs_check_digit(nine.as_bytes()) {
            return (first_nine, format!("{nine}{check}"));
        }
    }
}

/// The number with one digit changed (usually, but not always, failing Modulus 11).
fn mistype(rng: &mut ChaCha8Rng, nhs: &str) -> String {
    let mut digits: Vec<u8> = nhs.bytes().collect();
    let position = rng.random_range(3..10);
    digits[position] = b'0' + (digits[position] - b'0' + rng.random_range(1..10)) % 10;
    String::from_utf8(digits).unwrap_or_default()
}

fn postcode(rng: &mut ChaCha8Rng) -> String {
    const LETTERS: &[u8] = b"ABDEFGHJLNPQRSTUWXYZ";
    let district = DISTRICTS.choose(rng).copied().unwrap_or("LS1");
    let a = LETTERS[rng.random_range(0..LETTERS.len())] as char;
    let b = LETTERS[rng.random_range(0..LETTERS.len())] as char;
    format!("{district} {}{a}{b}", rng.random_range(1..10))
}

fn title_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut start = true;
    for c in name.chars() {
        out.extend(if start {
            c.to_uppercase().collect::<Vec<_>>()
        } else {
            c.to_lowercase().collect()
        });
        start = c == '-' || c == ' ' || c == '\'';
    }
    out
}

/// The names children are given, from the lists under `synth/names/`
/// (about 150 given names a sex and 550 family names, so that two children
/// share a name and a birth date about as rarely as in an English city),
/// and the short form records sometimes hold instead of a given name.
struct Names {
    male: Vec<&'static str>,
    female: Vec<&'static str>,
    family: Vec<&'static str>,
    nicknames: std::collections::HashMap<&'static str, &'static str>,
}

static NAMES: std::sync::LazyLock<Names> = std::sync::LazyLock::new(|| {
    let words = |text: &'static str| {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .flat_map(str::split_whitespace)
    };
    // A given name is NAME or NAME/NICKNAME; the first nickname of a name wins.
    let mut nicknames = std::collections::HashMap::new();
    let mut given = |text: &'static str| -> Vec<&'static str> {
        words(text)
            .map(|w| match w.split_once('/') {
                Some((name, nickname)) => {
                    nicknames.entry(name).or_insert(nickname);
                    name
                }
                None => w,
            })
            .collect()
    };
    let male = given(include_str!("synth/names/male.txt"));
    let female = given(include_str!("synth/names/female.txt"));
    Names {
        male,
        female,
        family: words(include_str!("synth/names/surnames.txt")).collect(),
        nicknames,
    }
});

impl Names {
    fn given(&self, male: bool) -> &[&'static str] {
        if male { &self.male } else { &self.female }
    }
}

const DISTRICTS: &[&str] = &[
    "LS1", "LS2", "LS4", "LS6", "LS7", "LS8", "LS9", "LS10", "LS11", "LS12", "LS13", "LS14",
    "LS15", "LS16", "LS17", "LS25", "LS26", "LS27", "LS28", "BD3", "BD4", "BD5", "BD7", "WF1",
    "WF3",
];

const ETHNICITY: &[&str] = &[
    "WBRI", "WBRI", "WBRI", "WIRI", "WOTH", "MWBC", "MWBA", "AIND", "APKN", "BAFR", "BCRB", "CHNE",
    "OOTH", "REFU",
];

const COUNCIL_REFERRAL_SOURCES: &[&str] = &[
    "1A", "1B", "2A", "2B", "3A", "3E", "4", "5A", "5B", "6", "7", "8", "9", "10",
];

const CAMHS_REFERRAL_SOURCES: &[&str] = &["A1", "A3", "B1", "D1", "E1", "F1", "G3", "H1", "M3"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nhs_numbers_are_valid_and_in_the_test_range() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let test_range = NhsRange::for_children(TEST_RANGE_CHILDREN);
        for _ in 0..200 {
            let (first_nine, n) = nhs_number(&mut rng, test_range);
            assert!(n.starts_with("999"), "{n}");
            assert!(n.starts_with(&first_nine.to_string()));
            assert!(joinery_agent::validate::nhs_number(&n).is_ok());
        }
    }

    /// A population too large for the test range draws valid numbers from
    /// the whole unissued 9 range, and never one twice.
    #[test]
    fn a_region_sized_population_draws_from_the_nine_range() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let region = NhsRange::for_children(TEST_RANGE_CHILDREN + 1);
        let mut outside_999 = 0;
        for _ in 0..2000 {
            let (_, n) = nhs_number(&mut rng, region);
            assert!(n.starts_with('9') && n.len() == 10, "{n}");
            assert!(joinery_agent::validate::nhs_number(&n).is_ok());
            outside_999 += usize::from(!n.starts_with("999"));
        }
        assert!(outside_999 > 1900, "{outside_999} of 2000 outside 999");
        let dir = tempfile::tempdir().unwrap();
        let error = generate(
            dir.path(),
            &Population::tidy(MAX_CHILDREN + 1, 1, time::macros::date!(2026 - 01 - 01)),
        )
        .unwrap_err();
        assert!(error.to_string().contains("at most"), "{error}");
    }

    /// The opt-out list is one the agent loads, of about [`OPTED_OUT`] of
    /// the children, and names children of the population.
    #[test]
    fn the_opt_out_list_loads_in_the_agent_and_names_a_share_of_the_children() {
        let reference = time::macros::date!(2026 - 01 - 01);
        let dir = tempfile::tempdir().unwrap();
        let output = generate(dir.path(), &Population::tidy(3000, 5, reference)).unwrap();
        let list = joinery_agent::opt_out::OptOutList::load(&output.opt_out).unwrap();
        assert!(
            (30..=90).contains(&list.len()),
            "{} opted out of 3000",
            list.len()
        );
        let mut truth = csv::Reader::from_path(&output.ground_truth).unwrap();
        let recorded: Vec<String> = truth.records().map(|r| r.unwrap()[4].to_owned()).collect();
        let listed = recorded
            .iter()
            .filter(|n| !n.is_empty() && list.contains(n))
            .count();
        assert!(listed > 0, "no opted-out child has a record");
    }

    #[test]
    fn reach_sets_every_agencys_share_of_the_children() {
        let reference = time::macros::date!(2026 - 01 - 01);
        let dir = tempfile::tempdir().unwrap();
        generate(
            dir.path(),
            &Population {
                reach: Some(1.0),
                ..Population::tidy(60, 3, reference)
            },
        )
        .unwrap();
        let truth = std::fs::read_to_string(dir.path().join("ground_truth.csv")).unwrap();
        for agency in agencies(Profile::Tidy) {
            let known = truth.lines().filter(|l| l.contains(agency.dataset)).count();
            assert_eq!(known, 60, "{}", agency.dataset);
        }
        let error = generate(
            dir.path(),
            &Population {
                reach: Some(1.5),
                ..Population::tidy(60, 3, reference)
            },
        )
        .unwrap_err();
        assert!(error.to_string().contains("not 1.5"), "{error}");
    }

    #[test]
    fn some_children_are_siblings_and_a_few_are_twins() {
        let reference = time::macros::date!(2026 - 01 - 01);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut issued = std::collections::HashSet::new();
        let mut population: Vec<Child> = (0..20_000)
            .map(|id| {
                let numbers = NhsRange::for_children(20_000);
                child(&mut rng, id, reference, numbers, &mut issued)
            })
            .collect();
        into_households(&mut population, 5, reference);
        let (mut siblings, mut twins) = (0, 0);
        for pair in population.windows(2) {
            let [elder, child] = pair else { unreachable!() };
            if child.household != elder.household {
                continue;
            }
            siblings += 1;
            assert_eq!(
                (&child.family, &child.postcode),
                (&elder.family, &elder.postcode)
            );
            assert_ne!(child.nhs, elder.nhs, "siblings are different children");
            if child.dob == elder.dob {
                twins += 1;
                assert_ne!(child.given, elder.given, "twins have different names");
            }
        }
        // About a quarter of children follow a sibling, 1.5% a twin.
        assert!((4_500..5_500).contains(&siblings), "{siblings} siblings");
        assert!((200..400).contains(&twins), "{twins} twins");
    }

    #[test]
    fn the_messy_profile_makes_every_kind_of_error_and_adds_an_agency() {
        let reference = time::macros::date!(2026 - 01 - 01);
        let dir = tempfile::tempdir().unwrap();
        let out = generate(
            dir.path(),
            &Population {
                profile: Profile::Messy,
                ..Population::tidy(3_000, 11, reference)
            },
        )
        .unwrap();
        assert_eq!(out.extracts.len(), 4);
        let extract =
            |name: &str| std::fs::read_to_string(dir.path().join("extracts").join(name)).unwrap();
        let ae = extract("ae_attendances.csv");
        let council = extract("csc_referrals.csv");
        let salt = extract("salt_contacts.csv");
        assert!(ae.contains(",U,"), "unknown sex codes");
        assert!(salt.contains(";Unknown;"), "unknown sex spelt out");
        assert!(ae.contains("ZZ99 3VZ"), "placeholder postcodes");
        assert!(
            ae.contains("1900-01-01 00:00:00"),
            "placeholder birth dates"
        );
        assert!(
            council
                .lines()
                .any(|l| l.split(',').nth(1).is_some_and(|f| f.contains('-'))),
            "double-barrelled family names"
        );
        // The A&E extract holds NHS numbers far more often than the council's.
        let with_nhs = |text: &str, column: usize| {
            let rows: Vec<&str> = text.lines().skip(1).collect();
            let present = rows
                .iter()
                .filter(|l| l.split(',').nth(column).is_some_and(|f| f.len() == 10))
                .count();
            present as f64 / rows.len() as f64
        };
        assert!(with_nhs(&ae, 1) > 0.9, "{}", with_nhs(&ae, 1));
        assert!(with_nhs(&council, 5) < 0.5, "{}", with_nhs(&council, 5));
        // The tidy profile's files are untouched by the messy one's errors.
        let tidy = tempfile::tempdir().unwrap();
        generate(tidy.path(), &Population::tidy(3_000, 11, reference)).unwrap();
        assert!(!tidy.path().join("extracts/ae_attendances.csv").exists());
        let tidy_council =
            std::fs::read_to_string(tidy.path().join("extracts/csc_referrals.csv")).unwrap();
        assert!(!tidy_council.contains("ZZ99"));
    }

    #[test]
    fn same_seed_same_output() {
        let reference = time::macros::date!(2026 - 01 - 01);
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        generate(a.path(), &Population::tidy(50, 9, reference)).unwrap();
        generate(b.path(), &Population::tidy(50, 9, reference)).unwrap();
        for file in [
            "ground_truth.csv",
            "extracts/csc_referrals.csv",
            "extracts/salt_contacts.csv",
        ] {
            assert_eq!(
                std::fs::read(a.path().join(file)).unwrap(),
                std::fs::read(b.path().join(file)).unwrap(),
                "{file}"
            );
        }
    }
}
