//! [`Importer`]: the state of an import and its engine.
//!
//! The destination holds, in its `config` table:
//!
//! | key             | value                                                  |
//! |-----------------|--------------------------------------------------------|
//! | `importer_ltid` | 16 hex digits: the source's last tid when the import began |
//! | `importer_loid` | 16 hex digits: the source's highest oid then            |
//! | `importer_tid`  | 16 hex digits: the last imported transaction            |
//! | `importer_layout` | several sources: their merged layout and staging file ([`staging`](crate::staging)) |
//!
//! `importer_tid` is written in the same database transaction as the rows
//! of the transaction it names, so after a crash the import resumes right
//! after the last committed one (NEO derives the same position from the
//! greatest tid of `trans` up to `ltid`, which we use when the key is
//! missing, e.g. for a database Python NEO's Importer started).
//!
//! Transactions are copied in tid order with NEO's rules: data compressed
//! with zlib when that makes it smaller (`compression` 1), its SHA-1 taken
//! over the stored bytes, deduplicated by the destination when it was
//! created with `--dedup`; a backpointer becomes a reference to the data
//! row of the record it points to, with `value_tid` = that record's tid
//! (ZODB's `data_txn`); a zero backpointer (undone creation, deletion)
//! becomes a row without data.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fsformat::{Oid, Payload, Tid, TxnHeader, TxnStatus, Writer};
use neo_server::storage::{
    make_checksum, Backend, Checksum, DbError, ObjectRef, SqliteBackend, SqliteOptions, TxnMeta,
    MAX_TID,
};

use crate::compress::compress_data;
use crate::config::{Adapter, Compress, ImporterConfig};
use crate::error::ImportError;
use crate::source::Source;
use crate::staging::{staging_for, KEY_LAYOUT};

/// `config` key: the last imported tid.
pub const KEY_TID: &str = "importer_tid";
/// `config` key: the source's last tid when the import began.
pub const KEY_LTID: &str = "importer_ltid";
/// `config` key: the source's highest oid when the import began.
pub const KEY_LOID: &str = "importer_loid";

/// The line logged (at info level) once everything is imported.
pub const ALL_IMPORTED: &str = "All data are imported";

/// How far an import is.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// Transactions in the destination, of `txns_total`.
    pub txns_done: u64,
    /// Transactions to import.
    pub txns_total: u64,
    /// Bytes of the source covered by the imported transactions.
    pub bytes_done: u64,
    /// Bytes of the source to import.
    pub bytes_total: u64,
    /// Data records imported by this process.
    pub records_done: u64,
    /// Time spent importing in this process.
    pub elapsed: Duration,
    /// Bytes per second since this process began importing (wall clock:
    /// the time serving requests or throttled counts too, so `eta` holds).
    pub rate: f64,
    /// Estimated time left at that rate.
    pub eta: Option<Duration>,
    /// Whether everything is imported.
    pub finished: bool,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = if self.bytes_total == 0 {
            100.0
        } else {
            self.bytes_done as f64 * 100.0 / self.bytes_total as f64
        };
        write!(
            f,
            "imported {}/{} transactions, {:.1}/{:.1} MB ({pct:.1}%), {:.1} MB/s",
            self.txns_done,
            self.txns_total,
            self.bytes_done as f64 / 1e6,
            self.bytes_total as f64 / 1e6,
            self.rate / 1e6
        )?;
        match self.eta {
            Some(eta) if !self.finished => write!(f, ", ETA {} s", eta.as_secs()),
            _ => Ok(()),
        }
    }
}

/// Appends the destination's new transactions to the source.
#[derive(Debug)]
struct WriteBack {
    writer: Writer,
    pending: bool,
}

