//! The primary master as a sans-IO [`Node`]: identification of every node
//! (node ids, node-information broadcasts, the partition table sent to
//! each), the cluster states RECOVERING → VERIFYING → RUNNING (and back to
//! RECOVERING when the cluster is no longer operational) and STOPPING,
//! recovery (the newest partition table among the storages), verification
//! (transactions left locked, last ids, pack orders), the client service
//! (begin, new oids, the two-phase finish with the storages' locks,
//! invalidations, aborts) and the admin service.
//!
//! It follows NEO's master (neo/master/*.py) and the recorded conversations
//! in `shared/neo-protocol/conversations` (01 bootstrap, 02 clients, 03
//! shutdown, 06 storage down, 07 admin, 08 two masters) for the order and
//! arguments of the packets. With other masters ([`Master::with_masters`])
//! the primary is elected and the others play the secondary role
//! ([`election`]). Backup mode (following an upstream cluster) is in
//! [`backup`].

mod backup;
mod election;
mod tid;
mod txn;

#[cfg(test)]
mod election_tests;
#[cfg(test)]
mod replay;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use fsformat::Tid;
use neo_proto::{
    self as p, Address, Body, ClusterState, ErrorCode, NodeId, NodeInfo, NodeState, NodeType,
    Offset, Packet, PacketKind, Ptid, Value, ZERO_TID,
};

use crate::nodes::{Node as NodeEntry, NodeTable};
use crate::pt::{CellChange, PartitionTable, PtError};
use crate::runtime::{ConnId, Event, Node, Outbox};

pub use backup::UPSTREAM_RETRY;
pub use election::ELECTION_RETRY;
pub use tid::{add_tid, tid_from_time, time_from_tid};
pub use txn::{TransactionManager, Txn, TxnError};

/// A source of wall-clock time (seconds since the UNIX epoch): tids and
/// identification timestamps come from it.
pub type Clock = Box<dyn FnMut() -> f64 + Send>;

/// The system clock.
pub fn system_clock() -> Clock {
    Box::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    })
}

/// How a master is set up (NEO's options).
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// The cluster name (`-c`): peers with another name are refused.
    pub cluster: String,
    /// Our listening address, as announced to the other nodes.
    pub address: Address,
    /// Number of partitions of a new database (`-p`).
    pub partitions: u32,
    /// Number of replicas of a new database (`-r`).
    pub replicas: u32,
    /// Start a new cluster by itself once this many storages are pending
    /// (`-A`).
    pub autostart: Option<usize>,
    /// Our node id (`-i`), M1 by default.
    pub nid: Option<NodeId>,
}

/// Where the recovery stands.
#[derive(Debug, Clone)]
struct Recovery {
    /// truncate_tid of each storage's AnswerRecovery.
    truncate: HashMap<NodeId, Option<Tid>>,
    /// backup_tid of each storage's AnswerRecovery (a backup cluster).
    backup: HashMap<NodeId, Option<Tid>>,
    /// The backup tid of the storage the table was loaded from: the
    /// cluster was backing up and resumes it after verification.
    resume_backup: Option<Tid>,
    target_ptid: Ptid,
    /// Storages having `target_ptid`, the first one being asked for it;
    /// `None` once the table is loaded.
    ask_pt: Option<Vec<NodeId>>,
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery {
            truncate: HashMap::new(),
            backup: HashMap::new(),
            resume_backup: None,
            target_ptid: 0,
            ask_pt: Some(Vec::new()),
        }
    }
}

/// Steps of the verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VerifyStep {
    Locked,
    FinalTid,
    LastIds,
    PackOrders,
}

#[derive(Debug, Clone)]
struct Verification {
    step: VerifyStep,
    waiting: BTreeSet<NodeId>,
    locked: BTreeMap<Tid, Tid>,
    voted: BTreeMap<Tid, BTreeSet<NodeId>>,
    /// (ttid, storages still to ask for its final tid)
    final_queue: VecDeque<(Tid, VecDeque<NodeId>)>,
    last_tid: Tid,
}

/// A pack order as AnswerPackOrders carries it.
type PackEntry = (Tid, Option<bool>, bool, Option<Value>, Tid);

/// The master node.
pub struct Master {
    cfg: MasterConfig,
    clock: Clock,
    last_time: f64,
    uuid: NodeId,
    nodes: NodeTable,
    /// Connections accepted but not identified yet.
    accepted: HashSet<ConnId>,
    /// Requests we sent and that are not answered yet, per connection.
    pending_asks: HashMap<ConnId, u32>,
    read_only: HashSet<NodeId>,
    pt: PartitionTable,
    /// A new table of the configured size (recovery starts from it).
    empty_pt: PartitionTable,
    state: ClusterState,
    startup_allowed: bool,
    recovery: Recovery,
    verification: Option<Verification>,
    last_transaction: Tid,
    tm: TransactionManager,
    storage_readiness: u64,
    storage_ready: BTreeMap<NodeId, u64>,
    storage_starting: BTreeSet<NodeId>,
    completed_pack: HashMap<NodeId, Tid>,
    /// The greatest pack id known completed (NEO's `pm.max_completed`).
    max_completed: Option<Tid>,
    /// Set by `neoctl truncate` until the storages truncated.
    truncate_tid: Option<Tid>,
    packs: BTreeMap<Tid, PackEntry>,
    /// WaitForPack requests answered once their pack is completed:
    /// (conn, id) by pack id (NEO's `Pack.waitForPack`).
    pack_waiters: BTreeMap<Tid, Vec<(ConnId, u32)>>,
    /// AskBeginTransaction delayed until storages are ready: (conn, id, tid).
    delayed_begins: VecDeque<(ConnId, u32, Option<Tid>)>,
    stopping: bool,
    /// The other masters (`--masters` but us, then those learnt).
    others: Vec<SocketAddr>,
    role: election::Role,
    /// When we took the primary role (NEO's `app.primary`): our election
    /// key while RECOVERING.
    election_key: Option<f64>,
    /// Our connections to other masters (election, or to the primary).
    master_out: HashMap<ConnId, SocketAddr>,
    election_timer: bool,
    /// The cluster to back up, if configured.
    upstream: Option<backup::Upstream>,
    /// The backup in progress (STARTING_BACKUP, BACKINGUP).
    backup: Option<backup::Backup>,
    /// Clients that are backup masters of other clusters: they get
    /// InvalidatePartitions.
    backup_clients: HashSet<NodeId>,
    /// `--backup`: an empty cluster goes to backup mode at once.
    backup_at_once: bool,
}

/// What an admin request was refused with.
struct Denied(String);

fn denied(msg: impl Into<String>) -> Denied {
    Denied(msg.into())
}

impl Master {
    /// A master with the system clock; fails if the configuration has no
    /// partition.
    pub fn new(cfg: MasterConfig) -> Result<Master, PtError> {
        Master::with_clock(cfg, system_clock())
    }

    /// A master with this clock (tests use a fake one).
    pub fn with_clock(cfg: MasterConfig, clock: Clock) -> Result<Master, PtError> {
        let uuid = cfg.nid.unwrap_or(NodeId::new(NodeType::Master, 1));
        let mut nodes = NodeTable::new();
        let mut me = NodeEntry::new(NodeType::Master, NodeState::Running);
        me.nid = Some(uuid);
        me.address = Some(cfg.address.clone());
        nodes.add(me);
        let pt = PartitionTable::new(cfg.partitions, cfg.replicas)?;
        Ok(Master {
            empty_pt: pt.clone(),
            cfg,
            clock,
            last_time: 0.0,
            uuid,
            nodes,
            accepted: HashSet::new(),
            pending_asks: HashMap::new(),
            read_only: HashSet::new(),
            pt,
            state: ClusterState::Recovering,
            startup_allowed: false,
            recovery: Recovery::default(),
            verification: None,
            last_transaction: ZERO_TID,
            tm: TransactionManager::default(),
            storage_readiness: 0,
            storage_ready: BTreeMap::new(),
            storage_starting: BTreeSet::new(),
            completed_pack: HashMap::new(),
            max_completed: None,
            truncate_tid: None,
            packs: BTreeMap::new(),
            pack_waiters: BTreeMap::new(),
            delayed_begins: VecDeque::new(),
            stopping: false,
            others: Vec::new(),
            role: election::Role::Primary,
            election_key: None,
            master_out: HashMap::new(),
            election_timer: false,
            upstream: None,
            backup: None,
            backup_clients: HashSet::new(),
            backup_at_once: false,
        })
    }

    /// The masters of the cluster (`--masters`; our own address is
    /// skipped): the primary is elected among them.
    pub fn with_masters(mut self, masters: Vec<SocketAddr>) -> Master {
        let me = election::to_socket(&self.cfg.address);
        for a in masters {
            if Some(a) != me && !self.others.contains(&a) {
                self.others.push(a);
            }
        }
        self
    }

    /// Our node id.
    pub fn uuid(&self) -> NodeId {
        self.uuid
    }

    /// The cluster state.
    pub fn cluster_state(&self) -> ClusterState {
        self.state
    }

    /// The partition table.
    pub fn pt(&self) -> &PartitionTable {
        &self.pt
    }

    /// The node table (ourselves included).
    pub fn nodes(&self) -> &NodeTable {
        &self.nodes
    }

    /// The last committed tid.
    pub fn last_transaction(&self) -> Tid {
        self.last_transaction
    }

    /// The transaction manager.
    pub fn transactions(&self) -> &TransactionManager {
        &self.tm
    }

    // ---- helpers -------------------------------------------------------

    /// NEO's `monotonic_time`: the clock, forced to increase.
    fn now_ts(&mut self) -> f64 {
        let t = (self.clock)();
        if t > self.last_time {
            self.last_time = t;
        } else {
            self.last_time += 1e-3;
        }
        self.last_time
    }

    fn conn_of(&self, nid: NodeId) -> Option<ConnId> {
        self.nodes.by_nid(nid).and_then(|n| n.conn)
    }

