//! `impl Backend for Importer`: the storage node's view of an import.
//!
//! Until everything is imported, reads see the whole history at once, split
//! by tid like NEO's Importer does:
//!
//! | tids                    | answered by                                    |
//! |-------------------------|------------------------------------------------|
//! | `<= zodb_tid`           | the destination (imported)                     |
//! | `zodb_tid < t <= ltid`  | the source `Data.fs` (not imported yet)        |
//! | `> ltid`                | the destination (clients' new transactions)     |
//!
//! where `zodb_tid` is the last imported tid and `ltid` the source's last
//! tid when the import began. An answer that spans regions (the next
//! serial of a revision, histories, tid lists, replication ranges) is
//! merged from them. Source revisions are answered as ZODB reads them:
//! data through backpointer chains, `data_serial` = the iterator's
//! `data_txn`, no data for a zero backpointer.
//!
//! History sizes are ZODB's in every region (the data length before
//! compression, 0 for a backpointer or a deletion), so a history does not
//! change when a revision moves from the source to the destination.
//!
//! Once everything is imported, every call goes to the destination
//! (history sizes are still converted as above). Writes always go to the
//! destination. Pack, truncation below `ltid` and dropping partitions are
//! refused during the import, as NEO does.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fsformat::{DataHeader, Oid, Tid, TxnStatus};
use neo_server::storage::backend::ObjectReader;
use neo_server::storage::{
    make_checksum, serial_range_check, Backend, Checksum, DataId, DbError, DbResult, DropStep,
    HeldData, ObjectLookup, ObjectRecord, ObjectRef, PackOrder, PackScope, PartitionView, PtChange,
    PtRow, SerialRangeCheck, TransactionRecord, TxnMeta, MAX_TID,
};

use crate::importer::{decompress, Importer};
use crate::source::Source;

fn refused(what: &str) -> DbError {
    DbError::Corrupted {
        what: format!("importer: {what} is not possible while data is being imported"),
    }
}

/// A source revision as the destination would answer it.
fn source_record(src: &Source, h: &DataHeader<'_>, next: Option<Tid>) -> DbResult<ObjectRecord> {
    let e = |e| src.err(e).into_db();
    let data = src.data(h).map_err(e)?;
    Ok(ObjectRecord {
        serial: h.serial,
        next_serial: next,
        compression: data.map(|_| 0),
        checksum: data.map(make_checksum),
        data: data.map(<[u8]>::to_vec),
        data_serial: src.data_tid(h).map_err(e)?,
    })
}

/// ZODB's history size of a destination record.
fn zodb_size(r: &ObjectRecord) -> DbResult<u64> {
    if r.data_serial.is_some() {
        return Ok(0);
    }
    match &r.data {
        None => Ok(0),
        Some(d) => decompress(r.compression.unwrap_or(0), d)
            .map(|d| d.len() as u64)
            .map_err(|what| DbError::Corrupted {
                what: format!("data of serial {}: {what}", r.serial),
            }),
    }
}

fn in_partitions(view: &PartitionView, tid: Tid, partitions: &[u32]) -> bool {
    view.partition(tid.0).is_ok_and(|p| partitions.contains(&p))
}

impl<B: Backend> Importer<B> {
    fn src(&self) -> DbResult<&Source> {
        self.src.as_ref().ok_or_else(|| DbError::Corrupted {
            what: "importer: the source is closed".into(),
        })
    }

    fn readable(&mut self, id: u64) -> DbResult<u32> {
        self.db.partition_view()?.readable_partition(id)
    }

    /// Whether the destination may have transactions above `ltid`.
    fn has_new(&mut self) -> DbResult<bool> {
        if self.has_new.is_none() {
            if self.db.partition_view()?.np == 0 {
                return Ok(false); // nothing readable yet: ask again later
            }
            let last = self.db.last_tid(None)?;
            self.has_new = Some(last.is_some_and(|t| t > self.ltid));
        }
        Ok(self.has_new == Some(true))
    }

    /// The first serial of `oid` above `ltid` in the destination.
    fn dest_first_after_ltid(&mut self, oid: Oid) -> DbResult<Option<Tid>> {
        if !self.has_new()? {
            return Ok(None);
        }
        if let Some(r) = self.db.find_object(oid, None, Some(Tid(self.ltid.0 + 1)))? {
            return Ok(r.next_serial);
        }
        Ok(self
            .db
            .object_history(oid, 0, u64::MAX)?
            .unwrap_or_default()
            .into_iter()
            .map(|(t, _)| t)
            .filter(|&t| t > self.ltid)
            .min())
    }

