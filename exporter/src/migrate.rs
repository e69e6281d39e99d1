//! The FileStorage -> cluster half of `neomigrate` ([`import_fs`]): every
//! transaction of a `Data.fs`, in file order, committed through the client
//! with its own tid, user, description and extension (NEO's
//! `copyTransactionsFrom` / `importFrom`), so replicas and several storage
//! nodes get everything as with any commit.
//!
//! | FileStorage record            | stored as (`AskStoreObject`)                        |
//! |-------------------------------|-----------------------------------------------------|
//! | data                          | the data (zlib when smaller, as NEO's client)       |
//! | backpointer to T's record     | `data_serial` T, with the data it resolves to (NEO's undo) |
//! | backpointer 0                 | no data: the creation is undone                     |
//!
//! Several records of one object in a transaction (two `store` calls in one
//! ZODB commit) become the last one: NEO keeps one record per object and
//! transaction (as its Importer does).
//!
//! NEO's own `importFrom` stores undo records with their data (losing the
//! undo information); ours keep it, so the cluster holds what NEO's Importer
//! backend would (`obj.value_tid`) and an export gives the backpointers
//! back. The packed status (`'p'`) cannot travel through the client: such
//! transactions become plain ones (as with NEO).
//!
//! A cluster that is not empty must hold a prefix of the file: its last
//! transaction must be one of the file's, with the same metadata; the
//! import then continues after it (an interrupted migration resumes).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use fsformat::{DataFs, Payload, Tid};
use neo_proto::ZERO_TID;
use neo_server::client::{Client, ClientError, ImportData, ImportRecord, Preindex, TxnMeta};
use tokio::runtime::Runtime;

use crate::export::{Progress, Summary};

/// Why an import stopped.
#[derive(Debug)]
#[non_exhaustive]
pub enum MigrateError {
    /// The FileStorage cannot be read (fsformat's error names the offset).
    Fs(fsformat::Error),
    /// The cluster failed.
    Cluster {
        /// The transaction being imported, if any.
        tid: Option<Tid>,
        /// What we were doing.
        context: &'static str,
        /// The client's error.
        error: Box<ClientError>,
    },
    /// The cluster is not empty and does not hold a prefix of the file.
    NotPrefix {
        /// The FileStorage.
        path: PathBuf,
        /// The cluster's last tid.
        last: Tid,
        /// How they differ.
        reason: String,
    },
}

impl fmt::Display for MigrateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MigrateError::Fs(e) => write!(f, "{e}"),
            MigrateError::Cluster {
                tid: Some(t),
                context,
                error,
            } => write!(f, "{context} (transaction {t}): {error}"),
            MigrateError::Cluster { context, error, .. } => write!(f, "{context}: {error}"),
            MigrateError::NotPrefix { path, last, reason } => write!(
                f,
                "the cluster is not empty and its history is not a prefix of {}: \
                 its last transaction {last} {reason}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for MigrateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MigrateError::Fs(e) => Some(e),
            MigrateError::Cluster { error, .. } => Some(error.as_ref()),
            MigrateError::NotPrefix { .. } => None,
        }
    }
}

impl From<fsformat::Error> for MigrateError {
    fn from(e: fsformat::Error) -> Self {
        MigrateError::Fs(e)
    }
}

fn cluster(tid: Option<Tid>, context: &'static str) -> impl FnOnce(ClientError) -> MigrateError {
    move |e| MigrateError::Cluster {
        tid,
        context,
        error: Box::new(e),
    }
}

/// Where the import starts: after the cluster's last transaction, which
/// must be one of the file's with the same metadata.
fn resume_point(rt: &Runtime, client: &Client, fs: &DataFs) -> Result<(Tid, u64), MigrateError> {
    let last = rt
        .block_on(client.last_transaction())
        .map_err(cluster(None, "asking the last transaction"))?;
    if last == ZERO_TID {
        return Ok((ZERO_TID, 0));
    }
    let not_prefix = |reason: &str| MigrateError::NotPrefix {
        path: fs.path().to_owned(),
        last,
        reason: reason.to_owned(),
    };
    let mut done = 0;
    let mut found = None;
    for t in fs.iter() {
        let t = t?;
        if t.tid > last {
            break;
        }
        done += 1;
        if t.tid == last {
            found = Some(t);
        }
    }
    let t = found.ok_or_else(|| not_prefix("is not in the file"))?;
    let info = rt.block_on(client.transaction_info(last)).map_err(cluster(
        Some(last),
        "reading the cluster's last transaction",
    ))?;
    if (
        info.user.as_slice(),
        info.description.as_slice(),
        info.extension.as_slice(),
    ) != (t.user, t.description, t.extension)
    {
        return Err(not_prefix("has other metadata in the file"));
    }
    Ok((last, done))
}

