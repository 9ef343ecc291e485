//! Fuzzy linkage at the gateway: the person spine.
//!
//! Every person id the records carry (from exact NHS linkage, or a record's
//! own when it had no NHS number) starts as its own person on the spine.
//! A linkage run reads the stored encodings and joins person ids into
//! people ([`joinery_linkage`]):
//!
//! - **incremental** (every `linkage_interval` while serving): the
//!   [`Linker`] keeps the entities and links of its last run in memory,
//!   reads only the entities not linked yet, and compares only the pairs
//!   they change, with the stored model. The people it makes are exactly
//!   those of comparing every pair under that model, whatever order the
//!   entities arrived in (so a person may also lose a record a stronger
//!   new link takes).
//! - **full** (`joinery gateway relink`, the first run, new parameters, or
//!   once the entities have doubled since the model was fitted): everything,
//!   with the model fitted afresh by EM.
//!
//! A person keeps the spine id most of its already-linked members had, so
//! ids stay stable while the evidence does not change; a new person takes
//! its smallest person id. Each joined person id is stored with method
//! `fuzzy` and the probability of its strongest link. One gateway links at a
//! time (a lease in the database); every run is audited.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use joinery_linkage::LinkageParams;
use joinery_linkage::cluster::Link;
use joinery_linkage::encode::Pseudonym;
use joinery_linkage::matcher::{Earlier, link_entities};
use joinery_linkage::score::Model;

use crate::agreements::LiveAgreements;
use crate::audit::AuditRecord;
use crate::rekey::LinkMethod;
use crate::storage::{
    EntityRecord, EntityScope, FittedModel, LinkChanges, LinkageEntities, SpineAssignment, Storage,
    StorageError,
};

/// What a linkage run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// Link what is new, with the stored model (the first run fits one).
    Incremental,
    /// Compare every pair again under the stored model, fitting none: the
    /// people must come out as the incremental runs left them (a check on
    /// them; nobody moves unless they went wrong).
    SameModel,
    /// Fit the model afresh and compare every pair (new parameters, or a
    /// deliberate re-link).
    Refit,
    /// After a key rotation's take-over: link what is new onto the links
    /// taken over from the store this one replaces, under its model, and
    /// write the spine even when nothing is new (the links taken over are
    /// not on it yet).
    TakenOver,
}

/// What one linkage run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkReport {
    pub params_version: u32,
    /// The model was fitted afresh (and every pair compared).
    pub full: bool,
    /// Every pair was compared (a full run, or [`RunMode::SameModel`]).
    pub every_pair: bool,
    /// Entities linked over (those kept from the last run too), how many
    /// were new, and how many were read from the database.
    pub entities: usize,
    pub pending: usize,
    pub read: usize,
    pub candidate_pairs: u64,
    /// Links above the threshold.
    pub links: usize,
    /// Person ids whose place on the spine changed.
    pub moved: usize,
    /// Exact-NHS person ids whose records' encodings say they are different
    /// people (likely a mistyped or borrowed NHS number), for review.
    pub nhs_conflicts: Vec<String>,
    /// A full run's estimate of its links' quality per organisation pair.
    pub quality: Vec<PairQuality>,
}

/// What the fitted model expects of the fuzzy links between two
/// organisations' records ([`joinery_linkage::quality`]): worked out by
/// every full run, kept beside the model, read by `joinery gateway
/// linkage-report` and the metrics. Pairs whose records both carry NHS
/// numbers are decided by those, and left out.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PairQuality {
    /// The two organisations' codes, in order.
    pub organisations: [String; 2],
    pub links: u64,
    /// Links expected to join two different children.
    pub expected_wrong: f64,
    /// Pairs of one child's records expected to have been left apart,
    /// among those blocking compared.
    pub expected_missed: f64,
}

/// One parameter version's latest estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct QualityReport {
    pub params_version: u32,
    /// When the full run that made it fitted its model (Unix seconds).
    pub fitted_at: i64,
    /// `None` when that run predates the estimate (a full run makes one).
    pub pairs: Option<Vec<PairQuality>>,
}

