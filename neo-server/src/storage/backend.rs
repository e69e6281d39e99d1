//! The [`Backend`] trait: what the storage node asks of its database.
//!
//! It follows NEO's `DatabaseManager` (`neo/storage/database/manager.py`):
//! the required methods are the backend primitives NEO's SQL backends
//! implement, with NEO's semantics (documented per method); the provided
//! methods are the logic NEO keeps in the base class, written once here on
//! top of the primitives.
//!
//! Conventions, as in NEO:
//! - writes go into an open database transaction; only [`Backend::commit`]
//!   makes them durable (a few operations commit themselves, as NEO's do:
//!   [`Backend::lock_transaction`], [`Backend::set_config_commit`],
//!   [`Backend::truncate`], [`Backend::drop_unfinished_data`]);
//! - the partition of an oid or tid is `id % np`, where `np` is
//!   `1 + MAX(pt.partition)`;
//! - reads of objects and transactions fail with
//!   [`DbError::NonReadableCell`] when this node has no readable cell for the
//!   partition;
//! - the 2PC tables: at vote, objects go to `tobj` under the ttid and the
//!   transaction to `ttrans` (with a NULL tid); lock sets `ttrans.tid`;
//!   unlock moves the rows to `trans`/`obj`.

#![deny(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};

use fsformat::{Oid, Tid};

use super::types::*;

/// A read-only handle on a backend's database ([`Backend::object_reader`]):
/// it sees what the backend committed, nothing else.
pub trait ObjectReader: Send {
    /// [`Backend::get_object`] for a partition `view` given by the caller
    /// (the node's, as the backend last showed it).
    fn get_object(
        &mut self,
        view: &PartitionView,
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    ) -> DbResult<ObjectLookup>;

    /// Forgets the snapshot it reads from, if older than `older_than`:
    /// the next read sees everything committed by then (called by the node
    /// whenever what it lets the reader serve changes).
    fn release(&mut self, older_than: std::time::Duration) {
        let _ = older_than;
    }
}

/// [`Backend::get_object`]'s answer from the record `found` (if any):
/// `bounded` when `at` or `before` was given; `last_tid` looks up the
/// object's last revision, only when needed.
pub fn object_lookup(
    found: Option<ObjectRecord>,
    bounded: bool,
    last_tid: impl FnOnce() -> DbResult<Option<Tid>>,
) -> DbResult<ObjectLookup> {
    if let Some(r) = found {
        return Ok(ObjectLookup::Found(r));
    }
    if bounded && last_tid()?.is_some() {
        Ok(ObjectLookup::NotFoundAt)
    } else {
        Ok(ObjectLookup::DoesNotExist)
    }
}

/// Volatile reference counts of data rows used by transactions that are not
/// unlocked yet (NEO's `_uncommitted_data`): such rows must not be pruned
/// although no `obj` row refers to them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeldData(BTreeMap<DataId, u64>);

impl HeldData {
    /// One more reference to `id`.
    pub fn hold(&mut self, id: DataId) {
        *self.0.entry(id).or_insert(0) += 1;
    }

    /// One reference less to `id`.
    pub fn release(&mut self, id: DataId) {
        if let Some(n) = self.0.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                self.0.remove(&id);
            }
        }
    }

    /// Whether `id` is referenced.
    pub fn contains(&self, id: DataId) -> bool {
        self.0.contains_key(&id)
    }

    /// Reference count of `id`.
    pub fn count(&self, id: DataId) -> u64 {
        self.0.get(&id).copied().unwrap_or(0)
    }

    /// Rebuilds the counts from `(data_id, references)` pairs, as NEO does
    /// from `tobj` when it opens a database.
    pub fn reset(&mut self, counts: impl IntoIterator<Item = (DataId, u64)>) {
        self.0 = counts.into_iter().filter(|(_, n)| *n > 0).collect();
    }
}

/// NEO's answer to `findUndoTID`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UndoInfo {
    /// The most recent serial of the object the undoing transaction can see
    /// (to detect conflicts later); `None` when the object is not visible.
    pub current_tid: Option<Tid>,
    /// The serial holding the data the undo restores; `None` when the undo
    /// removes the object (it undoes its creation).
    pub data_tid: Option<Tid>,
    /// Whether the undone revision is still the current one.
    pub is_current: bool,
}

/// The storage node's database (NEO's `DatabaseManager`).
pub trait Backend {
    // ----- durability -----

