//! A shard's end of `joinery.v1.Shard`. A gateway holding one shard of
//! the population (`gateway serve --holds-shard I/N`) answers an answering
//! gateway's requests for its part of a question — true counts, members,
//! never released as they stand — working each out as a gateway holding
//! everyone would, over its own people, at the generation asked (caught
//! up to it in the snapshot the answering gateway shares: `Held::at`). The
//! answering gateway ([`super::shards`]) adds the parts up; disclosure
//! control, the privacy budget and the audit log then see only the whole.

use joinery_crypto::identity::PeerIdentity;
use joinery_proto::v1::shard_server::Shard as ShardRpc;
use joinery_proto::v1::{
    SafeLabels, ShardCell, ShardLabelCounts, ShardMember, ShardMembers, ShardOf, ShardRequest,
    ShardTable,
};
use time::Date;
use tonic::{Request, Response, Status};

use super::asked::Asked;
use super::view::View;
use super::{QueryError, QueryService};
use crate::analytics::Labels;
use crate::peer;
use crate::storage::SnapshotId;

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
        let Some(held) = self.population.shard_held() else {
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
        let shared = match asked.snapshot.as_str() {
            "" => None,
            id => Some(SnapshotId::parse(id).ok_or_else(|| {
                Status::invalid_argument("snapshot must be a PostgreSQL snapshot id")
            })?),
        };
        let loaded = held
            .at(&self.storage, asked.generation, shared.as_ref())
            .await
            .map_err(QueryError::from)?
            .ok_or_else(|| {
                Status::aborted(format!(
                    "this shard holds only data generations past the {} asked for",
                    asked.generation
                ))
            })?;
        let of = ShardOf {
            index: held.shard().index,
            count: held.shard().count,
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
