//! Pack scenarios of the storage node in [`Sim`], the master scripted as
//! NEO's (conversation 07): a commit with a pack order, `NotifyPackSigned`,
//! our `AskPackOrders`, the pack in timer steps, `NotifyPackCompleted`.

use super::*;

const T1: Tid = Tid(0x100);
const T2: Tid = Tid(0x200);
const T3: Tid = Tid(0x300);
/// The pack transaction.
const P: Tid = Tid(0x400);

/// oids 1 and 5 (partition 1) get three revisions, oid 4 (partition 0) is
/// created then deleted (undo of its creation), oid 2 is written once.
fn history(c: &mut Cluster, ci: usize, cc: ConnId) {
    commit(
        c,
        ci,
        cc,
        Tid(0xf0),
        T1,
        &[
            (1, ZERO_TID, b"a1"),
            (2, ZERO_TID, b"b1"),
            (4, ZERO_TID, b"d1"),
            (5, ZERO_TID, b"e1"),
        ],
    );
    let ttid = Tid(0x1f0);
    let del = AskStoreObject {
        oid: Oid(4),
        serial: T1,
        compression: 0,
        checksum: ZERO_HASH,
        data: Bytes::new(),
        data_serial: None,
        ttid,
    };
    assert_eq!(c.sim.request(ci, cc, del), stored(None));
    assert_eq!(c.sim.request(ci, cc, obj(1, T1, ttid, b"a2")), stored(None));
    assert_eq!(c.sim.request(ci, cc, obj(5, T1, ttid, b"e2")), stored(None));
    c.sim.request(ci, cc, meta(ttid, &[4, 1, 5]));
    lock_unlock(c, ttid, T2, false);
    commit(c, ci, cc, Tid(0x2f0), T3, &[(1, T2, b"a3"), (5, T2, b"e3")]);
}

fn lock_unlock(c: &mut Cluster, ttid: Tid, tid: Tid, pack: bool) {
    let (m, mconn) = (c.m, c.mconn);
    assert_eq!(
        c.sim
            .request(m, mconn, AskLockInformation { ttid, tid, pack }),
        Body::AnswerInformationLocked(AnswerInformationLocked { ttid })
    );
    c.sim.send(m, mconn, NotifyUnlockInformation { ttid });
}

/// A transaction with a pack order (NEO's client `pack`).
fn commit_pack(c: &mut Cluster, ci: usize, cc: ConnId, order: PackOrder) {
    let ttid = Tid(P.0 - 4);
    let mut m = meta(ttid, &[]);
    m.description = Bytes::from_static(b"IStorage.pack");
    m.pack = Some(order);
    assert_eq!(
        c.sim.request(ci, cc, m),
        Body::AnswerStoreTransaction(AnswerStoreTransaction {})
    );
    lock_unlock(c, ttid, P, true);
}

/// The requests the master got, taken out of its inbox.
fn master_requests(c: &mut Cluster) -> Vec<(u32, Body)> {
    let inbox = &mut c.sim.node_mut::<Peer>(c.m).inbox;
    let (r, rest): (Vec<_>, Vec<_>) = std::mem::take(inbox)
        .into_iter()
        .partition(|(_, p)| p.body.kind() == PacketKind::Request);
    *inbox = rest;
    r.into_iter().map(|(_, p)| (p.id, p.body)).collect()
}

/// The master signs `P`, answers our AskPackOrders with `entry`, lets the
/// pack run; returns what the storage notified (nothing if it did not
/// ask).
fn sign_and_pack(
    c: &mut Cluster,
    entry: (Tid, Option<bool>, bool, Option<Value>, Tid),
) -> Vec<Body> {
    let (m, mconn) = (c.m, c.mconn);
    c.sim.send(
        m,
        mconn,
        NotifyPackSigned {
            approved: vec![P],
            rejected: vec![],
        },
    );
    let asked = master_requests(c);
    let [(id, Body::AskPackOrders(a))] = &asked[..] else {
        assert!(asked.is_empty(), "{asked:?}");
        return Vec::new();
    };
    assert_eq!(a.pack_id, Tid(1), "the first order after pack 0");
    let id = *id;
    let orders = AnswerPackOrders {
        pack_list: vec![entry],
    };
    c.sim.reply(m, mconn, id, orders);
    c.sim.advance(ms(1));
    c.sim.notifications(m)
}

