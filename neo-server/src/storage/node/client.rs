//! Requests of clients (NEO's `storage/handlers/client.py`): loads,
//! stores and the storage side of two-phase commit, iteration, history
//! and undo lookups.

use neo_proto::{
    AnswerCheckCurrentSerial, AnswerFinalTID, AnswerOIDsFrom, AnswerObject, AnswerObjectHistory,
    AnswerObjectUndoSerial, AnswerRelockObject, AnswerStoreObject, AnswerStoreTransaction,
    AnswerTIDs, AnswerTIDsFrom, AnswerTransactionInformation, AnswerVoteTransaction, AskObject,
    Body, Bytes, Checksum as WireChecksum, ErrorCode, Map, NodeId, NotifyDeadlock, Packet, Pong,
    INVALID_PARTITION, ZERO_HASH, ZERO_TID,
};

use super::txn::{LockError, StoreData};
use super::{Fail, Outcome, Retry, StorageNode};
use crate::runtime::{ConnId, Outbox};
use crate::storage::{make_checksum, Backend, DbError, ObjectLookup, TxnMeta};

/// The answer to `AskObject` `a` (`askObject`) from the database's
/// `lookup`: the record, or `OID_NOT_FOUND` / `OID_DOES_NOT_EXIST`.
pub(super) fn object_answer(a: &AskObject, lookup: ObjectLookup) -> Body {
    match lookup {
        ObjectLookup::Found(r) => {
            let (checksum, data) = match (r.checksum, r.data) {
                (Some(h), Some(d)) => (WireChecksum(h), Bytes::from(d)),
                _ => (ZERO_HASH, Bytes::new()),
            };
            AnswerObject {
                oid: a.oid,
                serial: r.serial,
                next_serial: r.next_serial,
                compression: r.compression.unwrap_or(0),
                checksum,
                data,
                data_serial: r.data_serial,
            }
            .into()
        }
        ObjectLookup::NotFoundAt => {
            neo_proto::Error::new(ErrorCode::OidNotFound, &a.oid.to_string()).into()
        }
        ObjectLookup::DoesNotExist => {
            neo_proto::Error::new(ErrorCode::OidDoesNotExist, &a.oid.to_string()).into()
        }
    }
}

impl<B: Backend> StorageNode<B> {
    /// The tids of `AskTIDs` (`askTIDs`: a page of the readable
    /// partitions' tids, newest first, or of one partition).
    pub(super) fn ask_tids(&mut self, a: &neo_proto::AskTIDs) -> Result<Vec<neo_proto::Tid>, Fail> {
        if a.first >= a.last {
            return Err(Fail::Protocol("invalid offsets".into()));
        }
        let parts: Vec<u32> = if a.partition == INVALID_PARTITION {
            self.db.partition_view()?.readable.into_iter().collect()
        } else {
            vec![a.partition]
        };
        Ok(self.db.tid_list(a.first, a.last - a.first, &parts)?)
    }

