//! `joinery-bench attack`: what the gateway's operator could learn about
//! who a stored record is.
//!
//! The attacker holds what the gateway stores for each record — its keyed
//! Bloom filters (the operator holds the re-keying key, so the bit
//! permutation hides nothing from them, and every attack here works on
//! similarities, which a permutation keeps anyway) and the
//! quasi-identifiers kept in clear (sex, birth month, postcode district) —
//! and a register of the population in plaintext (a GP list, a school
//! census) that shares a given share of its people with the encoded records.
//!
//! Each attack recovers what it can of each stored record's identifying
//! values ([`Recovery`]). A record is re-identified when what was
//! recovered, with its clear values, singles out exactly one person of the
//! register, and that is the right person ([`Case::score`]). Attacks:
//!
//! - `clear`: the clear quasi-identifiers alone.
//! - `frequency` ([`frequency`]): equal filters of a field grouped within
//!   the stratum its salt makes (the salt is a birth year or a district the
//!   attacker reads from the clear values), groups given the register's
//!   values of that stratum in order of frequency.
//! - `blocking` ([`frequency`]): the same on the keyed blocking keys, within
//!   strata of all the clear values.
//! - `dates` ([`dates`]): the date-of-birth filter's shared parts.
//! - `graph` ([`graph`]): graph matching on the Dice-similarity graphs of
//!   the name fields (Vidanage et al., CIKM 2020).
//! - `pattern` ([`pattern`]): pattern mining on the bits that letter pairs
//!   set together, for every field encoded by letter pairs (Christen et
//!   al., IEEE TKDE 2019).
//! - `all`: every attack's recoveries together.
//!
//! The population is `joinery synth`'s, every agency knowing every child;
//! the encoded records and the register are drawn from one agency's
//! extract, read through its agent mapping, so the people they share carry
//! the same values on both sides (the strongest attacker).

mod dates;
mod frequency;
mod graph;
mod pattern;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use joinery_agent::mapping::Mapping;
use joinery_agent::row::RowOutcome;
use joinery_agent::source::Source;
use joinery_agent::source::csv::CsvSource;
use joinery_crypto::keys::SecretKey;
use joinery_gateway::identifiability::Coarsening;
use joinery_linkage::encode::rule_text;
use joinery_linkage::params::{KeyPart, Take};
use joinery_linkage::{Encoder, Encoding, Identity, LinkageParams};
use rand::seq::SliceRandom;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, clap::Args)]
pub struct AttackArgs {
    /// Encoded records (the register holds as many people).
    #[arg(long, default_value_t = 20_000)]
    records: usize,
    /// Shares of the encoded records' people the register also holds, in
    /// per cent.
    #[arg(long, value_delimiter = ',', default_value = "100,80,50")]
    overlap: Vec<u32>,
    /// Linkage parameters (YAML, as in an agreement); default: the
    /// canonical ones.
    #[arg(long)]
    params: Option<PathBuf>,
    /// The canonical parameters of this version (an agreement's
    /// `linkage.encoding.version`), in place of --params.
    #[arg(long, conflicts_with = "params")]
    version: Option<u32>,
    /// Population seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// What the gateway keeps in clear, as an agreement could coarsen it:
    /// as-stored (sex, birth month, postcode district), birth-quarter,
    /// birth-year, postcode-area, birth-year-and-postcode-area.
    #[arg(long, default_value = "as-stored", value_parser = Coarsening::named)]
    clear: Coarsening,
}

