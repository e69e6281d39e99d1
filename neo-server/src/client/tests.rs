//! The client against a small in-process cluster: one fake master and one
//! fake storage on real sockets (`neo_proto::conn`), keeping objects in
//! memory with NEO's answers (conversation 02).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use neo_proto::conn::{ConnConfig, Connection, Event};
use neo_proto::*;
use tokio::net::TcpListener;

use super::*;

const ID_TIMESTAMP: f64 = 1_795_542_388.077_306_5;

#[derive(Clone)]
struct Rev {
    serial: Tid,
    compression: u8,
    checksum: Checksum,
    data: Bytes,
    data_serial: Option<Tid>,
}

#[derive(Default)]
struct Pending {
    stores: Vec<(Oid, Rev)>,
    meta: Option<(Bytes, Bytes, Bytes, Vec<Oid>)>,
}

#[derive(Default)]
struct State {
    cluster: String,
    np: u32,
    storage_addr: Option<SocketAddr>,
    objects: BTreeMap<Oid, Vec<Rev>>,
    txns: BTreeMap<Tid, (Bytes, Bytes, Bytes, Vec<Oid>)>,
    pending: HashMap<Tid, Pending>,
    last_tid: Tid,
    next_tid: u64,
    next_oid: u64,
    clients: Vec<(NodeId, Connection)>,
    received: Vec<&'static str>,
    compressions: Vec<u8>,
    corrupt: bool,
}

type Shared = Arc<Mutex<State>>;

struct Fake {
    master: SocketAddr,
    state: Shared,
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

fn err(code: ErrorCode, m: &str) -> Body {
    Error::new(code, m).into()
}

async fn fake_cluster(np: u32) -> Fake {
    let state: Shared = Arc::new(Mutex::new(State {
        cluster: "test".into(),
        np,
        next_tid: 0x0400_0000_0000_0000,
        ..State::default()
    }));
    let ml = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let sl = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let master = ml.local_addr().expect("addr");
    lock(&state).storage_addr = Some(sl.local_addr().expect("addr"));
    for (l, is_master) in [(ml, true), (sl, false)] {
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let Ok((conn, mut events)) =
                    Connection::accept(tcp, None, ConnConfig::default()).await
                else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let mut held = Vec::new();
                    while let Some(Event::Packet(p)) = events.recv().await {
                        lock(&st).received.push(p.body.name());
                        // A store of b"deadlock" makes us ask the client to
                        // relock; the store is answered after the relock.
                        if let Body::AskStoreObject(r) = &p.body {
                            if &r.data[..] == b"deadlock" {
                                let d = NotifyDeadlock {
                                    ttid: r.ttid,
                                    oid: r.oid,
                                };
                                held.push(p.id);
                                let _ = conn.notify(d).await;
                                continue;
                            }
                        }
                        if matches!(p.body, Body::AskRelockObject(_)) {
                            for id in held.drain(..) {
                                let _ = conn.answer(id, AnswerStoreObject { conflict: None }).await;
                            }
                        }
                        let answer = if is_master {
                            serve_master(&st, &conn, p.id, p.body).await
                        } else {
                            serve_storage(&st, p.body)
                        };
                        if let Some((b, close)) = answer {
                            let _ = conn.answer(p.id, b).await;
                            if close {
                                conn.close().await;
                            }
                        }
                    }
                });
            }
        });
    }
    Fake { master, state }
}

fn next_tid(s: &mut State) -> Tid {
    s.next_tid += 0x1000;
    Tid(s.next_tid)
}

