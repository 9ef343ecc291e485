//! `joinery policy explain`: an agreement in plain English for a board paper,
//! as terminal text, Markdown or HTML: who sends what, how each field is
//! protected, who can see what, and until when.

use crate::model::{Access, Agreement, OptOut, PartyRole, Transform};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Markdown,
    Html,
}

enum Block {
    Heading(u8, String),
    Paragraph(String),
    List(Vec<String>),
    Table(Vec<&'static str>, Vec<Vec<String>>),
}

/// A field or event name as words ("date_of_birth": "date of birth"); the
/// agreement's own spelling is in its YAML beside this.
fn words(name: &str) -> String {
    name.replace('_', " ")
}

/// A retention period in the unit people use: whole years or months where
/// it is one (365 days a year, 30 a month), else days.
fn period(days: u32) -> String {
    let unit = |n: u32, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
    if days > 0 && days.is_multiple_of(365) {
        format!("{} ({days} days)", unit(days / 365, "year"))
    } else if days > 0 && days.is_multiple_of(30) && days < 365 {
        format!("{} ({days} days)", unit(days / 30, "month"))
    } else {
        unit(days, "day")
    }
}

/// How a transform protects a field, in plain English, with what analysis
/// loses by it where that is more than the field's detail.
pub fn describe(field: &str, transform: &Transform) -> String {
    let protection = protection(field, transform);
    match analytic_cost(field, transform) {
        Some(cost) => format!("{protection}; {cost}"),
        None => protection,
    }
}

/// What analysis loses when `field` is sent so.
fn analytic_cost(field: &str, transform: &Transform) -> Option<String> {
    match (field, transform) {
        ("date_of_birth", Transform::Month | Transform::Quarter | Transform::Year) => {
            let period = match transform {
                Transform::Month => "month",
                Transform::Quarter => "quarter",
                _ => "year",
            };
            let share = crate::transform::age_overstated(transform)? * 100.0;
            Some(format!(
                "ages are counted from the first day of the birth {period}, so on any day about {share:.0}% of children are counted a year older than they are"
            ))
        }
        ("date_of_birth", Transform::AgeBand(_)) => Some(
            "ages are known only as these bands on the day of extraction, not on any other reference date".to_owned(),
        ),
        ("date_of_birth", Transform::Drop) => {
            Some("no ages: analyses by age leave these children out".to_owned())
        }
        ("postcode", Transform::Area) => Some(
            "places are known only to the area, a city and its surroundings: nothing by district or finer".to_owned(),
        ),
        ("postcode", Transform::Drop) => {
            Some("no places: analyses by place leave these children out".to_owned())
        }
        _ => None,
    }
}

fn protection(field: &str, transform: &Transform) -> String {
    match transform {
        Transform::Keep => "sent as recorded".to_owned(),
        Transform::Drop => "never sent".to_owned(),
        Transform::Pseudonymise => {
            "replaced by a keyed pseudonym; the value itself never leaves the agency".to_owned()
        }
        Transform::Month if field == "date_of_birth" => {
            "reduced to month and year of birth".to_owned()
        }
        Transform::Month => "reduced to month and year".to_owned(),
        Transform::Quarter if field == "date_of_birth" => {
            "reduced to quarter and year of birth (e.g. 2015-Q2)".to_owned()
        }
        Transform::Quarter => "reduced to quarter and year".to_owned(),
        Transform::Year => "reduced to the year".to_owned(),
        Transform::AgeBand(bands) => format!(
            "replaced by an age band ({})",
            bands
                .iter()
                .map(|b| crate::transform::age_band_label(bands, *b))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Transform::District => "reduced to the postcode district (e.g. LS6)".to_owned(),
        Transform::Sector => "reduced to the postcode sector (e.g. LS6 2)".to_owned(),
        Transform::Area => "reduced to the postcode area (e.g. LS)".to_owned(),
        Transform::CodeMap(map) => format!(
            "recoded to {} permitted values; any other value is not sent",
            map.len()
        ),
        Transform::TopCode(max) => format!("sent, with values above {max} sent as {max}"),
    }
}

fn blocks(a: &Agreement) -> Vec<Block> {
    let mut out = vec![
        Block::Heading(1, format!("{} (agreement {} version {})", a.title, a.id, a.version)),
        Block::Paragraph(a.purpose.trim().to_owned()),
        Block::Paragraph(format!(
            "In force from {} until {}; to be reviewed by {}.",
            a.valid_from, a.expires, a.review_by
        )),
        Block::Heading(2, "Who takes part".to_owned()),
        Block::Table(
            vec!["Organisation", "Name", "Role", "Sends"],
            a.parties
                .iter()
                .map(|p| {
                    vec![
                        p.organisation.clone(),
                        p.name.clone(),
                        match p.role {
                            PartyRole::Controller => "controller",
                            PartyRole::JointController => "joint controller",
                            PartyRole::Processor => "processor",
                        }
                        .to_owned(),
                        if p.sends.is_empty() { "nothing".to_owned() } else { p.sends.join(", ") },
                    ]
                })
                .collect(),
        ),
        Block::Heading(2, "Legal basis".to_owned()),
        Block::List(vec![
            format!("UK GDPR Article 6: {}", serde_label(&a.lawful_basis.article_6)),
            format!("UK GDPR Article 9: {}", serde_label(&a.lawful_basis.article_9)),
            format!("DPA 2018 Schedule 1: {}", a.lawful_basis.dpa_2018_schedule_1),
            format!("Common-law duty of confidentiality: {}", a.lawful_basis.common_law_duty),
            match a.national_data_opt_out {
                OptOut::Applies => "The National Data Opt-out applies: records of people who opted out are withheld before anything is sent.".to_owned(),
                OptOut::DoesNotApply => "The National Data Opt-out does not apply to this sharing.".to_owned(),
            },
        ]),
        Block::Heading(2, "What is sent, and how it is protected".to_owned()),
    ];
    for (name, dataset) in &a.datasets {
        let senders: Vec<&str> = a
            .parties
            .iter()
            .filter(|p| p.sends.contains(name))
            .map(|p| p.organisation.as_str())
            .collect();
        out.push(Block::Heading(3, format!("Dataset {name}")));
        let mut intro = format!(
            "Sent by {}; kept for {} after it arrives.",
            if senders.is_empty() {
                "no one".to_owned()
            } else {
                senders.join(", ")
            },
            period(dataset.retention_days)
        );
        if !dataset.description.is_empty() {
            intro = format!("{} {intro}", dataset.description.trim());
        }
        out.push(Block::Paragraph(intro));
        out.push(Block::Table(
            vec!["Field", "How it is protected"],
            dataset
                .fields
                .iter()
                .map(|(f, t)| vec![words(f), describe(f, t)])
                .collect(),
        ));
        if !dataset.events.is_empty() {
            out.push(Block::Table(
                vec!["Event", "Date", "Details sent"],
                dataset
                    .events
                    .iter()
                    .map(|(e, rule)| {
                        vec![
                            words(e),
                            describe("date", &rule.date),
                            if rule.attributes.is_empty() {
                                "none".to_owned()
                            } else {
                                rule.attributes
                                    .iter()
                                    .map(|(k, t)| format!("{} ({})", words(k), describe(k, t)))
                                    .collect::<Vec<_>>()
                                    .join("; ")
                            },
                        ]
                    })
                    .collect(),
            ));
        }
        out.push(Block::Paragraph(
            "Any field not listed is never sent.".to_owned(),
        ));
    }
    if !a.linkage.fields.is_empty() {
        out.push(Block::Heading(2, "Linking records".to_owned()));
        out.push(Block::Paragraph(format!(
            "To recognise the same child across agencies, {} are turned into keyed encodings inside each agency ({} v{}); the values themselves are never sent.",
            a.linkage
                .fields
                .iter()
                .map(|f| words(f))
                .collect::<Vec<_>>()
                .join(", "),
            a.linkage.encoding.scheme,
            a.linkage.encoding.version
        )));
        for e in &a.linkage.encoding.fields {
            out.push(Block::Paragraph(format!(
                "{} is encoded as {} in a {}-bit filter ({} bits set per token{}).",
                e.field,
                match e.tokens {
                    joinery_linkage::params::Tokens::Bigrams => "pairs of characters",
                    joinery_linkage::params::Tokens::PaddedBigrams =>
                        "pairs of characters, the first letter marked",
                    joinery_linkage::params::Tokens::DateParts => "date parts",
                    joinery_linkage::params::Tokens::DateAnyOrder => {
                        "year, and day and month in either order"
                    }
                    joinery_linkage::params::Tokens::Whole => "one whole value",
                },
                e.bits,
                e.hashes,
                e.salt
                    .as_ref()
                    .map_or(String::new(), |s| format!(", salted with {}", s.field))
            )));
        }
    }
    let keyholders = &a.linkage.nhs_number_keyholders;
    if !keyholders.is_empty() {
        out.push(Block::Paragraph(format!(
            "NHS numbers are pseudonymised through {} independent keyholder{} ({}), who see them only blinded; no agency holds a key that computes a pseudonym, so reversing one would need {} as well as the gateway's operator.",
            keyholders.len(),
            if keyholders.len() == 1 { "" } else { "s" },
            keyholders.join(", "),
            if keyholders.len() == 1 {
                "the keyholder's collusion".to_owned()
            } else {
                "every keyholder's collusion".to_owned()
            }
        )));
    }
    out.push(Block::Heading(2, "Who can see what".to_owned()));
    out.push(Block::Table(
        vec!["Role", "Access", "Description", "Held by"],
        a.roles
            .iter()
            .map(|(name, role)| {
                vec![
                    name.clone(),
                    match role.access {
                        Access::Aggregates => "disclosure-controlled tables only".to_owned(),
                        Access::RowLevel => {
                            "row-level records with project-specific pseudonyms".to_owned()
                        }
                    },
                    role.description.clone(),
                    role.analysts.join(", "),
                ]
            })
            .collect(),
    ));
    out.push(Block::Heading(2, "What analysts can learn".to_owned()));
    out.extend(disclosure(&a.outputs).into_iter().map(Block::Paragraph));
    if a.outputs.reidentify_for_direct_care {
        out.push(Block::Paragraph(
            "For direct care, each party may learn which of its own records belong to a cohort, which can rest on what other parties hold (for instance that a child is known to another service); no party receives another's records.".to_owned(),
        ));
    }
    out.push(Block::Heading(2, "The Five Safes".to_owned()));
    let fs = &a.five_safes;
    out.push(Block::List(vec![
        format!("Safe projects: {}", fs.safe_projects.trim()),
        format!("Safe people: {}", fs.safe_people.trim()),
        format!("Safe settings: {}", fs.safe_settings.trim()),
        format!("Safe data: {}", fs.safe_data.trim()),
        format!("Safe outputs: {}", fs.safe_outputs.trim()),
    ]));
    out.push(Block::Heading(2, "Signatories".to_owned()));
    out.push(Block::Table(
        vec!["Name", "Role", "For"],
        a.signatories
            .iter()
            .map(|s| vec![s.name.clone(), s.role.clone(), s.organisation.clone()])
            .collect(),
    ));
    out
}

fn serde_label<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The agreement rendered in `format`.
pub fn explain(a: &Agreement, format: Format) -> String {
    let blocks = blocks(a);
    match format {
        Format::Text => render_text(&blocks),
        Format::Markdown => render_markdown(&blocks),
        Format::Html => render_html(&blocks, &a.title),
    }
}

fn render_text(blocks: &[Block]) -> String {
    let mut out = String::new();
    for block in blocks {
        match block {
            Block::Heading(level, text) => {
                let rule = if *level == 1 { '=' } else { '-' };
                out.push_str(&format!(
                    "\n{text}\n{}\n",
                    rule.to_string().repeat(text.chars().count())
                ));
            }
            Block::Paragraph(text) => out.push_str(&format!("{text}\n\n")),
            Block::List(items) => {
                for item in items {
                    out.push_str(&format!("  * {item}\n"));
                }
                out.push('\n');
            }
            Block::Table(headers, rows) => {
                let widths: Vec<usize> = (0..headers.len())
                    .map(|i| {
                        rows.iter()
                            .map(|r| r[i].chars().count())
                            .chain([headers[i].len()])
                            .max()
                            .unwrap_or(0)
                            .min(60)
                    })
                    .collect();
                let line = |cells: Vec<&str>| {
                    cells
                        .iter()
                        .zip(&widths)
                        .map(|(c, w)| format!("{c:<w$}"))
                        .collect::<Vec<_>>()
                        .join("  ")
                        .trim_end()
                        .to_owned()
                };
                out.push_str(&format!("  {}\n", line(headers.clone())));
                for row in rows {
                    out.push_str(&format!(
                        "  {}\n",
                        line(row.iter().map(String::as_str).collect())
                    ));
                }
                out.push('\n');
            }
        }
    }
    out
}

fn render_markdown(blocks: &[Block]) -> String {
    let mut out = String::new();
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    for block in blocks {
        match block {
            Block::Heading(level, text) => {
                out.push_str(&format!("{} {text}\n\n", "#".repeat(usize::from(*level))))
            }
            Block::Paragraph(text) => out.push_str(&format!("{text}\n\n")),
            Block::List(items) => {
                for item in items {
                    out.push_str(&format!("- {item}\n"));
                }
                out.push('\n');
            }
            Block::Table(headers, rows) => {
                out.push_str(&format!("| {} |\n", headers.join(" | ")));
                out.push_str(&format!("|{}\n", " --- |".repeat(headers.len())));
                for row in rows {
                    out.push_str(&format!(
                        "| {} |\n",
                        row.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | ")
                    ));
                }
                out.push('\n');
            }
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn render_html(blocks: &[Block], title: &str) -> String {
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>{}</title>\n<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:.3em .6em;text-align:left}}</style></head>\n<body>\n",
        escape(title)
    );
    for block in blocks {
        match block {
            Block::Heading(level, text) => {
                out.push_str(&format!("<h{level}>{}</h{level}>\n", escape(text)))
            }
            Block::Paragraph(text) => out.push_str(&format!("<p>{}</p>\n", escape(text))),
            Block::List(items) => {
                out.push_str("<ul>\n");
                for item in items {
                    out.push_str(&format!("<li>{}</li>\n", escape(item)));
                }
                out.push_str("</ul>\n");
            }
            Block::Table(headers, rows) => {
                out.push_str("<table>\n<tr>");
                for h in headers {
                    out.push_str(&format!("<th>{}</th>", escape(h)));
                }
                out.push_str("</tr>\n");
                for row in rows {
                    out.push_str("<tr>");
                    for c in row {
                        out.push_str(&format!("<td>{}</td>", escape(c)));
                    }
                    out.push_str("</tr>\n");
                }
                out.push_str("</table>\n");
            }
        }
    }
    out.push_str("</body>\n</html>\n");
    out
}

/// What the output rules protect and how, in words an IG lead can sign.
fn disclosure(o: &crate::model::OutputRules) -> Vec<String> {
    let p = &o.privacy;
    let tables = |touches: f64| (p.rho() / p.cost(touches)).floor();
    vec![
        "Analysts with aggregate access see only tables of counts, percentages and medians; \
         every number in them is protected as follows, and no answer or refusal depends on \
         whether any one child is in the data."
            .to_owned(),
        format!(
            "Noise: every count, numerator, denominator and median is computed from the true \
             data plus random noise (discrete Gaussian, standard deviation {sd} for a count of \
             children, larger for counts of events). Percentages are worked out from the noisy \
             numerator and denominator, never from true counts; a median comes from noisy counts \
             of children either side of it, and is shown only where about {median_minimum} \
             children or more contribute.",
            sd = p.noise_sd,
            median_minimum = 16.0 * p.noise_sd
        ),
        format!(
            "Budget: all releases under this agreement together are differentially private with \
             epsilon {} and delta {:e}: whatever an analyst, or all analysts together, ask, what \
             they see changes by at most that much whether or not any one child's records are \
             included. Each new table spends part of the budget (about {} two-way tables of \
             children, or {} one-way tables, in all); asking the same question of the same \
             data again returns the first answer and spends nothing; when the budget is spent, \
             new questions are refused until the parties sign a version with more.",
            p.epsilon,
            p.delta,
            tables(4.0),
            tables(2.0)
        ),
        format!(
            "Small numbers: a noisy count below {} is shown as suppressed, zeros included (a \
             zero is never told apart from a small count); {}{}. A percentage or median is \
             suppressed with its numerator, denominator or contributors.",
            o.minimum_cell_count,
            o.rounding.in_words(),
            if o.secondary_suppression {
                ", and further cells are suppressed so that no hidden count can be estimated \
                 from totals"
            } else {
                ""
            }
        ),
        format!(
            "Magnitudes: where a cell adds up events, each child counts for at most {} events, \
             and a cell is suppressed when its {} largest contributors hold more than {}% of it \
             (dominance) or when the rest is less than {}% of the largest (p% rule).",
            crate::model::EVENTS_PER_CHILD,
            o.dominance.n,
            o.dominance.k,
            o.p_percent
        ),
        format!(
            "Categories: a breakdown by a recorded value (an ethnicity code, a combination of \
             agencies) lists a value only when, with noise, well over {} children in the whole \
             population have it; the rest are counted together as \"other\", so no label can \
             point at one child.",
            o.minimum_cell_count
        ),
        "Deliveries: how many records each agency sent is shown only to that agency.".to_owned(),
    ]
}