pub fn run(args: AttackArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.records >= 100, "--records: at least 100");
    let params = super::linkage_params(args.params.as_deref(), args.version)?;
    let started = Instant::now();
    // A few children are quarantined by their agency (broken rows): draw a
    // little more than twice the records, for a register sharing none.
    let people = synthetic_people(2 * args.records + args.records / 20, args.seed, args.clear)?;
    println!(
        "population: {} people read from one agency's extract ({:.1} s); encoding version {}; kept in clear: {}",
        people.len(),
        started.elapsed().as_secs_f64(),
        params.version,
        args.clear.describe()
    );
    println!(
        "| overlap | attack | guessed | correct | precision | re-identified | values recovered rightly |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for &overlap in &args.overlap {
        anyhow::ensure!(overlap <= 100, "--overlap: per cent, 0 to 100");
        let started = Instant::now();
        let case = Case::draw(&people, args.records, overlap, args.seed, &params)?;
        for (attack, outcome, recovered) in case.run_all() {
            let fields: Vec<String> = recovered
                .iter()
                .map(|r| {
                    let (_, right) = case.accuracy(r);
                    format!(
                        "{} {:.1}%",
                        r.what,
                        100.0 * right as f64 / args.records as f64
                    )
                })
                .collect();
            println!(
                "| {overlap}% | {attack} | {} | {} | {:.3} | {:.2}% | {} |",
                outcome.guessed,
                outcome.correct,
                outcome.precision(),
                100.0 * outcome.correct as f64 / args.records as f64,
                fields.join(", ")
            );
        }
        eprintln!("{overlap}%: {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(ExitCode::SUCCESS)
}

/// One person as an agency's extract has them: who they really are (for
/// scoring only), their identifying values, and what of them the gateway
/// keeps in clear.
#[derive(Debug, Clone)]
pub struct Person {
    pub child: u32,
    pub identity: Identity,
    pub clear: Clear,
}

/// The quasi-identifiers the gateway keeps in clear on every record, as
/// the agreement coarsens them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Clear {
    pub sex: Option<String>,
    /// The birth month (`YYYY-MM`), or its quarter (`YYYY-Qn`) or year.
    pub birth: Option<String>,
    /// The postcode district (`LS6`), or its area (`LS`).
    pub place: Option<String>,
    pub coarsening: Coarsening,
}

impl Clear {
    fn of(identity: &Identity, coarsening: Coarsening) -> Self {
        let month = identity.get("date_of_birth").and_then(|d| d.get(..7));
        let district = identity
            .get("postcode")
            .and_then(|p| p.split_whitespace().next());
        let (birth, place) = coarsening.apply(month, district);
        Self {
            sex: identity.get("sex").map(str::to_owned),
            birth: Some(birth).filter(|b| !b.is_empty()),
            place: Some(place).filter(|p| !p.is_empty()),
            coarsening,
        }
    }

    /// The birth year.
    pub fn year(&self) -> Option<&str> {
        self.birth.as_deref().and_then(|b| b.get(..4))
    }

    /// Whether two records' clear birth values leave room for the same
    /// day of the year (the same month, or quarter, where those are kept).
    pub fn may_share_day(&self, other: &Clear) -> bool {
        match (
            self.birth.as_deref().and_then(|b| b.get(5..)),
            other.birth.as_deref().and_then(|b| b.get(5..)),
        ) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }

    /// Whether a date of birth's month (`MM`) fits the clear birth value.
    pub fn fits_month(&self, month: &str) -> bool {
        let Some(birth) = self.birth.as_deref() else {
            return true;
        };
        match birth.get(5..) {
            Some(quarter) if quarter.starts_with('Q') => {
                month.parse::<u8>().ok().map(|m| m.div_ceil(3).to_string())
                    == Some(quarter[1..].to_owned())
            }
            Some(kept) => kept == month,
            None => true,
        }
    }

    /// The value of a salt the attacker can read from the clear values:
    /// `Some("")` for no salt, `None` when the clear values do not give it.
    pub fn salt(&self, salt: Option<&KeyPart>) -> Option<String> {
        let Some(part) = salt else {
            return Some(String::new());
        };
        let month_kept = self.coarsening.keeps_month();
        match (part.field.as_str(), part.take) {
            ("date_of_birth", Take::Prefix(n)) if n <= 4 || (month_kept && n <= 7) => self
                .birth
                .as_deref()
                .and_then(|m| m.get(..n))
                .map(str::to_owned),
            ("postcode", Take::FirstWord) if self.coarsening.keeps_district() => self.place.clone(),
            ("sex", Take::Whole) => self.sex.clone(),
            _ => None,
        }
    }

