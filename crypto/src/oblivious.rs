//! Oblivious pseudonyms: an agency learns a keyed function of a value from
//! keyholders that never see the value, and holds no key that computes it.
//!
//! This is the oblivious pseudorandom function of RFC 9497 (base mode,
//! ristretto255 with SHA-512, through the `voprf` crate). The agency blinds
//! each value with a fresh random scalar ([`Blinded`]); a keyholder
//! multiplies what it receives by its secret ([`KeyholderKey::evaluate`]),
//! learning nothing (a blinded value is a uniformly random group element,
//! unlinkable even to another blinding of the same value); the agency
//! removes its blind and hashes the result ([`Blinded::finalize`]). Without
//! the keyholder's secret, nobody can compute the output of a value offline,
//! so a pseudonym made from it cannot be reversed by enumerating the values
//! (about 10^9 NHS numbers) unless the keyholder answers every guess, which
//! it refuses beyond a daily allowance.
//!
//! Each agreement gets its own keyholder key, derived from the keyholder's
//! root key with the agreement's id (RFC 9497 `DeriveKeyPair`), so outputs
//! under two agreements never match.

use rand_core_06::OsRng;
use voprf::{BlindedElement, EvaluationElement, OprfClient, OprfServer, Ristretto255};

use crate::keys::SecretKey;

/// Bytes of one blinded or evaluated element on the wire.
pub const ELEMENT_LEN: usize = 32;

/// Bytes of one output.
pub const OUTPUT_LEN: usize = 64;

/// An oblivious function's output for one value.
pub type ObliviousOutput = [u8; OUTPUT_LEN];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ObliviousError {
    #[error("element {index} is not a valid ristretto255 point of {ELEMENT_LEN} bytes")]
    BadElement { index: usize },
    #[error("{got} evaluated elements answer {sent} blinded ones")]
    CountMismatch { sent: usize, got: usize },
    #[error("the keyholder key could not be derived")]
    Derive,
}

/// A keyholder's secret for one agreement.
pub struct KeyholderKey {
    server: OprfServer<Ristretto255>,
}

impl KeyholderKey {
    /// The key for agreement `agreement` derived from the keyholder's root key.
    pub fn derive(root: &SecretKey, agreement: &str) -> Result<Self, ObliviousError> {
        let info = format!("joinery keyholder v1 {agreement}");
        OprfServer::new_from_seed(root.as_bytes(), info.as_bytes())
            .map(|server| Self { server })
            .map_err(|_| ObliviousError::Derive)
    }

    /// Evaluates blinded elements (each [`ELEMENT_LEN`] bytes); the error
    /// names the first that is not a valid point.
    pub fn evaluate(&self, blinded: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, ObliviousError> {
        blinded
            .iter()
            .enumerate()
            .map(|(index, bytes)| {
                let element = (bytes.len() == ELEMENT_LEN)
                    .then(|| BlindedElement::<Ristretto255>::deserialize(bytes).ok())
                    .flatten()
                    .ok_or(ObliviousError::BadElement { index })?;
                Ok(self.server.blind_evaluate(&element).serialize().to_vec())
            })
            .collect()
    }

    /// The output for `value` computed with the key directly: what an agency
    /// obtains obliviously (for tests and for checking a keyholder's answers).
    pub fn output(&self, value: &[u8]) -> ObliviousOutput {
        let output = self
            .server
            .evaluate(value)
            .expect("a value of any length hashes to the group");
        output.into()
    }
}

/// Values blinded for one request to a keyholder, with what removes the blinds.
pub struct Blinded {
    clients: Vec<OprfClient<Ristretto255>>,
    /// The blinded elements to send, in the order of the values.
    pub elements: Vec<Vec<u8>>,
}

impl Blinded {
    /// Blinds each value with a fresh random scalar.
    pub fn new<V: AsRef<[u8]>>(values: &[V]) -> Self {
        let (clients, elements) = values
            .iter()
            .map(|value| {
                let result = OprfClient::<Ristretto255>::blind(value.as_ref(), &mut OsRng)
                    .expect("a value of any length hashes to the group");
                (result.state, result.message.serialize().to_vec())
            })
            .unzip();
        Self { clients, elements }
    }

