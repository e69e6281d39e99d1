//! The storage side of two-phase commit (NEO's `storage/transactions.py`):
//! transactions being stored, the write locks of their oids, the read locks
//! taken between lock and unlock, and the conflict check against the last
//! committed serial.
//!
//! No I/O here: operations take the [`Backend`] and answer what the caller
//! must send. A store that has to wait for another transaction's lock
//! answers [`LockError::Delay`]; the node queues it and retries it after
//! locks are released ([`TxnManager::abort`], [`TxnManager::relock`]).
//!
//! Deadlock avoidance follows NEO: the younger transaction (greater ttid)
//! waits; an older one finding an oid locked by a younger transaction that
//! has not voted yet asks that one (through its client, `NotifyDeadlock`)
//! to relock the oid, and waits too.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use fsformat::{Oid, Tid};
use neo_proto::NodeId;

use crate::storage::{Backend, Checksum, DataId, DbError, ObjectRef, PackOrder, TxnMeta};

/// A transaction being committed through this node.
#[derive(Debug)]
pub struct Transaction {
    /// The client that registered it.
    pub client: NodeId,
    /// The final tid, once locked.
    pub tid: Option<Tid>,
    /// 0: not voted; 1: voted without metadata; 2: voted with metadata.
    pub voted: u8,
    /// The metadata carries a pack order.
    pub pack: bool,
    /// Serials the client based its stores and checks on.
    pub serial_dict: BTreeMap<Oid, Tid>,
    /// Stored objects: `oid -> (data id, value serial of an undo)`.
    pub store_dict: BTreeMap<Oid, (Option<DataId>, Option<Tid>)>,
    /// Oids for which a deadlock notification was sent.
    pub deadlock: BTreeSet<Oid>,
}

impl Transaction {
    fn new(client: NodeId) -> Transaction {
        Transaction {
            client,
            tid: None,
            voted: 0,
            pack: false,
            serial_dict: BTreeMap::new(),
            store_dict: BTreeMap::new(),
            deadlock: BTreeSet::new(),
        }
    }
}

/// Why a lock could not be taken.
#[derive(Debug)]
pub enum LockError {
    /// Wait until the lock is released; retry keyed by this ttid. If
    /// `deadlock` is set, the client owning that (younger) transaction
    /// must be sent `NotifyDeadlock { ttid, oid }`.
    Delay {
        key: Tid,
        deadlock: Option<(NodeId, Tid, Oid)>,
    },
    /// The object changed since the serial the client read: the serial of
    /// the newer revision (NEO's `ConflictError`).
    Conflict(Tid),
    /// The transaction is unknown (aborted meanwhile).
    NotRegistered,
    /// The database failed (includes `NonReadableCell`, `UndoPack`).
    Db(DbError),
}

impl From<DbError> for LockError {
    fn from(e: DbError) -> Self {
        LockError::Db(e)
    }
}

/// A protocol violation by a peer (NEO's `ProtocolError`).
#[derive(Debug)]
pub enum TxnError {
    /// The peer sent something inconsistent: answer `PROTOCOL_ERROR`.
    Protocol(String),
    /// The database failed.
    Db(DbError),
}

impl From<DbError> for TxnError {
    fn from(e: DbError) -> Self {
        TxnError::Db(e)
    }
}

/// Object data as a client stores it; `checksum` is `None` for a deletion.
#[derive(Debug, Clone)]
pub struct StoreData {
    pub compression: u8,
    pub checksum: Option<Checksum>,
    pub data: Vec<u8>,
}

/// A pack order in a commit: `(oids of a partial pack, pack tid)`.
pub type PackRequest = (Option<Vec<Oid>>, Tid);

/// What a relock answers: `(serial, conflicting tid, data moved back)`.
pub type RelockConflict = (Tid, Tid, Option<(u8, Checksum, Vec<u8>)>);

/// NEO's `TransactionManager`, without the replication parts.
#[derive(Debug, Default)]
pub struct TxnManager {
    txns: BTreeMap<Tid, Transaction>,
    store_locks: HashMap<Oid, Tid>,
    load_locks: HashMap<Oid, Tid>,
    /// Partitions being replicated, and the number of partitions.
    replicating: (BTreeSet<u32>, u32),
}