async fn serve_master(st: &Shared, conn: &Connection, id: u32, body: Body) -> Option<(Body, bool)> {
    let s1 = NodeId::new(NodeType::Storage, 1);
    let reply = match body {
        Body::RequestIdentification(r) => {
            let (nid, np, storage) = {
                let mut s = lock(st);
                if r.name[..] != *s.cluster.as_bytes() {
                    return Some((err(ErrorCode::ProtocolError, "invalid cluster name"), true));
                }
                let nid = NodeId::new(NodeType::Client, s.clients.len() as u32 + 1);
                s.clients.push((nid, conn.clone()));
                (nid, s.np, s.storage_addr.expect("storage"))
            };
            let accept = AcceptIdentification {
                node_type: NodeType::Master,
                uuid: Some(NodeId::new(NodeType::Master, 1)),
                your_uuid: Some(nid),
            };
            let _ = conn.answer(id, accept).await;
            let nodes = NotifyNodeInformation {
                timestamp: ID_TIMESTAMP,
                node_list: vec![
                    NodeInfo {
                        node_type: NodeType::Client,
                        address: None,
                        uuid: Some(nid),
                        state: NodeState::Running,
                        id_timestamp: Some(ID_TIMESTAMP),
                    },
                    NodeInfo {
                        node_type: NodeType::Storage,
                        address: Some(Address::new("127.0.0.1", storage.port())),
                        uuid: Some(s1),
                        state: NodeState::Running,
                        id_timestamp: Some(1.0),
                    },
                ],
            };
            let _ = conn.notify(nodes).await;
            let cell = Cell {
                uuid: s1,
                state: CellState::UpToDate,
            };
            let pt = SendPartitionTable {
                ptid: Some(1),
                num_replicas: 0,
                row_list: vec![vec![cell]; np as usize],
            };
            let _ = conn.notify(pt).await;
            return None;
        }
        Body::AskLastTransaction(_) => AnswerLastTransaction {
            tid: lock(st).last_tid,
        }
        .into(),
        Body::AskNewOIDs(r) => {
            let mut s = lock(st);
            let first = s.next_oid;
            s.next_oid += u64::from(r.num_oids);
            AnswerNewOIDs {
                oid_list: (first..s.next_oid).map(Oid).collect(),
            }
            .into()
        }
        Body::AskBeginTransaction(_) => AnswerBeginTransaction {
            ttid: next_tid(&mut lock(st)),
        }
        .into(),
        Body::AskFinishTransaction(r) => {
            let (tid, others) = {
                let mut s = lock(st);
                let tid = next_tid(&mut s);
                let p = s.pending.remove(&r.ttid).unwrap_or_default();
                for (oid, mut rev) in p.stores {
                    rev.serial = tid;
                    s.objects.entry(oid).or_default().push(rev);
                }
                if let Some(meta) = p.meta {
                    s.txns.insert(tid, meta);
                }
                s.last_tid = tid;
                let others: Vec<Connection> = s
                    .clients
                    .iter()
                    .filter(|(_, c)| c.peer() != conn.peer())
                    .map(|(_, c)| c.clone())
                    .collect();
                (tid, others)
            };
            for c in others {
                let _ = c
                    .notify(InvalidateObjects {
                        tid,
                        oid_list: r.oid_list.clone(),
                    })
                    .await;
            }
            AnswerTransactionFinished { ttid: r.ttid, tid }.into()
        }
        Body::AbortTransaction(r) => {
            lock(st).pending.remove(&r.ttid);
            return None;
        }
        Body::Ping(_) => Pong {}.into(),
        other => err(ErrorCode::ProtocolError, other.name()),
    };
    Some((reply, false))
}

