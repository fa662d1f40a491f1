//! Scrubbing (outgoing functions → `"[Function]"` + `callbacks`) and unscrubbing
//! (incoming `callbacks` → markers in the argument tree), PROTOCOL.md 3.2–3.3.
//!
//! Functions never appear in a `serde_json::Value`, so both directions use **marker
//! strings** that start with a NUL character, which no sane payload contains:
//!
//! * `"\u{0}kite-fn:<n>"` ([`function_marker`]): a local function, `n` indexing a list of
//!   functions owned by the caller (the runtime) for the message being built. [`scrub`]
//!   turns each into `"[Function]"` and reports its id and path.
//! * `"\u{0}kite-cb:<id>"` ([`callback_marker`]): a function the peer sent, with the
//!   peer's callback id. [`unscrub`] writes these; the runtime's deserializer for remote
//!   functions recognises them.
//!
//! Markers are not authenticated: a peer could send such a string as plain data. For
//! callback markers that is harmless (a proxy built from it can only invoke the same peer's
//! callback ids, which the peer could list in `callbacks` anyway). Data echoed back to a
//! peer may contain a forged function marker, so the runtime must treat a
//! [`ScrubbedFunction::marker`] that is not in its list as "no function" (see
//! [`CallbackTable::scrub_and_register`](super::CallbackTable::scrub_and_register), which
//! does so by writing `null` there).

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::{Callbacks, Link, Path, PathElement, MAX_JSON_DEPTH};

/// What a function is replaced with on the wire.
pub const FUNCTION_PLACEHOLDER: &str = "[Function]";
/// What kite.js writes where a reference would close a cycle (see [`apply_links`]).
pub const CIRCULAR_PLACEHOLDER: &str = "[Circular]";

const FUNCTION_PREFIX: &str = "\u{0}kite-fn:";
const CALLBACK_PREFIX: &str = "\u{0}kite-cb:";

/// The marker for local function number `n` (an index into the caller's list).
pub fn function_marker(n: usize) -> String {
    format!("{FUNCTION_PREFIX}{n}")
}

/// The marker for the peer's callback `id`.
pub fn callback_marker(id: u64) -> String {
    format!("{CALLBACK_PREFIX}{id}")
}

fn parse_marker(s: &str, prefix: &str) -> Option<u64> {
    // Cheap rejection: almost no string starts with NUL.
    if s.as_bytes().first() != Some(&0) {
        return None;
    }
    let digits = s.strip_prefix(prefix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The `n` of a [`function_marker`], if `s` is one.
pub fn parse_function_marker(s: &str) -> Option<usize> {
    parse_marker(s, FUNCTION_PREFIX).and_then(|n| usize::try_from(n).ok())
}

/// The id of a [`callback_marker`], if `s` is one.
pub fn parse_callback_marker(s: &str) -> Option<u64> {
    parse_marker(s, CALLBACK_PREFIX)
}

/// One function found by [`scrub`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrubbedFunction {
    /// The callback id assigned from the connection's counter.
    pub id: u64,
    /// The `n` of the function marker (index into the caller's function list).
    pub marker: usize,
    /// Where it was, from the root of `arguments`.
    pub path: Path,
}

enum Frame<'a> {
    Array {
        iter: std::iter::Enumerate<std::slice::IterMut<'a, Value>>,
        current: usize,
    },
    Object {
        iter: serde_json::map::IterMut<'a>,
        current: &'a str,
    },
}

impl Frame<'_> {
    fn element(&self) -> PathElement {
        match self {
            Frame::Array { current, .. } => PathElement::Index(*current as u64),
            Frame::Object { current, .. } => PathElement::Key((*current).to_string()),
        }
    }
}

fn frame_of(v: &mut Value) -> Option<Frame<'_>> {
    match v {
        Value::Array(a) => Some(Frame::Array {
            iter: a.iter_mut().enumerate(),
            current: 0,
        }),
        Value::Object(m) => Some(Frame::Object {
            iter: m.iter_mut(),
            current: "",
        }),
        _ => None,
    }
}

