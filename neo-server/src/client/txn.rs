//! Two-phase commit and undo, as NEO's client does them.
//!
//! Stores are pipelined: [`Client::store`] sends `AskStoreObject` to every
//! writable cell of the object's partition and returns; the answers are
//! collected by [`Client::tpc_vote`], which then sends
//! `AskStoreTransaction` to the cells of the ttid's partition and
//! `AskVoteTransaction` to the other storages written to.

use std::collections::{BTreeSet, HashMap};

use neo_proto::{
    AbortTransaction, AskBeginTransaction, AskFinishTransaction, AskObjectUndoSerial,
    AskStoreObject, AskStoreTransaction, AskVoteTransaction, Body, Bytes, NodeId, Oid, Tid,
    ZERO_HASH, ZERO_TID,
};
use tokio::task::JoinHandle;

use super::{bytes, checksum, compress, remote, Client, ClientError, Result};

/// The metadata of a transaction being committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnMeta {
    /// ZODB user (`"/ alice"`).
    pub user: Vec<u8>,
    /// Description.
    pub description: Vec<u8>,
    /// Pickled extension, or empty.
    pub extension: Vec<u8>,
}

type StoreTask = JoinHandle<Result<()>>;

/// A transaction between [`Client::tpc_begin`] and
/// [`Client::tpc_finish`] / [`Client::tpc_abort`].
#[derive(Debug)]
pub struct Transaction {
    ttid: Tid,
    meta: TxnMeta,
    /// Oids stored, in order, without repeats.
    stored: Vec<Oid>,
    /// Oids whose creation is undone (stored without data).
    deleted: Vec<Oid>,
    /// Storages written to.
    involved: BTreeSet<NodeId>,
    pending: Vec<StoreTask>,
    voted: bool,
}

impl Transaction {
    /// The temporary tid the master gave.
    pub fn ttid(&self) -> Tid {
        self.ttid
    }

    /// The oids stored so far.
    pub fn oids(&self) -> &[Oid] {
        &self.stored
    }
}

impl Client {
    /// Starts a transaction (`AskBeginTransaction`).
    pub async fn tpc_begin(&self, meta: TxnMeta) -> Result<Transaction> {
        self.begin_with(meta, None).await
    }

    /// `AskBeginTransaction` with the tid asked by the caller, if any (NEO's
    /// `tpc_begin(..., tid)`; see `Client::tpc_begin_at` in `import.rs`).
    pub(super) async fn begin_with(&self, meta: TxnMeta, tid: Option<Tid>) -> Result<Transaction> {
        if self.inner.cfg.read_only {
            return Err(ClientError::ReadOnly);
        }
        match self.ask_master_again(AskBeginTransaction { tid }).await? {
            Body::AnswerBeginTransaction(a) => Ok(Transaction {
                ttid: a.ttid,
                meta,
                stored: Vec::new(),
                deleted: Vec::new(),
                involved: BTreeSet::new(),
                pending: Vec::new(),
                voted: false,
            }),
            other => Err(remote(
                self.inner.master().peer(),
                "AskBeginTransaction",
                other,
            )),
        }
    }

    /// Stores `data` as the new revision of `oid`, based on revision
    /// `serial` (`ZERO_TID` for a new object). A conflict shows up as
    /// [`ClientError::Conflict`] here or at [`Client::tpc_vote`].
    pub async fn store(
        &self,
        txn: &mut Transaction,
        oid: Oid,
        serial: Tid,
        data: &[u8],
    ) -> Result<()> {
        self.store_raw(txn, oid, serial, Some(data), None).await
    }

