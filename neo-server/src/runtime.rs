//! The thin shell that runs a node role over real sockets.
//!
//! Every role (master, storage, admin) is a deterministic state machine, a
//! [`Node`]: it is fed [`Event`]s (a connection accepted or established, a
//! packet, a close, a timer) with the current time, and answers by filling
//! an [`Outbox`] with actions (send a packet, connect, close, arm a timer,
//! stop). It never touches a socket or a clock itself, so tests drive it in
//! memory ([`crate::sim`]) and the same code runs in the daemons.
//!
//! [`spawn`] runs a node for real: tokio tasks accept and connect, and
//! `neo_proto::conn` does TLS, NEO's handshake and the framing, all on one
//! I/O thread (a current-thread runtime: no wake-ups of idle workers
//! looking for work, the cost that dominated a request's round trip);
//! the node itself runs on another dedicated OS thread,
//! so that its database work (storage) never blocks the I/O.
//! The node thread writes its packets itself ([`Connection::send_now`]:
//! straight to the socket when nothing waits to be written, else to the
//! connection's writer task), so an answer costs no hand-off back to the
//! async threads.
//!
//!
//! ```text
//!   socket ─ reader task ──Event──▶ ┌────────────┐ ──frames──▶ socket (or its writer task)
//!   socket ─ reader task ──Event──▶ │ node thread│ ──frames──▶ socket (or its writer task)
//!            accept loop ──Event──▶ └────────────┘ ──connect─▶ connect task
//!   socket ─ reader task ─▶ FastPath::answer ─▶ socket   (e.g. loads, on the I/O thread)
//! ```
//!
//! Two latency tools, chosen by [`Shell`]: a [`FastPath`] answers the
//! requests it can on the I/O thread itself (a storage node's loads: no
//! hand-off to the node thread), and *busy polling* keeps the I/O thread
//! polling its sockets for a short window after each packet instead of
//! sleeping, because waking a sleeping thread costs more than the whole
//! request (measured ~22 µs per wake-up on a VM, against a TCP round trip
//! of ~9 µs between two polling threads).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use neo_proto::conn::{CloseReason, ConnConfig, Connection, Event as ConnEvent};
use neo_proto::tls::TlsConfig;
use neo_proto::{Body, ErrorCode, Packet};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Identifies one connection of a node for its whole life.
pub type ConnId = u64;

/// What happens to a node.
#[derive(Debug)]
pub enum Event {
    /// A peer connected to our listening socket (handshake done).
    Accepted { conn: ConnId, peer: SocketAddr },
    /// A connection asked with [`Outbox::connect`] is established
    /// (handshake done).
    Connected { conn: ConnId, token: u64 },
    /// A connection asked with [`Outbox::connect`] failed; `conn` is dead.
    ConnectFailed {
        conn: ConnId,
        token: u64,
        error: String,
    },
    /// A packet arrived.
    Packet { conn: ConnId, packet: Packet },
    /// The connection is gone: `error` is `None` for an orderly close by
    /// the peer, else why it broke (reset, malformed frame, ...).
    Closed { conn: ConnId, error: Option<String> },
    /// A timer armed with [`Outbox::timer`] fired.
    Timer { token: u64 },
}

/// A node role as a state machine.
pub trait Node: Send + 'static {
    /// Called once before any event (e.g. to connect to the masters).
    fn start(&mut self, now: Instant, out: &mut Outbox);
    /// Called for each event, in order.
    fn handle(&mut self, now: Instant, event: Event, out: &mut Outbox);
}

/// What a node asks its shell to do.
#[derive(Debug)]
pub enum Action {
    /// Send this packet on this connection.
    Send { conn: ConnId, packet: Packet },
    /// Close this connection after what was queued is written.
    Close { conn: ConnId },
    /// Open a connection; `conn` is its id from now on.
    Connect {
        conn: ConnId,
        addr: SocketAddr,
        token: u64,
    },
    /// Deliver `Event::Timer { token }` at `at`.
    Timer { at: Instant, token: u64 },
    /// Stop the node (the process exits).
    Stop,
}

