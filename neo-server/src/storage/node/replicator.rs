//! Our own replication (the fetching half of NEO's `storage/replicator.py`
//! and `handlers/storage.py`): every `OUT_OF_DATE` cell of this node is
//! filled from a storage node that has the partition readable.
//!
//! For new out-of-date cells the master is asked which transactions are
//! unfinished (`AskUnfinishedTransactions`): the partition is replicated
//! up to the last committed tid it answers, or, if transactions were in
//! progress, up to the tid `NotifyTransactionFinished` gives once they are
//! all done (they may have stored to the other cells only). Transactions
//! that start later store to us directly: meanwhile their stores to a
//! replicating partition are taken without lock nor conflict check
//! (`TxnManager::replicating`; a readable cell does the check).
//!
//! One partition at a time: identify to the source as STORAGE with our
//! node id, `AskFetchTransactions` (answered by `AddTransaction`s with the
//! request's id, then the answer: tids to delete and where to go on), then
//! `AskFetchObjects` likewise with `AddObject`; commit after each chunk
//! (the cell's tid records where to resume), then `NotifyReplicationDone`.
//!
//! In a backup cluster (NEO's `Replicator.backup`) the master orders, with
//! `Replicate`, readable cells to be fetched from an upstream storage up to
//! a tid: the same fetching, identified anonymously (no node id, the
//! upstream cluster's name); an order without source only moves the cell's
//! backup tid (nothing of it changed upstream). The database's `backup_tid`
//! is the last tid every readable cell of ours has.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use neo_proto::{
    AddObject, AddTransaction, Address, AnswerTIDs, AskFetchObjects, AskFetchTransactions,
    AskUnfinishedTransactions, Body, Bytes, ErrorCode, Map, NodeId, NodeState, NodeType,
    NotifyReplicationDone, Oid, Packet, RequestIdentification, Tid,
};

use super::{Fail, StorageNode};
use crate::runtime::{ConnId, Outbox};
use crate::storage::{Backend, CellNext, DbError, ObjectRef, TxnMeta};

/// How many transactions or objects one fetch asks (NEO's `FETCH_COUNT`).
pub const FETCH_COUNT: u32 = 1000;
/// How long to wait before trying a partition again after a failure.
pub const REPLICATION_RETRY: Duration = Duration::from_secs(1);
/// Timer: try replication again.
pub(super) const TIMER_REPLICATE: u64 = 4;
/// Connection token of replication connections.
pub(super) const TOKEN_REPLICATION: u64 = 2;

/// An out-of-date cell of ours.
#[derive(Debug, Clone)]
struct Part {
    /// First tid not replicated yet.
    next_tid: Tid,
    /// Replicate up to this tid (`None`: not known yet).
    target: Option<Tid>,
    /// Greatest unfinished transaction we wait for, if any.
    max_ttid: Option<Tid>,
}

/// A readable cell of a backup cluster.
#[derive(Debug, Clone)]
struct BackupPart {
    /// First tid not fetched yet.
    next_tid: Tid,
    /// Fetch up to this tid from this upstream storage of that cluster.
    order: Option<(Tid, SocketAddr, String)>,
}

/// Where a partition is replicated from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// A storage node of our cluster.
    Node(NodeId),
    /// A storage node of the upstream cluster (address, cluster name).
    Upstream(SocketAddr, String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Node(nid) => write!(f, "{nid}"),
            Source::Upstream(addr, name) => write!(f, "upstream {name:?} {addr}"),
        }
    }
}

/// Where the current replication is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// TCP connection under way.
    Connecting,
    /// RequestIdentification sent with this id.
    Identifying(u32),
    /// AskFetchTransactions sent with this id.
    Transactions(u32),
    /// AskFetchObjects sent with this id.
    Objects(u32),
}

/// The partition being replicated now.
#[derive(Debug, Clone)]
struct Current {
    partition: u32,
    conn: ConnId,
    source: Source,
    step: Step,
    /// The first tid of this round (objects start there).
    min_tid: Tid,
    /// The last tid of this round.
    max_tid: Tid,
}

