//! Test harness: a throwaway deployment (PKI, keys) in a temporary directory,
//! the real `joinery` binary started as separate processes, and access to the
//! gateway's real database (SQLite file or a fresh PostgreSQL database).

#![allow(dead_code)] // each test file uses part of the harness

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub mod ingest;
pub mod keyholders;
pub mod otlp;

use joinery::sandbox::{Sandbox, SandboxSpec, sign_example_agreement};
use joinery_agent::keys::ReleaseKeys;
use joinery_agent::release::Releaser;
use joinery_crypto::keys::SecretKey;
use joinery_gateway::rekey::Rekeyer;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

pub const COUNCIL: &str = "E08000099";
pub const CAMHS: &str = "RX9";
pub const SALT: &str = "RY9";
/// The three synthetic agencies and the dataset of each one's CSV extract.
pub const THREE_AGENCIES: [(&str, &str); 3] = [
    (COUNCIL, "csc_referrals"),
    (CAMHS, "camhs_referrals"),
    (SALT, "salt_contacts"),
];
pub const ANALYST: &str = "test-analyst";
/// The example agreement the tests run under.
pub const AGREEMENT: &str = "children-at-risk-stratification";

/// The `joinery` binary under test.
pub fn joinery() -> Command {
    Command::new(env!("CARGO_BIN_EXE_joinery"))
}

/// A local address nothing listens on, for a process the test starts to
/// listen on. Chosen below the ephemeral range (Linux's is 32768–60999):
/// a port the kernel handed out and took back could be given again to any
/// outgoing connection (a database client's, a gRPC client's) before the
/// process binds it, which once failed a run with "Address already in
/// use". Ports are tried from a per-process random start until one binds.
pub fn free_local_address() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() * 7919 % 12_000;
    loop {
        let port = 20_000 + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        if let Ok(probe) = std::net::TcpListener::bind(("127.0.0.1", port as u16)) {
            return probe.local_addr().unwrap().to_string();
        }
    }
}

/// Copies each of `files` from `from` to beside its place in `into`, then
/// renames it into place: the atomic way `docs/certificates.md` says to
/// install renewed certificates and keys under a running process.
pub fn install_renamed(from: &Path, into: &Path, files: &[&str]) {
    for file in files {
        let staged = into.join(format!("{file}.new"));
        std::fs::copy(from.join(file), &staged).unwrap();
        std::fs::rename(&staged, into.join(file)).unwrap();
    }
}

/// The text of a file of this repository (`README.md`, `deploy/…`).
pub fn repo(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The `key=` value of `deploy/systemd/{unit}`.
pub fn unit_value(unit: &str, key: &str) -> String {
    repo(&format!("deploy/systemd/{unit}"))
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{unit} has no {key}="))
        .to_owned()
}

/// The `joinery-bench` binary under test (benchmarks, fault injection).
pub fn joinery_bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_joinery-bench"))
}

/// Runs `joinery args…`, panicking with its output if it fails.
pub fn joinery_ok(args: &[&str]) -> Output {
    succeeds(joinery(), args)
}

/// Runs `joinery-bench args…`, panicking with its output if it fails.
pub fn joinery_bench_ok(args: &[&str]) -> Output {
    succeeds(joinery_bench(), args)
}

