//! What a failed WebSocket read (or write) means for the connection, decided once for the
//! client and the server.
//!
//! A peer that vanishes — the process dies, the network drops, the TCP connection is reset
//! or simply closed without the closing handshake — is an ordinary end of a session: it
//! is logged at debug level and nothing more is written to the socket. Only input that
//! breaks the protocol fails the connection with a close code (and a warning on the
//! server).

use tokio_tungstenite::tungstenite::error::{Error, ProtocolError};

/// How a WebSocket error ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WsFailure {
    /// The connection is gone: closed without a closing handshake, reset, broken pipe, or
    /// any other I/O failure. Nothing can be sent on it any more (no close frame).
    PeerGone,
    /// The peer broke the protocol: fail the connection with this close code and reason
    /// (1009 message too big, 1007 invalid UTF-8, 1002 any other protocol error).
    Violation(u16, &'static str),
}

impl WsFailure {
    /// Classifies an error of tungstenite's reading (or writing) side.
    pub(crate) fn of(error: &Error) -> WsFailure {
        match error {
            Error::Capacity(_) => WsFailure::Violation(1009, "Message too big."),
            Error::Utf8(_) => WsFailure::Violation(1007, "Invalid UTF-8."),
            // End of stream (possibly in the middle of a frame) before any close frame.
            Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => WsFailure::PeerGone,
            Error::Protocol(_) => WsFailure::Violation(1002, "Protocol error."),
            // I/O errors (reset, broken pipe, unexpected end of file, ...), a connection
            // already closed, and what only a handshake can yield.
            _ => WsFailure::PeerGone,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use tokio_tungstenite::tungstenite::error::CapacityError;

    use super::*;

    #[test]
    fn peer_gone_and_violations() {
        let gone = [
            Error::Protocol(ProtocolError::ResetWithoutClosingHandshake),
            Error::Io(io::ErrorKind::ConnectionReset.into()),
            Error::Io(io::ErrorKind::BrokenPipe.into()),
            Error::Io(io::ErrorKind::UnexpectedEof.into()),
            Error::Io(io::ErrorKind::ConnectionAborted.into()),
            Error::ConnectionClosed,
            Error::AlreadyClosed,
        ];
        for e in &gone {
            assert_eq!(WsFailure::of(e), WsFailure::PeerGone, "{e:?}");
        }
        let violations = [
            (
                Error::Capacity(CapacityError::MessageTooLong {
                    size: 2,
                    max_size: 1,
                }),
                1009,
            ),
            (Error::Utf8("bad".into()), 1007),
            (
                Error::Protocol(ProtocolError::UnmaskedFrameFromClient),
                1002,
            ),
            (Error::Protocol(ProtocolError::NonZeroReservedBits), 1002),
            (Error::Protocol(ProtocolError::ReceivedAfterClosing), 1002),
        ];
        for (e, code) in &violations {
            assert!(
                matches!(WsFailure::of(e), WsFailure::Violation(c, _) if c == *code),
                "{e:?}"
            );
        }
    }
}
