//! Fuzzes the dnode message decoder and everything the runtime runs on a decoded
//! message: no input may panic, and a decoded message re-encodes to one that decodes to
//! the same method and arguments.

#![no_main]

use kite_protocol::dnode::{Limits, Message};
use kite_protocol::envelope::{self, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = Limits::default();
    let Ok(mut msg) = Message::decode(text, &limits) else {
        return;
    };
    let encoded = msg.encode();
    let again = Message::decode(&encoded, &limits);
    assert!(again.is_ok(), "re-encoded message must decode: {encoded}");
    if let Ok(again) = again {
        assert_eq!(again.method, msg.method);
        assert_eq!(again.arguments, msg.arguments);
        assert_eq!(again.callbacks.len(), msg.callbacks.len());
    }
    msg.unscrub(&limits);
    let _ = envelope::response_callback_of(&msg.arguments);
    let _ = Request::from_arguments(msg.arguments.clone());
    let _ = envelope::decode_response(msg.arguments);
});
