//! NEO's wire protocol, version 5: typed packets, their msgpack codec
//! (byte-exact with the real NEO), the handshake and the framing of a
//! byte stream.
//!
//! # The stream
//!
//! Each direction of a connection starts with the 6-byte handshake
//! [`HANDSHAKE`] = `92 a3 4e 45 4f 05` (msgpack `["NEO", 5]`), sent by both
//! ends at once without waiting. Each end reads the peer's 6 bytes: equal
//! → go on; the first 5 (the magic) equal but not the version →
//! [`HandshakeError::VersionMismatch`]; otherwise
//! [`HandshakeError::NotNeo`] (or [`HandshakeError::PeerUsesTls`] when the
//! first byte opens a TLS record). With TLS the handshake, like all the
//! rest, travels inside TLS.
//!
//! Then come frames, a plain concatenation of msgpack values with no
//! length prefix, checksum or padding:
//!
//! ```text
//! 93                 fixarray of 3
//! <id>               uint32: per-connection counter of the sender; an
//!                    answer reuses the id of its request
//! <code>             packet type; answers = request | 0x8000; Error = 0x8000
//! <args>             array: the packet's fields in order
//! ```
//!
//! e.g. `93 00 cd 80 01 93 d4 04 00 d2 f0 00 00 01 01` is
//! `[0, 0x8001, [MASTER, M1, 1]]`, an [`AcceptIdentification`].
//! Encoding is NEO's `Packer(use_bin_type=True, strict_types=True)`:
//! smallest integers, float 64, bin for all bytes and text, maps in order,
//! enums as `fixext1` (`d4 TYPE VALUE`), tids/oids as 8-byte bin. The
//! [`FrameDecoder`] splits a stream in two phases (find the end of a frame
//! without allocating, then parse it), resumes across reads, and refuses
//! frames above NEO's 64 MiB buffer ([`UNPACK_BUFFER_SIZE`]). A complete
//! frame that is no valid packet gives a [`PacketError`] (with the id when
//! readable); NEO closes the connection on such frames.
//!
//! # Connections
//!
//! [`Connection`] (module [`conn`]) runs one NEO connection on tokio:
//! [`Connection::connect`] / [`Connection::accept`] do TLS if configured
//! ([`TlsConfig`], NEO's `--ca/--cert/--key`; TLS first, then NEO's
//! handshake inside), [`Connection::ask`] sends a request with the next id
//! of the connection and waits for its answer (or `Error`) with a timeout,
//! [`Connection::notify`] / [`Connection::answer`] send, and everything
//! else the peer sends arrives as [`Event`]s (or through a [`Handler`]).
//! Queues are bounded both ways; [`Event::Closed`] tells an orderly end
//! from an abrupt one.
//!
//! # Adding a packet
//!
//! Add one entry to the `packets!` table in `src/packets.rs`:
//!
//! ```text
//! /// What it does.
//! AskSomething = 0x004a, Request { oid: Oid, before: Option<Tid>, rows: Vec<(Offset, NodeId)> }
//! ```
//!
//! The macro makes the struct, its [`PacketBody`] impl (code, name, kind),
//! its array codec, the [`Body`] variant and the [`PACKET_TYPES`] entry.
//! Each field type implements [`Encode`] / [`Decode`]: the integers,
//! `bool`, `f64`, [`Bytes`] (bin), [`Oid`], [`Tid`], [`Checksum`],
//! [`NodeId`], the enums, [`Address`], [`NodeInfo`], [`Cell`], [`Value`]
//! (any), `Option<T>` (nil or T), `Vec<T>` (array), tuples (fixed arrays)
//! and [`Map<K, V>`]. A new tuple type with a name is one
//! [`wire_struct!`] invocation.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
pub mod conn;
pub mod frame;
pub mod packets;
pub mod tls;
pub mod types;
pub mod value;

pub use bytes::Bytes;
pub use codec::{Decode, DecodeError, DecodeErrorKind, Encode, Map, Reader, Writer};
pub use conn::{CloseReason, ConnConfig, ConnError, Connection, Event, Events, Handler};
pub use frame::{
    check_handshake, FrameDecoder, FrameError, HandshakeError, Scan, ScanError, Scanner, HANDSHAKE,
    MAGIC_SIZE,
};
pub use fsformat::{Oid, Tid};
pub use packets::*;
pub use tls::{TlsConfig, TlsConfigError};
pub use types::*;
pub use value::Value;
