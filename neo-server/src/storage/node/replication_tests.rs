//! Replication of out-of-date cells, in a simulation with the real master,
//! storage nodes on SQLite and a scripted client (conversations 05 and 06).

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

fn master_addr() -> SocketAddr {
    "127.0.0.1:32000".parse().unwrap()
}

fn storage_addr(n: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 32100 + n))
}

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

/// The cluster: the master, storages by number, a client (or admin).
struct Cluster {
    sim: Sim,
    m: usize,
    storages: Vec<(u16, usize)>,
    client: usize,
    mconn: ConnId,
    me: NodeId,
    ts: f64,
}

fn open(dir: &Path, n: u16) -> SqliteBackend {
    SqliteBackend::open(&dir.join(format!("s{n}.sqlite")), &SqliteOptions::default()).unwrap()
}

fn storage(n: u16, db: SqliteBackend) -> Sql {
    StorageNode::new(
        StorageConfig {
            cluster: "test".into(),
            masters: vec![master_addr()],
            address: storage_addr(n),
            nid: None,
            database: format!("s{n}"),
            disable_pack: false,
        },
        db,
    )
    .unwrap()
}

impl Cluster {
    /// A master with `np` partitions and one replica, storages 1..=`n`.
    fn new(dir: &Path, np: u32, n: u16) -> Cluster {
        Cluster::with_replicas(dir, np, n, 1)
    }

    /// A master with `np` partitions and `replicas`, storages 1..=`n`.
    fn with_replicas(dir: &Path, np: u32, n: u16, replicas: u32) -> Cluster {
        let mut sim = Sim::new();
        let m = sim.add(
            Some(master_addr()),
            Master::new(MasterConfig {
                cluster: "test".into(),
                address: Address::new("127.0.0.1", 32000),
                partitions: np,
                replicas,
                autostart: Some(n.into()),
                nid: None,
            })
            .unwrap(),
        );
        let storages = (1..=n)
            .map(|i| (i, sim.add(Some(storage_addr(i)), storage(i, open(dir, i)))))
            .collect();
        sim.advance(ms(200));
        assert_eq!(sim.node::<Master>(m).cluster_state(), ClusterState::Running);
        let client = sim.add(None, Peer::default());
        sim.poke::<Peer>(client, |_, out| {
            out.connect(master_addr(), 0);
        });
        sim.run();
        let mconn = sim.node::<Peer>(client).conns[0];
        let mut c = Cluster {
            sim,
            m,
            storages,
            client,
            mconn,
            me: NodeId(0),
            ts: 0.0,
        };
        let r = c.request(
            mconn,
            RequestIdentification {
                node_type: NodeType::Client,
                uuid: None,
                address: None,
                name: Bytes::from_static(b"test"),
                id_timestamp: None,
                extra: Map::new(),
            },
        );
        let Body::AcceptIdentification(a) = r else {
            panic!("{r:?}")
        };
        c.me = a.your_uuid.unwrap();
        let me = c.me;
        c.ts = c
            .sim
            .node::<Peer>(client)
            .inbox
            .iter()
            .filter_map(|(_, p)| match &p.body {
                Body::NotifyNodeInformation(n) => n.node_list.iter().find(|i| i.uuid == Some(me)),
                _ => None,
            })
            .find_map(|i| i.id_timestamp)
            .expect("our id timestamp");
        c
    }

    fn index(&self, n: u16) -> usize {
        self.storages.iter().find(|s| s.0 == n).unwrap().1
    }

    fn node(&self, n: u16) -> &Sql {
        self.sim.node::<Sql>(self.index(n))
    }

