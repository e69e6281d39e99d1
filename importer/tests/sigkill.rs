//! A real crash: a child process imports into SQLite and is killed with
//! SIGKILL in the middle of a batch; a new process resumes right after
//! the last committed transaction, and the result has every revision once.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use fsformat::{FileStorage, Magic, Oid, Tid, TxnStatus, Writer};
use neo_importer::{decompress, Importer};
use neo_server::storage::{Backend, ObjectLookup};

const CHILD_ENV: &str = "NEO_IMPORTER_SIGKILL_CHILD";

/// A source of `n` transactions of 6 records (~600 bytes of varied data),
/// every 10th undoing the previous one (backpointers).
fn make_source(path: &Path, n: u64) {
    let mut w = Writer::create(path, Magic::Fs30).unwrap();
    w.set_sync(fsformat::SyncMode::OnFinish);
    let mut x: u64 = 0x1234_5678;
    let mut prev: Vec<(Oid, u64)> = Vec::new();
    for i in 0..n {
        let tid = Tid(0x03f5_8e00_0000_0000 + (i + 1) * 0x1000);
        let mut t = w
            .begin(
                tid,
                TxnStatus::Committed,
                b"u",
                format!("t{i}").as_bytes(),
                b"",
            )
            .unwrap();
        let mut now = Vec::new();
        if i % 10 == 9 {
            for &(oid, pos) in &prev {
                now.push((oid, t.store_back(oid, pos).unwrap()));
            }
        } else {
            for k in 0..6 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let oid = Oid(x % 400);
                if now.iter().any(|&(o, _)| o == oid) {
                    continue;
                }
                let data: Vec<u8> = (0..600 + k * 7)
                    .map(|j| ((x >> (j % 50)) as u8) ^ (j as u8))
                    .collect();
                now.push((oid, t.store(oid, &data).unwrap()));
            }
        }
        t.commit().unwrap();
        if i % 10 != 9 {
            prev = now;
        }
    }
    w.finish().unwrap();
}

fn child(db: &Path, source: &Path) -> ! {
    let cfg = config(source, "compress = true");
    let mut imp = Importer::open(&cfg, sqlite_db(db)).unwrap();
    loop {
        let p = imp.import_some(40).unwrap();
        println!("committed {}", imp.imported_tid().0);
        if p.finished {
            std::process::exit(0);
        }
    }
}

#[test]
fn sigkill_and_resume() {
    if let (Some(db), Some(src)) = (
        std::env::var_os(CHILD_ENV),
        std::env::var_os("NEO_IMPORTER_SOURCE"),
    ) {
        child(Path::new(&db), Path::new(&src));
    }
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("Data.fs");
    make_source(&source, 3000);
    let db = dir.path().join("neo.sqlite");
    let mut c = Command::new(std::env::current_exe().unwrap())
        .args([
            "sigkill_and_resume",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &db)
        .env("NEO_IMPORTER_SOURCE", &source)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(c.stdout.take().unwrap());
    let mut last_reported = 0;
    let mut lines = 0;
    for line in out.lines() {
        let line = line.unwrap();
        if let Some(t) = line.strip_prefix("committed ") {
            last_reported = t.parse().unwrap();
            lines += 1;
            if lines == 20 {
                break;
            }
        }
    }
    c.kill().unwrap(); // SIGKILL
    c.wait().unwrap();
    assert_eq!(lines, 20, "the child stopped early");
    let cfg = config(&source, "compress = true");
    let mut imp = Importer::open(&cfg, sqlite_db(&db)).unwrap();
    let resumed = imp.imported_tid().0;
    assert!(
        resumed >= last_reported,
        "resumed at {resumed:x}, below {last_reported:x}"
    );
    assert!(!imp.is_finished(), "killed too late to test anything");
    while !imp.is_finished() {
        imp.import_some(500).unwrap();
    }
    // Every revision once, equal to the source's.
    let st = FileStorage::open(&source).unwrap();
    let mut records = 0;
    for t in st.iter() {
        let t = t.unwrap();
        for r in t.records() {
            let r = r.unwrap();
            records += 1;
            let want = st.load_serial(r.oid, t.tid).unwrap();
            let ObjectLookup::Found(got) = imp.get_object(r.oid, Some(t.tid), None).unwrap() else {
                panic!("{}@{} missing", r.oid, t.tid);
            };
            let data = got.data.expect("data");
            assert_eq!(&*decompress(got.compression.unwrap(), &data).unwrap(), want);
        }
    }
    let count = |imp: &mut Importer<neo_server::storage::SqliteBackend>, table: &str| -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        imp.db()
            .connection()
            .query_row(&sql, [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count(&mut imp, "obj"), records);
    assert_eq!(count(&mut imp, "trans"), 3000);
    assert!(
        imp.db().orphan_data().unwrap().is_empty(),
        "no leaked data rows"
    );
}
