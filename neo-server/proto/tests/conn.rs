//! The tokio connection layer on 127.0.0.1: bytes on the wire, ids and
//! answer matching, timeouts, orderly and abrupt closes, back-pressure,
//! handshake refusals, and TLS (certificates made at test time).

use std::net::SocketAddr;
use std::time::Duration;

use neo_proto::{
    AcceptIdentification, AddObject, AskLastTransaction, AskNewOIDs, Body, Bytes, CloseReason,
    ConnConfig, ConnError, Connection, Event, Events, HandshakeError, Map, NodeId, NodeType,
    Packet, Ping, Pong, RequestIdentification, Tid, TlsConfig, HANDSHAKE, ZERO_HASH,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(10);

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    (l, a)
}

fn identification() -> RequestIdentification {
    RequestIdentification {
        node_type: NodeType::Client,
        uuid: None,
        address: None,
        name: Bytes::from_static(b"test"),
        id_timestamp: None,
        extra: Map::new(),
    }
}

async fn next_event(ev: &mut Events) -> Event {
    tokio::time::timeout(T, ev.recv())
        .await
        .expect("event in time")
        .expect("an event")
}

async fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut b = vec![0; n];
    tokio::time::timeout(T, s.read_exact(&mut b))
        .await
        .expect("in time")
        .expect("read");
    b
}

/// A raw peer that accepted our connection and exchanged handshakes.
async fn raw_peer(l: &TcpListener) -> TcpStream {
    let (mut s, _) = l.accept().await.expect("accept");
    s.write_all(&HANDSHAKE).await.expect("write");
    assert_eq!(read_exact(&mut s, 6).await, HANDSHAKE);
    s
}

#[tokio::test]
async fn bytes_on_the_wire_match_neo() {
    // vectors.json "stream": a client's handshake, RequestIdentification
    // (id 0), AskLastTransaction (id 1), Ping (id 2).
    let want = "92a34e454f0593000196d40402c0c0c40474657374c08093013c9093020290";
    let want: Vec<u8> = (0..want.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&want[i..i + 2], 16).expect("hex"))
        .collect();
    let (l, addr) = listener().await;
    let peer = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.expect("accept");
        s.write_all(&HANDSHAKE).await.expect("write");
        let got = read_exact(&mut s, want.len()).await;
        assert_eq!(got, want);
        // Answer the three, out of order, as [id, code, args] frames.
        for frame in [
            Packet::new(2, Pong {}),
            Packet::new(
                0,
                AcceptIdentification {
                    node_type: NodeType::Master,
                    uuid: Some(NodeId(-268_435_455)),
                    your_uuid: Some(NodeId(-536_870_911)),
                },
            ),
            Packet::new(1, neo_proto::AnswerLastTransaction { tid: Tid(0x03f1) }),
        ] {
            s.write_all(&frame.encode().expect("small"))
                .await
                .expect("write");
        }
        s
    });
    let (conn, _ev) = Connection::connect(addr, None, ConnConfig::default())
        .await
        .expect("connect");
    let (a, b, c) = tokio::join!(
        conn.ask(identification()),
        async {
            tokio::task::yield_now().await;
            conn.ask(AskLastTransaction {}).await
        },
        async {
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            conn.ask(Ping {}).await
        },
    );
    // ids are allocated in call order; the join polls a, then b, then c.
    let Body::AcceptIdentification(a) = a.expect("answer") else {
        panic!("not AcceptIdentification")
    };
    assert_eq!(a.your_uuid.map(|u| u.to_string()), Some("C1".into()));
    assert!(matches!(b.expect("answer"), Body::AnswerLastTransaction(x) if x.tid == Tid(0x03f1)));
    assert!(matches!(c.expect("answer"), Body::Pong(_)));
    assert_eq!(conn.pending_requests(), 0);
    let _ = peer.await.expect("peer");
}

