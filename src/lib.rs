//! Support for the end-to-end tests under `tests/`: where the repository is,
//! where the Python oracle (a virtualenv with the real ZODB) lives, and how to
//! run it; the workspace's binaries ([`binary`]), free local ports
//! ([`free_port`]) and daemons that die with the test ([`Daemon`]). The
//! product itself lives in the member crates.

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

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

/// The binary `name` of workspace package `package`, built once per test
/// process with the same cargo, profile and target directory as the tests
/// themselves (a nested `cargo build -q -p PACKAGE --bin NAME`).
pub fn binary(package: &str, name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<(String, String), PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    // Held while building: concurrent tests wait instead of racing cargo.
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    let key = (package.to_owned(), name.to_owned());
    if let Some(p) = built.get(&key) {
        return p.clone();
    }
    let exe = std::env::current_exe().expect("test exe");
    // target/<profile>/deps/<test> -> target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(repo_root())
        .args(["build", "-q", "-p", package, "--bin", name]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    if let Some(target) = profile_dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    let st = cmd.status().expect("run cargo build");
    assert!(st.success(), "cargo build of {package}/{name} failed");
    let bin = profile_dir.join(name);
    assert!(bin.exists(), "{} missing after build", bin.display());
    built.insert(key, bin.clone());
    bin
}

/// A TCP port of 127.0.0.1 that was free a moment ago (bound, then
/// released). Ports handed out by this process are never repeated.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<Vec<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(Vec::new()));
    let mut given = given.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: SocketAddr, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A daemon started by a test: its stdout and stderr go to `NAME.log` in
/// the test's directory. Dropping it kills it (SIGKILL) and reaps it.
pub struct Daemon {
    /// A name for messages (`master`, `storage1`...).
    pub name: String,
    /// The log file.
    pub log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Starts `bin args...` with its output in `dir/NAME.log` (appended:
    /// a restarted daemon keeps one log).
    pub fn spawn(name: &str, dir: &Path, bin: &Path, args: &[String]) -> Daemon {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open daemon log");
        let err = out.try_clone().expect("dup log");
        let child = Command::new(bin)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Daemon {
            name: name.to_owned(),
            log,
            child: Some(child),
        }
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits up to `timeout` for the daemon to exit by itself; its exit
    /// code (`-1` if killed by a signal), or `None` if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut()?;
            match c.try_wait() {
                Ok(Some(st)) => {
                    self.child = None;
                    return Some(st.code().unwrap_or(-1));
                }
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
                _ => return None,
            }
        }
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A directory for one test's databases and logs: removed when the test
/// passes, kept (and its logs' tails printed) when it panics.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
}

impl TestDir {
    /// A new directory named after `test`.
    pub fn new(test: &str) -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("neo-e2e-{test}-"))
            .tempdir()
            .expect("tempdir");
        TestDir { dir: Some(dir) }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("alive").path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Some(dir) = self.dir.take() else { return };
        let path = dir.keep();
        eprintln!("test failed: logs kept in {}", path.display());
        if let Ok(entries) = std::fs::read_dir(&path) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    let tail = &lines[lines.len().saturating_sub(30)..];
                    eprintln!("--- {} (last {} lines)", p.display(), tail.len());
                    for l in tail {
                        eprintln!("{l}");
                    }
                }
            }
        }
    }
}
