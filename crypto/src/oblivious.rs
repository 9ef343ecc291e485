//! Oblivious pseudonyms: an agency learns a keyed function of a value from
//! keyholders that never see the value, and holds no key that computes it.
//!
//! This is the verifiable oblivious pseudorandom function of RFC 9497
//! (VOPRF mode, ristretto255 with SHA-512, through the `voprf` crate). The
//! agency blinds each value with a fresh random scalar ([`Blinded`]); a
//! keyholder multiplies what it receives by its secret and proves, with one
//! proof per request, that it used the secret behind its public key
//! ([`KeyholderKey::evaluate`]), learning nothing (a blinded value is a
//! uniformly random group element, unlinkable even to another blinding of
//! the same value); the agency checks the proof against the public key it
//! pinned, removes its blind and hashes the result ([`Blinded::finalize`]).
//! Without the keyholder's secret, nobody can compute the output of a value
//! offline, so a pseudonym made from it cannot be reversed by enumerating
//! the values (about 10^9 NHS numbers) unless the keyholder answers every
//! guess, which it refuses beyond a daily allowance. A keyholder answering
//! with another key (a key lost and made again, a restore from the wrong
//! backup, an impostor) is caught by the proof, not discovered later as
//! links that silently stopped forming.
//!
//! Each agreement gets its own keyholder key, derived from the keyholder's
//! root key with the agreement's id (RFC 9497 `DeriveKeyPair`), so outputs
//! under two agreements never match; its public key is what an agency pins
//! ([`KeyholderKey::public_key`], `joinery keyholder public-key`).

use rand_core_06::OsRng;
use voprf::{
    BlindedElement, EvaluationElement, Group, Proof, Ristretto255, VoprfClient, VoprfServer,
};

use crate::keys::SecretKey;

/// Bytes of one blinded or evaluated element on the wire.
pub const ELEMENT_LEN: usize = 32;

/// Bytes of a keyholder's public key for one agreement.
pub const PUBLIC_KEY_LEN: usize = 32;

/// Bytes of one output.
pub const OUTPUT_LEN: usize = 64;

/// An oblivious function's output for one value.
pub type ObliviousOutput = [u8; OUTPUT_LEN];

/// A keyholder's public key for one agreement.
pub type PublicKey = [u8; PUBLIC_KEY_LEN];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ObliviousError {
    #[error("element {index} is not a valid ristretto255 point of {ELEMENT_LEN} bytes")]
    BadElement { index: usize },
    #[error("{got} evaluated elements answer {sent} blinded ones")]
    CountMismatch { sent: usize, got: usize },
    #[error("the keyholder key could not be derived")]
    Derive,
    #[error("the public key is not a valid ristretto255 point of {PUBLIC_KEY_LEN} bytes")]
    BadPublicKey,
    #[error(
        "the answer's proof does not verify against the pinned public key: \
         the keyholder answered with another key"
    )]
    ProofRejected,
}

/// What a keyholder answers: the evaluated elements, in the order of the
/// blinded ones, and one proof that all were made with its key.
pub struct Evaluated {
    pub elements: Vec<Vec<u8>>,
    pub proof: Vec<u8>,
}

/// A keyholder's secret for one agreement.
pub struct KeyholderKey {
    server: VoprfServer<Ristretto255>,
}

impl KeyholderKey {
    /// The key for agreement `agreement` derived from the keyholder's root key.
    pub fn derive(root: &SecretKey, agreement: &str) -> Result<Self, ObliviousError> {
        let info = format!("joinery keyholder v1 {agreement}");
        VoprfServer::new_from_seed(root.as_bytes(), info.as_bytes())
            .map(|server| Self { server })
            .map_err(|_| ObliviousError::Derive)
    }

    /// The public key agencies pin for this agreement.
    pub fn public_key(&self) -> PublicKey {
        Ristretto255::serialize_elem(self.server.get_public_key()).into()
    }

