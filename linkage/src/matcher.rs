//! Fuzzy matching over encodings (gateway side): candidate pairs from shared
//! blocking keys, per-field Dice similarity, a Fellegi–Sunter model fitted to
//! the data, and clustering into people.
//!
//! Only pairs from different organisations are compared (an organisation's
//! own records are distinct local ids). A pair sharing several blocking keys
//! is compared once: under a later rule it is skipped when an earlier rule's
//! keys already matched. Candidates are walked twice, once to count agreement
//! patterns for the model and once to keep the links, so memory holds the
//! encodings and the links, never the candidate pairs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::bloom;
use crate::cluster::{Link, cluster};
use crate::encode::{BLOCK_KEY_LEN, Encoding, Pseudonym};
use crate::params::LinkageParams;
use crate::score::{MISSING, Model, Pattern, RuleCandidates, level, with_level};

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
    pub stats: LinkStats,
}

#[derive(Debug, Clone)]
pub struct LinkStats {
    pub candidate_pairs: u64,
    pub blocks_skipped: u64,
    pub model: Model,
    /// Time spent comparing candidate pairs (both passes).
    pub comparing: Duration,
}

/// Every entity's filters in one flat array, an entity's fields side by
/// side (one entity's comparison touches a few adjacent cache lines), with
/// their popcounts.
struct Filters {
    /// Start of each field within an entity's words, and the end.
    offsets: Vec<usize>,
    stride: usize,
    data: Vec<u64>,
    ones: Vec<u32>,
}

impl Filters {
    fn new(entities: &[Entity], params: &LinkageParams) -> Self {
        let mut offsets = vec![0];
        for f in &params.fields {
            offsets.push(offsets[offsets.len() - 1] + f.bits as usize / 64);
        }
        let fields = params.fields.len();
        let stride = offsets[fields];
        let mut data = Vec::with_capacity(stride * entities.len());
        let mut ones = Vec::with_capacity(fields * entities.len());
        for e in entities {
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

    #[inline]
    fn pattern(&self, i: usize, j: usize) -> Pattern {
        let fields = self.offsets.len() - 1;
        let (a, b) = (
            &self.data[i * self.stride..(i + 1) * self.stride],
            &self.data[j * self.stride..(j + 1) * self.stride],
        );
        let (ones_a, ones_b) = (
            &self.ones[i * fields..(i + 1) * fields],
            &self.ones[j * fields..(j + 1) * fields],
        );
        let mut pattern = 0;
        for f in 0..fields {
            let (oa, ob) = (ones_a[f], ones_b[f]);
            let l = if oa == 0 || ob == 0 {
                MISSING
            } else {
                let range = self.offsets[f]..self.offsets[f + 1];
                level(bloom::dice(&a[range.clone()], oa, &b[range], ob))
            };
            pattern = with_level(pattern, f, l);
        }
        pattern
    }
}

type Block = [u8; BLOCK_KEY_LEN];

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

/// Calls `each(rule, i, j, first)` for every pair of every rule's blocks;
/// `first` is true under the first rule that makes it a candidate (so
/// counting only those counts each candidate once). Returns the number of
/// blocks left out for their size.
fn candidates(
    entities: &[Entity],
    rules: usize,
    mut each: impl FnMut(usize, usize, usize, bool),
) -> u64 {
    // Each rule's keys, and organisations, in flat arrays.
    let keys: Vec<Vec<Option<Block>>> = (0..rules)
        .map(|rule| {
            entities
                .iter()
                .map(|e| e.encoding.blocks.get(rule).copied().flatten())
                .collect()
        })
        .collect();
    let organisations: Vec<u32> = entities.iter().map(|e| e.organisation).collect();
    let mut skipped = 0;
    for rule in 0..rules {
        let mut blocks: HashMap<Block, Vec<u32>> = HashMap::new();
        for (i, key) in keys[rule].iter().enumerate() {
            if let Some(key) = key {
                blocks.entry(*key).or_default().push(i as u32);
            }
        }
        let mut members: Vec<Vec<u32>> = blocks.into_values().collect();
        members.sort_unstable();
        for members in members {
            if members.len() > MAX_BLOCK {
                skipped += 1;
                continue;
            }
            for (x, &i) in members.iter().enumerate() {
                let i = i as usize;
                for &j in &members[x + 1..] {
                    let j = j as usize;
                    if organisations[i] == organisations[j] {
                        continue;
                    }
                    let seen = keys[..rule].iter().any(|k| k[i].is_some() && k[i] == k[j]);
                    each(rule, i, j, !seen);
                }
            }
        }
    }
    skipped
}

/// Pairs of records from different organisations: every pair that could
/// be a link.
fn cross_organisation_pairs(entities: &[Entity]) -> f64 {
    let mut per_organisation: HashMap<u32, f64> = HashMap::new();
    for e in entities {
        *per_organisation.entry(e.organisation).or_default() += 1.0;
    }
    let n = entities.len() as f64;
    (n * n - per_organisation.values().map(|k| k * k).sum::<f64>()) / 2.0
}

/// Links `entities` into people, fitting the model to them.
pub fn link(entities: &[Entity], params: &LinkageParams) -> LinkResult {
    link_with(entities, params, None, &vec![None; entities.len()])
}

/// Links `entities` into people with `model` (fitted by EM when `None`).
/// `known` numbers entities already known to be one person alike: they stay
/// together (see [`cluster`]).
pub fn link_with(
    entities: &[Entity],
    params: &LinkageParams,
    model: Option<&Model>,
    known: &[Option<u64>],
) -> LinkResult {
    let filters = Filters::new(entities, params);
    let fields = params.fields.len();

    // u from random pairs of different organisations (a fixed sequence).
    let mut random: HashMap<Pattern, u64> = HashMap::new();
    if model.is_none() && entities.len() > 1 {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % entities.len() as u64) as usize
        };
        for _ in 0..RANDOM_PAIRS {
            let (i, j) = (next(), next());
            if entities[i].organisation != entities[j].organisation {
                *random.entry(filters.pattern(i, j)).or_insert(0u64) += 1;
            }
        }
    }

