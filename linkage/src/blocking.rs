//! Which records are compared: blocks of records sharing a blocking key,
//! one rule at a time. No block is ever left out: one larger than
//! [`MAX_BLOCK`] (a common family name in a region-sized population) is
//! split by MinHash over its members' filter bits into [`BANDS`] ways of
//! cutting it, each cut deep enough that no piece exceeds the cap, so a
//! pair of records alike enough to link shares a piece in at least one
//! band with a probability that rises with their similarity.
//!
//! Each (rule, band) is a *pass*, and each record has a key in each pass:
//! two records are put side by side by a pass exactly when their keys there
//! are equal and not 0. The matcher compares a pair only in the first pass
//! that finds it, which these keys let it decide from the pair alone.

use std::collections::HashMap;

use crate::entities::{Entities, Filters};
use crate::params::{LinkageParams, Take};

/// A block larger than this is split (it would hold mostly non-matches and
/// cost the square of its size).
pub const MAX_BLOCK: usize = 5_000;
/// Ways an oversized block is cut: a pair whose filter bits have Jaccard
/// similarity J shares a first-level piece with probability J in each, so
/// it is missed by all six with (1 - J)^6 (under 0.1% at J = 0.7).
pub const BANDS: usize = 6;
/// MinHash levels a piece may be cut by before what remains (records
/// alike in every level) is cut into runs of [`MAX_BLOCK`].
const MAX_DEPTH: u64 = 4;

/// One block to walk: a rule's (or a band of a split block's) members, by
/// organisation then entity order.
pub(crate) struct Block {
    pub rule: usize,
    pub band: usize,
    pub members: Vec<u32>,
}

/// Every rule's blocks, the oversized ones split.
pub(crate) struct Blocks<'e> {
    /// Largest first, so threads sharing them out finish together.
    pub blocks: Vec<Block>,
    /// Each rule's key per entity (0 for none), band 0 of a block not split.
    keys: &'e [Vec<u64>],
    /// Per rule, the pieces' keys in every band of the entities whose block
    /// was split.
    pieces: Vec<HashMap<u32, [u64; BANDS]>>,
    /// Blocks over [`MAX_BLOCK`] that were split.
    pub split: u64,
    /// Pieces still over [`MAX_BLOCK`] at the deepest level (records alike
    /// in every MinHash), cut into runs.
    pub cut_into_runs: u64,
}

impl<'e> Blocks<'e> {
    pub fn new(entities: &'e Entities, params: &LinkageParams) -> Self {
        let rules = params.blocking.len();
        let keys = &entities.keys;
        let mut this = Self {
            blocks: Vec::new(),
            keys,
            pieces: vec![HashMap::new(); rules],
            split: 0,
            cut_into_runs: 0,
        };
        for rule in 0..rules {
            let mut members: HashMap<u64, Vec<u32>> = HashMap::new();
            for (i, &key) in this.keys[rule].iter().enumerate() {
                if key != 0 {
                    members.entry(key).or_default().push(i as u32);
                }
            }
            let mut oversized = Vec::new();
            for (key, m) in members {
                if m.len() > MAX_BLOCK {
                    oversized.push((key, m));
                } else if m.len() > 1 {
                    this.push(entities, rule, 0, m);
                }
            }
            for (key, m) in oversized {
                this.split += 1;
                let bits = MinHash::new(params, rule, &entities.filters, &m);
                for band in 0..BANDS {
                    let key = mix(key, band as u64 + 1);
                    this.cut(entities, &bits, rule, band, 0, key, m.clone());
                }
            }
        }
        this.blocks.sort_unstable_by(|a, b| {
            let order = |x: &Block| (std::cmp::Reverse(x.members.len()), x.rule, x.band);
            order(a)
                .cmp(&order(b))
                .then_with(|| a.members.cmp(&b.members))
        });
        this
    }

    /// Adds a block, its members grouped by organisation so a walk pairs
    /// only across them.
    fn push(&mut self, entities: &Entities, rule: usize, band: usize, mut members: Vec<u32>) {
        members.sort_unstable_by_key(|&i| (entities.organisations[i as usize], i));
        self.blocks.push(Block {
            rule,
            band,
            members,
        });
    }