    /// The revision of `oid` at `at`, or else the newest at or below
    /// `bound` (`bound <= ltid`).
    fn find_upto(
        &mut self,
        oid: Oid,
        at: Option<Tid>,
        bound: Tid,
    ) -> DbResult<Option<ObjectRecord>> {
        if bound <= self.zodb_tid {
            let r = match at {
                Some(a) => self.db.find_object(oid, Some(a), None)?,
                None => self.db.find_object(oid, None, Some(Tid(bound.0 + 1)))?,
            };
            let Some(mut r) = r else { return Ok(None) };
            if r.next_serial.is_none_or(|n| n > self.zodb_tid) {
                let src = self.src()?;
                if let Some(n) = src
                    .next_after(oid, r.serial)
                    .map_err(|e| src.err(e).into_db())?
                {
                    r.next_serial = Some(n);
                }
            }
            return Ok(Some(r));
        }
        let src = self.src()?;
        let found = match at {
            Some(a) => src.exact(oid, a),
            None => src.newest_upto(oid, bound),
        }
        .map_err(|e| src.err(e).into_db())?;
        let Some((h, next)) = found else {
            return Ok(None);
        };
        let mut rec = source_record(src, &h, next)?;
        if rec.next_serial.is_none() {
            rec.next_serial = self.dest_first_after_ltid(oid)?;
        }
        Ok(Some(rec))
    }

    /// Every revision of `oid` as `(serial, value_tid)`, oldest first.
    fn all_revisions(&mut self, oid: Oid) -> DbResult<Vec<(Tid, Option<Tid>)>> {
        let src = self.src()?;
        let e = |e| src.err(e).into_db();
        let mut out = Vec::new();
        for h in src.revisions(oid).map_err(e)?.iter().rev() {
            out.push((h.serial, src.data_tid(h).map_err(e)?));
        }
        for t in self.dest_new_serials(oid, u64::MAX)?.into_iter().rev() {
            let vt = self
                .db
                .find_object(oid, Some(t), None)?
                .and_then(|r| r.data_serial);
            out.push((t, vt));
        }
        Ok(out)
    }

    /// Serials of `oid` above `ltid` in the destination, newest first, at
    /// most `max`.
    fn dest_new_serials(&mut self, oid: Oid, max: u64) -> DbResult<Vec<Tid>> {
        if !self.has_new()? {
            return Ok(Vec::new());
        }
        let ltid = self.ltid;
        Ok(self
            .db
            .object_history(oid, 0, max)?
            .unwrap_or_default()
            .into_iter()
            .map(|(t, _)| t)
            .filter(|&t| t > ltid)
            .collect())
    }

    /// `(serial, ZODB size)` of the destination's revisions of `oid`.
    fn dest_history(&mut self, oid: Oid, offset: u64, length: u64) -> DbResult<Vec<(Tid, u64)>> {
        let rows = self
            .db
            .object_history(oid, offset, length)?
            .unwrap_or_default();
        let mut out = Vec::with_capacity(rows.len());
        for (t, _) in rows {
            let size = match self.db.find_object(oid, Some(t), None)? {
                Some(r) => zodb_size(&r)?,
                None => 0,
            };
            out.push((t, size));
        }
        Ok(out)
    }

    /// Source tids in `(lo, hi]` of the given partitions, newest first, at
    /// most `max`.
    fn source_tids_desc(
        &self,
        lo: Tid,
        hi: Tid,
        view: &PartitionView,
        partitions: &[u32],
        max: u64,
    ) -> DbResult<Vec<Tid>> {
        let src = self.src()?;
        let txns = src.txns();
        let (a, b) = (src.first_after(lo), src.first_after(hi));
        Ok(txns[a..b.max(a)]
            .iter()
            .rev()
            .map(|t| t.tid)
            .filter(|&t| in_partitions(view, t, partitions))
            .take(usize::try_from(max).unwrap_or(usize::MAX))
            .collect())
    }