/// The replicator's state.
#[derive(Debug, Default)]
pub(super) struct Replicator {
    parts: BTreeMap<u32, Part>,
    /// Readable cells of a backup cluster (empty out of backup mode).
    backup: BTreeMap<u32, BackupPart>,
    /// Unfinished transactions (ttids) we wait for.
    ttids: BTreeSet<Tid>,
    /// AskUnfinishedTransactions in flight: id -> partitions.
    asked: BTreeMap<u32, Vec<u32>>,
    current: Option<Current>,
    /// An identified connection kept between partitions: `(source, conn)`
    /// (NEO reuses it for the next partition from the same node).
    idle: Option<(Source, ConnId)>,
    retry_armed: bool,
    /// How many records a fetch asks (tests: small chunks).
    fetch_count: Option<u32>,
}

impl Replicator {
    /// Whether `conn` is our replication connection.
    pub(super) fn owns(&self, conn: ConnId) -> bool {
        self.current.as_ref().is_some_and(|c| c.conn == conn)
            || self.idle.as_ref().is_some_and(|(_, c)| *c == conn)
    }

    /// Whether `id` is one of our AskUnfinishedTransactions.
    pub(super) fn asked_unfinished(&self, id: u32) -> bool {
        self.asked.contains_key(&id)
    }

    fn fetch_count(&self) -> u32 {
        self.fetch_count.unwrap_or(FETCH_COUNT)
    }

    /// The source of the connection kept between partitions, if any.
    #[cfg(test)]
    pub(super) fn idle_source(&self) -> Option<NodeId> {
        match &self.idle {
            Some((Source::Node(nid), _)) => Some(*nid),
            _ => None,
        }
    }

    /// Partitions still to replicate.
    pub(super) fn outdated(&self) -> Vec<u32> {
        self.parts.keys().copied().collect()
    }
}

impl<B: Backend> StorageNode<B> {
    /// Forgets replication (the node leaves operation).
    pub(super) fn replication_reset(&mut self, out: &mut Outbox) {
        if let Some(c) = self.replicator.current.take() {
            out.close(c.conn);
        }
        if let Some((_, conn)) = self.replicator.idle.take() {
            out.close(conn);
        }
        let (retry_armed, fetch_count) = (self.replicator.retry_armed, self.replicator.fetch_count);
        self.replicator = Replicator {
            retry_armed,
            fetch_count,
            ..Replicator::default()
        };
        self.tm.set_replicating(BTreeSet::new(), 0);
    }

    /// Fetches `count` records at a time instead of [`FETCH_COUNT`].
    #[cfg(test)]
    pub(super) fn set_fetch_count(&mut self, count: u32) {
        self.replicator.fetch_count = Some(count);
    }

