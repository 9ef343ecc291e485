//! Fellegi–Sunter scoring. Each field of a pair falls into an agreement level
//! by the Dice similarity of its filters (from parameters version 7, of the
//! tokens they hold, estimated from their bits:
//! [`crate::params::Similarity`]); a level's weight is
//! log2(m / u), where m is how often true matches show that level and u how
//! often non-matches do. No labelled data is needed (the method Splink uses):
//!
//! - u is measured on random pairs, which are almost all non-matches;
//! - m is estimated by expectation–maximisation over each blocking rule's
//!   pairs separately (all of them, also those another rule finds too), with
//!   the non-matches' side held fixed and the rule's own fields left out
//!   (every pair of the rule agrees on them, so they say nothing there); the
//!   rules' estimates are pooled, weighted by their expected matches;
//! - in a rule's EM, how likely a non-match is to show a pattern is counted
//!   jointly on the rule's pairs *within* one organisation (distinct local
//!   ids, so non-matches, that share the rule's blocks), not taken from the
//!   random pairs field by field. Non-matches that share a block are not
//!   like random pairs: in a block of equal birth dates, names salted with
//!   the birth year agree 18 times as often as at random, and an equal
//!   given name nearly always means an equal sex. Left to the random
//!   pairs, those coincidences (which at half a million records a side
//!   outnumber the true matches) would be explained as matches, and EM
//!   would learn that matches often disagree on family name. Patterns the
//!   sample does not show often enough (see below) fall back to the product
//!   of its per-field shares; a rule with too few such pairs uses the
//!   random pairs;
//! - the prior is the chance that two random records match: the expected
//!   number of matches among the distinct candidates (each scored by the
//!   model of the first rule that found it, which EM calibrated on pairs
//!   like it) over all pairs;
//! - a pair's verdict multiplies its fields' evidence as if the fields were
//!   independent, which over-counts what a household shares: twins agree on
//!   family name, date of birth, sex and postcode, and only the given name
//!   tells them apart. So a pair that would link is judged again as its
//!   rule's EM judges pairs, against how often pairs within one
//!   organisation in that rule's blocks show its pattern (twins and
//!   siblings are there), and the lower verdict stands. It is judged also
//!   as if its fields that share some letters (levels 1 to 3) agreed in
//!   full: a typo that leaves few letters of a twin's family name alike
//!   makes a pattern too rare in the sample to judge, and must not make the
//!   pair look more like one child than the twins themselves do.
//!
//! Only patterns with a field that does not agree, seen at least
//! [`MIN_SHOWN`] times, are judged by the sample jointly (on which fields
//! agree; each field's exact level by its share among levels alike, which
//! for a field judged at the best of several encodings is counted in the
//! pairs that agree on the same fields, drawn towards its share in the
//! whole sample by [`MIN_SHOWN`] pairs' worth: whether such a field's
//! salts are shared, and so how exactly it can agree, goes with the other
//! fields, and siblings share a postcode exactly where most pairs in a
//! block with postcodes merely alike are neighbours): pairs
//! within one organisation that agree everywhere are more likely its
//! duplicate records of one child than two children, so they say nothing
//! about non-matches. A pattern agreeing on every field the rule leaves,
//! one of them judged at the best of several encodings, is judged field by
//! field on the sample: such a field's weight, learnt from random pairs
//! that seldom share its salts, counts the salts' agreement again (names
//! agreeing under each other's Soundex code, with nothing else to compare,
//! looked like one child at a million children).

/// Lower Dice bounds of the agreement levels 0 to 3, in percent; below the
/// last is level 4. Level 3 (a few letters shared) keeps a nickname or a
/// look-alike name apart from an unrelated one, which twins have.
pub const LEVEL_BOUNDS: [u32; 4] = [95, 85, 70, 40];
pub const LEVELS: usize = LEVEL_BOUNDS.len() + 1;
/// A field missing on either side: no evidence either way.
pub const MISSING: u8 = 7;
/// Whether a level agrees (Dice 0.70 or more). Levels below that are a
/// different name, or one that shares a few letters (often a nickname).
fn agrees(level: u8) -> bool {
    level < 3
}

/// The agreement level of two filters with `common` bits in common and
/// `total` bits set between them (Dice = 2·common / total), in integers.
#[inline(always)]
pub fn level(common: u32, total: u32) -> u8 {
    let twice = 200 * u64::from(common);
    let total = u64::from(total);
    level_below(|b| twice < u64::from(b) * total)
}

/// The agreement level of a Dice coefficient (from 0 to 1).
#[inline(always)]
pub fn level_of_dice(dice: f32) -> u8 {
    level_below(|b| dice * 100.0 < b as f32)
}

/// How many of [`LEVEL_BOUNDS`] (in percent) a similarity is `below`: the
/// bounds fall, so the count of those not reached is the level.
#[inline(always)]
fn level_below(below: impl Fn(u32) -> bool) -> u8 {
    LEVEL_BOUNDS.iter().map(|&b| u8::from(below(b))).sum()
}

