//! A question as every part of its answer works it out, and what one
//! agreement may see of the population.

use std::collections::BTreeSet;
use std::sync::Arc;

use time::Date;

use crate::analytics::Person;
use crate::analytics::model::AnalystQuery;

/// A question as every part of an answer works it out.
pub(super) struct Asked {
    /// The query document as sent (shards parse it again).
    pub text: String,
    pub query: AnalystQuery,
    /// The day it counts at, fixed once for every part.
    pub reference: Date,
}

/// What one agreement may see: what its parties sent under its datasets.
pub(super) struct Within {
    pub agreement: String,
    pub datasets: BTreeSet<String>,
    pub parties: BTreeSet<String>,
}

impl Within {
    /// `people` as the agreement sees them: those it holds anything of,
    /// each with only what it may see.
    pub fn people(&self, people: &[Arc<Person>]) -> Vec<Arc<Person>> {
        let datasets: BTreeSet<&str> = self.datasets.iter().map(String::as_str).collect();
        let parties: BTreeSet<&str> = self.parties.iter().map(String::as_str).collect();
        people
            .iter()
            .filter_map(|p| p.within(&datasets, &parties))
            .collect()
    }
}
