//! `joinery.v1.Query`: analysts' questions, answered from the linked
//! population and released only through [`DisclosureRules`], or row-level
//! under project pseudonyms.
//!
//! An analyst (certificate `urn:joinery:analyst:NAME`) may ask only while a
//! role in an agreement in force names them: any role gives the
//! disclosure-controlled tables, a `row_level` role also `Extract` for that
//! agreement's project. An organisation's own certificate may ask `Counts`
//! and sees only its own rows; analysts may not (the size of each delivery
//! would be a count outside disclosure control).
//!
//! Tables leave only through [`crate::disclosure`]: an answer is released
//! once per question and data generation, paid for from the privacy budget
//! of every agreement in force, and replayed unchanged (at no cost) when the
//! same question is asked of the same data again, by anyone.

use joinery_crypto::identity::PeerIdentity;
use joinery_policies::model::Access;
use joinery_proto::v1::query_server::Query;
use joinery_proto::v1::{
    AgencyOverlapRequest, AgencyOverlapResponse, CountsRequest, CountsResponse, DatasetCount,
    ExtractRequest, ExtractResponse, ExtractRow, OverlapRow, ReidentifyRequest, ReidentifyResponse,
    RunRequest, TableResponse, TableRow, VocabularyRequest, VocabularyResponse,
};
use time::Date;
use tonic::{Request, Response, Status};

mod asked;
mod error;
mod held;
mod shard;
mod shards;
mod view;

use asked::{Asked, Within};
pub use error::QueryError;
pub use view::Source;
use view::View;

use std::collections::{HashMap, HashSet};
use std::future::Future;

use crate::agreements::{Grant, LiveAgreements};
use crate::analytics::model::AnalystQuery;
use crate::analytics::shared::Shared;
use crate::analytics::{Labels, Person};
use crate::audit::AuditRecord;
use crate::disclosure::{DisclosureRules, Noise};
use crate::peer;
use crate::rekey::Rekeyer;
use crate::storage::{NewRelease, Recorded, Storage};

/// The age bands of the agency-overlap table (where each band starts).
const OVERLAP_AGE_BANDS: [u32; 6] = [0, 5, 11, 16, 18, 26];

pub struct QueryService {
    storage: Storage,
    /// Whose roles grant what, and the disclosure rules.
    agreements: LiveAgreements,
    /// The gateway's keys, for project pseudonyms.
    rekeyer: Rekeyer,
    /// Where answers read the linked population.
    population: Source,
}

impl QueryService {
    pub fn new(
        storage: Storage,
        agreements: LiveAgreements,
        rekeyer: Rekeyer,
        population: Source,
    ) -> Self {
        Self {
            storage,
            agreements,
            rekeyer,
            population,
        }
    }

    /// The roles `who` holds now; refused when none.
    fn roles(&self, who: &PeerIdentity) -> Result<Vec<Grant>, QueryError> {
        let PeerIdentity::Analyst(name) = who else {
            return Err(QueryError::forbidden(format!(
                "{who} may not query the linked population; an analyst certificate is required"
            )));
        };
        let grants = self
            .agreements
            .current()
            .grants(name, time::OffsetDateTime::now_utc());
        if grants.is_empty() {
            crate::metrics::query("refused_no_role", 0);
            return Err(QueryError::forbidden(format!(
                "analyst {name} holds no role in an agreement in force; an agreement's roles list the analysts who may query"
            )));
        }
        Ok(grants)
    }

    /// What agreement `id` (its latest version) sees of the population:
    /// only what its parties sent under its datasets.
    fn within(&self, id: &str) -> Result<Within, QueryError> {
        let in_force = self.agreements.current();
        let Some(granting) = in_force
            .iter()
            .filter(|a| a.agreement.id == id)
            .max_by_key(|a| a.agreement.version)
        else {
            return Err(QueryError::forbidden(format!("no agreement {id}")));
        };
        Ok(Within {
            agreement: id.to_owned(),
            datasets: granting.agreement.datasets.keys().cloned().collect(),
            parties: granting
                .agreement
                .parties
                .iter()
                .map(|p| p.organisation.to_string())
                .collect(),
        })
    }

