//! The export engine: a [`Source`]'s history, in tid order, appended to a
//! `Data.fs` with fsformat's [`Writer`].
//!
//! Each source transaction becomes one FileStorage transaction with the
//! same tid, user, description, extension bytes and packed status (`'p'`).
//! Its records are written as ZODB writes them:
//!
//! | NEO record (`obj` + `data`)        | FileStorage record                          |
//! |------------------------------------|---------------------------------------------|
//! | data, no `value_tid`               | the data, decompressed (zlib, compression 1) |
//! | `value_tid` T (undo)               | backpointer to the record of the same oid in T, in the output file |
//! | `value_tid` T not in the output    | the data itself (as ZODB's pack resolves it) |
//! | no data (undone creation)          | backpointer 0                                |
//!
//! Record positions in the output are found from a compact list of
//! `(tid, transaction offset)` (16 bytes per transaction) and a scan of
//! the record headers of that one transaction.
//!
//! Resuming: an existing output file is opened with [`Writer::open`], which
//! cuts a torn tail as ZODB does; it must be a prefix of the source's
//! history for the requested range (same tids; same metadata and records
//! for its last and first transactions and a sample, or all of them), then
//! only the missing transactions are appended. The file is fsynced at the
//! end and at resume points (every [`ExportOptions::sync_bytes`]).
//!
//! Reading the source, decompressing and writing run in parallel: a
//! reader thread fills [`Batch`]es, decompression threads (one per core)
//! take them in turn, the writer takes them back in read order; written
//! batches return to the reader, so their buffers are reused. The kernel
//! is asked to start writing the output to disk every 16 MiB, so the
//! fsyncs wait for little.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fsformat::format::{
    DATA_HEADER_LEN, DATA_OID, DATA_PLEN, DATA_SERIAL, TXN_HEADER_LEN, TXN_TLEN,
};
use fsformat::{DataFs, Magic, Oid, Payload, SyncMode, Tid, TxnStatus, Writer};

use crate::batch::{Batch, BatchTxn};
use crate::error::ExportError;
use crate::source::{Source, SourceTxn};

/// The greatest tid NEO stores (SQL integers are signed).
pub const MAX_TID: Tid = Tid(i64::MAX as u64);

/// How to export.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// First tid to export (`--tid-min`).
    pub tid_min: Tid,
    /// Last tid to export (`--tid-max`).
    pub tid_max: Tid,
    /// Check every transaction of an existing output file against the
    /// source, not only its first, last and a sample.
    pub verify_all: bool,
    /// How many transactions of an existing file to check, besides its
    /// first and last ones.
    pub samples: usize,
    /// Transactions read per batch.
    pub batch: usize,
    /// fsync after this many bytes written (a resume point).
    pub sync_bytes: u64,
    /// Stop after writing this many transactions, without the final
    /// fsync: what an interruption leaves (tests).
    pub stop_after: Option<u64>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            tid_min: Tid(0),
            tid_max: MAX_TID,
            verify_all: false,
            samples: 16,
            batch: 256,
            sync_bytes: 1 << 30,
            stop_after: None,
        }
    }
}

/// What an export did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Transactions already in the output file (resumed), checked.
    pub existing: u64,
    /// How many of those were compared record by record.
    pub verified: u64,
    /// Transactions appended.
    pub transactions: u64,
    /// Records appended.
    pub records: u64,
    /// Of which backpointers to earlier records.
    pub backpointers: u64,
    /// Of which deletions (backpointer 0).
    pub deletions: u64,
    /// Data bytes appended (decompressed pickles).
    pub data_bytes: u64,
    /// Bytes appended to the file.
    pub file_bytes: u64,
    /// Size of the output file at the end.
    pub file_size: u64,
    /// Last tid in the output file.
    pub last_tid: Option<Tid>,
    /// False when [`ExportOptions::stop_after`] cut the export short.
    pub complete: bool,
    /// Wall time.
    pub elapsed: Duration,
}

/// Receives progress reports.
pub trait Progress {
    /// The export starts: `total` transactions to append (an estimate),
    /// `existing` already in the file.
    fn begin(&mut self, total: u64, existing: u64);
    /// `txns` more transactions and `bytes` more file bytes written; the
    /// last one is `tid`.
    fn advance(&mut self, txns: u64, bytes: u64, tid: Tid);
    /// The export is over.
    fn end(&mut self, summary: &Summary);
}

