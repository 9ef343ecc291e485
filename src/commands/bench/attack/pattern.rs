//! The pattern-mining attack (after Christen, Ranbaduge, Vatsalan and
//! Schnell, "Precise and fast cryptanalysis for Bloom filter based
//! privacy-preserving record linkage", IEEE TKDE 2019). Within one salt a
//! token (a pair of letters) sets the same bits in every filter holding it,
//! so those bits are set together in about as many filters as the token is
//! frequent, whatever the key. The attacker, within each stratum the salt
//! makes (read from the clear values):
//!
//! 1. finds groups of bit positions set together, as frequent patterns
//!    are mined ([`groups`]);
//! 2. gives each group the frequent token of the register's values of the
//!    stratum whose frequency is nearest the group's support, when within
//!    [`SUPPORT_MISMATCH`] of it;
//! 3. reads each filter's tokens from the groups it holds, and gives its
//!    records the value of the stratum agreeing best with them (holding
//!    those it holds, lacking those it lacks), when no other agrees as well
//!    ([`Tokenised::decode`]).

use std::collections::{BTreeSet, HashMap};

use joinery_linkage::encode::for_each_token;
use joinery_linkage::params::Tokens;

use super::{Case, Recovery, What};

/// A position joins a group when at least this share of the filters holding
/// the group's positions so far set it too.
const TOGETHER: f64 = 0.8;

/// Groups looked for in one stratum (the frequent tokens are fewer).
const MAX_GROUPS: usize = 80;

/// A group's support and its token's frequency may differ by this share.
const SUPPORT_MISMATCH: f64 = 0.2;

/// Tokens and positions rarer than this share of the stratum are ignored.
const RARE: f64 = 0.02;

/// Rounds of reassigning tokens to groups by how the filters read.
const REFINEMENTS: usize = 3;

/// Tokens read from a filter that its value may disagree with.
const DISAGREEING: usize = 2;

/// Strata with more distinct filters or values than this are left alone
/// (reading every filter against every value each round would dominate the
/// run), so the attack's figure is a floor where strata are large.
const MAX_DISTINCT: usize = 2_000;

/// Strata with fewer records give too little to count.
const MIN_RECORDS: usize = 50;

