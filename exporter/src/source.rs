//! Where exported transactions come from: the [`Source`] trait, and
//! [`BackendSource`], which reads a storage node's database through the
//! storage layer's [`Backend`] trait (NEO's `DatabaseManager` primitives).
//!
//! A source speaks NEO's terms: a transaction is its metadata (`trans`) and
//! the object records it wrote (`obj` joined with `data`), in the order of
//! `trans.oids`. A record carries what NEO stores: the (possibly
//! compressed) data, and `value_tid` when it reuses the data of an earlier
//! revision (undo). The cluster client can implement this trait too.

use std::fmt;

use fsformat::{Oid, Tid};
use neo_server::storage::{Backend, DbError};

use crate::batch::Batch;

/// One object record of a transaction, as NEO stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceRecord {
    /// The object.
    pub oid: Oid,
    /// `(compression, stored bytes)`; `None` for a deletion (an undone
    /// creation). An undo record has the data of the revision it restores.
    pub data: Option<(u8, Vec<u8>)>,
    /// NEO's `value_tid` (`data_serial`): the revision whose data this
    /// record reuses (undo), `None` for a plain store.
    pub value_tid: Option<Tid>,
}

/// One committed transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceTxn {
    /// Its tid.
    pub tid: Tid,
    /// `user`.
    pub user: Vec<u8>,
    /// `description`.
    pub description: Vec<u8>,
    /// `ext`: the pickled extension dict, as stored.
    pub extension: Vec<u8>,
    /// NEO's `packed` flag (FileStorage status `'p'`).
    pub packed: bool,
    /// Its records, in `trans.oids` order.
    pub records: Vec<SourceRecord>,
}

impl SourceTxn {
    /// Stored data bytes (compressed as stored), for progress estimates.
    pub fn stored_bytes(&self) -> u64 {
        self.records
            .iter()
            .map(|r| r.data.as_ref().map_or(0, |(_, d)| d.len() as u64))
            .sum()
    }
}

/// Why a source could not answer.
#[derive(Debug)]
#[non_exhaustive]
pub enum SourceError {
    /// The storage database failed.
    Db {
        /// What we were reading.
        context: String,
        /// The database layer's error.
        error: Box<DbError>,
    },
    /// The database does not hold the whole history: some partitions are
    /// missing or not readable on this node.
    MissingPartitions {
        /// Number of partitions.
        np: u32,
        /// The partitions that are not readable.
        missing: Vec<u32>,
    },
    /// The cluster failed to answer.
    Cluster {
        /// What we were reading.
        context: String,
        /// The client's error.
        error: Box<neo_server::client::ClientError>,
    },
    /// A tid listed by the source vanished or broke its invariants.
    Inconsistent {
        /// What was found.
        what: String,
    },
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::Db { context, error } => write!(f, "{context}: {error}"),
            SourceError::MissingPartitions { np, missing } => write!(
                f,
                "the database does not hold the whole history: partitions {missing:?} \
                 of {np} are missing or not readable on this node (export from a node \
                 that has every partition, or from the cluster)"
            ),
            SourceError::Cluster { context, error } => write!(f, "{context}: {error}"),
            SourceError::Inconsistent { what } => write!(f, "inconsistent source: {what}"),
        }
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SourceError::Db { error, .. } => Some(error.as_ref()),
            SourceError::Cluster { error, .. } => Some(error.as_ref()),
            _ => None,
        }
    }
}

/// What the exporter reads: committed transactions in tid order.
pub trait Source {
    /// Up to `limit` tids of committed transactions with
    /// `min <= tid <= max`, ascending.
    fn tids(&mut self, min: Tid, max: Tid, limit: usize) -> Result<Vec<Tid>, SourceError>;

    /// Transaction `tid` with its records; `None` if there is none.
    fn transaction(&mut self, tid: Tid) -> Result<Option<SourceTxn>, SourceError>;

    /// Up to `limit` transactions with `min <= tid <= max`, ascending. The
    /// default asks [`tids`](Self::tids) then each
    /// [`transaction`](Self::transaction); sources that can stream override it.
    fn transactions(
        &mut self,
        min: Tid,
        max: Tid,
        limit: usize,
    ) -> Result<Vec<SourceTxn>, SourceError> {
        let tids = self.tids(min, max, limit)?;
        let mut out = Vec::with_capacity(tids.len());
        for tid in tids {
            let txn = self
                .transaction(tid)?
                .ok_or_else(|| SourceError::Inconsistent {
                    what: format!("transaction {tid} is listed but cannot be read"),
                })?;
            out.push(txn);
        }
        Ok(out)
    }

    /// The caller is about to read `[min, max]` in order with
    /// [`read_batch`](Self::read_batch): the source may read ahead what
    /// it needs for that. Nothing by default.
    fn plan(&mut self, min: Tid, max: Tid) -> Result<(), SourceError> {
        let _ = (min, max);
        Ok(())
    }

