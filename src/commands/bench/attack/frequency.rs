//! The frequency attack. A field's equal values give equal filters within
//! one salt (a name salted with the birth year gives one filter for each
//! year it occurs in), and the attacker reads the salt from the record's
//! clear values. So within each stratum the stored records fall into groups
//! of equal filters, one group per value, and the groups' sizes follow the
//! values' frequencies: the largest group is given the register's commonest
//! value of that stratum, the second the second, and so on.

use std::collections::HashMap;

use super::{Case, Recovery};

/// What the attack recovers of every field whose salt the attacker can read.
pub fn attack(case: &Case<'_>) -> Vec<Recovery> {
    let params = case.params;
    let mut recoveries = Vec::new();
    for (f, field) in params.fields.iter().enumerate() {
        // A filter of two values (sex) gives nothing the clear sex does not.
        if field.field == "sex" {
            continue;
        }
        let salt = field.salt.as_ref();
        // Stored groups: (stratum, filter) -> records.
        let mut groups: HashMap<(String, &[u64]), Vec<usize>> = HashMap::new();
        for (i, stored) in case.stored.iter().enumerate() {
            let filter = stored.encoding.filter(params, f);
            if let (Some(stratum), false) = (stored.clear.salt(salt), filter.is_empty()) {
                groups.entry((stratum, filter)).or_default().push(i);
            }
        }
        // Register values: stratum -> value -> people.
        let mut values: HashMap<String, HashMap<&str, usize>> = HashMap::new();
        for person in &case.register {
            if let (Some(stratum), Some(value)) =
                (person.clear.salt(salt), person.identity.get(&field.field))
            {
                *values.entry(stratum).or_default().entry(value).or_default() += 1;
            }
        }
        let mut by_stratum: HashMap<String, Vec<Vec<usize>>> = HashMap::new();
        for ((stratum, _), members) in groups {
            by_stratum.entry(stratum).or_default().push(members);
        }
        let mut recovered = vec![None; case.stored.len()];
        for (stratum, mut groups) in by_stratum {
            let Some(values) = values.get(&stratum) else {
                continue;
            };
            groups.sort_by_key(|g| (std::cmp::Reverse(g.len()), g[0]));
            let mut ranked: Vec<(&str, usize)> = values.iter().map(|(v, n)| (*v, *n)).collect();
            ranked.sort_by_key(|(v, n)| (std::cmp::Reverse(*n), *v));
            for (group, (value, _)) in groups.iter().zip(ranked) {
                for &i in group {
                    recovered[i] = Some(value.to_owned());
                }
            }
        }
        recoveries.push(Recovery {
            field: field.field.clone(),
            values: recovered,
        });
    }
    recoveries
}
