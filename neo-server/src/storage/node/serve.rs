//! What this node serves to other storage nodes (the server half of NEO's
//! `storage/handlers/storage.py`): transactions and objects of a partition
//! for replication (`AskFetchTransactions`, `AskFetchObjects`, answered by
//! a stream of `AddTransaction`/`AddObject` with the request's id, then
//! the answer), and the digests of `neoctl check` (`AskCheckTIDRange`,
//! `AskCheckSerialRange`). The fetching half (our own replication) is in
//! `replicator.rs`.

use std::collections::BTreeSet;

use neo_proto::{
    AddObject, AddTransaction, AnswerCheckSerialRange, AnswerCheckTIDRange, AnswerFetchObjects,
    AnswerFetchTransactions, AskCheckSerialRange, AskCheckTIDRange, AskFetchObjects,
    AskFetchTransactions, Body, Bytes, Checksum as WireChecksum, ErrorCode, Map, Packet, Pong,
    ZERO_HASH,
};

use super::{Fail, Outcome, Retry, StorageNode};
use crate::runtime::{ConnId, Outbox};
use crate::storage::{Backend, CellState};

impl<B: Backend> StorageNode<B> {
    /// A packet on a connection from another storage node.
    pub(super) fn storage_packet(
        &mut self,
        conn: ConnId,
        packet: Packet,
        out: &mut Outbox,
    ) -> Result<(), Fail> {
        let id = packet.id;
        match packet.body {
            body @ (Body::AskFetchTransactions(_)
            | Body::AskFetchObjects(_)
            | Body::AskCheckTIDRange(_)
            | Body::AskCheckSerialRange(_)) => {
                self.submit(Retry::Read { conn, id, body }, out);
                Ok(())
            }
            Body::Ping(_) => {
                out.answer(conn, id, Pong {});
                Ok(())
            }
            Body::Pong(_) | Body::CloseClient(_) => Ok(()),
            body => Err(Fail::Protocol(format!(
                "{} from a storage node is not implemented",
                body.name()
            ))),
        }
    }

    /// Our cell of `partition`, if any (`pt.getCell(partition, uuid)`).
    fn my_cell(&mut self, partition: u32) -> Result<Option<CellState>, Fail> {
        let Some(nid) = self.nid else { return Ok(None) };
        Ok(self
            .db
            .partition_table()?
            .into_iter()
            .find(|&(p, n, _)| p == partition && n == nid.0)
            .map(|(_, _, s)| s))
    }

    /// NEO's `checkFeedingConnection`: replication needs a readable cell,
    /// checks a cell that is not out of date. `false`: answered with an
    /// error.
    fn feeding(
        &mut self,
        conn: ConnId,
        id: u32,
        partition: u32,
        check: bool,
        out: &mut Outbox,
    ) -> Result<bool, Fail> {
        let ok = match self.my_cell(partition)? {
            None => false,
            Some(s) if check => s != CellState::OutOfDate,
            Some(s) => s.is_readable(),
        };
        if !ok {
            let code = if check {
                ErrorCode::CheckingError
            } else {
                ErrorCode::ReplicationError
            };
            out.error(
                conn,
                id,
                code,
                &format!("partition {partition} not readable"),
            );
        }
        Ok(ok)
    }