    fn send(&mut self, out: &mut Outbox, nid: NodeId, body: impl Into<Body>) {
        if let Some(conn) = self.conn_of(nid) {
            out.notify(conn, body);
        }
    }

    fn ask(&mut self, out: &mut Outbox, nid: NodeId, body: impl Into<Body>) {
        if let Some(conn) = self.conn_of(nid) {
            out.ask(conn, body);
            *self.pending_asks.entry(conn).or_insert(0) += 1;
        }
    }

    fn has_pending_asks(&self, nid: NodeId) -> bool {
        self.conn_of(nid)
            .and_then(|c| self.pending_asks.get(&c))
            .is_some_and(|n| *n > 0)
    }

    /// Identified nodes (with a connection), in table order.
    fn identified(&self) -> Vec<(NodeId, NodeType, ConnId)> {
        self.nodes
            .iter()
            .filter_map(|n| Some((n.nid?, n.node_type, n.conn?)))
            .collect()
    }

    fn identified_of(&self, t: NodeType) -> Vec<NodeId> {
        self.identified()
            .into_iter()
            .filter(|(_, nt, _)| *nt == t)
            .map(|(n, _, _)| n)
            .collect()
    }

    fn node_state(&self, nid: NodeId) -> Option<NodeState> {
        self.nodes.state(nid)
    }

    fn info(&self, nid: NodeId) -> Option<NodeInfo> {
        self.nodes.by_nid(nid).map(NodeEntry::info)
    }

    fn send_pt(&mut self, out: &mut Outbox, nid: NodeId) {
        let body = p::SendPartitionTable {
            ptid: self.pt.ptid(),
            num_replicas: self.pt.nr(),
            row_list: self.pt.row_list(),
        };
        self.send(out, nid, body);
    }

    /// Whether a node of type `dest` hears about changes of a node of type
    /// `changed` (NEO's `getNodeInformationGetter`, without backups).
    fn visible_to(changed: NodeType, dest: NodeType) -> bool {
        match (changed, dest) {
            (NodeType::Admin, _) => false,
            (_, NodeType::Admin | NodeType::Storage) => true,
            (NodeType::Client, _) => false,
            (_, NodeType::Client) => true,
            (NodeType::Storage, _) => false,
            (_, NodeType::Master) => true,
        }
    }

    /// NotifyNodeInformation about `changed` to every identified node that
    /// must hear of it (one packet per node).
    fn broadcast_nodes(&mut self, out: &mut Outbox, changed: &[NodeInfo]) {
        if changed.is_empty() {
            return;
        }
        for info in changed {
            if let Some(nid) = info.uuid {
                log::info!("node {nid} ({}): {}", info.node_type, info.state);
            }
        }
        let now = self.now_ts();
        for (nid, t, _) in self.identified() {
            let list: Vec<NodeInfo> = changed
                .iter()
                .filter(|i| Self::visible_to(i.node_type, t))
                .cloned()
                .collect();
            if !list.is_empty() {
                self.send(
                    out,
                    nid,
                    p::NotifyNodeInformation {
                        timestamp: now,
                        node_list: list,
                    },
                );
            }
        }
    }

    /// NotifyPartitionChanges with a new ptid to every identified
    /// non-master node.
    fn broadcast_pt_changes(&mut self, out: &mut Outbox, changes: Vec<CellChange>) {
        if changes.is_empty() {
            return;
        }
        let ptid = self.pt.next_ptid();
        log::debug!("partition table updated (ptid={ptid}): {changes:?}");
        let body = p::NotifyPartitionChanges {
            ptid,
            num_replicas: self.pt.nr(),
            cell_list: changes,
        };
        for (nid, t, _) in self.identified() {
            if t != NodeType::Master {
                self.send(out, nid, body.clone());
            }
        }
    }

    fn notify_admins(&mut self, out: &mut Outbox, body: Body) {
        for nid in self.identified_of(NodeType::Admin) {
            self.send(out, nid, body.clone());
        }
    }

    /// Closes a connection we decided to drop and treats it as lost.
    fn drop_conn(&mut self, out: &mut Outbox, conn: ConnId) {
        out.close(conn);
        self.conn_closed(out, conn);
    }

    fn protocol_error(&mut self, out: &mut Outbox, conn: ConnId, id: u32, msg: &str) {
        log::error!("protocol error on connection {conn}: {msg}");
        out.error(conn, id, ErrorCode::ProtocolError, msg);
        self.drop_conn(out, conn);
    }

    fn is_running(&self, nid: NodeId) -> bool {
        self.nodes.is_running(nid)
    }

    fn operational(&self, exclude: &BTreeSet<NodeId>) -> bool {
        self.pt
            .operational(|n| self.is_running(n) && !exclude.contains(&n))
    }

    fn ready_set(&self, readiness: u64) -> BTreeSet<NodeId> {
        self.storage_ready
            .iter()
            .filter(|(_, r)| **r <= readiness)
            .map(|(n, _)| *n)
            .collect()
    }

    // ---- cluster state -------------------------------------------------

    /// Changes the cluster state, telling every identified node, and
    /// switches the storages to the state's service (NEO's
    /// `changeClusterState` + `handlerSwitched`).
    fn change_state(&mut self, out: &mut Outbox, state: ClusterState) {
        if self.state == state {
            return;
        }
        log::info!("cluster state: {} -> {}", self.state, state);
        let electing = self.state == ClusterState::Recovering;
        self.state = state;
        if electing && state != ClusterState::Recovering {
            // The election is over: we are the primary.
            for (c, _) in std::mem::take(&mut self.master_out) {
                out.close(c);
            }
        }
        for (nid, t, _) in self.identified() {
            self.send(out, nid, p::NotifyClusterInformation { state });
            if t != NodeType::Storage {
                continue;
            }
            match state {
                ClusterState::Recovering => self.ask(out, nid, p::AskRecovery {}),
                ClusterState::Verifying => self.send_pt(out, nid),
                ClusterState::Running if self.is_running(nid) => self.start_storage(out, nid),
                _ => {}
            }
        }
    }

    fn start_storage(&mut self, out: &mut Outbox, nid: NodeId) {
        let backup = self.backing_up();
        self.send(out, nid, p::StartOperation { backup });
        self.storage_starting.insert(nid);
        if self.state == ClusterState::BackingUp {
            // A storage back while backing up: what its cells miss.
            self.backup_storage_started(out, nid);
        }
    }

    /// Called after every event during recovery: starts the cluster when
    /// NEO's conditions hold.
    fn recovery_check(&mut self, out: &mut Outbox) {
        if self.state != ClusterState::Recovering || self.stopping || !self.is_primary() {
            return;
        }
        let mut node_list: Vec<NodeId>;
        if self.pt.filled() {
            let set = self.operational_node_set();
            if self.startup_allowed {
                node_list = set
                    .into_iter()
                    .filter(|n| self.node_state(*n) == Some(NodeState::Pending))
                    .collect();
            } else if !set.is_empty() {
                let set: BTreeSet<NodeId> = if self.truncate_tid.is_some() {
                    self.pt.node_ids()
                } else {
                    set
                };
                if !set
                    .iter()
                    .all(|n| self.node_state(*n) == Some(NodeState::Pending))
                {
                    return;
                }
                node_list = set.into_iter().collect();
            } else {
                return;
            }
        } else if self.startup_allowed || self.cfg.autostart.is_some() {
            node_list = self.identified_of(NodeType::Storage);
            if !self.startup_allowed && node_list.len() < self.cfg.autostart.unwrap_or(0) {
                return;
            }
        } else {
            return;
        }
        if node_list.is_empty() || node_list.iter().any(|n| self.has_pending_asks(*n)) {
            return;
        }
        if self.pt.filled() {
            if let Some(tid) = self.truncate_tid {
                let late: Vec<NodeId> = self
                    .recovery
                    .truncate
                    .iter()
                    .filter(|(n, t)| self.conn_of(**n).is_some() && t.is_none_or(|t| tid < t))
                    .map(|(n, _)| *n)
                    .collect();
                if !late.is_empty() {
                    for n in late {
                        self.send(out, n, p::Truncate { tid });
                        self.ask(out, n, p::AskRecovery {});
                    }
                    return;
                }
            }
            node_list = self
                .pt
                .node_ids()
                .into_iter()
                .filter(|n| self.conn_of(*n).is_some())
                .collect();
        }
        log::info!("startup allowed");
        let mut changed = Vec::new();
        for n in &node_list {
            if let Some(node) = self.nodes.by_nid_mut(*n) {
                node.state = NodeState::Running;
                changed.push(node.info());
            }
        }
        self.broadcast_nodes(out, &changed);
        if self.pt.ptid().is_none() {
            log::info!("creating a new partition table");
            if let Err(e) = self.pt.make(&node_list) {
                log::error!("cannot make the partition table: {e}");
                return;
            }
            let body = p::SendPartitionTable {
                ptid: self.pt.ptid(),
                num_replicas: self.pt.nr(),
                row_list: self.pt.row_list(),
            };
            self.notify_admins(out, body.into());
        } else {
            let nodes = &self.nodes;
            let changes = self.pt.outdate(None, |n| nodes.is_running(n));
            if !changes.is_empty() {
                let ptid = self.pt.next_ptid();
                let body = p::NotifyPartitionChanges {
                    ptid,
                    num_replicas: self.pt.nr(),
                    cell_list: changes,
                };
                self.notify_admins(out, body.into());
            }
        }
        log::info!(
            "cluster starts with this partition table:\n{}",
            self.pt.format_log(|n| self.nodes.state(n))
        );
        self.start_verification(out);
    }

    /// NEO's `getOperationalNodeSet`: nodes with readable cells, if every
    /// partition has a readable cell on a pending node; else empty.
    fn operational_node_set(&self) -> BTreeSet<NodeId> {
        let mut set = BTreeSet::new();
        for offset in 0..self.pt.np() {
            let readable = self.pt.readable_cells(offset);
            if !readable
                .iter()
                .any(|n| self.node_state(*n) == Some(NodeState::Pending))
            {
                return BTreeSet::new();
            }
            set.extend(readable);
        }
        set
    }

