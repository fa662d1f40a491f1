//! Fuzzes the SockJS frame decoders: no input may panic, and whatever a client frame
//! decodes to must survive our encoder unchanged.

#![no_main]

use kite_protocol::sockjs::{self, ServerFrame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ServerFrame::Messages(msgs)) = sockjs::decode_server_frame(text) {
        let mut out = String::new();
        sockjs::encode_messages(&msgs, &mut out);
        assert_eq!(
            sockjs::decode_server_frame(&out).ok(),
            Some(ServerFrame::Messages(msgs))
        );
    }
    if let Ok(msgs) = sockjs::decode_client_frame(text) {
        let mut out = String::new();
        sockjs::encode_client_frame(&msgs, &mut out);
        assert_eq!(sockjs::decode_client_frame(&out).ok(), Some(msgs));
    }
});
