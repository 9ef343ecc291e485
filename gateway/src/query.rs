//! `joinery.v1.Query`: analysts' questions, answered from the linked
//! population and released only through [`DisclosureRule`], or row-level
//! under project pseudonyms.
//!
//! An analyst (certificate `urn:joinery:analyst:NAME`) may ask only while a
//! role in an agreement in force names them: any role gives the
//! disclosure-controlled tables, a `row_level` role also `Extract` for that
//! agreement's project. An organisation's own certificate may ask `Counts`
//! and sees only its own rows.

use joinery_crypto::identity::PeerIdentity;
use joinery_policies::model::Access;
use joinery_proto::v1::query_server::Query;
use joinery_proto::v1::{
    AgencyOverlapRequest, AgencyOverlapResponse, CountsRequest, CountsResponse, DatasetCount,
    ExtractRequest, ExtractResponse, ExtractRow, OverlapRow, ReidentifyRequest, ReidentifyResponse,
    RunRequest, TableResponse, TableRow, cell,
};
use time::Date;
use tonic::{Request, Response, Status};

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::agreements::{Agreements, Grant};
use crate::analytics::Person;
use crate::analytics::model::AnalystQuery;
use crate::audit::AuditRecord;
use crate::disclosure::DisclosureRule;
use crate::peer;
use crate::rekey::Rekeyer;
use crate::storage::Storage;

/// The age bands of the agency-overlap table (where each band starts).
const OVERLAP_AGE_BANDS: [u32; 6] = [0, 5, 11, 16, 18, 26];

pub struct QueryService {
    storage: Storage,
    rule: DisclosureRule,
    /// Whose roles grant what.
    agreements: Agreements,
    /// The gateway's keys, for project pseudonyms.
    rekeyer: Rekeyer,
    /// The linked population as last loaded (see [`Snapshot`]).
    population: Arc<tokio::sync::Mutex<Snapshot>>,
}

/// The population in memory, the data generation it was loaded at, and
/// whether a reload is under way. While agencies deliver, the data changes
/// often and a reload takes seconds: answers keep coming from the loaded
/// population while a newer one loads in the background, so they are at
/// most one reload behind the data.
#[derive(Default)]
struct Snapshot {
    loaded: Option<(i64, Arc<Vec<Person>>)>,
    reloading: bool,
}

impl QueryService {
    pub fn new(storage: Storage, agreements: Agreements, rekeyer: Rekeyer) -> Self {
        Self {
            storage,
            rule: DisclosureRule::strictest(&agreements),
            agreements,
            rekeyer,
            population: Arc::default(),
        }
    }

    /// The roles `who` holds now; refused when none.
    fn roles(&self, who: &PeerIdentity) -> Result<Vec<Grant>, Status> {
        let PeerIdentity::Analyst(name) = who else {
            return Err(Status::permission_denied(format!(
                "{who} may not query the linked population; an analyst certificate is required"
            )));
        };
        let grants = self
            .agreements
            .grants(name, time::OffsetDateTime::now_utc());
        if grants.is_empty() {
            crate::metrics::query("refused_no_role", 0);
            return Err(Status::permission_denied(format!(
                "analyst {name} holds no role in an agreement in force; an agreement's roles list the analysts who may query"
            )));
        }
        Ok(grants)
    }

    /// The population as agreement `id` (its latest version) sees it: only
    /// what its parties sent under its datasets.
    async fn population_within(&self, id: &str) -> Result<Vec<Person>, Status> {
        let Some(granting) = self
            .agreements
            .iter()
            .filter(|a| a.agreement.id == id)
            .max_by_key(|a| a.agreement.version)
        else {
            return Err(Status::permission_denied(format!("no agreement {id}")));
        };
        let datasets: BTreeSet<&str> = granting
            .agreement
            .datasets
            .keys()
            .map(String::as_str)
            .collect();
        let parties: BTreeSet<&str> = granting
            .agreement
            .parties
            .iter()
            .map(|p| p.organisation.as_str())
            .collect();
        Ok(self
            .population()
            .await?
            .iter()
            .filter_map(|p| p.within(&datasets, &parties))
            .collect())
    }

