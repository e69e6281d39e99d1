//! Importing every ZODB-made fixture, step by step, into the in-memory and
//! the SQLite destinations: at every step (and once done, from the
//! destination alone) everything readable through the `Backend` trait must
//! be what ZODB reads from the source. Also: crash and resume, broken
//! sources.

mod common;

use common::*;
use neo_importer::{ImportError, Importer, KEY_TID};
use neo_server::storage::{Backend, MemoryBackend};

fn import_in_steps<B: Backend>(name: &str, db: B, step: usize) -> Importer<B> {
    let l = listing(name);
    let cfg = config(&fixture(name), "compress = true");
    let mut imp = open(&cfg, db);
    let total = l["transactions"].as_array().unwrap().len() as u64;
    check_listing(&mut imp, &l, &format!("{name} before import"));
    // The storage node does not pack while importing.
    assert!(!imp.pack_allowed(), "{name}: pack allowed while importing");
    let mut n = 0;
    while !imp.is_finished() {
        let p = imp
            .import_some(step)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        n += 1;
        assert_eq!(p.txns_total, total);
        assert!(p.txns_done <= total);
        check_listing(
            &mut imp,
            &l,
            &format!("{name} step {n} ({} txns)", p.txns_done),
        );
        assert!(n <= total as usize + 1, "{name}: import does not end");
    }
    let p = imp.progress();
    assert!(p.finished && p.txns_done == total && p.bytes_done == p.bytes_total);
    assert!(imp.pack_allowed(), "{name}: pack refused once imported");
    imp
}

#[test]
fn fixtures_into_memory_in_steps() {
    for (i, name) in GOOD.iter().enumerate() {
        let imp = import_in_steps(name, memory_db(), 1 + i % 3);
        // The destination alone now answers like ZODB.
        let mut db = imp.into_db();
        let l = listing(name);
        let mut again = open(&config(&fixture(name), ""), MemoryBackend::open(db.disk()));
        assert!(again.is_finished());
        check_listing(&mut again, &l, &format!("{name} reopened"));
        // Nothing imported twice: one obj row per visible record.
        let records: usize = l["transactions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let r = t["records"].as_array().unwrap();
                let mut o: Vec<_> = r.iter().map(|x| x["oid"].as_str().unwrap()).collect();
                o.sort();
                o.dedup();
                o.len()
            })
            .sum();
        let rows: usize = (0..NP)
            .map(|p| {
                db.replication_object_list(
                    fsformat::Tid::ZERO,
                    fsformat::Tid(u64::MAX >> 1),
                    None,
                    p,
                    fsformat::Oid::ZERO,
                )
                .unwrap()
                .len()
            })
            .sum();
        assert_eq!(rows, records, "{name}: obj rows");
    }
}

#[test]
fn fixtures_into_sqlite_in_steps() {
    for name in GOOD {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("neo.sqlite");
        let imp = import_in_steps(name, sqlite_db(&path), 4);
        drop(imp);
        let db = sqlite_db(&path);
        let c = db.connection();
        let l = listing(name);
        let ntx = l["transactions"].as_array().unwrap().len() as i64;
        let trans: i64 = c
            .query_row("SELECT COUNT(*) FROM trans", [], |r| r.get(0))
            .unwrap();
        assert_eq!(trans, ntx, "{name}: trans rows");
        let mut again = open(&config(&fixture(name), ""), db);
        assert!(again.is_finished());
        check_listing(&mut again, &l, &format!("{name} sqlite reopened"));
    }
}

#[test]
fn compressed_rows_are_smaller_and_checksummed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("neo.sqlite");
    // large.fs holds 1.2 MiB of random bytes (kept raw) among small pickles.
    let mut imp = open(
        &config(&fixture("large"), "compress = zlib=9"),
        sqlite_db(&path),
    );
    imp.import_some(usize::MAX).unwrap();
    let c = imp.db().connection();
    let (n1, n0): (i64, i64) = c
        .query_row(
            "SELECT SUM(compression=1), SUM(compression=0) FROM data",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(n1 > 0 && n0 > 0, "compressed {n1}, raw {n0}");
    let mut st = c.prepare("SELECT hash, value FROM data").unwrap();
    let rows = st
        .query_map([], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
        })
        .unwrap();
    for row in rows {
        let (h, v) = row.unwrap();
        assert_eq!(h, neo_server::storage::make_checksum(&v).to_vec());
    }
    // Without compression, every row is raw.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("neo.sqlite");
    let mut imp = open(
        &config(&fixture("basic"), "compress = false"),
        sqlite_db(&path),
    );
    imp.import_some(usize::MAX).unwrap();
    let n1: i64 = imp
        .db()
        .connection()
        .query_row("SELECT COUNT(*) FROM data WHERE compression<>0", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(n1, 0);
}

