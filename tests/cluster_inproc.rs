//! A whole cluster in this process: the real master, storage (SQLite) and
//! admin roles run by `neo_server::runtime::spawn` on real sockets, the
//! real `neoctl` binary to start it, and the Rust client. Same scenario as
//! the process tests (`cluster_*.rs`), without needing the daemons'
//! binaries.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use neo_e2e::{binary, free_port, local, TestDir};
use neo_proto::{Address, Oid, Tid, ZERO_TID};
use neo_server::admin::{Admin, AdminConfig};
use neo_server::client::{Client, ClientConfig, ClientError, TxnMeta};
use neo_server::master::{Master, MasterConfig};
use neo_server::runtime::{spawn, NodeHandle};
use neo_server::storage::node::{StorageConfig, StorageNode};
use neo_server::storage::{SqliteBackend, SqliteOptions};

struct Cluster {
    master: SocketAddr,
    admin: SocketAddr,
    handles: Vec<NodeHandle>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for h in self.handles.drain(..) {
            h.shutdown();
        }
    }
}

fn listener(port: u16) -> std::net::TcpListener {
    std::net::TcpListener::bind(local(port)).expect("bind")
}

fn start(dir: &TestDir) -> Cluster {
    let (mp, sp, ap) = (free_port(), free_port(), free_port());
    let master = local(mp);
    let m = Master::new(MasterConfig {
        cluster: "test".into(),
        address: Address::new("127.0.0.1", mp),
        partitions: 4,
        replicas: 0,
        autostart: None,
        nid: None,
    })
    .expect("master");
    let db = dir.path().join("s1.sqlite");
    let backend = SqliteBackend::open(&db, &SqliteOptions::default()).expect("sqlite");
    let s = StorageNode::new(
        StorageConfig {
            cluster: "test".into(),
            masters: vec![master],
            address: local(sp),
            nid: None,
            database: db.display().to_string(),
            disable_pack: false,
        },
        backend,
    )
    .expect("storage");
    let a = Admin::new(AdminConfig {
        cluster: "test".into(),
        masters: vec![master],
        address: local(ap),
        nid: None,
    });
    let handles = vec![
        spawn(m, Some(listener(mp)), None).expect("spawn master"),
        spawn(s, Some(listener(sp)), None).expect("spawn storage"),
        spawn(a, Some(listener(ap)), None).expect("spawn admin"),
    ];
    Cluster {
        master,
        admin: local(ap),
        handles,
    }
}

fn neoctl(admin: SocketAddr, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary("neo-server", "neoctl"))
        .arg("-a")
        .arg(admin.to_string())
        .args(args)
        .output()
        .expect("run neoctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn meta(d: &str) -> TxnMeta {
    TxnMeta {
        user: b"/ test".to_vec(),
        description: d.as_bytes().to_vec(),
        extension: Vec::new(),
    }
}

async fn commit(c: &Client, d: &str, objs: &[(Oid, Tid, &[u8])]) -> Result<Tid, ClientError> {
    let mut txn = c.tpc_begin(meta(d)).await?;
    for &(oid, serial, data) in objs {
        if let Err(e) = c.store(&mut txn, oid, serial, data).await {
            c.tpc_abort(txn).await;
            return Err(e);
        }
    }
    c.tpc_finish(txn).await
}

