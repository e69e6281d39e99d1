//! NEO's wire protocol, version 5.
//!
//! This crate owns everything that crosses a connection between NEO nodes:
//! the typed packets, their msgpack encoding, the framing and the handshake,
//! the connection layer and TLS. (Being written: see issue 3.)
