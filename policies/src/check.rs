//! `joinery policy check`: parse an agreement and apply every rule that spans
//! fields, reporting each problem at its line and column with how to fix it,
//! and warning about risky but legal choices.

use std::collections::BTreeSet;
use std::fmt;

use time::OffsetDateTime;

use crate::locate::{Position, Step, locate};
use crate::model::{Agreement, Transform};
use crate::transform::PERSON_FIELDS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// One finding, at a place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub at: Position,
    pub message: String,
    /// How to fix it.
    pub help: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}: {level}: {}",
            self.at.line, self.at.column, self.message
        )?;
        if !self.help.is_empty() {
            write!(f, "\n    help: {}", self.help)?;
        }
        Ok(())
    }
}

/// The parsed agreement (when the file parses) and every finding.
#[derive(Debug, Clone)]
pub struct Checked {
    pub agreement: Option<Agreement>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }

    pub fn is_valid(&self) -> bool {
        self.errors().next().is_none()
    }
}

/// Checks agreement text. `today` dates the "expiry more than three years out" warning.
pub fn check(text: &str, today: OffsetDateTime) -> Checked {
    let agreement = match parse(text) {
        Ok(agreement) => agreement,
        Err(diagnostics) => {
            return Checked {
                agreement: None,
                diagnostics,
            };
        }
    };
    let mut rules = Rules {
        text,
        diagnostics: Vec::new(),
    };
    rules.run(&agreement, today);
    let mut diagnostics = rules.diagnostics;
    diagnostics.sort_by_key(|d| (d.severity, d.at.line, d.at.column));
    Checked {
        agreement: Some(agreement),
        diagnostics,
    }
}

/// At most this many parse errors are reported from one file.
const MAX_PARSE_ERRORS: usize = 50;

/// Parses an agreement, or reports why not. The parser stops at its first
/// error; an unknown key (a misspelling, the commonest slip) is then read
/// as the expected key it is closest to, when one is close (the help says
/// which), or else left out with the lines nested under it, and the text
/// parsed again: every unknown key is reported in one go. Any other error
/// ends the report (what follows it could be an echo of it).
fn parse(text: &str) -> Result<Agreement, Vec<Diagnostic>> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut diagnostics = Vec::new();
    loop {
        let error = match serde_saphyr::from_str::<Agreement>(&lines.join("\n")) {
            Ok(agreement) if diagnostics.is_empty() => return Ok(agreement),
            Ok(_) => return Err(diagnostics),
            Err(error) => error,
        };
        let at = error
            .location()
            .map(|l| Position {
                line: l.line() as usize,
                column: l.column() as usize,
            })
            .unwrap_or(Position { line: 1, column: 1 });
        let message = error.to_string();
        let unknown_key = unknown_field(&message);
        let meant = unknown_key
            .as_ref()
            .and_then(|(key, expected)| closest(key, expected))
            .map(str::to_owned);
        let help = if let Some(meant) = &meant {
            format!("did you mean `{meant}`?")
        } else if unknown_key.is_some() {
            "remove the key or correct its spelling; the JSON Schema (joinery policy schema) lists every key".to_owned()
        } else if message.contains("missing field") {
            "add the key; see policies/examples/ for a complete agreement".to_owned()
        } else if message.contains("unknown variant") {
            "use one of the values listed in the message".to_owned()
        } else {
            String::new()
        };
        let repeated = diagnostics.iter().any(|d: &Diagnostic| d.at == at);
        if !repeated {
            diagnostics.push(Diagnostic {
                severity: Severity::Error,
                at,
                message: first_line(&message),
                help,
            });
        }
        let Some((key, _)) =
            unknown_key.filter(|_| !repeated && diagnostics.len() < MAX_PARSE_ERRORS)
        else {
            return Err(diagnostics);
        };
        match meant {
            Some(meant) => rename_key(&mut lines, at.line, &key, &meant),
            None => leave_out_block(&mut lines, at.line),
        }
    }
}

/// The key and the expected keys of a parser's "unknown field `k`,
/// expected one of a, b, c" message.
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.split("unknown field `").nth(1)?;
    let (key, rest) = rest.split_once('`')?;
    let expected = rest
        .split_once("expected one of ")
        .or_else(|| rest.split_once("expected "))
        .map(|(_, list)| list.lines().next().unwrap_or_default())
        .unwrap_or_default()
        .split(", ")
        .map(|k| k.trim().trim_matches('`').to_owned())
        .filter(|k| !k.is_empty())
        .collect();
    Some((key.to_owned(), expected))
}

