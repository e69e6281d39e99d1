//! Benchmark (ignored; run with
//! `cargo test --release -p neo-exporter --test bench -- --ignored --nocapture`):
//! `bench-data/bench.fs` loaded once into a NEO SQLite database
//! (`bench-data/export-bench.sqlite`, kept), then exported, timed next to
//! `neo-fs copy` of the same file (fsformat's restore-style copy: the
//! writer's limit).

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

    // Export (warm cache: read the database once first), with the
    // range-reading source (what neo-export uses), then the generic one.
    let _ = std::fs::read(&db_path).map(|b| b.len());
    let mut runs = Vec::new();
    for generic in [false, true] {
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
        let t = Instant::now();
        let s = export(source, &out, &ExportOptions::default(), &mut NoProgress).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let same = std::fs::read(&out).unwrap() == std::fs::read(&src).unwrap();
        runs.push((if generic { "generic" } else { "sqlite" }, s, secs, same));
    }

    // neo-fs copy of the same file to the same directory.
    let neo_fs = neo_fs();
    let copy = outdir.join("copy.fs");
    let _ = std::fs::read(&src).map(|b| b.len());
    let t = Instant::now();
    let st = Command::new(&neo_fs)
        .arg("copy")
        .arg(&src)
        .arg(&copy)
        .status()
        .unwrap();
    let copy_s = t.elapsed().as_secs_f64();
    assert!(st.success());

    println!(
        "source: {} ({size} bytes), database {db_size} bytes",
        src.display()
    );
    for (name, s, secs, same) in &runs {
        println!(
            "export ({name} source): {} transactions, {} records in {secs:.2}s: {:.0} MB/s, \
             {:.0} txn/s, {:.2}x neo-fs copy; byte-identical to bench.fs: {same}",
            s.transactions,
            s.records,
            mb_s(s.file_bytes, *secs),
            s.transactions as f64 / secs,
            secs / copy_s
        );
    }
    println!(
        "neo-fs copy: {copy_s:.2}s: {:.0} MB/s, {:.0} txn/s",
        mb_s(size, copy_s),
        runs[0].1.transactions as f64 / copy_s,
    );
    assert!(runs.iter().all(|r| r.3));
    let _ = std::fs::remove_dir_all(&outdir);
}