    /// `(tid, oid)` of the source records of a partition in tid range
    /// `[lo, hi]`, in `(tid, oid)` order, from `(lo, min_oid)`.
    fn source_objects(
        &self,
        lo: Tid,
        hi: Tid,
        min_oid: Oid,
        partition: u32,
        np: u32,
        max: usize,
    ) -> DbResult<Vec<(Tid, Oid)>> {
        let src = self.src()?;
        let e = |e| src.err(e).into_db();
        let mut out = Vec::new();
        let start = src.first_after(Tid(lo.0.saturating_sub(1)));
        let start = if lo.0 == 0 { 0 } else { start };
        for i in start..src.first_after(hi) {
            if out.len() >= max {
                break;
            }
            let t = src.txn_at(i).map_err(e)?;
            let mut oids = Vec::new();
            for r in t.records() {
                let r = r.map_err(e)?;
                if r.oid.0 % u64::from(np) == u64::from(partition)
                    && (t.tid > lo || r.oid >= min_oid)
                {
                    oids.push(r.oid);
                }
            }
            oids.sort();
            oids.dedup();
            out.extend(oids.into_iter().map(|o| (t.tid, o)));
        }
        out.truncate(max);
        Ok(out)
    }
}

/// The destination's reader, once everything is imported (before, most
/// objects are still in the source: the node serves every load).
struct ImportedReader {
    inner: Box<dyn ObjectReader>,
    finished: Arc<AtomicBool>,
}

impl ObjectReader for ImportedReader {
    fn get_object(
        &mut self,
        view: &PartitionView,
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    ) -> DbResult<ObjectLookup> {
        if !self.finished.load(Ordering::Acquire) {
            return Err(DbError::ReaderUnavailable("import in progress"));
        }
        self.inner.get_object(view, oid, at, before)
    }

    fn release(&mut self, older_than: std::time::Duration) {
        self.inner.release(older_than)
    }
}

impl<B: Backend> Backend for Importer<B> {
    fn commit(&mut self) -> DbResult<()> {
        self.commit_all().map_err(|e| e.into_db())
    }

    fn object_reader(&mut self) -> DbResult<Option<Box<dyn ObjectReader>>> {
        Ok(self.db.object_reader()?.map(|inner| {
            Box::new(ImportedReader {
                inner,
                finished: self.finished_flag.clone(),
            }) as Box<dyn ObjectReader>
        }))
    }

    fn commits(&self) -> u64 {
        self.db.commits()
    }

    /// The import itself, a step at a time while the node is idle.
    fn background_step(&mut self, budget: std::time::Duration) -> DbResult<bool> {
        let p = self.import_for(budget).map_err(|e| e.into_db())?;
        Ok(!p.finished)
    }

    /// The import's progress, for `neoctl print summary`.
    fn background_status(&mut self) -> Option<String> {
        Some(self.status_line())
    }

    fn config(&mut self, key: &str) -> DbResult<Option<String>> {
        self.db.config(key)
    }

    fn set_config(&mut self, key: &str, value: Option<&str>) -> DbResult<()> {
        self.has_new = None;
        self.db.set_config(key, value)
    }

    fn pt_rows(&mut self) -> DbResult<Vec<PtRow>> {
        self.db.pt_rows()
    }

    fn change_pt_rows(&mut self, cells: &[PtChange], reset: bool) -> DbResult<()> {
        self.has_new = None;
        self.db.change_pt_rows(cells, reset)
    }

    fn partition_view(&mut self) -> DbResult<PartitionView> {
        self.db.partition_view()
    }

    fn set_temporarily_readable(&mut self, partition: u32, readable: bool) -> DbResult<()> {
        self.has_new = None;
        self.db.set_temporarily_readable(partition, readable)
    }

    fn set_partition_packed(&mut self, partition: u32, pack_id: u64) -> DbResult<()> {
        self.db.set_partition_packed(partition, pack_id)
    }

    fn partition_packed(&mut self, partition: u32) -> DbResult<Option<u64>> {
        self.db.partition_packed(partition)
    }

    fn packed_ids(&mut self, up_to_date: bool) -> DbResult<BTreeMap<u32, Tid>> {
        self.db.packed_ids(up_to_date)
    }

