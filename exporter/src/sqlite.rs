//! [`SqliteSource`]: NEO's SQLite database read in ranges of transactions.
//!
//! [`BackendSource`](crate::BackendSource) asks the storage layer one
//! question per object record (NEO's `getObject`), which costs a few SQL
//! statements each. This source reads a whole batch of transactions with
//! two range scans per partition and one over `data` over NEO's schema
//! (version 4, checked by [`SqliteBackend::open`]):
//!
//! | statement | index used |
//! |---|---|
//! | `SELECT tid, packed, oids, user, description, ext FROM trans WHERE partition=? AND tid BETWEEN ? AND ? ORDER BY tid LIMIT ?` | primary key `(partition, tid)` |
//! | `SELECT tid, oid, data_id, value_tid FROM obj WHERE partition=? AND tid BETWEEN ? AND ?` | `_obj_i1 (partition, tid, oid)` |
//! | `SELECT id, compression, value FROM data WHERE id BETWEEN ? AND ? ORDER BY id` (the batch's ids are dense, as NEO assigns them) | rowid: one pass over consecutive pages |
//! | else `SELECT compression, value FROM data WHERE id=?` per id, ascending | rowid |
//!
//! Before an export, [`Source::plan`] reads the `obj` rows of the whole
//! range in one pass along the primary key instead (`... AND ?<=+tid AND
//! +tid<=?`), when the range holds a quarter of the transactions or more
//! and at most [`SCAN_ROWS`] records: the per-row lookups of `_obj_i1`
//! cost several times more.
//!
//! Data are copied once, from the mapped database into the [`Batch`]
//! (read in place with `get_ref`, no vector per record); a data row used
//! by several records of the batch is read once. Records are then put in
//! `trans.oids` order, as [`BackendSource`](crate::BackendSource) yields
//! them (an oid of `trans.oids` without a record was only checked, not
//! written; a record whose oid is not listed is an inconsistency).

use fsformat::{Oid, Tid};
use neo_server::storage::{from_sql, split_oids, to_sql, DbError, SqliteBackend};
use rusqlite::{params, Connection, OpenFlags};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use crate::batch::{Batch, StoredData};
use crate::source::{
    check_partitions, db, list_tids, read_transaction, Source, SourceError, SourceTxn,
};

/// A storage node's SQLite database, read in ranges (see the module docs).
#[derive(Debug)]
pub struct SqliteSource {
    db: SqliteBackend,
    np: u32,
    /// The batch's `obj` rows, sorted by `(tid, oid)` (reused).
    objs: Vec<ObjRow>,
    /// The batch's data ids, sorted, distinct (reused).
    ids: Vec<i64>,
    /// The data of `ids[i]` in the batch, once read (reused).
    found: Vec<Option<StoredData>>,
    /// Records of the current transaction already placed (reused).
    taken: Vec<bool>,
    /// Most `obj` rows [`Source::plan`] reads in one scan of the table.
    scan_limit: usize,
    /// The `obj` rows of the planned range, when read in one scan.
    scanned: Option<Scanned>,
    /// That scan while a thread of its own does it.
    pending: Option<PendingScan>,
}