    fn start_verification(&mut self, out: &mut Outbox) {
        self.change_state(out, ClusterState::Verifying);
        self.tm.reset();
        let readable: BTreeSet<NodeId> = self
            .pt
            .node_ids()
            .into_iter()
            .filter(|n| !self.pt.readable_offsets(*n).is_empty() && self.conn_of(*n).is_some())
            .collect();
        self.verification = Some(Verification {
            step: VerifyStep::Locked,
            waiting: readable.clone(),
            locked: BTreeMap::new(),
            voted: BTreeMap::new(),
            final_queue: VecDeque::new(),
            last_tid: ZERO_TID,
        });
        log::info!("start to verify data");
        for n in readable {
            self.ask(out, n, p::AskLockedTransactions {});
        }
        self.verification_advance(out);
    }

    /// Moves the verification on when no answer is awaited.
    fn verification_advance(&mut self, out: &mut Outbox) {
        loop {
            let Some(v) = self.verification.as_mut() else {
                return;
            };
            if !v.waiting.is_empty() {
                return;
            }
            match v.step {
                VerifyStep::Locked => {
                    let mut queue = VecDeque::new();
                    for (ttid, voted) in &v.voted {
                        if v.locked.contains_key(ttid) {
                            continue;
                        }
                        let part = self.pt.partition_of_tid(*ttid);
                        let cands: VecDeque<NodeId> = self
                            .pt
                            .readable_cells(part)
                            .into_iter()
                            .filter(|n| !voted.contains(n))
                            .collect();
                        queue.push_back((*ttid, cands));
                    }
                    let v = self.verification.as_mut().expect("verifying");
                    v.final_queue = queue;
                    v.step = VerifyStep::FinalTid;
                    self.ask_next_final_tid(out);
                }
                VerifyStep::FinalTid => {
                    // Every final tid asked: validate what was locked.
                    let v = self.verification.as_mut().expect("verifying");
                    let validate: Vec<(Tid, Tid, BTreeSet<NodeId>)> = v
                        .locked
                        .iter()
                        .filter_map(|(ttid, tid)| {
                            let set = v.voted.get(ttid)?;
                            Some((*ttid, *tid, set.clone()))
                        })
                        .collect();
                    v.step = VerifyStep::LastIds;
                    for (ttid, tid, set) in validate {
                        for n in set {
                            self.send(out, n, p::ValidateTransaction { ttid, tid });
                        }
                    }
                    let storages = self.identified_of(NodeType::Storage);
                    if let Some(v) = self.verification.as_mut() {
                        v.waiting = storages.iter().copied().collect();
                    }
                    for n in storages {
                        self.ask(out, n, p::AskLastIDs {});
                    }
                }
                VerifyStep::LastIds => {
                    self.last_transaction = v.last_tid;
                    self.truncate_tid = None;
                    let readable: BTreeSet<NodeId> = self
                        .pt
                        .node_ids()
                        .into_iter()
                        .filter(|n| {
                            !self.pt.readable_offsets(*n).is_empty() && self.conn_of(*n).is_some()
                        })
                        .collect();
                    let pack_id = readable
                        .iter()
                        .filter_map(|n| self.completed_pack.get(n))
                        .min()
                        .map_or(ZERO_TID, |t| Tid(t.0 + 1));
                    let v = self.verification.as_mut().expect("verifying");
                    v.step = VerifyStep::PackOrders;
                    v.waiting = readable.clone();
                    for n in readable {
                        self.ask(out, n, p::AskPackOrders { pack_id });
                    }
                }
                VerifyStep::PackOrders => {
                    self.verification = None;
                    if self.recovery.resume_backup.is_some() {
                        let tids = std::mem::take(&mut self.recovery.backup);
                        self.resume_backup(out, &tids);
                        return;
                    }
                    if self.backup_at_once && self.last_transaction == ZERO_TID {
                        // `--backup`: an empty database backs up at once.
                        self.resume_backup(out, &HashMap::new());
                        return;
                    }
                    log::info!("provide service");
                    self.change_state(out, ClusterState::Running);
                    return;
                }
            }
        }
    }

    fn ask_next_final_tid(&mut self, out: &mut Outbox) {
        loop {
            let Some(v) = self.verification.as_mut() else {
                return;
            };
            let Some((ttid, cands)) = v.final_queue.front_mut() else {
                return;
            };
            let ttid = *ttid;
            match cands.pop_front() {
                Some(n) => {
                    if self.conn_of(n).is_none() {
                        continue;
                    }
                    if let Some(v) = self.verification.as_mut() {
                        v.waiting.insert(n);
                    }
                    self.ask(out, n, p::AskFinalTID { ttid });
                    return;
                }
                None => {
                    // Not locked anywhere: storages drop it themselves.
                    v.final_queue.pop_front();
                }
            }
        }
    }

    /// The cluster is no longer operational: stop the service and go back
    /// to recovery (NEO's StoppedOperation in `playPrimaryRole`).
    fn stopped_operation(&mut self, out: &mut Outbox) {
        log::error!("no longer operational");
        self.stop_operation(out, None);
    }

    /// Leaves the service (and tells the storages to truncate if asked),
    /// then recovers again; restarts by itself unless truncating.
    fn stop_operation(&mut self, out: &mut Outbox, truncate: Option<Tid>) {
        self.startup_allowed = self.truncate_tid.is_none() && truncate.is_none();
        self.packs.clear();
        self.max_completed = None;
        self.verification = None;
        self.storage_readiness = 0;
        self.storage_ready.clear();
        self.storage_starting.clear();
        self.delayed_begins.clear();
        let mut changed = Vec::new();
        for (nid, t, conn) in self.identified() {
            match t {
                NodeType::Client => {
                    out.notify(conn, p::StopOperation {});
                    out.close(conn);
                    self.client_lost(out, nid);
                }
                NodeType::Storage => {
                    out.notify(conn, p::StopOperation {});
                    if let Some(tid) = truncate {
                        out.notify(conn, p::Truncate { tid });
                    }
                    if let Some(node) = self.nodes.by_nid_mut(nid) {
                        if node.state == NodeState::Running {
                            node.state = NodeState::Pending;
                            changed.push(node.info());
                        }
                    }
                }
                _ => {}
            }
        }
        self.broadcast_nodes(out, &changed);
        self.tm.reset();
        self.recovery = Recovery::default();
        self.pt = self.empty_pt.clone();
        log::info!("begin the recovery of the status");
        self.change_state(out, ClusterState::Recovering);
        self.connect_masters(out);
    }

    // ---- identification ------------------------------------------------

    /// NEO's `getNewUUID`.
    fn new_uuid(&self, uuid: Option<NodeId>, address: Option<&Address>, t: NodeType) -> NodeId {
        if let Some(u) = uuid.filter(|u| *u != self.uuid) {
            match self.nodes.by_nid(u) {
                None => return u,
                Some(n) if n.address.as_ref() == address => return u,
                _ => {}
            }
        }
        for i in 1..0x0100_0000 {
            let cand = NodeId::new(t, i);
            match self.nodes.by_nid(cand) {
                None => return cand,
                Some(n) if address.is_some() && n.address.as_ref() == address => return cand,
                _ => {}
            }
        }
        NodeId::new(t, 0xff_ffff)
    }

