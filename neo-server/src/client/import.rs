//! Copying whole histories through the client: the import half of
//! `neomigrate` (NEO's `Application.importFrom`, behind
//! `Storage.copyTransactionsFrom`) and raw record reads for the exporter.
//!
//! An imported transaction keeps its tid: `AskBeginTransaction` carries it
//! (the master accepts it only when no other transaction is pending and it
//! is above the last committed tid), and the stores go through the normal
//! two-phase commit, so every writable cell (replicas, several storage
//! nodes) gets them. The base serial of each store is the object's last
//! imported tid (NEO's `preindex`), else its current serial in the cluster.
//!
//! Unlike NEO's `importFrom`, which stores every record with its data (so
//! undo information is lost), an undo record is stored as NEO's own
//! `undo()` stores it: with `data_serial`, the revision whose data it
//! reuses (`obj.value_tid`), and that data as the fallback NEO's protocol
//! asks for. A record without data (an undone creation) is stored without
//! data, as NEO's client does. The packed status of FileStorage
//! transactions cannot be set through the protocol (NEO loses it too).

use std::collections::HashMap;

use neo_proto::{AskObject, Body, ErrorCode, Oid, Tid, ZERO_HASH, ZERO_TID};

use super::{checksum, remote, Client, ClientError, Result, Transaction, TxnMeta};

/// What an imported record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportData<'a> {
    /// New data for the object.
    Data(&'a [u8]),
    /// An undo record: revision `data_tid` of the same object has the
    /// data; `data` is that data (`None` when that revision has none),
    /// sent along as NEO's undo does.
    Undo {
        /// The revision whose data is reused.
        data_tid: Tid,
        /// Its data.
        data: Option<&'a [u8]>,
    },
    /// No data: the object's creation is undone.
    Delete,
}

/// One record of an imported transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportRecord<'a> {
    /// The object.
    pub oid: Oid,
    /// What is stored.
    pub data: ImportData<'a>,
}

/// The last tid of every object imported so far (NEO's `preindex`): the
/// base serial of the next store of the same object.
#[derive(Debug, Default, Clone)]
pub struct Preindex {
    serials: HashMap<Oid, Tid>,
    /// The cluster was empty when the import started: objects not seen
    /// yet are new (no load needed).
    fresh: bool,
}

impl Preindex {
    /// An index for an import into a cluster whose last tid is
    /// `last_tid` ([`ZERO_TID`]: empty, no object needs a load).
    pub fn new(last_tid: Tid) -> Preindex {
        Preindex {
            serials: HashMap::new(),
            fresh: last_tid == ZERO_TID,
        }
    }

    /// The last imported tid of `oid`, if any.
    pub fn get(&self, oid: Oid) -> Option<Tid> {
        self.serials.get(&oid).copied()
    }

    /// Number of objects seen.
    pub fn len(&self) -> usize {
        self.serials.len()
    }

    /// Whether no object was seen yet.
    pub fn is_empty(&self) -> bool {
        self.serials.is_empty()
    }
}

/// A revision as a storage node keeps it, data still compressed (what
/// `AskObject` answers, the checksum verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    /// The revision.
    pub serial: Tid,
    /// The next revision, if any.
    pub next_serial: Option<Tid>,
    /// `(compression, stored bytes)`; `None` for a record without data.
    pub data: Option<(u8, Vec<u8>)>,
    /// The revision whose data this record reuses (undo); it is also set
    /// for a record without data that undoes to a deletion.
    pub data_serial: Option<Tid>,
}

impl Client {
    /// Starts a transaction that commits as `tid` (NEO's `tpc_begin` with
    /// a tid, used by `importFrom`). The master refuses it with a protocol
    /// error while another transaction is pending or if `tid` is not above
    /// the last committed one.
    pub async fn tpc_begin_at(&self, meta: TxnMeta, tid: Tid) -> Result<Transaction> {
        let txn = self.begin_with(meta, Some(tid)).await?;
        if txn.ttid() != tid {
            let got = txn.ttid();
            self.tpc_abort(txn).await;
            return Err(ClientError::Unexpected {
                peer: self.inner.master().peer().to_owned(),
                asked: "AskBeginTransaction with a tid",
                got: if got < tid {
                    "a smaller tid"
                } else {
                    "a greater tid"
                },
            });
        }
        Ok(txn)
    }