/// The latest quality estimate of every parameter version linked so far.
pub async fn quality(storage: &Storage) -> Result<Vec<QualityReport>, StorageError> {
    Ok(storage
        .linkage_quality()
        .await?
        .into_iter()
        .map(|(params_version, json, fitted_at)| QualityReport {
            params_version,
            fitted_at,
            pairs: json.and_then(|j| serde_json::from_str(&j).ok()),
        })
        .collect())
}

/// A gateway's linker. Per parameters version it keeps the entities and
/// links of its last run, so the next incremental run reads only the
/// entities not linked yet and compares only the pairs they change
/// ([`joinery_linkage::matcher::link_entities`]). What it keeps is trusted
/// only while the version's run count in the database is the one its own
/// last run left; after another gateway's run, a full re-link or a failed
/// run, the next run reads everything again.
#[derive(Default)]
pub struct Linker {
    kept: HashMap<u32, Kept>,
}

/// One parameters version's last run, as [`Linker`] keeps it.
struct Kept {
    /// The version's run count that run left.
    runs: i64,
    read: LinkageEntities,
    /// Every link that run found above the threshold.
    links: Vec<Link>,
}

impl Linker {
    /// Runs linkage once under `params`, and records whether it succeeded
    /// ([`Storage::linkage_status`]: readiness and every answer's note read it).
    pub async fn run(
        &mut self,
        storage: &Storage,
        params: &LinkageParams,
        mode: RunMode,
    ) -> Result<LinkReport, StorageError> {
        let mut outcome = self.link(storage, params, mode).await;
        if let Err(StorageError::LinkageMovedOn) = outcome {
            // Another run (a `relink` beside the serving gateways) saved
            // first: start again from what is stored, once.
            self.kept.remove(&params.version);
            outcome = self.link(storage, params, mode).await;
        }
        if outcome.is_err() {
            self.kept.remove(&params.version);
            crate::metrics::linkage_failed();
        }
        if let Err(e) = storage.record_linkage_outcome(outcome.is_ok()).await {
            tracing::warn!(error = %e, "linkage: could not record the run's outcome");
        }
        outcome
    }

    /// Lets go of what was kept (another gateway links now).
    pub fn forget(&mut self) {
        self.kept.clear();
    }

