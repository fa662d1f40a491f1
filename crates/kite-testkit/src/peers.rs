//! The real peers some tests drive: Node.js packages in `interop/node_modules` and
//! Debian's chromium. A missing peer fails the test with the command that installs it: a
//! test that silently skips could never fail.

use std::path::PathBuf;

use crate::paths::interop_dir;

/// Debian's chromium, driven headless through playwright-core.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Panics unless chromium is installed.
pub fn require_chromium() {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/install-test-deps (installs Debian's chromium)"
    );
}

/// The directory of Node.js package `name` in `interop/node_modules`; panics unless it is
/// installed.
pub fn node_module(name: &str) -> PathBuf {
    let dir = interop_dir().join("node_modules").join(name);
    assert!(
        dir.exists(),
        "Node.js package {name} is not installed in {} (run scripts/install-test-deps)",
        dir.display()
    );
    dir
}
