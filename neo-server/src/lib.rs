//! The NEO cluster: the node roles (master, storage, admin), `neoctl`, and
//! a Rust client library, built on `neo-proto`.
//!
//! Every role is a deterministic state machine fed events and time
//! ([`runtime::Node`]); [`runtime::spawn`] runs one over real sockets and
//! [`sim::Sim`] runs several in memory for tests.
//!
//! - [`master`]: identification, cluster states, recovery, verification,
//!   the two-phase commit and its invalidations, the admin service;
//! - [`storage`]: the database layer ([`storage::Backend`]: SQLite, MySQL,
//!   in memory) and the storage node role ([`storage::node`]); the
//!   `neostorage` command line ([`storage::cli`]);
//! - [`admin`]: the admin node, which answers and relays `neoctl`;
//! - [`client`]: ZODB storage semantics over the wire (tests, exporter);
//! - [`pt`], [`nodes`]: the partition table and the node table every role
//!   keeps;
//! - [`config`]: `neo.conf` and the daemons' shared options.

pub mod admin;
pub mod client;
pub mod config;
pub mod master;
pub mod nodes;
pub mod pt;
pub mod runtime;
pub mod sim;
pub mod storage;
pub mod zlib;
