//! The quarantine report: one CSV per source listing every row that was not
//! sent (and every row sent with a warning), by line number and reason —
//! never the row's content.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::person::Problem;

pub const QUARANTINED: &str = "quarantined";
pub const SENT_WITH_WARNING: &str = "sent-with-warning";

pub struct QuarantineReport {
    path: PathBuf,
    source: String,
    writer: csv::Writer<File>,
}

impl QuarantineReport {
    /// Creates (replacing) `dir/<dataset>.quarantine.csv` for `source`, or,
    /// when `append`ing (an interrupted read resumed, or another source of
    /// the dataset), adds to it.
    pub fn create(dir: &Path, dataset: &str, source: &Path, append: bool) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{dataset}.quarantine.csv"));
        let append = append && path.exists();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&path)?;
        let mut writer = csv::Writer::from_writer(file);
        if !append {
            writer.write_record(["source", "line", "disposition", "field", "problem"])?;
        }
        Ok(Self {
            path,
            source: source.file_name().map_or_else(
                || source.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
            writer,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(
        &mut self,
        line: u64,
        disposition: &str,
        problem: &Problem,
    ) -> std::io::Result<()> {
        self.writer.write_record([
            self.source.as_str(),
            &line.to_string(),
            disposition,
            &problem.field,
            &problem.what,
        ])?;
        Ok(())
    }

    /// Makes everything written so far durable. Called before each spool
    /// checkpoint, so a crash never loses report lines for rows it has
    /// moved past (and rows after the checkpoint are reported on the re-read).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()?;
        self.writer.get_ref().sync_data()
    }

    pub fn finish(mut self) -> std::io::Result<PathBuf> {
        self.writer.flush()?;
        self.writer.get_ref().sync_all()?;
        Ok(self.path)
    }
}
