//! Checks the codec against everything recorded from the real NEO in
//! `shared/neo-protocol/`: every frame of `vectors.json` (synthetic,
//! observed, enums, handshake, stream) and every packet line of every
//! conversation. For each frame: the bytes decode to the recorded
//! arguments, the recorded arguments encode to the same bytes, the typed
//! packet decodes and re-encodes to the same bytes, and the arguments
//! match the layout grammar of `packets.json`.
//!
//! The fixtures are found at `<repo>/../shared/neo-protocol` (or
//! `$NEO_PROTOCOL_FIXTURES`); the tests fail if they are missing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use neo_proto::{
    codec, Bytes, CellState, ClusterState, ErrorCode, FrameDecoder, NodeState, NodeType, Packet,
    PacketKind, PacketType, Value, HANDSHAKE, PACKET_TYPES,
};
use serde_json::Value as Json;

fn fixtures_dir() -> PathBuf {
    let dir = match std::env::var_os("NEO_PROTOCOL_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/neo-protocol"),
    };
    assert!(
        dir.join("packets.json").is_file(),
        "NEO protocol fixtures missing: {} (shared/ must sit beside the repository)",
        dir.display()
    );
    dir
}

fn load(name: &str) -> Json {
    let path = fixtures_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|e| panic!("{s}: {e}")))
        .collect()
}

fn ext_type(enum_name: &str) -> i8 {
    match enum_name {
        "CellStates" => CellState::EXT_TYPE,
        "ClusterStates" => ClusterState::EXT_TYPE,
        "ErrorCodes" => ErrorCode::EXT_TYPE,
        "NodeStates" => NodeState::EXT_TYPE,
        "NodeTypes" => NodeType::EXT_TYPE,
        other => panic!("unknown enum {other}"),
    }
}

/// The JSON notation of README.md as a msgpack value tree.
fn to_value(j: &Json) -> Value {
    match j {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else if let Some(i) = n.as_i64() {
                Value::int(i)
            } else {
                Value::Float(n.as_f64().expect("number"))
            }
        }
        Json::String(s) => panic!("bare JSON string {s:?} is not in the notation"),
        Json::Array(a) => Value::Array(a.iter().map(to_value).collect()),
        Json::Object(o) => {
            if let Some(Json::String(h)) = o.get("bin") {
                Value::Bin(Bytes::from(unhex(h)))
            } else if let Some(Json::String(s)) = o.get("str") {
                Value::Str(s.clone())
            } else if let Some(Json::Array(m)) = o.get("map") {
                Value::Map(
                    m.iter()
                        .map(|kv| (to_value(&kv[0]), to_value(&kv[1])))
                        .collect(),
                )
            } else if let Some(Json::String(e)) = o.get("enum") {
                let v = o["value"].as_u64().expect("enum value");
                let item = o["item"].as_str().expect("enum item");
                check_enum_name(e, item, v);
                Value::Ext(
                    ext_type(e),
                    Bytes::from(vec![u8::try_from(v).expect("small")]),
                )
            } else {
                panic!("unknown JSON notation {o:?}")
            }
        }
    }
}

/// Our enums know the item by the same name and value.
fn check_enum_name(enum_name: &str, item: &str, value: u64) {
    let ours = match enum_name {
        "CellStates" => CellState::from_name(item).map(|x| x.value()),
        "ClusterStates" => ClusterState::from_name(item).map(|x| x.value()),
        "ErrorCodes" => ErrorCode::from_name(item).map(|x| x.value()),
        "NodeStates" => NodeState::from_name(item).map(|x| x.value()),
        "NodeTypes" => NodeType::from_name(item).map(|x| x.value()),
        _ => None,
    };
    assert_eq!(ours.map(u64::from), Some(value), "{enum_name}.{item}");
}

// ---- the layout grammar of packets.json ----

#[derive(Debug, Clone)]
enum Ty {
    Leaf(String),
    Opt(Box<Ty>),
    List(Box<Ty>),
    Tuple(Vec<Ty>),
    Map(Box<Ty>, Box<Ty>),
}

struct TyParser<'a> {
    s: &'a [u8],
    pos: usize,
    aliases: &'a BTreeMap<String, String>,
}

