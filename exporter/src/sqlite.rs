//! [`SqliteSource`]: NEO's SQLite database read in ranges of transactions.
//!
//! [`BackendSource`](crate::BackendSource) asks the storage layer one
//! question per object record (NEO's `getObject`), which costs a few SQL
//! statements each. This source reads a whole batch of transactions with
//! two range scans per partition over NEO's schema (version 4, checked by
//! [`SqliteBackend::open`]):
//!
//! | statement | index used |
//! |---|---|
//! | `SELECT tid, packed, oids, user, description, ext FROM trans WHERE partition=? AND tid BETWEEN ? AND ? ORDER BY tid LIMIT ?` | primary key `(partition, tid)` |
//! | `SELECT tid, oid, data_id, value_tid, compression, value FROM obj LEFT JOIN data ON data.id = obj.data_id WHERE partition=? AND tid BETWEEN ? AND ?` | `_obj_i1 (partition, tid, oid)` |
//!
//! Records are then put in `trans.oids` order, as
//! [`BackendSource`](crate::BackendSource) yields them (an oid of
//! `trans.oids` without a record was only checked, not written; a record
//! whose oid is not listed is an inconsistency).

use fsformat::{Oid, Tid};
use neo_server::storage::{from_sql, split_oids, to_sql, DbError, SqliteBackend};
use rusqlite::params;

use crate::source::{
    check_partitions, db, list_tids, read_transaction, Source, SourceError, SourceRecord, SourceTxn,
};

/// A storage node's SQLite database, read in ranges (see the module docs).
#[derive(Debug)]
pub struct SqliteSource {
    db: SqliteBackend,
    np: u32,
}

/// One `trans` row.
struct TransRow {
    tid: u64,
    packed: bool,
    oids: Vec<u8>,
    user: Vec<u8>,
    description: Vec<u8>,
    extension: Vec<u8>,
}

/// One `obj` row joined with its `data` row.
type ObjRow = (
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<Vec<u8>>,
);

fn db_ctx(what: &'static str) -> impl FnOnce(DbError) -> SourceError {
    db(move || what.to_owned())
}

fn sql_err(db: &SqliteBackend, context: &'static str) -> impl FnOnce(rusqlite::Error) -> DbError {
    let path = db.path().to_owned();
    move |error| DbError::Sqlite {
        path,
        context,
        error,
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
        Ok(SqliteSource { db, np })
    }

    /// Gives the database back.
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

    fn obj_rows(&self, min: i64, max: i64) -> Result<Vec<(u64, SourceRecord)>, SourceError> {
        let conn = self.db.connection();
        let mut out = Vec::new();
        for p in 0..self.np {
            let ctx = || format!("reading objects of partition {p}");
            let mut stmt = conn
                .prepare_cached(
                    "SELECT tid, oid, data_id, value_tid, compression, value \
                     FROM obj LEFT JOIN data ON data.id = obj.data_id \
                     WHERE partition=? AND ?<=tid AND tid<=?",
                )
                .map_err(sql_err(&self.db, "reading obj"))
                .map_err(db(ctx))?;
            let mut rows = stmt
                .query(params![p, min, max])
                .map_err(sql_err(&self.db, "reading obj"))
                .map_err(db(ctx))?;
            while let Some(r) = rows
                .next()
                .map_err(sql_err(&self.db, "reading obj"))
                .map_err(db(ctx))?
            {
                let row: ObjRow = (|| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })()
                .map_err(sql_err(&self.db, "reading obj"))
                .map_err(db(ctx))?;
                let (tid, oid, data_id, value_tid, compression, value) = row;
                let tid = from_sql(tid, "tid").map_err(db(ctx))?;
                let oid = from_sql(oid, "oid").map_err(db(ctx))?;
                let data = match (data_id, compression, value) {
                    (None, _, _) => None,
                    (Some(_), Some(c), Some(v)) => Some((
                        u8::try_from(c).map_err(|_| SourceError::Inconsistent {
                            what: format!("object {} of {}: compression {c}", Oid(oid), Tid(tid)),
                        })?,
                        v,
                    )),
                    (Some(id), _, _) => {
                        return Err(SourceError::Inconsistent {
                            what: format!(
                                "object {} of {}: data row {id:#x} is missing",
                                Oid(oid),
                                Tid(tid)
                            ),
                        })
                    }
                };
                let value_tid = value_tid
                    .map(|v| from_sql(v, "value_tid").map(Tid))
                    .transpose()
                    .map_err(db(ctx))?;
                out.push((
                    tid,
                    SourceRecord {
                        oid: Oid(oid),
                        data,
                        value_tid,
                    },
                ));
            }
        }
        Ok(out)
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
        if min > max || limit == 0 {
            return Ok(Vec::new());
        }
        let ctx = || "reading a range of transactions".to_owned();
        let smin = to_sql(min.0, "tid").map_err(db(ctx))?;
        let smax = to_sql(max.0.min(i64::MAX as u64), "tid").map_err(db(ctx))?;
        let mut trans = self.trans_rows(smin, smax, i64::try_from(limit).unwrap_or(i64::MAX))?;
        trans.truncate(limit);
        let Some(last) = trans.last() else {
            return Ok(Vec::new());
        };
        let hi = to_sql(last.tid, "tid").map_err(db(ctx))?;
        let mut objs = self.obj_rows(smin, hi)?;
        // Sorted by (tid, oid): each partition's scan already is (the
        // index order), so this only merges partitions.
        objs.sort_unstable_by_key(|(t, r)| (*t, r.oid));
        let orphan = |tid: u64, oid: Oid| SourceError::Inconsistent {
            what: format!(
                "object {oid} has a record in {} that the transaction does not list \
                 (or that transaction is missing)",
                Tid(tid)
            ),
        };
        let mut rows = objs.into_iter().peekable();
        let mut out = Vec::with_capacity(trans.len());
        let mut run: Vec<(Oid, Option<SourceRecord>)> = Vec::new();
        for t in trans {
            // The records of t, sorted by oid.
            run.clear();
            while let Some((tid, r)) = rows.next_if(|(tid, _)| *tid <= t.tid) {
                if tid < t.tid {
                    return Err(orphan(tid, r.oid));
                }
                run.push((r.oid, Some(r)));
            }
            let oids = split_oids(t.tid, &t.oids).map_err(db(ctx))?;
            let mut records = Vec::with_capacity(run.len());
            for o in &oids {
                let found = run.binary_search_by_key(o, |(oid, _)| *oid);
                if let Some(r) = found.ok().and_then(|i| run[i].1.take()) {
                    records.push(r);
                }
            }
            if let Some(r) = run.iter().find_map(|(_, r)| r.as_ref()) {
                return Err(orphan(t.tid, r.oid));
            }
            out.push(SourceTxn {
                tid: Tid(t.tid),
                user: t.user,
                description: t.description,
                extension: t.extension,
                packed: t.packed,
                records,
            });
        }
        if let Some((tid, r)) = rows.next() {
            return Err(orphan(tid, r.oid));
        }
        Ok(out)
    }
}
