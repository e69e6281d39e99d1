//! The shared test suite: every generic test runs on both backends through
//! a [`Harness`], then backend-specific tests (SQLite schema, files, locks,
//! SIGKILL; memory crash injection). The MySQL harness and MySQL-only tests
//! are in `tests/mysql_server.rs`.

use std::path::PathBuf;

use fsformat::{Oid, Tid};

use super::*;

mod mysql_server;

/// Makes and reopens databases of one backend.
trait Harness {
    type B: Backend;
    /// A new empty database.
    fn fresh(&mut self, dedup: bool) -> Self::B;
    /// Closes `db` without committing and opens it again.
    fn reopen(&mut self, db: Self::B) -> Self::B;
}

struct SqliteHarness {
    dir: tempfile::TempDir,
    n: usize,
}

impl SqliteHarness {
    fn new() -> Self {
        SqliteHarness {
            dir: tempfile::tempdir().expect("tempdir"),
            n: 0,
        }
    }
}

impl Harness for SqliteHarness {
    type B = SqliteBackend;
    fn fresh(&mut self, dedup: bool) -> SqliteBackend {
        self.n += 1;
        let path = self.dir.path().join(format!("db{}.sqlite", self.n));
        let opts = SqliteOptions {
            dedup,
            ..SqliteOptions::default()
        };
        SqliteBackend::open(&path, &opts).expect("open")
    }
    fn reopen(&mut self, db: SqliteBackend) -> SqliteBackend {
        let path = db.path().to_owned();
        drop(db);
        SqliteBackend::open(&path, &SqliteOptions::default()).expect("reopen")
    }
}

struct MemoryHarness;

impl Harness for MemoryHarness {
    type B = MemoryBackend;
    fn fresh(&mut self, dedup: bool) -> MemoryBackend {
        MemoryBackend::new(dedup)
    }
    fn reopen(&mut self, db: MemoryBackend) -> MemoryBackend {
        let disk = db.disk().clone();
        drop(db);
        MemoryBackend::open(&disk)
    }
}

/// Declares `#[test] fn name()` for each backend, calling `name(harness)`.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $( #[test] fn $name() { super::$name(&mut super::SqliteHarness::new()) } )*
        }
        mod on_memory {
            $( #[test] fn $name() { super::$name(&mut super::MemoryHarness) } )*
        }
        mod on_mysql {
            $( #[test] fn $name() {
                if let Some(mut h) = super::mysql_server::MysqlHarness::new() {
                    super::$name(&mut h)
                }
            } )*
        }
    };
}

both!(
    config_keys,
    two_phase_commit_visibility,
    abort_releases_data,
    dedup_and_collision,
    loads_at_and_before,
    deleted_objects,
    undo_backpointers,
    find_undo_tid_cases,
    history,
    replication_lists,
    check_hashes,
    truncate_after_tid,
    reopen_keeps_committed_only,
    deletes_and_prune,
    pack_partition_rules,
    pack_orders_flow,
    partition_table_changes,
    non_readable_and_out_of_range,
    unfinished_after_restart,
    drop_and_replication_helpers,
);

const NID: Nid = 0x1000_0001;
const NP: u32 = 2;

/// nid, and `NP` partitions all `UP_TO_DATE` on this node.
fn setup<B: Backend + ?Sized>(db: &mut B) {
    db.set_nid(NID).unwrap();
    let cells: Vec<_> = (0..NP).map(|p| (p, NID, CellState::UpToDate)).collect();
    let drop = db
        .change_partition_table(1, 0, &cells, true, Tid::ZERO)
        .unwrap();
    assert!(drop.is_empty());
    db.commit().unwrap();
}

fn meta(ttid: u64, oids: &[u64]) -> TxnMeta {
    TxnMeta {
        oids: oids.iter().map(|&o| Oid(o)).collect(),
        user: b"user".to_vec(),
        description: format!("txn {ttid}").into_bytes(),
        extension: b"}q\x00.".to_vec(),
        packed: false,
        ttid: Tid(ttid),
    }
}

/// Votes (store + commit) a transaction of `objs` (`None` data: deletion).
fn vote<B: Backend + ?Sized>(
    db: &mut B,
    ttid: u64,
    objs: &[(u64, Option<&[u8]>)],
) -> Vec<ObjectRef> {
    let mut refs = Vec::new();
    for &(oid, data) in objs {
        let data_id = match data {
            Some(d) => db
                .hold_data(Some(&make_checksum(d)), Oid(oid), d, 0, None)
                .unwrap(),
            None => None,
        };
        refs.push(ObjectRef {
            oid: Oid(oid),
            data_id,
            value_tid: None,
        });
    }
    let oids: Vec<u64> = objs.iter().map(|o| o.0).collect();
    db.store_transaction(Tid(ttid), &refs, Some(&meta(ttid, &oids)), true)
        .unwrap();
    db.commit().unwrap();
    refs
}

/// Full 2PC; ttid is `tid - NP` (same partition, as NEO's master ensures).
fn commit_txn<B: Backend + ?Sized>(db: &mut B, tid: u64, objs: &[(u64, Option<&[u8]>)]) {
    let ttid = tid - u64::from(NP);
    vote(db, ttid, objs);
    db.lock_transaction(Tid(tid), Tid(ttid), false).unwrap();
    db.unlock_transaction(Tid(tid), Tid(ttid), true, true, false)
        .unwrap();
    db.commit().unwrap();
}

fn found(l: ObjectLookup) -> ObjectRecord {
    match l {
        ObjectLookup::Found(r) => r,
        other => panic!("expected a record, got {other:?}"),
    }
}

fn config_keys<H: Harness>(h: &mut H) {
    let mut db = h.fresh(false);
    assert_eq!(db.version().unwrap().as_deref(), Some("4"));
    assert_eq!(db.nid().unwrap(), None);
    db.set_name("cluster-x").unwrap();
    setup(&mut db);
    db.set_truncate_tid(Some(Tid(0x0123_4567_89ab_cdef)))
        .unwrap();
    db.set_backup_tid(Some(Tid(10))).unwrap();
    db.commit().unwrap();
    let mut db = h.reopen(db);
    assert_eq!(db.name().unwrap().as_deref(), Some("cluster-x"));
    assert_eq!(db.nid().unwrap(), Some(NID));
    assert_eq!(db.ptid().unwrap(), Some(1));
    assert_eq!(db.num_replicas().unwrap(), Some(0));
    // NEO stores tids in config as 16 hex digits (util.dump).
    assert_eq!(
        db.config("truncate_tid").unwrap().as_deref(),
        Some("0123456789abcdef")
    );
    assert_eq!(db.truncate_tid().unwrap(), Some(Tid(0x0123_4567_89ab_cdef)));
    assert_eq!(db.backup_tid().unwrap(), Some(Tid(10)));
    db.set_config("backup_tid", Some("xyz")).unwrap();
    assert!(matches!(db.backup_tid(), Err(DbError::Corrupted { .. })));
    db.set_backup_tid(None).unwrap();
    assert_eq!(db.backup_tid().unwrap(), None);
    // Changing the nid moves this node's cells.
    db.set_nid(NID + 1).unwrap();
    let rows = db.pt_rows().unwrap();
    assert_eq!(rows.len(), NP as usize);
    assert!(rows.iter().all(|r| r.nid == NID + 1 && r.tid == -1));
    assert_eq!(db.partition_view().unwrap().readable.len(), NP as usize);
}

fn two_phase_commit_visibility<H: Harness>(h: &mut H) {
    let mut db = h.fresh(false);
    setup(&mut db);
    let (ttid, tid) = (98, 100);
    let refs = vote(&mut db, ttid, &[(1, Some(b"one")), (2, Some(b"two"))]);
    let ids: Vec<DataId> = refs.iter().filter_map(|r| r.data_id).collect();
    assert_eq!(ids.len(), 2);
    // Data ids are allocated per partition of the oid: p << 48.
    assert_eq!(ids[0], 1 << 48);
    assert_eq!(ids[1], 0);
    assert!(ids.iter().all(|&i| db.held_data().count(i) == 1));
    // Voted: invisible.
    assert_eq!(
        db.get_object(Oid(1), None, None).unwrap(),
        ObjectLookup::DoesNotExist
    );
    assert_eq!(
        db.unfinished_transactions().unwrap(),
        [(Tid(ttid), None)].into()
    );
    assert_eq!(db.get_transaction(Tid(tid), true).unwrap(), None);
    // Locked: the transaction is found with `all` only.
    db.lock_transaction(Tid(tid), Tid(ttid), false).unwrap();
    assert_eq!(
        db.unfinished_transactions().unwrap(),
        [(Tid(ttid), Some(Tid(tid)))].into()
    );
    assert_eq!(db.get_transaction(Tid(tid), false).unwrap(), None);
    let t = db.get_transaction(Tid(tid), true).unwrap().unwrap();
    assert_eq!(t.meta, meta(ttid, &[1, 2]));
    assert_eq!(db.final_tid(Tid(ttid)).unwrap(), None);
    // Unlocked: visible.
    db.unlock_transaction(Tid(tid), Tid(ttid), true, true, false)
        .unwrap();
    db.commit().unwrap();
    assert!(db.unfinished_transactions().unwrap().is_empty());
    assert_eq!(db.final_tid(Tid(ttid)).unwrap(), Some(Tid(tid)));
    assert!(ids.iter().all(|&i| db.held_data().count(i) == 0));
    let t = db.get_transaction(Tid(tid), false).unwrap().unwrap();
    assert_eq!(t.meta.oids, vec![Oid(1), Oid(2)]);
    assert_eq!(t.meta.ttid, Tid(ttid));
    assert_eq!(t.pack, None);
    let r = found(db.get_object(Oid(2), None, None).unwrap());
    assert_eq!(r.serial, Tid(tid));
    assert_eq!(r.next_serial, None);
    assert_eq!(r.data.as_deref(), Some(&b"two"[..]));
    assert_eq!(r.checksum, Some(make_checksum(b"two")));
    assert_eq!(r.compression, Some(0));
    assert_eq!(r.data_serial, None);
    assert_eq!(db.last_ids().unwrap(), (Some(Tid(tid)), Some(Oid(2))));
    assert_eq!(db.last_tid(None).unwrap(), Some(Tid(tid)));
    assert_eq!(db.first_tid().unwrap(), Tid(tid));
    assert_eq!(db.last_object_tid(Oid(1)).unwrap(), Some(Tid(tid)));
    assert_eq!(db.tid_list(0, 10, &[0, 1]).unwrap(), vec![Tid(tid)]);
    assert_eq!(db.orphan_data().unwrap(), Vec::<DataId>::new());
    // An object stored twice under one ttid is a duplicate.
    let r = ObjectRef {
        oid: Oid(5),
        data_id: None,
        value_tid: None,
    };
    db.store_transaction(Tid(200), &[r], None, true).unwrap();
    assert!(matches!(
        db.store_transaction(Tid(200), &[r], None, true),
        Err(DbError::Duplicate { table: "tobj", .. })
    ));
}