/// A scan of `obj` by a thread with its own (read-only) connection: the
/// batches read meanwhile look their rows up. Dropped, it stops the
/// thread and waits for it (so that its read lock is gone).
#[derive(Debug)]
struct PendingScan {
    min: i64,
    max: i64,
    rx: mpsc::Receiver<Option<Vec<ObjRow>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PendingScan {
    /// The rows if the scan is over (`Some(None)`: it failed or gave up);
    /// waits for it with `wait`.
    fn take(&mut self, wait: bool) -> Option<Option<Vec<ObjRow>>> {
        let got = if wait {
            self.rx.recv().map_err(|_| mpsc::TryRecvError::Disconnected)
        } else {
            self.rx.try_recv()
        };
        match got {
            Ok(rows) => Some(rows),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => Some(None),
        }
    }
}

impl Drop for PendingScan {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The `obj` rows with `min <= tid <= max`, sorted by `(tid, oid)`.
#[derive(Debug)]
struct Scanned {
    min: i64,
    max: i64,
    rows: Vec<ObjRow>,
}

/// Default of [`SqliteSource::set_scan_limit`]: 4 Mi rows (about 200 MB).
pub const SCAN_ROWS: usize = 4 << 20;

/// One `trans` row.
struct TransRow {
    tid: u64,
    packed: bool,
    oids: Vec<u8>,
    user: Vec<u8>,
    description: Vec<u8>,
    extension: Vec<u8>,
}

/// One `obj` row.
#[derive(Clone, Copy, Debug)]
struct ObjRow {
    tid: u64,
    oid: u64,
    data_id: Option<i64>,
    value_tid: Option<u64>,
}

/// Appends the rows of an `obj` query (partition, min tid, max tid) to
/// `out`; false (and stops) when `out` would exceed `limit` rows or `stop`
/// is set.
#[allow(clippy::too_many_arguments)]
fn obj_query(
    conn: &Connection,
    path: &Path,
    sql: &str,
    p: u32,
    (min, max): (i64, i64),
    limit: usize,
    stop: Option<&AtomicBool>,
    out: &mut Vec<ObjRow>,
) -> Result<bool, SourceError> {
    let ctx = || format!("reading objects of partition {p}");
    let err = |e| db(ctx)(sql_err_at(path, "reading obj")(e));
    let mut stmt = conn.prepare_cached(sql).map_err(err)?;
    let mut rows = stmt.query(params![p, min, max]).map_err(err)?;
    while let Some(r) = rows.next().map_err(err)? {
        if out.len() >= limit || stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            return Ok(false);
        }
        let row: (i64, i64, Option<i64>, Option<i64>) =
            (|| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))().map_err(err)?;
        let (tid, oid, data_id, value_tid) = row;
        out.push(ObjRow {
            tid: from_sql(tid, "tid").map_err(db(ctx))?,
            oid: from_sql(oid, "oid").map_err(db(ctx))?,
            data_id,
            value_tid: value_tid
                .map(|v| from_sql(v, "value_tid"))
                .transpose()
                .map_err(db(ctx))?,
        });
    }
    Ok(true)
}

/// The scan thread of [`SqliteSource`]: every `obj` row with
/// `min <= tid <= max` along the primary key, through a read-only
/// connection of its own, sorted by `(tid, oid)`; `None` past `limit`
/// rows, when stopped, or on an error (then the rows are looked up).
fn scan_obj(
    path: &Path,
    np: u32,
    min: i64,
    max: i64,
    limit: usize,
    stop: &AtomicBool,
) -> Option<Vec<ObjRow>> {
    let (t, cpu) = (std::time::Instant::now(), crate::export::thread_cpu());
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .and_then(|c| {
            c.query_row("PRAGMA mmap_size = 1099511627776", [], |r| {
                r.get::<_, i64>(0)
            })?;
            Ok(c)
        })
        .map_err(|e| log::debug!("{}: no scan: {e}", path.display()))
        .ok()?;
    let mut rows = Vec::new();
    for p in 0..np {
        // `+tid`: not through _obj_i1, along the primary key.
        let sql = "SELECT tid, oid, data_id, value_tid FROM obj \
                   WHERE partition=? AND ?<=+tid AND +tid<=?";
        match obj_query(
            &conn,
            path,
            sql,
            p,
            (min, max),
            limit,
            Some(stop),
            &mut rows,
        ) {
            Ok(true) => {}
            Ok(false) => {
                log::debug!("obj scan stopped (over {limit} rows, or not needed)");
                return None;
            }
            Err(e) => {
                log::debug!("obj scan failed: {e}");
                return None;
            }
        }
    }
    rows.sort_unstable_by_key(|o| (o.tid, o.oid));
    log::debug!(
        "{} obj rows read in one scan: {:.3}s CPU in {:.3}s",
        rows.len(),
        (crate::export::thread_cpu().saturating_sub(cpu)).as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    Some(rows)
}

/// Densest spread of data ids read with one range scan: at most this
/// many rowids per id needed (plus a few), else one lookup per id.
const DENSE: u64 = 2;

fn db_ctx(what: &'static str) -> impl FnOnce(DbError) -> SourceError {
    db(move || what.to_owned())
}

fn sql_err(db: &SqliteBackend, context: &'static str) -> impl FnOnce(rusqlite::Error) -> DbError {
    sql_err_at(db.path(), context)
}

fn sql_err_at(path: &Path, context: &'static str) -> impl FnOnce(rusqlite::Error) -> DbError {
    let path = path.to_owned();
    move |error| DbError::Sqlite {
        path,
        context,
        error,
    }
}

/// Column `i` of `r` as a blob, borrowed from SQLite.
fn blob<'r>(r: &'r rusqlite::Row<'_>, i: usize) -> rusqlite::Result<&'r [u8]> {
    let v = r.get_ref(i)?;
    v.as_blob()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, v.data_type(), Box::new(e)))
}

