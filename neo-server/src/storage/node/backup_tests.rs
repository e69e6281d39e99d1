//! Backup mode in one simulation: an upstream cluster (real master, two
//! SQLite storages, one replica) and a backup cluster (real master with
//! the upstream options, two SQLite storages, one replica), a scripted
//! client committing upstream and a scripted admin switching the backup
//! cluster's state.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use fsformat::{Oid, Tid};
use neo_proto::*;

use super::*;
use crate::master::{Master, MasterConfig};
use crate::runtime::{ConnId, Event, Node, Outbox};
use crate::sim::{ms, Sim};
use crate::storage::{make_checksum, SqliteBackend, SqliteOptions};

type Sql = StorageNode<SqliteBackend>;
/// Objects of a transaction: (oid, data).
type Objs<'a> = &'a [(u64, &'a [u8])];

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

const UP_MASTER: u16 = 33000;
const BK_MASTER: u16 = 34000;
/// Where the second upstream storage says it listens when it cannot be
/// reached by the backup storages (nothing listens there).
const NOWHERE: u16 = 33199;

/// A scripted peer: records what it gets, sends what the test tells it.
#[derive(Default)]
struct Peer {
    conns: Vec<ConnId>,
    inbox: Vec<(ConnId, Packet)>,
}

impl Node for Peer {
    fn start(&mut self, _: Instant, _: &mut Outbox) {}
    fn handle(&mut self, _: Instant, ev: Event, _: &mut Outbox) {
        match ev {
            Event::Connected { conn, .. } => self.conns.push(conn),
            Event::Packet { conn, packet } => self.inbox.push((conn, packet)),
            _ => {}
        }
    }
}

fn master(cluster: &str, port: u16) -> Master {
    master_np(cluster, port, 2)
}

fn master_np(cluster: &str, port: u16, partitions: u32) -> Master {
    Master::new(MasterConfig {
        cluster: cluster.into(),
        address: Address::new("127.0.0.1", port),
        partitions,
        replicas: 1,
        autostart: Some(2),
        nid: None,
    })
    .unwrap()
}

fn storage(dir: &Path, cluster: &str, master: u16, announced: u16) -> Sql {
    let db = SqliteBackend::open(
        &dir.join(format!("{cluster}{announced}.sqlite")),
        &SqliteOptions::default(),
    )
    .unwrap();
    StorageNode::new(
        StorageConfig {
            cluster: cluster.into(),
            masters: vec![addr(master)],
            address: addr(announced),
            nid: None,
            database: format!("{cluster}{announced}"),
            disable_pack: false,
        },
        db,
    )
    .unwrap()
}

struct World {
    sim: Sim,
    up: usize,
    bk: usize,
    /// Upstream storages (listening ports 33101, 33102).
    up_storages: Vec<usize>,
    bk_storages: Vec<usize>,
    peer: usize,
    /// The client's connections: upstream master and storages.
    up_conns: Vec<ConnId>,
    admin: ConnId,
}

impl World {
    /// Both clusters running; the second upstream storage announces an
    /// address nobody listens on if `hide_second`.
    fn new(dir: &Path, hide_second: bool) -> World {
        let w = World::build(dir, hide_second, false, 2);
        assert_eq!(w.bk_master().cluster_state(), ClusterState::Running);
        w
    }

    /// [`World::new`]; the backup master has `--backup` if `at_once`.
    fn build(dir: &Path, hide_second: bool, at_once: bool, np: u32) -> World {
        let mut sim = Sim::new();
        let up = sim.add(Some(addr(UP_MASTER)), master_np("up", UP_MASTER, np));
        let bk_master =
            master_np("bk", BK_MASTER, np).with_upstream("up".into(), vec![addr(UP_MASTER)]);
        let bk_master = if at_once {
            bk_master.with_backup_at_once()
        } else {
            bk_master
        };
        let bk = sim.add(Some(addr(BK_MASTER)), bk_master);
        let second = if hide_second { NOWHERE } else { 33102 };
        let up_storages = vec![
            sim.add(Some(addr(33101)), storage(dir, "up", UP_MASTER, 33101)),
            sim.add(Some(addr(33102)), storage(dir, "up", UP_MASTER, second)),
        ];
        let bk_storages = (1..=2)
            .map(|i| {
                let port = 34100 + i;
                sim.add(Some(addr(port)), storage(dir, "bk", BK_MASTER, port))
            })
            .collect();
        sim.advance(ms(200));
        assert_eq!(
            sim.node::<Master>(up).cluster_state(),
            ClusterState::Running
        );
        let peer = sim.add(None, Peer::default());
        let mut w = World {
            sim,
            up,
            bk,
            up_storages,
            bk_storages,
            peer,
            up_conns: Vec::new(),
            admin: 0,
        };
        let m = w.connect(UP_MASTER);
        let r = w.identify(m, NodeType::Client, "up", None);
        let Body::AcceptIdentification(a) = r else {
            panic!("{r:?}")
        };
        let me = a.your_uuid;
        let ts = w.id_timestamp(me);
        w.up_conns.push(m);
        for port in [33101, 33102] {
            let c = w.connect(port);
            let r = w.identify(c, NodeType::Client, "up", me.map(|me| (me, ts)));
            assert!(matches!(r, Body::AcceptIdentification(_)), "{r:?}");
            w.up_conns.push(c);
        }
        w.admin = w.connect(BK_MASTER);
        let r = w.identify(w.admin, NodeType::Admin, "bk", None);
        assert!(matches!(r, Body::AcceptIdentification(_)), "{r:?}");
        w
    }

    fn connect(&mut self, port: u16) -> ConnId {
        self.sim.poke::<Peer>(self.peer, |_, out| {
            out.connect(addr(port), 0);
        });
        self.sim.run();
        *self.sim.node::<Peer>(self.peer).conns.last().unwrap()
    }

    fn identify(
        &mut self,
        conn: ConnId,
        node_type: NodeType,
        cluster: &str,
        me: Option<(NodeId, f64)>,
    ) -> Body {
        self.request(
            conn,
            RequestIdentification {
                node_type,
                uuid: me.map(|m| m.0),
                address: None,
                name: Bytes::copy_from_slice(cluster.as_bytes()),
                id_timestamp: me.map(|m| m.1),
                extra: Map::new(),
            },
        )
    }

    fn id_timestamp(&self, me: Option<NodeId>) -> f64 {
        self.sim
            .node::<Peer>(self.peer)
            .inbox
            .iter()
            .rev()
            .filter_map(|(_, p)| match &p.body {
                Body::NotifyNodeInformation(n) => n.node_list.iter().find(|i| i.uuid == me),
                _ => None,
            })
            .find_map(|i| i.id_timestamp)
            .expect("our id timestamp")
    }

    fn request(&mut self, conn: ConnId, body: impl Into<Body>) -> Body {
        let body = body.into();
        let mut id = 0;
        self.sim
            .poke::<Peer>(self.peer, |_, out| id = out.ask(conn, body));
        self.sim.run();
        let inbox = &mut self.sim.node_mut::<Peer>(self.peer).inbox;
        let pos = inbox
            .iter()
            .position(|(c, p)| {
                *c == conn
                    && p.id == id
                    && matches!(p.body.kind(), PacketKind::Answer | PacketKind::Error)
            })
            .expect("an answer");
        inbox.remove(pos).1.body
    }

    /// Commits `objs` (oid, data) upstream (both storages hold every
    /// partition).
    fn commit(&mut self, objs: &[(u64, &[u8])]) -> Tid {
        let ttid = self.store(objs);
        self.finish(&[(ttid, objs)])[0]
    }

    /// Begins a transaction upstream and stores `objs`: its ttid.
    fn store(&mut self, objs: &[(u64, &[u8])]) -> Tid {
        let m = self.up_conns[0];
        let Body::AnswerBeginTransaction(b) = self.request(m, AskBeginTransaction { tid: None })
        else {
            panic!("begin")
        };
        let ttid = b.ttid;
        let up = self.up;
        let conns = self.up_conns.clone();
        for &conn in &conns[1..] {
            for &(oid, data) in objs {
                let serial = self.serial(up, oid);
                let r = self.request(
                    conn,
                    AskStoreObject {
                        oid: Oid(oid),
                        serial,
                        compression: 0,
                        checksum: Checksum(make_checksum(data)),
                        data: Bytes::copy_from_slice(data),
                        data_serial: None,
                        ttid,
                    },
                );
                assert_eq!(
                    r,
                    Body::AnswerStoreObject(AnswerStoreObject { conflict: None })
                );
            }
            let r = self.request(
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
        ttid
    }

    /// Finishes stored transactions, all asked at once (their
    /// invalidations reach the backup master back to back): their tids.
    fn finish(&mut self, txns: &[(Tid, Objs)]) -> Vec<Tid> {
        let m = self.up_conns[0];
        let mut ids = Vec::new();
        self.sim.poke::<Peer>(self.peer, |_, out| {
            for (ttid, objs) in txns {
                let ask = AskFinishTransaction {
                    ttid: *ttid,
                    oid_list: objs.iter().map(|o| Oid(o.0)).collect(),
                    deleted: vec![],
                    checked: vec![],
                    pack: None,
                };
                ids.push(out.ask(m, ask));
            }
        });
        self.sim.run();
        let inbox = &mut self.sim.node_mut::<Peer>(self.peer).inbox;
        ids.iter()
            .map(|id| {
                let pos = inbox
                    .iter()
                    .position(|(c, p)| *c == m && p.id == *id)
                    .expect("an answer");
                match inbox.remove(pos).1.body {
                    Body::AnswerTransactionFinished(f) => f.tid,
                    r => panic!("{r:?}"),
                }
            })
            .collect()
    }

    /// The last serial of `oid` in the first storage of the cluster whose
    /// master is `m` (ZERO_TID if none).
    fn serial(&mut self, m: usize, oid: u64) -> Tid {
        let s = if m == self.up {
            self.up_storages[0]
        } else {
            self.bk_storages[0]
        };
        last_serial(self.sim.node_mut::<Sql>(s), oid).unwrap_or(ZERO_TID)
    }

    /// A read-only client of the backup cluster connected to its first
    /// storage: (master conn, storage conn).
    fn backup_reader(&mut self) -> (ConnId, ConnId) {
        let m = self.connect(BK_MASTER);
        let extra: Map<Bytes, Value> = [(Bytes::from_static(b"read_only"), Value::Bool(true))]
            .into_iter()
            .collect();
        let ident = |uuid, id_timestamp| RequestIdentification {
            node_type: NodeType::Client,
            uuid,
            address: None,
            name: Bytes::from_static(b"bk"),
            id_timestamp,
            extra: extra.clone(),
        };
        let r = self.request(m, ident(None, None));
        let Body::AcceptIdentification(a) = r else {
            panic!("{r:?}")
        };
        let ts = self.id_timestamp(a.your_uuid);
        let s = self.connect(34101);
        let r = self.request(s, ident(a.your_uuid, Some(ts)));
        assert!(matches!(r, Body::AcceptIdentification(_)), "{r:?}");
        (m, s)
    }

    fn set_state(&mut self, state: ClusterState) -> Body {
        let admin = self.admin;
        self.request(admin, SetClusterState { state })
    }

    fn bk_master(&self) -> &Master {
        self.sim.node::<Master>(self.bk)
    }
}

/// The newest revision of `oid` in a storage's database.
fn last_serial(s: &mut Sql, oid: u64) -> Option<Tid> {
    s.db_mut()
        .find_object(Oid(oid), None, None)
        .unwrap()
        .map(|o| o.serial)
}

fn data_of(s: &mut Sql, oid: u64) -> Option<Vec<u8>> {
    s.db_mut()
        .find_object(Oid(oid), None, None)
        .unwrap()
        .and_then(|o| o.data)
}

/// Commits upstream before and during the backup reach every backup
/// storage, the backup tid follows the upstream's last tid, and
/// STOPPING_BACKUP leaves a normal RUNNING cluster with the same data.
#[test]
fn backup_follows_upstream_then_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new(dir.path(), false);
    let t1 = w.commit(&[(0, b"a1"), (1, b"b1")]);
    assert_eq!(w.bk_master().backup_tid(), None);

    let r = w.set_state(ClusterState::StartingBackup);
    assert!(
        matches!(&r, Body::Error(e) if e.code == ErrorCode::Ack),
        "{r:?}"
    );
    w.sim.advance(ms(100));
    assert_eq!(w.bk_master().cluster_state(), ClusterState::BackingUp);
    assert_eq!(w.bk_master().backup_tid(), Some(t1));
    for s in w.bk_storages.clone() {
        let n = w.sim.node_mut::<Sql>(s);
        assert_eq!(data_of(n, 0).as_deref(), Some(&b"a1"[..]));
        assert_eq!(data_of(n, 1).as_deref(), Some(&b"b1"[..]));
        assert_eq!(n.db_mut().backup_tid().unwrap(), Some(t1));
    }

    // Commits while backing up: one partition, then the other, then both.
    let t2 = w.commit(&[(0, b"a2")]);
    let t3 = w.commit(&[(1, b"b3")]);
    let t4 = w.commit(&[(2, b"c4"), (3, b"d4")]);
    w.sim.advance(ms(100));
    assert_eq!(w.bk_master().last_transaction(), t4);
    assert_eq!(w.bk_master().backup_tid(), Some(t4));
    for s in w.bk_storages.clone() {
        let n = w.sim.node_mut::<Sql>(s);
        assert_eq!(last_serial(n, 0), Some(t2));
        assert_eq!(last_serial(n, 1), Some(t3));
        assert_eq!(data_of(n, 2).as_deref(), Some(&b"c4"[..]));
        assert_eq!(data_of(n, 3).as_deref(), Some(&b"d4"[..]));
        assert_eq!(n.db_mut().backup_tid().unwrap(), Some(t4));
        assert_eq!(n.db_mut().last_ids().unwrap().0, Some(t4));
    }
    // print ids: the master's AnswerRecovery carries the backup tid.
    let admin = w.admin;
    let r = w.request(admin, AskRecovery {});
    let Body::AnswerRecovery(a) = r else {
        panic!("{r:?}")
    };
    assert_eq!(a.backup_tid, Some(t4));

    // Writers are refused while backing up.
    let c = w.connect(BK_MASTER);
    let r = w.identify(c, NodeType::Client, "bk", None);
    assert!(matches!(r, Body::Error(_)), "{r:?}");

    let r = w.set_state(ClusterState::StoppingBackup);
    assert!(
        matches!(&r, Body::Error(e) if e.code == ErrorCode::Ack),
        "{r:?}"
    );
    w.sim.advance(ms(300));
    assert_eq!(w.bk_master().cluster_state(), ClusterState::Running);
    assert_eq!(w.bk_master().backup_tid(), None);
    assert_eq!(w.bk_master().last_transaction(), t4);
    for s in w.bk_storages.clone() {
        let n = w.sim.node_mut::<Sql>(s);
        assert_eq!(n.db_mut().backup_tid().unwrap(), None);
        assert_eq!(last_serial(n, 1), Some(t3));
    }
    // A client reads it through the backup cluster, now a normal one.
    let c = w.connect(BK_MASTER);
    let r = w.identify(c, NodeType::Client, "bk", None);
    let Body::AcceptIdentification(a) = r else {
        panic!("{r:?}")
    };
    let ts = w.id_timestamp(a.your_uuid);
    let s = w.connect(34101);
    let r = w.identify(s, NodeType::Client, "bk", a.your_uuid.map(|u| (u, ts)));
    assert!(matches!(r, Body::AcceptIdentification(_)), "{r:?}");
    let r = w.request(
        s,
        AskObject {
            oid: Oid(3),
            at: None,
            before: None,
        },
    );
    let Body::AnswerObject(o) = r else {
        panic!("{r:?}")
    };
    assert_eq!((o.serial, &o.data[..]), (t4, &b"d4"[..]));
}

/// One upstream storage cannot be reached by the backup storages: the
/// partition fetched from it lags, the backup tid stays just before the
/// first transaction that touched it, and STOPPING_BACKUP truncates there.
#[test]
fn stopping_backup_truncates_to_consistent_tid() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new(dir.path(), true);
    let r = w.set_state(ClusterState::StartingBackup);
    assert!(
        matches!(&r, Body::Error(e) if e.code == ErrorCode::Ack),
        "{r:?}"
    );
    w.sim.advance(ms(100));
    assert_eq!(w.bk_master().cluster_state(), ClusterState::BackingUp);
    assert_eq!(w.bk_master().backup_tid(), Some(ZERO_TID));

    // Partition 1 is fetched from the hidden storage. Commits of oid 0
    // (partition 0) until one also lands in partition 1 (its tid's
    // partition holds the transaction's metadata).
    let mut tids = Vec::new();
    let mut lagging = None;
    for i in 0..20u8 {
        let t = w.commit(&[(0, &[b'a', i])]);
        tids.push(t);
        if t.0 % 2 == 1 {
            lagging = Some(t);
            break;
        }
    }
    let lagging = lagging.expect("an odd tid among 20");
    let after = w.commit(&[(0, b"after"), (1, b"b")]);
    w.sim.advance(ms(2500));
    let expect = Tid(lagging.0 - 1);
    assert_eq!(w.bk_master().last_transaction(), after);
    assert_eq!(w.bk_master().backup_tid(), Some(expect));
    // Partition 0 is complete on the backup storages.
    for s in w.bk_storages.clone() {
        let n = w.sim.node_mut::<Sql>(s);
        assert_eq!(last_serial(n, 0), Some(after));
        assert_eq!(last_serial(n, 1), None);
    }

    // The backup master restarts: the storages' backup tids make it back
    // up again (not RUNNING on an inconsistent database), each cell from
    // its node's backup tid: the last tid before the lagging one.
    let before = tids.iter().rev().nth(1).copied();

    // A read-only client reads what every cell has: the last tid and the
    // latest revision are cut at the backup tid of the storages.
    let (m, s) = w.backup_reader();
    let r = w.request(m, AskLastTransaction {});
    assert_eq!(
        r,
        Body::AnswerLastTransaction(AnswerLastTransaction { tid: expect })
    );
    let r = w.request(
        s,
        AskObject {
            oid: Oid(0),
            at: None,
            before: None,
        },
    );
    match (before, r) {
        (Some(t), Body::AnswerObject(o)) => assert_eq!(o.serial, t),
        (None, Body::Error(e)) => assert_eq!(e.code, ErrorCode::OidNotFound),
        (b, r) => panic!("{b:?}: {r:?}"),
    }
    let r = w.request(s, AskTransactionInformation { tid: after });
    assert!(
        matches!(&r, Body::Error(e) if e.code == ErrorCode::TidNotFound),
        "{r:?}"
    );
    let r = w.request(m, AskBeginTransaction { tid: None });
    assert!(
        matches!(&r, Body::Error(e) if e.code == ErrorCode::ReadOnlyAccess),
        "{r:?}"
    );
    w.sim.kill(w.bk);
    w.bk = w.sim.add(
        Some(addr(BK_MASTER)),
        master("bk", BK_MASTER).with_upstream("up".into(), vec![addr(UP_MASTER)]),
    );
    w.sim.advance(ms(3000));
    w.admin = w.connect(BK_MASTER);
    let r = w.identify(w.admin, NodeType::Admin, "bk", None);
    assert!(matches!(r, Body::AcceptIdentification(_)), "{r:?}");
    // Autostart (-A 2) with both storages back: no neoctl start.
    assert_eq!(w.bk_master().cluster_state(), ClusterState::BackingUp);
    assert_eq!(w.bk_master().backup_tid(), Some(before.unwrap_or(ZERO_TID)));
    assert_eq!(w.bk_master().last_transaction(), after);
    let r = w.set_state(ClusterState::StoppingBackup);
    assert!(
        matches!(&r, Body::Error(e) if e.code == ErrorCode::Ack),
        "{r:?}"
    );
    w.sim.advance(ms(300));
    assert_eq!(w.bk_master().cluster_state(), ClusterState::Running);
    assert_eq!(w.bk_master().last_transaction(), before.unwrap_or(ZERO_TID));
    for s in w.bk_storages.clone() {
        let n = w.sim.node_mut::<Sql>(s);
        assert_eq!(last_serial(n, 0), before);
        assert_eq!(n.db_mut().last_ids().unwrap().0, before);
    }
}

/// `--backup`: a new backup cluster goes to BACKINGUP by itself once
/// started (its database is empty) and follows the upstream's commits.
#[test]
fn backup_at_once_on_an_empty_database() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::build(dir.path(), false, true, 2);
    assert_eq!(w.bk_master().cluster_state(), ClusterState::BackingUp);
    assert_eq!(w.bk_master().backup_tid(), Some(ZERO_TID));
    let t1 = w.commit(&[(0, b"a1"), (1, b"b1")]);
    w.sim.advance(ms(100));
    assert_eq!(w.bk_master().backup_tid(), Some(t1));
    for s in w.bk_storages.clone() {
        let n = w.sim.node_mut::<Sql>(s);
        assert_eq!(data_of(n, 1).as_deref(), Some(&b"b1"[..]));
        assert_eq!(n.db_mut().backup_tid().unwrap(), Some(t1));
    }
}

/// The upstream storage an order names cannot be reached; once the
/// upstream master reports it lost, the order goes to the other upstream
/// replica and the backup completes.
#[test]
fn lost_upstream_storage_orders_go_to_another() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new(dir.path(), true);
    let r = w.set_state(ClusterState::StartingBackup);
    assert!(
        matches!(&r, Body::Error(e) if e.code == ErrorCode::Ack),
        "{r:?}"
    );
    let t1 = w.commit(&[(0, b"a1"), (1, b"b1")]);
    w.sim.advance(ms(1500));
    // Partition 1 waits for the hidden storage: complete up to just
    // before t1.
    assert_eq!(w.bk_master().backup_tid(), Some(Tid(t1.0 - 1)));
    let hidden = w.up_storages[1];
    w.sim.kill(hidden);
    w.sim.advance(ms(1500));
    assert_eq!(w.bk_master().cluster_state(), ClusterState::BackingUp);
    assert_eq!(w.bk_master().backup_tid(), Some(t1));
    for s in w.bk_storages.clone() {
        let n = w.sim.node_mut::<Sql>(s);
        assert_eq!(data_of(n, 0).as_deref(), Some(&b"a1"[..]));
        assert_eq!(data_of(n, 1).as_deref(), Some(&b"b1"[..]));
        assert_eq!(n.db_mut().backup_tid().unwrap(), Some(t1));
    }
}