    fn first_tid_in(&mut self, partition: u32) -> DbResult<Option<Tid>> {
        if self.finished {
            return self.db.first_tid_in(partition);
        }
        let view = self.db.partition_view()?;
        let src = self.src()?;
        if let Some(t) = src
            .txns()
            .iter()
            .map(|t| t.tid)
            .find(|&t| in_partitions(&view, t, &[partition]))
        {
            return Ok(Some(t));
        }
        self.db.first_tid_in(partition)
    }

    fn last_tid_in(&mut self, partition: u32, max_tid: Option<Tid>) -> DbResult<Option<Tid>> {
        let d = self.db.last_tid_in(partition, max_tid)?;
        if self.finished || d.is_some_and(|d| d > self.ltid) {
            return Ok(d);
        }
        let view = self.db.partition_view()?;
        let bound = max_tid.unwrap_or(MAX_TID).min(self.ltid);
        let s = self
            .source_tids_desc(Tid::ZERO, bound, &view, &[partition], 1)?
            .first()
            .copied();
        // The source's first transaction (tid > 0) is covered: lo is
        // exclusive and no tid is zero.
        Ok(d.max(s))
    }

    fn last_ids_in(&mut self, partition: u32) -> DbResult<(Option<Tid>, Option<Oid>)> {
        let (t, o) = self.db.last_ids_in(partition)?;
        if self.finished {
            return Ok((t, o));
        }
        Ok((t.max(Some(self.ltid)), o.max(Some(self.loid))))
    }

    fn store_data(
        &mut self,
        checksum: Option<&Checksum>,
        oid: Oid,
        data: &[u8],
        compression: u8,
        data_tid: Option<Tid>,
    ) -> DbResult<Option<DataId>> {
        if let Some(dt) =
            data_tid.filter(|&t| !self.finished && t > self.zodb_tid && t <= self.ltid)
        {
            // Undo of a revision not imported yet: copy its data.
            let src = self.src()?;
            let e = |e| src.err(e).into_db();
            let Some((h, _)) = src.exact(oid, dt).map_err(e)? else {
                return Err(DbError::UndoPack { oid, data_tid: dt });
            };
            let Some(d) = src.data(&h).map_err(e)? else {
                return Ok(None);
            };
            let d = d.to_vec();
            let ck = make_checksum(&d);
            return self.db.store_data(Some(&ck), oid, &d, 0, None);
        }
        self.db
            .store_data(checksum, oid, data, compression, data_tid)
    }

    fn load_data(&mut self, id: DataId) -> DbResult<Option<(u8, Checksum, Vec<u8>)>> {
        self.db.load_data(id)
    }

    fn held_data(&mut self) -> &mut HeldData {
        self.db.held_data()
    }

    fn prune_data(&mut self, ids: &[DataId]) -> DbResult<usize> {
        self.db.prune_data(ids)
    }

    fn orphan_data(&mut self) -> DbResult<Vec<DataId>> {
        self.db.orphan_data()
    }

    fn store_transaction(
        &mut self,
        tid: Tid,
        objects: &[ObjectRef],
        txn: Option<&TxnMeta>,
        temporary: bool,
    ) -> DbResult<()> {
        if !temporary {
            if tid <= self.ltid && !self.finished {
                return Err(refused("storing a transaction below the imported ones"));
            }
            self.has_new = Some(true);
        }
        self.db.store_transaction(tid, objects, txn, temporary)
    }

    fn store_pack_order(&mut self, order: &PackOrder) -> DbResult<()> {
        self.db.store_pack_order(order)
    }

    fn lock_transaction(&mut self, tid: Tid, ttid: Tid, pack: bool) -> DbResult<()> {
        self.db.lock_transaction(tid, ttid, pack)
    }

    fn unlock_transaction(
        &mut self,
        tid: Tid,
        ttid: Tid,
        trans: bool,
        obj: bool,
        pack: bool,
    ) -> DbResult<()> {
        self.db.unlock_transaction(tid, ttid, trans, obj, pack)?;
        self.has_new = Some(true);
        self.writeback_changed();
        Ok(())
    }

    fn abort_transaction(&mut self, ttid: Tid) -> DbResult<()> {
        self.db.abort_transaction(ttid)
    }

    fn final_tid(&mut self, ttid: Tid) -> DbResult<Option<Tid>> {
        self.db.final_tid(ttid)
    }

    fn unfinished_transactions(&mut self) -> DbResult<BTreeMap<Tid, Option<Tid>>> {
        self.db.unfinished_transactions()
    }

