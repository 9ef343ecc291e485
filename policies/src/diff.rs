//! `joinery policy diff`: what a new version of an agreement changes, field by
//! field, flagging every change that widens access (more data, finer data,
//! kept longer, seen by more people, less protected outputs).

use std::collections::BTreeSet;
use std::fmt;

use crate::explain::describe;
use crate::model::{Access, Agreement, OptOut, Transform};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Where, e.g. `datasets.csc_referrals.fields.ethnicity`.
    pub path: String,
    pub description: String,
    /// True when the change gives access to more, or more precise, data.
    pub widens: bool,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = if self.widens { "WIDENS" } else { "      " };
        write!(f, "{mark} {}: {}", self.path, self.description)
    }
}

/// How much a transform reveals: higher reveals more.
fn disclosure(t: &Transform) -> u8 {
    match t {
        Transform::Drop => 0,
        Transform::Pseudonymise => 1,
        Transform::AgeBand(_) | Transform::Year | Transform::Area => 2,
        Transform::Quarter | Transform::District => 3,
        Transform::CodeMap(_) | Transform::TopCode(_) | Transform::Month | Transform::Sector => 4,
        Transform::Keep => 5,
    }
}

/// Every difference between `old` and `new`.
pub fn diff(old: &Agreement, new: &Agreement) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut add = |path: String, description: String, widens: bool| {
        changes.push(Change {
            path,
            description,
            widens,
        })
    };

    if old.version >= new.version {
        add(
            "version".into(),
            format!(
                "version goes from {} to {}; a new version must have a higher number",
                old.version, new.version
            ),
            false,
        );
    }
    for (key, a, b) in [
        ("title", &old.title, &new.title),
        ("purpose", &old.purpose, &new.purpose),
    ] {
        if a.trim() != b.trim() {
            add(key.into(), "reworded".into(), false);
        }
    }
    if old.lawful_basis != new.lawful_basis {
        add("lawful_basis".into(), "changed".into(), false);
    }
    if old.national_data_opt_out != new.national_data_opt_out {
        let widens = new.national_data_opt_out == OptOut::DoesNotApply;
        add(
            "national_data_opt_out".into(),
            format!(
                "{} -> {}",
                written(&old.national_data_opt_out),
                written(&new.national_data_opt_out)
            ),
            widens,
        );
    }
    if old.valid_from != new.valid_from {
        add(
            "valid_from".into(),
            format!("{} -> {}", old.valid_from, new.valid_from),
            new.valid_from.start < old.valid_from.start,
        );
    }
    if old.expires != new.expires {
        add(
            "expires".into(),
            format!("{} -> {}", old.expires, new.expires),
            new.expires.end() > old.expires.end(),
        );
    }
    if old.review_by != new.review_by {
        add(
            "review_by".into(),
            format!("{} -> {}", old.review_by, new.review_by),
            false,
        );
    }

    // Parties and what they send.
    for party in &new.parties {
        match old
            .parties
            .iter()
            .find(|p| p.organisation == party.organisation)
        {
            None => add(
                format!("parties.{}", party.organisation),
                format!(
                    "new party {} ({}) sending {}",
                    party.organisation,
                    party.name,
                    party.sends.join(", ")
                ),
                true,
            ),
            Some(before) => {
                for d in party.sends.iter().filter(|d| !before.sends.contains(d)) {
                    add(
                        format!("parties.{}.sends", party.organisation),
                        format!("now also sends {d}"),
                        true,
                    );
                }
                for d in before.sends.iter().filter(|d| !party.sends.contains(d)) {
                    add(
                        format!("parties.{}.sends", party.organisation),
                        format!("no longer sends {d}"),
                        false,
                    );
                }
                if before.role != party.role {
                    add(
                        format!("parties.{}.role", party.organisation),
                        format!("{} -> {}", written(&before.role), written(&party.role)),
                        false,
                    );
                }
            }
        }
    }
    for party in old
        .parties
        .iter()
        .filter(|p| !new.parties.iter().any(|n| n.organisation == p.organisation))
    {
        add(
            format!("parties.{}", party.organisation),
            "party removed".into(),
            false,
        );
    }

    // Datasets, field by field.
    let names: BTreeSet<&String> = old.datasets.keys().chain(new.datasets.keys()).collect();
    for name in names {
        let path = format!("datasets.{name}");
        match (old.datasets.get(name), new.datasets.get(name)) {
            (None, Some(_)) => add(path, "new dataset".into(), true),
            (Some(_), None) => add(path, "dataset removed".into(), false),
            (Some(a), Some(b)) => {
                if a.retention_days != b.retention_days {
                    add(
                        format!("{path}.retention_days"),
                        format!("{} -> {} days", a.retention_days, b.retention_days),
                        b.retention_days > a.retention_days,
                    );
                }
                let fields: BTreeSet<&String> = a.fields.keys().chain(b.fields.keys()).collect();
                for field in fields {
                    let fpath = format!("{path}.fields.{field}");
                    match (a.fields.get(field), b.fields.get(field)) {
                        (None, Some(t)) => add(
                            fpath,
                            format!("added: {}", describe(field, t)),
                            disclosure(t) > 0,
                        ),
                        (Some(_), None) => add(fpath, "removed: no longer sent".into(), false),
                        (Some(x), Some(y)) if x != y => add(
                            fpath,
                            format!("was {}; now {}", describe(field, x), describe(field, y)),
                            disclosure(y) > disclosure(x)
                                || (disclosure(y) == disclosure(x) && disclosure(y) > 0),
                        ),
                        _ => {}
                    }
                }
                let events: BTreeSet<&String> = a.events.keys().chain(b.events.keys()).collect();
                for event in events {
                    let epath = format!("{path}.events.{event}");
                    match (a.events.get(event), b.events.get(event)) {
                        (None, Some(_)) => add(epath, "new event type sent".into(), true),
                        (Some(_), None) => add(epath, "event type no longer sent".into(), false),
                        (Some(x), Some(y)) if x != y => {
                            let wider = disclosure(&y.date) > disclosure(&x.date)
                                || y.attributes.iter().any(|(k, t)| {
                                    x.attributes.get(k).is_none_or(|old| {
                                        disclosure(t) > disclosure(old)
                                            || (old != t && disclosure(t) > 0)
                                    })
                                });
                            add(epath, "date precision or attributes changed".into(), wider);
                        }
                        _ => {}
                    }
                }
            }
            (None, None) => {}
        }
    }

    // Linkage.
    for f in new
        .linkage
        .fields
        .iter()
        .filter(|f| !old.linkage.fields.contains(f))
    {
        add(
            "linkage.fields".into(),
            format!("{f} now used for linkage"),
            true,
        );
    }
    let (o, n) = (&old.linkage.encoding, &new.linkage.encoding);
    if o != n && o.version == n.version {
        add(
            "linkage.encoding".into(),
            format!(
                "the encoding changed but its version (v{}) did not: encodings made under the two would be compared as if alike; bump linkage.encoding.version",
                n.version
            ),
            false,
        );
    } else if o != n {
        add(
            "linkage.encoding".into(),
            format!(
                "{} v{} -> {} v{} (all records must be re-encoded)",
                old.linkage.encoding.scheme,
                old.linkage.encoding.version,
                new.linkage.encoding.scheme,
                new.linkage.encoding.version
            ),
            false,
        );
    }

    let (o, n) = (
        &old.linkage.nhs_number_keyholders,
        &new.linkage.nhs_number_keyholders,
    );
    if o != n {
        add(
            "linkage.nhs_number_keyholders".into(),
            format!(
                "[{}] -> [{}] (every NHS pseudonym changes: all records must be sent again)",
                o.join(", "),
                n.join(", ")
            ),
            // Fewer keyholders: fewer parties need collude.
            n.len() < o.len(),
        );
    }

    // Outputs.
    let (o, n) = (&old.outputs, &new.outputs);
    if o.minimum_cell_count != n.minimum_cell_count {
        add(
            "outputs.minimum_cell_count".into(),
            format!("{} -> {}", o.minimum_cell_count, n.minimum_cell_count),
            n.minimum_cell_count < o.minimum_cell_count,
        );
    }
    if o.rounding != n.rounding {
        add(
            "outputs.rounding".into(),
            format!("{} -> {}", written(&o.rounding), written(&n.rounding)),
            n.rounding.strength() < o.rounding.strength(),
        );
    }
    if o.reidentify_for_direct_care != n.reidentify_for_direct_care {
        add(
            "outputs.reidentify_for_direct_care".into(),
            format!(
                "{} -> {}",
                o.reidentify_for_direct_care, n.reidentify_for_direct_care
            ),
            n.reidentify_for_direct_care,
        );
    }
    let (op, np) = (&o.privacy, &n.privacy);
    if op.noise_sd != np.noise_sd {
        add(
            "outputs.privacy.noise_sd".into(),
            format!("{} -> {}", op.noise_sd, np.noise_sd),
            np.noise_sd < op.noise_sd,
        );
    }
    if op.epsilon != np.epsilon || op.delta != np.delta {
        add(
            "outputs.privacy.epsilon".into(),
            format!(
                "epsilon {} delta {:e} -> epsilon {} delta {:e}",
                op.epsilon, op.delta, np.epsilon, np.delta
            ),
            np.rho() > op.rho(),
        );
    }
    if o.dominance != n.dominance {
        add(
            "outputs.dominance".into(),
            format!(
                "({}, {}%) -> ({}, {}%)",
                o.dominance.n, o.dominance.k, n.dominance.n, n.dominance.k
            ),
            n.dominance.k > o.dominance.k || n.dominance.n < o.dominance.n,
        );
    }
    if o.p_percent != n.p_percent {
        add(
            "outputs.p_percent".into(),
            format!("{}% -> {}%", o.p_percent, n.p_percent),
            n.p_percent < o.p_percent,
        );
    }
    if o.secondary_suppression != n.secondary_suppression {
        add(
            "outputs.secondary_suppression".into(),
            format!("{} -> {}", o.secondary_suppression, n.secondary_suppression),
            !n.secondary_suppression,
        );
    }

    // Roles.
    for (name, role) in &new.roles {
        match old.roles.get(name) {
            None => add(
                format!("roles.{name}"),
                format!("new role with {} access", written(&role.access)),
                true,
            ),
            Some(before) => {
                if before.access != role.access {
                    add(
                        format!("roles.{name}.access"),
                        format!("{} -> {}", written(&before.access), written(&role.access)),
                        role.access == Access::RowLevel,
                    );
                }
                let added: Vec<&str> = role
                    .analysts
                    .iter()
                    .filter(|a| !before.analysts.contains(a))
                    .map(String::as_str)
                    .collect();
                if !added.is_empty() {
                    add(
                        format!("roles.{name}.analysts"),
                        format!("added {}", added.join(", ")),
                        true,
                    );
                }
                if before.analysts.iter().any(|a| !role.analysts.contains(a)) {
                    add(
                        format!("roles.{name}.analysts"),
                        "analysts removed".into(),
                        false,
                    );
                }
            }
        }
    }
    for name in old.roles.keys().filter(|r| !new.roles.contains_key(*r)) {
        add(format!("roles.{name}"), "role removed".into(), false);
    }
    if old.five_safes != new.five_safes {
        add("five_safes".into(), "reworded".into(), false);
    }
    if old.signatories != new.signatories {
        add("signatories".into(), "signatories changed".into(), false);
    }
    changes
}

/// A value as the agreement writes it (its YAML spelling, not Rust's).
fn written<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::from("?"),
    }
}
