//! The writer, checked by reading back with our reader and with the real
//! ZODB (the oracle): copies of the fixtures, files built through the API,
//! torn appends, the sidecar index, and picking up appended transactions.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::{check_iteration, check_storage, testdata, zodb_check};
use fsformat::{
    sidecar_path, DataFs, Error, FileStorage, IndexSource, Oid, OpenOptions, Payload, SyncMode,
    Tid, TxnStatus, Writer,
};

/// Copies the visible transactions of `src` to a new `dst` the way ZODB's
/// `copyTransactionsFrom` + `restore` would, mapping backpointers.
fn copy(src: &Path, dst: &Path) -> fsformat::Result<()> {
    let fs = DataFs::open(src)?;
    let mut w = Writer::create(dst, fs.magic())?;
    w.set_sync(SyncMode::OnFinish);
    let mut map: HashMap<u64, u64> = HashMap::new();
    for t in fs.iter() {
        let t = t?;
        let status = t.status().expect("valid status");
        let mut tw = w.begin(t.tid, status, t.user, t.description, t.extension)?;
        for r in t.records() {
            let r = r?;
            let payload = match r.payload {
                Payload::Back(b) if b != 0 => Payload::Back(map[&b]),
                p => p,
            };
            let at = tw.restore(r.oid, r.serial, payload)?;
            map.insert(r.pos, at);
        }
        tw.commit()?;
    }
    w.finish()
}

fn ext() -> Vec<u8> {
    // A pickled dict {'step': 0} (protocol 3), as ZODB stores extensions.
    b"\x80\x03}q\x00X\x04\x00\x00\x00stepq\x01K\x00s.".to_vec()
}

#[test]
fn copies_of_zodb_files_are_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "basic",
        "undo",
        "small",
        "large",
        "dup_oid",
        "empty_txn",
        "empty",
    ] {
        let src = testdata().join(format!("{name}.fs"));
        let dst = dir.path().join(format!("{name}.fs"));
        copy(&src, &dst).unwrap();
        let a = std::fs::read(&src).unwrap();
        let b = std::fs::read(&dst).unwrap();
        assert!(a == b, "{name}: copy differs");
    }
}

#[test]
fn copies_of_other_fixtures_read_like_zodb_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "packed",
        "checkpoint_mid",
        "truncated_data",
        "truncated_header",
    ] {
        let src = testdata().join(format!("{name}.fs"));
        let dst = dir.path().join(format!("{name}.fs"));
        copy(&src, &dst).unwrap();
        let z = zodb_check(&dst);
        assert_eq!(z["fstest"], "ok", "{name}: {}", z["fstest"]);
        let l = &z["listing"];
        check_iteration(name, &DataFs::open(&dst).unwrap(), l);
        check_storage(name, &FileStorage::open(&dst).unwrap(), l);
        // The visible transactions were all copied, nothing else.
        let n_src = DataFs::open(&src)
            .unwrap()
            .iter()
            .filter(|t| t.is_ok())
            .count();
        assert_eq!(l["transactions"].as_array().unwrap().len(), n_src, "{name}");
    }
}