    fn identify(&mut self, out: &mut Outbox, conn: ConnId, id: u32, req: p::RequestIdentification) {
        if !self.is_primary() {
            return self.secondary_identify(out, conn, id, req);
        }
        if req.name.as_ref() != self.cfg.cluster.as_bytes() {
            log::error!("reject an alien cluster");
            return self.refuse(
                out,
                conn,
                id,
                ErrorCode::ProtocolError,
                "invalid cluster name",
            );
        }
        if req.address.as_ref() == Some(&self.cfg.address) {
            return self.refuse(out, conn, id, ErrorCode::ProtocolError, "address conflict");
        }
        let by_addr = req
            .address
            .as_ref()
            .and_then(|a| self.nodes.by_address(a))
            .and_then(|n| n.nid.map(|x| (x, n.conn.is_some())));
        let by_uuid = req
            .uuid
            .and_then(|u| self.nodes.by_nid(u))
            .and_then(|n| n.nid.map(|x| (x, n.conn.is_some())));
        let mut uuid = req.uuid;
        // The known entry this peer is.
        let existing: Option<NodeId> = match (by_addr, by_uuid) {
            // A node of this address, not connected: it is this peer,
            // unless the peer claims the (permanent) id of another one.
            (Some((a, false)), by_uuid)
                if by_uuid.is_none_or(|(u, _)| u == a) || req.uuid.is_some_and(|u| u.0 < 0) =>
            {
                Some(a)
            }
            (Some(_), _) => {
                return self.refuse(out, conn, id, ErrorCode::ProtocolError, "already connected");
            }
            (None, Some((u, true))) => {
                if u.0 < 0 {
                    uuid = None;
                    None
                } else {
                    return self.refuse(
                        out,
                        conn,
                        id,
                        ErrorCode::ProtocolError,
                        "already connected",
                    );
                }
            }
            (None, Some((u, false))) => {
                if u == self.uuid {
                    None
                } else {
                    Some(u)
                }
            }
            (None, None) => None,
        };
        let state = match req.node_type {
            NodeType::Client => {
                if self.state == ClusterState::BackingUp {
                    // Read-only clients only (NEO's ClientBackupServiceHandler).
                    let ro = req
                        .extra
                        .iter()
                        .any(|(k, v)| k.as_ref() == b"read_only" && matches!(v, Value::Bool(true)));
                    if !ro {
                        return self.refuse(
                            out,
                            conn,
                            id,
                            ErrorCode::ReadOnlyAccess,
                            "read-write access requested but cluster is backing up",
                        );
                    }
                } else if self.state != ClusterState::Running {
                    return self.refuse(out, conn, id, ErrorCode::NotReady, "Retry Later");
                }
                NodeState::Running
            }
            NodeType::Storage => {
                if req.address.is_none() {
                    return self.refuse(
                        out,
                        conn,
                        id,
                        ErrorCode::ProtocolError,
                        "storage without address",
                    );
                }
                let known = req.uuid.is_some() && existing.is_some();
                match self.state {
                    ClusterState::Recovering => NodeState::Pending,
                    _ if known => NodeState::Running,
                    _ => NodeState::Pending,
                }
            }
            NodeType::Admin => NodeState::Running,
            NodeType::Master => {
                if req.address.is_none() {
                    return self.refuse(
                        out,
                        conn,
                        id,
                        ErrorCode::ProtocolError,
                        "master without address",
                    );
                }
                if self.primary_meets_master(out, &req).is_err() {
                    return; // it won: we follow it
                }
                NodeState::Running
            }
        };
        // NEO moves a known node to the address it comes from first.
        if let (Some(e), Some(addr)) = (existing, req.address.as_ref()) {
            if let Some(n) = self.nodes.by_nid_mut(e) {
                n.address = Some(addr.clone());
            }
        }
        let nid = self.new_uuid(uuid, req.address.as_ref(), req.node_type);
        log::info!(
            "accept a {} {nid} ({state})",
            req.node_type.name().to_lowercase()
        );
        let id_timestamp = self.now_ts();
        let entry = match existing.and_then(|e| self.nodes.by_nid_mut(e)) {
            Some(n) => n,
            None => self.nodes.add(NodeEntry::new(req.node_type, state)),
        };
        entry.nid = Some(nid);
        entry.node_type = req.node_type;
        entry.address = req.address.clone();
        entry.state = state;
        entry.id_timestamp = Some(id_timestamp);
        entry.conn = None;
        let info = entry.info();
        if req.node_type == NodeType::Client {
            let ro = req
                .extra
                .iter()
                .any(|(k, v)| k.as_ref() == b"read_only" && matches!(v, Value::Bool(true)));
            // A backup master is a read-only client (NEO's default).
            let backup = req.extra.iter().any(|(k, _)| k.as_ref() == b"backup");
            if ro || backup {
                self.read_only.insert(nid);
            } else {
                self.read_only.remove(&nid);
            }
            if backup {
                self.backup_clients.insert(nid);
            } else {
                self.backup_clients.remove(&nid);
            }
        }
        self.broadcast_nodes(out, std::slice::from_ref(&info));
        if let Some(node) = self.nodes.by_nid_mut(nid) {
            node.conn = Some(conn);
        }
        self.accepted.remove(&conn);
        out.answer(
            conn,
            id,
            p::AcceptIdentification {
                node_type: NodeType::Master,
                uuid: Some(self.uuid),
                your_uuid: Some(nid),
            },
        );
        // The peer's own entry first, then what its type must know.
        let mut list = vec![info];
        for n in self.nodes.iter() {
            if n.nid != Some(nid) && Self::visible_to(n.node_type, req.node_type) {
                list.push(n.info());
            }
        }
        let timestamp = self.now_ts();
        out.notify(
            conn,
            p::NotifyNodeInformation {
                timestamp,
                node_list: list,
            },
        );
        match (req.node_type, self.state) {
            (NodeType::Storage, ClusterState::Recovering) => self.ask(out, nid, p::AskRecovery {}),
            (
                NodeType::Storage,
                ClusterState::Running | ClusterState::StartingBackup | ClusterState::BackingUp,
            ) => {
                self.send_pt(out, nid);
                if state == NodeState::Running {
                    self.start_storage(out, nid);
                }
            }
            // Secondary masters get no partition table.
            (NodeType::Master, _) => {}
            _ => self.send_pt(out, nid),
        }
    }

    fn refuse(&mut self, out: &mut Outbox, conn: ConnId, id: u32, code: ErrorCode, msg: &str) {
        log::warn!("refused identification on connection {conn}: {msg}");
        out.error(conn, id, code, msg);
        out.close(conn);
        self.accepted.remove(&conn);
    }

    // ---- connection loss -----------------------------------------------

    fn conn_closed(&mut self, out: &mut Outbox, conn: ConnId) {
        self.pending_asks.remove(&conn);
        for w in self.pack_waiters.values_mut() {
            w.retain(|&(c, _)| c != conn);
        }
        if self.accepted.remove(&conn) {
            return;
        }
        let Some(node) = self.nodes.by_conn_mut(conn) else {
            return;
        };
        node.conn = None;
        let (Some(nid), t) = (node.nid, node.node_type) else {
            return;
        };
        log::info!("connection to {nid} lost");
        match t {
            NodeType::Client => self.client_lost(out, nid),
            NodeType::Admin => {
                self.nodes.remove(nid);
            }
            NodeType::Storage => self.storage_lost(out, nid),
            NodeType::Master => {
                if let Some(node) = self.nodes.by_nid_mut(nid) {
                    node.state = NodeState::Down;
                    let info = node.info();
                    self.broadcast_nodes(out, &[info]);
                }
                self.connect_masters(out);
            }
        }
    }

    fn client_lost(&mut self, out: &mut Outbox, nid: NodeId) {
        for (ttid, uuids) in self.tm.client_lost(nid) {
            log::info!("abort transaction {:016x} of lost client {nid}", ttid.0);
            self.notify_aborted(out, ttid, &uuids);
        }
        self.delayed_begins
            .retain(|(c, _, _)| self.nodes.by_conn(*c).is_some_and(|n| n.nid != Some(nid)));
        self.read_only.remove(&nid);
        self.backup_clients.remove(&nid);
        if let Some(mut node) = self.nodes.remove(nid) {
            node.state = NodeState::Unknown;
            let info = node.info();
            self.broadcast_nodes(out, &[info]);
        }
        self.executed_queued(out);
        self.maybe_finish_shutdown(out);
    }

    fn storage_lost(&mut self, out: &mut Outbox, nid: NodeId) {
        if self.stopping {
            return;
        }
        match self.state {
            ClusterState::Recovering => {
                self.recovery.truncate.remove(&nid);
                if let Some(ask) = self.recovery.ask_pt.as_mut() {
                    if let Some(i) = ask.iter().position(|n| *n == nid) {
                        ask.remove(i);
                        if i == 0 {
                            if let Some(&next) = ask.first() {
                                self.ask(out, next, p::AskPartitionTable {});
                            } else {
                                log::warn!(
                                    "waiting for {nid} to come back: no other node has \
                                     version {} of the partition table",
                                    self.recovery.target_ptid
                                );
                            }
                        }
                    }
                }
                if let Some(node) = self.nodes.by_nid_mut(nid) {
                    if node.state != NodeState::Down {
                        node.state = NodeState::Down;
                        let info = node.info();
                        self.broadcast_nodes(out, &[info]);
                    }
                }
            }
            ClusterState::Verifying | ClusterState::Running => {
                if let Some(v) = self.verification.as_mut() {
                    v.waiting.remove(&nid);
                    for (_, c) in v.final_queue.iter_mut() {
                        c.retain(|n| *n != nid);
                    }
                }
                let Some(node) = self.nodes.by_nid_mut(nid) else {
                    return;
                };
                log::info!("storage node {nid} lost");
                let info = match node.state {
                    NodeState::Pending => {
                        node.state = NodeState::Unknown;
                        let info = node.info();
                        self.nodes.remove(nid);
                        info
                    }
                    NodeState::Down => return,
                    _ => {
                        node.state = NodeState::Down;
                        node.info()
                    }
                };
                self.broadcast_nodes(out, &[info]);
                if self.truncate_tid.is_some() {
                    self.stopped_operation(out);
                    return;
                }
                let nodes = &self.nodes;
                let changes = self.pt.outdate(Some(nid), |n| nodes.is_running(n));
                self.broadcast_pt_changes(out, changes);
                self.storage_starting.remove(&nid);
                self.storage_ready.remove(&nid);
                let done = self.tm.storage_lost(nid);
                self.committed(out, done);
                self.update_completed_pack();
                self.answer_pack_waiters(out);
                if !self.operational(&BTreeSet::new()) {
                    self.stopped_operation(out);
                    return;
                }
                self.executed_queued(out);
                if self.verification.is_some() {
                    if self
                        .verification
                        .as_ref()
                        .is_some_and(|v| v.step == VerifyStep::FinalTid)
                    {
                        self.ask_next_final_tid(out);
                    }
                    self.verification_advance(out);
                }
            }
            _ => {}
        }
    }

    // ---- packets -------------------------------------------------------

    fn packet(&mut self, out: &mut Outbox, conn: ConnId, packet: Packet) {
        let id = packet.id;
        let kind = packet.body.kind();
        if matches!(kind, PacketKind::Answer | PacketKind::Error) {
            if let Some(n) = self.pending_asks.get_mut(&conn) {
                *n = n.saturating_sub(1);
            }
        }
        if self.accepted.contains(&conn) {
            match packet.body {
                Body::RequestIdentification(req) => self.identify(out, conn, id, req),
                Body::Ping(_) => out.answer(conn, id, p::Pong {}),
                other => {
                    let msg = format!("unexpected packet {} before identification", other.name());
                    out.error(conn, id, ErrorCode::ProtocolError, &msg);
                    out.close(conn);
                    self.accepted.remove(&conn);
                }
            }
            return;
        }
        let Some((nid, t)) = self
            .nodes
            .by_conn(conn)
            .and_then(|n| Some((n.nid?, n.node_type)))
        else {
            return; // a connection we no longer know
        };
        let body = match self.common(out, conn, id, packet.body) {
            Some(b) => b,
            None => return,
        };
        let name = body.name();
        let rest = match t {
            NodeType::Storage => self.storage_packet(out, conn, id, nid, body),
            NodeType::Client => self.client_packet(out, conn, id, nid, body),
            NodeType::Admin => self.admin_packet(out, conn, id, body),
            NodeType::Master => Some(body),
        };
        if let Some(body) = rest {
            if body.kind() == PacketKind::Request {
                let msg = format!("unexpected packet type {name} from {nid}");
                self.protocol_error(out, conn, id, &msg);
            } else {
                log::warn!("ignored unexpected {name} from {nid}");
            }
        }
    }