fn whole_order() -> (Tid, Option<bool>, bool, Option<Value>, Tid) {
    (P, Some(true), false, None, T2)
}

fn serial_of(b: &Body) -> Result<Tid, ErrorCode> {
    match b {
        Body::AnswerObject(o) => Ok(o.serial),
        Body::Error(e) => Err(e.code),
        other => panic!("{other:?}"),
    }
}

/// What NEO's pack at T2 leaves: the revision current at T2 and later
/// ones; nothing of a deletion at or before T2.
fn check_packed(c: &mut Cluster, ci: usize, cc: ConnId) {
    for oid in [1, 5] {
        // loadBefore/loadSerial of what was older than the revision
        // current at T2: gone.
        let a = load(c, ci, cc, oid, None, Some(T2));
        assert_eq!(serial_of(&a), Err(ErrorCode::OidNotFound), "oid {oid}");
        let a = load(c, ci, cc, oid, Some(T1), None);
        assert_eq!(serial_of(&a), Err(ErrorCode::OidNotFound), "oid {oid}");
        // The revision current at T2 and the current one: intact.
        assert_eq!(serial_of(&load(c, ci, cc, oid, Some(T2), None)), Ok(T2));
        assert_eq!(serial_of(&load(c, ci, cc, oid, None, Some(T3))), Ok(T2));
        assert_eq!(serial_of(&load(c, ci, cc, oid, None, None)), Ok(T3));
    }
    // Written once: untouched.
    assert_eq!(serial_of(&load(c, ci, cc, 2, None, None)), Ok(T1));
    assert_eq!(serial_of(&load(c, ci, cc, 2, Some(T1), None)), Ok(T1));
    // Deleted before the pack point: it is not there anymore at all.
    for (at, before) in [(None, None), (Some(T1), None), (None, Some(T2))] {
        let a = load(c, ci, cc, 4, at, before);
        assert_eq!(serial_of(&a), Err(ErrorCode::OidDoesNotExist));
    }
    let db = c.storage().db_mut();
    assert!(db.orphan_data().unwrap().is_empty());
}

#[test]
fn pack_order_is_executed_then_completed() {
    let mut c = running();
    let (ci, cc) = c.client(C1);
    history(&mut c, ci, cc);
    commit_pack(&mut c, ci, cc, (None, T2));
    let n = sign_and_pack(&mut c, whole_order());
    assert_eq!(
        n,
        [Body::NotifyPackCompleted(NotifyPackCompleted {
            pack_id: P
        })]
    );
    assert!(c.storage().packing().is_empty());
    check_packed(&mut c, ci, cc);
    for p in 0..NP {
        assert_eq!(c.storage().db_mut().partition_packed(p).unwrap(), Some(P.0));
    }
    // Undo of T2 (back to T1's data, packed away): UNDO_PACK_ERROR.
    let mut undo = obj(1, T3, Tid(0x5f0), b"a1");
    undo.data_serial = Some(T1);
    let a = c.sim.request(ci, cc, undo);
    assert_eq!(error_code(&a), Some(ErrorCode::UndoPackError), "{a:?}");
    // Nothing more to do: a second signing of the same order is a no-op.
    let (m, mconn) = (c.m, c.mconn);
    c.sim.send(
        m,
        mconn,
        NotifyPackSigned {
            approved: vec![P],
            rejected: vec![],
        },
    );
    c.sim.advance(ms(1));
    assert!(master_requests(&mut c).is_empty());
    assert!(c.sim.notifications(m).is_empty());
}

