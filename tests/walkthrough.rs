//! A new operator's way through the docs, as far as this machine allows:
//! the README's own command lines (certificates, the agreement's checks,
//! the linkage key, the analyst's queries) run as written through a shell,
//! and the systemd units' `ExecStart` run with the unit's working directory
//! and `deploy/systemd/gateway.env` as its whole environment. The operator's
//! only edits are the ones the docs ask for: host paths (everything lives
//! under a temporary root instead of `/`), the database URL, addresses, and
//! the agency's own organisation code, extracts and opt-out list.
//!
//! The gateway runs on a real PostgreSQL; two agencies' agents deliver
//! synthetic extracts over mutual TLS; an analyst asks two questions. What
//! cannot run here: systemd itself (no PID 1), so the units' sandboxing is
//! checked by `systemd-analyze verify` in `deploy.rs`, not by starting them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The server name the README issues the gateway's certificate for.
const GATEWAY_NAME: &str = "joinery-gateway.example.nhs.uk";
/// The organisation code the README and the example agent use.
const EXAMPLE_ORG: &str = "E08000035";

/// The lines of the README's `sh` block holding `marker`, continuation
/// lines joined, comments dropped.
fn readme_block(marker: &str) -> Vec<String> {
    let readme = repo("README.md");
    let block = readme
        .split("```sh\n")
        .skip(1)
        .filter_map(|rest| rest.split_once("```").map(|(block, _)| block))
        .find(|block| block.contains(marker))
        .unwrap_or_else(|| panic!("the README has no sh block with {marker:?}"));
    block
        .replace("\\\n", " ")
        .lines()
        .map(|line| line.split(" # ").next().unwrap_or(line).trim().to_owned())
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
}

