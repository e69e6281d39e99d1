//! Framing over a byte stream: the 6-byte handshake, then a plain
//! concatenation of msgpack values (no length prefix) that a streaming
//! decoder splits.
//!
//! ```text
//! offset  bytes              meaning
//! 0       92                 msgpack fixarray of 2
//! 1       a3 4e 45 4f        fixstr "NEO"        (first 5 bytes = magic)
//! 5       05                 protocol version 5
//! 6..     93 <id> <code> <args>  one frame, then the next, ...
//! ```
//!
//! Splitting is two-phase, as in mini-redis: [`Scanner`] walks msgpack
//! headers without allocating to find where a frame ends (or how many
//! bytes it needs at least), resuming where it stopped when more bytes
//! arrive; only a complete frame is parsed into a [`Packet`]. A frame, and
//! the unparsed input, may not exceed NEO's 64 MiB buffer; a declared
//! length that cannot fit is refused at once, and no declared length ever
//! causes an allocation.

use std::fmt;

use bytes::{Bytes, BytesMut};
use rmp::Marker;

use crate::codec::MAX_DEPTH;
use crate::packets::{Packet, PacketError};
use crate::types::{PROTOCOL_VERSION, UNPACK_BUFFER_SIZE};

/// What each end sends first: msgpack `["NEO", 5]`.
pub const HANDSHAKE: [u8; 6] = [0x92, 0xa3, b'N', b'E', b'O', PROTOCOL_VERSION];
/// Length of the handshake's magic (everything but the version).
pub const MAGIC_SIZE: usize = 5;
/// First byte of a TLS handshake record.
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;
/// First byte of a TLS alert record (what a TLS server answers to plain
/// bytes).
pub const TLS_ALERT_BYTE: u8 = 0x15;

/// Why the peer's first bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// A NEO node of another protocol version (`theirs` when readable).
    VersionMismatch {
        /// Our version.
        ours: u8,
        /// The peer's version byte, if it is a small int.
        theirs: Option<u8>,
    },
    /// The peer speaks TLS (handshake or alert record) but we do not.
    PeerUsesTls,
    /// The peer does not speak NEO at all.
    NotNeo {
        /// The first bytes received (up to 6).
        received: Vec<u8>,
    },
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::VersionMismatch { ours, theirs } => match theirs {
                Some(v) => write!(f, "protocol version mismatch: ours {ours}, peer {v}"),
                None => write!(f, "protocol version mismatch: ours {ours}, peer unreadable"),
            },
            HandshakeError::PeerUsesTls => write!(
                f,
                "peer uses TLS but TLS is not enabled here (configure --ca/--cert/--key)"
            ),
            HandshakeError::NotNeo { received } => {
                write!(f, "peer is not a NEO node (first bytes {received:02x?})")
            }
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Checks the first bytes received. `Ok(true)`: the full handshake is
/// there (6 bytes to consume); `Ok(false)`: a correct prefix, wait for
/// more; an error as soon as the bytes cannot be NEO's handshake.
pub fn check_handshake(received: &[u8]) -> Result<bool, HandshakeError> {
    let n = received.len().min(HANDSHAKE.len());
    let got = &received[..n];
    if got == &HANDSHAKE[..n] {
        return Ok(n == HANDSHAKE.len());
    }
    if got.len() > MAGIC_SIZE && got[..MAGIC_SIZE] == HANDSHAKE[..MAGIC_SIZE] {
        let v = got[MAGIC_SIZE];
        return Err(HandshakeError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: (v < 0x80).then_some(v),
        });
    }
    if matches!(got.first(), Some(&(TLS_HANDSHAKE_BYTE | TLS_ALERT_BYTE))) {
        return Err(HandshakeError::PeerUsesTls);
    }
    let magic = n.min(MAGIC_SIZE);
    if got[..magic] == HANDSHAKE[..magic] {
        // Not enough bytes to tell a version mismatch from a wrong magic.
        return Ok(false);
    }
    Err(HandshakeError::NotNeo {
        received: got.to_vec(),
    })
}

