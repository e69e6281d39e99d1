//! Backup mode of the primary master (NEO's `master/backup_app.py` and
//! `master/handlers/backup.py`): a cluster that follows an upstream one.
//!
//! `neoctl set cluster STARTING_BACKUP` (with `--upstream-cluster` and
//! `--upstream-masters`): the storages get `StartOperation(backup=True)`,
//! the master connects to an upstream master as a CLIENT with
//! `extra={"backup": our cluster name}` (read-only), loads the upstream
//! partition table and nodes, asks the last tid and then follows
//! `InvalidatePartitions`: for each partition changed upstream, every
//! readable cell of ours gets `Replicate(tid, upstream name, {offset:
//! upstream storage address})`; cells of unchanged partitions get
//! `Replicate(tid, "", {offset: None})` when they are known complete up to
//! the previous tid. `NotifyReplicationDone` moves a cell's backup tid (up
//! to just before the next tid known to touch its partition). The cluster
//! is BACKINGUP once identified upstream.
//!
//! `STOPPING_BACKUP` truncates the database at the smallest backup tid of
//! all cells (every partition complete up to it) and restarts the cluster
//! (recovery, verification, RUNNING) as a normal one.
//!
//! A cluster restarted while backing up (its storages answer AskRecovery
//! with a backup tid) resumes the backup after verification; `--backup`
//! goes to backup mode at once when the database is empty. Only read-only
//! clients are accepted while BACKINGUP; their last tid is the smallest
//! backup tid. The partitions are spread over the upstream replicas, and
//! orders naming an upstream storage reported lost go to another one.
//!
//! Unlike NEO, each replica fetches from upstream itself (no primary cell
//! per partition feeding the others), and pack orders are not followed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use fsformat::Tid;
use neo_proto::{
    self as p, Address, Body, Bytes, CellState, ClusterState, Map, NodeId, NodeState, NodeType,
    Offset, Packet, Value,
};

use super::{add_tid_raw, Master};
use crate::runtime::{ConnId, Outbox};

/// Connection token of the connection to the upstream master.
pub(super) const TOKEN_UPSTREAM: u64 = 0x4255;
/// Timer: connect to upstream again.
pub(super) const TIMER_UPSTREAM: u64 = 0x4255;
/// Delay before connecting again to an upstream master.
pub const UPSTREAM_RETRY: Duration = Duration::from_secs(1);

/// The upstream cluster (`--upstream-cluster`, `--upstream-masters`).
#[derive(Debug, Clone)]
pub(super) struct Upstream {
    pub(super) name: String,
    pub(super) masters: Vec<SocketAddr>,
}

/// Where the link to the upstream master is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    None,
    Connecting(ConnId),
    /// RequestIdentification sent with this id.
    Identifying(ConnId, u32),
    Ready(ConnId),
}

/// The state of a backup in progress.
#[derive(Debug)]
pub(super) struct Backup {
    link: Link,
    /// Next upstream master to try.
    next_master: usize,
    retry_armed: bool,
    /// Our node id upstream.
    upstream_nid: Option<NodeId>,
    /// Running upstream storages and their addresses.
    storages: HashMap<NodeId, Address>,
    /// The upstream partition table: readable cells by partition.
    upstream_pt: Vec<Vec<(NodeId, CellState)>>,
    /// Invalidations are ignored until the last tid is answered.
    ignore_invalidations: bool,
    /// Each readable cell of ours: complete up to this tid.
    cell_tid: BTreeMap<(Offset, NodeId), Tid>,
    /// Each cell ordered to replicate: up to this tid.
    replicating: BTreeMap<(Offset, NodeId), Tid>,
    /// The upstream storage each order names.
    sources: BTreeMap<(Offset, NodeId), NodeId>,
    /// Tids upstream that changed each partition, not yet in every cell.
    tid_list: Vec<Vec<Tid>>,
}

impl Master {
    /// Tells storage `nid` to replicate `offsets` up to `tid` from the
    /// cells of this cluster (`Replicate` without an upstream name).
    fn replicate_from_cluster(
        &mut self,
        out: &mut Outbox,
        nid: NodeId,
        tid: Tid,
        offsets: impl IntoIterator<Item = u32>,
    ) {
        let source_dict = offsets.into_iter().map(|o| (o, None)).collect();
        self.send(
            out,
            nid,
            p::Replicate {
                tid,
                upstream_name: Bytes::new(),
                source_dict,
            },
        );
    }

