//! The audit trail: every delivery, refusal, load and query is recorded in a
//! hash chain with signed checkpoints; `joinery audit verify` finds an edited,
//! deleted or reordered row, and a consistently rewritten chain, at the right
//! entry; `joinery audit report` summarises it for an IG lead.

mod common;

use std::path::{Path, PathBuf};

use common::ingest::*;
use common::*;
use joinery_gateway::audit::{AuditRecord, entry_hash};
use joinery_proto::v1::RunRequest;
use joinery_proto::v1::query_client::QueryClient;
use sqlx::Row;

/// A consistent copy of the gateway's SQLite database (`VACUUM INTO`: copying
/// the files of a WAL database is not).
async fn copy_database(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let db = open_database(&format!("sqlite://{}", from.join("joinery.db").display())).await;
    let target = to.join("joinery.db");
    let _ = std::fs::remove_file(&target);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "VACUUM INTO '{}'",
        target.display()
    )))
    .execute(&db)
    .await
    .unwrap();
    db.close().await;
}

fn verify(data_dir: &Path, extra: &[&str]) -> (bool, String) {
    let mut command = joinery();
    command
        .args(["audit", "verify", "--data-dir"])
        .arg(data_dir)
        .args(extra);
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), format!("{stdout}{stderr}"))
}

