//! `joinery-bench region`: the whole system at a region's scale (ten
//! million children is the size a national deployment plans for), step by
//! step, every part a real process: the `joinery` binary beside the bench
//! synthesises, serves, delivers and links, and the bench asks as an
//! analyst over mutual TLS.
//!
//! Steps, each one's figures kept in `--dir/region.json`:
//! 1. `synth`: `joinery synth --csv-only`; the last rows of the council's
//!    extract are held back as two later deliveries (a small one that warms
//!    the gateway's linker, then `--delivery` rows).
//! 2. `ingest`: a gateway (linkage paused) and one `joinery agent run` per
//!    agency at once; a progress bar follows the records stored.
//! 3. `full-link`: `joinery gateway relink --full` (a model fitted, every
//!    pair blocking proposes compared).
//! 4. `delivery`: a gateway linking every two seconds; the warm-up delivery,
//!    its run (the first after a start reads every entity, and compares
//!    only what is new against the links the full link stored), then the
//!    delivery and the duration of the incremental run that links it, from
//!    the gateway's own `joinery_gateway_linkage_run_seconds`.
//! 5. `same-model`: `joinery gateway relink --same-model` compares every
//!    pair again under the stored model: the incremental runs must have left
//!    exactly the people it makes, or the bench fails.
//! 6. `answers`: the risk tiers by segment as an analyst: the first answer
//!    (the gateway loads the population), then warm answers each as of
//!    another day; the memory the population holds per child.
//!
//! Each process's peak resident memory is its `VmHWM`, sampled while it
//! runs. A run given the same `--dir` again skips the steps done and goes
//! on (an interrupted ingest resumes from the agents' checkpoints), so a
//! run of hours survives a stop; `--until STEP` stops after a step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use joinery_agent::summary::{EXIT_OK, EXIT_QUARANTINED};
use joinery_crypto::identity::PeerIdentity;
use joinery_crypto::pki::{CertificateAuthority, Validity};
use joinery_crypto::tls::TlsFiles;
use joinery_gateway::metrics as gateway_metrics;
use joinery_gateway::storage::Storage;
use joinery_proto::v1::RunRequest;
use serde::{Deserialize, Serialize};

use super::{ServerProcess, free_port, joinery_binary, peak_rss_kib, percentile, rss_kib};
use crate::commands::probe::http_get;
use crate::sandbox::{Sandbox, SandboxSpec, write_agent_config};

#[derive(Debug, clap::Args)]
pub struct RegionArgs {
    /// Children in the region.
    #[arg(long, default_value_t = 10_000_000)]
    children: usize,
    /// Working directory: everything the run makes is kept here, and a run
    /// given the same directory again goes on from the last step it
    /// finished.
    #[arg(long)]
    dir: PathBuf,
    /// PostgreSQL database to measure on: an empty scratch database (the
    /// run's data is left in it) [default: SQLite in --dir].
    #[arg(long)]
    database_url: Option<String>,
    /// Rows of the council's extract held back and delivered after the
    /// full link, to time an incremental linkage run.
    #[arg(long, default_value_t = 10_000)]
    delivery: usize,
    /// Warm answers timed after the first.
    #[arg(long, default_value_t = 20)]
    answers: usize,
    /// Answer from this many gateways each holding one shard of the
    /// population (`--holds-shard`), through a gateway answering from
    /// them (`--answer-from-shards`), rather than from one gateway holding
    /// everyone (0).
    #[arg(long, default_value_t = 0)]
    answer_shards: u32,
    /// Random seed for the synthetic population.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Stop after this step (a later run with the same --dir goes on).
    #[arg(long, value_enum)]
    until: Option<Step>,
}

/// The bench's steps, in the order they run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Synth,
    Ingest,
    FullLink,
    Delivery,
    SameModel,
    Answers,
}

/// `--dir/region.json`: what the run is, and the figures of each step done.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    #[serde(flatten)]
    run: RunOptions,
    done: BTreeMap<Step, Vec<String>>,
}

/// The options that make a run: a directory holds one run.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct RunOptions {
    children: usize,
    seed: u64,
    database_url: Option<String>,
    delivery: usize,
}

