//! Safe categories: which recorded values (an attribute's codes, the
//! combinations of agencies) a breakdown may list.
//!
//! A value is listed only when its count over the whole population — not
//! the cohort — plus fresh noise reaches the suppression threshold plus
//! four standard deviations of the noise. A value held by one child passes
//! with a probability below one in ten million, and no label set depends on
//! who is in the cohort. Everyone else is counted as "other".

use std::collections::{BTreeSet, HashMap};

use super::{DisclosureRules, Noise, NoiseError};

/// How far above the threshold, in noise standard deviations, a value's
/// noisy count must be.
const MARGIN_SD: f64 = 4.0;

/// The values of `counts` (people per value, over the population) safe to list.
pub fn safe(
    counts: &HashMap<String, u64>,
    rules: &DisclosureRules,
    noise: &mut Noise,
) -> Result<BTreeSet<String>, NoiseError> {
    let bar = rules.suppress_up_to as f64 + MARGIN_SD * rules.noise_sd;
    let mut safe = BTreeSet::new();
    // In a fixed order, so no draw depends on how the map was built.
    let mut values: Vec<(&String, &u64)> = counts.iter().collect();
    values.sort_unstable();
    for (value, &count) in values {
        if noise.add(count, rules.noise_sd)? as f64 >= bar {
            safe.insert(value.clone());
        }
    }
    Ok(safe)
}

/// What choosing one axis's values costs in rho: each person holds one
/// value, so moves one count by one.
pub fn cost(rules: &DisclosureRules) -> f64 {
    1.0 / (2.0 * rules.noise_sd * rules.noise_sd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rare_values_are_never_listed_and_common_ones_always() {
        let rules = DisclosureRules::default();
        let counts: HashMap<String, u64> = [("A1", 1), ("B2", 3), ("C3", 20), ("D4", 500)]
            .into_iter()
            .map(|(v, n)| (v.to_owned(), n))
            .collect();
        for _ in 0..50 {
            let safe = safe(&counts, &rules, &mut Noise).unwrap();
            assert!(!safe.contains("A1") && !safe.contains("B2"), "{safe:?}");
            assert!(safe.contains("D4"));
        }
    }
}
