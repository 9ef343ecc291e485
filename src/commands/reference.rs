//! `joinery reference configuration|indicators|queries`: the configuration
//! reference page (docs/configuration.md), generated from the typed
//! configuration itself — the command-line definitions and the agent's
//! configuration structs — and the indicator library (docs/indicators.md),
//! generated from the built-in library, and the query language
//! (docs/query-language.md), generated from the query's types and the
//! example queries, so none can drift (tests compare the checked-in pages
//! with this output).

use std::process::ExitCode;

use clap::{CommandFactory, Subcommand};
use serde_json::Value;

#[derive(Debug, Subcommand)]
pub enum ReferenceCommand {
    /// Print docs/configuration.md.
    Configuration,
    /// Print docs/indicators.md: the built-in indicators and stratifications.
    Indicators,
    /// Print docs/query-language.md: every construct of a query document,
    /// and the examples in docs/queries/ with what each counts in words.
    Queries,
}

impl ReferenceCommand {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Configuration => print!("{}", configuration()?),
            Self::Indicators => print!("{}", indicators()),
            Self::Queries => print!("{}", queries()),
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The indicator library page.
pub fn indicators() -> String {
    use joinery_gateway::analytics::library::{self, Question};
    use joinery_gateway::analytics::model::AnalystQuery;
    let mut out = String::from(
        "# Indicator library\n\n\
         Generated from `gateway/library/` by `joinery reference indicators`; a test keeps\n\
         this page identical to its output. Use an indicator by name in a query file\n\
         (`indicator: cp-plans-lasting-two-years`) and add `rows`, `columns`, `periods`\n\
         and `reference_date`. \"The year\" is the 12 months to the reference date.\n\
         Joinery counts children: DfE counts some of these per referral, plan or\n\
         placement, so figures can differ from the published ones; each definition\n\
         says where it departs. Every table passes disclosure control.\n",
    );
    for question in [Question::HowMuch, Question::HowWell, Question::BetterOff] {
        out.push_str(&format!("\n## {}\n", question.words()));
        for indicator in library::indicators()
            .iter()
            .filter(|i| i.question == question)
        {
            let explained = AnalystQuery::parse(&format!("indicator: {}", indicator.name))
                .map(|q| joinery_gateway::analytics::explain(&q))
                .unwrap_or_else(|e| e);
            out.push_str(&format!(
                "\n### `{}`: {}\n\n{}\n\n- Follows: {}\n- As a query: {}\n",
                indicator.name, indicator.title, indicator.definition, indicator.source, explained
            ));
            if let Some(better) = indicator.better {
                out.push_str(&format!("- Better: {}\n", better.word()));
            }
        }
    }
    out.push_str("\n## Risk stratifications\n\nName one in a query (`stratification: children-at-risk@1`, or without `@` for the latest version) and break down by `stratum`.\n");
    for s in library::stratifications() {
        out.push_str(&format!(
            "\n### `{}@{}`\n\n| factor | points | who has it |\n| --- | --- | --- |\n",
            s.name, s.version
        ));
        for f in &s.factors {
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                f.name,
                f.points,
                joinery_gateway::analytics::describe(&f.when)
            ));
        }
        let tiers: Vec<String> = s
            .tiers
            .iter()
            .map(|t| format!("{} from {} points", t.name, t.from_points))
            .collect();
        out.push_str(&format!("\nTiers: {}.\n", tiers.join(", ")));
    }
    out
}

