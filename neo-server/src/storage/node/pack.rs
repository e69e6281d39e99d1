//! Pack, executed by the storage node as NEO 1.12+ does it
//! (`neo/storage/app.py`: `maybePack`, `notifyPackCompleted`;
//! `database/manager.py`: `BackgroundWorker._task_pack`, `pack`,
//! `isReadyToStartPack`; `handlers/__init__.py`: `notifyPackSigned`).
//!
//! A pack order is stored with the transaction that asks for it; the
//! master signs it (`NotifyPackSigned`) once committed. Every cell of this
//! node records in `pt.pack` the last pack it completed. When the cluster's
//! last approved pack is newer than the oldest of our readable cells, we
//! ask the master for the next approved order after it (`AskPackOrders`)
//! and pack, partition by partition, the cells that are at that oldest
//! completed pack. The work is done in steps on a timer (at most about
//! [`PACK_BUDGET`] each, in batches of oids) so that clients are served
//! in between. Each finished partition gets the pack id in `pt.pack`
//! (committed): after a restart, packing resumes with the partitions left.
//! Once all are done, `NotifyPackCompleted` tells the master the smallest
//! pack id of our cells, and the next order is looked for.
//!
//! `--disable-pack`: orders are neither signed nor processed; the node
//! reports every signed order completed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use fsformat::{Oid, Tid};
use neo_proto::{AskPackOrders, NotifyPackCompleted, Value};

use super::{StorageNode, BACKGROUND_BUDGET};
use crate::runtime::Outbox;
use crate::storage::{Backend, DbError, PackScope};

/// Timer: a step of the pack.
pub(super) const TIMER_PACK: u64 = 5;
/// How long one pack step may keep the node from its requests.
pub const PACK_BUDGET: Duration = BACKGROUND_BUDGET;
/// Fewest oids per step (NEO's statistics never go below 100 lines).
const MIN_BATCH: u64 = 100;
/// Most oids per step.
const MAX_BATCH: u64 = 100_000;

/// An order as AnswerPackOrders carries it: `(id, approved, partial,
/// oids, pack tid)`.
pub(super) type PackEntry = (Tid, Option<bool>, bool, Option<Value>, Tid);

/// The order being processed (NEO's `_pack_info`).
#[derive(Debug, Clone)]
struct PackInfo {
    id: Tid,
    /// The oids of a partial pack (`None`: every oid).
    oids: Option<Vec<Oid>>,
    tid: Tid,
}

/// The pack state of a storage node.
#[derive(Debug)]
pub(super) struct Packer {
    /// The order processed last (kept to resume it).
    info: Option<PackInfo>,
    /// Our oldest completed pack when `info` was started (NEO's `_packed`).
    packed: Option<Tid>,
    /// Partitions left to pack (NEO's `_pack_set`).
    parts: BTreeSet<u32>,
    /// The partition being packed and where it is: the next oid (whole
    /// pack) or the index in its oids (partial pack).
    cursor: Option<(u32, u64)>,
    /// Partitions finished in this run.
    done: usize,
    /// Data rows the deleted records referred to, in this run.
    deleted: usize,
    /// The longest step of this run.
    longest: Duration,
    /// Our AskPackOrders in flight: its id, and our oldest completed pack
    /// it was asked after.
    asked: Option<(u32, Tid)>,
    /// Whether a step is scheduled.
    armed: bool,
    /// Oids per step, adapted to [`PACK_BUDGET`].
    batch: u64,
    /// A fixed batch (tests), no adaptation.
    fixed_batch: Option<u64>,
}

impl Default for Packer {
    fn default() -> Self {
        Packer {
            info: None,
            packed: None,
            parts: BTreeSet::new(),
            cursor: None,
            done: 0,
            deleted: 0,
            longest: Duration::ZERO,
            asked: None,
            armed: false,
            batch: MIN_BATCH,
            fixed_batch: None,
        }
    }
}

