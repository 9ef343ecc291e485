//! A query's table as it may leave: noise on every value, then
//! suppression, rounding and secondary suppression of the noisy values —
//! and what that release costs from the agreements' privacy budgets.
//!
//! A table is released with a total column and a total row. Where the
//! table has one column (or one row), the total repeats it and carries the
//! same noise rather than a second draw. Across periods there is no total:
//! it would count a child once per period, and cost as much again.
//!
//! Cost, in zero-concentrated differential privacy: the squared sum of how
//! far one child can move the released values, over the noise's variance,
//! halved, is the rho spent ([`cost`]). Without periods a child moves one
//! cell, its row's and column's totals and the grand total by one each;
//! over `k` periods, `k` cells and `k` totals along the periods. Shares release two such tables (numerator, denominator);
//! medians one of contributors plus a binary search of noisy counts
//! ([`MEDIAN_STEP_SD`] times the count noise) over a fixed range.

use joinery_policies::model::EVENTS_PER_CHILD;

use super::{DisclosureRules, Noise, NoiseError, Released};
use crate::analytics::model::Measure;
use crate::analytics::{Axis, CellData, Tabulation};

/// A value's (row, column) in a table with totals.
type Position = (usize, usize);

/// The noise on each step of a median's search, in multiples of the count noise.
pub const MEDIAN_STEP_SD: f64 = 2.0;

/// A median is shown only where half its (noisy) contributors are this many
/// step noise SDs: each step's comparison then goes wrong by noise alone
/// with a probability of about 3 in 100,000 (80 children at the default).
const MEDIAN_MARGIN_SD: f64 = 4.0;

/// What a median may be: days from 0 to about eleven years; changes in a
/// score from -256 to 255. Values outside are counted at the nearest end.
fn median_range(measure: &Measure) -> (i64, i64) {
    match measure {
        Measure::MedianChange(_) => (-256, 255),
        _ => (0, 4095),
    }
}

/// Binary-search steps over a range (the same for every table).
fn steps((low, high): (i64, i64)) -> u32 {
    let size = u64::try_from(high - low + 1).unwrap_or(1).max(1);
    size.ilog2() + u32::from(!size.is_power_of_two())
}

/// A released table: rows × columns, totals last.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub cells: Vec<Vec<Released>>,
}

impl Release {
    pub fn suppressed(&self) -> usize {
        self.cells
            .iter()
            .flatten()
            .filter(|c| c.is_suppressed())
            .count()
    }
}

/// Which values of the table with totals are released: all but the
/// total along a period axis (and the grand total then).
fn released(table: &Tabulation) -> Vec<Vec<bool>> {
    let (height, width) = (table.rows.len() + 1, table.columns.len() + 1);
    (0..height)
        .map(|i| {
            (0..width)
                .map(|j| match table.period_axis {
                    Some(Axis::Rows) => i + 1 < height,
                    Some(Axis::Columns) => j + 1 < width,
                    None => true,
                })
                .collect()
        })
        .collect()
}

/// The squared L2 sensitivity of a table of counts with its released
/// totals: how far one child moves them, squared and summed.
fn sensitivity(table: &Tabulation) -> f64 {
    let (many_rows, many_columns) = (table.rows.len() > 1, table.columns.len() > 1);
    match table.period_axis {
        // k cells, and k totals across the other axis when it has its own.
        Some(axis) => {
            let k = f64::from(table.periods.max(1));
            let other_totals = match axis {
                Axis::Rows => many_columns,
                Axis::Columns => many_rows,
            };
            k + if other_totals { k } else { 0.0 }
        }
        None => {
            let own_totals = u32::from(many_rows)
                + u32::from(many_columns)
                + u32::from(many_rows && many_columns);
            1.0 + f64::from(own_totals)
        }
    }
}

/// The rho a release of `table` under `measure` spends, with the count noise `sd`.
pub fn cost(table: &Tabulation, measure: &Measure, sd: f64) -> f64 {
    let tables = match measure {
        Measure::Children | Measure::Events(_) => 1.0,
        Measure::Share(_) => 2.0,
        Measure::MedianDays(_) | Measure::MedianChange(_) => {
            1.0 + f64::from(steps(median_range(measure))) / (MEDIAN_STEP_SD * MEDIAN_STEP_SD)
        }
    };
    tables * sensitivity(table) / (2.0 * sd * sd)
}