/// A pair's levels, three bits per field.
pub type Pattern = u64;

pub fn pattern_level(pattern: Pattern, field: usize) -> u8 {
    ((pattern >> (3 * field)) & 7) as u8
}

/// `pattern` with `field` at `level` (whatever level it had).
pub fn with_level(pattern: Pattern, field: usize, level: u8) -> Pattern {
    (pattern & !(7 << (3 * field))) | (u64::from(level) << (3 * field))
}

/// A field that stands in for others where they disagree entirely (see
/// [`crate::params::FieldEncoding::stands_in_for`]): a pair is judged on it
/// or on them, never on both, so what they share is not counted twice.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StandIn {
    pub field: usize,
    pub covers: Vec<usize>,
    /// The same field encoded again under another salt (a `name`d
    /// encoding, version 6): the field it covers first is judged at the
    /// better of the two levels, and this one is always missing, so a field
    /// agrees wherever any encoding whose salt the pair shares agrees, and
    /// is weighed once.
    #[serde(default)]
    pub best_of: bool,
}

impl StandIn {
    /// The stand-ins of `params`' fields.
    pub fn of(params: &crate::params::LinkageParams) -> Vec<Self> {
        let index = |name: &String| params.fields.iter().position(|f| f.name() == name);
        params
            .fields
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.stands_in_for.is_empty())
            .map(|(field, f)| {
                let covers: Vec<usize> = f.stands_in_for.iter().filter_map(index).collect();
                let best_of =
                    f.name.is_some() && covers.iter().all(|&c| params.fields[c].field == f.field);
                Self {
                    field,
                    covers,
                    best_of,
                }
            })
            .collect()
    }

    /// The pattern as it is judged: on the stand-in where every field it
    /// covers disagrees entirely (or is missing) and the stand-in agrees,
    /// those fields then missing; else on them, the stand-in missing.
    #[inline(always)]
    pub fn apply(&self, pattern: Pattern) -> Pattern {
        if self.best_of {
            let first = self.covers[0];
            let best = pattern_level(pattern, first).min(pattern_level(pattern, self.field));
            return with_level(with_level(pattern, first, best), self.field, MISSING);
        }
        let apart = self.covers.iter().all(|&f| {
            let l = pattern_level(pattern, f);
            l == LEVELS as u8 - 1 || l == MISSING
        });
        if apart && agrees(pattern_level(pattern, self.field)) {
            self.covers
                .iter()
                .fold(pattern, |p, &f| with_level(p, f, MISSING))
        } else {
            with_level(pattern, self.field, MISSING)
        }
    }
}

/// Every stand-in of `stand_ins` applied to `pattern`.
fn judged(stand_ins: &[StandIn], pattern: Pattern) -> Pattern {
    stand_ins.iter().fold(pattern, |p, s| s.apply(p))
}

/// m and u per field and level, the prior share of matches, and what each
/// blocking rule's EM learnt of its blocks.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Model {
    pub m: Vec<[f64; LEVELS]>,
    pub u: Vec<[f64; LEVELS]>,
    pub prior: f64,
    pub iterations: usize,
    /// One per blocking rule (none in a model stored before they were kept:
    /// its verdicts are then the fields' alone).
    #[serde(default)]
    pub rules: Vec<RuleModel>,
    /// Fields standing in for others: every pattern is judged as
    /// [`StandIn::apply`] makes it.
    #[serde(default)]
    pub stand_ins: Vec<StandIn>,
}

/// One blocking rule's view of its pairs: the share of matches among them,
/// and the patterns of non-matches that share its blocks.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RuleModel {
    /// The fields the rule's key takes whole: every pair of a block agrees
    /// on them, so they say nothing there. (A field it takes in part, such
    /// as a Soundex code or a birth year, still tells pairs apart.)
    pub whole_fields: Vec<usize>,
    pub prior: f64,
    /// Pattern counts of pairs within one organisation in the rule's
    /// sampled blocks, as observed (however few: a pattern is judged on
    /// them only when seen at least [`MIN_SHOWN`] times).
    pub non_matches: Vec<(Pattern, u64)>,
}

const FLOOR: f64 = 1e-6;

/// One blocking rule's pairs for estimation: the fields the rule blocks on
/// (left out of its EM), those of them it takes whole, the pattern counts
/// of all its pairs, of the candidates it was the first rule to find, and
/// of its pairs within one organisation (distinct local ids: non-matches
/// that share its blocks).
#[derive(Debug, Clone, Default)]
pub struct RuleCandidates {
    pub blocked_fields: Vec<usize>,
    pub whole_fields: Vec<usize>,
    pub patterns: Vec<(Pattern, u64)>,
    pub first: Vec<(Pattern, u64)>,
    pub non_matches: Vec<(Pattern, u64)>,
}

/// Fewer pairs within organisations than this, and a rule's non-matches
/// are judged by the random pairs instead.
const MIN_NON_MATCHES: u64 = 1_000;
/// A pattern seen fewer times than this in a sample of non-matches is
/// judged field by field.
pub const MIN_SHOWN: u64 = 5;

