//! `joinery audit`: verify the gateway's hash-chained audit log and its signed
//! checkpoints, report it for an IG lead, and fetch checkpoints to keep.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use joinery_gateway::audit::{AuditEvent, Checkpoint, Decision, EXTRACT_QUERY, Entry, Verifier};
use joinery_gateway::storage::Storage;

use crate::commands::gateway::StoreArgs;
use crate::commands::query::GatewayArgs;

/// Entries read per database round trip.
const PAGE: u32 = 10_000;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the chain and every checkpoint; name the first broken entry. Exit status 1 if broken.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        /// A trusted audit public key (hex); repeat for several gateways
        /// [default: the key in --data-dir/audit-signing.key].
        #[arg(long = "public-key")]
        public_keys: Vec<String>,
        /// Checkpoints kept outside the gateway (JSON lines from `joinery audit fetch`).
        #[arg(long)]
        checkpoints: Option<PathBuf>,
        /// Entries older than this (seconds) must be covered by a signed
        /// checkpoint; the gateway signs one every five minutes by default.
        #[arg(long, default_value_t = 900)]
        max_uncovered_secs: u64,
    },
    /// What was sent, refused, deleted and queried, per agreement and organisation.
    Report {
        #[command(flatten)]
        store: StoreArgs,
        /// First day (YYYY-MM-DD, UTC).
        #[arg(long, value_parser = crate::commands::synth::parse_date)]
        from: time::Date,
        /// Last day, inclusive (YYYY-MM-DD, UTC).
        #[arg(long, value_parser = crate::commands::synth::parse_date)]
        to: time::Date,
    },
    /// Fetch the gateway's signed checkpoints and append new ones to a file an agency keeps.
    Fetch {
        #[command(flatten)]
        gateway: GatewayArgs,
        #[arg(long)]
        out: PathBuf,
    },
}

impl AuditCommand {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Verify {
                store,
                public_keys,
                checkpoints,
                max_uncovered_secs,
            } => verify(store, public_keys, checkpoints, max_uncovered_secs).await,
            Self::Report { store, from, to } => report(store, from, to).await,
            Self::Fetch { gateway, out } => fetch(gateway, out).await,
        }
    }
}

/// Every entry, page by page, in order.
async fn for_each_entry(storage: &Storage, mut each: impl FnMut(&Entry)) -> anyhow::Result<()> {
    let mut after = 0;
    loop {
        let page = storage.audit_entries(after, PAGE).await?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = last.seq;
        page.iter().for_each(&mut each);
    }
}

fn read_kept(path: &PathBuf) -> anyhow::Result<Vec<Checkpoint>> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l).with_context(|| {
                    format!("{}, line {}: not a checkpoint", path.display(), i + 1)
                })
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