#[test]
fn inproc_bootstrap_commit_load_conflict_iterate() {
    let dir = TestDir::new("inproc");
    binary("neo-server", "neoctl"); // build first: not part of the timings
    let t0 = Instant::now();
    let cluster = start(&dir);
    // Before start: the admin answers, the cluster is recovering.
    wait_for("admin ready", Duration::from_secs(5), || {
        neoctl(cluster.admin, &["print", "cluster"]).1.trim() == "RECOVERING"
    });
    eprintln!("admin ready after {:?}", t0.elapsed());
    let (code, out, err) = neoctl(cluster.admin, &["print", "node", "storage"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("STORAGE") && out.contains("PENDING"), "{out}");
    let (code, out, err) = neoctl(cluster.admin, &["start"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "Cluster state changed");
    wait_for("RUNNING", Duration::from_secs(10), || {
        neoctl(cluster.admin, &["print", "cluster"]).1.trim() == "RUNNING"
    });
    eprintln!("running after {:?}", t0.elapsed());
    let (_, pt, _) = neoctl(cluster.admin, &["print", "pt"]);
    assert_eq!(pt, "# ptid: 1, replicas: 0\nS1 R UUUU\n");
    let (_, primary, _) = neoctl(cluster.admin, &["print", "primary"]);
    assert_eq!(primary.trim(), "M1");

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut cfg = ClientConfig::new(vec![cluster.master], "test");
        cfg.connect_timeout = Duration::from_secs(5);
        cfg.request_timeout = Some(Duration::from_secs(5));
        let a = Client::connect(cfg.clone()).await.expect("client a");
        let b = Client::connect(cfg.clone()).await.expect("client b");
        let root = Oid(0);
        let other = a.new_oid().await.expect("oid");
        assert_ne!(other, root);
        assert!(matches!(
            a.load(root).await,
            Err(ClientError::OidDoesNotExist(_))
        ));
        let big = vec![b'z'; 10_000];
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
        assert!(
            a.load(other).await.expect("load big").data == big,
            "big object differs"
        );
        let before = a
            .load_before(root, t2)
            .await
            .expect("loadBefore")
            .expect("exists");
        assert_eq!(
            (before.data.as_slice(), before.serial),
            (&b"root 1"[..], t1)
        );
        assert_eq!(a.load_before(root, t1).await.expect("loadBefore"), None);
        // b has seen a's commits and conflicts when based on t1.
        b.sync().await.expect("sync");
        assert_eq!(b.load(root).await.expect("b load").serial, t2);
        match commit(&b, "stale", &[(root, t1, b"root from b")]).await {
            Err(ClientError::Conflict {
                oid,
                committed,
                base,
            }) => {
                assert_eq!((oid, committed, base), (root, t2, t1))
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        let t3 = commit(&b, "fresh", &[(root, t2, b"root 3")])
            .await
            .expect("t3");
        assert_eq!(
            a.load_serial(root, t3).await.expect("loadSerial").data,
            b"root 3"
        );
        let txns = a.iterator(ZERO_TID, Some(t3)).await.expect("iterate");
        let tids: Vec<Tid> = txns.iter().map(|t| t.info.tid).collect();
        assert_eq!(tids, vec![t1, t2, t3]);
        assert_eq!(txns[0].objects.len(), 2);
        assert_eq!(txns[2].info.description, b"fresh");
        let h = a.history(root, 10).await.expect("history");
        assert_eq!(
            h.iter().map(|e| e.serial).collect::<Vec<_>>(),
            vec![t3, t2, t1]
        );
        let mut txn = a.tpc_begin(meta("undo t3")).await.expect("begin");
        a.undo(&mut txn, t3).await.expect("undo");
        let t4 = a.tpc_finish(txn).await.expect("finish undo");
        let r = a.load(root).await.expect("load after undo");
        assert_eq!((r.data.as_slice(), r.serial), (&b"root 2"[..], t4));
        a.close().await;
        b.close().await;
    });
    eprintln!("client work done after {:?}", t0.elapsed());
    let (code, ids, err) = neoctl(cluster.admin, &["print", "ids"]);
    assert_eq!(code, 0, "{err}");
    assert!(ids.starts_with("last_oid = 0x"), "{ids}");
    assert!(ids.contains("\nlast_ptid = 1"), "{ids}");
    let (_, summary, _) = neoctl(cluster.admin, &["print", "summary"]);
    assert!(
        summary.starts_with("# {}\nRUNNING; UP_TO_DATE=4; ltid="),
        "{summary}"
    );
}
