//! Every packet type of NEO protocol 5 as a typed Rust struct, the [`Body`]
//! enum over all of them, and [`Packet`] = id + body, with the frame codec.
//!
//! A frame is the msgpack array `[id, code, args]`: `id` a uint32, `code`
//! the packet type (answers: request code | 0x8000, `Error`: 0x8000), `args`
//! an array holding the struct's fields in order. The table below is the
//! single place that lists the packets: one entry gives the name, the code,
//! the kind and the typed fields (see the crate doc to add one). Field
//! meanings are in `shared/neo-protocol/packets.json` and NEO's protocol.py.

#![allow(missing_docs)] // fields: see packets.json; every struct has a doc.

use std::fmt;

use bytes::Bytes;
use fsformat::{Oid, Tid};

use crate::codec::{Decode, DecodeError, DecodeErrorKind, Encode, Map, Reader, Writer};
use crate::types::{
    Address, Cell, CellState, Checksum, ClusterState, ErrorCode, NodeId, NodeInfo, NodeState,
    NodeType, RESPONSE_MASK, UNPACK_BUFFER_SIZE,
};
use crate::value::Value;

/// A partition table id (NEO's `ptid`).
pub type Ptid = u64;
/// A partition number (NEO's `offset`).
pub type Offset = u32;
/// Object data as sent: `(compression, checksum, data)`.
pub type ObjectData = (u8, Checksum, Bytes);
/// A pack order in a commit: `(oids of a partial pack or nil, pack tid)`.
pub type PackOrder = (Option<Vec<Oid>>, Tid);

/// What a packet type is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketKind {
    /// Expects an answer (its code | 0x8000) or an `Error`.
    Request,
    /// Answers a request, with the request's id.
    Answer,
    /// Expects nothing back.
    Notification,
    /// The `Error` packet (0x8000): answers any request.
    Error,
}

/// A packet type's argument struct.
pub trait PacketBody: Encode + Decode + Into<Body> {
    /// Its code on the wire.
    const CODE: u16;
    /// NEO's class name.
    const NAME: &'static str;
    /// Request, answer, notification or error.
    const KIND: PacketKind;
}

/// Static facts about one packet type, for tables and checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketType {
    /// Code on the wire.
    pub code: u16,
    /// NEO's class name.
    pub name: &'static str,
    /// Request, answer, notification or error.
    pub kind: PacketKind,
    /// Number of arguments.
    pub arity: usize,
}

impl PacketType {
    /// The type of this code, if NEO has one.
    pub fn from_code(code: u16) -> Option<PacketType> {
        PACKET_TYPES.iter().copied().find(|t| t.code == code)
    }

    /// The type of this name.
    pub fn from_name(name: &str) -> Option<PacketType> {
        PACKET_TYPES.iter().copied().find(|t| t.name == name)
    }

    /// For a request, the code of its answer: `code | 0x8000`, or 0x8000
    /// (`Error`) for the requests that NEO answers with an Error (ACK).
    pub fn answer_code(self) -> Option<u16> {
        if self.kind != PacketKind::Request {
            return None;
        }
        let answer = self.code | RESPONSE_MASK;
        Some(if Self::from_code(answer).is_some() {
            answer
        } else {
            RESPONSE_MASK
        })
    }
}