    /// Evaluates blinded elements (each [`ELEMENT_LEN`] bytes) with one
    /// proof for them all; the error names the first that is not a valid
    /// point.
    pub fn evaluate(&self, blinded: &[Vec<u8>]) -> Result<Evaluated, ObliviousError> {
        let elements = blinded
            .iter()
            .enumerate()
            .map(|(index, bytes)| {
                (bytes.len() == ELEMENT_LEN)
                    .then(|| BlindedElement::<Ristretto255>::deserialize(bytes).ok())
                    .flatten()
                    .ok_or(ObliviousError::BadElement { index })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let prepared: Vec<_> = self
            .server
            .batch_blind_evaluate_prepare(elements.iter())
            .collect();
        let finished = self
            .server
            .batch_blind_evaluate_finish(&mut OsRng, elements.iter(), &prepared)
            .map_err(|_| ObliviousError::CountMismatch {
                sent: elements.len(),
                got: 0,
            })?;
        Ok(Evaluated {
            elements: finished.messages.map(|m| m.serialize().to_vec()).collect(),
            proof: finished.proof.serialize().to_vec(),
        })
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

/// Reads a pinned public key.
pub fn public_key_from_bytes(bytes: &[u8]) -> Result<PublicKey, ObliviousError> {
    let key: PublicKey = bytes.try_into().map_err(|_| ObliviousError::BadPublicKey)?;
    Ristretto255::deserialize_elem(&key).map_err(|_| ObliviousError::BadPublicKey)?;
    Ok(key)
}

/// Values blinded for one request to a keyholder, with what removes the blinds.
pub struct Blinded {
    clients: Vec<VoprfClient<Ristretto255>>,
    /// The blinded elements to send, in the order of the values.
    pub elements: Vec<Vec<u8>>,
}

impl Blinded {
    /// Blinds each value with a fresh random scalar.
    pub fn new<V: AsRef<[u8]>>(values: &[V]) -> Self {
        let (clients, elements) = values
            .iter()
            .map(|value| {
                let result = VoprfClient::<Ristretto255>::blind(value.as_ref(), &mut OsRng)
                    .expect("a value of any length hashes to the group");
                (result.state, result.message.serialize().to_vec())
            })
            .unzip();
        Self { clients, elements }
    }

    /// The outputs for `values` (the same values, in the same order, as
    /// were blinded) from a keyholder's answer, once its proof verifies
    /// against `public_key`.
    pub fn finalize<V: AsRef<[u8]>>(
        &self,
        values: &[V],
        answer: &Evaluated,
        public_key: &PublicKey,
    ) -> Result<Vec<ObliviousOutput>, ObliviousError> {
        let sent = self.clients.len();
        if answer.elements.len() != sent || values.len() != sent {
            return Err(ObliviousError::CountMismatch {
                sent,
                got: answer.elements.len(),
            });
        }
        let elements = answer
            .elements
            .iter()
            .enumerate()
            .map(|(index, bytes)| {
                (bytes.len() == ELEMENT_LEN)
                    .then(|| EvaluationElement::<Ristretto255>::deserialize(bytes).ok())
                    .flatten()
                    .ok_or(ObliviousError::BadElement { index })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let proof = Proof::<Ristretto255>::deserialize(&answer.proof)
            .map_err(|_| ObliviousError::ProofRejected)?;
        let public_key =
            Ristretto255::deserialize_elem(public_key).map_err(|_| ObliviousError::BadPublicKey)?;
        let inputs: Vec<&[u8]> = values.iter().map(AsRef::as_ref).collect();
        let outputs =
            VoprfClient::batch_finalize(&inputs, &self.clients, &elements, &proof, public_key)
                .map_err(|_| ObliviousError::ProofRejected)?;
        outputs
            .enumerate()
            .map(|(index, output)| {
                output
                    .map(Into::into)
                    .map_err(|_| ObliviousError::BadElement { index })
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
        let outputs = blinded
            .finalize(&values, &evaluated, &keyholder.public_key())
            .unwrap();
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
            keyholder
                .evaluate(&[good.clone(), vec![0xff; ELEMENT_LEN]])
                .err(),
            Some(ObliviousError::BadElement { index: 1 })
        );
        assert_eq!(
            keyholder.evaluate(&[vec![1; 5]]).err(),
            Some(ObliviousError::BadElement { index: 0 })
        );
        let blinded = Blinded::new(&["1", "2"]);
        let short = keyholder.evaluate(&[good]).unwrap();
        assert_eq!(
            blinded.finalize(&["1", "2"], &short, &keyholder.public_key()),
            Err(ObliviousError::CountMismatch { sent: 2, got: 1 })
        );
        assert_eq!(
            public_key_from_bytes(&[0xff; PUBLIC_KEY_LEN]),
            Err(ObliviousError::BadPublicKey)
        );
        assert_eq!(
            public_key_from_bytes(&keyholder.public_key()),
            Ok(keyholder.public_key())
        );
    }

    /// Someone answering with another key (a keyholder that lost its key,
    /// or an impostor) is caught by the proof; answers altered on the way,
    /// or a proof taken from another answer, are refused too.
    #[test]
    fn answers_with_another_key_or_altered_are_refused() {
        let values = ["9434765919", "9434765870"];
        let pinned = key(3, "a").public_key();
        let blinded = Blinded::new(&values);
        let wrong = key(9, "a").evaluate(&blinded.elements).unwrap();
        assert_eq!(
            blinded.finalize(&values, &wrong, &pinned),
            Err(ObliviousError::ProofRejected)
        );
        let other_agreement = key(3, "b").evaluate(&blinded.elements).unwrap();
        assert_eq!(
            blinded.finalize(&values, &other_agreement, &pinned),
            Err(ObliviousError::ProofRejected)
        );
        let mut swapped = key(3, "a").evaluate(&blinded.elements).unwrap();
        swapped.elements.swap(0, 1);
        assert_eq!(
            blinded.finalize(&values, &swapped, &pinned),
            Err(ObliviousError::ProofRejected)
        );
        let mut borrowed = key(3, "a").evaluate(&blinded.elements).unwrap();
        borrowed.proof = key(3, "a")
            .evaluate(&Blinded::new(&values).elements)
            .unwrap()
            .proof;
        assert_eq!(
            blinded.finalize(&values, &borrowed, &pinned),
            Err(ObliviousError::ProofRejected)
        );
        let honest = key(3, "a").evaluate(&blinded.elements).unwrap();
        assert!(blinded.finalize(&values, &honest, &pinned).is_ok());
    }
}