impl RunOptions {
    fn of(args: &RegionArgs) -> Self {
        Self {
            children: args.children,
            seed: args.seed,
            database_url: args.database_url.clone(),
            delivery: args.delivery,
        }
    }
}

const STATE: &str = "region.json";
/// Rows of the first held-back delivery, which warms the gateway's linker.
const WARM_UP_ROWS: usize = 1_000;
const ANALYST: &str = "test-analyst";
const SERVER_NAME: &str = "localhost";
/// How often a running process's memory (and the progress) is read: a
/// process that ends sooner has no figure.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// A gateway's linkage paused, so a step measures its own work alone.
const LINKAGE_PAUSED: &[&str] = &["--linkage-interval-secs", "100000000"];
/// What one record costs the database once ingested: records, events,
/// linkage entities with their blocking keys, the spine and the change
/// log, with their indexes. Measured on PostgreSQL: 2,200 bytes (47 GB for
/// 21.6 million records) while blocking keys had a table of their own (15
/// GB of it); 1,670 bytes since they sit on their entity's row (166 MB for
/// 99,441 records, against 236 MB before). Ten million children need about
/// 42 GB free where the database lives.
const STORED_BYTES_PER_RECORD: f64 = 1_700.0;
/// Certificates long enough for a run of days.
const VALIDITY_DAYS: i64 = 30;