    /// The stratum a record falls in for a field salted with `salt`: the
    /// salt itself where the clear values give it; else all the clear
    /// values, within which filters of many salts lie together for the
    /// attacker (a record can only be a register person with its clear
    /// values).
    pub fn stratum(&self, salt: Option<&KeyPart>) -> String {
        match self.salt(salt) {
            Some(readable) => readable,
            None => format!(
                "~{}~{}~{}",
                self.sex.as_deref().unwrap_or_default(),
                self.birth.as_deref().unwrap_or_default(),
                self.place.as_deref().unwrap_or_default()
            ),
        }
    }
}

/// Joins a register value to its salt where the attacker cannot read the
/// salt from the clear values: they still know each register person's salt
/// (the parameters are in the agreement), so equal filters are equal
/// values with equal salts, and filters of different salts are unrelated.
const SALT_SEPARATOR: char = '\u{1e}';

/// A register value without the salt [`strata`] may have joined to it.
pub fn plain(value: &str) -> &str {
    value.split(SALT_SEPARATOR).next().unwrap_or(value)
}

/// The salt [`strata`] joined to a register value ("" if none).
pub fn hidden_salt(value: &str) -> &str {
    value
        .split_once(SALT_SEPARATOR)
        .map_or("", |(_, salt)| salt)
}

/// What the gateway stores for one record, as its operator sees it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub encoding: Encoding,
    pub clear: Clear,
}

/// What an attack recovered of one field, or of one blocking rule's text: a
/// value (or nothing) per stored record.
#[derive(Debug, Clone)]
pub struct Recovery {
    pub what: What,
    pub values: Vec<Option<String>>,
}

/// What a recovery is of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// An identifying field (`given_name`, `date_of_birth`...).
    Field(String),
    /// The text blocking rule `r` keys (its parts' values), as
    /// `joinery_linkage::encode::rule_text` makes it.
    Rule(usize),
}

impl std::fmt::Display for What {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Field(field) => f.write_str(field),
            Self::Rule(r) => write!(f, "blocking rule {r}"),
        }
    }
}

/// One encoded population and the attacker's register.
pub struct Case<'a> {
    pub params: &'a LinkageParams,
    pub stored: Vec<Stored>,
    /// Who each stored record really is (scoring only: no attack reads it).
    truth: Vec<Person>,
    pub register: Vec<Person>,
    /// Each register person's blocking rules' texts, by rule.
    register_rules: Vec<Vec<Option<String>>>,
    /// Each register person's value of each field joined to its salt, by
    /// field, where the clear values do not give the salt ([`strata`]).
    register_salted: Vec<Vec<Option<String>>>,
}

/// The register's people by their clear values and a recovered value.
type PeopleByValue<'c> = HashMap<(&'c Clear, &'c str), Vec<usize>>;

/// How one attack did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Records the attack named a person of the register for.
    pub guessed: usize,
    /// Of those, named rightly.
    pub correct: usize,
}

impl Outcome {
    pub fn precision(&self) -> f64 {
        if self.guessed == 0 {
            0.0
        } else {
            self.correct as f64 / self.guessed as f64
        }
    }
}