/// A [`Progress`] that reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn begin(&mut self, _: u64, _: u64) {}
    fn advance(&mut self, _: u64, _: u64, _: Tid) {}
    fn end(&mut self, _: &Summary) {}
}

/// Decompresses NEO's stored data (compression 0: raw, 1: zlib).
pub fn decompress(
    oid: Oid,
    tid: Tid,
    compression: u8,
    data: Vec<u8>,
) -> Result<Vec<u8>, ExportError> {
    Inflater::new().decompress(oid, tid, compression, data)
}

/// zlib decompression with libdeflate (about twice zlib's speed on NEO's
/// many small streams), one decompressor and one scratch buffer reused for
/// every record: each output is inflated into the scratch buffer (grown
/// while too small), then copied into an exact-size vector.
pub struct Inflater {
    z: libdeflater::Decompressor,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Inflater({} bytes of scratch)", self.scratch.len())
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater::new()
    }
}

impl Inflater {
    /// A decompressor with an empty scratch buffer.
    pub fn new() -> Inflater {
        Inflater {
            z: libdeflater::Decompressor::new(),
            scratch: Vec::new(),
        }
    }

    /// [`decompress`], reusing this decompressor's state.
    pub fn decompress(
        &mut self,
        oid: Oid,
        tid: Tid,
        compression: u8,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, ExportError> {
        let bad = |reason: String| ExportError::BadData { oid, tid, reason };
        let out = match compression {
            0 => data,
            1 => self
                .inflate(&data)
                .map_err(|e| bad(format!("zlib data cannot be decompressed: {e}")))?,
            c => return Err(bad(format!("unknown compression {c}"))),
        };
        if out.is_empty() {
            return Err(bad(
                "empty data (FileStorage cannot store an empty pickle)".into()
            ));
        }
        Ok(out)
    }

    fn inflate(&mut self, data: &[u8]) -> Result<Vec<u8>, &'static str> {
        let n = neo_server::zlib::inflate_into(&mut self.z, data, &mut self.scratch, 0)?;
        Ok(self.scratch[..n].to_vec())
    }

    /// Inflates zlib `data` into `buf[at..]`, growing `buf` when too
    /// short (never shrinking it: a reused buffer is not zeroed again);
    /// returns the length of the output.
    pub fn inflate_at(
        &mut self,
        data: &[u8],
        buf: &mut Vec<u8>,
        at: usize,
    ) -> Result<usize, &'static str> {
        neo_server::zlib::inflate_into(&mut self.z, data, buf, at)
    }
}

/// Finds records in the output file: `(tid, offset)` of every transaction
/// and a read handle on the file.
struct Positions {
    path: PathBuf,
    file: File,
    txns: Vec<(Tid, u64)>,
    buf: Vec<u8>,
}

impl Positions {
    fn new(path: &Path, txns: Vec<(Tid, u64)>) -> Result<Positions, ExportError> {
        let file = File::open(path).map_err(|error| ExportError::Io {
            path: path.to_owned(),
            op: "open",
            error,
        })?;
        Ok(Positions {
            path: path.to_owned(),
            file,
            txns,
            buf: vec![0; DATA_HEADER_LEN],
        })
    }

    fn read(&mut self, pos: u64, len: usize) -> Result<&[u8], ExportError> {
        self.buf.resize(len, 0);
        self.file
            .read_exact_at(&mut self.buf, pos)
            .map_err(|error| ExportError::Io {
                path: self.path.clone(),
                op: "read",
                error,
            })?;
        Ok(&self.buf)
    }

