//! The date-of-birth attack, on the shared parts of a date. A date of birth
//! is encoded by its parts (year, month, day and month-day tokens) without
//! a salt, so one date gives one filter wherever it occurs, and the birth
//! month is kept in clear beside it. Within one calendar month, the filters
//! of the same day in different years share three of their four parts, so
//! most of their bits (Dice about 0.75), while different days share only
//! the month's (about 0.35): clustering them finds the days. Each
//! cluster's records per year are then matched to the register's births
//! per year on each day of that month, and every record of a cluster is
//! given the date the matched day makes with its own birth month.

use std::collections::{BTreeMap, HashMap};

use joinery_linkage::bloom;
use joinery_linkage::params::Tokens;

use super::{Case, Recovery, What};

/// Filters at least this alike are taken to be the same day of the month.
const SAME_DAY: f64 = 0.55;

/// One distinct date-of-birth filter of a calendar month.
struct Node<'a> {
    filter: &'a [u64],
    ones: u32,
    year: &'a str,
    records: Vec<usize>,
}

/// The dates of birth the attack recovers (nothing when the parameters do
/// not encode the date by its parts).
pub fn attack(case: &Case<'_>) -> Vec<Recovery> {
    let params = case.params;
    let Some(f) = params
        .fields
        .iter()
        .position(|e| e.field == "date_of_birth" && e.tokens == Tokens::DateParts)
    else {
        return Vec::new();
    };
    // Distinct filters by calendar month, from the clear birth month.
    let mut months: BTreeMap<&str, HashMap<&[u64], Node<'_>>> = BTreeMap::new();
    for (i, stored) in case.stored.iter().enumerate() {
        let filter = stored.encoding.filter(params, f);
        let Some((year, month)) = stored
            .clear
            .birth_month
            .as_deref()
            .and_then(|m| m.split_once('-'))
        else {
            continue;
        };
        if filter.is_empty() {
            continue;
        }
        months
            .entry(month)
            .or_default()
            .entry(filter)
            .or_insert_with(|| Node {
                filter,
                ones: bloom::ones(filter),
                year,
                records: Vec::new(),
            })
            .records
            .push(i);
    }
    // The register's births: month -> day -> year -> people.
    let mut births: HashMap<&str, BTreeMap<&str, HashMap<&str, usize>>> = HashMap::new();
    for person in &case.register {
        let Some(date) = person.identity.get("date_of_birth") else {
            continue;
        };
        let mut parts = date.splitn(3, '-');
        if let (Some(year), Some(month), Some(day)) = (parts.next(), parts.next(), parts.next()) {
            *births
                .entry(month)
                .or_default()
                .entry(day)
                .or_default()
                .entry(year)
                .or_default() += 1;
        }
    }
    let mut recovered = vec![None; case.stored.len()];
    for (month, nodes) in months {
        let Some(days) = births.get(month) else {
            continue;
        };
        let nodes: Vec<Node<'_>> = nodes.into_values().collect();
        for (cluster, day) in assign(&clusters(&nodes), &nodes, days) {
            for &n in &cluster {
                let date = format!("{}-{month}-{day}", nodes[n].year);
                for &i in &nodes[n].records {
                    recovered[i] = Some(date.clone());
                }
            }
        }
    }
    vec![Recovery {
        what: What::Field("date_of_birth".to_owned()),
        values: recovered,
    }]
}

/// The nodes grouped by day: those of different years at least
/// [`SAME_DAY`] alike join one group.
fn clusters(nodes: &[Node<'_>]) -> Vec<Vec<usize>> {
    let mut parent: Vec<usize> = (0..nodes.len()).collect();
    fn root(parent: &mut [usize], mut n: usize) -> usize {
        while parent[n] != n {
            parent[n] = parent[parent[n]];
            n = parent[n];
        }
        n
    }
    for a in 0..nodes.len() {
        for b in a + 1..nodes.len() {
            let (x, y) = (&nodes[a], &nodes[b]);
            if x.year != y.year && bloom::dice(x.filter, x.ones, y.filter, y.ones) >= SAME_DAY {
                let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
                parent[ra] = rb;
            }
        }
    }
    let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
    for n in 0..nodes.len() {
        let r = root(&mut parent, n);
        groups.entry(r).or_default().push(n);
    }
    let mut groups: Vec<Vec<usize>> = groups.into_values().collect();
    groups.sort();
    groups
}

/// Each cluster's day: the day whose births per year are the closest in
/// shape (L1 distance between shares) to the cluster's records per year.
/// Days are given one to a cluster, closest pairs first; a cluster left
/// over (a day split in two) takes its closest day.
fn assign<'d>(
    clusters: &[Vec<usize>],
    nodes: &[Node<'_>],
    days: &'d BTreeMap<&str, HashMap<&str, usize>>,
) -> Vec<(Vec<usize>, &'d str)> {
    let shares = |counts: &HashMap<&str, usize>| -> HashMap<String, f64> {
        let total: usize = counts.values().sum();
        counts
            .iter()
            .map(|(y, n)| ((*y).to_owned(), *n as f64 / total.max(1) as f64))
            .collect()
    };
    let distance = |a: &HashMap<String, f64>, b: &HashMap<String, f64>| -> f64 {
        let keys = a.keys().chain(b.keys());
        let mut seen = std::collections::HashSet::new();
        keys.filter(|k| seen.insert(*k))
            .map(|k| (a.get(k).unwrap_or(&0.0) - b.get(k).unwrap_or(&0.0)).abs())
            .sum()
    };
    let day_shares: Vec<(&str, HashMap<String, f64>)> =
        days.iter().map(|(d, c)| (*d, shares(c))).collect();
    let cluster_shares: Vec<HashMap<String, f64>> = clusters
        .iter()
        .map(|members| {
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for &n in members {
                *counts.entry(nodes[n].year).or_default() += nodes[n].records.len();
            }
            shares(&counts)
        })
        .collect();
    let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
    for (c, cs) in cluster_shares.iter().enumerate() {
        for (d, (_, ds)) in day_shares.iter().enumerate() {
            pairs.push((distance(cs, ds), c, d));
        }
    }
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut day_of: Vec<Option<usize>> = vec![None; clusters.len()];
    let mut taken = vec![false; day_shares.len()];
    for &(_, c, d) in &pairs {
        if day_of[c].is_none() && !taken[d] {
            day_of[c] = Some(d);
            taken[d] = true;
        }
    }
    for &(_, c, d) in &pairs {
        if day_of[c].is_none() {
            day_of[c] = Some(d);
        }
    }
    clusters
        .iter()
        .zip(day_of)
        .filter_map(|(members, d)| Some((members.clone(), day_shares[d?].0)))
        .collect()
}