impl<'a> Case<'a> {
    /// `records` people of `people` encoded under a fresh key, and a
    /// register of as many, `overlap` per cent of them among the encoded.
    pub fn draw(
        people: &[Person],
        records: usize,
        overlap: u32,
        seed: u64,
        params: &'a LinkageParams,
    ) -> anyhow::Result<Self> {
        let shared = records * overlap as usize / 100;
        anyhow::ensure!(
            people.len() >= 2 * records - shared,
            "{} people cannot give {records} encoded records and a register of as many sharing {overlap}%",
            people.len()
        );
        let mut order: Vec<usize> = (0..people.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ u64::from(overlap)));
        let encoded = &order[..records];
        let register: Vec<Person> = encoded[..shared]
            .iter()
            .chain(&order[records..2 * records - shared])
            .map(|&i| people[i].clone())
            .collect();
        // The key is drawn from the seed too, so a run reproduces: which
        // letter pairs collide moves the name attacks' figures.
        let mut key = [0u8; 32];
        ChaCha8Rng::seed_from_u64(seed ^ u64::from(overlap) ^ 0x006b_6579).fill_bytes(&mut key);
        let encoder = Encoder::new(&SecretKey::from_bytes(key), params)?;
        let identities: Vec<Identity> = encoded
            .iter()
            .map(|&i| people[i].identity.clone())
            .collect();
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let stored = encoder
            .encode_many(&identities, threads)
            .into_iter()
            .zip(encoded)
            .map(|(encoding, &i)| Stored {
                encoding,
                clear: people[i].clear.clone(),
            })
            .collect();
        let register_rules = register
            .iter()
            .map(|p| {
                params
                    .blocking
                    .iter()
                    .map(|rule| rule_text(rule, &p.identity))
                    .collect()
            })
            .collect();
        let register_salted = params
            .fields
            .iter()
            .map(|field| {
                register
                    .iter()
                    .map(|p| {
                        let salt = field.salt.as_ref()?;
                        if p.clear.salt(Some(salt)).is_some() {
                            return None;
                        }
                        let value = p.identity.get(&field.field)?;
                        let salt = rule_text(std::slice::from_ref(salt), &p.identity)?;
                        Some(format!("{value}{SALT_SEPARATOR}{salt}"))
                    })
                    .collect()
            })
            .collect();
        Ok(Self {
            params,
            stored,
            truth: encoded.iter().map(|&i| people[i].clone()).collect(),
            register,
            register_rules,
            register_salted,
        })
    }

    /// Every attack, and all of them together: how each did, and what it
    /// recovered.
    pub fn run_all(&self) -> Vec<(&'static str, Outcome, Vec<Recovery>)> {
        let frequency = frequency::on_filters(self);
        let blocking = frequency::on_blocking_keys(self);
        let dates = dates::attack(self);
        let graph = graph::attack(self);
        let pattern = pattern::attack(self);
        // Together, the more specific evidence first: a candidate is judged
        // on the dates it agrees with, then the names, then the rest.
        let all = self.score(&[&dates, &graph, &pattern, &blocking, &frequency]);
        let mut outcomes: Vec<(&'static str, Outcome, Vec<Recovery>)> = [
            ("clear", Vec::new()),
            ("frequency", frequency),
            ("blocking", blocking),
            ("dates", dates),
            ("graph", graph),
            ("pattern", pattern),
        ]
        .into_iter()
        .map(|(name, recovered)| (name, self.score(&[&recovered]), recovered))
        .collect();
        outcomes.push(("all", all, Vec::new()));
        outcomes
    }

    /// Of the stored records, how many `recovery` gave a value, and how many
    /// of those were right.
    pub fn accuracy(&self, recovery: &Recovery) -> (usize, usize) {
        let given = recovery.values.iter().flatten().count();
        let right = recovery
            .values
            .iter()
            .zip(&self.truth)
            .filter(|(v, t)| {
                v.is_some()
                    && match &recovery.what {
                        What::Field(field) => v.as_deref() == t.identity.get(field),
                        What::Rule(r) => **v == rule_text(&self.params.blocking[*r], &t.identity),
                    }
            })
            .count();
        (given, right)
    }

    /// Register person `p`'s text of blocking rule `r`.
    pub fn rule_text(&self, p: usize, r: usize) -> Option<&str> {
        self.register_rules[p][r].as_deref()
    }

    /// Register person `p`'s value of what `what` names.
    fn value_of(&self, p: usize, what: &What) -> Option<&str> {
        match what {
            What::Field(field) => self.register[p].identity.get(field),
            What::Rule(r) => self.rule_text(p, *r),
        }
    }

    /// Re-identifications from `evidence`, groups of recoveries in the
    /// order the attacker trusts them. The candidates for a stored record
    /// are the register's people with its clear values; each scores, per
    /// group, the recovered values it agrees with, and the record is taken
    /// to be the one candidate whose scores are highest (compared group by
    /// group; a tie names nobody). So a wrong recovery costs the attacker
    /// only the agreement it fails to add.
    pub fn score(&self, evidence: &[&[Recovery]]) -> Outcome {
        let mut by_clear: HashMap<&Clear, Vec<usize>> = HashMap::new();
        for (p, person) in self.register.iter().enumerate() {
            by_clear.entry(&person.clear).or_default().push(p);
        }
        // For each recovery, the register's people by their clear values
        // and their value of what it recovered: a record's candidates that
        // agree with it are then looked up, not compared one by one.
        let agreeing: Vec<Vec<PeopleByValue>> = evidence
            .iter()
            .map(|group| {
                group
                    .iter()
                    .map(|r| {
                        let mut by_value = PeopleByValue::new();
                        for (p, person) in self.register.iter().enumerate() {
                            if let Some(value) = self.value_of(p, &r.what) {
                                by_value.entry((&person.clear, value)).or_default().push(p);
                            }
                        }
                        by_value
                    })
                    .collect()
            })
            .collect();
        let mut outcome = Outcome::default();
        for (i, stored) in self.stored.iter().enumerate() {
            let Some(candidates) = by_clear.get(&stored.clear) else {
                continue;
            };
            let mut agreement: HashMap<usize, Vec<usize>> = candidates
                .iter()
                .map(|&p| (p, vec![0; evidence.len()]))
                .collect();
            for (g, group) in evidence.iter().enumerate() {
                for (r, recovery) in group.iter().enumerate() {
                    let Some(value) = recovery.values[i].as_deref() else {
                        continue;
                    };
                    for p in agreeing[g][r]
                        .get(&(&stored.clear, value))
                        .into_iter()
                        .flatten()
                    {
                        if let Some(scores) = agreement.get_mut(p) {
                            scores[g] += 1;
                        }
                    }
                }
            }
            let mut scored: Vec<(Vec<usize>, usize)> =
                agreement.into_iter().map(|(p, a)| (a, p)).collect();
            scored.sort_by(|a, b| b.0.cmp(&a.0));
            let best = match scored.as_slice() {
                [(_, only)] => *only,
                [(first, p), (second, _), ..] if first > second => *p,
                _ => continue,
            };
            outcome.guessed += 1;
            if self.register[best].child == self.truth[i].child {
                outcome.correct += 1;
            }
        }
        outcome
    }
}