fn abort_releases_data<H: Harness>(h: &mut H) {
    let mut db = h.fresh(false);
    setup(&mut db);
    let refs = vote(&mut db, 50, &[(3, Some(b"three"))]);
    let id = refs[0].data_id.unwrap();
    assert!(db.load_data(id).unwrap().is_some());
    // Held data survives pruning.
    assert_eq!(db.prune_data(&[id]).unwrap(), 0);
    db.abort_transaction(Tid(50)).unwrap();
    db.release_data(&[id], true).unwrap();
    db.commit().unwrap();
    assert_eq!(db.load_data(id).unwrap(), None);
    assert!(db.unfinished_transactions().unwrap().is_empty());
    assert_eq!(
        db.get_object(Oid(3), None, None).unwrap(),
        ObjectLookup::DoesNotExist
    );
    // drop_unfinished_data does the same for everything, after a restart.
    let refs = vote(&mut db, 60, &[(4, Some(b"four"))]);
    let mut db = h.reopen(db);
    let id = refs[0].data_id.unwrap();
    assert_eq!(db.held_data().count(id), 1);
    db.drop_unfinished_data().unwrap();
    assert_eq!(db.load_data(id).unwrap(), None);
    assert!(db.unfinished_transactions().unwrap().is_empty());
}

fn dedup_and_collision<H: Harness>(h: &mut H) {
    let data = b"same bytes";
    let sum = make_checksum(data);
    for dedup in [false, true] {
        let mut db = h.fresh(dedup);
        setup(&mut db);
        let a = db.store_data(Some(&sum), Oid(1), data, 0, None).unwrap();
        let b = db.store_data(Some(&sum), Oid(3), data, 0, None).unwrap();
        let c = db.store_data(Some(&sum), Oid(1), data, 1, None).unwrap();
        assert_ne!(a, c, "compression is part of the key");
        if dedup {
            assert_eq!(a, b);
            assert!(matches!(
                db.store_data(Some(&sum), Oid(1), b"other", 0, None),
                Err(DbError::HashCollision { data_id }) if Some(data_id) == a
            ));
        } else {
            assert_ne!(a, b);
            assert_eq!(b, a.map(|i| i + 1));
        }
        assert_eq!(
            db.load_data(a.unwrap()).unwrap(),
            Some((0, sum, data.to_vec()))
        );
        // A deletion stores nothing.
        assert_eq!(db.store_data(None, Oid(1), b"", 0, None).unwrap(), None);
        // Dedup survives a reopen (it is in the schema).
        db.commit().unwrap();
        let mut db = h.reopen(db);
        let d = db.store_data(Some(&sum), Oid(5), data, 0, None).unwrap();
        assert_eq!(d == a, dedup);
    }
}

fn loads_at_and_before<H: Harness>(h: &mut H) {
    let mut db = h.fresh(false);
    setup(&mut db);
    for (tid, d) in [(10u64, &b"v1"[..]), (20, b"v2"), (30, b"v3")] {
        commit_txn(&mut db, tid, &[(1, Some(d))]);
    }
    let r = found(db.get_object(Oid(1), None, None).unwrap());
    assert_eq!((r.serial, r.next_serial), (Tid(30), None));
    let r = found(db.get_object(Oid(1), Some(Tid(20)), None).unwrap());
    assert_eq!((r.serial, r.next_serial), (Tid(20), Some(Tid(30))));
    assert_eq!(r.data.as_deref(), Some(&b"v2"[..]));
    let r = found(db.get_object(Oid(1), None, Some(Tid(30))).unwrap());
    assert_eq!((r.serial, r.next_serial), (Tid(20), Some(Tid(30))));
    let r = found(db.get_object(Oid(1), None, Some(Tid(11))).unwrap());
    assert_eq!((r.serial, r.next_serial), (Tid(10), Some(Tid(20))));
    assert_eq!(
        db.get_object(Oid(1), None, Some(Tid(10))).unwrap(),
        ObjectLookup::NotFoundAt
    );
    assert_eq!(
        db.get_object(Oid(1), Some(Tid(15)), None).unwrap(),
        ObjectLookup::NotFoundAt
    );
    assert_eq!(
        db.get_object(Oid(3), Some(Tid(15)), None).unwrap(),
        ObjectLookup::DoesNotExist
    );
    let f = db.fetch_object(Oid(1), Tid(10)).unwrap().unwrap();
    assert_eq!((f.serial, f.next_serial), (Tid(10), None));
    assert_eq!(db.fetch_object(Oid(1), Tid(11)).unwrap(), None);
}

fn deleted_objects<H: Harness>(h: &mut H) {
    let mut db = h.fresh(false);
    setup(&mut db);
    commit_txn(&mut db, 10, &[(2, Some(b"a")), (4, Some(b"b"))]);
    commit_txn(&mut db, 20, &[(2, None)]);
    let r = found(db.get_object(Oid(2), None, None).unwrap());
    assert_eq!(r.serial, Tid(20));
    assert_eq!(
        (r.compression, r.checksum, r.data, r.data_serial),
        (None, None, None, None)
    );
    let r = found(db.get_object(Oid(2), None, Some(Tid(20))).unwrap());
    assert_eq!(r.data.as_deref(), Some(&b"a"[..]));
    // oidsFrom skips deleted oids but still counts them for paging.
    assert_eq!(
        db.oids_from(0, 10, Oid(0), Tid(30)).unwrap(),
        (None, vec![Oid(4)])
    );
    assert_eq!(
        db.oids_from(0, 1, Oid(0), Tid(30)).unwrap(),
        (Some(Oid(2 + u64::from(NP))), vec![])
    );
    assert_eq!(
        db.oids_from(0, 10, Oid(0), Tid(15)).unwrap(),
        (None, vec![Oid(2), Oid(4)])
    );
}

fn undo_backpointers<H: Harness>(h: &mut H) {
    let mut db = h.fresh(false);
    setup(&mut db);
    commit_txn(&mut db, 10, &[(1, Some(b"orig"))]);
    commit_txn(&mut db, 20, &[(1, Some(b"changed"))]);
    // Undo of 20: reuse the data of 10.
    let orig_id = db.fetch_object(Oid(1), Tid(10)).unwrap().unwrap();
    let id = db
        .hold_data(None, Oid(1), b"", 0, Some(Tid(10)))
        .unwrap()
        .expect("data id of the record at 10");
    assert_eq!(db.load_data(id).unwrap().map(|d| d.2), orig_id.data.clone());
    let ttid = 28;
    db.store_transaction(
        Tid(ttid),
        &[ObjectRef {
            oid: Oid(1),
            data_id: Some(id),
            value_tid: Some(Tid(10)),
        }],
        Some(&meta(ttid, &[1])),
        true,
    )
    .unwrap();
    db.lock_transaction(Tid(30), Tid(ttid), false).unwrap();
    db.unlock_transaction(Tid(30), Tid(ttid), true, true, false)
        .unwrap();
    db.commit().unwrap();
    let r = found(db.get_object(Oid(1), None, None).unwrap());
    assert_eq!(r.serial, Tid(30));
    assert_eq!(r.data.as_deref(), Some(&b"orig"[..]));
    assert_eq!(r.data_serial, Some(Tid(10)));
    // Undo refers to a record that does not exist: UndoPack (readable).
    assert!(matches!(
        db.store_data(None, Oid(1), b"", 0, Some(Tid(15))),
        Err(DbError::UndoPack { .. })
    ));
    // Undo of a creation-as-deletion record: its data id is NULL.
    commit_txn(&mut db, 40, &[(1, None)]);
    assert_eq!(
        db.store_data(None, Oid(1), b"", 0, Some(Tid(40))).unwrap(),
        None
    );
}

