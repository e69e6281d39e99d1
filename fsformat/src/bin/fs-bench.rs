//! `fs-bench`: fsformat against a plain read of the file and against the
//! real ZODB, on the benchmark `Data.fs` of `scripts/bench/gen_bench_fs.py`.
//!
//! In one run, on a file in the page cache (one untimed read first, as
//! `zodb_bench.py` does): a 1 MiB read loop over the file (what `dd
//! bs=1M` does), our full iteration reading every record's data (crc32 of
//! each, backpointers followed), the index built by opening without a
//! sidecar, `verify`, a copy with one fsync, random hot loads (µs/load) and
//! the index's heap bytes per object. Then `zodb_bench.py` on the same file
//! and the ratios (ZODB time / our time).
//!
//!     cargo run --release -p fsformat --bin fs-bench [-- FILE]
//!
//! Without FILE, `bench-data/bench.fs` is used, generated first if missing
//! (with the oracle Python, `$NEO_TEST_PYTHON` or `.venv/bin/python`).

mod common;

use std::fs::File;
use std::hint::black_box;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use fsformat::verify::verify_file;
use fsformat::{DataFs, FileStorage, OpenOptions, SyncMode, Writer};

use common::copy::copy_into;

#[derive(Parser)]
#[command(
    name = "fs-bench",
    about = "Benchmark fsformat against ZODB on a big Data.fs"
)]
struct Args {
    /// The Data.fs (default: <repo>/bench-data/bench.fs, generated if missing).
    file: Option<PathBuf>,
    /// Number of random hot loads.
    #[arg(long, default_value_t = 100_000)]
    loads: usize,
    /// Seed of the random oid sample.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Do not run ZODB's side (zodb_bench.py).
    #[arg(long)]
    no_zodb: bool,
    /// Also time ZODB's copy with its fsync per transaction (slow).
    #[arg(long)]
    zodb_fsync_each: bool,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn oracle_python() -> PathBuf {
    std::env::var_os("NEO_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"))
}

fn secs<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    let t0 = Instant::now();
    let r = f()?;
    Ok((t0.elapsed().as_secs_f64(), r))
}

/// Reads the whole file with 1 MiB reads; returns the bytes read.
fn read_all(path: &Path) -> Result<u64> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            return Ok(n);
        }
        n += k as u64;
        black_box(&buf[..k]);
    }
}

/// Every transaction and record, each record's data read (crc32): counts.
fn iterate(path: &Path) -> Result<(u64, u64, u64)> {
    let fs = DataFs::open(path)?;
    let (mut txns, mut records, mut bytes) = (0u64, 0u64, 0u64);
    let mut crc = crc32fast::Hasher::new();
    for t in fs.iter() {
        let t = t?;
        txns += 1;
        for r in t.records() {
            let r = r?;
            records += 1;
            if let Some(d) = fs.record_data(&r)? {
                bytes += d.len() as u64;
                crc.update(d);
            }
        }
    }
    black_box(crc.finalize());
    Ok((txns, records, bytes))
}

/// SplitMix64, for the oid sample.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const COPY_EACH: &str = "copy (ZODB: fsync per transaction)";

struct Row {
    what: &'static str,
    ours: f64,
    zodb: Option<f64>,
    unit: &'static str,
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let py = oracle_python();
    let file = match args.file {
        Some(f) => f,
        None => {
            let f = repo_root().join("bench-data/bench.fs");
            if !f.exists() {
                std::fs::create_dir_all(repo_root().join("bench-data"))?;
                eprintln!("generating {} (about a minute)...", f.display());
                let st = Command::new(&py)
                    .arg(repo_root().join("scripts/bench/gen_bench_fs.py"))
                    .arg(&f)
                    .status()
                    .with_context(|| format!("running {}", py.display()))?;
                if !st.success() {
                    bail!("gen_bench_fs.py failed");
                }
            }
            f
        }
    };
    let size = std::fs::metadata(&file)?.len();
    let mb = size as f64 / 1e6;
    println!("file: {} ({size} bytes)", file.display());

    // Into the page cache, untimed, like zodb_bench.py.
    read_all(&file)?;
    let (read_s, _) = secs(|| read_all(&file))?;
    let (iter_s, (txns, records, data_bytes)) = secs(|| iterate(&file))?;
    let opts = OpenOptions {
        read_index: false,
        write_index: false,
    };
    let (index_s, st) = secs(|| Ok(FileStorage::open_with(&file, opts)?))?;
    let objects = st.len();
    let index_bytes = st.index().heap_bytes();
    let (verify_s, report) = secs(|| Ok(verify_file(&file, &mut |_| {})?))?;
    let copy_path = file.with_file_name(format!("fs-bench-copy-{}.fs", std::process::id()));
    let (copy_s, _) = secs(|| {
        let fs = DataFs::open(&file)?;
        let mut w = Writer::create(&copy_path, fs.magic())?;
        w.set_sync(SyncMode::OnFinish);
        copy_into(&fs, &mut w, &mut |_| {})?;
        w.finish()?;
        Ok(())
    })?;
    let copy_same = std::fs::metadata(&copy_path)?.len() == size;
    std::fs::remove_file(&copy_path)?;
    let mut lock = copy_path.into_os_string();
    lock.push(".lock");
    let _ = std::fs::remove_file(lock);