/// Collects a node's actions; allocates request ids per connection, like
/// NEO: one counter per connection for the requests and notifications we
/// send, answers reuse the request's id.
#[derive(Debug)]
pub struct Outbox {
    actions: Vec<Action>,
    next_id: HashMap<ConnId, u32>,
    conn_ids: Arc<AtomicU64>,
    now: Instant,
}

impl Outbox {
    /// An outbox whose new connection ids come from `conn_ids`.
    pub fn new(conn_ids: Arc<AtomicU64>, now: Instant) -> Outbox {
        Outbox {
            actions: Vec::new(),
            next_id: HashMap::new(),
            conn_ids,
            now,
        }
    }

    fn push_packet(&mut self, conn: ConnId, packet: Packet) {
        self.actions.push(Action::Send { conn, packet });
    }

    fn take_id(&mut self, conn: ConnId) -> u32 {
        let id = self.next_id.entry(conn).or_insert(0);
        let this = *id;
        *id = id.wrapping_add(1);
        this
    }

    /// Sends a request; returns its id (its answer will carry it).
    pub fn ask(&mut self, conn: ConnId, body: impl Into<Body>) -> u32 {
        let id = self.take_id(conn);
        self.push_packet(conn, Packet::new(id, body));
        id
    }

    /// Sends a notification (it uses an id of the same counter).
    pub fn notify(&mut self, conn: ConnId, body: impl Into<Body>) {
        let id = self.take_id(conn);
        self.push_packet(conn, Packet::new(id, body));
    }

    /// Answers request `id`.
    pub fn answer(&mut self, conn: ConnId, id: u32, body: impl Into<Body>) {
        self.push_packet(conn, Packet::new(id, body));
    }

    /// Sends a packet with an explicit id (NEO does this for a few
    /// notifications that carry their request's id).
    pub fn send_with_id(&mut self, conn: ConnId, id: u32, body: impl Into<Body>) {
        self.push_packet(conn, Packet::new(id, body));
    }

    /// Answers request `id` with NEO's `Error` packet.
    pub fn error(&mut self, conn: ConnId, id: u32, code: ErrorCode, message: &str) {
        self.push_packet(conn, Packet::new(id, neo_proto::Error::new(code, message)));
    }

    /// Closes a connection (after the frames queued before).
    pub fn close(&mut self, conn: ConnId) {
        self.actions.push(Action::Close { conn });
    }

    /// Opens a connection to `addr`; `Connected` or `ConnectFailed` will
    /// follow with `token`.
    pub fn connect(&mut self, addr: SocketAddr, token: u64) -> ConnId {
        let conn = self.conn_ids.fetch_add(1, Ordering::Relaxed);
        self.actions.push(Action::Connect { conn, addr, token });
        conn
    }

    /// Arms a one-shot timer.
    pub fn timer(&mut self, after: Duration, token: u64) {
        self.actions.push(Action::Timer {
            at: self.now + after,
            token,
        });
    }

    /// Stops the node.
    pub fn stop(&mut self) {
        self.actions.push(Action::Stop);
    }

    /// Forgets the id counter of a closed connection.
    pub fn forget(&mut self, conn: ConnId) {
        self.next_id.remove(&conn);
    }

    /// Takes the actions collected so far.
    pub fn drain(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Sets the time used for timers.
    pub fn set_now(&mut self, now: Instant) {
        self.now = now;
    }
}

/// Requests that the I/O thread answers itself, without waking the node
/// thread: what it answers must not depend on the node's order of events
/// (e.g. a load of committed data).
pub trait FastPath: Send + Sync + 'static {
    /// The answer to `packet` received on `conn` by I/O thread `io`
    /// (`0..Shell::io_threads`), or `None` to hand the packet to the node
    /// as usual.
    fn answer(&self, io: usize, conn: ConnId, packet: &Packet) -> Option<Body>;
}

/// How [`spawn_with`] runs a node.
#[derive(Clone, Default)]
pub struct Shell {
    /// TLS for every connection (NEO's `--ca/--cert/--key`).
    pub tls: Option<TlsConfig>,
    /// Requests answered on the I/O thread.
    pub fast_path: Option<Arc<dyn FastPath>>,
    /// How long an I/O thread keeps polling its sockets after a packet
    /// before it sleeps (zero: it sleeps at once).
    pub busy_poll: Duration,
    /// I/O threads (at least one): accepted connections are spread over
    /// them, so that the fast path uses several cores.
    pub io_threads: usize,
}