impl Model {
    /// Estimates the model: u from `random` pairs' patterns, m by EM per
    /// blocking rule, and the prior over `all_pairs` (every pair that could
    /// have been compared). Patterns are as compared, every field in them,
    /// and judged as the `stand_ins` make them. A stand-in's levels are
    /// shares of all pairs (where it does not stand in, it is no level):
    /// its weight is that of the event "the fields it covers disagree
    /// entirely and it agrees", which is how it is judged.
    pub fn estimate(
        fields: usize,
        random: &[(Pattern, u64)],
        rules: &[RuleCandidates],
        all_pairs: f64,
        stand_ins: &[StandIn],
    ) -> Self {
        let judge = |patterns: &[(Pattern, u64)]| -> Vec<(Pattern, u64)> {
            patterns
                .iter()
                .map(|&(p, n)| (judged(stand_ins, p), n))
                .collect()
        };
        let shape = Shape::new(fields, stand_ins);
        let random = &judge(random);
        let u = level_shares(&shape, random.iter().map(|(p, n)| (*p, *n as f64)), &[]);
        let mut pooled = vec![[0.0; LEVELS]; fields];
        let mut pooled_weight = vec![0.0; fields];
        let mut iterations = 0;
        let mut matches = 0.0;
        let mut rule_models = Vec::with_capacity(rules.len());
        for raw in rules {
            let rule = &RuleCandidates {
                blocked_fields: raw.blocked_fields.clone(),
                whole_fields: raw.whole_fields.clone(),
                patterns: judge(&raw.patterns),
                first: judge(&raw.first),
                non_matches: judge(&raw.non_matches),
            };
            let sample = match rule.non_matches.iter().map(|&(_, n)| n).sum::<u64>() {
                n if n >= MIN_NON_MATCHES => &rule.non_matches,
                _ => random,
            };
            let non_match = NonMatch::new(&shape, sample, &rule.blocked_fields);
            // Each pattern's non-match likelihood, worked out once: the
            // first-found patterns are among the rule's patterns.
            let likelihoods: Vec<f64> = rule
                .patterns
                .iter()
                .map(|&(p, _)| non_match.likelihood(p))
                .collect();
            let by_pattern: std::collections::HashMap<Pattern, f64> = rule
                .patterns
                .iter()
                .map(|&(p, _)| p)
                .zip(likelihoods.iter().copied())
                .collect();
            let u = |p: Pattern| {
                by_pattern
                    .get(&p)
                    .copied()
                    .unwrap_or_else(|| non_match.likelihood(p))
            };
            let (m, prior, its) = em_for_rule(&shape, &non_match, &likelihoods, rule);
            iterations += its;
            let total: f64 = rule.patterns.iter().map(|&(_, n)| n as f64).sum();
            let expected = prior * total;
            matches += rule
                .first
                .iter()
                .map(|&(p, n)| n as f64 * posterior(&m, prior, p, non_match.kept(p), u(p)))
                .sum::<f64>();
            for f in (0..fields).filter(|f| !rule.blocked_fields.contains(f)) {
                for (p, x) in pooled[f].iter_mut().zip(m[f]) {
                    *p += expected * x;
                }
                pooled_weight[f] += expected;
            }
            rule_models.push(RuleModel {
                whole_fields: rule.whole_fields.clone(),
                prior,
                non_matches: rule.non_matches.clone(),
            });
        }
        let m = pooled
            .into_iter()
            .zip(pooled_weight)
            .map(|(sums, w)| {
                if w > 0.0 {
                    sums.map(|x| (x / w).max(FLOOR))
                } else {
                    START_M
                }
            })
            .collect();
        Self {
            m,
            u,
            prior: (matches / all_pairs.max(1.0)).clamp(FLOOR * FLOOR, 0.5),
            iterations,
            rules: rule_models,
            stand_ins: stand_ins.to_vec(),
        }
    }

    /// log2 of the Bayes factor for a match, the pattern judged as the
    /// stand-ins make it.
    pub fn weight(&self, pattern: Pattern) -> f64 {
        let pattern = judged(&self.stand_ins, pattern);
        (0..self.m.len())
            .map(|f| self.level_weight(f, pattern_level(pattern, f)))
            .sum()
    }

    /// What field `f` at level `l` adds to the weight (nothing when missing).
    pub fn level_weight(&self, f: usize, l: u8) -> f64 {
        match l {
            MISSING => 0.0,
            l => (self.m[f][l as usize] / self.u[f][l as usize]).log2(),
        }
    }

    /// The posterior probability that a pair with this pattern is a match,
    /// its fields taken as independent.
    pub fn probability(&self, pattern: Pattern) -> f64 {
        let odds = self.prior / (1.0 - self.prior) * self.weight(pattern).exp2();
        odds / (1.0 + odds)
    }

