//! The gateway's metrics: fixed names, recorded through the `metrics` facade
//! and exposed for Prometheus by the binary when `--metrics-listen` is given. Labels never
//! carry identifiers — only organisation codes, datasets and reason codes.

use std::time::Duration;

pub const BATCHES: &str = "joinery_gateway_batches_total";
pub const RECORDS: &str = "joinery_gateway_records_stored_total";
pub const ACK_LATENCY: &str = "joinery_gateway_ack_latency_seconds";
pub const COMMIT_GROUP_BATCHES: &str = "joinery_gateway_commit_group_batches";
pub const SESSIONS: &str = "joinery_gateway_sessions_total";
pub const HANDSHAKE_FAILURES: &str = "joinery_gateway_tls_handshake_failures_total";
pub const RETENTION_DELETED: &str = "joinery_gateway_retention_records_deleted_total";
pub const RECORDS_LINKED: &str = "joinery_gateway_records_linked_total";
pub const QUERIES: &str = "joinery_gateway_queries_total";
pub const CELLS_SUPPRESSED: &str = "joinery_gateway_cells_suppressed_total";
pub const LINKAGE_RUNS: &str = "joinery_gateway_linkage_runs_total";
pub const LINKAGE_SECONDS: &str = "joinery_gateway_linkage_run_seconds";
pub const LINKAGE_MOVED: &str = "joinery_gateway_linkage_person_ids_moved_total";
pub const LINKAGE_FAILURES: &str = "joinery_gateway_linkage_failures_total";
pub const TLS_EXPIRY: &str = "joinery_gateway_tls_expiry_timestamp_seconds";
pub const AGREEMENT_EXPIRY: &str = "joinery_gateway_agreement_expiry_timestamp_seconds";
pub const LINKAGE_LINKS: &str = "joinery_gateway_linkage_fuzzy_links";
pub const LINKAGE_EXPECTED_WRONG: &str = "joinery_gateway_linkage_expected_wrong_links";
pub const LINKAGE_EXPECTED_MISSED: &str = "joinery_gateway_linkage_expected_missed_links";
pub const POPULATION_UPDATES: &str = "joinery_gateway_population_updates_total";
pub const POPULATION_PEOPLE_READ: &str = "joinery_gateway_population_people_read_total";
pub const KEYHOLDER_ELEMENTS: &str = "joinery_keyholder_elements_total";
pub const SHARD_ASKS: &str = "joinery_gateway_shard_asks_total";

/// Histogram buckets for a linkage run's duration, in seconds.
pub const LINKAGE_SECONDS_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Histogram buckets for the ack latency, in seconds.
pub const ACK_LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Histogram buckets for the batches committed in one transaction.
pub const COMMIT_GROUP_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0];

/// The values the fixed-label counters take, each series shown at zero from
/// the start (an alert on a rate needs the series before its first event).
const SESSION_OUTCOMES: [&str; 3] = ["opened", "refused", "shed"];
const TURNED_AWAY: [&str; 5] = ["refused", "timeout", "shed", "over_budget", "idle"];
const LINKAGE_KINDS: [&str; 2] = ["incremental", "full"];
const LINK_METHODS: [&str; 2] = [
    crate::rekey::LinkMethod::ExactNhs.as_str(),
    crate::rekey::LinkMethod::Unlinked.as_str(),
];
const POPULATION_UPDATE_KINDS: [&str; 2] = ["changed", "full"];
/// What became of a step of an answer asked of every shard.
const SHARD_ASK_OUTCOMES: [&str; 3] = ["answered", "moved_on", "failed"];
/// What became of the elements agencies asked a keyholder to evaluate.
pub const KEYHOLDER_OUTCOMES: [&str; 4] =
    ["evaluated", "over_allowance", "not_admitted", "malformed"];

