//! A throwaway deployment on this machine: the one layout `joinery demo`,
//! `joinery-bench` and the end-to-end tests all stand up, so each of them
//! is a walk through the same files an operator would have.
//!
//! ```text
//! ROOT/pki/ca.pem, ca.key, crl.pem        the deployment CA and its revocation list
//! ROOT/pki/gateway/gateway.pem, .key      the gateway's certificate (the names asked for)
//! ROOT/pki/agents/ORG.pem, .key           each agency's client certificate
//! ROOT/pki/analysts/analyst-NAME.pem, .key each analyst's
//! ROOT/keys/linkage.key                   the agencies' linkage key
//! ROOT/keys/local-ids/ORG.key             each agency's own key for its local ids
//! ROOT/agreements/ID.yaml (+ .sig)        the example agreement, fully signed,
//!                                          its signatories' keys beside it
//! ROOT/opt-out.txt                        an empty National Data Opt-out list
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context;
use joinery_agent::AgentConfig;
use joinery_agent::config::{GatewayEndpoint, SourceConfig, TlsPaths};
use joinery_agent::format::Registry;
use joinery_crypto::identity::PeerIdentity;
use joinery_crypto::keys::SecretKey;
use joinery_crypto::pki::{CertificateAuthority, IssuedFiles, Validity};
use joinery_policies::{Agreement, signing};

/// The example council + CAMHS + speech-and-language agreement every
/// sandbox is signed under.
const EXAMPLE_AGREEMENT: &str =
    include_str!("../policies/examples/children-at-risk-stratification.yaml");

/// What a new sandbox holds.
pub struct SandboxSpec<'a> {
    /// The CA's name in its certificate.
    pub ca_name: &'a str,
    /// How long every certificate is valid, in days.
    pub validity_days: i64,
    /// Names on the gateway's certificate (`localhost`, `127.0.0.1`, …).
    pub server_names: &'a [String],
    /// Agencies given a client certificate now (more later with
    /// [`Sandbox::issue_organisation`]).
    pub organisations: &'a [&'a str],
    /// Analysts given a client certificate.
    pub analysts: &'a [&'a str],
}

/// A deployment's files under one directory.
#[derive(Debug, Clone)]
pub struct Sandbox {
    root: PathBuf,
}

