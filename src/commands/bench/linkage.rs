//! `joinery bench linkage`: accuracy and speed of fuzzy linkage on extracts
//! with a known truth. Each extract is read through its agent mapping and
//! encoded as the agent encodes (keyed Bloom filters and blocking keys, NHS
//! numbers pseudonymised); the encodings are linked as the gateway links
//! them; the predicted pairs are scored against the truth.
//!
//! `--data DIR` holds `mappings/NAME.yaml` with `extracts/NAME.csv` (the
//! layout `joinery synth` writes). `--truth FILE` is a CSV with columns
//! `dataset`, `local_id` and `child_id` (records of one child share it), and
//! optionally `household` (children of one household share it: the bench
//! then counts the wrong links that join two of them, such as twins).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use joinery_agent::mapping::Mapping;
use joinery_agent::row::RowOutcome;
use joinery_agent::source::Source;
use joinery_agent::source::csv::CsvSource;
use joinery_crypto::keys::SecretKey;
use joinery_crypto::pseudonym::Pseudonymiser;
use joinery_linkage::blocking::{MAX_BLOCK, Together, together};
use joinery_linkage::{Encoder, Entity, LinkageParams};

use super::peak_rss_kib;

#[derive(Debug, clap::Args)]
pub struct LinkageArgs {
    /// Directory with `mappings/NAME.yaml` and `extracts/NAME.csv`.
    #[arg(long)]
    data: PathBuf,
    /// CSV with `dataset`, `local_id` and `child_id` columns (and optionally
    /// `household`).
    #[arg(long)]
    truth: PathBuf,
    /// Linkage parameters (YAML, as in an agreement); default: the canonical ones.
    #[arg(long)]
    params: Option<PathBuf>,
    /// Where to write the predicted pairs (CSV).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Link on names, dates of birth, sex and postcodes only, ignoring NHS numbers.
    #[arg(long)]
    fuzzy_only: bool,
    /// Threads comparing pairs [default: every core].
    #[arg(long)]
    threads: Option<usize>,
    /// Encode under this linkage key (the figures then repeat exactly)
    /// [default: a fresh throwaway key].
    #[arg(long)]
    linkage_key: Option<PathBuf>,
    /// Link only these datasets (comma-separated) [default: every mapping
    /// in `--data`].
    #[arg(long, value_delimiter = ',')]
    datasets: Vec<String>,
}

/// One record to link, and who it is in the extract.
type Key = (String, String);