/// Describes every gateway metric to the installed recorder, and shows the
/// counters whose labels are known in advance at zero.
pub fn describe() {
    for outcome in SESSION_OUTCOMES {
        metrics::counter!(SESSIONS, "outcome" => outcome).increment(0);
    }
    for kind in TURNED_AWAY {
        metrics::counter!(HANDSHAKE_FAILURES, "kind" => kind).increment(0);
    }
    for kind in LINKAGE_KINDS {
        metrics::counter!(LINKAGE_RUNS, "kind" => kind).increment(0);
    }
    for method in LINK_METHODS {
        metrics::counter!(RECORDS_LINKED, "method" => method).increment(0);
    }
    metrics::counter!(LINKAGE_MOVED).increment(0);
    metrics::counter!(LINKAGE_FAILURES).increment(0);
    for kind in POPULATION_UPDATE_KINDS {
        metrics::counter!(POPULATION_UPDATES, "kind" => kind).increment(0);
    }
    metrics::counter!(POPULATION_PEOPLE_READ).increment(0);
    for outcome in SHARD_ASK_OUTCOMES {
        metrics::counter!(SHARD_ASKS, "outcome" => outcome).increment(0);
    }
    for outcome in KEYHOLDER_OUTCOMES {
        metrics::counter!(KEYHOLDER_ELEMENTS, "outcome" => outcome).increment(0);
    }
    metrics::describe_counter!(
        KEYHOLDER_ELEMENTS,
        "Blinded elements agencies asked a keyholder to evaluate, by outcome (evaluated, over_allowance, not_admitted, malformed)"
    );
    metrics::describe_counter!(
        BATCHES,
        "Batches answered, by organisation, dataset and outcome (committed, duplicate, rejected) and reason"
    );
    metrics::describe_counter!(RECORDS, "Records stored, by organisation and dataset");
    metrics::describe_histogram!(
        ACK_LATENCY,
        metrics::Unit::Seconds,
        "Time from receiving a batch to sending its ack (validation, re-keying and commit)"
    );
    metrics::describe_histogram!(
        COMMIT_GROUP_BATCHES,
        metrics::Unit::Count,
        "Batches committed in one transaction (all those waiting when a writer came free)"
    );
    metrics::describe_counter!(
        SESSIONS,
        "Ingest sessions, by outcome (opened, refused, shed)"
    );
    metrics::describe_counter!(
        RECORDS_LINKED,
        "Records stored, by how their person id was decided (exact-nhs, unlinked)"
    );
    metrics::describe_counter!(QUERIES, "Queries answered, by query");
    metrics::describe_counter!(
        CELLS_SUPPRESSED,
        "Released cells suppressed by disclosure control, by query"
    );
    metrics::describe_counter!(
        RETENTION_DELETED,
        "Records deleted by retention, by organisation and dataset"
    );
    metrics::describe_counter!(
        LINKAGE_RUNS,
        "Fuzzy linkage runs, by kind (incremental, full)"
    );
    metrics::describe_histogram!(
        LINKAGE_SECONDS,
        metrics::Unit::Seconds,
        "How long a fuzzy linkage run took, by kind (incremental, full): reading, comparing and saving"
    );
    metrics::describe_counter!(
        LINKAGE_MOVED,
        "Person ids given a new place on the person spine by fuzzy linkage"
    );
    metrics::describe_counter!(
        LINKAGE_FAILURES,
        "Fuzzy linkage runs that failed (readiness turns degraded after --linkage-failures-before-unready in a row)"
    );
    metrics::describe_counter!(
        POPULATION_UPDATES,
        "Times the population held for analytics was brought up to date, by kind (changed: only the people changed were read again; full: everyone)"
    );
    metrics::describe_counter!(
        POPULATION_PEOPLE_READ,
        "People read from the database to bring the population held for analytics up to date"
    );
    metrics::describe_counter!(
        SHARD_ASKS,
        "Steps of an answer asked of every shard by a gateway answering from shards, by outcome (answered; moved_on: a shard was past the generation asked, so the answer is worked out again; failed: a shard unreachable, refusing, or not the shard expected)"
    );
    metrics::describe_counter!(
        HANDSHAKE_FAILURES,
        "Connections turned away, by kind (refused, timeout, shed, over_budget, idle)"
    );
    metrics::describe_gauge!(
        TLS_EXPIRY,
        metrics::Unit::Seconds,
        "When the gateway's TLS material stops working (Unix time), by file: certificate, ca, crl (its next update)"
    );
    metrics::describe_gauge!(
        AGREEMENT_EXPIRY,
        metrics::Unit::Seconds,
        "When each loaded agreement expires (Unix time), by agreement and version"
    );
    metrics::describe_gauge!(
        LINKAGE_LINKS,
        "Fuzzy links between two organisations' records at the last full linkage run, by parameter version and organisation pair"
    );
    metrics::describe_gauge!(
        LINKAGE_EXPECTED_WRONG,
        "Of those links, how many the fitted model expects to join two different children"
    );
    metrics::describe_gauge!(
        LINKAGE_EXPECTED_MISSED,
        "Pairs of one child's records the fitted model expects linkage left apart, among those blocking compared"
    );
}

pub fn batch_answered(
    organisation: &str,
    dataset: &str,
    outcome: &'static str,
    reason: &'static str,
) {
    metrics::counter!(BATCHES, "organisation" => organisation.to_owned(), "dataset" => dataset.to_owned(), "outcome" => outcome, "reason" => reason).increment(1);
}

