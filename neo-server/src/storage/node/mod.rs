//! The storage node role (NEO's `neo/storage/app.py` and `handlers/`), as a
//! sans-IO [`Node`] over a [`Backend`].
//!
//! Life of a storage node, as in NEO:
//! 1. open the database (the cluster name must match the one stored);
//! 2. connect to a master (the next one of `-m` on failure, every second
//!    once all failed), identify as STORAGE with our address and node id
//!    (none the first time: the master gives one, stored in `config.nid`);
//! 3. *initialization* (`handlers/initialization.py`): answer the
//!    recovery and verification questions (partition table, last ids,
//!    locked transactions), store the partition table the master sends,
//!    validate the transactions it says were locked, until
//!    `StartOperation`: then `NotifyReady`, drop unfinished data, and
//!    accept clients;
//! 4. *operation* (`handlers/master.py`, `handlers/client.py`,
//!    `transactions.py`): loads, stores with conflict detection and
//!    write locks, votes, lock (durable before answering) and unlock from
//!    the master, aborts, iteration and undo lookups;
//! 5. `StopOperation` or the loss of the master brings it back to 3 or 2;
//!    being told it is DOWN (or UNKNOWN) makes it exit.
//!
//! Requests that must wait for a lock are queued (NEO's `DelayEvent`) and
//! retried in order whenever a transaction releases its locks.
//!
//! Served to other storage nodes: replication sources and checks
//! (`serve.rs`); to admin nodes, the backend's background progress
//! (`monitor.rs`). Our own replication of out-of-date cells: `replicator.rs`.
//! Pack orders are executed in the background (`pack.rs`).
//! Backup mode (Replicate orders from a backup master) is in `replicator.rs`.

mod client;
mod loads;
mod monitor;
mod pack;
mod replicator;
mod serve;
pub mod txn;

#[cfg(test)]
mod backup_tests;
#[cfg(test)]
mod loads_tests;
#[cfg(test)]
mod replay;
#[cfg(test)]
mod replication_tests;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fsformat::Tid;
use neo_proto::{
    AcceptIdentification, Address, AnswerFinalTID, AnswerInformationLocked, AnswerLastIDs,
    AnswerLockedTransactions, AnswerPackOrders, AnswerPartitionTable, AnswerRecovery, Body, Bytes,
    Cell, CellState as WireCellState, ClusterState, ErrorCode, Map, NodeId, NodeInfo, NodeState,
    NodeType, NotifyPackCompleted, NotifyReady, Packet, Pong, RequestIdentification, Value,
};

use crate::runtime::{ConnId, Event, Node, Outbox};
use crate::storage::{Backend, CellState, DbError};
use fsformat::Oid;

pub use loads::LoadPath;

use self::pack::Packer;
use self::replicator::Replicator;
use self::txn::{StoreData, TxnError, TxnManager};

/// Timer: try the masters again.
const TIMER_RETRY: u64 = 1;
/// Timer: commit what unlock left uncommitted (NEO's `deferCommit`).
const TIMER_COMMIT: u64 = 2;
/// Timer: a step of the backend's background work (the Importer's import).
const TIMER_BACKGROUND: u64 = 3;
/// How long one background step may keep the node from its requests.
pub const BACKGROUND_BUDGET: Duration = Duration::from_millis(20);
/// Connection token of the master connection.
const TOKEN_MASTER: u64 = 1;

/// How often the masters are tried again when none answers.
pub const RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long unlocked transactions may stay uncommitted (they are durable
/// through their lock anyway).
pub const COMMIT_DELAY: Duration = Duration::from_secs(1);

/// What the storage node is told at start.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// The cluster name (`-c`).
    pub cluster: String,
    /// The masters (`-m`), tried in order.
    pub masters: Vec<SocketAddr>,
    /// The address clients and other storages reach us at (our listening
    /// socket).
    pub address: SocketAddr,
    /// A node id to use (`-i`), instead of the stored one.
    pub nid: Option<NodeId>,
    /// How the database is named in messages (its path).
    pub database: String,
    /// Do not process pack orders (`--disable-pack`).
    pub disable_pack: bool,
}

/// Why the node cannot start.
#[derive(Debug)]
#[non_exhaustive]
pub enum NodeError {
    /// The database belongs to another cluster.
    NameMismatch {
        /// The database (path).
        database: String,
        /// The cluster name given with `-c`.
        expected: String,
        /// The name stored in the database.
        found: String,
    },
    /// No master address.
    NoMaster,
    /// The database failed.
    Db {
        /// The database (path).
        database: String,
        /// The error.
        error: Box<DbError>,
    },
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::NameMismatch {
                database,
                expected,
                found,
            } => write!(
                f,
                "{database}: this database belongs to cluster {found:?}, \
                 not to cluster {expected:?} (given with -c)"
            ),
            NodeError::NoMaster => write!(f, "no master address given"),
            NodeError::Db { database, error } => write!(f, "{database}: {error}"),
        }
    }
}

impl std::error::Error for NodeError {}

/// Tells, once the node has stopped, whether it failed.
#[derive(Clone, Debug, Default)]
pub struct ExitReport(Arc<Mutex<Option<String>>>);

impl ExitReport {
    /// Why the node stopped on an error, if it did.
    pub fn failure(&self) -> Option<String> {
        match self.0.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set(&self, why: String) {
        match self.0.lock() {
            Ok(mut g) => *g = Some(why),
            Err(p) => *p.into_inner() = Some(why),
        }
    }
}

/// The link with the primary master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MasterLink {
    /// No connection (a retry timer may be armed).
    None,
    /// Connecting.
    Connecting(ConnId),
    /// Connected, RequestIdentification sent with this id.
    Identifying(ConnId, u32),
    /// Identified: initialization or operation.
    Ready(ConnId),
}

/// Who is at the other end of an accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    /// Not identified yet.
    Unidentified,
    /// An identified client.
    Client(NodeId),
    /// Another storage node (replication), anonymous or not.
    Storage(Option<NodeId>),
    /// An admin node asking for monitor information (`monitor.rs`).
    Monitor,
}

