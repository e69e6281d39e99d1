//! [`FileStorage`]: a read-only `Data.fs` with its object index and ZODB's
//! load semantics (`load`, `loadBefore`, `loadSerial`, `history`,
//! `lastTransaction`, `new_oid`'s high-water mark, `len`), giving the same
//! results as ZODB's `FileStorage` opened read-only on the same file.
//!
//! Opening scans the file like ZODB's `read_index` (or only the part after
//! what a valid sidecar index covers) and fails like ZODB on corruption in
//! the middle of the file; a torn tail is ignored. Loaded data are borrowed
//! from the map.

use std::path::Path;

use crate::datafs::{DataFs, Stop, Tail, TxnBackIter, TxnIter};
use crate::error::{Error, Result};
use crate::format::{DataHeader, Payload, TxnHeader, TxnStatus, MAGIC_LEN};
use crate::index::{load_sidecar, save_sidecar, sidecar_path, Index, IndexBuilder, SidecarInfo};
use crate::{Oid, Tid};

/// How [`FileStorage::open_with`] uses the sidecar index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenOptions {
    /// Load `<path>.neoindex` if present and valid (default true).
    pub read_index: bool,
    /// Write `<path>.neoindex` after opening when it was missing, invalid
    /// or did not cover the whole file (default false: opening never
    /// writes beside the file unless asked).
    pub write_index: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_index: true,
            write_index: false,
        }
    }
}

/// Where the index came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexSource {
    /// Built by scanning the whole file.
    Scanned,
    /// Loaded from the sidecar, covering the file up to `covered`; the rest
    /// was scanned.
    Sidecar {
        /// End of the part the sidecar covered.
        covered: u64,
    },
}

/// One revision in [`FileStorage::history`], newest first (ZODB's
/// `history()` dicts).
#[derive(Clone, Copy, Debug)]
pub struct HistoryEntry<'a> {
    /// The revision's tid (ZODB `tid`).
    pub tid: Tid,
    /// Data length of the record, 0 for a backpointer (ZODB `size`).
    pub size: u64,
    /// Offset of the data record.
    pub pos: u64,
    /// The transaction (ZODB `user_name`, `description`, and the extension
    /// dict merged in).
    pub txn: TxnHeader<'a>,
}

/// A revision found by [`FileStorage::load_before`] (ZODB's
/// `(data, start_tid, end_tid)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Revision<'a> {
    /// The data.
    pub data: &'a [u8],
    /// Tid of the revision.
    pub tid: Tid,
    /// Tid of the next revision, `None` if this one is current.
    pub end_tid: Option<Tid>,
}

/// A `Data.fs` opened read-only with its index.
#[derive(Debug)]
pub struct FileStorage {
    fs: DataFs,
    index: Index,
    end: u64,
    last_tid: Tid,
    last_txn: Option<(u64, Tid)>,
    source: IndexSource,
}

/// Scans transactions from `from` like ZODB's `read_index`, calling `add`
/// for each data record of each visible, non-`'u'` transaction.
/// Returns the tail and the number of transactions seen.
fn scan(fs: &DataFs, from: u64, ltid: Tid, mut add: impl FnMut(Oid, u64)) -> Result<(Tail, usize)> {
    let mut it = fs.iter_from(from, None);
    it.set_ltid(ltid);
    let mut last_txn = None;
    let mut count = 0;
    for t in it.by_ref() {
        let t = t?;
        count += 1;
        last_txn = Some((t.pos, t.tid));
        if t.status == TxnStatus::Undone.byte() {
            continue;
        }
        for r in t.records() {
            let r = r?;
            add(r.oid, r.pos);
        }
    }
    if let Some(Stop::Corrupt(e)) = it.stop() {
        return Err(e.clone());
    }
    Ok((it.into_tail(last_txn), count))
}

impl FileStorage {
    /// Opens `path` with the default [`OpenOptions`].
    pub fn open(path: impl AsRef<Path>) -> Result<FileStorage> {
        Self::open_with(path, OpenOptions::default())
    }

