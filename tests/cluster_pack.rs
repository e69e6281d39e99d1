//! End-to-end pack (NEO 1.12+): the client commits a pack order and waits
//! for it (`WaitForPack`), the storages execute it in the background.
//! After a pack at T, revisions older than the one current at T are gone
//! (loadSerial/loadBefore fail, an undo store pointing to them gets
//! UNDO_PACK_ERROR), current data
//! is intact, an object deleted (undo of its creation) before T vanishes.
//! Scenarios: two storages with one replica (both pack: checked again
//! through the survivor after a SIGKILL), a storage added after a pack
//! (replicates packed data, then takes part in the next pack), a restart
//! after the pack, and `--disable-pack`. Every scenario runs on SQLite and on MySQL.

mod cluster_common;

use std::time::Duration;

use cluster_common::*;
use neo_e2e::{local, Daemon};
use neo_proto::{ErrorCode, Oid, Tid, ZERO_TID};
use neo_server::client::{Client, ClientError};

const OP: Duration = Duration::from_secs(20);
/// Objects of the history (oids 0..N, so that every partition has some).
const N: u64 = 8;

/// What was committed: the tids of the three revisions of every object,
/// and the undo that deleted the last object.
struct History {
    t1: Vec<Tid>,
    t2: Tid,
    t3: Tid,
    deleted: Oid,
}

/// Every object created (one transaction each), modified twice (two
/// transactions for all); oid N (created with the first ones) is
/// deleted by the undo of its creation between the two modifications.
async fn history(a: &Client) -> History {
    let mut t1 = Vec::new();
    for i in 0..N {
        let data = format!("v1 {i}");
        t1.push(
            commit(a, "create", &[(Oid(i), ZERO_TID, data.as_bytes())])
                .await
                .expect("create"),
        );
    }
    let deleted = Oid(N);
    let created = commit(a, "create doomed", &[(deleted, ZERO_TID, b"doomed")])
        .await
        .expect("create doomed");
    let v2: Vec<(Oid, Tid, Vec<u8>)> = (0..N)
        .map(|i| (Oid(i), t1[i as usize], format!("v2 {i}").into_bytes()))
        .collect();
    let objs: Vec<(Oid, Tid, &[u8])> = v2.iter().map(|(o, s, d)| (*o, *s, &d[..])).collect();
    let t2 = commit(a, "v2", &objs).await.expect("v2");
    let mut txn = a.tpc_begin(meta("undo creation")).await.expect("begin");
    let undone = a.undo(&mut txn, created).await.expect("undo");
    assert_eq!(undone, [deleted]);
    a.tpc_finish(txn).await.expect("undo commit");
    let v3: Vec<(Oid, Tid, Vec<u8>)> = (0..N)
        .map(|i| (Oid(i), t2, format!("v3 {i}").into_bytes()))
        .collect();
    let objs: Vec<(Oid, Tid, &[u8])> = v3.iter().map(|(o, s, d)| (*o, *s, &d[..])).collect();
    let t3 = commit(a, "v3", &objs).await.expect("v3");
    History {
        t1,
        t2,
        t3,
        deleted,
    }
}

/// Everything is still there (no pack, or before it).
async fn check_unpacked(a: &Client, h: &History) {
    for i in 0..N {
        let r = a
            .load_serial(Oid(i), h.t1[i as usize])
            .await
            .expect("loadSerial v1");
        assert_eq!(r.data, format!("v1 {i}").into_bytes());
    }
    assert!(matches!(
        a.load(h.deleted).await,
        Err(ClientError::CreationUndone { .. })
    ));
}

/// The state after a pack at or after `h.t2` and before `h.t3`: v1 is
/// gone, v2 (current at the pack tid) and v3 are intact.
async fn check_packed(a: &Client, h: &History, what: &str) {
    for i in 0..N {
        let oid = Oid(i);
        match a.load_serial(oid, h.t1[i as usize]).await {
            Err(ClientError::NotFound { .. }) => {}
            other => panic!("{what}: loadSerial v1 of {oid}: {other:?}"),
        }
        let before = a.load_before(oid, h.t2).await.expect("loadBefore t2");
        assert!(before.is_none(), "{what}: loadBefore t2 of {oid}");
        let r = a.load_serial(oid, h.t2).await.expect("loadSerial v2");
        assert_eq!(r.data, format!("v2 {i}").into_bytes(), "{what}");
        let r = a.load(oid).await.expect("load");
        assert_eq!(
            (r.data, r.serial),
            (format!("v3 {i}").into_bytes(), h.t3),
            "{what}"
        );
    }
}

/// The deleted object is gone entirely once packed after its deletion.
async fn check_deleted_gone(a: &Client, h: &History, what: &str) {
    match a.load(h.deleted).await {
        Err(ClientError::OidDoesNotExist(_)) => {}
        other => panic!("{what}: load of the deleted object: {other:?}"),
    }
}

