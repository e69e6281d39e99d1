//! The value types of NEO's packets: the five enums (msgpack ext types),
//! node ids and their namespaces, addresses, node and cell tuples, SHA-1
//! checksums, and the protocol constants.
//!
//! Enums travel as `fixext1`: `d4 TYPE VALUE`, e.g. `NodeType::Storage` is
//! `d4 04 01`. The ext payload is the msgpack int of the item.
//!
//! | enum (NEO name)          | ext type |
//! |--------------------------|----------|
//! | [`CellState`] (CellStates)     | 0 |
//! | [`ClusterState`] (ClusterStates) | 1 |
//! | [`ErrorCode`] (ErrorCodes)     | 2 |
//! | [`NodeState`] (NodeStates)     | 3 |
//! | [`NodeType`] (NodeTypes)       | 4 |

use std::fmt;

use bytes::Bytes;
use fsformat::{Oid, Tid};

use crate::codec::{Decode, DecodeError, DecodeErrorKind, Encode, Reader, Writer};

/// Protocol version spoken by this crate.
pub const PROTOCOL_VERSION: u8 = 5;
/// Answers have this bit set in their code; `Error` is exactly this.
pub const RESPONSE_MASK: u16 = 0x8000;
/// The smallest tid.
pub const ZERO_TID: Tid = Tid(0);
/// The smallest oid.
pub const ZERO_OID: Oid = Oid(0);
/// The greatest valid tid (SQLite integers are signed 64-bit).
pub const MAX_TID: Tid = Tid(0x7fff_ffff_ffff_ffff);
/// "No tid": all bits set.
pub const INVALID_TID: Tid = Tid(u64::MAX);
/// "No oid": all bits set.
pub const INVALID_OID: Oid = Oid(u64::MAX);
/// "All partitions" in AskTIDs.
pub const INVALID_PARTITION: u32 = 0xffff_ffff;
/// NEO's msgpack unpacker buffer: frames (and buffered input) above this
/// size are refused.
pub const UNPACK_BUFFER_SIZE: usize = 0x400_0000;

macro_rules! neo_enum {
    ($(#[$m:meta])* $name:ident ($neo:literal, ext $ext:literal) { $($item:ident = $v:literal $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum $name {
            $(#[doc = $s] $item = $v),*
        }

        impl $name {
            /// NEO's name of the enum.
            pub const NEO_NAME: &'static str = $neo;
            /// Its msgpack ext type.
            pub const EXT_TYPE: i8 = $ext;
            /// Every item, in value order.
            pub const ALL: &'static [$name] = &[$($name::$item),*];

            /// The item of this value.
            pub fn from_value(v: u8) -> Option<Self> {
                match v {
                    $($v => Some($name::$item),)*
                    _ => None,
                }
            }

            /// The item's number on the wire.
            pub fn value(self) -> u8 {
                self as u8
            }

            /// NEO's name of the item (`UP_TO_DATE`...).
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$item => $s,)*
                }
            }

            /// The item of this NEO name.
            pub fn from_name(s: &str) -> Option<Self> {
                match s {
                    $($s => Some($name::$item),)*
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl Encode for $name {
            fn encode(&self, w: &mut Writer) {
                w.ext($ext, &[self.value()]);
            }
        }

        impl Decode for $name {
            fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                let start = r.offset();
                let (ty, data) = r.ext()?;
                let value = decode_ext_int(&data);
                match value.and_then(|v| u8::try_from(v).ok()).and_then(Self::from_value) {
                    Some(item) if ty == $ext => Ok(item),
                    _ => Err(DecodeError {
                        offset: start,
                        kind: DecodeErrorKind::BadEnum { expected: $neo, ext_type: ty, value },
                    }),
                }
            }
        }
    };
}

/// The payload of an enum ext: one msgpack int filling it.
fn decode_ext_int(data: &Bytes) -> Option<i64> {
    crate::codec::from_bytes::<i64>(data).ok()
}

