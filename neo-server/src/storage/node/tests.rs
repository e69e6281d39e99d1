//! The storage node in [`Sim`], driven by a scripted master and scripted
//! clients that send what NEO's master and client send (recorded
//! conversations 01, 02, 03 of `shared/neo-protocol`).

use std::net::SocketAddr;

use fsformat::{Oid, Tid};
use neo_proto::*;

use super::*;
use crate::runtime::ConnId;
use crate::sim::testkit::{self, obj, ClusterSpec, Peer};
use crate::sim::{ms, Sim};
use crate::storage::{
    make_checksum, Backend, CrashPlan, MemoryBackend, SqliteBackend, SqliteOptions,
};

const M1: NodeId = NodeId(-268_435_455);
const C1: NodeId = NodeId(-536_870_911);
const C2: NodeId = NodeId(-536_870_910);
const S1: NodeId = NodeId(1);
const NP: u32 = 4;

pub(super) fn master_addr() -> SocketAddr {
    "127.0.0.1:31000".parse().unwrap()
}
pub(super) fn storage_addr() -> SocketAddr {
    "127.0.0.1:31100".parse().unwrap()
}

type Mem = StorageNode<MemoryBackend>;

// Pack scenarios use the helpers above.
#[path = "pack_tests.rs"]
mod pack_tests;

pub(super) fn config() -> StorageConfig {
    StorageConfig {
        cluster: "test".into(),
        masters: vec![master_addr()],
        address: storage_addr(),
        nid: None,
        database: "memory".into(),
        disable_pack: false,
    }
}

/// The cluster under test: indexes of the nodes (the master is a scripted
/// [`Peer`]) and the master's connection.
struct Cluster {
    sim: Sim,
    m: usize,
    s: usize,
    mconn: ConnId,
    ts: f64,
}

impl Cluster {
    fn storage(&mut self) -> &mut Mem {
        self.sim.node_mut::<Mem>(self.s)
    }

    fn client_info(&mut self, nid: NodeId, state: NodeState) -> f64 {
        self.ts += 1.0;
        let ts = self.ts;
        let info = NodeInfo {
            node_type: NodeType::Client,
            address: None,
            uuid: Some(nid),
            state,
            id_timestamp: Some(ts),
        };
        self.sim.send(
            self.m,
            self.mconn,
            NotifyNodeInformation {
                timestamp: ts,
                node_list: vec![info],
            },
        );
        ts
    }

    /// A client announced by the master and identified by the storage.
    fn client(&mut self, nid: NodeId) -> (usize, ConnId) {
        let ts = self.client_info(nid, NodeState::Running);
        let c = self.sim.add(None, Peer::default());
        let (conn, a) = self
            .sim
            .identify(c, storage_addr(), identification(nid, ts));
        let Body::AcceptIdentification(a) = a else {
            panic!("{a:?}")
        };
        assert_eq!(
            (a.node_type, a.uuid, a.your_uuid),
            (NodeType::Storage, Some(S1), Some(nid))
        );
        (c, conn)
    }
}

fn identification(nid: NodeId, ts: f64) -> RequestIdentification {
    testkit::identification(NodeType::Client, "test", Some((nid, ts)))
}

fn full_pt(ptid: u64) -> SendPartitionTable {
    SendPartitionTable {
        ptid: Some(ptid),
        num_replicas: 0,
        row_list: (0..NP)
            .map(|_| {
                vec![Cell {
                    uuid: S1,
                    state: neo_proto::CellState::UpToDate,
                }]
            })
            .collect(),
    }
}

/// Master and storage, the storage connected and identified (S1).
fn identified<B: Backend + Send + 'static>(db: B) -> Cluster {
    let mut sim = Sim::new();
    let m = sim.add(Some(master_addr()), Peer::default());
    let s = sim.add(
        Some(storage_addr()),
        StorageNode::new(config(), db).unwrap(),
    );
    sim.run();
    let mconn = sim.node::<Peer>(m).conns[0];
    let (_, p) = sim.node_mut::<Peer>(m).inbox.remove(0);
    let Body::RequestIdentification(r) = p.body else {
        panic!("{p:?}")
    };
    assert_eq!(r.node_type, NodeType::Storage);
    assert_eq!(r.address, Some(Address::new("127.0.0.1", 31100)));
    assert_eq!(r.name.as_ref(), b"test");
    assert_eq!(r.id_timestamp, None);
    let keys: Vec<&[u8]> = r.extra.iter().map(|(k, _)| k.as_ref()).collect();
    assert_eq!(keys, [&b"devpath"[..], b"new_nid"]);
    let reply = AcceptIdentification {
        node_type: NodeType::Master,
        uuid: Some(M1),
        your_uuid: Some(r.uuid.unwrap_or(S1)),
    };
    sim.reply(m, mconn, p.id, reply);
    Cluster {
        sim,
        m,
        s,
        mconn,
        ts: 1000.0,
    }
}

/// Bootstrap as in conversation 01, up to RUNNING.
fn running() -> Cluster {
    let mut c = identified(MemoryBackend::new(false));
    start(&mut c, true);
    c
}

/// Recovery, verification and start with a new (or the same) partition
/// table.
fn start(c: &mut Cluster, new: bool) {
    let (m, mconn) = (c.m, c.mconn);
    let r = c.sim.request(m, mconn, AskRecovery {});
    if new {
        assert_eq!(
            r,
            Body::AnswerRecovery(AnswerRecovery {
                ptid: None,
                backup_tid: None,
                truncate_tid: None
            })
        );
        c.sim.send(
            m,
            mconn,
            NotifyClusterInformation {
                state: ClusterState::Verifying,
            },
        );
        c.sim.send(m, mconn, full_pt(1));
    }
    let Body::AnswerPartitionTable(pt) = c.sim.request(m, mconn, AskPartitionTable {}) else {
        panic!()
    };
    assert_eq!(pt.ptid, Some(1));
    assert_eq!(pt.row_list, full_pt(1).row_list);
    let Body::AnswerLockedTransactions(_) = c.sim.request(m, mconn, AskLockedTransactions {})
    else {
        panic!()
    };
    let ids = c.sim.request(m, mconn, AskLastIDs {});
    if new {
        assert_eq!(
            ids,
            Body::AnswerLastIDs(AnswerLastIDs {
                last_tid: None,
                last_oid: None,
                first_tid: Some(MAX_TID)
            })
        );
        // As recorded: readable cells have completed pack 0.
        assert_eq!(
            c.sim.notifications(m),
            [Body::NotifyPackCompleted(NotifyPackCompleted {
                pack_id: ZERO_TID
            })]
        );
    }
    let orders = c.sim.request(m, mconn, AskPackOrders { pack_id: Tid(1) });
    assert_eq!(
        orders,
        Body::AnswerPackOrders(AnswerPackOrders { pack_list: vec![] })
    );
    c.sim.send(
        m,
        mconn,
        NotifyClusterInformation {
            state: ClusterState::Running,
        },
    );
    c.sim.send(m, mconn, StartOperation { backup: false });
    let n = c.sim.notifications(m);
    assert!(n.contains(&Body::NotifyReady(NotifyReady {})), "{n:?}");
    assert!(c.storage().is_operational());
}

