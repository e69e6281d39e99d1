//! Two databases made by the real ZODB (the benchmark generator: BTrees
//! and PersistentMappings, two clocks so their tids differ), merged at a
//! mountpoint by the live Importer, which a child process runs and which
//! is killed with SIGKILL in the middle of the import; a new process
//! resumes right after the last committed transaction, without rebuilding
//! the staging file. Every record of both sources is then in the
//! destination at its new oid and tid, with the pickle NEO's rule gives
//! (`MountLayout::repickle`), and every row once.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use fsformat::{FileStorage, Oid};
use neo_importer::mount::MountLayout;
use neo_importer::staging::default_staging_path;
use neo_importer::{decompress, Importer, ImporterConfig, Source};
use neo_server::storage::{Backend, ObjectLookup, SqliteBackend};

const CHILD_ENV: &str = "NEO_IMPORTER_MOUNT_SIGKILL_DIR";
const TXNS: u64 = 150;

/// `gen_bench_fs.py` with its fake clock started `offset` seconds later.
fn generate(out: &Path, seed: u64, offset: u64) {
    let script = format!(
        "import sys\n\
         sys.path.insert(0, {:?})\n\
         import gen_bench_fs as g\n\
         g.FakeClock.__init__.__defaults__ = (g.EPOCH + {offset}, 1.0)\n\
         g.generate({:?}, {TXNS}, seed={seed}, progress=False)\n",
        repo().join("scripts/bench").display().to_string(),
        out.display().to_string(),
    );
    let o = Command::new(oracle_python())
        .args(["-c", &script])
        .output()
        .expect("run the oracle Python");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn merged_config(dir: &Path) -> ImporterConfig {
    // Oid 5 of main (a PersistentMapping) is the placeholder of sub's
    // oid 1 (its OOBTree).
    let text = format!(
        "[neo]\ndatabase = neo.sqlite\n\
         [main]\nstorage =\n  <filestorage>\n    path {0}/main.fs\n  </filestorage>\nsub = 5\n\
         [sub]\noid = 1\nstorage =\n  <filestorage>\n    path {0}/sub.fs\n  </filestorage>\n",
        dir.display()
    );
    ImporterConfig::parse(&text, &dir.join("importer.conf")).unwrap()
}

fn child(dir: &Path) -> ! {
    let cfg = merged_config(dir);
    let mut imp = Importer::open(&cfg, sqlite_db(&dir.join("neo.sqlite"))).unwrap();
    loop {
        let p = imp.import_some(10).unwrap();
        println!("committed {}", imp.imported_tid().0);
        if p.finished {
            std::process::exit(0);
        }
    }
}

#[test]
fn merged_sources_sigkill_and_resume() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    generate(&dir.path().join("main.fs"), 0, 0);
    generate(&dir.path().join("sub.fs"), 1, 1_000_000);
    let cfg = merged_config(dir.path());
    let mut c = Command::new(std::env::current_exe().unwrap())
        .args([
            "merged_sources_sigkill_and_resume",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(c.stdout.take().unwrap());
    let (mut last_reported, mut lines) = (0, 0);
    for line in out.lines() {
        let line = line.unwrap();
        if let Some(t) = line.strip_prefix("committed ") {
            last_reported = t.parse().unwrap();
            lines += 1;
            if lines == 8 {
                break;
            }
        }
    }
    c.kill().unwrap(); // SIGKILL
    c.wait().unwrap();
    assert_eq!(lines, 8, "the child stopped early");
    let staging = default_staging_path(&cfg);
    let stamp = std::fs::metadata(&staging).unwrap().modified().unwrap();

    let mut imp = Importer::open(&cfg, sqlite_db(&dir.path().join("neo.sqlite"))).unwrap();
    assert_eq!(
        std::fs::metadata(&staging).unwrap().modified().unwrap(),
        stamp,
        "the staging file was built again"
    );
    let resumed = imp.imported_tid().0;
    assert!(resumed >= last_reported, "{resumed:x} < {last_reported:x}");
    assert!(!imp.is_finished(), "killed too late to test anything");
    while !imp.is_finished() {
        imp.import_some(100).unwrap();
    }

    // Every record of both sources, at its new oid, with NEO's pickle.
    let loids: Vec<u64> = cfg
        .sources
        .iter()
        .map(|s| Source::open(&s.storage.path, None).unwrap().loid().0)
        .collect();
    let layout = MountLayout::new(&cfg, &mut |i| loids[i] + 1).unwrap();
    let (mut records, mut txns, mut rewritten) = (0i64, 0i64, 0);
    for (d, m) in layout.dbs().iter().enumerate() {
        let st = FileStorage::open(&cfg.sources[m.source].storage.path).unwrap();
        for t in st.iter() {
            let t = t.unwrap();
            txns += 1;
            for r in t.records() {
                let r = r.unwrap();
                records += 1;
                let raw = st.load_serial(r.oid, t.tid).unwrap();
                let want = layout.repickle(d, raw).unwrap();
                rewritten += usize::from(want.as_ref() != raw);
                let new = Oid(layout.new_oid(d, r.oid.0));
                let ObjectLookup::Found(got) = imp.get_object(new, Some(t.tid), None).unwrap()
                else {
                    panic!("{new}@{} missing", t.tid);
                };
                let data = got.data.expect("data");
                assert!(
                    *decompress(got.compression.unwrap(), &data).unwrap() == *want,
                    "[{}] {} -> {new} at {}",
                    m.section,
                    r.oid,
                    t.tid
                );
            }
        }
    }
    assert!(rewritten > 0, "nothing was remapped");
    let count = |imp: &mut Importer<SqliteBackend>, table: &str| -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        imp.db()
            .connection()
            .query_row(&sql, [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count(&mut imp, "obj"), records);
    assert_eq!(count(&mut imp, "trans"), txns);
    assert!(imp.db().orphan_data().unwrap().is_empty());
}
