//! `joinery demo`: the whole system on this machine, in one command.
//!
//! In a fresh directory: a deployment CA with gateway, agency and analyst
//! certificates; a linkage key; the example council + CAMHS + SALT
//! data-sharing agreement signed by three signatories with fresh keys;
//! synthetic extracts for three agencies; a
//! gateway on SQLite listening on 127.0.0.1; one agent per agency delivering
//! over mutual TLS at the same time; then, as an analyst, the table of
//! children known to 1, 2 or 3+ agencies by age band and the risk tiers by
//! life-course segment, disclosure-controlled.
//! Everything is left on disk, with the commands to run each part by hand.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use joinery_agent::AgentConfig;
use joinery_agent::config::{CsvFile, SourceConfig};
use joinery_crypto::tls::TlsFiles;
use joinery_gateway::agreements::Agreements;
use joinery_gateway::config::{
    DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_LINKAGE_INTERVAL, DEFAULT_RETENTION_INTERVAL,
};
use joinery_gateway::storage::Storage;
use joinery_gateway::{Gateway, GatewayConfig, Limits, linker};
use joinery_proto::v1::{AgencyOverlapRequest, CountsRequest, RunRequest};

use crate::commands::agent::print_summary;
use crate::commands::query::{TableFormat, connect, print_counts, print_overlap, print_table};
use crate::sandbox::{Sandbox, SandboxSpec, write_agent_config};

const ANALYST: &str = "demo-analyst";

/// How long the demo's certificates last.
const VALIDITY_DAYS: i64 = 7;

/// The file `--prepare-only` writes last: the directory is complete.
const PREPARED: &str = ".prepared";

/// Where `--prepare-only` puts the gateway's own files (and nothing else).
const GATEWAY_CONFIG: &str = "gateway-config";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Children in the synthetic population.
    #[arg(long, default_value_t = 3000)]
    children: usize,
    /// Random seed for the synthetic data.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Directory to work in (must not exist yet, unless --prepare-only
    /// finished preparing it before; default: a new temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Only write the deployment (PKI, signed agreement, extracts, agent
    /// configurations for a gateway at --gateway-address) and stop: this is
    /// how the compose stack in deploy/compose sets itself up.
    #[arg(long, requires = "gateway_address")]
    prepare_only: bool,
    /// The gateway address written into agent configurations (--prepare-only).
    #[arg(long)]
    gateway_address: Option<String>,
    /// The gateway's host name, added to its certificate and used by agents.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// After the demo, keep the gateway running and open the analysts'
    /// console on this loopback address (e.g. 127.0.0.1:7450) until Ctrl-C.
    #[arg(long, conflicts_with = "prepare_only")]
    console: Option<std::net::SocketAddr>,
}

