//! Helpers shared by the `tests/fsformat_*.rs` tests: the fixtures, a tiny
//! independent walker that finds transactions and records in a good file
//! (to aim corruptions), ZODB's `fstest` run on many files at once, and the
//! `neo-fs` binary.

#![allow(dead_code)] // each test file uses a different subset

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Every `testdata/*.fs`, sorted by name.
pub fn fixtures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(neo_e2e::testdata())
        .expect("testdata/ exists")
        .map(|e| e.expect("readable testdata/").path())
        .filter(|p| p.extension().is_some_and(|e| e == "fs"))
        .collect();
    v.sort();
    assert!(v.len() >= 10, "fixtures missing in testdata/: {v:?}");
    v
}

/// The fixture's JSON written by the oracle next to it (`NAME.json`).
pub fn fixture_json(fs: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(fs.with_extension("json")).expect("fixture json");
    serde_json::from_str(&text).expect("fixture json parses")
}

/// One transaction of a good file, as located by [`layout`].
#[derive(Debug, Clone)]
pub struct TxnAt {
    pub pos: u64,
    pub tlen: u64,
    pub status: u8,
    pub header_len: u64,
    /// Offsets of its data records (none for `'u'` transactions).
    pub records: Vec<u64>,
}

pub fn be64(f: &[u8], at: u64) -> u64 {
    let at = at as usize;
    u64::from_be_bytes(f[at..at + 8].try_into().expect("8 bytes"))
}

fn be16(f: &[u8], at: u64) -> u64 {
    let at = at as usize;
    u64::from(u16::from_be_bytes([f[at], f[at + 1]]))
}

pub fn put64(f: &mut [u8], at: u64, v: u64) {
    let at = at as usize;
    f[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// Walks a file known to be good (panics otherwise): where each
/// transaction and data record is. Independent of the crate under test.
pub fn layout(f: &[u8]) -> Vec<TxnAt> {
    let mut out = Vec::new();
    let mut pos = 4u64;
    while pos < f.len() as u64 {
        let tlen = be64(f, pos + 8);
        let status = f[pos as usize + 16];
        let header_len = 23 + be16(f, pos + 17) + be16(f, pos + 19) + be16(f, pos + 21);
        let mut records = Vec::new();
        if status != b'u' {
            let mut r = pos + header_len;
            while r < pos + tlen {
                records.push(r);
                let plen = be64(f, r + 34);
                r += 42 + if plen == 0 { 8 } else { plen };
            }
            assert_eq!(r, pos + tlen, "records add up at {pos}");
        }
        assert_eq!(be64(f, pos + tlen), tlen, "redundant length at {pos}");
        out.push(TxnAt {
            pos,
            tlen,
            status,
            header_len,
            records,
        });
        pos += tlen + 8;
    }
    out
}

/// ZODB's verdict on a file: `None` when fstest passes, else its message
/// (`Err` when fstest itself crashed rather than reporting).
pub type Fstest = Option<Result<String, String>>;

const FSTEST_DRIVER: &str = r#"
import json, sys
from ZODB.scripts import fstest
out = {}
for p in sys.argv[1:]:
    try:
        fstest.check(p)
        out[p] = None
    except fstest.FormatError as e:
        out[p] = {"error": str(e)}
    except Exception as e:
        out[p] = {"crash": "%s: %s" % (type(e).__name__, e)}
print(json.dumps(out))
"#;

/// Runs ZODB's `fstest.check` on every path in one oracle process.
pub fn fstest_many(paths: &[PathBuf]) -> HashMap<PathBuf, Fstest> {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("fstest_many.py");
    std::fs::write(&script, FSTEST_DRIVER).expect("write driver");
    let args: Vec<&std::ffi::OsStr> = paths.iter().map(|p| p.as_os_str()).collect();
    let out = neo_e2e::run_oracle(&script, &args);
    let v: serde_json::Value = serde_json::from_str(&out).expect("driver JSON");
    paths
        .iter()
        .map(|p| {
            let r = &v[p.to_str().expect("utf-8 path")];
            let verdict = if r.is_null() {
                None
            } else if let Some(e) = r["error"].as_str() {
                Some(Ok(e.to_owned()))
            } else {
                Some(Err(r["crash"].as_str().expect("crash text").to_owned()))
            };
            (p.clone(), verdict)
        })
        .collect()
}

const OPEN_DRIVER: &str = r#"
import json, logging, sys
from ZODB.FileStorage import FileStorage

class NoIndex(FileStorage):
    def _restore_index(self):
        return None

class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []
    def emit(self, record):
        self.lines.append("%s %s" % (record.levelname, record.getMessage()))

cap = Capture()
logging.getLogger("ZODB").addHandler(cap)
logging.getLogger("ZODB").setLevel(logging.DEBUG)
out = {}
for p in sys.argv[1:]:
    cap.lines = []
    error = None
    try:
        NoIndex(p, read_only=True).close()
    except Exception as e:
        error = "%s: %s" % (type(e).__name__, e)
    out[p] = {"error": error, "log": cap.lines}
print(json.dumps(out))
"#;

/// What ZODB says opening a file read-only with its index rebuilt by
/// scanning (`read_index`): the exception, if any, and the log lines
/// (`"LEVEL message"`).
pub struct ZodbOpen {
    pub error: Option<String>,
    pub log: Vec<String>,
}

/// Opens every path with ZODB's `FileStorage`, in one oracle process.
pub fn zodb_open_many(paths: &[PathBuf]) -> HashMap<PathBuf, ZodbOpen> {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("open_many.py");
    std::fs::write(&script, OPEN_DRIVER).expect("write driver");
    let args: Vec<&std::ffi::OsStr> = paths.iter().map(|p| p.as_os_str()).collect();
    let out = neo_e2e::run_oracle(&script, &args);
    let v: serde_json::Value = serde_json::from_str(&out).expect("driver JSON");
    paths
        .iter()
        .map(|p| {
            let r = &v[p.to_str().expect("utf-8 path")];
            let log = r["log"]
                .as_array()
                .expect("log")
                .iter()
                .map(|l| l.as_str().expect("line").to_owned())
                .collect();
            let error = r["error"].as_str().map(str::to_owned);
            (p.clone(), ZodbOpen { error, log })
        })
        .collect()
}

/// The offset in an fstest message: the number after its last " at ".
pub fn fstest_offset(msg: &str) -> Option<u64> {
    let i = msg.rfind(" at ")?;
    let digits: String = msg[i + 4..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// A small deterministic generator (SplitMix64) for sampling corruptions.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The `neo-fs` binary, built once per test process with the same cargo,
/// profile and target directory as the tests themselves.
pub fn neo_fs() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| neo_e2e::binary("fsformat", "neo-fs"))
}

/// Runs `neo-fs ARGS...`: (exit code, stdout, stderr).
pub fn run_neo_fs(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = Command::new(neo_fs())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run neo-fs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