fn find_undo_tid_cases<H: Harness>(h: &mut H) {
    let mut db = h.fresh(false);
    setup(&mut db);
    commit_txn(&mut db, 10, &[(1, Some(b"a")), (3, Some(b"new"))]);
    commit_txn(&mut db, 20, &[(1, Some(b"b"))]);
    let u = |c, d, i| {
        Some(UndoInfo {
            current_tid: c,
            data_tid: d,
            is_current: i,
        })
    };
    // Undo 20 (current): restores 10.
    assert_eq!(
        db.find_undo_tid(Oid(1), None, Tid(20), None).unwrap(),
        u(Some(Tid(20)), Some(Tid(10)), true)
    );
    // Undo 10 while 20 is current: restores nothing (creation), not current.
    assert_eq!(
        db.find_undo_tid(Oid(1), None, Tid(10), None).unwrap(),
        u(Some(Tid(20)), None, false)
    );
    // Seen from before 20, 10 is current.
    assert_eq!(
        db.find_undo_tid(Oid(1), Some(Tid(20)), Tid(10), None)
            .unwrap(),
        u(Some(Tid(10)), None, true)
    );
    // Seen from before 10: invisible.
    assert_eq!(
        db.find_undo_tid(Oid(1), Some(Tid(10)), Tid(10), None)
            .unwrap(),
        u(None, None, false)
    );
    // No record at the undone tid.
    assert_eq!(db.find_undo_tid(Oid(1), None, Tid(15), None).unwrap(), None);
    assert_eq!(db.find_undo_tid(Oid(3), None, Tid(20), None).unwrap(), None);
    // The undoing transaction already has its own version.
    assert_eq!(
        db.find_undo_tid(Oid(1), None, Tid(20), Some(Tid(25)))
            .unwrap(),
        u(Some(Tid(25)), Some(Tid(10)), false)
    );
    // Undo chain: 30 undoes 20 (value_tid 10); undoing 30 must restore 20.
    let id = db
        .hold_data(None, Oid(1), b"", 0, Some(Tid(10)))
        .unwrap()
        .unwrap();
    db.store_transaction(
        Tid(28),
        &[ObjectRef {
            oid: Oid(1),
            data_id: Some(id),
            value_tid: Some(Tid(10)),
        }],
        Some(&meta(28, &[1])),
        true,
    )
    .unwrap();
    db.lock_transaction(Tid(30), Tid(28), false).unwrap();
    db.unlock_transaction(Tid(30), Tid(28), true, true, false)
        .unwrap();
    assert_eq!(
        db.object_history_for_undo(Oid(1), Tid(20)).unwrap(),
        Some((Some(Tid(10)), vec![(Tid(30), Some(Tid(10)))]))
    );
    assert_eq!(
        db.find_undo_tid(Oid(1), None, Tid(30), None).unwrap(),
        u(Some(Tid(30)), Some(Tid(20)), true)
    );
    // Undoing 10 again: 30 shares 10's data, so 10 is current again.
    assert_eq!(
        db.find_undo_tid(Oid(1), None, Tid(10), None).unwrap(),
        u(Some(Tid(30)), None, true)
    );
}

fn history<H: Harness>(h: &mut H) {
    let mut db = h.fresh(false);
    setup(&mut db);
    commit_txn(&mut db, 10, &[(1, Some(b"1"))]);
    commit_txn(&mut db, 20, &[(1, Some(b"22"))]);
    commit_txn(&mut db, 30, &[(1, None)]);
    assert_eq!(
        db.object_history(Oid(1), 0, 10).unwrap(),
        Some(vec![(Tid(30), 0), (Tid(20), 2), (Tid(10), 1)])
    );
    assert_eq!(
        db.object_history(Oid(1), 1, 1).unwrap(),
        Some(vec![(Tid(20), 2)])
    );
    assert_eq!(db.object_history(Oid(1), 3, 1).unwrap(), None);
    assert_eq!(db.object_history(Oid(3), 0, 10).unwrap(), None);
    assert_eq!(db.tid_list(1, 5, &[0]).unwrap(), vec![Tid(20), Tid(10)]);
}

/// Transactions over both partitions: tids 10, 11, 20, 21, ...
fn populate<B: Backend + ?Sized>(db: &mut B) {
    commit_txn(db, 10, &[(0, Some(b"a")), (1, Some(b"b")), (2, Some(b"c"))]);
    commit_txn(db, 11, &[(1, Some(b"d")), (3, Some(b"e"))]);
    commit_txn(db, 20, &[(0, Some(b"f")), (4, Some(b"g"))]);
    commit_txn(db, 21, &[(2, Some(b"h"))]);
}

fn replication_lists<H: Harness>(h: &mut H) {
    let mut db = h.fresh(false);
    setup(&mut db);
    populate(&mut db);
    let all = Some(u64::MAX);
    assert_eq!(
        db.replication_tid_list(Tid(0), MAX_TID, None, 0).unwrap(),
        vec![Tid(10), Tid(20)]
    );
    assert_eq!(
        db.replication_tid_list(Tid(11), Tid(21), all, 1).unwrap(),
        vec![Tid(11), Tid(21)]
    );
    assert_eq!(
        db.replication_tid_list(Tid(0), MAX_TID, Some(1), 1)
            .unwrap(),
        vec![Tid(11)]
    );
    // Partition 0 holds oids 0, 2, 4.
    assert_eq!(
        db.replication_object_list(Tid(0), MAX_TID, None, 0, Oid(0))
            .unwrap(),
        vec![
            (Tid(10), Oid(0)),
            (Tid(10), Oid(2)),
            (Tid(20), Oid(0)),
            (Tid(20), Oid(4)),
            (Tid(21), Oid(2)),
        ]
    );
    assert_eq!(
        db.replication_object_list(Tid(10), MAX_TID, Some(2), 0, Oid(2))
            .unwrap(),
        vec![(Tid(10), Oid(2)), (Tid(20), Oid(0))]
    );
    assert_eq!(
        db.replication_object_list(Tid(20), Tid(20), None, 0, Oid(1))
            .unwrap(),
        vec![(Tid(20), Oid(4))]
    );
    assert!(db
        .replication_object_list(Tid(20), Tid(10), None, 0, Oid(0))
        .unwrap()
        .is_empty());
    assert!(db
        .replication_object_list(Tid(0), MAX_TID, Some(0), 0, Oid(0))
        .unwrap()
        .is_empty());
}

fn check_hashes<H: Harness>(h: &mut H) {
    use sha1::{Digest, Sha1};
    let sha = |s: &str| -> Checksum { Sha1::digest(s.as_bytes()).into() };
    let mut db = h.fresh(false);
    setup(&mut db);
    populate(&mut db);
    assert_eq!(
        db.check_tid_range(0, None, Tid(0), MAX_TID).unwrap(),
        TidRangeCheck {
            count: 2,
            hash: sha("10,20"),
            max_tid: Tid(20)
        }
    );
    assert_eq!(
        db.check_tid_range(1, Some(1), Tid(0), MAX_TID).unwrap(),
        TidRangeCheck {
            count: 1,
            hash: sha("11"),
            max_tid: Tid(11)
        }
    );
    assert_eq!(
        db.check_tid_range(1, None, Tid(30), MAX_TID).unwrap(),
        TidRangeCheck {
            count: 0,
            hash: ZERO_HASH,
            max_tid: Tid::ZERO
        }
    );
    assert_eq!(
        db.check_serial_range(0, None, Tid(10), MAX_TID, Oid(2))
            .unwrap(),
        SerialRangeCheck {
            count: 4,
            tid_hash: sha("10,20,20,21"),
            max_tid: Tid(21),
            oid_hash: sha("2,0,4,2"),
            max_oid: Oid(2),
        }
    );
    assert_eq!(
        db.check_serial_range(1, Some(2), Tid(0), Tid(11), Oid(0))
            .unwrap(),
        SerialRangeCheck {
            count: 2,
            tid_hash: sha("10,11"),
            max_tid: Tid(11),
            oid_hash: sha("1,1"),
            max_oid: Oid(1),
        }
    );
    assert_eq!(
        db.check_serial_range(1, None, Tid(12), Tid(19), Oid(0))
            .unwrap()
            .count,
        0
    );
}

fn truncate_after_tid<H: Harness>(h: &mut H) {
    let mut db = h.fresh(false);
    setup(&mut db);
    populate(&mut db);
    db.truncate().unwrap(); // nothing to do without truncate_tid
    assert_eq!(db.last_tid(None).unwrap(), Some(Tid(21)));
    db.set_truncate_tid(Some(Tid(11))).unwrap();
    db.commit().unwrap();
    db.truncate().unwrap();
    assert_eq!(db.truncate_tid().unwrap(), None);
    assert_eq!(db.last_tid(None).unwrap(), Some(Tid(11)));
    assert_eq!(db.last_ids().unwrap(), (Some(Tid(11)), Some(Oid(3))));
    let r = found(db.get_object(Oid(0), None, None).unwrap());
    assert_eq!(r.serial, Tid(10));
    assert_eq!(r.next_serial, None);
    assert_eq!(
        db.get_object(Oid(4), None, None).unwrap(),
        ObjectLookup::DoesNotExist
    );
    // Data of removed records is pruned.
    assert_eq!(db.orphan_data().unwrap(), Vec::<DataId>::new());
    let db = h.reopen(db);
    let mut db = db;
    assert_eq!(db.last_tid(None).unwrap(), Some(Tid(11)));
}

fn reopen_keeps_committed_only<H: Harness>(h: &mut H) {
    let mut db = h.fresh(false);
    setup(&mut db);
    commit_txn(&mut db, 10, &[(1, Some(b"kept"))]);
    // Unlocked but not committed: lost on reopen.
    vote(&mut db, 18, &[(1, Some(b"lost"))]);
    db.lock_transaction(Tid(20), Tid(18), false).unwrap();
    db.unlock_transaction(Tid(20), Tid(18), true, true, false)
        .unwrap();
    assert_eq!(db.last_object_tid(Oid(1)).unwrap(), Some(Tid(20)));
    let mut db = h.reopen(db);
    assert_eq!(db.last_object_tid(Oid(1)).unwrap(), Some(Tid(10)));
    // ... but the lock was committed: the transaction is still unfinished.
    assert_eq!(
        db.unfinished_transactions().unwrap(),
        [(Tid(18), Some(Tid(20)))].into()
    );
    db.unlock_transaction(Tid(20), Tid(18), true, true, false)
        .unwrap();
    db.commit().unwrap();
    let mut db = h.reopen(db);
    let r = found(db.get_object(Oid(1), None, None).unwrap());
    assert_eq!((r.serial, r.data.as_deref()), (Tid(20), Some(&b"lost"[..])));
}