    /// Sets the upstream cluster to back up (`-C`, `-M`): `neoctl set
    /// cluster STARTING_BACKUP` is accepted.
    pub fn with_upstream(mut self, name: String, masters: Vec<SocketAddr>) -> Master {
        self.upstream = Some(Upstream { name, masters });
        self
    }

    /// `--backup`: a cluster whose database is empty after verification
    /// goes to backup mode instead of RUNNING.
    pub fn with_backup_at_once(mut self) -> Master {
        self.backup_at_once = true;
        self
    }

    /// The backup tid: per partition the best cell, the smallest over
    /// partitions (`pt.getBackupTid()`); `None` out of backup mode.
    pub fn backup_tid(&self) -> Option<Tid> {
        self.backup_tid_by(|tids| tids.iter().max().copied())
    }

    /// What clients may read while backing up (the tid every cell has);
    /// `None` out of backup mode.
    pub(super) fn backup_read_tid(&self) -> Option<Tid> {
        self.backup_tid_min()
    }

    /// The tid every cell of every partition has (`getBackupTid(min)`).
    fn backup_tid_min(&self) -> Option<Tid> {
        self.backup_tid_by(|tids| tids.iter().min().copied())
    }

    fn backup_tid_by(&self, mean: impl Fn(&[Tid]) -> Option<Tid>) -> Option<Tid> {
        let b = self.backup.as_ref()?;
        let mut result: Option<Tid> = None;
        for offset in 0..self.pt.np() {
            let tids: Vec<Tid> = self
                .pt
                .readable_cells(offset)
                .into_iter()
                .map(|nid| b.cell_tid.get(&(offset, nid)).copied().unwrap_or(Tid(0)))
                .collect();
            let t = mean(&tids).unwrap_or(Tid(0));
            result = Some(result.map_or(t, |r| r.min(t)));
        }
        result
    }

    /// Whether `conn` is our connection to the upstream master.
    pub(super) fn is_upstream(&self, conn: ConnId) -> bool {
        self.backup.as_ref().is_some_and(|b| match b.link {
            Link::Connecting(c) | Link::Identifying(c, _) | Link::Ready(c) => c == conn,
            Link::None => false,
        })
    }

    /// Whether storages starting now enter backup mode.
    pub(super) fn backing_up(&self) -> bool {
        self.backup.is_some()
    }

    /// `set cluster STARTING_BACKUP` from RUNNING.
    pub(super) fn start_backup(&mut self, out: &mut Outbox) -> Result<(), String> {
        if self.upstream.is_none() {
            return Err("No upstream cluster to backup defined in configuration".into());
        }
        if self.state != ClusterState::Running {
            return Err(format!("Can not switch to backup in {} state", self.state));
        }
        if self.tm.has_pending() {
            return Err("Can not switch to backup with transactions in progress".into());
        }
        let tid = self.last_transaction;
        log::info!("starting backup from {tid}");
        self.init_backup(|_| tid);
        // No writer while backing up.
        for client in self.identified_of(NodeType::Client) {
            if let Some(conn) = self.conn_of(client) {
                out.close(conn);
            }
            self.client_lost(out, client);
        }
        for nid in self.identified_of(NodeType::Storage) {
            if self.is_running(nid) {
                self.send(out, nid, p::StartOperation { backup: true });
            }
        }
        self.change_state(out, ClusterState::StartingBackup);
        self.upstream_connect(out);
        Ok(())
    }

    /// After verification of a cluster whose storages were backing up
    /// (they answered AskRecovery with a backup tid): backing up again,
    /// each cell from its node's backup tid (NEO's `setBackupTidDict`).
    /// Without upstream options the master stops, as NEO's exits.
    pub(super) fn resume_backup(&mut self, out: &mut Outbox, tids: &HashMap<NodeId, Option<Tid>>) {
        if self.upstream.is_none() {
            log::error!(
                "the storages are backing up but no upstream cluster to backup \
                 is defined in configuration: stopping"
            );
            out.stop();
            return;
        }
        log::info!("resuming the backup");
        self.init_backup(|nid| tids.get(&nid).copied().flatten().unwrap_or(Tid(0)));
        self.change_state(out, ClusterState::StartingBackup);
        for nid in self.identified_of(NodeType::Storage) {
            if self.is_running(nid) {
                self.start_storage(out, nid);
            }
        }
        self.upstream_connect(out);
    }