/// The Importer storage backend: a destination [`Backend`] plus the source
/// `Data.fs` being imported into it (see the crate documentation).
#[derive(Debug)]
pub struct Importer<B: Backend> {
    pub(crate) db: B,
    /// `None` once everything is imported (and no writeback).
    pub(crate) src: Option<Source>,
    pub(crate) ltid: Tid,
    pub(crate) loid: Oid,
    /// The last imported tid (zero before the first).
    pub(crate) zodb_tid: Tid,
    pub(crate) finished: bool,
    /// `finished`, for the load path's reader (set once committed).
    pub(crate) finished_flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Whether the destination may hold transactions above `ltid`
    /// (`None`: not known yet).
    pub(crate) has_new: Option<bool>,
    source_path: PathBuf,
    compress: Compress,
    writeback: Option<WriteBack>,
    // progress
    txns_done: u64,
    txns_total: u64,
    bytes_done: u64,
    bytes_total: u64,
    records_done: u64,
    bytes_this_run: u64,
    elapsed: Duration,
    log_every: Duration,
    last_log: Option<Instant>,
    /// `(bytes per second, start of the throttled run)`.
    max_rate: Option<(f64, Option<Instant>)>,
    /// When this process began importing, and finished.
    run: Option<(Instant, Option<Instant>)>,
    /// Where [`Importer::import_for`] publishes its progress for another
    /// thread (e.g. `neo-import`'s progress bar).
    watch: Option<ProgressWatch>,
}

/// The latest [`Progress`] of an import, readable from another thread.
pub type ProgressWatch = std::sync::Arc<std::sync::Mutex<Progress>>;

fn hex_config<B: Backend>(db: &mut B, key: &str) -> Result<Option<u64>, ImportError> {
    match db.config(key)? {
        None => Ok(None),
        Some(v) => u64::from_str_radix(v.trim(), 16).map(Some).map_err(|_| {
            ImportError::Db(DbError::Corrupted {
                what: format!("config.{key} is not 16 hex digits: {v:?}"),
            })
        }),
    }
}

impl Importer<SqliteBackend> {
    /// Opens the destination named by `[neo]` (SQLite; a relative path is
    /// taken from the directory of `importer.conf`) with `opts` (`--reset`,
    /// `--dedup`; pragmas come from a `file:` database URI) and the import
    /// described by `config`.
    pub fn open_sqlite(config: &ImporterConfig, opts: &SqliteOptions) -> Result<Self, ImportError> {
        if config.adapter != Adapter::Sqlite {
            return Err(ImportError::Unsupported {
                what: format!(
                    "{}: adapter MySQL: open the destination with the MySQL backend and \
                     Importer::open (open_sqlite only builds SQLite destinations)",
                    config.path.display()
                ),
            });
        }
        let (path, mut o) = SqliteOptions::parse_database(&config.database).map_err(|e| {
            ImportError::Unsupported {
                what: format!(
                    "{}: database {:?}: {e}",
                    config.path.display(),
                    config.database
                ),
            }
        })?;
        let path = if path.is_relative() {
            config.path.parent().unwrap_or(Path::new(".")).join(path)
        } else {
            path
        };
        o.reset = opts.reset;
        o.dedup = opts.dedup;
        let db = SqliteBackend::open(&path, &import_sqlite_options(&o))?;
        Importer::open(config, db)
    }
}