    /// Requests any identified node may send (NEO's `MasterHandler`).
    fn common(&mut self, out: &mut Outbox, conn: ConnId, id: u32, body: Body) -> Option<Body> {
        match body {
            Body::Ping(_) => out.answer(conn, id, p::Pong {}),
            Body::Pong(_) => {}
            Body::AskClusterState(_) => {
                out.answer(conn, id, p::AnswerClusterState { state: self.state })
            }
            Body::AskRecovery(_) => out.answer(
                conn,
                id,
                p::AnswerRecovery {
                    ptid: self.pt.ptid(),
                    backup_tid: self.backup_tid(),
                    truncate_tid: self.truncate_tid,
                },
            ),
            Body::AskLastIDs(_) => {
                let answer = p::AnswerLastIDs {
                    last_tid: Some(self.tm.last_tid(self.last_transaction)),
                    last_oid: Some(self.tm.last_oid()),
                    first_tid: Some(self.tm.first_tid()),
                };
                out.answer(conn, id, answer)
            }
            Body::AskLastTransaction(_) => {
                // Clients of a backup cluster read up to the backup tid.
                let client = self
                    .nodes
                    .by_conn(conn)
                    .is_some_and(|n| n.node_type == NodeType::Client);
                let tid = match self.backup_read_tid() {
                    Some(t) if client => t,
                    _ => self.last_transaction,
                };
                out.answer(conn, id, p::AnswerLastTransaction { tid })
            }
            Body::Error(e) => log::warn!(
                "error from peer on connection {conn}: {} {}",
                e.code,
                String::from_utf8_lossy(&e.message)
            ),
            other => return Some(other),
        }
        None
    }

    fn storage_packet(
        &mut self,
        out: &mut Outbox,
        conn: ConnId,
        id: u32,
        nid: NodeId,
        body: Body,
    ) -> Option<Body> {
        match body {
            Body::AnswerRecovery(a) if self.state == ClusterState::Recovering => {
                self.recovery.truncate.insert(nid, a.truncate_tid);
                self.recovery.backup.insert(nid, a.backup_tid);
                if let Some(ptid) = a.ptid {
                    let r = &mut self.recovery;
                    if r.target_ptid <= ptid {
                        if r.target_ptid == ptid && r.ask_pt.as_ref().is_some_and(|v| !v.is_empty())
                        {
                            if let Some(v) = r.ask_pt.as_mut() {
                                v.push(nid);
                            }
                        } else if r.target_ptid < ptid || r.ask_pt.is_some() {
                            r.target_ptid = ptid;
                            r.ask_pt = Some(vec![nid]);
                            self.ask(out, nid, p::AskPartitionTable {});
                        }
                    }
                }
            }
            Body::AnswerPartitionTable(a) if self.state == ClusterState::Recovering => {
                if a.ptid == Some(self.recovery.target_ptid) {
                    self.load_pt(out, a);
                    self.truncate_tid = self.recovery.truncate.get(&nid).copied().flatten();
                    self.recovery.resume_backup = self.recovery.backup.get(&nid).copied().flatten();
                }
            }
            Body::AnswerRecovery(_) | Body::AnswerPartitionTable(_) => {}
            Body::AnswerLockedTransactions(a) => {
                if let Some(v) = self.verification.as_mut() {
                    if v.step == VerifyStep::Locked && v.waiting.remove(&nid) {
                        for (ttid, tid) in a.tid_dict.iter() {
                            if let Some(tid) = tid {
                                v.locked.insert(*ttid, *tid);
                            }
                            v.voted.entry(*ttid).or_default().insert(nid);
                        }
                        self.verification_advance(out);
                    }
                }
            }
            Body::AnswerFinalTID(a) => {
                if let Some(v) = self.verification.as_mut() {
                    if v.step == VerifyStep::FinalTid && v.waiting.remove(&nid) {
                        if let Some(tid) = a.tid {
                            if let Some((ttid, _)) = v.final_queue.pop_front() {
                                v.locked.insert(ttid, tid);
                            }
                        }
                        self.ask_next_final_tid(out);
                        self.verification_advance(out);
                    }
                }
            }
            Body::AnswerLastIDs(a) => {
                if let Some(v) = self.verification.as_mut() {
                    if v.step == VerifyStep::LastIds && v.waiting.remove(&nid) {
                        if let Some(t) = a.last_tid {
                            if t > v.last_tid {
                                v.last_tid = t;
                            }
                        }
                        self.tm.set_last_oid(a.last_oid);
                        self.tm.set_first_tid(a.first_tid);
                        self.verification_advance(out);
                    }
                }
            }
            Body::AnswerPackOrders(a) => {
                if let Some(v) = self.verification.as_mut() {
                    if v.step == VerifyStep::PackOrders && v.waiting.remove(&nid) {
                        for entry in a.pack_list {
                            self.add_pack(entry);
                        }
                        self.verification_advance(out);
                    }
                }
            }
            Body::NotifyPackCompleted(n) => {
                self.completed_pack.insert(nid, n.pack_id);
                if self.state == ClusterState::Running {
                    self.update_completed_pack();
                    self.answer_pack_waiters(out);
                }
            }
            Body::AskPackOrders(a) => {
                let pack_list = self.dump_packs(a.pack_id, true);
                out.answer(conn, id, p::AnswerPackOrders { pack_list });
            }
            Body::NotifyReady(_) if self.state == ClusterState::Running => {
                if self.storage_starting.remove(&nid) {
                    self.storage_readiness += 1;
                    self.storage_ready.insert(nid, self.storage_readiness);
                    log::info!("storage {nid} ready");
                    // NEO's setStorageReady: the signed pack orders, to
                    // process those left.
                    let (approved, rejected) = self.approved_rejected(ZERO_TID);
                    if !approved.is_empty() || !rejected.is_empty() {
                        self.send(out, nid, p::NotifyPackSigned { approved, rejected });
                    }
                    self.executed_queued(out);
                }
            }
            Body::NotifyReady(_) => {}
            Body::AnswerInformationLocked(a) => {
                if matches!(self.state, ClusterState::Running | ClusterState::Stopping) {
                    let done = self.tm.lock(a.ttid, nid);
                    self.committed(out, done);
                    self.executed_queued(out);
                    self.maybe_finish_shutdown(out);
                }
            }
            Body::AskUnfinishedTransactions(_) => {
                let ttid_list = self.tm.register_for_notification(nid);
                out.answer(
                    conn,
                    id,
                    p::AnswerUnfinishedTransactions {
                        max_tid: self.last_transaction,
                        ttid_list,
                    },
                );
            }
            Body::NotifyReplicationDone(n)
                if self.pt.cell(n.offset, nid) != Some(p::CellState::OutOfDate)
                    && self.backup_replication_done(out, nid, n.offset, n.tid) => {}
            Body::NotifyReplicationDone(n) => {
                self.replication_done(out, conn, id, nid, n.offset);
                self.backup_cell_readable(out, nid, n.offset);
            }
            Body::NotifyPartitionCorrupted(n) => {
                log::error!("partition {} corrupted in: {:?}", n.partition, n.cell_list)
            }
            other => return Some(other),
        }
        None
    }

    fn load_pt(&mut self, out: &mut Outbox, a: p::AnswerPartitionTable) {
        let ptid = a.ptid;
        match PartitionTable::from_rows(ptid, a.num_replicas, a.row_list.clone()) {
            Ok(pt) => {
                let mut new_nodes = Vec::new();
                for n in pt.node_ids() {
                    if self.nodes.by_nid(n).is_none() {
                        let mut e = NodeEntry::new(NodeType::Storage, NodeState::Down);
                        e.nid = Some(n);
                        new_nodes.push(e.info());
                        self.nodes.add(e);
                    }
                }
                self.pt = pt;
                log::info!("partition table loaded (ptid={ptid:?})");
                let timestamp = self.now_ts();
                self.notify_admins(
                    out,
                    p::NotifyNodeInformation {
                        timestamp,
                        node_list: new_nodes,
                    }
                    .into(),
                );
                self.notify_admins(
                    out,
                    p::SendPartitionTable {
                        ptid,
                        num_replicas: a.num_replicas,
                        row_list: a.row_list,
                    }
                    .into(),
                );
                self.recovery.ask_pt = None;
            }
            Err(e) => log::error!("bad partition table from storage: {e}"),
        }
    }

    fn replication_done(
        &mut self,
        out: &mut Outbox,
        conn: ConnId,
        id: u32,
        nid: NodeId,
        offset: Offset,
    ) {
        match self.pt.cell(offset, nid) {
            Some(p::CellState::OutOfDate) => {}
            Some(_) => {
                log::info!("ignored late notification that {nid} replicated partition {offset}");
                return;
            }
            None => return self.protocol_error(out, conn, id, "Non-assigned partition"),
        }
        let mut changes = vec![(offset, nid, p::CellState::UpToDate)];
        let _ = self.pt.set_cell(offset, nid, p::CellState::UpToDate);
        let row: Vec<p::Cell> = self.pt.row(offset).to_vec();
        let readable = row
            .iter()
            .filter(|c| crate::pt::is_readable(c.state))
            .count();
        let feeding: Vec<NodeId> = row
            .iter()
            .filter(|c| c.state == p::CellState::Feeding)
            .map(|c| c.uuid)
            .collect();
        let drop_n = if readable == row.len() {
            feeding.len()
        } else {
            readable
                .saturating_sub(self.pt.nr() as usize)
                .min(feeding.len())
        };
        for n in feeding.into_iter().take(drop_n) {
            let _ = self.pt.set_cell(offset, n, p::CellState::Discarded);
            changes.push((offset, n, p::CellState::Discarded));
        }
        log::debug!("{nid} is up for partition {offset}");
        self.broadcast_pt_changes(out, changes);
    }

    /// NEO's `pm.dump`: the pack orders from `pack_id` (storages get only
    /// the first approved one).
    fn dump_packs(&self, pack_id: Tid, only_first_approved: bool) -> Vec<PackEntry> {
        let mut list = self.packs.range(pack_id..).map(|(_, e)| e);
        if only_first_approved {
            list.find(|e| e.1 == Some(true))
                .cloned()
                .into_iter()
                .collect()
        } else {
            list.cloned().collect()
        }
    }