    /// The backup state, every readable cell complete up to `tid_of` its
    /// node.
    fn init_backup(&mut self, tid_of: impl Fn(NodeId) -> Tid) {
        let mut cell_tid = BTreeMap::new();
        for offset in 0..self.pt.np() {
            for nid in self.pt.readable_cells(offset) {
                cell_tid.insert((offset, nid), tid_of(nid));
            }
        }
        self.backup = Some(Backup {
            link: Link::None,
            next_master: 0,
            retry_armed: false,
            upstream_nid: None,
            storages: HashMap::new(),
            upstream_pt: Vec::new(),
            ignore_invalidations: true,
            cell_tid,
            replicating: BTreeMap::new(),
            sources: BTreeMap::new(),
            tid_list: vec![Vec::new(); self.pt.np() as usize],
        });
    }

    fn upstream_connect(&mut self, out: &mut Outbox) {
        let Some(up) = self.upstream.as_ref() else {
            return;
        };
        let Some(b) = self.backup.as_mut() else {
            return;
        };
        if b.link != Link::None || up.masters.is_empty() {
            return;
        }
        let addr = up.masters[b.next_master % up.masters.len()];
        b.next_master = b.next_master.wrapping_add(1);
        log::info!("connecting to upstream master {addr}");
        b.link = Link::Connecting(out.connect(addr, TOKEN_UPSTREAM));
    }

    /// The retry timer.
    pub(super) fn upstream_timer(&mut self, out: &mut Outbox) {
        if let Some(b) = self.backup.as_mut() {
            b.retry_armed = false;
        }
        if matches!(
            self.state,
            ClusterState::StartingBackup | ClusterState::BackingUp
        ) {
            self.upstream_connect(out);
        }
    }

    /// The upstream connection is up: identify as a backup client.
    pub(super) fn upstream_connected(&mut self, out: &mut Outbox, conn: ConnId) {
        let Some(up) = self.upstream.as_ref() else {
            return;
        };
        let mut extra = Map::new();
        extra.0.push((
            Bytes::from_static(b"backup"),
            Value::Bin(Bytes::copy_from_slice(self.cfg.cluster.as_bytes())),
        ));
        let req = p::RequestIdentification {
            node_type: NodeType::Client,
            uuid: self.backup.as_ref().and_then(|b| b.upstream_nid),
            address: None,
            name: Bytes::copy_from_slice(up.name.as_bytes()),
            id_timestamp: None,
            extra,
        };
        let id = out.ask(conn, req);
        if let Some(b) = self.backup.as_mut() {
            b.link = Link::Identifying(conn, id);
        }
    }

    /// The upstream connection failed or closed: connect again (to the
    /// next master) after a while, in STARTING_BACKUP.
    pub(super) fn upstream_lost(&mut self, out: &mut Outbox, conn: ConnId, why: &str) {
        if !self.is_upstream(conn) {
            return;
        }
        log::error!("upstream master is down: {why}");
        let Some(b) = self.backup.as_mut() else {
            return;
        };
        b.link = Link::None;
        b.replicating.clear();
        b.sources.clear();
        b.ignore_invalidations = true;
        let arm = !std::mem::replace(&mut b.retry_armed, true);
        if self.state == ClusterState::BackingUp {
            self.change_state(out, ClusterState::StartingBackup);
        }
        if arm {
            out.timer(UPSTREAM_RETRY, TIMER_UPSTREAM);
        }
    }

