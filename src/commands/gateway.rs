//! `joinery gateway serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::commands::TlsArgs;
use clap::{Args, Subcommand};
use joinery_crypto::tls::TlsFiles;
use joinery_gateway::agreements::Agreements;
use joinery_gateway::analytics::Shard;
use joinery_gateway::config::{
    Answering, DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_LINKAGE_INTERVAL, DEFAULT_RETENTION_INTERVAL,
};
use joinery_gateway::storage::Storage;
use joinery_gateway::{Gateway, GatewayConfig, Limits};
use joinery_gateway::{linker, retention};

#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// Serve agents (Ingest) and analysts (Query) over mutual TLS until SIGTERM or Ctrl-C.
    Serve(Box<ServeArgs>),
    /// Delete data past its agreement's retention, or sent under an agreement
    /// that has ended (serve also does this on a schedule).
    Retention {
        #[command(flatten)]
        store: StoreArgs,
        /// Only report what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// Link records onto the person spine now (serve also does this on a
    /// schedule, incrementally); `--full` re-links everything with a freshly
    /// fitted model, as after a change of linkage parameters;
    /// `--same-model` compares every pair again under the stored model, a
    /// check that the incremental runs left the people a full comparison
    /// makes (it should move nobody); `--taken-over` links a new store
    /// onto the links `take-over` carried into it, as take-over itself
    /// does (for when it stopped before doing so).
    Relink {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, conflicts_with_all = ["same_model", "taken_over"])]
        full: bool,
        #[arg(long, conflicts_with = "taken_over")]
        same_model: bool,
        #[arg(long)]
        taken_over: bool,
    },
    /// How sure the fuzzy links are, per pair of organisations: the links
    /// the last full run made, and how many of them its fitted model
    /// expects to be wrong and how many true pairs it expects were missed.
    LinkageReport {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// How identifiable the stored records are by the quasi-identifiers
    /// kept in clear on them (sex, birth month, postcode district): how many
    /// children no other child shares them with, as stored and coarsened
    /// further.
    Identifiability {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// After a key rotation (docs/key-rotation.md): whether the store built
    /// under the new keys links the records into the same people as this
    /// one. Records are matched by organisation, dataset and source row;
    /// exits 1 if any person is split or merged, or a record is in only one.
    ComparePeople {
        #[command(flatten)]
        store: StoreArgs,
        /// The new store's database (sqlite://DIR/joinery.db or postgres://…).
        #[arg(long)]
        new_database_url: String,
    },
    /// After a key rotation, before the new store answers anyone: it takes
    /// over this store's privacy ledger (so a rotation never gives a fresh
    /// budget), fitted linkage models and last linkage run's links (onto
    /// its records of the same origins), audited there, and links what
    /// only it holds onto them: its people are this store's. Refused if the
    /// new store has released an answer.
    TakeOver {
        #[command(flatten)]
        store: StoreArgs,
        /// The new store's database.
        #[arg(long)]
        new_database_url: String,
    },
}

/// Where the gateway keeps its state.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Directory for the SQLite database and the gateway key.
    #[arg(long, default_value = "joinery-data", env = "JOINERY_DATA_DIR")]
    data_dir: PathBuf,
    /// PostgreSQL URL (postgres://user@host/db); default: SQLite in --data-dir.
    #[arg(long, env = "JOINERY_DATABASE_URL")]
    database_url: Option<String>,
    /// Directory of signed agreements to enforce (*.yaml, each with its .sig)
    /// [default: --data-dir/agreements]. An invalid or unsigned file stops the gateway at
    /// start; while serving, a change is put in force within seconds (audited), and a
    /// folder that does not load whole is refused, keeping the agreements in force.
    #[arg(long, env = "JOINERY_AGREEMENTS")]
    agreements: Option<PathBuf>,
}

impl StoreArgs {
    /// Opens the gateway's database (running any pending migrations).
    pub async fn storage(&self) -> anyhow::Result<Storage> {
        let url = self
            .database_url
            .clone()
            .unwrap_or_else(|| Storage::sqlite_url(&self.data_dir));
        Ok(Storage::open(&url).await?)
    }

    /// Opens a database that must already hold a gateway's data: reading
    /// a store that is not there is an error, never an empty answer.
    pub async fn existing_storage(&self) -> anyhow::Result<Storage> {
        if self.database_url.is_none() {
            let file = self.data_dir.join("joinery.db");
            anyhow::ensure!(
                file.exists(),
                "no gateway database at {} (for a gateway on PostgreSQL, give --database-url)",
                file.display()
            );
        }
        self.storage().await
    }