/// Replaces every [`function_marker`] inside `arguments` (the arguments array) with
/// `"[Function]"`, assigning ids `*next_id, *next_id + 1, ...` in depth-first order
/// (object keys in map order, array elements in index order). Returns what it replaced,
/// in id order; paths use integers for array indexes and start with the index into
/// `arguments`. Iterative (no recursion); allocation-free for an array of numbers, booleans
/// and nulls (the usual arguments), and the result allocates only when there are markers.
/// A root that is itself a marker is not replaced (it would have an empty path).
pub fn scrub(arguments: &mut Value, next_id: &mut u64) -> Vec<ScrubbedFunction> {
    // The usual arguments, numbers, booleans and nulls in an array, hold no marker: no
    // stack to allocate.
    if let Value::Array(a) = arguments {
        if !a
            .iter()
            .any(|e| matches!(e, Value::String(_) | Value::Array(_) | Value::Object(_)))
        {
            return Vec::new();
        }
    }
    let mut found = Vec::new();
    let mut stack: Vec<Frame<'_>> = Vec::new();
    stack.extend(frame_of(arguments));
    while let Some(top) = stack.last_mut() {
        let child: &mut Value = match top {
            Frame::Array { iter, current } => match iter.next() {
                Some((i, v)) => {
                    *current = i;
                    v
                }
                None => {
                    stack.pop();
                    continue;
                }
            },
            Frame::Object { iter, current } => match iter.next() {
                Some((k, v)) => {
                    *current = k.as_str();
                    v
                }
                None => {
                    stack.pop();
                    continue;
                }
            },
        };
        if let Value::String(s) = child {
            if let Some(marker) = parse_function_marker(s) {
                found.push(ScrubbedFunction {
                    id: *next_id,
                    marker,
                    path: stack.iter().map(Frame::element).collect(),
                });
                *next_id += 1;
                *child = Value::String(FUNCTION_PLACEHOLDER.to_string());
            }
        } else {
            stack.extend(frame_of(child));
        }
    }
    found
}

/// What [`unscrub`] (and [`super::Message::unscrub`]) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnscrubReport {
    /// Callback markers placed.
    pub installed: usize,
    /// Callbacks whose path runs through a missing object key (silently ignored, as Go
    /// does).
    pub missing: usize,
    /// Callbacks with unusable paths, ignored: empty, an index out of range or not a
    /// canonical index, running into a scalar, or rejected while decoding
    /// ([`Callbacks::invalid_ids`]). Worth a debug log.
    pub invalid: usize,
    /// Links applied (see [`apply_links`]).
    pub links_applied: usize,
    /// Links left alone (cyclic, unusable or over budget).
    pub links_ignored: usize,
}

pub(crate) enum Placed {
    Done,
    Missing,
    Invalid,
}

fn key_of(e: &PathElement) -> Cow<'_, str> {
    match e {
        PathElement::Key(k) => Cow::Borrowed(k),
        PathElement::Index(i) => Cow::Owned(i.to_string()),
    }
}

/// Follows `path` from `root`.
fn follow_mut<'v>(root: &'v mut Value, path: &[PathElement]) -> Result<&'v mut Value, Placed> {
    let mut cur = root;
    for e in path {
        cur = match cur {
            Value::Array(a) => {
                let i = e.as_index().ok_or(Placed::Invalid)?;
                a.get_mut(i).ok_or(Placed::Invalid)?
            }
            Value::Object(m) => m.get_mut(key_of(e).as_ref()).ok_or(Placed::Missing)?,
            _ => return Err(Placed::Invalid),
        };
    }
    Ok(cur)
}

