//! [`ImportError`]: what can stop the Importer from opening or importing.
//!
//! Errors about a source name its file and, when they are about its
//! content, the offset in it; database errors keep the destination's
//! [`DbError`], which names its file.

use std::fmt;
use std::path::PathBuf;

use fsformat::Tid;
use neo_server::storage::DbError;

use crate::config::ImporterConfigError;

/// What can go wrong opening or running an import.
#[derive(Debug)]
#[non_exhaustive]
pub enum ImportError {
    /// `importer.conf` is wrong.
    Config(ImporterConfigError),
    /// Reading a source `Data.fs` failed (the error carries the offset).
    Source {
        /// The source file.
        path: PathBuf,
        /// What fsformat found.
        error: fsformat::Error,
    },
    /// A source whose valid data ends before the end of the file (torn or
    /// unfinished last transaction, garbage), or with a transaction ZODB
    /// cannot iterate.
    SourceDamaged {
        /// The source file.
        path: PathBuf,
        /// Offset of the problem.
        pos: u64,
        /// What is wrong.
        reason: String,
    },
    /// A source without any transaction (NEO refuses them too).
    EmptySource {
        /// The source file.
        path: PathBuf,
    },
    /// The source no longer matches what the destination recorded when
    /// the import started.
    SourceChanged {
        /// The source file.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// A record refers to data the destination does not have.
    MissingData {
        /// The source file.
        path: PathBuf,
        /// The transaction.
        tid: Tid,
        /// What is missing.
        reason: String,
    },
    /// The destination database failed.
    Db(DbError),
    /// Something this implementation does not do (MySQL, ...).
    Unsupported {
        /// What.
        what: String,
    },
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImportError::Config(e) => write!(f, "{e}"),
            ImportError::Source { path, error } => match error {
                // These already name the file.
                fsformat::Error::Io { .. } | fsformat::Error::BadMagic { .. } => {
                    write!(f, "{error}")
                }
                _ => write!(f, "{}: {error}", path.display()),
            },
            ImportError::SourceDamaged { path, pos, reason } => {
                write!(f, "{}: at offset {pos}: {reason}", path.display())
            }
            ImportError::EmptySource { path } => write!(
                f,
                "{}: cannot import an empty storage (no transaction)",
                path.display()
            ),
            ImportError::SourceChanged { path, reason } => write!(
                f,
                "{}: the source changed since the import started: {reason}",
                path.display()
            ),
            ImportError::MissingData { path, tid, reason } => {
                write!(f, "{}: transaction {tid}: {reason}", path.display())
            }
            ImportError::Db(e) => write!(f, "destination database: {e}"),
            ImportError::Unsupported { what } => write!(f, "not supported: {what}"),
        }
    }
}

impl std::error::Error for ImportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ImportError::Config(e) => Some(e),
            ImportError::Source { error, .. } => Some(error),
            ImportError::Db(e) => Some(e),
            _ => None,
        }
    }
}

impl From<DbError> for ImportError {
    fn from(e: DbError) -> Self {
        ImportError::Db(e)
    }
}

impl From<ImporterConfigError> for ImportError {
    fn from(e: ImporterConfigError) -> Self {
        ImportError::Config(e)
    }
}

impl ImportError {
    /// As a database error, for the [`Backend`](neo_server::storage::Backend)
    /// methods (database errors pass through unchanged).
    pub fn into_db(self) -> DbError {
        match self {
            ImportError::Db(e) => e,
            e => DbError::Corrupted {
                what: format!("importer: {e}"),
            },
        }
    }
}