    /// Makes every change so far durable (NEO's `commit`). Once it returns,
    /// the changes survive a crash of the process.
    fn commit(&mut self) -> DbResult<()>;

    // ----- configuration (`config` table) -----

    /// Reads a `config` value (`getConfiguration`).
    fn config(&mut self, key: &str) -> DbResult<Option<String>>;

    /// Writes (or with `None` deletes) a `config` value, without committing
    /// (`_setConfiguration`).
    fn set_config(&mut self, key: &str, value: Option<&str>) -> DbResult<()>;

    // ----- partition table (`pt` table) -----

    /// All rows of `pt` (`_getPartitionTable`).
    fn pt_rows(&mut self) -> DbResult<Vec<PtRow>>;

    /// Inserts, updates or deletes cells (`_changePartitionTable`): an
    /// existing cell gets its `tid` updated (its `pack` is kept), a new one is
    /// inserted with the given `pack`, a `None` tid deletes the cell. With
    /// `reset`, the cells not listed are deleted too.
    fn change_pt_rows(&mut self, cells: &[PtChange], reset: bool) -> DbResult<()>;

    /// Number of partitions and readable partitions, from `pt` and
    /// `config.nid` (cached by backends, refreshed when they change).
    fn partition_view(&mut self) -> DbResult<PartitionView>;

    /// Makes a partition readable (or not anymore) regardless of `pt`,
    /// while this node replicates it (NEO's `replicated` context). Not
    /// stored.
    fn set_temporarily_readable(&mut self, partition: u32, readable: bool) -> DbResult<()>;

    /// Records the last completed pack of a cell of this node
    /// (`_setPartitionPacked`).
    fn set_partition_packed(&mut self, partition: u32, pack_id: u64) -> DbResult<()>;

    /// The last completed pack of a cell of this node
    /// (`_getPartitionPacked`); `None` if the cell or its value is missing.
    fn partition_packed(&mut self, partition: u32) -> DbResult<Option<u64>>;

    /// `{partition: pack id}` of the cells with a pack id, only
    /// `UP_TO_DATE` ones if asked (`getPackedIDs`).
    fn packed_ids(&mut self, up_to_date: bool) -> DbResult<BTreeMap<u32, Tid>>;

    // ----- last ids, per partition -----

    /// Smallest tid of `trans` in a partition (`_getFirstTID`, without
    /// NEO's `MAX_TID` for none).
    fn first_tid_in(&mut self, partition: u32) -> DbResult<Option<Tid>>;

    /// Greatest tid of `trans` in a partition, at most `max_tid`
    /// (`_getLastTID`).
    fn last_tid_in(&mut self, partition: u32, max_tid: Option<Tid>) -> DbResult<Option<Tid>>;

    /// Greatest tid and greatest oid of `obj` in a partition (`_getLastIDs`).
    fn last_ids_in(&mut self, partition: u32) -> DbResult<(Option<Tid>, Option<Oid>)>;

    // ----- data (`data` table) -----

    /// Stores object data and returns its row id (`storeData`).
    ///
    /// `checksum` is `None` for a deletion (then nothing is stored and `None`
    /// returned). With `data_tid` (undo), the data id of record
    /// `(oid, data_tid)` is returned if it exists; if not and the partition is
    /// readable it fails with [`DbError::UndoPack`], otherwise the given data
    /// is stored. When the database deduplicates (NEO's `--dedup`: a unique
    /// index on `(hash, compression)`), equal data is stored once, and equal
    /// hashes with different bytes fail with [`DbError::HashCollision`].
    fn store_data(
        &mut self,
        checksum: Option<&Checksum>,
        oid: Oid,
        data: &[u8],
        compression: u8,
        data_tid: Option<Tid>,
    ) -> DbResult<Option<DataId>>;

    /// `(compression, checksum, data)` of a data row (`loadData`).
    fn load_data(&mut self, id: DataId) -> DbResult<Option<(u8, Checksum, Vec<u8>)>>;

    /// The volatile references of uncommitted transactions to data rows.
    fn held_data(&mut self) -> &mut HeldData;

    /// Deletes the given data rows that are neither held nor referenced by
    /// `obj`; returns how many were deleted (`_pruneData`).
    fn prune_data(&mut self, ids: &[DataId]) -> DbResult<usize>;

