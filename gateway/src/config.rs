//! The gateway's configuration, built once at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use joinery_crypto::tls::TlsFiles;

use crate::analytics::Shard;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Address for gRPC over mutual TLS.
    pub listen: SocketAddr,
    /// Directory for the SQLite database and the gateway key.
    pub data_dir: PathBuf,
    /// `postgres://…` for PostgreSQL; `None` for SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// The gateway's re-keying key; `None` for `data_dir/gateway.key`,
    /// created on first start. Every gateway of one deployment must share it.
    pub key_file: Option<PathBuf>,
    /// Signed agreements to enforce (`*.yaml` with `.sig`); `None` for
    /// `data_dir/agreements`.
    pub agreements_dir: Option<PathBuf>,
    pub tls: TlsFiles,
    pub limits: Limits,
    /// How often to delete what retention rules say must go.
    pub retention_interval: Duration,
    /// How often new records are linked onto the person spine (fuzzy linkage).
    pub linkage_interval: Duration,
    /// Linkage runs failed in a row (on any gateway of the deployment)
    /// after which readiness reports the gateway degraded.
    pub linkage_failures_before_unready: u64,
    /// The Ed25519 key that signs audit checkpoints; `None` for
    /// `data_dir/audit-signing.key`, created on first start.
    pub audit_key_file: Option<PathBuf>,
    /// How often the audit chain head is signed (also at shutdown).
    pub checkpoint_interval: Duration,
    /// Which of the linked population the gateway holds for answers.
    pub answering: Answering,
}

/// Which of the linked population a gateway holds in memory for answers
/// (`docs/scaling.md`, "Past one gateway").
#[derive(Debug, Clone, Default)]
pub enum Answering {
    /// Everyone: it answers analysts from what it holds.
    #[default]
    Whole,
    /// One shard's people, for the gateways that answer from shards; it
    /// answers no analyst itself.
    Shard(Shard),
    /// Nobody: it answers analysts from the parts the gateways at
    /// `addresses` (`host:port`, one per shard) send, reached over mutual
    /// TLS with `tls` (the deployment CA and a gateway certificate,
    /// `joinery pki issue --gateway NAME`).
    FromShards {
        addresses: Vec<String>,
        tls: TlsFiles,
    },
}

/// Bounds that keep one client from exhausting the gateway.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest gRPC message accepted, in bytes, checked again after gzip
    /// decompression (so a small compressed bomb is refused at this size).
    pub max_message_bytes: usize,
    /// Concurrent streams (RPCs) on one connection.
    pub max_streams_per_connection: u32,
    /// Time allowed to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Handshakes under way at once; a new connection beyond them sheds the
    /// oldest unfinished one.
    pub max_handshakes: usize,
    /// Open connections at once: agencies' and analysts' (at most a quarter
    /// of them) budgets together.
    pub max_connections: usize,
    /// Open connections one certificate may hold.
    pub max_connections_per_identity: usize,
    /// A connection with no byte either way for this long is closed; an
    /// ingest session with no message for this long is ended.
    pub idle_timeout: Duration,
    /// Ingest sessions at once; more are refused with RESOURCE_EXHAUSTED.
    pub max_sessions: usize,
    /// Ingest sessions one organisation may hold at once, so one agency's
    /// runaway (or compromised) agent cannot take every session slot.
    pub max_sessions_per_organisation: usize,
}

/// How often the audit chain head is signed inside `serve`.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);

/// How often incremental fuzzy linkage runs inside `serve`.
pub const DEFAULT_LINKAGE_INTERVAL: Duration = Duration::from_secs(60);

/// How often the retention pass runs inside `serve`.
pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 16 * 1024 * 1024,
            max_streams_per_connection: 16,
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 256,
            max_connections: 1024,
            max_connections_per_identity: 64,
            idle_timeout: Duration::from_secs(120),
            max_sessions: 512,
            max_sessions_per_organisation: 32,
        }
    }
}

impl GatewayConfig {
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| crate::storage::Storage::sqlite_url(&self.data_dir))
    }

    pub fn agreements_dir(&self) -> PathBuf {
        self.agreements_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("agreements"))
    }

    pub fn audit_key_file(&self) -> PathBuf {
        self.audit_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit-signing.key"))
    }

    pub fn key_file(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("gateway.key"))
    }
}