    /// The signed agreements, saying loudly when there are none: retention
    /// then keeps everything and linkage has no parameters to link with.
    pub fn agreements(&self) -> anyhow::Result<Agreements> {
        let dir = self.agreements_dir();
        let agreements = Agreements::load_dir(&dir)?;
        if agreements.is_empty() {
            eprintln!(
                "warning: no signed agreements in {} ({}): nothing is governed by an agreement, so retention deletes nothing and linkage has nothing to run; give --agreements",
                dir.display(),
                if dir.exists() {
                    "no *.yaml there"
                } else {
                    "it does not exist"
                }
            );
        }
        Ok(agreements)
    }

    pub fn agreements_dir(&self) -> PathBuf {
        self.agreements
            .clone()
            .unwrap_or_else(|| self.data_dir.join("agreements"))
    }

    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address for gRPC over mutual TLS.
    #[arg(long, default_value = "0.0.0.0:7443", env = "JOINERY_LISTEN")]
    listen: SocketAddr,
    #[command(flatten)]
    store: StoreArgs,
    /// The gateway's re-keying key (default: --data-dir/gateway.key, created on
    /// first start). Every gateway of a deployment must use the same key.
    #[arg(long, env = "JOINERY_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Seconds between incremental fuzzy-linkage runs.
    #[arg(long, default_value_t = DEFAULT_LINKAGE_INTERVAL.as_secs(), env = "JOINERY_LINKAGE_INTERVAL_SECS")]
    linkage_interval_secs: u64,
    /// Linkage runs failed in a row after which /readyz reports the gateway
    /// degraded (answers would come from stale links).
    #[arg(
        long,
        default_value_t = 3,
        env = "JOINERY_LINKAGE_FAILURES_BEFORE_UNREADY"
    )]
    linkage_failures_before_unready: u64,
    /// Seconds between retention passes.
    #[arg(long, default_value_t = DEFAULT_RETENTION_INTERVAL.as_secs(), env = "JOINERY_RETENTION_INTERVAL_SECS")]
    retention_interval_secs: u64,
    /// The Ed25519 key that signs audit checkpoints [default: --data-dir/audit-signing.key,
    /// created on first start]. Publish its public key (joinery audit verify prints it).
    #[arg(long, env = "JOINERY_AUDIT_KEY_FILE")]
    audit_key_file: Option<PathBuf>,
    /// Seconds between signed audit checkpoints (one is also signed at shutdown).
    #[arg(long, default_value_t = DEFAULT_CHECKPOINT_INTERVAL.as_secs(), env = "JOINERY_CHECKPOINT_INTERVAL_SECS")]
    checkpoint_interval_secs: u64,
    #[command(flatten)]
    tls: TlsArgs,
    /// Certificate revocation list (joinery pki revoke writes pki/crl.pem).
    /// The CA, certificate, key and CRL files are reloaded when they change.
    #[arg(long, env = "JOINERY_TLS_CRL")]
    tls_crl: Option<PathBuf>,
    /// Serve GET /metrics (Prometheus), /healthz and /readyz on this address.
    #[arg(long, env = "JOINERY_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Largest gRPC message accepted, in bytes.
    #[arg(long, default_value_t = Limits::default().max_message_bytes, env = "JOINERY_MAX_MESSAGE_BYTES")]
    max_message_bytes: usize,
    /// Concurrent streams allowed on one connection.
    #[arg(long, default_value_t = Limits::default().max_streams_per_connection, env = "JOINERY_MAX_STREAMS_PER_CONNECTION")]
    max_streams_per_connection: u32,
    /// Seconds a client has to complete the TLS handshake.
    #[arg(long, default_value_t = Limits::default().handshake_timeout.as_secs(), env = "JOINERY_HANDSHAKE_TIMEOUT_SECS")]
    handshake_timeout_secs: u64,
    /// TLS handshakes under way at once; a new connection beyond them sheds
    /// the oldest unfinished one.
    #[arg(long, default_value_t = Limits::default().max_handshakes, env = "JOINERY_MAX_HANDSHAKES")]
    max_handshakes: usize,
    /// Open connections allowed at once: agencies' and analysts' (at most a
    /// quarter) budgets together.
    #[arg(long, default_value_t = Limits::default().max_connections, env = "JOINERY_MAX_CONNECTIONS")]
    max_connections: usize,
    /// Open connections one certificate may hold.
    #[arg(long, default_value_t = Limits::default().max_connections_per_identity, env = "JOINERY_MAX_CONNECTIONS_PER_IDENTITY")]
    max_connections_per_identity: usize,
    /// Seconds after which a connection with no traffic is closed, and an
    /// ingest session with no message ended.
    #[arg(long, default_value_t = Limits::default().idle_timeout.as_secs(), env = "JOINERY_IDLE_TIMEOUT_SECS")]
    idle_timeout_secs: u64,
    /// Ingest sessions at once; more are shed with RESOURCE_EXHAUSTED (agents retry).
    #[arg(long, default_value_t = Limits::default().max_sessions, env = "JOINERY_MAX_SESSIONS")]
    max_sessions: usize,
    /// Ingest sessions one organisation may hold at once.
    #[arg(long, default_value_t = Limits::default().max_sessions_per_organisation, env = "JOINERY_MAX_SESSIONS_PER_ORGANISATION")]
    max_sessions_per_organisation: usize,
    #[command(flatten)]
    shards: ShardArgs,
}

