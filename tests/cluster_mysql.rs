//! End-to-end on MySQL/MariaDB: real `neomaster`, `neostorage -a MySQL`
//! (on the private server of `scripts/mysql-test-server.sh`) and
//! `neoadmin`; bootstrap, commits and loads with the Rust client, STOPPING
//! and restart (the data is found and the cluster starts by itself), and a
//! storage SIGKILLed right after an acknowledged commit.

mod cluster_common;

use std::time::Duration;

use cluster_common::*;
use neo_proto::{Oid, ZERO_TID};
use neo_server::client::Client;

const OP: Duration = Duration::from_secs(10);

#[test]
fn mysql_cluster_commit_restart_kill() {
    let Some(dbs) = MysqlDbs::create("lifecycle", 1) else {
        return;
    };
    let mut c = Cluster::new("mysql", 1);
    c.mysql = Some(dbs);
    c.start_all();
    c.bootstrap();
    let rt = runtime();
    let root = Oid(0);
    let (t1, t2) = rt.block_on(within(OP, "first commits", async {
        let a = Client::connect(c.client_config()).await.expect("client");
        let t1 = commit(&a, "create", &[(root, ZERO_TID, b"root 1")])
            .await
            .expect("t1");
        let t2 = commit(&a, "update", &[(root, t1, b"root 2")])
            .await
            .expect("t2");
        a.close().await;
        (t1, t2)
    }));

    // STOPPING, restart: everything is found, the cluster starts by itself.
    c.stop();
    c.start_all();
    c.wait_state("RUNNING", STEP);
    let t3 = rt.block_on(within(OP, "after restart", async {
        let a = Client::connect(c.client_config()).await.expect("client");
        let r = a.load(root).await.expect("load");
        assert_eq!((r.data.as_slice(), r.serial), (&b"root 2"[..], t2));
        let r = a.load_before(root, t2).await.expect("loadBefore");
        assert_eq!(r.expect("t1 revision").serial, t1);
        let t3 = commit(&a, "after restart", &[(root, t2, b"root 3")])
            .await
            .expect("t3");
        a.close().await;
        t3
    }));

    // SIGKILL the storage right after the acknowledged commit t3.
    c.storages[0].as_mut().expect("storage").kill();
    c.start_storage(0);
    c.wait_state("RUNNING", STEP);
    rt.block_on(within(OP, "after SIGKILL", async {
        let a = Client::connect(c.client_config()).await.expect("client");
        let r = a.load(root).await.expect("load");
        assert_eq!((r.data.as_slice(), r.serial), (&b"root 3"[..], t3));
        a.close().await;
    }));
}
