//! Support for the end-to-end tests under `tests/`: where the repository is,
//! where the Python oracle (a virtualenv with the real ZODB) lives, and how to
//! run it. The product itself lives in the member crates.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's top directory.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `testdata/` directory with the fixtures made by the real ZODB.
pub fn testdata() -> PathBuf {
    repo_root().join("testdata")
}

/// The Python interpreter of the oracle virtualenv (`$NEO_TEST_PYTHON`, else
/// `.venv/bin/python` made by `scripts/setup-test-env.sh`).
pub fn oracle_python() -> PathBuf {
    if let Some(p) = std::env::var_os("NEO_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    repo_root().join(".venv/bin/python")
}

/// Runs `python script args...` with the oracle interpreter and returns its
/// stdout; panics with stderr when it fails (these are tests).
pub fn run_oracle(script: &Path, args: &[&std::ffi::OsStr]) -> String {
    let py = oracle_python();
    assert!(
        py.exists(),
        "oracle Python {} missing: run scripts/setup-test-env.sh",
        py.display()
    );
    let out = Command::new(&py)
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", py.display()));
    assert!(
        out.status.success(),
        "{} {} failed: {}",
        py.display(),
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("oracle output is UTF-8")
}
