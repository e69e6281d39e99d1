//! A `Data.fs` mapped in memory, and iteration over its transactions and
//! their data records, borrowing everything from the map (no copy, no heap
//! allocation per transaction or record).
//!
//! Which transactions are visible follows ZODB (`read_index` and
//! `FileIterator` in `FileStorage.py`): a scan stops, without error, at the
//! end of the file, at a transaction whose 23-byte header or whose
//! `tlen + 8` bytes do not fit in the file (a torn append), at a transaction
//! with the checkpoint status `'c'` (a commit in progress), and at a length
//! smaller than its header when the file's last 8 bytes make it look like
//! garbage left by a crash. ZODB truncates those tails when it opens the file
//! read-write and ignores them read-only; this reader ignores them and says
//! where the valid part ends ([`Tail`]). A redundant length that disagrees
//! with the header, a length smaller than its header in the middle of the
//! file, or a data record that leaves its transaction, are corruption: ZODB
//! refuses to open such a file; here iteration yields an [`Error`].
//!
//! The map sees the file as it was at `open` or at the last
//! [`DataFs::refresh`]; transactions appended meanwhile by another process
//! appear after `refresh`. The file must not shrink below what is mapped
//! while mapped (ZODB only truncates a torn tail, which is never read here
//! except for the few bytes of its header).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::format::{
    read_u64, DataHeader, Magic, Payload, TxnFixed, TxnHeader, TxnStatus, MAGIC_LEN,
    TXN_HEADER_LEN, TXN_TRAILER_LEN,
};
use crate::{Oid, Tid};

/// Why the visible transactions end where they end.
#[non_exhaustive]
#[derive(Debug)]
pub enum Stop {
    /// At the end of the file, on a transaction boundary.
    Eof,
    /// An incomplete transaction at `pos`: fewer than 23 header bytes, or
    /// fewer than `tlen + 8` bytes, left in the file (a torn append).
    TornTail {
        /// Offset of the incomplete transaction.
        pos: u64,
    },
    /// A transaction with status `'c'` at `pos`: a commit in progress, or one
    /// that died between ZODB's `tpc_vote` and `tpc_finish`.
    Checkpoint {
        /// Offset of the transaction.
        pos: u64,
    },
    /// A length smaller than its header at `pos`, which ZODB takes for
    /// garbage a crash left at the end of the file.
    Garbage {
        /// Offset of the bad header.
        pos: u64,
    },
    /// The transaction's id is above the `stop` of a bounded iteration.
    StopTid {
        /// Offset of the first transaction past `stop`.
        pos: u64,
    },
    /// Corruption at a transaction boundary: ZODB refuses such a file.
    Corrupt(Error),
}

impl Stop {
    /// True when the stop leaves nothing behind it but the end of the file
    /// (no torn tail, no corruption).
    pub fn is_clean(&self) -> bool {
        matches!(self, Stop::Eof | Stop::StopTid { .. })
    }
}

/// The end of the visible transactions, as ZODB's `read_index` finds it.
#[derive(Debug)]
pub struct Tail {
    /// Offset just after the last visible transaction (ZODB's `_pos`,
    /// `getSize()`); new transactions are appended there.
    pub end: u64,
    /// Offset and tid of the last visible transaction, if any.
    pub last_txn: Option<(u64, Tid)>,
    /// ZODB's `lastTransaction()` after opening the file: the tid of the
    /// last transaction header it could read, which is the tid of a torn or
    /// checkpoint transaction when the file ends with one (ZODB records the
    /// tid before it checks the transaction fits). Zero for an empty file.
    pub last_tid: Tid,
    /// Why the scan stopped.
    pub stop: Stop,
}