    // Pass 1: count the candidates' patterns, rule by rule; fit the model.
    let started = Instant::now();
    let rules = params.blocking.len();
    let mut patterns: Vec<PatternMap<u64>> = (0..rules).map(|_| PatternMap::default()).collect();
    let mut first_found: Vec<PatternMap<u64>> = (0..rules).map(|_| PatternMap::default()).collect();
    let mut candidate_pairs = 0u64;
    let blocks_skipped = candidates(entities, rules, |rule, i, j, first| {
        let pattern = filters.pattern(i, j);
        *patterns[rule].entry(pattern).or_insert(0) += 1;
        if first {
            *first_found[rule].entry(pattern).or_insert(0) += 1;
            candidate_pairs += 1;
        }
    });
    let model = match model {
        Some(model) => model.clone(),
        None => {
            let per_rule: Vec<RuleCandidates> = params
                .blocking
                .iter()
                .zip(patterns.iter().zip(&first_found))
                .map(|(rule, (all, first))| RuleCandidates {
                    blocked_fields: rule
                        .iter()
                        .filter_map(|part| params.fields.iter().position(|f| f.field == part.field))
                        .collect(),
                    patterns: all.iter().map(|(&p, &n)| (p, n)).collect(),
                    first: first.iter().map(|(&p, &n)| (p, n)).collect(),
                })
                .collect();
            Model::estimate(
                fields,
                &random.into_iter().collect::<Vec<_>>(),
                &per_rule,
                cross_organisation_pairs(entities),
            )
        }
    };

    // Pass 2: keep the pairs whose match probability reaches the threshold.
    let verdicts: PatternMap<(f64, f64)> = first_found
        .iter()
        .flat_map(|counts| counts.keys())
        .map(|&p| (p, (model.probability(p), model.weight(p))))
        .collect();
    let mut links = Vec::new();
    candidates(entities, rules, |_, i, j, first| {
        if !first {
            return;
        }
        let (probability, weight) = verdicts[&filters.pattern(i, j)];
        if probability >= params.threshold {
            links.push(Link {
                a: i as u32,
                b: j as u32,
                probability,
                weight,
            });
        }
    });
    let comparing = started.elapsed();

    let organisations: Vec<u32> = entities.iter().map(|e| e.organisation).collect();
    let nhs: Vec<Option<Pseudonym>> = entities.iter().map(|e| e.nhs).collect();
    let people = cluster(&organisations, &nhs, known, &mut links);
    LinkResult {
        people,
        links,
        stats: LinkStats {
            candidate_pairs,
            blocks_skipped,
            model,
            comparing,
        },
    }
}