    /// Direct care: which of the asking agency's own records (by the
    /// agent-level local pseudonyms it sends) belong to the cohort, where an
    /// agreement in force that it is party to allows re-identification.
    pub async fn reidentify(
        &self,
        who: &PeerIdentity,
        request: &ReidentifyRequest,
    ) -> Result<ReidentifyResponse, Status> {
        const MAX_CANDIDATES: usize = 100_000;
        let PeerIdentity::Organisation(code) = who else {
            return Err(Status::permission_denied(
                "re-identification for direct care is for an agency's own certificate: it learns only which of its own records are in the cohort",
            ));
        };
        if request.candidates.len() > MAX_CANDIDATES {
            return Err(Status::invalid_argument(format!(
                "{} candidates in one request; send at most {MAX_CANDIDATES} at a time",
                request.candidates.len()
            )));
        }
        let now = time::OffsetDateTime::now_utc();
        let mut allowing: Vec<&str> = self
            .agreements
            .iter()
            .filter(|a| {
                a.in_force_at(now).is_ok()
                    && a.agreement.outputs.reidentify_for_direct_care
                    && a.agreement.parties.iter().any(|p| p.organisation == *code)
                    && (request.agreement.is_empty() || a.agreement.id == request.agreement)
            })
            .map(|a| a.agreement.id.as_str())
            .collect();
        allowing.sort_unstable();
        allowing.dedup();
        let agreement = match allowing.as_slice() {
            [] => {
                crate::metrics::query("refused_reidentify", 0);
                return Err(Status::permission_denied(format!(
                    "no agreement in force that {code} is party to allows re-identification for direct care (outputs.reidentify_for_direct_care)"
                )));
            }
            [one] => (*one).to_owned(),
            many => {
                return Err(Status::invalid_argument(format!(
                    "several agreements allow re-identification for {code} ({}): name one",
                    many.join(", ")
                )));
            }
        };
        let (query, reference) = parse(&request.query)?;
        let people = self.population_within(&agreement).await?;
        let cohort: HashSet<u64> = crate::analytics::members(&query, &people, reference)
            .into_iter()
            .map(|m| m.key)
            .collect();
        let locals: HashMap<String, &Vec<u8>> = request
            .candidates
            .iter()
            .map(|c| (hex::encode(self.rekeyer.local_pseudonym(code, c)), c))
            .collect();
        let keys: Vec<String> = locals.keys().cloned().collect();
        let found = self
            .storage
            .spine_ids_of_local(code, &keys)
            .await
            .map_err(unavailable)?;
        let mut members: Vec<Vec<u8>> = found
            .iter()
            .filter(|(_, spine)| cohort.contains(&Person::with_key(spine).key))
            .filter_map(|(local, _)| locals.get(local).map(|c| (*c).clone()))
            .collect();
        members.sort_unstable();
        members.dedup();
        self.audit(
            who,
            "reidentify",
            request,
            &format!("direct care under {agreement}: the agency's own records only"),
            members.len(),
            0,
        )
        .await?;
        Ok(ReidentifyResponse {
            agreement,
            reference_date: reference.to_string(),
            explanation: crate::analytics::explain(&query),
            members,
        })
    }

    /// Answers a query row-level: each cohort member under the project's
    /// pseudonyms, for an analyst whose role in that agreement grants it.
    pub async fn extract(
        &self,
        who: &PeerIdentity,
        request: &ExtractRequest,
    ) -> Result<ExtractResponse, Status> {
        let row_level: Vec<Grant> = self
            .roles(who)?
            .into_iter()
            .filter(|g| g.access == Access::RowLevel)
            .filter(|g| request.project.is_empty() || g.agreement == request.project)
            .collect();
        let project = match row_level.as_slice() {
            [] => {
                return Err(Status::permission_denied(format!(
                    "{who} holds no row-level role{}; row-level extracts need a role with access: row_level",
                    match request.project.as_str() {
                        "" => String::new(),
                        p => format!(" in agreement {p}"),
                    }
                )));
            }
            [one] => one.agreement.clone(),
            many => {
                let projects: Vec<&str> = many.iter().map(|g| g.agreement.as_str()).collect();
                return Err(Status::invalid_argument(format!(
                    "{who} holds row-level roles in several agreements ({}): name the project",
                    projects.join(", ")
                )));
            }
        };
        let (query, reference) = parse(&request.query)?;
        let people = self.population_within(&project).await?;
        let pseudonyms = self.rekeyer.project(&project);
        let mut rows: Vec<ExtractRow> = crate::analytics::members(&query, &people, reference)
            .into_iter()
            .map(|m| ExtractRow {
                person: hex::encode(&pseudonyms.pseudonymise(&m.key.to_le_bytes())[..16]),
                row: m.row,
                column: m.column,
                value: m.value,
            })
            .collect();
        rows.sort_by(|a, b| (&a.person, &a.row, &a.column).cmp(&(&b.person, &b.row, &b.column)));
        self.audit(
            who,
            "extract",
            request,
            &format!("row-level, project {project} pseudonyms"),
            rows.len(),
            0,
        )
        .await?;
        Ok(ExtractResponse {
            project,
            reference_date: reference.to_string(),
            row_heading: query.rows.heading(),
            column_heading: query.columns.heading(),
            measure: match query.measure {
                crate::analytics::model::Measure::Children => String::new(),
                ref m => crate::analytics::measure_name(m).to_owned(),
            },
            explanation: crate::analytics::explain(&query),
            rows,
        })
    }