    fn request(&mut self, conn: ConnId, body: impl Into<Body>) -> Body {
        let body = body.into();
        let mut id = 0;
        self.sim
            .poke::<Peer>(self.client, |_, out| id = out.ask(conn, body));
        self.sim.run();
        let inbox = &mut self.sim.node_mut::<Peer>(self.client).inbox;
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

    /// A client connection to storage `n`, identified.
    fn connect(&mut self, n: u16) -> ConnId {
        self.sim.poke::<Peer>(self.client, |_, out| {
            out.connect(storage_addr(n), 0);
        });
        self.sim.run();
        let conn = *self.sim.node::<Peer>(self.client).conns.last().unwrap();
        let r = self.request(
            conn,
            RequestIdentification {
                node_type: NodeType::Client,
                uuid: Some(self.me),
                address: None,
                name: Bytes::from_static(b"test"),
                id_timestamp: Some(self.ts),
                extra: Map::new(),
            },
        );
        assert!(matches!(r, Body::AcceptIdentification(_)), "{r:?}");
        conn
    }

    /// Begins a transaction, stores and votes on `conns`.
    fn store(&mut self, conns: &[ConnId], objs: &[(u64, Tid, &[u8])]) -> Tid {
        let mconn = self.mconn;
        let Body::AnswerBeginTransaction(b) =
            self.request(mconn, AskBeginTransaction { tid: None })
        else {
            panic!()
        };
        let ttid = b.ttid;
        for &conn in conns {
            for &(oid, serial, data) in objs {
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

    fn finish(&mut self, ttid: Tid, oids: &[u64]) -> Tid {
        let mconn = self.mconn;
        let r = self.request(
            mconn,
            AskFinishTransaction {
                ttid,
                oid_list: oids.iter().map(|&o| Oid(o)).collect(),
                deleted: vec![],
                checked: vec![],
                pack: None,
            },
        );
        let Body::AnswerTransactionFinished(f) = r else {
            panic!("{r:?}")
        };
        f.tid
    }

    fn commit(&mut self, conns: &[ConnId], objs: &[(u64, Tid, &[u8])]) -> Tid {
        let ttid = self.store(conns, objs);
        let oids: Vec<u64> = objs.iter().map(|o| o.0).collect();
        self.finish(ttid, &oids)
    }

    fn load(&mut self, conn: ConnId, oid: u64) -> (Tid, Vec<u8>) {
        let r = self.request(
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

    /// Cell states of storage `nid` in the master's table.
    fn cells(&self, nid: NodeId) -> Vec<Option<neo_proto::CellState>> {
        let pt = self.sim.node::<Master>(self.m).pt();
        (0..pt.np()).map(|p| pt.cell(p, nid)).collect()
    }
}

/// A storage killed while the cluster commits, then restarted: it
/// replicates what it missed, its cells become UP_TO_DATE, it serves the
/// same data; a transaction in progress at its restart is waited for, and
/// one committed while it is out of date is not lost.
#[test]
fn restarted_storage_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path(), 4, 2);
    let nid2 = c.node(2).nid().unwrap();
    let c1 = c.connect(1);
    let c2 = c.connect(2);
    let t1 = c.commit(&[c1, c2], &[(0, ZERO_TID, b"a0"), (1, ZERO_TID, b"b0")]);

    // Storage 2 dies; the cluster goes on with storage 1.
    let i2 = c.index(2);
    c.sim.kill(i2);
    c.sim.advance(ms(100));
    assert!(c
        .cells(nid2)
        .iter()
        .all(|s| *s == Some(neo_proto::CellState::OutOfDate)));
    let t2 = c.commit(&[c1], &[(0, t1, b"a1"), (2, ZERO_TID, b"c0")]);
    let mut last = t2;
    for i in 0..30u64 {
        last = c.commit(&[c1], &[(10 + i, ZERO_TID, b"bulk")]);
    }
    // A transaction in progress when storage 2 comes back.
    let pending = c.store(&[c1], &[(3, ZERO_TID, b"d0")]);

    // Restart on the same database (the dead process's handle goes:
    // uncommitted changes are rolled back).
    let old = open(dir.path(), 99);
    drop(std::mem::replace(c.sim.node_mut::<Sql>(i2).db_mut(), old));
    let mut node = storage(2, open(dir.path(), 2));
    // Small chunks: several fetches per partition.
    node.set_fetch_count(3);
    let s2 = c.sim.add(Some(storage_addr(2)), node);
    c.storages.retain(|s| s.0 != 2);
    c.storages.push((2, s2));
    c.sim.advance(ms(300));
    assert!(c.node(2).is_operational());
    // Replicated up to the last commit, but waits for the pending one.
    assert_eq!(c.node(2).replicating(), vec![0, 1, 2, 3]);
    assert!(c
        .cells(nid2)
        .iter()
        .all(|s| *s == Some(neo_proto::CellState::OutOfDate)));

    // Committed while storage 2 is out of date: stored to both.
    let c2 = c.connect(2);
    let t3 = c.commit(&[c1, c2], &[(1, t1, b"b1")]);
    let t4 = c.finish(pending, &[3]);
    assert!(t4 > t3 && t3 > last);
    c.sim.advance(ms(300));
    assert!(c.node(2).replicating().is_empty());
    assert!(
        c.cells(nid2)
            .iter()
            .all(|s| *s == Some(neo_proto::CellState::UpToDate)),
        "{:?}",
        c.cells(nid2)
    );
    // Storage 2 serves what storage 1 serves.
    for oid in [0, 1, 2, 3, 10, 25, 39] {
        let a = c.load(c1, oid);
        assert_eq!(c.load(c2, oid), a, "oid {oid}");
    }
    assert_eq!(c.load(c2, 0), (t2, b"a1".to_vec()));
    assert_eq!(c.load(c2, 1), (t3, b"b1".to_vec()));
    assert_eq!(c.load(c2, 3), (t4, b"d0".to_vec()));
    let r = c.request(
        c2,
        AskTIDs {
            first: 0,
            last: 100,
            partition: INVALID_PARTITION,
        },
    );
    let r1 = c.request(
        c1,
        AskTIDs {
            first: 0,
            last: 100,
            partition: INVALID_PARTITION,
        },
    );
    assert_eq!(r, r1);
}

/// A storage added to a running cluster (`neoctl add` then `tweak`): it
/// replicates the partitions it gets, which become UP_TO_DATE, and serves
/// them; the cells moved away are dropped by their former owners.
#[test]
fn added_storage_gets_its_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path(), 4, 2);
    let c1 = c.connect(1);
    let c2 = c.connect(2);
    let mut serials = Vec::new();
    for oid in 0..12u64 {
        let data = format!("object {oid}");
        serials.push(c.commit(&[c1, c2], &[(oid, ZERO_TID, data.as_bytes())]));
    }
    // Storage 3 joins: pending until added.
    let s3 = c
        .sim
        .add(Some(storage_addr(3)), storage(3, open(dir.path(), 3)));
    c.storages.push((3, s3));
    c.sim.advance(ms(200));
    let nid3 = c.node(3).nid().unwrap();
    assert_eq!(
        c.sim.node::<Master>(c.m).nodes().state(nid3),
        Some(NodeState::Pending)
    );
    // An admin adds it and tweaks the partition table.
    c.sim.poke::<Peer>(c.client, |_, out| {
        out.connect(master_addr(), 0);
    });
    c.sim.run();
    let admin = *c.sim.node::<Peer>(c.client).conns.last().unwrap();
    let r = c.request(
        admin,
        RequestIdentification {
            node_type: NodeType::Admin,
            uuid: None,
            address: Some(Address::new("127.0.0.1", 32200)),
            name: Bytes::from_static(b"test"),
            id_timestamp: None,
            extra: Map::new(),
        },
    );
    assert!(matches!(r, Body::AcceptIdentification(_)), "{r:?}");
    let r = c.request(
        admin,
        AddPendingNodes {
            uuid_list: vec![nid3],
        },
    );
    assert_eq!(error_code(&r), Some(ErrorCode::Ack), "{r:?}");
    c.sim.advance(ms(100));
    assert!(c.node(3).is_operational());
    let r = c.request(
        admin,
        TweakPartitionTable {
            dry_run: false,
            uuid_list: vec![],
        },
    );
    assert!(matches!(r, Body::AnswerTweakPartitionTable(_)), "{r:?}");
    c.sim.advance(ms(500));
    let pt = c.sim.node::<Master>(c.m).pt();
    let mine = pt.assigned_offsets(nid3);
    assert!(mine.len() >= 2, "{mine:?}");
    assert_eq!(pt.readable_offsets(nid3), mine);
    assert!(c.node(3).replicating().is_empty());
    // Every row has two readable cells again, no FEEDING one left.
    for p in 0..4 {
        let row = pt.row(p);
        assert_eq!(row.len(), 2, "partition {p}: {row:?}");
        assert!(row
            .iter()
            .all(|cell| cell.state == neo_proto::CellState::UpToDate));
    }
    // Storage 3 serves its partitions.
    let c3 = c.connect(3);
    for oid in 0..12u64 {
        if !mine.contains(&((oid % 4) as u32)) {
            continue;
        }
        let data = format!("object {oid}");
        assert_eq!(
            c.load(c3, oid),
            (serials[oid as usize], data.into_bytes()),
            "oid {oid}"
        );
        // Its former owner dropped it.
        let row = c
            .sim
            .node::<Master>(c.m)
            .pt()
            .row((oid % 4) as u32)
            .to_vec();
        for (n, conn) in [(1, c1), (2, c2)] {
            let nid = c.node(n).nid().unwrap();
            if row.iter().any(|cell| cell.uuid == nid) {
                continue;
            }
            let at = AskObject {
                oid: Oid(oid),
                at: None,
                before: None,
            };
            let r = c.request(conn, at);
            assert_eq!(error_code(&r), Some(ErrorCode::NonReadableCell), "{r:?}");
        }
    }
}

fn error_code(b: &Body) -> Option<ErrorCode> {
    match b {
        Body::Error(e) => Some(e.code),
        _ => None,
    }
}

/// Stores to a replicating partition take no lock; once it is replicated,
/// the pending transaction holds the lock and a younger one waits.
#[test]
fn lockless_stores_are_locked_once_replicated() {
    use super::txn::{LockError, StoreData, TxnManager};
    use crate::storage::CellState;
    use crate::storage::MemoryBackend;
    let mut db = MemoryBackend::new(false);
    db.set_nid(1).unwrap();
    let cells = [(0, 1, CellState::UpToDate), (1, 1, CellState::OutOfDate)];
    db.change_partition_table(1, 0, &cells, true, ZERO_TID)
        .unwrap();
    let mut tm = TxnManager::new();
    let (a, b) = (Tid(100), Tid(200));
    tm.register(NodeId(-536_870_911), a);
    tm.register(NodeId(-536_870_910), b);
    let data = StoreData {
        compression: 0,
        checksum: Some(make_checksum(b"x")),
        data: b"x".to_vec(),
    };
    tm.set_replicating([1].into(), 2);
    // Oid 3 is in partition 1: no lock, no conflict check.
    tm.store_object(&mut db, a, Tid(42), Oid(3), &data, None)
        .unwrap();
    assert_eq!(tm.locking_tid(Oid(3)), None);
    tm.set_replicating([].into(), 2);
    assert_eq!(tm.locking_tid(Oid(3)), Some(a));
    let r = tm.store_object(&mut db, b, Tid(42), Oid(3), &data, None);
    assert!(
        matches!(r, Err(LockError::Delay { key, .. }) if key == b),
        "{r:?}"
    );
}

/// The transaction a restarted storage waits for is aborted: the
/// partitions it already replicated are done all the same.
#[test]
fn awaited_transaction_aborted() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path(), 2, 2);
    let nid2 = c.node(2).nid().unwrap();
    let c1 = c.connect(1);
    let c2 = c.connect(2);
    let t1 = c.commit(&[c1, c2], &[(0, ZERO_TID, b"a0")]);
    let i2 = c.index(2);
    c.sim.kill(i2);
    c.sim.advance(ms(100));
    let t2 = c.commit(&[c1], &[(0, t1, b"a1"), (1, ZERO_TID, b"b0")]);
    let pending = c.store(&[c1], &[(2, ZERO_TID, b"never")]);
    let old = open(dir.path(), 99);
    drop(std::mem::replace(c.sim.node_mut::<Sql>(i2).db_mut(), old));
    let s2 = c
        .sim
        .add(Some(storage_addr(2)), storage(2, open(dir.path(), 2)));
    c.storages.retain(|s| s.0 != 2);
    c.storages.push((2, s2));
    c.sim.advance(ms(300));
    assert_eq!(c.node(2).replicating(), vec![0, 1]);
    let mconn = c.mconn;
    c.sim.poke::<Peer>(c.client, |_, out| {
        out.notify(
            mconn,
            AbortTransaction {
                ttid: pending,
                uuid_list: vec![],
            },
        )
    });
    c.sim.advance(ms(300));
    assert!(c.node(2).replicating().is_empty());
    assert!(
        c.cells(nid2)
            .iter()
            .all(|s| *s == Some(neo_proto::CellState::UpToDate)),
        "{:?}",
        c.cells(nid2)
    );
    let c2 = c.connect(2);
    assert_eq!(c.load(c2, 0), (t2, b"a1".to_vec()));
    assert_eq!(c.load(c2, 1), (t2, b"b0".to_vec()));
}

