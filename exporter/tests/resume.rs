//! Incremental and interrupted exports, and refusal of files that are not
//! a prefix of the source's history.

mod common;

use std::io::Write;
use std::path::Path;

use common::{fixture, load, new_db, tids, txn_positions, LoadOptions};
use fsformat::Tid;
use neo_exporter::{export, ExportError, ExportOptions, NoProgress, SqliteSource, Summary};
use neo_server::storage::SqliteBackend;

fn run(
    db: SqliteBackend,
    out: &Path,
    opts: &ExportOptions,
) -> (Result<Summary, ExportError>, SqliteBackend) {
    let mut src = SqliteSource::new(db).expect("source");
    let r = export(&mut src, out, opts, &mut NoProgress);
    (r, src.into_inner())
}

fn basic() -> Vec<u8> {
    std::fs::read(fixture("basic")).unwrap()
}

#[test]
fn incremental_export_appends_new_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let all = tids(&fixture("basic"));
    let mut db = new_db(&dir.path().join("db.sqlite"), 2);
    let first = LoadOptions {
        max: Some(all[19]),
        compress: true,
        ..LoadOptions::default()
    };
    assert_eq!(load(&fixture("basic"), &mut db, first), 20);
    let out = dir.path().join("out.fs");
    let (r, mut db) = run(db, &out, &ExportOptions::default());
    let s = r.unwrap();
    assert_eq!((s.existing, s.transactions), (0, 20));
    // More commits, then the same command again.
    let rest = LoadOptions {
        min: Some(all[20]),
        compress: true,
        ..LoadOptions::default()
    };
    assert_eq!(load(&fixture("basic"), &mut db, rest), 20);
    let (r, db) = run(db, &out, &ExportOptions::default());
    let s = r.unwrap();
    assert_eq!((s.existing, s.transactions), (20, 20));
    assert_eq!(s.verified, 18, "first, last and 16 samples");
    assert_eq!(std::fs::read(&out).unwrap(), basic());
    // Nothing new: nothing appended, everything checked on request.
    let opts = ExportOptions {
        verify_all: true,
        ..ExportOptions::default()
    };
    let (r, _) = run(db, &out, &opts);
    let s = r.unwrap();
    assert_eq!((s.existing, s.verified, s.transactions), (40, 40, 0));
    assert_eq!(std::fs::read(&out).unwrap(), basic());
}

#[test]
fn tid_max_then_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let all = tids(&fixture("basic"));
    let mut db = new_db(&dir.path().join("db.sqlite"), 1);
    load(&fixture("basic"), &mut db, LoadOptions::default());
    let out = dir.path().join("out.fs");
    let opts = ExportOptions {
        tid_max: all[24],
        ..ExportOptions::default()
    };
    let (r, db) = run(db, &out, &opts);
    assert_eq!(r.unwrap().transactions, 25);
    assert_eq!(tids(&out), all[..25]);
    let (r, _) = run(db, &out, &ExportOptions::default());
    assert_eq!(r.unwrap().transactions, 15);
    assert_eq!(std::fs::read(&out).unwrap(), basic());
}