    /// The base serial for a store of `oid`: its last imported tid, else
    /// its current serial in the cluster, else [`ZERO_TID`].
    async fn base_serial(&self, pre: &Preindex, oid: Oid) -> Result<Tid> {
        if let Some(t) = pre.get(oid) {
            return Ok(t);
        }
        if pre.fresh {
            return Ok(ZERO_TID);
        }
        match self.load(oid).await {
            Ok(r) => Ok(r.serial),
            Err(ClientError::CreationUndone { serial, .. }) => Ok(serial),
            Err(ClientError::OidDoesNotExist(_) | ClientError::NotFound { .. }) => Ok(ZERO_TID),
            Err(e) => Err(e),
        }
    }

    /// Commits one transaction of another storage's history with its own
    /// tid, metadata and records (see the module docs); `pre` is updated.
    /// On failure the transaction is aborted.
    pub async fn import_transaction(
        &self,
        pre: &mut Preindex,
        tid: Tid,
        meta: TxnMeta,
        records: &[ImportRecord<'_>],
    ) -> Result<()> {
        let mut txn = self.tpc_begin_at(meta, tid).await?;
        for r in records {
            let stored = match self.base_serial(pre, r.oid).await {
                Ok(serial) => {
                    let (data, data_serial) = match r.data {
                        ImportData::Data(d) => (Some(d), None),
                        ImportData::Undo { data_tid, data } => (data, Some(data_tid)),
                        ImportData::Delete => (None, None),
                    };
                    self.store_raw(&mut txn, r.oid, serial, data, data_serial)
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = stored {
                self.tpc_abort(txn).await;
                return Err(e);
            }
        }
        let got = self.tpc_finish(txn).await?;
        if got != tid {
            return Err(ClientError::Unexpected {
                peer: self.inner.master().peer().to_owned(),
                asked: "AskFinishTransaction of an imported transaction",
                got: "another tid",
            });
        }
        for r in records {
            pre.serials.insert(r.oid, tid);
        }
        Ok(())
    }

    /// Revision `serial` of `oid` as stored: compressed data (checksum
    /// verified) or none, and its `data_serial`, also for records without
    /// data (which [`Client::load_serial`] reports as
    /// [`ClientError::CreationUndone`] without it).
    pub async fn load_record(&self, oid: Oid, serial: Tid) -> Result<RawRecord> {
        let partition = self.partition_of(oid.0)?;
        let body = AskObject {
            oid,
            at: Some(serial),
            before: None,
        }
        .into();
        let (answer, peer) = self.ask_read(partition, body).await?;
        match answer {
            Body::AnswerObject(a) => {
                let data = if a.data.is_empty() && a.checksum == ZERO_HASH {
                    None
                } else if checksum(&a.data) != a.checksum {
                    return Err(ClientError::WrongChecksum {
                        oid,
                        serial: a.serial,
                        peer,
                    });
                } else {
                    Some((a.compression, a.data.to_vec()))
                };
                Ok(RawRecord {
                    serial: a.serial,
                    next_serial: a.next_serial,
                    data,
                    data_serial: a.data_serial,
                })
            }
            Body::Error(e) if e.code == ErrorCode::OidDoesNotExist => {
                Err(ClientError::OidDoesNotExist(oid))
            }
            Body::Error(e) if e.code == ErrorCode::OidNotFound => Err(ClientError::NotFound {
                oid,
                tid: Some(serial),
            }),
            other => Err(remote(&peer, "AskObject", other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::super::{compress, decompress};

    /// The client's compressor, reused across calls, gives zlib streams
    /// that a fresh decoder reads back, as small as a fresh encoder's
    /// (within a few bytes: zlib backends may differ in block choices
    /// once a stream is reused), and keeps data that does not shrink raw.
    #[test]
    fn reused_compressor_round_trips_like_a_fresh_one() {
        let fresh = |d: &[u8]| {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(d).unwrap();
            e.finish().unwrap()
        };
        let inflate = |z: &[u8]| {
            let mut out = Vec::new();
            flate2::read::ZlibDecoder::new(z)
                .read_to_end(&mut out)
                .unwrap();
            out
        };
        let check = |d: &[u8]| {
            let (c, z) = compress(d);
            assert_eq!(c, 1);
            assert_eq!(inflate(&z), d);
            assert_eq!(decompress(1, &z).unwrap(), d);
            let f = fresh(d).len();
            assert!(z.len() <= f + f / 100 + 8, "{} vs fresh {f}", z.len());
        };
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let noise: Vec<u8> = (0..5000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let text = b"persistent mapping ".repeat(300);
        for _ in 0..3 {
            check(&text);
            assert_eq!(compress(&noise), (0, noise.clone()));
            assert_eq!(compress(b""), (0, Vec::new()));
            let big = [&text[..], &noise[..]].concat().repeat(40);
            check(&big);
        }
    }
}