async fn verify(
    store: StoreArgs,
    mut keys: Vec<String>,
    kept: Option<PathBuf>,
    max_uncovered_secs: u64,
) -> anyhow::Result<ExitCode> {
    if keys.is_empty() {
        let path = store.data_dir().join("audit-signing.key");
        let key = joinery_crypto::signing::SigningKey::load(&path)
            .with_context(|| format!("no --public-key given and cannot read {}", path.display()))?;
        keys.push(key.public_hex());
    }
    let storage = store.existing_storage().await?;
    let mut checkpoints = storage.checkpoints(0).await?;
    if let Some(path) = &kept {
        checkpoints.extend(read_kept(path)?);
    }
    checkpoints.sort_by_key(|c| c.seq);
    checkpoints.dedup();
    let mut verifier = Verifier::new(checkpoints.iter().map(|c| c.seq));
    for_each_entry(&storage, |e| verifier.entry(e)).await?;
    let (head, _) = storage.audit_head().await?;
    let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let uncovered_since =
        now_ms - i64::try_from(max_uncovered_secs).unwrap_or(i64::MAX / 2000) * 1000;
    let result = verifier.finish(head, &checkpoints, &keys, uncovered_since);
    match result.broken {
        None => {
            println!(
                "audit log intact: {} entries, {} signed checkpoints verified (keys: {})",
                result.entries,
                result.checkpoints,
                keys.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Some((seq, why)) => {
            println!("audit log BROKEN at entry {seq}: {why}");
            Ok(ExitCode::FAILURE)
        }
    }
}

#[derive(Default)]
struct Tally {
    batches: BTreeMap<String, u64>,
    records_stored: u64,
}

async fn report(store: StoreArgs, from: time::Date, to: time::Date) -> anyhow::Result<ExitCode> {
    let storage = store.existing_storage().await?;
    let start = from.midnight().assume_utc().unix_timestamp() * 1000;
    let end = (to + time::Duration::days(1))
        .midnight()
        .assume_utc()
        .unix_timestamp()
        * 1000;
    let mut delivered: BTreeMap<(String, String, String), Tally> = BTreeMap::new();
    let mut refused: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut deleted: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let mut queries: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    let mut loaded: Vec<String> = Vec::new();
    for_each_entry(&storage, |e| {
        if e.at_ms < start || e.at_ms >= end {
            return;
        }
        let r = &e.record;
        let Some(event) = r.event() else {
            return;
        };
        let agreement = format!("{} v{}", r.agreement_id, r.agreement_version);
        match event {
            AuditEvent::Batch {
                dataset,
                records_stored,
                decision,
                reason,
                ..
            } => {
                let tally = delivered
                    .entry((agreement, r.actor.clone(), dataset))
                    .or_default();
                let decision = match (decision, reason) {
                    (_, Some(reason)) => format!("rejected ({reason})"),
                    (Decision::Committed, None) => "committed".to_owned(),
                    (Decision::Duplicate, None) => "duplicate".to_owned(),
                    (Decision::Rejected, None) => "rejected".to_owned(),
                };
                *tally.batches.entry(decision).or_default() += 1;
                tally.records_stored += records_stored;
            }
            AuditEvent::SessionRefused { reason, .. } => {
                *refused.entry((r.actor.clone(), reason)).or_default() += 1
            }
            AuditEvent::Retention {
                organisation,
                dataset,
                records,
                ..
            } => {
                *deleted
                    .entry((agreement, organisation, dataset))
                    .or_default() += records
            }
            AuditEvent::Query {
                query,
                cells_released,
                ..
            } => {
                let q = queries.entry((r.actor.clone(), query)).or_default();
                q.0 += 1;
                q.1 += cells_released;
            }
            AuditEvent::AgreementLoaded { digest, .. } => {
                loaded.push(format!("{agreement} (digest {digest})"))
            }
            AuditEvent::Linkage { .. }
            | AuditEvent::SnapshotReplaced { .. }
            | AuditEvent::TookOver { .. } => {}
        }
    })
    .await?;

    println!("Audit report, {from} to {to} (UTC)\n");
    println!("Deliveries, by agreement, organisation and dataset:");
    for ((agreement, organisation, dataset), tally) in &delivered {
        let batches: Vec<String> = tally
            .batches
            .iter()
            .map(|(d, n)| format!("{n} {d}"))
            .collect();
        println!(
            "  {agreement}  {organisation}  {dataset}: {}; {} records stored",
            batches.join(", "),
            tally.records_stored
        );
    }
    println!("\nSessions refused:");
    for ((actor, reason), n) in &refused {
        println!("  {actor}: {n} x {reason}");
    }
    println!("\nDeleted by retention:");
    for ((agreement, organisation, dataset), records) in &deleted {
        println!("  {agreement}  {organisation}  {dataset}: {records} records");
    }
    println!("\nQueries:");
    for ((actor, query), (n, cells)) in &queries {
        // A row-level extract releases rows (one per person and cell), not
        // table cells.
        let unit = if query == EXTRACT_QUERY {
            "person rows"
        } else {
            "cells"
        };
        println!("  {actor}: {n} x {query}, {cells} {unit} released");
    }
    println!("\nAgreements loaded:");
    for line in &loaded {
        println!("  {line}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn fetch(gateway: GatewayArgs, out: PathBuf) -> anyhow::Result<ExitCode> {
    let fetched = joinery_agent::checkpoints::fetch_into(gateway.channel().await?, &out).await?;
    println!(
        "{} new checkpoints appended to {} ({} kept in all)",
        fetched.new,
        out.display(),
        fetched.kept
    );
    Ok(ExitCode::SUCCESS)
}
