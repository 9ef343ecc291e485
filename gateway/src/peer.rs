//! The caller of an RPC, as proven by its TLS client certificate.
//!
//! The listener reads the identity once per connection, right after the
//! handshake, and tonic hands it to every request on that connection.

use std::net::SocketAddr;

use joinery_crypto::identity::{IdentityError, OrganisationCode, PeerIdentity};
use tonic::{Request, Status};

/// What the server knows about a connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    /// The identity named by the verified client certificate, or why it names none.
    pub identity: Result<PeerIdentity, IdentityError>,
}

/// The identity of the caller of `request`.
pub fn identity<T>(request: &Request<T>) -> Result<PeerIdentity, Status> {
    let info = request
        .extensions()
        .get::<PeerInfo>()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    info.identity
        .clone()
        .map_err(|e| Status::permission_denied(format!("client certificate refused: {e}")))
}

/// The organisation calling, or PERMISSION_DENIED for any other kind of caller.
pub fn organisation<T>(request: &Request<T>) -> Result<OrganisationCode, Status> {
    match identity(request)? {
        PeerIdentity::Organisation(code) => Ok(code),
        other => Err(Status::permission_denied(format!(
            "{other} may not deliver data; an organisation certificate is required"
        ))),
    }
}