    /// The verdict (probability, weight) on a pair that blocking rule
    /// `rule` found first, given the fields' verdict `(probability, weight)`
    /// on its pattern: lowered to the rule's own judgement where pairs
    /// within one organisation in the rule's blocks show the pattern often
    /// enough to say, or where it agrees everywhere on a field of several
    /// salts (see the module notes). The weight stays the log2
    /// Bayes factor that gives the probability under [`Model::prior`].
    pub fn verdict_in_rule(
        &self,
        rule: usize,
        pattern: Pattern,
        (probability, weight): (f64, f64),
    ) -> (f64, f64) {
        let Some(r) = self.rules.get(rule) else {
            return (probability, weight);
        };
        let pattern = judged(&self.stand_ins, pattern);
        let shape = Shape::new(self.m.len(), &self.stand_ins);
        let non_match = NonMatch::new(&shape, &r.non_matches, &r.whole_fields);
        // Judged as it is, and as if its fields that share some letters
        // agreed in full: a typo in a twin's family name must not make the
        // pair more likely one child than the twins themselves.
        let judge = |pattern| {
            let u = non_match
                .joint(pattern)
                .or_else(|| non_match.alike_everywhere(pattern))?;
            Some(posterior(
                &self.m,
                r.prior,
                pattern,
                non_match.kept(pattern),
                u,
            ))
        };
        let partly = 1..LEVELS as u8 - 1;
        let raised = non_match
            .kept(pattern)
            .filter(|&f| partly.contains(&pattern_level(pattern, f)))
            .fold(pattern, |p, f| with_level(p, f, 0));
        let Some(p) = std::iter::once(pattern)
            .chain((raised != pattern).then_some(raised))
            .filter_map(judge)
            .min_by(f64::total_cmp)
        else {
            return (probability, weight);
        };
        if p < probability {
            (p, log_odds(p) - log_odds(self.prior))
        } else {
            (probability, weight)
        }
    }
}

fn log_odds(p: f64) -> f64 {
    (p / (1.0 - p)).log2()
}

/// Where EM starts m: matches mostly agree.
const START_M: [f64; LEVELS] = [0.90, 0.05, 0.02, 0.02, 0.01];

/// How likely non-matches are to show each pattern, one rule's blocked
/// fields (and a pattern's missing fields) left out: counted on a sample of
/// non-matches where it shows the pattern often enough and the pattern has
/// a disagreeing field (see the module notes), else the product of the
/// fields' shares in that sample.
struct NonMatch<'s> {
    sample: &'s [(Pattern, u64)],
    shares: Vec<[f64; LEVELS]>,
    blocked: &'s [usize],
    /// Fields judged at the best of several encodings ([`Shape`]).
    best_of: &'s [usize],
}

impl<'s> NonMatch<'s> {
    fn new(shape: &'s Shape, sample: &'s [(Pattern, u64)], blocked: &'s [usize]) -> Self {
        let shares = level_shares(shape, sample.iter().map(|&(p, n)| (p, n as f64)), blocked);
        Self {
            sample,
            shares,
            blocked,
            best_of: &shape.best_of,
        }
    }