impl TyParser<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.pos) == Some(&b' ') {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: u8) {
        self.skip_ws();
        assert_eq!(
            self.s.get(self.pos),
            Some(&c),
            "layout {:?} at {}",
            std::str::from_utf8(self.s),
            self.pos
        );
        self.pos += 1;
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.pos).copied()
    }

    fn parse(&mut self) -> Ty {
        match self.peek() {
            Some(b'?') => {
                self.pos += 1;
                Ty::Opt(Box::new(self.parse()))
            }
            Some(b'[') => {
                self.pos += 1;
                let t = self.parse();
                self.eat(b']');
                Ty::List(Box::new(t))
            }
            Some(b'(') => {
                self.pos += 1;
                let mut ts = vec![self.parse()];
                while self.peek() == Some(b',') {
                    self.pos += 1;
                    ts.push(self.parse());
                }
                self.eat(b')');
                Ty::Tuple(ts)
            }
            Some(b'{') => {
                self.pos += 1;
                let k = self.parse();
                self.eat(b':');
                let v = self.parse();
                self.eat(b'}');
                Ty::Map(Box::new(k), Box::new(v))
            }
            _ => {
                let start = self.pos;
                while self
                    .s
                    .get(self.pos)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                {
                    self.pos += 1;
                }
                let name = std::str::from_utf8(&self.s[start..self.pos]).expect("ascii");
                assert!(
                    !name.is_empty(),
                    "empty type in {:?}",
                    std::str::from_utf8(self.s)
                );
                match self.aliases.get(name) {
                    Some(def) => parse_ty(def, self.aliases),
                    None => Ty::Leaf(name.to_owned()),
                }
            }
        }
    }
}

fn parse_ty(s: &str, aliases: &BTreeMap<String, String>) -> Ty {
    let mut p = TyParser {
        s: s.as_bytes(),
        pos: 0,
        aliases,
    };
    let t = p.parse();
    p.skip_ws();
    assert_eq!(p.pos, s.len(), "trailing text in layout {s:?}");
    t
}

fn matches(ty: &Ty, v: &Value) -> bool {
    match ty {
        Ty::Opt(t) => *v == Value::Nil || matches(t, v),
        Ty::List(t) => matches!(v, Value::Array(a) if a.iter().all(|x| matches(t, x))),
        Ty::Tuple(ts) => {
            matches!(v, Value::Array(a) if a.len() == ts.len() && ts.iter().zip(a).all(|(t, x)| matches(t, x)))
        }
        Ty::Map(k, t) => {
            matches!(v, Value::Map(m) if m.iter().all(|(a, b)| matches(k, a) && matches(t, b)))
        }
        Ty::Leaf(name) => match (name.as_str(), v) {
            ("any", _) => true,
            ("nil", Value::Nil) => true,
            ("bool", Value::Bool(_)) => true,
            ("float", Value::Float(_)) => true,
            ("int" | "uuid" | "ptid" | "offset", Value::UInt(_) | Value::Int(_)) => true,
            ("bin", Value::Bin(_)) => true,
            ("str", Value::Str(_)) => true,
            ("tid" | "ttid" | "oid", Value::Bin(b)) => b.len() == 8,
            ("hash", Value::Bin(b)) => b.len() == 20,
            (e, Value::Ext(t, _))
                if e.ends_with("States") || e.ends_with("Types") || e == "ErrorCodes" =>
            {
                *t == ext_type(e)
            }
            _ => false,
        },
    }
}

/// name -> (code, layout of each argument)
struct Layouts {
    by_name: BTreeMap<String, (u16, Vec<Ty>)>,
}

fn layouts() -> Layouts {
    let p = load("packets.json");
    let aliases: BTreeMap<String, String> = p["types"]["aliases"]
        .as_object()
        .expect("aliases")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("alias").to_owned()))
        .collect();
    let mut by_name = BTreeMap::new();
    for pk in p["packets"].as_array().expect("packets") {
        let name = pk["name"].as_str().expect("name").to_owned();
        let code = u16::try_from(pk["code"].as_u64().expect("code")).expect("u16");
        let args = pk["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| parse_ty(a["type"].as_str().expect("type"), &aliases))
            .collect();
        by_name.insert(name, (code, args));
    }
    Layouts { by_name }
}

