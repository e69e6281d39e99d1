//! The master in [`Sim`] against scripted peers that replay what the
//! recorded conversations show (01 bootstrap, 02 clients, 03 shutdown, 06
//! storage down, 07 admin): same packet types, ids and argument shapes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use neo_proto::{
    self as p, Address, Body, Bytes, Cell, CellState, ClusterState, ErrorCode, Map, NodeId,
    NodeState, NodeType, Packet, Ptid, MAX_TID, ZERO_TID,
};

use super::{Master, MasterConfig};
use crate::runtime::{ConnId, Event, Node, Outbox};
use crate::sim::Sim;
use fsformat::{Oid, Tid};

const MASTER_PORT: u16 = 31000;

// Pack scenarios use the helpers of this file.
#[path = "pack_tests.rs"]
mod pack_tests;

pub(super) fn master_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], MASTER_PORT))
}

fn m1() -> NodeId {
    NodeId::new(NodeType::Master, 1)
}
fn s(n: u32) -> NodeId {
    NodeId::new(NodeType::Storage, n)
}
fn c(n: u32) -> NodeId {
    NodeId::new(NodeType::Client, n)
}
fn a1() -> NodeId {
    NodeId::new(NodeType::Admin, 1)
}

/// What a fake storage does by itself.
#[derive(Clone)]
struct StorageScript {
    ptid: Option<Ptid>,
    nr: u32,
    rows: Vec<Vec<Cell>>,
    /// Answer AskLockInformation at once.
    auto_lock: bool,
    /// AnswerLockedTransactions content.
    locked: Vec<(Tid, Option<Tid>)>,
    last_tid: Option<Tid>,
}

impl StorageScript {
    fn empty() -> StorageScript {
        StorageScript {
            ptid: None,
            nr: 0,
            rows: Vec::new(),
            auto_lock: true,
            locked: Vec::new(),
            last_tid: None,
        }
    }
}

/// A scripted peer of the master: it connects, identifies, records every
/// packet it receives, and (for a storage) answers like NEO's storage.
struct Fake {
    ident: p::RequestIdentification,
    conn: Option<ConnId>,
    log: Vec<Packet>,
    closed: bool,
    storage: Option<StorageScript>,
}

impl Fake {
    fn new(node_type: NodeType, uuid: Option<NodeId>, port: Option<u16>, cluster: &str) -> Fake {
        let mut extra = Map::new();
        if node_type == NodeType::Storage {
            extra
                .0
                .push((Bytes::from_static(b"new_nid"), p::Value::Array(Vec::new())));
        }
        Fake {
            ident: p::RequestIdentification {
                node_type,
                uuid,
                address: port.map(|port| Address::new("127.0.0.1", port)),
                name: Bytes::copy_from_slice(cluster.as_bytes()),
                id_timestamp: None,
                extra,
            },
            conn: None,
            log: Vec::new(),
            closed: false,
            storage: None,
        }
    }

    fn storage(n: Option<u32>, port: u16, script: StorageScript) -> Fake {
        let mut f = Fake::new(NodeType::Storage, n.map(s), Some(port), "test");
        f.storage = Some(script);
        f
    }

    fn ask(&mut self, out: &mut Outbox, body: impl Into<Body>) -> u32 {
        out.ask(self.conn.expect("connected"), body)
    }

    fn notify(&mut self, out: &mut Outbox, body: impl Into<Body>) {
        out.notify(self.conn.expect("connected"), body)
    }

    /// `(id, name)` of every packet received.
    fn names(&self) -> Vec<(u32, &'static str)> {
        self.log.iter().map(|p| (p.id, p.body.name())).collect()
    }

    fn take(&mut self) -> Vec<Packet> {
        std::mem::take(&mut self.log)
    }

    fn script(&mut self, out: &mut Outbox, conn: ConnId, packet: &Packet) {
        let Some(sc) = self.storage.as_mut() else {
            return;
        };
        let id = packet.id;
        match &packet.body {
            Body::AskRecovery(_) => out.answer(
                conn,
                id,
                p::AnswerRecovery {
                    ptid: sc.ptid,
                    backup_tid: None,
                    truncate_tid: None,
                },
            ),
            Body::AskPartitionTable(_) => out.answer(
                conn,
                id,
                p::AnswerPartitionTable {
                    ptid: sc.ptid,
                    num_replicas: sc.nr,
                    row_list: sc.rows.clone(),
                },
            ),
            Body::SendPartitionTable(t) => {
                sc.ptid = t.ptid;
                sc.nr = t.num_replicas;
                sc.rows = t.row_list.clone();
            }
            Body::NotifyPartitionChanges(ch) => {
                if let Ok(mut pt) =
                    crate::pt::PartitionTable::from_rows(sc.ptid, sc.nr, sc.rows.clone())
                {
                    if pt
                        .apply_changes(ch.ptid, ch.num_replicas, &ch.cell_list)
                        .is_ok()
                    {
                        sc.ptid = pt.ptid();
                        sc.nr = pt.nr();
                        sc.rows = pt.row_list();
                    }
                }
            }
            Body::AskLockedTransactions(_) => out.answer(
                conn,
                id,
                p::AnswerLockedTransactions {
                    tid_dict: Map(sc.locked.clone()),
                },
            ),
            Body::AskFinalTID(_) => out.answer(conn, id, p::AnswerFinalTID { tid: None }),
            Body::AskLastIDs(_) => {
                out.notify(conn, p::NotifyPackCompleted { pack_id: ZERO_TID });
                out.answer(
                    conn,
                    id,
                    p::AnswerLastIDs {
                        last_tid: sc.last_tid,
                        last_oid: None,
                        first_tid: Some(MAX_TID),
                    },
                );
            }
            Body::AskPackOrders(_) => out.answer(
                conn,
                id,
                p::AnswerPackOrders {
                    pack_list: Vec::new(),
                },
            ),
            Body::StartOperation(_) => out.notify(conn, p::NotifyReady {}),
            Body::AskLockInformation(l) if sc.auto_lock => {
                out.answer(conn, id, p::AnswerInformationLocked { ttid: l.ttid })
            }
            _ => {}
        }
    }
}

