//! NHS-number pseudonyms made through the agreement's keyholders
//! (`linkage.nhs_number_keyholders`), so that no agency holds a key that
//! computes one ([`joinery_crypto::oblivious`]).
//!
//! For each chunk of rows, the distinct NHS numbers are blinded afresh for
//! each keyholder, evaluated by it over mutual TLS (requests on every core
//! at once), checked against the public key the configuration pins for it,
//! and unblinded; the pseudonym is the HMAC, under the agreement's linkage
//! key, of the keyholders' outputs in the agreement's order. The keyholders
//! see only random elements; the gateway, as before, receives a 32-byte
//! pseudonym and re-keys it. A keyholder that cannot be reached is retried
//! for the configuration's `retry_for_secs`; a refusal (an allowance spent,
//! an agreement that does not name it) or an answer whose proof does not
//! verify (another key) stops the run, naming the keyholder. Numbers
//! pseudonymised on an earlier run are taken from the agent's cache
//! ([`crate::pseudonym_cache`]), not asked for again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use joinery_crypto::oblivious::{Blinded, Evaluated, ObliviousOutput, PublicKey};
use joinery_crypto::pseudonym::{Pseudonym, Pseudonymiser};
use joinery_proto::v1::EvaluateRequest;
use joinery_proto::v1::keyholder_client::KeyholderClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::AgentConfig;
use crate::error::AgentError;
use crate::keys::ReleaseKeys;
use crate::pseudonym_cache::PseudonymCache;

/// Most elements in one request (a keyholder takes at most 10,000). A
/// request's elements are blinded, evaluated, checked against its one proof
/// and unblinded together, one piece of work for a core, so a chunk's
/// numbers are cut into a request per core.
const MAX_PER_REQUEST: usize = 5_000;

/// A keyholder as the agent reaches it.
struct Connected {
    name: String,
    client: KeyholderClient<Channel>,
    public_key: PublicKey,
}

/// The agreement's keyholders, connected.
pub struct Keyholders {
    agreement: String,
    keyholders: Vec<Connected>,
    combine: Pseudonymiser,
    /// The pseudonyms made on earlier runs, and on this one.
    cache: Mutex<PseudonymCache>,
    retry_for: Duration,
    runtime: tokio::runtime::Handle,
}