    /// Data rows that no `obj` row refers to (`getOrphanList`).
    fn orphan_data(&mut self) -> DbResult<Vec<DataId>>;

    // ----- two-phase commit -----

    /// Writes a transaction (`storeTransaction`): objects under `tid` (the
    /// ttid when `temporary`) into `tobj` or `obj`, and the metadata into
    /// `ttrans` (tid NULL) or `trans`. Re-storing an identical `obj` row
    /// (an interrupted replication) is accepted; any other duplicate fails
    /// with [`DbError::Duplicate`].
    fn store_transaction(
        &mut self,
        tid: Tid,
        objects: &[ObjectRef],
        txn: Option<&TxnMeta>,
        temporary: bool,
    ) -> DbResult<()>;

    /// Stores a pack order (`storePackOrder`).
    fn store_pack_order(&mut self, order: &PackOrder) -> DbResult<()>;

    /// Marks voted transaction `ttid` as committed with `tid`, approves its
    /// pack order if `pack`, and commits (`lockTransaction`).
    fn lock_transaction(&mut self, tid: Tid, ttid: Tid, pack: bool) -> DbResult<()>;

    /// Moves a locked transaction to `trans`/`obj`, making it visible
    /// (`unlockTransaction`): metadata if `trans`, objects if `obj` (they
    /// release their held data), the pack order id if `pack`. Does not commit.
    fn unlock_transaction(
        &mut self,
        tid: Tid,
        ttid: Tid,
        trans: bool,
        obj: bool,
        pack: bool,
    ) -> DbResult<()>;

    /// Deletes the temporary rows of `ttid` (`abortTransaction`). Held data
    /// is released by the caller.
    fn abort_transaction(&mut self, ttid: Tid) -> DbResult<()>;

    /// The tid a ttid was committed with, if it is in `trans`
    /// (`getFinalTID`).
    fn final_tid(&mut self, ttid: Tid) -> DbResult<Option<Tid>>;

    /// `{ttid: tid if locked}` of transactions in `ttrans`/`tobj`
    /// (`getUnfinishedTIDDict`).
    fn unfinished_transactions(&mut self) -> DbResult<BTreeMap<Tid, Option<Tid>>>;

    /// Data ids referenced by `tobj` (`_getUnfinishedDataIdList`).
    fn unfinished_data_ids(&mut self) -> DbResult<Vec<DataId>>;

    /// Deletes temporary rows of the given partitions, or of all
    /// (`dropPartitionsTemporary`).
    fn drop_partitions_temporary(&mut self, partitions: Option<&[u32]>) -> DbResult<()>;

    // ----- reads -----

    /// The revision of `oid` at exactly `at`, or else the last one before
    /// `before`, or else the last one (`_getObject`). `None` if no record
    /// matches.
    fn find_object(
        &mut self,
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    ) -> DbResult<Option<ObjectRecord>>;

    /// The last serial of `oid` (`getLastObjectTID`).
    fn last_object_tid(&mut self, oid: Oid) -> DbResult<Option<Tid>>;

    /// A committed transaction, or with `all` also a locked one from
    /// `ttrans` (`getTransaction`).
    fn get_transaction(&mut self, tid: Tid, all: bool) -> DbResult<Option<TransactionRecord>>;

    /// `(serial, data length)` of `oid`, newest first, skipping `offset` and
    /// at most `length`; `None` if nothing (`getObjectHistoryWithLength`).
    fn object_history(
        &mut self,
        oid: Oid,
        offset: u64,
        length: u64,
    ) -> DbResult<Option<Vec<(Tid, u64)>>>;

    /// `(greatest serial before undo_tid, [(serial, value_tid)] after
    /// undo_tid)` if `oid` has a record at `undo_tid`
    /// (`_getObjectHistoryForUndo`).
    #[allow(clippy::type_complexity)]
    fn object_history_for_undo(
        &mut self,
        oid: Oid,
        undo_tid: Tid,
    ) -> DbResult<Option<(Option<Tid>, Vec<(Tid, Option<Tid>)>)>>;

    /// Tids of `trans` in the given partitions, newest first, skipping
    /// `offset`, at most `length` (`_getTIDList`, no readability check).
    fn tid_list_in(&mut self, offset: u64, length: u64, partitions: &[u32]) -> DbResult<Vec<Tid>>;

