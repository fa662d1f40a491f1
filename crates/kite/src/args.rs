//! Arguments and results, typed lazily through serde.
//!
//! [`Args`] are the positional arguments of a request or of a callback invocation;
//! [`Response`] is the result of a call. Both keep the raw JSON and decode on demand into
//! any `Deserialize` type, binding [`RemoteFunction`](crate::RemoteFunction)s found inside to
//! the connection they came from. A decoding failure of [`Args`] is an `argumentError`, the
//! error Go reports for the same mistakes.

use std::sync::Weak;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::callback::{to_value_collecting, with_decode_context, Function};
use crate::connection::ConnShared;
use crate::error::KiteError;

/// Positional arguments of a request (`withArgs`) or of a callback invocation.
#[derive(Clone, Debug)]
pub struct Args {
    values: Vec<Value>,
    conn: Weak<ConnShared>,
}

impl Args {
    pub(crate) fn new(values: Vec<Value>, conn: Weak<ConnShared>) -> Self {
        Args { values, conn }
    }

    /// Arguments not bound to any connection (remote functions inside cannot be decoded).
    pub fn detached(values: Vec<Value>) -> Self {
        Args {
            values,
            conn: Weak::new(),
        }
    }

    /// Number of arguments.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there are no arguments.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The raw JSON values. Functions sent by the peer appear as internal marker strings;
    /// decode them as [`RemoteFunction`](crate::RemoteFunction).
    pub fn raw(&self) -> &[Value] {
        &self.values
    }

    /// Takes the raw JSON values.
    pub fn into_raw(self) -> Vec<Value> {
        self.values
    }

    /// The only argument, decoded. Fails with `argumentError` (`Invalid array length`)
    /// unless there is exactly one argument, like Go's `Args.One()`.
    pub fn one<T: DeserializeOwned>(&self) -> Result<T, KiteError> {
        if self.values.len() != 1 {
            return Err(KiteError::argument("Invalid array length"));
        }
        self.decode_value(&self.values[0])
    }

    /// Argument `index`, decoded (`argumentError` when missing or of the wrong type).
    pub fn get<T: DeserializeOwned>(&self, index: usize) -> Result<T, KiteError> {
        match self.values.get(index) {
            Some(v) => self.decode_value(v),
            None => Err(KiteError::argument(format!(
                "missing argument {index} (got {})",
                self.values.len()
            ))),
        }
    }

    /// All arguments decoded as one sequence: a tuple `(String, u32)`, a `Vec<T>`, or a
    /// struct deriving `Deserialize` from a sequence. `argumentError` on mismatch.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, KiteError> {
        with_decode_context(&self.conn, || {
            T::deserialize(serde::de::value::SeqDeserializer::new(self.values.iter()))
                .map_err(|e: serde_json::Error| KiteError::argument(e.to_string()))
        })
    }

    fn decode_value<T: DeserializeOwned>(&self, v: &Value) -> Result<T, KiteError> {
        with_decode_context(&self.conn, || {
            T::deserialize(v).map_err(|e| KiteError::argument(argument_message(e, v)))
        })
    }
}

fn argument_message(e: serde_json::Error, v: &Value) -> String {
    let mut data = v.to_string();
    if data.len() > 200 {
        let mut cut = 200;
        while !data.is_char_boundary(cut) {
            cut -= 1;
        }
        data.truncate(cut);
        data.push('…');
    }
    format!("{e}. Data: {data}")
}

/// The result of a successful call, decoded on demand.
#[derive(Clone, Debug)]
pub struct Response {
    value: Value,
    conn: Weak<ConnShared>,
}

impl Response {
    pub(crate) fn new(value: Value, conn: Weak<ConnShared>) -> Self {
        Response { value, conn }
    }

    /// The raw JSON result (`null` when the method returned nothing).
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// Takes the raw JSON result.
    pub fn into_value(self) -> Value {
        self.value
    }

    /// The result decoded into `T` (functions inside become
    /// [`RemoteFunction`](crate::RemoteFunction)s); `invalidResponse` on mismatch.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, KiteError> {
        with_decode_context(&self.conn, || {
            T::deserialize(&self.value)
                .map_err(|e| KiteError::invalid_response(argument_message(e, &self.value)))
        })
    }

    /// The result as a number.
    pub fn as_f64(&self) -> Option<f64> {
        self.value.as_f64()
    }

    /// The result as an integer.
    pub fn as_i64(&self) -> Option<i64> {
        self.value.as_i64()
    }

    /// The result as a string.
    pub fn as_str(&self) -> Option<&str> {
        self.value.as_str()
    }

    /// The result as a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        self.value.as_bool()
    }

    /// Whether the result is `null` (or absent).
    pub fn is_null(&self) -> bool {
        self.value.is_null()
    }
}

impl std::fmt::Display for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.value.fmt(f)
    }
}

/// Turns user arguments into the positional list: an array (tuple, `Vec`, `json!([..])`)
/// is the list, `null`/`()` is no argument, anything else is the single argument.
pub(crate) fn to_arguments<A: Serialize + ?Sized>(
    args: &A,
    base: usize,
) -> Result<(Vec<Value>, Vec<Function>), serde_json::Error> {
    let (value, functions) = to_value_collecting(args, base)?;
    let list = match value {
        Value::Array(a) => a,
        Value::Null => Vec::new(),
        other => vec![other],
    };
    Ok((list, functions))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typed_access() {
        let a = Args::detached(vec![json!(4)]);
        assert_eq!(a.one::<f64>().unwrap(), 4.0);
        let a = Args::detached(vec![json!("x"), json!(3)]);
        assert_eq!(a.decode::<(String, u32)>().unwrap(), ("x".to_string(), 3));
        assert_eq!(a.one::<f64>().unwrap_err().message, "Invalid array length");
        let e = a.get::<f64>(0).unwrap_err();
        assert_eq!(e.kind, "argumentError");
        assert!(e.message.contains("Data: \"x\""), "{}", e.message);
        assert!(a.decode::<(String,)>().is_err());
    }

    #[test]
    fn arguments_shapes() {
        assert_eq!(to_arguments(&(4,), 0).unwrap().0, vec![json!(4)]);
        assert_eq!(to_arguments(&4, 0).unwrap().0, vec![json!(4)]);
        assert!(to_arguments(&(), 0).unwrap().0.is_empty());
        assert_eq!(
            to_arguments(&json!({"a":1}), 0).unwrap().0,
            vec![json!({"a":1})]
        );
    }
}