impl Packer {
    /// Whether `id` is our AskPackOrders.
    pub(super) fn asked(&self, id: u32) -> bool {
        self.asked.is_some_and(|(a, _)| a == id)
    }

    /// Partitions left to pack.
    pub(super) fn pending(&self) -> &BTreeSet<u32> {
        &self.parts
    }

    /// The longest step of the last run.
    #[cfg(test)]
    pub(super) fn longest_step(&self) -> Duration {
        self.longest
    }
}

fn oid_list(v: Option<&Value>) -> Option<Vec<Oid>> {
    let Some(Value::Array(items)) = v else {
        return None;
    };
    Some(
        items
            .iter()
            .filter_map(|x| match x {
                Value::Bin(b) => <[u8; 8]>::try_from(b.as_ref()).ok().map(Oid::from_bytes),
                _ => None,
            })
            .collect(),
    )
}

impl<B: Backend> StorageNode<B> {
    /// Steps of the pack done per timer event (tests: fixed, no adaptation).
    #[cfg(test)]
    pub(super) fn set_pack_batch(&mut self, n: u64) {
        self.packer.fixed_batch = Some(n.max(1));
    }

    /// The partitions still to pack (tests, status).
    pub fn packing(&self) -> Vec<u32> {
        self.packer.pending().iter().copied().collect()
    }