impl<B: Backend> Importer<B> {
    /// Opens the import of `config` into `db`: opens the source (first
    /// repairing its tail with the writer when `writeback` is on: a crash
    /// while appending leaves an unfinished transaction there), records or
    /// checks the import bounds, finds where to resume, and writes back
    /// what a crash left unwritten.
    pub fn open(config: &ImporterConfig, mut db: B) -> Result<Self, ImportError> {
        // Several sources: merged once into a staging file (staging.rs).
        let (path, new_layout) = if config.sources.len() > 1 {
            let recorded = db.config(KEY_LAYOUT)?;
            staging_for(config, recorded.as_deref())?
        } else {
            (config.main_source().storage.path.clone(), None)
        };
        let writer = if config.writeback {
            let mut w = Writer::open(&path).map_err(|error| ImportError::Source {
                path: path.clone(),
                error,
            })?;
            // One fsync per batch of written-back transactions
            // (flush_writeback), not one per transaction.
            w.set_sync(fsformat::SyncMode::OnFinish);
            Some(w)
        } else {
            None
        };
        let bounds = match (
            hex_config(&mut db, KEY_LTID)?,
            hex_config(&mut db, KEY_LOID)?,
        ) {
            (Some(t), Some(o)) => Some((Tid(t), Oid(o))),
            _ => None,
        };
        let src = Source::open(&path, bounds)?;
        let (ltid, loid) = (src.ltid(), src.loid());
        if bounds.is_none() || new_layout.is_some() {
            db.set_config(KEY_LTID, Some(&ltid.to_string()))?;
            db.set_config(KEY_LOID, Some(&loid.to_string()))?;
            if let Some(text) = &new_layout {
                db.set_config(KEY_LAYOUT, Some(text))?;
            }
            db.commit()?;
        }
        let zodb_tid = match hex_config(&mut db, KEY_TID)? {
            Some(t) => Tid(t),
            None if db.partition_view()?.np > 0 => db.last_tid(Some(ltid))?.unwrap_or(Tid::ZERO),
            None => Tid::ZERO,
        };
        if zodb_tid > ltid || (zodb_tid != Tid::ZERO && src.txn(zodb_tid).ok().flatten().is_none())
        {
            return Err(ImportError::SourceChanged {
                path: path.clone(),
                reason: format!(
                    "the destination imported up to {zodb_tid}, a transaction it does not have"
                ),
            });
        }
        let done = src.first_after(zodb_tid);
        let txns = src.txns();
        let base = fsformat::format::MAGIC_LEN;
        let bytes_total = txns.last().map_or(0, |t| t.end - base);
        let bytes_done = if done == 0 {
            0
        } else {
            txns[done - 1].end - base
        };
        let mut imp = Importer {
            txns_done: done as u64,
            txns_total: txns.len() as u64,
            bytes_done,
            bytes_total,
            db,
            src: Some(src),
            ltid,
            loid,
            zodb_tid,
            finished: false,
            finished_flag: Default::default(),
            has_new: None,
            source_path: path,
            compress: config.compress,
            writeback: writer.map(|writer| WriteBack {
                writer,
                pending: true,
            }),
            records_done: 0,
            bytes_this_run: 0,
            elapsed: Duration::ZERO,
            log_every: Duration::from_secs(10),
            last_log: None,
            max_rate: None,
            run: None,
            watch: None,
        };
        log::info!(
            "importing {} into the storage database: {}",
            imp.source_path.display(),
            imp.progress()
        );
        if imp.db.partition_view()?.np > 0 {
            imp.flush_writeback()?;
        }
        if zodb_tid == ltid {
            imp.finish();
        }
        Ok(imp)
    }

    /// The destination.
    pub fn db(&mut self) -> &mut B {
        &mut self.db
    }

    /// Gives the destination back.
    pub fn into_db(self) -> B {
        self.db
    }

    /// The source file.
    pub fn source_path(&self) -> &Path {
        &self.source_path
    }

    /// The source's last tid when the import began: clients' new
    /// transactions get greater tids.
    pub fn last_source_tid(&self) -> Tid {
        self.ltid
    }

    /// The last imported tid (zero before the first).
    pub fn imported_tid(&self) -> Tid {
        self.zodb_tid
    }

    /// Whether everything is imported (then reads use the destination
    /// alone).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// How often [`import_some`](Self::import_some) logs the progress
    /// (default 10 s).
    pub fn set_log_interval(&mut self, every: Duration) {
        self.log_every = every;
    }

    /// The progress so far.
    pub fn progress(&self) -> Progress {
        let secs = match self.run {
            Some((start, end)) => end.unwrap_or_else(Instant::now).duration_since(start),
            None => Duration::ZERO,
        }
        .as_secs_f64();
        let rate = if secs > 0.0 {
            self.bytes_this_run as f64 / secs
        } else {
            0.0
        };
        let left = self.bytes_total.saturating_sub(self.bytes_done);
        let eta = if self.finished {
            Some(Duration::ZERO)
        } else if rate > 0.0 {
            Some(Duration::from_secs_f64(left as f64 / rate))
        } else {
            None
        };
        Progress {
            txns_done: self.txns_done,
            txns_total: self.txns_total,
            bytes_done: self.bytes_done,
            bytes_total: self.bytes_total,
            records_done: self.records_done,
            elapsed: self.elapsed,
            rate,
            eta,
            finished: self.finished,
        }
    }

