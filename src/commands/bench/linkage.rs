//! `joinery-bench linkage`: accuracy and speed of fuzzy linkage on extracts
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

use std::collections::hash_map::Entry;
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
use joinery_linkage::entities::Entities;
use joinery_linkage::matcher::{Earlier, LinkResult, link_entities};
use joinery_linkage::{Encoder, Entity, Identity, LinkageParams};

use super::{count_common, peak_rss_kib};

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
    /// The canonical parameters of this version (an agreement's
    /// `linkage.encoding.version`), in place of --params.
    #[arg(long, conflicts_with = "params")]
    version: Option<u32>,
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
    /// Also time an incremental run: the records but the last N linked under
    /// the fitted model, then the last N as one delivery; the bench fails
    /// unless the people equal those of comparing every pair.
    #[arg(long)]
    incremental: Option<usize>,
}

/// One record: its dataset (by number) and local id.
type Key = (u32, String);

/// Rows read before they are encoded together, on every thread.
const ENCODE_CHUNK: usize = 1 << 14;

pub async fn run(args: LinkageArgs) -> anyhow::Result<ExitCode> {
    let params = super::linkage_params(args.params.as_deref(), args.version)?;
    let key = match &args.linkage_key {
        Some(path) => SecretKey::load(path)?,
        // A throwaway key: the bench measures, it shares nothing.
        None => SecretKey::generate()?,
    };
    let encoder = Encoder::new(&key, &params)?;
    let nhs_key = Pseudonymiser::new(&key, "nhs-number");

    // Agent side: read, validate, encode.
    let started = Instant::now();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let Read {
        entities,
        seen,
        births,
        rows,
        quarantined,
        datasets: datasets_linked,
    } = read_and_encode(&args, &encoder, &nhs_key, threads)?;
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

    // The truth, by record: also of rows the agent quarantined (they count
    // as pairs the linkage missed).
    let records = entities.len();
    let truth = Truth::read(&args.truth, &datasets_linked, &seen)?;
    // Each record's key, by number, only to write the pairs out.
    let mut keys: Vec<Key> = Vec::new();
    if args.out.is_some() {
        keys.resize(records, Default::default());
        for (key, number) in seen {
            keys[number as usize] = key;
        }
    } else {
        drop(seen);
    }
    let true_pairs = truth.pairs();
    // Which true pairs blocking never puts side by side, worked out before
    // linking takes the entities.
    // True pairs whose records the agent sent (both read, so encoded).
    let encoded_pairs: Vec<(usize, usize)> = true_pairs
        .iter()
        .map(|&p| split(p))
        .filter(|&(a, b)| a < records && b < records)
        .collect();
    // A copy for the incremental run, which links them again in two parts.
    let held = args.incremental.map(|_| entities.clone());
    let entities = Entities::numbered(entities, &params);
    let (never_compared, compared_true_pairs) = {
        let found = together(&entities, &params, &encoded_pairs);
        let compared: Vec<(usize, usize)> = encoded_pairs
            .iter()
            .zip(&found)
            .filter(|(_, t)| **t == Together::Compared)
            .map(|(pair, _)| *pair)
            .collect();
        (NeverCompared::of(found), compared)
    };
    let organisations: Vec<u32> = entities.organisations().to_vec();
    let has_nhs: Vec<bool> = entities.nhs().iter().map(Option::is_some).collect();

    // Gateway side: match and cluster.
    let started = Instant::now();
    let known = vec![None; records];
    let result = link_entities(&entities, &params, None, &known, threads, None);
    let linking = started.elapsed();
    let peak_after_linking = peak_rss_kib(std::process::id());
    let incremental = match (args.incremental, held) {
        (Some(n), Some(held)) => Some(incremental(held, n, &params, &result, threads)?),
        _ => None,
    };
    drop(entities);

    // Score the predicted pairs against every true pair between these
    // extracts.
    let predicted = pairs_of_groups(
        result
            .people
            .iter()
            .enumerate()
            .map(|(i, &person)| (person, i as u32, organisations[i])),
    );
    let hits = count_common(&predicted, &true_pairs) as f64;
    let wrong: Vec<(usize, usize)> = predicted
        .iter()
        .filter(|p| true_pairs.binary_search(p).is_err())
        .map(|&p| split(p))
        .collect();
    let within_households = wrong
        .iter()
        .filter(|&&(a, b)| {
            truth
                .household(a)
                .is_some_and(|h| truth.household(b) == Some(h))
        })
        .count();
    let (twins_linked, twin_pairs) = truth.twins(&organisations, &births, &predicted);
    let precision = hits / (predicted.len() as f64).max(1.0);
    let recall = hits / (true_pairs.len() as f64).max(1.0);
    let f1 = 2.0 * precision * recall / (precision + recall).max(f64::MIN_POSITIVE);
    // The same over the pairs whose records the agent sent: what the
    // linkage itself missed, apart from rows the agent quarantined.
    let sent_pairs = encoded_pairs.len() as f64;
    let recall_sent = hits / sent_pairs.max(1.0);
    let f1_sent = 2.0 * precision * recall_sent / (precision + recall_sent).max(f64::MIN_POSITIVE);

    if let Some(out) = &args.out {
        let named = |i: usize| (&datasets_linked[keys[i].0 as usize], &keys[i].1);
        let mut named_pairs: Vec<_> = predicted
            .iter()
            .map(|&p| {
                let (a, b) = split(p);
                let (a, b) = (named(a), named(b));
                if a < b { (a, b) } else { (b, a) }
            })
            .collect();
        named_pairs.sort();
        let mut writer = csv::Writer::from_path(out)?;
        writer.write_record(["dataset_a", "local_id_a", "dataset_b", "local_id_b"])?;
        for (a, b) in named_pairs {
            writer.write_record([a.0, a.1, b.0, b.1])?;
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
        "encode (read and validate on one core, encode on {threads}): {:.2} s = {:.0} records/s",
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
                field.name(),
                weight(0),
                weight(joinery_linkage::score::LEVELS - 1)
            )
        })
        .collect();
    println!("model (agree/disagree weights): {}", weights.join(", "));
    if let Some(run) = incremental {
        println!(
            "incremental: {} new records onto {} linked: {:.2} s ({} candidate pairs), against {:.2} s comparing every pair of those {} under the same model; people identical to comparing every pair",
            run.new,
            records - run.new,
            run.seconds,
            run.candidate_pairs,
            run.base_seconds,
            records - run.new,
        );
    }
    println!(
        "accuracy: predicted pairs {}, true pairs {}, precision {precision:.4}, recall {recall:.4}, F1 {f1:.4}",
        predicted.len(),
        true_pairs.len()
    );
    println!(
        "  of which {} true pairs have a record whose every row the agent quarantined ({quarantined} rows); over the rest: recall {recall_sent:.4}, F1 {f1_sent:.4}",
        true_pairs.len() - sent_pairs as usize,
    );
    println!(
        "true pairs blocking never compared: {} sharing no blocking key, {} kept apart in split blocks",
        never_compared.no_key, never_compared.split_apart,
    );
    if truth.has_households() {
        println!(
            "wrong links between two children of one household (siblings, twins): {within_households}"
        );
        println!(
            "wrong links between twins (two children of one household born the same day): {twins_linked} of {twin_pairs} pairs of their records ({:.2}%)",
            100.0 * twins_linked as f64 / (twin_pairs as f64).max(1.0)
        );
    }
    let measured = Measured::of(
        &organisations,
        &has_nhs,
        &result.people,
        &wrong,
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

/// The records the bench read and encoded.
struct Read {
    entities: Vec<Entity>,
    /// Each record's number, by its dataset (by number) and local id.
    seen: HashMap<Key, u32>,
    /// Each record's date of birth as read (to tell twins).
    births: Vec<Option<time::Date>>,
    /// Rows read, valid or not.
    rows: u64,
    /// Rows the agent would quarantine.
    quarantined: u64,
    /// The datasets read, by number.
    datasets: Vec<String>,
}

/// Rows read but not yet encoded, of one organisation.
struct Chunk {
    organisation: u32,
    identities: Vec<Identity>,
    nhs_numbers: Vec<Option<String>>,
}

impl Chunk {
    fn new(organisation: u32) -> Self {
        Self {
            organisation,
            identities: Vec::new(),
            nhs_numbers: Vec::new(),
        }
    }
}

/// Reads every extract through its mapping, as the agent does, and encodes
/// its valid rows (a record given twice counts once) on `threads` threads
/// while the next rows are read.
fn read_and_encode(
    args: &LinkageArgs,
    encoder: &Encoder,
    nhs_key: &Pseudonymiser,
    threads: usize,
) -> anyhow::Result<Read> {
    let mut mappings: Vec<PathBuf> = std::fs::read_dir(args.data.join("mappings"))
        .with_context(|| format!("reading {}/mappings", args.data.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    mappings.sort();
    let today = time::OffsetDateTime::now_utc().date();
    let mut read = Read {
        entities: Vec::new(),
        seen: HashMap::new(),
        births: Vec::new(),
        rows: 0,
        quarantined: 0,
        datasets: Vec::new(),
    };
    std::thread::scope(|scope| {
        let (send, receive) = std::sync::mpsc::sync_channel::<Chunk>(2);
        let encoding = scope.spawn(move || {
            let mut entities = Vec::new();
            for chunk in receive {
                let encodings = encoder.encode_many(&chunk.identities, threads);
                entities.extend(encodings.into_iter().zip(chunk.nhs_numbers).map(
                    |(encoding, nhs)| Entity {
                        organisation: chunk.organisation,
                        nhs: nhs.map(|n| nhs_key.pseudonymise(n.as_bytes())),
                        encoding,
                    },
                ));
            }
            entities
        });
        for mapping_path in &mappings {
            let mapping = Mapping::load(mapping_path)?;
            if !args.datasets.is_empty() && !args.datasets.contains(&mapping.dataset) {
                continue;
            }
            let organisation = read.datasets.len() as u32;
            let stem = mapping_path.file_stem().unwrap_or_default();
            let extract = args.data.join("extracts").join(stem).with_extension("csv");
            let mut source = CsvSource::open(&extract, &mapping, mapping_path, today)?;
            let mut chunk = Chunk::new(organisation);
            while let Some(row) = source.next_row() {
                read.rows += 1;
                let RowOutcome::Valid { row, .. } = row?.outcome else {
                    read.quarantined += 1;
                    continue;
                };
                let identity = row.linkage_identity();
                let number = read.seen.len() as u32;
                match read.seen.entry((organisation, row.local_id)) {
                    Entry::Occupied(_) => continue,
                    Entry::Vacant(new) => new.insert(number),
                };
                read.births.push(row.date_of_birth);
                chunk.identities.push(identity);
                chunk
                    .nhs_numbers
                    .push(row.nhs_number.filter(|_| !args.fuzzy_only));
                if chunk.identities.len() == ENCODE_CHUNK {
                    send.send(std::mem::replace(&mut chunk, Chunk::new(organisation)))?;
                }
            }
            send.send(chunk)?;
            read.datasets.push(mapping.dataset.clone());
        }
        drop(send);
        read.entities = encoding
            .join()
            .map_err(|_| anyhow::anyhow!("the encoding thread panicked"))?;
        Ok(read)
    })
}

/// Pairs of records within each group whose records come from different
/// organisations, given as (group, record, organisation), each pair as
/// [`joined`] gives it, sorted.
fn pairs_of_groups(members: impl Iterator<Item = (u32, u32, u32)>) -> Vec<u64> {
    let mut members: Vec<(u32, u32, u32)> = members.collect();
    members.sort_unstable();
    let mut pairs = Vec::new();
    for group in members.chunk_by(|a, b| a.0 == b.0) {
        for (x, &(_, a, oa)) in group.iter().enumerate() {
            for &(_, b, ob) in &group[x + 1..] {
                if oa != ob {
                    pairs.push(joined(a, b));
                }
            }
        }
    }
    pairs.sort_unstable();
    pairs
}

/// A pair of record numbers as one sortable number, the smaller first.
fn joined(a: u32, b: u32) -> u64 {
    (u64::from(a.min(b)) << 32) | u64::from(a.max(b))
}

/// The two record numbers of a [`joined`] pair.
fn split(pair: u64) -> (usize, usize) {
    ((pair >> 32) as usize, (pair & 0xffff_ffff) as usize)
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
    fn of(
        organisations: &[u32],
        has_nhs: &[bool],
        people: &[u32],
        wrong_pairs: &[(usize, usize)],
        compared_true_pairs: &[(usize, usize)],
    ) -> Self {
        let pair = |i: usize, j: usize| {
            let (a, b) = (organisations[i], organisations[j]);
            (!(has_nhs[i] && has_nhs[j])).then_some((a.min(b), a.max(b)))
        };
        let mut measured = Self::default();
        for &(a, b) in wrong_pairs {
            if let Some(p) = pair(a, b) {
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

/// The truth about the linked datasets' records: each one's child and
/// household, by number. Records are numbered as the bench read them; a
/// truth row of a record the agent quarantined gets a number past those.
#[derive(Debug)]
struct Truth {
    /// (child, record, organisation) of every truth row of a linked dataset.
    rows: Vec<(u32, u32, u32)>,
    /// Household of each record the bench read (`None`: not given).
    households: Vec<Option<u32>>,
    /// Child of each record the bench read (`None`: not in the truth).
    children: Vec<Option<u32>>,
}

impl Truth {
    /// Reads `path`, a CSV with `dataset`, `local_id`, `child_id` and
    /// optionally `household`; `seen` numbers the records read. Rows of
    /// datasets not linked are checked for a blank household only.
    fn read(path: &PathBuf, datasets: &[String], seen: &HashMap<Key, u32>) -> anyhow::Result<Self> {
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
        let mut truth = Self {
            rows: Vec::new(),
            households: vec![None; seen.len()],
            children: vec![None; seen.len()],
        };
        let (mut children, mut households) = (HashMap::new(), HashMap::new());
        // The line that gave each record's truth: by number for the records
        // read, by key for those the agent quarantined.
        let mut line_of_read = vec![0; seen.len()];
        let mut line_of_quarantined: HashMap<Key, usize> = HashMap::new();
        let mut unread = seen.len() as u32;
        for (index, record) in reader.records().enumerate() {
            let line = index + 2;
            let record = record.with_context(|| format!("{}: line {line}", path.display()))?;
            // A blank household would make every such child one household;
            // a record's truth given twice would silently keep the last.
            let household = match household.map(|h| record[h].trim()) {
                Some("") => anyhow::bail!(
                    "{}: line {line} has a blank household: give each child one, or leave the column out",
                    path.display()
                ),
                Some(h) => {
                    let next = households.len() as u32;
                    Some(*households.entry(h.to_owned()).or_insert(next))
                }
                None => None,
            };
            let Some(organisation) = datasets.iter().position(|d| *d == record[dataset]) else {
                continue;
            };
            let key = (organisation as u32, record[local_id].to_owned());
            let number = seen.get(&key).copied();
            let first = match number {
                Some(n) => Some(std::mem::replace(&mut line_of_read[n as usize], line))
                    .filter(|&first| first != 0),
                None => line_of_quarantined.insert(key, line),
            };
            if let Some(first) = first {
                anyhow::bail!(
                    "{}: line {line} gives the truth for the record of line {first} again (the same dataset and local_id)",
                    path.display()
                );
            }
            let next = children.len() as u32;
            let child = *children.entry(record[child_id].to_owned()).or_insert(next);
            let number = match number {
                Some(number) => {
                    truth.children[number as usize] = Some(child);
                    truth.households[number as usize] = household;
                    number
                }
                None => {
                    unread += 1;
                    unread - 1
                }
            };
            truth.rows.push((child, number, organisation as u32));
        }
        Ok(truth)
    }

    /// Every true pair of records from different organisations, sorted.
    fn pairs(&self) -> Vec<u64> {
        pairs_of_groups(self.rows.iter().copied())
    }

    fn household(&self, record: usize) -> Option<u32> {
        self.households.get(record).copied().flatten()
    }

    fn has_households(&self) -> bool {
        self.households.iter().any(Option::is_some)
    }

    /// Twins: pairs of records, from different extracts, of two children of
    /// one household with the same date of birth as read (`births`, by
    /// record). Returns how many of them `predicted` (sorted) links, and
    /// how many there are.
    fn twins(
        &self,
        organisations: &[u32],
        births: &[Option<time::Date>],
        predicted: &[u64],
    ) -> (u64, u64) {
        let in_households = self
            .households
            .iter()
            .enumerate()
            .filter_map(|(i, h)| Some((h.as_ref().copied()?, i as u32, organisations[i])));
        let (mut linked, mut pairs) = (0, 0);
        for pair in pairs_of_groups(in_households) {
            let (i, j) = split(pair);
            if self.children[i] != self.children[j] && births[i].is_some() && births[i] == births[j]
            {
                pairs += 1;
                linked += u64::from(predicted.binary_search(&pair).is_ok());
            }
        }
        (linked, pairs)
    }
}

/// What the incremental run measured.
struct Incremental {
    new: usize,
    seconds: f64,
    candidate_pairs: u64,
    /// Linking the records before the delivery, comparing every pair.
    base_seconds: f64,
}

/// Links all but the last `new` of `all` under `full`'s model, then the
/// last `new` incrementally, and checks the people equal `full`'s.
fn incremental(
    all: Vec<Entity>,
    new: usize,
    params: &LinkageParams,
    full: &LinkResult,
    threads: usize,
) -> anyhow::Result<Incremental> {
    let records = all.len();
    let before = records.saturating_sub(new);
    let model = &full.stats.model;
    let mut entities = Entities::new(params);
    let mut all = all.into_iter();
    for (i, e) in all.by_ref().take(before).enumerate() {
        entities.push(e, i as u64);
    }
    let started = Instant::now();
    let base = link_entities(
        &entities,
        params,
        Some(model),
        &vec![None; before],
        threads,
        None,
    );
    let base_seconds = started.elapsed().as_secs_f64();
    for (i, e) in all.enumerate() {
        entities.push(e, (before + i) as u64);
    }
    let fresh: Vec<bool> = (0..records).map(|i| i >= before).collect();
    let started = Instant::now();
    let run = link_entities(
        &entities,
        params,
        Some(model),
        &vec![None; records],
        threads,
        Some(Earlier {
            fresh: &fresh,
            links: &base.links,
        }),
    );
    let seconds = started.elapsed().as_secs_f64();
    if run.people != full.people {
        let differ = run
            .people
            .iter()
            .zip(&full.people)
            .filter(|(a, b)| a != b)
            .count();
        bail!(
            "the incremental run put {differ} records with other people than comparing every pair"
        );
    }
    Ok(Incremental {
        new: records - before,
        seconds,
        candidate_pairs: run.stats.candidate_pairs,
        base_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truth_given_twice_or_a_blank_household_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("truth.csv");
        let datasets = ["csc".to_owned(), "camhs".to_owned()];
        // The bench read csc L1 and camhs L1; csc L2 was quarantined.
        let seen = HashMap::from([((0, "L1".to_owned()), 0), ((1, "L1".to_owned()), 1)]);
        let read = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Truth::read(&path, &datasets, &seen).map_err(|e| e.to_string())
        };
        let good = read(
            "dataset,local_id,child_id,household\ncsc,L1,c1,h1\ncamhs,L1,c1,h1\ncsc,L2,c2,h1\nsalt,S1,c2,h1\n",
        )
        .unwrap();
        // The salt row is of a dataset not linked; csc L2 gets a number
        // past the records read.
        assert_eq!(good.rows, vec![(0, 0, 0), (0, 1, 1), (1, 2, 0)]);
        assert_eq!(good.pairs(), vec![joined(0, 1)]);
        assert_eq!((good.household(0), good.household(1)), (Some(0), Some(0)));
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
        let blank_elsewhere =
            read("dataset,local_id,child_id,household\ncsc,L1,c1,h1\nsalt,S1,c1,\n").unwrap_err();
        assert!(blank_elsewhere.contains("line 3"), "{blank_elsewhere}");
        let without = read("dataset,local_id,child_id\ncsc,L1,c1\n").unwrap();
        assert!(!without.has_households());
    }

    #[test]
    fn pairs_cross_organisations_and_are_counted_once() {
        // (group, record, organisation): group 7 has two records of
        // organisation 0 and one of organisation 1.
        let pairs =
            pairs_of_groups([(7, 5, 0), (7, 2, 0), (7, 9, 1), (3, 1, 0), (3, 4, 2)].into_iter());
        assert_eq!(pairs, vec![joined(1, 4), joined(2, 9), joined(5, 9)]);
        assert_eq!(split(joined(9, 5)), (5, 9));
        assert_eq!(
            count_common(&pairs, &[joined(2, 9), joined(3, 4), joined(5, 9)]),
            2
        );
    }
}
