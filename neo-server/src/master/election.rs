//! The election of the primary master among the masters of `--masters`,
//! and the secondary role (NEO's `playPrimaryRole` / `playSecondaryRole`
//! in neo/master/app.py, `ElectionHandler` / `PrimaryHandler` in
//! handlers/master.py, `SecondaryIdentificationHandler` in
//! handlers/identification.py; conversation 08-two-masters).
//!
//! Every master starts as a primary in RECOVERING with an election key,
//! the time it took the role, and connects to the other masters with
//! `RequestIdentification(MASTER, uuid, address, name, key)`. A master
//! that accepts another one is the primary; the one accepted becomes a
//! secondary. A primary still electing that is asked by a master with a
//! smaller `(key, address)` gives up and follows it.
//!
//! A secondary keeps one connection to the primary (it learns the masters
//! from it), sends `NotPrimaryMaster(index of the primary, known masters)`
//! to whoever identifies with it, and when the primary dies tries it once
//! more, then the other masters one by one; if none is primary, it plays
//! the primary role again (a new election among the survivors) and
//! recovers from the storages like a restarted master.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use neo_proto::{self as p, Address, Body, Bytes, ClusterState, Map, NodeState, NodeType, Packet};

use super::{Master, Recovery, TransactionManager};
use crate::nodes::Node as NodeEntry;
use crate::runtime::{ConnId, Outbox};

/// Connection token of our connections to other masters.
pub(super) const TOKEN_MASTER: u64 = 0x4d_6173;
/// Timer: connect again to the masters we have no connection with.
pub(super) const TIMER_ELECTION: u64 = 0x4d_6173;
/// NEO waits a second before connecting again to the same address.
pub const ELECTION_RETRY: Duration = Duration::from_secs(1);

/// What this master is.
#[derive(Debug, Clone)]
pub(super) enum Role {
    /// The primary (electing while RECOVERING).
    Primary,
    /// A secondary following `Secondary::primary`.
    Secondary(Secondary),
}

/// The secondary's link with the (probably) primary master.
#[derive(Debug, Clone)]
pub(super) struct Secondary {
    /// The master we believe is the primary.
    primary: SocketAddr,
    /// Our connection to it.
    conn: Option<ConnId>,
    /// Whether it accepted us (NEO: `primary_master.isIdentified()`).
    identified: bool,
    /// Masters tried since the primary was lost.
    failed: BTreeSet<SocketAddr>,
}

/// An address of the wire as a socket address.
pub(super) fn to_socket(a: &Address) -> Option<SocketAddr> {
    let host = String::from_utf8_lossy(&a.host);
    crate::config::parse_address(&host, Some(a.port)).ok()
}

/// A socket address as the wire carries it.
pub(super) fn to_address(a: SocketAddr) -> Address {
    Address::new(&a.ip().to_string(), a.port())
}

/// NEO's `(id_timestamp, address) < (app.election, app.server)`.
fn key_less(a: (f64, &Address), b: (f64, &Address)) -> bool {
    match a.0.partial_cmp(&b.0) {
        Some(std::cmp::Ordering::Less) => true,
        Some(std::cmp::Ordering::Greater) => false,
        _ => (a.1.host.as_ref(), a.1.port) < (b.1.host.as_ref(), b.1.port),
    }
}

impl Master {
    /// Whether we play the primary role.
    pub fn is_primary(&self) -> bool {
        matches!(self.role, Role::Primary)
    }

    /// The primary master's address: ours when primary, the one that
    /// accepted us when secondary, `None` while looking for it.
    pub fn primary_address(&self) -> Option<SocketAddr> {
        match &self.role {
            Role::Primary => to_socket(&self.cfg.address),
            Role::Secondary(s) if s.identified => Some(s.primary),
            Role::Secondary(_) => None,
        }
    }

    /// NEO's `app.election`: our key while we are primary and RECOVERING.
    pub(super) fn election(&self) -> Option<f64> {
        match self.role {
            Role::Primary if self.state == ClusterState::Recovering => self.election_key,
            _ => None,
        }
    }

