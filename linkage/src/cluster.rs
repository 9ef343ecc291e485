//! Grouping records into people. Records with the same NHS pseudonym are one
//! person, and so are records already known to be one (an existing person
//! in incremental linking: it may grow or merge, never split). Then scored links are taken strongest first, and two groups are
//! joined only if that breaks no rule: a person never carries two different
//! NHS pseudonyms, and never two records of the same organisation (each
//! record is one organisation's one local id). Taking links one at a time
//! against whole groups, not pairs, stops a chain of fair links from
//! joining people who clearly differ.

use crate::encode::Pseudonym;

/// One link candidate that passed the threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    pub a: u32,
    pub b: u32,
    pub probability: f64,
    pub weight: f64,
}

/// Returns each record's group as the smallest record index in it. `known`
/// gives records already known to be one person the same number; links of
/// equal weight are taken in the order of their ends' `tiebreaks` (a number
/// per record that does not depend on the records' order), so the same
/// records and links group alike whatever order they come in.
pub fn cluster(
    organisations: &[u32],
    nhs: &[Option<Pseudonym>],
    known: &[Option<u64>],
    tiebreaks: &[u64],
    links: &mut [Link],
) -> Vec<u32> {
    let n = organisations.len();
    let mut groups = Groups {
        parent: (0..n as u32).collect(),
        organisations: organisations.iter().map(|&o| vec![o]).collect(),
        nhs: nhs.to_vec(),
    };
    // Exact: the same NHS pseudonym is the same person; so are records
    // already known to be one.
    groups.join_equal(nhs);
    groups.join_equal(known);
    // Fuzzy: strongest first; ties in a fixed order, so results repeat.
    let ends = |l: &Link| {
        let (a, b) = (tiebreaks[l.a as usize], tiebreaks[l.b as usize]);
        (a.min(b), a.max(b))
    };
    links.sort_unstable_by(|x, y| y.weight.total_cmp(&x.weight).then(ends(x).cmp(&ends(y))));
    for link in links.iter() {
        let (a, b) = (groups.root(link.a), groups.root(link.b));
        if a != b && groups.compatible(a, b) {
            groups.join(a, b);
        }
    }
    // Name each group by its smallest member.
    let mut smallest = vec![u32::MAX; n];
    for i in 0..n as u32 {
        let r = groups.root(i) as usize;
        smallest[r] = smallest[r].min(i);
    }
    (0..n as u32)
        .map(|i| smallest[groups.root(i) as usize])
        .collect()
}

struct Groups {
    parent: Vec<u32>,
    /// For roots: the organisations in the group.
    organisations: Vec<Vec<u32>>,
    /// For roots: the group's NHS pseudonym, if any.
    nhs: Vec<Option<Pseudonym>>,
}

impl Groups {
    fn root(&mut self, mut i: u32) -> u32 {
        while self.parent[i as usize] != i {
            let grandparent = self.parent[self.parent[i as usize] as usize];
            self.parent[i as usize] = grandparent;
            i = grandparent;
        }
        i
    }

    fn compatible(&self, a: u32, b: u32) -> bool {
        let (a, b) = (a as usize, b as usize);
        if let (Some(x), Some(y)) = (self.nhs[a], self.nhs[b])
            && x != y
        {
            return false;
        }
        !self.organisations[a]
            .iter()
            .any(|o| self.organisations[b].contains(o))
    }

    /// Joins every two records with the same (present) value.
    fn join_equal<K: Ord + Copy>(&mut self, values: &[Option<K>]) {
        let mut by_value: Vec<(K, u32)> = values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (v, i as u32)))
            .collect();
        by_value.sort_unstable();
        for pair in by_value.windows(2) {
            if pair[0].0 == pair[1].0 {
                self.join(pair[0].1, pair[1].1);
            }
        }
    }

    fn join(&mut self, a: u32, b: u32) {
        let (a, b) = (self.root(a), self.root(b));
        if a == b {
            return;
        }
        let (keep, gone) = if a < b { (a, b) } else { (b, a) };
        self.parent[gone as usize] = keep;
        let moved = std::mem::take(&mut self.organisations[gone as usize]);
        for o in moved {
            if !self.organisations[keep as usize].contains(&o) {
                self.organisations[keep as usize].push(o);
            }
        }
        if self.nhs[keep as usize].is_none() {
            self.nhs[keep as usize] = self.nhs[gone as usize];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(a: u32, b: u32, weight: f64) -> Link {
        Link {
            a,
            b,
            probability: 0.99,
            weight,
        }
    }

    #[test]
    fn different_nhs_pseudonyms_never_merge() {
        let nhs = [Some([1; 32]), Some([2; 32]), None];
        let people = cluster(
            &[0, 1, 2],
            &nhs,
            &[None; 3],
            &[0, 1, 2],
            &mut [link(0, 1, 30.0), link(1, 2, 20.0)],
        );
        assert_ne!(people[0], people[1]);
        assert_eq!(people[1], people[2]);
    }

    #[test]
    fn chaining_cannot_put_two_records_of_one_organisation_together() {
        // 0 and 2 are both organisation 0; 1 links well to each.
        let people = cluster(
            &[0, 1, 0],
            &[None, None, None],
            &[None; 3],
            &[0, 1, 2],
            &mut [link(0, 1, 25.0), link(1, 2, 20.0)],
        );
        assert_eq!(people, vec![0, 0, 2]);
    }

    #[test]
    fn the_same_nhs_pseudonym_is_one_person() {
        let nhs = [Some([1; 32]), None, Some([1; 32])];
        let people = cluster(&[0, 1, 2], &nhs, &[None; 3], &[0, 1, 2], &mut []);
        assert_eq!(people, vec![0, 1, 0]);
    }

    #[test]
    fn known_people_stay_together_and_can_grow() {
        let known = [Some(7), None, Some(7), None];
        let people = cluster(
            &[0, 1, 2, 3],
            &[None; 4],
            &known,
            &[0, 1, 2, 3],
            &mut [link(1, 2, 20.0)],
        );
        assert_eq!(people, vec![0, 0, 0, 3]);
    }
}