    /// Compares our out-of-date cells with what is being replicated
    /// (NEO's `populate` and `notifyPartitionChanges`): new ones are
    /// registered (and the master asked about unfinished transactions),
    /// cells no longer out of date are forgotten.
    pub(super) fn replication_update(&mut self, out: &mut Outbox) -> Result<(), DbError> {
        if !self.operational {
            return Ok(());
        }
        let Some(master) = self.master_conn() else {
            return Ok(());
        };
        let mut outdated = BTreeMap::new();
        let mut backup = BTreeSet::new();
        for (offset, next) in self.db.cell_next_tids()? {
            match next {
                CellNext::Replicate { next_tid } => {
                    outdated.insert(offset, next_tid);
                }
                CellNext::Backup { .. } => {
                    backup.insert(offset);
                }
                CellNext::Readable => {}
            }
        }
        self.replicator.backup.retain(|p, _| backup.contains(p));
        if self.db.backup_tid()?.is_some() {
            // A cell that became readable while backing up was filled from
            // a storage of ours, complete only up to its own backup tid:
            // the next fetch from upstream compares it from the start.
            for p in backup {
                self.replicator.backup.entry(p).or_insert_with(|| {
                    log::info!("partition {p} readable while backing up");
                    BackupPart {
                        next_tid: Tid(0),
                        order: None,
                    }
                });
            }
        }
        let gone: Vec<u32> = self
            .replicator
            .parts
            .keys()
            .filter(|p| !outdated.contains_key(p))
            .copied()
            .collect();
        for p in gone {
            self.replicator.parts.remove(&p);
            if self
                .replicator
                .current
                .as_ref()
                .is_some_and(|c| c.partition == p)
            {
                log::info!("partition {p} is no longer out of date: replication aborted");
                if let Some(c) = self.replicator.current.take() {
                    out.close(c.conn);
                }
            }
        }
        let mut added = Vec::new();
        for (p, next_tid) in outdated {
            if let std::collections::btree_map::Entry::Vacant(e) = self.replicator.parts.entry(p) {
                e.insert(Part {
                    next_tid,
                    target: None,
                    max_ttid: None,
                });
                added.push(p);
            }
        }
        let np = self.db.partition_view()?.np;
        let replicating = self.replicator.parts.keys().copied().collect();
        self.tm.set_replicating(replicating, np);
        if !added.is_empty() {
            log::info!("partitions to replicate: {added:?}");
            let id = out.ask(
                master,
                AskUnfinishedTransactions {
                    offset_list: added.clone(),
                },
            );
            self.replicator.asked.insert(id, added);
        }
        self.next_partition(out);
        Ok(())
    }

    /// AnswerUnfinishedTransactions (`setUnfinishedTIDList`).
    pub(super) fn replication_unfinished(
        &mut self,
        id: u32,
        max_tid: Tid,
        ttid_list: &[Tid],
        out: &mut Outbox,
    ) {
        let Some(offsets) = self.replicator.asked.remove(&id) else {
            return;
        };
        self.replicator.ttids.extend(ttid_list.iter().copied());
        let max_ttid = ttid_list.iter().max().copied();
        for p in offsets {
            if let Some(part) = self.replicator.parts.get_mut(&p) {
                part.max_ttid = max_ttid;
                part.target = Some(max_tid);
            }
        }
        self.next_partition(out);
    }

    /// NotifyTransactionFinished, or AbortTransaction without `max_tid`
    /// (`transactionFinished`): a transaction we waited for is over;
    /// replicate up to `max_tid`. A partition already replicated whose
    /// last awaited transactions were aborted is done.
    pub(super) fn replication_txn_finished(
        &mut self,
        ttid: Tid,
        max_tid: Option<Tid>,
        out: &mut Outbox,
    ) {
        if !self.replicator.ttids.remove(&ttid) {
            return;
        }
        let min_ttid = self.replicator.ttids.iter().next().copied();
        let current = self.replicator.current.as_ref().map(|c| c.partition);
        let mut done = Vec::new();
        for (&offset, part) in self.replicator.parts.iter_mut() {
            let Some(m) = part.max_ttid else { continue };
            if max_tid.is_some() {
                part.target = max_tid;
            }
            if min_ttid.is_none_or(|min| m < min) {
                part.max_ttid = None;
                if part.target.is_none() && current != Some(offset) && part.next_tid > Tid(0) {
                    done.push((offset, Tid(part.next_tid.0 - 1)));
                }
            }
        }
        for (offset, tid) in done {
            log::info!("partition {offset} replicated (awaited transactions aborted)");
            self.notify_replication_done(offset, tid, out);
        }
        self.next_partition(out);
    }

    /// Tells the master that partition `offset` is replicated up to `tid`.
    fn notify_replication_done(&mut self, offset: u32, tid: Tid, out: &mut Outbox) {
        if let Some(master) = self.master_conn() {
            out.notify(master, NotifyReplicationDone { offset, tid });
        }
    }