    let oids: Vec<_> = st.index().iter().map(|(o, _)| o).collect();
    let mut rng = args.seed ^ 0x5EED;
    let sample: Vec<_> = (0..args.loads)
        .map(|_| oids[(splitmix(&mut rng) % oids.len() as u64) as usize])
        .collect();
    for &o in &sample {
        black_box(st.load(o)?);
    }
    let (loads_s, _) = secs(|| {
        for &o in &sample {
            black_box(st.load(o)?);
        }
        Ok(())
    })?;
    let load_us = loads_s / args.loads as f64 * 1e6;

    println!(
        "ours: {txns} transactions, {records} records, {data_bytes} data bytes, {objects} objects; \
         verify saw {} transactions; copy same size: {copy_same}",
        report.txns
    );
    let zodb: Option<serde_json::Value> = if args.no_zodb {
        None
    } else {
        let mut cmd = Command::new(&py);
        cmd.arg(repo_root().join("scripts/bench/zodb_bench.py"))
            .arg(&file)
            .arg("--loads")
            .arg(args.loads.to_string());
        if !args.zodb_fsync_each {
            cmd.arg("--no-copy-fsync-each");
        }
        eprintln!("running zodb_bench.py (a few minutes)...");
        let out = cmd
            .output()
            .with_context(|| format!("running {}", py.display()))?;
        if !out.status.success() {
            bail!(
                "zodb_bench.py failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        println!(
            "zodb_bench.py: {}",
            text.split_whitespace().collect::<Vec<_>>().join(" ")
        );
        Some(serde_json::from_str(&text).context("zodb_bench.py output")?)
    };
    let z = |k: &str| zodb.as_ref().and_then(|o| o[k].as_f64());
    if let Some(o) = &zodb {
        for (k, ours) in [
            ("transactions", txns as f64),
            ("records", records as f64),
            ("objects", objects as f64),
        ] {
            if o[k].as_f64() != Some(ours) {
                println!("WARNING: {k} differ: ours {ours}, ZODB {}", o[k]);
            }
        }
    }
    let rows = [
        Row {
            what: "read file, 1 MiB reads (dd)",
            ours: read_s,
            zodb: None,
            unit: "s",
        },
        Row {
            what: "iterate, every record's data",
            ours: iter_s,
            zodb: z("iterate_s"),
            unit: "s",
        },
        Row {
            what: "index build on open (no sidecar)",
            ours: index_s,
            zodb: z("index_rebuild_s"),
            unit: "s",
        },
        Row {
            what: "verify (ZODB: fstest)",
            ours: verify_s,
            zodb: z("fstest_s"),
            unit: "s",
        },
        Row {
            what: "copy, one fsync",
            ours: copy_s,
            zodb: z("copy_one_fsync_s"),
            unit: "s",
        },
        Row {
            what: COPY_EACH,
            ours: copy_s,
            zodb: z("copy_s"),
            unit: "s",
        },
        Row {
            what: "random hot load",
            ours: load_us,
            zodb: z("load_us"),
            unit: "us",
        },
    ];
    println!();
    println!(
        "{:<36} {:>10} {:>10} {:>9} {:>10}",
        "step", "ours", "ZODB", "ZODB/ours", "ours MB/s"
    );
    // ZODB's per-transaction-fsync copy only when it was timed.
    for r in rows
        .iter()
        .filter(|r| r.zodb.is_some() || r.what != COPY_EACH)
    {
        let zs = r.zodb.map_or("-".to_owned(), |z| format!("{z:.3}"));
        let ratio = r
            .zodb
            .map_or("-".to_owned(), |z| format!("{:.1}x", z / r.ours));
        let rate = if r.unit == "s" {
            format!("{:.0}", mb / r.ours)
        } else {
            "-".to_owned()
        };
        println!(
            "{:<36} {:>8.3}{:<2} {:>10} {:>9} {:>10}",
            r.what, r.ours, r.unit, zs, ratio, rate
        );
    }
    println!(
        "{:<36} {:>8.1}B  (index heap {index_bytes} bytes / {objects} objects)",
        "index memory per object",
        index_bytes as f64 / objects.max(1) as f64
    );
    println!(
        "iterate vs plain read: {:.2}x the read time; verify: {:.2}x",
        iter_s / read_s,
        verify_s / read_s
    );
    Ok(())
}
