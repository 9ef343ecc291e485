//! The frequency attack. Equal values give equal filters within one salt (a
//! name salted with the birth year gives one filter for each year it occurs
//! in), and equal blocking keys wherever they occur, and the attacker reads
//! the salt, and much of a key, from the record's clear values. So within
//! each stratum the stored records fall into groups of equal filters (or
//! keys), one group per value, whose sizes follow the values' frequencies:
//! the largest group is given the register's commonest value of that
//! stratum, the second the second, and so on.

use std::collections::HashMap;
use std::hash::Hash;

use super::{Case, Clear, Recovery, What};

/// What the attack recovers of every field whose salt the attacker can
/// read, from the filters.
pub fn on_filters(case: &Case<'_>) -> Vec<Recovery> {
    let params = case.params;
    let mut recoveries = Vec::new();
    for (f, field) in params.fields.iter().enumerate() {
        // A filter of two values (sex) gives nothing the clear sex does not.
        if field.field == "sex" {
            continue;
        }
        let (groups, values) = super::strata(case, f);
        recoveries.push(Recovery {
            what: What::Field(field.field.clone()),
            values: by_rank(case.stored.len(), groups, values),
        });
    }
    recoveries
}

/// What the attack recovers of every blocking rule's text (the values of
/// its parts, such as a family name's Soundex code with the birth year),
/// from the blocking keys, within strata of all the clear values.
pub fn on_blocking_keys(case: &Case<'_>) -> Vec<Recovery> {
    (0..case.params.blocking.len())
        .map(|r| {
            let mut groups: HashMap<&Clear, HashMap<[u8; 16], Vec<usize>>> = HashMap::new();
            for (i, stored) in case.stored.iter().enumerate() {
                if let Some(Some(key)) = stored.encoding.blocks.get(r) {
                    groups
                        .entry(&stored.clear)
                        .or_default()
                        .entry(*key)
                        .or_default()
                        .push(i);
                }
            }
            let mut values: HashMap<&Clear, HashMap<&str, usize>> = HashMap::new();
            for (p, person) in case.register.iter().enumerate() {
                if let Some(text) = case.rule_text(p, r) {
                    *values
                        .entry(&person.clear)
                        .or_default()
                        .entry(text)
                        .or_default() += 1;
                }
            }
            Recovery {
                what: What::Rule(r),
                values: by_rank(case.stored.len(), groups, values),
            }
        })
        .collect()
}

/// Each of `records` stored records given the value whose frequency rank in
/// its stratum's `values` is its group's size rank among the stratum's
/// `groups` (ties broken the same way every run).
fn by_rank<S: Hash + Eq, K>(
    records: usize,
    groups: HashMap<S, HashMap<K, Vec<usize>>>,
    mut values: HashMap<S, HashMap<&str, usize>>,
) -> Vec<Option<String>> {
    let mut recovered = vec![None; records];
    for (stratum, groups) in groups {
        let Some(values) = values.remove(&stratum) else {
            continue;
        };
        let mut groups: Vec<Vec<usize>> = groups.into_values().collect();
        groups.sort_by_key(|g| (std::cmp::Reverse(g.len()), g[0]));
        let mut ranked: Vec<(&str, usize)> = values.into_iter().collect();
        ranked.sort_by_key(|(v, n)| (std::cmp::Reverse(*n), *v));
        for (group, (value, _)) in groups.iter().zip(ranked) {
            for &i in group {
                recovered[i] = Some(super::plain(value).to_owned());
            }
        }
    }
    recovered
}
