//! Functions that travel as arguments (PROTOCOL.md 3.2–3.4).
//!
//! * [`Function`]: a local closure. Put it anywhere in the arguments of a call (or in a
//!   handler's result); when the value is serialized it is registered on the connection
//!   under a fresh callback id and goes out as `"[Function]"`. The peer may call it any
//!   number of times; each invocation runs on the connection's read loop, in arrival order.
//! * [`RemoteFunction`]: a function the peer sent us. Decode it from a request's arguments
//!   (`r.args().get::<RemoteFunction>(1)` or as a field of a struct) and call it with
//!   [`RemoteFunction::call`]: a fire-and-forget message on the same connection.
//!
//! Both hook into serde: a `Function` serializes as an internal marker string that only the
//! kite runtime's own serialization understands (serializing it anywhere else is an error),
//! and a `RemoteFunction` deserializes only while the runtime decodes a message's arguments.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::args::Args;
use crate::connection::ConnShared;
use crate::error::KiteError;
use kite_protocol::dnode::{function_marker, parse_callback_marker, Method};

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
type Callable = dyn Fn(Args) -> BoxFuture + Send + Sync + 'static;

/// A local function that can be sent to the peer inside arguments or results.
///
/// ```
/// use kite::Function;
/// let on_tick = Function::new(|args| println!("tick {:?}", args.raw()));
/// let on_done = Function::new_async(|_args| async move { /* await something */ });
/// # let _ = (on_tick, on_done);
/// ```
#[derive(Clone)]
pub struct Function(Arc<Callable>);

impl Function {
    /// A function from a synchronous closure. It runs on the connection's read loop, so it
    /// should be quick; spawn a task for long work.
    pub fn new<F>(f: F) -> Self
    where
        F: Fn(Args) + Send + Sync + 'static,
    {
        Function(Arc::new(move |args| {
            f(args);
            Box::pin(async {}) as BoxFuture
        }))
    }

    /// A function from an async closure. Invocations on one connection are awaited one at a
    /// time, in arrival order: do not wait inside it for a response on the same connection
    /// (spawn a task instead), or the connection stalls until that call times out.
    pub fn new_async<F, Fut>(f: F) -> Self
    where
        F: Fn(Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Function(Arc::new(move |args| Box::pin(f(args)) as BoxFuture))
    }

    /// Runs the function with `args` (what the runtime does when the peer calls it).
    pub fn invoke(&self, args: Args) -> impl Future<Output = ()> + Send + 'static {
        (self.0)(args)
    }
}

impl fmt::Debug for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Function")
    }
}

thread_local! {
    /// Local functions met while serializing one outgoing value.
    static COLLECTOR: RefCell<Option<(usize, Vec<Function>)>> = const { RefCell::new(None) };
    /// The connection remote functions bind to while decoding incoming arguments.
    static DECODE_CONN: RefCell<Option<Weak<ConnShared>>> = const { RefCell::new(None) };
}

impl Serialize for Function {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let index = COLLECTOR.with(|c| {
            let mut c = c.borrow_mut();
            c.as_mut().map(|(base, list)| {
                list.push(self.clone());
                *base + list.len() - 1
            })
        });
        match index {
            Some(n) => serializer.serialize_str(&function_marker(n)),
            None => Err(S::Error::custom(
                "a kite Function can only be serialized as arguments or results of kite calls",
            )),
        }
    }
}

/// Serializes `value` into JSON, collecting the local functions it contains. Their markers
/// are numbered from `base`.
pub(crate) fn to_value_collecting<T: Serialize + ?Sized>(
    value: &T,
    base: usize,
) -> Result<(Value, Vec<Function>), serde_json::Error> {
    struct Restore(Option<(usize, Vec<Function>)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            COLLECTOR.with(|c| *c.borrow_mut() = prev);
        }
    }
    let prev = COLLECTOR.with(|c| c.borrow_mut().replace((base, Vec::new())));
    let restore = Restore(prev);
    let result = serde_json::to_value(value);
    let list = COLLECTOR
        .with(|c| c.borrow_mut().take())
        .map(|(_, list)| list)
        .unwrap_or_default();
    drop(restore);
    let mut value = result?;
    go_number_format(&mut value);
    Ok((value, list))
}

