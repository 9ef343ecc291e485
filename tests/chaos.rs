//! Nothing lost, nothing doubled (the short versions CI runs): an agent is
//! killed with SIGKILL again and again and the gateway is restarted while it
//! delivers; and, on PostgreSQL, the database is restarted and the agent's
//! connections are cut (through a proxy in the test) while it delivers. At
//! the end every source row is stored exactly once, and the replay path
//! (batches resent and recognised) really ran.

mod common;

use std::time::Duration;

use common::*;
use sqlx::Row;

/// Every row of `extract` not quarantined is stored exactly once.
async fn assert_each_row_stored_once(
    d: &Deployment,
    db: &sqlx::AnyPool,
    organisation: &str,
    dataset: &str,
    extract: &std::path::Path,
) {
    let rows = csv_rows(extract, b',').len();
    let report = d.path(&format!(
        "quarantine/{organisation}/{dataset}.quarantine.csv"
    ));
    let quarantined = csv_rows(&report, b',')
        .iter()
        .filter(|r| &r[2] == "quarantined")
        .map(|r| r[1].to_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let stored: i64 = sqlx::query("SELECT COUNT(*) AS n FROM records")
        .fetch_one(db)
        .await
        .unwrap()
        .get("n");
    let doubled: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM (SELECT source_row FROM records GROUP BY source_row HAVING COUNT(*) > 1) AS d",
    )
    .fetch_one(db)
    .await
    .unwrap()
    .get("n");
    assert_eq!(doubled, 0, "no source row stored twice");
    assert_eq!(stored as usize, rows - quarantined, "no row lost");
}

fn kill(child: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_kills_and_gateway_restarts_lose_and_double_nothing() {
    let d = Deployment::new();
    let synth = d.synth(6000, 17);
    let listen = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let mut gateway = d.start_gateway_at(&listen, None, &[]);
    let extract = synth.join("extracts/csc_referrals.csv");
    let config = d.agent_config(
        COUNCIL,
        &listen,
        &extract,
        &synth.join("mappings/csc_referrals.yaml"),
    );
    // Small batches, so there are many to interrupt.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("batch_size: 200", "batch_size: 25");
    std::fs::write(&config, text).unwrap();

    let mut rng_state = 0x5eed_u64;
    let mut next = |range: u64| {
        rng_state = rng_state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng_state >> 33) % range
    };
    let mut gateway_restarts = 0;
    for round in 0..8 {
        let mut agent = d.spawn_agent(&config);
        std::thread::sleep(Duration::from_millis(150 + next(400)));
        if round % 3 == 1 {
            // The gateway goes away under the agent, and comes back.
            gateway.stop();
            gateway = d.start_gateway_at(&listen, None, &[]);
            gateway_restarts += 1;
            std::thread::sleep(Duration::from_millis(100 + next(200)));
        }
        kill(&mut agent);
    }
    // Finally let it finish.
    let (code, stdout, stderr) = finish(d.spawn_agent(&config));
    assert!(code == 0 || code == 3, "{stdout}\n{stderr}");
    assert!(gateway_restarts >= 2);
    let gateway_log = gateway.log_text();
    assert!(gateway.stop().success());

    // Every usable row exactly once.
    let db = open_database(&d.sqlite_url()).await;
    assert_each_row_stored_once(&d, &db, COUNCIL, "csc_referrals", &extract).await;

    // The replay path ran: the gateway saw batches it already had.
    let duplicates: i64 = sqlx::query("SELECT COUNT(*) AS n FROM audit_log WHERE kind = 'batch' AND detail LIKE '%\"duplicate\"%'")
        .fetch_one(&db)
        .await
        .unwrap()
        .get("n");
    assert!(
        duplicates > 0,
        "resent batches were recognised; gateway log:\n{gateway_log}"
    );
    // The agent's status shows an empty spool and a completely read source.
    let status = joinery_ok(&["agent", "status", "--config", config.to_str().unwrap()]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains(": 0 batches") && status.contains("read completely"),
        "{status}"
    );
    // And the audit chain survived the restarts.
    let verified = joinery_ok(&[
        "audit",
        "verify",
        "--data-dir",
        d.gateway_data_dir().to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&verified.stdout).contains("audit log intact"));
}

/// A TCP proxy in front of the gateway whose connections can all be cut.
struct CuttableProxy {
    address: String,
    cut: std::sync::Arc<tokio::sync::Notify>,
}

impl CuttableProxy {
    async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let cut = std::sync::Arc::new(tokio::sync::Notify::new());
        let cutter = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                let cutter = cutter.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cutter.notified() => {}
                    }
                });
            }
        });
        Self { address, cut }
    }

    /// Drops every open connection (new ones are accepted again).
    fn cut(&self) {
        self.cut.notify_waiters();
    }
}

fn restart_postgres() {
    let version = std::fs::read_dir("/etc/postgresql")
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let status = std::process::Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            version.to_str().unwrap(),
            "main",
            "restart",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "PostgreSQL did not restart");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_restarts_and_cut_connections_lose_and_double_nothing() {
    let Some(url) = fresh_postgres("chaos").await else {
        return;
    };
    if std::process::Command::new("pg_ctlcluster")
        .arg("--help")
        .output()
        .is_err()
    {
        shout(
            "SKIPPED postgres_restarts_and_cut_connections: pg_ctlcluster is not available to restart PostgreSQL",
        );
        return;
    }
    let d = Deployment::new();
    let synth = d.synth(4000, 23);
    let gateway = d.start_gateway(Some(&url), &[]);
    let proxy = CuttableProxy::start(gateway.address.clone()).await;
    let extract = synth.join("extracts/camhs_referrals.csv");
    let config = d.agent_config(
        CAMHS,
        &proxy.address,
        &extract,
        &synth.join("mappings/camhs_referrals.yaml"),
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("batch_size: 200", "batch_size: 10");
    std::fs::write(&config, text).unwrap();

    let agent = d.spawn_agent(&config);
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if round % 2 == 0 {
            proxy.cut();
        } else {
            restart_postgres();
        }
    }
    let (code, stdout, stderr) = finish(agent);
    assert!(
        code == 0 || code == 3,
        "the agent rides out the faults:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("reconnected to the gateway"),
        "the faults really hit the agent:\n{stdout}"
    );
    assert!(gateway.stop().success());

    let db = open_database(&url).await;
    assert_each_row_stored_once(&d, &db, CAMHS, "camhs_referrals", &extract).await;
}
