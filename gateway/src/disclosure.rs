//! Statistical disclosure control for every count the gateway releases.
//!
//! A count from 1 up to the threshold is suppressed; every other count is
//! rounded as the agreements say (to the nearest 5, or to the midpoint of its
//! band of six). Zero is shown as zero. When several agreements are loaded,
//! the strictest rule of them all applies.
//!
//! A table is released with its row and column totals (from the true
//! counts), so suppression has a second step: in every row and column —
//! totals included — a lone suppressed cell could be recovered by
//! subtraction, so the smallest other non-zero cell is suppressed too (or,
//! when there is none, the total), until no line has a lone one
//! ([`DisclosureRule::protect_table`]).

use joinery_policies::model::Rounding;
use joinery_proto::v1::{Cell, cell};

use crate::agreements::Agreements;

/// A cell's (row, column) in a table.
type Position = (usize, usize);

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

    /// A table of true counts, released with a total column and a total row
    /// (the last of each), every cell protected, with secondary suppression.
    pub fn protect_table(&self, counts: &[Vec<u64>]) -> Vec<Vec<Cell>> {
        let full = with_totals(counts);
        let hidden = self.suppression(&full);
        full.iter()
            .zip(hidden)
            .map(|(row, hidden)| {
                row.iter()
                    .zip(hidden)
                    .map(|(&count, hide)| {
                        if hide {
                            Cell {
                                value: Some(cell::Value::Suppressed(true)),
                            }
                        } else {
                            self.protect(count)
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// Which cells of `counts` with its totals (an extra last row and
    /// column) must be suppressed.
    pub fn suppressed(&self, counts: &[Vec<u64>]) -> Vec<Vec<bool>> {
        self.suppression(&with_totals(counts))
    }

    /// Which cells of a table with totals (last row, last column) to
    /// suppress: primary (1 to the threshold), then secondary until no row or
    /// column has a suppressed cell recoverable from its total.
    fn suppression(&self, full: &[Vec<u64>]) -> Vec<Vec<bool>> {
        let (height, width) = (full.len(), full.first().map_or(0, Vec::len));
        let mut hidden: Vec<Vec<bool>> = full
            .iter()
            .map(|row| {
                row.iter()
                    .map(|&c| c > 0 && c <= self.suppress_up_to)
                    .collect()
            })
            .collect();
        // Each line: its cells' positions and its total's.
        let mut lines: Vec<(Vec<Position>, Position)> = Vec::new();
        for i in 0..height {
            lines.push(((0..width - 1).map(|j| (i, j)).collect(), (i, width - 1)));
        }
        for j in 0..width {
            lines.push(((0..height - 1).map(|i| (i, j)).collect(), (height - 1, j)));
        }
        loop {
            let mut changed = false;
            for (cells, total) in &lines {
                let lone = cells.iter().filter(|&&(i, j)| hidden[i][j]).count();
                let total_hidden = hidden[total.0][total.1];
                // A lone hidden cell beside a shown total, or a hidden total
                // whose cells are all shown: hide one more.
                if !((lone == 1 && !total_hidden) || (lone == 0 && total_hidden)) {
                    continue;
                }
                let next = cells
                    .iter()
                    .filter(|&&(i, j)| !hidden[i][j] && full[i][j] > 0)
                    .min_by_key(|&&(i, j)| (full[i][j], i, j));
                match next {
                    Some(&(i, j)) => hidden[i][j] = true,
                    None if !total_hidden => hidden[total.0][total.1] = true,
                    None => continue,
                }
                changed = true;
            }
            if !changed {
                return hidden;
            }
        }
    }

    /// A footnote describing the rule.
    pub fn note(&self) -> String {
        let rounding = match self.rounding {
            Rounding::None => "other counts are exact",
            Rounding::Nearest5 => "other counts are rounded to the nearest 5",
            Rounding::Midpoint6 => "other counts are shown as the midpoint of their band of six",
        };
        format!(
            "counts of 1 to {} are suppressed (shown as *), with further cells suppressed where totals would reveal one; {rounding}",
            self.suppress_up_to
        )
    }
}

/// `counts` with a total column and a total row.
fn with_totals(counts: &[Vec<u64>]) -> Vec<Vec<u64>> {
    let width = counts.first().map_or(0, Vec::len);
    let mut full: Vec<Vec<u64>> = counts
        .iter()
        .map(|row| {
            let mut row = row.clone();
            row.push(row.iter().sum());
            row
        })
        .collect();
    let totals: Vec<u64> = (0..=width)
        .map(|j| full.iter().map(|r| r[j]).sum())
        .collect();
    full.push(totals);
    full
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

    fn hidden(cell: &Cell) -> bool {
        matches!(cell.value, Some(cell::Value::Suppressed(_)))
    }

    proptest::proptest! {
        /// No suppressed cell can be worked out from its row or column
        /// total: every line with a suppressed cell and a shown total has
        /// two suppressed cells, and a suppressed total has a suppressed
        /// cell (or only zeros).
        #[test]
        fn no_suppressed_cell_is_recoverable_from_totals(
            table in proptest::collection::vec(proptest::collection::vec(0u64..40, 1..6), 1..7)
        ) {
            let width = table.iter().map(Vec::len).min().unwrap_or(1);
            let table: Vec<Vec<u64>> = table.iter().map(|r| r[..width].to_vec()).collect();
            let rule = DisclosureRule::default();
            let out = rule.protect_table(&table);
            let (h, w) = (out.len(), out[0].len());
            let mut full = table.clone();
            for row in &mut full {
                row.push(row.iter().sum());
            }
            full.push((0..w).map(|j| full.iter().map(|r| r[j]).sum()).collect());
            let mut lines: Vec<Vec<(usize, usize)>> = (0..h).map(|i| (0..w).map(|j| (i, j)).collect()).collect();
            lines.extend((0..w).map(|j| (0..h).map(|i| (i, j)).collect::<Vec<_>>()));
            for line in lines {
                let (total, cells) = line.split_last().unwrap();
                let hidden_cells = cells.iter().filter(|&&(i, j)| hidden(&out[i][j])).count();
                if hidden(&out[total.0][total.1]) {
                    proptest::prop_assert!(hidden_cells >= 1 || cells.iter().all(|&(i, j)| full[i][j] == 0));
                } else {
                    proptest::prop_assert!(hidden_cells != 1, "a lone suppressed cell in {line:?} of {table:?}");
                }
            }
            // Every count of 1 to 7 is suppressed, totals included.
            for (i, row) in full.iter().enumerate() {
                for (j, &count) in row.iter().enumerate() {
                    if (1..=7).contains(&count) {
                        proptest::prop_assert!(hidden(&out[i][j]));
                    }
                }
            }
        }
    }

    #[test]
    fn a_lone_suppressed_cell_takes_its_neighbour_with_it() {
        let rule = DisclosureRule::default();
        let out = rule.protect_table(&[vec![3, 40, 50], vec![20, 30, 60]]);
        let shown: Vec<Vec<bool>> = out.iter().map(|r| r.iter().map(hidden).collect()).collect();
        assert_eq!(
            shown,
            [
                vec![true, true, false, false],
                vec![true, true, false, false],
                vec![false, false, false, false],
            ],
            "3 is primary; 40 hides with it in its row, 20 in its column, 30 to cover both"
        );
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
