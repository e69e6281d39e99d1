//! A NEO connection over tokio: handshake, request ids, answers matched to
//! requests, everything else handed to the node as [`Event`]s, timeouts,
//! orderly and abrupt close, and a bounded send queue.
//!
//! ```text
//!   Connection::ask ──► pending[id] ──► encoded frame ─┬─► socket (writer idle: written at once)
//!                          ▲                           └─► send buffer ──► writer task ──► socket
//!   answers / Errors ──────┘◄── reader task ◄── FrameDecoder ◄──────────────────────────────┘
//!   requests, notifications, unmatched answers, Closed ──► Events (bounded)
//! ```
//!
//! Writing: a frame sent while nothing waits to be written goes to the
//! socket at once, from the sender's thread (no task hand-off: the latency
//! of a request/answer round trip); whatever the socket does not take at
//! once is buffered, in order, for the writer task, which owns the socket
//! until its buffer is empty again. [`Connection::send_now`] does this
//! from any thread without waiting (a node's OS thread).
//!
//! Ids: one counter per connection, from 0, for the requests and
//! notifications we send; [`Connection::answer`] reuses the request's id.
//! Like NEO, requests wait for their answer as long as the connection
//! lives unless a timeout is asked for; TCP keepalive (60 s idle, 3 probes
//! 10 s apart, NEO's values) detects dead peers.
//! An answer (or `Error`) whose id has a waiting [`Connection::ask`] goes
//! to it; any other packet goes to [`Events`] (or to a [`Handler`] through
//! [`Connection::serve`]). Both queues are bounded:
//! a slow peer makes `ask`/`notify` wait (back-pressure), and a node that
//! does not drain its events stops the reading of that connection.
//!
//! Closing: [`Connection::close`] sends what is queued, then shuts the
//! socket down ([`CloseReason::LocalClosed`]); the peer closing at a frame
//! boundary is [`CloseReason::PeerClosed`]; anything else (reset, a frame
//! cut by EOF, a malformed frame, which NEO also answers by closing) is
//! [`CloseReason::Abrupt`]. Exactly one [`Event::Closed`] is delivered and
//! all waiting requests fail. The tasks keep the connection alive until it
//! is closed, even if every handle is dropped.
//!
//! TLS ([`crate::tls`]) wraps the socket before NEO's handshake, as NEO.

use std::collections::HashMap;
use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use log::{debug, warn};
use rustls::pki_types::ServerName;
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::frame::{FrameDecoder, FrameError, HandshakeError, HANDSHAKE};
use crate::packets::{Body, FrameTooLarge, Packet, PacketKind, PacketType};
use crate::tls::{Sniff, TlsConfig};
use crate::types::RESPONSE_MASK;

