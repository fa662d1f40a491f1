//! The table of local functions a connection has sent to its peer, by callback id.

use std::collections::HashMap;

use serde_json::Value;

use super::scrub::{scrub, ScrubbedFunction};
use super::{Callbacks, Path, PathElement};

/// Default for [`CallbackTable::new`]'s `max_live`: 65536 live entries per connection.
pub const DEFAULT_MAX_LIVE_CALLBACKS: usize = 65_536;

/// How long a table entry lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// A response callback: removed when it is called, or explicitly (on timeout) with
    /// [`CallbackTable::remove`].
    Once,
    /// A user callback: may be called any number of times; lives until the table is
    /// dropped or cleared (connection closed).
    Persistent,
}

/// Why an entry could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackTableError {
    /// The table already holds its maximum number of live entries.
    #[error("too many live callbacks (limit {max})")]
    Full {
        /// The limit.
        max: usize,
    },
    /// The id is already in use.
    #[error("callback id {0} is already in use")]
    DuplicateId(u64),
}

/// What [`CallbackTable::take`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken<'a, F> {
    /// A [`Lifetime::Once`] entry, now removed from the table.
    Once(F),
    /// A [`Lifetime::Persistent`] entry, still in the table.
    Persistent(&'a F),
}

/// Local functions by callback id, with the per-connection id counter.
///
/// Ids come from one counter that starts at 0 and never goes back, so an id is never
/// reused on a connection (PROTOCOL.md 3.2). `F` is whatever the runtime stores (a boxed
/// closure, a channel sender...).
///
/// ```
/// use kite_protocol::dnode::{function_marker, CallbackTable, Lifetime, Taken};
/// use serde_json::json;
///
/// let mut table: CallbackTable<&str> = CallbackTable::new(100);
/// let mut args = json!([{"withArgs": [function_marker(1)], "responseCallback": function_marker(0)}]);
/// let mut response_id = None;
/// let callbacks = table
///     .scrub_and_register(&mut args, |marker, id| match marker {
///         0 => {
///             response_id = Some(id);
///             Some(("response", Lifetime::Once))
///         }
///         1 => Some(("on tick", Lifetime::Persistent)),
///         _ => None,
///     })
///     .unwrap();
/// assert_eq!(callbacks.len(), 2);
/// let id = response_id.unwrap();
/// assert_eq!(table.take(id), Some(Taken::Once("response")));
/// assert_eq!(table.take(id), None);
/// assert_eq!(table.take(1), Some(Taken::Persistent(&"on tick")));
/// assert_eq!(table.len(), 1);
/// ```
#[derive(Debug)]
pub struct CallbackTable<F> {
    entries: HashMap<u64, (F, Lifetime)>,
    next_id: u64,
    max_live: usize,
}

impl<F> Default for CallbackTable<F> {
    fn default() -> CallbackTable<F> {
        CallbackTable::new(DEFAULT_MAX_LIVE_CALLBACKS)
    }
}

impl<F> CallbackTable<F> {
    /// An empty table holding at most `max_live` entries at a time.
    pub fn new(max_live: usize) -> CallbackTable<F> {
        CallbackTable {
            entries: HashMap::new(),
            next_id: 0,
            max_live,
        }
    }

    /// The id counter, for passing to [`scrub`](super::scrub()) directly.
    pub fn next_id_mut(&mut self) -> &mut u64 {
        &mut self.next_id
    }

    /// The id the next allocation will return.
    pub fn peek_next_id(&self) -> u64 {
        self.next_id
    }

    /// Takes a fresh id from the counter.
    pub fn allocate_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Stores `f` under `id` (normally an id from this table's counter).
    pub fn insert(&mut self, id: u64, f: F, lifetime: Lifetime) -> Result<(), CallbackTableError> {
        if self.entries.contains_key(&id) {
            return Err(CallbackTableError::DuplicateId(id));
        }
        if self.entries.len() >= self.max_live {
            return Err(CallbackTableError::Full { max: self.max_live });
        }
        self.entries.insert(id, (f, lifetime));
        Ok(())
    }

    /// Allocates an id and stores `f` under it.
    pub fn register(&mut self, f: F, lifetime: Lifetime) -> Result<u64, CallbackTableError> {
        if self.entries.len() >= self.max_live {
            return Err(CallbackTableError::Full { max: self.max_live });
        }
        let id = self.allocate_id();
        self.insert(id, f, lifetime)?;
        Ok(id)
    }

    /// Scrubs `arguments` (see [`scrub`](super::scrub())) with this table's counter and
    /// stores a function for every marker: `resolve(marker, id)` returns the function and
    /// its lifetime, or `None` when the marker names no function (then the placeholder
    /// becomes `null` and no callback is listed). Returns the message's `callbacks`.
    ///
    /// Fails without storing anything when the table lacks room for every marker found;
    /// `arguments` is then already scrubbed and must not be sent. Ids drawn are not
    /// reused either way.
    pub fn scrub_and_register<R>(
        &mut self,
        arguments: &mut Value,
        mut resolve: R,
    ) -> Result<Callbacks, CallbackTableError>
    where
        R: FnMut(usize, u64) -> Option<(F, Lifetime)>,
    {
        let scrubbed = scrub(arguments, &mut self.next_id);
        if scrubbed.is_empty() {
            return Ok(Callbacks::new());
        }
        if self.entries.len() + scrubbed.len() > self.max_live {
            return Err(CallbackTableError::Full { max: self.max_live });
        }
        let mut callbacks = Callbacks::new();
        for ScrubbedFunction { id, marker, path } in scrubbed {
            match resolve(marker, id) {
                Some((f, lifetime)) => {
                    self.entries.insert(id, (f, lifetime));
                    callbacks.push(id, path);
                }
                None => set_null(arguments, &path),
            }
        }
        Ok(callbacks)
    }

    /// Looks `id` up for a call: a `Once` entry is removed and returned by value, a
    /// `Persistent` one is borrowed. `None` for unknown ids (drop the message silently).
    pub fn take(&mut self, id: u64) -> Option<Taken<'_, F>> {
        match self.entries.get(&id)?.1 {
            Lifetime::Once => self.entries.remove(&id).map(|(f, _)| Taken::Once(f)),
            Lifetime::Persistent => self.entries.get(&id).map(|(f, _)| Taken::Persistent(f)),
        }
    }

