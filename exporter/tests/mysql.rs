//! Export from NEO's MySQL schema (`-a MySQL`), through the generic
//! `Backend` source. Needs a server: `$NEO_TEST_MYSQL_SOCKET` (set by
//! `scripts/test.sh`); without it the test fails under `CI=true` and is
//! skipped, with a notice, elsewhere (as the storage layer's MySQL tests).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{fixture, fixture_json, load, zodb_check, LoadOptions};
use fsformat::Tid;
use neo_exporter::{export, BackendSource, ExportOptions, NoProgress};
use neo_server::storage::{Backend, CellState, MysqlBackend, MysqlOptions};

fn socket() -> Option<PathBuf> {
    match std::env::var_os("NEO_TEST_MYSQL_SOCKET") {
        Some(s) if !s.is_empty() => Some(PathBuf::from(s)),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "NEO_TEST_MYSQL_SOCKET is not set: under CI the MySQL tests must run"
            );
            eprintln!("notice: MySQL export test skipped: NEO_TEST_MYSQL_SOCKET is not set");
            None
        }
    }
}

fn sql(socket: &PathBuf, stmt: &str) {
    let st = Command::new("mariadb")
        .arg("-S")
        .arg(socket)
        .args(["-u", "root", "-e", stmt])
        .status()
        .expect("run the mariadb client");
    assert!(st.success(), "{stmt}");
}

#[test]
fn mysql_round_trip() {
    let Some(sock) = socket() else { return };
    let name = format!("neo_export_{}", std::process::id());
    sql(&sock, &format!("DROP DATABASE IF EXISTS {name}"));
    sql(&sock, &format!("CREATE DATABASE {name}"));
    let target = format!("root@{name}{}", sock.display());
    let mut db = MysqlBackend::open_database(&target, &MysqlOptions::default()).unwrap();
    db.set_nid(1).unwrap();
    let cells: Vec<_> = (0..2).map(|p| (p, 1, CellState::UpToDate)).collect();
    db.change_partition_table(1, 0, &cells, true, Tid(0))
        .unwrap();
    db.commit().unwrap();
    let opts = LoadOptions {
        compress: true,
        ..LoadOptions::default()
    };
    load(&fixture("undo"), &mut db, opts);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("undo.fs");
    let mut src = BackendSource::new(db).unwrap();
    export(&mut src, &out, &ExportOptions::default(), &mut NoProgress).unwrap();
    drop(src);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(fixture("undo")).unwrap()
    );
    let got = zodb_check(&out);
    assert_eq!(got["listing"], fixture_json("undo")["listing"]);
    // The command.
    let out2 = dir.path().join("cli.fs");
    let o = Command::new(env!("CARGO_BIN_EXE_neo-export"))
        .args(["-a", "MySQL", "--progress", "none", "-d", &target])
        .arg(&out2)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&out2).unwrap(), std::fs::read(&out).unwrap());
    sql(&sock, &format!("DROP DATABASE {name}"));
}
