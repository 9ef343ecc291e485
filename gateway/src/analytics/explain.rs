//! A query in words, for `joinery query explain` and every released table.

use super::model::{AnalystQuery, Breakdown, Condition, Measure};

/// The cohort in words.
pub fn explain(query: &AnalystQuery) -> String {
    let who = query
        .cohort
        .as_ref()
        .map_or_else(|| "everyone on the person spine".to_owned(), describe);
    let by = |b: Breakdown| match b {
        Breakdown::None => None,
        Breakdown::Segment => Some("life-course segment"),
        Breakdown::Sex => Some("sex"),
        Breakdown::AgencyOverlap => Some("how many agencies know them"),
        Breakdown::Agencies => Some("which agencies know them"),
        Breakdown::Stratum => Some("risk tier"),
    };
    let split: Vec<&str> = [by(query.rows), by(query.columns)]
        .into_iter()
        .flatten()
        .collect();
    let reference = query
        .reference_date
        .map_or_else(|| "today".to_owned(), |d| d.to_string());
    let strata = query.stratification.as_ref().map_or_else(String::new, |s| {
        let factors: Vec<String> = s
            .factors
            .iter()
            .map(|f| format!("{} ({} points: {})", f.name, f.points, describe(&f.when)))
            .collect();
        let tiers: Vec<String> = s
            .tiers
            .iter()
            .map(|t| format!("{} from {}", t.name, t.from_points))
            .collect();
        format!(
            " Risk tiers by {} version {}: {}; tiers {}.",
            s.name,
            s.version,
            factors.join("; "),
            tiers.join(", ")
        )
    });
    let measure = match &query.measure {
        Measure::Children => String::new(),
        Measure::Events(e) => format!(
            " Each cell counts their {} events.",
            describe(&Condition::Has(e.clone())).trim_start_matches("with a ")
        ),
        Measure::Share(c) => format!(" Each cell is the percentage of them {}.", describe(c)),
        Measure::MedianDays(i) => format!(
            " Each cell is the median days from their first {} event to the first {} event on or after it.",
            i.from.event, i.to.event
        ),
    };
    let strata = format!("{strata}{measure}");
    if split.is_empty() {
        format!("People: {who}. Ages and recent periods are counted at {reference}.{strata}")
    } else {
        format!(
            "People: {who}; counted by {}. Ages and recent periods are counted at {reference}.{strata}",
            split.join(" and by ")
        )
    }
}

fn describe(condition: &Condition) -> String {
    let join = |list: &[Condition], word: &str| {
        let parts: Vec<String> = list.iter().map(describe).collect();
        if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("({})", parts.join(&format!(" {word} ")))
        }
    };
    match condition {
        Condition::All(list) => join(list, "and"),
        Condition::Any(list) => join(list, "or"),
        Condition::Not(inner) => format!("not {}", describe(inner)),
        Condition::Age(a) if a.to == u32::MAX => format!("aged {} or over", a.from),
        Condition::Age(a) => format!("aged {} to {}", a.from, a.to),
        Condition::KnownTo(k) => {
            let mut parts = Vec::new();
            if let Some(o) = &k.organisation {
                parts.push(format!("organisation {o}"));
            }
            if let Some(d) = &k.dataset {
                parts.push(format!("dataset {d}"));
            }
            format!("known to {}", parts.join(", "))
        }
        Condition::Has(e) => {
            let mut text = if e.at_least > 1 {
                format!("with at least {} {} events", e.at_least, e.event)
            } else {
                format!("with a {} event", e.event)
            };
            if let Some(d) = &e.dataset {
                text.push_str(&format!(" in {d}"));
            }
            for (name, values) in &e.attributes {
                text.push_str(&format!(" whose {name} is {}", values.join(" or ")));
            }
            match (e.from, e.to) {
                (Some(f), Some(t)) => text.push_str(&format!(" between {f} and {t}")),
                (Some(f), None) => text.push_str(&format!(" on or after {f}")),
                (None, Some(t)) => text.push_str(&format!(" on or before {t}")),
                (None, None) => {}
            }
            if let Some(m) = e.within_months {
                text.push_str(&format!(" in the {m} months before the reference date"));
            }
            if let Some(r) = &e.before {
                text.push_str(&format!(
                    " followed within {} days by a {} event",
                    r.within_days, r.event
                ));
            }
            if let Some(r) = &e.after {
                text.push_str(&format!(
                    " within {} days after a {} event",
                    r.within_days, r.event
                ));
            }
            text
        }
    }
}