/// What the attack recovers of every field encoded by letter pairs.
pub fn attack(case: &Case<'_>) -> Vec<Recovery> {
    let mut recoveries = Vec::new();
    for (f, field) in case.params.fields.iter().enumerate() {
        if !matches!(field.tokens, Tokens::Bigrams | Tokens::PaddedBigrams) {
            continue;
        }
        let (stored, mut register) = super::strata(case, f);
        let mut recovered = vec![None; case.stored.len()];
        for (stratum, filters) in stored {
            let Some(values) = register.remove(&stratum) else {
                continue;
            };
            let filters: Vec<(&[u64], Vec<usize>)> = filters.into_iter().collect();
            let records: usize = filters.iter().map(|(_, r)| r.len()).sum();
            if records < MIN_RECORDS || filters.len() > MAX_DISTINCT || values.len() > MAX_DISTINCT
            {
                continue;
            }
            let tokens = Tokenised::new(&values, field.tokens);
            let groups = groups(
                &filters,
                field.bits as usize,
                field.hashes as usize,
                records,
            );
            let mut read = tokens.assign(&groups);
            for _ in 0..REFINEMENTS {
                read = tokens.refine(&read, &filters);
            }
            for (value, (_, carriers)) in tokens.decode(&read, &filters).into_iter().zip(&filters) {
                if let Some(value) = value {
                    for &i in carriers {
                        recovered[i] = Some(tokens.values[value].0.to_owned());
                    }
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

/// A group of positions set together, and the share of the stratum's
/// records whose filters set them all.
struct Group {
    positions: Vec<usize>,
    support: f64,
}

fn is_set(filter: &[u64], p: usize) -> bool {
    filter.get(p / 64).is_some_and(|w| w >> (p % 64) & 1 == 1)
}

/// The groups of positions one token sets, found as frequent patterns are:
/// from the commonest position not yet in a group, add the position most
/// often set among the filters holding all the group's positions so far,
/// while most of them set it, up to `hashes` positions. A few positions of
/// one token are set together by chance in almost no filter, so the
/// filters holding them soon are those holding the token, and the group's
/// support is its frequency.
fn groups(
    filters: &[(&[u64], Vec<usize>)],
    bits: usize,
    hashes: usize,
    records: usize,
) -> Vec<Group> {
    let weight = |i: &usize| filters[*i].1.len();
    let count = |holding: &[usize], p: usize| -> usize {
        holding
            .iter()
            .filter(|&&i| is_set(filters[i].0, p))
            .map(weight)
            .sum()
    };
    let everyone: Vec<usize> = (0..filters.len()).collect();
    let mut by_frequency: Vec<(usize, usize)> =
        (0..bits).map(|p| (count(&everyone, p), p)).collect();
    by_frequency.sort_by_key(|&(n, p)| (std::cmp::Reverse(n), p));
    let mut grouped = vec![false; bits];
    let mut groups = Vec::new();
    for &(n, start) in &by_frequency {
        if (n as f64) < RARE * records as f64 || groups.len() >= MAX_GROUPS {
            break;
        }
        if grouped[start] {
            continue;
        }
        let mut positions = vec![start];
        let mut holding: Vec<usize> = everyone
            .iter()
            .copied()
            .filter(|&i| is_set(filters[i].0, start))
            .collect();
        while positions.len() < hashes {
            let held: usize = holding.iter().map(weight).sum();
            let Some((best, p)) = (0..bits)
                .filter(|p| !positions.contains(p))
                .map(|p| (count(&holding, p), p))
                .max_by_key(|&(n, p)| (n, std::cmp::Reverse(p)))
            else {
                break;
            };
            if (best as f64) < TOGETHER * held as f64 {
                break;
            }
            positions.push(p);
            holding.retain(|&i| is_set(filters[i].0, p));
        }
        if positions.len() * 2 < hashes {
            grouped[start] = true;
            continue;
        }
        for &p in &positions {
            grouped[p] = true;
        }
        groups.push(Group {
            support: holding.iter().map(weight).sum::<usize>() as f64 / records as f64,
            positions,
        });
    }
    groups
}

/// A stratum's register values with their tokens, and the tokens'
/// frequencies.
struct Tokenised<'a> {
    values: Vec<(&'a str, BTreeSet<Vec<u8>>)>,
    /// Frequent tokens, commonest first, with the share of people whose
    /// value holds each.
    frequent: Vec<(Vec<u8>, f64)>,
}

impl<'a> Tokenised<'a> {
    fn new(values: &HashMap<&'a str, usize>, kind: Tokens) -> Self {
        let people: usize = values.values().sum();
        let mut share: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut listed = Vec::with_capacity(values.len());
        for (&value, &count) in values {
            // Where the stratum holds many salts, each value's own salt
            // changes its bits; its letter pairs are what can be mined.
            let value = super::plain(value);
            let mut tokens = BTreeSet::new();
            for_each_token(kind, value, |t| {
                tokens.insert(t.to_vec());
            });
            for token in &tokens {
                *share.entry(token.clone()).or_default() += count;
            }
            listed.push((value, tokens));
        }
        listed.sort();
        let mut frequent: Vec<(Vec<u8>, f64)> = share
            .into_iter()
            .map(|(t, n)| (t, n as f64 / people.max(1) as f64))
            .filter(|(_, f)| *f >= RARE)
            .collect();
        frequent.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Self {
            values: listed,
            frequent,
        }
    }

    /// Each group given the unassigned frequent token nearest its support,
    /// the best supported groups first.
    fn assign<'g>(&self, groups: &'g [Group]) -> Vec<(&Vec<u8>, &'g Group)> {
        let mut order: Vec<&Group> = groups.iter().collect();
        order.sort_by(|a, b| b.support.total_cmp(&a.support));
        let mut used = vec![false; self.frequent.len()];
        let mut read = Vec::new();
        for group in order {
            let nearest = (0..self.frequent.len())
                .filter(|&t| !used[t])
                .min_by(|&x, &y| {
                    (self.frequent[x].1 - group.support)
                        .abs()
                        .total_cmp(&(self.frequent[y].1 - group.support).abs())
                });
            if let Some(t) = nearest
                && (self.frequent[t].1 - group.support).abs()
                    <= SUPPORT_MISMATCH * self.frequent[t].1
            {
                used[t] = true;
                read.push((&self.frequent[t].0, group));
            }
        }
        read
    }

    /// Each group given again the token whose presence in the values the
    /// filters are read as under `read` best matches the group's presence
    /// in the filters (the groups with the clearest match choosing first,
    /// each token once).
    fn refine<'s, 'g>(
        &'s self,
        read: &[(&'s Vec<u8>, &'g Group)],
        filters: &[(&[u64], Vec<usize>)],
    ) -> Vec<(&'s Vec<u8>, &'g Group)> {
        // (filter, the value it decodes to)
        let decoded: Vec<(usize, usize)> = self
            .decode(read, filters)
            .into_iter()
            .enumerate()
            .filter_map(|(f, value)| Some((f, value?)))
            .collect();
        if decoded.is_empty() {
            return read.to_vec();
        }
        let mut choices: Vec<(usize, usize, usize)> = Vec::new();
        for (g, (_, group)) in read.iter().enumerate() {
            let holds: Vec<bool> = decoded
                .iter()
                .map(|&(f, _)| group.positions.iter().all(|&p| is_set(filters[f].0, p)))
                .collect();
            for (t, (token, _)) in self.frequent.iter().enumerate() {
                let agree: usize = decoded
                    .iter()
                    .zip(&holds)
                    .filter(|((_, v), holds)| self.values[*v].1.contains(token) == **holds)
                    .map(|((f, _), _)| filters[*f].1.len())
                    .sum();
                choices.push((agree, g, t));
            }
        }
        choices.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let (mut group_done, mut token_used) =
            (vec![false; read.len()], vec![false; self.frequent.len()]);
        let mut refined = Vec::with_capacity(read.len());
        for (_, g, t) in choices {
            if !group_done[g] && !token_used[t] {
                group_done[g] = true;
                token_used[t] = true;
                refined.push((&self.frequent[t].0, read[g].1));
            }
        }
        refined
    }

    /// For each filter, the value agreeing best with the tokens `read`
    /// from it (holding those it holds, lacking those it lacks): at most
    /// [`DISAGREEING`] of them disagree, and no other value agrees as well.
    /// A token misread costs the right value one agreement, not the match.
    fn decode(
        &self,
        read: &[(&Vec<u8>, &Group)],
        filters: &[(&[u64], Vec<usize>)],
    ) -> Vec<Option<usize>> {
        if read.is_empty() {
            return vec![None; filters.len()];
        }
        // Which of the tokens read each value holds, and each filter: one
        // bit per token (at most MAX_GROUPS of them).
        let values: Vec<u128> = self
            .values
            .iter()
            .map(|(_, tokens)| mask(read.iter().map(|(token, _)| tokens.contains(*token))))
            .collect();
        filters
            .iter()
            .map(|(filter, _)| {
                let held = mask(
                    read.iter()
                        .map(|(_, g)| g.positions.iter().all(|&p| is_set(filter, p))),
                );
                let (mut best, mut second, mut at) = (0, 0, 0);
                for (v, value) in values.iter().enumerate() {
                    let agree = read.len() - (value ^ held).count_ones() as usize;
                    if agree > best {
                        (second, best, at) = (best, agree, v);
                    } else if agree > second {
                        second = agree;
                    }
                }
                (best + DISAGREEING >= read.len() && second < best).then_some(at)
            })
            .collect()
    }
}

/// Bits set where `flags` are true, the first flag the lowest bit.
fn mask(flags: impl Iterator<Item = bool>) -> u128 {
    flags
        .enumerate()
        .fold(0, |mask, (i, flag)| mask | (u128::from(flag) << i))
}
