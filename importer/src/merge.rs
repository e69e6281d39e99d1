//! [`import_merged`]: imports several sources merged at mountpoints (see
//! [`mount`](crate::mount)) into a destination [`Backend`], in one go.
//!
//! Transactions of all sources are imported in tid order; each record gets
//! its destination oid and its pickle rewritten by the [`MountLayout`];
//! backpointers keep pointing to the transaction they name (its record
//! of the same, remapped, oid). Unlike [`Importer`](crate::Importer), this
//! does not serve reads while importing and does not resume: it is for a
//! destination that is not in service yet.

use std::collections::HashMap;

use fsformat::{Oid, Payload, Tid, TxnStatus};
use neo_server::storage::{make_checksum, Backend, DbError, ObjectRef, TxnMeta};

use crate::compress::compress_data;
use crate::config::{Compress, ImporterConfig};
use crate::error::ImportError;
use crate::mount::MountLayout;
use crate::source::Source;
use crate::staging::MergePlan;

/// What [`import_merged`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeStats {
    /// The oid layout used.
    pub layout: MountLayout,
    /// Transactions imported.
    pub txns: u64,
    /// Object records imported.
    pub records: u64,
    /// Records whose pickle was rewritten.
    pub rewritten: u64,
}

/// Imports all the sources of `config` into `db` (which needs a partition
/// table) and commits. Two sources with a transaction of the same tid are
/// refused.
pub fn import_merged<B: Backend>(
    config: &ImporterConfig,
    db: &mut B,
) -> Result<MergeStats, ImportError> {
    if db.partition_view()?.np == 0 {
        return Err(ImportError::Db(DbError::NoPartitionTable));
    }
    let MergePlan {
        sources,
        layout,
        order,
    } = MergePlan::new(config)?;
    if let Some(w) = order.windows(2).find(|w| w[0].0 == w[1].0) {
        let (a, b) = (&layout.dbs()[w[0].1], &layout.dbs()[w[1].1]);
        return Err(ImportError::Unsupported {
            what: format!(
                "sections [{}] and [{}] both have transaction {}: cannot merge them",
                a.section, b.section, w[0].0
            ),
        });
    }
    let mut stats = MergeStats {
        layout: layout.clone(),
        txns: 0,
        records: 0,
        rewritten: 0,
    };
    for &(tid, d, i) in &order {
        let src = &sources[layout.dbs()[d].source];
        store_txn(db, &layout, d, src, i, config.compress, &mut stats)?;
        log::debug!("merged transaction {tid} of [{}]", layout.dbs()[d].section);
    }
    db.commit()?;
    log::info!(
        "merged {} sources: {} transactions, {} records ({} rewritten)",
        layout.dbs().len(),
        stats.txns,
        stats.records,
        stats.rewritten
    );
    Ok(stats)
}

fn store_txn<B: Backend>(
    db: &mut B,
    layout: &MountLayout,
    d: usize,
    src: &Source,
    i: usize,
    compress: Compress,
    stats: &mut MergeStats,
) -> Result<(), ImportError> {
    let t = src.txn_at(i).map_err(|e| src.err(e))?;
    let tid = t.tid;
    let mut records = Vec::new();
    for r in t.records() {
        records.push(r.map_err(|e| src.err(e))?);
    }
    // The last record of each oid is the one ZODB sees.
    let mut last: HashMap<Oid, usize> = HashMap::with_capacity(records.len());
    let mut oids = Vec::with_capacity(records.len());
    for (k, r) in records.iter().enumerate() {
        if last.insert(r.oid, k).is_none() {
            oids.push(r.oid);
        }
    }
    let mut objects = Vec::with_capacity(oids.len());
    let mut new_oids = Vec::with_capacity(oids.len());
    for &oid in &oids {
        let r = &records[last[&oid]];
        let new = Oid(layout.new_oid(d, oid.0));
        new_oids.push(new);
        objects.push(match r.payload {
            Payload::Data(data) => {
                let pickle = layout
                    .repickle(d, data)
                    .map_err(|e| ImportError::SourceDamaged {
                        path: src.path().to_owned(),
                        pos: r.pos,
                        reason: format!("pickle of oid {oid}: {e}"),
                    })?;
                if pickle.as_ref() != data {
                    stats.rewritten += 1;
                }
                let (compression, bytes) = compress_data(compress, &pickle);
                let checksum = make_checksum(&bytes);
                ObjectRef {
                    oid: new,
                    data_id: db.store_data(Some(&checksum), new, &bytes, compression, None)?,
                    value_tid: None,
                }
            }
            Payload::Back(0) => ObjectRef {
                oid: new,
                data_id: None,
                value_tid: None,
            },
            Payload::Back(_) => {
                let data_tid = src
                    .data_tid(r)
                    .map_err(|e| src.err(e))?
                    .unwrap_or(Tid::ZERO);
                let id = match db.store_data(None, new, &[], 0, Some(data_tid)) {
                    Ok(id) => id,
                    Err(DbError::UndoPack { .. }) => {
                        return Err(ImportError::MissingData {
                            path: src.path().to_owned(),
                            tid,
                            reason: format!(
                                "the record of oid {oid} at {} points to {data_tid}, \
                                 which has no record of it",
                                r.pos
                            ),
                        })
                    }
                    Err(e) => return Err(e.into()),
                };
                ObjectRef {
                    oid: new,
                    data_id: id,
                    value_tid: Some(data_tid),
                }
            }
        });
    }
    stats.records += objects.len() as u64;
    stats.txns += 1;
    let meta = TxnMeta {
        oids: new_oids,
        user: t.header.user.to_vec(),
        description: t.header.description.to_vec(),
        extension: t.header.extension.to_vec(),
        packed: t.header.status == TxnStatus::Packed.byte(),
        ttid: tid,
    };
    db.store_transaction(tid, &objects, Some(&meta), false)?;
    Ok(())
}
