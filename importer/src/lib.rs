//! The Importer: a NEO storage backend that serves an existing `Data.fs`
//! while it migrates it into the storage database (NEO's
//! `neo/storage/database/importer.py`).
//!
//! - [`config`]: `importer.conf` (destination, sources, mountpoints);
//! - [`Importer`]: opens the destination and the source, imports
//!   transactions in tid order ([`Importer::import_some`]), resumes after a
//!   crash, writes clients' new transactions back to the source;
//! - `impl Backend for Importer` (module `backend`): what the storage
//!   node calls; reads see the whole history, imported or not;
//! - [`staging`]: several sources merged at mountpoints, written once as
//!   one FileStorage that the live [`Importer`] serves and imports;
//! - [`import_merged`]: imports sources merged at mountpoints in one go
//!   into a destination not in service (no staging file);
//! - [`compress`]: NEO's zlib rule, made cheap (probe, reused streams);
//! - [`mount`]: where the oids of several sources merged at mountpoints
//!   land, and their pickles rewritten accordingly;
//! - [`repickle`]: finds and rewrites the persistent references of
//!   pickles (oid remapping when databases are merged at mountpoints);
//! - [`Source`]: the source `Data.fs` (fsformat) bounded to the import.
//!
//! How a storage node uses it:
//!
//! ```no_run
//! # use neo_importer::{Importer, ImporterConfig};
//! # use neo_server::storage::SqliteOptions;
//! # use std::time::Duration;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // `neostorage -a Importer -d importer.conf [--reset] [--dedup]`
//! let cfg = ImporterConfig::read("importer.conf".as_ref())?;
//! let mut db = Importer::open_sqlite(&cfg, &SqliteOptions::default())?;
//! // ... hand `db` to the node as its Backend: once operational, the node
//! // calls `Backend::background_step` from a timer until it returns false,
//! // which runs:
//! let p = db.import_for(Duration::from_millis(50))?;
//! if !p.finished { /* more to do */ }
//! # Ok(()) }
//! ```
//!
//! Clients' transactions need tids above the source's last one: the
//! node's answer to the master's `AskLastIDs` comes from
//! [`Backend::last_ids`](neo_server::storage::Backend::last_ids), which
//! includes it.

mod backend;
pub mod compress;
pub mod config;
mod error;
mod importer;
mod merge;
pub mod mount;
pub mod repickle;
mod source;
pub mod staging;

pub use compress::compress_data;
pub use config::{
    Adapter, Compress, FileStorageSpec, ImporterConfig, ImporterConfigError, SourceConfig,
    DEFAULT_ZLIB_LEVEL,
};
pub use error::ImportError;
pub use importer::{
    decompress, import_sqlite_options, Importer, Progress, ProgressWatch, ALL_IMPORTED,
    IMPORT_CACHE_SIZE, KEY_LOID, KEY_LTID, KEY_TID,
};
pub use merge::{import_merged, MergeStats};
pub use source::{Source, TxnPos};