    /// Non-deleted oids of a partition as of `tid`, from `min_oid`, at most
    /// `length`; with the `min_oid` to continue from, `None` when done
    /// (`oidsFrom`).
    fn oids_from(
        &mut self,
        partition: u32,
        length: u64,
        min_oid: Oid,
        tid: Tid,
    ) -> DbResult<(Option<Oid>, Vec<Oid>)>;

    // ----- replication -----

    /// Tids of `trans` in a partition, `min_tid <= tid <= max_tid`,
    /// ascending, at most `length` (`getReplicationTIDList`).
    fn replication_tid_list(
        &mut self,
        min_tid: Tid,
        max_tid: Tid,
        length: Option<u64>,
        partition: u32,
    ) -> DbResult<Vec<Tid>>;

    /// `(serial, oid)` of `obj` in a partition, from `(min_tid, min_oid)`
    /// (inclusive) to `max_tid`, in `(tid, oid)` order, at most `length`
    /// (`getReplicationObjectList`).
    fn replication_object_list(
        &mut self,
        min_tid: Tid,
        max_tid: Tid,
        length: Option<u64>,
        partition: u32,
        min_oid: Oid,
    ) -> DbResult<Vec<(Tid, Oid)>>;

    /// Digest of the tids of `trans` in a partition, as NEO computes it
    /// (`checkTIDRange`).
    fn check_tid_range(
        &mut self,
        partition: u32,
        length: Option<u64>,
        min_tid: Tid,
        max_tid: Tid,
    ) -> DbResult<TidRangeCheck> {
        let tids = self.replication_tid_list(min_tid, max_tid, length, partition)?;
        Ok(TidRangeCheck::of(&tids))
    }

    /// Digest of the `(serial, oid)` of `obj` in a partition, as NEO
    /// computes it (`checkSerialRange`).
    fn check_serial_range(
        &mut self,
        partition: u32,
        length: Option<u64>,
        min_tid: Tid,
        max_tid: Tid,
        min_oid: Oid,
    ) -> DbResult<SerialRangeCheck>;

    /// Deletes a transaction and its pack order (`deleteTransaction`).
    fn delete_transaction(&mut self, tid: Tid) -> DbResult<()>;

    /// Deletes all revisions of `oid`, or only `serial` (`deleteObject`).
    fn delete_object(&mut self, oid: Oid, serial: Option<Tid>) -> DbResult<()>;

    /// Deletes transactions and objects of a partition with
    /// `min_tid < tid <= max_tid` (`_deleteRange`).
    fn delete_range(
        &mut self,
        partition: u32,
        min_tid: Option<Tid>,
        max_tid: Option<Tid>,
    ) -> DbResult<()>;

    // ----- pack -----

    /// Pack orders with id `>= min_completed` in readable partitions, by id
    /// (`_getPackOrders`).
    fn pack_orders(&mut self, min_completed: Tid) -> DbResult<Vec<PackOrder>>;

    /// Approves and rejects pack orders; returns those that exist
    /// (`_signPackOrders`).
    fn sign_pack_orders(&mut self, approved: &[Tid], rejected: &[Tid]) -> DbResult<Vec<Tid>>;

    /// Packs a partition at `tid` (`_pack`): for each oid, removes revisions
    /// older than its last one at or before `tid`, and all of them if that
    /// one is a deletion; prunes data. Returns the last oid processed (for
    /// [`PackScope::From`]: continue after it; `None` when done; always `None`
    /// for [`PackScope::Oids`]) and the number of distinct data ids the
    /// deleted records referred to (NEO's statistic).
    fn pack_partition(
        &mut self,
        partition: u32,
        scope: PackScope<'_>,
        tid: Tid,
    ) -> DbResult<(Option<Oid>, usize)>;

    /// Whether pack orders may be processed now; the storage node does
    /// not start a pack otherwise (NEO's Importer: `isReadyToStartPack`).
    /// Yes by default.
    fn pack_allowed(&mut self) -> bool {
        true
    }

    /// One step of dropping a partition's data (`_dropPartition`): deletes
    /// at most `count` `obj` rows (in `(tid, oid)` order) and returns the
    /// data ids they referred to (to prune); once none is left, deletes the
    /// partition's transactions and their pack orders.
    fn drop_partition_step(&mut self, partition: u32, count: u64) -> DbResult<DropStep>;