/// Tunables of a connection.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    /// Frames that may wait to be written before [`Connection::send`]
    /// waits ([`Connection::send_now`] never waits).
    pub send_queue: usize,
    /// Events that may wait for the node before reading stops.
    pub event_queue: usize,
    /// How long [`Connection::ask`] waits for an answer; `None` (the
    /// default) waits as long as the connection lives, as NEO does: it has
    /// no request timeouts (a slow node is still a live node; `WaitForPack`
    /// or a big replication chunk can take minutes) and relies on TCP
    /// keepalive to detect dead peers.
    pub request_timeout: Option<Duration>,
    /// How long TLS + NEO's handshake may take.
    pub handshake_timeout: Duration,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            send_queue: 256,
            event_queue: 256,
            request_timeout: None,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// What can go wrong on a connection; every variant names the peer.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnError {
    /// A socket error.
    Io {
        /// Peer address.
        peer: String,
        /// The error.
        error: Arc<io::Error>,
    },
    /// The peer's NEO handshake was refused.
    Handshake {
        /// Peer address.
        peer: String,
        /// Why.
        error: HandshakeError,
    },
    /// The peer closed before its 6 handshake bytes.
    ClosedDuringHandshake {
        /// Peer address.
        peer: String,
        /// What it sent.
        received: Vec<u8>,
    },
    /// TLS + handshake took longer than [`ConnConfig::handshake_timeout`].
    HandshakeTimeout {
        /// Peer address.
        peer: String,
    },
    /// We use TLS and the peer speaks plain NEO.
    PeerNotTls {
        /// Peer address.
        peer: String,
    },
    /// TLS failed (certificate refused, ...).
    Tls {
        /// Peer address.
        peer: String,
        /// rustls's reason.
        message: String,
    },
    /// The peer sent something that is no NEO frame or packet.
    Protocol {
        /// Peer address.
        peer: String,
        /// Why.
        error: FrameError,
    },
    /// The peer closed in the middle of a frame.
    TruncatedFrame {
        /// Peer address.
        peer: String,
        /// Bytes of the unfinished frame.
        buffered: usize,
    },
    /// No answer within the timeout.
    Timeout {
        /// Peer address.
        peer: String,
        /// Request id.
        id: u32,
        /// Request code.
        code: u16,
    },
    /// The answer to a request is of another type than the request's.
    UnexpectedAnswer {
        /// Peer address.
        peer: String,
        /// Request id.
        id: u32,
        /// Answer code the request wants.
        expected: u16,
        /// Answer code received.
        got: u16,
    },
    /// A packet too big to send.
    TooLarge {
        /// Peer address.
        peer: String,
        /// Size.
        error: FrameTooLarge,
    },
    /// The connection was closed (orderly) before this could be done.
    Closed {
        /// Peer address.
        peer: String,
    },
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Io { peer, error } => write!(f, "{peer}: {error}"),
            ConnError::Handshake { peer, error } => write!(f, "{peer}: {error}"),
            ConnError::ClosedDuringHandshake { peer, received } => write!(
                f,
                "{peer}: closed during the handshake after {received:02x?} (TLS expected by the peer?)"
            ),
            ConnError::HandshakeTimeout { peer } => write!(f, "{peer}: handshake timed out"),
            ConnError::PeerNotTls { peer } => write!(
                f,
                "{peer}: peer does not use TLS but TLS is enabled here (peer sent NEO's plain handshake)"
            ),
            ConnError::Tls { peer, message } => write!(f, "{peer}: TLS: {message}"),
            ConnError::Protocol { peer, error } => write!(f, "{peer}: {error}"),
            ConnError::TruncatedFrame { peer, buffered } => {
                write!(f, "{peer}: closed inside a frame ({buffered} bytes pending)")
            }
            ConnError::Timeout { peer, id, code } => {
                write!(f, "{peer}: no answer to request {id} (0x{code:04x})")
            }
            ConnError::UnexpectedAnswer {
                peer,
                id,
                expected,
                got,
            } => write!(
                f,
                "{peer}: request {id} wants answer 0x{expected:04x}, got 0x{got:04x}"
            ),
            ConnError::TooLarge { peer, error } => write!(f, "{peer}: {error}"),
            ConnError::Closed { peer } => write!(f, "{peer}: connection closed"),
        }
    }
}

impl std::error::Error for ConnError {}

/// Why a connection ended.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed at a frame boundary.
    PeerClosed,
    /// We closed it with [`Connection::close`].
    LocalClosed,
    /// Anything else: error, reset, malformed input, [`Connection::abort`].
    Abrupt(ConnError),
}

impl CloseReason {
    /// Whether both sides ended cleanly.
    pub fn is_orderly(&self) -> bool {
        !matches!(self, CloseReason::Abrupt(_))
    }
}

/// What the peer sends that is not an answer we wait for.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A request (answer it with [`Connection::answer`] and its id), a
    /// notification, or an answer nobody waits for.
    Packet(Packet),
    /// The connection ended; the last event.
    Closed(CloseReason),
}

/// The stream of [`Event`]s of one connection.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` after [`Event::Closed`] was received.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is already there.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

/// A node's logic for one connection, driven by [`Connection::serve`]:
/// what to do with each packet the peer sends (requests, notifications,
/// answers nobody waits for), and with the end of the connection.
pub trait Handler: Send {
    /// Handles one packet; a request is answered with
    /// `conn.answer(packet.id, ...)`. Packets are handled one at a time, in
    /// order (spawn a task for long work).
    fn packet(&mut self, conn: &Connection, packet: Packet) -> impl Future<Output = ()> + Send;

    /// The connection ended; called once, after every packet.
    fn closed(&mut self, conn: &Connection, reason: CloseReason)
        -> impl Future<Output = ()> + Send;
}