    /// The linked population: loaded on first use, then from memory, with
    /// a background reload when the data has changed since.
    async fn population(&self) -> Result<Arc<Vec<Person>>, Status> {
        let generation = self.storage.data_generation().await.map_err(unavailable)?;
        let mut snapshot = self.population.lock().await;
        match &snapshot.loaded {
            Some((at, people)) => {
                let people = Arc::clone(people);
                if *at != generation && !snapshot.reloading {
                    snapshot.reloading = true;
                    let (storage, shared) = (self.storage.clone(), Arc::clone(&self.population));
                    tokio::spawn(async move {
                        let loaded = storage.population().await;
                        let mut snapshot = shared.lock().await;
                        snapshot.reloading = false;
                        match loaded {
                            Ok(people) => snapshot.loaded = Some((generation, Arc::new(people))),
                            Err(error) => {
                                tracing::error!(%error, "reloading the population failed")
                            }
                        }
                    });
                }
                Ok(people)
            }
            None => {
                let people = Arc::new(self.storage.population().await.map_err(unavailable)?);
                snapshot.loaded = Some((generation, Arc::clone(&people)));
                Ok(people)
            }
        }
    }

    /// Answers an analyst's query document: the protected table, audited;
    /// refused if the cohort could be differenced against an earlier one.
    pub async fn answer(
        &self,
        who: &PeerIdentity,
        request: &RunRequest,
    ) -> Result<TableResponse, Status> {
        self.roles(who)?;
        let (query, reference) = parse(&request.query)?;
        let people = self.population().await?;
        let table = crate::analytics::tabulate(&query, &people, reference);
        self.refuse_differencing(who, &table.members).await?;
        let cells = crate::analytics::release(&table, &query.measure, &self.rule);
        let mut labels = table.rows.clone();
        labels.push("total".to_owned());
        let rows: Vec<TableRow> = labels
            .into_iter()
            .zip(cells)
            .map(|(label, cells)| TableRow { label, cells })
            .collect();
        let released = rows.iter().map(|r| r.cells.len()).sum();
        let suppressed = rows
            .iter()
            .flat_map(|r| &r.cells)
            .filter(|c| matches!(c.value, Some(cell::Value::Suppressed(_))))
            .count();
        self.audit(who, "run", request, &self.rule.note(), released, suppressed)
            .await?;
        let mut columns = table.columns;
        columns.push("total".to_owned());
        Ok(TableResponse {
            reference_date: reference.to_string(),
            row_heading: query.rows.heading(),
            column_heading: query.columns.heading(),
            columns,
            rows,
            disclosure_note: self.rule.note(),
            explanation: crate::analytics::explain(&query),
            measure: crate::analytics::measure_name(&query.measure).to_owned(),
        })
    }
}

#[tonic::async_trait]
impl Query for QueryService {
    async fn counts(
        &self,
        request: Request<CountsRequest>,
    ) -> Result<Response<CountsResponse>, Status> {
        let identity = peer::identity(&request)?;
        let only = match &identity {
            PeerIdentity::Analyst(_) => {
                self.roles(&identity)?;
                None
            }
            PeerIdentity::Organisation(code) => Some(code.as_str()),
        };
        let counts = self
            .storage
            .dataset_counts(only)
            .await
            .map_err(unavailable)?;
        // Counts of records and batches, not of people: no disclosure control.
        self.audit(
            &identity,
            "counts",
            request.get_ref(),
            "counts of records and batches",
            counts.len() * 2,
            0,
        )
        .await?;
        Ok(Response::new(CountsResponse {
            datasets: counts
                .into_iter()
                .map(|c| DatasetCount {
                    organisation: c.organisation,
                    dataset: c.dataset,
                    batches: c.batches,
                    records: c.records,
                })
                .collect(),
        }))
    }

