//! [`MemoryBackend`]: NEO's tables in memory, with crash injection.
//!
//! It implements [`Backend`] with the same semantics as
//! [`SqliteBackend`](super::SqliteBackend) (the shared test suite runs on
//! both), over ordered maps shaped like NEO's tables and keyed like their
//! primary keys.
//!
//! Durability is modelled by two copies of the tables: the *durable* one,
//! which lives in a [`MemoryDisk`] shared handle, and the *working* one the
//! backend changes; [`Backend::commit`] copies the working tables to the disk.
//! A crash (injected by a [`CrashPlan`] or by [`MemoryBackend::crash`])
//! kills the instance: every later call fails with [`DbError::Crashed`] and
//! uncommitted work is gone. [`MemoryBackend::open`] on the same disk is the
//! restart: it sees exactly what was committed, and rebuilds the volatile
//! state (held data, caches) as NEO does when it opens a database.

#![deny(missing_docs)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use fsformat::{Oid, Tid};

use super::backend::{Backend, HeldData};
use super::types::*;

/// When an injected crash happens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashPlan {
    /// Let this many operations (trait calls) succeed, then crash on the
    /// next one; `None` never crashes.
    pub after_ops: Option<u64>,
    /// If the crashing operation is a commit (explicit or inside an
    /// operation that commits): whether its changes reached the disk before
    /// the crash (the "durable but not acknowledged" case).
    pub commit_reaches_disk: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct PackRow {
    approved: Option<bool>,
    partial: bool,
    oids: Option<Vec<Oid>>,
    pack_tid: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct TTransRow {
    partition: u32,
    tid: Option<u64>,
    meta: TxnMeta,
}

/// `(data_id, value_tid)` of an `obj`/`tobj` row.
type ObjVal = (Option<DataId>, Option<u64>);

/// `(partition, data_id, value_tid)` of a `tobj` row.
type TObjVal = (u32, Option<DataId>, Option<u64>);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Tables {
    config: BTreeMap<String, String>,
    /// `(partition, nid) -> (tid, pack)`.
    pt: BTreeMap<(u32, Nid), (i64, Option<u64>)>,
    pack: BTreeMap<u64, PackRow>,
    /// `(partition, tid) -> metadata`.
    trans: BTreeMap<(u32, u64), TxnMeta>,
    /// `(partition, oid, tid) -> (data_id, value_tid)`.
    obj: BTreeMap<(u32, u64, u64), ObjVal>,
    /// `id -> (hash, compression, value)`.
    data: BTreeMap<u64, (Checksum, u8, Vec<u8>)>,
    /// No primary key in NEO: rows in insertion order.
    ttrans: Vec<TTransRow>,
    /// `(ttid, oid) -> (partition, data_id, value_tid)`.
    tobj: BTreeMap<(u64, u64), TObjVal>,
    /// The `_data_i1` unique index exists.
    dedup: bool,
}

/// The durable storage of [`MemoryBackend`]s: what survives crashes.
#[derive(Clone, Debug, Default)]
pub struct MemoryDisk(Arc<Mutex<Tables>>);

impl MemoryDisk {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    fn load(&self) -> Tables {
        match self.0.lock() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn store(&self, tables: &Tables) {
        match self.0.lock() {
            Ok(mut t) => *t = tables.clone(),
            Err(poisoned) => *poisoned.into_inner() = tables.clone(),
        }
    }
}

/// NEO's storage database in memory (see the module documentation).
#[derive(Debug)]
pub struct MemoryBackend {
    disk: MemoryDisk,
    work: Tables,
    view: Option<PartitionView>,
    extra_readable: BTreeSet<u32>,
    data_last_ids: HashMap<u32, u64>,
    held: HeldData,
    plan: CrashPlan,
    ops: u64,
    crashed: bool,
}

impl MemoryBackend {
    /// A backend on a new, empty disk (NEO's set-up: `config.version` is
    /// written and committed), deduplicating data if `dedup`.
    pub fn new(dedup: bool) -> Self {
        let disk = MemoryDisk::new();
        let mut tables = Tables {
            dedup,
            ..Tables::default()
        };
        tables
            .config
            .insert("version".into(), SCHEMA_VERSION.to_string());
        disk.store(&tables);
        Self::open(&disk)
    }

    /// Opens the committed state of `disk`, as a restarted node would.
    pub fn open(disk: &MemoryDisk) -> Self {
        let work = disk.load();
        let mut held = HeldData::default();
        let mut counts: BTreeMap<DataId, u64> = BTreeMap::new();
        for (_, id, _) in work.tobj.values() {
            if let Some(id) = id {
                *counts.entry(*id).or_insert(0) += 1;
            }
        }
        held.reset(counts);
        MemoryBackend {
            disk: disk.clone(),
            work,
            view: None,
            extra_readable: BTreeSet::new(),
            data_last_ids: HashMap::new(),
            held,
            plan: CrashPlan::default(),
            ops: 0,
            crashed: false,
        }
    }

    /// The disk, to [`open`](Self::open) it again after a crash.
    pub fn disk(&self) -> &MemoryDisk {
        &self.disk
    }

    /// Arms a crash; the operation count restarts from zero.
    pub fn set_crash_plan(&mut self, plan: CrashPlan) {
        self.plan = plan;
        self.ops = 0;
    }

    /// Crashes now: uncommitted work is lost and every later call fails.
    pub fn crash(&mut self) {
        self.crashed = true;
        self.work = Tables::default();
        self.view = None;
        self.held = HeldData::default();
    }

    /// Whether this instance has crashed.
    pub fn is_crashed(&self) -> bool {
        self.crashed
    }

    /// Counts an operation, crashing if the plan says so.
    fn tick(&mut self) -> DbResult<()> {
        if self.crashed {
            return Err(DbError::Crashed);
        }
        if let Some(n) = self.plan.after_ops {
            if self.ops >= n {
                self.crash();
                return Err(DbError::Crashed);
            }
        }
        self.ops += 1;
        Ok(())
    }

    fn do_commit(&mut self) -> DbResult<()> {
        if self.crashed {
            return Err(DbError::Crashed);
        }
        if let Some(n) = self.plan.after_ops {
            if self.ops >= n {
                if self.plan.commit_reaches_disk {
                    self.disk.store(&self.work);
                }
                self.crash();
                return Err(DbError::Crashed);
            }
        }
        self.ops += 1;
        self.disk.store(&self.work);
        Ok(())
    }

    fn view(&mut self) -> DbResult<&PartitionView> {
        if self.view.is_none() {
            let rows = pt_rows(&self.work);
            let nid = parse_nid(&self.work)?;
            let mut view = PartitionView::from_rows(&rows, nid);
            view.readable.extend(self.extra_readable.iter().copied());
            self.view = Some(view);
        }
        Ok(self.view.get_or_insert_with(PartitionView::default))
    }

    fn my_nid(&self) -> DbResult<Nid> {
        parse_nid(&self.work)?.ok_or_else(|| DbError::Corrupted {
            what: "config.nid is missing".into(),
        })
    }

    fn data_last_id(&mut self, p: u32) -> DbResult<u64> {
        if let Some(&id) = self.data_last_ids.get(&p) {
            return Ok(id);
        }
        if p >= 1 << 15 {
            return Err(DbError::OutOfRange {
                what: "partition",
                value: u64::from(p),
            });
        }
        let lo = u64::from(p) << 48;
        let hi = u64::from(p + 1) << 48;
        let next = self
            .work
            .data
            .range(lo..hi)
            .next_back()
            .map_or(lo, |(&id, _)| id + 1);
        self.data_last_ids.insert(p, next);
        Ok(next)
    }

    fn obj_of(&self, p: u32, oid: u64) -> impl DoubleEndedIterator<Item = (u64, &ObjVal)> + '_ {
        self.work
            .obj
            .range((p, oid, 0)..=(p, oid, u64::MAX))
            .map(|(&(_, _, t), v)| (t, v))
    }

    /// `(tid, oid)` of a partition's `obj` rows, in that order.
    fn obj_by_tid(&self, p: u32) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self
            .work
            .obj
            .range((p, 0, 0)..=(p, u64::MAX, u64::MAX))
            .map(|(&(_, o, t), _)| (t, o))
            .collect();
        v.sort_unstable();
        v
    }

    fn trans_tids(&self, p: u32) -> impl DoubleEndedIterator<Item = u64> + '_ {
        self.work
            .trans
            .range((p, 0)..=(p, u64::MAX))
            .map(|(&(_, t), _)| t)
    }

    fn check_ids(&self, ids: &[u64], what: &'static str) -> DbResult<()> {
        ids.iter().try_for_each(|&i| to_sql(i, what).map(|_| ()))
    }
}