impl TxnManager {
    /// No transaction.
    pub fn new() -> TxnManager {
        TxnManager::default()
    }

    /// Sets the partitions being replicated (NEO's `replicating` /
    /// `replicated`): stores and checks of their oids are taken without
    /// lock nor conflict check (we may lack data; a readable cell checks).
    /// Partitions that leave the set are replicated: the oids stored there
    /// without lock by pending transactions get locked now (by the
    /// youngest storer), as NEO's `_notifyReplicated` does.
    pub fn set_replicating(&mut self, partitions: BTreeSet<u32>, np: u32) {
        let (old, old_np) = std::mem::replace(&mut self.replicating, (partitions, np));
        if old_np == 0 {
            return;
        }
        for (&ttid, t) in self.txns.iter() {
            for &oid in t.serial_dict.keys() {
                let p = (oid.0 % u64::from(old_np)) as u32;
                if old.contains(&p) && !self.replicating.0.contains(&p) {
                    let lock = self.store_locks.entry(oid).or_insert(ttid);
                    *lock = (*lock).max(ttid);
                }
            }
        }
    }

    /// The transaction `ttid`, if registered.
    pub fn get(&self, ttid: Tid) -> Option<&Transaction> {
        self.txns.get(&ttid)
    }

    /// Number of transactions in progress.
    pub fn len(&self) -> usize {
        self.txns.len()
    }

    /// Whether no transaction is in progress.
    pub fn is_empty(&self) -> bool {
        self.txns.is_empty()
    }

    /// The transaction holding the write lock of `oid`.
    pub fn locking_tid(&self, oid: Oid) -> Option<Tid> {
        self.store_locks.get(&oid).copied()
    }

    /// Registers `ttid` for `client` if it is new (`register`).
    pub fn register(&mut self, client: NodeId, ttid: Tid) {
        self.txns.entry(ttid).or_insert_with(|| {
            log::debug!("register txn {ttid} for {client}");
            Transaction::new(client)
        });
    }

    /// What the transaction stored for `oid`: `(data id, value serial)`.
    pub fn object_from_transaction(
        &self,
        ttid: Tid,
        oid: Oid,
    ) -> Option<(Option<DataId>, Option<Tid>)> {
        self.txns.get(&ttid)?.store_dict.get(&oid).copied()
    }

    /// Whether `oid` is between lock and unlock (loads must wait).
    pub fn load_locked(&self, oid: Oid) -> bool {
        self.load_locks.contains_key(&oid)
    }