    fn finish(&mut self) {
        self.finished = true;
        self.finished_flag
            .store(true, std::sync::atomic::Ordering::Release);
        if let Some((_, end)) = &mut self.run {
            end.get_or_insert_with(Instant::now);
        }
        if self.writeback.is_none() {
            self.src = None;
        }
        log::info!(
            "{ALL_IMPORTED} from {} ({} transactions). You can now switch the configuration \
             to the destination backend and restart.",
            self.source_path.display(),
            self.txns_total
        );
    }

    /// Imports at most `max_txns` more transactions and commits them with
    /// the position. Needs the partition table (the node is operational).
    pub fn import_some(&mut self, max_txns: usize) -> Result<Progress, ImportError> {
        self.import_uncommitted(max_txns)?;
        self.commit_all()?;
        let p = self.progress();
        let now = Instant::now();
        match self.last_log {
            Some(t) if now.duration_since(t) < self.log_every && !p.finished => {}
            _ => {
                self.last_log = Some(now);
                log::info!("{p}");
            }
        }
        Ok(p)
    }

    /// Limits the import to about `bytes_per_sec` of the source (`None`:
    /// as fast as it goes), e.g. to leave the disk to clients. While ahead
    /// of the limit, a step imports nothing and sleeps at most 10 ms (the
    /// storage node serves requests between steps).
    pub fn set_max_rate(&mut self, bytes_per_sec: Option<f64>) {
        self.max_rate = bytes_per_sec.filter(|r| *r > 0.0).map(|r| (r, None));
    }

    /// With a rate limit: how many transactions the next chunk may import
    /// (0: ahead of the limit; the step then sleeps a little).
    fn throttle(&mut self, chunk: usize) -> usize {
        let Some((rate, start)) = &mut self.max_rate else {
            return chunk;
        };
        let start = *start.get_or_insert_with(Instant::now);
        let allowed = *rate * start.elapsed().as_secs_f64();
        let ahead = self.bytes_this_run as f64 - allowed;
        if ahead <= 0.0 {
            return 1;
        }
        std::thread::sleep(Duration::from_secs_f64((ahead / *rate).min(0.01)));
        0
    }

    /// The storage node's background step: imports transactions for about
    /// `budget` (by chunks of 64), then commits once. Returns the progress;
    /// call again (e.g. from a zero-delay timer between requests) until
    /// [`Progress::finished`].
    pub fn import_for(&mut self, budget: Duration) -> Result<Progress, ImportError> {
        let start = Instant::now();
        loop {
            let chunk = self.throttle(64);
            let p = self.import_uncommitted(chunk)?;
            if p.txns_done >= p.txns_total || start.elapsed() >= budget {
                break;
            }
        }
        let p = self.import_some(0)?;
        if let Some(w) = &self.watch {
            *w.lock().unwrap_or_else(|e| e.into_inner()) = p.clone();
        }
        Ok(p)
    }

    /// The line the storage node gives admin nodes for `neoctl print
    /// summary`: `import of PATH: imported 12/30 transactions, ... MB/s,
    /// ETA 8 s`, then `..., done` once everything is imported.
    pub fn status_line(&self) -> String {
        let p = self.progress();
        format!(
            "import of {}: {p}{}",
            self.source_path.display(),
            if p.finished { ", done" } else { "" }
        )
    }

    /// A handle on the progress, updated by each [`import_for`](Self::import_for).
    pub fn watch(&mut self) -> ProgressWatch {
        let now = self.progress();
        self.watch
            .get_or_insert_with(|| std::sync::Arc::new(std::sync::Mutex::new(now)))
            .clone()
    }

