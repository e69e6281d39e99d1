//! The master's transaction manager (NEO's master/transactions.py): ttids
//! handed out by AskBeginTransaction, oids by AskNewOIDs, and the commit
//! queue: a transaction asked to finish gets its final tid and waits for
//! every involved storage to lock it; transactions are then committed in
//! tid order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use fsformat::{Oid, Tid};
use neo_proto::{NodeId, Offset, PackOrder, MAX_TID, ZERO_OID};

use super::tid::{add_tid, tid_from_time};

/// A transaction between AskBeginTransaction and its commit or abort.
#[derive(Debug, Clone)]
pub struct Txn {
    /// The client that began it (`None` once orphaned: its client left
    /// after asking to finish).
    pub client: Option<NodeId>,
    /// Readiness counter of the storages when it began.
    pub storage_readiness: u64,
    /// Its temporary id.
    pub ttid: Tid,
    /// Its final id, once AskFinishTransaction was accepted.
    pub tid: Option<Tid>,
    /// Oids it modified (for InvalidateObjects).
    pub oid_list: Vec<Oid>,
    /// Partitions it modified.
    pub partition_list: Vec<Offset>,
    /// Storages asked to lock it.
    pub involved: BTreeSet<NodeId>,
    /// Storages that have not answered AnswerInformationLocked yet.
    pub locking: BTreeSet<NodeId>,
    /// Id of the client's AskFinishTransaction.
    pub msg_id: u32,
    /// Storages reported failed by the client (FailedVote).
    pub failed: BTreeSet<NodeId>,
    /// Storages waiting for its end (AskUnfinishedTransactions).
    pub notification: BTreeSet<NodeId>,
    /// Clients waiting for its final tid (AskFinalTID): (client, request id).
    pub final_tid_waiters: Vec<(NodeId, u32)>,
    /// Pack order of the commit, if any.
    pub pack: Option<PackOrder>,
}

/// Why a transaction request is refused (NEO's ProtocolError messages).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TxnError {
    /// "unknown ttid ..."
    UnknownTtid(Tid),
    /// A tid was asked while other transactions run, or the reverse.
    ConcurrentWithTid,
    /// A tid not above the last committed one was asked.
    TidNotNewer,
    /// Abort after AskFinishTransaction.
    CommitRequested(Tid),
}

impl std::fmt::Display for TxnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TxnError::UnknownTtid(t) => write!(f, "unknown ttid {:016x}", t.0),
            TxnError::ConcurrentWithTid => f.write_str(
                "There can't be concurrent transactions when a TID is specified for any of them.",
            ),
            TxnError::TidNotNewer => {
                f.write_str("new TID must be greater than the last committed one")
            }
            TxnError::CommitRequested(t) => {
                write!(f, "commit already requested for ttid {:016x}", t.0)
            }
        }
    }
}

/// The transaction manager.
#[derive(Debug, Clone)]
pub struct TransactionManager {
    txns: BTreeMap<Tid, Txn>,
    queue: VecDeque<Tid>,
    last_oid: Oid,
    first_tid: Tid,
    first_unlocked: bool,
}

impl Default for TransactionManager {
    fn default() -> Self {
        TransactionManager {
            txns: BTreeMap::new(),
            queue: VecDeque::new(),
            last_oid: ZERO_OID,
            first_tid: MAX_TID,
            first_unlocked: false,
        }
    }
}

impl TransactionManager {
    /// Forgets everything (start of verification).
    pub fn reset(&mut self) {
        *self = TransactionManager::default();
    }

    /// The transaction of this ttid.
    pub fn get(&self, ttid: Tid) -> Option<&Txn> {
        self.txns.get(&ttid)
    }

    /// Same, mutable.
    pub fn get_mut(&mut self, ttid: Tid) -> Option<&mut Txn> {
        self.txns.get_mut(&ttid)
    }

    /// Every pending transaction.
    pub fn iter(&self) -> impl Iterator<Item = &Txn> {
        self.txns.values()
    }

    /// Whether any transaction is pending.
    pub fn has_pending(&self) -> bool {
        !self.txns.is_empty()
    }

    /// The last oid given or stored.
    pub fn last_oid(&self) -> Oid {
        self.last_oid
    }

    /// Raises the last oid (from AnswerLastIDs, or stored oids).
    pub fn set_last_oid(&mut self, oid: Option<Oid>) {
        if let Some(o) = oid {
            if o > self.last_oid {
                self.last_oid = o;
            }
        }
    }

