//! Fuzzy matching over encodings (gateway side): candidate pairs from shared
//! blocking keys, per-field Dice similarity, a Fellegi–Sunter model fitted to
//! the data, and clustering into people.
//!
//! Only pairs from different organisations are compared (an organisation's
//! own records are distinct local ids). Every rule's blocks are walked (an
//! oversized one in pieces, [`crate::blocking`]); a pair found by an earlier
//! pass too is a candidate only once, but still counts towards the later
//! rule's model. Blocks are walked twice: a
//! systematic sample of them to count agreement patterns for the model
//! (skipped when the model is given), then all of them to keep the links,
//! so memory holds the encodings and the links, never the candidate pairs.
//!
//! Speed: a block's members are grouped by organisation and copied side by
//! side (its pairs then touch only that small buffer and never pair an
//! organisation with itself), Dice levels are decided in integers, the
//! second pass compares the most telling fields first and drops a pair as
//! soon as it cannot reach the threshold, the comparison loop is compiled
//! for the CPU's vector or scalar popcount instructions ([`bloom::dispatch`]),
//! and blocks are shared out between threads.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::blocking::Blocks;
use crate::bloom::{self, Kernel, KernelTask, Scalar};
use crate::cluster::{Link, cluster};
use crate::encode::Pseudonym;
use crate::entities::{Entities, Entity, Filters};
use crate::params::{LinkageParams, Similarity, Take};
use crate::quality::{self, PairQuality, Tally};
use crate::score::{LEVELS, MISSING, Model, Pattern, RuleCandidates, level, level_of_dice};
use crate::sequence::Sequence;

/// Random pairs drawn to measure u.
const RANDOM_PAIRS: usize = 200_000;
/// About how many block pairs the model is fitted on (a systematic sample
/// of blocks when there are more). The rule-judged verdicts rest on the
/// rare patterns of pairs within one organisation in the sampled blocks
/// (siblings, twins): with 5 million at a million children of the messy
/// profile, version 6 sampled every 47th block and saw one pair of
/// same-name siblings, and linked 604 pairs of children of one household;
/// with 50 million, 233 (version 5: 111 and 117; fitting about 8 s longer
/// on 2 threads; `docs/linkage-privacy.md`).
const SAMPLE_PAIRS: u64 = 50_000_000;

#[derive(Debug, Clone)]
pub struct LinkResult {
    /// Each entity's person: the smallest entity index of its group.
    pub people: Vec<u32>,
    /// The fuzzy links that passed the threshold (some may have been refused
    /// by clustering).
    pub links: Vec<Link>,
    /// What the model expects of the links between each two organisations
    /// ([`crate::quality`]).
    pub quality: Vec<PairQuality>,
    /// Records sharing an NHS pseudonym that the encodings say are
    /// different people.
    pub nhs_conflicts: Vec<Conflict>,
    pub stats: LinkStats,
}

#[derive(Debug, Clone)]
pub struct LinkStats {
    /// Distinct candidate pairs.
    pub candidate_pairs: u64,
    /// Pairs compared in both passes: when fitting, the first over a sample
    /// of blocks (a pair in several rules' blocks counts in each); the
    /// second over every distinct candidate, many dropped after a field or
    /// two.
    pub comparisons: u64,
    /// Blocks over [`crate::blocking::MAX_BLOCK`] records, split ([`crate::blocking`]).
    pub blocks_split: u64,
    /// Pieces of split blocks alike in every MinHash level, cut into runs.
    pub pieces_cut_into_runs: u64,
    pub model: Model,
    /// Wall time spent comparing (both passes), and the threads that did it.
    pub comparing: Duration,
    pub threads: usize,
}

impl Filters {
    fn pattern(&self, i: usize, j: usize) -> Pattern {
        let f = self.fields();
        self.compare(
            Scalar,
            self.row(i),
            self.row(j),
            &self.ones[i * f..(i + 1) * f],
            &self.ones[j * f..(j + 1) * f],
        )
    }

    /// The agreement pattern of two entities' rows (with their popcounts).
    #[inline(always)]
    fn compare<K: Kernel>(
        &self,
        kernel: K,
        a: &[u64],
        b: &[u64],
        ones_a: &[u32],
        ones_b: &[u32],
    ) -> Pattern {
        let mut pattern = 0;
        for f in 0..ones_a.len() {
            let words = self.offsets[f]..self.offsets[f + 1];
            let l = level_of(kernel, self.similarity, words, a, b, ones_a[f], ones_b[f]);
            pattern |= u64::from(l) << (3 * f);
        }
        pattern
    }
}

