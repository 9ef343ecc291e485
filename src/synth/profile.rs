//! How messy the synthetic agencies' records are: the chance of each kind
//! of identity error in one agency's record of one child.
//!
//! `tidy` (the default) is what the tests and the demo are built on.
//! `messy` has the errors found in real extracts, at rates like theirs, and
//! a fourth agency (an acute trust's A&E) with NHS numbers on 98% of its
//! records where the council has them on 45%:
//!
//! | error | tidy | messy |
//! | --- | --- | --- |
//! | nickname for the given name | 8% | 10% |
//! | given name one letter wrong (changed, dropped, added, swapped) | – | 4% |
//! | family name one letter wrong | 4% (swapped) | 5% (any kind) |
//! | family name changed (the child's former one recorded) | – | half the records of the 4% of children whose name changed |
//! | double-barrelled family name recorded in part | – | 40% of the records of the 5% of children with one |
//! | day and month of birth swapped | 2% | 2% |
//! | date of birth a day out | – | 1.5% |
//! | year of birth one digit wrong | – | 1.5% |
//! | a placeholder date of birth (1 January 1900) | – | 0.5% |
//! | sex recorded as unknown | – | 3% |
//! | moved (another postcode) | 10% | 12% |
//! | a placeholder postcode (ZZ99 3VZ, no fixed abode) | – | 1.5% |
//! | no postcode | – | 2% |
//! | NHS number mistyped (when present) | 2% | 2% |

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// An error profile, chosen with `joinery synth --profile`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// The errors the tests and the demo are built on (three agencies).
    #[default]
    Tidy,
    /// As messy as real extracts (four agencies): see `src/synth/profile.rs`.
    Messy,
}

/// The chance of each error in one agency's record of one child (see the
/// module's table).
pub(super) struct Rates {
    pub nickname: f64,
    pub given_typo: f64,
    pub family_typo: f64,
    /// Whether a family-name typo may be any kind (else letters swapped).
    pub any_typo: bool,
    pub surname_changed: f64,
    pub former_surname_recorded: f64,
    pub double_barrelled: f64,
    pub part_recorded: f64,
    pub day_month_swap: f64,
    pub day_out: f64,
    pub year_typo: f64,
    pub placeholder_dob: f64,
    pub unknown_sex: f64,
    pub moved: f64,
    pub placeholder_postcode: f64,
    pub no_postcode: f64,
    pub nhs_mistyped: f64,
}

impl Profile {
    pub(super) fn rates(self) -> Rates {
        match self {
            Profile::Tidy => Rates {
                nickname: 0.08,
                given_typo: 0.0,
                family_typo: 0.04,
                any_typo: false,
                surname_changed: 0.0,
                former_surname_recorded: 0.0,
                double_barrelled: 0.0,
                part_recorded: 0.0,
                day_month_swap: 0.02,
                day_out: 0.0,
                year_typo: 0.0,
                placeholder_dob: 0.0,
                unknown_sex: 0.0,
                moved: 0.10,
                placeholder_postcode: 0.0,
                no_postcode: 0.0,
                nhs_mistyped: 0.02,
            },
            Profile::Messy => Rates {
                nickname: 0.10,
                given_typo: 0.04,
                family_typo: 0.05,
                any_typo: true,
                surname_changed: 0.04,
                former_surname_recorded: 0.5,
                double_barrelled: 0.05,
                part_recorded: 0.4,
                day_month_swap: 0.02,
                day_out: 0.015,
                year_typo: 0.015,
                placeholder_dob: 0.005,
                unknown_sex: 0.03,
                moved: 0.12,
                placeholder_postcode: 0.015,
                no_postcode: 0.02,
                nhs_mistyped: 0.02,
            },
        }
    }
}

/// True with probability `p`, drawing nothing when `p` is 0 (so an error
/// the tidy profile does not make leaves its random stream, and so its
/// files, as they were).
pub(super) fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    p > 0.0 && rng.random_bool(p)
}

/// `name` with one letter wrong: two neighbours swapped, or (when `any`)
/// also one changed, dropped or added.
pub(super) fn misspell(rng: &mut ChaCha8Rng, name: &str, any: bool) -> String {
    const LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPRSTUWY";
    let mut chars: Vec<char> = name.chars().collect();
    if chars.len() <= 3 {
        return name.to_owned();
    }
    let kind = if any { rng.random_range(0..4) } else { 0 };
    let i = rng.random_range(1..chars.len() - 1);
    let mut letter = || LETTERS[rng.random_range(0..LETTERS.len())] as char;
    match kind {
        0 => chars.swap(i, i + 1),
        1 => {
            chars[i] = loop {
                let l = letter();
                if l != chars[i] {
                    break l;
                }
            }
        }
        2 => {
            chars.remove(i);
        }
        _ => chars.insert(i, letter()),
    }
    chars.into_iter().collect()
}
