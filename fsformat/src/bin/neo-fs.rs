//! `neo-fs`: inspect, verify and copy ZODB FileStorage files (`Data.fs`).
//!
//! | command            | like ZODB's                         |
//! |--------------------|-------------------------------------|
//! | `info PATH`        | (summary: size, tids, counts)       |
//! | `verify PATH`      | `fstest.py` (exit 1 on corruption)  |
//! | `dump PATH`        | `fsdump.py`                         |
//! | `tail PATH [-n N]` | `fstail.py`                         |
//! | `copy SRC DST`     | `copyTransactionsFrom` + `restore`  |
//! | `stats PATH`       | `analyze.py`                        |
//!
//! `dump`, `tail` and `stats` print what ZODB's scripts print, line for
//! line. Logging goes to stderr (`RUST_LOG`, default `info`); a progress
//! bar shows on a terminal for long passes.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use fsformat::verify::{verify_file, VerifyError};
use fsformat::{DataFs, Oid, Stop, SyncMode, TxnStatus, Writer};
use sha1::{Digest, Sha1};

use common::copy::copy_into;
use common::pickle::class_of;
use common::progress::bytes_bar;
use common::pyfmt::{bytes_repr, timestamp};

#[derive(Parser)]
#[command(
    name = "neo-fs",
    version,
    about = "Inspect, verify and copy ZODB FileStorage files (Data.fs)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Size, magic, transaction and object counts, first and last tid.
    Info {
        /// The Data.fs.
        path: PathBuf,
    },
    /// Check the whole file like ZODB's fstest (and a little more); exit 1
    /// with the offset of the first problem.
    Verify {
        /// The Data.fs.
        path: PathBuf,
    },
    /// One line per transaction and per data record, like ZODB's fsdump.
    Dump {
        /// The Data.fs.
        path: PathBuf,
    },
    /// The last transactions, newest first, like ZODB's fstail.
    Tail {
        /// The Data.fs.
        path: PathBuf,
        /// How many transactions.
        #[arg(short = 'n', default_value_t = 10)]
        n: usize,
    },
    /// Write every complete transaction of SRC into the new file DST
    /// (tids, status, metadata, records and backpointers kept; one fsync).
    Copy {
        /// The Data.fs to read.
        src: PathBuf,
        /// The file to create (must not exist).
        dst: PathBuf,
    },
    /// Record counts and sizes per class, like ZODB's analyze.py.
    Stats {
        /// The Data.fs.
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .init();
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Verify { path } => return verify(&path),
        Cmd::Info { path } => info(&path),
        Cmd::Dump { path } => dump(&path),
        Cmd::Tail { path, n } => tail(&path, n),
        Cmd::Copy { src, dst } => copy(&src, &dst),
        Cmd::Stats { path } => stats(&path),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed pipe (`neo-fs dump X | head`) is not a failure.
            if e.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("neo-fs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exit 0 when the file is sound, 1 when corrupt (the message names the
/// offset), 2 when it cannot be read.
fn verify(path: &Path) -> ExitCode {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let pb = bytes_bar(len, "verify");
    let res = verify_file(path, &mut |pos| pb.set_position(pos));
    pb.finish_and_clear();
    match res {
        Ok(r) => {
            for w in &r.warnings {
                log::warn!("{}: {w}", path.display());
            }
            println!(
                "{}: OK: {} bytes, {} transactions, {} data records, {} objects{}",
                path.display(),
                r.file_size,
                r.txns,
                r.records,
                r.objects,
                if r.warnings_total > 0 {
                    format!(", {} warnings", r.warnings_total)
                } else {
                    String::new()
                }
            );
            ExitCode::SUCCESS
        }
        Err(VerifyError::Corrupt { corruption, .. }) => {
            println!(
                "{}: CORRUPT at offset {}: {corruption}",
                path.display(),
                corruption.offset()
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("neo-fs: {e}");
            ExitCode::from(2)
        }
    }
}

fn info(path: &Path) -> Result<()> {
    let fs = DataFs::open(path)?;
    let (mut txns, mut undone, mut records) = (0u64, 0u64, 0u64);
    let mut oids = HashSet::new();
    let (mut first, mut last) = (None, None);
    let mut it = fs.iter();
    for t in it.by_ref() {
        let t = t?;
        txns += 1;
        first.get_or_insert(t.tid);
        last = Some(t.tid);
        if t.status == TxnStatus::Undone.byte() {
            undone += 1;
            continue;
        }
        for r in t.records() {
            let r = r?;
            records += 1;
            oids.insert(r.oid);
        }
    }
    let tid = |t: Option<fsformat::Tid>| match t {
        Some(t) => format!("{t} ({})", timestamp(t)),
        None => "none".to_owned(),
    };
    let magic = fs.magic().bytes();
    println!("file: {}", path.display());
    println!("size: {}", fs.len());
    println!("magic: {}", String::from_utf8_lossy(&magic));
    println!("transactions: {txns}");
    println!("undone transactions: {undone}");
    println!("data records: {records}");
    println!("objects: {}", oids.len());
    println!("first tid: {}", tid(first));
    println!("last tid: {}", tid(last));
    match it.stop() {
        Some(Stop::Eof) | None => {}
        Some(Stop::Corrupt(e)) => bail!("corrupt: {e}"),
        Some(stop) => println!(
            "valid data ends at: {} ({} bytes ignored after: {stop:?})",
            it.pos(),
            fs.len() - it.pos()
        ),
    }
    Ok(())
}

fn dump(path: &Path) -> Result<()> {
    let fs = DataFs::open(path)?;
    let mut out = BufWriter::new(io::stdout().lock());
    for (i, t) in fs.iter().enumerate() {
        let t = t?;
        writeln!(
            out,
            "Trans #{i:05} tid={} size={} time={} offset={}",
            t.tid,
            t.tlen,
            timestamp(t.tid),
            t.data_pos()
        )?;
        writeln!(
            out,
            "    status='{}' user={} description={}",
            char::from(t.status),
            bytes_repr(t.user),
            bytes_repr(t.description)
        )?;
        for (j, r) in t.records().enumerate() {
            let r = r?;
            let data = fs.record_data(&r)?;
            let (size, class) = match data {
                None => (String::new(), "undo or abort of object creation".to_owned()),
                Some(d) => (
                    format!(" size={}", d.len()),
                    match class_of(d) {
                        Some((m, n)) => format!("{m}.{n}"),
                        None => "unknown".to_owned(),
                    },
                ),
            };
            let bp = match r.back() {
                Some(b) if b != 0 => format!(" bp={}", fs.back_tid(r.oid, b)?),
                _ => String::new(),
            };
            writeln!(out, "  data #{j:05} oid={}{size} class={class}{bp}", r.oid)?;
        }
    }
    out.flush()?;
    Ok(())
}

fn tail(path: &Path, n: usize) -> Result<()> {
    let fs = DataFs::open(path)?;
    let mut out = BufWriter::new(io::stdout().lock());
    // fstail prints '' for an empty field (it never read it), bytes else.
    let field = |b: &[u8]| {
        if b.is_empty() {
            "''".to_owned()
        } else {
            bytes_repr(b)
        }
    };
    for t in fs.iter_back().take(n) {
        let t = t?;
        let raw = &fs.bytes()[t.data_pos() as usize..t.end() as usize];
        let hash: String = Sha1::digest(raw)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        writeln!(out, "{}: hash={hash}", timestamp(t.tid))?;
        writeln!(
            out,
            "user={} description={} length={} offset={} (+{})",
            field(t.user),
            field(t.description),
            t.tlen,
            t.pos,
            t.header_len()
        )?;
        writeln!(out)?;
    }
    out.flush()?;
    Ok(())
}

fn copy(src: &Path, dst: &Path) -> Result<()> {
    let fs = DataFs::open(src)?;
    let mut w = Writer::create(dst, fs.magic())
        .with_context(|| format!("cannot create {}", dst.display()))?;
    w.set_sync(SyncMode::OnFinish);
    let pb = bytes_bar(fs.len(), "copy");
    let res = copy_into(&fs, &mut w, &mut |pos| pb.set_position(pos));
    pb.finish_and_clear();
    match res.and_then(|n| w.finish().map(|()| n).map_err(Into::into)) {
        Ok((txns, records)) => {
            log::info!(
                "copied {txns} transactions, {records} data records from {} to {}",
                src.display(),
                dst.display()
            );
            Ok(())
        }
        Err(e) => {
            // DST was created by us (the writer, and its lock, are gone by
            // now): do not leave half a copy behind.
            let _ = std::fs::remove_file(dst);
            let _ = std::fs::remove_file(lock_path(dst));
            Err(e.context(format!("copy of {} failed", src.display())))
        }
    }
}

/// The writer's lock file beside `path` (`<path>.lock`, as ZODB's).
fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// analyze.py's counters.
#[derive(Default)]
struct Report {
    /// oid -> its class, from its first record with data.
    class: HashMap<Oid, String>,
    /// oid -> size of its current record.
    used: HashMap<Oid, u64>,
    /// class -> (records, bytes).
    types: BTreeMap<String, (u64, u64)>,
    tids: u64,
    oids: u64,
    dbytes: u64,
    coids: u64,
    cbytes: u64,
    foids: u64,
    fbytes: u64,
}

fn stats(path: &Path) -> Result<()> {
    let fs = DataFs::open(path)?;
    let pb = bytes_bar(fs.len(), "stats");
    let mut rep = Report::default();
    for t in fs.iter() {
        let t = t?;
        rep.tids += 1;
        for r in t.records() {
            let r = r?;
            rep.oids += 1;
            let Some(data) = fs.record_data(&r)? else {
                continue; // undone creation: counted, no bytes
            };
            let size = data.len() as u64;
            rep.dbytes += size;
            let class = match rep.class.get(&r.oid) {
                Some(c) => {
                    let old = rep.used.insert(r.oid, size).unwrap_or(0);
                    rep.foids += 1;
                    rep.fbytes += old;
                    rep.cbytes = rep.cbytes + size - old;
                    c.clone()
                }
                None => {
                    let c = match class_of(data) {
                        Some((m, n)) => format!("{m}.{n}"),
                        None => "unknown".to_owned(),
                    };
                    rep.class.insert(r.oid, c.clone());
                    rep.used.insert(r.oid, size);
                    rep.coids += 1;
                    rep.cbytes += size;
                    c
                }
            };
            let e = rep.types.entry(class).or_default();
            e.0 += 1;
            e.1 += size;
        }
        pb.set_position(t.next_pos());
    }
    pb.finish_and_clear();
    let mut out = BufWriter::new(io::stdout().lock());
    print_report(&mut out, &rep)?;
    out.flush()?;
    Ok(())
}

/// analyze.py's `shorten`: drops leading dotted parts to fit `n` chars.
fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_owned();
    }
    let mut s = s;
    while s.chars().count() + 3 > n {
        match s.find('.') {
            Some(i) => s = &s[i + 1..],
            None => {
                let skip = s.chars().count().saturating_sub(n);
                return s.chars().skip(skip).collect();
            }
        }
    }
    format!("...{s}")
}

/// analyze.py's `report`, byte for byte.
fn print_report(out: &mut dyn Write, rep: &Report) -> io::Result<()> {
    let f = |x: u64| x as f64;
    writeln!(
        out,
        "Processed {} records in {} transactions",
        rep.oids, rep.tids
    )?;
    if rep.oids == 0 || rep.tids == 0 {
        // analyze.py divides by zero here.
        return Ok(());
    }
    writeln!(
        out,
        "Average record size is {:7.2} bytes",
        f(rep.dbytes) / f(rep.oids)
    )?;
    writeln!(
        out,
        "Average transaction size is {:7.2} bytes",
        f(rep.dbytes) / f(rep.tids)
    )?;
    writeln!(out, "Types used:")?;
    writeln!(
        out,
        "{:<46} {:>7} {:>9} {:>6} {:>7}",
        "Class Name", "Count", "TBytes", "Pct", "AvgSize"
    )?;
    writeln!(
        out,
        "{:<46} {:>7} {:>9} {:>6} {:>7}",
        "-".repeat(46),
        "-".repeat(7),
        "-".repeat(9),
        "-".repeat(5),
        "-".repeat(7)
    )?;
    let mut cumpct = 0.0;
    for (t, &(count, size)) in &rep.types {
        let pct = f(size) * 100.0 / f(rep.dbytes);
        cumpct += pct;
        writeln!(
            out,
            "{:<46} {:>7} {:>9} {:>5.1}% {:>7.2}",
            shorten(t, 46),
            count,
            size,
            pct,
            f(size) / f(count)
        )?;
    }
    writeln!(
        out,
        "{:<46} {:>7} {:>9} {:>6} {:>7}",
        "=".repeat(46),
        "=".repeat(7),
        "=".repeat(9),
        "=".repeat(5),
        "=".repeat(7)
    )?;
    writeln!(
        out,
        "{:>46} {:>7} {:>9} {:>6} {:>6.2}k",
        "Total Transactions",
        rep.tids,
        " ",
        " ",
        f(rep.dbytes) / f(rep.tids) / 1024.0
    )?;
    // fmts = "%46s %7d %8dk %5.1f%% %7.2f"; %d of a float truncates.
    let line = |out: &mut dyn Write, name: &str, n: u64, bytes: u64, pct: f64| {
        writeln!(
            out,
            "{:>46} {:>7} {:>8}k {:>5.1}% {:>7.2}",
            name,
            n,
            (f(bytes) / 1024.0).trunc() as u64,
            pct,
            f(bytes) / f(n)
        )
    };
    line(out, "Total Records", rep.oids, rep.dbytes, cumpct)?;
    let pct = |b: u64| f(b) * 100.0 / f(rep.dbytes);
    line(
        out,
        "Current Objects",
        rep.coids,
        rep.cbytes,
        pct(rep.cbytes),
    )?;
    if rep.foids > 0 {
        line(out, "Old Objects", rep.foids, rep.fbytes, pct(rep.fbytes))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_like_analyze() {
        assert_eq!(shorten("a.b", 46), "a.b");
        let long = "very.long.module.path.with.many.parts.inside.it.ClassName";
        let s = shorten(long, 46);
        assert!(s.starts_with("...") && s.ends_with("ClassName"), "{s}");
        assert!(s.chars().count() <= 46);
        assert_eq!(shorten(&"x".repeat(50), 46), "x".repeat(46));
    }
}
