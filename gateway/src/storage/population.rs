//! The linked population as analytics reads it: one entry per person on the
//! spine, with what its records say (birth month, sex, the organisations and
//! datasets it is known to) and its events in date order.

use std::collections::HashMap;

use futures::TryStreamExt;
use sqlx::Row;

use super::{Storage, StorageError};
use crate::analytics::{Interner, Person, PersonEvent};

impl Storage {
    /// A number that changes whenever the population changes.
    pub async fn data_generation(&self) -> Result<i64, StorageError> {
        Ok(
            sqlx::query_scalar("SELECT n FROM data_generation WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Every person on the spine (records grouped by spine id, or by their
    /// own person id when not joined to another).
    pub async fn population(&self) -> Result<Vec<Person>, StorageError> {
        let mut people: Vec<Person> = Vec::new();
        let mut interner = Interner::default();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut records = sqlx::query(
            "SELECT COALESCE(s.spine_id, r.person_id) AS person, r.organisation, r.dataset, r.sex, r.birth_month, r.attributes \
             FROM records r LEFT JOIN person_spine s ON s.person_id = r.person_id",
        )
        .fetch(&self.pool);
        while let Some(row) = records.try_next().await? {
            let key: String = row.try_get("person")?;
            let at = *index.entry(key).or_insert_with_key(|key| {
                people.push(Person::with_key(key));
                people.len() - 1
            });
            let organisation: String = row.try_get("organisation")?;
            let dataset: String = row.try_get("dataset")?;
            let sex: Option<String> = row.try_get("sex")?;
            let birth_month: Option<String> = row.try_get("birth_month")?;
            people[at].add_record(
                interner.text(&organisation),
                interner.text(&dataset),
                sex.map(|s| interner.text(&s)),
                birth_month.map(|m| interner.text(&m)),
            );
            let attributes: String = row.try_get("attributes")?;
            people[at].add_attributes(interner.attributes(&attributes));
        }
        drop(records);
        let mut events = sqlx::query(
            "SELECT COALESCE(s.spine_id, e.person_id) AS person, r.dataset, e.event_type, e.event_date, e.attributes \
             FROM events e JOIN records r ON r.person_id = e.person_id AND r.organisation = e.organisation \
             AND r.batch_id = e.batch_id AND r.record_index = e.record_index \
             LEFT JOIN person_spine s ON s.person_id = e.person_id",
        )
        .fetch(&self.pool);
        while let Some(row) = events.try_next().await? {
            let key: String = row.try_get("person")?;
            let Some(&at) = index.get(&key) else { continue };
            let date: String = row.try_get("event_date")?;
            let Ok(date) =
                time::Date::parse(&date, &time::format_description::well_known::Iso8601::DATE)
            else {
                continue;
            };
            let attributes: String = row.try_get("attributes")?;
            let event_type: String = row.try_get("event_type")?;
            let dataset: String = row.try_get("dataset")?;
            people[at].events.push(PersonEvent {
                event_type: interner.text(&event_type),
                dataset: interner.text(&dataset),
                date,
                attributes: interner.attributes(&attributes),
            });
        }
        drop(events);
        for person in &mut people {
            person.events.sort_by_key(|e| e.date);
            person.events.shrink_to_fit();
        }
        Ok(people)
    }
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasedCohort {
    pub seq: u64,
    pub at_ms: i64,
    /// Sorted member keys.
    pub members: Vec<u64>,
}

impl Storage {
    /// Cohorts released earlier whose size is within `within` of `size`
    /// (only those can differ from a new one by so few people both ways).
    pub async fn cohorts_near(
        &self,
        size: u64,
        within: u64,
    ) -> Result<Vec<ReleasedCohort>, StorageError> {
        let rows = sqlx::query(
            "SELECT seq, at_ms, members FROM query_cohorts WHERE size >= $1 AND size <= $2 ORDER BY seq",
        )
        .bind(super::to_i64(size.saturating_sub(within)))
        .bind(super::to_i64(size.saturating_add(within)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let members: Vec<u8> = row.try_get("members")?;
                Ok(ReleasedCohort {
                    seq: super::count(row, "seq")?,
                    at_ms: row.try_get("at_ms")?,
                    members: members
                        .chunks_exact(8)
                        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                        .collect(),
                })
            })
            .collect()
    }

    /// Records a released cohort.
    pub async fn log_cohort(&self, actor: &str, members: &[u64]) -> Result<(), StorageError> {
        let bytes: Vec<u8> = members.iter().flat_map(|m| m.to_le_bytes()).collect();
        sqlx::query(
            "INSERT INTO query_cohorts (at_ms, actor, size, members) VALUES ($1, $2, $3, $4)",
        )
        .bind((time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64)
        .bind(actor)
        .bind(super::to_i64(members.len() as u64))
        .bind(bytes)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
