//! The documents say what the code does: the telemetry reference names
//! every metric it records, the README the Rust it needs, the examples
//! the files `joinery pki` writes, and the scaling guide's Citus
//! statements every person-level table of the PostgreSQL schema.

mod common;

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
        g::COMMIT_GROUP_BATCHES,
        g::SESSIONS,
        g::HANDSHAKE_FAILURES,
        g::RETENTION_DELETED,
        g::RECORDS_LINKED,
        g::QUERIES,
        g::CELLS_SUPPRESSED,
        g::LINKAGE_RUNS,
        g::LINKAGE_SECONDS,
        g::POPULATION_UPDATES,
        g::POPULATION_PEOPLE_READ,
        g::LINKAGE_MOVED,
        g::LINKAGE_FAILURES,
        g::LINKAGE_LINKS,
        g::LINKAGE_EXPECTED_WRONG,
        g::LINKAGE_EXPECTED_MISSED,
        g::TLS_EXPIRY,
        g::AGREEMENT_EXPIRY,
        g::KEYHOLDER_ELEMENTS,
        a::TLS_EXPIRY,
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

/// The README's and `Cargo.toml`'s Rust version is the newest any
/// dependency asks for (an older compiler fails on them, not on our code).
#[test]
fn the_readme_names_the_rust_version_the_build_needs() {
    let root = env!("CARGO_MANIFEST_DIR");
    // Only this machine's platform: others' crates need not be downloaded.
    let rustc = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("run rustc");
    let rustc = String::from_utf8_lossy(&rustc.stdout).into_owned();
    let host = rustc
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc names its host");
    let output = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
            host,
        ])
        .current_dir(root)
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let version = |v: &str| -> Vec<u32> { v.split('.').map(|n| n.parse().unwrap()).collect() };
    let pad = |mut v: Vec<u32>| {
        v.resize(3, 0);
        v
    };
    let packages = metadata["packages"].as_array().unwrap();
    let (needed, by) = packages
        .iter()
        .filter_map(|p| {
            Some((
                pad(version(p["rust_version"].as_str()?)),
                p["name"].as_str()?,
            ))
        })
        .max()
        .unwrap();
    let ours = packages
        .iter()
        .find(|p| p["name"] == "joinery")
        .and_then(|p| p["rust_version"].as_str())
        .expect("joinery's rust-version");
    assert_eq!(
        pad(version(ours)),
        needed,
        "Cargo.toml's rust-version {ours}; {by} needs {needed:?}"
    );
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    assert!(
        readme.contains(&format!("With Rust installed ({ours} or later)")),
        "the README names Rust {ours}"
    );
}

/// Every certificate or key that the README or the example agent
/// configuration names under `pki/`, or by the identities the README issues
/// them to, is a file the README's own `joinery pki` commands write.
#[test]
fn the_examples_name_the_files_pki_writes() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    let pki = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_joinery"))
            .arg("pki")
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    pki(&["init", "--dir", "pki"]);
    pki(&[
        "server",
        "--dir",
        "pki",
        "--name",
        "joinery-gateway.example.nhs.uk",
    ]);
    pki(&[
        "server",
        "--dir",
        "pki",
        "--service",
        "keyholder",
        "--name",
        "keyholder.icb.example.nhs.uk",
    ]);
    pki(&["issue", "--dir", "pki", "--org", "E08000035"]);
    pki(&["issue", "--dir", "pki", "--analyst", "j.bloggs"]);
    for document in ["README.md", "deploy/examples/agent.yaml"] {
        let text = std::fs::read_to_string(format!("{root}/{document}")).unwrap();
        let named = text
            .split(|c: char| c.is_whitespace() || "`'\"(),=:".contains(c))
            .filter(|w| w.ends_with(".pem") || w.ends_with(".key"))
            .filter(|w| {
                w.starts_with("pki/") || ["j.bloggs", "E08000035"].iter().any(|id| w.contains(id))
            });
        for path in named {
            assert!(
                dir.path().join(path).exists(),
                "{document} names {path}, which the pki commands do not write"
            );
        }
    }
}