fn pt_rows(t: &Tables) -> Vec<PtRow> {
    t.pt.iter()
        .map(|(&(partition, nid), &(tid, pack))| PtRow {
            partition,
            nid,
            tid,
            pack,
        })
        .collect()
}

fn parse_nid(t: &Tables) -> DbResult<Option<Nid>> {
    t.config
        .get("nid")
        .map(|v| {
            v.trim().parse().map_err(|_| DbError::Corrupted {
                what: format!("config.nid is not a number: {v:?}"),
            })
        })
        .transpose()
}

fn take(length: Option<u64>) -> usize {
    length.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX))
}

impl Backend for MemoryBackend {
    fn commit(&mut self) -> DbResult<()> {
        self.do_commit()
    }

    fn config(&mut self, key: &str) -> DbResult<Option<String>> {
        self.tick()?;
        Ok(self.work.config.get(key).cloned())
    }

    fn set_config(&mut self, key: &str, value: Option<&str>) -> DbResult<()> {
        self.tick()?;
        match value {
            None => self.work.config.remove(key),
            Some(v) => self.work.config.insert(key.to_owned(), v.to_owned()),
        };
        if key == "nid" {
            self.view = None;
        }
        Ok(())
    }

    fn pt_rows(&mut self) -> DbResult<Vec<PtRow>> {
        self.tick()?;
        Ok(pt_rows(&self.work))
    }