    /// A packet from the upstream master (NEO's `BackupHandler`).
    pub(super) fn upstream_packet(&mut self, out: &mut Outbox, conn: ConnId, packet: Packet) {
        let Some(link) = self.backup.as_ref().map(|b| b.link) else {
            return;
        };
        match (link, packet.body) {
            (Link::Identifying(_, id), Body::AcceptIdentification(a)) if packet.id == id => {
                if a.node_type != NodeType::Master {
                    out.close(conn);
                    return self.upstream_lost(out, conn, "upstream peer is not a master");
                }
                log::info!("identified upstream as {:?}", a.your_uuid);
                if let Some(b) = self.backup.as_mut() {
                    b.link = Link::Ready(conn);
                    b.upstream_nid = a.your_uuid;
                }
                self.change_state(out, ClusterState::BackingUp);
                out.ask(conn, p::AskLastTransaction {});
            }
            (Link::Identifying(..), Body::Error(e)) => {
                let why = format!(
                    "identification refused: {} {}",
                    e.code,
                    String::from_utf8_lossy(&e.message)
                );
                out.close(conn);
                self.upstream_lost(out, conn, &why);
            }
            (_, Body::Ping(_)) => out.answer(conn, packet.id, p::Pong {}),
            (_, Body::Pong(_) | Body::NotifyClusterInformation(_)) => {}
            (_, Body::NotifyNodeInformation(n)) => {
                let mut again = BTreeSet::new();
                if let Some(b) = self.backup.as_mut() {
                    for info in n.node_list {
                        let (Some(nid), NodeType::Storage) = (info.uuid, info.node_type) else {
                            continue;
                        };
                        match (info.state, info.address) {
                            (NodeState::Running, Some(addr)) => {
                                b.storages.insert(nid, addr);
                            }
                            _ => {
                                if b.storages.remove(&nid).is_some() {
                                    log::info!("upstream storage {nid} lost");
                                }
                                // Its orders go to another upstream node.
                                let lost: Vec<(Offset, NodeId)> = b
                                    .sources
                                    .iter()
                                    .filter(|(_, s)| **s == nid)
                                    .map(|(k, _)| *k)
                                    .collect();
                                for k in lost {
                                    b.sources.remove(&k);
                                    b.replicating.remove(&k);
                                    again.insert(k.1);
                                }
                            }
                        }
                    }
                }
                if self.state == ClusterState::BackingUp {
                    for nid in again {
                        self.trigger_backup(out, nid);
                    }
                }
            }
            (_, Body::SendPartitionTable(s)) => {
                if s.row_list.len() != self.pt.np() as usize {
                    log::error!(
                        "upstream has {} partitions, we have {}: cannot back it up",
                        s.row_list.len(),
                        self.pt.np()
                    );
                    return self.stop_backup(out);
                }
                if let Some(b) = self.backup.as_mut() {
                    b.upstream_pt = s
                        .row_list
                        .into_iter()
                        .map(|row| row.into_iter().map(|c| (c.uuid, c.state)).collect())
                        .collect();
                }
            }
            (_, Body::NotifyPartitionChanges(n)) => {
                if let Some(b) = self.backup.as_mut() {
                    for (offset, nid, state) in n.cell_list {
                        let Some(row) = b.upstream_pt.get_mut(offset as usize) else {
                            continue;
                        };
                        row.retain(|(n, _)| *n != nid);
                        if !matches!(state, CellState::Discarded | CellState::Corrupted) {
                            row.push((nid, state));
                        }
                    }
                }
            }
            (Link::Ready(_), Body::AnswerLastTransaction(a)) => {
                let prev = self.last_transaction;
                if a.tid < prev {
                    log::error!(
                        "upstream database truncated ({} < {prev}): leaving backup mode",
                        a.tid
                    );
                    return self.stop_backup(out);
                }
                let all: BTreeSet<Offset> = (0..self.pt.np()).collect();
                self.invalidate_partitions(out, a.tid, a.tid, &all);
                if let Some(b) = self.backup.as_mut() {
                    b.ignore_invalidations = false;
                }
            }
            (Link::Ready(_), Body::InvalidatePartitions(n)) => {
                if self.backup.as_ref().is_none_or(|b| b.ignore_invalidations) {
                    return;
                }
                let mut set: BTreeSet<Offset> = n.partition_list.into_iter().collect();
                let np = u64::from(self.pt.np().max(1));
                set.insert((n.tid.0 % np) as Offset);
                let prev = self.last_transaction;
                if n.tid <= prev {
                    log::warn!("ignored old invalidation {} (last {prev})", n.tid);
                    return;
                }
                self.invalidate_partitions(out, n.tid, prev, &set);
            }
            (_, Body::NotifyPackSigned(_) | Body::InvalidateObjects(_)) => {}
            (_, body) => log::warn!("ignored {} from the upstream master", body.name()),
        }
    }

