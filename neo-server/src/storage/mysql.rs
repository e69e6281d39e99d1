//! [`MysqlBackend`]: NEO's MySQL/MariaDB storage database, schema version 4.
//!
//! The tables are those of NEO's `MySQLDatabaseManager`
//! (`neo/storage/database/mysql.py`), column for column and index for index,
//! so a database is interchangeable with Python NEO:
//!
//! | table     | key                                  | columns (MySQL types)                                                  |
//! |-----------|--------------------------------------|------------------------------------------------------------------------|
//! | `config`  | `name`                               | `name VARBINARY(255)`, `value VARBINARY(255) NULL`                     |
//! | `pt`      | `(partition, nid)`                   | `partition SMALLINT UNSIGNED`, `nid INT`, `tid BIGINT`, `pack BIGINT UNSIGNED NULL` |
//! | `pack`    | `tid`                                | `tid`, `approved BOOLEAN NULL`, `partial BOOLEAN`, `oids MEDIUMBLOB NULL`, `pack_tid` |
//! | `trans`   | `(partition, tid)`                   | `partition`, `tid`, `packed`, `oids MEDIUMBLOB`, `user`/`description`/`ext BLOB`, `ttid` |
//! | `obj`     | `(partition, oid, tid)`; `tid (partition, tid, oid)`; `data_id` | `partition`, `oid`, `tid`, `data_id NULL`, `value_tid NULL` |
//! | `data`    | `id`; with dedup `UNIQUE hash (hash, compression)` | `id`, `hash BINARY(20)`, `compression TINYINT UNSIGNED NULL`, `value MEDIUMBLOB` |
//! | `bigdata` | `id` (AUTO_INCREMENT, `INT UNSIGNED`) | `id`, `value MEDIUMBLOB`: 8 MiB chunks of values of 16 MiB and more     |
//! | `ttrans`  | `ttid`                               | as `trans`, `tid` NULL until locked                                    |
//! | `tobj`    | `(tid, oid)`                         | as `obj`, `tid` holding the ttid                                       |
//! | `todel`   | `data_id`                            | data rows whose deletion Python NEO deferred                           |
//!
//! Ids are `BIGINT UNSIGNED` (we still refuse ids of 2^63 and more, as the
//! SQLite backend does, so both hold the same values); the data is
//! "partitioned" as in NEO: `partition` leads the keys of `trans` and `obj`
//! (no MySQL `PARTITION BY`). A value of 16 MiB or more (the `MEDIUMBLOB`
//! limit) is split into 8 MiB rows of `bigdata` with consecutive ids; its
//! `data.value` is then the 8 bytes `>LL` (first `bigdata.id`, length) and
//! bit 0x80 of `data.compression` is set.
//!
//! Connection (`--database`, NEO's syntax): `[user[:password]@]database[unix_socket]`,
//! where the socket path starts with `/`, `.` or `~`. Without a socket we
//! connect to `localhost:3306` over TCP. Sessions use NEO's settings
//! (`autocommit=0`, `sql_mode='TRADITIONAL,NO_ENGINE_SUBSTITUTION'`), and
//! like NEO we take the server lock `GET_LOCK('<database>.neostorage', 0)`
//! so that two storage nodes (Python or Rust) never share a database, and
//! refuse a server whose `max_allowed_packet` is below 32769 KiB.
//!
//! Failures, as NEO's `auto_reconnect`: when the server is gone (restart,
//! killed connection, idle timeout) and the open transaction has no write
//! yet, we reconnect and retry the statement (twice at most). If it had
//! writes, the server has rolled them back: the call fails with
//! [`DbError::Mysql`], the caches are dropped, and the next call starts on a
//! new connection; nothing of the lost transaction is ever committed.
//! `--wait` also bounds how long a reconnection waits for the server.
//!
//! Engines (`--engine`): InnoDB by default, or RocksDB with NEO's column
//! families (`COMMENT 'cf_neo_*'`) and `rocksdb_max_row_locks`; an engine
//! the server lacks is an error (`NO_ENGINE_SUBSTITUTION`), not a fallback.
//!
//! Where we differ from NEO's SQL (same stored bytes, behaviour of the
//! shared [`Backend`] suite): duplicates are errors
//! ([`DbError::Duplicate`]) instead of NEO's `REPLACE`, as in the SQLite
//! backend; `oidsFrom` orders its outer query (RocksDB does not keep the
//! join order NEO relies on); a load gets the next serial in the same
//! query; check digests are computed here; data rows are deleted at once
//! (Python NEO's secondary connection defers them through `todel`, which we
//! drain at open).
//!
//! Write path: without dedup, `store_data` assigns the data id itself (as
//! NEO, from `_data_last_ids`: the node holds the database's `GET_LOCK`, so
//! it is the only writer) and only queues the row; queued rows go out as one
//! multi-row `INSERT` (below [`PENDING_DATA_BYTES`] and
//! `max_allowed_packet`) before any other statement of the connection,
//! commits included, so every read sees them and they are committed with
//! the rows that name them. A queued row counts as a write: a connection
//! lost before the commit fails the transaction as if it had been sent, and
//! the queue is dropped with it.

#![deny(missing_docs)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fsformat::{Oid, Tid};
use mysql::prelude::Queryable;
use mysql::{Conn, OptsBuilder, Params, Row, Value};

use super::backend::{Backend, HeldData};
use super::types::*;

/// The storage engines NEO accepts (`ENGINES`); the first is the default.
pub const ENGINES: [&str; 2] = ["InnoDB", "RocksDB"];

/// NEO's minimum `max_allowed_packet` (`_max_allowed_packet`).
pub const MIN_MAX_ALLOWED_PACKET: u64 = 32769 * 1024;

/// Values of this size and more go to `bigdata` (the `MEDIUMBLOB` limit).
pub const BIGDATA_THRESHOLD: usize = 0x100_0000;

/// Size of a `bigdata` chunk.
pub const BIGDATA_CHUNK: usize = 0x80_0000;

/// Most bytes of SQL text kept in the queue of `data` rows before it is
/// sent (one multi-row `INSERT`); a row larger than that is sent alone.
pub const PENDING_DATA_BYTES: usize = 4 << 20;

/// The name of the server lock, after the database name (`LOCK`).
const LOCK: &str = "neostorage";

// MySQL error codes.
const ER_DUP_ENTRY: u16 = 1062;
const ER_NO_SUCH_TABLE: u16 = 1146;
const ER_DATA_TOO_LONG: u16 = 1406;
const ER_LOCK_DEADLOCK: u16 = 1213;
/// Codes meaning the connection is gone (client: `SERVER_GONE_ERROR`,
/// `SERVER_LOST`; server: shutdown, aborted or killed connection, MySQL 8's
/// idle timeout).
const GONE: [u16; 6] = [2006, 2013, 1053, 1152, 1927, 4031];

/// How to reach the server and which database (NEO's `_parse`).
#[derive(Clone, PartialEq, Eq)]
pub struct MysqlTarget {
    /// User name, `None` for the client default.
    pub user: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Database name.
    pub database: String,
    /// Unix socket path (`~` expanded), `None` for TCP to `localhost`.
    pub socket: Option<PathBuf>,
}

impl std::fmt::Debug for MysqlTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlTarget")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("database", &self.database)
            .field("socket", &self.socket)
            .finish()
    }
}

impl MysqlTarget {
    /// Parses NEO's `[user[:password]@]database[unix_socket]`, where the
    /// socket starts with `~`, `.` or `/` (NEO's regular expression
    /// `(?:([^:]+)(?::(.*))?@)?([^~./]+)(.+)?$`, with its backtracking:
    /// the user part ends at the last `@` that leaves a valid rest).
    pub fn parse(arg: &str) -> Result<MysqlTarget, String> {
        let b = arg.as_bytes();
        // `([^~./]+)(.+)?$` from `start`.
        let rest = |start: usize| -> Option<(String, Option<String>)> {
            let tail = &arg[start..];
            if tail.contains('\n') {
                return None;
            }
            let end = tail.find(['~', '.', '/']).unwrap_or(tail.len());
            if end == 0 {
                return None;
            }
            let sock = &tail[end..];
            Some((
                tail[..end].to_owned(),
                (!sock.is_empty()).then(|| sock.to_owned()),
            ))
        };
        let first_colon = arg.find(':').unwrap_or(b.len());
        let mut found = None;
        // `[^:]+` is greedy: the longest user first.
        'user: for l in (1..=first_colon.min(b.len())).rev() {
            if l >= b.len() {
                continue;
            }
            if b[l] == b':' {
                // `(?::(.*))?@`: the password takes as much as it can.
                for at in (l + 1..b.len()).rev() {
                    if b[at] == b'@' && !arg[l + 1..at].contains('\n') {
                        if let Some(r) = rest(at + 1) {
                            found = Some((Some(&arg[..l]), Some(&arg[l + 1..at]), r));
                            break 'user;
                        }
                    }
                }
            }
            if b[l] == b'@' {
                if let Some(r) = rest(l + 1) {
                    found = Some((Some(&arg[..l]), None, r));
                    break;
                }
            }
        }
        let (user, password, (database, socket)) = match found {
            Some(f) => f,
            None => match rest(0) {
                Some(r) => (None, None, r),
                None => {
                    return Err(format!(
                        "invalid MySQL database {arg:?}: expected \
                         [user[:password]@]database[unix_socket]"
                    ))
                }
            },
        };
        let socket = socket.map(|s| match s.strip_prefix("~/") {
            Some(tail) => match std::env::var_os("HOME") {
                Some(home) => PathBuf::from(home).join(tail),
                None => PathBuf::from(s),
            },
            None => PathBuf::from(s),
        });
        Ok(MysqlTarget {
            user: user.map(str::to_owned),
            password: password.map(str::to_owned),
            database,
            socket,
        })
    }

    /// `mysql:[user@]database`, for messages (never the password).
    pub fn describe(&self) -> String {
        match &self.user {
            Some(u) => format!("mysql:{u}@{}", self.database),
            None => format!("mysql:{}", self.database),
        }
    }
}

/// How to open a database (NEO's `--reset`, `--dedup`, `--engine`, `--wait`).
#[derive(Clone, Debug, PartialEq)]
pub struct MysqlOptions {
    /// Drop every NEO table first (`--reset`).
    pub reset: bool,
    /// Create `data` with the unique index that makes equal data stored
    /// once (`--dedup`; only when the table is created, as NEO).
    pub dedup: bool,
    /// Storage engine of new tables, one of [`ENGINES`] (`--engine`).
    pub engine: String,
    /// Seconds to keep retrying the first connection (`--wait`); negative:
    /// forever; 0: fail at once.
    pub wait: f64,
}

impl Default for MysqlOptions {
    fn default() -> Self {
        MysqlOptions {
            reset: false,
            dedup: false,
            engine: ENGINES[0].to_owned(),
            wait: 0.0,
        }
    }
}

