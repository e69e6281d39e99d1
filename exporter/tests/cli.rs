//! The `neo-export` command: a whole export, refusals, and SIGKILLs at
//! random moments followed by runs that continue the file.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{fixture, load, new_db, synthetic, LoadOptions, Rng};
use fsformat::DataFs;

fn neo_export(db: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_neo-export"))
        .arg("--database")
        .arg(db)
        .args(["--progress", "none"])
        .args(extra)
        .arg(out)
        .output()
        .expect("run neo-export")
}

#[test]
fn exports_and_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("db.sqlite");
    let mut db = new_db(&db_path, 2);
    load(&fixture("undo"), &mut db, LoadOptions::default());
    drop(db);
    let out = dir.path().join("out.fs");
    let o = neo_export(&db_path, &out, &[]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("14 transactions appended"), "{stdout}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(fixture("undo")).unwrap()
    );
    // Again: nothing to do.
    let o = neo_export(&db_path, &out, &["--verify-all"]);
    assert!(o.status.success());
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("0 transactions appended")
            && stdout.contains("14 already there (14 checked)"),
        "{stdout}"
    );
    // Another history in the file.
    let other = dir.path().join("other.fs");
    std::fs::copy(fixture("basic"), &other).unwrap();
    let o = neo_export(&db_path, &other, &[]);
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("not a prefix") && stderr.contains("first difference at transaction"),
        "{stderr}"
    );
    // No database.
    let o = neo_export(
        &dir.path().join("missing.sqlite"),
        &dir.path().join("x.fs"),
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such database"));
    assert!(!dir.path().join("missing.sqlite").exists());
}

#[test]
fn sigkill_then_resume_gives_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.fs");
    synthetic(&src, 1500);
    let db_path = dir.path().join("db.sqlite");
    let mut db = new_db(&db_path, 3);
    let opts = LoadOptions {
        compress: true,
        ..LoadOptions::default()
    };
    assert_eq!(load(&src, &mut db, opts), 1500);
    drop(db);
    let reference = std::fs::read(&src).unwrap();
    // An uninterrupted run: the reference file, and how long a run takes.
    let t = std::time::Instant::now();
    let o = neo_export(&db_path, &dir.path().join("ref.fs"), &[]);
    let full = t.elapsed();
    assert!(o.status.success());
    assert_eq!(std::fs::read(dir.path().join("ref.fs")).unwrap(), reference);
    let out = dir.path().join("out.fs");
    let mut kills = 0;
    let mut rng = Rng(42);
    for round in 0.. {
        assert!(round < 100, "never finished");
        let mut child = Command::new(env!("CARGO_BIN_EXE_neo-export"))
            .arg("--database")
            .arg(&db_path)
            .args(["--progress", "none", "--sync-every", "1"])
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Somewhere in the first 60% of a full run.
        std::thread::sleep(full.mul_f64((rng.next() % 60) as f64 / 100.0));
        if child.try_wait().unwrap().is_some_and(|s| s.success()) {
            break;
        }
        child.kill().unwrap(); // SIGKILL
        let st = child.wait().unwrap();
        if st.success() {
            break;
        }
        kills += 1;
        // Each interrupted file is what ZODB would open: a prefix of the
        // reference, possibly with a torn or unfinished tail.
        let got = std::fs::read(&out).unwrap_or_default();
        if !got.is_empty() {
            let end = DataFs::open(&out).unwrap().tail().end as usize;
            assert_eq!(got[..end], reference[..end], "round {round}");
        }
    }
    assert!(kills > 0, "the export was never interrupted");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        reference,
        "after {kills} kills"
    );
}