/// Where the linked population outgrows one gateway's memory
/// (docs/scaling.md, "Past one gateway"): gateways that each hold one shard
/// of it, and gateways that answer analysts from them.
#[derive(Debug, Args)]
struct ShardArgs {
    /// Hold only shard I of N of the linked population in memory (I/N, as
    /// 0/4), for the gateways that answer from shards; this gateway then
    /// answers no analyst itself.
    #[arg(
        long,
        env = "JOINERY_HOLDS_SHARD",
        conflicts_with = "answer_from_shards"
    )]
    holds_shard: Option<Shard>,
    /// Hold nobody, and answer analysts from the gateways holding each
    /// shard: their host:port, one per shard, comma-separated (the host is
    /// the name their certificates are checked against).
    #[arg(
        long,
        env = "JOINERY_ANSWER_FROM_SHARDS",
        value_delimiter = ',',
        requires_all = ["shard_tls_cert", "shard_tls_key"]
    )]
    answer_from_shards: Vec<String>,
    /// The certificate this gateway shows the shards (joinery pki issue
    /// --gateway NAME); checked against --tls-ca like every other.
    #[arg(long, env = "JOINERY_SHARD_TLS_CERT")]
    shard_tls_cert: Option<PathBuf>,
    /// Its private key.
    #[arg(long, env = "JOINERY_SHARD_TLS_KEY")]
    shard_tls_key: Option<PathBuf>,
}

impl ShardArgs {
    /// Which of the population the gateway holds; `ca` is the deployment CA.
    fn answering(self, ca: &std::path::Path) -> Answering {
        match (self.holds_shard, self.shard_tls_cert, self.shard_tls_key) {
            (Some(shard), ..) => Answering::Shard(shard),
            (None, Some(cert), Some(key)) if !self.answer_from_shards.is_empty() => {
                Answering::FromShards {
                    addresses: self.answer_from_shards,
                    tls: TlsFiles {
                        ca: ca.to_owned(),
                        cert,
                        key,
                        crl: None,
                    },
                }
            }
            _ => Answering::Whole,
        }
    }
}

impl GatewayCommand {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let args = match self {
            Self::Serve(args) => args,
            Self::Retention { store, dry_run } => return retention(store, dry_run).await,
            Self::Relink {
                store,
                full,
                same_model,
                taken_over,
            } => {
                let mode = match (full, same_model, taken_over) {
                    (true, ..) => linker::RunMode::Refit,
                    (_, true, _) => linker::RunMode::SameModel,
                    (.., true) => linker::RunMode::TakenOver,
                    _ => linker::RunMode::Incremental,
                };
                return relink(store, mode).await;
            }
            Self::LinkageReport { store } => return linkage_report(store).await,
            Self::Identifiability { store } => return identifiability(store).await,
            Self::ComparePeople {
                store,
                new_database_url,
            } => return compare_people(store, &new_database_url).await,
            Self::TakeOver {
                store,
                new_database_url,
            } => return take_over(store, &new_database_url).await,
        };

