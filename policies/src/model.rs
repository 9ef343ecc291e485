//! The data-sharing agreement as written by an information-governance lead:
//! one YAML file per agreement version. Unknown keys are errors.
//!
//! This module only describes the shape of the file (and, through schemars,
//! the JSON Schema editors use); [`crate::check`] enforces the rules that
//! span fields.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;

/// Which agreement, by id and version: how a session, a stored batch and
/// an audit entry name the agreement they were made under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgreementRef {
    pub id: String,
    pub version: u32,
}

impl AgreementRef {
    pub fn new(id: impl Into<String>, version: u32) -> Self {
        Self {
            id: id.into(),
            version,
        }
    }
}

impl Agreement {
    /// This agreement's id and version.
    pub fn reference(&self) -> AgreementRef {
        AgreementRef::new(&self.id, self.version)
    }
}

impl std::fmt::Display for AgreementRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} version {}", self.id, self.version)
    }
}

/// A data-sharing agreement.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Agreement {
    /// Stable identifier, lower case letters, digits and hyphens, e.g. `leeds-children-stratification`.
    pub id: String,
    /// Version of this agreement; every change that is signed again gets a new version.
    pub version: u32,
    /// Title for board papers.
    pub title: String,
    /// Why the data is shared, in plain English.
    pub purpose: String,
    /// Organisations party to the agreement and what each sends.
    pub parties: Vec<Party>,
    pub lawful_basis: LawfulBasis,
    /// Whether the National Data Opt-out applies to the data shared under this agreement.
    pub national_data_opt_out: OptOut,
    /// When the agreement comes into force: `YYYY-MM-DD` (start of day, UTC) or an RFC 3339 time.
    pub valid_from: When,
    /// When the agreement must be reviewed.
    pub review_by: When,
    /// When the agreement ends: `YYYY-MM-DD` (end of day, UTC) or an RFC 3339 time.
    pub expires: When,
    /// Each dataset that may be shared, by name, with what may be sent and for how long it is kept.
    pub datasets: BTreeMap<String, Dataset>,
    pub linkage: Linkage,
    pub outputs: OutputRules,
    /// Analyst roles, by name, and what each may see.
    pub roles: BTreeMap<String, Role>,
    pub five_safes: FiveSafes,
    /// People whose signatures put the agreement in force. All must sign.
    pub signatories: Vec<Signatory>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Party {
    /// ODS code or local-authority code, as on the organisation's certificate.
    pub organisation: String,
    pub name: String,
    pub role: PartyRole,
    /// Datasets this organisation sends (names under `datasets`).
    #[serde(default)]
    pub sends: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PartyRole {
    Controller,
    JointController,
    Processor,
}

/// The legal bases for the sharing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LawfulBasis {
    /// UK GDPR Article 6 condition, e.g. `6(1)(e)` (public task).
    pub article_6: Article6,
    /// UK GDPR Article 9 condition for special category data, e.g. `9(2)(h)`.
    pub article_9: Article9,
    /// The DPA 2018 Schedule 1 condition relied on with Article 9, e.g. `Part 1, paragraph 2 (health or social care purposes)`.
    pub dpa_2018_schedule_1: String,
    /// The basis for setting aside the common-law duty of confidentiality, e.g. implied consent for direct care, or a statutory gateway.
    pub common_law_duty: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum Article6 {
    #[serde(rename = "6(1)(a)")]
    Consent,
    #[serde(rename = "6(1)(b)")]
    Contract,
    #[serde(rename = "6(1)(c)")]
    LegalObligation,
    #[serde(rename = "6(1)(d)")]
    VitalInterests,
    #[serde(rename = "6(1)(e)")]
    PublicTask,
    #[serde(rename = "6(1)(f)")]
    LegitimateInterests,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum Article9 {
    #[serde(rename = "9(2)(a)")]
    ExplicitConsent,
    #[serde(rename = "9(2)(b)")]
    EmploymentAndSocialSecurity,
    #[serde(rename = "9(2)(c)")]
    VitalInterests,
    #[serde(rename = "9(2)(g)")]
    SubstantialPublicInterest,
    #[serde(rename = "9(2)(h)")]
    HealthOrSocialCare,
    #[serde(rename = "9(2)(i)")]
    PublicHealth,
    #[serde(rename = "9(2)(j)")]
    ArchivingResearchStatistics,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OptOut {
    /// Agents withhold records of people on the opt-out list before anything is pseudonymised.
    Applies,
    DoesNotApply,
}

/// One dataset: what may be sent, in what form, and how long it is kept.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    #[serde(default)]
    pub description: String,
    /// Days the gateway keeps a batch after receiving it.
    pub retention_days: u32,
    /// Every field that may be sent, with its transform. A field not listed is never sent.
    pub fields: BTreeMap<String, Transform>,
    /// Event types that may be sent, with their attributes.
    #[serde(default)]
    pub events: BTreeMap<String, EventRule>,
}

/// What happens to a field before it leaves the agency.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// Sent as it is.
    Keep,
    /// Never sent (listed to record that it was considered).
    Drop,
    /// Replaced by a keyed pseudonym (HMAC-SHA256 under the agreement's linkage key).
    Pseudonymise,
    /// A date reduced to its month (`YYYY-MM`).
    Month,
    /// A date reduced to its quarter (`YYYY-Qn`, Q1 January to March).
    Quarter,
    /// A date reduced to its year (`YYYY`).
    Year,
    /// A date of birth reduced to an age band at the date of extraction; the list gives each band's lowest age.
    AgeBand(Vec<u32>),
    /// A postcode reduced to its district (outward code, e.g. `LS6`).
    District,
    /// A postcode reduced to its sector (e.g. `LS6 2`).
    Sector,
    /// A postcode reduced to its area, the letters its district starts
    /// with (e.g. `LS`: a city and its surroundings).
    Area,
    /// Values recoded through this map; values not in it are not sent.
    CodeMap(BTreeMap<String, String>),
    /// A number capped at this value (larger values are sent as the cap).
    TopCode(u32),
}

/// What of an event type may be sent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventRule {
    /// Precision of the event date: `keep` (day) or `month`.
    #[serde(default = "keep")]
    pub date: Transform,
    /// The event's attributes that may be sent.
    #[serde(default)]
    pub attributes: BTreeMap<String, Transform>,
}