type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// The sending side, shared by the senders and the writer task.
struct Out {
    /// The socket's write half; `None` once the writer task ended.
    io: Option<Writer>,
    /// Bytes of frames the socket has not taken yet, from `pos`.
    buf: Vec<u8>,
    pos: usize,
    /// Frames in `buf` (for back-pressure).
    frames: usize,
    /// The socket must be flushed (TLS records buffered by a direct write).
    flush: bool,
    /// Close asked: write `buf`, then shut the socket down.
    close: bool,
    /// The writer task, while it is idle (nothing to write): a sender may
    /// then write to the socket itself.
    idle: Option<Waker>,
}

impl Out {
    fn pending(&self) -> bool {
        self.pos < self.buf.len() || self.flush || self.close
    }

    /// Queues `frame`, writing what the socket takes at once if the writer
    /// task is idle (and `direct`); wakes the writer task when something is
    /// left. Not `direct`, the frame waits for the writer task, which
    /// writes what accumulated meanwhile in one call.
    fn push(&mut self, frame: &[u8], direct: bool) {
        let mut written = 0;
        let idle = if direct { self.idle.as_ref() } else { None };
        if let (false, Some(waker), Some(io)) = (self.pending(), idle, self.io.as_mut()) {
            // The writer's waker: if the socket is full, the writer task is
            // the one woken when it drains.
            let mut cx = Context::from_waker(waker);
            while written < frame.len() {
                match io.as_mut().poll_write(&mut cx, &frame[written..]) {
                    Poll::Ready(Ok(n)) if n > 0 => written += n,
                    // Pending, an error or a 0-byte write: the writer task
                    // retries and reports errors.
                    _ => break,
                }
            }
            if written == frame.len() {
                match io.as_mut().poll_flush(&mut cx) {
                    Poll::Ready(Ok(())) => return,
                    _ => self.flush = true,
                }
            }
            self.buf.clear();
            self.pos = 0;
        }
        if written < frame.len() {
            self.buf.extend_from_slice(&frame[written..]);
            self.frames += 1;
        }
        if let Some(w) = self.idle.take() {
            w.wake();
        }
    }
}

type Waiter = oneshot::Sender<Result<Body, ConnError>>;

struct State {
    closed: Option<CloseReason>,
    pending: HashMap<u32, (u16, Waiter)>,
}

struct Inner {
    peer: String,
    next_id: AtomicU32,
    state: Mutex<State>,
    out: Mutex<Out>,
    /// Signalled when the writer task empties its buffer.
    space: Notify,
    stop: watch::Sender<bool>,
    config: ConnConfig,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind: go on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn out(&self) -> MutexGuard<'_, Out> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn closed_now(&self) -> ConnError {
        ConnError::Closed {
            peer: self.peer.clone(),
        }
    }

    fn closed_error(&self, reason: &CloseReason) -> ConnError {
        match reason {
            CloseReason::Abrupt(e) => e.clone(),
            _ => ConnError::Closed {
                peer: self.peer.clone(),
            },
        }
    }

    /// Ends the connection once: fails the waiting requests and stops
    /// both tasks (the reader then delivers the Closed event, last).
    fn finish(&self, reason: CloseReason) {
        let pending = {
            let mut st = self.state();
            if st.closed.is_some() {
                return;
            }
            st.closed = Some(reason.clone());
            std::mem::take(&mut st.pending)
        };
        let err = self.closed_error(&reason);
        for (_, (_, w)) in pending {
            let _ = w.send(Err(err.clone()));
        }
        match &reason {
            CloseReason::Abrupt(e) => warn!("connection {e}"),
            r => debug!("connection with {} closed: {r:?}", self.peer),
        }
        let _ = self.stop.send(true);
    }

    async fn dispatch(&self, events: &mpsc::Sender<Event>, p: Packet) {
        if matches!(p.body.kind(), PacketKind::Answer | PacketKind::Error) {
            let waiter = self.state().pending.remove(&p.id);
            if let Some((request, w)) = waiter {
                let got = p.code();
                let expected = PacketType::from_code(request)
                    .and_then(PacketType::answer_code)
                    .unwrap_or(RESPONSE_MASK);
                let answer = if got == expected || got == RESPONSE_MASK {
                    Ok(p.body)
                } else {
                    warn!(
                        "{}: answer 0x{got:04x} to request {} (0x{request:04x})",
                        self.peer, p.id
                    );
                    Err(ConnError::UnexpectedAnswer {
                        peer: self.peer.clone(),
                        id: p.id,
                        expected,
                        got,
                    })
                };
                let _ = w.send(answer);
                return;
            }
        }
        if events.send(Event::Packet(p)).await.is_err() {
            debug!("{}: events dropped, packet ignored", self.peer);
        }
    }

    fn io_error(&self, e: io::Error) -> ConnError {
        tls_or_io(&self.peer, e)
    }
}

