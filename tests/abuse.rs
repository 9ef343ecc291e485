//! Abuse: hostile clients must not take the gateway down or starve real
//! agents. Each case runs against a real gateway process and checks that it
//! stays up, that a real agent's session still commits (its ack latency
//! compared with the quiet baseline), and that memory stays bounded. The
//! figures are printed (`cargo test --test abuse -- --nocapture`).

mod common;

use std::time::{Duration, Instant};

use common::ingest::*;
use common::*;
use joinery_proto::v1::AckStatus;
use tonic::Code;

/// Median time for a real agent session to have `n` batches acknowledged.
async fn ack_latency(d: &Deployment, address: &str, seed: u8, n: u8) -> Duration {
    let mut session = Session::open(address, org_config(d, SALT), hello(d, SALT))
        .await
        .expect("real agent session");
    let mut times = Vec::new();
    for i in 0..n {
        let started = Instant::now();
        let ack = session
            .send(batch(seed.wrapping_add(i), 50))
            .await
            .expect("ack");
        assert_eq!(ack.status(), AckStatus::Committed);
        times.push(started.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_clients_do_not_take_the_gateway_down() {
    let d = Deployment::new();
    let mut gateway = d.start_gateway(
        None,
        &["--max-connections", "256", "--handshake-timeout-secs", "2"],
    );
    let baseline = ack_latency(&d, &gateway.address, 1, 9).await;
    let (rss_before, _) = gateway.memory_kib();

    // 1. A 64 MB message (the limit is 16 MB): refused with a reason.
    let mut big = Session::open(&gateway.address, org_config(&d, SALT), hello(&d, SALT))
        .await
        .unwrap();
    let huge = batch_for("salt_contacts", 200, 1);
    let mut huge = huge;
    huge.body.as_mut().unwrap().records[0]
        .attributes
        .insert("padding".into(), "x".repeat(64 * 1024 * 1024));
    let (code, message) = big.send(huge).await.unwrap_err();
    assert!(
        matches!(code, Code::OutOfRange | Code::ResourceExhausted),
        "{code:?}: {message}"
    );

    // 2. Streams opened and reset in a loop.
    for _ in 0..300 {
        let channel = channel(&gateway.address, org_config(&d, CAMHS))
            .await
            .unwrap();
        let mut client = joinery_proto::v1::ingest_client::IngestClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let call = tokio::spawn(async move {
            client
                .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        drop(tx);
        call.abort();
    }

    // 3. Hundreds of idle connections that finished TLS, and hundreds that never start it.
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(
            channel(&gateway.address, org_config(&d, CAMHS))
                .await
                .unwrap(),
        );
    }
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(std::net::TcpStream::connect(&gateway.address).unwrap());
    }

    // The real agent is still served, and not much slower.
    let under_attack = ack_latency(&d, &gateway.address, 100, 9).await;
    let (rss_after, peak) = gateway.memory_kib();
    println!(
        "abuse figures: ack latency p50 quiet {:.1} ms, under attack {:.1} ms; gateway RSS {} MiB before, {} MiB after, peak {} MiB",
        baseline.as_secs_f64() * 1e3,
        under_attack.as_secs_f64() * 1e3,
        rss_before / 1024,
        rss_after / 1024,
        peak / 1024
    );
    assert!(gateway.is_running(), "the gateway stays up");
    // 2x the quiet median, with a floor for a noisy 2-core machine.
    assert!(
        under_attack <= (baseline * 2).max(Duration::from_millis(250)),
        "ack latency {under_attack:?} vs baseline {baseline:?}"
    );
    assert!(peak < 512 * 1024, "peak memory stays bounded: {peak} KiB");
    drop(idle);
    drop(silent);
    assert!(gateway.stop().success());
}