#[tokio::test]
async fn requests_and_notifications_reach_the_other_side() {
    let (l, addr) = listener().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.expect("accept");
        let (conn, mut ev) = Connection::accept(tcp, None, ConnConfig::default())
            .await
            .expect("accept");
        let mut seen = Vec::new();
        loop {
            match next_event(&mut ev).await {
                Event::Packet(p) => {
                    seen.push((p.id, p.body.name()));
                    if let Body::AskNewOIDs(a) = &p.body {
                        let oids = (1..=u64::from(a.num_oids)).map(neo_proto::Oid).collect();
                        conn.answer(p.id, neo_proto::AnswerNewOIDs { oid_list: oids })
                            .await
                            .expect("answer");
                    }
                }
                Event::Closed(r) => return (seen, r),
                _ => panic!("unknown event"),
            }
        }
    });
    let (conn, _ev) = Connection::connect(addr, None, ConnConfig::default())
        .await
        .expect("connect");
    assert_eq!(
        conn.notify(neo_proto::NotifyReady {})
            .await
            .expect("notify"),
        0
    );
    let Body::AnswerNewOIDs(a) = conn.ask(AskNewOIDs { num_oids: 3 }).await.expect("ask") else {
        panic!("wrong answer")
    };
    assert_eq!(a.oid_list.len(), 3);
    conn.close().await;
    assert!(matches!(
        conn.close_reason(),
        Some(CloseReason::LocalClosed)
    ));
    let (seen, reason) = server.await.expect("server");
    assert_eq!(seen, [(0, "NotifyReady"), (1, "AskNewOIDs")]);
    assert!(matches!(reason, CloseReason::PeerClosed), "{reason:?}");
}

#[tokio::test]
async fn answers_of_the_wrong_type_are_refused_errors_accepted() {
    let (l, addr) = listener().await;
    let (conn_ev, mut peer) = tokio::join!(
        async {
            Connection::connect(addr, None, ConnConfig::default())
                .await
                .expect("connect")
        },
        async { raw_peer(&l).await }
    );
    let (conn, _ev) = conn_ev;
    let peer_task = tokio::spawn(async move {
        let _ = read_exact(&mut peer, 4 + 5).await; // Ping id 0, AskNewOIDs id 1
        let wrong = Packet::new(0, neo_proto::AnswerNewOIDs { oid_list: vec![] });
        let error = Packet::new(
            1,
            neo_proto::Error::new(neo_proto::ErrorCode::NotReady, "later"),
        );
        for p in [wrong, error] {
            peer.write_all(&p.encode().expect("small"))
                .await
                .expect("write");
        }
        peer
    });
    let (a, b) = tokio::join!(conn.ask(Ping {}), async {
        tokio::task::yield_now().await;
        conn.ask(AskNewOIDs { num_oids: 5 }).await
    });
    let a = a.expect_err("wrong answer type");
    assert!(
        matches!(
            a,
            ConnError::UnexpectedAnswer {
                id: 0,
                expected: 0x8002,
                got: 0x8019,
                ..
            }
        ),
        "{a}"
    );
    assert!(
        matches!(b.expect("error answer"), Body::Error(e) if e.code == neo_proto::ErrorCode::NotReady)
    );
    let _ = peer_task.await;
}

#[tokio::test]
async fn unanswered_requests_time_out() {
    let (l, addr) = listener().await;
    let ((conn, _ev), _peer) = tokio::join!(
        async {
            Connection::connect(addr, None, ConnConfig::default())
                .await
                .expect("connect")
        },
        async { raw_peer(&l).await }
    );
    let e = conn
        .ask_timeout(Ping {}, Duration::from_millis(100))
        .await
        .expect_err("no answer");
    assert!(
        matches!(e, ConnError::Timeout { id: 0, code: 2, .. }),
        "{e}"
    );
    assert_eq!(conn.pending_requests(), 0);
    assert!(!conn.is_closed());
}