impl Node for Fake {
    fn start(&mut self, _now: Instant, out: &mut Outbox) {
        self.conn = Some(out.connect(master_addr(), 0));
    }

    fn handle(&mut self, _now: Instant, event: Event, out: &mut Outbox) {
        match event {
            Event::Connected { conn, .. } => {
                out.ask(conn, self.ident.clone());
            }
            Event::Packet { conn, packet } => {
                self.script(out, conn, &packet);
                self.log.push(packet);
            }
            Event::Closed { .. } | Event::ConnectFailed { .. } => self.closed = true,
            _ => {}
        }
    }
}

fn config(np: u32, nr: u32) -> MasterConfig {
    MasterConfig {
        cluster: "test".into(),
        address: Address::new("127.0.0.1", MASTER_PORT),
        partitions: np,
        replicas: nr,
        autostart: None,
        nid: None,
    }
}

/// A clock starting at the recording's time, 1 ms per reading.
pub(super) fn fake_clock() -> super::Clock {
    let t = Arc::new(AtomicU64::new(0));
    Box::new(move || 1_795_542_385.0 + t.fetch_add(1, Ordering::Relaxed) as f64 * 1e-3)
}

fn add_master(sim: &mut Sim, np: u32, nr: u32) -> usize {
    let m = Master::with_clock(config(np, nr), fake_clock()).expect("config");
    sim.add(Some(master_addr()), m)
}

fn fake(sim: &Sim, i: usize) -> &Fake {
    sim.node::<Fake>(i)
}

fn ask(sim: &mut Sim, i: usize, body: impl Into<Body>) -> u32 {
    let mut id = 0;
    let body = body.into();
    sim.poke::<Fake>(i, |f, out| id = f.ask(out, body));
    sim.run();
    id
}

fn notify(sim: &mut Sim, i: usize, body: impl Into<Body>) {
    let body = body.into();
    sim.poke::<Fake>(i, |f, out| f.notify(out, body));
    sim.run();
}

fn last(sim: &Sim, i: usize) -> &Packet {
    fake(sim, i).log.last().expect("a packet")
}

fn up(n: u32) -> Cell {
    Cell {
        uuid: s(n),
        state: CellState::UpToDate,
    }
}

/// A storage with an empty database, at `port`.
fn empty_storage(port: u16) -> Fake {
    Fake::storage(None, port, StorageScript::empty())
}

/// The admin (port 31200), connected and identified.
fn admin(sim: &mut Sim) -> usize {
    let ad = sim.add(None, Fake::new(NodeType::Admin, None, Some(31200), "test"));
    sim.run();
    ad
}

/// A client, connected and identified.
fn client(sim: &mut Sim) -> usize {
    let cl = sim.add(None, Fake::new(NodeType::Client, None, None, "test"));
    sim.run();
    cl
}

/// `neoctl start` from admin `ad`: the request's id.
fn neoctl_start(sim: &mut Sim, ad: usize) -> u32 {
    let start = p::SetClusterState {
        state: ClusterState::Verifying,
    };
    ask(sim, ad, start)
}

/// `neoctl start` acknowledged: master `m` runs.
fn start(sim: &mut Sim, m: usize, ad: usize) {
    let id = neoctl_start(sim, ad);
    let answer = fake(sim, ad)
        .log
        .iter()
        .find(|p| p.id == id && matches!(p.body, Body::Error(_)))
        .expect("answer to SetClusterState");
    assert_eq!(
        answer.body,
        Body::Error(p::Error::new(ErrorCode::Ack, "Cluster state changed"))
    );
    assert_eq!(sim.node::<Master>(m).cluster_state(), ClusterState::Running);
}

/// Master + one storage + admin, started with `neoctl start`: the packets
/// of 01-bootstrap. Returns (master, storage, admin).
fn bootstrap(sim: &mut Sim, np: u32) -> (usize, usize, usize) {
    let m = add_master(sim, np, 0);
    let st = sim.add(None, empty_storage(31100));
    sim.run();
    let ad = admin(sim);
    start(sim, m, ad);
    (m, st, ad)
}