    async fn link(
        &mut self,
        storage: &Storage,
        params: &LinkageParams,
        mode: RunMode,
    ) -> Result<LinkReport, StorageError> {
        let version = params.version;
        let nothing = LinkReport {
            params_version: version,
            ..LinkReport::default()
        };
        let stored = storage.linkage_model(version).await?;
        let kept = self
            .kept
            .remove(&version)
            .filter(|k| stored.as_ref().is_some_and(|s| s.runs == k.runs));
        // The stored model, unless refitting; an incremental run has
        // nothing to do when nothing is new.
        let stored = stored
            .filter(|_| mode != RunMode::Refit)
            .and_then(|stored| {
                let model = serde_json::from_str::<Model>(&stored.model).ok()?;
                Some((model, stored))
            });
        let incremental =
            matches!(mode, RunMode::Incremental | RunMode::TakenOver) && stored.is_some();
        if mode == RunMode::Incremental && incremental && !storage.linkage_pending(version).await? {
            if let Some(kept) = kept {
                self.kept.insert(version, kept);
            }
            return Ok(nothing);
        }
        // Only what is new, onto what was kept (`held` entities); else
        // everything, with the links the last run stored: an incremental
        // run builds on them (a gateway that starts, or takes the lease
        // over), and any run under the stored model writes only what
        // changed of them.
        let (read, stored_links, held) = match kept.filter(|_| incremental) {
            Some(Kept {
                mut read, links, ..
            }) => {
                let held = read.records.len();
                storage
                    .linkage_entities(params, EntityScope::Pending, &mut read)
                    .await?;
                (read, Some(links), held)
            }
            None => {
                let mut read = LinkageEntities::new(params);
                storage
                    .linkage_entities(params, EntityScope::All, &mut read)
                    .await?;
                let links = match &stored {
                    Some((_, stored)) => storage.stored_links(version, stored.runs, &read).await?,
                    None => None,
                };
                (read, links, 0)
            }
        };
        // The model is fitted afresh when asked, when there is none, or once
        // an incremental run finds the entities doubled since it was.
        let doubled = |entities: u64| {
            mode == RunMode::Incremental && read.records.len() as u64 > entities * 2
        };
        let (model, expected) = match stored {
            Some((model, stored)) if !doubled(stored.entities) => (Some(model), Some(stored.runs)),
            _ => (None, None),
        };
        let full = model.is_none();
        // A run fitting its model writes every link again.
        let stored_links = stored_links.filter(|_| !full);
        let fresh: Vec<bool> = read.records.iter().map(|r| !r.linked).collect();
        let mut report = LinkReport {
            params_version: version,
            full,
            every_pair: !incremental || stored_links.is_none(),
            entities: read.records.len(),
            pending: fresh.iter().filter(|&&f| f).count(),
            read: read.records.len() - held,
            ..nothing
        };
        if read.records.is_empty() {
            return Ok(report);
        }

        let known = join_local_ids(read.entities.nhs(), &read.records);
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        // Matching is CPU work for seconds to minutes: off the async runtime,
        // so ingest and queries go on meanwhile.
        let matching = params.clone();
        let (read, stored_links, result) = tokio::task::spawn_blocking(move || {
            let earlier = stored_links
                .as_deref()
                .filter(|_| incremental)
                .map(|links| Earlier {
                    fresh: &fresh,
                    links,
                });
            let result = link_entities(
                &read.entities,
                &matching,
                model.as_ref(),
                &known,
                threads,
                earlier,
            );
            (read, stored_links, result)
        })
        .await
        .unwrap_or_else(|failed| std::panic::resume_unwind(failed.into_panic()));
        let organisations = &read.organisations;
        let records = &read.records;
        let fitted = full.then(|| {
            report.quality = result
                .quality
                .iter()
                .map(|q| PairQuality {
                    organisations: [q.organisations.0, q.organisations.1]
                        .map(|o| organisations[o as usize].clone()),
                    links: q.links,
                    expected_wrong: q.expected_false,
                    expected_missed: q.expected_missed,
                })
                .collect();
            FittedModel {
                model: serde_json::to_string(&result.stats.model).unwrap_or_default(),
                quality: serde_json::to_string(&report.quality).unwrap_or_default(),
                entities: records.len() as u64,
            }
        });
        report.candidate_pairs = result.stats.candidate_pairs;
        report.links = result.links.len();
        let mut conflicted: Vec<String> = result
            .nhs_conflicts
            .iter()
            .map(|c| records[c.a as usize].person_id.clone())
            .collect();
        conflicted.sort_unstable();
        conflicted.dedup();
        report.nhs_conflicts = conflicted;

        let assignments = spine_assignments(records, &result.people, &result.links);
        report.moved = assignments.len();
        // Only entities new to linkage are marked (a full run rewrites no row
        // an earlier run marked).
        let linked: Vec<(&str, &str, &str)> = records
            .iter()
            .filter(|r| !r.linked)
            .map(|r| {
                (
                    r.person_id.as_str(),
                    organisations[r.organisation as usize].as_str(),
                    r.local_pseudonym.as_str(),
                )
            })
            .collect();
        let links = LinkChanges::between(&read, version, stored_links.as_deref(), &result.links);
        let runs = storage
            .save_linkage(
                version,
                fitted.as_ref(),
                expected,
                &assignments,
                &linked,
                &links,
            )
            .await?;
        storage
            .append_audit(&AuditRecord::linkage(
                version,
                full,
                report.entities,
                report.pending,
                report.links,
                report.moved,
                report.nhs_conflicts.len(),
            ))
            .await?;
        self.kept.insert(
            version,
            Kept {
                runs,
                read: saved(read, &assignments),
                links: result.links,
            },
        );
        Ok(report)
    }
}

