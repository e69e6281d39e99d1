//! Benchmark (ignored; run with
//! `cargo test --release -p neo-exporter --test bench -- --ignored --nocapture`):
//! `bench-data/bench.fs` loaded once into a NEO SQLite database
//! (`bench-data/export-bench.sqlite`, kept), then exported, timed in the
//! same run next to `neo-fs copy` of the same file (fsformat's
//! restore-style copy: the writer's limit) and ZODB's
//! `copyTransactionsFrom` (the oracle virtualenv; FileStorage to
//! FileStorage, with ZODB's fsync per transaction and with one fsync).
//! Wall and CPU (user + system, all threads / the child process) times.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{load, new_db, repo, LoadOptions};
use neo_exporter::{export, BackendSource, ExportOptions, NoProgress, Source, SqliteSource};
use neo_server::storage::{SqliteBackend, SqliteOptions};

fn target_release_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_owned()
}

fn neo_fs() -> PathBuf {
    let profile_dir = target_release_dir();
    let target = profile_dir.parent().expect("target dir").to_owned();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "-q", "-p", "fsformat", "--bin", "neo-fs"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(repo());
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    assert!(cmd.status().expect("cargo build").success());
    profile_dir.join("neo-fs")
}

fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

/// CPU seconds (user + system) of this process (all threads) and of its
/// waited-for children, from `/proc/self/stat`.
fn cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    // Fields 14-17 (utime, stime, cutime, cstime); field 3 comes first.
    let f: Vec<f64> = after
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    match f[..] {
        [u, s, cu, cs] => ((u + s) / hz, (cu + cs) / hz),
        _ => (0.0, 0.0),
    }
}

/// One timed run.
struct Run {
    name: String,
    wall: f64,
    cpu: f64,
    bytes: u64,
    txns: u64,
    same: Option<bool>,
}

/// ZODB's `copyTransactionsFrom`, FileStorage to FileStorage (the oracle
/// virtualenv), timed around the copy only: `fsync_each` as ZODB commits,
/// else its fsync switched off and one fsync at the end.
const ZODB_COPY: &str = r#"
import os, sys, time
import ZODB.FileStorage.FileStorage as fsmod
from ZODB.FileStorage import FileStorage
src, out, fsync_each = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
s = FileStorage(src, read_only=True)
if not fsync_each:
    fsmod.fsync = None
d = FileStorage(out, create=True)
c0 = time.process_time(); t0 = time.perf_counter()
d.copyTransactionsFrom(s)
os.fsync(d._file.fileno())
print(time.perf_counter() - t0, time.process_time() - c0)
d.close(); s.close()
"#;

fn zodb_copy(src: &Path, out: &Path, fsync_each: bool) -> Option<Run> {
    let py = std::env::var_os("NEO_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    if !py.exists() {
        println!(
            "ZODB copy skipped: no oracle virtualenv at {}",
            py.display()
        );
        return None;
    }
    let _ = std::fs::remove_file(out);
    let o = Command::new(py)
        .args(["-c", ZODB_COPY])
        .arg(src)
        .arg(out)
        .arg(if fsync_each { "1" } else { "0" })
        .output()
        .expect("run python");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    let v: Vec<f64> = text
        .split_whitespace()
        .map(|x| x.parse().expect("seconds"))
        .collect();
    let size = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    let same = std::fs::read(out).ok() == std::fs::read(src).ok();
    let _ = std::fs::remove_file(out);
    Some(Run {
        name: format!(
            "ZODB copyTransactionsFrom ({})",
            if fsync_each {
                "fsync per transaction"
            } else {
                "one fsync"
            }
        ),
        wall: v[0],
        cpu: v[1],
        bytes: size,
        txns: 0,
        same: Some(same),
    })
}