fn keep() -> Transform {
    Transform::Keep
}

/// Privacy-preserving linkage settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Linkage {
    /// Identity fields encoded (never sent in clear) for fuzzy linkage.
    #[serde(default)]
    pub fields: Vec<String>,
    /// Encoding scheme and parameters version, agreed by all agents.
    pub encoding: Encoding,
    /// Independent keyholders, by the DNS name on each one's server
    /// certificate, through whom agents make NHS-number pseudonyms without
    /// any of them seeing an NHS number (`docs/linkage-privacy.md`). With
    /// keyholders, no agency holds a key that computes a pseudonym, so the
    /// gateway's operator together with an agency cannot reverse one by
    /// trying every NHS number: every keyholder would have to collude too.
    /// Changing the list changes every NHS pseudonym (a new agreement
    /// version, every record sent again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nhs_number_keyholders: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Encoding {
    /// `keyed-bloom`: a keyed Bloom filter per field (see joinery-linkage).
    pub scheme: String,
    /// Bumped when the parameters change; encodings of different versions
    /// never match, so a new version means a full re-link.
    pub version: u32,
    /// How each listed field beyond the five canonical ones (`given_name`,
    /// `family_name`, `date_of_birth`, `sex`, `postcode`) is encoded: a
    /// record attribute the agencies' mappings provide, such as a school
    /// URN or a first address line. The canonical fields keep their
    /// built-in encoding.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<joinery_linkage::params::FieldEncoding>,
}

/// The identity fields with a built-in encoding.
pub const CANONICAL_LINKAGE_FIELDS: [&str; 5] = [
    "given_name",
    "family_name",
    "date_of_birth",
    "sex",
    "postcode",
];

/// The only encoding scheme there is.
pub const KEYED_BLOOM: &str = "keyed-bloom";

