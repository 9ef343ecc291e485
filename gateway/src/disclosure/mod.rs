//! Statistical disclosure control: what of an analyst's table may leave.
//!
//! Every number released is protected (the guarantee, in words an IG lead
//! signs, is `docs/disclosure.md`):
//!
//! - **Noise** ([`noise`]): each count, numerator, denominator and median is
//!   computed from the true data plus discrete Gaussian noise; percentages
//!   come from the noisy numerator and denominator.
//! - **Budget**: each new release spends privacy loss (zero-concentrated
//!   differential privacy, rho) from the ledger of every agreement in force
//!   ([`crate::storage::Storage::record_release`]); the same question of
//!   the same data is answered again from the first release, at no cost.
//! - **Small numbers**: a noisy count below the minimum is suppressed, zeros
//!   included; the rest are rounded; secondary suppression so a hidden cell
//!   cannot be estimated from totals ([`table`]).
//! - **Magnitudes**: a child adds at most
//!   [`joinery_policies::model::EVENTS_PER_CHILD`] events to a cell; the
//!   dominance and p% rules judge a cell against that bound.
//! - **Categories** ([`labels`]): a recorded value is listed only when, with
//!   noise, well over the minimum of the whole population have it.
//!
//! Every decision is taken on noisy values, never on true ones, so no
//! answer — and no refusal — depends on whether one child is in the data.
//! When several agreements are loaded, the strictest rule of each kind
//! applies.

pub mod labels;
pub mod noise;
pub mod table;

use joinery_policies::model::{Dominance, Rounding};
use joinery_proto::v1::{Cell, cell};

use crate::agreements::Agreements;

pub use noise::{Noise, NoiseError};
pub use table::{Release, cost, protect};

/// The rules applied to everything released.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DisclosureRules {
    /// Noisy counts up to this value (zero and below included) are suppressed.
    pub suppress_up_to: u64,
    pub rounding: Rounding,
    pub secondary_suppression: bool,
    /// Standard deviation of the noise on a count of children.
    pub noise_sd: f64,
    pub dominance: Dominance,
    pub p_percent: u32,
}

impl Default for DisclosureRules {
    /// The NHS England convention (suppress 1–7, round to 5), secondary
    /// suppression, and the agreements' default noise and magnitude rules.
    fn default() -> Self {
        let outputs = joinery_policies::model::PrivacyBudget::default();
        Self {
            suppress_up_to: 7,
            rounding: Rounding::Nearest5,
            secondary_suppression: true,
            noise_sd: outputs.noise_sd,
            dominance: Dominance::default(),
            p_percent: 10,
        }
    }
}

impl DisclosureRules {
    /// The strictest of each rule among the agreements (the default when
    /// none is loaded, and never weaker than it).
    pub fn strictest(agreements: &Agreements) -> Self {
        agreements
            .iter()
            .map(|signed| &signed.agreement.outputs)
            .fold(Self::default(), |rule, o| Self {
                suppress_up_to: rule
                    .suppress_up_to
                    .max(u64::from(o.minimum_cell_count.saturating_sub(1))),
                rounding: if o.rounding.strength() > rule.rounding.strength() {
                    o.rounding
                } else {
                    rule.rounding
                },
                secondary_suppression: rule.secondary_suppression || o.secondary_suppression,
                noise_sd: rule.noise_sd.max(o.privacy.noise_sd),
                dominance: Dominance {
                    n: rule.dominance.n.max(o.dominance.n),
                    k: rule.dominance.k.min(o.dominance.k),
                },
                p_percent: rule.p_percent.max(o.p_percent),
            })
    }

    /// A noisy count as it may be shown: suppressed up to the threshold
    /// (zero and below included), rounded above it.
    pub fn shown(&self, noisy: i64) -> Released {
        match u64::try_from(noisy) {
            Ok(count) if count > self.suppress_up_to => Released::Count(match self.rounding {
                Rounding::None => count,
                Rounding::Nearest5 => (count + 2) / 5 * 5,
                Rounding::Midpoint6 => (count - 1) / 6 * 6 + 3,
            }),
            _ => Released::Suppressed,
        }
    }

    /// A footnote describing the rules.
    pub fn note(&self) -> String {
        let rounding = self.rounding.in_words();
        format!(
            "every number carries random noise (SD {} per count of children); counts below {} \
             are suppressed (shown as *), zeros included{}; {rounding}; percentages come from \
             noisy counts",
            self.noise_sd,
            self.suppress_up_to + 1,
            if self.secondary_suppression {
                ", with further cells suppressed where totals would reveal one"
            } else {
                ""
            }
        )
    }
}

/// One released cell: what disclosure control lets out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Released {
    /// A protected count.
    Count(u64),
    /// A percentage or a median from protected values.
    Number(f64),
    Suppressed,
    /// Nothing to show (a percentage of no one).
    Empty,
}

impl Released {
    pub fn is_suppressed(self) -> bool {
        self == Self::Suppressed
    }
}

impl From<Released> for Cell {
    fn from(released: Released) -> Self {
        Cell {
            value: match released {
                Released::Count(n) => Some(cell::Value::Count(n)),
                Released::Number(v) => Some(cell::Value::Number(v)),
                Released::Suppressed => Some(cell::Value::Suppressed(true)),
                Released::Empty => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_and_small_counts_look_alike_and_the_rest_is_rounded() {
        let rules = DisclosureRules::default();
        for hidden in [-3, 0, 1, 7] {
            assert_eq!(rules.shown(hidden), Released::Suppressed, "{hidden}");
        }
        assert_eq!(rules.shown(8), Released::Count(10));
        assert_eq!(rules.shown(12), Released::Count(10));
        assert_eq!(rules.shown(13), Released::Count(15));
        let midpoint = DisclosureRules {
            suppress_up_to: 0,
            rounding: Rounding::Midpoint6,
            ..rules
        };
        for (count, shown) in [(1, 3), (6, 3), (7, 9), (13, 15), (100, 99)] {
            assert_eq!(midpoint.shown(count), Released::Count(shown), "{count}");
        }
        assert_eq!(midpoint.shown(0), Released::Suppressed);
    }
}