    fn unfinished_data_ids(&mut self) -> DbResult<Vec<DataId>> {
        self.db.unfinished_data_ids()
    }

    fn drop_partitions_temporary(&mut self, partitions: Option<&[u32]>) -> DbResult<()> {
        self.db.drop_partitions_temporary(partitions)
    }

    fn find_object(
        &mut self,
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    ) -> DbResult<Option<ObjectRecord>> {
        if self.finished {
            return self.db.find_object(oid, at, before);
        }
        self.readable(oid.0)?;
        let ltid = self.ltid;
        let target = match (at, before) {
            (Some(a), _) => a,
            (None, Some(b)) if b.0 == 0 => return Ok(None),
            (None, Some(b)) => Tid(b.0 - 1),
            (None, None) => MAX_TID,
        };
        if target > ltid {
            if self.has_new()? {
                if let Some(r) = self.db.find_object(oid, at, before)? {
                    if r.serial > ltid {
                        return Ok(Some(r));
                    }
                }
            }
            if at.is_some() {
                return Ok(None);
            }
            return self.find_upto(oid, None, ltid);
        }
        self.find_upto(oid, at, target)
    }

    fn last_object_tid(&mut self, oid: Oid) -> DbResult<Option<Tid>> {
        if self.finished {
            return self.db.last_object_tid(oid);
        }
        self.readable(oid.0)?;
        if self.has_new()? {
            if let Some(t) = self.db.last_object_tid(oid)?.filter(|&t| t > self.ltid) {
                return Ok(Some(t));
            }
        }
        let src = self.src()?;
        Ok(src
            .newest_upto(oid, self.ltid)
            .map_err(|e| src.err(e).into_db())?
            .map(|(h, _)| h.serial))
    }

    fn get_transaction(&mut self, tid: Tid, all: bool) -> DbResult<Option<TransactionRecord>> {
        if self.finished || tid <= self.zodb_tid || tid > self.ltid {
            return self.db.get_transaction(tid, all);
        }
        self.readable(tid.0)?;
        let src = self.src()?;
        let e = |e| src.err(e).into_db();
        let Some(t) = src.txn(tid).map_err(e)? else {
            return Ok(None);
        };
        let mut seen = HashSet::new();
        let mut oids = Vec::new();
        for r in t.records() {
            let r = r.map_err(e)?;
            if seen.insert(r.oid) {
                oids.push(r.oid);
            }
        }
        Ok(Some(TransactionRecord {
            meta: TxnMeta {
                oids,
                user: t.user.to_vec(),
                description: t.description.to_vec(),
                extension: t.extension.to_vec(),
                packed: t.status == TxnStatus::Packed.byte(),
                ttid: tid,
            },
            pack: None,
        }))
    }

    fn object_history(
        &mut self,
        oid: Oid,
        offset: u64,
        length: u64,
    ) -> DbResult<Option<Vec<(Tid, u64)>>> {
        if self.finished {
            let h = self.dest_history(oid, offset, length)?;
            return Ok(if h.is_empty() { None } else { Some(h) });
        }
        self.readable(oid.0)?;
        let want = offset.saturating_add(length);
        let mut all = Vec::new();
        for t in self.dest_new_serials(oid, want)? {
            let size = match self.db.find_object(oid, Some(t), None)? {
                Some(r) => zodb_size(&r)?,
                None => 0,
            };
            all.push((t, size));
        }
        let src = self.src()?;
        for h in src.revisions(oid).map_err(|e| src.err(e).into_db())? {
            if all.len() as u64 >= want {
                break;
            }
            all.push((h.serial, h.plen()));
        }
        let window: Vec<(Tid, u64)> = all
            .into_iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(usize::try_from(length).unwrap_or(usize::MAX))
            .collect();
        Ok(if window.is_empty() {
            None
        } else {
            Some(window)
        })
    }

    fn object_history_for_undo(
        &mut self,
        oid: Oid,
        undo_tid: Tid,
    ) -> DbResult<Option<(Option<Tid>, Vec<(Tid, Option<Tid>)>)>> {
        if self.finished {
            return self.db.object_history_for_undo(oid, undo_tid);
        }
        self.readable(oid.0)?;
        let revs = self.all_revisions(oid)?;
        let Some(i) = revs.iter().position(|&(t, _)| t == undo_tid) else {
            return Ok(None);
        };
        let before = i.checked_sub(1).map(|j| revs[j].0);
        Ok(Some((before, revs[i + 1..].to_vec())))
    }

