//! Two ZODB-made FileStorages merged at a mountpoint (testdata/mount_*.fs,
//! made by testdata/make_mount_fixtures.py), imported with
//! `import_merged`, read back through the `Backend` trait and compared
//! with what ZODB's referencesf reads in the sources, remapped; and the
//! same through the live `Importer` (staging file): served before the
//! import, during it, after a restart mid-way, and once imported.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use fsformat::{Oid, Tid};
use neo_importer::mount::MountLayout;
use neo_importer::repickle::{persistent_refs, RefKind};
use neo_importer::staging::{default_staging_path, recorded_path, KEY_LAYOUT};
use neo_importer::{decompress, import_merged, Importer, ImporterConfig, Source};
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

fn mount_fixture_config(dir: &Path) -> (ImporterConfig, u64) {
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo().join("testdata/mount_pickles.json")).unwrap(),
    )
    .unwrap();
    let mnt = fx["mnt_oid"].as_u64().unwrap();
    for f in ["mount_main.fs", "mount_sub.fs"] {
        std::fs::copy(common::repo().join("testdata").join(f), dir.join(f)).unwrap();
    }
    let text = format!(
        "[neo]\nadapter=SQLite\ndatabase=neo.sqlite\ncompress=true\n\
         [main]\nstorage=\n  <filestorage>\n    path {0}/mount_main.fs\n  </filestorage>\n\
         sub={mnt}\n\
         [sub]\noid=1\nstorage=\n  <filestorage>\n    path {0}/mount_sub.fs\n  </filestorage>\n",
        dir.display()
    );
    let cfg = ImporterConfig::parse(&text, &dir.join("importer.conf")).unwrap();
    (cfg, mnt)
}

/// Every revision of the fixtures' ZODB listing is served at its new oid
/// and tid with its references remapped, and every object but the
/// placeholder is reachable from the merged root. Returns the number of
/// revisions checked.
fn check_merged<B: Backend>(db: &mut B, layout: &MountLayout, mnt: u64) -> usize {
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo().join("testdata/mount_pickles.json")).unwrap(),
    )
    .unwrap();
    let dbs = layout.dbs();
    let mut newest: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut n = 0;
    for (d, name) in [(0, "mount_main"), (1, "mount_sub")] {
        for r in fx["records"][name].as_array().unwrap() {
            let oid = r["oid"].as_u64().unwrap();
            let tid = Tid(u64::from_str_radix(r["tid"].as_str().unwrap(), 16).unwrap());
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
            let data = load(db, new, Some(tid));
            assert_eq!(strong(&data), want, "{name} oid {oid} at {tid}");
            newest.insert(new, want);
            n += 1;
        }
    }
    let mut seen = BTreeSet::new();
    let mut todo = vec![0u64];
    while let Some(oid) = todo.pop() {
        if !seen.insert(oid) {
            continue;
        }
        let data = load(db, oid, None);
        assert_eq!(Some(&strong(&data)), newest.get(&oid), "oid {oid}");
        todo.extend(persistent_refs(&data).unwrap().iter().map(|r| r.oid));
    }
    let mut all: BTreeSet<u64> = newest.keys().copied().collect();
    assert!(all.remove(&mnt));
    assert_eq!(seen, all);
    n
}

fn layout_of(cfg: &ImporterConfig) -> MountLayout {
    let loids: Vec<u64> = cfg
        .sources
        .iter()
        .map(|s| Source::open(&s.storage.path, None).unwrap().loid().0)
        .collect();
    MountLayout::new(cfg, &mut |i| loids[i] + 1).unwrap()
}

