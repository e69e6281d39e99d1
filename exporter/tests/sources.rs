//! The range-reading SQLite source yields exactly what the generic
//! `Backend` source yields, batch boundaries and tid ranges included, by
//! each of its ways (planned scan or index lookups; data rows in one pass
//! or one by one).

mod common;

use common::{load, new_db, synthetic, LoadOptions};
use fsformat::Tid;
use neo_exporter::{
    export, BackendSource, Batch, ExportOptions, NoProgress, Source, SourceError, SourceTxn,
    SqliteSource, SCAN_ROWS,
};

/// A database of `np` partitions in `dir` holding a synthetic FileStorage of
/// `txns` transactions, zlib-compressed as NEO's client stores them.
fn compressed_db(
    dir: &std::path::Path,
    txns: usize,
    np: u32,
) -> neo_server::storage::SqliteBackend {
    let fs = dir.join("src.fs");
    synthetic(&fs, txns as u64);
    let mut db = new_db(&dir.join("db.sqlite"), np);
    let opts = LoadOptions {
        compress: true,
        ..LoadOptions::default()
    };
    assert_eq!(load(&fs, &mut db, opts), txns);
    db
}

/// Every transaction of `[lo, hi]` read with `read_batch`, `limit` at a time.
fn read_all(src: &mut SqliteSource, lo: Tid, hi: Tid, limit: usize) -> Vec<SourceTxn> {
    let mut got = Vec::new();
    let mut from = lo;
    loop {
        let mut b = Batch::new();
        src.read_batch(from, hi, limit, &mut b).unwrap();
        got.extend(b.to_source_txns());
        match b.txns().last() {
            Some(t) if b.len() == limit && t.tid < hi => from = Tid(t.tid.0 + 1),
            _ => return got,
        }
    }
}

#[test]
fn every_way_of_reading_batches_equals_generic_reads() {
    let dir = tempfile::tempdir().unwrap();
    let db = compressed_db(dir.path(), 300, 3);
    let mut generic = BackendSource::new(db).unwrap();
    let all = generic.tids(Tid(0), Tid(u64::MAX >> 1), 1000).unwrap();
    let want: Vec<_> = all
        .iter()
        .map(|&t| generic.transaction(t).unwrap().unwrap())
        .collect();
    let mut db = generic.into_inner();
    for sparse in [false, true] {
        if sparse {
            // Data ids far apart (as after deletions): one lookup per id.
            for sql in [
                "UPDATE data SET id = -id - 1",
                "UPDATE data SET id = (-id - 1) * 1000 + 7",
                "UPDATE obj SET data_id = data_id * 1000 + 7",
            ] {
                db.connection().execute(sql, []).unwrap();
            }
        }
        for limit in [SCAN_ROWS, 10, 0] {
            let mut src = SqliteSource::new(db).unwrap();
            src.set_scan_limit(limit);
            for (lo, hi, batch) in [(0, 299, 7), (10, 200, 50), (250, 270, 4), (5, 5, 3)] {
                src.plan(all[lo], all[hi]).unwrap();
                // A scan when the range has a quarter of the transactions
                // and its rows fit the limit.
                let scan = limit == SCAN_ROWS && (hi - lo + 1) * 4 >= all.len();
                assert_eq!(src.scanned(), scan, "{lo}..={hi} limit {limit}");
                let got = read_all(&mut src, all[lo], all[hi], batch);
                assert!(
                    got == want[lo..=hi],
                    "{lo}..={hi} by {batch}, limit {limit}, sparse {sparse}"
                );
            }
            db = src.into_inner();
        }
    }
}

#[test]
fn export_by_scan_equals_export_by_lookups() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = compressed_db(dir.path(), 120, 2);
    let mut outs = Vec::new();
    for limit in [SCAN_ROWS, 0] {
        let mut src = SqliteSource::new(db).unwrap();
        src.set_scan_limit(limit);
        let out = dir.path().join(format!("out{limit}.fs"));
        let opts = ExportOptions {
            batch: 16,
            ..ExportOptions::default()
        };
        let s = export(&mut src, &out, &opts, &mut NoProgress).unwrap();
        assert_eq!(s.transactions, 120);
        assert_eq!(src.scanned(), limit != 0);
        outs.push(std::fs::read(&out).unwrap());
        db = src.into_inner();
    }
    assert!(outs[0] == outs[1]);
}

