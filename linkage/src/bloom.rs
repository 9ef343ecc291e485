//! Bloom filters as 64-bit words, and the Dice coefficient between two of
//! them: a popcount of their intersection, counted by a [`Kernel`] (64-bit
//! popcounts anywhere, vector popcounts on CPUs with AVX-512).
//!
//! The workspace's one module with `unsafe` code: the vector intrinsics
//! and the calls of functions compiled for CPU features, each after the
//! CPU has been seen to have them (every block says why it is sound).

#![allow(unsafe_code)]

/// A filter's words, `bits / 64` of them.
pub type Words = [u64];

/// Sets bit `position` (already reduced below the filter's length).
pub fn set(words: &mut Words, position: usize) {
    words[position / 64] |= 1 << (position % 64);
}

/// Bits set.
pub fn ones(words: &Words) -> u32 {
    words.iter().map(|w| w.count_ones()).sum()
}

/// Bits set in both. Inlined into the matcher's comparison loop, which is
/// compiled for the CPU's popcount (and vector popcount) instructions where
/// there are some; the usual filter lengths are unrolled, so the compiler
/// can keep a whole filter in one vector register.
#[inline(always)]
pub fn common(a: &Words, b: &Words) -> u32 {
    match (a.len(), b.len()) {
        (1, 1) => (a[0] & b[0]).count_ones(),
        (4, 4) => common_fixed::<4>(a, b),
        (8, 8) => common_fixed::<8>(a, b),
        (16, 16) => common_fixed::<16>(a, b),
        _ => a.iter().zip(b).map(|(x, y)| (x & y).count_ones()).sum(),
    }
}

#[inline(always)]
fn common_fixed<const N: usize>(a: &Words, b: &Words) -> u32 {
    let (a, b): (&[u64; N], &[u64; N]) = (
        a.try_into().expect("N words"),
        b.try_into().expect("N words"),
    );
    let mut sum = 0;
    for i in 0..N {
        sum += (a[i] & b[i]).count_ones();
    }
    sum
}

/// How the bits two filters have in common are counted. Loops that compare
/// filters are compiled once per kernel, each for its instructions, and the
/// kernel is chosen once per run by what the CPU has ([`dispatch`]).
pub trait Kernel: Copy {
    /// What it counts with, for reports.
    const NAME: &str;
    fn common(self, a: &Words, b: &Words) -> u32;
}

/// Any CPU: 64-bit popcounts ([`common`]).
#[derive(Debug, Clone, Copy)]
pub struct Scalar;

impl Kernel for Scalar {
    const NAME: &str = "64-bit popcount";

    #[inline(always)]
    fn common(self, a: &Words, b: &Words) -> u32 {
        common(a, b)
    }
}

/// AVX-512 with vector popcount: a filter of 4, 8 or 16 words is one or two
/// vector registers, ANDed, popcounted and summed in a handful of
/// instructions. Only [`Avx512::detect`] makes one, so holding one proves
/// the CPU has the instructions.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy)]
pub struct Avx512(());

#[cfg(target_arch = "x86_64")]
impl Avx512 {
    /// One, when the CPU has AVX-512 (foundation and vector length) with
    /// vector popcount: the target features its callers are compiled with.
    pub fn detect() -> Option<Self> {
        let has = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512vpopcntdq")
            && std::arch::is_x86_feature_detected!("popcnt");
        has.then_some(Self(()))
    }
}

#[cfg(target_arch = "x86_64")]
impl Kernel for Avx512 {
    const NAME: &str = "AVX-512 vector popcount";

