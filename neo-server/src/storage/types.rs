//! Typed values crossing the [`Backend`](super::Backend) trait, and its error.
//!
//! NEO stores oids and tids as SQL integers, which are signed 64-bit in both
//! SQLite and (for the values NEO writes) MySQL: every id must stay below
//! 2^63 (`MAX_TID` is `0x7fff_ffff_ffff_ffff` for that reason). We keep them
//! as `u64` newtypes and refuse, with [`DbError::OutOfRange`], any value that
//! would not fit, instead of letting it wrap.

#![deny(missing_docs)]

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

use fsformat::{Oid, Tid};

/// The id of a row of the `data` table. NEO allocates them per partition of
/// the object: ids of partition `p` start at `p << 48`.
pub type DataId = u64;

/// A SHA-1 digest, as NEO's `makeChecksum` computes it over object data.
pub type Checksum = [u8; 20];

/// The all-zero hash NEO answers for empty ranges (`ZERO_HASH`).
pub const ZERO_HASH: Checksum = [0; 20];

/// The greatest tid NEO accepts (`MAX_TID`): SQLite integers are signed.
pub const MAX_TID: Tid = Tid(i64::MAX as u64);

/// The value of the `version` key of the `config` table NEO writes and
/// checks (`SQLiteDatabaseManager.VERSION` / `MySQLDatabaseManager.VERSION`).
pub const SCHEMA_VERSION: u32 = 4;

/// A storage node id as NEO stores it in `pt.nid` and `config.nid`.
pub type Nid = i32;

/// Cell states with the numbers NEO gives them (`neo.lib.protocol.CellStates`,
/// numbered in declaration order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum CellState {
    /// Write-only: replication is not finished.
    OutOfDate = 0,
    /// Readable and writable.
    UpToDate = 1,
    /// Up to date, to be discarded once another node has replicated it.
    Feeding = 2,
    /// A check found its data differs from other replicas.
    Corrupted = 3,
    /// Only in packets: drop this cell.
    Discarded = 4,
}

impl CellState {
    /// From NEO's number.
    pub fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            0 => CellState::OutOfDate,
            1 => CellState::UpToDate,
            2 => CellState::Feeding,
            3 => CellState::Corrupted,
            4 => CellState::Discarded,
            _ => return None,
        })
    }

    /// Whether objects can be read from a cell in this state
    /// (NEO's `READABLE`).
    pub fn is_readable(self) -> bool {
        matches!(self, CellState::UpToDate | CellState::Feeding)
    }
}

/// One row of the `pt` table, as NEO stores it.
///
/// The `tid` column is overloaded: for an `OUT_OF_DATE` cell of this node it
/// holds the tid up to which the cell is replicated (`>= 0`); for every other
/// cell it holds the negated cell state (`-1` for `UP_TO_DATE`, `0` for an
/// `OUT_OF_DATE` cell of another node).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PtRow {
    /// Partition number (`pt.partition`).
    pub partition: u32,
    /// Storage node id (`pt.nid`).
    pub nid: Nid,
    /// Raw `pt.tid`: replicated tid (>= 0) or negated state.
    pub tid: i64,
    /// Last completed pack id (`pt.pack`), only set for cells of this node.
    pub pack: Option<u64>,
}

impl PtRow {
    /// The cell state, as NEO's `getPartitionTable` derives it
    /// (`max(0, -tid)`).
    pub fn state(&self) -> Option<CellState> {
        CellState::from_code(if self.tid >= 0 { 0 } else { -self.tid })
    }
}

/// One change of the `pt` table (NEO's `_changePartitionTable` cells).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PtChange {
    /// Partition number.
    pub partition: u32,
    /// Storage node id.
    pub nid: Nid,
    /// New raw `pt.tid` (see [`PtRow`]); `None` deletes the cell.
    pub tid: Option<i64>,
    /// `pt.pack` for a newly inserted cell (an update keeps the old one).
    pub pack: Option<u64>,
}

/// What the node knows about partitions: their number and which of them are
/// readable here. Derived from the `pt` table and `config.nid`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionView {
    /// Number of partitions: `1 + MAX(pt.partition)`, 0 if `pt` is empty.
    pub np: u32,
    /// Partitions with a cell of this node that is `UP_TO_DATE` or
    /// `FEEDING`, plus those made temporarily readable for replication.
    pub readable: BTreeSet<u32>,
}

impl PartitionView {
    /// Computes the view from the rows of `pt` and this node's id.
    pub fn from_rows(rows: &[PtRow], nid: Option<Nid>) -> Self {
        let np = rows.iter().map(|r| r.partition + 1).max().unwrap_or(0);
        let readable = rows
            .iter()
            .filter(|r| Some(r.nid) == nid && r.tid < 0)
            .filter(|r| r.state().is_some_and(CellState::is_readable))
            .map(|r| r.partition)
            .collect();
        PartitionView { np, readable }
    }

