//! The links a linkage run found, kept in the database beside the entities
//! (`linkage_links`), so that a gateway which starts, or takes the linkage
//! lease over, compares only the pairs that involve what is new — as the
//! gateway that ran last does from what it keeps in memory — instead of
//! every pair again (docs/scaling.md, "Linkage").
//!
//! A link is kept on the row of its *owner*, the end whose key (person id,
//! organisation, local pseudonym) sorts first. The row packs, per link, the
//! other end's [`digest`], the probability and the weight, so a run writes
//! only the rows of owners whose links changed. `linkage_models.links_runs`
//! is the run count that wrote them: they stand for the last run only while
//! it equals `runs` (a deletion of encodings, or a model taken over, moves
//! `runs` on).

use std::collections::HashMap;

use futures::TryStreamExt;
use joinery_linkage::cluster::Link;
use ring::digest::{Context, SHA256};
use sqlx::Row;

use super::rows::table_rows;
use super::{Backend, EntityRecord, LinkageEntities, Storage, StorageError};

/// An entity named in another's links: the first 16 bytes of the SHA-256
/// of its key. Its key is what the row of its own links is stored under.
type Digest = [u8; 16];

/// One packed link: the other end's digest, then the probability and the
/// weight (each an `f64`, little-endian), so they read back exactly.
const PACKED_LINK: usize = 16 + 8 + 8;

/// Owners written per statement when every link is written again.
const OWNERS_PER_STATEMENT: usize = 10_000;

table_rows! {
    /// An owner's links as stored.
    struct LinksRow<'a> in "linkage_links" as LINKAGE_LINKS {
        person_id: &'a str => Text,
        organisation: &'a str => Text,
        local_pseudonym: &'a str => Text,
        params_version: u32 => Integer,
        links: String => Bytes,
    }
}

table_rows! {
    /// An owner left with no links, as `DELETE … WHERE (…) IN` reads it.
    struct Owner<'a> in "linkage_links" as OWNERS {
        person_id: &'a str => Text,
        organisation: &'a str => Text,
        local_pseudonym: &'a str => Text,
    }
}

/// What a linkage run changes of the stored links
/// ([`Storage::save_linkage`] writes it in the run's transaction).
pub struct LinkChanges<'a> {
    version: u32,
    /// Every stored link of the version is replaced (there were none that
    /// stood for the run the links were compared against).
    replace_all: bool,
    owners: Vec<LinksRow<'a>>,
    emptied: Vec<Owner<'a>>,
}

/// An entity's key: person id, organisation code, local pseudonym.
pub(super) type Key<'a> = (&'a str, &'a str, &'a str);

impl<'a> LinkChanges<'a> {
    /// From `earlier` (the links stored, by `read`'s numbers, when the run
    /// built on them) to `links` (all the run's links): only the owners
    /// whose links differ; without `earlier`, every owner.
    pub fn between(
        read: &'a LinkageEntities,
        version: u32,
        earlier: Option<&[Link]>,
        links: &[Link],
    ) -> Self {
        Self::of_keys(version, |i| key(read, i), earlier, links)
    }

    /// As [`LinkChanges::between`], entity `i` being the one `key(i)` names.
    pub(super) fn of_keys(
        version: u32,
        key: impl Fn(u32) -> Key<'a>,
        earlier: Option<&[Link]>,
        links: &[Link],
    ) -> Self {
        let now = by_owner(&key, links);
        let before = earlier.map(|earlier| by_owner(&key, earlier));
        let row = |(&owner, links): (&u32, &Vec<(u32, f64, f64)>)| {
            let (person_id, organisation, local_pseudonym) = key(owner);
            let mut packed = Vec::with_capacity(links.len() * PACKED_LINK);
            for &(other, probability, weight) in links {
                let (p, o, l) = key(other);
                packed.extend_from_slice(&digest(p, o, l));
                packed.extend_from_slice(&probability.to_le_bytes());
                packed.extend_from_slice(&weight.to_le_bytes());
            }
            LinksRow {
                person_id,
                organisation,
                local_pseudonym,
                params_version: version,
                links: hex::encode(packed),
            }
        };
        let owners = now
            .iter()
            .filter(|(owner, links)| before.as_ref().is_none_or(|b| b.get(owner) != Some(links)))
            .map(row)
            .collect();
        let emptied = before
            .iter()
            .flatten()
            .filter(|(owner, _)| !now.contains_key(owner))
            .map(|(&owner, _)| {
                let (person_id, organisation, local_pseudonym) = key(owner);
                Owner {
                    person_id,
                    organisation,
                    local_pseudonym,
                }
            })
            .collect();
        Self {
            version,
            replace_all: earlier.is_none(),
            owners,
            emptied,
        }
    }