/// A node the master told us about.
#[derive(Debug, Clone)]
struct KnownNode {
    node_type: NodeType,
    state: NodeState,
    id_timestamp: Option<f64>,
    address: Option<SocketAddr>,
}

/// A request waiting for a lock, retried later.
#[derive(Debug, Clone)]
pub(crate) enum Retry {
    /// AskStoreObject, after its checks.
    Store {
        conn: ConnId,
        id: u32,
        ttid: Tid,
        oid: fsformat::Oid,
        serial: Tid,
        data: StoreData,
        data_serial: Option<Tid>,
    },
    /// AskCheckCurrentSerial.
    Check {
        conn: ConnId,
        id: u32,
        ttid: Tid,
        oid: fsformat::Oid,
        serial: Tid,
    },
    /// AskRelockObject; `first` until its lock was released once.
    Relock {
        conn: ConnId,
        id: u32,
        ttid: Tid,
        oid: fsformat::Oid,
        first: bool,
    },
    /// A read waiting for an unlock (AskObject, AskObjectHistory,
    /// AskTIDsFrom, AskOIDsFrom).
    Read { conn: ConnId, id: u32, body: Body },
}

impl Retry {
    fn conn(&self) -> ConnId {
        match self {
            Retry::Store { conn, .. }
            | Retry::Check { conn, .. }
            | Retry::Relock { conn, .. }
            | Retry::Read { conn, .. } => *conn,
        }
    }
}

/// What running a request gave.
pub(crate) enum Outcome {
    /// Answered.
    Done,
    /// Must wait: queue it under this key (`None`: the read queue).
    Delay(Option<Tid>),
}

/// Why a request failed (NEO's exceptions in handlers).
#[derive(Debug)]
pub(crate) enum Fail {
    /// `ProtocolError`: answer PROTOCOL_ERROR and close.
    Protocol(String),
    /// `NotReadyError`: answer NOT_READY and close.
    NotReady(String),
    /// The database failed.
    Db(DbError),
}

impl From<DbError> for Fail {
    fn from(e: DbError) -> Self {
        Fail::Db(e)
    }
}

impl From<TxnError> for Fail {
    fn from(e: TxnError) -> Self {
        match e {
            TxnError::Protocol(m) => Fail::Protocol(m),
            TxnError::Db(e) => Fail::Db(e),
        }
    }
}

#[derive(Debug)]
struct Queued {
    seq: u64,
    key: Option<Tid>,
    retry: Retry,
}

/// A storage node over the database `B`.
pub struct StorageNode<B: Backend> {
    cfg: StorageConfig,
    db: B,
    nid: Option<NodeId>,
    master: MasterLink,
    master_index: usize,
    retry_armed: bool,
    operational: bool,
    cluster_state: Option<ClusterState>,
    nodes: HashMap<NodeId, KnownNode>,
    nodes_timestamp: f64,
    conns: HashMap<ConnId, Peer>,
    clients: HashMap<NodeId, ConnId>,
    tm: TxnManager,
    write_queue: Vec<Queued>,
    read_queue: Vec<Queued>,
    ident_queue: Vec<(ConnId, u32, RequestIdentification)>,
    next_seq: u64,
    executing: bool,
    rerun: bool,
    commit_armed: bool,
    /// Whether a background step is scheduled.
    background_armed: bool,
    completed_pack_id: Tid,
    last_pack_id: Tid,
    stopped: bool,
    exit: ExitReport,
    /// Our id timestamp, as the master told it (other storages check it).
    id_timestamp: Option<f64>,
    /// Replication of our out-of-date cells.
    replicator: Replicator,
    /// Execution of pack orders.
    packer: Packer,
    /// Loads served on the I/O thread, if the shell was given it.
    load_path: Option<Arc<LoadPath>>,
    /// Oids of unlocked transactions whose unlock is not committed yet:
    /// the database's commit count after the last unlock, and the oids.
    unlocked: (u64, HashSet<Oid>),
}

impl<B: Backend> fmt::Debug for StorageNode<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageNode")
            .field("nid", &self.nid)
            .field("master", &self.master)
            .field("operational", &self.operational)
            .finish_non_exhaustive()
    }
}

fn wire_state(s: CellState) -> WireCellState {
    match s {
        CellState::OutOfDate => WireCellState::OutOfDate,
        CellState::UpToDate => WireCellState::UpToDate,
        CellState::Feeding => WireCellState::Feeding,
        CellState::Corrupted => WireCellState::Corrupted,
        CellState::Discarded => WireCellState::Discarded,
    }
}

fn db_state(s: WireCellState) -> CellState {
    match s {
        WireCellState::OutOfDate => CellState::OutOfDate,
        WireCellState::UpToDate => CellState::UpToDate,
        WireCellState::Feeding => CellState::Feeding,
        WireCellState::Corrupted => CellState::Corrupted,
        WireCellState::Discarded => CellState::Discarded,
    }
}