impl Keyholders {
    /// Connects to each keyholder `names` lists (in that order) at the
    /// address the configuration gives it, and opens the pseudonyms made
    /// through them on earlier runs (in the spool directory).
    pub async fn connect(
        config: &AgentConfig,
        agreement: &str,
        names: &[String],
        keys: &ReleaseKeys,
        tls: rustls::ClientConfig,
    ) -> Result<Self, AgentError> {
        let combine = Pseudonymiser::new(&keys.linkage, "agent nhs-number through keyholders");
        // What the pseudonyms depend on: the agreement, each keyholder's
        // key, and the linkage key (through a keyed digest of nothing).
        let mut identity = agreement.as_bytes().to_vec();
        identity.extend_from_slice(&combine.pseudonymise(b""));
        let mut keyholders = Vec::new();
        for name in names {
            let endpoint = config
                .keyholders
                .iter()
                .find(|k| &k.name == name)
                .ok_or_else(|| {
                    AgentError::NotAllowed(format!(
                        "agreement {agreement} pseudonymises NHS numbers through keyholder {name}: add {{ name: {name}, address: HOST:PORT, public_key: HEX }} under keyholders in the agent configuration (`joinery keyholder public-key --agreement {agreement}` on the keyholder prints the key)"
                    ))
                })?;
            let public_key = hex::decode(endpoint.public_key.trim())
                .ok()
                .and_then(|bytes| joinery_crypto::oblivious::public_key_from_bytes(&bytes).ok())
                .ok_or_else(|| {
                    AgentError::NotAllowed(format!(
                        "keyholders: {name}'s public_key is not a keyholder's public key (64 hex digits, as `joinery keyholder public-key --agreement {agreement}` prints it)"
                    ))
                })?;
            identity.extend_from_slice(name.as_bytes());
            identity.push(0);
            identity.extend_from_slice(&public_key);
            let channel =
                joinery_proto::channel::connect(&endpoint.address, name, tls.clone()).await?;
            keyholders.push(Connected {
                name: name.clone(),
                client: KeyholderClient::new(channel),
                public_key,
            });
        }
        let cache = PseudonymCache::open(&config.spool_dir, &identity, &keys.local_ids)?;
        Ok(Self {
            agreement: agreement.to_owned(),
            keyholders,
            combine,
            cache: Mutex::new(cache),
            retry_for: Duration::from_secs(config.retry_for_secs),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// The pseudonyms of `numbers` (normalised NHS numbers), in order.
    /// Blocks: call it from the reader's thread, not the runtime's.
    pub fn pseudonymise(&self, numbers: &[&str]) -> Result<Vec<Pseudonym>, AgentError> {
        let mut by_number: HashMap<&str, Pseudonym> = HashMap::new();
        let mut distinct: Vec<&str> = Vec::new();
        {
            let cache = self.lock_cache();
            for &number in numbers {
                if by_number.contains_key(number) {
                    continue;
                }
                match cache.get(number) {
                    Some(pseudonym) => {
                        by_number.insert(number, pseudonym);
                    }
                    None => distinct.push(number),
                }
            }
        }
        distinct.sort_unstable();
        distinct.dedup();
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let per_request = distinct.len().div_ceil(cores).clamp(1, MAX_PER_REQUEST);
        let requests: Vec<&[&str]> = distinct.chunks(per_request).collect();
        // Every keyholder's requests at once, each on its own thread: one
        // keyholder's answer is awaited while another's is unblinded.
        let answered: Result<Vec<Vec<ObliviousOutput>>, AgentError> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .keyholders
                .iter()
                .flat_map(|keyholder| requests.iter().map(move |values| (keyholder, values)))
                .map(|(keyholder, values)| scope.spawn(move || self.outputs(keyholder, values)))
                .collect();
            handles
                .into_iter()
                .map(|handle| {
                    handle
                        .join()
                        .expect("a keyholder request's thread panicked")
                })
                .collect()
        });
        // In the keyholders' order, each one's outputs in the numbers' order.
        let answered = answered?;
        let mut combined: Vec<Vec<u8>> = vec![Vec::new(); distinct.len()];
        for outputs in answered.chunks(requests.len().max(1)) {
            for (combined, output) in combined.iter_mut().zip(outputs.iter().flatten()) {
                combined.extend_from_slice(output);
            }
        }
        let made: Vec<(&str, Pseudonym)> = distinct
            .iter()
            .zip(&combined)
            .map(|(n, c)| (*n, self.combine.pseudonymise(c)))
            .collect();
        self.lock_cache().insert_all(made.iter().copied())?;
        by_number.extend(made);
        Ok(numbers.iter().map(|n| by_number[n]).collect())
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, PseudonymCache> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `values` blinded, evaluated by `keyholder`, checked against its
    /// pinned public key and unblinded.
    fn outputs(
        &self,
        keyholder: &Connected,
        values: &[&str],
    ) -> Result<Vec<ObliviousOutput>, AgentError> {
        let blinded = Blinded::new(values);
        let answer = self.evaluate(
            &keyholder.name,
            keyholder.client.clone(),
            blinded.elements.clone(),
        )?;
        blinded
            .finalize(values, &answer, &keyholder.public_key)
            .map_err(|e| AgentError::Keyholder {
                name: keyholder.name.clone(),
                message: e.to_string(),
            })
    }

    /// One request to one keyholder, retried while it cannot be reached.
    fn evaluate(
        &self,
        name: &str,
        mut client: KeyholderClient<Channel>,
        blinded: Vec<Vec<u8>>,
    ) -> Result<Evaluated, AgentError> {
        let request = EvaluateRequest {
            agreement: self.agreement.clone(),
            blinded,
        };
        let started = std::time::Instant::now();
        let mut delay = Duration::from_millis(200);
        loop {
            let answer = self
                .runtime
                .block_on(client.evaluate(request.clone()))
                .map(tonic::Response::into_inner);
            match answer {
                Ok(answer) if answer.evaluated.len() == request.blinded.len() => {
                    return Ok(Evaluated {
                        elements: answer.evaluated,
                        proof: answer.proof,
                    });
                }
                Ok(answer) => {
                    return Err(AgentError::Keyholder {
                        name: name.to_owned(),
                        message: format!(
                            "answered {} elements for {}",
                            answer.evaluated.len(),
                            request.blinded.len()
                        ),
                    });
                }
                Err(status)
                    if matches!(status.code(), Code::Unavailable | Code::Unknown)
                        && started.elapsed() < self.retry_for =>
                {
                    tracing::warn!(keyholder = name, reason = %joinery_proto::channel::reason(&status), "keyholder unreachable: retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(status) => {
                    return Err(AgentError::Keyholder {
                        name: name.to_owned(),
                        message: joinery_proto::channel::reason(&status),
                    });
                }
            }
        }
    }
}