/// The example query documents, as `docs/queries/` holds them.
const EXAMPLE_QUERIES: [(&str, &str); 7] = [
    (
        "risk-tiers-by-segment.yaml",
        include_str!("../../docs/queries/risk-tiers-by-segment.yaml"),
    ),
    (
        "referrals-by-overlap.yaml",
        include_str!("../../docs/queries/referrals-by-overlap.yaml"),
    ),
    (
        "repeat-cp-plans.yaml",
        include_str!("../../docs/queries/repeat-cp-plans.yaml"),
    ),
    (
        "cp-plan-after-camhs-referral.yaml",
        include_str!("../../docs/queries/cp-plan-after-camhs-referral.yaml"),
    ),
    (
        "camhs-seen-within-18-weeks.yaml",
        include_str!("../../docs/queries/camhs-seen-within-18-weeks.yaml"),
    ),
    (
        "camhs-median-wait.yaml",
        include_str!("../../docs/queries/camhs-median-wait.yaml"),
    ),
    (
        "lac-health-assessments.yaml",
        include_str!("../../docs/queries/lac-health-assessments.yaml"),
    ),
];

/// The query language page: the document's keys, every construct (from
/// the query's JSON Schema, so from the types that parse it) and the
/// examples, each explained.
pub fn queries() -> String {
    use joinery_gateway::analytics::model::AnalystQuery;
    let schema = schemars::schema_for!(AnalystQuery).to_value();
    let mut out = String::from(
        "# Query language\n\n\
         Generated from the query's types by `joinery reference queries`; a test keeps\n\
         this page identical to its output. A query document is YAML (or JSON) and goes\n\
         unchanged to `joinery query run|explain|extract FILE`, gRPC and `POST /v1/query`.\n\
         Its JSON Schema is [queries/query.schema.json](queries/query.schema.json)\n\
         (`joinery query schema`): with an editor's YAML support, a first line\n\
         `# yaml-language-server: $schema=query.schema.json` completes and checks keys\n\
         as you type. Every answer goes through disclosure control\n\
         ([disclosure.md](disclosure.md)); in tables `*` is a suppressed value and `-`\n\
         one that does not apply (a median with no children to take it from). A query\n\
         that uses an event type, dataset, attribute or organisation no agreement in\n\
         force shares is answered with a warning naming it: a condition on it holds for\n\
         no child. Every answer says the data generation it was computed from, and\n\
         warns when newer data has arrived and is still loading. `joinery console`\n\
         builds these documents in a web page ([console.md](console.md)).\n\
         \n## The document\n\n",
    );
    out.push_str(&schema_table(&schema, &schema, Types::Named));
    out.push_str("\n## Constructs\n");
    if let Some(definitions) = schema.get("$defs").and_then(Value::as_object) {
        for (name, definition) in definitions {
            out.push_str(&format!("\n### `{name}`\n\n"));
            if let Some(about) = definition.get("description").and_then(Value::as_str) {
                out.push_str(&format!("{}\n\n", about.replace('\n', " ")));
            }
            let forms = definition
                .get("oneOf")
                .or_else(|| definition.get("anyOf"))
                .and_then(Value::as_array);
            if let Some(forms) = forms {
                out.push_str("One of:\n\n");
                for form in forms {
                    out.push_str(&format!("- {}\n", form_in_words(&schema, form)));
                }
            } else if definition.get("properties").is_some() {
                out.push_str(&schema_table(&schema, definition, Types::Named));
            } else {
                out.push_str(&format!(
                    "One of: {}.\n",
                    kind_of(&schema, definition, Types::Named)
                ));
            }
        }
    }
    out.push_str("\n## Examples\n");
    for (file, text) in EXAMPLE_QUERIES {
        let explained = AnalystQuery::parse(text)
            .map(|q| joinery_gateway::analytics::explain(&q))
            .unwrap_or_else(|e| format!("(does not parse: {e})"));
        out.push_str(&format!(
            "\n### [`{file}`](queries/{file})\n\n```yaml\n{}\n```\n\nIn words: {}\n",
            text.trim_end(),
            explained.trim_end()
        ));
    }
    out
}

/// One form of a construct: its key or value, and what it means.
fn form_in_words(root: &Value, form: &Value) -> String {
    let about = form
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or("")
        .replace('\n', " ");
    let written = match form.get("properties").and_then(Value::as_object) {
        Some(properties) => properties
            .iter()
            .map(|(key, value)| {
                format!("`{{ {key}: … }}` ({})", kind_of(root, value, Types::Named))
            })
            .collect::<Vec<_>>()
            .join(", "),
        None => kind_of(root, form, Types::Named),
    };
    match about.is_empty() {
        true => written,
        false => format!("{written}: {about}"),
    }
}

