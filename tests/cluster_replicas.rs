//! End-to-end with two storages: partitions split between them (writes
//! to one storage, metadata on another: AskStoreTransaction there,
//! AskVoteTransaction here), and with one replica (every write goes to
//! both; reads fail over when one storage is SIGKILLed).
//! Every scenario runs on SQLite and on MySQL (`sqlite::` / `mysql::`).

mod cluster_common;

use std::time::Duration;

use cluster_common::*;
use neo_proto::{Oid, Tid, ZERO_TID};
use neo_server::client::Client;

const OP: Duration = Duration::from_secs(10);

/// Commits objects 0..n (one transaction each, so ttids fall in every
/// partition), then checks every load.
async fn write_and_check(a: &Client, n: u64) -> Vec<Tid> {
    let mut tids = Vec::new();
    for i in 0..n {
        let data = format!("object {i}");
        tids.push(
            commit(a, "one object", &[(Oid(i), ZERO_TID, data.as_bytes())])
                .await
                .expect("commit"),
        );
    }
    for i in 0..n {
        let r = a.load(Oid(i)).await.expect("load");
        assert_eq!(
            (r.data, r.serial),
            (format!("object {i}").into_bytes(), tids[i as usize])
        );
    }
    tids
}

fn two_storages_split_partitions(db: Db) {
    let Some(mut c) = Cluster::on(db, "split", 2) else {
        return;
    };
    c.start_all();
    c.bootstrap();
    let (_, pt, _) = c.neoctl(&["print", "pt"]);
    assert_eq!(pt, "# ptid: 1, replicas: 0\nS1 R U.U.\nS2 R .U.U\n");
    let rt = runtime();
    rt.block_on(within(OP, "split", async {
        let a = Client::connect(c.client_config()).await.expect("client");
        let tids = write_and_check(&a, 8).await;
        let all = a.iterator(ZERO_TID, None).await.expect("iterate");
        assert_eq!(all.iter().map(|t| t.info.tid).collect::<Vec<_>>(), tids);
        a.close().await;
    }));
}

fn one_replica_survives_a_storage_kill(db: Db) {
    let Some(mut c) = Cluster::on(db, "replica", 2) else {
        return;
    };
    c.replicas = 1;
    c.start_all();
    c.bootstrap();
    let (_, pt, _) = c.neoctl(&["print", "pt"]);
    assert_eq!(pt, "# ptid: 1, replicas: 1\nS1 R UUUU\nS2 R UUUU\n");
    let rt = runtime();
    let a = rt
        .block_on(within(OP, "connect", Client::connect(c.client_config())))
        .expect("client");
    let tids = rt.block_on(within(OP, "write", write_and_check(&a, 6)));
    if let Some(s) = c.storages[0].as_mut() {
        s.kill();
    }
    rt.block_on(within(OP, "after the kill", async {
        // Reads go to the surviving replica.
        for (i, t) in tids.iter().enumerate() {
            let r = a.load(Oid(i as u64)).await.expect("load after kill");
            assert_eq!(r.serial, *t);
        }
        // Writes go on with one storage.
        let t = commit(&a, "after kill", &[(Oid(0), tids[0], b"new")])
            .await
            .expect("commit after kill");
        assert_eq!(a.load(Oid(0)).await.expect("load").serial, t);
        a.close().await;
    }));
    assert_eq!(c.state(), "RUNNING");
}

backend_tests!(
    two_storages_split_partitions,
    one_replica_survives_a_storage_kill
);
