//! Replays the recorded conversations 01-bootstrap, 02-client-zodb and
//! 03-shutdown (one run of the same cluster), 04-06 in part, and the pack
//! of 07-pack-admin-truncate against our storage node in
//! [`Sim`]: every frame the real master and clients sent to the real
//! storage is sent again, byte for byte (ids included), in the recorded
//! order; every frame our storage sends must match, in order and per
//! peer, the frame the real storage sent, byte for byte. All tids come
//! from the peers, so nothing depends on time; the only difference
//! allowed is the `devpath` of RequestIdentification (NEO's topology path
//! of the machine that recorded).
//!
//! The fixtures are found at `<repo>/../shared/neo-protocol` or
//! `$NEO_PROTOCOL_FIXTURES`; without them the test fails.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use neo_proto::{Body, Bytes, Packet, Value};

use super::tests::config;
use super::StorageNode;
use crate::runtime::{ConnId, Event, Node, Outbox};
use crate::sim::Sim;
use crate::storage::MemoryBackend;

fn conversations_dir() -> PathBuf {
    let dir = match std::env::var_os("NEO_PROTOCOL_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/neo-protocol"),
    };
    let dir = dir.join("conversations");
    assert!(
        dir.is_dir(),
        "NEO protocol fixtures missing: {} (shared/ must sit beside the repository)",
        dir.display()
    );
    dir
}

const ME: &str = "storage1";

/// One line of a conversation that concerns the storage.
#[derive(Debug, Clone)]
enum Step {
    /// `peer` opens a connection to the storage.
    Connect { peer: String },
    /// `peer` sends this frame to the storage.
    Send { peer: String, frame: Vec<u8> },
    /// The storage sent this frame to `peer`.
    Expect {
        peer: String,
        frame: Vec<u8>,
        line: u64,
    },
    /// `peer` closes its connection to the storage.
    Close { peer: String },
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

fn load(name: &str) -> Vec<Step> {
    let path = conversations_dir().join(name);
    let text = std::fs::read_to_string(&path).expect("conversation");
    let mut steps = Vec::new();
    for line in text.lines() {
        let e: serde_json::Value = serde_json::from_str(line).expect("json line");
        let s = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
        let (node, peer, event) = (s("node"), s("peer"), s("event"));
        let i = e.get("i").and_then(|v| v.as_u64()).unwrap_or(0);
        match event.as_str() {
            // The storage connects to the master by itself.
            "connect" if peer == ME && node != "master" => steps.push(Step::Connect { peer: node }),
            "close" if peer == ME => steps.push(Step::Close { peer: node }),
            "packet" if s("dir") == "send" => {
                if peer == ME {
                    steps.push(Step::Send {
                        peer: node,
                        frame: hex(&s("hex")),
                    });
                } else if node == ME {
                    steps.push(Step::Expect {
                        peer,
                        frame: hex(&s("hex")),
                        line: i,
                    });
                }
            }
            _ => {}
        }
    }
    steps
}

/// A peer that sends given frames and records the storage's.
#[derive(Default)]
struct Replayer {
    conn: Option<ConnId>,
    to: Option<SocketAddr>,
    got: Vec<Packet>,
}

impl Node for Replayer {
    fn start(&mut self, _now: Instant, out: &mut Outbox) {
        if let Some(to) = self.to {
            self.conn = Some(out.connect(to, 0));
        }
    }

