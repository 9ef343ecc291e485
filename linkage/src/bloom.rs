//! Bloom filters as 64-bit words, and the Dice coefficient between two of
//! them: a popcount of their intersection.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dice_of_known_filters() {
        let a = [0b1111u64, 0];
        let b = [0b0011u64, 0];
        assert_eq!(ones(&a), 4);
        assert!((dice(&a, 4, &b, 2) - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(dice(&a, 4, &a, 4), 1.0);
        assert_eq!(dice(&[0, 0], 0, &[0, 0], 0), 0.0);
    }
}
