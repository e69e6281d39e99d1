//! `fsformat::verify` against ZODB's own `fstest`, on the ZODB-made
//! fixtures and on corrupted copies of them: whenever fstest reports a
//! problem we must report the same one at the same offset; when fstest
//! passes, we pass too, or fail with one of our stricter checks, which must
//! then agree with what ZODB logs or raises when it opens the file.
//!
//! Needs the oracle Python (`scripts/setup-test-env.sh`); fails without it.

mod fsformat_common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use fsformat::verify::{verify_file, Corruption, VerifyError, VerifyReport};
use fsformat_common::*;

/// How our verdict relates to fstest's on one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Agreement {
    BothOk,
    /// Same problem, same offset.
    SameError,
    /// fstest passes; one of our stricter checks fails.
    Stricter,
    /// An `FS21` file: fstest (ZODB on Python 3) rejects the magic, we
    /// accept it on purpose (see the module doc of `verify`).
    Fs21,
    /// fstest itself crashed (a Python exception, not a verdict).
    FstestCrashed,
}

fn ours(p: &Path) -> Result<VerifyReport, Corruption> {
    verify_file(p, &mut |_| {}).map_err(|e| match e {
        VerifyError::Corrupt { corruption, .. } => corruption,
        other => panic!("{}: {other}", p.display()),
    })
}

/// Compares our verdict on `p` with fstest's; `Err` describes a mismatch.
fn compare(p: &Path, zodb: &Fstest) -> Result<Agreement, String> {
    let got = ours(p);
    let mismatch = |why: &str| {
        Err(format!(
            "{}: {why}\n  fstest: {zodb:?}\n  ours:   {:?}",
            p.display(),
            got.as_ref().map_err(|c| c.to_string())
        ))
    };
    match (zodb, &got) {
        (None, Ok(_)) => Ok(Agreement::BothOk),
        (None, Err(c)) if c.fstest_message().is_none() => Ok(Agreement::Stricter),
        (None, Err(_)) => mismatch("fstest passes, we report an fstest problem"),
        (Some(Err(_)), _) => Ok(Agreement::FstestCrashed),
        (Some(Ok(msg)), Ok(r)) if msg.contains("invalid file header") && &r.magic == b"FS21" => {
            Ok(Agreement::Fs21)
        }
        (Some(Ok(_)), Ok(_)) => mismatch("fstest fails, we pass"),
        (Some(Ok(msg)), Err(c)) => {
            let Some(words) = c.fstest_message() else {
                return mismatch("fstest fails, we report a stricter check instead");
            };
            if !msg.contains(words) {
                return mismatch("not the same problem");
            }
            if fstest_offset(msg).unwrap_or(0) != c.offset() {
                return mismatch("not the same offset");
            }
            Ok(Agreement::SameError)
        }
    }
}

#[test]
fn fixtures_verdicts_match_fstest() {
    let paths = fixtures();
    let zodb = fstest_many(&paths);
    let mut seen = Vec::new();
    for p in &paths {
        let a = compare(p, &zodb[p]).unwrap_or_else(|e| panic!("{e}"));
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        seen.push((name.clone(), a));
        // Our stricter verdicts must be ZODB's own complaints on opening.
        let listing = &fixture_json(p)["listing"];
        match ours(p) {
            Err(Corruption::BadPrevPointer { pos, .. }) => {
                let line =
                    format!("ERROR ZODB.FileStorage: {name} incorrect previous pointer at {pos}");
                let log = listing["log"].as_array().expect("log list");
                assert!(
                    log.iter().any(|l| l.as_str() == Some(&line)),
                    "{name}: ZODB did not log {line:?}: {log:?}"
                );
            }
            Err(Corruption::VersionedRecord { .. }) => {
                let e = listing["open_error"].as_str().unwrap_or("");
                assert!(e.contains("Non-zero version length"), "{name}: {e}");
            }
            Err(c) => assert!(c.fstest_message().is_some(), "{name}: {c}"),
            Ok(r) => {
                // ZODB opens it: same number of objects and last tid.
                if listing["open_error"].is_null() {
                    assert_eq!(Some(r.objects), listing["len"].as_u64(), "{name}");
                    let last = r.last_tid.map(|t| t.to_string());
                    let zodb_last = listing["last_transaction"].as_str().map(str::to_owned);
                    if r.txns > 0 {
                        assert_eq!(last, zodb_last, "{name}");
                    }
                }
            }
        }
    }
    // The fixtures cover every kind of agreement but a crash.
    for kind in [
        Agreement::BothOk,
        Agreement::SameError,
        Agreement::Stricter,
        Agreement::Fs21,
    ] {
        assert!(
            seen.iter().any(|(_, a)| *a == kind),
            "no fixture gives {kind:?}: {seen:?}"
        );
    }
}

/// A named corruption of a good file.
struct Variant {
    name: String,
    bytes: Vec<u8>,
    /// The fstest words we expect (each variant aims at one check).
    expect: &'static str,
}

