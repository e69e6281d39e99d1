//! `neo-export`: a NEO cluster or a storage node's database back to a
//! valid `Data.fs`, and `neomigrate` both ways (issue 6).
//!
//! - [`batch`]: [`Batch`], transactions read together with their record
//!   data in shared buffers (what the export's threads pass around);
//! - [`source`]: the [`Source`] trait (committed transactions in tid
//!   order) and [`BackendSource`] over the storage layer's `Backend`
//!   (offline export of a storage node's database);
//! - [`sqlite`]: [`SqliteSource`], NEO's SQLite schema read in ranges
//!   (the fast path of `neo-export --database`);
//! - [`cluster`]: [`ClusterSource`], a running cluster through the Rust
//!   client (`neo-export --masters/--cluster`);
//! - [`export`](mod@export): the engine, resumable and incremental, on top
//!   of fsformat's writer;
//! - [`migrate`]: [`import_fs`], a `Data.fs` committed into a cluster
//!   through the client with its tids (the other half of `neomigrate`);
//! - [`progress`]: progress bar and log lines;
//! - [`error`](mod@error): the [`ExportError`] type.

#![warn(missing_docs)]

pub mod batch;
pub mod cluster;
pub mod error;
pub mod export;
pub mod migrate;
pub mod progress;
pub mod source;
pub mod sqlite;

pub use batch::Batch;
pub use cluster::ClusterSource;
pub use error::ExportError;
pub use export::{export, ExportOptions, NoProgress, Progress, Summary, MAX_TID};
pub use migrate::{import_fs, MigrateError};
pub use source::{BackendSource, Source, SourceError, SourceRecord, SourceTxn};
pub use sqlite::{SqliteSource, SCAN_ROWS};