    /// NEO's `pm.add`: a pack order known by a storage.
    fn add_pack(&mut self, entry: PackEntry) {
        let tid = entry.0;
        match self.packs.get_mut(&tid) {
            None => {
                self.packs.insert(tid, entry);
                if self.max_completed.is_some_and(|m| m > tid) {
                    self.max_completed = Some(add_tid_raw(tid, -1));
                }
            }
            Some(e) if e.1.is_none() => e.1 = entry.1,
            Some(_) => {}
        }
    }

    /// NEO's `updateCompletedPackId`: packs every readable storage
    /// completed are forgotten.
    fn update_completed_pack(&mut self) {
        let done = self
            .pt
            .node_ids()
            .into_iter()
            .filter(|n| !self.pt.readable_offsets(*n).is_empty())
            .filter_map(|n| self.completed_pack.get(&n).copied())
            .min();
        if let Some(done) = done {
            let completed: Vec<Tid> = self.packs.range(..=done).map(|(t, _)| *t).collect();
            for t in completed {
                self.packs.remove(&t);
                if self.max_completed.is_none_or(|m| m < t) {
                    self.max_completed = Some(t);
                }
            }
        }
    }

    /// Answers the WaitForPack of the packs that are not pending anymore
    /// (NEO's `Pack.completed`).
    fn answer_pack_waiters(&mut self, out: &mut Outbox) {
        let done: Vec<Tid> = self
            .pack_waiters
            .keys()
            .filter(|t| !self.packs.contains_key(t))
            .copied()
            .collect();
        for t in done {
            for (conn, id) in self.pack_waiters.remove(&t).unwrap_or_default() {
                out.answer(conn, id, p::WaitedForPack {});
            }
        }
    }

    /// NEO's `getApprovedRejected(min_tid)`: the last completed pack and
    /// the approved orders from `min`, and the rejected ones.
    fn approved_rejected(&self, min: Tid) -> (Vec<Tid>, Vec<Tid>) {
        let rejected = self
            .packs
            .range(min..)
            .filter(|(_, e)| e.1 == Some(false))
            .map(|(t, _)| *t)
            .collect();
        (self.approved_packs(min), rejected)
    }

    /// NEO's `getApprovedRejected(min_tid)[0]`: approved packs from `min`.
    fn approved_packs(&self, min: Tid) -> Vec<Tid> {
        let mut approved: Vec<Tid> = self
            .max_completed
            .filter(|m| min <= *m)
            .into_iter()
            .collect();
        approved.extend(
            self.packs
                .range(min..)
                .filter(|(_, e)| e.1 == Some(true))
                .map(|(t, _)| *t),
        );
        approved
    }

    // ---- client service ------------------------------------------------

    fn client_packet(
        &mut self,
        out: &mut Outbox,
        conn: ConnId,
        id: u32,
        nid: NodeId,
        body: Body,
    ) -> Option<Body> {
        let read_only = self.read_only.contains(&nid);
        let ro_msg = "read-only access as requested by the client";
        match body {
            Body::AskBeginTransaction(_)
            | Body::AskNewOIDs(_)
            | Body::AskFinishTransaction(_)
            | Body::AskFinalTID(_)
            | Body::FailedVote(_)
                if read_only =>
            {
                out.error(conn, id, ErrorCode::ReadOnlyAccess, ro_msg)
            }
            Body::AbortTransaction(_) if read_only => {
                out.error(conn, id, ErrorCode::ReadOnlyAccess, ro_msg)
            }
            Body::AskBeginTransaction(a) => {
                self.delayed_begins.push_back((conn, id, a.tid));
                self.executed_queued(out);
            }
            Body::AskNewOIDs(a) => match self.tm.new_oids(a.num_oids) {
                Some(oid_list) => out.answer(conn, id, p::AnswerNewOIDs { oid_list }),
                _ => self.protocol_error(out, conn, id, "too many oids requested"),
            },
            Body::AskFinishTransaction(a) => self.finish(out, conn, id, a),
            Body::AbortTransaction(a) => match self.tm.abort(a.ttid) {
                Ok(mut involved) => {
                    involved.extend(a.uuid_list);
                    self.notify_aborted(out, a.ttid, &involved);
                    self.executed_queued(out);
                    self.maybe_finish_shutdown(out);
                }
                Err(e) => self.protocol_error(out, conn, id, &e.to_string()),
            },
            Body::AskFinalTID(a) => match self.tm.final_tid(a.ttid, self.last_transaction) {
                Some(tid) => out.answer(conn, id, p::AnswerFinalTID { tid }),
                None => {
                    if let Some(t) = self.tm.get_mut(a.ttid) {
                        t.final_tid_waiters.push((nid, id));
                    }
                }
            },
            Body::FailedVote(a) => {
                let Some(txn) = self.tm.get(a.ttid) else {
                    let msg = TxnError::UnknownTtid(a.ttid).to_string();
                    self.protocol_error(out, conn, id, &msg);
                    return None;
                };
                let failed: BTreeSet<NodeId> = self
                    .ready_set(txn.storage_readiness)
                    .into_iter()
                    .filter(|n| a.failed.contains(n))
                    .collect();
                if !failed.is_empty() && !self.operational(&failed) {
                    out.error(conn, id, ErrorCode::IncompleteTransaction, "");
                } else {
                    if let Some(t) = self.tm.get_mut(a.ttid) {
                        t.failed = failed;
                    }
                    out.error(conn, id, ErrorCode::Ack, "");
                }
            }
            Body::AskPackOrders(a) => {
                let pack_list = self.dump_packs(a.pack_id, false);
                out.answer(conn, id, p::AnswerPackOrders { pack_list });
            }
            Body::WaitForPack(a) => {
                if self.packs.contains_key(&a.tid) {
                    self.pack_waiters.entry(a.tid).or_default().push((conn, id));
                } else {
                    out.answer(conn, id, p::WaitedForPack {});
                }
            }
            other => return Some(other),
        }
        None
    }

    /// Serves the delayed AskBeginTransaction when no storage is starting
    /// (NEO's `executeQueuedEvents` of the transaction manager).
    fn executed_queued(&mut self, out: &mut Outbox) {
        if self.state != ClusterState::Running || !self.storage_starting.is_empty() {
            return;
        }
        while let Some((conn, id, tid)) = self.delayed_begins.pop_front() {
            let Some(nid) = self.nodes.by_conn(conn).and_then(|n| n.nid) else {
                continue;
            };
            let now = self.now_ts();
            match self
                .tm
                .begin(nid, self.storage_readiness, tid, now, self.last_transaction)
            {
                Ok(ttid) => out.answer(conn, id, p::AnswerBeginTransaction { ttid }),
                Err(e) => self.protocol_error(out, conn, id, &e.to_string()),
            }
        }
    }

    fn finish(&mut self, out: &mut Outbox, conn: ConnId, id: u32, a: p::AskFinishTransaction) {
        if let Some((_, pack_tid)) = &a.pack {
            if !(ZERO_TID < *pack_tid && *pack_tid <= self.last_transaction) {
                return self.protocol_error(out, conn, id, "invalid pack time");
            }
        }
        let Some(txn) = self.tm.get(a.ttid) else {
            let msg = TxnError::UnknownTtid(a.ttid).to_string();
            return self.protocol_error(out, conn, id, &msg);
        };
        let failed = txn.failed.clone();
        let ready = self.ready_set(txn.storage_readiness);
        if !failed.is_empty() && !self.operational(&failed) {
            return self.incomplete(out, conn, id, a.ttid);
        }
        let mut partitions: BTreeSet<Offset> = a
            .oid_list
            .iter()
            .map(|o| self.pt.partition_of_oid(*o))
            .collect();
        partitions.extend(a.deleted.iter().copied());
        let partition_list: Vec<Offset> = partitions.iter().copied().collect();
        partitions.insert(self.pt.partition_of_tid(a.ttid));
        partitions.extend(a.checked.iter().copied());
        let mut involved = BTreeSet::new();
        let mut to_close = Vec::new();
        for part in &partitions {
            for cell in self.pt.row(*part) {
                let n = cell.uuid;
                let Some(c) = self.conn_of(n) else { continue };
                if failed.contains(&n) {
                    to_close.push(c);
                } else if ready.contains(&n) {
                    involved.insert(n);
                }
            }
        }
        for c in to_close {
            self.drop_conn(out, c);
        }
        if involved.is_empty() {
            return self.incomplete(out, conn, id, a.ttid);
        }
        let now = self.now_ts();
        let pack = a.pack.clone();
        let tid = match self.tm.prepare(
            a.ttid,
            now,
            self.last_transaction,
            self.pt.np(),
            a.oid_list,
            partition_list,
            involved.clone(),
            id,
            pack.clone(),
        ) {
            Ok(t) => t,
            Err(e) => return self.protocol_error(out, conn, id, &e.to_string()),
        };
        log::debug!("finish transaction {:016x} (was {:016x})", tid.0, a.ttid.0);
        if let Some((oids, pack_tid)) = &pack {
            let partial = oids.as_ref().is_some_and(|l| !l.is_empty());
            let oids = oids.as_ref().map(|l| {
                Value::Array(
                    l.iter()
                        .map(|o| Value::bin(o.to_bytes().to_vec()))
                        .collect(),
                )
            });
            self.packs
                .insert(tid, (tid, Some(true), partial, oids, *pack_tid));
        }
        for n in involved {
            self.ask(
                out,
                n,
                p::AskLockInformation {
                    ttid: a.ttid,
                    tid,
                    pack: pack.is_some(),
                },
            );
        }
    }

    fn incomplete(&mut self, out: &mut Outbox, conn: ConnId, id: u32, ttid: Tid) {
        out.error(conn, id, ErrorCode::IncompleteTransaction, "");
        let ready = self.ready_set(u64::MAX);
        if let Ok(mut involved) = self.tm.abort(ttid) {
            involved.extend(ready);
            self.notify_aborted(out, ttid, &involved);
        }
    }

