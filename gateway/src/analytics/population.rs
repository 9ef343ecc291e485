//! The linked population as analytics holds it in memory: one [`Person`]
//! per spine person, their events in date order, texts shared through an
//! [`Interner`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use time::Date;

use super::symbol::Symbol;

/// One person on the spine, as analytics sees them. Millions are held, so
/// it is compact: names as two-byte [`Symbol`]s, and the organisations and
/// datasets that know the person in one allocation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Person {
    /// Stands for the person in the query log (a digest of the spine id).
    pub key: u64,
    /// The earliest birth month the records give (YYYY-MM).
    pub birth_month: Option<Symbol>,
    /// `female`, `male`, `indeterminate` or `unknown`. Where records
    /// disagree, a known value over `unknown`, then the first in
    /// alphabetical order: the same whatever order records are read in.
    pub sex: Option<Symbol>,
    /// The organisations that know the person, then the datasets that
    /// hold them, each in alphabetical order.
    known: Box<[Symbol]>,
    /// How many of `known` are organisations.
    organisations: u16,
    /// Record attributes (ethnicity, disability, …). Where records
    /// disagree, the first value in alphabetical order: the same whatever
    /// order records are read in.
    pub attributes: Arc<BTreeMap<Text, Text>>,
    /// In date order.
    pub events: Vec<PersonEvent>,
}