macro_rules! packets {
    ($(
        $(#[$m:meta])*
        $name:ident = $code:literal, $kind:ident { $($f:ident : $t:ty),* $(,)? }
    )*) => {
        $(
            crate::wire_struct! {
                $(#[$m])*
                pub struct $name { $(pub $f: $t),* }
            }

            impl PacketBody for $name {
                const CODE: u16 = $code;
                const NAME: &'static str = stringify!($name);
                const KIND: PacketKind = PacketKind::$kind;
            }

            impl From<$name> for Body {
                fn from(p: $name) -> Body {
                    Body::$name(p)
                }
            }
        )*

        /// The arguments of any packet, by type.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Body {
            $($(#[$m])* $name($name),)*
            /// Answers any request (code 0x8000).
            Error(Error),
        }

        impl Body {
            /// Code on the wire.
            pub fn code(&self) -> u16 {
                match self {
                    $(Body::$name(_) => $code,)*
                    Body::Error(_) => Error::CODE,
                }
            }

            /// NEO's class name.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Body::$name(_) => stringify!($name),)*
                    Body::Error(_) => Error::NAME,
                }
            }

            /// Request, answer, notification or error.
            pub fn kind(&self) -> PacketKind {
                match self {
                    $(Body::$name(_) => PacketKind::$kind,)*
                    Body::Error(_) => PacketKind::Error,
                }
            }

            /// Writes the argument array.
            pub fn encode_args(&self, w: &mut Writer) {
                match self {
                    $(Body::$name(p) => p.encode(w),)*
                    Body::Error(p) => p.encode(w),
                }
            }

            /// Reads the argument array of the packet type `code`; `None` if
            /// NEO has no such type.
            pub fn decode_args(code: u16, r: &mut Reader<'_>) -> Option<Result<Body, DecodeError>> {
                Some(match code {
                    $($code => $name::decode(r).map(Body::$name),)*
                    RESPONSE_MASK => Error::decode(r).map(Body::Error),
                    _ => return None,
                })
            }
        }

        /// All packet types, in code order of NEO's registry.
        pub const PACKET_TYPES: &[PacketType] = &[
            $(PacketType {
                code: $code,
                name: stringify!($name),
                kind: PacketKind::$kind,
                arity: $name::ARITY,
            },)*
            PacketType { code: RESPONSE_MASK, name: "Error", kind: PacketKind::Error, arity: 2 },
        ];
    };
}

packets! {
    /// First packet of every connection (but neoctl's): who is connecting.
    RequestIdentification = 0x0001, Request {
        node_type: NodeType, uuid: Option<NodeId>, address: Option<Address>, name: Bytes,
        id_timestamp: Option<f64>, extra: Map<Bytes, Value>,
    }
    /// Empty request used as network barrier.
    Ping = 0x0002, Request {}
    /// The peer may close the connection if it has finished with us.
    CloseClient = 0x0003, Notification {}
    /// Ask the node id of the primary master.
    AskPrimary = 0x0004, Request {}
    /// Sent by a secondary master instead of AcceptIdentification.
    NotPrimaryMaster = 0x0005, Notification { primary: Option<u32>, known_master_list: Vec<Address> }
    /// Nodes appeared, changed state or went away.
    NotifyNodeInformation = 0x0006, Notification { timestamp: f64, node_list: Vec<NodeInfo> }
    /// Ask the storage's partition table id, backup and truncate tids.
    AskRecovery = 0x0007, Request {}
    /// Ask the last tid and oid.
    AskLastIDs = 0x0008, Request {}
    /// Ask the full partition table.
    AskPartitionTable = 0x0009, Request {}
    /// The full partition table.
    SendPartitionTable = 0x000a, Notification { ptid: Option<Ptid>, num_replicas: u32, row_list: Vec<Vec<Cell>> }
    /// Changed cells of the partition table.
    NotifyPartitionChanges = 0x000b, Notification { ptid: Ptid, num_replicas: u32, cell_list: Vec<(Offset, NodeId, CellState)> }
    /// Leave initialization.
    StartOperation = 0x000c, Notification { backup: bool }
    /// The cluster is no longer operational.
    StopOperation = 0x000d, Notification {}
    /// Ask transactions still being committed, before replicating.
    AskUnfinishedTransactions = 0x000e, Request { offset_list: Vec<Offset> }
    /// Ask the locked transactions (verification).
    AskLockedTransactions = 0x000f, Request {}
    /// Ask the final tid of a transaction.
    AskFinalTID = 0x0010, Request { ttid: Tid }
    /// Commit a locked transaction (verification).
    ValidateTransaction = 0x0011, Notification { ttid: Tid, tid: Tid }
    /// tpc_begin.
    AskBeginTransaction = 0x0012, Request { tid: Option<Tid> }
    /// The vote failed on some storages (answered by Error).
    FailedVote = 0x0013, Request { ttid: Tid, failed: Vec<NodeId> }
    /// tpc_finish.
    AskFinishTransaction = 0x0014, Request {
        ttid: Tid, oid_list: Vec<Oid>, deleted: Vec<Offset>, checked: Vec<Offset>, pack: Option<PackOrder>,
    }
    /// Make the voted transaction durable under tid.
    AskLockInformation = 0x0015, Request { ttid: Tid, tid: Tid, pack: bool }
    /// Objects modified by a committed transaction.
    InvalidateObjects = 0x0016, Notification { tid: Tid, oid_list: Vec<Oid> }
    /// Partitions modified by a committed transaction (backup).
    InvalidatePartitions = 0x0017, Notification { tid: Tid, partition_list: Vec<Offset> }
    /// The data of a transaction becomes readable.
    NotifyUnlockInformation = 0x0018, Notification { ttid: Tid }
    /// Ask new oids.
    AskNewOIDs = 0x0019, Request { num_oids: u32 }
    /// Deadlock avoidance: the younger transaction must relock.
    NotifyDeadlock = 0x001a, Notification { ttid: Tid, oid: Oid }
    /// Relock an object after NotifyDeadlock.
    AskRelockObject = 0x001b, Request { ttid: Tid, oid: Oid }
    /// Store one object revision.
    AskStoreObject = 0x001c, Request {
        oid: Oid, serial: Tid, compression: u8, checksum: Checksum, data: Bytes,
        data_serial: Option<Tid>, ttid: Tid,
    }
    /// tpc_abort.
    AbortTransaction = 0x001d, Notification { ttid: Tid, uuid_list: Vec<NodeId> }
    /// Store transaction metadata (implies the vote).
    AskStoreTransaction = 0x001e, Request {
        ttid: Tid, user: Bytes, description: Bytes, extension: Bytes, oid_list: Vec<Oid>,
        pack: Option<PackOrder>,
    }
    /// Vote on a storage that does not store the metadata.
    AskVoteTransaction = 0x001f, Request { ttid: Tid }
    /// load / loadBefore / loadSerial.
    AskObject = 0x0020, Request { oid: Oid, at: Option<Tid>, before: Option<Tid> }
    /// undoLog.
    AskTIDs = 0x0021, Request { first: u64, last: u64, partition: u32 }
    /// Ask the metadata of a transaction.
    AskTransactionInformation = 0x0022, Request { tid: Tid }
    /// history.
    AskObjectHistory = 0x0023, Request { oid: Oid, first: u64, last: u64 }
    /// Ask (part of) the partition table (neoctl).
    AskPartitionList = 0x0024, Request { min_offset: u32, max_offset: u32, uuid: Option<NodeId> }
    /// Ask the nodes (neoctl).
    AskNodeList = 0x0025, Request { node_type: Option<NodeType> }
    /// Change a node's state (neoctl; answered by Error).
    SetNodeState = 0x0026, Request { uuid: NodeId, state: NodeState }
    /// Add pending storages (neoctl; answered by Error).
    AddPendingNodes = 0x0027, Request { uuid_list: Vec<NodeId> }
    /// Rebalance the partition table (neoctl).
    TweakPartitionTable = 0x0028, Request { dry_run: bool, uuid_list: Vec<NodeId> }
    /// Set the number of replicas (neoctl; answered by Error).
    SetNumReplicas = 0x0029, Request { num_replicas: u32 }
    /// Set the cluster state (neoctl; answered by Error).
    SetClusterState = 0x002a, Request { state: ClusterState }
    /// Prune orphan data (neoctl; answered by Error).
    Repair = 0x002b, Request { uuid_list: Vec<NodeId>, dry_run: bool }
    /// Prune orphan data (master to storage).
    NotifyRepair = 0x002c, Notification { dry_run: bool }
    /// The cluster state changed.
    NotifyClusterInformation = 0x002d, Notification { state: ClusterState }
    /// Ask the cluster state.
    AskClusterState = 0x002e, Request {}
    /// undo: ask the serials to undo to.
    AskObjectUndoSerial = 0x002f, Request { ttid: Tid, ltid: Tid, undone_tid: Tid, oid_list: Vec<Oid> }
    /// Iterator: ask tids from min_tid.
    AskTIDsFrom = 0x0030, Request { min_tid: Tid, max_tid: Tid, length: u32, partition: Offset }
    /// Ask existing oids of a partition.
    AskOIDsFrom = 0x0031, Request { partition: Offset, length: u32, min_oid: Oid, tid: Tid }
    /// Wait for a pack to complete.
    WaitForPack = 0x0032, Request { tid: Tid }
    /// Ask pack orders.
    AskPackOrders = 0x0033, Request { pack_id: Tid }
    /// Approved and rejected pack orders.
    NotifyPackSigned = 0x0034, Notification { approved: Vec<Tid>, rejected: Vec<Tid> }
    /// A storage completed a pack.
    NotifyPackCompleted = 0x0035, Notification { pack_id: Tid }
    /// Check replicas (neoctl; answered by Error).
    CheckReplicas = 0x0036, Request { partition_dict: Map<Offset, Option<NodeId>>, min_tid: Tid, max_tid: Option<Tid> }
    /// Compare a partition with other replicas.
    CheckPartition = 0x0037, Notification { partition: Offset, source: (Bytes, Option<Address>), min_tid: Tid, max_tid: Tid }
    /// Checksum of a tid range.
    AskCheckTIDRange = 0x0038, Request { partition: Offset, length: u32, min_tid: Tid, max_tid: Tid }
    /// Checksum of a serial range.
    AskCheckSerialRange = 0x0039, Request { partition: Offset, length: u32, min_tid: Tid, max_tid: Tid, min_oid: Oid }
    /// Cells whose data differ.
    NotifyPartitionCorrupted = 0x003a, Notification { partition: Offset, cell_list: Vec<NodeId> }
    /// The storage is ready (after StartOperation).
    NotifyReady = 0x003b, Notification {}
    /// Ask the last committed tid.
    AskLastTransaction = 0x003c, Request {}
    /// readCurrent.
    AskCheckCurrentSerial = 0x003d, Request { ttid: Tid, oid: Oid, serial: Tid }
    /// A transaction waited for is finished.
    NotifyTransactionFinished = 0x003e, Notification { ttid: Tid, max_tid: Tid }
    /// Replicate (backup mode).
    Replicate = 0x003f, Notification { tid: Tid, upstream_name: Bytes, source_dict: Map<Offset, Option<Address>> }
    /// A partition is replicated up to tid.
    NotifyReplicationDone = 0x0040, Notification { offset: Offset, tid: Tid }
    /// Replication: fetch transactions.
    AskFetchTransactions = 0x0041, Request {
        partition: Offset, length: u32, min_tid: Tid, max_tid: Tid, tid_list: Vec<Tid>, ask_pack_info: bool,
    }
    /// Replication: fetch objects.
    AskFetchObjects = 0x0042, Request {
        partition: Offset, length: u32, min_tid: Tid, max_tid: Tid, min_oid: Oid, object_dict: Map<Tid, Vec<Oid>>,
    }
    /// Replication: one transaction (with the id of AskFetchTransactions).
    AddTransaction = 0x0043, Notification {
        tid: Tid, user: Bytes, description: Bytes, extension: Bytes, packed: bool, ttid: Tid,
        oid_list: Vec<Oid>, pack: Option<(Option<bool>, bool, Option<Vec<Oid>>, Tid)>,
    }
    /// Replication: one object revision (with the id of AskFetchObjects).
    AddObject = 0x0044, Notification {
        oid: Oid, serial: Tid, compression: u8, checksum: Checksum, data: Bytes, data_serial: Option<Tid>,
    }
    /// Truncate the database after tid.
    Truncate = 0x0045, Request { tid: Tid }
    /// Flush logs.
    FlushLog = 0x0046, Notification {}
    /// Ask the cluster summary (neoctl).
    AskMonitorInformation = 0x0047, Request {}
    /// Changed monitor fields (backup admin to upstream admin).
    NotifyMonitorInformation = 0x0048, Notification { info: Map<Bytes, Value> }
    /// The upstream admin (backup).
    NotifyUpstreamAdmin = 0x0049, Notification { address: Address }

    /// Answer to RequestIdentification.
    AcceptIdentification = 0x8001, Answer { node_type: NodeType, uuid: Option<NodeId>, your_uuid: Option<NodeId> }
    /// Answer to Ping.
    Pong = 0x8002, Answer {}
    /// Answer to AskPrimary.
    AnswerPrimary = 0x8004, Answer { primary_uuid: NodeId }
    /// Answer to AskRecovery.
    AnswerRecovery = 0x8007, Answer { ptid: Option<Ptid>, backup_tid: Option<Tid>, truncate_tid: Option<Tid> }
    /// Answer to AskLastIDs.
    AnswerLastIDs = 0x8008, Answer { last_tid: Option<Tid>, last_oid: Option<Oid>, first_tid: Option<Tid> }
    /// Answer to AskPartitionTable.
    AnswerPartitionTable = 0x8009, Answer { ptid: Option<Ptid>, num_replicas: u32, row_list: Vec<Vec<Cell>> }
    /// Answer to AskUnfinishedTransactions.
    AnswerUnfinishedTransactions = 0x800e, Answer { max_tid: Tid, ttid_list: Vec<Tid> }
    /// Answer to AskLockedTransactions.
    AnswerLockedTransactions = 0x800f, Answer { tid_dict: Map<Tid, Option<Tid>> }
    /// Answer to AskFinalTID.
    AnswerFinalTID = 0x8010, Answer { tid: Option<Tid> }
    /// Answer to AskBeginTransaction.
    AnswerBeginTransaction = 0x8012, Answer { ttid: Tid }
    /// Answer to AskFinishTransaction.
    AnswerTransactionFinished = 0x8014, Answer { ttid: Tid, tid: Tid }
    /// Answer to AskLockInformation.
    AnswerInformationLocked = 0x8015, Answer { ttid: Tid }
    /// Answer to AskNewOIDs.
    AnswerNewOIDs = 0x8019, Answer { oid_list: Vec<Oid> }
    /// Answer to AskRelockObject: nil, or (serial, conflicting tid, data).
    AnswerRelockObject = 0x801b, Answer { conflict: Option<(Tid, Tid, Option<ObjectData>)> }
    /// Answer to AskStoreObject: nil, ZERO_TID (lockless) or a conflict.
    AnswerStoreObject = 0x801c, Answer { conflict: Option<Tid> }
    /// Answer to AskStoreTransaction.
    AnswerStoreTransaction = 0x801e, Answer {}
    /// Answer to AskVoteTransaction.
    AnswerVoteTransaction = 0x801f, Answer {}
    /// Answer to AskObject.
    AnswerObject = 0x8020, Answer {
        oid: Oid, serial: Tid, next_serial: Option<Tid>, compression: u8, checksum: Checksum,
        data: Bytes, data_serial: Option<Tid>,
    }
    /// Answer to AskTIDs.
    AnswerTIDs = 0x8021, Answer { tid_list: Vec<Tid> }
    /// Answer to AskTransactionInformation.
    AnswerTransactionInformation = 0x8022, Answer {
        tid: Tid, user: Bytes, description: Bytes, extension: Bytes, packed: bool, oid_list: Vec<Oid>,
    }
    /// Answer to AskObjectHistory: (serial, data size) pairs.
    AnswerObjectHistory = 0x8023, Answer { oid: Oid, history_list: Vec<(Tid, u64)> }
    /// Answer to AskPartitionList.
    AnswerPartitionList = 0x8024, Answer { ptid: Option<Ptid>, num_replicas: u32, row_list: Vec<Vec<Cell>> }
    /// Answer to AskNodeList.
    AnswerNodeList = 0x8025, Answer { node_list: Vec<NodeInfo> }
    /// Answer to TweakPartitionTable.
    AnswerTweakPartitionTable = 0x8028, Answer { changed: bool, row_list: Vec<Vec<Cell>> }
    /// Answer to AskClusterState.
    AnswerClusterState = 0x802e, Answer { state: ClusterState }
    /// Answer to AskObjectUndoSerial.
    AnswerObjectUndoSerial = 0x802f, Answer { object_tid_dict: Map<Oid, (Tid, Option<Tid>, bool)> }
    /// Answer to AskTIDsFrom.
    AnswerTIDsFrom = 0x8030, Answer { tid_list: Vec<Tid> }
    /// Answer to AskOIDsFrom.
    AnswerOIDsFrom = 0x8031, Answer { next_oid: Option<Oid>, oid_list: Vec<Oid> }
    /// Answer to WaitForPack.
    WaitedForPack = 0x8032, Answer {}
    /// Answer to AskPackOrders: (id, approved, partial, oids, pack tid).
    AnswerPackOrders = 0x8033, Answer { pack_list: Vec<(Tid, Option<bool>, bool, Option<Value>, Tid)> }
    /// Answer to AskCheckTIDRange.
    AnswerCheckTIDRange = 0x8038, Answer { count: u64, checksum: Checksum, max_tid: Tid }
    /// Answer to AskCheckSerialRange (tids first, unlike NEO's docstring).
    AnswerCheckSerialRange = 0x8039, Answer {
        count: u64, tid_checksum: Checksum, max_tid: Tid, oid_checksum: Checksum, max_oid: Oid,
    }
    /// Answer to AskLastTransaction.
    AnswerLastTransaction = 0x803c, Answer { tid: Tid }
    /// Answer to AskCheckCurrentSerial.
    AnswerCheckCurrentSerial = 0x803d, Answer { conflict: Option<Tid> }
    /// Answer to AskFetchTransactions.
    AnswerFetchTransactions = 0x8041, Answer { next_tid: Option<Tid>, tid_list: Vec<Tid>, completed_pack: Option<Tid> }
    /// Answer to AskFetchObjects.
    AnswerFetchObjects = 0x8042, Answer { next_tid: Option<Tid>, next_oid: Option<Oid>, object_dict: Map<Tid, Vec<Oid>> }
    /// Answer to AskMonitorInformation.
    AnswerMonitorInformation = 0x8047, Answer { warning: Vec<Option<Bytes>>, problem: Vec<Option<Bytes>>, summary: Bytes }
}

/// The `Error` packet: `[code, message]`, the code a **plain int** (not
/// an ext like other enums). Answers any request; `ACK` is the success
/// answer of the requests that expect no other answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    /// What happened.
    pub code: ErrorCode,
    /// UTF-8 text, may be empty.
    pub message: Bytes,
}

