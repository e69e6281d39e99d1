//! Loads served on the I/O thread ([`LoadPath`], a [`FastPath`]): an
//! `AskObject` of an identified client is answered from a read-only handle
//! on the database ([`ObjectReader`]) without waking the node thread.
//!
//! The reader sees only what the node committed, so the node publishes
//! after every event what the reader may serve: whether it is
//! operational (and not in backup mode), its partition view, its client
//! connections, and the *blocked* oids: those between lock and unlock
//! (NEO delays their loads) and those unlocked but not committed yet (the
//! unlock's commit is deferred, the reader would see the old revision).
//! Anything else (another packet, a blocked oid, a database error such as
//! a busy database) goes to the node thread as before, which answers with
//! its own handle.
//!
//! The node publishes before the shell sends what the event produced, so a
//! client cannot learn of a transaction (its tid, an invalidation) before
//! its oids are blocked here. Every change of the published state makes the
//! reader drop its snapshot ([`ObjectReader::release`]): data becomes
//! visible only through a commit, and every commit of object data (the
//! deferred commit of an unlock) unblocks oids, a change.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use neo_proto::{Body, Packet};

use super::client::object_answer;
use crate::runtime::{ConnId, FastPath};
use crate::storage::backend::ObjectReader;
use crate::storage::sqlite::SNAPSHOT_AGE;
use crate::storage::PartitionView;
use fsformat::Oid;

/// What the node lets the I/O thread serve.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Published {
    pub enabled: bool,
    pub view: PartitionView,
    pub clients: HashSet<ConnId>,
    pub blocked: HashSet<Oid>,
}

struct State {
    reader: Box<dyn ObjectReader>,
    published: Published,
}

/// The storage node's [`FastPath`]: loads from a second database handle.
pub struct LoadPath {
    state: Mutex<State>,
}

impl LoadPath {
    pub(super) fn new(reader: Box<dyn ObjectReader>) -> Arc<LoadPath> {
        Arc::new(LoadPath {
            state: Mutex::new(State {
                reader,
                published: Published::default(),
            }),
        })
    }

    /// Replaces what may be served (called by the node thread after each
    /// event). Any change makes the reader take a new snapshot (what the
    /// node committed is visible from then on); an unchanged state lets it
    /// keep its snapshot a while ([`SNAPSHOT_AGE`]).
    pub(super) fn publish(&self, next: Published) {
        if let Ok(mut st) = self.state.lock() {
            if st.published != next {
                st.published = next;
                st.reader.release(Duration::ZERO);
            } else {
                st.reader.release(SNAPSHOT_AGE);
            }
        }
    }
}

impl FastPath for LoadPath {
    fn answer(&self, conn: ConnId, packet: &Packet) -> Option<Body> {
        let Body::AskObject(a) = &packet.body else {
            return None;
        };
        let mut st = self.state.lock().ok()?;
        let State { reader, published } = &mut *st;
        if !published.enabled
            || !published.clients.contains(&conn)
            || published.blocked.contains(&a.oid)
        {
            return None;
        }
        match reader.get_object(&published.view, a.oid, a.at, a.before) {
            Ok(lookup) => Some(object_answer(a, lookup)),
            Err(e) => {
                log::debug!("load of {} left to the node thread: {e}", a.oid);
                None
            }
        }
    }
}