    fn own_socket(&self) -> Option<SocketAddr> {
        to_socket(&self.cfg.address)
    }

    /// Adds masters heard of (NotPrimaryMaster lists) to the known ones.
    fn learn_masters(&mut self, list: &[Address]) {
        let me = self.own_socket();
        for a in list.iter().filter_map(to_socket) {
            if Some(a) != me && !self.others.contains(&a) {
                log::info!("learnt of master {a}");
                self.others.push(a);
            }
        }
    }

    /// The known masters as NotPrimaryMaster lists them: the others, in
    /// configuration order, then us.
    fn known_master_list(&self) -> Vec<Address> {
        let mut list: Vec<Address> = self.others.iter().map(|a| to_address(*a)).collect();
        list.push(self.cfg.address.clone());
        list
    }

    /// Whether a connection links us with the master at `a`.
    fn master_linked(&self, a: SocketAddr) -> bool {
        self.master_out.values().any(|x| *x == a)
            || self
                .nodes
                .by_address(&to_address(a))
                .is_some_and(|n| n.conn.is_some())
    }

    /// Takes the primary role: a new election key, then connections to
    /// every other master (NEO's `playPrimaryRole` + `RecoveryManager`).
    pub(super) fn election_start(&mut self, out: &mut Outbox) {
        if self.others.is_empty() {
            return;
        }
        self.election_key = Some(self.now_ts());
        log::info!("play the primary role: electing among {:?}", self.others);
        self.connect_masters(out);
    }

    /// Connects to the masters we have no connection with, while electing;
    /// a failure is retried a second later.
    pub(super) fn connect_masters(&mut self, out: &mut Outbox) {
        if self.election().is_none() || self.stopping {
            return;
        }
        for a in self.others.clone() {
            if !self.master_linked(a) {
                log::debug!("connecting to master {a}");
                let conn = out.connect(a, TOKEN_MASTER);
                self.master_out.insert(conn, a);
            }
        }
    }

    fn arm_election_retry(&mut self, out: &mut Outbox) {
        if self.election().is_some() && !self.election_timer {
            self.election_timer = true;
            out.timer(ELECTION_RETRY, TIMER_ELECTION);
        }
    }

    pub(super) fn election_timer_fired(&mut self, out: &mut Outbox) {
        self.election_timer = false;
        self.connect_masters(out);
    }

    /// Our connection to a master is established: identify.
    pub(super) fn master_out_connected(&mut self, out: &mut Outbox, conn: ConnId) {
        let req = p::RequestIdentification {
            node_type: NodeType::Master,
            uuid: Some(self.uuid),
            address: Some(self.cfg.address.clone()),
            name: Bytes::copy_from_slice(self.cfg.cluster.as_bytes()),
            id_timestamp: self.election(),
            extra: Map::new(),
        };
        out.ask(conn, req);
    }

    /// Our connection to the master at `addr` failed or closed.
    pub(super) fn master_out_lost(&mut self, out: &mut Outbox, conn: ConnId, addr: SocketAddr) {
        match &self.role {
            Role::Secondary(s) if s.conn == Some(conn) => self.primary_lost(out),
            Role::Secondary(_) => {}
            Role::Primary => {
                log::debug!("connection to master {addr} lost");
                self.arm_election_retry(out);
            }
        }
    }

