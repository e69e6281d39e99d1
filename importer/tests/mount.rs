//! Two ZODB-made FileStorages merged at a mountpoint (testdata/mount_*.fs,
//! made by testdata/make_mount_fixtures.py), imported with
//! `import_merged`, read back through the `Backend` trait and compared
//! with what ZODB's referencesf reads in the sources, remapped.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use fsformat::{Oid, Tid};
use neo_importer::repickle::{persistent_refs, RefKind};
use neo_importer::{decompress, import_merged, ImporterConfig};
use neo_server::storage::{Backend, ObjectLookup};
use serde_json::Value;

fn strong(data: &[u8]) -> Vec<u64> {
    persistent_refs(data)
        .unwrap()
        .into_iter()
        .filter(|r| !matches!(r.kind, RefKind::Weak { .. } | RefKind::WeakLegacy))
        .map(|r| r.oid)
        .collect()
}

fn load<B: Backend>(db: &mut B, oid: u64, at: Option<Tid>) -> Vec<u8> {
    match db.get_object(Oid(oid), at, None).unwrap() {
        ObjectLookup::Found(r) => {
            let data = r.data.unwrap_or_else(|| panic!("oid {oid}: no data"));
            decompress(r.compression.unwrap_or(0), &data)
                .unwrap()
                .into_owned()
        }
        other => panic!("oid {oid} at {at:?}: {other:?}"),
    }
}

#[test]
fn merged_import_reads_back_remapped() {
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo().join("testdata/mount_pickles.json")).unwrap(),
    )
    .unwrap();
    let mnt = fx["mnt_oid"].as_u64().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for f in ["mount_main.fs", "mount_sub.fs"] {
        std::fs::copy(common::repo().join("testdata").join(f), dir.path().join(f)).unwrap();
    }
    let text = format!(
        "[neo]\nadapter=SQLite\ndatabase=neo.sqlite\ncompress=true\n\
         [main]\nstorage=\n  <filestorage>\n    path {0}/mount_main.fs\n  </filestorage>\n\
         sub={mnt}\n\
         [sub]\noid=1\nstorage=\n  <filestorage>\n    path {0}/mount_sub.fs\n  </filestorage>\n",
        dir.path().display()
    );
    let cfg = ImporterConfig::parse(&text, Path::new("/tmp/importer.conf")).unwrap();
    let mut db = common::memory_db();
    let stats = import_merged(&cfg, &mut db).unwrap();
    let layout = &stats.layout;
    let dbs = layout.dbs();
    assert_eq!(
        (dbs[0].section.as_str(), dbs[1].section.as_str()),
        ("main", "sub")
    );
    let shift = dbs[1].shift;
    assert_eq!(dbs[0].mapping.get(&mnt), Some(&(shift + 1)));

    // Every revision ZODB lists is at its new oid and tid, with ZODB's
    // references remapped.
    let mut newest: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut n = 0;
    let mut tids = BTreeSet::new();
    for (d, name) in [(0, "mount_main"), (1, "mount_sub")] {
        for r in fx["records"][name].as_array().unwrap() {
            let oid = r["oid"].as_u64().unwrap();
            let tid = Tid(u64::from_str_radix(r["tid"].as_str().unwrap(), 16).unwrap());
            tids.insert(tid);
            let want: Vec<u64> = r["refs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| {
                    let o = x.as_u64().unwrap();
                    dbs[d]
                        .mapping
                        .get(&o)
                        .copied()
                        .unwrap_or(layout.new_oid(d, o))
                })
                .collect();
            let new = layout.new_oid(d, oid);
            let data = load(&mut db, new, Some(tid));
            assert_eq!(strong(&data), want, "{name} oid {oid} at {tid}");
            newest.insert(new, want);
            n += 1;
        }
    }
    assert_eq!(stats.records, n);
    assert_eq!(stats.txns, tids.len() as u64);
    assert!(stats.rewritten > 0);

    // Every object is reachable from the merged root, but the placeholder.
    let mut seen = BTreeSet::new();
    let mut todo = vec![0u64];
    while let Some(oid) = todo.pop() {
        if !seen.insert(oid) {
            continue;
        }
        let data = load(&mut db, oid, None);
        assert_eq!(Some(&strong(&data)), newest.get(&oid), "oid {oid}");
        todo.extend(persistent_refs(&data).unwrap().iter().map(|r| r.oid));
    }
    let mut all: BTreeSet<u64> = newest.keys().copied().collect();
    assert!(all.remove(&mnt));
    assert_eq!(seen, all);
    assert_eq!(db.last_ids().unwrap().1, Some(Oid(layout.last_oid())));
}

#[test]
fn same_tid_in_two_sources_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        common::repo().join("testdata/mount_main.fs"),
        dir.path().join("mount_main.fs"),
    )
    .unwrap();
    let text = format!(
        "[neo]\nadapter=SQLite\ndatabase=neo.sqlite\n\
         [main]\nstorage=\n  <filestorage>\n    path {0}/mount_main.fs\n  </filestorage>\n\
         again=3\n\
         [again]\noid=1\nstorage=\n  <filestorage>\n    path {0}/mount_main.fs\n  </filestorage>\n",
        dir.path().display()
    );
    let cfg = ImporterConfig::parse(&text, Path::new("/tmp/importer.conf")).unwrap();
    let mut db = common::memory_db();
    let e = import_merged(&cfg, &mut db).unwrap_err().to_string();
    assert!(e.contains("both have transaction"), "{e}");
}

/// zodbpickle (ZODB's unpickler) reads the pickles `repickle` rewrote:
/// the fixture pickles of every form and protocol shifted (tuples losing
/// their class), and what the merged import stored.
#[test]
fn zodb_reads_the_rewritten_pickles() {
    use neo_importer::repickle::{rewrite, Remap};
    use std::io::Write;
    use std::process::{Command, Stdio};

    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo().join("testdata/mount_pickles.json")).unwrap(),
    )
    .unwrap();
    let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let unhex = |s: &str| -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    let mut lines = Vec::new();
    let mut want = Vec::new();
    for c in fx["cases"].as_array().unwrap() {
        let data = unhex(c["hex"].as_str().unwrap());
        let out = rewrite(&data, &mut |r| {
            Some(Remap {
                oid: r.oid + 0x0102_0304_0506,
                drop_class: true,
            })
        })
        .unwrap();
        lines.push(hex(&out));
        let mut pids = c["pids"].clone();
        for p in pids.as_array_mut().unwrap() {
            let p = p.as_object_mut().unwrap();
            let oid = p["oid"].as_u64().unwrap() + 0x0102_0304_0506;
            p.insert("oid".into(), oid.into());
            if !p.contains_key("db") {
                // (oid, class) became a bare oid; ['m', ...] keeps its class.
                p.remove("class");
            }
        }
        want.push(pids);
    }
    let mut py = Command::new(common::oracle_python())
        .arg(common::repo().join("testdata/make_mount_fixtures.py"))
        .arg("--read-pids")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = py.stdin.take().unwrap();
        for l in &lines {
            writeln!(stdin, "{l}").unwrap();
        }
    }
    let out = py.wait_with_output().unwrap();
    assert!(out.status.success());
    let got: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "case {}", fx["cases"][i]["name"]);
    }
}
