//! `joinery.v1.Shard`, both ends. A gateway holding one shard of the
//! population (`gateway serve --holds-shard I/N`) answers an answering
//! gateway's requests for its part of a question: true counts, members,
//! never released as they stand. The answering gateway
//! (`--answer-from-shards`, [`Shards`]) asks every shard at one data
//! generation, checks it heard from each exactly once, and adds the parts
//! up; disclosure control, the privacy budget and the audit log then see
//! only the whole, as on a gateway holding everyone.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use joinery_crypto::identity::PeerIdentity;
use joinery_crypto::tls::{TlsError, TlsFiles};
use joinery_proto::channel::{in_words, reason};
use joinery_proto::v1::shard_client::ShardClient;
use joinery_proto::v1::shard_server::Shard as ShardRpc;
use joinery_proto::v1::{
    SafeLabels, ShardCell, ShardLabelCounts, ShardMember, ShardMembers, ShardOf, ShardRequest,
    ShardTable,
};
use time::Date;
use tokio::sync::OnceCell;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::held::{Held, Loaded};
use super::view::{Asked, View};
use super::{QueryError, QueryService};
use crate::analytics::{CellData, Labels, MemberRow, Person, Tabulation};
use crate::peer;
use crate::storage::Storage;

/// How long a shard may take to bring its people up to the generation
/// asked for (its first load reads every record).
const CATCH_UP: Duration = Duration::from_secs(300);
/// How often a shard catching up looks again.
const CATCH_UP_POLL: Duration = Duration::from_millis(25);
/// The largest part a shard may send: a row-level extract of a large
/// cohort is one row per member.
const MAX_PART_BYTES: usize = 1 << 30;

/// The gateways holding each shard, as an answering gateway reaches them.
pub(super) struct Shards {
    peers: Vec<Peer>,
}

/// One shard's gateway.
struct Peer {
    /// `host:port`; the host is the name its certificate is checked against.
    address: String,
    tls: rustls::ClientConfig,
    /// Opened on first use, then kept (it reconnects by itself).
    channel: OnceCell<Channel>,
}

impl Shards {
    /// The gateways at `addresses` (`host:port`, one per shard), reached
    /// over mutual TLS with the gateway certificate in `tls`.
    pub(super) fn new(addresses: &[String], tls: &TlsFiles) -> Result<Self, TlsError> {
        let config = joinery_crypto::tls::client_config(tls)?;
        Ok(Self {
            peers: addresses
                .iter()
                .map(|address| Peer {
                    address: address.clone(),
                    tls: config.clone(),
                    channel: OnceCell::new(),
                })
                .collect(),
        })
    }

    /// How many people of every shard hold each recorded value of the
    /// rows' (or, with `columns`, the columns') breakdown.
    pub(super) async fn label_counts(
        &self,
        asked: &Asked,
        columns: bool,
        generation: i64,
    ) -> Result<HashMap<String, u64>, QueryError> {
        let request = ShardRequest {
            columns,
            ..request(asked, generation)
        };
        let parts = self
            .ask(generation, |mut shard| {
                let request = request.clone();
                async move { shard.label_counts(request).await }
            })
            .await?;
        let mut counts: HashMap<String, u64> = HashMap::new();
        for (_, part) in parts {
            for (label, n) in part.counts {
                *counts.entry(label).or_default() += n;
            }
        }
        Ok(counts)
    }

    /// The question's true table over every shard: an empty table of the
    /// question's own rows and columns, each shard's part added to it.
    pub(super) async fn tabulate(
        &self,
        asked: &Asked,
        labels: &Labels,
        generation: i64,
    ) -> Result<Tabulation, QueryError> {
        let listed = |labels: &Option<std::collections::BTreeSet<String>>| {
            labels.as_ref().map(|l| SafeLabels {
                labels: l.iter().cloned().collect(),
            })
        };
        let request = ShardRequest {
            row_labels: listed(&labels.rows),
            column_labels: listed(&labels.columns),
            ..request(asked, generation)
        };
        let parts = self
            .ask(generation, |mut shard| {
                let request = request.clone();
                async move { shard.tabulate(request).await }
            })
            .await?;
        let nobody: &[Arc<Person>] = &[];
        let mut table = crate::analytics::tabulate(&asked.query, nobody, asked.reference, labels);
        for (peer, part) in parts {
            tabulation(part, &table)
                .and_then(|part| table.add(&part))
                .map_err(|e| QueryError::Shards(format!("the shard at {}: {e}", peer.address)))?;
        }
        Ok(table)
    }

