//! The admin node, as a sans-IO [`Node`]: it identifies to the primary
//! master as ADMIN, keeps the node list, the partition table and the
//! cluster state from the master's notifications, and serves `neoctl`
//! (which does not identify) on its listening socket.
//!
//! ```text
//! neoctl ──AskClusterState / AskNodeList / AskPartitionList / AskPrimary──▶ admin (answers itself)
//! neoctl ──SetClusterState, AddPendingNodes, Truncate, ... (id n)──▶ admin ──(own id m)──▶ master
//! neoctl ◀──answer or Error (id n)── admin ◀──answer or Error (id m)── master
//! neoctl ──AskMonitorInformation──▶ admin ──AskLastTransaction──▶ master (when operational)
//!                                      admin ──RequestIdentification(ADMIN, anonymous),
//!                                              AskMonitorInformation──▶ each running storage
//! ```
//!
//! Import progress (and any other background work of a storage's
//! backend) reaches `neoctl print summary` without a new packet: for each
//! summary request the admin asks every RUNNING storage node the question
//! neoctl asks it, `AskMonitorInformation`, identifying as NEO's admins do
//! upstream (ADMIN, no node id, no address). Our storage nodes answer with
//! their backend's status line as summary (empty: nothing to say); each
//! non-empty one becomes a line `S1: ...` under NEO's summary line. A
//! Python NEO storage refuses that identification: it is not asked again.
//! Storages that do not answer within [`MONITOR_TIMEOUT`] are left out.
//! The packets and their fields are NEO's: a Python neoctl prints the
//! extra lines, our neoctl works with a Python admin (no lines then), and
//! nothing changes between the master and the other nodes.
//!
//! When the master connection is lost the admin reconnects every second,
//! unless the cluster was STOPPING: then it stops, like NEO's. Also here:
//! the TID ↔ time conversions `neoctl` shows (`datetimeFromTID`,
//! `tidFromTime`) and the summary text of `neoctl print summary`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use neo_proto::{
    Address, AnswerClusterState, AnswerMonitorInformation, AnswerNodeList, AnswerPartitionList,
    AnswerPrimary, AskClusterState, AskLastTransaction, AskMonitorInformation, Body, Bytes,
    CellState, ClusterState, ErrorCode, FlushLog, Map, NodeId, NodeType, Packet, Pong,
    RequestIdentification, Tid, Value,
};

use crate::nodes::NodeTable;
use crate::pt::PartitionTable;
use crate::runtime::{ConnId, Event, Node, Outbox};

/// NEO's message when the admin has no primary master.
pub const NOT_CONNECTED_MESSAGE: &str = "Not connected to a primary master.";

const TOKEN_MASTER: u64 = 1;
const TOKEN_STORAGE: u64 = 2;
const TIMER_RECONNECT: u64 = 1;
/// Timer tokens from here on end the monitor round of the same number.
const TIMER_MONITOR_BASE: u64 = 1 << 32;
/// How long a summary waits for the storage nodes' status lines.
pub const MONITOR_TIMEOUT: Duration = Duration::from_secs(2);
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// What the admin needs to know.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Cluster name.
    pub cluster: String,
    /// Master addresses, tried in turn.
    pub masters: Vec<SocketAddr>,
    /// The address we listen on, as announced to the master.
    pub address: SocketAddr,
    /// A node id to ask for (`-i`).
    pub nid: Option<NodeId>,
}

/// Why we asked the master something ourselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnAsk {
    Identification,
    ClusterState,
    LastTransaction,
}

/// The admin node.
#[derive(Debug)]
pub struct Admin {
    cfg: AdminConfig,
    next_master: usize,
    master: Option<ConnId>,
    identified: bool,
    nid: Option<NodeId>,
    primary: Option<NodeId>,
    nodes: NodeTable,
    pt: Option<PartitionTable>,
    cluster_state: Option<ClusterState>,
    ltid: Option<Tid>,
    own: HashMap<u32, OwnAsk>,
    /// Master request id → (neoctl connection, neoctl's id).
    forwards: HashMap<u32, (ConnId, u32)>,
    /// neoctl requests waiting for AskLastTransaction (summary).
    monitor_waiting: Vec<(ConnId, u32)>,
    monitor_asking: bool,
    /// Connections to storage nodes asked for their status, this round.
    storage_asks: HashMap<ConnId, NodeId>,
    /// Their status lines, this round.
    storage_status: BTreeMap<NodeId, String>,
    /// Storage nodes that refused to be asked (Python NEO's).
    no_monitor: HashSet<NodeId>,
    monitor_round: u64,
    clients: HashSet<ConnId>,
    failure: Arc<Mutex<Option<String>>>,
}

impl Admin {
    /// A new admin node (call [`crate::runtime::spawn`] or add it to a Sim).
    pub fn new(cfg: AdminConfig) -> Admin {
        Admin {
            cfg,
            next_master: 0,
            master: None,
            identified: false,
            nid: None,
            primary: None,
            nodes: NodeTable::new(),
            pt: None,
            cluster_state: None,
            ltid: None,
            own: HashMap::new(),
            forwards: HashMap::new(),
            monitor_waiting: Vec::new(),
            monitor_asking: false,
            storage_asks: HashMap::new(),
            storage_status: BTreeMap::new(),
            no_monitor: HashSet::new(),
            monitor_round: 0,
            clients: HashSet::new(),
            failure: Arc::new(Mutex::new(None)),
        }
    }