impl<B: Backend> StorageNode<B> {
    /// Opens the node on `db` (NEO's `loadConfiguration`): stores the
    /// cluster name in a new database, refuses a database of another
    /// cluster, reads the node id.
    pub fn new(cfg: StorageConfig, mut db: B) -> Result<Self, NodeError> {
        if cfg.masters.is_empty() {
            return Err(NodeError::NoMaster);
        }
        let dberr = |error| NodeError::Db {
            database: cfg.database.clone(),
            error: Box::new(error),
        };
        match db.name().map_err(dberr)? {
            None => db.set_name(&cfg.cluster).map_err(dberr)?,
            Some(found) if found != cfg.cluster => {
                return Err(NodeError::NameMismatch {
                    database: cfg.database.clone(),
                    expected: cfg.cluster.clone(),
                    found,
                })
            }
            Some(_) => {}
        }
        let stored = db.nid().map_err(dberr)?.filter(|&n| n != 0).map(NodeId);
        let nid = cfg.nid.or(stored);
        log::info!(
            "configuration loaded: cluster {}, node {}, ptid {}",
            cfg.cluster,
            nid.map_or("(none yet)".to_owned(), |n| n.to_string()),
            db.ptid()
                .map_err(dberr)?
                .map_or("(none)".to_owned(), |p| p.to_string())
        );
        Ok(StorageNode {
            cfg,
            db,
            nid,
            master: MasterLink::None,
            master_index: 0,
            retry_armed: false,
            operational: false,
            cluster_state: None,
            nodes: HashMap::new(),
            nodes_timestamp: 0.0,
            conns: HashMap::new(),
            clients: HashMap::new(),
            tm: TxnManager::new(),
            write_queue: Vec::new(),
            read_queue: Vec::new(),
            ident_queue: Vec::new(),
            next_seq: 0,
            executing: false,
            rerun: false,
            commit_armed: false,
            background_armed: false,
            completed_pack_id: Tid::ZERO,
            last_pack_id: Tid::ZERO,
            stopped: false,
            exit: ExitReport::default(),
            id_timestamp: None,
            replicator: Replicator::default(),
            packer: Packer::default(),
            load_path: None,
            unlocked: (0, HashSet::new()),
        })
    }

    /// Our node id, once known.
    pub fn nid(&self) -> Option<NodeId> {
        self.nid
    }

    /// Whether the node serves clients (after StartOperation).
    pub fn is_operational(&self) -> bool {
        self.operational
    }

    /// Whether the node has stopped.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The last cluster state the master announced.
    pub fn cluster_state(&self) -> Option<ClusterState> {
        self.cluster_state
    }

    /// The database.
    pub fn db(&self) -> &B {
        &self.db
    }

    /// The database, mutable (tests: crash injection).
    pub fn db_mut(&mut self) -> &mut B {
        &mut self.db
    }

    /// The transactions in progress.
    pub fn transactions(&self) -> &TxnManager {
        &self.tm
    }

    /// Our out-of-date partitions that replication has yet to fill.
    pub fn replicating(&self) -> Vec<u32> {
        self.replicator.outdated()
    }

    /// Number of requests waiting for a lock.
    pub fn queued(&self) -> usize {
        self.write_queue.len() + self.read_queue.len()
    }

    /// A handle telling, after the node stopped, whether it failed.
    pub fn exit_report(&self) -> ExitReport {
        self.exit.clone()
    }

    fn master_conn(&self) -> Option<ConnId> {
        match self.master {
            MasterLink::Ready(c) => Some(c),
            _ => None,
        }
    }

    // ----- the master link -----

    fn connect_master(&mut self, out: &mut Outbox) {
        let n = self.cfg.masters.len();
        let addr = self.cfg.masters[self.master_index % n];
        log::debug!("connecting to master {addr}");
        let conn = out.connect(addr, TOKEN_MASTER);
        self.master = MasterLink::Connecting(conn);
    }

    /// After a failed attempt: the next master now, or all again in a
    /// second.
    fn master_failed(&mut self, out: &mut Outbox) {
        self.master = MasterLink::None;
        self.master_index = (self.master_index + 1) % self.cfg.masters.len();
        if self.master_index == 0 {
            if !self.retry_armed {
                self.retry_armed = true;
                out.timer(RETRY_DELAY, TIMER_RETRY);
            }
        } else {
            self.connect_master(out);
        }
    }

    fn identify(&mut self, conn: ConnId, out: &mut Outbox) {
        let a = self.cfg.address;
        let mut extra = Map::new();
        extra
            .0
            .push((Bytes::from_static(b"devpath"), Value::Array(vec![])));
        extra
            .0
            .push((Bytes::from_static(b"new_nid"), Value::Array(vec![])));
        let id = out.ask(
            conn,
            RequestIdentification {
                node_type: NodeType::Storage,
                uuid: self.nid,
                address: Some(Address::new(&a.ip().to_string(), a.port())),
                name: Bytes::copy_from_slice(self.cfg.cluster.as_bytes()),
                id_timestamp: None,
                extra,
            },
        );
        self.master = MasterLink::Identifying(conn, id);
    }

    /// The master is gone (NEO's `PrimaryFailure`): back to looking for
    /// one.
    fn lose_master(&mut self, why: &str, out: &mut Outbox) {
        log::error!("primary master is down: {why}");
        self.leave_operation(out);
        self.nodes.clear();
        self.master = MasterLink::None;
        if self.cluster_state == Some(ClusterState::Stopping) {
            log::info!("the cluster is stopping: exiting");
            self.shutdown(out);
            return;
        }
        self.connect_master(out);
    }

    /// Leaves operation (NEO's `StoppedOperation`/`PrimaryFailure`): every
    /// connection but the master's is closed, transactions are forgotten.
    fn leave_operation(&mut self, out: &mut Outbox) {
        self.operational = false;
        self.replication_reset(out);
        for (&conn, _) in self.conns.iter() {
            out.close(conn);
        }
        self.conns.clear();
        self.clients.clear();
        self.write_queue.clear();
        self.read_queue.clear();
        self.ident_queue.clear();
        self.tm = TxnManager::new();
        self.pack_reset();
    }

    /// Closes everything and stops the node (clean exit).
    fn shutdown(&mut self, out: &mut Outbox) {
        if let Err(e) = self.db.commit() {
            log::error!("{}: final commit failed: {e}", self.cfg.database);
        }
        for (&conn, _) in self.conns.iter() {
            out.close(conn);
        }
        self.conns.clear();
        match self.master {
            MasterLink::Connecting(c) | MasterLink::Identifying(c, _) | MasterLink::Ready(c) => {
                out.close(c)
            }
            MasterLink::None => {}
        }
        self.master = MasterLink::None;
        self.stopped = true;
        log::info!("storage node has been asked to shut down");
        out.stop();
    }

    /// A database failure: NEO's process dies; so do we.
    fn fatal(&mut self, e: DbError, out: &mut Outbox) {
        let why = format!("{}: {e}", self.cfg.database);
        log::error!("stopping on a database error: {why}");
        self.exit.set(why);
        self.stopped = true;
        for (&conn, _) in self.conns.iter() {
            out.close(conn);
        }
        if let Some(c) = self.master_conn() {
            out.close(c);
        }
        out.stop();
    }

