//! Round trips: each ZODB fixture loaded into a NEO SQLite database the way
//! NEO's Importer stores it, exported back, and checked by the real ZODB
//! (fstest + the listing of `scripts/oracle/zodb_check.py`, which must equal
//! the fixture's stored listing).

mod common;

use std::path::Path;

use common::{fixture, fixture_json, load, new_db, zodb_check, LoadOptions};
use fsformat::Tid;
use neo_exporter::{export, BackendSource, ExportOptions, NoProgress, SqliteSource, Summary};
use serde_json::Value;

/// Loads fixture `name` into a new database with `np` partitions and
/// exports it to `dir/name.fs`, with the range-reading [`SqliteSource`]
/// and, to `dir/generic/name.fs`, with the generic [`BackendSource`].
fn round_trip(dir: &Path, name: &str, np: u32, compress: bool) -> Summary {
    let mut db = new_db(&dir.join("db.sqlite"), np);
    let opts = LoadOptions {
        compress,
        ..LoadOptions::default()
    };
    load(&fixture(name), &mut db, opts);
    let mut src = BackendSource::new(db).expect("source");
    std::fs::create_dir(dir.join("generic")).unwrap();
    let generic = dir.join("generic").join(format!("{name}.fs"));
    let s1 = export(
        &mut src,
        &generic,
        &ExportOptions::default(),
        &mut NoProgress,
    )
    .expect("export (generic)");
    let mut src = SqliteSource::new(src.into_inner()).expect("source");
    let out = dir.join(format!("{name}.fs"));
    let s2 = export(&mut src, &out, &ExportOptions::default(), &mut NoProgress).expect("export");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&generic).unwrap()
    );
    assert_eq!((s1.transactions, s1.records), (s2.transactions, s2.records));
    s2
}

/// The exported file passes fstest and ZODB lists it exactly as the
/// original; the file is even byte-identical (same layout, same prev
/// pointers: the writer computes them like ZODB).
fn exact(name: &str, np: u32, compress: bool) {
    let dir = tempfile::tempdir().unwrap();
    let s = round_trip(dir.path(), name, np, compress);
    assert!(s.complete);
    let out = dir.path().join(format!("{name}.fs"));
    let got = zodb_check(&out);
    let want = fixture_json(name);
    assert_eq!(got["fstest"], "ok", "{name}: fstest");
    assert_eq!(want["fstest"], "ok");
    assert_eq!(got["listing"], want["listing"], "{name}: listing differs");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(fixture(name)).unwrap(),
        "{name}: bytes"
    );
}

#[test]
fn basic_round_trip_three_partitions_compressed() {
    exact("basic", 3, true);
}

#[test]
fn undo_round_trip() {
    // Undo, undo of undo, chains, undone creation (backpointer 0) and a
    // backpointer to a backpointer-0 record.
    exact("undo", 1, false);
    exact("undo", 2, true);
}

#[test]
fn packed_round_trip() {
    // Status 'p', records copied by pack with prev 0.
    exact("packed", 1, true);
}

#[test]
fn other_round_trips() {
    for name in ["large", "small", "empty_txn", "empty"] {
        exact(name, 1, true);
    }
}

/// Removes the keys that depend on file positions.
fn strip_positions(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for k in ["pos", "prev", "back", "size"] {
                m.remove(k);
            }
            m.values_mut().for_each(strip_positions);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_positions),
        _ => {}
    }
}

