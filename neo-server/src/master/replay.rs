//! Replays the recorded conversations 01-bootstrap, 02-client-zodb and
//! 03-shutdown (one run of the same cluster) against our master in
//! [`Sim`]: every frame the real storage, admin and clients sent to the
//! real master is sent again, byte for byte (ids included), in the
//! recorded order; every frame our master sends must match, in order and
//! per peer, the frame the real master sent: same id, same code, same
//! arguments, except floats (timestamps) and tids, which depend on time.
//! A recorded tid seen for the first time in the master's output is mapped
//! to ours, and the peers' later frames are rewritten with that mapping.
//! Lists of nodes in NotifyNodeInformation are compared as sets after the
//! peer's own entry (NEO iterates a Python set there).
//!
//! The fixtures are found at `<repo>/../shared/neo-protocol` or
//! `$NEO_PROTOCOL_FIXTURES`; without them the test fails.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use neo_proto::{codec, Bytes, Packet, Value};

use super::tests::{fake_clock, master_addr};
use super::{Master, MasterConfig};
use crate::runtime::{ConnId, Event, Node, Outbox};
use crate::sim::Sim;

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

/// One line of a conversation that concerns the master.
#[derive(Debug, Clone)]
enum Step {
    /// `peer` opens its connection to the master.
    Connect { peer: String },
    /// `peer` sends this frame to the master.
    Send { peer: String, frame: Vec<u8> },
    /// The master sent this frame to `peer`.
    Expect {
        peer: String,
        frame: Vec<u8>,
        line: u64,
    },
    /// `peer` closes its connection to the master.
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
            "connect" if peer == "master" => steps.push(Step::Connect { peer: node }),
            "close" if peer == "master" => steps.push(Step::Close { peer: node }),
            "packet" if s("dir") == "send" => {
                if peer == "master" {
                    steps.push(Step::Send {
                        peer: node,
                        frame: hex(&s("hex")),
                    });
                } else if node == "master" {
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

/// A peer that sends given frames and records the master's.
struct Replayer {
    conn: Option<ConnId>,
    got: Vec<Packet>,
    closed: bool,
}

impl Node for Replayer {
    fn start(&mut self, _now: Instant, out: &mut Outbox) {
        self.conn = Some(out.connect(master_addr(), 0));
    }

    fn handle(&mut self, _now: Instant, event: Event, _out: &mut Outbox) {
        match event {
            Event::Packet { packet, .. } => self.got.push(packet),
            Event::Closed { .. } | Event::ConnectFailed { .. } => self.closed = true,
            _ => {}
        }
    }
}

/// Recorded tid (8-byte bin) -> ours.
type TidMap = HashMap<Vec<u8>, Vec<u8>>;

fn rewrite(frame: &[u8], map: &TidMap) -> Vec<u8> {
    let mut out = frame.to_vec();
    let mut i = 0;
    while i + 10 <= out.len() {
        if out[i] == 0xc4 && out[i + 1] == 8 {
            if let Some(ours) = map.get(&out[i + 2..i + 10]) {
                out[i + 2..i + 10].copy_from_slice(ours);
            }
            i += 10;
        } else {
            i += 1;
        }
    }
    out
}

fn as_value(frame: &[u8]) -> Value {
    codec::from_bytes::<Value>(&Bytes::copy_from_slice(frame)).expect("frame")
}

/// Sorts NotifyNodeInformation's node list after the first entry.
fn normalize(v: &mut Value) {
    let Value::Array(frame) = v else { return };
    if !matches!(frame.get(1), Some(Value::UInt(6))) {
        return;
    }
    if let Some(Value::Array(args)) = frame.get_mut(2) {
        if let Some(Value::Array(list)) = args.get_mut(1) {
            if list.len() > 2 {
                let key = |n: &Value| match n {
                    Value::Array(t) => format!("{:?}", t.get(2)),
                    _ => String::new(),
                };
                list[1..].sort_by_key(key);
            }
        }
    }
}

/// Compares the real master's value with ours; learns tids.
fn same(recorded: &Value, ours: &Value, map: &mut TidMap, path: &str) -> Result<(), String> {
    match (recorded, ours) {
        (Value::Float(_), Value::Float(_)) => Ok(()),
        (Value::Bin(a), Value::Bin(b)) if a.len() == 8 && b.len() == 8 => {
            if a == b
                || map
                    .get(a.as_ref())
                    .is_some_and(|m| m.as_slice() == b.as_ref())
            {
                return Ok(());
            }
            if map.contains_key(a.as_ref()) || map.values().any(|v| v.as_slice() == b.as_ref()) {
                return Err(format!("{path}: tid {a:02x?} is not {b:02x?}"));
            }
            map.insert(a.to_vec(), b.to_vec());
            Ok(())
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                return Err(format!("{path}: {} items, ours {}", a.len(), b.len()));
            }
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                same(x, y, map, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (Value::Map(a), Value::Map(b)) => {
            if a.len() != b.len() {
                return Err(format!("{path}: {} entries, ours {}", a.len(), b.len()));
            }
            for (i, ((k1, v1), (k2, v2))) in a.iter().zip(b).enumerate() {
                same(k1, k2, map, &format!("{path}{{{i}}}"))?;
                same(v1, v2, map, &format!("{path}{{{i}}}"))?;
            }
            Ok(())
        }
        _ if recorded == ours => Ok(()),
        _ => Err(format!("{path}: {recorded:?}, ours {ours:?}")),
    }
}

#[test]
fn replay_01_02_03_against_our_master() {
    let mut steps = load("01-bootstrap.jsonl");
    steps.extend(load("02-client-zodb.jsonl"));
    steps.extend(load("03-shutdown.jsonl"));

    let mut sim = Sim::new();
    let cfg = MasterConfig {
        cluster: "test".into(),
        address: neo_proto::Address::new("127.0.0.1", 31000),
        partitions: 4,
        replicas: 0,
        autostart: None,
        nid: None,
    };
    sim.add(
        Some(master_addr()),
        Master::with_clock(cfg, fake_clock()).expect("config"),
    );
    let mut peers: HashMap<String, usize> = HashMap::new();
    let mut expected: HashMap<String, Vec<(Vec<u8>, u64)>> = HashMap::new();
    let mut checked: HashMap<String, usize> = HashMap::new();
    let mut map = TidMap::new();
    let mut compared = 0;

    for step in steps {
        match step {
            Step::Connect { peer } => {
                let i = sim.add(
                    None,
                    Replayer {
                        conn: None,
                        got: Vec::new(),
                        closed: false,
                    },
                );
                peers.insert(peer, i);
            }
            Step::Send { peer, frame } => {
                let i = peers[&peer];
                let packet =
                    Packet::decode(&Bytes::from(rewrite(&frame, &map))).expect("recorded frame");
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
        // Compare what both sides have so far.
        for (peer, &i) in &peers {
            let got = &sim.node::<Replayer>(i).got;
            let exp = expected.get(peer).map_or(&[][..], Vec::as_slice);
            let done = checked.entry(peer.clone()).or_insert(0);
            while *done < got.len().min(exp.len()) {
                let (frame, line) = &exp[*done];
                let ours = got[*done].encode().expect("encodable");
                let (mut a, mut b) = (as_value(frame), as_value(&ours));
                normalize(&mut a);
                normalize(&mut b);
                if let Err(e) = same(&a, &b, &mut map, "") {
                    panic!(
                        "to {peer}, recorded line {line}: {:?}\n  ours: {:?}\n  {e}",
                        Packet::decode(&Bytes::from(frame.clone())),
                        got[*done]
                    );
                }
                *done += 1;
                compared += 1;
            }
        }
    }
    for (peer, &i) in &peers {
        let got = sim.node::<Replayer>(i).got.len();
        let exp = expected.get(peer).map_or(0, Vec::len);
        assert_eq!(got, exp, "number of packets to {peer}");
    }
    // 03: the master closed the storage's and the admin's connections.
    assert!(sim.node::<Replayer>(peers["storage1"]).closed);
    assert!(sim.node::<Replayer>(peers["admin"]).closed);
    assert!(compared > 100, "only {compared} frames compared");
}
