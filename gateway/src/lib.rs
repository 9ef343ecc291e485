//! The Joinery gateway: the central service agencies deliver to.
//!
//! Data flow: [`listener`] accepts a TCP connection and completes a TLS 1.3
//! handshake with a required client certificate; [`peer`] reads who it is;
//! [`ingest`] checks each batch against the signed agreement it is sent under
//! ([`agreements`]), [`rekey`] replaces the agents' pseudonyms with
//! the gateway's own and links records exactly on the NHS pseudonym, and
//! [`storage`] (the only module that speaks SQL) commits it once before the
//! ack goes back. [`retention`] deletes what the agreements no longer allow
//! the gateway to keep. [`query`] (gRPC) and [`http`] (JSON) answer analysts
//! through [`analytics`] and [`disclosure`].
//! [`server`] wires it together; [`metrics`] names what is measured.
//!
//! Around that path: [`config`] is the configuration, built once;
//! [`tls_reload`] serves new certificates, keys and revocation lists
//! without a restart; [`background`] supervises the periodic work:
//! [`linker`] (fuzzy linkage into the person spine), [`retention`] and the
//! signed checkpoints of [`audit`], the hash-chained record of every
//! delivery, refusal, agreement load, deletion and query;
//! [`identifiability`] measures how many stored records their
//! quasi-identifiers single out; [`rotation`] compares the people of two
//! stores after a key rotation.
//!
//! [`keyholder`] is another party's service on the same listener: an
//! independent keyholder through whom agents make NHS-number pseudonyms
//! obliviously (`joinery keyholder serve`).
//!
//! Invariants: only [`storage`] speaks SQL; every person-level table is keyed
//! by person first; every number an analyst sees has passed [`disclosure`];
//! an ack means committed; no log, error, trace or metric carries an
//! identifier (records arrive pseudonymised, and problems are named by batch,
//! row number and field).

#![forbid(unsafe_code)]

pub mod agreements;
pub mod analytics;
pub mod audit;
pub mod background;
pub mod config;
pub mod disclosure;
pub mod http;
pub mod identifiability;
pub mod ingest;
pub mod keyholder;
pub mod linker;
pub mod listener;
pub mod metrics;
pub mod peer;
pub mod query;
pub mod rekey;
pub mod retention;
pub mod rotation;
pub mod server;
pub mod storage;
pub mod tls_reload;

pub use config::{GatewayConfig, Limits};
pub use server::{Gateway, GatewayError};