/// One step of a forward scan: the transaction at `pos`, or why it ends.
/// `ltid` follows ZODB's `ltid` (set from every header read).
pub(crate) fn step<'a>(file: &'a [u8], pos: u64, ltid: &mut Tid) -> Result<TxnHeader<'a>, Stop> {
    let flen = file.len() as u64;
    if pos >= flen {
        return Err(Stop::Eof);
    }
    let f = match TxnFixed::parse(file, pos) {
        Ok(f) => f,
        Err(_) => return Err(Stop::TornTail { pos }),
    };
    if f.tid <= *ltid && ltid.0 != 0 {
        log::warn!("time-stamp reduction at {pos}: {} <= {}", f.tid, ltid);
    }
    *ltid = f.tid;
    let fits = pos
        .checked_add(f.tlen)
        .and_then(|e| e.checked_add(TXN_TRAILER_LEN as u64))
        .is_some_and(|e| e <= flen);
    if !fits {
        return Err(Stop::TornTail { pos });
    }
    if f.status == TxnStatus::Checkpoint.byte() {
        return Err(Stop::Checkpoint { pos });
    }
    if TxnStatus::from_byte(f.status).is_none() {
        log::warn!(
            "invalid transaction status {:?} at {pos}",
            char::from(f.status)
        );
    }
    if f.tlen < f.header_len() {
        // ZODB: a crash turd at the end if the file's last 8 bytes are not a
        // plausible redundant length, else corruption in the middle.
        let rtl = read_u64(file, flen - 8, "redundant transaction length").unwrap_or(0);
        if flen.saturating_sub(rtl) < pos || rtl < TXN_HEADER_LEN as u64 {
            return Err(Stop::Garbage { pos });
        }
        return Err(Stop::Corrupt(Error::TxnLengthTooSmall {
            pos,
            tlen: f.tlen,
            header_len: f.header_len(),
        }));
    }
    // Fits in the file and tlen >= header_len: the metadata is there.
    let h = TxnHeader::from_fixed(file, &f).map_err(Stop::Corrupt)?;
    h.check_trailer(file).map_err(Stop::Corrupt)?;
    Ok(h)
}

/// A `Data.fs` opened read-only and mapped in memory.
pub struct DataFs {
    path: PathBuf,
    file: File,
    map: Option<Mmap>,
    magic: Magic,
    tail: OnceLock<Tail>,
}

impl std::fmt::Debug for DataFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataFs")
            .field("path", &self.path)
            .field("len", &self.len())
            .field("magic", &self.magic)
            .finish()
    }
}

fn map_file(path: &Path, file: &File) -> Result<Option<Mmap>> {
    let len = file
        .metadata()
        .map_err(|e| Error::io(path, "stat", e))?
        .len();
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: the map is read-only; FileStorage files are only appended to
    // (and a torn tail truncated), which the module docs require of callers.
    let map = unsafe { Mmap::map(file) }.map_err(|e| Error::io(path, "mmap", e))?;
    Ok(Some(map))
}

