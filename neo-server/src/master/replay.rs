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
//! 08-two-masters is replayed both ways: our master as the elected one
//! (every frame master2 sent), and as the secondary (its identification
//! with master2 and the NotPrimaryMaster it sends to everybody else).
//!
//! The fixtures are found at `<repo>/../shared/neo-protocol` or
//! `$NEO_PROTOCOL_FIXTURES`; without them the test fails.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use neo_proto::{codec, Bytes, Packet, Value};

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
pub(super) enum Step {
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

pub(super) fn hex(s: &str) -> Vec<u8> {
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
pub(super) type Recording<'a> = (&'a str, &'a [(u16, u16)], &'a [(u64, u64)]);

/// The steps of a recording that concern the master named `master`.
pub(super) fn load((name, ports, tids): Recording<'_>, master: &str) -> Vec<Step> {
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
        .find(|e| e["node"] == master && e["name"] == "NotifyNodeInformation")
        .and_then(|e| Some(e["args"][0].as_f64()? - e["t"].as_f64()?));
    for e in lines {
        if let (Some(base), Some(t)) = (base, e["t"].as_f64()) {
            if e["node"] != master {
                steps.push(Step::Clock(base + t));
            }
        }
        let s = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
        let (node, peer, event) = (s("node"), s("peer"), s("event"));
        let i = e.get("i").and_then(|v| v.as_u64()).unwrap_or(0);
        match event.as_str() {
            "connect" if peer == master => steps.push(Step::Connect { peer: node }),
            "close" if peer == master => steps.push(Step::Close { peer: node }),
            "packet" if s("dir") == "send" => {
                if peer == master {
                    steps.push(Step::Send {
                        peer: node,
                        frame: adapt(hex(&s("hex"))),
                    });
                } else if node == master {
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

/// A peer that sends given frames and records the master's: it connects
/// to `to` if given, else it waits for the master to connect.
pub(super) struct Replayer {
    pub(super) to: Option<std::net::SocketAddr>,
    pub(super) conn: Option<ConnId>,
    pub(super) got: Vec<Packet>,
    pub(super) closed: bool,
}

impl Replayer {
    pub(super) fn new(to: Option<std::net::SocketAddr>) -> Replayer {
        Replayer {
            to,
            conn: None,
            got: Vec::new(),
            closed: false,
        }
    }
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
            Event::Closed { .. } | Event::ConnectFailed { .. } => self.closed = true,
            _ => {}
        }
    }
}

/// Recorded tid (8-byte bin) -> ours.
pub(super) type TidMap = HashMap<Vec<u8>, Vec<u8>>;

pub(super) fn rewrite(frame: &[u8], map: &TidMap) -> Vec<u8> {
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

pub(super) fn as_value(frame: &[u8]) -> Value {
    codec::from_bytes::<Value>(&Bytes::copy_from_slice(frame)).expect("frame")
}

/// Sorts NotifyNodeInformation's node list by node id (NEO iterates a set;
/// the Sim tests check that a new node's own entry comes first).
pub(super) fn normalize(v: &mut Value) {
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
pub(super) fn same(
    recorded: &Value,
    ours: &Value,
    map: &mut TidMap,
    path: &str,
) -> Result<(), String> {
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
    replay_as(files, "master", port, &[])
}

/// Replays `files` against our master playing the node named `name` of
/// the recordings, at `port`, with these other masters (`--masters`).
pub(super) fn replay_as(
    files: &[Recording<'_>],
    name: &str,
    port: u16,
    masters: &[u16],
) -> (Sim, HashMap<String, usize>, usize) {
    let _ = env_logger::builder().is_test(true).try_init();
    let steps: Vec<Step> = files.iter().flat_map(|r| load(*r, name)).collect();
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
    // Our master started before the first recorded event (its election
    // key is older than those of masters that start during the recording).
    if let Some(Step::Clock(t)) = steps.iter().find(|s| matches!(s, Step::Clock(_))) {
        *clock.lock().expect("clock") = *t - 0.5;
    }
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let others = masters
        .iter()
        .map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], *p)))
        .collect();
    sim.add(
        Some(addr),
        Master::with_clock(cfg, master_clock)
            .expect("config")
            .with_masters(others),
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
                let i = sim.add(None, Replayer::new(Some(addr)));
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

#[test]
fn replay_08_as_the_primary_master() {
    // Our master is master2 (31021), elected: master1 (31020) identifies
    // with it, then the admin, the storage and the client, sent to us by
    // master1, do what they did; STOPPING reaches master1 too.
    let (sim, peers, compared) = replay_as(
        &[("08-two-masters.jsonl", &[], &[])],
        "master2",
        31021,
        &[31020, 31021],
    );
    let m = sim.node::<Master>(0);
    assert!(m.is_primary());
    assert!(sim.node::<Replayer>(peers["master1"]).closed);
    assert!(sim.node::<Replayer>(peers["storage1"]).closed);
    // Every frame master2 sent in 08.
    assert_eq!(compared, 58);
}

/// The frame of line `i` of a conversation.
fn line_frames(name: &str) -> HashMap<u64, (String, String, String, Vec<u8>)> {
    let path = conversations_dir().join(name);
    let text = std::fs::read_to_string(&path).expect("conversation");
    let mut out = HashMap::new();
    for l in text.lines() {
        let e: serde_json::Value = serde_json::from_str(l).expect("json line");
        let s = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
        if s("event") == "packet" {
            let i = e["i"].as_u64().expect("line number");
            out.insert(i, (s("node"), s("peer"), s("dir"), hex(&s("hex"))));
        }
    }
    out
}

/// Compares our frame with the recorded one (floats free).
fn check_frame(recorded: &[u8], ours: &Packet, line: u64) {
    let ours = ours.encode().expect("encodable");
    let (mut a, mut b) = (as_value(recorded), as_value(&ours));
    normalize(&mut a);
    normalize(&mut b);
    let mut map = TidMap::new();
    if let Err(e) = same(&a, &b, &mut map, "") {
        panic!("recorded line {line}: {a:?}\n ours: {b:?}\n {e}");
    }
}

#[test]
fn replay_08_as_the_secondary_master() {
    // Our master is master1 (31020): it asks master2 (31021), elected
    // before it, to identify it, becomes secondary, sends the admin, the
    // storage and the client (twice) to master2, and exits on STOPPING.
    let _ = env_logger::builder().is_test(true).try_init();
    let lines = line_frames("08-two-masters.jsonl");
    let frame = |i: u64| lines.get(&i).map(|l| l.3.clone()).expect("recorded line");
    let mut sim = Sim::new();
    let primary = std::net::SocketAddr::from(([127, 0, 0, 1], 31021));
    let ours = std::net::SocketAddr::from(([127, 0, 0, 1], 31020));
    let m2 = sim.add(Some(primary), Replayer::new(None));
    let cfg = MasterConfig {
        cluster: "test".into(),
        address: neo_proto::Address::new("127.0.0.1", 31020),
        partitions: 4,
        replicas: 0,
        autostart: None,
        nid: None,
    };
    // master1's election key as recorded in its RequestIdentification.
    let clock: super::Clock = Box::new(|| 1_795_542_409.879_881);
    let m1 = sim.add(
        Some(ours),
        Master::with_clock(cfg, clock)
            .expect("config")
            .with_masters(vec![primary, ours]),
    );
    sim.run();
    let got = &sim.node::<Replayer>(m2).got;
    assert_eq!(got.len(), 1, "{got:?}");
    check_frame(&frame(7), &got[0], 7);
    // master2 accepts it (lines 14, 15).
    let send = |sim: &mut Sim, i: usize, line: u64| {
        let packet = Packet::decode(&Bytes::from(frame(line))).expect("recorded frame");
        sim.poke::<Replayer>(i, |r, out| {
            out.send_with_id(r.conn.expect("connected"), packet.id, packet.body)
        });
        sim.run();
    };
    send(&mut sim, m2, 14);
    send(&mut sim, m2, 15);
    let m = sim.node::<Master>(m1);
    assert!(!m.is_primary());
    assert_eq!(m.primary_address(), Some(primary));
    assert_eq!(m.uuid(), neo_proto::NodeId(-268_435_454));
    // Every node that identifies with us is sent to master2.
    for (ident, answer) in [(20, 26), (50, 55), (162, 167), (174, 180)] {
        let peer = sim.add(None, Replayer::new(Some(ours)));
        sim.run();
        send(&mut sim, peer, ident);
        let r = sim.node::<Replayer>(peer);
        assert_eq!(r.got.len(), 1, "line {answer}: {:?}", r.got);
        check_frame(&frame(answer), &r.got[0], answer);
        assert!(r.closed, "line {answer}: closed after NotPrimaryMaster");
    }
    // The cluster states master2 told master1, then STOPPING: it exits.
    for line in [99, 124] {
        send(&mut sim, m2, line);
        assert!(!sim.node::<Replayer>(m2).closed);
    }
    send(&mut sim, m2, 363);
    assert!(sim.node::<Replayer>(m2).closed, "master1 left on STOPPING");
}