/// The agreement level of one field between two entities' rows: its
/// filter lies at `words`, with `oa` and `ob` bits set.
#[inline(always)]
fn level_of<K: Kernel>(
    kernel: K,
    similarity: Similarity,
    words: std::ops::Range<usize>,
    a: &[u64],
    b: &[u64],
    oa: u32,
    ob: u32,
) -> u8 {
    if oa == 0 || ob == 0 {
        return MISSING;
    }
    let bits = (words.end - words.start) * 64;
    let common = kernel.common(&a[words.clone()], &b[words]);
    match similarity {
        Similarity::Bits => level(common, oa + ob),
        Similarity::Tokens => level_of_dice(bloom::token_dice(bits, common, oa, ob)),
    }
}

/// What the second pass needs to stop comparing a pair early: the fields
/// in order of how much they can tell apart per word compared, each
/// level's weight, and the most the fields still to come could add. A pair
/// is dropped only once even their best levels could not lift it to the
/// threshold, so the links kept are exactly those a full comparison keeps.
struct Pruning {
    /// The fields in the order they are compared.
    steps: Vec<Step>,
    similarity: Similarity,
}

/// One field of [`Pruning`]'s order, with all a comparison needs at hand.
struct Step {
    field: usize,
    /// Where its filter lies among an entity's words.
    words: std::ops::Range<usize>,
    /// The weight of each level (index 7: missing, 0).
    weights: [f64; 8],
    /// The weight a pair needs so far to reach the threshold, given the
    /// most the fields after this one can add.
    floor: f64,
}

impl Pruning {
    fn new(model: &Model, threshold: f64, filters: &Filters) -> Self {
        let (offsets, stand_ins) = (&filters.offsets, &filters.stand_ins);
        let fields = model.m.len();
        // A stand-in, and the fields it covers, may yet be made missing:
        // while comparing, each counts as no worse than missing, so a pair
        // is never dropped on a weight the stand-in would take back.
        let may_go = |f: usize| {
            stand_ins
                .iter()
                .any(|s| s.field == f || s.covers.contains(&f))
        };
        // A field judged at the best of its encodings (version 6) may yet
        // reach its best level, whatever its first encoding shows; the
        // encodings again are always missing in the end.
        let best_of = |f: usize| stand_ins.iter().any(|s| s.best_of && s.covers[0] == f);
        let again = |f: usize| stand_ins.iter().any(|s| s.best_of && s.field == f);
        let weights: Vec<[f64; 8]> = (0..fields)
            .map(|f| {
                let top = (0..LEVELS as u8)
                    .map(|l| model.level_weight(f, l))
                    .fold(0.0, f64::max);
                std::array::from_fn(|l| match l {
                    _ if again(f) => 0.0,
                    _ if best_of(f) => top,
                    l if l < LEVELS && may_go(f) => model.level_weight(f, l as u8).max(0.0),
                    l if l < LEVELS => model.level_weight(f, l as u8),
                    _ => 0.0,
                })
            })
            .collect();
        let best = |f: usize| weights[f].iter().copied().fold(0.0, f64::max);
        let spread = |f: usize| best(f) - weights[f][..LEVELS].iter().copied().fold(0.0, f64::min);
        let mut order: Vec<usize> = (0..fields).collect();
        order.sort_by(|&x, &y| {
            let per_word = |f: usize| spread(f) / (offsets[f + 1] - offsets[f]) as f64;
            per_word(y).total_cmp(&per_word(x)).then(x.cmp(&y))
        });
        let odds = |p: f64| (p / (1.0 - p)).log2();
        let cutoff = odds(threshold) - odds(model.prior);
        // A little slack for rounding; no cutoff when it is not a number.
        let cutoff = if cutoff.is_finite() {
            cutoff - 1e-6
        } else {
            f64::NEG_INFINITY
        };
        let steps = (0..fields)
            .map(|k| {
                let f = order[k];
                let best_after: f64 = order[k + 1..].iter().map(|&f| best(f)).sum();
                Step {
                    field: f,
                    words: offsets[f]..offsets[f + 1],
                    weights: weights[f],
                    floor: cutoff - best_after,
                }
            })
            .collect();
        Self {
            steps,
            similarity: filters.similarity,
        }
    }

    /// The pair's pattern, or `None` once it cannot reach the threshold.
    #[inline(always)]
    fn pattern<K: Kernel>(
        &self,
        kernel: K,
        a: &[u64],
        b: &[u64],
        ones_a: &[u32],
        ones_b: &[u32],
    ) -> Option<Pattern> {
        let (mut pattern, mut weight) = (0, 0.0);
        for step in &self.steps {
            let (oa, ob) = (ones_a[step.field], ones_b[step.field]);
            let l = level_of(kernel, self.similarity, step.words.clone(), a, b, oa, ob);
            pattern |= u64::from(l) << (3 * step.field);
            weight += step.weights[l as usize];
            if weight < step.floor {
                return None;
            }
        }
        Some(pattern)
    }
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