pub async fn run(args: LinkageArgs) -> anyhow::Result<ExitCode> {
    let params = match &args.params {
        Some(path) => serde_saphyr::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("{}: not linkage parameters", path.display()))?,
        None => LinkageParams::canonical(),
    };
    let key = match &args.linkage_key {
        Some(path) => SecretKey::load(path)?,
        // A throwaway key: the bench measures, it shares nothing.
        None => SecretKey::generate()?,
    };
    let encoder = Encoder::new(&key, &params)?;
    let nhs_key = Pseudonymiser::new(&key, "nhs-number");

    // Agent side: read, validate, encode.
    let started = Instant::now();
    let mut entities: Vec<Entity> = Vec::new();
    // Each record's key and its entity's index.
    let mut seen: HashMap<Key, usize> = HashMap::new();
    // Each entity's date of birth as read (to tell twins).
    let mut births = Vec::new();
    let mut rows = 0u64;
    let mut mappings: Vec<PathBuf> = std::fs::read_dir(args.data.join("mappings"))
        .with_context(|| format!("reading {}/mappings", args.data.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    mappings.sort();
    let today = time::OffsetDateTime::now_utc().date();
    // Each organisation's dataset, by its number.
    let mut datasets_linked: Vec<String> = Vec::new();
    for mapping_path in &mappings {
        let mapping = Mapping::load(mapping_path)?;
        if !args.datasets.is_empty() && !args.datasets.contains(&mapping.dataset) {
            continue;
        }
        let stem = mapping_path.file_stem().unwrap_or_default();
        let extract = args.data.join("extracts").join(stem).with_extension("csv");
        let mut source = CsvSource::open(&extract, &mapping, mapping_path, today)?;
        while let Some(row) = source.next_row() {
            rows += 1;
            let RowOutcome::Valid { row, .. } = row?.outcome else {
                continue;
            };
            let key = (mapping.dataset.clone(), row.local_id.clone());
            if seen.contains_key(&key) {
                continue;
            }
            seen.insert(key, entities.len());
            births.push(row.date_of_birth);
            entities.push(Entity {
                organisation: datasets_linked.len() as u32,
                nhs: row
                    .nhs_number
                    .as_ref()
                    .filter(|_| !args.fuzzy_only)
                    .map(|n| nhs_key.pseudonymise(n.as_bytes())),
                encoding: encoder.encode(&row.linkage_identity()),
            });
        }
        datasets_linked.push(mapping.dataset.clone());
    }
    let organisation = datasets_linked.len();
    let encoding = started.elapsed();
    if !args.datasets.is_empty() && args.datasets.len() != organisation {
        bail!(
            "--datasets: {} named, {} found in {}/mappings",
            args.datasets.len(),
            organisation,
            args.data.display()
        );
    }
    if organisation == 0 {
        bail!("no mappings in {}/mappings", args.data.display());
    }

    // Gateway side: match and cluster.
    let mut keys: Vec<Key> = vec![Default::default(); seen.len()];
    for (key, &index) in &seen {
        keys[index] = key.clone();
    }
    let records = entities.len();
    // Which true pairs blocking never puts side by side, worked out before
    // linking takes the entities (the truth is read again for scoring, so
    // the peak memory while linking is the linking's own).
    let (never_compared, compared_true_pairs) = {
        let truth = read_truth(&args.truth)?;
        let mut by_child: HashMap<&str, Vec<usize>> = HashMap::new();
        for (key, (child, _)) in &truth {
            if let Some(&i) = seen.get(key) {
                by_child.entry(child).or_default().push(i);
            }
        }
        let mut encoded_pairs = Vec::new();
        for members in by_child.values() {
            for (x, &a) in members.iter().enumerate() {
                for &b in &members[x + 1..] {
                    if keys[a].0 != keys[b].0 {
                        encoded_pairs.push((a, b));
                    }
                }
            }
        }
        let found = together(&entities, &params, &encoded_pairs);
        let compared: Vec<(usize, usize)> = encoded_pairs
            .iter()
            .zip(&found)
            .filter(|(_, t)| **t == Together::Compared)
            .map(|(pair, _)| *pair)
            .collect();
        (NeverCompared::of(found), compared)
    };
    let organisations: Vec<u32> = entities.iter().map(|e| e.organisation).collect();
    let has_nhs: Vec<bool> = entities.iter().map(|e| e.nhs.is_some()).collect();

    let started = Instant::now();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let known = vec![None; records];
    let result = joinery_linkage::matcher::link_with(entities, &params, None, &known, threads);
    let linking = started.elapsed();
    let peak_after_linking = peak_rss_kib(std::process::id());

    // Score the predicted pairs against every pair the truth holds between
    // these extracts, also pairs whose rows the agent quarantined.
    let truth = read_truth(&args.truth)?;
    let datasets: BTreeSet<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let pairs = |groups: BTreeMap<&str, Vec<&Key>>| {
        let mut pairs = BTreeSet::new();
        for members in groups.values() {
            for (x, &a) in members.iter().enumerate() {
                for &b in &members[x + 1..] {
                    if a.0 != b.0 {
                        pairs.insert(ordered(a, b));
                    }
                }
            }
        }
        pairs
    };
    let people: Vec<String> = result.people.iter().map(u32::to_string).collect();
    let mut predicted_groups: BTreeMap<&str, Vec<&Key>> = BTreeMap::new();
    for (key, person) in keys.iter().zip(&people) {
        predicted_groups.entry(person).or_default().push(key);
    }
    let mut true_groups: BTreeMap<&str, Vec<&Key>> = BTreeMap::new();
    for (key, (child, _)) in &truth {
        if datasets.contains(key.0.as_str()) {
            true_groups.entry(child).or_default().push(key);
        }
    }
    let predicted = pairs(predicted_groups);
    let true_pairs = pairs(true_groups);
    let hits = predicted.intersection(&true_pairs).count() as f64;
    let household = |k: &Key| truth.get(k).and_then(|(_, h)| h.as_deref());
    let within_households = predicted
        .difference(&true_pairs)
        .filter(|(a, b)| household(a).is_some_and(|h| household(b) == Some(h)))
        .count();
    let (twins_linked, twin_pairs) = twins(&keys, &births, &truth, &predicted);
    let precision = hits / (predicted.len() as f64).max(1.0);
    let recall = hits / (true_pairs.len() as f64).max(1.0);
    let f1 = 2.0 * precision * recall / (precision + recall).max(f64::MIN_POSITIVE);

    if let Some(out) = &args.out {
        let mut writer = csv::Writer::from_path(out)?;
        writer.write_record(["dataset_a", "local_id_a", "dataset_b", "local_id_b"])?;
        for (a, b) in &predicted {
            writer.write_record([&a.0, &a.1, &b.0, &b.1])?;
        }
        writer.flush()?;
    }

    let stats = &result.stats;
    println!(
        "bench linkage: {} rows, {} records from {} extracts ({}; parameters v{})",
        rows,
        records,
        organisation,
        if args.fuzzy_only {
            "fuzzy only"
        } else {
            "exact on NHS numbers, fuzzy elsewhere"
        },
        params.version
    );
    println!(
        "encode (read, validate, encode; one core): {:.2} s = {:.0} records/s",
        encoding.as_secs_f64(),
        records as f64 / encoding.as_secs_f64()
    );
    let per_core =
        stats.comparisons as f64 / (stats.comparing.as_secs_f64().max(1e-9) * stats.threads as f64);
    println!(
        "link: {:.2} s on {} threads; {} candidate pairs ({} blocks over {} split, {} pieces cut into runs); {} pair comparisons in {:.2} s = {:.1} M pairs/s per core; EM {} iterations, prior {:.2e}",
        linking.as_secs_f64(),
        stats.threads,
        stats.candidate_pairs,
        stats.blocks_split,
        MAX_BLOCK,
        stats.pieces_cut_into_runs,
        stats.comparisons,
        stats.comparing.as_secs_f64(),
        per_core / 1e6,
        stats.model.iterations,
        stats.model.prior
    );
    // Each field's weight (log2 m/u) at full agreement and at disagreement.
    let weights: Vec<String> = params
        .fields
        .iter()
        .enumerate()
        .map(|(f, field)| {
            let weight = |l: usize| stats.model.level_weight(f, l as u8);
            format!(
                "{} {:+.1}/{:+.1}",
                field.field,
                weight(0),
                weight(joinery_linkage::score::LEVELS - 1)
            )
        })
        .collect();
    println!("model (agree/disagree weights): {}", weights.join(", "));
    println!(
        "accuracy: predicted pairs {}, true pairs {}, precision {precision:.4}, recall {recall:.4}, F1 {f1:.4}",
        predicted.len(),
        true_pairs.len()
    );
    println!(
        "true pairs blocking never compared: {} sharing no blocking key, {} kept apart in split blocks",
        never_compared.no_key, never_compared.split_apart,
    );
    if truth.values().any(|(_, h)| h.is_some()) {
        println!(
            "wrong links between two children of one household (siblings, twins): {within_households}"
        );
        println!(
            "wrong links between twins (two children of one household born the same day): {twins_linked} of {twin_pairs} pairs of their records ({:.2}%)",
            100.0 * twins_linked as f64 / (twin_pairs as f64).max(1.0)
        );
    }
    let measured = Measured::of(
        &seen,
        &organisations,
        &has_nhs,
        &result.people,
        predicted.difference(&true_pairs),
        &compared_true_pairs,
    );
    print_quality(&result.quality, &measured, &datasets_linked);
    let mib = |k: Option<u64>| k.map_or("?".to_owned(), |k| (k / 1024).to_string());
    println!(
        "peak RSS {} MiB ({} MiB when linking was done, before scoring)",
        mib(peak_rss_kib(std::process::id())),
        mib(peak_after_linking)
    );
    Ok(ExitCode::SUCCESS)
}

/// A pair of records in one order, whichever way round it was found.
fn ordered(a: &Key, b: &Key) -> (Key, Key) {
    if a < b {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    }
}

/// Twins: pairs of records, from different extracts, of two children of one
/// household with the same date of birth as read (`births`, by record
/// index). Returns how many of them `predicted` links, and how many there
/// are.
fn twins(
    keys: &[Key],
    births: &[Option<time::Date>],
    truth: &HashMap<Key, (String, Option<String>)>,
    predicted: &BTreeSet<(Key, Key)>,
) -> (u64, u64) {
    let mut households: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, key) in keys.iter().enumerate() {
        if let Some((_, Some(h))) = truth.get(key) {
            households.entry(h).or_default().push(i);
        }
    }
    let child = |k: &Key| truth.get(k).map(|(c, _)| c);
    let (mut linked, mut pairs) = (0, 0);
    for members in households.values() {
        for (x, &i) in members.iter().enumerate() {
            for &j in &members[x + 1..] {
                let (a, b) = (&keys[i], &keys[j]);
                if a.0 != b.0
                    && child(a) != child(b)
                    && births[i].is_some()
                    && births[i] == births[j]
                {
                    pairs += 1;
                    linked += u64::from(predicted.contains(&ordered(a, b)));
                }
            }
        }
    }
    (linked, pairs)
}

