//! `neo-import` end to end with two source databases merged at a
//! mountpoint (testdata/mount_main.fs and mount_sub.fs, made by the real
//! ZODB): a real process serves the merged database to a client at once
//! (from the staging file it writes at start) and imports it; every
//! revision of both sources is loaded through the cluster at its merged
//! oid, equal to the staging file's record, during and after the import;
//! `neoctl print import` ends with `done`.

use std::process::Command;
use std::time::{Duration, Instant};

use fsformat::FileStorage;
use neo_e2e::{binary, free_port, local, testdata, wait_listening, Daemon, TestDir};
use neo_server::client::{Client, ClientConfig};
use serde_json::Value;

#[test]
fn neo_import_serves_and_imports_merged_sources() {
    let dir = TestDir::new("import-mount");
    for f in ["mount_main.fs", "mount_sub.fs"] {
        std::fs::copy(testdata().join(f), dir.path().join(f)).expect("copy fixture");
    }
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(testdata().join("mount_pickles.json")).unwrap(),
    )
    .unwrap();
    let mnt = fx["mnt_oid"].as_u64().unwrap();
    let sources: usize = ["mount_main", "mount_sub"]
        .iter()
        .map(|n| fx["records"][n].as_array().unwrap().len())
        .sum();
    let conf = dir.path().join("importer.conf");
    std::fs::write(
        &conf,
        format!(
            "[neo]\ndatabase = dest.sqlite\n\
             [main]\nstorage =\n  <filestorage>\n    path {0}/mount_main.fs\n  </filestorage>\nsub = {mnt}\n\
             [sub]\noid = 1\nstorage =\n  <filestorage>\n    path {0}/mount_sub.fs\n  </filestorage>\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let neoctl = binary("neo-server", "neoctl");
    let (mport, aport) = (free_port(), free_port());
    let cluster = "import-mount";
    let _imp = Daemon::spawn(
        "neo-import",
        dir.path(),
        &binary("neo-importer", "neo-import"),
        &[
            conf.display().to_string(),
            "-c".into(),
            cluster.into(),
            "-m".into(),
            local(mport).to_string(),
            "-a".into(),
            local(aport).to_string(),
        ],
    );
    assert!(
        wait_listening(local(mport), Duration::from_secs(20)),
        "neo-import does not listen"
    );
    // The staging file is written before the cluster starts (renamed into
    // place once complete).
    let staging = dir.path().join("importer.conf.merged.fs");
    let end = Instant::now() + Duration::from_secs(20);
    while !staging.exists() {
        assert!(Instant::now() < end, "no staging file");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !dir.path().join("importer.conf.merged.fs.tmp.lock").exists(),
        "the writer's lock file is left behind"
    );
    let st = FileStorage::open(&staging).expect("staging file");
    let mut revisions = Vec::new();
    for t in st.iter() {
        let t = t.unwrap();
        for r in t.records() {
            let r = r.unwrap();
            revisions.push((r.oid, t.tid, st.load_serial(r.oid, t.tid).unwrap().to_vec()));
        }
    }
    assert_eq!(revisions.len(), sources, "every source record merged");
    assert!(
        revisions.iter().any(|(o, _, _)| o.0 > mnt + 1),
        "sub's oids are shifted"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let check = || {
        rt.block_on(async {
            let client = Client::connect(ClientConfig::new(vec![local(mport)], cluster))
                .await
                .expect("connect");
            for (oid, tid, data) in &revisions {
                let r = client.load_serial(*oid, *tid).await.expect("loadSerial");
                assert!(r.data == *data, "{oid:?} at {tid:?}");
            }
            let root = client.load(fsformat::Oid(0)).await.expect("load root");
            assert!(!root.data.is_empty());
            client.close().await;
        })
    };
    check();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(&neoctl)
            .args(["-a", &local(aport).to_string(), "print", "import"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.trim_end().ends_with(", done") {
            assert!(text.contains("importer.conf.merged.fs"), "{text}");
            break;
        }
        assert!(Instant::now() < end, "never done: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Served from the destination alone now.
    check();
}