    /// A handle telling, once the node has stopped, why it failed (e.g.
    /// the master refused our cluster name); `None` after a normal stop.
    pub fn exit_report(&self) -> Arc<Mutex<Option<String>>> {
        self.failure.clone()
    }

    /// Our node id, once identified.
    pub fn nid(&self) -> Option<NodeId> {
        self.nid
    }

    /// The cluster state last told by the master.
    pub fn cluster_state(&self) -> Option<ClusterState> {
        self.cluster_state
    }

    /// Whether we are identified with the primary master.
    pub fn is_connected(&self) -> bool {
        self.identified
    }

    fn operational(&self) -> bool {
        matches!(
            self.cluster_state,
            Some(ClusterState::Running | ClusterState::BackingUp)
        )
    }

    fn connect_master(&mut self, out: &mut Outbox) {
        if self.cfg.masters.is_empty() {
            error!("no master address");
            out.stop();
            return;
        }
        let addr = self.cfg.masters[self.next_master % self.cfg.masters.len()];
        self.next_master += 1;
        info!("connecting to master {addr}");
        self.master = Some(out.connect(addr, TOKEN_MASTER));
    }

    fn master_lost(&mut self, out: &mut Outbox, why: &str) {
        let was_stopping = self.cluster_state == Some(ClusterState::Stopping);
        if self.identified {
            error!("primary master is down: {why}");
        } else {
            warn!("no primary master: {why}");
        }
        self.master = None;
        self.identified = false;
        self.primary = None;
        self.own.clear();
        for (_, (conn, id)) in self.forwards.drain() {
            out.error(conn, id, ErrorCode::NotReady, NOT_CONNECTED_MESSAGE);
        }
        self.monitor_asking = false;
        self.answer_monitor(out);
        self.cluster_state = None;
        if was_stopping {
            info!("cluster stopped: exiting");
            for c in self.clients.drain() {
                out.close(c);
            }
            out.stop();
        } else {
            out.timer(RECONNECT_DELAY, TIMER_RECONNECT);
        }
    }

    fn ask_last_transaction(&mut self, out: &mut Outbox) {
        if let (Some(m), true) = (self.master, self.identified) {
            if !self.monitor_asking {
                let id = out.ask(m, AskLastTransaction {});
                self.own.insert(id, OwnAsk::LastTransaction);
                self.monitor_asking = true;
            }
        }
    }

    fn set_cluster_state(&mut self, state: ClusterState, out: &mut Outbox) {
        if self.cluster_state != Some(state) {
            info!("cluster state {state}");
            self.cluster_state = Some(state);
            if self.operational() {
                self.ask_last_transaction(out);
            }
        }
    }

    fn master_packet(&mut self, conn: ConnId, p: Packet, out: &mut Outbox) {
        // Notifications carry the master's own ids: only answers match ours.
        let answer = is_answer(&p.body);
        if let Some(kind) = answer.then(|| self.own.remove(&p.id)).flatten() {
            self.own_answer(conn, kind, p.body, out);
            return;
        }
        if let Some((client, id)) = answer.then(|| self.forwards.remove(&p.id)).flatten() {
            let protocol_error =
                matches!(&p.body, Body::Error(e) if e.code == ErrorCode::ProtocolError);
            out.send_with_id(client, id, p.body);
            if protocol_error {
                out.close(client);
                self.clients.remove(&client);
            }
            return;
        }
        match p.body {
            Body::NotifyNodeInformation(n) => {
                self.nodes.update(&n.node_list);
            }
            Body::SendPartitionTable(t) => {
                self.pt = PartitionTable::from_rows(t.ptid, t.num_replicas, t.row_list).ok();
            }
            Body::NotifyPartitionChanges(t) => {
                if let Some(pt) = self.pt.as_mut() {
                    if let Err(e) = pt.apply_changes(t.ptid, t.num_replicas, &t.cell_list) {
                        warn!("partition table update refused: {e}");
                    }
                }
            }
            Body::NotifyClusterInformation(c) => self.set_cluster_state(c.state, out),
            Body::Ping(_) => out.answer(conn, p.id, Pong {}),
            Body::NotPrimaryMaster(n) if !self.identified => {
                // A secondary master: go to the primary it names at once.
                let primary = n
                    .primary
                    .and_then(|i| n.known_master_list.get(i as usize))
                    .and_then(|a| {
                        let host = String::from_utf8_lossy(&a.host).into_owned();
                        crate::config::parse_address(&host, Some(a.port)).ok()
                    });
                let Some(addr) = primary else {
                    info!("not the primary master, which it does not know");
                    return; // it closes: the next master after a delay
                };
                info!("not the primary master; the primary is {addr}");
                self.next_master = match self.cfg.masters.iter().position(|m| *m == addr) {
                    Some(i) => i,
                    None => {
                        self.cfg.masters.push(addr);
                        self.cfg.masters.len() - 1
                    }
                };
                out.close(conn);
                self.own.clear();
                self.connect_master(out);
            }
            other => info!("master sent {} (ignored)", other.name()),
        }
    }