    async fn agency_overlap(
        &self,
        request: Request<AgencyOverlapRequest>,
    ) -> Result<Response<AgencyOverlapResponse>, Status> {
        let identity = peer::identity(&request)?;
        self.roles(&identity)?;
        let reference = match request.get_ref().reference_date.as_str() {
            "" => time::OffsetDateTime::now_utc().date(),
            text => Date::parse(text, &time::format_description::well_known::Iso8601::DATE)
                .map_err(|_| Status::invalid_argument("reference_date must be YYYY-MM-DD"))?,
        };
        // The same engine and disclosure control as any query: age bands
        // by how many agencies know the child, with totals.
        let (query, _) = parse(&format!(
            "reference_date: {reference}\nrows: {{ age_bands: {OVERLAP_AGE_BANDS:?} }}\ncolumns: agency_overlap"
        ))?;
        let people = self.population().await?;
        let table = crate::analytics::tabulate(&query, &people, reference);
        let cells = crate::analytics::release(&table, &query.measure, &self.rule);
        let rows: Vec<OverlapRow> = table
            .rows
            .iter()
            .cloned()
            .chain(["total".to_owned()])
            .zip(cells)
            .map(|(age_band, cells)| OverlapRow { age_band, cells })
            .collect();
        let cells = rows.iter().map(|r| r.cells.len()).sum();
        let suppressed = rows
            .iter()
            .flat_map(|r| &r.cells)
            .filter(|c| matches!(c.value, Some(cell::Value::Suppressed(_))))
            .count();
        self.audit(
            &identity,
            "agency_overlap",
            request.get_ref(),
            &self.rule.note(),
            cells,
            suppressed,
        )
        .await?;
        Ok(Response::new(AgencyOverlapResponse {
            reference_date: reference.to_string(),
            columns: table
                .columns
                .into_iter()
                .chain(["total".to_owned()])
                .collect(),
            rows,
            disclosure_note: self.rule.note(),
        }))
    }

    async fn run(&self, request: Request<RunRequest>) -> Result<Response<TableResponse>, Status> {
        let identity = peer::identity(&request)?;
        Ok(Response::new(
            self.answer(&identity, request.get_ref()).await?,
        ))
    }

    async fn extract(
        &self,
        request: Request<ExtractRequest>,
    ) -> Result<Response<ExtractResponse>, Status> {
        let identity = peer::identity(&request)?;
        Ok(Response::new(
            self.extract(&identity, request.get_ref()).await?,
        ))
    }

    async fn reidentify(
        &self,
        request: Request<ReidentifyRequest>,
    ) -> Result<Response<ReidentifyResponse>, Status> {
        let identity = peer::identity(&request)?;
        Ok(Response::new(
            self.reidentify(&identity, request.get_ref()).await?,
        ))
    }
}

/// A query document and the day it counts at (today unless it says).
fn parse(text: &str) -> Result<(AnalystQuery, Date), Status> {
    let query = AnalystQuery::parse(text)
        .map_err(|e| Status::invalid_argument(format!("the query: {e}")))?;
    let reference = query
        .reference_date
        .unwrap_or_else(|| time::OffsetDateTime::now_utc().date());
    Ok((query, reference))
}

/// Who asked, as the audit log names them.
fn actor(who: &PeerIdentity) -> String {
    match who {
        PeerIdentity::Analyst(name) => format!("analyst:{name}"),
        PeerIdentity::Organisation(code) => code.clone(),
    }
}