fn meta(ttid: Tid, oids: &[u64]) -> AskStoreTransaction {
    AskStoreTransaction {
        ttid,
        user: Bytes::from_static(b"/ alice"),
        description: Bytes::from_static(b"desc"),
        extension: Bytes::new(),
        oid_list: oids.iter().map(|&o| Oid(o)).collect(),
        pack: None,
    }
}

fn stored(conflict: Option<Tid>) -> Body {
    Body::AnswerStoreObject(AnswerStoreObject { conflict })
}

/// A whole commit by client `(ci, cc)`: stores, vote, lock, unlock.
fn commit(c: &mut Cluster, ci: usize, cc: ConnId, ttid: Tid, tid: Tid, objs: &[(u64, Tid, &[u8])]) {
    for &(oid, serial, data) in objs {
        assert_eq!(
            c.sim.request(ci, cc, obj(oid, serial, ttid, data)),
            stored(None)
        );
    }
    let oids: Vec<u64> = objs.iter().map(|o| o.0).collect();
    assert_eq!(
        c.sim.request(ci, cc, meta(ttid, &oids)),
        Body::AnswerStoreTransaction(AnswerStoreTransaction {})
    );
    let (m, mconn) = (c.m, c.mconn);
    assert_eq!(
        c.sim.request(
            m,
            mconn,
            AskLockInformation {
                ttid,
                tid,
                pack: false
            }
        ),
        Body::AnswerInformationLocked(AnswerInformationLocked { ttid })
    );
    c.sim.send(m, mconn, NotifyUnlockInformation { ttid });
}

fn load(
    c: &mut Cluster,
    ci: usize,
    cc: ConnId,
    oid: u64,
    at: Option<Tid>,
    before: Option<Tid>,
) -> Body {
    c.sim.request(
        ci,
        cc,
        AskObject {
            oid: Oid(oid),
            at,
            before,
        },
    )
}

fn error_code(b: &Body) -> Option<ErrorCode> {
    match b {
        Body::Error(e) => Some(e.code),
        _ => None,
    }
}

#[test]
fn bootstrap_stores_the_nid_and_the_partition_table() {
    let mut c = running();
    assert_eq!(c.storage().nid(), Some(S1));
    let db = c.storage().db_mut();
    assert_eq!(db.nid().unwrap(), Some(1));
    assert_eq!(db.name().unwrap().as_deref(), Some("test"));
    assert_eq!(db.ptid().unwrap(), Some(1));
    assert_eq!(db.partition_view().unwrap().readable.len(), NP as usize);
}

#[test]
fn retries_masters_every_second() {
    let mut sim = Sim::new();
    let s = sim.add(
        Some(storage_addr()),
        StorageNode::new(config(), MemoryBackend::new(false)).unwrap(),
    );
    sim.advance(ms(2500));
    assert!(!sim.node::<Mem>(s).is_operational());
    let m = sim.add(Some(master_addr()), Peer::default());
    sim.advance(ms(400));
    assert!(
        sim.node::<Peer>(m).conns.is_empty(),
        "not before the second"
    );
    sim.advance(ms(200));
    assert_eq!(sim.node::<Peer>(m).conns.len(), 1);
    let inbox = &sim.node::<Peer>(m).inbox;
    assert!(matches!(inbox[0].1.body, Body::RequestIdentification(_)));
}

#[test]
fn refuses_a_database_of_another_cluster() {
    let mut db = MemoryBackend::new(false);
    db.set_name("other").unwrap();
    let mut cfg = config();
    cfg.database = "/var/lib/neo/s1.sqlite".into();
    let err = StorageNode::new(cfg, db).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, NodeError::NameMismatch { .. }));
    for part in ["/var/lib/neo/s1.sqlite", "\"other\"", "\"test\""] {
        assert!(msg.contains(part), "{msg}");
    }
}

#[test]
fn identification_of_clients() {
    let mut c = running();
    // Wrong cluster name.
    let x = c.sim.add(None, Peer::default());
    let xc = c.sim.connect(x, storage_addr());
    let mut r = identification(C1, 1.0);
    r.name = Bytes::from_static(b"alien");
    let a = c.sim.request(x, xc, r);
    assert_eq!(error_code(&a), Some(ErrorCode::ProtocolError));
    assert_eq!(c.sim.node::<Peer>(x).closed, [xc]);
    // A client the master has not announced yet waits for the
    // announcement.
    let y = c.sim.add(None, Peer::default());
    let yc = c.sim.connect(y, storage_addr());
    let ts = c.ts + 1.0;
    let id = c.sim.ask(y, yc, identification(C2, ts));
    assert!(c.sim.answer(y, yc, id).is_none());
    c.client_info(C2, NodeState::Running);
    let a = c.sim.answer(y, yc, id).unwrap();
    assert!(matches!(a, Body::AcceptIdentification(_)), "{a:?}");
    // An older timestamp the master does not know: NOT_READY.
    let z = c.sim.add(None, Peer::default());
    let zc = c.sim.connect(z, storage_addr());
    let a = c.sim.request(z, zc, identification(C1, 1.0));
    assert_eq!(error_code(&a), Some(ErrorCode::NotReady));
}

#[test]
fn not_ready_before_start_operation() {
    let mut c = identified(MemoryBackend::new(false));
    let x = c.sim.add(None, Peer::default());
    let xc = c.sim.connect(x, storage_addr());
    let id = c.sim.ask(x, xc, identification(C1, 1.0));
    let p = &c.sim.node::<Peer>(x).inbox[0].1;
    assert_eq!(p.id, id);
    assert_eq!(error_code(&p.body), Some(ErrorCode::NotReady));
    assert_eq!(c.sim.node::<Peer>(x).closed, [xc]);
}

