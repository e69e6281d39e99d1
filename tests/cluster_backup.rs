//! End-to-end backup mode: an upstream cluster (two storages, one replica)
//! and a backup cluster of real processes whose master has `-C`/`-M`;
//! `neoctl set cluster STARTING_BACKUP`, commits upstream reach it (`neoctl
//! print ids` shows the backup tid), a SIGKILLed backup master restarts
//! into backup mode, `STOPPING_BACKUP` makes it a normal cluster where the
//! Rust client reads what was committed upstream.

mod cluster_common;

use std::time::{Duration, Instant};

use cluster_common::*;
use neo_proto::{Oid, Tid, ZERO_TID};
use neo_server::client::Client;

const OP: Duration = Duration::from_secs(20);

/// Commits `n` objects from `first` on, one transaction each.
async fn write(c: &Client, first: u64, n: u64) -> Vec<Tid> {
    let mut tids = Vec::new();
    for i in first..first + n {
        let data = format!("object {i}");
        tids.push(
            commit(c, "one object", &[(Oid(i), ZERO_TID, data.as_bytes())])
                .await
                .expect("commit"),
        );
    }
    tids
}

/// Polls `neoctl print ids` until it shows `backup_tid = <tid>`.
fn wait_backup_tid(c: &Cluster, tid: Tid) {
    let want = format!("backup_tid = 0x{:x} ", tid.0);
    let end = Instant::now() + OP;
    loop {
        let (code, out, err) = c.neoctl(&["print", "ids"]);
        if code == 0 && out.contains(&want) {
            return;
        }
        assert!(
            Instant::now() < end,
            "backup tid not {tid} after {OP:?}: {out}{err}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn backup_cluster_follows_and_takes_over() {
    let mut up = Cluster::new("backup-up", 2);
    up.replicas = 1;
    up.start_all();
    up.bootstrap();
    let mut bk = Cluster::new("backup-bk", 2);
    bk.start_backup_master(&up);
    for i in 0..2 {
        bk.start_storage(i);
    }
    bk.start_admin();
    bk.bootstrap();

    let rt = runtime();
    let a = rt.block_on(within(OP, "upstream client", async {
        Client::connect(up.client_config()).await.expect("client")
    }));
    let before = rt.block_on(within(OP, "commits", write(&a, 0, 6)));

    let (code, out, err) = bk.neoctl(&["set", "cluster", "STARTING_BACKUP"]);
    assert_eq!(code, 0, "{out}{err}");
    bk.wait_state("BACKINGUP", OP);
    wait_backup_tid(&bk, before[5]);

    let during = rt.block_on(within(OP, "commits", write(&a, 6, 5)));
    wait_backup_tid(&bk, during[4]);

    // SIGKILL of the backup master; commits meanwhile; the new master finds
    // the storages backing up and resumes (no neoctl).
    if let Some(m) = bk.master.as_mut() {
        m.kill();
    }
    let more = rt.block_on(within(OP, "commits", write(&a, 11, 5)));
    bk.start_backup_master(&up);
    bk.wait_state("BACKINGUP", OP);
    wait_backup_tid(&bk, more[4]);
    rt.block_on(a.close());
    let during: Vec<Tid> = during.into_iter().chain(more).collect();

    let (code, out, err) = bk.neoctl(&["set", "cluster", "STOPPING_BACKUP"]);
    assert_eq!(code, 0, "{out}{err}");
    bk.wait_state("RUNNING", OP);
    let (_, ids, _) = bk.neoctl(&["print", "ids"]);
    assert!(
        ids.contains(&format!("last_tid = 0x{:x} ", during[9].0)),
        "{ids}"
    );

    let all: Vec<Tid> = before.iter().chain(&during).copied().collect();
    rt.block_on(within(OP, "reads from the backup", async {
        let b = Client::connect(bk.client_config()).await.expect("client");
        for (i, tid) in all.iter().enumerate() {
            let r = b.load(Oid(i as u64)).await.expect("load");
            assert_eq!(
                (r.data, r.serial),
                (format!("object {i}").into_bytes(), *tid)
            );
        }
        let txns = b.iterator(ZERO_TID, None).await.expect("iterate");
        assert_eq!(txns.iter().map(|t| t.info.tid).collect::<Vec<_>>(), all);
        // A normal cluster again: it takes commits.
        let t = commit(&b, "after backup", &[(Oid(100), ZERO_TID, b"new")])
            .await
            .expect("commit on the former backup");
        assert!(t > all[all.len() - 1]);
        b.close().await;
    }));
    bk.stop();
    up.stop();
}
