//! Reads every `testdata/*.fs` and compares everything with ZODB's own
//! listing of it (`testdata/*.json`, made by `scripts/oracle/zodb_check.py`):
//! transactions, metadata bytes, records, backpointers, `load`,
//! `loadBefore`, `loadSerial`, `history`, `lastTransaction`, `len`, the
//! max oid, and where ZODB fails.
//!
//! Deliberate differences, checked as such:
//! - `FS21` files: ZODB 6 refuses them, we read them (`fs21.fs` must read
//!   exactly like `small.fs`, of which it is a one-byte edit);
//! - where ZODB's iterator raises (`'u'` transaction: a ZODB bug; a torn
//!   header), ours yields the `'u'` transaction or stops at the torn tail.

mod common;

use std::path::PathBuf;

use common::{check_iteration, check_storage, testdata};
use fsformat::{DataFs, FileStorage, OpenOptions, Tid};
use serde_json::Value;

fn fixtures() -> Vec<(String, PathBuf, Value)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(testdata()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "fs") {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            let json = std::fs::read(p.with_extension("json")).unwrap();
            let json: Value = serde_json::from_slice(&json).unwrap();
            v.push((name, p, json));
        }
    }
    v.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        v.len() >= 10,
        "fixtures missing in {}",
        testdata().display()
    );
    v
}

#[test]
fn every_fixture_reads_like_zodb() {
    for (name, path, json) in fixtures() {
        let mut listing = &json["listing"];
        let small;
        if listing["magic"] == "FS21" {
            // ZODB 6 refuses FS21; we read it like the FS30 file it was made from.
            small = serde_json::from_slice::<Value>(
                &std::fs::read(testdata().join("small.json")).unwrap(),
            )
            .unwrap();
            listing = &small["listing"];
        }
        let fs = DataFs::open(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(fs.len(), json["listing"]["size"].as_u64().unwrap());
        assert_eq!(
            &fs.magic().bytes()[..],
            json["listing"]["magic"].as_str().unwrap().as_bytes()
        );
        check_iteration(&name, &fs, listing);
        let opts = OpenOptions {
            read_index: false,
            write_index: false,
        };
        match (
            FileStorage::open_with(&path, opts),
            listing["open_error"].as_str(),
        ) {
            (Ok(st), None) => check_storage(&name, &st, listing),
            (Err(e), Some(z)) => {
                if z.contains("Non-zero version length") {
                    assert!(matches!(e, fsformat::Error::Version { .. }), "{name}: {e}");
                }
            }
            (Ok(_), Some(z)) => panic!("{name}: ZODB fails to open ({z}), we open"),
            (Err(e), None) => panic!("{name}: ZODB opens, we fail: {e}"),
        }
    }
}

#[test]
fn backward_iteration_mirrors_forward() {
    for (name, path, _) in fixtures() {
        let Ok(st) = FileStorage::open(&path) else {
            continue;
        };
        let fwd: Vec<(u64, Tid)> = st
            .iter()
            .map(|t| t.map(|t| (t.pos, t.tid)))
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        let mut back: Vec<(u64, Tid)> = st
            .iter_back()
            .map(|t| t.map(|t| (t.pos, t.tid)).unwrap())
            .collect();
        back.reverse();
        let fwd: Vec<_> = fwd.into_iter().filter(|&(p, _)| p < st.size()).collect();
        assert_eq!(fwd, back, "{name}");
        // iter_range: every start/stop pair of listed tids.
        let tids: Vec<Tid> = back.iter().map(|x| x.1).collect();
        for (i, &a) in tids.iter().enumerate() {
            for &b in tids.iter().skip(i).step_by(3) {
                let got: Vec<Tid> = st
                    .iter_range(Some(a), Some(b))
                    .unwrap()
                    .map(|t| t.unwrap().tid)
                    .collect();
                let want: Vec<Tid> = tids.iter().copied().filter(|&t| a <= t && t <= b).collect();
                assert_eq!(got, want, "{name} range {a}..={b}");
            }
            let got = st.iter_range(Some(Tid(a.0 + 1)), None).unwrap().count();
            assert_eq!(got, tids.len() - i - 1, "{name} from {a}+1");
        }
    }
}