/// Transactions committed upstream back to back (8 partitions: each
/// touches few), while the backup storages replicate the first ones: every
/// cell, on the master and in each storage's database, ends complete up to
/// the last one (the master tells a storage when later tids did not touch
/// its partition).
#[test]
fn back_to_back_commits_leave_storages_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::build(dir.path(), false, false, 8);
    let r = w.set_state(ClusterState::StartingBackup);
    assert!(
        matches!(&r, Body::Error(e) if e.code == ErrorCode::Ack),
        "{r:?}"
    );
    let objs: Vec<[(u64, &[u8]); 1]> = (0..6u64).map(|i| [(i, &b"xxxxxxxx"[..])]).collect();
    let ttids: Vec<Tid> = objs.iter().map(|o| w.store(o)).collect();
    let txns: Vec<(Tid, Objs)> = ttids.iter().zip(&objs).map(|(t, o)| (*t, &o[..])).collect();
    let tids = w.finish(&txns);
    w.sim.advance(ms(500));
    let last = *tids.iter().max().unwrap();
    assert_eq!(w.bk_master().backup_tid(), Some(last));
    for s in w.bk_storages.clone() {
        let n = w.sim.node_mut::<Sql>(s);
        assert_eq!(n.db_mut().backup_tid().unwrap(), Some(last));
        for (oid, tid) in (0..6u64).zip(&tids) {
            assert_eq!(last_serial(n, oid), Some(*tid));
        }
    }
}