/// What a run read, as it stands once the run is saved: every entity
/// linked, each person id where `assignments` put it.
fn saved(mut read: LinkageEntities, assignments: &[SpineAssignment]) -> LinkageEntities {
    let placed: HashMap<&str, &str> = assignments
        .iter()
        .map(|a| (a.person_id.as_str(), a.spine_id.as_str()))
        .collect();
    for r in &mut read.records {
        r.linked = true;
        if let Some(&spine_id) = placed.get(r.person_id.as_str()) {
            r.joined_to = (spine_id != r.person_id).then(|| spine_id.to_owned());
        }
    }
    read
}

/// Entities already known to be one person: an organisation's entities of
/// one local id — the same child in two of its datasets, one with the NHS
/// number and one without — unless they carry different NHS pseudonyms (the
/// matcher then decides, and never joins them).
fn join_local_ids(nhs: &[Option<Pseudonym>], records: &[EntityRecord]) -> Vec<Option<u64>> {
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut parent: Vec<usize> = (0..records.len()).collect();
    let join = |parent: &mut Vec<usize>, a: usize, b: usize| {
        let (a, b) = (root(parent, a), root(parent, b));
        parent[a.max(b)] = a.min(b);
    };
    let mut twins: HashMap<(u32, &str), Vec<usize>> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        twins
            .entry((r.organisation, r.local_pseudonym.as_str()))
            .or_default()
            .push(i);
    }
    let mut grouped = vec![false; records.len()];
    for members in twins.values().filter(|m| m.len() > 1) {
        let numbers: std::collections::BTreeSet<&[u8; 32]> =
            members.iter().filter_map(|&i| nhs[i].as_ref()).collect();
        if numbers.len() <= 1 {
            for &i in members {
                join(&mut parent, members[0], i);
                grouped[i] = true;
            }
        }
    }
    (0..records.len())
        .map(|i| grouped[i].then(|| root(&mut parent, i) as u64))
        .collect()
}

/// Where each person id goes: every group of entities becomes one person,
/// named by the spine id most of its linked members had (else its smallest
/// person id). A spine id that is a person id names only the group holding
/// that person id, and no two groups share one: a person split in two
/// (a refitted model no longer links them) becomes two people on the
/// spine, the part without the id taking its own. Only changes are
/// returned.
fn spine_assignments(
    records: &[EntityRecord],
    people: &[u32],
    links: &[Link],
) -> Vec<SpineAssignment> {
    let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, &person) in people.iter().enumerate() {
        groups.entry(person).or_default().push(i);
    }
    // Person ids some entity holds, by group: built only when a group's
    // favourite spine id is none of its own members' person ids (a person
    // split, or the id's own entity deleted), to see whether another group
    // holds it. Ids no entity holds go to the first group that asks.
    let mut held: Option<HashMap<&str, u32>> = None;
    let mut taken: std::collections::HashSet<&str> = std::collections::HashSet::new();
    // The strongest accepted link touching each entity.
    let mut best: HashMap<u32, f64> = HashMap::new();
    for link in links {
        if people[link.a as usize] == people[link.b as usize] {
            for end in [link.a, link.b] {
                let p = best.entry(end).or_insert(0.0);
                *p = p.max(link.probability);
            }
        }
    }
    let mut assignments = Vec::new();
    for members in groups.values() {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for &i in members {
            if records[i].linked {
                *votes.entry(records[i].spine_id()).or_default() += 1;
            }
        }
        let mut candidates: Vec<(&str, usize)> = votes.into_iter().collect();
        candidates.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let own = |id: &str| members.iter().any(|&i| records[i].person_id == id);
        let mut chosen = None;
        for &(id, _) in &candidates {
            if own(id) {
                chosen = Some(id);
                break;
            }
            let held = held.get_or_insert_with(|| {
                records
                    .iter()
                    .zip(people)
                    .map(|(r, &person)| (r.person_id.as_str(), person))
                    .collect()
            });
            if !held.contains_key(id) && taken.insert(id) {
                chosen = Some(id);
                break;
            }
        }
        let spine_id = chosen
            .or_else(|| members.iter().map(|&i| records[i].person_id.as_str()).min())
            .unwrap_or_default()
            .to_owned();
        let mut seen = std::collections::BTreeSet::new();
        for &i in members {
            let e = &records[i];
            if !seen.insert(e.person_id.as_str()) {
                continue;
            }
            let (method, score) = if e.person_id == spine_id {
                let own = if e.has_nhs {
                    LinkMethod::ExactNhs
                } else {
                    LinkMethod::Unlinked
                };
                (own, None)
            } else if members.iter().any(|&j| {
                records[j].person_id != e.person_id
                    && records[j].organisation == e.organisation
                    && records[j].local_pseudonym == e.local_pseudonym
            }) {
                (LinkMethod::ExactLocal, None)
            } else {
                let score = members
                    .iter()
                    .filter(|&&j| records[j].person_id == e.person_id)
                    .filter_map(|&j| best.get(&(j as u32)).copied())
                    .fold(None, |acc: Option<f64>, p| {
                        Some(acc.map_or(p, |a| a.max(p)))
                    });
                (LinkMethod::Fuzzy, score)
            };
            let joined = method == LinkMethod::Fuzzy || method == LinkMethod::ExactLocal;
            if e.spine_id() != spine_id || joined != e.joined_to.is_some() {
                assignments.push(SpineAssignment {
                    person_id: e.person_id.clone(),
                    spine_id: spine_id.clone(),
                    method,
                    score,
                });
            }
        }
    }
    assignments
}

