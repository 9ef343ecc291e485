//! Who may talk to the gateway, and what it does with what they send: the
//! mutual-TLS handshake matrix and the ingest protocol's rules, against a real
//! gateway process. With TLS 1.3 a refused client may still "connect"; every
//! refusal is asserted on the RPC.

mod common;

use common::ingest::*;
use common::*;
use joinery_crypto::identity::PeerIdentity;
use joinery_crypto::pki::{CertificateAuthority, Validity};
use joinery_crypto::tls::TlsFiles;
use joinery_proto::v1::query_client::QueryClient;
use joinery_proto::v1::{AckStatus, AgencyOverlapRequest, CountsRequest, RejectReason};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::Code;

/// Max message size the gateway is started with in these tests.
const MAX_MESSAGE: usize = 64 * 1024;

/// A client config trusting the deployment CA but presenting no certificate.
fn anonymous(d: &Deployment) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(d.ca()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(joinery_crypto::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// A valid certificate, but offering only TLS 1.2.
fn tls12_only(d: &Deployment) -> rustls::ClientConfig {
    let (cert, key) = d.org_cert(CAMHS);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(d.ca()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(joinery_crypto::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_file(cert).unwrap()],
            PrivateKeyDer::from_pem_file(key).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn handshake_matrix() {
    let d = Deployment::new();
    let gateway = d.start_gateway(None, &[]);

    // A certificate from another deployment's CA.
    let other = tempfile::tempdir().unwrap();
    let validity = Validity::days_from_now(5).unwrap();
    CertificateAuthority::init(other.path(), "another CA", validity).unwrap();
    let foreign = CertificateAuthority::load(other.path())
        .unwrap()
        .issue_client(
            &PeerIdentity::Organisation(CAMHS.parse().unwrap()),
            validity,
            other.path(),
        )
        .unwrap();
    // An expired certificate from the right CA.
    let now = time::OffsetDateTime::now_utc();
    let expired = CertificateAuthority::load(&d.path("pki"))
        .unwrap()
        .issue_client(
            &PeerIdentity::Organisation(CAMHS.parse().unwrap()),
            Validity {
                not_before: now - time::Duration::days(10),
                not_after: now - time::Duration::days(1),
            },
            &d.path("expired"),
        )
        .unwrap();

    let refused = [
        ("no client certificate", anonymous(&d)),
        (
            "certificate from another CA",
            joinery_crypto::tls::client_config(&TlsFiles {
                ca: d.ca(),
                cert: foreign.cert,
                key: foreign.key,
                crl: None,
            })
            .unwrap(),
        ),
        (
            "expired certificate",
            joinery_crypto::tls::client_config(&TlsFiles {
                ca: d.ca(),
                cert: expired.cert,
                key: expired.key,
                crl: None,
            })
            .unwrap(),
        ),
        ("TLS 1.2 only", tls12_only(&d)),
    ];
    for (case, config) in refused {
        let result = Session::open(&gateway.address, config, hello(&d, CAMHS)).await;
        assert!(
            result.is_err(),
            "{case}: the gateway must refuse the session"
        );
    }

    // Agency A's certificate claiming to be agency B.
    let Err((code, message)) =
        Session::open(&gateway.address, org_config(&d, CAMHS), hello(&d, SALT)).await
    else {
        panic!("impersonation must be refused");
    };
    assert_eq!(code, Code::PermissionDenied, "{message}");

    // An analyst may not deliver data.
    let analyst = joinery_crypto::tls::client_config(&files(&d, d.analyst_cert())).unwrap();
    let Err((code, _)) = Session::open(&gateway.address, analyst.clone(), hello(&d, CAMHS)).await
    else {
        panic!("an analyst certificate must not open an ingest session");
    };
    assert_eq!(code, Code::PermissionDenied);

    // An agency may not query the linked population, an analyst may.
    let mut as_agency = QueryClient::new(
        channel(&gateway.address, org_config(&d, CAMHS))
            .await
            .unwrap(),
    );
    let status = as_agency
        .agency_overlap(AgencyOverlapRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let mut as_analyst = QueryClient::new(channel(&gateway.address, analyst).await.unwrap());
    as_analyst
        .agency_overlap(AgencyOverlapRequest::default())
        .await
        .expect("analyst query");

    // The right certificate with an honest Hello works.
    Session::open(&gateway.address, org_config(&d, CAMHS), hello(&d, CAMHS))
        .await
        .expect("valid agent session");

    // Refusals are logged, by kind, without identifiers.
    let log = gateway.log_text();
    assert!(log.contains("TLS handshake refused"), "{log}");
    assert!(log.contains("ingest session refused"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_are_stored_once_and_bad_batches_rejected() {
    let d = Deployment::new();
    let max = MAX_MESSAGE.to_string();
    let metrics = free_local_address();
    let gateway = d.start_gateway(
        None,
        &["--max-message-bytes", &max, "--metrics-listen", &metrics],
    );
    let mut session = Session::open(&gateway.address, org_config(&d, SALT), hello(&d, SALT))
        .await
        .unwrap();

    let first = batch(1, 50);
    let ack = session.send(first.clone()).await.unwrap();
    assert_eq!(ack.status(), AckStatus::Committed);
    assert_eq!(ack.records_stored, 50);
    let again = session.send(first.clone()).await.unwrap();
    assert_eq!(
        again.status(),
        AckStatus::Duplicate,
        "a resent batch is acknowledged again"
    );
    assert_eq!(again.records_stored, 0);

    let mut tampered = batch(2, 5);
    tampered.batch_id = first.batch_id.clone();
    let ack = session.send(tampered).await.unwrap();
    assert_eq!(ack.status(), AckStatus::Rejected);
    assert_eq!(ack.reason(), RejectReason::BatchIdMismatch);

    let mut bad_month = batch(3, 2);
    if let Some(body) = bad_month.body.as_mut() {
        body.records[0]
            .attributes
            .insert("birth_month".into(), "2015-04-03".into());
        bad_month.batch_id = body.digest();
    }
    let ack = session.send(bad_month).await.unwrap();
    assert_eq!(ack.reason(), RejectReason::ValueNotAllowed);
    assert!(ack.detail.contains("birth_month"), "{}", ack.detail);

    // A batch over the message limit ends the stream with a reason.
    let (code, message) = session.send(batch(4, 2000)).await.unwrap_err();
    assert!(
        matches!(code, Code::OutOfRange | Code::ResourceExhausted),
        "{code:?}: {message}"
    );

    // The same batch over a new session (as after an agent restart) is still stored once.
    let mut resumed = Session::open(&gateway.address, org_config(&d, SALT), hello(&d, SALT))
        .await
        .unwrap();
    assert_eq!(
        resumed.send(first).await.unwrap().status(),
        AckStatus::Duplicate
    );

    let mut client = QueryClient::new(
        channel(&gateway.address, org_config(&d, SALT))
            .await
            .unwrap(),
    );
    let counts = client.counts(CountsRequest {}).await.unwrap().into_inner();
    assert_eq!(counts.datasets.len(), 1);
    assert_eq!(counts.datasets[0].records, 50, "{counts:?}");
    assert_eq!(counts.datasets[0].batches, 1);

    // Prometheus sees the same story, by outcome and reason.
    let exposition = http_get(&metrics, "/metrics");
    for expected in [
        r#"joinery_gateway_batches_total{organisation="RY9",dataset="salt_contacts",outcome="committed",reason=""} 1"#,
        r#"joinery_gateway_batches_total{organisation="RY9",dataset="salt_contacts",outcome="duplicate",reason=""} 2"#,
        r#"outcome="rejected",reason="BATCH_ID_MISMATCH"} 1"#,
        r#"outcome="rejected",reason="VALUE_NOT_ALLOWED"} 1"#,
        r#"joinery_gateway_records_stored_total{organisation="RY9",dataset="salt_contacts"} 50"#,
        "joinery_gateway_ack_latency_seconds_count 5",
        r#"joinery_gateway_records_linked_total{method="unlinked"} 50"#,
        r#"joinery_gateway_queries_total{query="counts"} 1"#,
        // Shown at zero before anything happens, for alerts on rates.
        r#"joinery_gateway_tls_handshake_failures_total{kind="idle"} 0"#,
        "joinery_gateway_linkage_failures_total 0",
        // When the certificates and the agreement run out.
        r#"joinery_gateway_tls_expiry_timestamp_seconds{file="certificate"} "#,
        r#"joinery_gateway_tls_expiry_timestamp_seconds{file="crl"} "#,
        r#"joinery_gateway_agreement_expiry_timestamp_seconds{agreement="children-at-risk-stratification",version="1"} "#,
    ] {
        assert!(
            exposition.contains(expected),
            "{expected} missing from\n{exposition}"
        );
    }

    // The committed batch and the two duplicates went through the commit
    // queue (the rejected ones did not), in as many groups as they waited.
    let batches_committed: f64 = exposition
        .lines()
        .find_map(|line| line.strip_prefix("joinery_gateway_commit_group_batches_sum "))
        .and_then(|value| value.parse().ok())
        .expect("the commit groups' histogram is exposed");
    assert_eq!(batches_committed, 3.0);

    // Liveness and readiness for orchestrators.
    assert!(
        http_get(&metrics, "/healthz").starts_with("HTTP/1.0 200")
            || http_get(&metrics, "/healthz").starts_with("HTTP/1.1 200")
    );
    let ready = http_get(&metrics, "/readyz");
    assert!(
        ready.contains(" 200 ") && ready.contains("ready"),
        "{ready}"
    );

    // grpc.health.v1 answers on the same port.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        channel(&gateway.address, org_config(&d, SALT))
            .await
            .unwrap(),
    );
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_finishes_its_handshake_is_dropped() {
    use std::io::Read;
    let d = Deployment::new();
    let gateway = d.start_gateway(None, &["--handshake-timeout-secs", "1"]);
    let mut silent = std::net::TcpStream::connect(&gateway.address).unwrap();
    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut buffer = [0u8; 16];
    // The server closes the connection (read returns 0 or a reset), well before our 10 s timeout.
    let closed = match silent.read(&mut buffer) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => {
            e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut
        }
    };
    assert!(closed, "the gateway must drop a silent client");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Meanwhile real agents are served.
    Session::open(&gateway.address, org_config(&d, CAMHS), hello(&d, CAMHS))
        .await
        .expect("valid agent session");
    assert!(gateway.log_text().contains("TLS handshake timed out"));
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_and_certificate_rotation_without_restart() {
    let d = Deployment::new();
    let gateway = d.start_gateway(None, &[]);
    Session::open(&gateway.address, org_config(&d, CAMHS), hello(&d, CAMHS))
        .await
        .expect("before revocation");

    // Revoke CAMHS's certificate: the gateway picks up the new CRL by itself.
    let (camhs_cert, _) = d.org_cert(CAMHS);
    joinery_ok(&[
        "pki",
        "revoke",
        "--dir",
        &d.pki(),
        "--cert",
        camhs_cert.to_str().unwrap(),
    ]);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(
        Session::open(&gateway.address, org_config(&d, CAMHS), hello(&d, CAMHS))
            .await
            .is_err(),
        "a revoked certificate is refused"
    );
    Session::open(&gateway.address, org_config(&d, SALT), hello(&d, SALT))
        .await
        .expect("other agencies are unaffected");

    // Rotate the gateway's own certificate to one for another name.
    let rotated = d.path("rotated");
    joinery_ok(&[
        "pki",
        "server",
        "--dir",
        &d.pki(),
        "--name",
        "gateway.example",
        "--out",
        rotated.to_str().unwrap(),
    ]);
    install_renamed(
        &rotated,
        &d.path("pki/gateway"),
        &["gateway.key", "gateway.pem"],
    );
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let connect = |name: &'static str| {
        let config = org_config(&d, SALT);
        let address = gateway.address.clone();
        async move {
            let channel = joinery_proto::channel::connect(&address, name, config)
                .await
                .map_err(|e| e.to_string())?;
            QueryClient::new(channel)
                .counts(CountsRequest {})
                .await
                .map_err(|e| e.to_string())
        }
    };
    connect("gateway.example")
        .await
        .expect("the new certificate is served");
    assert!(
        connect("localhost").await.is_err(),
        "the old certificate is no longer served"
    );
    assert!(gateway.log_text().contains("TLS certificates reloaded"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_beyond_the_limit_are_shed_and_agents_get_in_later() {
    let d = Deployment::new();
    let gateway = d.start_gateway(None, &["--max-sessions", "1"]);
    let first = Session::open(&gateway.address, org_config(&d, SALT), hello(&d, SALT))
        .await
        .expect("first session");
    let Err((code, _)) =
        Session::open(&gateway.address, org_config(&d, CAMHS), hello(&d, CAMHS)).await
    else {
        panic!("a session beyond the limit must be shed");
    };
    assert_eq!(code, Code::ResourceExhausted);
    drop(first);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    Session::open(&gateway.address, org_config(&d, CAMHS), hello(&d, CAMHS))
        .await
        .expect("room again once the first session ends");
}