/// When the last packet arrived, for busy polling.
struct Activity {
    start: Instant,
    last_us: AtomicU64,
    wake: Notify,
}

impl Activity {
    fn touch(&self) {
        let us = self.start.elapsed().as_micros() as u64;
        if self.last_us.swap(us, Ordering::Relaxed) != us {
            self.wake.notify_one();
        }
    }

    fn idle_for(&self) -> Duration {
        let now = self.start.elapsed().as_micros() as u64;
        Duration::from_micros(now.saturating_sub(self.last_us.load(Ordering::Relaxed)))
    }
}

/// Busy polling: after each packet, until `window` passes without one,
/// the task yields at once, so that the current-thread runtime polls the
/// sockets (epoll with no timeout) instead of sleeping; the OS thread
/// yields too, so that other threads still get the CPU.
async fn busy_poll(activity: Arc<Activity>, window: Duration) {
    loop {
        activity.wake.notified().await;
        while activity.idle_for() < window {
            thread::yield_now();
            tokio::task::yield_now().await;
        }
    }
}

/// How a running node is reached and stopped.
pub struct NodeHandle {
    /// The address the node listens on, if it listens.
    pub local_addr: Option<SocketAddr>,
    events: mpsc::Sender<Msg>,
    thread: Option<thread::JoinHandle<()>>,
}