/// A master with `np` partitions and `nr` replicas, `n` storages
/// following `script` (ports from 31100) and the admin, started:
/// (master, storages, admin).
fn running(
    sim: &mut Sim,
    np: u32,
    nr: u32,
    n: u16,
    script: &StorageScript,
) -> (usize, Vec<usize>, usize) {
    let m = add_master(sim, np, nr);
    let storages = (31100..31100 + n)
        .map(|port| sim.add(None, Fake::storage(None, port, script.clone())))
        .collect();
    let ad = admin(sim);
    start(sim, m, ad);
    (m, storages, ad)
}

/// What S1 or S2 stored once S2 was lost from a running cluster of the
/// two (4 partitions, one replica): ptid 2, S2's cells OUT_OF_DATE.
fn after_s2_lost() -> StorageScript {
    let mut script = StorageScript::empty();
    script.ptid = Some(2);
    script.nr = 1;
    let s2 = Cell {
        uuid: s(2),
        state: CellState::OutOfDate,
    };
    script.rows = vec![vec![up(1), s2]; 4];
    script
}

/// The id of the last AskLockInformation storage `st` got.
fn lock_asked(sim: &Sim, st: usize) -> u32 {
    fake(sim, st)
        .log
        .iter()
        .rev()
        .find(|p| matches!(p.body, Body::AskLockInformation(_)))
        .map(|p| p.id)
        .expect("lock asked")
}

/// Storage `st` answers lock request `id` of transaction `ttid`.
fn answer_lock(sim: &mut Sim, st: usize, id: u32, ttid: Tid) {
    let locked = p::AnswerInformationLocked { ttid };
    sim.poke::<Fake>(st, |f, out| out.answer(f.conn.unwrap(), id, locked));
    sim.run();
}

#[test]
fn bootstrap_to_running_like_01() {
    let mut sim = Sim::new();
    let (m, st, ad) = bootstrap(&mut sim, 4);
    assert_eq!(sim.node::<Master>(m).cluster_state(), ClusterState::Running);

    // The storage's side, ids included (01-bootstrap lines 8-10, 97-129).
    assert_eq!(
        fake(&sim, st).names(),
        [
            (0, "AcceptIdentification"),
            (0, "NotifyNodeInformation"),
            (1, "AskRecovery"),
            (2, "NotifyNodeInformation"),
            (3, "NotifyClusterInformation"),
            (4, "SendPartitionTable"),
            (5, "AskLockedTransactions"),
            (6, "AskLastIDs"),
            (7, "AskPackOrders"),
            (8, "NotifyClusterInformation"),
            (9, "StartOperation"),
        ]
    );
    let log = &fake(&sim, st).log;
    assert_eq!(
        log[0].body,
        Body::AcceptIdentification(p::AcceptIdentification {
            node_type: NodeType::Master,
            uuid: Some(m1()),
            your_uuid: Some(s(1)),
        })
    );
    let Body::NotifyNodeInformation(nni) = &log[1].body else {
        panic!("{:?}", log[1])
    };
    assert_eq!(nni.node_list[0].uuid, Some(s(1)));
    assert_eq!(nni.node_list[0].state, NodeState::Pending);
    assert!(nni.node_list[0].id_timestamp.is_some());
    assert!(nni
        .node_list
        .iter()
        .any(|n| n.uuid == Some(m1()) && n.id_timestamp.is_none()));
    let Body::NotifyNodeInformation(nni) = &log[3].body else {
        panic!("{:?}", log[3])
    };
    assert_eq!(nni.node_list.len(), 1);
    assert_eq!(nni.node_list[0].state, NodeState::Running);
    assert_eq!(
        log[5].body,
        Body::SendPartitionTable(p::SendPartitionTable {
            ptid: Some(1),
            num_replicas: 0,
            row_list: vec![vec![up(1)]; 4],
        })
    );
    // NotifyPackCompleted(0) before AnswerLastIDs: pack id 1.
    assert_eq!(
        log[8].body,
        Body::AskPackOrders(p::AskPackOrders { pack_id: Tid(1) })
    );
    assert_eq!(
        log[10].body,
        Body::StartOperation(p::StartOperation { backup: false })
    );

    // The admin's side (lines 24-26, 96-130).
    let names = fake(&sim, ad).names();
    assert_eq!(
        names,
        [
            (0, "AcceptIdentification"),
            (0, "NotifyNodeInformation"),
            (1, "SendPartitionTable"),
            (1, "Error"),
            (2, "NotifyNodeInformation"),
            (3, "SendPartitionTable"),
            (4, "NotifyClusterInformation"),
            (5, "NotifyClusterInformation"),
        ]
    );
    let log = &fake(&sim, ad).log;
    assert_eq!(
        log[2].body,
        Body::SendPartitionTable(p::SendPartitionTable {
            ptid: None,
            num_replicas: 0,
            row_list: vec![vec![]; 4],
        })
    );
    let Body::AcceptIdentification(acc) = &log[0].body else {
        panic!()
    };
    assert_eq!(acc.your_uuid, Some(a1()));

    // Admin requests answered by the master (01 lines 188-198).
    ask(&mut sim, ad, p::AskRecovery {});
    assert_eq!(
        last(&sim, ad).body,
        Body::AnswerRecovery(p::AnswerRecovery {
            ptid: Some(1),
            backup_tid: None,
            truncate_tid: None
        })
    );
    ask(&mut sim, ad, p::AskLastIDs {});
    assert_eq!(
        last(&sim, ad).body,
        Body::AnswerLastIDs(p::AnswerLastIDs {
            last_tid: Some(ZERO_TID),
            last_oid: Some(Oid(0)),
            first_tid: Some(MAX_TID)
        })
    );
    ask(&mut sim, ad, p::AskClusterState {});
    assert_eq!(
        last(&sim, ad).body,
        Body::AnswerClusterState(p::AnswerClusterState {
            state: ClusterState::Running
        })
    );
    ask(
        &mut sim,
        ad,
        p::AskNodeList {
            node_type: Some(NodeType::Storage),
        },
    );
    let Body::AnswerNodeList(list) = &last(&sim, ad).body else {
        panic!()
    };
    assert_eq!(list.node_list.len(), 1);
    assert_eq!(list.node_list[0].state, NodeState::Running);
    ask(&mut sim, ad, p::AskPrimary {});
    assert_eq!(
        last(&sim, ad).body,
        Body::AnswerPrimary(p::AnswerPrimary { primary_uuid: m1() })
    );
    // A second start is refused.
    neoctl_start(&mut sim, ad);
    assert_eq!(
        last(&sim, ad).body,
        Body::Error(p::Error::new(
            ErrorCode::Denied,
            "Can not switch to this state"
        ))
    );
}