    /// Opens `path`: maps it, loads a valid sidecar index if asked, scans
    /// the rest. Fails on corruption where ZODB's `FileStorage` would.
    pub fn open_with(path: impl AsRef<Path>, opts: OpenOptions) -> Result<FileStorage> {
        let fs = DataFs::open(path)?;
        let side = sidecar_path(fs.path());
        let loaded = if opts.read_index {
            load_sidecar(&side).and_then(|(idx, info)| match check_sidecar(&fs, &idx, &info) {
                Ok(()) => Some((idx, info)),
                Err(why) => {
                    log::warn!("ignoring index {}: {why}", side.display());
                    None
                }
            })
        } else {
            None
        };
        let (index, tail, source) = match loaded {
            Some((idx, info)) => {
                let ltid = info.last_txn.map_or(Tid::ZERO, |t| t.1);
                let mut b = IndexBuilder::from_index(idx);
                let (mut tail, _) = scan(&fs, info.end, ltid, |o, p| b.push(o, p))?;
                if tail.last_txn.is_none() {
                    tail.last_txn = info.last_txn;
                }
                (b.finish(), tail, IndexSource::Sidecar { covered: info.end })
            }
            None => {
                let mut b = IndexBuilder::default();
                let (tail, _) = scan(&fs, MAGIC_LEN, Tid::ZERO, |o, p| b.push(o, p))?;
                (b.finish(), tail, IndexSource::Scanned)
            }
        };
        let st = FileStorage {
            end: tail.end,
            last_tid: tail.last_tid,
            last_txn: tail.last_txn,
            index,
            source,
            fs,
        };
        st.fs.set_tail(tail);
        if opts.write_index && st.source != (IndexSource::Sidecar { covered: st.end }) {
            if let Err(e) = st.save_index() {
                log::warn!("could not save index: {e}");
            }
        }
        Ok(st)
    }

    /// Writes the sidecar index `<path>.neoindex` covering the file up to
    /// [`FileStorage::size`].
    pub fn save_index(&self) -> Result<()> {
        let first_tid = self
            .fs
            .iter_from(MAGIC_LEN, None)
            .next()
            .and_then(|t| t.ok())
            .map(|t| t.tid);
        let info = SidecarInfo {
            magic: self.fs.magic(),
            end: self.end,
            last_txn: self.last_txn,
            first_tid,
        };
        save_sidecar(&sidecar_path(self.fs.path()), &self.index, &info)
    }

    /// Picks up transactions appended since opening (by another process):
    /// remaps the file and indexes the new transactions, including one that
    /// was a `'c'` (commit in progress) at the last look and has since been
    /// finished. Returns how many were added. If the file shrank below what was indexed, everything is
    /// rebuilt.
    pub fn refresh(&mut self) -> Result<usize> {
        self.fs.refresh()?;
        if self.fs.len() == self.end {
            return Ok(0);
        }
        if self.fs.len() < self.end {
            log::warn!("{} shrank; rebuilding the index", self.fs.path().display());
            let opts = OpenOptions {
                read_index: false,
                write_index: false,
            };
            *self = Self::open_with(self.fs.path(), opts)?;
            return Ok(0);
        }
        let ltid = self.last_txn.map_or(Tid::ZERO, |t| t.1);
        let mut added = Vec::new();
        let (mut tail, n) = scan(&self.fs, self.end, ltid, |o, p| added.push((o, p)))?;
        for (o, p) in added {
            self.index.insert(o, p);
        }
        if tail.last_txn.is_none() {
            tail.last_txn = self.last_txn;
        }
        self.end = tail.end;
        self.last_tid = tail.last_tid;
        self.last_txn = tail.last_txn;
        self.fs.set_tail(tail);
        Ok(n)
    }

    /// The mapped file.
    pub fn datafs(&self) -> &DataFs {
        &self.fs
    }

    /// The index.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Where the index came from.
    pub fn index_source(&self) -> IndexSource {
        self.source
    }

    /// End of the visible transactions (ZODB's `getSize()`).
    pub fn size(&self) -> u64 {
        self.end
    }