/// The expected key `key` is most likely a misspelling of: one edit away
/// (a letter wrong, missing, extra or two swapped), two for long keys.
fn closest<'e>(key: &str, expected: &'e [String]) -> Option<&'e str> {
    let allowed = if key.len() <= 8 { 1 } else { 2 };
    expected
        .iter()
        .map(|e| (strsim::damerau_levenshtein(key, e), e))
        .filter(|(distance, _)| *distance <= allowed)
        .min()
        .map(|(_, e)| e.as_str())
}

/// Writes `meant` for the key `key` on line `line` (1-based).
fn rename_key(lines: &mut [String], line: usize, key: &str, meant: &str) {
    if let Some(l) = line.checked_sub(1).and_then(|i| lines.get_mut(i)) {
        *l = l.replacen(&format!("{key}:"), &format!("{meant}:"), 1);
    }
}

/// Blanks line `line` (1-based) and the lines nested under it (more deeply
/// indented), keeping the line count so later positions stay true.
fn leave_out_block(lines: &mut [String], line: usize) {
    let Some(first) = line.checked_sub(1).filter(|&i| i < lines.len()) else {
        return;
    };
    let indent = |l: &str| l.len() - l.trim_start().len();
    let depth = indent(&lines[first]);
    lines[first].clear();
    for l in lines.iter_mut().skip(first + 1) {
        if !l.trim().is_empty() && indent(l) <= depth {
            break;
        }
        l.clear();
    }
}

/// The parser's message without its own "error: line N column M:" prefix
/// (the diagnostic carries the position) or its source excerpt.
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or(message);
    let line = line.strip_prefix("error: ").unwrap_or(line);
    match line
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
    {
        Some((_, message)) => message.to_owned(),
        None => line.to_owned(),
    }
}

struct Rules<'a> {
    text: &'a str,
    diagnostics: Vec<Diagnostic>,
}