    /// The outputs for `values` (the same values, in the same order, as
    /// were blinded) from a keyholder's evaluated elements.
    pub fn finalize<V: AsRef<[u8]>>(
        &self,
        values: &[V],
        evaluated: &[Vec<u8>],
    ) -> Result<Vec<ObliviousOutput>, ObliviousError> {
        if evaluated.len() != self.clients.len() || values.len() != self.clients.len() {
            return Err(ObliviousError::CountMismatch {
                sent: self.clients.len(),
                got: evaluated.len(),
            });
        }
        self.clients
            .iter()
            .zip(values)
            .zip(evaluated)
            .enumerate()
            .map(|(index, ((client, value), bytes))| {
                let element = (bytes.len() == ELEMENT_LEN)
                    .then(|| EvaluationElement::<Ristretto255>::deserialize(bytes).ok())
                    .flatten()
                    .ok_or(ObliviousError::BadElement { index })?;
                let output = client
                    .finalize(value.as_ref(), &element)
                    .map_err(|_| ObliviousError::BadElement { index })?;
                Ok(output.into())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8, agreement: &str) -> KeyholderKey {
        KeyholderKey::derive(&SecretKey::from_bytes([byte; 32]), agreement).unwrap()
    }

    #[test]
    fn the_blinded_round_trip_gives_the_keyed_output() {
        let keyholder = key(3, "a");
        let values = ["9434765919", "9434765870", "9434765919"];
        let blinded = Blinded::new(&values);
        let evaluated = keyholder.evaluate(&blinded.elements).unwrap();
        let outputs = blinded.finalize(&values, &evaluated).unwrap();
        assert_eq!(outputs[0], keyholder.output(b"9434765919"));
        assert_eq!(outputs[0], outputs[2], "the function is deterministic");
        assert_ne!(outputs[0], outputs[1]);
    }

    #[test]
    fn the_keyholder_sees_unlinkable_random_elements() {
        let values = ["9434765919", "9434765919"];
        let blinded = Blinded::new(&values);
        assert_ne!(
            blinded.elements[0], blinded.elements[1],
            "the same value blinded twice looks unrelated"
        );
        assert_eq!(blinded.elements[0].len(), ELEMENT_LEN);
    }

    #[test]
    fn keys_and_agreements_separate_outputs() {
        let value = b"9434765919";
        assert_ne!(key(3, "a").output(value), key(4, "a").output(value));
        assert_ne!(key(3, "a").output(value), key(3, "b").output(value));
        assert_eq!(key(3, "a").output(value), key(3, "a").output(value));
    }

    #[test]
    fn malformed_elements_are_refused_by_position() {
        let keyholder = key(3, "a");
        let good = Blinded::new(&["1"]).elements.remove(0);
        assert_eq!(
            keyholder.evaluate(&[good.clone(), vec![0xff; ELEMENT_LEN]]),
            Err(ObliviousError::BadElement { index: 1 })
        );
        assert_eq!(
            keyholder.evaluate(&[vec![1; 5]]),
            Err(ObliviousError::BadElement { index: 0 })
        );
        let blinded = Blinded::new(&["1", "2"]);
        assert_eq!(
            blinded.finalize(&["1", "2"], &[good]),
            Err(ObliviousError::CountMismatch { sent: 2, got: 1 })
        );
    }

    /// Someone answering with another key (a keyholder that lost its key,
    /// or an impostor) gives other outputs, which link nothing.
    #[test]
    fn another_keys_answers_give_other_outputs() {
        let values = ["9434765919"];
        let blinded = Blinded::new(&values);
        let wrong = key(9, "a").evaluate(&blinded.elements).unwrap();
        let outputs = blinded.finalize(&values, &wrong).unwrap();
        assert_ne!(outputs[0], key(3, "a").output(b"9434765919"));
    }
}