#[test]
fn commit_then_loads_with_neo_semantics() {
    let mut c = running();
    let (ci, cc) = c.client(C1);
    // Missing root before anything: OID_DOES_NOT_EXIST, message = dump(oid).
    let a = load(&mut c, ci, cc, 0, None, Some(Tid(1)));
    assert_eq!(
        a,
        Body::Error(neo_proto::Error::new(
            ErrorCode::OidDoesNotExist,
            "0000000000000000"
        ))
    );
    let (t1, t2) = (Tid(0x100), Tid(0x200));
    commit(
        &mut c,
        ci,
        cc,
        Tid(0xf0),
        t1,
        &[(0, ZERO_TID, b"root v1"), (1, ZERO_TID, b"a v1")],
    );
    commit(&mut c, ci, cc, Tid(0x1f0), t2, &[(0, t1, b"root v2")]);
    // Current.
    let Body::AnswerObject(o) = load(&mut c, ci, cc, 0, None, None) else {
        panic!()
    };
    assert_eq!(
        (o.serial, o.next_serial, o.data.as_ref()),
        (t2, None, &b"root v2"[..])
    );
    assert_eq!(o.checksum, Checksum(make_checksum(b"root v2")));
    // loadSerial: next_serial set.
    let Body::AnswerObject(o) = load(&mut c, ci, cc, 0, Some(t1), None) else {
        panic!()
    };
    assert_eq!(
        (o.serial, o.next_serial, o.data.as_ref()),
        (t1, Some(t2), &b"root v1"[..])
    );
    // loadBefore.
    let Body::AnswerObject(o) = load(&mut c, ci, cc, 0, None, Some(t2)) else {
        panic!()
    };
    assert_eq!(o.serial, t1);
    // Before the first revision: OID_NOT_FOUND.
    let a = load(&mut c, ci, cc, 1, None, Some(t1));
    assert_eq!(
        a,
        Body::Error(neo_proto::Error::new(
            ErrorCode::OidNotFound,
            "0000000000000001"
        ))
    );
    let a = load(&mut c, ci, cc, 0xdead, None, Some(t2));
    assert_eq!(error_code(&a), Some(ErrorCode::OidDoesNotExist));
    // Transaction metadata, tids, history.
    let Body::AnswerTransactionInformation(t) =
        c.sim.request(ci, cc, AskTransactionInformation { tid: t1 })
    else {
        panic!()
    };
    assert_eq!((t.user.as_ref(), t.oid_list.len()), (&b"/ alice"[..], 2));
    let a = c
        .sim
        .request(ci, cc, AskTransactionInformation { tid: Tid(0x150) });
    assert_eq!(error_code(&a), Some(ErrorCode::TidNotFound));
    let a = c.sim.request(
        ci,
        cc,
        AskTIDs {
            first: 0,
            last: 20,
            partition: INVALID_PARTITION,
        },
    );
    assert_eq!(
        a,
        Body::AnswerTIDs(AnswerTIDs {
            tid_list: vec![t2, t1]
        })
    );
    let a = c.sim.request(
        ci,
        cc,
        AskTIDsFrom {
            min_tid: ZERO_TID,
            max_tid: t2,
            length: 100,
            partition: (t1.0 % u64::from(NP)) as u32,
        },
    );
    assert_eq!(
        a,
        Body::AnswerTIDsFrom(AnswerTIDsFrom {
            tid_list: vec![t1, t2]
        })
    );
    let a = c.sim.request(
        ci,
        cc,
        AskObjectHistory {
            oid: Oid(0),
            first: 0,
            last: 10,
        },
    );
    assert_eq!(
        a,
        Body::AnswerObjectHistory(AnswerObjectHistory {
            oid: Oid(0),
            history_list: vec![(t2, 7), (t1, 7)]
        })
    );
    let a = c.sim.request(
        ci,
        cc,
        AskObjectHistory {
            oid: Oid(9),
            first: 0,
            last: 10,
        },
    );
    assert_eq!(error_code(&a), Some(ErrorCode::OidNotFound));
    let a = c.sim.request(
        ci,
        cc,
        AskOIDsFrom {
            partition: 1,
            length: 10,
            min_oid: Oid(0),
            tid: t2,
        },
    );
    assert_eq!(
        a,
        Body::AnswerOIDsFrom(AnswerOIDsFrom {
            next_oid: None,
            oid_list: vec![Oid(1)]
        })
    );
    let a = c.sim.request(ci, cc, AskFinalTID { ttid: Tid(0x1f0) });
    assert_eq!(a, Body::AnswerFinalTID(AnswerFinalTID { tid: Some(t2) }));
    // Ping.
    assert_eq!(c.sim.request(ci, cc, Ping {}), Body::Pong(Pong {}));
}

#[test]
fn loads_wait_between_lock_and_unlock() {
    let mut c = running();
    let (ci, cc) = c.client(C1);
    let (ttid, tid) = (Tid(0x10), Tid(0x14));
    assert_eq!(
        c.sim.request(ci, cc, obj(5, ZERO_TID, ttid, b"five")),
        stored(None)
    );
    c.sim.request(ci, cc, meta(ttid, &[5]));
    let (m, mconn) = (c.m, c.mconn);
    c.sim.request(
        m,
        mconn,
        AskLockInformation {
            ttid,
            tid,
            pack: false,
        },
    );
    let id = c.sim.ask(
        ci,
        cc,
        AskObject {
            oid: Oid(5),
            at: None,
            before: None,
        },
    );
    assert!(
        c.sim.answer(ci, cc, id).is_none(),
        "the load must wait for unlock"
    );
    assert_eq!(c.storage().queued(), 1);
    c.sim.send(m, mconn, NotifyUnlockInformation { ttid });
    let Some(Body::AnswerObject(o)) = c.sim.answer(ci, cc, id) else {
        panic!()
    };
    assert_eq!((o.serial, o.data.as_ref()), (tid, &b"five"[..]));
    assert_eq!(c.storage().queued(), 0);
    assert!(c.storage().transactions().is_empty());
}

