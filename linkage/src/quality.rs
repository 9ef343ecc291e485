//! Linkage quality without labels: from the fitted model, how many of the
//! links between two organisations' records are likely wrong, and how many
//! of their true pairs were likely left apart.
//!
//! Every candidate pair's match probability is the model's own estimate,
//! so summing it answers both questions:
//!
//! - **expected false links**: over the links clustering kept, the sum of
//!   (1 − probability);
//! - **expected missed pairs**: over the candidates below the threshold
//!   that clustering left in different people, the sum of probability. A
//!   pair the matcher dropped early (it could not reach the threshold) has
//!   no probability of its own: each is compared in full for the estimate
//!   when blocking makes few pairs, else a fixed sample of one in up to
//!   [`MAX_PRUNED_SAMPLE`], each standing for the rest (`PrunedSample`).
//!
//! Pairs whose records both carry NHS pseudonyms are left out: those
//! decide, not the model (and so are pairs left apart because both their
//! people carry one). So are true pairs blocking never put side by side
//! (no label-free estimate of those is made here; `joinery-bench linkage`
//! counts them against the truth). The estimate is as good as the model's
//! calibration: the bench prints it next to the measured figures.

use crate::cluster::Link;
use crate::encode::Pseudonym;

/// A pair whose probability is below this is added up as it is found; one
/// at or above it (and below the threshold) is kept until clustering is
/// done, so a pair joined through a third record does not count as missed.
pub(crate) const NEAR: f64 = 0.01;

/// The sparsest sample of the pairs the matcher dropped early: one in this
/// many is compared in full (a few per cent of the linking time).
pub const MAX_PRUNED_SAMPLE: u64 = 64;

/// Blocks with up to this many pairs have every dropped pair compared in
/// full; beyond, the sample thins in proportion, down to
/// [`MAX_PRUNED_SAMPLE`].
const PRUNED_IN_FULL: u64 = 20_000_000;

/// What the model expects of the links between two organisations.
#[derive(Debug, Clone, PartialEq)]
pub struct PairQuality {
    /// The two organisations (as the entities number them), smaller first.
    pub organisations: (u32, u32),
    /// Fuzzy links clustering kept between their records.
    pub links: u64,
    /// Of those, how many are expected to be wrong.
    pub expected_false: f64,
    /// True pairs of their records expected to have been left apart among
    /// those blocking compared.
    pub expected_missed: f64,
}

/// What the linking pass adds up on one thread: the probabilities of the
/// pairs below the threshold, far ones summed per organisation pair and
/// near ones kept.
pub(crate) struct Tally {
    organisations: usize,
    far: Vec<f64>,
    near: Vec<(u32, u32, f64)>,
}

impl Tally {
    /// For entities whose organisations are numbered below `organisations`.
    pub(crate) fn new(organisations: usize) -> Self {
        Self {
            organisations,
            far: vec![0.0; organisations * organisations],
            near: Vec::new(),
        }
    }

    /// A pair of entities `(i, j)` of organisations `(a, b)` below the
    /// threshold with `probability`, standing for `times` pairs.
    #[inline]
    pub(crate) fn below(
        &mut self,
        (a, b): (u32, u32),
        (i, j): (usize, usize),
        probability: f64,
        times: f64,
    ) {
        if probability < NEAR {
            let cell = self.cell(a, b);
            self.far[cell] += probability * times;
        } else {
            self.near.push((i as u32, j as u32, probability * times));
        }
    }

    fn cell(&self, a: u32, b: u32) -> usize {
        let (a, b) = (a.min(b) as usize, a.max(b) as usize);
        a * self.organisations + b
    }

    pub(crate) fn merge(&mut self, other: Self) {
        for (into, from) in self.far.iter_mut().zip(other.far) {
            *into += from;
        }
        self.near.extend(other.near);
    }

