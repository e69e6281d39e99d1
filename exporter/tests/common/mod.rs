//! Test helpers: a loader that feeds a `Data.fs` into a storage database
//! through the `Backend` 2PC methods with NEO's semantics (what NEO's
//! Importer stores), and the ZODB oracle.

#![allow(dead_code)] // each test file uses a different subset

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use fsformat::{DataFs, Magic, Oid, Payload, SyncMode, Tid, TxnStatus, Writer};
use neo_server::storage::{
    make_checksum, Backend, CellState, ObjectRef, SqliteBackend, SqliteOptions, TxnMeta,
};

/// The repository's top directory.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("exporter/ has a parent")
        .to_owned()
}

/// `testdata/NAME.fs`.
pub fn fixture(name: &str) -> PathBuf {
    repo().join("testdata").join(format!("{name}.fs"))
}

/// A fresh SQLite database with `np` partitions, all readable on node 1
/// (no fsync: test data).
pub fn new_db(path: &Path, np: u32) -> SqliteBackend {
    let opts = SqliteOptions {
        pragmas: vec![("synchronous".into(), "OFF".into())],
        ..SqliteOptions::default()
    };
    let mut db = SqliteBackend::open(path, &opts).expect("open database");
    db.set_nid(1).expect("set nid");
    let cells: Vec<_> = (0..np).map(|p| (p, 1, CellState::UpToDate)).collect();
    db.change_partition_table(1, 0, &cells, true, Tid(0))
        .expect("partition table");
    db.commit().expect("commit");
    db
}

/// How [`load`] stores things.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// zlib-compress data when it gets smaller (NEO's default `compress`).
    pub compress: bool,
    /// Only transactions with `tid >= min` ...
    pub min: Option<Tid>,
    /// ... and `tid <= max`.
    pub max: Option<Tid>,
    /// Leave this transaction out.
    pub skip: Option<Tid>,
    /// Change the description of this transaction.
    pub tweak: Option<Tid>,
}

/// Loads the transactions of `fs` (the valid part) into `db`, in tid order,
/// through vote/lock/unlock, as NEO's Importer stores them: data records
/// (optionally compressed), backpointers as `value_tid` = the tid of the
/// record pointed to (ZODB's `data_txn`), backpointer 0 as a deletion. Two
/// records of one oid in a transaction: the last one wins (NEO's `obj`
/// key). Returns the number of transactions loaded.
pub fn load(fs: &Path, db: &mut impl Backend, opts: LoadOptions) -> usize {
    let fs = DataFs::open(fs).expect("open fixture");
    let mut n = 0;
    for t in fs.iter() {
        let Ok(t) = t else { break };
        if opts.min.is_some_and(|m| t.tid < m)
            || opts.max.is_some_and(|m| t.tid > m)
            || opts.skip == Some(t.tid)
        {
            continue;
        }
        let status = t.status().expect("status");
        assert_ne!(status, TxnStatus::Undone, "NEO has no 'u' transactions");
        let mut refs: Vec<ObjectRef> = Vec::new();
        let mut held = Vec::new();
        for r in t.records() {
            let Ok(r) = r else { break };
            let (data_id, value_tid) = match r.payload {
                Payload::Data(d) => {
                    let (comp, stored) = if opts.compress {
                        let mut e = flate2::write::ZlibEncoder::new(
                            Vec::new(),
                            flate2::Compression::default(),
                        );
                        e.write_all(d).expect("compress");
                        let z = e.finish().expect("compress");
                        if z.len() < d.len() {
                            (1, z)
                        } else {
                            (0, d.to_vec())
                        }
                    } else {
                        (0, d.to_vec())
                    };
                    let id = db
                        .hold_data(Some(&make_checksum(&stored)), r.oid, &stored, comp, None)
                        .expect("store data");
                    (id, None)
                }
                Payload::Back(0) => (None, None),
                Payload::Back(b) => {
                    let dt = fs.back_tid(r.oid, b).expect("backpointer");
                    let id = db
                        .hold_data(None, r.oid, b"", 0, Some(dt))
                        .expect("undo data");
                    (id, Some(dt))
                }
            };
            held.extend(data_id);
            refs.retain(|o| o.oid != r.oid);
            refs.push(ObjectRef {
                oid: r.oid,
                data_id,
                value_tid,
            });
        }
        let meta = TxnMeta {
            oids: refs.iter().map(|o| o.oid).collect::<Vec<Oid>>(),
            user: t.user.to_vec(),
            description: if opts.tweak == Some(t.tid) {
                [t.description, b" (changed)"].concat()
            } else {
                t.description.to_vec()
            },
            extension: t.extension.to_vec(),
            packed: status == TxnStatus::Packed,
            ttid: t.tid,
        };
        db.store_transaction(t.tid, &refs, Some(&meta), true)
            .expect("vote");
        db.commit().expect("commit vote");
        db.lock_transaction(t.tid, t.tid, false).expect("lock");
        db.unlock_transaction(t.tid, t.tid, true, true, false)
            .expect("unlock");
        db.release_data(&held, false).expect("release");
        db.commit().expect("commit");
        n += 1;
    }
    n
}

