//! The MySQL/MariaDB side of the storage tests: the harness that gives each
//! generic test a fresh database on a real server, and the MySQL-only tests
//! (schema against NEO's, big data, reconnection, locking, random
//! operations against the memory backend).
//!
//! The server is found through `$NEO_TEST_MYSQL_SOCKET` (a unix socket;
//! `scripts/test.sh` starts a private server with
//! `scripts/mysql-test-server.sh` and sets it). Without it, the tests fail
//! under `CI=true` and are skipped, with a notice, elsewhere.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use ::mysql::prelude::Queryable;
use fsformat::{Oid, Tid};

use super::*;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The test server's socket, or `None` (skip) outside CI.
fn socket() -> Option<PathBuf> {
    match std::env::var_os("NEO_TEST_MYSQL_SOCKET") {
        Some(s) if !s.is_empty() => Some(PathBuf::from(s)),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "NEO_TEST_MYSQL_SOCKET is not set: under CI the MySQL tests must run \
                 (scripts/test.sh starts the server)"
            );
            eprintln!(
                "notice: MySQL test skipped: NEO_TEST_MYSQL_SOCKET is not set \
                 (run scripts/test.sh, or scripts/mysql-test-server.sh start DIR)"
            );
            None
        }
    }
}

fn admin(socket: &std::path::Path) -> ::mysql::Conn {
    let opts = ::mysql::OptsBuilder::new()
        .socket(Some(socket.to_string_lossy().into_owned()))
        .user(Some("root"));
    ::mysql::Conn::new(opts).expect("connecting to the test server")
}

/// Fresh databases `neo_test_<pid>_<n>` on the test server, dropped at the
/// end.
pub(super) struct MysqlHarness {
    socket: PathBuf,
    admin: ::mysql::Conn,
    databases: Vec<String>,
    engine: String,
}

impl MysqlHarness {
    /// `None` when the tests are to be skipped.
    pub(super) fn new() -> Option<Self> {
        let socket = socket()?;
        Some(MysqlHarness {
            admin: admin(&socket),
            socket,
            databases: Vec::new(),
            engine: mysql::ENGINES[0].to_owned(),
        })
    }