#[test]
fn start_refused_without_storage() {
    let mut sim = Sim::new();
    add_master(&mut sim, 4, 0);
    let ad = admin(&mut sim);
    neoctl_start(&mut sim, ad);
    assert_eq!(
        last(&sim, ad).body,
        Body::Error(p::Error::new(
            ErrorCode::Denied,
            "Cannot exit recovery without any storage node"
        ))
    );
}

#[test]
fn wrong_cluster_name_refused() {
    let mut sim = Sim::new();
    let m = add_master(&mut sim, 4, 0);
    let bad = sim.add(
        None,
        Fake::new(NodeType::Storage, None, Some(31100), "other"),
    );
    sim.run();
    let f = fake(&sim, bad);
    assert_eq!(f.names(), [(0, "Error")]);
    assert_eq!(
        f.log[0].body,
        Body::Error(p::Error::new(
            ErrorCode::ProtocolError,
            "invalid cluster name"
        ))
    );
    assert!(f.closed);
    // Nothing was registered.
    assert_eq!(sim.node::<Master>(m).nodes().len(), 1);
    // A client before the cluster runs: NOT_READY.
    let cl = client(&mut sim);
    assert_eq!(
        last(&sim, cl).body,
        Body::Error(p::Error::new(ErrorCode::NotReady, "Retry Later"))
    );
    assert!(fake(&sim, cl).closed);
}

