//! `joinery agent resolve`: re-identification for direct care, inside the
//! agency. The agent reads its own extracts, computes the agent-level
//! pseudonym of every local id (as it does when it sends them), and asks the
//! gateway which of them belong to a cohort (`joinery.v1.Query/Reidentify`,
//! allowed only where an agreement the agency is party to says so). The
//! gateway answers with a subset of what was sent — no other agency's
//! records or pseudonyms — and the agent maps it back to local ids, which
//! never leave the agency. Membership itself can rest on other agencies'
//! data (a child known to CAMHS): that is what the agreement's direct-care
//! permission allows.

use std::collections::HashMap;

use joinery_crypto::pseudonym::Pseudonym;
use joinery_proto::v1::ReidentifyRequest;
use joinery_proto::v1::query_client::QueryClient;

use crate::AgentConfig;
use crate::error::AgentError;
use crate::keys::ReleaseKeys;
use crate::release::Releaser;
use crate::row::RowOutcome;

/// Candidates per request (the gateway takes at most 100,000).
const PER_REQUEST: usize = 50_000;

/// What a resolution found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// The agreement that allowed it.
    pub agreement: String,
    /// The cohort in words.
    pub explanation: String,
    /// Distinct local ids read from the extracts.
    pub local_ids_read: usize,
    /// Rows that could not be read as a person (not checked).
    pub rows_quarantined: u64,
    /// This agency's local ids in the cohort, sorted.
    pub in_cohort: Vec<String>,
}

/// Resolves the cohort of `query` (a query document) to this agency's local
/// ids; `agreement` names the agreement when several allow it.
pub async fn resolve(
    config: &AgentConfig,
    query: &str,
    agreement: Option<&str>,
) -> Result<Resolved, AgentError> {
    let releaser = Releaser::new(&ReleaseKeys::load(config)?, None, None)?;
    let context = crate::source::ReadContext {
        today: time::OffsetDateTime::now_utc().date(),
        limits: config.limits,
    };
    let sources = config.sources.clone();
    let formats = config.registry.clone();
    let (by_pseudonym, rows_quarantined) = tokio::task::spawn_blocking(move || {
        let mut by_pseudonym: HashMap<Pseudonym, String> = HashMap::new();
        let mut quarantined = 0u64;
        for source in &sources {
            for mut part in crate::format::open(source, &formats, context)? {
                for row in part.rows() {
                    match row?.outcome {
                        RowOutcome::Valid { row, .. } => {
                            by_pseudonym
                                .entry(releaser.local_pseudonym(&row.local_id))
                                .or_insert(row.local_id);
                        }
                        RowOutcome::Quarantined(_) => quarantined += 1,
                    }
                }
            }
        }
        Ok::<_, AgentError>((by_pseudonym, quarantined))
    })
    .await
    .map_err(|e| AgentError::Reader(e.to_string()))??;

    let tls = joinery_crypto::tls::client_config(&config.tls_files())?;
    let channel =
        joinery_proto::channel::connect(&config.gateway.address, config.gateway.server_name(), tls)
            .await?;
    let mut client = QueryClient::new(channel);
    let candidates: Vec<&Pseudonym> = by_pseudonym.keys().collect();
    let mut resolved = Resolved {
        local_ids_read: by_pseudonym.len(),
        rows_quarantined,
        ..Resolved::default()
    };
    for chunk in candidates.chunks(PER_REQUEST) {
        let answer = client
            .reidentify(ReidentifyRequest {
                query: query.to_owned(),
                candidates: chunk.iter().map(|p| p.to_vec()).collect(),
                agreement: agreement.unwrap_or_default().to_owned(),
            })
            .await
            .map_err(|status| AgentError::Refused(status.message().to_owned()))?
            .into_inner();
        resolved.agreement = answer.agreement;
        resolved.explanation = answer.explanation;
        for member in answer.members {
            let local = <Pseudonym>::try_from(member.as_slice())
                .ok()
                .and_then(|p| by_pseudonym.get(&p));
            match local {
                Some(local) => resolved.in_cohort.push(local.clone()),
                None => {
                    return Err(AgentError::NotAllowed(
                        "the gateway answered with a pseudonym this agent did not send".to_owned(),
                    ));
                }
            }
        }
    }
    resolved.in_cohort.sort();
    Ok(resolved)
}
