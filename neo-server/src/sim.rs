//! An in-memory network for [`Node`]s: deterministic tests of whole
//! clusters without sockets, threads or real time (quinn's `Pair`, for
//! several nodes).
//!
//! Nodes are registered with the address they listen on; `connect` to a
//! registered address succeeds at once, to any other address fails. Every
//! packet goes through the real codec (encoded, then decoded) on its way,
//! events are delivered in FIFO order, and time only moves with
//! [`Sim::advance`]. The tests build their clusters and script their
//! peers with `testkit`.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use neo_proto::{Bytes, Packet};

use crate::runtime::{Action, ConnId, Event, Node, Outbox};

#[cfg(test)]
pub(crate) mod testkit;

/// A node as the simulator holds it (any [`Node`] is one).
pub trait SimNode: Node + Any {
    /// For [`Sim::node`].
    fn as_any(&self) -> &dyn Any;
    /// For [`Sim::node_mut`].
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Node + Any> SimNode for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

struct Slot {
    node: Box<dyn SimNode>,
    out: Outbox,
    alive: bool,
}

/// The simulated network and clock.
pub struct Sim {
    slots: Vec<Slot>,
    listeners: HashMap<SocketAddr, usize>,
    /// (node, conn) -> (peer node, peer conn)
    links: HashMap<(usize, ConnId), (usize, ConnId)>,
    queue: VecDeque<(usize, Event)>,
    timers: Vec<(Instant, usize, u64)>,
    conn_ids: Arc<AtomicU64>,
    now: Instant,
    /// Packets delivered so far (for assertions on traffic).
    pub delivered: usize,
}

impl Default for Sim {
    fn default() -> Self {
        Self::new()
    }
}

impl Sim {
    /// An empty network.
    pub fn new() -> Sim {
        Sim {
            slots: Vec::new(),
            listeners: HashMap::new(),
            links: HashMap::new(),
            queue: VecDeque::new(),
            timers: Vec::new(),
            conn_ids: Arc::new(AtomicU64::new(1)),
            now: Instant::now(),
            delivered: 0,
        }
    }

    /// Adds a node listening on `addr` (if any) and starts it; returns its
    /// index.
    pub fn add(&mut self, addr: Option<SocketAddr>, node: impl SimNode) -> usize {
        let i = self.slots.len();
        if let Some(a) = addr {
            self.listeners.insert(a, i);
        }
        self.slots.push(Slot {
            node: Box::new(node),
            out: Outbox::new(self.conn_ids.clone(), self.now),
            alive: true,
        });
        let slot = &mut self.slots[i];
        slot.node.start(self.now, &mut slot.out);
        self.apply(i);
        i
    }

    /// The node at `i`, as its concrete type.
    pub fn node<T: 'static>(&self, i: usize) -> &T {
        self.slots[i]
            .node
            .as_any()
            .downcast_ref()
            .expect("node type")
    }

    /// Same, mutable (to call its API from a test; run [`Sim::poke`] after
    /// to send what it queued).
    pub fn node_mut<T: 'static>(&mut self, i: usize) -> &mut T {
        self.slots[i]
            .node
            .as_any_mut()
            .downcast_mut()
            .expect("node type")
    }

    /// Lets a test act on node `i` through its outbox, then routes the
    /// resulting actions.
    pub fn poke<T: 'static>(&mut self, i: usize, f: impl FnOnce(&mut T, &mut Outbox)) {
        let slot = &mut self.slots[i];
        let node = slot
            .node
            .as_any_mut()
            .downcast_mut::<T>()
            .expect("node type");
        f(node, &mut slot.out);
        self.apply(i);
    }

    /// Kills node `i` as SIGKILL would: its peers see abrupt closes, and
    /// it receives nothing more.
    pub fn kill(&mut self, i: usize) {
        self.slots[i].alive = false;
        self.listeners.retain(|_, n| *n != i);
        let gone: Vec<_> = self
            .links
            .keys()
            .filter(|(n, _)| *n == i)
            .copied()
            .collect();
        for key in gone {
            if let Some((pn, pc)) = self.links.remove(&key) {
                self.links.remove(&(pn, pc));
                self.queue.push_back((
                    pn,
                    Event::Closed {
                        conn: pc,
                        error: Some("peer killed".into()),
                    },
                ));
            }
        }
        self.queue.retain(|(n, _)| *n != i);
        self.timers.retain(|(_, n, _)| *n != i);
    }

    /// Delivers events until none is left (timers do not fire).
    pub fn run(&mut self) {
        let mut budget = 1_000_000u32;
        while let Some((i, ev)) = self.queue.pop_front() {
            budget -= 1;
            assert!(budget > 0, "simulation does not settle");
            if !self.slots[i].alive {
                continue;
            }
            let now = self.now;
            let slot = &mut self.slots[i];
            slot.out.set_now(now);
            slot.node.handle(now, ev, &mut slot.out);
            self.apply(i);
        }
    }

    /// Moves the clock by `d`, firing due timers in order, and runs.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.run();
            self.timers.sort_by_key(|(at, _, _)| *at);
            match self.timers.first() {
                Some(&(at, i, token)) if at <= end => {
                    self.timers.remove(0);
                    self.now = self.now.max(at);
                    self.queue.push_back((i, Event::Timer { token }));
                }
                _ => break,
            }
        }
        self.now = end;
        self.run();
    }

    fn apply(&mut self, i: usize) {
        for action in self.slots[i].out.drain() {
            match action {
                Action::Send { conn, packet } => {
                    let Some(&(pn, pc)) = self.links.get(&(i, conn)) else {
                        continue; // closed: the packet is lost, as on a socket
                    };
                    // Through the real codec, both ways.
                    let frame = packet.encode().expect("encodable packet");
                    let packet = Packet::decode(&Bytes::from(frame)).expect("decodable packet");
                    self.delivered += 1;
                    self.queue
                        .push_back((pn, Event::Packet { conn: pc, packet }));
                }
                Action::Close { conn } => {
                    if let Some((pn, pc)) = self.links.remove(&(i, conn)) {
                        self.links.remove(&(pn, pc));
                        self.queue.push_back((
                            pn,
                            Event::Closed {
                                conn: pc,
                                error: None,
                            },
                        ));
                    }
                    self.slots[i].out.forget(conn);
                }
                Action::Connect { conn, addr, token } => match self.listeners.get(&addr) {
                    Some(&pn) => {
                        let pc = self
                            .conn_ids
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        self.links.insert((i, conn), (pn, pc));
                        self.links.insert((pn, pc), (i, conn));
                        let peer = SocketAddr::from(([127, 0, 0, 1], 40000 + i as u16));
                        self.queue
                            .push_back((pn, Event::Accepted { conn: pc, peer }));
                        self.queue.push_back((i, Event::Connected { conn, token }));
                    }
                    None => self.queue.push_back((
                        i,
                        Event::ConnectFailed {
                            conn,
                            token,
                            error: format!("{addr}: connection refused"),
                        },
                    )),
                },
                Action::Timer { at, token } => self.timers.push((at, i, token)),
                Action::Stop => self.kill(i),
            }
        }
    }

    /// The current simulated time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Whether a timer is armed.
    pub fn has_timers(&self) -> bool {
        !self.timers.is_empty()
    }
}

/// For tests: a duration in milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
