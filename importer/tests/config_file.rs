//! `importer.conf` files on disk: the example at the top of the repository
//! works, bad files are refused with the file and the line.

mod common;

use common::*;
use neo_importer::{Adapter, Compress, Importer, ImporterConfig, DEFAULT_ZLIB_LEVEL};
use neo_server::storage::SqliteOptions;

#[test]
fn example_imports_basic_fs() {
    let cfg = ImporterConfig::read(&repo().join("importer.conf.example")).expect("example");
    assert_eq!(cfg.adapter, Adapter::Sqlite);
    assert_eq!(cfg.compress, Compress::Zlib(DEFAULT_ZLIB_LEVEL));
    assert!(!cfg.writeback);
    assert_eq!(cfg.sources.len(), 1);
    let src = &cfg.sources[0].storage.path;
    assert_eq!(
        src.canonicalize().unwrap(),
        fixture("basic").canonicalize().unwrap()
    );
    // Same file, the destination in a temporary directory.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("importer.conf.example"))
        .unwrap()
        .replace("import-example.sqlite", "neo.sqlite")
        .replace("testdata/basic.fs", &fixture("basic").display().to_string());
    let conf = dir.path().join("importer.conf");
    std::fs::write(&conf, text).unwrap();
    let cfg = ImporterConfig::read(&conf).unwrap();
    let mut imp = Importer::open_sqlite(&cfg, &SqliteOptions::default()).unwrap();
    setup_pt(imp.db());
    while !imp.is_finished() {
        imp.import_some(16).unwrap();
    }
    assert!(dir.path().join("neo.sqlite").exists());
    check_listing(&mut imp, &listing("basic"), "example");
}

#[test]
fn bad_files_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[neo]\ndatabase = x\ncompress = maybe\n[a]\nstorage =\n <filestorage>\n  path /a.fs\n </filestorage>\n", 3),
        ("[neo]\ndatabase = x\n\n[a]\nstorage =\n  <mappingstorage>\n  </mappingstorage>\n", 6),
        ("[neo]\ndatabase = x\n[a]\nstorage =\n  <filestorage>\n    path /a.fs\n    blob-dir /blobs\n  </filestorage>\n", 7),
        ("[neo]\ndatabase = x\n[a]\nstorage =\n  <filestorage>\n    path /a.fs\n  </filestorage>\nsub = 12\n", 8),
        ("[neo]\ndatabase = x\n[a]\n  oops\n", 4),
    ];
    for (i, (text, line)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.conf"));
        std::fs::write(&path, text).unwrap();
        let e = ImporterConfig::read(&path).unwrap_err().to_string();
        let want = format!("{}:{line}", path.display());
        assert!(e.contains(&want), "case {i}: {e:?} does not name {want}");
    }
    let e = ImporterConfig::read(&dir.path().join("missing.conf"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.conf"), "{e}");
}

#[test]
fn mysql_destination_is_refused_clearly() {
    let text = config_text(&fixture("small"), "neo", "").replace("SQLite", "MySQL");
    let cfg = ImporterConfig::parse(&text, std::path::Path::new("/x/importer.conf")).unwrap();
    let e = Importer::open_sqlite(&cfg, &SqliteOptions::default())
        .map(|_| ())
        .unwrap_err();
    assert!(e.to_string().contains("MySQL"), "{e}");
}
