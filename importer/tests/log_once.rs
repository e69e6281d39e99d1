//! "All data are imported" is logged once, at info level, when the import
//! ends (and once more by a process that opens a finished import).

mod common;

use std::sync::Mutex;

use common::*;
use neo_importer::ALL_IMPORTED;
use neo_server::storage::MemoryBackend;

static LINES: Mutex<Vec<(log::Level, String)>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        LINES
            .lock()
            .unwrap()
            .push((r.level(), r.args().to_string()));
    }
    fn flush(&self) {}
}

fn count() -> Vec<log::Level> {
    LINES
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, m)| m.contains(ALL_IMPORTED))
        .map(|(l, _)| *l)
        .collect()
}

#[test]
fn all_data_are_imported_once() {
    log::set_logger(&Capture).unwrap();
    log::set_max_level(log::LevelFilter::Debug);
    let cfg = config(&fixture("basic"), "");
    let mut imp = open(&cfg, memory_db());
    let mut steps = 0;
    while !imp.is_finished() {
        assert!(count().is_empty(), "logged before the end");
        imp.import_some(3).unwrap();
        steps += 1;
    }
    assert!(steps > 5);
    // More calls change nothing.
    imp.import_some(3).unwrap();
    assert_eq!(count(), vec![log::Level::Info]);
    // Progress lines were logged too.
    assert!(LINES
        .lock()
        .unwrap()
        .iter()
        .any(|(_, m)| m.contains("imported 3/40 transactions")));
    let disk = imp.into_db().disk().clone();
    let again = open(&cfg, MemoryBackend::open(&disk));
    assert!(again.is_finished());
    assert_eq!(count().len(), 2);
}