    /// The cohort's members over every shard, as `agreement` sees them.
    pub(super) async fn members(
        &self,
        asked: &Asked,
        agreement: &str,
        generation: i64,
    ) -> Result<Vec<MemberRow>, QueryError> {
        let request = ShardRequest {
            agreement: agreement.to_owned(),
            ..request(asked, generation)
        };
        let parts = self
            .ask(generation, |mut shard| {
                let request = request.clone();
                async move { shard.members(request).await }
            })
            .await?;
        Ok(parts
            .into_iter()
            .flat_map(|(_, part)| part.members)
            .map(|m| MemberRow {
                key: m.key,
                row: m.row,
                column: m.column,
                value: m.value,
            })
            .collect())
    }

    /// Asks every shard at once; each part with the shard it came from.
    /// Refused unless every shard answered, each once, at `generation`.
    async fn ask<T, F, Fut>(&self, generation: i64, call: F) -> Result<Vec<(&Peer, T)>, QueryError>
    where
        T: Part,
        F: Fn(ShardClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let asks = self.peers.iter().map(|peer| {
            let call = &call;
            async move {
                let part = call(peer.client().await?)
                    .await
                    .map_err(|status| peer.failed(&status))?;
                Ok::<_, QueryError>((peer, part.into_inner()))
            }
        });
        let parts = futures::future::try_join_all(asks).await?;
        let count = self.peers.len();
        let mut seen = vec![false; count];
        for (peer, part) in &parts {
            let Some(of) = part.shard() else {
                return Err(QueryError::Shards(format!(
                    "the gateway at {} did not say which shard it holds",
                    peer.address
                )));
            };
            let index = of.index as usize;
            if of.count as usize != count
                || index >= count
                || std::mem::replace(&mut seen[index], true)
            {
                return Err(QueryError::Shards(format!(
                    "the gateway at {} holds shard {}/{}, where {count} gateways are configured, one for each shard: give each shard gateway its own --holds-shard I/{count}",
                    peer.address, of.index, of.count
                )));
            }
            if of.generation != generation {
                return Err(QueryError::MovedOn);
            }
        }
        Ok(parts)
    }
}

impl Peer {
    async fn client(&self) -> Result<ShardClient<Channel>, QueryError> {
        let host = self
            .address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(host, _)| host);
        let channel = self
            .channel
            .get_or_try_init(|| {
                joinery_proto::channel::connect(&self.address, host, self.tls.clone())
            })
            .await
            .map_err(|e| QueryError::Shards(format!("the shard at {}: {e}", self.address)))?;
        Ok(ShardClient::new(channel.clone()).max_decoding_message_size(MAX_PART_BYTES))
    }

    /// What a shard's refusal means for the answer: asked again at a newer
    /// generation when the shard has moved past it, otherwise unanswered.
    fn failed(&self, status: &Status) -> QueryError {
        match status.code() {
            tonic::Code::Aborted => QueryError::MovedOn,
            code => QueryError::Shards(format!(
                "the shard at {}: {}: {}",
                self.address,
                in_words(code),
                reason(status)
            )),
        }
    }
}

/// A request for `asked` at `generation`.
fn request(asked: &Asked, generation: i64) -> ShardRequest {
    ShardRequest {
        query: asked.text.clone(),
        reference_date: asked.reference.to_string(),
        generation,
        ..ShardRequest::default()
    }
}

/// A part that says which shard made it.
trait Part {
    fn shard(&self) -> Option<&ShardOf>;
}

impl Part for ShardLabelCounts {
    fn shard(&self) -> Option<&ShardOf> {
        self.shard.as_ref()
    }
}

impl Part for ShardTable {
    fn shard(&self) -> Option<&ShardOf> {
        self.shard.as_ref()
    }
}

impl Part for ShardMembers {
    fn shard(&self) -> Option<&ShardOf> {
        self.shard.as_ref()
    }
}

/// A shard's table as a [`Tabulation`] shaped like `whole`.
fn tabulation(part: ShardTable, whole: &Tabulation) -> Result<Tabulation, String> {
    let width = part.columns.len();
    if part.cells.len() != part.rows.len() * width {
        return Err(format!(
            "{} cells for {} rows and {width} columns",
            part.cells.len(),
            part.rows.len()
        ));
    }
    let mut cells = part.cells.into_iter().map(|c| CellData {
        people: c.people,
        hits: c.hits,
        values: c.values,
    });
    Ok(Tabulation {
        cells: (0..part.rows.len())
            .map(|_| cells.by_ref().take(width).collect())
            .collect(),
        rows: part.rows,
        columns: part.columns,
        cohort_size: part.cohort_size,
        periods: whole.periods,
        period_axis: whole.period_axis,
    })
}

