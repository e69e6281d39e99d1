//! ZODB FileStorage (`Data.fs`) in Rust.
//!
//! This crate owns the on-disk format of ZODB's FileStorage: a zero-copy
//! reader over a memory map, the object index, ZODB's load semantics, an
//! appending writer and verification equal to ZODB's `fstest`. Everything
//! else in the project (the Importer, the exporter) stands on it.

mod datafs;
pub mod error;
pub mod format;
mod index;
mod storage;
mod types;
pub mod verify;
mod writer;

pub use datafs::{DataFs, RecordIter, Stop, Tail, Txn, TxnBackIter, TxnIter};
pub use error::{Error, Result};
pub use format::{DataHeader, Magic, Payload, TxnHeader, TxnStatus};
pub use index::{sidecar_path, Index, IndexBuilder, SidecarInfo};
pub use storage::{FileStorage, History, HistoryEntry, IndexSource, OpenOptions, Revision};
pub use types::{Oid, Tid};
pub use writer::{Committed, SyncMode, TxnWriter, Writer};