#[test]
fn dup_oid_keeps_the_visible_record() {
    // Two records of oid 1 in one transaction cannot be stored by NEO (its
    // `obj` key is (partition, oid, tid)); the Importer keeps the last one,
    // the one ZODB's index, load and history see. So the export has one
    // record less there and the later positions move by its size; every
    // other fact of the listing is the same.
    let dir = tempfile::tempdir().unwrap();
    round_trip(dir.path(), "dup_oid", 1, false);
    let got = zodb_check(&dir.path().join("dup_oid.fs"));
    assert_eq!(got["fstest"], "ok");
    let mut want = fixture_json("dup_oid")["listing"].clone();
    let mut got = got["listing"].clone();
    // The hidden (first) record of oid 1 in the transaction at 455.
    let txns = want["transactions"].as_array_mut().unwrap();
    let t = txns.iter_mut().find(|t| t["pos"] == 455).unwrap();
    let recs = t["records"].as_array_mut().unwrap();
    let first = recs
        .iter()
        .position(|r| r["oid"] == "0000000000000001")
        .unwrap();
    recs.remove(first);
    assert_eq!(
        recs.iter()
            .filter(|r| r["oid"] == "0000000000000001")
            .count(),
        1
    );
    for v in [&mut want, &mut got] {
        strip_positions(v);
        v.as_object_mut().unwrap().remove("size");
    }
    assert_eq!(got, want);
}

#[test]
fn tid_range_resolves_backpointers_into_data() {
    // undo.fs from its 5th transaction: T5's backpointers to T3/T2 records
    // have no target in the output, so the data is written instead, as
    // ZODB's pack does; every object still loads the same data.
    let dir = tempfile::tempdir().unwrap();
    let want = fixture_json("undo")["listing"].clone();
    let tids: Vec<Tid> = want["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| Tid(u64::from_str_radix(t["tid"].as_str().unwrap(), 16).unwrap()))
        .collect();
    let mut db = new_db(&dir.path().join("db.sqlite"), 1);
    load(&fixture("undo"), &mut db, LoadOptions::default());
    let mut src = SqliteSource::new(db).unwrap();
    let out = dir.path().join("undo.fs");
    let opts = ExportOptions {
        tid_min: tids[4],
        tid_max: tids[11],
        ..ExportOptions::default()
    };
    let s = export(&mut src, &out, &opts, &mut NoProgress).unwrap();
    assert_eq!(s.transactions, 8);
    let got = zodb_check(&out);
    assert_eq!(got["fstest"], "ok");
    let got = &got["listing"];
    let gt = got["transactions"].as_array().unwrap();
    assert_eq!(gt.len(), 8);
    let wt = &want["transactions"].as_array().unwrap()[4..12];
    for (g, w) in gt.iter().zip(wt) {
        assert_eq!(g["tid"], w["tid"]);
        let (gr, wr) = (
            g["records"].as_array().unwrap(),
            w["records"].as_array().unwrap(),
        );
        assert_eq!(gr.len(), wr.len());
        for (a, b) in gr.iter().zip(wr) {
            // Same data for every record (resolved or through a backpointer).
            assert_eq!(a["oid"], b["oid"]);
            assert_eq!(
                a["data_sha1"], b["data_sha1"],
                "{} in {}",
                a["oid"], g["tid"]
            );
        }
    }
    // T5's records point before the range: they hold data now.
    assert!(gt[0]["records"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["back"].is_null() && !r["data_sha1"].is_null()));
}

#[test]
fn importer_then_export_round_trips() {
    // The same round trip with the real Importer (importer/) filling the
    // database instead of the test loader.
    use neo_importer::{Importer, ImporterConfig};
    for name in ["basic", "undo", "packed", "large", "empty_txn"] {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[neo]\nadapter = SQLite\ndatabase = unused.sqlite\ncompress = true\n\n\
             [root]\nstorage =\n  <filestorage>\n    path {}\n  </filestorage>\n",
            fixture(name).display()
        );
        let cfg = ImporterConfig::parse(&text, &dir.path().join("importer.conf")).unwrap();
        let db = new_db(&dir.path().join("db.sqlite"), 3);
        let mut imp = Importer::open(&cfg, db).unwrap();
        while !imp.is_finished() {
            imp.import_some(usize::MAX).unwrap();
        }
        let mut src = SqliteSource::new(imp.into_db()).unwrap();
        let out = dir.path().join(format!("{name}.fs"));
        export(&mut src, &out, &ExportOptions::default(), &mut NoProgress).unwrap();
        let got = zodb_check(&out);
        assert_eq!(got["fstest"], "ok", "{name}");
        assert_eq!(got["listing"], fixture_json(name)["listing"], "{name}");
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(fixture(name)).unwrap(),
            "{name}"
        );
    }
}
