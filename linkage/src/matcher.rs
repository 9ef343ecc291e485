//! Fuzzy matching over encodings (gateway side): candidate pairs from shared
//! blocking keys, per-field Dice similarity, a Fellegi–Sunter model fitted to
//! the data, and clustering into people.
//!
//! Only pairs from different organisations are compared (an organisation's
//! own records are distinct local ids). Every rule's blocks are walked; a
//! pair found by an earlier rule too is a candidate only once, but still
//! counts towards the later rule's model. Candidates are walked twice, once
//! to count agreement patterns for the model and once to keep the links, so
//! memory holds the encodings and the links, never the candidate pairs.
//!
//! Speed: a block's members are first copied side by side (its pairs then
//! touch only that small buffer), Dice levels are decided in integers, the
//! comparison loop is compiled for the CPU's popcount instruction where it
//! has one, and blocks are shared out between threads.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::bloom;
use crate::cluster::{Link, cluster};
use crate::encode::{BLOCK_KEY_LEN, Encoding, Pseudonym};
use crate::params::LinkageParams;
use crate::score::{MISSING, Model, Pattern, RuleCandidates, level};

/// A block larger than this is left out (reported), as it would hold
/// mostly non-matches and cost the square of its size.
pub const MAX_BLOCK: usize = 5_000;
/// Random pairs drawn to measure u.
const RANDOM_PAIRS: usize = 200_000;

/// One record to link: one organisation's one local id.
#[derive(Debug, Clone)]
pub struct Entity {
    pub organisation: u32,
    pub nhs: Option<Pseudonym>,
    pub encoding: Encoding,
}

#[derive(Debug, Clone)]
pub struct LinkResult {
    /// Each entity's person: the smallest entity index of its group.
    pub people: Vec<u32>,
    /// The fuzzy links that passed the threshold (some may have been refused
    /// by clustering).
    pub links: Vec<Link>,
    /// Records sharing an NHS pseudonym that the encodings say are
    /// different people.
    pub nhs_conflicts: Vec<Conflict>,
    pub stats: LinkStats,
}

#[derive(Debug, Clone)]
pub struct LinkStats {
    /// Distinct candidate pairs.
    pub candidate_pairs: u64,
    /// Pairs compared in both passes (a pair in several rules' blocks is
    /// compared in each in the first).
    pub comparisons: u64,
    pub blocks_skipped: u64,
    pub model: Model,
    /// Wall time spent comparing (both passes), and the threads that did it.
    pub comparing: Duration,
    pub threads: usize,
}

type Block = [u8; BLOCK_KEY_LEN];

/// Every entity's filters in one flat array, an entity's fields side by
/// side, with their popcounts.
struct Filters {
    /// Start of each field within an entity's words, and the end.
    offsets: Vec<usize>,
    stride: usize,
    data: Vec<u64>,
    ones: Vec<u32>,
}

impl Filters {
    /// Takes the entities' filters, letting each entity go once copied.
    fn new(entities: Vec<Entity>, params: &LinkageParams) -> Self {
        let mut offsets = vec![0];
        for f in &params.fields {
            offsets.push(offsets[offsets.len() - 1] + f.bits as usize / 64);
        }
        let fields = params.fields.len();
        let stride = offsets[fields];
        let mut data = Vec::with_capacity(stride * entities.len());
        let mut ones = Vec::with_capacity(fields * entities.len());
        for e in entities.into_iter() {
            for f in 0..fields {
                let w = offsets[f + 1] - offsets[f];
                match e.encoding.filters.get(f) {
                    // A filter of the wrong length is treated as missing.
                    Some(filter) if filter.len() == w => {
                        data.extend_from_slice(filter);
                        ones.push(bloom::ones(filter));
                    }
                    _ => {
                        data.extend(std::iter::repeat_n(0, w));
                        ones.push(0);
                    }
                }
            }
        }
        Self {
            offsets,
            stride,
            data,
            ones,
        }
    }

    fn fields(&self) -> usize {
        self.offsets.len() - 1
    }

