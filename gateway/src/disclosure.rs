//! Statistical disclosure control for every count the gateway releases.
//!
//! A count from 1 up to the threshold is suppressed; every other count is
//! rounded as the agreements say (to the nearest 5, or to the midpoint of its
//! band of six). Zero is shown as zero. When several agreements are loaded,
//! the strictest rule of them all applies. (Secondary suppression of totals
//! arrives with the analytics issue; until then no output carries totals.)

use joinery_policies::model::Rounding;
use joinery_proto::v1::{Cell, cell};

use crate::agreements::Agreements;

/// The rule applied to counts of people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisclosureRule {
    /// Counts from 1 to this value are suppressed.
    pub suppress_up_to: u64,
    pub rounding: Rounding,
}

impl Default for DisclosureRule {
    /// The NHS England convention: suppress 1–7, round the rest to 5.
    fn default() -> Self {
        Self {
            suppress_up_to: 7,
            rounding: Rounding::Nearest5,
        }
    }
}

impl DisclosureRule {
    /// The strictest rule among the agreements' output rules (the default
    /// when none is loaded, and never weaker than it).
    pub fn strictest(agreements: &Agreements) -> Self {
        let strength = |r: Rounding| match r {
            Rounding::None => 0,
            Rounding::Nearest5 => 1,
            Rounding::Midpoint6 => 2,
        };
        agreements
            .iter()
            .map(|signed| &signed.agreement.outputs)
            .fold(Self::default(), |rule, outputs| Self {
                suppress_up_to: rule
                    .suppress_up_to
                    .max(u64::from(outputs.minimum_cell_count.saturating_sub(1))),
                rounding: if strength(outputs.rounding) > strength(rule.rounding) {
                    outputs.rounding
                } else {
                    rule.rounding
                },
            })
    }

    /// The protected value of a true count.
    pub fn protect(&self, count: u64) -> Cell {
        let value = if count == 0 {
            cell::Value::Count(0)
        } else if count <= self.suppress_up_to {
            cell::Value::Suppressed(true)
        } else {
            cell::Value::Count(match self.rounding {
                Rounding::None => count,
                Rounding::Nearest5 => (count + 2) / 5 * 5,
                Rounding::Midpoint6 => (count - 1) / 6 * 6 + 3,
            })
        };
        Cell { value: Some(value) }
    }

    /// A footnote describing the rule.
    pub fn note(&self) -> String {
        let rounding = match self.rounding {
            Rounding::None => "other counts are exact",
            Rounding::Nearest5 => "other counts are rounded to the nearest 5",
            Rounding::Midpoint6 => "other counts are shown as the midpoint of their band of six",
        };
        format!(
            "counts of 1 to {} are suppressed (shown as *); {rounding}",
            self.suppress_up_to
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(rule: DisclosureRule, count: u64) -> Option<u64> {
        match rule.protect(count).value {
            Some(cell::Value::Count(c)) => Some(c),
            _ => None,
        }
    }

    #[test]
    fn suppresses_one_to_seven_and_rounds_the_rest_to_five() {
        let rule = DisclosureRule::default();
        assert_eq!(shown(rule, 0), Some(0));
        for small in 1..=7 {
            assert_eq!(shown(rule, small), None, "count {small} must be suppressed");
        }
        assert_eq!(shown(rule, 8), Some(10));
        assert_eq!(shown(rule, 12), Some(10));
        assert_eq!(shown(rule, 13), Some(15));
        assert_eq!(shown(rule, 1002), Some(1000));
    }

    #[test]
    fn midpoint_six() {
        let rule = DisclosureRule {
            suppress_up_to: 0,
            rounding: Rounding::Midpoint6,
        };
        for (count, midpoint) in [(1, 3), (6, 3), (7, 9), (12, 9), (13, 15), (100, 99)] {
            assert_eq!(shown(rule, count), Some(midpoint), "{count}");
        }
    }
}
