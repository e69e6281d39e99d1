//! What this node tells an admin node that asks how it is doing: the
//! progress of its backend's background work (the Importer's import), for
//! the summary of `neoctl print summary`.
//!
//! The admin identifies as NEO's admins do toward another admin (ADMIN,
//! no node id, no address: what a backup cluster's admin sends upstream)
//! and asks `AskMonitorInformation`, the question `neoctl` asks the admin.
//! We answer `AnswerMonitorInformation` with no warning nor problem and,
//! as summary, [`Backend::background_status`] (empty when there is none).
//! Nothing else is served on such a connection. A Python NEO storage
//! refuses the identification ("reject anonymous non-storage node"): the
//! admin then just has no line for it. Nothing changes between this node
//! and the master, nor for clients and other storage nodes.

use neo_proto::{AnswerMonitorInformation, Body, Bytes, Packet, Pong};

use super::{Fail, StorageNode};
use crate::runtime::{ConnId, Outbox};
use crate::storage::Backend;

impl<B: Backend> StorageNode<B> {
    /// A packet on a connection from an admin node (see the module docs).
    pub(super) fn monitor_packet(
        &mut self,
        conn: ConnId,
        packet: Packet,
        out: &mut Outbox,
    ) -> Result<(), Fail> {
        match packet.body {
            Body::AskMonitorInformation(_) => {
                let summary = self.db.background_status().unwrap_or_default();
                out.answer(
                    conn,
                    packet.id,
                    AnswerMonitorInformation {
                        warning: Vec::new(),
                        problem: Vec::new(),
                        summary: Bytes::from(summary.into_bytes()),
                    },
                );
                Ok(())
            }
            Body::Ping(_) => {
                out.answer(conn, packet.id, Pong {});
                Ok(())
            }
            other => Err(Fail::Protocol(format!(
                "unexpected packet {} from an admin node",
                other.name()
            ))),
        }
    }
}