    /// A packet on one of our connections to another master.
    pub(super) fn master_out_packet(&mut self, out: &mut Outbox, conn: ConnId, packet: Packet) {
        let addr = self.master_out.get(&conn).copied();
        let is_primary_conn = matches!(&self.role, Role::Secondary(s) if s.conn == Some(conn));
        let Some(addr) = addr else { return };
        if let Body::Ping(_) = packet.body {
            out.answer(conn, packet.id, p::Pong {});
            return;
        }
        if is_primary_conn {
            return self.primary_packet(out, conn, packet);
        }
        match packet.body {
            Body::AcceptIdentification(a) if a.node_type == NodeType::Master => {
                // It accepted our election key: it is the primary.
                log::info!("master {addr} accepted us: it is the primary");
                self.follow(out, addr);
                self.primary_accepted(out, a);
            }
            Body::NotPrimaryMaster(n) => {
                self.learn_masters(&n.known_master_list);
                let primary = n
                    .primary
                    .and_then(|i| n.known_master_list.get(i as usize))
                    .and_then(to_socket);
                out.close(conn);
                self.master_out.remove(&conn);
                match primary {
                    // We keep the primary role when the peer does not know
                    // yet that we won against its primary.
                    Some(a)
                        if Some(a) != self.own_socket()
                            && !self.nodes.by_address(&to_address(a)).is_some_and(|n| {
                                n.conn.is_some() && n.node_type == NodeType::Master
                            }) =>
                    {
                        log::info!("master {addr} says the primary is {a}");
                        self.follow(out, a);
                    }
                    _ => self.arm_election_retry(out),
                }
            }
            other => {
                log::warn!("master {addr} answered {} to our election", other.name());
                out.close(conn);
                self.master_out.remove(&conn);
                self.arm_election_retry(out);
            }
        }
    }

    /// An incoming master during identification, in the primary role:
    /// `Err(())` if it wins the election (we now follow it).
    pub(super) fn primary_meets_master(
        &mut self,
        out: &mut Outbox,
        req: &p::RequestIdentification,
    ) -> Result<(), ()> {
        let peer = req.address.as_ref().and_then(to_socket);
        if let (Some(key), Some(ts), Some(addr), Some(peer)) = (
            self.election(),
            req.id_timestamp,
            req.address.as_ref(),
            peer,
        ) {
            if key_less((ts, addr), (key, &self.cfg.address)) {
                log::info!("master {peer} was elected before us: following it");
                self.follow(out, peer);
                return Err(());
            }
        }
        if let Some(peer) = peer {
            // The connection it opened replaces ours.
            let ours: Vec<ConnId> = self
                .master_out
                .iter()
                .filter(|(_, a)| **a == peer)
                .map(|(c, _)| *c)
                .collect();
            for c in ours {
                out.close(c);
                self.master_out.remove(&c);
            }
            if !self.others.contains(&peer) {
                self.others.push(peer);
            }
        }
        Ok(())
    }

    /// Leaves the primary role for the secondary one, following the
    /// master at `addr`: every connection but ours to it is closed.
    fn follow(&mut self, out: &mut Outbox, addr: SocketAddr) {
        log::info!("play the secondary role: the primary is {addr}");
        let keep = self
            .master_out
            .iter()
            .find(|(_, a)| **a == addr)
            .map(|(c, _)| *c);
        for (c, _) in std::mem::take(&mut self.master_out) {
            if Some(c) != keep {
                out.close(c);
            }
        }
        for (_, _, c) in self.identified() {
            out.close(c);
        }
        for c in self.accepted.drain() {
            out.close(c);
        }
        // A secondary knows the masters only.
        let others: Vec<_> = self
            .nodes
            .iter()
            .filter(|n| n.node_type != NodeType::Master)
            .filter_map(|n| n.nid)
            .collect();
        for nid in others {
            self.nodes.remove(nid);
        }
        for n in self.nodes.iter_mut() {
            n.conn = None;
        }
        self.reset_primary_state();
        self.election_key = None;
        let conn = match keep {
            Some(c) => {
                self.master_out.insert(c, addr);
                c
            }
            None => {
                let c = out.connect(addr, TOKEN_MASTER);
                self.master_out.insert(c, addr);
                c
            }
        };
        // Masters that failed since the primary was lost stay failed (a
        // secondary not aware yet may name the dead primary).
        let failed = match &self.role {
            Role::Secondary(s) => s.failed.clone(),
            Role::Primary => BTreeSet::new(),
        };
        self.role = Role::Secondary(Secondary {
            primary: addr,
            conn: Some(conn),
            identified: false,
            failed,
        });
    }