/// Errors while splitting a stream into frames.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FrameError {
    /// The handshake was refused.
    Handshake(HandshakeError),
    /// The stream is no msgpack (reserved byte 0xc1, or too deep).
    Malformed {
        /// Offset in the stream (counting from after the handshake).
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A frame (or the buffered input) exceeds NEO's 64 MiB buffer.
    TooLarge {
        /// Offset of the frame in the stream.
        offset: u64,
        /// Bytes it needs at least.
        needed: u64,
    },
    /// A complete frame that is no valid packet.
    Packet {
        /// Offset of the frame in the stream.
        offset: u64,
        /// Why.
        error: PacketError,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Handshake(e) => e.fmt(f),
            FrameError::Malformed { offset, reason } => {
                write!(f, "malformed msgpack at stream offset {offset}: {reason}")
            }
            FrameError::TooLarge { offset, needed } => write!(
                f,
                "frame at stream offset {offset} needs {needed} bytes, above NEO's limit of {UNPACK_BUFFER_SIZE}"
            ),
            FrameError::Packet { offset, error } => {
                write!(f, "frame at stream offset {offset}: {error}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

impl From<HandshakeError> for FrameError {
    fn from(e: HandshakeError) -> Self {
        FrameError::Handshake(e)
    }
}

/// Result of one [`Scanner::scan`] step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The first msgpack value of the buffer ends here.
    Complete(usize),
    /// More bytes are needed: at least this many in total.
    Incomplete(usize),
}

/// Why [`Scanner::scan`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanError {
    /// Byte 0xc1 at this offset.
    Reserved(usize),
    /// Nesting deeper than [`MAX_DEPTH`] at this offset.
    TooDeep(usize),
    /// The value needs at least this many bytes, more than the limit.
    TooLarge(usize),
}

/// Finds the end of the first msgpack value of a buffer without
/// allocating per declared length; keeps its progress between calls, so
/// that feeding a big frame in small reads costs linear time.
#[derive(Debug, Clone)]
pub struct Scanner {
    limit: usize,
    pos: usize,
    started: bool,
    /// Items still expected by each open array / map.
    stack: Vec<u64>,
    need: usize,
}

impl Scanner {
    /// A scanner refusing values above `limit` bytes.
    pub fn new(limit: usize) -> Scanner {
        Scanner {
            limit,
            pos: 0,
            started: false,
            stack: Vec::new(),
            need: 1,
        }
    }

    /// Forgets the progress (call after consuming a complete value).
    pub fn reset(&mut self) {
        self.pos = 0;
        self.started = false;
        self.stack.clear();
        self.need = 1;
    }

    /// Continues scanning `buf` (the same buffer, possibly grown).
    pub fn scan(&mut self, buf: &[u8]) -> Result<Scan, ScanError> {
        if buf.len() < self.need {
            return Ok(Scan::Incomplete(self.need));
        }
        loop {
            while self.stack.last() == Some(&0) {
                self.stack.pop();
            }
            if self.started && self.stack.is_empty() {
                return Ok(Scan::Complete(self.pos));
            }
            let Some(&b) = buf.get(self.pos) else {
                return Ok(self.wait(self.pos + 1));
            };
            // (header bytes after the marker, payload bytes, child items)
            let (header, payload, children): (usize, usize, u64) = match Marker::from_u8(b) {
                Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null => (0, 0, 0),
                Marker::True | Marker::False => (0, 0, 0),
                Marker::U8 | Marker::I8 => (1, 0, 0),
                Marker::U16 | Marker::I16 => (2, 0, 0),
                Marker::U32 | Marker::I32 | Marker::F32 => (4, 0, 0),
                Marker::U64 | Marker::I64 | Marker::F64 => (8, 0, 0),
                Marker::FixStr(n) => (0, n.into(), 0),
                Marker::FixArray(n) => (0, 0, n.into()),
                Marker::FixMap(n) => (0, 0, 2 * u64::from(n)),
                Marker::FixExt1 => (1, 1, 0),
                Marker::FixExt2 => (1, 2, 0),
                Marker::FixExt4 => (1, 4, 0),
                Marker::FixExt8 => (1, 8, 0),
                Marker::FixExt16 => (1, 16, 0),
                Marker::Reserved => return Err(ScanError::Reserved(self.pos)),
                m @ (Marker::Bin8
                | Marker::Bin16
                | Marker::Bin32
                | Marker::Str8
                | Marker::Str16
                | Marker::Str32
                | Marker::Ext8
                | Marker::Ext16
                | Marker::Ext32
                | Marker::Array16
                | Marker::Array32
                | Marker::Map16
                | Marker::Map32) => {
                    let size = match m {
                        Marker::Bin8 | Marker::Str8 | Marker::Ext8 => 1,
                        Marker::Bin16 | Marker::Str16 | Marker::Ext16 => 2,
                        Marker::Array16 | Marker::Map16 => 2,
                        _ => 4,
                    };
                    let Some(len_bytes) = buf.get(self.pos + 1..self.pos + 1 + size) else {
                        return self.need_bytes(self.pos + 1 + size);
                    };
                    let n = len_bytes.iter().fold(0u64, |a, &x| (a << 8) | u64::from(x));
                    match m {
                        Marker::Ext8 | Marker::Ext16 | Marker::Ext32 => (size + 1, n as usize, 0),
                        Marker::Array16 | Marker::Array32 => (size, 0, n),
                        Marker::Map16 | Marker::Map32 => (size, 0, 2 * n),
                        _ => (size, n as usize, 0),
                    }
                }
            };
            let end = self.pos + 1 + header + payload;
            if end > buf.len() {
                return self.need_bytes(end);
            }
            // Every child takes at least one byte: refuse counts that
            // cannot fit before any of them arrives.
            if (end as u64).saturating_add(children) > self.limit as u64 {
                return Err(ScanError::TooLarge(end.saturating_add(children as usize)));
            }
            if let Some(top) = self.stack.last_mut() {
                *top -= 1;
            }
            self.started = true;
            self.pos = end;
            if children > 0 {
                if self.stack.len() >= MAX_DEPTH {
                    return Err(ScanError::TooDeep(self.pos));
                }
                self.stack.push(children);
            }
        }
    }

    fn wait(&mut self, need: usize) -> Scan {
        self.need = need;
        Scan::Incomplete(need)
    }

    fn need_bytes(&mut self, need: usize) -> Result<Scan, ScanError> {
        if need > self.limit {
            return Err(ScanError::TooLarge(need));
        }
        Ok(self.wait(need))
    }
}

/// Splits an incoming byte stream into packets: first the peer's
/// handshake, then frames. Feed it what the socket gives, in any pieces.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    scanner: Scanner,
    handshake_done: bool,
    /// Stream offset of `buf[0]`, after the handshake.
    offset: u64,
    limit: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder that first expects the peer's handshake.
    pub fn new() -> FrameDecoder {
        Self::with_limit(UNPACK_BUFFER_SIZE)
    }

    /// Same, with another buffer limit than NEO's 64 MiB (for tests).
    pub fn with_limit(limit: usize) -> FrameDecoder {
        FrameDecoder {
            buf: BytesMut::new(),
            scanner: Scanner::new(limit),
            handshake_done: false,
            offset: 0,
            limit,
        }
    }

    /// A decoder for a stream whose handshake was already checked.
    pub fn after_handshake() -> FrameDecoder {
        let mut d = Self::new();
        d.handshake_done = true;
        d
    }

    /// Whether the peer's handshake was received.
    pub fn handshake_done(&self) -> bool {
        self.handshake_done
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Appends received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The buffer to read into directly (e.g. with tokio's `read_buf`).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Checks the handshake if not done yet: `Ok(true)` once it was
    /// received.
    pub fn poll_handshake(&mut self) -> Result<bool, HandshakeError> {
        if !self.handshake_done {
            if !check_handshake(&self.buf)? {
                return Ok(false);
            }
            let _ = self.buf.split_to(HANDSHAKE.len());
            self.handshake_done = true;
        }
        Ok(true)
    }

    /// The next complete frame, raw (after the handshake).
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if !self.poll_handshake()? {
            return Ok(None);
        }
        let scan = self.scanner.scan(&self.buf).map_err(|e| match e {
            ScanError::Reserved(at) => FrameError::Malformed {
                offset: self.offset + at as u64,
                reason: "reserved byte 0xc1",
            },
            ScanError::TooDeep(at) => FrameError::Malformed {
                offset: self.offset + at as u64,
                reason: "arrays or maps nested too deep",
            },
            ScanError::TooLarge(needed) => FrameError::TooLarge {
                offset: self.offset,
                needed: needed as u64,
            },
        })?;
        match scan {
            Scan::Complete(len) => {
                self.scanner.reset();
                let frame = self.buf.split_to(len).freeze();
                self.offset += len as u64;
                Ok(Some(frame))
            }
            Scan::Incomplete(_) if self.buf.len() > self.limit => Err(FrameError::TooLarge {
                offset: self.offset,
                needed: self.buf.len() as u64,
            }),
            Scan::Incomplete(_) => Ok(None),
        }
    }

    /// The next complete packet.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, FrameError> {
        let offset = self.offset;
        match self.next_frame()? {
            None => Ok(None),
            Some(frame) => Packet::decode(&frame)
                .map(Some)
                .map_err(|error| FrameError::Packet { offset, error }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_outcomes() {
        assert_eq!(check_handshake(&HANDSHAKE), Ok(true));
        assert_eq!(check_handshake(&HANDSHAKE[..3]), Ok(false));
        assert_eq!(check_handshake(&[]), Ok(false));
        assert_eq!(
            check_handshake(&[0x92, 0xa3, b'N', b'E', b'O', 4]),
            Err(HandshakeError::VersionMismatch {
                ours: 5,
                theirs: Some(4)
            })
        );
        assert!(matches!(
            check_handshake(&[0x92, 0xa3, b'N', b'E', b'O', 0xcc, 200]),
            Err(HandshakeError::VersionMismatch { theirs: None, .. })
        ));
        assert_eq!(
            check_handshake(&[0x16, 3, 1]),
            Err(HandshakeError::PeerUsesTls)
        );
        assert!(matches!(
            check_handshake(b"GET "),
            Err(HandshakeError::NotNeo { .. })
        ));
    }

    #[test]
    fn huge_declared_lengths_are_refused_without_allocation() {
        // array32 of 4 billion items, bin32 of 4 GB, map32.
        for frame in [
            &[0xdd, 0xff, 0xff, 0xff, 0xff][..],
            &[0x93, 0, 1, 0x91, 0xc6, 0xff, 0xff, 0xff, 0xff][..],
            &[0xdf, 0x80, 0, 0, 0][..],
        ] {
            let mut d = FrameDecoder::after_handshake();
            d.feed(frame);
            assert!(
                matches!(d.next_frame(), Err(FrameError::TooLarge { .. })),
                "{frame:02x?}"
            );
        }
    }

    #[test]
    fn frames_above_the_limit_are_refused_early() {
        let mut d = FrameDecoder::with_limit(1000);
        d.feed(&HANDSHAKE);
        d.feed(&[0xdc, 0x03, 0xe0]); // array16 of 992 nils: fits
        d.feed(&[0xc0; 991]);
        assert_eq!(d.next_frame(), Ok(None));
        d.feed(&[0xc0, 0xc0]);
        assert_eq!(d.next_frame().map(|f| f.map(|f| f.len())), Ok(Some(995)));
        assert_eq!(d.buffered(), 1);
        // array16 of 998 nils cannot fit: refused from its header on.
        let mut d = FrameDecoder::with_limit(1000);
        d.feed(&HANDSHAKE);
        d.feed(&[0xdc, 0x03, 0xe6]);
        assert!(matches!(d.next_frame(), Err(FrameError::TooLarge { .. })));
        // 200 arrays of 4 nils: refused while it grows past the limit.
        let mut d = FrameDecoder::with_limit(1000);
        d.feed(&HANDSHAKE);
        d.feed(&[0xdc, 0x00, 0xc8]);
        let mut refused = false;
        for _ in 0..200 {
            d.feed(&[0x94, 0xc0, 0xc0, 0xc0, 0xc0]);
            match d.next_frame() {
                Ok(None) => assert!(d.buffered() <= 1000),
                Err(FrameError::TooLarge { .. }) => {
                    refused = true;
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(refused);
    }

    #[test]
    fn too_deep_is_malformed() {
        let mut d = FrameDecoder::after_handshake();
        d.feed(&[0x91; MAX_DEPTH + 2]);
        assert!(matches!(d.next_frame(), Err(FrameError::Malformed { .. })));
        let mut d = FrameDecoder::after_handshake();
        d.feed(&[0x93, 0xc1]);
        assert!(matches!(d.next_frame(), Err(FrameError::Malformed { .. })));
    }
}