#[test]
fn commit_with_two_clients_like_02() {
    let mut sim = Sim::new();
    let (_m, st, ad) = bootstrap(&mut sim, 4);
    sim.node_mut::<Fake>(st).take();
    sim.node_mut::<Fake>(ad).take();
    let c1 = client(&mut sim);
    // 02 lines 8-12: the storage and the admin hear of C1, C1 gets its id,
    // the nodes, the partition table.
    assert_eq!(fake(&sim, st).names(), [(10, "NotifyNodeInformation")]);
    assert_eq!(fake(&sim, ad).names(), [(6, "NotifyNodeInformation")]);
    assert_eq!(
        fake(&sim, c1).names(),
        [
            (0, "AcceptIdentification"),
            (0, "NotifyNodeInformation"),
            (1, "SendPartitionTable"),
        ]
    );
    let Body::NotifyNodeInformation(nni) = &fake(&sim, c1).log[1].body else {
        panic!()
    };
    assert_eq!(nni.node_list[0].uuid, Some(c(1)));
    // Clients hear of storages and masters, not admins.
    assert!(nni.node_list.iter().all(|n| n.node_type != NodeType::Admin));
    assert!(nni.node_list.iter().any(|n| n.uuid == Some(s(1))));

    let c2 = client(&mut sim);
    let Body::AcceptIdentification(acc) = &fake(&sim, c2).log[0].body else {
        panic!()
    };
    assert_eq!(acc.your_uuid, Some(c(2)));
    // C1 does not hear of C2.
    assert_eq!(fake(&sim, c1).log.len(), 3);

    ask(&mut sim, c1, p::AskLastTransaction {});
    assert_eq!(
        last(&sim, c1).body,
        Body::AnswerLastTransaction(p::AnswerLastTransaction { tid: ZERO_TID })
    );
    ask(&mut sim, c1, p::Ping {});
    assert_eq!(last(&sim, c1).body, Body::Pong(p::Pong {}));

    // Begin, new oids, finish (02 lines 62-97).
    let begin = ask(&mut sim, c1, p::AskBeginTransaction { tid: None });
    let Body::AnswerBeginTransaction(b) = last(&sim, c1).body.clone() else {
        panic!("{:?}", last(&sim, c1))
    };
    assert_eq!(last(&sim, c1).id, begin);
    let ttid = b.ttid;
    assert!(ttid > ZERO_TID);
    ask(&mut sim, c1, p::AskNewOIDs { num_oids: 100 });
    let Body::AnswerNewOIDs(oids) = &last(&sim, c1).body else {
        panic!()
    };
    assert_eq!(oids.oid_list.len(), 100);
    assert_eq!(oids.oid_list[0], Oid(1));
    assert_eq!(oids.oid_list[99], Oid(100));

    sim.node_mut::<Fake>(st).take();
    sim.node_mut::<Fake>(c2).take();
    let oid_list = vec![Oid(0), Oid(3), Oid(2), Oid(1)];
    let fin = ask(
        &mut sim,
        c1,
        p::AskFinishTransaction {
            ttid,
            oid_list: oid_list.clone(),
            deleted: vec![],
            checked: vec![],
            pack: None,
        },
    );
    let Body::AnswerTransactionFinished(done) = last(&sim, c1).body.clone() else {
        panic!("{:?}", last(&sim, c1))
    };
    assert_eq!(last(&sim, c1).id, fin);
    assert_eq!(done.ttid, ttid);
    let tid = done.tid;
    assert!(tid > ttid);
    assert_eq!(tid.0 % 4, ttid.0 % 4);
    // The storage: lock then unlock; C2: invalidation.
    let st_log = &fake(&sim, st).log;
    assert_eq!(
        st_log.iter().map(|p| p.body.name()).collect::<Vec<_>>(),
        ["AskLockInformation", "NotifyUnlockInformation"]
    );
    assert_eq!(
        st_log[0].body,
        Body::AskLockInformation(p::AskLockInformation {
            ttid,
            tid,
            pack: false
        })
    );
    assert_eq!(
        st_log[1].body,
        Body::NotifyUnlockInformation(p::NotifyUnlockInformation { ttid })
    );
    assert_eq!(
        fake(&sim, c2)
            .log
            .iter()
            .map(|p| &p.body)
            .collect::<Vec<_>>(),
        [&Body::InvalidateObjects(p::InvalidateObjects {
            tid,
            oid_list
        })]
    );
    ask(&mut sim, c2, p::AskLastTransaction {});
    assert_eq!(
        last(&sim, c2).body,
        Body::AnswerLastTransaction(p::AnswerLastTransaction { tid })
    );

    // A conflict: C2 aborts; the master tells the storages (02 l. 243-246).
    ask(&mut sim, c2, p::AskBeginTransaction { tid: None });
    let Body::AnswerBeginTransaction(b2) = last(&sim, c2).body.clone() else {
        panic!()
    };
    assert!(b2.ttid > tid);
    sim.node_mut::<Fake>(st).take();
    notify(
        &mut sim,
        c2,
        p::AbortTransaction {
            ttid: b2.ttid,
            uuid_list: vec![s(1)],
        },
    );
    assert_eq!(
        fake(&sim, st)
            .log
            .iter()
            .map(|p| &p.body)
            .collect::<Vec<_>>(),
        [&Body::AbortTransaction(p::AbortTransaction {
            ttid: b2.ttid,
            uuid_list: vec![]
        })]
    );
    assert!(!sim.node::<Master>(0).transactions().has_pending());

    // C1 leaves in the middle of a transaction: aborted, C1 forgotten.
    ask(&mut sim, c1, p::AskBeginTransaction { tid: None });
    assert!(sim.node::<Master>(0).transactions().has_pending());
    sim.node_mut::<Fake>(st).take();
    sim.kill(c1);
    sim.run();
    assert!(!sim.node::<Master>(0).transactions().has_pending());
    let Body::NotifyNodeInformation(nni) = &last(&sim, st).body else {
        panic!()
    };
    assert_eq!(nni.node_list[0].uuid, Some(c(1)));
    assert_eq!(nni.node_list[0].state, NodeState::Unknown);
    // The id is free again.
    let c3 = client(&mut sim);
    let Body::AcceptIdentification(acc) = &fake(&sim, c3).log[0].body else {
        panic!()
    };
    assert_eq!(acc.your_uuid, Some(c(1)));
}

#[test]
fn commits_wait_for_every_lock_and_read_only_clients() {
    let mut sim = Sim::new();
    let mut script = StorageScript::empty();
    script.auto_lock = false;
    let (m, st, _) = running(&mut sim, 2, 1, 2, &script);
    let (s1, s2) = (st[0], st[1]);
    assert_eq!(
        sim.node::<Master>(m).pt().row_list(),
        vec![vec![up(1), up(2)]; 2]
    );
    let c1 = sim.add(None, Fake::new(NodeType::Client, None, None, "test"));
    let mut ro = Fake::new(NodeType::Client, None, None, "test");
    ro.ident
        .extra
        .0
        .push((Bytes::from_static(b"read_only"), p::Value::Bool(true)));
    let c2 = sim.add(None, ro);
    sim.run();
    ask(&mut sim, c2, p::AskBeginTransaction { tid: None });
    assert_eq!(
        last(&sim, c2).body,
        Body::Error(p::Error::new(
            ErrorCode::ReadOnlyAccess,
            "read-only access as requested by the client"
        ))
    );
    ask(&mut sim, c1, p::AskBeginTransaction { tid: None });
    let Body::AnswerBeginTransaction(b) = last(&sim, c1).body.clone() else {
        panic!()
    };
    let fin = ask(
        &mut sim,
        c1,
        p::AskFinishTransaction {
            ttid: b.ttid,
            oid_list: vec![Oid(1)],
            deleted: vec![],
            checked: vec![],
            pack: None,
        },
    );
    // Both storages are asked; nothing is answered before both lock.
    let (l1, l2) = (lock_asked(&sim, s1), lock_asked(&sim, s2));
    answer_lock(&mut sim, s1, l1, b.ttid);
    assert_ne!(last(&sim, c1).id, fin);
    answer_lock(&mut sim, s2, l2, b.ttid);
    assert_eq!(last(&sim, c1).id, fin);
    assert!(matches!(
        last(&sim, c1).body,
        Body::AnswerTransactionFinished(_)
    ));
    // The read-only client is invalidated too.
    assert!(matches!(last(&sim, c2).body, Body::InvalidateObjects(_)));
}

