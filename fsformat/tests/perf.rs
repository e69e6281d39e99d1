//! Timings on a big file (ignored by default; run in release):
//!
//!     NEO_BENCH_FS=bench-data/bench.fs cargo test --release -p fsformat \
//!         --test perf -- --ignored --nocapture
//!
//! Prints: reading the file like `cat` (into a reused buffer), a full
//! iteration over transactions and records touching every data byte, the
//! index build (scan), and hot `load` / `loadBefore` latencies.

use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

use fsformat::{DataFs, FileStorage, Oid, OpenOptions, Payload, SyncMode, Writer};

fn bench_file() -> Option<PathBuf> {
    let p = std::env::var_os("NEO_BENCH_FS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench-data/bench.fs")
        });
    p.exists().then_some(p)
}

#[test]
#[ignore]
fn timings() {
    let Some(path) = bench_file() else {
        println!("no bench file (set NEO_BENCH_FS)");
        return;
    };
    let size = std::fs::metadata(&path).unwrap().len();
    let mb = size as f64 / 1e6;

    let t = Instant::now();
    let mut f = std::fs::File::open(&path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut sum = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        sum = sum.wrapping_add(buf[n - 1] as u64);
    }
    let cat = t.elapsed().as_secs_f64();
    println!("cat-like read: {cat:.3} s ({:.0} MB/s) [{sum}]", mb / cat);

    let fs = DataFs::open(&path).unwrap();
    let t = Instant::now();
    let (mut ntxn, mut nrec, mut bytes, mut x) = (0u64, 0u64, 0u64, 0u8);
    for txn in fs.iter() {
        let txn = txn.unwrap();
        ntxn += 1;
        for r in txn.records() {
            let r = r.unwrap();
            nrec += 1;
            if let Payload::Data(d) = r.payload {
                bytes += d.len() as u64;
                x ^= d.iter().fold(0u8, |a, &b| a ^ b);
            }
        }
    }
    let it = t.elapsed().as_secs_f64();
    println!(
        "iterate: {ntxn} txns, {nrec} records, {bytes} data bytes: {it:.3} s ({:.0} MB/s, {:.2}x cat) [{x}]",
        mb / it,
        it / cat
    );

    let t = Instant::now();
    let fs2 = DataFs::open(&path).unwrap();
    let mut n = 0u64;
    for txn in fs2.iter() {
        for r in txn.unwrap().records() {
            n += r.unwrap().oid.0 & 1;
        }
    }
    println!(
        "headers only (fresh map): {:.3} s [{n}]",
        t.elapsed().as_secs_f64()
    );
    drop(fs2);

    let opts = OpenOptions {
        read_index: false,
        write_index: false,
    };
    let t = Instant::now();
    let st = FileStorage::open_with(&path, opts).unwrap();
    let build = t.elapsed().as_secs_f64();
    println!(
        "index build (scan): {build:.3} s, {} objects, {:.1} bytes/object, {:.0} ns/record",
        st.len(),
        st.index().heap_bytes() as f64 / st.len() as f64,
        build * 1e9 / nrec as f64
    );

    let oids: Vec<Oid> = st.index().iter().map(|(o, _)| o).collect();
    let mut pick = Vec::with_capacity(100_000);
    let mut s: u64 = 42;
    for _ in 0..100_000 {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        pick.push(oids[(s >> 33) as usize % oids.len()]);
    }
    let mut acc = 0usize;
    for &o in &pick {
        acc += st.load(o).map(|(d, _)| d.len()).unwrap_or(0);
    }
    let t = Instant::now();
    for &o in &pick {
        acc += st.load(o).map(|(d, _)| d.len()).unwrap_or(0);
    }
    let load = t.elapsed().as_secs_f64() * 1e6 / pick.len() as f64;
    let t = Instant::now();
    for &o in &pick {
        let (_, tid) = st.load(o).unwrap();
        acc += st
            .load_before(o, tid)
            .ok()
            .flatten()
            .map_or(0, |r| r.data.len());
    }
    let lb = t.elapsed().as_secs_f64() * 1e6 / pick.len() as f64;
    println!("hot load: {load:.3} us; load + loadBefore(previous): {lb:.3} us [{acc}]");

    let t = Instant::now();
    let n = st.index().iter().count();
    println!("index iteration ({n}): {:.3} s", t.elapsed().as_secs_f64());

    // The sidecar: saved beside a symlink (never beside the bench file).
    let sdir = tempfile::tempdir().unwrap();
    let link = sdir.path().join("bench.fs");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let st2 = FileStorage::open_with(&link, opts).unwrap();
    let t = Instant::now();
    st2.save_index().unwrap();
    let save = t.elapsed().as_secs_f64();
    drop(st2);
    let t = Instant::now();
    let st2 = FileStorage::open(&link).unwrap();
    let load = t.elapsed().as_secs_f64();
    assert!(matches!(
        st2.index_source(),
        fsformat::IndexSource::Sidecar { .. }
    ));
    assert_eq!(st2.index(), st.index());
    println!("sidecar: save {save:.3} s, open with it {load:.3} s");

    // Restore-style copy of every transaction (one fsync at the end); the
    // copy has the same layout, so source offsets map by a constant shift.
    let dir = tempfile::tempdir_in(path.parent().unwrap()).unwrap();
    let dst = dir.path().join("copy.fs");
    let t = Instant::now();
    let mut w = Writer::create(&dst, fs.magic()).unwrap();
    w.set_sync(SyncMode::OnFinish);
    for txn in fs.iter() {
        let txn = txn.unwrap();
        let shift = w.end() as i64 - txn.pos as i64;
        let st = txn.status().unwrap();
        let mut tw = w
            .begin(txn.tid, st, txn.user, txn.description, txn.extension)
            .unwrap();
        for r in txn.records() {
            let r = r.unwrap();
            let p = match r.payload {
                Payload::Back(b) if b != 0 => Payload::Back((b as i64 + shift) as u64),
                p => p,
            };
            tw.restore(r.oid, r.serial, p).unwrap();
        }
        tw.commit().unwrap();
    }
    w.finish().unwrap();
    let cp = t.elapsed().as_secs_f64();
    println!("copy (restore, one fsync): {cp:.3} s ({:.0} MB/s)", mb / cp);
    assert!(
        DataFs::open(&dst).unwrap().bytes() == fs.bytes(),
        "copy differs"
    );
    println!("copy is byte-identical");
}
