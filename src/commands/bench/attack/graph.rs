//! The graph matching attack (Vidanage, Christen, Ranbaduge and Schnell,
//! "A Graph Matching Attack on Privacy-Preserving Record Linkage", CIKM
//! 2020). Keyed hashing hides which bits a value sets, but not how alike two
//! values are: two names sharing most of their letter pairs give filters
//! sharing most of their bits, key or no key. So the attacker builds two
//! graphs within each stratum the salt makes (the salt read from the clear
//! values) — the distinct stored filters, joined by their Dice similarity,
//! and the register's distinct values, joined by the Dice similarity of
//! their letter pairs — and describes every node by its place in its graph:
//! how many records carry it, how many neighbours it has at each level of
//! similarity, how alike its nearest ones are, how many records its close
//! neighbours carry. Filter similarities run higher than the values' (bits
//! collide), so they are first mapped onto the values' scale by quantile
//! (the published attack fits a regression for the same purpose). Nodes of
//! the two graphs whose descriptions are each other's nearest are matched,
//! and the filter's records are given the matched value.

use std::collections::HashMap;

use joinery_linkage::bloom;
use joinery_linkage::sequence::Sequence;

use super::super::count_common;
use super::{Case, Recovery, What};

/// Strata with more distinct values than this are left alone (comparing
/// every pair of them would dominate the run).
const MAX_NODES: usize = 6_000;

/// Neighbours are counted at each of these similarities.
const LEVELS: [f64; 6] = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8];

/// Features describing a node.
const FEATURES: usize = LEVELS.len() + 4;

/// The name fields' values the attack recovers.
pub fn attack(case: &Case<'_>) -> Vec<Recovery> {
    let params = case.params;
    let mut recoveries = Vec::new();
    for (f, field) in params.fields.iter().enumerate() {
        if !field.field.ends_with("_name") {
            continue;
        }
        let (stored, mut register) = super::strata(case, f);
        let strata: Vec<Stratum<'_>> = stored
            .into_iter()
            .filter_map(|(stratum, filters)| {
                let values = register.remove(&stratum)?;
                (filters.len() <= MAX_NODES && values.len() <= MAX_NODES)
                    .then(|| Stratum::new(filters, values))
            })
            .collect();
        let calibration = Calibration::fit(&strata);
        let mut recovered = vec![None; case.stored.len()];
        for stratum in &strata {
            for (filter, value) in stratum.matches(&calibration) {
                for &i in &stratum.filters[filter].1 {
                    recovered[i] = Some(super::plain(stratum.values[value].0).to_owned());
                }
            }
        }
        recoveries.push(Recovery {
            what: What::Field(field.field.clone()),
            values: recovered,
        });
    }
    recoveries
}