#[tokio::test]
async fn peer_close_is_orderly_at_a_frame_boundary_and_fails_waiters() {
    let (l, addr) = listener().await;
    let (conn_ev, mut peer) = tokio::join!(
        async {
            Connection::connect(addr, None, ConnConfig::default())
                .await
                .expect("connect")
        },
        async { raw_peer(&l).await }
    );
    let (conn, mut ev) = conn_ev;
    // A notification, then an answer to nothing, then a clean close.
    for p in [
        Packet::new(0, neo_proto::NotifyReady {}),
        Packet::new(9, Pong {}),
    ] {
        peer.write_all(&p.encode().expect("small"))
            .await
            .expect("write");
    }
    let waiting = {
        let conn = conn.clone();
        tokio::spawn(async move { conn.ask(Ping {}).await })
    };
    assert!(
        matches!(next_event(&mut ev).await, Event::Packet(p) if p.body.name() == "NotifyReady")
    );
    assert!(matches!(next_event(&mut ev).await, Event::Packet(p) if p.id == 9));
    let _ = read_exact(&mut peer, 4).await; // the Ping: 93 00 02 90
    drop(peer);
    assert!(matches!(
        next_event(&mut ev).await,
        Event::Closed(CloseReason::PeerClosed)
    ));
    let e = waiting.await.expect("task").expect_err("closed");
    assert!(matches!(e, ConnError::Closed { .. }), "{e}");
    assert!(matches!(
        conn.notify(Ping {}).await,
        Err(ConnError::Closed { .. })
    ));
    let end = tokio::time::timeout(T, ev.recv())
        .await
        .expect("stream ends");
    assert!(end.is_none());
}

#[tokio::test]
async fn cut_or_malformed_frames_are_abrupt() {
    for (bytes, what) in [
        (&[0x93, 0x00, 0x02][..], "truncated"),
        (&[0x93, 0x00, 0xc1, 0x90][..], "reserved byte"),
        (&[0x93, 0x00, 0xcd, 0x12, 0x34, 0x90][..], "unknown code"),
    ] {
        let (l, addr) = listener().await;
        let (conn_ev, mut peer) = tokio::join!(
            async {
                Connection::connect(addr, None, ConnConfig::default())
                    .await
                    .expect("connect")
            },
            async { raw_peer(&l).await }
        );
        let (_conn, mut ev) = conn_ev;
        peer.write_all(bytes).await.expect("write");
        drop(peer);
        match next_event(&mut ev).await {
            Event::Closed(CloseReason::Abrupt(e)) => match what {
                "truncated" => assert!(
                    matches!(e, ConnError::TruncatedFrame { buffered: 3, .. }),
                    "{e}"
                ),
                _ => assert!(matches!(e, ConnError::Protocol { .. }), "{what}: {e}"),
            },
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn handshake_refusals_are_distinct() {
    for (sent, what) in [
        (&[0x92, 0xa3, b'N', b'E', b'O', 0x04][..], "version"),
        (&b"HTTP/1.1 400\r\n"[..], "not neo"),
        (&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28][..], "tls"),
    ] {
        let (l, addr) = listener().await;
        let peer = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            s.write_all(sent).await.expect("write");
            let _ = read_exact(&mut s, 6).await;
            s
        });
        let e = Connection::connect(addr, None, ConnConfig::default())
            .await
            .expect_err("refused");
        match what {
            "version" => assert!(
                matches!(
                    e,
                    ConnError::Handshake {
                        error: HandshakeError::VersionMismatch {
                            ours: 5,
                            theirs: Some(4)
                        },
                        ..
                    }
                ),
                "{e}"
            ),
            "not neo" => assert!(
                matches!(
                    e,
                    ConnError::Handshake {
                        error: HandshakeError::NotNeo { .. },
                        ..
                    }
                ),
                "{e}"
            ),
            _ => assert!(
                matches!(
                    e,
                    ConnError::Handshake {
                        error: HandshakeError::PeerUsesTls,
                        ..
                    }
                ),
                "{e}"
            ),
        }
        let _ = peer.await;
    }
}