impl DataFs {
    /// Opens and maps `path`, checking its magic (`FS21` or `FS30`). An
    /// empty (0-byte) file is an empty storage, as ZODB's `FileStorage`
    /// takes it; its magic is reported as `FS30`. Does not scan the file.
    pub fn open(path: impl AsRef<Path>) -> Result<DataFs> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, "open", e))?;
        let map = map_file(&path, &file)?;
        let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
        let magic = if bytes.is_empty() {
            Magic::Fs30
        } else {
            let head = &bytes[..bytes.len().min(MAGIC_LEN as usize)];
            Magic::from_bytes(head).ok_or_else(|| Error::BadMagic {
                path: path.clone(),
                found: head.to_vec(),
            })?
        };
        Ok(DataFs {
            path,
            file,
            map,
            magic,
            tail: OnceLock::new(),
        })
    }

    /// Maps the file again if its size changed (another process appended
    /// transactions), and forgets the cached [`Tail`] if it changed or did
    /// not reach the end of the file (a `'c'` transaction whose status was
    /// since cleared in place becomes visible). Returns whether anything may
    /// have changed. Borrowed views must be dropped first, which the
    /// `&mut self` enforces. A file replaced by another (ZODB's pack renames
    /// a new file over it) is not seen: open it again.
    pub fn refresh(&mut self) -> Result<bool> {
        let len = self
            .file
            .metadata()
            .map_err(|e| Error::io(&self.path, "stat", e))?
            .len();
        if len != self.len() {
            self.map = map_file(&self.path, &self.file)?;
            self.tail = OnceLock::new();
            return Ok(true);
        }
        let partial = self.tail.get().is_some_and(|t| t.end < len);
        if partial {
            self.tail = OnceLock::new();
        }
        Ok(partial)
    }

    /// The path given to [`DataFs::open`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's magic; a copy should keep it.
    pub fn magic(&self) -> Magic {
        self.magic
    }

    /// The whole mapped file, magic included.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Mapped length in bytes (may include a torn tail).
    #[inline]
    pub fn len(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// True for a 0-byte file.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the visible transactions end, and why (computed once per map
    /// by a scan of the transaction headers, or set by the index scan).
    pub fn tail(&self) -> &Tail {
        self.tail.get_or_init(|| {
            let mut it = self.iter();
            let mut last_txn = None;
            for t in it.by_ref() {
                match t {
                    Ok(t) => last_txn = Some((t.pos, t.tid)),
                    Err(_) => break,
                }
            }
            let tail = it.into_tail(last_txn);
            log_tail(&self.path, self.len(), &tail);
            tail
        })
    }

    pub(crate) fn set_tail(&self, tail: Tail) {
        log_tail(&self.path, self.len(), &tail);
        let _ = self.tail.set(tail);
    }

    /// All visible transactions, oldest first.
    pub fn iter(&self) -> TxnIter<'_> {
        self.iter_from(MAGIC_LEN, None)
    }

    /// Transactions from `pos` (which must be a transaction boundary, e.g.
    /// a [`TxnHeader::pos`] or [`TxnHeader::next_pos`]) up to tid `stop` included.
    pub fn iter_from(&self, pos: u64, stop: Option<Tid>) -> TxnIter<'_> {
        TxnIter {
            file: self.bytes(),
            pos: pos.max(MAGIC_LEN),
            ltid: Tid::ZERO,
            stop_tid: stop,
            stop: None,
        }
    }

    /// Transactions with `start <= tid <= stop`, oldest first, like ZODB's
    /// `FileStorage.iterator(start, stop)`. Finds `start` walking from the
    /// end of the file that is nearer in tid.
    pub fn iter_range(&self, start: Option<Tid>, stop: Option<Tid>) -> Result<TxnIter<'_>> {
        let pos = match start {
            None => MAGIC_LEN,
            Some(s) => self.seek_tid(s)?,
        };
        Ok(self.iter_from(pos, stop))
    }

    /// Offset of the first visible transaction with tid >= `tid`, or the
    /// end of the visible transactions.
    pub fn seek_tid(&self, tid: Tid) -> Result<u64> {
        let tail = self.tail();
        let Some((_, last)) = tail.last_txn else {
            return Ok(tail.end);
        };
        let first = TxnFixed::parse(self.bytes(), MAGIC_LEN)?.tid;
        if tid <= first {
            return Ok(MAGIC_LEN);
        }
        if tid > last {
            return Ok(tail.end);
        }
        if tid.0 - first.0 <= last.0 - tid.0 {
            for t in self.iter() {
                let t = t?;
                if t.tid >= tid {
                    return Ok(t.pos);
                }
            }
            Ok(tail.end)
        } else {
            let mut pos = tail.end;
            for t in self.iter_back() {
                let t = t?;
                if t.tid < tid {
                    break;
                }
                pos = t.pos;
            }
            Ok(pos)
        }
    }

    /// Visible transactions, newest first (walking the redundant lengths
    /// back from [`Tail::end`]).
    pub fn iter_back(&self) -> TxnBackIter<'_> {
        self.iter_back_from(self.tail().end)
    }

    /// Transactions ending before `end` (a transaction boundary), newest first.
    pub fn iter_back_from(&self, end: u64) -> TxnBackIter<'_> {
        TxnBackIter {
            file: self.bytes(),
            pos: end.min(self.len()),
            failed: false,
        }
    }

    /// The transaction at `pos` (a transaction boundary), its redundant
    /// length checked.
    pub fn txn_at(&self, pos: u64) -> Result<Txn<'_>> {
        let header = TxnHeader::parse(self.bytes(), pos)?;
        header.check_trailer(self.bytes())?;
        Ok(Txn {
            header,
            file: self.bytes(),
        })
    }

    /// The data record at `pos`.
    #[inline]
    pub fn record_at(&self, pos: u64) -> Result<DataHeader<'_>> {
        DataHeader::parse(self.bytes(), pos)
    }

    /// Follows a backpointer chain from `back` to the record holding the
    /// data, like ZODB's `_loadBack_impl`: `Ok(None)` when the chain ends in
    /// a zero backpointer. Each link must point before the record holding
    /// it ([`Error::BadBackpointer`] otherwise), so corrupt chains end.
    /// Like ZODB, the oids along the chain are not checked.
    pub fn follow_back(&self, mut back: u64) -> Result<Option<DataHeader<'_>>> {
        let mut from = u64::MAX;
        loop {
            if back == 0 {
                return Ok(None);
            }
            if back >= from {
                return Err(Error::BadBackpointer { pos: from, back });
            }
            let h = self.record_at(back)?;
            match h.payload {
                Payload::Data(_) => return Ok(Some(h)),
                Payload::Back(b) => {
                    from = back;
                    back = b;
                }
            }
        }
    }

    /// The data a record stands for, like the `data` of ZODB's iterator
    /// records: its own data, or that at the end of its backpointer chain;
    /// `None` for "no data" (undone creation, deletion).
    pub fn record_data<'a>(&'a self, rec: &DataHeader<'a>) -> Result<Option<&'a [u8]>> {
        match rec.payload {
            Payload::Data(d) => Ok(Some(d)),
            Payload::Back(b) => {
                if b != 0 && b >= rec.pos {
                    return Err(Error::BadBackpointer {
                        pos: rec.pos,
                        back: b,
                    });
                }
                Ok(self.follow_back(b)?.and_then(|h| h.data()))
            }
        }
    }

    /// The tid of the record a backpointer points to (one link), like the
    /// `data_txn` of ZODB's iterator records (`getTxnFromData`), checking
    /// that it is a record of `oid`.
    pub fn back_tid(&self, oid: Oid, back: u64) -> Result<Tid> {
        let h = self.record_at(back)?;
        if h.oid != oid {
            return Err(Error::OidMismatch {
                pos: back,
                expected: oid,
                found: h.oid,
            });
        }
        Ok(h.serial)
    }
}