    /// Background work of the backend (the Importer migrates its source),
    /// for at most about `budget`; returns whether more is left. The storage
    /// node calls it while operational, between requests. None by default.
    fn background_step(&mut self, budget: std::time::Duration) -> DbResult<bool> {
        let _ = budget;
        Ok(false)
    }

    /// One line on the progress of [`background_step`](Self::background_step)
    /// (the Importer's import), shown by `neoctl print summary` through the
    /// admin; `None` when the backend has no background work. None by
    /// default.
    fn background_status(&mut self) -> Option<String> {
        None
    }

    // ===== provided: NEO's base-class logic =====

    /// `config.version`.
    fn version(&mut self) -> DbResult<Option<String>> {
        self.config("version")
    }

    /// Writes a `config` value and commits (`setConfiguration`).
    fn set_config_commit(&mut self, key: &str, value: Option<&str>) -> DbResult<()> {
        self.set_config(key, value)?;
        self.commit()
    }

    /// The cluster name (`config.name`).
    fn name(&mut self) -> DbResult<Option<String>> {
        self.config("name")
    }

    /// Sets the cluster name and commits (`setName`).
    fn set_name(&mut self, name: &str) -> DbResult<()> {
        self.set_config_commit("name", Some(name))
    }

    /// This node's id (`config.nid`).
    fn nid(&mut self) -> DbResult<Option<Nid>> {
        parse_config(self.config("nid")?, "nid")
    }

    /// Sets this node's id, moving its cells in `pt`, and commits
    /// (`setUUID`).
    fn set_nid(&mut self, nid: Nid) -> DbResult<()> {
        let old = self.nid()?;
        if old == Some(nid) {
            return Ok(());
        }
        if let Some(old) = old.filter(|&o| o != 0) {
            let mut cells = Vec::new();
            for row in self.pt_rows()?.into_iter().filter(|r| r.nid == old) {
                cells.push(PtChange {
                    partition: row.partition,
                    nid: old,
                    tid: None,
                    pack: row.pack,
                });
                cells.push(PtChange {
                    partition: row.partition,
                    nid,
                    tid: Some(row.tid),
                    pack: row.pack,
                });
            }
            self.change_pt_rows(&cells, false)?;
        }
        self.set_config_commit("nid", Some(&nid.to_string()))
    }

    /// `config.replicas` (`getNumReplicas`).
    fn num_replicas(&mut self) -> DbResult<Option<u32>> {
        parse_config(self.config("replicas")?, "replicas")
    }

    /// `config.ptid` (`getPTID`).
    fn ptid(&mut self) -> DbResult<Option<u64>> {
        parse_config(self.config("ptid")?, "ptid")
    }

    /// `config.truncate_tid`, stored as 16 hex digits (`getTruncateTID`).
    fn truncate_tid(&mut self) -> DbResult<Option<Tid>> {
        parse_hex_tid(self.config("truncate_tid")?, "truncate_tid")
    }

    /// Sets `config.truncate_tid`, without committing (`_setTruncateTID`).
    fn set_truncate_tid(&mut self, tid: Option<Tid>) -> DbResult<()> {
        self.set_config("truncate_tid", tid.map(|t| t.to_string()).as_deref())
    }

    /// `config.backup_tid`, stored as 16 hex digits (`getBackupTID`).
    fn backup_tid(&mut self) -> DbResult<Option<Tid>> {
        parse_hex_tid(self.config("backup_tid")?, "backup_tid")
    }

    /// Sets `config.backup_tid`, without committing (`_setBackupTID`).
    fn set_backup_tid(&mut self, tid: Option<Tid>) -> DbResult<()> {
        self.set_config("backup_tid", tid.map(|t| t.to_string()).as_deref())
    }

    /// The partition table as cells `(partition, nid, state)`
    /// (`getPartitionTable`).
    fn partition_table(&mut self) -> DbResult<Vec<(u32, Nid, CellState)>> {
        self.pt_rows()?
            .into_iter()
            .map(|r| {
                let state = r.state().ok_or_else(|| DbError::Corrupted {
                    what: format!("pt: invalid tid {} for partition {}", r.tid, r.partition),
                })?;
                Ok((r.partition, r.nid, state))
            })
            .collect()
    }

    /// `(partition, raw pt.tid)` of this node's cells (`iterAssignedCells`).
    fn assigned_cells(&mut self) -> DbResult<Vec<(u32, i64)>> {
        let nid = self.nid()?;
        Ok(self
            .pt_rows()?
            .into_iter()
            .filter(|r| Some(r.nid) == nid)
            .map(|r| (r.partition, r.tid))
            .collect())
    }