/// A file built through the API: stores, undo-style backpointers (also
/// chains), a deletion (backpointer 0), two records of one object in one
/// transaction, metadata with non-ASCII bytes.
fn build(path: &Path) -> Writer {
    let mut w = Writer::create(path, fsformat::Magic::Fs30).unwrap();
    let tid = |i: u64| Tid(0x03f5_8e00_0000_0000 + i * 0x0444_4444);
    let mut pos_of = HashMap::new();
    let mut t = w
        .begin(tid(1), TxnStatus::Committed, b"", b"init", b"")
        .unwrap();
    for o in 0..5u64 {
        pos_of.insert(
            (o, 1),
            t.store(Oid(o), format!("obj {o} v1").as_bytes()).unwrap(),
        );
    }
    t.commit().unwrap();
    let mut t = w
        .begin(
            tid(2),
            TxnStatus::Committed,
            "Zoë".as_bytes(),
            "änderung".as_bytes(),
            &ext(),
        )
        .unwrap();
    pos_of.insert((1, 2), t.store(Oid(1), b"obj 1 v2").unwrap());
    t.store(Oid(2), b"obj 2 v2 first").unwrap();
    pos_of.insert((2, 2), t.store(Oid(2), b"obj 2 v2 second").unwrap());
    t.commit().unwrap();
    // Undo of tid 2: oid 1 back to v1, oid 2 back to v1.
    let mut t = w
        .begin(tid(3), TxnStatus::Committed, b"", b"undo", b"")
        .unwrap();
    pos_of.insert((1, 3), t.store_back(Oid(1), pos_of[&(1, 1)]).unwrap());
    t.store_back(Oid(2), pos_of[&(2, 1)]).unwrap();
    t.commit().unwrap();
    // A backpointer to a backpointer (chain), a deletion, a new object.
    let mut t = w
        .begin(tid(4), TxnStatus::Committed, b"", b"chain", b"")
        .unwrap();
    t.store_back(Oid(1), pos_of[&(1, 3)]).unwrap();
    t.store_back(Oid(3), 0).unwrap();
    t.store(Oid(9), b"nine").unwrap();
    t.commit().unwrap();
    let t = w
        .begin(tid(5), TxnStatus::Committed, b"", b"empty", b"")
        .unwrap();
    assert!(t.pos() > 4);
    t.commit().unwrap();
    w
}

#[test]
fn built_file_reads_like_zodb_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("Data.fs");
    build(&p).finish().unwrap();
    let z = zodb_check(&p);
    assert_eq!(z["fstest"], "ok", "{}", z["fstest"]);
    let l = &z["listing"];
    assert!(l["open_error"].is_null() && l["iter_error"].is_null());
    check_iteration("built", &DataFs::open(&p).unwrap(), l);
    let st = FileStorage::open(&p).unwrap();
    check_storage("built", &st, l);
    // And what we meant to write.
    assert_eq!(st.load(Oid(1)).unwrap().0, b"obj 1 v1");
    assert_eq!(st.load(Oid(2)).unwrap().0, b"obj 2 v1");
    assert!(matches!(st.load(Oid(3)), Err(Error::NoData { .. })));
    assert!(matches!(st.load(Oid(7)), Err(Error::NotFound { .. })));
    assert_eq!(st.max_oid(), Oid(9));
    assert_eq!(st.len(), 6);
}

#[test]
fn writer_rejects_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("Data.fs");
    let mut w = build(&p);
    let last = w.last_txn().unwrap().1;
    assert!(matches!(
        w.begin(last, TxnStatus::Committed, b"", b"", b""),
        Err(Error::TidNotIncreasing { .. })
    ));
    let next = Tid(last.0 + 1);
    assert!(w.begin(next, TxnStatus::Checkpoint, b"", b"", b"").is_err());
    let big = vec![b'x'; 70_000];
    assert!(matches!(
        w.begin(next, TxnStatus::Committed, b"", &big, b""),
        Err(Error::FieldTooLong { .. })
    ));
    let mut t = w.begin(next, TxnStatus::Committed, b"", b"", b"").unwrap();
    assert!(t.store(Oid(1), b"").is_err());
    let tpos = t.pos();
    assert!(t.store_back(Oid(1), tpos).is_err());
    assert!(t.store_back(Oid(1), 2).is_err());
    let _ = t; // aborted: nothing written
    let end = w.end();
    assert_eq!(std::fs::metadata(&p).unwrap().len(), end);
    assert!(Writer::create(&p, fsformat::Magic::Fs30).is_err());
}