impl Sandbox {
    /// The sandbox at `root`, as an earlier [`Sandbox::create`] left it.
    pub fn at(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    /// Writes a new sandbox at `root`: CA, revocation list, gateway
    /// certificate, the agencies' and analysts' certificates, the linkage
    /// key, the signed example agreement and an empty opt-out list.
    pub fn create(root: &Path, spec: &SandboxSpec) -> anyhow::Result<Self> {
        let sandbox = Self::at(root);
        let validity = Validity::days_from_now(spec.validity_days)?;
        let pki = sandbox.pki();
        CertificateAuthority::init(&pki, spec.ca_name, validity)?;
        let ca = CertificateAuthority::load(&pki)?;
        ca.issue_server("gateway", spec.server_names, validity, &pki.join("gateway"))?;
        ca.publish_crl(&pki)?;
        for organisation in spec.organisations {
            sandbox.issue_organisation(organisation, spec.validity_days)?;
        }
        for analyst in spec.analysts {
            ca.issue_client(
                &PeerIdentity::Analyst((*analyst).into()),
                validity,
                &pki.join("analysts"),
            )?;
        }
        SecretKey::generate()?.save(&sandbox.linkage_key())?;
        sign_example_agreement(&sandbox.agreements_dir(), |text| text)?;
        std::fs::write(sandbox.opt_out_list(), "# National Data Opt-out list\n")?;
        Ok(sandbox)
    }

    /// Issues `organisation` a client certificate.
    pub fn issue_organisation(
        &self,
        organisation: &str,
        validity_days: i64,
    ) -> anyhow::Result<IssuedFiles> {
        let ca = CertificateAuthority::load(&self.pki())?;
        Ok(ca.issue_client(
            &PeerIdentity::Organisation(organisation.parse()?),
            Validity::days_from_now(validity_days)?,
            &self.pki().join("agents"),
        )?)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }

    pub fn ca(&self) -> PathBuf {
        self.pki().join("ca.pem")
    }

    pub fn crl(&self) -> PathBuf {
        self.pki().join(joinery_crypto::pki::CRL_FILE)
    }

    /// The gateway's (certificate, key).
    pub fn gateway_cert(&self) -> (PathBuf, PathBuf) {
        let dir = self.pki().join("gateway");
        (dir.join("gateway.pem"), dir.join("gateway.key"))
    }

    /// Keyholder `name`'s (certificate, key), where `joinery pki server
    /// --service keyholder --name NAME` writes them.
    pub fn keyholder_cert(&self, name: &str) -> (PathBuf, PathBuf) {
        let dir = self.pki().join("keyholders").join(name);
        (dir.join("keyholder.pem"), dir.join("keyholder.key"))
    }

    /// The arguments of `joinery keyholder serve` for keyholder `name` of
    /// this deployment on any free port, keeping its key and ledger in
    /// `data`.
    pub fn keyholder_serve_args(&self, name: &str, data: &Path) -> Vec<std::ffi::OsString> {
        let (cert, key) = self.keyholder_cert(name);
        [
            "keyholder".into(),
            "serve".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--name".into(),
            name.into(),
            "--data-dir".into(),
            data.into(),
            "--agreements".into(),
            self.agreements_dir().into(),
            "--tls-ca".into(),
            self.ca().into(),
            "--tls-cert".into(),
            cert.into(),
            "--tls-key".into(),
            key.into(),
        ]
        .into()
    }

    /// An agency's (certificate, key).
    pub fn org_cert(&self, organisation: &str) -> (PathBuf, PathBuf) {
        let dir = self.pki().join("agents");
        (
            dir.join(format!("{organisation}.pem")),
            dir.join(format!("{organisation}.key")),
        )
    }

    /// An analyst's (certificate, key).
    pub fn analyst_cert(&self, analyst: &str) -> (PathBuf, PathBuf) {
        let dir = self.pki().join("analysts");
        (
            dir.join(format!("analyst-{analyst}.pem")),
            dir.join(format!("analyst-{analyst}.key")),
        )
    }

    pub fn linkage_key(&self) -> PathBuf {
        self.root.join("keys").join("linkage.key")
    }

    /// `organisation`'s own key for its local ids, made the first time it
    /// is asked for.
    pub fn local_id_key(&self, organisation: &str) -> anyhow::Result<PathBuf> {
        let path = self
            .root
            .join("keys")
            .join("local-ids")
            .join(format!("{organisation}.key"));
        SecretKey::load_or_create(&path)?;
        Ok(path)
    }

    /// Where the gateway's signed agreements are.
    pub fn agreements_dir(&self) -> PathBuf {
        self.root.join("agreements")
    }

    /// The signed example agreement.
    pub fn agreement(&self) -> anyhow::Result<PathBuf> {
        Ok(self
            .agreements_dir()
            .join(format!("{}.yaml", self.agreement_id()?)))
    }

    /// The example agreement's id.
    pub fn agreement_id(&self) -> anyhow::Result<String> {
        let agreement: Agreement = serde_saphyr::from_str(EXAMPLE_AGREEMENT)?;
        Ok(agreement.id)
    }

    pub fn opt_out_list(&self) -> PathBuf {
        self.root.join("opt-out.txt")
    }

    /// The configuration of `organisation`'s agent sending `sources` to the
    /// gateway at `address` (whose certificate names `server_name`), its
    /// spool and quarantine reports under `ROOT/agents/`, its local ids
    /// under its own key.
    pub fn agent_config(
        &self,
        organisation: &str,
        address: &str,
        server_name: &str,
        sources: Vec<SourceConfig>,
    ) -> anyhow::Result<AgentConfig> {
        let (cert, key) = self.org_cert(organisation);
        let agents = self.root.join("agents");
        Ok(AgentConfig {
            organisation: organisation.parse()?,
            agreement: self.agreement()?,
            national_data_opt_out: Some(self.opt_out_list()),
            gateway: GatewayEndpoint {
                address: address.to_owned(),
                server_name: Some(server_name.to_owned()),
                compress: false,
            },
            tls: TlsPaths {
                ca: self.ca(),
                cert,
                key,
            },
            keyholders: Vec::new(),
            linkage_key: self.linkage_key(),
            local_id_key: Some(self.local_id_key(organisation)?),
            quarantine_dir: agents.join("quarantine").join(organisation),
            spool_dir: agents.join("spool").join(organisation),
            spool_max_bytes: 256 * 1024 * 1024,
            retry_for_secs: 60,
            batch_size: 500,
            max_in_flight: 4,
            sources,
            formats: None,
            limits: Default::default(),
            registry: Registry::built_in()?,
        })
    }
}

/// An edit of the example agreement's text (for [`sign_example_agreement`])
/// that has NHS numbers pseudonymised through the keyholders `names`.
pub fn naming_keyholders(names: &[&str]) -> impl Fn(String) -> String {
    let line = format!(
        "linkage:\n  nhs_number_keyholders: [{}]\n",
        names.join(", ")
    );
    move |text| text.replace("linkage:\n", &line)
}

/// Writes the example agreement into `dir`, in force from yesterday for a
/// year, after `edit` (of its YAML text, as the example file is written),
/// with fresh keys for its signatories (kept beside it) and all their
/// signatures. Returns its path.
pub fn sign_example_agreement(
    dir: &Path,
    edit: impl Fn(String) -> String,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let today = time::OffsetDateTime::now_utc().date();
    let mut text = with_dates(
        EXAMPLE_AGREEMENT.to_owned(),
        today - time::Duration::days(1),
        today + time::Duration::days(180),
        today + time::Duration::days(365),
    )?;
    let example: Agreement = serde_saphyr::from_str(EXAMPLE_AGREEMENT)?;
    let mut keys = Vec::new();
    for (i, signatory) in example.signatories.iter().enumerate() {
        let key = dir.join(format!("signatory-{}.key", i + 1));
        let _ = std::fs::remove_file(&key);
        text = text.replace(&signatory.public_key, &signing::keygen(&key)?);
        keys.push(key);
    }
    let text = edit(text);
    let agreement: Agreement = serde_saphyr::from_str(&text).context("the edited agreement")?;
    let path = dir.join(format!("{}.yaml", agreement.id));
    let _ = std::fs::remove_file(signing::signature_path(&path));
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    for key in &keys {
        signing::sign(&path, &agreement, text.as_bytes(), key)?;
    }
    Ok(path)
}

/// An agreement's text with its `valid_from`, `review_by` and `expires`
/// lines set to these dates.
pub fn with_dates(
    mut text: String,
    valid_from: time::Date,
    review_by: time::Date,
    expires: time::Date,
) -> anyhow::Result<String> {
    for (key, date) in [
        ("valid_from", valid_from),
        ("review_by", review_by),
        ("expires", expires),
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{key}:")))
            .with_context(|| format!("the agreement has no {key} line"))?
            .to_owned();
        text = text.replace(&line, &format!("{key}: {date}"));
    }
    Ok(text)
}

/// Writes `config` as YAML to `path`.
pub fn write_agent_config(path: &Path, config: &AgentConfig) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let text = serde_saphyr::to_string(config)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