    /// A new empty database.
    fn database(&mut self) -> MysqlTarget {
        let name = format!(
            "neo_test_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        self.admin
            .query_drop(format!("DROP DATABASE IF EXISTS {name}"))
            .unwrap();
        self.admin
            .query_drop(format!("CREATE DATABASE {name}"))
            .unwrap();
        self.databases.push(name.clone());
        MysqlTarget::parse(&format!("root@{name}{}", self.socket.display())).unwrap()
    }

    fn open(target: &MysqlTarget, opts: &MysqlOptions) -> MysqlBackend {
        // The server releases the lock of a closed connection a moment
        // after the client left: a restarted node may have to wait as long.
        for _ in 0..100 {
            match MysqlBackend::open(target, opts) {
                Err(DbError::Locked { .. }) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                r => return r.expect("open"),
            }
        }
        panic!("{}: still locked", target.describe());
    }
}

impl Drop for MysqlHarness {
    fn drop(&mut self) {
        for db in &self.databases {
            let _ = self
                .admin
                .query_drop(format!("DROP DATABASE IF EXISTS {db}"));
        }
    }
}

impl Harness for MysqlHarness {
    type B = MysqlBackend;
    fn fresh(&mut self, dedup: bool) -> MysqlBackend {
        let target = self.database();
        let opts = MysqlOptions {
            dedup,
            engine: self.engine.clone(),
            ..MysqlOptions::default()
        };
        Self::open(&target, &opts)
    }
    fn reopen(&mut self, db: MysqlBackend) -> MysqlBackend {
        let target = db.target().clone();
        drop(db);
        Self::open(&target, &MysqlOptions::default())
    }
}

/// A column as the schema test compares it: name, data type, unsigned,
/// nullable, maximum length.
type Column = (String, String, bool, bool, u64);

/// A row of `information_schema.columns` joined with `tables`.
type ColumnRaw = (
    String,
    String,
    String,
    String,
    String,
    Option<u64>,
    String,
    String,
);

/// `(table, [(column, data type, unsigned, nullable, max length)])`
/// as read from `neo/storage/database/mysql.py` (`_setup`).
#[allow(clippy::type_complexity)]
fn expected_columns() -> Vec<(
    &'static str,
    Vec<(&'static str, &'static str, bool, bool, u64)>,
)> {
    const BU: (&str, bool) = ("bigint", true);
    let (bigint, u) = BU;
    let trans = |tid_null: bool| {
        vec![
            ("partition", "smallint", true, false, 0),
            ("tid", bigint, u, tid_null, 0),
            ("packed", "tinyint", false, false, 0),
            ("oids", "mediumblob", false, false, 16_777_215),
            ("user", "blob", false, false, 65_535),
            ("description", "blob", false, false, 65_535),
            ("ext", "blob", false, false, 65_535),
            ("ttid", bigint, u, false, 0),
        ]
    };
    let obj = vec![
        ("partition", "smallint", true, false, 0),
        ("oid", bigint, u, false, 0),
        ("tid", bigint, u, false, 0),
        ("data_id", bigint, u, true, 0),
        ("value_tid", bigint, u, true, 0),
    ];
    vec![
        (
            "bigdata",
            vec![
                ("id", "int", true, false, 0),
                ("value", "mediumblob", false, false, 16_777_215),
            ],
        ),
        (
            "config",
            vec![
                ("name", "varbinary", false, false, 255),
                ("value", "varbinary", false, true, 255),
            ],
        ),
        (
            "data",
            vec![
                ("id", bigint, u, false, 0),
                ("hash", "binary", false, false, 20),
                ("compression", "tinyint", true, true, 0),
                ("value", "mediumblob", false, false, 16_777_215),
            ],
        ),
        ("obj", obj.clone()),
        (
            "pack",
            vec![
                ("tid", bigint, u, false, 0),
                ("approved", "tinyint", false, true, 0),
                ("partial", "tinyint", false, false, 0),
                ("oids", "mediumblob", false, true, 16_777_215),
                ("pack_tid", bigint, u, true, 0),
            ],
        ),
        (
            "pt",
            vec![
                ("partition", "smallint", true, false, 0),
                ("nid", "int", false, false, 0),
                ("tid", bigint, false, false, 0),
                ("pack", bigint, u, true, 0),
            ],
        ),
        ("tobj", obj),
        ("todel", vec![("data_id", bigint, u, false, 0)]),
        ("trans", trans(false)),
        ("ttrans", trans(true)),
    ]
}

/// `(table, index, unique, [columns])` as read from NEO.
fn expected_indexes(dedup: bool) -> Vec<(String, String, bool, Vec<String>)> {
    let mut v: Vec<(&str, &str, bool, Vec<&str>)> = vec![
        ("bigdata", "PRIMARY", true, vec!["id"]),
        ("config", "PRIMARY", true, vec!["name"]),
        ("data", "PRIMARY", true, vec!["id"]),
        ("obj", "PRIMARY", true, vec!["partition", "oid", "tid"]),
        ("obj", "data_id", false, vec!["data_id"]),
        ("obj", "tid", false, vec!["partition", "tid", "oid"]),
        ("pack", "PRIMARY", true, vec!["tid"]),
        ("pt", "PRIMARY", true, vec!["partition", "nid"]),
        ("tobj", "PRIMARY", true, vec!["tid", "oid"]),
        ("todel", "PRIMARY", true, vec!["data_id"]),
        ("trans", "PRIMARY", true, vec!["partition", "tid"]),
        ("ttrans", "PRIMARY", true, vec!["ttid"]),
    ];
    if dedup {
        v.push(("data", "hash", true, vec!["hash", "compression"]));
    }
    let mut v: Vec<_> = v
        .into_iter()
        .map(|(t, i, u, c)| {
            (
                t.to_owned(),
                i.to_owned(),
                u,
                c.into_iter().map(str::to_owned).collect(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn mysql_schema_matches_neo() {
    let Some(mut h) = MysqlHarness::new() else {
        return;
    };
    for dedup in [false, true] {
        let mut db = h.fresh(dedup);
        assert_eq!(db.dedup(), dedup);
        let c = db.connection().unwrap();
        let cols: Vec<ColumnRaw> = c
            .query(
                "SELECT table_name, column_name, data_type, column_type, is_nullable, \
                 character_maximum_length, extra, engine FROM information_schema.columns \
                 JOIN information_schema.tables USING (table_schema, table_name) \
                 WHERE table_schema = DATABASE() ORDER BY table_name, ordinal_position",
            )
            .unwrap();
        let mut got: Vec<(String, Vec<Column>)> = Vec::new();
        for (t, c, ty, full, null, len, extra, engine) in cols {
            assert_eq!(engine, "InnoDB", "{t}");
            let auto = extra.contains("auto_increment");
            assert_eq!(auto, t == "bigdata" && c == "id", "{t}.{c}");
            if got.last().is_none_or(|l| l.0 != t) {
                got.push((t.clone(), Vec::new()));
            }
            let entry = (
                c,
                ty,
                full.contains("unsigned"),
                null == "YES",
                len.unwrap_or(0),
            );
            if let Some(l) = got.last_mut() {
                l.1.push(entry);
            }
        }
        let want: Vec<(String, Vec<Column>)> = expected_columns()
            .into_iter()
            .map(|(t, cols)| {
                (
                    t.to_owned(),
                    cols.into_iter()
                        .map(|(c, ty, u, n, l)| (c.to_owned(), ty.to_owned(), u, n, l))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(got, want);
        let stats: Vec<(String, String, i64, String)> = c
            .query(
                "SELECT table_name, index_name, non_unique, column_name \
                 FROM information_schema.statistics WHERE table_schema = DATABASE() \
                 ORDER BY table_name, index_name, seq_in_index",
            )
            .unwrap();
        let mut idx: Vec<(String, String, bool, Vec<String>)> = Vec::new();
        for (t, i, non_unique, c) in stats {
            match idx.last_mut() {
                Some(l) if l.0 == t && l.1 == i => l.3.push(c),
                _ => idx.push((t, i, non_unique == 0, vec![c])),
            }
        }
        idx.sort();
        assert_eq!(idx, expected_indexes(dedup));
        assert_eq!(db.version().unwrap().as_deref(), Some("4"));
    }
}

/// Values of 16 MiB and more are split in `bigdata` as NEO does.
#[test]
fn mysql_bigdata_round_trip() {
    let Some(mut h) = MysqlHarness::new() else {
        return;
    };
    let mut db = h.fresh(true);
    setup(&mut db);
    // 2 full chunks and 3 bytes: 3 rows of bigdata.
    let big: Vec<u8> = (0..2 * mysql::BIGDATA_CHUNK + 3)
        .map(|i| (i % 251) as u8)
        .collect();
    let sum = make_checksum(&big);
    let id = db
        .hold_data(Some(&sum), Oid(1), &big, 1, None)
        .unwrap()
        .unwrap();
    let refs = [ObjectRef {
        oid: Oid(1),
        data_id: Some(id),
        value_tid: None,
    }];
    db.store_transaction(Tid(8), &refs, Some(&meta(8, &[1])), true)
        .unwrap();
    db.commit().unwrap();
    db.lock_transaction(Tid(10), Tid(8), false).unwrap();
    db.unlock_transaction(Tid(10), Tid(8), true, true, false)
        .unwrap();
    db.commit().unwrap();
    // The stored representation: `>LL` in data.value, 0x80 in compression.
    let c = db.connection().unwrap();
    let (comp, value): (u8, Vec<u8>) = c
        .exec_first("SELECT compression, value FROM data WHERE id=?", (id,))
        .unwrap()
        .unwrap();
    assert_eq!(comp, 0x81);
    assert_eq!(value.len(), 8);
    let first = u32::from_be_bytes(value[..4].try_into().unwrap());
    assert_eq!(
        u32::from_be_bytes(value[4..].try_into().unwrap()) as usize,
        big.len()
    );
    let chunks: Vec<(u32, u64)> = c
        .query("SELECT id, LENGTH(value) FROM bigdata ORDER BY id")
        .unwrap();
    let chunk = mysql::BIGDATA_CHUNK as u64;
    assert_eq!(
        chunks,
        vec![(first, chunk), (first + 1, chunk), (first + 2, 3)]
    );
    // Loads reassemble it.
    let r = found(db.get_object(Oid(1), None, None).unwrap());
    assert_eq!(r.compression, Some(1));
    assert_eq!(r.checksum, Some(sum));
    assert!(r.data.as_deref() == Some(&big[..]));
    let (c, h2, d) = db.load_data(id).unwrap().unwrap();
    assert_eq!((c, h2), (1, sum));
    assert!(d == big);
    assert_eq!(
        db.object_history(Oid(1), 0, 10).unwrap(),
        Some(vec![(Tid(10), big.len() as u64)])
    );
    // Deduplicated like small data; a collision is detected.
    assert_eq!(
        db.store_data(Some(&sum), Oid(3), &big, 1, None).unwrap(),
        Some(id)
    );
    let mut other = big.clone();
    other[5] ^= 1;
    assert!(matches!(
        db.store_data(Some(&sum), Oid(3), &other, 1, None),
        Err(DbError::HashCollision { data_id }) if data_id == id
    ));
    // Deleting the object prunes the data and its chunks.
    db.delete_object(Oid(1), None).unwrap();
    db.commit().unwrap();
    let c = db.connection().unwrap();
    let n: Option<(u64, u64)> = c
        .query_first("SELECT (SELECT COUNT(*) FROM data), (SELECT COUNT(*) FROM bigdata)")
        .unwrap();
    assert_eq!(n, Some((0, 0)));
}

fn connection_id(db: &mut MysqlBackend) -> u64 {
    db.connection()
        .unwrap()
        .query_first("SELECT CONNECTION_ID()")
        .unwrap()
        .unwrap()
}

fn kill(h: &mut MysqlHarness, id: u64) {
    h.admin.query_drop(format!("KILL CONNECTION {id}")).unwrap();
    // Let the server close it.
    std::thread::sleep(std::time::Duration::from_millis(50));
}

/// A connection killed while idle is re-established transparently.
#[test]
fn mysql_reconnects_when_idle() {
    let Some(mut h) = MysqlHarness::new() else {
        return;
    };
    let mut db = h.fresh(false);
    setup(&mut db);
    commit_txn(&mut db, 10, &[(1, Some(b"one"))]);
    for round in 1..=2 {
        let id = connection_id(&mut db);
        kill(&mut h, id);
        // A read, then writes on the new connection.
        assert_eq!(
            found(db.get_object(Oid(1), None, None).unwrap()).data,
            Some(b"one".to_vec())
        );
        assert_eq!(db.reconnects(), round);
        assert_ne!(connection_id(&mut db), id);
    }
    let id = connection_id(&mut db);
    kill(&mut h, id);
    // The first write of a transaction is retried too.
    commit_txn(&mut db, 12, &[(1, Some(b"two"))]);
    assert_eq!(db.reconnects(), 3);
    let mut db = h.reopen(db);
    assert_eq!(
        found(db.get_object(Oid(1), None, None).unwrap()).data,
        Some(b"two".to_vec())
    );
}

/// A connection lost in a transaction with writes: the call fails, nothing
/// of the transaction is committed, and the next calls work again.
#[test]
fn mysql_failure_in_transaction_aborts_it() {
    let Some(mut h) = MysqlHarness::new() else {
        return;
    };
    let mut db = h.fresh(false);
    setup(&mut db);
    commit_txn(&mut db, 10, &[(1, Some(b"one"))]);
    // Half of a vote, then the connection dies.
    let sum = make_checksum(b"lost");
    let id = db
        .store_data(Some(&sum), Oid(2), b"lost", 0, None)
        .unwrap()
        .unwrap();
    let cid = connection_id(&mut db);
    kill(&mut h, cid);
    let refs = [ObjectRef {
        oid: Oid(2),
        data_id: Some(id),
        value_tid: None,
    }];
    let r = db.store_transaction(Tid(12), &refs, Some(&meta(12, &[2])), true);
    assert!(matches!(r, Err(DbError::Mysql { .. })), "{r:?}");
    // Commit has nothing to commit: the server rolled the writes back.
    db.commit().unwrap();
    assert!(db.load_data(id).unwrap().is_none());
    assert!(db.unfinished_transactions().unwrap().is_empty());
    assert_eq!(db.orphan_data().unwrap(), Vec::<DataId>::new());
    // A failing commit: same thing.
    db.set_config("name", Some("half")).unwrap();
    let cid = connection_id(&mut db);
    kill(&mut h, cid);
    assert!(matches!(db.commit(), Err(DbError::Mysql { .. })));
    assert_eq!(db.name().unwrap(), None);
    // The database goes on, with the same data ids (the cache was reset).
    commit_txn(&mut db, 14, &[(2, Some(b"kept"))]);
    let mut db = h.reopen(db);
    assert_eq!(
        found(db.get_object(Oid(2), None, None).unwrap()).data,
        Some(b"kept".to_vec())
    );
    assert_eq!(
        found(db.get_object(Oid(1), None, None).unwrap()).serial,
        Tid(10)
    );
}

/// Like NEO, a database is used by one node at a time (`GET_LOCK`).
#[test]
fn mysql_lock_reset_and_refusals() {
    let Some(mut h) = MysqlHarness::new() else {
        return;
    };
    let mut db = h.fresh(false);
    setup(&mut db);
    commit_txn(&mut db, 10, &[(1, Some(b"one"))]);
    let target = db.target().clone();
    assert!(matches!(
        MysqlBackend::open(&target, &MysqlOptions::default()),
        Err(DbError::Locked { .. })
    ));
    drop(db);
    // --reset empties it.
    let reset = MysqlOptions {
        reset: true,
        ..MysqlOptions::default()
    };
    let mut db = MysqlHarness::open(&target, &reset);
    assert_eq!(db.nid().unwrap(), None);
    assert!(db.pt_rows().unwrap().is_empty());
    // A newer schema version is refused.
    db.set_config_commit("version", Some("5")).unwrap();
    drop(db);
    let mut refused = None;
    for _ in 0..100 {
        match MysqlBackend::open(&target, &MysqlOptions::default()) {
            Err(DbError::Locked { .. }) => std::thread::sleep(std::time::Duration::from_millis(20)),
            r => {
                refused = Some(r);
                break;
            }
        }
    }
    assert!(matches!(
        refused,
        Some(Err(DbError::UnsupportedVersion { found: Some(ref v), .. })) if v == "5"
    ));
    // A foreign database is not touched.
    let foreign = h.database();
    h.admin
        .query_drop(format!("CREATE TABLE {}.users (id INT)", foreign.database))
        .unwrap();
    assert!(matches!(
        MysqlBackend::open(&foreign, &MysqlOptions::default()),
        Err(DbError::NotNeoDatabase { .. })
    ));
    // Engines: NEO's list only; a missing one is an error, not a fallback.
    let other = h.database();
    let bad = MysqlOptions {
        engine: "MyISAM".into(),
        ..MysqlOptions::default()
    };
    assert!(matches!(
        MysqlBackend::open(&other, &bad),
        Err(DbError::MysqlSetup { .. })
    ));
    let rocks = MysqlOptions {
        engine: "RocksDB".into(),
        ..MysqlOptions::default()
    };
    let has_rocks: Option<(String,)> = h
        .admin
        .query_first("SELECT engine FROM information_schema.engines WHERE engine='ROCKSDB' AND support IN ('YES','DEFAULT')")
        .unwrap();
    match MysqlBackend::open(&other, &rocks) {
        Ok(mut db) => {
            assert!(has_rocks.is_some());
            setup(&mut db);
        }
        Err(e) => {
            assert!(has_rocks.is_none(), "{e}");
            assert!(matches!(e, DbError::Mysql { .. }), "{e}");
        }
    }
    // No server there: a connection error, after `wait` seconds.
    let nowhere = MysqlTarget::parse("root@neo/nonexistent/mysqld.sock").unwrap();
    let t0 = std::time::Instant::now();
    let wait = MysqlOptions {
        wait: 1.5,
        ..MysqlOptions::default()
    };
    assert!(matches!(
        MysqlBackend::open(&nowhere, &wait),
        Err(DbError::Mysql { .. })
    ));
    assert!(t0.elapsed() >= std::time::Duration::from_secs(1));
}

/// An old (version 3) NEO MySQL database is upgraded as NEO's migrate does.
#[test]
fn mysql_upgrades_version_3() {
    let Some(mut h) = MysqlHarness::new() else {
        return;
    };
    let target = h.database();
    {
        let c = &mut h.admin;
        let d = &target.database;
        c.query_drop(format!(
            "CREATE TABLE {d}.config (name VARBINARY(255) NOT NULL PRIMARY KEY, \
             value VARBINARY(255) NULL) ENGINE=InnoDB"
        ))
        .unwrap();
        c.query_drop(format!(
            "INSERT INTO {d}.config VALUES ('version', '3'), ('nid', '7'), ('partitions', '2')"
        ))
        .unwrap();
        c.query_drop(format!(
            "CREATE TABLE {d}.pt (`partition` SMALLINT UNSIGNED NOT NULL, nid INT NOT NULL, \
             tid BIGINT NOT NULL, PRIMARY KEY (`partition`, nid)) ENGINE=InnoDB"
        ))
        .unwrap();
        c.query_drop(format!(
            "INSERT INTO {d}.pt VALUES (0, 7, -1), (1, 7, 5), (1, 8, -1)"
        ))
        .unwrap();
    }
    let mut db = MysqlHarness::open(&target, &MysqlOptions::default());
    assert_eq!(db.version().unwrap().as_deref(), Some("4"));
    assert_eq!(db.config("partitions").unwrap(), None);
    let mut rows = db.pt_rows().unwrap();
    rows.sort_by_key(|r| (r.partition, r.nid));
    let rows: Vec<_> = rows
        .into_iter()
        .map(|r| (r.partition, r.nid, r.tid, r.pack))
        .collect();
    assert_eq!(
        rows,
        vec![(0, 7, -1, Some(0)), (1, 7, 5, Some(0)), (1, 8, -1, None)]
    );
}

/// The same random operations on MySQL and in memory give the same answers.
#[test]
fn mysql_agrees_with_memory_on_random_operations() {
    let Some(mut h) = MysqlHarness::new() else {
        return;
    };
    for seed in [3u64, 11] {
        let mut sql = h.fresh(false);
        let mut mem = MemoryBackend::new(false);
        setup(&mut sql);
        setup(&mut mem);
        let (mut r1, mut r2) = (Rng(seed * 0x9e37_79b9), Rng(seed * 0x9e37_79b9));
        let (mut t1, mut t2) = (10, 10);
        let (mut l1, mut l2) = (Vec::new(), Vec::new());
        for step in 0..300 {
            random_step(&mut sql, &mut r1, &mut t1, &mut l1);
            random_step(&mut mem, &mut r2, &mut t2, &mut l2);
            assert_eq!(l1, l2, "seed {seed} step {step}");
        }
        let count = |what: &str| l1.iter().filter(|l| l.contains(what)).count();
        assert!(count("Found") > 5 && count("commit") > 40);
    }
}

/// The daemon opens it from NEO's `--database` string, boxes it and moves
/// it to blocking threads.
#[test]
fn mysql_open_database_string_send_boxed() {
    let Some(mut h) = MysqlHarness::new() else {
        return;
    };
    fn send<T: Send + 'static>() {}
    send::<MysqlBackend>();
    let target = h.database();
    let arg = format!("root@{}{}", target.database, h.socket.display());
    let mut db: Box<dyn Backend + Send> =
        Box::new(MysqlBackend::open_database(&arg, &MysqlOptions::default()).unwrap());
    let mut db = std::thread::spawn(move || {
        setup(db.as_mut());
        commit_txn(db.as_mut(), 10, &[(1, Some(b"x"))]);
        db
    })
    .join()
    .unwrap();
    assert_eq!(db.last_object_tid(Oid(1)).unwrap(), Some(Tid(10)));
    assert!(matches!(
        MysqlBackend::open_database("/nodb", &MysqlOptions::default()),
        Err(DbError::MysqlSetup { .. })
    ));
}

/// The whole shared suite on NEO's other engine, RocksDB, when the server
/// has it (`scripts/setup-test-env.sh` installs its plugin, so under CI it
/// must be there).
#[test]
fn mysql_rocksdb_runs_the_suite() {
    let Some(mut h) = MysqlHarness::new() else {
        return;
    };
    let has_rocks: Option<(String,)> = h
        .admin
        .query_first(
            "SELECT engine FROM information_schema.engines \
             WHERE engine='ROCKSDB' AND support IN ('YES','DEFAULT')",
        )
        .unwrap();
    if has_rocks.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the test server has no RocksDB engine (mariadb-plugin-rocksdb)"
        );
        eprintln!("notice: RocksDB test skipped: the server has no RocksDB engine");
        return;
    }
    h.engine = "RocksDB".into();
    let mut db = h.fresh(false);
    let engines: Vec<(String, String)> = db
        .connection()
        .unwrap()
        .query(
            "SELECT table_name, engine FROM information_schema.tables \
             WHERE table_schema = DATABASE()",
        )
        .unwrap();
    assert_eq!(engines.len(), 10);
    assert!(engines.iter().all(|(_, e)| e == "ROCKSDB"), "{engines:?}");
    drop(db);
    config_keys(&mut h);
    two_phase_commit_visibility(&mut h);
    abort_releases_data(&mut h);
    dedup_and_collision(&mut h);
    loads_at_and_before(&mut h);
    deleted_objects(&mut h);
    undo_backpointers(&mut h);
    find_undo_tid_cases(&mut h);
    history(&mut h);
    replication_lists(&mut h);
    check_hashes(&mut h);
    truncate_after_tid(&mut h);
    reopen_keeps_committed_only(&mut h);
    deletes_and_prune(&mut h);
    pack_partition_rules(&mut h);
    pack_orders_flow(&mut h);
    partition_table_changes(&mut h);
    non_readable_and_out_of_range(&mut h);
    unfinished_after_restart(&mut h);
    drop_and_replication_helpers(&mut h);
}

/// A private server of this test, stopped when dropped.
struct OwnServer {
    dir: tempfile::TempDir,
    script: PathBuf,
}

impl OwnServer {
    fn command(&self, cmd: &str) -> String {
        let out = std::process::Command::new("bash")
            .arg(&self.script)
            .arg(cmd)
            .arg(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mysql-test-server.sh {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

/// A server restart: an idle backend reconnects once the server is back
/// (waiting up to `--wait`); a transaction with writes is lost, with an
/// error, and nothing of it is committed.
#[test]
fn mysql_survives_server_restart() {
    // Same rules as the other MySQL tests (a server is installed).
    let Some(_h) = MysqlHarness::new() else {
        return;
    };
    let server = std::sync::Arc::new(OwnServer {
        dir: tempfile::tempdir().unwrap(),
        script: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/mysql-test-server.sh"),
    });
    let sock = server.command("start");
    let target = MysqlTarget::parse(&format!("root@neo_test{sock}")).unwrap();
    let opts = MysqlOptions {
        wait: 60.0,
        ..MysqlOptions::default()
    };
    let mut db = MysqlBackend::open(&target, &opts).unwrap();
    setup(&mut db);
    commit_txn(&mut db, 10, &[(1, Some(b"one"))]);
    // Idle: the server stops, and comes back a second later.
    server.command("stop");
    let s = server.clone();
    let restart = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(1));
        s.command("start")
    });
    assert_eq!(
        found(db.get_object(Oid(1), None, None).unwrap()).data,
        Some(b"one".to_vec())
    );
    assert_eq!(db.reconnects(), 1);
    restart.join().unwrap();
    // With writes: the restart loses them and the call says so.
    let sum = make_checksum(b"lost");
    let id = db
        .store_data(Some(&sum), Oid(2), b"lost", 0, None)
        .unwrap()
        .unwrap();
    server.command("stop");
    server.command("start");
    let refs = [ObjectRef {
        oid: Oid(2),
        data_id: Some(id),
        value_tid: None,
    }];
    assert!(matches!(
        db.store_transaction(Tid(12), &refs, Some(&meta(12, &[2])), true),
        Err(DbError::Mysql { .. })
    ));
    db.commit().unwrap();
    assert!(db.load_data(id).unwrap().is_none());
    commit_txn(&mut db, 14, &[(2, Some(b"kept"))]);
    assert_eq!(
        found(db.get_object(Oid(2), None, None).unwrap()).data,
        Some(b"kept".to_vec())
    );
    // The server crashes (SIGKILL) with a committed transaction and an
    // uncommitted one: after its recovery, exactly the first is there.
    commit_txn(&mut db, 16, &[(3, Some(b"committed"))]);
    vote(&mut db, 18, &[(4, Some(b"voted"))]);
    let id = db
        .store_data(Some(&make_checksum(b"open")), Oid(5), b"open", 0, None)
        .unwrap()
        .unwrap();
    let pid = std::fs::read_to_string(server.dir.path().join("mysqld.pid")).unwrap();
    let killed = std::process::Command::new("bash")
        .args(["-c", &format!("kill -KILL {}", pid.trim())])
        .status()
        .unwrap();
    assert!(killed.success());
    server.command("start");
    assert!(matches!(
        db.get_object(Oid(3), None, None),
        Err(DbError::Mysql { .. })
    ));
    drop(db);
    let mut db = MysqlBackend::open(&target, &opts).unwrap();
    assert_eq!(
        found(db.get_object(Oid(3), None, None).unwrap()).data,
        Some(b"committed".to_vec())
    );
    assert_eq!(
        db.unfinished_transactions().unwrap(),
        [(Tid(18), None)].into()
    );
    assert!(db.load_data(id).unwrap().is_none());
}

/// Writes and loads on SQLite and MySQL side by side: 500 transactions of
/// 20 objects of 1 KiB through the full 2PC, then a load of every object.
/// Run: `cargo test --release -p neo-server --lib -- --ignored --nocapture
/// backend_bench` (with `$NEO_TEST_MYSQL_SOCKET` set).
#[test]
#[ignore = "benchmark; run in release"]
fn backend_bench() {
    let Some(mut h) = MysqlHarness::new() else {
        return;
    };
    const TXNS: u64 = 500;
    const OBJS: u64 = 20;
    fn run(db: &mut dyn Backend, label: &str) {
        setup(db);
        let t0 = std::time::Instant::now();
        let mut tid = 10u64;
        for t in 0..TXNS {
            let ttid = tid - u64::from(NP);
            let mut refs = Vec::new();
            for i in 0..OBJS {
                let oid = t * OBJS + i;
                let mut data = vec![(oid % 251) as u8; 1024];
                data[..8].copy_from_slice(&oid.to_be_bytes());
                let id = db
                    .hold_data(Some(&make_checksum(&data)), Oid(oid), &data, 0, None)
                    .unwrap();
                refs.push(ObjectRef {
                    oid: Oid(oid),
                    data_id: id,
                    value_tid: None,
                });
            }
            let oids: Vec<u64> = refs.iter().map(|r| r.oid.0).collect();
            db.store_transaction(Tid(ttid), &refs, Some(&meta(ttid, &oids)), true)
                .unwrap();
            db.commit().unwrap();
            db.lock_transaction(Tid(tid), Tid(ttid), false).unwrap();
            db.unlock_transaction(Tid(tid), Tid(ttid), true, true, false)
                .unwrap();
            db.commit().unwrap();
            tid += u64::from(NP);
        }
        let write = t0.elapsed();
        let t1 = std::time::Instant::now();
        let mut bytes = 0;
        for oid in 0..TXNS * OBJS {
            let r = found(db.get_object(Oid(oid), None, None).unwrap());
            bytes += r.data.map_or(0, |d| d.len());
        }
        let load = t1.elapsed();
        assert_eq!(bytes as u64, TXNS * OBJS * 1024);
        eprintln!(
            "{label}: write {TXNS} txns x {OBJS} objs x 1 KiB: {:.2} s ({:.0} txn/s, {:.1} MB/s); \
             load {} objects: {:.2} s ({:.0} loads/s)",
            write.as_secs_f64(),
            TXNS as f64 / write.as_secs_f64(),
            (TXNS * OBJS * 1024) as f64 / write.as_secs_f64() / 1e6,
            TXNS * OBJS,
            load.as_secs_f64(),
            (TXNS * OBJS) as f64 / load.as_secs_f64()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mut sqlite =
        SqliteBackend::open(&dir.path().join("bench.sqlite"), &SqliteOptions::default()).unwrap();
    run(&mut sqlite, "SQLite (synchronous=FULL)");
    let flush: Option<(u64,)> = h
        .admin
        .query_first("SELECT @@GLOBAL.innodb_flush_log_at_trx_commit")
        .unwrap();
    for f in [1, 2] {
        h.admin
            .query_drop(format!("SET GLOBAL innodb_flush_log_at_trx_commit = {f}"))
            .unwrap();
        let mut db = h.fresh(false);
        run(
            &mut db,
            &format!("MySQL InnoDB (innodb_flush_log_at_trx_commit={f})"),
        );
    }
    if let Some((f,)) = flush {
        h.admin
            .query_drop(format!("SET GLOBAL innodb_flush_log_at_trx_commit = {f}"))
            .unwrap();
    }
    let rocks: Option<(u64,)> = h
        .admin
        .query_first("SELECT @@GLOBAL.rocksdb_flush_log_at_trx_commit")
        .unwrap_or(None);
    if let Some((f,)) = rocks {
        h.engine = "RocksDB".into();
        let mut db = h.fresh(false);
        run(
            &mut db,
            &format!("MySQL RocksDB (rocksdb_flush_log_at_trx_commit={f})"),
        );
    }
}

/// Interoperability with Python NEO, checked by hand: Python NEO's MySQL
/// backend writes tid 10 (oid 1 small, oid 2 of 16 MiB + 5 bytes, hence
/// in `bigdata`) into the database `$NEO_INTEROP_DB` (NEO's connection
/// string); this reads it back and writes tid 20 (oid 3 small, oid 4 big),
/// which Python NEO then reads.
#[test]
#[ignore = "needs Python NEO; run by hand"]
fn mysql_interop_with_python_neo() {
    let Ok(arg) = std::env::var("NEO_INTEROP_DB") else {
        return;
    };
    let big: Vec<u8> = (0..0x100_0000 + 5).map(|i| (i % 253) as u8).collect();
    let mut db = MysqlBackend::open_database(&arg, &MysqlOptions::default()).unwrap();
    assert!(db.dedup());
    assert_eq!(db.name().unwrap().as_deref(), Some("interop"));
    assert_eq!(db.nid().unwrap(), Some(NID));
    let r = found(db.get_object(Oid(1), None, None).unwrap());
    assert_eq!(
        (r.serial, r.data.as_deref()),
        (Tid(10), Some(&b"small python"[..]))
    );
    let r = found(db.get_object(Oid(2), None, None).unwrap());
    assert_eq!((r.serial, r.compression), (Tid(10), Some(1)));
    assert!(r.data.as_deref() == Some(&big[..]));
    assert_eq!(r.checksum, Some(make_checksum(&big)));
    let t = db.get_transaction(Tid(10), false).unwrap().unwrap();
    assert_eq!(t.meta.user, b"py-user");
    assert_eq!(t.meta.oids, vec![Oid(1), Oid(2)]);
    let rev: Vec<u8> = big.iter().rev().copied().collect();
    commit_txn(&mut db, 20, &[(3, Some(b"small rust")), (4, Some(&rev))]);
    eprintln!("rust read tid 10 and wrote tid 20");
    // A database made here, to compare its `SHOW CREATE TABLE` with NEO's.
    if let Ok(fresh) = std::env::var("NEO_INTEROP_FRESH_DB") {
        let opts = MysqlOptions {
            dedup: true,
            ..MysqlOptions::default()
        };
        MysqlBackend::open_database(&fresh, &opts).unwrap();
    }
}

/// Queued `data` rows (no dedup) cross the queue's size limit, a row too
/// big to queue goes alone, reads in the transaction see them all, and a
/// transaction lost before its commit keeps none of them.
#[test]
fn mysql_queued_data_rows() {
    let Some(mut h) = MysqlHarness::new() else {
        return;
    };
    let mut db = h.fresh(false);
    setup(&mut db);
    let value = |i: u64, len: usize| -> Vec<u8> {
        (0..len)
            .map(|j| ((i as usize * 7 + j * 13) % 251) as u8)
            .collect()
    };
    // 160 rows of 30 KB: ~9.6 MB of hex text, so the queue is sent twice on
    // its own before the commit; then one 3 MB row (6 MB of hex).
    let mut sizes: Vec<(u64, usize)> = (1..=160).map(|i| (i, 30_000)).collect();
    sizes.push((161, 3 << 20));
    let mut ids = Vec::new();
    for &(oid, len) in &sizes {
        let v = value(oid, len);
        let id = db
            .store_data(Some(&make_checksum(&v)), Oid(oid), &v, 0, None)
            .unwrap()
            .unwrap();
        ids.push(id);
        if oid == 100 {
            // A read in between sees the row just queued.
            let (_, sum, got) = db.load_data(id).unwrap().unwrap();
            assert_eq!(got, value(oid, 30_000));
            assert_eq!(sum, make_checksum(&got));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    assert!(ids.iter().all(|id| seen.insert(*id)), "ids reused: {ids:?}");
    let refs: Vec<ObjectRef> = sizes
        .iter()
        .zip(&ids)
        .map(|(&(oid, _), &id)| ObjectRef {
            oid: Oid(oid),
            data_id: Some(id),
            value_tid: None,
        })
        .collect();
    db.store_transaction(Tid(20), &refs, None, false).unwrap();
    db.commit().unwrap();
    let mut db = h.reopen(db);
    for &(oid, len) in &sizes {
        assert_eq!(
            found(db.get_object(Oid(oid), None, None).unwrap()).data,
            Some(value(oid, len)),
            "oid {oid}"
        );
    }
    // Rows queued and never committed are gone after a reopen, and their
    // ids are given again.
    let v = value(500, 10);
    let lost = db
        .store_data(Some(&make_checksum(&v)), Oid(500), &v, 0, None)
        .unwrap()
        .unwrap();
    let mut db = h.reopen(db);
    assert_eq!(db.load_data(lost).unwrap(), None);
    let again = db
        .store_data(Some(&make_checksum(&v)), Oid(500), &v, 0, None)
        .unwrap()
        .unwrap();
    assert_eq!(again, lost);
    db.commit().unwrap();
    assert_eq!(db.load_data(again).unwrap().unwrap().2, v);
}