#[test]
fn storage_lost_outdates_then_stops_and_restarts() {
    let mut sim = Sim::new();
    let (m, st, ad) = running(&mut sim, 4, 1, 2, &StorageScript::empty());
    let (s1, s2) = (st[0], st[1]);
    sim.node_mut::<Fake>(s1).take();
    sim.node_mut::<Fake>(ad).take();

    // S2 dies: DOWN, its cells OUT_OF_DATE (06 lines 10-15), still running.
    sim.kill(s2);
    sim.run();
    assert_eq!(sim.node::<Master>(m).cluster_state(), ClusterState::Running);
    for i in [s1, ad] {
        let names: Vec<_> = fake(&sim, i).log.iter().map(|p| p.body.name()).collect();
        assert_eq!(names, ["NotifyNodeInformation", "NotifyPartitionChanges"]);
        let Body::NotifyNodeInformation(nni) = &fake(&sim, i).log[0].body else {
            panic!()
        };
        assert_eq!(
            (nni.node_list[0].uuid, nni.node_list[0].state),
            (Some(s(2)), NodeState::Down)
        );
        assert_eq!(
            fake(&sim, i).log[1].body,
            Body::NotifyPartitionChanges(p::NotifyPartitionChanges {
                ptid: 2,
                num_replicas: 1,
                cell_list: (0..4).map(|o| (o, s(2), CellState::OutOfDate)).collect(),
            })
        );
    }

    // S1 dies too: no longer operational, back to RECOVERING.
    sim.node_mut::<Fake>(ad).take();
    sim.kill(s1);
    sim.run();
    assert_eq!(
        sim.node::<Master>(m).cluster_state(),
        ClusterState::Recovering
    );
    assert!(fake(&sim, ad).log.iter().any(|p| p.body
        == Body::NotifyClusterInformation(p::NotifyClusterInformation {
            state: ClusterState::Recovering
        })));

    // S1 comes back with its table (ptid 2): the cluster restarts by itself.
    let script = after_s2_lost();
    let s1b = sim.add(None, Fake::storage(Some(1), 31100, script));
    sim.run();
    assert_eq!(sim.node::<Master>(m).cluster_state(), ClusterState::Running);
    let names: Vec<_> = fake(&sim, s1b).log.iter().map(|p| p.body.name()).collect();
    assert_eq!(
        names,
        [
            "AcceptIdentification",
            "NotifyNodeInformation",
            "AskRecovery",
            "AskPartitionTable",
            "NotifyNodeInformation",
            "NotifyClusterInformation",
            "SendPartitionTable",
            "AskLockedTransactions",
            "AskLastIDs",
            "AskPackOrders",
            "NotifyClusterInformation",
            "StartOperation",
        ]
    );
    let Body::AcceptIdentification(acc) = &fake(&sim, s1b).log[0].body else {
        panic!()
    };
    assert_eq!(acc.your_uuid, Some(s(1)));
    assert_eq!(sim.node::<Master>(m).pt().ptid(), Some(2));
}

#[test]
fn restart_with_existing_table_starts_by_itself() {
    let mut sim = Sim::new();
    let m = add_master(&mut sim, 4, 0);
    let mut script = StorageScript::empty();
    script.ptid = Some(1);
    script.rows = vec![vec![up(1)]; 4];
    script.last_tid = Some(Tid(0x040d_3c4a_77d0_d7ee));
    script.locked = vec![(Tid(0x040d_3c4a_77d0_d7ee), Some(Tid(0x040d_3c4a_77d3_77ba)))];
    let st = sim.add(None, Fake::storage(Some(1), 31100, script));
    sim.run();
    let master = sim.node::<Master>(m);
    assert_eq!(master.cluster_state(), ClusterState::Running);
    assert_eq!(master.last_transaction(), Tid(0x040d_3c4a_77d0_d7ee));
    // The locked transaction was validated.
    assert!(fake(&sim, st).log.iter().any(|p| p.body
        == Body::ValidateTransaction(p::ValidateTransaction {
            ttid: Tid(0x040d_3c4a_77d0_d7ee),
            tid: Tid(0x040d_3c4a_77d3_77ba),
        })));
}