#[test]
fn conflicts_lock_waits_and_abort() {
    let mut c = running();
    let (ci, cc) = c.client(C1);
    let (di, dc) = c.client(C2);
    let t1 = Tid(0x100);
    commit(&mut c, ci, cc, Tid(0xfc), t1, &[(2, ZERO_TID, b"b1")]);
    // A store based on an old serial conflicts with the last one.
    assert_eq!(
        c.sim.request(di, dc, obj(2, ZERO_TID, Tid(0x200), b"b2")),
        stored(Some(t1))
    );
    c.sim.send(
        di,
        dc,
        AbortTransaction {
            ttid: Tid(0x200),
            uuid_list: vec![],
        },
    );
    assert!(c.storage().transactions().is_empty());
    // Older transaction A holds the lock; younger B waits for it.
    let (ta, tb) = (Tid(0x300), Tid(0x400));
    assert_eq!(c.sim.request(ci, cc, obj(2, t1, ta, b"A")), stored(None));
    let id = c.sim.ask(di, dc, obj(2, t1, tb, b"B"));
    assert!(c.sim.answer(di, dc, id).is_none());
    // A aborts (from the client, then the master, as recorded): B gets
    // the lock and its store goes through.
    c.sim.send(
        ci,
        cc,
        AbortTransaction {
            ttid: ta,
            uuid_list: vec![],
        },
    );
    assert_eq!(c.sim.answer(di, dc, id), Some(stored(None)));
    let (m, mconn) = (c.m, c.mconn);
    c.sim.send(
        m,
        mconn,
        AbortTransaction {
            ttid: ta,
            uuid_list: vec![],
        },
    );
    c.sim.request(di, dc, meta(tb, &[2]));
    c.sim.request(
        m,
        mconn,
        AskLockInformation {
            ttid: tb,
            tid: Tid(0x404),
            pack: false,
        },
    );
    c.sim.send(m, mconn, NotifyUnlockInformation { ttid: tb });
    let Body::AnswerObject(o) = load(&mut c, ci, cc, 2, None, None) else {
        panic!()
    };
    assert_eq!((o.serial, o.data.as_ref()), (Tid(0x404), &b"B"[..]));
    // The aborted data of A is gone (not deduplicated: 2 rows left).
    let db = c.storage().db_mut();
    assert!(db.orphan_data().unwrap().is_empty());
}

#[test]
fn read_current_check() {
    let mut c = running();
    let (ci, cc) = c.client(C1);
    let t1 = Tid(0x100);
    commit(
        &mut c,
        ci,
        cc,
        Tid(0xfc),
        t1,
        &[(1, ZERO_TID, b"a"), (2, ZERO_TID, b"b")],
    );
    // Another transaction read oid 1 before t1: conflict, no lock taken.
    let (di, dc) = c.client(C2);
    let a = c.sim.request(
        di,
        dc,
        AskCheckCurrentSerial {
            ttid: Tid(0x300),
            oid: Oid(1),
            serial: ZERO_TID,
        },
    );
    assert_eq!(
        a,
        Body::AnswerCheckCurrentSerial(AnswerCheckCurrentSerial { conflict: Some(t1) })
    );
    let ttid = Tid(0x200);
    assert_eq!(c.sim.request(ci, cc, obj(2, t1, ttid, b"b2")), stored(None));
    let a = c.sim.request(
        ci,
        cc,
        AskCheckCurrentSerial {
            ttid,
            oid: Oid(1),
            serial: t1,
        },
    );
    assert_eq!(
        a,
        Body::AnswerCheckCurrentSerial(AnswerCheckCurrentSerial { conflict: None })
    );
    // Now oid 1 is locked by 0x200: a younger check waits for it.
    let id = c.sim.ask(
        di,
        dc,
        AskCheckCurrentSerial {
            ttid: Tid(0x400),
            oid: Oid(1),
            serial: t1,
        },
    );
    assert!(c.sim.answer(di, dc, id).is_none());
    c.sim.send(
        ci,
        cc,
        AbortTransaction {
            ttid,
            uuid_list: vec![],
        },
    );
    assert_eq!(
        c.sim.answer(di, dc, id),
        Some(Body::AnswerCheckCurrentSerial(AnswerCheckCurrentSerial {
            conflict: None
        }))
    );
}

#[test]
fn invalid_checksum_and_compression_are_protocol_errors() {
    let mut c = running();
    let (ci, cc) = c.client(C1);
    let mut o = obj(1, ZERO_TID, Tid(0x10), b"data");
    o.checksum = Checksum([7; 20]);
    let a = c.sim.request(ci, cc, o);
    assert_eq!(
        a,
        Body::Error(neo_proto::Error::new(
            ErrorCode::ProtocolError,
            "invalid checksum"
        ))
    );
    assert_eq!(c.sim.node::<Peer>(ci).closed, [cc]);
    // The client's connection is gone: its transaction too.
    assert!(c.storage().transactions().is_empty());
    let (di, dc) = c.client(C2);
    let mut o = obj(1, ZERO_TID, Tid(0x20), b"data");
    o.compression = 2;
    let a = c.sim.request(di, dc, o);
    assert_eq!(error_code(&a), Some(ErrorCode::ProtocolError));
}

#[test]
fn undo_serials_and_undo_of_a_creation() {
    let mut c = running();
    let (ci, cc) = c.client(C1);
    let (t1, t2) = (Tid(0x100), Tid(0x200));
    commit(&mut c, ci, cc, Tid(0xfc), t1, &[(1, ZERO_TID, b"a1")]);
    commit(
        &mut c,
        ci,
        cc,
        Tid(0x1fc),
        t2,
        &[(1, t1, b"a2"), (4, ZERO_TID, b"new")],
    );
    // Undo t2, as in conversation 02.
    let ttid = Tid(0x300);
    let a = c.sim.request(
        ci,
        cc,
        AskObjectUndoSerial {
            ttid,
            ltid: Tid(0x201),
            undone_tid: t2,
            oid_list: vec![Oid(1), Oid(4)],
        },
    );
    let Body::AnswerObjectUndoSerial(u) = a else {
        panic!("{a:?}")
    };
    assert_eq!(u.object_tid_dict.get(&Oid(1)), Some(&(t2, Some(t1), true)));
    assert_eq!(u.object_tid_dict.get(&Oid(4)), Some(&(t2, None, true)));
    // The undo stores: a backpointer to t1's data, and a deletion.
    let mut undo = obj(1, t2, ttid, b"a1");
    undo.data_serial = Some(t1);
    assert_eq!(c.sim.request(ci, cc, undo), stored(None));
    let del = AskStoreObject {
        oid: Oid(4),
        serial: t2,
        compression: 0,
        checksum: ZERO_HASH,
        data: Bytes::new(),
        data_serial: None,
        ttid,
    };
    assert_eq!(c.sim.request(ci, cc, del), stored(None));
    c.sim.request(ci, cc, meta(ttid, &[1, 4]));
    let (m, mconn) = (c.m, c.mconn);
    let t3 = Tid(0x304);
    c.sim.request(
        m,
        mconn,
        AskLockInformation {
            ttid,
            tid: t3,
            pack: false,
        },
    );
    c.sim.send(m, mconn, NotifyUnlockInformation { ttid });
    let Body::AnswerObject(o) = load(&mut c, ci, cc, 1, None, None) else {
        panic!()
    };
    assert_eq!(
        (o.serial, o.data.as_ref(), o.data_serial),
        (t3, &b"a1"[..], Some(t1))
    );
    let Body::AnswerObject(o) = load(&mut c, ci, cc, 4, None, None) else {
        panic!()
    };
    assert_eq!((o.serial, o.checksum, o.data.len()), (t3, ZERO_HASH, 0));
}