    /// The partition of an oid or tid: `id % np`.
    pub fn partition(&self, id: u64) -> Result<u32, DbError> {
        if self.np == 0 {
            return Err(DbError::NoPartitionTable);
        }
        // The remainder is below np, which is a u32.
        Ok((id % u64::from(self.np)) as u32)
    }

    /// Like [`partition`](Self::partition), failing with
    /// [`DbError::NonReadableCell`] if this node cannot serve it.
    pub fn readable_partition(&self, id: u64) -> Result<u32, DbError> {
        let p = self.partition(id)?;
        if self.readable.contains(&p) {
            Ok(p)
        } else {
            Err(DbError::NonReadableCell { partition: p })
        }
    }
}

/// One object of a transaction being stored (NEO's `object_list` items).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectRef {
    /// The object.
    pub oid: Oid,
    /// Its data, `None` for a deletion (or undo of a creation).
    pub data_id: Option<DataId>,
    /// For undo: the serial whose data this record reuses (`value_tid`).
    pub value_tid: Option<Tid>,
}

/// Transaction metadata, as stored in `trans`/`ttrans`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnMeta {
    /// Oids modified by the transaction (`oids`, 8 bytes each).
    pub oids: Vec<Oid>,
    /// `user`.
    pub user: Vec<u8>,
    /// `description`.
    pub description: Vec<u8>,
    /// `ext`: the pickled extension dict.
    pub extension: Vec<u8>,
    /// `packed`.
    pub packed: bool,
    /// The temporary tid the transaction was stored under (`ttid`).
    pub ttid: Tid,
}

/// A pack order (a row of `pack`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackOrder {
    /// The pack id: the tid of the transaction that asked for it.
    pub id: Tid,
    /// Not signed yet (`None`), rejected or approved.
    pub approved: Option<bool>,
    /// Whether only some oids are packed.
    pub partial: bool,
    /// Those oids, for a partial pack.
    pub oids: Option<Vec<Oid>>,
    /// Pack everything up to this tid.
    pub pack_tid: Tid,
}

/// What [`Backend::get_transaction`](super::Backend::get_transaction) answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionRecord {
    /// Metadata (with its `ttid`).
    pub meta: TxnMeta,
    /// The pack order this transaction carries, if any (its `id` is the
    /// transaction's tid).
    pub pack: Option<PackOrder>,
}

/// One object revision, as [`Backend::get_object`](super::Backend::get_object) answers it.
///
/// A deletion has `compression`, `checksum` and `data` all `None`. An undo
/// record (backpointer) shares the data of an older revision and tells
/// which one in `data_serial` (`obj.value_tid`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRecord {
    /// The revision's tid.
    pub serial: Tid,
    /// The tid of the next revision, if any.
    pub next_serial: Option<Tid>,
    /// `data.compression` (0 or 1 from NEO's clients).
    pub compression: Option<u8>,
    /// `data.hash`.
    pub checksum: Option<Checksum>,
    /// `data.value`.
    pub data: Option<Vec<u8>>,
    /// `obj.value_tid`.
    pub data_serial: Option<Tid>,
}

/// The three answers of NEO's `getObject`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectLookup {
    /// A record (NEO: the 6-tuple).
    Found(ObjectRecord),
    /// No record at the requested serial, but the oid exists (NEO: `False`,
    /// answered as `OidNotFound`).
    NotFoundAt,
    /// The oid does not exist at all (NEO: `None`, `OidDoesNotExist`).
    DoesNotExist,
}

/// [`Backend::check_tid_range`](super::Backend::check_tid_range)'s answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TidRangeCheck {
    /// Number of transactions found.
    pub count: u64,
    /// SHA-1 of their tids in decimal, joined by `,`; [`ZERO_HASH`] if none.
    pub hash: Checksum,
    /// The greatest tid found, [`Tid::ZERO`] if none.
    pub max_tid: Tid,
}

impl TidRangeCheck {
    /// The check of these tids (in ascending order), as NEO computes it.
    pub fn of(tids: &[Tid]) -> TidRangeCheck {
        match tids.last() {
            None => TidRangeCheck {
                count: 0,
                hash: ZERO_HASH,
                max_tid: Tid::ZERO,
            },
            Some(&last) => TidRangeCheck {
                count: tids.len() as u64,
                hash: hash_decimal_list(tids.iter().map(|t| t.0)),
                max_tid: last,
            },
        }
    }
}