    fn change_pt_rows(&mut self, cells: &[PtChange], reset: bool) -> DbResult<()> {
        self.tick()?;
        let mut delete: BTreeSet<(u32, Nid)> = if reset {
            self.work.pt.keys().copied().collect()
        } else {
            BTreeSet::new()
        };
        for c in cells {
            let key = (c.partition, c.nid);
            match c.tid {
                None => {
                    delete.insert(key);
                }
                Some(tid) => {
                    delete.remove(&key);
                    self.work
                        .pt
                        .entry(key)
                        .and_modify(|v| v.0 = tid)
                        .or_insert((tid, c.pack));
                }
            }
        }
        for k in delete {
            self.work.pt.remove(&k);
        }
        self.view = None;
        Ok(())
    }

    fn partition_view(&mut self) -> DbResult<PartitionView> {
        self.tick()?;
        self.view().cloned()
    }

    fn set_temporarily_readable(&mut self, partition: u32, readable: bool) -> DbResult<()> {
        self.tick()?;
        if readable {
            self.extra_readable.insert(partition);
        } else {
            self.extra_readable.remove(&partition);
        }
        self.view = None;
        Ok(())
    }

    fn set_partition_packed(&mut self, partition: u32, pack_id: u64) -> DbResult<()> {
        self.tick()?;
        to_sql(pack_id, "pack id")?;
        let nid = self.my_nid()?;
        if let Some(v) = self.work.pt.get_mut(&(partition, nid)) {
            v.1 = Some(pack_id);
        }
        Ok(())
    }

    fn partition_packed(&mut self, partition: u32) -> DbResult<Option<u64>> {
        self.tick()?;
        let nid = self.my_nid()?;
        Ok(self.work.pt.get(&(partition, nid)).and_then(|v| v.1))
    }

    fn packed_ids(&mut self, up_to_date: bool) -> DbResult<BTreeMap<u32, Tid>> {
        self.tick()?;
        Ok(self
            .work
            .pt
            .iter()
            .filter(|(_, (tid, _))| !up_to_date || *tid == -(CellState::UpToDate as i64))
            .filter_map(|(&(p, _), &(_, pack))| pack.map(|pk| (p, Tid(pk))))
            .collect())
    }

    fn first_tid_in(&mut self, partition: u32) -> DbResult<Option<Tid>> {
        self.tick()?;
        Ok(self.trans_tids(partition).next().map(Tid))
    }

    fn last_tid_in(&mut self, partition: u32, max_tid: Option<Tid>) -> DbResult<Option<Tid>> {
        self.tick()?;
        let max = max_tid.map_or(u64::MAX, |t| t.0);
        Ok(self
            .trans_tids(partition)
            .rev()
            .find(|&t| t <= max)
            .map(Tid))
    }

    fn last_ids_in(&mut self, partition: u32) -> DbResult<(Option<Tid>, Option<Oid>)> {
        self.tick()?;
        let rows = self
            .work
            .obj
            .range((partition, 0, 0)..=(partition, u64::MAX, u64::MAX));
        let (mut tid, mut oid) = (None, None);
        for (&(_, o, t), _) in rows {
            tid = tid.max(Some(t));
            oid = oid.max(Some(o));
        }
        Ok((tid.map(Tid), oid.map(Oid)))
    }