    /// `NotifyPackSigned` (NEO's `notifyPackSigned`).
    pub(super) fn pack_signed(
        &mut self,
        approved: &[Tid],
        rejected: &[Tid],
        out: &mut Outbox,
    ) -> Result<(), DbError> {
        if !self.cfg.disable_pack {
            let changed = self.db.sign_pack_orders(approved, rejected)?;
            if !changed.is_empty() {
                self.db.commit()?;
            }
        }
        if let Some(&max) = approved.iter().max() {
            if self.last_pack_id < max {
                self.last_pack_id = max;
                if self.operational {
                    if self.cfg.disable_pack {
                        self.notify_pack_completed(out)?;
                    } else {
                        self.maybe_pack(None, None, out)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// `AnswerPackOrders` to our AskPackOrders (NEO's `answerPackOrders`):
    /// the first approved order after `packed`.
    pub(super) fn pack_orders_answered(
        &mut self,
        pack_list: Vec<PackEntry>,
        out: &mut Outbox,
    ) -> Result<(), DbError> {
        let Some((_, packed)) = self.packer.asked.take() else {
            return Ok(());
        };
        match pack_list.into_iter().next() {
            Some(entry) => self.maybe_pack(Some(entry), Some(packed), out),
            None => Ok(()),
        }
    }

    fn packed_ids_min(&mut self, up_to_date: bool) -> Result<Option<Tid>, DbError> {
        Ok(self.db.packed_ids(up_to_date)?.values().min().copied())
    }

    /// Tells the master the oldest pack our cells completed, if it changed
    /// (NEO's `notifyPackCompleted`).
    pub(super) fn notify_pack_completed(&mut self, out: &mut Outbox) -> Result<(), DbError> {
        let pack_id = if self.cfg.disable_pack {
            self.last_pack_id
        } else {
            match self.packed_ids_min(false)? {
                Some(p) => p,
                None => return Ok(()),
            }
        };
        if self.completed_pack_id != pack_id {
            self.completed_pack_id = pack_id;
            if let Some(conn) = self.master_conn() {
                out.notify(conn, NotifyPackCompleted { pack_id });
            }
        }
        Ok(())
    }

    /// Starts (or resumes) the next pack if there is one to do (NEO's
    /// `maybePack`): `info` is an order the master just gave, the first
    /// approved one after our oldest completed pack `min_id`.
    pub(super) fn maybe_pack(
        &mut self,
        info: Option<PackEntry>,
        min_id: Option<Tid>,
        out: &mut Outbox,
    ) -> Result<(), DbError> {
        if self.cfg.disable_pack || !self.operational || !self.packer.parts.is_empty() {
            return Ok(());
        }
        if !self.db.pack_allowed() {
            log::info!("pack orders are not processed while the database is being imported");
            return Ok(());
        }
        let packed_dict = self.db.packed_ids(true)?;
        let Some(&packed) = packed_dict.values().min() else {
            return Ok(());
        };
        if packed >= self.last_pack_id {
            // Every approved order is processed.
            self.packer.info = None;
            self.packer.packed = None;
            return Ok(());
        }
        if self.packer.info.is_some() && self.packer.packed == Some(packed) {
            // Our oldest completed pack did not change since the order was
            // started: resume it.
        } else if let (Some((id, _, partial, oids, tid)), Some(min)) = (info, min_id) {
            if min != packed {
                return self.ask_pack_orders(packed, out);
            }
            self.packer.info = Some(PackInfo {
                id,
                oids: if partial {
                    Some(oid_list(oids.as_ref()).unwrap_or_default())
                } else {
                    None
                },
                tid,
            });
        } else {
            return self.ask_pack_orders(packed, out);
        }
        self.packer.packed = Some(packed);
        let parts: BTreeSet<u32> = packed_dict
            .iter()
            .filter(|(_, &v)| v == packed)
            .map(|(&p, _)| p)
            .collect();
        if let Some(info) = &self.packer.info {
            log::info!(
                "pack {:016x} at {:016x}{}: {} partition(s)",
                info.id.0,
                info.tid.0,
                info.oids
                    .as_ref()
                    .map_or(String::new(), |o| format!(" ({} oids)", o.len())),
                parts.len()
            );
        }
        self.packer.parts = parts;
        self.packer.cursor = None;
        self.packer.done = 0;
        self.packer.deleted = 0;
        self.packer.longest = Duration::ZERO;
        self.arm_pack(out);
        Ok(())
    }

    /// Asks the master the first approved order after `packed`.
    fn ask_pack_orders(&mut self, packed: Tid, out: &mut Outbox) -> Result<(), DbError> {
        if self.packer.asked.is_some() {
            return Ok(());
        }
        if let Some(conn) = self.master_conn() {
            let pack_id = Tid(packed.0.saturating_add(1));
            self.packer.asked = Some((out.ask(conn, AskPackOrders { pack_id }), packed));
        }
        Ok(())
    }

    fn arm_pack(&mut self, out: &mut Outbox) {
        if !self.packer.armed {
            self.packer.armed = true;
            out.timer(Duration::ZERO, TIMER_PACK);
        }
    }

    /// The pack timer: one step.
    pub(super) fn pack_timer(&mut self, out: &mut Outbox) {
        self.packer.armed = false;
        if !self.operational {
            return;
        }
        match self.pack_step(out) {
            Ok(true) => self.arm_pack(out),
            Ok(false) => {}
            Err(e) => self.fatal(e, out),
        }
    }

    /// One step of NEO's `_task_pack`; returns whether more is left.
    fn pack_step(&mut self, out: &mut Outbox) -> Result<bool, DbError> {
        let Some(info) = self.packer.info.clone() else {
            self.packer.parts.clear();
            return Ok(false);
        };
        // Better than any partition to resume a partially-processed one.
        let Some(&offset) = self.packer.parts.first() else {
            return self.pack_finished(&info, out).map(|()| false);
        };
        let view = self.db.partition_view()?;
        let np = u64::from(view.np.max(1));
        if !view.readable.contains(&offset) {
            // Not readable anymore.
            self.packer.parts.remove(&offset);
            self.packer.cursor = None;
            return Ok(true);
        }
        let pos = match self.packer.cursor {
            Some((p, pos)) if p == offset => pos,
            _ => {
                log::info!(
                    "pack {:016x} at {:016x}: partition {offset}...",
                    info.id.0,
                    info.tid.0
                );
                0
            }
        };
        let batch = self.packer.fixed_batch.unwrap_or(self.packer.batch);
        let start = Instant::now();
        let (next, deleted) = match &info.oids {
            Some(all) => {
                let oids: Vec<Oid> = all
                    .iter()
                    .filter(|o| o.0 % np == u64::from(offset))
                    .skip(usize::try_from(pos).unwrap_or(usize::MAX))
                    .take(usize::try_from(batch).unwrap_or(usize::MAX))
                    .copied()
                    .collect();
                let deleted = if oids.is_empty() {
                    0
                } else {
                    self.db
                        .pack_partition(offset, PackScope::Oids(&oids), info.tid)?
                        .1
                };
                let n = oids.len() as u64;
                ((n == batch).then_some(pos + n), deleted)
            }
            None => {
                let scope = PackScope::From {
                    min_oid: Oid(pos),
                    limit: batch,
                };
                let (last, deleted) = self.db.pack_partition(offset, scope, info.tid)?;
                (last.and_then(|o| o.0.checked_add(1)), deleted)
            }
        };
        self.packer.deleted += deleted;
        let spent = start.elapsed();
        if self.packer.fixed_batch.is_none() {
            self.packer.batch = if spent < PACK_BUDGET / 2 {
                (batch * 2).min(MAX_BATCH)
            } else if spent > PACK_BUDGET {
                (batch / 2).max(MIN_BATCH)
            } else {
                batch
            };
        }
        match next {
            Some(pos) => {
                self.packer.cursor = Some((offset, pos));
                self.arm_commit(out);
            }
            None => {
                self.packer.parts.remove(&offset);
                self.packer.cursor = None;
                self.packer.done += 1;
                if self
                    .db
                    .partition_packed(offset)?
                    .is_some_and(|p| p >= info.id.0)
                {
                    log::warn!(
                        "partition {offset} already packed at {:016x} or later",
                        info.id.0
                    );
                }
                self.db.set_partition_packed(offset, info.id.0)?;
                self.db.commit()?;
            }
        }
        self.packer.longest = self.packer.longest.max(start.elapsed());
        Ok(true)
    }

    /// Every partition of the order is done.
    fn pack_finished(&mut self, info: &PackInfo, out: &mut Outbox) -> Result<(), DbError> {
        if self.packer.done > 0 {
            log::info!(
                "{} partition(s) processed for pack {:016x} ({} data row(s) deleted, \
                 longest step {:?})",
                self.packer.done,
                info.id.0,
                self.packer.deleted,
                self.packer.longest
            );
            self.packer.done = 0;
            self.packer.deleted = 0;
            self.notify_pack_completed(out)?;
        }
        self.maybe_pack(None, None, out)
    }

    /// Partitions changed (NEO's `notifyPartitionChanges`): partitions not
    /// readable anymore are left out; once a cell is not out of date
    /// anymore, the oldest completed pack may be newer and another pack due.
    pub(super) fn pack_cells_changed(
        &mut self,
        were_outdated: &BTreeSet<u32>,
        out: &mut Outbox,
    ) -> Result<(), DbError> {
        let view = self.db.partition_view()?;
        self.packer.parts.retain(|p| view.readable.contains(p));
        let outdated = self.outdated_partitions()?;
        if were_outdated.iter().any(|p| !outdated.contains(p)) {
            self.notify_pack_completed(out)?;
            self.maybe_pack(None, None, out)?;
        }
        Ok(())
    }

    /// Our cells that are out of date.
    pub(super) fn outdated_partitions(&mut self) -> Result<BTreeSet<u32>, DbError> {
        Ok(self
            .db
            .assigned_cells()?
            .into_iter()
            .filter(|&(_, tid)| tid >= 0)
            .map(|(p, _)| p)
            .collect())
    }

    /// Operation stopped (NEO's `operational()` exit and its main loop):
    /// the pack state is forgotten, the master will tell it again.
    pub(super) fn pack_reset(&mut self) {
        let fixed = self.packer.fixed_batch;
        self.packer = Packer {
            fixed_batch: fixed,
            ..Packer::default()
        };
        self.completed_pack_id = Tid::ZERO;
        self.last_pack_id = Tid::ZERO;
    }
}