#[test]
fn deadlock_avoidance_relock() {
    let mut c = running();
    let (ci, cc) = c.client(C1);
    let (di, dc) = c.client(C2);
    // Younger B (0x400) locks oid 3 first; older A (0x300) then stores it.
    let (ta, tb) = (Tid(0x300), Tid(0x400));
    assert_eq!(
        c.sim.request(di, dc, obj(3, ZERO_TID, tb, b"B")),
        stored(None)
    );
    let id = c.sim.ask(ci, cc, obj(3, ZERO_TID, ta, b"A"));
    assert!(c.sim.answer(ci, cc, id).is_none());
    let n = c.sim.notifications(di);
    assert_eq!(
        n,
        [Body::NotifyDeadlock(NotifyDeadlock {
            ttid: tb,
            oid: Oid(3)
        })]
    );
    // B relocks: A gets the lock, B waits for A.
    let rid = c.sim.ask(
        di,
        dc,
        AskRelockObject {
            ttid: tb,
            oid: Oid(3),
        },
    );
    assert_eq!(c.sim.answer(ci, cc, id), Some(stored(None)));
    assert!(c.sim.answer(di, dc, rid).is_none());
    // A commits; B's relock gets the conflict with its data back.
    c.sim.request(ci, cc, meta(ta, &[3]));
    let (m, mconn) = (c.m, c.mconn);
    let t = Tid(0x304);
    c.sim.request(
        m,
        mconn,
        AskLockInformation {
            ttid: ta,
            tid: t,
            pack: false,
        },
    );
    c.sim.send(m, mconn, NotifyUnlockInformation { ttid: ta });
    let Some(Body::AnswerRelockObject(r)) = c.sim.answer(di, dc, rid) else {
        panic!()
    };
    let (serial, conflict, data) = r.conflict.unwrap();
    assert_eq!((serial, conflict), (ZERO_TID, t));
    let (_, h, d) = data.unwrap();
    assert_eq!((h.0, d.as_ref()), (make_checksum(b"B"), &b"B"[..]));
}

#[test]
fn stop_operation_and_shutdown() {
    let mut c = running();
    let (ci, cc) = c.client(C1);
    let (m, mconn) = (c.m, c.mconn);
    c.sim.send(m, mconn, StopOperation {});
    assert!(!c.storage().is_operational());
    assert_eq!(c.sim.node::<Peer>(ci).closed, [cc]);
    // Back to initialization: start again with the stored table.
    start(&mut c, false);
    // STOPPING, then told it is DOWN: exits (conversation 03).
    c.sim.send(
        m,
        mconn,
        NotifyClusterInformation {
            state: ClusterState::Stopping,
        },
    );
    c.sim.send(
        m,
        mconn,
        NotifyNodeInformation {
            timestamp: 5000.0,
            node_list: vec![NodeInfo {
                node_type: NodeType::Storage,
                address: Some(Address::new("127.0.0.1", 31100)),
                uuid: Some(S1),
                state: NodeState::Down,
                id_timestamp: None,
            }],
        },
    );
    assert!(c.storage().is_stopped());
    assert_eq!(c.sim.node::<Peer>(m).closed, [mconn]);
    assert!(c.storage().exit_report().failure().is_none());
}

#[test]
fn master_loss_reconnects_with_the_stored_nid() {
    let mut c = running();
    let (ci, cc) = c.client(C1);
    c.sim.kill(c.m);
    c.sim.run();
    assert!(!c.storage().is_operational());
    assert_eq!(c.sim.node::<Peer>(ci).closed, [cc]);
    let m2 = c.sim.add(Some(master_addr()), Peer::default());
    c.sim.advance(ms(1100));
    let inbox = &c.sim.node::<Peer>(m2).inbox;
    let Body::RequestIdentification(r) = &inbox[0].1.body else {
        panic!()
    };
    assert_eq!(r.uuid, Some(S1));
}

/// Everything a scripted run does until it ends or the database crashes:
/// returns the ttids whose lock was answered.
fn commits_until_crash(c: &mut Cluster, ci: usize, cc: ConnId) -> Vec<(Tid, Tid)> {
    let mut locked = Vec::new();
    let mut last = ZERO_TID;
    for i in 0..6u64 {
        let ttid = Tid(0x1000 + 0x100 * i);
        let tid = Tid(ttid.0 + u64::from(NP));
        let data = format!("root {i}");
        let id = c.sim.ask(ci, cc, obj(0, last, ttid, data.as_bytes()));
        if c.sim.answer(ci, cc, id) != Some(stored(None)) {
            return locked;
        }
        let id = c.sim.ask(ci, cc, meta(ttid, &[0]));
        if c.sim.answer(ci, cc, id).is_none() {
            return locked;
        }
        let (m, mconn) = (c.m, c.mconn);
        let id = c.sim.ask(
            m,
            mconn,
            AskLockInformation {
                ttid,
                tid,
                pack: false,
            },
        );
        match c.sim.answer(m, mconn, id) {
            Some(Body::AnswerInformationLocked(_)) => locked.push((ttid, tid)),
            _ => return locked,
        }
        c.sim.send(m, mconn, NotifyUnlockInformation { ttid });
        if i % 2 == 1 {
            c.sim.advance(ms(1100)); // the deferred commit
        }
        if c.storage().is_stopped() {
            return locked;
        }
        last = tid;
    }
    locked
}