fn deletes_and_prune<H: Harness>(h: &mut H) {
    let mut db = h.fresh(false);
    setup(&mut db);
    populate(&mut db);
    let id0 = db.find_object(Oid(0), Some(Tid(10)), None).unwrap();
    assert!(id0.is_some());
    db.delete_object(Oid(0), Some(Tid(10))).unwrap();
    assert_eq!(db.fetch_object(Oid(0), Tid(10)).unwrap(), None);
    assert!(db.fetch_object(Oid(0), Tid(20)).unwrap().is_some());
    db.delete_object(Oid(2), None).unwrap();
    assert_eq!(
        db.get_object(Oid(2), None, None).unwrap(),
        ObjectLookup::DoesNotExist
    );
    db.delete_transaction(Tid(11)).unwrap();
    assert_eq!(db.get_transaction(Tid(11), false).unwrap(), None);
    assert_eq!(
        db.replication_tid_list(Tid(0), MAX_TID, None, 1).unwrap(),
        vec![Tid(21)]
    );
    db.delete_range(0, Some(Tid(10)), Some(Tid(20))).unwrap();
    assert_eq!(
        db.replication_tid_list(Tid(0), MAX_TID, None, 0).unwrap(),
        vec![Tid(10)]
    );
    assert_eq!(db.last_ids_in(0).unwrap(), (None, None));
    // Only referenced data remains: 1@10, 1@11, 3@11.
    assert!(db.orphan_data().unwrap().is_empty());
    let stray = db
        .store_data(Some(&make_checksum(b"x")), Oid(1), b"x", 0, None)
        .unwrap()
        .unwrap();
    assert_eq!(db.orphan_data().unwrap(), vec![stray]);
    assert_eq!(db.prune_data(&[stray]).unwrap(), 1);
    assert!(db.orphan_data().unwrap().is_empty());
}

fn pack_partition_rules<H: Harness>(h: &mut H) {
    let mut db = h.fresh(false);
    setup(&mut db);
    commit_txn(
        &mut db,
        10,
        &[(0, Some(b"a0")), (2, Some(b"b0")), (4, Some(b"c0"))],
    );
    commit_txn(&mut db, 20, &[(0, Some(b"a1")), (2, None)]);
    commit_txn(&mut db, 30, &[(0, Some(b"a2")), (4, Some(b"c1"))]);
    // Pack at 20: oid 0 keeps 20 and 30; oid 2 (deleted at 20) vanishes;
    // oid 4 has a single record at or before 20: kept.
    let (last, n) = db
        .pack_partition(
            0,
            PackScope::From {
                min_oid: Oid(0),
                limit: 100,
            },
            Tid(20),
        )
        .unwrap();
    assert_eq!((last, n), (Some(Oid(4)), 2));
    let hist = |db: &mut H::B, o| {
        db.object_history(Oid(o), 0, 10)
            .unwrap()
            .map(|h| h.into_iter().map(|x| x.0 .0).collect::<Vec<_>>())
    };
    assert_eq!(hist(&mut db, 0), Some(vec![30, 20]));
    assert_eq!(hist(&mut db, 2), None);
    assert_eq!(hist(&mut db, 4), Some(vec![30, 10]));
    assert!(db.orphan_data().unwrap().is_empty());
    // Paging: one oid at a time.
    let (last, _) = db
        .pack_partition(
            0,
            PackScope::From {
                min_oid: Oid(1),
                limit: 1,
            },
            Tid(30),
        )
        .unwrap();
    assert_eq!(last, Some(Oid(4)));
    assert_eq!(hist(&mut db, 4), Some(vec![30]));
    let (last, _) = db
        .pack_partition(
            0,
            PackScope::From {
                min_oid: Oid(5),
                limit: 1,
            },
            Tid(30),
        )
        .unwrap();
    assert_eq!(last, None);
    // Partial pack of listed oids.
    let (last, n) = db
        .pack_partition(0, PackScope::Oids(&[Oid(0)]), Tid(30))
        .unwrap();
    assert_eq!((last, n), (None, 1));
    assert_eq!(hist(&mut db, 0), Some(vec![30]));
    // An empty list, and oids without records: nothing.
    let (last, n) = db.pack_partition(0, PackScope::Oids(&[]), Tid(30)).unwrap();
    assert_eq!((last, n), (None, 0));
    let (last, n) = db
        .pack_partition(0, PackScope::Oids(&[Oid(8), Oid(12)]), Tid(30))
        .unwrap();
    assert_eq!((last, n), (None, 0));
    // Idempotent: packing again at the same tid deletes nothing.
    let (_, n) = db
        .pack_partition(
            0,
            PackScope::From {
                min_oid: Oid(0),
                limit: 100,
            },
            Tid(30),
        )
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(hist(&mut db, 0), Some(vec![30]));
    assert_eq!(hist(&mut db, 4), Some(vec![30]));
}

fn pack_orders_flow<H: Harness>(h: &mut H) {
    let mut db = h.fresh(false);
    setup(&mut db);
    // A transaction carrying a pack order, through 2PC.
    let (ttid, tid) = (38, 40);
    vote(&mut db, ttid, &[(1, Some(b"x"))]);
    db.store_pack_order(&PackOrder {
        id: Tid(ttid),
        approved: None,
        partial: true,
        oids: Some(vec![Oid(1), Oid(3)]),
        pack_tid: Tid(30),
    })
    .unwrap();
    db.lock_transaction(Tid(tid), Tid(ttid), true).unwrap();
    db.unlock_transaction(Tid(tid), Tid(ttid), true, true, true)
        .unwrap();
    db.commit().unwrap();
    let t = db.get_transaction(Tid(tid), false).unwrap().unwrap();
    let order = PackOrder {
        id: Tid(tid),
        approved: Some(true),
        partial: true,
        oids: Some(vec![Oid(1), Oid(3)]),
        pack_tid: Tid(30),
    };
    assert_eq!(t.pack, Some(order.clone()));
    assert_eq!(db.pack_orders(Tid::ZERO).unwrap(), vec![order.clone()]);
    assert!(db.pack_orders(Tid(41)).unwrap().is_empty());
    db.store_pack_order(&PackOrder {
        id: Tid(50),
        approved: None,
        partial: false,
        oids: None,
        pack_tid: Tid(45),
    })
    .unwrap();
    assert_eq!(
        db.sign_pack_orders(&[], &[Tid(50), Tid(60)]).unwrap(),
        vec![Tid(50)]
    );
    assert_eq!(db.pack_orders(Tid(50)).unwrap()[0].approved, Some(false));
    assert!(db.sign_pack_orders(&[Tid(70)], &[]).unwrap().is_empty());
    // Completed packs per cell.
    assert_eq!(db.partition_packed(1).unwrap(), Some(0));
    db.set_partition_packed(1, 40).unwrap();
    assert_eq!(db.partition_packed(1).unwrap(), Some(40));
    assert_eq!(
        db.packed_ids(true).unwrap(),
        [(0, Tid(0)), (1, Tid(40))].into()
    );
}

fn partition_table_changes<H: Harness>(h: &mut H) {
    let mut db = h.fresh(false);
    setup(&mut db);
    commit_txn(&mut db, 10, &[(1, Some(b"x"))]);
    let other = NID + 1;
    // Partition 1 becomes OUT_OF_DATE here (it was readable: replicated up
    // to its last tid), another node gets partition 0, and 2 is new.
    let drop = db
        .change_partition_table(
            2,
            1,
            &[
                (1, NID, CellState::OutOfDate),
                (0, other, CellState::UpToDate),
                (2, NID, CellState::OutOfDate),
            ],
            false,
            Tid(7),
        )
        .unwrap();
    assert!(drop.is_empty());
    let mut rows = db.pt_rows().unwrap();
    rows.sort_by_key(|r| (r.partition, r.nid));
    assert_eq!(
        rows,
        vec![
            PtRow {
                partition: 0,
                nid: NID,
                tid: -1,
                pack: Some(0)
            },
            PtRow {
                partition: 0,
                nid: other,
                tid: -1,
                pack: None
            },
            PtRow {
                partition: 1,
                nid: NID,
                tid: 10,
                pack: Some(0)
            },
            PtRow {
                partition: 2,
                nid: NID,
                tid: 0,
                pack: Some(7)
            },
        ]
    );
    assert_eq!(db.ptid().unwrap(), Some(2));
    assert_eq!(db.num_replicas().unwrap(), Some(1));
    let view = db.partition_view().unwrap();
    assert_eq!(view.np, 3);
    assert_eq!(view.readable, [0].into());
    db.update_cell_tid(1, Tid(20)).unwrap();
    assert!(db.pt_rows().unwrap().contains(&PtRow {
        partition: 1,
        nid: NID,
        tid: 20,
        pack: Some(0)
    }));
    assert_eq!(
        db.partition_table().unwrap().iter().find(|c| c.0 == 1),
        Some(&(1, NID, CellState::OutOfDate))
    );
    // Discarding partition 0 here: to drop.
    let drop = db
        .change_partition_table(3, 1, &[(0, NID, CellState::Discarded)], false, Tid(7))
        .unwrap();
    assert_eq!(drop, [0].into());
    // A reset keeps only the listed cells; others' data is to drop.
    let drop = db
        .change_partition_table(4, 0, &[(2, NID, CellState::UpToDate)], true, Tid::ZERO)
        .unwrap();
    assert_eq!(drop, [0, 1].into());
    assert_eq!(db.pt_rows().unwrap().len(), 1);
}

fn non_readable_and_out_of_range<H: Harness>(h: &mut H) {
    let mut db = h.fresh(false);
    assert!(matches!(
        db.store_data(None, Oid(1), b"", 0, None),
        Err(DbError::NoPartitionTable)
    ));
    db.set_nid(NID).unwrap();
    db.change_partition_table(
        1,
        0,
        &[
            (0, NID, CellState::UpToDate),
            (1, NID, CellState::OutOfDate),
        ],
        true,
        Tid::ZERO,
    )
    .unwrap();
    assert!(matches!(
        db.get_object(Oid(1), None, None),
        Err(DbError::NonReadableCell { partition: 1 })
    ));
    assert!(matches!(
        db.get_transaction(Tid(3), false),
        Err(DbError::NonReadableCell { partition: 1 })
    ));
    assert!(matches!(
        db.tid_list(0, 1, &[0, 1]),
        Err(DbError::NonReadableCell { partition: 1 })
    ));
    assert!(matches!(
        db.oids_from(1, 1, Oid(0), MAX_TID),
        Err(DbError::NonReadableCell { partition: 1 })
    ));
    assert!(db.get_object(Oid(2), None, None).is_ok());
    // Undo data of a non-readable cell: the given data is stored instead.
    let sum = make_checksum(b"z");
    assert!(db
        .store_data(Some(&sum), Oid(1), b"z", 0, Some(Tid(5)))
        .unwrap()
        .is_some());
    // Ids of 2^63 and more do not fit NEO's columns.
    let big = ObjectRef {
        oid: Oid(1 << 63),
        data_id: None,
        value_tid: None,
    };
    assert!(matches!(
        db.store_transaction(Tid(2), &[big], None, true),
        Err(DbError::OutOfRange { what: "oid", .. })
    ));
    assert!(matches!(
        db.lock_transaction(Tid(u64::MAX), Tid(2), false),
        Err(DbError::OutOfRange { .. })
    ));
}