impl Error {
    /// An error with a text message.
    pub fn new(code: ErrorCode, message: &str) -> Error {
        Error {
            code,
            message: Bytes::copy_from_slice(message.as_bytes()),
        }
    }
}

impl PacketBody for Error {
    const CODE: u16 = RESPONSE_MASK;
    const NAME: &'static str = "Error";
    const KIND: PacketKind = PacketKind::Error;
}

impl From<Error> for Body {
    fn from(p: Error) -> Body {
        Body::Error(p)
    }
}

impl Encode for Error {
    fn encode(&self, w: &mut Writer) {
        w.array_len(2);
        w.uint(self.code.value().into());
        w.bin(&self.message);
    }
}

impl Decode for Error {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.fixed_array(2, "Error")?;
        let at = r.offset();
        let raw: u64 = r.int("error code")?;
        let code = u8::try_from(raw)
            .ok()
            .and_then(ErrorCode::from_value)
            .ok_or(DecodeError {
                offset: at,
                kind: DecodeErrorKind::UnknownErrorCode(raw),
            })?;
        Ok(Error {
            code,
            message: r.bin()?,
        })
    }
}

/// Why a complete frame is no valid packet. NEO logs such a frame as
/// malformed and closes the connection.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PacketError {
    /// Not the array `[id (uint32), code, args]`.
    NotAPacket(DecodeError),
    /// A code NEO does not know.
    UnknownCode {
        /// The packet id.
        id: u32,
        /// The code as found (any msgpack value).
        code: Value,
    },
    /// The arguments do not match the packet type's layout.
    BadArgs {
        /// The packet id.
        id: u32,
        /// The packet code.
        code: u16,
        /// The packet type's name.
        name: &'static str,
        /// What went wrong where.
        error: DecodeError,
    },
}