fn serve_storage(st: &Shared, body: Body) -> Option<(Body, bool)> {
    let mut s = lock(st);
    let reply = match body {
        Body::RequestIdentification(r) => {
            if r.uuid.is_none() || r.id_timestamp != Some(ID_TIMESTAMP) {
                return Some((err(ErrorCode::ProtocolError, "unknown node"), true));
            }
            AcceptIdentification {
                node_type: NodeType::Storage,
                uuid: Some(NodeId::new(NodeType::Storage, 1)),
                your_uuid: r.uuid,
            }
            .into()
        }
        Body::AskObject(r) => {
            let Some(revs) = s.objects.get(&r.oid) else {
                return Some((err(ErrorCode::OidDoesNotExist, "no such oid"), false));
            };
            let i = match (r.at, r.before) {
                (Some(at), _) => revs.iter().position(|v| v.serial == at),
                (None, Some(before)) => revs.iter().rposition(|v| v.serial < before),
                (None, None) => revs.len().checked_sub(1),
            };
            let Some(i) = i else {
                return Some((err(ErrorCode::OidNotFound, "no such revision"), false));
            };
            let v = &revs[i];
            let mut data = v.data.to_vec();
            if s.corrupt && !data.is_empty() {
                data[0] ^= 1;
            }
            AnswerObject {
                oid: r.oid,
                serial: v.serial,
                next_serial: revs.get(i + 1).map(|n| n.serial),
                compression: v.compression,
                checksum: v.checksum,
                data: Bytes::from(data),
                data_serial: v.data_serial,
            }
            .into()
        }
        Body::AskStoreObject(r) => {
            let latest = s
                .objects
                .get(&r.oid)
                .and_then(|v| v.last())
                .map(|v| v.serial);
            if latest.unwrap_or(ZERO_TID) != r.serial {
                AnswerStoreObject { conflict: latest }.into()
            } else {
                s.compressions.push(r.compression);
                let rev = Rev {
                    serial: r.ttid,
                    compression: r.compression,
                    checksum: r.checksum,
                    data: r.data,
                    data_serial: r.data_serial,
                };
                s.pending
                    .entry(r.ttid)
                    .or_default()
                    .stores
                    .push((r.oid, rev));
                AnswerStoreObject { conflict: None }.into()
            }
        }
        Body::AskStoreTransaction(r) => {
            s.pending.entry(r.ttid).or_default().meta =
                Some((r.user, r.description, r.extension, r.oid_list));
            AnswerStoreTransaction {}.into()
        }
        Body::AskVoteTransaction(_) => AnswerVoteTransaction {}.into(),
        Body::AskRelockObject(_) => AnswerRelockObject {
            conflict: Some((ZERO_TID, Tid(0x0500_0000_0000_0000), None)),
        }
        .into(),
        Body::AskTransactionInformation(r) => match s.txns.get(&r.tid) {
            Some((user, description, extension, oids)) => AnswerTransactionInformation {
                tid: r.tid,
                user: user.clone(),
                description: description.clone(),
                extension: extension.clone(),
                packed: false,
                oid_list: oids.clone(),
            }
            .into(),
            None => err(ErrorCode::TidNotFound, "no such tid"),
        },
        Body::AskTIDsFrom(r) => AnswerTIDsFrom {
            tid_list: s
                .txns
                .range(r.min_tid..=r.max_tid)
                .map(|(t, _)| *t)
                .filter(|t| t.0 % u64::from(s.np) == u64::from(r.partition))
                .take(r.length as usize)
                .collect(),
        }
        .into(),
        Body::AskTIDs(r) => AnswerTIDs {
            tid_list: s
                .txns
                .keys()
                .rev()
                .skip(r.first as usize)
                .take((r.last - r.first) as usize)
                .copied()
                .collect(),
        }
        .into(),
        Body::AskObjectHistory(r) => match s.objects.get(&r.oid) {
            Some(revs) => AnswerObjectHistory {
                oid: r.oid,
                history_list: revs
                    .iter()
                    .rev()
                    .skip(r.first as usize)
                    .take((r.last - r.first) as usize)
                    .map(|v| (v.serial, v.data.len() as u64))
                    .collect(),
            }
            .into(),
            None => err(ErrorCode::OidDoesNotExist, "no such oid"),
        },
        Body::AskObjectUndoSerial(r) => {
            let mut map = Map::new();
            for oid in r.oid_list {
                let revs = s.objects.get(&oid).cloned().unwrap_or_default();
                let current = revs.iter().rev().find(|v| v.serial < r.ltid);
                let before = revs.iter().rev().find(|v| v.serial < r.undone_tid);
                let current = current.map_or(ZERO_TID, |v| v.serial);
                map.0.push((
                    oid,
                    (current, before.map(|v| v.serial), current == r.undone_tid),
                ));
            }
            AnswerObjectUndoSerial {
                object_tid_dict: map,
            }
            .into()
        }
        Body::AbortTransaction(r) => {
            s.pending.remove(&r.ttid);
            return None;
        }
        Body::Ping(_) => Pong {}.into(),
        other => err(ErrorCode::ProtocolError, other.name()),
    };
    Some((reply, false))
}