impl NodeHandle {
    /// Asks the node to stop and waits until it has.
    pub fn shutdown(mut self) {
        let _ = self.events.send(Msg::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Waits until the node stops by itself.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

enum Msg {
    Event(Event),
    /// A connection is ready: frames for `conn` go there.
    Writer(ConnId, Connection),
    Shutdown,
}

/// What the node sends on a connection.
enum WriterMsg {
    Packet(Packet),
    Close,
}

/// Runs `node` for real: listens on `listener` (if any) and serves until
/// the node stops or [`NodeHandle::shutdown`] is called. `tls`, when
/// given, wraps every connection in TLS (NEO's `--ca/--cert/--key`).
pub fn spawn<N: Node>(
    node: N,
    listener: Option<std::net::TcpListener>,
    tls: Option<TlsConfig>,
) -> io::Result<NodeHandle> {
    let shell = Shell {
        tls,
        ..Shell::default()
    };
    spawn_with(node, listener, shell)
}

/// [`spawn`] with a fast path and busy polling.
pub fn spawn_with<N: Node>(
    mut node: N,
    listener: Option<std::net::TcpListener>,
    shell: Shell,
) -> io::Result<NodeHandle> {
    let Shell {
        tls,
        fast_path,
        busy_poll: window,
        io_threads,
    } = shell;
    // The I/O threads drive every socket until the node thread ends.
    let (io_done, io_stop) = tokio::sync::watch::channel(false);
    let mut rts = Vec::new();
    let mut io_joins = Vec::new();
    for k in 0..io_threads.max(1) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rts.push(runtime.handle().clone());
        let mut stop = io_stop.clone();
        io_joins.push(
            thread::Builder::new()
                .name(format!("neo-io-{k}"))
                .spawn(move || {
                    runtime.block_on(async {
                        let _ = stop.wait_for(|s| *s).await;
                    });
                    runtime.shutdown_timeout(Duration::from_millis(200));
                })?,
        );
    }
    let rt = rts[0].clone();
    let local_addr = match &listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let (tx, rx) = mpsc::channel::<Msg>();
    let conn_ids = Arc::new(AtomicU64::new(1));
    // Connections still open: waited for at stop so that what the node
    // sent last (e.g. an answer before closing) is written.
    let live = Arc::new(AtomicU64::new(0));
    let tls = tls.map(Arc::new);
    // What the connections of each I/O thread share.
    let ios: Vec<Io> = rts
        .iter()
        .enumerate()
        .map(|(k, h)| {
            let activity = Arc::new(Activity {
                start: Instant::now(),
                last_us: AtomicU64::new(0),
                wake: Notify::new(),
            });
            if !window.is_zero() {
                h.spawn(busy_poll(activity.clone(), window));
            }
            Io {
                index: k,
                tx: tx.clone(),
                tls: tls.clone(),
                live: live.clone(),
                fast_path: fast_path.clone(),
                activity,
            }
        })
        .collect();
    let io = ios[0].clone();
    if let Some(l) = listener {
        l.set_nonblocking(true)?;
        let ids = conn_ids.clone();
        let rts = rts.clone();
        rt.spawn(async move {
            let listener = match TcpListener::from_std(l) {
                Ok(l) => l,
                Err(e) => {
                    log::error!("cannot listen: {e}");
                    return;
                }
            };
            loop {
                match listener.accept().await {
                    Ok((sock, peer)) => {
                        let conn = ids.fetch_add(1, Ordering::Relaxed);
                        // Spread over the I/O threads; a socket moves to
                        // another thread's reactor through its std form.
                        let k = (conn % rts.len() as u64) as usize;
                        let io = ios[k].clone();
                        if k == 0 {
                            tokio::spawn(serve(conn, Origin::Accepted(sock, peer), io));
                            continue;
                        }
                        let sock = match sock.into_std() {
                            Ok(s) => s,
                            Err(e) => {
                                log::warn!("accepted {peer}: {e}");
                                continue;
                            }
                        };
                        rts[k].spawn(async move {
                            match TcpStream::from_std(sock) {
                                Ok(sock) => serve(conn, Origin::Accepted(sock, peer), io).await,
                                Err(e) => log::warn!("accepted {peer}: {e}"),
                            }
                        });
                    }
                    Err(e) => {
                        log::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }
    let handle_tx = tx.clone();
    let thread = thread::Builder::new()
        .name("neo-node".into())
        .spawn(move || {
            let mut writers: HashMap<ConnId, Connection> = HashMap::new();
            // Frames queued before a connection's writer exists.
            let mut pending: HashMap<ConnId, Vec<WriterMsg>> = HashMap::new();
            let mut timers: Vec<(Instant, u64)> = Vec::new();
            let mut out = Outbox::new(conn_ids, Instant::now());
            node.start(Instant::now(), &mut out);
            let mut stop = false;
            // Whether a due timer goes before the next ready event.
            let mut timer_turn = false;
            loop {
                // Apply what the node asked.
                for action in out.drain() {
                    match action {
                        Action::Send { conn, packet } => {
                            deliver(&writers, &mut pending, conn, WriterMsg::Packet(packet))
                        }
                        Action::Close { conn } => {
                            deliver(&writers, &mut pending, conn, WriterMsg::Close);
                            writers.remove(&conn);
                            out.forget(conn);
                        }
                        Action::Connect { conn, addr, token } => {
                            let origin = Origin::Connected(token, addr);
                            rt.spawn(serve(conn, origin, io.clone()));
                        }
                        Action::Timer { at, token } => timers.push((at, token)),
                        Action::Stop => stop = true,
                    }
                }
                if stop {
                    break;
                }
                // A due timer and ready events take turns, so that a timer
                // re-armed at once (background work) starves nobody; with
                // nothing due, wait for the next event or timer.
                let now = Instant::now();
                let due = timers.iter().position(|(at, _)| *at <= now);
                let mut ready = None;
                if let Some(i) = due {
                    ready = if timer_turn {
                        None
                    } else {
                        match rx.try_recv() {
                            Ok(m) => Some(m),
                            Err(mpsc::TryRecvError::Empty) => None,
                            Err(mpsc::TryRecvError::Disconnected) => break,
                        }
                    };
                    timer_turn = ready.is_some();
                    if ready.is_none() {
                        let (_, token) = timers.swap_remove(i);
                        out.set_now(now);
                        node.handle(now, Event::Timer { token }, &mut out);
                        continue;
                    }
                }
                let next = timers.iter().map(|(at, _)| *at).min();
                let msg = match (ready, next) {
                    (Some(m), _) => m,
                    (None, Some(at)) => match rx.recv_timeout(at.saturating_duration_since(now)) {
                        Ok(m) => m,
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    },
                    (None, None) => match rx.recv() {
                        Ok(m) => m,
                        Err(_) => break,
                    },
                };
                match msg {
                    Msg::Shutdown => break,
                    Msg::Writer(conn, w) => {
                        for m in pending.remove(&conn).unwrap_or_default() {
                            write(&w, m);
                        }
                        writers.insert(conn, w);
                    }
                    Msg::Event(ev) => {
                        if let Event::Closed { conn, .. } | Event::ConnectFailed { conn, .. } = &ev
                        {
                            writers.remove(conn);
                            pending.remove(conn);
                            out.forget(*conn);
                        }
                        let now = Instant::now();
                        out.set_now(now);
                        node.handle(now, ev, &mut out);
                    }
                }
            }
            // Flush what is queued, then drop every connection.
            for (_, w) in writers.drain() {
                w.close_soon();
            }
            let deadline = Instant::now() + Duration::from_secs(1);
            while live.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            let _ = io_done.send(true);
            for t in io_joins {
                let _ = t.join();
            }
        })?;
    Ok(NodeHandle {
        local_addr,
        events: handle_tx,
        thread: Some(thread),
    })
}

fn deliver(
    writers: &HashMap<ConnId, Connection>,
    pending: &mut HashMap<ConnId, Vec<WriterMsg>>,
    conn: ConnId,
    msg: WriterMsg,
) {
    match writers.get(&conn) {
        Some(w) => write(w, msg),
        None => pending.entry(conn).or_default().push(msg),
    }
}

/// Hands a packet or a close to the connection, from the node thread.
fn write(c: &Connection, msg: WriterMsg) {
    match msg {
        WriterMsg::Packet(p) => {
            if let Err(e) = c.send_now(&p) {
                // Closed: its Closed event is on its way to the node.
                log::debug!("{} not sent: {e}", p.body.name());
            }
        }
        WriterMsg::Close => c.close_soon(),
    }
}

enum Origin {
    Accepted(TcpStream, SocketAddr),
    Connected(u64, SocketAddr),
}

/// At most this many fast-path answers wait to be written together.
const MAX_BATCH: usize = 32;

/// What every connection's task shares.
#[derive(Clone)]
struct Io {
    /// Which I/O thread.
    index: usize,
    tx: mpsc::Sender<Msg>,
    tls: Option<Arc<TlsConfig>>,
    /// Connections still open.
    live: Arc<AtomicU64>,
    fast_path: Option<Arc<dyn FastPath>>,
    activity: Arc<Activity>,
}

/// One connection: `neo_proto::conn` does TLS, NEO's handshake and the
/// framing; this answers what the fast path can and forwards the other
/// events to the node thread, in order.
async fn serve(conn: ConnId, origin: Origin, io: Io) {
    let Io {
        index,
        tx,
        tls,
        live,
        fast_path,
        activity,
    } = io;
    let config = ConnConfig::default();
    let (c, mut events, ev) = match origin {
        Origin::Accepted(sock, peer) => {
            match Connection::accept(sock, tls.as_deref(), config).await {
                Ok((c, e)) => (c, e, Event::Accepted { conn, peer }),
                Err(e) => {
                    // The node never heard of this connection.
                    log::warn!("refused a connection: {e}");
                    return;
                }
            }
        }
        Origin::Connected(token, addr) => {
            match Connection::connect(addr, tls.as_deref(), config).await {
                Ok((c, e)) => (c, e, Event::Connected { conn, token }),
                Err(e) => {
                    let error = e.to_string();
                    let _ = tx.send(Msg::Event(Event::ConnectFailed { conn, token, error }));
                    return;
                }
            }
        }
    };
    if tx.send(Msg::Writer(conn, c.clone())).is_err() || tx.send(Msg::Event(ev)).is_err() {
        c.abort().await;
        return;
    }
    let open = c.clone();
    live.fetch_add(1, Ordering::AcqRel);
    tokio::spawn(async move {
        // Counted down however the task ends.
        struct Live(Arc<AtomicU64>);
        impl Drop for Live {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _live = Live(live);
        open.closed().await;
    });
    // The fast path's answers to the requests read at once go out in one
    // write.
    let mut answers = Vec::new();
    let flush = |answers: &mut Vec<Packet>| {
        if !answers.is_empty() {
            if let Err(e) = c.send_now_all(answers) {
                log::debug!("{} answers not sent: {e}", answers.len());
            }
            answers.clear();
        }
    };
    loop {
        let ev = match events.try_recv() {
            Some(ev) => ev,
            None => {
                flush(&mut answers);
                match events.recv().await {
                    Some(ev) => ev,
                    None => break,
                }
            }
        };
        match ev {
            ConnEvent::Packet(packet) => {
                activity.touch();
                if let Some(body) = fast_path
                    .as_ref()
                    .and_then(|f| f.answer(index, conn, &packet))
                {
                    answers.push(Packet::new(packet.id, body));
                    if answers.len() >= MAX_BATCH {
                        flush(&mut answers);
                    }
                    continue;
                }
                let delivered = tx.send(Msg::Event(Event::Packet { conn, packet }));
                if delivered.is_err() {
                    c.abort().await;
                    return;
                }
            }
            ConnEvent::Closed(reason) => {
                flush(&mut answers);
                let error = match reason {
                    CloseReason::Abrupt(e) => Some(e.to_string()),
                    _ => None,
                };
                let _ = tx.send(Msg::Event(Event::Closed { conn, error }));
                return;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{ms, Sim};
    use neo_proto::{Ping, Pong};
    use std::sync::Mutex;

    /// Answers every Ping with a Pong.
    struct Ponger;
    impl Node for Ponger {
        fn start(&mut self, _: Instant, _: &mut Outbox) {}
        fn handle(&mut self, _: Instant, ev: Event, out: &mut Outbox) {
            if let Event::Packet { conn, packet } = ev {
                if let Body::Ping(_) = packet.body {
                    out.answer(conn, packet.id, Pong {});
                }
            }
        }
    }

    /// Connects, sends `n` pings, records the ids of the pongs, retries a
    /// failed connection after 100 ms, stops after the last pong.
    struct Pinger {
        to: SocketAddr,
        n: usize,
        sent: Vec<u32>,
        got: Arc<Mutex<Vec<u32>>>,
        failures: usize,
    }
    impl Node for Pinger {
        fn start(&mut self, _: Instant, out: &mut Outbox) {
            out.connect(self.to, 7);
        }
        fn handle(&mut self, _: Instant, ev: Event, out: &mut Outbox) {
            match ev {
                Event::Connected { conn, token } => {
                    assert_eq!(token, 7);
                    for _ in 0..self.n {
                        let id = out.ask(conn, Ping {});
                        self.sent.push(id);
                    }
                }
                Event::ConnectFailed { .. } => {
                    self.failures += 1;
                    out.timer(Duration::from_millis(100), 1);
                }
                Event::Timer { token: 1 } => {
                    out.connect(self.to, 7);
                }
                Event::Packet { conn, packet } => {
                    assert!(matches!(packet.body, Body::Pong(_)));
                    let mut got = self.got.lock().unwrap();
                    got.push(packet.id);
                    if got.len() == self.n {
                        out.close(conn);
                        out.stop();
                    }
                }
                _ => {}
            }
        }
    }

    fn pinger(to: SocketAddr, n: usize) -> (Pinger, Arc<Mutex<Vec<u32>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let p = Pinger {
            to,
            n,
            sent: Vec::new(),
            got: got.clone(),
            failures: 0,
        };
        (p, got)
    }

    #[test]
    fn sim_ping_pong_with_retry() {
        let addr: SocketAddr = "127.0.0.1:10000".parse().unwrap();
        let mut sim = Sim::new();
        let (p, got) = pinger(addr, 3);
        let pi = sim.add(None, p);
        sim.run();
        assert_eq!(sim.node::<Pinger>(pi).failures, 1, "nobody listens yet");
        sim.add(Some(addr), Ponger);
        sim.advance(ms(100));
        assert_eq!(*got.lock().unwrap(), vec![0, 1, 2]);
    }

    #[test]
    fn real_sockets_ping_pong() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = spawn(Ponger, Some(l), None).unwrap();
        let (p, got) = pinger(server.local_addr.unwrap(), 100);
        let client = spawn(p, None, None).unwrap();
        client.join();
        assert_eq!(*got.lock().unwrap(), (0..100).collect::<Vec<u32>>());
        server.shutdown();
    }

    /// A Ponger whose background timer re-arms itself at once, forever.
    struct BusyPonger(u64);
    impl Node for BusyPonger {
        fn start(&mut self, _: Instant, out: &mut Outbox) {
            out.timer(Duration::ZERO, 9);
        }
        fn handle(&mut self, now: Instant, ev: Event, out: &mut Outbox) {
            match ev {
                Event::Timer { token: 9 } => {
                    self.0 += 1;
                    out.timer(Duration::ZERO, 9);
                }
                ev => Ponger.handle(now, ev, out),
            }
        }
    }

    #[test]
    fn background_timer_does_not_starve_connections() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = spawn(BusyPonger(0), Some(l), None).unwrap();
        let (p, got) = pinger(server.local_addr.unwrap(), 50);
        spawn(p, None, None).unwrap().join();
        assert_eq!(got.lock().unwrap().len(), 50);
        server.shutdown();
    }

    /// Answers pings on the I/O threads, counting them and noting which
    /// thread answered.
    struct PingPath(AtomicU64, Mutex<std::collections::BTreeSet<usize>>);
    impl FastPath for PingPath {
        fn answer(&self, io: usize, _: ConnId, packet: &Packet) -> Option<Body> {
            match packet.body {
                Body::Ping(_) => {
                    self.0.fetch_add(1, Ordering::Relaxed);
                    self.1.lock().unwrap().insert(io);
                    Some(Pong {}.into())
                }
                _ => None,
            }
        }
    }

    /// A node that never answers.
    struct Mute;
    impl Node for Mute {
        fn start(&mut self, _: Instant, _: &mut Outbox) {}
        fn handle(&mut self, _: Instant, _: Event, _: &mut Outbox) {}
    }

    #[test]
    fn fast_path_answers_on_the_io_threads() {
        let cases = [
            (Duration::ZERO, 1),
            (Duration::from_micros(300), 1),
            (Duration::from_micros(300), 3),
        ];
        for (busy, threads) in cases {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let path = Arc::new(PingPath(AtomicU64::new(0), Mutex::default()));
            let shell = Shell {
                fast_path: Some(path.clone()),
                busy_poll: busy,
                io_threads: threads,
                ..Shell::default()
            };
            let server = spawn_with(Mute, Some(l), shell).unwrap();
            let clients: Vec<_> = (0..3)
                .map(|_| {
                    let (p, got) = pinger(server.local_addr.unwrap(), 40);
                    (spawn(p, None, None).unwrap(), got)
                })
                .collect();
            for (c, got) in clients {
                c.join();
                assert_eq!(*got.lock().unwrap(), (0..40).collect::<Vec<u32>>());
            }
            assert_eq!(path.0.load(Ordering::Relaxed), 120);
            let used = path.1.lock().unwrap().clone();
            assert_eq!(used, (0..threads).collect(), "{threads} threads");
            server.shutdown();
        }
    }

    #[test]
    fn real_connect_failure_is_reported() {
        // A port nobody listens on: bind then drop.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        struct Once(Arc<Mutex<Option<String>>>, SocketAddr);
        impl Node for Once {
            fn start(&mut self, _: Instant, out: &mut Outbox) {
                out.connect(self.1, 0);
            }
            fn handle(&mut self, _: Instant, ev: Event, out: &mut Outbox) {
                if let Event::ConnectFailed { error, .. } = ev {
                    *self.0.lock().unwrap() = Some(error);
                    out.stop();
                }
            }
        }
        let seen = Arc::new(Mutex::new(None));
        spawn(Once(seen.clone(), addr), None, None).unwrap().join();
        let e = seen.lock().unwrap().clone().unwrap();
        assert!(e.contains(&addr.to_string()), "{e}");
    }
}