    /// Cuts `members` (of an oversized block of `rule`, in `band`, keyed
    /// `key` so far) by their MinHash at `depth`, cutting deeper any piece
    /// still over the cap, and records each member's piece.
    #[allow(clippy::too_many_arguments)]
    fn cut(
        &mut self,
        entities: &Entities,
        bits: &MinHash,
        rule: usize,
        band: usize,
        depth: u64,
        key: u64,
        members: Vec<u32>,
    ) {
        let function = band as u64 * MAX_DEPTH + depth;
        let mut pieces: HashMap<u64, Vec<u32>> = HashMap::new();
        for &i in &members {
            let hash = bits.of(entities.filters.row(i as usize), function);
            pieces.entry(mix(key, hash)).or_default().push(i);
        }
        for (key, piece) in pieces {
            if piece.len() <= MAX_BLOCK {
                self.piece(entities, rule, band, key, piece);
            } else if depth + 1 < MAX_DEPTH {
                self.cut(entities, bits, rule, band, depth + 1, key, piece);
            } else {
                self.cut_into_runs += 1;
                for (run, members) in piece.chunks(MAX_BLOCK).enumerate() {
                    let key = mix(key, run as u64 + 1);
                    self.piece(entities, rule, band, key, members.to_vec());
                }
            }
        }
    }

    /// Records a finished piece: its members' key in the band, and the block.
    fn piece(
        &mut self,
        entities: &Entities,
        rule: usize,
        band: usize,
        key: u64,
        members: Vec<u32>,
    ) {
        for &i in &members {
            self.pieces[rule].entry(i).or_insert([0; BANDS])[band] = key;
        }
        if members.len() > 1 {
            self.push(entities, rule, band, members);
        }
    }

    /// The entities whose pairs an incremental run must compare afresh:
    /// the `fresh` ones, and every member of a split block that holds a
    /// fresh one (a split block's pieces are cut by its members' bits, so a
    /// newcomer may move the others between pieces). Pairs of two other
    /// entities meet in the same passes as before.
    pub fn dirty(&self, fresh: &[bool]) -> Vec<bool> {
        let mut dirty = fresh.to_vec();
        for (rule, pieces) in self.pieces.iter().enumerate() {
            let touched: std::collections::HashSet<u64> = pieces
                .keys()
                .filter(|&&i| fresh[i as usize])
                .map(|&i| self.keys[rule][i as usize])
                .collect();
            for &i in pieces.keys() {
                if touched.contains(&self.keys[rule][i as usize]) {
                    dirty[i as usize] = true;
                }
            }
        }
        dirty
    }

    /// Entity `i`'s key in pass (`rule`, `band`); 0 for none.
    #[inline]
    fn key(&self, rule: usize, band: usize, i: usize) -> u64 {
        let pieces = &self.pieces[rule];
        if !pieces.is_empty()
            && let Some(keys) = pieces.get(&(i as u32))
        {
            return keys[band];
        }
        if band == 0 { self.keys[rule][i] } else { 0 }
    }

    /// Appends entity `i`'s keys in every pass before (`rule`, `band`), in
    /// pass order: two entities found together earlier share one of them.
    pub fn earlier_keys(&self, rule: usize, band: usize, i: usize, out: &mut Vec<u64>) {
        for r in 0..rule {
            out.extend((0..BANDS).map(|b| self.key(r, b, i)));
        }
        out.extend((0..band).map(|b| self.key(rule, b, i)));
    }

    /// How many keys [`Self::earlier_keys`] appends before (`rule`, `band`).
    pub fn passes_before(rule: usize, band: usize) -> usize {
        rule * BANDS + band
    }

    /// Pairs within the blocks' pieces, all rules together (a pair in
    /// several counts in each).
    pub fn pairs(&self) -> u64 {
        self.blocks
            .iter()
            .map(|b| (b.members.len() * (b.members.len() - 1) / 2) as u64)
            .sum()
    }

    /// Whether some pass puts entities `i` and `j` side by side, or, when
    /// none does, whether they share a blocking key at all (so a split
    /// block's bands are what kept them apart).
    pub fn together(&self, i: usize, j: usize) -> Together {
        let rules = self.keys.len();
        let passes = (0..rules).flat_map(|r| (0..BANDS).map(move |b| (r, b)));
        let mut shared = false;
        for (rule, band) in passes {
            let (a, b) = (self.key(rule, band, i), self.key(rule, band, j));
            if a != 0 && a == b {
                return Together::Compared;
            }
            let (ka, kb) = (self.keys[rule][i], self.keys[rule][j]);
            shared |= ka != 0 && ka == kb;
        }
        if shared {
            Together::KeptApartBySplitting
        } else {
            Together::NoSharedKey
        }
    }
}