/// Runs `command args…`, panicking with its output if it fails.
fn succeeds(mut command: Command, args: &[&str]) -> Output {
    let output = command.args(args).output().expect("run the binary");
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs `command`, asserting it fails and its error output says `says`.
pub fn fails_saying(mut command: Command, says: &str) {
    let output = command.output().expect("run the binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{command:?} succeeded: {stderr}");
    assert!(
        stderr.contains(says),
        "{command:?} did not say {says:?}: {stderr}"
    );
}

/// A deployment's files in a temporary directory.
pub struct Deployment {
    pub dir: tempfile::TempDir,
    /// The deployment's files, laid out as the demo and the benchmarks lay
    /// them out: in `dir`, or in the demo's directory in it.
    pub sandbox: Sandbox,
    /// The gateway's data directory.
    gateway_data: PathBuf,
    /// Extra environment for every gateway and agent process started.
    env: Vec<(String, String)>,
}

impl Deployment {
    /// CA, gateway certificate (localhost, 127.0.0.1), analyst certificate,
    /// agency certificates for the three synthetic agencies, linkage key,
    /// the signed example agreement, an empty opt-out list.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let sandbox = Sandbox::create(
            dir.path(),
            &SandboxSpec {
                ca_name: "Joinery test CA",
                validity_days: 90,
                server_names: &["localhost".to_owned(), "127.0.0.1".to_owned()],
                organisations: &[COUNCIL, CAMHS, SALT],
                analysts: &[ANALYST],
            },
        )
        .expect("a sandbox deployment");
        Self {
            gateway_data: dir.path().join("gateway-data"),
            sandbox,
            dir,
            env: Vec::new(),
        }
    }

    /// What `joinery demo --children N` leaves behind — its CA and
    /// certificates, the signed agreement, the gateway's SQLite store with
    /// three agencies' extracts delivered and linked, its agents'
    /// configurations — and what the demo printed.
    pub fn demo(children: u32) -> (Self, String) {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("demo");
        let out = joinery_ok(&[
            "demo",
            "--children",
            &children.to_string(),
            "--dir",
            root.to_str().unwrap(),
        ]);
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            Self {
                gateway_data: root.join("gateway"),
                sandbox: Sandbox::at(&root),
                dir,
                env: Vec::new(),
            },
            printed,
        )
    }

    /// Synthetic extracts for the three agencies (`joinery synth`) in `synth/`.
    pub fn synth(&self, children: u32, seed: u32) -> PathBuf {
        let out = self.path("synth");
        joinery_ok(&[
            "synth",
            "--out",
            out.to_str().unwrap(),
            "--children",
            &children.to_string(),
            "--seed",
            &seed.to_string(),
        ]);
        out
    }

    /// Starts every later gateway and agent process with `env` too.
    pub fn with_env(mut self, env: Vec<(String, String)>) -> Self {
        self.env.extend(env);
        self
    }

    /// Where the gateway's signed agreements are.
    pub fn agreements_dir(&self) -> PathBuf {
        self.sandbox.agreements_dir()
    }

    /// The signed example agreement every agent of the deployment uses.
    pub fn agreement(&self) -> PathBuf {
        self.sandbox.agreement().expect("the example agreement")
    }

    pub fn opt_out_list(&self) -> PathBuf {
        self.sandbox.opt_out_list()
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.sandbox.root().join(relative)
    }

    pub fn pki(&self) -> String {
        self.sandbox.pki().display().to_string()
    }

    pub fn ca(&self) -> PathBuf {
        self.sandbox.ca()
    }

    /// (certificate, key) issued to an organisation.
    pub fn org_cert(&self, org: &str) -> (PathBuf, PathBuf) {
        self.sandbox.org_cert(org)
    }

    pub fn analyst_cert(&self) -> (PathBuf, PathBuf) {
        self.sandbox.analyst_cert(ANALYST)
    }

    pub fn gateway_data_dir(&self) -> PathBuf {
        self.gateway_data.clone()
    }

    /// `joinery audit report` of the gateway's store for today: what an IG
    /// lead reads.
    pub fn audit_report_today(&self) -> String {
        let today = time::OffsetDateTime::now_utc().date().to_string();
        let data_dir = self.gateway_data_dir();
        let report = joinery_ok(&[
            "audit",
            "report",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--from",
            &today,
            "--to",
            &today,
        ]);
        String::from_utf8_lossy(&report.stdout).into_owned()
    }

    /// Starts `joinery gateway serve` on a free port.
    pub fn start_gateway(&self, database_url: Option<&str>, extra: &[&str]) -> GatewayProcess {
        self.start_gateway_at("127.0.0.1:0", database_url, extra)
    }

    /// Starts `joinery gateway serve` listening on `listen`.
    pub fn start_gateway_at(
        &self,
        listen: &str,
        database_url: Option<&str>,
        extra: &[&str],
    ) -> GatewayProcess {
        let log = self.path("gateway.log");
        let mut command = self.gateway_command(listen, database_url, extra);
        command.stdout(Stdio::piped()).stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .expect("gateway log"),
        );
        let mut child = command.spawn().expect("start gateway");
        let stdout = child.stdout.take().expect("gateway stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(address) = line.strip_prefix("listening on ") {
                    let _ = tx.send(address.to_owned());
                }
            }
        });
        let address = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(address) => address,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "gateway did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        GatewayProcess {
            child,
            address,
            log,
        }
    }

    /// `joinery gateway serve` on this deployment's store, listening on
    /// `listen` (on PostgreSQL at `database_url` if given), not started.
    pub fn gateway_command(
        &self,
        listen: &str,
        database_url: Option<&str>,
        extra: &[&str],
    ) -> Command {
        let mut command = joinery();
        command
            .args(["gateway", "serve", "--listen", listen, "--data-dir"])
            .arg(self.gateway_data_dir())
            .arg("--agreements")
            .arg(self.agreements_dir())
            .arg("--tls-ca")
            .arg(self.ca())
            .arg("--tls-cert")
            .arg(self.sandbox.gateway_cert().0)
            .arg("--tls-key")
            .arg(self.sandbox.gateway_cert().1)
            .arg("--tls-crl")
            .arg(self.sandbox.crl())
            .args(extra)
            .env("RUST_LOG", "debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(url) = database_url {
            command.arg("--database-url").arg(url);
        }
        command
    }

    /// Writes an agent configuration for `org` reading `extract` through
    /// `mapping`, under the deployment's agreement.
    pub fn agent_config(
        &self,
        org: &str,
        gateway: &str,
        extract: &Path,
        mapping: &Path,
    ) -> PathBuf {
        self.agent_config_under(&self.agreement(), org, gateway, extract, mapping)
    }

    /// The same, under another agreement file.
    pub fn agent_config_under(
        &self,
        agreement: &Path,
        org: &str,
        gateway: &str,
        extract: &Path,
        mapping: &Path,
    ) -> PathBuf {
        let (cert, key) = self.org_cert(org);
        let path = self.path(&format!("{org}.agent.yaml"));
        // The speech-and-language agent compresses its batches, so every
        // end-to-end run also crosses the gateway's gzip path.
        let compress = org == SALT;
        let yaml = format!(
            "organisation: {org}\n\
             agreement: '{}'\n\
             national_data_opt_out: '{}'\n\
             gateway: {{ address: '{gateway}', server_name: localhost, compress: {compress} }}\n\
             tls: {{ ca: '{}', cert: '{}', key: '{}' }}\n\
             linkage_key: '{}'\n\
             local_id_key: '{}'\n\
             quarantine_dir: '{}'\n\
             spool_dir: '{}'\n\
             retry_for_secs: 20\n\
             batch_size: 200\n\
             sources:\n  - kind: csv\n    path: '{}'\n    mapping: '{}'\n",
            agreement.display(),
            self.opt_out_list().display(),
            self.ca().display(),
            cert.display(),
            key.display(),
            self.sandbox.linkage_key().display(),
            self.sandbox.local_id_key(org).unwrap().display(),
            self.path(&format!("quarantine/{org}")).display(),
            self.path(&format!("spool/{org}")).display(),
            extract.display(),
            mapping.display(),
        );
        std::fs::write(&path, yaml).expect("write agent config");
        path
    }

    /// Starts `joinery agent run` (debug logging, output captured).
    pub fn spawn_agent(&self, config: &Path) -> Child {
        joinery()
            .args(["agent", "run", "--config"])
            .arg(config)
            .env("RUST_LOG", "debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start agent")
    }

    /// The gateway's re-keying key, as the gateway created it.
    pub fn gateway_key(&self) -> joinery_crypto::keys::SecretKey {
        joinery_crypto::keys::SecretKey::load(&self.gateway_data_dir().join("gateway.key"))
            .expect("gateway key")
    }

    /// The file holding the agencies' linkage key.
    pub fn linkage_key_file(&self) -> PathBuf {
        self.sandbox.linkage_key()
    }

    pub fn linkage_key(&self) -> joinery_crypto::keys::SecretKey {
        joinery_crypto::keys::SecretKey::load(&self.sandbox.linkage_key()).expect("linkage key")
    }

    /// Runs each `(organisation, dataset)` agency's agent, one after
    /// another, on its synthetic extract in `synth` (`joinery synth`'s
    /// layout) against `gateway`.
    pub fn deliver(&self, gateway: &str, synth: &Path, agencies: &[(&str, &str)]) {
        for (org, dataset) in agencies {
            let config = self.agent_config(
                org,
                gateway,
                &synth.join(format!("extracts/{dataset}.csv")),
                &synth.join(format!("mappings/{dataset}.yaml")),
            );
            finish(self.spawn_agent(&config));
        }
    }

    /// Runs a `joinery` client command against `gateway` with `(cert, key)`,
    /// e.g. `["query", "counts"]`; panics if it fails.
    pub fn client(
        &self,
        command: &[&str],
        gateway: &str,
        cert: (PathBuf, PathBuf),
        extra: &[&str],
    ) -> Output {
        let output = self.client_output(command, gateway, cert, extra);
        assert!(
            output.status.success(),
            "joinery {command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// The same, whether it succeeds or not (a refusal to check).
    pub fn client_output(
        &self,
        command: &[&str],
        gateway: &str,
        cert: (PathBuf, PathBuf),
        extra: &[&str],
    ) -> Output {
        self.client_command(command, gateway, cert, extra)
            .output()
            .expect("joinery runs")
    }

    /// The same, to run (`fails_saying` checks a refusal's words).
    pub fn client_command(
        &self,
        command: &[&str],
        gateway: &str,
        (cert, key): (PathBuf, PathBuf),
        extra: &[&str],
    ) -> Command {
        let mut joinery = joinery();
        joinery
            .args(command)
            .args(["--gateway", gateway, "--server-name", "localhost"])
            .arg("--tls-ca")
            .arg(self.ca())
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .args(extra);
        joinery
    }

    /// Runs `joinery COMMAND…` on this deployment's gateway store (its data
    /// directory and agreements, and the PostgreSQL `database` if given),
    /// panicking if it fails; returns what it printed.
    pub fn on_store(&self, command: &[&str], database: Option<&str>) -> String {
        let data_dir = self.gateway_data_dir();
        let agreements = self.agreements_dir();
        let mut args = command.to_vec();
        args.extend([
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--agreements",
            agreements.to_str().unwrap(),
        ]);
        if let Some(url) = database {
            args.extend(["--database-url", url]);
        }
        String::from_utf8_lossy(&joinery_ok(&args).stdout).into_owned()
    }

    /// The SQLite database URL the gateway uses by default.
    pub fn sqlite_url(&self) -> String {
        format!(
            "sqlite://{}",
            self.gateway_data_dir().join("joinery.db").display()
        )
    }
}

/// A running gateway process; sent SIGTERM when dropped.
pub struct GatewayProcess {
    child: Child,
    pub address: String,
    pub log: PathBuf,
}

impl GatewayProcess {
    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        self.child.wait().expect("gateway exit")
    }

    /// Resident and peak resident memory of the gateway process, in KiB (Linux).
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// Writes the example council + CAMHS + SALT agreement into `dir`, in
/// force from yesterday for a year, after `edit` of its text, with fresh
/// keys for its signatories, fully signed ([`sign_example_agreement`]).
pub fn write_signed_agreement(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    sign_example_agreement(dir, edit).expect("a signed agreement")
}

/// An agreement's text with its `valid_from`, `review_by` and `expires`
/// dates set.
pub fn with_dates(
    text: String,
    valid_from: time::Date,
    review_by: time::Date,
    expires: time::Date,
) -> String {
    joinery::sandbox::with_dates(text, valid_from, review_by, expires).expect("dated agreement")
}

/// Waits for an agent, returning (exit code, stdout, stderr).
pub fn finish(child: Child) -> (i32, String, String) {
    let output = child.wait_with_output().expect("agent exit");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Opens the gateway's database for inspection.
pub async fn open_database(url: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .expect("open gateway database")
}

/// Writes straight to the terminal, past the test harness's output capture,
/// so a skipped test is seen.
pub fn shout(message: &str) {
    let _ = writeln!(std::io::stderr(), "\n*** {message} ***\n");
}

/// A fresh PostgreSQL database for one test, or `None` (announced loudly)
/// when no server is reachable. With `JOINERY_REQUIRE_POSTGRES=1` (as in CI)
/// an unreachable server fails the test instead.
pub async fn fresh_postgres(name: &str) -> Option<String> {
    let admin = std::env::var("JOINERY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let required = std::env::var("JOINERY_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
    sqlx::any::install_default_drivers();
    let pool = match AnyPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&admin)
        .await
    {
        Ok(pool) => pool,
        Err(e) => {
            let message = format!(
                "SKIPPED {name}: PostgreSQL is not reachable at {admin} ({e}); start it or set JOINERY_TEST_POSTGRES_URL"
            );
            assert!(!required, "{message} (JOINERY_REQUIRE_POSTGRES=1)");
            shout(&message);
            return None;
        }
    };
    let database = format!("joinery_test_{name}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
    )))
    .execute(&pool)
    .await
    .expect("drop old test database");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&pool)
        .await
        .expect("create test database");
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    Some(format!("{base}/{database}"))
}