    /// The quality of each organisation pair with a link or an expected
    /// miss, once clustering has put each entity in `people`.
    pub(crate) fn quality(
        self,
        organisations: &[u32],
        nhs: &[Option<Pseudonym>],
        people: &[u32],
        links: &[Link],
    ) -> Vec<PairQuality> {
        let n = self.organisations;
        let mut cells: Vec<PairQuality> = (0..n * n)
            .map(|c| PairQuality {
                organisations: ((c / n) as u32, (c % n) as u32),
                links: 0,
                expected_false: 0.0,
                expected_missed: self.far[c],
            })
            .collect();
        let pair_of = |i: u32, j: u32| (organisations[i as usize], organisations[j as usize]);
        for link in links {
            let (a, b) = (link.a as usize, link.b as usize);
            if people[a] != people[b] || (nhs[a].is_some() && nhs[b].is_some()) {
                continue;
            }
            let (x, y) = pair_of(link.a, link.b);
            let cell = &mut cells[self.cell(x, y)];
            cell.links += 1;
            cell.expected_false += 1.0 - link.probability;
        }
        // Each person's NHS pseudonym, if any of its records has one: two
        // people with one each are kept apart by those, not by the model.
        let mut person_nhs: Vec<bool> = vec![false; people.len()];
        for (i, &person) in people.iter().enumerate() {
            person_nhs[person as usize] |= nhs[i].is_some();
        }
        for &(i, j, missed) in &self.near {
            let (x, y) = (people[i as usize] as usize, people[j as usize] as usize);
            if x != y && !(person_nhs[x] && person_nhs[y]) {
                let (x, y) = pair_of(i, j);
                cells[self.cell(x, y)].expected_missed += missed;
            }
        }
        cells
            .into_iter()
            .filter(|c| c.links > 0 || c.expected_missed > 0.0)
            .collect()
    }
}

/// Which of the pairs the matcher dropped early are compared in full for
/// the estimate: one in `every`, a fixed choice so results repeat.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PrunedSample {
    every: u64,
}

impl PrunedSample {
    /// For blocks holding `pairs` pairs.
    pub(crate) fn for_pairs(pairs: u64) -> Self {
        Self {
            every: pairs.div_ceil(PRUNED_IN_FULL).clamp(1, MAX_PRUNED_SAMPLE),
        }
    }

    #[inline]
    pub(crate) fn takes(self, i: usize, j: usize) -> bool {
        self.every == 1 || crate::blocking::mix(i as u64, j as u64).is_multiple_of(self.every)
    }

    /// How many pairs a sampled one stands for.
    pub(crate) fn times(self) -> f64 {
        self.every as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_kept_and_pairs_left_apart_add_up_per_organisation_pair() {
        // Entities 0, 1, 5 (organisation 0) and 2, 3, 4 (organisation 1):
        // 0 and 2 one person, 1 and 4 another (by their NHS pseudonyms), 3
        // and 5 alone.
        let organisations = [0, 0, 1, 1, 1, 0];
        let nhs = [
            None,
            Some([1; 32]),
            None,
            None,
            Some([1; 32]),
            Some([2; 32]),
        ];
        let people = [0, 1, 0, 3, 1, 5];
        let link = |a, b, probability| Link {
            a,
            b,
            probability,
            weight: 0.0,
        };
        let mut tally = Tally::new(2);
        tally.below((0, 1), (1, 3), 0.3, 1.0);
        tally.below((1, 0), (3, 0), 0.001, 64.0);
        // Joined through clustering after all: not missed.
        tally.below((0, 1), (0, 2), 0.2, 1.0);
        // Kept apart by their people's different NHS pseudonyms.
        tally.below((0, 1), (5, 4), 0.5, 1.0);
        let mut other = Tally::new(2);
        other.below((0, 1), (1, 3), 0.1, 1.0);
        tally.merge(other);
        let quality = tally.quality(
            &organisations,
            &nhs,
            &people,
            // The second is refused by clustering; the third is decided
            // by NHS pseudonyms.
            &[link(0, 2, 0.9), link(1, 3, 0.99), link(1, 4, 0.95)],
        );
        assert_eq!(quality.len(), 1);
        let q = &quality[0];
        assert_eq!((q.organisations, q.links), ((0, 1), 1));
        assert!((q.expected_false - 0.1).abs() < 1e-9);
        assert!((q.expected_missed - (0.3 + 0.064 + 0.1)).abs() < 1e-9);
    }
}