    /// Inlined into [`dispatch`]'s work, compiled with the features
    /// [`Avx512::detect`] checks, where the intrinsics become single
    /// instructions.
    #[inline(always)]
    fn common(self, a: &Words, b: &Words) -> u32 {
        use std::arch::x86_64::*;
        // SAFETY: `self` exists only where `detect` saw every instruction
        // used here; each load reads exactly the words both slices hold
        // (their lengths are matched first), unaligned loads allowed.
        unsafe {
            let load512 = |w: &Words, at: usize| _mm512_loadu_si512(w[at..at + 8].as_ptr().cast());
            match (a.len(), b.len()) {
                (4, 4) => {
                    let both = _mm256_and_si256(
                        _mm256_loadu_si256(a.as_ptr().cast()),
                        _mm256_loadu_si256(b.as_ptr().cast()),
                    );
                    let counts = _mm256_popcnt_epi64(both);
                    let halves = _mm_add_epi64(
                        _mm256_castsi256_si128(counts),
                        _mm256_extracti128_si256::<1>(counts),
                    );
                    (_mm_cvtsi128_si64(halves) + _mm_extract_epi64::<1>(halves)) as u32
                }
                (8, 8) => {
                    let both = _mm512_and_si512(load512(a, 0), load512(b, 0));
                    _mm512_reduce_add_epi64(_mm512_popcnt_epi64(both)) as u32
                }
                (16, 16) => {
                    let low = _mm512_popcnt_epi64(_mm512_and_si512(load512(a, 0), load512(b, 0)));
                    let high = _mm512_popcnt_epi64(_mm512_and_si512(load512(a, 8), load512(b, 8)));
                    _mm512_reduce_add_epi64(_mm512_add_epi64(low, high)) as u32
                }
                _ => common(a, b),
            }
        }
    }
}

/// Work compiled once per kernel, each copy for that kernel's instructions:
/// [`dispatch`] runs it with the best kernel the CPU has.
pub trait KernelTask {
    type Output;
    /// Implementations must be `#[inline(always)]`: only then is the work
    /// compiled inside [`dispatch`]'s per-kernel functions, for their
    /// instructions.
    fn run<K: Kernel>(self, kernel: K) -> Self::Output;
}

/// Runs `task` with AVX-512 vector popcounts where the CPU has them, else as
/// [`dispatch_scalar`] does.
pub fn dispatch<T: KernelTask>(task: T) -> T::Output {
    #[cfg(target_arch = "x86_64")]
    if let Some(kernel) = Avx512::detect() {
        // SAFETY: `detect` has just seen the CPU support the features.
        return unsafe { run_avx512(kernel, task) };
    }
    dispatch_scalar(task)
}

