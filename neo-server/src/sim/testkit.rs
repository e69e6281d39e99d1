//! Test kit for [`Sim`] (tests only): a cluster of real nodes (a master
//! and its storage nodes) made from one [`ClusterSpec`], a scripted
//! [`Peer`] that records what it gets, and the requests a test sends
//! through it as NEO's client, admin or master would (identification,
//! commit, load), each run until the network settles.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use fsformat::{Oid, Tid};
use neo_proto::{
    Address, AnswerStoreObject, AnswerStoreTransaction, AskBeginTransaction, AskFinishTransaction,
    AskObject, AskStoreObject, AskStoreTransaction, Body, Bytes, Checksum, ClusterState, Map,
    NodeId, NodeType, Packet, PacketKind, RequestIdentification,
};

use super::{Sim, SimNode};
use crate::master::{Master, MasterConfig};
use crate::runtime::{ConnId, Event, Node, Outbox};
use crate::storage::node::{StorageConfig, StorageNode};
use crate::storage::{make_checksum, SqliteBackend, SqliteOptions};

/// `127.0.0.1:port`.
pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A scripted peer: records what it gets, sends what the test tells it
/// (through the [`Sim`] methods of this module).
#[derive(Default)]
pub struct Peer {
    /// Connections made or accepted, in order.
    pub conns: Vec<ConnId>,
    /// Packets received and not taken yet.
    pub inbox: Vec<(ConnId, Packet)>,
    /// Connections closed by the other side.
    pub closed: Vec<ConnId>,
    /// Connections refused.
    pub failed: usize,
}

impl Node for Peer {
    fn start(&mut self, _: Instant, _: &mut Outbox) {}
    fn handle(&mut self, _: Instant, ev: Event, _: &mut Outbox) {
        match ev {
            Event::Accepted { conn, .. } | Event::Connected { conn, .. } => self.conns.push(conn),
            Event::Packet { conn, packet } => self.inbox.push((conn, packet)),
            Event::Closed { conn, .. } => self.closed.push(conn),
            Event::ConnectFailed { .. } => self.failed += 1,
            Event::Timer { .. } => {}
        }
    }
}

/// What answers a request: an answer, an error, or a secondary master's
/// redirection (NEO sends `NotPrimaryMaster` with the request's id).
fn answers(p: &Packet) -> bool {
    matches!(p.body.kind(), PacketKind::Answer | PacketKind::Error)
        || matches!(p.body, Body::NotPrimaryMaster(_))
}

/// A `RequestIdentification` for `cluster`, with `(nid, id_timestamp)`
/// when already known by the master.
pub fn identification(
    node_type: NodeType,
    cluster: &str,
    me: Option<(NodeId, f64)>,
) -> RequestIdentification {
    RequestIdentification {
        node_type,
        uuid: me.map(|m| m.0),
        address: None,
        name: Bytes::copy_from_slice(cluster.as_bytes()),
        id_timestamp: me.map(|m| m.1),
        extra: Map::new(),
    }
}

/// NEO's client storing revision `data` of `oid`, based on `serial`, in
/// transaction `ttid` (uncompressed).
pub fn obj(oid: u64, serial: Tid, ttid: Tid, data: &[u8]) -> AskStoreObject {
    AskStoreObject {
        oid: Oid(oid),
        serial,
        compression: 0,
        checksum: Checksum(make_checksum(data)),
        data: Bytes::copy_from_slice(data),
        data_serial: None,
        ttid,
    }
}

/// Objects of a transaction: (oid, serial it is based on, data).
pub type Objects<'a> = [(u64, Tid, &'a [u8])];

/// The [`Peer`] at a node index: what a test does through it.
impl Sim {
    /// Opens a connection from `peer` to `to` (refused if nobody listens:
    /// [`Peer::failed`] counts it).
    pub fn connect(&mut self, peer: usize, to: SocketAddr) -> ConnId {
        let mut conn = 0;
        self.poke::<Peer>(peer, |_, out| conn = out.connect(to, 0));
        self.run();
        conn
    }

    /// Sends a notification.
    pub fn send(&mut self, peer: usize, conn: ConnId, body: impl Into<Body>) {
        let body = body.into();
        self.poke::<Peer>(peer, |_, out| out.notify(conn, body));
        self.run();
    }

    /// Sends a request: its id.
    pub fn ask(&mut self, peer: usize, conn: ConnId, body: impl Into<Body>) -> u32 {
        let body = body.into();
        let mut id = 0;
        self.poke::<Peer>(peer, |_, out| id = out.ask(conn, body));
        self.run();
        id
    }

    /// Answers request `id` received on `conn`.
    pub fn reply(&mut self, peer: usize, conn: ConnId, id: u32, body: impl Into<Body>) {
        let body = body.into();
        self.poke::<Peer>(peer, |_, out| out.answer(conn, id, body));
        self.run();
    }