    fn handle(&mut self, _now: Instant, event: Event, _out: &mut Outbox) {
        match event {
            Event::Accepted { conn, .. } => self.conn = Some(conn),
            Event::Packet { packet, .. } => self.got.push(packet),
            _ => {}
        }
    }
}

/// Our frame, with the recorded `devpath` put in RequestIdentification.
fn comparable(ours: &Packet, recorded: &Packet) -> Packet {
    let mut ours = ours.clone();
    if let (Body::RequestIdentification(o), Body::RequestIdentification(r)) =
        (&mut ours.body, &recorded.body)
    {
        let devpath: &[u8] = b"devpath";
        if let (Some(i), Some(v)) = (
            o.extra.0.iter().position(|(k, _)| k.as_ref() == devpath),
            r.extra.get(&Bytes::from_static(b"devpath")),
        ) {
            if matches!(&o.extra.0[i].1, Value::Array(a) if a.is_empty()) {
                o.extra.0[i].1 = v.clone();
            }
        }
    }
    if let (Body::AskUnfinishedTransactions(_), Body::AskUnfinishedTransactions(_)) =
        (&ours.body, &recorded.body)
    {
        // Its id counts what was sent to the master since 01, which a
        // replay from 04 does not send.
        ours.id = recorded.id;
    }
    ours
}

/// Plays `steps` against the storage, whose master is the replayer
/// `peers["master"]`; returns how many frames of the storage matched.
/// With `mid` (a replay that starts in the middle of a recording), what
/// the storage sends the master by itself keeps its recorded id (the ids
/// count what the recorded node sent since it started) and the answers to
/// it get ours; zero-delay timers (background work) fire after each step.
fn play(sim: &mut Sim, peers: &mut HashMap<String, usize>, steps: Vec<Step>, mid: bool) -> usize {
    let mut remap: HashMap<u32, u32> = HashMap::new();
    let mut expected: HashMap<String, Vec<(Vec<u8>, u64)>> = HashMap::new();
    let mut checked: HashMap<String, usize> = HashMap::new();
    let mut compared = 0;
    for step in steps {
        match step {
            Step::Connect { peer } => {
                if let Some(&old) = peers.get(&peer) {
                    // A new connection of a peer seen before (a client
                    // that reconnects): its frames count afresh.
                    let got = sim.node::<Replayer>(old).got.len();
                    let exp = expected.remove(&peer).map_or(0, |e| e.len());
                    assert_eq!(got, exp, "frames to {peer}: ours {got}, recorded {exp}");
                    checked.remove(&peer);
                }
                let r = Replayer {
                    to: Some(super::tests::storage_addr()),
                    ..Replayer::default()
                };
                peers.insert(peer, sim.add(None, r));
            }
            Step::Send { peer, frame } => {
                let i = peers[&peer];
                let mut packet = Packet::decode(&Bytes::from(frame)).expect("recorded frame");
                if peer == "master" && packet.body.kind() != neo_proto::PacketKind::Request {
                    if let Some(&ours) = remap.get(&packet.id) {
                        packet.id = ours;
                    }
                }
                sim.poke::<Replayer>(i, |r, out| {
                    out.send_with_id(r.conn.expect("connected"), packet.id, packet.body)
                });
            }
            Step::Expect { peer, frame, line } => {
                expected.entry(peer).or_default().push((frame, line));
            }
            Step::Close { peer } => {
                let i = peers[&peer];
                sim.poke::<Replayer>(i, |r, out| out.close(r.conn.expect("connected")));
            }
        }
        if mid {
            sim.advance(std::time::Duration::ZERO);
        } else {
            sim.run();
        }
        for (peer, &i) in peers.iter() {
            let got = &sim.node::<Replayer>(i).got;
            let exp = expected.get(peer).map_or(&[][..], Vec::as_slice);
            let done = checked.entry(peer.clone()).or_insert(0);
            while *done < got.len().min(exp.len()) {
                let (frame, line) = &exp[*done];
                let recorded = Packet::decode(&Bytes::from(frame.clone())).expect("frame");
                let mut ours = comparable(&got[*done], &recorded);
                if mid && peer == "master" && ours.body.kind() != neo_proto::PacketKind::Answer {
                    remap.insert(recorded.id, ours.id);
                    ours.id = recorded.id;
                }
                let bytes = ours.encode().expect("encodable");
                assert!(
                    bytes == *frame,
                    "to {peer}, recorded line {line}:\n  recorded: {recorded:?}\n  ours:     {ours:?}"
                );
                *done += 1;
                compared += 1;
            }
        }
    }
    for (peer, &i) in peers.iter() {
        let got = sim.node::<Replayer>(i).got.len();
        let exp = expected.get(peer).map_or(0, Vec::len);
        assert_eq!(got, exp, "frames to {peer}: ours {got}, recorded {exp}");
    }
    compared
}

#[test]
fn replay_01_02_03_against_our_storage() {
    let steps: Vec<Step> = [
        "01-bootstrap.jsonl",
        "02-client-zodb.jsonl",
        "03-shutdown.jsonl",
    ]
    .iter()
    .flat_map(|f| load(f))
    .collect();
    let mut sim = Sim::new();
    let mut peers: HashMap<String, usize> = HashMap::new();
    let master = sim.add(Some(super::tests::master_addr()), Replayer::default());
    peers.insert("master".into(), master);
    let storage = sim.add(
        Some(super::tests::storage_addr()),
        StorageNode::new(config(), MemoryBackend::new(false)).expect("node"),
    );
    sim.run();
    let compared = play(&mut sim, &mut peers, steps, false);
    assert!(compared >= 100, "only {compared} frames compared");
    assert!(sim.node::<StorageNode<MemoryBackend>>(storage).is_stopped());
}

/// Conversation 04 starts with a running cluster whose root object is
/// committed: the storage is set up so (its database holds the root as
/// the recording's first load answers it), then the two clients make it
/// send NotifyDeadlock and answer the relock with the conflict.
#[test]
fn replay_04_deadlock_avoidance() {
    let compared = replay_from_04(&["04-deadlock-avoidance.jsonl"]);
    assert!(compared >= 20, "only {compared} frames compared");
}

/// Conversations 04 and 05 are one run: a second storage joins, the
/// partition table is tweaked and the new storage replicates from us.
/// Replayed until we replicate ourselves (after `set replicas 1`): up to
/// our AskUnfinishedTransactions (the rest depends on timing; see
/// `replication_tests.rs`).
#[test]
fn replay_04_05_replication_source() {
    let compared = replay_from_04(&[
        "04-deadlock-avoidance.jsonl",
        "05-storage-join-replication-check.jsonl",
    ]);
    assert!(compared >= 50, "only {compared} frames compared");
}

/// Replays files from 04 on, the storage set up as 04 needs; returns the
/// number of frames compared.
fn replay_from_04(files: &[&str]) -> usize {
    use crate::storage::{Backend, CellState, ObjectRef, TxnMeta};
    use neo_proto::{AcceptIdentification, NodeId, NodeType, StartOperation};
    let mut steps: Vec<Step> = files.iter().flat_map(|f| load(f)).collect();
    // Stop where the recorded storage starts replicating by itself.
    let fetching = steps.iter().position(|s| match s {
        Step::Expect { frame, .. } => matches!(
            Packet::decode(&Bytes::from(frame.clone())).map(|p| p.body),
            Ok(Body::AskFetchTransactions(_) | Body::AskUnfinishedTransactions(_))
        ),
        _ => false,
    });
    let all = steps.clone();
    if let Some(i) = fetching {
        // Our AskUnfinishedTransactions is compared too.
        let ask_unfinished = matches!(&steps[i], Step::Expect { frame, .. } if matches!(
            Packet::decode(&Bytes::from(frame.clone())).map(|p| p.body),
            Ok(Body::AskUnfinishedTransactions(_))
        ));
        steps.truncate(i + usize::from(ask_unfinished));
    }
    let steps_for_history = all;
    // What this storage sent in the recordings, as frames.
    let sent: Vec<Body> = steps_for_history
        .iter()
        .filter_map(|s| match s {
            Step::Expect { frame, .. } => Packet::decode(&Bytes::from(frame.clone())).ok(),
            _ => None,
        })
        .map(|p| p.body)
        .collect();
    // The history before 04: what the first load of 04 answers, and what
    // we sent to other storages (05, 06) older than 04's first commit.
    let first_ttid = steps
        .iter()
        .find_map(|s| match s {
            Step::Send { peer, frame } if peer != "master" => {
                match Packet::decode(&Bytes::from(frame.clone())).ok()?.body {
                    Body::AskStoreObject(o) => Some(o.ttid),
                    _ => None,
                }
            }
            _ => None,
        })
        .expect("a store in 04");
    let mut db = MemoryBackend::new(false);
    db.set_name("test").unwrap();
    db.set_nid(1).unwrap();
    let cells: Vec<_> = (0..4).map(|p| (p, 1, CellState::UpToDate)).collect();
    db.change_partition_table(1, 0, &cells, true, fsformat::Tid::ZERO)
        .unwrap();
    let mut objects = std::collections::BTreeMap::new();
    let mut txns = std::collections::BTreeMap::new();
    for body in &sent {
        match body {
            Body::AnswerObject(o) if o.serial < first_ttid => {
                let k = (o.serial, o.oid);
                let v = (o.compression, o.checksum, o.data.clone(), o.data_serial);
                objects.entry(k).or_insert(v);
            }
            Body::AddObject(o) if o.serial < first_ttid => {
                let k = (o.serial, o.oid);
                let v = (o.compression, o.checksum, o.data.clone(), o.data_serial);
                objects.entry(k).or_insert(v);
            }
            Body::AddTransaction(t) if t.tid < first_ttid => {
                txns.entry(t.tid).or_insert(TxnMeta {
                    oids: t.oid_list.clone(),
                    user: t.user.to_vec(),
                    description: t.description.to_vec(),
                    extension: t.extension.to_vec(),
                    packed: t.packed,
                    ttid: t.ttid,
                });
            }
            _ => {}
        }
    }
    for ((serial, oid), (compression, checksum, data, data_serial)) in objects {
        let checksum = (checksum != neo_proto::ZERO_HASH).then_some(checksum.0);
        let id = db
            .store_data(checksum.as_ref(), oid, &data, compression, None)
            .unwrap();
        let object = ObjectRef {
            oid,
            data_id: id,
            value_tid: data_serial,
        };
        db.store_transaction(serial, &[object], None, false)
            .unwrap();
        // A transaction 05/06 did not show us sending: minimal metadata.
        txns.entry(serial).or_insert(TxnMeta {
            oids: vec![oid],
            ttid: serial,
            ..TxnMeta::default()
        });
    }
    for (tid, meta) in txns {
        db.store_transaction(tid, &[], Some(&meta), false).unwrap();
    }
    db.commit().unwrap();

    let mut sim = Sim::new();
    let master = sim.add(Some(super::tests::master_addr()), Replayer::default());
    let storage = sim.add(
        Some(super::tests::storage_addr()),
        StorageNode::new(config(), db).expect("node"),
    );
    sim.run();
    let accept = AcceptIdentification {
        node_type: NodeType::Master,
        uuid: Some(NodeId::new(NodeType::Master, 1)),
        your_uuid: Some(NodeId(1)),
    };
    sim.poke::<Replayer>(master, |r, out| {
        let conn = r.conn.expect("connected");
        out.answer(conn, 0, accept);
        out.send_with_id(conn, 19, StartOperation { backup: false });
    });
    sim.run();
    assert!(sim
        .node::<StorageNode<MemoryBackend>>(storage)
        .is_operational());
    sim.node_mut::<Replayer>(master).got.clear();
    let mut peers = HashMap::from([("master".to_owned(), master)]);
    play(&mut sim, &mut peers, steps, false)
}

/// The pack of conversation 07 (a running cluster of two storages with a
/// replica; we are storage1): two commits, then a commit with a pack
/// order; on NotifyPackSigned we ask the master for the order
/// (AskPackOrders), pack, and send NotifyPackCompleted, as the real
/// storage did. The database starts as the recording shows it: the
/// partition table the master sent the client, the root object our first
/// load answers. Replayed until the client leaves.
#[test]
fn replay_07_pack() {
    use crate::storage::{Backend, ObjectRef, TxnMeta};
    use neo_proto::{AcceptIdentification, NodeId, NodeType, StartOperation};
    let file = "07-pack-admin-truncate.jsonl";
    let mut steps = load(file);
    let end = steps
        .iter()
        .position(|s| matches!(s, Step::Close { peer } if peer == "client1"))
        .expect("the client leaves");
    steps.truncate(end + 1);
    assert!(steps.iter().any(|s| matches!(s, Step::Expect { frame, .. }
        if matches!(Packet::decode(&Bytes::from(frame.clone())).map(|p| p.body),
                    Ok(Body::NotifyPackCompleted(_))))));
    // The partition table, as the master sent it to the client.
    let text = std::fs::read_to_string(conversations_dir().join(file)).expect("conversation");
    let pt = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "packet" && e["dir"] == "send" && e["node"] == "master")
        .filter_map(|e| Packet::decode(&Bytes::from(hex(e["hex"].as_str()?))).ok())
        .find_map(|p| match p.body {
            Body::SendPartitionTable(s) => Some(s),
            _ => None,
        })
        .expect("a partition table");
    let mut db = MemoryBackend::new(false);
    db.set_name("test").unwrap();
    db.set_nid(1).unwrap();
    let cells: Vec<_> = pt
        .row_list
        .iter()
        .enumerate()
        .flat_map(|(p, row)| {
            row.iter()
                .map(move |c| (p as u32, c.uuid.0, super::db_state(c.state)))
        })
        .collect();
    db.change_partition_table(
        pt.ptid.expect("ptid"),
        pt.num_replicas,
        &cells,
        true,
        fsformat::Tid::ZERO,
    )
    .unwrap();
    // What our loads answer from before the recording's first commit.
    let first_ttid = steps
        .iter()
        .find_map(|s| match s {
            Step::Send { frame, .. } => {
                match Packet::decode(&Bytes::from(frame.clone())).ok()?.body {
                    Body::AskStoreObject(o) => Some(o.ttid),
                    _ => None,
                }
            }
            _ => None,
        })
        .expect("a store");
    for s in &steps {
        let Step::Expect { frame, .. } = s else {
            continue;
        };
        let Ok(Body::AnswerObject(o)) = Packet::decode(&Bytes::from(frame.clone())).map(|p| p.body)
        else {
            continue;
        };
        if o.serial >= first_ttid {
            continue;
        }
        let checksum = (o.checksum != neo_proto::ZERO_HASH).then_some(o.checksum.0);
        let id = db
            .store_data(checksum.as_ref(), o.oid, &o.data, o.compression, None)
            .unwrap();
        let object = ObjectRef {
            oid: o.oid,
            data_id: id,
            value_tid: o.data_serial,
        };
        db.store_transaction(o.serial, &[object], None, false)
            .unwrap();
        let meta = TxnMeta {
            oids: vec![o.oid],
            ttid: o.serial,
            ..TxnMeta::default()
        };
        db.store_transaction(o.serial, &[], Some(&meta), false)
            .unwrap();
    }
    db.commit().unwrap();