    fn own_answer(&mut self, conn: ConnId, kind: OwnAsk, body: Body, out: &mut Outbox) {
        match (kind, body) {
            (OwnAsk::Identification, Body::AcceptIdentification(a)) => {
                if a.node_type != NodeType::Master {
                    error!("not a master ({}): closing", a.node_type);
                    out.close(conn);
                    self.master_lost(out, "peer is no master");
                    return;
                }
                self.identified = true;
                self.nid = a.your_uuid;
                self.primary = a.uuid;
                info!(
                    "identified with primary master {} as {}",
                    a.uuid.map_or("?".into(), |u| u.to_string()),
                    a.your_uuid.map_or("?".into(), |u| u.to_string())
                );
                let id = out.ask(conn, AskClusterState {});
                self.own.insert(id, OwnAsk::ClusterState);
            }
            (OwnAsk::Identification, Body::Error(e)) => {
                let msg = String::from_utf8_lossy(&e.message).into_owned();
                out.close(conn);
                if e.code == ErrorCode::ProtocolError {
                    // Wrong cluster name and the like: retrying will not help.
                    let why = format!("master refused identification: {}: {msg}", e.code);
                    error!("{why}");
                    *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                    self.master = None;
                    out.stop();
                } else {
                    self.master_lost(out, &format!("{}: {msg}", e.code));
                }
            }
            (OwnAsk::ClusterState, Body::AnswerClusterState(s)) => {
                self.set_cluster_state(s.state, out);
            }
            (OwnAsk::LastTransaction, Body::AnswerLastTransaction(a)) => {
                self.ltid = Some(a.tid);
                self.monitor_asking = false;
                self.answer_monitor(out);
            }
            (OwnAsk::LastTransaction, _) => {
                self.monitor_asking = false;
                self.answer_monitor(out);
            }
            (kind, body) => warn!("unexpected answer to {kind:?}: {}", body.name()),
        }
    }

    /// Asks every running storage node for its status line (a new round,
    /// unless one is going on).
    fn ask_storages(&mut self, out: &mut Outbox) {
        if !self.storage_asks.is_empty() {
            return;
        }
        self.storage_status.clear();
        let targets: Vec<(NodeId, SocketAddr)> = self
            .nodes
            .of_type(NodeType::Storage)
            .filter(|n| n.is_running())
            .filter_map(|n| {
                let nid = n.nid.filter(|u| !self.no_monitor.contains(u))?;
                let a = n.address.as_ref()?;
                let host = String::from_utf8_lossy(&a.host);
                let ip = host.trim_matches(|c| c == '[' || c == ']').parse().ok()?;
                Some((nid, SocketAddr::new(ip, a.port)))
            })
            .collect();
        if targets.is_empty() {
            return;
        }
        self.monitor_round += 1;
        for (nid, addr) in targets {
            let conn = out.connect(addr, TOKEN_STORAGE);
            self.storage_asks.insert(conn, nid);
        }
        out.timer(MONITOR_TIMEOUT, TIMER_MONITOR_BASE + self.monitor_round);
    }

    /// A storage asked for its status is done with (answered, refused,
    /// closed): forget it, and answer neoctl once all are.
    fn storage_done(&mut self, conn: ConnId, out: &mut Outbox) {
        if self.storage_asks.remove(&conn).is_some() {
            out.close(conn);
            self.answer_monitor(out);
        }
    }

    fn storage_packet(&mut self, conn: ConnId, p: Packet, out: &mut Outbox) {
        let Some(&nid) = self.storage_asks.get(&conn) else {
            return;
        };
        match p.body {
            Body::AcceptIdentification(_) => {
                out.ask(conn, AskMonitorInformation {});
            }
            Body::AnswerMonitorInformation(a) => {
                let text = String::from_utf8_lossy(&a.summary).trim().to_owned();
                if !text.is_empty() {
                    self.storage_status.insert(nid, text);
                }
                self.storage_done(conn, out);
            }
            Body::Error(e) => {
                if e.code == ErrorCode::ProtocolError {
                    info!(
                        "storage {nid} does not give its status: {}",
                        String::from_utf8_lossy(&e.message)
                    );
                    self.no_monitor.insert(nid);
                }
                self.storage_done(conn, out);
            }
            Body::Ping(_) => out.answer(conn, p.id, Pong {}),
            _ => self.storage_done(conn, out),
        }
    }

    fn answer_monitor(&mut self, out: &mut Outbox) {
        if self.monitor_waiting.is_empty() || self.monitor_asking || !self.storage_asks.is_empty() {
            return;
        }
        let (warning, problem, summary) = self.monitor_information();
        for (conn, id) in self.monitor_waiting.drain(..) {
            out.answer(
                conn,
                id,
                AnswerMonitorInformation {
                    warning: warning.clone(),
                    problem: problem.clone(),
                    summary: Bytes::from(summary.clone()),
                },
            );
        }
    }

    /// `(warning, problem, summary)` as NEO's admin computes them for this
    /// cluster (no backup clusters).
    pub fn monitor_information(&self) -> (Vec<Option<Bytes>>, Vec<Option<Bytes>>, String) {
        if !self.identified {
            return (Vec::new(), vec![None], NOT_CONNECTED_MESSAGE.to_owned());
        }
        let mut counts: BTreeMap<CellState, usize> = BTreeMap::new();
        let mut down = HashSet::new();
        if let Some(pt) = &self.pt {
            for row in pt.rows() {
                for c in row {
                    *counts.entry(c.state).or_default() += 1;
                    if !self.nodes.is_running(c.uuid) {
                        down.insert(c.uuid);
                    }
                }
            }
        }
        let mut text = summary_text(
            self.cluster_state,
            &counts,
            down.len(),
            self.ltid.filter(|_| self.operational()),
        );
        // Lines of the last round, only while it is asked (operational).
        let lines = self.storage_status.iter().filter(|_| self.operational());
        for (nid, status) in lines {
            text.push_str(&format!("\n{nid}: {status}"));
        }
        let severity = if !down.is_empty() || !self.operational() {
            2
        } else if counts.keys().ne([CellState::UpToDate].iter()) {
            1
        } else {
            0
        };
        let flag = |n| {
            if severity == n {
                vec![None]
            } else {
                Vec::new()
            }
        };
        (flag(1), flag(2), text)
    }