/// [`Backend::check_serial_range`](super::Backend::check_serial_range)'s answer (in NEO's order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SerialRangeCheck {
    /// Number of object records found.
    pub count: u64,
    /// SHA-1 of their serials in decimal, joined by `,`.
    pub tid_hash: Checksum,
    /// Serial of the last record.
    pub max_tid: Tid,
    /// SHA-1 of their oids in decimal, joined by `,`.
    pub oid_hash: Checksum,
    /// Oid of the last record.
    pub max_oid: Oid,
}

/// Which oids of a partition [`Backend::pack_partition`](super::Backend::pack_partition) processes.
#[derive(Clone, Copy, Debug)]
pub enum PackScope<'a> {
    /// At most `limit` oids, from `min_oid` up, in oid order.
    From {
        /// First oid to consider.
        min_oid: Oid,
        /// Maximum number of oids.
        limit: u64,
    },
    /// These oids (a partial pack).
    Oids(&'a [Oid]),
}

/// What [`Backend::drop_partition_step`](super::Backend::drop_partition_step) did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DropStep {
    /// Object records were deleted; their (distinct, non-NULL) data ids,
    /// to prune.
    Objects(Vec<DataId>),
    /// No object was left: this many transactions were deleted (0: the
    /// partition is empty, dropping is done).
    Transactions(u64),
}

/// Where replication of a cell resumes ([`Backend::cell_next_tids`](super::Backend::cell_next_tids)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CellNext {
    /// An `OUT_OF_DATE` cell: replicate from this tid.
    Replicate {
        /// First tid to replicate.
        next_tid: Tid,
    },
    /// A readable cell of a backup cluster: resume transactions and objects
    /// from these tids.
    Backup {
        /// First tid of `trans` to fetch.
        trans: Tid,
        /// First tid of `obj` to check again.
        obj: Tid,
    },
    /// A readable cell of a normal cluster: nothing to replicate.
    Readable,
}