    /// Answers a failed request as NEO does.
    fn fail(&mut self, conn: ConnId, id: u32, f: Fail, out: &mut Outbox) {
        match f {
            Fail::Protocol(m) => {
                log::warn!("protocol error on connection {conn}: {m}");
                out.error(conn, id, ErrorCode::ProtocolError, &m);
                self.abort_conn(conn, out);
            }
            Fail::NotReady(m) => {
                out.error(conn, id, ErrorCode::NotReady, &m);
                self.abort_conn(conn, out);
            }
            Fail::Db(DbError::NonReadableCell { .. }) => {
                out.error(conn, id, ErrorCode::NonReadableCell, "");
            }
            Fail::Db(DbError::UndoPack { oid, .. }) => {
                out.error(
                    conn,
                    id,
                    ErrorCode::UndoPackError,
                    &format!("Could not undo for oid {oid}"),
                );
            }
            Fail::Db(e) => self.fatal(e, out),
        }
    }

    /// Closes a connection we decided to drop, with what that implies.
    fn abort_conn(&mut self, conn: ConnId, out: &mut Outbox) {
        out.close(conn);
        if self.master_conn() == Some(conn) {
            self.lose_master("connection closed after a protocol error", out);
        } else {
            self.forget_conn(conn, out);
        }
    }

    /// A client or storage connection is gone.
    fn forget_conn(&mut self, conn: ConnId, out: &mut Outbox) {
        let Some(peer) = self.conns.remove(&conn) else {
            return;
        };
        self.write_queue.retain(|q| q.retry.conn() != conn);
        self.read_queue.retain(|q| q.retry.conn() != conn);
        self.ident_queue.retain(|(c, _, _)| *c != conn);
        if let Peer::Client(nid) = peer {
            if self.clients.get(&nid) == Some(&conn) {
                self.clients.remove(&nid);
            }
            if self.operational {
                // Only non-voted transactions: we may still be part of the
                // second phase of the voted ones.
                match self.tm.abort_for(&mut self.db, nid, false) {
                    Ok(true) => self.execute_queued(out),
                    Ok(false) => {}
                    Err(e) => self.fatal(e, out),
                }
            }
        }
    }

    fn arm_commit(&mut self, out: &mut Outbox) {
        if !self.commit_armed {
            self.commit_armed = true;
            out.timer(COMMIT_DELAY, TIMER_COMMIT);
        }
    }

    // ----- events -----

    fn on_event(&mut self, event: Event, out: &mut Outbox) {
        match event {
            Event::Connected { conn, .. } => {
                if self.master == MasterLink::Connecting(conn) {
                    self.identify(conn, out);
                } else if self.replicator.owns(conn) {
                    self.replication_connected(out);
                } else {
                    out.close(conn);
                }
            }
            Event::ConnectFailed { conn, error, .. } => {
                if self.master == MasterLink::Connecting(conn) {
                    log::debug!("master connection failed: {error}");
                    self.master_failed(out);
                } else if self.replicator.owns(conn) {
                    self.replication_closed(conn, &error, out);
                }
            }
            Event::Accepted { conn, peer } => {
                log::debug!("connection {conn} accepted from {peer}");
                self.conns.insert(conn, Peer::Unidentified);
            }
            Event::Closed { conn, error } => match self.master {
                MasterLink::Ready(c) if c == conn => {
                    let why = error.unwrap_or_else(|| "connection closed".into());
                    self.lose_master(&why, out);
                }
                MasterLink::Identifying(c, _) | MasterLink::Connecting(c) if c == conn => {
                    log::info!("master closed the connection during identification");
                    self.master_failed(out);
                }
                _ if self.replicator.owns(conn) => {
                    let why = error.unwrap_or_else(|| "connection closed".into());
                    self.replication_closed(conn, &why, out);
                }
                _ => self.forget_conn(conn, out),
            },
            Event::Packet { conn, packet } => self.on_packet(conn, packet, out),
            Event::Timer { token: TIMER_RETRY } => {
                self.retry_armed = false;
                if self.master == MasterLink::None {
                    self.connect_master(out);
                }
            }
            Event::Timer {
                token: TIMER_COMMIT,
            } => {
                self.commit_armed = false;
                if let Err(e) = self.db.commit() {
                    self.fatal(e, out);
                }
            }
            Event::Timer {
                token: TIMER_BACKGROUND,
            } => {
                self.background_armed = false;
                if !self.operational {
                    return;
                }
                match self.db.background_step(BACKGROUND_BUDGET) {
                    Ok(true) => self.arm_background(Duration::ZERO, out),
                    // Done (an import finished): pack orders left waiting.
                    Ok(false) => {
                        if let Err(e) = self.maybe_pack(None, None, out) {
                            self.fatal(e, out);
                        }
                    }
                    Err(e) => {
                        log::error!("background work of the database failed: {e}");
                        self.arm_background(RETRY_DELAY, out);
                    }
                }
            }
            Event::Timer {
                token: replicator::TIMER_REPLICATE,
            } => self.replication_timer(out),
            Event::Timer {
                token: pack::TIMER_PACK,
            } => self.pack_timer(out),
            Event::Timer { .. } => {}
        }
    }

    fn arm_background(&mut self, after: Duration, out: &mut Outbox) {
        if !self.background_armed {
            self.background_armed = true;
            out.timer(after, TIMER_BACKGROUND);
        }
    }

