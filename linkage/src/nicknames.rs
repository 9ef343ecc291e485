//! Given names' full forms: Bill is a short form of William (and of Robert).
//!
//! A field encoded with `nicknames: true` (see
//! [`crate::params::FieldEncoding::nicknames`]) adds the tokens of every full
//! form of its value to the value's own, so a nickname and its full name
//! share most of their bits (Bill and William: Dice 0.63 rather than 0.2)
//! while two unrelated names still share few. A nickname with several full
//! forms gets them all: which one a record meant is not known.
//!
//! The list is data, shipped with its source (see `linkage/data/README.md`):
//! `nicknames.csv`, from github.com/carltonnorthern/nicknames (Apache-2.0),
//! and `nicknames-en-gb.csv`, British short forms that list lacks, in the
//! same `name1,relationship,name2` layout.

use std::collections::HashMap;
use std::sync::LazyLock;

const UPSTREAM: &str = include_str!("../data/nicknames.csv");
const EN_GB: &str = include_str!("../data/nicknames-en-gb.csv");

/// More full forms than this, and a nickname is left as it is: the union
/// of many names' tokens shares a few with almost any name (Max's four full
/// forms and Ella's five share enough letters to make Max and Ella look
/// alike, as they do not).
pub const MAX_FULL_FORMS: usize = 3;

/// Upper-case nickname -> its full forms, in file order; forms that are
/// themselves short for another of them (Will, for William, under Bill)
/// left out.
static FULL_FORMS: LazyLock<HashMap<String, Vec<String>>> = LazyLock::new(|| {
    let mut forms: HashMap<String, Vec<String>> = HashMap::new();
    for text in [UPSTREAM, EN_GB] {
        // Every line after the header is `name,has_nickname,nickname`; the
        // files are ours, so a line of another shape is a build-time defect
        // the tests catch.
        for line in text.lines().skip(1) {
            if let [name, "has_nickname", nickname] = line.split(',').collect::<Vec<_>>()[..] {
                let full = forms.entry(nickname.trim().to_uppercase()).or_default();
                let name = name.trim().to_uppercase();
                if !full.contains(&name) {
                    full.push(name);
                }
            }
        }
    }
    let short_for = |form: &String, of: &[String]| {
        forms
            .get(form)
            .is_some_and(|longer| longer.iter().any(|l| of.contains(l)))
    };
    forms
        .iter()
        .map(|(nickname, full)| {
            let kept: Vec<String> = full
                .iter()
                .filter(|form| !short_for(form, full))
                .cloned()
                .collect();
            (nickname.clone(), kept)
        })
        .filter(|(_, full)| full.len() <= MAX_FULL_FORMS)
        .collect()
});

/// The full forms `name` (upper case) is a short form of; empty when it is
/// none.
pub fn full_forms(name: &str) -> &'static [String] {
    FULL_FORMS.get(name).map_or(&[], Vec::as_slice)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nicknames_have_their_full_forms_and_full_names_have_none() {
        assert!(full_forms("BILL").contains(&"WILLIAM".to_owned()));
        assert!(full_forms("PADDY").contains(&"PATRICK".to_owned()));
        // From the British list.
        assert!(full_forms("IMMY").contains(&"IMOGEN".to_owned()));
        assert!(full_forms("PATRICK").is_empty());
        // Will is short for William, which Bill already has.
        assert!(!full_forms("BILL").contains(&"WILL".to_owned()));
        // Too many full forms: the name is left as it is.
        assert!(full_forms("CHRIS").is_empty());
        assert!(full_forms("XYZZY").is_empty());
    }

    #[test]
    fn every_line_of_the_lists_is_read() {
        for text in [UPSTREAM, EN_GB] {
            let mut lines = text.lines();
            assert_eq!(lines.next(), Some("name1,relationship,name2"));
            for line in lines {
                let parts: Vec<&str> = line.split(',').collect();
                assert!(
                    parts.len() == 3 && parts[1] == "has_nickname" && !parts[2].is_empty(),
                    "{line}"
                );
            }
        }
    }
}