fn cfg(fake: &Fake) -> ClientConfig {
    let mut c = ClientConfig::new(vec![fake.master], "test");
    c.connect_timeout = Duration::from_secs(5);
    c.request_timeout = Some(Duration::from_secs(5));
    c
}

fn meta(desc: &str) -> TxnMeta {
    TxnMeta {
        user: b"/ alice".to_vec(),
        description: desc.as_bytes().to_vec(),
        extension: Vec::new(),
    }
}

async fn commit(c: &Client, desc: &str, objs: &[(Oid, Tid, &[u8])]) -> Result<Tid> {
    let mut txn = c.tpc_begin(meta(desc)).await?;
    for &(oid, serial, data) in objs {
        if let Err(e) = c.store(&mut txn, oid, serial, data).await {
            c.tpc_abort(txn).await;
            return Err(e);
        }
    }
    c.tpc_finish(txn).await
}

#[tokio::test]
async fn commit_load_history_iterate() {
    let fake = fake_cluster(3).await;
    let c = Client::connect(cfg(&fake)).await.expect("connect");
    assert_eq!(c.nid(), Some(NodeId::new(NodeType::Client, 1)));
    assert_eq!(c.partitions(), 3);
    assert_eq!(c.last_tid(), ZERO_TID);
    let root = c.new_oid().await.expect("oid");
    let other = c.new_oid().await.expect("oid");
    assert_eq!((root, other), (Oid(0), Oid(1)));
    assert!(matches!(
        c.load(root).await,
        Err(ClientError::OidDoesNotExist(Oid(0)))
    ));
    let big = vec![b'x'; 4000];
    let t1 = commit(
        &c,
        "create",
        &[(root, ZERO_TID, b"root v1"), (other, ZERO_TID, &big)],
    )
    .await
    .expect("commit 1");
    assert_eq!(c.last_tid(), t1);
    // Small data stays raw, compressible data goes zlib.
    assert_eq!(lock(&fake.state).compressions, vec![0, 1]);
    let t2 = commit(&c, "modify", &[(root, t1, b"root v2")])
        .await
        .expect("commit 2");
    assert!(t2 > t1);
    let r = c.load(root).await.expect("load");
    assert_eq!((r.data.as_slice(), r.serial), (&b"root v2"[..], t2));
    assert_eq!(c.load(other).await.expect("load big").data, big);
    let before = c
        .load_before(root, t2)
        .await
        .expect("loadBefore")
        .expect("found");
    assert_eq!(
        (before.data.as_slice(), before.serial, before.next_serial),
        (&b"root v1"[..], t1, Some(t2))
    );
    assert_eq!(c.load_before(root, t1).await.expect("loadBefore"), None);
    let serial = c.load_serial(root, t1).await.expect("loadSerial");
    assert_eq!(serial.data, b"root v1");
    assert!(matches!(
        c.load_serial(root, Tid(t1.0 + 1)).await,
        Err(ClientError::NotFound { .. })
    ));
    let h = c.history(root, 10).await.expect("history");
    assert_eq!(h.len(), 2);
    assert_eq!((h[0].serial, h[0].size), (t2, 7));
    assert_eq!(h[1].info.description, b"create");
    let log = c.undo_log(0, 10).await.expect("undoLog");
    let tids: Vec<Tid> = log.iter().map(|i| i.tid).collect();
    assert_eq!(tids, vec![t2, t1]);
    let all = c.iterator(ZERO_TID, None).await.expect("iterate");
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].info.tid, t1);
    assert_eq!(all[0].info.user, b"/ alice");
    assert_eq!(all[0].objects.len(), 2);
    assert_eq!(all[0].objects[1].data.as_deref(), Some(&big[..]));
    assert_eq!(all[1].objects[0].data.as_deref(), Some(&b"root v2"[..]));
    let from_t2 = c.iterator(t2, None).await.expect("iterate from t2");
    assert_eq!(from_t2.len(), 1);
    assert_eq!(c.last_transaction().await.expect("last"), t2);
    c.close().await;
}