/// Field `f` split by the stratum its salt makes ([`Clear::stratum`]): the
/// stored records' distinct filters with the records carrying each, and
/// the register's distinct values with how many people carry each. Where
/// the clear values do not give the salt, a stratum holds many salts, and
/// each register value is joined to its salt ([`plain`] takes it off).
pub type Strata<'c> = (
    HashMap<String, HashMap<&'c [u64], Vec<usize>>>,
    HashMap<String, HashMap<&'c str, usize>>,
);

/// The [`Strata`] of field `f`.
pub fn strata<'c>(case: &'c Case<'_>, f: usize) -> Strata<'c> {
    let field = &case.params.fields[f];
    let salt = field.salt.as_ref();
    let mut filters: HashMap<String, HashMap<&[u64], Vec<usize>>> = HashMap::new();
    for (i, record) in case.stored.iter().enumerate() {
        let filter = record.encoding.filter(case.params, f);
        if !filter.is_empty() {
            filters
                .entry(record.clear.stratum(salt))
                .or_default()
                .entry(filter)
                .or_default()
                .push(i);
        }
    }
    let mut values: HashMap<String, HashMap<&str, usize>> = HashMap::new();
    for (p, person) in case.register.iter().enumerate() {
        let value = match person.clear.salt(salt) {
            Some(_) => person.identity.get(&field.field),
            None => case.register_salted[f][p].as_deref(),
        };
        if let Some(value) = value {
            *values
                .entry(person.clear.stratum(salt))
                .or_default()
                .entry(value)
                .or_default() += 1;
        }
    }
    (filters, values)
}

