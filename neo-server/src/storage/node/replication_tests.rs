//! Replication of out-of-date cells, in a simulation with the real master,
//! storage nodes on SQLite and a scripted client (conversations 05 and 06).

use std::path::Path;

use fsformat::{Oid, Tid};
use neo_proto::*;

use super::*;
use crate::master::Master;
use crate::runtime::ConnId;
use crate::sim::testkit::{addr, identification, ClusterSpec, Objects, Peer};
use crate::sim::{ms, Sim};
use crate::storage::{make_checksum, SqliteBackend};

type Sql = StorageNode<SqliteBackend>;

/// The port of storage `n`.
fn port(n: u16) -> u16 {
    32100 + n
}

/// The cluster: the master, storages by number, a client (or admin).
struct Cluster {
    spec: ClusterSpec,
    sim: Sim,
    m: usize,
    storages: Vec<(u16, usize)>,
    client: usize,
    mconn: ConnId,
    me: NodeId,
    ts: f64,
}

impl Cluster {
    /// A master with `np` partitions and one replica, storages 1..=`n`.
    fn new(dir: &Path, np: u32, n: u16) -> Cluster {
        Cluster::with_replicas(dir, np, n, 1)
    }

    /// A master with `np` partitions and `replicas`, storages 1..=`n`.
    fn with_replicas(dir: &Path, np: u32, n: u16, replicas: u32) -> Cluster {
        let spec = ClusterSpec::new("test", 32000)
            .partitions(np)
            .replicas(replicas)
            .autostart(n.into());
        let mut sim = Sim::new();
        let storage = |p| spec.sqlite_storage(dir, p);
        let (m, storages) = spec.start(&mut sim, (1..=n).map(port), storage, ms(200));
        let client = sim.add(None, Peer::default());
        let ident = identification(NodeType::Client, "test", None);
        let (mconn, me, ts) = sim
            .join(client, spec.master_addr(), ident)
            .expect("a client");
        Cluster {
            storages: (1..=n).zip(storages).collect(),
            spec,
            sim,
            m,
            client,
            mconn,
            me,
            ts,
        }
    }

    fn index(&self, n: u16) -> usize {
        self.storages.iter().find(|s| s.0 == n).unwrap().1
    }

    fn node(&self, n: u16) -> &Sql {
        self.sim.node::<Sql>(self.index(n))
    }

    /// Storage `n` (killed) restarted on its database, set up by `tune`
    /// first: the dead process's handle goes (uncommitted changes are
    /// rolled back).
    fn restart(&mut self, dir: &Path, n: u16, tune: impl FnOnce(&mut Sql)) {
        let spare = self.spec.sqlite(dir, 99);
        drop(std::mem::replace(
            self.sim.node_mut::<Sql>(self.index(n)).db_mut(),
            spare,
        ));
        let mut node = self.spec.sqlite_storage(dir, port(n));
        tune(&mut node);
        let i = self.sim.add(Some(addr(port(n))), node);
        self.storages.retain(|s| s.0 != n);
        self.storages.push((n, i));
    }

    fn request(&mut self, conn: ConnId, body: impl Into<Body>) -> Body {
        self.sim.request(self.client, conn, body)
    }

    /// A client connection to storage `n`, identified.
    fn connect(&mut self, n: u16) -> ConnId {
        let ident = identification(NodeType::Client, "test", Some((self.me, self.ts)));
        self.sim.attach(self.client, addr(port(n)), ident)
    }

    /// Begins a transaction, stores and votes on `conns`.
    fn store(&mut self, conns: &[ConnId], objs: &Objects) -> Tid {
        let ttid = self.sim.begin(self.client, self.mconn);
        self.sim.store(self.client, conns, ttid, objs);
        ttid
    }

    fn finish(&mut self, ttid: Tid, oids: &[u64]) -> Tid {
        self.sim
            .finish(self.client, self.mconn, &[(ttid, oids.to_vec())])[0]
    }

    fn commit(&mut self, conns: &[ConnId], objs: &Objects) -> Tid {
        self.sim.commit(self.client, self.mconn, conns, objs)
    }

    fn load(&mut self, conn: ConnId, oid: u64) -> (Tid, Vec<u8>) {
        self.sim.load(self.client, conn, oid)
    }

    /// Cell states of storage `nid` in the master's table.
    fn cells(&self, nid: NodeId) -> Vec<Option<neo_proto::CellState>> {
        let pt = self.sim.node::<Master>(self.m).pt();
        (0..pt.np()).map(|p| pt.cell(p, nid)).collect()
    }
}

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

    // Restart on the same database, small chunks: several fetches per
    // partition.
    c.restart(dir.path(), 2, |node| node.set_fetch_count(3));
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
    let s3 = c.sim.add(
        Some(addr(port(3))),
        c.spec.sqlite_storage(dir.path(), port(3)),
    );
    c.storages.push((3, s3));
    c.sim.advance(ms(200));
    let nid3 = c.node(3).nid().unwrap();
    assert_eq!(
        c.sim.node::<Master>(c.m).nodes().state(nid3),
        Some(NodeState::Pending)
    );
    // An admin adds it and tweaks the partition table.
    let mut ident = identification(NodeType::Admin, "test", None);
    ident.address = Some(Address::new("127.0.0.1", 32200));
    let admin = c.sim.attach(c.client, c.spec.master_addr(), ident);
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
    c.restart(dir.path(), 2, |_| {});
    c.sim.advance(ms(300));
    assert_eq!(c.node(2).replicating(), vec![0, 1]);
    let abort = AbortTransaction {
        ttid: pending,
        uuid_list: vec![],
    };
    c.sim.send(c.client, c.mconn, abort);
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
    c.restart(dir.path(), 3, |_| {});
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
