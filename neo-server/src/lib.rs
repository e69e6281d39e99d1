//! The NEO cluster: master, storage (SQLite, MySQL), admin, `neoctl` and a
//! Rust client library, built on `neo-proto`. (Being written: see issue 4.)

pub mod admin;
pub mod client;
pub mod config;
pub mod master;
pub mod nodes;
pub mod pt;
pub mod runtime;
pub mod sim;
pub mod storage;
