//! `import-bench [DATA.FS] [--work DIR] [--compress true|false|zlib=N] [--step N]`:
//! times the import of a `Data.fs` (default `bench-data/bench.fs`) into a
//! new SQLite database, with random loads between import steps (client
//! latency during the import), and a bare bulk insert of the same rows into
//! SQLite (the limit: no reading, no checksum, no compression timed).
//! With `IMPORT_BENCH_COMPRESS_ONLY=1`: compression alone, NEO's exact rule
//! vs the probe, levels 1 and 6 (or `IMPORT_BENCH_LEVELS=1,2,...`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fsformat::{FileStorage, Oid, Payload, Tid};
use neo_importer::{
    compress::compress_data_exact, compress_data, import_sqlite_options, Compress, Importer,
    ImporterConfig, IMPORT_CACHE_SIZE,
};
use neo_server::storage::{make_checksum, Backend, CellState, SqliteBackend, SqliteOptions};
use rusqlite::params;

struct Args {
    source: PathBuf,
    work: PathBuf,
    compress: String,
    step: usize,
}

fn parse_args() -> Result<Args, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut a = Args {
        source: root.join("bench-data/bench.fs"),
        work: root.join("bench-data"),
        compress: "true".into(),
        step: 2000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match x.as_str() {
            "--work" => a.work = PathBuf::from(val("--work")?),
            "--compress" => a.compress = val("--compress")?,
            "--step" => a.step = val("--step")?.parse().map_err(|e| format!("--step: {e}"))?,
            "-h" | "--help" => {
                return Err(
                    "usage: import-bench [DATA.FS] [--work DIR] [--compress V] [--step N]".into(),
                )
            }
            _ => a.source = PathBuf::from(x),
        }
    }
    Ok(a)
}

fn fresh_db(path: &Path) -> Result<SqliteBackend, Box<dyn std::error::Error>> {
    for ext in ["", "-journal", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{ext}", path.display()));
        if p.exists() {
            std::fs::remove_file(&p)?;
        }
    }
    let mut db = SqliteBackend::open(path, &import_sqlite_options(&SqliteOptions::default()))?;
    db.set_nid(1)?;
    db.change_partition_table(1, 0, &[(0, 1, CellState::UpToDate)], true, Tid::ZERO)?;
    db.commit()?;
    Ok(db)
}

/// CPU time (user + system, all threads) of this process so far, from
/// `/proc/self/stat` (Linux; zero elsewhere).
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the ")" closing the command name: utime is the 12th,
    // stime the 13th, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    Duration::from_millis(f.iter().sum::<u64>() * 10)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Inserts the rows an import makes (data, obj, trans), read from the