#[test]
fn partial_pack_only_touches_its_oids() {
    let mut c = running();
    let (ci, cc) = c.client(C1);
    history(&mut c, ci, cc);
    commit_pack(&mut c, ci, cc, (Some(vec![Oid(1), Oid(4)]), T2));
    let oids = Value::Array(
        [1u64, 4]
            .iter()
            .map(|o| Value::Bin(Bytes::copy_from_slice(&o.to_be_bytes())))
            .collect(),
    );
    let n = sign_and_pack(&mut c, (P, Some(true), true, Some(oids), T2));
    assert_eq!(
        n,
        [Body::NotifyPackCompleted(NotifyPackCompleted {
            pack_id: P
        })]
    );
    assert_eq!(
        serial_of(&load(&mut c, ci, cc, 1, Some(T1), None)),
        Err(ErrorCode::OidNotFound)
    );
    assert_eq!(
        serial_of(&load(&mut c, ci, cc, 4, None, None)),
        Err(ErrorCode::OidDoesNotExist)
    );
    // Not in the order: kept.
    assert_eq!(serial_of(&load(&mut c, ci, cc, 5, Some(T1), None)), Ok(T1));
}

#[test]
fn disable_pack_reports_signed_orders_completed() {
    let mut c = identified(MemoryBackend::new(false));
    let (m, mconn) = (c.m, c.mconn);
    c.storage().cfg.disable_pack = true;
    c.sim.send(m, mconn, full_pt(1));
    let Body::AnswerLastIDs(_) = c.sim.request(m, mconn, AskLastIDs {}) else {
        panic!()
    };
    c.sim.send(m, mconn, StartOperation { backup: false });
    // No pack is reported at start.
    assert_eq!(c.sim.notifications(m), [Body::NotifyReady(NotifyReady {})]);
    let (ci, cc) = c.client(C1);
    history(&mut c, ci, cc);
    commit_pack(&mut c, ci, cc, (None, T2));
    c.sim.send(
        m,
        mconn,
        NotifyPackSigned {
            approved: vec![P],
            rejected: vec![],
        },
    );
    c.sim.advance(ms(1));
    assert!(master_requests(&mut c).is_empty());
    assert_eq!(
        c.sim.notifications(m),
        [Body::NotifyPackCompleted(NotifyPackCompleted {
            pack_id: P
        })]
    );
    // Nothing was packed, and the order is not even signed.
    assert_eq!(serial_of(&load(&mut c, ci, cc, 1, Some(T1), None)), Ok(T1));
    assert_eq!(serial_of(&load(&mut c, ci, cc, 4, Some(T1), None)), Ok(T1));
    let orders = c.storage().db_mut().pack_orders(ZERO_TID).unwrap();
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0].approved, Some(true), "approved by the lock");
}

/// The storage restarts on `disk`: recovery, then operation; the master
/// tells the signed orders when it is ready (NEO's `setStorageReady`).
fn restarted(disk: &crate::storage::memory::MemoryDisk) -> Cluster {
    let mut c = identified(MemoryBackend::open(disk));
    c.ts = 2000.0;
    let (m, mconn) = (c.m, c.mconn);
    c.storage().set_pack_batch(1);
    let Body::AnswerLockedTransactions(_) = c.sim.request(m, mconn, AskLockedTransactions {})
    else {
        panic!()
    };
    let Body::AnswerLastIDs(_) = c.sim.request(m, mconn, AskLastIDs {}) else {
        panic!()
    };
    c.sim.send(
        m,
        mconn,
        NotifyClusterInformation {
            state: ClusterState::Running,
        },
    );
    c.sim.send(m, mconn, StartOperation { backup: false });
    assert!(c.storage().is_operational());
    c
}

