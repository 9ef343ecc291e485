//! Storage for fuzzy linkage: each record's encoding and blocking keys
//! (written in its batch's transaction), the person spine, fitted models and
//! the lease that lets one gateway link at a time.

use std::collections::HashMap;

use futures::TryStreamExt;
use joinery_linkage::encode::BLOCK_KEY_LEN;
use joinery_linkage::entities::Entities;
use joinery_linkage::{Encoding, Entity, LinkageParams};
use sqlx::{AssertSqlSafe, Row};

use super::rows::{hex_text, table_rows};
use super::{LinkChanges, NewBatch, Storage, StorageError, to_i64};

/// What a linkage run reads: every entity as the matcher takes it, and
/// beside it (same order) what the run writes back. A gateway keeps it
/// between runs, and an incremental run appends what is new.
pub struct LinkageEntities {
    /// Organisation codes; an entity's `organisation` is an index here.
    pub organisations: Vec<String>,
    pub entities: Entities,
    pub records: Vec<EntityRecord>,
}

impl LinkageEntities {
    pub fn new(params: &LinkageParams) -> Self {
        Self {
            organisations: Vec::new(),
            entities: Entities::new(params),
            records: Vec::new(),
        }
    }
}

/// A linkage model as stored ([`Storage::linkage_model`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredModel {
    /// The fitted model (JSON).
    pub model: String,
    /// Entities it was fitted on.
    pub entities: u64,
    /// Linkage runs saved under its parameters version, by any gateway.
    pub runs: i64,
}

/// A full run's fitted model, saved with its links ([`Storage::save_linkage`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FittedModel {
    /// The model (JSON).
    pub model: String,
    /// What it expects of the links it made (JSON, [`crate::linker::PairQuality`]).
    pub quality: String,
    /// Entities it was fitted on.
    pub entities: u64,
}

/// One organisation's local id as a linkage run writes it back.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityRecord {
    pub person_id: String,
    /// An index into [`LinkageEntities::organisations`].
    pub organisation: u32,
    pub local_pseudonym: String,
    pub has_nhs: bool,
    /// The person its person id belongs to now, when not its own.
    pub joined_to: Option<String>,
    /// Already linked by an earlier run.
    pub linked: bool,
}

impl EntityRecord {
    /// The person its person id belongs to now.
    pub fn spine_id(&self) -> &str {
        self.joined_to.as_deref().unwrap_or(&self.person_id)
    }
}

/// Which entities a linkage run reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntityScope {
    /// Every entity (a full re-link).
    All,
    /// Entities not linked yet (an incremental run holds the rest).
    Pending,
}

/// A person id's place on the spine.
#[derive(Debug, Clone, PartialEq)]
pub struct SpineAssignment {
    pub person_id: String,
    pub spine_id: String,
    pub method: crate::rekey::LinkMethod,
    pub score: Option<f64>,
}

table_rows! {
    /// A person id's place on the spine as stored.
    struct SpineRow<'a> in "person_spine" as PERSON_SPINE {
        person_id: &'a str => Text,
        spine_id: &'a str => Text,
        method: &'a str => Text,
        score: Option<f64> => Real,
        linked_at: i64 => Integer,
    }
}

table_rows! {
    /// A local id's linkage encoding as stored.
    struct EntityRow<'a> in "linkage_entities" as LINKAGE_ENTITIES {
        person_id: &'a str => Text,
        organisation: &'a str => Text,
        local_pseudonym: &'a str => Text,
        nhs_pseudonym: Option<&'a str> => Text,
        params_version: u32 => Integer,
        filters: String => Bytes,
        block_keys: String => Bytes,
        dataset: &'a str => Text,
    }
}

table_rows! {
    /// An entity's identity, as `UPDATE … WHERE (…) IN` reads it.
    struct EntityKey<'a> in "linkage_entities" as ENTITY_KEYS {
        person_id: &'a str => Text,
        organisation: &'a str => Text,
        local_pseudonym: &'a str => Text,
    }
}

table_rows! {
    /// A person id, as `… WHERE person_id IN` reads it.
    struct PersonKey<'a> in "person_spine" as PERSON_KEYS {
        person_id: &'a str => Text,
    }
}