#[tokio::test]
async fn full_send_queue_makes_senders_wait() {
    let (l, addr) = listener().await;
    let config = ConnConfig {
        send_queue: 1,
        ..ConnConfig::default()
    };
    let (conn_ev, mut peer) = tokio::join!(
        async {
            Connection::connect(addr, None, config)
                .await
                .expect("connect")
        },
        async { raw_peer(&l).await }
    );
    let (conn, _ev) = conn_ev;
    let big = AddObject {
        oid: neo_proto::Oid(1),
        serial: Tid(1),
        compression: 0,
        checksum: ZERO_HASH,
        data: Bytes::from(vec![0u8; 1 << 20]),
        data_serial: None,
    };
    // The peer does not read: socket buffers fill, then the queue, then
    // notify waits.
    let mut sent = 0usize;
    let blocked = loop {
        match tokio::time::timeout(Duration::from_millis(300), conn.notify(big.clone())).await {
            Ok(r) => {
                r.expect("notify");
                sent += 1;
                assert!(sent < 200, "never blocked");
            }
            Err(_) => break true,
        }
    };
    assert!(blocked);
    // Once the peer reads, everything flows again.
    let reader = tokio::spawn(async move {
        let mut total = 0usize;
        let mut buf = vec![0; 1 << 16];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_secs(2), peer.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    tokio::time::timeout(T, conn.notify(big.clone()))
        .await
        .expect("unblocked")
        .expect("notify");
    conn.close().await;
    let total = reader.await.expect("reader");
    assert!(total > (sent + 1) << 20, "{total} bytes for {sent} frames");
}

#[tokio::test]
async fn requests_answered_through_events_keep_wire_order() {
    let (l, addr) = listener().await;
    let (conn_ev, mut peer) = tokio::join!(
        async {
            Connection::connect(addr, None, ConnConfig::default())
                .await
                .expect("connect")
        },
        async { raw_peer(&l).await }
    );
    let (conn, mut ev) = conn_ev;
    let ask = neo_proto::AskFetchObjects {
        partition: 0,
        length: 1000,
        min_tid: Tid(0),
        max_tid: Tid(10),
        min_oid: neo_proto::Oid(0),
        object_dict: Map::new(),
    };
    let id = conn.request(ask.clone()).await.expect("request");
    let frame = read_exact(
        &mut peer,
        Packet::new(id, ask).encode().expect("small").len(),
    )
    .await;
    assert_eq!(Packet::decode(&Bytes::from(frame)).expect("packet").id, id);
    let add = AddObject {
        oid: neo_proto::Oid(3),
        serial: Tid(5),
        compression: 0,
        checksum: ZERO_HASH,
        data: Bytes::new(),
        data_serial: None,
    };
    let answer = neo_proto::AnswerFetchObjects {
        next_tid: None,
        next_oid: None,
        object_dict: Map::new(),
    };
    for p in [
        Packet::new(id, add.clone()),
        Packet::new(id, add),
        Packet::new(id, answer),
    ] {
        peer.write_all(&p.encode().expect("small"))
            .await
            .expect("write");
    }
    let mut names = Vec::new();
    for _ in 0..3 {
        match next_event(&mut ev).await {
            Event::Packet(p) => {
                assert_eq!(p.id, id);
                names.push(p.body.name());
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(names, ["AddObject", "AddObject", "AnswerFetchObjects"]);
    assert_eq!(conn.pending_requests(), 0);
}

/// Answers Ping, counts notifications, records how it ended.
#[derive(Default)]
struct PingHandler {
    notifications: usize,
    closed: Option<CloseReason>,
}

impl neo_proto::Handler for PingHandler {
    async fn packet(&mut self, conn: &Connection, packet: Packet) {
        match packet.body {
            Body::Ping(_) => conn.answer(packet.id, Pong {}).await.expect("answer"),
            _ => self.notifications += 1,
        }
    }

    async fn closed(&mut self, _conn: &Connection, reason: CloseReason) {
        self.closed = Some(reason);
    }
}

#[tokio::test]
async fn a_handler_serves_a_connection() {
    let (l, addr) = listener().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.expect("accept");
        let (conn, ev) = Connection::accept(tcp, None, ConnConfig::default())
            .await
            .expect("accept");
        let mut h = PingHandler::default();
        tokio::time::timeout(T, conn.serve(ev, &mut h))
            .await
            .expect("served until closed");
        h
    });
    let (conn, _ev) = Connection::connect(addr, None, ConnConfig::default())
        .await
        .expect("connect");
    conn.notify(neo_proto::NotifyReady {})
        .await
        .expect("notify");
    for _ in 0..3 {
        assert!(matches!(
            conn.ask(Ping {}).await.expect("pong"),
            Body::Pong(_)
        ));
    }
    conn.notify(neo_proto::FlushLog {}).await.expect("notify");
    conn.close().await;
    let h = server.await.expect("server");
    assert_eq!(h.notifications, 2);
    assert!(
        matches!(h.closed, Some(CloseReason::PeerClosed)),
        "{:?}",
        h.closed
    );
}

/// Many requests in flight on one connection (those asked while others
/// wait go out together, written by the writer task): every one is
/// answered, in both runtimes' flavours.
#[test]
fn many_requests_in_flight_are_all_answered() {
    for multi in [false, true] {
        let rt = if multi {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        }
        .unwrap();
        rt.block_on(async {
            let (l, addr) = listener().await;
            let server = tokio::spawn(async move {
                let (tcp, _) = l.accept().await.expect("accept");
                let (conn, ev) = Connection::accept(tcp, None, ConnConfig::default())
                    .await
                    .expect("accept");
                let mut h = PingHandler::default();
                conn.serve(ev, &mut h).await;
            });
            let (conn, _ev) = Connection::connect(addr, None, ConnConfig::default())
                .await
                .expect("connect");
            let asks: Vec<_> = (0..500)
                .map(|_| {
                    let c = conn.clone();
                    tokio::spawn(async move { c.ask(Ping {}).await })
                })
                .collect();
            for a in asks {
                let r = tokio::time::timeout(T, a).await.expect("answered in time");
                assert!(matches!(r.expect("task"), Ok(Body::Pong(_))));
            }
            assert_eq!(conn.pending_requests(), 0);
            conn.close().await;
            server.await.expect("server");
        });
    }
}

#[tokio::test]
async fn abort_is_abrupt_on_both_sides() {
    let (l, addr) = listener().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.expect("accept");
        let (_conn, mut ev) = Connection::accept(tcp, None, ConnConfig::default())
            .await
            .expect("accept");
        next_event(&mut ev).await
    });
    let (conn, mut ev) = Connection::connect(addr, None, ConnConfig::default())
        .await
        .expect("connect");
    conn.abort().await;
    assert!(matches!(
        next_event(&mut ev).await,
        Event::Closed(CloseReason::Abrupt(_))
    ));
    assert!(conn.is_closed());
    // The peer sees the socket go away; with nothing pending that is a
    // clean EOF at a frame boundary.
    assert!(matches!(server.await.expect("server"), Event::Closed(_)));
}

// ---- TLS ----

struct Pki {
    ca: String,
    nodes: Vec<(String, String)>,
}

fn make_pki(n: usize) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let nodes = (0..n)
        .map(|i| {
            let key = KeyPair::generate().expect("key");
            let params = CertificateParams::new(vec![format!("node{i}.neo")]).expect("params");
            let cert = params.signed_by(&key, &ca, &ca_key).expect("cert");
            (cert.pem(), key.serialize_pem())
        })
        .collect();
    Pki {
        ca: ca.pem(),
        nodes,
    }
}

