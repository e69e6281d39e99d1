//! Several masters in [`Sim`] with a real storage node (in memory), a real
//! admin node and a scripted client: one primary is elected, the others
//! send everybody to it, and when it dies a secondary takes over, recovers
//! from the storage and the commits go on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fsformat::Tid;
use neo_proto::{self as p, Address, Body, ClusterState, NodeId, NodeState, NodeType, ZERO_TID};

use super::Master;
use crate::admin::{Admin, AdminConfig};
use crate::runtime::ConnId;
use crate::sim::testkit::{identification, ClusterSpec, Objects, Peer};
use crate::sim::{ms, Sim};
use crate::storage::node::StorageNode;
use crate::storage::MemoryBackend;

const NP: u32 = 4;

fn maddr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 32000 + i as u16))
}
fn saddr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 32100))
}
fn aaddr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 32200))
}
fn m(n: u32) -> NodeId {
    NodeId::new(NodeType::Master, n)
}

/// The cluster as master `i` sees it: NP partitions, started by one
/// storage.
fn spec(i: usize) -> ClusterSpec {
    ClusterSpec::new("test", maddr(i).port()).partitions(NP)
}

/// The storage node, in memory, knowing `masters`.
fn storage(masters: Vec<SocketAddr>) -> Mem {
    let mut cfg = spec(0).storage_config(saddr().port(), "memory");
    cfg.masters = masters;
    StorageNode::new(cfg, MemoryBackend::new(false)).expect("storage")
}

/// One wall clock for every master (1 ms per reading): who starts first
/// has the smaller election key, and tids grow across fail-overs.
fn shared_clock(t: &Arc<AtomicU64>) -> super::Clock {
    let t = t.clone();
    Box::new(move || 1_795_542_385.0 + t.fetch_add(1, Ordering::Relaxed) as f64 * 1e-3)
}

struct World {
    sim: Sim,
    clock: Arc<AtomicU64>,
    n: usize,
    /// Sim index of each master (the latest one at that address).
    masters: Vec<usize>,
    storage: usize,
    admin: usize,
    client: usize,
}

type Mem = StorageNode<MemoryBackend>;

impl World {
    /// `n` masters started in order, then a storage and an admin that
    /// know the masters in reverse order (so that they meet a secondary
    /// first), then a client.
    fn new(n: usize) -> World {
        let _ = env_logger::builder().is_test(true).try_init();
        let mut w = World::masters(n);
        w.sim.advance(ms(10));
        let reversed: Vec<SocketAddr> = (0..n).rev().map(maddr).collect();
        w.storage = w.sim.add(Some(saddr()), storage(reversed.clone()));
        let acfg = AdminConfig {
            cluster: "test".into(),
            masters: reversed,
            address: aaddr(),
            nid: None,
        };
        w.admin = w.sim.add(Some(aaddr()), Admin::new(acfg));
        w.client = w.sim.add(None, Peer::default());
        w.sim.advance(Duration::from_secs(3));
        w
    }

    /// `n` masters added in order, nothing else yet.
    fn masters(n: usize) -> World {
        let mut w = World {
            sim: Sim::new(),
            clock: Arc::new(AtomicU64::new(0)),
            n,
            masters: Vec::new(),
            storage: 0,
            admin: 0,
            client: 0,
        };
        for i in 0..n {
            let idx = w.add_master(i);
            w.masters.push(idx);
        }
        w
    }

    fn add_master(&mut self, i: usize) -> usize {
        let all = (0..self.n).map(maddr).collect();
        let master = Master::with_clock(spec(i).master_config(), shared_clock(&self.clock))
            .expect("config")
            .with_masters(all);
        self.sim.add(Some(maddr(i)), master)
    }

    fn master(&self, i: usize) -> &Master {
        self.sim.node::<Master>(self.masters[i])
    }

    /// The indexes (in `0..n`) of the live masters playing the primary.
    fn primaries(&self, alive: &[usize]) -> Vec<usize> {
        alive
            .iter()
            .copied()
            .filter(|&i| self.master(i).is_primary())
            .collect()
    }