fn unfinished_after_restart<H: Harness>(h: &mut H) {
    let mut db = h.fresh(false);
    setup(&mut db);
    let refs = vote(&mut db, 48, &[(1, Some(b"pending"))]);
    let id = refs[0].data_id.unwrap();
    let mut db = h.reopen(db);
    // Held references are rebuilt from tobj.
    assert_eq!(db.held_data().count(id), 1);
    assert_eq!(db.unfinished_data_ids().unwrap(), vec![id]);
    assert_eq!(db.prune_data(&[id]).unwrap(), 0);
    db.drop_partitions_temporary(Some(&[1])).unwrap();
    assert_eq!(
        db.unfinished_transactions().unwrap(),
        [(Tid(48), None)].into()
    );
    db.drop_partitions_temporary(Some(&[0])).unwrap();
    assert!(db.unfinished_transactions().unwrap().is_empty());
}

fn drop_and_replication_helpers<H: Harness>(h: &mut H) {
    let mut db = h.fresh(false);
    setup(&mut db);
    populate(&mut db);
    // Cell states drive where replication resumes.
    assert_eq!(
        db.cell_next_tids().unwrap(),
        vec![(0, CellNext::Readable), (1, CellNext::Readable)]
    );
    db.change_partition_table(2, 0, &[(1, NID, CellState::OutOfDate)], false, Tid(0))
        .unwrap();
    assert_eq!(
        db.cell_next_tids().unwrap(),
        vec![
            (0, CellNext::Readable),
            (1, CellNext::Replicate { next_tid: Tid(22) })
        ]
    );
    db.set_backup_tid(Some(Tid(15))).unwrap();
    assert_eq!(
        db.cell_next_tids().unwrap()[0],
        (
            0,
            CellNext::Backup {
                trans: Tid(21),
                obj: Tid(21)
            }
        )
    );
    // Temporarily readable while replicating.
    assert!(matches!(
        db.get_object(Oid(1), None, None),
        Err(DbError::NonReadableCell { partition: 1 })
    ));
    db.set_temporarily_readable(1, true).unwrap();
    assert_eq!(
        found(db.get_object(Oid(1), None, None).unwrap()).serial,
        Tid(11)
    );
    db.set_temporarily_readable(1, false).unwrap();
    assert!(db.get_object(Oid(1), None, None).is_err());
    // Completed packs only go down.
    db.set_partition_packed(0, 30).unwrap();
    db.update_completed_pack_by_replication(0, Tid(40)).unwrap();
    assert_eq!(db.partition_packed(0).unwrap(), Some(30));
    db.update_completed_pack_by_replication(0, Tid(20)).unwrap();
    assert_eq!(db.partition_packed(0).unwrap(), Some(20));
    // Dropping partition 0 in steps of 2 records: (10,0) (10,2), then
    // (20,0) (20,4), then (21,2), then its 2 transactions, then nothing.
    let data = |db: &mut H::B, oid, tid| {
        let r = db.fetch_object(Oid(oid), Tid(tid)).unwrap().unwrap();
        r.data.unwrap()
    };
    let a = data(&mut db, 0, 10);
    let _ = a;
    let mut steps = Vec::new();
    loop {
        let step = db.drop_partition_step(0, 2).unwrap();
        match &step {
            DropStep::Objects(ids) => {
                assert!(!ids.is_empty());
                steps.push(ids.len() as u64);
                assert_eq!(db.prune_data(ids).unwrap(), ids.len());
            }
            DropStep::Transactions(0) => break,
            DropStep::Transactions(n) => steps.push(100 + n),
        }
        assert!(steps.len() < 10);
    }
    assert_eq!(steps, vec![2, 2, 1, 102]);
    assert!(db.orphan_data().unwrap().is_empty());
    assert_eq!(db.last_ids_in(0).unwrap(), (None, None));
    assert_eq!(db.last_tid_in(0, None).unwrap(), None);
    assert_eq!(db.last_tid_in(1, None).unwrap(), Some(Tid(21)));
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// One random step on a backend; returns a description of every result
/// so two backends can be compared.
fn random_step(db: &mut dyn Backend, rng: &mut Rng, tid: &mut u64, log: &mut Vec<String>) {
    let np = u64::from(NP);
    let any_tid = |rng: &mut Rng, tid: u64| Tid(rng.below(tid + 3));
    let oid = Oid(rng.below(7));
    match rng.below(14) {
        // Commit (or abort, one time in 5) a transaction of 1-3 objects.
        0..=4 => {
            *tid += 1 + rng.below(3);
            let (t, ttid) = (*tid, *tid - np);
            let abort = rng.below(5) == 0;
            let mut refs = Vec::new();
            let mut held = Vec::new();
            let mut failed = None;
            let mut oids: Vec<u64> = (0..1 + rng.below(3)).map(|_| rng.below(7)).collect();
            oids.sort_unstable();
            oids.dedup();
            for &o in &oids {
                let kind = rng.below(6);
                // Undo: reuse the data of a recent serial, if it exists.
                let undo = (kind == 1).then(|| match db.last_object_tid(Oid(o)) {
                    Ok(Some(last)) if rng.below(2) == 0 => last,
                    _ => Tid(t.saturating_sub(1 + rng.below(6))),
                });
                let r = match kind {
                    0 => Ok(None),
                    1 => db.hold_data(None, Oid(o), b"", 0, undo),
                    _ => {
                        let d = format!("data {}", rng.below(4)).into_bytes();
                        db.hold_data(Some(&make_checksum(&d)), Oid(o), &d, 0, None)
                    }
                };
                match r {
                    Ok(id) => {
                        held.extend(id);
                        refs.push(ObjectRef {
                            oid: Oid(o),
                            data_id: id,
                            value_tid: undo,
                        });
                    }
                    Err(e) => failed = Some(format!("{e:?}")),
                }
            }
            log.push(format!("commit {t}: {failed:?}"));
            if failed.is_none() {
                db.store_transaction(Tid(ttid), &refs, Some(&meta(ttid, &oids)), true)
                    .unwrap();
                db.commit().unwrap();
            }
            if abort || failed.is_some() {
                db.abort_transaction(Tid(ttid)).unwrap();
                db.release_data(&held, true).unwrap();
                db.commit().unwrap();
                *tid -= 1;
            } else {
                db.lock_transaction(Tid(t), Tid(ttid), false).unwrap();
                db.unlock_transaction(Tid(t), Tid(ttid), true, true, false)
                    .unwrap();
                db.commit().unwrap();
            }
        }
        5 => {
            let at = (rng.below(2) == 0).then(|| any_tid(rng, *tid));
            let before = (rng.below(2) == 0).then(|| any_tid(rng, *tid));
            log.push(format!("{:?}", db.get_object(oid, at, before)));
        }
        6 => log.push(format!(
            "{:?}",
            db.object_history(oid, rng.below(3), rng.below(4))
        )),
        7 => {
            let p = rng.below(np) as u32;
            let (a, b) = (any_tid(rng, *tid), any_tid(rng, *tid));
            let len = (rng.below(2) == 0).then(|| rng.below(5));
            log.push(format!(
                "{:?} {:?} {:?} {:?}",
                db.check_tid_range(p, len, a, b),
                db.check_serial_range(p, len, a, b, oid),
                db.replication_tid_list(a, b, len, p),
                db.replication_object_list(a, b, len, p, oid),
            ));
        }
        8 => {
            let p = rng.below(np) as u32;
            let t = any_tid(rng, *tid);
            log.push(format!(
                "{:?} {:?}",
                db.oids_from(p, 1 + rng.below(3), oid, t),
                db.tid_list(rng.below(3), 1 + rng.below(4), &[p])
            ));
        }
        9 => {
            let ltid = (rng.below(2) == 0).then(|| any_tid(rng, *tid));
            let current = (rng.below(4) == 0).then(|| any_tid(rng, *tid));
            log.push(format!(
                "{:?}",
                db.find_undo_tid(oid, ltid, any_tid(rng, *tid), current)
            ));
        }
        10 => {
            let serial = (rng.below(2) == 0).then(|| any_tid(rng, *tid));
            db.delete_object(oid, serial).unwrap();
            db.commit().unwrap();
        }
        11 => {
            let p = rng.below(np) as u32;
            let t = any_tid(rng, *tid);
            let r = if rng.below(2) == 0 {
                db.pack_partition(p, PackScope::Oids(&[oid, Oid(oid.0 + np)]), t)
            } else {
                let limit = 1 + rng.below(3);
                db.pack_partition(
                    p,
                    PackScope::From {
                        min_oid: oid,
                        limit,
                    },
                    t,
                )
            };
            log.push(format!("pack {r:?}"));
            db.commit().unwrap();
        }
        12 if rng.below(4) == 0 => {
            let t = Tid(1 + rng.below(*tid + 1));
            db.set_truncate_tid(Some(t)).unwrap();
            db.commit().unwrap();
            db.truncate().unwrap();
            log.push(format!("truncate {t:?}"));
        }
        _ => log.push(format!(
            "{:?} {:?} {:?} {:?}",
            db.last_ids(),
            db.orphan_data(),
            db.first_tid(),
            db.unfinished_transactions()
        )),
    }
}

/// The same random operations on both backends give the same answers.
#[test]
fn backends_agree_on_random_operations() {
    let dir = tempfile::tempdir().unwrap();
    for seed in 1..=8u64 {
        let path = dir.path().join(format!("r{seed}.sqlite"));
        // Durability is not what this tests: spare the fsyncs.
        let fast = SqliteOptions {
            pragmas: vec![("synchronous".into(), "OFF".into())],
            ..SqliteOptions::default()
        };
        let mut sql = SqliteBackend::open(&path, &fast).unwrap();
        let mut mem = MemoryBackend::new(false);
        setup(&mut sql);
        setup(&mut mem);
        let (mut r1, mut r2) = (Rng(seed * 0x9e37_79b9), Rng(seed * 0x9e37_79b9));
        let (mut t1, mut t2) = (10, 10);
        let (mut l1, mut l2) = (Vec::new(), Vec::new());
        for step in 0..300 {
            random_step(&mut sql, &mut r1, &mut t1, &mut l1);
            random_step(&mut mem, &mut r2, &mut t2, &mut l2);
            assert_eq!(l1, l2, "seed {seed} step {step}");
        }
        let count = |what: &str| l1.iter().filter(|l| l.contains(what)).count();
        eprintln!(
            "seed {seed}: {} results, {} found, {} undo records, {} commits failed",
            l1.len(),
            count("Found"),
            count("data_serial: Some"),
            count("Some(\"UndoPack")
        );
        assert!(count("Found") > 5 && count("commit") > 40);
        // Both survive a restart with the same content.
        let mut sql = SqliteBackend::open(&path, &SqliteOptions::default())
            .map(|_| unreachable!("still locked"))
            .unwrap_or_else(|_| {
                drop(sql);
                SqliteBackend::open(&path, &SqliteOptions::default()).unwrap()
            });
        let mut mem = MemoryBackend::open(mem.disk());
        let (mut r1, mut r2) = (Rng(seed), Rng(seed));
        for _ in 0..50 {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            random_step(&mut sql, &mut r1, &mut t1, &mut a);
            random_step(&mut mem, &mut r2, &mut t2, &mut b);
            assert_eq!(a, b, "seed {seed} after restart");
        }
    }
}

// ----- SQLite only -----

fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("neo.sqlite");
    (dir, path)
}

