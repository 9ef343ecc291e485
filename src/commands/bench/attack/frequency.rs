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
        let salt = field.salt.as_ref();
        let mut groups: HashMap<(String, &[u64]), Vec<usize>> = HashMap::new();
        for (i, stored) in case.stored.iter().enumerate() {
            let filter = stored.encoding.filter(params, f);
            if let (Some(stratum), false) = (stored.clear.salt(salt), filter.is_empty()) {
                groups.entry((stratum, filter)).or_default().push(i);
            }
        }
        let mut values: HashMap<String, HashMap<&str, usize>> = HashMap::new();
        for person in &case.register {
            if let (Some(stratum), Some(value)) =
                (person.clear.salt(salt), person.identity.get(&field.field))
            {
                *values.entry(stratum).or_default().entry(value).or_default() += 1;
            }
        }
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
            let mut groups: HashMap<(&Clear, [u8; 16]), Vec<usize>> = HashMap::new();
            for (i, stored) in case.stored.iter().enumerate() {
                if let Some(Some(key)) = stored.encoding.blocks.get(r) {
                    groups.entry((&stored.clear, *key)).or_default().push(i);
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
fn by_rank<S: Hash + Eq, K: Hash + Eq>(
    records: usize,
    groups: HashMap<(S, K), Vec<usize>>,
    mut values: HashMap<S, HashMap<&str, usize>>,
) -> Vec<Option<String>> {
    let mut by_stratum: HashMap<S, Vec<Vec<usize>>> = HashMap::new();
    for ((stratum, _), members) in groups {
        by_stratum.entry(stratum).or_default().push(members);
    }
    let mut recovered = vec![None; records];
    for (stratum, mut groups) in by_stratum {
        let Some(values) = values.remove(&stratum) else {
            continue;
        };
        groups.sort_by_key(|g| (std::cmp::Reverse(g.len()), g[0]));
        let mut ranked: Vec<(&str, usize)> = values.into_iter().collect();
        ranked.sort_by_key(|(v, n)| (std::cmp::Reverse(*n), *v));
        for (group, (value, _)) in groups.iter().zip(ranked) {
            for &i in group {
                recovered[i] = Some(value.to_owned());
            }
        }
    }
    recovered
}
