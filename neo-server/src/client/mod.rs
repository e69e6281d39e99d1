//! A NEO client with ZODB storage semantics, async on tokio over
//! [`neo_proto::conn::Connection`].
//!
//! [`Client::connect`] identifies to the primary master as a CLIENT, keeps
//! the node list, the partition table and the last tid from the master's
//! notifications (`NotifyNodeInformation`, `SendPartitionTable`,
//! `NotifyPartitionChanges`, `InvalidateObjects`) and connects to storage
//! nodes on demand, identifying with the node id and `id_timestamp` the
//! master gave it. Reads go to one readable cell of the object's
//! partition (`oid % np`); writes go to every writable cell.
//!
//! ```text
//! load(oid)        AskObject [oid, nil, last_tid+1]   -> storage of oid % np
//! tpc_begin        AskBeginTransaction                -> master   => ttid
//! store            AskStoreObject (zlib if smaller)   -> every cell of oid % np
//! tpc_vote         AskStoreTransaction                -> cells of ttid % np
//!                  AskVoteTransaction                 -> other storages written
//! tpc_finish       AskFinishTransaction               -> master   => tid
//! tpc_abort        AbortTransaction                   -> storages and master
//! ```
//!
//! When the master connection is lost (e.g. the cluster stopped being
//! operational), the client reconnects in the background with its node id;
//! calls needing the master wait for that up to
//! [`ClientConfig::connect_timeout`]. Invalidations missed meanwhile are not
//! replayed to the callbacks (the last tid is refreshed). The masters are
//! tried in turn; a secondary master's `NotPrimaryMaster` sends the client
//! straight to the primary it names (also after a fail-over).
//!
//! Not done yet: conflict resolution (a conflict is returned as
//! [`ClientError::Conflict`]), a cache.

mod error;
mod import;
mod pack;
mod txn;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use neo_proto::conn::{ConnConfig, Connection, Event, Events};
use neo_proto::tls::TlsConfig;
use neo_proto::{
    AcceptIdentification, AskLastTransaction, AskNewOIDs, AskObject, AskObjectHistory,
    AskRelockObject, AskTIDs, AskTIDsFrom, AskTransactionInformation, Body, Bytes, Cell, CellState,
    Checksum, ClusterState, ErrorCode, Map, NodeId, NodeInfo, NodeState, NodeType, Oid, Packet,
    Pong, RequestIdentification, Tid, Value, INVALID_PARTITION, ZERO_HASH,
};
use sha1::{Digest, Sha1};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use error::ClientError;
pub use import::{ImportData, ImportRecord, Preindex, RawRecord};
pub use txn::{Transaction, TxnMeta};

/// The result of client operations.
pub type Result<T> = std::result::Result<T, ClientError>;

/// How to reach and talk to a cluster.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Master addresses (tried in turn).
    pub masters: Vec<SocketAddr>,
    /// The cluster name.
    pub cluster: String,
    /// TLS for every connection, if the cluster uses it.
    pub tls: Option<TlsConfig>,
    /// How long a request may wait for its answer; `None` waits as long
    /// as the connection lives, like NEO.
    pub request_timeout: Option<Duration>,
    /// How long [`Client::connect`] tries before giving up (the cluster
    /// may still be starting).
    pub connect_timeout: Duration,
    /// Compress object data with zlib when it gets smaller (NEO's default).
    pub compress: bool,
    /// Identify as a read-only client.
    pub read_only: bool,
    /// How long a load polls for its answer before the task sleeps: a
    /// sleeping thread takes longer to wake than a load takes on loopback
    /// (zero: sleep at once).
    pub busy_poll: Duration,
}

impl ClientConfig {
    /// Defaults: no request timeout (as NEO), 10 s to connect, compression
    /// on.
    pub fn new(masters: Vec<SocketAddr>, cluster: &str) -> ClientConfig {
        ClientConfig {
            masters,
            cluster: cluster.to_owned(),
            tls: None,
            request_timeout: None,
            connect_timeout: Duration::from_secs(10),
            compress: true,
            read_only: false,
            busy_poll: Duration::from_micros(200),
        }
    }
}

/// Awaits `fut`, first polling it for up to `window` without letting the
/// thread sleep: the task yields, so the (current-thread) runtime polls its
/// sockets with no timeout, and the OS thread yields to any other.
async fn busy_wait<F: Future>(fut: F, window: Duration) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    if !window.is_zero() {
        let start = Instant::now();
        loop {
            let poll = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx)));
            if let std::task::Poll::Ready(v) = poll.await {
                return v;
            }
            if start.elapsed() >= window {
                break;
            }
            std::thread::yield_now();
            tokio::task::yield_now().await;
        }
    }
    fut.await
}

/// One revision of an object as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadResult {
    /// The object's data (decompressed, checksum verified).
    pub data: Vec<u8>,
    /// The revision's tid.
    pub serial: Tid,
    /// The next revision's tid, if known.
    pub next_serial: Option<Tid>,
    /// For an undo record, the revision whose data it reuses.
    pub data_serial: Option<Tid>,
}

