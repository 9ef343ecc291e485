//! How a run shows its progress through each source: a bar on a terminal,
//! a log line at a steady interval where nobody watches a terminal
//! (systemd's journal, a pipe, a scheduler's log), or nothing. Lines name
//! the source and count rows and bytes, never their content.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How the run reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A progress bar on the terminal.
    Bar,
    /// A log line at most this often while a source is read, and one when
    /// it is done.
    Lines(Duration),
    Quiet,
}

/// How often [`Progress::Lines`] logs unless told otherwise.
pub const LINE_EVERY: Duration = Duration::from_secs(10);

/// One source's progress, as the run asked it shown.
pub(crate) struct SourceProgress {
    bar: ProgressBar,
    lines: Option<Lines>,
}

struct Lines {
    source: String,
    every: Duration,
    total_bytes: u64,
    started: Instant,
    last: Instant,
}

impl SourceProgress {
    /// For a source called `source` of `total_bytes` bytes.
    pub(crate) fn start(progress: Progress, source: String, total_bytes: u64) -> Self {
        let bar = match progress {
            Progress::Bar => ProgressBar::new(total_bytes).with_style(
                ProgressStyle::with_template(
                    "{msg} {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            Progress::Lines(_) | Progress::Quiet => ProgressBar::hidden(),
        };
        bar.set_message(source.clone());
        let now = Instant::now();
        let lines = match progress {
            Progress::Lines(every) => Some(Lines {
                source,
                every,
                total_bytes,
                started: now,
                last: now,
            }),
            Progress::Bar | Progress::Quiet => None,
        };
        Self { bar, lines }
    }

    /// `rows` read so far, `bytes` of the source's bytes.
    pub(crate) fn update(&mut self, rows: u64, bytes: u64) {
        self.bar.set_position(bytes);
        if let Some(lines) = &mut self.lines
            && lines.last.elapsed() >= lines.every
        {
            lines.last = Instant::now();
            let seconds = lines.started.elapsed().as_secs_f64().max(1e-3);
            let share = bytes as f64 / (lines.total_bytes as f64).max(1.0);
            let left = (seconds / share.max(1e-9) - seconds).max(0.0);
            tracing::info!(
                source = %lines.source,
                rows,
                percent = format_args!("{:.0}", 100.0 * share.min(1.0)),
                rows_per_second = format_args!("{:.0}", rows as f64 / seconds),
                seconds_left = format_args!("{left:.0}"),
                "reading"
            );
        }
    }

    /// The source is read (or reading stopped) after `rows` rows.
    pub(crate) fn finish(self, rows: u64) {
        self.bar.finish_and_clear();
        if let Some(lines) = self.lines {
            let seconds = lines.started.elapsed().as_secs_f64().max(1e-3);
            tracing::info!(
                source = %lines.source,
                rows,
                seconds = format_args!("{seconds:.1}"),
                rows_per_second = format_args!("{:.0}", rows as f64 / seconds),
                "read"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A log sink the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log sink").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The log lines `show` writes with `progress`.
    fn logged(progress: Progress, show: impl FnOnce(Progress)) -> Vec<String> {
        let sink = Captured::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || show(progress));
        let text = String::from_utf8(sink.0.lock().expect("log sink").clone()).expect("utf-8");
        text.lines().map(str::to_owned).collect()
    }

    fn read_a_source(progress: Progress) {
        let mut shown = SourceProgress::start(progress, "cin-census".into(), 4_000);
        for step in 1..=3u64 {
            shown.update(step * 100, step * 1_000);
        }
        shown.finish(400);
    }

    #[test]
    fn off_a_terminal_each_interval_logs_rows_share_rate_and_time_left() {
        let lines = logged(Progress::Lines(Duration::ZERO), read_a_source);
        let reading: Vec<_> = lines.iter().filter(|l| l.contains(" reading ")).collect();
        assert_eq!(
            reading.len(),
            3,
            "one line per update past the interval: {lines:#?}"
        );
        for (line, (rows, percent)) in reading.iter().zip([(100, 25), (200, 50), (300, 75)]) {
            assert!(line.contains("source=cin-census"), "{line}");
            assert!(line.contains(&format!("rows={rows} ")), "{line}");
            assert!(line.contains(&format!("percent={percent} ")), "{line}");
            assert!(
                line.contains("rows_per_second=") && line.contains("seconds_left="),
                "{line}"
            );
        }
        let last = lines.last().expect("a closing line");
        assert!(
            last.contains(" read ") && last.contains("rows=400 "),
            "{last}"
        );
    }

    #[test]
    fn lines_come_no_more_often_than_asked_and_a_bar_or_quiet_run_logs_nothing() {
        let lines = logged(Progress::Lines(Duration::from_secs(3_600)), read_a_source);
        assert_eq!(
            lines.len(),
            1,
            "only the closing line inside the interval: {lines:#?}"
        );
        assert!(lines[0].contains(" read "), "{}", lines[0]);
        for quiet in [Progress::Quiet, Progress::Bar] {
            assert!(logged(quiet, read_a_source).is_empty(), "{quiet:?} logged");
        }
    }
}
