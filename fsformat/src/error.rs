//! The one error type of the crate.
//!
//! Every variant about the content of a `Data.fs` carries the file offset
//! (`pos`) where the problem was found; variants about opening or writing a
//! file carry its path. ZODB's `POSKeyError` cases are [`Error::NotFound`]
//! and [`Error::NoData`]; [`Error::is_pos_key_error`] tells them apart from
//! corruption.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::{Oid, Tid};

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong reading or writing a FileStorage.
#[non_exhaustive]
#[derive(Debug)]
pub enum Error {
    /// An I/O call failed (`op` names it: "open", "map", "write", ...).
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The operation that failed.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The file does not start with `FS21` or `FS30`.
    BadMagic {
        /// The file concerned.
        path: PathBuf,
        /// The first bytes found (at most 4).
        found: Vec<u8>,
    },
    /// A structure runs past the end of the bytes available.
    Truncated {
        /// Offset of the structure.
        pos: u64,
        /// What was being read ("transaction header", "data record", ...).
        what: &'static str,
        /// Bytes the structure needs from `pos`.
        need: u64,
        /// Bytes available from `pos`.
        have: u64,
    },
    /// A transaction length smaller than its own header.
    TxnLengthTooSmall {
        /// Offset of the transaction.
        pos: u64,
        /// The length field.
        tlen: u64,
        /// Header length (23 + user + description + extension).
        header_len: u64,
    },
    /// The redundant length after a transaction differs from its header's.
    RedundantLength {
        /// Offset of the transaction.
        pos: u64,
        /// Length in the header.
        tlen: u64,
        /// Length found after the transaction.
        found: u64,
    },
    /// A redundant transaction length that points before the first
    /// transaction (found walking backward).
    BadTxnTrailer {
        /// Offset of the redundant length.
        pos: u64,
        /// Its value.
        tlen: u64,
    },
    /// A transaction status other than `' '`, `'p'`, `'c'`, `'u'`, or a
    /// status not allowed where it was found.
    BadStatus {
        /// Offset of the transaction.
        pos: u64,
        /// The status byte.
        status: u8,
    },
    /// A data record with a non-zero version length (ZODB < 3.9 versions).
    Version {
        /// Offset of the data record.
        pos: u64,
        /// The version length field.
        vlen: u16,
    },
    /// A data record that runs past the end of its transaction.
    RecordOutsideTxn {
        /// Offset of the data record.
        pos: u64,
        /// Offset of the transaction.
        tpos: u64,
        /// Offset of the transaction's redundant length (end of its records).
        tend: u64,
    },
    /// A data record whose transaction-position field is not its transaction.
    RecordTxnMismatch {
        /// Offset of the data record.
        pos: u64,
        /// The field's value.
        found: u64,
        /// Offset of the enclosing transaction.
        tpos: u64,
    },
    /// The data records of a transaction do not end where it ends.
    RecordsDontAddUp {
        /// Offset of the transaction.
        pos: u64,
        /// Where the records ended.
        records_end: u64,
        /// Where they should have ended.
        tend: u64,
    },
    /// A data record of another object than expected.
    OidMismatch {
        /// Offset of the data record.
        pos: u64,
        /// The object we followed.
        expected: Oid,
        /// The oid in the record.
        found: Oid,
    },
    /// A backpointer that does not point before its own record.
    BadBackpointer {
        /// Offset of the data record holding it.
        pos: u64,
        /// The backpointer.
        back: u64,
    },
    /// A previous-record pointer that does not point before its own record.
    BadPrevPointer {
        /// Offset of the data record holding it.
        pos: u64,
        /// The pointer.
        prev: u64,
    },
    /// ZODB's `POSKeyError`: no such object, or no such revision of it.
    NotFound {
        /// The object.
        oid: Oid,
    },
    /// ZODB's `POSKeyError` for an object whose revision has no data: its
    /// creation was undone or it was deleted (a zero backpointer).
    NoData {
        /// The object.
        oid: Oid,
        /// Offset of the data record ending in a zero backpointer.
        pos: u64,
    },
    /// A user, description or extension longer than 65535 bytes, or data
    /// that cannot be stored (empty data).
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// The writer was asked to append a transaction id not above the last.
    TidNotIncreasing {
        /// The new id.
        tid: Tid,
        /// The last one in the file.
        last: Tid,
    },
    /// Another process holds the lock of the file (`<path>.lock`, taken
    /// with `flock` like ZODB's `zc.lockfile`).
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// Bad use of the writer API (empty data, backpointer not before the
    /// transaction, writer poisoned by an earlier failure, ...).
    Writer {
        /// What was wrong.
        reason: String,
    },
}

impl Error {
    /// True for ZODB's `POSKeyError` cases ([`Error::NotFound`],
    /// [`Error::NoData`]), false for corruption and I/O errors.
    pub fn is_pos_key_error(&self) -> bool {
        matches!(self, Error::NotFound { .. } | Error::NoData { .. })
    }