    /// Requests of other storage nodes (may wait for unlocks).
    pub(super) fn serve(
        &mut self,
        conn: ConnId,
        id: u32,
        body: &Body,
        out: &mut Outbox,
    ) -> Result<Outcome, Fail> {
        match body {
            Body::AskFetchTransactions(a) => {
                if !self.feeding(conn, id, a.partition, false, out)? {
                    return Ok(Outcome::Done);
                }
                if self.tm.is_locked_tid(a.max_tid) {
                    return Ok(Outcome::Delay(None));
                }
                self.fetch_transactions(conn, id, a, out)?;
            }
            Body::AskFetchObjects(a) => {
                if !self.feeding(conn, id, a.partition, false, out)? {
                    return Ok(Outcome::Done);
                }
                if self.tm.is_locked_tid(a.max_tid) {
                    return Err(Fail::Protocol(
                        "transactions must be fetched before objects".into(),
                    ));
                }
                self.fetch_objects(conn, id, a, out)?;
            }
            Body::AskCheckTIDRange(a) => {
                if !self.feeding(conn, id, a.partition, true, out)? {
                    return Ok(Outcome::Done);
                }
                if self.tm.is_locked_tid(a.max_tid) {
                    return Ok(Outcome::Delay(None));
                }
                let AskCheckTIDRange {
                    partition,
                    length,
                    min_tid,
                    max_tid,
                } = *a;
                let r =
                    self.db
                        .check_tid_range(partition, Some(length.into()), min_tid, max_tid)?;
                out.answer(
                    conn,
                    id,
                    AnswerCheckTIDRange {
                        count: r.count,
                        checksum: WireChecksum(r.hash),
                        max_tid: r.max_tid,
                    },
                );
            }
            Body::AskCheckSerialRange(a) => {
                if !self.feeding(conn, id, a.partition, true, out)? {
                    return Ok(Outcome::Done);
                }
                if self.tm.is_locked_tid(a.max_tid) {
                    return Err(Fail::Protocol(
                        "transactions must be checked before objects".into(),
                    ));
                }
                let AskCheckSerialRange {
                    partition,
                    length,
                    min_tid,
                    max_tid,
                    min_oid,
                } = *a;
                let r = self.db.check_serial_range(
                    partition,
                    Some(length.into()),
                    min_tid,
                    max_tid,
                    min_oid,
                )?;
                out.answer(
                    conn,
                    id,
                    AnswerCheckSerialRange {
                        count: r.count,
                        tid_checksum: WireChecksum(r.tid_hash),
                        max_tid: r.max_tid,
                        oid_checksum: WireChecksum(r.oid_hash),
                        max_oid: r.max_oid,
                    },
                );
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

    /// `askFetchTransactions`: what the peer lacks, then the tids it has
    /// that we do not (to delete) and where to continue.
    fn fetch_transactions(
        &mut self,
        conn: ConnId,
        id: u32,
        a: &AskFetchTransactions,
        out: &mut Outbox,
    ) -> Result<(), Fail> {
        let mut peer_tids: BTreeSet<_> = a.tid_list.iter().copied().collect();
        let completed_pack = if a.ask_pack_info {
            self.db.packed_ids(false)?.get(&a.partition).copied()
        } else {
            None
        };
        let length = u64::from(a.length);
        let mut tids =
            self.db
                .replication_tid_list(a.min_tid, a.max_tid, Some(length + 1), a.partition)?;
        let next_tid = if tids.len() as u64 > length {
            tids.pop()
        } else {
            None
        };
        for tid in tids {
            if peer_tids.remove(&tid) {
                continue;
            }
            let Some(t) = self.db.get_transaction(tid, false)? else {
                out.error(
                    conn,
                    id,
                    ErrorCode::ReplicationError,
                    &format!("partition {} dropped", a.partition),
                );
                return Ok(());
            };
            let pack = t.pack.map(|p| (p.approved, p.partial, p.oids, p.pack_tid));
            out.send_with_id(
                conn,
                id,
                AddTransaction {
                    tid,
                    user: Bytes::from(t.meta.user),
                    description: Bytes::from(t.meta.description),
                    extension: Bytes::from(t.meta.extension),
                    packed: t.meta.packed,
                    ttid: t.meta.ttid,
                    oid_list: t.meta.oids,
                    pack,
                },
            );
        }
        out.answer(
            conn,
            id,
            AnswerFetchTransactions {
                next_tid,
                tid_list: peer_tids.into_iter().collect(),
                completed_pack,
            },
        );
        Ok(())
    }

    /// `askFetchObjects`: the revisions the peer lacks, then the ones it
    /// has that we do not (to delete) and where to continue.
    fn fetch_objects(
        &mut self,
        conn: ConnId,
        id: u32,
        a: &AskFetchObjects,
        out: &mut Outbox,
    ) -> Result<(), Fail> {
        let mut peer: Vec<(neo_proto::Tid, BTreeSet<neo_proto::Oid>)> = a
            .object_dict
            .iter()
            .map(|(t, oids)| (*t, oids.iter().copied().collect()))
            .collect();
        let length = u64::from(a.length);
        let mut objects = self.db.replication_object_list(
            a.min_tid,
            a.max_tid,
            Some(length + 1),
            a.partition,
            a.min_oid,
        )?;
        let (next_tid, next_oid) = if objects.len() as u64 > length {
            match objects.pop() {
                Some((t, o)) => (Some(t), Some(o)),
                None => (None, None),
            }
        } else {
            (None, None)
        };
        for (serial, oid) in objects {
            if let Some(i) = peer.iter().position(|(t, _)| *t == serial) {
                if peer[i].1.remove(&oid) {
                    if peer[i].1.is_empty() {
                        peer.remove(i);
                    }
                    continue;
                }
            }
            let Some(r) = self.db.fetch_object(oid, serial)? else {
                out.error(
                    conn,
                    id,
                    ErrorCode::ReplicationError,
                    &format!("partition {} dropped or truncated", a.partition),
                );
                return Ok(());
            };
            let (compression, checksum, data) = match (r.compression, r.checksum, r.data) {
                (Some(c), Some(h), Some(d)) => (c, WireChecksum(h), Bytes::from(d)),
                // Creation undone.
                _ => (0, ZERO_HASH, Bytes::new()),
            };
            out.send_with_id(
                conn,
                id,
                AddObject {
                    oid,
                    serial,
                    compression,
                    checksum,
                    data,
                    data_serial: r.data_serial,
                },
            );
        }
        let object_dict: Map<_, _> = peer
            .into_iter()
            .map(|(t, oids)| (t, oids.into_iter().collect::<Vec<_>>()))
            .collect();
        out.answer(
            conn,
            id,
            AnswerFetchObjects {
                next_tid,
                next_oid,
                object_dict,
            },
        );
        Ok(())
    }
}