    fn on_packet(&mut self, conn: ConnId, packet: Packet, out: &mut Outbox) {
        match self.master {
            MasterLink::Identifying(c, ask) if c == conn => {
                return self.on_identified(conn, ask, packet, out)
            }
            MasterLink::Ready(c) if c == conn => {
                let id = packet.id;
                if let Err(f) = self.master_packet(conn, packet, out) {
                    self.fail(conn, id, f, out);
                }
                return;
            }
            _ => {}
        }
        if self.replicator.owns(conn) {
            return self.replication_packet(conn, packet, out);
        }
        let Some(&peer) = self.conns.get(&conn) else {
            return; // a connection we dropped
        };
        let id = packet.id;
        let r = match peer {
            Peer::Unidentified => match packet.body {
                Body::RequestIdentification(r) => self.request_identification(conn, id, r, out),
                body => Err(Fail::Protocol(format!(
                    "unexpected packet {} before identification",
                    body.name()
                ))),
            },
            Peer::Client(nid) => match self.backup_client_filter(conn, packet, out) {
                Ok(Some(packet)) => self.client_packet(conn, nid, packet, out),
                other => other.map(|_| ()),
            },
            Peer::Storage(_) => self.storage_packet(conn, packet, out),
            Peer::Monitor => self.monitor_packet(conn, packet, out),
        };
        if let Err(f) = r {
            self.fail(conn, id, f, out);
        }
    }

    /// The master's answer to our identification.
    fn on_identified(&mut self, conn: ConnId, ask: u32, packet: Packet, out: &mut Outbox) {
        match packet.body {
            Body::AcceptIdentification(a) if packet.id == ask => {
                if a.node_type != NodeType::Master {
                    log::error!("peer is a {} node, not a master", a.node_type);
                    out.close(conn);
                    return self.master_failed(out);
                }
                let Some(nid) = a.your_uuid else {
                    log::error!("the master gave us no node id");
                    out.close(conn);
                    return self.master_failed(out);
                };
                if let Err(e) = self.db.set_nid(nid.0) {
                    return self.fatal(e, out);
                }
                self.nid = Some(nid);
                self.master = MasterLink::Ready(conn);
                log::info!(
                    "identified as {nid} by the primary master {}",
                    a.uuid.map_or("?".to_owned(), |u| u.to_string())
                );
            }
            Body::Error(e) if packet.id == ask => {
                log::warn!(
                    "the master refused us: {} {}",
                    e.code,
                    String::from_utf8_lossy(&e.message)
                );
                out.close(conn);
                self.master = MasterLink::None;
                if !self.retry_armed {
                    self.retry_armed = true;
                    out.timer(RETRY_DELAY, TIMER_RETRY);
                }
            }
            Body::NotPrimaryMaster(n) => {
                out.close(conn);
                let primary = n
                    .primary
                    .and_then(|i| n.known_master_list.get(i as usize))
                    .and_then(|a| {
                        let host = String::from_utf8_lossy(&a.host).into_owned();
                        crate::config::parse_address(&host, Some(a.port)).ok()
                    });
                match primary {
                    Some(addr) => {
                        log::info!("not the primary master; the primary is {addr}");
                        let i = match self.cfg.masters.iter().position(|&m| m == addr) {
                            Some(i) => i,
                            None => {
                                self.cfg.masters.push(addr);
                                self.cfg.masters.len() - 1
                            }
                        };
                        self.master_index = i;
                        self.connect_master(out);
                    }
                    None => self.master_failed(out),
                }
            }
            body => {
                log::warn!("unexpected {} during identification", body.name());
            }
        }
    }

    // ----- packets from the master -----

    fn master_packet(
        &mut self,
        conn: ConnId,
        packet: Packet,
        out: &mut Outbox,
    ) -> Result<(), Fail> {
        let id = packet.id;
        match packet.body {
            Body::NotifyNodeInformation(n) => {
                self.notify_node_information(n.timestamp, &n.node_list, out)
            }
            Body::NotifyClusterInformation(n) => {
                log::info!("cluster state: {}", n.state);
                self.cluster_state = Some(n.state);
                Ok(())
            }
            Body::NotifyPartitionChanges(n) => {
                let current = self.db.ptid()?.unwrap_or(0);
                if n.ptid != current + 1 {
                    return Err(Fail::Protocol("wrong partition table id".into()));
                }
                let cells: Vec<_> = n
                    .cell_list
                    .iter()
                    .map(|&(p, nid, s)| (p, nid.0, db_state(s)))
                    .collect();
                let were_outdated = self.outdated_partitions()?;
                self.apply_pt(n.ptid, n.num_replicas, &cells, false)?;
                if self.operational {
                    // Discarded partitions may have released locks.
                    self.execute_queued(out);
                    self.replication_update(out)?;
                    self.pack_cells_changed(&were_outdated, out)?;
                }
                Ok(())
            }
            Body::StopOperation(_) => {
                log::error!("operation stopped by the master");
                self.leave_operation(out);
                Ok(())
            }
            Body::AskFinalTID(a) => {
                let tid = self.db.final_tid(a.ttid)?;
                out.answer(conn, id, AnswerFinalTID { tid });
                Ok(())
            }
            Body::AskPackOrders(a) => {
                let list = self
                    .db
                    .pack_orders(a.pack_id)?
                    .into_iter()
                    .map(|o| {
                        let oids = o.oids.map(|v| {
                            Value::Array(
                                v.iter()
                                    .map(|x| Value::Bin(Bytes::copy_from_slice(&x.to_bytes())))
                                    .collect(),
                            )
                        });
                        (o.id, o.approved, o.partial, oids, o.pack_tid)
                    })
                    .collect();
                out.answer(conn, id, AnswerPackOrders { pack_list: list });
                Ok(())
            }
            Body::NotifyPackSigned(n) => Ok(self.pack_signed(&n.approved, &n.rejected, out)?),
            Body::AnswerPackOrders(a) if self.packer.asked(id) => {
                Ok(self.pack_orders_answered(a.pack_list, out)?)
            }
            Body::NotifyRepair(n) => {
                let orphans = self.db.orphan_data()?;
                log::info!(
                    "{} orphan data row(s){}",
                    orphans.len(),
                    if n.dry_run { " (dry run)" } else { ", pruned" }
                );
                if !n.dry_run {
                    self.db.prune_data(&orphans)?;
                    self.db.commit()?;
                }
                Ok(())
            }
            Body::AbortTransaction(a) => {
                self.abort_transaction(a.ttid, out);
                self.replication_txn_finished(a.ttid, None, out);
                Ok(())
            }
            Body::NotifyTransactionFinished(n) => {
                self.abort_transaction(n.ttid, out);
                self.replication_txn_finished(n.ttid, Some(n.max_tid), out);
                Ok(())
            }
            Body::Ping(_) => {
                out.answer(conn, id, Pong {});
                Ok(())
            }
            Body::AnswerUnfinishedTransactions(a) if self.replicator.asked_unfinished(id) => {
                self.replication_unfinished(id, a.max_tid, &a.ttid_list, out);
                Ok(())
            }
            Body::Pong(_) | Body::AnswerUnfinishedTransactions(_) | Body::AnswerPackOrders(_) => {
                Ok(())
            }
            Body::Replicate(r) if self.operational => {
                let upstream = String::from_utf8_lossy(&r.upstream_name).into_owned();
                self.backup_order(r.tid, &upstream, &r.source_dict.0, out)
            }
            body @ (Body::Replicate(_) | Body::CheckPartition(_)) => {
                log::warn!(
                    "{}: not implemented or not operational: ignored",
                    body.name()
                );
                Ok(())
            }
            body if self.operational => self.operation_packet(conn, id, body, out),
            body => self.initialization_packet(conn, id, body, out),
        }
    }