/// The whole page.
pub fn configuration() -> anyhow::Result<String> {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the code by `joinery reference configuration`; a test keeps this\n\
         page identical to its output. Annotated examples: `deploy/examples/agent.yaml`,\n\
         `deploy/examples/mapping.yaml`, `deploy/systemd/gateway.env`.\n",
    );
    let cli = crate::cli::Cli::command();
    for path in [
        ["gateway", "serve"],
        ["gateway", "retention"],
        ["keyholder", "serve"],
        ["agent", "run"],
    ] {
        let Some(command) = cli
            .find_subcommand(path[0])
            .and_then(|c| c.find_subcommand(path[1]))
        else {
            continue;
        };
        out.push_str(&format!("\n## `joinery {} {}`\n\n", path[0], path[1]));
        if let Some(about) = command.get_about() {
            out.push_str(&format!("{about}\n\n"));
        }
        out.push_str("| flag | environment | default | meaning |\n| --- | --- | --- | --- |\n");
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let env = arg
                .get_env()
                .map_or(String::new(), |e| format!("`{}`", e.to_string_lossy()));
            let default = arg
                .get_default_values()
                .iter()
                .map(|v| format!("`{}`", v.to_string_lossy()))
                .collect::<Vec<_>>()
                .join(", ");
            let help = arg
                .get_long_help()
                .or(arg.get_help())
                .map_or(String::new(), |h| h.to_string().replace('\n', " "));
            out.push_str(&format!(
                "| `--{long}` | {env} | {default} | {} |\n",
                cell(&help)
            ));
        }
    }
    out.push_str("\n## Agent configuration file (`agent.yaml`)\n\n");
    let agent = schemars::schema_for!(joinery_agent::AgentConfig).to_value();
    out.push_str(&schema_table(&agent, &agent, Types::Json));
    out.push_str("\n## Mapping file\n\n");
    let mapping = schemars::schema_for!(joinery_agent::mapping::Mapping).to_value();
    out.push_str(&schema_table(&mapping, &mapping, Types::Json));
    out.push_str(&national_formats()?);
    Ok(out)
}

/// The built-in national formats, from their definitions in
/// `agent/formats/`.
fn national_formats() -> Result<String, joinery_agent::format::RegistryError> {
    let mut out = String::from(
        "\n## National formats\n\n\
         Built into the agent from `agent/formats/`; an agency adds its own in the\n\
         directory named by `formats` (same layout). A source names one by `kind`.\n\n\
         | kind | what | collection year | tables (standard file name) |\n\
         | --- | --- | --- | --- |\n",
    );
    let registry = joinery_agent::format::Registry::built_in()?;
    for format in registry.formats() {
        let definition = &format.definition;
        let tables: Vec<String> = definition
            .tables
            .iter()
            .map(|t| {
                let optional = if t.optional { ", optional" } else { "" };
                match &t.file {
                    Some(file) => format!("{} (`{file}`{optional})", t.table),
                    None => format!("{}{optional}", t.table),
                }
            })
            .collect();
        let what = match &definition.record {
            Some(record) => format!(
                "{}: one XML file, a `{record}` element per person",
                definition.title
            ),
            None => definition.title.clone(),
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            definition.format,
            cell(&what),
            if definition.yearly {
                "required"
            } else {
                "none"
            },
            cell(&tables.join(", "))
        ));
    }
    Ok(out)
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// How a page names a key's type where it is a named construct: by the
/// construct's name (a page that lists them), or as its JSON type.
#[derive(Clone, Copy, PartialEq)]
enum Types {
    Json,
    Named,
}