/// One stratum's two graphs, as lists of edges.
struct Stratum<'a> {
    /// Distinct filters and the records carrying each.
    filters: Vec<(&'a [u64], Vec<usize>)>,
    /// Distinct register values and the people carrying each.
    values: Vec<(&'a str, usize)>,
    /// Filter pairs from [`FILTER_FLOOR`] alike, as measured.
    filter_edges: Vec<(u32, u32, f64)>,
    /// Value pairs from the lowest level alike.
    value_edges: Vec<(u32, u32, f64)>,
    /// The similarity of each node and one other picked at random, on each
    /// side: the sample the calibration is fitted to.
    filter_sample: Vec<f64>,
    value_sample: Vec<f64>,
}

/// Filter pairs less alike than this are not kept: filter similarities run
/// higher than the values', so none below it reaches the lowest level once
/// calibrated.
const FILTER_FLOOR: f64 = 0.25;

impl<'a> Stratum<'a> {
    fn new(filters: HashMap<&'a [u64], Vec<usize>>, values: HashMap<&'a str, usize>) -> Self {
        let mut filters: Vec<(&[u64], Vec<usize>)> = filters.into_iter().collect();
        filters.sort();
        let mut values: Vec<(&str, usize)> = values.into_iter().collect();
        values.sort();
        let ones: Vec<u32> = filters.iter().map(|(f, _)| bloom::ones(f)).collect();
        let (filter_edges, filter_sample) = edges(filters.len(), FILTER_FLOOR, |a, b| {
            bloom::dice(filters[a].0, ones[a], filters[b].0, ones[b])
        });
        let pairs: Vec<Vec<(char, char)>> = values
            .iter()
            .map(|(v, _)| letter_pairs(super::plain(v)))
            .collect();
        // Values under different salts (where the stratum holds many) give
        // unrelated filters: as alike as any two unrelated values.
        let salts: Vec<&str> = values.iter().map(|(v, _)| super::hidden_salt(v)).collect();
        let (value_edges, value_sample) = edges(values.len(), LEVELS[0], |a, b| {
            if salts[a] == salts[b] {
                pair_dice(&pairs[a], &pairs[b])
            } else {
                0.0
            }
        });
        Self {
            filters,
            values,
            filter_edges,
            value_edges,
            filter_sample,
            value_sample,
        }
    }

    /// Filters and values whose descriptions are each other's nearest.
    fn matches(&self, calibration: &Calibration) -> Vec<(usize, usize)> {
        let counts: Vec<usize> = self.filters.iter().map(|(_, r)| r.len()).collect();
        let filter_edges: Vec<(u32, u32, f64)> = self
            .filter_edges
            .iter()
            .map(|&(a, b, s)| (a, b, calibration.map(s)))
            .collect();
        let filter_features = features(&filter_edges, &counts);
        let counts: Vec<usize> = self.values.iter().map(|(_, n)| *n).collect();
        let value_features = features(&self.value_edges, &counts);
        if filter_features.is_empty() || value_features.is_empty() {
            return Vec::new();
        }
        let nearest = |from: &[[f64; FEATURES]], to: &[[f64; FEATURES]]| -> Vec<usize> {
            from.iter()
                .map(|a| {
                    (0..to.len())
                        .min_by(|&x, &y| distance(a, &to[x]).total_cmp(&distance(a, &to[y])))
                        .unwrap_or(0)
                })
                .collect()
        };
        let to_value = nearest(&filter_features, &value_features);
        let to_filter = nearest(&value_features, &filter_features);
        to_value
            .into_iter()
            .enumerate()
            .filter(|&(filter, value)| to_filter[value] == filter)
            .collect()
    }
}

/// The pairs of `n` nodes at least `floor` alike, and a sample of the
/// similarities of all pairs (each node with one other, picked at random).
fn edges(
    n: usize,
    floor: f64,
    similarity: impl Fn(usize, usize) -> f64,
) -> (Vec<(u32, u32, f64)>, Vec<f64>) {
    let mut edges = Vec::new();
    let mut sample = Vec::with_capacity(n);
    let mut picks = Sequence::new(n as u64 | 1);
    for a in 0..n {
        let pick = (n > 1).then(|| {
            let other = picks.below(n - 1);
            if other >= a { other + 1 } else { other }
        });
        for b in a + 1..n {
            let s = similarity(a, b);
            if s >= floor {
                edges.push((a as u32, b as u32, s));
            }
            if pick == Some(b) {
                sample.push(s);
            }
        }
        if let Some(other) = pick.filter(|&o| o < a) {
            sample.push(similarity(a, other));
        }
    }
    (edges, sample)
}

/// Each node's description: records carried, neighbours at each level,
/// nearest and mean of the three nearest similarities, and records carried
/// by its neighbours from 0.5 (logarithms of counts).
fn features(edges: &[(u32, u32, f64)], counts: &[usize]) -> Vec<[f64; FEATURES]> {
    let n = counts.len();
    let mut around: Vec<Vec<(f64, usize)>> = vec![Vec::new(); n];
    for &(a, b, s) in edges {
        if s >= LEVELS[0] {
            around[a as usize].push((s, b as usize));
            around[b as usize].push((s, a as usize));
        }
    }
    (0..n)
        .map(|a| {
            let mut out = [0.0; FEATURES];
            out[0] = (1.0 + counts[a] as f64).ln();
            for (l, level) in LEVELS.iter().enumerate() {
                let degree = around[a].iter().filter(|(s, _)| s >= level).count();
                out[1 + l] = (1.0 + degree as f64).ln();
            }
            let mut nearest: Vec<f64> = around[a].iter().map(|(s, _)| *s).collect();
            nearest.sort_by(|x, y| y.total_cmp(x));
            out[LEVELS.len() + 1] = nearest.first().copied().unwrap_or(0.0);
            let top: Vec<f64> = nearest.iter().take(3).copied().collect();
            out[LEVELS.len() + 2] = top.iter().sum::<f64>() / top.len().max(1) as f64;
            let mass: usize = around[a]
                .iter()
                .filter(|(s, _)| *s >= 0.5)
                .map(|(_, b)| counts[*b])
                .sum();
            out[LEVELS.len() + 3] = (1.0 + mass as f64).ln();
            out
        })
        .collect()
}

fn distance(a: &[f64; FEATURES], b: &[f64; FEATURES]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Filter similarities onto the values' scale: the filter similarity at
/// some quantile of all filter pairs becomes the value similarity at the
/// same quantile of all value pairs (both sampled).
struct Calibration {
    filters: Vec<f64>,
    values: Vec<f64>,
}

impl Calibration {
    fn fit(strata: &[Stratum<'_>]) -> Self {
        let sorted = |mut all: Vec<f64>| {
            all.sort_by(f64::total_cmp);
            all
        };
        Self {
            filters: sorted(
                strata
                    .iter()
                    .flat_map(|s| s.filter_sample.iter().copied())
                    .collect(),
            ),
            values: sorted(
                strata
                    .iter()
                    .flat_map(|s| s.value_sample.iter().copied())
                    .collect(),
            ),
        }
    }

    fn map(&self, similarity: f64) -> f64 {
        if self.filters.is_empty() || self.values.is_empty() {
            return similarity;
        }
        let rank = self.filters.partition_point(|&s| s < similarity);
        let quantile = rank as f64 / self.filters.len() as f64;
        let at = ((quantile * self.values.len() as f64) as usize).min(self.values.len() - 1);
        self.values[at]
    }
}

/// A value's letter pairs, spaces left out, sorted and distinct.
fn letter_pairs(value: &str) -> Vec<(char, char)> {
    let letters: Vec<char> = value.chars().filter(|c| !c.is_whitespace()).collect();
    let mut pairs: Vec<(char, char)> = letters.windows(2).map(|w| (w[0], w[1])).collect();
    pairs.sort_unstable();
    pairs.dedup();
    pairs
}

fn pair_dice(a: &[(char, char)], b: &[(char, char)]) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 0.0;
    }
    2.0 * count_common(a, b) as f64 / (a.len() + b.len()) as f64
}