/// What can go wrong in the database layer.
#[derive(Debug)]
#[non_exhaustive]
pub enum DbError {
    /// SQLite failed.
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What we were doing.
        context: &'static str,
        /// SQLite's error.
        error: rusqlite::Error,
    },
    /// MySQL/MariaDB failed.
    Mysql {
        /// The database, as `mysql:[user@]name` (no password).
        database: String,
        /// What we were doing.
        context: &'static str,
        /// The client's error.
        error: mysql::Error,
    },
    /// The MySQL server or its settings cannot hold a NEO database (NEO's
    /// `DatabaseFailure` at connection time), or the connection string is
    /// invalid.
    MysqlSetup {
        /// The database, as `mysql:[user@]name` (no password).
        database: String,
        /// Why.
        reason: String,
    },
    /// The file exists but is not a NEO storage database.
    NotNeoDatabase {
        /// The database file.
        path: PathBuf,
        /// Why we think so.
        reason: String,
    },
    /// The database has a schema version we do not handle.
    UnsupportedVersion {
        /// The database file.
        path: PathBuf,
        /// The `config.version` found (`None` if missing).
        found: Option<String>,
        /// The version we handle.
        expected: u32,
    },
    /// An older database that cannot be upgraded automatically.
    CannotUpgrade {
        /// The database file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another process (Python NEO or us) has this database open.
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// An id does not fit in NEO's signed 64-bit SQL columns.
    OutOfRange {
        /// Which value.
        what: &'static str,
        /// The value.
        value: u64,
    },
    /// A stored value breaks the schema's invariants.
    Corrupted {
        /// What was found.
        what: String,
    },
    /// The partition table is empty, so partitions cannot be computed.
    NoPartitionTable,
    /// The partition of the requested id is not readable on this node.
    NonReadableCell {
        /// The partition.
        partition: u32,
    },
    /// Same checksum and compression as stored data, but different bytes.
    HashCollision {
        /// The stored row.
        data_id: DataId,
    },
    /// Undo refers to a record that a pack removed (NEO's `UndoPackError`).
    UndoPack {
        /// The object.
        oid: Oid,
        /// The serial whose data was asked for.
        data_tid: Tid,
    },
    /// A row with the same key already exists with different content.
    Duplicate {
        /// The table.
        table: &'static str,
        /// The key.
        key: String,
    },
    /// A [`MemoryBackend`](super::MemoryBackend) crash was injected: this
    /// instance is dead, uncommitted work is lost.
    Crashed,
    /// A read-only handle ([`ObjectReader`](super::backend::ObjectReader))
    /// cannot answer this yet; the node's own handle does.
    ReaderUnavailable(&'static str),
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::Sqlite {
                path,
                context,
                error,
            } => write!(f, "{}: {context}: {error}", path.display()),
            DbError::Mysql {
                database,
                context,
                error,
            } => write!(f, "{database}: {context}: {error}"),
            DbError::MysqlSetup { database, reason } => write!(f, "{database}: {reason}"),
            DbError::NotNeoDatabase { path, reason } => write!(
                f,
                "{}: not a NEO storage database: {reason}",
                path.display()
            ),
            DbError::UnsupportedVersion {
                path,
                found,
                expected,
            } => write!(
                f,
                "{}: NEO database schema version {} is not supported \
                 (this program handles version {expected})",
                path.display(),
                found.as_deref().unwrap_or("<missing>")
            ),
            DbError::CannotUpgrade { path, reason } => {
                write!(f, "{}: {reason}", path.display())
            }
            DbError::Locked { path } => write!(
                f,
                "{}: error: database is locked (used by another storage node)",
                path.display()
            ),
            DbError::OutOfRange { what, value } => write!(
                f,
                "{what} {value:#x} does not fit in a signed 64-bit SQL integer"
            ),
            DbError::Corrupted { what } => write!(f, "corrupted database: {what}"),
            DbError::NoPartitionTable => write!(f, "the partition table is empty"),
            DbError::NonReadableCell { partition } => {
                write!(f, "partition {partition} is not readable on this node")
            }
            DbError::HashCollision { data_id } => {
                write!(f, "SHA-1 collision with data row {data_id:#x}")
            }
            DbError::UndoPack { oid, data_tid } => write!(
                f,
                "cannot undo: record {oid}@{data_tid} was removed by a pack"
            ),
            DbError::Duplicate { table, key } => {
                write!(f, "duplicate key {key} in table {table}")
            }
            DbError::Crashed => write!(f, "database crashed (injected)"),
            DbError::ReaderUnavailable(why) => write!(f, "read-only handle unavailable: {why}"),
        }
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DbError::Sqlite { error, .. } => Some(error),
            DbError::Mysql { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Result of the database layer.
pub type DbResult<T> = Result<T, DbError>;

/// A `u64` id as NEO's SQL integer, refusing values of 2^63 and more.
pub fn to_sql(value: u64, what: &'static str) -> DbResult<i64> {
    i64::try_from(value).map_err(|_| DbError::OutOfRange { what, value })
}

/// An SQL integer read back as an id, refusing negative values.
pub fn from_sql(value: i64, what: &'static str) -> DbResult<u64> {
    u64::try_from(value).map_err(|_| DbError::Corrupted {
        what: format!("negative {what}: {value}"),
    })
}

/// Joins oids as NEO's `trans.oids` column holds them.
pub fn join_oids(oids: &[Oid]) -> Vec<u8> {
    oids.iter().flat_map(|o| o.to_bytes()).collect()
}

/// Splits a `trans.oids`/`pack.oids` column (NEO's `splitOIDField`).
pub fn split_oids(tid: u64, blob: &[u8]) -> DbResult<Vec<Oid>> {
    if !blob.chunks_exact(8).remainder().is_empty() {
        return Err(DbError::Corrupted {
            what: format!("invalid oids length for tid {tid:016x}: {}", blob.len()),
        });
    }
    Ok(blob
        .chunks_exact(8)
        .filter_map(Oid::from_slice)
        .collect::<Vec<_>>())
}

/// SHA-1 of decimal numbers joined by `,`, as NEO hashes ranges in
/// `checkTIDRange` and `checkSerialRange`.
pub fn hash_decimal_list(values: impl IntoIterator<Item = u64>) -> Checksum {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    for (i, v) in values.into_iter().enumerate() {
        if i > 0 {
            h.update(b",");
        }
        h.update(v.to_string().as_bytes());
    }
    h.finalize().into()
}

/// SHA-1 of object data (NEO's `makeChecksum`).
pub fn make_checksum(data: &[u8]) -> Checksum {
    use sha1::{Digest, Sha1};
    Sha1::digest(data).into()
}

/// NEO's `checkSerialRange` digest over `(tid, oid)` rows in order.
pub fn serial_range_check(rows: &[(u64, u64)]) -> SerialRangeCheck {
    match rows.last() {
        None => SerialRangeCheck {
            count: 0,
            tid_hash: ZERO_HASH,
            max_tid: Tid::ZERO,
            oid_hash: ZERO_HASH,
            max_oid: Oid::ZERO,
        },
        Some(&(t, o)) => SerialRangeCheck {
            count: rows.len() as u64,
            tid_hash: hash_decimal_list(rows.iter().map(|r| r.0)),
            max_tid: Tid(t),
            oid_hash: hash_decimal_list(rows.iter().map(|r| r.1)),
            max_oid: Oid(o),
        },
    }
}