fn two_storages_with_a_replica_both_pack(db: Db) {
    let Some(mut c) = Cluster::on(db, "pack_replica", 2) else {
        return;
    };
    c.replicas = 1;
    c.start_all();
    c.bootstrap();
    let rt = runtime();
    let a = rt
        .block_on(within(OP, "connect", Client::connect(c.client_config())))
        .expect("client");
    let h = rt.block_on(within(OP, "history", history(&a)));
    rt.block_on(within(OP, "before the pack", check_unpacked(&a, &h)));
    // Pack just before t3, after the undo: the deletion goes too.
    let pack_tid = Tid(h.t3.0 - 1);
    let id = rt
        .block_on(within(OP, "pack", a.pack(pack_tid, None, true)))
        .expect("pack");
    assert!(id.is_some_and(|id| id > h.t3), "{id:?}");
    rt.block_on(within(OP, "after the pack", async {
        check_packed(&a, &h, "after the pack").await;
        check_deleted_gone(&a, &h, "after the pack").await;
        // An undo store back to v1 (a back-pointer to a packed revision,
        // as an undo computed before the pack sends it): UNDO_PACK_ERROR.
        let mut txn = a.tpc_begin(meta("undo across")).await.expect("begin");
        let data = b"v1 0";
        let stored = a
            .store_raw(&mut txn, Oid(0), h.t3, Some(data), Some(h.t1[0]))
            .await;
        let r = match stored {
            Ok(()) => a.tpc_vote(&mut txn).await,
            e => e,
        };
        a.tpc_abort(txn).await;
        assert!(
            matches!(
                r,
                Err(ClientError::Remote {
                    code: ErrorCode::UndoPackError,
                    ..
                })
            ),
            "undo across the pack: {r:?}"
        );
    }));
    // Both storages packed: the survivor of a SIGKILL answers the same.
    if let Some(s) = c.storages[0].as_mut() {
        s.kill();
    }
    rt.block_on(within(OP, "after the kill", async {
        check_packed(&a, &h, "storage 2 alone").await;
        check_deleted_gone(&a, &h, "storage 2 alone").await;
        a.close().await;
    }));
}

fn pack_survives_a_restart_and_packs_again(db: Db) {
    let Some(mut c) = Cluster::on(db, "pack_restart", 1) else {
        return;
    };
    c.start_all();
    c.bootstrap();
    let rt = runtime();
    let h = rt.block_on(within(OP, "first run", async {
        let a = Client::connect(c.client_config()).await.expect("client");
        let h = history(&a).await;
        // A pack at t2: v1 goes, the deletion (after t2) stays.
        a.pack(h.t2, None, true).await.expect("pack");
        check_packed(&a, &h, "after the pack").await;
        a.close().await;
        h
    }));
    c.stop();
    // Restart: the storage is known, so the cluster starts by itself.
    c.start_all();
    c.wait_state("RUNNING", STEP);
    rt.block_on(within(OP, "after the restart", async {
        let a = Client::connect(c.client_config()).await.expect("client");
        check_packed(&a, &h, "after the restart").await;
        assert!(matches!(
            a.load(h.deleted).await,
            Err(ClientError::CreationUndone { .. })
        ));
        // A second pack, after the deletion.
        a.pack(Tid(h.t3.0 - 1), None, true).await.expect("pack 2");
        check_deleted_gone(&a, &h, "after pack 2").await;
        check_packed(&a, &h, "after pack 2").await;
        a.close().await;
    }));
}

fn disable_pack_keeps_everything(db: Db) {
    let Some(mut c) = Cluster::on(db, "pack_disabled", 1) else {
        return;
    };
    c.start_master();
    let mut args = c.storage_args(0, &c.name.clone());
    args.push("--disable-pack".into());
    c.storages[0] = Some(Daemon::spawn(
        "storage0",
        c.dir.path(),
        &c.bins.storage,
        &args,
    ));
    assert!(neo_e2e::wait_listening(local(c.storage_ports[0]), STEP));
    c.start_admin();
    c.bootstrap();
    let rt = runtime();
    rt.block_on(within(OP, "disabled", async {
        let a = Client::connect(c.client_config()).await.expect("client");
        let h = history(&a).await;
        // The storage reports the order completed without packing.
        a.pack(Tid(h.t3.0 - 1), None, true).await.expect("pack");
        check_unpacked(&a, &h).await;
        a.close().await;
    }));
}

fn storage_added_after_a_pack_gets_packed_data_and_packs_next(db: Db) {
    let Some(mut c) = Cluster::on(db, "pack_added", 2) else {
        return;
    };
    c.replicas = 1;
    c.start_master();
    c.start_storage(0);
    c.start_admin();
    c.bootstrap();
    let rt = runtime();
    let a = rt
        .block_on(within(OP, "connect", Client::connect(c.client_config())))
        .expect("client");
    let h = rt.block_on(within(OP, "history", history(&a)));
    rt.block_on(within(OP, "pack 1", a.pack(Tid(h.t3.0 - 1), None, true)))
        .expect("pack 1");
    // A second storage replicates from the packed one.
    c.start_storage(1);
    c.add_pending("S2");
    let (code, out, err) = c.neoctl(&["tweak"]);
    assert_eq!(code, 0, "{out}{err}");
    c.wait_pt_until(
        |pt| pt.contains("S2 R UUUU") && pt.contains("S1 R UUUU"),
        Duration::from_secs(30),
    );
    // A second pack at t3 (v2 goes): both storages must complete it.
    rt.block_on(within(OP, "pack 2", a.pack(h.t3, None, true)))
        .expect("pack 2");
    if let Some(s) = c.storages[0].as_mut() {
        s.kill();
    }
    c.wait_pt_until(|pt| pt.contains("S1 D "), OP);
    rt.block_on(within(OP, "S2 alone", async {
        check_deleted_gone(&a, &h, "S2 alone").await;
        for i in 0..N {
            let oid = Oid(i);
            for serial in [h.t1[i as usize], h.t2] {
                match a.load_serial(oid, serial).await {
                    Err(ClientError::NotFound { .. }) => {}
                    other => panic!("S2 alone: loadSerial {serial} of {oid}: {other:?}"),
                }
            }
            let r = a.load(oid).await.expect("load");
            assert_eq!((r.data, r.serial), (format!("v3 {i}").into_bytes(), h.t3));
        }
        a.close().await;
    }));
}

backend_tests!(
    two_storages_with_a_replica_both_pack,
    storage_added_after_a_pack_gets_packed_data_and_packs_next,
    pack_survives_a_restart_and_packs_again,
    disable_pack_keeps_everything
);