    /// Takes the answer to request `id` on `conn`, if it came.
    pub fn answer(&mut self, peer: usize, conn: ConnId, id: u32) -> Option<Body> {
        let inbox = &mut self.node_mut::<Peer>(peer).inbox;
        let pos = inbox
            .iter()
            .position(|(c, p)| *c == conn && p.id == id && answers(p))?;
        Some(inbox.remove(pos).1.body)
    }

    /// A request and its answer (which must have come).
    pub fn request(&mut self, peer: usize, conn: ConnId, body: impl Into<Body>) -> Body {
        let id = self.ask(peer, conn, body);
        self.answer(peer, conn, id).expect("an answer")
    }

    /// Takes the notifications received so far.
    pub fn notifications(&mut self, peer: usize) -> Vec<Body> {
        let inbox = &mut self.node_mut::<Peer>(peer).inbox;
        let (n, rest): (Vec<_>, Vec<_>) = std::mem::take(inbox)
            .into_iter()
            .partition(|(_, p)| p.body.kind() == PacketKind::Notification);
        *inbox = rest;
        n.into_iter().map(|(_, p)| p.body).collect()
    }

    /// Connects to `to` and identifies: the connection and the answer.
    pub fn identify(
        &mut self,
        peer: usize,
        to: SocketAddr,
        ident: RequestIdentification,
    ) -> (ConnId, Body) {
        let conn = self.connect(peer, to);
        let answer = self.request(peer, conn, ident);
        (conn, answer)
    }

    /// Same, the identification accepted: the connection.
    pub fn attach(&mut self, peer: usize, to: SocketAddr, ident: RequestIdentification) -> ConnId {
        let (conn, a) = self.identify(peer, to, ident);
        assert!(matches!(a, Body::AcceptIdentification(_)), "{a:?}");
        conn
    }

    /// Identifies with a master as a new node: the connection, the node id
    /// it gives and the id timestamp it announces for it (what storages
    /// check), or its refusal.
    pub fn join(
        &mut self,
        peer: usize,
        to: SocketAddr,
        ident: RequestIdentification,
    ) -> Result<(ConnId, NodeId, f64), Box<Body>> {
        let (conn, a) = self.identify(peer, to, ident);
        let Body::AcceptIdentification(a) = a else {
            return Err(Box::new(a));
        };
        let me = a.your_uuid.expect("a node id");
        Ok((conn, me, self.id_timestamp(peer, conn, me)))
    }

    /// The id timestamp the master announced on `conn` for `nid`.
    pub fn id_timestamp(&self, peer: usize, conn: ConnId, nid: NodeId) -> f64 {
        self.node::<Peer>(peer)
            .inbox
            .iter()
            .filter(|(c, _)| *c == conn)
            .find_map(|(_, p)| match &p.body {
                Body::NotifyNodeInformation(n) => n
                    .node_list
                    .iter()
                    .find(|i| i.uuid == Some(nid))
                    .and_then(|i| i.id_timestamp),
                _ => None,
            })
            .expect("our id timestamp")
    }

    /// Begins a transaction with the master on `mconn`: its ttid.
    pub fn begin(&mut self, peer: usize, mconn: ConnId) -> Tid {
        let r = self.request(peer, mconn, AskBeginTransaction { tid: None });
        let Body::AnswerBeginTransaction(b) = r else {
            panic!("{r:?}")
        };
        b.ttid
    }

    /// Stores `objs` and the transaction's metadata (the vote) on each
    /// storage connection of `conns`, as NEO's client; every store must
    /// be accepted.
    pub fn store(&mut self, peer: usize, conns: &[ConnId], ttid: Tid, objs: &Objects) {
        for &conn in conns {
            for &(oid, serial, data) in objs {
                let r = self.request(peer, conn, obj(oid, serial, ttid, data));
                assert_eq!(
                    r,
                    Body::AnswerStoreObject(AnswerStoreObject { conflict: None })
                );
            }
            let r = self.request(
                peer,
                conn,
                AskStoreTransaction {
                    ttid,
                    user: Bytes::from_static(b"u"),
                    description: Bytes::from_static(b"d"),
                    extension: Bytes::new(),
                    oid_list: objs.iter().map(|o| Oid(o.0)).collect(),
                    pack: None,
                },
            );
            assert_eq!(r, Body::AnswerStoreTransaction(AnswerStoreTransaction {}));
        }
    }

    /// Finishes stored transactions `(ttid, oids)` with the master, all
    /// asked at once (the master handles them back to back): their tids.
    pub fn finish(&mut self, peer: usize, mconn: ConnId, txns: &[(Tid, Vec<u64>)]) -> Vec<Tid> {
        let mut ids = Vec::new();
        self.poke::<Peer>(peer, |_, out| {
            for (ttid, oids) in txns {
                let ask = AskFinishTransaction {
                    ttid: *ttid,
                    oid_list: oids.iter().map(|&o| Oid(o)).collect(),
                    deleted: vec![],
                    checked: vec![],
                    pack: None,
                };
                ids.push(out.ask(mconn, ask));
            }
        });
        self.run();
        ids.iter()
            .map(
                |&id| match self.answer(peer, mconn, id).expect("an answer") {
                    Body::AnswerTransactionFinished(f) => f.tid,
                    r => panic!("{r:?}"),
                },
            )
            .collect()
    }