    /// Appends to `out` up to `limit` transactions with
    /// `min <= tid <= max`, ascending, their data as stored (what the
    /// export reads). The default appends what
    /// [`transactions`](Self::transactions) gives; sources that can avoid
    /// a vector per record override it.
    fn read_batch(
        &mut self,
        min: Tid,
        max: Tid,
        limit: usize,
        out: &mut Batch,
    ) -> Result<(), SourceError> {
        for t in self.transactions(min, max, limit)? {
            out.push_txn(&t);
        }
        Ok(())
    }

    /// Number of transactions with `min <= tid <= max` (for progress).
    fn count(&mut self, min: Tid, max: Tid) -> Result<u64, SourceError> {
        let mut n = 0;
        let mut from = min;
        loop {
            let tids = self.tids(from, max, 100_000)?;
            n += tids.len() as u64;
            match tids.last() {
                Some(&t) if tids.len() == 100_000 && t < max => from = Tid(t.0 + 1),
                _ => return Ok(n),
            }
        }
    }
}

/// A storage node's database, read through the [`Backend`] trait.
///
/// Every partition must be readable on the node (a single storage node,
/// or one holding a replica of everything); otherwise the history would
/// have holes and [`BackendSource::new`] refuses.
#[derive(Debug)]
pub struct BackendSource<B> {
    db: B,
    np: u32,
}

pub(crate) fn db(context: impl FnOnce() -> String) -> impl FnOnce(DbError) -> SourceError {
    move |error| SourceError::Db {
        context: context(),
        error: Box::new(error),
    }
}

impl<B: Backend> BackendSource<B> {
    /// Wraps an open database; checks that it holds every partition.
    pub fn new(mut db: B) -> Result<Self, SourceError> {
        let np = check_partitions(&mut db)?;
        Ok(BackendSource { db, np })
    }

    /// Number of partitions.
    pub fn partitions(&self) -> u32 {
        self.np
    }

    /// The database.
    pub fn backend(&mut self) -> &mut B {
        &mut self.db
    }

    /// Gives the database back.
    pub fn into_inner(self) -> B {
        self.db
    }
}

impl<B: Backend> Source for BackendSource<B> {
    fn tids(&mut self, min: Tid, max: Tid, limit: usize) -> Result<Vec<Tid>, SourceError> {
        list_tids(&mut self.db, self.np, min, max, limit)
    }

    fn transaction(&mut self, tid: Tid) -> Result<Option<SourceTxn>, SourceError> {
        read_transaction(&mut self.db, tid)
    }
}

/// Checks that every partition of `db` is readable; returns their number.
pub(crate) fn check_partitions<B: Backend>(db: &mut B) -> Result<u32, SourceError> {
    let view = db
        .partition_view()
        .map_err(self::db(|| "reading the partition table".into()))?;
    let missing: Vec<u32> = (0..view.np)
        .filter(|p| !view.readable.contains(p))
        .collect();
    if view.np == 0 || !missing.is_empty() {
        return Err(SourceError::MissingPartitions {
            np: view.np,
            missing,
        });
    }
    Ok(view.np)
}

/// Up to `limit` tids of `trans` in `[min, max]` over `np` partitions.
pub(crate) fn list_tids<B: Backend>(
    db: &mut B,
    np: u32,
    min: Tid,
    max: Tid,
    limit: usize,
) -> Result<Vec<Tid>, SourceError> {
    if min > max || limit == 0 {
        return Ok(Vec::new());
    }
    let mut all = Vec::new();
    for p in 0..np {
        all.extend(
            db.replication_tid_list(min, max, Some(limit as u64), p)
                .map_err(self::db(|| {
                    format!("listing transactions of partition {p}")
                }))?,
        );
    }
    all.sort_unstable();
    all.dedup();
    all.truncate(limit);
    Ok(all)
}

/// Transaction `tid` read with `getTransaction` and one `getObject` per oid.
pub(crate) fn read_transaction<B: Backend>(
    db: &mut B,
    tid: Tid,
) -> Result<Option<SourceTxn>, SourceError> {
    let Some(t) = db
        .get_transaction(tid, false)
        .map_err(self::db(|| format!("reading transaction {tid}")))?
    else {
        return Ok(None);
    };
    let mut records = Vec::with_capacity(t.meta.oids.len());
    for &oid in &t.meta.oids {
        let r = db.find_object(oid, Some(tid), None).map_err(self::db(|| {
            format!("reading object {oid} of transaction {tid}")
        }))?;
        // An oid without a record was only checked (NEO's
        // checkCurrentSerialInTransaction), not written.
        let Some(r) = r else { continue };
        let data = match (r.compression, r.data) {
            (Some(c), Some(d)) => Some((c, d)),
            (None, None) => None,
            _ => {
                return Err(SourceError::Inconsistent {
                    what: format!("object {oid} of {tid}: data without compression"),
                })
            }
        };
        records.push(SourceRecord {
            oid,
            data,
            value_tid: r.data_serial,
        });
    }
    Ok(Some(SourceTxn {
        tid,
        user: t.meta.user,
        description: t.meta.description,
        extension: t.meta.extension,
        packed: t.meta.packed,
        records,
    }))
}