    /// NEO's `InitializationHandler`.
    fn initialization_packet(
        &mut self,
        conn: ConnId,
        id: u32,
        body: Body,
        out: &mut Outbox,
    ) -> Result<(), Fail> {
        match body {
            Body::SendPartitionTable(s) => {
                if s.row_list.is_empty() || s.row_list.iter().any(|r| r.is_empty()) {
                    return Err(Fail::Protocol("Partial partition table received".into()));
                }
                let Some(ptid) = s.ptid else {
                    return Err(Fail::Protocol("partition table without id".into()));
                };
                let cells: Vec<_> = s
                    .row_list
                    .iter()
                    .enumerate()
                    .flat_map(|(p, row)| {
                        row.iter()
                            .map(move |c| (p as u32, c.uuid.0, db_state(c.state)))
                    })
                    .collect();
                self.apply_pt(ptid, s.num_replicas, &cells, true)?;
                log::info!(
                    "partition table {ptid} received ({} partitions)",
                    s.row_list.len()
                );
                Ok(())
            }
            Body::Truncate(t) => {
                self.db.set_backup_tid(None)?;
                self.db.set_truncate_tid(Some(t.tid))?;
                self.db.commit()?;
                Ok(())
            }
            Body::AskRecovery(_) => {
                let answer = AnswerRecovery {
                    ptid: self.db.ptid()?,
                    backup_tid: self.db.backup_tid()?,
                    truncate_tid: self.db.truncate_tid()?,
                };
                out.answer(conn, id, answer);
                Ok(())
            }
            Body::AskLastIDs(_) => {
                self.db.truncate()?;
                if !self.cfg.disable_pack {
                    if let Some(&min) = self.db.packed_ids(false)?.values().min() {
                        self.completed_pack_id = min;
                        out.notify(conn, NotifyPackCompleted { pack_id: min });
                    }
                }
                let (last_tid, last_oid) = self.db.last_ids()?;
                let first_tid = self.db.first_tid()?;
                out.answer(
                    conn,
                    id,
                    AnswerLastIDs {
                        last_tid,
                        last_oid,
                        first_tid: Some(first_tid),
                    },
                );
                Ok(())
            }
            Body::AskPartitionTable(_) => {
                let (ptid, num_replicas, row_list) = self.partition_table()?;
                out.answer(
                    conn,
                    id,
                    AnswerPartitionTable {
                        ptid,
                        num_replicas,
                        row_list,
                    },
                );
                Ok(())
            }
            Body::AskLockedTransactions(_) => {
                let tid_dict = self.db.unfinished_transactions()?.into_iter().collect();
                out.answer(conn, id, AnswerLockedTransactions { tid_dict });
                Ok(())
            }
            Body::ValidateTransaction(v) => {
                log::info!("validating transaction {} (ttid {})", v.tid, v.ttid);
                self.db.lock_transaction(v.tid, v.ttid, true)?;
                self.db
                    .unlock_transaction(v.tid, v.ttid, true, true, true)?;
                self.db.commit()?;
                Ok(())
            }
            Body::StartOperation(s) => {
                self.backup_start(s.backup)?;
                self.operational = true;
                out.notify(conn, NotifyReady {});
                // NEO's doOperation: forget all unfinished data.
                self.db.drop_unfinished_data()?;
                log::info!("operational: serving clients");
                self.arm_background(Duration::ZERO, out);
                self.replication_update(out)?;
                self.maybe_pack(None, None, out)?;
                Ok(())
            }
            body => Err(Fail::Protocol(format!(
                "unexpected packet {} from the master during initialization",
                body.name()
            ))),
        }
    }

    /// NEO's `MasterOperationHandler`.
    fn operation_packet(
        &mut self,
        conn: ConnId,
        id: u32,
        body: Body,
        out: &mut Outbox,
    ) -> Result<(), Fail> {
        match body {
            // Switching to backup mode while operational.
            Body::StartOperation(s) => {
                self.backup_start(s.backup)?;
                Ok(())
            }
            Body::AskLockInformation(a) => {
                // Durable (committed) before the answer when the metadata
                // is here.
                self.tm.lock(&mut self.db, a.ttid, a.tid, a.pack)?;
                out.answer(conn, id, AnswerInformationLocked { ttid: a.ttid });
                Ok(())
            }
            Body::NotifyUnlockInformation(n) => {
                let oids = match self.load_path {
                    Some(_) => self.tm.stored_oids(n.ttid),
                    None => Vec::new(),
                };
                self.tm.unlock(&mut self.db, n.ttid)?;
                // Visible to the load path once the database commits again.
                self.unlocked.0 = self.db.commits();
                self.unlocked.1.extend(oids);
                self.arm_commit(out);
                self.execute_queued(out);
                Ok(())
            }
            body => Err(Fail::Protocol(format!(
                "unexpected packet {} from the master during operation",
                body.name()
            ))),
        }
    }