/// A committed transaction's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnInfo {
    /// Its tid.
    pub tid: Tid,
    /// ZODB user (`"/ alice"`).
    pub user: Vec<u8>,
    /// Description.
    pub description: Vec<u8>,
    /// Pickled extension (empty if none).
    pub extension: Vec<u8>,
    /// Whether it was packed.
    pub packed: bool,
    /// The objects it modified.
    pub oids: Vec<Oid>,
}

/// One entry of [`Client::history`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The revision.
    pub serial: Tid,
    /// Size of its data.
    pub size: u64,
    /// Its transaction.
    pub info: TxnInfo,
}

/// One object of a transaction in [`Client::iterator`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRecord {
    /// The object.
    pub oid: Oid,
    /// Its data, `None` if the revision has none (creation undone).
    pub data: Option<Vec<u8>>,
    /// For an undo record, the revision whose data it reuses.
    pub data_serial: Option<Tid>,
}

/// One transaction with its objects, as [`Client::iterator`] gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnRecord {
    /// Metadata.
    pub info: TxnInfo,
    /// Objects, in the order of the metadata's oid list.
    pub objects: Vec<ObjectRecord>,
}

type InvalidationCallback = Box<dyn Fn(Tid, &[Oid]) + Send + Sync>;

/// The partition table as the client needs it.
#[derive(Debug, Clone, Default)]
struct Table {
    rows: Vec<Vec<Cell>>,
}

#[derive(Default)]
struct Shared {
    nid: Option<NodeId>,
    id_timestamp: Option<f64>,
    nodes: HashMap<NodeId, NodeInfo>,
    pt: Option<Table>,
    last_tid: Tid,
    cluster_state: Option<ClusterState>,
    master_lost: Option<String>,
    oid_pool: VecDeque<Oid>,
}

impl Shared {
    fn running(&self, nid: NodeId) -> bool {
        self.nodes
            .get(&nid)
            .is_some_and(|n| n.state == NodeState::Running)
    }

    fn readable(&self, partition: u32) -> Vec<NodeId> {
        self.cells(partition, |s| {
            matches!(s, CellState::UpToDate | CellState::Feeding)
        })
    }

    fn writable(&self, partition: u32) -> Vec<NodeId> {
        self.cells(partition, |s| {
            !matches!(s, CellState::Discarded | CellState::Corrupted)
        })
    }

    fn cells(&self, partition: u32, ok: impl Fn(CellState) -> bool) -> Vec<NodeId> {
        let Some(row) = self
            .pt
            .as_ref()
            .and_then(|pt| pt.rows.get(partition as usize))
        else {
            return Vec::new();
        };
        row.iter()
            .filter(|c| ok(c.state) && self.running(c.uuid))
            .map(|c| c.uuid)
            .collect()
    }

    fn operational(&self) -> bool {
        match &self.pt {
            Some(pt) if !pt.rows.is_empty() => {
                (0..pt.rows.len() as u32).all(|p| !self.readable(p).is_empty())
            }
            _ => false,
        }
    }
}

struct Inner {
    cfg: ClientConfig,
    conn_cfg: ConnConfig,
    master: Mutex<Connection>,
    closing: std::sync::atomic::AtomicBool,
    shared: Mutex<Shared>,
    changed: watch::Sender<u64>,
    storages: tokio::sync::Mutex<HashMap<NodeId, Connection>>,
    callbacks: Mutex<Vec<InvalidationCallback>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Relocks asked after NotifyDeadlock, by ttid: collected at the vote.
    relocks: Mutex<HashMap<Tid, Vec<JoinHandle<Result<()>>>>>,
}

impl Inner {
    fn shared(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn master(&self) -> Connection {
        self.master
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn push_task(&self, t: JoinHandle<()>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(t);
    }

    /// Waits until our own entry (id_timestamp) and an operational
    /// partition table came from the master, up to `deadline`.
    async fn wait_ready(&self, deadline: Instant) -> Result<()> {
        let mut rx = self.changed.subscribe();
        loop {
            {
                let sh = self.shared();
                if sh.id_timestamp.is_some() && sh.operational() {
                    return Ok(());
                }
                if self.master().is_closed() {
                    return Err(ClientError::NoMaster {
                        last: sh.master_lost.clone().unwrap_or_default(),
                    });
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
                return Err(ClientError::NotOperational {
                    state: self.shared().cluster_state,
                });
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
        let mut conns = vec![self.master()];
        if let Ok(map) = self.storages.try_lock() {
            conns.extend(map.values().cloned());
        }
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                for c in conns {
                    c.close().await;
                }
            });
        }
    }
}

/// A connected NEO client (cheap to clone; clones share everything).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({:?})", self.nid())
    }
}

