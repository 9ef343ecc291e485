//! What a user reads when something is wrong: the file or setting named,
//! and each cause said once.

mod common;

use common::*;

#[test]
fn an_error_says_each_cause_once_and_names_the_file() {
    let d = Deployment::new();
    let missing = d.path("no-such-dir/linkage.key");
    let output = joinery_bench()
        .args(["linkage", "--data", d.path("data").to_str().unwrap()])
        .args(["--truth", d.path("truth.csv").to_str().unwrap()])
        .args(["--linkage-key", missing.to_str().unwrap()])
        .output()
        .expect("run joinery");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(missing.to_str().unwrap()), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
}

/// Dialling the gateway by a name its certificate does not carry says which
/// name was checked and how to give the right one, once.
#[test]
fn a_certificate_for_another_name_points_at_server_name() {
    let d = Deployment::new();
    let gateway = d.start_gateway(None, &[]);
    let (cert, key) = d.analyst_cert();
    let output = joinery()
        .args(["query", "overlap", "--gateway", &gateway.address])
        .args(["--server-name", "gateway.example.invalid"])
        .arg("--tls-ca")
        .arg(d.ca())
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .output()
        .expect("run joinery");
    assert!(gateway.stop().success());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("\"gateway.example.invalid\""), "{stderr}");
    assert!(stderr.contains("--server-name"), "{stderr}");
    assert_eq!(stderr.matches("not valid for name").count(), 1, "{stderr}");
}

/// A gateway command pointed at a missing agreements folder says so, rather
/// than quietly governing nothing.
#[test]
fn a_missing_agreements_folder_is_said_aloud() {
    let d = Deployment::new();
    let missing = d.path("no-agreements-here");
    let output = joinery()
        .args(["gateway", "retention", "--dry-run", "--data-dir"])
        .arg(d.path("store"))
        .arg("--agreements")
        .arg(&missing)
        .output()
        .expect("run joinery");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no signed agreements"), "{stderr}");
    assert!(stderr.contains(missing.to_str().unwrap()), "{stderr}");
}

/// An agent that cannot reach the gateway says why each time it retries
/// (here: nothing listens), not only "transport error".
#[test]
fn a_failed_delivery_says_what_failed() {
    let d = Deployment::new();
    let synth = d.synth(60, 3);
    let config = d.agent_config(
        COUNCIL,
        &free_local_address(),
        &synth.join("extracts/csc_referrals.csv"),
        &synth.join("mappings/csc_referrals.yaml"),
    );
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("retry_for_secs: 20", "retry_for_secs: 2"),
    )
    .unwrap();
    let (code, _, stderr) = finish(d.spawn_agent(&config));
    assert_ne!(code, 0);
    let retries: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("will reconnect"))
        .collect();
    assert!(!retries.is_empty(), "{stderr}");
    assert!(
        retries
            .iter()
            .all(|l| l.to_lowercase().contains("connection refused")),
        "{retries:#?}"
    );
}

/// A PostgreSQL database that does not exist is named, with how to make it;
/// the statement it gives, run as given, makes the database the URL names
/// (a name with capitals too, which PostgreSQL folds unless quoted).
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_postgres_database_is_named_with_how_to_create_it() {
    let Some(reachable) = fresh_postgres("missing_database_probe").await else {
        return;
    };
    let admin = open_database(&reachable).await;
    let name = "Joinery_Test_Never_Created";
    let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(drop.clone()))
        .execute(&admin)
        .await
        .unwrap();
    let (base, _) = reachable.rsplit_once('/').unwrap();
    let missing = format!("{base}/{name}");
    let d = Deployment::new();
    let relink = || {
        joinery()
            .args([
                "gateway",
                "relink",
                "--database-url",
                &missing,
                "--data-dir",
            ])
            .arg(d.path("store"))
            .output()
            .expect("run joinery")
    };
    let output = relink();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("no database \"{name}\"")),
        "{stderr}"
    );
    assert!(stderr.contains("createdb"), "{stderr}");
    assert_eq!(stderr.matches("error:").count(), 1, "{stderr}");
    let statement = stderr
        .split('`')
        .find(|part| part.starts_with("CREATE DATABASE"))
        .unwrap_or_else(|| panic!("no CREATE DATABASE in {stderr}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned()))
        .execute(&admin)
        .await
        .unwrap();
    let after = String::from_utf8_lossy(&relink().stderr).into_owned();
    assert!(!after.contains("no database"), "{after}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
        .execute(&admin)
        .await
        .unwrap();
}

/// A refusal reads as the gateway's reason, not tonic's raw status.
#[test]
fn a_refusal_reads_as_its_reason() {
    let d = Deployment::new();
    let gateway = d.start_gateway(None, &[]);
    // An agency's certificate may not ask analysts' questions.
    let output = d.client_output(
        &["query", "overlap"],
        &gateway.address,
        d.org_cert(COUNCIL),
        &[],
    );
    assert!(gateway.stop().success());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: the gateway refused (permission denied): "),
        "{stderr}"
    );
    assert!(
        !stderr.contains("metadata") && !stderr.contains("MetadataMap"),
        "{stderr}"
    );
}