#[test]
fn a_crash_at_any_point_of_the_pack_resumes_after_restart() {
    let mut crashes = 0;
    for after in 0.. {
        let mut c = running();
        c.storage().set_pack_batch(1);
        let (ci, cc) = c.client(C1);
        history(&mut c, ci, cc);
        commit_pack(&mut c, ci, cc, (None, T2));
        c.sim.advance(ms(1100)); // the deferred commit
        c.storage().db_mut().set_crash_plan(CrashPlan {
            after_ops: Some(after),
            commit_reaches_disk: false,
        });
        let n = sign_and_pack(&mut c, whole_order());
        let stopped = c.storage().is_stopped();
        let disk = c.storage().db().disk().clone();
        drop(c);
        let mut c = restarted(&disk);
        let (ci, cc) = c.client(C1);
        let completed = Body::NotifyPackCompleted(NotifyPackCompleted { pack_id: P });
        if stopped {
            crashes += 1;
            if c.sim.notifications(c.m).contains(&completed) {
                // Every partition was done before the crash.
                check_packed(&mut c, ci, cc);
                continue;
            }
            let n = sign_and_pack(&mut c, whole_order());
            assert!(
                n.contains(&Body::NotifyPackCompleted(NotifyPackCompleted {
                    pack_id: P
                })),
                "crash after {after}: {n:?}"
            );
        } else {
            assert!(n.contains(&Body::NotifyPackCompleted(NotifyPackCompleted {
                pack_id: P
            })));
            // Restarted after a complete pack: completed at once.
            assert!(c.sim.notifications(c.m).contains(&completed));
        }
        check_packed(&mut c, ci, cc);
        if !stopped {
            break;
        }
    }
    assert!(crashes > 20, "only {crashes} crash points");
}

/// Bench (ignored; `cargo test --release -p neo-server --lib pack_bench --
/// --ignored --nocapture`): a SQLite database of `PACK_BENCH_OIDS` oids
/// (default 100000) with three revisions each, packed at the second one
/// by the node; prints the time and the longest step (the longest a
/// client request may wait behind the pack).
#[test]
#[ignore]
fn pack_bench_sqlite() {
    use crate::storage::ObjectRef;
    let n: u64 = std::env::var("PACK_BENCH_OIDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let db =
        SqliteBackend::open(&dir.path().join("bench.sqlite"), &SqliteOptions::default()).unwrap();
    let mut c = identified(db);
    let (m, mconn, s) = (c.m, c.mconn, c.s);
    // As `start`, for another backend.
    c.sim.send(m, mconn, full_pt(1));
    let Body::AnswerLastIDs(_) = c.sim.request(m, mconn, AskLastIDs {}) else {
        panic!()
    };
    c.sim.send(m, mconn, StartOperation { backup: false });
    let _ = c.sim.notifications(m);
    let fill = Instant::now();
    {
        let node = c.sim.node_mut::<StorageNode<SqliteBackend>>(s);
        let db = node.db_mut();
        for (r, tid) in [T1, T2, T3].into_iter().enumerate() {
            let mut objects = Vec::with_capacity(n as usize);
            for oid in 0..n {
                let data = format!("object {oid} revision {r} {}", "x".repeat(100));
                let id = db
                    .store_data(
                        Some(&make_checksum(data.as_bytes())),
                        Oid(oid),
                        data.as_bytes(),
                        0,
                        None,
                    )
                    .unwrap()
                    .expect("a data id");
                objects.push(ObjectRef {
                    oid: Oid(oid),
                    data_id: Some(id),
                    value_tid: None,
                });
            }
            db.store_transaction(tid, &objects, None, false).unwrap();
            db.commit().unwrap();
        }
    }
    eprintln!("filled {n} oids x 3 revisions in {:?}", fill.elapsed());
    let t = Instant::now();
    c.sim.send(
        m,
        mconn,
        NotifyPackSigned {
            approved: vec![P],
            rejected: vec![],
        },
    );
    let asked = master_requests(&mut c);
    let [(id, Body::AskPackOrders(_))] = &asked[..] else {
        panic!("{asked:?}")
    };
    let id = *id;
    let orders = AnswerPackOrders {
        pack_list: vec![whole_order()],
    };
    c.sim.reply(m, mconn, id, orders);
    c.sim.advance(ms(1));
    let elapsed = t.elapsed();
    assert_eq!(
        c.sim.notifications(m),
        [Body::NotifyPackCompleted(NotifyPackCompleted {
            pack_id: P
        })]
    );
    let node = c.sim.node_mut::<StorageNode<SqliteBackend>>(s);
    eprintln!(
        "packed {n} oids ({} records deleted) in {elapsed:?}: {:.0} oids/s, longest step {:?}",
        n,
        n as f64 / elapsed.as_secs_f64(),
        node.packer.longest_step()
    );
    let db = node.db_mut();
    let hist = db
        .object_history(Oid(n / 2), 0, 10)
        .unwrap()
        .expect("history");
    assert_eq!(hist.len(), 2);
}