/// Runs a documented command line through `sh` in `dir`, with the binary
/// under test first on `PATH` (as after `install … /usr/local/bin/joinery`).
fn sh(dir: &Path, line: &str) -> String {
    let bin = Path::new(env!("CARGO_BIN_EXE_joinery")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new("sh")
        .arg("-c")
        .arg(line)
        .current_dir(dir)
        .env("PATH", path)
        .output()
        .expect("run sh");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "documented command failed in {}: {line}\n{stdout}\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A host's file system under the test's root: `/etc/joinery` is
/// `<root>/etc/joinery`.
struct Host(PathBuf);

impl Host {
    fn new(root: &Path, name: &str) -> Self {
        let host = Self(root.join(name));
        for dir in ["etc/joinery", "var/lib", "srv/extracts"] {
            std::fs::create_dir_all(host.0.join(dir)).unwrap();
        }
        host
    }

    /// `absolute` (a path on the real host) on this one.
    fn path(&self, absolute: &str) -> PathBuf {
        self.0.join(absolute.trim_start_matches('/'))
    }

    /// `text` with every absolute path under `/etc`, `/var` or `/srv`
    /// moved onto this host.
    fn rehome(&self, text: &str) -> String {
        ["/etc/joinery", "/var/lib/", "/srv/extracts"]
            .iter()
            .fold(text.to_owned(), |text, prefix| {
                text.replace(prefix, &self.path(prefix).display().to_string())
            })
    }

    fn copy_in(&self, from: &Path, to: &str) {
        let to = self.path(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
}

/// The unit's `ExecStart`, as a command on `host`, in the unit's working
/// directory (made, as `StateDirectory=` makes it).
fn unit_command(unit: &str, host: &Host) -> Command {
    let exec = unit_value(unit, "ExecStart");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/joinery"), "{unit}");
    let mut command = Command::new(env!("CARGO_BIN_EXE_joinery"));
    command.args(words.map(|w| host.rehome(w)));
    let dir = host.path(&unit_value(unit, "WorkingDirectory"));
    std::fs::create_dir_all(&dir).unwrap();
    command.current_dir(dir).env_clear();
    command
}

/// A process killed when the test ends, also when it fails.
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `ask` until it returns `Some`, for at most `limit`.
fn eventually<T>(limit: Duration, what: &str, mut ask: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(answer) = ask() {
            return answer;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// A table's count of all children (its last total), or 0.
fn total_children(table: &str) -> u64 {
    let total = table.lines().find(|l| l.starts_with("total"));
    total
        .and_then(|row| row.split_whitespace().last()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_follows_the_docs_to_postgresql_two_agents_and_queries() {
    let Some(database_url) = fresh_postgres("walkthrough").await else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let gateway_host = Host::new(root.path(), "gateway-host");
    let etc = gateway_host.path("/etc/joinery");
    let agencies = [(COUNCIL, "csc_referrals"), (CAMHS, "camhs_referrals")];

    // The gateway operator's certificates: the README's lines, once per
    // party of the agreement for the agency line.
    for line in readme_block("joinery pki init") {
        if line.contains(EXAMPLE_ORG) {
            for (org, _) in agencies {
                sh(&etc, &line.replace(EXAMPLE_ORG, org));
            }
        } else {
            sh(&etc, &line);
        }
    }

    // The signed agreement, and the IG lead's checks of it as the README
    // writes them.
    let agreements = etc.join("agreements");
    let agreement = write_signed_agreement(&agreements, |text| text);
    let file_name = agreement.file_name().unwrap().to_str().unwrap();
    for line in readme_block("joinery policy check") {
        if !(line.contains("keygen") || line.contains(" sign ")) {
            sh(&agreements, &line.replace("agreement.yaml", file_name));
        }
    }
    assert!(agreements.join("agreement.html").exists());

    // The gateway, as joinery-gateway.service starts it: gateway.env with
    // the database and addresses edited, paths on this host.
    let listen = free_local_address();
    let metrics = free_local_address();
    let env_file = repo("deploy/systemd/gateway.env");
    let mut gateway = unit_command("joinery-gateway.service", &gateway_host);
    for line in env_file.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = match key {
            "JOINERY_DATABASE_URL" => database_url.clone(),
            "JOINERY_LISTEN" => listen.clone(),
            "JOINERY_METRICS_LISTEN" => metrics.clone(),
            _ => gateway_host.rehome(value),
        };
        gateway.env(key, value);
    }
    let gateway_log = root.path().join("gateway.log");
    let mut gateway = Stopped(
        gateway
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&gateway_log).unwrap())
            .spawn()
            .expect("start the gateway"),
    );
    let log = || std::fs::read_to_string(&gateway_log).unwrap_or_default();
    eventually(Duration::from_secs(60), "gateway ready", || {
        assert!(
            gateway.0.try_wait().unwrap().is_none(),
            "the gateway stopped:\n{}",
            log()
        );
        joinery()
            .args(["probe", &format!("http://{metrics}/readyz")])
            .output()
            .unwrap()
            .status
            .success()
            .then_some(())
    });

    // The agencies: one linkage key, made by the README's line at the
    // first and shared with the second; each its own key for its local
    // ids, made by the README's other line on each.
    let agency_hosts: Vec<Host> = agencies
        .iter()
        .map(|(org, _)| Host::new(root.path(), &format!("agency-{org}")))
        .collect();
    for line in readme_block("joinery pki linkage-key") {
        let own = line.contains("local-ids");
        for host in agency_hosts
            .iter()
            .take(if own { agency_hosts.len() } else { 1 })
        {
            sh(&host.path("/etc/joinery"), &line);
        }
    }
    let linkage_key = agency_hosts[0].path("/etc/joinery/keys/linkage.key");
    let synth = root.path().join("synth");
    joinery_ok(&[
        "synth",
        "--out",
        synth.to_str().unwrap(),
        "--children",
        "500",
        "--seed",
        "5",
    ]);

    let example = repo("deploy/examples/agent.yaml");
    let (example_head, _) = example
        .split_once("\nsources:")
        .expect("the example lists its sources last");
    for ((org, dataset), host) in agencies.iter().zip(&agency_hosts) {
        // What the gateway operator and the partnership hand the agency.
        host.copy_in(&etc.join("pki/ca.pem"), "/etc/joinery/pki/ca.pem");
        for ext in ["pem", "key"] {
            host.copy_in(
                &etc.join(format!("pki/agents/{org}.{ext}")),
                &format!("/etc/joinery/pki/agents/{org}.{ext}"),
            );
        }
        for file in [
            agreement.clone(),
            joinery_policies::signing::signature_path(&agreement),
        ] {
            let name = file.file_name().unwrap().to_str().unwrap().to_owned();
            host.copy_in(&file, &format!("/etc/joinery/agreements/{name}"));
        }
        if *org != COUNCIL {
            host.copy_in(&linkage_key, "/etc/joinery/keys/linkage.key");
        }
        host.copy_in(
            &synth.join("opt-out.txt"),
            "/etc/joinery/opt-outs/national-data-opt-out.txt",
        );
        host.copy_in(
            &synth.join(format!("extracts/{dataset}.csv")),
            &format!("/srv/extracts/{dataset}.csv"),
        );
        host.copy_in(
            &synth.join(format!("mappings/{dataset}.yaml")),
            &format!("/etc/joinery/{dataset}.yaml"),
        );
        // The example configuration with its organisation, the gateway's
        // address and its own extract.
        let config = format!(
            "{}\nsources:\n  - kind: csv\n    path: /srv/extracts/{dataset}.csv\n    mapping: {dataset}.yaml\n",
            example_head
                .replace(EXAMPLE_ORG, org)
                .replace(&format!("{GATEWAY_NAME}:7443"), &listen)
        );
        std::fs::write(host.path("/etc/joinery/agent.yaml"), host.rehome(&config)).unwrap();

        // As joinery-agent.service runs it.
        let run = unit_command("joinery-agent.service", host)
            .output()
            .expect("run the agent");
        let stdout = String::from_utf8_lossy(&run.stdout);
        let code = run.status.code().unwrap_or(-1);
        let success = unit_value("joinery-agent.service", "SuccessExitStatus");
        assert!(
            code == 0 || success.split_whitespace().any(|c| c == code.to_string()),
            "agent {org} exited {code}, a failure to the unit:\n{stdout}\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(stdout.contains("stored"), "agent {org}: {stdout}");
        assert!(
            host.path("/var/lib/joinery-agent/spool").is_dir(),
            "agent {org} keeps its spool in the unit's state directory"
        );
    }

    // The analyst: the README's lines, "…" standing for the gateway and
    // the analyst's certificate as in the first.
    let analyst = root.path().join("analyst");
    std::fs::create_dir_all(analyst.join("pki/analysts")).unwrap();
    std::fs::copy(etc.join("pki/ca.pem"), analyst.join("pki/ca.pem")).unwrap();
    for ext in ["pem", "key"] {
        let file = format!("pki/analysts/analyst-j.bloggs.{ext}");
        std::fs::copy(etc.join(&file), analyst.join(&file)).unwrap();
    }
    std::os::unix::fs::symlink(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs"),
        analyst.join("docs"),
    )
    .unwrap();
    let lines = readme_block("joinery query overlap");
    let connect = lines[0]
        .split_once("--gateway ")
        .map(|(_, rest)| format!("--gateway {rest}"))
        .expect("the first analyst line connects");
    let as_written = |line: &str| {
        line.replace("--gateway …", &connect)
            .replace(" [--format table|csv|json]", "")
            .replace(
                &format!("{GATEWAY_NAME}:7443"),
                &format!("{listen} --server-name {GATEWAY_NAME}"),
            )
    };
    let overlap = lines.iter().find(|l| l.contains("query overlap")).unwrap();
    let answer = sh(&analyst, &as_written(overlap));
    assert!(total_children(&answer) > 0, "{answer}");
    assert!(
        answer.contains("people linked across agencies as of"),
        "{answer}"
    );
    let run = lines.iter().find(|l| l.contains("query run")).unwrap();
    let table = sh(&analyst, &as_written(run));
    assert!(total_children(&table) > 0, "{table}");
    for line in lines.iter().filter(|l| l.contains("query explain")) {
        assert!(!sh(&analyst, line).trim().is_empty());
    }

    // It stops as the unit stops it.
    assert_eq!(
        unit_value("joinery-gateway.service", "KillSignal"),
        "SIGTERM"
    );
    assert!(
        Command::new("kill")
            .args(["-TERM", &gateway.0.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = gateway.0.wait().unwrap();
    assert!(status.success(), "gateway stop: {status}\n{}", log());
}