/// When linkage last succeeded, in words for a note or a probe.
pub fn linked_as_of(status: &crate::storage::LinkageStatus) -> String {
    status
        .last_success_at
        .and_then(as_of)
        .unwrap_or_else(|| "never: linkage has not completed a run yet".to_owned())
}

/// A moment (Unix seconds) as RFC 3339 and how long ago it was.
pub fn as_of(unix: i64) -> Option<String> {
    let at = time::OffsetDateTime::from_unix_timestamp(unix).ok()?;
    let minutes = (time::OffsetDateTime::now_utc() - at)
        .whole_minutes()
        .max(0);
    let at = at
        .format(&time::format_description::well_known::Rfc3339)
        .ok()?;
    Some(format!("{at} ({minutes} minutes ago)"))
}

/// Sets the quality gauges from the stored estimates, so every gateway of
/// a deployment shows those of the last full run whichever ran it.
async fn publish_quality(storage: &Storage) -> Result<(), StorageError> {
    for report in quality(storage).await? {
        for q in report.pairs.iter().flatten() {
            crate::metrics::linkage_quality(
                report.params_version,
                &q.organisations,
                q.links,
                q.expected_wrong,
                q.expected_missed,
            );
        }
    }
    Ok(())
}

/// While serving: an incremental run every `interval` for each linkage
/// parameter set the loaded agreements use, by whichever gateway holds the
/// lease, until the gateway stops.
pub async fn every(
    storage: Storage,
    agreements: LiveAgreements,
    interval: Duration,
    mut stopping: crate::background::Stopping,
) {
    let holder = format!(
        "{}-{}",
        std::process::id(),
        time::OffsetDateTime::now_utc().unix_timestamp_nanos()
    );
    let mut ticks = tokio::time::interval(interval);
    let mut linker = Linker::default();
    while stopping.tick(&mut ticks).await {
        if let Err(e) = publish_quality(&storage).await {
            tracing::warn!(error = %e, "linkage: could not read the quality estimates");
        }
        let lease = interval.as_secs().max(1) as i64 * 3;
        match storage.take_linkage_lease(&holder, lease).await {
            Ok(true) => {}
            Ok(false) => {
                linker.forget();
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "linkage: could not take the lease; will retry");
                continue;
            }
        }
        for params in agreements.current().linkage_params() {
            let started = std::time::Instant::now();
            match linker.run(&storage, &params, RunMode::Incremental).await {
                Ok(report) if report.pending > 0 || report.full => {
                    crate::metrics::linkage_run(report.full, report.moved, started.elapsed());
                    tracing::info!(
                        version = report.params_version,
                        full = report.full,
                        entities = report.entities,
                        pending = report.pending,
                        read = report.read,
                        candidate_pairs = report.candidate_pairs,
                        links = report.links,
                        moved = report.moved,
                        nhs_conflicts = report.nhs_conflicts.len(),
                        "linkage run"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "linkage run failed; will retry"),
            }
        }
    }
    // Stopping: another gateway may link at once.
    if let Err(e) = storage.release_linkage_lease(&holder).await {
        tracing::warn!(error = %e, "linkage: could not give the lease back; it runs out by itself");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entity of organisation 0 with its own local id, linked by an
    /// earlier run into `spine` (its own person when that is itself).
    fn linked(person_id: &str, spine: &str) -> EntityRecord {
        EntityRecord {
            person_id: person_id.to_owned(),
            organisation: 0,
            local_pseudonym: format!("l-{person_id}"),
            has_nhs: false,
            joined_to: (spine != person_id).then(|| spine.to_owned()),
            linked: true,
        }
    }

    fn link(a: u32, b: u32) -> Link {
        Link {
            a,
            b,
            probability: 0.99,
            weight: 12.0,
        }
    }

    fn places(assignments: &[SpineAssignment]) -> Vec<(&str, &str)> {
        assignments
            .iter()
            .map(|a| (a.person_id.as_str(), a.spine_id.as_str()))
            .collect()
    }

    /// A model is stored as JSON and read back by every later run: its
    /// numbers must read back bit for bit (serde_json's `float_roundtrip`),
    /// or a run under the stored model scores pairs a hair apart from the
    /// run that fitted it, and writes every stored link again.
    #[test]
    fn numbers_stored_as_json_read_back_bit_for_bit() {
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        for _ in 0..100_000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let x = f64::from_bits(state >> 2) * if state & 1 == 0 { 1.0 } else { -1.0 };
            if !x.is_finite() {
                continue;
            }
            let back: f64 = serde_json::from_str(&serde_json::to_string(&x).unwrap()).unwrap();
            assert_eq!(back.to_bits(), x.to_bits(), "{x:e}");
        }
    }

    #[test]
    fn a_person_split_in_two_becomes_two_people_on_the_spine() {
        // p1, p2 and p3 were one person (p1); now p2 and p3 are apart
        // from p1 (linked to each other).
        let records = [linked("p1", "p1"), linked("p2", "p1"), linked("p3", "p1")];
        let moved = spine_assignments(&records, &[0, 1, 1], &[link(1, 2)]);
        assert_eq!(
            places(&moved),
            [("p2", "p2"), ("p3", "p2")],
            "the part without p1 takes its own id, though most of it voted p1"
        );
        // Apart entirely: each its own.
        let moved = spine_assignments(&records, &[0, 1, 2], &[]);
        assert_eq!(places(&moved), [("p2", "p2"), ("p3", "p3")]);
    }

    #[test]
    fn people_joined_keep_the_id_most_members_had_and_unchanged_people_move_nobody() {
        let records = [
            linked("p1", "p1"),
            linked("p2", "p1"),
            linked("p3", "p3"),
            EntityRecord {
                linked: false,
                ..linked("p0", "p0")
            },
        ];
        assert!(spine_assignments(&records, &[0, 0, 2, 3], &[link(0, 1)]).is_empty());
        let moved = spine_assignments(
            &records,
            &[0, 0, 0, 0],
            &[link(0, 1), link(1, 2), link(2, 3)],
        );
        assert_eq!(places(&moved), [("p3", "p1"), ("p0", "p1")]);
    }

    #[test]
    fn a_spine_id_whose_person_id_is_gone_names_one_group_only() {
        // p1's records were deleted; p2 and p3 still say p1, and now are
        // two people.
        let records = [linked("p2", "p1"), linked("p3", "p1")];
        let moved = spine_assignments(&records, &[0, 1], &[]);
        assert_eq!(places(&moved), [("p3", "p3")]);
    }
}