    /// A packet on an identified client connection.
    pub(super) fn client_packet(
        &mut self,
        conn: ConnId,
        client: NodeId,
        packet: Packet,
        out: &mut Outbox,
    ) -> Result<(), Fail> {
        let id = packet.id;
        match packet.body {
            body @ (Body::AskObject(_)
            | Body::AskObjectHistory(_)
            | Body::AskTIDsFrom(_)
            | Body::AskOIDsFrom(_)) => {
                self.submit(Retry::Read { conn, id, body }, out);
            }
            Body::AskStoreObject(s) => {
                if s.compression > 1 {
                    return Err(Fail::Protocol("invalid compression value".into()));
                }
                self.tm.register(client, s.ttid);
                let data = if !s.data.is_empty() || s.checksum != ZERO_HASH {
                    if make_checksum(&s.data) != s.checksum.0 {
                        return Err(Fail::Protocol("invalid checksum".into()));
                    }
                    StoreData {
                        compression: s.compression,
                        checksum: Some(s.checksum.0),
                        data: s.data.to_vec(),
                    }
                } else {
                    StoreData {
                        compression: s.compression,
                        checksum: None,
                        data: Vec::new(),
                    }
                };
                let retry = Retry::Store {
                    conn,
                    id,
                    ttid: s.ttid,
                    oid: s.oid,
                    serial: s.serial,
                    data,
                    data_serial: s.data_serial,
                };
                self.submit(retry, out);
            }
            Body::AskCheckCurrentSerial(c) => {
                self.tm.register(client, c.ttid);
                let retry = Retry::Check {
                    conn,
                    id,
                    ttid: c.ttid,
                    oid: c.oid,
                    serial: c.serial,
                };
                self.submit(retry, out);
            }
            Body::AskRelockObject(r) => {
                let retry = Retry::Relock {
                    conn,
                    id,
                    ttid: r.ttid,
                    oid: r.oid,
                    first: true,
                };
                self.submit(retry, out);
            }
            Body::AskStoreTransaction(s) => {
                self.tm.register(client, s.ttid);
                let meta = TxnMeta {
                    oids: s.oid_list,
                    user: s.user.to_vec(),
                    description: s.description.to_vec(),
                    extension: s.extension.to_vec(),
                    packed: false,
                    ttid: s.ttid,
                };
                self.tm.vote(&mut self.db, s.ttid, Some((meta, s.pack)))?;
                out.answer(conn, id, AnswerStoreTransaction {});
            }
            Body::AskVoteTransaction(v) => {
                self.tm.vote(&mut self.db, v.ttid, None)?;
                out.answer(conn, id, AnswerVoteTransaction {});
            }
            Body::AbortTransaction(a) => self.abort_transaction(a.ttid, out),
            Body::NotifyTransactionFinished(n) => self.abort_transaction(n.ttid, out),
            Body::AskTIDs(a) => {
                let tid_list = self.ask_tids(&a)?;
                out.answer(conn, id, AnswerTIDs { tid_list });
            }
            Body::AskTransactionInformation(a) => match self.db.get_transaction(a.tid, false)? {
                None => out.error(
                    conn,
                    id,
                    ErrorCode::TidNotFound,
                    &format!("{} does not exist", a.tid),
                ),
                Some(t) => out.answer(
                    conn,
                    id,
                    AnswerTransactionInformation {
                        tid: a.tid,
                        user: Bytes::from(t.meta.user),
                        description: Bytes::from(t.meta.description),
                        extension: Bytes::from(t.meta.extension),
                        packed: t.meta.packed,
                        oid_list: t.meta.oids,
                    },
                ),
            },
            Body::AskFinalTID(a) => {
                let tid = self.tm.final_tid(&mut self.db, a.ttid)?;
                out.answer(conn, id, AnswerFinalTID { tid });
            }
            Body::AskObjectUndoSerial(a) => {
                let mut dict = Map::new();
                for &oid in &a.oid_list {
                    let current = self
                        .tm
                        .object_from_transaction(a.ttid, oid)
                        .map(|(_, value_serial)| value_serial.unwrap_or(a.ttid));
                    let Some(r) =
                        self.db
                            .find_undo_tid(oid, Some(a.ltid), a.undone_tid, current)?
                    else {
                        continue;
                    };
                    let Some(current_tid) = r.current_tid else {
                        out.error(conn, id, ErrorCode::OidNotFound, &oid.to_string());
                        return Ok(());
                    };
                    dict.0.push((oid, (current_tid, r.data_tid, r.is_current)));
                }
                out.answer(
                    conn,
                    id,
                    AnswerObjectUndoSerial {
                        object_tid_dict: dict,
                    },
                );
            }
            Body::Ping(_) => out.answer(conn, id, Pong {}),
            Body::Pong(_) | Body::CloseClient(_) => {}
            body => {
                return Err(Fail::Protocol(format!(
                    "unexpected packet {} from a client",
                    body.name()
                )))
            }
        }
        Ok(())
    }

    /// Runs a request that may have to wait for a lock: answers it, or
    /// says under which key to queue it.
    pub(super) fn run(&mut self, retry: &Retry, out: &mut Outbox) -> Result<Outcome, Fail> {
        match retry {
            Retry::Store {
                conn,
                id,
                ttid,
                oid,
                serial,
                data,
                data_serial,
            } => {
                let r =
                    self.tm
                        .store_object(&mut self.db, *ttid, *serial, *oid, data, *data_serial);
                let conflict = match self.lock_result(r, "store", out)? {
                    Err(key) => return Ok(Outcome::Delay(Some(key))),
                    Ok(c) => c,
                };
                match conflict {
                    Answer::Value(conflict) => {
                        out.answer(*conn, *id, AnswerStoreObject { conflict })
                    }
                    Answer::UndoPack => out.error(
                        *conn,
                        *id,
                        ErrorCode::UndoPackError,
                        &format!("Could not undo for oid {oid}"),
                    ),
                }
            }
            Retry::Check {
                conn,
                id,
                ttid,
                oid,
                serial,
            } => {
                let r = self
                    .tm
                    .check_current_serial(&mut self.db, *ttid, *oid, *serial);
                let conflict = match self.lock_result(r, "check", out)? {
                    Err(key) => return Ok(Outcome::Delay(Some(key))),
                    Ok(Answer::Value(c)) => c,
                    Ok(Answer::UndoPack) => Some(ZERO_TID),
                };
                out.answer(*conn, *id, AnswerCheckCurrentSerial { conflict });
            }
            Retry::Relock {
                conn,
                id,
                ttid,
                oid,
                first,
            } => {
                if *first {
                    self.tm.relock_release(*ttid, *oid);
                    // The transaction that waited for this lock goes on.
                    self.execute_queued(out);
                }
                match self.tm.relock(&mut self.db, *ttid, *oid) {
                    Ok(conflict) => {
                        let conflict = conflict.map(|(serial, tid, data)| {
                            let data = data.map(|(c, h, v)| (c, WireChecksum(h), Bytes::from(v)));
                            (serial, tid, data)
                        });
                        out.answer(*conn, *id, AnswerRelockObject { conflict });
                    }
                    Err(LockError::Delay { key, deadlock }) => {
                        self.notify_deadlock(deadlock, out);
                        return Ok(Outcome::Delay(Some(key)));
                    }
                    Err(LockError::Conflict(_)) | Err(LockError::NotRegistered) => {
                        out.answer(*conn, *id, AnswerRelockObject { conflict: None });
                    }
                    Err(LockError::Db(e)) => return Err(Fail::Db(e)),
                }
            }
            Retry::Read { conn, id, body } => {
                return match body {
                    Body::AskFetchTransactions(_)
                    | Body::AskFetchObjects(_)
                    | Body::AskCheckTIDRange(_)
                    | Body::AskCheckSerialRange(_) => self.serve(*conn, *id, body, out),
                    _ => self.read(*conn, *id, body, out),
                }
            }
        }
        Ok(Outcome::Done)
    }

