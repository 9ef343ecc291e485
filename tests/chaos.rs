//! Nothing lost, nothing doubled (the short versions CI runs): an agent is
//! killed with SIGKILL again and again and the gateway is restarted while it
//! delivers; `joinery-bench chaos` on PostgreSQL (agent kills, gateway
//! crashes, cut connections, database restarts); and the agent's spool disk
//! fills up. At the end every source row is stored exactly once, and the
//! replay path (batches resent and recognised) really ran.

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
    let listen = free_local_address();
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
    let verified = d.on_store(&["audit", "verify"], None);
    assert!(verified.contains("audit log intact"));
}

/// The short run of `joinery-bench chaos` on PostgreSQL: three agencies'
/// agents deliver through a cuttable proxy while agents are killed, the
/// gateway crashes and restarts, connections are cut and PostgreSQL restarts.
#[tokio::test(flavor = "multi_thread")]
async fn bench_chaos_on_postgres_stores_every_row_exactly_once() {
    let Some(url) = fresh_postgres("chaos").await else {
        return;
    };
    if std::process::Command::new("pg_ctlcluster")
        .arg("--help")
        .output()
        .is_err()
    {
        shout(
            "SKIPPED bench_chaos_on_postgres: pg_ctlcluster is not available to restart PostgreSQL",
        );
        return;
    }
    let output = joinery_bench()
        .args([
            "chaos",
            "--records",
            "30000",
            "--agent-kills",
            "10",
            "--gateway-restarts",
            "3",
            "--cuts",
            "3",
            "--postgres-restarts",
            "3",
            "--max-pause-ms",
            "600",
            "--postgres-url",
            &url,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("lost 0, doubled 0"), "{stdout}");
    // The number printed after `label`.
    let figure = |label: &str| -> u64 {
        stdout
            .split(label)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
            .unwrap_or_else(|| panic!("no figure after {label:?} in:\n{stdout}"))
    };
    assert!(
        figure("recognised as duplicates: ") > 0,
        "the replay path ran:\n{stdout}"
    );
    assert_eq!(figure("faults applied: "), 19);
    assert!(
        figure("s (") >= 10,
        "most faults hit agents mid-delivery:\n{stdout}"
    );
}

/// A small tmpfs the test mounts (and unmounts when dropped).
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    /// `None` (announced loudly) where this process may not mount.
    fn mount(path: std::path::PathBuf, size: &str) -> Option<Self> {
        std::fs::create_dir_all(&path).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(Self { path }),
            Ok(out) => {
                shout(&format!(
                    "SKIPPED full-disk test: cannot mount a small tmpfs ({})",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                None
            }
            Err(e) => {
                shout(&format!("SKIPPED full-disk test: no mount command ({e})"));
                None
            }
        }
    }

    /// Fills the disk with a ballast file; returns its size.
    fn fill(&self) -> u64 {
        use std::io::Write;
        let mut ballast = std::fs::File::create(self.path.join("ballast")).unwrap();
        let chunk = vec![0u8; 4096];
        let mut written = 0u64;
        loop {
            match ballast.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        let _ = ballast.flush();
        written
    }

    fn free(&self) {
        std::fs::remove_file(self.path.join("ballast")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_spool_disk_pauses_reading_and_resumes_when_space_returns() {
    let d = Deployment::new();
    let Some(disk) = SmallDisk::mount(d.path("spool-disk"), "1m") else {
        return;
    };
    let synth = d.synth(2000, 29);
    let gateway = d.start_gateway(None, &[]);
    let extract = synth.join("extracts/camhs_referrals.csv");
    let config = d.agent_config(
        CAMHS,
        &gateway.address,
        &extract,
        &synth.join("mappings/camhs_referrals.yaml"),
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("batch_size: 200", "batch_size: 25")
        .replace(
            &format!("'{}'", d.path(&format!("spool/{CAMHS}")).display()),
            &format!("'{}'", disk.path.join("spool").display()),
        );
    assert!(
        text.contains("spool-disk"),
        "the spool is on the small disk"
    );
    std::fs::write(&config, text).unwrap();

    // The disk is full before the agent starts.
    assert!(disk.fill() > 0);
    let mut agent = d.spawn_agent(&config);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent waits for space rather than failing"
    );
    let db = open_database(&d.sqlite_url()).await;
    let stored: i64 = sqlx::query("SELECT COUNT(*) AS n FROM records")
        .fetch_one(&db)
        .await
        .unwrap()
        .get("n");
    assert_eq!(stored, 0, "nothing could be spooled, so nothing was sent");

    // Space returns: the agent resumes by itself and delivers everything.
    disk.free();
    let (code, stdout, stderr) = finish(agent);
    assert!(code == 0 || code == 3, "{stdout}\n{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("no space left to spool"),
        "the agent said why it paused:\n{stdout}\n{stderr}"
    );
    assert!(gateway.stop().success());
    assert_each_row_stored_once(&d, &db, CAMHS, "camhs_referrals", &extract).await;
}
