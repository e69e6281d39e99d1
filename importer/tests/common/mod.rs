//! Shared helpers of the importer tests: fixtures, destinations, and the
//! comparison of everything readable through the `Backend` trait with
//! ZODB's listing of the source (`testdata/NAME.json`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use fsformat::{Oid, Tid};
use neo_importer::{decompress, Importer, ImporterConfig};
use neo_server::storage::{
    make_checksum, Backend, CellState, MemoryBackend, ObjectLookup, ObjectRef, SqliteBackend,
    SqliteOptions, TxnMeta,
};
use serde_json::Value;
use sha1::{Digest, Sha1};

/// Number of partitions of the test destinations.
pub const NP: u32 = 3;
/// The storage node id of the test destinations.
pub const NID: i32 = 0x1000_0001;

/// The fixtures made through ZODB's API, which must import.
pub const GOOD: &[&str] = &[
    "basic",
    "undo",
    "packed",
    "large",
    "small",
    "empty_txn",
    "dup_oid",
];

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("testdata").join(format!("{name}.fs"))
}

pub fn listing(name: &str) -> Value {
    let text = std::fs::read_to_string(repo().join("testdata").join(format!("{name}.json")))
        .expect("fixture listing");
    let v: Value = serde_json::from_str(&text).expect("fixture JSON");
    v["listing"].clone()
}

/// The oracle interpreter: `$NEO_TEST_PYTHON` or `<repo>/.venv/bin/python`.
/// Fails the test when missing.
pub fn oracle_python() -> PathBuf {
    let p = std::env::var_os("NEO_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "oracle Python {} missing: run scripts/setup-test-env.sh",
        p.display()
    );
    p
}

/// `zodb_check.py PATH` → (fstest verdict, listing).
pub fn oracle_check(path: &Path) -> Value {
    let out = std::process::Command::new(oracle_python())
        .arg(repo().join("scripts/oracle/zodb_check.py"))
        .arg(path)
        .output()
        .expect("run the oracle");
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "oracle output: {e}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub fn config_text(source: &Path, database: &str, extra: &str) -> String {
    format!(
        "[neo]\nadapter = SQLite\ndatabase = {database}\n{extra}\n\n[root]\nstorage =\n  <filestorage>\n    path {}\n  </filestorage>\n",
        source.display()
    )
}

pub fn config(source: &Path, extra: &str) -> ImporterConfig {
    let text = config_text(source, "unused.sqlite", extra);
    ImporterConfig::parse(&text, Path::new("/tmp/importer.conf")).expect("config")
}

/// Gives the destination a partition table: `NP` partitions, all
/// `UP_TO_DATE` on this node, as the master would.
pub fn setup_pt<B: Backend>(db: &mut B) {
    if db.partition_view().unwrap().np > 0 {
        return;
    }
    db.set_nid(NID).unwrap();
    let cells: Vec<_> = (0..NP).map(|p| (p, NID, CellState::UpToDate)).collect();
    db.change_partition_table(1, 0, &cells, true, Tid::ZERO)
        .unwrap();
    db.commit().unwrap();
}

pub fn memory_db() -> MemoryBackend {
    let mut db = MemoryBackend::new(false);
    setup_pt(&mut db);
    db
}

pub fn sqlite_db(path: &Path) -> SqliteBackend {
    let mut db = SqliteBackend::open(path, &SqliteOptions::default()).expect("sqlite");
    setup_pt(&mut db);
    db
}

pub fn open<B: Backend>(cfg: &ImporterConfig, db: B) -> Importer<B> {
    Importer::open(cfg, db).unwrap_or_else(|e| panic!("open: {e}"))
}

fn tid(v: &Value) -> Tid {
    Tid(u64::from_str_radix(v.as_str().expect("hex"), 16).expect("hex tid"))
}

fn oid(v: &Value) -> Oid {
    Oid(u64::from_str_radix(v.as_str().expect("hex"), 16).expect("hex oid"))
}

fn opt_tid(v: &Value) -> Option<Tid> {
    if v.is_null() {
        None
    } else {
        Some(tid(v))
    }
}