    /// Forgets everything of the primary role (NEO creates its managers
    /// anew each time it plays it).
    fn reset_primary_state(&mut self) {
        self.pending_asks.clear();
        self.read_only.clear();
        self.pt = self.empty_pt.clone();
        self.state = ClusterState::Recovering;
        self.startup_allowed = false;
        self.recovery = Recovery::default();
        self.verification = None;
        self.last_transaction = p::ZERO_TID;
        self.tm = TransactionManager::default();
        self.storage_readiness = 0;
        self.storage_ready.clear();
        self.storage_starting.clear();
        self.completed_pack.clear();
        self.max_completed = None;
        self.truncate_tid = None;
        self.packs.clear();
        self.delayed_begins.clear();
    }

    /// Sets our node id (NEO's `setUUID`): whoever had it loses it.
    fn set_uuid(&mut self, uuid: p::NodeId) {
        let me = self.cfg.address.clone();
        for n in self.nodes.iter_mut() {
            if n.address.as_ref() == Some(&me) {
                n.nid = Some(uuid);
            } else if n.nid == Some(uuid) {
                n.nid = None;
            }
        }
        if uuid != self.uuid {
            log::info!("our node id is now {uuid}");
        }
        self.uuid = uuid;
    }

    /// The primary accepted us.
    fn primary_accepted(&mut self, _out: &mut Outbox, a: p::AcceptIdentification) {
        let Role::Secondary(s) = &mut self.role else {
            return;
        };
        s.identified = true;
        s.failed.clear();
        let addr = to_address(s.primary);
        if let Some(your) = a.your_uuid {
            self.set_uuid(your);
        }
        if let Some(u) = a.uuid {
            for n in self.nodes.iter_mut() {
                if n.nid == Some(u) && n.address.as_ref() != Some(&addr) {
                    n.nid = None;
                }
            }
        }
        let entry = match self.nodes.by_address_mut(&addr) {
            Some(e) => e,
            None => self
                .nodes
                .add(NodeEntry::new(NodeType::Master, NodeState::Running)),
        };
        entry.address = Some(addr);
        entry.nid = a.uuid;
        entry.state = NodeState::Running;
        log::info!(
            "connected to the primary master {}",
            a.uuid.map_or("?".into(), |u| u.to_string())
        );
    }

    /// A packet from the primary, as a secondary (NEO's `PrimaryHandler`).
    fn primary_packet(&mut self, out: &mut Outbox, conn: ConnId, packet: Packet) {
        match packet.body {
            Body::AcceptIdentification(a) if a.node_type == NodeType::Master => {
                self.primary_accepted(out, a)
            }
            Body::NotifyNodeInformation(n) => {
                let masters: Vec<_> = n
                    .node_list
                    .into_iter()
                    .filter(|i| i.node_type == NodeType::Master)
                    .collect();
                if masters
                    .iter()
                    .any(|i| i.uuid == Some(self.uuid) && i.state == NodeState::Down)
                {
                    log::info!("the primary master set us DOWN: exiting");
                    self.stopping = true;
                    out.close(conn);
                    out.stop();
                    return;
                }
                self.nodes.update(&masters);
                for i in &masters {
                    if let Some(a) = i.address.as_ref().and_then(to_socket) {
                        if Some(a) != self.own_socket() && !self.others.contains(&a) {
                            self.others.push(a);
                        }
                    }
                }
            }
            Body::NotifyClusterInformation(c) => {
                log::info!("cluster state (primary): {}", c.state);
                if c.state == ClusterState::Stopping {
                    log::info!("the cluster is stopping: exiting");
                    self.stopping = true;
                    out.close(conn);
                    out.stop();
                }
            }
            Body::NotPrimaryMaster(n) => {
                self.learn_masters(&n.known_master_list);
                let primary = n
                    .primary
                    .and_then(|i| n.known_master_list.get(i as usize))
                    .and_then(to_socket);
                let current = match &self.role {
                    Role::Secondary(s) => Some(s.primary),
                    Role::Primary => None,
                };
                if let Some(a) = primary.filter(|a| Some(*a) != current) {
                    if Some(a) != self.own_socket() {
                        log::info!("the primary is {a}");
                        self.follow(out, a);
                    }
                }
                // Else the peer closes: we try the next master then.
            }
            Body::Error(e) => {
                log::warn!(
                    "master refused us: {} {}",
                    e.code,
                    String::from_utf8_lossy(&e.message)
                );
                out.close(conn);
                self.master_out.remove(&conn);
                self.primary_lost(out);
            }
            other => log::debug!("ignored {} from the primary", other.name()),
        }
    }

