//! The deployment artefacts match the binary they deploy: the configuration
//! reference is the generated one, the example configurations carry every
//! option, the compose stack and Helm chart use only real commands, flags and
//! variables, and the systemd units pass `systemd-analyze verify`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;

/// Every `JOINERY_*` variable the gateway and agent read (from the reference).
fn known_variables() -> BTreeSet<String> {
    let reference = repo("docs/configuration.md");
    reference
        .split('`')
        .filter(|w| {
            w.starts_with("JOINERY_") && w.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        })
        .map(str::to_owned)
        .chain(["JOINERY_LOG_FORMAT".to_owned()])
        .collect()
}

/// `args` (a YAML list) is a command line `joinery` accepts: clap parses
/// it, with `--help` appended so a valid line prints help and exits 0.
fn assert_joinery_accepts(args: &serde_json::Value, what: &str) {
    let mut args: Vec<String> = args
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no argument list"))
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    args.push("--help".to_owned());
    let output = joinery().args(&args).output().unwrap();
    assert!(
        output.status.success(),
        "{what}: `joinery {}` is not a valid command line: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn variables_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
        .filter(|w| w.starts_with("JOINERY_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_reference_pages_are_generated_from_the_code() {
    for (page, file) in [
        ("configuration", "docs/configuration.md"),
        ("indicators", "docs/indicators.md"),
        ("queries", "docs/query-language.md"),
    ] {
        let generated = joinery_ok(&["reference", page]);
        assert_eq!(
            String::from_utf8_lossy(&generated.stdout),
            repo(file),
            "regenerate: cargo run -- reference {page} > {file}"
        );
    }
    let schema = joinery_ok(&["query", "schema"]);
    assert_eq!(
        String::from_utf8_lossy(&schema.stdout),
        repo("docs/queries/query.schema.json"),
        "regenerate: cargo run -- query schema > docs/queries/query.schema.json"
    );
    // Every example query is on the query language page, explained (so
    // it parses), and names the schema for editors.
    let page = repo("docs/query-language.md");
    assert!(
        !page.contains("does not parse"),
        "an example does not parse"
    );
    let examples = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/queries"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".yaml"));
    for example in examples {
        assert!(
            page.contains(&format!("(queries/{example})")),
            "{example} is not on docs/query-language.md (list it in src/commands/reference.rs)"
        );
        assert!(
            repo(&format!("docs/queries/{example}"))
                .starts_with("# yaml-language-server: $schema=query.schema.json\n"),
            "{example} does not name the schema"
        );
    }
}

#[test]
fn the_example_agent_configuration_shows_every_option() {
    let reference = repo("docs/configuration.md");
    let agent_section = reference
        .split("## Agent configuration file")
        .nth(1)
        .unwrap()
        .split("## Mapping file")
        .next()
        .unwrap();
    let example = repo("deploy/examples/agent.yaml");
    for key in agent_section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
    {
        let last = key.rsplit(['.', ']']).next().unwrap();
        assert!(
            example.contains(&format!("{last}:")),
            "deploy/examples/agent.yaml does not show {key}"
        );
    }
}

#[test]
fn compose_and_helm_use_only_real_commands_and_variables() {
    let known = known_variables();
    for file in [
        "deploy/compose/compose.yaml",
        "deploy/helm/joinery-gateway/templates/_helpers.tpl",
        "deploy/systemd/gateway.env",
        "deploy/systemd/keyholder.env",
    ] {
        for variable in variables_in(&repo(file)) {
            assert!(
                known.contains(&variable),
                "{file} sets {variable}, which joinery does not read"
            );
        }
    }
    // Every compose service that runs joinery runs a command line it accepts.
    let compose: serde_json::Value =
        serde_saphyr::from_str(&repo("deploy/compose/compose.yaml")).unwrap();
    let services = compose["services"].as_object().unwrap();
    for name in [
        "setup",
        "postgres",
        "gateway",
        "agent-council",
        "agent-camhs",
        "agent-salt",
        "otel-collector",
    ] {
        assert!(services.contains_key(name), "compose has no {name} service");
    }
    for (name, service) in services {
        if service["image"] != "joinery:latest" {
            continue;
        }
        assert_joinery_accepts(&service["command"], &format!("compose service {name}"));
    }
    // The Helm chart's flags exist.
    let templates = ["_helpers.tpl", "deployment.yaml", "shards.yaml"]
        .map(|t| repo(&format!("deploy/helm/joinery-gateway/templates/{t}")))
        .join("\n");
    let help =
        String::from_utf8_lossy(&joinery_ok(&["gateway", "serve", "--help"]).stdout).into_owned();
    let flags: BTreeSet<&str> = templates
        .split(|c: char| c.is_whitespace() || c == '"')
        .filter_map(|w| w.strip_prefix("--"))
        .map(|f| f.split('=').next().unwrap())
        .filter(|f| f.starts_with(|c: char| c.is_ascii_lowercase()))
        .collect();
    for flag in ["max-connections", "answer-from-shards", "holds-shard"] {
        assert!(
            flags.contains(flag),
            "no --{flag} found in the chart: {flags:?}"
        );
    }
    for flag in flags {
        assert!(
            help.contains(&format!("--{flag}")),
            "the chart passes --{flag}, which gateway serve lacks"
        );
    }
    // Every named volume a joinery container mounts is a directory the
    // image makes for the joinery user (a new volume takes its owner), so
    // the containers, which run as joinery, can write there.
    let dockerfile = repo("Dockerfile");
    let volumes = compose["volumes"].as_object().unwrap();
    for (name, service) in services {
        if service["image"] != "joinery:latest" {
            continue;
        }
        for mount in service["volumes"].as_array().into_iter().flatten() {
            // Short syntax `volume:target[:ro]`, or the long one.
            let (volume, target, read_only) = match mount.as_str() {
                Some(short) => {
                    let parts: Vec<&str> = short.split(':').collect();
                    (
                        parts[0].to_owned(),
                        parts[1].to_owned(),
                        parts.get(2) == Some(&"ro"),
                    )
                }
                None => (
                    mount["source"].as_str().unwrap().to_owned(),
                    mount["target"].as_str().unwrap().to_owned(),
                    mount["read_only"] == true,
                ),
            };
            if !volumes.contains_key(&volume) || read_only {
                continue;
            }
            let target = target.as_str();
            let owned = dockerfile.lines().any(|l| {
                (l.contains("install -d -o joinery") && l.ends_with(target))
                    || l.contains(&format!("--home-dir {target} --create-home"))
            });
            assert!(
                owned,
                "compose service {name} mounts volume {volume} at {target}, which the image does not make for the joinery user"
            );
        }
    }
    // The image's health check is a real command.
    assert!(dockerfile.contains(r#"CMD ["joinery", "probe", "http://127.0.0.1:9464/readyz"]"#));
}

#[test]
fn the_probe_reports_readiness() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        for status in ["200 OK", "503 Service Unavailable"] {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 512];
            let _ = stream.read(&mut request).unwrap();
            write!(stream, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").unwrap();
        }
    });
    let url = format!("http://{address}/readyz");
    assert!(joinery().args(["probe", &url]).status().unwrap().success());
    assert!(!joinery().args(["probe", &url]).status().unwrap().success());
    server.join().unwrap();
}

#[test]
fn systemd_units_verify() {
    let Ok(probe) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        shout("SKIPPED systemd_units_verify: systemd-analyze is not installed");
        return;
    };
    assert!(probe.status.success());
    let dir = tempfile::tempdir().unwrap();
    let binary = env!("CARGO_BIN_EXE_joinery");
    let mut units = Vec::new();
    for unit in [
        "joinery-gateway.service",
        "joinery-keyholder.service",
        "joinery-agent.service",
        "joinery-agent.timer",
    ] {
        // Point ExecStart at the binary under test: verify checks it is executable.
        let text =
            repo(&format!("deploy/systemd/{unit}")).replace("/usr/local/bin/joinery", binary);
        let path = dir.path().join(unit);
        std::fs::write(&path, text).unwrap();
        units.push(path);
    }
    let output = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );

    // The sysusers file makes the user the units run as.
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    let sysusers = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/systemd/joinery.sysusers.conf");
    let made = std::process::Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(&sysusers)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    for unit in [
        "joinery-gateway.service",
        "joinery-keyholder.service",
        "joinery-agent.service",
    ] {
        let user = unit_value(unit, "User");
        assert!(
            passwd.lines().any(|l| l.starts_with(&format!("{user}:"))),
            "{unit} runs as {user}, which joinery.sysusers.conf does not make"
        );
    }

    // The agent writes its state where the unit lets it: the example's
    // state directories lie in the unit's StateDirectory.
    let state = unit_value("joinery-agent.service", "StateDirectory");
    let example = repo("deploy/examples/agent.yaml");
    for key in ["spool_dir", "quarantine_dir"] {
        let value = example
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("the example sets {key}"));
        assert!(
            value.starts_with(&format!("/var/lib/{state}/")),
            "{key}: {value} is not in the agent unit's state directory /var/lib/{state}"
        );
    }
}