    /// The visible transactions, oldest first.
    pub fn iter(&self) -> TxnIter<'_> {
        self.fs.iter()
    }

    /// Transactions with `start <= tid <= stop` (ZODB's `iterator`).
    pub fn iter_range(&self, start: Option<Tid>, stop: Option<Tid>) -> Result<TxnIter<'_>> {
        self.fs.iter_range(start, stop)
    }

    /// The visible transactions, newest first.
    pub fn iter_back(&self) -> TxnBackIter<'_> {
        self.fs.iter_back_from(self.end)
    }

    /// ZODB's `lastTransaction()` (see [`Tail::last_tid`] for the case of a
    /// torn last transaction); zero for an empty storage.
    pub fn last_transaction(&self) -> Tid {
        self.last_tid
    }

    /// Offset and tid of the last visible transaction.
    pub fn last_txn(&self) -> Option<(u64, Tid)> {
        self.last_txn
    }

    /// The highest oid in the index (ZODB's `_oid`, from which `new_oid`
    /// counts up); zero for an empty storage.
    pub fn max_oid(&self) -> Oid {
        self.index.max_oid().unwrap_or(Oid::ZERO)
    }

    /// Number of objects (ZODB's `len()`), deleted ones included.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when no object is stored.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn lookup(&self, oid: Oid) -> Result<u64> {
        self.index.get(oid).ok_or(Error::NotFound { oid })
    }

    /// The record at `pos`, which must be of `oid` (ZODB's
    /// `_read_data_header(pos, oid)`).
    fn record_of(&self, oid: Oid, pos: u64) -> Result<DataHeader<'_>> {
        let h = self.fs.record_at(pos)?;
        if h.oid != oid {
            return Err(Error::OidMismatch {
                pos,
                expected: oid,
                found: h.oid,
            });
        }
        Ok(h)
    }

    /// Data of `h`, following its backpointer chain; [`Error::NoData`] when
    /// it ends in zero (ZODB's `_loadBack_impl` with `fail=True`).
    fn data_of<'a>(&'a self, oid: Oid, h: &DataHeader<'a>) -> Result<&'a [u8]> {
        match h.payload {
            Payload::Data(d) => Ok(d),
            Payload::Back(b) => {
                if b != 0 && b >= h.pos {
                    return Err(Error::BadBackpointer {
                        pos: h.pos,
                        back: b,
                    });
                }
                match self.fs.follow_back(b)? {
                    Some(r) => Ok(r.data().unwrap_or_default()),
                    None => Err(Error::NoData { oid, pos: h.pos }),
                }
            }
        }
    }

    /// The previous record of `h` (strictly before it), or `None`.
    fn prev_of(h: &DataHeader<'_>) -> Result<Option<u64>> {
        match h.prev {
            0 => Ok(None),
            p if p >= h.pos => Err(Error::BadPrevPointer {
                pos: h.pos,
                prev: p,
            }),
            p => Ok(Some(p)),
        }
    }

    /// ZODB's `load(oid)`: the current data and its serial (the tid of the
    /// newest record, even when the data comes through a backpointer).
    /// [`Error::NotFound`] for an unknown oid, [`Error::NoData`] when the
    /// object's creation was undone or it was deleted.
    pub fn load(&self, oid: Oid) -> Result<(&[u8], Tid)> {
        let h = self.record_of(oid, self.lookup(oid)?)?;
        Ok((self.data_of(oid, &h)?, h.serial))
    }

    /// ZODB's `loadBefore(oid, tid)`: the revision current before `before`,
    /// as (data, its tid, tid of the next revision or `None` if current);
    /// `Ok(None)` when the object did not exist before `before`.
    pub fn load_before(&self, oid: Oid, before: Tid) -> Result<Option<Revision<'_>>> {
        let mut h = self.record_of(oid, self.lookup(oid)?)?;
        let mut end_tid = None;
        while h.serial >= before {
            end_tid = Some(h.serial);
            match Self::prev_of(&h)? {
                None => return Ok(None),
                Some(p) => h = self.record_of(oid, p)?,
            }
        }
        Ok(Some(Revision {
            data: self.data_of(oid, &h)?,
            tid: h.serial,
            end_tid,
        }))
    }

    /// ZODB's `loadSerial(oid, serial)`: the data of the revision written by
    /// transaction `serial`.
    pub fn load_serial(&self, oid: Oid, serial: Tid) -> Result<&[u8]> {
        let mut h = self.record_of(oid, self.lookup(oid)?)?;
        while h.serial != serial {
            if h.serial < serial {
                return Err(Error::NotFound { oid });
            }
            match Self::prev_of(&h)? {
                Some(p) => h = self.record_of(oid, p)?,
                None => return Err(Error::NotFound { oid }),
            }
        }
        self.data_of(oid, &h)
    }

    /// ZODB's `getTid(oid)` (`lastTid`): the serial of the newest revision;
    /// [`Error::NoData`] if its creation was undone.
    pub fn get_tid(&self, oid: Oid) -> Result<Tid> {
        let h = self.record_of(oid, self.lookup(oid)?)?;
        if h.payload == Payload::Back(0) {
            return Err(Error::NoData { oid, pos: h.pos });
        }
        Ok(h.serial)
    }

    /// ZODB's `history(oid, size=∞)`: the revisions of `oid`, newest first.
    /// Like ZODB, the oids of older records are not checked.
    pub fn history(&self, oid: Oid) -> Result<History<'_>> {
        Ok(History {
            st: self,
            pos: Some(self.lookup(oid)?),
            failed: false,
        })
    }
}

