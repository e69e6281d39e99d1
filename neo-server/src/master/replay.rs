//! Replays the recorded conversations 01-bootstrap, 02-client-zodb and
//! 03-shutdown (one run of the same cluster) against our master in
//! [`Sim`]: every frame the real storage, admin and clients sent to the
//! real master is sent again, byte for byte (ids included), in the
//! recorded order; every frame our master sends must match, in order and
//! per peer, the frame the real master sent: same id, same code, same
//! arguments, except floats (timestamps) and tids, which depend on time.
//! A recorded tid seen for the first time in the master's output is mapped
//! to ours, and the peers' later frames are rewritten with that mapping.
//! Lists of nodes in NotifyNodeInformation are compared as sets (NEO
//! iterates a Python set there).
//!
//! The fixtures are found at `<repo>/../shared/neo-protocol` or
//! `$NEO_PROTOCOL_FIXTURES`; without them the test fails.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use neo_proto::{codec, Bytes, Packet, Value};

use super::tests::master_addr;
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
    /// A new recording starts: ids of the master's own frames on existing
    /// connections may be offset (the time between recordings is unknown).
    File,
    /// The wall clock of the recording (seconds since the epoch) at the
    /// next step: our master's clock follows it, so that its tids compare
    /// with the recorded ones as the real master's did.
    Clock(f64),
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// Rewrites the ports of `127.0.0.1` addresses in a frame.
fn shift_ports(frame: Vec<u8>, ports: &[(u16, u16)]) -> Vec<u8> {
    const HOST: &[u8] = b"\xc4\x09127.0.0.1\xcd";
    let mut out = frame;
    let mut i = 0;
    while i + HOST.len() + 2 <= out.len() {
        if &out[i..i + HOST.len()] == HOST {
            let at = i + HOST.len();
            let port = u16::from_be_bytes([out[at], out[at + 1]]);
            if let Some((_, to)) = ports.iter().find(|(from, _)| *from == port) {
                out[at..at + 2].copy_from_slice(&to.to_be_bytes());
            }
            i = at + 2;
        } else {
            i += 1;
        }
    }
    out
}

/// A recording and how to adapt it: ports to change, 8-byte values
/// (tids) to change.
type Recording<'a> = (&'a str, &'a [(u16, u16)], &'a [(u64, u64)]);

