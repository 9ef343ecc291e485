//! A query in words, for `joinery query explain` and every released table.

use super::model::{AnalystQuery, Breakdown, Condition, EventCondition, Measure, Relative, Which};

/// The cohort in words.
pub fn explain(query: &AnalystQuery) -> String {
    let who = query
        .cohort
        .as_ref()
        .map_or_else(|| "everyone on the person spine".to_owned(), describe);
    let split: Vec<String> = [&query.rows, &query.columns]
        .into_iter()
        .filter(|b| **b != Breakdown::None)
        .map(Breakdown::heading)
        .collect();
    let reference = query.reference_date.map_or_else(
        || "the reference date (today when none is given)".to_owned(),
        |d| d.to_string(),
    );
    // A stratification is a list to read down: a factor a line.
    let strata = query.stratification.as_ref().map_or_else(String::new, |s| {
        let factors: String = s
            .factors
            .iter()
            .map(|f| format!("\n  - {} ({}): {}", f.name, points(f.points), describe(&f.when)))
            .collect();
        let tiers: Vec<String> = s
            .tiers
            .iter()
            .map(|t| format!("{} from {}", t.name, points(t.from_points)))
            .collect();
        format!(
            "\nRisk tiers by {} version {}: a child scores the points of every factor that applies to them.{factors}\nTiers: {}.\n",
            s.name,
            s.version,
            tiers.join(", ")
        )
    });
    let measure = match &query.measure {
        Measure::Children => String::new(),
        Measure::Events(e) => format!(" Each cell counts their {} events{}.", e.event, narrowed(e)),
        Measure::Share(c) => format!(" Each cell is the percentage of them {}.", describe(c)),
        Measure::MedianDays(i) => format!(
            " Each cell is the median days from their first {} event to the first {} event on or after it.",
            i.from.event, i.to.event
        ),
        Measure::MedianChange(c) => format!(
            " Each cell is the median change in {} from their first {} event to their last (of those{}).",
            c.attribute,
            c.of.event,
            narrowed(&c.of)
        ),
    };
    let measure = match &query.periods {
        Some(p) => format!(
            "{measure} In each of {} periods of {} months, the last ending on the reference date, ages and recent periods are counted at the period's last day; a child is counted in every period they qualify in.",
            p.count,
            p.every.months()
        ),
        None => measure,
    };
    let measure = match &query.indicator {
        Some(name) => match super::library::indicator(name) {
            Ok(i) => format!("{measure} Indicator {name}: {}", i.title),
            Err(_) => measure,
        },
        None => measure,
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

fn points(n: u32) -> String {
    if n == 1 {
        "1 point".to_owned()
    } else {
        format!("{n} points")
    }
}

/// A condition in words.
pub fn describe(condition: &Condition) -> String {
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
            let mut text = match e.which {
                Some(Which::First) => format!("with their first {} event", e.event),
                Some(Which::Last) => format!("with their last {} event", e.event),
                None if e.at_least > 1 => {
                    format!("with at least {} {} events", e.at_least, e.event)
                }
                None => format!("with a {} event", e.event),
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
                    " whose next {} event is{} after it",
                    r.event,
                    distance(r)
                ));
            }
            if let Some(r) = &e.after {
                text.push_str(&format!(
                    " whose previous {} event is{} before it",
                    r.event,
                    distance(r)
                ));
            }
            text
        }
        Condition::Open(s) => {
            let mut text = format!("in an open {} to {} spell", s.start, s.end);
            if let Some(d) = &s.dataset {
                text.push_str(&format!(" in {d}"));
            }
            if s.for_days > 0 {
                text.push_str(&format!(" open for at least {} days", s.for_days));
            }
            text
        }
    }
}

/// What narrows an event condition beyond its type, in words.
fn narrowed(e: &EventCondition) -> String {
    let mut single = e.clone();
    single.at_least = 1;
    single.which = None;
    let text = describe(&Condition::Has(single));
    text.strip_prefix(&format!("with a {} event", e.event))
        .unwrap_or(&text)
        .to_owned()
}

fn distance(r: &Relative) -> String {
    let mut text = String::new();
    if let Some(d) = r.at_least_days {
        text.push_str(&format!(" at least {d} days"));
    }
    if let Some(d) = r.within_days {
        if !text.is_empty() {
            text.push_str(" and");
        }
        text.push_str(&format!(" within {d} days"));
    }
    text
}