#[test]
fn torn_appends_are_ignored_then_cut_by_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.fs");
    build(&base).finish().unwrap();
    let good = std::fs::read(&base).unwrap();
    // The bytes of one more transaction, as the writer appends it.
    let full_path = dir.path().join("full.fs");
    std::fs::write(&full_path, &good).unwrap();
    let mut w = Writer::open(&full_path).unwrap();
    let last = w.last_txn().unwrap();
    let mut t = w
        .begin(Tid(last.1 .0 + 1), TxnStatus::Committed, b"u", b"d", b"")
        .unwrap();
    t.store(Oid(1), b"new data for one").unwrap();
    t.store_back(Oid(2), 0).unwrap();
    t.commit().unwrap();
    w.finish().unwrap();
    let full = std::fs::read(&full_path).unwrap();
    let extra = &full[good.len()..];
    let expect = FileStorage::open(&base).unwrap();
    let torn = dir.path().join("torn.fs");
    for cut in 1..extra.len() {
        let mut b = good.clone();
        b.extend_from_slice(&extra[..cut]);
        std::fs::write(&torn, &b).unwrap();
        let st = FileStorage::open_with(&torn, no_sidecar()).unwrap();
        assert_eq!(st.size(), good.len() as u64, "cut {cut}");
        assert_eq!(st.iter().count(), expect.iter().count(), "cut {cut}");
        assert_eq!(st.load(Oid(1)).unwrap(), expect.load(Oid(1)).unwrap());
        // ZODB's quirk: lastTransaction is the torn tid once its header is whole.
        let want_last = if cut >= 23 {
            Tid(last.1 .0 + 1)
        } else {
            last.1
        };
        assert_eq!(st.last_transaction(), want_last, "cut {cut}");
    }
    // The oracle agrees on one torn file and on a 'c' (checkpoint) tail.
    let mut b = good.clone();
    b.extend_from_slice(&extra[..extra.len() - 3]);
    std::fs::write(&torn, &b).unwrap();
    let z = zodb_check(&torn);
    check_storage(
        "torn",
        &FileStorage::open_with(&torn, no_sidecar()).unwrap(),
        &z["listing"],
    );
    let ckpt = dir.path().join("ckpt.fs");
    let mut b = full.clone();
    b[good.len() + 16] = b'c';
    std::fs::write(&ckpt, &b).unwrap();
    let z = zodb_check(&ckpt);
    let st = FileStorage::open_with(&ckpt, no_sidecar()).unwrap();
    assert_eq!(st.size(), good.len() as u64);
    check_storage("ckpt", &st, &z["listing"]);
    check_iteration("ckpt", st.datafs(), &z["listing"]);
    drop(st);
    // The writer cuts the tail, keeps it in .tr0, and appends after.
    let mut w = Writer::open(&ckpt).unwrap();
    assert_eq!(std::fs::read(&ckpt).unwrap(), good);
    let tr0 = dir.path().join("ckpt.fs.tr0");
    assert_eq!(std::fs::read(&tr0).unwrap(), b[good.len()..]);
    let t = w
        .begin(Tid(last.1 .0 + 9), TxnStatus::Committed, b"", b"", b"")
        .unwrap();
    t.commit().unwrap();
    w.finish().unwrap();
    assert_eq!(zodb_check(&ckpt)["fstest"], "ok");
}

fn no_sidecar() -> OpenOptions {
    OpenOptions {
        read_index: false,
        write_index: false,
    }
}

