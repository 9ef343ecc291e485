//! The keys an agency's records are released under: the agreement's
//! linkage key, shared by its agencies (NHS pseudonyms, fuzzy-linkage
//! encodings), and the agency's own key for its local ids, shared with
//! nobody (`local_id_key`).

use joinery_crypto::keys::{KeyError, SecretKey};

use crate::AgentConfig;

/// The keys an agency's records are released under.
pub struct ReleaseKeys {
    /// The agreement's linkage key, shared by its agencies.
    pub linkage: SecretKey,
    /// The key its local ids are pseudonymised under: its own
    /// (`local_id_key`), else the linkage key.
    pub local_ids: SecretKey,
}

impl ReleaseKeys {
    /// Loads the keys `config` names.
    pub fn load(config: &AgentConfig) -> Result<Self, KeyError> {
        let linkage = SecretKey::load(&config.linkage_key)?;
        let local_ids = match &config.local_id_key {
            Some(path) => SecretKey::load(path)?,
            None => linkage.clone(),
        };
        Ok(Self { linkage, local_ids })
    }
}