/// The compose stack's `setup` runs on every `docker compose up`: the second
/// finds the deployment prepared and leaves it, so the gateway still starts;
/// a directory it did not finish is refused.
#[test]
fn preparing_a_deployment_twice_keeps_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let deployment = dir.path().join("deployment");
    let prepare = || {
        joinery()
            .args(["demo", "--prepare-only", "--children", "40"])
            .args([
                "--gateway-address",
                "gateway:7443",
                "--server-name",
                "gateway",
            ])
            .arg("--dir")
            .arg(&deployment)
            .output()
            .unwrap()
    };
    let first = prepare();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let ca = std::fs::read(deployment.join("pki/ca.pem")).unwrap();
    let second = prepare();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(String::from_utf8_lossy(&second.stdout).contains("already prepared"));
    assert_eq!(std::fs::read(deployment.join("pki/ca.pem")).unwrap(), ca);
    // The gateway's own directory holds what compose's gateway reads, and
    // no agency's key, no linkage key, no signatory's key.
    let config = deployment.join("gateway-config");
    let compose: serde_json::Value =
        serde_saphyr::from_str(&repo("deploy/compose/compose.yaml")).unwrap();
    let gateway = &compose["services"]["gateway"];
    for (variable, value) in gateway["environment"].as_object().unwrap() {
        if let Some(inside) = value.as_str().and_then(|v| v.strip_prefix("/etc/joinery/")) {
            assert!(
                config.join(inside).exists(),
                "{variable}: {inside} is not in gateway-config"
            );
        }
    }
    let subpaths: Vec<&str> = gateway["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["volume"]["subpath"].as_str())
        .collect();
    assert_eq!(subpaths, ["deployment/gateway-config"]);
    let mut files = Vec::new();
    let mut dirs = vec![config.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path.strip_prefix(&config).unwrap().display().to_string());
            }
        }
    }
    files.sort();
    let keys: Vec<&String> = files.iter().filter(|f| f.ends_with(".key")).collect();
    assert_eq!(keys, ["pki/gateway.key"], "{files:?}");
    std::fs::remove_file(deployment.join(".prepared")).unwrap();
    let unfinished = prepare();
    assert!(!unfinished.status.success());
    assert!(String::from_utf8_lossy(&unfinished.stderr).contains("already exists"));
}