/// NEO's schema, as read from `neo/storage/database/sqlite.py`:
/// `(table, without rowid, [(column, type, not null, pk position)])`.
#[allow(clippy::type_complexity)]
fn expected_schema() -> Vec<(
    &'static str,
    bool,
    Vec<(&'static str, &'static str, bool, u32)>,
)> {
    const I: &str = "INTEGER";
    const B: &str = "BLOB";
    const BOOL: &str = "BOOLEAN";
    vec![
        (
            "config",
            true,
            vec![("name", "TEXT", true, 1), ("value", "TEXT", false, 0)],
        ),
        (
            "pt",
            true,
            vec![
                ("partition", I, true, 1),
                ("nid", I, true, 2),
                ("tid", I, true, 0),
                ("pack", I, false, 0),
            ],
        ),
        (
            "pack",
            false,
            vec![
                ("tid", I, false, 1),
                ("approved", BOOL, false, 0),
                ("partial", BOOL, true, 0),
                ("oids", B, false, 0),
                ("pack_tid", I, false, 0),
            ],
        ),
        (
            "trans",
            true,
            vec![
                ("partition", I, true, 1),
                ("tid", I, true, 2),
                ("packed", BOOL, true, 0),
                ("oids", B, true, 0),
                ("user", B, true, 0),
                ("description", B, true, 0),
                ("ext", B, true, 0),
                ("ttid", I, true, 0),
            ],
        ),
        (
            "obj",
            true,
            vec![
                ("partition", I, true, 1),
                ("oid", I, true, 2),
                ("tid", I, true, 3),
                ("data_id", I, false, 0),
                ("value_tid", I, false, 0),
            ],
        ),
        (
            "data",
            false,
            vec![
                ("id", I, false, 1),
                ("hash", B, true, 0),
                ("compression", I, true, 0),
                ("value", B, true, 0),
            ],
        ),
        (
            "ttrans",
            false,
            vec![
                ("partition", I, true, 0),
                ("tid", I, false, 0),
                ("packed", BOOL, true, 0),
                ("oids", B, true, 0),
                ("user", B, true, 0),
                ("description", B, true, 0),
                ("ext", B, true, 0),
                ("ttid", I, true, 0),
            ],
        ),
        (
            "tobj",
            true,
            vec![
                ("partition", I, true, 0),
                ("oid", I, true, 2),
                ("tid", I, true, 1),
                ("data_id", I, false, 0),
                ("value_tid", I, false, 0),
            ],
        ),
    ]
}

#[test]
fn sqlite_schema_matches_neo() {
    let (_dir, path) = temp_db();
    let opts = SqliteOptions {
        dedup: true,
        ..Default::default()
    };
    let db = SqliteBackend::open(&path, &opts).unwrap();
    let c = db.connection();
    let mut tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables.sort();
    let mut want: Vec<&str> = expected_schema().iter().map(|t| t.0).collect();
    want.sort();
    assert_eq!(tables, want);
    for (table, without_rowid, cols) in expected_schema() {
        let found: Vec<(String, String, bool, u32)> = c
            .prepare(&format!("PRAGMA table_info({table})"))
            .unwrap()
            .query_map([], |r| Ok((r.get(1)?, r.get(2)?, r.get(3)?, r.get(5)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let want: Vec<(String, String, bool, u32)> = cols
            .iter()
            .map(|&(n, t, nn, pk)| (n.to_owned(), t.to_owned(), nn, pk))
            .collect();
        assert_eq!(found, want, "table {table}");
        let has_rowid = c.prepare(&format!("SELECT rowid FROM {table}")).is_ok();
        assert_eq!(!has_rowid, without_rowid, "table {table} WITHOUT ROWID");
    }
    // Indexes: (table, name, unique, columns).
    let want_idx = [
        ("obj", "_obj_i1", false, vec!["partition", "tid", "oid"]),
        ("obj", "_obj_i2", false, vec!["data_id"]),
        ("data", "_data_i1", true, vec!["hash", "compression"]),
    ];
    for (table, name, unique, cols) in want_idx {
        let list: Vec<(String, bool, String)> = c
            .prepare(&format!("PRAGMA index_list({table})"))
            .unwrap()
            .query_map([], |r| Ok((r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            list.contains(&(name.to_owned(), unique, "c".to_owned())),
            "{table}: {list:?}"
        );
        let found: Vec<String> = c
            .prepare(&format!("PRAGMA index_info({name})"))
            .unwrap()
            .query_map([], |r| r.get(2))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(found, cols, "index {name}");
    }
    // Without --dedup, no unique index on data.
    drop(db);
    let (_dir2, path2) = temp_db();
    let db = SqliteBackend::open(&path2, &SqliteOptions::default()).unwrap();
    assert!(!db.dedup());
    let n: i64 = db
        .connection()
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type='index' AND name='_data_i1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 0);
    // Durability settings: SQLite's defaults, as NEO (no pragma).
    let sync: i64 = db
        .connection()
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 2, "synchronous=FULL");
    let mode: String = db
        .connection()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
}

#[test]
fn sqlite_stored_representation() {
    let (_dir, path) = temp_db();
    let mut db = SqliteBackend::open(&path, &SqliteOptions::default()).unwrap();
    setup(&mut db);
    commit_txn(&mut db, 10, &[(1, Some(b"abc")), (2, None)]);
    let c = db.connection();
    let (p, tid, oids, ttid): (i64, i64, Vec<u8>, i64) = c
        .query_row("SELECT partition, tid, oids, ttid FROM trans", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .unwrap();
    assert_eq!((p, tid, ttid), (0, 10, 8));
    assert_eq!(oids, [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2]);
    type ObjRow = (i64, i64, i64, Option<i64>, Option<i64>);
    let rows: Vec<ObjRow> = c
        .prepare("SELECT * FROM obj ORDER BY oid")
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows,
        vec![(1, 1, 10, Some(1 << 48), None), (0, 2, 10, None, None)]
    );
    let pt: Vec<(i64, i64, i64, Option<i64>)> = c
        .prepare("SELECT * FROM pt")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        pt,
        vec![(0, NID as i64, -1, Some(0)), (1, NID as i64, -1, Some(0))]
    );
    let cfg: Vec<(String, String)> = c
        .prepare("SELECT * FROM config ORDER BY name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let nid = NID.to_string();
    assert_eq!(
        cfg.iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
        vec![
            ("nid", nid.as_str()),
            ("ptid", "1"),
            ("replicas", "0"),
            ("version", "4")
        ]
    );
}

#[test]
fn sqlite_refuses_foreign_and_wrong_version() {
    let (dir, path) = temp_db();
    std::fs::write(&path, vec![0x5a; 4096]).unwrap();
    let e = SqliteBackend::open(&path, &SqliteOptions::default()).unwrap_err();
    assert!(matches!(e, DbError::NotNeoDatabase { .. }), "{e}");
    assert!(e.to_string().contains(&path.display().to_string()));

    let other = dir.path().join("other.sqlite");
    let c = rusqlite::Connection::open(&other).unwrap();
    c.execute_batch("CREATE TABLE foo (x INTEGER)").unwrap();
    drop(c);
    let e = SqliteBackend::open(&other, &SqliteOptions::default()).unwrap_err();
    assert!(matches!(e, DbError::NotNeoDatabase { .. }), "{e}");

    for (v, name) in [("x", "vx.sqlite"), ("5", "v5.sqlite")] {
        let p = dir.path().join(name);
        drop(SqliteBackend::open(&p, &SqliteOptions::default()).unwrap());
        let c = rusqlite::Connection::open(&p).unwrap();
        c.execute("UPDATE config SET value=? WHERE name='version'", [v])
            .unwrap();
        drop(c);
        let e = SqliteBackend::open(&p, &SqliteOptions::default()).unwrap_err();
        assert!(
            matches!(&e, DbError::UnsupportedVersion { found: Some(f), expected: 4, .. } if f == v),
            "{e}"
        );
        assert!(e.to_string().contains(name), "{e}");
    }

    // A NEO-looking table with the wrong columns.
    let p = dir.path().join("bad-columns.sqlite");
    let c = rusqlite::Connection::open(&p).unwrap();
    c.execute_batch(
        "CREATE TABLE config (name TEXT NOT NULL PRIMARY KEY, value TEXT) WITHOUT ROWID;
         INSERT INTO config VALUES ('version', '4');
         CREATE TABLE obj (partition INTEGER, oid INTEGER)",
    )
    .unwrap();
    drop(c);
    let e = SqliteBackend::open(&p, &SqliteOptions::default()).unwrap_err();
    assert!(matches!(e, DbError::NotNeoDatabase { .. }), "{e}");
}

#[test]
fn sqlite_lock_and_reset() {
    let (_dir, path) = temp_db();
    let mut db = SqliteBackend::open(&path, &SqliteOptions::default()).unwrap();
    setup(&mut db);
    let e = SqliteBackend::open(&path, &SqliteOptions::default()).unwrap_err();
    assert!(matches!(e, DbError::Locked { .. }), "{e}");
    drop(db);
    let opts = SqliteOptions {
        reset: true,
        ..Default::default()
    };
    let mut db = SqliteBackend::open(&path, &opts).unwrap();
    assert_eq!(db.nid().unwrap(), None);
    assert!(db.pt_rows().unwrap().is_empty());
}

#[test]
fn sqlite_parse_database_arg() {
    let (p, o) = SqliteOptions::parse_database("/var/lib/neo.sqlite").unwrap();
    assert_eq!(
        (p, o),
        (
            PathBuf::from("/var/lib/neo.sqlite"),
            SqliteOptions::default()
        )
    );
    let (p, o) =
        SqliteOptions::parse_database("file:/tmp/x.db?synchronous=OFF&journal_mode=WAL").unwrap();
    assert_eq!(p, PathBuf::from("/tmp/x.db"));
    assert_eq!(
        o.pragmas,
        vec![
            ("synchronous".to_owned(), "OFF".to_owned()),
            ("journal_mode".to_owned(), "WAL".to_owned())
        ]
    );
    assert!(SqliteOptions::parse_database("file:/x?foo=1").is_err());
    assert!(SqliteOptions::parse_database("file:/x?synchronous=1&synchronous=2").is_err());
    assert!(SqliteOptions::parse_database("file:/x?synchronous=1;DROP").is_err());
    // The pragmas are applied.
    let (_dir, path) = temp_db();
    let arg = format!(
        "file:{}?synchronous=NORMAL&journal_mode=WAL",
        path.display()
    );
    let (p, o) = SqliteOptions::parse_database(&arg).unwrap();
    let db = SqliteBackend::open(&p, &o).unwrap();
    let sync: i64 = db
        .connection()
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 1);
}

/// Run as a child process by [`sqlite_commit_survives_sigkill`]: commits a
/// transaction, says so, leaves another one uncommitted and waits to be
/// killed. Ignored: only meaningful as that child.
#[test]
#[ignore = "child process of sqlite_commit_survives_sigkill"]
fn sigkill_child() {
    let Some(path) = std::env::var_os("NEO_SQLITE_SIGKILL_CHILD") else {
        return;
    };
    use std::io::Write;
    let mut db =
        SqliteBackend::open(PathBuf::from(path).as_path(), &SqliteOptions::default()).unwrap();
    setup(&mut db);
    commit_txn(&mut db, 10, &[(1, Some(b"durable"))]);
    vote(&mut db, 18, &[(2, Some(b"voted"))]);
    // Uncommitted: a stray data row and a config change.
    let stray = db
        .store_data(Some(&make_checksum(b"u")), Oid(1), b"u", 0, None)
        .unwrap();
    assert_eq!(stray, Some((1 << 48) + 1));
    db.set_config("name", Some("lost")).unwrap();
    println!("COMMITTED");
    std::io::stdout().flush().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(60));
}

#[test]
fn sqlite_commit_survives_sigkill() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let (_dir, path) = temp_db();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "storage::tests::sigkill_child",
            "--ignored",
            "--nocapture",
        ])
        .env("NEO_SQLITE_SIGKILL_CHILD", &path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut ok = false;
    for line in BufReader::new(out).lines() {
        if line.unwrap().contains("COMMITTED") {
            ok = true;
            break;
        }
    }
    assert!(ok, "the child did not commit");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let mut db = SqliteBackend::open(&path, &SqliteOptions::default()).unwrap();
    let r = found(db.get_object(Oid(1), None, None).unwrap());
    assert_eq!(r.data.as_deref(), Some(&b"durable"[..]));
    assert_eq!(db.name().unwrap(), None);
    assert_eq!(
        db.unfinished_transactions().unwrap(),
        [(Tid(18), None)].into()
    );
    // The journal was rolled back: the stray data row is gone.
    assert_eq!(db.load_data((1 << 48) + 1).unwrap(), None);
    assert!(db.load_data(1 << 48).unwrap().is_some());
}