fn log_tail(path: &Path, len: u64, tail: &Tail) {
    match &tail.stop {
        Stop::Eof | Stop::StopTid { .. } => {}
        Stop::Corrupt(e) => log::error!("{}: {e}", path.display()),
        stop => log::warn!(
            "{}: valid data ends at {} of {len} bytes ({stop:?}); the rest is ignored",
            path.display(),
            tail.end
        ),
    }
}

/// A transaction borrowed from the map: its header (by `Deref`) and its
/// data records.
#[derive(Clone, Copy, Debug)]
pub struct Txn<'a> {
    /// The header, with user, description and extension.
    pub header: TxnHeader<'a>,
    file: &'a [u8],
}

impl<'a> std::ops::Deref for Txn<'a> {
    type Target = TxnHeader<'a>;
    fn deref(&self) -> &TxnHeader<'a> {
        &self.header
    }
}

impl<'a> Txn<'a> {
    /// The data records, in file order.
    pub fn records(&self) -> RecordIter<'a> {
        RecordIter {
            file: self.file,
            tpos: self.header.pos,
            pos: self.header.data_pos(),
            tend: self.header.end(),
            failed: false,
        }
    }
}

/// Forward iterator over transactions; see the module docs for where it
/// stops. After the end, [`TxnIter::stop`] says why.
#[derive(Debug)]
pub struct TxnIter<'a> {
    file: &'a [u8],
    pos: u64,
    ltid: Tid,
    stop_tid: Option<Tid>,
    stop: Option<Stop>,
}

