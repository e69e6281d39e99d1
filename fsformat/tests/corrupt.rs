//! Corrupt inputs give typed errors, never a panic or a hang: random byte
//! edits and truncations of ZODB-made files (and of their sidecar index)
//! run through open, forward and backward iteration, and every load.

mod common;

use std::path::Path;

use common::testdata;
use fsformat::{sidecar_path, DataFs, FileStorage, OpenOptions, Tid};
use proptest::prelude::*;

/// Everything a reader can be asked; errors are fine, panics are not.
fn exercise(path: &Path, opts: OpenOptions) {
    if let Ok(fs) = DataFs::open(path) {
        for t in fs.iter() {
            let Ok(t) = t else { break };
            for r in t.records() {
                let Ok(r) = r else { break };
                let _ = fs.record_data(&r);
                if let Some(b) = r.back() {
                    let _ = fs.back_tid(r.oid, b);
                }
            }
        }
        let _ = fs.tail();
        for t in fs.iter_back().take(1000) {
            if t.is_err() {
                break;
            }
        }
        let _ = fs
            .iter_range(Some(Tid(0x03f5_8e00_1000_0000)), None)
            .map(|it| it.count());
    }
    if let Ok(st) = FileStorage::open_with(path, opts) {
        let oids: Vec<_> = st.index().iter().collect();
        for (oid, _) in oids {
            let _ = st.load(oid);
            let _ = st.get_tid(oid);
            if let Ok(h) = st.history(oid) {
                let tids: Vec<Tid> = h.filter_map(|e| e.ok()).map(|e| e.tid).collect();
                for t in tids {
                    let _ = st.load_before(oid, t);
                    let _ = st.load_before(oid, Tid(t.0.wrapping_add(1)));
                    let _ = st.load_serial(oid, t);
                }
            }
        }
        let _ = st.iter_back().count();
    }
}

fn fixture(i: usize) -> Vec<u8> {
    let names = [
        "small.fs",
        "undo.fs",
        "dup_oid.fs",
        "empty_txn.fs",
        "packed.fs",
    ];
    std::fs::read(testdata().join(names[i % names.len()])).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn mutated_files_never_panic(
        which in 0usize..5,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut b = fixture(which);
        for (at, v) in edits {
            let i = at.index(b.len());
            b[i] = v;
        }
        if let Some(c) = cut {
            b.truncate(c.index(b.len() + 1));
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("Data.fs");
        std::fs::write(&p, &b).unwrap();
        exercise(&p, OpenOptions { read_index: false, write_index: false });
    }

    #[test]
    fn mutated_sidecars_are_rejected_or_harmless(
        which in 0usize..5,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("Data.fs");
        std::fs::write(&p, fixture(which)).unwrap();
        let reference = FileStorage::open_with(
            &p,
            OpenOptions { read_index: false, write_index: true },
        ).unwrap();
        let side = sidecar_path(&p);
        let mut s = std::fs::read(&side).unwrap();
        for (at, v) in edits {
            let i = at.index(s.len());
            s[i] = v;
        }
        std::fs::write(&side, &s).unwrap();
        // A checksummed sidecar with an edit is rejected: same index as a scan.
        let st = FileStorage::open(&p).unwrap();
        prop_assert_eq!(st.index(), reference.index());
        prop_assert_eq!(st.last_transaction(), reference.last_transaction());
    }
}

#[test]
fn every_truncation_of_a_fixture_is_handled() {
    let b = fixture(1);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("Data.fs");
    for cut in 0..=b.len() {
        std::fs::write(&p, &b[..cut]).unwrap();
        exercise(
            &p,
            OpenOptions {
                read_index: false,
                write_index: false,
            },
        );
        if cut >= 4 {
            // A prefix is a file with a torn tail: it always opens.
            let st = FileStorage::open_with(
                &p,
                OpenOptions {
                    read_index: false,
                    write_index: false,
                },
            );
            assert!(st.is_ok(), "cut {cut}: {:?}", st.err());
        }
    }
}
