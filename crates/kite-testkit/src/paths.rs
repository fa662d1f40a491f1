//! Where things are: the workspace, `interop/`, and the binaries `cargo test` builds.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (the directory of `Cargo.lock`), found from the package under test.
///
/// `cargo test` sets `CARGO_MANIFEST_DIR` when it runs a test binary; that is preferred
/// to the value compiled in, which goes stale when clones at different paths share one
/// target directory (cargo then reuses this crate's build from the other clone).
pub fn workspace_root() -> PathBuf {
    let compiled = Path::new(env!("CARGO_MANIFEST_DIR"));
    let start = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    start
        .as_deref()
        .unwrap_or(compiled)
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .map_or_else(|| compiled.join("../.."), Path::to_path_buf)
}

/// The repository's `interop/` directory (Node.js peers and their `node_modules`).
pub fn interop_dir() -> PathBuf {
    workspace_root().join("interop")
}

/// The profile directory of the running test binary (e.g. `target/debug`): test binaries
/// live in its `deps/`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("test binary inside <target>/<profile>/deps")
        .to_path_buf()
}

/// An example program of the workspace, as built by `cargo test --workspace` (which builds
/// every example). Panics with the command to build it when it is missing.
pub fn example(name: &str) -> PathBuf {
    let path = profile_dir()
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "example {name:?} is not built at {} (run `cargo test --workspace`, or \
         `cargo build --examples`)",
        path.display()
    );
    path
}

/// A binary of workspace package `package`, built with `cargo build -p <package> --bin
/// <name>` when it is not there yet (a test of another package does not get it built by
/// Cargo).
pub fn binary(package: &str, name: &str) -> PathBuf {
    let path = profile_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", package, "--bin", name])
            .current_dir(workspace_root())
            .status()
            .unwrap_or_else(|e| panic!("run cargo to build {name}: {e}"));
        assert!(status.success(), "building the {name} binary failed");
    }
    assert!(path.exists(), "no {name} binary at {}", path.display());
    path
}