/// A table of every key of `node` (a JSON Schema `root`, or one of its
/// definitions): dotted path, type, whether it is required (or its
/// default), and its description.
fn schema_table(root: &Value, node: &Value, types: Types) -> String {
    let mut walked = Vec::new();
    walk(root, node, "", types, &mut walked);
    // A key several variants share (each source kind's `path`) is one row,
    // listing what differs.
    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    for (key, kind, need, about) in walked {
        match rows.iter_mut().find(|r| r.0 == key) {
            Some(row) => {
                for (have, new) in [(&mut row.1, kind), (&mut row.3, about)] {
                    if !new.is_empty() && !have.split(" / ").any(|h| h == new) {
                        have.push_str(" / ");
                        have.push_str(&new);
                    }
                }
            }
            None => rows.push((key, kind, need, about)),
        }
    }
    let mut out =
        String::from("| key | type | required / default | meaning |\n| --- | --- | --- | --- |\n");
    for (key, kind, need, about) in rows {
        out.push_str(&format!(
            "| `{key}` | {kind} | {need} | {} |\n",
            cell(&about)
        ));
    }
    out
}

fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => reference
            .strip_prefix("#/$defs/")
            .and_then(|name| root.get("$defs")?.get(name))
            .unwrap_or(node),
        None => node,
    }
}

/// A node's type in words: a named construct by its name, a choice by its
/// forms, else its JSON type.
fn kind_of(root: &Value, node: &Value, types: Types) -> String {
    if types == Types::Named {
        if let Some(name) = node
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/$defs/"))
        {
            return format!("`{name}`");
        }
        if let Some(forms) = node.get("anyOf").and_then(Value::as_array) {
            return forms
                .iter()
                .filter(|f| f.get("type").and_then(Value::as_str) != Some("null"))
                .map(|f| kind_of(root, f, types))
                .collect::<Vec<_>>()
                .join(" or ");
        }
    }
    let node = resolve(root, node);
    if let Some(value) = node.get("const").and_then(Value::as_str) {
        return format!("`{value}`");
    }
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .filter_map(Value::as_str)
            .map(|v| format!("`{v}`"))
            .collect::<Vec<_>>()
            .join(", ");
    }
    if let Some(variants) = node.get("oneOf").and_then(Value::as_array) {
        let names: Vec<String> = variants
            .iter()
            .filter_map(|v| {
                let value = v.get("const").or_else(|| v.get("enum")?.get(0));
                match value.and_then(Value::as_str) {
                    Some(value) => Some(format!("`{value}`")),
                    None => v
                        .get("properties")?
                        .as_object()?
                        .keys()
                        .next()
                        .map(|key| format!("`{{ {key}: … }}`")),
                }
            })
            .collect();
        if !names.is_empty() {
            return names.join(", ");
        }
        return "one of several forms (see below)".to_owned();
    }
    match node.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ if node.get("anyOf").is_some() => "string or object".to_owned(),
        _ => "object".to_owned(),
    }
}

fn walk(
    root: &Value,
    node: &Value,
    prefix: &str,
    types: Types,
    rows: &mut Vec<(String, String, String, String)>,
) {
    let node = resolve(root, node);
    let Some(properties) = node.get("properties").and_then(Value::as_object) else {
        return;
    };
    let required: Vec<&str> = node
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, property) in properties {
        let key = format!("{prefix}{name}");
        let target = resolve(root, property);
        let about = property
            .get("description")
            .or_else(|| target.get("description"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .replace('\n', " ");
        let need = if required.contains(&name.as_str()) {
            "required".to_owned()
        } else {
            property
                .get("default")
                .map_or("optional".to_owned(), |d| format!("default `{d}`"))
        };
        rows.push((key.clone(), kind_of(root, property, types), need, about));
        walk(root, target, &format!("{key}."), types, rows);
        if let Some(items) = target.get("items") {
            let items = resolve(root, items);
            for variant in items
                .get("oneOf")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                walk(root, variant, &format!("{key}[]."), types, rows);
            }
            walk(root, items, &format!("{key}[]."), types, rows);
        }
    }
}
