//! Privacy-preserving record linkage.
//!
//! The agent turns a person's identifying fields into keyed encodings
//! ([`encode`]): one Bloom filter per field (q-grams hashed under a key
//! derived from the agreement's linkage key, optionally salted with a stable
//! attribute such as the birth year; a nickname also carries its full
//! forms' q-grams, [`nicknames`]) and keyed blocking keys. The gateway never
//! sees a name or a date: it compares filters with the Dice coefficient
//! ([`bloom`]), only within blocks that share a key ([`blocking`], which
//! splits a block too large to walk whole) ([`matcher`]), weighs the
//! evidence of each field with a Fellegi–Sunter model whose m and u
//! probabilities are estimated by EM ([`score`]) — over entities held flat
//! ([`entities`]), which a gateway keeps so that a later run compares only
//! the pairs new entities change, with the result of comparing them all —
//! and groups records into
//! people without ever joining two records with different NHS pseudonyms or
//! two records of one organisation ([`cluster`]). The gateway moves each
//! stored filter's bits by a permutation under its own key ([`permute`]), so
//! a stored filter matches nothing an agency can compute alone; blocking
//! keys may include phonetic codes ([`soundex`]), keyed before they leave
//! the agent; and the fitted model estimates its own wrong and missed links
//! per organisation pair, without labels ([`quality`]).
//!
//! Parameters ([`params`]) are versioned and belong to the data-sharing
//! agreement: encodings made under other parameters or other keys do not match.
//!
//! Invariants: no plaintext identifier reaches the gateway side of this
//! crate (the matcher sees filters and keyed blocking keys only); a change
//! of encoding or blocking is a new parameters version; a pair is compared
//! only across organisations, and a person never holds two NHS pseudonyms
//! or two records of one organisation; the only randomness is the fixed
//! [`sequence`] (samples and test data), never an unseeded generator.

pub mod blocking;
pub mod bloom;
pub mod cluster;
pub mod encode;
pub mod entities;
pub mod matcher;
pub mod nicknames;
pub mod params;
pub mod permute;
pub mod quality;
pub mod score;
pub mod sequence;
pub mod soundex;

pub use encode::{Encoder, Encoding, Identity};
pub use entities::Entity;
pub use matcher::{LinkResult, link};
pub use params::LinkageParams;
