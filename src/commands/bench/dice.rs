//! `joinery-bench dice`: the matcher's Dice kernel on one core over filters
//! another tool made, every pair of two files, as anonlink's brute-force
//! candidate generation compares them: filter pairs per second, and the
//! pairs at or above the threshold (so the two tools' work can be checked
//! alike). `scripts/compare_linkage.py` runs it on the very 1,024-bit CLKs
//! anonlink compares, in the same run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use joinery_linkage::Encoding;
use joinery_linkage::bloom::{self, Kernel, KernelTask};

#[derive(Debug, clap::Args)]
pub struct DiceArgs {
    /// One side's filters: raw bytes, `--bits / 8` per filter, one after another.
    a: PathBuf,
    /// The other side's filters, alike.
    b: PathBuf,
    /// Filter length in bits (a multiple of 64).
    #[arg(long, default_value_t = 1024)]
    bits: usize,
    /// Pairs with a Dice coefficient at least this are counted.
    #[arg(long, default_value_t = 0.8)]
    threshold: f64,
    /// Scans to time; the fastest is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
}

pub fn run(args: DiceArgs) -> anyhow::Result<ExitCode> {
    if args.bits == 0 || !args.bits.is_multiple_of(64) {
        bail!(
            "--bits must be a positive multiple of 64, not {}",
            args.bits
        );
    }
    let words = args.bits / 64;
    let a = read_filters(&args.a, words)?;
    let b = read_filters(&args.b, words)?;
    let ones = |f: &[u64]| f.chunks_exact(words).map(bloom::ones).collect::<Vec<u32>>();
    let (ones_a, ones_b) = (ones(&a), ones(&b));
    let (n_a, n_b) = (ones_a.len(), ones_b.len());
    let mut fastest = f64::INFINITY;
    let mut found = (0, "");
    for _ in 0..args.repeats.max(1) {
        let started = Instant::now();
        found = bloom::dispatch(Scan {
            a: &a,
            b: &b,
            words,
            ones_a: &ones_a,
            ones_b: &ones_b,
            threshold: args.threshold,
        });
        fastest = fastest.min(started.elapsed().as_secs_f64());
    }
    let (above, kernel) = found;
    let pairs = n_a as f64 * n_b as f64;
    println!(
        "bench dice: {n_a} x {n_b} filter pairs of {} bits in {fastest:.3} s = {:.1} M pairs/s on one core ({kernel}); {above} pairs at Dice >= {}",
        args.bits,
        pairs / fastest / 1e6,
        args.threshold
    );
    Ok(ExitCode::SUCCESS)
}

/// A file of filters as words; its length must be whole filters.
fn read_filters(path: &Path, words: usize) -> anyhow::Result<Vec<u64>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let filter_bytes = words * 8;
    match Encoding::filter_from_bytes(&bytes) {
        Some(filters) if !bytes.is_empty() && bytes.len().is_multiple_of(filter_bytes) => {
            Ok(filters)
        }
        _ => bail!(
            "{}: {} bytes is not a whole number of {filter_bytes}-byte filters",
            path.display(),
            bytes.len()
        ),
    }
}

/// Every pair of `a` and `b`: how many reach the threshold, and the kernel.
struct Scan<'a> {
    a: &'a [u64],
    b: &'a [u64],
    words: usize,
    ones_a: &'a [u32],
    ones_b: &'a [u32],
    threshold: f64,
}

impl KernelTask for Scan<'_> {
    type Output = (u64, &'static str);

    #[inline(always)]
    fn run<K: Kernel>(self, kernel: K) -> (u64, &'static str) {
        let mut above = 0u64;
        for (x, &ones_x) in self.a.chunks_exact(self.words).zip(self.ones_a) {
            for (y, &ones_y) in self.b.chunks_exact(self.words).zip(self.ones_b) {
                let common = f64::from(2 * kernel.common(x, y));
                above += u64::from(common >= self.threshold * f64::from(ones_x + ones_y));
            }
        }
        (above, K::NAME)
    }
}