        let config = GatewayConfig {
            listen: args.listen,
            data_dir: args.store.data_dir,
            database_url: args.store.database_url,
            key_file: args.key_file,
            agreements_dir: args.store.agreements,
            retention_interval: Duration::from_secs(args.retention_interval_secs.max(1)),
            linkage_interval: Duration::from_secs(args.linkage_interval_secs.max(1)),
            linkage_failures_before_unready: args.linkage_failures_before_unready.max(1),
            audit_key_file: args.audit_key_file,
            checkpoint_interval: Duration::from_secs(args.checkpoint_interval_secs.max(1)),
            answering: args.shards.answering(&args.tls.files(None).ca),
            tls: args.tls.files(args.tls_crl),
            limits: Limits {
                max_message_bytes: args.max_message_bytes,
                max_streams_per_connection: args.max_streams_per_connection,
                handshake_timeout: Duration::from_secs(args.handshake_timeout_secs),
                max_handshakes: args.max_handshakes,
                max_connections: args.max_connections,
                max_connections_per_identity: args.max_connections_per_identity,
                idle_timeout: Duration::from_secs(args.idle_timeout_secs.max(1)),
                max_sessions: args.max_sessions,
                max_sessions_per_organisation: args.max_sessions_per_organisation,
            },
        };
        let recorder = match args.metrics_listen {
            Some(_) => Some(crate::observe::install()?),
            None => None,
        };
        let gateway = Gateway::bind(config).await?;
        if let (Some(address), Some(recorder)) = (args.metrics_listen, recorder) {
            let probe = gateway.readiness();
            let ready: crate::observe::Readiness = std::sync::Arc::new(move || {
                let probe = probe.clone();
                Box::pin(async move { probe.check().await })
            });
            crate::observe::serve(address, recorder, ready).await?;
        }
        // Machine-readable line for scripts and tests that bind port 0.
        println!("listening on {}", gateway.local_addr());
        gateway.serve(shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    }
}

async fn retention(store: StoreArgs, dry_run: bool) -> anyhow::Result<ExitCode> {
    let agreements = store.agreements()?;
    let storage = store.storage().await?;
    let report = retention::run(
        &storage,
        &agreements,
        time::OffsetDateTime::now_utc(),
        dry_run,
    )
    .await?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    for p in &report.purged {
        println!(
            "{verb} {} records in {} batches of {} from {} (agreement {})",
            p.records, p.batches, p.dataset, p.organisation, p.agreement
        );
    }
    for (agreement, dataset) in &report.ungoverned {
        println!("kept {dataset} sent under agreement {agreement}: that agreement is not loaded");
    }
    println!("{verb} {} records in total", report.records());
    Ok(ExitCode::SUCCESS)
}

async fn compare_people(store: StoreArgs, new_database_url: &str) -> anyhow::Result<ExitCode> {
    let old = store.existing_storage().await?.record_people().await?;
    let new = Storage::open(new_database_url)
        .await?
        .record_people()
        .await?;
    anyhow::ensure!(
        !new.is_empty(),
        "the new store holds no records: deliver to it first"
    );
    let c = joinery_gateway::rotation::compare(&old, &new);
    println!(
        "{} records in both stores, of {} people here; {} people split, {} merged in the new store; {} records only here, {} only in the new store",
        c.records_compared, c.people, c.split, c.merged, c.only_in_old, c.only_in_new
    );
    if c.unchanged() {
        println!("the new store's people are this store's: it may take over");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("the people differ: do not move analysts to the new store yet");
        Ok(ExitCode::from(1))
    }
}

async fn take_over(store: StoreArgs, new_database_url: &str) -> anyhow::Result<ExitCode> {
    let agreements = store.agreements()?;
    let taken = store.existing_storage().await?.to_take_over().await?;
    let new = Storage::open(new_database_url).await?;
    new.take_over(&taken).await?;
    for (agreement, spent) in &taken.privacy_spent {
        println!(
            "{agreement}: privacy loss already spent (rho {:.6}) taken over",
            *spent as f64 / 1e9
        );
    }
    for model in &taken.models {
        let links = taken
            .links
            .iter()
            .find(|l| l.params_version == model.params_version);
        match links {
            Some(l) => println!(
                "linkage parameters v{}: fitted model taken over, and the last run's {} links between {} records' encodings, by where each record came from",
                model.params_version,
                l.links.len(),
                l.entities.len()
            ),
            None => println!(
                "linkage parameters v{}: fitted model taken over; this store's links are not stored (run `joinery gateway relink --full` on it first), so the new store compares every pair under the new keys",
                model.params_version
            ),
        }
    }
    // The new store's people: what the old store linked, and what only it
    // holds compared under the new keys.
    link_and_say(&new, &agreements, linker::RunMode::TakenOver).await?;
    Ok(ExitCode::SUCCESS)
}

async fn relink(store: StoreArgs, mode: linker::RunMode) -> anyhow::Result<ExitCode> {
    let agreements = store.agreements()?;
    link_and_say(&store.storage().await?, &agreements, mode).await?;
    Ok(ExitCode::SUCCESS)
}

