//! [`ExportError`]: everything that can stop an export.

use std::fmt;
use std::path::PathBuf;

use fsformat::{Oid, Tid};

use crate::source::SourceError;

/// Why an export failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ExportError {
    /// Reading the source failed.
    Source(SourceError),
    /// Reading or writing the output file failed (fsformat's error names
    /// the file and offset).
    Fs(fsformat::Error),
    /// An I/O call on the output file failed.
    Io {
        /// The file.
        path: PathBuf,
        /// What we were doing.
        op: &'static str,
        /// The error.
        error: std::io::Error,
    },
    /// The existing output file is not a prefix of the source's history.
    NotPrefix {
        /// The output file.
        path: PathBuf,
        /// The first transaction where they differ.
        tid: Tid,
        /// How they differ.
        reason: String,
    },
    /// A record's data cannot be written to a FileStorage.
    BadData {
        /// The object.
        oid: Oid,
        /// The transaction.
        tid: Tid,
        /// Why.
        reason: String,
    },
    /// The output file is damaged inside (not just a torn tail).
    Corrupt {
        /// The output file.
        path: PathBuf,
        /// Offset of the damage.
        pos: u64,
        /// What is wrong.
        what: String,
    },
}

impl fmt::Display for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExportError::Source(e) => write!(f, "source: {e}"),
            ExportError::Fs(e) => write!(f, "{e}"),
            ExportError::Io { path, op, error } => {
                write!(f, "{}: {op}: {error}", path.display())
            }
            ExportError::NotPrefix { path, tid, reason } => write!(
                f,
                "{}: not a prefix of the source's history, first difference at \
                 transaction {tid}: {reason}; refusing to append (export to a new file)",
                path.display()
            ),
            ExportError::BadData { oid, tid, reason } => {
                write!(f, "object {oid} of transaction {tid}: {reason}")
            }
            ExportError::Corrupt { path, pos, what } => {
                write!(f, "{}: damaged at {pos}: {what}", path.display())
            }
        }
    }
}

impl std::error::Error for ExportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExportError::Source(e) => Some(e),
            ExportError::Fs(e) => Some(e),
            ExportError::Io { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl From<SourceError> for ExportError {
    fn from(e: SourceError) -> Self {
        ExportError::Source(e)
    }
}

impl From<fsformat::Error> for ExportError {
    fn from(e: fsformat::Error) -> Self {
        ExportError::Fs(e)
    }
}