#[test]
fn live_importer_serves_merged_sources_before_during_and_after_import() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, mnt) = mount_fixture_config(dir.path());
    let layout = layout_of(&cfg);
    let dbp = dir.path().join("neo.sqlite");

    // First open: the staging file is written, the layout recorded.
    let mut imp = Importer::open(&cfg, common::sqlite_db(&dbp)).unwrap();
    let staging = default_staging_path(&cfg);
    assert_eq!(imp.source_path(), staging.as_path());
    let recorded = imp.config(KEY_LAYOUT).unwrap().expect("layout recorded");
    assert_eq!(recorded_path(&recorded).unwrap(), staging);
    assert!(
        recorded.contains("db main 0 ") && recorded.contains("db sub "),
        "{recorded}"
    );
    // ZODB checks the staging file.
    let v = common::oracle_check(&staging);
    assert_eq!(v["fstest"], "ok", "{v}");

    // Served before anything is imported.
    assert_eq!(imp.imported_tid(), Tid::ZERO);
    let n = check_merged(&mut imp, &layout, mnt);
    assert_eq!(imp.last_ids().unwrap().1, Some(Oid(layout.last_oid())));

    // A few transactions, then a restart: resumes where it was, without
    // writing the staging file again.
    let p = imp.import_some(3).unwrap();
    assert_eq!(p.txns_done, 3);
    let at = imp.imported_tid();
    check_merged(&mut imp, &layout, mnt);
    drop(imp);
    let stamp = std::fs::metadata(&staging).unwrap().modified().unwrap();
    let mut imp = Importer::open(&cfg, common::sqlite_db(&dbp)).unwrap();
    assert_eq!(imp.imported_tid(), at);
    assert_eq!(
        std::fs::metadata(&staging).unwrap().modified().unwrap(),
        stamp
    );
    check_merged(&mut imp, &layout, mnt);

    while !imp.is_finished() {
        imp.import_some(2).unwrap();
    }
    assert_eq!(check_merged(&mut imp, &layout, mnt), n);
    // Once imported, the destination alone gives the same answers.
    let mut db = imp.into_db();
    assert_eq!(check_merged(&mut db, &layout, mnt), n);
}

#[test]
fn live_importer_rebuilds_an_unrecorded_staging_file() {
    // A crash after the staging file was written but before the layout
    // was committed: the next open builds it again, identical.
    let dir = tempfile::tempdir().unwrap();
    let (cfg, mnt) = mount_fixture_config(dir.path());
    let staging = default_staging_path(&cfg);
    let first = neo_importer::staging::build(&cfg, &staging).unwrap();
    let bytes = std::fs::read(&staging).unwrap();
    std::fs::write(&staging, b"FS30garbage").unwrap();
    let mut imp = Importer::open(&cfg, common::sqlite_db(&dir.path().join("neo.sqlite"))).unwrap();
    assert_eq!(std::fs::read(&staging).unwrap(), bytes);
    assert_eq!(
        imp.config(KEY_LAYOUT).unwrap().as_deref(),
        Some(first.layout_text().as_str())
    );
    check_merged(&mut imp, &first.layout, mnt);
}

#[test]
fn live_importer_merges_transactions_of_the_same_tid_like_neo() {
    // The main database mounted under itself: every transaction exists in
    // both sections with the same tid; NEO merges each pair into one.
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
    let cfg = ImporterConfig::parse(&text, &dir.path().join("importer.conf")).unwrap();
    let layout = layout_of(&cfg);
    let shift = layout.dbs()[1].shift;
    let mut imp = Importer::open(&cfg, common::sqlite_db(&dir.path().join("neo.sqlite"))).unwrap();
    let src = fsformat::FileStorage::open(dir.path().join("mount_main.fs")).unwrap();
    let staged = fsformat::FileStorage::open(default_staging_path(&cfg)).unwrap();
    let (a, b): (Vec<_>, Vec<_>) = (
        src.iter().map(|t| t.unwrap()).collect(),
        staged.iter().map(|t| t.unwrap()).collect(),
    );
    assert_eq!(a.len(), b.len(), "one transaction per tid");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (x.tid, x.user, x.description),
            (y.tid, y.user, y.description)
        );
        let oids =
            |t: &fsformat::Txn<'_>| -> Vec<u64> { t.records().map(|r| r.unwrap().oid.0).collect() };
        let mut want = oids(x);
        want.extend(oids(x).iter().map(|o| o + shift));
        assert_eq!(oids(y), want);
    }
    while !imp.is_finished() {
        imp.import_some(3).unwrap();
    }
    // Both copies of every revision are there, the second one remapped.
    for t in &a {
        for r in t.records() {
            let r = r.unwrap();
            let raw = src.load_serial(r.oid, t.tid).unwrap();
            assert!(
                load(&mut imp, r.oid.0, Some(t.tid)) == layout.repickle(0, raw).unwrap().as_ref()
            );
            let again = load(&mut imp, r.oid.0 + shift, Some(t.tid));
            assert!(again == layout.repickle(1, raw).unwrap().as_ref());
        }
    }
}