    fn pattern(&self, i: usize, j: usize) -> Pattern {
        let (s, f) = (self.stride, self.fields());
        pattern_of(
            &self.offsets,
            &self.data[i * s..(i + 1) * s],
            &self.data[j * s..(j + 1) * s],
            &self.ones[i * f..(i + 1) * f],
            &self.ones[j * f..(j + 1) * f],
        )
    }
}

/// The agreement pattern of two entities' rows.
#[inline(always)]
fn pattern_of(offsets: &[usize], a: &[u64], b: &[u64], ones_a: &[u32], ones_b: &[u32]) -> Pattern {
    let mut pattern = 0;
    for f in 0..ones_a.len() {
        let (oa, ob) = (ones_a[f], ones_b[f]);
        let l = if oa == 0 || ob == 0 {
            MISSING
        } else {
            let (start, end) = (offsets[f], offsets[f + 1]);
            level(bloom::common(&a[start..end], &b[start..end]), oa + ob)
        };
        pattern |= u64::from(l) << (3 * f);
    }
    pattern
}

/// Patterns are small integers: hash them with one multiplication.
#[derive(Default)]
struct PatternHasher(u64);

impl std::hash::Hasher for PatternHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type PatternMap<V> = HashMap<Pattern, V, std::hash::BuildHasherDefault<PatternHasher>>;

/// Up to this many fields, a table indexed by pattern (8^fields entries)
/// replaces a hash map in the inner loop.
const DENSE_FIELDS: usize = 6;

/// Pattern counts: a table for few fields, a hash map for more.
enum Counts {
    Dense(Vec<u64>),
    Sparse(PatternMap<u64>),
}

impl Counts {
    fn new(fields: usize) -> Self {
        if fields <= DENSE_FIELDS {
            Self::Dense(vec![0; 1 << (3 * fields)])
        } else {
            Self::Sparse(PatternMap::default())
        }
    }

    #[inline(always)]
    fn add(&mut self, pattern: Pattern, n: u64) {
        match self {
            Self::Dense(table) => table[pattern as usize] += n,
            Self::Sparse(map) => *map.entry(pattern).or_insert(0) += n,
        }
    }

    /// The counted patterns, in pattern order (so sums repeat exactly).
    fn sorted(&self) -> Vec<(Pattern, u64)> {
        let mut pairs: Vec<(Pattern, u64)> = match self {
            Self::Dense(table) => table
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(p, n)| (p as Pattern, *n))
                .collect(),
            Self::Sparse(map) => map.iter().map(|(p, n)| (*p, *n)).collect(),
        };
        pairs.sort_unstable();
        pairs
    }

    fn total(&self) -> u64 {
        match self {
            Self::Dense(table) => table.iter().sum(),
            Self::Sparse(map) => map.values().sum(),
        }
    }
}

/// Each pattern's (probability, weight), looked up as counts are kept.
enum Verdicts {
    Dense(Vec<(f64, f64)>),
    Sparse(PatternMap<(f64, f64)>),
}

impl Verdicts {
    fn new(fields: usize, model: &Model, patterns: impl Iterator<Item = Pattern>) -> Self {
        let verdict = |p| (model.probability(p), model.weight(p));
        if fields <= DENSE_FIELDS {
            let mut table = vec![(0.0, 0.0); 1 << (3 * fields)];
            for p in patterns {
                table[p as usize] = verdict(p);
            }
            Self::Dense(table)
        } else {
            Self::Sparse(patterns.map(|p| (p, verdict(p))).collect())
        }
    }

    #[inline(always)]
    fn get(&self, pattern: Pattern) -> (f64, f64) {
        match self {
            Self::Dense(table) => table[pattern as usize],
            Self::Sparse(map) => map.get(&pattern).copied().unwrap_or((0.0, 0.0)),
        }
    }
}

/// Every rule's blocks (members in entity order), each keyed by its rule.
struct Blocks {
    /// (rule, members), largest first, so threads finish together.
    blocks: Vec<(usize, Vec<u32>)>,
    /// Each rule's key per entity (for "an earlier rule found it").
    keys: Vec<Vec<Option<Block>>>,
    skipped: u64,
}