    /// The file offset the error is about, when it is about one.
    pub fn pos(&self) -> Option<u64> {
        use Error::*;
        match *self {
            Truncated { pos, .. }
            | TxnLengthTooSmall { pos, .. }
            | RedundantLength { pos, .. }
            | BadTxnTrailer { pos, .. }
            | BadStatus { pos, .. }
            | Version { pos, .. }
            | RecordOutsideTxn { pos, .. }
            | RecordTxnMismatch { pos, .. }
            | RecordsDontAddUp { pos, .. }
            | OidMismatch { pos, .. }
            | BadBackpointer { pos, .. }
            | BadPrevPointer { pos, .. }
            | NoData { pos, .. } => Some(pos),
            _ => None,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            op,
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Error::*;
        match self {
            Io { path, op, source } => write!(f, "{}: {op}: {source}", path.display()),
            BadMagic { path, found } => write!(
                f,
                "{}: not a FileStorage (magic {:?}, expected FS21 or FS30)",
                path.display(),
                String::from_utf8_lossy(found)
            ),
            Truncated {
                pos,
                what,
                need,
                have,
            } => write!(
                f,
                "{what} at {pos} truncated: needs {need} bytes, {have} left"
            ),
            TxnLengthTooSmall {
                pos,
                tlen,
                header_len,
            } => write!(
                f,
                "invalid transaction header at {pos}: txnlen ({tlen}) < headerlen({header_len})"
            ),
            RedundantLength { pos, tlen, found } => write!(
                f,
                "redundant transaction length check failed at {pos}: {found} != {tlen}"
            ),
            BadTxnTrailer { pos, tlen } => write!(
                f,
                "redundant transaction length {tlen} at {pos} points before the first transaction"
            ),
            BadStatus { pos, status } => write!(
                f,
                "invalid transaction status {:?} at {pos}",
                char::from(*status)
            ),
            Version { pos, vlen } => write!(
                f,
                "data record at {pos} has version length {vlen}: versions aren't supported"
            ),
            RecordOutsideTxn { pos, tpos, tend } => write!(
                f,
                "data record at {pos} exceeds transaction record at {tpos} (ends at {tend})"
            ),
            RecordTxnMismatch { pos, found, tpos } => write!(
                f,
                "data record at {pos} does not point to transaction header: {found} != {tpos}"
            ),
            RecordsDontAddUp {
                pos,
                records_end,
                tend,
            } => write!(
                f,
                "data records don't add up in transaction at {pos}: {records_end} != {tend}"
            ),
            OidMismatch {
                pos,
                expected,
                found,
            } => write!(
                f,
                "data record at {pos} is of oid {found}, expected {expected}"
            ),
            BadBackpointer { pos, back } => {
                write!(f, "invalid back pointer {back} in data record at {pos}")
            }
            BadPrevPointer { pos, prev } => {
                write!(f, "invalid previous pointer {prev} in data record at {pos}")
            }
            NotFound { oid } => write!(f, "POSKeyError: no such object or revision {oid}"),
            NoData { oid, pos } => write!(
                f,
                "POSKeyError: object {oid} has no data (creation undone or deleted) at {pos}"
            ),
            FieldTooLong { field, len } => {
                write!(f, "{field} too long ({len} bytes, at most 65535)")
            }
            TidNotIncreasing { tid, last } => {
                write!(f, "transaction id {tid} is not above the last one {last}")
            }
            Locked { path } => write!(
                f,
                "{}: locked by another process (ZODB or a writer)",
                path.display()
            ),
            Writer { reason } => write!(f, "writer: {reason}"),
        }
    }
}

/// A copy; an I/O error is rebuilt from its OS code, or kind and message.
impl Clone for Error {
    fn clone(&self) -> Error {
        use Error::*;
        match self {
            Io { path, op, source } => Io {
                path: path.clone(),
                op,
                source: match source.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(source.kind(), source.to_string()),
                },
            },
            BadMagic { path, found } => BadMagic {
                path: path.clone(),
                found: found.clone(),
            },
            Truncated {
                pos,
                what,
                need,
                have,
            } => Truncated {
                pos: *pos,
                what,
                need: *need,
                have: *have,
            },
            TxnLengthTooSmall {
                pos,
                tlen,
                header_len,
            } => TxnLengthTooSmall {
                pos: *pos,
                tlen: *tlen,
                header_len: *header_len,
            },
            RedundantLength { pos, tlen, found } => RedundantLength {
                pos: *pos,
                tlen: *tlen,
                found: *found,
            },
            BadTxnTrailer { pos, tlen } => BadTxnTrailer {
                pos: *pos,
                tlen: *tlen,
            },
            BadStatus { pos, status } => BadStatus {
                pos: *pos,
                status: *status,
            },
            Version { pos, vlen } => Version {
                pos: *pos,
                vlen: *vlen,
            },
            RecordOutsideTxn { pos, tpos, tend } => RecordOutsideTxn {
                pos: *pos,
                tpos: *tpos,
                tend: *tend,
            },
            RecordTxnMismatch { pos, found, tpos } => RecordTxnMismatch {
                pos: *pos,
                found: *found,
                tpos: *tpos,
            },
            RecordsDontAddUp {
                pos,
                records_end,
                tend,
            } => RecordsDontAddUp {
                pos: *pos,
                records_end: *records_end,
                tend: *tend,
            },
            OidMismatch {
                pos,
                expected,
                found,
            } => OidMismatch {
                pos: *pos,
                expected: *expected,
                found: *found,
            },
            BadBackpointer { pos, back } => BadBackpointer {
                pos: *pos,
                back: *back,
            },
            BadPrevPointer { pos, prev } => BadPrevPointer {
                pos: *pos,
                prev: *prev,
            },
            NotFound { oid } => NotFound { oid: *oid },
            NoData { oid, pos } => NoData {
                oid: *oid,
                pos: *pos,
            },
            FieldTooLong { field, len } => FieldTooLong { field, len: *len },
            TidNotIncreasing { tid, last } => TidNotIncreasing {
                tid: *tid,
                last: *last,
            },
            Locked { path } => Locked { path: path.clone() },
            Writer { reason } => Writer {
                reason: reason.clone(),
            },
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
