//! A key rotation's storage side (`crate::rotation`): where each stored
//! record came from and whose it is, and what a store built under new keys
//! takes over from the store it replaces.

use std::collections::{BTreeMap, HashMap};

use futures::TryStreamExt;
use joinery_linkage::cluster::Link;
use sqlx::{AnyConnection, Row};

use super::links::{Key, LinkChanges};
use super::rows::table_rows;
use super::{Storage, StorageError, append_audit_in, count, to_i64};
use crate::audit::record::{AuditEvent, AuditRecord};
use crate::rotation::RecordOrigin;

/// What a rotated store takes over: nothing that names a person, and no
/// pseudonym; its links only by where records came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TakenOver {
    /// Privacy loss (rho, in billionths) already spent, by agreement id:
    /// a rotation must never give an analyst a fresh budget.
    pub privacy_spent: BTreeMap<String, u64>,
    /// The fitted linkage models: re-linking under them, the new store's
    /// people are the old store's, whatever the keys (a model fitted
    /// afresh moves borderline pairs).
    pub models: Vec<TakenModel>,
    /// The last linkage run of each parameters version whose links are
    /// stored: the new store builds on them, so a pair the old keys'
    /// encodings put at the threshold is not decided again under the new
    /// keys' (whose Bloom filters collide elsewhere).
    pub links: Vec<TakenLinks>,
}

/// One parameters version's last linkage run, by where records came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TakenLinks {
    pub params_version: u32,
    /// Every entity that run linked: where the first of its records came
    /// from (what both stores hold alike) and the number that broke its
    /// ties.
    pub entities: Vec<(RecordOrigin, i64)>,
    /// Its links, by the numbers of `entities`.
    pub links: Vec<Link>,
}

/// An entity of a store, named by where the first of its records came from.
struct EntityOrigin {
    key: (String, String, String),
    tiebreak: i64,
    origin: RecordOrigin,
}

impl EntityOrigin {
    fn key(&self) -> Key<'_> {
        (&self.key.0, &self.key.1, &self.key.2)
    }
}

table_rows! {
    /// An entity taken over, as `UPDATE … FROM` reads it.
    struct CarriedEntity<'a> in "linkage_entities" as CARRIED_ENTITIES {
        person_id: &'a str => Text,
        organisation: &'a str => Text,
        local_pseudonym: &'a str => Text,
        tiebreak: i64 => Integer,
    }
}

/// Entities marked per statement when links are taken over.
const ENTITIES_PER_STATEMENT: usize = 10_000;

/// The entities of parameters `version` (only those linked, if `linked`),
/// each with the origin of the first of its records (by dataset, then
/// source row) and its tiebreak number.
async fn entity_origins(
    connection: &mut AnyConnection,
    version: u32,
    linked: bool,
) -> Result<Vec<EntityOrigin>, StorageError> {
    let sql = format!(
        "SELECT e.person_id, e.organisation, e.local_pseudonym, e.tiebreak, \
         r.dataset, r.source_row FROM linkage_entities e JOIN records r \
         ON r.person_id = e.person_id AND r.organisation = e.organisation \
         AND r.local_pseudonym = e.local_pseudonym \
         WHERE e.params_version = $1{} \
         ORDER BY e.person_id, e.organisation, e.local_pseudonym",
        if linked { " AND e.linked = 1" } else { "" }
    );
    let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(i64::from(version))
        .fetch(connection);
    let mut entities: Vec<EntityOrigin> = Vec::new();
    while let Some(row) = rows.try_next().await? {
        let key: (String, String, String) = (
            row.try_get("person_id")?,
            row.try_get("organisation")?,
            row.try_get("local_pseudonym")?,
        );
        let origin = RecordOrigin {
            organisation: key.1.clone(),
            dataset: row.try_get("dataset")?,
            source_row: row.try_get("source_row")?,
        };
        match entities.last_mut() {
            Some(last) if last.key == key => {
                if origin < last.origin {
                    last.origin = origin;
                }
            }
            _ => {
                let tiebreak =
                    super::linkage::tiebreak(row.try_get("tiebreak")?, &key.0, &key.1, &key.2)
                        as i64;
                entities.push(EntityOrigin {
                    key,
                    tiebreak,
                    origin,
                });
            }
        }
    }
    Ok(entities)
}

/// One fitted linkage model, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenModel {
    pub params_version: u32,
    pub model: String,
    pub quality: Option<String>,
    pub entities: u64,
}

impl Storage {
    /// Every stored record's origin (organisation, dataset, source row)
    /// with its person on the spine: what [`crate::rotation::compare`]
    /// compares between two stores.
    pub async fn record_people(&self) -> Result<Vec<(RecordOrigin, String)>, StorageError> {
        let mut rows = sqlx::query(
            "SELECT DISTINCT r.organisation, r.dataset, r.source_row, \
             COALESCE(s.spine_id, r.person_id) FROM records r \
             LEFT JOIN person_spine s ON s.person_id = r.person_id",
        )
        .fetch(&self.pool);
        let mut people = Vec::new();
        while let Some(row) = rows.try_next().await? {
            people.push((
                RecordOrigin {
                    organisation: row.try_get(0)?,
                    dataset: row.try_get(1)?,
                    source_row: row.try_get(2)?,
                },
                row.try_get(3)?,
            ));
        }
        Ok(people)
    }

