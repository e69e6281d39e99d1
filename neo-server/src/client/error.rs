//! The errors of the client library: one typed enum, each variant naming
//! the peer, oid or tid it is about.

use std::fmt;

use neo_proto::{ConnError, ErrorCode, Oid, Tid};

/// What can go wrong in a client operation.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ClientError {
    /// A connection failed or broke.
    Conn(ConnError),
    /// A node refused us (wrong cluster name, not ready, ...) with NEO's
    /// `Error` packet.
    Refused {
        /// The node's address.
        peer: String,
        /// Its error code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// No master could be reached before the deadline.
    NoMaster {
        /// The last reason seen.
        last: String,
    },
    /// The cluster did not become operational before the deadline.
    NotOperational {
        /// The cluster state last seen, if any.
        state: Option<neo_proto::ClusterState>,
    },
    /// A peer answered with a packet of an unexpected type.
    Unexpected {
        /// The peer.
        peer: String,
        /// What we asked.
        asked: &'static str,
        /// What came back.
        got: &'static str,
    },
    /// A peer answered a request with an `Error`.
    Remote {
        /// The peer.
        peer: String,
        /// What we asked.
        asked: &'static str,
        /// Its error code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// The object does not exist (ZODB's POSKeyError).
    OidDoesNotExist(Oid),
    /// The object exists but has no revision matching the request.
    NotFound {
        /// The object.
        oid: Oid,
        /// The serial or bound asked.
        tid: Option<Tid>,
    },
    /// The object's creation was undone: it has no data at this revision.
    CreationUndone {
        /// The object.
        oid: Oid,
        /// The revision without data.
        serial: Tid,
    },
    /// The SHA-1 of loaded data does not match its checksum.
    WrongChecksum {
        /// The object.
        oid: Oid,
        /// Its revision.
        serial: Tid,
        /// Who sent it.
        peer: String,
    },
    /// Loaded data could not be decompressed.
    BadData {
        /// The object.
        oid: Oid,
        /// Its revision.
        serial: Tid,
        /// Why.
        reason: String,
    },
    /// A write conflict: `oid` was committed at `committed` after the
    /// revision `base` our store was based on (ZODB's ConflictError with
    /// `serials = (committed, base)`).
    Conflict {
        /// The object.
        oid: Oid,
        /// The revision committed meanwhile.
        committed: Tid,
        /// The revision our change was based on.
        base: Tid,
    },
    /// No running storage serves this partition.
    NoStorage {
        /// The partition.
        partition: u32,
    },
    /// The transaction cannot be undone.
    Undo {
        /// The transaction being undone.
        tid: Tid,
        /// Why.
        reason: String,
    },
    /// The transaction is in the wrong phase for this call.
    Phase(&'static str),
    /// The client is read-only.
    ReadOnly,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Conn(e) => write!(f, "{e}"),
            ClientError::Refused {
                peer,
                code,
                message,
            } => write!(f, "{peer} refused us: {code}: {message}"),
            ClientError::NoMaster { last } => write!(f, "no primary master reachable: {last}"),
            ClientError::NotOperational { state } => match state {
                Some(s) => write!(f, "cluster not operational (state {s})"),
                None => write!(f, "cluster not operational"),
            },
            ClientError::Unexpected { peer, asked, got } => {
                write!(f, "{peer} answered {asked} with {got}")
            }
            ClientError::Remote {
                peer,
                asked,
                code,
                message,
            } => write!(f, "{peer} answered {asked} with {code}: {message}"),
            ClientError::OidDoesNotExist(oid) => write!(f, "oid {oid} does not exist"),
            ClientError::NotFound { oid, tid } => match tid {
                Some(t) => write!(f, "no revision of oid {oid} for {t}"),
                None => write!(f, "no revision of oid {oid}"),
            },
            ClientError::CreationUndone { oid, serial } => {
                write!(f, "creation of oid {oid} undone at {serial}")
            }
            ClientError::WrongChecksum { oid, serial, peer } => {
                write!(f, "wrong checksum from {peer} for {oid}@{serial}")
            }
            ClientError::BadData {
                oid,
                serial,
                reason,
            } => write!(f, "bad data for {oid}@{serial}: {reason}"),
            ClientError::Conflict {
                oid,
                committed,
                base,
            } => write!(
                f,
                "conflict on oid {oid}: committed {committed}, our base {base}"
            ),
            ClientError::NoStorage { partition } => {
                write!(f, "no storage available for partition {partition}")
            }
            ClientError::Undo { tid, reason } => write!(f, "cannot undo {tid}: {reason}"),
            ClientError::Phase(what) => write!(f, "transaction phase: {what}"),
            ClientError::ReadOnly => write!(f, "read-only client"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<ConnError> for ClientError {
    fn from(e: ConnError) -> Self {
        ClientError::Conn(e)
    }
}