/// One variant per fstest check, aimed at a middle and at the last
/// transaction of `f`.
fn targeted(tag: &str, f: &[u8]) -> Vec<Variant> {
    let txns = layout(f);
    assert!(txns.len() >= 3, "{tag}: too few transactions");
    let mut out = Vec::new();
    let mut add = |name: String, bytes: Vec<u8>, expect| {
        out.push(Variant {
            name: format!("{tag}-{name}"),
            bytes,
            expect,
        })
    };
    let picks = [txns.len() / 2, txns.len() - 1];
    for &k in &picks {
        let t = &txns[k];
        let prev = &txns[k - 1];
        let m = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut g = f.to_vec();
            edit(&mut g);
            g
        };
        let prev_tid = be64(f, prev.pos);
        add(
            format!("t{k}-tid-equal"),
            m(&|g| put64(g, t.pos, prev_tid)),
            "time-stamp reduction",
        );
        add(
            format!("t{k}-tid-lower"),
            m(&|g| put64(g, t.pos, prev_tid - 1)),
            "time-stamp reduction",
        );
        add(
            format!("t{k}-tlen-huge"),
            m(&|g| put64(g, t.pos + 8, u64::MAX / 2)),
            "truncated possibly because of damaged records",
        );
        add(
            format!("t{k}-status-c"),
            m(&|g| g[t.pos as usize + 16] = b'c'),
            "checkpoint flag was not cleared",
        );
        add(
            format!("t{k}-status-x"),
            m(&|g| g[t.pos as usize + 16] = b'x'),
            "has invalid status",
        );
        add(
            format!("t{k}-ulen-too-long"),
            m(&|g| g[t.pos as usize + 17..t.pos as usize + 19].fill(0xff)),
            if t.tlen < 0xffff + 23 {
                "has an invalid transaction header"
            } else {
                // A big transaction: the record walk goes wrong first.
                "data record exceeds transaction record"
            },
        );
        add(
            format!("t{k}-redundant-length"),
            m(&|g| put64(g, t.pos + t.tlen, t.tlen + 1)),
            "has inconsistent transaction length",
        );
        add(
            format!("t{k}-redundant-length-zero"),
            m(&|g| put64(g, t.pos + t.tlen, 0)),
            "has inconsistent transaction length",
        );
        if let (Some(&first), Some(&last)) = (t.records.first(), t.records.last()) {
            add(
                format!("t{k}-tloc"),
                m(&|g| put64(g, first + 24, t.pos + 1)),
                "data record exceeds transaction record",
            );
            let plen = be64(f, last + 34);
            add(
                format!("t{k}-plen-plus-one"),
                m(&|g| put64(g, last + 34, plen.max(8) + 1)),
                "has data records that extend beyond",
            );
            add(
                format!("t{k}-plen-huge"),
                m(&|g| put64(g, last + 34, 1 << 40)),
                "has data records that extend beyond",
            );
        }
    }
    // Torn tails: inside the last header, inside its data, before its
    // redundant length.
    let last = txns.last().expect("a transaction");
    for (name, cut, expect) in [
        ("cut-header", last.pos + 10, "truncated at"),
        ("cut-header-1", last.pos + 1, "truncated at"),
        (
            "cut-data",
            last.pos + last.header_len + 5,
            "truncated possibly because of damaged records",
        ),
        (
            "cut-trailer",
            last.pos + last.tlen + 4,
            "truncated possibly because of damaged records",
        ),
    ] {
        add(name.to_owned(), f[..cut as usize].to_vec(), expect);
    }
    // The file ends inside a data record header: the last transaction
    // claims 10 bytes of records and its redundant length follows.
    let mut cut = f[..(last.pos + last.header_len + 18) as usize].to_vec();
    put64(&mut cut, last.pos + 8, last.header_len + 10);
    add("cut-record-header".to_owned(), cut, "truncated at");
    let mut magic = f.to_vec();
    magic[3] = b'X';
    add("magic".to_owned(), magic, "invalid file header");
    add("empty".to_owned(), Vec::new(), "empty file");
    out
}

fn write_variants(dir: &Path, variants: &[Variant]) -> Vec<PathBuf> {
    variants
        .iter()
        .map(|v| {
            let p = dir.join(format!("{}.fs", v.name));
            std::fs::write(&p, &v.bytes).expect("write variant");
            p
        })
        .collect()
}

#[test]
fn targeted_corruptions_match_fstest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut variants = Vec::new();
    for name in ["basic", "undo", "packed", "empty_txn", "dup_oid", "large"] {
        let f = std::fs::read(neo_e2e::testdata().join(format!("{name}.fs"))).expect("fixture");
        variants.extend(targeted(name, &f));
    }
    let paths = write_variants(dir.path(), &variants);
    let zodb = fstest_many(&paths);
    for (v, p) in variants.iter().zip(&paths) {
        let verdict = &zodb[p];
        match verdict {
            Some(Ok(msg)) => assert!(
                msg.contains(v.expect),
                "{}: fstest says {msg:?}, the variant aims at {:?}",
                v.name,
                v.expect
            ),
            other => panic!("{}: fstest did not report: {other:?}", v.name),
        }
        assert_eq!(
            compare(p, verdict).unwrap_or_else(|e| panic!("{e}")),
            Agreement::SameError,
            "{}",
            v.name
        );
        // The tool says the same: exit 1, fstest's offset.
        let (code, out, err) = run_neo_fs(&[std::ffi::OsStr::new("verify"), p.as_os_str()]);
        let at = ours(p).expect_err("corrupt").offset();
        assert_eq!(code, 1, "{}: {out}{err}", v.name);
        assert!(
            out.contains(&format!("CORRUPT at offset {at}:")),
            "{}: {out}",
            v.name
        );
    }
}