    /// The fields of `pattern` that carry evidence under this rule.
    fn kept(&self, pattern: Pattern) -> impl Iterator<Item = usize> + '_ {
        (0..self.shares.len())
            .filter(move |f| !self.blocked.contains(f) && pattern_level(pattern, *f) != MISSING)
    }

    fn likelihood(&self, pattern: Pattern) -> f64 {
        self.joint(pattern)
            .unwrap_or_else(|| self.field_by_field(pattern))
    }

    /// The product of the kept fields' shares of their levels.
    fn field_by_field(&self, pattern: Pattern) -> f64 {
        self.kept(pattern)
            .map(|f| self.shares[f][pattern_level(pattern, f) as usize])
            .product()
    }

    /// How likely a non-match is to show `pattern` where every kept field
    /// agrees and one of them is judged at the best of several encodings:
    /// field by field on the sample. Such a field's weight is learnt from
    /// random pairs, which seldom share its salts, so its agreement counts
    /// the salts' agreement again; pairs in the rule's blocks share the
    /// rule's keys. (Pairs agreeing on every field otherwise keep the
    /// fields' verdict: see the module notes.)
    fn alike_everywhere(&self, pattern: Pattern) -> Option<f64> {
        let alike = self
            .kept(pattern)
            .all(|f| agrees(pattern_level(pattern, f)));
        let salted = self.kept(pattern).any(|f| self.best_of.contains(&f));
        (alike && salted).then(|| self.field_by_field(pattern))
    }

    /// How likely a non-match is to show `pattern` on its kept fields,
    /// counted jointly where the pattern has a field that does not agree:
    /// the share of the sample that agrees or not on the same fields (seen
    /// at least [`MIN_SHOWN`] times), times each field's share of its exact
    /// level among the levels that agree or not alike (for a field judged
    /// at the best of several encodings, in those pairs, drawn towards the
    /// whole sample's share). Joint on whether fields agree, so a
    /// household's pattern is recognised also when one of its names has a
    /// typo; field by field within that.
    fn joint(&self, pattern: Pattern) -> Option<f64> {
        let agrees_at = |p: Pattern, f: usize| agrees(pattern_level(p, f));
        if self.kept(pattern).all(|f| agrees_at(pattern, f)) {
            return None;
        }
        let kept: Vec<usize> = self.kept(pattern).collect();
        // Of the pairs showing the pattern's shape, how many show each kept
        // field at the pattern's exact level.
        let mut exact = vec![0u64; kept.len()];
        let (mut showing, mut comparable) = (0u64, 0u64);
        for &(r, n) in self.sample {
            if kept.iter().all(|&f| pattern_level(r, f) != MISSING) {
                comparable += n;
                if kept
                    .iter()
                    .all(|&f| agrees_at(r, f) == agrees_at(pattern, f))
                {
                    showing += n;
                    for (e, &f) in exact.iter_mut().zip(&kept) {
                        if pattern_level(r, f) == pattern_level(pattern, f) {
                            *e += n;
                        }
                    }
                }
            }
        }
        if showing < MIN_SHOWN {
            return None;
        }
        // A field's exact level among the levels alike: for a field judged
        // at the best of several encodings, as the pairs that show the
        // shape have it, drawn towards the whole sample's share by
        // MIN_SHOWN pairs' worth of it; for others, the whole sample's.
        let within: f64 = kept
            .iter()
            .zip(&exact)
            .map(|(&f, &e)| {
                let level = pattern_level(pattern, f);
                let alike: f64 = (0..LEVELS as u8)
                    .filter(|&l| agrees(l) == agrees(level))
                    .map(|l| self.shares[f][l as usize])
                    .sum();
                let overall = self.shares[f][level as usize] / alike;
                if !self.best_of.contains(&f) {
                    return overall;
                }
                let prior = MIN_SHOWN as f64;
                (e as f64 + prior * overall) / (showing as f64 + prior)
            })
            .product();
        Some(showing as f64 / comparable as f64 * within)
    }
}

/// The posterior of a match: m over `kept` fields against the non-match
/// likelihood `u`.
fn posterior(
    m: &[[f64; LEVELS]],
    prior: f64,
    pattern: Pattern,
    kept: impl Iterator<Item = usize>,
    u: f64,
) -> f64 {
    let m: f64 = kept
        .map(|f| m[f][pattern_level(pattern, f) as usize])
        .product();
    let odds = prior / (1.0 - prior) * m / u;
    odds / (1.0 + odds)
}

/// EM over one rule's pairs with the non-matches' side fixed (`likelihoods`,
/// one per pattern of the rule) and the rule's fields left out: returns m,
/// the share of matches among the rule's pairs, and the iterations.
fn em_for_rule(
    shape: &Shape,
    non_match: &NonMatch,
    likelihoods: &[f64],
    rule: &RuleCandidates,
) -> (Vec<[f64; LEVELS]>, f64, usize) {
    let mut m = vec![START_M; shape.fields];
    let mut prior: f64 = 0.1;
    let total: f64 = rule.patterns.iter().map(|&(_, n)| n as f64).sum();
    if total == 0.0 {
        return (m, 0.0, 0);
    }
    let mut iterations = 0;
    for _ in 0..200 {
        iterations += 1;
        let mut matched = 0.0;
        let weighted: Vec<(Pattern, f64)> = rule
            .patterns
            .iter()
            .zip(likelihoods)
            .map(|(&(p, n), &u)| {
                let w = n as f64 * posterior(&m, prior, p, non_match.kept(p), u);
                matched += w;
                (p, w)
            })
            .collect();
        let next = level_shares(shape, weighted.into_iter(), &rule.blocked_fields);
        let next_prior = (matched / total).clamp(FLOOR, 1.0 - FLOOR);
        let change = (next_prior - prior).abs() + distance(&next, &m);
        m = next;
        prior = next_prior;
        if change < 1e-7 {
            break;
        }
    }
    (m, prior, iterations)
}

fn distance(a: &[[f64; LEVELS]], b: &[[f64; LEVELS]]) -> f64 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .sum()
}

/// The fields of the patterns being counted, and which of them stand in
/// for others.
struct Shape {
    fields: usize,
    stand_ins: Vec<usize>,
    /// The fields judged at the best of several encodings under different
    /// salts ([`StandIn::best_of`]).
    best_of: Vec<usize>,
}

impl Shape {
    fn new(fields: usize, stand_ins: &[StandIn]) -> Self {
        Self {
            fields,
            stand_ins: stand_ins.iter().map(|s| s.field).collect(),
            best_of: stand_ins
                .iter()
                .filter(|s| s.best_of)
                .map(|s| s.covers[0])
                .collect(),
        }
    }
}