    /// Starts replicating a partition if none is (`_nextPartition`).
    fn next_partition(&mut self, out: &mut Outbox) {
        if self.replicator.current.is_some() || !self.operational {
            return;
        }
        if !self.replicator.parts.values().any(|p| p.target.is_some()) {
            return self.next_backup_partition(out);
        }
        // Furthest behind first; then those without unfinished
        // transactions.
        let Some((&partition, part)) = self
            .replicator
            .parts
            .iter()
            .filter(|(_, p)| p.target.is_some())
            .min_by_key(|(_, p)| (p.next_tid, p.max_ttid.is_some()))
        else {
            return;
        };
        let (next_tid, target) = (part.next_tid, part.target);
        let Some(max_tid) = target else { return };
        let Some((source, addr)) = self.replication_source(partition) else {
            log::warn!("no readable running node to replicate partition {partition} from");
            return self.arm_replication_retry(out);
        };
        if let Some(part) = self.replicator.parts.get_mut(&partition) {
            part.target = None;
        }
        log::info!("replicating partition {partition} ({next_tid}..={max_tid}) from {source}");
        self.start_round(
            partition,
            next_tid,
            max_tid,
            Source::Node(source),
            addr,
            out,
        );
    }

    /// Starts a round of replication of `partition` from `source`, on the
    /// connection kept from the last round if it is to the same node.
    fn start_round(
        &mut self,
        partition: u32,
        next_tid: Tid,
        max_tid: Tid,
        source: Source,
        addr: SocketAddr,
        out: &mut Outbox,
    ) {
        let reuse = match self.replicator.idle.take() {
            Some((s, conn)) if s == source => Some(conn),
            Some((_, conn)) => {
                out.close(conn);
                None
            }
            None => None,
        };
        let conn = reuse.unwrap_or_else(|| out.connect(addr, TOKEN_REPLICATION));
        self.replicator.current = Some(Current {
            partition,
            conn,
            source,
            step: Step::Connecting,
            min_tid: next_tid,
            max_tid,
        });
        if reuse.is_some() {
            if let Err(e) = self.ask_fetch_transactions(next_tid, true, out) {
                self.replication_failed(e, out);
            }
        }
    }

    /// A running storage node with a readable cell of `partition`.
    fn replication_source(&mut self, partition: u32) -> Option<(NodeId, SocketAddr)> {
        let cells = self.db.partition_table().ok()?;
        let candidates: Vec<(NodeId, SocketAddr)> = cells
            .into_iter()
            .filter(|&(p, nid, s)| {
                p == partition && Some(NodeId(nid)) != self.nid && s.is_readable()
            })
            .filter_map(|(_, nid, _)| {
                let n = self.nodes.get(&NodeId(nid))?;
                if n.node_type != NodeType::Storage || n.state != NodeState::Running {
                    return None;
                }
                Some((NodeId(nid), n.address?))
            })
            .collect();
        // The node we are connected to, if it can.
        let linked = match &self.replicator.idle {
            Some((Source::Node(nid), _)) => Some(*nid),
            _ => None,
        };
        candidates
            .iter()
            .find(|(nid, _)| Some(*nid) == linked)
            .or(candidates.first())
            .copied()
    }

    fn arm_replication_retry(&mut self, out: &mut Outbox) {
        if !self.replicator.retry_armed {
            self.replicator.retry_armed = true;
            out.timer(REPLICATION_RETRY, TIMER_REPLICATE);
        }
    }

    /// The retry timer.
    pub(super) fn replication_timer(&mut self, out: &mut Outbox) {
        self.replicator.retry_armed = false;
        self.next_partition(out);
    }

    /// The current replication failed: its partition is tried again later.
    fn replication_abort(&mut self, why: &str, out: &mut Outbox) {
        let Some(c) = self.replicator.current.take() else {
            return;
        };
        log::warn!(
            "replication of partition {} from {} failed: {why}",
            c.partition,
            c.source
        );
        out.close(c.conn);
        if let Some(part) = self.replicator.parts.get_mut(&c.partition) {
            part.target = Some(part.target.map_or(c.max_tid, |t| t.max(c.max_tid)));
        }
        if let (Some(part), Source::Upstream(addr, name)) =
            (self.replicator.backup.get_mut(&c.partition), c.source)
        {
            // Other partitions first (NEO's `abort`), so that an upstream
            // node that cannot be reached does not hold them; then this
            // order is tried again, unless a newer one came.
            let order = part.order.take().unwrap_or((c.max_tid, addr, name));
            self.next_partition(out);
            if let Some(part) = self.replicator.backup.get_mut(&c.partition) {
                part.order.get_or_insert(order);
            }
        }
        self.arm_replication_retry(out);
    }

