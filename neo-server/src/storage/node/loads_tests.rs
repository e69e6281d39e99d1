//! The load path ([`LoadPath`]) against the node's own answers: what it
//! serves is what the node would answer, and it leaves to the node what
//! it must not serve (blocked oids, other packets and peers, a node that
//! is not operational).

use std::sync::Arc;
use std::time::Duration;

use fsformat::{Oid, Tid};
use neo_proto::{AskObject, Body, NodeType, Packet, Ping, ZERO_TID};

use super::{LoadPath, StorageNode};
use crate::runtime::{ConnId, FastPath};
use crate::sim::testkit::{addr, identification, ClusterSpec, Peer};
use crate::sim::Sim;
use crate::storage::{Backend, SqliteBackend, SqliteOptions};

type Node = StorageNode<SqliteBackend>;

struct Setup {
    sim: Sim,
    m: usize,
    s: usize,
    client: usize,
    mconn: ConnId,
    /// The client's connection to the storage, on the client's side...
    cconn: ConnId,
    /// ... and on the storage's side (what the load path sees).
    sconn: ConnId,
    lp: Arc<LoadPath>,
    _dir: tempfile::TempDir,
}

/// A cluster of one storage whose database uses `journal` mode.
fn setup(journal: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let spec = ClusterSpec::new("loads", 33100).partitions(3);
    let opts = SqliteOptions {
        pragmas: vec![("journal_mode".into(), journal.into())],
        ..SqliteOptions::default()
    };
    let db = SqliteBackend::open(&dir.path().join("loads.sqlite"), &opts).unwrap();
    let mut node = StorageNode::new(spec.storage_config(33101, "loads"), db).unwrap();
    let lp = node.load_path(2).unwrap().expect("SQLite has a reader");
    let mut node = Some(node);
    let mut sim = Sim::new();
    let (m, storages) = spec.start(
        &mut sim,
        [33101],
        move |_| node.take().unwrap(),
        Duration::from_secs(3),
    );
    let client = sim.add(None, Peer::default());
    let ident = identification(NodeType::Client, "loads", None);
    let (mconn, nid, ts) = sim.join(client, spec.master_addr(), ident).unwrap();
    let ident = identification(NodeType::Client, "loads", Some((nid, ts)));
    let cconn = sim.attach(client, addr(33101), ident);
    let sconn = *sim
        .node::<Node>(storages[0])
        .clients
        .get(&nid)
        .expect("the storage knows the client");
    Setup {
        sim,
        m,
        s: storages[0],
        client,
        mconn,
        cconn,
        sconn,
        lp,
        _dir: dir,
    }
}

fn ask(oid: u64, at: Option<Tid>, before: Option<Tid>) -> AskObject {
    AskObject {
        oid: Oid(oid),
        at,
        before,
    }
}

impl Setup {
    /// What the load path answers to `a` from the client.
    fn fast(&self, a: &AskObject) -> Option<Body> {
        self.lp
            .answer(self.sconn as usize, self.sconn, &Packet::new(7, a.clone()))
    }

    /// What the node answers to `a`.
    fn node(&mut self, a: &AskObject) -> Body {
        self.sim.request(self.client, self.cconn, a.clone())
    }

    /// The load path serves `a` with the node's answer.
    fn same(&mut self, a: &AskObject) -> Body {
        let fast = self
            .fast(a)
            .unwrap_or_else(|| panic!("{a:?} left to the node"));
        assert_eq!(fast, self.node(a), "{a:?}");
        fast
    }
}

#[test]
fn serves_what_the_node_answers() {
    for journal in ["DELETE", "WAL"] {
        serves_what_the_node_answers_in(journal);
    }
}

fn serves_what_the_node_answers_in(journal: &str) {
    let mut t = setup(journal);
    // Nothing yet: OID_DOES_NOT_EXIST from both.
    let b = t.same(&ask(1, None, None));
    assert!(matches!(b, Body::Error(_)), "{b:?}");
    let t1 = t
        .sim
        .commit(t.client, t.mconn, &[t.cconn], &[(1, ZERO_TID, b"one")]);
    let t2 = t
        .sim
        .commit(t.client, t.mconn, &[t.cconn], &[(1, t1, b"two")]);
    // Unlocked, but the unlock's commit is deferred: left to the node.
    assert_eq!(t.fast(&ask(1, None, None)), None);
    let Body::AnswerObject(o) = t.node(&ask(1, None, None)) else {
        panic!()
    };
    assert_eq!((o.serial, &o.data[..]), (t2, &b"two"[..]));
    // Once committed, the load path serves every kind of lookup.
    t.sim.advance(Duration::from_secs(2));
    for a in [
        ask(1, None, None),
        ask(1, Some(t1), None),
        ask(1, Some(t2), None),
        ask(1, None, Some(t2)),
        ask(1, None, Some(Tid(t2.0 + 1))),
        ask(1, None, Some(t1)),     // OID_NOT_FOUND
        ask(1, Some(Tid(5)), None), // OID_NOT_FOUND
        ask(2, None, None),         // OID_DOES_NOT_EXIST
    ] {
        t.same(&a);
    }
    let Some(Body::AnswerObject(o)) = t.fast(&ask(1, None, Some(t2))) else {
        panic!()
    };
    assert_eq!(
        (o.serial, o.next_serial, &o.data[..]),
        (t1, Some(t2), &b"one"[..])
    );
    // A commit that blocks nothing (as a pack step's): the readers see it
    // at once all the same.
    t.sim.poke::<Node>(t.s, |n, _| {
        n.db.delete_object(Oid(1), None).unwrap();
        n.db.commit().unwrap();
        n.publish_loads();
    });
    let b = t.same(&ask(1, None, None));
    assert!(matches!(b, Body::Error(_)), "{journal}: {b:?}");
}

#[test]
fn leaves_to_the_node_what_it_must_not_serve() {
    for journal in ["DELETE", "WAL"] {
        leaves_to_the_node_what_it_must_not_serve_in(journal);
    }
}

fn leaves_to_the_node_what_it_must_not_serve_in(journal: &str) {
    let mut t = setup(journal);
    let t1 = t
        .sim
        .commit(t.client, t.mconn, &[t.cconn], &[(4, ZERO_TID, b"x")]);
    t.sim.advance(Duration::from_secs(2));
    assert!(t.fast(&ask(4, None, None)).is_some());
    // Another packet, another connection.
    assert_eq!(t.lp.answer(0, t.sconn, &Packet::new(1, Ping {})), None);
    assert_eq!(
        t.lp.answer(1, t.sconn + 1000, &Packet::new(1, ask(4, None, None))),
        None
    );
    // A transaction between lock and unlock: its oids wait in the node.
    let ttid = t.sim.begin(t.client, t.mconn);
    t.sim.store(
        t.client,
        &[t.cconn],
        ttid,
        &[(4, t1, b"y"), (5, ZERO_TID, b"z")],
    );
    assert!(t.fast(&ask(4, None, None)).is_some(), "voted, not locked");
    t.sim.poke::<Node>(t.s, |n, _| {
        n.tm.lock(&mut n.db, ttid, Tid(ttid.0 + 1), false).unwrap();
        n.publish_loads();
    });
    assert_eq!(t.fast(&ask(4, None, None)), None);
    assert_eq!(t.fast(&ask(5, None, None)), None);
    // Not operational (the master is gone): nothing served.
    t.sim.kill(t.m);
    t.sim.advance(Duration::from_millis(100));
    assert_eq!(t.fast(&ask(1, None, None)), None);
}