/// Every check on one recorded frame. Returns the decoded packet.
fn check_frame(
    layouts: &Layouts,
    what: &str,
    name: &str,
    id: u64,
    code: u64,
    args: &Json,
    hex: &str,
) -> Packet {
    let bytes = Bytes::from(unhex(hex));
    // 1. The bytes, read as a value tree, are the recorded [id, code, args].
    let tree: Value = codec::from_bytes(&bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
    let want = Value::Array(vec![Value::UInt(id), Value::UInt(code), to_value(args)]);
    assert_eq!(tree, want, "{what}: decoded value differs");
    // 2. The recorded arguments encode to the very same bytes.
    assert_eq!(
        codec::to_vec(&want),
        &bytes[..],
        "{what}: encoding of args differs"
    );
    // 3. The typed packet decodes, has the right type, and re-encodes exactly.
    let packet = Packet::decode(&bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(packet.body.name(), name, "{what}");
    assert_eq!(u64::from(packet.code()), code, "{what}");
    assert_eq!(u64::from(packet.id), id, "{what}");
    let again = packet.encode().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(again, &bytes[..], "{what}: typed re-encoding differs");
    // 4. The arguments follow packets.json's layout.
    let (lcode, tys) = layouts
        .by_name
        .get(name)
        .unwrap_or_else(|| panic!("{what}: no layout for {name}"));
    assert_eq!(u64::from(*lcode), code, "{what}");
    let Value::Array(items) = to_value(args) else {
        panic!("{what}: args not an array")
    };
    assert_eq!(items.len(), tys.len(), "{what}: arity");
    for (i, (t, v)) in tys.iter().zip(&items).enumerate() {
        assert!(
            matches(t, v),
            "{what}: argument {i} {v:?} does not match {t:?}"
        );
    }
    packet
}

fn check_vector_list(layouts: &Layouts, list: &Json, section: &str) -> usize {
    let list = list.as_array().expect("list");
    for (i, e) in list.iter().enumerate() {
        let what = format!("vectors.json {section}[{i}] {}", e["name"]);
        check_frame(
            layouts,
            &what,
            e["name"].as_str().expect("name"),
            e["id"].as_u64().expect("id"),
            e["code"].as_u64().expect("code"),
            &e["args"],
            e["hex"].as_str().expect("hex"),
        );
    }
    list.len()
}

#[test]
fn table_matches_packets_json() {
    let p = load("packets.json");
    let list = p["packets"].as_array().expect("packets");
    assert_eq!(list.len(), PACKET_TYPES.len());
    for pk in list {
        let name = pk["name"].as_str().expect("name");
        let t = PacketType::from_name(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(
            u64::from(t.code),
            pk["code"].as_u64().expect("code"),
            "{name}"
        );
        assert_eq!(
            t.arity,
            pk["args"].as_array().expect("args").len(),
            "{name}"
        );
        let kind = match pk["type"].as_str().expect("type") {
            "request" => PacketKind::Request,
            "answer" => PacketKind::Answer,
            "notification" => PacketKind::Notification,
            "error" => PacketKind::Error,
            k => panic!("{name}: kind {k}"),
        };
        assert_eq!(t.kind, kind, "{name}");
        if let Some(a) = pk.get("answer") {
            assert_eq!(
                t.answer_code().map(u64::from),
                a["code"].as_u64(),
                "{name} answer"
            );
        }
    }
    let c = &p["constants"];
    assert_eq!(c["PROTOCOL_VERSION"], neo_proto::PROTOCOL_VERSION);
    assert_eq!(
        c["UNPACK_BUFFER_SIZE"],
        neo_proto::UNPACK_BUFFER_SIZE as u64
    );
    assert_eq!(c["INVALID_PARTITION"], neo_proto::INVALID_PARTITION);
    for (key, tid) in [
        ("ZERO_TID", neo_proto::ZERO_TID),
        ("MAX_TID", neo_proto::MAX_TID),
        ("INVALID_TID", neo_proto::INVALID_TID),
    ] {
        assert_eq!(c[key].as_str(), Some(tid.to_string().as_str()), "{key}");
    }
    assert_eq!(
        c["ZERO_HASH"].as_str(),
        Some(neo_proto::ZERO_HASH.to_string().as_str())
    );
    for (name, ns) in c["UUID_NAMESPACES"].as_object().expect("namespaces") {
        let t = NodeType::from_name(name).expect("node type");
        assert_eq!(
            i64::from(t.uuid_namespace()),
            ns.as_i64().expect("int"),
            "{name}"
        );
    }
    assert_eq!(
        unhex(p["handshake"]["hex"].as_str().expect("hex")),
        HANDSHAKE
    );
}

#[test]
fn all_vectors() {
    let layouts = layouts();
    let v = load("vectors.json");
    let synthetic = check_vector_list(&layouts, &v["synthetic"], "synthetic");
    let observed = check_vector_list(&layouts, &v["observed"], "observed");
    assert_eq!((synthetic, observed), (176, 250));
    // Every packet type has at least one synthetic vector.
    let names: std::collections::BTreeSet<&str> = v["synthetic"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names.len(), PACKET_TYPES.len());

    // Enums: every item's ext bytes.
    let mut items = 0;
    for e in v["enums"].as_array().expect("enums") {
        let name = e["name"].as_str().expect("name");
        assert_eq!(e["ext_type"].as_i64(), Some(i64::from(ext_type(name))));
        for item in e["items"].as_array().expect("items") {
            let item_name = item["name"].as_str().expect("item");
            let hex = unhex(item["hex"].as_str().expect("hex"));
            let ours = match name {
                "CellStates" => CellState::from_name(item_name).map(|x| codec::to_vec(&x)),
                "ClusterStates" => ClusterState::from_name(item_name).map(|x| codec::to_vec(&x)),
                "ErrorCodes" => ErrorCode::from_name(item_name).map(|x| codec::to_vec(&x)),
                "NodeStates" => NodeState::from_name(item_name).map(|x| codec::to_vec(&x)),
                "NodeTypes" => NodeType::from_name(item_name).map(|x| codec::to_vec(&x)),
                _ => None,
            };
            assert_eq!(ours, Some(hex), "{name}.{item_name}");
            items += 1;
        }
    }
    assert_eq!(items, 5 + 7 + 14 + 4 + 4);

    // Handshake.
    assert_eq!(
        unhex(v["handshake"]["hex"].as_str().expect("hex")),
        HANDSHAKE
    );
    let hv = to_value(&serde_json::json!([{"str": "NEO"}, 5]));
    assert_eq!(codec::to_vec(&hv), HANDSHAKE);

    // Stream: handshake + 3 frames, fed cut at every pair of places.
    let stream = unhex(v["stream"]["hex"].as_str().expect("hex"));
    let frames: Vec<Vec<u8>> = v["stream"]["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .map(|f| unhex(f.as_str().expect("hex")))
        .collect();
    for a in 0..=stream.len() {
        for b in a..=stream.len() {
            let mut d = FrameDecoder::new();
            let mut got = Vec::new();
            for piece in [&stream[..a], &stream[a..b], &stream[b..]] {
                d.feed(piece);
                while let Some(f) = d.next_frame().expect("stream") {
                    got.push(f.to_vec());
                }
            }
            assert_eq!(got, frames, "cut at {a}, {b}");
            assert_eq!(d.buffered(), 0);
        }
    }
}

/// What one node sent on one connection: the whole stream and its frames.
type SentStream = (Vec<u8>, Vec<Vec<u8>>);

#[test]
fn all_conversations() {
    let layouts = layouts();
    let dir = fixtures_dir().join("conversations");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 8, "conversation files");
    let mut packets = 0;
    let mut seen = std::collections::BTreeSet::new();
    for path in &files {
        let fname = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(path).expect("read");
        // (conn, sending node) -> the bytes it sent, in order, to replay
        // through the stream decoder.
        let mut streams: BTreeMap<(u64, String), SentStream> = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let e: Json =
                serde_json::from_str(line).unwrap_or_else(|err| panic!("{fname}:{n}: {err}"));
            let what = format!("{fname}:{n}");
            match e["event"].as_str() {
                Some("packet") => {
                    let name = e["name"].as_str().expect("name");
                    let hex = e["hex"].as_str().expect("hex");
                    check_frame(
                        &layouts,
                        &what,
                        name,
                        e["id"].as_u64().expect("id"),
                        e["code"].as_u64().expect("code"),
                        &e["args"],
                        hex,
                    );
                    seen.insert(name.to_owned());
                    packets += 1;
                    if e["dir"] == "send" {
                        let key = (
                            e["conn"].as_u64().expect("conn"),
                            e["node"].as_str().expect("node").to_owned(),
                        );
                        let s = streams
                            .entry(key)
                            .or_insert_with(|| (HANDSHAKE.to_vec(), Vec::new()));
                        s.0.extend(unhex(hex));
                        s.1.push(unhex(hex));
                    }
                }
                Some("handshake") => {
                    assert_eq!(unhex(e["hex"].as_str().expect("hex")), HANDSHAKE, "{what}");
                }
                _ => {}
            }
        }
        // Each sender's stream, fed in uneven pieces, splits back into its frames.
        for ((conn, node), (stream, frames)) in &streams {
            for chunk in [1usize, 7, 4096] {
                let mut d = FrameDecoder::new();
                let mut got = Vec::new();
                for piece in stream.chunks(chunk) {
                    d.feed(piece);
                    while let Some(p) = d
                        .next_packet()
                        .unwrap_or_else(|e| panic!("{fname} conn {conn} {node}: {e}"))
                    {
                        got.push(p.encode().expect("size"));
                    }
                }
                assert_eq!(&got, frames, "{fname} conn {conn} {node} chunk {chunk}");
            }
        }
    }
    eprintln!(
        "checked {packets} conversation frames, {} packet types",
        seen.len()
    );
    assert!(packets > 2800, "only {packets} packet lines");
    // README: 11 types never occur in the conversations.
    assert_eq!(seen.len(), PACKET_TYPES.len() - 11);
}
