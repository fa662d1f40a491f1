//! Sans-IO core of the Kite protocol (wire-compatible with koding/kite and kite.js): kite
//! identities and Kontrol queries, the dnode message codec with function scrubbing, the
//! request/response envelope, kite errors and SockJS frames. No sockets, no async runtime;
//! every decoder is bounded (see [`dnode::Limits`]) and returns errors instead of
//! panicking.
//!
//! Modules:
//!
//! * [`identity`]: [`Kite`] (the seven-field identity and its `/u/e/n/v/r/h/id` string
//!   form, Go's validations) and [`KontrolQuery`] (validation, matching, token audience).
//! * [`version`]: versions and constraint lists (`>= 1.0, < 1.4`, `~> 1.1`) for queries.
//! * [`dnode`]: [`Message`] decode/encode, [`dnode::scrub`]/[`dnode::unscrub`] with marker
//!   strings standing in for functions, [`CallbackTable`] for local callbacks.
//! * [`envelope`]: the `{kite, authentication, withArgs, responseCallback}` request and the
//!   `{error, result}` response.
//! * [`error`]: [`KiteError`] with Go's types and texts, request ids, Go duration format.
//! * [`sockjs`]: SockJS frames (`o`, `h`, `a[...]`, `c[...]`, client frames).
//!
//! # Quick start: a server answering one request
//!
//! ```
//! use kite_protocol::dnode::{Limits, Message, Method};
//! use kite_protocol::envelope::{self, Request};
//! use kite_protocol::{new_request_id, sockjs, Callbacks, KiteError};
//! use serde_json::{json, Value};
//!
//! /// Handles one incoming message; returns the reply to send, if any.
//! fn handle(text: &str, limits: &Limits) -> Option<String> {
//!     // Undecodable messages are dropped (log them at debug).
//!     let mut msg = Message::decode(text, limits).ok()?;
//!     // Functions the peer sent become callback markers in the argument tree.
//!     msg.unscrub(limits);
//!     // A numeric method calls one of our callbacks: look it up in the connection's
//!     // `CallbackTable` (not shown).
//!     let Method::Name(method) = msg.method else { return None };
//!     let (callback, result) = match Request::from_arguments(msg.arguments) {
//!         Ok(req) if method == "square" => {
//!             let x = req.with_args.first().and_then(Value::as_i64).unwrap_or(0);
//!             (req.response_callback, Ok(json!(x * x)))
//!         }
//!         Ok(req) => (req.response_callback, Err(KiteError::method_not_found(&method))),
//!         Err(e) => (e.response_callback, Err(e.to_kite_error().with_id(new_request_id()))),
//!     };
//!     // No response callback: nobody to answer. (Results holding functions would be
//!     // scrubbed through the connection's `CallbackTable` here.)
//!     let reply = vec![envelope::encode_response(result)];
//!     Some(Message::callback(callback?, reply, Callbacks::new()).encode())
//! }
//!
//! // A frame as a Go client sends it over the SockJS WebSocket transport.
//! let frame = r#"["{\"method\":\"square\",\"arguments\":[{\"kite\":{\"name\":\"gokite-client\",\"username\":\"unknown\",\"id\":\"1fa3\",\"environment\":\"unknown\",\"region\":\"unknown\",\"version\":\"1.0.0\",\"hostname\":\"vm\"},\"authentication\":null,\"responseCallback\":\"[Function]\",\"withArgs\":[7]}],\"callbacks\":{\"0\":[0,\"responseCallback\"]}}"]"#;
//! let limits = Limits::default();
//! let replies: Vec<String> = sockjs::decode_client_frame(frame)
//!     .unwrap()
//!     .iter()
//!     .filter_map(|text| handle(text, &limits))
//!     .collect();
//! let mut out = String::new();
//! sockjs::encode_messages(&replies, &mut out);
//! assert_eq!(
//!     out,
//!     r#"a["{\"method\":0,\"arguments\":[{\"error\":null,\"result\":49}],\"callbacks\":{}}"]"#
//! );
//! ```

pub mod dnode;
pub mod envelope;
pub mod error;
pub mod identity;
pub mod incoming;
pub mod sockjs;
#[cfg(test)]
mod test_rng;
pub mod version;

pub use dnode::{CallbackTable, Callbacks, DecodeError, Limits, Message, Method};
pub use envelope::{Authentication, Request, RequestError};
pub use error::{format_go_duration, new_request_id, KiteError, RequestId};
pub use identity::{IdentityError, Kite, KontrolQuery, QueryError, QueryMatcher};
pub use version::{Constraints, Version, VersionError, VersionFilter};