    fn store_data(
        &mut self,
        checksum: Option<&Checksum>,
        oid: Oid,
        data: &[u8],
        compression: u8,
        data_tid: Option<Tid>,
    ) -> DbResult<Option<DataId>> {
        self.tick()?;
        to_sql(oid.0, "oid")?;
        let view = self.view()?;
        let p = view.partition(oid.0)?;
        let readable = view.readable.contains(&p);
        if let Some(dt) = data_tid {
            to_sql(dt.0, "tid")?;
            if let Some(&(id, _)) = self.work.obj.get(&(p, oid.0, dt.0)) {
                return Ok(id);
            }
            if readable {
                return Err(DbError::UndoPack { oid, data_tid: dt });
            }
        }
        let Some(checksum) = checksum else {
            return Ok(None);
        };
        if self.work.dedup {
            let same = self
                .work
                .data
                .iter()
                .find(|(_, (h, c, _))| h == checksum && *c == compression);
            if let Some((&id, (_, _, value))) = same {
                return if value == data {
                    Ok(Some(id))
                } else {
                    Err(DbError::HashCollision { data_id: id })
                };
            }
        }
        let id = self.data_last_id(p)?;
        to_sql(id, "data id")?;
        if self.work.data.contains_key(&id) {
            return Err(DbError::Duplicate {
                table: "data",
                key: format!("{id:#x}"),
            });
        }
        self.work
            .data
            .insert(id, (*checksum, compression, data.to_vec()));
        self.data_last_ids.insert(p, id + 1);
        Ok(Some(id))
    }

    fn load_data(&mut self, id: DataId) -> DbResult<Option<(u8, Checksum, Vec<u8>)>> {
        self.tick()?;
        Ok(self.work.data.get(&id).map(|(h, c, v)| (*c, *h, v.clone())))
    }

    fn held_data(&mut self) -> &mut HeldData {
        &mut self.held
    }