/// After a restart, NEO's recovery: the master validates the locked
/// transactions, then every answered lock must be visible.
fn check_recovered<B: Backend + Send + 'static>(db: B, locked: &[(Tid, Tid)]) {
    let mut c = identified(db);
    let (m, mconn, s) = (c.m, c.mconn, c.s);
    let Body::AnswerLockedTransactions(l) = c.sim.request(m, mconn, AskLockedTransactions {})
    else {
        panic!()
    };
    for (ttid, tid) in l.tid_dict.iter() {
        if let Some(tid) = tid {
            c.sim.send(
                m,
                mconn,
                ValidateTransaction {
                    ttid: *ttid,
                    tid: *tid,
                },
            );
        }
    }
    c.sim.send(
        m,
        mconn,
        NotifyClusterInformation {
            state: ClusterState::Running,
        },
    );
    c.sim.send(m, mconn, StartOperation { backup: false });
    let node = c.sim.node_mut::<StorageNode<B>>(s);
    assert!(node.is_operational());
    let db = node.db_mut();
    for &(ttid, tid) in locked {
        assert_eq!(db.final_tid(ttid).unwrap(), Some(tid), "lost {ttid}");
        assert!(db.get_transaction(tid, false).unwrap().is_some());
    }
    // A lock that reached the disk but was not answered may be there too.
    if let Some(&(_, tid)) = locked.last() {
        assert!(db.last_object_tid(Oid(0)).unwrap() >= Some(tid));
    }
}

#[test]
fn memory_crash_at_every_point_keeps_locked_transactions() {
    // Crash at every database operation of the scripted run, until the run
    // is long enough to finish without crashing.
    for reaches_disk in [false, true] {
        let mut crashes = 0;
        for after in 0.. {
            let mut c = running();
            let (ci, cc) = c.client(C1);
            c.storage().db_mut().set_crash_plan(CrashPlan {
                after_ops: Some(after),
                commit_reaches_disk: reaches_disk,
            });
            let locked = commits_until_crash(&mut c, ci, cc);
            let stopped = c.storage().is_stopped();
            if stopped {
                crashes += 1;
                assert!(c.storage().exit_report().failure().is_some());
            } else {
                assert_eq!(locked.len(), 6);
            }
            let disk = c.storage().db().disk().clone();
            drop(c);
            check_recovered(MemoryBackend::open(&disk), &locked);
            if !stopped {
                break;
            }
        }
        assert!(crashes > 30, "only {crashes} crash points");
    }
}

#[test]
fn sqlite_reopened_after_a_crash_keeps_locked_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s1.sqlite");
    let locked = {
        let db = SqliteBackend::open(&path, &SqliteOptions::default()).unwrap();
        let mut c = identified(db);
        start_with::<SqliteBackend>(&mut c);
        let (ci, cc) = c.client(C1);
        let locked = commits_until_sqlite(&mut c, ci, cc);
        // The process dies: nothing more is committed (the unlock of the
        // last transaction was not).
        drop(c);
        locked
    };
    assert_eq!(locked.len(), 3);
    let db = SqliteBackend::open(&path, &SqliteOptions::default()).unwrap();
    check_recovered(db, &locked);
}

/// `start` for a node of another backend type.
fn start_with<B: Backend + Send + 'static>(c: &mut Cluster) {
    let (m, mconn) = (c.m, c.mconn);
    c.sim.request(m, mconn, AskRecovery {});
    c.sim.send(m, mconn, full_pt(1));
    c.sim.request(m, mconn, AskLockedTransactions {});
    c.sim.request(m, mconn, AskLastIDs {});
    c.sim.send(m, mconn, StartOperation { backup: false });
    assert!(c.sim.node::<StorageNode<B>>(c.s).is_operational());
}

fn commits_until_sqlite(c: &mut Cluster, ci: usize, cc: ConnId) -> Vec<(Tid, Tid)> {
    let mut locked = Vec::new();
    let mut last = ZERO_TID;
    for i in 0..3u64 {
        let ttid = Tid(0x1000 + 0x100 * i);
        let tid = Tid(ttid.0 + u64::from(NP));
        assert_eq!(
            c.sim.request(ci, cc, obj(0, last, ttid, b"x")),
            stored(None)
        );
        c.sim.request(ci, cc, meta(ttid, &[0]));
        let (m, mconn) = (c.m, c.mconn);
        let a = c.sim.request(
            m,
            mconn,
            AskLockInformation {
                ttid,
                tid,
                pack: false,
            },
        );
        assert!(matches!(a, Body::AnswerInformationLocked(_)));
        locked.push((ttid, tid));
        c.sim.send(m, mconn, NotifyUnlockInformation { ttid });
        last = tid;
    }
    locked
}

/// The real master and this storage node in one simulation, and a
/// scripted client committing through both.
#[test]
fn with_the_real_master() {
    let spec = ClusterSpec::new("test", master_addr().port()).partitions(NP);
    let mut sim = Sim::new();
    let storage = |_| StorageNode::new(config(), MemoryBackend::new(false)).unwrap();
    let (m, s) = spec.start(&mut sim, [storage_addr().port()], storage, ms(100));
    assert!(sim.node::<Mem>(s[0]).is_operational());
    // A client identifies with the master, then with the storage.
    let ci = sim.add(None, Peer::default());
    let ident = testkit::identification(NodeType::Client, "test", None);
    let (mc, me, ts) = sim.join(ci, master_addr(), ident).expect("a client");
    let sc = sim.attach(ci, storage_addr(), identification(me, ts));
    let mut c = Cluster {
        sim,
        m,
        s: s[0],
        mconn: 0,
        ts: 0.0,
    };
    // A commit: begin with the master, store and vote on the storage,
    // finish with the master (which locks and unlocks on the storage).
    let Body::AnswerBeginTransaction(b) = c.sim.request(ci, mc, AskBeginTransaction { tid: None })
    else {
        panic!()
    };
    let ttid = b.ttid;
    assert_eq!(
        c.sim.request(ci, sc, obj(0, ZERO_TID, ttid, b"root")),
        stored(None)
    );
    c.sim.request(ci, sc, meta(ttid, &[0]));
    let a = c.sim.request(
        ci,
        mc,
        AskFinishTransaction {
            ttid,
            oid_list: vec![Oid(0)],
            deleted: vec![],
            checked: vec![],
            pack: None,
        },
    );
    let Body::AnswerTransactionFinished(f) = a else {
        panic!("{a:?}")
    };
    let Body::AnswerObject(o) = load(&mut c, ci, sc, 0, None, None) else {
        panic!()
    };
    assert_eq!((o.serial, o.data.as_ref()), (f.tid, &b"root"[..]));
    let Body::AnswerLastTransaction(l) = c.sim.request(ci, mc, AskLastTransaction {}) else {
        panic!()
    };
    assert_eq!(l.tid, f.tid);
}