/// The statements creating NEO's tables (`_setup`); `{}` is the table name.
fn schema(engine: &str, dedup: bool) -> Vec<(&'static str, String)> {
    let rocks = engine == "RocksDB";
    let cf = |name: &str, rev: bool| {
        if rocks {
            format!(" COMMENT '{}cf_neo_{name}'", if rev { "rev:" } else { "" })
        } else {
            String::new()
        }
    };
    let e = engine;
    vec![
        (
            "config",
            format!(
                "CREATE TABLE {{}} (\n name VARBINARY(255) NOT NULL PRIMARY KEY,\n \
                 value VARBINARY(255) NULL\n) ENGINE={e}"
            ),
        ),
        (
            "pt",
            format!(
                "CREATE TABLE {{}} (\n `partition` SMALLINT UNSIGNED NOT NULL,\n \
                 nid INT NOT NULL,\n tid BIGINT NOT NULL,\n pack BIGINT UNSIGNED,\n \
                 PRIMARY KEY (`partition`, nid)\n) ENGINE={e}"
            ),
        ),
        (
            "pack",
            format!(
                "CREATE TABLE {{}} (\n tid BIGINT UNSIGNED NOT NULL PRIMARY KEY,\n \
                 approved BOOLEAN, -- NULL if not signed\n partial BOOLEAN NOT NULL,\n \
                 oids MEDIUMBLOB, -- same format as trans.oids\n pack_tid BIGINT UNSIGNED\n\
                 ) ENGINE={e}"
            ),
        ),
        (
            "trans",
            format!(
                "CREATE TABLE {{}} (\n `partition` SMALLINT UNSIGNED NOT NULL,\n \
                 tid BIGINT UNSIGNED NOT NULL,\n packed BOOLEAN NOT NULL,\n \
                 oids MEDIUMBLOB NOT NULL,\n user BLOB NOT NULL,\n description BLOB NOT NULL,\n \
                 ext BLOB NOT NULL,\n ttid BIGINT UNSIGNED NOT NULL,\n \
                 PRIMARY KEY (`partition`, tid){}\n) ENGINE={e}",
                cf("append_meta", false)
            ),
        ),
        (
            "obj",
            format!(
                "CREATE TABLE {{}} (\n `partition` SMALLINT UNSIGNED NOT NULL,\n \
                 oid BIGINT UNSIGNED NOT NULL,\n tid BIGINT UNSIGNED NOT NULL,\n \
                 data_id BIGINT UNSIGNED NULL,\n value_tid BIGINT UNSIGNED NULL,\n \
                 PRIMARY KEY (`partition`, oid, tid){},\n KEY tid (`partition`, tid, oid){},\n \
                 KEY (data_id){}\n) ENGINE={e}",
                cf("obj_pk", true),
                cf("append_meta", false),
                cf("append_meta", false)
            ),
        ),
        (
            "data",
            format!(
                "CREATE TABLE {{}} (\n id BIGINT UNSIGNED NOT NULL,\n \
                 hash BINARY(20) NOT NULL,\n compression TINYINT UNSIGNED NULL,\n \
                 value MEDIUMBLOB NOT NULL,\n PRIMARY KEY (id){}{}\n) ENGINE={e}",
                cf("append", false),
                if dedup {
                    format!(",\n UNIQUE (hash, compression){}", cf("no_comp", false))
                } else {
                    String::new()
                }
            ),
        ),
        (
            "bigdata",
            format!(
                "CREATE TABLE {{}} (\n id INT UNSIGNED NOT NULL AUTO_INCREMENT,\n \
                 value MEDIUMBLOB NOT NULL,\n PRIMARY KEY (id){}\n) ENGINE={e}",
                cf("append", false)
            ),
        ),
        (
            "ttrans",
            format!(
                "CREATE TABLE {{}} (\n `partition` SMALLINT UNSIGNED NOT NULL,\n \
                 tid BIGINT UNSIGNED,\n packed BOOLEAN NOT NULL,\n oids MEDIUMBLOB NOT NULL,\n \
                 user BLOB NOT NULL,\n description BLOB NOT NULL,\n ext BLOB NOT NULL,\n \
                 ttid BIGINT UNSIGNED NOT NULL,\n PRIMARY KEY (ttid){}\n) ENGINE={e}",
                cf("no_comp", false)
            ),
        ),
        (
            "tobj",
            format!(
                "CREATE TABLE {{}} (\n `partition` SMALLINT UNSIGNED NOT NULL,\n \
                 oid BIGINT UNSIGNED NOT NULL,\n tid BIGINT UNSIGNED NOT NULL,\n \
                 data_id BIGINT UNSIGNED NULL,\n value_tid BIGINT UNSIGNED NULL,\n \
                 PRIMARY KEY (tid, oid){}\n) ENGINE={e}",
                cf("no_comp", false)
            ),
        ),
        (
            "todel",
            format!(
                "CREATE TABLE {{}} (\n data_id BIGINT UNSIGNED NOT NULL,\n \
                 PRIMARY KEY (data_id){}\n) ENGINE={e}",
                cf("no_comp", false)
            ),
        ),
    ]
}

/// The columns of NEO's tables, in order.
pub fn expected_columns() -> Vec<(&'static str, Vec<&'static str>)> {
    let trans = vec![
        "partition",
        "tid",
        "packed",
        "oids",
        "user",
        "description",
        "ext",
        "ttid",
    ];
    let obj = vec!["partition", "oid", "tid", "data_id", "value_tid"];
    vec![
        ("config", vec!["name", "value"]),
        ("pt", vec!["partition", "nid", "tid", "pack"]),
        (
            "pack",
            vec!["tid", "approved", "partial", "oids", "pack_tid"],
        ),
        ("trans", trans.clone()),
        ("obj", obj.clone()),
        ("data", vec!["id", "hash", "compression", "value"]),
        ("bigdata", vec!["id", "value"]),
        ("ttrans", trans),
        ("tobj", obj),
        ("todel", vec!["data_id"]),
    ]
}

fn in_list(values: impl IntoIterator<Item = u64>) -> String {
    values
        .into_iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn checksum(blob: Vec<u8>, what: &str) -> DbResult<Checksum> {
    blob.try_into().map_err(|b: Vec<u8>| DbError::Corrupted {
        what: format!("{what}: hash of {} bytes", b.len()),
    })
}

/// `LIMIT` value: MySQL has no "no limit", the greatest value means none.
fn limit(length: Option<u64>) -> u64 {
    length.unwrap_or(u64::MAX)
}

/// `>LL` header of a value stored in `bigdata`.
fn big_header(first: u32, length: u32) -> [u8; 8] {
    let mut h = [0; 8];
    h[..4].copy_from_slice(&first.to_be_bytes());
    h[4..].copy_from_slice(&length.to_be_bytes());
    h
}

/// `(first bigdata id, length, number of chunks)` of a `data.value`
/// pointing to `bigdata`.
fn parse_big(value: &[u8], id: u64) -> DbResult<(u32, u32, u32)> {
    let h: [u8; 8] = value.try_into().map_err(|_| DbError::Corrupted {
        what: format!(
            "data row {id:#x}: bigdata reference of {} bytes",
            value.len()
        ),
    })?;
    let first = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let length = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let chunks = length.div_ceil(BIGDATA_CHUNK as u32);
    Ok((first, length, chunks))
}

fn is_gone(e: &mysql::Error) -> bool {
    match e {
        mysql::Error::IoError(_) | mysql::Error::CodecError(_) => true,
        mysql::Error::DriverError(d) => matches!(
            d,
            mysql::DriverError::PacketOutOfSync | mysql::DriverError::UnexpectedPacket
        ),
        mysql::Error::MySqlError(m) => GONE.contains(&m.code),
        _ => false,
    }
}

fn error_code(e: &mysql::Error) -> Option<u16> {
    match e {
        mysql::Error::MySqlError(m) => Some(m.code),
        _ => None,
    }
}

/// A row converted to `T`, or a [`DbError::Corrupted`].
fn convert<T: mysql::prelude::FromRow>(row: Row, what: &str) -> DbResult<T> {
    mysql::from_row_opt::<T>(row).map_err(|e| DbError::Corrupted {
        what: format!("{what}: unexpected row {:?}", e.0.unwrap()),
    })
}

/// NEO's MySQL database (see the module documentation).
pub struct MysqlBackend {
    target: MysqlTarget,
    name: String,
    engine: String,
    conn: Option<Conn>,
    /// The open transaction has writes (NEO's `_active`).
    active: bool,
    dedup: bool,
    max_allowed_packet: u64,
    view: Option<PartitionView>,
    extra_readable: BTreeSet<u32>,
    config_cache: HashMap<String, Option<String>>,
    data_last_ids: HashMap<u32, u64>,
    /// Queued `data` rows: the text of a multi-row `INSERT` (empty: none).
    pending_data: String,
    /// How many rows `pending_data` holds, and the id of its first one.
    pending_rows: (usize, u64),
    held: HeldData,
    reconnects: u64,
    /// `--wait`: seconds to keep trying to connect, negative: forever.
    wait: f64,
}

impl std::fmt::Debug for MysqlBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlBackend")
            .field("database", &self.name)
            .field("engine", &self.engine)
            .field("dedup", &self.dedup)
            .finish_non_exhaustive()
    }
}

impl MysqlBackend {
    /// Connects and opens (creating if needed) the database, as NEO's
    /// storage node does at start-up (`setup`), and commits the set-up.
    pub fn open(target: &MysqlTarget, opts: &MysqlOptions) -> DbResult<Self> {
        let name = target.describe();
        if !ENGINES.contains(&opts.engine.as_str()) {
            return Err(DbError::MysqlSetup {
                database: name,
                reason: format!("unsupported engine: {:?} not in {ENGINES:?}", opts.engine),
            });
        }
        let mut db = MysqlBackend {
            target: target.clone(),
            name,
            engine: opts.engine.clone(),
            conn: None,
            active: false,
            dedup: false,
            max_allowed_packet: MIN_MAX_ALLOWED_PACKET,
            view: None,
            extra_readable: BTreeSet::new(),
            config_cache: HashMap::new(),
            data_last_ids: HashMap::new(),
            pending_data: String::new(),
            pending_rows: (0, 0),
            held: HeldData::default(),
            reconnects: 0,
            wait: opts.wait,
        };
        db.connect_waiting()?;
        db.setup(opts)?;
        Ok(db)
    }

    /// Parses NEO's `--database` value for MySQL and opens it
    /// ([`MysqlTarget::parse`], [`open`](Self::open)).
    pub fn open_database(database: &str, opts: &MysqlOptions) -> DbResult<Self> {
        let target = MysqlTarget::parse(database).map_err(|reason| DbError::MysqlSetup {
            database: "mysql".into(),
            reason,
        })?;
        Self::open(&target, opts)
    }