fn unhex(v: &Value) -> Vec<u8> {
    let s = v.as_str().expect("hex");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

pub fn sha1_hex(data: &[u8]) -> String {
    Sha1::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The SHA-1 of a record's data as a client sees it (decompressed).
fn record_sha1(r: &neo_server::storage::ObjectRecord) -> Option<String> {
    r.data.as_ref().map(|d| {
        let raw = decompress(r.compression.unwrap_or(0), d).expect("decompress");
        sha1_hex(&raw)
    })
}

/// Checks one ZODB loadBefore/load result against what the backend says.
fn check_revision(what: &str, got: ObjectLookup, want: &Value) {
    if want.is_null() {
        assert_eq!(got, ObjectLookup::NotFoundAt, "{what}: ZODB found nothing");
        return;
    }
    let Some(err) = want["error"].as_str().map(str::to_owned).or(None) else {
        let ObjectLookup::Found(r) = got else {
            panic!("{what}: expected a revision, got {got:?}");
        };
        assert_eq!(
            record_sha1(&r).as_deref(),
            want["data_sha1"].as_str(),
            "{what}: data"
        );
        if !want["start"].is_null() {
            assert_eq!(r.serial, tid(&want["start"]), "{what}: start");
        }
        if want.get("end").is_some() {
            assert_eq!(r.next_serial, opt_tid(&want["end"]), "{what}: end");
        }
        return;
    };
    assert!(
        err.starts_with("POSKeyError"),
        "{what}: unexpected ZODB error {err}"
    );
    match got {
        ObjectLookup::Found(r) => {
            assert!(r.data.is_none(), "{what}: ZODB says {err}, we have data")
        }
        ObjectLookup::DoesNotExist | ObjectLookup::NotFoundAt => {}
    }
}

/// Reads every object, revision and transaction of the listing through the
/// `Backend` trait and compares with ZODB's answers.
pub fn check_listing<B: Backend>(db: &mut B, l: &Value, ctx: &str) {
    let txns = l["transactions"].as_array().expect("transactions");
    // Objects.
    for o in l["objects"].as_array().expect("objects") {
        let id = oid(&o["oid"]);
        let what = format!("{ctx}: oid {id}");
        let got = db.get_object(id, None, None).expect("get_object");
        let load = &o["load"];
        if load["error"].is_null() {
            let ObjectLookup::Found(r) = &got else {
                panic!("{what}: load: got {got:?}")
            };
            assert_eq!(r.serial, tid(&load["serial"]), "{what}: load serial");
            assert_eq!(
                record_sha1(r).as_deref(),
                load["data_sha1"].as_str(),
                "{what}: load data"
            );
            assert_eq!(r.next_serial, None, "{what}: load next");
        } else {
            check_revision(&format!("{what}: load"), got, load);
        }
        assert_eq!(
            db.last_object_tid(id).expect("last_object_tid"),
            o["history"]
                .as_array()
                .and_then(|h| h.first())
                .map(|h| tid(&h["tid"])),
            "{what}: last serial"
        );
        if o["history_error"].is_null() {
            let want: Vec<(Tid, u64)> = o["history"]
                .as_array()
                .expect("history")
                .iter()
                .map(|h| (tid(&h["tid"]), h["size"].as_u64().expect("size")))
                .collect();
            let got = db.object_history(id, 0, 1 << 20).expect("history");
            assert_eq!(got, Some(want.clone()), "{what}: history");
            if want.len() > 2 {
                let got = db.object_history(id, 1, 2).expect("history");
                assert_eq!(got.as_deref(), Some(&want[1..3]), "{what}: history window");
            }
        }
        for rev in o["revisions"].as_array().expect("revisions") {
            let serial = tid(&rev["serial"]);
            let w = format!("{what} @{serial}");
            let got = db.get_object(id, None, Some(serial)).expect("loadBefore");
            check_revision(&format!("{w}: loadBefore"), got, &rev["load_before"]);
            let got = db
                .get_object(id, None, Some(Tid(serial.0 + 1)))
                .expect("loadBefore");
            check_revision(&format!("{w}: loadBefore+1"), got, &rev["load_before_next"]);
            let got = db.get_object(id, Some(serial), None).expect("loadSerial");
            let ls = &rev["load_serial"];
            check_revision(&format!("{w}: loadSerial"), got, ls);
        }
    }
    // Records: data_serial is the iterator's data_txn (one link).
    for t in txns {
        let recs = t["records"].as_array().expect("records");
        for (i, r) in recs.iter().enumerate() {
            if recs[i + 1..].iter().any(|x| x["oid"] == r["oid"]) {
                continue; // hidden by a later record of the same oid
            }
            let id = oid(&r["oid"]);
            let serial = tid(&r["serial"]);
            let rec = db
                .find_object(id, Some(serial), None)
                .expect("find_object")
                .unwrap_or_else(|| panic!("{ctx}: record {id}@{serial} missing"));
            assert_eq!(
                rec.data_serial,
                opt_tid(&r["data_txn"]),
                "{ctx}: {id}@{serial} data_txn"
            );
            assert_eq!(
                record_sha1(&rec).as_deref(),
                r["data_sha1"].as_str(),
                "{ctx}: {id}@{serial} data"
            );
        }
    }
    // Transactions.
    let partitions: Vec<u32> = (0..NP).collect();
    for t in txns {
        let id = tid(&t["tid"]);
        let got = db
            .get_transaction(id, false)
            .expect("get_transaction")
            .unwrap_or_else(|| panic!("{ctx}: transaction {id} missing"));
        let m = got.meta;
        assert_eq!(m.user, unhex(&t["user_hex"]), "{ctx}: {id} user");
        assert_eq!(
            m.description,
            unhex(&t["description_hex"]),
            "{ctx}: {id} description"
        );
        assert_eq!(
            m.extension,
            unhex(&t["extension_hex"]),
            "{ctx}: {id} extension"
        );
        assert_eq!(m.packed, t["status"] == "p", "{ctx}: {id} packed");
        let mut oids: Vec<Oid> = Vec::new();
        for r in t["records"].as_array().expect("records") {
            let o = oid(&r["oid"]);
            if !oids.contains(&o) {
                oids.push(o);
            }
        }
        assert_eq!(m.oids, oids, "{ctx}: {id} oids");
    }
    let all: Vec<Tid> = txns.iter().rev().map(|t| tid(&t["tid"])).collect();
    assert_eq!(
        db.tid_list(0, 1 << 20, &partitions).expect("tid_list"),
        all,
        "{ctx}: tid list"
    );
    if all.len() > 3 {
        assert_eq!(
            db.tid_list(1, 2, &partitions).expect("tid_list"),
            all[1..3].to_vec(),
            "{ctx}: tid window"
        );
    }
    for p in 0..NP {
        let want: Vec<Tid> = all
            .iter()
            .rev()
            .copied()
            .filter(|t| t.0 % u64::from(NP) == u64::from(p))
            .collect();
        let got = db
            .replication_tid_list(Tid::ZERO, Tid(u64::MAX >> 1), None, p)
            .expect("replication tids");
        assert_eq!(got, want, "{ctx}: replication tids of partition {p}");
        let mut objs: Vec<(Tid, Oid)> = Vec::new();
        for t in txns {
            let mut o: Vec<Oid> = t["records"]
                .as_array()
                .expect("records")
                .iter()
                .map(|r| oid(&r["oid"]))
                .filter(|o| o.0 % u64::from(NP) == u64::from(p))
                .collect();
            o.sort();
            o.dedup();
            objs.extend(o.into_iter().map(|o| (tid(&t["tid"]), o)));
        }
        let got = db
            .replication_object_list(Tid::ZERO, Tid(u64::MAX >> 1), None, p, Oid::ZERO)
            .expect("replication objects");
        assert_eq!(got, objs, "{ctx}: replication objects of partition {p}");
        assert_eq!(
            db.first_tid_in(p).expect("first tid"),
            want.first().copied(),
            "{ctx}: first tid of {p}"
        );
        assert_eq!(
            db.last_tid_in(p, None).expect("last tid"),
            want.last().copied(),
            "{ctx}: last tid of {p}"
        );
    }
    let (last_tid, last_oid) = db.last_ids().expect("last_ids");
    assert_eq!(last_tid, opt_tid(&l["last_transaction"]), "{ctx}: last tid");
    assert_eq!(last_oid, Some(oid(&l["new_oid"])), "{ctx}: last oid");
}

/// One client transaction through the 2PC calls the storage node makes:
/// `(oid, data, undo of serial)`.
/// `(oid, data, undo of serial)` of one object of a client transaction.
pub type ClientObj<'a> = (Oid, Option<&'a [u8]>, Option<Tid>);

pub fn client_commit<B: Backend>(db: &mut B, tid: Tid, objs: &[ClientObj<'_>]) {
    let mut refs = Vec::new();
    for &(oid, data, undo) in objs {
        let id = match (data, undo) {
            (Some(d), _) => db.hold_data(Some(&make_checksum(d)), oid, d, 0, None),
            (None, Some(dt)) => db.hold_data(None, oid, &[], 0, Some(dt)),
            (None, None) => Ok(None),
        }
        .expect("store data");
        refs.push(ObjectRef {
            oid,
            data_id: id,
            value_tid: undo,
        });
    }
    let meta = TxnMeta {
        oids: objs.iter().map(|o| o.0).collect(),
        user: b"client".to_vec(),
        description: format!("commit {tid}").into_bytes(),
        extension: Vec::new(),
        packed: false,
        ttid: tid,
    };
    db.store_transaction(tid, &refs, Some(&meta), true)
        .expect("vote");
    db.lock_transaction(tid, tid, false).expect("lock");
    db.unlock_transaction(tid, tid, true, true, false)
        .expect("unlock");
    db.commit().expect("commit");
}
