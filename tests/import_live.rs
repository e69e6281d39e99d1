//! `neo-import` end to end: a real process serves each ZODB-made fixture
//! through a whole local cluster while importing it; the Rust client reads
//! every object and every revision and gets what ZODB itself returns (the
//! fixture's listing, `testdata/NAME.json`); the import ends with NEO's
//! `All data are imported` line; the destination then serves alone through
//! a plain SQLite `neostorage` after the configuration is switched; and an
//! Importer storage feeds a replica that then serves alone.

use std::time::{Duration, Instant};

mod cluster_common;

use neo_e2e::{binary, free_port, local, testdata, wait_listening, Daemon, TestDir};
use neo_proto::{Oid, Tid};
use neo_server::client::{Client, ClientConfig};
use serde_json::Value;
use sha1::{Digest, Sha1};

const STEP: Duration = Duration::from_secs(20);

fn hex_tid(v: &Value) -> Tid {
    Tid(u64::from_str_radix(v.as_str().expect("tid"), 16).expect("hex"))
}

fn sha1_hex(data: &[u8]) -> String {
    Sha1::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn listing(name: &str) -> Value {
    let text = std::fs::read_to_string(testdata().join(format!("{name}.json"))).expect("listing");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    v["listing"].clone()
}

/// Every object's current load and every revision's loadBefore and
/// loadSerial, through the cluster, against ZODB's answers.
async fn check_against_zodb(client: &Client, l: &Value) {
    for obj in l["objects"].as_array().expect("objects") {
        let oid = Oid(u64::from_str_radix(obj["oid"].as_str().unwrap(), 16).unwrap());
        let load = &obj["load"];
        if load["error"].is_null() {
            let r = client.load(oid).await.expect("load");
            assert_eq!(r.serial, hex_tid(&load["serial"]), "load {oid:?} serial");
            assert_eq!(
                sha1_hex(&r.data),
                load["data_sha1"].as_str().unwrap(),
                "load {oid:?} data"
            );
        }
        for rev in obj["revisions"].as_array().expect("revisions") {
            let serial = hex_tid(&rev["serial"]);
            let ls = &rev["load_serial"];
            if ls["error"].is_null() {
                let r = client.load_serial(oid, serial).await.expect("loadSerial");
                assert_eq!(
                    sha1_hex(&r.data),
                    ls["data_sha1"].as_str().unwrap(),
                    "loadSerial {oid:?} {serial:?}"
                );
            }
            // loadBefore(oid, serial + 1) is the revision itself, with the
            // next serial as its end.
            let lb = &rev["load_before_next"];
            if !lb.is_null() && lb["error"].is_null() {
                let r = client
                    .load_before(oid, Tid(serial.0 + 1))
                    .await
                    .expect("loadBefore")
                    .expect("a revision");
                assert_eq!(r.serial, hex_tid(&lb["start"]), "loadBefore {oid:?}");
                assert_eq!(
                    sha1_hex(&r.data),
                    lb["data_sha1"].as_str().unwrap(),
                    "loadBefore {oid:?} {serial:?} data"
                );
                let end = (!lb["end"].is_null()).then(|| hex_tid(&lb["end"]));
                assert_eq!(r.next_serial, end, "loadBefore {oid:?} {serial:?} end");
            }
        }
    }
    let last = client.last_transaction().await.expect("lastTransaction");
    assert_eq!(last, hex_tid(&l["last_transaction"]));
}

fn wait_for_log(d: &Daemon, needle: &str) {
    let end = Instant::now() + STEP;
    while !d.log_text().contains(needle) {
        assert!(Instant::now() < end, "{} never logged {needle:?}", d.name);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Imports fixture `name` into SQLite, or into MySQL database `mysql`
/// (NEO's `user@database<socket>` string).
fn import_fixture(name: &str, mysql: Option<String>) {
    let dir = TestDir::new(&format!("import-{name}"));
    let (adapter, database) = match &mysql {
        Some(db) => ("MySQL", db.clone()),
        None => ("SQLite", "dest.sqlite".to_owned()),
    };
    let fs = dir.path().join("Data.fs");
    std::fs::copy(testdata().join(format!("{name}.fs")), &fs).expect("copy fixture");
    let conf = dir.path().join("importer.conf");
    std::fs::write(
        &conf,
        format!(
            "[neo]\nadapter = {adapter}\ndatabase = {database}\n\n[root]\nstorage =\n  <filestorage>\n    path {}\n  </filestorage>\n",
            fs.display()
        ),
    )
    .unwrap();
    let (mport, aport) = (free_port(), free_port());
    let cluster = format!("import-{name}");
    let mut imp = Daemon::spawn(
        "neo-import",
        dir.path(),
        &binary("neo-importer", "neo-import"),
        &[
            conf.display().to_string(),
            "-c".into(),
            cluster.clone(),
            "-m".into(),
            local(mport).to_string(),
            "-a".into(),
            local(aport).to_string(),
        ],
    );
    assert!(
        wait_listening(local(mport), STEP),
        "neo-import does not listen"
    );
    let l = listing(name);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = Client::connect(ClientConfig::new(vec![local(mport)], &cluster))
            .await
            .expect("connect");
        check_against_zodb(&client, &l).await;
        client.close().await;
    });
    wait_for_log(&imp, "All data are imported");
    imp.kill();

    // Switch to the destination alone: a plain SQLite or MySQL storage node.
    let (mport, sport) = (free_port(), free_port());
    let master = Daemon::spawn(
        "master",
        dir.path(),
        &binary("neo-server", "neomaster"),
        &["-c", &cluster, "-b", &local(mport).to_string(), "-A", "1"].map(String::from),
    );
    let storage = Daemon::spawn(
        "storage",
        dir.path(),
        &binary("neo-importer", "neostorage"),
        &[
            "-c",
            &cluster,
            "-m",
            &local(mport).to_string(),
            "-b",
            &local(sport).to_string(),
            "-a",
            adapter,
            "-d",
            &match &mysql {
                Some(db) => db.clone(),
                None => dir.path().join("dest.sqlite").display().to_string(),
            },
        ]
        .map(String::from),
    );
    wait_for_log(&storage, "operational");
    rt.block_on(async {
        let client = Client::connect(ClientConfig::new(vec![local(mport)], &cluster))
            .await
            .expect("connect");
        check_against_zodb(&client, &l).await;
        client.close().await;
    });
    drop((master, storage));
}

#[test]
fn import_basic_live() {
    import_fixture("basic", None);
}

#[test]
fn import_undo_live() {
    import_fixture("undo", None);
}

#[test]
fn import_packed_live() {
    import_fixture("packed", None);
}

#[test]
fn import_large_live() {
    import_fixture("large", None);
}

#[test]
fn import_basic_live_into_mysql() {
    let Some(dbs) = cluster_common::MysqlDbs::create("import", 1) else {
        return;
    };
    import_fixture(
        "basic",
        Some(format!("root@{}{}", dbs.databases[0], dbs.socket)),
    );
}

/// Beyond NEO (whose Importer works with a single storage node): an
/// Importer storage feeds a replica. The cluster starts on the Importer
/// storage alone (replicas = 1), a SQLite storage is added with `neoctl
/// add` + `tweak` and replicates every partition from it (the Importer
/// answers replication from the source and the destination merged); then
/// the Importer storage is SIGKILLed and the replica alone gives ZODB's
/// answers for every object and revision.
#[test]
fn importer_feeds_a_replica() {
    let mut c = cluster_common::Cluster::new("impreplica", 2);
    c.replicas = 1;
    let dir = c.dir.path().to_owned();
    let fs = dir.join("Data.fs");
    std::fs::copy(testdata().join("undo.fs"), &fs).expect("copy fixture");
    let conf = dir.join("importer.conf");
    std::fs::write(
        &conf,
        format!(
            "[neo]\nadapter = SQLite\ndatabase = {}\n\n[root]\nstorage =\n  <filestorage>\n    path {}\n  </filestorage>\n",
            dir.join("dest.sqlite").display(),
            fs.display()
        ),
    )
    .unwrap();
    c.start_master();
    let args: Vec<String> = [
        "-c",
        &c.name,
        "-m",
        &c.master_addr().to_string(),
        "-b",
        &local(c.storage_ports[0]).to_string(),
        "-a",
        "Importer",
        "-d",
        &conf.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    c.storages[0] = Some(Daemon::spawn("storage0", &dir, &c.bins.storage, &args));
    assert!(
        wait_listening(local(c.storage_ports[0]), STEP),
        "Importer storage"
    );
    c.start_admin();
    c.bootstrap();

    c.start_storage(1);
    c.add_pending("S2");
    let (code, out, err) = c.neoctl(&["tweak"]);
    assert_eq!(code, 0, "neoctl tweak: {out}{err}");
    let end = Instant::now() + STEP;
    loop {
        let (_, pt, _) = c.neoctl(&["print", "pt"]);
        if pt.contains("S1 R UUUU\nS2 R UUUU\n") {
            break;
        }
        assert!(Instant::now() < end, "not replicated:\n{pt}");
        std::thread::sleep(Duration::from_millis(100));
    }

    c.storages[0].as_mut().expect("Importer storage").kill();
    let l = listing("undo");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = Client::connect(c.client_config()).await.expect("connect");
        check_against_zodb(&client, &l).await;
        client.close().await;
    });
}
