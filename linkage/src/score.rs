//! Fellegi–Sunter scoring. Each field of a pair falls into an agreement level
//! by the Dice similarity of its filters; a level's weight is
//! log2(m / u), where m is how often true matches show that level and u how
//! often non-matches do. m, u and the share of matches among the candidates
//! are estimated by expectation–maximisation over the candidate pairs (u
//! starts from random pairs, which are almost all non-matches), so no
//! labelled data is needed. Both m and u are fitted on the candidates
//! because blocking makes candidate non-matches agree far more often than
//! random pairs do (every pair blocked on the date of birth agrees on it).

/// Lower Dice bounds of the agreement levels 0, 1, 2; below the last is level 3.
pub const LEVEL_BOUNDS: [f64; 3] = [0.95, 0.85, 0.70];
pub const LEVELS: usize = LEVEL_BOUNDS.len() + 1;
/// A field missing on either side: no evidence either way.
pub const MISSING: u8 = 7;

/// The agreement level of a Dice similarity.
#[inline]
pub fn level(dice: f64) -> u8 {
    LEVEL_BOUNDS.iter().take_while(|&&b| dice < b).count() as u8
}

/// A pair's levels, three bits per field.
pub type Pattern = u64;

pub fn pattern_level(pattern: Pattern, field: usize) -> u8 {
    ((pattern >> (3 * field)) & 7) as u8
}

pub fn with_level(pattern: Pattern, field: usize, level: u8) -> Pattern {
    pattern | (u64::from(level) << (3 * field))
}

/// m and u per field and level, and the prior share of matches.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Model {
    pub m: Vec<[f64; LEVELS]>,
    pub u: Vec<[f64; LEVELS]>,
    pub prior: f64,
    pub iterations: usize,
}

const FLOOR: f64 = 1e-6;

impl Model {
    /// Estimates the model by EM over the candidate patterns and their
    /// counts, starting u from the level counts of random pairs.
    pub fn estimate(
        fields: usize,
        random: &[(Pattern, u64)],
        candidates: &[(Pattern, u64)],
    ) -> Self {
        let u = level_shares(fields, random.iter().map(|(p, n)| (*p, *n as f64)));
        let mut model = Self {
            m: vec![[0.90, 0.05, 0.03, 0.02]; fields],
            u,
            prior: 0.1,
            iterations: 0,
        };
        for _ in 0..100 {
            let mut total = 0.0;
            let mut matched = 0.0;
            let weighted: Vec<(Pattern, f64, f64)> = candidates
                .iter()
                .map(|&(p, n)| {
                    let n = n as f64;
                    let w = model.probability(p) * n;
                    total += n;
                    matched += w;
                    (p, w, n - w)
                })
                .collect();
            let m = level_shares(fields, weighted.iter().map(|&(p, w, _)| (p, w)));
            let u = level_shares(fields, weighted.iter().map(|&(p, _, v)| (p, v)));
            let prior = (matched / total.max(1.0)).clamp(FLOOR, 1.0 - FLOOR);
            let change =
                (prior - model.prior).abs() + distance(&m, &model.m) + distance(&u, &model.u);
            model.m = m;
            model.u = u;
            model.prior = prior;
            model.iterations += 1;
            if change < 1e-6 {
                break;
            }
        }
        model
    }

    /// log2 of the Bayes factor for a match.
    pub fn weight(&self, pattern: Pattern) -> f64 {
        (0..self.m.len())
            .map(|f| match pattern_level(pattern, f) {
                MISSING => 0.0,
                l => (self.m[f][l as usize] / self.u[f][l as usize]).log2(),
            })
            .sum()
    }

    /// The posterior probability that a pair with this pattern is a match.
    pub fn probability(&self, pattern: Pattern) -> f64 {
        let odds = self.prior / (1.0 - self.prior) * self.weight(pattern).exp2();
        odds / (1.0 + odds)
    }
}

fn distance(a: &[[f64; LEVELS]], b: &[[f64; LEVELS]]) -> f64 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .sum()
}

/// Shares of each level per field, over weighted patterns (missing levels
/// left out), floored so no weight is infinite.
fn level_shares(
    fields: usize,
    patterns: impl Iterator<Item = (Pattern, f64)>,
) -> Vec<[f64; LEVELS]> {
    let mut counts = vec![[0.0; LEVELS]; fields];
    for (p, w) in patterns {
        for (f, count) in counts.iter_mut().enumerate() {
            let l = pattern_level(p, f);
            if l != MISSING {
                count[l as usize] += w;
            }
        }
    }
    counts
        .into_iter()
        .map(|c| {
            let total: f64 = c.iter().sum();
            let mut shares = [0.0; LEVELS];
            for (s, n) in shares.iter_mut().zip(c) {
                *s = ((n + FLOOR) / (total + FLOOR * LEVELS as f64)).max(FLOOR);
            }
            shares
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(levels: &[u8]) -> Pattern {
        levels
            .iter()
            .enumerate()
            .fold(0, |p, (f, &l)| with_level(p, f, l))
    }

    #[test]
    fn levels_follow_the_bounds() {
        assert_eq!(level(1.0), 0);
        assert_eq!(level(0.9), 1);
        assert_eq!(level(0.75), 2);
        assert_eq!(level(0.2), 3);
        let p = pattern(&[0, 3, MISSING]);
        assert_eq!(pattern_level(p, 1), 3);
        assert_eq!(pattern_level(p, 2), MISSING);
    }

    #[test]
    fn em_separates_a_mixture_of_matches_and_non_matches() {
        // Random pairs: three fields, almost always disagreeing.
        let random = [
            (pattern(&[3, 3, 3]), 9_000),
            (pattern(&[0, 3, 3]), 900),
            (pattern(&[3, 0, 3]), 90),
            (pattern(&[0, 0, 3]), 10),
        ];
        // Candidates: 100 matches agreeing everywhere (a few with one typo),
        // 1,000 non-matches agreeing only on the blocking field.
        let candidates = [
            (pattern(&[0, 0, 0]), 90),
            (pattern(&[0, 1, 0]), 10),
            (pattern(&[0, 3, 3]), 1_000),
        ];
        let model = Model::estimate(3, &random, &candidates);
        assert!((model.prior - 100.0 / 1_100.0).abs() < 0.02, "{model:?}");
        assert!(model.probability(pattern(&[0, 0, 0])) > 0.99);
        assert!(model.probability(pattern(&[0, 1, 0])) > 0.9);
        assert!(model.probability(pattern(&[0, 3, 3])) < 0.01);
        // A missing field is no evidence either way.
        assert!(model.weight(pattern(&[0, 0, MISSING])) < model.weight(pattern(&[0, 0, 0])));
        assert!(model.weight(pattern(&[0, 0, MISSING])) > model.weight(pattern(&[0, 0, 3])));
    }
}
