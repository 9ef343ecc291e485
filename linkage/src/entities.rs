//! The entities a linkage run links, held flat: each one's organisation,
//! NHS pseudonym, blocking keys and filters (an entity's fields side by
//! side, with their popcounts) in a few arrays. A run's matcher reads them
//! ([`crate::matcher`]); a gateway keeps them between incremental runs and
//! appends what is new ([`Entities::push`]), so a run never re-reads what
//! it already holds.

use crate::bloom;
use crate::encode::{Encoding, Pseudonym};
use crate::params::{LinkageParams, Similarity};
use crate::score::StandIn;

/// One record to link: one organisation's one local id.
#[derive(Debug, Clone)]
pub struct Entity {
    pub organisation: u32,
    pub nhs: Option<Pseudonym>,
    pub encoding: Encoding,
}

/// Every entity of a run, in the order pushed (an entity's index is its
/// place here).
pub struct Entities {
    pub(crate) organisations: Vec<u32>,
    pub(crate) nhs: Vec<Option<Pseudonym>>,
    /// Each rule's key per entity (0 for none).
    pub(crate) keys: Vec<Vec<u64>>,
    pub(crate) filters: Filters,
    /// A number per entity that does not depend on the order entities were
    /// pushed in: ties between equally strong links are broken by it, so
    /// the same entities link alike whatever order they arrived in.
    pub(crate) tiebreaks: Vec<u64>,
}

impl Entities {
    pub fn new(params: &LinkageParams) -> Self {
        Self {
            organisations: Vec::new(),
            nhs: Vec::new(),
            keys: vec![Vec::new(); params.blocking.len()],
            filters: Filters::new(params),
            tiebreaks: Vec::new(),
        }
    }

    /// Entities numbered in order, each broken ties by its index.
    pub fn numbered(entities: Vec<Entity>, params: &LinkageParams) -> Self {
        let mut this = Self::new(params);
        for (i, e) in entities.into_iter().enumerate() {
            this.push(e, i as u64);
        }
        this
    }

    /// Appends an entity (its encoding copied in and let go). `tiebreak`
    /// should be the same for the same entity in every run (a hash of its
    /// identity at the gateway).
    pub fn push(&mut self, entity: Entity, tiebreak: u64) {
        for (rule, keys) in self.keys.iter_mut().enumerate() {
            keys.push(match entity.encoding.blocks.get(rule).copied().flatten() {
                // A truncated HMAC: its first eight bytes are as good a key
                // (0 stands for none; a real key is 0 with odds 2^-64).
                Some(key) => u64::from_le_bytes(key[..8].try_into().expect("8 bytes")),
                None => 0,
            });
        }
        self.organisations.push(entity.organisation);
        self.nhs.push(entity.nhs);
        self.filters.push(&entity.encoding.filters);
        self.tiebreaks.push(tiebreak);
    }

    pub fn len(&self) -> usize {
        self.organisations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.organisations.is_empty()
    }

    /// Each entity's organisation.
    pub fn organisations(&self) -> &[u32] {
        &self.organisations
    }

    /// Each entity's NHS pseudonym, where it has one.
    pub fn nhs(&self) -> &[Option<Pseudonym>] {
        &self.nhs
    }

    /// Each entity's number for breaking ties.
    pub fn tiebreaks(&self) -> &[u64] {
        &self.tiebreaks
    }
}

/// Every entity's filters in one flat array, an entity's fields side by
/// side, with their popcounts.
pub(crate) struct Filters {
    /// Start of each field within an entity's words, and the end.
    pub offsets: Vec<usize>,
    pub stride: usize,
    pub data: Vec<u64>,
    pub ones: Vec<u32>,
    /// Fields that stand in for others (applied to every pattern).
    pub stand_ins: Vec<StandIn>,
    /// How a field's level is read from two filters.
    pub similarity: Similarity,
}

impl Filters {
    fn new(params: &LinkageParams) -> Self {
        let fields = params.fields.len();
        let offsets: Vec<usize> = (0..fields)
            .map(|f| params.field_words(f).start)
            .chain([params.words()])
            .collect();
        Self {
            stride: offsets[fields],
            offsets,
            data: Vec::new(),
            ones: Vec::new(),
            stand_ins: StandIn::of(params),
            similarity: params.similarity(),
        }
    }

    /// Appends one entity's filters; filters of the wrong length are
    /// treated as missing (all bits clear).
    fn push(&mut self, filters: &[u64]) {
        if filters.len() == self.stride {
            self.data.extend_from_slice(filters);
        } else {
            self.data.extend(std::iter::repeat_n(0, self.stride));
        }
        let row = &self.data[self.data.len() - self.stride..];
        let offsets = &self.offsets;
        self.ones
            .extend((0..offsets.len() - 1).map(|f| bloom::ones(&row[offsets[f]..offsets[f + 1]])));
    }

    pub fn fields(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Entity `i`'s words.
    pub fn row(&self, i: usize) -> &[u64] {
        &self.data[i * self.stride..(i + 1) * self.stride]
    }
}
