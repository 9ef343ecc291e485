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

/// Median time for a real agent session to have a batch acknowledged, over `n`.
async fn ack_latency(d: &Deployment, address: &str, seed: u8, n: u8) -> Duration {
    let times = ack_latencies(d, address, seed, n).await;
    times[times.len() / 2]
}

/// The times for a real agent session to have each of `n` batches
/// acknowledged, sorted.
async fn ack_latencies(d: &Deployment, address: &str, seed: u8, n: u8) -> Vec<Duration> {
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
    times
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

    // 3. Dozens of idle connections that finished TLS (as many as one
    // certificate may hold), and hundreds that never start it.
    let mut idle = Vec::new();
    for _ in 0..60 {
        idle.push(
            channel(&gateway.address, org_config(&d, CAMHS))
                .await
                .unwrap(),
        );
    }
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(connect_from_another_host(&gateway.address).unwrap());
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

/// A gzip stream that expands to `megabytes` MiB of zeros, built without
/// ever holding the expansion: one deflate block for 1 MiB of zeros after a
/// window of zeros decodes the same every time, so it is repeated.
fn gzip_bomb(megabytes: usize) -> Vec<u8> {
    use std::io::Write;
    let zeros = vec![0u8; 1 << 20];
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut block = || {
        let before = encoder.get_ref().len();
        encoder.write_all(&zeros).unwrap();
        encoder.flush().unwrap();
        encoder.get_ref()[before..].to_vec()
    };
    block(); // header and the first MiB, which fills the window
    let repeated = block();
    assert_eq!(repeated, block(), "the block repeats");
    let mut bomb = encoder.get_ref().clone();
    for _ in 3..megabytes {
        bomb.extend_from_slice(&repeated);
    }
    bomb
}

/// Sends one gzip-compressed gRPC message (the bytes given) as the opening
/// of an Ingest stream, by hand, and returns the gRPC status and message.
async fn send_compressed_message(
    channel: tonic::transport::Channel,
    gzip: Vec<u8>,
) -> (Code, String) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut frame = vec![1u8]; // compressed flag
    frame.extend_from_slice(&(gzip.len() as u32).to_be_bytes());
    frame.extend_from_slice(&gzip);
    let request = http::Request::builder()
        .method("POST")
        .uri("/joinery.v1.Ingest/Stream")
        .header("content-type", "application/grpc")
        .header("grpc-encoding", "gzip")
        .header("te", "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from(frame),
        )))
        .unwrap();
    let response = channel.oneshot(request).await.expect("an HTTP response");
    let mut headers = response.headers().clone();
    if headers.get("grpc-status").is_none() {
        let collected = response.into_body().collect().await.expect("a body");
        headers = collected.trailers().cloned().unwrap_or_default();
    }
    let status = tonic::Status::from_header_map(&headers).expect("a gRPC status");
    (status.code(), status.message().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compressed_bomb_is_cut_off_at_the_message_limit() {
    let d = Deployment::new();
    let mut gateway = d.start_gateway(None, &[]);
    let baseline = ack_latency(&d, &gateway.address, 1, 9).await;

    // 1 MiB on the wire, 1 GiB when inflated; the limit is 16 MiB.
    let bomb = gzip_bomb(1024);
    assert!(bomb.len() < 2 << 20, "{} bytes", bomb.len());
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let channel = channel(&gateway.address, org_config(&d, CAMHS))
            .await
            .unwrap();
        outcomes.push(send_compressed_message(channel, bomb.clone()).await);
    }
    for (code, message) in &outcomes {
        assert_eq!(*code, Code::ResourceExhausted, "{message}");
        assert!(message.contains("size limit"), "{message}");
    }

    let under_attack = ack_latency(&d, &gateway.address, 100, 9).await;
    let (_, peak) = gateway.memory_kib();
    println!(
        "compressed-bomb figures: {} KiB bomb inflating to 1 GiB, refused {} times; ack p50 quiet {:.1} ms, after {:.1} ms; gateway peak RSS {} MiB",
        bomb.len() / 1024,
        outcomes.len(),
        baseline.as_secs_f64() * 1e3,
        under_attack.as_secs_f64() * 1e3,
        peak / 1024
    );
    assert!(gateway.is_running(), "the gateway stays up");
    assert!(
        under_attack <= (baseline * 2).max(Duration::from_millis(250)),
        "ack latency {under_attack:?} vs baseline {baseline:?}"
    );
    // Five inflations stopped at 16 MiB each: far from 1 GiB.
    assert!(peak < 256 * 1024, "peak memory stays bounded: {peak} KiB");
    assert!(gateway.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_idle_streams_do_not_starve_other_agencies() {
    const STREAMS: usize = 10_000;
    const CONNECTIONS: usize = 50;
    let d = Deployment::new();
    let mut gateway = d.start_gateway(None, &[]);
    let baseline = ack_latency(&d, &gateway.address, 1, 9).await;
    let (rss_before, _) = gateway.memory_kib();

    // One agency's runaway client opens 10,000 Ingest streams over 50
    // connections and never says Hello.
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(
            channel(&gateway.address, org_config(&d, CAMHS))
                .await
                .unwrap(),
        );
    }
    let (outcomes, mut results) = tokio::sync::mpsc::unbounded_channel();
    let mut senders = Vec::new();
    for i in 0..STREAMS {
        let mut client =
            joinery_proto::v1::ingest_client::IngestClient::new(channels[i % CONNECTIONS].clone());
        let (tx, rx) = tokio::sync::mpsc::channel::<joinery_proto::v1::AgentMessage>(1);
        senders.push(tx); // held open: the streams stay idle
        let outcomes = outcomes.clone();
        tokio::spawn(async move {
            let result = client
                .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
            let _ = outcomes.send(result.err().map(|s| s.code()));
        });
    }
    // All but the organisation's session allowance are shed at once.
    let mut shed = 0;
    let mut other = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    while shed + other.len() < STREAMS - 32 {
        match tokio::time::timeout_at(deadline, results.recv()).await {
            Ok(Some(Some(Code::ResourceExhausted))) => shed += 1,
            Ok(Some(outcome)) => other.push(outcome),
            Ok(None) | Err(_) => break,
        }
    }

    // Another agency's real agent is still served, and not much slower.
    let under_attack = ack_latency(&d, &gateway.address, 100, 9).await;
    let (rss_after, peak) = gateway.memory_kib();
    println!(
        "idle-stream figures: {STREAMS} streams over {CONNECTIONS} connections, {shed} shed; ack p50 quiet {:.1} ms, under attack {:.1} ms; gateway RSS {} MiB before, {} MiB after, peak {} MiB",
        baseline.as_secs_f64() * 1e3,
        under_attack.as_secs_f64() * 1e3,
        rss_before / 1024,
        rss_after / 1024,
        peak / 1024
    );
    assert!(other.is_empty(), "only shedding: {other:?}");
    // All but 32 (the per-organisation limit) are shed; on a loaded machine
    // the client may not have sent the last few hundred within the deadline.
    assert!(shed <= STREAMS - 32, "at least 32 held");
    assert!(shed >= STREAMS * 9 / 10, "{shed} shed");
    assert!(gateway.is_running(), "the gateway stays up");
    assert!(
        under_attack <= (baseline * 2).max(Duration::from_millis(250)),
        "ack latency {under_attack:?} vs baseline {baseline:?}"
    );
    assert!(peak < 512 * 1024, "peak memory stays bounded: {peak} KiB");
    drop(senders);
    assert!(gateway.stop().success());
}

/// 2,000 hostile connections — 1,024 TLS connections held open by one
/// analyst's certificate, 500 TCP connections that never start TLS, and
/// 500 opened and dropped in a loop, the last two from another host — while
/// a real agent delivers and another analyst asks a question. (An attacker
/// behind the agent's own address can take that address's share of
/// handshake slots; that is the share's purpose, not a starvation.)
#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_hostile_connections_starve_no_agent_and_no_other_analyst() {
    let d = Deployment::new();
    joinery_ok(&["pki", "issue", "--dir", &d.pki(), "--analyst", "j.bloggs"]);
    let mut gateway = d.start_gateway(None, &["--idle-timeout-secs", "30"]);
    let quiet = ack_latencies(&d, &gateway.address, 1, 40).await;
    let baseline = quiet[quiet.len() / 2];
    let p99 = |times: &[Duration]| times[(times.len() * 99).div_ceil(100) - 1];
    let other_analyst = (
        d.path("pki/analysts/analyst-j.bloggs.pem"),
        d.path("pki/analysts/analyst-j.bloggs.key"),
    );
    let query = d.path("q.yaml");
    std::fs::write(&query, "rows: sex\n").unwrap();
    let ask = |started: &mut Vec<Duration>| {
        let at = Instant::now();
        let out = d.client_output(
            &["query", "run", query.to_str().unwrap()],
            &gateway.address,
            other_analyst.clone(),
            &[],
        );
        started.push(at.elapsed());
        out
    };
    let mut quiet_queries = Vec::new();
    assert!(ask(&mut quiet_queries).status.success());

    // One analyst's certificate opens 1,024 connections and holds them.
    let analyst = joinery_crypto::tls::client_config(&files(&d, d.analyst_cert())).unwrap();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..1024 {
        match channel(&gateway.address, analyst.clone()).await {
            Ok(c) => held.push(c),
            Err(_) => refused += 1,
        }
    }
    // 500 TCP connections, from another host, that never say anything.
    let silent: Vec<_> = (0..500)
        .map(|_| connect_from_another_host(&gateway.address).unwrap())
        .collect();
    // 500 more opened and dropped in a loop, meanwhile (bounded in count and time).
    let address = gateway.address.clone();
    let churn = std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(20);
        let mut opened = 0;
        while opened < 500 && Instant::now() < until {
            if connect_from_another_host(&address).is_ok() {
                opened += 1;
            }
        }
        opened
    });

    let attacked = ack_latencies(&d, &gateway.address, 100, 40).await;
    let under_attack = attacked[attacked.len() / 2];
    let mut attacked_queries = Vec::new();
    for _ in 0..3 {
        let out = ask(&mut attacked_queries);
        assert!(
            out.status.success(),
            "another analyst's query: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let churned = churn.join().unwrap();
    let log = gateway.log_text();
    let closed = log
        .matches("connection closed by the overload manager")
        .count();
    println!(
        "hostile-connection figures: 1,024 held by one analyst ({} connected, {refused} refused at once; {closed} closed by the overload manager), 500 silent, {churned} churned; ack p50 quiet {:.1} ms, under attack {:.1} ms, p99 quiet {:.1} ms, under attack {:.1} ms; another analyst's query quiet {:.0} ms, under attack {:?}",
        held.len(),
        baseline.as_secs_f64() * 1e3,
        under_attack.as_secs_f64() * 1e3,
        p99(&quiet).as_secs_f64() * 1e3,
        p99(&attacked).as_secs_f64() * 1e3,
        quiet_queries[0].as_secs_f64() * 1e3,
        attacked_queries
    );
    assert!(gateway.is_running(), "the gateway stays up");
    assert!(
        closed >= 1024 - 64,
        "one certificate holds at most 64: {closed} closed"
    );
    assert!(
        under_attack <= (baseline * 2).max(Duration::from_millis(250)),
        "ack latency {under_attack:?} vs baseline {baseline:?}"
    );
    // The tail's floor is a second: on a shared 2-core machine one SQLite
    // commit can stall a few hundred milliseconds (CI saw 328 ms) with or
    // without an attack, while a starved agent would wait out the 10 s
    // handshake timeout. The median, above, carries the tight bound.
    assert!(
        p99(&attacked) <= (p99(&quiet) * 2).max(Duration::from_secs(1)),
        "ack p99 {:?} vs quiet {:?}",
        p99(&attacked),
        p99(&quiet)
    );
    let slowest = attacked_queries.iter().max().copied().unwrap_or_default();
    assert!(
        slowest <= (quiet_queries[0] * 2).max(Duration::from_secs(2)),
        "another analyst's query took {slowest:?} (quiet {:?})",
        quiet_queries[0]
    );
    drop(held);
    drop(silent);
    assert!(gateway.stop().success());
}

/// An ingest session that says Hello and then nothing is ended at the idle
/// timeout, so an agency cannot hold its own agent's slots for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_that_goes_quiet_is_ended() {
    let d = Deployment::new();
    let gateway = d.start_gateway(None, &["--idle-timeout-secs", "2"]);
    let mut session = Session::open(&gateway.address, org_config(&d, SALT), hello(&d, SALT))
        .await
        .expect("session");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let ended = session.send(batch(7, 5)).await;
    assert!(ended.is_err(), "the idle session was ended: {ended:?}");
    // A new session works.
    let mut again = Session::open(&gateway.address, org_config(&d, SALT), hello(&d, SALT))
        .await
        .expect("session");
    assert_eq!(
        again.send(batch(8, 5)).await.unwrap().status(),
        AckStatus::Committed
    );
}
