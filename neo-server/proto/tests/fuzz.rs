//! Property tests of the decoders on hostile input: random bytes, and real
//! NEO frames (from `shared/neo-protocol/vectors.json`) mutated at random.
//! Nothing may panic or allocate by a declared length; whatever decodes
//! must re-encode to something that decodes to the same packet. Case
//! counts are bounded so the whole file runs in a few seconds.

use std::path::PathBuf;
use std::sync::OnceLock;

use neo_proto::{codec, Bytes, FrameDecoder, FrameError, Packet, Value, HANDSHAKE};
use proptest::prelude::*;

fn seed_frames() -> &'static [Vec<u8>] {
    static FRAMES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FRAMES.get_or_init(|| {
        let dir = match std::env::var_os("NEO_PROTOCOL_FIXTURES") {
            Some(d) => PathBuf::from(d),
            None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/neo-protocol"),
        };
        let path = dir.join("vectors.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("NEO protocol fixtures missing: {}: {e}", path.display()));
        let v: serde_json::Value = serde_json::from_str(&text).expect("vectors.json");
        v["synthetic"]
            .as_array()
            .expect("synthetic")
            .iter()
            .map(|e| {
                let h = e["hex"].as_str().expect("hex");
                (0..h.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex"))
                    .collect()
            })
            .collect()
    })
}

/// Decoding either fails cleanly or gives a packet that round-trips.
fn check_packet_bytes(bytes: &[u8]) {
    let frame = Bytes::copy_from_slice(bytes);
    if let Ok(p) = Packet::decode(&frame) {
        let again = p.encode().expect("a decoded frame is small");
        let q = Packet::decode(&Bytes::from(again)).expect("re-encoded packet decodes");
        assert_eq!(p, q);
    }
    if let Ok(v) = codec::from_bytes::<Value>(&frame) {
        let again = codec::to_vec(&v);
        assert_eq!(codec::from_bytes::<Value>(&Bytes::from(again)), Ok(v));
    }
}

/// Feeds `stream` in pieces of the given sizes; returns the packets, the
/// error that stopped it if any, and the bytes accounted for (frames
/// returned + bytes still buffered, handshake excluded).
fn feed(stream: &[u8], cuts: &[usize]) -> (Vec<Packet>, Option<FrameError>, usize) {
    let mut d = FrameDecoder::with_limit(1 << 16);
    let mut packets = Vec::new();
    let mut framed = 0;
    let mut rest = stream;
    let mut cuts = cuts.iter().cycle();
    while !rest.is_empty() {
        let n = (*cuts.next().unwrap_or(&1)).clamp(1, rest.len());
        d.feed(&rest[..n]);
        rest = &rest[n..];
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    framed += f.len();
                    match Packet::decode(&f) {
                        Ok(p) => packets.push(p),
                        Err(e) => {
                            let error = FrameError::Packet {
                                offset: 0,
                                error: e,
                            };
                            return (packets, Some(error), framed + d.buffered());
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => return (packets, Some(e), framed + d.buffered()),
            }
        }
    }
    (packets, None, framed + d.buffered())
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
        // Length fields set to huge values are the interesting case.
        any::<usize>().prop_map(|i| Mutation::Set(i, 0xff)),
        any::<usize>().prop_map(|i| Mutation::Set(i, 0xdd)),
        any::<usize>().prop_map(|i| Mutation::Set(i, 0xc6)),
    ]
}

fn mutate(mut v: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let len = v.len().max(1);
        match *m {
            Mutation::Set(i, b) if !v.is_empty() => v[i % len] = b,
            Mutation::Insert(i, b) => v.insert(i % (v.len() + 1), b),
            Mutation::Remove(i) if !v.is_empty() => {
                v.remove(i % len);
            }
            Mutation::Truncate(i) => v.truncate(i % len),
            _ => {}
        }
    }
    v
}

fn value_tree() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(Value::UInt),
        (i64::MIN..0).prop_map(Value::Int),
        any::<f64>()
            .prop_filter("NaN is not equal to itself", |f| !f.is_nan())
            .prop_map(Value::Float),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| Value::Bin(Bytes::from(b))),
        ".{0,20}".prop_map(Value::Str),
        (any::<i8>(), proptest::collection::vec(any::<u8>(), 0..20))
            .prop_map(|(t, d)| Value::Ext(t, Bytes::from(d))),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::vec((inner.clone(), inner), 0..6).prop_map(Value::Map),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300),
                                cuts in proptest::collection::vec(1usize..40, 1..5)) {
        check_packet_bytes(&bytes);
        let mut stream = HANDSHAKE.to_vec();
        stream.extend_from_slice(&bytes);
        let (_, err, seen) = feed(&stream, &cuts);
        if err.is_none() {
            prop_assert_eq!(seen, bytes.len());
        }
        let (_, err, _) = feed(&bytes, &cuts);
        // Without the handshake in front, random bytes are refused or wait.
        if let Some(e) = err {
            prop_assert!(matches!(e, FrameError::Handshake(_)), "{e}");
        }
    }

    #[test]
    fn mutated_frames_never_panic(pick in any::<prop::sample::Index>(),
                                  muts in proptest::collection::vec(mutation(), 1..4),
                                  cuts in proptest::collection::vec(1usize..64, 1..5)) {
        let seeds = seed_frames();
        let frame = mutate(seeds[pick.index(seeds.len())].clone(), &muts);
        check_packet_bytes(&frame);
        let mut stream = HANDSHAKE.to_vec();
        stream.extend_from_slice(&frame);
        stream.extend_from_slice(&seeds[0]);
        let (packets, err, seen) = feed(&stream, &cuts);
        // Frames found by the stream decoder are the packets of the bytes.
        for p in &packets {
            let again = p.encode().expect("small");
            let decoded = Packet::decode(&Bytes::from(again));
            prop_assert_eq!(decoded.as_ref(), Ok(p));
        }
        if err.is_none() {
            // No byte lost or invented: frames + what waits = the input.
            prop_assert_eq!(seen, stream.len() - HANDSHAKE.len());
        }
    }

    #[test]
    fn value_trees_round_trip(v in value_tree()) {
        let bytes = Bytes::from(codec::to_vec(&v));
        prop_assert_eq!(codec::from_bytes::<Value>(&bytes), Ok(v));
        let mut d = FrameDecoder::after_handshake();
        d.feed(&bytes);
        prop_assert_eq!(d.next_frame().map(|f| f.map(|f| f.len())), Ok(Some(bytes.len())));
    }
}

#[test]
fn every_seed_frame_survives_every_single_byte_truncation() {
    for f in seed_frames() {
        for n in 0..f.len() {
            check_packet_bytes(&f[..n]);
            let mut d = FrameDecoder::after_handshake();
            d.feed(&f[..n]);
            assert!(matches!(d.next_frame(), Ok(None)), "{f:02x?} cut at {n}");
        }
    }
}

#[test]
fn declared_giant_array_does_not_allocate_up_front() {
    // AnswerNewOIDs claiming 4 billion oids but holding one: a clean error.
    let frame = Bytes::from_static(&[
        0x93, 0x00, 0xcd, 0x80, 0x19, 0x91, 0xdd, 0xff, 0xff, 0xff, 0xff, 0xc4, 8, 0, 0, 0, 0, 0,
        0, 0, 1,
    ]);
    assert!(Packet::decode(&frame).is_err());
    assert!(codec::from_bytes::<Value>(&frame).is_err());
}
