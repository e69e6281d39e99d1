//! Verification of a whole `Data.fs`, equal to ZODB's `fstest` and a little
//! stricter.
//!
//! The checker walks the raw bytes itself (a memory map or any slice): it
//! uses the layout constants of [`crate::format`] but none of the reader's
//! parsing, so a bug there cannot hide a corruption here.
//!
//! **fstest's checks** (ZODB `scripts/fstest.py`), made in its order, each
//! reported at the offset fstest prints:
//!
//! | check                                                    | offset reported          |
//! |----------------------------------------------------------|--------------------------|
//! | file is empty                                            | 0                        |
//! | magic is `FS30` (or `FS21`, see below)                   | 0                        |
//! | a transaction header is cut by the end of file (torn tail) | the transaction        |
//! | tid greater than the previous transaction's              | the transaction          |
//! | `tpos + tlen + 8 <= file size`                           | the transaction          |
//! | status is not `'c'` (checkpoint flag left set)           | the transaction          |
//! | status is `' '`, `'p'` or `'u'`                          | the transaction          |
//! | `23 + ulen + dlen + elen <= tlen`                        | the transaction          |
//! | a data record header is cut by the end of file           | the data record          |
//! | the record's transaction position is its transaction     | the data record          |
//! | the record ends inside its transaction                   | the end of the record    |
//! | the redundant length after the records equals `tlen`     | where the records ended (the transaction itself for `'u'`) |
//!
//! Records of `'u'` (undone) transactions are skipped, as fstest does.
//!
//! **Stricter checks**, from what ZODB's `read_index` (run when a
//! FileStorage is opened without an index) and its packer's `checkData`
//! refuse: a non-zero version length, a record whose serial is not its
//! transaction's tid, a previous-record pointer that is not the object's
//! last record in an earlier transaction, and a backpointer that does not
//! point back to an earlier record of the same object. fstest passes these;
//! so that our verdict is fstest's whenever fstest finds something, they do
//! not stop the walk: the first of them is returned only if the structure
//! (fstest's checks) is sound to the end. A previous pointer of 0 where the
//! object had a record is only a warning, as in `read_index`.
//!
//! One deliberate difference: ZODB on Python 3 accepts only the `FS30`
//! magic, we also accept `FS21` (ZODB on Python 2), which the rest of this
//! crate reads.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::path::{Path, PathBuf};

use crate::format::{
    BACKPOINTER_LEN, DATA_HEADER_LEN, DATA_OID, DATA_PLEN, DATA_PREV, DATA_SERIAL, DATA_TPOS,
    DATA_VLEN, MAGIC_FS21, MAGIC_FS30, MAGIC_LEN, TXN_DLEN, TXN_ELEN, TXN_HEADER_LEN, TXN_STATUS,
    TXN_TID, TXN_TLEN, TXN_TRAILER_LEN, TXN_ULEN,
};
use crate::types::{Oid, Tid};

/// How often (in bytes walked) the progress callback is called.
const PROGRESS_STEP: u64 = 16 << 20;
/// At most this many warnings are kept in a [`VerifyReport`].
const MAX_WARNINGS: usize = 32;