    fn notify_aborted(&mut self, out: &mut Outbox, ttid: Tid, uuids: &BTreeSet<NodeId>) {
        let ready = self.ready_set(u64::MAX);
        for n in ready.intersection(uuids) {
            self.send(
                out,
                *n,
                p::AbortTransaction {
                    ttid,
                    uuid_list: Vec::new(),
                },
            );
        }
    }

    /// Every storage locked these transactions: answer the committer,
    /// invalidate the other clients, unlock the storages.
    fn committed(&mut self, out: &mut Outbox, done: Vec<Txn>) {
        for txn in done {
            let Some(tid) = txn.tid else { continue };
            log::debug!("transaction {:016x} committed", tid.0);
            for client in self.identified_of(NodeType::Client) {
                if Some(client) == txn.client {
                    if let Some(conn) = self.conn_of(client) {
                        out.answer(
                            conn,
                            txn.msg_id,
                            p::AnswerTransactionFinished {
                                ttid: txn.ttid,
                                tid,
                            },
                        );
                    }
                } else if self.backup_clients.contains(&client) {
                    let np = u64::from(self.pt.np().max(1));
                    let partitions: BTreeSet<Offset> = txn
                        .oid_list
                        .iter()
                        .map(|oid| (oid.0 % np) as Offset)
                        .collect();
                    self.send(
                        out,
                        client,
                        p::InvalidatePartitions {
                            tid,
                            partition_list: partitions.into_iter().collect(),
                        },
                    );
                } else {
                    self.send(
                        out,
                        client,
                        p::InvalidateObjects {
                            tid,
                            oid_list: txn.oid_list.clone(),
                        },
                    );
                }
            }
            for n in &txn.involved {
                self.send(out, *n, p::NotifyUnlockInformation { ttid: txn.ttid });
            }
            if txn.pack.is_some() {
                for n in self.ready_set(u64::MAX) {
                    self.send(
                        out,
                        n,
                        p::NotifyPackSigned {
                            approved: vec![tid],
                            rejected: Vec::new(),
                        },
                    );
                }
            }
            for n in &txn.notification {
                self.send(
                    out,
                    *n,
                    p::NotifyTransactionFinished {
                        ttid: txn.ttid,
                        max_tid: tid,
                    },
                );
            }
            for (client, req) in &txn.final_tid_waiters {
                if let Some(conn) = self.conn_of(*client) {
                    out.answer(conn, *req, p::AnswerFinalTID { tid: Some(tid) });
                }
            }
            if tid > self.last_transaction {
                self.last_transaction = tid;
            }
        }
    }

    // ---- admin service -------------------------------------------------

    fn admin_packet(
        &mut self,
        out: &mut Outbox,
        conn: ConnId,
        id: u32,
        body: Body,
    ) -> Option<Body> {
        let result = match body {
            Body::SetClusterState(a) => self.set_cluster_state(out, conn, id, a.state),
            Body::AskNodeList(a) => {
                let node_list = self.nodes.infos(a.node_type);
                out.answer(conn, id, p::AnswerNodeList { node_list });
                Ok(())
            }
            Body::AskPartitionList(a) => {
                out.answer(
                    conn,
                    id,
                    p::AnswerPartitionList {
                        ptid: self.pt.ptid(),
                        num_replicas: self.pt.nr(),
                        row_list: self
                            .pt
                            .row_list_filtered(a.min_offset, a.max_offset, a.uuid),
                    },
                );
                Ok(())
            }
            Body::AskPrimary(_) => {
                out.answer(
                    conn,
                    id,
                    p::AnswerPrimary {
                        primary_uuid: self.uuid,
                    },
                );
                Ok(())
            }
            Body::SetNodeState(a) => self.set_node_state(out, conn, id, a.uuid, a.state),
            Body::AddPendingNodes(a) => self.add_pending_nodes(out, conn, id, a.uuid_list),
            Body::TweakPartitionTable(a) => self.tweak(out, conn, id, a.dry_run, a.uuid_list),
            Body::SetNumReplicas(a) => self.check_running("setNumReplicas").map(|()| {
                self.pt.set_nr(a.num_replicas);
                let ptid = self.pt.next_ptid();
                let body = p::NotifyPartitionChanges {
                    ptid,
                    num_replicas: a.num_replicas,
                    cell_list: Vec::new(),
                };
                for (nid, t, _) in self.identified() {
                    if t != NodeType::Master {
                        self.send(out, nid, body.clone());
                    }
                }
                out.error(conn, id, ErrorCode::Ack, "");
            }),
            Body::Repair(a) => {
                let mut ok = true;
                for n in &a.uuid_list {
                    let valid = self
                        .nodes
                        .by_nid(*n)
                        .is_some_and(|x| x.node_type == NodeType::Storage && x.conn.is_some());
                    if !valid {
                        ok = false;
                    }
                }
                if ok {
                    for n in &a.uuid_list {
                        self.send(out, *n, p::NotifyRepair { dry_run: a.dry_run });
                    }
                    out.error(conn, id, ErrorCode::Ack, "");
                    Ok(())
                } else {
                    Err(denied("invalid storage node"))
                }
            }
            Body::FlushLog(_) => {
                for (_, _, c) in self.identified() {
                    if c != conn {
                        out.notify(c, p::FlushLog {});
                    }
                }
                Ok(())
            }
            Body::CheckReplicas(a) => {
                self.check_replicas(out, a);
                out.error(conn, id, ErrorCode::Ack, "");
                Ok(())
            }
            Body::Truncate(a) => self.truncate(out, conn, id, a.tid),
            other => return Some(other),
        };
        if let Err(Denied(msg)) = result {
            log::warn!("admin request denied: {msg}");
            out.error(conn, id, ErrorCode::Denied, &msg);
        }
        self.recovery_check(out);
        None
    }

    /// NEO's `checkReplicas`: for each partition with several readable
    /// cells, one node (preferably one already checking another partition)
    /// compares its data with the source (given, or any other replica).
    fn check_replicas(&mut self, out: &mut Outbox, a: p::CheckReplicas) {
        let max_tid = a.max_tid.unwrap_or(self.last_transaction);
        if a.min_tid > max_tid {
            log::warn!(
                "nothing to check: min_tid={:016x} > max_tid={:016x}",
                a.min_tid.0,
                max_tid.0
            );
            return;
        }
        let mut node_set: BTreeSet<NodeId> = BTreeSet::new();
        for (offset, source) in a.partition_dict.iter() {
            let cells = self.pt.readable_cells(*offset);
            if cells.len() <= 1 {
                continue;
            }
            let node = match cells.iter().find(|n| node_set.contains(n)) {
                Some(n) => *n,
                None => {
                    let Some(&n) = cells.last() else { continue };
                    node_set.insert(n);
                    n
                }
            };
            let address = source.and_then(|s| self.nodes.by_nid(s)?.address.clone());
            self.send(
                out,
                node,
                p::CheckPartition {
                    partition: *offset,
                    source: (neo_proto::Bytes::new(), address),
                    min_tid: a.min_tid,
                    max_tid,
                },
            );
        }
    }

    /// `neoctl truncate`: stop, tell the storages to truncate, recover.
    fn truncate(
        &mut self,
        out: &mut Outbox,
        conn: ConnId,
        id: u32,
        tid: Tid,
    ) -> Result<(), Denied> {
        self.check_running("truncate")?;
        if self.last_transaction <= tid {
            return Err(denied("Truncating after last transaction does nothing"));
        }
        if self.tm.first_tid() > tid {
            return Err(denied(
                "Truncating before first transaction is probably not what you intended to do",
            ));
        }
        if !self.approved_packs(add_tid_raw(tid, 1)).is_empty() {
            return Err(denied("Can not truncate before an approved pack"));
        }
        out.error(conn, id, ErrorCode::Ack, "");
        log::info!("truncating the database after {:016x}", tid.0);
        self.stop_operation(out, Some(tid));
        Ok(())
    }

    fn check_running(&self, rpc: &str) -> Result<(), Denied> {
        if self.state == ClusterState::Running {
            Ok(())
        } else {
            Err(denied(format!(
                "{rpc} RPC can not be used in {} state",
                self.state
            )))
        }
    }

    fn set_cluster_state(
        &mut self,
        out: &mut Outbox,
        conn: ConnId,
        id: u32,
        state: ClusterState,
    ) -> Result<(), Denied> {
        match state {
            ClusterState::Verifying => {
                if self.state != ClusterState::Recovering {
                    return Err(denied("Can not switch to this state"));
                }
                let storages = self.identified_of(NodeType::Storage);
                if storages.is_empty() {
                    return Err(denied("Cannot exit recovery without any storage node"));
                }
                if let Some(n) = storages.iter().find(|n| self.has_pending_asks(**n)) {
                    return Err(denied(format!(
                        "Cannot exit recovery now: node {n} is entering cluster"
                    )));
                }
                self.startup_allowed = true;
                out.error(conn, id, ErrorCode::Ack, "Cluster state changed");
            }
            ClusterState::Stopping => {
                out.error(conn, id, ErrorCode::Ack, "Cluster state changed");
                self.shutdown(out);
            }
            ClusterState::StartingBackup => {
                self.start_backup(out).map_err(denied)?;
                out.error(conn, id, ErrorCode::Ack, "Cluster state changed");
            }
            ClusterState::StoppingBackup => {
                if !matches!(
                    self.state,
                    ClusterState::StartingBackup | ClusterState::BackingUp
                ) {
                    return Err(denied("Can not switch to this state"));
                }
                out.error(conn, id, ErrorCode::Ack, "Cluster state changed");
                self.stop_backup(out);
            }
            _ => return Err(denied("Invalid state requested")),
        }
        Ok(())
    }

    fn shutdown(&mut self, out: &mut Outbox) {
        log::info!("shutting down the cluster");
        self.change_state(out, ClusterState::Stopping);
        self.stopping = true;
        self.maybe_finish_shutdown(out);
    }