impl<'a> TxnIter<'a> {
    /// Offset of the next transaction (after the end: where it stopped).
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Why the iteration ended; `None` while it goes on. A
    /// [`Stop::Corrupt`] error has been yielded already and is kept here too.
    pub fn stop(&self) -> Option<&Stop> {
        self.stop.as_ref()
    }

    pub(crate) fn set_ltid(&mut self, t: Tid) {
        self.ltid = t;
    }

    /// The [`Tail`] once iteration is over.
    pub(crate) fn into_tail(self, last_txn: Option<(u64, Tid)>) -> Tail {
        Tail {
            end: self.pos,
            last_txn,
            last_tid: self.ltid,
            stop: self.stop.unwrap_or(Stop::Eof),
        }
    }
}

impl<'a> Iterator for TxnIter<'a> {
    type Item = Result<Txn<'a>>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.stop.is_some() {
            return None;
        }
        match step(self.file, self.pos, &mut self.ltid) {
            Ok(header) => {
                if self.stop_tid.is_some_and(|s| header.tid > s) {
                    self.stop = Some(Stop::StopTid { pos: self.pos });
                    return None;
                }
                self.pos = header.next_pos();
                Some(Ok(Txn {
                    header,
                    file: self.file,
                }))
            }
            Err(Stop::Corrupt(e)) => {
                self.stop = Some(Stop::Corrupt(e.clone()));
                Some(Err(e))
            }
            Err(stop) => {
                self.stop = Some(stop);
                None
            }
        }
    }
}

/// Backward iterator over transactions, newest first.
#[derive(Debug)]
pub struct TxnBackIter<'a> {
    file: &'a [u8],
    pos: u64,
    failed: bool,
}