/// One noisy value per released cell and total of `values` (with totals,
/// as [`Tabulation::with_totals`]; `None` where not released): a lone
/// column's total repeats it, as does a lone row's.
fn noisy(
    values: &[Vec<u64>],
    released: &[Vec<bool>],
    sd: f64,
    noise: &mut Noise,
) -> Result<Vec<Vec<Option<i64>>>, NoiseError> {
    let (height, width) = (values.len(), values.first().map_or(0, Vec::len));
    let mut out = vec![vec![None; width]; height];
    for i in 0..height {
        for j in 0..width {
            out[i][j] = if !released[i][j] {
                None
            } else if width == 2 && j == 1 {
                out[i][0]
            } else if height == 2 && i == 1 {
                out[0][j]
            } else {
                Some(noise.add(values[i][j], sd)?)
            };
        }
    }
    Ok(out)
}

/// Which noisy values (with totals) are hidden: up to the threshold, then
/// secondary suppression until no row or column has a lone hidden cell
/// beside a shown total, or a hidden total beside shown cells. Values not
/// released count as hidden; a line whose total is not released has no sum
/// to give a cell away.
fn suppression(rules: &DisclosureRules, full: &[Vec<Option<i64>>]) -> Vec<Vec<bool>> {
    let (height, width) = (full.len(), full.first().map_or(0, Vec::len));
    let mut hidden: Vec<Vec<bool>> = full
        .iter()
        .map(|row| {
            row.iter()
                .map(|c| c.is_none_or(|c| rules.shown(c).is_suppressed()))
                .collect()
        })
        .collect();
    if !rules.secondary_suppression || height < 2 || width < 2 {
        return hidden;
    }
    // Each line with a released total: its cells' positions and its total's.
    let mut lines: Vec<(Vec<Position>, Position)> = Vec::new();
    for i in 0..height {
        lines.push(((0..width - 1).map(|j| (i, j)).collect(), (i, width - 1)));
    }
    for j in 0..width {
        lines.push(((0..height - 1).map(|i| (i, j)).collect(), (height - 1, j)));
    }
    lines.retain(|(_, (i, j))| full[*i][*j].is_some());
    loop {
        let mut changed = false;
        for (cells, total) in &lines {
            let lone = cells.iter().filter(|&&(i, j)| hidden[i][j]).count();
            let total_hidden = hidden[total.0][total.1];
            if !((lone == 1 && !total_hidden) || (lone == 0 && total_hidden)) {
                continue;
            }
            let next = cells
                .iter()
                .filter(|&&(i, j)| !hidden[i][j])
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

/// The table as it may leave under `rules`, with fresh noise.
pub fn protect(
    table: &Tabulation,
    measure: &Measure,
    rules: &DisclosureRules,
    noise: &mut Noise,
) -> Result<Release, NoiseError> {
    let full = table.with_totals();
    let released = released(table);
    let mut draw = |value: &dyn Fn(&CellData) -> u64, sd: f64| {
        let values: Vec<Vec<u64>> = full
            .iter()
            .map(|row| row.iter().map(value).collect())
            .collect();
        noisy(&values, &released, sd, noise)
    };
    let sd = rules.noise_sd;
    let mut cells = match measure {
        Measure::Children => counts(rules, &draw(&|c| c.people, sd)?),
        Measure::Events(_) => {
            let events = draw(&|c| c.hits, sd * f64::from(EVENTS_PER_CHILD))?;
            let mut cells = counts(rules, &events);
            // Dominance and p%, judged against the most any child can add.
            let most = i64::from(EVENTS_PER_CHILD);
            let n = i64::from(rules.dominance.n);
            for (row, noisy) in cells.iter_mut().zip(&events) {
                for (cell, total) in row.iter_mut().zip(noisy) {
                    let Some(total) = *total else { continue };
                    let dominated = n * most * 100 > i64::from(rules.dominance.k) * total;
                    let p_fails = (total - 2 * most) * 100 < i64::from(rules.p_percent) * most;
                    if dominated || p_fails {
                        *cell = Released::Suppressed;
                    }
                }
            }
            cells
        }
        Measure::Share(_) => {
            let people = draw(&|c| c.people, sd)?;
            let hits = draw(&|c| c.hits, sd)?;
            let (hide_people, hide_hits) = (suppression(rules, &people), suppression(rules, &hits));
            (0..full.len())
                .map(|i| {
                    (0..full[i].len())
                        .map(|j| match (people[i][j], hits[i][j]) {
                            (Some(people), Some(hits))
                                if !hide_people[i][j] && !hide_hits[i][j] =>
                            {
                                let share = hits as f64 / people as f64;
                                Released::Number((100.0 * share.clamp(0.0, 1.0)).round())
                            }
                            _ => Released::Suppressed,
                        })
                        .collect()
                })
                .collect()
        }
        Measure::MedianDays(_) | Measure::MedianChange(_) => {
            let contributors = draw(&|c| c.values.len() as u64, sd)?;
            let hidden = suppression(rules, &contributors);
            let range = median_range(measure);
            let step_sd = sd * MEDIAN_STEP_SD;
            let mut out = Vec::with_capacity(full.len());
            for (i, row) in full.iter().enumerate() {
                let mut cells = Vec::with_capacity(row.len());
                for (j, cell) in row.iter().enumerate() {
                    let enough = |n: i64| n as f64 >= 2.0 * MEDIAN_MARGIN_SD * step_sd;
                    cells.push(match contributors[i][j] {
                        Some(contributors) if !hidden[i][j] && enough(contributors) => {
                            Released::Number(noisy_median(
                                &cell.values,
                                contributors,
                                range,
                                step_sd,
                                noise,
                            )? as f64)
                        }
                        _ => Released::Suppressed,
                    });
                }
                out.push(cells);
            }
            out
        }
    };
    for (row, released) in cells.iter_mut().zip(&released) {
        for (cell, &released) in row.iter_mut().zip(released) {
            if !released {
                *cell = Released::Empty;
            }
        }
    }
    Ok(Release { cells })
}

/// Noisy counts shown: suppressed (with secondary suppression) or rounded.
fn counts(rules: &DisclosureRules, noisy: &[Vec<Option<i64>>]) -> Vec<Vec<Released>> {
    let hidden = suppression(rules, noisy);
    noisy
        .iter()
        .zip(hidden)
        .map(|(row, hidden)| {
            row.iter()
                .zip(hidden)
                .map(|(&c, hide)| match c {
                    Some(c) if !hide => rules.shown(c),
                    _ => Released::Suppressed,
                })
                .collect()
        })
        .collect()
}

/// The median of `values` by binary search over `range`: at each step, a
/// noisy count of the values at or below the middle against half the noisy
/// number of contributors.
fn noisy_median(
    values: &[i64],
    contributors: i64,
    (mut low, mut high): (i64, i64),
    sd: f64,
    noise: &mut Noise,
) -> Result<i64, NoiseError> {
    let mut sorted: Vec<i64> = values.iter().map(|v| (*v).clamp(low, high)).collect();
    sorted.sort_unstable();
    while low < high {
        let middle = low + (high - low) / 2;
        let at_or_below = sorted.partition_point(|v| *v <= middle) as u64;
        if 2 * noise.add(at_or_below, sd)? >= contributors {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    Ok(low)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tabulation(counts: &[&[u64]], periods: u32) -> Tabulation {
        Tabulation {
            rows: (0..counts.len()).map(|i| format!("r{i}")).collect(),
            columns: (0..counts[0].len()).map(|j| format!("c{j}")).collect(),
            cells: counts
                .iter()
                .map(|row| {
                    row.iter()
                        .map(|&people| CellData {
                            people,
                            ..CellData::default()
                        })
                        .collect()
                })
                .collect(),
            cohort_size: 0,
            periods,
            period_axis: (periods > 1).then_some(Axis::Columns),
        }
    }

    #[test]
    fn the_cost_grows_with_the_totals_a_child_moves_and_the_periods() {
        let sd = 5.0;
        let one = cost(&tabulation(&[&[10]], 1), &Measure::Children, sd);
        let column = cost(&tabulation(&[&[10], &[20]], 1), &Measure::Children, sd);
        let two_way = cost(
            &tabulation(&[&[10, 5], &[20, 1]], 1),
            &Measure::Children,
            sd,
        );
        assert_eq!(one, 1.0 / 50.0);
        assert_eq!(column, 2.0 / 50.0, "a cell and the grand total");
        assert_eq!(two_way, 4.0 / 50.0, "a cell, two margins, the grand total");
        // Three periods as columns: three cells and three column totals;
        // nothing across the periods.
        let by_period = tabulation(&[&[10, 5, 1], &[20, 1, 2]], 3);
        assert_eq!(cost(&by_period, &Measure::Children, sd), (3.0 + 3.0) / 50.0);
        let rules = DisclosureRules::default();
        let out = protect(&by_period, &Measure::Children, &rules, &mut Noise).unwrap();
        assert!(
            out.cells.iter().all(|row| row[3] == Released::Empty),
            "no total across periods"
        );
        assert!(
            out.cells[2][..3].iter().all(|c| *c != Released::Empty),
            "each period's total"
        );
        assert_eq!(steps((0, 4095)), 12);
        assert_eq!(steps((-256, 255)), 9);
        assert_eq!(steps((0, 4096)), 13);
    }

    #[test]
    fn a_lone_column_total_repeats_its_cells_noise() {
        let table = tabulation(&[&[40], &[60]], 1);
        let rules = DisclosureRules {
            rounding: joinery_policies::model::Rounding::None,
            ..DisclosureRules::default()
        };
        for _ in 0..20 {
            let out = protect(&table, &Measure::Children, &rules, &mut Noise).unwrap();
            assert_eq!(out.cells[0][0], out.cells[0][1]);
            assert_eq!(out.cells[1][0], out.cells[1][1]);
            assert_ne!(out.cells[2][0], Released::Suppressed);
        }
    }

    #[test]
    fn a_median_search_finds_the_middle_within_the_noise() {
        let values: Vec<i64> = (0..400).map(|i| i * 2).collect(); // median 399
        let medians: Vec<i64> = (0..50)
            .map(|_| noisy_median(&values, 400, (0, 4095), 10.0, &mut Noise).unwrap())
            .collect();
        let mut sorted = medians.clone();
        sorted.sort_unstable();
        let middle = sorted[25];
        assert!((370..=430).contains(&middle), "{medians:?}");
    }

    proptest::proptest! {
        /// No suppressed value can be worked out from its row or column
        /// total: every line with a suppressed cell and a shown total has
        /// two suppressed cells, and a suppressed total has a suppressed
        /// cell; every value up to the threshold is suppressed.
        #[test]
        fn no_suppressed_value_is_alone_in_its_line(
            table in proptest::collection::vec(proptest::collection::vec(-10i64..40, 2..6), 2..7)
        ) {
            let width = table.iter().map(Vec::len).min().unwrap_or(2);
            let full: Vec<Vec<Option<i64>>> = table.iter().map(|r| r[..width].iter().map(|v| Some(*v)).collect()).collect();
            let rules = DisclosureRules::default();
            let hidden = suppression(&rules, &full);
            let (h, w) = (full.len(), width);
            let mut lines: Vec<Vec<(usize, usize)>> = (0..h).map(|i| (0..w).map(|j| (i, j)).collect()).collect();
            lines.extend((0..w).map(|j| (0..h).map(|i| (i, j)).collect::<Vec<_>>()));
            for line in lines {
                let (total, cells) = line.split_last().unwrap();
                let hidden_cells = cells.iter().filter(|&&(i, j)| hidden[i][j]).count();
                if hidden[total.0][total.1] {
                    proptest::prop_assert!(hidden_cells >= 1);
                } else {
                    proptest::prop_assert!(hidden_cells != 1, "a lone suppressed cell in {line:?} of {full:?}");
                }
            }
            for (i, row) in full.iter().enumerate() {
                for (j, &value) in row.iter().enumerate() {
                    if value.is_some_and(|v| v <= 7) {
                        proptest::prop_assert!(hidden[i][j]);
                    }
                }
            }
        }
    }
}
