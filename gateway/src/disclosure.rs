//! Statistical disclosure control for every count the gateway releases.
//!
//! A count from 1 up to the threshold is suppressed; every other count is
//! rounded to the nearest multiple of the rounding base. Zero is shown as
//! zero. (Secondary suppression of totals arrives with the analytics issue;
//! until then no output carries totals.)

use joinery_proto::v1::{Cell, cell};

/// The rule applied to counts of people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisclosureRule {
    /// Counts from 1 to this value are suppressed.
    pub suppress_up_to: u64,
    /// Released counts are rounded to the nearest multiple of this.
    pub round_to: u64,
}

impl Default for DisclosureRule {
    /// The NHS England convention: suppress 1–7, round the rest to 5.
    fn default() -> Self {
        Self {
            suppress_up_to: 7,
            round_to: 5,
        }
    }
}

impl DisclosureRule {
    /// The protected value of a true count.
    pub fn protect(&self, count: u64) -> Cell {
        let value = if count != 0 && count <= self.suppress_up_to {
            cell::Value::Suppressed(true)
        } else {
            let base = self.round_to.max(1);
            cell::Value::Count((count + base / 2) / base * base)
        };
        Cell { value: Some(value) }
    }

    /// A footnote describing the rule.
    pub fn note(&self) -> String {
        format!(
            "counts of 1 to {} are suppressed (shown as *); other counts are rounded to the nearest {}",
            self.suppress_up_to, self.round_to
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(count: u64) -> Option<u64> {
        match DisclosureRule::default().protect(count).value {
            Some(cell::Value::Count(c)) => Some(c),
            _ => None,
        }
    }

    #[test]
    fn suppresses_one_to_seven_and_rounds_the_rest_to_five() {
        assert_eq!(shown(0), Some(0));
        for small in 1..=7 {
            assert_eq!(shown(small), None, "count {small} must be suppressed");
        }
        assert_eq!(shown(8), Some(10));
        assert_eq!(shown(12), Some(10));
        assert_eq!(shown(13), Some(15));
        assert_eq!(shown(1002), Some(1000));
    }
}