    /// What a store replacing this one takes over.
    pub async fn to_take_over(&self) -> Result<TakenOver, StorageError> {
        let mut taken = TakenOver::default();
        for row in sqlx::query("SELECT agreement_id, spent_nano FROM privacy_spent")
            .fetch_all(&self.pool)
            .await?
        {
            taken
                .privacy_spent
                .insert(row.try_get("agreement_id")?, count(&row, "spent_nano")?);
        }
        for row in sqlx::query(
            "SELECT params_version, model, quality, entities, runs FROM linkage_models \
             ORDER BY params_version",
        )
        .fetch_all(&self.pool)
        .await?
        {
            let params_version =
                u32::try_from(row.try_get::<i64, _>("params_version")?).unwrap_or_default();
            taken.models.push(TakenModel {
                params_version,
                model: row.try_get("model")?,
                quality: row.try_get("quality")?,
                entities: count(&row, "entities")?,
            });
            let entities =
                entity_origins(&mut *self.pool.acquire().await?, params_version, true).await?;
            let runs: i64 = row.try_get("runs")?;
            let stored = self
                .stored_links_of(params_version, runs, entities.len(), |i| {
                    entities[i as usize].key()
                })
                .await?;
            if let Some(links) = stored {
                taken.links.push(TakenLinks {
                    params_version,
                    entities: entities
                        .into_iter()
                        .map(|e| (e.origin, e.tiebreak))
                        .collect(),
                    links,
                });
            }
        }
        Ok(taken)
    }

    /// Takes over `taken` from the store this one replaces, audited, all or
    /// nothing; only while this store has released nothing, so no privacy
    /// loss is counted twice or lost. Its own fitted models are replaced.
    pub async fn take_over(&self, taken: &TakenOver) -> Result<(), StorageError> {
        let mut tx = self.pool.begin().await?;
        let released: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM releases")
            .fetch_one(&mut *tx)
            .await?;
        let agreements: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM privacy_spent")
            .fetch_one(&mut *tx)
            .await?;
        if released > 0 || agreements > 0 {
            return Err(StorageError::AlreadyAnswered {
                released,
                agreements,
            });
        }
        for (agreement, spent) in &taken.privacy_spent {
            sqlx::query("INSERT INTO privacy_spent (agreement_id, spent_nano) VALUES ($1, $2)")
                .bind(agreement)
                .bind(to_i64(*spent))
                .execute(&mut *tx)
                .await?;
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        for m in &taken.models {
            super::linkage::save_model(
                &mut tx,
                m.params_version,
                &m.model,
                m.quality.as_deref(),
                m.entities,
                now,
            )
            .await?;
        }
        // What a gateway kept of this store's runs was found under the
        // models replaced.
        let runs: HashMap<i64, i64> = sqlx::query_as(
            "UPDATE linkage_models SET runs = runs + 1 RETURNING params_version, runs",
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let mut links = BTreeMap::new();
        for carried in &taken.links {
            let Some(&runs) = runs.get(&i64::from(carried.params_version)) else {
                continue;
            };
            let count = self.carry_links(&mut tx, carried, runs).await?;
            links.insert(carried.params_version, count);
        }
        let event = AuditEvent::TookOver {
            privacy_spent_nano: taken.privacy_spent.clone(),
            linkage_models: taken.models.iter().map(|m| m.params_version).collect(),
            links,
        };
        append_audit_in(&mut tx, &AuditRecord::new("gateway", None, &event)).await?;
        tx.commit().await?;
        Ok(())
    }
}

impl Storage {
    /// Inside the take-over: the old store's last run under one parameters
    /// version, onto this store's entities of the same origins. Those are
    /// marked linked, with the old store's tiebreak numbers, and the links
    /// between them stored as this store's last run's (run `runs`); every
    /// other entity is pending, so the next run compares only its pairs
    /// ([`crate::linker::RunMode::TakenOver`]). Returns how many links
    /// were carried.
    async fn carry_links(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        carried: &TakenLinks,
        runs: i64,
    ) -> Result<u64, StorageError> {
        let version = carried.params_version;
        let here = entity_origins(&mut *tx, version, false).await?;
        let by_origin: HashMap<&RecordOrigin, u32> = here
            .iter()
            .enumerate()
            .map(|(i, e)| (&e.origin, i as u32))
            .collect();
        let number: Vec<Option<u32>> = carried
            .entities
            .iter()
            .map(|(origin, _)| by_origin.get(origin).copied())
            .collect();
        sqlx::query("UPDATE linkage_entities SET linked = 0 WHERE params_version = $1")
            .bind(i64::from(version))
            .execute(&mut **tx)
            .await?;
        let marked: Vec<CarriedEntity> = number
            .iter()
            .zip(&carried.entities)
            .filter_map(|(&n, &(_, tiebreak))| {
                let (person_id, organisation, local_pseudonym) = here[n? as usize].key();
                Some(CarriedEntity {
                    person_id,
                    organisation,
                    local_pseudonym,
                    tiebreak,
                })
            })
            .collect();
        for marked in marked.chunks(ENTITIES_PER_STATEMENT) {
            let sql = format!(
                "UPDATE linkage_entities SET linked = 1, tiebreak = t.tiebreak FROM ({}) AS t \
                 WHERE linkage_entities.person_id = t.person_id \
                 AND linkage_entities.organisation = t.organisation \
                 AND linkage_entities.local_pseudonym = t.local_pseudonym",
                CARRIED_ENTITIES.select(self.backend)
            );
            CARRIED_ENTITIES
                .bind(self.backend, sql, marked)?
                .execute(&mut **tx)
                .await?;
        }
        let links: Vec<Link> = carried
            .links
            .iter()
            .filter_map(|l| {
                let (a, b) = (
                    number.get(l.a as usize)?.as_ref()?,
                    number.get(l.b as usize)?.as_ref()?,
                );
                Some(Link {
                    a: *a.min(b),
                    b: *a.max(b),
                    ..*l
                })
            })
            .collect();
        LinkChanges::of_keys(version, |i| here[i as usize].key(), None, &links)
            .write(tx, self.backend, runs)
            .await?;
        Ok(links.len() as u64)
    }
}