#[test]
fn shutdown_like_03() {
    let mut sim = Sim::new();
    let (_m, st, ad) = bootstrap(&mut sim, 4);
    sim.node_mut::<Fake>(st).take();
    sim.node_mut::<Fake>(ad).take();
    ask(
        &mut sim,
        ad,
        p::SetClusterState {
            state: ClusterState::Stopping,
        },
    );
    assert_eq!(
        fake(&sim, ad).names()[..2],
        [(2, "Error"), (6, "NotifyClusterInformation")]
    );
    let log = &fake(&sim, st).log;
    assert_eq!(
        log.iter().map(|p| p.body.name()).collect::<Vec<_>>(),
        ["NotifyClusterInformation", "NotifyNodeInformation"]
    );
    let Body::NotifyNodeInformation(nni) = &log[1].body else {
        panic!()
    };
    assert_eq!(nni.node_list[0].state, NodeState::Down);
    assert_eq!(nni.node_list[0].id_timestamp, None);
    assert!(fake(&sim, st).closed);
    assert!(fake(&sim, ad).closed);
}

#[test]
fn admin_kill_add_and_tweak() {
    let mut sim = Sim::new();
    let m = add_master(&mut sim, 4, 1);
    let s1 = sim.add(None, empty_storage(31100));
    let s2 = sim.add(None, empty_storage(31101));
    let ad = admin(&mut sim);
    ask(&mut sim, ad, p::AddPendingNodes { uuid_list: vec![] });
    assert_eq!(
        last(&sim, ad).body,
        Body::Error(p::Error::new(
            ErrorCode::Denied,
            "addPendingNodes RPC can not be used in RECOVERING state"
        ))
    );
    start(&mut sim, m, ad);

    // A third storage joins a running cluster: PENDING, then added.
    let s3 = sim.add(None, empty_storage(31102));
    sim.run();
    assert_eq!(
        sim.node::<Master>(m).nodes().state(s(3)),
        Some(NodeState::Pending)
    );
    ask(
        &mut sim,
        ad,
        p::AddPendingNodes {
            uuid_list: vec![s(3)],
        },
    );
    assert_eq!(
        last(&sim, ad).body,
        Body::Error(p::Error::new(ErrorCode::Ack, "Nodes added: S3"))
    );
    assert!(
        matches!(last(&sim, s3).body, Body::NotifyReady(_))
            || fake(&sim, s3)
                .log
                .iter()
                .any(|p| matches!(p.body, Body::StartOperation(_)))
    );
    ask(
        &mut sim,
        ad,
        p::TweakPartitionTable {
            dry_run: true,
            uuid_list: vec![],
        },
    );
    let Body::AnswerTweakPartitionTable(t) = last(&sim, ad).body.clone() else {
        panic!("{:?}", last(&sim, ad))
    };
    assert!(t.changed);
    // Dry run: nothing changed.
    assert_eq!(sim.node::<Master>(m).pt().ptid(), Some(1));
    ask(
        &mut sim,
        ad,
        p::TweakPartitionTable {
            dry_run: false,
            uuid_list: vec![],
        },
    );
    assert_eq!(sim.node::<Master>(m).pt().ptid(), Some(2));
    let pt = sim.node::<Master>(m).pt();
    let counts: Vec<usize> = (1..=3).map(|n| pt.assigned_offsets(s(n)).len()).collect();
    assert!(counts[2] >= 2, "{counts:?}");
    // S3's new cells are OUT_OF_DATE; the cells S1/S2 lose stay FEEDING.
    assert!(pt.readable_offsets(s(3)).is_empty());
    assert!(matches!(
        last(&sim, s1).body,
        Body::NotifyPartitionChanges(_)
    ));

    // Kill S2 (06 lines 7-15): S2 told it is DOWN, its cells outdated, Ack.
    sim.node_mut::<Fake>(s2).take();
    sim.node_mut::<Fake>(ad).take();
    let id = ask(
        &mut sim,
        ad,
        p::SetNodeState {
            uuid: s(2),
            state: NodeState::Down,
        },
    );
    let names: Vec<_> = fake(&sim, ad).log.iter().map(|p| p.body.name()).collect();
    assert_eq!(
        names,
        ["NotifyPartitionChanges", "Error", "NotifyNodeInformation"]
    );
    assert_eq!(fake(&sim, ad).log[1].id, id);
    assert_eq!(
        fake(&sim, ad).log[1].body,
        Body::Error(p::Error::new(ErrorCode::Ack, "state changed"))
    );
    let Body::NotifyNodeInformation(nni) = &fake(&sim, s2).log[0].body else {
        panic!()
    };
    assert_eq!(nni.node_list[0].state, NodeState::Down);
    assert!(fake(&sim, s2).closed);
    assert_eq!(sim.node::<Master>(m).cluster_state(), ClusterState::Running);
    // Unknown node, primary master.
    ask(
        &mut sim,
        ad,
        p::SetNodeState {
            uuid: s(9),
            state: NodeState::Down,
        },
    );
    assert_eq!(
        last(&sim, ad).body,
        Body::Error(p::Error::new(ErrorCode::Denied, "unknown node"))
    );
    ask(
        &mut sim,
        ad,
        p::SetNodeState {
            uuid: m1(),
            state: NodeState::Down,
        },
    );
    assert_eq!(
        last(&sim, ad).body,
        Body::Error(p::Error::new(
            ErrorCode::Denied,
            "can not kill primary master node"
        ))
    );
}