#[test]
fn sqlite_source_equals_backend_source() {
    let dir = tempfile::tempdir().unwrap();
    let db = compressed_db(dir.path(), 300, 4);
    let mut generic = BackendSource::new(db).unwrap();
    let all = generic.tids(Tid(0), Tid(u64::MAX >> 1), 1000).unwrap();
    assert_eq!(all.len(), 300);
    let want: Vec<_> = all
        .iter()
        .map(|&t| generic.transaction(t).unwrap().unwrap())
        .collect();
    assert!(want
        .iter()
        .any(|t| t.records.iter().any(|r| r.value_tid.is_some())));
    assert!(want
        .iter()
        .any(|t| t.records.iter().any(|r| r.data.is_none())));
    assert!(want.iter().any(|t| t
        .records
        .iter()
        .any(|r| r.data.as_ref().is_some_and(|d| d.0 == 1))));
    let mut fast = SqliteSource::new(generic.into_inner()).unwrap();
    for (lo, hi, limit) in [
        (0, 299, 1000),
        (10, 200, 7),
        (0, 0, 5),
        (299, 299, 1),
        (50, 49, 3),
    ] {
        let got = fast
            .transactions(all[lo], all[hi.max(lo.min(hi))], limit)
            .unwrap();
        let expect: Vec<_> = if lo <= hi {
            want[lo..=hi].iter().take(limit).cloned().collect()
        } else {
            Vec::new()
        };
        let got = if lo > hi {
            fast.transactions(all[lo], all[hi], limit).unwrap()
        } else {
            got
        };
        assert_eq!(got, expect, "{lo}..={hi} limit {limit}");
    }
    assert_eq!(fast.count(all[0], all[299]).unwrap(), 300);
}

#[test]
fn missing_partitions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = new_db(&dir.path().join("db.sqlite"), 3);
    use neo_server::storage::{Backend, CellState};
    db.change_partition_table(2, 0, &[(1, 1, CellState::OutOfDate)], false, Tid(0))
        .unwrap();
    db.commit().unwrap();
    match SqliteSource::new(db) {
        Err(e @ SourceError::MissingPartitions { np: 3, .. }) => {
            assert!(e.to_string().contains("[1]"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn records_their_transaction_does_not_list_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fs = dir.path().join("src.fs");
    synthetic(&fs, 20);
    let mut db = new_db(&dir.path().join("db.sqlite"), 2);
    assert_eq!(load(&fs, &mut db, LoadOptions::default()), 20);
    let mut src = SqliteSource::new(db).unwrap();
    let all = src.tids(Tid(0), Tid(u64::MAX >> 1), 100).unwrap();
    assert_eq!(src.transactions(all[0], all[19], 100).unwrap().len(), 20);
    let db = src.into_inner();
    // The first oid of a transaction's list dropped: its record is unlisted.
    let (t5, t9) = (all[5].0 as i64, all[9].0 as i64);
    db.connection()
        .execute(
            "UPDATE trans SET oids = substr(oids, 9) WHERE tid = ?",
            [t5],
        )
        .unwrap();
    let mut src = SqliteSource::new(db).unwrap();
    let e = src.transactions(all[0], all[19], 100).unwrap_err();
    assert!(
        matches!(&e, SourceError::Inconsistent { what } if what.contains(&all[5].to_string())),
        "{e}"
    );
    // A transaction gone, its records left (read after the one above).
    let db = src.into_inner();
    db.connection()
        .execute("DELETE FROM trans WHERE tid = ?", [t9])
        .unwrap();
    let mut src = SqliteSource::new(db).unwrap();
    let e = src.transactions(all[6], all[19], 100).unwrap_err();
    assert!(
        matches!(&e, SourceError::Inconsistent { what } if what.contains(&all[9].to_string())),
        "{e}"
    );
    // Before the hole, the batch is fine.
    assert_eq!(src.transactions(all[6], all[8], 100).unwrap().len(), 3);
}