    fn forward(&mut self, conn: ConnId, id: u32, body: Body, out: &mut Outbox) {
        let Some(master) = self.master.filter(|_| self.identified) else {
            out.error(conn, id, ErrorCode::NotReady, NOT_CONNECTED_MESSAGE);
            return;
        };
        let mid = out.ask(master, body);
        self.forwards.insert(mid, (conn, id));
    }

    fn client_packet(&mut self, conn: ConnId, p: Packet, out: &mut Outbox) {
        let id = p.id;
        if let Body::RequestIdentification(r) = &p.body {
            let msg = if r.node_type == NodeType::Admin {
                format!(
                    "unknown backup cluster {:?}",
                    String::from_utf8_lossy(&r.name)
                )
            } else {
                "reject non-admin node".to_owned()
            };
            out.error(conn, id, ErrorCode::ProtocolError, &msg);
            out.close(conn);
            self.clients.remove(&conn);
            return;
        }
        if matches!(p.body, Body::Ping(_)) {
            out.answer(conn, id, Pong {});
            return;
        }
        if !self.identified {
            if p.body.kind() == neo_proto::PacketKind::Request {
                out.error(conn, id, ErrorCode::NotReady, NOT_CONNECTED_MESSAGE);
            }
            return;
        }
        match p.body {
            Body::AskClusterState(_) => match self.cluster_state {
                Some(state) => out.answer(conn, id, AnswerClusterState { state }),
                None => out.error(conn, id, ErrorCode::NotReady, NOT_CONNECTED_MESSAGE),
            },
            Body::AskNodeList(r) => {
                let node_list = self.nodes.infos(r.node_type);
                out.answer(conn, id, AnswerNodeList { node_list });
            }
            Body::AskPartitionList(r) => match &self.pt {
                Some(pt) if r.min_offset <= pt.np() && r.max_offset <= pt.np() => {
                    out.answer(
                        conn,
                        id,
                        AnswerPartitionList {
                            ptid: pt.ptid(),
                            num_replicas: pt.nr(),
                            row_list: pt.row_list_filtered(r.min_offset, r.max_offset, r.uuid),
                        },
                    );
                }
                Some(_) => out.error(
                    conn,
                    id,
                    ErrorCode::ProtocolError,
                    "invalid partition table offset",
                ),
                None => out.error(conn, id, ErrorCode::NotReady, "no partition table yet"),
            },
            Body::AskPrimary(_) => match self.primary {
                Some(primary_uuid) => out.answer(conn, id, AnswerPrimary { primary_uuid }),
                None => out.error(conn, id, ErrorCode::NotReady, NOT_CONNECTED_MESSAGE),
            },
            Body::FlushLog(_) => {
                if let Some(m) = self.master {
                    out.notify(m, FlushLog {});
                }
                log::logger().flush();
            }
            Body::AskMonitorInformation(_) => {
                self.monitor_waiting.push((conn, id));
                if self.operational() {
                    self.ask_last_transaction(out);
                    self.ask_storages(out);
                } else {
                    self.answer_monitor(out);
                }
            }
            body @ (Body::AddPendingNodes(_)
            | Body::AskLastIDs(_)
            | Body::AskLastTransaction(_)
            | Body::AskRecovery(_)
            | Body::CheckReplicas(_)
            | Body::Repair(_)
            | Body::SetClusterState(_)
            | Body::SetNodeState(_)
            | Body::SetNumReplicas(_)
            | Body::Truncate(_)
            | Body::TweakPartitionTable(_)) => self.forward(conn, id, body, out),
            other => {
                warn!("unexpected {} from neoctl: closing", other.name());
                if other.kind() == neo_proto::PacketKind::Request {
                    out.error(conn, id, ErrorCode::ProtocolError, "unexpected packet");
                }
                out.close(conn);
                self.clients.remove(&conn);
            }
        }
    }
}

fn is_answer(b: &Body) -> bool {
    matches!(
        b.kind(),
        neo_proto::PacketKind::Answer | neo_proto::PacketKind::Error
    )
}

impl Node for Admin {
    fn start(&mut self, _now: Instant, out: &mut Outbox) {
        self.connect_master(out);
    }