    /// A store as NEO sends it: `data` `None` is "no data" (creation
    /// undone when `data_serial` is `None`), `data_serial` a back-pointer.
    pub async fn store_raw(
        &self,
        txn: &mut Transaction,
        oid: Oid,
        serial: Tid,
        data: Option<&[u8]>,
        data_serial: Option<Tid>,
    ) -> Result<()> {
        if txn.voted {
            return Err(ClientError::Phase("store after tpc_vote"));
        }
        let (compression, payload) = match data {
            Some(d) if self.inner.cfg.compress => compress(d),
            Some(d) => (0, d.to_vec()),
            None => (0, Vec::new()),
        };
        let sum = if data.is_some() {
            checksum(&payload)
        } else {
            ZERO_HASH
        };
        if data.is_none() && data_serial.is_none() && !txn.deleted.contains(&oid) {
            txn.deleted.push(oid);
        }
        let partition = self.partition_of(oid.0)?;
        let cells = self.inner.shared().writable(partition);
        if cells.is_empty() {
            return Err(ClientError::NoStorage { partition });
        }
        let payload = Bytes::from(payload);
        for nid in cells {
            let conn = self.storage(nid).await?;
            txn.involved.insert(nid);
            let packet = AskStoreObject {
                oid,
                serial,
                compression,
                checksum: sum,
                data: payload.clone(),
                data_serial,
                ttid: txn.ttid,
            };
            txn.pending.push(tokio::spawn(async move {
                match conn.ask(packet).await? {
                    Body::AnswerStoreObject(a) => match a.conflict {
                        None => Ok(()),
                        Some(t) if t == ZERO_TID => Ok(()),
                        Some(committed) => Err(ClientError::Conflict {
                            oid,
                            committed,
                            base: serial,
                        }),
                    },
                    other => Err(remote(conn.peer(), "AskStoreObject", other)),
                }
            }));
        }
        if !txn.stored.contains(&oid) {
            txn.stored.push(oid);
        }
        // Report early what is already answered.
        let mut still = Vec::with_capacity(txn.pending.len());
        let mut first_err = None;
        for t in txn.pending.drain(..) {
            if t.is_finished() {
                if let Err(e) = join(t).await {
                    first_err.get_or_insert(e);
                }
            } else {
                still.push(t);
            }
        }
        txn.pending = still;
        first_err.map_or(Ok(()), Err)
    }

