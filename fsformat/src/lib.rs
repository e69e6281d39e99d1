//! ZODB FileStorage (`Data.fs`) in Rust.
//!
//! This crate owns the on-disk format of ZODB's FileStorage: a zero-copy
//! reader over a memory map, the object index, ZODB's load semantics, an
//! appending writer and verification equal to ZODB's `fstest`. Everything
//! else in the project (the Importer, the exporter) stands on it.
//!
//! - [`format`](mod@format): the byte layout, zero-copy [`TxnHeader`] / [`DataHeader`]
//!   views and encoders;
//! - [`DataFs`]: a mapped file, forward/backward iteration ([`Txn`],
//!   [`TxnIter`], [`RecordIter`]), where the valid part ends ([`Tail`]);
//! - [`FileStorage`]: the index ([`Index`], sidecar `<file>.neoindex`) and
//!   ZODB's `load`, `loadBefore`, `loadSerial`, `history`, ...;
//! - [`Writer`]: appends transactions the way ZODB commits them;
//! - the [`verify`] module: ZODB's `fstest`.
//!
//! ```
//! use fsformat::{FileStorage, Magic, Oid, Tid, TxnStatus, Writer};
//! # fn main() -> fsformat::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("Data.fs");
//! let mut w = Writer::create(&path, Magic::Fs30)?;
//! let mut t = w.begin(Tid(0x03f5_8e00_0444_4444), TxnStatus::Committed, b"me", b"first", b"")?;
//! let first = t.store(Oid(0), b"root v1")?;
//! t.commit()?;
//! let mut t = w.begin(Tid(0x03f5_8e00_0888_8888), TxnStatus::Committed, b"me", b"undo", b"")?;
//! t.store_back(Oid(0), first)?;
//! t.commit()?;
//! w.finish()?;
//!
//! let st = FileStorage::open(&path)?;
//! let (data, serial) = st.load(Oid(0))?;
//! assert_eq!((data, serial), (&b"root v1"[..], Tid(0x03f5_8e00_0888_8888)));
//! for txn in st.iter() {
//!     let txn = txn?;
//!     for rec in txn.records() {
//!         println!("{} {} {:?}", txn.tid, rec?.oid, txn.description);
//!     }
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

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