    fn tid_list_in(&mut self, offset: u64, length: u64, partitions: &[u32]) -> DbResult<Vec<Tid>> {
        if self.finished {
            return self.db.tid_list_in(offset, length, partitions);
        }
        let want = offset.saturating_add(length);
        let view = self.db.partition_view()?;
        // The destination has the new transactions (above ltid), then the
        // imported ones; the source's not imported ones go in between.
        let dest = self.db.tid_list_in(0, want, partitions)?;
        let split = dest
            .iter()
            .position(|&t| t <= self.ltid)
            .unwrap_or(dest.len());
        let mut out: Vec<Tid> = dest[..split].to_vec();
        if (out.len() as u64) < want {
            let left = want - out.len() as u64;
            out.extend(self.source_tids_desc(self.zodb_tid, self.ltid, &view, partitions, left)?);
        }
        out.extend(dest[split..].iter().copied());
        Ok(out
            .into_iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(usize::try_from(length).unwrap_or(usize::MAX))
            .collect())
    }

    fn oids_from(
        &mut self,
        partition: u32,
        length: u64,
        min_oid: Oid,
        tid: Tid,
    ) -> DbResult<(Option<Oid>, Vec<Oid>)> {
        if self.finished {
            return self.db.oids_from(partition, length, min_oid, tid);
        }
        let view = self.db.partition_view()?;
        if !view.readable.contains(&partition) {
            return Err(DbError::NonReadableCell { partition });
        }
        let np = u64::from(view.np);
        let loid = self.loid;
        let candidates: Vec<Oid> = self
            .src()?
            .storage()
            .index()
            .iter()
            .map(|(o, _)| o)
            .filter(|o| *o >= min_oid && *o <= loid && o.0 % np == u64::from(partition))
            .collect();
        // Like NEO's query: the newest revision at or before `tid` of each
        // oid counts as a row (deleted or not); deleted ones are left out.
        let before = Some(Tid(tid.0.saturating_add(1)));
        let mut found = Vec::new();
        let mut rows = 0;
        for &o in &candidates {
            if rows >= length {
                break;
            }
            let Some(r) = self.find_object(o, None, before)? else {
                continue;
            };
            rows += 1;
            if r.data.is_some() {
                found.push(o);
            }
            if rows >= length {
                return Ok((Some(Oid(o.0 + np)), found));
            }
        }
        // The rest are objects created by clients: the destination has
        // all their revisions.
        let left = length - rows;
        let (next, more) = self
            .db
            .oids_from(partition, left, min_oid.max(Oid(loid.0 + 1)), tid)?;
        found.extend(more);
        Ok((next, found))
    }

    fn replication_tid_list(
        &mut self,
        min_tid: Tid,
        max_tid: Tid,
        length: Option<u64>,
        partition: u32,
    ) -> DbResult<Vec<Tid>> {
        if self.finished {
            return self
                .db
                .replication_tid_list(min_tid, max_tid, length, partition);
        }
        let want = length.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        if min_tid <= self.zodb_tid && min_tid <= max_tid {
            out = self.db.replication_tid_list(
                min_tid,
                max_tid.min(self.zodb_tid),
                length,
                partition,
            )?;
        }
        let lo = min_tid.max(Tid(self.zodb_tid.0 + 1));
        let hi = max_tid.min(self.ltid);
        if lo <= hi && (out.len() as u64) < want {
            let view = self.db.partition_view()?;
            let src = self.src()?;
            let left = usize::try_from(want - out.len() as u64).unwrap_or(usize::MAX);
            let txns = src.txns();
            out.extend(
                txns[src.first_after(Tid(lo.0 - 1))..src.first_after(hi)]
                    .iter()
                    .map(|t| t.tid)
                    .filter(|&t| in_partitions(&view, t, &[partition]))
                    .take(left),
            );
        }
        let lo = min_tid.max(Tid(self.ltid.0 + 1));
        if lo <= max_tid && (out.len() as u64) < want {
            let left = length.map(|l| l - out.len() as u64);
            out.extend(self.db.replication_tid_list(lo, max_tid, left, partition)?);
        }
        Ok(out)
    }