fn tls(pki: &Pki, i: usize) -> TlsConfig {
    let (cert, key) = &pki.nodes[i];
    TlsConfig::from_pem(pki.ca.as_bytes(), cert.as_bytes(), key.as_bytes()).expect("tls config")
}

async fn accept_one(
    l: TcpListener,
    tls: Option<TlsConfig>,
) -> Result<(Connection, Events), ConnError> {
    let (tcp, _) = l.accept().await.expect("accept");
    Connection::accept(tcp, tls.as_ref(), ConnConfig::default()).await
}

#[tokio::test]
async fn tls_both_ways() {
    let pki = make_pki(2);
    let (l, addr) = listener().await;
    let server_tls = tls(&pki, 0);
    let server = tokio::spawn(async move {
        let (conn, mut ev) = accept_one(l, Some(server_tls)).await.expect("tls accept");
        match next_event(&mut ev).await {
            Event::Packet(p) => conn.answer(p.id, Pong {}).await.expect("answer"),
            other => panic!("{other:?}"),
        }
        next_event(&mut ev).await
    });
    let (conn, _ev) = Connection::connect(addr, Some(&tls(&pki, 1)), ConnConfig::default())
        .await
        .expect("tls connect");
    assert!(matches!(
        conn.ask(Ping {}).await.expect("pong"),
        Body::Pong(_)
    ));
    conn.close().await;
    assert!(matches!(
        server.await.expect("server"),
        Event::Closed(CloseReason::PeerClosed)
    ));
}