    fn handle(&mut self, _now: Instant, event: Event, out: &mut Outbox) {
        match event {
            Event::Accepted { conn, peer } => {
                info!("accepted connection from {peer}");
                self.clients.insert(conn);
            }
            Event::Connected { conn, .. } if Some(conn) == self.master => {
                let a = self.cfg.address;
                let mut extra = Map::new();
                extra
                    .0
                    .push((Bytes::from_static(b"backup"), Value::Array(Vec::new())));
                let id = out.ask(
                    conn,
                    RequestIdentification {
                        node_type: NodeType::Admin,
                        uuid: self.cfg.nid,
                        address: Some(Address::new(&a.ip().to_string(), a.port())),
                        name: Bytes::from(self.cfg.cluster.clone().into_bytes()),
                        id_timestamp: None,
                        extra,
                    },
                );
                self.own.insert(id, OwnAsk::Identification);
            }
            Event::ConnectFailed { conn, error, .. } if Some(conn) == self.master => {
                self.master_lost(out, &error);
            }
            Event::Connected { conn, .. } if self.storage_asks.contains_key(&conn) => {
                let id = RequestIdentification {
                    node_type: NodeType::Admin,
                    uuid: None,
                    address: None,
                    name: Bytes::from(self.cfg.cluster.clone().into_bytes()),
                    id_timestamp: None,
                    extra: Map::new(),
                };
                out.ask(conn, id);
            }
            Event::ConnectFailed { conn, .. } if self.storage_asks.contains_key(&conn) => {
                self.storage_done(conn, out);
            }
            Event::Packet { conn, packet } => {
                if Some(conn) == self.master {
                    self.master_packet(conn, packet, out);
                } else if self.clients.contains(&conn) {
                    self.client_packet(conn, packet, out);
                } else if self.storage_asks.contains_key(&conn) {
                    self.storage_packet(conn, packet, out);
                }
            }
            Event::Closed { conn, error } => {
                if Some(conn) == self.master {
                    let why = error.unwrap_or_else(|| "closed by the master".into());
                    self.master_lost(out, &why);
                } else if self.clients.remove(&conn) {
                    self.monitor_waiting.retain(|(c, _)| *c != conn);
                    self.forwards.retain(|_, (c, _)| *c != conn);
                } else {
                    self.storage_done(conn, out);
                }
            }
            Event::Timer { token } if token == TIMER_MONITOR_BASE + self.monitor_round => {
                for (conn, nid) in self.storage_asks.drain() {
                    warn!("storage {nid} did not give its status in time");
                    out.close(conn);
                }
                self.answer_monitor(out);
            }
            Event::Timer {
                token: TIMER_RECONNECT,
            } if self.master.is_none() => self.connect_master(out),
            _ => {}
        }
    }
}

/// NEO's summary line: `STATE; UP_TO_DATE=4[; DOWN=n][; ltid=HEX (date)]`.
pub fn summary_text(
    state: Option<ClusterState>,
    counts: &BTreeMap<CellState, usize>,
    down: usize,
    ltid: Option<Tid>,
) -> String {
    let state = state.map_or("None".to_owned(), |s| s.to_string());
    let mut s = if counts.is_empty() {
        state
    } else {
        let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{state}; {}", parts.join(", "))
    };
    if down > 0 {
        s.push_str(&format!("; DOWN={down}"));
    }
    if let Some(tid) = ltid {
        s.push_str(&format!("; ltid={tid} ({})", datetime_from_tid(tid)));
    }
    s
}

/// NEO's `str(datetimeFromTID(tid))`: `YYYY-MM-DD HH:MM:SS[.ffffff]`.
pub fn datetime_from_tid(tid: Tid) -> String {
    let mut high = tid.0 >> 32;
    let low = tid.0 & 0xffff_ffff;
    let minute = high % 60;
    high /= 60;
    let hour = high % 24;
    high /= 24;
    let day = high % 31 + 1;
    high /= 31;
    let month = high % 12 + 1;
    let year = high / 12 + 1900;
    let scaled = low * 60;
    let seconds = scaled >> 32;
    let frac = scaled & 0xffff_ffff;
    let micro = (frac as f64 * (1e6 / 4_294_967_296.0)) as u64;
    let mut s = format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{seconds:02}");
    if micro != 0 {
        s.push_str(&format!(".{micro:06}"));
    }
    s
}

