//! The date-of-birth attack, on the shared parts of a date. A date of birth
//! is encoded by its parts (year, month, day and month-day tokens) without
//! a salt, so one date gives one filter wherever it occurs, and the birth
//! year (with its month, or quarter, unless the agreement coarsens them
//! away) is kept in clear beside it. The filters of the same day of the
//! year in different years share three of their four parts, so most of
//! their bits (Dice about 0.75), while any other two dates share at most
//! one part (about 0.35): clustering them across years finds the days of
//! the year. Each cluster's records per year are then matched to the
//! register's births per year on each day of the year that fits the clear
//! values, and every record of a cluster is given the date the matched day
//! makes with its own birth year.

use std::collections::{BTreeMap, HashMap};

use joinery_linkage::bloom;
use joinery_linkage::params::Tokens;

use super::{Case, Clear, Recovery, What};

/// Filters at least this alike are taken to be the same day of the year.
const SAME_DAY: f64 = 0.55;

/// A filter with more distinct values than this is left alone (comparing
/// every pair would dominate the run), so the attack's figure is then a
/// floor. An unsalted date gives at most one filter per day (about 6,600
/// for eighteen years of births); a date salted with something near-unique
/// gives about one per record, which 20,000 records measure in full.
const MAX_NODES: usize = 40_000;

/// One distinct date-of-birth filter.
struct Node<'a> {
    filter: &'a [u64],
    ones: u32,
    /// The clear values of its first record (its year and what else of
    /// the date they keep).
    clear: &'a Clear,
    records: Vec<usize>,
}

/// The dates of birth the attack recovers, from each filter of the date
/// encoded by its parts (none when the parameters encode it otherwise).
pub fn attack(case: &Case<'_>) -> Vec<Recovery> {
    case.params
        .fields
        .iter()
        .enumerate()
        .filter(|(_, e)| e.field == "date_of_birth" && e.tokens == Tokens::DateParts)
        .map(|(f, _)| attack_filter(case, f))
        .collect()
}

/// The dates of birth recovered from field `f`'s filters.
fn attack_filter(case: &Case<'_>, f: usize) -> Recovery {
    let params = case.params;
    let mut distinct: HashMap<(&str, &[u64]), Node<'_>> = HashMap::new();
    for (i, stored) in case.stored.iter().enumerate() {
        let filter = stored.encoding.filter(params, f);
        let Some(year) = stored.clear.year() else {
            continue;
        };
        if filter.is_empty() {
            continue;
        }
        distinct
            .entry((year, filter))
            .or_insert_with(|| Node {
                filter,
                ones: bloom::ones(filter),
                clear: &stored.clear,
                records: Vec::new(),
            })
            .records
            .push(i);
    }
    let mut nodes: Vec<Node<'_>> = distinct.into_values().collect();
    if nodes.len() > MAX_NODES {
        nodes.clear();
    }
    nodes.sort_by_key(|n| n.records[0]);
    // The register's births: day of the year (`MM-DD`) -> year -> people.
    let mut births: BTreeMap<&str, HashMap<&str, usize>> = BTreeMap::new();
    for person in &case.register {
        if let Some((year, day)) = person
            .identity
            .get("date_of_birth")
            .and_then(|d| d.split_once('-'))
        {
            *births.entry(day).or_default().entry(year).or_default() += 1;
        }
    }
    let mut recovered = vec![None; case.stored.len()];
    for (cluster, day) in assign(&clusters(&nodes), &nodes, &births) {
        for &n in &cluster {
            let year = nodes[n].clear.year().unwrap_or_default();
            let date = format!("{year}-{day}");
            for &i in &nodes[n].records {
                recovered[i] = Some(date.clone());
            }
        }
    }
    Recovery {
        what: What::Field("date_of_birth".to_owned()),
        values: recovered,
    }
}

/// The nodes grouped by day of the year: those of different years at
/// least [`SAME_DAY`] alike, whose clear values allow the same day, join
/// one group.
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
            if x.clear.year() != y.clear.year()
                && x.clear.may_share_day(y.clear)
                && bloom::dice(x.filter, x.ones, y.filter, y.ones) >= SAME_DAY
            {
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

/// Each cluster's day of the year: among the days that fit every member's
/// clear values, the one whose births per year are the closest in shape
/// (L1 distance between shares) to the cluster's records per year. Days
/// are given one to a cluster, closest pairs first; a cluster left over (a
/// day split in two) takes its closest day.
fn assign<'d>(
    clusters: &[Vec<usize>],
    nodes: &[Node<'_>],
    days: &'d BTreeMap<&str, HashMap<&str, usize>>,
) -> Vec<(Vec<usize>, &'d str)> {
    fn shares(counts: &HashMap<&str, usize>) -> HashMap<String, f64> {
        let total: usize = counts.values().sum();
        counts
            .iter()
            .map(|(y, n)| ((*y).to_owned(), *n as f64 / total.max(1) as f64))
            .collect()
    }
    let distance = |a: &HashMap<String, f64>, b: &HashMap<String, f64>| -> f64 {
        let only_b: f64 = b
            .iter()
            .filter(|(k, _)| !a.contains_key(*k))
            .map(|(_, v)| v)
            .sum();
        a.iter()
            .map(|(k, v)| (v - b.get(k).unwrap_or(&0.0)).abs())
            .sum::<f64>()
            + only_b
    };
    let day_shares: Vec<(&str, HashMap<String, f64>)> =
        days.iter().map(|(d, c)| (*d, shares(c))).collect();
    let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
    for (c, members) in clusters.iter().enumerate() {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for &n in members {
            *counts
                .entry(nodes[n].clear.year().unwrap_or_default())
                .or_default() += nodes[n].records.len();
        }
        let cluster_shares = shares(&counts);
        for (d, (day, day_share)) in day_shares.iter().enumerate() {
            let month = day.get(..2).unwrap_or_default();
            if members.iter().all(|&n| nodes[n].clear.fits_month(month)) {
                pairs.push((distance(&cluster_shares, day_share), c, d));
            }
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