#[test]
fn interrupted_export_resumes_to_the_same_file() {
    let original = basic();
    let (pos, _) = txn_positions(&fixture("basic"));
    for (stop, tail) in [(13usize, "torn"), (27, "checkpoint"), (1, "none")] {
        let dir = tempfile::tempdir().unwrap();
        let mut db = new_db(&dir.path().join("db.sqlite"), 3);
        load(
            &fixture("basic"),
            &mut db,
            LoadOptions {
                compress: true,
                ..LoadOptions::default()
            },
        );
        let out = dir.path().join("out.fs");
        let opts = ExportOptions {
            stop_after: Some(stop as u64),
            batch: 4,
            ..ExportOptions::default()
        };
        let (r, db) = run(db, &out, &opts);
        let s = r.unwrap();
        assert!(!s.complete);
        assert_eq!(s.transactions, stop as u64);
        assert_eq!(std::fs::read(&out).unwrap(), original[..pos[stop] as usize]);
        // What a kill in the middle of the next transaction leaves.
        let next = &original[pos[stop] as usize..pos[stop + 1] as usize];
        let mut f = std::fs::OpenOptions::new().append(true).open(&out).unwrap();
        match tail {
            "torn" => f.write_all(&next[..next.len() / 2]).unwrap(),
            "checkpoint" => {
                let mut c = next.to_vec();
                c[16] = b'c';
                f.write_all(&c).unwrap();
            }
            _ => {}
        }
        drop(f);
        let (r, _) = run(db, &out, &ExportOptions::default());
        let s = r.unwrap();
        assert!(s.complete);
        assert_eq!(s.existing, stop as u64);
        assert_eq!(s.transactions, 40 - stop as u64);
        assert_eq!(std::fs::read(&out).unwrap(), original, "{tail}");
        let saved = dir.path().join("out.fs.tr0");
        assert_eq!(
            saved.exists(),
            tail != "none",
            "{tail}: the cut tail is saved"
        );
    }
}

/// Exports basic.fs fully, then tries to extend that file from a source
/// loaded with `opts`; returns the error.
fn refused(opts: LoadOptions, export_opts: ExportOptions) -> (Tid, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.fs");
    std::fs::write(&out, basic()).unwrap();
    let mut db = new_db(&dir.path().join("db.sqlite"), 2);
    load(&fixture("basic"), &mut db, opts);
    let (r, _) = run(db, &out, &export_opts);
    assert_eq!(std::fs::read(&out).unwrap(), basic(), "file left alone");
    match r {
        Err(e @ ExportError::NotPrefix { tid, .. }) => (tid, e.to_string()),
        other => panic!("expected NotPrefix, got {other:?}"),
    }
}

#[test]
fn non_prefix_files_are_refused() {
    let all = tids(&fixture("basic"));
    let d = ExportOptions::default;
    // The file has transactions the source lacks at its end ...
    let (tid, msg) = refused(
        LoadOptions {
            max: Some(all[30]),
            ..LoadOptions::default()
        },
        d(),
    );
    assert_eq!(tid, all[31]);
    assert!(
        msg.contains(&all[31].to_string()) && msg.contains("no such transaction"),
        "{msg}"
    );
    // ... or in the middle.
    let (tid, _) = refused(
        LoadOptions {
            skip: Some(all[10]),
            ..LoadOptions::default()
        },
        d(),
    );
    assert_eq!(tid, all[10]);
    // Different metadata in the last transaction: always checked.
    let (tid, msg) = refused(
        LoadOptions {
            tweak: Some(all[39]),
            ..LoadOptions::default()
        },
        d(),
    );
    assert_eq!(tid, all[39]);
    assert!(msg.contains("different description"), "{msg}");
    // In the middle: found with --verify-all.
    let all_opts = ExportOptions {
        verify_all: true,
        ..d()
    };
    let (tid, _) = refused(
        LoadOptions {
            tweak: Some(all[5]),
            ..LoadOptions::default()
        },
        all_opts,
    );
    assert_eq!(tid, all[5]);
    // A file starting before --tid-min.
    let from = ExportOptions {
        tid_min: all[1],
        ..d()
    };
    let (tid, msg) = refused(LoadOptions::default(), from);
    assert_eq!(tid, all[0]);
    assert!(msg.contains("before --tid-min"), "{msg}");
}

#[test]
fn another_history_is_refused() {
    // undo.fs has the same first tids as basic.fs (same fake clock), but
    // other contents: the first transaction already differs.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.fs");
    std::fs::write(&out, std::fs::read(fixture("undo")).unwrap()).unwrap();
    let mut db = new_db(&dir.path().join("db.sqlite"), 1);
    load(&fixture("basic"), &mut db, LoadOptions::default());
    let (r, _) = run(db, &out, &ExportOptions::default());
    let e = r.unwrap_err();
    assert!(matches!(e, ExportError::NotPrefix { .. }), "{e}");
}