    /// The connection to the primary is gone (NEO's `PrimaryFailure`): try
    /// it once more, then the other masters; if none is primary, play the
    /// primary role.
    fn primary_lost(&mut self, out: &mut Outbox) {
        let me = self.own_socket();
        let others = self.others.clone();
        let Role::Secondary(s) = &mut self.role else {
            return;
        };
        if let Some(c) = s.conn.take() {
            self.master_out.remove(&c);
        }
        if s.identified {
            log::error!("primary master {} is down", s.primary);
            s.failed.clear();
            s.identified = false;
            let addr = to_address(s.primary);
            if let Some(n) = self.nodes.by_address_mut(&addr) {
                n.state = NodeState::Down;
            }
        }
        let next = if !s.failed.contains(&s.primary) {
            Some(s.primary)
        } else {
            others
                .iter()
                .copied()
                .find(|a| Some(*a) != me && !s.failed.contains(a))
        };
        match next {
            Some(a) => {
                s.failed.insert(a);
                s.primary = a;
                let c = out.connect(a, TOKEN_MASTER);
                s.conn = Some(c);
                self.master_out.insert(c, a);
            }
            None => self.become_primary(out),
        }
    }

    /// No master is primary: play the primary role again.
    fn become_primary(&mut self, out: &mut Outbox) {
        log::info!("no primary master: playing the primary role again");
        self.role = Role::Primary;
        let me = self.cfg.address.clone();
        for n in self.nodes.iter_mut() {
            if n.address.as_ref() == Some(&me) {
                n.state = NodeState::Running;
                n.id_timestamp = None;
            } else if n.node_type == NodeType::Master {
                n.state = NodeState::Down;
            }
            n.conn = None;
        }
        self.reset_primary_state();
        log::info!("begin the recovery of the status");
        self.election_start(out);
    }

    /// Identification asked of us as a secondary: the peer is sent to the
    /// primary (NEO's `SecondaryIdentificationHandler`).
    pub(super) fn secondary_identify(
        &mut self,
        out: &mut Outbox,
        conn: ConnId,
        id: u32,
        req: p::RequestIdentification,
    ) {
        self.accepted.remove(&conn);
        if req.name.as_ref() != self.cfg.cluster.as_bytes() {
            out.error(
                conn,
                id,
                p::ErrorCode::ProtocolError,
                "invalid cluster name",
            );
            out.close(conn);
            return;
        }
        if req.address.as_ref() == Some(&self.cfg.address) {
            out.error(conn, id, p::ErrorCode::ProtocolError, "address conflict");
            out.close(conn);
            return;
        }
        let Role::Secondary(s) = &self.role else {
            return;
        };
        let peer = req.address.as_ref().and_then(to_socket);
        let mut primary = Some(s.primary);
        if peer == Some(s.primary) {
            primary = None;
        } else if !s.identified {
            if let (NodeType::Master, Some(_), Some(peer), Some(addr)) =
                (req.node_type, req.id_timestamp, peer, req.address.as_ref())
            {
                // A master electing while we look for the primary.
                out.close(conn);
                self.learn_masters(std::slice::from_ref(addr));
                self.follow(out, peer);
                return;
            }
            primary = None;
        }
        let list = self.known_master_list();
        let index = primary.and_then(|a| list.iter().position(|x| to_socket(x) == Some(a)));
        out.notify(
            conn,
            p::NotPrimaryMaster {
                primary: index.map(|i| i as u32),
                known_master_list: list,
            },
        );
        out.close(conn);
    }
}