fn tls_or_io(peer: &str, e: io::Error) -> ConnError {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(t) => ConnError::Tls {
            peer: peer.to_owned(),
            message: t.to_string(),
        },
        None => ConnError::Io {
            peer: peer.to_owned(),
            error: Arc::new(e),
        },
    }
}

/// One NEO connection (cheap to clone; all clones are the same
/// connection).
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Connection({})", self.inner.peer)
    }
}

impl Connection {
    /// Opens a TCP connection (TLS if `tls` is given), exchanges the
    /// handshake and starts the connection's tasks.
    pub async fn connect(
        addr: SocketAddr,
        tls: Option<&TlsConfig>,
        config: ConnConfig,
    ) -> Result<(Connection, Events), ConnError> {
        let peer = addr.to_string();
        let deadline = config.handshake_timeout;
        let setup = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| tls_or_io(&peer, e))?;
            tune_socket(&tcp);
            match tls {
                None => Self::start(tcp, peer.clone(), config).await,
                Some(tls) => {
                    let name = ServerName::IpAddress(addr.ip().into());
                    let connect = TlsConnector::from(tls.client.clone())
                        .connect(name, Sniff::new(tcp))
                        .into_fallible();
                    match connect.await {
                        Ok(s) => Self::start(s, peer.clone(), config).await,
                        Err((e, sniff)) => Err(tls_failure(&peer, e, &sniff.first)),
                    }
                }
            }
        };
        tokio::time::timeout(deadline, setup)
            .await
            .unwrap_or_else(|_| Err(ConnError::HandshakeTimeout { peer: peer.clone() }))
    }

    /// Takes an accepted TCP connection (TLS if `tls` is given), exchanges
    /// the handshake and starts the connection's tasks.
    pub async fn accept(
        tcp: TcpStream,
        tls: Option<&TlsConfig>,
        config: ConnConfig,
    ) -> Result<(Connection, Events), ConnError> {
        let peer = tcp
            .peer_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string());
        tune_socket(&tcp);
        let deadline = config.handshake_timeout;
        let setup = async {
            match tls {
                None => Self::start(tcp, peer.clone(), config).await,
                Some(tls) => {
                    let accept = TlsAcceptor::from(tls.server.clone())
                        .accept(Sniff::new(tcp))
                        .into_fallible();
                    match accept.await {
                        Ok(s) => Self::start(s, peer.clone(), config).await,
                        Err((e, sniff)) => Err(tls_failure(&peer, e, &sniff.first)),
                    }
                }
            }
        };
        tokio::time::timeout(deadline, setup)
            .await
            .unwrap_or_else(|_| Err(ConnError::HandshakeTimeout { peer: peer.clone() }))
    }

    /// Runs NEO's handshake on any byte stream, then starts the reader
    /// and writer tasks.
    pub async fn start<S>(
        stream: S,
        peer: String,
        config: ConnConfig,
    ) -> Result<(Connection, Events), ConnError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        // Both ends send at once, without waiting for the peer.
        let sent = async {
            wr.write_all(&HANDSHAKE).await?;
            wr.flush().await
        };
        sent.await.map_err(|e| tls_or_io(&peer, e))?;
        let mut dec = FrameDecoder::new();
        loop {
            match dec.poll_handshake() {
                Ok(true) => break,
                Ok(false) => {}
                Err(error) => return Err(ConnError::Handshake { peer, error }),
            }
            dec.buffer_mut().reserve(64);
            match rd.read_buf(dec.buffer_mut()).await {
                Ok(0) => {
                    return Err(ConnError::ClosedDuringHandshake {
                        received: dec.buffer_mut().to_vec(),
                        peer,
                    })
                }
                Ok(_) => {}
                Err(e) => return Err(tls_or_io(&peer, e)),
            }
        }
        debug!("{peer}: NEO handshake done");

        let (ev_tx, ev_rx) = mpsc::channel(config.event_queue.max(1));
        let (stop_tx, stop_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            peer,
            next_id: AtomicU32::new(0),
            state: Mutex::new(State {
                closed: None,
                pending: HashMap::new(),
            }),
            out: Mutex::new(Out {
                io: Some(Box::pin(wr)),
                buf: Vec::new(),
                pos: 0,
                frames: 0,
                flush: false,
                close: false,
                idle: None,
            }),
            space: Notify::new(),
            stop: stop_tx,
            config,
        });
        tokio::spawn(read_task(inner.clone(), rd, dec, ev_tx, stop_rx.clone()));
        tokio::spawn(write_task(inner.clone(), stop_rx));
        Ok((Connection { inner }, Events { rx: ev_rx }))
    }

    /// Feeds the connection's events to `handler` until it ends.
    pub async fn serve<H: Handler>(&self, mut events: Events, handler: &mut H) {
        while let Some(event) = events.recv().await {
            match event {
                Event::Packet(p) => handler.packet(self, p).await,
                Event::Closed(reason) => {
                    handler.closed(self, reason).await;
                    return;
                }
            }
        }
    }

    /// The peer's address.
    pub fn peer(&self) -> &str {
        &self.inner.peer
    }

    /// Why it ended, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.inner.state().closed.clone()
    }

    /// Whether it has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.state().closed.is_some()
    }

    /// Takes the next id of this connection (wrapping after 0xffffffff).
    pub fn next_id(&self) -> u32 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn check_open(&self) -> Result<(), ConnError> {
        match &self.inner.state().closed {
            Some(r) => Err(self.inner.closed_error(r)),
            None => Ok(()),
        }
    }

    fn encode(&self, packet: &Packet) -> Result<Vec<u8>, ConnError> {
        self.check_open()?;
        packet.encode().map_err(|error| ConnError::TooLarge {
            peer: self.inner.peer.clone(),
            error,
        })
    }

    /// Sends a packet with its own id (waits while
    /// [`ConnConfig::send_queue`] frames wait to be written).
    pub async fn send(&self, packet: &Packet) -> Result<(), ConnError> {
        self.send_as(packet, true).await
    }

    /// [`Connection::send`]; not `direct`, the frame is left to the writer
    /// task (see `Out::push`).
    async fn send_as(&self, packet: &Packet, direct: bool) -> Result<(), ConnError> {
        let bytes = self.encode(packet)?;
        let limit = self.inner.config.send_queue.max(1);
        loop {
            let space = self.inner.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            {
                let mut out = self.inner.out();
                if out.io.is_none() || out.close {
                    return Err(self.inner.closed_now());
                }
                if out.frames < limit {
                    out.push(&bytes, direct);
                    return Ok(());
                }
            }
            tokio::select! {
                _ = space => {}
                _ = self.closed() => return Err(self.inner.closed_now()),
            }
        }
    }

    /// Sends a packet with its own id without waiting, from any thread
    /// (in or out of the runtime): written to the socket at once if
    /// nothing else waits to be, else queued (without bound) for the
    /// writer task.
    pub fn send_now(&self, packet: &Packet) -> Result<(), ConnError> {
        let bytes = self.encode(packet)?;
        let mut out = self.inner.out();
        if out.io.is_none() || out.close {
            return Err(self.inner.closed_now());
        }
        out.push(&bytes, true);
        Ok(())
    }

    /// [`Connection::send_now`] of several packets in one write.
    pub fn send_now_all(&self, packets: &[Packet]) -> Result<(), ConnError> {
        self.check_open()?;
        let mut w = crate::codec::Writer::new();
        for p in packets {
            p.encode_after(&mut w)
                .map_err(|error| ConnError::TooLarge {
                    peer: self.inner.peer.clone(),
                    error,
                })?;
        }
        let bytes = w.into_vec();
        let mut out = self.inner.out();
        if out.io.is_none() || out.close {
            return Err(self.inner.closed_now());
        }
        out.push(&bytes, true);
        Ok(())
    }

    /// Orderly close without waiting: what is queued is sent, then the
    /// socket is shut down (see [`Connection::close`]).
    pub fn close_soon(&self) {
        let mut out = self.inner.out();
        out.close = true;
        if let Some(w) = out.idle.take() {
            w.wake();
        }
    }

    /// Waits until the connection has ended.
    pub async fn closed(&self) {
        let mut stop = self.inner.stop.subscribe();
        let _ = stop.wait_for(|s| *s).await;
    }

    /// Sends a notification with a new id; returns the id.
    pub async fn notify(&self, body: impl Into<Body>) -> Result<u32, ConnError> {
        let id = self.next_id();
        self.send(&Packet::new(id, body)).await?;
        Ok(id)
    }

    /// Answers the request `id` (an answer packet or an `Error`).
    pub async fn answer(&self, id: u32, body: impl Into<Body>) -> Result<(), ConnError> {
        self.send(&Packet::new(id, body)).await
    }

    /// Sends a request with a new id and returns the id, without waiting:
    /// its answer arrives as an [`Event::Packet`], in order with the other
    /// packets. Use this when that order matters: a storage serving
    /// `AskFetchTransactions` / `AskFetchObjects` sends `AddTransaction` /
    /// `AddObject` notifications with the request's id *before* the
    /// answer, whereas [`Connection::ask`] gets its answer directly,
    /// possibly before earlier events were handled.
    pub async fn request(&self, body: impl Into<Body>) -> Result<u32, ConnError> {
        let id = self.next_id();
        self.send(&Packet::new(id, body)).await?;
        Ok(id)
    }

    /// Sends a request and waits for its answer (or `Error`, returned as
    /// [`Body::Error`]), up to [`ConnConfig::request_timeout`] if set.
    pub async fn ask(&self, body: impl Into<Body>) -> Result<Body, ConnError> {
        self.ask_within(body, self.inner.config.request_timeout)
            .await
    }

    /// [`Connection::ask`] with this timeout.
    pub async fn ask_timeout(
        &self,
        body: impl Into<Body>,
        timeout: Duration,
    ) -> Result<Body, ConnError> {
        self.ask_within(body, Some(timeout)).await
    }

    async fn ask_within(
        &self,
        body: impl Into<Body>,
        timeout: Option<Duration>,
    ) -> Result<Body, ConnError> {
        let body = body.into();
        let code = body.code();
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        // With other requests in flight, this one goes out with them in
        // one write (the writer task's) rather than a write of its own.
        let direct = {
            let mut st = self.inner.state();
            if let Some(r) = &st.closed {
                return Err(self.inner.closed_error(r));
            }
            st.pending.insert(id, (code, tx));
            st.pending.len() <= 1
        };
        if let Err(e) = self.send_as(&Packet::new(id, body), direct).await {
            self.inner.state().pending.remove(&id);
            return Err(e);
        }
        let answer = match timeout {
            Some(t) => tokio::time::timeout(t, rx).await,
            None => Ok(rx.await),
        };
        match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(ConnError::Closed {
                peer: self.inner.peer.clone(),
            }),
            Err(_) => {
                self.inner.state().pending.remove(&id);
                Err(ConnError::Timeout {
                    peer: self.inner.peer.clone(),
                    id,
                    code,
                })
            }
        }
    }

    /// Requests sent and not answered yet.
    pub fn pending_requests(&self) -> usize {
        self.inner.state().pending.len()
    }

    /// Orderly close: what is queued is sent, then the socket is shut
    /// down. Returns once the connection has ended.
    pub async fn close(&self) {
        if self.inner.out().io.is_none() {
            return;
        }
        self.close_soon();
        self.closed().await;
    }

    /// Drops the connection at once, without sending what is queued.
    pub async fn abort(&self) {
        let peer = self.inner.peer.clone();
        let error = ConnError::Io {
            peer,
            error: Arc::new(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "aborted locally",
            )),
        };
        self.inner.finish(CloseReason::Abrupt(error));
    }
}