    /// Stores a partition table (full with `reset`, or changes) and drops
    /// the data of the partitions we lost.
    fn apply_pt(
        &mut self,
        ptid: u64,
        num_replicas: u32,
        cells: &[(u32, i32, CellState)],
        reset: bool,
    ) -> Result<(), DbError> {
        let drop =
            self.db
                .change_partition_table(ptid, num_replicas, cells, reset, self.last_pack_id)?;
        if !drop.is_empty() {
            let parts: Vec<u32> = drop.iter().copied().collect();
            log::info!("dropping the data of partitions {parts:?}");
            let np = self.db.partition_view()?.np;
            self.tm.discarded(&mut self.db, np, &drop)?;
            self.db.drop_partitions_temporary(Some(&parts))?;
            for &p in &parts {
                self.db.delete_range(p, None, None)?;
            }
            let orphans = self.db.orphan_data()?;
            self.db.prune_data(&orphans)?;
        }
        self.db.commit()
    }

    /// The partition table from the database, as NEO sends it.
    #[allow(clippy::type_complexity)]
    fn partition_table(&mut self) -> Result<(Option<u64>, u32, Vec<Vec<Cell>>), DbError> {
        let ptid = self.db.ptid()?;
        let nr = self.db.num_replicas()?.unwrap_or(0);
        let cells = self.db.partition_table()?;
        let np = cells.iter().map(|c| c.0 as usize + 1).max().unwrap_or(0);
        let mut rows = vec![Vec::new(); np];
        for (p, nid, state) in cells {
            rows[p as usize].push(Cell {
                uuid: NodeId(nid),
                state: wire_state(state),
            });
        }
        Ok((ptid, nr, rows))
    }

    /// NotifyNodeInformation from the master (`NodeManager.update` and
    /// `BaseMasterHandler.notifyNodeInformation`).
    fn notify_node_information(
        &mut self,
        timestamp: f64,
        node_list: &[NodeInfo],
        out: &mut Outbox,
    ) -> Result<(), Fail> {
        self.nodes_timestamp = timestamp;
        for info in node_list {
            let Some(nid) = info.uuid else { continue };
            if Some(nid) == self.nid {
                log::info!("I was told I'm {}", info.state);
                self.id_timestamp = info.id_timestamp;
                if matches!(info.state, NodeState::Unknown | NodeState::Down) {
                    self.shutdown(out);
                    return Ok(());
                }
                continue;
            }
            if info.state == NodeState::Unknown {
                self.nodes.remove(&nid);
                // Cut the connection of a node the master forgot.
                let conns: Vec<ConnId> = self
                    .conns
                    .iter()
                    .filter(
                        |(_, p)| matches!(p, Peer::Client(n) | Peer::Storage(Some(n)) if *n == nid),
                    )
                    .map(|(&c, _)| c)
                    .collect();
                for c in conns {
                    out.close(c);
                    self.forget_conn(c, out);
                }
            } else {
                self.nodes.insert(
                    nid,
                    KnownNode {
                        node_type: info.node_type,
                        state: info.state,
                        id_timestamp: info.id_timestamp,
                        address: info.address.as_ref().and_then(|a| {
                            let host = String::from_utf8_lossy(&a.host).into_owned();
                            crate::config::parse_address(&host, Some(a.port)).ok()
                        }),
                    },
                );
            }
            if info.node_type == NodeType::Client && info.state != NodeState::Running {
                log::info!("notified of non-running client, abort ({nid})");
                if self.tm.abort_for(&mut self.db, nid, true)? {
                    self.execute_queued(out);
                }
            }
        }
        // Identifications that waited for this notification.
        for (conn, id, r) in std::mem::take(&mut self.ident_queue) {
            if let Err(f) = self.request_identification(conn, id, r, out) {
                self.fail(conn, id, f, out);
            }
        }
        Ok(())
    }

    /// RequestIdentification on our listening socket
    /// (`IdentificationHandler`).
    fn request_identification(
        &mut self,
        conn: ConnId,
        id: u32,
        r: RequestIdentification,
        out: &mut Outbox,
    ) -> Result<(), Fail> {
        if r.name.as_ref() != self.cfg.cluster.as_bytes() {
            log::error!("reject an alien cluster");
            return Err(Fail::Protocol("invalid cluster name".into()));
        }
        if !self.operational {
            return Err(Fail::NotReady("Retry Later".into()));
        }
        let peer = match r.uuid {
            None => match r.node_type {
                NodeType::Storage => Peer::Storage(None),
                NodeType::Admin => Peer::Monitor,
                _ => return Err(Fail::Protocol("reject anonymous non-storage node".into())),
            },
            Some(uuid) => {
                if Some(uuid) == self.nid {
                    return Err(Fail::Protocol(
                        "uuid conflict or loopback connection".into(),
                    ));
                }
                let known = self.nodes.get(&uuid);
                if !matches!(known, Some(n) if n.id_timestamp == r.id_timestamp) {
                    if r.id_timestamp.is_some_and(|t| self.nodes_timestamp < t) {
                        // The master's notification is late: wait for it.
                        self.ident_queue.push((conn, id, r));
                        return Ok(());
                    }
                    return Err(Fail::NotReady("unknown by master".into()));
                }
                match r.node_type {
                    NodeType::Client => {
                        if known.is_some_and(|n| {
                            n.node_type != NodeType::Client || n.state != NodeState::Running
                        }) {
                            return Err(Fail::Protocol("client is not running".into()));
                        }
                        if let Some(old) = self.clients.insert(uuid, conn) {
                            out.close(old);
                            self.conns.remove(&old);
                        }
                        Peer::Client(uuid)
                    }
                    NodeType::Storage => Peer::Storage(Some(uuid)),
                    _ => return Err(Fail::Protocol("reject non-client-or-storage node".into())),
                }
            }
        };
        log::info!(
            "accepted {} {}",
            r.node_type,
            r.uuid.map_or("(anonymous)".to_owned(), |u| u.to_string())
        );
        self.conns.insert(conn, peer);
        out.answer(
            conn,
            id,
            AcceptIdentification {
                node_type: NodeType::Storage,
                uuid: r.uuid.and(self.nid),
                your_uuid: r.uuid,
            },
        );
        Ok(())
    }