    /// Applies a partition table change from the master
    /// (`changePartitionTable`) and returns the partitions whose data this
    /// node should now drop (the caller's background work). `last_pack_id`
    /// is the cluster's last pack id, given to new non-readable cells.
    fn change_partition_table(
        &mut self,
        ptid: u64,
        num_replicas: u32,
        cells: &[(u32, Nid, CellState)],
        reset: bool,
        last_pack_id: Tid,
    ) -> DbResult<BTreeSet<u32>> {
        let my_nid = self.nid()?;
        let assigned_before: BTreeMap<u32, i64> = self.assigned_cells()?.into_iter().collect();
        let backup_tid = self.backup_tid()?;
        let mut max_offset = None;
        let mut assigned = BTreeSet::new();
        let mut drop = BTreeSet::new();
        let mut changes = Vec::with_capacity(cells.len());
        for &(offset, nid, state) in cells {
            max_offset = max_offset.max(Some(offset));
            let mine = Some(nid) == my_nid;
            let mut pack = None;
            let tid = if state == CellState::Discarded {
                if mine {
                    drop.insert(offset);
                }
                None
            } else {
                if mine {
                    assigned.insert(offset);
                    pack = Some(if state.is_readable() {
                        0
                    } else {
                        last_pack_id.0
                    });
                }
                if !mine || state != CellState::OutOfDate {
                    Some(-(state as i64))
                } else {
                    let t = assigned_before.get(&offset).copied().unwrap_or(0);
                    if t >= 0 {
                        Some(t)
                    } else if !CellState::from_code(-t).is_some_and(CellState::is_readable) {
                        Some(0)
                    } else if let Some(b) = backup_tid {
                        Some(to_sql(b.0, "backup_tid")?)
                    } else {
                        let obj = self.last_ids_in(offset)?.0.map_or(0, |t| t.0);
                        let trans = self.last_tid_in(offset, None)?.map_or(0, |t| t.0);
                        Some(to_sql(obj.max(trans), "tid")?)
                    }
                }
            };
            changes.push(PtChange {
                partition: offset,
                nid,
                tid,
                pack,
            });
        }
        if reset {
            if let Some(max) = max_offset {
                drop.extend(0..=max);
            }
        }
        for p in &assigned {
            drop.remove(p);
        }
        self.change_pt_rows(&changes, reset)?;
        self.set_config("ptid", Some(&ptid.to_string()))?;
        self.set_config("replicas", Some(&num_replicas.to_string()))?;
        Ok(drop)
    }

    /// Records that an `OUT_OF_DATE` cell of this node is replicated up to
    /// `tid` (`updateCellTID`).
    fn update_cell_tid(&mut self, partition: u32, tid: Tid) -> DbResult<()> {
        let Some((_, t)) = self
            .assigned_cells()?
            .into_iter()
            .find(|&(p, _)| p == partition)
        else {
            return Err(DbError::Corrupted {
                what: format!("no cell of this node for partition {partition}"),
            });
        };
        let tid = to_sql(tid.0, "tid")?;
        if t < 0 || t == tid {
            return Ok(());
        }
        let Some(nid) = self.nid()? else {
            return Err(DbError::Corrupted {
                what: "config.nid is missing".into(),
            });
        };
        self.change_pt_rows(
            &[PtChange {
                partition,
                nid,
                tid: Some(tid),
                pack: None,
            }],
            false,
        )
    }

    /// Where replication of each cell of this node should resume
    /// (`iterCellNextTIDs`).
    fn cell_next_tids(&mut self) -> DbResult<Vec<(u32, CellNext)>> {
        let backup = self
            .backup_tid()?
            .map(|t| if t.0 == 0 { 0 } else { t.0 + 1 });
        let mut out = Vec::new();
        for (offset, tid) in self.assigned_cells()? {
            if tid >= 0 {
                let t = from_sql(tid, "pt.tid")?;
                out.push((
                    offset,
                    CellNext::Replicate {
                        next_tid: Tid(if t == 0 { 0 } else { t + 1 }),
                    },
                ));
            } else if CellState::from_code(-tid).is_some_and(CellState::is_readable) {
                let next = match backup {
                    None => CellNext::Readable,
                    Some(next) => {
                        let trans = self.last_tid_in(offset, None)?.map_or(0, |t| t.0 + 1);
                        let obj = self.last_ids_in(offset)?.0.map_or(0, |t| t.0);
                        CellNext::Backup {
                            trans: Tid(next.max(trans)),
                            obj: Tid(next.max(obj)),
                        }
                    }
                };
                out.push((offset, next));
            }
        }
        Ok(out)
    }