fn orphan(tid: u64, oid: u64) -> SourceError {
    SourceError::Inconsistent {
        what: format!(
            "object {} has a record in {} that the transaction does not list \
             (or that transaction is missing)",
            Oid(oid),
            Tid(tid)
        ),
    }
}

impl SqliteSource {
    /// Wraps an open database; checks that it holds every partition. The
    /// connection gets a memory map (`PRAGMA mmap_size`) for the scans: it
    /// saves a system call and a copy per page read.
    pub fn new(mut db: SqliteBackend) -> Result<Self, SourceError> {
        let np = check_partitions(&mut db)?;
        let mapped: i64 = db
            .connection()
            .query_row("PRAGMA mmap_size = 1099511627776", [], |r| r.get(0))
            .map_err(sql_err(&db, "setting mmap_size"))
            .map_err(db_ctx("setting up the database"))?;
        log::debug!("{}: mmap_size {mapped}", db.path().display());
        Ok(SqliteSource {
            db,
            np,
            objs: Vec::new(),
            ids: Vec::new(),
            found: Vec::new(),
            taken: Vec::new(),
            scan_limit: SCAN_ROWS,
            scanned: None,
            pending: None,
        })
    }

    /// Sets the most `obj` rows that [`Source::plan`] reads in one scan
    /// of the table (kept in memory, 48 bytes each); 0: never.
    pub fn set_scan_limit(&mut self, rows: usize) {
        self.scan_limit = rows;
        self.scanned = None;
        self.pending = None;
    }

    /// True when the planned range's `obj` rows were read in one scan
    /// (waits for the scan to end).
    pub fn scanned(&mut self) -> bool {
        self.poll_scan(true);
        self.scanned.is_some()
    }

    /// Takes the rows of the pending scan if it is over (or waits).
    fn poll_scan(&mut self, wait: bool) {
        let Some(p) = &mut self.pending else { return };
        let Some(rows) = p.take(wait) else { return };
        let (min, max) = (p.min, p.max);
        self.pending = None;
        self.scanned = rows.map(|rows| Scanned { min, max, rows });
    }