    /// A new tid upstream that changed `changed` (`invalidatePartitions`);
    /// `prev == tid` when we just connected.
    fn invalidate_partitions(
        &mut self,
        out: &mut Outbox,
        tid: Tid,
        prev: Tid,
        changed: &BTreeSet<Offset>,
    ) {
        self.last_transaction = tid;
        let Some(mut b) = self.backup.take() else {
            return;
        };
        let mut trigger = BTreeSet::new();
        let mut untouched: BTreeMap<NodeId, Vec<Offset>> = BTreeMap::new();
        for offset in 0..self.pt.np() {
            let cells = self.pt.readable_cells(offset);
            let Some(list) = b.tid_list.get_mut(offset as usize) else {
                continue;
            };
            let last_max = list.last().copied().unwrap_or(prev);
            if changed.contains(&offset) {
                let mut behind = false;
                for nid in cells {
                    let t = b.cell_tid.entry((offset, nid)).or_insert(Tid(0));
                    if *t == prev && prev != tid {
                        // Complete up to just before this tid (NEO picks
                        // the highest possible one).
                        *t = add_tid_raw(tid, -1);
                    }
                    if *t < tid {
                        behind = true;
                        trigger.insert(nid);
                    }
                }
                if behind {
                    list.push(tid);
                }
            } else {
                for nid in cells {
                    let t = b.cell_tid.entry((offset, nid)).or_insert(Tid(0));
                    if last_max <= *t {
                        *t = tid;
                        untouched.entry(nid).or_default().push(offset);
                    } else if let Some(r) = b.replicating.get_mut(&(offset, nid)) {
                        if last_max <= *r {
                            *r = tid;
                        }
                    }
                }
            }
        }
        self.backup = Some(b);
        for (nid, offsets) in untouched {
            if self.is_running(nid) {
                self.replicate_from_cluster(out, nid, tid, offsets);
            }
        }
        for nid in trigger {
            self.trigger_backup(out, nid);
        }
    }

    /// Orders `nid` to fetch, from upstream, its cells that are behind
    /// (`triggerBackup`).
    fn trigger_backup(&mut self, out: &mut Outbox, nid: NodeId) {
        if !self.is_running(nid) {
            return;
        }
        let tid = self.last_transaction;
        let Some(up) = self.upstream.as_ref() else {
            return;
        };
        let name = Bytes::copy_from_slice(up.name.as_bytes());
        let Some(b) = self.backup.as_mut() else {
            return;
        };
        let mut source_dict = Vec::new();
        for offset in self.pt.readable_offsets(nid) {
            let Some(&last) = b.tid_list.get(offset as usize).and_then(|l| l.last()) else {
                continue;
            };
            let done = b.cell_tid.get(&(offset, nid)).copied().unwrap_or(Tid(0));
            let ordered = b.replicating.get(&(offset, nid)).copied().unwrap_or(Tid(0));
            if done.max(ordered) >= last {
                continue;
            }
            // The partitions are spread over the upstream replicas.
            let sources: Vec<(NodeId, &Address)> = b
                .upstream_pt
                .get(offset as usize)
                .into_iter()
                .flatten()
                .filter(|(_, s)| crate::pt::is_readable(*s))
                .filter_map(|(n, _)| Some((*n, b.storages.get(n)?)))
                .collect();
            let Some((source, addr)) = (!sources.is_empty()).then(|| {
                let (n, a) = sources[offset as usize % sources.len()];
                (n, a.clone())
            }) else {
                log::warn!("no running upstream storage for partition {offset}");
                continue;
            };
            b.replicating.insert((offset, nid), tid);
            b.sources.insert((offset, nid), source);
            log::debug!("ask {nid} to back up partition {offset} up to {tid} from {addr}");
            source_dict.push((offset, Some(addr)));
        }
        if !source_dict.is_empty() {
            self.send(
                out,
                nid,
                p::Replicate {
                    tid,
                    upstream_name: name,
                    source_dict: Map(source_dict),
                },
            );
        }
    }