/// A corruption found by [`verify_bytes`]: what is wrong and where.
///
/// [`Corruption::offset`] is the file offset ZODB's `fstest` prints for the
/// same problem; the variants' fields give the rest of the story.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Corruption {
    /// The file has no bytes at all (fstest: "empty file").
    EmptyFile,
    /// The first 4 bytes are not a FileStorage magic (fstest: "invalid
    /// file header").
    BadMagic {
        /// The first bytes (at most 4).
        found: Vec<u8>,
    },
    /// The file ends inside a transaction header: a torn tail (fstest:
    /// "truncated at").
    TruncatedTxnHeader {
        /// Offset of the transaction.
        pos: u64,
        /// Bytes present from `pos` (fewer than 23).
        have: u64,
    },
    /// A tid not greater than the previous one (fstest: "time-stamp
    /// reduction").
    TidNotIncreasing {
        /// Offset of the transaction.
        pos: u64,
        /// Its tid.
        tid: Tid,
        /// The previous transaction's tid (0 for the first).
        previous: Tid,
    },
    /// The transaction length runs past the end of the file: a torn tail or
    /// a damaged length (fstest: "truncated possibly because of damaged
    /// records").
    TxnBeyondFile {
        /// Offset of the transaction.
        pos: u64,
        /// The length field.
        tlen: u64,
        /// The file size.
        file_size: u64,
    },
    /// Status `'c'`: a commit that never finished (fstest: "checkpoint flag
    /// was not cleared").
    CheckpointFlag {
        /// Offset of the transaction.
        pos: u64,
    },
    /// A status byte other than `' '`, `'p'`, `'u'`, `'c'` (fstest: "has
    /// invalid status").
    BadStatus {
        /// Offset of the transaction.
        pos: u64,
        /// The byte.
        status: u8,
    },
    /// The header (23 bytes + user + description + extension) is longer
    /// than the transaction (fstest: "has an invalid transaction header").
    TxnHeaderTooLong {
        /// Offset of the transaction.
        pos: u64,
        /// The length field.
        tlen: u64,
        /// 23 + ulen + dlen + elen.
        header_len: u64,
    },
    /// The file ends inside a data record header (fstest: "truncated at").
    TruncatedDataHeader {
        /// Offset of the data record.
        pos: u64,
        /// Bytes present from `pos` (fewer than 42).
        have: u64,
    },
    /// A data record whose transaction position is not the transaction it
    /// sits in (fstest: "data record exceeds transaction record ... tloc !=
    /// tpos").
    WrongTxnPointer {
        /// Offset of the data record.
        pos: u64,
        /// The field's value.
        tloc: u64,
        /// The enclosing transaction.
        tpos: u64,
    },
    /// A data record that ends after its transaction's records should
    /// (fstest: "has data records that extend beyond the transaction
    /// record; end at").
    RecordBeyondTxn {
        /// Offset of the data record.
        pos: u64,
        /// Where it ends (fstest reports this offset; may exceed the file).
        end: u128,
        /// Offset of the enclosing transaction.
        tpos: u64,
        /// Where the transaction's records must end (`tpos + tlen`).
        tend: u64,
    },
    /// The redundant length after a transaction differs from its header's
    /// (fstest: "has inconsistent transaction length").
    RedundantLength {
        /// The offset fstest reports: where the records ended, i.e. the
        /// redundant length itself, or the transaction for a `'u'` one.
        at: u64,
        /// Offset of the transaction.
        tpos: u64,
        /// The header's length.
        tlen: u64,
        /// The length found at `tpos + tlen`.
        found: u64,
    },
    /// Not fstest: a data record with a version (ZODB refuses them since
    /// 3.9: "Non-zero version length").
    VersionedRecord {
        /// Offset of the data record.
        pos: u64,
        /// The version length.
        vlen: u16,
    },
    /// Not fstest: a data record whose serial is not its transaction's tid.
    SerialMismatch {
        /// Offset of the data record.
        pos: u64,
        /// The record's serial.
        serial: Tid,
        /// The transaction's tid.
        tid: Tid,
    },
    /// Not fstest: a previous-record pointer that is not the object's last
    /// record (ZODB's `read_index`: "incorrect previous pointer").
    BadPrevPointer {
        /// Offset of the data record.
        pos: u64,
        /// The object.
        oid: Oid,
        /// The pointer found.
        prev: u64,
        /// The object's last record before this transaction (0: none).
        expected: u64,
    },
    /// Not fstest: a backpointer that does not point to an earlier record of
    /// the same object (ZODB's `checkData`: "invalid back pointer").
    BadBackPointer {
        /// Offset of the data record.
        pos: u64,
        /// The object.
        oid: Oid,
        /// The backpointer.
        back: u64,
        /// What is wrong with the target.
        why: &'static str,
    },
}

impl Corruption {
    /// The file offset of the problem, as ZODB's `fstest` reports it (for
    /// [`Corruption::RecordBeyondTxn`], the record's end, saturated to
    /// `u64::MAX`).
    pub fn offset(&self) -> u64 {
        use Corruption::*;
        match self {
            EmptyFile | BadMagic { .. } => 0,
            TruncatedTxnHeader { pos, .. }
            | TidNotIncreasing { pos, .. }
            | TxnBeyondFile { pos, .. }
            | CheckpointFlag { pos }
            | BadStatus { pos, .. }
            | TxnHeaderTooLong { pos, .. }
            | TruncatedDataHeader { pos, .. }
            | WrongTxnPointer { pos, .. }
            | VersionedRecord { pos, .. }
            | SerialMismatch { pos, .. }
            | BadPrevPointer { pos, .. }
            | BadBackPointer { pos, .. } => *pos,
            RecordBeyondTxn { end, .. } => u64::try_from(*end).unwrap_or(u64::MAX),
            RedundantLength { at, .. } => *at,
        }
    }