    fn replication_object_list(
        &mut self,
        min_tid: Tid,
        max_tid: Tid,
        length: Option<u64>,
        partition: u32,
        min_oid: Oid,
    ) -> DbResult<Vec<(Tid, Oid)>> {
        if self.finished {
            return self
                .db
                .replication_object_list(min_tid, max_tid, length, partition, min_oid);
        }
        if max_tid < min_tid || length == Some(0) {
            return Ok(Vec::new());
        }
        let want = length.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        if min_tid <= self.zodb_tid {
            out = self.db.replication_object_list(
                min_tid,
                max_tid.min(self.zodb_tid),
                length,
                partition,
                min_oid,
            )?;
        }
        let lo = min_tid.max(Tid(self.zodb_tid.0 + 1));
        let hi = max_tid.min(self.ltid);
        if lo <= hi && (out.len() as u64) < want {
            let np = self.db.partition_view()?.np;
            let m = if lo == min_tid { min_oid } else { Oid::ZERO };
            let left = usize::try_from(want - out.len() as u64).unwrap_or(usize::MAX);
            out.extend(self.source_objects(lo, hi, m, partition, np, left)?);
        }
        let lo = min_tid.max(Tid(self.ltid.0 + 1));
        if lo <= max_tid && (out.len() as u64) < want {
            let m = if lo == min_tid { min_oid } else { Oid::ZERO };
            let left = length.map(|l| l - out.len() as u64);
            out.extend(
                self.db
                    .replication_object_list(lo, max_tid, left, partition, m)?,
            );
        }
        Ok(out)
    }

    fn check_serial_range(
        &mut self,
        partition: u32,
        length: Option<u64>,
        min_tid: Tid,
        max_tid: Tid,
        min_oid: Oid,
    ) -> DbResult<SerialRangeCheck> {
        if self.finished {
            return self
                .db
                .check_serial_range(partition, length, min_tid, max_tid, min_oid);
        }
        let rows = self.replication_object_list(min_tid, max_tid, length, partition, min_oid)?;
        let rows: Vec<(u64, u64)> = rows.into_iter().map(|(t, o)| (t.0, o.0)).collect();
        Ok(serial_range_check(&rows))
    }

    fn delete_transaction(&mut self, tid: Tid) -> DbResult<()> {
        if !self.finished && tid <= self.ltid {
            return Err(refused("deleting an imported transaction"));
        }
        self.db.delete_transaction(tid)
    }

    fn delete_object(&mut self, oid: Oid, serial: Option<Tid>) -> DbResult<()> {
        if !self.finished && serial.is_none_or(|s| s <= self.ltid) {
            return Err(refused("deleting imported object revisions"));
        }
        self.db.delete_object(oid, serial)
    }

    fn delete_range(
        &mut self,
        partition: u32,
        min_tid: Option<Tid>,
        max_tid: Option<Tid>,
    ) -> DbResult<()> {
        // As NEO: even once imported, truncating below ltid would make a
        // restart with this configuration import again; and the source
        // cannot be truncated for writeback.
        if min_tid.is_none_or(|t| t < self.ltid) || self.has_writeback() {
            return Err(DbError::Corrupted {
                what: "importer: cannot truncate the imported data or with writeback".into(),
            });
        }
        self.db.delete_range(partition, min_tid, max_tid)
    }

    fn pack_orders(&mut self, min_completed: Tid) -> DbResult<Vec<PackOrder>> {
        self.db.pack_orders(min_completed)
    }

    fn sign_pack_orders(&mut self, approved: &[Tid], rejected: &[Tid]) -> DbResult<Vec<Tid>> {
        self.db.sign_pack_orders(approved, rejected)
    }

    fn pack_allowed(&mut self) -> bool {
        self.finished && !self.has_writeback()
    }

    fn pack_partition(
        &mut self,
        partition: u32,
        scope: PackScope<'_>,
        tid: Tid,
    ) -> DbResult<(Option<Oid>, usize)> {
        if !self.finished || self.has_writeback() {
            return Err(refused("pack"));
        }
        self.db.pack_partition(partition, scope, tid)
    }

    fn drop_partition_step(&mut self, partition: u32, count: u64) -> DbResult<DropStep> {
        if !self.finished {
            return Err(refused("dropping a partition"));
        }
        self.db.drop_partition_step(partition, count)
    }
}