/// Whether blocking compares a pair (`Blocks::together`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Together {
    Compared,
    /// They share a key, but only of split blocks, whose bands kept them
    /// in different pieces.
    KeptApartBySplitting,
    NoSharedKey,
}

/// Whether two records share any piece: the bench's count of true pairs
/// blocking never compared.
pub fn together(
    entities: &Entities,
    params: &LinkageParams,
    pairs: &[(usize, usize)],
) -> Vec<Together> {
    let blocks = Blocks::new(entities, params);
    pairs.iter().map(|&(i, j)| blocks.together(i, j)).collect()
}

/// MinHash over the filter bits that tell a block's members apart: those
/// of the fields its rule does not take whole, and of those only the bits
/// no more than half the members have (a bit nearly all share, such as
/// their common family name's, would put most of them in one piece).
struct MinHash {
    /// Word ranges of those fields within an encoding.
    words: Vec<std::ops::Range<usize>>,
    /// Per word of an encoding, the bits left out.
    common: Vec<u64>,
}

impl MinHash {
    fn new(params: &LinkageParams, rule: usize, filters: &Filters, members: &[u32]) -> Self {
        let whole = params.fields_of(&params.blocking[rule], |take| take == Take::Whole);
        let words: Vec<std::ops::Range<usize>> = (0..params.fields.len())
            .filter(|f| !whole.contains(f))
            .map(|f| params.field_words(f))
            .collect();
        let stride = params.words();
        let mut counts = vec![0u32; stride * 64];
        for &i in members {
            let row = filters.row(i as usize);
            for w in words.iter().flat_map(Clone::clone) {
                let mut word = row[w];
                while word != 0 {
                    counts[w * 64 + word.trailing_zeros() as usize] += 1;
                    word &= word - 1;
                }
            }
        }
        let half = members.len() as u32 / 2;
        let common = (0..stride)
            .map(|w| {
                (0..64)
                    .filter(|b| counts[w * 64 + b] > half)
                    .fold(0u64, |word, b| word | 1 << b)
            })
            .collect();
        Self { words, common }
    }

    /// The smallest hash (under `function`) of a set bit's position in an
    /// entity's filters, or `u64::MAX` for none (so records with nothing to
    /// tell them apart, or no filters, share a piece).
    fn of(&self, filters: &[u64], function: u64) -> u64 {
        let seed = mix(0x6d69_6e68_6173_6800, function + 1);
        let mut min = u64::MAX;
        for range in &self.words {
            for w in range.clone() {
                let mut word = filters[w] & !self.common[w];
                while word != 0 {
                    let position = (w * 64) as u64 + u64::from(word.trailing_zeros());
                    min = min.min(mix(seed, position));
                    word &= word - 1;
                }
            }
        }
        min
    }
}