/// The Helm chart lints and renders with a real `helm` (`JOINERY_HELM`, or
/// `helm` on PATH; `.ci/run` installs one), and what it renders runs: the
/// container's arguments are a command line `joinery` accepts, its
/// variables are ones it reads, every file path it is given lies in a
/// mounted volume, and the key Secrets are mounted owner-read-only (with
/// the pod's fsGroup Kubernetes makes them root-owned 0440, which the
/// gateway accepts: `crypto::keys`).
#[test]
fn the_helm_chart_lints_and_renders_a_deployment_that_runs() {
    let helm = std::env::var("JOINERY_HELM").unwrap_or_else(|_| "helm".to_owned());
    let required = std::env::var("JOINERY_REQUIRE_HELM").is_ok_and(|v| v == "1");
    if std::process::Command::new(&helm)
        .arg("version")
        .output()
        .is_err()
    {
        let message = format!(
            "SKIPPED the_helm_chart_lints_and_renders_a_deployment_that_runs: no helm at {helm:?} (set JOINERY_HELM)"
        );
        assert!(!required, "{message} (JOINERY_REQUIRE_HELM=1)");
        shout(&message);
        return;
    }
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/helm/joinery-gateway");
    let run = |args: &[&str]| {
        let output = std::process::Command::new(&helm)
            .args(args)
            .arg(&chart)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "helm {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    run(&["lint", "--strict"]);
    let render = |set: &[&str]| -> Vec<serde_json::Value> {
        run(&[&["template", "joinery"], set].concat())
            .split("\n---\n")
            .filter(|d| d.lines().any(|l| l.starts_with("kind:")))
            .map(|d| serde_saphyr::from_str(d).unwrap())
            .collect()
    };
    let documents = render(&[]);
    let kinds: BTreeSet<&str> = documents
        .iter()
        .filter_map(|d| d["kind"].as_str())
        .collect();
    for kind in [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ] {
        assert!(kinds.contains(kind), "no {kind} in {kinds:?}");
    }
    let deployments = |documents: &[serde_json::Value]| -> Vec<serde_json::Value> {
        documents
            .iter()
            .filter(|d| d["kind"] == "Deployment")
            .cloned()
            .collect()
    };
    assert_eq!(deployments(&documents).len(), 1);
    // Sharded (docs/scaling.md, "Answering from shards"): the gateways
    // answer from two shard gateways, each behind the Service they name.
    let sharded = render(&["--set", "shards.count=2"]);
    let sharded_deployments = deployments(&sharded);
    assert_eq!(sharded_deployments.len(), 3);
    let services: BTreeSet<&str> = sharded
        .iter()
        .filter(|d| d["kind"] == "Service")
        .filter_map(|d| d["metadata"]["name"].as_str())
        .collect();
    for deployment in deployments(&documents).iter().chain(&sharded_deployments) {
        let name = deployment["metadata"]["name"].as_str().unwrap();
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_joinery_accepts(&container["args"], &format!("the Helm chart's {name}"));
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        let known = known_variables();
        let mounts: Vec<&str> = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap())
            .collect();
        for variable in container["env"].as_array().unwrap() {
            let name = variable["name"].as_str().unwrap();
            if name.starts_with("JOINERY_") {
                assert!(
                    known.contains(name),
                    "the chart sets {name}, which joinery does not read"
                );
            }
            if let Some(path) = variable["value"].as_str().filter(|v| v.starts_with('/')) {
                assert!(
                    mounts.iter().any(|m| path.starts_with(m)),
                    "{name}={path} lies in no mounted volume ({mounts:?})"
                );
            }
        }
        for arg in &args {
            if let Some((flag, path)) = arg.split_once("=/") {
                assert!(
                    mounts.iter().any(|m| format!("/{path}").starts_with(m)),
                    "{name}: {flag}=/{path} lies in no mounted volume ({mounts:?})"
                );
            }
        }
        for volume in pod["volumes"].as_array().unwrap() {
            if let Some(secret) = volume.get("secret") {
                assert_eq!(secret["defaultMode"], 0o400, "{volume}");
            }
        }
        if !sharded_deployments.contains(deployment) {
            continue;
        }
        let shard = args.iter().find_map(|a| a.strip_prefix("--holds-shard="));
        let from = args
            .iter()
            .find_map(|a| a.strip_prefix("--answer-from-shards="));
        match (shard, from) {
            (Some(shard), None) => assert!(
                name.ends_with(&format!("shard-{}", &shard[..1])) && shard.ends_with("/2"),
                "{name} holds shard {shard}"
            ),
            (None, Some(from)) => {
                for address in from.split(',') {
                    let (host, _) = address.split_once(':').unwrap();
                    assert!(
                        services.contains(host),
                        "{name} asks {host}, no Service: {services:?}"
                    );
                }
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}