    /// Removes an entry whatever its lifetime (e.g. a response callback on timeout).
    pub fn remove(&mut self, id: u64) -> Option<F> {
        self.entries.remove(&id).map(|(f, _)| f)
    }

    /// The entry under `id`, without removing it.
    pub fn get(&self, id: u64) -> Option<&F> {
        self.entries.get(&id).map(|(f, _)| f)
    }

    /// The lifetime of the entry under `id`.
    pub fn lifetime(&self, id: u64) -> Option<Lifetime> {
        self.entries.get(&id).map(|(_, l)| *l)
    }

    /// Whether `id` is live.
    pub fn contains(&self, id: u64) -> bool {
        self.entries.contains_key(&id)
    }

    /// Number of live entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no live entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The maximum number of live entries.
    pub fn max_live(&self) -> usize {
        self.max_live
    }

    /// Removes and returns every entry (connection closed: fail the pending `Once`
    /// entries with a `disconnect` error, drop the rest). The id counter is kept.
    pub fn drain(&mut self) -> impl Iterator<Item = (u64, F, Lifetime)> + '_ {
        self.entries.drain().map(|(id, (f, l))| (id, f, l))
    }
}

/// Sets the value at `path` (which [`scrub`] just produced, so it exists) to `null`.
fn set_null(root: &mut Value, path: &Path) {
    let mut cur = root;
    for e in path {
        let next = match (cur, e) {
            (Value::Array(a), PathElement::Index(i)) => {
                usize::try_from(*i).ok().and_then(|i| a.get_mut(i))
            }
            (Value::Object(m), PathElement::Key(k)) => m.get_mut(k.as_str()),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    *cur = Value::Null;
}

#[cfg(test)]
mod tests {
    use super::super::function_marker;
    use super::*;
    use serde_json::json;

    #[test]
    fn lifecycle() {
        let mut t: CallbackTable<String> = CallbackTable::new(3);
        let a = t.register("a".into(), Lifetime::Once).unwrap();
        let b = t.register("b".into(), Lifetime::Persistent).unwrap();
        assert_eq!((a, b), (0, 1));
        assert_eq!(t.lifetime(a), Some(Lifetime::Once));
        assert_eq!(
            t.insert(b, "x".into(), Lifetime::Once),
            Err(CallbackTableError::DuplicateId(1))
        );
        let c = t.allocate_id();
        t.insert(c, "c".into(), Lifetime::Once).unwrap();
        assert_eq!(
            t.register("d".into(), Lifetime::Once),
            Err(CallbackTableError::Full { max: 3 })
        );
        assert_eq!(t.peek_next_id(), 3, "a refused registration burns no id");
        assert_eq!(t.take(b), Some(Taken::Persistent(&"b".to_string())));
        assert_eq!(t.take(b), Some(Taken::Persistent(&"b".to_string())));
        assert_eq!(t.take(a), Some(Taken::Once("a".to_string())));
        assert_eq!(t.take(a), None);
        assert_eq!(t.remove(c), Some("c".to_string()));
        assert_eq!(t.take(99), None);
        assert_eq!(t.len(), 1);
        let d = t.register("d".into(), Lifetime::Once).unwrap();
        assert_eq!(d, 3, "ids are never reused");
        let mut drained: Vec<_> = t.drain().collect();
        drained.sort_by_key(|e| e.0);
        assert_eq!(
            drained,
            vec![
                (1, "b".to_string(), Lifetime::Persistent),
                (3, "d".to_string(), Lifetime::Once)
            ]
        );
        assert!(t.is_empty());
        assert_eq!(t.max_live(), 3);
    }

    #[test]
    fn scrub_and_register_is_all_or_nothing() {
        let mut t: CallbackTable<usize> = CallbackTable::new(2);
        let mut args = json!([function_marker(0), function_marker(1), function_marker(2)]);
        assert_eq!(
            t.scrub_and_register(&mut args, |m, _| Some((m, Lifetime::Once))),
            Err(CallbackTableError::Full { max: 2 })
        );
        assert!(t.is_empty());
        assert_eq!(t.peek_next_id(), 3);
        let mut args = json!([{"f": function_marker(0), "forged": function_marker(9)}]);
        let cbs = t
            .scrub_and_register(&mut args, |m, _| {
                (m == 0).then_some((m, Lifetime::Persistent))
            })
            .unwrap();
        assert_eq!(args, json!([{"f": "[Function]", "forged": null}]));
        assert_eq!(cbs.len(), 1);
        assert_eq!(
            cbs.get(3).unwrap(),
            &vec![PathElement::Index(0), "f".into()]
        );
        assert_eq!(t.get(3), Some(&0));
        let mut none = json!([1, 2]);
        assert!(t
            .scrub_and_register(&mut none, |_, _| None)
            .unwrap()
            .is_empty());
    }
}