/// An entity whose encoding no held record brought any more: none of its
/// organisation's records under its person id and local id in the dataset
/// the encoding came from (in any dataset, for an encoding stored before
/// that was kept).
const UNHELD: &str = "NOT EXISTS (SELECT 1 FROM records r WHERE r.person_id = e.person_id \
                      AND r.organisation = e.organisation AND r.local_pseudonym = e.local_pseudonym \
                      AND (e.dataset IS NULL OR r.dataset = e.dataset))";

/// Inside the transaction that deleted records about `people` (retention,
/// a snapshot replaced): deletes the linkage encodings and blocking keys
/// of every entity whose encoding no held record brought any more, and the
/// spine places of person ids with no records left, so nothing is kept of
/// a record past its retention. The people those entities were linked
/// into are linked again: their remaining entities are marked pending, and
/// the linkage run count moves on, so a gateway's kept entities (which
/// hold the deleted ones) are read afresh. A person id whose records are
/// still held but none of whose encodings is (its other datasets carry no
/// linkage fields) can no longer be linked by what was deleted: it is its
/// own person again, and so is every person id joined into it. Returns the
/// spine persons those changes and the spine places deleted touched:
/// people changed too (a person id whose records all went may have been
/// joined into a person that still has records).
pub(super) async fn forget_unheld(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: super::Backend,
    people: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    if people.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<PersonKey> = people.iter().map(|p| PersonKey { person_id: p }).collect();
    let of_people = PERSON_KEYS.select(backend);
    let spines = PERSON_KEYS
        .bind(
            backend,
            format!(
                "SELECT DISTINCT COALESCE(s.spine_id, e.person_id) FROM linkage_entities e \
                 LEFT JOIN person_spine s ON s.person_id = e.person_id \
                 WHERE e.person_id IN ({of_people}) AND {UNHELD}"
            ),
            &keys,
        )?
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<Vec<String>, _>>()?;
    let forgotten = PERSON_KEYS
        .bind(
            backend,
            format!(
                "DELETE FROM linkage_entities AS e WHERE e.person_id IN ({of_people}) AND {UNHELD}"
            ),
            &keys,
        )?
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if forgotten > 0 {
        let spines: Vec<PersonKey> = spines.iter().map(|p| PersonKey { person_id: p }).collect();
        PERSON_KEYS
            .bind(
                backend,
                format!(
                    "UPDATE linkage_entities SET linked = 0 WHERE person_id IN \
                     (SELECT person_id FROM person_spine WHERE spine_id IN ({of_people}))"
                ),
                &spines,
            )?
            .execute(&mut **tx)
            .await?;
        // The links stored no longer stand for any run (some named the
        // entities deleted).
        sqlx::query("UPDATE linkage_models SET runs = runs + 1, links_runs = NULL")
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM linkage_links")
            .execute(&mut **tx)
            .await?;
    }
    let mut changed = unjoin_unencoded(tx, backend, &keys).await?;
    PERSON_KEYS
        .bind(
            backend,
            format!(
                "DELETE FROM person_spine WHERE person_id IN ({of_people}) AND NOT EXISTS \
                 (SELECT 1 FROM records r WHERE r.person_id = person_spine.person_id) \
                 RETURNING spine_id"
            ),
            &keys,
        )?
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .try_for_each(|row| row.try_get(0).map(|spine| changed.push(spine)))?;
    Ok(changed)
}

