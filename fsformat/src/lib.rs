//! ZODB FileStorage (`Data.fs`) in Rust.
//!
//! This crate owns the on-disk format of ZODB's FileStorage: a zero-copy
//! reader over a memory map, the object index, ZODB's load semantics, an
//! appending writer and verification equal to ZODB's `fstest`. Everything
//! else in the project (the Importer, the exporter) stands on it.

pub mod error;
pub mod format;
mod types;

pub use error::{Error, Result};
pub use format::{DataHeader, Magic, Payload, TxnHeader, TxnStatus};
pub use types::{Oid, Tid};