    /// One integer from `sql` with `params`.
    fn count_rows(&self, sql: &str, params: impl rusqlite::Params) -> Result<u64, SourceError> {
        let n: i64 = self
            .db
            .connection()
            .prepare_cached(sql)
            .and_then(|mut s| s.query_row(params, |r| r.get(0)))
            .map_err(sql_err(&self.db, "counting rows"))
            .map_err(db_ctx("planning the export"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Starts reading the `obj` rows of `[min, max]` in one pass over the
    /// table (primary key order), by a thread with its own connection, if
    /// the range holds a quarter of the transactions or more (a scan costs
    /// a fraction of looking each row up from `_obj_i1`, whose entries
    /// lack `data_id`); it gives up past [`Self::set_scan_limit`] rows.
    fn scan(&mut self, min: i64, max: i64) -> Result<(), SourceError> {
        // The range's share of the history, from `trans` (small next to
        // `obj`, and read anyway).
        let (mut in_range, mut all) = (0, 0);
        for p in 0..self.np {
            in_range += self.count_rows(
                "SELECT count(*) FROM trans WHERE partition=? AND ?<=tid AND tid<=?",
                params![p, min, max],
            )?;
            all += self.count_rows("SELECT count(*) FROM trans WHERE partition=?", [p])?;
        }
        if in_range == 0 || in_range.saturating_mul(4) < all {
            return Ok(());
        }
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (path, np, limit, halt) = (
            self.db.path().to_owned(),
            self.np,
            self.scan_limit,
            Arc::clone(&stop),
        );
        let thread = std::thread::Builder::new()
            .name("obj-scan".into())
            .spawn(move || {
                let rows = scan_obj(&path, np, min, max, limit, &halt);
                let _ = tx.send(rows);
            })
            .map_err(|e| log::debug!("no scan thread: {e}"))
            .ok();
        self.pending = Some(PendingScan {
            min,
            max,
            rx,
            stop,
            thread,
        });
        Ok(())
    }

    /// Gives the database back (after stopping a pending scan).
    pub fn into_inner(self) -> SqliteBackend {
        self.db
    }

    fn trans_rows(&self, min: i64, max: i64, limit: i64) -> Result<Vec<TransRow>, SourceError> {
        let conn = self.db.connection();
        let mut out = Vec::new();
        for p in 0..self.np {
            let ctx = || format!("listing transactions of partition {p}");
            let mut stmt = conn
                .prepare_cached(
                    "SELECT tid, packed, oids, user, description, ext FROM trans \
                     WHERE partition=? AND ?<=tid AND tid<=? ORDER BY tid LIMIT ?",
                )
                .map_err(sql_err(&self.db, "reading trans"))
                .map_err(db(ctx))?;
            let rows = stmt
                .query_map(params![p, min, max, limit], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, bool>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                        r.get::<_, Vec<u8>>(4)?,
                        r.get::<_, Vec<u8>>(5)?,
                    ))
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(sql_err(&self.db, "reading trans"))
                .map_err(db(ctx))?;
            for (tid, packed, oids, user, description, extension) in rows {
                out.push(TransRow {
                    tid: from_sql(tid, "tid").map_err(db(ctx))?,
                    packed,
                    oids,
                    user,
                    description,
                    extension,
                });
            }
        }
        out.sort_unstable_by_key(|t| t.tid);
        Ok(out)
    }

    /// The `obj` rows with `min <= tid <= max` into `self.objs`, sorted by
    /// `(tid, oid)`: from the planned scan when it covers them, else
    /// through `_obj_i1`.
    fn obj_rows(&mut self, min: i64, max: i64) -> Result<(), SourceError> {
        self.poll_scan(false);
        let mut objs = std::mem::take(&mut self.objs);
        objs.clear();
        match &self.scanned {
            Some(s) if s.min <= min && max <= s.max => {
                let lo = s.rows.partition_point(|o| (o.tid as i64) < min);
                let hi = s.rows.partition_point(|o| (o.tid as i64) <= max);
                objs.extend_from_slice(s.rows.get(lo..hi).unwrap_or(&[]));
            }
            _ => {
                for p in 0..self.np {
                    let sql = "SELECT tid, oid, data_id, value_tid FROM obj \
                               WHERE partition=? AND ?<=tid AND tid<=?";
                    let path = self.db.path();
                    let got = obj_query(
                        self.db.connection(),
                        path,
                        sql,
                        p,
                        (min, max),
                        usize::MAX,
                        None,
                        &mut objs,
                    );
                    if let Err(e) = got {
                        self.objs = objs;
                        return Err(e);
                    }
                }
                // Each partition's scan is in index order already: this
                // merges partitions (and is linear on sorted input).
                objs.sort_unstable_by_key(|o| (o.tid, o.oid));
            }
        }
        self.objs = objs;
        Ok(())
    }

    /// The data rows of `self.objs` appended to `out`, `self.found[i]`
    /// for `self.ids[i]` (`None`: no such row).
    fn data_rows(&mut self, out: &mut Batch) -> Result<(), SourceError> {
        self.ids.clear();
        self.ids.extend(self.objs.iter().filter_map(|o| o.data_id));
        self.ids.sort_unstable();
        self.ids.dedup();
        self.found.clear();
        self.found.resize(self.ids.len(), None);
        let (Some(&lo), Some(&hi)) = (self.ids.first(), self.ids.last()) else {
            return Ok(());
        };
        let conn = self.db.connection();
        let ctx = || "reading data".to_owned();
        let err = |e| db(ctx)(sql_err(&self.db, "reading data")(e));
        let compression = |id: i64, c: i64| {
            u8::try_from(c).map_err(|_| SourceError::Inconsistent {
                what: format!("data row {id:#x}: compression {c}"),
            })
        };
        let spread = hi.abs_diff(lo).saturating_add(1);
        if spread
            <= (self.ids.len() as u64)
                .saturating_mul(DENSE)
                .saturating_add(64)
        {
            // One pass in rowid order, skipping the rows not needed.
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, compression, value FROM data \
                     WHERE ?<=id AND id<=? ORDER BY id",
                )
                .map_err(err)?;
            let mut rows = stmt.query(params![lo, hi]).map_err(err)?;
            let mut j = 0;
            while let Some(r) = rows.next().map_err(err)? {
                let id: i64 = r.get(0).map_err(err)?;
                while self.ids.get(j).is_some_and(|&x| x < id) {
                    j += 1;
                }
                match self.ids.get(j) {
                    None => break,
                    Some(&x) if x != id => continue,
                    Some(_) => {}
                }
                let c = compression(id, r.get(1).map_err(err)?)?;
                self.found[j] = Some(out.push_stored(c, blob(r, 2).map_err(err)?));
                j += 1;
            }
        } else {
            let mut stmt = conn
                .prepare_cached("SELECT compression, value FROM data WHERE id=?")
                .map_err(err)?;
            for (j, &id) in self.ids.iter().enumerate() {
                let mut rows = stmt.query([id]).map_err(err)?;
                if let Some(r) = rows.next().map_err(err)? {
                    let c = compression(id, r.get(0).map_err(err)?)?;
                    self.found[j] = Some(out.push_stored(c, blob(r, 1).map_err(err)?));
                }
            }
        }
        Ok(())
    }
}

impl Source for SqliteSource {
    fn tids(&mut self, min: Tid, max: Tid, limit: usize) -> Result<Vec<Tid>, SourceError> {
        list_tids(&mut self.db, self.np, min, max, limit)
    }

