//! `neomigrate` both ways on real daemons: each ZODB fixture imported into
//! a fresh cluster through the client (FileStorage -> cluster), then
//! migrated back (cluster -> FileStorage); ZODB's fstest passes on the
//! result and ZODB lists it exactly as the fixture (tids, metadata,
//! records, data hashes, backpointers and their `data_txn`, positions),
//! except the packed status `'p'`, which the client cannot carry (as
//! with NEO). Over TLS too. With two storages and one replica, each
//! storage's database, exported offline, holds the whole history.

mod cluster_common;

use std::path::Path;
use std::process::Command;

use cluster_common::{Cluster, Pki};
use neo_e2e::{binary, repo_root, run_oracle, testdata};
use serde_json::Value;

/// Runs `neomigrate -c CLUSTER -q [--ca --cert --key] SOURCE DESTINATION`:
/// (success, output).
fn neomigrate(c: &Cluster, source: &str, destination: &str) -> (bool, String) {
    let args = c.with_tls(vec!["-c".into(), c.name.clone(), "-q".into()]);
    let out = Command::new(binary("neo-exporter", "neomigrate"))
        .args(args)
        .args([source, destination])
        .output()
        .expect("run neomigrate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `zodb_check.py PATH`.
fn zodb_check(path: &Path) -> Value {
    let script = repo_root().join("scripts/oracle/zodb_check.py");
    serde_json::from_str(&run_oracle(&script, &[path.as_os_str()])).expect("zodb_check JSON")
}

fn fixture_json(name: &str) -> Value {
    let text = std::fs::read_to_string(testdata().join(format!("{name}.json"))).expect("json");
    serde_json::from_str(&text).expect("fixture json parses")
}

/// A running cluster of `storages` storage nodes with `replicas`, over
/// TLS if `tls`.
fn cluster(test: &str, storages: usize, replicas: u32, tls: bool) -> Cluster {
    let mut c = Cluster::new(test, storages);
    c.replicas = replicas;
    if tls {
        c.tls = Some(Pki::write(c.dir.path()));
    }
    c.start_all();
    c.bootstrap();
    c
}

/// Fixture `name` into `c`, then back to `out`; checks the result against
/// ZODB's listing of the fixture.
fn round_trip(c: &Cluster, name: &str, out: &Path) {
    let fs = testdata().join(format!("{name}.fs"));
    let master = c.master_addr().to_string();
    let (ok, text) = neomigrate(c, fs.to_str().expect("utf-8 path"), &master);
    assert!(ok, "{name}: import failed: {text}");
    let (ok, text) = neomigrate(c, &master, out.to_str().expect("utf-8 path"));
    assert!(ok, "{name}: export failed: {text}");
    same_as_fixture(name, out);
}

/// ZODB's fstest passes on `out` and its listing equals the fixture's,
/// packed statuses aside.
fn same_as_fixture(name: &str, out: &Path) {
    let got = zodb_check(out);
    assert_eq!(got["fstest"], "ok", "{name}: fstest");
    let mut want = fixture_json(name)["listing"].clone();
    let mut packed = 0;
    for t in want["transactions"].as_array_mut().expect("transactions") {
        if t["status"] == "p" {
            t["status"] = Value::from(" ");
            packed += 1;
        }
    }
    assert_eq!(packed > 0, name == "packed");
    let mut got = got["listing"].clone();
    got["file"] = want["file"].clone();
    assert_eq!(got, want, "{name}: listing differs");
}

#[test]
fn basic_both_ways() {
    let c = cluster("migrate-basic", 1, 0, false);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("basic.fs");
    round_trip(&c, "basic", &out);
    // Not packed: the very bytes of the fixture.
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(testdata().join("basic.fs")).unwrap()
    );
}

#[test]
fn undo_both_ways_then_resume_and_refusal() {
    // Undo records (chains, undo of undo) stay backpointers; an undone
    // creation stays a backpointer 0 and an undo pointing at it keeps its
    // data_txn (the client reads value_tid of records without data).
    let c = cluster("migrate-undo", 1, 0, false);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("undo.fs");
    round_trip(&c, "undo", &out);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(testdata().join("undo.fs")).unwrap()
    );
    let master = c.master_addr().to_string();
    // Again: the cluster already holds the whole file, nothing is added.
    let undo = testdata().join("undo.fs");
    let out = Command::new(binary("neo-exporter", "neomigrate"))
        .args(["-c", &c.name, undo.to_str().unwrap(), &master])
        .output()
        .expect("run neomigrate");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("0 transactions imported") && text.contains("14 already in the cluster"),
        "{text}"
    );
    assert!(text.contains("Migrating from "), "{text}");
    // Another history: refused, naming the cluster's last transaction.
    let (ok, text) = neomigrate(&c, testdata().join("small.fs").to_str().unwrap(), &master);
    assert!(!ok);
    assert!(text.contains("is not a prefix of"), "{text}");
}

#[test]
fn packed_both_ways() {
    let c = cluster("migrate-packed", 1, 0, false);
    let dir = tempfile::tempdir().unwrap();
    round_trip(&c, "packed", &dir.path().join("packed.fs"));
}

#[test]
fn large_and_empty_txn_both_ways_over_tls() {
    // NEO's --ca/--cert/--key, as the daemons.
    for name in ["large", "empty_txn"] {
        let c = cluster(&format!("migrate-{name}"), 1, 0, true);
        let dir = tempfile::tempdir().unwrap();
        round_trip(&c, name, &dir.path().join(format!("{name}.fs")));
    }
}

#[test]
fn two_storages_one_replica_both_hold_everything() {
    let mut c = cluster("migrate-replica", 2, 1, false);
    let dir = tempfile::tempdir().unwrap();
    round_trip(&c, "undo", &dir.path().join("undo.fs"));
    c.stop();
    for i in 0..2 {
        let out = dir.path().join(format!("storage{i}.fs"));
        let st = Command::new(binary("neo-exporter", "neo-export"))
            .args(["--progress", "none", "-d"])
            .arg(c.storage_db(i))
            .arg(&out)
            .output()
            .expect("run neo-export");
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(testdata().join("undo.fs")).unwrap(),
            "storage {i}"
        );
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
    // Two records of oid 1 in one transaction: NEO keeps one record per
    // object and transaction, the last one (what ZODB's index, load and
    // history see), as the Importer does. So the way back has one record
    // less there; every other fact of the listing is the same.
    let c = cluster("migrate-dup", 1, 0, false);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dup_oid.fs");
    let fs = testdata().join("dup_oid.fs");
    let master = c.master_addr().to_string();
    let (ok, text) = neomigrate(&c, fs.to_str().unwrap(), &master);
    assert!(ok, "import failed: {text}");
    let (ok, text) = neomigrate(&c, &master, out.to_str().unwrap());
    assert!(ok, "export failed: {text}");
    let got = zodb_check(&out);
    assert_eq!(got["fstest"], "ok");
    let mut want = fixture_json("dup_oid")["listing"].clone();
    let mut got = got["listing"].clone();
    let txns = want["transactions"].as_array_mut().unwrap();
    let t = txns.iter_mut().find(|t| t["pos"] == 455).unwrap();
    let recs = t["records"].as_array_mut().unwrap();
    let first = recs
        .iter()
        .position(|r| r["oid"] == "0000000000000001")
        .unwrap();
    recs.remove(first);
    for v in [&mut want, &mut got] {
        strip_positions(v);
        v.as_object_mut().unwrap().remove("file");
    }
    assert_eq!(got, want);
}