/// A copy of the gateway's data directory, tampered with by `sql`.
async fn drill(d: &Deployment, name: &str, sql: &[&'static str]) -> PathBuf {
    let dir = d.path(&format!("drill-{name}"));
    copy_database(&d.gateway_data_dir(), &dir).await;
    let db = open_database(&format!("sqlite://{}", dir.join("joinery.db").display())).await;
    for statement in sql {
        let changed = sqlx::query(*statement)
            .execute(&db)
            .await
            .unwrap()
            .rows_affected();
        assert!(changed > 0, "{name}: {statement} changed nothing");
    }
    db.close().await;
    dir
}

/// Rewrites the chain from entry `from` onwards so every hash is consistent
/// again, as a superuser covering their tracks would.
async fn rewrite_chain(dir: &Path, from: i64) {
    let db = open_database(&format!("sqlite://{}", dir.join("joinery.db").display())).await;
    let rows = sqlx::query("SELECT * FROM audit_log WHERE seq >= $1 - 1 ORDER BY seq")
        .bind(from)
        .fetch_all(&db)
        .await
        .unwrap();
    let mut prev: String = rows[0].get("hash");
    for row in &rows[1..] {
        let seq: i64 = row.get("seq");
        let record = AuditRecord {
            kind: row.get("kind"),
            actor: row.get("actor"),
            agreement_id: row.get("agreement_id"),
            agreement_version: row.get::<i64, _>("agreement_version") as u32,
            detail: row.get("detail"),
        };
        let hash = entry_hash(seq as u64, row.get("at_ms"), &record, &prev);
        sqlx::query("UPDATE audit_log SET prev_hash = $1, hash = $2 WHERE seq = $3")
            .bind(&prev)
            .bind(&hash)
            .bind(seq)
            .execute(&db)
            .await
            .unwrap();
        prev = hash;
    }
    sqlx::query("UPDATE audit_head SET hash = $1")
        .bind(&prev)
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_trail_is_complete_and_tamper_evident() {
    let d = Deployment::new();
    let synth = d.synth(150, 9);
    let gateway = d.start_gateway(None, &["--checkpoint-interval-secs", "1"]);
    d.deliver(
        &gateway.address,
        &synth,
        &[(COUNCIL, "csc_referrals"), (CAMHS, "camhs_referrals")],
    );
    // A refusal and a query, to be audited too.
    assert!(
        Session::open(&gateway.address, org_config(&d, CAMHS), hello(&d, SALT))
            .await
            .is_err()
    );
    let analyst = joinery_crypto::tls::client_config(&files(&d, d.analyst_cert())).unwrap();
    QueryClient::new(channel(&gateway.address, analyst).await.unwrap())
        .run(RunRequest {
            query: "rows: sex".to_owned(),
        })
        .await
        .unwrap();
    // An agency keeps the signed checkpoints.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let kept = d.path("kept-checkpoints.jsonl");
    let fetched = d.client(
        &["audit", "fetch"],
        &gateway.address,
        d.org_cert(COUNCIL),
        &["--out", kept.to_str().unwrap()],
    );
    assert!(String::from_utf8_lossy(&fetched.stdout).contains("new checkpoints appended"));
    // Every agent run keeps the newest checkpoints too, beside its spool.
    let config = d.agent_config(
        COUNCIL,
        &gateway.address,
        &synth.join("extracts/csc_referrals.csv"),
        &synth.join("mappings/csc_referrals.yaml"),
    );
    let (_, agent_out, _) = finish(d.spawn_agent(&config));
    assert!(
        agent_out.contains("signed audit checkpoints of the gateway"),
        "{agent_out}"
    );
    let agent_kept = d.path(&format!("spool/{COUNCIL}/audit-checkpoints.jsonl"));
    let lines = std::fs::read_to_string(&agent_kept).unwrap();
    assert!(!lines.trim().is_empty(), "the agent kept checkpoints");
    assert!(gateway.stop().success());

    let (ok, output) = verify(&d.gateway_data_dir(), &[]);
    assert!(ok, "{output}");
    // Agreement loaded, two batches, a refused session, a query.
    assert!(output.contains("audit log intact: 5 entries"), "{output}");
    let public_key =
        joinery_crypto::signing::SigningKey::load(&d.gateway_data_dir().join("audit-signing.key"))
            .unwrap()
            .public_hex();

    // What an IG lead reads.
    let report = d.audit_report_today();
    for expected in [
        "E08000099  csc_referrals:",
        "RX9  camhs_referrals:",
        "committed",
        "RX9: 1 x certificate is for organisation RX9 but Hello claims \"RY9\"",
        "analyst:test-analyst: 1 x run",
        "children-at-risk-stratification v1 (digest",
    ] {
        assert!(
            report.contains(expected),
            "{expected} missing from\n{report}"
        );
    }

    // The tamper drills: each on its own copy, verified with the published key.
    let key_arg = ["--public-key", public_key.as_str()];
    let cases: Vec<(&str, Vec<&'static str>, &str)> = vec![
        (
            "edit",
            vec![
                "UPDATE audit_log SET detail = replace(detail, 'committed', 'rejected') WHERE seq = 3",
            ],
            "BROKEN at entry 3: entry 3 has been edited",
        ),
        (
            "delete",
            vec!["DELETE FROM audit_log WHERE seq = 4"],
            "BROKEN at entry 4: entry 4 is missing",
        ),
        (
            "reorder",
            vec![
                "UPDATE audit_log SET seq = seq + 1000 WHERE seq IN (2, 3)",
                "UPDATE audit_log SET seq = 3 WHERE seq = 1002",
                "UPDATE audit_log SET seq = 2 WHERE seq = 1003",
            ],
            "BROKEN at entry 2: entry 2 does not follow entry 1",
        ),
        (
            "truncate",
            vec!["DELETE FROM audit_log WHERE seq > 3"],
            "BROKEN at entry 4: entries 4 to",
        ),
    ];
    for (name, sql, expected) in cases {
        let dir = drill(&d, name, &sql).await;
        let (ok, output) = verify(&dir, &key_arg);
        assert!(!ok, "{name}: {output}");
        assert!(output.contains(expected), "{name}: {output}");
    }

    // A superuser edits entry 3 and rewrites the chain so every hash matches:
    // the signed checkpoints catch it...
    let dir = drill(
        &d,
        "rewrite",
        &["UPDATE audit_log SET detail = replace(detail, 'committed', 'rejected') WHERE seq = 3"],
    )
    .await;
    rewrite_chain(&dir, 3).await;
    let (ok, output) = verify(&dir, &key_arg);
    assert!(
        !ok && output.contains("differs from the checkpoint signed at entry"),
        "{output}"
    );
    // ...and if they also delete the checkpoints, the ones an agency kept do.
    let dir2 = d.path("drill-rewrite-and-hide");
    copy_database(&dir, &dir2).await;
    let db = open_database(&format!("sqlite://{}", dir2.join("joinery.db").display())).await;
    sqlx::query("DELETE FROM audit_checkpoints")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    // The chain alone is then consistent, but its entries are covered by
    // no signed checkpoint: once they are older than checkpoints are
    // signed (here: any age), verify refuses.
    let (ok, output) = verify(&dir2, &key_arg);
    assert!(ok, "entries younger than the signing interval: {output}");
    let (ok, output) = verify(
        &dir2,
        &["--public-key", &public_key, "--max-uncovered-secs", "0"],
    );
    assert!(
        !ok && output.contains("covered by no signed checkpoint"),
        "{output}"
    );
    let (ok, output) = verify(
        &dir,
        &["--public-key", &public_key, "--max-uncovered-secs", "0"],
    );
    assert!(!ok, "the rewrite is still caught: {output}");
    let (ok, output) = verify(
        &dir2,
        &[
            "--public-key",
            &public_key,
            "--checkpoints",
            kept.to_str().unwrap(),
        ],
    );
    assert!(
        !ok && output.contains("differs from the checkpoint"),
        "{output}"
    );
    let (ok, output) = verify(
        &dir2,
        &[
            "--public-key",
            &public_key,
            "--checkpoints",
            agent_kept.to_str().unwrap(),
        ],
    );
    assert!(!ok, "the agent's kept checkpoints catch it too: {output}");

    // A data directory without a gateway database is an error, not an
    // intact log of nothing.
    let empty = d.path("no-gateway-here");
    std::fs::create_dir_all(&empty).unwrap();
    let (ok, output) = verify(&empty, &key_arg);
    assert!(!ok && output.contains("no gateway database"), "{output}");
    assert!(!empty.join("joinery.db").exists(), "nothing created");

    // A checkpoint signed by someone else's key is not trusted.
    let (ok, output) = verify(&d.gateway_data_dir(), &["--public-key", &"ab".repeat(32)]);
    assert!(
        !ok && output.contains("not signed by a trusted audit key"),
        "{output}"
    );
}