    /// The replication connection is up: identify.
    pub(super) fn replication_connected(&mut self, out: &mut Outbox) {
        let Some(c) = self.replicator.current.as_mut() else {
            return;
        };
        let a = self.cfg.address;
        // Upstream, anonymously with the upstream cluster's name.
        let (uuid, name) = match &c.source {
            Source::Node(_) => (self.nid, self.cfg.cluster.as_str()),
            Source::Upstream(_, name) => (None, name.as_str()),
        };
        let id = out.ask(
            c.conn,
            RequestIdentification {
                node_type: NodeType::Storage,
                uuid,
                address: Some(Address::new(&a.ip().to_string(), a.port())),
                name: Bytes::copy_from_slice(name.as_bytes()),
                id_timestamp: self.id_timestamp,
                extra: Map::new(),
            },
        );
        c.step = Step::Identifying(id);
    }

    /// A replication connection failed or closed.
    pub(super) fn replication_closed(&mut self, conn: ConnId, why: &str, out: &mut Outbox) {
        if self
            .replicator
            .idle
            .as_ref()
            .is_some_and(|(_, c)| *c == conn)
        {
            self.replicator.idle = None;
        } else {
            self.replication_abort(why, out);
        }
    }

    /// A packet on a replication connection.
    pub(super) fn replication_packet(&mut self, conn: ConnId, packet: Packet, out: &mut Outbox) {
        if self
            .replicator
            .idle
            .as_ref()
            .is_some_and(|(_, c)| *c == conn)
        {
            if !matches!(packet.body, Body::Ping(_) | Body::Pong(_)) {
                log::debug!("{} on an idle replication connection", packet.body.name());
            }
            return;
        }
        if let Err(e) = self.replication_packet_inner(packet, out) {
            self.replication_failed(e, out);
        }
    }

    fn replication_failed(&mut self, e: Fail, out: &mut Outbox) {
        match e {
            Fail::Db(e) => self.fatal(e, out),
            Fail::Protocol(m) | Fail::NotReady(m) => self.replication_abort(&m, out),
        }
    }

    fn replication_packet_inner(&mut self, packet: Packet, out: &mut Outbox) -> Result<(), Fail> {
        let Some(c) = self.replicator.current.clone() else {
            return Ok(());
        };
        let expected = match c.step {
            Step::Connecting => None,
            Step::Identifying(id) | Step::Transactions(id) | Step::Objects(id) => Some(id),
        };
        if Some(packet.id) != expected {
            return match packet.body {
                Body::Ping(_) | Body::Pong(_) => Ok(()),
                body => Err(Fail::Protocol(format!(
                    "unexpected {} on a replication connection",
                    body.name()
                ))),
            };
        }
        match (c.step, packet.body) {
            (_, Body::Error(e)) => Err(Fail::Protocol(format!(
                "{}: {}",
                e.code,
                String::from_utf8_lossy(&e.message)
            ))),
            (Step::Identifying(_), Body::AcceptIdentification(a)) => {
                if a.node_type != NodeType::Storage {
                    return Err(Fail::Protocol(format!("peer is a {} node", a.node_type)));
                }
                self.ask_fetch_transactions(c.min_tid, true, out)
            }
            (Step::Transactions(_), Body::AddTransaction(t)) => {
                self.add_transaction(&t)?;
                Ok(())
            }
            (Step::Transactions(_), Body::AnswerFetchTransactions(a)) => {
                for tid in &a.tid_list {
                    self.db.delete_transaction(*tid)?;
                }
                if let Some(pack) = a.completed_pack {
                    self.db
                        .update_completed_pack_by_replication(c.partition, pack)?;
                }
                match a.next_tid {
                    Some(next) => {
                        self.db.commit()?;
                        self.ask_fetch_transactions(next, false, out)
                    }
                    None => self.ask_fetch_objects(c.min_tid, Oid(0), out),
                }
            }
            (Step::Objects(_), Body::AddObject(o)) => {
                self.add_object(&o)?;
                Ok(())
            }
            (Step::Objects(_), Body::AnswerFetchObjects(a)) => {
                for (serial, oids) in a.object_dict.0.iter() {
                    for oid in oids {
                        self.db.delete_object(*oid, Some(*serial))?;
                    }
                }
                match (a.next_tid, a.next_oid) {
                    (Some(tid), Some(oid)) => {
                        if tid.0 > 0 {
                            self.db.update_cell_tid(c.partition, Tid(tid.0 - 1))?;
                        }
                        self.ask_fetch_objects(tid, oid, out)
                    }
                    _ => self.replication_finish(out),
                }
            }
            (_, body) => Err(Fail::Protocol(format!(
                "unexpected {} on a replication connection",
                body.name()
            ))),
        }
    }