    /// Offset of the (last) record of `oid` in transaction `tid`, if the
    /// file has that transaction and that record.
    fn find(&mut self, oid: Oid, tid: Tid) -> Result<Option<u64>, ExportError> {
        let Ok(i) = self.txns.binary_search_by_key(&tid, |&(t, _)| t) else {
            return Ok(None);
        };
        let tpos = self.txns[i].1;
        let h = self.read(tpos, TXN_HEADER_LEN)?;
        let u16_at = |o: usize| u64::from(u16::from_be_bytes([h[o], h[o + 1]]));
        let tlen = u64::from_be_bytes(h[TXN_TLEN..TXN_TLEN + 8].try_into().unwrap_or([0; 8]));
        let mut pos = tpos + TXN_HEADER_LEN as u64 + u16_at(17) + u16_at(19) + u16_at(21);
        let end = tpos.saturating_add(tlen);
        let mut found = None;
        let path = self.path.clone();
        while pos < end {
            let corrupt = |what: &str| ExportError::Corrupt {
                path: path.clone(),
                pos,
                what: what.to_owned(),
            };
            if pos + DATA_HEADER_LEN as u64 > end {
                return Err(corrupt("record header outside its transaction"));
            }
            let h = self.read(pos, DATA_HEADER_LEN)?;
            let be = |o: usize| u64::from_be_bytes(h[o..o + 8].try_into().unwrap_or([0; 8]));
            let (roid, serial, plen) = (be(DATA_OID), be(DATA_SERIAL), be(DATA_PLEN));
            if serial != tid.0 {
                return Err(corrupt("record of another transaction"));
            }
            let next = pos
                .checked_add(DATA_HEADER_LEN as u64)
                .and_then(|p| p.checked_add(if plen == 0 { 8 } else { plen }))
                .filter(|&n| n <= end)
                .ok_or_else(|| corrupt("record runs past its transaction"))?;
            if roid == oid.0 {
                found = Some(pos);
            }
            pos = next;
        }
        Ok(found)
    }
}

/// Exports `source` to `out` (created, or resumed if it exists).
pub fn export(
    source: &mut (dyn Source + Send),
    out: &Path,
    opts: &ExportOptions,
    progress: &mut dyn Progress,
) -> Result<Summary, ExportError> {
    let start = Instant::now();
    log::debug!("export starts");
    let mut summary = Summary::default();
    let exists = out.exists();
    let mut writer = if exists {
        Writer::open(out)?
    } else {
        Writer::create(out, Magic::Fs30)?
    };
    writer.set_sync(SyncMode::OnFinish);
    let txns = if exists {
        let (txns, verified) = check_prefix(source, out, opts)?;
        summary.existing = txns.len() as u64;
        summary.verified = verified;
        txns
    } else {
        Vec::new()
    };
    let from = match txns.last() {
        Some(&(t, _)) => Tid(t.0.saturating_add(1)).max(opts.tid_min),
        None => opts.tid_min,
    };
    if let Some(&(t, _)) = txns.last() {
        log::info!(
            "{}: {} transactions already exported (last {t}), appending from {from}",
            out.display(),
            txns.len()
        );
    }
    let total = if from <= opts.tid_max {
        source.count(from, opts.tid_max)?
    } else {
        0
    };
    progress.begin(total, summary.existing);
    let mut pos = Positions::new(out, txns)?;
    let result = copy(
        source,
        &mut writer,
        &mut pos,
        from,
        opts,
        progress,
        &mut summary,
    );
    summary.file_size = writer.end();
    summary.last_tid = writer.last_txn().map(|(_, t)| t);
    result?;
    if summary.complete {
        writer.finish()?;
    }
    summary.elapsed = start.elapsed();
    progress.end(&summary);
    Ok(summary)
}

/// CPU time of the calling thread (for the debug log of each thread's
/// share; zero if the clock cannot be read).
pub(crate) fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec for the call's duration.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    if r != 0 {
        return Duration::ZERO;
    }
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(t.tv_nsec).unwrap_or(0);
    Duration::new(secs, nanos.min(999_999_999))
}

/// A batch on its way to the writer (or the error that ends the export).
type Sent = Result<Batch, ExportError>;