/// The people `held` holds, once they reflect data generation
/// `generation`: ABORTED if they are already past it (the answering
/// gateway asks every shard again at the newer one).
async fn at_generation(held: &Held, storage: &Storage, generation: i64) -> Result<Loaded, Status> {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let loaded = held.get(storage).await.map_err(QueryError::from)?;
        if loaded.generation > generation {
            return Err(Status::aborted(format!(
                "this shard holds data generation {}, past the {generation} asked for",
                loaded.generation
            )));
        }
        if loaded.generation == generation {
            return Ok(loaded);
        }
        if Instant::now() > deadline {
            return Err(Status::unavailable(format!(
                "this shard did not reach data generation {generation} within {} s",
                CATCH_UP.as_secs()
            )));
        }
        tokio::time::sleep(CATCH_UP_POLL).await;
    }
}

impl QueryService {
    /// A shard request's question, and this shard's people at its
    /// generation: for a gateway certificate only, on a gateway holding a
    /// shard.
    async fn shard_part(
        &self,
        request: &Request<ShardRequest>,
    ) -> Result<(View<'_>, Asked, ShardOf), Status> {
        match peer::identity(request)? {
            PeerIdentity::Gateway(_) => {}
            other => {
                return Err(Status::permission_denied(format!(
                    "{other} may not ask for a shard's part of an answer: true counts leave a shard only for a gateway that answers from shards (urn:joinery:gateway:NAME), which applies disclosure control to their sum"
                )));
            }
        }
        let Some((held, shard)) = self.population.shard_held() else {
            return Err(Status::failed_precondition(
                "this gateway holds no shard of the population (gateway serve --holds-shard I/N)",
            ));
        };
        let asked = request.get_ref();
        let (query, _) = super::parse(&asked.query)?;
        let reference = Date::parse(
            &asked.reference_date,
            &time::format_description::well_known::Iso8601::DATE,
        )
        .map_err(|_| Status::invalid_argument("reference_date must be YYYY-MM-DD"))?;
        let loaded = at_generation(held, &self.storage, asked.generation).await?;
        let of = ShardOf {
            index: shard.index,
            count: shard.count,
            generation: loaded.generation,
        };
        let asked = Asked {
            text: asked.query.clone(),
            query,
            reference,
        };
        Ok((View::Held(loaded), asked, of))
    }
}

/// The shard's end: each part worked out as a gateway holding everyone
/// would, over this shard's people.
#[tonic::async_trait]
impl ShardRpc for QueryService {
    async fn label_counts(
        &self,
        request: Request<ShardRequest>,
    ) -> Result<Response<ShardLabelCounts>, Status> {
        let (view, asked, shard) = self.shard_part(&request).await?;
        let counts = view
            .label_counts(&asked, request.get_ref().columns)
            .await?
            .unwrap_or_default();
        Ok(Response::new(ShardLabelCounts {
            shard: Some(shard),
            counts: counts.into_iter().collect(),
        }))
    }

    async fn tabulate(
        &self,
        request: Request<ShardRequest>,
    ) -> Result<Response<ShardTable>, Status> {
        let (view, asked, shard) = self.shard_part(&request).await?;
        let listed = |labels: &Option<SafeLabels>| {
            labels.as_ref().map(|l| l.labels.iter().cloned().collect())
        };
        let labels = Labels {
            rows: listed(&request.get_ref().row_labels),
            columns: listed(&request.get_ref().column_labels),
        };
        let table = view.tabulate(&asked, &labels).await?;
        Ok(Response::new(ShardTable {
            shard: Some(shard),
            cells: table
                .cells
                .into_iter()
                .flatten()
                .map(|c| ShardCell {
                    people: c.people,
                    hits: c.hits,
                    values: c.values,
                })
                .collect(),
            rows: table.rows,
            columns: table.columns,
            cohort_size: table.cohort_size,
        }))
    }

    async fn members(
        &self,
        request: Request<ShardRequest>,
    ) -> Result<Response<ShardMembers>, Status> {
        let (view, asked, shard) = self.shard_part(&request).await?;
        let within = self.within(&request.get_ref().agreement)?;
        let members = view.members(&asked, &within).await?;
        Ok(Response::new(ShardMembers {
            shard: Some(shard),
            members: members
                .into_iter()
                .map(|m| ShardMember {
                    key: m.key,
                    row: m.row,
                    column: m.column,
                    value: m.value,
                })
                .collect(),
        }))
    }
}
