//! ZODB FileStorage (`Data.fs`) in Rust.
//!
//! This crate owns the on-disk format of ZODB's FileStorage: a zero-copy
//! reader over a memory map, the object index, ZODB's load semantics, an
//! appending writer and verification equal to ZODB's `fstest`. Everything
//! else in the project (the Importer, the exporter) stands on it.

mod types;

pub use types::{Oid, Tid};
