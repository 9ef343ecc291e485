//! The gateway's layer of pseudonymisation, and exact linkage.
//!
//! Agents send pseudonyms keyed with the agreement's linkage key, which the
//! gateway never holds. Before anything is stored the gateway re-keys each one
//! with its own key, so a stored value matches nothing an agent can compute,
//! and neither side alone can reverse it.
//!
//! Exact linkage follows: records whose re-keyed NHS pseudonyms are equal
//! belong to the same person, whose id is derived from that pseudonym. A
//! record without a valid NHS number gets a person id of its own, derived from
//! its organisation and local pseudonym (fuzzy linkage may later join it).
//!
//! Linkage encodings get the same treatment: blocking keys are re-keyed, and
//! each field's Bloom filter has its bits moved by a permutation keyed with the
//! gateway's key (similarity is unchanged; what an agency could compute is not).

use joinery_crypto::keys::SecretKey;
use joinery_crypto::pseudonym::{Pseudonym, Pseudonymiser};
use joinery_linkage::LinkageParams;
use joinery_linkage::encode::BLOCK_KEY_LEN;
use joinery_linkage::permute::BitPermutation;
use joinery_proto::v1::LinkageEncoding;

/// How a record's person id was decided (stored, and counted in metrics,
/// by [`LinkMethod::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkMethod {
    /// From the NHS pseudonym: every agency's record of one NHS number is
    /// one person.
    ExactNhs,
    /// No NHS number: the record's own person until linkage joins it.
    Unlinked,
    /// Joined to another person id of the same organisation and local id
    /// (one dataset had the NHS number, another did not).
    ExactLocal,
    /// Joined to another person by fuzzy linkage.
    Fuzzy,
}

impl LinkMethod {
    /// Its name in the store and in metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ExactNhs => "exact-nhs",
            Self::Unlinked => "unlinked",
            Self::ExactLocal => "exact-local",
            Self::Fuzzy => "fuzzy",
        }
    }
}

/// Bytes of HMAC output kept in a person id (128 bits, hex-encoded).
const PERSON_ID_BYTES: usize = 16;

#[derive(Clone)]
pub struct Rekeyer {
    key: SecretKey,
    nhs: Pseudonymiser,
    local: Pseudonymiser,
    person: Pseudonymiser,
    block: Pseudonymiser,
}

/// How one agreement's linkage encodings are checked and re-keyed: its
/// parameters and the gateway's filter permutation for them (made once per
/// session, not per record).
pub struct LinkageRekeying {
    pub params: LinkageParams,
    permutation: BitPermutation,
}

/// A record's linkage encoding as stored: the permuted filters side by side
/// (all-zero words for a missing field) and the re-keyed blocking keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLinkage {
    pub params_version: u32,
    pub filters: Vec<u8>,
    pub blocks: Vec<Option<[u8; BLOCK_KEY_LEN]>>,
}

/// A record's stored identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredIdentity {
    pub person_id: String,
    pub local_pseudonym: String,
    pub nhs_pseudonym: Option<String>,
    pub link_method: LinkMethod,
}

impl Rekeyer {
    pub fn new(gateway_key: &SecretKey) -> Self {
        Self {
            key: gateway_key.clone(),
            nhs: Pseudonymiser::new(gateway_key, "gateway nhs-number"),
            local: Pseudonymiser::new(gateway_key, "gateway local-id"),
            person: Pseudonymiser::new(gateway_key, "gateway person-id"),
            block: Pseudonymiser::new(gateway_key, "gateway block"),
        }
    }

    /// Pseudonyms of spine people for one project's row-level extracts:
    /// stable within the project, unrelated across projects and to the
    /// stored person ids.
    pub fn project(&self, project: &str) -> Pseudonymiser {
        Pseudonymiser::new(&self.key, &format!("gateway project {project}"))
    }

    /// What re-keying encodings made under `params` needs.
    pub fn linkage_rekeying(&self, params: LinkageParams) -> LinkageRekeying {
        LinkageRekeying {
            permutation: BitPermutation::new(&self.key, &params),
            params,
        }
    }