    /// NotifyReplicationDone of a readable cell while backing up
    /// (`notifyReplicationDone`); false if not in backup mode.
    pub(super) fn backup_replication_done(
        &mut self,
        out: &mut Outbox,
        nid: NodeId,
        offset: Offset,
        tid: Tid,
    ) -> bool {
        let last = self.last_transaction;
        let cells = self.pt.readable_cells(offset);
        let Some(b) = self.backup.as_mut() else {
            return false;
        };
        if !cells.contains(&nid) {
            return true;
        }
        let Some(list) = b.tid_list.get_mut(offset as usize) else {
            return true;
        };
        let mut tid = tid;
        // The storage learns that its cell is complete up to the last tid
        // (later tids did not touch the partition).
        let mut tell = None;
        if let Some(&first) = list.first() {
            if tid >= first {
                // Complete up to just before the next tid touching it.
                let i = list.partition_point(|t| *t <= tid);
                match list.get(i) {
                    Some(next) => tid = add_tid_raw(*next, -1),
                    None if tid < last => {
                        tid = last;
                        tell = Some(last);
                    }
                    None => {}
                }
            }
        }
        log::debug!("partition {offset}: {nid} backed up to {tid}");
        let cell = b.cell_tid.entry((offset, nid)).or_insert(Tid(0));
        *cell = (*cell).max(tid);
        if b.replicating.get(&(offset, nid)).is_some_and(|r| *r <= tid) {
            b.replicating.remove(&(offset, nid));
            b.sources.remove(&(offset, nid));
        }
        let min = cells
            .iter()
            .map(|n| b.cell_tid.get(&(offset, *n)).copied().unwrap_or(Tid(0)))
            .min()
            .unwrap_or(Tid(0));
        list.retain(|t| *t > min);
        if let Some(tid) = tell {
            self.replicate_from_cluster(out, nid, tid, [offset]);
        }
        if self.state == ClusterState::BackingUp {
            self.trigger_backup(out, nid);
        }
        true
    }

    /// A storage (re)started while backing up: its cells fetch what they
    /// miss (their orders died with the previous connection).
    pub(super) fn backup_storage_started(&mut self, out: &mut Outbox, nid: NodeId) {
        let last = self.last_transaction;
        let Some(b) = self.backup.as_mut() else {
            return;
        };
        b.replicating.retain(|(_, n), _| *n != nid);
        b.sources.retain(|(_, n), _| *n != nid);
        for offset in self.pt.readable_offsets(nid) {
            let done = b.cell_tid.get(&(offset, nid)).copied().unwrap_or(Tid(0));
            if let Some(list) = b.tid_list.get_mut(offset as usize) {
                if done < last && list.last().is_none_or(|t| *t < last) {
                    list.push(last);
                }
            }
        }
        self.trigger_backup(out, nid);
    }

    /// A cell of ours became readable while backing up (replicated from
    /// a storage of ours, itself complete only up to its own backup tid):
    /// it is complete up to what every other cell of the partition has,
    /// then fetches the rest from upstream.
    pub(super) fn backup_cell_readable(&mut self, out: &mut Outbox, nid: NodeId, offset: Offset) {
        let cells = self.pt.readable_cells(offset);
        let Some(b) = self.backup.as_mut() else {
            return;
        };
        if !cells.contains(&nid) {
            return;
        }
        let tid = cells
            .iter()
            .filter(|n| **n != nid)
            .map(|n| b.cell_tid.get(&(offset, *n)).copied().unwrap_or(Tid(0)))
            .min()
            .unwrap_or(Tid(0));
        log::info!("partition {offset}: {nid} readable, backed up to {tid}");
        b.cell_tid.insert((offset, nid), tid);
        b.replicating.remove(&(offset, nid));
        b.sources.remove(&(offset, nid));
        if let Some(list) = b.tid_list.get_mut(offset as usize) {
            // Tids after its backup tid are needed again.
            let last = self.last_transaction;
            if tid < last && list.last().is_none_or(|t| *t < last) {
                list.push(last);
            }
        }
        if self.state == ClusterState::BackingUp {
            self.trigger_backup(out, nid);
        }
    }

    /// `set cluster STOPPING_BACKUP` (or upstream truncated): truncate at
    /// the tid every cell reached and restart as a normal cluster.
    pub(super) fn stop_backup(&mut self, out: &mut Outbox) {
        let tid = self.backup_tid_min().unwrap_or(self.last_transaction);
        if let Some(b) = self.backup.take() {
            match b.link {
                Link::Connecting(c) | Link::Identifying(c, _) | Link::Ready(c) => out.close(c),
                Link::None => {}
            }
        }
        self.change_state(out, ClusterState::StoppingBackup);
        if tid < self.last_transaction {
            log::warn!(
                "truncating at {tid} (last tid was {})",
                self.last_transaction
            );
        }
        self.stop_operation(out, Some(tid));
        // Leaving backup mode restarts by itself.
        self.startup_allowed = true;
    }
}