impl PacketError {
    /// The packet id, when it could be read.
    pub fn id(&self) -> Option<u32> {
        match self {
            PacketError::NotAPacket(_) => None,
            PacketError::UnknownCode { id, .. } | PacketError::BadArgs { id, .. } => Some(*id),
        }
    }
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PacketError::NotAPacket(e) => write!(f, "not a NEO packet: {e}"),
            PacketError::UnknownCode { id, code } => {
                write!(f, "unknown packet type {code:?} (id {id})")
            }
            PacketError::BadArgs {
                id,
                code,
                name,
                error,
            } => write!(f, "malformed {name} (0x{code:04x}, id {id}): {error}"),
        }
    }
}

impl std::error::Error for PacketError {}

/// A frame too big for NEO's 64 MiB unpack buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameTooLarge {
    /// Size of the encoded frame.
    pub size: usize,
}

impl fmt::Display for FrameTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "frame of {} bytes exceeds NEO's limit of {UNPACK_BUFFER_SIZE}",
            self.size
        )
    }
}

impl std::error::Error for FrameTooLarge {}

/// One packet: its id and its typed arguments (the code follows from the
/// body: [`Packet::code`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    /// Request id (an answer carries its request's id).
    pub id: u32,
    /// Typed arguments.
    pub body: Body,
}

