//! End-to-end replication with real processes: a storage SIGKILLed while
//! the cluster commits, restarted on its database, catches up (its cells
//! become UP_TO_DATE) and then serves everything alone; a storage added
//! with `neoctl add` + `tweak` replicates the partitions it gets.
//! Every scenario runs on SQLite and on MySQL (`sqlite::` / `mysql::`).

mod cluster_common;

use std::time::{Duration, Instant};

use cluster_common::*;
use neo_proto::{Oid, ZERO_TID};
use neo_server::client::Client;

const OP: Duration = Duration::from_secs(10);

/// Waits until `neoctl print pt` prints `want`.
fn wait_pt(c: &Cluster, want: &str, timeout: Duration) {
    let start = Instant::now();
    loop {
        let (_, pt, _) = c.neoctl(&["print", "pt"]);
        if pt.ends_with(want) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "partition table still:\n{pt}\nwanted:\n{want}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn restarted_storage_catches_up(db: Db) {
    let Some(mut c) = Cluster::on(db, "replication", 2) else {
        return;
    };
    c.replicas = 1;
    c.start_all();
    c.bootstrap();
    wait_pt(&c, "S1 R UUUU\nS2 R UUUU\n", OP);
    let rt = runtime();
    let a = rt
        .block_on(within(OP, "connect", Client::connect(c.client_config())))
        .expect("client");
    let mut expected = Vec::new();
    rt.block_on(within(OP, "first writes", async {
        for i in 0..6u64 {
            let data = format!("object {i}").into_bytes();
            let t = commit(&a, "first", &[(Oid(i), ZERO_TID, &data)])
                .await
                .expect("commit");
            expected.push((t, data));
        }
    }));
    if let Some(s) = c.storages[0].as_mut() {
        s.kill();
    }
    wait_pt(&c, "S1 D OOOO\nS2 R UUUU\n", OP);
    rt.block_on(within(OP, "writes while S1 is down", async {
        let data = b"object 0, second revision".to_vec();
        let t = commit(&a, "second", &[(Oid(0), expected[0].0, &data)])
            .await
            .expect("commit");
        expected[0] = (t, data);
        for i in 6..40u64 {
            let data = format!("object {i}").into_bytes();
            let t = commit(&a, "while down", &[(Oid(i), ZERO_TID, &data)])
                .await
                .expect("commit");
            expected.push((t, data));
        }
    }));
    c.start_storage(0);
    wait_pt(&c, "S1 R UUUU\nS2 R UUUU\n", Duration::from_secs(30));
    // S1 alone serves everything.
    if let Some(s) = c.storages[1].as_mut() {
        s.kill();
    }
    wait_pt(&c, "S1 R UUUU\nS2 D OOOO\n", OP);
    rt.block_on(within(OP, "reads from the restarted storage", async {
        for (i, (t, data)) in expected.iter().enumerate() {
            let r = a.load(Oid(i as u64)).await.expect("load");
            assert_eq!((&r.serial, &r.data), (t, data), "oid {i}");
        }
        a.close().await;
    }));
    assert_eq!(c.state(), "RUNNING");
}

fn added_storage_replicates_its_partitions(db: Db) {
    let Some(mut c) = Cluster::on(db, "tweak", 3) else {
        return;
    };
    c.replicas = 1;
    c.start_master();
    c.start_storage(0);
    c.start_storage(1);
    c.start_admin();
    c.bootstrap();
    wait_pt(&c, "S1 R UUUU\nS2 R UUUU\n", OP);
    let rt = runtime();
    let a = rt
        .block_on(within(OP, "connect", Client::connect(c.client_config())))
        .expect("client");
    let mut expected = Vec::new();
    rt.block_on(within(OP, "writes", async {
        for i in 0..20u64 {
            let data = format!("object {i}").into_bytes();
            let t = commit(&a, "w", &[(Oid(i), ZERO_TID, &data)])
                .await
                .expect("commit");
            expected.push((t, data));
        }
    }));
    c.start_storage(2);
    c.add_pending("S3");
    let (code, out, err) = c.neoctl(&["tweak"]);
    assert_eq!(code, 0, "{out}{err}");
    // Replicated: S3 has UP_TO_DATE cells, nothing is OUT_OF_DATE or
    // FEEDING any more.
    let pt = c.wait_pt_until(
        |pt| {
            pt.lines()
                .any(|l| l.starts_with("S3 R ") && l.contains('U'))
                && !pt
                    .lines()
                    .skip(1)
                    .any(|l| l.contains('O') || l.contains('F'))
        },
        Duration::from_secs(30),
    );
    // S1 dies: S3 serves the partitions it shared with S1.
    if let Some(s) = c.storages[0].as_mut() {
        s.kill();
    }
    c.wait_pt_until(|pt| pt.contains("S1 D "), OP);
    rt.block_on(within(OP, "reads without S1", async {
        for (i, (t, data)) in expected.iter().enumerate() {
            let r = a.load(Oid(i as u64)).await.expect("load");
            assert_eq!((&r.serial, &r.data), (t, data), "oid {i}; pt was:\n{pt}");
        }
        a.close().await;
    }));
}

backend_tests!(
    restarted_storage_catches_up,
    added_storage_replicates_its_partitions
);