/// Per pair of organisations (smaller first), the wrong links and the true
/// pairs left apart, counted against the truth as the model's estimate
/// counts them: pairs whose records both carry NHS numbers left out (and
/// missed pairs whose people both do), and the missed only among pairs
/// blocking compared.
#[derive(Debug, Default, PartialEq)]
struct Measured {
    wrong: BTreeMap<(u32, u32), u64>,
    missed: BTreeMap<(u32, u32), u64>,
}

impl Measured {
    fn of<'k>(
        seen: &HashMap<Key, usize>,
        organisations: &[u32],
        has_nhs: &[bool],
        people: &[u32],
        wrong_pairs: impl Iterator<Item = &'k (Key, Key)>,
        compared_true_pairs: &[(usize, usize)],
    ) -> Self {
        let pair = |i: usize, j: usize| {
            let (a, b) = (organisations[i], organisations[j]);
            (!(has_nhs[i] && has_nhs[j])).then_some((a.min(b), a.max(b)))
        };
        let mut measured = Self::default();
        for (a, b) in wrong_pairs {
            if let Some(p) = pair(seen[a], seen[b]) {
                *measured.wrong.entry(p).or_default() += 1;
            }
        }
        // People with an NHS number each are kept apart by those.
        let mut person_nhs = vec![false; people.len()];
        for (i, &person) in people.iter().enumerate() {
            person_nhs[person as usize] |= has_nhs[i];
        }
        for &(i, j) in compared_true_pairs {
            let (x, y) = (people[i] as usize, people[j] as usize);
            if x != y
                && !(person_nhs[x] && person_nhs[y])
                && let Some(p) = pair(i, j)
            {
                *measured.missed.entry(p).or_default() += 1;
            }
        }
        measured
    }
}