    /// AskFetchTransactions from `min_tid` (`fetchTransactions`).
    fn ask_fetch_transactions(
        &mut self,
        min_tid: Tid,
        ask_pack_info: bool,
        out: &mut Outbox,
    ) -> Result<(), Fail> {
        let count = self.replicator.fetch_count();
        let Some(c) = self.replicator.current.as_mut() else {
            return Ok(());
        };
        let tid_list =
            self.db
                .replication_tid_list(min_tid, c.max_tid, Some(count.into()), c.partition)?;
        let id = out.ask(
            c.conn,
            AskFetchTransactions {
                partition: c.partition,
                length: count,
                min_tid,
                max_tid: c.max_tid,
                tid_list,
                ask_pack_info,
            },
        );
        c.step = Step::Transactions(id);
        Ok(())
    }

    /// AskFetchObjects from `(min_tid, min_oid)` (`fetchObjects`).
    fn ask_fetch_objects(
        &mut self,
        min_tid: Tid,
        min_oid: Oid,
        out: &mut Outbox,
    ) -> Result<(), Fail> {
        self.db.commit()?;
        let count = self.replicator.fetch_count();
        let Some(c) = self.replicator.current.as_mut() else {
            return Ok(());
        };
        let mut object_dict: BTreeMap<Tid, Vec<Oid>> = BTreeMap::new();
        for (serial, oid) in self.db.replication_object_list(
            min_tid,
            c.max_tid,
            Some(count.into()),
            c.partition,
            min_oid,
        )? {
            object_dict.entry(serial).or_default().push(oid);
        }
        let id = out.ask(
            c.conn,
            AskFetchObjects {
                partition: c.partition,
                length: count,
                min_tid,
                max_tid: c.max_tid,
                min_oid,
                object_dict: object_dict.into_iter().collect(),
            },
        );
        c.step = Step::Objects(id);
        Ok(())
    }

    /// AddTransaction (`addTransaction`).
    fn add_transaction(&mut self, t: &AddTransaction) -> Result<(), DbError> {
        let meta = TxnMeta {
            oids: t.oid_list.clone(),
            user: t.user.to_vec(),
            description: t.description.to_vec(),
            extension: t.extension.to_vec(),
            packed: t.packed,
            ttid: t.ttid,
        };
        self.db.store_transaction(t.tid, &[], Some(&meta), false)
    }

    /// AddObject (`addObject`): an empty uncompressed record is a
    /// deletion.
    fn add_object(&mut self, o: &AddObject) -> Result<(), DbError> {
        let deletion = o.data.is_empty() && o.compression == 0;
        let checksum = (!deletion).then_some(o.checksum.0);
        let data_id = self.db.store_data(
            checksum.as_ref(),
            o.oid,
            &o.data,
            o.compression,
            o.data_serial,
        )?;
        self.db.store_transaction(
            o.serial,
            &[ObjectRef {
                oid: o.oid,
                data_id,
                value_tid: o.data_serial,
            }],
            None,
            false,
        )
    }

