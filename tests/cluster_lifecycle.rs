//! End-to-end: real `neomaster`, `neostorage` (SQLite and MySQL) and `neoadmin`
//! processes, `neoctl`, and the Rust client. Bootstrap with `neoctl start`,
//! commit / load / loadBefore / conflict / iterate, stop with STOPPING and
//! restart (the cluster starts by itself and finds everything), a wrong
//! cluster name, and a storage SIGKILLed right after a commit; each on
//! SQLite and on MySQL (`sqlite::` / `mysql::`).

mod cluster_common;

use std::time::Duration;

use cluster_common::*;
use neo_e2e::Daemon;
use neo_proto::{ErrorCode, Oid, Tid, ZERO_TID};
use neo_server::client::{Client, ClientError};

const OP: Duration = Duration::from_secs(10);

fn bootstrap_commit_stop_restart(db: Db) {
    let Some(mut c) = Cluster::on(db, "lifecycle", 1) else {
        return;
    };
    c.start_all();
    c.wait_state("RECOVERING", STEP);
    let (code, nodes, err) = c.neoctl(&["print", "node", "storage"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        nodes.contains("| STORAGE |") && nodes.contains("PENDING"),
        "{nodes}"
    );
    c.bootstrap();
    let (_, pt, _) = c.neoctl(&["print", "pt"]);
    assert_eq!(pt, "# ptid: 1, replicas: 0\nS1 R UUUU\n");
    let (_, primary, _) = c.neoctl(&["print", "primary"]);
    assert_eq!(primary, "M1\n");

    let rt = runtime();
    let root = Oid(0);
    let (t1, t2, t3, other) = rt.block_on(within(OP, "client work", async {
        let a = Client::connect(c.client_config()).await.expect("client a");
        let b = Client::connect(c.client_config()).await.expect("client b");
        assert!(matches!(
            a.load(root).await,
            Err(ClientError::OidDoesNotExist(_))
        ));
        let other = a.new_oid().await.expect("new oid");
        let big = vec![b'q'; 50_000];
        let t1 = commit(
            &a,
            "create",
            &[(root, ZERO_TID, b"root 1"), (other, ZERO_TID, &big)],
        )
        .await
        .expect("t1");
        let t2 = commit(&a, "update", &[(root, t1, b"root 2")])
            .await
            .expect("t2");
        let r = a.load(root).await.expect("load");
        assert_eq!((r.data.as_slice(), r.serial), (&b"root 2"[..], t2));
        assert!(a.load(other).await.expect("load big").data == big);
        let r = a
            .load_before(root, t2)
            .await
            .expect("loadBefore")
            .expect("found");
        assert_eq!(
            (r.data.as_slice(), r.serial, r.next_serial),
            (&b"root 1"[..], t1, Some(t2))
        );
        assert_eq!(a.load_before(root, t1).await.expect("loadBefore"), None);
        // b bases a change on t1 after a committed t2: conflict.
        b.sync().await.expect("sync");
        match commit(&b, "stale", &[(root, t1, b"from b")]).await {
            Err(ClientError::Conflict {
                oid,
                committed,
                base,
            }) => assert_eq!((oid, committed, base), (root, t2, t1)),
            other => panic!("expected a conflict, got {other:?}"),
        }
        let t3 = commit(&b, "fresh", &[(root, t2, b"root 3")])
            .await
            .expect("t3");
        let all = a.iterator(ZERO_TID, Some(t3)).await.expect("iterate");
        let tids: Vec<Tid> = all.iter().map(|t| t.info.tid).collect();
        assert_eq!(tids, vec![t1, t2, t3]);
        assert_eq!(all[0].info.user, b"/ e2e");
        assert_eq!(all[0].objects.len(), 2);
        a.close().await;
        b.close().await;
        (t1, t2, t3, other)
    }));
    if db == Db::Sqlite {
        // Our default, not NEO's: SQLite's write-ahead log.
        let conn = rusqlite::Connection::open(c.storage_db(0)).expect("storage database");
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("journal mode");
        assert_eq!(mode, "wal");
    }
    let (code, ids, err) = c.neoctl(&["print", "ids"]);
    assert_eq!(code, 0, "{err}");
    // The master's last oid is the last one it handed out (a batch of 100).
    assert!(ids.starts_with("last_oid = 0x"), "{ids}");
    let loid = u64::from_str_radix(ids[13..].lines().next().unwrap_or(""), 16).expect("hex oid");
    assert!(loid >= other.0, "{ids}");
    assert!(
        ids.contains(&format!("\nlast_tid = 0x{:x} (", t3.0)) && ids.ends_with("\nlast_ptid = 1\n"),
        "{ids}"
    );

    c.stop();
    // Restart: the storage is known, so the cluster starts by itself.
    c.start_all();
    c.wait_state("RUNNING", STEP);
    rt.block_on(within(OP, "after restart", async {
        let a = Client::connect(c.client_config()).await.expect("client");
        assert_eq!(a.last_tid(), t3);
        let r = a.load(root).await.expect("load");
        assert_eq!((r.data.as_slice(), r.serial), (&b"root 3"[..], t3));
        let r = a
            .load_before(root, t3)
            .await
            .expect("loadBefore")
            .expect("found");
        assert_eq!(r.serial, t2);
        let all = a.iterator(ZERO_TID, None).await.expect("iterate");
        assert_eq!(
            all.iter().map(|t| t.info.tid).collect::<Vec<_>>(),
            vec![t1, t2, t3]
        );
        let t4 = commit(&a, "after restart", &[(root, t3, b"root 4")])
            .await
            .expect("t4");
        assert!(t4 > t3);
        a.close().await;
    }));
}

fn wrong_cluster_name_is_refused(db: Db) {
    let Some(mut c) = Cluster::on(db, "wrongname", 1) else {
        return;
    };
    c.start_all();
    c.wait_state("RECOVERING", STEP);
    let rt = runtime();
    // The client: a typed refusal at once, not a timeout.
    let mut cfg = c.client_config();
    cfg.cluster = "not-this-one".into();
    let started = std::time::Instant::now();
    match rt.block_on(within(OP, "refused client", Client::connect(cfg))) {
        Err(ClientError::Refused { code, message, .. }) => {
            assert_eq!(code, ErrorCode::ProtocolError);
            assert!(message.contains("cluster name"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    // The right name before `neoctl start`: not operational, told in time.
    let mut cfg = c.client_config();
    cfg.connect_timeout = Duration::from_secs(1);
    let started = std::time::Instant::now();
    match rt.block_on(within(OP, "early client", Client::connect(cfg))) {
        Err(e @ (ClientError::NotOperational { .. } | ClientError::NoMaster { .. })) => {
            assert!(!e.to_string().is_empty())
        }
        other => panic!("expected not operational, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    // An admin node of another cluster exits with an error saying why.
    let args = c.admin_args("not-this-one");
    let mut a2 = {
        // Another port: the cluster's admin keeps its own.
        let port = neo_e2e::free_port();
        let mut args = args;
        let b = args.iter().position(|a| a == "-b").expect("-b") + 1;
        args[b] = neo_e2e::local(port).to_string();
        Daemon::spawn("admin-wrong", c.dir.path(), &c.bins.admin, &args)
    };
    let code = a2
        .wait_exit(STEP)
        .expect("the admin of another cluster exits");
    assert_ne!(code, 0);
    assert!(a2.log_text().contains("cluster name"), "{}", a2.log_text());
    // The real cluster is unaffected.
    assert_eq!(c.state(), "RECOVERING");
}

fn storage_killed_right_after_commit_keeps_it(db: Db) {
    let Some(mut c) = Cluster::on(db, "sigkill", 1) else {
        return;
    };
    c.start_all();
    c.bootstrap();
    let rt = runtime();
    let root = Oid(0);
    // A client that lives through the crash: it is dropped by the master
    // when the cluster stops being operational and reconnects by itself.
    let survivor = rt
        .block_on(within(OP, "connect", Client::connect(c.client_config())))
        .expect("client");
    let tids = rt.block_on(within(OP, "commits", async {
        let a = Client::connect(c.client_config()).await.expect("client");
        let mut tids = Vec::new();
        let mut serial = ZERO_TID;
        for i in 0..5u8 {
            serial = commit(&a, "commit", &[(root, serial, &[i; 100])])
                .await
                .expect("commit");
            tids.push(serial);
        }
        // Kill as soon as the last commit is acknowledged.
        if let Some(s) = c.storages[0].as_mut() {
            s.kill();
        }
        a.close().await;
        tids
    }));
    c.storages[0] = None;
    c.start_storage(0);
    c.wait_state("RUNNING", STEP);
    let last = *tids.last().expect("tids");
    rt.block_on(within(OP, "reload", async {
        let a = Client::connect(c.client_config()).await.expect("client");
        assert_eq!(a.last_tid(), last);
        let r = a.load(root).await.expect("load");
        assert_eq!((r.data, r.serial), (vec![4u8; 100], last));
        for (i, t) in tids.iter().enumerate() {
            let r = a.load_serial(root, *t).await.expect("loadSerial");
            assert_eq!(r.data, vec![i as u8; 100]);
        }
        a.close().await;
    }));
    rt.block_on(within(OP, "survivor", async {
        survivor.sync().await.expect("sync after reconnection");
        assert_eq!(survivor.last_tid(), last);
        let t = commit(&survivor, "after the crash", &[(root, last, b"survived")])
            .await
            .expect("commit after the crash");
        assert_eq!(survivor.load(root).await.expect("load").serial, t);
        survivor.close().await;
    }));
}

backend_tests!(
    bootstrap_commit_stop_restart,
    wrong_cluster_name_is_refused,
    storage_killed_right_after_commit_keeps_it
);
