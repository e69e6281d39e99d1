//! Import progress through `neoctl`, end to end: a real `neo-import`
//! process imports a Data.fs written by the real ZODB (the benchmark
//! generator, 300 transactions, ~8 MB) at a limited rate (`--max-rate`), so
//! that the import is seen under way; the real `neoctl` binary asks the
//! admin. `print import` and `print summary` show the storage's line with
//! imported transactions/bytes, rate and ETA during the import, then the
//! same line ending in `done` with every transaction imported, under
//! NEO's unchanged first summary line.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use neo_e2e::{
    binary, free_port, local, oracle_python, repo_root, wait_listening, Daemon, TestDir,
};

const TXNS: u64 = 300;
/// ZODB's root creation and the generator's set-up transaction.
const EXTRA_TXNS: u64 = 2;

fn neoctl(admin: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(binary("neo-server", "neoctl"))
        .arg("-a")
        .arg(admin)
        .args(args)
        .output()
        .expect("run neoctl");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `(done, total)` of "imported DONE/TOTAL transactions" in `line`.
fn txn_counts(line: &str) -> Option<(u64, u64)> {
    let rest = line.split("imported ").nth(1)?;
    let (frac, _) = rest.split_once(" transactions")?;
    let (a, b) = frac.split_once('/')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn generate(fs: &Path) {
    let script = repo_root().join("scripts/bench/gen_bench_fs.py");
    let out = Command::new(oracle_python())
        .arg(&script)
        .arg(fs)
        .args(["--transactions", &TXNS.to_string(), "--quiet"])
        .output()
        .expect("run the oracle Python (scripts/setup-test-env.sh)");
    assert!(
        out.status.success(),
        "gen_bench_fs.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn neoctl_shows_import_progress_then_done() {
    let dir = TestDir::new("import-progress");
    let fs = dir.path().join("Data.fs");
    generate(&fs);
    let size = std::fs::metadata(&fs).unwrap().len();
    let conf = dir.path().join("importer.conf");
    std::fs::write(
        &conf,
        format!(
            "[neo]\ndatabase = dest.sqlite\n\n[root]\nstorage =\n  <filestorage>\n    path {}\n  </filestorage>\n",
            fs.display()
        ),
    )
    .unwrap();
    // Built before the import starts, so the first asks are not late.
    let neoctl_bin = binary("neo-server", "neoctl");
    assert!(neoctl_bin.exists());
    let (mport, aport) = (free_port(), free_port());
    let admin = local(aport).to_string();
    // About 3 s of import at 3 MB/s.
    let rate = (size as f64 / 3.0 / 1e6).max(0.5);
    let _imp = Daemon::spawn(
        "neo-import",
        dir.path(),
        &binary("neo-importer", "neo-import"),
        &[
            conf.display().to_string(),
            "-c".into(),
            "import-progress".into(),
            "-m".into(),
            local(mport).to_string(),
            "-a".into(),
            admin.clone(),
            "--max-rate".into(),
            format!("{rate:.3}"),
        ],
    );
    assert!(
        wait_listening(local(aport), Duration::from_secs(20)),
        "neo-import's admin does not listen"
    );

    let end = Instant::now() + Duration::from_secs(60);
    let mut under_way: Option<String> = None;
    let done_line = loop {
        assert!(Instant::now() < end, "the import never finished");
        let (ok, out) = neoctl(&admin, &["print", "import"]);
        let line = out.trim().to_owned();
        if !ok || line == "no import" {
            // The cluster is starting (not operational yet).
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        assert!(line.starts_with("S1: import of "), "{line}");
        assert!(line.contains(&fs.display().to_string()), "{line}");
        let (a, b) = txn_counts(&line).unwrap_or_else(|| panic!("no counts: {line}"));
        assert_eq!(b, TXNS + EXTRA_TXNS, "{line}");
        assert!(line.contains(" MB ("), "{line}");
        assert!(line.contains(" MB/s"), "{line}");
        if line.ends_with(", done") {
            assert_eq!(a, b, "{line}");
            break line;
        }
        assert!(a < b, "{line}");
        if a > 0 && under_way.is_none() {
            assert!(line.contains(", ETA "), "{line}");
            // The summary keeps NEO's lines and adds the storage's.
            let (ok, summary) = neoctl(&admin, &["print", "summary"]);
            assert!(ok, "{summary}");
            let lines: Vec<&str> = summary.lines().collect();
            assert!(lines[0].starts_with("# {"), "{summary}");
            assert!(lines[1].starts_with("RUNNING;"), "{summary}");
            assert!(
                lines.iter().any(|l| l.starts_with("S1: import of ")),
                "{summary}"
            );
            under_way = Some(line);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let under_way = under_way.expect("the import was never seen under way");
    assert!(done_line.contains("(100.0%)"), "{done_line}");
    assert!(!done_line.contains("ETA"), "{done_line}");
    eprintln!("under way: {under_way}\ndone: {done_line}");
}