    fn prune_data(&mut self, ids: &[DataId]) -> DbResult<usize> {
        self.tick()?;
        let candidates: BTreeSet<DataId> = ids
            .iter()
            .copied()
            .filter(|&id| !self.held.contains(id))
            .collect();
        if candidates.is_empty() {
            return Ok(0);
        }
        let used: BTreeSet<DataId> = self.work.obj.values().filter_map(|v| v.0).collect();
        let mut n = 0;
        for id in candidates.difference(&used) {
            if self.work.data.remove(id).is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    fn orphan_data(&mut self) -> DbResult<Vec<DataId>> {
        self.tick()?;
        let used: BTreeSet<DataId> = self.work.obj.values().filter_map(|v| v.0).collect();
        Ok(self
            .work
            .data
            .keys()
            .copied()
            .filter(|id| !used.contains(id))
            .collect())
    }

    fn store_transaction(
        &mut self,
        tid: Tid,
        objects: &[ObjectRef],
        txn: Option<&TxnMeta>,
        temporary: bool,
    ) -> DbResult<()> {
        self.tick()?;
        to_sql(tid.0, "tid")?;
        for o in objects {
            to_sql(o.oid.0, "oid")?;
            self.check_ids(&[o.data_id.unwrap_or(0)], "data id")?;
            self.check_ids(&[o.value_tid.map_or(0, |t| t.0)], "value_tid")?;
            let p = self.view()?.partition(o.oid.0)?;
            let value = (o.data_id, o.value_tid.map(|t| t.0));
            let dup = || DbError::Duplicate {
                table: if temporary { "tobj" } else { "obj" },
                key: format!("{}@{}", o.oid, tid),
            };
            if temporary {
                if self.work.tobj.contains_key(&(tid.0, o.oid.0)) {
                    return Err(dup());
                }
                self.work
                    .tobj
                    .insert((tid.0, o.oid.0), (p, value.0, value.1));
            } else {
                match self.work.obj.get(&(p, o.oid.0, tid.0)) {
                    Some(v) if *v == value => {}
                    Some(_) => return Err(dup()),
                    None => {
                        self.work.obj.insert((p, o.oid.0, tid.0), value);
                    }
                }
            }
        }
        if let Some(t) = txn {
            to_sql(t.ttid.0, "ttid")?;
            let p = self.view()?.partition(tid.0)?;
            if temporary {
                self.work.ttrans.push(TTransRow {
                    partition: p,
                    tid: None,
                    meta: t.clone(),
                });
            } else {
                if self.work.trans.contains_key(&(p, tid.0)) {
                    return Err(DbError::Duplicate {
                        table: "trans",
                        key: tid.to_string(),
                    });
                }
                self.work.trans.insert((p, tid.0), t.clone());
            }
        }
        Ok(())
    }

    fn store_pack_order(&mut self, order: &PackOrder) -> DbResult<()> {
        self.tick()?;
        to_sql(order.id.0, "pack id")?;
        to_sql(order.pack_tid.0, "pack tid")?;
        if self.work.pack.contains_key(&order.id.0) {
            return Err(DbError::Duplicate {
                table: "pack",
                key: order.id.to_string(),
            });
        }
        self.work.pack.insert(
            order.id.0,
            PackRow {
                approved: order.approved,
                partial: order.partial,
                oids: order.oids.clone(),
                pack_tid: order.pack_tid.0,
            },
        );
        Ok(())
    }

    fn lock_transaction(&mut self, tid: Tid, ttid: Tid, pack: bool) -> DbResult<()> {
        self.tick()?;
        to_sql(tid.0, "tid")?;
        for row in self.work.ttrans.iter_mut().filter(|r| r.meta.ttid == ttid) {
            row.tid = Some(tid.0);
        }
        if pack {
            if let Some(p) = self.work.pack.get_mut(&ttid.0) {
                p.approved = Some(true);
            }
        }
        self.do_commit()
    }

    fn unlock_transaction(
        &mut self,
        tid: Tid,
        ttid: Tid,
        trans: bool,
        obj: bool,
        pack: bool,
    ) -> DbResult<()> {
        self.tick()?;
        if trans {
            let rows: Vec<TTransRow> = self
                .work
                .ttrans
                .iter()
                .filter(|r| r.tid == Some(tid.0))
                .cloned()
                .collect();
            for r in &rows {
                if self.work.trans.contains_key(&(r.partition, tid.0)) {
                    return Err(DbError::Duplicate {
                        table: "trans",
                        key: tid.to_string(),
                    });
                }
            }
            for r in rows {
                self.work.trans.insert((r.partition, tid.0), r.meta);
            }
            if pack {
                if let Some(p) = self.work.pack.remove(&ttid.0) {
                    if self.work.pack.insert(tid.0, p).is_some() {
                        return Err(DbError::Duplicate {
                            table: "pack",
                            key: tid.to_string(),
                        });
                    }
                }
            }
            self.work.ttrans.retain(|r| r.tid != Some(tid.0));
            if !obj {
                return Ok(());
            }
        }
        let keys: Vec<(u64, u64)> = self
            .work
            .tobj
            .range((ttid.0, 0)..=(ttid.0, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        let mut ids = Vec::new();
        for k in &keys {
            let Some((p, data_id, value_tid)) = self.work.tobj.get(k).copied() else {
                continue;
            };
            let key = (p, k.1, tid.0);
            if self.work.obj.contains_key(&key) {
                return Err(DbError::Duplicate {
                    table: "obj",
                    key: format!("tid {tid}"),
                });
            }
            self.work.obj.insert(key, (data_id, value_tid));
            ids.extend(data_id);
        }
        for k in keys {
            self.work.tobj.remove(&k);
        }
        for id in ids {
            self.held.release(id);
        }
        Ok(())
    }

    fn abort_transaction(&mut self, ttid: Tid) -> DbResult<()> {
        self.tick()?;
        self.work.tobj.retain(|&(t, _), _| t != ttid.0);
        self.work.ttrans.retain(|r| r.meta.ttid != ttid);
        Ok(())
    }

    fn final_tid(&mut self, ttid: Tid) -> DbResult<Option<Tid>> {
        self.tick()?;
        let p = self.view()?.readable_partition(ttid.0)?;
        Ok(self
            .work
            .trans
            .range((p, ttid.0)..=(p, u64::MAX))
            .find(|(_, m)| m.ttid == ttid)
            .map(|(&(_, t), _)| Tid(t)))
    }

    fn unfinished_transactions(&mut self) -> DbResult<BTreeMap<Tid, Option<Tid>>> {
        self.tick()?;
        let mut out: BTreeMap<Tid, Option<Tid>> = self
            .work
            .tobj
            .keys()
            .map(|&(t, _)| (Tid(t), None))
            .collect();
        for r in &self.work.ttrans {
            out.insert(r.meta.ttid, r.tid.map(Tid));
        }
        Ok(out)
    }

    fn unfinished_data_ids(&mut self) -> DbResult<Vec<DataId>> {
        self.tick()?;
        Ok(self.work.tobj.values().filter_map(|v| v.1).collect())
    }

    fn drop_partitions_temporary(&mut self, partitions: Option<&[u32]>) -> DbResult<()> {
        self.tick()?;
        let hit = |p: u32| match partitions {
            None => true,
            Some(ps) => ps.contains(&p),
        };
        self.work.tobj.retain(|_, v| !hit(v.0));
        let packs: Vec<u64> = self
            .work
            .ttrans
            .iter()
            .filter(|r| hit(r.partition))
            .filter_map(|r| r.tid)
            .collect();
        for t in packs {
            self.work.pack.remove(&t);
        }
        self.work.ttrans.retain(|r| !hit(r.partition));
        Ok(())
    }

    fn find_object(
        &mut self,
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    ) -> DbResult<Option<ObjectRecord>> {
        self.tick()?;
        let p = self.view()?.readable_partition(oid.0)?;
        let mut revs = self.obj_of(p, oid.0);
        let found = if let Some(at) = at {
            revs.find(|&(t, _)| t == at.0)
        } else if let Some(before) = before {
            revs.rev().find(|&(t, _)| t < before.0)
        } else {
            revs.next_back()
        };
        let Some((serial, &(data_id, value_tid))) = found else {
            return Ok(None);
        };
        let next = self
            .obj_of(p, oid.0)
            .find(|&(t, _)| t > serial)
            .map(|(t, _)| Tid(t));
        let data = data_id.and_then(|id| self.work.data.get(&id));
        Ok(Some(ObjectRecord {
            serial: Tid(serial),
            next_serial: next,
            compression: data.map(|d| d.1),
            checksum: data.map(|d| d.0),
            data: data.map(|d| d.2.clone()),
            data_serial: value_tid.map(Tid),
        }))
    }

    fn last_object_tid(&mut self, oid: Oid) -> DbResult<Option<Tid>> {
        self.tick()?;
        let p = self.view()?.readable_partition(oid.0)?;
        Ok(self.obj_of(p, oid.0).next_back().map(|(t, _)| Tid(t)))
    }

    fn get_transaction(&mut self, tid: Tid, all: bool) -> DbResult<Option<TransactionRecord>> {
        self.tick()?;
        let p = self.view()?.readable_partition(tid.0)?;
        let meta = match self.work.trans.get(&(p, tid.0)) {
            Some(m) => m.clone(),
            None if all => match self.work.ttrans.iter().find(|r| r.tid == Some(tid.0)) {
                Some(r) => r.meta.clone(),
                None => return Ok(None),
            },
            None => return Ok(None),
        };
        let pack = self.work.pack.get(&tid.0).map(|r| PackOrder {
            id: tid,
            approved: r.approved,
            partial: r.partial,
            oids: r.oids.clone(),
            pack_tid: Tid(r.pack_tid),
        });
        Ok(Some(TransactionRecord { meta, pack }))
    }

    fn object_history(
        &mut self,
        oid: Oid,
        offset: u64,
        length: u64,
    ) -> DbResult<Option<Vec<(Tid, u64)>>> {
        self.tick()?;
        let p = self.view()?.readable_partition(oid.0)?;
        let h: Vec<(Tid, u64)> = self
            .obj_of(p, oid.0)
            .rev()
            .skip(take(Some(offset)))
            .take(take(Some(length)))
            .map(|(t, v)| {
                let len =
                    v.0.and_then(|id| self.work.data.get(&id))
                        .map_or(0, |d| d.2.len() as u64);
                (Tid(t), len)
            })
            .collect();
        Ok(if h.is_empty() { None } else { Some(h) })
    }

    fn object_history_for_undo(
        &mut self,
        oid: Oid,
        undo_tid: Tid,
    ) -> DbResult<Option<(Option<Tid>, Vec<(Tid, Option<Tid>)>)>> {
        self.tick()?;
        let p = self.view()?.readable_partition(oid.0)?;
        let mut before = self
            .obj_of(p, oid.0)
            .rev()
            .filter(|&(t, _)| t <= undo_tid.0)
            .map(|(t, _)| t);
        if before.next() != Some(undo_tid.0) {
            return Ok(None);
        }
        let undone = before.next().map(Tid);
        let history = self
            .obj_of(p, oid.0)
            .filter(|&(t, _)| t > undo_tid.0)
            .map(|(t, v)| (Tid(t), v.1.map(Tid)))
            .collect();
        Ok(Some((undone, history)))
    }

    fn tid_list_in(&mut self, offset: u64, length: u64, partitions: &[u32]) -> DbResult<Vec<Tid>> {
        self.tick()?;
        let mut tids: Vec<u64> = partitions
            .iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .flat_map(|&p| self.trans_tids(p))
            .collect();
        tids.sort_unstable_by(|a, b| b.cmp(a));
        Ok(tids
            .into_iter()
            .skip(take(Some(offset)))
            .take(take(Some(length)))
            .map(Tid)
            .collect())
    }

    fn oids_from(
        &mut self,
        partition: u32,
        length: u64,
        min_oid: Oid,
        tid: Tid,
    ) -> DbResult<(Option<Oid>, Vec<Oid>)> {
        self.tick()?;
        let view = self.view()?;
        if !view.readable.contains(&partition) {
            return Err(DbError::NonReadableCell { partition });
        }
        let np = u64::from(view.np);
        // Last record at or before `tid` of each oid, in oid order.
        let mut last: BTreeMap<u64, Option<DataId>> = BTreeMap::new();
        for (&(_, o, t), v) in self
            .work
            .obj
            .range((partition, min_oid.0, 0)..=(partition, u64::MAX, u64::MAX))
        {
            if t <= tid.0 {
                last.insert(o, v.0);
            }
        }
        let rows: Vec<(u64, Option<DataId>)> = last.into_iter().take(take(Some(length))).collect();
        let next = match rows.last() {
            Some(&(o, _)) if rows.len() as u64 >= length => Some(Oid(o + np)),
            _ => None,
        };
        let oids = rows
            .into_iter()
            .filter(|(_, d)| d.is_some())
            .map(|(o, _)| Oid(o))
            .collect();
        Ok((next, oids))
    }

    fn replication_tid_list(
        &mut self,
        min_tid: Tid,
        max_tid: Tid,
        length: Option<u64>,
        partition: u32,
    ) -> DbResult<Vec<Tid>> {
        self.tick()?;
        Ok(self
            .trans_tids(partition)
            .filter(|&t| min_tid.0 <= t && t <= max_tid.0)
            .take(take(length))
            .map(Tid)
            .collect())
    }

    fn replication_object_list(
        &mut self,
        min_tid: Tid,
        max_tid: Tid,
        length: Option<u64>,
        partition: u32,
        min_oid: Oid,
    ) -> DbResult<Vec<(Tid, Oid)>> {
        self.tick()?;
        if max_tid < min_tid || length == Some(0) {
            return Ok(Vec::new());
        }
        Ok(self
            .obj_by_tid(partition)
            .into_iter()
            .filter(|&(t, o)| {
                (t == min_tid.0 && o >= min_oid.0) || (min_tid.0 < t && t <= max_tid.0)
            })
            .take(take(length))
            .map(|(t, o)| (Tid(t), Oid(o)))
            .collect())
    }

    fn check_serial_range(
        &mut self,
        partition: u32,
        length: Option<u64>,
        min_tid: Tid,
        max_tid: Tid,
        min_oid: Oid,
    ) -> DbResult<SerialRangeCheck> {
        self.tick()?;
        let rows: Vec<(u64, u64)> = self
            .obj_by_tid(partition)
            .into_iter()
            .filter(|&(t, o)| {
                t <= max_tid.0 && (t > min_tid.0 || (t == min_tid.0 && o >= min_oid.0))
            })
            .take(take(length))
            .collect();
        Ok(serial_range_check(&rows))
    }

    fn delete_transaction(&mut self, tid: Tid) -> DbResult<()> {
        self.tick()?;
        let p = self.view()?.partition(tid.0)?;
        self.work.pack.remove(&tid.0);
        self.work.trans.remove(&(p, tid.0));
        Ok(())
    }

    fn delete_object(&mut self, oid: Oid, serial: Option<Tid>) -> DbResult<()> {
        self.tick()?;
        let p = self.view()?.partition(oid.0)?;
        let keys: Vec<(u32, u64, u64)> = self
            .obj_of(p, oid.0)
            .filter(|&(t, _)| match serial {
                None => true,
                Some(s) => s.0 == t,
            })
            .map(|(t, _)| (p, oid.0, t))
            .collect();
        let mut ids = Vec::new();
        for k in keys {
            if let Some((Some(id), _)) = self.work.obj.remove(&k) {
                ids.push(id);
            }
        }
        self.prune_data(&ids)?;
        Ok(())
    }

    fn delete_range(
        &mut self,
        partition: u32,
        min_tid: Option<Tid>,
        max_tid: Option<Tid>,
    ) -> DbResult<()> {
        self.tick()?;
        let inside = |t: u64| min_tid.is_none_or(|m| m.0 < t) && max_tid.is_none_or(|m| t <= m.0);
        let tids: Vec<u64> = self.trans_tids(partition).filter(|&t| inside(t)).collect();
        for t in tids {
            self.work.pack.remove(&t);
            self.work.trans.remove(&(partition, t));
        }
        let keys: Vec<(u32, u64, u64)> = self
            .work
            .obj
            .range((partition, 0, 0)..=(partition, u64::MAX, u64::MAX))
            .filter(|(&(_, _, t), _)| inside(t))
            .map(|(k, _)| *k)
            .collect();
        let mut ids = Vec::new();
        for k in keys {
            if let Some((Some(id), _)) = self.work.obj.remove(&k) {
                ids.push(id);
            }
        }
        self.prune_data(&ids)?;
        Ok(())
    }

    fn drop_partition_step(&mut self, partition: u32, count: u64) -> DbResult<DropStep> {
        self.tick()?;
        let keys: Vec<(u32, u64, u64)> = self
            .obj_by_tid(partition)
            .into_iter()
            .take(take(Some(count)))
            .map(|(t, o)| (partition, o, t))
            .collect();
        if !keys.is_empty() {
            let mut ids = BTreeSet::new();
            for k in keys {
                if let Some((Some(id), _)) = self.work.obj.remove(&k) {
                    ids.insert(id);
                }
            }
            return Ok(DropStep::Objects(ids.into_iter().collect()));
        }
        let tids: Vec<u64> = self.trans_tids(partition).collect();
        for t in &tids {
            self.work.pack.remove(t);
            self.work.trans.remove(&(partition, *t));
        }
        Ok(DropStep::Transactions(tids.len() as u64))
    }

    fn pack_orders(&mut self, min_completed: Tid) -> DbResult<Vec<PackOrder>> {
        self.tick()?;
        let view = self.view()?.clone();
        if view.np == 0 {
            return Ok(Vec::new());
        }
        let np = u64::from(view.np);
        Ok(self
            .work
            .pack
            .range(min_completed.0..)
            .filter(|(&id, _)| u32::try_from(id % np).is_ok_and(|p| view.readable.contains(&p)))
            .map(|(&id, r)| PackOrder {
                id: Tid(id),
                approved: r.approved,
                partial: r.partial,
                oids: r.oids.clone(),
                pack_tid: Tid(r.pack_tid),
            })
            .collect())
    }

    fn sign_pack_orders(&mut self, approved: &[Tid], rejected: &[Tid]) -> DbResult<Vec<Tid>> {
        self.tick()?;
        let mut changed = Vec::new();
        for (&id, row) in self.work.pack.iter_mut() {
            let a = approved.contains(&Tid(id));
            if a || rejected.contains(&Tid(id)) {
                row.approved = Some(a);
                changed.push(Tid(id));
            }
        }
        Ok(changed)
    }

    fn pack_partition(
        &mut self,
        partition: u32,
        scope: PackScope<'_>,
        tid: Tid,
    ) -> DbResult<(Option<Oid>, usize)> {
        self.tick()?;
        // (count, last tid) of each oid's records at or before `tid`.
        let mut groups: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for (&(_, o, t), _) in self
            .work
            .obj
            .range((partition, 0, 0)..=(partition, u64::MAX, u64::MAX))
        {
            let wanted = match scope {
                PackScope::From { min_oid, .. } => o >= min_oid.0,
                PackScope::Oids(oids) => oids.contains(&Oid(o)),
            };
            if wanted && t <= tid.0 {
                let g = groups.entry(o).or_insert((0, t));
                g.0 += 1;
                g.1 = g.1.max(t);
            }
        }
        let groups: Vec<(u64, (u64, u64))> = match scope {
            PackScope::From { limit, .. } => groups.into_iter().take(take(Some(limit))).collect(),
            PackScope::Oids(_) => groups.into_iter().collect(),
        };
        let mut data_ids = BTreeSet::new();
        let mut last = None;
        for (oid, (count, max_tid)) in groups {
            last = Some(oid);
            let deleted = match self.work.obj.get(&(partition, oid, max_tid)) {
                Some((None, _)) => true,
                Some(_) if count > 1 => false,
                _ => continue,
            };
            let keys: Vec<(u32, u64, u64)> = self
                .obj_of(partition, oid)
                .filter(|&(t, _)| t < max_tid || (deleted && t == max_tid))
                .map(|(t, _)| (partition, oid, t))
                .collect();
            for k in keys {
                if let Some((id, _)) = self.work.obj.remove(&k) {
                    data_ids.extend(id);
                }
            }
        }
        let ids: Vec<DataId> = data_ids.into_iter().collect();
        self.prune_data(&ids)?;
        let last = match scope {
            PackScope::From { .. } => last.map(Oid),
            PackScope::Oids(_) => None,
        };
        Ok((last, ids.len()))
    }
}
