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
use joinery_agent::config::{CsvFile, GatewayEndpoint, SourceConfig, TlsPaths};
use joinery_crypto::identity::PeerIdentity;
use joinery_crypto::keys::SecretKey;
use joinery_crypto::pki::{CertificateAuthority, IssuedFiles, Validity};
use joinery_crypto::tls::TlsFiles;
use joinery_gateway::agreements::Agreements;
use joinery_gateway::config::{
    DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_LINKAGE_INTERVAL, DEFAULT_RETENTION_INTERVAL,
};
use joinery_gateway::storage::Storage;
use joinery_gateway::{Gateway, GatewayConfig, Limits, linker};
use joinery_policies::model::When;
use joinery_policies::{Agreement, signing};
use joinery_proto::v1::{AgencyOverlapRequest, CountsRequest, RunRequest};

use crate::commands::agent::print_summary;
use crate::commands::query::{TableFormat, connect, print_counts, print_overlap, print_table};

const ANALYST: &str = "demo-analyst";

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
        let pki = dir.join("pki");
        let validity = Validity::days_from_now(7)?;
        CertificateAuthority::init(&pki, "Joinery demo CA", validity)?;
        let ca = CertificateAuthority::load(&pki)?;
        let mut names = vec![
            self.server_name.clone(),
            "localhost".into(),
            "127.0.0.1".into(),
        ];
        names.dedup();
        let server = ca.issue_server(&names, validity, &pki.join("gateway"))?;
        ca.publish_crl(&pki)?;
        let analyst = ca.issue_client(
            &PeerIdentity::Analyst(ANALYST.into()),
            validity,
            &pki.join("analysts"),
        )?;
        SecretKey::generate()?.save(&Layout::linkage_key(&dir))?;
        let agreement = write_signed_agreement(&dir.join("agreements"))?;
        // The National Data Opt-out applies under this agreement; nobody in
        // the synthetic population has opted out.
        std::fs::write(dir.join("opt-out.txt"), "# National Data Opt-out list\n")?;
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
            self.children,
            self.seed,
            reference,
            None,
            crate::synth::Profile::Tidy,
        )?;
        println!(
            "2. Generated {} children's records for {} agencies: {} rows ({})",
            self.children,
            synth.extracts.len(),
            synth.rows,
            dir.join("synth").display()
        );

        for (agency, _, _) in &synth.extracts {
            ca.issue_client(
                &PeerIdentity::Organisation(agency.organisation.into()),
                validity,
                &pki.join("agents"),
            )?;
        }
        if self.prepare_only {
            let address = self.gateway_address.unwrap_or_default();
            let layout = Layout {
                dir: &dir,
                address: &address,
                server_name: &self.server_name,
                agreement: &agreement,
            };
            layout.write_agents(&synth)?;
            layout.write_gateway_config(&server)?;
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
                ca: pki.join("ca.pem"),
                cert: server.cert.clone(),
                key: server.key.clone(),
                crl: Some(pki.join(joinery_crypto::pki::CRL_FILE)),
            },
            limits: Limits::default(),
            retention_interval: DEFAULT_RETENTION_INTERVAL,
            linkage_interval: DEFAULT_LINKAGE_INTERVAL,
            linkage_failures_before_unready: 3,
            audit_key_file: None,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
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
        let layout = Layout {
            dir: &dir,
            address: &address,
            server_name: &self.server_name,
            agreement: &agreement,
        };
        let configs = layout.write_agents(&synth)?;
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
            ca: pki.join("ca.pem"),
            cert: analyst.cert.clone(),
            key: analyst.key.clone(),
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
            pki.join("ca.pem").display(),
            server.cert.display(),
            server.key.display(),
            pki.join(joinery_crypto::pki::CRL_FILE).display()
        );
        println!("  (then set gateway.address to 127.0.0.1:7443 in an agent file and)");
        if let Some((path, _)) = configs.first() {
            println!("  {joinery} agent run --config {}", path.display());
        }
        println!(
            "  {joinery} console --gateway 127.0.0.1:7443 --server-name {} --tls-ca {} --tls-cert {} --tls-key {}",
            self.server_name,
            pki.join("ca.pem").display(),
            analyst.cert.display(),
            analyst.key.display()
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// The example council + CAMHS + SALT agreement, in force from today for a
/// year, with its three signatories given fresh keys (kept beside it) and
/// all three signatures. Returns the agreement's path.
pub fn write_signed_agreement(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut agreement: Agreement = serde_saphyr::from_str(EXAMPLE_AGREEMENT)?;
    let today = time::OffsetDateTime::now_utc().date();
    let on = |date: time::Date| When {
        start: date.midnight().assume_utc(),
        date_only: true,
    };
    agreement.valid_from = on(today);
    agreement.review_by = on(today + time::Duration::days(182));
    agreement.expires = on(today + time::Duration::days(365));
    let mut keys = Vec::new();
    for (i, signatory) in agreement.signatories.iter_mut().enumerate() {
        let key = dir.join(format!("signatory-{}.key", i + 1));
        signatory.public_key = signing::keygen(&key)?;
        keys.push(key);
    }
    let path = dir.join(format!("{}.yaml", agreement.id));
    let text = serde_saphyr::to_string(&agreement)?;
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    for key in &keys {
        signing::sign(&path, &agreement, text.as_bytes(), key)?;
    }
    Ok(path)
}

const EXAMPLE_AGREEMENT: &str =
    include_str!("../../policies/examples/children-at-risk-stratification.yaml");

/// Where a demo or benchmark deployment keeps its files, and the agent
/// configurations that follow from it.
pub struct Layout<'a> {
    pub dir: &'a Path,
    /// Gateway `host:port` and the name on its certificate.
    pub address: &'a str,
    pub server_name: &'a str,
    pub agreement: &'a Path,
}