    /// The words of fstest's message for this problem, `None` for the
    /// stricter checks fstest does not make.
    pub fn fstest_message(&self) -> Option<&'static str> {
        use Corruption::*;
        Some(match self {
            EmptyFile => "empty file",
            BadMagic { .. } => "invalid file header",
            TruncatedTxnHeader { .. } | TruncatedDataHeader { .. } => "truncated at",
            TidNotIncreasing { .. } => "time-stamp reduction",
            TxnBeyondFile { .. } => "truncated possibly because of damaged records",
            CheckpointFlag { .. } => "checkpoint flag was not cleared",
            BadStatus { .. } => "has invalid status",
            TxnHeaderTooLong { .. } => "has an invalid transaction header",
            WrongTxnPointer { .. } => "data record exceeds transaction record",
            RecordBeyondTxn { .. } => "has data records that extend beyond the transaction record",
            RedundantLength { .. } => "has inconsistent transaction length",
            VersionedRecord { .. }
            | SerialMismatch { .. }
            | BadPrevPointer { .. }
            | BadBackPointer { .. } => return None,
        })
    }

    /// True for the problems that only a torn write at the end of the file
    /// explains (the file ends inside the last transaction).
    pub fn is_torn_tail(&self) -> bool {
        matches!(
            self,
            Corruption::TruncatedTxnHeader { .. } | Corruption::TxnBeyondFile { .. }
        )
    }
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Corruption::*;
        match self {
            EmptyFile => write!(f, "empty file"),
            BadMagic { found } => write!(
                f,
                "invalid file header at 0: {:?} is not FS30 or FS21",
                String::from_utf8_lossy(found)
            ),
            TruncatedTxnHeader { pos, have } => write!(
                f,
                "truncated at {pos}: torn tail, {have} of {TXN_HEADER_LEN} bytes of a transaction header"
            ),
            TidNotIncreasing { pos, tid, previous } => {
                write!(f, "time-stamp reduction at {pos}: {tid} <= {previous}")
            }
            TxnBeyondFile {
                pos,
                tlen,
                file_size,
            } => write!(
                f,
                "truncated possibly because of damaged records at {pos}: transaction length {tlen} \
                 runs past the file size {file_size}"
            ),
            CheckpointFlag { pos } => write!(f, "checkpoint flag was not cleared at {pos}"),
            BadStatus { pos, status } => write!(
                f,
                "has invalid status {:?} at {pos}",
                char::from(*status)
            ),
            TxnHeaderTooLong {
                pos,
                tlen,
                header_len,
            } => write!(
                f,
                "has an invalid transaction header at {pos}: header length {header_len} > \
                 transaction length {tlen}"
            ),
            TruncatedDataHeader { pos, have } => write!(
                f,
                "truncated at {pos}: {have} of {DATA_HEADER_LEN} bytes of a data record header"
            ),
            WrongTxnPointer { pos, tloc, tpos } => write!(
                f,
                "data record exceeds transaction record at {pos}: tloc {tloc} != tpos {tpos}"
            ),
            RecordBeyondTxn {
                pos,
                end,
                tpos,
                tend,
            } => write!(
                f,
                "has data records that extend beyond the transaction record; end at {end} \
                 (record at {pos}, transaction at {tpos} ends at {tend})"
            ),
            RedundantLength {
                at,
                tpos,
                tlen,
                found,
            } => write!(
                f,
                "has inconsistent transaction length at {at}: transaction at {tpos} has length \
                 {tlen}, redundant length is {found}"
            ),
            VersionedRecord { pos, vlen } => write!(
                f,
                "data record with a version at {pos}: version length {vlen} (versions are not \
                 supported)"
            ),
            SerialMismatch { pos, serial, tid } => write!(
                f,
                "data record serial differs from its transaction's tid at {pos}: {serial} != {tid}"
            ),
            BadPrevPointer {
                pos,
                oid,
                prev,
                expected,
            } => write!(
                f,
                "incorrect previous pointer at {pos}: object {oid} points to {prev}, its last \
                 record is at {expected}"
            ),
            BadBackPointer {
                pos,
                oid,
                back,
                why,
            } => write!(
                f,
                "invalid back pointer at {pos}: object {oid} points to {back}, which {why}"
            ),
        }
    }
}

impl std::error::Error for Corruption {}

/// A problem ZODB only logs: the file is usable.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Warning {
    /// A record with no previous pointer for an object that had a record
    /// (ZODB's `read_index` logs "incorrect previous pointer" as a warning).
    PrevPointerMissing {
        /// Offset of the data record.
        pos: u64,
        /// The object.
        oid: Oid,
        /// The object's last record before this transaction.
        expected: u64,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::PrevPointerMissing { pos, oid, expected } => write!(
                f,
                "incorrect previous pointer at {pos}: object {oid} has none, its last record is \
                 at {expected}"
            ),
        }
    }
}

/// What a successful verification saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Size of the file, which is also where the last transaction ends.
    pub file_size: u64,
    /// The magic found.
    pub magic: [u8; 4],
    /// Number of transactions, undone ones included.
    pub txns: u64,
    /// Number of `'u'` (undone) transactions, whose records are skipped.
    pub undone_txns: u64,
    /// Number of data records (of transactions not undone).
    pub records: u64,
    /// Number of distinct objects with a record.
    pub objects: u64,
    /// Tid of the first transaction.
    pub first_tid: Option<Tid>,
    /// Tid of the last transaction.
    pub last_tid: Option<Tid>,
    /// The first warnings (at most 32).
    pub warnings: Vec<Warning>,
    /// How many warnings there were in all.
    pub warnings_total: u64,
}

/// [`verify_file`] failed: the file could not be read, or is corrupt.
#[non_exhaustive]
#[derive(Debug)]
pub enum VerifyError {
    /// Opening or mapping the file failed.
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file is corrupt.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The first problem (see [`verify_bytes`] for which is first).
        corruption: Corruption,
    },
}

impl VerifyError {
    /// The corruption, if that is what failed.
    pub fn corruption(&self) -> Option<&Corruption> {
        match self {
            VerifyError::Corrupt { corruption, .. } => Some(corruption),
            VerifyError::Io { .. } => None,
        }
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            VerifyError::Corrupt { path, corruption } => {
                write!(f, "{} {corruption}", path.display())
            }
        }
    }
}

impl std::error::Error for VerifyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            VerifyError::Io { source, .. } => Some(source),
            VerifyError::Corrupt { corruption, .. } => Some(corruption),
        }
    }
}