#[test]
fn crash_and_resume_memory() {
    for name in ["basic", "undo", "packed"] {
        let l = listing(name);
        let cfg = config(&fixture(name), "");
        let mut imp = open(&cfg, memory_db());
        imp.import_some(3).unwrap();
        let committed = imp.imported_tid();
        // Work that dies before its commit.
        imp.import_uncommitted(5).unwrap();
        assert!(imp.imported_tid() > committed);
        let disk = imp.into_db().disk().clone();
        let mut imp = open(&cfg, MemoryBackend::open(&disk));
        assert_eq!(
            imp.imported_tid(),
            committed,
            "{name}: resumes after the last commit"
        );
        assert_eq!(imp.progress().txns_done, 3);
        check_listing(&mut imp, &l, &format!("{name} after crash"));
        while !imp.is_finished() {
            imp.import_some(7).unwrap();
        }
        check_listing(&mut imp, &l, &format!("{name} resumed"));
    }
}

#[test]
fn crash_and_resume_sqlite() {
    let name = "basic";
    let l = listing(name);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("neo.sqlite");
    let cfg = config(&fixture(name), "");
    let mut imp = open(&cfg, sqlite_db(&path));
    imp.import_some(10).unwrap();
    let committed = imp.imported_tid();
    imp.import_uncommitted(12).unwrap();
    drop(imp); // SQLite rolls back the open transaction
    let mut imp = open(&cfg, sqlite_db(&path));
    assert_eq!(imp.imported_tid(), committed);
    assert_eq!(
        imp.db().config(KEY_TID).unwrap().as_deref(),
        Some(committed.to_string().as_str())
    );
    while !imp.is_finished() {
        imp.import_some(9).unwrap();
    }
    check_listing(&mut imp, &l, "basic resumed (sqlite)");
    let c = imp.db().connection();
    let dups: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM (SELECT oid, tid FROM obj GROUP BY oid, tid HAVING COUNT(*) > 1)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(dups, 0);
    let trans: i64 = c
        .query_row("SELECT COUNT(*) FROM trans", [], |r| r.get(0))
        .unwrap();
    assert_eq!(trans as usize, l["transactions"].as_array().unwrap().len());
    // No leaked data rows: every data row is referenced.
    assert!(imp.db().orphan_data().unwrap().is_empty());
}

#[test]
fn import_needs_the_partition_table() {
    let cfg = config(&fixture("small"), "");
    let mut imp = open(&cfg, MemoryBackend::new(false));
    let e = imp.import_some(10).unwrap_err();
    assert!(e.to_string().contains("partition table"), "{e}");
}

/// A damaged source is refused with its file name and the offset.
#[test]
fn broken_sources_name_file_and_offset() {
    for (name, pos) in [
        ("truncated_data", "1229"),
        ("truncated_header", "1229"),
        ("checkpoint_mid", "460"),
        ("checkpoint_last", "1229"),
        ("status_u", "460"),
        ("version_record", "1279"),
    ] {
        let cfg = config(&fixture(name), "");
        let e = Importer::open(&cfg, memory_db()).map(|_| ()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&format!("{name}.fs")), "{name}: {msg}");
        assert!(msg.contains(pos), "{name}: offset {pos} not in {msg}");
    }
    let e = Importer::open(&config(&fixture("empty"), ""), memory_db())
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(e, ImportError::EmptySource { .. }), "{e}");
    assert!(e.to_string().contains("empty.fs"), "{e}");
    let missing = repo().join("testdata/no-such.fs");
    let e = Importer::open(&config(&missing, ""), memory_db())
        .map(|_| ())
        .unwrap_err();
    assert!(e.to_string().contains("no-such.fs"), "{e}");
}

/// Corruption in the middle of the file (not a torn tail).
#[test]
fn corrupt_middle_names_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Data.fs");
    let mut bytes = std::fs::read(fixture("basic")).unwrap();
    let l = listing("basic");
    let t = &l["transactions"][5];
    let pos = t["pos"].as_u64().unwrap() as usize;
    // The redundant length after transaction 5 no longer matches.
    let next = l["transactions"][6]["pos"].as_u64().unwrap() as usize;
    bytes[next - 1] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let e = Importer::open(&config(&path, ""), memory_db())
        .map(|_| ())
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("Data.fs"), "{msg}");
    assert!(msg.contains(&pos.to_string()), "offset {pos} not in {msg}");
}

