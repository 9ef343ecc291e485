//! The two inner loops of fuzzy linkage, one core each: the agent's encoder
//! (records per second) and the gateway's Dice kernels on 1,024-bit filters,
//! the CLK length anonlink compares (filter pairs per second, each judged
//! against the agreement levels as the matcher judges them): 64-bit
//! popcounts, and AVX-512 vector popcounts where the CPU has them.
//!
//! `cargo bench -p joinery-linkage --bench kernel`

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use joinery_crypto::keys::SecretKey;
use joinery_linkage::bloom::{self, Kernel, Scalar};
use joinery_linkage::score::level;
use joinery_linkage::{Encoder, Identity, LinkageParams};

/// Filters of 16 words with about a quarter of their bits set, from a
/// fixed sequence.
fn filters(n: usize) -> Vec<[u64; 16]> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|_| std::array::from_fn(|_| next() & next()))
        .collect()
}

/// Levels of `query` against every filter: the sum keeps the work alive.
#[inline(always)]
fn levels<K: Kernel>(kernel: K, query: &[u64; 16], others: &[[u64; 16]], ones: &[u32]) -> u32 {
    let ones_query = bloom::ones(query);
    others
        .iter()
        .zip(ones)
        .map(|(other, &o)| u32::from(level(kernel.common(query, other), ones_query + o)))
        .sum()
}

/// [`levels`] with 64-bit popcounts, compiled for the popcount instruction
/// as the matcher is.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
fn levels_popcnt(query: &[u64; 16], others: &[[u64; 16]], ones: &[u32]) -> u32 {
    levels(Scalar, query, others, ones)
}

/// [`levels`] with vector popcounts, compiled as the matcher is where the
/// CPU has AVX-512 with vector popcount.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512vpopcntdq,popcnt")]
fn levels_avx512(
    kernel: bloom::Avx512,
    query: &[u64; 16],
    others: &[[u64; 16]],
    ones: &[u32],
) -> u32 {
    levels(kernel, query, others, ones)
}

/// Each kernel the CPU can run: the matcher uses the last.
fn dice_kernel(c: &mut Criterion) {
    let others = filters(4096);
    let ones: Vec<u32> = others.iter().map(|f| bloom::ones(f)).collect();
    let query = filters(1)[0];
    let mut group = c.benchmark_group("dice");
    group.throughput(Throughput::Elements(others.len() as u64));
    group.bench_function("1024-bit filter pairs, 64-bit popcount", |b| {
        b.iter(|| {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("popcnt") {
                // SAFETY: the CPU has just been seen to support popcnt.
                return unsafe { levels_popcnt(black_box(&query), &others, &ones) };
            }
            levels(Scalar, black_box(&query), &others, &ones)
        })
    });
    #[cfg(target_arch = "x86_64")]
    match bloom::Avx512::detect() {
        Some(kernel) => {
            group.bench_function("1024-bit filter pairs, AVX-512 vector popcount", |b| {
                // SAFETY: `detect` has seen the CPU support the features.
                b.iter(|| unsafe { levels_avx512(kernel, black_box(&query), &others, &ones) })
            });
        }
        None => {
            eprintln!("dice: this CPU has no AVX-512 vector popcount; that kernel is not measured")
        }
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