/// Keeps, of several records of one object in a transaction, the last
/// one (what ZODB's index, `load` and `history` see), where it stands:
/// NEO keeps one record per object and transaction, as its Importer does.
fn keep_last_per_oid(records: &mut Vec<ImportRecord<'_>>) {
    let mut seen = std::collections::HashSet::with_capacity(records.len());
    let mut keep: Vec<bool> = records.iter().rev().map(|r| seen.insert(r.oid)).collect();
    if keep.iter().all(|&k| k) {
        return;
    }
    keep.reverse();
    let mut k = keep.into_iter();
    records.retain(|_| k.next().unwrap_or(true));
}

/// Imports the FileStorage at `path` into the cluster `client` is
/// connected to (see the module docs). The [`Summary`] counts imported
/// transactions and records (`backpointers`: undo records, `deletions`:
/// records without data, `file_bytes`: bytes of the file imported;
/// `existing`: transactions skipped because the cluster had them).
pub fn import_fs(
    rt: &Runtime,
    client: &Client,
    path: &Path,
    progress: &mut dyn Progress,
) -> Result<Summary, MigrateError> {
    let start = Instant::now();
    let fs = DataFs::open(path)?;
    let (after, existing) = resume_point(rt, client, &fs)?;
    if after != ZERO_TID {
        log::info!(
            "the cluster already has the first {existing} transactions of {} (up to {after}): \
             continuing after them",
            path.display()
        );
    }
    let mut summary = Summary {
        existing,
        ..Summary::default()
    };
    let total = fs.iter().count() as u64;
    progress.begin(total.saturating_sub(existing), existing);
    let mut pre = Preindex::new(after);
    let mut records = Vec::new();
    for t in fs.iter() {
        let t = t?;
        if t.tid <= after {
            continue;
        }
        records.clear();
        for r in t.records() {
            let r = r?;
            let data = match r.payload {
                Payload::Data(d) => ImportData::Data(d),
                Payload::Back(0) => ImportData::Delete,
                Payload::Back(b) => ImportData::Undo {
                    data_tid: fs.back_tid(r.oid, b)?,
                    data: fs.record_data(&r)?,
                },
            };
            records.push(ImportRecord { oid: r.oid, data });
        }
        keep_last_per_oid(&mut records);
        for r in &records {
            match r.data {
                ImportData::Data(d) => summary.data_bytes += d.len() as u64,
                ImportData::Delete => summary.deletions += 1,
                ImportData::Undo { .. } => summary.backpointers += 1,
            }
        }
        let meta = TxnMeta {
            user: t.user.to_vec(),
            description: t.description.to_vec(),
            extension: t.extension.to_vec(),
        };
        rt.block_on(client.import_transaction(&mut pre, t.tid, meta, &records))
            .map_err(cluster(Some(t.tid), "importing"))?;
        let size = t.next_pos() - t.pos;
        summary.transactions += 1;
        summary.records += records.len() as u64;
        summary.file_bytes += size;
        summary.last_tid = Some(t.tid);
        progress.advance(1, size, t.tid);
    }
    summary.complete = true;
    summary.file_size = fs.len();
    summary.elapsed = start.elapsed();
    progress.end(&summary);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fsformat::Oid;

    #[test]
    fn the_last_record_of_an_object_is_kept_in_place() {
        let rec = |oid: u64, d: &'static [u8]| ImportRecord {
            oid: Oid(oid),
            data: ImportData::Data(d),
        };
        let mut v = vec![rec(1, b"a"), rec(2, b"b"), rec(1, b"c"), rec(3, b"d")];
        keep_last_per_oid(&mut v);
        assert_eq!(v, vec![rec(2, b"b"), rec(1, b"c"), rec(3, b"d")]);
        let mut v = vec![rec(1, b"a"), rec(2, b"b")];
        keep_last_per_oid(&mut v);
        assert_eq!(v, vec![rec(1, b"a"), rec(2, b"b")]);
    }
}