    /// Waits for every store, then votes: `AskStoreTransaction` to the
    /// cells of the ttid's partition, `AskVoteTransaction` to the others.
    pub async fn tpc_vote(&self, txn: &mut Transaction) -> Result<()> {
        if txn.voted {
            return Ok(());
        }
        let mut first_err = None;
        for t in txn.pending.drain(..) {
            if let Err(e) = join(t).await {
                first_err.get_or_insert(e);
            }
        }
        // Relocks asked by deadlock avoidance (possibly several rounds).
        loop {
            let relocks = self.take_relocks(txn.ttid);
            if relocks.is_empty() {
                break;
            }
            for t in relocks {
                if let Err(e) = join(t).await {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let partition = self.partition_of(txn.ttid.0)?;
        let meta_nodes = self.inner.shared().writable(partition);
        if meta_nodes.is_empty() {
            return Err(ClientError::NoStorage { partition });
        }
        let mut tasks: Vec<StoreTask> = Vec::new();
        for &nid in &meta_nodes {
            let conn = self.storage(nid).await?;
            let packet = AskStoreTransaction {
                ttid: txn.ttid,
                user: bytes(&txn.meta.user),
                description: bytes(&txn.meta.description),
                extension: bytes(&txn.meta.extension),
                oid_list: txn.stored.clone(),
                pack: None,
            };
            tasks.push(tokio::spawn(async move {
                match conn.ask(packet).await? {
                    Body::AnswerStoreTransaction(_) => Ok(()),
                    other => Err(remote(conn.peer(), "AskStoreTransaction", other)),
                }
            }));
        }
        for &nid in txn.involved.iter().filter(|n| !meta_nodes.contains(n)) {
            let conn = self.storage(nid).await?;
            let ttid = txn.ttid;
            tasks.push(tokio::spawn(async move {
                match conn.ask(AskVoteTransaction { ttid }).await? {
                    Body::AnswerVoteTransaction(_) => Ok(()),
                    other => Err(remote(conn.peer(), "AskVoteTransaction", other)),
                }
            }));
        }
        txn.involved.extend(meta_nodes);
        for t in tasks {
            if let Err(e) = join(t).await {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        txn.voted = true;
        Ok(())
    }

    /// Commits (voting first if needed): `AskFinishTransaction`; returns
    /// the transaction's tid.
    pub async fn tpc_finish(&self, mut txn: Transaction) -> Result<Tid> {
        if !txn.voted {
            if let Err(e) = self.tpc_vote(&mut txn).await {
                self.tpc_abort(txn).await;
                return Err(e);
            }
        }
        let np = u64::from(self.partitions().max(1));
        let oid_list: Vec<Oid> = txn
            .stored
            .iter()
            .filter(|o| !txn.deleted.contains(o))
            .copied()
            .collect();
        let deleted = txn.deleted.iter().map(|o| (o.0 % np) as u32).collect();
        let packet = AskFinishTransaction {
            ttid: txn.ttid,
            oid_list,
            deleted,
            checked: Vec::new(),
            pack: None,
        };
        match self.ask_master(packet).await? {
            Body::AnswerTransactionFinished(a) => {
                let mut sh = self.inner.shared();
                sh.last_tid = sh.last_tid.max(a.tid);
                Ok(a.tid)
            }
            other => Err(remote(
                self.inner.master().peer(),
                "AskFinishTransaction",
                other,
            )),
        }
    }

    fn take_relocks(&self, ttid: Tid) -> Vec<StoreTask> {
        let mut map = self.inner.relocks.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&ttid).unwrap_or_default()
    }

    /// Aborts: `AbortTransaction` to the storages written to, then to the
    /// master with their list.
    pub async fn tpc_abort(&self, mut txn: Transaction) {
        for t in txn.pending.drain(..).chain(self.take_relocks(txn.ttid)) {
            t.abort();
        }
        let conns: Vec<_> = {
            let map = self.inner.storages.lock().await;
            txn.involved
                .iter()
                .filter_map(|n| map.get(n).cloned())
                .collect()
        };
        for c in conns {
            let _ = c
                .notify(AbortTransaction {
                    ttid: txn.ttid,
                    uuid_list: Vec::new(),
                })
                .await;
        }
        let _ = self
            .inner
            .master()
            .notify(AbortTransaction {
                ttid: txn.ttid,
                uuid_list: txn.involved.iter().copied().collect(),
            })
            .await;
    }

    /// Undoes transaction `undone` inside `txn` (`AskObjectUndoSerial`,
    /// then stores with a back-pointer); returns the oids it changes.
    /// Undo conflicts are not resolved: they are [`ClientError::Undo`].
    pub async fn undo(&self, txn: &mut Transaction, undone: Tid) -> Result<Vec<Oid>> {
        let info = self.transaction_info(undone).await?;
        let mut by_partition: HashMap<u32, Vec<Oid>> = HashMap::new();
        for &oid in &info.oids {
            by_partition
                .entry(self.partition_of(oid.0)?)
                .or_default()
                .push(oid);
        }
        let ltid = Tid(self.last_tid().0.saturating_add(1));
        let mut undo = Vec::new();
        let mut partitions: Vec<_> = by_partition.into_iter().collect();
        partitions.sort_unstable_by_key(|(p, _)| *p);
        for (partition, oid_list) in partitions {
            let body = AskObjectUndoSerial {
                ttid: txn.ttid,
                ltid,
                undone_tid: undone,
                oid_list,
            }
            .into();
            let (answer, peer) = self.ask_read(partition, body).await?;
            match answer {
                Body::AnswerObjectUndoSerial(a) => undo.extend(a.object_tid_dict.0),
                Body::Error(e) if e.code == neo_proto::ErrorCode::OidNotFound => {
                    return Err(ClientError::Undo {
                        tid: undone,
                        reason: "non-undoable transaction".into(),
                    })
                }
                other => return Err(remote(&peer, "AskObjectUndoSerial", other)),
            }
        }
        let mut oids = Vec::with_capacity(undo.len());
        for (oid, (current, undo_serial, is_current)) in undo {
            if !is_current {
                return Err(ClientError::Undo {
                    tid: undone,
                    reason: format!("oid {oid} was modified by a later transaction"),
                });
            }
            let data = match undo_serial {
                Some(s) => match self.load_serial(oid, s).await {
                    Ok(r) => Some(r.data),
                    Err(ClientError::CreationUndone { .. }) => None,
                    Err(e) => return Err(e),
                },
                None => None,
            };
            self.store_raw(txn, oid, current, data.as_deref(), undo_serial)
                .await?;
            oids.push(oid);
        }
        Ok(oids)
    }
}

async fn join(t: StoreTask) -> Result<()> {
    match t.await {
        Ok(r) => r,
        Err(e) => Err(ClientError::Phase(if e.is_cancelled() {
            "store cancelled"
        } else {
            "store task panicked"
        })),
    }
}
