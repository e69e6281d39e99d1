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
//! reader drop its snapshot ([`ObjectReader::release`]), and so does every
//! commit of the node (the published state counts them): data changes only
//! through a commit (an unlock's deferred commit, a pack step, a
//! replication batch).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
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
    /// The node's commits so far: each one makes the readers take a new
    /// snapshot (a pack or a replication changes what a load finds).
    pub commits: u64,
}

/// The storage node's [`FastPath`]: loads from read-only database handles,
/// one per I/O thread.
pub struct LoadPath {
    published: RwLock<Published>,
    readers: Vec<Mutex<Box<dyn ObjectReader>>>,
}

impl LoadPath {
    /// A load path over `readers` (at least one), one per I/O thread.
    pub(super) fn new(readers: Vec<Box<dyn ObjectReader>>) -> Arc<LoadPath> {
        Arc::new(LoadPath {
            published: RwLock::new(Published::default()),
            readers: readers.into_iter().map(Mutex::new).collect(),
        })
    }

    /// Replaces what may be served (called by the node thread after each
    /// event). Any change makes the readers take a new snapshot (what the
    /// node committed is visible from then on); an unchanged state lets
    /// them keep their snapshot a while ([`SNAPSHOT_AGE`]). Loads in
    /// progress finish first (they hold the state's read lock).
    pub(super) fn publish(&self, next: Published) {
        let Ok(mut published) = self.published.write() else {
            return;
        };
        let age = if *published != next {
            *published = next;
            Duration::ZERO
        } else {
            SNAPSHOT_AGE
        };
        for r in &self.readers {
            if let Ok(mut r) = r.lock() {
                r.release(age);
            }
        }
    }
}

impl FastPath for LoadPath {
    fn answer(&self, io: usize, conn: ConnId, packet: &Packet) -> Option<Body> {
        let Body::AskObject(a) = &packet.body else {
            return None;
        };
        let published = self.published.read().ok()?;
        if !published.enabled
            || !published.clients.contains(&conn)
            || published.blocked.contains(&a.oid)
        {
            return None;
        }
        let mut reader = self.readers.get(io % self.readers.len())?.lock().ok()?;
        match reader.get_object(&published.view, a.oid, a.at, a.before) {
            Ok(lookup) => Some(object_answer(a, lookup)),
            Err(e) => {
                log::debug!("load of {} left to the node thread: {e}", a.oid);
                None
            }
        }
    }
}