    /// The first tid of the database (MAX_TID if empty).
    pub fn first_tid(&self) -> Tid {
        self.first_tid
    }

    /// Lowers the first tid.
    pub fn set_first_tid(&mut self, tid: Option<Tid>) {
        if let Some(t) = tid {
            if t < self.first_tid {
                self.first_tid = t;
            }
        }
    }

    /// The next `n` oids, `None` if the oid space is exhausted (or `n` is
    /// above 2^20).
    pub fn new_oids(&mut self, n: u32) -> Option<Vec<Oid>> {
        if n > (1 << 20) {
            return None;
        }
        let first = self.last_oid.0.checked_add(1)?;
        let list: Vec<Oid> = if n == 0 {
            Vec::new()
        } else {
            let last = first.checked_add(u64::from(n) - 1)?;
            self.last_oid = Oid(last);
            (first..=last).map(Oid).collect()
        };
        Some(list)
    }

    /// The last tid used: the greatest pending ttid or queued tid, else the
    /// last committed one.
    pub fn last_tid(&self, last_transaction: Tid) -> Tid {
        let Some((&max_ttid, _)) = self.txns.last_key_value() else {
            return last_transaction;
        };
        if let Some(tid) = self
            .queue
            .back()
            .and_then(|t| self.txns.get(t))
            .and_then(|t| t.tid)
        {
            return max_ttid.max(tid);
        }
        max_ttid
    }

    /// NEO's `_nextTID`: a tid from `now`, above the last tid; with `ttid`,
    /// adjusted so that `tid % divisor == ttid % divisor`.
    pub fn next_tid(
        &self,
        now: f64,
        last_transaction: Tid,
        ttid: Option<Tid>,
        divisor: u32,
    ) -> Tid {
        let mut tid = tid_from_time(now);
        let min_tid = self.last_tid(last_transaction);
        if tid <= min_tid {
            if ttid == Some(min_tid) {
                return min_tid;
            }
            tid = add_tid(min_tid, 1);
        }
        if let Some(ttid) = ttid {
            let divisor = u64::from(divisor.max(1));
            let remainder = (ttid.0 % divisor) as i64;
            let delta = remainder - (tid.0 % divisor) as i64;
            if delta != 0 {
                tid = add_tid(tid, delta);
                if tid <= min_tid {
                    tid = add_tid(tid, divisor as i64);
                }
            }
        }
        tid
    }

    /// AskBeginTransaction: a new ttid (or the asked tid).
    pub fn begin(
        &mut self,
        client: NodeId,
        storage_readiness: u64,
        tid: Option<Tid>,
        now: f64,
        last_transaction: Tid,
    ) -> Result<Tid, TxnError> {
        let ttid = match tid {
            None => {
                if self.txns.len() == 1
                    && self.queue.len() == 1
                    && self.txns.values().all(|t| t.tid.is_none())
                {
                    return Err(TxnError::ConcurrentWithTid);
                }
                self.next_tid(now, last_transaction, None, 1)
            }
            Some(_) if !self.txns.is_empty() => return Err(TxnError::ConcurrentWithTid),
            Some(t) if t <= last_transaction => return Err(TxnError::TidNotNewer),
            Some(t) => {
                self.queue.push_back(t);
                t
            }
        };
        self.txns.insert(
            ttid,
            Txn {
                client: Some(client),
                storage_readiness,
                ttid,
                tid: None,
                oid_list: Vec::new(),
                partition_list: Vec::new(),
                involved: BTreeSet::new(),
                locking: BTreeSet::new(),
                msg_id: 0,
                failed: BTreeSet::new(),
                notification: BTreeSet::new(),
                final_tid_waiters: Vec::new(),
                pack: None,
            },
        );
        Ok(ttid)
    }