    fn storage(&self) -> &Mem {
        self.sim.node::<Mem>(self.storage)
    }

    fn connect(&mut self, to: SocketAddr) -> ConnId {
        self.sim.connect(self.client, to)
    }

    fn request(&mut self, conn: ConnId, body: impl Into<Body>) -> Body {
        self.sim.request(self.client, conn, body)
    }

    /// Identifies the client with the master at `to`: its node id and
    /// id_timestamp.
    fn identify(&mut self, to: SocketAddr) -> Result<(ConnId, NodeId, f64), Box<Body>> {
        let ident = identification(NodeType::Client, "test", None);
        self.sim.join(self.client, to, ident)
    }

    /// A client session: master and storage connections.
    fn session(&mut self, to: SocketAddr) -> (ConnId, ConnId) {
        let (mc, me, ts) = self.identify(to).expect("accepted by the primary");
        let ident = identification(NodeType::Client, "test", Some((me, ts)));
        let sc = self.sim.attach(self.client, saddr(), ident);
        (mc, sc)
    }

    /// One commit like NEO's client: begin, store, vote, finish.
    fn commit(&mut self, (mc, sc): (ConnId, ConnId), objs: &Objects) -> Tid {
        self.sim.commit(self.client, mc, &[sc], objs)
    }

    fn load(&mut self, sc: ConnId, oid: u64) -> (Tid, Vec<u8>) {
        self.sim.load(self.client, sc, oid)
    }

    fn close_session(&mut self, (mc, sc): (ConnId, ConnId)) {
        self.sim.poke::<Peer>(self.client, |_, out| {
            out.close(mc);
            out.close(sc);
        });
        self.sim.run();
    }
}

/// What a secondary answers to an identification: the primary's address.
fn redirect(body: &Body) -> Option<SocketAddr> {
    let Body::NotPrimaryMaster(n) = body else {
        return None;
    };
    let i = n.primary? as usize;
    super::election::to_socket(n.known_master_list.get(i)?)
}

#[test]
fn two_masters_elect_one_primary_and_send_everybody_to_it() {
    let mut w = World::new(2);
    assert_eq!(w.primaries(&[0, 1]), vec![0], "the first started wins");
    assert_eq!(w.master(1).primary_address(), Some(maddr(0)));
    // NEO's ids: the primary keeps M1, the secondary gets M2.
    assert_eq!((w.master(0).uuid(), w.master(1).uuid()), (m(1), m(2)));
    // The storage and the admin asked the secondary first.
    assert_eq!(w.master(0).cluster_state(), ClusterState::Running);
    assert!(w.storage().is_operational());
    assert!(w.sim.node::<Admin>(w.admin).is_connected());
    // The primary knows both masters; the secondary learnt them.
    for i in 0..2 {
        let masters: Vec<_> = w
            .master(i)
            .nodes()
            .iter()
            .filter(|n| n.node_type == NodeType::Master)
            .map(|n| (n.nid, n.state))
            .collect();
        assert_eq!(masters.len(), 2, "{masters:?}");
        assert!(masters.iter().all(|(_, s)| *s == NodeState::Running));
    }
    // A client at the secondary is sent to the primary, then closed.
    let a = w.identify(maddr(1)).expect_err("refused by the secondary");
    assert_eq!(redirect(&a), Some(maddr(0)), "{a:?}");
    let last = *w.sim.node::<Peer>(w.client).conns.last().expect("conn");
    assert!(w.sim.node::<Peer>(w.client).closed.contains(&last));
    let s = w.session(maddr(0));
    let tid = w.commit(s, &[(0, ZERO_TID, b"root")]);
    assert_eq!(w.load(s.1, 0), (tid, b"root".to_vec()));
    // Stable: no new election while both live.
    w.sim.advance(Duration::from_secs(10));
    assert_eq!(w.primaries(&[0, 1]), vec![0]);
    assert_eq!(w.master(0).cluster_state(), ClusterState::Running);
}