// ----- memory only: crash injection -----

#[test]
fn memory_crash_loses_uncommitted() {
    let mut db = MemoryBackend::new(false);
    setup(&mut db);
    commit_txn(&mut db, 10, &[(1, Some(b"a"))]);
    vote(&mut db, 18, &[(1, Some(b"b"))]);
    db.lock_transaction(Tid(20), Tid(18), false).unwrap();
    db.unlock_transaction(Tid(20), Tid(18), true, true, false)
        .unwrap();
    db.crash();
    assert!(matches!(db.last_ids(), Err(DbError::Crashed)));
    assert!(matches!(db.commit(), Err(DbError::Crashed)));
    let mut db = MemoryBackend::open(db.disk());
    assert_eq!(db.last_object_tid(Oid(1)).unwrap(), Some(Tid(10)));
    assert_eq!(
        db.unfinished_transactions().unwrap(),
        [(Tid(18), Some(Tid(20)))].into()
    );
}

/// Crashes a 2PC sequence after every possible number of operations: after
/// a restart, the transaction is either fully visible or not at all, and
/// visible exactly when the final commit was acknowledged (or reached the
/// disk while crashing).
#[test]
fn memory_crash_at_every_step() {
    for reaches_disk in [false, true] {
        let mut steps = 0;
        loop {
            let mut db = MemoryBackend::new(false);
            setup(&mut db);
            commit_txn(&mut db, 10, &[(1, Some(b"old"))]);
            db.set_crash_plan(CrashPlan {
                after_ops: Some(steps),
                commit_reaches_disk: reaches_disk,
            });
            let run = |db: &mut MemoryBackend| -> DbResult<()> {
                let d = b"new";
                let id = db.hold_data(Some(&make_checksum(d)), Oid(1), d, 0, None)?;
                let id2 = db.hold_data(Some(&make_checksum(b"x")), Oid(2), b"x", 0, None)?;
                let refs = [
                    ObjectRef {
                        oid: Oid(1),
                        data_id: id,
                        value_tid: None,
                    },
                    ObjectRef {
                        oid: Oid(2),
                        data_id: id2,
                        value_tid: None,
                    },
                ];
                db.store_transaction(Tid(18), &refs, Some(&meta(18, &[1, 2])), true)?;
                db.commit()?;
                db.lock_transaction(Tid(20), Tid(18), false)?;
                db.unlock_transaction(Tid(20), Tid(18), true, true, false)?;
                db.commit()
            };
            let acked = run(&mut db).is_ok();
            let crashed = db.is_crashed();
            let mut db = MemoryBackend::open(db.disk());
            let o1 = db.last_object_tid(Oid(1)).unwrap();
            let o2 = db.last_object_tid(Oid(2)).unwrap();
            let t = db.get_transaction(Tid(20), false).unwrap().is_some();
            assert_eq!(
                o1 == Some(Tid(20)),
                o2 == Some(Tid(20)),
                "atomic objects, step {steps}"
            );
            assert_eq!(
                o1 == Some(Tid(20)),
                t,
                "objects with metadata, step {steps}"
            );
            if acked {
                assert!(t, "acknowledged commit lost at step {steps}");
            }
            if !reaches_disk && !acked {
                assert!(!t, "unacknowledged commit visible at step {steps}");
            }
            // The old revision is always there.
            let r = found(db.get_object(Oid(1), Some(Tid(10)), None).unwrap());
            assert_eq!(r.data.as_deref(), Some(&b"old"[..]));
            // A half-done 2PC is recoverable: finish or drop it.
            match db.unfinished_transactions().unwrap().get(&Tid(18)) {
                Some(Some(tid)) => {
                    db.unlock_transaction(*tid, Tid(18), true, true, false)
                        .unwrap();
                    db.commit().unwrap();
                    assert!(db.get_transaction(Tid(20), false).unwrap().is_some());
                }
                Some(None) => db.drop_unfinished_data().unwrap(),
                None => {}
            }
            assert!(db.orphan_data().unwrap().is_empty(), "step {steps}");
            if !crashed {
                break;
            }
            steps += 1;
            assert!(steps < 100, "never finished");
        }
        assert!(steps > 5, "too few steps: {steps}");
    }
}

/// The daemon moves backends to blocking threads and may box them.
#[test]
fn backends_are_send_and_object_safe() {
    fn send<T: Send + 'static>() {}
    send::<SqliteBackend>();
    send::<MemoryBackend>();
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    error::<DbError>();
    let mut boxed: Vec<Box<dyn Backend + Send>> = vec![Box::new(MemoryBackend::new(false))];
    let (_dir, path) = temp_db();
    boxed.push(Box::new(
        SqliteBackend::open(&path, &SqliteOptions::default()).unwrap(),
    ));
    for db in &mut boxed {
        setup(db.as_mut());
        commit_txn(db.as_mut(), 10, &[(1, Some(b"x"))]);
        assert_eq!(db.last_object_tid(Oid(1)).unwrap(), Some(Tid(10)));
    }
}

