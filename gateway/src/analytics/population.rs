//! The linked population as analytics holds it in memory: one [`Person`]
//! per spine person, their events in date order, texts shared through an
//! [`Interner`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use time::{Date, Month};

use super::symbol::Symbol;

/// One person on the spine, as analytics sees them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Person {
    /// Stands for the person in the query log (a digest of the spine id).
    pub key: u64,
    /// The earliest birth month the records give (YYYY-MM).
    pub birth_month: Option<Text>,
    /// `female`, `male`, `indeterminate` or `unknown`; the first recorded.
    pub sex: Option<Text>,
    pub organisations: TextSet,
    pub datasets: TextSet,
    /// Record attributes (ethnicity, disability, …): the first record's
    /// value of each.
    pub attributes: Arc<BTreeMap<Text, Text>>,
    /// In date order.
    pub events: Vec<PersonEvent>,
}

/// Shared text: event types, datasets and attribute values repeat across
/// millions of events, so each distinct one is held once ([`Interner`]),
/// behind a thin pointer (8 bytes, where `Arc<str>` takes 16): every event
/// holds two.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Text(Arc<Box<str>>);

impl std::ops::Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Text {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Self {
        Self(Arc::new(text.into()))
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

/// A few texts in order, each once: a person's organisations or datasets.
/// A sorted slice, not a tree: a person has a handful, and millions of
/// people are held ([`Person`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextSet(Box<[Text]>);

impl TextSet {
    /// Adds `text`; false when it was there already.
    pub fn insert(&mut self, text: Text) -> bool {
        match self.0.binary_search(&text) {
            Ok(_) => false,
            Err(at) => {
                let mut texts = std::mem::take(&mut self.0).into_vec();
                texts.insert(at, text);
                self.0 = texts.into_boxed_slice();
                true
            }
        }
    }

    pub fn contains(&self, text: &str) -> bool {
        self.0.binary_search_by(|t| (**t).cmp(text)).is_ok()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Text> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<Text> for TextSet {
    fn from_iter<I: IntoIterator<Item = Text>>(texts: I) -> Self {
        let mut texts: Vec<Text> = texts.into_iter().collect();
        texts.sort_unstable();
        texts.dedup();
        Self(texts.into_boxed_slice())
    }
}

impl<'a> IntoIterator for &'a TextSet {
    type Item = &'a Text;
    type IntoIter = std::slice::Iter<'a, Text>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// 16 bytes: two symbols, a date and a shared attribute set.
#[derive(Debug, Clone, PartialEq)]
pub struct PersonEvent {
    pub event_type: Symbol,
    pub dataset: Symbol,
    pub date: Date,
    /// Shared by every event with the same attributes.
    pub attributes: Arc<BTreeMap<Text, Text>>,
}

/// Hands out one shared copy of each distinct text and attribute set.
#[derive(Debug, Default)]
pub struct Interner {
    texts: HashSet<Text>,
    attributes: HashMap<Box<str>, Arc<BTreeMap<Text, Text>>>,
}

impl Interner {
    pub fn text(&mut self, text: &str) -> Text {
        if let Some(shared) = self.texts.get(text) {
            return shared.clone();
        }
        let shared = Text::from(text);
        self.texts.insert(shared.clone());
        shared
    }

    /// The attribute set stored as `json` (a JSON object of strings).
    pub fn attributes(&mut self, json: &str) -> Arc<BTreeMap<Text, Text>> {
        if let Some(shared) = self.attributes.get(json) {
            return shared.clone();
        }
        let parsed: BTreeMap<String, String> = serde_json::from_str(json).unwrap_or_default();
        let shared = Arc::new(
            parsed
                .iter()
                .map(|(k, v)| (self.text(k), self.text(v)))
                .collect(),
        );
        self.attributes.insert(json.into(), Arc::clone(&shared));
        shared
    }
}

impl Person {
    /// A person known by `spine_id`.
    pub fn with_key(spine_id: &str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, spine_id.as_bytes());
        let mut key = [0u8; 8];
        key.copy_from_slice(&digest.as_ref()[..8]);
        Self {
            key: u64::from_le_bytes(key),
            ..Self::default()
        }
    }

    /// Adds what one record says.
    pub fn add_record(
        &mut self,
        organisation: Text,
        dataset: Text,
        sex: Option<Text>,
        birth_month: Option<Text>,
    ) {
        self.organisations.insert(organisation);
        self.datasets.insert(dataset);
        if self.sex.is_none() {
            self.sex = sex;
        }
        if let Some(month) = birth_month
            && self.birth_month.as_ref().is_none_or(|known| month < *known)
        {
            self.birth_month = Some(month);
        }
    }

    /// The person as one agreement's project sees them: only what came from
    /// its `datasets` and its parties' `organisations`; `None` when nothing
    /// did.
    pub fn within(
        &self,
        datasets: &BTreeSet<&str>,
        organisations: &BTreeSet<&str>,
    ) -> Option<Self> {
        let datasets_in: TextSet = self
            .datasets
            .iter()
            .filter(|d| datasets.contains(&***d))
            .cloned()
            .collect();
        if datasets_in.is_empty() {
            return None;
        }
        Some(Self {
            key: self.key,
            birth_month: self.birth_month.clone(),
            sex: self.sex.clone(),
            attributes: Arc::clone(&self.attributes),
            organisations: self
                .organisations
                .iter()
                .filter(|o| organisations.contains(&***o))
                .cloned()
                .collect(),
            datasets: datasets_in,
            events: self
                .events
                .iter()
                .filter(|e| datasets.contains(&*e.dataset))
                .cloned()
                .collect(),
        })
    }

    /// Adds a record's attributes (values already held are kept).
    pub fn add_attributes(&mut self, attributes: Arc<BTreeMap<Text, Text>>) {
        if self.attributes.is_empty() {
            self.attributes = attributes;
        } else if attributes.keys().any(|k| !self.attributes.contains_key(k)) {
            let mut merged = (*attributes).clone();
            merged.extend(self.attributes.iter().map(|(k, v)| (k.clone(), v.clone())));
            self.attributes = Arc::new(merged);
        }
    }

    /// Whole years at `on`, counting the birthday as the first of the month.
    pub fn age_on(&self, on: Date) -> Option<u32> {
        let (year, month) = self.birth_month.as_deref()?.split_once('-')?;
        let born = Date::from_calendar_date(
            year.parse().ok()?,
            Month::try_from(month.parse::<u8>().ok()?).ok()?,
            1,
        )
        .ok()?;
        if born > on {
            return None;
        }
        let mut age = on.year() - born.year();
        if (on.month() as u8) < (born.month() as u8) {
            age -= 1;
        }
        u32::try_from(age).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_set_holds_each_text_once_in_order() {
        let mut set = TextSet::default();
        for text in ["RY9", "E08000099", "RX9", "RY9"] {
            set.insert(text.into());
        }
        let held: Vec<&str> = set.iter().map(|t| &**t).collect();
        assert_eq!(held, ["E08000099", "RX9", "RY9"]);
        assert!(!set.insert("RX9".into()), "already held");
        assert!(set.contains("RX9") && !set.contains("RX"));
        let collected: TextSet = ["b", "a", "b"].into_iter().map(Text::from).collect();
        assert_eq!(collected.len(), 2);
        assert_eq!(collected, ["a", "b"].into_iter().map(Text::from).collect());
    }
}