    /// Lowers the last completed pack of a cell to `pack_id` if it is
    /// greater, before replicating from a node that packed less
    /// (`updateCompletedPackByReplication`).
    fn update_completed_pack_by_replication(
        &mut self,
        partition: u32,
        pack_id: Tid,
    ) -> DbResult<()> {
        if self
            .partition_packed(partition)?
            .is_some_and(|p| pack_id.0 < p)
        {
            self.set_partition_packed(partition, pack_id.0)?;
        }
        Ok(())
    }

    /// Smallest tid over readable partitions, [`MAX_TID`] if none
    /// (`getFirstTID`).
    fn first_tid(&mut self) -> DbResult<Tid> {
        let view = self.partition_view()?;
        let mut first = MAX_TID;
        for p in view.readable {
            if let Some(t) = self.first_tid_in(p)? {
                first = first.min(t);
            }
        }
        Ok(first)
    }

    /// Greatest tid of `trans` over readable partitions, at most `max_tid`
    /// (`getLastTID`).
    fn last_tid(&mut self, max_tid: Option<Tid>) -> DbResult<Option<Tid>> {
        let view = self.partition_view()?;
        let mut last = None;
        for p in view.readable {
            last = last.max(self.last_tid_in(p, max_tid)?);
        }
        Ok(last)
    }

    /// Last tid (of `obj` and `trans`) and last oid over readable partitions
    /// (`getLastIDs`).
    fn last_ids(&mut self) -> DbResult<(Option<Tid>, Option<Oid>)> {
        let view = self.partition_view()?;
        let (mut tid, mut oid) = (None, None);
        for &p in &view.readable {
            let (t, o) = self.last_ids_in(p)?;
            tid = tid.max(t);
            oid = oid.max(o);
        }
        if !view.readable.is_empty() {
            tid = tid.max(self.last_tid(None)?);
        }
        Ok((tid, oid))
    }

    /// [`store_data`](Self::store_data) and hold a volatile reference to the
    /// row until [`release_data`](Self::release_data) (`holdData`).
    fn hold_data(
        &mut self,
        checksum: Option<&Checksum>,
        oid: Oid,
        data: &[u8],
        compression: u8,
        data_tid: Option<Tid>,
    ) -> DbResult<Option<DataId>> {
        let id = self.store_data(checksum, oid, data, compression, data_tid)?;
        if let Some(id) = id {
            self.held_data().hold(id);
        }
        Ok(id)
    }

    /// Releases one volatile reference to each row; with `prune`, deletes
    /// rows nothing refers to anymore (`releaseData`).
    fn release_data(&mut self, ids: &[DataId], prune: bool) -> DbResult<()> {
        for &id in ids {
            self.held_data().release(id);
        }
        if prune {
            self.prune_data(ids)?;
        }
        Ok(())
    }

    /// Drops every unfinished transaction and its data, and commits
    /// (`dropUnfinishedData`).
    fn drop_unfinished_data(&mut self) -> DbResult<()> {
        let ids = self.unfinished_data_ids()?;
        self.drop_partitions_temporary(None)?;
        self.release_data(&ids, true)?;
        self.commit()
    }

    /// An object revision (`getObject`): at exactly `at`, or the last one
    /// before `before`, or the last one. Distinguishes an oid without a
    /// record there from an oid that does not exist.
    fn get_object(
        &mut self,
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    ) -> DbResult<ObjectLookup> {
        let found = self.find_object(oid, at, before)?;
        object_lookup(found, at.is_some() || before.is_some(), || {
            self.last_object_tid(oid)
        })
    }

    /// A second, read-only handle on the same database, with which the
    /// node serves loads off its own thread (see
    /// `crate::storage::node::LoadPath`); `None` if the backend has none.
    fn object_reader(&mut self) -> DbResult<Option<Box<dyn ObjectReader>>> {
        Ok(None)
    }

    /// How many commits this handle made so far: what a reader sees
    /// changes only when it does (unlock, pack, replication...).
    fn commits(&self) -> u64 {
        0
    }

