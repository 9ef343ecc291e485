//! The answering gateway's end of `joinery.v1.Shard`: [`Shards`] asks
//! every gateway holding a shard of the population (`--answer-from-shards`)
//! for its part of a question at one data generation — held still in a
//! snapshot the shards catch up in ([`SharedSnapshot`]) — checks it heard
//! from each exactly once at that generation, and adds the parts up.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use joinery_crypto::tls::{TlsError, TlsFiles};
use joinery_proto::channel::{in_words, reason};
use joinery_proto::v1::shard_client::ShardClient;
use joinery_proto::v1::{
    SafeLabels, ShardLabelCounts, ShardMembers, ShardOf, ShardRequest, ShardTable,
};
use tokio::sync::OnceCell;
use tonic::transport::Channel;
use tonic::{Response, Status};

use super::QueryError;
use super::asked::Asked;
use crate::analytics::{CellData, Labels, MemberRow, Person, Tabulation};
use crate::storage::SharedSnapshot;
use crate::tls_reload::Reloaded;

/// The largest part a shard may send: a row-level extract of a large
/// cohort is one row per member.
const MAX_PART_BYTES: usize = 1 << 30;

/// The gateways holding each shard, as an answering gateway reaches them:
/// connected afresh with its certificate files whenever they change, so a
/// renewed or rotated gateway certificate is presented without a restart.
pub(super) struct Shards {
    peers: Reloaded<Arc<[Peer]>>,
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
        let addresses = addresses.to_vec();
        let peers = Reloaded::with(tls.clone(), move |files| {
            let config = joinery_crypto::tls::client_config(files)?;
            Ok(addresses
                .iter()
                .map(|address| Peer {
                    address: address.clone(),
                    tls: config.clone(),
                    channel: OnceCell::new(),
                })
                .collect())
        })?;
        Ok(Self { peers })
    }

    /// How many people of every shard hold each recorded value of the
    /// rows' (or, with `columns`, the columns') breakdown.
    pub(super) async fn label_counts(
        &self,
        asked: &Asked,
        columns: bool,
        at: &SharedSnapshot,
    ) -> Result<HashMap<String, u64>, QueryError> {
        let request = ShardRequest {
            columns,
            ..request(asked, at)
        };
        let parts = self
            .ask(request, |mut shard, request| async move {
                shard.label_counts(request).await
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
        at: &SharedSnapshot,
    ) -> Result<Tabulation, QueryError> {
        let listed = |labels: &Option<std::collections::BTreeSet<String>>| {
            labels.as_ref().map(|l| SafeLabels {
                labels: l.iter().cloned().collect(),
            })
        };
        let request = ShardRequest {
            row_labels: listed(&labels.rows),
            column_labels: listed(&labels.columns),
            ..request(asked, at)
        };
        let parts = self
            .ask(request, |mut shard, request| async move {
                shard.tabulate(request).await
            })
            .await?;
        let nobody: &[Arc<Person>] = &[];
        let mut table = crate::analytics::tabulate(&asked.query, nobody, asked.reference, labels);
        for (address, part) in parts {
            tabulation(part, &table)
                .and_then(|part| table.add(&part))
                .map_err(|e| QueryError::Shards(format!("the shard at {address}: {e}")))?;
        }
        Ok(table)
    }

    /// The cohort's members over every shard, as `agreement` sees them.
    pub(super) async fn members(
        &self,
        asked: &Asked,
        agreement: &str,
        at: &SharedSnapshot,
    ) -> Result<Vec<MemberRow>, QueryError> {
        let request = ShardRequest {
            agreement: agreement.to_owned(),
            ..request(asked, at)
        };
        let parts = self
            .ask(request, |mut shard, request| async move {
                shard.members(request).await
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

    /// Sends every shard `request` at once; each part with the address of
    /// the shard it came from. Refused unless every shard answered, each
    /// once, at the request's generation.
    async fn ask<T, F, Fut>(
        &self,
        request: ShardRequest,
        call: F,
    ) -> Result<Vec<(String, T)>, QueryError>
    where
        T: Part,
        F: Fn(ShardClient<Channel>, ShardRequest) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let generation = request.generation;
        let peers = self.peers.current();
        let asks = peers.iter().map(|peer| {
            let (call, request) = (&call, request.clone());
            async move {
                let part = call(peer.client().await?, request)
                    .await
                    .map_err(|status| peer.failed(&status))?;
                Ok::<_, QueryError>((peer.address.clone(), part.into_inner()))
            }
        });
        let asked = futures::future::try_join_all(asks)
            .await
            .and_then(|parts| every_shard_once(peers.len(), &parts, generation).map(|()| parts));
        crate::metrics::shard_ask(match &asked {
            Ok(_) => "answered",
            Err(QueryError::MovedOn) => "moved_on",
            Err(_) => "failed",
        });
        asked
    }
}

/// Whether `parts` came from every one of `count` shards exactly once,
/// all at `generation`.
fn every_shard_once<T: Part>(
    count: usize,
    parts: &[(String, T)],
    generation: i64,
) -> Result<(), QueryError> {
    let mut seen = vec![false; count];
    for (address, part) in parts {
        let Some(of) = part.shard() else {
            return Err(QueryError::Shards(format!(
                "the gateway at {address} did not say which shard it holds"
            )));
        };
        let index = of.index as usize;
        if of.count as usize != count || index >= count || std::mem::replace(&mut seen[index], true)
        {
            return Err(QueryError::Shards(format!(
                "the gateway at {address} holds shard {}/{}, where {count} gateways are configured, one for each shard: give each shard gateway its own --holds-shard I/{count}",
                of.index, of.count
            )));
        }
        if of.generation != generation {
            return Err(QueryError::MovedOn);
        }
    }
    Ok(())
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

/// A request for `asked` at the generation `at` holds, read in its
/// snapshot.
fn request(asked: &Asked, at: &SharedSnapshot) -> ShardRequest {
    ShardRequest {
        query: asked.text.clone(),
        reference_date: asked.reference.to_string(),
        generation: at.generation,
        snapshot: at
            .id
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default(),
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