/// source beforehand: what SQLite alone costs.
fn bulk_insert(src: &Path, db_path: &Path) -> Result<(Duration, u64), Box<dyn std::error::Error>> {
    let fs = FileStorage::open(src)?;
    type Row = (u64, [u8; 20], Vec<u8>);
    let mut data: Vec<Row> = Vec::new();
    let mut objs: Vec<(u64, u64, Option<u64>, Option<u64>)> = Vec::new();
    type TransRow = (u64, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);
    let mut trans: Vec<TransRow> = Vec::new();
    let mut last: std::collections::HashMap<(u64, u64), Option<u64>> = Default::default();
    for t in fs.iter() {
        let t = t?;
        let mut oids = Vec::new();
        for r in t.records() {
            let r = r?;
            oids.extend_from_slice(&r.oid.to_bytes());
            let id = match r.payload {
                Payload::Data(d) => {
                    let id = data.len() as u64;
                    data.push((id, make_checksum(d), d.to_vec()));
                    Some(id)
                }
                Payload::Back(0) => None,
                Payload::Back(b) => {
                    let dt = fs.datafs().back_tid(r.oid, b)?;
                    last.get(&(r.oid.0, dt.0)).copied().flatten()
                }
            };
            last.insert((r.oid.0, t.tid.0), id);
            objs.push((r.oid.0, t.tid.0, id, None));
        }
        trans.push((
            t.tid.0,
            oids,
            t.user.to_vec(),
            t.description.to_vec(),
            t.extension.to_vec(),
        ));
    }
    let db = fresh_db(db_path)?;
    drop(db);
    let c = rusqlite::Connection::open(db_path)?;
    c.execute_batch(&format!("PRAGMA cache_size = {IMPORT_CACHE_SIZE}"))?;
    let start = Instant::now();
    c.execute_batch("BEGIN")?;
    {
        let mut sd = c.prepare("INSERT INTO data VALUES (?,?,0,?)")?;
        for (id, h, v) in &data {
            sd.execute(params![*id as i64, &h[..], v])?;
        }
        let mut so = c.prepare("INSERT OR REPLACE INTO obj VALUES (0,?,?,?,?)")?;
        for (o, t, d, v) in &objs {
            so.execute(params![
                *o as i64,
                *t as i64,
                d.map(|x| x as i64),
                v.map(|x| x as i64)
            ])?;
        }
        let mut st = c.prepare("INSERT INTO trans VALUES (0,?,0,?,?,?,?,?)")?;
        for (t, oids, u, d, e) in &trans {
            st.execute(params![*t as i64, oids, u, d, e, *t as i64])?;
        }
    }
    c.execute_batch("COMMIT")?;
    Ok((start.elapsed(), objs.len() as u64))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let size = std::fs::metadata(&args.source)?.len();
    if std::env::var_os("IMPORT_BENCH_COMPRESS_ONLY").is_some() {
        let fs = FileStorage::open(&args.source)?;
        type CompressFn = fn(Compress, &[u8]) -> (u8, std::borrow::Cow<'_, [u8]>);
        let modes: [(&str, CompressFn); 2] =
            [("exact", compress_data_exact), ("probe", compress_data)];
        let levels: Vec<u32> = std::env::var("IMPORT_BENCH_LEVELS")
            .unwrap_or_else(|_| "1,6".into())
            .split(',')
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        for level in levels {
            for (mode, f) in modes {
                let (mut raw, mut out, mut zlib, start) = (0u64, 0u64, 0u64, Instant::now());
                for t in fs.iter() {
                    for r in t?.records() {
                        if let Some(d) = r?.data() {
                            raw += d.len() as u64;
                            let (c, b) = f(Compress::Zlib(level), d);
                            out += b.len() as u64;
                            zlib += u64::from(c);
                        }
                    }
                }
                let s = start.elapsed().as_secs_f64();
                println!(
                    "zlib level {level} {mode}: {:.1} MB/s (one thread), stored/raw {:.4}, {zlib} records zlib",
                    raw as f64 / 1e6 / s,
                    out as f64 / raw as f64
                );
            }
        }
        return Ok(());
    }
    println!("source: {} ({size} bytes)", args.source.display());
    std::fs::create_dir_all(&args.work)?;
    let db_path = args.work.join("import-bench.sqlite");
    let db = fresh_db(&db_path)?;
    let text = format!(
        "[neo]\ndatabase = {}\ncompress = {}\n[root]\nstorage =\n  <filestorage>\n    path {}\n  </filestorage>\n",
        db_path.display(),
        args.compress,
        args.source.display()
    );
    let cfg = ImporterConfig::parse(&text, &args.work.join("importer.conf"))?;
    let start = Instant::now();
    let cpu0 = cpu_time();
    let mut imp = Importer::open(&cfg, db)?;
    let opened = start.elapsed();
    let loid = {
        let (_, o) = imp.last_ids()?;
        o.map_or(0, |o| o.0)
    };
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut lat = Vec::new();
    let mut load_time = Duration::ZERO;
    let mut records = 0;
    while !imp.is_finished() {
        let p = imp.import_some(args.step)?;
        records = p.records_done;
        // A few client loads between steps.
        let t0 = Instant::now();
        for _ in 0..200 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let oid = Oid(rng % (loid + 1));
            let t = Instant::now();
            let _ = imp.find_object(oid, None, None)?;
            lat.push(t.elapsed());
        }
        load_time += t0.elapsed();
    }
    let total = start.elapsed() - load_time;
    let cpu = cpu_time() - cpu0;
    lat.sort();
    let secs = total.as_secs_f64();
    println!(
        "import (compress={}): {:.2} s (open {:.2} s), {records} records, {:.0} records/s, {:.1} MB/s",
        args.compress,
        secs,
        opened.as_secs_f64(),
        records as f64 / secs,
        size as f64 / 1e6 / secs
    );
    println!(
        "  CPU time of the import (all threads, loads included): {:.2} s",
        cpu.as_secs_f64()
    );
    println!(
        "loads during import: {} loads, p50 {:.1} us, p99 {:.1} us",
        lat.len(),
        percentile(&lat, 0.5).as_secs_f64() * 1e6,
        percentile(&lat, 0.99).as_secs_f64() * 1e6
    );
    let mut after = Vec::new();
    for _ in 0..(lat.len().min(20_000)) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let oid = Oid(rng % (loid + 1));
        let t = Instant::now();
        let _ = imp.find_object(oid, None, None)?;
        after.push(t.elapsed());
    }
    after.sort();
    println!(
        "loads after import (SQLite): p50 {:.1} us, p99 {:.1} us",
        percentile(&after, 0.5).as_secs_f64() * 1e6,
        percentile(&after, 0.99).as_secs_f64() * 1e6
    );
    drop(imp);
    let bulk_path = args.work.join("import-bench-bulk.sqlite");
    let cpu0 = cpu_time();
    let (bulk, rows) = bulk_insert(&args.source, &bulk_path)?;
    let bulk_cpu = cpu_time() - cpu0;
    println!(
        "bare bulk insert of the same rows (raw data, one transaction): {:.2} s, {rows} obj rows, {:.1} MB/s",
        bulk.as_secs_f64(),
        size as f64 / 1e6 / bulk.as_secs_f64()
    );
    println!(
        "  CPU time of the bulk insert (rows built beforehand, not timed, included here): {:.2} s",
        bulk_cpu.as_secs_f64()
    );
    for p in [&db_path, &bulk_path] {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}
