//! Export from a running cluster of real daemons (the Rust client), then
//! incrementally after more commits; the result equals the offline export
//! of the storage node's database once the cluster is stopped, and ZODB's
//! fstest accepts it.

#[path = "../../tests/cluster_common/mod.rs"]
mod cluster_common;
mod common;

use std::collections::HashMap;
use std::time::Duration;

use cluster_common::{commit, meta, runtime, within, Cluster, STEP};
use fsformat::{Oid, Tid};
use neo_exporter::{export, ClusterSource, ExportOptions, NoProgress, SqliteSource};
use neo_server::client::Client;
use neo_server::storage::{SqliteBackend, SqliteOptions};

/// `n` transactions over `oids`, each storing 1-3 objects.
async fn work(c: &Client, oids: &[Oid], serials: &mut HashMap<Oid, Tid>, from: usize, n: usize) {
    for i in from..from + n {
        let mut objs = Vec::new();
        for o in [
            i % oids.len(),
            (i * 3 + 1) % oids.len(),
            (i * 5 + 2) % oids.len(),
        ]
        .into_iter()
        .take(1 + i % 3)
        {
            if objs
                .iter()
                .any(|&(x, _, _): &(Oid, Tid, Vec<u8>)| x == oids[o])
            {
                continue;
            }
            let data = format!("object {o} revision {i} ")
                .repeat(1 + i % 40)
                .into_bytes();
            objs.push((
                oids[o],
                serials.get(&oids[o]).copied().unwrap_or(Tid(0)),
                data,
            ));
        }
        let refs: Vec<(Oid, Tid, &[u8])> = objs.iter().map(|(o, s, d)| (*o, *s, &d[..])).collect();
        let tid = commit(c, &format!("txn {i}"), &refs).await.expect("commit");
        for (o, _, _) in &objs {
            serials.insert(*o, tid);
        }
    }
}

/// `neoctl start`, retried while the master says a node is still entering
/// the cluster (a loaded machine), then waits for RUNNING.
fn bootstrap(c: &Cluster) {
    c.wait_state("RECOVERING", STEP);
    let end = std::time::Instant::now() + STEP;
    loop {
        let (code, out, err) = c.neoctl(&["start"]);
        if code == 0 {
            break;
        }
        assert!(
            err.contains("is entering cluster") && std::time::Instant::now() < end,
            "neoctl start: {out}{err}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.wait_state("RUNNING", STEP);
}

#[test]
fn cluster_export_equals_offline_export() {
    let mut c = Cluster::new("neo-export", 1);
    c.start_all();
    bootstrap(&c);
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cluster.fs");
    let (client, oids, mut serials) =
        rt.block_on(within(Duration::from_secs(60), "commits", async {
            let a = Client::connect(c.client_config()).await.expect("client");
            let oids = a.new_oids(8).await.expect("oids");
            let mut serials = HashMap::new();
            work(&a, &oids, &mut serials, 0, 30).await;
            // Undo the last transaction: backpointers to the previous revisions.
            let last = a.last_tid();
            let mut txn = a.tpc_begin(meta("undo")).await.expect("begin");
            let undone = a.undo(&mut txn, last).await.expect("undo");
            let t = a.tpc_finish(txn).await.expect("undo commit");
            for o in undone {
                serials.insert(o, t);
            }
            (a, oids, serials)
        }));
    let mut src = ClusterSource::connect(c.client_config()).expect("connect");
    let s = export(&mut src, &out, &ExportOptions::default(), &mut NoProgress).expect("export");
    assert_eq!((s.transactions, s.existing), (31, 0));
    assert!(s.backpointers >= 1);
    // More commits, then the same export again: only those are appended.
    rt.block_on(within(Duration::from_secs(60), "more commits", async {
        work(&client, &oids, &mut serials, 30, 12).await;
        client.close().await;
    }));
    let s = export(&mut src, &out, &ExportOptions::default(), &mut NoProgress).expect("export");
    assert_eq!((s.transactions, s.existing), (12, 31));
    drop(src);
    c.stop();

    // The storage node's database, offline.
    let offline = dir.path().join("offline.fs");
    let db = SqliteBackend::open(&c.storage_db(0), &SqliteOptions::default()).unwrap();
    let mut src = SqliteSource::new(db).unwrap();
    let s = export(
        &mut src,
        &offline,
        &ExportOptions::default(),
        &mut NoProgress,
    )
    .unwrap();
    assert_eq!(s.transactions, 43);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&offline).unwrap()
    );
    let check = common::zodb_check(&out);
    assert_eq!(check["fstest"], "ok");
    assert_eq!(
        check["listing"]["transactions"].as_array().unwrap().len(),
        43
    );
}