/// As NEO logs packets: `AskObject[12]`.
impl fmt::Display for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.body.name(), self.id)
    }
}

impl Packet {
    /// A packet with this id.
    pub fn new(id: u32, body: impl Into<Body>) -> Packet {
        Packet {
            id,
            body: body.into(),
        }
    }

    /// Code on the wire.
    pub fn code(&self) -> u16 {
        self.body.code()
    }

    /// Writes the frame `[id, code, args]`.
    pub fn encode_into(&self, w: &mut Writer) {
        w.array_len(3);
        w.uint(self.id.into());
        w.uint(self.code().into());
        self.body.encode_args(w);
    }

    /// The frame's bytes, refused above NEO's 64 MiB limit (the peer could
    /// not read it).
    pub fn encode(&self) -> Result<Vec<u8>, FrameTooLarge> {
        let mut w = Writer::new();
        self.encode_after(&mut w)?;
        Ok(w.into_vec())
    }

    /// Encodes this packet's frame after what `w` holds (several frames in
    /// one buffer, for one write).
    pub fn encode_after(&self, w: &mut Writer) -> Result<(), FrameTooLarge> {
        let start = w.len();
        self.encode_into(w);
        match w.len() - start {
            size if size > UNPACK_BUFFER_SIZE => Err(FrameTooLarge { size }),
            _ => Ok(()),
        }
    }