/// The source dies between two rounds (its kept connection closes): the
/// next round is fetched from another readable storage.
#[test]
fn another_source_after_the_first_dies() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::with_replicas(dir.path(), 2, 3, 2);
    let nid3 = c.node(3).nid().unwrap();
    let c1 = c.connect(1);
    let c2 = c.connect(2);
    let c3 = c.connect(3);
    let t1 = c.commit(&[c1, c2, c3], &[(0, ZERO_TID, b"a0")]);
    let i3 = c.index(3);
    c.sim.kill(i3);
    c.sim.advance(ms(100));
    let t2 = c.commit(&[c1, c2], &[(0, t1, b"a1")]);
    let pending = c.store(&[c1, c2], &[(1, ZERO_TID, b"b0")]);
    let old = open(dir.path(), 99);
    drop(std::mem::replace(c.sim.node_mut::<Sql>(i3).db_mut(), old));
    let s3 = c
        .sim
        .add(Some(storage_addr(3)), storage(3, open(dir.path(), 3)));
    c.storages.retain(|s| s.0 != 3);
    c.storages.push((3, s3));
    c.sim.advance(ms(300));
    // First round done, the connection to its source kept.
    assert_eq!(c.node(3).replicating(), vec![0, 1]);
    let source = c
        .node(3)
        .replicator
        .idle_source()
        .expect("a kept connection");
    let dead = if source == c.node(1).nid().unwrap() {
        1
    } else {
        2
    };
    let i = c.index(dead);
    c.sim.kill(i);
    c.sim.advance(ms(100));
    assert!(c.node(3).replicator.idle_source().is_none());
    let t3 = c.finish(pending, &[1]);
    c.sim.advance(ms(300));
    assert!(c.node(3).replicating().is_empty());
    assert!(
        c.cells(nid3)
            .iter()
            .all(|s| *s == Some(neo_proto::CellState::UpToDate)),
        "{:?}",
        c.cells(nid3)
    );
    let c3 = c.connect(3);
    assert_eq!(c.load(c3, 0), (t2, b"a1".to_vec()));
    assert_eq!(c.load(c3, 1), (t3, b"b0".to_vec()));
}