/// A backup storage down while upstream commits comes back: its cells
/// are filled from the other backup storage, then completed from
/// upstream; the backup tid reaches the last tid and both storages have
/// everything.
#[test]
fn backup_storage_back_after_a_failure_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new(dir.path(), false);
    let t1 = w.commit(&[(0, b"a1"), (1, b"b1")]);
    let r = w.set_state(ClusterState::StartingBackup);
    assert!(
        matches!(&r, Body::Error(e) if e.code == ErrorCode::Ack),
        "{r:?}"
    );
    w.sim.advance(ms(100));
    assert_eq!(w.bk_master().backup_tid(), Some(t1));

    let i2 = w.bk_storages[1];
    w.sim.kill(i2);
    w.sim.advance(ms(100));
    let t2 = w.commit(&[(0, b"a2")]);
    let t3 = w.commit(&[(1, b"b3"), (2, b"c3")]);
    w.sim.advance(ms(100));
    assert_eq!(w.bk_master().backup_tid(), Some(t3));

    // Back on the same database (the dead node's handle goes).
    let other =
        SqliteBackend::open(&dir.path().join("spare.sqlite"), &SqliteOptions::default()).unwrap();
    drop(std::mem::replace(w.sim.node_mut::<Sql>(i2).db_mut(), other));
    let back = w.sim.add(
        Some(addr(34102)),
        storage(dir.path(), "bk", BK_MASTER, 34102),
    );
    w.bk_storages[1] = back;
    w.sim.advance(ms(1500));
    let t4 = w.commit(&[(3, b"d4")]);
    w.sim.advance(ms(500));
    assert_eq!(w.bk_master().cluster_state(), ClusterState::BackingUp);
    let nid = w.sim.node::<Sql>(back).nid().unwrap();
    let pt = w.bk_master().pt();
    assert!((0..pt.np()).all(|p| pt.cell(p, nid) == Some(neo_proto::CellState::UpToDate)));
    assert_eq!(w.bk_master().backup_tid(), Some(t4));
    for s in w.bk_storages.clone() {
        let n = w.sim.node_mut::<Sql>(s);
        assert_eq!(last_serial(n, 0), Some(t2), "storage {s}");
        assert_eq!(last_serial(n, 1), Some(t3));
        assert_eq!(data_of(n, 2).as_deref(), Some(&b"c3"[..]));
        assert_eq!(data_of(n, 3).as_deref(), Some(&b"d4"[..]));
        assert_eq!(n.db_mut().backup_tid().unwrap(), Some(t4));
    }
    // Leaving backup mode keeps everything.
    let r = w.set_state(ClusterState::StoppingBackup);
    assert!(
        matches!(&r, Body::Error(e) if e.code == ErrorCode::Ack),
        "{r:?}"
    );
    w.sim.advance(ms(300));
    assert_eq!(w.bk_master().cluster_state(), ClusterState::Running);
    assert_eq!(w.bk_master().last_transaction(), t4);
}