fn bytes(b: &[u8]) -> Bytes {
    Bytes::copy_from_slice(b)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// SHA-1 of data as NEO checks it.
pub fn checksum(data: &[u8]) -> Checksum {
    Checksum(Sha1::digest(data).into())
}

fn remote(peer: &str, asked: &'static str, body: Body) -> ClientError {
    match body {
        Body::Error(e) => ClientError::Remote {
            peer: peer.to_owned(),
            asked,
            code: e.code,
            message: text(&e.message),
        },
        other => ClientError::Unexpected {
            peer: peer.to_owned(),
            asked,
            got: other.name(),
        },
    }
}

async fn resolve(info: &NodeInfo) -> Option<SocketAddr> {
    let a = info.address.as_ref()?;
    let host = String::from_utf8_lossy(&a.host).into_owned();
    let found = tokio::net::lookup_host((host, a.port)).await;
    found.ok()?.next()
}

impl Client {
    /// Connects to the primary master, waits until the cluster is
    /// operational (retrying while the master answers NOT_READY, up to
    /// [`ClientConfig::connect_timeout`]) and learns the last tid. A wrong
    /// cluster name is [`ClientError::Refused`] at once.
    pub async fn connect(cfg: ClientConfig) -> Result<Client> {
        let deadline = Instant::now() + cfg.connect_timeout;
        let conn_cfg = ConnConfig {
            request_timeout: cfg.request_timeout,
            ..ConnConfig::default()
        };
        let mut last = String::from("no master address given");
        let mut i = 0usize;
        loop {
            if Instant::now() >= deadline || cfg.masters.is_empty() {
                return Err(ClientError::NoMaster { last });
            }
            let addr = cfg.masters[i % cfg.masters.len()];
            i += 1;
            match Self::try_master(&cfg, &conn_cfg, addr, deadline).await {
                Ok(c) => return Ok(c),
                Err(e @ ClientError::Refused { .. }) => return Err(e),
                Err(e @ ClientError::NotOperational { .. }) => return Err(e),
                Err(e) => {
                    debug!("master {addr}: {e}");
                    last = e.to_string();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn try_master(
        cfg: &ClientConfig,
        conn_cfg: &ConnConfig,
        addr: SocketAddr,
        deadline: Instant,
    ) -> Result<Client> {
        let (conn, events, nid) = identify(cfg, conn_cfg, addr, None).await?;
        info!("connected to master {addr} as {nid}");
        let (changed, _) = watch::channel(0u64);
        let inner = Arc::new(Inner {
            cfg: cfg.clone(),
            conn_cfg: conn_cfg.clone(),
            master: Mutex::new(conn.clone()),
            closing: std::sync::atomic::AtomicBool::new(false),
            shared: Mutex::new(Shared {
                nid: Some(nid),
                ..Shared::default()
            }),
            changed,
            storages: tokio::sync::Mutex::new(HashMap::new()),
            callbacks: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
            relocks: Mutex::new(HashMap::new()),
        });
        let task = tokio::spawn(master_events(Arc::downgrade(&inner), conn.clone(), events));
        inner.push_task(task);
        let client = Client { inner };
        client.last_transaction().await?;
        if let Err(e) = client.inner.wait_ready(deadline).await {
            client.close().await;
            return Err(e);
        }
        Ok(client)
    }

    /// Our node id, as the master gave it.
    pub fn nid(&self) -> Option<NodeId> {
        self.inner.shared().nid
    }

    /// The last tid known (from the master's answers and invalidations).
    pub fn last_tid(&self) -> Tid {
        self.inner.shared().last_tid
    }

    /// The cluster state, if the master told it.
    pub fn cluster_state(&self) -> Option<ClusterState> {
        self.inner.shared().cluster_state
    }

    /// The number of partitions.
    pub fn partitions(&self) -> u32 {
        self.inner
            .shared()
            .pt
            .as_ref()
            .map_or(0, |pt| pt.rows.len() as u32)
    }

    /// The nodes known from the master.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.inner.shared().nodes.values().cloned().collect()
    }

    /// Calls `f(tid, oids)` for every transaction committed by others, as
    /// the master announces it (`InvalidateObjects`).
    pub fn on_invalidate(&self, f: impl Fn(Tid, &[Oid]) + Send + Sync + 'static) {
        self.inner
            .callbacks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(f));
    }

    /// Closes every connection (no reconnection after this).
    pub async fn close(&self) {
        self.inner
            .closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let conns: Vec<Connection> = self
            .inner
            .storages
            .lock()
            .await
            .drain()
            .map(|x| x.1)
            .collect();
        for c in conns {
            c.close().await;
        }
        self.inner.master().close().await;
    }

    fn partition_of(&self, id: u64) -> Result<u32> {
        match self.partitions() {
            0 => Err(ClientError::NotOperational {
                state: self.cluster_state(),
            }),
            np => Ok((id % u64::from(np)) as u32),
        }
    }

    /// The master connection, waiting (up to the connect timeout) while
    /// it is being re-established.
    async fn live_master(&self) -> Result<Connection> {
        let deadline = Instant::now() + self.inner.cfg.connect_timeout;
        let mut rx = self.inner.changed.subscribe();
        loop {
            let c = self.inner.master();
            let lost = self.inner.shared().master_lost.clone();
            match lost {
                None if !c.is_closed() => return Ok(c),
                _ if self.inner.closing.load(std::sync::atomic::Ordering::SeqCst) => {
                    return Err(ClientError::NoMaster {
                        last: "client closed".into(),
                    })
                }
                lost => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
                        return Err(ClientError::NoMaster {
                            last: lost.unwrap_or_else(|| "connection closed".into()),
                        });
                    }
                }
            }
        }
    }

    async fn ask_master(&self, body: impl Into<Body>) -> Result<Body> {
        let conn = self.live_master().await?;
        Ok(conn.ask(body).await?)
    }

    /// [`Client::ask_master`] for requests that may be sent again: if the
    /// connection breaks under it, waits for the new one and asks again.
    async fn ask_master_again(&self, body: impl Into<Body>) -> Result<Body> {
        let body = body.into();
        let conn = self.live_master().await?;
        match conn.ask(body.clone()).await {
            Ok(b) => Ok(b),
            Err(e) if conn.is_closed() || matches!(e, neo_proto::ConnError::Closed { .. }) => {
                debug!(
                    "master connection lost during {}: asking again",
                    body.name()
                );
                // Let the events task see the close and start reconnecting.
                while !conn.is_closed() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                tokio::task::yield_now().await;
                let conn = self.live_master().await?;
                Ok(conn.ask(body).await?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Asks the master for the last committed tid (and remembers it).
    pub async fn last_transaction(&self) -> Result<Tid> {
        match self.ask_master_again(AskLastTransaction {}).await? {
            Body::AnswerLastTransaction(a) => {
                let mut sh = self.inner.shared();
                sh.last_tid = sh.last_tid.max(a.tid);
                Ok(a.tid)
            }
            other => Err(remote(
                self.inner.master().peer(),
                "AskLastTransaction",
                other,
            )),
        }
    }

    /// Makes sure later loads see every transaction committed so far.
    pub async fn sync(&self) -> Result<()> {
        self.last_transaction().await.map(|_| ())
    }

    /// Asks the master for `n` new oids.
    pub async fn new_oids(&self, n: u32) -> Result<Vec<Oid>> {
        match self.ask_master_again(AskNewOIDs { num_oids: n }).await? {
            Body::AnswerNewOIDs(a) => Ok(a.oid_list),
            other => Err(remote(self.inner.master().peer(), "AskNewOIDs", other)),
        }
    }

    /// One new oid, from a pool refilled 100 at a time like NEO's client.
    pub async fn new_oid(&self) -> Result<Oid> {
        if let Some(oid) = self.inner.shared().oid_pool.pop_front() {
            return Ok(oid);
        }
        let mut list = self.new_oids(100).await?.into_iter();
        let first = list.next().ok_or(ClientError::Unexpected {
            peer: self.inner.master().peer().to_owned(),
            asked: "AskNewOIDs",
            got: "an empty list",
        })?;
        self.inner.shared().oid_pool.extend(list);
        Ok(first)
    }

    /// The connection to storage `nid`, opened and identified if needed.
    async fn storage(&self, nid: NodeId) -> Result<Connection> {
        let mut map = self.inner.storages.lock().await;
        if let Some(c) = map.get(&nid) {
            if !c.is_closed() {
                return Ok(c.clone());
            }
            map.remove(&nid);
        }
        let (node, me, ts) = {
            let sh = self.inner.shared();
            (sh.nodes.get(&nid).cloned(), sh.nid, sh.id_timestamp)
        };
        let node = node.ok_or(ClientError::NoStorage {
            partition: INVALID_PARTITION,
        })?;
        let addr = resolve(&node)
            .await
            .ok_or_else(|| ClientError::Unexpected {
                peer: nid.to_string(),
                asked: "an address",
                got: "none resolvable",
            })?;
        let cfg = &self.inner.cfg;
        let (conn, events) =
            Connection::connect(addr, cfg.tls.as_ref(), self.inner.conn_cfg.clone()).await?;
        let ident = RequestIdentification {
            node_type: NodeType::Client,
            uuid: me,
            address: None,
            name: bytes(cfg.cluster.as_bytes()),
            id_timestamp: ts,
            extra: Map::new(),
        };
        match conn.ask(ident).await? {
            Body::AcceptIdentification(AcceptIdentification {
                node_type: NodeType::Storage,
                ..
            }) => {}
            other => {
                conn.close().await;
                return Err(remote(&addr.to_string(), "RequestIdentification", other));
            }
        }
        info!("connected to storage {nid} at {addr}");
        let weak = Arc::downgrade(&self.inner);
        let task = tokio::spawn(storage_events(weak, conn.clone(), events));
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
        map.insert(nid, conn.clone());
        Ok(conn)
    }

    async fn drop_storage(&self, nid: NodeId) {
        if let Some(c) = self.inner.storages.lock().await.remove(&nid) {
            c.abort().await;
        }
    }

    /// Asks one readable cell of `partition`, trying the others if a
    /// connection fails. Returns the answer and who gave it.
    async fn ask_read(&self, partition: u32, body: Body) -> Result<(Body, String)> {
        let cells = self.inner.shared().readable(partition);
        let mut last = None;
        for nid in cells {
            let conn = match self.storage(nid).await {
                Ok(c) => c,
                Err(e) => {
                    warn!("storage {nid}: {e}");
                    last = Some(e);
                    continue;
                }
            };
            match busy_wait(conn.ask(body.clone()), self.inner.cfg.busy_poll).await {
                Ok(answer) => return Ok((answer, conn.peer().to_owned())),
                Err(e) => {
                    warn!("storage {nid}: {e}");
                    self.drop_storage(nid).await;
                    last = Some(e.into());
                }
            }
        }
        Err(last.unwrap_or(ClientError::NoStorage { partition }))
    }

    async fn ask_object(
        &self,
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    ) -> Result<LoadResult> {
        let partition = self.partition_of(oid.0)?;
        let body = AskObject { oid, at, before }.into();
        let (answer, peer) = self.ask_read(partition, body).await?;
        match answer {
            Body::AnswerObject(a) => {
                if a.data.is_empty() && a.checksum == ZERO_HASH {
                    return Err(ClientError::CreationUndone {
                        oid,
                        serial: a.serial,
                    });
                }
                if checksum(&a.data) != a.checksum {
                    return Err(ClientError::WrongChecksum {
                        oid,
                        serial: a.serial,
                        peer,
                    });
                }
                let data =
                    decompress(a.compression, &a.data).map_err(|reason| ClientError::BadData {
                        oid,
                        serial: a.serial,
                        reason,
                    })?;
                Ok(LoadResult {
                    data,
                    serial: a.serial,
                    next_serial: a.next_serial,
                    data_serial: a.data_serial,
                })
            }
            Body::Error(e) if e.code == ErrorCode::OidDoesNotExist => {
                Err(ClientError::OidDoesNotExist(oid))
            }
            Body::Error(e) if e.code == ErrorCode::OidNotFound => Err(ClientError::NotFound {
                oid,
                tid: at.or(before),
            }),
            other => Err(remote(&peer, "AskObject", other)),
        }
    }

    /// The current revision of `oid` (as of the last tid known).
    pub async fn load(&self, oid: Oid) -> Result<LoadResult> {
        let before = Tid(self.last_tid().0.saturating_add(1));
        self.ask_object(oid, None, Some(before)).await
    }

    /// The revision of `oid` current just before `tid`; `None` if the
    /// object did not exist yet then.
    pub async fn load_before(&self, oid: Oid, tid: Tid) -> Result<Option<LoadResult>> {
        match self.ask_object(oid, None, Some(tid)).await {
            Err(ClientError::NotFound { .. }) => Ok(None),
            r => r.map(Some),
        }
    }

    /// The revision `serial` of `oid`.
    pub async fn load_serial(&self, oid: Oid, serial: Tid) -> Result<LoadResult> {
        self.ask_object(oid, Some(serial), None).await
    }

    /// The metadata of transaction `tid`.
    pub async fn transaction_info(&self, tid: Tid) -> Result<TxnInfo> {
        let partition = self.partition_of(tid.0)?;
        let body = AskTransactionInformation { tid }.into();
        let (answer, peer) = self.ask_read(partition, body).await?;
        match answer {
            Body::AnswerTransactionInformation(a) => Ok(TxnInfo {
                tid: a.tid,
                user: a.user.to_vec(),
                description: a.description.to_vec(),
                extension: a.extension.to_vec(),
                packed: a.packed,
                oids: a.oid_list,
            }),
            other => Err(remote(&peer, "AskTransactionInformation", other)),
        }
    }

    /// The last `size` revisions of `oid`, newest first, with their
    /// transactions.
    pub async fn history(&self, oid: Oid, size: u64) -> Result<Vec<HistoryEntry>> {
        let partition = self.partition_of(oid.0)?;
        let body = AskObjectHistory {
            oid,
            first: 0,
            last: size,
        }
        .into();
        let (answer, peer) = self.ask_read(partition, body).await?;
        let list = match answer {
            Body::AnswerObjectHistory(a) => a.history_list,
            Body::Error(e) if e.code == ErrorCode::OidDoesNotExist => {
                return Err(ClientError::OidDoesNotExist(oid))
            }
            Body::Error(e) if e.code == ErrorCode::OidNotFound => {
                return Err(ClientError::NotFound { oid, tid: None })
            }
            other => return Err(remote(&peer, "AskObjectHistory", other)),
        };
        let mut out = Vec::with_capacity(list.len());
        for (serial, size) in list {
            let info = self.transaction_info(serial).await?;
            out.push(HistoryEntry { serial, size, info });
        }
        Ok(out)
    }

    /// ZODB's undoLog: transactions `first..last` counted from the newest.
    pub async fn undo_log(&self, first: u64, last: u64) -> Result<Vec<TxnInfo>> {
        let nodes: BTreeSet<NodeId> = {
            let sh = self.inner.shared();
            (0..sh.pt.as_ref().map_or(0, |pt| pt.rows.len() as u32))
                .flat_map(|p| sh.readable(p))
                .collect()
        };
        let mut tids = BTreeSet::new();
        for nid in nodes {
            let conn = self.storage(nid).await?;
            let body = AskTIDs {
                first,
                last,
                partition: INVALID_PARTITION,
            };
            match conn.ask(body).await? {
                Body::AnswerTIDs(a) => tids.extend(a.tid_list),
                other => return Err(remote(conn.peer(), "AskTIDs", other)),
            }
        }
        let want = last.saturating_sub(first) as usize;
        let mut out = Vec::new();
        for tid in tids.into_iter().rev().take(want) {
            out.push(self.transaction_info(tid).await?);
        }
        Ok(out)
    }

    /// Up to `limit` tids in `start..=stop`, merged over all partitions.
    pub async fn transaction_log(&self, start: Tid, stop: Tid, limit: u32) -> Result<Vec<Tid>> {
        let mut tids: Vec<Tid> = Vec::new();
        let mut stop = stop;
        for partition in 0..self.partitions() {
            let body = AskTIDsFrom {
                min_tid: start,
                max_tid: stop,
                length: limit,
                partition,
            }
            .into();
            let (answer, peer) = self.ask_read(partition, body).await?;
            match answer {
                Body::AnswerTIDsFrom(a) => tids.extend(a.tid_list),
                other => return Err(remote(&peer, "AskTIDsFrom", other)),
            }
            tids.sort_unstable();
            tids.dedup();
            if tids.len() >= limit as usize {
                tids.truncate(limit as usize);
                if let Some(last) = tids.last() {
                    stop = *last;
                }
            }
        }
        Ok(tids)
    }

    /// Every transaction in `start..=stop` (`stop` defaults to the last
    /// tid) with its objects' data, oldest first (ZODB's iterator).
    pub async fn iterator(&self, start: Tid, stop: Option<Tid>) -> Result<Vec<TxnRecord>> {
        const PAGE: u32 = 100;
        let stop = stop.unwrap_or_else(|| self.last_tid());
        let mut out = Vec::new();
        let mut from = start;
        loop {
            let tids = self.transaction_log(from, stop, PAGE).await?;
            for &tid in &tids {
                let info = self.transaction_info(tid).await?;
                let mut objects = Vec::with_capacity(info.oids.len());
                for &oid in &info.oids {
                    let (data, data_serial) = match self.load_serial(oid, tid).await {
                        Ok(r) => (Some(r.data), r.data_serial),
                        Err(ClientError::CreationUndone { .. }) => (None, None),
                        Err(e) => return Err(e),
                    };
                    objects.push(ObjectRecord {
                        oid,
                        data,
                        data_serial,
                    });
                }
                out.push(TxnRecord { info, objects });
            }
            match tids.last() {
                Some(last) if tids.len() == PAGE as usize && *last < stop => from = Tid(last.0 + 1),
                _ => break,
            }
        }
        Ok(out)
    }
}

/// Decompresses object data by NEO's compression number.
fn decompress(compression: u8, data: &[u8]) -> std::result::Result<Vec<u8>, String> {
    match compression {
        0 => Ok(data.to_vec()),
        1 => crate::zlib::inflate(data).map_err(|e| format!("zlib: {e}")),
        n => Err(format!("unknown compression {n}")),
    }
}

/// Compresses like NEO's client: zlib, kept only if smaller. One
/// compressor per thread, reset for each call (a new one per call costs
/// a large allocation, page faults included, per stored object).
fn compress(data: &[u8]) -> (u8, Vec<u8>) {
    use flate2::{Compress, Compression, FlushCompress, Status};
    thread_local! {
        static ZLIB: std::cell::RefCell<Compress> =
            std::cell::RefCell::new(Compress::new(Compression::default(), true));
    }
    let raw = || (0, data.to_vec());
    ZLIB.with(|z| {
        let mut z = z.borrow_mut();
        z.reset();
        // Only an output smaller than the data is kept: stop when full.
        let mut out = Vec::with_capacity(data.len());
        loop {
            let (before_in, before_out) = (z.total_in(), z.total_out());
            let consumed = usize::try_from(before_in).unwrap_or(usize::MAX);
            let input = data.get(consumed..).unwrap_or(&[]);
            match z.compress_vec(input, &mut out, FlushCompress::Finish) {
                Ok(Status::StreamEnd) if out.len() < data.len() => return (1, out),
                Ok(Status::StreamEnd) | Err(_) => return raw(),
                Ok(_) if out.len() == out.capacity() => return raw(),
                // No progress with room left: give up compressing.
                Ok(_) if (z.total_in(), z.total_out()) == (before_in, before_out) => return raw(),
                Ok(_) => {}
            }
        }
    })
}

async fn master_events(inner: Weak<Inner>, conn: Connection, mut events: Events) {
    while let Some(ev) = events.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        match ev {
            Event::Packet(p) => master_packet(&inner, &conn, p).await,
            Event::Closed(reason) => {
                inner.shared().master_lost = Some(format!("{reason:?}"));
                inner.bump();
                if !inner.closing.load(std::sync::atomic::Ordering::SeqCst) {
                    warn!("connection to master {} lost: {reason:?}", conn.peer());
                    let weak = Arc::downgrade(&inner);
                    inner.push_task(tokio::spawn(reconnect(weak)));
                }
                return;
            }
            _ => {}
        }
    }
}

/// Connects and identifies to the master at `addr` as a CLIENT (with our
/// previous node id when reconnecting). A secondary master answers
/// `NotPrimaryMaster`: the primary it names is asked instead.
async fn identify(
    cfg: &ClientConfig,
    conn_cfg: &ConnConfig,
    addr: SocketAddr,
    uuid: Option<NodeId>,
) -> Result<(Connection, Events, NodeId)> {
    let mut addr = addr;
    // A redirect or two (the primary may change meanwhile), not a loop.
    for _ in 0..3 {
        match identify_once(cfg, conn_cfg, addr, uuid).await? {
            Ok(x) => return Ok(x),
            Err(primary) => {
                debug!("{addr} is not the primary master; the primary is {primary}");
                addr = primary;
            }
        }
    }
    Err(ClientError::NoMaster {
        last: format!("sent from master to master, last {addr}"),
    })
}

/// One identification: accepted, or the primary a secondary names.
async fn identify_once(
    cfg: &ClientConfig,
    conn_cfg: &ConnConfig,
    addr: SocketAddr,
    uuid: Option<NodeId>,
) -> Result<std::result::Result<(Connection, Events, NodeId), SocketAddr>> {
    let (conn, events) = Connection::connect(addr, cfg.tls.as_ref(), conn_cfg.clone()).await?;
    let mut extra = Map::new();
    if cfg.read_only {
        extra
            .0
            .push((Bytes::from_static(b"read_only"), Value::Bool(true)));
    }
    let ident = RequestIdentification {
        node_type: NodeType::Client,
        uuid,
        address: None,
        name: bytes(cfg.cluster.as_bytes()),
        id_timestamp: None,
        extra,
    };
    let mut events = events;
    // A secondary answers with the notification NotPrimaryMaster, then
    // closes: watch the events while the answer is awaited. The answer
    // wins a tie (biased): what follows it stays in `events`.
    let answer = {
        let ask = conn.ask(ident);
        tokio::pin!(ask);
        loop {
            tokio::select! {
                biased;
                a = &mut ask => break a?,
                ev = events.recv() => match ev {
                    Some(Event::Packet(Packet { body: Body::NotPrimaryMaster(n), .. })) => {
                        break Body::NotPrimaryMaster(n)
                    }
                    Some(Event::Packet(p)) => {
                        warn!("{addr} sent {} before identifying us", p.body.name())
                    }
                    Some(_) => {}
                    None => break ask.await?,
                },
            }
        }
    };
    match answer {
        Body::AcceptIdentification(AcceptIdentification {
            node_type: NodeType::Master,
            your_uuid: Some(nid),
            ..
        }) => Ok(Ok((conn, events, nid))),
        Body::NotPrimaryMaster(n) => {
            conn.close().await;
            let primary = match n.primary.and_then(|i| n.known_master_list.get(i as usize)) {
                Some(a) => {
                    let host = String::from_utf8_lossy(&a.host).into_owned();
                    let found = tokio::net::lookup_host((host, a.port)).await;
                    found.ok().and_then(|mut it| it.next())
                }
                None => None,
            };
            match primary {
                Some(p) if p != addr => Ok(Err(p)),
                _ => Err(ClientError::NoMaster {
                    last: format!("{addr} is not the primary master"),
                }),
            }
        }
        Body::Error(e) if e.code == ErrorCode::NotReady => {
            conn.close().await;
            Err(ClientError::Remote {
                peer: addr.to_string(),
                asked: "RequestIdentification",
                code: e.code,
                message: text(&e.message),
            })
        }
        Body::Error(e) => {
            conn.close().await;
            Err(ClientError::Refused {
                peer: addr.to_string(),
                code: e.code,
                message: text(&e.message),
            })
        }
        other => {
            conn.close().await;
            Err(remote(&addr.to_string(), "RequestIdentification", other))
        }
    }
}

/// Re-establishes the master connection after it was lost, until it works,
/// the master refuses us for good, or the client is dropped or closed.
fn reconnect(weak: Weak<Inner>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    // Boxed: it spawns master_events, which spawns it.
    Box::pin(reconnect_loop(weak))
}

async fn reconnect_loop(weak: Weak<Inner>) {
    let mut i = 0usize;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(inner) = weak.upgrade() else { return };
        if inner.closing.load(std::sync::atomic::Ordering::SeqCst) || inner.cfg.masters.is_empty() {
            return;
        }
        let addr = inner.cfg.masters[i % inner.cfg.masters.len()];
        i += 1;
        let nid = inner.shared().nid;
        let (conn, events, nid) = match identify(&inner.cfg, &inner.conn_cfg, addr, nid).await {
            Ok(x) => x,
            Err(e @ ClientError::Refused { .. }) => {
                log::error!("master {addr} refused us: {e}");
                inner.shared().master_lost = Some(e.to_string());
                inner.bump();
                return;
            }
            Err(e) => {
                debug!("reconnecting to {addr}: {e}");
                continue;
            }
        };
        {
            let mut sh = inner.shared();
            sh.nid = Some(nid);
            sh.id_timestamp = None;
            sh.pt = None;
        }
        *inner.master.lock().unwrap_or_else(|e| e.into_inner()) = conn.clone();
        inner.push_task(tokio::spawn(master_events(
            weak.clone(),
            conn.clone(),
            events,
        )));
        match conn.ask(AskLastTransaction {}).await {
            Ok(Body::AnswerLastTransaction(a)) => {
                let mut sh = inner.shared();
                sh.last_tid = sh.last_tid.max(a.tid);
            }
            _ => continue,
        }
        let deadline = Instant::now() + inner.cfg.connect_timeout;
        match inner.wait_ready(deadline).await {
            Ok(()) => {
                info!("reconnected to master {addr} as {nid}");
                inner.shared().master_lost = None;
                inner.bump();
                return;
            }
            Err(e) => {
                debug!("master {addr} not ready: {e}");
                conn.close().await;
            }
        }
    }
}

async fn master_packet(inner: &Inner, conn: &Connection, p: Packet) {
    match p.body {
        Body::NotifyNodeInformation(n) => {
            let mut down = Vec::new();
            {
                let mut sh = inner.shared();
                for node in n.node_list {
                    let Some(uuid) = node.uuid else { continue };
                    if Some(uuid) == sh.nid && node.id_timestamp.is_some() {
                        sh.id_timestamp = node.id_timestamp;
                    }
                    if node.state != NodeState::Running {
                        down.push(uuid);
                    }
                    if node.state == NodeState::Unknown {
                        sh.nodes.remove(&uuid);
                    } else {
                        sh.nodes.insert(uuid, node);
                    }
                }
            }
            for nid in down {
                if let Some(c) = inner.storages.lock().await.remove(&nid) {
                    c.abort().await;
                }
            }
        }
        Body::SendPartitionTable(t) => {
            inner.shared().pt = Some(Table { rows: t.row_list });
        }
        Body::NotifyPartitionChanges(t) => {
            let mut sh = inner.shared();
            if let Some(pt) = sh.pt.as_mut() {
                for (offset, uuid, state) in t.cell_list {
                    let Some(row) = pt.rows.get_mut(offset as usize) else {
                        continue;
                    };
                    row.retain(|c| c.uuid != uuid);
                    if state != CellState::Discarded {
                        row.push(Cell { uuid, state });
                    }
                }
            }
        }
        Body::NotifyClusterInformation(c) => {
            info!("cluster state {}", c.state);
            inner.shared().cluster_state = Some(c.state);
        }
        Body::InvalidateObjects(inv) => {
            {
                let mut sh = inner.shared();
                sh.last_tid = sh.last_tid.max(inv.tid);
            }
            let cbs = inner.callbacks.lock().unwrap_or_else(|e| e.into_inner());
            for cb in cbs.iter() {
                cb(inv.tid, &inv.oid_list);
            }
        }
        Body::Ping(_) => {
            let _ = conn.answer(p.id, Pong {}).await;
        }
        other => debug!("master sent {} (ignored)", other.name()),
    }
    inner.bump();
}

async fn storage_events(inner: Weak<Inner>, conn: Connection, mut events: Events) {
    while let Some(ev) = events.recv().await {
        match ev {
            Event::Packet(p) => match p.body {
                Body::Ping(_) => {
                    let _ = conn.answer(p.id, Pong {}).await;
                }
                Body::NotifyDeadlock(d) => {
                    // Deadlock avoidance: take the lock again; if the object
                    // changed meanwhile, that is a conflict for the vote.
                    let Some(inner) = inner.upgrade() else { return };
                    info!("deadlock avoidance for {}:{}", d.oid, d.ttid);
                    let c = conn.clone();
                    let task = tokio::spawn(async move {
                        let ask = AskRelockObject {
                            ttid: d.ttid,
                            oid: d.oid,
                        };
                        match c.ask(ask).await? {
                            Body::AnswerRelockObject(a) => match a.conflict {
                                None => Ok(()),
                                Some((base, committed, _)) => Err(ClientError::Conflict {
                                    oid: d.oid,
                                    committed,
                                    base,
                                }),
                            },
                            other => Err(remote(c.peer(), "AskRelockObject", other)),
                        }
                    });
                    inner
                        .relocks
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(d.ttid)
                        .or_default()
                        .push(task);
                }
                other => debug!("{} sent {} (ignored)", conn.peer(), other.name()),
            },
            Event::Closed(reason) => {
                debug!("storage {} closed: {reason:?}", conn.peer());
                return;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
