//! The analysts' console: a web page served on the analyst's own machine
//! (`joinery console`, on 127.0.0.1 only) that asks the gateway with the
//! analyst's own certificate, so nothing new is exposed on the gateway.
//!
//! - [`server`]: the local HTTP server — the page, its assets and a small
//!   JSON API that forwards to the gateway's `joinery.v1.Query` service —
//!   and the guard that lets only the browser holding the start-up token
//!   (and no other site, nor a DNS-rebound name) use it.
//! - [`assets`]: the page, its script, charts and styles, built into the
//!   binary (no CDN: the console works offline).
//!
//! Invariants: every answer the page shows comes from the gateway's `Run`
//! (disclosure control is the gateway's; the console adds none and removes
//! none); the query document the builder writes is the one sent, shown to
//! the analyst as sent; nothing the console serves identifies a person.

#![forbid(unsafe_code)]

pub mod assets;
pub mod server;

pub use server::{Console, ConsoleError};