    /// Gives `ttid` its final tid and queues it; the caller has checked it
    /// exists and computed `involved`.
    #[allow(clippy::too_many_arguments)]
    pub fn prepare(
        &mut self,
        ttid: Tid,
        now: f64,
        last_transaction: Tid,
        np: u32,
        oid_list: Vec<Oid>,
        partition_list: Vec<Offset>,
        involved: BTreeSet<NodeId>,
        msg_id: u32,
        pack: Option<PackOrder>,
    ) -> Result<Tid, TxnError> {
        if !self.txns.contains_key(&ttid) {
            return Err(TxnError::UnknownTtid(ttid));
        }
        let tid = if self.queue.contains(&ttid) {
            ttid
        } else {
            let tid = self.next_tid(now, last_transaction, Some(ttid), np);
            self.queue.push_back(ttid);
            tid
        };
        let max_oid = oid_list.iter().max().copied();
        if let Some(txn) = self.txns.get_mut(&ttid) {
            txn.tid = Some(tid);
            txn.oid_list = oid_list;
            txn.partition_list = partition_list;
            txn.locking = involved.clone();
            txn.involved = involved;
            txn.msg_id = msg_id;
            txn.pack = pack;
        }
        self.set_last_oid(max_oid);
        Ok(tid)
    }

    /// AbortTransaction from the client: removes it; returns the storages
    /// waiting for it.
    pub fn abort(&mut self, ttid: Tid) -> Result<BTreeSet<NodeId>, TxnError> {
        let txn = self.txns.get(&ttid).ok_or(TxnError::UnknownTtid(ttid))?;
        if txn.tid.is_some() {
            return Err(TxnError::CommitRequested(ttid));
        }
        Ok(self
            .remove(ttid)
            .map(|t| t.notification)
            .unwrap_or_default())
    }

    fn remove(&mut self, ttid: Tid) -> Option<Txn> {
        self.queue.retain(|t| *t != ttid);
        self.txns.remove(&ttid)
    }

    /// A storage locked `ttid`; returns the transactions that can now be
    /// committed, in order.
    pub fn lock(&mut self, ttid: Tid, storage: NodeId) -> Vec<Txn> {
        let Some(txn) = self.txns.get_mut(&ttid) else {
            return Vec::new();
        };
        txn.locking.remove(&storage);
        if txn.locking.is_empty() && self.queue.front() == Some(&ttid) {
            return self.unlock_pending();
        }
        Vec::new()
    }

    /// A storage is gone: stop waiting for it; returns the transactions
    /// that can now be committed.
    pub fn storage_lost(&mut self, storage: NodeId) -> Vec<Txn> {
        let mut unlock = false;
        let front = self.queue.front().copied();
        for (ttid, txn) in self.txns.iter_mut() {
            txn.notification.remove(&storage);
            if txn.tid.is_some() {
                txn.locking.remove(&storage);
                txn.involved.remove(&storage);
                if txn.locking.is_empty() && front == Some(*ttid) {
                    unlock = true;
                }
            }
        }
        if unlock {
            self.unlock_pending()
        } else {
            Vec::new()
        }
    }

    /// A client is gone: its transactions not yet finishing are aborted
    /// (returned with the storages to notify), the others are orphaned.
    pub fn client_lost(&mut self, client: NodeId) -> Vec<(Tid, BTreeSet<NodeId>)> {
        let mut aborted = Vec::new();
        let ttids: Vec<Tid> = self.txns.keys().copied().collect();
        for ttid in ttids {
            let Some(txn) = self.txns.get_mut(&ttid) else {
                continue;
            };
            txn.final_tid_waiters.retain(|(c, _)| *c != client);
            if txn.client == Some(client) {
                if txn.tid.is_some() {
                    txn.client = None;
                } else if let Some(t) = self.remove(ttid) {
                    aborted.push((ttid, t.notification));
                }
            }
        }
        aborted
    }

    /// Registers a storage to be notified of the end of every pending
    /// transaction; returns their ttids (AnswerUnfinishedTransactions).
    pub fn register_for_notification(&mut self, storage: NodeId) -> Vec<Tid> {
        for txn in self.txns.values_mut() {
            txn.notification.insert(storage);
        }
        self.txns.keys().copied().collect()
    }

    fn unlock_pending(&mut self) -> Vec<Txn> {
        let mut done = Vec::new();
        while let Some(&ttid) = self.queue.front() {
            let ready = self
                .txns
                .get(&ttid)
                .is_none_or(|t| t.locking.is_empty() && t.tid.is_some());
            if !ready {
                break;
            }
            self.queue.pop_front();
            if let Some(txn) = self.txns.remove(&ttid) {
                if !self.first_unlocked {
                    self.first_unlocked = true;
                    self.set_first_tid(txn.tid);
                }
                done.push(txn);
            }
        }
        done
    }