/// The reader thread: batches read from the source in tid order, dealt to
/// the decompression threads in turn (`to[k % n]` for the k-th batch);
/// batches come back through `free` once written, to reuse their buffers.
fn read_ahead(
    source: &mut (dyn Source + Send),
    from: Tid,
    max: Tid,
    batch: usize,
    to: Vec<mpsc::SyncSender<Sent>>,
    free: mpsc::Receiver<Batch>,
) {
    let t = Instant::now();
    read_batches(source, from, max, batch, to, free);
    log::debug!(
        "reader: {:.2}s CPU in {:.2}s",
        thread_cpu().as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
}

/// [`read_ahead`]'s loop.
fn read_batches(
    source: &mut (dyn Source + Send),
    from: Tid,
    max: Tid,
    batch: usize,
    to: Vec<mpsc::SyncSender<Sent>>,
    free: mpsc::Receiver<Batch>,
) {
    let limit = batch.max(1);
    let mut from = from;
    if let Err(e) = source.plan(from, max) {
        if let Some(tx) = to.first() {
            let _ = tx.send(Err(e.into()));
        }
        return;
    }
    for k in 0.. {
        if from > max {
            return;
        }
        let mut b = free.try_recv().unwrap_or_default();
        b.clear();
        let res = source
            .read_batch(from, max, limit, &mut b)
            .map_err(ExportError::from);
        let next = match &res {
            Ok(()) if b.len() >= limit => b.txns().last().map(|t| t.tid),
            _ => None,
        };
        let Some(tx) = to.get(k % to.len()) else {
            return;
        };
        if tx.send(res.map(|()| b)).is_err() {
            return;
        }
        match next {
            Some(t) if t < max => from = Tid(t.0 + 1),
            _ => return,
        }
    }
}

/// A decompression thread, between the reader and the writer: batches in,
/// the same batches inflated out, in the same order.
fn inflate_ahead(rx: mpsc::Receiver<Sent>, tx: mpsc::SyncSender<Sent>) {
    let mut z = Inflater::new();
    for b in rx {
        let res = b.and_then(|mut b| b.inflate(&mut z).map(|()| b));
        if tx.send(res).is_err() {
            break;
        }
    }
    log::debug!("inflater: {:.2}s CPU", thread_cpu().as_secs_f64());
}

/// Decompression threads: one per core (the reader and the writer
/// interleave with them), 1 to 4.
fn inflaters() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4))
}

/// Starts the kernel's write-out of what the export appended, every
/// [`WRITEBACK_BYTES`], so that the disk works while the export goes on
/// and the fsyncs (at the end, at resume points) find little left to do.
/// It only starts I/O (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): the
/// durability points stay the fsyncs. The calls (which do the file
/// system's block allocation) are made by a thread of their own, off the
/// writer's path.
struct Writeback {
    done: u64,
    tx: mpsc::Sender<(u64, u64)>,
}

/// See [`Writeback`].
const WRITEBACK_BYTES: u64 = 16 << 20;

impl Writeback {
    /// Asks for the write-out of `[done, end)` once it is
    /// [`WRITEBACK_BYTES`] long.
    fn advance(&mut self, end: u64) {
        if end >= self.done.saturating_add(WRITEBACK_BYTES) {
            // The thread may be gone: only an optimisation.
            let _ = self.tx.send((self.done, end - self.done));
            self.done = end;
        }
    }
}

/// The [`Writeback`] thread: `sync_file_range` on `file` (a handle on the
/// output file) for each range received.
fn write_out(file: File, rx: mpsc::Receiver<(u64, u64)>) {
    for (off, len) in rx {
        let (Ok(off), Ok(len)) = (libc::off64_t::try_from(off), libc::off64_t::try_from(len))
        else {
            continue;
        };
        // SAFETY: a plain system call on a file descriptor that `file`
        // keeps open; no memory is passed.
        let r = unsafe {
            libc::sync_file_range(file.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE)
        };
        if r != 0 {
            // Only an optimisation: the fsyncs report real errors.
            log::debug!("sync_file_range: {}", std::io::Error::last_os_error());
        }
    }
    log::debug!("write-out: {:.2}s CPU", thread_cpu().as_secs_f64());
}