/// Runs `task` with 64-bit popcounts, compiled for the popcount instruction
/// where the CPU has one.
pub fn dispatch_scalar<T: KernelTask>(task: T) -> T::Output {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("popcnt") {
        // SAFETY: the CPU has just been seen to support popcnt.
        return unsafe { run_popcnt(task) };
    }
    task.run(Scalar)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512vpopcntdq,popcnt")]
fn run_avx512<T: KernelTask>(kernel: Avx512, task: T) -> T::Output {
    task.run(kernel)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
fn run_popcnt<T: KernelTask>(task: T) -> T::Output {
    task.run(Scalar)
}

/// The Dice coefficient 2|A∩B| / (|A| + |B|), given both popcounts; 0 when
/// both are empty.
#[inline]
pub fn dice(a: &Words, ones_a: u32, b: &Words, ones_b: u32) -> f64 {
    let total = ones_a + ones_b;
    if total == 0 {
        return 0.0;
    }
    f64::from(2 * common(a, b)) / f64::from(total)
}

/// The Dice coefficient of the *tokens* two filters of `bits` bits were
/// made from, estimated from their popcounts and the bits they share: a
/// filter with x of m bits set holds about −(m/h)·ln(1 − x/m) tokens of h
/// hashes each, so the tokens in common are those of each minus those of
/// their union (h cancels). The bits' own Dice counts the bits two
/// different tokens share by chance, more of them the fuller a filter is,
/// so the same two names look more alike in a small filter than in a large
/// one; this does not. Every filter length is a power of two from 64 to
/// 4,096 bits (`params`), each with a table made once.
#[inline(always)]
pub fn token_dice(bits: usize, common: u32, ones_a: u32, ones_b: u32) -> f32 {
    let table = &token_tables()[(bits / 64).trailing_zeros() as usize];
    let (a, b) = (table[ones_a as usize], table[ones_b as usize]);
    let union = table[(ones_a + ones_b - common) as usize];
    if a + b == 0.0 {
        return 0.0;
    }
    2.0 * (a + b - union) / (a + b)
}

/// −ln(1 − x/m) for x from 0 to m, for m = 64, 128, … 4,096 (a full filter
/// taken as half a bit short of full, so its logarithm is finite).
fn token_tables() -> &'static [Vec<f32>] {
    static TABLES: std::sync::OnceLock<Vec<Vec<f32>>> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        (0..7)
            .map(|i| {
                let m = 64usize << i;
                (0..=m)
                    .map(|x| {
                        let x = (x as f64).min(m as f64 - 0.5);
                        (-(1.0 - x / m as f64).ln()) as f32
                    })
                    .collect()
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two sets of 8 tokens sharing 2 (token Dice 0.25), hashed 8 times
    /// each into filters of 128 to 1,024 bits: the bits' Dice rises as the
    /// filter shrinks, the tokens' estimate stays near 0.25.
    #[test]
    fn the_token_estimate_does_not_grow_as_the_filter_shrinks() {
        let mut sequence = crate::sequence::Sequence::new(0x9e37_79b9_7f4a_7c15);
        let mut next = || sequence.next_u64();
        for bits in [128usize, 256, 512, 1024] {
            let (mut by_bits, mut by_tokens) = (0.0, 0.0);
            let trials = 400;
            for _ in 0..trials {
                let tokens: Vec<Vec<usize>> = (0..14)
                    .map(|_| (0..8).map(|_| next() as usize % bits).collect())
                    .collect();
                let filter = |chosen: &[Vec<usize>]| {
                    let mut words = vec![0u64; bits / 64];
                    for position in chosen.iter().flatten() {
                        set(&mut words, *position);
                    }
                    words
                };
                let (a, b) = (filter(&tokens[..8]), filter(&tokens[6..]));
                let (oa, ob) = (ones(&a), ones(&b));
                by_bits += dice(&a, oa, &b, ob);
                by_tokens += f64::from(token_dice(bits, common(&a, &b), oa, ob));
            }
            let (by_bits, by_tokens) = (by_bits / trials as f64, by_tokens / trials as f64);
            assert!((by_tokens - 0.25).abs() < 0.05, "{bits} bits: {by_tokens}");
            if bits <= 256 {
                assert!(by_bits > 0.3, "{bits} bits: the bits' Dice {by_bits}");
            }
        }
        assert_eq!(token_dice(256, 40, 40, 40), 1.0);
        assert_eq!(token_dice(64, 0, 0, 0), 0.0);
        assert_eq!(token_dice(64, 64, 64, 64), 1.0);
    }

    #[test]
    fn dice_of_known_filters() {
        let a = [0b1111u64, 0];
        let b = [0b0011u64, 0];
        assert_eq!(ones(&a), 4);
        assert!((dice(&a, 4, &b, 2) - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(dice(&a, 4, &a, 4), 1.0);
        assert_eq!(dice(&[0, 0], 0, &[0, 0], 0), 0.0);
    }

    /// Every kernel counts alike, for every filter length the matcher
    /// unrolls and one it does not.
    #[test]
    fn kernels_agree() {
        let mut sequence = crate::sequence::Sequence::new(0x2545_f491_4f6c_dd1d);
        let mut next = || sequence.next_u64();
        for words in [1, 2, 4, 8, 16, 32] {
            for _ in 0..50 {
                let a: Vec<u64> = (0..words).map(|_| next()).collect();
                let b: Vec<u64> = (0..words).map(|_| next() & next()).collect();
                let expected: u32 = a.iter().zip(&b).map(|(x, y)| (x & y).count_ones()).sum();
                assert_eq!(Scalar.common(&a, &b), expected);
                #[cfg(target_arch = "x86_64")]
                if let Some(kernel) = Avx512::detect() {
                    assert_eq!(kernel.common(&a, &b), expected, "{words} words");
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        if Avx512::detect().is_none() {
            eprintln!(
                "kernels_agree: this CPU has no AVX-512 vector popcount; only the scalar kernel was checked"
            );
        }
    }
}
