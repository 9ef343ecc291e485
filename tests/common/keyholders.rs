//! Keyholder processes for tests: `joinery keyholder serve` started for
//! real, and agent configurations told where they are.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use super::{Deployment, joinery, joinery_ok};

/// A running `joinery keyholder serve`, stopped when dropped.
pub struct Keyholder {
    pub name: &'static str,
    child: Child,
    pub address: String,
    pub data: PathBuf,
    pub log: PathBuf,
    /// Its public key for the deployment's agreement, as `joinery keyholder
    /// public-key` prints it.
    pub public_key: String,
}

impl Drop for Keyholder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a keyholder named `name` keeping its key and ledger in
/// `keyholder-data/DATA` (another `data`, another key: a rotated keyholder),
/// answering each agency `daily_allowance` elements a day, its metrics on
/// `metrics` if given. Its certificate is issued the first time.
pub fn start_keyholder(
    d: &Deployment,
    name: &'static str,
    data: &str,
    daily_allowance: u64,
    metrics: Option<&str>,
) -> Keyholder {
    if !d.sandbox.keyholder_cert(name).0.exists() {
        joinery_ok(&[
            "pki",
            "server",
            "--dir",
            &d.pki(),
            "--service",
            "keyholder",
            "--name",
            name,
        ]);
    }
    let log = d.path(&format!("keyholder-{data}.log"));
    let data = d.path(&format!("keyholder-data/{data}"));
    if !data.join("keyholder.key").exists() {
        joinery_ok(&["keyholder", "init", "--data-dir", data.to_str().unwrap()]);
    }
    let printed = joinery_ok(&[
        "keyholder",
        "public-key",
        "--data-dir",
        data.to_str().unwrap(),
        "--agreement",
        &d.sandbox.agreement_id().unwrap(),
    ]);
    let public_key = String::from_utf8(printed.stdout).unwrap().trim().to_owned();
    let mut child = joinery()
        .args(d.sandbox.keyholder_serve_args(name, &data))
        .arg("--daily-allowance")
        .arg(daily_allowance.to_string())
        .args(
            metrics
                .map(|m| ["--metrics-listen", m])
                .into_iter()
                .flatten(),
        )
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start keyholder");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(address) = line.strip_prefix("listening on ") {
                let _ = tx.send(address.to_owned());
            }
        }
    });
    let address = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            panic!(
                "keyholder did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    Keyholder {
        name,
        child,
        address,
        data,
        log,
        public_key,
    }
}

/// Keyholder `k`'s entry under an agent configuration's `keyholders`:
/// its name and public key, reached at `address`.
pub fn keyholder_entry(k: &Keyholder, address: &str) -> String {
    format!(
        "  - {{ name: {}, address: '{address}', public_key: {} }}\n",
        k.name, k.public_key
    )
}

/// Adds where each keyholder is, and its public key, to an agent
/// configuration.
fn add_keyholders(config: &Path, keyholders: &[&Keyholder]) {
    let mut yaml = std::fs::read_to_string(config).unwrap();
    yaml.push_str("keyholders:\n");
    for k in keyholders {
        yaml.push_str(&keyholder_entry(k, &k.address));
    }
    std::fs::write(config, yaml).unwrap();
}

/// Runs every agency's agent on its synthetic extract in `synth` against
/// `gateway`, NHS numbers pseudonymised through `keyholders`, each agent
/// configuration's text first passed through `edit`; asserts each run
/// delivered (rows quarantined allowed) and returns their logs.
pub fn deliver_through(
    d: &Deployment,
    gateway: &str,
    synth: &Path,
    keyholders: &[&Keyholder],
    edit: impl Fn(String) -> String,
) -> String {
    let mut logs = String::new();
    for (org, dataset) in super::THREE_AGENCIES {
        let config = d.agent_config(
            org,
            gateway,
            &synth.join(format!("extracts/{dataset}.csv")),
            &synth.join(format!("mappings/{dataset}.yaml")),
        );
        let yaml = edit(std::fs::read_to_string(&config).unwrap());
        std::fs::write(&config, yaml).unwrap();
        add_keyholders(&config, keyholders);
        let (code, stdout, stderr) = super::finish(d.spawn_agent(&config));
        assert!(
            [0, joinery_agent::summary::EXIT_QUARANTINED].contains(&code),
            "{org}: {stdout}\n{stderr}"
        );
        logs.push_str(&stderr);
    }
    logs
}