pub fn records_stored(organisation: &str, dataset: &str, count: u64) {
    metrics::counter!(RECORDS, "organisation" => organisation.to_owned(), "dataset" => dataset.to_owned()).increment(count);
}

pub fn ack_latency(elapsed: Duration) {
    metrics::histogram!(ACK_LATENCY).record(elapsed.as_secs_f64());
}

pub fn commit_group(batches: usize) {
    metrics::histogram!(COMMIT_GROUP_BATCHES).record(batches as f64);
}

pub fn session(outcome: &'static str) {
    debug_assert!(
        SESSION_OUTCOMES.contains(&outcome),
        "{outcome} is not in SESSION_OUTCOMES"
    );
    metrics::counter!(SESSIONS, "outcome" => outcome).increment(1);
}

pub fn linked(method: crate::rekey::LinkMethod, records: u64) {
    let method = method.as_str();
    debug_assert!(
        LINK_METHODS.contains(&method),
        "{method} is not in LINK_METHODS"
    );
    metrics::counter!(RECORDS_LINKED, "method" => method).increment(records);
}

pub fn query(query: &str, suppressed: u64) {
    metrics::counter!(QUERIES, "query" => query.to_owned()).increment(1);
    metrics::counter!(CELLS_SUPPRESSED, "query" => query.to_owned()).increment(suppressed);
}

pub fn retention_deleted(organisation: &str, dataset: &str, records: u64) {
    metrics::counter!(RETENTION_DELETED, "organisation" => organisation.to_owned(), "dataset" => dataset.to_owned()).increment(records);
}

/// A linkage run: full or incremental, how many person ids it moved and
/// how long it took.
pub fn linkage_run(full: bool, moved: usize, took: Duration) {
    let kind = if full { "full" } else { "incremental" };
    metrics::counter!(LINKAGE_RUNS, "kind" => kind).increment(1);
    metrics::histogram!(LINKAGE_SECONDS, "kind" => kind).record(took.as_secs_f64());
    metrics::counter!(LINKAGE_MOVED).increment(moved as u64);
}

/// The population held for analytics brought up to date: reading only the
/// people changed, or everyone; `people` read.
pub fn population_updated(full: bool, people: usize) {
    let kind = if full { "full" } else { "changed" };
    metrics::counter!(POPULATION_UPDATES, "kind" => kind).increment(1);
    metrics::counter!(POPULATION_PEOPLE_READ).increment(people as u64);
}

/// A step of an answer asked of every shard: `outcome` is `answered`,
/// `moved_on` or `failed`.
pub fn shard_ask(outcome: &'static str) {
    metrics::counter!(SHARD_ASKS, "outcome" => outcome).increment(1);
}

/// The last full run's estimate for one organisation pair
/// (`crate::linker::PairQuality`).
pub fn linkage_quality(
    version: u32,
    organisations: &[String; 2],
    links: u64,
    wrong: f64,
    missed: f64,
) {
    let labels = [
        ("params_version", version.to_string()),
        ("organisations", organisations.join("+")),
    ];
    metrics::gauge!(LINKAGE_LINKS, &labels).set(links as f64);
    metrics::gauge!(LINKAGE_EXPECTED_WRONG, &labels).set(wrong);
    metrics::gauge!(LINKAGE_EXPECTED_MISSED, &labels).set(missed);
}

/// The TLS material in use: its certificate's, the CA's and the revocation
/// list's ends of validity (Unix seconds).
pub fn tls_expiry(certificate: i64, ca: i64, crl_next_update: Option<i64>) {
    metrics::gauge!(TLS_EXPIRY, "file" => "certificate").set(certificate as f64);
    metrics::gauge!(TLS_EXPIRY, "file" => "ca").set(ca as f64);
    if let Some(next) = crl_next_update {
        metrics::gauge!(TLS_EXPIRY, "file" => "crl").set(next as f64);
    }
}

/// A loaded agreement's expiry (Unix seconds).
pub fn agreement_expiry(agreement: &str, version: u32, expires: i64) {
    metrics::gauge!(AGREEMENT_EXPIRY, "agreement" => agreement.to_owned(), "version" => version.to_string())
        .set(expires as f64);
}

pub fn linkage_failed() {
    metrics::counter!(LINKAGE_FAILURES).increment(1);
}

/// A connection turned away: a handshake refused, timed out or shed, a
/// connection over its budget, or one closed when idle.
pub fn turned_away(kind: &'static str) {
    debug_assert!(TURNED_AWAY.contains(&kind), "{kind} is not in TURNED_AWAY");
    metrics::counter!(HANDSHAKE_FAILURES, "kind" => kind).increment(1);
}
