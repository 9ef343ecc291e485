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

use super::rows::{hex_text, table_rows};
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
    /// From `earlier` (the links stored, by `read`'s numbers, as the run
    /// read them) to `links` (all the run's links): only the owners whose
    /// links differ; without `earlier`, every owner.
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
        let row = |owned: &[Owned]| {
            let (person_id, organisation, local_pseudonym) = key(owned[0].owner);
            let mut packed = Vec::with_capacity(owned.len() * PACKED_LINK);
            for link in owned {
                let (p, o, l) = key(link.other);
                packed.extend_from_slice(&digest(p, o, l));
                packed.extend_from_slice(&link.probability.to_le_bytes());
                packed.extend_from_slice(&link.weight.to_le_bytes());
            }
            LinksRow {
                person_id,
                organisation,
                local_pseudonym,
                params_version: version,
                links: hex_text(&packed),
            }
        };
        let (mut owners, mut emptied) = (Vec::new(), Vec::new());
        let mut now = now.chunk_by(|x, y| x.owner == y.owner).peekable();
        let mut before = before
            .as_deref()
            .unwrap_or_default()
            .chunk_by(|x, y| x.owner == y.owner)
            .peekable();
        // Both in owner order: walk them side by side.
        loop {
            match (now.peek(), before.peek()) {
                (None, None) => break,
                (Some(n), Some(b)) if n[0].owner == b[0].owner => {
                    if n != b {
                        owners.push(row(n));
                    }
                    now.next();
                    before.next();
                }
                (Some(n), b) if b.is_none_or(|b| n[0].owner < b[0].owner) => {
                    owners.push(row(n));
                    now.next();
                }
                (_, b) => {
                    if let Some(b) = b {
                        let (person_id, organisation, local_pseudonym) = key(b[0].owner);
                        emptied.push(Owner {
                            person_id,
                            organisation,
                            local_pseudonym,
                        });
                    }
                    before.next();
                }
            }
        }
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

/// A link as its owner keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Owned {
    owner: u32,
    other: u32,
    probability: f64,
    weight: f64,
}

/// Every link as its owner keeps it, by owner and then the other end, so
/// two runs' links compare owner by owner.
fn by_owner<'a>(key: &impl Fn(u32) -> Key<'a>, links: &[Link]) -> Vec<Owned> {
    let mut owned: Vec<Owned> = links
        .iter()
        .map(|link| {
            let (owner, other) = if key(link.a) <= key(link.b) {
                (link.a, link.b)
            } else {
                (link.b, link.a)
            };
            Owned {
                owner,
                other,
                probability: link.probability,
                weight: link.weight,
            }
        })
        .collect();
    owned.sort_unstable_by(|x, y| {
        (x.owner, x.other)
            .cmp(&(y.owner, y.other))
            .then(x.probability.total_cmp(&y.probability))
    });
    owned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entities(people: &[&str]) -> LinkageEntities {
        let mut read = LinkageEntities::new(&joinery_linkage::LinkageParams::canonical());
        read.organisations.push("LA1".to_owned());
        for person in people {
            read.records.push(EntityRecord {
                person_id: (*person).to_owned(),
                organisation: 0,
                local_pseudonym: format!("l-{person}"),
                has_nhs: false,
                joined_to: None,
                linked: true,
            });
        }
        read
    }

    fn link(a: u32, b: u32, probability: f64) -> Link {
        Link {
            a,
            b,
            probability,
            weight: probability * 10.0,
        }
    }

    #[test]
    fn only_owners_whose_links_changed_are_written() {
        let read = entities(&["p0", "p1", "p2", "p3"]);
        let earlier = [link(0, 1, 0.99), link(2, 3, 0.97), link(1, 2, 0.96)];
        let same = LinkChanges::between(&read, 5, Some(&earlier), &earlier);
        assert!(same.owners.is_empty() && same.emptied.is_empty());
        assert!(!same.replace_all);

        // p2's link to p3 is stronger now; p0's went; p1's stands (in
        // another order).
        let now = [link(1, 2, 0.96), link(2, 3, 0.98)];
        let changed = LinkChanges::between(&read, 5, Some(&earlier), &now);
        let owners: Vec<&str> = changed.owners.iter().map(|o| o.person_id).collect();
        let emptied: Vec<&str> = changed.emptied.iter().map(|o| o.person_id).collect();
        assert_eq!((owners, emptied), (vec!["p2"], vec!["p0"]));

        let all = LinkChanges::between(&read, 5, None, &now);
        assert!(all.replace_all);
        assert_eq!(all.owners.len(), 2);
    }
}