/// Reads a CSV file's records (any delimiter), header excluded, blank lines skipped.
pub fn csv_rows(path: &Path, delimiter: u8) -> Vec<csv::StringRecord> {
    csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .from_path(path)
        .expect("open csv")
        .records()
        .filter_map(Result::ok)
        .collect()
}

/// What the ground truth says about one agency record.
pub struct Truth {
    pub organisation: String,
    pub child: String,
    pub valid_nhs: Option<String>,
}

/// Each agency record's truth, by its stored (organisation, local pseudonym):
/// recomputed from its local id through both layers of pseudonymisation,
/// under the agency's own key for local ids.
pub fn truth_by_pseudonym(d: &Deployment, ground_truth: &Path) -> HashMap<(String, String), Truth> {
    let rekeyer = Rekeyer::new(&d.gateway_key());
    let mut releasers: HashMap<String, Releaser> = HashMap::new();
    let mut truth_by_pseudonym = HashMap::new();
    for row in csv_rows(ground_truth, b',') {
        let (child, org, local, nhs) = (&row[0], &row[1], &row[3], &row[4]);
        let releaser = releasers.entry(org.to_owned()).or_insert_with(|| {
            let keys = ReleaseKeys {
                linkage: d.linkage_key(),
                local_ids: SecretKey::load(&d.sandbox.local_id_key(org).unwrap()).unwrap(),
            };
            Releaser::new(&keys, None, None).unwrap()
        });
        let stored = rekeyer
            .identify(org, &releaser.local_pseudonym(local), &[])
            .local_pseudonym;
        truth_by_pseudonym.insert(
            (org.to_owned(), stored),
            Truth {
                organisation: org.to_owned(),
                child: child.to_owned(),
                valid_nhs: joinery_agent::validate::nhs_number(nhs).ok(),
            },
        );
    }
    truth_by_pseudonym
}