/// The model's label-free estimate of each organisation pair's wrong and
/// missed links beside the measured figures, and the totals.
fn print_quality(
    quality: &[joinery_linkage::quality::PairQuality],
    measured: &Measured,
    datasets: &[String],
) {
    println!(
        "linkage quality without labels, the model's estimate (measured against the truth); pairs both with NHS numbers left out:"
    );
    let (mut links, mut expected_false, mut expected_missed) = (0, 0.0, 0.0);
    let pairs: BTreeSet<(u32, u32)> = quality
        .iter()
        .map(|q| q.organisations)
        .chain(measured.wrong.keys().copied())
        .chain(measured.missed.keys().copied())
        .collect();
    let line = |name: &str, links, expected_false: f64, wrong, expected_missed: f64, missed| {
        println!(
            "  {name}: {links} fuzzy links, expected wrong {expected_false:.1} (measured {wrong}), expected missed among compared pairs {expected_missed:.1} (measured {missed})"
        )
    };
    for pair in &pairs {
        let q = quality.iter().find(|q| q.organisations == *pair);
        let (l, f, m) = q.map_or((0, 0.0, 0.0), |q| {
            (q.links, q.expected_false, q.expected_missed)
        });
        let name = format!(
            "{} + {}",
            datasets[pair.0 as usize], datasets[pair.1 as usize]
        );
        let wrong = measured.wrong.get(pair).copied().unwrap_or(0);
        let missed = measured.missed.get(pair).copied().unwrap_or(0);
        line(&name, l, f, wrong, m, missed);
        (links, expected_false, expected_missed) =
            (links + l, expected_false + f, expected_missed + m);
    }
    line(
        "all",
        links,
        expected_false,
        measured.wrong.values().sum::<u64>(),
        expected_missed,
        measured.missed.values().sum::<u64>(),
    );
}