/// Another storage node replicating from us and checking us (the source
/// side of conversations 05 and 06).
#[test]
fn serves_replication_and_checks() {
    let mut c = running();
    let (ci, cc) = c.client(C1);
    let (t1, t2) = (Tid(0x100), Tid(0x200));
    // Oids 1 and 5 are in partition 1, with t1 and t2 in partition 0.
    commit(
        &mut c,
        ci,
        cc,
        Tid(0xfc),
        t1,
        &[(1, ZERO_TID, b"a1"), (5, ZERO_TID, b"e1")],
    );
    commit(&mut c, ci, cc, Tid(0x1fc), t2, &[(1, t1, b"a2")]);
    // S2 is announced by the master, then identifies with us.
    let s2 = NodeId::new(NodeType::Storage, 2);
    c.ts += 1.0;
    let ts = c.ts;
    let (m, mconn) = (c.m, c.mconn);
    c.sim.send(
        m,
        mconn,
        NotifyNodeInformation {
            timestamp: ts,
            node_list: vec![NodeInfo {
                node_type: NodeType::Storage,
                address: Some(Address::new("127.0.0.1", 31111)),
                uuid: Some(s2),
                state: NodeState::Running,
                id_timestamp: Some(ts),
            }],
        },
    );
    let p = c.sim.add(None, Peer::default());
    let pc = c.sim.connect(p, storage_addr());
    let mut r = identification(s2, ts);
    r.node_type = NodeType::Storage;
    r.address = Some(Address::new("127.0.0.1", 31111));
    let a = c.sim.request(p, pc, r);
    assert!(matches!(a, Body::AcceptIdentification(_)), "{a:?}");
    // Transactions of partition 0: S2 has t1 and an unknown 0x4 already.
    let id = c.sim.ask(
        p,
        pc,
        AskFetchTransactions {
            partition: 0,
            length: 1000,
            min_tid: ZERO_TID,
            max_tid: MAX_TID,
            tid_list: vec![Tid(4), t1],
            ask_pack_info: true,
        },
    );
    let got: Vec<Packet> = std::mem::take(&mut c.sim.node_mut::<Peer>(p).inbox)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert!(got.iter().all(|p| p.id == id));
    let [Packet {
        body: Body::AddTransaction(t),
        ..
    }, Packet {
        body: Body::AnswerFetchTransactions(a),
        ..
    }] = &got[..]
    else {
        panic!("{got:?}")
    };
    assert_eq!((t.tid, t.ttid, t.oid_list.len()), (t2, Tid(0x1fc), 1));
    assert_eq!(
        (a.next_tid, &a.tid_list[..], a.completed_pack),
        (None, &[Tid(4)][..], Some(ZERO_TID))
    );
    // Objects of partition 1, 2 at a time: S2 has (t1, 1) already.
    let id = c.sim.ask(
        p,
        pc,
        AskFetchObjects {
            partition: 1,
            length: 2,
            min_tid: ZERO_TID,
            max_tid: MAX_TID,
            min_oid: Oid(0),
            object_dict: [(t1, vec![Oid(1)])].into_iter().collect(),
        },
    );
    let got: Vec<Packet> = std::mem::take(&mut c.sim.node_mut::<Peer>(p).inbox)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert!(got.iter().all(|p| p.id == id));
    let [Packet {
        body: Body::AddObject(o),
        ..
    }, Packet {
        body: Body::AnswerFetchObjects(a),
        ..
    }] = &got[..]
    else {
        panic!("{got:?}")
    };
    assert_eq!((o.oid, o.serial, o.data.as_ref()), (Oid(5), t1, &b"e1"[..]));
    assert_eq!(
        (a.next_tid, a.next_oid, a.object_dict.len()),
        (Some(t2), Some(Oid(1)), 0)
    );
    // Checks.
    let a = c.sim.request(
        p,
        pc,
        AskCheckTIDRange {
            partition: 0,
            length: 100,
            min_tid: ZERO_TID,
            max_tid: MAX_TID,
        },
    );
    let Body::AnswerCheckTIDRange(r) = a else {
        panic!("{a:?}")
    };
    assert_eq!((r.count, r.max_tid), (2, t2));
    assert_eq!(
        r.checksum.0,
        crate::storage::hash_decimal_list([t1.0, t2.0])
    );
    let a = c.sim.request(
        p,
        pc,
        AskCheckSerialRange {
            partition: 1,
            length: 100,
            min_tid: ZERO_TID,
            max_tid: MAX_TID,
            min_oid: Oid(0),
        },
    );
    let Body::AnswerCheckSerialRange(r) = a else {
        panic!("{a:?}")
    };
    assert_eq!((r.count, r.max_tid, r.max_oid), (3, t2, Oid(1)));
}

#[test]
fn truncate_during_recovery() {
    let mut c = running();
    let (ci, cc) = c.client(C1);
    let (t1, t2) = (Tid(0x100), Tid(0x200));
    commit(&mut c, ci, cc, Tid(0xfc), t1, &[(0, ZERO_TID, b"r1")]);
    commit(&mut c, ci, cc, Tid(0x1fc), t2, &[(0, t1, b"r2")]);
    let (m, mconn) = (c.m, c.mconn);
    c.sim.send(m, mconn, StopOperation {});
    c.sim.send(m, mconn, Truncate { tid: t1 });
    let a = c.sim.request(m, mconn, AskRecovery {});
    assert_eq!(
        a,
        Body::AnswerRecovery(AnswerRecovery {
            ptid: Some(1),
            backup_tid: None,
            truncate_tid: Some(t1)
        })
    );
    // AskLastIDs applies the truncation.
    let a = c.sim.request(m, mconn, AskLastIDs {});
    let Body::AnswerLastIDs(ids) = a else {
        panic!("{a:?}")
    };
    assert_eq!(
        (ids.last_tid, ids.last_oid, ids.first_tid),
        (Some(t1), Some(Oid(0)), Some(t1))
    );
    let Body::AnswerRecovery(r) = c.sim.request(m, mconn, AskRecovery {}) else {
        panic!()
    };
    assert_eq!(r.truncate_tid, None);
    c.sim.send(m, mconn, StartOperation { backup: false });
    let (ci, cc) = c.client(C2);
    let Body::AnswerObject(o) = load(&mut c, ci, cc, 0, None, None) else {
        panic!()
    };
    assert_eq!((o.serial, o.data.as_ref()), (t1, &b"r1"[..]));
}

