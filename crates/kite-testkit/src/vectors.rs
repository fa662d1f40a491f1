//! The Go implementation's wire captures and the dnode reference encodings, kept once in
//! `crates/kite-testkit/vectors/` (copied from the project's shared vectors; see the
//! README there), with the small parsers every capture test needs.

use std::path::PathBuf;

use serde_json::Value;

/// The vectors directory (found like [`crate::paths::workspace_root`]).
pub fn dir() -> PathBuf {
    crate::paths::workspace_root().join("crates/kite-testkit/vectors")
}

/// The text of vector file `file` (e.g. `square_token_auth.txt`, `dnode-vectors.json`).
pub fn read(file: &str) -> String {
    let path = dir().join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text of capture `name` (`<name>.txt`).
pub fn capture(name: &str) -> String {
    read(&format!("{name}.txt"))
}

/// The WebSocket text frames of a capture, in order: (sent by the client?, payload). Empty
/// frames are kept, with an empty payload.
pub fn ws_frames(capture: &str) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let mut lines = capture.lines();
    while let Some(line) = lines.next() {
        if !line.contains("WS-FRAME text") {
            continue;
        }
        let payload = if line.ends_with("(0 bytes)") {
            String::new()
        } else {
            lines.next().unwrap_or("").to_string()
        };
        out.push((line.contains("C->S"), payload));
    }
    out
}

/// The dnode messages of a SockJS frame (`a[...]` from servers, `[...]` from clients);
/// panics on anything else.
pub fn sockjs_messages(frame: &str) -> Vec<Value> {
    let array = frame.strip_prefix('a').unwrap_or(frame);
    let texts: Vec<String> = serde_json::from_str(array)
        .unwrap_or_else(|e| panic!("not a SockJS message frame ({e}): {frame:?}"));
    texts
        .iter()
        .map(|t| {
            serde_json::from_str(t).unwrap_or_else(|e| panic!("not a dnode message ({e}): {t:?}"))
        })
        .collect()
}