fn follow<'v>(root: &'v Value, path: &[PathElement]) -> Option<&'v Value> {
    let mut cur = root;
    for e in path {
        cur = match cur {
            Value::Array(a) => a.get(e.as_index()?)?,
            Value::Object(m) => m.get(key_of(e).as_ref())?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Sets the value at `path`. The parent must exist; an array index must be in range; a
/// missing last object key is inserted.
pub(crate) fn place(root: &mut Value, path: &[PathElement], value: Value) -> Placed {
    let Some((last, parents)) = path.split_last() else {
        return Placed::Invalid;
    };
    let parent = match follow_mut(root, parents) {
        Ok(p) => p,
        Err(e) => return e,
    };
    match parent {
        Value::Array(a) => match last.as_index().and_then(|i| a.get_mut(i)) {
            Some(slot) => {
                *slot = value;
                Placed::Done
            }
            None => Placed::Invalid,
        },
        Value::Object(m) => {
            insert(m, last, value);
            Placed::Done
        }
        _ => Placed::Invalid,
    }
}

fn insert(m: &mut Map<String, Value>, key: &PathElement, value: Value) {
    match key {
        PathElement::Key(k) => match m.get_mut(k.as_str()) {
            Some(slot) => *slot = value,
            None => {
                m.insert(k.clone(), value);
            }
        },
        PathElement::Index(i) => {
            m.insert(i.to_string(), value);
        }
    }
}

/// Puts a [`callback_marker`] at every callback's path in `arguments`, in wire order,
/// whatever was there (`"[Function]"`, `null`, anything).
///
/// Path rules (PROTOCOL.md 3.3): elements may be strings or integers for array indexes.
/// A path through a missing object key is ignored (counted as `missing`), **except** when
/// only the last element is missing: then the key is inserted, so the callback exists
/// (e.g. a `responseCallback` the sender listed in `callbacks` but left out of the
/// object). Empty paths, out-of-range or non-canonical indexes and paths running into a
/// scalar are ignored and counted as `invalid`, as are ids rejected while decoding.
pub fn unscrub(arguments: &mut Value, callbacks: &Callbacks) -> UnscrubReport {
    let mut report = UnscrubReport {
        invalid: callbacks.invalid_ids().len(),
        ..UnscrubReport::default()
    };
    for (id, path) in callbacks.iter() {
        match place(arguments, path, Value::String(callback_marker(id))) {
            Placed::Done => report.installed += 1,
            Placed::Missing => report.missing += 1,
            Placed::Invalid => report.invalid += 1,
        }
    }
    report
}

/// Size and depth of `v` if it has at most `budget` values, else `None`.
fn measure(v: &Value, budget: usize) -> Option<(usize, usize)> {
    let mut count = 0usize;
    let mut max_depth = 0usize;
    let mut stack = vec![(v, 1usize)];
    while let Some((x, depth)) = stack.pop() {
        count += 1;
        max_depth = max_depth.max(depth);
        if count + stack.len() > budget {
            return None;
        }
        match x {
            Value::Array(a) => {
                if count + stack.len() + a.len() > budget {
                    return None;
                }
                stack.extend(a.iter().map(|c| (c, depth + 1)));
            }
            Value::Object(m) => {
                if count + stack.len() + m.len() > budget {
                    return None;
                }
                stack.extend(m.values().map(|c| (c, depth + 1)));
            }
            _ => {}
        }
    }
    Some((count, max_depth))
}

/// Applies kite.js `links` (PROTOCOL.md 3.2/3.3, Q5): the value at `from` is **copied** to
/// `to` (JSON has no shared references). A link whose `to` lies inside (or at) its `from`
/// is a cycle and is left alone, so the `"[Circular]"` placeholder stays. A link is also
/// left alone when either path cannot be followed, when the copy would nest deeper than
/// [`MAX_JSON_DEPTH`], or when copying it would exceed `max_values` values in total for
/// this call (links can otherwise amplify a small message enormously). Returns
/// `(applied, ignored)`.
pub fn apply_links(arguments: &mut Value, links: &[Link], max_values: usize) -> (usize, usize) {
    let (mut applied, mut ignored) = (0, 0);
    let mut budget = max_values;
    for link in links {
        let cyclic = link.to.len() >= link.from.len()
            && link.from.iter().zip(&link.to).all(|(a, b)| a.same_place(b));
        let copy = if cyclic || link.to.is_empty() {
            None
        } else {
            follow(arguments, &link.from).and_then(|src| {
                let (count, depth) = measure(src, budget)?;
                (link.to.len() + depth <= MAX_JSON_DEPTH).then(|| (count, src.clone()))
            })
        };
        let done = copy.is_some_and(|(count, value)| {
            let ok = matches!(place(arguments, &link.to, value), Placed::Done);
            if ok {
                budget -= count;
            }
            ok
        });
        if done {
            applied += 1;
        } else {
            ignored += 1;
        }
    }
    (applied, ignored)
}

#[cfg(test)]
mod tests {
    use super::super::{Limits, Message};
    use super::*;
    use serde_json::json;

    fn p(elems: &[Value]) -> Path {
        elems
            .iter()
            .map(|e| match e {
                Value::String(s) => PathElement::Key(s.clone()),
                Value::Number(n) => PathElement::Index(n.as_u64().unwrap()),
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn markers_round_trip() {
        assert_eq!(parse_function_marker(&function_marker(7)), Some(7));
        assert_eq!(
            parse_callback_marker(&callback_marker(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_callback_marker(&function_marker(7)), None);
        assert_eq!(parse_function_marker(&callback_marker(7)), None);
        for bad in [
            "",
            "[Function]",
            "\u{0}kite-fn:",
            "\u{0}kite-fn:x",
            "\u{0}kite-fn:-1",
            "kite-fn:1",
            "\u{0}kite-fn:99999999999999999999999",
        ] {
            assert_eq!(parse_function_marker(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn scrubs_depth_first_in_key_order() {
        let f = function_marker;
        let mut args = json!([
            {"withArgs": [3, f(1)], "responseCallback": f(0), "kite": {"name": "x"}},
            [f(2), {"b": f(3), "a": [null, f(4)]}],
            f(5)
        ]);
        let mut next = 10;
        let found = scrub(&mut args, &mut next);
        assert_eq!(next, 16);
        let got: Vec<(u64, usize, Path)> = found
            .into_iter()
            .map(|s| (s.id, s.marker, s.path))
            .collect();
        assert_eq!(
            got,
            vec![
                (10, 0, p(&[json!(0), json!("responseCallback")])),
                (11, 1, p(&[json!(0), json!("withArgs"), json!(1)])),
                (12, 2, p(&[json!(1), json!(0)])),
                (13, 4, p(&[json!(1), json!(1), json!("a"), json!(1)])),
                (14, 3, p(&[json!(1), json!(1), json!("b")])),
                (15, 5, p(&[json!(2)])),
            ]
        );
        assert_eq!(
            args,
            json!([
                {"withArgs": [3, "[Function]"], "responseCallback": "[Function]", "kite": {"name": "x"}},
                ["[Function]", {"b": "[Function]", "a": [null, "[Function]"]}],
                "[Function]"
            ])
        );
        let mut plain = json!([1, "two", {"three": [3, null, true]}]);
        let before = plain.clone();
        assert!(scrub(&mut plain, &mut next).is_empty());
        assert_eq!(plain, before);
        let mut root = Value::String(f(0));
        assert!(scrub(&mut root, &mut next).is_empty());
    }

    #[test]
    fn scrub_of_flat_arguments() {
        // Numbers, booleans and nulls only: nothing replaced, ids untouched.
        let mut args = json!([4, 1.5, true, null]);
        let mut next = 3;
        assert!(scrub(&mut args, &mut next).is_empty());
        assert_eq!(args, json!([4, 1.5, true, null]));
        assert_eq!(next, 3);
        // One marker among them still goes through the full walk.
        let mut args = json!([4, function_marker(0), null]);
        let found = scrub(&mut args, &mut next);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].id, 3);
        assert_eq!(found[0].path, p(&[json!(1)]));
        assert_eq!(args, json!([4, "[Function]", null]));
        assert_eq!(next, 4);
    }

    #[test]
    fn scrub_handles_deep_trees_without_recursion() {
        let mut v = Value::String(function_marker(0));
        for _ in 0..100_000 {
            v = Value::Array(vec![v]);
        }
        let mut next = 0;
        let found = scrub(&mut v, &mut next);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path.len(), 100_000);
        // Dismantle iteratively: dropping a 100k-deep Value recursively could overflow.
        let mut stack = vec![v];
        while let Some(x) = stack.pop() {
            if let Value::Array(a) = x {
                stack.extend(a);
            }
        }
    }

    #[test]
    fn unscrub_places_markers_and_counts_the_rest() {
        let cb = callback_marker;
        let text = r#"{"method":"m","arguments":[{"a":[1,"[Function]"],"o":{}},"[Function]",5],
            "callbacks":{"7":["0","a","1"],"9":[1],"10":[0,"o","new"],"11":[0,"nokey","x"],
            "12":[0,"a",5],"13":[2,"x"],"14":[],"15":[3],"16":[0,"a","01"],"17":[0,true]}}"#;
        let mut m = Message::decode(text, &Limits::default()).unwrap();
        let report = m.unscrub(&Limits::default());
        assert_eq!(
            m.arguments,
            json!([{"a":[1, cb(7)], "o": {"new": cb(10)}}, cb(9), 5])
        );
        assert_eq!(
            report,
            UnscrubReport {
                installed: 3,
                missing: 1,
                invalid: 6,
                links_applied: 0,
                links_ignored: 0
            }
        );
    }

    #[test]
    fn links_copy_acyclic_values_and_leave_cycles() {
        let text = r#"{"method":"m","arguments":[{"a":5,"b":[{"c":5},"[Circular]"]},{"x":{"y":[1,2]}},"slot"],
            "links":[{"from":["0"],"to":["0","b","1"]},{"from":[1,"x"],"to":[2]},
                     {"from":[9],"to":[1]},{"from":[1],"to":[]}]}"#;
        let mut m = Message::decode(text, &Limits::default()).unwrap();
        let report = m.unscrub(&Limits::default());
        assert_eq!(
            m.arguments,
            json!([{"a":5,"b":[{"c":5},"[Circular]"]},{"x":{"y":[1,2]}},{"y":[1,2]}])
        );
        assert_eq!((report.links_applied, report.links_ignored), (1, 3));
    }

    #[test]
    fn link_budget_stops_amplification() {
        let big: Vec<Value> = (0..100).map(Value::from).collect();
        let mut args = json!([big, null, null, null]);
        let links: Vec<Link> = (1..4)
            .map(|i| Link {
                from: vec![PathElement::Index(0)],
                to: vec![PathElement::Index(i)],
            })
            .collect();
        // Each copy is 101 values; a budget of 250 allows two.
        assert_eq!(apply_links(&mut args, &links, 250), (2, 1));
        assert!(args[3].is_null());
        // Depth: a copy that would nest deeper than MAX_JSON_DEPTH is refused.
        let mut deep = json!({});
        for _ in 0..MAX_JSON_DEPTH - 1 {
            deep = json!({ "k": deep });
        }
        let mut args = json!([[[1]], deep]);
        let deep_to: Path = std::iter::once(PathElement::Index(1))
            .chain((0..MAX_JSON_DEPTH - 1).map(|_| PathElement::Key("k".into())))
            .collect();
        let shallow = Link {
            from: vec![PathElement::Index(0)],
            to: deep_to[..3].to_vec(),
        };
        let link = Link {
            from: vec![PathElement::Index(0)],
            to: deep_to,
        };
        assert_eq!(apply_links(&mut args, &[link], 1000), (0, 1));
        assert_eq!(apply_links(&mut args, &[shallow], 1000), (1, 0));
        assert_eq!(args[1]["k"]["k"], json!([[1]]));
    }
}
