//! `joinery policy`: tools for information-governance leads.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use joinery_policies::explain::Format;
use joinery_policies::{Agreement, SignedAgreement, signing};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check an agreement: every error with line and column and how to fix it,
    /// and warnings for risky choices. Exit status 1 when there are errors.
    Check { file: PathBuf },
    /// Explain an agreement in plain English, for a board paper.
    Explain {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        format: ExplainFormat,
    },
    /// What a new version changes, field by field; lines marked WIDENS give access
    /// to more or finer data. Exit status 2 when anything widens.
    Diff { old: PathBuf, new: PathBuf },
    /// Create an Ed25519 signing key for a signatory (mode 0600) and print its public key.
    Keygen {
        /// File to create (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign an agreement as the signatory whose key this is (writes FILE.sig).
    Sign {
        file: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// Check an agreement's signatures: in force only when every listed signatory has signed.
    Verify { file: PathBuf },
    /// Print the JSON Schema of agreement files (for editors).
    Schema,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExplainFormat {
    Text,
    Markdown,
    Html,
}

fn read(file: &PathBuf) -> anyhow::Result<(Vec<u8>, String)> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Ok((bytes, text))
}

/// Parses and checks, failing with every error (as `check` prints them).
fn load(file: &PathBuf) -> anyhow::Result<(Vec<u8>, Agreement)> {
    let (bytes, text) = read(file)?;
    let checked = joinery_policies::check::check(&text, time::OffsetDateTime::now_utc());
    match checked.agreement {
        Some(agreement) if checked.is_valid() => Ok((bytes, agreement)),
        _ => {
            let report: Vec<String> = checked
                .errors()
                .map(|d| format!("{}:{d}", file.display()))
                .collect();
            anyhow::bail!(
                "{} is not a valid agreement:\n{}",
                file.display(),
                report.join("\n")
            )
        }
    }
}

impl PolicyCommand {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Check { file } => {
                let (_, text) = read(&file)?;
                let checked =
                    joinery_policies::check::check(&text, time::OffsetDateTime::now_utc());
                for diagnostic in &checked.diagnostics {
                    println!("{}:{diagnostic}", file.display());
                }
                let (errors, warnings) = (checked.errors().count(), checked.warnings().count());
                let count =
                    |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
                println!(
                    "{}: {}, {}",
                    file.display(),
                    count(errors, "error"),
                    count(warnings, "warning")
                );
                return Ok(if errors == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            Self::Explain { file, format } => {
                let (_, agreement) = load(&file)?;
                let format = match format {
                    ExplainFormat::Text => Format::Text,
                    ExplainFormat::Markdown => Format::Markdown,
                    ExplainFormat::Html => Format::Html,
                };
                print!("{}", joinery_policies::explain::explain(&agreement, format));
            }
            Self::Diff { old, new } => {
                let (_, before) = load(&old)?;
                let (_, after) = load(&new)?;
                let changes = joinery_policies::diff::diff(&before, &after);
                for change in &changes {
                    println!("{change}");
                }
                let widening = changes.iter().filter(|c| c.widens).count();
                println!("{} changes, {widening} widen access", changes.len());
                if widening > 0 {
                    return Ok(ExitCode::from(2));
                }
            }
            Self::Keygen { out } => {
                let public = signing::keygen(&out)?;
                println!(
                    "signing key written to {} (mode 0600); keep it private",
                    out.display()
                );
                println!("public key (put it under the signatory in the agreement):\n{public}");
            }
            Self::Sign { file, key } => {
                let (bytes, agreement) = load(&file)?;
                let name = signing::sign(&file, &agreement, &bytes, &key)?;
                println!(
                    "signed {} as {name}; signatures in {}",
                    file.display(),
                    signing::signature_path(&file).display()
                );
                let verification = signing::verify(
                    &agreement,
                    &bytes,
                    &signing::read_signatures(&signing::signature_path(&file))?,
                );
                if !verification.missing.is_empty() {
                    println!("still to sign: {}", verification.missing.join(", "));
                }
            }
            Self::Verify { file } => {
                let signed = SignedAgreement::load(&file)?;
                println!(
                    "{} version {}: signed by all {} signatories; digest {}",
                    signed.agreement.id,
                    signed.agreement.version,
                    signed.agreement.signatories.len(),
                    signed.digest
                );
                match signed.in_force_at(time::OffsetDateTime::now_utc()) {
                    Ok(()) => println!("in force now, until {}", signed.agreement.expires),
                    Err(e) => {
                        println!("{e}");
                        return Ok(ExitCode::FAILURE);
                    }
                }
            }
            Self::Schema => print!("{}", joinery_policies::schema()),
        }
        Ok(ExitCode::SUCCESS)
    }
}