pub async fn run(args: RegionArgs) -> anyhow::Result<ExitCode> {
    let mut state = open(&args).await?;
    let run = Region {
        sandbox: Sandbox::at(&args.dir),
        dir: args.dir.clone(),
        database_url: args.database_url.clone(),
    };
    for &step in <Step as clap::ValueEnum>::value_variants() {
        if let Some(figures) = state.done.get(&step) {
            println!("{step:?}: done earlier");
            print_figures(figures);
            continue;
        }
        println!("{step:?}:");
        let figures = match step {
            Step::Synth => run.synth(&args).await?,
            Step::Ingest => run.ingest().await?,
            Step::FullLink => run.full_link().await?,
            Step::Delivery => run.deliveries().await?,
            Step::SameModel => run.same_model().await?,
            Step::Answers => {
                run.answers(args.answers, args.children, args.answer_shards)
                    .await?
            }
        };
        print_figures(&figures);
        state.done.insert(step, figures);
        save(&args.dir, &state)?;
        if args.until == Some(step) {
            println!(
                "stopped after {step:?}; run again with --dir {} to go on",
                args.dir.display()
            );
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_figures(figures: &[String]) {
    for line in figures {
        println!("  {line}");
    }
}

/// The run in `--dir`: a new one (a deployment made, an empty database
/// checked), or the one there, if it is the same run.
async fn open(args: &RegionArgs) -> anyhow::Result<State> {
    let path = args.dir.join(STATE);
    if path.exists() {
        let text = std::fs::read_to_string(&path)?;
        let state: State =
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
        let held = &state.run;
        anyhow::ensure!(
            *held == RunOptions::of(args),
            "{} holds a run of {} children (seed {}, delivery {}, database {}); give the same \
             options to go on with it, or a new --dir",
            args.dir.display(),
            held.children,
            held.seed,
            held.delivery,
            held.database_url.as_deref().unwrap_or("SQLite")
        );
        return Ok(state);
    }
    anyhow::ensure!(
        !args.dir.exists() || std::fs::read_dir(&args.dir)?.next().is_none(),
        "{} is not empty and holds no region run; name a new directory",
        args.dir.display()
    );
    if let Some(url) = &args.database_url {
        let generation = Storage::open(url).await?.data_generation().await?;
        anyhow::ensure!(
            generation == 0,
            "the database already holds data (generation {generation}); give an empty scratch database"
        );
    }
    std::fs::create_dir_all(&args.dir)?;
    Sandbox::create(
        &args.dir,
        &SandboxSpec {
            ca_name: "region bench CA",
            validity_days: VALIDITY_DAYS,
            server_names: &[SERVER_NAME.to_owned()],
            organisations: &[],
            analysts: &[ANALYST],
        },
    )?;
    let state = State {
        run: RunOptions::of(args),
        done: BTreeMap::new(),
    };
    save(&args.dir, &state)?;
    Ok(state)
}

fn save(dir: &Path, state: &State) -> anyhow::Result<()> {
    let path = dir.join(STATE);
    let temporary = path.with_extension("json.new");
    std::fs::write(&temporary, serde_json::to_string_pretty(state)?)?;
    std::fs::rename(&temporary, &path).with_context(|| format!("writing {}", path.display()))
}

struct Region {
    sandbox: Sandbox,
    dir: PathBuf,
    database_url: Option<String>,
}

/// One agency's files, as the synth step left them.
#[derive(Debug, Serialize, Deserialize)]
struct Agency {
    organisation: String,
    extract: PathBuf,
    mapping: PathBuf,
}

/// What the synth step wrote, for the later steps.
#[derive(Debug, Serialize, Deserialize)]
struct Extracts {
    agencies: Vec<Agency>,
    /// Data rows in the extracts the ingest step delivers.
    rows: usize,
    /// The council's held-back rows: the warm-up and the delivery.
    warm_up: Agency,
    delivery: Agency,
}

const EXTRACTS: &str = "extracts.json";

/// A process run to its end: how long it took, its peak memory.
struct Finished {
    took: Duration,
    peak_kib: u64,
}

impl Region {
    async fn synth(&self, args: &RegionArgs) -> anyhow::Result<Vec<String>> {
        let out = self.dir.join("synth");
        if out.exists() {
            // A synth interrupted part-way: write it again.
            std::fs::remove_dir_all(&out)?;
        }
        let mut command = joinery(&["synth", "--csv-only"])?;
        command
            .arg("--out")
            .arg(&out)
            .args(["--children", &args.children.to_string()])
            .args(["--seed", &args.seed.to_string()]);
        let finished = self
            .run_to_end(
                "synth",
                vec![command],
                &spinner("writing the synthetic extracts"),
                None,
            )
            .await?;
        // The tidy profile's agencies, each extract and mapping named by
        // its dataset (as `joinery synth` writes them).
        let agencies: Vec<Agency> = crate::synth::agencies(crate::synth::Profile::Tidy)
            .map(|a| Agency {
                organisation: a.organisation.to_owned(),
                extract: out.join("extracts").join(format!("{}.csv", a.dataset)),
                mapping: out.join("mappings").join(format!("{}.yaml", a.dataset)),
            })
            .collect();
        let mut rows = 0;
        let mut council = None;
        for agency in &agencies {
            let extract_rows = data_rows(&agency.extract)?;
            rows += extract_rows;
            if agency.organisation == COUNCIL {
                council = Some((agency, extract_rows));
            }
            self.sandbox
                .issue_organisation(&agency.organisation, VALIDITY_DAYS)?;
        }
        let (council, council_rows) = council.context("synth wrote no council extract")?;
        let [warm_up, delivery] = hold_back(
            council,
            council_rows,
            &out.join("held-back"),
            WARM_UP_ROWS,
            args.delivery,
        )?;
        // Held back: delivered later.
        rows -= WARM_UP_ROWS + args.delivery;
        let extracts = Extracts {
            agencies,
            rows,
            warm_up,
            delivery,
        };
        std::fs::write(
            self.dir.join(EXTRACTS),
            serde_json::to_string_pretty(&extracts)?,
        )?;
        Ok(vec![
            format!(
                "{} children: {rows} rows for {} agencies to ingest, {} + {} held back, in {:.1} s; peak memory {}",
                args.children,
                extracts.agencies.len(),
                WARM_UP_ROWS,
                args.delivery,
                finished[0].took.as_secs_f64(),
                mib(finished[0].peak_kib)
            ),
            format!(
                "the database will need about {:.1} GB free for them (about {STORED_BYTES_PER_RECORD:.0} bytes a record once ingested)",
                rows as f64 * STORED_BYTES_PER_RECORD / 1e9
            ),
        ])
    }

    async fn ingest(&self) -> anyhow::Result<Vec<String>> {
        let extracts = self.extracts()?;
        let mut gateway = self.start_gateway(LINKAGE_PAUSED)?;
        let configs = extracts
            .agencies
            .iter()
            .map(|a| self.agent(a, &gateway.process.address, "ingest"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let bar = ProgressBar::new(extracts.rows as u64).with_style(
            ProgressStyle::with_template(
                "  {bar:40} {human_pos}/{human_len} records stored this run, {per_sec} [{elapsed_precise}, about {eta} to go]",
            )?,
        );
        let started = Instant::now();
        let agents = self
            .run_to_end(
                "agent",
                configs
                    .iter()
                    .map(|c| agent_run(c))
                    .collect::<anyhow::Result<_>>()?,
                &bar,
                Some(&gateway.metrics),
            )
            .await?;
        let took = started.elapsed();
        let stored = gateway.scrape().await?.records_stored();
        let figures = vec![
            format!(
                "{stored:.0} records stored over mutual TLS in {:.0} s = {:.0} records/s (this run; {} agents at once)",
                took.as_secs_f64(),
                stored / took.as_secs_f64(),
                agents.len()
            ),
            format!(
                "peak memory: gateway {}, agents {}",
                mib(gateway.process.peak_rss_kib().unwrap_or(0)),
                agents
                    .iter()
                    .zip(&extracts.agencies)
                    .map(|(f, a)| format!("{} {}", a.organisation, mib(f.peak_kib)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ];
        gateway.process.stop("TERM");
        Ok(figures)
    }

    async fn full_link(&self) -> anyhow::Result<Vec<String>> {
        let (finished, output) = self
            .relink("--full", "linking everyone with a freshly fitted model")
            .await?;
        Ok(vec![
            format!(
                "full link in {:.1} s; peak memory {}",
                finished.took.as_secs_f64(),
                mib(finished.peak_kib)
            ),
            output,
        ])
    }

    async fn deliveries(&self) -> anyhow::Result<Vec<String>> {
        let extracts = self.extracts()?;
        let mut gateway = self.start_gateway(&["--linkage-interval-secs", "2"])?;
        // The bench reads the store beside the gateway only to see when
        // nothing is left to link.
        let storage = Storage::open(&self.database_url()).await?;
        let versions: Vec<u32> =
            joinery_gateway::agreements::Agreements::load_dir(&self.sandbox.agreements_dir())?
                .linkage_params()
                .iter()
                .map(|p| p.version)
                .collect();
        let mut figures = Vec::new();
        for (agency, what, runs_are) in [
            (
                &extracts.warm_up,
                "warm-up delivery",
                "the first run after the gateway starts reads every entity, and compares what is new against the links stored",
            ),
            (
                &extracts.delivery,
                "delivery",
                "incremental: only what is new is read and compared",
            ),
        ] {
            let before = gateway.scrape().await?;
            let config = self.agent(agency, &gateway.process.address, what)?;
            let delivered = self
                .run_to_end("agent", vec![agent_run(&config)?], &spinner(what), None)
                .await?;
            if gateway.scrape().await?.records_stored() == before.records_stored() {
                // An interrupted run delivered it before: its agent's
                // checkpoint sent nothing again, so no run will follow.
                figures.push(format!(
                    "{what}: delivered and linked by an earlier, interrupted run (not timed)"
                ));
                continue;
            }
            let waiting = spinner(&format!("waiting until the {what} is linked"));
            let started = Instant::now();
            let after = self
                .until_linked(&gateway, &storage, &versions, &before)
                .await?;
            waiting.finish_and_clear();
            let runs = after.linkage_runs() - before.linkage_runs();
            let run_took = after.linkage_seconds() - before.linkage_seconds();
            figures.push(format!(
                "{what} of {} rows stored in {:.1} s, linked {:.1} s after by {runs:.0} run(s) taking {run_took:.1} s in all ({runs_are})",
                data_rows(&agency.extract)?,
                delivered[0].took.as_secs_f64(),
                started.elapsed().as_secs_f64(),
            ));
        }
        figures.push(format!(
            "peak memory of the gateway {}",
            mib(gateway.process.peak_rss_kib().unwrap_or(0))
        ));
        gateway.process.stop("TERM");
        Ok(figures)
    }

    /// Waits until the gateway has run linkage since `before` and nothing
    /// is left pending under any of `versions` (a run may begin
    /// mid-delivery; the next then links the rest), returning the metrics
    /// then; a failed run fails.
    async fn until_linked(
        &self,
        gateway: &Gateway,
        storage: &Storage,
        versions: &[u32],
        before: &Scrape,
    ) -> anyhow::Result<Scrape> {
        let failures = |s: &Scrape| s.sum(gateway_metrics::LINKAGE_FAILURES);
        loop {
            let now = gateway.scrape().await?;
            let mut pending = false;
            for version in versions {
                pending |= storage.linkage_pending(*version).await?;
            }
            if now.linkage_runs() > before.linkage_runs() && !pending {
                return Ok(now);
            }
            if failures(&now) > failures(before) {
                bail!(
                    "the gateway's linkage run failed; see {}",
                    self.dir.join("gateway.log").display()
                );
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    async fn same_model(&self) -> anyhow::Result<Vec<String>> {
        let (finished, output) = self
            .relink(
                "--same-model",
                "comparing every pair again under the stored model",
            )
            .await?;
        let moved = moved(&output).with_context(|| format!("relink said: {output}"))?;
        if moved != 0 {
            bail!(
                "comparing every pair again moved {moved} person ids: the incremental runs did not leave the people a full comparison makes ({output})"
            );
        }
        Ok(vec![format!(
            "every pair compared again in {:.1} s (peak memory {}): nobody moved, so the incremental runs equal a full comparison",
            finished.took.as_secs_f64(),
            mib(finished.peak_kib)
        )])
    }

    async fn answers(
        &self,
        answers: usize,
        children: usize,
        shards: u32,
    ) -> anyhow::Result<Vec<String>> {
        let mut holding = Vec::new();
        for index in 0..shards {
            let shard = format!("{index}/{shards}");
            holding
                .push(self.start_gateway(&[LINKAGE_PAUSED, &["--holds-shard", &shard]].concat())?);
        }
        let mut gateway = match shards {
            0 => self.start_gateway(LINKAGE_PAUSED)?,
            _ => {
                // The answering gateway's certificate, issued by the first
                // run that answers from shards.
                let dir = self.sandbox.pki().join("gateways");
                let issued = (
                    dir.join("gateway-answering.pem"),
                    dir.join("gateway-answering.key"),
                );
                if !issued.0.exists() {
                    CertificateAuthority::load(&self.sandbox.pki())?.issue_client(
                        &PeerIdentity::Gateway("answering".to_owned()),
                        Validity::days_from_now(VALIDITY_DAYS)?,
                        &dir,
                    )?;
                }
                // By the name their certificate carries.
                let addresses: Vec<String> = holding
                    .iter()
                    .map(|g| g.process.address.replace("127.0.0.1", SERVER_NAME))
                    .collect();
                let (cert, key) = (
                    issued.0.display().to_string(),
                    issued.1.display().to_string(),
                );
                let from = addresses.join(",");
                self.start_gateway(
                    &[
                        LINKAGE_PAUSED,
                        &[
                            "--answer-from-shards",
                            &from,
                            "--shard-tls-cert",
                            &cert,
                            "--shard-tls-key",
                            &key,
                        ],
                    ]
                    .concat(),
                )?
            }
        };
        let (cert, key) = self.sandbox.analyst_cert(ANALYST);
        let tls = TlsFiles {
            ca: self.sandbox.ca(),
            cert,
            key,
            crl: None,
        };
        let mut client =
            crate::commands::query::connect(&gateway.process.address, SERVER_NAME, &tls).await?;
        let pid = gateway.process.child.id();
        let before = rss_kib(pid).unwrap_or(0);
        let shards_before: Vec<u64> = holding
            .iter()
            .map(|g| rss_kib(g.process.child.id()).unwrap_or(0))
            .collect();
        let today = time::OffsetDateTime::now_utc().date();
        let ask = |day: i64| RunRequest {
            query: format!(
                "{}\nreference_date: {}\n",
                super::query::QUERY,
                today - time::Duration::days(day)
            ),
        };
        let loading = spinner("the first answer (the gateway loads the population)");
        let started = Instant::now();
        let table = client.run(ask(0)).await?.into_inner();
        let first = started.elapsed();
        loading.finish_and_clear();
        let held = rss_kib(pid).unwrap_or(0).saturating_sub(before) * 1024;
        let shards_held: Vec<u64> = holding
            .iter()
            .zip(&shards_before)
            .map(|(g, before)| {
                rss_kib(g.process.child.id())
                    .unwrap_or(0)
                    .saturating_sub(*before)
                    * 1024
            })
            .collect();
        let mut times = Vec::with_capacity(answers);
        let bar = ProgressBar::new(answers as u64);
        for day in 1..=answers as i64 {
            // Each as of another day, so none is a replay of a release.
            let started = Instant::now();
            client.run(ask(day)).await?;
            times.push(started.elapsed());
            bar.inc(1);
        }
        bar.finish_and_clear();
        times.sort();
        let mut figures = vec![
            format!(
                "risk tiers by segment ({} rows x {} columns) as an analyst over mutual TLS{}: first answer {:.1} s; then p50 {:.0} ms, p90 {:.0} ms over {answers} answers",
                table.rows.len(),
                table.columns.len(),
                match shards {
                    0 => String::new(),
                    n => format!(", from {n} gateways each holding one shard"),
                },
                first.as_secs_f64(),
                percentile(&times, 0.5).as_secs_f64() * 1e3,
                percentile(&times, 0.9).as_secs_f64() * 1e3,
            ),
            format!(
                "gateway memory: {} MiB more resident after the first answer = {:.0} bytes per child; peak {}",
                held / (1024 * 1024),
                held as f64 / children as f64,
                mib(gateway.process.peak_rss_kib().unwrap_or(0))
            ),
        ];
        for (index, (shard, held)) in holding.iter().zip(&shards_held).enumerate() {
            figures.push(format!(
                "shard {index}/{shards}: {} MiB more resident after the first answer = {:.0} bytes per child of the region; peak {}",
                held / (1024 * 1024),
                *held as f64 / children as f64,
                mib(shard.process.peak_rss_kib().unwrap_or(0))
            ));
        }
        gateway.process.stop("TERM");
        for mut shard in holding {
            shard.process.stop("TERM");
        }
        Ok(figures)
    }

    /// The store's URL: `--database-url`, or SQLite in the gateway's directory.
    fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| Storage::sqlite_url(&self.dir.join("gateway")))
    }

    fn extracts(&self) -> anyhow::Result<Extracts> {
        let path = self.dir.join(EXTRACTS);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// The gateway on this run's store, with its metrics served.
    fn start_gateway(&self, extra: &[&str]) -> anyhow::Result<Gateway> {
        let metrics = free_port()?;
        let mut args = extra.to_vec();
        args.extend(["--metrics-listen", &metrics]);
        let process = ServerProcess::start(
            &self.sandbox,
            "127.0.0.1:0",
            &self.dir.join("gateway"),
            self.database_url.as_deref(),
            Some(&self.dir.join("gateway.log")),
            &args,
        )?;
        Ok(Gateway {
            process,
            metrics: format!("http://{metrics}/metrics"),
        })
    }

    /// `agency`'s agent configuration for delivering its extract to the
    /// gateway at `address`, written to `agents/NAME-ORG.yaml` (its spool
    /// and checkpoints are the agency's own, kept between runs).
    fn agent(&self, agency: &Agency, address: &str, name: &str) -> anyhow::Result<PathBuf> {
        let mut config = super::csv_agent(
            &self.sandbox,
            &agency.organisation,
            address,
            &agency.extract,
            &agency.mapping,
        )?;
        config.batch_size = 1000;
        let path = self.dir.join("agents").join(format!(
            "{}-{}.yaml",
            name.replace(' ', "-"),
            agency.organisation
        ));
        write_agent_config(&path, &config)?;
        Ok(path)
    }

    async fn relink(&self, mode: &str, what: &str) -> anyhow::Result<(Finished, String)> {
        let log = self.dir.join(format!("relink{mode}.out"));
        let mut command = joinery(&["gateway", "relink", mode])?;
        command
            .arg("--data-dir")
            .arg(self.dir.join("gateway"))
            .arg("--agreements")
            .arg(self.sandbox.agreements_dir())
            .stdout(super::append(&log)?);
        if let Some(url) = &self.database_url {
            command.arg("--database-url").arg(url);
        }
        let mut finished = self
            .run_to_end("relink", vec![command], &spinner(what), None)
            .await?;
        let output = std::fs::read_to_string(&log)?;
        let last = output
            .lines()
            .rev()
            .find(|l| l.starts_with("linkage parameters"))
            .with_context(|| format!("relink {mode} said no run happened: {output}"))?;
        Ok((finished.remove(0), last.to_owned()))
    }

    /// Runs `commands` at once to their ends, sampling each one's memory
    /// (and, given the gateway's metrics, moving `bar` with the records
    /// stored). Their error output goes to `--dir/NAME.log`; any failure
    /// fails the step.
    async fn run_to_end(
        &self,
        name: &str,
        commands: Vec<Command>,
        bar: &ProgressBar,
        records_stored: Option<&str>,
    ) -> anyhow::Result<Vec<Finished>> {
        let log = self.dir.join(format!("{name}.log"));
        let started = Instant::now();
        let mut running = Vec::new();
        for mut command in commands {
            command.stderr(super::append(&log)?);
            running.push((command.spawn().context("starting joinery")?, None, 0u64));
        }
        while running.iter().any(|(_, status, _)| status.is_none()) {
            for (child, status, peak) in &mut running {
                if status.is_none() {
                    *peak = peak_rss_kib(child.id()).unwrap_or(*peak);
                    *status = child.try_wait()?.map(|s| (s, started.elapsed()));
                }
            }
            if let Some(url) = records_stored {
                if let Ok(scrape) = Scrape::of(url).await {
                    bar.set_position(scrape.records_stored() as u64);
                }
            } else {
                bar.tick();
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        bar.finish_and_clear();
        running
            .into_iter()
            .map(|(_, status, peak_kib)| {
                let (status, took) = status.context("a process not waited for")?;
                // Agents exit 2 when rows were quarantined, as synthetic
                // extracts' deliberately broken rows are.
                let fine = status.code() == Some(EXIT_OK)
                    || (name == "agent" && status.code() == Some(EXIT_QUARANTINED));
                anyhow::ensure!(fine, "{name} failed ({status}); see {}", log.display());
                Ok(Finished { took, peak_kib })
            })
            .collect()
    }
}

/// A running gateway and its metrics URL.
struct Gateway {
    process: ServerProcess,
    metrics: String,
}

impl Gateway {
    async fn scrape(&self) -> anyhow::Result<Scrape> {
        Scrape::of(&self.metrics).await
    }
}

/// One reading of a gateway's Prometheus page.
struct Scrape(String);

impl Scrape {
    async fn of(url: &str) -> anyhow::Result<Self> {
        Ok(Self(http_get(url).await?))
    }

    /// The sum of a metric's series (every label).
    fn sum(&self, name: &str) -> f64 {
        self.0
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn linkage_runs(&self) -> f64 {
        self.sum(gateway_metrics::LINKAGE_RUNS)
    }

    /// Seconds the gateway's linkage runs have taken so far.
    fn linkage_seconds(&self) -> f64 {
        self.sum(&format!("{}_sum", gateway_metrics::LINKAGE_SECONDS))
    }

    fn records_stored(&self) -> f64 {
        self.sum(gateway_metrics::RECORDS)
    }
}

/// `joinery ARGS`, its output discarded unless the caller says otherwise.
fn joinery(args: &[&str]) -> anyhow::Result<Command> {
    let mut command = Command::new(joinery_binary()?);
    command
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    Ok(command)
}

fn agent_run(config: &Path) -> anyhow::Result<Command> {
    let mut command = joinery(&["agent", "run", "--no-progress", "--config"])?;
    command.arg(config);
    Ok(command)
}

fn spinner(message: &str) -> ProgressBar {
    let spinner = ProgressBar::new_spinner()
        .with_style(
            ProgressStyle::with_template("  {spinner} {msg} [{elapsed_precise}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        )
        .with_message(message.to_owned());
    spinner.enable_steady_tick(Duration::from_millis(250));
    spinner
}

/// A peak memory figure (none when the process ended before it was read).
fn mib(kib: u64) -> String {
    if kib == 0 {
        "not read (too quick)".to_owned()
    } else {
        format!("{} MiB", kib / 1024)
    }
}

/// The person ids a relink moved, from its line.
fn moved(line: &str) -> Option<u64> {
    let before = line.split(" person ids moved").next()?;
    before.rsplit(' ').next()?.parse().ok()
}

/// The council, whose extract the held-back deliveries come from.
const COUNCIL: &str = "E08000099";

/// Data rows (lines after the header) of an extract.
fn data_rows(path: &Path) -> anyhow::Result<usize> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(std::io::BufReader::new(file)
        .lines()
        .count()
        .saturating_sub(1))
}

/// Moves the last `warm_up + delivery` of the `rows` rows of `agency`'s
/// extract into two extracts of their own under `dir` (each with the
/// header), in order. Synthetic extracts hold one row per line.
fn hold_back(
    agency: &Agency,
    rows: usize,
    dir: &Path,
    warm_up: usize,
    delivery: usize,
) -> anyhow::Result<[Agency; 2]> {
    use std::io::{BufRead, BufWriter, Write};
    std::fs::create_dir_all(dir)?;
    anyhow::ensure!(
        rows > warm_up + delivery,
        "the council's extract has {rows} rows, too few to hold back {} (use more --children or a smaller --delivery)",
        warm_up + delivery
    );
    let kept = rows - warm_up - delivery;
    let whole = agency.extract.with_extension("csv.whole");
    std::fs::rename(&agency.extract, &whole)?;
    let mut lines = std::io::BufReader::new(std::fs::File::open(&whole)?).lines();
    let header = lines.next().context("an empty extract")??;
    let name = |part: &str| dir.join(format!("{part}.csv"));
    for (path, count) in [
        (agency.extract.clone(), kept),
        (name("warm-up"), warm_up),
        (name("delivery"), delivery),
    ] {
        let mut out = BufWriter::new(std::fs::File::create(&path)?);
        writeln!(out, "{header}")?;
        for line in lines.by_ref().take(count) {
            writeln!(out, "{}", line?)?;
        }
        out.flush()?;
    }
    std::fs::remove_file(&whole)?;
    let part = |file: &str| Agency {
        organisation: agency.organisation.clone(),
        extract: name(file),
        mapping: agency.mapping.clone(),
    };
    Ok([part("warm-up"), part("delivery")])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_back_rows_are_the_last_in_order_each_file_with_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let extract = dir.path().join("council.csv");
        let rows: Vec<String> = (1..=10).map(|i| format!("row{i},x")).collect();
        std::fs::write(&extract, format!("id,v\n{}\n", rows.join("\n"))).unwrap();
        let agency = Agency {
            organisation: COUNCIL.to_owned(),
            extract: extract.clone(),
            mapping: dir.path().join("council.yaml"),
        };
        let [warm_up, delivery] = hold_back(&agency, 10, &dir.path().join("held"), 2, 3).unwrap();
        let read = |path: &Path| std::fs::read_to_string(path).unwrap();
        assert_eq!(
            read(&extract),
            "id,v\nrow1,x\nrow2,x\nrow3,x\nrow4,x\nrow5,x\n"
        );
        assert_eq!(read(&warm_up.extract), "id,v\nrow6,x\nrow7,x\n");
        assert_eq!(read(&delivery.extract), "id,v\nrow8,x\nrow9,x\nrow10,x\n");
        assert_eq!(delivery.mapping, agency.mapping);
        // Too few rows to hold back is an error naming what to change.
        let rows = data_rows(&extract).unwrap();
        let error = hold_back(&agency, rows, &dir.path().join("held"), 2, 3).unwrap_err();
        assert!(error.to_string().contains("too few"), "{error}");
    }

    #[test]
    fn the_people_a_relink_moved_are_read_from_its_line() {
        let line = "linkage parameters v5: same-model run over 9 records' encodings (0 new); \
                    12 candidate pairs, 3 links; 0 person ids moved on the spine";
        assert_eq!(moved(line), Some(0));
        assert_eq!(moved(&line.replace("; 0 person", "; 17 person")), Some(17));
        assert_eq!(moved("no run"), None);
    }

    #[tokio::test]
    async fn a_metric_is_summed_over_its_labels_and_not_confused_with_a_longer_name() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0; 1024];
            let _ = socket.read(&mut request).await.unwrap();
            let page = "HTTP/1.0 200 OK\r\n\r\n# TYPE m counter\nm{a=\"x\"} 2\nm{a=\"y\"} 3.5\nm_sum 100\nm 1\n";
            socket.write_all(page.as_bytes()).await.unwrap();
        });
        let scrape = Scrape::of(&format!("http://{address}/metrics"))
            .await
            .unwrap();
        assert_eq!(scrape.sum("m"), 6.5);
    }
}