    /// Like [`import_some`](Self::import_some) without the commit: the
    /// transactions become durable at the next [`Backend::commit`] (the
    /// node's deferred commit), the import finishes then too.
    pub fn import_uncommitted(&mut self, max_txns: usize) -> Result<Progress, ImportError> {
        if self.finished {
            return Ok(self.progress());
        }
        if self.db.partition_view()?.np == 0 {
            return Err(ImportError::Db(DbError::NoPartitionTable));
        }
        let started = Instant::now();
        self.run.get_or_insert((started, None));
        let (start, end) = {
            let src = self.source()?;
            let start = src.first_after(self.zodb_tid);
            (start, src.txns().len().min(start.saturating_add(max_txns)))
        };
        let res = self.import_range(start, end);
        self.elapsed += started.elapsed();
        res?;
        Ok(self.progress())
    }

    fn source(&self) -> Result<&Source, ImportError> {
        self.src.as_ref().ok_or_else(|| ImportError::Unsupported {
            what: "the source is closed (everything is imported)".into(),
        })
    }

    /// Imports `txns()[start..end]` (not committed). Other threads read
    /// and compress the transactions ahead (in order, one channel per
    /// thread), this one writes them into the destination.
    fn import_range(&mut self, start: usize, end: usize) -> Result<(), ImportError> {
        let Importer {
            db,
            src,
            compress,
            zodb_tid,
            bytes_this_run,
            bytes_done,
            txns_done,
            records_done,
            ..
        } = self;
        let src = src.as_ref().ok_or_else(|| ImportError::Unsupported {
            what: "the source is closed".into(),
        })?;
        let compress = *compress;
        let before = *zodb_tid;
        let mut done = |r: &ReadyTxn<'_>| {
            let t = src.txns()[r.index];
            *bytes_this_run += t.end - t.pos;
            *bytes_done = t.end - fsformat::format::MAGIC_LEN;
            *txns_done = r.index as u64 + 1;
            *records_done += r.nrec as u64;
            *zodb_tid = t.tid;
        };
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let res = if compress == Compress::Off || end - start < 16 || workers < 2 {
            (start..end).try_for_each(|i| {
                let r = prepare(src, compress, i)?;
                store(db, src, &r)?;
                done(&r);
                Ok(())
            })
        } else {
            std::thread::scope(|s| {
                let mut rxs = Vec::with_capacity(workers);
                for k in 0..workers {
                    let (tx, rx) = std::sync::mpsc::sync_channel(32);
                    rxs.push(rx);
                    s.spawn(move || {
                        for i in (start + k..end).step_by(workers) {
                            let r = prepare(src, compress, i);
                            let failed = r.is_err();
                            if tx.send(r).is_err() || failed {
                                break;
                            }
                        }
                    });
                }
                for i in 0..end - start {
                    let Ok(r) = rxs[i % workers].recv() else {
                        return Err(ImportError::Unsupported {
                            what: "an import thread died".into(),
                        });
                    };
                    let r = r?;
                    store(db, src, &r)?;
                    done(&r);
                }
                Ok(())
            })
        };
        // The position, once for the range, in the same database
        // transaction as the rows (also when a transaction failed: the
        // ones before it are stored).
        if *zodb_tid != before {
            db.set_config(KEY_TID, Some(&zodb_tid.to_string()))?;
        }
        res
    }

    /// Commits the destination, then writes back what it committed.
    pub(crate) fn commit_all(&mut self) -> Result<(), ImportError> {
        self.db.commit()?;
        if !self.finished && self.zodb_tid == self.ltid {
            self.finish();
        }
        if self.writeback.as_ref().is_some_and(|w| w.pending) {
            self.flush_writeback()?;
        }
        Ok(())
    }

    /// Whether new transactions are appended to the source.
    pub(crate) fn has_writeback(&self) -> bool {
        self.writeback.is_some()
    }

    /// Notes that a client transaction was unlocked: it will be written
    /// back after the next commit.
    pub(crate) fn writeback_changed(&mut self) {
        if let Some(w) = &mut self.writeback {
            w.pending = true;
        }
    }

    /// Appends to the source, in tid order, the committed transactions of
    /// the destination it does not have yet (above `ltid`), then syncs the
    /// source once. Run at open (what a crash left) and after commits: the
    /// destination is durable first, so a crash in between leaves at worst
    /// a torn or unsynced tail, which the next open repairs and writes
    /// again.
    fn flush_writeback(&mut self) -> Result<(), ImportError> {
        let Some(wb) = &mut self.writeback else {
            return Ok(());
        };
        let Some(src) = &mut self.src else {
            return Ok(());
        };
        wb.pending = false;
        let np = self.db.partition_view()?.np;
        let last = wb.writer.last_txn().map_or(Tid::ZERO, |t| t.1);
        let from = Tid(last.max(self.ltid).0 + 1);
        let mut tids = Vec::new();
        for p in 0..np {
            tids.extend(self.db.replication_tid_list(from, MAX_TID, None, p)?);
        }
        tids.sort();
        let written = !tids.is_empty();
        for tid in tids {
            let Some(t) = self.db.get_transaction(tid, false)? else {
                continue;
            };
            let m = t.meta;
            let mut rows = Vec::with_capacity(m.oids.len());
            for &oid in &m.oids {
                if let Some(r) = self.db.fetch_object(oid, tid)? {
                    rows.push((oid, r));
                }
            }
            let mut tw = wb
                .writer
                .begin(
                    tid,
                    TxnStatus::Committed,
                    &m.user,
                    &m.description,
                    &m.extension,
                )
                .map_err(|e| src.err(e))?;
            for (oid, r) in rows {
                let back = match r.data_serial {
                    Some(vt) => src.position_of(oid, vt).map_err(|e| src.err(e))?,
                    None => None,
                };
                let res = match (back, r.data) {
                    (Some(pos), _) => tw.store_back(oid, pos),
                    (None, Some(d)) => {
                        let data = decompress(r.compression.unwrap_or(0), &d).map_err(|e| {
                            ImportError::Db(DbError::Corrupted {
                                what: format!("data of {oid} at {tid}: {e}"),
                            })
                        })?;
                        tw.store(oid, &data)
                    }
                    (None, None) => tw.store_back(oid, 0),
                };
                res.map_err(|e| src.err(e))?;
            }
            tw.commit().map_err(|e| src.err(e))?;
            src.refresh()?;
            log::debug!("wrote back transaction {tid} to {}", src.path().display());
        }
        if written {
            wb.writer.sync().map_err(|e| src.err(e))?;
        }
        Ok(())
    }
}

