//! The two inner loops of fuzzy linkage, one core each: the agent's encoder
//! (records per second) and the gateway's Dice kernels on 1,024-bit filters,
//! the CLK length anonlink compares (filter pairs per second, each judged
//! against the agreement levels as the matcher judges them): 64-bit
//! popcounts, and AVX-512 vector popcounts where the CPU has them.
//!
//! `cargo bench -p joinery-linkage --bench kernel`

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use joinery_crypto::keys::SecretKey;
use joinery_linkage::bloom::{self, Kernel, KernelTask};
use joinery_linkage::score::level;
use joinery_linkage::sequence::Sequence;
use joinery_linkage::{Encoder, Identity, LinkageParams};

/// Filters of 16 words with about a quarter of their bits set, from a
/// fixed sequence.
fn filters(n: usize) -> Vec<[u64; 16]> {
    let mut sequence = Sequence::new(0x9e37_79b9_7f4a_7c15);
    let mut next = || sequence.next_u64();
    (0..n)
        .map(|_| std::array::from_fn(|_| next() & next()))
        .collect()
}

/// Levels of `query` against every filter, as the matcher judges a field:
/// the sum keeps the work alive.
struct Levels<'a> {
    query: &'a [u64; 16],
    others: &'a [[u64; 16]],
    ones: &'a [u32],
}

impl KernelTask for Levels<'_> {
    type Output = u32;

    #[inline(always)]
    fn run<K: Kernel>(self, kernel: K) -> u32 {
        let ones_query = bloom::ones(self.query);
        self.others
            .iter()
            .zip(self.ones)
            .map(|(other, &o)| u32::from(level(kernel.common(self.query, other), ones_query + o)))
            .sum()
    }
}

/// The kernel the matcher uses on this CPU, and the 64-bit popcount one.
fn dice_kernel(c: &mut Criterion) {
    let others = filters(4096);
    let ones: Vec<u32> = others.iter().map(|f| bloom::ones(f)).collect();
    let query = filters(1)[0];
    let levels = || Levels {
        query: black_box(&query),
        others: &others,
        ones: &ones,
    };
    let mut group = c.benchmark_group("dice");
    group.throughput(Throughput::Elements(others.len() as u64));
    group.bench_function("1024-bit filter pairs, 64-bit popcount", |b| {
        b.iter(|| bloom::dispatch_scalar(levels()))
    });
    #[cfg(target_arch = "x86_64")]
    if bloom::Avx512::detect().is_some() {
        group.bench_function("1024-bit filter pairs, AVX-512 vector popcount", |b| {
            b.iter(|| bloom::dispatch(levels()))
        });
    } else {
        eprintln!("dice: this CPU has no AVX-512 vector popcount; that kernel is not measured");
    }
    group.finish();
}

fn encoder(c: &mut Criterion) {
    let params = LinkageParams::canonical();
    let encoder = Encoder::new(&SecretKey::from_bytes([7; 32]), &params).unwrap();
    let identity = Identity::new()
        .with("given_name", Some("AMELIA"))
        .with("family_name", Some("OKONKWO"))
        .with("date_of_birth", Some("2014-06-09"))
        .with("sex", Some("female"))
        .with("postcode", Some("LS7 4QT"));
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("canonical record", |b| {
        b.iter(|| encoder.encode(black_box(&identity)))
    });
    group.finish();
}

criterion_group!(benches, dice_kernel, encoder);
criterion_main!(benches);