#[test]
fn autostart_and_storage_lost_during_commit() {
    let mut sim = Sim::new();
    let mut cfg = config(2, 1);
    cfg.autostart = Some(2);
    let m = sim.add(
        Some(master_addr()),
        Master::with_clock(cfg, fake_clock()).expect("config"),
    );
    let mut script = StorageScript::empty();
    script.auto_lock = false;
    let s1 = sim.add(None, Fake::storage(None, 31100, script.clone()));
    sim.run();
    // One storage is not enough for -A 2.
    assert_eq!(
        sim.node::<Master>(m).cluster_state(),
        ClusterState::Recovering
    );
    let s2 = sim.add(None, Fake::storage(None, 31101, script));
    sim.run();
    assert_eq!(sim.node::<Master>(m).cluster_state(), ClusterState::Running);

    let c1 = client(&mut sim);
    ask(&mut sim, c1, p::AskBeginTransaction { tid: None });
    let Body::AnswerBeginTransaction(b) = last(&sim, c1).body.clone() else {
        panic!()
    };
    let fin = ask(
        &mut sim,
        c1,
        p::AskFinishTransaction {
            ttid: b.ttid,
            oid_list: vec![Oid(0)],
            deleted: vec![],
            checked: vec![],
            pack: None,
        },
    );
    let lock = lock_asked(&sim, s1);
    answer_lock(&mut sim, s1, lock, b.ttid);
    assert_ne!(last(&sim, c1).id, fin);
    // S2 dies before locking: the master stops waiting for it.
    sim.kill(s2);
    sim.run();
    assert_eq!(last(&sim, c1).id, fin);
    assert!(matches!(
        last(&sim, c1).body,
        Body::AnswerTransactionFinished(_)
    ));
    assert_eq!(sim.node::<Master>(m).cluster_state(), ClusterState::Running);
    // S2's cells are out of date; S1 alone serves.
    let pt = sim.node::<Master>(m).pt();
    assert_eq!(pt.readable_offsets(s(2)), Vec::<u32>::new());
    assert_eq!(pt.readable_offsets(s(1)), [0, 1]);

    // A finished transaction asked again: MAX_TID (ask the storages).
    ask(&mut sim, c1, p::AskFinalTID { ttid: b.ttid });
    assert_eq!(
        last(&sim, c1).body,
        Body::AnswerFinalTID(p::AnswerFinalTID { tid: Some(MAX_TID) })
    );
    // Unknown ttid in finish: protocol error, connection closed.
    ask(
        &mut sim,
        c1,
        p::AskFinishTransaction {
            ttid: Tid(1),
            oid_list: vec![],
            deleted: vec![],
            checked: vec![],
            pack: None,
        },
    );
    assert!(matches!(
        &last(&sim, c1).body,
        Body::Error(e) if e.code == ErrorCode::ProtocolError
    ));
    assert!(fake(&sim, c1).closed);
    assert_eq!(sim.node::<Master>(m).nodes().state(c(1)), None);
}

#[test]
fn identification_conflicts() {
    let mut sim = Sim::new();
    let m = add_master(&mut sim, 4, 0);
    let s1 = sim.add(None, Fake::storage(Some(1), 31100, StorageScript::empty()));
    sim.run();
    let Body::AcceptIdentification(acc) = &fake(&sim, s1).log[0].body else {
        panic!()
    };
    assert_eq!(acc.your_uuid, Some(s(1)));
    // Same id, another address: refused while S1 is connected.
    let dup = sim.add(None, Fake::storage(Some(1), 31101, StorageScript::empty()));
    // Same address as S1: refused too.
    let same_addr = sim.add(None, empty_storage(31100));
    // The master's own address.
    let mine = sim.add(None, empty_storage(MASTER_PORT));
    sim.run();
    for (i, msg) in [
        (dup, "already connected"),
        (same_addr, "already connected"),
        (mine, "address conflict"),
    ] {
        assert_eq!(
            fake(&sim, i).log.last().map(|p| &p.body),
            Some(&Body::Error(p::Error::new(ErrorCode::ProtocolError, msg)))
        );
        assert!(fake(&sim, i).closed);
    }
    // A second storage with an id of its own choosing that is free.
    let s7 = sim.add(None, Fake::storage(Some(7), 31107, StorageScript::empty()));
    sim.run();
    let Body::AcceptIdentification(acc) = &fake(&sim, s7).log[0].body else {
        panic!()
    };
    assert_eq!(acc.your_uuid, Some(s(7)));
    // Without id: the first free one.
    let s2 = sim.add(None, empty_storage(31102));
    sim.run();
    let Body::AcceptIdentification(acc) = &fake(&sim, s2).log[0].body else {
        panic!()
    };
    assert_eq!(acc.your_uuid, Some(s(2)));
    // S1 leaves (DOWN during recovery); it may come back from elsewhere.
    sim.kill(s1);
    sim.run();
    assert_eq!(
        sim.node::<Master>(m).nodes().state(s(1)),
        Some(NodeState::Down)
    );
    let back = sim.add(None, Fake::storage(Some(1), 31111, StorageScript::empty()));
    sim.run();
    let Body::AcceptIdentification(acc) = &fake(&sim, back).log[0].body else {
        panic!("{:?}", fake(&sim, back).log)
    };
    assert_eq!(acc.your_uuid, Some(s(1)));
    assert_eq!(
        sim.node::<Master>(m)
            .nodes()
            .by_nid(s(1))
            .and_then(|n| n.address.clone()),
        Some(Address::new("127.0.0.1", 31111))
    );
}