    /// Works `answer` out on a view of the population at one data
    /// generation; where the population is sharded and a shard moved past
    /// that generation meanwhile, again at the newer one (a few times).
    async fn at_one_generation<'s, T, F, Fut>(&'s self, answer: F) -> Result<T, QueryError>
    where
        F: Fn(View<'s>) -> Fut,
        Fut: Future<Output = Result<T, QueryError>>,
    {
        const ATTEMPTS: usize = 5;
        for _ in 0..ATTEMPTS {
            match answer(self.population.view(&self.storage).await?).await {
                Err(QueryError::MovedOn) => continue,
                other => return other,
            }
        }
        Err(QueryError::Shards(format!(
            "the data moved on while the shards were asked, {ATTEMPTS} times in a row; ask again when deliveries have landed"
        )))
    }

    /// Direct care: which of the asking agency's own records (by the
    /// agent-level local pseudonyms it sends) belong to the cohort, where an
    /// agreement in force that it is party to allows re-identification.
    pub async fn reidentify(
        &self,
        who: &PeerIdentity,
        request: &ReidentifyRequest,
    ) -> Result<ReidentifyResponse, QueryError> {
        const MAX_CANDIDATES: usize = 100_000;
        let PeerIdentity::Organisation(code) = who else {
            return Err(QueryError::forbidden(
                "re-identification for direct care is for an agency's own certificate: it learns only which of its own records are in the cohort",
            ));
        };
        if request.candidates.len() > MAX_CANDIDATES {
            return Err(QueryError::invalid(format!(
                "{} candidates in one request; send at most {MAX_CANDIDATES} at a time",
                request.candidates.len()
            )));
        }
        let now = time::OffsetDateTime::now_utc();
        let in_force = self.agreements.current();
        let mut allowing: Vec<&str> = in_force
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
                return Err(QueryError::forbidden(format!(
                    "no agreement in force that {code} is party to allows re-identification for direct care (outputs.reidentify_for_direct_care)"
                )));
            }
            [one] => (*one).to_owned(),
            many => {
                return Err(QueryError::invalid(format!(
                    "several agreements allow re-identification for {code} ({}): name one",
                    many.join(", ")
                )));
            }
        };
        let asked = &asked(&request.query)?;
        let within = &self.within(&agreement)?;
        let cohort: HashSet<u64> = self
            .at_one_generation(|view| async move { view.members(asked, within).await })
            .await?
            .into_iter()
            .map(|m| m.key)
            .collect();
        let locals: HashMap<String, &Vec<u8>> = request
            .candidates
            .iter()
            .map(|c| (hex::encode(self.rekeyer.local_pseudonym(code, c)), c))
            .collect();
        let keys: Vec<String> = locals.keys().cloned().collect();
        let found = self.storage.spine_ids_of_local(code, &keys).await?;
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
            reference_date: asked.reference.to_string(),
            explanation: crate::analytics::explain(&asked.query),
            members,
        })
    }

    /// Answers a query row-level: each cohort member under the project's
    /// pseudonyms, for an analyst whose role in that agreement grants it.
    pub async fn extract(
        &self,
        who: &PeerIdentity,
        request: &ExtractRequest,
    ) -> Result<ExtractResponse, QueryError> {
        let row_level: Vec<Grant> = self
            .roles(who)?
            .into_iter()
            .filter(|g| g.access == Access::RowLevel)
            .filter(|g| request.project.is_empty() || g.agreement == request.project)
            .collect();
        let project = match row_level.as_slice() {
            [] => {
                return Err(QueryError::forbidden(format!(
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
                return Err(QueryError::invalid(format!(
                    "{who} holds row-level roles in several agreements ({}): name the project",
                    projects.join(", ")
                )));
            }
        };
        let asked = &asked(&request.query)?;
        let within = &self.within(&project)?;
        let pseudonyms = self.rekeyer.project(&project);
        let mut rows: Vec<ExtractRow> = self
            .at_one_generation(|view| async move { view.members(asked, within).await })
            .await?
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
            crate::audit::EXTRACT_QUERY,
            request,
            &format!("row-level, project {project} pseudonyms"),
            rows.len(),
            0,
        )
        .await?;
        let query = &asked.query;
        Ok(ExtractResponse {
            project,
            reference_date: asked.reference.to_string(),
            row_heading: query.rows.heading(),
            column_heading: query.columns.heading(),
            measure: match query.measure {
                crate::analytics::model::Measure::Children => String::new(),
                ref m => crate::analytics::measure_name(m).to_owned(),
            },
            explanation: crate::analytics::explain(query),
            rows,
        })
    }

    /// Answers an analyst's query document: the protected table, audited.
    pub async fn answer(
        &self,
        who: &PeerIdentity,
        request: &RunRequest,
    ) -> Result<TableResponse, QueryError> {
        self.roles(who)?;
        let asked = &asked(&request.query)?;
        let (table, newer_data_pending) = self
            .at_one_generation(|view| async move {
                let table = self.release_table(who, "run", asked, &view).await?;
                Ok((table, view.newer_data_pending()))
            })
            .await?;
        Ok(TableResponse {
            warnings: self.shared().unshared(&asked.query),
            newer_data_pending,
            ..table
        })
    }

    /// What the agreements in force share, for an analyst holding a role
    /// in one: the words a query may use.
    pub fn vocabulary(&self, who: &PeerIdentity) -> Result<VocabularyResponse, QueryError> {
        self.roles(who)?;
        Ok(self.shared().vocabulary())
    }

    /// What the agreements in force now share.
    fn shared(&self) -> Shared {
        let now = time::OffsetDateTime::now_utc();
        let agreements = self.agreements.current();
        let in_force = agreements.iter().filter(|a| a.in_force_at(now).is_ok());
        Shared::of(in_force.map(|a| &a.agreement))
    }

    /// The protected table of `query`: the answer released before for the
    /// same question of the same data, or a new release paid for from the
    /// budget of every agreement in force (refused, and audited, when one
    /// would be overspent: a refusal that depends on the ledger alone).
    async fn release_table(
        &self,
        who: &PeerIdentity,
        kind: &str,
        asked: &Asked,
        view: &View<'_>,
    ) -> Result<TableResponse, QueryError> {
        let (text, query, reference) = (&asked.text, &asked.query, asked.reference);
        let generation = view.generation();
        let now = time::OffsetDateTime::now_utc();
        let budgets = self.budgets(now);
        let key = release_key(kind, text, reference, generation, &budgets);
        let audit_request = RunRequest {
            query: text.to_owned(),
        };
        if let Some(answer) = self.storage.release(&key).await? {
            let table = decode(&answer)?;
            self.audit(
                who,
                kind,
                &audit_request,
                "replayed an earlier release of the same question and data",
                cells(&table),
                0,
            )
            .await?;
            return Ok(table);
        }
        let mut noise = Noise;
        let rules = &DisclosureRules::strictest(&self.agreements.current());
        let (labels, labels_cost) = safe_labels(asked, view, rules, &mut noise).await?;
        let table = view.tabulate(asked, &labels).await?;
        let cost = labels_cost + crate::disclosure::cost(&table, &query.measure, rules.noise_sd);
        let cost_nano = (cost * 1e9).ceil() as u64;
        for (agreement, budget) in &budgets {
            let spent = self.storage.privacy_spent(agreement).await?;
            if spent + cost_nano > *budget {
                return Err(self
                    .over_budget(who, kind, &audit_request, agreement, spent, *budget)
                    .await);
            }
        }
        let release = crate::disclosure::protect(&table, &query.measure, rules, &mut noise)?;
        let spent_note = budgets
            .iter()
            .map(|(agreement, budget)| {
                format!(
                    "{agreement}: {:.1}% of its privacy budget",
                    100.0 * cost_nano as f64 / *budget as f64
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let note = format!(
            "{}; this table spent {spent_note}; people linked across agencies as of {}",
            rules.note(),
            crate::linker::linked_as_of(&self.storage.linkage_status().await?)
        );
        let response = table_response(query, reference, &table, &release, note, generation);
        let answer = prost::Message::encode_to_vec(&response);
        let detail = format!(
            "released at rho {cost:.6} from each of {}; {}",
            budgets
                .iter()
                .map(|(a, _)| a.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            rules.note()
        );
        let audit = self.audit_record(who, kind, &audit_request, &detail, cells(&response));
        crate::metrics::query(kind, release.suppressed() as u64);
        let recorded = self
            .storage
            .record_release(&NewRelease {
                key: &key,
                actor: &actor(who),
                cost_nano,
                budgets: &budgets,
                answer: &answer,
                audit: &audit,
            })
            .await?;
        match recorded {
            Recorded::Made => Ok(response),
            Recorded::Existing(answer) => decode(&answer),
            Recorded::OverBudget(agreement, spent) => {
                let budget = budgets
                    .iter()
                    .find(|(a, _)| *a == agreement)
                    .map_or(0, |(_, b)| *b);
                Err(self
                    .over_budget(who, kind, &audit_request, &agreement, spent, budget)
                    .await)
            }
        }
    }

    /// Each agreement in force (its latest version) and its whole budget,
    /// in rho billionths, sorted by agreement.
    fn budgets(&self, now: time::OffsetDateTime) -> Vec<(String, u64)> {
        let mut latest: std::collections::BTreeMap<&str, &joinery_policies::SignedAgreement> =
            std::collections::BTreeMap::new();
        let in_force = self.agreements.current();
        for signed in in_force.iter().filter(|a| a.in_force_at(now).is_ok()) {
            let id = signed.agreement.id.as_str();
            if latest
                .get(id)
                .is_none_or(|l| l.agreement.version < signed.agreement.version)
            {
                latest.insert(id, signed);
            }
        }
        latest
            .into_iter()
            .map(|(id, signed)| {
                (
                    id.to_owned(),
                    (signed.agreement.outputs.privacy.rho() * 1e9) as u64,
                )
            })
            .collect()
    }

    /// The refusal of a release that would overspend `agreement`, audited.
    async fn over_budget(
        &self,
        who: &PeerIdentity,
        kind: &str,
        request: &RunRequest,
        agreement: &str,
        spent: u64,
        budget: u64,
    ) -> QueryError {
        crate::metrics::query("refused_budget", 0);
        let refused = format!("refused: the privacy budget of agreement {agreement} is spent");
        if let Err(error) = self
            .audit(who, &format!("{kind}_refused"), request, &refused, 0, 0)
            .await
        {
            return error;
        }
        QueryError::BudgetSpent(format!(
            "{refused} ({:.1}% used, and this table needs more than is left); questions already answered \
             are still answered, and the parties can sign a version of the agreement with a larger \
             outputs.privacy.epsilon",
            100.0 * spent as f64 / budget.max(1) as f64
        ))
    }
}

/// The recorded values each axis of the question may list, chosen with
/// noise over the whole population, and what choosing them cost in rho.
async fn safe_labels(
    asked: &Asked,
    view: &View<'_>,
    rules: &DisclosureRules,
    noise: &mut Noise,
) -> Result<(Labels, f64), QueryError> {
    let mut labels = Labels::default();
    let mut cost = 0.0;
    for (columns, slot) in [(false, &mut labels.rows), (true, &mut labels.columns)] {
        if let Some(counts) = view.label_counts(asked, columns).await? {
            *slot = Some(crate::disclosure::labels::safe(&counts, rules, noise)?);
            cost += crate::disclosure::labels::cost(rules);
        }
    }
    Ok((labels, cost))
}

/// A released table as the protocol carries it, totals last.
fn table_response(
    query: &AnalystQuery,
    reference: Date,
    table: &crate::analytics::Tabulation,
    release: &crate::disclosure::Release,
    disclosure_note: String,
    data_generation: i64,
) -> TableResponse {
    let with_total = |labels: &[String]| {
        labels
            .iter()
            .cloned()
            .chain(["total".to_owned()])
            .collect::<Vec<_>>()
    };
    let rows = with_total(&table.rows)
        .into_iter()
        .zip(&release.cells)
        .map(|(label, cells)| TableRow {
            label,
            cells: cells.iter().map(|&c| c.into()).collect(),
        })
        .collect();
    TableResponse {
        reference_date: reference.to_string(),
        row_heading: query.rows.heading(),
        column_heading: query.columns.heading(),
        columns: with_total(&table.columns),
        rows,
        disclosure_note,
        explanation: crate::analytics::explain(query),
        measure: crate::analytics::measure_name(&query.measure).to_owned(),
        data_generation,
        // Not part of the release: [`QueryService::answer`] adds them,
        // to a replayed answer as to a new one.
        warnings: Vec::new(),
        newer_data_pending: false,
    }
}

/// What identifies a release: what was asked, at which reference date, of
/// which data generation, under which agreements' budgets.
fn release_key(
    kind: &str,
    text: &str,
    reference: Date,
    generation: i64,
    budgets: &[(String, u64)],
) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [kind, text, &reference.to_string(), &generation.to_string()] {
        context.update(part.as_bytes());
        context.update(b"\0");
    }
    for (agreement, budget) in budgets {
        context.update(format!("{agreement}={budget}\0").as_bytes());
    }
    hex::encode(context.finish())
}

fn decode(answer: &[u8]) -> Result<TableResponse, QueryError> {
    Ok(<TableResponse as prost::Message>::decode(answer)?)
}

/// The cells of a table, totals included.
fn cells(table: &TableResponse) -> usize {
    table.rows.iter().map(|r| r.cells.len()).sum()
}

impl QueryService {
    /// An agency's own deliveries: batches and records per dataset.
    /// Analysts are refused: two calls a delivery apart would give its
    /// exact size.
    pub async fn counts(&self, who: &PeerIdentity) -> Result<CountsResponse, QueryError> {
        let PeerIdentity::Organisation(code) = who else {
            return Err(QueryError::forbidden(
                "counts of deliveries are shown only to the agency that sent them (with its own \
                 certificate): two calls a delivery apart would give its exact size; analysts see \
                 disclosure-controlled tables",
            ));
        };
        let counts = self.storage.dataset_counts(Some(code.as_str())).await?;
        self.audit(
            who,
            "counts",
            &CountsRequest {},
            "the agency's own records and batches",
            counts.len() * 2,
            0,
        )
        .await?;
        Ok(CountsResponse {
            datasets: counts
                .into_iter()
                .map(|c| DatasetCount {
                    organisation: c.organisation,
                    dataset: c.dataset,
                    batches: c.batches,
                    records: c.records,
                })
                .collect(),
        })
    }

    /// Children by age band and how many agencies know them: the same
    /// engine and disclosure control as any query.
    pub async fn agency_overlap(
        &self,
        who: &PeerIdentity,
        request: &AgencyOverlapRequest,
    ) -> Result<AgencyOverlapResponse, QueryError> {
        self.roles(who)?;
        let reference = match request.reference_date.as_str() {
            "" => time::OffsetDateTime::now_utc().date(),
            text => Date::parse(text, &time::format_description::well_known::Iso8601::DATE)
                .map_err(|_| QueryError::invalid("reference_date must be YYYY-MM-DD"))?,
        };
        let text = format!(
            "reference_date: {reference}\nrows: {{ age_bands: {OVERLAP_AGE_BANDS:?} }}\ncolumns: agency_overlap"
        );
        let asked = &Asked {
            query: parse(&text)?.0,
            text,
            reference,
        };
        let table = self
            .at_one_generation(|view| async move {
                self.release_table(who, "agency_overlap", asked, &view)
                    .await
            })
            .await?;
        Ok(AgencyOverlapResponse {
            reference_date: table.reference_date,
            columns: table.columns,
            rows: table
                .rows
                .into_iter()
                .map(|row| OverlapRow {
                    age_band: row.label,
                    cells: row.cells,
                })
                .collect(),
            disclosure_note: table.disclosure_note,
        })
    }
}

/// The gRPC edge: who asks (from the certificate), and each domain error
/// as its status.
#[tonic::async_trait]
impl Query for QueryService {
    async fn counts(
        &self,
        request: Request<CountsRequest>,
    ) -> Result<Response<CountsResponse>, Status> {
        let identity = peer::identity(&request)?;
        Ok(Response::new(self.counts(&identity).await?))
    }

    async fn agency_overlap(
        &self,
        request: Request<AgencyOverlapRequest>,
    ) -> Result<Response<AgencyOverlapResponse>, Status> {
        let identity = peer::identity(&request)?;
        Ok(Response::new(
            self.agency_overlap(&identity, request.get_ref()).await?,
        ))
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

    async fn vocabulary(
        &self,
        request: Request<VocabularyRequest>,
    ) -> Result<Response<VocabularyResponse>, Status> {
        let identity = peer::identity(&request)?;
        Ok(Response::new(self.vocabulary(&identity)?))
    }
}

/// A query document as every part of its answer works it out.
fn asked(text: &str) -> Result<Asked, QueryError> {
    let (query, reference) = parse(text)?;
    Ok(Asked {
        text: text.to_owned(),
        query,
        reference,
    })
}

/// A query document and the day it counts at (today unless it says).
fn parse(text: &str) -> Result<(AnalystQuery, Date), QueryError> {
    let query =
        AnalystQuery::parse(text).map_err(|e| QueryError::invalid(format!("the query: {e}")))?;
    let reference = query
        .reference_date
        .unwrap_or_else(|| time::OffsetDateTime::now_utc().date());
    Ok((query, reference))
}

/// Who asked, as the audit log names them.
fn actor(who: &PeerIdentity) -> String {
    match who {
        PeerIdentity::Analyst(name) => format!("analyst:{name}"),
        PeerIdentity::Organisation(code) => code.to_string(),
        PeerIdentity::Gateway(name) => format!("gateway:{name}"),
    }
}

impl QueryService {
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
    ) -> Result<(), QueryError> {
        crate::metrics::query(query, cells_suppressed as u64);
        let record = self.audit_record(who, query, request, disclosure, cells_released);
        self.storage.append_audit(&record).await?;
        Ok(())
    }

    /// The audit entry of a query: who, what kind, the request's digest
    /// (never its text), the disclosure applied and the cells released.
    fn audit_record<M: prost::Message>(
        &self,
        who: &PeerIdentity,
        query: &str,
        request: &M,
        disclosure: &str,
        cells_released: usize,
    ) -> AuditRecord {
        let actor = actor(who);
        let digest = hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            &[query.as_bytes(), b"\0", &request.encode_to_vec()].concat(),
        ));
        tracing::info!(%actor, %query, "query answered");
        AuditRecord::query(&actor, query, &digest, disclosure, cells_released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{NewBatch, NewEvent, NewRecord};

    fn batch(id: &str, people: std::ops::Range<usize>) -> NewBatch {
        NewBatch {
            snapshot: None,
            organisation: "E08000099".to_owned(),
            batch_id: id.to_owned(),
            dataset: "cin".to_owned(),
            sequence: 1,
            agreement: joinery_policies::AgreementRef::new("a", 1),
            records: people
                .map(|i| NewRecord {
                    person_id: format!("person-{i}"),
                    record_key: format!("record-{i}"),
                    source_row: i as u64,
                    local_pseudonym: format!("local-{i}"),
                    nhs_pseudonym: None,
                    link_method: crate::rekey::LinkMethod::Unlinked,
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
        let text = include_str!("../../../policies/examples/minimal.yaml");
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
            LiveAgreements::fixed(crate::agreements::Agreements::from_verified(vec![signed])),
            Rekeyer::new(&key),
            Source::new(&crate::config::Answering::Whole).unwrap(),
        )
    }

    /// Every person is in exactly one shard, read whole or as changes, and
    /// the shards' true tables add up to the whole population's: what a
    /// gateway answering from shards releases is what one holding everyone
    /// would.
    #[tokio::test(flavor = "multi_thread")]
    async fn shards_partition_the_population_and_their_tables_add_up() {
        use crate::analytics::{Interner, Shard, Tabulation, tabulate};
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&Storage::sqlite_url(dir.path()))
            .await
            .unwrap();
        let varied = |id: &str, people: std::ops::Range<usize>| {
            let mut varied = batch(id, people.clone());
            for (record, i) in varied.records.iter_mut().zip(people) {
                record.sex = Some(["female", "male"][i % 2].to_owned());
                record.birth_month = Some(format!("{}-04", 2004 + i % 20));
            }
            varied
        };
        storage.commit_batch(varied("b1", 0..300)).await.unwrap();
        let query = AnalystQuery::parse(
            "rows: sex\ncolumns: segment\nmeasure: { events: { event: referral } }\n",
        )
        .unwrap();
        let reference = Date::from_calendar_date(2026, time::Month::June, 30).unwrap();
        let labels = Labels::default();
        let whole = storage
            .population(&mut Interner::default(), Shard::WHOLE, None)
            .await
            .unwrap();
        let nobody: &[std::sync::Arc<Person>] = &[];
        let mut sum: Tabulation = tabulate(&query, nobody, reference, &labels);
        let mut seen = HashSet::new();
        for index in 0..3 {
            let shard = Shard::new(index, 3).unwrap();
            let part = storage
                .population(&mut Interner::default(), shard, None)
                .await
                .unwrap();
            assert!(
                part.people.len() > 50,
                "shard {shard}: {}",
                part.people.len()
            );
            for person in &part.people {
                assert_eq!(person.key % 3, u64::from(index), "shard {shard}");
                assert!(seen.insert(person.key), "a person in two shards");
            }
            sum.add(&tabulate(&query, &part.people, reference, &labels))
                .unwrap();
        }
        let everyone: HashSet<u64> = whole.people.iter().map(|p| p.key).collect();
        assert_eq!(seen, everyone);
        assert_eq!(sum, tabulate(&query, &whole.people, reference, &labels));
        assert_eq!(sum.cohort_size, 300);

        // A delivery: each shard reads again only its own people.
        storage.commit_batch(varied("b2", 300..360)).await.unwrap();
        let mut changed = HashSet::new();
        for index in 0..3 {
            let shard = Shard::new(index, 3).unwrap();
            let changes = storage
                .population_changes(
                    whole.generation,
                    usize::MAX,
                    &mut Interner::default(),
                    shard,
                    None,
                )
                .await
                .unwrap()
                .expect("the change log reaches back");
            for person in &changes.people {
                assert_eq!(person.key % 3, u64::from(index), "shard {shard}");
                assert!(changed.insert(person.key));
            }
        }
        assert_eq!(changed.len(), 60);
    }

    /// The answer's total number of children (noisy and rounded).
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
            Some(joinery_proto::v1::cell::Value::Count(n)) => Some(n),
            _ => None,
        }
    }

    /// Whether a released total is `truth` to within the noise (five of
    /// its standard deviations, 5 each, and the rounding).
    fn near(total: Option<u64>, truth: u64) -> bool {
        total.is_some_and(|t| t.abs_diff(truth) <= 27)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn answers_come_from_memory_and_catch_up_after_a_background_update() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&Storage::sqlite_url(dir.path()))
            .await
            .unwrap();
        storage.commit_batch(batch("b1", 0..40)).await.unwrap();
        let service = service(&storage);
        let first = total(&service).await;
        assert!(
            near(first, 40),
            "the first answer loads the data: {first:?}"
        );
        storage.commit_batch(batch("b2", 40..160)).await.unwrap();
        // The next answer comes from memory, while the new data loads: the
        // same question of the same data, so the same release.
        assert_eq!(total(&service).await, first);
        let mut caught_up = false;
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if near(total(&service).await, 160) {
                caught_up = true;
                break;
            }
        }
        assert!(caught_up, "the update read the new batch in");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_question_is_released_once_paid_for_and_refused_when_the_budget_is_spent() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&Storage::sqlite_url(dir.path()))
            .await
            .unwrap();
        storage.commit_batch(batch("b1", 0..60)).await.unwrap();
        let service = service(&storage);
        let ask = |who: &str, query: &str| {
            let (service, who, query) = (
                &service,
                PeerIdentity::Analyst(who.into()),
                query.to_owned(),
            );
            async move { service.answer(&who, &RunRequest { query }).await }
        };
        let first = ask("a", "rows: sex").await.unwrap();
        let spent = storage.privacy_spent("minimal-example").await.unwrap();
        assert!(spent > 0, "a new release spends from the budget");
        // Asked again, by another analyst: the same answer, noise and all,
        // and nothing more spent.
        for who in ["a", "r", "a"] {
            assert_eq!(ask(who, "rows: sex").await.unwrap(), first);
        }
        assert_eq!(
            storage.privacy_spent("minimal-example").await.unwrap(),
            spent
        );
        // New questions spend until the next would pass the budget, which
        // is then refused for everyone, on the ledger alone, and audited.
        let budget = service.budgets(time::OffsetDateTime::now_utc())[0].1;
        let mut asked = 0;
        let refusal = loop {
            match ask(
                "a",
                &format!(
                    "rows: sex\ncohort: {{ age: {{ from: 0, to: {} }} }}",
                    20 + asked
                ),
            )
            .await
            {
                Ok(_) => asked += 1,
                Err(refused) => break Status::from(refused),
            }
            assert!(asked < 2000, "the budget never ran out");
        };
        assert_eq!(refusal.code(), tonic::Code::ResourceExhausted);
        assert!(
            refusal
                .message()
                .contains("privacy budget of agreement minimal-example"),
            "{}",
            refusal.message()
        );
        let used = storage.privacy_spent("minimal-example").await.unwrap();
        assert!(
            used <= budget && used + spent > budget,
            "{used} of {budget}"
        );
        assert!(
            asked >= 50,
            "the default budget allows dozens of one-way tables: {asked}"
        );
        // Questions already answered still are; new ones are refused to
        // every analyst.
        assert_eq!(ask("r", "rows: sex").await.unwrap(), first);
        let other = ask("r", "rows: segment")
            .await
            .map_err(Status::from)
            .unwrap_err();
        assert_eq!(other.code(), tonic::Code::ResourceExhausted);
        let refused = storage
            .audit_entries(0, u32::MAX)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| {
                e.record
                    .detail
                    .contains("privacy budget of agreement minimal-example is spent")
            })
            .count();
        assert_eq!(refused, 2, "both refusals are in the audit log");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn roles_decide_who_sees_tables_and_who_sees_rows() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&Storage::sqlite_url(dir.path()))
            .await
            .unwrap();
        storage.commit_batch(batch("b1", 0..20)).await.unwrap();
        // Five more people the agreement's datasets do not hold.
        let mut outside = batch("b2", 20..25);
        outside.organisation = "RX9".to_owned();
        outside.dataset = "camhs".to_owned();
        storage.commit_batch(outside).await.unwrap();
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
        let err = service
            .answer(&outsider, &run)
            .await
            .map_err(Status::from)
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("holds no role"), "{}", err.message());
        let agency = PeerIdentity::Organisation("E08000099".parse().unwrap());
        assert_eq!(
            service
                .answer(&agency, &run)
                .await
                .map_err(Status::from)
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
        assert!(service.answer(&a, &run).await.is_ok());
        assert!(
            service.answer(&r, &run).await.is_ok(),
            "row-level includes tables"
        );
        let err = service
            .extract(&a, &extract)
            .await
            .map_err(Status::from)
            .unwrap_err();
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
            service
                .extract(&r, &other)
                .await
                .map_err(Status::from)
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
        // Re-identification for direct care: not under this agreement, and
        // never for an analyst.
        let reidentify = ReidentifyRequest {
            query: "rows: sex".to_owned(),
            candidates: vec![vec![0; 32]],
            agreement: String::new(),
        };
        let err = service
            .reidentify(&agency, &reidentify)
            .await
            .map_err(Status::from)
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message().contains("reidentify_for_direct_care"),
            "{}",
            err.message()
        );
        let err = service
            .reidentify(&r, &reidentify)
            .await
            .map_err(Status::from)
            .unwrap_err();
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