    /// AskFinalTID: `Some(tid)` to answer now, `None` if the transaction is
    /// being finished (the caller registers a waiter).
    pub fn final_tid(&self, ttid: Tid, last_transaction: Tid) -> Option<Option<Tid>> {
        if self.last_tid(last_transaction) < ttid {
            Some(None)
        } else if self.txns.contains_key(&ttid) {
            None
        } else {
            Some(Some(MAX_TID))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neo_proto::{NodeType, ZERO_TID};

    fn c(n: u32) -> NodeId {
        NodeId::new(NodeType::Client, n)
    }
    fn s(n: u32) -> NodeId {
        NodeId::new(NodeType::Storage, n)
    }

    #[test]
    fn tids_increase_and_keep_partition() {
        let mut tm = TransactionManager::default();
        let now = 1_795_542_388.0;
        let t1 = tm.begin(c(1), 1, None, now, ZERO_TID).unwrap();
        // Same time again: strictly greater.
        let t2 = tm.begin(c(2), 1, None, now, ZERO_TID).unwrap();
        assert!(t2 > t1);
        let tid = tm
            .prepare(
                t1,
                now,
                ZERO_TID,
                4,
                vec![Oid(3)],
                vec![3],
                [s(1)].into(),
                7,
                None,
            )
            .unwrap();
        assert!(tid > t2);
        assert_eq!(tid.0 % 4, t1.0 % 4);
        assert_eq!(tm.last_oid(), Oid(3));
        assert_eq!(tm.new_oids(2), Some(vec![Oid(4), Oid(5)]));
        assert_eq!(tm.new_oids(0), Some(vec![]));
        assert_eq!(tm.last_oid(), Oid(5));
        // t1 is locked by its storage: committed.
        let done = tm.lock(t1, s(1));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].tid, Some(tid));
        assert_eq!(tm.first_tid(), tid);
        assert_eq!(tm.abort(t2).unwrap(), BTreeSet::new());
        assert!(!tm.has_pending());
        assert_eq!(tm.abort(t2), Err(TxnError::UnknownTtid(t2)));
    }

    #[test]
    fn commits_in_tid_order_and_storage_loss_unblocks() {
        let mut tm = TransactionManager::default();
        let now = 1_795_542_388.0;
        let a = tm.begin(c(1), 1, None, now, ZERO_TID).unwrap();
        let b = tm.begin(c(2), 1, None, now, ZERO_TID).unwrap();
        tm.prepare(
            a,
            now,
            ZERO_TID,
            1,
            vec![],
            vec![],
            [s(1), s(2)].into(),
            1,
            None,
        )
        .unwrap();
        tm.prepare(b, now, ZERO_TID, 1, vec![], vec![], [s(1)].into(), 1, None)
            .unwrap();
        // b is locked first but waits for a.
        assert!(tm.lock(b, s(1)).is_empty());
        assert!(tm.lock(a, s(1)).is_empty());
        let done = tm.storage_lost(s(2));
        assert_eq!(done.iter().map(|t| t.ttid).collect::<Vec<_>>(), [a, b]);
    }

    #[test]
    fn client_lost_aborts_or_orphans() {
        let mut tm = TransactionManager::default();
        let now = 1_795_542_388.0;
        let a = tm.begin(c(1), 1, None, now, ZERO_TID).unwrap();
        let b = tm.begin(c(1), 1, None, now, ZERO_TID).unwrap();
        tm.register_for_notification(s(1));
        tm.prepare(b, now, ZERO_TID, 1, vec![], vec![], [s(1)].into(), 1, None)
            .unwrap();
        let aborted = tm.client_lost(c(1));
        assert_eq!(aborted, [(a, [s(1)].into())]);
        assert_eq!(tm.get(b).and_then(|t| t.client), None);
        assert_eq!(tm.final_tid(b, ZERO_TID), None);
        assert_eq!(tm.final_tid(Tid(1), ZERO_TID), Some(Some(MAX_TID)));
        assert_eq!(
            tm.begin(c(2), 1, Some(Tid(5)), now, ZERO_TID),
            Err(TxnError::ConcurrentWithTid)
        );
        // The oid space has an end.
        tm.set_last_oid(Some(Oid(u64::MAX - 1)));
        assert_eq!(tm.new_oids(1), Some(vec![Oid(u64::MAX)]));
        assert_eq!(tm.new_oids(1), None);
    }
}
