//! `neo-bench` end to end, briefly: our master and SQLite storage on a
//! small database it fills itself, two worker processes of our client with
//! four loads in flight each for one second; the tables it prints must show
//! loads served, a storage CPU time, a capacity, and no errors.

use neo_e2e::{binary, TestDir};
use std::path::Path;
use std::process::Command;

/// The cells of the first table row (after the header and `|---|` lines)
/// that follows `header_start`, for the rows whose first cell is `storage`.
fn rows<'a>(out: &'a str, header_start: &str, storage: &str) -> Vec<Vec<&'a str>> {
    let mut found = Vec::new();
    let mut lines = out.lines().peekable();
    while let Some(l) = lines.next() {
        if !l.starts_with(header_start) {
            continue;
        }
        lines.next(); // |---|---|
        while let Some(r) = lines.next_if(|r| r.starts_with("| ")) {
            let cells: Vec<&str> = r.trim_matches('|').split('|').map(str::trim).collect();
            if cells.first() == Some(&storage) {
                found.push(cells);
            }
        }
    }
    found
}

#[test]
fn two_workers_with_loads_in_flight() {
    let master = binary("neo-server", "neomaster");
    binary("neo-importer", "neostorage");
    let bin_dir = master.parent().unwrap_or(Path::new("."));
    let dir = TestDir::new("neo-bench");
    let db = dir.path().join("bench.sqlite");
    let out = Command::new(env!("CARGO_BIN_EXE_neo-bench"))
        .args(["--storages", "rust", "--clients", "rust"])
        .args(["--workers", "2", "--inflight", "4", "--duration", "1"])
        .args(["--fill", "500", "--commit-ratio", "0.02"])
        .arg("--db")
        .arg(&db)
        .arg("--logs")
        .arg(dir.path())
        .arg("--bin-dir")
        .arg(bin_dir)
        .output()
        .expect("run neo-bench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "neo-bench failed ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The filled database notes its objects.
    let oids = std::fs::read_to_string(dir.path().join("bench.sqlite.oids")).expect("oids file");
    assert_eq!(oids.trim(), "500");

    // The measurement's row, then again in the summary.
    let main = rows(&text, "| storage | client | N |", "rust/SQLite");
    assert_eq!(main.len(), 2, "{text}");
    for cells in &main {
        assert_eq!(cells[1], "rust");
        assert_eq!(cells[2], "2x4", "{text}");
        let loads: f64 = cells[3].parse().expect("loads/s");
        assert!(loads > 0.0, "no loads/s in {text}");
        let cpu: f64 = cells[11].parse().expect("storage CPU s");
        assert!(cpu > 0.0, "no storage CPU in {text}");
        assert_eq!(cells[14], "0", "errors in {text}");
    }
    let sat = rows(&text, "| storage | client | W x K |", "rust/SQLite");
    assert_eq!(sat.len(), 1, "{text}");
    let capacity: f64 = sat[0][4].parse().expect("capacity");
    assert!(capacity > 0.0, "{text}");
    assert!(
        text.contains("SQLite rust clients: rust storage peak"),
        "{text}"
    );
}
