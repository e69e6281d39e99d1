//! Backup mode in one simulation: an upstream cluster (real master, two
//! SQLite storages, one replica) and a backup cluster (real master with
//! the upstream options, two SQLite storages, one replica), a scripted
//! client committing upstream and a scripted admin switching the backup
//! cluster's state.

use std::path::Path;

use fsformat::{Oid, Tid};
use neo_proto::*;

use super::*;
use crate::master::Master;
use crate::runtime::ConnId;
use crate::sim::testkit::{addr, identification, ClusterSpec, Peer};
use crate::sim::{ms, Sim};
use crate::storage::{SqliteBackend, SqliteOptions};

type Sql = StorageNode<SqliteBackend>;
/// Objects of a transaction: (oid, data).
type Objs<'a> = &'a [(u64, &'a [u8])];

const UP_MASTER: u16 = 33000;
const BK_MASTER: u16 = 34000;
/// Where the second upstream storage says it listens when it cannot be
/// reached by the backup storages (nothing listens there).
const NOWHERE: u16 = 33199;

/// Cluster `name` with its master at `port`: `np` partitions, one
/// replica, started by its two storages.
fn spec(name: &str, port: u16, np: u32) -> ClusterSpec {
    ClusterSpec::new(name, port)
        .partitions(np)
        .replicas(1)
        .autostart(2)
}

/// The backup cluster's master, following the upstream cluster.
fn bk_master(np: u32) -> Master {
    spec("bk", BK_MASTER, np)
        .master()
        .with_upstream("up".into(), vec![addr(UP_MASTER)])
}

struct World {
    sim: Sim,
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
        let (up_spec, bk_spec) = (spec("up", UP_MASTER, np), spec("bk", BK_MASTER, np));
        let mut sim = Sim::new();
        let up = up_spec.add_master(&mut sim);
        let bk_master = bk_master(np);
        let bk_master = if at_once {
            bk_master.with_backup_at_once()
        } else {
            bk_master
        };
        let bk = sim.add(Some(addr(BK_MASTER)), bk_master);
        let second = if hide_second { NOWHERE } else { 33102 };
        let up_storages = up_spec.add_storages(&mut sim, [33101, 33102], |port| {
            let announced = if port == 33102 { second } else { port };
            up_spec.sqlite_storage(dir, announced)
        });
        let bk_storages =
            bk_spec.add_storages(&mut sim, [34101, 34102], |p| bk_spec.sqlite_storage(dir, p));
        sim.advance(ms(200));
        assert_eq!(
            sim.node::<Master>(up).cluster_state(),
            ClusterState::Running
        );
        let peer = sim.add(None, Peer::default());
        let client = identification(NodeType::Client, "up", None);
        let (m, me, ts) = sim.join(peer, addr(UP_MASTER), client).expect("a client");
        let mut up_conns = vec![m];
        for port in [33101, 33102] {
            let ident = identification(NodeType::Client, "up", Some((me, ts)));
            up_conns.push(sim.attach(peer, addr(port), ident));
        }
        let ident = identification(NodeType::Admin, "bk", None);
        let admin = sim.attach(peer, addr(BK_MASTER), ident);
        World {
            sim,
            bk,
            up_storages,
            bk_storages,
            peer,
            up_conns,
            admin,
        }
    }

    fn request(&mut self, conn: ConnId, body: impl Into<Body>) -> Body {
        self.sim.request(self.peer, conn, body)
    }

    /// Commits `objs` (oid, data) upstream (both storages hold every
    /// partition).
    fn commit(&mut self, objs: &[(u64, &[u8])]) -> Tid {
        let ttid = self.store(objs);
        self.finish(&[(ttid, objs)])[0]
    }

    /// Begins a transaction upstream and stores `objs`, each based on its
    /// last serial in the first upstream storage: its ttid.
    fn store(&mut self, objs: &[(u64, &[u8])]) -> Tid {
        let ttid = self.sim.begin(self.peer, self.up_conns[0]);
        let first = self.up_storages[0];
        let objs: Vec<(u64, Tid, &[u8])> = objs
            .iter()
            .map(|&(oid, data)| {
                let serial = last_serial(self.sim.node_mut::<Sql>(first), oid);
                (oid, serial.unwrap_or(ZERO_TID), data)
            })
            .collect();
        self.sim.store(self.peer, &self.up_conns[1..], ttid, &objs);
        ttid
    }

    /// Finishes stored transactions, all asked at once (their
    /// invalidations reach the backup master back to back): their tids.
    fn finish(&mut self, txns: &[(Tid, Objs)]) -> Vec<Tid> {
        let txns: Vec<(Tid, Vec<u64>)> = txns
            .iter()
            .map(|(ttid, objs)| (*ttid, objs.iter().map(|o| o.0).collect()))
            .collect();
        self.sim.finish(self.peer, self.up_conns[0], &txns)
    }

    /// A read-only client of the backup cluster connected to its first
    /// storage: (master conn, storage conn).
    fn backup_reader(&mut self) -> (ConnId, ConnId) {
        let ident = |me| {
            let mut r = identification(NodeType::Client, "bk", me);
            r.extra = [(Bytes::from_static(b"read_only"), Value::Bool(true))]
                .into_iter()
                .collect();
            r
        };
        let (m, me, ts) = self
            .sim
            .join(self.peer, addr(BK_MASTER), ident(None))
            .expect("a reader");
        let s = self
            .sim
            .attach(self.peer, addr(34101), ident(Some((me, ts))));
        (m, s)
    }

    /// `neoctl set cluster`: acknowledged.
    fn set_state(&mut self, state: ClusterState) {
        let admin = self.admin;
        let r = self.request(admin, SetClusterState { state });
        assert!(
            matches!(&r, Body::Error(e) if e.code == ErrorCode::Ack),
            "{r:?}"
        );
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

/// Every backup storage holds the first commit (a1, b1) and is backed up
/// to `t1`.
fn assert_backed_up_t1(w: &mut World, t1: Tid) {
    for s in w.bk_storages.clone() {
        let n = w.sim.node_mut::<Sql>(s);
        assert_eq!(data_of(n, 0).as_deref(), Some(&b"a1"[..]));
        assert_eq!(data_of(n, 1).as_deref(), Some(&b"b1"[..]));
        assert_eq!(n.db_mut().backup_tid().unwrap(), Some(t1));
    }
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

    w.set_state(ClusterState::StartingBackup);
    w.sim.advance(ms(100));
    assert_eq!(w.bk_master().cluster_state(), ClusterState::BackingUp);
    assert_eq!(w.bk_master().backup_tid(), Some(t1));
    assert_backed_up_t1(&mut w, t1);

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
    let writer = identification(NodeType::Client, "bk", None);
    let (_, r) = w.sim.identify(w.peer, addr(BK_MASTER), writer);
    assert!(matches!(r, Body::Error(_)), "{r:?}");

    w.set_state(ClusterState::StoppingBackup);
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
    let client = identification(NodeType::Client, "bk", None);
    let (_, me, ts) = w
        .sim
        .join(w.peer, addr(BK_MASTER), client)
        .expect("a client");
    let client = identification(NodeType::Client, "bk", Some((me, ts)));
    let s = w.sim.attach(w.peer, addr(34101), client);
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
    w.set_state(ClusterState::StartingBackup);
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
    w.bk = w.sim.add(Some(addr(BK_MASTER)), bk_master(2));
    w.sim.advance(ms(3000));
    let admin = identification(NodeType::Admin, "bk", None);
    w.admin = w.sim.attach(w.peer, addr(BK_MASTER), admin);
    // Autostart (-A 2) with both storages back: no neoctl start.
    assert_eq!(w.bk_master().cluster_state(), ClusterState::BackingUp);
    assert_eq!(w.bk_master().backup_tid(), Some(before.unwrap_or(ZERO_TID)));
    assert_eq!(w.bk_master().last_transaction(), after);
    w.set_state(ClusterState::StoppingBackup);
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
    w.set_state(ClusterState::StartingBackup);
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
    assert_backed_up_t1(&mut w, t1);
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
    w.set_state(ClusterState::StartingBackup);
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
    w.set_state(ClusterState::StartingBackup);
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
    let bk_spec = spec("bk", BK_MASTER, 2);
    let back = w
        .sim
        .add(Some(addr(34102)), bk_spec.sqlite_storage(dir.path(), 34102));
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
    w.set_state(ClusterState::StoppingBackup);
    w.sim.advance(ms(300));
    assert_eq!(w.bk_master().cluster_state(), ClusterState::Running);
    assert_eq!(w.bk_master().last_transaction(), t4);
}