neo_enum! {
    /// State of a cell (one replica of a partition).
    CellState ("CellStates", ext 0) {
        OutOfDate = 0 "OUT_OF_DATE",
        UpToDate = 1 "UP_TO_DATE",
        Feeding = 2 "FEEDING",
        Corrupted = 3 "CORRUPTED",
        Discarded = 4 "DISCARDED",
    }
}

neo_enum! {
    /// State of the whole cluster.
    ClusterState ("ClusterStates", ext 1) {
        Recovering = 0 "RECOVERING",
        Verifying = 1 "VERIFYING",
        Running = 2 "RUNNING",
        Stopping = 3 "STOPPING",
        StartingBackup = 4 "STARTING_BACKUP",
        BackingUp = 5 "BACKINGUP",
        StoppingBackup = 6 "STOPPING_BACKUP",
    }
}

neo_enum! {
    /// Codes of the `Error` packet (which carries them as plain ints).
    ErrorCode ("ErrorCodes", ext 2) {
        Ack = 0 "ACK",
        Denied = 1 "DENIED",
        NotReady = 2 "NOT_READY",
        OidNotFound = 3 "OID_NOT_FOUND",
        TidNotFound = 4 "TID_NOT_FOUND",
        OidDoesNotExist = 5 "OID_DOES_NOT_EXIST",
        ProtocolError = 6 "PROTOCOL_ERROR",
        ReplicationError = 7 "REPLICATION_ERROR",
        CheckingError = 8 "CHECKING_ERROR",
        BackendNotImplemented = 9 "BACKEND_NOT_IMPLEMENTED",
        NonReadableCell = 10 "NON_READABLE_CELL",
        ReadOnlyAccess = 11 "READ_ONLY_ACCESS",
        IncompleteTransaction = 12 "INCOMPLETE_TRANSACTION",
        UndoPackError = 13 "UNDO_PACK_ERROR",
    }
}

neo_enum! {
    /// State of a node.
    NodeState ("NodeStates", ext 3) {
        Unknown = 0 "UNKNOWN",
        Down = 1 "DOWN",
        Running = 2 "RUNNING",
        Pending = 3 "PENDING",
    }
}

neo_enum! {
    /// Kind of node.
    NodeType ("NodeTypes", ext 4) {
        Master = 0 "MASTER",
        Storage = 1 "STORAGE",
        Client = 2 "CLIENT",
        Admin = 3 "ADMIN",
    }
}

impl NodeType {
    /// The high byte of this type's node ids (`UUID_NAMESPACES`).
    pub fn uuid_namespace(self) -> i8 {
        match self {
            NodeType::Storage => 0x00,
            NodeType::Master => -0x10,
            NodeType::Client => -0x20,
            NodeType::Admin => -0x30,
        }
    }

    /// The type whose namespace is this high byte.
    pub fn from_uuid_namespace(ns: i8) -> Option<Self> {
        NodeType::ALL
            .iter()
            .copied()
            .find(|t| t.uuid_namespace() == ns)
    }

    /// First letter, as in node id displays (`S`, `M`, `C`, `A`).
    pub fn letter(self) -> char {
        match self {
            NodeType::Master => 'M',
            NodeType::Storage => 'S',
            NodeType::Client => 'C',
            NodeType::Admin => 'A',
        }
    }
}

/// A node id (NEO's `uuid`): a signed 32-bit int whose high byte is the
/// namespace of the node type, the low 24 bits a number from 1. Shown as
/// `S1`, `M1`, `C1`, `A1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub i32);

impl NodeId {
    /// The `n`th id of `node_type` (n < 2^24).
    pub fn new(node_type: NodeType, n: u32) -> NodeId {
        let ns = i32::from(node_type.uuid_namespace()) << 24;
        NodeId(ns.wrapping_add((n & 0xff_ffff) as i32))
    }

    /// The node type given by the namespace, if it is a known one.
    pub fn node_type(self) -> Option<NodeType> {
        NodeType::from_uuid_namespace((self.0 >> 24) as i8)
    }

    /// The number within the namespace.
    pub fn number(self) -> u32 {
        (self.0 & 0xff_ffff) as u32
    }
}