/// Two numbers mixed into one (SplitMix64's finaliser over their sum):
/// piece keys and MinHash functions. Not secret; the filters' bits are
/// already keyed.
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entities::Entity;
    use crate::sequence::Sequence;
    use crate::{Encoder, Identity};
    use joinery_crypto::keys::SecretKey;

    /// Two organisations' records of `n` Harrises born in 2015 (one
    /// family-name-and-birth-year block of 2n), the second copy of every
    /// third with its given name mistyped; `alike` makes everyone the same.
    fn harrises(n: usize, alike: bool) -> (Entities, LinkageParams) {
        // Version 5 keys the family name's Soundex with the birth year.
        let params = LinkageParams::canonical_version(5);
        let encoder = Encoder::new(&SecretKey::from_bytes([5; 32]), &params).unwrap();
        let mut sequence = Sequence::new(0x4a11);
        let mut next = |k: usize| sequence.below(k);
        let letters = |k: usize, next: &mut dyn FnMut(usize) -> usize| -> String {
            (0..k).map(|_| char::from(b'A' + next(26) as u8)).collect()
        };
        let mut out = [Vec::new(), Vec::new()];
        for person in 0..n {
            let (given, dob, postcode) = if alike {
                (
                    "ALEX".to_owned(),
                    "2015-05-05".to_owned(),
                    "M1 1AA".to_owned(),
                )
            } else {
                let given = letters(5 + next(3), &mut next);
                let dob = format!("2015-{:02}-{:02}", 1 + next(12), 1 + next(28));
                (given, dob, format!("M{} {}AB", 1 + next(40), next(10)))
            };
            for organisation in 0..2u32 {
                let mut given = given.clone();
                if organisation == 1 && person % 3 == 0 && !alike {
                    given.replace_range(2..3, "Z");
                }
                let identity = Identity::new()
                    .with("given_name", Some(&given))
                    .with("family_name", Some("HARRIS"))
                    .with("date_of_birth", Some(&dob))
                    .with("sex", Some("male"))
                    .with("postcode", Some(&postcode));
                out[organisation as usize].push(Entity {
                    organisation,
                    nhs: None,
                    encoding: encoder.encode(&identity),
                });
            }
        }
        (Entities::numbered(out.concat(), &params), params)
    }

    #[test]
    fn an_oversized_block_is_split_so_alike_pairs_meet_and_no_piece_exceeds_the_cap() {
        let (entities, params) = harrises(4000, false);
        let blocks = Blocks::new(&entities, &params);
        assert_eq!((blocks.split, blocks.cut_into_runs), (1, 0));
        assert!(blocks.blocks.iter().all(|b| b.members.len() <= MAX_BLOCK));
        let pairs: Vec<(usize, usize)> = (0..4000).map(|i| (i, 4000 + i)).collect();
        let met = together(&entities, &params, &pairs);
        let compared = met.iter().filter(|&&t| t == Together::Compared).count();
        assert!(
            compared >= 3990,
            "true pairs put side by side: {compared} of 4000"
        );
        // Strangers in the block meet far less often than once each.
        let strangers: Vec<(usize, usize)> =
            (0..4000).map(|i| (i, 4000 + (i + 1) % 4000)).collect();
        let met = together(&entities, &params, &strangers);
        let apart = met
            .iter()
            .filter(|&&t| t == Together::KeptApartBySplitting)
            .count();
        assert!(apart > 2000, "strangers kept apart: {apart} of 4000");
        // Pieces of one band hold each record once.
        for band in 0..BANDS {
            let mut seen = vec![false; entities.len()];
            for block in blocks
                .blocks
                .iter()
                .filter(|b| b.rule == 0 && b.band == band)
            {
                for &m in &block.members {
                    assert!(!std::mem::replace(&mut seen[m as usize], true));
                }
            }
        }
    }

    #[test]
    fn records_alike_at_every_level_are_cut_into_runs_under_the_cap() {
        let (entities, params) = harrises(3000, true);
        let blocks = Blocks::new(&entities, &params);
        // Every rule's block holds all 6,000 alike records.
        let rules = params.blocking.len() as u64;
        assert_eq!(blocks.split, rules);
        assert_eq!(blocks.cut_into_runs, rules * BANDS as u64);
        assert!(blocks.blocks.iter().all(|b| b.members.len() <= MAX_BLOCK));
    }

    #[test]
    fn a_pair_is_found_first_by_one_pass_only() {
        let (entities, params) = harrises(4000, false);
        let blocks = Blocks::new(&entities, &params);
        // For each pair a walk meets, the passes before its block that
        // also hold it: the pair is compared there (first) exactly once.
        let mut firsts: HashMap<(u32, u32), usize> = HashMap::new();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for block in &blocks.blocks {
            let passes = Blocks::passes_before(block.rule, block.band);
            for (x, &i) in block.members.iter().enumerate() {
                for &j in &block.members[x + 1..] {
                    let organisations = entities.organisations();
                    if organisations[i as usize] == organisations[j as usize] {
                        continue;
                    }
                    a.clear();
                    b.clear();
                    blocks.earlier_keys(block.rule, block.band, i as usize, &mut a);
                    blocks.earlier_keys(block.rule, block.band, j as usize, &mut b);
                    assert_eq!(a.len(), passes);
                    let again = a.iter().zip(&b).any(|(x, y)| *x != 0 && x == y);
                    if !again {
                        *firsts.entry((i, j)).or_default() += 1;
                    }
                }
            }
        }
        assert!(firsts.values().all(|&n| n == 1));
        let pairs: Vec<(usize, usize)> = (0..4000).map(|i| (i, 4000 + i)).collect();
        let met = together(&entities, &params, &pairs);
        for ((i, j), t) in pairs.iter().zip(met) {
            let first = firsts.contains_key(&(*i as u32, *j as u32));
            assert_eq!(first, t == Together::Compared, "pair {i}, {j}");
        }
    }
}