/// NEO's socket options: no Nagle delay, and TCP keepalive after 60 s
/// idle, 3 probes 10 s apart (`SocketConnector.KEEPALIVE`), which is how
/// NEO notices dead peers.
fn tune_socket(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    if let Err(e) = SockRef::from(tcp).set_tcp_keepalive(&keepalive) {
        debug!("cannot set TCP keepalive: {e}");
    }
}

fn tls_failure(peer: &str, e: io::Error, first: &[u8]) -> ConnError {
    if first.first() == Some(&HANDSHAKE[0]) {
        ConnError::PeerNotTls {
            peer: peer.to_owned(),
        }
    } else {
        tls_or_io(peer, e)
    }
}

async fn read_task<R: AsyncRead + Unpin>(
    inner: Arc<Inner>,
    mut rd: R,
    mut dec: FrameDecoder,
    events: mpsc::Sender<Event>,
    mut stop: watch::Receiver<bool>,
) {
    let work = async {
        loop {
            loop {
                match dec.next_packet() {
                    Ok(Some(p)) => inner.dispatch(&events, p).await,
                    Ok(None) => break,
                    Err(error) => {
                        return CloseReason::Abrupt(ConnError::Protocol {
                            peer: inner.peer.clone(),
                            error,
                        })
                    }
                }
            }
            let buf = dec.buffer_mut();
            if buf.capacity() - buf.len() < 16 * 1024 {
                buf.reserve(64 * 1024);
            }
            match rd.read_buf(dec.buffer_mut()).await {
                Ok(0) if dec.buffered() == 0 => return CloseReason::PeerClosed,
                Ok(0) => {
                    return CloseReason::Abrupt(ConnError::TruncatedFrame {
                        peer: inner.peer.clone(),
                        buffered: dec.buffered(),
                    })
                }
                Ok(_) => {}
                Err(e) => return CloseReason::Abrupt(inner.io_error(e)),
            }
        }
    };
    let reason = tokio::select! {
        reason = work => Some(reason),
        _ = stop.wait_for(|s| *s) => None,
    };
    if let Some(reason) = reason {
        inner.finish(reason);
    }
    // The reader is the only sender of events: Closed is the last one, and
    // dropping `events` afterwards ends the stream.
    let reason = inner.state().closed.clone();
    if let Some(reason) = reason {
        let _ = events.send(Event::Closed(reason)).await;
    }
}