/// Rewrites integral floats (`49.0`) as integers (`49`), the way Go's `encoding/json`
/// writes a `float64`, so results are byte-compatible with Go kites: a Go caller decoding
/// `49.0` into an `int` would fail. Only values exactly representable (|x| ≤ 2^53) change.
pub(crate) fn go_number_format(value: &mut Value) {
    fn number(v: &mut Value) {
        const MAX_EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
        if let Value::Number(n) = v {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                if f.fract() == 0.0 && f.abs() <= MAX_EXACT {
                    // `as` is exact here: f is integral and within 2^53.
                    *v = Value::from(f as i64);
                }
            }
        }
    }
    let is_container = |v: &Value| matches!(v, Value::Array(_) | Value::Object(_));
    // Scalars and flat arrays (most arguments and results) need no stack.
    match value {
        Value::Array(items) if !items.iter().any(is_container) => {
            items.iter_mut().for_each(number);
            return;
        }
        Value::Array(_) | Value::Object(_) => {}
        scalar => return number(scalar),
    }
    let mut stack: Vec<&mut Value> = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items.iter_mut()),
            Value::Object(map) => stack.extend(map.values_mut()),
            scalar => number(scalar),
        }
    }
}

/// Runs `f` with remote functions binding to `conn`.
pub(crate) fn with_decode_context<R>(conn: &Weak<ConnShared>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Weak<ConnShared>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            DECODE_CONN.with(|c| *c.borrow_mut() = prev);
        }
    }
    let prev = DECODE_CONN.with(|c| c.borrow_mut().replace(conn.clone()));
    let _restore = Restore(prev);
    f()
}

/// A function the peer sent us; calling it sends `{"method": id, "arguments": [...]}` back
/// on the connection it came from (fire-and-forget, PROTOCOL.md 3.4).
#[derive(Clone)]
pub struct RemoteFunction {
    id: u64,
    conn: Weak<ConnShared>,
}

impl RemoteFunction {
    /// Calls the function with `args` (a tuple, a `Vec`, `json!([...])`, or a single
    /// non-array value as the only argument; `()` for none). Completes once the message is
    /// queued on the connection; there is no reply. Arguments may contain [`Function`]s.
    pub async fn call<A: Serialize + ?Sized>(&self, args: &A) -> Result<(), KiteError> {
        let Some(conn) = self.conn.upgrade() else {
            return Err(KiteError::send("can't send, connection is gone"));
        };
        let (arguments, functions) =
            crate::args::to_arguments(args, 0).map_err(|e| KiteError::send(e.to_string()))?;
        conn.send_message(
            Method::Callback(self.id),
            arguments,
            functions
                .into_iter()
                .map(crate::connection::LocalCallback::User)
                .collect(),
        )
        .await
    }

    /// The callback id the peer assigned.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl fmt::Debug for RemoteFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RemoteFunction({})", self.id)
    }
}

impl<'de> Deserialize<'de> for RemoteFunction {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        let Some(id) = parse_callback_marker(&s) else {
            return Err(D::Error::custom(format!(
                "expected a function, found {s:?}"
            )));
        };
        let conn = DECODE_CONN.with(|c| c.borrow().clone());
        match conn {
            Some(conn) => Ok(RemoteFunction { id, conn }),
            None => Err(D::Error::custom(
                "remote functions can only be decoded from kite call arguments",
            )),
        }
    }
}

/// Sending a remote function back to its owner is not possible (Go cannot either); it is
/// serialized as `null`.
impl Serialize for RemoteFunction {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_functions_with_base() {
        let f = Function::new(|_| {});
        let (v, list) = to_value_collecting(&(1, f.clone(), [f]), 1).unwrap();
        assert_eq!(
            v,
            serde_json::json!([1, function_marker(1), [function_marker(2)]])
        );
        assert_eq!(list.len(), 2);
        assert!(serde_json::to_value(Function::new(|_| {})).is_err());
    }
}

#[cfg(test)]
mod number_format_tests {
    use super::go_number_format;
    use serde_json::json;

    #[test]
    fn integral_floats_are_written_as_go_writes_them() {
        let mut v = json!([49.0, 2.5, -0.0, {"a": [1e15, 1e300]}, "x", 7]);
        go_number_format(&mut v);
        assert_eq!(
            v.to_string(),
            r#"[49,2.5,0,{"a":[1000000000000000,1e+300]},"x",7]"#
        );
        // The shortcuts: a scalar, a flat array, an object.
        for (mut v, want) in [
            (json!(16.0), "16"),
            (json!(2.5), "2.5"),
            (json!([4.0, 1.5, "y"]), r#"[4,1.5,"y"]"#),
            (json!({"r": 9.0}), r#"{"r":9}"#),
        ] {
            go_number_format(&mut v);
            assert_eq!(v.to_string(), want);
        }
    }
}