impl Linkage {
    /// The encoding parameters every party uses, or `None` when the
    /// agreement asks for no fuzzy linkage: the canonical parameters of the
    /// agreement's encoding version for the listed canonical fields, and the
    /// fields made from them when their salt's field is listed too (a salt
    /// or blocking rule that needs an unlisted field is left out); then the
    /// agreement's own encodings of its other listed fields, under the
    /// agreement's version.
    pub fn params(&self) -> Option<joinery_linkage::LinkageParams> {
        if self.fields.is_empty() {
            return None;
        }
        let listed = |field: &str| self.fields.iter().any(|f| f == field);
        let mut params = joinery_linkage::LinkageParams::canonical_version(self.encoding.version);
        // A field made from others (the full name) is kept when they are,
        // and its salt's field too: unsalted, it would be the easiest of
        // all to attack (version 3 salts it with the postcode district, so
        // an agreement that shares no postcode keeps it on version 2).
        // A field encoded again under another salt (version 6) is kept when
        // it and that salt's field are: unsalted, it would repeat the first.
        params.fields.retain(|f| {
            let salt_listed = f.salt.as_ref().is_none_or(|s| listed(&s.field));
            if f.name.is_some() {
                return listed(&f.field) && salt_listed;
            }
            listed(&f.field)
                || (!f.stands_in_for.is_empty()
                    && f.stands_in_for.iter().all(|o| listed(o))
                    && salt_listed)
        });
        let kept: Vec<String> = params.fields.iter().map(|f| f.name().to_owned()).collect();
        for field in &mut params.fields {
            if field.salt.as_ref().is_some_and(|s| !listed(&s.field)) {
                field.salt = None;
            }
            field.stands_in_for.retain(|o| kept.contains(o));
        }
        params
            .blocking
            .retain(|rule| rule.iter().all(|part| listed(&part.field)));
        params.fields.extend(
            self.fields
                .iter()
                .filter_map(|f| self.encoding.fields.iter().find(|e| &e.field == f))
                .filter(|e| !CANONICAL_LINKAGE_FIELDS.contains(&e.field.as_str()))
                .cloned(),
        );
        Some(params)
    }
}

/// Statistical disclosure control of every output (`docs/disclosure.md`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputRules {
    /// The smallest count released; counts from 0 to one less are suppressed
    /// (zeros too: a zero is never told apart from a small count).
    pub minimum_cell_count: u32,
    pub rounding: Rounding,
    /// Suppress further cells so a suppressed one cannot be worked out from totals.
    pub secondary_suppression: bool,
    /// Random noise on every released number, and how much all releases
    /// together may reveal about any one child (differential privacy).
    #[serde(default)]
    pub privacy: PrivacyBudget,
    /// Dominance rule for magnitudes (events counted): a cell whose `n`
    /// largest contributors hold more than `k` percent of it is suppressed.
    #[serde(default)]
    pub dominance: Dominance,
    /// p% rule for magnitudes: a cell is suppressed when what is left after
    /// its two largest contributors is less than `p_percent` of the largest
    /// (the second could then estimate the first to within p%).
    #[serde(default = "default_p_percent")]
    pub p_percent: u32,
    /// Direct care: a party may learn which of its own records belong to a
    /// cohort (`joinery agent resolve`), to act for those children. Off
    /// unless the agreement says so (and its lawful basis covers it).
    #[serde(default)]
    pub reidentify_for_direct_care: bool,
}

/// How many events one child adds to a released cell at most (the rest are
/// not counted), so a cell of events can carry noise in proportion.
pub const EVENTS_PER_CHILD: u32 = 3;

fn default_p_percent() -> u32 {
    10
}

/// Noise and its budget: every released number carries discrete Gaussian
/// noise with standard deviation `noise_sd` (scaled for magnitudes), and the
/// releases under the agreement together are (`epsilon`, `delta`)-
/// differentially private. A release that would pass the budget is refused;
/// an identical question about the same data is answered again from the
/// first release, at no cost.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrivacyBudget {
    /// Standard deviation of the noise added to each released count.
    pub noise_sd: f64,
    /// The agreement's whole privacy-loss budget, over its life.
    pub epsilon: f64,
    /// The probability with which the epsilon bound may fail.
    pub delta: f64,
}

impl Default for PrivacyBudget {
    /// About the total budget of the US Census Bureau's 2020 redistricting
    /// release (epsilon 17.14 at delta 1e-10), with noise of SD 5 per count.
    fn default() -> Self {
        Self {
            noise_sd: 5.0,
            epsilon: 20.0,
            delta: 1e-9,
        }
    }
}