/// The linkage parameter files the scripts and docs name load and encode,
/// and each `dob-salted` candidate is what its comment says: its
/// baseline with only the date of birth salted with its own year (so the
/// figures measured with it compare one change).
#[test]
fn the_linkage_parameter_files_are_what_they_say() {
    use joinery_linkage::params::{KeyPart, Take};
    use joinery_linkage::{Encoder, LinkageParams};
    let load = |file: &str| -> LinkageParams {
        let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        let params: LinkageParams =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let key = joinery_crypto::keys::SecretKey::from_bytes([7; 32]);
        Encoder::new(&key, &params).unwrap_or_else(|e| panic!("{file}: {e}"));
        params
    };
    let birth_year = KeyPart {
        field: "date_of_birth".into(),
        take: Take::Prefix(4),
    };
    let without_the_salt = |mut candidate: LinkageParams, version: u32| {
        let dob = candidate
            .fields
            .iter_mut()
            .find(|f| f.field == "date_of_birth")
            .unwrap();
        assert_eq!(dob.salt.take(), Some(birth_year.clone()));
        candidate.version = version;
        candidate
    };
    assert_eq!(
        without_the_salt(load("scripts/linkage-candidates/dob-salted.yaml"), 5),
        LinkageParams::canonical_version(5)
    );
    let febrl = load("scripts/febrl4/params.yaml");
    let version = febrl.version;
    assert_eq!(
        without_the_salt(load("scripts/febrl4/params-dob-salted.yaml"), version),
        febrl
    );
    // FEBRL 4's twin of version 6: the same fields, each salted (but the
    // state, of eight values) with a field it is not, and hashed as version
    // 6 hashes.
    let hardened = load("scripts/febrl4/params-hardened.yaml");
    assert!(hardened.version >= joinery_linkage::encode::SALT_KEYS_FROM);
    let fields = |p: &LinkageParams| -> std::collections::BTreeSet<String> {
        p.fields.iter().map(|f| f.field.clone()).collect()
    };
    assert_eq!(fields(&hardened), fields(&febrl));
    for field in hardened.fields.iter().filter(|f| f.field != "state") {
        let salt = field.salt.as_ref().map(|s| s.field.as_str());
        assert!(
            salt.is_some_and(|s| s != field.field),
            "{} salted with {salt:?}",
            field.name()
        );
    }
}

/// docs/scaling.md distributes by `person_id` exactly the tables of the
/// PostgreSQL schema that hold one (a table added, dropped or renamed by a
/// migration shows here), each keyed with it, and the tables it makes
/// reference tables exist.
#[tokio::test]
async fn the_citus_statements_name_every_person_level_table() {
    use sqlx::Row;
    let Some(url) = common::fresh_postgres("citus_statements").await else {
        return;
    };
    let storage = joinery_gateway::storage::Storage::open(&url).await.unwrap();
    drop(storage);
    let db = common::open_database(&url).await;
    let tables = |sql: &'static str| {
        let db = db.clone();
        async move {
            let mut names: Vec<String> = sqlx::query(sql)
                .fetch_all(&db)
                .await
                .unwrap()
                .iter()
                .map(|row| row.get::<String, _>(0))
                .collect();
            names.sort();
            names
        }
    };
    let with_person = tables(
        "SELECT CAST(table_name AS TEXT) FROM information_schema.columns \
         WHERE table_schema = 'public' AND column_name = 'person_id'",
    )
    .await;
    let keyed_by_person = tables(
        "SELECT CAST(c.relname AS TEXT) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid \
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey) \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE i.indisprimary AND a.attname = 'person_id' AND n.nspname = 'public'",
    )
    .await;
    let every_table = tables(
        "SELECT CAST(table_name AS TEXT) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .await;
    let guide =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/scaling.md")).unwrap();
    let named = |call: &str| {
        let mut names: Vec<String> = guide
            .lines()
            .filter_map(|line| line.strip_prefix(&format!("SELECT {call}('")))
            .filter_map(|rest| rest.split('\'').next())
            .map(str::to_owned)
            .collect();
        names.sort();
        names
    };
    let distributed = named("create_distributed_table");
    assert_eq!(
        distributed, with_person,
        "docs/scaling.md distributes these"
    );
    assert_eq!(
        keyed_by_person, with_person,
        "person_id is in each one's key"
    );
    for reference in named("create_reference_table") {
        assert!(every_table.contains(&reference), "{reference} is no table");
    }
}