impl QueryService {
    /// Refuses a cohort that differs from one released before (to anyone)
    /// by a handful of people, which subtraction would single out; else
    /// logs it as released.
    async fn refuse_differencing(&self, who: &PeerIdentity, members: &[u64]) -> Result<(), Status> {
        let threshold = self.rule.suppress_up_to;
        let near = self
            .storage
            .cohorts_near(members.len() as u64, threshold)
            .await
            .map_err(unavailable)?;
        if let Some(earlier) = near
            .iter()
            .find(|e| crate::analytics::differs_by_a_few(members, &e.members, threshold))
        {
            let when = time::OffsetDateTime::from_unix_timestamp(earlier.at_ms / 1000)
                .map_or_else(|_| "earlier".to_owned(), |t| t.date().to_string());
            crate::metrics::query("refused_differencing", 0);
            tracing::warn!(actor = %actor(who), earlier = earlier.seq, "query refused: differencing");
            return Err(Status::failed_precondition(format!(
                "refused: this cohort differs from one released on {when} (cohort {}) by between 1 and {threshold} people, \
                 so comparing the two could single them out; widen or narrow the cohort by more",
                earlier.seq
            )));
        }
        // The same cohort released again adds nothing to compare against.
        if near.iter().any(|e| e.members == members) {
            return Ok(());
        }
        self.storage
            .log_cohort(&actor(who), members)
            .await
            .map_err(unavailable)
    }

    /// Records who asked what and what was released; no answer leaves
    /// unless it is audited.
    async fn audit<M: prost::Message>(
        &self,
        who: &PeerIdentity,
        query: &str,
        request: &M,
        disclosure: &str,
        cells_released: usize,
        cells_suppressed: usize,
    ) -> Result<(), Status> {
        crate::metrics::query(query, cells_suppressed as u64);
        let actor = actor(who);
        let digest = hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            &[query.as_bytes(), b"\0", &request.encode_to_vec()].concat(),
        ));
        tracing::info!(%actor, %query, "query answered");
        self.storage
            .append_audit(&AuditRecord::query(
                &actor,
                query,
                &digest,
                disclosure,
                cells_released,
            ))
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}