/// Kills the primary `dead`; checks that exactly one of `alive` takes
/// over and that the cluster runs again. Returns the new primary.
fn fail_over(w: &mut World, dead: usize, alive: &[usize]) -> usize {
    w.sim.kill(w.masters[dead]);
    w.sim.advance(Duration::from_secs(5));
    let p = w.primaries(alive);
    assert_eq!(p.len(), 1, "one primary among {alive:?}: {p:?}");
    let p = p[0];
    assert_eq!(w.master(p).cluster_state(), ClusterState::Running);
    for &i in alive.iter().filter(|&&i| i != p) {
        assert_eq!(w.master(i).primary_address(), Some(maddr(p)), "master {i}");
    }
    assert!(w.storage().is_operational());
    // The dead one is DOWN in the new primary's table.
    let dead_entry = w
        .master(p)
        .nodes()
        .iter()
        .find(|n| n.address == Some(Address::new("127.0.0.1", maddr(dead).port())))
        .map(|n| n.state);
    assert_eq!(dead_entry, Some(NodeState::Down));
    assert!(w.sim.node::<Admin>(w.admin).is_connected());
    p
}

#[test]
fn primary_killed_a_secondary_takes_over_and_a_restarted_master_follows() {
    let mut w = World::new(2);
    let s = w.session(maddr(0));
    let t1 = w.commit(s, &[(0, ZERO_TID, b"root"), (1, ZERO_TID, b"a1")]);
    let t2 = w.commit(s, &[(1, t1, b"a2")]);
    w.close_session(s);
    let p = fail_over(&mut w, 0, &[1]);
    assert_eq!(p, 1);
    // Nothing acknowledged is lost, and commits go on with greater tids.
    let s = w.session(maddr(1));
    let last = w.request(s.0, p::AskLastTransaction {});
    assert_eq!(
        last,
        Body::AnswerLastTransaction(p::AnswerLastTransaction { tid: t2 })
    );
    assert_eq!(w.load(s.1, 0), (t1, b"root".to_vec()));
    assert_eq!(w.load(s.1, 1), (t2, b"a2".to_vec()));
    let t3 = w.commit(s, &[(1, t2, b"a3"), (2, ZERO_TID, b"b1")]);
    assert!(t3 > t2);
    assert_eq!(w.load(s.1, 1), (t3, b"a3".to_vec()));
    // The old primary restarts: it joins as a secondary.
    let again = w.add_master(0);
    w.masters[0] = again;
    w.sim.advance(Duration::from_secs(3));
    assert_eq!(w.primaries(&[0, 1]), vec![1]);
    assert_eq!(w.master(0).primary_address(), Some(maddr(1)));
    assert_eq!(w.master(1).cluster_state(), ClusterState::Running);
    let a = w.identify(maddr(0)).expect_err("refused by the secondary");
    assert_eq!(redirect(&a), Some(maddr(1)), "{a:?}");
    let t4 = w.commit(s, &[(2, t3, b"b2")]);
    assert_eq!(w.load(s.1, 2), (t4, b"b2".to_vec()));
}

#[test]
fn three_masters_survive_two_fail_overs() {
    let mut w = World::new(3);
    assert_eq!(w.primaries(&[0, 1, 2]), vec![0]);
    assert_eq!(w.master(2).primary_address(), Some(maddr(0)));
    let mut uuids: Vec<NodeId> = (0..3).map(|i| w.master(i).uuid()).collect();
    uuids.sort();
    uuids.dedup();
    assert_eq!(uuids.len(), 3, "distinct node ids");
    let mut s = w.session(maddr(0));
    let mut serial = w.commit(s, &[(0, ZERO_TID, b"v0")]);
    w.close_session(s);
    let p = fail_over(&mut w, 0, &[1, 2]);
    s = w.session(maddr(p));
    assert_eq!(w.load(s.1, 0), (serial, b"v0".to_vec()));
    serial = w.commit(s, &[(0, serial, b"v1")]);
    w.close_session(s);
    let other = if p == 1 { 2 } else { 1 };
    let q = fail_over(&mut w, p, &[other]);
    assert_eq!(q, other);
    s = w.session(maddr(q));
    assert_eq!(w.load(s.1, 0), (serial, b"v1".to_vec()));
    let t = w.commit(s, &[(0, serial, b"v2")]);
    assert!(t > serial);
}

