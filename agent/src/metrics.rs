//! The agent's metrics: fixed names, recorded through the `metrics` facade
//! and exposed for Prometheus by the binary when `joinery agent run
//! --metrics-listen` is given. Labels carry only the dataset and reason
//! codes, never identifiers.

use std::time::Duration;

pub const RECORDS_READ: &str = "joinery_agent_records_read_total";
pub const RECORDS_QUARANTINED: &str = "joinery_agent_records_quarantined_total";
pub const RECORDS_OPTED_OUT: &str = "joinery_agent_records_opted_out_total";
pub const RECORDS_SENT: &str = "joinery_agent_records_sent_total";
pub const RECORDS_ACKED: &str = "joinery_agent_records_acked_total";
pub const BATCHES_REJECTED: &str = "joinery_agent_batches_rejected_total";
pub const ACK_LATENCY: &str = "joinery_agent_ack_latency_seconds";
pub const SPOOL_BYTES: &str = "joinery_agent_spool_bytes";
pub const RECONNECTIONS: &str = "joinery_agent_reconnections_total";
pub const TLS_EXPIRY: &str = "joinery_agent_tls_expiry_timestamp_seconds";

/// Describes every agent metric to the installed recorder, and shows the
/// label-free counter at zero from the start.
pub fn describe() {
    metrics::counter!(RECONNECTIONS).increment(0);
    metrics::describe_counter!(RECORDS_READ, "Source rows read, by dataset");
    metrics::describe_counter!(
        RECORDS_QUARANTINED,
        "Rows quarantined (not sent), by dataset"
    );
    metrics::describe_counter!(
        RECORDS_OPTED_OUT,
        "Rows withheld under the National Data Opt-out, by dataset"
    );
    metrics::describe_counter!(RECORDS_SENT, "Records sent to the gateway, by dataset");
    metrics::describe_counter!(
        RECORDS_ACKED,
        "Records acknowledged by the gateway, by dataset and outcome (committed, duplicate)"
    );
    metrics::describe_counter!(
        BATCHES_REJECTED,
        "Batches the gateway rejected, by dataset and reason"
    );
    metrics::describe_gauge!(
        SPOOL_BYTES,
        metrics::Unit::Bytes,
        "Bytes of batches in the spool waiting for an acknowledgement"
    );
    metrics::describe_gauge!(
        TLS_EXPIRY,
        metrics::Unit::Seconds,
        "When the agent's TLS material stops working (Unix time), by file: certificate, ca"
    );
    metrics::describe_counter!(
        RECONNECTIONS,
        "Sessions reopened after the gateway or network failed"
    );
    metrics::describe_histogram!(
        ACK_LATENCY,
        metrics::Unit::Seconds,
        "Time from sending a batch to its acknowledgement"
    );
}

pub fn rows(dataset: &str, read: u64, quarantined: u64, opted_out: u64, sent: u64) {
    let d = dataset.to_owned();
    metrics::counter!(RECORDS_READ, "dataset" => d.clone()).increment(read);
    metrics::counter!(RECORDS_QUARANTINED, "dataset" => d.clone()).increment(quarantined);
    metrics::counter!(RECORDS_OPTED_OUT, "dataset" => d.clone()).increment(opted_out);
    metrics::counter!(RECORDS_SENT, "dataset" => d).increment(sent);
}

pub fn acked(dataset: &str, outcome: &'static str, records: u64, latency: Duration) {
    metrics::counter!(RECORDS_ACKED, "dataset" => dataset.to_owned(), "outcome" => outcome)
        .increment(records);
    metrics::histogram!(ACK_LATENCY).record(latency.as_secs_f64());
}

pub fn spool_bytes(bytes: u64) {
    metrics::gauge!(SPOOL_BYTES).set(bytes as f64);
}

/// The agency's certificate's and the CA's ends of validity (Unix seconds).
pub fn tls_expiry(certificate: i64, ca: i64) {
    metrics::gauge!(TLS_EXPIRY, "file" => "certificate").set(certificate as f64);
    metrics::gauge!(TLS_EXPIRY, "file" => "ca").set(ca as f64);
}

pub fn reconnected() {
    metrics::counter!(RECONNECTIONS).increment(1);
}

pub fn rejected(dataset: &str, reason: &str) {
    metrics::counter!(BATCHES_REJECTED, "dataset" => dataset.to_owned(), "reason" => reason.to_owned()).increment(1);
}
