//! One module per `joinery` subcommand: argument parsing and output at the
//! binary's edge; the work is done by the library crates.

pub mod agent;
pub mod audit;
pub mod bench;
pub mod demo;
pub mod gateway;
pub mod pki;
pub mod policy;
pub mod probe;
pub mod query;
pub mod reference;
pub mod synth;