    /// Checks a linkage encoding against the agreement's parameters and
    /// re-keys it; the error says what does not fit (no values).
    pub fn linkage(
        &self,
        rekeying: &LinkageRekeying,
        encoding: &LinkageEncoding,
    ) -> Result<StoredLinkage, String> {
        let (params, permutation) = (&rekeying.params, &rekeying.permutation);
        if encoding.version != params.version {
            return Err(format!(
                "linkage encoding version {} where the agreement's parameters are version {}",
                encoding.version, params.version
            ));
        }
        if encoding.filters.len() != params.fields.len()
            || encoding.blocks.len() != params.blocking.len()
        {
            return Err(format!(
                "linkage encoding has {} filters and {} blocking keys where the agreement's parameters have {} and {}",
                encoding.filters.len(),
                encoding.blocks.len(),
                params.fields.len(),
                params.blocking.len()
            ));
        }
        let mut filters = Vec::new();
        for (i, (field, bytes)) in params.fields.iter().zip(&encoding.filters).enumerate() {
            let width = field.bits as usize / 8;
            if bytes.is_empty() {
                filters.resize(filters.len() + width, 0);
                continue;
            }
            let words = (bytes.len() == width)
                .then(|| joinery_linkage::Encoding::filter_from_bytes(bytes))
                .flatten()
                .ok_or_else(|| {
                    format!(
                        "linkage filter for {} has {} bytes, not {width}",
                        field.name(),
                        bytes.len()
                    )
                })?;
            filters.extend(joinery_linkage::Encoding::filter_bytes(
                &permutation.apply(i, &words),
            ));
        }
        let mut blocks = Vec::with_capacity(encoding.blocks.len());
        for (rule, key) in encoding.blocks.iter().enumerate() {
            blocks.push(match key.len() {
                0 => None,
                BLOCK_KEY_LEN => {
                    let tagged = [&(rule as u32).to_le_bytes()[..], key].concat();
                    let mut stored = [0; BLOCK_KEY_LEN];
                    stored.copy_from_slice(&self.block.pseudonymise(&tagged)[..BLOCK_KEY_LEN]);
                    Some(stored)
                }
                n => {
                    return Err(format!(
                        "linkage blocking key of {n} bytes, not {BLOCK_KEY_LEN}"
                    ));
                }
            });
        }
        Ok(StoredLinkage {
            params_version: params.version,
            filters,
            blocks,
        })
    }

    /// The stored pseudonym of an organisation's record whose agent-level
    /// local pseudonym is `local_pseudonym`. The organisation is bound in,
    /// so equal local ids at two agencies never collide.
    pub fn local_pseudonym(&self, organisation: &str, local_pseudonym: &[u8]) -> Pseudonym {
        self.local
            .pseudonymise(&[organisation.as_bytes(), b"\0", local_pseudonym].concat())
    }

    /// Re-keys an agent's pseudonyms and links the record exactly.
    /// `nhs_pseudonym` is empty when the agent had no valid NHS number.
    pub fn identify(
        &self,
        organisation: &str,
        local_pseudonym: &[u8],
        nhs_pseudonym: &[u8],
    ) -> StoredIdentity {
        let local = self.local_pseudonym(organisation, local_pseudonym);
        if nhs_pseudonym.is_empty() {
            let person = self
                .person
                .pseudonymise(&[b"local\0".as_slice(), &local].concat());
            StoredIdentity {
                person_id: hex::encode(&person[..PERSON_ID_BYTES]),
                local_pseudonym: hex::encode(local),
                nhs_pseudonym: None,
                link_method: LinkMethod::Unlinked,
            }
        } else {
            let nhs = self.nhs.pseudonymise(nhs_pseudonym);
            let person = self
                .person
                .pseudonymise(&[b"nhs\0".as_slice(), &nhs].concat());
            StoredIdentity {
                person_id: hex::encode(&person[..PERSON_ID_BYTES]),
                local_pseudonym: hex::encode(local),
                nhs_pseudonym: Some(hex::encode(nhs)),
                link_method: LinkMethod::ExactNhs,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rekeyer() -> Rekeyer {
        Rekeyer::new(&SecretKey::from_bytes([3; 32]))
    }

    #[test]
    fn same_nhs_pseudonym_links_across_organisations() {
        let r = rekeyer();
        let a = r.identify("LA1", &[1; 32], &[9; 32]);
        let b = r.identify("RGD", &[2; 32], &[9; 32]);
        assert_eq!(a.person_id, b.person_id);
        assert_eq!(a.link_method, LinkMethod::ExactNhs);
        assert_ne!(a.local_pseudonym, b.local_pseudonym);
        // Stored values differ from what the agent sent.
        assert_ne!(a.nhs_pseudonym.unwrap(), hex::encode([9u8; 32]));
    }

    #[test]
    fn records_without_nhs_number_stay_apart() {
        let r = rekeyer();
        let a = r.identify("LA1", &[1; 32], &[]);
        let b = r.identify("RGD", &[1; 32], &[]);
        assert_ne!(a.person_id, b.person_id);
        assert_eq!(a.link_method, LinkMethod::Unlinked);
        // The same local record always gets the same person id.
        assert_eq!(a, r.identify("LA1", &[1; 32], &[]));
    }

    #[test]
    fn a_different_gateway_key_gives_unrelated_values() {
        let other = Rekeyer::new(&SecretKey::from_bytes([4; 32]));
        assert_ne!(
            rekeyer().identify("LA1", &[1; 32], &[9; 32]).person_id,
            other.identify("LA1", &[1; 32], &[9; 32]).person_id
        );
    }
}