#[tokio::test]
async fn conflicts_abort_and_invalidations() {
    let fake = fake_cluster(2).await;
    let a = Client::connect(cfg(&fake)).await.expect("connect a");
    let b = Client::connect(cfg(&fake)).await.expect("connect b");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    b.on_invalidate(move |tid, oids| seen2.lock().expect("lock").push((tid, oids.to_vec())));
    let oid = a.new_oid().await.expect("oid");
    let t1 = commit(&a, "create", &[(oid, ZERO_TID, b"v1")])
        .await
        .expect("t1");
    let t2 = commit(&a, "a wins", &[(oid, t1, b"v2 by a")])
        .await
        .expect("t2");
    // b still bases its change on t1.
    match commit(&b, "b loses", &[(oid, t1, b"v2 by b")]).await {
        Err(ClientError::Conflict {
            oid: o,
            committed,
            base,
        }) => assert_eq!((o, committed, base), (oid, t2, t1)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // b was told about a's commits (the callback runs in b's event task).
    for _ in 0..100 {
        if seen.lock().expect("lock").len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        *seen.lock().expect("lock"),
        vec![(t1, vec![oid]), (t2, vec![oid])]
    );
    assert_eq!(b.last_tid(), t2);
    assert_eq!(b.load(oid).await.expect("load").data, b"v2 by a");
    let received = lock(&fake.state).received.clone();
    assert_eq!(
        received
            .iter()
            .filter(|n| **n == "AbortTransaction")
            .count(),
        2,
        "to the storage and to the master: {received:?}"
    );
    assert!(lock(&fake.state).pending.is_empty());
    // The loser retries on the right base.
    let t3 = commit(&b, "b retries", &[(oid, t2, b"v3 by b")])
        .await
        .expect("t3");
    assert_eq!(a.load_serial(oid, t3).await.expect("load").data, b"v3 by b");
}

#[tokio::test]
async fn undo_restores_the_previous_revision() {
    let fake = fake_cluster(1).await;
    let c = Client::connect(cfg(&fake)).await.expect("connect");
    let oid = c.new_oid().await.expect("oid");
    let t1 = commit(&c, "v1", &[(oid, ZERO_TID, b"one")])
        .await
        .expect("t1");
    let t2 = commit(&c, "v2", &[(oid, t1, b"two")]).await.expect("t2");
    let mut txn = c.tpc_begin(meta("undo v2")).await.expect("begin");
    let oids = c.undo(&mut txn, t2).await.expect("undo");
    assert_eq!(oids, vec![oid]);
    let t3 = c.tpc_finish(txn).await.expect("finish");
    let r = c.load(oid).await.expect("load");
    assert_eq!(
        (r.data.as_slice(), r.serial, r.data_serial),
        (&b"one"[..], t3, Some(t1))
    );
    // Undoing t1 now conflicts: oid changed after it.
    let mut txn = c.tpc_begin(meta("undo v1")).await.expect("begin");
    assert!(matches!(
        c.undo(&mut txn, t1).await,
        Err(ClientError::Undo { .. })
    ));
    c.tpc_abort(txn).await;
}

#[tokio::test]
async fn wrong_checksum_is_detected() {
    let fake = fake_cluster(1).await;
    let c = Client::connect(cfg(&fake)).await.expect("connect");
    let oid = c.new_oid().await.expect("oid");
    commit(&c, "v1", &[(oid, ZERO_TID, b"data")])
        .await
        .expect("t1");
    lock(&fake.state).corrupt = true;
    assert!(matches!(
        c.load(oid).await,
        Err(ClientError::WrongChecksum { .. })
    ));
}

#[tokio::test]
async fn wrong_cluster_name_is_refused() {
    let fake = fake_cluster(1).await;
    let mut cfg = cfg(&fake);
    cfg.cluster = "other".into();
    match Client::connect(cfg).await {
        Err(ClientError::Refused { code, message, .. }) => {
            assert_eq!(code, ErrorCode::ProtocolError);
            assert_eq!(message, "invalid cluster name");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn no_master_gives_up_at_the_deadline() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    let mut cfg = ClientConfig::new(vec![addr], "test");
    cfg.connect_timeout = Duration::from_millis(500);
    let start = std::time::Instant::now();
    assert!(matches!(
        Client::connect(cfg).await,
        Err(ClientError::NoMaster { .. })
    ));
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn compression_round_trip() {
    let data = vec![7u8; 1000];
    let (c, z) = compress(&data);
    assert_eq!(c, 1);
    assert!(z.len() < data.len());
    assert_eq!(decompress(1, &z).expect("zlib"), data);
    assert_eq!(compress(b"ab"), (0, b"ab".to_vec()));
    assert!(decompress(2, b"x").is_err());
    assert!(decompress(1, b"not zlib").is_err());
}

#[tokio::test]
async fn reconnects_when_the_master_drops_us() {
    let fake = fake_cluster(1).await;
    let c = Client::connect(cfg(&fake)).await.expect("connect");
    let oid = c.new_oid().await.expect("oid");
    let t1 = commit(&c, "v1", &[(oid, ZERO_TID, b"one")])
        .await
        .expect("t1");
    let conns: Vec<Connection> = lock(&fake.state)
        .clients
        .iter()
        .map(|x| x.1.clone())
        .collect();
    for conn in conns {
        conn.close().await;
    }
    // The next call waits for the new connection and works.
    let t2 = commit(&c, "v2", &[(oid, t1, b"two")])
        .await
        .expect("t2 after reconnection");
    assert_eq!(c.load(oid).await.expect("load").serial, t2);
    assert_eq!(c.nid(), Some(NodeId::new(NodeType::Client, 2)));
    let received = lock(&fake.state).received.clone();
    assert_eq!(
        received
            .iter()
            .filter(|n| **n == "RequestIdentification")
            .count(),
        3,
        "master twice, storage once: {received:?}"
    );
    // After close, no reconnection.
    c.close().await;
    assert!(matches!(
        c.last_transaction().await,
        Err(ClientError::NoMaster { .. })
    ));
}

#[tokio::test]
async fn deadlock_avoidance_relocks_and_reports_the_conflict() {
    let fake = fake_cluster(1).await;
    let c = Client::connect(cfg(&fake)).await.expect("connect");
    let oid = c.new_oid().await.expect("oid");
    match commit(&c, "relock", &[(oid, ZERO_TID, b"deadlock")]).await {
        Err(ClientError::Conflict {
            oid: o,
            committed,
            base,
        }) => assert_eq!(
            (o, committed, base),
            (oid, Tid(0x0500_0000_0000_0000), ZERO_TID)
        ),
        other => panic!("expected the relock's conflict, got {other:?}"),
    }
    for _ in 0..100 {
        if lock(&fake.state).received.contains(&"AbortTransaction") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let received = lock(&fake.state).received.clone();
    assert!(received.contains(&"AskRelockObject"), "{received:?}");
    assert!(received.contains(&"AbortTransaction"), "{received:?}");
    // A relock without conflict lets the commit through.
    let t = commit(&c, "plain", &[(oid, ZERO_TID, b"fine")])
        .await
        .expect("commit");
    assert_eq!(c.load(oid).await.expect("load").serial, t);
}