/// NEO's `tidFromTime` and `timeFromTID` (for `neoctl`), from the master's
/// tid module.
pub use crate::master::{tid_from_time, time_from_tid};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{ms, Sim};
    use neo_proto::{
        AcceptIdentification, AnswerLastTransaction, AnswerRecovery, AskMonitorInformation,
        AskNodeList, AskPartitionList, AskPrimary, AskRecovery, Cell, NodeInfo, NodeState,
        NotifyClusterInformation, NotifyNodeInformation, SendPartitionTable, SetClusterState,
    };

    const TID: Tid = Tid(0x040d_3c4a_77d3_77ba);

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn info(t: NodeType, port: u16, nid: NodeId, state: NodeState) -> NodeInfo {
        NodeInfo {
            node_type: t,
            address: Some(Address::new("127.0.0.1", port)),
            uuid: Some(nid),
            state,
            id_timestamp: None,
        }
    }

    /// A master playing conversation 01's part towards the admin.
    #[derive(Default)]
    struct FakeMaster {
        received: Vec<Body>,
        conns: Vec<ConnId>,
    }

    impl Node for FakeMaster {
        fn start(&mut self, _: Instant, _: &mut Outbox) {}
        fn handle(&mut self, _: Instant, ev: Event, out: &mut Outbox) {
            let Event::Packet { conn, packet } = ev else {
                if let Event::Accepted { conn, .. } = ev {
                    self.conns.push(conn);
                }
                return;
            };
            let id = packet.id;
            self.received.push(packet.body.clone());
            let s1 = NodeId::new(NodeType::Storage, 1);
            match packet.body {
                Body::RequestIdentification(r) if &r.name[..] != b"test" => {
                    out.error(conn, id, ErrorCode::ProtocolError, "invalid cluster name");
                    out.close(conn);
                }
                Body::RequestIdentification(_) => {
                    let m1 = NodeId::new(NodeType::Master, 1);
                    let a1 = NodeId::new(NodeType::Admin, 1);
                    out.answer(
                        conn,
                        id,
                        AcceptIdentification {
                            node_type: NodeType::Master,
                            uuid: Some(m1),
                            your_uuid: Some(a1),
                        },
                    );
                    out.notify(
                        conn,
                        NotifyNodeInformation {
                            timestamp: 1.0,
                            node_list: vec![
                                info(NodeType::Admin, 9999, a1, NodeState::Running),
                                info(NodeType::Master, 10000, m1, NodeState::Running),
                                info(NodeType::Storage, 20000, s1, NodeState::Pending),
                            ],
                        },
                    );
                    out.notify(
                        conn,
                        SendPartitionTable {
                            ptid: None,
                            num_replicas: 0,
                            row_list: vec![Vec::new(); 4],
                        },
                    );
                }
                Body::AskClusterState(_) => out.answer(
                    conn,
                    id,
                    AnswerClusterState {
                        state: ClusterState::Recovering,
                    },
                ),
                Body::SetClusterState(_) => {
                    out.error(conn, id, ErrorCode::Ack, "Cluster state changed");
                    out.notify(
                        conn,
                        NotifyNodeInformation {
                            timestamp: 2.0,
                            node_list: vec![info(NodeType::Storage, 20000, s1, NodeState::Running)],
                        },
                    );
                    let up = Cell {
                        uuid: s1,
                        state: CellState::UpToDate,
                    };
                    out.notify(
                        conn,
                        SendPartitionTable {
                            ptid: Some(1),
                            num_replicas: 0,
                            row_list: vec![vec![up.clone()]; 4],
                        },
                    );
                    out.notify(
                        conn,
                        NotifyClusterInformation {
                            state: ClusterState::Running,
                        },
                    );
                }
                Body::AskLastTransaction(_) => {
                    out.answer(conn, id, AnswerLastTransaction { tid: TID })
                }
                Body::AskRecovery(_) => out.answer(
                    conn,
                    id,
                    AnswerRecovery {
                        ptid: Some(1),
                        backup_tid: None,
                        truncate_tid: None,
                    },
                ),
                _ => {}
            }
        }
    }

    /// Plays neoctl: sends what a test pokes, records the answers.
    #[derive(Default)]
    struct Ctl {
        conn: Option<ConnId>,
        failed: bool,
        answers: Vec<(u32, Body)>,
    }

    impl Node for Ctl {
        fn start(&mut self, _: Instant, out: &mut Outbox) {
            self.conn = Some(out.connect(addr(9999), 0));
        }
        fn handle(&mut self, _: Instant, ev: Event, _: &mut Outbox) {
            match ev {
                Event::Packet { packet, .. } => self.answers.push((packet.id, packet.body)),
                Event::ConnectFailed { .. } | Event::Closed { .. } => self.failed = true,
                _ => {}
            }
        }
    }

    fn admin(cluster: &str) -> Admin {
        Admin::new(AdminConfig {
            cluster: cluster.into(),
            masters: vec![addr(10000)],
            address: addr(9999),
            nid: None,
        })
    }

    fn ask(sim: &mut Sim, ctl: usize, body: impl Into<Body>) -> (u32, Body) {
        let body = body.into();
        sim.poke::<Ctl>(ctl, |c, out| {
            let conn = c.conn.expect("connected");
            out.ask(conn, body);
        });
        sim.run();
        sim.node_mut::<Ctl>(ctl).answers.pop().expect("an answer")
    }

    #[test]
    fn serves_neoctl_and_relays_with_its_ids() {
        let mut sim = Sim::new();
        let m = sim.add(Some(addr(10000)), FakeMaster::default());
        let a = sim.add(Some(addr(9999)), admin("test"));
        sim.run();
        assert!(sim.node::<Admin>(a).is_connected());
        assert_eq!(
            sim.node::<Admin>(a).nid(),
            Some(NodeId::new(NodeType::Admin, 1))
        );
        let c = sim.add(None, Ctl::default());
        sim.run();
        // Use up a few ids so neoctl's and the admin's ids differ.
        for _ in 0..3 {
            let (_, b) = ask(&mut sim, c, AskClusterState {});
            assert_eq!(
                b,
                Body::AnswerClusterState(AnswerClusterState {
                    state: ClusterState::Recovering
                })
            );
        }
        let (_, b) = ask(&mut sim, c, AskNodeList { node_type: None });
        let Body::AnswerNodeList(l) = b else {
            panic!("{b:?}")
        };
        assert_eq!(l.node_list.len(), 3);
        let (_, b) = ask(
            &mut sim,
            c,
            AskNodeList {
                node_type: Some(NodeType::Storage),
            },
        );
        let Body::AnswerNodeList(l) = b else {
            panic!("{b:?}")
        };
        assert_eq!(l.node_list.len(), 1);
        assert_eq!(l.node_list[0].state, NodeState::Pending);
        let (_, b) = ask(
            &mut sim,
            c,
            AskPartitionList {
                min_offset: 0,
                max_offset: 0,
                uuid: None,
            },
        );
        assert_eq!(
            b,
            Body::AnswerPartitionList(AnswerPartitionList {
                ptid: None,
                num_replicas: 0,
                row_list: vec![Vec::new(); 4]
            })
        );
        let (_, b) = ask(
            &mut sim,
            c,
            AskPartitionList {
                min_offset: 0,
                max_offset: 9,
                uuid: None,
            },
        );
        assert!(matches!(b, Body::Error(e) if e.code == ErrorCode::ProtocolError));
        let (_, b) = ask(&mut sim, c, AskPrimary {});
        assert_eq!(
            b,
            Body::AnswerPrimary(AnswerPrimary {
                primary_uuid: NodeId::new(NodeType::Master, 1)
            })
        );
        // Forwarded: the answer comes back with neoctl's id.
        let (id, b) = ask(
            &mut sim,
            c,
            SetClusterState {
                state: ClusterState::Verifying,
            },
        );
        assert_eq!(id, 8);
        assert_eq!(
            b,
            Body::Error(neo_proto::Error::new(
                ErrorCode::Ack,
                "Cluster state changed"
            ))
        );
        assert_eq!(
            sim.node::<Admin>(a).cluster_state(),
            Some(ClusterState::Running)
        );
        let (_, b) = ask(&mut sim, c, AskRecovery {});
        assert!(matches!(b, Body::AnswerRecovery(r) if r.ptid == Some(1)));
        let (_, b) = ask(&mut sim, c, AskMonitorInformation {});
        let Body::AnswerMonitorInformation(mi) = b else {
            panic!("{b:?}")
        };
        assert!(mi.warning.is_empty() && mi.problem.is_empty(), "{mi:?}");
        assert_eq!(
            &mi.summary[..],
            b"RUNNING; UP_TO_DATE=4; ltid=040d3c4a77d377ba (2026-11-24 17:46:28.084229)"
        );
        let master = &sim.node::<FakeMaster>(m).received;
        assert!(master.iter().any(|b| matches!(b, Body::SetClusterState(_))));
        assert!(master
            .iter()
            .any(|b| matches!(b, Body::AskLastTransaction(_))));
        assert!(!master.iter().any(|b| matches!(b, Body::AskNodeList(_))));
    }

    /// A storage node answering the admin's monitor question (ours) or
    /// refusing its identification (Python NEO's).
    #[derive(Default)]
    struct FakeStorage {
        refuse: bool,
        silent: bool,
        status: String,
        identifications: usize,
    }

    impl Node for FakeStorage {
        fn start(&mut self, _: Instant, _: &mut Outbox) {}
        fn handle(&mut self, _: Instant, ev: Event, out: &mut Outbox) {
            let Event::Packet { conn, packet } = ev else {
                return;
            };
            match packet.body {
                Body::RequestIdentification(r) => {
                    assert_eq!(r.node_type, NodeType::Admin);
                    assert_eq!(r.uuid, None);
                    self.identifications += 1;
                    if self.refuse {
                        out.error(
                            conn,
                            packet.id,
                            ErrorCode::ProtocolError,
                            "reject anonymous non-storage node",
                        );
                        out.close(conn);
                    } else {
                        out.answer(
                            conn,
                            packet.id,
                            AcceptIdentification {
                                node_type: NodeType::Storage,
                                uuid: None,
                                your_uuid: None,
                            },
                        );
                    }
                }
                Body::AskMonitorInformation(_) if self.silent => {}
                Body::AskMonitorInformation(_) => out.answer(
                    conn,
                    packet.id,
                    AnswerMonitorInformation {
                        warning: Vec::new(),
                        problem: Vec::new(),
                        summary: Bytes::from(self.status.clone().into_bytes()),
                    },
                ),
                _ => {}
            }
        }
    }

    fn summary(sim: &mut Sim, c: usize) -> String {
        let (_, b) = ask(sim, c, AskMonitorInformation {});
        let Body::AnswerMonitorInformation(mi) = b else {
            panic!("{b:?}")
        };
        String::from_utf8(mi.summary.to_vec()).unwrap()
    }

    #[test]
    fn summary_adds_the_status_lines_of_storages() {
        let mut sim = Sim::new();
        sim.add(Some(addr(10000)), FakeMaster::default());
        let s = sim.add(
            Some(addr(20000)),
            FakeStorage {
                status: "import of /x/Data.fs: imported 3/9 transactions".into(),
                ..FakeStorage::default()
            },
        );
        sim.add(Some(addr(9999)), admin("test"));
        let c = sim.add(None, Ctl::default());
        sim.run();
        // Not running yet: storages are not asked.
        assert_eq!(summary(&mut sim, c), "RECOVERING");
        assert_eq!(sim.node::<FakeStorage>(s).identifications, 0);
        let _ = ask(
            &mut sim,
            c,
            SetClusterState {
                state: ClusterState::Verifying,
            },
        );
        let text = summary(&mut sim, c);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("RUNNING; UP_TO_DATE=4"), "{text}");
        assert_eq!(
            lines[1..],
            ["S1: import of /x/Data.fs: imported 3/9 transactions"]
        );
        // Nothing to say: no line.
        sim.node_mut::<FakeStorage>(s).status.clear();
        assert_eq!(summary(&mut sim, c).lines().count(), 1);
        assert_eq!(sim.node::<FakeStorage>(s).identifications, 2);
        // A storage that refuses (Python NEO's) is not asked again.
        sim.node_mut::<FakeStorage>(s).refuse = true;
        assert_eq!(summary(&mut sim, c).lines().count(), 1);
        assert_eq!(summary(&mut sim, c).lines().count(), 1);
        assert_eq!(sim.node::<FakeStorage>(s).identifications, 3);
    }

    #[test]
    fn summary_does_not_wait_for_a_silent_storage() {
        let mut sim = Sim::new();
        sim.add(Some(addr(10000)), FakeMaster::default());
        let s = sim.add(
            Some(addr(20000)),
            FakeStorage {
                silent: true,
                status: "never sent".into(),
                ..FakeStorage::default()
            },
        );
        sim.add(Some(addr(9999)), admin("test"));
        let c = sim.add(None, Ctl::default());
        sim.run();
        let _ = ask(
            &mut sim,
            c,
            SetClusterState {
                state: ClusterState::Verifying,
            },
        );
        sim.poke::<Ctl>(c, |ctl, out| {
            out.ask(ctl.conn.expect("connected"), AskMonitorInformation {});
        });
        sim.run();
        // Waiting for the storage...
        assert!(sim.node::<Ctl>(c).answers.is_empty());
        assert_eq!(sim.node::<FakeStorage>(s).identifications, 1);
        // ... not longer than MONITOR_TIMEOUT.
        sim.advance(MONITOR_TIMEOUT);
        let (_, b) = sim.node_mut::<Ctl>(c).answers.pop().expect("an answer");
        let Body::AnswerMonitorInformation(mi) = b else {
            panic!("{b:?}")
        };
        let text = String::from_utf8(mi.summary.to_vec()).unwrap();
        assert!(
            text.starts_with("RUNNING;") && text.lines().count() == 1,
            "{text}"
        );
    }

    #[test]
    fn not_connected_then_reconnects() {
        let mut sim = Sim::new();
        let a = sim.add(Some(addr(9999)), admin("test"));
        let c = sim.add(None, Ctl::default());
        sim.run();
        let (_, b) = ask(&mut sim, c, AskClusterState {});
        assert_eq!(
            b,
            Body::Error(neo_proto::Error::new(
                ErrorCode::NotReady,
                NOT_CONNECTED_MESSAGE
            ))
        );
        let (_, b) = ask(&mut sim, c, AskMonitorInformation {});
        assert!(matches!(b, Body::Error(e) if e.code == ErrorCode::NotReady));
        sim.add(Some(addr(10000)), FakeMaster::default());
        sim.advance(ms(1500));
        assert!(sim.node::<Admin>(a).is_connected());
        let (_, b) = ask(&mut sim, c, AskMonitorInformation {});
        let Body::AnswerMonitorInformation(mi) = b else {
            panic!("{b:?}")
        };
        assert_eq!(mi.problem, vec![None]);
        assert_eq!(&mi.summary[..], b"RECOVERING");
    }

    #[test]
    fn wrong_cluster_name_stops_the_admin() {
        let mut sim = Sim::new();
        sim.add(Some(addr(10000)), FakeMaster::default());
        let a = sim.add(Some(addr(9999)), admin("other"));
        sim.advance(ms(3000));
        assert!(!sim.node::<Admin>(a).is_connected());
        let c = sim.add(None, Ctl::default());
        sim.run();
        assert!(sim.node::<Ctl>(c).failed, "the admin should have stopped");
        let report = sim.node::<Admin>(a).exit_report();
        let why = report.lock().expect("lock").clone().expect("a failure");
        assert!(why.contains("invalid cluster name"), "{why}");
    }

    #[test]
    fn exits_when_master_goes_away_while_stopping() {
        let mut sim = Sim::new();
        let m = sim.add(Some(addr(10000)), FakeMaster::default());
        let a = sim.add(Some(addr(9999)), admin("test"));
        sim.run();
        let conn = sim.node::<FakeMaster>(m).conns[0];
        sim.poke::<FakeMaster>(m, |_, out| {
            out.notify(
                conn,
                NotifyClusterInformation {
                    state: ClusterState::Stopping,
                },
            );
            out.close(conn);
        });
        sim.run();
        assert!(!sim.node::<Admin>(a).is_connected());
        let c = sim.add(None, Ctl::default());
        sim.run();
        assert!(sim.node::<Ctl>(c).failed, "the admin should have stopped");
    }

    #[test]
    fn reconnects_when_master_is_lost_while_running() {
        let mut sim = Sim::new();
        let m = sim.add(Some(addr(10000)), FakeMaster::default());
        let a = sim.add(Some(addr(9999)), admin("test"));
        sim.run();
        let conn = sim.node::<FakeMaster>(m).conns[0];
        sim.poke::<FakeMaster>(m, |_, out| out.close(conn));
        sim.run();
        assert!(!sim.node::<Admin>(a).is_connected());
        sim.advance(ms(1500));
        assert!(sim.node::<Admin>(a).is_connected());
        assert_eq!(sim.node::<FakeMaster>(m).conns.len(), 2);
    }

    #[test]
    fn tid_and_time_like_neo() {
        // Values printed by NEO's neo.lib.util.
        assert_eq!(datetime_from_tid(Tid(0)), "1900-01-01 00:00:00");
        assert_eq!(datetime_from_tid(TID), "2026-11-24 17:46:28.084229");
        assert_eq!(
            datetime_from_tid(Tid(0x03937af2eeeeeeee)),
            "2012-01-01 12:34:55.999999"
        );
        assert_eq!(tid_from_time(1325421296.0), Tid(0x03937af2eeeeeeee));
        assert_eq!(tid_from_time(1795542388.0773065), Tid(0x040d3c4a77cbe7ee));
        assert!((time_from_tid(TID) - 1795542388.084229).abs() < 1e-5);
    }

    #[test]
    fn summary_text_like_neo() {
        let mut counts = BTreeMap::new();
        assert_eq!(
            summary_text(Some(ClusterState::Recovering), &counts, 0, None),
            "RECOVERING"
        );
        counts.insert(CellState::UpToDate, 3);
        counts.insert(CellState::OutOfDate, 1);
        assert_eq!(
            summary_text(Some(ClusterState::Running), &counts, 1, Some(Tid(0))),
            "RUNNING; OUT_OF_DATE=1, UP_TO_DATE=3; DOWN=1; ltid=0000000000000000 (1900-01-01 00:00:00)"
        );
    }
}