impl Layout<'_> {
    pub fn linkage_key(dir: &Path) -> PathBuf {
        dir.join("keys").join("linkage.key")
    }

    /// The configuration of `organisation`'s agent reading one extract.
    pub fn agent(&self, organisation: &str, extract: &Path, mapping: &Path) -> AgentConfig {
        let pki = self.dir.join("pki");
        let agents = pki.join("agents");
        AgentConfig {
            organisation: organisation.to_owned(),
            agreement: self.agreement.to_owned(),
            national_data_opt_out: Some(self.dir.join("opt-out.txt")),
            gateway: GatewayEndpoint {
                address: self.address.to_owned(),
                server_name: Some(self.server_name.to_owned()),
                compress: false,
            },
            tls: TlsPaths {
                ca: pki.join("ca.pem"),
                cert: agents.join(format!("{organisation}.pem")),
                key: agents.join(format!("{organisation}.key")),
            },
            linkage_key: Self::linkage_key(self.dir),
            quarantine_dir: self
                .dir
                .join("agents")
                .join("quarantine")
                .join(organisation),
            spool_dir: self.dir.join("agents").join("spool").join(organisation),
            spool_max_bytes: 256 * 1024 * 1024,
            retry_for_secs: 60,
            batch_size: 500,
            max_in_flight: 4,
            sources: vec![SourceConfig::Csv(CsvFile {
                path: extract.to_owned(),
                mapping: mapping.to_owned(),
                snapshot: false,
            })],
            formats: None,
            limits: Default::default(),
        }
    }

    /// Writes `agents/<ORG>.yaml` for every synthetic agency (its CSV
    /// extract, national returns and database); returns them.
    /// `gateway-config/`: only what the gateway needs — the signed
    /// agreements (not their signatories' keys), the CA certificate, the
    /// revocation list and its own certificate and key — so a gateway
    /// container mounts it without the agencies' private keys or the
    /// linkage key.
    fn write_gateway_config(&self, server: &IssuedFiles) -> anyhow::Result<()> {
        let out = self.dir.join(GATEWAY_CONFIG);
        let copy = |from: &Path, to: PathBuf| -> anyhow::Result<()> {
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::copy(from, &to)
                .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
            Ok(())
        };
        let agreements = self.dir.join("agreements");
        for entry in std::fs::read_dir(&agreements)? {
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
        let pki = self.dir.join("pki");
        copy(&pki.join("ca.pem"), out.join("pki/ca.pem"))?;
        copy(
            &pki.join(joinery_crypto::pki::CRL_FILE),
            out.join("pki").join(joinery_crypto::pki::CRL_FILE),
        )?;
        copy(&server.cert, out.join("pki/gateway.pem"))?;
        let key = std::fs::read(&server.key)?;
        joinery_crypto::files::write_private(&out.join("pki/gateway.key"), &key, true)?;
        Ok(())
    }

    fn write_agents(
        &self,
        synth: &crate::synth::SynthOutput,
    ) -> anyhow::Result<Vec<(PathBuf, AgentConfig)>> {
        synth
            .extracts
            .iter()
            .map(|(agency, extract, mapping)| {
                let mut config = self.agent(agency.organisation, extract, mapping);
                // The same agency's national returns and database too, so
                // the demo exercises every reader.
                config.sources.extend(
                    synth
                        .national
                        .iter()
                        .filter(|s| s.organisation == agency.organisation)
                        .map(|s| s.config.clone()),
                );
                let path = self
                    .dir
                    .join("agents")
                    .join(format!("{}.yaml", agency.organisation));
                write_yaml(&path, &config)?;
                Ok((path, config))
            })
            .collect()
    }
}

pub(crate) fn write_yaml(path: &Path, config: &AgentConfig) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let text = serde_saphyr::to_string(config)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
