//! Two real `neomaster` processes with the same `--masters`, one
//! `neostorage` (SQLite) and one `neoadmin`: one primary is elected, the
//! storage, the admin and the Rust client (all given the secondary first)
//! end up on it; `neoctl start`, commits; the primary is SIGKILLed, the
//! secondary takes over and recovers by itself, the client commits again
//! and reads everything back, and `neoctl print node` shows the new
//! primary.

mod cluster_common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cluster_common::{bins, commit, runtime, within, STEP};
use neo_e2e::{free_port, local, wait_listening, Daemon, TestDir};
use neo_proto::{Oid, Tid};
use neo_server::client::{Client, ClientConfig};

struct Election {
    name: String,
    masters: [u16; 2],
    storage: u16,
    admin: u16,
    neoctl: std::path::PathBuf,
    dir: TestDir,
}

impl Election {
    fn masters_arg(&self) -> String {
        // The secondary (started second) first: every node meets it first.
        format!("{} {}", local(self.masters[1]), local(self.masters[0]))
    }

    fn neoctl(&self, args: &[&str]) -> (bool, String) {
        let out = std::process::Command::new(&self.neoctl)
            .arg("-a")
            .arg(local(self.admin).to_string())
            .args(args)
            .output()
            .expect("run neoctl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Waits until `neoctl args` succeeds with an output for which `ok`
    /// holds; returns that output.
    fn wait_neoctl(&self, args: &[&str], ok: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + STEP;
        loop {
            let (success, out) = self.neoctl(args);
            if success && ok(&out) {
                return out;
            }
            assert!(Instant::now() < end, "neoctl {args:?}: last output {out}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The line of `print node` output for the master at `port`.
fn master_line(nodes: &str, port: u16) -> Option<&str> {
    nodes
        .lines()
        .find(|l| l.contains("MASTER") && l.contains(&format!(":{port} ")))
}

fn spawn(e: &Election, name: &str, bin: &std::path::Path, args: Vec<String>, port: u16) -> Daemon {
    let d = Daemon::spawn(name, e.dir.path(), bin, &args);
    let addr: SocketAddr = local(port);
    assert!(
        wait_listening(addr, STEP),
        "{name} does not listen on {addr}"
    );
    d
}

#[test]
fn primary_killed_secondary_takes_over() {
    let b = bins();
    let t0 = Instant::now();
    let e = Election {
        name: "e2e-election".into(),
        masters: [free_port(), free_port()],
        storage: free_port(),
        admin: free_port(),
        neoctl: b.neoctl.clone(),
        dir: TestDir::new("election"),
    };
    let master_args = |i: usize| -> Vec<String> {
        vec![
            "-c".into(),
            e.name.clone(),
            "-b".into(),
            local(e.masters[i]).to_string(),
            "-m".into(),
            e.masters_arg(),
            "-p".into(),
            "4".into(),
        ]
    };
    // master0 starts first: it has the older election key and wins.
    let mut m0 = spawn(&e, "master0", &b.master, master_args(0), e.masters[0]);
    std::thread::sleep(Duration::from_millis(50));
    let mut m1 = spawn(&e, "master1", &b.master, master_args(1), e.masters[1]);
    let storage_args = vec![
        "-c".into(),
        e.name.clone(),
        "-m".into(),
        e.masters_arg(),
        "-b".into(),
        local(e.storage).to_string(),
        "-d".into(),
        e.dir.path().join("storage.sqlite").display().to_string(),
    ];
    let _s = spawn(&e, "storage", &b.storage, storage_args, e.storage);
    let admin_args = vec![
        "-c".into(),
        e.name.clone(),
        "-m".into(),
        e.masters_arg(),
        "-b".into(),
        local(e.admin).to_string(),
    ];
    let _a = spawn(&e, "admin", &b.admin, admin_args, e.admin);

    // The admin found the primary; the storage is pending there.
    let nodes = e.wait_neoctl(&["print", "node"], |o| o.contains("STORAGE"));
    let primary = master_line(&nodes, e.masters[0]).expect("master0 listed");
    assert!(primary.contains("RUNNING"), "{nodes}");
    assert!(
        master_line(&nodes, e.masters[1]).is_some_and(|l| l.contains("RUNNING")),
        "{nodes}"
    );
    e.wait_neoctl(&["start"], |o| o.contains("Cluster state changed"));
    e.wait_neoctl(&["print", "cluster"], |o| o.trim() == "RUNNING");
    let (ok, first_primary) = e.neoctl(&["print", "primary"]);
    assert!(ok, "{first_primary}");

    let rt = runtime();
    let mut cfg = ClientConfig::new(vec![local(e.masters[1]), local(e.masters[0])], &e.name);
    cfg.connect_timeout = STEP;
    cfg.request_timeout = Some(STEP);
    let oids = [Oid(0), Oid(1)];
    let (client, t1) = rt.block_on(async {
        let c = within(STEP, "connect", Client::connect(cfg))
            .await
            .expect("client");
        let t1 = commit(
            &c,
            "first",
            &[(oids[0], Tid(0), b"root0"), (oids[1], Tid(0), b"a0")],
        )
        .await
        .expect("first commit");
        (c, t1)
    });

    // SIGKILL the primary: master1 takes over, the storage reconnects and
    // the cluster recovers by itself.
    let killed_at = Instant::now();
    m0.kill();
    let t2 = rt.block_on(async {
        within(
            STEP * 2,
            "commit after fail-over",
            commit(&client, "second", &[(oids[1], t1, b"a1")]),
        )
        .await
        .expect("commit after fail-over")
    });
    let took = killed_at.elapsed();
    eprintln!("fail-over to a commit: {took:?}");
    assert!(t2 > t1);
    rt.block_on(async {
        let r = client.load(oids[0]).await.expect("load root");
        assert_eq!((r.serial, r.data.as_slice()), (t1, &b"root0"[..]));
        let r = client.load(oids[1]).await.expect("load a");
        assert_eq!((r.serial, r.data.as_slice()), (t2, &b"a1"[..]));
        assert_eq!(client.last_transaction().await.expect("last tid"), t2);
        client.close().await;
    });
    let nodes = e.wait_neoctl(&["print", "node"], |o| {
        master_line(o, e.masters[0]).is_some_and(|l| l.contains("DOWN"))
            && master_line(o, e.masters[1]).is_some_and(|l| l.contains("RUNNING"))
    });
    let (ok, new_primary) = e.neoctl(&["print", "primary"]);
    assert!(ok, "{new_primary}");
    assert_ne!(new_primary, first_primary, "{nodes}");
    let id = new_primary.trim();
    assert!(
        master_line(&nodes, e.masters[1]).is_some_and(|l| l.trim_start().starts_with(id)),
        "primary {id} is master1: {nodes}"
    );
    assert!(m1.is_running());
    m1.kill();
    eprintln!("whole scenario (binaries built): {:?}", t0.elapsed());
}