impl Blocks {
    fn new(entities: &[Entity], rules: usize) -> Self {
        let keys: Vec<Vec<Option<Block>>> = (0..rules)
            .map(|rule| {
                entities
                    .iter()
                    .map(|e| e.encoding.blocks.get(rule).copied().flatten())
                    .collect()
            })
            .collect();
        let mut blocks = Vec::new();
        let mut skipped = 0;
        for (rule, rule_keys) in keys.iter().enumerate() {
            let mut members: HashMap<Block, Vec<u32>> = HashMap::new();
            for (i, key) in rule_keys.iter().enumerate() {
                if let Some(key) = key {
                    members.entry(*key).or_default().push(i as u32);
                }
            }
            for m in members.into_values() {
                if m.len() > MAX_BLOCK {
                    skipped += 1;
                } else if m.len() > 1 {
                    blocks.push((rule, m));
                }
            }
        }
        blocks.sort_unstable_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.cmp(b)));
        Self {
            blocks,
            keys,
            skipped,
        }
    }
}

/// A block's members copied side by side: filters, popcounts,
/// organisations and the keys of earlier rules.
#[derive(Default)]
struct Scratch {
    data: Vec<u64>,
    ones: Vec<u32>,
    organisations: Vec<u32>,
    earlier: Vec<Option<Block>>,
}

/// Calls `each(rule, i, j, first, pattern)` for every cross-organisation
/// pair of one block; `first` is false when an earlier rule also pairs them
/// (and with `only_first` such pairs are passed over).
#[inline(always)]
fn walk_block(
    filters: &Filters,
    organisations: &[u32],
    blocks: &Blocks,
    (rule, members): (usize, &[u32]),
    only_first: bool,
    scratch: &mut Scratch,
    each: &mut impl FnMut(usize, usize, usize, bool, Pattern),
) {
    let (stride, fields) = (filters.stride, filters.fields());
    scratch.data.clear();
    scratch.ones.clear();
    scratch.organisations.clear();
    scratch.earlier.clear();
    for &m in members {
        let m = m as usize;
        scratch
            .data
            .extend_from_slice(&filters.data[m * stride..(m + 1) * stride]);
        scratch
            .ones
            .extend_from_slice(&filters.ones[m * fields..(m + 1) * fields]);
        scratch.organisations.push(organisations[m]);
        scratch
            .earlier
            .extend(blocks.keys[..rule].iter().map(|k| k[m]));
    }
    for (x, &i) in members.iter().enumerate() {
        let i = i as usize;
        let row_a = &scratch.data[x * stride..(x + 1) * stride];
        let ones_a = &scratch.ones[x * fields..(x + 1) * fields];
        let keys_a = &scratch.earlier[x * rule..(x + 1) * rule];
        let organisation_a = scratch.organisations[x];
        for (y, &j) in members.iter().enumerate().skip(x + 1) {
            if scratch.organisations[y] == organisation_a {
                continue;
            }
            let keys_b = &scratch.earlier[y * rule..(y + 1) * rule];
            let first = !keys_a
                .iter()
                .zip(keys_b)
                .any(|(a, b)| a.is_some() && a == b);
            if only_first && !first {
                continue;
            }
            let j = j as usize;
            let pattern = pattern_of(
                &filters.offsets,
                row_a,
                &scratch.data[y * stride..(y + 1) * stride],
                ones_a,
                &scratch.ones[y * fields..(y + 1) * fields],
            );
            each(rule, i, j, first, pattern);
        }
    }
}

/// [`walk_block`] over a share of the blocks, compiled for popcount.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
fn walk_share_popcnt(
    filters: &Filters,
    organisations: &[u32],
    blocks: &Blocks,
    share: &[usize],
    only_first: bool,
    each: &mut impl FnMut(usize, usize, usize, bool, Pattern),
) {
    walk_share_portable(filters, organisations, blocks, share, only_first, each);
}

#[inline(always)]
fn walk_share_portable(
    filters: &Filters,
    organisations: &[u32],
    blocks: &Blocks,
    share: &[usize],
    only_first: bool,
    each: &mut impl FnMut(usize, usize, usize, bool, Pattern),
) {
    let mut scratch = Scratch::default();
    for &b in share {
        let (rule, members) = &blocks.blocks[b];
        walk_block(
            filters,
            organisations,
            blocks,
            (*rule, members),
            only_first,
            &mut scratch,
            each,
        );
    }
}