    /// Adds `other`'s counts, each times `by`.
    fn add_all(&mut self, other: &Self, by: u64) {
        for (p, n) in other.sorted() {
            self.add(p, n * by);
        }
    }

    fn total(&self) -> u64 {
        match self {
            Self::Dense(table) => table.iter().sum(),
            Self::Sparse(map) => map.values().sum(),
        }
    }
}

/// What pass 1 counts per rule: the patterns of all its cross-organisation
/// pairs, of those no earlier rule found, and of its pairs within one
/// organisation.
struct PassOneCounts {
    all: Vec<Counts>,
    first: Vec<Counts>,
    within: Vec<Counts>,
}

impl PassOneCounts {
    fn new(rules: usize, fields: usize) -> Self {
        let counts = || (0..rules).map(|_| Counts::new(fields)).collect();
        Self {
            all: counts(),
            first: counts(),
            within: counts(),
        }
    }

    #[inline(always)]
    fn add(&mut self, rule: usize, pair: Pair, pattern: Pattern, n: u64) {
        match pair {
            Pair::Within => self.within[rule].add(pattern, n),
            Pair::First => {
                self.all[rule].add(pattern, n);
                self.first[rule].add(pattern, n);
            }
            Pair::Again => self.all[rule].add(pattern, n),
        }
    }

    /// Pairs compared.
    fn compared(&self) -> u64 {
        self.all.iter().chain(&self.within).map(Counts::total).sum()
    }

    /// Adds another thread's counts, those across organisations scaled by
    /// `every` (they stand for every block). Those within one organisation
    /// stay as observed: only their shares are used, and how often a
    /// pattern was seen says how far its share can be trusted.
    fn merge(&mut self, other: Self, every: u64) {
        let scaled = self.all.iter_mut().chain(&mut self.first);
        for (into, from) in scaled.zip(other.all.iter().chain(&other.first)) {
            into.add_all(from, every);
        }
        for (into, from) in self.within.iter_mut().zip(&other.within) {
            into.add_all(from, 1);
        }
    }

    /// Per rule: (all, first, within).
    fn rules(&self) -> impl Iterator<Item = (&Counts, &Counts, &Counts)> {
        self.all
            .iter()
            .zip(&self.first)
            .zip(&self.within)
            .map(|((a, f), w)| (a, f, w))
    }
}

/// Each pattern's (probability, weight) by its fields: a table of every
/// pattern for few fields, worked out from the model as asked for more.
struct Verdicts<'m> {
    model: &'m Model,
    threshold: f64,
    table: Option<Vec<(f64, f64)>>,
}

/// Verdicts a rule's own judgement gave, by (rule, pattern): one thread's
/// memory, so each is worked out once.
type InRule = HashMap<(usize, Pattern), (f64, f64)>;

impl<'m> Verdicts<'m> {
    fn new(fields: usize, model: &'m Model, threshold: f64) -> Self {
        if fields > DENSE_FIELDS {
            return Self {
                model,
                threshold,
                table: None,
            };
        }
        let mut table = vec![(0.0, 0.0); 1 << (3 * fields)];
        // Every combination of a level (or missing) per field.
        let choices: Vec<u8> = (0..LEVELS as u8).chain([MISSING]).collect();
        let mut patterns: Vec<Pattern> = vec![0];
        for f in 0..fields {
            patterns = patterns
                .iter()
                .flat_map(|p| choices.iter().map(move |&l| p | (u64::from(l) << (3 * f))))
                .collect();
        }
        for p in patterns {
            table[p as usize] = (model.probability(p), model.weight(p));
        }
        Self {
            model,
            threshold,
            table: Some(table),
        }
    }

    /// The verdict on a pair that `rule` found first. Where the fields'
    /// verdict is near the threshold or above, the rule's own judgement may
    /// lower it ([`Model::verdict_in_rule`]); that is remembered in
    /// `in_rule`.
    #[inline(always)]
    fn get(&self, rule: usize, pattern: Pattern, in_rule: &mut InRule) -> (f64, f64) {
        let fields = match &self.table {
            Some(table) => table[pattern as usize],
            None => (self.model.probability(pattern), self.model.weight(pattern)),
        };
        // Below the threshold too, for the quality estimate's sake: a
        // household pattern's pairs are likelier siblings than misses.
        if fields.0 < quality::NEAR.min(self.threshold) {
            return fields;
        }
        *in_rule
            .entry((rule, pattern))
            .or_insert_with(|| self.model.verdict_in_rule(rule, pattern, fields))
    }
}

/// A block's members copied side by side: filters, popcounts,
/// organisations and the keys of earlier rules.
#[derive(Default)]
struct Scratch {
    data: Vec<u64>,
    ones: Vec<u32>,
    organisations: Vec<u32>,
    /// Each member's keys in the passes before the block's
    /// ([`Blocks::earlier_keys`]), 0 for none.
    earlier: Vec<u64>,
    /// Places of the block's dirty members, in an incremental run.
    dirty_places: Vec<usize>,
}

