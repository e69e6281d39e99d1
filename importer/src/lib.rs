//! The Importer: a NEO storage backend that serves an existing `Data.fs`
//! while it migrates it into the storage database (NEO's
//! `neo/storage/database/importer.py`).
//!
//! - [`config`]: `importer.conf` (destination, sources, mountpoints);
//! - [`Importer`]: opens the destination and the source, imports
//!   transactions in tid order ([`Importer::import_some`]), resumes after a
//!   crash, writes clients' new transactions back to the source;
//! - `impl Backend for Importer` (module `backend`): what the storage
//!   node calls; reads see the whole history, imported or not.
//!
//! The storage node drives it like any [`Backend`](neo_server::storage::Backend),
//! plus a background step: once operational, call
//! [`Importer::import_some`] from a timer (a few hundred transactions at a
//! time keeps client requests served in between) until
//! [`Progress::finished`].

mod backend;
pub mod config;
mod error;
mod importer;
mod source;

pub use config::{
    Adapter, Compress, FileStorageSpec, ImporterConfig, ImporterConfigError, SourceConfig,
};
pub use error::ImportError;
pub use importer::{
    compress_data, decompress, import_sqlite_options, Importer, Progress, ALL_IMPORTED,
    IMPORT_CACHE_SIZE, KEY_LOID, KEY_LTID, KEY_TID,
};
pub use source::{Source, TxnPos};