/// `S1`, `M1`, `C2`, `A1` as NEO's `uuid_str`; `0` and ids of an unknown
/// namespace as plain numbers.
impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.node_type() {
            Some(t) if self.0 != 0 => write!(f, "{}{}", t.letter(), self.number()),
            _ => write!(f, "{}", self.0),
        }
    }
}

impl Encode for NodeId {
    fn encode(&self, w: &mut Writer) {
        w.sint(self.0.into());
    }
}
impl Decode for NodeId {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.int("uuid").map(NodeId)
    }
}

/// A SHA-1 digest (NEO's `hash`): bin of exactly 20 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Checksum(pub [u8; 20]);

/// "No data": 20 zero bytes.
pub const ZERO_HASH: Checksum = Checksum([0; 20]);

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Checksum({self})")
    }
}
impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}
impl Encode for Checksum {
    fn encode(&self, w: &mut Writer) {
        w.bin(&self.0);
    }
}
impl Decode for Checksum {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.bin_array::<20>("hash").map(Checksum)
    }
}

crate::wire_struct! {
    /// A network address: `(host bin, port)`.
    pub struct Address {
        /// Host name or IP, as bytes (`b"127.0.0.1"`).
        pub host: Bytes,
        /// TCP port.
        pub port: u16,
    }
}

impl Address {
    /// An address from a host text and a port.
    pub fn new(host: &str, port: u16) -> Address {
        Address {
            host: Bytes::copy_from_slice(host.as_bytes()),
            port,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = String::from_utf8_lossy(&self.host);
        if host.contains(':') {
            write!(f, "[{host}]:{}", self.port)
        } else {
            write!(f, "{host}:{}", self.port)
        }
    }
}

crate::wire_struct! {
    /// A node as NEO describes it: `(NodeTypes, ?addr, ?uuid, NodeStates,
    /// ?float id_timestamp)`.
    pub struct NodeInfo {
        /// Its type.
        pub node_type: NodeType,
        /// Its listening address (nil for clients).
        pub address: Option<Address>,
        /// Its node id.
        pub uuid: Option<NodeId>,
        /// Its state.
        pub state: NodeState,
        /// When the master identified it (nil for masters).
        pub id_timestamp: Option<f64>,
    }
}

crate::wire_struct! {
    /// One replica of a partition: `(uuid, CellStates)`.
    pub struct Cell {
        /// The storage holding it.
        pub uuid: NodeId,
        /// Its state.
        pub state: CellState,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_display_like_neo() {
        assert_eq!(NodeId::new(NodeType::Master, 1).0, -268_435_455);
        assert_eq!(NodeId::new(NodeType::Client, 1).0, -536_870_911);
        assert_eq!(NodeId::new(NodeType::Admin, 1).0, -805_306_367);
        assert_eq!(NodeId::new(NodeType::Storage, 1).0, 1);
        assert_eq!(NodeId(-268_435_455).to_string(), "M1");
        assert_eq!(NodeId(-536_870_910).to_string(), "C2");
        assert_eq!(NodeId(-805_306_367).to_string(), "A1");
        assert_eq!(NodeId(3).to_string(), "S3");
        assert_eq!(NodeId(0).to_string(), "0");
        assert_eq!(NodeId(0x7000_0001).to_string(), "1879048193");
        assert_eq!(NodeId(-268_435_455).node_type(), Some(NodeType::Master));
    }

    #[test]
    fn enums_are_fixext1() {
        assert_eq!(crate::codec::to_vec(&NodeType::Storage), [0xd4, 4, 1]);
        assert_eq!(crate::codec::to_vec(&CellState::Discarded), [0xd4, 0, 4]);
        let wrong = Bytes::from_static(&[0xd4, 3, 1]);
        assert!(crate::codec::from_bytes::<NodeType>(&wrong).is_err());
        let unknown = Bytes::from_static(&[0xd4, 4, 9]);
        assert!(crate::codec::from_bytes::<NodeType>(&unknown).is_err());
        assert_eq!(
            ErrorCode::from_name("PROTOCOL_ERROR"),
            Some(ErrorCode::ProtocolError)
        );
    }
}
