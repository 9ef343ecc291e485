//! The telemetry reference names every metric the code records.

#[test]
fn every_metric_is_documented() {
    let reference =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/telemetry.md")).unwrap();
    use joinery_agent::metrics as a;
    use joinery_gateway::metrics as g;
    for name in [
        g::BATCHES,
        g::RECORDS,
        g::ACK_LATENCY,
        g::SESSIONS,
        g::HANDSHAKE_FAILURES,
        g::RETENTION_DELETED,
        g::RECORDS_LINKED,
        g::QUERIES,
        g::CELLS_SUPPRESSED,
        a::RECORDS_READ,
        a::RECORDS_QUARANTINED,
        a::RECORDS_OPTED_OUT,
        a::RECORDS_SENT,
        a::RECORDS_ACKED,
        a::BATCHES_REJECTED,
        a::ACK_LATENCY,
        a::SPOOL_BYTES,
        a::RECONNECTIONS,
    ] {
        assert!(
            reference.contains(&format!("`{name}`")),
            "{name} is not in docs/telemetry.md"
        );
    }
}