/// Shares of each level per field, over weighted patterns, floored so no
/// weight is infinite. Missing levels are left out, except a stand-in's:
/// they are the pairs where it does not stand in, so its shares are of all
/// pairs.
fn level_shares(
    shape: &Shape,
    patterns: impl Iterator<Item = (Pattern, f64)>,
    skip: &[usize],
) -> Vec<[f64; LEVELS]> {
    let mut counts = vec![[0.0; LEVELS]; shape.fields];
    let mut not_standing_in = vec![0.0; shape.fields];
    for (p, w) in patterns {
        for (f, count) in counts.iter_mut().enumerate() {
            if skip.contains(&f) {
                continue;
            }
            let l = pattern_level(p, f);
            if l != MISSING {
                count[l as usize] += w;
            } else if shape.stand_ins.contains(&f) {
                not_standing_in[f] += w;
            }
        }
    }
    counts
        .into_iter()
        .zip(not_standing_in)
        .map(|(c, rest)| {
            let total: f64 = c.iter().sum::<f64>() + rest;
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

    /// A field encoded again under another salt: the field is judged at the
    /// better of its two encodings' levels (present beats missing), and the
    /// encoding again never counts on its own.
    #[test]
    fn a_field_encoded_again_is_judged_at_the_better_of_its_levels() {
        let again = StandIn {
            field: 2,
            covers: vec![0],
            best_of: true,
        };
        assert_eq!(again.apply(pattern(&[4, 1, 0])), pattern(&[0, 1, MISSING]));
        assert_eq!(again.apply(pattern(&[1, 1, 3])), pattern(&[1, 1, MISSING]));
        assert_eq!(
            again.apply(pattern(&[MISSING, 1, 3])),
            pattern(&[3, 1, MISSING])
        );
        // Version 6 chains them: the names again under the postcode, then
        // under each other's Soundex code, all judged as one field.
        let params = crate::LinkageParams::canonical_version(6);
        let stand_ins = StandIn::of(&params);
        assert!(stand_ins.iter().all(|s| s.best_of), "{stand_ins:?}");
        let given = |name: &str| params.fields.iter().position(|f| f.name() == name).unwrap();
        let mut levels = [MISSING; 12];
        levels[given("given_name")] = 4;
        levels[given("given_name_by_place")] = 4;
        levels[given("given_name_by_family")] = 1;
        let judged = judged(&stand_ins, pattern(&levels));
        assert_eq!(pattern_level(judged, given("given_name")), 1);
        assert_eq!(
            pattern_level(judged, given("given_name_by_family")),
            MISSING
        );
        // Version 5's full name stands in as it did.
        assert!(
            StandIn::of(&crate::LinkageParams::canonical_version(5))
                .iter()
                .all(|s| !s.best_of)
        );
    }

    #[test]
    fn a_stand_in_replaces_the_fields_it_covers_only_where_they_disagree_entirely() {
        let stand_in = StandIn {
            field: 2,
            covers: vec![0, 1],
            best_of: false,
        };
        // Names salted with a wrong birth year disagree; the full name agrees.
        assert_eq!(
            stand_in.apply(pattern(&[4, 4, 0, 1])),
            pattern(&[MISSING, MISSING, 0, 1])
        );
        // A name that agrees at all is judged as it is, the full name not.
        assert_eq!(
            stand_in.apply(pattern(&[3, 4, 0, 1])),
            pattern(&[3, 4, MISSING, 1])
        );
        // The full name disagrees too, or is missing: the names' disagreement counts.
        for full in [4, MISSING] {
            assert_eq!(
                stand_in.apply(pattern(&[4, 4, full, 1])),
                pattern(&[4, 4, MISSING, 1])
            );
        }
    }

    #[test]
    fn levels_follow_the_bounds() {
        // Dice 1.0, 0.9, 0.75, 0.5, 0.2; and exactly on a bound.
        assert_eq!(level(50, 100), 0);
        assert_eq!(level(45, 100), 1);
        assert_eq!(level(75, 200), 2);
        assert_eq!(level(25, 100), 3);
        assert_eq!(level(10, 100), 4);
        assert_eq!(level(95, 200), 0);
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
        // Candidates blocked on field 0: 100 matches agreeing everywhere (a
        // few with one typo), 1,000 non-matches agreeing only on field 0;
        // out of 100,000 pairs in all.
        let patterns = vec![
            (pattern(&[0, 0, 0]), 90),
            (pattern(&[0, 1, 0]), 10),
            (pattern(&[0, 3, 3]), 1_000),
        ];
        let rule = RuleCandidates {
            blocked_fields: vec![0],
            whole_fields: vec![0],
            first: patterns.clone(),
            patterns,
            non_matches: Vec::new(),
        };
        let model = Model::estimate(3, &random, &[rule], 100_000.0, &[]);
        assert!((model.prior - 0.001).abs() < 0.0002, "{model:?}");
        assert!((model.m[1][0] - 0.9).abs() < 0.02, "{model:?}");
        assert!(model.probability(pattern(&[0, 0, 0])) > 0.99);
        assert!(model.probability(pattern(&[0, 1, 0])) > 0.9);
        assert!(model.probability(pattern(&[0, 3, 3])) < 0.01);
        // A missing field is no evidence either way.
        assert!(model.weight(pattern(&[0, 0, MISSING])) < model.weight(pattern(&[0, 0, 0])));
        assert!(model.weight(pattern(&[0, 0, MISSING])) > model.weight(pattern(&[0, 0, 3])));
    }

    #[test]
    fn twins_are_kept_apart_by_how_often_a_household_shows_their_pattern() {
        // Fields: date of birth (blocked on whole), given name, family name,
        // postcode. Random pairs almost never agree.
        let random = [
            (pattern(&[4, 4, 4, 4]), 990_000),
            (pattern(&[4, 0, 4, 4]), 10_000),
            (pattern(&[4, 4, 0, 4]), 2_000),
            (pattern(&[4, 4, 4, 0]), 20),
            (pattern(&[0, 4, 4, 4]), 150),
        ];
        // Pairs within one organisation in the birth-date blocks: chance
        // agreements, 50 pairs of twins (2 with a typo in the family name)
        // and 20 duplicate records of one child.
        let within = vec![
            (pattern(&[0, 4, 4, 4]), 99_000),
            (pattern(&[0, 0, 4, 4]), 1_000),
            (pattern(&[0, 4, 0, 4]), 200),
            (pattern(&[0, 4, 0, 0]), 48),
            (pattern(&[0, 4, 2, 0]), 2),
            (pattern(&[0, 0, 0, 0]), 20),
        ];
        // Across organisations: the same non-matches, and 1,000 matches
        // (some moved, some with a nickname or a typo).
        let mut patterns: Vec<(Pattern, u64)> = within[..5].to_vec();
        patterns.extend([
            (pattern(&[0, 0, 0, 0]), 850),
            (pattern(&[0, 0, 0, 4]), 100),
            (pattern(&[0, 3, 0, 0]), 30),
            (pattern(&[0, 0, 2, 0]), 20),
        ]);
        patterns.sort_unstable();
        let rule = RuleCandidates {
            blocked_fields: vec![0],
            whole_fields: vec![0],
            first: patterns.clone(),
            patterns,
            non_matches: within,
        };
        let model = Model::estimate(4, &random, &[rule], 1e9, &[]);
        let verdict = |levels: &[u8]| {
            let p = pattern(levels);
            let fields = (model.probability(p), model.weight(p));
            (fields.0, model.verdict_in_rule(0, p, fields).0)
        };
        // Field by field, twins look like a match; their household's
        // pattern, seen within organisations, says otherwise.
        let (fields, in_rule) = verdict(&[0, 4, 0, 0]);
        assert!(
            fields > 0.99 && in_rule < 0.5,
            "twins: {fields} -> {in_rule}"
        );
        let (fields, in_rule) = verdict(&[0, 4, 2, 0]);
        assert!(
            fields > 0.99 && in_rule < 0.5,
            "twins, one with a typo: {fields} -> {in_rule}"
        );
        // Twins, one with a typo that leaves few letters of the family name
        // alike (DRKE and DRAKE, Dice 0.57): a pattern too rare within
        // organisations to judge as it is, so it is also judged as if the
        // family name agreed, and is never more likely one child than the
        // twins themselves.
        let (fields, in_rule) = verdict(&[0, 4, 3, 0]);
        let twins = verdict(&[0, 4, 0, 0]).1;
        assert!(
            in_rule < fields && in_rule <= twins,
            "twins, one with a worse typo: {fields} -> {in_rule} (twins: {twins})"
        );
        // Matches keep their verdict: one agreeing everywhere (duplicates
        // within an organisation are no evidence against it), and one that
        // moved (no household shows that).
        let (fields, in_rule) = verdict(&[0, 0, 0, 0]);
        assert!(fields > 0.99 && in_rule == fields, "{fields} -> {in_rule}");
        let (fields, in_rule) = verdict(&[0, 0, 0, 4]);
        assert_eq!(in_rule, fields);
        // A given name one letter out (Dice about 0.8) agrees: no household
        // judgement. Graded at Dice 0.70, not lower: look-alike names
        // (Kiran and Kieran, Dice 0.67) are what twins are given.
        let (fields, in_rule) = verdict(&[0, 2, 0, 0]);
        assert!(
            fields > 0.99 && in_rule == fields,
            "a typo: {fields} -> {in_rule}"
        );
        // A model stored before rules were kept judges by the fields.
        let old = Model {
            rules: Vec::new(),
            ..model.clone()
        };
        let twins = pattern(&[0, 4, 0, 0]);
        let fields = (old.probability(twins), old.weight(twins));
        assert_eq!(old.verdict_in_rule(0, twins, fields), fields);
    }

    #[test]
    fn non_matches_that_share_a_block_are_judged_by_pairs_within_an_organisation() {
        // Field 0 is blocked on (a birth date); field 1 (a given name salted
        // with the birth year) agrees by chance once in 1,000 random pairs
        // but once in 20 pairs that share a birth date; field 2 (a family
        // name) once in 1,000 either way.
        let random = [
            (pattern(&[3, 3, 3]), 998_000),
            (pattern(&[3, 0, 3]), 1_000),
            (pattern(&[3, 3, 0]), 1_000),
        ];
        let within = vec![
            (pattern(&[0, 3, 3]), 9_490),
            (pattern(&[0, 0, 3]), 500),
            (pattern(&[0, 3, 0]), 10),
        ];
        // The block's cross-organisation pairs: 100 matches, and 10,000
        // non-matches with the same chance agreements as within.
        let patterns = vec![
            (pattern(&[0, 0, 0]), 100),
            (pattern(&[0, 3, 3]), 9_490),
            (pattern(&[0, 0, 3]), 500),
            (pattern(&[0, 3, 0]), 10),
        ];
        let rule = |non_matches| RuleCandidates {
            blocked_fields: vec![0],
            whole_fields: vec![0],
            first: patterns.clone(),
            patterns: patterns.clone(),
            non_matches,
        };
        let model = Model::estimate(3, &random, &[rule(within)], 1e7, &[]);
        // Matches agree on the family name, so its disagreement is strong
        // evidence; the 100 matches are found.
        assert!(model.m[2][3] < 0.05, "{model:?}");
        assert!((model.prior - 1e-5).abs() < 2e-6, "{model:?}");
        // Judged by the random pairs, the 500 chance agreements look like
        // matches that disagree on family name.
        let naive = Model::estimate(3, &random, &[rule(Vec::new())], 1e7, &[]);
        assert!(naive.m[2][3] > 0.5, "{naive:?}");
    }

    /// Field `copy` as field `first` encoded again under another salt.
    fn encoded_again(copy: usize, first: usize) -> StandIn {
        StandIn {
            field: copy,
            covers: vec![first],
            best_of: true,
        }
    }

    #[test]
    fn a_households_exact_levels_are_counted_among_the_pairs_that_show_its_shape() {
        // Fields: given name, postcode, and the postcode again under
        // another salt (judged at the better of the two, so always missing
        // once judged). Pairs within one organisation in a block: 9,000
        // neighbours (different names, postcodes alike but not equal: level
        // 1), 100 siblings (different names, the same postcode: level 0)
        // and 5,000 pairs of one household with names a little alike.
        let sample = vec![
            (pattern(&[4, 1, MISSING]), 9_000),
            (pattern(&[4, 0, MISSING]), 100),
            (pattern(&[2, 0, MISSING]), 5_000),
        ];
        let again = encoded_again(2, 1);
        let siblings_pattern = pattern(&[4, 0, MISSING]);
        // 9,100 of 14,100 pairs show the siblings' shape (names apart,
        // postcodes alike); of those, 100 share the postcode exactly, not
        // the 5,100 of 14,100 of the whole sample.
        let showing = 9_100.0 / 14_100.0;
        let shape = Shape::new(3, std::slice::from_ref(&again));
        let siblings = NonMatch::new(&shape, &sample, &[])
            .joint(siblings_pattern)
            .unwrap();
        assert!(
            (siblings - showing * 100.0 / 9_100.0).abs() < 0.001,
            "{siblings}"
        );
        // A field encoded once keeps the whole sample's share.
        let shape = Shape::new(3, &[]);
        let once = NonMatch::new(&shape, &sample, &[])
            .joint(siblings_pattern)
            .unwrap();
        assert!((once - showing * 5_100.0 / 14_100.0).abs() < 0.01, "{once}");
    }

    #[test]
    fn a_pair_alike_everywhere_on_a_field_of_several_salts_is_judged_by_the_rules_pairs() {
        // Fields: given name (judged at the better of two encodings, the
        // copy always missing once judged) and sex. In the rule's blocks,
        // pairs within one organisation share the given name exactly one
        // time in five, and the sex one time in two.
        let sample = vec![
            (pattern(&[0, 0, MISSING]), 100),
            (pattern(&[0, 4, MISSING]), 100),
            (pattern(&[4, 0, MISSING]), 400),
            (pattern(&[4, 4, MISSING]), 400),
        ];
        let again = encoded_again(2, 0);
        let alike = pattern(&[0, 0, MISSING]);
        let shape = Shape::new(3, std::slice::from_ref(&again));
        let u = NonMatch::new(&shape, &sample, &[])
            .alike_everywhere(alike)
            .unwrap();
        assert!((u - 0.2 * 0.5).abs() < 0.001, "{u}");
        // Not where a field disagrees (judged jointly instead), nor where
        // no field has several encodings (the fields' verdict stands).
        let non_match = NonMatch::new(&shape, &sample, &[]);
        assert_eq!(non_match.alike_everywhere(pattern(&[0, 4, MISSING])), None);
        let shape = Shape::new(3, &[]);
        let non_match = NonMatch::new(&shape, &sample, &[]);
        assert_eq!(non_match.alike_everywhere(alike), None);
    }
}