    let mut sim = Sim::new();
    let master = sim.add(Some(super::tests::master_addr()), Replayer::default());
    let storage = sim.add(
        Some(super::tests::storage_addr()),
        StorageNode::new(config(), db).expect("node"),
    );
    sim.run();
    let accept = AcceptIdentification {
        node_type: NodeType::Master,
        uuid: Some(NodeId::new(NodeType::Master, 1)),
        your_uuid: Some(NodeId(1)),
    };
    sim.poke::<Replayer>(master, |r, out| {
        let conn = r.conn.expect("connected");
        out.answer(conn, 0, accept);
        out.send_with_id(conn, 71, StartOperation { backup: false });
    });
    sim.run();
    assert!(sim
        .node::<StorageNode<MemoryBackend>>(storage)
        .is_operational());
    sim.node_mut::<Replayer>(master).got.clear();
    let mut peers = HashMap::from([("master".to_owned(), master)]);
    let compared = play(&mut sim, &mut peers, steps, true);
    // Every frame the real storage sent, up to NotifyPackCompleted.
    assert_eq!(compared, 13);
    let node = sim.node_mut::<StorageNode<MemoryBackend>>(storage);
    assert!(node.packing().is_empty());
    // The old revision of the root is gone, the one current at the pack
    // tid is there.
    let db = node.db_mut();
    let root = fsformat::Oid(0);
    let hist = db.object_history(root, 0, 10).unwrap().expect("root");
    assert_eq!(hist.len(), 1, "{hist:?}");
}