/// `children` synthetic children as the first agency of `joinery synth`'s
/// tidy profile records them (every child known to it), read through its
/// agent mapping; one person per child (their first row: an agency may
/// hold several).
pub fn synthetic_people(
    children: usize,
    seed: u64,
    clear: Coarsening,
) -> anyhow::Result<Vec<Person>> {
    let dir = tempfile::tempdir()?;
    let today = time::OffsetDateTime::now_utc().date();
    let output = crate::synth::generate(
        dir.path(),
        &crate::synth::Population {
            reach: Some(1.0),
            national_formats: false,
            ..crate::synth::Population::tidy(children, seed, today)
        },
    )?;
    let (_, extract, mapping_path) = output.extracts.first().context("synth wrote no extract")?;
    let mut child_of: HashMap<String, u32> = HashMap::new();
    let mut truth = csv::Reader::from_path(&output.ground_truth)?;
    let dataset = Mapping::load(mapping_path)?.dataset;
    for row in truth.records() {
        let row = row?;
        if row.get(2) == Some(dataset.as_str()) {
            child_of.insert(row[3].to_owned(), row[0].parse()?);
        }
    }
    let mapping = Mapping::load(mapping_path)?;
    let mut source = CsvSource::open(extract, &mapping, mapping_path, today)?;
    let mut people = Vec::new();
    while let Some(row) = source.next_row() {
        let RowOutcome::Valid { row, .. } = row?.outcome else {
            continue;
        };
        let Some(child) = child_of.remove(&row.local_id) else {
            continue;
        };
        let identity = row.linkage_identity();
        people.push(Person {
            child,
            clear: Clear::of(&identity, clear),
            identity,
        });
    }
    Ok(people)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness's attacks must work, or a low figure would mean nothing:
    /// against version 5's encodings, with the register holding every
    /// encoded person, the date-of-birth attack recovers most dates of
    /// birth, and what all the attacks recover with the clear values
    /// re-identifies most records, with high precision.
    #[test]
    fn the_attacks_re_identify_records_the_encodings_do_not_protect() {
        let people = synthetic_people(3_200, 3, Coarsening::AsStored).unwrap();
        let params = LinkageParams::canonical_version(5);
        let case = Case::draw(&people, 1_500, 100, 3, &params).unwrap();
        let dates = dates::attack(&case);
        let (_, right) = case.accuracy(&dates[0]);
        assert!(
            right > 1_500 * 8 / 10,
            "dates of birth recovered: {right} of 1500"
        );
        let outcomes: HashMap<&str, Outcome> =
            case.run_all().into_iter().map(|(a, o, _)| (a, o)).collect();
        let all = outcomes["all"];
        assert!(all.correct > 1_500 / 2, "{outcomes:?}");
        assert!(all.precision() > 0.9, "{outcomes:?}");
        assert!(all.correct > outcomes["clear"].correct, "{outcomes:?}");
    }

    /// Pattern mining finds each frequent letter pair's bits and reads names
    /// back from them, where a stratum holds enough records: here the
    /// names unsalted, so the whole population is one stratum.
    #[test]
    fn pattern_mining_reads_names_from_the_bits_letter_pairs_set() {
        let people = synthetic_people(3_200, 3, Coarsening::AsStored).unwrap();
        let mut params = LinkageParams::canonical_version(5);
        for field in &mut params.fields {
            if field.field.ends_with("_name") {
                field.salt = None;
            }
        }
        let case = Case::draw(&people, 1_500, 100, 3, &params).unwrap();
        let recovered = pattern::attack(&case);
        let rightly = |field: &str| {
            let r = recovered
                .iter()
                .find(|r| r.what == What::Field(field.to_owned()))
                .unwrap();
            case.accuracy(r)
        };
        // With fresh keys, 87 to 246 family names were read rightly in
        // trials, at 46% to 81% precision; the seed fixes the key here.
        let (given, right) = rightly("family_name");
        assert!(right * 25 > 1_500, "{right} family names of 1500");
        assert!(right * 2 > given, "{right} right of {given}");
    }

    /// Versions 6 and 7, with the birth year and postcode area in clear:
    /// every attack together re-identifies a tenth of what it does on
    /// version 5, and few records at all. (In a population this small the
    /// clear values make strata of a few people, whose blocking keys'
    /// counts still single some out: 3.8% of 3,000 records, 0.5% of 20,000
    /// and 0.3% of 200,000, `docs/linkage-privacy.md`.)
    #[test]
    fn hardened_versions_with_coarsened_clear_values_resist_every_attack() {
        let people = synthetic_people(6_400, 5, Coarsening::BirthYearAndPostcodeArea).unwrap();
        let re_identified = |version| {
            let params = LinkageParams::canonical_version(version);
            let case = Case::draw(&people, 3_000, 100, 5, &params).unwrap();
            let outcomes: HashMap<&str, Outcome> =
                case.run_all().into_iter().map(|(a, o, _)| (a, o)).collect();
            (outcomes["all"].correct, outcomes)
        };
        let (five, _) = re_identified(5);
        assert!(five > 3_000 / 3, "version 5: {five}");
        for version in [6, 7] {
            let (hardened, outcomes) = re_identified(version);
            println!(
                "of 3000 records, version 5: {five} re-identified; version {version}: {hardened}"
            );
            assert!(
                hardened * 10 < five && hardened * 100 < 3_000 * 5,
                "version {version}: {outcomes:#?}"
            );
        }
    }

    /// Where the clear values do not give a field's salt, the attacker's
    /// strata are all the clear values, and each register value is known
    /// with its own salt.
    #[test]
    fn a_salt_the_clear_values_hide_pools_its_strata_by_the_clear_values() {
        let identity = Identity::new()
            .with("date_of_birth", Some("2015-05-03"))
            .with("postcode", Some("LS6 2AB"))
            .with("sex", Some("female"));
        let whole_date = KeyPart {
            field: "date_of_birth".into(),
            take: Take::Whole,
        };
        let clear = Clear::of(&identity, Coarsening::BirthYearAndPostcodeArea);
        assert_eq!(clear.salt(Some(&whole_date)), None);
        assert_eq!(clear.stratum(Some(&whole_date)), "~female~2015~LS");
        let year = KeyPart {
            field: "date_of_birth".into(),
            take: Take::Prefix(4),
        };
        assert_eq!(clear.stratum(Some(&year)), "2015");
        let salted = format!("AVA{SALT_SEPARATOR}2015-05-03\u{1f}");
        assert_eq!(
            (plain(&salted), hidden_salt(&salted)),
            ("AVA", "2015-05-03\u{1f}")
        );
        assert_eq!((plain("AVA"), hidden_salt("AVA")), ("AVA", ""));
    }

    /// What the attacker reads from coarsened clear values: a birth-year
    /// salt from any of them, a district salt only while the district is
    /// kept, and which months a record's clear birth value allows.
    #[test]
    fn coarsened_clear_values_give_the_attacker_only_what_they_keep() {
        let identity = Identity::new()
            .with("date_of_birth", Some("2015-05-03"))
            .with("postcode", Some("LS6 2AB"))
            .with("sex", Some("female"));
        let year = KeyPart {
            field: "date_of_birth".into(),
            take: Take::Prefix(4),
        };
        let month = KeyPart {
            field: "date_of_birth".into(),
            take: Take::Prefix(7),
        };
        let district = KeyPart {
            field: "postcode".into(),
            take: Take::FirstWord,
        };
        let stored = Clear::of(&identity, Coarsening::AsStored);
        assert_eq!(stored.salt(Some(&month)).as_deref(), Some("2015-05"));
        assert_eq!(stored.salt(Some(&district)).as_deref(), Some("LS6"));
        assert!(stored.fits_month("05") && !stored.fits_month("04"));

        let quarter = Clear::of(&identity, Coarsening::BirthQuarter);
        assert_eq!(quarter.birth.as_deref(), Some("2015-Q2"));
        assert_eq!(quarter.salt(Some(&year)).as_deref(), Some("2015"));
        assert_eq!(quarter.salt(Some(&month)), None);
        assert!(quarter.fits_month("04") && quarter.fits_month("06") && !quarter.fits_month("07"));

        let coarsest = Clear::of(&identity, Coarsening::BirthYearAndPostcodeArea);
        assert_eq!(coarsest.place.as_deref(), Some("LS"));
        assert_eq!(coarsest.salt(Some(&year)).as_deref(), Some("2015"));
        assert_eq!(coarsest.salt(Some(&district)), None);
        assert!(coarsest.fits_month("12"));

        let other = Clear::of(
            &Identity::new().with("date_of_birth", Some("2016-07-03")),
            Coarsening::BirthQuarter,
        );
        assert!(!quarter.may_share_day(&other), "Q2 and Q3 share no day");
        let other = Clear::of(
            &Identity::new().with("date_of_birth", Some("2016-07-03")),
            Coarsening::BirthYear,
        );
        let year_only = Clear::of(&identity, Coarsening::BirthYear);
        assert!(year_only.may_share_day(&other));
    }
}