    /// The partition is replicated up to the round's last tid (`finish`):
    /// done, unless transactions we wait for are still unfinished.
    fn replication_finish(&mut self, out: &mut Outbox) -> Result<(), Fail> {
        let Some(c) = self.replicator.current.take() else {
            return Ok(());
        };
        // Kept for the next partition.
        self.replicator.idle = Some((c.source.clone(), c.conn));
        if let Some(part) = self.replicator.backup.get_mut(&c.partition) {
            part.next_tid = part.next_tid.max(Tid(c.max_tid.0.saturating_add(1)));
            log::info!(
                "partition {} backed up to {} from {}",
                c.partition,
                c.max_tid,
                c.source
            );
            self.backup_update_tid()?;
            self.notify_replication_done(c.partition, c.max_tid, out);
            self.next_partition(out);
            return Ok(());
        }
        self.db.update_cell_tid(c.partition, c.max_tid)?;
        self.db.commit()?;
        let Some(part) = self.replicator.parts.get_mut(&c.partition) else {
            return Ok(());
        };
        part.next_tid = Tid(c.max_tid.0.saturating_add(1));
        log::info!(
            "partition {} replicated up to {} from {}",
            c.partition,
            c.max_tid,
            c.source
        );
        if part.max_ttid.is_none() && part.target.is_none() {
            self.notify_replication_done(c.partition, c.max_tid, out);
        }
        self.next_partition(out);
        Ok(())
    }

    // ---- backup mode ---------------------------------------------------

    /// StartOperation (NEO's `Replicator.startOperation`): entering backup
    /// mode records the last tid as the backup tid (kept if already in
    /// backup mode); leaving it clears the backup tid.
    pub(super) fn backup_start(&mut self, backup: bool) -> Result<(), DbError> {
        if backup {
            if self.db.backup_tid()?.is_none() {
                let last = self.db.last_ids()?.0.unwrap_or(Tid(0));
                log::info!("backup mode: backup tid {last}");
                self.db.set_backup_tid(Some(last))?;
                self.db.commit()?;
            }
            self.backup_load()?;
        } else {
            self.replicator.backup.clear();
            if self.db.backup_tid()?.is_some() {
                self.db.set_backup_tid(None)?;
                self.db.commit()?;
            }
        }
        Ok(())
    }

    /// Registers our readable cells as backup cells, each resuming where
    /// its data ends.
    fn backup_load(&mut self) -> Result<(), DbError> {
        for (offset, next) in self.db.cell_next_tids()? {
            if let CellNext::Backup { trans, obj } = next {
                self.replicator.backup.entry(offset).or_insert(BackupPart {
                    next_tid: trans.min(obj),
                    order: None,
                });
            }
        }
        Ok(())
    }

    /// Replicate from the backup master (NEO's `Replicator.backup`): the
    /// partitions with a source are fetched from it up to `tid`; those
    /// without one are known unchanged up to `tid`.
    pub(super) fn backup_order(
        &mut self,
        tid: Tid,
        upstream: &str,
        sources: &[(u32, Option<Address>)],
        out: &mut Outbox,
    ) -> Result<(), Fail> {
        if self.db.backup_tid()?.is_none() {
            return Err(Fail::Protocol("Replicate out of backup mode".into()));
        }
        if self.replicator.backup.is_empty() {
            self.backup_load()?;
        }
        let current = self.replicator.current.as_ref().map(|c| c.partition);
        let mut moved = false;
        for (offset, source) in sources {
            let Some(part) = self.replicator.backup.get_mut(offset) else {
                log::warn!("Replicate for partition {offset} that we do not back up: ignored");
                continue;
            };
            match source {
                Some(a) => {
                    let host = String::from_utf8_lossy(&a.host).into_owned();
                    let addr = crate::config::parse_address(&host, Some(a.port))
                        .map_err(|e| Fail::Protocol(format!("bad upstream address {a}: {e}")))?;
                    part.order = Some((tid, addr, upstream.to_owned()));
                }
                None if current != Some(*offset) && part.order.is_none() => {
                    part.next_tid = part.next_tid.max(Tid(tid.0.saturating_add(1)));
                    moved = true;
                }
                None => {}
            }
        }
        if moved {
            self.backup_update_tid()?;
        }
        self.next_partition(out);
        Ok(())
    }