/// Which pairs of a block a walk visits.
#[derive(Clone, Copy)]
enum Walk<'p> {
    /// Fitting: every cross-organisation pair, and every pair within one
    /// organisation (distinct local ids, so non-matches that share the
    /// block, for how non-matches look there), fully compared.
    Fitting,
    /// Linking: each distinct cross-organisation candidate once (pairs an
    /// earlier rule also finds are passed over), dropped once it cannot
    /// reach the threshold; in an incremental run only those with at least
    /// one `dirty` end ([`Blocks::dirty`]).
    Linking {
        pruning: &'p Pruning,
        dirty: Option<&'p [bool]>,
    },
}

/// How a visited pair stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pair {
    /// Across organisations, found by no earlier rule.
    First,
    /// Across organisations, also found by an earlier rule.
    Again,
    /// Within one organisation.
    Within,
}

/// The callback a walk feeds: `(rule, i, j, pair, pattern)`, with the
/// pattern `None` for a pair pruning dropped.
trait Visit: FnMut(usize, usize, usize, Pair, Option<Pattern>) {}
impl<F: FnMut(usize, usize, usize, Pair, Option<Pattern>)> Visit for F {}

/// The pairs of a share of the blocks, with the best kernel the CPU has.
fn walk_share(
    entities: &Entities,
    blocks: &Blocks,
    share: &[usize],
    walk: Walk<'_>,
    each: &mut impl Visit,
) {
    bloom::dispatch(WalkShare {
        filters: &entities.filters,
        organisations: &entities.organisations,
        blocks,
        share,
        walk,
        each,
    });
}

/// [`walk_share`]'s work, compiled once per kernel.
struct WalkShare<'a, 'p, V: Visit> {
    filters: &'a Filters,
    organisations: &'a [u32],
    blocks: &'a Blocks<'a>,
    share: &'a [usize],
    walk: Walk<'p>,
    each: &'a mut V,
}

impl<V: Visit> KernelTask for WalkShare<'_, '_, V> {
    type Output = ();

    #[inline(always)]
    fn run<K: Kernel>(mut self, kernel: K) {
        let mut scratch = Scratch::default();
        for &b in self.share {
            self.block(kernel, b, &mut scratch);
        }
    }
}

impl<V: Visit> WalkShare<'_, '_, V> {
    /// Calls `each` for the pairs of block `b` that `walk` visits (`i`
    /// before `j` in the block's order).
    #[inline(always)]
    fn block<K: Kernel>(&mut self, kernel: K, b: usize, scratch: &mut Scratch) {
        let (filters, organisations, walk) = (self.filters, self.organisations, self.walk);
        let blocks = self.blocks;
        let block = &blocks.blocks[b];
        let (rule, members) = (block.rule, block.members.as_slice());
        let passes = Blocks::passes_before(rule, block.band);
        let each = &mut *self.each;
        let (stride, fields) = (filters.stride, filters.fields());
        scratch.data.clear();
        scratch.ones.clear();
        scratch.organisations.clear();
        scratch.earlier.clear();
        for &m in members {
            let m = m as usize;
            scratch.data.extend_from_slice(filters.row(m));
            scratch
                .ones
                .extend_from_slice(&filters.ones[m * fields..(m + 1) * fields]);
            scratch.organisations.push(organisations[m]);
            blocks.earlier_keys(rule, block.band, m, &mut scratch.earlier);
        }
        let row = |x: usize| {
            (
                &scratch.data[x * stride..(x + 1) * stride],
                &scratch.ones[x * fields..(x + 1) * fields],
            )
        };
        scratch.dirty_places.clear();
        let dirty = match walk {
            Walk::Linking {
                dirty: Some(dirty), ..
            } => {
                let places = members
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| dirty[**m as usize]);
                scratch.dirty_places.extend(places.map(|(x, _)| x));
                Some(dirty)
            }
            _ => None,
        };
        // Members come grouped by organisation: each is paired with the members
        // of the organisations after its own (and, when fitting, with the rest
        // of its own); in an incremental run a clean member only with the dirty ones.
        let mut group_end = 0;
        for (x, &i) in members.iter().enumerate() {
            if x == group_end {
                let organisation = scratch.organisations[x];
                group_end = x + scratch.organisations[x..]
                    .iter()
                    .take_while(|&&o| o == organisation)
                    .count();
            }
            let i = i as usize;
            let (row_a, ones_a) = row(x);
            let keys_a = &scratch.earlier[x * passes..(x + 1) * passes];
            if let Walk::Fitting = walk {
                for (y, &j) in members.iter().enumerate().take(group_end).skip(x + 1) {
                    let (row_b, ones_b) = row(y);
                    let pattern = filters.compare(kernel, row_a, row_b, ones_a, ones_b);
                    each(rule, i, j as usize, Pair::Within, Some(pattern));
                }
            }
            let mut pair_with = |y: usize| {
                let j = members[y] as usize;
                let keys_b = &scratch.earlier[y * passes..(y + 1) * passes];
                let first = !keys_a.iter().zip(keys_b).any(|(a, b)| *a != 0 && a == b);
                let (row_b, ones_b) = row(y);
                match walk {
                    Walk::Fitting => {
                        let pattern = filters.compare(kernel, row_a, row_b, ones_a, ones_b);
                        let pair = if first { Pair::First } else { Pair::Again };
                        each(rule, i, j, pair, Some(pattern));
                    }
                    Walk::Linking { pruning, .. } if first => {
                        let pattern = pruning.pattern(kernel, row_a, row_b, ones_a, ones_b);
                        each(rule, i, j, Pair::First, pattern);
                    }
                    Walk::Linking { .. } => {}
                }
            };
            match dirty {
                Some(dirty) if !dirty[i] => {
                    let places = &scratch.dirty_places;
                    let from = places.partition_point(|&p| p < group_end);
                    places[from..].iter().for_each(|&y| pair_with(y));
                }
                _ => (group_end..members.len()).for_each(pair_with),
            }
        }
    }
}