#[test]
fn wrong_partition_table_id_drops_the_master() {
    let mut c = running();
    let (m, mconn) = (c.m, c.mconn);
    let id = c.sim.ask(m, mconn, Ping {});
    assert_eq!(c.sim.answer(m, mconn, id), Some(Body::Pong(Pong {})));
    c.sim.send(
        m,
        mconn,
        NotifyPartitionChanges {
            ptid: 5,
            num_replicas: 0,
            cell_list: vec![],
        },
    );
    let n = c.sim.notifications(m);
    assert!(n.is_empty(), "{n:?}");
    let errors: Vec<_> = std::mem::take(&mut c.sim.node_mut::<Peer>(m).inbox)
        .into_iter()
        .filter(|(_, p)| error_code(&p.body).is_some())
        .collect();
    assert!(
        matches!(&errors[..], [(_, p)] if error_code(&p.body) == Some(ErrorCode::ProtocolError))
    );
    assert!(c.sim.node::<Peer>(m).closed.contains(&mconn));
    assert!(!c.storage().is_operational());
    // It reconnects at once and identifies with its node id.
    let conns = &c.sim.node::<Peer>(m).conns;
    assert_eq!(conns.len(), 2);
}

#[test]
fn discarded_partition_releases_locks_and_data() {
    let mut c = running();
    let (ci, cc) = c.client(C1);
    let ta = Tid(0x100);
    assert_eq!(
        c.sim.request(ci, cc, obj(1, ZERO_TID, ta, b"one")),
        stored(None)
    );
    assert_eq!(
        c.sim.request(ci, cc, obj(2, ZERO_TID, ta, b"two")),
        stored(None)
    );
    // Partition 1 moves to S2: our cell is discarded.
    let s2 = NodeId::new(NodeType::Storage, 2);
    let (m, mconn) = (c.m, c.mconn);
    c.sim.send(
        m,
        mconn,
        NotifyPartitionChanges {
            ptid: 2,
            num_replicas: 0,
            cell_list: vec![
                (1, s2, neo_proto::CellState::UpToDate),
                (1, S1, neo_proto::CellState::Discarded),
            ],
        },
    );
    let t = c.storage().transactions().get(ta).expect("still there");
    assert_eq!(t.store_dict.keys().copied().collect::<Vec<_>>(), [Oid(2)]);
    assert_eq!(c.storage().transactions().locking_tid(Oid(1)), None);
    // Stores to a partition we do not have anymore are ignored (ZERO_TID).
    assert_eq!(
        c.sim.request(ci, cc, obj(5, ZERO_TID, Tid(0x200), b"x")),
        stored(Some(ZERO_TID))
    );
    let a = load(&mut c, ci, cc, 1, None, None);
    assert_eq!(error_code(&a), Some(ErrorCode::NonReadableCell));
    let db = c.storage().db_mut();
    assert_eq!(db.ptid().unwrap(), Some(2));
    let cells: Vec<_> = db
        .partition_table()
        .unwrap()
        .into_iter()
        .filter(|c| c.0 == 1)
        .collect();
    assert_eq!(cells, [(1, 2, crate::storage::CellState::UpToDate)]);
}

/// Timing (ignored by default; `cargo test --release -- --ignored
/// --nocapture commit_rate`): commits of one 100-byte object through the
/// scripted master and client, on SQLite (fsync at vote and lock).
#[test]
#[ignore]
fn commit_rate() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteBackend::open(&dir.path().join("s.sqlite"), &SqliteOptions::default()).unwrap();
    let mut c = identified(db);
    start_with::<SqliteBackend>(&mut c);
    let (ci, cc) = c.client(C1);
    let n = 300u64;
    let data = [b'x'; 100];
    let t0 = std::time::Instant::now();
    let mut last = ZERO_TID;
    for i in 0..n {
        let ttid = Tid(0x1000 + 4 * i);
        commit(
            &mut c,
            ci,
            cc,
            ttid,
            ttid,
            &[(
                i % 50,
                if i < 50 { ZERO_TID } else { Tid(ttid.0 - 200) },
                &data,
            )],
        );
        last = ttid;
    }
    let dt = t0.elapsed();
    eprintln!(
        "{n} commits in {dt:?}: {:.0} commits/s (last {last})",
        n as f64 / dt.as_secs_f64()
    );
    let t0 = std::time::Instant::now();
    for i in 0..n {
        let Body::AnswerObject(_) = load(&mut c, ci, cc, i % 50, None, None) else {
            panic!()
        };
    }
    let dt = t0.elapsed();
    eprintln!(
        "{n} loads in {dt:?}: {:.0} loads/s",
        n as f64 / dt.as_secs_f64()
    );
}

/// A storage that holds objects of a transaction but not its metadata
/// (another storage has the partition of the ttid): it only votes
/// (AskVoteTransaction), and its lock has nothing to make durable.
#[test]
fn vote_without_metadata() {
    let mut c = running();
    let (ci, cc) = c.client(C1);
    let (ttid, tid) = (Tid(0x100), Tid(0x104));
    assert_eq!(
        c.sim.request(ci, cc, obj(3, ZERO_TID, ttid, b"three")),
        stored(None)
    );
    let a = c.sim.request(ci, cc, AskVoteTransaction { ttid });
    assert_eq!(a, Body::AnswerVoteTransaction(AnswerVoteTransaction {}));
    // A vote for an unknown transaction is a protocol error.
    let (di, dc) = c.client(C2);
    let a = c
        .sim
        .request(di, dc, AskVoteTransaction { ttid: Tid(0x999) });
    assert_eq!(error_code(&a), Some(ErrorCode::ProtocolError));
    let (m, mconn) = (c.m, c.mconn);
    let a = c.sim.request(
        m,
        mconn,
        AskLockInformation {
            ttid,
            tid,
            pack: false,
        },
    );
    assert_eq!(
        a,
        Body::AnswerInformationLocked(AnswerInformationLocked { ttid })
    );
    // Voted objects are in tobj: recovery would report the ttid unlocked.
    let unfinished = c.storage().db_mut().unfinished_transactions().unwrap();
    assert_eq!(unfinished.get(&ttid), Some(&None));
    c.sim.send(m, mconn, NotifyUnlockInformation { ttid });
    let Body::AnswerObject(o) = load(&mut c, ci, cc, 3, None, None) else {
        panic!()
    };
    assert_eq!((o.serial, o.data.as_ref()), (tid, &b"three"[..]));
    let db = c.storage().db_mut();
    assert!(db.get_transaction(tid, false).unwrap().is_none());
    assert!(db.unfinished_transactions().unwrap().is_empty());
}