impl Rules<'_> {
    fn report(&mut self, severity: Severity, path: &[Step<'_>], message: String, help: &str) {
        self.diagnostics.push(Diagnostic {
            severity,
            at: locate(self.text, path),
            message,
            help: help.to_owned(),
        });
    }

    fn error(&mut self, path: &[Step<'_>], message: String, help: &str) {
        self.report(Severity::Error, path, message, help);
    }

    fn warn(&mut self, path: &[Step<'_>], message: String, help: &str) {
        self.report(Severity::Warning, path, message, help);
    }

    fn run(&mut self, a: &Agreement, today: OffsetDateTime) {
        use Step::{Index, Key};
        let valid_id = (3..=64).contains(&a.id.len())
            && a.id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid_id {
            self.error(
                &[Key("id")],
                "id must be 3-64 lower-case letters, digits or hyphens".into(),
                "e.g. leeds-children-stratification",
            );
        }
        if a.version == 0 {
            self.error(
                &[Key("version")],
                "version must be 1 or more".into(),
                "start at 1 and increase it with every signed change",
            );
        }
        for (field, value) in [("title", &a.title), ("purpose", &a.purpose)] {
            if value.trim().is_empty() {
                self.error(
                    &[Key(field)],
                    format!("{field} is empty"),
                    "say it in plain English for the board paper",
                );
            }
        }

        // Parties and what they send.
        if a.parties.is_empty() {
            self.error(
                &[Key("parties")],
                "an agreement needs at least one party".into(),
                "",
            );
        }
        let mut seen = BTreeSet::new();
        let mut sent = BTreeSet::new();
        for (i, party) in a.parties.iter().enumerate() {
            if joinery_crypto::identity::OrganisationCode::new(party.organisation.as_str()).is_err()
            {
                self.error(
                    &[Key("parties"), Index(i), Key("organisation")],
                    format!(
                        "{:?} is not an ODS or local-authority code",
                        party.organisation
                    ),
                    "2-12 upper-case letters or digits, as on the organisation's certificate",
                );
            }
            if !seen.insert(&party.organisation) {
                self.error(
                    &[Key("parties"), Index(i), Key("organisation")],
                    format!("organisation {} is listed twice", party.organisation),
                    "list each organisation once, with all the datasets it sends",
                );
            }
            for dataset in &party.sends {
                if !a.datasets.contains_key(dataset) {
                    self.error(
                        &[Key("parties"), Index(i), Key("sends")],
                        format!(
                            "{} sends dataset {dataset:?}, which is not under datasets",
                            party.organisation
                        ),
                        "add the dataset under datasets, or correct the name",
                    );
                }
                sent.insert(dataset.as_str());
            }
        }

        // Dates.
        if a.review_by.start < a.valid_from.start {
            self.error(
                &[Key("review_by")],
                "review_by is before valid_from".into(),
                "",
            );
        }
        if a.expires.end() <= a.valid_from.start {
            self.error(
                &[Key("expires")],
                "expires is not after valid_from".into(),
                "",
            );
        }
        if a.expires.end() > today + time::Duration::days(3 * 365 + 1) {
            self.warn(
                &[Key("expires")],
                "the agreement runs for more than three years from today".into(),
                "agreements are usually reviewed and renewed within three years",
            );
        }

        // Datasets.
        for (name, dataset) in &a.datasets {
            if !is_name(name) {
                self.error(
                    &dataset_path(name, &[]),
                    format!("dataset name {name:?} must be 1-64 of a-z, 0-9 and _"),
                    "",
                );
            }
            if !sent.contains(name.as_str()) {
                self.warn(
                    &dataset_path(name, &[]),
                    format!("no party sends dataset {name}"),
                    "list it under a party's sends, or remove it",
                );
            }
            if dataset.retention_days == 0 {
                self.error(
                    &dataset_path(name, &[Key("retention_days")]),
                    "retention_days must be 1 or more".into(),
                    "",
                );
            }
            match dataset.fields.get("local_id") {
                Some(Transform::Pseudonymise) => {}
                _ => self.error(&dataset_path(name, &[Key("fields")]), format!("dataset {name}: local_id must be listed as pseudonymise"), "every record is identified by its pseudonymised local id: add `local_id: pseudonymise`"),
            }
            for (field, transform) in &dataset.fields {
                let path = {
                    let mut p = dataset_path(name, &[Key("fields")]);
                    p.push(Key(field.as_str()));
                    p
                };
                if let Some(problem) = field_rule(field, transform) {
                    self.error(
                        &path,
                        format!("{name}.{field}: {problem}"),
                        allowed_for(field),
                    );
                }
                if is_free_text(field)
                    && !matches!(transform, Transform::Drop | Transform::CodeMap(_))
                {
                    self.warn(&path, format!("{name}.{field} looks like free text, which can carry names and other identifiers"), "drop it, or map it to a code list");
                }
            }
            let day_dob = matches!(dataset.fields.get("date_of_birth"), Some(Transform::Keep));
            let fine_postcode = matches!(
                dataset.fields.get("postcode"),
                Some(Transform::Keep | Transform::Sector)
            );
            if day_dob && fine_postcode {
                self.warn(&dataset_path(name, &[Key("fields"), Key("date_of_birth")]), format!("{name}: a day-precision date of birth together with a postcode sector or better identifies most children"), "send date_of_birth as month, year or age_band, or postcode as district");
            }
            // What the gateway keeps in clear beside the hardened encodings
            // tells an operator holding a register which few records each
            // stored one can be (docs/linkage-privacy.md).
            let hardened = !a.linkage.fields.is_empty() && a.linkage.encoding.version >= 6;
            let finer_than_year = matches!(
                dataset.fields.get("date_of_birth"),
                Some(Transform::Keep | Transform::Month | Transform::Quarter)
            );
            let finer_than_area = matches!(
                dataset.fields.get("postcode"),
                Some(Transform::Keep | Transform::Sector | Transform::District)
            );
            if hardened && (finer_than_year || finer_than_area) {
                self.warn(&dataset_path(name, &[Key("fields")]), format!("{name}: the gateway keeps a birth date finer than the year or a postcode finer than the area in clear, and with them an operator holding a register of the population re-identifies about half the records despite a hardened encoding version (6 or later; docs/linkage-privacy.md)"), "send date_of_birth as year and postcode as area");
            }
            for (event, rule) in &dataset.events {
                if !is_name(event) {
                    self.error(
                        &dataset_path(name, &[Key("events"), Key(event.as_str())]),
                        format!("event type {event:?} must be 1-64 of a-z, 0-9 and _"),
                        "",
                    );
                }
                if !matches!(rule.date, Transform::Keep | Transform::Month) {
                    self.error(
                        &dataset_path(name, &[Key("events"), Key(event.as_str()), Key("date")]),
                        format!("{name}.{event}: an event date may be keep or month"),
                        "",
                    );
                }
                for (attribute, transform) in &rule.attributes {
                    if let Some(problem) = field_rule(attribute, transform) {
                        self.error(
                            &dataset_path(
                                name,
                                &[
                                    Key("events"),
                                    Key(event.as_str()),
                                    Key("attributes"),
                                    Key(attribute.as_str()),
                                ],
                            ),
                            format!("{name}.{event}.{attribute}: {problem}"),
                            allowed_for(attribute),
                        );
                    }
                }
            }
        }

        // Linkage.
        if !a.linkage.fields.is_empty() && a.linkage.encoding.version < 6 {
            self.warn(
                &[Key("linkage"), Key("encoding"), Key("version")],
                format!(
                    "encoding version {} lets an operator of the gateway holding a register of the population re-identify most records from the fuzzy-linkage encodings (docs/linkage-privacy.md)",
                    a.linkage.encoding.version
                ),
                "use version 7 (hardened; 6 without the date in either order), with date_of_birth sent as year and postcode as area (it costs some links: docs/linkage-privacy.md)",
            );
        }
        let canonical = |f: &str| crate::model::CANONICAL_LINKAGE_FIELDS.contains(&f);
        let encodings = &a.linkage.encoding.fields;
        for (i, field) in a.linkage.fields.iter().enumerate() {
            if !canonical(field) && !encodings.iter().any(|e| &e.field == field) {
                self.error(
                    &[Key("linkage"), Key("fields"), Index(i)],
                    format!("{field:?} has no encoding"),
                    "use given_name, family_name, date_of_birth, sex or postcode, or say how the field is encoded under linkage.encoding.fields ({ field, tokens, bits, hashes })",
                );
            }
        }
        for (i, encoding) in encodings.iter().enumerate() {
            let at = [Key("linkage"), Key("encoding"), Key("fields"), Index(i)];
            if canonical(&encoding.field) {
                self.error(
                    &at,
                    format!("{} has a built-in encoding", encoding.field),
                    "leave the five canonical fields out of linkage.encoding.fields",
                );
            } else if !a.linkage.fields.contains(&encoding.field) {
                self.error(
                    &at,
                    format!("{} is encoded but not listed", encoding.field),
                    "list the field under linkage.fields, or remove its encoding",
                );
            } else if let Some(salt) = encoding
                .salt
                .as_ref()
                .filter(|s| !a.linkage.fields.contains(&s.field))
            {
                self.error(
                    &at,
                    format!(
                        "{} is salted with {}, which is not listed",
                        encoding.field, salt.field
                    ),
                    "salt with a field listed under linkage.fields",
                );
            }
        }

        let keyholders = &a.linkage.nhs_number_keyholders;
        for (i, name) in keyholders.iter().enumerate() {
            let at = [Key("linkage"), Key("nhs_number_keyholders"), Index(i)];
            if !is_host_name(name) {
                self.error(
                    &at,
                    format!("{name:?} is not a host name"),
                    "name each keyholder as its server certificate does, e.g. keyholder.nhs.example",
                );
            } else if keyholders[..i].contains(name) {
                self.error(
                    &at,
                    format!("{name} is listed twice"),
                    "list each keyholder once",
                );
            }
        }
        let pseudonymised = a.datasets.values().any(|d| {
            matches!(
                d.fields.get("nhs_number"),
                Some(crate::model::Transform::Pseudonymise)
            )
        });
        if !keyholders.is_empty() && !pseudonymised {
            self.warn(
                &[Key("linkage"), Key("nhs_number_keyholders")],
                "keyholders are listed but no dataset sends the NHS number pseudonymised".into(),
                "set nhs_number: pseudonymise in a dataset, or remove the keyholders",
            );
        }

        if !a.linkage.fields.is_empty() {
            if a.linkage.encoding.scheme != crate::model::KEYED_BLOOM {
                self.error(
                    &[Key("linkage"), Key("encoding"), Key("scheme")],
                    format!("unknown linkage scheme {:?}", a.linkage.encoding.scheme),
                    "the scheme is keyed-bloom",
                );
            } else if let Some(Err(e)) = a.linkage.params().map(|p| p.validate()) {
                let help = match e {
                    joinery_linkage::params::ParamsError::Empty => {
                        "list date_of_birth, or family_name or given_name with date_of_birth or postcode, so records can be blocked"
                    }
                    _ => "see the field's entry under linkage.encoding.fields",
                };
                self.error(&[Key("linkage"), Key("fields")], e.to_string(), help);
            }
        }

        // Outputs.
        if a.outputs.minimum_cell_count == 0 {
            self.error(
                &[Key("outputs"), Key("minimum_cell_count")],
                "minimum_cell_count must be 1 or more".into(),
                "",
            );
        } else if a.outputs.minimum_cell_count < 5 {
            self.warn(
                &[Key("outputs"), Key("minimum_cell_count")],
                format!(
                    "minimum cell count {} is below 5",
                    a.outputs.minimum_cell_count
                ),
                "NHS England publishes with counts of 1-7 suppressed (minimum_cell_count: 8)",
            );
        }
        let privacy = &a.outputs.privacy;
        let privacy_at = |key| [Key("outputs"), Key("privacy"), Key(key)];
        if !(privacy.noise_sd.is_finite() && privacy.noise_sd >= 1.0) {
            self.error(
                &privacy_at("noise_sd"),
                format!("noise_sd {} is below 1", privacy.noise_sd),
                "the noise's standard deviation per released count: 5 is the default",
            );
        }
        if !(privacy.epsilon.is_finite() && privacy.epsilon > 0.0) {
            self.error(
                &privacy_at("epsilon"),
                format!("epsilon {} must be above 0", privacy.epsilon),
                "the whole privacy-loss budget over the agreement's life: 20 is the default",
            );
        } else if privacy.epsilon > 20.0 {
            self.warn(
                &privacy_at("epsilon"),
                format!("epsilon {} is a weak guarantee", privacy.epsilon),
                "the US Census Bureau's 2020 redistricting data used 17.14 for everything it released",
            );
        }
        if !(privacy.delta > 0.0 && privacy.delta <= 1e-5) {
            self.error(
                &privacy_at("delta"),
                format!("delta {:e} must be above 0 and at most 1e-5", privacy.delta),
                "well below one over the number of children: 1e-9 is the default",
            );
        }
        let dominance = &a.outputs.dominance;
        if dominance.n == 0 || !(1..=100).contains(&dominance.k) {
            self.error(
                &[Key("outputs"), Key("dominance")],
                format!(
                    "dominance ({}, {}%) is not a rule",
                    dominance.n, dominance.k
                ),
                "n of 1 or more and k from 1 to 100: (2, 90) is ACRO's default",
            );
        }
        if a.outputs.p_percent > 100 {
            self.error(
                &[Key("outputs"), Key("p_percent")],
                format!("p_percent {} is over 100", a.outputs.p_percent),
                "10 is ACRO's default",
            );
        }
        if a.roles.is_empty() {
            self.error(
                &[Key("roles")],
                "at least one analyst role is needed".into(),
                "e.g. analyst: { access: aggregates, analysts: [j.bloggs] }",
            );
        }
        for (name, role) in &a.roles {
            if role.analysts.is_empty() {
                self.error(
                    &[Key("roles"), Key(name), Key("analysts")],
                    format!("role {name} names no analysts"),
                    "list the analyst certificate names that hold it, e.g. analysts: [j.bloggs]",
                );
            }
        }

        // Five Safes.
        let fs = &a.five_safes;
        for (key, value) in [
            ("safe_projects", &fs.safe_projects),
            ("safe_people", &fs.safe_people),
            ("safe_settings", &fs.safe_settings),
            ("safe_data", &fs.safe_data),
            ("safe_outputs", &fs.safe_outputs),
        ] {
            if value.trim().is_empty() {
                self.error(
                    &[Key("five_safes"), Key(key)],
                    format!("five_safes.{key} is empty"),
                    "a sentence or two is enough",
                );
            }
        }

        // A row-level role is an output the safe-outputs statement must
        // cover: signatories read that statement, not the roles.
        let mentions_rows = fs.safe_outputs.to_lowercase().contains("row");
        for (name, role) in &a.roles {
            if role.access == crate::model::Access::RowLevel && !mentions_rows {
                self.warn(
                    &[Key("roles"), Key(name), Key("access")],
                    format!(
                        "role {name} has row-level access, but five_safes.safe_outputs does not mention row-level outputs"
                    ),
                    "say in safe_outputs who receives row-level extracts and how they are controlled, or make the role aggregates",
                );
            }
        }

        // Signatories.
        if a.signatories.is_empty() {
            self.error(
                &[Key("signatories")],
                "an agreement needs at least one signatory".into(),
                "list who must sign, with their public keys (joinery policy keygen)",
            );
        }
        let mut keys = BTreeSet::new();
        for (i, s) in a.signatories.iter().enumerate() {
            if crate::signing::public_key_bytes(&s.public_key).is_none() {
                self.error(
                    &[Key("signatories"), Index(i), Key("public_key")],
                    format!("{}'s public_key is not 64 hexadecimal characters", s.name),
                    "paste the public key printed by joinery policy keygen",
                );
            }
            if !keys.insert(&s.public_key) {
                self.error(
                    &[Key("signatories"), Index(i), Key("public_key")],
                    format!("{}'s public key is also another signatory's", s.name),
                    "each signatory needs their own key",
                );
            }
            if !a.parties.iter().any(|p| p.organisation == s.organisation) {
                self.error(
                    &[Key("signatories"), Index(i), Key("organisation")],
                    format!(
                        "{} signs for {}, which is not a party",
                        s.name, s.organisation
                    ),
                    "",
                );
            }
        }
    }
}

/// Why `transform` is not allowed for `field`, if it is not.
fn field_rule(field: &str, transform: &Transform) -> Option<&'static str> {
    use Transform::*;
    if matches!(transform, AgeBand(bands) if bands.is_empty()) {
        return Some("age_band needs at least one band");
    }
    let ok = match field {
        "local_id" => matches!(transform, Pseudonymise),
        "nhs_number" => matches!(transform, Pseudonymise | Drop),
        "given_name" | "family_name" => matches!(transform, Drop),
        "date_of_birth" => matches!(transform, Keep | Drop | Month | Quarter | Year | AgeBand(_)),
        "postcode" => matches!(transform, Keep | Drop | District | Sector | Area),
        "sex" => matches!(transform, Keep | Drop | CodeMap(_)),
        _ => !matches!(
            transform,
            Pseudonymise | District | Sector | Area | AgeBand(_)
        ),
    };
    (!ok).then_some("this transform is not allowed for this field")
}

fn allowed_for(field: &str) -> &'static str {
    match field {
        "local_id" => "local_id: pseudonymise",
        "nhs_number" => "nhs_number: pseudonymise or drop",
        "given_name" | "family_name" => {
            "names never leave the agency: drop (they may be listed under linkage.fields for encoded linkage)"
        }
        "date_of_birth" => "date_of_birth: month, year, age_band, keep or drop",
        "postcode" => "postcode: district, sector, keep or drop",
        "sex" => "sex: keep, code_map or drop",
        _ if PERSON_FIELDS.contains(&field) => "",
        _ => "other fields: keep, drop, month, year, code_map or top_code",
    }
}

fn is_free_text(field: &str) -> bool {
    [
        "note",
        "comment",
        "free_text",
        "freetext",
        "narrative",
        "description",
        "details",
        "summary",
    ]
    .iter()
    .any(|word| field.contains(word))
}

/// The path `datasets.<name>` followed by `rest`.
fn dataset_path<'a>(name: &'a str, rest: &[Step<'a>]) -> Vec<Step<'a>> {
    let mut path = vec![Step::Key("datasets"), Step::Key(name)];
    path.extend_from_slice(rest);
    path
}

/// A DNS host name: dot-separated labels of letters, digits and hyphens.
fn is_host_name(s: &str) -> bool {
    (1..=253).contains(&s.len())
        && s.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}
