//! A NEO cluster of real processes for the `tests/cluster_*.rs` tests: one
//! `neomaster`, `neostorage`s on SQLite or MySQL ([`Db`]) and one
//! `neoadmin` on free 127.0.0.1 ports, their databases and logs in a
//! [`TestDir`], `neoctl` to drive them and the Rust client to use them.
//! Every wait has a timeout and the daemons are killed when the cluster is
//! dropped. [`backend_tests!`] runs a scenario on both databases.

#![allow(dead_code)] // each test file uses a different subset

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use neo_e2e::{binary, free_port, local, wait_listening, Daemon, TestDir};
use neo_proto::{Oid, Tid};
use neo_server::client::{Client, ClientConfig, ClientError, TxnMeta};

/// How long a daemon may take to listen, or the cluster to change state.
pub const STEP: Duration = Duration::from_secs(10);

/// The binaries, built before any daemon starts (so that build time does
/// not count in the timeouts).
pub struct Bins {
    pub master: PathBuf,
    pub storage: PathBuf,
    pub admin: PathBuf,
    pub neoctl: PathBuf,
}

pub fn bins() -> Bins {
    Bins {
        master: binary("neo-server", "neomaster"),
        storage: binary("neo-importer", "neostorage"),
        admin: binary("neo-server", "neoadmin"),
        neoctl: binary("neo-server", "neoctl"),
    }
}

pub struct Cluster {
    pub bins: Bins,
    pub name: String,
    pub master_port: u16,
    pub admin_port: u16,
    pub storage_ports: Vec<u16>,
    pub master: Option<Daemon>,
    pub storages: Vec<Option<Daemon>>,
    pub admin: Option<Daemon>,
    /// `-r` of the master (0 by default).
    pub replicas: u32,
    /// Storages on MySQL instead of SQLite (see [`MysqlDbs::create`]).
    pub mysql: Option<MysqlDbs>,
    /// TLS between every node, neoctl and the client (see [`Pki::write`]).
    pub tls: Option<Pki>,
    /// Last so that the daemons die before their directory goes.
    pub dir: TestDir,
}

/// The storage nodes' database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    /// The embedded default: one SQLite file per storage in the test dir.
    Sqlite,
    /// One fresh database per storage on the private MariaDB server of
    /// `scripts/mysql-test-server.sh`.
    Mysql,
}

/// Declares `sqlite::NAME` and `mysql::NAME` tests for each scenario
/// `fn NAME(db: Db)` of the test file.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() {
                super::$name($crate::cluster_common::Db::Sqlite)
            })*
        }
        mod mysql {
            $(#[test]
            fn $name() {
                super::$name($crate::cluster_common::Db::Mysql)
            })*
        }
    };
}

/// Fresh MySQL databases, one per storage, on the private test server of
/// `scripts/mysql-test-server.sh` (`$NEO_TEST_MYSQL_SOCKET`).
pub struct MysqlDbs {
    pub socket: String,
    pub databases: Vec<String>,
}

