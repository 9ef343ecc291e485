//! Where an answer reads the linked population: the people this gateway
//! holds in memory, or — where the population is sharded over several
//! gateways — every shard's part, asked of the gateways that hold them
//! ([`super::shards`]) and added up here. Either way an answer works out
//! its true table through a [`View`] at one data generation, and
//! disclosure control sees only the whole.

use std::collections::HashMap;

use joinery_crypto::tls::TlsError;

use super::QueryError;
use super::asked::{Asked, Within};
use super::held::{Held, Loaded};
use super::shards::Shards;
use crate::analytics::model::Breakdown;
use crate::analytics::{Labels, MemberRow, Shard, Tabulation};
use crate::config::Answering;
use crate::storage::{SharedSnapshot, Storage};

/// Which people a gateway's answers read, chosen at start-up.
pub struct Source(Inner);

enum Inner {
    /// Everyone, held here: this gateway answers analysts itself.
    Whole(Held),
    /// One shard's people, held here for the gateways that answer from
    /// shards; this gateway answers no analyst itself.
    Shard(Held),
    /// Nobody held here: the gateways holding each shard send their parts.
    Shards(Shards),
}

impl Source {
    /// What a gateway configured with `answering` holds: everyone, one
    /// shard, or (answering from shards) nobody, with the shards reached
    /// through the gateway certificate it names.
    pub fn new(answering: &Answering) -> Result<Self, TlsError> {
        Ok(Self(match answering {
            Answering::Whole => Inner::Whole(Held::new(Shard::WHOLE)),
            Answering::Shard(shard) => Inner::Shard(Held::new(*shard)),
            Answering::FromShards { addresses, tls } => Inner::Shards(Shards::new(addresses, tls)?),
        }))
    }

    /// One answer's view of the population: what this gateway holds (as
    /// held: it may be catching up), or every shard at the data's current
    /// generation, held still in a snapshot the shards read in.
    pub(super) async fn view(&self, storage: &Storage) -> Result<View<'_>, QueryError> {
        match &self.0 {
            Inner::Whole(held) => Ok(View::Held(held.get(storage).await?)),
            Inner::Shard(held) => Err(QueryError::NotAnswering(format!(
                "this gateway holds shard {} of the population, for the gateways that answer from shards; ask one of those",
                held.shard()
            ))),
            Inner::Shards(shards) => Ok(View::Shards {
                shards,
                at: storage.shared_snapshot().await?,
            }),
        }
    }

    /// The people this gateway holds for the gateways that answer from
    /// shards; `None` unless it holds a shard.
    pub(super) fn shard_held(&self) -> Option<&Held> {
        match &self.0 {
            Inner::Shard(held) => Some(held),
            Inner::Whole(_) | Inner::Shards(_) => None,
        }
    }
}

/// The population one answer reads, at one data generation.
pub(super) enum View<'s> {
    /// The people this gateway holds.
    Held(Loaded),
    /// Every shard, each asked to answer at the generation `at` holds
    /// still (and open, for as long as the answer takes).
    Shards {
        shards: &'s Shards,
        at: SharedSnapshot,
    },
}

impl View<'_> {
    /// The data generation the answer reflects.
    pub fn generation(&self) -> i64 {
        match self {
            Self::Held(loaded) => loaded.generation,
            Self::Shards { at, .. } => at.generation,
        }
    }

    /// Whether newer data has arrived and is being read in. The shards are
    /// always asked for the data's current generation.
    pub fn newer_data_pending(&self) -> bool {
        match self {
            Self::Held(loaded) => loaded.newer_data_pending,
            Self::Shards { .. } => false,
        }
    }

    /// How many people hold each recorded value of `breakdown` (the rows'
    /// or, with `columns`, the columns'); `None` for a fixed breakdown.
    pub async fn label_counts(
        &self,
        asked: &Asked,
        columns: bool,
    ) -> Result<Option<HashMap<String, u64>>, QueryError> {
        let breakdown: &Breakdown = match columns {
            true => &asked.query.columns,
            false => &asked.query.rows,
        };
        match self {
            Self::Held(loaded) => Ok(crate::analytics::population_labels(
                &asked.query,
                breakdown,
                loaded.population.people(),
                asked.reference,
            )),
            Self::Shards { .. } if !breakdown.is_recorded() => Ok(None),
            Self::Shards { shards, at } => shards.label_counts(asked, columns, at).await.map(Some),
        }
    }

    /// The true table of the question, recorded values outside `labels`
    /// counted as other.
    pub async fn tabulate(&self, asked: &Asked, labels: &Labels) -> Result<Tabulation, QueryError> {
        match self {
            Self::Held(loaded) => Ok(crate::analytics::tabulate(
                &asked.query,
                loaded.population.people(),
                asked.reference,
                labels,
            )),
            Self::Shards { shards, at } => shards.tabulate(asked, labels, at).await,
        }
    }

    /// The cohort's members as `within`'s agreement sees the population.
    pub async fn members(
        &self,
        asked: &Asked,
        within: &Within,
    ) -> Result<Vec<MemberRow>, QueryError> {
        match self {
            Self::Held(loaded) => Ok(crate::analytics::members(
                &asked.query,
                &within.people(loaded.population.people()),
                asked.reference,
            )),
            Self::Shards { shards, at } => shards.members(asked, &within.agreement, at).await,
        }
    }
}