/// Maps the file at `path` and runs [`verify_bytes_with_progress`] on it.
pub fn verify_file(
    path: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyReport, VerifyError> {
    let io_err = |source| VerifyError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    let corrupt = |corruption| VerifyError::Corrupt {
        path: path.to_owned(),
        corruption,
    };
    if len == 0 {
        return Err(corrupt(Corruption::EmptyFile));
    }
    // SAFETY: the map is only read. Another process truncating the file
    // while we read would fault, as with any mmap reader; FileStorage files
    // only ever grow while in use.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?;
    #[cfg(unix)]
    {
        // A single front-to-back pass: tell the kernel to read ahead.
        let _ = map.advise(memmap2::Advice::Sequential);
    }
    verify_bytes_with_progress(&map, progress).map_err(corrupt)
}

/// Verifies a whole FileStorage held in `data`; see the module doc for the
/// checks and which problem is reported when there are several.
pub fn verify_bytes(data: &[u8]) -> Result<VerifyReport, Corruption> {
    verify_bytes_with_progress(data, &mut |_| {})
}

/// [`verify_bytes`], calling `progress` with the offset reached every
/// 16 MiB or so, and once at the end.
pub fn verify_bytes_with_progress(
    data: &[u8],
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyReport, Corruption> {
    let mut v = Walk {
        data,
        size: data.len() as u64,
        index: OidMap::default(),
        pending: Vec::new(),
        first_strict: None,
        report: VerifyReport {
            file_size: data.len() as u64,
            ..VerifyReport::default()
        },
    };
    let structure = v.walk(progress);
    progress(v.size);
    structure?;
    if let Some(c) = v.first_strict {
        return Err(c);
    }
    v.report.objects = v.index.len() as u64;
    Ok(v.report)
}

/// State of one verification pass.
struct Walk<'a> {
    data: &'a [u8],
    size: u64,
    /// oid -> position of its last record in a committed transaction.
    index: OidMap,
    /// (oid, position) of the current transaction's records, applied to
    /// `index` once the transaction is checked (as `read_index` does).
    pending: Vec<(u64, u64)>,
    /// The first problem found by the stricter checks.
    first_strict: Option<Corruption>,
    report: VerifyReport,
}

/// The 23 fixed bytes of a transaction header, decoded.
struct Txn {
    tid: u64,
    tlen: u64,
    status: u8,
    header_len: u64,
}

/// The 42 bytes of a data record header, decoded.
struct Rec {
    oid: u64,
    serial: u64,
    prev: u64,
    tloc: u64,
    vlen: u16,
    plen: u64,
}

impl<'a> Walk<'a> {
    /// `len` bytes at `pos`, or how many there are if fewer.
    fn bytes(&self, pos: u64, len: u64) -> Result<&'a [u8], u64> {
        let have = self.size.saturating_sub(pos);
        if have < len {
            return Err(have);
        }
        // Both ends are <= data.len(), so they fit in usize.
        let start = pos as usize;
        Ok(&self.data[start..start + len as usize])
    }

    /// fstest's `check` and `check_trec`, plus the stricter checks.
    fn walk(&mut self, progress: &mut dyn FnMut(u64)) -> Result<(), Corruption> {
        if self.size == 0 {
            return Err(Corruption::EmptyFile);
        }
        let magic = self.bytes(0, MAGIC_LEN).unwrap_or(self.data);
        if magic != MAGIC_FS30 && magic != MAGIC_FS21 {
            return Err(Corruption::BadMagic {
                found: magic.to_vec(),
            });
        }
        self.report.magic.copy_from_slice(magic);
        let mut pos = MAGIC_LEN;
        let mut ltid = 0u64;
        let mut next_tick = PROGRESS_STEP;
        while pos < self.size {
            if pos >= next_tick {
                progress(pos);
                next_tick = pos + PROGRESS_STEP;
            }
            let h = self
                .bytes(pos, TXN_HEADER_LEN as u64)
                .map_err(|have| Corruption::TruncatedTxnHeader { pos, have })?;
            let t = Txn {
                tid: be64(h, TXN_TID),
                tlen: be64(h, TXN_TLEN),
                status: h[TXN_STATUS],
                header_len: TXN_HEADER_LEN as u64
                    + u64::from(be16(h, TXN_ULEN))
                    + u64::from(be16(h, TXN_DLEN))
                    + u64::from(be16(h, TXN_ELEN)),
            };
            if t.tid <= ltid {
                return Err(Corruption::TidNotIncreasing {
                    pos,
                    tid: Tid(t.tid),
                    previous: Tid(ltid),
                });
            }
            ltid = t.tid;
            // pos + tlen + 8 > size, without overflow.
            if u128::from(pos) + u128::from(t.tlen) + TXN_TRAILER_LEN as u128
                > u128::from(self.size)
            {
                return Err(Corruption::TxnBeyondFile {
                    pos,
                    tlen: t.tlen,
                    file_size: self.size,
                });
            }
            match t.status {
                b'c' => return Err(Corruption::CheckpointFlag { pos }),
                b' ' | b'p' | b'u' => {}
                status => return Err(Corruption::BadStatus { pos, status }),
            }
            if t.header_len > t.tlen {
                return Err(Corruption::TxnHeaderTooLong {
                    pos,
                    tlen: t.tlen,
                    header_len: t.header_len,
                });
            }
            // Fits: pos + tlen + 8 <= size.
            let tend = pos + t.tlen;
            let records_end = if t.status == b'u' {
                self.report.undone_txns += 1;
                pos
            } else {
                self.records(pos, tend, &t)?
            };
            let rtl = self
                .bytes(tend, TXN_TRAILER_LEN as u64)
                .map(|b| be64(b, 0))
                .unwrap_or(!t.tlen);
            if rtl != t.tlen {
                return Err(Corruption::RedundantLength {
                    at: records_end,
                    tpos: pos,
                    tlen: t.tlen,
                    found: rtl,
                });
            }
            for (oid, rpos) in self.pending.drain(..) {
                self.index.insert(oid, rpos);
            }
            self.report.txns += 1;
            self.report.first_tid.get_or_insert(Tid(t.tid));
            self.report.last_tid = Some(Tid(t.tid));
            pos = tend + TXN_TRAILER_LEN as u64;
        }
        Ok(())
    }

    /// fstest's loop over `check_drec` for the transaction at `tpos`;
    /// returns where the records ended (`tend` when they add up).
    fn records(&mut self, tpos: u64, tend: u64, t: &Txn) -> Result<u64, Corruption> {
        self.pending.clear();
        let mut pos = tpos + t.header_len;
        while pos < tend {
            let h = self
                .bytes(pos, DATA_HEADER_LEN as u64)
                .map_err(|have| Corruption::TruncatedDataHeader { pos, have })?;
            let r = Rec {
                oid: be64(h, DATA_OID),
                serial: be64(h, DATA_SERIAL),
                prev: be64(h, DATA_PREV),
                tloc: be64(h, DATA_TPOS),
                vlen: be16(h, DATA_VLEN),
                plen: be64(h, DATA_PLEN),
            };
            // fstest: 42 + (plen or 8), plus 16 + vlen for a version.
            let mut len = DATA_HEADER_LEN as u128
                + if r.plen > 0 {
                    u128::from(r.plen)
                } else {
                    BACKPOINTER_LEN as u128
                };
            if r.vlen > 0 {
                len += 16 + u128::from(r.vlen);
            }
            if r.tloc != tpos {
                return Err(Corruption::WrongTxnPointer {
                    pos,
                    tloc: r.tloc,
                    tpos,
                });
            }
            let end = u128::from(pos) + len;
            if end > u128::from(tend) {
                return Err(Corruption::RecordBeyondTxn {
                    pos,
                    end,
                    tpos,
                    tend,
                });
            }
            self.strict_record(pos, t, &r);
            self.pending.push((r.oid, pos));
            self.report.records += 1;
            // end <= tend.
            pos = end as u64;
        }
        Ok(pos)
    }

    /// The checks fstest does not make, on a record known to lie inside
    /// its transaction; the first failure is kept in `first_strict`.
    fn strict_record(&mut self, pos: u64, t: &Txn, r: &Rec) {
        if self.first_strict.is_some() {
            // Keep indexing; one strict problem is enough to report.
            return;
        }
        let oid = Oid(r.oid);
        let found = if r.vlen != 0 {
            Some(Corruption::VersionedRecord { pos, vlen: r.vlen })
        } else if r.serial != t.tid {
            Some(Corruption::SerialMismatch {
                pos,
                serial: Tid(r.serial),
                tid: Tid(t.tid),
            })
        } else {
            let expected = self.index.get(&r.oid).copied().unwrap_or(0);
            if r.prev != expected {
                if r.prev == 0 {
                    self.warn(Warning::PrevPointerMissing { pos, oid, expected });
                    None
                } else {
                    Some(Corruption::BadPrevPointer {
                        pos,
                        oid,
                        prev: r.prev,
                        expected,
                    })
                }
            } else if r.plen == 0 {
                self.check_back(pos, r.oid)
            } else {
                None
            }
        };
        if let Some(c) = found {
            log::debug!("stricter check failed: {c}");
            self.first_strict = Some(c);
        }
    }

    /// A backpointer (read at `pos + 42`, inside the transaction) must be 0
    /// or point before `pos` to a record of the same object.
    fn check_back(&self, pos: u64, oid: u64) -> Option<Corruption> {
        let back = self
            .bytes(pos + DATA_HEADER_LEN as u64, BACKPOINTER_LEN as u64)
            .map(|b| be64(b, 0))
            .ok()?;
        if back == 0 {
            return None;
        }
        let bad = |why| {
            Some(Corruption::BadBackPointer {
                pos,
                oid: Oid(oid),
                back,
                why,
            })
        };
        if back >= pos {
            return bad("is not before the record");
        }
        if back < MAGIC_LEN + TXN_HEADER_LEN as u64 {
            return bad("is inside the file header");
        }
        match self.bytes(back, DATA_HEADER_LEN as u64) {
            Err(_) => bad("is past the end of the file"),
            Ok(h) if be64(h, DATA_OID) != oid => bad("is a record of another object"),
            Ok(h) if be64(h, DATA_TPOS) >= back => bad("is not a data record"),
            Ok(_) => None,
        }
    }

    fn warn(&mut self, w: Warning) {
        log::warn!("{w}");
        self.report.warnings_total += 1;
        if self.report.warnings.len() < MAX_WARNINGS {
            self.report.warnings.push(w);
        }
    }
}

