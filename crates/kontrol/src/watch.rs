//! Registry of running watchers (`getKites` with a watch function), so that `cancelWatcher`
//! and disconnects can stop them. Bounded per owner and in total.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};

use serde_json::Value;
use tokio::task::AbortHandle;

use crate::error::KontrolError;

/// Delivers one watch event to the watching peer (e.g. by calling its `watchHandler`).
/// Resolves to `false` once the peer is gone, which ends the watcher.
pub type WatchSink = Box<dyn FnMut(Value) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send>;

struct Entry {
    owner: String,
    abort: AbortHandle,
}

/// Running watchers by id.
pub(crate) struct Watches {
    entries: Mutex<HashMap<String, Entry>>,
    per_owner: usize,
    total: usize,
}

impl Watches {
    pub fn new(per_owner: usize, total: usize) -> Self {
        Watches {
            entries: Mutex::new(HashMap::new()),
            per_owner,
            total,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fails if `owner` may not start another watcher.
    pub fn check_room(&self, owner: &str) -> Result<(), KontrolError> {
        let entries = self.lock();
        if entries.len() >= self.total {
            return Err(KontrolError::TooManyWatchers(self.total));
        }
        if entries.values().filter(|e| e.owner == owner).count() >= self.per_owner {
            return Err(KontrolError::TooManyWatchers(self.per_owner));
        }
        Ok(())
    }

    /// Records a started watcher (re-checking the limits); on refusal the task is aborted.
    pub fn insert(&self, id: String, owner: &str, abort: AbortHandle) -> Result<(), KontrolError> {
        let mut entries = self.lock();
        let owned = entries.values().filter(|e| e.owner == owner).count();
        if entries.len() >= self.total || owned >= self.per_owner {
            abort.abort();
            return Err(KontrolError::TooManyWatchers(if owned >= self.per_owner {
                self.per_owner
            } else {
                self.total
            }));
        }
        entries.insert(
            id,
            Entry {
                owner: owner.to_owned(),
                abort,
            },
        );
        Ok(())
    }

    /// Forgets a watcher that ended by itself.
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Stops watcher `id` if `owner` owns it.
    pub fn cancel(&self, owner: &str, id: &str) -> Result<(), KontrolError> {
        let mut entries = self.lock();
        match entries.get(id) {
            Some(e) if e.owner == owner => {
                if let Some(e) = entries.remove(id) {
                    e.abort.abort();
                }
                Ok(())
            }
            _ => Err(KontrolError::WatcherNotFound(id.to_owned())),
        }
    }

    /// Stops every watcher of `owner`; returns how many.
    pub fn cancel_owner(&self, owner: &str) -> usize {
        let mut entries = self.lock();
        let mut n = 0;
        entries.retain(|_, e| {
            if e.owner == owner {
                e.abort.abort();
                n += 1;
                false
            } else {
                true
            }
        });
        n
    }

    /// Stops every watcher.
    pub fn cancel_all(&self) {
        for (_, e) in self.lock().drain() {
            e.abort.abort();
        }
    }

    /// Number of running watchers.
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}