    fn maybe_finish_shutdown(&mut self, out: &mut Outbox) {
        if !self.stopping || self.tm.has_pending() {
            return;
        }
        log::info!("asking remaining nodes to shutdown");
        let now = self.now_ts();
        for (_, t, conn) in self.identified() {
            if t == NodeType::Storage {
                if let Some(n) = self.nodes.by_conn(conn) {
                    let info = NodeInfo {
                        state: NodeState::Down,
                        id_timestamp: None,
                        ..n.info()
                    };
                    out.notify(
                        conn,
                        p::NotifyNodeInformation {
                            timestamp: now,
                            node_list: vec![info],
                        },
                    );
                }
            }
            out.close(conn);
        }
        for conn in self.accepted.drain() {
            out.close(conn);
        }
        for (conn, _) in self.master_out.drain() {
            out.close(conn);
        }
        for n in self.nodes.iter_mut() {
            n.conn = None;
        }
        out.stop();
    }

    fn set_node_state(
        &mut self,
        out: &mut Outbox,
        conn: ConnId,
        id: u32,
        uuid: NodeId,
        state: NodeState,
    ) -> Result<(), Denied> {
        log::info!("set node state for {uuid}: {state}");
        let Some(node) = self.nodes.by_nid(uuid).cloned() else {
            return Err(denied("unknown node"));
        };
        let allowed = match node.node_type {
            NodeType::Master => state == NodeState::Down,
            NodeType::Storage => matches!(state, NodeState::Down | NodeState::Unknown),
            _ => false,
        };
        if !allowed {
            return Err(denied(format!("can not switch node to {state} state")));
        }
        if uuid == self.uuid {
            return Err(denied("can not kill primary master node"));
        }
        let state_changed = state != node.state;
        let mut message = if state_changed {
            "state changed".to_owned()
        } else {
            format!("node already in {state} state")
        };
        if node.node_type == NodeType::Storage {
            let keep = state == NodeState::Down;
            if node.state == NodeState::Running && !keep {
                return Err(denied("a running node must be stopped before removal"));
            }
            let drop_changes = self.drop_node_changes(uuid).map_err(denied)?;
            if let Some(n) = self.nodes.by_nid_mut(uuid) {
                n.state = state;
            }
            if let Some(c) = node.conn {
                let info = NodeInfo {
                    state,
                    ..node.info()
                };
                let timestamp = self.now_ts();
                out.notify(
                    c,
                    p::NotifyNodeInformation {
                        timestamp,
                        node_list: vec![info],
                    },
                );
                out.close(c);
                self.pending_asks.remove(&c);
                if let Some(n) = self.nodes.by_nid_mut(uuid) {
                    n.conn = None;
                }
                self.storage_starting.remove(&uuid);
                self.storage_ready.remove(&uuid);
                let done = self.tm.storage_lost(uuid);
                self.committed(out, done);
            }
            let changes = if keep {
                let nodes = &self.nodes;
                self.pt.outdate(None, |n| nodes.is_running(n))
            } else {
                for (o, n, s) in &drop_changes {
                    let _ = self.pt.set_cell(*o, *n, *s);
                }
                if !drop_changes.is_empty() {
                    message = "node permanently removed".to_owned();
                }
                drop_changes
            };
            self.broadcast_pt_changes(out, changes);
        } else if let Some(n) = self.nodes.by_nid_mut(uuid) {
            n.state = state;
        }
        out.error(conn, id, ErrorCode::Ack, &message);
        if state_changed {
            let info = self.info(uuid).unwrap_or(NodeInfo {
                state,
                ..node.info()
            });
            self.broadcast_nodes(out, &[info]);
        }
        if state == NodeState::Unknown {
            self.nodes.remove(uuid);
        }
        if matches!(self.state, ClusterState::Running | ClusterState::Verifying)
            && !self.operational(&BTreeSet::new())
        {
            self.stopped_operation(out);
        }
        Ok(())
    }

    /// NEO's `dropNodeList([node], simulate)`: the cell changes to drop a
    /// storage, or why it is refused.
    fn drop_node_changes(&self, uuid: NodeId) -> Result<Vec<CellChange>, String> {
        let mut changes = Vec::new();
        for offset in 0..self.pt.np() {
            let row = self.pt.row(offset);
            if !row.iter().any(|c| c.uuid == uuid) {
                continue;
            }
            let dropped_readable = row
                .iter()
                .any(|c| c.uuid == uuid && crate::pt::is_readable(c.state));
            changes.push((offset, uuid, p::CellState::Discarded));
            let rest: Vec<&p::Cell> = row.iter().filter(|c| c.uuid != uuid).collect();
            if let Some(f) = rest.iter().find(|c| c.state == p::CellState::Feeding) {
                changes.push((offset, f.uuid, p::CellState::UpToDate));
            } else if dropped_readable && !rest.iter().any(|c| c.state == p::CellState::UpToDate) {
                return Err(format!(
                    "Refuse to drop nodes that contain the only readable copies of partition {offset}"
                ));
            }
        }
        Ok(changes)
    }

    fn add_pending_nodes(
        &mut self,
        out: &mut Outbox,
        conn: ConnId,
        id: u32,
        uuid_list: Vec<NodeId>,
    ) -> Result<(), Denied> {
        self.check_running("addPendingNodes")?;
        let mut added = Vec::new();
        for n in self.nodes.iter_mut() {
            if n.node_type == NodeType::Storage
                && n.state == NodeState::Pending
                && n.nid.is_some_and(|x| uuid_list.contains(&x))
            {
                n.state = NodeState::Running;
                added.push(n.info());
            }
        }
        if added.is_empty() {
            log::warn!("No node added");
            out.error(conn, id, ErrorCode::Ack, "No node added");
            return Ok(());
        }
        let nids: Vec<NodeId> = added.iter().filter_map(|i| i.uuid).collect();
        for n in &nids {
            self.start_storage(out, *n);
        }
        self.broadcast_nodes(out, &added);
        let names: Vec<String> = nids.iter().map(|n| n.to_string()).collect();
        out.error(
            conn,
            id,
            ErrorCode::Ack,
            &format!("Nodes added: {}", names.join(", ")),
        );
        Ok(())
    }

    fn tweak(
        &mut self,
        out: &mut Outbox,
        conn: ConnId,
        id: u32,
        dry_run: bool,
        uuid_list: Vec<NodeId>,
    ) -> Result<(), Denied> {
        self.check_running("tweakPartitionTable")?;
        let mut keep = Vec::new();
        for n in self.nodes.of_type(NodeType::Storage) {
            let Some(nid) = n.nid else { continue };
            if uuid_list.contains(&nid) || n.state == NodeState::Pending {
                continue;
            }
            if n.state != NodeState::Running {
                return Err(denied("tweak: down nodes must be listed explicitly"));
            }
            keep.push(nid);
        }
        let mut pt = self.pt.clone();
        let changes = pt.tweak(&keep).map_err(|e| denied(e.to_string()))?;
        let changed = !changes.is_empty();
        if !dry_run {
            self.pt = pt.clone();
            self.broadcast_pt_changes(out, changes);
        }
        out.answer(
            conn,
            id,
            p::AnswerTweakPartitionTable {
                changed,
                row_list: pt.row_list(),
            },
        );
        Ok(())
    }
}

impl Node for Master {
    fn start(&mut self, _now: Instant, out: &mut Outbox) {
        log::info!(
            "master {} of cluster {:?} on {} (partitions {}, replicas {})",
            self.uuid,
            self.cfg.cluster,
            self.cfg.address,
            self.cfg.partitions,
            self.cfg.replicas
        );
        log::info!("begin the recovery of the status");
        self.election_start(out);
    }

    fn handle(&mut self, _now: Instant, event: Event, out: &mut Outbox) {
        match event {
            Event::Accepted { conn, peer } => {
                log::debug!("accepted connection {conn} from {peer}");
                if self.stopping {
                    out.close(conn);
                } else {
                    self.accepted.insert(conn);
                }
            }
            Event::Packet { conn, packet } if self.is_upstream(conn) => {
                self.upstream_packet(out, conn, packet)
            }
            Event::Connected { conn, .. } if self.is_upstream(conn) => {
                self.upstream_connected(out, conn)
            }
            Event::Closed { conn, error } if self.is_upstream(conn) => {
                let why = error.unwrap_or_else(|| "connection closed".into());
                self.upstream_lost(out, conn, &why)
            }
            Event::ConnectFailed { conn, error, .. } if self.is_upstream(conn) => {
                self.upstream_lost(out, conn, &error)
            }
            Event::Timer {
                token: backup::TIMER_UPSTREAM,
            } => self.upstream_timer(out),
            Event::Packet { conn, packet } if self.master_out.contains_key(&conn) => {
                self.master_out_packet(out, conn, packet)
            }
            Event::Packet { conn, packet } => self.packet(out, conn, packet),
            Event::Closed { conn, error } => {
                if let Some(e) = error {
                    log::debug!("connection {conn} broken: {e}");
                }
                match self.master_out.remove(&conn) {
                    Some(addr) => self.master_out_lost(out, conn, addr),
                    None => self.conn_closed(out, conn),
                }
            }
            Event::Connected { conn, .. } if self.master_out.contains_key(&conn) => {
                self.master_out_connected(out, conn)
            }
            Event::ConnectFailed { conn, error, .. } => {
                if let Some(addr) = self.master_out.remove(&conn) {
                    log::debug!("cannot connect to master {addr}: {error}");
                    self.master_out_lost(out, conn, addr);
                }
            }
            Event::Connected { conn, .. } => out.close(conn),
            Event::Timer {
                token: election::TIMER_ELECTION,
            } => self.election_timer_fired(out),
            Event::Timer { .. } => {}
        }
        self.recovery_check(out);
    }
}

/// `tid + delta` as a plain 64-bit number (NEO's `add64`).
fn add_tid_raw(tid: Tid, delta: i64) -> Tid {
    Tid(tid.0.wrapping_add_signed(delta))
}
