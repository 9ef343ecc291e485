//! The `joinery.v1` protocol: messages and gRPC services shared by agent and
//! gateway, plus [`channel`], the one way a client connects to the gateway,
//! and [`trace_context`], which carries a trace from agent to gateway.
//!
//! The `.proto` sources live next to this crate in `proto/joinery/v1/`.
//!
//! Invariants: no message has a field for a name, NHS number, date of birth
//! or postcode in clear; fields are only ever added, never renumbered or
//! reused, so an older agent and a newer gateway still understand each
//! other.

#![forbid(unsafe_code)]

pub mod channel;
pub mod trace_context;

/// Generated code for package `joinery.v1`.
pub mod v1 {
    tonic::include_proto!("joinery.v1");
}

impl v1::BatchBody {
    /// The batch id: lowercase hex SHA-256 of this body's protobuf encoding.
    /// The encoding is deterministic (maps are generated as `BTreeMap`), so
    /// agent and gateway compute the same id for the same content, and a batch
    /// delivered twice is recognised.
    pub fn digest(&self) -> String {
        use prost::Message;
        let hash = ring::digest::digest(&ring::digest::SHA256, &self.encode_to_vec());
        hash.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}