    /// Maps the result of a store or check to its answer (NEO's
    /// `_askStoreObject` / `_askCheckCurrentSerial`); `Err(key)`: delay.
    fn lock_result(
        &mut self,
        r: Result<(), LockError>,
        what: &str,
        out: &mut Outbox,
    ) -> Result<Result<Answer, neo_proto::Tid>, Fail> {
        Ok(Ok(match r {
            Ok(()) => Answer::Value(None),
            Err(LockError::Conflict(tid)) => Answer::Value(Some(tid)),
            Err(LockError::NotRegistered) => {
                log::info!("forget {what} of an aborted transaction");
                Answer::Value(Some(ZERO_TID))
            }
            Err(LockError::Db(DbError::NonReadableCell { partition })) => {
                log::info!("ignore {what} in unassigned partition {partition}");
                Answer::Value(Some(ZERO_TID))
            }
            Err(LockError::Db(DbError::UndoPack { .. })) => Answer::UndoPack,
            Err(LockError::Db(e)) => return Err(Fail::Db(e)),
            Err(LockError::Delay { key, deadlock }) => {
                self.notify_deadlock(deadlock, out);
                return Ok(Err(key));
            }
        }))
    }

    /// Asks the client of a younger transaction to relock an oid.
    fn notify_deadlock(
        &mut self,
        deadlock: Option<(NodeId, neo_proto::Tid, neo_proto::Oid)>,
        out: &mut Outbox,
    ) {
        let Some((client, ttid, oid)) = deadlock else {
            return;
        };
        match self.clients.get(&client) {
            Some(&c) => out.notify(c, NotifyDeadlock { ttid, oid }),
            None => log::warn!("cannot notify deadlock to {client}: not connected"),
        }
    }

    /// Reads that wait while a transaction is between lock and unlock.
    fn read(
        &mut self,
        conn: ConnId,
        id: u32,
        body: &Body,
        out: &mut Outbox,
    ) -> Result<Outcome, Fail> {
        match body {
            Body::AskObject(a) => {
                if self.tm.load_locked(a.oid) {
                    return Ok(Outcome::Delay(None));
                }
                let lookup = self.db.get_object(a.oid, a.at, a.before)?;
                out.answer(conn, id, object_answer(a, lookup));
            }
            Body::AskObjectHistory(a) => {
                if a.first >= a.last {
                    return Err(Fail::Protocol("invalid offsets".into()));
                }
                if self.tm.load_locked(a.oid) {
                    return Ok(Outcome::Delay(None));
                }
                match self.db.object_history(a.oid, a.first, a.last - a.first)? {
                    None => out.error(conn, id, ErrorCode::OidNotFound, &a.oid.to_string()),
                    Some(history_list) => out.answer(
                        conn,
                        id,
                        AnswerObjectHistory {
                            oid: a.oid,
                            history_list,
                        },
                    ),
                }
            }
            Body::AskTIDsFrom(a) => {
                if self.tm.is_locked_tid(a.max_tid) {
                    return Ok(Outcome::Delay(None));
                }
                let tid_list = self.db.replication_tid_list(
                    a.min_tid,
                    a.max_tid,
                    Some(a.length.into()),
                    a.partition,
                )?;
                out.answer(conn, id, AnswerTIDsFrom { tid_list });
            }
            Body::AskOIDsFrom(a) => {
                if self.tm.is_locked_tid(a.tid) {
                    return Ok(Outcome::Delay(None));
                }
                let (next_oid, oid_list) =
                    self.db
                        .oids_from(a.partition, a.length.into(), a.min_oid, a.tid)?;
                out.answer(conn, id, AnswerOIDsFrom { next_oid, oid_list });
            }
            body => {
                return Err(Fail::Protocol(format!(
                    "unexpected queued packet {}",
                    body.name()
                )))
            }
        }
        Ok(Outcome::Done)
    }
}

/// The answer of a store or check that did not wait.
enum Answer {
    /// `None` (stored/locked), a conflicting serial, or `ZERO_TID`.
    Value(Option<neo_proto::Tid>),
    /// `UNDO_PACK_ERROR`.
    UndoPack,
}