    fn transaction(&mut self, tid: Tid) -> Result<Option<SourceTxn>, SourceError> {
        read_transaction(&mut self.db, tid)
    }

    fn transactions(
        &mut self,
        min: Tid,
        max: Tid,
        limit: usize,
    ) -> Result<Vec<SourceTxn>, SourceError> {
        let mut b = Batch::new();
        self.read_batch(min, max, limit, &mut b)?;
        Ok(b.to_source_txns())
    }

    fn plan(&mut self, min: Tid, max: Tid) -> Result<(), SourceError> {
        self.scanned = None;
        self.pending = None;
        if min > max || self.scan_limit == 0 {
            return Ok(());
        }
        let ctx = || "planning the export".to_owned();
        let smin = to_sql(min.0, "tid").map_err(db(ctx))?;
        let smax = to_sql(max.0.min(i64::MAX as u64), "tid").map_err(db(ctx))?;
        self.scan(smin, smax)
    }

    fn read_batch(
        &mut self,
        min: Tid,
        max: Tid,
        limit: usize,
        out: &mut Batch,
    ) -> Result<(), SourceError> {
        if min > max || limit == 0 {
            return Ok(());
        }
        let ctx = || "reading a range of transactions".to_owned();
        let smin = to_sql(min.0, "tid").map_err(db(ctx))?;
        let smax = to_sql(max.0.min(i64::MAX as u64), "tid").map_err(db(ctx))?;
        let mut trans = self.trans_rows(smin, smax, i64::try_from(limit).unwrap_or(i64::MAX))?;
        trans.truncate(limit);
        let Some(last) = trans.last() else {
            return Ok(());
        };
        let hi = to_sql(last.tid, "tid").map_err(db(ctx))?;
        self.obj_rows(smin, hi)?;
        self.data_rows(out)?;
        let mut k = 0;
        for t in &trans {
            // The records of t: objs[start..k], sorted by oid.
            let start = k;
            while let Some(o) = self.objs.get(k).filter(|o| o.tid <= t.tid) {
                if o.tid < t.tid {
                    return Err(orphan(o.tid, o.oid));
                }
                k += 1;
            }
            let run = &self.objs[start..k];
            self.taken.clear();
            self.taken.resize(run.len(), false);
            out.begin_txn(Tid(t.tid), t.packed, &t.user, &t.description, &t.extension);
            for oid in split_oids(t.tid, &t.oids).map_err(db(ctx))? {
                let Ok(i) = run.binary_search_by_key(&oid.0, |o| o.oid) else {
                    continue;
                };
                if std::mem::replace(&mut self.taken[i], true) {
                    continue;
                }
                let o = run[i];
                let data = match o.data_id {
                    None => None,
                    Some(id) => {
                        let found = self.ids.binary_search(&id).ok().and_then(|j| self.found[j]);
                        Some(found.ok_or_else(|| SourceError::Inconsistent {
                            what: format!(
                                "object {} of {}: data row {id:#x} is missing",
                                Oid(o.oid),
                                Tid(o.tid)
                            ),
                        })?)
                    }
                };
                out.push_record(Oid(o.oid), o.value_tid.map(Tid), data);
            }
            if let Some(i) = self.taken.iter().position(|&x| !x) {
                return Err(orphan(t.tid, run[i].oid));
            }
        }
        if let Some(o) = self.objs.get(k) {
            return Err(orphan(o.tid, o.oid));
        }
        Ok(())
    }
}