    /// The oids whose loads wait for an unlock.
    pub fn load_locked_oids(&self) -> impl Iterator<Item = Oid> + '_ {
        self.load_locks.keys().copied()
    }

    /// The oids `ttid` stored.
    pub fn stored_oids(&self, ttid: Tid) -> Vec<Oid> {
        self.txns
            .get(&ttid)
            .map(|t| t.store_dict.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Whether a transaction locked with a tid `<= tid` is not unlocked
    /// yet (`isLockedTid`).
    pub fn is_locked_tid(&self, tid: Tid) -> bool {
        self.txns.values().any(|t| t.tid.is_some_and(|t| t <= tid))
    }

    /// The final tid of `ttid` (`getFinalTID`): from memory, else from
    /// the database.
    pub fn final_tid(&self, db: &mut dyn Backend, ttid: Tid) -> Result<Option<Tid>, DbError> {
        match self.txns.get(&ttid) {
            Some(t) => Ok(t.tid),
            None => db.final_tid(ttid),
        }
    }

    /// Takes the write lock of `oid` for `ttid`, checking that `serial` is
    /// the current one (`lockObject`).
    fn lock_object(
        &mut self,
        db: &mut dyn Backend,
        ttid: Tid,
        serial: Tid,
        oid: Oid,
    ) -> Result<(), LockError> {
        let (replicating, np) = &self.replicating;
        if *np > 0 && replicating.contains(&((oid.0 % u64::from(*np)) as u32)) {
            log::debug!("transaction {ttid} storing {oid} without lock (replicating)");
            return Ok(());
        }
        let previous = if let Some(&locked) = self.store_locks.get(&oid) {
            let Some(other) = self.txns.get(&locked) else {
                // A lock without transaction cannot be: repair.
                self.store_locks.remove(&oid);
                return self.lock_object(db, ttid, serial, oid);
            };
            if locked < ttid || other.voted != 0 {
                log::info!("lock delayed for {oid}:{ttid} by {locked}");
                return Err(LockError::Delay {
                    key: ttid,
                    deadlock: None,
                });
            }
            if locked != ttid {
                // We are older: the younger transaction may hold locks we
                // wait upon; ask it to lock again.
                let client = other.client;
                let mut deadlock = None;
                if let Some(other) = self.txns.get_mut(&locked) {
                    if other.deadlock.insert(oid) {
                        log::info!("deadlock on {oid}:{ttid} with {locked}");
                        deadlock = Some((client, locked, oid));
                    }
                }
                return Err(LockError::Delay {
                    key: ttid,
                    deadlock,
                });
            }
            // Stored again by the same transaction: based on the undo
            // target if the previous store was an undo.
            let previous = self
                .txns
                .get(&ttid)
                .and_then(|t| t.store_dict.get(&oid))
                .and_then(|&(_, value_serial)| value_serial);
            match previous {
                None => {
                    log::info!("transaction {ttid} storing {oid} more than once");
                    return Ok(());
                }
                Some(p) => Some(p),
            }
        } else {
            db.last_object_tid(oid)?
        };
        if let Some(previous) = previous.filter(|&p| p != serial) {
            log::info!("conflict on {oid}:{ttid} with {previous}");
            return Err(LockError::Conflict(previous));
        }
        log::debug!("transaction {ttid} locking {oid}");
        self.store_locks.insert(oid, ttid);
        Ok(())
    }

    /// `readCurrent` (`checkCurrentSerial`).
    pub fn check_current_serial(
        &mut self,
        db: &mut dyn Backend,
        ttid: Tid,
        oid: Oid,
        serial: Tid,
    ) -> Result<(), LockError> {
        if !self.txns.contains_key(&ttid) {
            return Err(LockError::NotRegistered);
        }
        self.lock_object(db, ttid, serial, oid)?;
        if let Some(t) = self.txns.get_mut(&ttid) {
            t.serial_dict.insert(oid, serial);
        }
        Ok(())
    }

    /// Stores an object revision (`storeObject`): locks it, then holds its
    /// data in the database until vote/abort.
    pub fn store_object(
        &mut self,
        db: &mut dyn Backend,
        ttid: Tid,
        serial: Tid,
        oid: Oid,
        data: &StoreData,
        value_serial: Option<Tid>,
    ) -> Result<(), LockError> {
        if !self.txns.contains_key(&ttid) {
            return Err(LockError::NotRegistered);
        }
        self.lock_object(db, ttid, serial, oid)?;
        let stored_before = self
            .txns
            .get(&ttid)
            .is_some_and(|t| t.serial_dict.contains_key(&oid));
        if stored_before {
            self.unstore(db, ttid, oid)?;
        }
        let data_id = db.hold_data(
            data.checksum.as_ref(),
            oid,
            &data.data,
            data.compression,
            value_serial,
        )?;
        if let Some(t) = self.txns.get_mut(&ttid) {
            t.serial_dict.insert(oid, serial);
            t.store_dict.insert(oid, (data_id, value_serial));
        }
        Ok(())
    }

    /// First step of a relock after a deadlock notification
    /// (`relockObject` with `unlock`): releases the write lock of `oid`
    /// held by `ttid`, so that the older transaction waiting for it can
    /// take it (the caller retries the queued events, then calls
    /// [`relock`](Self::relock)).
    pub fn relock_release(&mut self, ttid: Tid, oid: Oid) {
        if let Some(t) = self.txns.get_mut(&ttid) {
            if t.serial_dict.contains_key(&oid) {
                t.deadlock.remove(&oid);
                if self.store_locks.get(&oid) == Some(&ttid) {
                    self.store_locks.remove(&oid);
                }
            }
        }
    }

    /// Takes the lock of `oid` again for `ttid` (`relockObject`).
    /// `Ok(Some(..))`: a conflict, with the stored data given back to the
    /// client (it may not have it anymore); `Ok(None)`: locked, or nothing
    /// to relock.
    pub fn relock(
        &mut self,
        db: &mut dyn Backend,
        ttid: Tid,
        oid: Oid,
    ) -> Result<Option<RelockConflict>, LockError> {
        let Some(t) = self.txns.get(&ttid) else {
            log::info!("forget relock of {oid} by {ttid}");
            return Ok(None);
        };
        let Some(&serial) = t.serial_dict.get(&oid) else {
            log::info!("no oid {oid} to relock for transaction {ttid}");
            return Ok(None);
        };
        match self.lock_object(db, ttid, serial, oid) {
            Ok(()) => Ok(None),
            Err(LockError::Conflict(tid)) => {
                let data = self.unstore(db, ttid, oid)?;
                Ok(Some((serial, tid, data)))
            }
            Err(e) => Err(e),
        }
    }

    /// Forgets what the transaction stored for `oid`, giving back its data.
    fn unstore(
        &mut self,
        db: &mut dyn Backend,
        ttid: Tid,
        oid: Oid,
    ) -> Result<Option<(u8, Checksum, Vec<u8>)>, DbError> {
        let Some(t) = self.txns.get_mut(&ttid) else {
            return Ok(None);
        };
        t.serial_dict.remove(&oid);
        let Some((data_id, _)) = t.store_dict.remove(&oid) else {
            return Ok(None);
        };
        let Some(data_id) = data_id else {
            return Ok(None);
        };
        let data = db.load_data(data_id)?;
        db.release_data(&[data_id], true)?;
        Ok(data)
    }

    /// Votes (`vote`): writes the objects (and with `meta` the metadata and
    /// its pack order) to the temporary tables, and commits.
    pub fn vote(
        &mut self,
        db: &mut dyn Backend,
        ttid: Tid,
        meta: Option<(TxnMeta, Option<PackRequest>)>,
    ) -> Result<(), TxnError> {
        let Some(t) = self.txns.get_mut(&ttid) else {
            return Err(TxnError::Protocol(format!("unknown ttid {ttid}")));
        };
        let objects: Vec<ObjectRef> = t
            .store_dict
            .iter()
            .map(|(&oid, &(data_id, value_tid))| ObjectRef {
                oid,
                data_id,
                value_tid,
            })
            .collect();
        let mut pack = None;
        let meta = match meta {
            Some((meta, p)) => {
                if meta.oids.len() >= 0x20_0000
                    || p.as_ref()
                        .and_then(|(oids, _)| oids.as_ref())
                        .is_some_and(|o| o.len() >= 0x20_0000)
                {
                    return Err(TxnError::Protocol(
                        "Too many modified OIDs (the default storage backend \
                         has a limitation of 2^21-1)"
                            .into(),
                    ));
                }
                t.voted = 2;
                pack = p;
                Some(meta)
            }
            None => {
                t.voted = 1;
                None
            }
        };
        db.store_transaction(ttid, &objects, meta.as_ref(), true)?;
        if let Some((oids, pack_tid)) = pack {
            t.pack = true;
            db.store_pack_order(&PackOrder {
                id: ttid,
                approved: None,
                partial: oids.as_ref().is_some_and(|o| !o.is_empty()),
                oids,
                pack_tid,
            })?;
        }
        db.commit()?;
        Ok(())
    }

    /// Locks a voted transaction under its final tid (`lock`): loads of its
    /// oids wait from now until unlock; with the metadata here, the lock is
    /// made durable (committed) before returning.
    pub fn lock(
        &mut self,
        db: &mut dyn Backend,
        ttid: Tid,
        tid: Tid,
        pack: bool,
    ) -> Result<(), TxnError> {
        let Some(t) = self.txns.get_mut(&ttid) else {
            return Err(TxnError::Protocol(format!("unknown ttid {ttid}")));
        };
        if t.tid.is_some() {
            return Err(TxnError::Protocol(format!("{ttid} is already locked")));
        }
        if tid < ttid {
            return Err(TxnError::Protocol(format!("tid {tid} < ttid {ttid}")));
        }
        if t.voted == 0 {
            return Err(TxnError::Protocol(format!("{ttid} is not voted")));
        }
        t.tid = Some(tid);
        for &oid in t.store_dict.keys() {
            self.load_locks.insert(oid, ttid);
        }
        if t.voted == 2 {
            db.lock_transaction(tid, ttid, pack)?;
        }
        Ok(())
    }

    /// Makes a locked transaction visible (`unlock`) and forgets it; the
    /// caller commits later (NEO defers this commit by up to a second).
    pub fn unlock(&mut self, db: &mut dyn Backend, ttid: Tid) -> Result<(), TxnError> {
        let Some(t) = self.txns.get(&ttid) else {
            return Err(TxnError::Protocol(format!("unknown ttid {ttid}")));
        };
        let Some(tid) = t.tid else {
            return Err(TxnError::Protocol(format!("{ttid} is not locked")));
        };
        db.unlock_transaction(tid, ttid, t.voted == 2, !t.store_dict.is_empty(), t.pack)?;
        self.abort(db, ttid, true)?;
        Ok(())
    }

    /// Aborts `ttid` (`abort`): drops its temporary rows and data and
    /// releases its locks, unless it is locked (then only with
    /// `even_if_locked`, after unlock, without touching the database).
    /// Returns whether something was released (queued events may go on).
    pub fn abort(
        &mut self,
        db: &mut dyn Backend,
        ttid: Tid,
        even_if_locked: bool,
    ) -> Result<bool, DbError> {
        let Some(t) = self.txns.get(&ttid) else {
            return Ok(false);
        };
        let locked = t.tid.is_some();
        if locked && !even_if_locked {
            return Ok(false);
        }
        if !locked {
            log::debug!("abort txn {ttid}");
            let ids: Vec<DataId> = t.store_dict.values().filter_map(|v| v.0).collect();
            db.abort_transaction(ttid)?;
            db.release_data(&ids, true)?;
            db.commit()?;
        }
        let Some(t) = self.txns.remove(&ttid) else {
            return Ok(false);
        };
        for oid in t.serial_dict.keys() {
            if locked && self.load_locks.get(oid) == Some(&ttid) {
                self.load_locks.remove(oid);
            }
            if self.store_locks.get(oid) == Some(&ttid) {
                self.store_locks.remove(oid);
            }
        }
        Ok(true)
    }

    /// Aborts the transactions of a client (`abortFor`): the non-voted
    /// ones, or all the non-locked ones with `even_if_voted`.
    pub fn abort_for(
        &mut self,
        db: &mut dyn Backend,
        client: NodeId,
        even_if_voted: bool,
    ) -> Result<bool, DbError> {
        let ttids: Vec<Tid> = self
            .txns
            .iter()
            .filter(|(_, t)| t.client == client && (even_if_voted || t.voted == 0))
            .map(|(&ttid, _)| ttid)
            .collect();
        let mut released = false;
        for ttid in ttids {
            released |= self.abort(db, ttid, false)?;
        }
        Ok(released)
    }

    /// Forgets what in-progress transactions did in partitions this node
    /// lost (`discarded`): their locks, stores and data.
    pub fn discarded(
        &mut self,
        db: &mut dyn Backend,
        np: u32,
        partitions: &BTreeSet<u32>,
    ) -> Result<(), DbError> {
        if np == 0 {
            return Ok(());
        }
        let lost = |oid: &Oid| partitions.contains(&((oid.0 % u64::from(np)) as u32));
        self.load_locks.retain(|oid, _| !lost(oid));
        self.store_locks.retain(|oid, _| !lost(oid));
        let mut ids = Vec::new();
        for t in self.txns.values_mut() {
            t.serial_dict.retain(|oid, _| !lost(oid));
            t.store_dict.retain(|oid, (data_id, _)| {
                if lost(oid) {
                    ids.extend(*data_id);
                    false
                } else {
                    true
                }
            });
        }
        db.release_data(&ids, true)
    }

    /// The ttids in progress, with their final tid if locked.
    pub fn transactions(&self) -> impl Iterator<Item = (Tid, &Transaction)> {
        self.txns.iter().map(|(&k, v)| (k, v))
    }
}
