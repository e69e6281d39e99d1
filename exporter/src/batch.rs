//! [`Batch`]: transactions read together, their record data in two
//! buffers instead of one vector per record.
//!
//! A source appends the data of its records as stored (compressed or not)
//! to one buffer (`stored`); [`Batch::inflate`] then decompresses the zlib
//! records into a second buffer (`inflated`) and leaves raw records where
//! they are. The export recycles batches, so after the first few the
//! buffers are not allocated, grown or zeroed again:
//!
//! | part | holds |
//! |---|---|
//! | `txns` | tid, packed, user, description, extension; its records as a range of `records` |
//! | `records` | oid, `value_tid`, where its data is: nowhere (deletion), `stored[at..at+len]` (with its compression), or `inflated[at..at+len]` |
//! | `stored` | record data as the source stores it, appended in any order; records may share a range (NEO's deduplicated data) |
//! | `inflated` | decompressed zlib data; grows to its high-water mark and stays there (`inflated_len` bytes used) |

use std::ops::Range;

use fsformat::{Oid, Tid};

use crate::error::ExportError;
use crate::export::Inflater;
use crate::source::{SourceRecord, SourceTxn};

/// Where a record's data is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Data {
    /// No data (an undone creation).
    None,
    /// `stored[at..at + len]`, with NEO's compression.
    Stored {
        compression: u8,
        at: usize,
        len: usize,
    },
    /// `inflated[at..at + len]`, decompressed.
    Inflated { at: usize, len: usize },
}

/// Data appended to a batch with [`Batch::push_stored`], to be given to
/// its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredData {
    compression: u8,
    at: usize,
    len: usize,
}

/// One record of a [`Batch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchRecord {
    /// The object.
    pub oid: Oid,
    /// NEO's `value_tid` (undo), as in [`SourceRecord::value_tid`].
    pub value_tid: Option<Tid>,
    data: Data,
}

/// One transaction of a [`Batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchTxn {
    /// Its tid.
    pub tid: Tid,
    /// NEO's `packed` flag.
    pub packed: bool,
    /// `user`.
    pub user: Vec<u8>,
    /// `description`.
    pub description: Vec<u8>,
    /// `ext`.
    pub extension: Vec<u8>,
    records: Range<usize>,
}

/// Transactions in tid order with their records (see the module docs).
#[derive(Debug, Default)]
pub struct Batch {
    txns: Vec<BatchTxn>,
    records: Vec<BatchRecord>,
    stored: Vec<u8>,
    inflated: Vec<u8>,
    inflated_len: usize,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.txns.clear();
        self.records.clear();
        self.stored.clear();
        self.inflated_len = 0;
    }

    /// Number of transactions.
    pub fn len(&self) -> usize {
        self.txns.len()
    }

    /// True without transactions.
    pub fn is_empty(&self) -> bool {
        self.txns.is_empty()
    }

    /// The transactions.
    pub fn txns(&self) -> &[BatchTxn] {
        &self.txns
    }

    /// The records of `txn` (a transaction of this batch), in order.
    pub fn records(&self, txn: &BatchTxn) -> &[BatchRecord] {
        self.records.get(txn.records.clone()).unwrap_or(&[])
    }

    /// Appends a transaction without records; [`push_record`](Self::push_record)
    /// adds to the last one.
    pub fn begin_txn(
        &mut self,
        tid: Tid,
        packed: bool,
        user: &[u8],
        description: &[u8],
        extension: &[u8],
    ) {
        let at = self.records.len();
        self.txns.push(BatchTxn {
            tid,
            packed,
            user: user.to_vec(),
            description: description.to_vec(),
            extension: extension.to_vec(),
            records: at..at,
        });
    }

    /// Appends data as stored (`compression` 0: raw, 1: zlib); records
    /// get it with [`push_record`](Self::push_record), several may share it.
    pub fn push_stored(&mut self, compression: u8, bytes: &[u8]) -> StoredData {
        let at = self.stored.len();
        self.stored.extend_from_slice(bytes);
        StoredData {
            compression,
            at,
            len: bytes.len(),
        }
    }

    /// Appends a record to the last transaction (from
    /// [`begin_txn`](Self::begin_txn)); `data` from
    /// [`push_stored`](Self::push_stored) of this batch, `None` for a
    /// deletion. Ignored without a transaction.
    pub fn push_record(&mut self, oid: Oid, value_tid: Option<Tid>, data: Option<StoredData>) {
        let Some(t) = self.txns.last_mut() else {
            return;
        };
        let data = match data {
            Some(StoredData {
                compression,
                at,
                len,
            }) => Data::Stored {
                compression,
                at,
                len,
            },
            None => Data::None,
        };
        self.records.push(BatchRecord {
            oid,
            value_tid,
            data,
        });
        t.records.end = self.records.len();
    }

    /// Appends a transaction read the generic way.
    pub fn push_txn(&mut self, txn: &SourceTxn) {
        self.begin_txn(
            txn.tid,
            txn.packed,
            &txn.user,
            &txn.description,
            &txn.extension,
        );
        for r in &txn.records {
            let data = r.data.as_ref().map(|(c, d)| self.push_stored(*c, d));
            self.push_record(r.oid, r.value_tid, data);
        }
    }

    /// The data of `r` (a record of this batch) and its compression: as
    /// stored, or `(0, decompressed)` after [`inflate`](Self::inflate);
    /// `None` for a deletion.
    pub fn data(&self, r: &BatchRecord) -> Option<(u8, &[u8])> {
        match r.data {
            Data::None => None,
            Data::Stored {
                compression,
                at,
                len,
            } => Some((compression, self.stored.get(at..at + len).unwrap_or(&[]))),
            Data::Inflated { at, len } => Some((0, self.inflated.get(at..at + len).unwrap_or(&[]))),
        }
    }

    /// Decompresses every zlib record (a stored range shared by records
    /// in a row once) and checks every record's data: known
    /// compression, not empty (a FileStorage cannot store an empty
    /// pickle). Afterwards [`data`](Self::data) gives compression 0.
    pub fn inflate(&mut self, z: &mut Inflater) -> Result<(), ExportError> {
        // The last range inflated, for records sharing data (NEO's
        // deduplication; undo records of one transaction).
        let mut last: Option<((usize, usize), Data)> = None;
        for t in &self.txns {
            for r in &mut self.records[t.records.clone()] {
                let (oid, tid) = (r.oid, t.tid);
                let bad = |reason: String| ExportError::BadData { oid, tid, reason };
                let Data::Stored {
                    compression,
                    at,
                    len,
                } = r.data
                else {
                    continue;
                };
                match compression {
                    0 if len > 0 => {}
                    0 => return Err(bad(EMPTY.into())),
                    1 => {
                        if let Some((key, done)) = last {
                            if key == (at, len) {
                                r.data = done;
                                continue;
                            }
                        }
                        let src = self.stored.get(at..at + len).unwrap_or(&[]);
                        let n = z
                            .inflate_at(src, &mut self.inflated, self.inflated_len)
                            .map_err(|e| bad(format!("zlib data cannot be decompressed: {e}")))?;
                        if n == 0 {
                            return Err(bad(EMPTY.into()));
                        }
                        r.data = Data::Inflated {
                            at: self.inflated_len,
                            len: n,
                        };
                        self.inflated_len += n;
                        last = Some(((at, len), r.data));
                    }
                    c => return Err(bad(format!("unknown compression {c}"))),
                }
            }
        }
        Ok(())
    }

    /// The transactions as [`SourceTxn`]s (data as [`data`](Self::data)
    /// gives it).
    pub fn to_source_txns(&self) -> Vec<SourceTxn> {
        self.txns
            .iter()
            .map(|t| SourceTxn {
                tid: t.tid,
                user: t.user.clone(),
                description: t.description.clone(),
                extension: t.extension.clone(),
                packed: t.packed,
                records: self
                    .records(t)
                    .iter()
                    .map(|r| SourceRecord {
                        oid: r.oid,
                        data: self.data(r).map(|(c, d)| (c, d.to_vec())),
                        value_tid: r.value_tid,
                    })
                    .collect(),
            })
            .collect()
    }
}