    /// A whole commit: begin and finish on `mconn`, stores and vote on
    /// each of `conns`. Its tid.
    pub fn commit(&mut self, peer: usize, mconn: ConnId, conns: &[ConnId], objs: &Objects) -> Tid {
        let ttid = self.begin(peer, mconn);
        self.store(peer, conns, ttid, objs);
        let oids = objs.iter().map(|o| o.0).collect();
        self.finish(peer, mconn, &[(ttid, oids)])[0]
    }

    /// The current revision of `oid` read on a storage connection.
    pub fn load(&mut self, peer: usize, conn: ConnId, oid: u64) -> (Tid, Vec<u8>) {
        let r = self.request(
            peer,
            conn,
            AskObject {
                oid: Oid(oid),
                at: None,
                before: None,
            },
        );
        let Body::AnswerObject(o) = r else {
            panic!("{r:?}")
        };
        (o.serial, o.data.to_vec())
    }
}

/// A cluster of real nodes: its name, its master's port and options.
/// Storages are named by the port they announce.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub name: String,
    pub master_port: u16,
    pub partitions: u32,
    pub replicas: u32,
    /// `-A`: storages the master waits for before starting alone.
    pub autostart: Option<usize>,
}

impl ClusterSpec {
    /// Cluster `name`, its master at `master_port`: 4 partitions, no
    /// replica, started by the first storage.
    pub fn new(name: &str, master_port: u16) -> ClusterSpec {
        ClusterSpec {
            name: name.into(),
            master_port,
            partitions: 4,
            replicas: 0,
            autostart: Some(1),
        }
    }

    pub fn partitions(mut self, np: u32) -> ClusterSpec {
        self.partitions = np;
        self
    }

    pub fn replicas(mut self, nr: u32) -> ClusterSpec {
        self.replicas = nr;
        self
    }

    pub fn autostart(mut self, storages: usize) -> ClusterSpec {
        self.autostart = Some(storages);
        self
    }

    pub fn master_addr(&self) -> SocketAddr {
        addr(self.master_port)
    }

    pub fn master_config(&self) -> MasterConfig {
        MasterConfig {
            cluster: self.name.clone(),
            address: Address::new("127.0.0.1", self.master_port),
            partitions: self.partitions,
            replicas: self.replicas,
            autostart: self.autostart,
            nid: None,
        }
    }

    /// The master, on the system clock.
    pub fn master(&self) -> Master {
        Master::new(self.master_config()).expect("master config")
    }

    /// A storage announcing `port`, its database named `database`.
    pub fn storage_config(&self, port: u16, database: &str) -> StorageConfig {
        StorageConfig {
            cluster: self.name.clone(),
            masters: vec![self.master_addr()],
            address: addr(port),
            nid: None,
            database: database.into(),
            disable_pack: false,
        }
    }

    /// The SQLite database of the storage announcing `port`, in `dir`.
    pub fn sqlite(&self, dir: &Path, port: u16) -> SqliteBackend {
        let path = dir.join(format!("{}{port}.sqlite", self.name));
        SqliteBackend::open(&path, &SqliteOptions::default()).expect("sqlite database")
    }

    /// A storage announcing `port`, on its SQLite database in `dir`.
    pub fn sqlite_storage(&self, dir: &Path, port: u16) -> StorageNode<SqliteBackend> {
        let cfg = self.storage_config(port, &format!("{}{port}", self.name));
        StorageNode::new(cfg, self.sqlite(dir, port)).expect("storage node")
    }

    /// Adds the master, listening at its port: its index.
    pub fn add_master(&self, sim: &mut Sim) -> usize {
        sim.add(Some(self.master_addr()), self.master())
    }

    /// Adds a storage listening at each of `ports`, made by `node(port)`:
    /// their indexes.
    pub fn add_storages<N: SimNode>(
        &self,
        sim: &mut Sim,
        ports: impl IntoIterator<Item = u16>,
        mut node: impl FnMut(u16) -> N,
    ) -> Vec<usize> {
        ports
            .into_iter()
            .map(|port| sim.add(Some(addr(port)), node(port)))
            .collect()
    }

    /// The master and the storages of [`ClusterSpec::add_storages`],
    /// then `settle` of simulated time: the cluster must be RUNNING.
    /// The indexes of the master and the storages.
    pub fn start<N: SimNode>(
        &self,
        sim: &mut Sim,
        ports: impl IntoIterator<Item = u16>,
        node: impl FnMut(u16) -> N,
        settle: Duration,
    ) -> (usize, Vec<usize>) {
        let m = self.add_master(sim);
        let storages = self.add_storages(sim, ports, node);
        sim.advance(settle);
        assert_eq!(
            sim.node::<Master>(m).cluster_state(),
            ClusterState::Running,
            "cluster {}",
            self.name
        );
        (m, storages)
    }
}
