//! Replays the recorded conversations 01-bootstrap, 02-client-zodb and
//! 03-shutdown (one run of the same cluster) against our storage node in
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
fn play(sim: &mut Sim, peers: &mut HashMap<String, usize>, steps: Vec<Step>) -> usize {
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
                let packet = Packet::decode(&Bytes::from(frame)).expect("recorded frame");
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
        sim.run();
        for (peer, &i) in peers.iter() {
            let got = &sim.node::<Replayer>(i).got;
            let exp = expected.get(peer).map_or(&[][..], Vec::as_slice);
            let done = checked.entry(peer.clone()).or_insert(0);
            while *done < got.len().min(exp.len()) {
                let (frame, line) = &exp[*done];
                let recorded = Packet::decode(&Bytes::from(frame.clone())).expect("frame");
                let ours = comparable(&got[*done], &recorded);
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
    let compared = play(&mut sim, &mut peers, steps);
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
    play(&mut sim, &mut peers, steps)
}