    /// Writes the changes inside the run's transaction, marking the stored
    /// links as those of run `runs`.
    pub(super) async fn write(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        backend: Backend,
        runs: i64,
    ) -> Result<(), sqlx::Error> {
        let version = i64::from(self.version);
        if self.replace_all {
            sqlx::query("DELETE FROM linkage_links WHERE params_version = $1")
                .bind(version)
                .execute(&mut **tx)
                .await?;
        }
        for emptied in self.emptied.chunks(OWNERS_PER_STATEMENT) {
            let sql = format!(
                "DELETE FROM linkage_links WHERE (person_id, organisation, local_pseudonym) IN ({})",
                OWNERS.select(backend)
            );
            OWNERS
                .bind(backend, sql, emptied)?
                .execute(&mut **tx)
                .await?;
        }
        for owners in self.owners.chunks(OWNERS_PER_STATEMENT) {
            LINKAGE_LINKS
                .write(
                    tx,
                    backend,
                    "ON CONFLICT (person_id, organisation, local_pseudonym) DO UPDATE SET \
                     params_version = excluded.params_version, links = excluded.links",
                    owners,
                )
                .await?;
        }
        sqlx::query("UPDATE linkage_models SET links_runs = $1 WHERE params_version = $2")
            .bind(runs)
            .bind(version)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

impl Storage {
    /// The links the last linkage run under `version` found, by the
    /// numbers of `read` (which holds every entity of the version), when
    /// what is stored stands for run `runs`. None when it does not, or
    /// when a stored link names an entity `read` does not hold: the run
    /// then compares every pair.
    pub async fn stored_links(
        &self,
        version: u32,
        runs: i64,
        read: &LinkageEntities,
    ) -> Result<Option<Vec<Link>>, StorageError> {
        self.stored_links_of(version, runs, read.records.len(), |i| key(read, i))
            .await
    }

    /// As [`Storage::stored_links`], of the `entities` entities `key`
    /// names by their numbers.
    pub(super) async fn stored_links_of<'k>(
        &self,
        version: u32,
        runs: i64,
        entities: usize,
        key: impl Fn(u32) -> Key<'k>,
    ) -> Result<Option<Vec<Link>>, StorageError> {
        let links_runs: Option<Option<i64>> =
            sqlx::query_scalar("SELECT links_runs FROM linkage_models WHERE params_version = $1")
                .bind(i64::from(version))
                .fetch_optional(&self.pool)
                .await?;
        if links_runs.flatten() != Some(runs) {
            return Ok(None);
        }
        let numbers: HashMap<Digest, u32> = (0..entities as u32)
            .map(|i| {
                let (p, o, l) = key(i);
                (digest(p, o, l), i)
            })
            .collect();
        let mut links = Vec::new();
        let mut rows = sqlx::query(
            "SELECT person_id, organisation, local_pseudonym, links FROM linkage_links \
             WHERE params_version = $1",
        )
        .bind(i64::from(version))
        .fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            let owner = digest(
                &row.try_get::<String, _>("person_id")?,
                &row.try_get::<String, _>("organisation")?,
                &row.try_get::<String, _>("local_pseudonym")?,
            );
            let packed: Vec<u8> = row.try_get("links")?;
            let Some(&a) = numbers.get(&owner) else {
                return Ok(None);
            };
            if !packed.len().is_multiple_of(PACKED_LINK) {
                return Ok(None);
            }
            for entry in packed.chunks_exact(PACKED_LINK) {
                let (other, rest) = entry.split_at(16);
                let (probability, weight) = rest.split_at(8);
                let (Some(&b), Ok(probability), Ok(weight)) = (
                    Digest::try_from(other).ok().and_then(|d| numbers.get(&d)),
                    probability.try_into().map(f64::from_le_bytes),
                    weight.try_into().map(f64::from_le_bytes),
                ) else {
                    return Ok(None);
                };
                links.push(Link {
                    a: a.min(b),
                    b: a.max(b),
                    probability,
                    weight,
                });
            }
        }
        Ok(Some(links))
    }
}

/// Entity `i`'s key in `read`.
fn key(read: &LinkageEntities, i: u32) -> Key<'_> {
    let EntityRecord {
        person_id,
        organisation,
        local_pseudonym,
        ..
    } = &read.records[i as usize];
    (
        person_id,
        &read.organisations[*organisation as usize],
        local_pseudonym,
    )
}

/// An entity's [`Digest`]: each part of its key length-prefixed, so no two
/// keys run together alike.
fn digest(person_id: &str, organisation: &str, local_pseudonym: &str) -> Digest {
    let mut context = Context::new(&SHA256);
    for part in [person_id, organisation, local_pseudonym] {
        context.update(&(part.len() as u64).to_le_bytes());
        context.update(part.as_bytes());
    }
    let mut digest = [0; 16];
    digest.copy_from_slice(&context.finish().as_ref()[..16]);
    digest
}

/// Each owner's links (the other end, probability, weight), in order of
/// the other end, so two runs' links compare equal when they are.
fn by_owner<'a>(
    key: &impl Fn(u32) -> Key<'a>,
    links: &[Link],
) -> HashMap<u32, Vec<(u32, f64, f64)>> {
    let mut owned: HashMap<u32, Vec<(u32, f64, f64)>> = HashMap::new();
    for link in links {
        let (owner, other) = if key(link.a) <= key(link.b) {
            (link.a, link.b)
        } else {
            (link.b, link.a)
        };
        owned
            .entry(owner)
            .or_default()
            .push((other, link.probability, link.weight));
    }
    for links in owned.values_mut() {
        links.sort_unstable_by(|x, y| x.0.cmp(&y.0).then(x.1.total_cmp(&y.1)));
    }
    owned
}