impl MysqlDbs {
    /// `None` (with a notice) when no test server is configured outside CI;
    /// under `CI=true` a missing server is a failure.
    pub fn create(test: &str, n: usize) -> Option<MysqlDbs> {
        let Some(socket) = std::env::var_os("NEO_TEST_MYSQL_SOCKET") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "NEO_TEST_MYSQL_SOCKET is not set: under CI the MySQL tests must run"
            );
            eprintln!("notice: MySQL e2e test skipped: NEO_TEST_MYSQL_SOCKET is not set");
            return None;
        };
        let socket = socket.to_string_lossy().into_owned();
        let databases: Vec<String> = (0..n)
            .map(|i| format!("neo_e2e_{test}_{}_{i}", std::process::id()))
            .collect();
        let sql: String = databases
            .iter()
            .map(|d| format!("DROP DATABASE IF EXISTS {d}; CREATE DATABASE {d};"))
            .collect();
        let client = ["mariadb", "mysql"]
            .into_iter()
            .find(|c| {
                Command::new(c)
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .expect("a mariadb/mysql client");
        let out = Command::new(client)
            .args([
                "--no-defaults",
                &format!("--socket={socket}"),
                "-uroot",
                "-e",
                &sql,
            ])
            .output()
            .expect("run the mysql client");
        assert!(
            out.status.success(),
            "creating {databases:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(MysqlDbs { socket, databases })
    }
}

impl Cluster {
    /// Ports and a directory for a cluster of `storages` storage nodes;
    /// nothing started yet.
    pub fn new(test: &str, storages: usize) -> Cluster {
        Cluster {
            bins: bins(),
            name: format!("e2e-{test}"),
            master_port: free_port(),
            admin_port: free_port(),
            storage_ports: (0..storages).map(|_| free_port()).collect(),
            master: None,
            storages: (0..storages).map(|_| None).collect(),
            admin: None,
            replicas: 0,
            mysql: None,
            tls: None,
            dir: TestDir::new(test),
        }
    }

    /// [`Cluster::new`] with its storages on `db`; `None` (the test is
    /// skipped, with a notice) when MySQL is asked for and no test server
    /// is configured outside CI.
    pub fn on(db: Db, test: &str, storages: usize) -> Option<Cluster> {
        let mut c = Cluster::new(test, storages);
        if db == Db::Mysql {
            c.mysql = Some(MysqlDbs::create(test, storages)?);
        }
        Some(c)
    }

    pub fn master_addr(&self) -> SocketAddr {
        local(self.master_port)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        local(self.admin_port)
    }

    fn masters_arg(&self) -> String {
        self.master_addr().to_string()
    }

    pub fn start_master(&mut self) {
        self.start_master_with(Vec::new());
    }

    /// The master with our usual arguments, then `extra`.
    fn start_master_with(&mut self, extra: Vec<String>) {
        let mut args = vec![
            "-c".into(),
            self.name.clone(),
            "-b".into(),
            self.master_addr().to_string(),
            "-p".into(),
            "4".into(),
            "-r".into(),
            self.replicas.to_string(),
        ];
        args.extend(extra);
        let args = self.with_tls(args);
        self.master = Some(Daemon::spawn(
            "master",
            self.dir.path(),
            &self.bins.master,
            &args,
        ));
        self.wait_listening(self.master_addr(), "master");
    }

    pub fn storage_db(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("storage{i}.sqlite"))
    }

    pub fn storage_args(&self, i: usize, cluster: &str) -> Vec<String> {
        let mut args = vec![
            "-c".into(),
            cluster.into(),
            "-m".into(),
            self.masters_arg(),
            "-b".into(),
            local(self.storage_ports[i]).to_string(),
        ];
        match &self.mysql {
            // NEO's `user@database<unix socket>`.
            Some(m) => args.extend([
                "-a".into(),
                "MySQL".into(),
                "-d".into(),
                format!("root@{}{}", m.databases[i], m.socket),
            ]),
            None => args.extend(["-d".into(), self.storage_db(i).display().to_string()]),
        }
        self.with_tls(args)
    }

    pub fn start_storage(&mut self, i: usize) {
        let args = self.storage_args(i, &self.name.clone());
        let name = format!("storage{i}");
        self.storages[i] = Some(Daemon::spawn(
            &name,
            self.dir.path(),
            &self.bins.storage,
            &args,
        ));
        self.wait_listening(local(self.storage_ports[i]), &name);
    }

    pub fn admin_args(&self, cluster: &str) -> Vec<String> {
        self.with_tls(vec![
            "-c".into(),
            cluster.into(),
            "-m".into(),
            self.masters_arg(),
            "-b".into(),
            self.admin_addr().to_string(),
        ])
    }

    /// `args` followed by NEO's `--ca/--cert/--key` when the cluster uses TLS.
    pub fn with_tls(&self, mut args: Vec<String>) -> Vec<String> {
        if let Some(pki) = &self.tls {
            args.extend(pki.args());
        }
        args
    }

    pub fn start_admin(&mut self) {
        let args = self.admin_args(&self.name.clone());
        self.admin = Some(Daemon::spawn(
            "admin",
            self.dir.path(),
            &self.bins.admin,
            &args,
        ));
        self.wait_listening(self.admin_addr(), "admin");
    }

    /// Master, every storage and admin.
    pub fn start_all(&mut self) {
        self.start_master();
        for i in 0..self.storages.len() {
            self.start_storage(i);
        }
        self.start_admin();
    }

    fn wait_listening(&mut self, addr: SocketAddr, what: &str) {
        assert!(
            wait_listening(addr, STEP),
            "{what} does not listen on {addr}"
        );
    }

    /// Runs `neoctl -a ADMIN args...`: (exit code, stdout, stderr).
    pub fn neoctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(&self.bins.neoctl)
            .arg("-a")
            .arg(self.admin_addr().to_string())
            .args(self.with_tls(Vec::new()))
            .args(args)
            .output()
            .expect("run neoctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `neoctl print cluster`, trimmed (empty when it fails).
    pub fn state(&self) -> String {
        let (code, out, _) = self.neoctl(&["print", "cluster"]);
        if code == 0 {
            out.trim().to_owned()
        } else {
            String::new()
        }
    }

    /// Waits until `neoctl print pt` satisfies `ok`; returns it.
    pub fn wait_pt_until(&self, ok: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let (_, pt, _) = self.neoctl(&["print", "pt"]);
            if ok(&pt) {
                return pt;
            }
            assert!(start.elapsed() < timeout, "partition table still:\n{pt}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_state(&self, state: &str, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            let now = self.state();
            if now == state {
                return;
            }
            assert!(
                Instant::now() < end,
                "cluster not {state} after {timeout:?} (last: {now:?})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until storage `nid` (e.g. "S3") has identified and is
    /// PENDING, then `neoctl add`s it (an `add` of a node the master does
    /// not know yet succeeds doing nothing: "No node added").
    pub fn add_pending(&self, nid: &str) {
        let end = Instant::now() + STEP;
        loop {
            let (_, nodes, _) = self.neoctl(&["print", "node", "storage"]);
            if nodes
                .lines()
                .any(|l| l.contains(nid) && l.contains("PENDING"))
            {
                break;
            }
            assert!(Instant::now() < end, "{nid} not PENDING:\n{nodes}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let (code, out, err) = self.neoctl(&["add", nid]);
        assert_eq!(code, 0, "neoctl add {nid}: {out}{err}");
    }

    /// `neoctl start`, then waits for RUNNING.
    pub fn bootstrap(&mut self) {
        self.wait_state("RECOVERING", STEP);
        // The master refuses to start while a storage is still entering the
        // cluster (as NEO does): try again until it accepts.
        let end = Instant::now() + STEP;
        loop {
            let (code, out, err) = self.neoctl(&["start"]);
            if code == 0 {
                assert_eq!(out.trim(), "Cluster state changed");
                break;
            }
            assert!(
                Instant::now() < end && format!("{out}{err}").contains("entering cluster"),
                "neoctl start: {out}{err}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wait_state("RUNNING", STEP);
    }

    /// `neoctl set cluster STOPPING`, then waits for every daemon to exit.
    pub fn stop(&mut self) {
        let (code, out, err) = self.neoctl(&["set", "cluster", "STOPPING"]);
        assert_eq!(code, 0, "neoctl set cluster STOPPING: {out}{err}");
        let mut all: Vec<&mut Daemon> = Vec::new();
        all.extend(self.master.as_mut());
        all.extend(self.storages.iter_mut().flatten());
        all.extend(self.admin.as_mut());
        for d in all {
            let code = d.wait_exit(STEP);
            assert!(code.is_some(), "{} did not exit after STOPPING", d.name);
        }
        self.master = None;
        self.admin = None;
        for s in &mut self.storages {
            *s = None;
        }
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new(vec![self.master_addr()], &self.name);
        cfg.connect_timeout = STEP;
        cfg.request_timeout = Some(STEP);
        cfg.tls = self.tls.as_ref().map(Pki::config);
        cfg
    }
}

/// A certificate authority and one node certificate signed by it, as PEM
/// files in a test directory (every node, neoctl and the client use the
/// same certificate, which NEO allows: peers are checked against the CA).
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// Generates the CA and the node certificate into `dir`.
    pub fn write(dir: &std::path::Path) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let key = KeyPair::generate().expect("node key");
        let cert = CertificateParams::new(vec!["node.neo".to_owned()])
            .expect("node params")
            .signed_by(&key, &ca, &ca_key)
            .expect("node certificate");
        let pki = Pki {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&pki.ca, ca.pem()).expect("write ca.pem");
        std::fs::write(&pki.cert, cert.pem()).expect("write cert.pem");
        std::fs::write(&pki.key, key.serialize_pem()).expect("write key.pem");
        pki
    }

    pub fn args(&self) -> Vec<String> {
        let p = |p: &PathBuf| p.display().to_string();
        vec![
            "--ca".into(),
            p(&self.ca),
            "--cert".into(),
            p(&self.cert),
            "--key".into(),
            p(&self.key),
        ]
    }

    pub fn config(&self) -> neo_proto::tls::TlsConfig {
        neo_proto::tls::TlsConfig::from_pem_files(&self.ca, &self.cert, &self.key)
            .expect("TLS configuration from the test PEM files")
    }
}

/// A tokio runtime for the client side of a test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub fn meta(d: &str) -> TxnMeta {
    TxnMeta {
        user: b"/ e2e".to_vec(),
        description: d.as_bytes().to_vec(),
        extension: Vec::new(),
    }
}

/// One transaction storing `objs` = (oid, base serial, data).
pub async fn commit(c: &Client, d: &str, objs: &[(Oid, Tid, &[u8])]) -> Result<Tid, ClientError> {
    let mut txn = c.tpc_begin(meta(d)).await?;
    for &(oid, serial, data) in objs {
        if let Err(e) = c.store(&mut txn, oid, serial, data).await {
            c.tpc_abort(txn).await;
            return Err(e);
        }
    }
    c.tpc_finish(txn).await
}

/// Runs a future with a deadline (tests never hang).
pub async fn within<T>(d: Duration, what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(d, f)
        .await
        .unwrap_or_else(|_| panic!("{what} took more than {d:?}"))
}

impl Cluster {
    /// The master of a backup cluster of `upstream` (`-C`, `-M`), with the
    /// arguments of [`Cluster::start_master`].
    pub fn start_backup_master(&mut self, upstream: &Cluster) {
        self.start_master_with(vec![
            "-C".into(),
            upstream.name.clone(),
            "-M".into(),
            upstream.master_addr().to_string(),
        ]);
    }
}