fn walk_share(
    filters: &Filters,
    organisations: &[u32],
    blocks: &Blocks,
    share: &[usize],
    only_first: bool,
    each: &mut impl FnMut(usize, usize, usize, bool, Pattern),
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("popcnt") {
            // SAFETY: the CPU has just been seen to support popcnt.
            return unsafe {
                walk_share_popcnt(filters, organisations, blocks, share, only_first, each)
            };
        }
    }
    walk_share_portable(filters, organisations, blocks, share, only_first, each);
}

/// Runs `work` on `threads` threads, each over its share of the blocks
/// (dealt round-robin, largest first), and returns their results.
fn in_parallel<T: Send>(
    blocks: &Blocks,
    threads: usize,
    work: impl Fn(&[usize]) -> T + Sync,
) -> Vec<T> {
    let threads = threads.max(1);
    let shares: Vec<Vec<usize>> = (0..threads)
        .map(|t| (t..blocks.blocks.len()).step_by(threads).collect())
        .collect();
    if threads == 1 {
        return vec![work(&shares[0])];
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .iter()
            .map(|share| scope.spawn(|| work(share)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a linkage thread panicked"))
            .collect()
    })
}

/// Pairs of records from different organisations: every pair that could
/// be a link.
fn cross_organisation_pairs(organisations: &[u32]) -> f64 {
    let mut per_organisation: std::collections::BTreeMap<u32, f64> = Default::default();
    for o in organisations {
        *per_organisation.entry(*o).or_default() += 1.0;
    }
    let n = organisations.len() as f64;
    (n * n - per_organisation.values().map(|k| k * k).sum::<f64>()) / 2.0
}

/// The patterns of random cross-organisation pairs (a fixed sequence).
fn random_patterns(organisations: &[u32], filters: &Filters) -> Vec<(Pattern, u64)> {
    let mut random: PatternMap<u64> = PatternMap::default();
    let n = organisations.len();
    if n > 1 {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for _ in 0..RANDOM_PAIRS {
            let (i, j) = (next(), next());
            if organisations[i] != organisations[j] {
                *random.entry(filters.pattern(i, j)).or_insert(0) += 1;
            }
        }
    }
    let mut random: Vec<(Pattern, u64)> = random.into_iter().collect();
    random.sort_unstable();
    random
}

/// Links `entities` into people, fitting the model to them, on every core.
pub fn link(entities: Vec<Entity>, params: &LinkageParams) -> LinkResult {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let known = vec![None; entities.len()];
    link_with(entities, params, None, &known, threads)
}

/// Links `entities` into people with `model` (fitted by EM when `None`) on
/// `threads` threads. `known` numbers entities already known to be one
/// person alike: they stay together (see [`cluster`]). The entities are
/// consumed: their encodings are copied into flat arrays and let go, so
/// memory holds them once.
pub fn link_with(
    entities: Vec<Entity>,
    params: &LinkageParams,
    model: Option<&Model>,
    known: &[Option<u64>],
    threads: usize,
) -> LinkResult {
    let organisations: Vec<u32> = entities.iter().map(|e| e.organisation).collect();
    let nhs: Vec<Option<Pseudonym>> = entities.iter().map(|e| e.nhs).collect();
    let rules = params.blocking.len();
    let blocks = Blocks::new(&entities, rules);
    let filters = Filters::new(entities, params);
    let all_pairs = cross_organisation_pairs(&organisations);
    let random = if model.is_none() {
        random_patterns(&organisations, &filters)
    } else {
        Vec::new()
    };

    // Pass 1: count the patterns of every rule's pairs, and of the distinct
    // candidates by the rule that found them first; fit the model.
    let started = Instant::now();
    let fields = params.fields.len();
    let counted = in_parallel(&blocks, threads, |share| {
        let mut all: Vec<Counts> = (0..rules).map(|_| Counts::new(fields)).collect();
        let mut first_found: Vec<Counts> = (0..rules).map(|_| Counts::new(fields)).collect();
        walk_share(
            &filters,
            &organisations,
            &blocks,
            share,
            false,
            &mut |rule, _, _, first, pattern| {
                all[rule].add(pattern, 1);
                if first {
                    first_found[rule].add(pattern, 1);
                }
            },
        );
        (all, first_found)
    });
    let mut all: Vec<Counts> = (0..rules).map(|_| Counts::new(fields)).collect();
    let mut first_found: Vec<Counts> = (0..rules).map(|_| Counts::new(fields)).collect();
    for (thread_all, thread_first) in counted {
        let merged = all.iter_mut().zip(thread_all);
        for (into, from) in merged.chain(first_found.iter_mut().zip(thread_first)) {
            for (p, n) in from.sorted() {
                into.add(p, n);
            }
        }
    }
    let compared_first: u64 = all.iter().map(Counts::total).sum();
    let candidate_pairs: u64 = first_found.iter().map(Counts::total).sum();
    let model = match model {
        Some(model) => model.clone(),
        None => {
            let per_rule: Vec<RuleCandidates> = params
                .blocking
                .iter()
                .zip(all.iter().zip(&first_found))
                .map(|(rule, (all, first))| RuleCandidates {
                    blocked_fields: rule
                        .iter()
                        .filter_map(|part| params.fields.iter().position(|f| f.field == part.field))
                        .collect(),
                    patterns: all.sorted(),
                    first: first.sorted(),
                })
                .collect();
            Model::estimate(fields, &random, &per_rule, all_pairs)
        }
    };

    // Pass 2: keep the candidates whose match probability reaches the threshold.
    let verdicts = Verdicts::new(
        fields,
        &model,
        first_found
            .iter()
            .flat_map(|counts| counts.sorted().into_iter().map(|(p, _)| p)),
    );
    let kept = in_parallel(&blocks, threads, |share| {
        let mut links = Vec::new();
        walk_share(
            &filters,
            &organisations,
            &blocks,
            share,
            true,
            &mut |_, i, j, _, pattern| {
                let (probability, weight) = verdicts.get(pattern);
                if probability >= params.threshold {
                    links.push(Link {
                        a: i as u32,
                        b: j as u32,
                        probability,
                        weight,
                    });
                }
            },
        );
        links
    });
    let mut links: Vec<Link> = kept.into_iter().flatten().collect();
    let comparing = started.elapsed();

    let people = cluster(&organisations, &nhs, known, &mut links);
    let nhs_conflicts = nhs_conflicts(&filters, &organisations, &nhs, &model);
    LinkResult {
        people,
        links,
        nhs_conflicts,
        stats: LinkStats {
            candidate_pairs,
            comparisons: compared_first + candidate_pairs,
            blocks_skipped: blocks.skipped,
            model,
            comparing,
            threads: threads.max(1),
        },
    }
}

/// Two records that share an NHS pseudonym but whose encodings say they are
/// different people (likely a mistyped or borrowed NHS number).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conflict {
    pub a: u32,
    pub b: u32,
    /// The pair's Fellegi–Sunter weight (log2 Bayes factor), below
    /// [`CONFLICT_WEIGHT`].
    pub weight: f64,
}

/// A weight this low means the encodings are over a thousand times likelier
/// from two different people than from one.
pub const CONFLICT_WEIGHT: f64 = -10.0;

/// Pairs of records with the same NHS pseudonym (from different
/// organisations) whose encodings disagree strongly under `model`.
fn nhs_conflicts(
    filters: &Filters,
    organisations: &[u32],
    nhs: &[Option<Pseudonym>],
    model: &Model,
) -> Vec<Conflict> {
    let mut by_nhs: Vec<(Pseudonym, u32)> = nhs
        .iter()
        .enumerate()
        .filter_map(|(i, n)| n.map(|n| (n, i as u32)))
        .collect();
    by_nhs.sort_unstable();
    let mut conflicts = Vec::new();
    for group in by_nhs.chunk_by(|x, y| x.0 == y.0) {
        for (x, &(_, a)) in group.iter().enumerate() {
            for &(_, b) in &group[x + 1..] {
                if organisations[a as usize] == organisations[b as usize] {
                    continue;
                }
                let weight = model.weight(filters.pattern(a as usize, b as usize));
                if weight < CONFLICT_WEIGHT {
                    conflicts.push(Conflict { a, b, weight });
                }
            }
        }
    }
    conflicts
}
