//! The linked population a gateway holds in memory for answers, and how it
//! keeps up with the data.
//!
//! The first answer loads everyone. After that, when the data generation
//! has moved on (a delivery, a linkage run, a retention sweep), answers keep
//! coming from the population held while it is brought up to date in the
//! background: only the people changed since are read again
//! ([`Storage::population_changes`]) and put in place of their old entries
//! ([`Population::updated`]), unless so many changed — or the change log no
//! longer reaches back far enough — that reading everyone is cheaper. Each
//! answer says which generation it reflects.
//!
//! A gateway holding one shard answers at the generation it is asked for
//! instead ([`Held::at`]): it catches up in the snapshot the asking gateway
//! shares, so it lands exactly there however often the data moves, and
//! keeps its last few generations for questions asked at one it has just
//! moved past.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Mutex;

use crate::analytics::{Interner, Population, Shard};
use crate::storage::{SnapshotId, Storage, StorageError};

/// The generations before the one held that a shard keeps for questions
/// asked at them. Each shares its unchanged people with the next, so one
/// costs little more than a pointer per person.
const EARLIER_KEPT: usize = 4;

/// How many changed person ids are read as changes, at most, for a
/// population of `n` people: a quarter of them (or 10,000); past that, one
/// scan of everyone is quicker than looking each up.
fn most_changed(n: usize) -> usize {
    (n / 4).max(10_000)
}

/// The population as one answer uses it.
pub(super) struct Loaded {
    /// The data generation it reflects.
    pub generation: i64,
    pub population: Arc<Population>,
    /// Newer data has arrived and is being read.
    pub newer_data_pending: bool,
}

/// The population held (everyone, or one shard's people), shared by every
/// answer.
#[derive(Clone)]
pub(super) struct Held {
    /// Whose people are held.
    shard: Shard,
    state: Arc<Mutex<State>>,
}

struct State {
    loaded: Option<(i64, Arc<Population>)>,
    /// The generations held before `loaded`, newest first (a shard's only).
    earlier: VecDeque<(i64, Arc<Population>)>,
    /// An update is under way (it has taken the interner).
    updating: bool,
    /// The texts the population shares, for the people read next.
    interner: Interner,
}

impl Held {
    /// Holds the people of `shard` ([`Shard::WHOLE`]: everyone), loaded
    /// when first asked for.
    pub fn new(shard: Shard) -> Self {
        Self {
            shard,
            state: Arc::new(Mutex::new(State {
                loaded: None,
                earlier: VecDeque::new(),
                updating: false,
                interner: Interner::default(),
            })),
        }
    }

    /// Whose people are held.
    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// The population as held: loaded on first use (the caller waits), then
    /// from memory, with an update started when the data has moved on.
    pub async fn get(&self, storage: &Storage) -> Result<Loaded, StorageError> {
        let generation = storage.data_generation().await?;
        let mut state = self.state.lock().await;
        let Some((at, population)) = &state.loaded else {
            let read = storage
                .population(&mut state.interner, self.shard, None)
                .await?;
            let population = Arc::new(Population::new(read.people));
            state.loaded = Some((read.generation, Arc::clone(&population)));
            return Ok(Loaded {
                generation: read.generation,
                population,
                newer_data_pending: false,
            });
        };
        let loaded = Loaded {
            generation: *at,
            population: Arc::clone(population),
            newer_data_pending: *at < generation,
        };
        if loaded.newer_data_pending && !state.updating {
            state.updating = true;
            let mut interner = std::mem::take(&mut state.interner);
            let (held, storage) = (self.clone(), storage.clone());
            let (at, population) = (loaded.generation, Arc::clone(&loaded.population));
            let shard = self.shard;
            tokio::spawn(async move {
                let updated = catch_up(&storage, at, &population, &mut interner, shard, None).await;
                let mut state = held.state.lock().await;
                state.updating = false;
                state.interner = interner;
                match updated {
                    Ok(updated) => state.loaded = Some(updated),
                    Err(error) => {
                        tracing::error!(%error, "bringing the population up to date failed; the next answer tries again")
                    }
                }
            });
        }
        Ok(loaded)
    }

    /// The population at exactly data generation `generation`, for a
    /// shard's part of an answer: as held, as kept from one of the last
    /// few generations, or brought up to it — read in `shared`, the
    /// snapshot the asking gateway exported at that generation, so it
    /// lands there whatever has been delivered since. `None` when this
    /// holds only newer generations (or, with no snapshot to read in,
    /// caught up past it): the asker asks again at a newer one. Questions
    /// wait for one another here; each catches up at most once.
    pub async fn at(
        &self,
        storage: &Storage,
        generation: i64,
        shared: Option<&SnapshotId>,
    ) -> Result<Option<Loaded>, StorageError> {
        let mut state = self.state.lock().await;
        let state = &mut *state;
        match state.loaded.clone() {
            None => {
                let read = storage
                    .population(&mut state.interner, self.shard, shared)
                    .await?;
                state.loaded = Some((read.generation, Arc::new(Population::new(read.people))));
            }
            Some((at, population)) if at < generation => {
                let updated = catch_up(
                    storage,
                    at,
                    &population,
                    &mut state.interner,
                    self.shard,
                    shared,
                )
                .await?;
                state.earlier.push_front((at, population));
                state.earlier.truncate(EARLIER_KEPT);
                state.loaded = Some(updated);
            }
            Some(_) => {}
        }
        Ok(state
            .loaded
            .iter()
            .chain(&state.earlier)
            .find(|(at, _)| *at == generation)
            .map(|(at, population)| Loaded {
                generation: *at,
                population: Arc::clone(population),
                newer_data_pending: false,
            }))
    }
}

/// `population`, loaded at generation `at`, brought up to the data (as
/// `shared` holds it, where given): only the people changed since read
/// again, or everyone when the change log no longer reaches back to `at` or
/// more changed than [`most_changed`] allows.
async fn catch_up(
    storage: &Storage,
    at: i64,
    population: &Population,
    interner: &mut Interner,
    shard: Shard,
    shared: Option<&SnapshotId>,
) -> Result<(i64, Arc<Population>), StorageError> {
    let started = Instant::now();
    // The change log counts every shard's people.
    let limit = most_changed(population.people().len() * shard.count as usize);
    let (generation, updated, everyone, read) = match storage
        .population_changes(at, limit, interner, shard, shared)
        .await?
    {
        Some(changes) => {
            let read = changes.people.len();
            let updated = population.updated(&changes.keys, changes.people);
            (changes.generation, updated, false, read)
        }
        None => {
            // A fresh interner: texts no one holds any more are let go.
            *interner = Interner::default();
            let read = storage.population(interner, shard, shared).await?;
            let people = read.people.len();
            (read.generation, Population::new(read.people), true, people)
        }
    };
    crate::metrics::population_updated(everyone, read);
    tracing::info!(
        generation,
        people_read = read,
        everyone,
        ms = started.elapsed().as_millis() as u64,
        "population brought up to date"
    );
    Ok((generation, Arc::new(updated)))
}