#[test]
fn the_admin_follows_the_redirect_at_once() {
    let mut w = World::masters(2);
    w.sim.run();
    assert_eq!(w.primaries(&[0, 1]), vec![0]);
    let acfg = AdminConfig {
        cluster: "test".into(),
        masters: vec![maddr(1), maddr(0)],
        address: aaddr(),
        nid: None,
    };
    w.admin = w.sim.add(Some(aaddr()), Admin::new(acfg));
    // No reconnection delay: the secondary's answer names the primary.
    w.sim.advance(ms(10));
    assert!(w.sim.node::<Admin>(w.admin).is_connected());
}

#[test]
fn a_secondary_set_down_by_neoctl_exits() {
    let mut w = World::new(2);
    let m2 = w.master(1).uuid();
    // neoctl talks to the admin without identifying.
    let conn = w.connect(aaddr());
    let a = w.request(
        conn,
        p::SetNodeState {
            uuid: m2,
            state: NodeState::Down,
        },
    );
    assert!(
        matches!(&a, Body::Error(e) if e.code == p::ErrorCode::Ack),
        "{a:?}"
    );
    w.sim.advance(ms(100));
    // It stopped: nobody listens at its address any more.
    w.connect(maddr(1));
    assert_eq!(w.sim.node::<Peer>(w.client).failed, 1);
    assert_eq!(w.primaries(&[0]), vec![0]);
    assert_eq!(w.master(0).cluster_state(), ClusterState::Running);
    let state = w.master(0).nodes().by_nid(m2).map(|n| n.state);
    assert_eq!(state, Some(NodeState::Down));
}

/// Masters whose clocks disagree (the last started has the oldest
/// election key) and that meet in every order: they still end with one
/// primary that every other master follows, and the cluster starts on it.
#[test]
fn masters_with_skewed_clocks_converge_on_one_primary() {
    for n in [2usize, 3, 4] {
        let _ = env_logger::builder().is_test(true).try_init();
        let mut sim = Sim::new();
        let counter = Arc::new(AtomicU64::new(0));
        let mut idx = Vec::new();
        for i in 0..n {
            let t = counter.clone();
            // Master i is i seconds behind: later ones look older.
            let skew = i as f64;
            let clock: super::Clock = Box::new(move || {
                1_795_542_385.0 - skew + t.fetch_add(1, Ordering::Relaxed) as f64 * 1e-3
            });
            let all = (0..n).map(maddr).collect();
            let master = Master::with_clock(spec(i).master_config(), clock)
                .expect("config")
                .with_masters(all);
            idx.push(sim.add(Some(maddr(i)), master));
        }
        sim.advance(Duration::from_secs(10));
        let primaries: Vec<usize> = (0..n)
            .filter(|&i| sim.node::<Master>(idx[i]).is_primary())
            .collect();
        assert_eq!(primaries.len(), 1, "{n} masters: primaries {primaries:?}");
        let p = primaries[0];
        for i in (0..n).filter(|&i| i != p) {
            assert_eq!(
                sim.node::<Master>(idx[i]).primary_address(),
                Some(maddr(p)),
                "{n} masters: master {i}"
            );
        }
        let mut uuids: Vec<NodeId> = (0..n).map(|i| sim.node::<Master>(idx[i]).uuid()).collect();
        uuids.sort();
        uuids.dedup();
        assert_eq!(uuids.len(), n, "distinct node ids");
        // A storage that knows only the last master reaches the primary.
        let s = sim.add(Some(saddr()), storage(vec![maddr(n - 1)]));
        sim.advance(Duration::from_secs(3));
        assert!(sim.node::<Mem>(s).is_operational(), "{n} masters");
        assert_eq!(
            sim.node::<Master>(idx[p]).cluster_state(),
            ClusterState::Running
        );
    }
}