#[test]
fn sidecar_is_used_when_valid_and_never_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("Data.fs");
    std::fs::copy(testdata().join("basic.fs"), &p).unwrap();
    let side = sidecar_path(&p);
    let write = OpenOptions {
        read_index: true,
        write_index: true,
    };
    let scanned = FileStorage::open_with(&p, write).unwrap();
    assert_eq!(scanned.index_source(), IndexSource::Scanned);
    assert!(side.exists());
    let reference: Vec<_> = scanned.index().iter().collect();
    let end = scanned.size();
    drop(scanned);
    let st = FileStorage::open(&p).unwrap();
    assert_eq!(st.index_source(), IndexSource::Sidecar { covered: end });
    assert_eq!(st.index().iter().collect::<Vec<_>>(), reference);
    drop(st);

    // Appended transactions: the sidecar covers a prefix, the rest is scanned.
    let mut w = Writer::open(&p).unwrap();
    let last = w.last_txn().unwrap().1;
    let mut t = w
        .begin(Tid(last.0 + 1), TxnStatus::Committed, b"", b"", b"")
        .unwrap();
    t.store(Oid(1), b"appended").unwrap();
    t.store(Oid(0x1000), b"new object").unwrap();
    t.commit().unwrap();
    w.finish().unwrap();
    let st = FileStorage::open(&p).unwrap();
    assert_eq!(st.index_source(), IndexSource::Sidecar { covered: end });
    let full = FileStorage::open_with(&p, no_sidecar()).unwrap();
    assert_eq!(st.index(), full.index());
    assert_eq!(st.load(Oid(1)).unwrap().0, b"appended");
    assert_eq!(st.last_transaction(), full.last_transaction());
    drop((st, full));

    // A flipped byte anywhere: ignored, rebuilt.
    let good = std::fs::read(&side).unwrap();
    for at in [0, 20, 30, 60, good.len() / 2, good.len() - 2] {
        let mut b = good.clone();
        b[at] ^= 1;
        std::fs::write(&side, &b).unwrap();
        let st = FileStorage::open(&p).unwrap();
        assert_eq!(st.index_source(), IndexSource::Scanned, "flip at {at}");
    }
    // A well-formed sidecar of another file of the same size: ignored.
    let other = dir.path().join("other.fs");
    let mut b = std::fs::read(&p).unwrap();
    let first_tid_at = 4;
    b[first_tid_at + 7] ^= 1; // first transaction's tid differs
    std::fs::write(&other, &b).unwrap();
    std::fs::write(&side, &good).unwrap();
    std::fs::copy(&side, sidecar_path(&other)).unwrap();
    let st = FileStorage::open(&other).unwrap();
    assert_eq!(st.index_source(), IndexSource::Scanned);
    // A sidecar covering more than the file (file replaced by a shorter one).
    std::fs::copy(testdata().join("small.fs"), &other).unwrap();
    let st = FileStorage::open(&other).unwrap();
    assert_eq!(st.index_source(), IndexSource::Scanned);
    assert_eq!(st.len(), 3);
}

#[test]
fn refresh_picks_up_appended_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("Data.fs");
    let mut w = build(&p);
    let mut st = FileStorage::open_with(&p, no_sidecar()).unwrap();
    let n0 = st.iter().count();
    assert_eq!(st.refresh().unwrap(), 0);
    let last = w.last_txn().unwrap().1;
    for i in 1..=3u64 {
        let mut t = w
            .begin(Tid(last.0 + i), TxnStatus::Committed, b"", b"", b"")
            .unwrap();
        t.store(Oid(100 + i), format!("v{i}").as_bytes()).unwrap();
        t.store(Oid(1), format!("one v{i}").as_bytes()).unwrap();
        t.commit().unwrap();
    }
    assert!(st.load(Oid(101)).is_err());
    assert_eq!(st.refresh().unwrap(), 3);
    assert_eq!(st.iter().count(), n0 + 3);
    assert_eq!(st.load(Oid(1)).unwrap().0, b"one v3");
    assert_eq!(st.load(Oid(103)).unwrap().0, b"v3");
    assert_eq!(st.last_transaction(), Tid(last.0 + 3));
    assert_eq!(st.max_oid(), Oid(103));
    // A torn append is not visible; once complete, it is.
    let end = st.size();
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    std::io::Write::write_all(&mut f, &[0x03, 0xf5, 0, 0]).unwrap();
    assert_eq!(st.refresh().unwrap(), 0);
    assert_eq!(st.size(), end);
    assert_eq!(st.iter().count(), n0 + 3);
    let fresh = FileStorage::open_with(&p, no_sidecar()).unwrap();
    assert_eq!(st.index(), fresh.index());
}