/// Bad values written behind our back are reported, not trusted.
#[test]
fn sqlite_reports_corrupted_rows() {
    let (_dir, path) = temp_db();
    let mut db = SqliteBackend::open(&path, &SqliteOptions::default()).unwrap();
    setup(&mut db);
    commit_txn(&mut db, 10, &[(2, Some(b"x"))]);
    drop(db);
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "UPDATE trans SET oids=x'00010203040506';
         UPDATE data SET hash=x'0102';
         INSERT INTO obj VALUES (0, 4, -5, NULL, NULL);
         INSERT INTO obj VALUES (0, 6, 12, NULL, -1);",
    )
    .unwrap();
    drop(c);
    let mut db = SqliteBackend::open(&path, &SqliteOptions::default()).unwrap();
    let corrupted = |r: Result<(), DbError>| match r {
        Err(DbError::Corrupted { what }) => what,
        other => panic!("expected Corrupted, got {other:?}"),
    };
    let w = corrupted(db.get_transaction(Tid(10), false).map(|_| ()));
    assert!(w.contains("oids length"), "{w}");
    let w = corrupted(db.get_object(Oid(2), None, None).map(|_| ()));
    assert!(w.contains("hash of 2 bytes"), "{w}");
    corrupted(db.get_object(Oid(4), None, None).map(|_| ()));
    corrupted(db.get_object(Oid(6), None, None).map(|_| ()));
    corrupted(db.object_history(Oid(4), 0, 10).map(|_| ()));
}

/// A database of NEO before schema versions (no `config.version`, `pt` with
/// old state numbers, `obj` keyed by tid) is upgraded as NEO upgrades it.
#[test]
fn sqlite_upgrades_old_schema() {
    let (dir, path) = temp_db();
    let old_schema = "
        CREATE TABLE config (name TEXT NOT NULL PRIMARY KEY, value TEXT) WITHOUT ROWID;
        CREATE TABLE pt (rid INTEGER NOT NULL, nid INTEGER NOT NULL,
                         state INTEGER NOT NULL, PRIMARY KEY (rid, nid));
        CREATE TABLE trans (partition INTEGER NOT NULL, tid INTEGER NOT NULL,
            packed BOOLEAN NOT NULL, oids BLOB NOT NULL, user BLOB NOT NULL,
            description BLOB NOT NULL, ext BLOB NOT NULL, ttid INTEGER NOT NULL,
            PRIMARY KEY (partition, tid)) WITHOUT ROWID;
        CREATE TABLE obj (partition INTEGER NOT NULL, oid INTEGER NOT NULL,
            tid INTEGER NOT NULL, data_id INTEGER, value_tid INTEGER,
            PRIMARY KEY (partition, tid, oid));
        CREATE INDEX _obj_i1 ON obj(partition, oid, tid);
        CREATE TABLE data (id INTEGER PRIMARY KEY, hash BLOB NOT NULL,
            compression INTEGER NOT NULL, value BLOB NOT NULL);
        CREATE TABLE ttrans (partition INTEGER NOT NULL, tid INTEGER NOT NULL,
            packed BOOLEAN NOT NULL, oids BLOB NOT NULL, user BLOB NOT NULL,
            description BLOB NOT NULL, ext BLOB NOT NULL, ttid INTEGER NOT NULL);
        CREATE TABLE tobj (partition INTEGER NOT NULL, oid INTEGER NOT NULL,
            tid INTEGER NOT NULL, data_id INTEGER, value_tid INTEGER,
            PRIMARY KEY (tid, oid)) WITHOUT ROWID;
        INSERT INTO config VALUES ('name', 'old'), ('nid', '1'), ('partitions', '2'),
            ('replicas', '1'), ('ptid', '9');
        -- old states: UP_TO_DATE 0, OUT_OF_DATE 1, FEEDING 2, CORRUPTED 4
        INSERT INTO pt VALUES (0, 1, 0), (1, 1, 1), (0, 2, 2), (1, 2, 4);
        INSERT INTO data VALUES (7, zeroblob(20), 0, x'6f6c64');
        INSERT INTO obj VALUES (0, 4, 10, 7, NULL);
        INSERT INTO trans VALUES (0, 10, 0, x'0000000000000004', x'', x'', x'', 10);
    ";
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(old_schema).unwrap();
    drop(c);
    let mut db = SqliteBackend::open(&path, &SqliteOptions::default()).unwrap();
    assert_eq!(db.version().unwrap().as_deref(), Some("4"));
    assert_eq!(db.config("partitions").unwrap(), None);
    let mut rows = db.pt_rows().unwrap();
    rows.sort_by_key(|r| (r.partition, r.nid));
    let row = |partition, nid, tid, pack| PtRow {
        partition,
        nid,
        tid,
        pack,
    };
    assert_eq!(
        rows,
        vec![
            row(0, 1, -1, Some(0)),
            row(0, 2, -2, None),
            row(1, 1, 0, Some(0)),
            row(1, 2, -3, None),
        ]
    );
    assert_eq!(
        db.partition_table().unwrap()[1..],
        [
            (0, 2, CellState::Feeding),
            (1, 1, CellState::OutOfDate),
            (1, 2, CellState::Corrupted)
        ]
    );
    let r = found(db.get_object(Oid(4), None, None).unwrap());
    assert_eq!((r.serial, r.data.as_deref()), (Tid(10), Some(&b"old"[..])));
    assert_eq!(
        db.get_transaction(Tid(10), false)
            .unwrap()
            .unwrap()
            .meta
            .oids,
        vec![Oid(4)]
    );
    drop(db);
    // The upgraded file has exactly the current schema.
    let (_d2, fresh) = temp_db();
    drop(SqliteBackend::open(&fresh, &SqliteOptions::default()).unwrap());
    let columns = |p: &std::path::Path| {
        let c = rusqlite::Connection::open(p).unwrap();
        let mut out = Vec::new();
        for (t, _, _) in expected_schema() {
            let cols: Vec<(String, String, bool, u32)> = c
                .prepare(&format!("PRAGMA table_info({t})"))
                .unwrap()
                .query_map([], |r| Ok((r.get(1)?, r.get(2)?, r.get(3)?, r.get(5)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let idx: Vec<String> = c
                .prepare(&format!("PRAGMA index_list({t})"))
                .unwrap()
                .query_map([], |r| r.get(1))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let mut idx: Vec<Vec<String>> = idx
                .iter()
                .filter(|i| i.starts_with('_'))
                .map(|i| {
                    c.prepare(&format!("PRAGMA index_info({i})"))
                        .unwrap()
                        .query_map([], |r| r.get(2))
                        .unwrap()
                        .collect::<Result<_, _>>()
                        .unwrap()
                })
                .collect();
            idx.sort();
            out.push((t, cols, idx));
        }
        out
    };
    assert_eq!(columns(&path), columns(&fresh));

    // Unfinished transactions block the upgrade, as in NEO.
    let p = dir.path().join("unfinished.sqlite");
    let c = rusqlite::Connection::open(&p).unwrap();
    c.execute_batch(old_schema).unwrap();
    c.execute_batch("INSERT INTO tobj VALUES (0, 6, 20, NULL, NULL)")
        .unwrap();
    drop(c);
    let e = SqliteBackend::open(&p, &SqliteOptions::default()).unwrap_err();
    assert!(matches!(e, DbError::CannotUpgrade { .. }), "{e}");
    assert!(e.to_string().contains("unfinished.sqlite"), "{e}");
}

/// The load path's reader (`object_reader`) reads while the node commits
/// one transaction after another: each read sees a committed revision or
/// fails at once (busy: the node then serves the load), never an
/// uncommitted or torn state, and every commit succeeds.
#[test]
fn sqlite_reader_during_commits() {
    for journal in ["DELETE", "WAL"] {
        sqlite_reader_during_commits_in(journal);
    }
}

fn sqlite_reader_during_commits_in(journal: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (_dir, path) = temp_db();
    let opts = SqliteOptions {
        pragmas: vec![("journal_mode".into(), journal.into())],
        ..SqliteOptions::default()
    };
    let mut db = SqliteBackend::open(&path, &opts).unwrap();
    setup(&mut db);
    commit_txn(&mut db, 10, &[(1, Some(b"rev 10"))]);
    let mut reader = db.object_reader().unwrap().expect("a reader");
    let view = db.partition_view().unwrap();
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    let reads = std::thread::spawn(move || {
        let (mut ok, mut busy, mut last) = (0, 0, 10);
        while !stop.load(Ordering::Relaxed) {
            match reader.get_object(&view, Oid(1), None, None) {
                Ok(ObjectLookup::Found(r)) => {
                    let serial = r.serial.0;
                    assert!(serial >= last, "went back from {last} to {serial}");
                    let data = r.data.expect("data");
                    assert_eq!(data, format!("rev {serial}").into_bytes());
                    last = serial;
                    ok += 1;
                }
                Ok(other) => panic!("{other:?}"),
                Err(e) => {
                    assert!(e.to_string().contains("locked"), "{e}");
                    busy += 1;
                }
            }
        }
        (ok, busy, last)
    });
    let mut tid = 10;
    for _ in 0..60 {
        tid += 10;
        let data = format!("rev {tid}");
        // The revision is visible to the reader only after the commit.
        commit_txn(&mut db, tid, &[(1, Some(data.as_bytes()))]);
    }
    done.store(true, Ordering::Relaxed);
    let (ok, busy, last) = reads.join().unwrap();
    assert!(ok > 0, "{ok} reads, {busy} busy");
    assert!(last <= tid);
    let mut reader = db.object_reader().unwrap().unwrap();
    let view = db.partition_view().unwrap();
    let r = found(reader.get_object(&view, Oid(1), None, None).unwrap());
    assert_eq!(r.serial, Tid(tid));
    // A snapshot (WAL) shows the commits made before it was taken; once
    // released, the next read sees the latest.
    commit_txn(
        &mut db,
        tid + 10,
        &[(1, Some(format!("rev {}", tid + 10).as_bytes()))],
    );
    let r = found(reader.get_object(&view, Oid(1), None, None).unwrap());
    // (Older than SNAPSHOT_AGE, a snapshot is renewed: on a slow disk the
    // commit may take that long.)
    let fresh = r.serial == Tid(tid + 10);
    assert!(
        fresh || (journal == "WAL" && r.serial == Tid(tid)),
        "{journal}"
    );
    reader.release(std::time::Duration::ZERO);
    let r = found(reader.get_object(&view, Oid(1), None, None).unwrap());
    assert_eq!(r.serial, Tid(tid + 10));
    // Not readable here: an error, as from the node's handle.
    let mut view = view;
    view.readable.clear();
    assert!(reader.get_object(&view, Oid(1), None, None).is_err());
}