    /// The backup tid of the database: the last tid all our readable cells
    /// have (`updateBackupTID`).
    fn backup_update_tid(&mut self) -> Result<(), DbError> {
        let Some(old) = self.db.backup_tid()? else {
            return Ok(());
        };
        let Some(min) = self.replicator.backup.values().map(|p| p.next_tid).min() else {
            return Ok(());
        };
        let tid = Tid(min.0.saturating_sub(1));
        if tid != old {
            self.db.set_backup_tid(Some(tid))?;
        }
        self.db.commit()
    }

    /// The backup cell furthest behind with an order: fetch it upstream.
    fn next_backup_partition(&mut self, out: &mut Outbox) {
        let Some((&partition, part)) = self
            .replicator
            .backup
            .iter()
            .filter(|(_, p)| p.order.is_some())
            .min_by_key(|(_, p)| p.next_tid)
        else {
            return;
        };
        let next_tid = part.next_tid;
        let Some((max_tid, addr, name)) = part.order.clone() else {
            return;
        };
        if let Some(part) = self.replicator.backup.get_mut(&partition) {
            part.order = None;
        }
        if max_tid < next_tid {
            // Already there: just report it.
            self.notify_replication_done(partition, Tid(next_tid.0.saturating_sub(1)), out);
            return self.next_partition(out);
        }
        let source = Source::Upstream(addr, name);
        log::info!("backing up partition {partition} ({next_tid}..={max_tid}) from {source}");
        self.start_round(partition, next_tid, max_tid, source, addr, out);
    }

    /// Client requests while in backup mode (NEO's
    /// `ClientReadOnlyOperationHandler`): writes are refused, reads are cut
    /// at the backup tid (what every readable cell of ours has); `None` when
    /// answered here.
    pub(super) fn backup_client_filter(
        &mut self,
        conn: ConnId,
        packet: Packet,
        out: &mut Outbox,
    ) -> Result<Option<Packet>, Fail> {
        let Some(backup) = self.db.backup_tid()? else {
            return Ok(Some(packet));
        };
        let id = packet.id;
        let next = Tid(backup.0.saturating_add(1));
        let body: Body = match packet.body {
            Body::AskStoreTransaction(_)
            | Body::AskVoteTransaction(_)
            | Body::AskStoreObject(_)
            | Body::AskFinalTID(_)
            | Body::AskRelockObject(_)
            | Body::AskCheckCurrentSerial(_) => {
                out.error(
                    conn,
                    id,
                    ErrorCode::ReadOnlyAccess,
                    "read-only access because cluster is in backuping mode",
                );
                return Ok(None);
            }
            Body::AskTransactionInformation(a) if a.tid > backup => {
                out.error(
                    conn,
                    id,
                    ErrorCode::TidNotFound,
                    &format!("tids > {backup} are not fully fetched yet"),
                );
                return Ok(None);
            }
            Body::AskObject(mut a) => {
                match (a.at, a.before) {
                    // Nothing there: answered as NEO does for ZERO_TID.
                    (Some(at), _) if at > backup => a.at = Some(Tid(0)),
                    (Some(_), _) => {}
                    (None, Some(before)) => a.before = Some(before.min(next)),
                    (None, None) => a.before = Some(next),
                }
                a.into()
            }
            Body::AskTIDsFrom(mut a) => {
                a.max_tid = a.max_tid.min(backup);
                a.into()
            }
            Body::AskTIDs(a) => {
                let tid_list = self
                    .ask_tids(&a)?
                    .into_iter()
                    .filter(|t| *t <= backup)
                    .collect();
                out.answer(conn, id, AnswerTIDs { tid_list });
                return Ok(None);
            }
            other => other,
        };
        Ok(Some(Packet { id, body }))
    }
}