    /// The database, as `mysql:[user@]name`.
    pub fn describe(&self) -> &str {
        &self.name
    }

    /// How to reach it.
    pub fn target(&self) -> &MysqlTarget {
        &self.target
    }

    /// Whether equal data is stored once (`data` has the unique `hash` index).
    pub fn dedup(&self) -> bool {
        self.dedup
    }

    /// How many times the connection was re-established after a loss.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// The current connection (made if needed), for inspection (tests,
    /// tools). Statements run on it bypass the reconnection logic.
    pub fn connection(&mut self) -> DbResult<&mut Conn> {
        self.flush_data()?;
        self.conn()
    }

    /// Sends the queued `data` rows (see the module documentation).
    fn flush_data(&mut self) -> DbResult<()> {
        if self.pending_data.is_empty() {
            return Ok(());
        }
        let sql = std::mem::take(&mut self.pending_data);
        let (rows, first) = std::mem::take(&mut self.pending_rows);
        log::trace!("storing {rows} data rows from {first:#x}");
        match self.text_exec_unique(&sql, "storing data")? {
            Ok(_) => Ok(()),
            Err(()) => {
                // Ids are ours: a duplicate means another writer.
                self.transaction_lost();
                Err(DbError::Duplicate {
                    table: "data",
                    key: format!("{rows} rows from {first:#x}"),
                })
            }
        }
    }

    /// Queues a `data` row (no dedup: the id cannot collide with a row of
    /// another writer); sends it at once if it is too large to queue.
    fn queue_data(&mut self, id: u64, hash: &[u8], compression: u8, value: &[u8]) -> DbResult<()> {
        const HEAD: &str = "INSERT INTO data VALUES ";
        let size = 2 * (hash.len() + value.len()) + 40;
        let budget = usize::try_from(self.max_allowed_packet)
            .unwrap_or(usize::MAX)
            .saturating_sub(1024)
            .min(PENDING_DATA_BYTES);
        if !self.pending_data.is_empty() && self.pending_data.len() + size > budget {
            self.flush_data()?;
        }
        if HEAD.len() + size > budget {
            // Sent alone, as binary (no hex text of a big value).
            self.flush_data()?;
            return match self.exec_unique(
                "INSERT INTO data VALUES (?,?,?,?)",
                (id, hash.to_vec(), compression, value.to_vec()),
                "storing data",
            )? {
                Ok(_) => Ok(()),
                Err(()) => Err(DbError::Duplicate {
                    table: "data",
                    key: format!("{id:#x}"),
                }),
            };
        }
        let s = &mut self.pending_data;
        if s.is_empty() {
            s.reserve(budget.min(size * 64));
            s.push_str(HEAD);
            self.pending_rows = (0, id);
        } else {
            s.push(',');
        }
        use std::fmt::Write as _;
        let _ = write!(s, "({id},X'");
        push_hex(s, hash);
        let _ = write!(s, "',{compression},X'");
        push_hex(s, value);
        s.push_str("')");
        self.pending_rows.0 += 1;
        // As if sent: a connection lost from now on fails the transaction.
        self.active = true;
        Ok(())
    }

