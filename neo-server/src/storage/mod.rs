//! The storage node's database layer.
//!
//! NEO's storage node keeps everything it owns in a relational database
//! (`neo/storage/database/{manager,sqlite,mysql}.py`). This module owns the
//! Rust side of that layer:
//!
//! - [`backend`]: the [`Backend`] trait, shaped after NEO's
//!   `DatabaseManager` but small and typed, plus the logic NEO puts in the
//!   base class (undo lookups, truncation, partition table changes) as
//!   default methods;
//! - [`sqlite`]: [`SqliteBackend`], which reads and writes *exactly* NEO's
//!   SQLite schema (version 4), so a database made by Python NEO opens here
//!   and the reverse;
//! - [`mysql`]: [`MysqlBackend`], NEO's MySQL/MariaDB schema (version 4),
//!   with reconnection as NEO's `auto_reconnect`;
//! - [`memory`]: [`MemoryBackend`], the same semantics in memory, with crash
//!   injection for tests of the node logic.
//!
//! Everything is synchronous: the daemon runs database work on blocking
//! threads. Writes accumulate in an open database transaction until
//! [`Backend::commit`], the only durability point.

pub mod backend;
pub mod cli;
pub mod memory;
pub mod mysql;
pub mod node;
pub mod sqlite;
mod types;

#[cfg(test)]
mod tests;

pub use backend::{Backend, HeldData, UndoInfo};
pub use memory::{CrashPlan, MemoryBackend, MemoryDisk};
pub use mysql::{MysqlBackend, MysqlOptions, MysqlTarget};
pub use sqlite::{SqliteBackend, SqliteOptions};
pub use types::*;
