//! The Joinery agent: runs on an agency's premises, reads its extracts, and
//! delivers pseudonymised records to the gateway.
//!
//! Data flow for one run ([`run()`]): [`config`] names the sources; each
//! [`source`] reads rows and [`mapping`] binds its columns to canonical fields;
//! [`row`] validates them with [`validate`] (NHS number Modulus 11, postcodes,
//! dates) and quarantines what cannot be used ([`quarantine`]); [`opt_out`]
//! withholds people on the National Data Opt-out list; [`release`] sends only
//! what the signed agreement allows, pseudonymised and coarsened as it says; [`batch`] groups records under
//! content-digest ids; [`uploader`] streams them over mutual TLS and counts a
//! batch delivered only when the gateway acknowledges its commit.
//!
//! Around that path: [`format`](mod@format) opens each configured source,
//! reading the national returns (SSDA903, CIN census, Annex A, MHSDS, CSDS,
//! FHIR, or an agency's own) as its registry of formats-as-data says, and
//! [`person_index`]
//! finds the person of an event table's row; [`person`] is the canonical
//! row; [`spool`] keeps every batch on disk until it is acknowledged and
//! each source's position, and [`delivery`] resends from it across lost
//! connections, over a [`transport`] ([`uploader`]'s gRPC one in a run); [`checkpoints`] keeps the gateway's signed audit
//! checkpoints; [`progress`] shows a run's progress; [`metrics`] names what
//! is measured; [`resolve`] answers direct-care questions inside the agency;
//! [`error`] is the one error of a run.
//!
//! Invariants: no name, NHS number, date of birth or postcode leaves this
//! crate except pseudonymised or coarsened by [`release`]; no error, log
//! line, metric or quarantine report carries a field's value (problems are
//! named by field, rule and line); a batch leaves the spool only when the
//! gateway has acknowledged its commit.

#![forbid(unsafe_code)]

pub mod batch;
pub mod checkpoints;
pub mod config;
pub mod delivery;
pub mod error;
pub mod format;
pub mod mapping;
pub mod metrics;
pub mod opt_out;
pub mod person;
pub mod person_index;
pub mod progress;
pub mod quarantine;
pub mod release;
pub mod resolve;
pub mod row;
pub mod run;
pub mod source;
pub mod spool;
pub mod transport;
pub mod uploader;
pub mod validate;

pub use config::AgentConfig;
pub use progress::Progress;
pub use run::{RunSummary, run};