impl PrivacyBudget {
    /// The budget in zero-concentrated differential privacy (rho): the
    /// largest rho with rho + 2 sqrt(rho ln(1/delta)) <= epsilon (Bun and
    /// Steinke 2016, proposition 1.3), which is how releases add up.
    pub fn rho(&self) -> f64 {
        let log = (1.0 / self.delta).ln();
        let root = -log.sqrt() + (log + self.epsilon).sqrt();
        root.max(0.0).powi(2)
    }

    /// What one table costs, in rho, when each child moves `touches`
    /// released numbers by one each: touches / (2 sd^2).
    pub fn cost(&self, touches: f64) -> f64 {
        touches / (2.0 * self.noise_sd * self.noise_sd)
    }
}

/// The (n, k) dominance rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Dominance {
    pub n: u32,
    /// Percent of the cell's total.
    pub k: u32,
}

impl Default for Dominance {
    /// ACRO's default (SACRO project): the two largest hold at most 90%.
    fn default() -> Self {
        Self { n: 2, k: 90 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// Round to the nearest 5.
    #[serde(rename = "nearest_5")]
    Nearest5,
    /// Replace each count by the midpoint of its band of six (1-6 -> 3, 7-12 -> 9, ...).
    #[serde(rename = "midpoint_6")]
    Midpoint6,
    None,
}

impl Rounding {
    /// How much a rounding hides: the one order of strictness.
    pub fn strength(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Nearest5 => 1,
            Self::Midpoint6 => 2,
        }
    }

    /// What it does to a count that is shown, in words: the one wording of
    /// the agreement's explanation and every table's footnote.
    pub fn in_words(self) -> &'static str {
        match self {
            Self::Nearest5 => "other counts are rounded to the nearest 5",
            Self::Midpoint6 => "other counts are replaced by the midpoint of their band of six",
            Self::None => "other counts are not rounded",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Role {
    #[serde(default)]
    pub description: String,
    pub access: Access,
    /// Who holds the role: analyst certificate names (`joinery pki issue
    /// --analyst NAME`). An analyst no role names may not query.
    pub analysts: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Disclosure-controlled aggregate tables only.
    Aggregates,
    /// Row-level extracts, with pseudonyms specific to the project.
    RowLevel,
}

/// The Five Safes, briefly.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FiveSafes {
    pub safe_projects: String,
    pub safe_people: String,
    pub safe_settings: String,
    pub safe_data: String,
    pub safe_outputs: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Signatory {
    pub name: String,
    /// Organisation code of the party the signatory signs for.
    pub organisation: String,
    /// e.g. Caldicott Guardian, Senior Information Risk Owner, Data Protection Officer.
    pub role: String,
    /// Ed25519 public key, 64 hexadecimal characters (`joinery policy keygen`).
    pub public_key: String,
}

/// A point in time written as `YYYY-MM-DD` or RFC 3339. A bare date means the
/// start of that day (UTC) — [`Agreement::expires`] means the end of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct When {
    pub start: OffsetDateTime,
    /// True when written as a bare date.
    pub date_only: bool,
}

impl When {
    pub fn parse(text: &str) -> Option<Self> {
        use time::format_description::well_known::{Iso8601, Rfc3339};
        if let Ok(date) = time::Date::parse(text, &Iso8601::DATE)
            && text.len() == 10
        {
            return Some(Self {
                start: date.midnight().assume_utc(),
                date_only: true,
            });
        }
        OffsetDateTime::parse(text, &Rfc3339)
            .ok()
            .map(|start| Self {
                start,
                date_only: false,
            })
    }

    /// The last instant covered: the end of the day for a bare date.
    pub fn end(&self) -> OffsetDateTime {
        if self.date_only {
            self.start + time::Duration::days(1) - time::Duration::nanoseconds(1)
        } else {
            self.start
        }
    }
}

impl fmt::Display for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.date_only {
            write!(f, "{}", self.start.date())
        } else {
            let text = self
                .start
                .format(&time::format_description::well_known::Rfc3339)
                .map_err(|_| fmt::Error)?;
            f.write_str(&text)
        }
    }
}

impl<'de> Deserialize<'de> for When {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{text:?} is not a date (YYYY-MM-DD) or an RFC 3339 time"
            ))
        })
    }
}

impl Serialize for When {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl JsonSchema for When {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "When".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A date (YYYY-MM-DD) or an RFC 3339 time",
            "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}(T.*)?$"
        })
    }
}