/// One big step (transactions read and compressed by several threads).
#[test]
fn whole_import_in_one_step() {
    for name in GOOD {
        for compress in ["compress = true", "compress = false"] {
            let mut imp = open(&config(&fixture(name), compress), memory_db());
            let p = imp.import_some(usize::MAX).unwrap();
            assert!(p.finished, "{name}");
            check_listing(
                &mut imp,
                &listing(name),
                &format!("{name} in one step, {compress}"),
            );
        }
    }
}

/// A destination made with `--dedup` stores equal data once.
#[test]
fn dedup_destination_stores_equal_data_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("neo.sqlite");
    let opts = neo_server::storage::SqliteOptions {
        dedup: true,
        ..Default::default()
    };
    let mut db = neo_server::storage::SqliteBackend::open(&path, &opts).unwrap();
    setup_pt(&mut db);
    // undo.fs restores earlier data several times; packed.fs too.
    for name in ["undo", "basic"] {
        let mut imp = open(
            &config(&fixture(name), ""),
            neo_server::storage::MemoryBackend::new(true),
        );
        setup_pt(imp.db());
        imp.import_some(usize::MAX).unwrap();
        check_listing(&mut imp, &listing(name), &format!("{name} dedup (memory)"));
    }
    // A source with equal data in several records.
    let src = dir.path().join("Data.fs");
    let mut w = fsformat::Writer::create(&src, fsformat::Magic::Fs30).unwrap();
    for (i, objs) in [[(1, "same"), (2, "same")], [(3, "same"), (1, "other")]]
        .iter()
        .enumerate()
    {
        let tid = fsformat::Tid(0x03f5_8e00_0000_0000 + (i as u64 + 1) * 0x100);
        let mut t = w
            .begin(tid, fsformat::TxnStatus::Committed, b"", b"", b"")
            .unwrap();
        for &(oid, data) in objs {
            t.store(fsformat::Oid(oid), data.as_bytes()).unwrap();
        }
        t.commit().unwrap();
    }
    w.finish().unwrap();
    let mut imp = open(&config(&src, "compress = false"), db);
    imp.import_some(usize::MAX).unwrap();
    for (oid, want) in [(1, "other"), (2, "same"), (3, "same")] {
        let r = imp
            .find_object(fsformat::Oid(oid), None, None)
            .unwrap()
            .unwrap();
        assert_eq!(r.data.as_deref(), Some(want.as_bytes()));
    }
    let c = imp.db().connection();
    let data: i64 = c
        .query_row("SELECT COUNT(*) FROM data", [], |r| r.get(0))
        .unwrap();
    let distinct: i64 = c
        .query_row("SELECT COUNT(DISTINCT hash) FROM data", [], |r| r.get(0))
        .unwrap();
    assert_eq!(data, 2);
    assert_eq!(data, distinct, "one row per distinct data");
}

/// The load path's reader (`object_reader`, the storage node's loads off
/// its thread): refused while importing (most objects are still in the
/// source), then the destination's answers, equal to the Importer's.
#[test]
fn reader_serves_once_imported() {
    use neo_server::storage::ObjectLookup;
    let dir = tempfile::tempdir().unwrap();
    let mut imp = open(
        &config(&fixture("basic"), ""),
        sqlite_db(&dir.path().join("neo.sqlite")),
    );
    let mut reader = imp.object_reader().unwrap().expect("SQLite has a reader");
    let view = imp.partition_view().unwrap();
    let oid = fsformat::Oid(0);
    let e = reader.get_object(&view, oid, None, None).unwrap_err();
    assert!(e.to_string().contains("import in progress"), "{e}");
    imp.import_some(1).unwrap();
    assert!(reader.get_object(&view, oid, None, None).is_err());
    while !imp.is_finished() {
        imp.import_some(16).unwrap();
    }
    let ObjectLookup::Found(theirs) = imp.get_object(oid, None, None).unwrap() else {
        panic!("the root is imported")
    };
    reader.release(std::time::Duration::ZERO);
    let ObjectLookup::Found(ours) = reader.get_object(&view, oid, None, None).unwrap() else {
        panic!("the reader finds the root")
    };
    assert_eq!(ours, theirs);
}
