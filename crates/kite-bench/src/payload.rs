//! The exact texts of a `square` call, built with kite-protocol the way the runtime builds
//! them: the echo ceiling uses messages of the same sizes, the raw dnode caller sends them.

use kite_protocol::dnode::{self, Callbacks, Message, Method};
use kite_protocol::envelope::{self, Authentication};
use kite_protocol::Kite as Identity;
use serde_json::{json, Value};

/// The argument every benchmark call sends (`square(4)` = 16).
pub(crate) const ARG: f64 = 4.0;
/// What `square(ARG)` returns.
pub(crate) const RESULT: f64 = 16.0;

/// The dnode request text `square(4)` from `identity`, its response callback numbered `id`.
pub(crate) fn request(identity: &Identity, auth: Option<&Authentication>, id: u64) -> String {
    let mut args = envelope::encode_request(identity, auth, vec![json!(ARG)], 0);
    let mut next = id;
    let scrubbed = dnode::scrub(&mut args, &mut next);
    Message::new(
        Method::Name("square".into()),
        args,
        Callbacks::from_scrubbed(&scrubbed),
    )
    .encode()
}

/// The dnode response text the server sends for callback `id`.
pub(crate) fn response(id: u64) -> String {
    let reply = envelope::encode_response(Ok(json!(RESULT)));
    Message::new(
        Method::Callback(id),
        Value::Array(vec![reply]),
        Callbacks::new(),
    )
    .encode()
}

/// A client → server SockJS frame `["..."]` carrying `message`.
pub(crate) fn sockjs_client_frame(message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 16);
    kite_protocol::sockjs::encode_client_frame([message], &mut out);
    out
}

/// A server → client SockJS frame `a["..."]` carrying `message`.
pub(crate) fn sockjs_server_frame(message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 16);
    kite_protocol::sockjs::encode_messages([message], &mut out);
    out
}

/// Sizes in bytes of the SockJS WebSocket frames of one `square` call: (request, response).
/// A mid-run callback id (5 digits) is used: ids grow by one per call.
pub(crate) fn sockjs_sizes(identity: &Identity, auth: Option<&Authentication>) -> (String, String) {
    let id = 10_000;
    (
        sockjs_client_frame(&request(identity, auth, id)),
        sockjs_server_frame(&response(id)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_decode() {
        let me = Identity {
            name: "c".into(),
            ..Identity::default()
        };
        let limits = dnode::Limits::default();
        let mut m = Message::decode(&request(&me, None, 7), &limits).unwrap();
        m.unscrub(&limits);
        let r = envelope::Request::from_arguments(m.arguments).unwrap();
        assert_eq!(r.response_callback, Some(7));
        let m = Message::decode(&response(7), &limits).unwrap();
        assert_eq!(m.method, Method::Callback(7));
        assert_eq!(
            envelope::decode_response(m.arguments).unwrap(),
            json!(RESULT)
        );
    }
}