    /// Decodes one complete frame (bin fields are slices of `frame`).
    pub fn decode(frame: &Bytes) -> Result<Packet, PacketError> {
        let mut r = Reader::new(frame);
        r.fixed_array(3, "packet")
            .map_err(PacketError::NotAPacket)?;
        let id: u32 = r.int("packet id").map_err(PacketError::NotAPacket)?;
        let code_value = Value::decode(&mut r).map_err(PacketError::NotAPacket)?;
        let code = match code_value {
            Value::UInt(c) => u16::try_from(c).ok(),
            _ => None,
        };
        let unknown = || PacketError::UnknownCode {
            id,
            code: code_value.clone(),
        };
        let code = code.ok_or_else(unknown)?;
        let body = Body::decode_args(code, &mut r)
            .ok_or_else(unknown)?
            .and_then(|b| r.finish().map(|()| b))
            .map_err(|error| PacketError::BadArgs {
                id,
                code,
                name: PacketType::from_code(code).map_or("?", |t| t.name),
                error,
            })?;
        Ok(Packet { id, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        assert_eq!(PACKET_TYPES.len(), 111);
        for t in PACKET_TYPES {
            assert_eq!(PacketType::from_code(t.code), Some(*t), "{}", t.name);
            assert_eq!(
                t.kind == PacketKind::Answer,
                t.code & RESPONSE_MASK != 0 && t.code != RESPONSE_MASK
            );
            if t.kind == PacketKind::Answer {
                let req = PacketType::from_code(t.code & !RESPONSE_MASK).expect(t.name);
                assert_eq!(req.kind, PacketKind::Request);
                assert_eq!(req.answer_code(), Some(t.code));
            }
        }
        assert_eq!(
            PacketType::from_name("SetClusterState").and_then(|t| t.answer_code()),
            Some(0x8000)
        );
    }

    #[test]
    fn error_code_is_a_plain_int() {
        let p = Packet::new(7, Error::new(ErrorCode::OidDoesNotExist, "x"));
        let bytes = p.encode().expect("small");
        assert_eq!(bytes, [0x93, 7, 0xcd, 0x80, 0x00, 0x92, 5, 0xc4, 1, b'x']);
        assert_eq!(Packet::decode(&Bytes::from(bytes)), Ok(p.clone()));
        assert_eq!(p.to_string(), "Error[7]");
    }

    #[test]
    fn unknown_and_malformed_frames_are_typed_errors() {
        let unknown = Bytes::from_static(&[0x93, 1, 0xcd, 0x12, 0x34, 0x90]);
        assert!(matches!(
            Packet::decode(&unknown),
            Err(PacketError::UnknownCode { id: 1, .. })
        ));
        // AskNewOIDs with a bin instead of an int.
        let bad = Bytes::from_static(&[0x93, 2, 0x19, 0x91, 0xc4, 0]);
        let e = Packet::decode(&bad).expect_err("bad args");
        assert_eq!(e.id(), Some(2));
        assert!(
            matches!(
                e,
                PacketError::BadArgs {
                    name: "AskNewOIDs",
                    ..
                }
            ),
            "{e}"
        );
        // AskObject with a 7-byte oid.
        let short = Bytes::from_static(&[
            0x93, 3, 0x20, 0x93, 0xc4, 7, 0, 0, 0, 0, 0, 0, 1, 0xc0, 0xc0,
        ]);
        let e = Packet::decode(&short).expect_err("short oid");
        assert!(
            matches!(
                &e,
                PacketError::BadArgs {
                    error: DecodeError {
                        offset: 4,
                        kind: DecodeErrorKind::BadLength {
                            want: 8,
                            got: 7,
                            ..
                        }
                    },
                    ..
                }
            ),
            "{e}"
        );
        // Wrong arity, trailing bytes.
        let arity = Bytes::from_static(&[0x93, 4, 0x02, 0x91, 0xc0]);
        assert!(matches!(
            Packet::decode(&arity),
            Err(PacketError::BadArgs { name: "Ping", .. })
        ));
        let trailing = Bytes::from_static(&[0x93, 4, 0x02, 0x90, 0xc0]);
        assert!(matches!(
            Packet::decode(&trailing),
            Err(PacketError::BadArgs { .. })
        ));
        let not = Bytes::from_static(&[0x92, 1, 2]);
        assert!(matches!(
            Packet::decode(&not),
            Err(PacketError::NotAPacket(_))
        ));
    }
}