impl<'a> Iterator for TxnBackIter<'a> {
    type Item = Result<Txn<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos <= MAGIC_LEN {
            return None;
        }
        let res =
            (|| {
                let at = self.pos.checked_sub(8).filter(|&p| p >= MAGIC_LEN).ok_or(
                    Error::Truncated {
                        pos: self.pos,
                        what: "redundant transaction length",
                        need: 8,
                        have: self.pos.saturating_sub(MAGIC_LEN),
                    },
                )?;
                let tlen = read_u64(self.file, at, "redundant transaction length")?;
                let tpos = at
                    .checked_sub(tlen)
                    .filter(|&p| p >= MAGIC_LEN)
                    .ok_or(Error::BadTxnTrailer { pos: at, tlen })?;
                let header = TxnHeader::parse(self.file, tpos)?;
                if header.tlen != tlen {
                    return Err(Error::RedundantLength {
                        pos: tpos,
                        tlen: header.tlen,
                        found: tlen,
                    });
                }
                Ok(header)
            })();
        match res {
            Ok(header) => {
                self.pos = header.pos;
                Some(Ok(Txn {
                    header,
                    file: self.file,
                }))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Iterator over the data records of one transaction. Yields an error (and
/// ends) on a record that leaves the transaction or names another one.
#[derive(Debug)]
pub struct RecordIter<'a> {
    file: &'a [u8],
    tpos: u64,
    pos: u64,
    tend: u64,
    failed: bool,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<DataHeader<'a>>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.tend {
            return None;
        }
        let pos = self.pos;
        let res = DataHeader::parse(self.file, pos).and_then(|h| {
            if h.next_pos() > self.tend {
                Err(Error::RecordOutsideTxn {
                    pos,
                    tpos: self.tpos,
                    tend: self.tend,
                })
            } else if h.tpos != self.tpos {
                Err(Error::RecordTxnMismatch {
                    pos,
                    found: h.tpos,
                    tpos: self.tpos,
                })
            } else {
                Ok(h)
            }
        });
        match res {
            Ok(h) => {
                self.pos = h.next_pos();
                Some(Ok(h))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode_data_header, encode_txn_header, MAGIC_FS30, TXN_STATUS, TXN_TLEN};

    /// A file of `n` transactions of one 5-byte record each.
    fn file(n: u64) -> Vec<u8> {
        let mut f = MAGIC_FS30.to_vec();
        for i in 1..=n {
            let tpos = f.len() as u64;
            let tlen = (TXN_HEADER_LEN + 42 + 5) as u64;
            encode_txn_header(&mut f, Tid(i), tlen, TxnStatus::Committed, b"", b"", b"").unwrap();
            encode_data_header(&mut f, Oid(i % 2), Tid(i), 0, tpos, 5);
            f.extend_from_slice(b"abcde");
            f.extend_from_slice(&tlen.to_be_bytes());
        }
        f
    }

    const TXN: usize = TXN_HEADER_LEN + 42 + 5 + 8;

    fn open(bytes: &[u8]) -> (tempfile::TempDir, DataFs) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("Data.fs");
        std::fs::write(&p, bytes).unwrap();
        let fs = DataFs::open(&p).unwrap();
        (dir, fs)
    }

    #[test]
    fn empty_and_bad_magic() {
        let (_d, fs) = open(b"");
        assert!(fs.is_empty());
        assert_eq!(fs.iter().count(), 0);
        assert_eq!(fs.tail().end, MAGIC_LEN);
        let (_d, fs) = open(b"FS30");
        assert_eq!(fs.iter().count(), 0);
        assert!(fs.tail().stop.is_clean());
        let dir = tempfile::tempdir().unwrap();
        for bad in [&b"FS"[..], b"FS40", b"\0\0\0\0xxxx"] {
            let p = dir.path().join("bad.fs");
            std::fs::write(&p, bad).unwrap();
            assert!(matches!(DataFs::open(&p), Err(Error::BadMagic { .. })));
        }
        let missing = DataFs::open(dir.path().join("missing.fs"));
        assert!(matches!(missing, Err(Error::Io { op: "open", .. })));
    }

    #[test]
    fn where_iteration_stops() {
        let f = file(3);
        let (_d, fs) = open(&f);
        assert_eq!(fs.iter().count(), 3);
        assert!(matches!(fs.tail().stop, Stop::Eof));
        assert_eq!(fs.tail().last_txn, Some((4 + 2 * TXN as u64, Tid(3))));
        // Torn tails: every cut inside the last transaction.
        for cut in 1..TXN {
            let (_d, fs) = open(&f[..f.len() - cut]);
            assert_eq!(fs.iter().count(), 2, "cut {cut}");
            let tail = fs.tail();
            assert!(matches!(tail.stop, Stop::TornTail { pos } if pos == 4 + 2 * TXN as u64));
            assert_eq!(tail.end, 4 + 2 * TXN as u64);
            let want = if TXN - cut >= TXN_HEADER_LEN { 3 } else { 2 };
            assert_eq!(tail.last_tid, Tid(want), "cut {cut}");
        }
        // Checkpoint in the middle: the rest is invisible.
        let mut g = f.clone();
        g[4 + TXN + TXN_STATUS] = b'c';
        let (_d, fs) = open(&g);
        assert_eq!(fs.iter().count(), 1);
        assert!(matches!(fs.tail().stop, Stop::Checkpoint { pos } if pos == 4 + TXN as u64));
        // Redundant length differs: corruption, yielded as an error.
        let mut g = f.clone();
        g[4 + 2 * TXN - 1] ^= 1;
        let (_d, fs) = open(&g);
        let items: Vec<_> = fs.iter().collect();
        assert_eq!(items.len(), 2);
        assert!(
            matches!(items[1], Err(Error::RedundantLength { pos, .. }) if pos == 4 + TXN as u64)
        );
        assert!(matches!(fs.tail().stop, Stop::Corrupt(_)));
        // tlen < header length mid-file, last 8 bytes plausible: corruption.
        let mut g = f.clone();
        g[4 + TXN + TXN_TLEN..4 + TXN + TXN_TLEN + 8].copy_from_slice(&5u64.to_be_bytes());
        let (_d, fs) = open(&g);
        assert!(matches!(
            fs.iter().nth(1),
            Some(Err(Error::TxnLengthTooSmall { tlen: 5, .. }))
        ));
        // ... and with an implausible end of file: garbage left by a crash.
        g.extend_from_slice(&u64::MAX.to_be_bytes());
        let (_d, fs) = open(&g);
        assert_eq!(fs.iter().count(), 1);
        assert!(matches!(fs.tail().stop, Stop::Garbage { .. }));
    }

    #[test]
    fn records_and_backward() {
        let mut f = file(4);
        let (_d, fs) = open(&f);
        let back: Vec<Tid> = fs.iter_back().map(|t| t.unwrap().tid).collect();
        assert_eq!(back, [Tid(4), Tid(3), Tid(2), Tid(1)]);
        assert_eq!(fs.seek_tid(Tid(3)).unwrap(), 4 + 2 * TXN as u64);
        assert_eq!(fs.seek_tid(Tid(9)).unwrap(), f.len() as u64);
        let r: Vec<_> = fs.iter_range(Some(Tid(2)), Some(Tid(3))).unwrap().collect();
        assert_eq!(r.len(), 2);
        // A record naming another transaction.
        f[4 + TXN + TXN_HEADER_LEN + 24 + 7] ^= 1;
        let (_d, fs) = open(&f);
        let t = fs.iter().nth(1).unwrap().unwrap();
        assert!(matches!(
            t.records().next(),
            Some(Err(Error::RecordTxnMismatch { .. }))
        ));
        // A broken redundant length when walking back.
        let mut g = file(2);
        let n = g.len();
        g[n - 8..].copy_from_slice(&(1u64 << 40).to_be_bytes());
        let (_d, fs) = open(&g);
        assert!(matches!(
            fs.iter_back_from(n as u64).next(),
            Some(Err(Error::BadTxnTrailer { .. }))
        ));
    }

    #[test]
    fn backpointer_chains_must_go_backward() {
        let mut f = file(1);
        let tpos = f.len() as u64;
        let tlen = (TXN_HEADER_LEN + 2 * 50) as u64;
        encode_txn_header(&mut f, Tid(9), tlen, TxnStatus::Committed, b"", b"", b"").unwrap();
        let r1 = f.len() as u64;
        encode_data_header(&mut f, Oid(1), Tid(9), 0, tpos, 0);
        f.extend_from_slice(&(r1 + 50).to_be_bytes()); // points forward
        encode_data_header(&mut f, Oid(1), Tid(9), 0, tpos, 0);
        f.extend_from_slice(&r1.to_be_bytes()); // points back to r1
        f.extend_from_slice(&tlen.to_be_bytes());
        let (_d, fs) = open(&f);
        let t = fs.iter().nth(1).unwrap().unwrap();
        let recs: Vec<_> = t.records().map(|r| r.unwrap()).collect();
        assert!(matches!(
            fs.record_data(&recs[0]),
            Err(Error::BadBackpointer { .. })
        ));
        assert!(matches!(
            fs.record_data(&recs[1]),
            Err(Error::BadBackpointer { .. })
        ));
        assert_eq!(fs.record_at(4 + 23).unwrap().data(), Some(&b"abcde"[..]));
    }

    #[test]
    fn refresh_sees_growth() {
        let f = file(3);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("Data.fs");
        std::fs::write(&p, &f[..4 + TXN]).unwrap();
        let mut fs = DataFs::open(&p).unwrap();
        assert_eq!(fs.iter().count(), 1);
        assert!(!fs.refresh().unwrap());
        std::fs::write(&p, &f).unwrap();
        assert!(fs.refresh().unwrap());
        assert_eq!(fs.iter().count(), 3);
        assert_eq!(fs.tail().end, f.len() as u64);
    }

    #[test]
    fn shareable_between_threads() {
        fn check<T: Send + Sync>() {}
        check::<DataFs>();
        check::<crate::FileStorage>();
    }
}