/// True pairs the matcher never compared.
#[derive(Debug, PartialEq)]
struct NeverCompared {
    /// Sharing no blocking key.
    no_key: u64,
    /// Sharing keys only of split blocks, whose pieces kept them apart.
    split_apart: u64,
}

impl NeverCompared {
    fn of(pairs: Vec<Together>) -> Self {
        let count = |t: Together| pairs.iter().filter(|&&p| p == t).count() as u64;
        Self {
            no_key: count(Together::NoSharedKey),
            split_apart: count(Together::KeptApartBySplitting),
        }
    }
}

/// (dataset, local id) -> the true person, and their household if given.
fn read_truth(path: &PathBuf) -> anyhow::Result<HashMap<Key, (String, Option<String>)>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let headers = reader.headers()?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("{}: no column {name}", path.display()))
    };
    let (dataset, local_id, child_id) =
        (column("dataset")?, column("local_id")?, column("child_id")?);
    let household = column("household").ok();
    let mut truth = HashMap::new();
    let mut first_seen: HashMap<Key, usize> = HashMap::new();
    for (index, record) in reader.records().enumerate() {
        let line = index + 2;
        let record = record.with_context(|| format!("{}: line {line}", path.display()))?;
        let key = (record[dataset].to_owned(), record[local_id].to_owned());
        // A record's truth given twice would silently keep the last; a blank
        // household would make every such child one household.
        if let Some(first) = first_seen.insert(key.clone(), line) {
            anyhow::bail!(
                "{}: line {line} gives the truth for the record of line {first} again (the same dataset and local_id)",
                path.display()
            );
        }
        let household = match household.map(|h| record[h].trim()) {
            Some("") => anyhow::bail!(
                "{}: line {line} has a blank household: give each child one, or leave the column out",
                path.display()
            ),
            other => other.map(str::to_owned),
        };
        truth.insert(key, (record[child_id].to_owned(), household));
    }
    Ok(truth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truth_given_twice_or_a_blank_household_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("truth.csv");
        let read = |text: &str| {
            std::fs::write(&path, text).unwrap();
            read_truth(&path).map_err(|e| e.to_string())
        };
        let good =
            "dataset,local_id,child_id,household\ncsc,L1,c1,h1\ncamhs,L1,c1,h1\ncsc,L2,c2,h2\n";
        assert_eq!(read(good).unwrap().len(), 3);
        let twice =
            read("dataset,local_id,child_id,household\ncsc,L1,c1,h1\ncsc,L2,c2,h2\ncsc,L1,c9,h9\n")
                .unwrap_err();
        assert!(
            twice.contains("line 4") && twice.contains("line 2"),
            "{twice}"
        );
        let blank =
            read("dataset,local_id,child_id,household\ncsc,L1,c1,h1\ncsc,L2,c2, \n").unwrap_err();
        assert!(
            blank.contains("line 3") && blank.contains("blank household"),
            "{blank}"
        );
        let without = "dataset,local_id,child_id\ncsc,L1,c1\n";
        assert_eq!(
            read(without).unwrap()[&("csc".to_owned(), "L1".to_owned())].1,
            None
        );
    }
}