/// Writes what the senders left in the buffer, until the connection ends.
async fn write_task(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let work = poll_fn(|cx| {
        let mut out = inner.out();
        let out = &mut *out;
        let Some(io) = out.io.as_mut() else {
            return Poll::Ready(CloseReason::LocalClosed);
        };
        while out.pos < out.buf.len() {
            match io.as_mut().poll_write(cx, &out.buf[out.pos..]) {
                Poll::Ready(Ok(0)) => {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "socket took no bytes");
                    return Poll::Ready(CloseReason::Abrupt(inner.io_error(e)));
                }
                Poll::Ready(Ok(n)) => {
                    out.pos += n;
                    out.flush = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(CloseReason::Abrupt(inner.io_error(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
        if out.frames > 0 || !out.buf.is_empty() {
            out.buf.clear();
            out.pos = 0;
            out.frames = 0;
            inner.space.notify_waiters();
        }
        if out.flush {
            match io.as_mut().poll_flush(cx) {
                Poll::Ready(Ok(())) => out.flush = false,
                Poll::Ready(Err(e)) => return Poll::Ready(CloseReason::Abrupt(inner.io_error(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
        if out.close {
            return match io.as_mut().poll_shutdown(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(CloseReason::LocalClosed),
                Poll::Ready(Err(e)) => Poll::Ready(CloseReason::Abrupt(inner.io_error(e))),
                Poll::Pending => Poll::Pending,
            };
        }
        // Idle: the next sender writes to the socket itself.
        out.idle = Some(cx.waker().clone());
        Poll::Pending
    });
    let reason = tokio::select! {
        reason = work => Some(reason),
        _ = stop.wait_for(|s| *s) => None,
    };
    if let Some(reason) = reason {
        inner.finish(reason);
    }
    // Nobody writes any more: drop our half of the socket (it closes with
    // the reader's), and let waiting senders see the end.
    let io = {
        let mut out = inner.out();
        out.idle = None;
        out.io.take()
    };
    drop(io);
    inner.space.notify_waiters();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sockets_get_neo_keepalive_and_nodelay() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let (tcp, _) = tokio::join!(TcpStream::connect(addr), l.accept());
        let tcp = tcp.expect("connect");
        tune_socket(&tcp);
        let s = SockRef::from(&tcp);
        assert!(tcp.nodelay().expect("nodelay"));
        assert!(s.keepalive().expect("keepalive"));
        assert_eq!(
            s.tcp_keepalive_time().expect("time"),
            Duration::from_secs(60)
        );
        assert_eq!(
            s.tcp_keepalive_interval().expect("interval"),
            Duration::from_secs(10)
        );
        assert_eq!(s.tcp_keepalive_retries().expect("retries"), 3);
    }
}
