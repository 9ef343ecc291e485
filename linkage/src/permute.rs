//! The gateway's own layer on filters: a keyed permutation of each field's
//! bit positions. Dice similarity is unchanged (both filters move the same
//! way), but a stored filter no longer matches anything an agency can compute
//! with the linkage key alone, just as stored pseudonyms are re-keyed.

use joinery_crypto::keys::SecretKey;
use joinery_crypto::pseudonym::Pseudonymiser;

use crate::params::LinkageParams;

pub struct BitPermutation {
    /// For each field, where each bit goes.
    fields: Vec<Vec<u16>>,
}

impl BitPermutation {
    /// One permutation per field of `params`, derived from `key` (a
    /// Fisher–Yates shuffle driven by HMAC-SHA256 output).
    pub fn new(key: &SecretKey, params: &LinkageParams) -> Self {
        let fields = params
            .fields
            .iter()
            .map(|field| {
                let prf = Pseudonymiser::new(
                    key,
                    &format!(
                        "gateway bloom permutation v{}:{}",
                        params.version,
                        field.name()
                    ),
                );
                let bits = field.bits as usize;
                let mut order: Vec<u16> = (0..bits as u16).collect();
                let mut counter = 0u64;
                let mut stream: Vec<u8> = Vec::new();
                let mut next = || {
                    if stream.len() < 8 {
                        stream.extend_from_slice(&prf.pseudonymise(&counter.to_le_bytes()));
                        counter += 1;
                    }
                    let word: [u8; 8] = stream[..8].try_into().expect("eight bytes");
                    stream.drain(..8);
                    u64::from_le_bytes(word)
                };
                for i in (1..bits).rev() {
                    let j = (next() % (i as u64 + 1)) as usize;
                    order.swap(i, j);
                }
                order
            })
            .collect();
        Self { fields }
    }

    /// Permutes field `field`'s filter (a missing, empty filter stays empty).
    pub fn apply(&self, field: usize, words: &[u64]) -> Vec<u64> {
        let mut out = vec![0u64; words.len()];
        let Some(order) = self.fields.get(field) else {
            return out;
        };
        for (w, &word) in words.iter().enumerate() {
            let mut rest = word;
            while rest != 0 {
                let bit = w * 64 + rest.trailing_zeros() as usize;
                rest &= rest - 1;
                if let Some(&to) = order.get(bit) {
                    crate::bloom::set(&mut out, usize::from(to));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bloom::{dice, ones};
    use crate::{Encoder, Identity};

    #[test]
    fn permuting_keeps_similarity_and_changes_the_bits() {
        let params = LinkageParams::canonical();
        let encoder = Encoder::new(&SecretKey::from_bytes([1; 32]), &params).unwrap();
        let who = |family: &str| {
            encoder.encode(
                &Identity::new()
                    .with("family_name", Some(family))
                    .with("date_of_birth", Some("2015-04-12")),
            )
        };
        let (a, b) = (who("JOHNSON"), who("JONSON"));
        let permutation = BitPermutation::new(&SecretKey::from_bytes([9; 32]), &params);
        let (pa, pb) = (
            permutation.apply(1, a.filter(&params, 1)),
            permutation.apply(1, b.filter(&params, 1)),
        );
        assert_eq!(ones(&pa), ones(a.filter(&params, 1)));
        assert_ne!(pa, a.filter(&params, 1));
        let before = dice(
            a.filter(&params, 1),
            ones(a.filter(&params, 1)),
            b.filter(&params, 1),
            ones(b.filter(&params, 1)),
        );
        let after = dice(&pa, ones(&pa), &pb, ones(&pb));
        assert_eq!(before, after);
    }
}
