//! The linked population as analytics reads it: one entry per person on the
//! spine, with what its records say (birth month, sex, the organisations and
//! datasets it is known to) and its events in date order.

use std::collections::HashMap;

use futures::TryStreamExt;
use sqlx::Row;

use super::{Storage, StorageError};
use crate::analytics::symbol::Symbol;
use crate::analytics::{Interner, Person, PersonEvent};
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
    /// in clear on their records ([`crate::identifiability`]), children
    /// numbered by their person on the spine; records with none are left
    /// out.
    pub async fn quasi_identifiers(&self) -> Result<Vec<Sighting>, StorageError> {
        let mut rows = sqlx::query(
            "SELECT DISTINCT COALESCE(s.spine_id, r.person_id), r.sex, r.birth_month, \
             r.postcode_district FROM records r LEFT JOIN person_spine s ON s.person_id = r.person_id \
             WHERE r.sex IS NOT NULL OR r.birth_month IS NOT NULL OR r.postcode_district IS NOT NULL",
        )
        .fetch(&self.pool);
        let mut children: HashMap<String, u32> = HashMap::new();
        let mut sightings = Vec::new();
        while let Some(row) = rows.try_next().await? {
            let person: String = row.try_get(0)?;
            let next = children.len() as u32;
            sightings.push(Sighting {
                child: *children.entry(person).or_insert(next),
                sex: row.try_get(1)?,
                birth_month: row.try_get(2)?,
                postcode_district: row.try_get(3)?,
            });
        }
        Ok(sightings)
    }

    /// The whole linked population, for analytics. Three plain scans and
    /// no joins: the spine and the batches' datasets are read into memory
    /// first, then records and events are streamed and placed by person.
    pub async fn population(&self) -> Result<Vec<Person>, StorageError> {
        let mut spine: HashMap<String, String> = HashMap::new();
        let mut rows =
            sqlx::query("SELECT person_id, spine_id FROM person_spine").fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            let (person, linked): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            if person != linked {
                spine.insert(person, linked);
            }
        }
        drop(rows);
        let mut interner = Interner::default();
        // Each batch's dataset, by "organisation\0batch id".
        let batch_key = |key: &mut String, organisation: &str, batch: &str| {
            key.clear();
            key.push_str(organisation);
            key.push('\0');
            key.push_str(batch);
        };
        let mut key = String::new();
        let mut datasets: HashMap<String, Symbol> = HashMap::new();
        let mut rows =
            sqlx::query("SELECT organisation, batch_id, dataset FROM batches").fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            batch_key(&mut key, row.try_get(0)?, row.try_get(1)?);
            let dataset: &str = row.try_get(2)?;
            datasets.insert(key.clone(), Symbol::new(dataset)?);
        }
        drop(rows);

        let mut people: Vec<Person> = Vec::new();
        // Each spine person's place, then each stored person id's.
        let mut by_spine: HashMap<String, usize> = HashMap::new();
        let mut by_person: HashMap<String, usize> = HashMap::new();
        let mut records = sqlx::query(
            "SELECT person_id, organisation, dataset, sex, birth_month, attributes FROM records",
        )
        .fetch(&self.pool);
        while let Some(row) = records.try_next().await? {
            let person_id: String = row.try_get(0)?;
            let at = match by_person.get(&person_id) {
                Some(&at) => at,
                None => {
                    let key = spine.get(&person_id).unwrap_or(&person_id);
                    let at = *by_spine.entry(key.clone()).or_insert_with_key(|key| {
                        people.push(Person::with_key(key));
                        people.len() - 1
                    });
                    by_person.insert(person_id, at);
                    at
                }
            };
            let organisation: String = row.try_get(1)?;
            let dataset: String = row.try_get(2)?;
            let sex: Option<String> = row.try_get(3)?;
            let birth_month: Option<String> = row.try_get(4)?;
            let attributes: String = row.try_get(5)?;
            let person = &mut people[at];
            person.add_record(
                interner.text(&organisation),
                interner.text(&dataset),
                sex.map(|s| interner.text(&s)),
                birth_month.map(|m| interner.text(&m)),
            );
            person.add_attributes(interner.attributes(&attributes));
        }
        drop(records);
        drop(by_spine);
        drop(spine);

        let mut events = sqlx::query(
            "SELECT person_id, organisation, batch_id, event_type, event_date, attributes FROM events",
        )
        .fetch(&self.pool);
        // Events with no record, no batch or an unreadable date (none, unless
        // the database was changed by hand) are counted and reported.
        let mut unplaced = 0u64;
        while let Some(row) = events.try_next().await? {
            let person_id: &str = row.try_get(0)?;
            batch_key(&mut key, row.try_get(1)?, row.try_get(2)?);
            let date: &str = row.try_get(4)?;
            let (Some(&at), Some(dataset), Some(date)) =
                (by_person.get(person_id), datasets.get(&key), iso_date(date))
            else {
                unplaced += 1;
                continue;
            };
            let event_type: &str = row.try_get(3)?;
            let attributes: &str = row.try_get(5)?;
            people[at].events.push(PersonEvent {
                event_type: Symbol::new(event_type)?,
                dataset: *dataset,
                date,
                attributes: interner.attributes(attributes),
            });
        }
        drop(events);
        if unplaced > 0 {
            tracing::warn!(
                events = unplaced,
                "stored events left out of analytics: no matching record or batch, or an unreadable date"
            );
        }
        for person in &mut people {
            person.events.sort_by_key(|e| e.date);
            person.events.shrink_to_fit();
        }
        Ok(people)
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
            let placeholders: Vec<String> =
                (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT DISTINCT r.local_pseudonym, COALESCE(s.spine_id, r.person_id) AS person \
                 FROM records r LEFT JOIN person_spine s ON s.person_id = r.person_id \
                 WHERE r.organisation = $1 AND r.local_pseudonym IN ({})",
                placeholders.join(", ")
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
