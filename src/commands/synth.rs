//! `joinery synth`: write synthetic extracts, mapping files and a ground truth.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use joinery_agent::config::SourceConfig;

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Output directory (extracts/, mappings/, national/, ground_truth.csv).
    #[arg(long)]
    out: PathBuf,
    /// Number of children in the population.
    #[arg(long, default_value_t = 2000)]
    children: usize,
    /// Random seed: the same seed gives the same files.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Date the extracts are taken (YYYY-MM-DD; default today).
    #[arg(long, value_parser = parse_date)]
    reference_date: Option<time::Date>,
    /// Share of the children every agency knows (0 to 1) [default: each
    /// agency's own: 0.55 for the council, 0.35 for CAMHS and SALT].
    #[arg(long)]
    reach: Option<f64>,
    /// How messy the records are: `tidy` (the tests' and the demo's three
    /// agencies), or `messy` (four agencies, the errors of real extracts;
    /// the rates are in `src/synth/profile.rs`).
    #[arg(long, value_enum, default_value_t)]
    profile: crate::synth::Profile,
    /// Write only the CSV extracts, mappings, ground truth and opt-out list,
    /// not the national formats (quicker, for very large populations).
    #[arg(long)]
    csv_only: bool,
}

pub fn parse_date(text: &str) -> Result<time::Date, String> {
    time::Date::parse(text, &time::format_description::well_known::Iso8601::DATE)
        .map_err(|_| "expected a date as YYYY-MM-DD".to_owned())
}

impl SynthArgs {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let reference = self
            .reference_date
            .unwrap_or_else(|| time::OffsetDateTime::now_utc().date());
        let output = crate::synth::generate(
            &self.out,
            &crate::synth::Population {
                reach: self.reach,
                profile: self.profile,
                national_formats: !self.csv_only,
                ..crate::synth::Population::tidy(self.children, self.seed, reference)
            },
        )?;
        println!(
            "{} children, {} rows across {} agencies in {}",
            self.children,
            output.rows,
            output.extracts.len(),
            self.out.display()
        );
        for (agency, extract, mapping) in &output.extracts {
            println!(
                "  {} ({}): {} with mapping {}",
                agency.organisation,
                agency.description,
                extract.display(),
                mapping.display()
            );
        }
        if !output.national.is_empty() {
            println!("  the same records in national formats and a database (agent source kinds):");
        }
        for source in &output.national {
            let year = match &source.config {
                SourceConfig::National(n) => n.year.map(|y| format!(", year {y}")),
                _ => None,
            }
            .unwrap_or_default();
            println!(
                "  {}: kind {}, dataset {}{year}: {}",
                source.organisation,
                source.config.kind(),
                source.dataset,
                source.path.display()
            );
        }
        println!("  ground truth: {}", output.ground_truth.display());
        println!(
            "  National Data Opt-out list (give it as an agent's national_data_opt_out): {}",
            output.opt_out.display()
        );
        Ok(ExitCode::SUCCESS)
    }
}