/// Inside [`forget_unheld`]: every person id of `people` still holding
/// records but no encoding, and every person id joined into one, made its
/// own person (as exact linkage left it: `exact-nhs` when a record carries
/// an NHS pseudonym). Returns the person ids moved and the spine ids they
/// left.
async fn unjoin_unencoded(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: super::Backend,
    people: &[PersonKey<'_>],
) -> Result<Vec<String>, sqlx::Error> {
    let unencoded = format!(
        "SELECT u.person_id FROM person_spine u WHERE u.person_id IN ({}) \
         AND NOT EXISTS (SELECT 1 FROM linkage_entities e WHERE e.person_id = u.person_id) \
         AND EXISTS (SELECT 1 FROM records r WHERE r.person_id = u.person_id)",
        PERSON_KEYS.select(backend)
    );
    let moving = format!(
        "FROM person_spine WHERE person_id <> spine_id \
         AND (person_id IN ({unencoded}) OR spine_id IN ({unencoded}))"
    );
    let mut moved = Vec::new();
    for row in PERSON_KEYS
        .bind(
            backend,
            format!("SELECT person_id, spine_id {moving}"),
            people,
        )?
        .fetch_all(&mut **tx)
        .await?
    {
        moved.push(row.try_get(0)?);
        moved.push(row.try_get(1)?);
    }
    if !moved.is_empty() {
        PERSON_KEYS
            .bind(
                backend,
                format!(
                    "UPDATE person_spine SET spine_id = person_id, score = NULL, \
                     method = CASE WHEN EXISTS (SELECT 1 FROM records r \
                     WHERE r.person_id = person_spine.person_id AND r.nhs_pseudonym IS NOT NULL) \
                     THEN 'exact-nhs' ELSE 'unlinked' END \
                     WHERE person_id IN (SELECT person_id {moving})"
                ),
                people,
            )?
            .execute(&mut **tx)
            .await?;
    }
    Ok(moved)
}

/// Inside `tx`: the fitted model of parameters `version` (JSON), with its
/// quality estimate if it has one and the entities it was fitted on,
/// replacing the version's earlier model. The links stored no longer
/// stand: they were found under the old one.
pub(super) async fn save_model(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    version: u32,
    model: &str,
    quality: Option<&str>,
    entities: u64,
    fitted_at: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO linkage_models (params_version, model, quality, entities, fitted_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (params_version) DO UPDATE SET \
         model = excluded.model, quality = excluded.quality, \
         entities = excluded.entities, fitted_at = excluded.fitted_at, links_runs = NULL",
    )
    .bind(i64::from(version))
    .bind(model)
    .bind(quality)
    .bind(to_i64(entities))
    .bind(fitted_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An entity's number for breaking ties between equally strong links
/// ([`joinery_linkage::cluster`]): the one its row holds (`stored`: taken
/// over from the store this one replaced, [`super::rotation`]), else from
/// its identity alone, so a run links alike whatever order it read
/// entities in.
pub(super) fn tiebreak(
    stored: Option<i64>,
    person_id: &str,
    organisation: &str,
    local_pseudonym: &str,
) -> u64 {
    use std::hash::{Hash, Hasher};
    if let Some(taken_over) = stored {
        return taken_over as u64;
    }
    let mut hasher = std::hash::DefaultHasher::new();
    (person_id, organisation, local_pseudonym).hash(&mut hasher);
    hasher.finish()
}

/// A fixed-length pseudonym from its stored hex.
fn from_hex<const N: usize>(hex_text: &str) -> Option<[u8; N]> {
    hex::decode(hex_text).ok()?.try_into().ok()
}

/// An entity's blocking keys as stored, in one column beside its filters:
/// each present key as its rule's number (one byte) and its bytes, in
/// rule order. One row per entity instead of one per key: the keys were
/// the largest table and a B-tree insert each (docs/scaling.md).
pub(crate) fn pack_block_keys(blocks: &[Option<[u8; BLOCK_KEY_LEN]>]) -> Vec<u8> {
    let mut packed = Vec::with_capacity(blocks.len() * (1 + BLOCK_KEY_LEN));
    for (rule, key) in blocks.iter().enumerate() {
        if let (Some(key), Ok(rule)) = (key, u8::try_from(rule)) {
            packed.push(rule);
            packed.extend_from_slice(key);
        }
    }
    packed
}

/// The blocking keys of `rules` rules from their packed form; a rule with
/// no key, or a stored form that does not parse, reads as missing.
pub(crate) fn unpack_block_keys(packed: &[u8], rules: usize) -> Vec<Option<[u8; BLOCK_KEY_LEN]>> {
    let mut blocks = vec![None; rules];
    if !packed.len().is_multiple_of(1 + BLOCK_KEY_LEN) {
        return blocks;
    }
    for entry in packed.chunks_exact(1 + BLOCK_KEY_LEN) {
        if let (Some(slot), Ok(key)) =
            (blocks.get_mut(usize::from(entry[0])), entry[1..].try_into())
        {
            *slot = Some(key);
        }
    }
    blocks
}

impl Storage {
    /// Inside a batch's transaction: a spine entry for every new person id
    /// (its own person, as exact linkage decided), and the encodings and
    /// blocking keys of records that carry them (once per local id, one
    /// row each).
    pub(super) async fn insert_linkage(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        batch: &NewBatch,
    ) -> Result<(), sqlx::Error> {
        let linked_at = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut people: Vec<SpineRow> = batch
            .records
            .iter()
            .map(|r| SpineRow {
                person_id: &r.person_id,
                spine_id: &r.person_id,
                method: r.link_method.as_str(),
                score: None,
                linked_at,
            })
            .collect();
        people.sort_unstable_by(|a, b| a.person_id.cmp(b.person_id));
        people.dedup_by(|a, b| a.person_id == b.person_id);
        PERSON_SPINE
            .write(
                tx,
                self.backend,
                "ON CONFLICT (person_id) DO NOTHING",
                &people,
            )
            .await?;

        let mut encoded: Vec<_> = batch
            .records
            .iter()
            .filter_map(|r| r.linkage.as_ref().map(|l| (r, l)))
            .collect();
        encoded.sort_unstable_by(|a, b| {
            (&a.0.person_id, &a.0.local_pseudonym).cmp(&(&b.0.person_id, &b.0.local_pseudonym))
        });
        encoded.dedup_by(|a, b| {
            a.0.person_id == b.0.person_id && a.0.local_pseudonym == b.0.local_pseudonym
        });
        let entities: Vec<EntityRow> = encoded
            .iter()
            .map(|(record, linkage)| EntityRow {
                person_id: &record.person_id,
                organisation: &batch.organisation,
                local_pseudonym: &record.local_pseudonym,
                nhs_pseudonym: record.nhs_pseudonym.as_deref(),
                params_version: linkage.params_version,
                filters: hex_text(&linkage.filters),
                block_keys: hex_text(&pack_block_keys(&linkage.blocks)),
                dataset: &batch.dataset,
            })
            .collect();
        LINKAGE_ENTITIES
            .write(
                tx,
                self.backend,
                "ON CONFLICT (person_id, organisation, local_pseudonym) DO NOTHING",
                &entities,
            )
            .await
    }

    /// Whether any entity under parameters `version` awaits linkage.
    pub async fn linkage_pending(&self, version: u32) -> Result<bool, StorageError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM (SELECT 1 FROM linkage_entities \
             WHERE linked = 0 AND params_version = $1 LIMIT 1) AS pending",
        )
        .bind(i64::from(version))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| super::count(&r, "n")).transpose()?.unwrap_or(0) > 0)
    }

    /// Appends the entities a linkage run under `params` reads to `read`,
    /// streamed from one query (each entity's spine place joined in)
    /// straight into the matcher's form, so memory holds each entity once.
    /// Filters of the wrong length, blocking keys that do not unpack, and
    /// NHS pseudonyms that are not the expected hex count as missing.
    pub async fn linkage_entities(
        &self,
        params: &LinkageParams,
        scope: EntityScope,
        read: &mut LinkageEntities,
    ) -> Result<(), StorageError> {
        let filter = match scope {
            EntityScope::All => "",
            EntityScope::Pending => " AND e.linked = 0",
        };
        let sql = format!(
            "SELECT e.person_id, e.organisation, e.local_pseudonym, e.nhs_pseudonym, \
             e.filters, e.block_keys, e.linked, e.tiebreak, s.spine_id \
             FROM linkage_entities e LEFT JOIN person_spine s ON s.person_id = e.person_id \
             WHERE e.params_version = $1{filter} \
             ORDER BY e.person_id, e.organisation, e.local_pseudonym"
        );
        let filter_bytes = params.words() * 8;
        let mut organisations: HashMap<String, u32> = read
            .organisations
            .iter()
            .enumerate()
            .map(|(i, o)| (o.clone(), i as u32))
            .collect();
        let mut rows = sqlx::query(AssertSqlSafe(sql))
            .bind(i64::from(params.version))
            .fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            let code: String = row.try_get("organisation")?;
            let next = organisations.len() as u32;
            let organisation = *organisations.entry(code.clone()).or_insert_with_key(|o| {
                read.organisations.push(o.clone());
                next
            });
            let filters: Vec<u8> = row.try_get("filters")?;
            let filters = Some(filters)
                .filter(|f| f.len() == filter_bytes)
                .and_then(|f| Encoding::filter_from_bytes(&f))
                .unwrap_or_default();
            let block_keys: Vec<u8> = row.try_get("block_keys")?;
            let blocks = unpack_block_keys(&block_keys, params.blocking.len());
            let nhs: Option<String> = row.try_get("nhs_pseudonym")?;
            let has_nhs = nhs.is_some();
            let person_id: String = row.try_get("person_id")?;
            let local_pseudonym: String = row.try_get("local_pseudonym")?;
            let tiebreak = tiebreak(
                row.try_get("tiebreak")?,
                &person_id,
                &code,
                &local_pseudonym,
            );
            read.entities.push(
                Entity {
                    organisation,
                    nhs: nhs.as_deref().and_then(from_hex),
                    encoding: Encoding { filters, blocks },
                },
                tiebreak,
            );
            let spine_id: Option<String> = row.try_get("spine_id")?;
            let linked: i64 = row.try_get("linked")?;
            read.records.push(EntityRecord {
                joined_to: spine_id.filter(|s| *s != person_id),
                person_id,
                organisation,
                local_pseudonym,
                has_nhs,
                linked: linked != 0,
            });
        }
        Ok(())
    }

    /// Records a linkage run under parameters `version` in one transaction:
    /// a full run's fitted model, new spine places, the entities it linked
    /// marked as linked, and its links ([`LinkChanges`]). The version's run count moves on by one
    /// and is returned. A run that built on what it read (`expected`: the
    /// count it started from) is refused with
    /// [`StorageError::LinkageMovedOn`] when another run saved meanwhile.
    pub async fn save_linkage(
        &self,
        version: u32,
        fitted: Option<&FittedModel>,
        expected: Option<i64>,
        assignments: &[SpineAssignment],
        linked: &[(&str, &str, &str)],
        links: &LinkChanges<'_>,
    ) -> Result<i64, StorageError> {
        let _writing = match &self.write_lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let per_statement = self.backend.parameters_per_statement();
        let mut tx = self.pool.begin().await?;
        if let Some(fitted) = fitted {
            save_model(
                &mut tx,
                version,
                &fitted.model,
                Some(&fitted.quality),
                fitted.entities,
                now,
            )
            .await?;
        }
        let moved_on = sqlx::query(
            "UPDATE linkage_models SET runs = runs + 1 \
             WHERE params_version = $1 AND ($2 < 0 OR runs = $2) RETURNING runs",
        )
        .bind(i64::from(version))
        .bind(expected.unwrap_or(-1))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = moved_on else {
            return Err(StorageError::LinkageMovedOn);
        };
        let runs: i64 = row.try_get("runs")?;
        // The people this run changes: each moved person id's spine person
        // before and after.
        let moving: Vec<&str> = assignments.iter().map(|a| a.person_id.as_str()).collect();
        let mut before: HashMap<String, String> = HashMap::new();
        super::for_each_in(
            &mut tx,
            per_statement,
            "SELECT person_id, spine_id FROM person_spine WHERE person_id",
            &moving,
            |row| {
                before.insert(row.try_get(0)?, row.try_get(1)?);
                Ok(())
            },
        )
        .await?;
        let mut changed: Vec<&str> = Vec::new();
        for a in assignments {
            let was = before.get(&a.person_id).unwrap_or(&a.person_id);
            if *was != a.spine_id {
                changed.extend([was.as_str(), a.spine_id.as_str()]);
            }
        }
        let spine: Vec<SpineRow> = assignments
            .iter()
            .map(|a| SpineRow {
                person_id: &a.person_id,
                spine_id: &a.spine_id,
                method: a.method.as_str(),
                score: a.score,
                linked_at: now,
            })
            .collect();
        PERSON_SPINE
            .write(
                &mut tx,
                self.backend,
                "ON CONFLICT (person_id) DO UPDATE SET spine_id = excluded.spine_id, \
                 method = excluded.method, score = excluded.score, linked_at = excluded.linked_at",
                &spine,
            )
            .await?;
        let linked: Vec<EntityKey> = linked
            .iter()
            .map(|&(person_id, organisation, local_pseudonym)| EntityKey {
                person_id,
                organisation,
                local_pseudonym,
            })
            .collect();
        if !linked.is_empty() {
            let sql = format!(
                "UPDATE linkage_entities SET linked = 1 \
                 WHERE (person_id, organisation, local_pseudonym) IN ({})",
                ENTITY_KEYS.select(self.backend)
            );
            ENTITY_KEYS
                .bind(self.backend, sql, &linked)?
                .execute(&mut *tx)
                .await?;
        }
        links.write(&mut tx, self.backend, runs).await?;
        self.bump_generation(&mut tx, &changed).await?;
        tx.commit().await?;
        Ok(runs)
    }

    /// The model fitted for parameters `version`, if any.
    pub async fn linkage_model(&self, version: u32) -> Result<Option<StoredModel>, StorageError> {
        let row = sqlx::query(
            "SELECT model, entities, runs FROM linkage_models WHERE params_version = $1",
        )
        .bind(i64::from(version))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .map(|r| {
                Ok::<_, sqlx::Error>(StoredModel {
                    model: r.try_get("model")?,
                    entities: super::count(&r, "entities")?,
                    runs: r.try_get("runs")?,
                })
            })
            .transpose()?)
    }

    /// Per parameter version (in order): the quality estimate of its last
    /// full run (JSON; none before this was kept) and when that run fitted
    /// its model (Unix seconds).
    pub async fn linkage_quality(&self) -> Result<Vec<(u32, Option<String>, i64)>, StorageError> {
        let rows = sqlx::query(
            "SELECT params_version, quality, fitted_at FROM linkage_models ORDER BY params_version",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    super::count(r, "params_version")? as u32,
                    r.try_get("quality")?,
                    r.try_get("fitted_at")?,
                ))
            })
            .collect()
    }

    /// Takes (or renews) the linker's lease for `seconds`; false while
    /// another gateway holds it.
    pub async fn take_linkage_lease(
        &self,
        holder: &str,
        seconds: i64,
    ) -> Result<bool, StorageError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let taken = sqlx::query(
            "UPDATE linkage_lease SET holder = $1, until = $2 WHERE id = 1 AND (until < $3 OR holder = $1)",
        )
        .bind(holder)
        .bind(now + seconds)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(taken == 1)
    }

    /// Gives the linker's lease back, if `holder` has it: a gateway that
    /// stops lets another link at once instead of after the lease runs out.
    pub async fn release_linkage_lease(&self, holder: &str) -> Result<(), StorageError> {
        sqlx::query("UPDATE linkage_lease SET until = 0 WHERE id = 1 AND holder = $1")
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// How fuzzy linkage is doing ([`Storage::linkage_status`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkageStatus {
    /// When a run last succeeded (unix seconds), if ever.
    pub last_success_at: Option<i64>,
    /// Runs failed since.
    pub failures: u64,
}

impl Storage {
    /// Records a linkage run's outcome: a success resets the failures.
    pub async fn record_linkage_outcome(&self, succeeded: bool) -> Result<(), StorageError> {
        let query = if succeeded {
            sqlx::query("UPDATE linkage_status SET last_success_at = $1, failures = 0 WHERE id = 1")
                .bind(time::OffsetDateTime::now_utc().unix_timestamp())
        } else {
            sqlx::query("UPDATE linkage_status SET failures = failures + 1 WHERE id = 1")
        };
        query.execute(&self.pool).await?;
        Ok(())
    }

    /// When linkage last succeeded and how many runs have failed since.
    pub async fn linkage_status(&self) -> Result<LinkageStatus, StorageError> {
        let row = sqlx::query("SELECT last_success_at, failures FROM linkage_status WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(LinkageStatus {
            last_success_at: row.try_get("last_success_at")?,
            failures: super::count(&row, "failures")?,
        })
    }
}