/// Iterator returned by [`FileStorage::history`].
#[derive(Debug)]
pub struct History<'a> {
    st: &'a FileStorage,
    pos: Option<u64>,
    failed: bool,
}

impl<'a> Iterator for History<'a> {
    type Item = Result<HistoryEntry<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let pos = self.pos?;
        let res = (|| {
            let h = self.st.fs.record_at(pos)?;
            let txn = TxnHeader::parse(self.st.fs.bytes(), h.tpos)?;
            self.pos = FileStorage::prev_of(&h)?;
            Ok(HistoryEntry {
                tid: h.serial,
                size: h.plen(),
                pos,
                txn,
            })
        })();
        if res.is_err() {
            self.failed = true;
        }
        Some(res)
    }
}

/// Checks a loaded sidecar against the file, like ZODB's `_sane` and more:
/// the last covered transaction is where and what the sidecar says, the
/// first transaction's tid matches, the last transaction's records are the
/// ones indexed, and a sample of entries point to records of their oid.
fn check_sidecar(fs: &DataFs, idx: &Index, info: &SidecarInfo) -> Result<(), String> {
    if info.magic != fs.magic() {
        return Err("Data.fs magic differs".into());
    }
    if info.end > fs.len() {
        return Err(format!("covers {} bytes, file has {}", info.end, fs.len()));
    }
    let Some((tpos, tid)) = info.last_txn else {
        return Ok(()); // empty index of an empty prefix
    };
    let t = fs.txn_at(tpos).map_err(|e| e.to_string())?;
    if t.tid != tid || t.next_pos() != info.end {
        return Err("last transaction differs".into());
    }
    if t.status == TxnStatus::Checkpoint.byte() {
        return Err("last transaction is a checkpoint".into());
    }
    let first = fs
        .iter_from(MAGIC_LEN, None)
        .next()
        .and_then(|t| t.ok())
        .map(|t| t.tid);
    if first != info.first_tid {
        return Err("first transaction differs".into());
    }
    if t.status != TxnStatus::Undone.byte() {
        for r in t.records().take(5) {
            let r = r.map_err(|e| e.to_string())?;
            if idx.get(r.oid) != Some(r.pos) && !later_record_in_txn(&t, r.pos, r.oid) {
                return Err(format!("entry of oid {} is stale", r.oid));
            }
        }
    }
    let n = idx.len();
    let step = (n / 64).max(1);
    for (i, (oid, pos)) in idx.iter().enumerate() {
        if i % step != 0 {
            continue;
        }
        match fs.record_at(pos) {
            Ok(r) if r.oid == oid && pos < info.end => {}
            _ => return Err(format!("entry of oid {oid} does not point to its record")),
        }
    }
    Ok(())
}

/// True if the transaction has another record of `oid` after `pos`.
fn later_record_in_txn(t: &crate::datafs::Txn<'_>, pos: u64, oid: Oid) -> bool {
    t.records()
        .filter_map(|r| r.ok())
        .any(|r| r.pos > pos && r.oid == oid)
}