/// Runs `work` on `threads` threads, each over its share of the blocks
/// `walked` (dealt round-robin, largest first), and returns their results.
fn in_parallel<T: Send>(
    walked: &[usize],
    threads: usize,
    work: impl Fn(&[usize]) -> T + Sync,
) -> Vec<T> {
    let threads = threads.max(1);
    let shares: Vec<Vec<usize>> = (0..threads)
        .map(|t| walked.iter().copied().skip(t).step_by(threads).collect())
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
        let mut sequence = Sequence::new(0x9e37_79b9_7f4a_7c15);
        for _ in 0..RANDOM_PAIRS {
            let (i, j) = (sequence.below(n), sequence.below(n));
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
    let entities = Entities::numbered(entities, params);
    link_entities(&entities, params, model, known, threads, None)
}

/// What an incremental run keeps from the runs before it
/// ([`link_entities`]).
#[derive(Debug, Clone, Copy)]
pub struct Earlier<'a> {
    /// Per entity: new since `links` were found.
    pub fresh: &'a [bool],
    /// Every link the last run returned ([`LinkResult::links`]), by the
    /// same entity numbers.
    pub links: &'a [Link],
}

/// Links `entities` into people, as [`link_with`]. With `earlier` (and a
/// `model`: the one the earlier links were found with), only the pairs
/// that involve a fresh entity, or a member of a split block a fresh one
/// joined (see `blocking`), are compared; the earlier links between
/// the others stand. The result is then exactly that of comparing every
/// pair under the same model — the same links, the same people — at a
/// cost that grows with what is fresh; its `quality` is left empty (it
/// needs every pair: a full run estimates it).
pub fn link_entities(
    entities: &Entities,
    params: &LinkageParams,
    model: Option<&Model>,
    known: &[Option<u64>],
    threads: usize,
    earlier: Option<Earlier<'_>>,
) -> LinkResult {
    let organisations = &entities.organisations;
    let nhs = &entities.nhs;
    let filters = &entities.filters;
    let rules = params.blocking.len();
    let blocks = Blocks::new(entities, params);
    let all_pairs = cross_organisation_pairs(organisations);
    let random = if model.is_none() {
        random_patterns(organisations, filters)
    } else {
        Vec::new()
    };
    let earlier = earlier.filter(|_| model.is_some());
    let dirty = earlier.map(|e| blocks.dirty(e.fresh));

    let started = Instant::now();
    let fields = params.fields.len();
    let mut compared_first = 0;
    let model = match model {
        Some(model) => model.clone(),
        None => {
            // Pass 1, to fit the model: count the patterns of every rule's
            // pairs, and of the distinct candidates by the rule that found
            // them first, over a systematic sample of the blocks (every
            // k-th, largest first) holding about SAMPLE_PAIRS pairs; the
            // counts are scaled back up by k.
            let every = blocks.pairs().div_ceil(SAMPLE_PAIRS).max(1);
            let sampled: Vec<usize> = (0..blocks.blocks.len()).step_by(every as usize).collect();
            let counted = in_parallel(&sampled, threads, |share| {
                let mut counts = PassOneCounts::new(rules, fields);
                walk_share(
                    entities,
                    &blocks,
                    share,
                    Walk::Fitting,
                    &mut |rule, _, _, pair, pattern| {
                        if let Some(pattern) = pattern {
                            counts.add(rule, pair, pattern, 1);
                        }
                    },
                );
                counts
            });
            let mut counts = PassOneCounts::new(rules, fields);
            for thread in counted {
                compared_first += thread.compared();
                counts.merge(thread, every);
            }
            let per_rule: Vec<RuleCandidates> = params
                .blocking
                .iter()
                .zip(counts.rules())
                .map(|(rule, (all, first, within))| RuleCandidates {
                    blocked_fields: params.fields_of(rule, |_| true),
                    whole_fields: params.fields_of(rule, |take| take == Take::Whole),
                    patterns: all.sorted(),
                    first: first.sorted(),
                    non_matches: within.sorted(),
                })
                .collect();
            Model::estimate(fields, &random, &per_rule, all_pairs, &filters.stand_ins)
        }
    };

    // Pass 2: every distinct candidate once; keep those whose match
    // probability reaches the threshold (stopping early on the rest).
    let verdicts = Verdicts::new(fields, &model, params.threshold);
    let pruning = Pruning::new(&model, params.threshold, filters);
    let sample = quality::PrunedSample::for_pairs(blocks.pairs());
    let walked: Vec<usize> = match &dirty {
        Some(dirty) => (0..blocks.blocks.len())
            .filter(|&b| blocks.blocks[b].members.iter().any(|&m| dirty[m as usize]))
            .collect(),
        None => (0..blocks.blocks.len()).collect(),
    };
    // The pairs below it are tallied for the quality estimate.
    let organisation_count = organisations.iter().max().map_or(0, |&o| o as usize + 1);
    let kept = in_parallel(&walked, threads, |share| {
        let (mut links, mut candidates) = (Vec::new(), 0u64);
        let mut tally = Tally::new(organisation_count);
        let mut in_rule = InRule::new();
        walk_share(
            entities,
            &blocks,
            share,
            Walk::Linking {
                pruning: &pruning,
                dirty: dirty.as_deref(),
            },
            &mut |rule, i, j, _, pattern| {
                candidates += 1;
                let (pattern, times) = match pattern {
                    Some(pattern) => (pattern, 1.0),
                    None if sample.takes(i, j) => (filters.pattern(i, j), sample.times()),
                    None => return,
                };
                let (probability, weight) = verdicts.get(rule, pattern, &mut in_rule);
                if probability >= params.threshold {
                    links.push(Link {
                        a: i as u32,
                        b: j as u32,
                        probability,
                        weight,
                    });
                } else if dirty.is_none() && (nhs[i].is_none() || nhs[j].is_none()) {
                    let pair = (organisations[i], organisations[j]);
                    tally.below(pair, (i, j), probability, times);
                }
            },
        );
        (links, candidates, tally)
    });
    let candidate_pairs: u64 = kept.iter().map(|(_, n, _)| n).sum();
    let mut tally = Tally::new(organisation_count);
    // The earlier links between entities left alone stand.
    let mut links: Vec<Link> = match (earlier, &dirty) {
        (Some(earlier), Some(dirty)) => earlier
            .links
            .iter()
            .filter(|l| !dirty[l.a as usize] && !dirty[l.b as usize])
            .copied()
            .collect(),
        _ => Vec::new(),
    };
    for (thread_links, _, thread_tally) in kept {
        links.extend(thread_links);
        tally.merge(thread_tally);
    }
    let comparing = started.elapsed();

    let people = cluster(organisations, nhs, known, &entities.tiebreaks, &mut links);
    let quality = match dirty {
        Some(_) => Vec::new(),
        None => tally.quality(organisations, nhs, &people, &links),
    };
    let nhs_conflicts = nhs_conflicts(filters, organisations, nhs, &model);
    LinkResult {
        people,
        links,
        quality,
        nhs_conflicts,
        stats: LinkStats {
            candidate_pairs,
            comparisons: compared_first + candidate_pairs,
            blocks_split: blocks.split,
            pieces_cut_into_runs: blocks.cut_into_runs,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Encoder, Identity};
    use joinery_crypto::keys::SecretKey;

    const FAMILIES: [&str; 10] = [
        "SMITH", "KHAN", "HALL", "JONES", "PATEL", "WOOD", "EVANS", "GREEN", "HILL", "MOORE",
    ];

    /// Two organisations' records of 2,000 people from a few dozen names, so
    /// blocks hold look-alikes; the second copy sometimes has a typo.
    fn entities(params: &LinkageParams) -> Vec<Entity> {
        look_alikes(params, 2000, &FAMILIES, 12)
    }

    /// Two organisations' records of `people` people with given names from
    /// a list of ten, family names from `families`, born in the first of
    /// `years` years from 2008; the second copy sometimes has a typo, and
    /// every third person has an NHS pseudonym in both.
    fn look_alikes(
        params: &LinkageParams,
        people: usize,
        families: &[&str],
        years: usize,
    ) -> Vec<Entity> {
        let encoder = Encoder::new(&SecretKey::from_bytes([3; 32]), params).unwrap();
        let given = [
            "AVA", "MIA", "LEO", "NOAH", "ISLA", "OSCAR", "GRACE", "HARRY", "FREYA", "JACK",
        ];
        let mut sequence = Sequence::new(0x1234_5678);
        let mut next = |n: usize| sequence.below(n);
        let mut out = Vec::new();
        for person in 0..people {
            let (g, f) = (given[next(10)], families[next(families.len())]);
            let dob = format!(
                "20{:02}-{:02}-{:02}",
                8 + next(years),
                1 + next(12),
                1 + next(28)
            );
            let postcode = format!("M{} {}AB", 1 + next(30), next(10));
            for organisation in 0..2u32 {
                let family = if organisation == 1 && person % 7 == 0 {
                    format!("{f}E")
                } else {
                    f.to_owned()
                };
                let identity = Identity::new()
                    .with("given_name", Some(g))
                    .with("family_name", Some(&family))
                    .with("date_of_birth", Some(&dob))
                    .with("sex", Some("female"))
                    .with("postcode", Some(&postcode));
                let mut nhs = [0; 32];
                nhs[..8].copy_from_slice(&(person as u64).to_le_bytes());
                out.push(Entity {
                    organisation,
                    nhs: (person % 3 == 0).then_some(nhs),
                    encoding: encoder.encode(&identity),
                });
            }
        }
        out
    }

    /// Version 7 reads a given name's level from the tokens its encodings
    /// hold, so the half-size copies no longer make different names look
    /// partly alike by the bits they share by chance, while a typo still
    /// leaves a name alike.
    #[test]
    fn version_7_reads_a_name_by_its_tokens_whatever_the_size_of_its_encoding() {
        let tokens = LinkageParams::canonical_version(7);
        let bits = LinkageParams {
            version: 6,
            ..tokens.clone()
        };
        assert_eq!(
            (tokens.similarity(), bits.similarity()),
            (Similarity::Tokens, Similarity::Bits)
        );
        let encoder = Encoder::new(&SecretKey::from_bytes([5; 32]), &tokens).unwrap();
        let child = |given: &str| Entity {
            organisation: 0,
            nhs: None,
            encoding: encoder.encode(
                &Identity::new()
                    .with("given_name", Some(given))
                    .with("family_name", Some("JOHNSON"))
                    .with("date_of_birth", Some("2015-04-12"))
                    .with("sex", Some("female"))
                    .with("postcode", Some("M13 9PL")),
            ),
        };
        // The given name's level as judged (at the best of its encodings).
        let given_level = |params: &LinkageParams, a: &str, b: &str| {
            let entities = Entities::numbered(vec![child(a), child(b)], params);
            let filters = &entities.filters;
            let pattern = filters
                .stand_ins
                .iter()
                .fold(filters.pattern(0, 1), |p, s| s.apply(p));
            crate::score::pattern_level(pattern, 0)
        };
        let twins = [
            ("NOAH", "NOEL"),
            ("ISLA", "ELLA"),
            ("MIA", "MILA"),
            ("AVA", "EVA"),
            ("HARRY", "HENRY"),
            ("LILY", "LOLA"),
            ("EMILY", "EMMA"),
            ("RUBY", "ROSIE"),
            ("ALFIE", "ARCHIE"),
            ("EVIE", "EVAN"),
            ("MAISIE", "MAISY"),
            ("OSCAR", "OTIS"),
            ("POPPY", "POLLY"),
            ("LUCAS", "LUKE"),
            ("SIENNA", "SERENA"),
            ("ERIN", "EDEN"),
        ];
        let read_apart = twins
            .iter()
            .filter(|(a, b)| given_level(&bits, a, b) == 3 && given_level(&tokens, a, b) == 4)
            .count();
        let read_together = twins
            .iter()
            .filter(|(a, b)| given_level(&bits, a, b) == 4 && given_level(&tokens, a, b) < 4)
            .count();
        assert!(
            read_apart > read_together,
            "by tokens {read_apart} pairs of names read apart, {read_together} together"
        );
        for (name, typo) in [
            ("AMELIA", "AMELAI"),
            ("OLIVER", "OLIVRE"),
            ("CHARLOTTE", "CHARLOTE"),
            ("HARRISON", "HARISON"),
        ] {
            assert!(given_level(&tokens, name, typo) < 4, "{name} {typo}");
        }
    }

    /// Links as pairs of tiebreaks, and people as sets of tiebreaks: what
    /// a run decided, whatever order its entities were numbered in.
    fn decided(entities: &Entities, result: &LinkResult) -> (Vec<(u64, u64)>, Vec<Vec<u64>>) {
        let tb = &entities.tiebreaks;
        let mut links: Vec<(u64, u64)> = result
            .links
            .iter()
            .map(|l| {
                let (a, b) = (tb[l.a as usize], tb[l.b as usize]);
                (a.min(b), a.max(b))
            })
            .collect();
        links.sort_unstable();
        let mut people: HashMap<u32, Vec<u64>> = HashMap::new();
        for (i, &p) in result.people.iter().enumerate() {
            people.entry(p).or_default().push(tb[i]);
        }
        let mut people: Vec<Vec<u64>> = people.into_values().collect();
        people.iter_mut().for_each(|p| p.sort_unstable());
        people.sort_unstable();
        (links, people)
    }

    /// Entities arrive in three deliveries, in another order than the full
    /// run numbers them; each delivery is linked incrementally. After the
    /// last, the links and people are exactly those of comparing every pair
    /// under the same model, for ordinary blocks and for one block so large
    /// it is split (6,000 Harrises born in one year).
    #[test]
    fn an_incremental_run_links_exactly_as_comparing_every_pair() {
        // Version 5 keys the family name's Soundex with the birth year, so
        // the Harrises make one block.
        let params = LinkageParams::canonical_version(5);
        for (all, split) in [
            (entities(&params), false),
            (look_alikes(&params, 3000, &["HARRIS"], 1), true),
        ] {
            let n = all.len();
            let known = vec![None; n];
            let full = Entities::numbered(all.clone(), &params);
            let fitted = link_entities(&full, &params, None, &known, 2, None);
            let model = fitted.stats.model.clone();
            assert_eq!(fitted.stats.blocks_split > 0, split);
            let everything = link_entities(&full, &params, Some(&model), &known, 2, None);
            assert!(everything.links.len() > 1000, "{}", everything.links.len());

            let mut order: Vec<usize> = (0..n).collect();
            let mut sequence = Sequence::new(0x51de);
            for i in (1..n).rev() {
                order.swap(i, sequence.below(i + 1));
            }
            let mut entities = Entities::new(&params);
            let (mut links, mut compared) = (Vec::new(), 0);
            let mut result = None;
            for delivery in order.chunks(n / 3 + 1) {
                let before = entities.len();
                for &i in delivery {
                    entities.push(all[i].clone(), i as u64);
                }
                let fresh: Vec<bool> = (0..entities.len()).map(|i| i >= before).collect();
                let run = link_entities(
                    &entities,
                    &params,
                    Some(&model),
                    &vec![None; entities.len()],
                    2,
                    Some(Earlier {
                        fresh: &fresh,
                        links: &links,
                    }),
                );
                compared += run.stats.candidate_pairs;
                links = run.links.clone();
                result = Some(run);
            }
            let result = result.expect("three deliveries");
            assert_eq!(
                decided(&entities, &result),
                decided(&full, &everything),
                "split blocks: {split}"
            );
            if !split {
                // Each pair is compared once over the deliveries.
                assert_eq!(compared, everything.stats.candidate_pairs);
            }
        }
    }

    #[test]
    fn stopping_early_keeps_exactly_the_links_a_full_comparison_keeps() {
        let params = LinkageParams::canonical();
        let entities = Entities::numbered(entities(&params), &params);
        let known = vec![None; entities.len()];
        let model = link_entities(&entities, &params, None, &known, 1, None)
            .stats
            .model;
        let blocks = Blocks::new(&entities, &params);
        let verdicts = Verdicts::new(params.fields.len(), &model, params.threshold);
        let pruning = Pruning::new(&model, params.threshold, &entities.filters);
        let every: Vec<usize> = (0..blocks.blocks.len()).collect();
        // Fitting compares every pair fully; its distinct candidates are
        // those first found.
        let kept = |walk: Walk<'_>| {
            let (mut links, mut dropped, mut candidates) = (Vec::new(), 0, 0);
            let mut in_rule = InRule::new();
            walk_share(
                &entities,
                &blocks,
                &every,
                walk,
                &mut |rule, i, j, pair, pattern| {
                    if pair != Pair::First {
                        return;
                    }
                    candidates += 1;
                    match pattern {
                        Some(p) if verdicts.get(rule, p, &mut in_rule).0 >= params.threshold => {
                            links.push((i, j))
                        }
                        Some(_) => {}
                        None => dropped += 1,
                    }
                },
            );
            (links, dropped, candidates)
        };
        let (full, none_dropped, candidates) = kept(Walk::Fitting);
        let (pruned, dropped, _) = kept(Walk::Linking {
            pruning: &pruning,
            dirty: None,
        });
        assert_eq!(none_dropped, 0);
        assert!(full.len() > 1000, "{} links", full.len());
        assert_eq!(pruned, full, "the same links, in the same order");
        assert!(
            dropped * 2 > candidates,
            "most candidates stop early: {dropped} of {candidates}"
        );
    }
}