fn copy(
    source: &mut (dyn Source + Send),
    writer: &mut Writer,
    pos: &mut Positions,
    from: Tid,
    opts: &ExportOptions,
    progress: &mut dyn Progress,
    summary: &mut Summary,
) -> Result<(), ExportError> {
    let mut since_sync = 0u64;
    let n = inflaters();
    let cpu0 = thread_cpu();
    let t0 = Instant::now();
    let wb_file = pos.file.try_clone().map_err(|error| ExportError::Io {
        path: pos.path.clone(),
        op: "dup",
        error,
    })?;
    let res = std::thread::scope(|scope| {
        let (wb_tx, wb_rx) = mpsc::channel();
        scope.spawn(move || write_out(wb_file, wb_rx));
        let mut wb = Writeback {
            done: writer.end(),
            tx: wb_tx,
        };
        let (free_tx, free_rx) = mpsc::channel();
        let mut to = Vec::with_capacity(n);
        let mut from_inflaters = Vec::with_capacity(n);
        for _ in 0..n {
            let (raw_tx, raw_rx) = mpsc::sync_channel(1);
            let (tx, rx) = mpsc::sync_channel(1);
            scope.spawn(move || inflate_ahead(raw_rx, tx));
            to.push(raw_tx);
            from_inflaters.push(rx);
        }
        let (max, batch) = (opts.tid_max, opts.batch);
        scope.spawn(move || read_ahead(source, from, max, batch, to, free_rx));
        // Batches in the order they were read: in turn from each inflater.
        let mut first = true;
        for rx in from_inflaters.iter().cycle() {
            let Ok(b) = rx.recv() else { break };
            let b = b?;
            if std::mem::take(&mut first) {
                log::debug!("first batch after {:.3}s", t0.elapsed().as_secs_f64());
            }
            let (mut n, mut bytes, mut last) = (0, 0, Tid(0));
            for txn in b.txns() {
                if opts.stop_after.is_some_and(|s| summary.transactions >= s) {
                    progress.advance(n, bytes, last);
                    return Ok(());
                }
                let c = write_txn(writer, pos, &b, txn, summary)?;
                let size = c.end - c.pos;
                summary.transactions += 1;
                summary.file_bytes += size;
                since_sync += size;
                n += 1;
                bytes += size;
                last = c.tid;
                if since_sync >= opts.sync_bytes {
                    writer.sync()?;
                    since_sync = 0;
                }
            }
            wb.advance(writer.end());
            progress.advance(n, bytes, last);
            // The reader may be gone (it read the last batch).
            let _ = free_tx.send(b);
        }
        summary.complete = true;
        Ok(())
    });
    log::debug!(
        "writer: {:.2}s CPU in {:.2}s, {n} inflaters",
        (thread_cpu().saturating_sub(cpu0)).as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    res
}

fn write_txn(
    writer: &mut Writer,
    pos: &mut Positions,
    batch: &Batch,
    txn: &BatchTxn,
    summary: &mut Summary,
) -> Result<fsformat::Committed, ExportError> {
    let tid = txn.tid;
    let records = batch.records(txn);
    // Backpointer targets first: the writer borrows the file while a
    // transaction is open.
    let mut backs = Vec::with_capacity(records.len());
    for r in records {
        backs.push(match r.value_tid {
            Some(t) if t < tid => pos.find(r.oid, t)?,
            Some(t) => {
                return Err(ExportError::BadData {
                    oid: r.oid,
                    tid,
                    reason: format!("undo refers to transaction {t}, not an earlier one"),
                })
            }
            None => None,
        });
    }
    let status = if txn.packed {
        TxnStatus::Packed
    } else {
        TxnStatus::Committed
    };
    let mut t = writer.begin(tid, status, &txn.user, &txn.description, &txn.extension)?;
    for (r, back) in records.iter().zip(backs) {
        let payload = match (back, batch.data(r)) {
            (Some(b), _) => {
                summary.backpointers += 1;
                Payload::Back(b)
            }
            (None, Some((0, d))) => {
                summary.data_bytes += d.len() as u64;
                Payload::Data(d)
            }
            (None, Some((c, _))) => {
                return Err(ExportError::BadData {
                    oid: r.oid,
                    tid,
                    reason: format!("compression {c} left after decompression"),
                })
            }
            (None, None) => {
                summary.deletions += 1;
                Payload::Back(0)
            }
        };
        t.restore(r.oid, tid, payload)?;
        summary.records += 1;
    }
    let c = t.commit()?;
    pos.txns.push((tid, c.pos));
    Ok(c)
}

/// Checks that the existing output file is a prefix of the source's
/// history over the requested range; returns its `(tid, offset)` list and
/// how many transactions were compared record by record.
#[allow(clippy::type_complexity)]
fn check_prefix(
    source: &mut (dyn Source + Send),
    path: &Path,
    opts: &ExportOptions,
) -> Result<(Vec<(Tid, u64)>, u64), ExportError> {
    let fs = DataFs::open(path)?;
    let not_prefix = |tid: Tid, reason: String| ExportError::NotPrefix {
        path: path.to_owned(),
        tid,
        reason,
    };
    let mut txns = Vec::new();
    for t in fs.iter() {
        let t = t?;
        if !matches!(t.status(), Some(TxnStatus::Committed | TxnStatus::Packed)) {
            return Err(not_prefix(
                t.tid,
                format!("the file has status {:?}", char::from(t.status)),
            ));
        }
        txns.push((t.tid, t.pos));
    }
    let Some(&(last, _)) = txns.last() else {
        return Ok((txns, 0));
    };
    if txns[0].0 < opts.tid_min {
        return Err(not_prefix(
            txns[0].0,
            "the file starts before --tid-min".into(),
        ));
    }
    // Same tids over [tid_min, last].
    let mut i = 0;
    let mut from = opts.tid_min;
    loop {
        let tids = source.tids(from, last, 100_000)?;
        for &s in &tids {
            match txns.get(i) {
                Some(&(f, _)) if f == s => {}
                Some(&(f, _)) if f < s => {
                    return Err(not_prefix(f, "the source has no such transaction".into()))
                }
                _ => {
                    return Err(not_prefix(
                        s,
                        "the file lacks this transaction of the source".into(),
                    ))
                }
            }
            i += 1;
        }
        match tids.last() {
            Some(&t) if tids.len() == 100_000 && t < last => from = Tid(t.0 + 1),
            _ => break,
        }
    }
    if let Some(&(f, _)) = txns.get(i) {
        return Err(not_prefix(f, "the source has no such transaction".into()));
    }
    // Same contents: first, last and a sample (or everything).
    let n = txns.len();
    let mut picks: Vec<usize> = if opts.verify_all {
        (0..n).collect()
    } else {
        let k = opts.samples.min(n);
        let mut v: Vec<usize> = (1..=k).map(|j| j * n / (k + 1)).collect();
        v.extend([0, n - 1]);
        v
    };
    picks.sort_unstable();
    picks.dedup();
    let mut z = Inflater::new();
    if opts.verify_all {
        // In batches, as the export reads (the tids are known to match).
        let mut i = 0;
        while i < n {
            let batch = source.transactions(txns[i].0, last, opts.batch.max(1))?;
            if batch.is_empty() {
                return Err(not_prefix(
                    txns[i].0,
                    "the source has no such transaction".into(),
                ));
            }
            for src in batch {
                let (tid, tpos) = txns[i];
                if src.tid != tid {
                    return Err(not_prefix(tid, "the source has no such transaction".into()));
                }
                compare_txn(&mut z, &fs, tpos, src).map_err(|reason| not_prefix(tid, reason))?;
                i += 1;
            }
        }
    } else {
        for &j in &picks {
            let (tid, tpos) = txns[j];
            let src = source
                .transaction(tid)?
                .ok_or_else(|| not_prefix(tid, "the source has no such transaction".into()))?;
            compare_txn(&mut z, &fs, tpos, src).map_err(|reason| not_prefix(tid, reason))?;
        }
    }
    log::info!(
        "{}: {n} transactions, same tids as the source, {} compared record by record",
        path.display(),
        picks.len()
    );
    Ok((txns, picks.len() as u64))
}

/// Compares a transaction of the file with the source's; the difference,
/// if any.
fn compare_txn(z: &mut Inflater, fs: &DataFs, tpos: u64, src: SourceTxn) -> Result<(), String> {
    let t = fs.txn_at(tpos).map_err(|e| e.to_string())?;
    let packed = t.status() == Some(TxnStatus::Packed);
    if packed != src.packed {
        return Err(format!(
            "status {:?} in the file, packed={} in the source",
            char::from(t.status),
            src.packed
        ));
    }
    for (what, a, b) in [
        ("user", t.user, &src.user),
        ("description", t.description, &src.description),
        ("extension", t.extension, &src.extension),
    ] {
        if a != &b[..] {
            return Err(format!("different {what}"));
        }
    }
    let recs = t
        .records()
        .collect::<fsformat::Result<Vec<_>>>()
        .map_err(|e| e.to_string())?;
    if recs.len() != src.records.len() {
        return Err(format!(
            "{} records in the file, {} in the source",
            recs.len(),
            src.records.len()
        ));
    }
    for (f, s) in recs.iter().zip(src.records) {
        if f.oid != s.oid {
            return Err(format!(
                "record of {} in the file, of {} in the source",
                f.oid, s.oid
            ));
        }
        let oid = f.oid;
        let data = s
            .data
            .map(|(c, d)| z.decompress(oid, src.tid, c, d))
            .transpose()
            .map_err(|e| e.to_string())?;
        let ok = match (f.payload, s.value_tid, data) {
            (Payload::Back(0), _, None) => true,
            (Payload::Back(b), Some(vt), _) if b != 0 => {
                fs.back_tid(oid, b).map_err(|e| e.to_string())? == vt
            }
            (Payload::Data(d), _, Some(sd)) => d == &sd[..],
            _ => false,
        };
        if !ok {
            return Err(format!("record of {oid} differs"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn decompress_checks_its_input() {
        let (o, t) = (Oid(7), Tid(9));
        assert_eq!(decompress(o, t, 0, b"abc".to_vec()).unwrap(), b"abc");
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&[b'x'; 1000]).unwrap();
        let z = z.finish().unwrap();
        assert_eq!(decompress(o, t, 1, z.clone()).unwrap(), vec![b'x'; 1000]);
        let e = decompress(o, t, 1, z[..z.len() / 2].to_vec()).unwrap_err();
        assert!(e.to_string().contains("0000000000000007"), "{e}");
        let e = decompress(o, t, 1, b"not zlib".to_vec()).unwrap_err();
        assert!(matches!(e, ExportError::BadData { .. }), "{e}");
        let e = decompress(o, t, 2, b"abc".to_vec()).unwrap_err();
        assert!(e.to_string().contains("unknown compression 2"), "{e}");
        let e = decompress(o, t, 0, Vec::new()).unwrap_err();
        assert!(e.to_string().contains("empty data"), "{e}");
    }

    #[test]
    fn positions_find_records_and_report_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Data.fs");
        let mut w = Writer::create(&path, Magic::Fs30).unwrap();
        let mut t = w
            .begin(Tid(10), TxnStatus::Committed, b"u", b"d", b"e")
            .unwrap();
        let a = t.store(Oid(1), b"one").unwrap();
        let b = t.store_back(Oid(2), 0).unwrap();
        let b2 = t.store(Oid(2), b"two").unwrap();
        let c1 = t.commit().unwrap();
        let mut t = w.begin(Tid(20), TxnStatus::Packed, b"", b"", b"").unwrap();
        let c = t.store_back(Oid(1), a).unwrap();
        let c2 = t.commit().unwrap();
        w.finish().unwrap();
        assert!(b < b2);
        let txns = vec![(Tid(10), c1.pos), (Tid(20), c2.pos)];
        let mut p = Positions::new(&path, txns.clone()).unwrap();
        assert_eq!(p.find(Oid(1), Tid(10)).unwrap(), Some(a));
        assert_eq!(
            p.find(Oid(2), Tid(10)).unwrap(),
            Some(b2),
            "the last record"
        );
        assert_eq!(p.find(Oid(1), Tid(20)).unwrap(), Some(c));
        assert_eq!(p.find(Oid(3), Tid(10)).unwrap(), None);
        assert_eq!(p.find(Oid(1), Tid(15)).unwrap(), None);
        // A record length running past its transaction.
        let mut bytes = std::fs::read(&path).unwrap();
        let plen = (a + DATA_PLEN as u64) as usize;
        bytes[plen..plen + 8].copy_from_slice(&u64::MAX.to_be_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let mut p = Positions::new(&path, txns).unwrap();
        let e = p.find(Oid(2), Tid(10)).unwrap_err();
        assert!(
            matches!(e, ExportError::Corrupt { pos, .. } if pos == a),
            "{e}"
        );
    }
}