    fn err(&self, context: &'static str) -> impl FnOnce(mysql::Error) -> DbError + '_ {
        move |error| DbError::Mysql {
            database: self.name.clone(),
            context,
            error,
        }
    }

    /// Opens a session as NEO's `_tryConnect` does.
    fn connect(&mut self) -> DbResult<()> {
        self.conn = None;
        let t = &self.target;
        let mut b = OptsBuilder::new()
            .db_name(Some(t.database.clone()))
            .user(t.user.clone())
            .pass(t.password.clone())
            .stmt_cache_size(128);
        b = match &t.socket {
            Some(s) => b.socket(Some(s.to_string_lossy().into_owned())),
            None => b.ip_or_hostname(Some("localhost")).tcp_port(3306),
        };
        log::info!("connecting to the MySQL database {}", self.name);
        let mut conn = Conn::new(b).map_err(self.err("connecting"))?;
        let setup = |c: &mut Conn| -> mysql::Result<Vec<Row>> {
            c.query_drop(
                "SET SESSION wait_timeout = 2147483, \
                 SESSION sql_mode = 'TRADITIONAL,NO_ENGINE_SUBSTITUTION', \
                 SESSION group_concat_max_len = 4294967295, SESSION autocommit = 0",
            )?;
            c.query("SHOW VARIABLES WHERE variable_name='max_allowed_packet'")
        };
        let rows = setup(&mut conn).map_err(self.err("setting up the session"))?;
        if self.engine == "RocksDB" {
            conn.query_drop("SET SESSION rocksdb_max_row_locks = 1073741824")
                .map_err(self.err("setting up the session"))?;
        }
        let lock = format!("{}.{LOCK}", t.database);
        let locked: Option<Option<i64>> = conn
            .exec_first("SELECT GET_LOCK(?, 0)", (lock,))
            .map_err(self.err("locking the database"))?;
        if locked.flatten() != Some(1) {
            return Err(DbError::Locked {
                path: PathBuf::from(&self.name),
            });
        }
        let packet = rows
            .into_iter()
            .next()
            .and_then(|r| mysql::from_row_opt::<(String, u64)>(r).ok())
            .map_or(0, |(_, v)| v);
        if packet < MIN_MAX_ALLOWED_PACKET {
            return Err(DbError::MysqlSetup {
                database: self.name.clone(),
                reason: format!(
                    "global variable 'max_allowed_packet' is too small ({packet}): \
                     minimal value must be {}k",
                    MIN_MAX_ALLOWED_PACKET / 1024
                ),
            });
        }
        self.max_allowed_packet = packet;
        self.conn = Some(conn);
        self.active = false;
        Ok(())
    }

    /// [`connect`](Self::connect), retrying every second for `--wait`
    /// seconds while the server cannot be reached (NEO's `_tryConnect`).
    fn connect_waiting(&mut self) -> DbResult<()> {
        let deadline = if self.wait < 0.0 {
            None
        } else {
            Some(Instant::now() + Duration::from_secs_f64(self.wait))
        };
        let mut last_error = String::new();
        loop {
            match self.connect() {
                Ok(()) => return Ok(()),
                Err(e @ DbError::Mysql { .. }) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(e);
                    }
                    let msg = e.to_string();
                    if msg != last_error {
                        log::warn!("connection to MySQL failed, retrying: {msg}");
                        last_error = msg;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn conn(&mut self) -> DbResult<&mut Conn> {
        if self.conn.is_none() {
            self.connect_waiting()?;
        }
        self.conn.as_mut().ok_or(DbError::MysqlSetup {
            database: String::new(),
            reason: "not connected".into(),
        })
    }

    /// Forgets what the lost transaction may have changed.
    fn transaction_lost(&mut self) {
        self.conn = None;
        self.active = false;
        self.pending_data.clear();
        self.pending_rows = (0, 0);
        self.view = None;
        self.config_cache.clear();
        self.data_last_ids.clear();
    }

    /// Runs `f` on the connection, reconnecting as NEO's `auto_reconnect`.
    /// `write`: `f` writes (it makes the transaction active). Errors other
    /// than a lost connection are returned as they are, with the
    /// connection kept, unless MySQL rolled the transaction back.
    fn run<T>(
        &mut self,
        context: &'static str,
        write: bool,
        mut f: impl FnMut(&mut Conn) -> mysql::Result<T>,
    ) -> DbResult<Result<T, mysql::Error>> {
        self.flush_data()?;
        let mut retry = 2;
        loop {
            let conn = self.conn()?;
            match f(conn) {
                Ok(v) => {
                    if write {
                        self.active = true;
                    }
                    return Ok(Ok(v));
                }
                Err(e) if is_gone(&e) => {
                    let active = self.active;
                    self.transaction_lost();
                    if active || retry == 0 {
                        if active {
                            log::error!(
                                "{}: connection lost in a transaction with writes: \
                                 it is rolled back ({e})",
                                self.name
                            );
                        }
                        return Err(self.err(context)(e));
                    }
                    log::info!(
                        "{}: the MySQL server is gone; reconnecting ({e})",
                        self.name
                    );
                    self.reconnects += 1;
                    retry -= 1;
                }
                Err(e) => {
                    if error_code(&e) == Some(ER_LOCK_DEADLOCK) {
                        // InnoDB rolled the whole transaction back.
                        self.transaction_lost();
                    }
                    return Ok(Err(e));
                }
            }
        }
    }

    /// Rows of a prepared statement.
    fn rows<T: mysql::prelude::FromRow>(
        &mut self,
        sql: &str,
        params: impl Into<Params>,
    ) -> DbResult<Vec<T>> {
        let params = params.into();
        let rows = self
            .run("querying", false, |c| {
                c.exec::<Row, _, _>(sql, params.clone())
            })?
            .map_err(self.err("querying"))?;
        rows.into_iter().map(|r| convert(r, sql)).collect()
    }

    /// First row of a prepared statement.
    fn row<T: mysql::prelude::FromRow>(
        &mut self,
        sql: &str,
        params: impl Into<Params>,
    ) -> DbResult<Option<T>> {
        let params = params.into();
        let row = self
            .run("querying", false, |c| {
                c.exec_first::<Row, _, _>(sql, params.clone())
            })?
            .map_err(self.err("querying"))?;
        row.map(|r| convert(r, sql)).transpose()
    }

    /// Rows of a text query (SQL made here, with numbers only).
    fn text_rows<T: mysql::prelude::FromRow>(&mut self, sql: &str) -> DbResult<Vec<T>> {
        let rows = self
            .run("querying", false, |c| c.query::<Row, _>(sql))?
            .map_err(self.err("querying"))?;
        rows.into_iter().map(|r| convert(r, sql)).collect()
    }

    /// Runs a write statement; returns the number of affected rows.
    fn exec(
        &mut self,
        sql: &str,
        params: impl Into<Params>,
        context: &'static str,
    ) -> DbResult<u64> {
        self.exec_unique(sql, params, context)?
            .map_err(|_| DbError::Duplicate {
                table: "?",
                key: sql.chars().take(60).collect(),
            })
    }

    /// Like [`exec`](Self::exec), keeping duplicate keys apart.
    fn exec_unique(
        &mut self,
        sql: &str,
        params: impl Into<Params>,
        context: &'static str,
    ) -> DbResult<Result<u64, ()>> {
        let params = params.into();
        match self.run(context, true, |c| {
            c.exec_drop(sql, params.clone())?;
            Ok(c.affected_rows())
        })? {
            Ok(n) => Ok(Ok(n)),
            Err(e) if error_code(&e) == Some(ER_DUP_ENTRY) => Ok(Err(())),
            Err(e) => Err(self.err(context)(e)),
        }
    }

    /// Runs a text write statement (SQL made here, with numbers only).
    fn text_exec(&mut self, sql: &str, context: &'static str) -> DbResult<u64> {
        match self.text_exec_unique(sql, context)? {
            Ok(n) => Ok(n),
            Err(()) => Err(DbError::Duplicate {
                table: "?",
                key: sql.chars().take(60).collect(),
            }),
        }
    }

    fn text_exec_unique(&mut self, sql: &str, context: &'static str) -> DbResult<Result<u64, ()>> {
        match self.run(context, true, |c| {
            c.query_drop(sql)?;
            Ok(c.affected_rows())
        })? {
            Ok(n) => Ok(Ok(n)),
            Err(e) if error_code(&e) == Some(ER_DUP_ENTRY) => Ok(Err(())),
            Err(e) => Err(self.err(context)(e)),
        }
    }

    /// DDL: MySQL commits the open transaction first (implicit commit).
    fn ddl(&mut self, sql: &str, context: &'static str) -> DbResult<()> {
        self.run(context, false, |c| c.query_drop(sql))?
            .map_err(self.err(context))?;
        self.active = false;
        Ok(())
    }

    /// Whether a table has rows; `None` if it does not exist (`nonempty`).
    fn nonempty(&mut self, table: &str) -> DbResult<Option<bool>> {
        let sql = format!("SELECT 1 FROM {table} LIMIT 1");
        match self.run("reading the schema", false, |c| c.query::<Row, _>(&sql))? {
            Ok(rows) => Ok(Some(!rows.is_empty())),
            Err(e) if error_code(&e) == Some(ER_NO_SUCH_TABLE) => Ok(None),
            Err(e) => Err(self.err("reading the schema")(e)),
        }
    }

    fn setup(&mut self, opts: &MysqlOptions) -> DbResult<()> {
        const CTX: &str = "creating the schema";
        self.config_cache.clear();
        self.view = None;
        self.data_last_ids.clear();
        if opts.reset {
            self.ddl(
                "DROP TABLE IF EXISTS config, pt, pack, trans, obj, data, bigdata, ttrans, tobj, todel",
                "erasing the database",
            )?;
        }
        let schema = schema(&self.engine, opts.dedup);
        if self.nonempty("config")?.is_none() {
            let foreign: Vec<(String,)> = self.rows(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()",
                (),
            )?;
            if !foreign.is_empty() {
                return Err(DbError::NotNeoDatabase {
                    path: PathBuf::from(&self.name),
                    reason: format!(
                        "no config table, but tables {:?}",
                        foreign.into_iter().map(|t| t.0).collect::<Vec<_>>()
                    ),
                });
            }
            self.ddl(&schema[0].1.replace("{}", "config"), CTX)?;
            self.set_config("version", Some(&SCHEMA_VERSION.to_string()))?;
        } else {
            let version = self.config("version")?;
            let unsupported = || DbError::UnsupportedVersion {
                path: PathBuf::from(&self.name),
                found: version.clone(),
                expected: SCHEMA_VERSION,
            };
            let v: u32 = match version.as_deref() {
                None => 0,
                Some(v) => v.trim().parse().map_err(|_| unsupported())?,
            };
            if v > SCHEMA_VERSION {
                return Err(unsupported());
            }
            self.migrate(v, &schema)?;
        }
        for (t, sql) in &schema[1..] {
            self.ddl(&sql.replace("{}", &format!("IF NOT EXISTS {t}")), CTX)?;
        }
        self.check_columns()?;
        self.dedup = !self
            .text_rows::<Row>("SHOW INDEX FROM data WHERE key_name='hash'")?
            .is_empty();
        let counts: Vec<(u64, u64)> = self.rows(
            "SELECT data_id, COUNT(*) FROM tobj WHERE data_id IS NOT NULL GROUP BY data_id",
            (),
        )?;
        self.held.reset(counts);
        // Deletions Python NEO deferred: do them now.
        let todel: Vec<(u64,)> = self.rows("SELECT data_id FROM todel", ())?;
        if !todel.is_empty() {
            let ids: Vec<DataId> = todel.into_iter().map(|t| t.0).collect();
            self.prune_data(&ids)?;
            self.text_exec("DELETE FROM todel", "pruning data")?;
        }
        self.commit()
    }

    /// Rebuilds `table` with the schema `create` (`{}`: table name), copying
    /// rows with `select`; resumes an interrupted rebuild (`_alterTable`).
    fn alter_table(&mut self, table: &str, create: &str, select: &str) -> DbResult<()> {
        const CTX: &str = "upgrading the schema";
        let new = format!("new_{table}");
        if self.nonempty(table)?.is_none() {
            if self.nonempty(&new)?.is_none() {
                return Ok(());
            }
        } else {
            self.ddl(&format!("DROP TABLE IF EXISTS {new}"), CTX)?;
            self.ddl(
                &format!(
                    "{} SELECT {select} FROM {table}",
                    create.replace("{}", &new)
                ),
                CTX,
            )?;
            self.ddl(&format!("DROP TABLE {table}"), CTX)?;
        }
        self.ddl(&format!("ALTER TABLE {new} RENAME TO {table}"), CTX)
    }

    /// Upgrades a database of schema version `from` (NEO's `migrate`),
    /// committing after each step.
    fn migrate(&mut self, from: u32, schema: &[(&'static str, String)]) -> DbResult<()> {
        let create = |t: &str| {
            schema
                .iter()
                .find(|(name, _)| *name == t)
                .map_or(String::new(), |(_, sql)| sql.clone())
        };
        for step in from + 1..=SCHEMA_VERSION {
            log::info!("{}: upgrading the database to version {step}", self.name);
            match step {
                1 => {
                    if self.nonempty("ttrans")? == Some(true)
                        || self.nonempty("tobj")? == Some(true)
                    {
                        return Err(DbError::CannotUpgrade {
                            path: PathBuf::from(&self.name),
                            reason: "the database can not be upgraded because it has \
                                     unfinished transactions: use an older version of NEO \
                                     to verify them"
                                .into(),
                        });
                    }
                    self.ddl("DROP TABLE IF EXISTS ttrans", "upgrading the schema")?;
                }
                2 => self.alter_table("obj", &create("obj"), "*")?,
                3 => self.alter_table(
                    "pt",
                    &create("pt").replace("pack", "-- pack"),
                    "rid AS `partition`, nid, CASE state WHEN 0 THEN -1 WHEN 2 THEN -2 \
                     ELSE 1-state END AS tid",
                )?,
                _ => {
                    self.set_config("partitions", None)?;
                    let nid = self.nid()?.map_or("NULL".to_owned(), |n| n.to_string());
                    self.alter_table(
                        "pt",
                        &create("pt"),
                        &format!("*, IF(nid={nid}, 0, NULL) AS pack"),
                    )?;
                }
            }
            self.set_config("version", Some(&step.to_string()))?;
            self.commit()?;
        }
        Ok(())
    }

    /// Every NEO table must have NEO's columns, in order.
    fn check_columns(&mut self) -> DbResult<()> {
        let found: Vec<(String, String)> = self.rows(
            "SELECT table_name, column_name FROM information_schema.columns \
             WHERE table_schema = DATABASE() ORDER BY table_name, ordinal_position",
            (),
        )?;
        for (table, columns) in expected_columns() {
            let got: Vec<&str> = found
                .iter()
                .filter(|(t, _)| t == table)
                .map(|(_, c)| c.as_str())
                .collect();
            if got != columns {
                return Err(DbError::NotNeoDatabase {
                    path: PathBuf::from(&self.name),
                    reason: format!("table {table} has columns {got:?}, expected {columns:?}"),
                });
            }
        }
        Ok(())
    }

    fn view(&mut self) -> DbResult<&PartitionView> {
        if self.view.is_none() {
            let rows = self.pt_rows()?;
            let nid = self.nid()?;
            let mut view = PartitionView::from_rows(&rows, nid);
            view.readable.extend(self.extra_readable.iter().copied());
            self.view = Some(view);
        }
        Ok(self.view.get_or_insert_with(PartitionView::default))
    }

    fn my_nid(&mut self) -> DbResult<i64> {
        self.nid()?
            .map(i64::from)
            .ok_or_else(|| DbError::Corrupted {
                what: "config.nid is missing".into(),
            })
    }

    /// Next free data id of a partition (NEO's `_data_last_ids`).
    fn data_last_id(&mut self, p: u32) -> DbResult<u64> {
        if let Some(&id) = self.data_last_ids.get(&p) {
            return Ok(id);
        }
        if p >= 1 << 15 {
            return Err(DbError::OutOfRange {
                what: "partition",
                value: u64::from(p),
            });
        }
        let lo = u64::from(p) << 48;
        let hi = u64::from(p + 1) << 48;
        let max: Option<(Option<u64>,)> = self.row(
            "SELECT MAX(id) FROM data WHERE ? <= id AND id < ?",
            (lo, hi),
        )?;
        let next = match max.and_then(|m| m.0) {
            Some(m) => m + 1,
            None => lo,
        };
        self.data_last_ids.insert(p, next);
        Ok(next)
    }

    fn data_ids_of(&mut self, sql: &str, params: impl Into<Params>) -> DbResult<Vec<DataId>> {
        Ok(self
            .rows::<(Option<u64>,)>(sql, params)?
            .into_iter()
            .filter_map(|r| r.0)
            .collect())
    }

    fn tids(&mut self, sql: &str, params: impl Into<Params>) -> DbResult<Vec<Tid>> {
        Ok(self
            .rows::<(u64,)>(sql, params)?
            .into_iter()
            .map(|r| Tid(r.0))
            .collect())
    }

    /// The bytes of a value stored in `bigdata` (`_bigData`).
    fn big_data(&mut self, value: &[u8], id: u64) -> DbResult<Vec<u8>> {
        let (first, length, chunks) = parse_big(value, id)?;
        let mut out = Vec::with_capacity(length as usize);
        for i in 0..chunks {
            let chunk: Option<(Vec<u8>,)> = self.row(
                "SELECT value FROM bigdata WHERE id=?",
                (u64::from(first) + u64::from(i),),
            )?;
            let Some((chunk,)) = chunk else {
                return Err(DbError::Corrupted {
                    what: format!("data row {id:#x}: bigdata row {} is missing", first + i),
                });
            };
            out.extend_from_slice(&chunk);
        }
        if out.len() != length as usize {
            return Err(DbError::Corrupted {
                what: format!(
                    "data row {id:#x}: bigdata holds {} bytes, expected {length}",
                    out.len()
                ),
            });
        }
        Ok(out)
    }

    /// `(compression, value)` of a data row, reassembling big values.
    fn unbig(&mut self, compression: u8, value: Vec<u8>, id: u64) -> DbResult<(u8, Vec<u8>)> {
        if compression & 0x80 != 0 {
            Ok((compression & 0x7f, self.big_data(&value, id)?))
        } else {
            Ok((compression, value))
        }
    }

    /// Inserts `obj`/`tobj` rows in multi-row statements below
    /// `max_allowed_packet` (as NEO's `storeTransaction`); `Err(())` on a
    /// duplicate key (then nothing of the failing statement is written).
    fn insert_obj_rows(&mut self, table: &str, rows: &[String]) -> DbResult<Result<(), ()>> {
        let head = format!("INSERT INTO {table} VALUES ");
        let max = usize::try_from(self.max_allowed_packet)
            .unwrap_or(usize::MAX)
            .saturating_sub(head.len() + 1024);
        let mut sql = head.clone();
        for r in rows {
            if sql.len() > head.len() && sql.len() + r.len() + 1 > max {
                if self.text_exec_unique(&sql, "storing objects")?.is_err() {
                    return Ok(Err(()));
                }
                sql.truncate(head.len());
            }
            if sql.len() > head.len() {
                sql.push(',');
            }
            sql.push_str(r);
        }
        if sql.len() > head.len() && self.text_exec_unique(&sql, "storing objects")?.is_err() {
            return Ok(Err(()));
        }
        Ok(Ok(()))
    }
}

/// Raw columns of a `trans`/`ttrans` + `pack` join.
type TransRaw = (
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
    bool,
    u64,
    Option<bool>,
    Option<bool>,
    Option<Vec<u8>>,
    Option<u64>,
);

/// Raw columns of `pack`.
type PackRaw = (u64, Option<bool>, bool, Option<Vec<u8>>, Option<u64>);

fn trans_record(tid: u64, r: TransRaw) -> DbResult<TransactionRecord> {
    let (oids, user, description, extension, packed, ttid, approved, partial, pack_oids, pack_tid) =
        r;
    let meta = TxnMeta {
        oids: split_oids(tid, &oids)?,
        user,
        description,
        extension,
        packed,
        ttid: Tid(ttid),
    };
    let pack = match partial {
        None => None,
        Some(partial) => Some(PackOrder {
            id: Tid(tid),
            approved,
            partial,
            oids: pack_oids.map(|o| split_oids(tid, &o)).transpose()?,
            pack_tid: Tid(pack_tid.unwrap_or(0)),
        }),
    };
    Ok(TransactionRecord { meta, pack })
}

fn opt_sql(v: Option<u64>, what: &'static str) -> DbResult<Option<i64>> {
    v.map(|v| to_sql(v, what)).transpose()
}

/// Appends `bytes` as hex digits (for an `X'...'` literal).
fn push_hex(s: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    s.reserve(2 * bytes.len());
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

fn null_or<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("NULL".to_owned(), |v| v.to_string())
}

impl Backend for MysqlBackend {
    fn commit(&mut self) -> DbResult<()> {
        if self.conn.is_none() && self.pending_data.is_empty() {
            return Ok(());
        }
        log::debug!("committing...");
        self.flush_data()?;
        let active = self.active;
        let r = self
            .run("committing", false, |c| c.query_drop("COMMIT"))?
            .map_err(self.err("committing"));
        if r.is_err() && active {
            self.transaction_lost();
        }
        r?;
        self.active = false;
        Ok(())
    }

    fn config(&mut self, key: &str) -> DbResult<Option<String>> {
        if let Some(v) = self.config_cache.get(key) {
            return Ok(v.clone());
        }
        let v: Option<(Option<Vec<u8>>,)> =
            self.row("SELECT value FROM config WHERE name=?", (key,))?;
        let v = v
            .and_then(|v| v.0)
            .map(|v| {
                String::from_utf8(v).map_err(|_| DbError::Corrupted {
                    what: format!("config.{key} is not UTF-8"),
                })
            })
            .transpose()?;
        self.config_cache.insert(key.to_owned(), v.clone());
        Ok(v)
    }

    fn set_config(&mut self, key: &str, value: Option<&str>) -> DbResult<()> {
        // Invalidate first: a failure may leave either value.
        self.config_cache.remove(key);
        match value {
            None => {
                self.exec("DELETE FROM config WHERE name=?", (key,), "writing config")?;
            }
            Some(v) => {
                let params: Params = (key, v).into();
                let r = self.run("writing config", true, |c| {
                    c.exec_drop("REPLACE INTO config VALUES (?,?)", params.clone())
                })?;
                match r {
                    Ok(()) => {}
                    // NEO widens the column for a long `zodb` value (Importer).
                    Err(e)
                        if error_code(&e) == Some(ER_DATA_TOO_LONG)
                            && key == "zodb"
                            && v.len() >= 256 =>
                    {
                        self.ddl(
                            &format!(
                                "ALTER TABLE config MODIFY value VARBINARY({}) NULL",
                                v.len()
                            ),
                            "writing config",
                        )?;
                        self.exec(
                            "REPLACE INTO config VALUES (?,?)",
                            (key, v),
                            "writing config",
                        )?;
                    }
                    Err(e) => return Err(self.err("writing config")(e)),
                }
            }
        }
        self.config_cache
            .insert(key.to_owned(), value.map(str::to_owned));
        if key == "nid" {
            self.view = None;
        }
        Ok(())
    }

    fn pt_rows(&mut self) -> DbResult<Vec<PtRow>> {
        let raw: Vec<(u32, i32, i64, Option<u64>)> =
            self.rows("SELECT `partition`, nid, tid, pack FROM pt", ())?;
        Ok(raw
            .into_iter()
            .map(|(partition, nid, tid, pack)| PtRow {
                partition,
                nid,
                tid,
                pack,
            })
            .collect())
    }

    fn change_pt_rows(&mut self, cells: &[PtChange], reset: bool) -> DbResult<()> {
        let mut delete: Vec<(u32, Nid)> = if reset {
            self.pt_rows()?
                .iter()
                .map(|r| (r.partition, r.nid))
                .collect()
        } else {
            Vec::new()
        };
        for c in cells {
            let key = (c.partition, c.nid);
            match c.tid {
                None => {
                    if !delete.contains(&key) {
                        delete.push(key);
                    }
                }
                Some(tid) => {
                    delete.retain(|k| *k != key);
                    let pack = opt_sql(c.pack, "pack")?;
                    self.exec(
                        "INSERT INTO pt VALUES (?,?,?,?) ON DUPLICATE KEY UPDATE tid=?",
                        (c.partition, c.nid, tid, pack, tid),
                        "writing pt",
                    )?;
                }
            }
        }
        for (p, nid) in delete {
            self.exec(
                "DELETE FROM pt WHERE `partition`=? AND nid=?",
                (p, nid),
                "writing pt",
            )?;
        }
        self.view = None;
        Ok(())
    }

    fn partition_view(&mut self) -> DbResult<PartitionView> {
        self.view().cloned()
    }

    fn set_temporarily_readable(&mut self, partition: u32, readable: bool) -> DbResult<()> {
        if readable {
            self.extra_readable.insert(partition);
        } else {
            self.extra_readable.remove(&partition);
        }
        self.view = None;
        Ok(())
    }

    fn set_partition_packed(&mut self, partition: u32, pack_id: u64) -> DbResult<()> {
        let nid = self.my_nid()?;
        let pack = to_sql(pack_id, "pack id")?;
        self.exec(
            "UPDATE pt SET pack=? WHERE `partition`=? AND nid=?",
            (pack, partition, nid),
            "writing pt",
        )?;
        Ok(())
    }

    fn partition_packed(&mut self, partition: u32) -> DbResult<Option<u64>> {
        let nid = self.my_nid()?;
        let v: Option<(Option<u64>,)> = self.row(
            "SELECT pack FROM pt WHERE `partition`=? AND nid=?",
            (partition, nid),
        )?;
        Ok(v.and_then(|v| v.0))
    }

    fn packed_ids(&mut self, up_to_date: bool) -> DbResult<BTreeMap<u32, Tid>> {
        let sql = if up_to_date {
            "SELECT `partition`, pack FROM pt WHERE pack IS NOT NULL AND tid=-1"
        } else {
            "SELECT `partition`, pack FROM pt WHERE pack IS NOT NULL"
        };
        Ok(self
            .rows::<(u32, u64)>(sql, ())?
            .into_iter()
            .map(|(p, pack)| (p, Tid(pack)))
            .collect())
    }

    fn first_tid_in(&mut self, partition: u32) -> DbResult<Option<Tid>> {
        let v: Option<(Option<u64>,)> = self.row(
            "SELECT MIN(tid) FROM trans FORCE INDEX (PRIMARY) WHERE `partition`=?",
            (partition,),
        )?;
        Ok(v.and_then(|v| v.0).map(Tid))
    }

    fn last_tid_in(&mut self, partition: u32, max_tid: Option<Tid>) -> DbResult<Option<Tid>> {
        let v: Option<(Option<u64>,)> = match max_tid {
            None => self.row(
                "SELECT MAX(tid) FROM trans FORCE INDEX (PRIMARY) WHERE `partition`=?",
                (partition,),
            )?,
            Some(m) => {
                let m = to_sql(m.0, "tid")?;
                self.row(
                    "SELECT MAX(tid) FROM trans FORCE INDEX (PRIMARY) \
                     WHERE `partition`=? AND tid<=?",
                    (partition, m),
                )?
            }
        };
        Ok(v.and_then(|v| v.0).map(Tid))
    }

    fn last_ids_in(&mut self, partition: u32) -> DbResult<(Option<Tid>, Option<Oid>)> {
        let r: Vec<(Option<u64>,)> = self.rows(
            "SELECT MAX(oid) FROM obj FORCE INDEX (PRIMARY) WHERE `partition`=? UNION ALL \
             SELECT MAX(tid) FROM obj FORCE INDEX (tid) WHERE `partition`=?",
            (partition, partition),
        )?;
        let oid = r.first().and_then(|v| v.0).map(Oid);
        let tid = r.get(1).and_then(|v| v.0).map(Tid);
        Ok((tid, oid))
    }

    fn store_data(
        &mut self,
        checksum: Option<&Checksum>,
        oid: Oid,
        data: &[u8],
        compression: u8,
        data_tid: Option<Tid>,
    ) -> DbResult<Option<DataId>> {
        let view = self.view()?;
        let p = view.partition(oid.0)?;
        let readable = view.readable.contains(&p);
        let soid = to_sql(oid.0, "oid")?;
        if let Some(dt) = data_tid {
            let found: Option<(Option<u64>,)> = self.row(
                "SELECT data_id FROM obj WHERE `partition`=? AND oid=? AND tid=?",
                (p, soid, to_sql(dt.0, "tid")?),
            )?;
            if let Some((id,)) = found {
                return Ok(id);
            }
            if readable {
                return Err(DbError::UndoPack { oid, data_tid: dt });
            }
        }
        let Some(checksum) = checksum else {
            return Ok(None);
        };
        let hash = checksum.to_vec();
        let mut compression = compression;
        let mut big = None;
        if data.len() >= BIGDATA_THRESHOLD {
            let length = u32::try_from(data.len()).map_err(|_| DbError::OutOfRange {
                what: "data length",
                value: data.len() as u64,
            })?;
            compression |= 0x80;
            if self.dedup {
                let same: Vec<(u64, Vec<u8>)> = self.rows(
                    "SELECT id, value FROM data WHERE hash=? AND compression=?",
                    (hash.clone(), compression),
                )?;
                if let Some((id, value)) = same.into_iter().next() {
                    return if self.big_data(&value, id)? == data {
                        Ok(Some(id))
                    } else {
                        Err(DbError::HashCollision { data_id: id })
                    };
                }
            }
            let mut first = 0u32;
            for (i, chunk) in data.chunks(BIGDATA_CHUNK).enumerate() {
                let id = if i == 0 {
                    Value::NULL
                } else {
                    Value::UInt(u64::from(first) + i as u64)
                };
                let params: Params = (id, chunk.to_vec()).into();
                let r = self.run("storing big data", true, |c| {
                    c.exec_drop("INSERT INTO bigdata VALUES (?,?)", params.clone())?;
                    Ok(c.last_insert_id())
                })?;
                let last = r.map_err(self.err("storing big data"))?;
                if i == 0 {
                    first = u32::try_from(last).map_err(|_| DbError::OutOfRange {
                        what: "bigdata id",
                        value: last,
                    })?;
                }
            }
            big = Some(big_header(first, length).to_vec());
        }
        let id = self.data_last_id(p)?;
        let value = big.as_deref().unwrap_or(data);
        if !self.dedup {
            self.queue_data(id, &hash, compression, value)?;
            self.data_last_ids.insert(p, id + 1);
            return Ok(Some(id));
        }
        match self.exec_unique(
            "INSERT INTO data VALUES (?,?,?,?)",
            (id, hash.clone(), compression, value.to_vec()),
            "storing data",
        )? {
            Ok(_) => {
                self.data_last_ids.insert(p, id + 1);
                Ok(Some(id))
            }
            Err(()) => {
                let existing: Option<(u64, Vec<u8>)> = if self.dedup {
                    self.row(
                        "SELECT id, value FROM data WHERE hash=? AND compression=?",
                        (hash, compression),
                    )?
                } else {
                    None
                };
                match existing {
                    Some((r, stored)) if stored == value => Ok(Some(r)),
                    Some((r, _)) => Err(DbError::HashCollision { data_id: r }),
                    None => Err(DbError::Duplicate {
                        table: "data",
                        key: format!("{id:#x}"),
                    }),
                }
            }
        }
    }

    fn load_data(&mut self, id: DataId) -> DbResult<Option<(u8, Checksum, Vec<u8>)>> {
        let r: Option<(Option<u8>, Vec<u8>, Vec<u8>)> = self.row(
            "SELECT compression, hash, value FROM data WHERE id=?",
            (id,),
        )?;
        let Some((c, h, v)) = r else {
            return Ok(None);
        };
        let (c, v) = self.unbig(c.unwrap_or(0), v, id)?;
        Ok(Some((c, checksum(h, "data")?, v)))
    }

    fn held_data(&mut self) -> &mut HeldData {
        &mut self.held
    }

    fn prune_data(&mut self, ids: &[DataId]) -> DbResult<usize> {
        let ids: BTreeSet<DataId> = ids
            .iter()
            .copied()
            .filter(|&id| !self.held.contains(id))
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let mut n = 0;
        let ids: Vec<DataId> = ids.into_iter().collect();
        for part in ids.chunks(100_000) {
            let rows: Vec<(u64, Option<Vec<u8>>)> = self.text_rows(&format!(
                "SELECT id, IF(compression < 128, NULL, value) FROM data \
                 LEFT JOIN obj ON (id = data_id) WHERE id IN ({}) AND data_id IS NULL",
                in_list(part.iter().copied())
            ))?;
            if rows.is_empty() {
                continue;
            }
            let mut big = Vec::new();
            for (id, value) in &rows {
                if let Some(v) = value {
                    let (first, _, chunks) = parse_big(v, *id)?;
                    big.extend((0..chunks).map(|i| u64::from(first) + u64::from(i)));
                }
            }
            let dead: Vec<u64> = rows.iter().map(|r| r.0).collect();
            n += self.text_exec(
                &format!("DELETE FROM data WHERE id IN ({})", in_list(dead)),
                "pruning data",
            )? as usize;
            if !big.is_empty() {
                self.text_exec(
                    &format!("DELETE FROM bigdata WHERE id IN ({})", in_list(big)),
                    "pruning data",
                )?;
            }
        }
        Ok(n)
    }

    fn orphan_data(&mut self) -> DbResult<Vec<DataId>> {
        self.data_ids_of(
            "SELECT id FROM data LEFT JOIN obj ON (id=obj.data_id) \
             LEFT JOIN todel ON (id=todel.data_id) \
             WHERE obj.data_id IS NULL AND todel.data_id IS NULL",
            (),
        )
    }

    fn store_transaction(
        &mut self,
        tid: Tid,
        objects: &[ObjectRef],
        txn: Option<&TxnMeta>,
        temporary: bool,
    ) -> DbResult<()> {
        let stid = to_sql(tid.0, "tid")?;
        let table = if temporary { "tobj" } else { "obj" };
        let mut rows = Vec::with_capacity(objects.len());
        let mut keys = Vec::with_capacity(objects.len());
        for o in objects {
            let p = self.view()?.partition(o.oid.0)?;
            let oid = to_sql(o.oid.0, "oid")?;
            let data_id = opt_sql(o.data_id, "data id")?;
            let value_tid = opt_sql(o.value_tid.map(|t| t.0), "value_tid")?;
            rows.push(format!(
                "({p},{oid},{stid},{},{})",
                null_or(data_id),
                null_or(value_tid)
            ));
            keys.push((p, oid, data_id, value_tid, o.oid));
        }
        if self.insert_obj_rows(table, &rows)?.is_err() {
            // Find the duplicate, accepting identical `obj` rows (an
            // interrupted replication), row by row.
            for (p, oid, data_id, value_tid, o) in keys {
                let r = self.exec_unique(
                    &format!("INSERT INTO {table} VALUES (?,?,?,?,?)"),
                    (p, oid, stid, data_id, value_tid),
                    "storing objects",
                )?;
                if r.is_err() {
                    if !temporary {
                        let existing: Option<(Option<i64>, Option<i64>)> = self.row(
                            "SELECT data_id, value_tid FROM obj \
                             WHERE `partition`=? AND oid=? AND tid=?",
                            (p, oid, stid),
                        )?;
                        if existing == Some((data_id, value_tid)) {
                            continue;
                        }
                    }
                    return Err(DbError::Duplicate {
                        table,
                        key: format!("{o}@{tid}"),
                    });
                }
            }
        }
        if let Some(t) = txn {
            let p = self.view()?.partition(tid.0)?;
            let ttid = to_sql(t.ttid.0, "ttid")?;
            let sql = if temporary {
                "INSERT INTO ttrans VALUES (?,?,?,?,?,?,?,?)"
            } else {
                "INSERT INTO trans VALUES (?,?,?,?,?,?,?,?)"
            };
            let r = self.exec_unique(
                sql,
                (
                    p,
                    if temporary { None } else { Some(stid) },
                    t.packed,
                    join_oids(&t.oids),
                    t.user.clone(),
                    t.description.clone(),
                    t.extension.clone(),
                    ttid,
                ),
                "storing a transaction",
            )?;
            if r.is_err() {
                return Err(DbError::Duplicate {
                    table: if temporary { "ttrans" } else { "trans" },
                    key: tid.to_string(),
                });
            }
        }
        Ok(())
    }

    fn store_pack_order(&mut self, order: &PackOrder) -> DbResult<()> {
        let r = self.exec_unique(
            "INSERT INTO pack VALUES (?,?,?,?,?)",
            (
                to_sql(order.id.0, "pack id")?,
                order.approved,
                order.partial,
                order.oids.as_deref().map(join_oids),
                to_sql(order.pack_tid.0, "pack tid")?,
            ),
            "storing a pack order",
        )?;
        r.map(|_| ()).map_err(|_| DbError::Duplicate {
            table: "pack",
            key: order.id.to_string(),
        })
    }

    fn lock_transaction(&mut self, tid: Tid, ttid: Tid, pack: bool) -> DbResult<()> {
        let ttid = to_sql(ttid.0, "ttid")?;
        self.exec(
            "UPDATE ttrans SET tid=? WHERE ttid=? LIMIT 1",
            (to_sql(tid.0, "tid")?, ttid),
            "locking a transaction",
        )?;
        if pack {
            self.exec(
                "UPDATE pack SET approved=1 WHERE tid=?",
                (ttid,),
                "locking a transaction",
            )?;
        }
        self.commit()
    }

    fn unlock_transaction(
        &mut self,
        tid: Tid,
        ttid: Tid,
        trans: bool,
        obj: bool,
        pack: bool,
    ) -> DbResult<()> {
        let tid = to_sql(tid.0, "tid")?;
        let ttid = to_sql(ttid.0, "ttid")?;
        const CTX: &str = "unlocking a transaction";
        if trans {
            let r = self.exec_unique(
                "INSERT INTO trans SELECT * FROM ttrans WHERE tid=?",
                (tid,),
                CTX,
            )?;
            if r.is_err() {
                return Err(DbError::Duplicate {
                    table: "trans",
                    key: format!("{tid:016x}"),
                });
            }
            if pack {
                self.exec("UPDATE pack SET tid=? WHERE tid=?", (tid, ttid), CTX)?;
            }
            self.exec("DELETE FROM ttrans WHERE tid=?", (tid,), CTX)?;
            if !obj {
                return Ok(());
            }
        }
        let ids = self.data_ids_of(
            "SELECT data_id FROM tobj WHERE tid=? AND data_id IS NOT NULL",
            (ttid,),
        )?;
        let r = self.exec_unique(
            "INSERT INTO obj SELECT `partition`, oid, ?, data_id, value_tid FROM tobj WHERE tid=?",
            (tid, ttid),
            CTX,
        )?;
        if r.is_err() {
            return Err(DbError::Duplicate {
                table: "obj",
                key: format!("tid {tid:016x}"),
            });
        }
        self.exec("DELETE FROM tobj WHERE tid=?", (ttid,), CTX)?;
        self.release_data(&ids, false)
    }

    fn abort_transaction(&mut self, ttid: Tid) -> DbResult<()> {
        let ttid = to_sql(ttid.0, "ttid")?;
        self.exec(
            "DELETE FROM tobj WHERE tid=?",
            (ttid,),
            "aborting a transaction",
        )?;
        self.exec(
            "DELETE FROM ttrans WHERE ttid=?",
            (ttid,),
            "aborting a transaction",
        )?;
        Ok(())
    }

    fn final_tid(&mut self, ttid: Tid) -> DbResult<Option<Tid>> {
        let p = self.view()?.readable_partition(ttid.0)?;
        let t = to_sql(ttid.0, "ttid")?;
        let v: Option<(u64,)> = self.row(
            "SELECT tid FROM trans WHERE `partition`=? AND tid>=ttid AND ttid=? LIMIT 1",
            (p, t),
        )?;
        Ok(v.map(|v| Tid(v.0)))
    }

    fn unfinished_transactions(&mut self) -> DbResult<BTreeMap<Tid, Option<Tid>>> {
        let mut out = BTreeMap::new();
        for t in self.tids("SELECT DISTINCT tid FROM tobj", ())? {
            out.insert(t, None);
        }
        let trans: Vec<(u64, Option<u64>)> = self.rows("SELECT ttid, tid FROM ttrans", ())?;
        for (ttid, tid) in trans {
            out.insert(Tid(ttid), tid.map(Tid));
        }
        Ok(out)
    }

    fn unfinished_data_ids(&mut self) -> DbResult<Vec<DataId>> {
        self.data_ids_of("SELECT data_id FROM tobj WHERE data_id IS NOT NULL", ())
    }

    fn drop_partitions_temporary(&mut self, partitions: Option<&[u32]>) -> DbResult<()> {
        let filter = match partitions {
            None => String::new(),
            Some([]) => return Ok(()),
            Some(ps) => format!(
                " WHERE `partition` IN ({})",
                in_list(ps.iter().map(|&p| u64::from(p)))
            ),
        };
        const CTX: &str = "dropping temporary data";
        self.text_exec(&format!("DELETE FROM tobj{filter}"), CTX)?;
        self.text_exec(
            &format!("DELETE ttrans, pack FROM ttrans LEFT JOIN pack USING(tid){filter}"),
            CTX,
        )?;
        Ok(())
    }

    fn find_object(
        &mut self,
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    ) -> DbResult<Option<ObjectRecord>> {
        let p = self.view()?.readable_partition(oid.0)?;
        let soid = to_sql(oid.0, "oid")?;
        // One round trip: the next serial comes from a subquery (NEO asks
        // for it in a second query, `_getNextTID`).
        const SELECT: &str = "SELECT tid, compression, data.hash, value, value_tid, data_id, \
             (SELECT n.tid FROM obj AS n FORCE INDEX(PRIMARY) WHERE n.`partition`=obj.`partition` \
             AND n.oid=obj.oid AND n.tid>obj.tid ORDER BY n.tid LIMIT 1) \
             FROM obj FORCE INDEX(PRIMARY) LEFT JOIN data ON (obj.data_id = data.id) \
             WHERE `partition`=? AND oid=?";
        type Raw = (
            u64,
            Option<u8>,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            Option<u64>,
            Option<u64>,
            Option<u64>,
        );
        let raw: Option<Raw> = if let Some(at) = at {
            self.row(
                &format!("{SELECT} AND tid=?"),
                (p, soid, to_sql(at.0, "tid")?),
            )?
        } else if let Some(before) = before {
            self.row(
                &format!("{SELECT} AND tid<? ORDER BY tid DESC LIMIT 1"),
                (p, soid, to_sql(before.0, "tid")?),
            )?
        } else {
            self.row(&format!("{SELECT} ORDER BY tid DESC LIMIT 1"), (p, soid))?
        };
        let Some((serial, comp, hash, data, value_tid, data_id, next)) = raw else {
            return Ok(None);
        };
        let (comp, data) = match (comp, data) {
            (Some(c), Some(d)) if c & 0x80 != 0 => {
                let (c, d) = self.unbig(c, d, data_id.unwrap_or(0))?;
                (Some(c), Some(d))
            }
            // A data row with a NULL compression (allowed by NEO's
            // schema) reads as uncompressed.
            (None, Some(d)) => (Some(0), Some(d)),
            other => other,
        };
        Ok(Some(ObjectRecord {
            serial: Tid(serial),
            next_serial: next.map(Tid),
            compression: comp,
            checksum: hash.map(|h| checksum(h, "data")).transpose()?,
            data,
            data_serial: value_tid.map(Tid),
        }))
    }

    fn last_object_tid(&mut self, oid: Oid) -> DbResult<Option<Tid>> {
        let p = self.view()?.readable_partition(oid.0)?;
        let v: Option<(u64,)> = self.row(
            "SELECT tid FROM obj FORCE INDEX(PRIMARY) \
             WHERE `partition`=? AND oid=? ORDER BY tid DESC LIMIT 1",
            (p, to_sql(oid.0, "oid")?),
        )?;
        Ok(v.map(|v| Tid(v.0)))
    }

    fn get_transaction(&mut self, tid: Tid, all: bool) -> DbResult<Option<TransactionRecord>> {
        let p = self.view()?.readable_partition(tid.0)?;
        let stid = to_sql(tid.0, "tid")?;
        let mut raw: Option<TransRaw> = self.row(
            "SELECT trans.oids, user, description, ext, packed, ttid, \
             approved, partial, pack.oids, pack_tid \
             FROM trans LEFT JOIN pack USING (tid) WHERE `partition`=? AND tid=?",
            (p, stid),
        )?;
        if raw.is_none() && all {
            raw = self.row(
                "SELECT ttrans.oids, user, description, ext, packed, ttid, \
                 approved, partial, pack.oids, pack_tid \
                 FROM ttrans LEFT JOIN pack USING (tid) WHERE tid=?",
                (stid,),
            )?;
        }
        raw.map(|r| trans_record(tid.0, r)).transpose()
    }

    fn object_history(
        &mut self,
        oid: Oid,
        offset: u64,
        length: u64,
    ) -> DbResult<Option<Vec<(Tid, u64)>>> {
        let p = self.view()?.readable_partition(oid.0)?;
        let rows: Vec<(u64, Option<u64>)> = self.rows(
            "SELECT tid, IF(compression < 128, LENGTH(value), \
             CAST(CONV(HEX(SUBSTR(value, 5, 4)), 16, 10) AS UNSIGNED)) \
             FROM obj FORCE INDEX(PRIMARY) LEFT JOIN data ON (obj.data_id = data.id) \
             WHERE `partition`=? AND oid=? ORDER BY tid DESC LIMIT ?,?",
            (p, to_sql(oid.0, "oid")?, offset, length),
        )?;
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            rows.into_iter()
                .map(|(t, l)| (Tid(t), l.unwrap_or(0)))
                .collect(),
        ))
    }

    fn object_history_for_undo(
        &mut self,
        oid: Oid,
        undo_tid: Tid,
    ) -> DbResult<Option<(Option<Tid>, Vec<(Tid, Option<Tid>)>)>> {
        let p = self.view()?.readable_partition(oid.0)?;
        let soid = to_sql(oid.0, "oid")?;
        let u = to_sql(undo_tid.0, "tid")?;
        let last2 = self.tids(
            "SELECT tid FROM obj WHERE `partition`=? AND oid=? AND tid<=? \
             ORDER BY tid DESC LIMIT 2",
            (p, soid, u),
        )?;
        if last2.first() != Some(&undo_tid) {
            return Ok(None);
        }
        let history: Vec<(u64, Option<u64>)> = self.rows(
            "SELECT tid, value_tid FROM obj WHERE `partition`=? AND oid=? AND tid>? ORDER BY tid",
            (p, soid, u),
        )?;
        Ok(Some((
            last2.get(1).copied(),
            history
                .into_iter()
                .map(|(t, v)| (Tid(t), v.map(Tid)))
                .collect(),
        )))
    }

    fn tid_list_in(&mut self, offset: u64, length: u64, partitions: &[u32]) -> DbResult<Vec<Tid>> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT tid FROM trans WHERE `partition` IN ({}) ORDER BY tid DESC LIMIT {offset},{length}",
            in_list(partitions.iter().map(|&p| u64::from(p)))
        );
        Ok(self
            .text_rows::<(u64,)>(&sql)?
            .into_iter()
            .map(|t| Tid(t.0))
            .collect())
    }

    fn oids_from(
        &mut self,
        partition: u32,
        length: u64,
        min_oid: Oid,
        tid: Tid,
    ) -> DbResult<(Option<Oid>, Vec<Oid>)> {
        let view = self.view()?;
        if !view.readable.contains(&partition) {
            return Err(DbError::NonReadableCell { partition });
        }
        let np = u64::from(view.np);
        // NEO's query has no outer ORDER BY and relies on the join order,
        // which RocksDB (reverse column family for obj's key) does not keep.
        let rows: Vec<(u64, Option<u64>)> = self.rows(
            "SELECT oid, data_id FROM obj FORCE INDEX(PRIMARY) JOIN (\
             SELECT `partition`, oid, MAX(tid) AS tid FROM obj FORCE INDEX(PRIMARY) \
             WHERE `partition`=? AND oid>=? AND tid<=? \
             GROUP BY oid ORDER BY oid LIMIT ?) AS t USING (`partition`, oid, tid) \
             ORDER BY oid",
            (
                partition,
                to_sql(min_oid.0, "oid")?,
                to_sql(tid.0, "tid")?,
                length,
            ),
        )?;
        let next = match rows.last() {
            Some(&(oid, _)) if rows.len() as u64 >= length => Some(Oid(oid + np)),
            _ => None,
        };
        let oids = rows
            .into_iter()
            .filter(|(_, d)| d.is_some())
            .map(|(o, _)| Oid(o))
            .collect();
        Ok((next, oids))
    }

    fn replication_tid_list(
        &mut self,
        min_tid: Tid,
        max_tid: Tid,
        length: Option<u64>,
        partition: u32,
    ) -> DbResult<Vec<Tid>> {
        self.tids(
            "SELECT tid FROM trans WHERE `partition`=? AND tid>=? AND tid<=? \
             ORDER BY tid ASC LIMIT ?",
            (
                partition,
                to_sql(min_tid.0, "tid")?,
                to_sql(max_tid.0, "tid")?,
                limit(length),
            ),
        )
    }

    fn replication_object_list(
        &mut self,
        min_tid: Tid,
        max_tid: Tid,
        length: Option<u64>,
        partition: u32,
        min_oid: Oid,
    ) -> DbResult<Vec<(Tid, Oid)>> {
        let min = to_sql(min_tid.0, "tid")?;
        let rows: Vec<(u64, u64)> = self.rows(
            "SELECT tid, oid FROM obj FORCE INDEX(tid) \
             WHERE `partition`=? AND tid<=? AND (tid=? AND ?<=oid OR ?<tid) \
             ORDER BY tid ASC, oid ASC LIMIT ?",
            (
                partition,
                to_sql(max_tid.0, "tid")?,
                min,
                to_sql(min_oid.0, "oid")?,
                min,
                limit(length),
            ),
        )?;
        Ok(rows.into_iter().map(|(t, o)| (Tid(t), Oid(o))).collect())
    }

    fn check_serial_range(
        &mut self,
        partition: u32,
        length: Option<u64>,
        min_tid: Tid,
        max_tid: Tid,
        min_oid: Oid,
    ) -> DbResult<SerialRangeCheck> {
        let min = to_sql(min_tid.0, "tid")?;
        let rows: Vec<(u64, u64)> = self.rows(
            "SELECT tid, oid FROM obj FORCE INDEX(tid) \
             WHERE `partition`=? AND tid<=? AND (tid>? OR tid=? AND oid>=?) \
             ORDER BY tid, oid LIMIT ?",
            (
                partition,
                to_sql(max_tid.0, "tid")?,
                min,
                min,
                to_sql(min_oid.0, "oid")?,
                limit(length),
            ),
        )?;
        Ok(serial_range_check(&rows))
    }

    fn delete_transaction(&mut self, tid: Tid) -> DbResult<()> {
        let p = self.view()?.partition(tid.0)?;
        let t = to_sql(tid.0, "tid")?;
        self.exec(
            "DELETE FROM pack WHERE tid=?",
            (t,),
            "deleting a transaction",
        )?;
        self.exec(
            "DELETE FROM trans WHERE `partition`=? AND tid=?",
            (p, t),
            "deleting a transaction",
        )?;
        Ok(())
    }

    fn delete_object(&mut self, oid: Oid, serial: Option<Tid>) -> DbResult<()> {
        let p = self.view()?.partition(oid.0)?;
        let o = to_sql(oid.0, "oid")?;
        let mut filter = format!(" FROM obj WHERE `partition`={p} AND oid={o}");
        if let Some(s) = serial {
            filter += &format!(" AND tid={}", to_sql(s.0, "tid")?);
        }
        let ids: Vec<(Option<u64>,)> = self.text_rows(&format!(
            "SELECT DISTINCT data_id{filter} AND data_id IS NOT NULL"
        ))?;
        self.text_exec(&format!("DELETE{filter}"), "deleting an object")?;
        let ids: Vec<DataId> = ids.into_iter().filter_map(|r| r.0).collect();
        self.prune_data(&ids)?;
        Ok(())
    }

    fn delete_range(
        &mut self,
        partition: u32,
        min_tid: Option<Tid>,
        max_tid: Option<Tid>,
    ) -> DbResult<()> {
        // The bounds are numbers we format ourselves: no injection possible.
        let mut filter = format!(" WHERE `partition`={partition}");
        if let Some(m) = min_tid {
            filter += &format!(" AND {} < tid", to_sql(m.0, "tid")?);
        }
        if let Some(m) = max_tid {
            filter += &format!(" AND tid <= {}", to_sql(m.0, "tid")?);
        }
        const CTX: &str = "deleting a range";
        self.text_exec(
            &format!("DELETE trans, pack FROM trans LEFT JOIN pack USING(tid){filter}"),
            CTX,
        )?;
        let ids: Vec<(Option<u64>,)> = self.text_rows(&format!(
            "SELECT DISTINCT data_id FROM obj{filter} AND data_id IS NOT NULL"
        ))?;
        self.text_exec(&format!("DELETE FROM obj{filter}"), CTX)?;
        let ids: Vec<DataId> = ids.into_iter().filter_map(|r| r.0).collect();
        self.prune_data(&ids)?;
        Ok(())
    }

    fn drop_partition_step(&mut self, partition: u32, count: u64) -> DbResult<DropStep> {
        let filter = format!(" WHERE `partition`={partition} ORDER BY tid, oid LIMIT {count}");
        let rows: Vec<(Option<u64>,)> =
            self.text_rows(&format!("SELECT data_id FROM obj FORCE INDEX(tid){filter}"))?;
        if !rows.is_empty() {
            self.text_exec(&format!("DELETE FROM obj{filter}"), "dropping a partition")?;
            let ids: BTreeSet<DataId> = rows.into_iter().filter_map(|r| r.0).collect();
            return Ok(DropStep::Objects(ids.into_iter().collect()));
        }
        self.text_exec(
            &format!(
                "DELETE pack FROM pack JOIN trans USING (tid) WHERE trans.`partition`={partition}"
            ),
            "dropping a partition",
        )?;
        let n = self.text_exec(
            &format!("DELETE FROM trans WHERE `partition`={partition}"),
            "dropping a partition",
        )?;
        Ok(DropStep::Transactions(n))
    }

    fn pack_orders(&mut self, min_completed: Tid) -> DbResult<Vec<PackOrder>> {
        let view = self.view()?.clone();
        if view.np == 0 || view.readable.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT tid, approved, partial, oids, pack_tid FROM pack \
             WHERE tid >= {} AND tid % {} IN ({}) ORDER BY tid",
            to_sql(min_completed.0, "tid")?,
            view.np,
            in_list(view.readable.iter().map(|&p| u64::from(p)))
        );
        let rows: Vec<PackRaw> = self.text_rows(&sql)?;
        rows.into_iter()
            .map(|(id, approved, partial, oids, pack_tid)| {
                Ok(PackOrder {
                    id: Tid(id),
                    approved,
                    partial,
                    oids: oids.map(|o| split_oids(id, &o)).transpose()?,
                    pack_tid: Tid(pack_tid.unwrap_or(0)),
                })
            })
            .collect()
    }

    fn sign_pack_orders(&mut self, approved: &[Tid], rejected: &[Tid]) -> DbResult<Vec<Tid>> {
        let set = |ids: &[Tid]| -> DbResult<String> {
            if ids.is_empty() {
                return Ok("0".into());
            }
            let list = ids
                .iter()
                .map(|t| to_sql(t.0, "pack id").map(|v| v.to_string()))
                .collect::<DbResult<Vec<_>>>()?;
            Ok(format!("tid IN ({})", list.join(",")))
        };
        let a = set(approved)?;
        let filter = format!(" WHERE {a} OR {}", set(rejected)?);
        let changed: Vec<Tid> = self
            .text_rows::<(u64,)>(&format!("SELECT tid FROM pack{filter}"))?
            .into_iter()
            .map(|t| Tid(t.0))
            .collect();
        if !changed.is_empty() {
            self.text_exec(
                &format!("UPDATE pack SET approved = {a}{filter}"),
                "signing pack orders",
            )?;
        }
        Ok(changed)
    }

    fn pack_partition(
        &mut self,
        partition: u32,
        scope: PackScope<'_>,
        tid: Tid,
    ) -> DbResult<(Option<Oid>, usize)> {
        let t = to_sql(tid.0, "tid")?;
        let (filter, lim) = match scope {
            PackScope::From { min_oid, limit: l } => (
                format!(">={}", to_sql(min_oid.0, "oid")?),
                format!(" ORDER BY oid LIMIT {l}"),
            ),
            PackScope::Oids([]) => return Ok((None, 0)),
            PackScope::Oids(oids) => {
                let list = oids
                    .iter()
                    .map(|o| to_sql(o.0, "oid").map(|v| v as u64))
                    .collect::<DbResult<Vec<_>>>()?;
                (format!(" IN ({})", in_list(list)), String::new())
            }
        };
        let sql = format!(
            "SELECT obj.oid AS oid, \
             IF(data_id IS NULL OR n>1, tid + (data_id IS NULL), NULL) \
             FROM (SELECT COUNT(*) AS n, oid, MAX(tid) AS max_tid \
             FROM obj FORCE INDEX(PRIMARY) \
             WHERE `partition`={partition} AND oid{filter} AND tid<={t} \
             GROUP BY oid{lim}) AS t \
             JOIN obj ON `partition`={partition} AND t.oid=obj.oid AND tid=max_tid \
             ORDER BY oid"
        );
        let groups: Vec<(u64, Option<u64>)> = self.text_rows(&sql)?;
        let mut data_ids = BTreeSet::new();
        let mut last = None;
        for (oid, bound) in groups {
            last = Some(oid);
            let Some(bound) = bound else { continue };
            let f =
                format!(" FROM obj WHERE `partition`={partition} AND oid={oid} AND tid<{bound}");
            let ids: Vec<(Option<u64>,)> =
                self.text_rows(&format!("SELECT DISTINCT data_id{f}"))?;
            data_ids.extend(ids.into_iter().filter_map(|r| r.0));
            self.text_exec(&format!("DELETE{f}"), "packing")?;
        }
        let ids: Vec<DataId> = data_ids.into_iter().collect();
        self.prune_data(&ids)?;
        let last = match scope {
            PackScope::From { .. } => last.map(Oid),
            PackScope::Oids(_) => None,
        };
        Ok((last, ids.len()))
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn parse_connection_strings() {
        let t = |s: &str| {
            let t = MysqlTarget::parse(s).unwrap();
            (
                t.user,
                t.password,
                t.database,
                t.socket.map(|p| p.to_string_lossy().into_owned()),
            )
        };
        let s = |x: &str| Some(x.to_owned());
        assert_eq!(t("neo"), (None, None, "neo".into(), None));
        assert_eq!(t("u@neo"), (s("u"), None, "neo".into(), None));
        assert_eq!(t("u:p@neo"), (s("u"), s("p"), "neo".into(), None));
        assert_eq!(t("u:@neo"), (s("u"), s(""), "neo".into(), None));
        assert_eq!(
            t("u:p:q@r@neo/run/my.sock"),
            (s("u"), s("p:q@r"), "neo".into(), s("/run/my.sock"))
        );
        assert_eq!(t("neo./x.sock"), (None, None, "neo".into(), s("./x.sock")));
        // The user ends at the last '@' that leaves a valid database.
        assert_eq!(t("a@b@neo"), (s("a@b"), None, "neo".into(), None));
        assert_eq!(t("neo/tmp/a@b"), (s("neo/tmp/a"), None, "b".into(), None));
        assert_eq!(t("u@neo@/s"), (s("u"), None, "neo@".into(), s("/s")));
        std::env::set_var("HOME", "/home/x");
        assert_eq!(t("neo~/s"), (None, None, "neo".into(), s("/home/x/s")));
        // As NEO's regular expression: odd, but not errors.
        assert_eq!(t("u@"), (None, None, "u@".into(), None));
        assert_eq!(t("a:b"), (None, None, "a:b".into(), None));
        assert_eq!(t("@/x"), (None, None, "@".into(), s("/x")));
        for bad in ["", "/sock", "~", ".x"] {
            assert!(MysqlTarget::parse(bad).is_err(), "{bad:?}");
        }
        let dbg = format!("{:?}", MysqlTarget::parse("u:secret@neo").unwrap());
        assert!(!dbg.contains("secret"));
        assert_eq!(
            MysqlTarget::parse("u:secret@neo").unwrap().describe(),
            "mysql:u@neo"
        );
    }

    #[test]
    fn big_header_layout() {
        let h = big_header(0x0102_0304, 0x0100_0001);
        assert_eq!(h, [1, 2, 3, 4, 1, 0, 0, 1]);
        assert_eq!(parse_big(&h, 0).unwrap(), (0x0102_0304, 0x0100_0001, 3));
        assert!(parse_big(&h[..7], 0).is_err());
    }
}