    /// AbortTransaction / NotifyTransactionFinished.
    fn abort_transaction(&mut self, ttid: Tid, out: &mut Outbox) {
        match self.tm.abort(&mut self.db, ttid, false) {
            Ok(true) => self.execute_queued(out),
            Ok(false) => {}
            Err(e) => self.fatal(e, out),
        }
    }

    // ----- the queue of delayed requests -----

    /// Runs a request now, queueing it if it must wait.
    fn submit(&mut self, retry: Retry, out: &mut Outbox) {
        match self.run(&retry, out) {
            Ok(Outcome::Done) => {}
            Ok(Outcome::Delay(key)) => {
                let retry = match retry {
                    Retry::Relock {
                        conn,
                        id,
                        ttid,
                        oid,
                        ..
                    } => Retry::Relock {
                        conn,
                        id,
                        ttid,
                        oid,
                        first: false,
                    },
                    r => r,
                };
                self.queue(key, retry);
            }
            Err(f) => {
                let (conn, id) = match &retry {
                    Retry::Store { conn, id, .. }
                    | Retry::Check { conn, id, .. }
                    | Retry::Relock { conn, id, .. }
                    | Retry::Read { conn, id, .. } => (*conn, *id),
                };
                self.fail(conn, id, f, out);
            }
        }
    }

    fn queue(&mut self, key: Option<Tid>, retry: Retry) {
        self.next_seq += 1;
        let q = Queued {
            seq: self.next_seq,
            key,
            retry,
        };
        match key {
            Some(_) => {
                self.write_queue.push(q);
                // Stable: same keys stay in arrival order.
                self.write_queue.sort_by_key(|q| q.key);
            }
            None => self.read_queue.push(q),
        }
    }

    /// Retries the queued requests in order (NEO's `executeQueuedEvents`);
    /// not reentrant: a nested call makes the running one start over.
    fn execute_queued(&mut self, out: &mut Outbox) {
        if self.executing {
            self.rerun = true;
            return;
        }
        self.executing = true;
        loop {
            self.rerun = false;
            'queues: for write in [true, false] {
                let seqs: Vec<u64> = if write {
                    self.write_queue.iter().map(|q| q.seq).collect()
                } else {
                    self.read_queue.iter().map(|q| q.seq).collect()
                };
                for seq in seqs {
                    if self.stopped {
                        break 'queues;
                    }
                    let queue = if write {
                        &self.write_queue
                    } else {
                        &self.read_queue
                    };
                    let Some(retry) = queue.iter().find(|q| q.seq == seq).map(|q| q.retry.clone())
                    else {
                        continue;
                    };
                    let done = match self.run(&retry, out) {
                        Ok(Outcome::Done) => true,
                        Ok(Outcome::Delay(_)) => {
                            if let Retry::Relock { first: true, .. } = retry {
                                // Its lock is released: retry without that.
                                if let Some(q) = self.write_queue.iter_mut().find(|q| q.seq == seq)
                                {
                                    if let Retry::Relock { first, .. } = &mut q.retry {
                                        *first = false;
                                    }
                                }
                            }
                            false
                        }
                        Err(f) => {
                            let (conn, id) = match &retry {
                                Retry::Store { conn, id, .. }
                                | Retry::Check { conn, id, .. }
                                | Retry::Relock { conn, id, .. }
                                | Retry::Read { conn, id, .. } => (*conn, *id),
                            };
                            self.fail(conn, id, f, out);
                            true
                        }
                    };
                    if done {
                        self.write_queue.retain(|q| q.seq != seq);
                        self.read_queue.retain(|q| q.seq != seq);
                    }
                    if self.rerun {
                        break 'queues;
                    }
                }
            }
            if !self.rerun || self.stopped {
                break;
            }
        }
        self.executing = false;
    }
}

impl<B: Backend> StorageNode<B> {
    /// Lets `io_threads` I/O threads serve loads ([`LoadPath`]) if the
    /// backend has readers: give the result to the shell
    /// (`runtime::Shell::fast_path`).
    pub fn load_path(&mut self, io_threads: usize) -> Result<Option<Arc<LoadPath>>, DbError> {
        let mut readers = Vec::new();
        for _ in 0..io_threads.max(1) {
            match self.db.object_reader()? {
                Some(r) => readers.push(r),
                None => return Ok(None),
            }
        }
        let lp = LoadPath::new(readers);
        self.load_path = Some(lp.clone());
        Ok(Some(lp))
    }

    /// Tells the load path what it may serve now (see `loads.rs`).
    fn publish_loads(&mut self) {
        let Some(lp) = self.load_path.clone() else {
            return;
        };
        if self.db.commits() != self.unlocked.0 {
            self.unlocked.1.clear();
        }
        let mut next = loads::Published::default();
        if self.operational && matches!(self.db.backup_tid(), Ok(None)) {
            if let Ok(view) = self.db.partition_view() {
                next = loads::Published {
                    enabled: true,
                    view,
                    clients: self.clients.values().copied().collect(),
                    blocked: self
                        .tm
                        .load_locked_oids()
                        .chain(self.unlocked.1.iter().copied())
                        .collect(),
                    commits: self.db.commits(),
                };
            }
        }
        lp.publish(next);
    }
}

impl<B: Backend + Send + 'static> Node for StorageNode<B> {
    fn start(&mut self, _now: Instant, out: &mut Outbox) {
        log::info!(
            "storage node for cluster {} at {}, database {}",
            self.cfg.cluster,
            self.cfg.address,
            self.cfg.database
        );
        self.connect_master(out);
    }

    fn handle(&mut self, _now: Instant, event: Event, out: &mut Outbox) {
        if self.stopped {
            return;
        }
        self.on_event(event, out);
        self.publish_loads();
    }
}