#[test]
fn index_bytes_per_object() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("Data.fs");
    let mut w = Writer::create(&p, fsformat::Magic::Fs30).unwrap();
    w.set_sync(SyncMode::OnFinish);
    let data = [7u8; 20];
    for i in 0..200u64 {
        let mut t = w
            .begin(Tid(1000 + i), TxnStatus::Committed, b"", b"", b"")
            .unwrap();
        for j in 0..500u64 {
            // 100,000 objects, some written twice.
            t.store(Oid((i * 500 + j) % 90_000), &data).unwrap();
        }
        t.commit().unwrap();
    }
    w.finish().unwrap();
    let st = FileStorage::open_with(&p, no_sidecar()).unwrap();
    assert_eq!(st.len(), 90_000);
    let per = st.index().heap_bytes() as f64 / st.len() as f64;
    println!("index: {} objects, {per:.2} bytes per object", st.len());
    assert!(per <= 16.0, "{per} bytes per object");
}

#[test]
fn writer_saves_a_sidecar_the_reader_uses() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("Data.fs");
    let w = build(&p);
    w.save_index().unwrap();
    let end = w.end();
    w.finish().unwrap();
    let st = FileStorage::open(&p).unwrap();
    assert_eq!(st.index_source(), IndexSource::Sidecar { covered: end });
    let scanned = FileStorage::open_with(&p, no_sidecar()).unwrap();
    assert_eq!(st.index(), scanned.index());
    assert_eq!(st.last_txn(), scanned.last_txn());
    // Reopened for appending, the writer starts from the sidecar too.
    let mut w = Writer::open(&p).unwrap();
    assert_eq!(w.end(), end);
    assert_eq!(w.index(), scanned.index());
    let t = w.begin(
        Tid(w.last_txn().unwrap().1 .0 + 1),
        TxnStatus::Packed,
        b"",
        b"",
        b"",
    );
    t.unwrap().commit().unwrap();
    w.finish().unwrap();
    assert_eq!(zodb_check(&p)["fstest"], "ok");
}

#[test]
fn refresh_sees_a_checkpoint_finished_in_place() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("Data.fs");
    let w = build(&p);
    let (tpos, tid) = w.last_txn().unwrap();
    w.finish().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    // As ZODB's tpc_vote leaves it: status 'c' until tpc_finish.
    f.write_all_at(b"c", tpos + 16).unwrap();
    let mut st = FileStorage::open_with(&p, no_sidecar()).unwrap();
    assert_eq!(st.size(), tpos);
    assert!(st.last_txn().unwrap().1 < tid);
    assert_eq!(st.refresh().unwrap(), 0);
    f.write_all_at(b" ", tpos + 16).unwrap();
    assert_eq!(st.refresh().unwrap(), 1);
    assert_eq!(st.last_txn(), Some((tpos, tid)));
    assert_eq!(st.size(), std::fs::metadata(&p).unwrap().len());
    let mut fs = DataFs::open(&p).unwrap();
    f.write_all_at(b"c", tpos + 16).unwrap();
    assert_eq!(fs.tail().end, tpos);
    f.write_all_at(b" ", tpos + 16).unwrap();
    assert!(fs.refresh().unwrap());
    assert_eq!(fs.tail().end, st.size());
}

#[test]
fn writer_and_zodb_exclude_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("Data.fs");
    let w = build(&p);
    assert!(matches!(Writer::open(&p), Err(Error::Locked { .. })));
    // ZODB's read-write open takes the same lock and must fail.
    let out = std::process::Command::new(common::oracle_python())
        .arg("-c")
        .arg("import sys\nfrom ZODB.FileStorage import FileStorage\nFileStorage(sys.argv[1])")
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("LockError"));
    drop(w);
    let w = Writer::open(&p).unwrap();
    drop(w);
    let out = std::process::Command::new(common::oracle_python())
        .arg("-c")
        .arg("import sys\nfrom ZODB.FileStorage import FileStorage\nFileStorage(sys.argv[1]).close()")
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
