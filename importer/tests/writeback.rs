//! Clients commit during the import: their transactions (tids above the
//! source's last) are read back merged with the source's history, stored
//! in the destination, and with `writeback` appended to the source, which
//! ZODB then reads (fstest clean, new transactions present), also after a
//! crash between the database commit and the append.

mod common;

use std::path::Path;

use common::*;
use fsformat::{FileStorage, Oid, Tid};
use neo_importer::Importer;
use neo_server::storage::{Backend, ObjectLookup};
use serde_json::Value;

fn hex_tid(v: &Value) -> Tid {
    Tid(u64::from_str_radix(v.as_str().unwrap(), 16).unwrap())
}

/// An object with two revisions not imported after `done` transactions:
/// `(oid, older serial, its data sha1)`.
fn undo_target(l: &Value, done: usize) -> (Oid, Tid, String) {
    let first_left = hex_tid(&l["transactions"][done]["tid"]);
    for o in l["objects"].as_array().unwrap() {
        let revs = o["revisions"].as_array().unwrap();
        if revs.len() >= 3 {
            let older = &revs[1];
            let serial = hex_tid(&older["serial"]);
            if serial >= first_left && older["load_serial"]["data_sha1"].is_string() {
                let oid = Oid(u64::from_str_radix(o["oid"].as_str().unwrap(), 16).unwrap());
                return (
                    oid,
                    serial,
                    older["load_serial"]["data_sha1"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
            }
        }
    }
    panic!("no object to undo");
}

fn found(l: ObjectLookup) -> neo_server::storage::ObjectRecord {
    match l {
        ObjectLookup::Found(r) => r,
        other => panic!("expected a record, got {other:?}"),
    }
}

/// Client commits during an import: merged reads, then everything
/// imported, then the source re-read with fsformat and with ZODB.
fn commits_during_import<B: Backend>(
    db: B,
    source: &Path,
    writeback: bool,
) -> (Importer<B>, Vec<Tid>) {
    let l = listing("basic");
    let extra = if writeback { "writeback = true" } else { "" };
    let cfg = config(source, extra);
    let mut imp = open(&cfg, db);
    imp.import_some(10).unwrap();
    let ltid = imp.last_source_tid();
    let loid = imp.last_ids().unwrap().1.unwrap();
    let (uoid, userial, usha) = undo_target(&l, 10);
    let root_before = found(imp.get_object(Oid(0), None, None).unwrap());
    let t1 = Tid(ltid.0 + 0x100);
    let t2 = Tid(ltid.0 + 0x200);
    let new_oid = Oid(loid.0 + 1);
    client_commit(
        &mut imp,
        t1,
        &[
            (Oid(0), Some(b"new root"), None),
            (new_oid, Some(b"new object"), None),
        ],
    );
    client_commit(&mut imp, t2, &[(uoid, None, Some(userial))]);
    for step in 0..3 {
        // Root: the client's revision on top of the source's history.
        let r = found(imp.get_object(Oid(0), None, None).unwrap());
        assert_eq!((r.serial, r.data.as_deref()), (t1, Some(&b"new root"[..])));
        let prev = found(imp.get_object(Oid(0), None, Some(t1)).unwrap());
        assert_eq!(prev.serial, root_before.serial, "step {step}");
        assert_eq!(
            prev.next_serial,
            Some(t1),
            "step {step}: next serial from the destination"
        );
        let h = imp.object_history(Oid(0), 0, 100).unwrap().unwrap();
        assert_eq!(h[0], (t1, 8));
        assert_eq!(h[1].0, root_before.serial);
        assert_eq!(imp.last_object_tid(Oid(0)).unwrap(), Some(t1));
        // The new object.
        let r = found(imp.get_object(new_oid, None, None).unwrap());
        assert_eq!(r.data.as_deref(), Some(&b"new object"[..]));
        assert_eq!(
            imp.get_object(new_oid, None, Some(t1)).unwrap(),
            ObjectLookup::NotFoundAt
        );
        // The undo restored the data of a revision imported or not.
        let r = found(imp.get_object(uoid, None, None).unwrap());
        assert_eq!(r.serial, t2);
        assert_eq!(r.data_serial, Some(userial));
        assert_eq!(
            sha1_hex(
                &neo_importer::decompress(r.compression.unwrap(), r.data.as_ref().unwrap())
                    .unwrap()
            ),
            usha
        );
        assert_eq!(
            imp.object_history(uoid, 0, 1).unwrap().unwrap(),
            vec![(t2, 0)]
        );
        let undo = imp.find_undo_tid(uoid, None, t2, None).unwrap().unwrap();
        assert_eq!(undo.current_tid, Some(t2));
        // Transactions.
        let all: Vec<u32> = (0..NP).collect();
        let tids = imp.tid_list(0, 3, &all).unwrap();
        assert_eq!(tids[..2], [t2, t1]);
        assert_eq!(tids[2], ltid);
        assert_eq!(imp.last_ids().unwrap().0, Some(t2));
        let t = imp.get_transaction(t1, false).unwrap().unwrap();
        assert_eq!(t.meta.oids, vec![Oid(0), new_oid]);
        imp.import_some(15).unwrap();
    }
    assert!(imp.is_finished());
    (imp, vec![t1, t2])
}

#[test]
fn commits_during_import_memory() {
    let (mut imp, _) = commits_during_import(memory_db(), &fixture("basic"), false);
    // Untouched objects still read like ZODB, from the destination alone.
    let l = listing("basic");
    let (uoid, _, _) = undo_target(&l, 10);
    let mut checked = 0;
    for o in l["objects"].as_array().unwrap() {
        let oid = Oid(u64::from_str_radix(o["oid"].as_str().unwrap(), 16).unwrap());
        if oid == Oid(0) || oid == uoid {
            continue;
        }
        let r = found(imp.get_object(oid, None, None).unwrap());
        assert_eq!(r.serial.to_string(), o["load"]["serial"].as_str().unwrap());
        let raw =
            neo_importer::decompress(r.compression.unwrap(), r.data.as_ref().unwrap()).unwrap();
        assert_eq!(sha1_hex(&raw), o["load"]["data_sha1"].as_str().unwrap());
        checked += 1;
    }
    assert!(checked > 300);
}

#[test]
fn writeback_appends_to_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("Data.fs");
    std::fs::copy(fixture("basic"), &src).unwrap();
    let orig_len = std::fs::metadata(&src).unwrap().len();
    let dbp = dir.path().join("neo.sqlite");
    let (imp, tids) = commits_during_import(sqlite_db(&dbp), &src, true);
    drop(imp);
    let check = |what: &str| {
        let st = FileStorage::open(&src).unwrap();
        assert_eq!(st.last_transaction(), tids[1], "{what}");
        assert_eq!(
            st.load(Oid(0)).unwrap(),
            (&b"new root"[..], tids[0]),
            "{what}"
        );
        let out = oracle_check(&src);
        assert_eq!(out["fstest"], "ok", "{what}: {out}");
        let txns = out["listing"]["transactions"].as_array().unwrap();
        let n = txns.len();
        let l = listing("basic");
        assert_eq!(n, l["transactions"].as_array().unwrap().len() + 2, "{what}");
        assert_eq!(hex_tid(&txns[n - 2]["tid"]), tids[0]);
        let r = &txns[n - 2]["records"][0];
        assert_eq!(r["data_sha1"].as_str().unwrap(), sha1_hex(b"new root"));
        let undo = &txns[n - 1]["records"][0];
        assert_eq!(
            undo["stored_len"], 0,
            "{what}: undo written as a backpointer"
        );
        assert!(undo["data_txn"].is_string(), "{what}: {undo}");
        assert!(out["listing"]["open_error"].is_null());
    };
    check("after writeback");
    // A crash after the database commit, before (or while) appending: the
    // file lost the last transaction and ends with half of it.
    let full = std::fs::read(&src).unwrap();
    let st = FileStorage::open(&src).unwrap();
    let (last_pos, _) = st.last_txn().unwrap();
    drop(st);
    let mut cut = full[..last_pos as usize].to_vec();
    cut.extend_from_slice(&full[last_pos as usize..last_pos as usize + 30]);
    std::fs::write(&src, &cut).unwrap();
    let cfg = config(&src, "writeback = true");
    let imp = Importer::open(&cfg, sqlite_db(&dbp)).unwrap();
    assert!(imp.is_finished());
    drop(imp);
    assert_eq!(std::fs::read(&src).unwrap(), full, "rewritten identically");
    check("after crash and restart");
    assert!(std::fs::metadata(&src).unwrap().len() > orig_len);
}

/// A restart during the import finds the clients' commits, and the
/// node's timed background step finishes the import.
#[test]
fn restart_keeps_new_commits_and_timed_steps_finish() {
    let cfg = config(&fixture("basic"), "");
    let mut imp = open(&cfg, memory_db());
    let p = imp.import_for(std::time::Duration::ZERO).unwrap();
    assert_eq!(p.txns_done, 40, "one timed step imports a chunk of 64");
    let dir_ltid = imp.last_source_tid();
    let t1 = Tid(dir_ltid.0 + 7);
    let disk = {
        let mut fresh = open(&cfg, memory_db());
        fresh.import_some(5).unwrap();
        client_commit(&mut fresh, t1, &[(Oid(0), Some(b"after"), None)]);
        fresh.into_db().disk().clone()
    };
    let mut imp = open(&cfg, neo_server::storage::MemoryBackend::open(&disk));
    assert_eq!(imp.progress().txns_done, 5);
    let r = found(imp.get_object(Oid(0), None, None).unwrap());
    assert_eq!((r.serial, r.data.as_deref()), (t1, Some(&b"after"[..])));
    let mut steps = 0;
    while !imp.is_finished() {
        imp.import_for(std::time::Duration::from_millis(1)).unwrap();
        steps += 1;
        assert!(steps < 100);
    }
    let r = found(imp.get_object(Oid(0), None, None).unwrap());
    assert_eq!(r.serial, t1);
    assert_eq!(imp.last_ids().unwrap().0, Some(t1));
}