/// SQLite page cache used for an import when the database URI does not set
/// `cache_size`: 256 MiB. SQLite's default (2 MiB) makes a bulk import
/// spill dirty pages, and each spill syncs the rollback journal.
pub const IMPORT_CACHE_SIZE: &str = "-262144";

/// `opts` with [`IMPORT_CACHE_SIZE`] unless they set `cache_size`
/// (durability is unchanged: journal mode and sync stay as given).
pub fn import_sqlite_options(opts: &SqliteOptions) -> SqliteOptions {
    let mut o = opts.clone();
    if !o.pragmas.iter().any(|(k, _)| k == "cache_size") {
        o.pragmas
            .push(("cache_size".into(), IMPORT_CACHE_SIZE.into()));
    }
    o
}

/// Decompresses data as NEO stores it (`compression` 0: raw, 1: zlib).
pub fn decompress(compression: u8, data: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    match compression {
        0 => Ok(Cow::Borrowed(data)),
        1 => {
            let mut out = Vec::with_capacity(data.len() * 3);
            flate2::read::ZlibDecoder::new(data)
                .read_to_end(&mut out)
                .map_err(|e| format!("bad zlib data: {e}"))?;
            Ok(Cow::Owned(out))
        }
        c => Err(format!("unknown compression {c}")),
    }
}

