//! Pack through the client (NEO's `Application.pack`): a transaction that
//! stores nothing but carries a pack order, then optionally `WaitForPack`.
//!
//! ```text
//! AskBeginTransaction                                  -> master   => ttid
//! AskStoreTransaction [.., "IStorage.pack", [], [oids|nil, tid]]
//!                                                      -> cells of ttid % np
//! AskFinishTransaction [ttid, [], [], [], [oids|nil, tid]] -> master => pack id
//! WaitForPack [pack id]                                -> master (answered once
//!                                                         every storage packed)
//! ```
//!
//! The storages pack in the background once the master signs the order
//! (`NotifyPackSigned`); see `storage/node/pack.rs`.

use neo_proto::{
    AbortTransaction, AskBeginTransaction, AskFinishTransaction, AskStoreTransaction, Body, Oid,
    Tid, WaitForPack, ZERO_TID,
};

use super::{remote, Client, ClientError, Result};

/// The description of a pack transaction (NEO's `TXN_PACK_DESC`).
pub const PACK_DESCRIPTION: &[u8] = b"IStorage.pack";

impl Client {
    /// Packs the database at `tid` (every oid, or only `oids`): removes the
    /// revisions older than the one current at `tid`, and objects deleted
    /// at or before it. Returns the pack id (the tid of the transaction
    /// that ordered it), `None` for a pack at tid 0 (nothing to do). With
    /// `wait`, returns once every storage has packed (`WaitForPack`),
    /// otherwise once the order is committed. `tid` must not be after the
    /// last transaction (the master refuses it).
    pub async fn pack(&self, tid: Tid, oids: Option<Vec<Oid>>, wait: bool) -> Result<Option<Tid>> {
        if tid == ZERO_TID {
            return Ok(None);
        }
        if self.inner.cfg.read_only {
            return Err(ClientError::ReadOnly);
        }
        let ttid = match self
            .ask_master_again(AskBeginTransaction { tid: None })
            .await?
        {
            Body::AnswerBeginTransaction(a) => a.ttid,
            other => {
                return Err(remote(
                    self.inner.master().peer(),
                    "AskBeginTransaction",
                    other,
                ))
            }
        };
        let order = (oids, tid);
        let pack_id = match self.commit_pack_order(ttid, &order).await {
            Ok(id) => id,
            Err(e) => {
                self.abort_pack_order(ttid).await;
                return Err(e);
            }
        };
        log::info!("pack {pack_id} at {tid} committed");
        if wait {
            match self.ask_master(WaitForPack { tid: pack_id }).await? {
                Body::WaitedForPack(_) => {}
                other => return Err(remote(self.inner.master().peer(), "WaitForPack", other)),
            }
        }
        Ok(Some(pack_id))
    }

    /// Vote (metadata with the order) and finish of a pack transaction.
    async fn commit_pack_order(&self, ttid: Tid, order: &(Option<Vec<Oid>>, Tid)) -> Result<Tid> {
        let partition = self.partition_of(ttid.0)?;
        let nodes = self.inner.shared().writable(partition);
        if nodes.is_empty() {
            return Err(ClientError::NoStorage { partition });
        }
        let mut tasks = Vec::new();
        for nid in nodes {
            let conn = self.storage(nid).await?;
            let packet = AskStoreTransaction {
                ttid,
                user: Default::default(),
                description: super::bytes(PACK_DESCRIPTION),
                extension: Default::default(),
                oid_list: Vec::new(),
                pack: Some(order.clone()),
            };
            tasks.push(tokio::spawn(async move {
                match conn.ask(packet).await? {
                    Body::AnswerStoreTransaction(_) => Ok(()),
                    other => Err(remote(conn.peer(), "AskStoreTransaction", other)),
                }
            }));
        }
        for t in tasks {
            t.await
                .map_err(|_| ClientError::Phase("vote task failed"))??;
        }
        let packet = AskFinishTransaction {
            ttid,
            oid_list: Vec::new(),
            deleted: Vec::new(),
            checked: Vec::new(),
            pack: Some(order.clone()),
        };
        match self.ask_master(packet).await? {
            Body::AnswerTransactionFinished(a) => {
                let mut sh = self.inner.shared();
                sh.last_tid = sh.last_tid.max(a.tid);
                Ok(a.tid)
            }
            other => Err(remote(
                self.inner.master().peer(),
                "AskFinishTransaction",
                other,
            )),
        }
    }

    /// Aborts a pack transaction that failed before its end.
    async fn abort_pack_order(&self, ttid: Tid) {
        let partition = self.partition_of(ttid.0).unwrap_or(0);
        let nodes = self.inner.shared().writable(partition);
        let conns: Vec<_> = {
            let map = self.inner.storages.lock().await;
            nodes.iter().filter_map(|n| map.get(n).cloned()).collect()
        };
        for c in conns {
            let _ = c
                .notify(AbortTransaction {
                    ttid,
                    uuid_list: Vec::new(),
                })
                .await;
        }
        let _ = self
            .inner
            .master()
            .notify(AbortTransaction {
                ttid,
                uuid_list: nodes,
            })
            .await;
    }
}