fn load((name, ports, tids): Recording<'_>) -> Vec<Step> {
    let tids: TidMap = tids
        .iter()
        .map(|(a, b)| (a.to_be_bytes().to_vec(), b.to_be_bytes().to_vec()))
        .collect();
    let adapt = |frame: Vec<u8>| rewrite(&shift_ports(frame, ports), &tids);
    let path = conversations_dir().join(name);
    let text = std::fs::read_to_string(&path).expect("conversation");
    let mut steps = vec![Step::File];
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    // Absolute time of t = 0: from the first NotifyNodeInformation the
    // master sent (its first argument is its clock).
    let base = lines
        .iter()
        .find(|e| e["node"] == "master" && e["name"] == "NotifyNodeInformation")
        .and_then(|e| Some(e["args"][0].as_f64()? - e["t"].as_f64()?));
    for e in lines {
        if let (Some(base), Some(t)) = (base, e["t"].as_f64()) {
            if e["node"] != "master" {
                steps.push(Step::Clock(base + t));
            }
        }
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
                        frame: adapt(hex(&s("hex"))),
                    });
                } else if node == "master" {
                    steps.push(Step::Expect {
                        peer,
                        frame: adapt(hex(&s("hex"))),
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

/// Sorts NotifyNodeInformation's node list by node id (NEO iterates a set;
/// the Sim tests check that a new node's own entry comes first).
fn normalize(v: &mut Value) {
    let Value::Array(frame) = v else { return };
    if !matches!(frame.get(1), Some(Value::UInt(6))) {
        return;
    }
    if let Some(Value::Array(args)) = frame.get_mut(2) {
        if let Some(Value::Array(list)) = args.get_mut(1) {
            if list.len() > 1 {
                let key = |n: &Value| match n {
                    Value::Array(t) => format!("{:?}", t.get(2)),
                    _ => String::new(),
                };
                list.sort_by_key(key);
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

/// Replays `files` in order; returns how many master frames matched.
fn replay(files: &[Recording<'_>], port: u16) -> (Sim, HashMap<String, usize>, usize) {
    let _ = env_logger::builder().is_test(true).try_init();
    let steps: Vec<Step> = files.iter().flat_map(|r| load(*r)).collect();
    let mut sim = Sim::new();
    let cfg = MasterConfig {
        cluster: "test".into(),
        address: neo_proto::Address::new("127.0.0.1", port),
        partitions: 4,
        replicas: 0,
        autostart: None,
        nid: None,
    };
    let clock = Arc::new(Mutex::new(0.0f64));
    let reading = clock.clone();
    let master_clock: super::Clock = Box::new(move || *reading.lock().expect("clock"));
    sim.add(
        Some(master_addr()),
        Master::with_clock(cfg, master_clock).expect("config"),
    );
    let mut peers: HashMap<String, usize> = HashMap::new();
    let mut expected: HashMap<String, Vec<(Vec<u8>, u64)>> = HashMap::new();
    let mut checked: HashMap<String, usize> = HashMap::new();
    // Per peer: recorded id - our id of the master's own frames.
    let mut offsets: HashMap<String, i64> = HashMap::new();
    let mut map = TidMap::new();
    let mut compared = 0;

    for step in steps {
        match step {
            Step::File => offsets.clear(),
            Step::Clock(t) => {
                *clock.lock().expect("clock") = t;
                continue;
            }
            Step::Connect { peer } => {
                // A new connection under a name already used: the old one
                // must have got everything.
                if let Some(&old) = peers.get(&peer) {
                    let got = sim.node::<Replayer>(old).got.len();
                    let exp = expected.remove(&peer).map_or(0, |v| v.len());
                    assert_eq!(got, exp, "number of packets to the previous {peer}");
                    checked.remove(&peer);
                    offsets.remove(&peer);
                }
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
                let mut ours = got[*done].clone();
                if ours.code() & neo_proto::RESPONSE_MASK == 0 {
                    let recorded =
                        Packet::decode(&Bytes::from(frame.clone())).map_or(0, |p| i64::from(p.id));
                    let off = *offsets
                        .entry(peer.clone())
                        .or_insert(recorded - i64::from(ours.id));
                    ours.id = (i64::from(ours.id) + off) as u32;
                }
                let ours = ours.encode().expect("encodable");
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
    (sim, peers, compared)
}

#[test]
fn replay_01_02_03_against_our_master() {
    let (sim, peers, compared) = replay(
        &[
            ("01-bootstrap.jsonl", &[], &[]),
            ("02-client-zodb.jsonl", &[], &[]),
            ("03-shutdown.jsonl", &[], &[]),
        ],
        31000,
    );
    // 03: the master closed the storage's and the admin's connections.
    assert!(sim.node::<Replayer>(peers["storage1"]).closed);
    assert!(sim.node::<Replayer>(peers["admin"]).closed);
    assert_eq!(compared, 108);
}

#[test]
fn replay_01_then_04_to_07_against_our_master() {
    // That run used other ports: bootstrap with them. And it had a history
    // before 04 that was not recorded: its first transaction (07 line 587)
    // replaces the empty storage's first tid (MAX_TID) of the bootstrap.
    let shift: &[(u16, u16)] = &[(31000, 31010), (31100, 31110), (31200, 31210)];
    let first: &[(u64, u64)] = &[(0x7fff_ffff_ffff_ffff, 0x040d_3c4a_95dd_5855)];
    let (_sim, _peers, compared) = replay(
        &[
            ("01-bootstrap.jsonl", shift, first),
            ("04-deadlock-avoidance.jsonl", &[], &[]),
            ("05-storage-join-replication-check.jsonl", &[], &[]),
            ("06-storage-down-catch-up.jsonl", &[], &[]),
            ("07-pack-admin-truncate.jsonl", &[], &[]),
        ],
        31010,
    );
    assert_eq!(compared, 342);
}