/// One linkage run under every parameters version the agreements ask for,
/// each said on standard output.
async fn link_and_say(
    storage: &Storage,
    agreements: &joinery_gateway::agreements::Agreements,
    mode: linker::RunMode,
) -> anyhow::Result<()> {
    let all = agreements.linkage_params();
    if all.is_empty() {
        println!("no loaded agreement asks for fuzzy linkage");
    }
    let mut linker = linker::Linker::default();
    for params in all {
        let report = linker.run(storage, &params, mode).await?;
        println!(
            "linkage parameters v{}: {} run over {} records' encodings ({} new); {} candidate pairs, {} links; {} person ids moved on the spine",
            report.params_version,
            match (report.full, mode) {
                (true, _) => "full",
                (false, linker::RunMode::SameModel) => "same-model",
                (false, linker::RunMode::TakenOver) => "taken-over (onto the old store's links)",
                (false, _) => "incremental",
            },
            report.entities,
            report.pending,
            report.candidate_pairs,
            report.links,
            report.moved
        );
        if report.full {
            let wrong: f64 = report.quality.iter().map(|q| q.expected_wrong).sum();
            let missed: f64 = report.quality.iter().map(|q| q.expected_missed).sum();
            println!(
                "  the fitted model expects {wrong:.1} of the fuzzy links to be wrong and {missed:.1} true pairs to have been missed (`joinery gateway linkage-report` has them per pair of organisations)"
            );
        }
        if !report.nhs_conflicts.is_empty() {
            println!(
                "  {} person ids share an NHS pseudonym across records whose names and dates of birth disagree (a mistyped or borrowed NHS number?); review: {}",
                report.nhs_conflicts.len(),
                report.nhs_conflicts.join(" ")
            );
        }
    }
    Ok(())
}

async fn linkage_report(store: StoreArgs) -> anyhow::Result<ExitCode> {
    let storage = store.storage().await?;
    let reports = linker::quality(&storage).await?;
    if reports.is_empty() {
        println!("no linkage run yet: `joinery gateway relink --full` makes one");
    }
    for report in reports {
        let fitted =
            linker::as_of(report.fitted_at).unwrap_or_else(|| report.fitted_at.to_string());
        let Some(pairs) = report.pairs else {
            println!(
                "linkage parameters v{}: the last full run ({fitted}) predates the estimate; `joinery gateway relink --full` makes one",
                report.params_version
            );
            continue;
        };
        println!(
            "linkage parameters v{}, full run of {fitted}: the fitted model's own expectations, without labels. Pairs of records that both carry NHS numbers are decided by those and left out; true pairs blocking never compared are not counted.",
            report.params_version
        );
        for q in pairs {
            let true_links = q.links as f64 - q.expected_wrong;
            println!(
                "  {}: {} fuzzy links, expected wrong {:.1} ({:.2}% of links), expected missed {:.1} ({:.2}% of true pairs)",
                q.organisations.join(" + "),
                q.links,
                q.expected_wrong,
                100.0 * q.expected_wrong / (q.links as f64).max(1.0),
                q.expected_missed,
                100.0 * q.expected_missed / (true_links + q.expected_missed).max(1.0),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn identifiability(store: StoreArgs) -> anyhow::Result<ExitCode> {
    use joinery_gateway::identifiability::{Coarsening, measure};
    let storage = store.existing_storage().await?;
    let sightings = storage.quasi_identifiers().await?;
    println!(
        "Children by the quasi-identifiers kept in clear on their records (k: how many children have a record with the same values; a child counts at their smallest k; a blank is a value of its own):"
    );
    for coarsening in Coarsening::ALL {
        let m = measure(&sightings, coarsening);
        let share = |n: u64| 100.0 * n as f64 / (m.children as f64).max(1.0);
        println!(
            "  {}: {} children, {} classes; singled out (k = 1) {:.1}%, k < 5 {:.1}%, k < 10 {:.1}%; median k {}",
            coarsening.describe(),
            m.children,
            m.classes,
            share(m.unique),
            share(m.under_5),
            share(m.under_10),
            m.median_k
        );
    }
    println!(
        "An agreement coarsens what agencies send (`date_of_birth: quarter` or `year` rather than `month`, `postcode: area` rather than `district`); `joinery policy explain` shows what each field is sent as and what analysis loses by it."
    );
    Ok(ExitCode::SUCCESS)
}

/// Completes on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested; finishing open streams");
}