#[test]
#[ignore = "benchmark: needs bench-data/bench.fs, minutes of work"]
fn export_bench() {
    let data = repo().join("bench-data");
    let src = data.join("bench.fs");
    assert!(src.exists(), "{} missing", src.display());
    let size = std::fs::metadata(&src).unwrap().len();
    let db_path = data.join("export-bench.sqlite");
    let done = data.join("export-bench.sqlite.done");
    if !done.exists() {
        let _ = std::fs::remove_file(&db_path);
        let t = Instant::now();
        let mut db = new_db(&db_path, 1);
        let opts = LoadOptions {
            compress: true,
            ..LoadOptions::default()
        };
        let n = load(&src, &mut db, opts);
        drop(db);
        println!(
            "load into SQLite (test loader, zlib): {n} transactions in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        std::fs::write(&done, "").unwrap();
    }
    let db_size = std::fs::metadata(&db_path).unwrap().len();
    let outdir = data.join("export-bench-out");
    let _ = std::fs::remove_dir_all(&outdir);
    std::fs::create_dir_all(&outdir).unwrap();
    let generic = std::env::var_os("EXPORT_BENCH_GENERIC").is_some();

    // Export (warm cache: read the database once first), with the
    // range-reading source (what neo-export uses), then (with
    // EXPORT_BENCH_GENERIC set) the generic one.
    let _ = std::fs::read(&db_path).map(|b| b.len());
    let mut runs = Vec::new();
    for generic in [false, true].into_iter().take(1 + usize::from(generic)) {
        let out = outdir.join("export.fs");
        let _ = std::fs::remove_file(&out);
        let db = SqliteBackend::open(&db_path, &SqliteOptions::default()).unwrap();
        let mut fast;
        let mut slow;
        let source: &mut (dyn Source + Send) = if generic {
            slow = BackendSource::new(db).unwrap();
            &mut slow
        } else {
            fast = SqliteSource::new(db).unwrap();
            &mut fast
        };
        let (c0, _) = cpu();
        let t = Instant::now();
        let s = export(source, &out, &ExportOptions::default(), &mut NoProgress).unwrap();
        let wall = t.elapsed().as_secs_f64();
        let (c1, _) = cpu();
        let same = std::fs::read(&out).unwrap() == std::fs::read(&src).unwrap();
        runs.push(Run {
            name: format!(
                "neo-export ({} source)",
                if generic { "generic" } else { "sqlite" }
            ),
            wall,
            cpu: c1 - c0,
            bytes: s.file_bytes,
            txns: s.transactions,
            same: Some(same),
        });
        let _ = std::fs::remove_file(&out);
    }
    let txns = runs[0].txns;

    // neo-fs copy of the same file to the same directory.
    let neo_fs = neo_fs();
    let copy = outdir.join("copy.fs");
    let _ = std::fs::read(&src).map(|b| b.len());
    let (_, c0) = cpu();
    let t = Instant::now();
    let st = Command::new(&neo_fs)
        .arg("copy")
        .arg(&src)
        .arg(&copy)
        .status()
        .unwrap();
    let wall = t.elapsed().as_secs_f64();
    let (_, c1) = cpu();
    assert!(st.success());
    let _ = std::fs::remove_file(&copy);
    runs.push(Run {
        name: "neo-fs copy".into(),
        wall,
        cpu: c1 - c0,
        bytes: size,
        txns,
        same: None,
    });
    let zodb = outdir.join("zodb.fs");
    for fsync_each in [true, false] {
        if let Some(mut r) = zodb_copy(&src, &zodb, fsync_each) {
            r.txns = txns;
            runs.push(r);
        }
    }

    println!(
        "source: {} ({size} bytes, {txns} transactions), database {db_size} bytes",
        src.display()
    );
    let export_wall = runs[0].wall;
    println!(
        "{:<48} {:>8} {:>8} {:>8} {:>9} {:>11}  same bytes",
        "run", "wall s", "cpu s", "MB/s", "txn/s", "/ export"
    );
    for r in &runs {
        println!(
            "{:<48} {:>8.2} {:>8.2} {:>8.0} {:>9.0} {:>10.2}x  {}",
            r.name,
            r.wall,
            r.cpu,
            mb_s(r.bytes, r.wall),
            r.txns as f64 / r.wall,
            r.wall / export_wall,
            r.same.map_or("-".into(), |s| s.to_string())
        );
    }
    assert!(runs
        .iter()
        .filter(|r| r.name.starts_with("neo-export"))
        .all(|r| r.same == Some(true)));
    let _ = std::fs::remove_dir_all(&outdir);
}