#[test]
fn random_corruptions_match_fstest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng(0x5eed_f57e);
    let mut variants = Vec::new();
    for name in ["basic", "undo", "packed", "empty_txn", "dup_oid"] {
        let f = std::fs::read(neo_e2e::testdata().join(format!("{name}.fs"))).expect("fixture");
        let txns = layout(&f);
        for i in 0..40 {
            let mut g = f.clone();
            // Half the flips hit headers, where they matter most.
            let at = if i % 2 == 0 {
                let t = &txns[rng.below(txns.len() as u64) as usize];
                let base = match t.records.as_slice() {
                    [] => t.pos,
                    recs if rng.below(2) == 0 => recs[rng.below(recs.len() as u64) as usize],
                    _ => t.pos,
                };
                (base + rng.below(42)).min(g.len() as u64 - 1)
            } else {
                rng.below(g.len() as u64)
            };
            g[at as usize] ^= 1 + rng.below(255) as u8;
            variants.push(Variant {
                name: format!("{name}-flip{i}-at{at}"),
                bytes: g,
                expect: "",
            });
        }
        for i in 0..10 {
            let cut = 4 + rng.below(f.len() as u64 - 4);
            variants.push(Variant {
                name: format!("{name}-cut{i}-at{cut}"),
                bytes: f[..cut as usize].to_vec(),
                expect: "",
            });
        }
    }
    let paths = write_variants(dir.path(), &variants);
    let zodb = fstest_many(&paths);
    let mut counts = std::collections::BTreeMap::new();
    let mut failures = Vec::new();
    for p in &paths {
        match compare(p, &zodb[p]) {
            Ok(a) => *counts.entry(format!("{a:?}")).or_insert(0) += 1,
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    check_stricter_against_zodb_open(&paths, &zodb);
    // Flips inside pickles are invisible to both; a good share of the
    // rest must be seen, and the way fstest sees it.
    let same = counts.get("SameError").copied().unwrap_or(0);
    assert!(same >= paths.len() / 3, "too few detected: {counts:?}");
}

/// Where fstest passes, our stricter checks must agree with what ZODB's
/// `FileStorage` says when it opens the file (its `read_index`): it logs
/// "incorrect previous pointer" as an ERROR exactly where we report a bad
/// previous pointer, it refuses versions, and a file we pass opens without
/// error or ERROR line.
fn check_stricter_against_zodb_open(paths: &[PathBuf], fstest: &HashMap<PathBuf, Fstest>) {
    let fstest_ok: Vec<PathBuf> = paths
        .iter()
        .filter(|p| fstest[*p].is_none())
        .cloned()
        .collect();
    let opened = zodb_open_many(&fstest_ok);
    let mut checked = 0;
    for p in &fstest_ok {
        let z = &opened[p];
        let errors: Vec<&String> = z.log.iter().filter(|l| l.starts_with("ERROR")).collect();
        match ours(p) {
            Ok(r) => {
                assert!(
                    z.error.is_none() && errors.is_empty(),
                    "{}: we pass, ZODB: {:?} {errors:?}",
                    p.display(),
                    z.error
                );
                // ZODB warns of a missing previous pointer where we do.
                for w in &r.warnings {
                    let fsformat::verify::Warning::PrevPointerMissing { pos, .. } = w else {
                        continue;
                    };
                    let line = format!("incorrect previous pointer at {pos}");
                    assert!(
                        z.log
                            .iter()
                            .any(|l| l.starts_with("WARNING") && l.ends_with(&line)),
                        "{}: {line}: {:?}",
                        p.display(),
                        z.log
                    );
                }
            }
            Err(Corruption::BadPrevPointer { pos, .. }) => {
                let line = format!("incorrect previous pointer at {pos}");
                assert!(
                    errors.iter().any(|l| l.ends_with(&line)),
                    "{}: ZODB does not log {line:?}: {:?}",
                    p.display(),
                    z.log
                );
                checked += 1;
            }
            Err(Corruption::VersionedRecord { .. }) => {
                let e = z.error.as_deref().unwrap_or("");
                assert!(
                    e.contains("Non-zero version length"),
                    "{}: {e}",
                    p.display()
                );
                checked += 1;
            }
            // Serial and backpointer problems: ZODB opens such files
            // without a word (it would fail only on loading them).
            Err(_) => {}
        }
    }
    assert!(checked > 0, "no stricter verdict was checked against ZODB");
}