impl DemoArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let started = Instant::now();
        let dir = match self.dir {
            // A second `docker compose up` finds the deployment prepared.
            Some(dir) if self.prepare_only && dir.join(PREPARED).exists() => {
                println!(
                    "{} is already prepared; left as it is (remove it for a fresh deployment)",
                    dir.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            Some(dir) => {
                anyhow::ensure!(
                    !dir.exists(),
                    "{} already exists; name a new directory",
                    dir.display()
                );
                std::fs::create_dir_all(&dir)?;
                dir
            }
            None => tempfile::Builder::new()
                .prefix("joinery-demo-")
                .tempdir()?
                .keep(),
        };
        println!("Joinery demo in {}\n", dir.display());

        // 1. PKI and keys.
        let mut names = vec![
            self.server_name.clone(),
            "localhost".into(),
            "127.0.0.1".into(),
        ];
        names.dedup();
        let sandbox = Sandbox::create(
            &dir,
            &SandboxSpec {
                ca_name: "Joinery demo CA",
                validity_days: VALIDITY_DAYS,
                server_names: &names,
                organisations: &[],
                analysts: &[ANALYST],
            },
        )?;
        let pki = sandbox.pki();
        let agreement = sandbox.agreement()?;
        let (server_cert, server_key) = sandbox.gateway_cert();
        let (analyst_cert, analyst_key) = sandbox.analyst_cert(ANALYST);
        println!(
            "1. Created a deployment CA, gateway and analyst certificates, and a linkage key ({})",
            pki.display()
        );
        println!(
            "   Signed the data-sharing agreement {}",
            agreement.display()
        );

        // 2. Synthetic extracts.
        let reference = time::OffsetDateTime::now_utc().date();
        let synth = crate::synth::generate(
            &dir.join("synth"),
            &crate::synth::Population::tidy(self.children, self.seed, reference),
        )?;
        println!(
            "2. Generated {} children's records for {} agencies: {} rows ({})",
            self.children,
            synth.extracts.len(),
            synth.rows,
            dir.join("synth").display()
        );

        for (agency, _, _) in &synth.extracts {
            sandbox.issue_organisation(agency.organisation, VALIDITY_DAYS)?;
        }
        if self.prepare_only {
            let address = self.gateway_address.unwrap_or_default();
            write_agents(&sandbox, &address, &self.server_name, &synth)?;
            write_gateway_config(&sandbox)?;
            std::fs::write(dir.join(PREPARED), "joinery demo --prepare-only finished\n")?;
            println!(
                "Prepared: agent configurations for a gateway at {address} are in {}",
                dir.join("agents").display()
            );
            return Ok(ExitCode::SUCCESS);
        }

        // 3. Gateway on SQLite, on a free local port.
        let gateway_dir = dir.join("gateway");
        let gateway = Gateway::bind(GatewayConfig {
            listen: "127.0.0.1:0".parse()?,
            data_dir: gateway_dir.clone(),
            database_url: None,
            key_file: None,
            agreements_dir: Some(dir.join("agreements")),
            tls: TlsFiles {
                ca: sandbox.ca(),
                cert: server_cert.clone(),
                key: server_key.clone(),
                crl: Some(sandbox.crl()),
            },
            limits: Limits::default(),
            retention_interval: DEFAULT_RETENTION_INTERVAL,
            linkage_interval: DEFAULT_LINKAGE_INTERVAL,
            linkage_failures_before_unready: 3,
            audit_key_file: None,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            answering: Default::default(),
        })
        .await?;
        let address = gateway.local_addr().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(gateway.serve(async {
            let _ = stopped.await;
        }));
        println!(
            "3. Gateway listening on {address} (mutual TLS 1.3), storing in {}",
            gateway_dir.display()
        );

        // 4. One agent per agency, all at once.
        let configs = write_agents(&sandbox, &address, &self.server_name, &synth)?;
        println!(
            "4. Running {} agents concurrently. The synthetic extracts carry deliberate errors (impossible dates, missing ids, short rows, mistyped NHS numbers), so the quarantined rows and Modulus 11 warnings below are expected: each is reported by line, never by content.",
            configs.len()
        );
        let runs = configs
            .iter()
            .map(|(_, config)| joinery_agent::run(config, joinery_agent::Progress::Quiet));
        let results = futures::future::join_all(runs).await;
        for ((_, config), result) in configs.iter().zip(results) {
            let summary = result.with_context(|| format!("agent {}", config.organisation))?;
            print_summary(&config.organisation, &summary);
        }

        // 5. Fuzzy linkage: records without an NHS number join the spine.
        let storage = Storage::open(&Storage::sqlite_url(&gateway_dir)).await?;
        let agreements = Agreements::load_dir(&dir.join("agreements"))?;
        let mut linker = linker::Linker::default();
        for params in agreements.linkage_params() {
            let report = linker
                .run(&storage, &params, linker::RunMode::Incremental)
                .await?;
            println!(
                "5. Linked on encoded names, dates of birth, sex and postcodes: of {} agency records, {} without a shared NHS number were recognised as a child another agency also knows",
                report.entities, report.moved
            );
        }

        // 6. Ask as an analyst.
        let analyst_tls = TlsFiles {
            ca: sandbox.ca(),
            cert: analyst_cert.clone(),
            key: analyst_key.clone(),
            crl: None,
        };
        // Delivery counts are each agency's own: the first agency asks.
        if let Some((_, first)) = configs.first() {
            let agency_tls = TlsFiles {
                ca: first.tls.ca.clone(),
                cert: first.tls.cert.clone(),
                key: first.tls.key.clone(),
                crl: None,
            };
            let mut agency = connect(&address, &self.server_name, &agency_tls).await?;
            println!(
                "\n6. Stored at the gateway ({}'s own deliveries; analysts may not see these counts):",
                first.organisation
            );
            print_counts(&agency.counts(CountsRequest {}).await?.into_inner());
        }
        let mut client = connect(&address, &self.server_name, &analyst_tls).await?;
        println!("\nAs an analyst, through disclosure control:");
        let overlap = client
            .agency_overlap(AgencyOverlapRequest {
                reference_date: reference.to_string(),
            })
            .await?
            .into_inner();
        print_overlap(&overlap);
        println!(
            "\n7. Risk tiers (built-in stratification children-at-risk@1) by life-course segment:"
        );
        let tiers = client
            .run(RunRequest {
                query: format!(
                    "reference_date: {reference}\nrows: segment\ncolumns: stratum\nstratification: children-at-risk@1\n"
                ),
            })
            .await?
            .into_inner();
        print_table(&tiers, TableFormat::Table)?;

        if let Some(listen) = self.console {
            println!("\n8. The analysts' console, asking this gateway as the demo analyst:");
            crate::commands::console::serve(listen, client, &address).await?;
        }
        let _ = stop.send(());
        serving.await??;
        println!(
            "\nDone in {:.1} s. Everything is in {}:",
            started.elapsed().as_secs_f64(),
            dir.display()
        );
        println!("  pki/            CA, gateway, agency and analyst certificates");
        println!(
            "  agreements/     the signed agreement, its signatures and the signatories' keys"
        );
        println!("  synth/          extracts, mapping files and ground_truth.csv");
        println!("  agents/         agent configurations and quarantine reports");
        println!("  gateway/        joinery.db (SQLite) and gateway.key");
        // The binary running now: `cargo run` does not put it on PATH.
        let joinery = std::env::current_exe()
            .map_or_else(|_| "joinery".to_owned(), |p| p.display().to_string());
        println!("\nRun the parts by hand:");
        println!(
            "  {joinery} gateway serve --listen 127.0.0.1:7443 --data-dir {} --agreements {} --tls-ca {} --tls-cert {} --tls-key {} --tls-crl {}",
            gateway_dir.display(),
            dir.join("agreements").display(),
            sandbox.ca().display(),
            server_cert.display(),
            server_key.display(),
            sandbox.crl().display()
        );
        println!("  (then set gateway.address to 127.0.0.1:7443 in an agent file and)");
        if let Some((path, _)) = configs.first() {
            println!("  {joinery} agent run --config {}", path.display());
        }
        println!(
            "  {joinery} console --gateway 127.0.0.1:7443 --server-name {} --tls-ca {} --tls-cert {} --tls-key {}",
            self.server_name,
            sandbox.ca().display(),
            analyst_cert.display(),
            analyst_key.display()
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// `gateway-config/`: only what the gateway needs — the signed
/// agreements (not their signatories' keys), the CA certificate, the
/// revocation list and its own certificate and key — so a gateway
/// container mounts it without the agencies' private keys or the
/// linkage key.
fn write_gateway_config(sandbox: &Sandbox) -> anyhow::Result<()> {
    let out = sandbox.root().join(GATEWAY_CONFIG);
    let copy = |from: &Path, to: PathBuf| -> anyhow::Result<()> {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        Ok(())
    };
    for entry in std::fs::read_dir(sandbox.agreements_dir())? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".yaml") || name.ends_with(".yaml.sig") {
            copy(&path, out.join("agreements").join(&name))?;
        }
    }
    copy(&sandbox.ca(), out.join("pki/ca.pem"))?;
    copy(
        &sandbox.crl(),
        out.join("pki").join(joinery_crypto::pki::CRL_FILE),
    )?;
    let (cert, key) = sandbox.gateway_cert();
    copy(&cert, out.join("pki/gateway.pem"))?;
    let key = std::fs::read(&key)?;
    joinery_crypto::files::write_private(&out.join("pki/gateway.key"), &key, true)?;
    Ok(())
}

/// Writes `agents/<ORG>.yaml` for every synthetic agency (its CSV extract,
/// national returns and database); returns them.
fn write_agents(
    sandbox: &Sandbox,
    address: &str,
    server_name: &str,
    synth: &crate::synth::SynthOutput,
) -> anyhow::Result<Vec<(PathBuf, AgentConfig)>> {
    synth
        .extracts
        .iter()
        .map(|(agency, extract, mapping)| {
            // The agency's CSV extract, and its national returns and
            // database too, so the demo exercises every reader.
            let sources = std::iter::once(SourceConfig::Csv(CsvFile {
                path: extract.clone(),
                mapping: mapping.clone(),
                snapshot: false,
            }))
            .chain(
                synth
                    .national
                    .iter()
                    .filter(|s| s.organisation == agency.organisation)
                    .map(|s| s.config.clone()),
            )
            .collect();
            let config =
                sandbox.agent_config(agency.organisation, address, server_name, sources)?;
            let path = sandbox
                .root()
                .join("agents")
                .join(format!("{}.yaml", agency.organisation));
            write_agent_config(&path, &config)?;
            Ok((path, config))
        })
        .collect()
}