/// After fuzzy linkage: records of one child share a spine person (pairwise
/// F1 against the ground truth), no spine person holds two NHS numbers or two
/// records of one agency.
pub async fn check_spine(d: &Deployment, ground_truth: &Path, db: &sqlx::AnyPool) -> f64 {
    let truth = truth_by_pseudonym(d, ground_truth);
    let rows = sqlx::query(
        "SELECT DISTINCT r.organisation, r.local_pseudonym, COALESCE(s.spine_id, r.person_id) AS spine \
         FROM records r LEFT JOIN person_spine s ON s.person_id = r.person_id",
    )
    .fetch_all(db)
    .await
    .expect("read the spine");
    let records: Vec<(&Truth, String)> = rows
        .iter()
        .map(|row| {
            let key = (
                row.get::<String, _>("organisation"),
                row.get::<String, _>("local_pseudonym"),
            );
            (&truth[&key], row.get::<String, _>("spine"))
        })
        .collect();
    let mut spines: HashMap<&str, Vec<&Truth>> = HashMap::new();
    for (t, spine) in &records {
        spines.entry(spine.as_str()).or_default().push(t);
    }
    for (spine, members) in &spines {
        let organisations: BTreeSet<_> = members.iter().map(|t| &t.organisation).collect();
        assert_eq!(
            organisations.len(),
            members.len(),
            "spine {spine}: one record per agency"
        );
        let numbers: BTreeSet<_> = members
            .iter()
            .filter_map(|t| t.valid_nhs.as_ref())
            .collect();
        assert!(
            numbers.len() <= 1,
            "spine {spine} joins different NHS numbers"
        );
    }
    let (mut both, mut predicted, mut actual) = (0usize, 0usize, 0usize);
    for (i, (a, spine_a)) in records.iter().enumerate() {
        for (b, spine_b) in &records[i + 1..] {
            let same_spine = spine_a == spine_b;
            let same_child = a.child == b.child;
            predicted += usize::from(same_spine);
            actual += usize::from(same_child);
            both += usize::from(same_spine && same_child);
        }
    }
    let precision = both as f64 / predicted.max(1) as f64;
    let recall = both as f64 / actual.max(1) as f64;
    let f1 = 2.0 * precision * recall / (precision + recall);
    println!(
        "spine: precision {precision:.4}, recall {recall:.4}, F1 {f1:.4} over {actual} true pairs"
    );
    assert!(
        f1 >= 0.97,
        "spine F1 {f1:.4} (precision {precision:.4}, recall {recall:.4})"
    );
    f1
}

/// A plain TCP connection to the gateway at `address` (an IPv4 `host:port`)
/// from 127.0.0.2: another host on the loopback network. An attacker's
/// connections come from its own address, not the real agent's, which is
/// what the overload manager's per-address share of handshake slots is for.
pub fn connect_from_another_host(address: &str) -> std::io::Result<std::net::TcpStream> {
    use socket2::{Domain, Socket, Type};
    let to: std::net::SocketAddr = address
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let from: std::net::SocketAddr = "127.0.0.2:0".parse().expect("an address");
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&from.into())?;
    socket.connect(&to.into())?;
    Ok(socket.into())
}

/// A minimal HTTP/1.0 GET, enough for a metrics endpoint: the whole
/// response, status line and headers included.
pub fn http_get(address: &str, path: &str) -> String {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}
