//! The Joinery agent: runs on an agency's premises, reads its extracts, and
//! delivers pseudonymised records to the gateway.
//!
//! Data flow for one run ([`run()`], its steps in [`run`](mod@run)):
//! [`config`] names the sources; [`format`](mod@format) opens each (a CSV
//! file, an SQL table, or a national return — SSDA903, CIN census, Annex A,
//! MHSDS, CSDS, FHIR or an agency's own — as its registry of formats as
//! data says, [`person_index`] finding the person of an event table's row);
//! each [`source`] reads rows and [`mapping`] binds its columns to canonical
//! fields ([`person`]); [`row`] validates them with [`validate`] (NHS number
//! Modulus 11, postcodes, dates). Then the [`pipeline`] stages: what cannot
//! be used is quarantined ([`quarantine`]), [`opt_out`] withholds people on
//! the National Data Opt-out list, [`release`] sends only what the signed
//! agreement allows, pseudonymised (NHS numbers through the agreement's
//! [`keyholders`] when it names any) and coarsened as it says, [`batch`]
//! groups records under content-digest ids, and [`spool`] keeps every batch
//! on disk, with each source's position, until it is acknowledged.
//! [`delivery`] sends from the spool and resends across lost connections,
//! over a [`transport`] ([`uploader`]'s mutual-TLS gRPC one in a run),
//! counting a batch delivered only when the gateway acknowledges its commit;
//! [`summary`] is what the run did.
//!
//! Around that path: [`checkpoints`] keeps the gateway's signed audit
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
pub mod keyholders;
pub mod keys;
pub mod mapping;
pub mod metrics;
pub mod opt_out;
pub mod person;
pub mod person_index;
pub mod pipeline;
pub mod progress;
pub mod pseudonym_cache;
pub mod quarantine;
pub mod release;
pub mod resolve;
pub mod row;
pub mod run;
pub mod source;
pub mod spool;
pub mod summary;
pub mod transport;
pub mod uploader;
pub mod validate;

pub use config::AgentConfig;
pub use progress::Progress;
pub use run::run;
pub use summary::RunSummary;