#[tokio::test]
async fn tls_client_to_plain_server_says_why() {
    let pki = make_pki(1);
    let (l, addr) = listener().await;
    let server = tokio::spawn(accept_one(l, None));
    let e = Connection::connect(addr, Some(&tls(&pki, 0)), ConnConfig::default())
        .await
        .expect_err("refused");
    assert!(matches!(e, ConnError::PeerNotTls { .. }), "{e}");
    assert!(e.to_string().contains("does not use TLS"), "{e}");
    let s = server.await.expect("server").expect_err("refused");
    assert!(
        matches!(
            s,
            ConnError::Handshake {
                error: HandshakeError::PeerUsesTls,
                ..
            }
        ),
        "{s}"
    );
    assert!(s.to_string().contains("TLS is not enabled here"), "{s}");
}

#[tokio::test]
async fn plain_client_to_tls_server_says_why() {
    let pki = make_pki(1);
    let (l, addr) = listener().await;
    let server = tokio::spawn(accept_one(l, Some(tls(&pki, 0))));
    let c = Connection::connect(addr, None, ConnConfig::default()).await;
    let s = server.await.expect("server").expect_err("refused");
    assert!(matches!(s, ConnError::PeerNotTls { .. }), "{s}");
    let c = c.expect_err("refused");
    assert!(
        matches!(
            c,
            ConnError::Handshake {
                error: HandshakeError::PeerUsesTls,
                ..
            } | ConnError::ClosedDuringHandshake { .. }
        ),
        "{c}"
    );
}

#[tokio::test]
async fn tls_with_a_foreign_ca_is_refused() {
    let ours = make_pki(1);
    let theirs = make_pki(1);
    let (l, addr) = listener().await;
    let server = tokio::spawn(accept_one(l, Some(tls(&ours, 0))));
    let c = Connection::connect(addr, Some(&tls(&theirs, 0)), ConnConfig::default()).await;
    let c = c.expect_err("refused");
    assert!(matches!(c, ConnError::Tls { .. }), "{c}");
    let s = server.await.expect("server").expect_err("refused");
    assert!(
        matches!(s, ConnError::Tls { .. } | ConnError::Io { .. }),
        "{s}"
    );
}

#[tokio::test]
async fn tls_config_from_files() {
    let pki = make_pki(2);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut paths = Vec::new();
    for (i, (cert, key)) in pki.nodes.iter().enumerate() {
        let c = dir.path().join(format!("node{i}.crt"));
        let k = dir.path().join(format!("node{i}.key"));
        std::fs::write(&c, cert).expect("write");
        std::fs::write(&k, key).expect("write");
        paths.push((c, k));
    }
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, &pki.ca).expect("write");
    let load = |i: usize| TlsConfig::from_pem_files(&ca, &paths[i].0, &paths[i].1).expect("load");
    let (l, addr) = listener().await;
    let server = tokio::spawn(accept_one(l, Some(load(0))));
    let (conn, _ev) = Connection::connect(addr, Some(&load(1)), ConnConfig::default())
        .await
        .expect("tls connect");
    let (server_conn, _sev) = server.await.expect("server").expect("tls accept");
    server_conn
        .notify(neo_proto::NotifyReady {})
        .await
        .expect("notify");
    conn.close().await;
    let missing = TlsConfig::from_pem_files(&dir.path().join("nope"), &paths[0].0, &paths[0].1)
        .expect_err("missing file");
    assert!(missing.to_string().contains("nope"), "{missing}");
}

#[test]
fn tls_config_errors_name_the_input() {
    let pki = make_pki(1);
    let (cert, key) = &pki.nodes[0];
    let e = TlsConfig::from_pem(b"", cert.as_bytes(), key.as_bytes()).expect_err("no ca");
    assert!(e.to_string().contains("ca"), "{e}");
    let e = TlsConfig::from_pem(pki.ca.as_bytes(), b"", key.as_bytes()).expect_err("no cert");
    assert!(e.to_string().contains("cert"), "{e}");
    let e = TlsConfig::from_pem(pki.ca.as_bytes(), cert.as_bytes(), b"").expect_err("no key");
    assert!(e.to_string().contains("key"), "{e}");
}