const EMPTY: &str = "empty data (FileStorage cannot store an empty pickle)";

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(data).unwrap();
        z.finish().unwrap()
    }

    #[test]
    fn inflate_keeps_order_shares_and_reuses_buffers() {
        let big: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 7).to_le_bytes())
            .collect();
        let mut b = Batch::new();
        let mut z = Inflater::new();
        for round in 0..3 {
            b.clear();
            b.begin_txn(Tid(5), false, b"u", b"d", b"e");
            let s = b.push_stored(1, &zlib(&big));
            b.push_record(Oid(1), None, Some(s));
            b.push_record(Oid(2), Some(Tid(3)), Some(s));
            b.push_record(Oid(3), Some(Tid(4)), None);
            b.begin_txn(Tid(6), true, b"", b"", b"");
            let r = b.push_stored(0, b"raw");
            b.push_record(Oid(1), None, Some(r));
            let s = b.push_stored(1, &zlib(b"small"));
            b.push_record(Oid(4), None, Some(s));
            b.inflate(&mut z).unwrap();
            let t = b.to_source_txns();
            assert_eq!(t.len(), 2);
            let data: Vec<_> = t
                .iter()
                .flat_map(|t| &t.records)
                .map(|r| r.data.clone())
                .collect();
            assert_eq!(
                data,
                [
                    Some((0, big.clone())),
                    Some((0, big.clone())),
                    None,
                    Some((0, b"raw".to_vec())),
                    Some((0, b"small".to_vec())),
                ],
                "round {round}"
            );
            assert_eq!(t[0].records[1].value_tid, Some(Tid(3)));
            assert!(t[1].packed && !t[0].packed);
            // Shared data inflated once.
            assert_eq!(b.inflated_len, big.len() + 5);
        }
    }

    #[test]
    fn inflate_reports_the_bad_record() {
        for (c, d, want) in [
            (1, b"not zlib".to_vec(), "cannot be decompressed"),
            (1, zlib(b""), "empty data"),
            (0, Vec::new(), "empty data"),
            (2, b"x".to_vec(), "unknown compression 2"),
        ] {
            let mut b = Batch::new();
            b.begin_txn(Tid(9), false, b"", b"", b"");
            let ok = b.push_stored(0, b"fine");
            b.push_record(Oid(1), None, Some(ok));
            let s = b.push_stored(c, &d);
            b.push_record(Oid(7), None, Some(s));
            let e = b.inflate(&mut Inflater::new()).unwrap_err();
            assert!(
                matches!(
                    e,
                    ExportError::BadData {
                        oid: Oid(7),
                        tid: Tid(9),
                        ..
                    }
                ),
                "{e}"
            );
            assert!(e.to_string().contains(want), "{e}");
        }
    }
}
