//! Sans-IO core of the Kite protocol: identity, dnode codec, request/response envelope and
//! SockJS frames. No sockets, no async runtime.

pub mod dnode;
pub mod envelope;
pub mod error;
pub mod identity;
pub mod sockjs;
pub mod version;

pub use dnode::{CallbackTable, Callbacks, DecodeError, Limits, Message, Method};
pub use envelope::{Authentication, Request, RequestError};
pub use error::{format_go_duration, new_request_id, KiteError};
pub use identity::{IdentityError, Kite, KontrolQuery, QueryError, QueryMatcher};
pub use version::{Constraints, Version, VersionError, VersionFilter};
