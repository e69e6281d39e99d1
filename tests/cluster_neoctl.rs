//! End-to-end: `neoctl`'s commands and their output (NEO's formats, which
//! users' scripts parse) against real daemons, and the Rust client's
//! invalidations and undo through a real master and storage.
//! Every scenario runs on SQLite and on MySQL (`sqlite::` / `mysql::`).

mod cluster_common;

use std::time::Duration;

use cluster_common::*;
use neo_proto::{Oid, Tid, ZERO_TID};
use neo_server::client::Client;

fn ok(c: &Cluster, args: &[&str]) -> String {
    let (code, out, err) = c.neoctl(args);
    assert_eq!(code, 0, "neoctl {args:?}: {out}{err}");
    out
}

fn neoctl_commands_and_outputs(db: Db) {
    let Some(mut c) = Cluster::on(db, "neoctl", 2) else {
        return;
    };
    c.start_master();
    c.start_storage(0);
    c.start_admin();
    c.bootstrap();
    c.start_storage(1);

    // A reader that leaves early (`neoctl print node | grep -q ...`):
    // neoctl exits quietly instead of panicking on the broken pipe.
    let mut child = std::process::Command::new(&c.bins.neoctl)
        .args(["-a", &c.admin_addr().to_string(), "print", "node"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run neoctl");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("neoctl exits");
    assert!(
        out.status.success(),
        "neoctl with a closed stdout: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    // print node: NEO's columns; the new storage is pending.
    let end = std::time::Instant::now() + STEP;
    let nodes = loop {
        let out = ok(&c, &["print", "node"]);
        if out.contains("S2 | STORAGE") || std::time::Instant::now() > end {
            break out;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let lines: Vec<&str> = nodes.lines().collect();
    assert_eq!(lines.len(), 4, "{nodes}");
    // Sorted by node id as NEO does: A1 < M1 < S1 (namespaces -0x30, -0x10, 0).
    assert!(lines[0].starts_with("A1 | ADMIN   | 127.0.0.1:"), "{nodes}");
    assert!(lines[1].starts_with("M1 | MASTER  | 127.0.0.1:"), "{nodes}");
    assert!(lines[1].ends_with("| RUNNING | None"), "{nodes}");
    assert!(lines[2].starts_with("S1 | STORAGE | 127.0.0.1:"), "{nodes}");
    assert!(lines[2].contains("| RUNNING | 20"), "{nodes}");
    assert!(lines[3].contains("| PENDING | 20"), "{nodes}");
    let storages = ok(&c, &["print", "node", "storage"]);
    assert_eq!(storages.lines().count(), 2, "{storages}");
    assert_eq!(ok(&c, &["print", "node", "client"]), "Empty list!\n");

    assert_eq!(
        ok(&c, &["print", "pt"]),
        "# ptid: 1, replicas: 0\nS1 R UUUU\n"
    );
    assert_eq!(
        ok(&c, &["print", "pt", "1", "3"]),
        "# ptid: 1, replicas: 0\n001 | S1 - UP_TO_DATE |\n002 | S1 - UP_TO_DATE |\n"
    );
    let summary = ok(&c, &["print", "summary"]);
    assert!(
        summary.starts_with(
            "# {}\nRUNNING; UP_TO_DATE=4; ltid=0000000000000000 (1900-01-01 00:00:00)"
        ),
        "{summary}"
    );
    let ids = ok(&c, &["print", "ids"]);
    assert!(ids.starts_with("last_oid = 0x"), "{ids}");
    assert!(
        ids.contains("\nlast_tid = 0x0 (1900-01-01 00:00:00)\nlast_ptid = 1"),
        "{ids}"
    );

    // Refusals: DENIED prints the master's message alone, status 1.
    let (code, out, err) = c.neoctl(&["set", "cluster", "VERIFYING"]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(!err.is_empty() && !err.starts_with("ERROR"), "{err}");
    let (code, _, err) = c.neoctl(&["print", "nothing"]);
    assert_eq!(
        (code, err.as_str()),
        (1, "invalid command: print nothing\n")
    );
    let (code, _, err) = c.neoctl(&["kill", "M1"]);
    assert_eq!(code, 1, "{err}");

    // add / tweak -n / flush_log.
    ok(&c, &["add", "S2"]);
    let end = std::time::Instant::now() + STEP;
    while !ok(&c, &["print", "node", "storage"])
        .lines()
        .all(|l| l.contains("RUNNING"))
    {
        assert!(std::time::Instant::now() < end, "S2 not RUNNING after add");
        std::thread::sleep(Duration::from_millis(50));
    }
    let tweak = ok(&c, &["tweak", "-n"]);
    assert!(
        tweak.contains("S1 R ") && tweak.contains("S2 R "),
        "{tweak}"
    );
    // A dry run changes nothing.
    assert_eq!(
        ok(&c, &["print", "pt"]),
        "# ptid: 1, replicas: 0\nS1 R UUUU\nS2 R ....\n"
    );
    assert_eq!(ok(&c, &["flush_log"]), "");

    // The client: invalidations from the master and undo through the storage.
    let rt = runtime();
    rt.block_on(within(Duration::from_secs(10), "client work", async {
        let a = Client::connect(c.client_config()).await.expect("client a");
        let b = Client::connect(c.client_config()).await.expect("client b");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        b.on_invalidate(move |tid, oids| {
            let _ = tx.send((tid, oids.to_vec()));
        });
        let root = Oid(0);
        let t1 = commit(&a, "v1", &[(root, ZERO_TID, b"one")])
            .await
            .expect("t1");
        let t2 = commit(&a, "v2", &[(root, t1, b"two")]).await.expect("t2");
        for t in [t1, t2] {
            let got = within(Duration::from_secs(5), "invalidation", rx.recv()).await;
            assert_eq!(got, Some((t, vec![root])));
        }
        assert_eq!(b.last_tid(), t2);
        let mut txn = b.tpc_begin(meta("undo v2")).await.expect("begin");
        assert_eq!(b.undo(&mut txn, t2).await.expect("undo"), vec![root]);
        let t3 = b.tpc_finish(txn).await.expect("undo commit");
        let r = a.load_serial(root, t3).await.expect("load undone");
        assert_eq!((r.data.as_slice(), r.data_serial), (&b"one"[..], Some(t1)));
        let log: Vec<Tid> = a
            .undo_log(0, 10)
            .await
            .expect("undoLog")
            .iter()
            .map(|i| i.tid)
            .collect();
        assert_eq!(log, vec![t3, t2, t1]);
        let h = a.history(root, 2).await.expect("history");
        assert_eq!(h.iter().map(|e| e.serial).collect::<Vec<_>>(), vec![t3, t2]);
        a.close().await;
        b.close().await;
    }));

    // kill S2: it leaves the cluster (DOWN), the cluster keeps running.
    ok(&c, &["kill", "S2"]);
    let storages = ok(&c, &["print", "node", "storage"]);
    assert!(
        storages
            .lines()
            .any(|l| l.starts_with("S2 ") && l.contains("| DOWN")),
        "{storages}"
    );
    assert_eq!(c.state(), "RUNNING");
    // neoctl against nothing.
    let dead = neo_e2e::local(neo_e2e::free_port());
    let out = std::process::Command::new(&c.bins.neoctl)
        .args(["-a", &dead.to_string(), "print", "cluster"])
        .output()
        .expect("neoctl");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "ERROR: not connected\n"
    );
}

backend_tests!(neoctl_commands_and_outputs);
