//! The linked population as analytics reads it: one entry per person on the
//! spine, with what its records say (birth month, sex, the organisations and
//! datasets it is known to) and its events in date order. Each read is one
//! snapshot transaction; on PostgreSQL, gateways holding shards of the
//! population can read in one snapshot another gateway exported
//! ([`SharedSnapshot`]), so they all land on the same data generation.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::TryStreamExt;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::{Storage, StorageError, for_each_in, placeholders};
use crate::analytics::symbol::Symbol;
use crate::analytics::{Interner, Person, PersonEvent, Shard};
use crate::identifiability::Sighting;

impl Storage {
    /// A number that changes whenever the population changes.
    pub async fn data_generation(&self) -> Result<i64, StorageError> {
        Ok(
            sqlx::query_scalar("SELECT n FROM data_generation WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Each child's distinct combinations of the quasi-identifiers stored
    /// in clear on their records ([`crate::identifiability`]): sex, the
    /// birth month (or the quarter or year an agreement coarsened it to)
    /// and the postcode district (or area); children numbered by their
    /// person on the spine; records with none are left out.
    pub async fn quasi_identifiers(&self) -> Result<Vec<Sighting>, StorageError> {
        use joinery_policies::model::Transform;
        use joinery_policies::transform::{COARSER_BIRTH_PERIODS, wire_name};
        let mut rows = sqlx::query(
            "SELECT DISTINCT COALESCE(s.spine_id, r.person_id), r.sex, r.birth_month, \
             r.postcode_district, r.attributes FROM records r \
             LEFT JOIN person_spine s ON s.person_id = r.person_id",
        )
        .fetch(&self.pool);
        // Coarser periods and places travel as free attributes.
        let births: Vec<&str> = COARSER_BIRTH_PERIODS
            .iter()
            .filter_map(|t| wire_name("date_of_birth", t))
            .collect();
        let area = wire_name("postcode", &Transform::Area);
        let mut children: HashMap<String, u32> = HashMap::new();
        let mut sightings = Vec::new();
        while let Some(row) = rows.try_next().await? {
            // Written by the gateway itself, as the population reads them.
            let attributes: HashMap<String, String> =
                serde_json::from_str(row.try_get(4)?).unwrap_or_default();
            let free = |name: Option<&str>| attributes.get(name?).cloned();
            let sex: Option<String> = row.try_get(1)?;
            let birth = row
                .try_get::<Option<String>, _>(2)?
                .or_else(|| births.iter().find_map(|name| free(Some(name))));
            let place = row.try_get::<Option<String>, _>(3)?.or_else(|| free(area));
            if sex.is_none() && birth.is_none() && place.is_none() {
                continue;
            }
            let person: String = row.try_get(0)?;
            let next = children.len() as u32;
            sightings.push(Sighting {
                child: *children.entry(person).or_insert(next),
                sex,
                birth,
                place,
            });
        }
        Ok(sightings)
    }

    /// The linked population, for analytics — the people of `shard`
    /// ([`Shard::WHOLE`] for everyone) — and the data generation it is:
    /// read in one snapshot transaction. Plain scans and no joins: the
    /// spine and the batches' datasets are read into memory first, then
    /// records and events are streamed and placed by person (those of
    /// other shards passed over). Read in `shared`'s snapshot where given,
    /// it is the generation that snapshot was exported at.
    pub async fn population(
        &self,
        interner: &mut Interner,
        shard: Shard,
        shared: Option<&SnapshotId>,
    ) -> Result<PopulationRead, StorageError> {
        let mut tx = self.snapshot(shared).await?;
        let (generation, _) = generation_and_log_start(&mut tx).await?;
        let mut placing = Placing::new(interner, batch_datasets(&mut tx).await?, shard);
        let mut rows = sqlx::query("SELECT person_id, spine_id FROM person_spine").fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            placing.spine_row(&row)?;
        }
        drop(rows);
        let mut rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RECORD_COLUMNS} FROM records"
        )))
        .fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            placing.record(&row)?;
        }
        drop(rows);
        let mut rows = sqlx::query(AssertSqlSafe(format!("SELECT {EVENT_COLUMNS} FROM events")))
            .fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            placing.event(&row)?;
        }
        drop(rows);
        tx.commit().await?;
        Ok(PopulationRead {
            generation,
            people: placing.finish(),
        })
    }

    /// The people changed after generation `since`, read again, in one
    /// snapshot transaction — or `None` when the change log no longer
    /// reaches back to `since` (pruned) or more than `limit` stored person
    /// ids changed: then reading everyone ([`Storage::population`]) is the
    /// cheaper way. Read in `shared`'s snapshot where given, as
    /// [`Storage::population`] is.
    pub async fn population_changes(
        &self,
        since: i64,
        limit: usize,
        interner: &mut Interner,
        shard: Shard,
        shared: Option<&SnapshotId>,
    ) -> Result<Option<PopulationChanges>, StorageError> {
        let mut tx = self.snapshot(shared).await?;
        let (generation, log_start) = generation_and_log_start(&mut tx).await?;
        if since < log_start {
            return Ok(None);
        }
        let changed: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT person_id FROM population_changes WHERE generation > $1 AND generation <= $2",
        )
        .bind(since)
        .bind(generation)
        .fetch_all(&mut *tx)
        .await?;
        if changed.len() > limit {
            return Ok(None);
        }
        let per_statement = self.backend.parameters_per_statement();
        // A changed id is a stored person id (its spine person changed) or
        // a spine id (that person gained or lost members).
        let mut spines: HashSet<String> = changed.iter().cloned().collect();
        for_each_in(
            &mut tx,
            per_statement,
            "SELECT spine_id FROM person_spine WHERE person_id",
            &changed,
            |row| {
                spines.insert(row.try_get(0)?);
                Ok(())
            },
        )
        .await?;
        // Only this shard's people are read again.
        let (spines, keys): (Vec<String>, Vec<u64>) = spines
            .into_iter()
            .map(|spine| {
                let key = Person::key_of(&spine);
                (spine, key)
            })
            .filter(|(_, key)| shard.holds(*key))
            .unzip();
        let mut placing = Placing::new(interner, batch_datasets(&mut tx).await?, shard);
        let mut members: Vec<String> = Vec::new();
        for_each_in(
            &mut tx,
            per_statement,
            "SELECT person_id, spine_id FROM person_spine WHERE spine_id",
            &spines,
            |row| {
                placing.spine_row(row)?;
                members.push(row.try_get(0)?);
                Ok(())
            },
        )
        .await?;
        let records = format!("SELECT {RECORD_COLUMNS} FROM records WHERE person_id");
        for_each_in(&mut tx, per_statement, &records, &members, |row| {
            placing.record(row)
        })
        .await?;
        let events = format!("SELECT {EVENT_COLUMNS} FROM events WHERE person_id");
        for_each_in(&mut tx, per_statement, &events, &members, |row| {
            placing.event(row)
        })
        .await?;
        tx.commit().await?;
        Ok(Some(PopulationChanges {
            generation,
            keys,
            people: placing.finish(),
        }))
    }

    /// Forgets the change log but for the last `keep` generations; a
    /// population loaded before that is then reloaded in full. Returns the
    /// rows deleted.
    pub async fn prune_population_changes(&self, keep: i64) -> Result<u64, StorageError> {
        let _writing = match &self.write_lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let mut tx = self.pool.begin().await?;
        let start: i64 = sqlx::query_scalar(
            "UPDATE data_generation SET changes_from = n - $1 WHERE id = 1 AND changes_from < n - $1 \
             RETURNING changes_from",
        )
        .bind(keep)
        .fetch_optional(&mut *tx)
        .await?
        .unwrap_or(i64::MIN);
        let deleted = sqlx::query("DELETE FROM population_changes WHERE generation <= $1")
            .bind(start)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(deleted)
    }

    /// A read-only transaction that sees one state of the database
    /// throughout (SQLite's read transactions always do).
    async fn snapshot(
        &self,
        shared: Option<&SnapshotId>,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, StorageError> {
        let mut tx = self.pool.begin().await?;
        if self.backend == super::Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
            if let Some(SnapshotId(id)) = shared {
                // A SET takes no bound parameters; the id is checked to be
                // hex digits and dashes (SnapshotId::parse).
                sqlx::query(AssertSqlSafe(format!("SET TRANSACTION SNAPSHOT '{id}'")))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        Ok(tx)
    }

    /// The data as it stands, held still so that other gateways can read
    /// it too ([`SharedSnapshot`]).
    pub async fn shared_snapshot(&self) -> Result<SharedSnapshot, StorageError> {
        let mut open = self.snapshot(None).await?;
        let (generation, _) = generation_and_log_start(&mut open).await?;
        let id = match self.backend {
            super::Backend::Postgres => {
                let id: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
                    .fetch_one(&mut *open)
                    .await?;
                SnapshotId::parse(&id)
            }
            super::Backend::Sqlite => None,
        };
        Ok(SharedSnapshot {
            generation,
            id,
            _open: std::sync::Mutex::new(open),
        })
    }
}

/// The data at one generation, held still for as long as this lives: on
/// PostgreSQL a read-only transaction whose snapshot is exported
/// (`pg_export_snapshot()`), which any connection to the same database can
/// read in while it stays open. A gateway answering from shards holds one
/// while it asks them, so every shard reads the same generation however
/// often deliveries move the data meanwhile. SQLite has no snapshot to
/// share (`id` is `None`).
pub struct SharedSnapshot {
    /// The data generation it holds.
    pub generation: i64,
    pub id: Option<SnapshotId>,
    /// Never locked: a `Mutex` makes the snapshot shareable between the
    /// tasks that ask the shards (a transaction alone is `Send`, not
    /// `Sync`).
    _open: std::sync::Mutex<sqlx::Transaction<'static, sqlx::Any>>,
}

/// An exported PostgreSQL snapshot's id, such as `00000003-0000001B-1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotId(String);

impl SnapshotId {
    /// `text` as a snapshot id, if it is one: hex digits and dashes only
    /// (it is written into a `SET` statement, which takes no parameters).
    pub fn parse(text: &str) -> Option<Self> {
        let well_formed = !text.is_empty()
            && text.len() <= 64
            && text.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        well_formed.then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The population as read at one data generation.
#[derive(Debug)]
pub struct PopulationRead {
    pub generation: i64,
    pub people: Vec<Arc<Person>>,
}

/// The people changed since a population was loaded, as they are now.
#[derive(Debug)]
pub struct PopulationChanges {
    /// The data generation this brings the population to.
    pub generation: i64,
    /// Every person ([`Person::key`]) whose entry is replaced or dropped.
    pub keys: Vec<u64>,
    /// Those of them that still have records.
    pub people: Vec<Arc<Person>>,
}

const RECORD_COLUMNS: &str = "person_id, organisation, dataset, sex, birth_month, attributes";
const EVENT_COLUMNS: &str = "person_id, organisation, batch_id, event_type, event_date, attributes";

/// The data generation and where its change log starts.
async fn generation_and_log_start(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
) -> Result<(i64, i64), StorageError> {
    let row = sqlx::query("SELECT n, changes_from FROM data_generation WHERE id = 1")
        .fetch_one(&mut **tx)
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Each batch's dataset, by [`batch_key`].
async fn batch_datasets(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
) -> Result<HashMap<String, Symbol>, StorageError> {
    let mut datasets = HashMap::new();
    let mut key = String::new();
    let mut rows =
        sqlx::query("SELECT organisation, batch_id, dataset FROM batches").fetch(&mut **tx);
    while let Some(row) = rows.try_next().await? {
        batch_key(&mut key, row.try_get(0)?, row.try_get(1)?);
        let dataset: &str = row.try_get(2)?;
        datasets.insert(key.clone(), Symbol::new(dataset)?);
    }
    Ok(datasets)
}

/// "organisation\0batch id", into `key`.
fn batch_key(key: &mut String, organisation: &str, batch: &str) {
    key.clear();
    key.push_str(organisation);
    key.push('\0');
    key.push_str(batch);
}

/// Places records and events, as read, on their spine persons.
struct Placing<'i> {
    interner: &'i mut Interner,
    datasets: HashMap<String, Symbol>,
    /// Stored person id → spine id, where they differ.
    spine: IdMap<Box<str>>,
    /// Each behind the pointer the population will hold it by, so no
    /// person is copied once read (nothing else holds these pointers yet:
    /// `Arc::make_mut` never copies here).
    people: Vec<Arc<Person>>,
    /// Each spine person's place. A stored person id is placed through
    /// `spine` and this (no map of its own: at a million children that
    /// would be a fifth of what the load allocates).
    by_spine: IdMap<usize>,
    /// Events whose person has no record, with no batch or an unreadable
    /// date (none, unless the database was changed by hand).
    unplaced: u64,
    key: String,
    /// Whose records and events are placed; the rest are passed over.
    shard: Shard,
}

impl<'i> Placing<'i> {
    fn new(interner: &'i mut Interner, datasets: HashMap<String, Symbol>, shard: Shard) -> Self {
        Self {
            interner,
            datasets,
            spine: IdMap::default(),
            people: Vec::new(),
            by_spine: IdMap::default(),
            unplaced: 0,
            key: String::new(),
            shard,
        }
    }

    /// A `person_spine` row: (person id, spine id). Read them all first.
    fn spine_row(&mut self, row: &AnyRow) -> Result<(), StorageError> {
        let (person, linked): (&str, &str) = (row.try_get(0)?, row.try_get(1)?);
        if person != linked {
            self.spine.insert(IdKey::of(person), linked.into());
        }
        Ok(())
    }

    /// A record row ([`RECORD_COLUMNS`]).
    fn record(&mut self, row: &AnyRow) -> Result<(), StorageError> {
        let person_id: &str = row.try_get(0)?;
        let (spine_id, key) = spine_of(&self.spine, person_id);
        let at = match self.by_spine.get(key) {
            Some(&at) => at,
            None => {
                // Another shard's person is passed over without a place:
                // remembering them would hold a map of everyone while
                // loading (measured: 12-22 more bytes per child of the
                // region kept after the load), and working out their shard
                // again costs less.
                let person = Person::with_key(spine_id);
                if !self.shard.holds(person.key) {
                    return Ok(());
                }
                self.people.push(Arc::new(person));
                self.by_spine.insert(key, self.people.len() - 1);
                self.people.len() - 1
            }
        };
        let sex: Option<&str> = row.try_get(3)?;
        let birth_month: Option<&str> = row.try_get(4)?;
        let person = Arc::make_mut(&mut self.people[at]);
        person.add_record(
            Symbol::new(row.try_get(1)?)?,
            Symbol::new(row.try_get(2)?)?,
            sex.map(Symbol::new).transpose()?,
            birth_month.map(Symbol::new).transpose()?,
        );
        person.add_attributes(self.interner.attributes(row.try_get(5)?));
        Ok(())
    }

    /// An event row ([`EVENT_COLUMNS`]), after its person's records.
    fn event(&mut self, row: &AnyRow) -> Result<(), StorageError> {
        let person_id: &str = row.try_get(0)?;
        batch_key(&mut self.key, row.try_get(1)?, row.try_get(2)?);
        let date: &str = row.try_get(4)?;
        let (spine_id, key) = spine_of(&self.spine, person_id);
        let (Some(&at), Some(dataset), Some(date)) = (
            self.by_spine.get(key),
            self.datasets.get(&self.key),
            iso_date(date),
        ) else {
            if self.shard.holds(Person::key_of(spine_id)) {
                self.unplaced += 1;
            }
            return Ok(());
        };
        Arc::make_mut(&mut self.people[at])
            .events
            .push(PersonEvent {
                event_type: Symbol::new(row.try_get(3)?)?,
                dataset: *dataset,
                date,
                attributes: self.interner.attributes(row.try_get(5)?),
            });
        Ok(())
    }

    /// The people, each one's events in a fixed order (by date, then type,
    /// dataset and attributes), so the result does not depend on the order
    /// rows were read in.
    fn finish(mut self) -> Vec<Arc<Person>> {
        if self.unplaced > 0 {
            tracing::warn!(
                events = self.unplaced,
                "stored events left out of analytics: their person has no record, no matching batch, or an unreadable date"
            );
        }
        for person in &mut self.people {
            let person = Arc::make_mut(person);
            person.events.sort_by(|a, b| {
                (a.date, &*a.event_type, &*a.dataset, &*a.attributes).cmp(&(
                    b.date,
                    &*b.event_type,
                    &*b.dataset,
                    &*b.attributes,
                ))
            });
            person.events.shrink_to_fit();
        }
        self.people.shrink_to_fit();
        self.people
    }
}

/// The spine id of a stored person id, given the ids that differ, and its
/// key (the person id's own where they are the same: read once per row).
fn spine_of<'a>(spine: &'a IdMap<Box<str>>, person_id: &'a str) -> (&'a str, IdKey<'a>) {
    let key = IdKey::of(person_id);
    match spine.get(key) {
        Some(linked) => (linked, IdKey::of(linked)),
        None => (person_id, key),
    }
}

/// A map keyed by stored person ids, compact enough for a whole
/// population: an id the gateway made (32 lowercase hex digits) is kept as
/// the 16 bytes it spells, any other as its text. These maps are most of
/// what loading a million children holds besides the people themselves,
/// so a key of 16 bytes in place of a `String` (24 bytes and a heap
/// allocation) lowers the load's peak, and what the allocator keeps after
/// it (docs/scaling.md).
struct IdMap<V> {
    made: HashMap<[u8; 16], V>,
    other: HashMap<Box<str>, V>,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        Self {
            made: HashMap::new(),
            other: HashMap::new(),
        }
    }
}

impl<V> IdMap<V> {
    fn get(&self, key: IdKey) -> Option<&V> {
        match key {
            IdKey::Made(bytes) => self.made.get(&bytes),
            IdKey::Other(id) => self.other.get(id),
        }
    }

    fn insert(&mut self, key: IdKey, value: V) {
        match key {
            IdKey::Made(bytes) => self.made.insert(bytes, value),
            IdKey::Other(id) => self.other.insert(id.into(), value),
        };
    }
}

/// A stored person id as an [`IdMap`] keys it.
#[derive(Clone, Copy)]
enum IdKey<'a> {
    /// The 16 bytes of an id as the gateway makes them.
    Made([u8; 16]),
    Other(&'a str),
}

impl<'a> IdKey<'a> {
    /// Only lowercase hex is the gateway's: `ABCD…` is another id than
    /// `abcd…`, so it is kept as text.
    fn of(id: &'a str) -> Self {
        let mut bytes = [0; 16];
        let made = id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            && hex::decode_to_slice(id, &mut bytes).is_ok();
        if made {
            Self::Made(bytes)
        } else {
            Self::Other(id)
        }
    }
}

/// A stored `YYYY-MM-DD` date (validated when the batch was stored).
fn iso_date(text: &str) -> Option<time::Date> {
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<u16>().ok();
    let month = time::Month::try_from(u8::try_from(number(5..7)?).ok()?).ok()?;
    time::Date::from_calendar_date(
        i32::from(number(0..4)?),
        month,
        u8::try_from(number(8..10)?).ok()?,
    )
    .ok()
}

/// A cohort released earlier.
impl Storage {
    /// For an organisation's records with these (gateway) local pseudonyms,
    /// each pseudonym and the spine person its record belongs to.
    pub async fn spine_ids_of_local(
        &self,
        organisation: &str,
        local_pseudonyms: &[String],
    ) -> Result<Vec<(String, String)>, StorageError> {
        let mut found = Vec::new();
        // Only placeholders are formatted into the statement.
        for chunk in local_pseudonyms.chunks(500) {
            let sql = format!(
                "SELECT DISTINCT r.local_pseudonym, COALESCE(s.spine_id, r.person_id) AS person \
                 FROM records r LEFT JOIN person_spine s ON s.person_id = r.person_id \
                 WHERE r.organisation = $1 AND r.local_pseudonym IN ({})",
                placeholders(2, chunk.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(organisation);
            for local in chunk {
                query = query.bind(local);
            }
            for row in query.fetch_all(&self.pool).await? {
                found.push((row.try_get(0)?, row.try_get(1)?));
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::{IdKey, IdMap};

    #[test]
    fn person_ids_of_every_form_keep_their_own_entries() {
        let made = "464816900c4da3636b762a6099c1fe16";
        let upper = made.to_uppercase();
        let ids = [
            made,
            upper.as_str(),
            "p1",
            "464816900c4da3636b762a6099c1fe1",
            "",
        ];
        let mut map = IdMap::default();
        for (i, id) in ids.iter().enumerate() {
            map.insert(IdKey::of(id), i);
        }
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(map.get(IdKey::of(id)), Some(&i), "{id:?}");
        }
        assert_eq!(map.made.len(), 1, "only the gateway's own form is packed");
        assert_eq!(map.get(IdKey::of("464816900c4da3636b762a6099c1fe17")), None);
        assert_eq!(map.get(IdKey::of("p2")), None);
    }
}