/// Big-endian u64 at `at` of a header slice of known length.
fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Big-endian u16 at `at` of a header slice of known length.
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// oid -> position, hashed with one multiply (oids are dense integers, not
/// attacker-chosen keys of a long-lived map).
type OidMap = HashMap<u64, u64, BuildHasherDefault<OidHasher>>;

#[derive(Default)]
struct OidHasher(u64);

impl Hasher for OidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ (n >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What follows a crafted record header.
    enum P<'a> {
        Data(&'a [u8]),
        Back(u64),
    }

    /// Builds small files record by record, as ZODB would write them.
    struct B {
        f: Vec<u8>,
        last: HashMap<u64, u64>,
        /// Offset of each transaction.
        tpos: Vec<u64>,
        /// Offsets of each transaction's records.
        rpos: Vec<Vec<u64>>,
    }

    const USER: &[u8] = b"bob";
    const DESC: &[u8] = b"desc";
    const EXT: &[u8] = b"}q.";
    const HL: u64 = TXN_HEADER_LEN as u64 + 10;

    impl B {
        fn new() -> B {
            B {
                f: MAGIC_FS30.to_vec(),
                last: HashMap::new(),
                tpos: Vec::new(),
                rpos: Vec::new(),
            }
        }

        fn txn(&mut self, tid: u64, status: u8, recs: &[(u64, P)]) {
            let tpos = self.f.len() as u64;
            let mut body = Vec::new();
            let mut rpos = Vec::new();
            for (oid, p) in recs {
                let pos = tpos + HL + body.len() as u64;
                let prev = if status == b'u' {
                    0
                } else {
                    self.last.insert(*oid, pos).unwrap_or(0)
                };
                rpos.push(pos);
                body.extend_from_slice(&oid.to_be_bytes());
                body.extend_from_slice(&tid.to_be_bytes());
                body.extend_from_slice(&prev.to_be_bytes());
                body.extend_from_slice(&tpos.to_be_bytes());
                body.extend_from_slice(&0u16.to_be_bytes());
                match p {
                    P::Data(d) => {
                        body.extend_from_slice(&(d.len() as u64).to_be_bytes());
                        body.extend_from_slice(d);
                    }
                    P::Back(b) => {
                        body.extend_from_slice(&0u64.to_be_bytes());
                        body.extend_from_slice(&b.to_be_bytes());
                    }
                }
            }
            let tlen = HL + body.len() as u64;
            self.f.extend_from_slice(&tid.to_be_bytes());
            self.f.extend_from_slice(&tlen.to_be_bytes());
            self.f.push(status);
            for m in [USER, DESC, EXT] {
                self.f.extend_from_slice(&(m.len() as u16).to_be_bytes());
            }
            for m in [USER, DESC, EXT] {
                self.f.extend_from_slice(m);
            }
            self.f.extend_from_slice(&body);
            self.f.extend_from_slice(&tlen.to_be_bytes());
            self.tpos.push(tpos);
            self.rpos.push(rpos);
        }
    }

    /// Five transactions: creations, an update, an undo with backpointers
    /// (to data and to "no data"), an undone transaction, a last update.
    fn sample() -> B {
        let mut b = B::new();
        b.txn(0x10, b' ', &[(0, P::Data(b"root")), (1, P::Data(b"a"))]);
        b.txn(0x20, b' ', &[(1, P::Data(b"bb")), (2, P::Data(b"c"))]);
        let back = b.rpos[0][1];
        b.txn(0x30, b'p', &[(1, P::Back(back)), (2, P::Back(0))]);
        b.txn(0x40, b'u', &[(3, P::Data(b"gone"))]);
        b.txn(0x50, b' ', &[(0, P::Data(b"root2"))]);
        b
    }

    fn put64(f: &mut [u8], at: u64, v: u64) {
        f[at as usize..at as usize + 8].copy_from_slice(&v.to_be_bytes());
    }

    fn put16(f: &mut [u8], at: u64, v: u16) {
        f[at as usize..at as usize + 2].copy_from_slice(&v.to_be_bytes());
    }

    fn tlen_of(f: &[u8], tpos: u64) -> u64 {
        be64(&f[tpos as usize..], TXN_TLEN)
    }

    #[test]
    fn good_file() {
        let b = sample();
        let r = verify_bytes(&b.f).unwrap();
        assert_eq!(r.file_size, b.f.len() as u64);
        assert_eq!(&r.magic, b"FS30");
        assert_eq!((r.txns, r.undone_txns, r.records, r.objects), (5, 1, 7, 3));
        assert_eq!(
            (r.first_tid, r.last_tid),
            (Some(Tid(0x10)), Some(Tid(0x50)))
        );
        assert!(r.warnings.is_empty());
        // The magic alone is a valid, empty storage; FS21 is accepted.
        assert_eq!(verify_bytes(b"FS30").unwrap().txns, 0);
        let mut f = b.f.clone();
        f[..4].copy_from_slice(b"FS21");
        assert_eq!(&verify_bytes(&f).unwrap().magic, b"FS21");
    }

    #[test]
    fn empty_and_magic() {
        assert_eq!(verify_bytes(b""), Err(Corruption::EmptyFile));
        let mut f = sample().f;
        f[2] = b'9';
        let e = verify_bytes(&f).unwrap_err();
        assert_eq!(
            e,
            Corruption::BadMagic {
                found: b"FS90".to_vec()
            }
        );
        assert_eq!(e.offset(), 0);
        assert!(matches!(
            verify_bytes(b"FS"),
            Err(Corruption::BadMagic { .. })
        ));
    }

    #[test]
    fn torn_tail_at_every_cut() {
        let b = sample();
        let last = *b.tpos.last().unwrap();
        assert!(verify_bytes(&b.f[..last as usize]).is_ok());
        for cut in last + 1..b.f.len() as u64 {
            let e = verify_bytes(&b.f[..cut as usize]).unwrap_err();
            assert_eq!(e.offset(), last, "cut at {cut}: {e}");
            assert!(e.is_torn_tail());
            if cut - last < TXN_HEADER_LEN as u64 {
                assert_eq!(
                    e,
                    Corruption::TruncatedTxnHeader {
                        pos: last,
                        have: cut - last
                    }
                );
            } else {
                assert!(matches!(e, Corruption::TxnBeyondFile { .. }), "{e}");
            }
        }
    }

    #[test]
    fn tid_must_increase() {
        let b = sample();
        let mut f = b.f.clone();
        put64(&mut f, b.tpos[2], 0x20);
        let e = verify_bytes(&f).unwrap_err();
        assert_eq!(
            e,
            Corruption::TidNotIncreasing {
                pos: b.tpos[2],
                tid: Tid(0x20),
                previous: Tid(0x20)
            }
        );
        let mut f = b.f.clone();
        put64(&mut f, b.tpos[0], 0);
        assert_eq!(verify_bytes(&f).unwrap_err().offset(), 4);
    }

    #[test]
    fn length_past_the_file() {
        let b = sample();
        for tlen in [u64::MAX, u64::MAX - 3, b.f.len() as u64] {
            let mut f = b.f.clone();
            put64(&mut f, b.tpos[1] + TXN_TLEN as u64, tlen);
            let e = verify_bytes(&f).unwrap_err();
            assert_eq!(
                e,
                Corruption::TxnBeyondFile {
                    pos: b.tpos[1],
                    tlen,
                    file_size: f.len() as u64
                }
            );
        }
    }

    #[test]
    fn status_checks() {
        let b = sample();
        let mut f = b.f.clone();
        f[b.tpos[1] as usize + TXN_STATUS] = b'c';
        assert_eq!(
            verify_bytes(&f),
            Err(Corruption::CheckpointFlag { pos: b.tpos[1] })
        );
        f[b.tpos[1] as usize + TXN_STATUS] = b'x';
        assert_eq!(
            verify_bytes(&f),
            Err(Corruption::BadStatus {
                pos: b.tpos[1],
                status: b'x'
            })
        );
    }

    #[test]
    fn header_longer_than_txn() {
        let b = sample();
        let mut f = b.f.clone();
        let tpos = b.tpos[4];
        let tlen = tlen_of(&f, tpos);
        put16(&mut f, tpos + TXN_ELEN as u64, tlen as u16);
        let e = verify_bytes(&f).unwrap_err();
        assert_eq!(
            e,
            Corruption::TxnHeaderTooLong {
                pos: tpos,
                tlen,
                header_len: HL - EXT.len() as u64 + tlen
            }
        );
    }

    #[test]
    fn record_header_cut_by_the_end() {
        // The last transaction claims 10 bytes of records, and the file
        // ends 8 bytes later: the record header cannot be read.
        let b = sample();
        let tpos = b.tpos[4];
        let mut f = b.f[..(tpos + HL + 10 + 8) as usize].to_vec();
        put64(&mut f, tpos + TXN_TLEN as u64, HL + 10);
        let e = verify_bytes(&f).unwrap_err();
        assert_eq!(
            e,
            Corruption::TruncatedDataHeader {
                pos: tpos + HL,
                have: 18
            }
        );
    }

    #[test]
    fn record_points_to_another_txn() {
        let b = sample();
        let mut f = b.f.clone();
        let rpos = b.rpos[1][1];
        put64(&mut f, rpos + DATA_TPOS as u64, 4);
        assert_eq!(
            verify_bytes(&f),
            Err(Corruption::WrongTxnPointer {
                pos: rpos,
                tloc: 4,
                tpos: b.tpos[1]
            })
        );
    }

    #[test]
    fn record_beyond_its_txn() {
        let b = sample();
        // The last record of its transaction grows by one byte, or a lot.
        for plen in [2u64, 1 << 40, u64::MAX] {
            let mut f = b.f.clone();
            let rpos = b.rpos[1][1];
            put64(&mut f, rpos + DATA_PLEN as u64, plen);
            let e = verify_bytes(&f).unwrap_err();
            let end = u128::from(rpos) + DATA_HEADER_LEN as u128 + u128::from(plen);
            assert_eq!(
                e,
                Corruption::RecordBeyondTxn {
                    pos: rpos,
                    end,
                    tpos: b.tpos[1],
                    tend: b.tpos[1] + tlen_of(&b.f, b.tpos[1])
                }
            );
            assert_eq!(u128::from(e.offset()), end.min(u128::from(u64::MAX)));
        }
    }

    #[test]
    fn redundant_length() {
        let b = sample();
        for t in [1, 3] {
            let mut f = b.f.clone();
            let tpos = b.tpos[t];
            let tend = tpos + tlen_of(&f, tpos);
            put64(&mut f, tend, 7);
            // fstest reports where the records ended; for the undone
            // transaction (index 3) it never walked them.
            let at = if t == 3 { tpos } else { tend };
            assert_eq!(
                verify_bytes(&f),
                Err(Corruption::RedundantLength {
                    at,
                    tpos,
                    tlen: tlen_of(&f, tpos),
                    found: 7
                })
            );
        }
    }

    #[test]
    fn undone_txn_records_are_not_checked() {
        let b = sample();
        let mut f = b.f.clone();
        put64(&mut f, b.rpos[3][0] + DATA_TPOS as u64, 12345);
        assert!(verify_bytes(&f).is_ok());
    }

    #[test]
    fn versioned_record() {
        // A record with a version: 16 more bytes and the version string,
        // the transaction length covering them, so only vlen is wrong.
        let mut b = B::new();
        b.txn(0x10, b' ', &[(0, P::Data(b"root"))]);
        let tpos = b.tpos[0];
        let rpos = b.rpos[0][0];
        let mut f = b.f[..(rpos + DATA_HEADER_LEN as u64) as usize].to_vec();
        put16(&mut f, rpos + DATA_VLEN as u64, 2);
        f.extend_from_slice(&[0; 16]);
        f.extend_from_slice(b"v1");
        f.extend_from_slice(b"root");
        let tlen = f.len() as u64 - tpos;
        put64(&mut f, tpos + TXN_TLEN as u64, tlen);
        f.extend_from_slice(&tlen.to_be_bytes());
        let e = verify_bytes(&f).unwrap_err();
        assert_eq!(e, Corruption::VersionedRecord { pos: rpos, vlen: 2 });
        assert_eq!(e.fstest_message(), None);
    }

    #[test]
    fn serial_mismatch() {
        let b = sample();
        let mut f = b.f.clone();
        let rpos = b.rpos[4][0];
        put64(&mut f, rpos + DATA_SERIAL as u64, 0x49);
        assert_eq!(
            verify_bytes(&f),
            Err(Corruption::SerialMismatch {
                pos: rpos,
                serial: Tid(0x49),
                tid: Tid(0x50)
            })
        );
    }

    #[test]
    fn prev_pointer() {
        let b = sample();
        let rpos = b.rpos[4][0];
        let mut f = b.f.clone();
        put64(&mut f, rpos + DATA_PREV as u64, b.rpos[1][0]);
        assert_eq!(
            verify_bytes(&f),
            Err(Corruption::BadPrevPointer {
                pos: rpos,
                oid: Oid(0),
                prev: b.rpos[1][0],
                expected: b.rpos[0][0]
            })
        );
        // A missing previous pointer is only a warning, as in ZODB.
        put64(&mut f, rpos + DATA_PREV as u64, 0);
        let r = verify_bytes(&f).unwrap();
        assert_eq!(r.warnings_total, 1);
        assert_eq!(
            r.warnings,
            vec![Warning::PrevPointerMissing {
                pos: rpos,
                oid: Oid(0),
                expected: b.rpos[0][0]
            }]
        );
    }

    #[test]
    fn back_pointer() {
        let b = sample();
        let rpos = b.rpos[2][0];
        let at = rpos + DATA_HEADER_LEN as u64;
        let cases = [
            (rpos, "is not before the record"),
            (8, "is inside the file header"),
            (b.rpos[0][0], "is a record of another object"),
            (b.rpos[0][1] + 1, "is a record of another object"),
        ];
        for (back, why) in cases {
            let mut f = b.f.clone();
            put64(&mut f, at, back);
            assert_eq!(
                verify_bytes(&f),
                Err(Corruption::BadBackPointer {
                    pos: rpos,
                    oid: Oid(1),
                    back,
                    why
                })
            );
        }
    }

    #[test]
    fn fstest_problem_wins_over_a_stricter_one() {
        let b = sample();
        let mut f = b.f.clone();
        put64(&mut f, b.rpos[1][0] + DATA_SERIAL as u64, 1);
        let cut = f.len() - 3;
        let e = verify_bytes(&f[..cut]).unwrap_err();
        assert!(e.is_torn_tail(), "{e}");
        assert_eq!(e.offset(), b.tpos[4]);
        assert!(matches!(
            verify_bytes(&f),
            Err(Corruption::SerialMismatch { .. })
        ));
    }

    #[test]
    fn progress_reaches_the_end() {
        let b = sample();
        let mut seen = Vec::new();
        verify_bytes_with_progress(&b.f, &mut |p| seen.push(p)).unwrap();
        assert_eq!(seen.last(), Some(&(b.f.len() as u64)));
    }

    #[test]
    fn verify_file_maps_and_reports_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("Data.fs");
        let b = sample();
        std::fs::write(&p, &b.f).unwrap();
        assert_eq!(verify_file(&p, &mut |_| {}).unwrap().txns, 5);
        std::fs::write(&p, &b.f[..b.f.len() - 1]).unwrap();
        let e = verify_file(&p, &mut |_| {}).unwrap_err();
        assert_eq!(e.corruption().map(Corruption::offset), Some(b.tpos[4]));
        assert!(e.to_string().contains("Data.fs truncated possibly"), "{e}");
        std::fs::write(&p, b"").unwrap();
        assert!(matches!(
            verify_file(&p, &mut |_| {}),
            Err(VerifyError::Corrupt {
                corruption: Corruption::EmptyFile,
                ..
            })
        ));
        assert!(matches!(
            verify_file(&dir.path().join("nope"), &mut |_| {}),
            Err(VerifyError::Io { .. })
        ));
    }

    /// No input makes the walk panic: flip every byte of the sample in
    /// turn and make sure an answer (good or bad) comes back.
    #[test]
    fn every_single_byte_flip_is_handled() {
        let b = sample();
        for i in 0..b.f.len() {
            let mut f = b.f.clone();
            f[i] ^= 0xff;
            let _ = verify_bytes(&f);
        }
    }
}