    /// The revision of `oid` at exactly `tid`, for replication
    /// (`fetchObject`); `next_serial` is left `None`.
    fn fetch_object(&mut self, oid: Oid, tid: Tid) -> DbResult<Option<ObjectRecord>> {
        Ok(self.find_object(oid, Some(tid), None)?.map(|mut r| {
            r.next_serial = None;
            r
        }))
    }

    /// What undoing `undo_tid` means for `oid` (`findUndoTID`), seen from a
    /// transaction that sees serials below `ltid` (all if `None`), whose own
    /// version of the object (if it modified it) is `current_tid`. `None` if
    /// `oid` has no record at `undo_tid`.
    fn find_undo_tid(
        &mut self,
        oid: Oid,
        ltid: Option<Tid>,
        undo_tid: Tid,
        current_tid: Option<Tid>,
    ) -> DbResult<Option<UndoInfo>> {
        let Some((mut undone, history)) = self.object_history_for_undo(oid, undo_tid)? else {
            return Ok(None);
        };
        let mut undo_tid = undo_tid;
        let current = match current_tid {
            Some(c) => c,
            None => match history.iter().rev().map(|&(t, _)| t).find(|&t| match ltid {
                None => true,
                Some(l) => t < l,
            }) {
                Some(t) => t,
                None => {
                    if ltid.is_some_and(|l| l <= undo_tid) {
                        return Ok(Some(UndoInfo {
                            current_tid: None,
                            data_tid: None,
                            is_current: false,
                        }));
                    }
                    undo_tid
                }
            },
        };
        let mut is_current = current == undo_tid;
        for &(tid, value_tid) in &history {
            let Some(value_tid) = value_tid else { continue };
            if Some(value_tid) == undone {
                undone = Some(tid);
            } else if value_tid == undo_tid {
                if current == tid {
                    is_current = true;
                } else {
                    undo_tid = tid;
                }
            }
        }
        Ok(Some(UndoInfo {
            current_tid: Some(current),
            data_tid: undone,
            is_current,
        }))
    }

    /// Tids of `trans` in the given partitions, newest first
    /// (`getTIDList`); fails if one of them is not readable.
    fn tid_list(&mut self, offset: u64, length: u64, partitions: &[u32]) -> DbResult<Vec<Tid>> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let view = self.partition_view()?;
        if let Some(&p) = partitions.iter().find(|p| !view.readable.contains(p)) {
            return Err(DbError::NonReadableCell { partition: p });
        }
        self.tid_list_in(offset, length, partitions)
    }

    /// Applies `config.truncate_tid` if set (`truncate`): deletes every
    /// transaction and object after it in this node's cells, lowers
    /// `OUT_OF_DATE` cells replicated beyond it, clears the key and commits.
    fn truncate(&mut self) -> DbResult<()> {
        let Some(tid) = self.truncate_tid()? else {
            return Ok(());
        };
        let raw = to_sql(tid.0, "truncate_tid")?;
        let nid = self.nid()?;
        let mut cells = Vec::new();
        for (partition, state) in self.assigned_cells()? {
            if let Some(nid) = nid.filter(|_| state > raw) {
                cells.push(PtChange {
                    partition,
                    nid,
                    tid: Some(raw),
                    pack: None,
                });
            }
            self.delete_range(partition, Some(tid), None)?;
        }
        if !cells.is_empty() {
            self.change_pt_rows(&cells, false)?;
        }
        self.set_truncate_tid(None)?;
        self.commit()
    }
}

fn parse_config<T: std::str::FromStr>(value: Option<String>, key: &str) -> DbResult<Option<T>> {
    value
        .map(|v| {
            v.trim().parse().map_err(|_| DbError::Corrupted {
                what: format!("config.{key} is not a number: {v:?}"),
            })
        })
        .transpose()
}

fn parse_hex_tid(value: Option<String>, key: &str) -> DbResult<Option<Tid>> {
    value
        .map(|v| {
            if v.len() != 16 {
                return Err(DbError::Corrupted {
                    what: format!("config.{key} is not 16 hex digits: {v:?}"),
                });
            }
            u64::from_str_radix(&v, 16)
                .map(Tid)
                .map_err(|_| DbError::Corrupted {
                    what: format!("config.{key} is not 16 hex digits: {v:?}"),
                })
        })
        .transpose()
}