/// A source record made ready for the destination.
enum Ready<'a> {
    /// Data, compressed or not, with the checksum of the stored bytes.
    Data {
        oid: Oid,
        compression: u8,
        bytes: Cow<'a, [u8]>,
        checksum: Checksum,
    },
    /// A zero backpointer: no data.
    NoData { oid: Oid },
    /// A backpointer to the record of `data_tid`.
    Back { oid: Oid, data_tid: Tid, pos: u64 },
}

/// A source transaction made ready for the destination.
struct ReadyTxn<'a> {
    index: usize,
    header: TxnHeader<'a>,
    oids: Vec<Oid>,
    records: Vec<Ready<'a>>,
    nrec: usize,
}

/// Reads transaction `txns()[i]` and makes its records ready: the last
/// record of each oid (ZODB sees that one), data compressed and hashed,
/// backpointers resolved to the tid they point to.
fn prepare(src: &Source, compress: Compress, i: usize) -> Result<ReadyTxn<'_>, ImportError> {
    let t = src.txn_at(i).map_err(|e| src.err(e))?;
    let mut records = Vec::new();
    for r in t.records() {
        records.push(r.map_err(|e| src.err(e))?);
    }
    let nrec = records.len();
    let mut oids: Vec<Oid> = Vec::with_capacity(nrec);
    let mut last: HashMap<Oid, usize> = HashMap::with_capacity(nrec);
    for (k, r) in records.iter().enumerate() {
        if last.insert(r.oid, k).is_none() {
            oids.push(r.oid);
        }
    }
    let mut ready = Vec::with_capacity(oids.len());
    for &oid in &oids {
        let r = &records[last[&oid]];
        ready.push(match r.payload {
            Payload::Data(d) => {
                let (compression, bytes) = compress_data(compress, d);
                let checksum = make_checksum(&bytes);
                Ready::Data {
                    oid,
                    compression,
                    bytes,
                    checksum,
                }
            }
            Payload::Back(0) => Ready::NoData { oid },
            Payload::Back(_) => Ready::Back {
                oid,
                data_tid: src
                    .data_tid(r)
                    .map_err(|e| src.err(e))?
                    .unwrap_or(Tid::ZERO),
                pos: r.pos,
            },
        });
    }
    Ok(ReadyTxn {
        index: i,
        header: t.header,
        oids,
        records: ready,
        nrec,
    })
}

/// Writes a prepared transaction (not committed; `import_range` writes the
/// position).
fn store<B: Backend>(db: &mut B, src: &Source, r: &ReadyTxn<'_>) -> Result<(), ImportError> {
    let tid = r.header.tid;
    let mut objects = Vec::with_capacity(r.records.len());
    for rec in &r.records {
        objects.push(match rec {
            Ready::Data {
                oid,
                compression,
                bytes,
                checksum,
            } => ObjectRef {
                oid: *oid,
                data_id: db.store_data(Some(checksum), *oid, bytes, *compression, None)?,
                value_tid: None,
            },
            Ready::NoData { oid } => ObjectRef {
                oid: *oid,
                data_id: None,
                value_tid: None,
            },
            &Ready::Back { oid, data_tid, pos } => {
                let id = match db.store_data(None, oid, &[], 0, Some(data_tid)) {
                    Ok(id) => id,
                    Err(DbError::UndoPack { .. }) => {
                        return Err(ImportError::MissingData {
                            path: src.path().to_owned(),
                            tid,
                            reason: format!(
                                "the record of oid {oid} at {pos} points to {data_tid}, \
                                 which has no record of it"
                            ),
                        })
                    }
                    Err(e) => return Err(e.into()),
                };
                ObjectRef {
                    oid,
                    data_id: id,
                    value_tid: Some(data_tid),
                }
            }
        });
    }
    let meta = TxnMeta {
        oids: r.oids.clone(),
        user: r.header.user.to_vec(),
        description: r.header.description.to_vec(),
        extension: r.header.extension.to_vec(),
        packed: r.header.status == TxnStatus::Packed.byte(),
        ttid: tid,
    };
    db.store_transaction(tid, &objects, Some(&meta), false)?;
    Ok(())
}
