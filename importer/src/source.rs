//! [`Source`]: a source `Data.fs` as the Importer reads it.
//!
//! The import covers the transactions up to `ltid`, the source's last
//! transaction when the import started (recorded in the destination, so
//! transactions that writeback appends later are never imported again).
//! This module keeps the offsets of those transactions for quick lookups by
//! tid, and walks object revisions bounded by `ltid`, with ZODB's
//! semantics (the index entry, then `prev` pointers; data through
//! backpointer chains; `data_txn` one link away).

use std::path::{Path, PathBuf};

use fsformat::{DataHeader, FileStorage, OpenOptions, Payload, Stop, Tid, Txn, TxnStatus};
use fsformat::{Oid, Result as FsResult};

use crate::error::ImportError;

/// A transaction of the import range: its tid and where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnPos {
    /// The tid.
    pub tid: Tid,
    /// Offset of its header.
    pub pos: u64,
    /// Offset just after it.
    pub end: u64,
}

/// A source `Data.fs` opened for import.
#[derive(Debug)]
pub struct Source {
    path: PathBuf,
    fs: FileStorage,
    txns: Vec<TxnPos>,
    ltid: Tid,
    loid: Oid,
}

impl Source {
    /// Opens `path` read-only. `bounds` are the `(ltid, loid)` recorded
    /// when the import started, `None` the first time (then they are the
    /// file's last transaction and highest oid). A file whose valid part
    /// does not reach its end, with a `'u'` transaction, or empty, is
    /// refused with an error naming the offset.
    pub fn open(path: &Path, bounds: Option<(Tid, Oid)>) -> Result<Source, ImportError> {
        let src = |error| ImportError::Source {
            path: path.to_owned(),
            error,
        };
        let opts = OpenOptions {
            read_index: true,
            write_index: false,
        };
        let fs = FileStorage::open_with(path, opts).map_err(src)?;
        let tail = fs.datafs().tail();
        let damaged = |pos: u64, reason: &str| ImportError::SourceDamaged {
            path: path.to_owned(),
            pos,
            reason: reason.to_owned(),
        };
        match &tail.stop {
            Stop::Eof => {}
            Stop::TornTail { pos } => {
                return Err(damaged(
                    *pos,
                    "truncated transaction (the file ends inside it): repair the file first \
                     (e.g. open it read-write with ZODB, which cuts it off)",
                ))
            }
            Stop::Checkpoint { pos } => {
                return Err(damaged(
                    *pos,
                    "unfinished transaction (status 'c'): repair the file first",
                ))
            }
            Stop::Garbage { pos } => {
                return Err(damaged(*pos, "garbage after the last transaction"))
            }
            Stop::Corrupt(e) => return Err(src(e.clone())),
            other => return Err(damaged(tail.end, &format!("data ends early: {other:?}"))),
        }
        let (ltid, loid) = match bounds {
            Some(b) => b,
            None => match fs.last_txn() {
                None => {
                    return Err(ImportError::EmptySource {
                        path: path.to_owned(),
                    })
                }
                Some((_, t)) => (t, fs.max_oid()),
            },
        };
        let mut txns = Vec::new();
        for t in fs.iter() {
            let t = t.map_err(src)?;
            if t.tid > ltid {
                break;
            }
            if t.status == TxnStatus::Undone.byte() {
                return Err(damaged(
                    t.pos,
                    "transaction with status 'u' (ZODB cannot iterate it)",
                ));
            }
            if txns.last().is_some_and(|l: &TxnPos| l.tid >= t.tid) {
                return Err(damaged(t.pos, "transaction ids do not increase"));
            }
            txns.push(TxnPos {
                tid: t.tid,
                pos: t.pos,
                end: t.next_pos(),
            });
        }
        if txns.last().map(|t| t.tid) != Some(ltid) {
            return Err(ImportError::SourceChanged {
                path: path.to_owned(),
                reason: format!(
                    "its transaction {ltid} (the last one when the import started) is gone"
                ),
            });
        }
        Ok(Source {
            path: path.to_owned(),
            fs,
            txns,
            ltid,
            loid,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last transaction to import.
    pub fn ltid(&self) -> Tid {
        self.ltid
    }

    /// The highest oid of the import.
    pub fn loid(&self) -> Oid {
        self.loid
    }

    /// The transactions to import, in tid order.
    pub fn txns(&self) -> &[TxnPos] {
        &self.txns
    }

    /// The opened file.
    pub fn storage(&self) -> &FileStorage {
        &self.fs
    }

    /// Sees what was appended since opening (writeback).
    pub fn refresh(&mut self) -> Result<(), ImportError> {
        self.fs
            .refresh()
            .map(|_| ())
            .map_err(|error| ImportError::Source {
                path: self.path.clone(),
                error,
            })
    }

    /// Wraps an fsformat error with the file name.
    pub fn err(&self, error: fsformat::Error) -> ImportError {
        ImportError::Source {
            path: self.path.clone(),
            error,
        }
    }

    /// Index in [`txns`](Self::txns) of the first transaction above `tid`.
    pub fn first_after(&self, tid: Tid) -> usize {
        self.txns.partition_point(|t| t.tid <= tid)
    }

    /// The transaction `tid` of the import range, if there is one.
    pub fn txn(&self, tid: Tid) -> FsResult<Option<Txn<'_>>> {
        match self.txns.binary_search_by_key(&tid, |t| t.tid) {
            Ok(i) => self.fs.datafs().txn_at(self.txns[i].pos).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The transaction at `txns()[i]`.
    pub fn txn_at(&self, i: usize) -> FsResult<Txn<'_>> {
        self.fs.datafs().txn_at(self.txns[i].pos)
    }

    fn record(&self, oid: Oid, pos: u64) -> FsResult<DataHeader<'_>> {
        let h = self.fs.datafs().record_at(pos)?;
        if h.oid != oid {
            return Err(fsformat::Error::OidMismatch {
                pos,
                expected: oid,
                found: h.oid,
            });
        }
        Ok(h)
    }

    fn prev(&self, h: &DataHeader<'_>) -> FsResult<Option<DataHeader<'_>>> {
        match h.prev {
            0 => Ok(None),
            p if p >= h.pos => Err(fsformat::Error::BadPrevPointer {
                pos: h.pos,
                prev: p,
            }),
            p => self.record(h.oid, p).map(Some),
        }
    }

    /// Walks the revisions of `oid` newest first, from its newest record at
    /// or below `ltid`; `f` returns true to stop. Returns the record it
    /// stopped at and the serial of the revision after it (at most `ltid`).
    fn walk(
        &self,
        oid: Oid,
        mut stop: impl FnMut(&DataHeader<'_>) -> bool,
    ) -> FsResult<Option<(DataHeader<'_>, Option<Tid>)>> {
        let Some(pos) = self.fs.index().get(oid) else {
            return Ok(None);
        };
        let mut h = self.record(oid, pos)?;
        let mut next = None;
        loop {
            if h.serial <= self.ltid && stop(&h) {
                return Ok(Some((h, next)));
            }
            if h.serial <= self.ltid {
                next = Some(h.serial);
            }
            match self.prev(&h)? {
                Some(p) => h = p,
                None => return Ok(None),
            }
        }
    }

    /// The newest revision of `oid` with serial `<= bound` (`bound <=
    /// ltid`), and the serial of the next revision up to `ltid`.
    pub fn newest_upto(
        &self,
        oid: Oid,
        bound: Tid,
    ) -> FsResult<Option<(DataHeader<'_>, Option<Tid>)>> {
        self.walk(oid, |h| h.serial <= bound)
    }

    /// The revision of `oid` written by `serial`, and the next serial.
    pub fn exact(&self, oid: Oid, serial: Tid) -> FsResult<Option<(DataHeader<'_>, Option<Tid>)>> {
        Ok(self
            .walk(oid, |h| h.serial <= serial)?
            .filter(|(h, _)| h.serial == serial))
    }

    /// The first serial of `oid` above `serial` (up to `ltid`).
    pub fn next_after(&self, oid: Oid, serial: Tid) -> FsResult<Option<Tid>> {
        let mut next = None;
        let Some(pos) = self.fs.index().get(oid) else {
            return Ok(None);
        };
        let mut h = self.record(oid, pos)?;
        loop {
            if h.serial <= serial {
                return Ok(next);
            }
            if h.serial <= self.ltid {
                next = Some(h.serial);
            }
            match self.prev(&h)? {
                Some(p) => h = p,
                None => return Ok(next),
            }
        }
    }

    /// Every revision of `oid` up to `ltid`, newest first.
    pub fn revisions(&self, oid: Oid) -> FsResult<Vec<DataHeader<'_>>> {
        let mut out = Vec::new();
        let Some(pos) = self.fs.index().get(oid) else {
            return Ok(out);
        };
        let mut h = Some(self.record(oid, pos)?);
        while let Some(r) = h {
            if r.serial <= self.ltid {
                out.push(r);
            }
            h = self.prev(&r)?;
        }
        Ok(out)
    }

    /// The data a record stands for (following backpointers); `None` for
    /// no data (deletion, undone creation).
    pub fn data<'a>(&'a self, h: &DataHeader<'a>) -> FsResult<Option<&'a [u8]>> {
        self.fs.datafs().record_data(h)
    }

    /// The tid of the record a backpointer points to (ZODB's iterator
    /// `data_txn`, one link), `None` for data records and backpointer 0.
    pub fn data_tid(&self, h: &DataHeader<'_>) -> FsResult<Option<Tid>> {
        match h.payload {
            Payload::Back(b) if b != 0 => {
                if b >= h.pos {
                    return Err(fsformat::Error::BadBackpointer {
                        pos: h.pos,
                        back: b,
                    });
                }
                self.fs.datafs().back_tid(h.oid, b).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Offset of the record of `oid` written by `serial`, anywhere in the
    /// file (writeback appends backpointers to it).
    pub fn position_of(&self, oid: Oid, serial: Tid) -> FsResult<Option<u64>> {
        let Some(pos) = self.fs.index().get(oid) else {
            return Ok(None);
        };
        let mut h = Some(self.record(oid, pos)?);
        while let Some(r) = h {
            if r.serial == serial {
                return Ok(Some(r.pos));
            }
            if r.serial < serial {
                return Ok(None);
            }
            h = self.prev(&r)?;
        }
        Ok(None)
    }
}