/// Which people a gateway holds for answers: shard `index` of `count`, the
/// people whose [`Person::key`] leaves `index` divided by `count`. A
/// person's key is a digest of their spine id, so all their records fall in
/// one shard, and shards are about equal in size. [`Shard::WHOLE`] holds
/// everyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// Everyone: the one shard of one.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Shard `index` of `count`; `None` unless `index < count`.
    pub fn new(index: u32, count: u32) -> Option<Self> {
        (index < count).then_some(Self { index, count })
    }

    /// Whether the person whose [`Person::key`] is `key` is in this shard.
    pub fn holds(&self, key: u64) -> bool {
        self.count <= 1 || key % u64::from(self.count) == u64::from(self.index)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `I/N`: shard I (from 0) of N.
    fn from_str(text: &str) -> Result<Self, String> {
        let expected =
            || format!("{text:?} is not a shard: expected I/N, shard I (from 0) of N, as 0/4");
        let (index, count) = text.split_once('/').ok_or_else(expected)?;
        let (index, count) = (
            index.trim().parse().map_err(|_| expected())?,
            count.trim().parse().map_err(|_| expected())?,
        );
        Self::new(index, count).ok_or_else(expected)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The linked population held in memory: each person behind their own
/// pointer, so bringing it up to date after a delivery
/// ([`Population::updated`]) copies pointers, not people, and answers under
/// way keep the population they started with. People are in the order
/// they were read, which keeps those read together close in memory.
#[derive(Debug, Clone, Default)]
pub struct Population {
    people: Vec<Arc<Person>>,
}

impl Population {
    pub fn new(people: Vec<Arc<Person>>) -> Self {
        Self { people }
    }

    pub fn people(&self) -> &[Arc<Person>] {
        &self.people
    }

    /// This population with the people `keys` names replaced by `people`:
    /// as they are now, those of them that still have records.
    pub fn updated(&self, keys: &[u64], people: Vec<Arc<Person>>) -> Self {
        let gone: HashSet<u64> = keys.iter().copied().collect();
        let mut updated = Vec::with_capacity(self.people.len() + people.len());
        updated.extend(
            self.people
                .iter()
                .filter(|p| !gone.contains(&p.key))
                .map(Arc::clone),
        );
        updated.extend(people);
        Self { people: updated }
    }

    /// The people in key order: the same population read in any order
    /// compares equal.
    pub fn by_key(&self) -> Vec<&Person> {
        let mut people: Vec<&Person> = self.people.iter().map(|p| &**p).collect();
        people.sort_by_key(|p| p.key);
        people
    }
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
        Self {
            key: Self::key_of(spine_id),
            ..Self::default()
        }
    }

    /// The [`Person::key`] of the person known by `spine_id`.
    pub fn key_of(spine_id: &str) -> u64 {
        let digest = ring::digest::digest(&ring::digest::SHA256, spine_id.as_bytes());
        let mut key = [0u8; 8];
        key.copy_from_slice(&digest.as_ref()[..8]);
        u64::from_le_bytes(key)
    }

    /// The organisations that know the person, in alphabetical order.
    pub fn organisations(&self) -> &[Symbol] {
        &self.known[..usize::from(self.organisations)]
    }

    /// The datasets that hold the person, in alphabetical order.
    pub fn datasets(&self) -> &[Symbol] {
        &self.known[usize::from(self.organisations)..]
    }

    pub fn is_known_to(&self, organisation: &str) -> bool {
        self.organisations()
            .iter()
            .any(|o| o.as_str() == organisation)
    }

    pub fn is_in(&self, dataset: &str) -> bool {
        self.datasets().iter().any(|d| d.as_str() == dataset)
    }

    /// Adds what one record says.
    pub fn add_record(
        &mut self,
        organisation: Symbol,
        dataset: Symbol,
        sex: Option<Symbol>,
        birth_month: Option<Symbol>,
    ) {
        if !self.organisations().contains(&organisation) || !self.datasets().contains(&dataset) {
            let mut organisations = self.organisations().to_vec();
            let mut datasets = self.datasets().to_vec();
            for (names, name) in [(&mut organisations, organisation), (&mut datasets, dataset)] {
                if let Err(at) = names.binary_search_by(|n| n.as_str().cmp(name.as_str())) {
                    names.insert(at, name);
                }
            }
            self.set_known(organisations, datasets);
        }
        if let Some(sex) = sex {
            let rank = |s: Symbol| (s.as_str() == "unknown", s.as_str());
            if self.sex.is_none_or(|known| rank(sex) < rank(known)) {
                self.sex = Some(sex);
            }
        }
        if let Some(month) = birth_month
            && self
                .birth_month
                .is_none_or(|known| month.as_str() < known.as_str())
        {
            self.birth_month = Some(month);
        }
    }

    /// Sets who knows the person: `organisations` and `datasets` each in
    /// alphabetical order.
    fn set_known(&mut self, organisations: Vec<Symbol>, datasets: Vec<Symbol>) {
        self.organisations =
            u16::try_from(organisations.len()).expect("fewer organisations than symbols");
        self.known = organisations.into_iter().chain(datasets).collect();
    }

    /// The person as one agreement's project sees them: only what came from
    /// its `datasets` and its parties' `organisations`; `None` when nothing
    /// did. The same person, not a copy, when everything did (an event's
    /// dataset is one of its person's).
    pub fn within(
        self: &Arc<Self>,
        datasets: &BTreeSet<&str>,
        organisations: &BTreeSet<&str>,
    ) -> Option<Arc<Self>> {
        if self
            .datasets()
            .iter()
            .all(|d| datasets.contains(d.as_str()))
            && self
                .organisations()
                .iter()
                .all(|o| organisations.contains(o.as_str()))
        {
            return (!self.datasets().is_empty()).then(|| Arc::clone(self));
        }
        let datasets_in: Vec<Symbol> = self
            .datasets()
            .iter()
            .filter(|d| datasets.contains(d.as_str()))
            .copied()
            .collect();
        if datasets_in.is_empty() {
            return None;
        }
        let mut person = Self {
            key: self.key,
            birth_month: self.birth_month,
            sex: self.sex,
            attributes: Arc::clone(&self.attributes),
            events: self
                .events
                .iter()
                .filter(|e| datasets.contains(e.dataset.as_str()))
                .cloned()
                .collect(),
            ..Self::default()
        };
        person.set_known(
            self.organisations()
                .iter()
                .filter(|o| organisations.contains(o.as_str()))
                .copied()
                .collect(),
            datasets_in,
        );
        Some(Arc::new(person))
    }

    /// Adds a record's attributes; where a value is held already, the
    /// first of the two in alphabetical order stays.
    pub fn add_attributes(&mut self, attributes: Arc<BTreeMap<Text, Text>>) {
        if self.attributes.is_empty() {
            self.attributes = attributes;
        } else if attributes
            .iter()
            .any(|(k, v)| self.attributes.get(k).is_none_or(|held| v < held))
        {
            let mut merged = (*self.attributes).clone();
            for (k, v) in attributes.iter() {
                match merged.get(k) {
                    Some(held) if held <= v => {}
                    _ => {
                        merged.insert(k.clone(), v.clone());
                    }
                }
            }
            self.attributes = Arc::new(merged);
        }
    }

    /// Whole years at `on`, counted from the first day of the most precise
    /// birth period the records give: the birth month, else the quarter,
    /// else the year (as an agreement coarsens the date of birth). What
    /// that costs is what `policy explain` states
    /// ([`joinery_policies::transform::age_overstated`]).
    pub fn age_on(&self, on: Date) -> Option<u32> {
        let born = self.birth_period_start()?;
        if born > on {
            return None;
        }
        let mut age = on.year() - born.year();
        if (on.month() as u8) < (born.month() as u8) {
            age -= 1;
        }
        u32::try_from(age).ok()
    }

    fn birth_period_start(&self) -> Option<Date> {
        use joinery_policies::model::Transform;
        use joinery_policies::transform::{COARSER_BIRTH_PERIODS, birth_period_start, wire_name};
        if let Some(month) = self.birth_month {
            return birth_period_start(&Transform::Month, month.as_str());
        }
        COARSER_BIRTH_PERIODS.iter().find_map(|transform| {
            let value = self
                .attributes
                .get(wire_name("date_of_birth", transform)?)?;
            birth_period_start(transform, value)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use joinery_policies::model::Transform;
    use joinery_policies::transform::{age_overstated, apply, wire_name};

    /// Ages counted from a birth quarter or year read a year high for the
    /// share of children `policy explain` states; a birth month, where
    /// some record gives one, wins over a coarser period.
    #[test]
    fn ages_from_a_coarser_birth_period_are_as_wrong_as_explain_says() {
        let true_age = |born: Date, on: Date| {
            let had_birthday = (on.month() as u8, on.day()) >= (born.month() as u8, born.day());
            (on.year() - born.year() - i32::from(!had_birthday)) as u32
        };
        for transform in [Transform::Month, Transform::Quarter, Transform::Year] {
            let (mut asked, mut high) = (0u32, 0u32);
            let mut born = time::macros::date!(2012 - 01 - 01);
            while born < time::macros::date!(2016 - 01 - 01) {
                let mut p = Person::default();
                let value = apply(&transform, &born.to_string()).unwrap();
                if transform == Transform::Month {
                    p.add_record("LA".into(), "cin".into(), None, Some(value.as_str().into()));
                } else {
                    let name = wire_name("date_of_birth", &transform).unwrap();
                    p.attributes = Arc::new([(name.into(), value.as_str().into())].into());
                }
                // Asked on every day of 2020.
                let mut on = time::macros::date!(2020 - 01 - 01);
                while on.year() == 2020 {
                    let age = p.age_on(on).unwrap();
                    let truth = true_age(born, on);
                    assert!(age == truth || age == truth + 1, "{born} on {on}: {age}");
                    high += u32::from(age > truth);
                    asked += 1;
                    on += time::Duration::days(1);
                }
                born = born.next_day().unwrap();
            }
            let measured = f64::from(high) / f64::from(asked);
            let stated = age_overstated(&transform).unwrap();
            assert!(
                (measured - stated).abs() < 0.005,
                "{transform:?}: {measured} measured, {stated} stated"
            );
        }
        let mut p = Person {
            attributes: Arc::new([("birth_year".into(), "2015".into())].into()),
            ..Person::default()
        };
        assert_eq!(p.age_on(time::macros::date!(2020 - 02 - 01)), Some(5));
        p.add_record("LA".into(), "cin".into(), None, Some("2015-06".into()));
        assert_eq!(p.age_on(time::macros::date!(2020 - 02 - 01)), Some(4));
        // A value of the wrong shape gives no age rather than a wrong one.
        let q = Person {
            attributes: Arc::new([("birth_quarter".into(), "2015-Q9".into())].into()),
            ..Person::default()
        };
        assert_eq!(q.age_on(time::macros::date!(2020 - 02 - 01)), None);
    }

    #[test]
    fn what_disagreeing_records_say_does_not_depend_on_their_order() {
        let records = [
            ("unknown", "2015-06"),
            ("male", "2015-04"),
            ("female", "2015-05"),
        ];
        let person = |order: &[usize]| {
            let mut p = Person::default();
            for &i in order {
                let (sex, month) = records[i];
                let (organisation, dataset) = [("RX9", "camhs"), ("LA", "cin"), ("LA", "lac")][i];
                p.add_record(
                    organisation.into(),
                    dataset.into(),
                    Some(sex.into()),
                    Some(month.into()),
                );
            }
            let names = |s: &[Symbol]| s.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(",");
            (
                p.sex,
                p.birth_month,
                names(p.organisations()),
                names(p.datasets()),
            )
        };
        let first = person(&[0, 1, 2]);
        assert_eq!(
            first,
            (
                Some("female".into()),
                Some("2015-04".into()),
                "LA,RX9".to_owned(),
                "camhs,cin,lac".to_owned()
            )
        );
        for order in [[2, 1, 0], [1, 0, 2], [0, 2, 1]] {
            assert_eq!(person(&order), first, "{order:?}");
        }
        assert_eq!(
            std::mem::size_of::<Person>(),
            72,
            "millions are held: docs/scaling.md counts on this size"
        );
        assert_eq!(
            person(&[0]).0,
            Some("unknown".into()),
            "unknown when nothing else is known"
        );
    }
}