/// The oracle interpreter: `$NEO_TEST_PYTHON` or `<repo>/.venv/bin/python`.
pub fn python() -> PathBuf {
    let py = std::env::var_os("NEO_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    assert!(
        py.exists(),
        "oracle Python {} missing: run scripts/setup-test-env.sh",
        py.display()
    );
    py
}

/// `zodb_check.py PATH`: ZODB's fstest verdict and listing.
pub fn zodb_check(path: &Path) -> serde_json::Value {
    let out = Command::new(python())
        .arg(repo().join("scripts/oracle/zodb_check.py"))
        .arg(path)
        .output()
        .expect("run zodb_check.py");
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "zodb_check.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("zodb_check.py prints JSON")
}

/// The fixture's stored oracle output (`testdata/NAME.json`).
pub fn fixture_json(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(repo().join("testdata").join(format!("{name}.json")))
        .expect("fixture json");
    serde_json::from_str(&text).expect("fixture json parses")
}

/// The tids of a file, in order.
pub fn tids(fs: &Path) -> Vec<Tid> {
    let fs = DataFs::open(fs).expect("open");
    fs.iter().map(|t| t.expect("transaction").tid).collect()
}

/// Offsets of the transactions of a file, in order, and its end.
pub fn txn_positions(fs: &Path) -> (Vec<u64>, u64) {
    let fs = DataFs::open(fs).expect("open");
    let v = fs.iter().map(|t| t.expect("transaction").pos).collect();
    (v, fs.tail().end)
}

/// A pseudo-random generator (xorshift), deterministic.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A `Data.fs` of `n` transactions: stores of 1-8 objects among 300 with
/// 256 B - 8 KiB of half-compressible data, some undo-like backpointers and some
/// backpointers 0.
pub fn synthetic(path: &Path, n: u64) {
    let mut w = Writer::create(path, Magic::Fs30).unwrap();
    w.set_sync(SyncMode::OnFinish);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut last: Vec<Option<u64>> = vec![None; 300];
    for i in 0..n {
        let tid = Tid(0x03f5_8e00_0000_0000 + (i + 1) * 0x1_0000);
        let desc = format!("txn {i}");
        let mut t = w
            .begin(tid, TxnStatus::Committed, b"user", desc.as_bytes(), b"")
            .unwrap();
        let mut done = Vec::new();
        for _ in 0..1 + rng.next() % 8 {
            let o = (rng.next() % 300) as usize;
            if done.contains(&o) {
                continue;
            }
            done.push(o);
            let kind = rng.next() % 10;
            let pos = match (kind, last[o]) {
                (0, Some(p)) => t.store_back(Oid(o as u64), p).unwrap(),
                (1, Some(_)) => t.store_back(Oid(o as u64), 0).unwrap(),
                _ => {
                    let len = 256 + (rng.next() % (8 * 1024)) as usize;
                    let mut d = vec![b'x'; len];
                    for b in d.iter_mut().step_by(2) {
                        *b = rng.next() as u8;
                    }
                    t.store(Oid(o as u64), &d).unwrap()
                }
            };
            last[o] = Some(pos);
        }
        t.commit().unwrap();
    }
    w.finish().unwrap();
}