fn unavailable(error: crate::storage::StorageError) -> Status {
    tracing::error!(%error, "query failed");
    Status::unavailable("the gateway's database is not available")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{NewBatch, NewEvent, NewRecord};

    fn batch(id: &str, people: std::ops::Range<usize>) -> NewBatch {
        NewBatch {
            organisation: "E08000099".to_owned(),
            batch_id: id.to_owned(),
            dataset: "cin".to_owned(),
            sequence: 1,
            agreement_id: "a".to_owned(),
            agreement_version: 1,
            records: people
                .map(|i| NewRecord {
                    person_id: format!("person-{i}"),
                    source_row: i as u64,
                    local_pseudonym: format!("local-{i}"),
                    nhs_pseudonym: None,
                    link_method: crate::rekey::LINK_UNLINKED,
                    sex: Some("female".to_owned()),
                    birth_month: Some("2015-04".to_owned()),
                    postcode_district: None,
                    attributes: "{}".to_owned(),
                    events: vec![NewEvent {
                        event_type: "referral".to_owned(),
                        event_date: "2025-01-02".to_owned(),
                        attributes: "{}".to_owned(),
                    }],
                    linkage: None,
                })
                .collect(),
        }
    }

    /// A service over `storage` under the minimal example agreement, with
    /// no suppression or rounding, where analyst `a` holds an aggregates
    /// role and `r` a row-level one.
    fn service(storage: &Storage) -> QueryService {
        let text = include_str!("../../policies/examples/minimal.yaml");
        let mut agreement = joinery_policies::check::check(text, time::OffsetDateTime::now_utc())
            .agreement
            .unwrap();
        agreement.valid_from = joinery_policies::model::When::parse("2000-01-01").unwrap();
        agreement.expires = joinery_policies::model::When::parse("2999-12-31").unwrap();
        agreement.outputs.minimum_cell_count = 1;
        agreement.outputs.rounding = joinery_policies::model::Rounding::None;
        let referrals = agreement.datasets.remove("referrals").unwrap();
        agreement.datasets.insert("cin".to_owned(), referrals);
        agreement.roles.clear();
        for (name, access) in [("a", Access::Aggregates), ("r", Access::RowLevel)] {
            agreement.roles.insert(
                format!("{name}-role"),
                joinery_policies::model::Role {
                    description: String::new(),
                    access,
                    analysts: vec![name.to_owned()],
                },
            );
        }
        let signed = joinery_policies::SignedAgreement {
            agreement,
            digest: String::new(),
            path: "minimal.yaml".into(),
        };
        let key = joinery_crypto::keys::SecretKey::generate().unwrap();
        QueryService::new(
            storage.clone(),
            Agreements::from_verified(vec![signed]),
            Rekeyer::new(&key),
        )
    }

    /// The answer's total number of children (no suppression, no rounding).
    async fn total(service: &QueryService) -> Option<u64> {
        let who = PeerIdentity::Analyst("a".into());
        let table = service
            .answer(
                &who,
                &RunRequest {
                    query: "rows: sex".to_owned(),
                },
            )
            .await
            .unwrap();
        match table.rows.last()?.cells.last()?.value {
            Some(cell::Value::Count(n)) => Some(n),
            _ => None,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn answers_come_from_memory_and_catch_up_after_a_background_reload() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&Storage::sqlite_url(dir.path()))
            .await
            .unwrap();
        storage.commit_batch(&batch("b1", 0..20)).await.unwrap();
        let service = service(&storage);
        assert_eq!(
            total(&service).await,
            Some(20),
            "the first answer loads the data"
        );
        storage.commit_batch(&batch("b2", 20..50)).await.unwrap();
        // The next answer comes from memory, while the new data loads.
        assert_eq!(total(&service).await, Some(20));
        let mut caught_up = false;
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if total(&service).await == Some(50) {
                caught_up = true;
                break;
            }
        }
        assert!(caught_up, "the reload took the new batch in");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn roles_decide_who_sees_tables_and_who_sees_rows() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&Storage::sqlite_url(dir.path()))
            .await
            .unwrap();
        storage.commit_batch(&batch("b1", 0..20)).await.unwrap();
        // Five more people the agreement's datasets do not hold.
        let mut outside = batch("b2", 20..25);
        outside.organisation = "RX9".to_owned();
        outside.dataset = "camhs".to_owned();
        storage.commit_batch(&outside).await.unwrap();
        let service = service(&storage);
        let (a, r) = (
            PeerIdentity::Analyst("a".into()),
            PeerIdentity::Analyst("r".into()),
        );
        let run = RunRequest {
            query: "rows: sex".to_owned(),
        };
        let extract = ExtractRequest {
            query: "rows: sex\nmeasure: { events: { event: referral } }".to_owned(),
            project: String::new(),
        };
        let outsider = PeerIdentity::Analyst("outsider".into());
        let err = service.answer(&outsider, &run).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("holds no role"), "{}", err.message());
        let agency = PeerIdentity::Organisation("E08000099".into());
        assert_eq!(
            service.answer(&agency, &run).await.unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert!(service.answer(&a, &run).await.is_ok());
        assert!(
            service.answer(&r, &run).await.is_ok(),
            "row-level includes tables"
        );
        let err = service.extract(&a, &extract).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("row-level"), "{}", err.message());
        let rows = service.extract(&r, &extract).await.unwrap();
        assert_eq!(rows.project, "minimal-example");
        assert_eq!(rows.rows.len(), 20, "only the agreement's datasets");
        assert!(
            rows.rows
                .iter()
                .all(|row| row.row == "female" && row.value == Some(1.0))
        );
        let mut people: Vec<&str> = rows.rows.iter().map(|row| row.person.as_str()).collect();
        people.dedup();
        assert_eq!(people.len(), 20, "one pseudonym each, in order");
        assert!(
            people
                .iter()
                .all(|p| p.len() == 32 && !p.contains("person")),
            "project pseudonyms, not stored ids"
        );
        let again = service.extract(&r, &extract).await.unwrap();
        assert_eq!(again.rows, rows.rows, "stable within the project");
        let other = ExtractRequest {
            project: "another-project".to_owned(),
            ..extract.clone()
        };
        assert_eq!(
            service.extract(&r, &other).await.unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        // Re-identification for direct care: not under this agreement, and
        // never for an analyst.
        let reidentify = ReidentifyRequest {
            query: "rows: sex".to_owned(),
            candidates: vec![vec![0; 32]],
            agreement: String::new(),
        };
        let err = service.reidentify(&agency, &reidentify).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message().contains("reidentify_for_direct_care"),
            "{}",
            err.message()
        );
        let err = service.reidentify(&r, &reidentify).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        let other_project = service.rekeyer.project("another-project");
        let first_key = Person::with_key("person-0").key;
        assert_ne!(
            hex::encode(&other_project.pseudonymise(&first_key.to_le_bytes())[..16]),
            hex::encode(
                &service
                    .rekeyer
                    .project("minimal-example")
                    .pseudonymise(&first_key.to_le_bytes())[..16]
            ),
            "another project's pseudonyms are unrelated"
        );
    }
}
