//! [`SqliteBackend`]: NEO's SQLite storage database, schema version 4.
//!
//! The tables are those of NEO's `SQLiteDatabaseManager`, column for column,
//! so the file is interchangeable with Python NEO:
//!
//! | table    | key                          | columns                                                         |
//! |----------|------------------------------|-----------------------------------------------------------------|
//! | `config` | `name` (WITHOUT ROWID)       | `name TEXT`, `value TEXT`                                       |
//! | `pt`     | `(partition, nid)` (W/O ROWID) | `partition`, `nid`, `tid` (replicated tid or -state), `pack`  |
//! | `pack`   | `tid` (rowid alias)          | `tid`, `approved` (NULL: unsigned), `partial`, `oids`, `pack_tid` |
//! | `trans`  | `(partition, tid)` (W/O ROWID) | `partition`, `tid`, `packed`, `oids`, `user`, `description`, `ext`, `ttid` |
//! | `obj`    | `(partition, oid, tid)` (W/O ROWID) | `partition`, `oid`, `tid`, `data_id`, `value_tid`        |
//! | `data`   | `id` (rowid alias)           | `id`, `hash` (SHA-1), `compression`, `value`                     |
//! | `ttrans` | rowid                        | as `trans`, `tid` NULL until locked                              |
//! | `tobj`   | `(tid, oid)` (W/O ROWID)     | as `obj`, `tid` holding the ttid                                  |
//!
//! Indexes: `_obj_i1` on `obj(partition, tid, oid)`, `_obj_i2` on
//! `obj(data_id)`, and with deduplication the unique `_data_i1` on
//! `data(hash, compression)`. Oids and tids are SQL integers (below 2^63);
//! oid lists are concatenated 8-byte big-endian oids; `config.version` is
//! `"4"`. Databases of older NEO versions (0 to 3) are upgraded at open,
//! step by step as NEO does (`_migrate1` to `_migrate4`: drop the old
//! `ttrans`, re-key `obj`, renumber `pt` states into `pt.tid`, add
//! `pt.pack`), committing after each step so an interrupted upgrade resumes;
//! newer versions are refused.
//!
//! Durability, as NEO: NEO sets no pragma unless the database is given as
//! a `file:` URI with `synchronous`/`journal_mode`/`cache_size` parameters,
//! so SQLite's defaults apply: rollback journal (`journal_mode=DELETE`) and
//! `synchronous=FULL`, which syncs the journal and the database at each
//! commit. Hence a transaction whose [`Backend::commit`] returned survives a
//! SIGKILL (and a power loss, if the disk honours fsync). Uncommitted work
//! is rolled back when the process dies. `neostorage` (not this type) makes
//! one change to these defaults: `journal_mode=WAL` unless the URI names a
//! journal mode (see `storage::cli`): with `synchronous=FULL` as durable,
//! one sync per commit instead of four plus an unlink and a directory
//! sync, and loads read while a commit is written.
//!
//! Like NEO, the file is locked against a second storage node by binding
//! the abstract Unix socket `\0neostorage:<st_dev>:<st_ino>`, so Python NEO
//! and this program exclude each other.

#![deny(missing_docs)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fsformat::{Oid, Tid};
use rusqlite::{params, Connection, OptionalExtension};

use super::backend::{object_lookup, Backend, HeldData, ObjectReader};
use super::types::*;

/// The statements creating NEO's tables; `{}` is the table name.
const SCHEMA: &[(&str, &str)] = &[
    (
        "config",
        "CREATE TABLE {} (\n    name TEXT NOT NULL PRIMARY KEY,\n    value TEXT) WITHOUT ROWID",
    ),
    (
        "pt",
        "CREATE TABLE {} (\n    partition INTEGER NOT NULL,\n    nid INTEGER NOT NULL,\n    \
         tid INTEGER NOT NULL,\n    pack INTEGER,\n    PRIMARY KEY (partition, nid)) WITHOUT ROWID",
    ),
    (
        "pack",
        "CREATE TABLE {} (\n    tid INTEGER PRIMARY KEY,\n    approved BOOLEAN, -- NULL if not signed\n    \
         partial BOOLEAN NOT NULL,\n    oids BLOB, -- same format as trans.oids\n    pack_tid INTEGER)",
    ),
    (
        "trans",
        "CREATE TABLE {} (\n    partition INTEGER NOT NULL,\n    tid INTEGER NOT NULL,\n    \
         packed BOOLEAN NOT NULL,\n    oids BLOB NOT NULL,\n    user BLOB NOT NULL,\n    \
         description BLOB NOT NULL,\n    ext BLOB NOT NULL,\n    ttid INTEGER NOT NULL,\n    \
         PRIMARY KEY (partition, tid)) WITHOUT ROWID",
    ),
    (
        "obj",
        "CREATE TABLE {} (\n    partition INTEGER NOT NULL,\n    oid INTEGER NOT NULL,\n    \
         tid INTEGER NOT NULL,\n    data_id INTEGER,\n    value_tid INTEGER,\n    \
         PRIMARY KEY (partition, oid, tid)) WITHOUT ROWID",
    ),
    (
        "data",
        "CREATE TABLE {} (\n    id INTEGER PRIMARY KEY,\n    hash BLOB NOT NULL,\n    \
         compression INTEGER NOT NULL,\n    value BLOB NOT NULL)",
    ),
    (
        "ttrans",
        "CREATE TABLE {} (\n    partition INTEGER NOT NULL,\n    tid INTEGER,\n    \
         packed BOOLEAN NOT NULL,\n    oids BLOB NOT NULL,\n    user BLOB NOT NULL,\n    \
         description BLOB NOT NULL,\n    ext BLOB NOT NULL,\n    ttid INTEGER NOT NULL)",
    ),
    (
        "tobj",
        "CREATE TABLE {} (\n    partition INTEGER NOT NULL,\n    oid INTEGER NOT NULL,\n    \
         tid INTEGER NOT NULL,\n    data_id INTEGER,\n    value_tid INTEGER,\n    \
         PRIMARY KEY (tid, oid)) WITHOUT ROWID",
    ),
];

/// `pt` of schema version 3 (before `pack`), an upgrade step.
const PT_V3: &str =
    "CREATE TABLE {} (\n    partition INTEGER NOT NULL,\n    nid INTEGER NOT NULL,\n    \
     tid INTEGER NOT NULL,\n    PRIMARY KEY (partition, nid)) WITHOUT ROWID";

/// NEO's indexes: `(name, statement)`.
const INDEXES: &[(&str, &str)] = &[
    (
        "_obj_i1",
        "CREATE INDEX IF NOT EXISTS _obj_i1 ON obj(partition, tid, oid)",
    ),
    (
        "_obj_i2",
        "CREATE INDEX IF NOT EXISTS _obj_i2 ON obj(data_id)",
    ),
];

/// The deduplication index (NEO's `--dedup`).
const DEDUP_INDEX: &str = "CREATE UNIQUE INDEX IF NOT EXISTS _data_i1 ON data(hash, compression)";

/// How to open a database (NEO's `--reset`, `--dedup` and URI pragmas).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SqliteOptions {
    /// Drop every NEO table first (`--reset`).
    pub reset: bool,
    /// Create the unique index that makes equal data stored once
    /// (`--dedup`). A database created with it keeps deduplicating.
    pub dedup: bool,
    /// `PRAGMA`s to run after connecting, among `cache_size`,
    /// `journal_mode` and `synchronous` (from a `file:` URI).
    pub pragmas: Vec<(String, String)>,
}

impl SqliteOptions {
    /// Parses NEO's `--database` value for SQLite: a path (`~` expanded), or
    /// `file:PATH?pragma=value&...` with the pragmas NEO accepts.
    pub fn parse_database(arg: &str) -> Result<(PathBuf, SqliteOptions), String> {
        let mut opts = SqliteOptions::default();
        let Some(rest) = arg.strip_prefix("file:") else {
            let path = match arg.strip_prefix("~/") {
                Some(tail) => match std::env::var_os("HOME") {
                    Some(home) => Path::new(&home).join(tail),
                    None => PathBuf::from(arg),
                },
                None => PathBuf::from(arg),
            };
            return Ok((path, opts));
        };
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == "cksumvfs" {
                return Err("cksumvfs is not supported".into());
            }
            if !matches!(k, "cache_size" | "journal_mode" | "synchronous") {
                return Err(format!("unsupported pragma: {k}"));
            }
            if opts.pragmas.iter().any(|(x, _)| x == k) {
                return Err(format!("duplicate pragma: {k}"));
            }
            if !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(format!("invalid value for pragma {k}: {v:?}"));
            }
            opts.pragmas.push((k.to_owned(), v.to_owned()));
        }
        Ok((PathBuf::from(path), opts))
    }
}

/// NEO's SQLite database (see the module documentation).
pub struct SqliteBackend {
    conn: Connection,
    path: PathBuf,
    in_tx: bool,
    dedup: bool,
    view: Option<PartitionView>,
    extra_readable: BTreeSet<u32>,
    config_cache: HashMap<String, Option<String>>,
    data_last_ids: HashMap<u32, u64>,
    held: HeldData,
    /// The URI's pragmas (a reader takes `cache_size` too).
    pragmas: Vec<(String, String)>,
    /// Commits made so far ([`Backend::commits`]).
    commits: u64,
    _lock: Option<std::os::unix::net::UnixListener>,
}

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("path", &self.path)
            .field("dedup", &self.dedup)
            .finish_non_exhaustive()
    }
}

/// Maps an SQLite error, naming the file and the operation.
fn sq<'a>(path: &'a Path, context: &'static str) -> impl FnOnce(rusqlite::Error) -> DbError + 'a {
    move |error| DbError::Sqlite {
        path: path.to_owned(),
        context,
        error,
    }
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

fn opt_u64(v: Option<i64>, what: &'static str) -> DbResult<Option<u64>> {
    v.map(|v| from_sql(v, what)).transpose()
}

fn opt_sql(v: Option<u64>, what: &'static str) -> DbResult<Option<i64>> {
    v.map(|v| to_sql(v, what)).transpose()
}

fn checksum(blob: Vec<u8>, what: &str) -> DbResult<Checksum> {
    blob.try_into().map_err(|b: Vec<u8>| DbError::Corrupted {
        what: format!("{what}: hash of {} bytes", b.len()),
    })
}

fn compression(v: i64) -> DbResult<u8> {
    u8::try_from(v).map_err(|_| DbError::Corrupted {
        what: format!("invalid compression {v}"),
    })
}

fn in_list(values: impl IntoIterator<Item = u64>) -> String {
    values
        .into_iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `LIMIT` value: SQLite takes -1 for "no limit".
fn limit(length: Option<u64>) -> i64 {
    length.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX))
}

/// The node's busy handler: a commit waits for the reads in progress of
/// the load path's reader ([`SqliteReader`]), which take microseconds, so
/// it retries after 20 µs (SQLite's default handler sleeps 1 ms first), then
/// every millisecond, and gives up after about 5 s as rusqlite's default.
fn wait_for_readers(attempt: i32) -> bool {
    use std::time::Duration;
    match attempt {
        0..200 => std::thread::sleep(Duration::from_micros(20)),
        200..5200 => std::thread::sleep(Duration::from_millis(1)),
        _ => return false,
    }
    true
}

/// Takes the lock NEO takes on a database file.
fn lock_file(path: &Path) -> DbResult<Option<std::os::unix::net::UnixListener>> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(None);
    };
    let name = format!("neostorage:{}:{}", meta.dev(), meta.ino());
    let io = |e: std::io::Error| DbError::Sqlite {
        path: path.to_owned(),
        context: "locking the database",
        error: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
    };
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(io)?;
    match UnixListener::bind_addr(&addr) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(DbError::Locked {
            path: path.to_owned(),
        }),
        Err(e) => Err(io(e)),
    }
}

impl SqliteBackend {
    /// Opens (creating if needed) the database at `path`, as NEO's storage
    /// node does at start-up (`setup`), and commits the set-up.
    pub fn open(path: &Path, opts: &SqliteOptions) -> DbResult<Self> {
        let conn = Connection::open(path).map_err(sq(path, "opening the database"))?;
        let lock = lock_file(path)?;
        conn.set_prepared_statement_cache_capacity(64);
        conn.busy_handler(Some(wait_for_readers))
            .map_err(sq(path, "opening the database"))?;
        let mut db = SqliteBackend {
            conn,
            path: path.to_owned(),
            in_tx: false,
            dedup: false,
            view: None,
            extra_readable: BTreeSet::new(),
            config_cache: HashMap::new(),
            data_last_ids: HashMap::new(),
            held: HeldData::default(),
            pragmas: opts.pragmas.clone(),
            commits: 0,
            _lock: lock,
        };
        for (k, v) in &opts.pragmas {
            log::info!("PRAGMA {k} = {v}");
            let sql = format!("PRAGMA {k} = {v}");
            let mut stmt = db
                .conn
                .prepare(&sql)
                .map_err(sq(path, "setting a pragma"))?;
            let mut rows = stmt.query([]).map_err(sq(path, "setting a pragma"))?;
            while rows.next().map_err(sq(path, "setting a pragma"))?.is_some() {}
        }
        db.setup(opts)?;
        Ok(db)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether equal data is stored once (the `_data_i1` index exists).
    pub fn dedup(&self) -> bool {
        self.dedup
    }

    /// The underlying connection, for inspection (tests, tools).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn table_exists(&self, table: &str) -> DbResult<bool> {
        self.conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                [table],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(|e| self.not_neo_or(e, "reading the schema"))
    }

    /// "file is not a database" means a foreign file: say so.
    fn not_neo_or(&self, e: rusqlite::Error, context: &'static str) -> DbError {
        if let rusqlite::Error::SqliteFailure(f, _) = &e {
            if f.code == rusqlite::ErrorCode::NotADatabase {
                return DbError::NotNeoDatabase {
                    path: self.path.clone(),
                    reason: "not an SQLite database".into(),
                };
            }
        }
        sq(&self.path, context)(e)
    }

    fn setup(&mut self, opts: &SqliteOptions) -> DbResult<()> {
        self.begin()?;
        if opts.reset {
            for (t, _) in SCHEMA {
                self.exec_batch(&format!("DROP TABLE IF EXISTS {t}"), "erasing the database")?;
            }
        }
        if !self.table_exists("config")? {
            let foreign: Vec<String> = self
                .conn
                .prepare("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")
                .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                .map_err(|e| self.not_neo_or(e, "reading the schema"))?;
            if !foreign.is_empty() {
                return Err(DbError::NotNeoDatabase {
                    path: self.path.clone(),
                    reason: format!("no config table, but tables {foreign:?}"),
                });
            }
            self.exec_batch(&SCHEMA[0].1.replace("{}", "config"), "creating the schema")?;
            self.set_config("version", Some(&SCHEMA_VERSION.to_string()))?;
        } else {
            let version = self.config("version")?;
            let unsupported = || DbError::UnsupportedVersion {
                path: self.path.clone(),
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
            self.migrate(v)?;
        }
        for (t, sql) in &SCHEMA[1..] {
            let sql = sql.replace("{}", &format!("IF NOT EXISTS {t}"));
            self.exec_batch(&sql, "creating the schema")?;
        }
        self.check_columns()?;
        for (_, sql) in INDEXES {
            self.exec_batch(sql, "creating the schema")?;
        }
        if opts.dedup {
            self.exec_batch(DEDUP_INDEX, "creating the schema")?;
        }
        self.dedup = self
            .conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type='index' AND name='_data_i1'",
                [],
                |_| Ok(()),
            )
            .optional()
            .map_err(sq(&self.path, "reading the schema"))?
            .is_some();
        let counts = self.rows(
            "SELECT data_id, count(*) FROM tobj WHERE data_id IS NOT NULL GROUP BY data_id",
            [],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )?;
        let counts = counts
            .into_iter()
            .map(|(id, n)| Ok((from_sql(id, "data_id")?, from_sql(n, "count")?)))
            .collect::<DbResult<Vec<_>>>()?;
        self.held.reset(counts);
        self.commit()
    }

    /// Whether a table has rows; `None` if it does not exist (`nonempty`).
    fn nonempty(&self, table: &str) -> DbResult<Option<bool>> {
        if !self.table_exists(table)? {
            return Ok(None);
        }
        let row = self.row(&format!("SELECT 1 FROM {table} LIMIT 1"), [], |_| Ok(()))?;
        Ok(Some(row.is_some()))
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
            self.exec_batch(&format!("DROP TABLE IF EXISTS {new}"), CTX)?;
            self.exec_batch(&create.replace("{}", &new), CTX)?;
            self.exec_batch(
                &format!("INSERT INTO {new} SELECT {select} FROM {table}"),
                CTX,
            )?;
            self.exec_batch(&format!("DROP TABLE {table}"), CTX)?;
        }
        self.exec_batch(&format!("ALTER TABLE {new} RENAME TO {table}"), CTX)
    }

    /// Upgrades a database of schema version `from` to [`SCHEMA_VERSION`],
    /// as NEO's `migrate`, committing after each step.
    fn migrate(&mut self, from: u32) -> DbResult<()> {
        let schema = |t: &str| {
            SCHEMA
                .iter()
                .find(|(name, _)| *name == t)
                .map_or("", |(_, sql)| *sql)
        };
        for step in from + 1..=SCHEMA_VERSION {
            log::info!(
                "{}: upgrading the database to version {step}",
                self.path.display()
            );
            match step {
                1 => {
                    // Unfinished data cannot be migrated (NEO 1.6).
                    if self.nonempty("ttrans")? == Some(true)
                        || self.nonempty("tobj")? == Some(true)
                    {
                        return Err(DbError::CannotUpgrade {
                            path: self.path.clone(),
                            reason: "the database can not be upgraded because it has \
                                     unfinished transactions: use an older version of NEO \
                                     to verify them"
                                .into(),
                        });
                    }
                    self.exec_batch("DROP TABLE IF EXISTS ttrans", "upgrading the schema")?;
                }
                2 => self.alter_table("obj", schema("obj"), "*")?,
                3 => self.alter_table(
                    "pt",
                    PT_V3,
                    "rid, nid, CASE state WHEN 0 THEN -1 WHEN 2 THEN -2 ELSE 1-state END",
                )?,
                _ => {
                    self.set_config("partitions", None)?;
                    let nid = self.nid()?.map_or("NULL".to_owned(), |n| n.to_string());
                    self.alter_table(
                        "pt",
                        schema("pt"),
                        &format!("*, CASE WHEN nid={nid} THEN 0 ELSE NULL END"),
                    )?;
                }
            }
            self.set_config("version", Some(&step.to_string()))?;
            self.commit()?;
        }
        Ok(())
    }

    /// Every NEO table must have NEO's columns, in order.
    fn check_columns(&self) -> DbResult<()> {
        for (table, columns) in super::sqlite::expected_columns() {
            let found = self.rows(&format!("PRAGMA table_info({table})"), [], |r| {
                r.get::<_, String>(1)
            })?;
            if found != columns {
                return Err(DbError::NotNeoDatabase {
                    path: self.path.clone(),
                    reason: format!("table {table} has columns {found:?}, expected {columns:?}"),
                });
            }
        }
        Ok(())
    }

    fn begin(&mut self) -> DbResult<()> {
        if !self.in_tx {
            self.conn
                .execute_batch("BEGIN")
                .map_err(sq(&self.path, "beginning a transaction"))?;
            self.in_tx = true;
        }
        Ok(())
    }

    fn exec_batch(&mut self, sql: &str, context: &'static str) -> DbResult<()> {
        self.begin()?;
        self.conn
            .execute_batch(sql)
            .map_err(sq(&self.path, context))
    }

    /// Runs a write statement (inside the open transaction).
    fn exec<P: rusqlite::Params>(
        &mut self,
        sql: &str,
        params: P,
        context: &'static str,
    ) -> DbResult<usize> {
        self.begin()?;
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(params))
            .map_err(sq(&self.path, context))
    }

    /// Like [`exec`](Self::exec), keeping constraint violations apart.
    fn exec_unique<P: rusqlite::Params>(
        &mut self,
        sql: &str,
        params: P,
        context: &'static str,
    ) -> DbResult<Result<usize, rusqlite::Error>> {
        self.begin()?;
        match self
            .conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(params))
        {
            Ok(n) => Ok(Ok(n)),
            Err(e) if is_constraint(&e) => Ok(Err(e)),
            Err(e) => Err(sq(&self.path, context)(e)),
        }
    }

    fn rows<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> DbResult<Vec<T>> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.query_map(params, f)?.collect())
            .map_err(sq(&self.path, "querying"))
    }

    fn row<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> DbResult<Option<T>> {
        query_row(&self.conn, &self.path, sql, params, f)
    }

    fn tids(&self, sql: &str, params: impl rusqlite::Params) -> DbResult<Vec<Tid>> {
        self.rows(sql, params, |r| r.get::<_, i64>(0))?
            .into_iter()
            .map(|t| from_sql(t, "tid").map(Tid))
            .collect()
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
        let lo = i64::from(p) << 48;
        let hi = i64::from(p + 1) << 48;
        let max = self
            .row(
                "SELECT MAX(id) FROM data WHERE ? <= id AND id < ?",
                params![lo, hi],
                |r| r.get::<_, Option<i64>>(0),
            )?
            .flatten();
        let next = match max {
            Some(m) => from_sql(m, "data id")? + 1,
            None => u64::from(p) << 48,
        };
        self.data_last_ids.insert(p, next);
        Ok(next)
    }

    fn data_ids_of(&self, sql: &str, params: impl rusqlite::Params) -> DbResult<Vec<DataId>> {
        self.rows(sql, params, |r| r.get::<_, Option<i64>>(0))?
            .into_iter()
            .flatten()
            .map(|d| from_sql(d, "data_id"))
            .collect()
    }
}

/// The columns of NEO's tables, in order, as `PRAGMA table_info` lists them.
pub fn expected_columns() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("config", vec!["name", "value"]),
        ("pt", vec!["partition", "nid", "tid", "pack"]),
        (
            "pack",
            vec!["tid", "approved", "partial", "oids", "pack_tid"],
        ),
        (
            "trans",
            vec![
                "partition",
                "tid",
                "packed",
                "oids",
                "user",
                "description",
                "ext",
                "ttid",
            ],
        ),
        (
            "obj",
            vec!["partition", "oid", "tid", "data_id", "value_tid"],
        ),
        ("data", vec!["id", "hash", "compression", "value"]),
        (
            "ttrans",
            vec![
                "partition",
                "tid",
                "packed",
                "oids",
                "user",
                "description",
                "ext",
                "ttid",
            ],
        ),
        (
            "tobj",
            vec!["partition", "oid", "tid", "data_id", "value_tid"],
        ),
    ]
}

/// Raw columns of a `trans`/`ttrans` + `pack` join.
type TransRaw = (
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
    bool,
    i64,
    Option<bool>,
    Option<bool>,
    Option<Vec<u8>>,
    Option<i64>,
);

fn trans_record(tid: u64, r: TransRaw) -> DbResult<TransactionRecord> {
    let (oids, user, description, extension, packed, ttid, approved, partial, pack_oids, pack_tid) =
        r;
    let meta = TxnMeta {
        oids: split_oids(tid, &oids)?,
        user,
        description,
        extension,
        packed,
        ttid: Tid(from_sql(ttid, "ttid")?),
    };
    let pack = match partial {
        None => None,
        Some(partial) => Some(PackOrder {
            id: Tid(tid),
            approved,
            partial,
            oids: pack_oids.map(|o| split_oids(tid, &o)).transpose()?,
            pack_tid: Tid(from_sql(pack_tid.unwrap_or(0), "pack_tid")?),
        }),
    };
    Ok(TransactionRecord { meta, pack })
}

/// The object revision [`Backend::find_object`] reads, in partition `p`,
/// on any connection to the database (the node's or a reader's).
fn find_object_in(
    conn: &Connection,
    path: &Path,
    p: u32,
    oid: Oid,
    at: Option<Tid>,
    before: Option<Tid>,
) -> DbResult<Option<ObjectRecord>> {
    let soid = to_sql(oid.0, "oid")?;
    // One statement per load (the next revision's tid in a subquery):
    // each statement outside a write transaction takes and releases
    // SQLite's file lock, which cost as much as the lookups.
    macro_rules! select {
        ($cond:literal) => {
            concat!(
                "SELECT tid, compression, data.hash, value, value_tid, \
                 (SELECT n.tid FROM obj AS n WHERE n.partition=obj.partition \
                 AND n.oid=obj.oid AND n.tid>obj.tid ORDER BY n.tid LIMIT 1) \
                 FROM obj LEFT JOIN data ON obj.data_id = data.id \
                 WHERE partition=? AND oid=?",
                $cond
            )
        };
    }
    type Raw = (
        i64,
        Option<i64>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Option<i64>,
        Option<i64>,
    );
    let get = |r: &rusqlite::Row<'_>| -> rusqlite::Result<Raw> {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ))
    };
    let raw = if let Some(at) = at {
        query_row(
            conn,
            path,
            select!(" AND tid=?"),
            params![p, soid, to_sql(at.0, "tid")?],
            get,
        )?
    } else if let Some(before) = before {
        query_row(
            conn,
            path,
            select!(" AND tid<? ORDER BY tid DESC LIMIT 1"),
            params![p, soid, to_sql(before.0, "tid")?],
            get,
        )?
    } else {
        query_row(
            conn,
            path,
            select!(" ORDER BY tid DESC LIMIT 1"),
            params![p, soid],
            get,
        )?
    };
    let Some((serial, comp, hash, data, value_tid, next)) = raw else {
        return Ok(None);
    };
    Ok(Some(ObjectRecord {
        serial: Tid(from_sql(serial, "tid")?),
        next_serial: opt_u64(next, "tid")?.map(Tid),
        compression: comp.map(compression).transpose()?,
        checksum: hash.map(|h| checksum(h, "data")).transpose()?,
        data,
        data_serial: opt_u64(value_tid, "value_tid")?.map(Tid),
    }))
}

/// The last revision's tid of `oid` in partition `p`.
fn last_object_tid_in(conn: &Connection, path: &Path, p: u32, oid: Oid) -> DbResult<Option<Tid>> {
    let v = query_row(
        conn,
        path,
        "SELECT tid FROM obj WHERE partition=? AND oid=? ORDER BY tid DESC LIMIT 1",
        params![p, to_sql(oid.0, "oid")?],
        |r| r.get::<_, i64>(0),
    )?;
    Ok(opt_u64(v, "tid")?.map(Tid))
}

/// One row of a query, with the connection's statement cache.
fn query_row<T, P: rusqlite::Params>(
    conn: &Connection,
    path: &Path,
    sql: &str,
    params: P,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> DbResult<Option<T>> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.query_row(params, f).optional())
        .map_err(sq(path, "querying"))
}

/// A read-only connection to a node's SQLite database
/// ([`Backend::object_reader`]): loads never wait for SQLite's locks (a
/// busy database makes the load fail at once, and the node serves it).
///
/// With the write-ahead log, reads share one read transaction (a
/// snapshot) until [`ObjectReader::release`] or [`SNAPSHOT_AGE`]: starting
/// one per statement cost as much as the lookup itself. Readers do not
/// block the writer in that mode; with a rollback journal they would, so
/// there each read is its own transaction.
pub struct SqliteReader {
    conn: Connection,
    path: PathBuf,
    /// Whether reads share a snapshot (WAL mode).
    snapshots: bool,
    /// When the open snapshot began.
    since: Option<Instant>,
}

/// How long a reader keeps a snapshot at most (a snapshot also keeps
/// SQLite from checkpointing the log past it).
pub const SNAPSHOT_AGE: Duration = Duration::from_millis(50);

impl SqliteReader {
    fn open(path: &Path, pragmas: &[(String, String)]) -> DbResult<Self> {
        use rusqlite::OpenFlags;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            Connection::open_with_flags(path, flags).map_err(sq(path, "opening a reader"))?;
        conn.busy_timeout(Duration::ZERO)
            .map_err(sq(path, "opening a reader"))?;
        conn.set_prepared_statement_cache_capacity(8);
        // Pages straight from the OS page cache, without a read(2) each.
        let mut settings = vec![("mmap_size".to_owned(), (1u64 << 40).to_string())];
        settings.extend(pragmas.iter().filter(|(k, _)| k == "cache_size").cloned());
        for (k, v) in settings {
            conn.query_row(&format!("PRAGMA {k} = {v}"), [], |_| Ok(()))
                .optional()
                .map_err(sq(path, "setting a pragma"))?;
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(sq(path, "opening a reader"))?;
        Ok(SqliteReader {
            conn,
            path: path.to_owned(),
            snapshots: mode.eq_ignore_ascii_case("wal"),
            since: None,
        })
    }

    fn lookup(
        &mut self,
        p: u32,
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    ) -> DbResult<ObjectLookup> {
        if self.snapshots && self.since.is_none() {
            self.conn
                .execute_batch("BEGIN")
                .map_err(sq(&self.path, "reading"))?;
            self.since = Some(Instant::now());
        }
        let found = find_object_in(&self.conn, &self.path, p, oid, at, before)?;
        object_lookup(found, at.is_some() || before.is_some(), || {
            last_object_tid_in(&self.conn, &self.path, p, oid)
        })
    }
}

impl ObjectReader for SqliteReader {
    fn get_object(
        &mut self,
        view: &PartitionView,
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    ) -> DbResult<ObjectLookup> {
        let p = view.readable_partition(oid.0)?;
        self.release(SNAPSHOT_AGE);
        let r = self.lookup(p, oid, at, before);
        if r.is_err() {
            self.release(Duration::ZERO);
        }
        r
    }

    fn release(&mut self, older_than: Duration) {
        if self.since.is_some_and(|t| t.elapsed() >= older_than) {
            self.since = None;
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                log::debug!("{}: ending a read: {e}", self.path.display());
            }
        }
    }
}

impl Backend for SqliteBackend {
    fn commit(&mut self) -> DbResult<()> {
        if self.in_tx {
            log::debug!("committing...");
            self.conn
                .execute_batch("COMMIT")
                .map_err(sq(&self.path, "committing"))?;
            self.in_tx = false;
            self.commits += 1;
        }
        Ok(())
    }

    fn config(&mut self, key: &str) -> DbResult<Option<String>> {
        if let Some(v) = self.config_cache.get(key) {
            return Ok(v.clone());
        }
        let v = self
            .row("SELECT value FROM config WHERE name=?", [key], |r| {
                r.get::<_, Option<String>>(0)
            })?
            .flatten();
        self.config_cache.insert(key.to_owned(), v.clone());
        Ok(v)
    }

    fn set_config(&mut self, key: &str, value: Option<&str>) -> DbResult<()> {
        match value {
            None => self.exec("DELETE FROM config WHERE name=?", [key], "writing config")?,
            Some(v) => self.exec(
                "REPLACE INTO config VALUES (?,?)",
                [key, v],
                "writing config",
            )?,
        };
        self.config_cache
            .insert(key.to_owned(), value.map(str::to_owned));
        if key == "nid" {
            self.view = None;
        }
        Ok(())
    }

    fn pt_rows(&mut self) -> DbResult<Vec<PtRow>> {
        let raw = self.rows("SELECT partition, nid, tid, pack FROM pt", [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        })?;
        raw.into_iter()
            .map(|(partition, nid, tid, pack)| {
                let bad = || DbError::Corrupted {
                    what: format!("pt row ({partition}, {nid})"),
                };
                Ok(PtRow {
                    partition: u32::try_from(partition).map_err(|_| bad())?,
                    nid: Nid::try_from(nid).map_err(|_| bad())?,
                    tid,
                    pack: opt_u64(pack, "pt.pack")?,
                })
            })
            .collect()
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
                    let n = self.exec(
                        "UPDATE pt SET tid=? WHERE partition=? AND nid=?",
                        params![tid, c.partition, c.nid],
                        "writing pt",
                    )?;
                    if n == 0 {
                        self.exec(
                            "INSERT OR FAIL INTO pt VALUES (?,?,?,?)",
                            params![c.partition, c.nid, tid, pack],
                            "writing pt",
                        )?;
                    }
                }
            }
        }
        for (p, nid) in delete {
            self.exec(
                "DELETE FROM pt WHERE partition=? AND nid=?",
                params![p, nid],
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
            "UPDATE pt SET pack=? WHERE partition=? AND nid=?",
            params![pack, partition, nid],
            "writing pt",
        )?;
        Ok(())
    }

    fn partition_packed(&mut self, partition: u32) -> DbResult<Option<u64>> {
        let nid = self.my_nid()?;
        let v = self
            .row(
                "SELECT pack FROM pt WHERE partition=? AND nid=?",
                params![partition, nid],
                |r| r.get::<_, Option<i64>>(0),
            )?
            .flatten();
        opt_u64(v, "pt.pack")
    }

    fn packed_ids(&mut self, up_to_date: bool) -> DbResult<BTreeMap<u32, Tid>> {
        let sql = if up_to_date {
            "SELECT partition, pack FROM pt WHERE pack IS NOT NULL AND tid=-1"
        } else {
            "SELECT partition, pack FROM pt WHERE pack IS NOT NULL"
        };
        self.rows(sql, [], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)?)))?
            .into_iter()
            .map(|(p, pack)| Ok((p, Tid(from_sql(pack, "pt.pack")?))))
            .collect()
    }

    fn first_tid_in(&mut self, partition: u32) -> DbResult<Option<Tid>> {
        let v = self
            .row(
                "SELECT MIN(tid) FROM trans WHERE partition=?",
                [partition],
                |r| r.get::<_, Option<i64>>(0),
            )?
            .flatten();
        Ok(opt_u64(v, "tid")?.map(Tid))
    }

    fn last_tid_in(&mut self, partition: u32, max_tid: Option<Tid>) -> DbResult<Option<Tid>> {
        let v = match max_tid {
            None => self.row(
                "SELECT MAX(tid) FROM trans WHERE partition=?",
                [partition],
                |r| r.get::<_, Option<i64>>(0),
            )?,
            Some(m) => {
                let m = to_sql(m.0, "tid")?;
                self.row(
                    "SELECT MAX(tid) FROM trans WHERE partition=? AND tid<=?",
                    params![partition, m],
                    |r| r.get::<_, Option<i64>>(0),
                )?
            }
        };
        Ok(opt_u64(v.flatten(), "tid")?.map(Tid))
    }

    fn last_ids_in(&mut self, partition: u32) -> DbResult<(Option<Tid>, Option<Oid>)> {
        let oid = self
            .row(
                "SELECT MAX(oid) FROM obj WHERE partition=?",
                [partition],
                |r| r.get::<_, Option<i64>>(0),
            )?
            .flatten();
        let tid = self
            .row(
                "SELECT MAX(tid) FROM obj WHERE partition=?",
                [partition],
                |r| r.get::<_, Option<i64>>(0),
            )?
            .flatten();
        Ok((opt_u64(tid, "tid")?.map(Tid), opt_u64(oid, "oid")?.map(Oid)))
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
            let found = self.row(
                "SELECT data_id FROM obj WHERE partition=? AND oid=? AND tid=?",
                params![p, soid, to_sql(dt.0, "tid")?],
                |r| r.get::<_, Option<i64>>(0),
            )?;
            if let Some(id) = found {
                return opt_u64(id, "data_id");
            }
            if readable {
                return Err(DbError::UndoPack { oid, data_tid: dt });
            }
        }
        let Some(checksum) = checksum else {
            return Ok(None);
        };
        let id = self.data_last_id(p)?;
        let sid = to_sql(id, "data id")?;
        match self.exec_unique(
            "INSERT INTO data VALUES (?,?,?,?)",
            params![sid, &checksum[..], compression, data],
            "storing data",
        )? {
            Ok(_) => {
                self.data_last_ids.insert(p, id + 1);
                Ok(Some(id))
            }
            Err(e) => {
                let existing = self.row(
                    "SELECT id, value FROM data WHERE hash=? AND compression=?",
                    params![&checksum[..], compression],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
                )?;
                match existing {
                    Some((r, value)) if self.dedup => {
                        let r = from_sql(r, "data id")?;
                        if value == data {
                            Ok(Some(r))
                        } else {
                            Err(DbError::HashCollision { data_id: r })
                        }
                    }
                    _ => Err(sq(&self.path, "storing data")(e)),
                }
            }
        }
    }

    fn load_data(&mut self, id: DataId) -> DbResult<Option<(u8, Checksum, Vec<u8>)>> {
        let r = self.row(
            "SELECT compression, hash, value FROM data WHERE id=?",
            [to_sql(id, "data id")?],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            },
        )?;
        r.map(|(c, h, v)| Ok((compression(c)?, checksum(h, "data")?, v)))
            .transpose()
    }

    fn held_data(&mut self) -> &mut HeldData {
        &mut self.held
    }

    fn prune_data(&mut self, ids: &[DataId]) -> DbResult<usize> {
        let mut n = 0;
        for &id in ids {
            if self.held.contains(id) {
                continue;
            }
            let sid = to_sql(id, "data id")?;
            let used = self
                .row("SELECT 1 FROM obj WHERE data_id=? LIMIT 1", [sid], |_| {
                    Ok(())
                })?
                .is_some();
            if !used {
                n += self.exec("DELETE FROM data WHERE id=?", [sid], "pruning data")?;
            }
        }
        Ok(n)
    }

    fn orphan_data(&mut self) -> DbResult<Vec<DataId>> {
        self.data_ids_of(
            "SELECT id FROM data LEFT JOIN obj ON (id=data_id) WHERE data_id IS NULL",
            [],
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
        let (obj_sql, table) = if temporary {
            ("INSERT OR FAIL INTO tobj VALUES (?,?,?,?,?)", "tobj")
        } else {
            ("INSERT OR FAIL INTO obj VALUES (?,?,?,?,?)", "obj")
        };
        for o in objects {
            let p = self.view()?.partition(o.oid.0)?;
            let oid = to_sql(o.oid.0, "oid")?;
            let data_id = opt_sql(o.data_id, "data id")?;
            let value_tid = opt_sql(o.value_tid.map(|t| t.0), "value_tid")?;
            let r = self.exec_unique(
                obj_sql,
                params![p, oid, stid, data_id, value_tid],
                "storing objects",
            )?;
            if r.is_err() {
                if !temporary {
                    let existing = self.row(
                        "SELECT data_id, value_tid FROM obj WHERE partition=? AND oid=? AND tid=?",
                        params![p, oid, stid],
                        |r| Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?)),
                    )?;
                    if existing == Some((data_id, value_tid)) {
                        continue;
                    }
                }
                return Err(DbError::Duplicate {
                    table,
                    key: format!("{}@{}", o.oid, tid),
                });
            }
        }
        if let Some(t) = txn {
            let p = self.view()?.partition(tid.0)?;
            let ttid = to_sql(t.ttid.0, "ttid")?;
            let sql = if temporary {
                "INSERT OR FAIL INTO ttrans VALUES (?,?,?,?,?,?,?,?)"
            } else {
                "INSERT OR FAIL INTO trans VALUES (?,?,?,?,?,?,?,?)"
            };
            let r = self.exec_unique(
                sql,
                params![
                    p,
                    if temporary { None } else { Some(stid) },
                    t.packed,
                    join_oids(&t.oids),
                    t.user,
                    t.description,
                    t.extension,
                    ttid
                ],
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
            params![
                to_sql(order.id.0, "pack id")?,
                order.approved,
                order.partial,
                order.oids.as_deref().map(join_oids),
                to_sql(order.pack_tid.0, "pack tid")?
            ],
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
            "UPDATE ttrans SET tid=? WHERE ttid=?",
            params![to_sql(tid.0, "tid")?, ttid],
            "locking a transaction",
        )?;
        if pack {
            self.exec(
                "UPDATE pack SET approved=1 WHERE tid=?",
                [ttid],
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
                [tid],
                CTX,
            )?;
            if r.is_err() {
                return Err(DbError::Duplicate {
                    table: "trans",
                    key: format!("{tid:016x}"),
                });
            }
            if pack {
                self.exec("UPDATE pack SET tid=? WHERE tid=?", [tid, ttid], CTX)?;
            }
            self.exec("DELETE FROM ttrans WHERE tid=?", [tid], CTX)?;
            if !obj {
                return Ok(());
            }
        }
        let ids = self.data_ids_of(
            "SELECT data_id FROM tobj WHERE tid=? AND data_id IS NOT NULL",
            [ttid],
        )?;
        let r = self.exec_unique(
            "INSERT INTO obj SELECT partition, oid, ?, data_id, value_tid FROM tobj WHERE tid=?",
            [tid, ttid],
            CTX,
        )?;
        if r.is_err() {
            return Err(DbError::Duplicate {
                table: "obj",
                key: format!("tid {tid:016x}"),
            });
        }
        self.exec("DELETE FROM tobj WHERE tid=?", [ttid], CTX)?;
        self.release_data(&ids, false)
    }

    fn abort_transaction(&mut self, ttid: Tid) -> DbResult<()> {
        let ttid = to_sql(ttid.0, "ttid")?;
        self.exec(
            "DELETE FROM tobj WHERE tid=?",
            [ttid],
            "aborting a transaction",
        )?;
        self.exec(
            "DELETE FROM ttrans WHERE ttid=?",
            [ttid],
            "aborting a transaction",
        )?;
        Ok(())
    }

    fn final_tid(&mut self, ttid: Tid) -> DbResult<Option<Tid>> {
        let p = self.view()?.readable_partition(ttid.0)?;
        let t = to_sql(ttid.0, "ttid")?;
        let v = self.row(
            "SELECT tid FROM trans WHERE partition=? AND tid>=? AND ttid=? LIMIT 1",
            params![p, t, t],
            |r| r.get::<_, i64>(0),
        )?;
        Ok(opt_u64(v, "tid")?.map(Tid))
    }

    fn unfinished_transactions(&mut self) -> DbResult<BTreeMap<Tid, Option<Tid>>> {
        let mut out = BTreeMap::new();
        for t in self.tids("SELECT DISTINCT tid FROM tobj", [])? {
            out.insert(t, None);
        }
        let trans = self.rows("SELECT ttid, tid FROM ttrans", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?))
        })?;
        for (ttid, tid) in trans {
            out.insert(Tid(from_sql(ttid, "ttid")?), opt_u64(tid, "tid")?.map(Tid));
        }
        Ok(out)
    }

    fn unfinished_data_ids(&mut self) -> DbResult<Vec<DataId>> {
        self.data_ids_of("SELECT data_id FROM tobj WHERE data_id IS NOT NULL", [])
    }

    fn drop_partitions_temporary(&mut self, partitions: Option<&[u32]>) -> DbResult<()> {
        let filter = partitions.map_or(String::new(), |ps| {
            format!(
                " WHERE partition IN ({})",
                in_list(ps.iter().map(|&p| u64::from(p)))
            )
        });
        const CTX: &str = "dropping temporary data";
        self.exec_batch(&format!("DELETE FROM tobj{filter}"), CTX)?;
        self.exec_batch(
            &format!(
                "DELETE FROM pack WHERE tid IN (SELECT tid FROM ttrans JOIN pack USING (tid){filter})"
            ),
            CTX,
        )?;
        self.exec_batch(&format!("DELETE FROM ttrans{filter}"), CTX)
    }

    fn find_object(
        &mut self,
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    ) -> DbResult<Option<ObjectRecord>> {
        let p = self.view()?.readable_partition(oid.0)?;
        find_object_in(&self.conn, &self.path, p, oid, at, before)
    }

    fn last_object_tid(&mut self, oid: Oid) -> DbResult<Option<Tid>> {
        let p = self.view()?.readable_partition(oid.0)?;
        last_object_tid_in(&self.conn, &self.path, p, oid)
    }

    fn object_reader(&mut self) -> DbResult<Option<Box<dyn ObjectReader>>> {
        let r = SqliteReader::open(&self.path, &self.pragmas)?;
        Ok(Some(Box::new(r)))
    }

    fn commits(&self) -> u64 {
        self.commits
    }

    fn get_transaction(&mut self, tid: Tid, all: bool) -> DbResult<Option<TransactionRecord>> {
        let p = self.view()?.readable_partition(tid.0)?;
        let stid = to_sql(tid.0, "tid")?;
        let get = |r: &rusqlite::Row<'_>| -> rusqlite::Result<TransRaw> {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
            ))
        };
        let mut raw = self.row(
            "SELECT trans.oids, user, description, ext, packed, ttid, \
             approved, partial, pack.oids, pack_tid \
             FROM trans LEFT JOIN pack USING (tid) WHERE partition=? AND tid=?",
            params![p, stid],
            get,
        )?;
        if raw.is_none() && all {
            raw = self.row(
                "SELECT ttrans.oids, user, description, ext, packed, ttid, \
                 approved, partial, pack.oids, pack_tid \
                 FROM ttrans LEFT JOIN pack USING (tid) WHERE tid=?",
                [stid],
                get,
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
        let rows = self.rows(
            "SELECT tid, LENGTH(value) FROM obj LEFT JOIN data ON obj.data_id = data.id \
             WHERE partition=? AND oid=? ORDER BY tid DESC LIMIT ?,?",
            params![
                p,
                to_sql(oid.0, "oid")?,
                limit(Some(offset)),
                limit(Some(length))
            ],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?)),
        )?;
        if rows.is_empty() {
            return Ok(None);
        }
        rows.into_iter()
            .map(|(t, l)| {
                Ok((
                    Tid(from_sql(t, "tid")?),
                    from_sql(l.unwrap_or(0), "length")?,
                ))
            })
            .collect::<DbResult<Vec<_>>>()
            .map(Some)
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
            "SELECT tid FROM obj WHERE partition=? AND oid=? AND tid<=? ORDER BY tid DESC LIMIT 2",
            params![p, soid, u],
        )?;
        if last2.first() != Some(&undo_tid) {
            return Ok(None);
        }
        let history = self
            .rows(
                "SELECT tid, value_tid FROM obj WHERE partition=? AND oid=? AND tid>? ORDER BY tid",
                params![p, soid, u],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?)),
            )?
            .into_iter()
            .map(|(t, v)| Ok((Tid(from_sql(t, "tid")?), opt_u64(v, "value_tid")?.map(Tid))))
            .collect::<DbResult<Vec<_>>>()?;
        Ok(Some((last2.get(1).copied(), history)))
    }

    fn tid_list_in(&mut self, offset: u64, length: u64, partitions: &[u32]) -> DbResult<Vec<Tid>> {
        let sql = format!(
            "SELECT tid FROM trans WHERE partition IN ({}) ORDER BY tid DESC LIMIT ?,?",
            in_list(partitions.iter().map(|&p| u64::from(p)))
        );
        self.tids(&sql, params![limit(Some(offset)), limit(Some(length))])
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
        let rows = self.rows(
            "SELECT oid, data_id FROM obj JOIN (\
             SELECT partition, oid, MAX(tid) AS tid FROM obj \
             WHERE partition=? AND oid>=? AND tid<=? \
             GROUP BY oid ORDER BY oid LIMIT ?) AS t USING (partition, oid, tid)",
            params![
                partition,
                to_sql(min_oid.0, "oid")?,
                to_sql(tid.0, "tid")?,
                limit(Some(length))
            ],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?)),
        )?;
        let next = match rows.last() {
            Some(&(oid, _)) if rows.len() as u64 >= length => Some(Oid(from_sql(oid, "oid")? + np)),
            _ => None,
        };
        let oids = rows
            .into_iter()
            .filter(|(_, d)| d.is_some())
            .map(|(o, _)| Ok(Oid(from_sql(o, "oid")?)))
            .collect::<DbResult<Vec<_>>>()?;
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
            "SELECT tid FROM trans WHERE partition=? AND ?<=tid AND tid<=? ORDER BY tid ASC LIMIT ?",
            params![
                partition,
                to_sql(min_tid.0, "tid")?,
                to_sql(max_tid.0, "tid")?,
                limit(length)
            ],
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
        if max_tid < min_tid || length == Some(0) {
            return Ok(Vec::new());
        }
        let conv = |rows: Vec<(i64, i64)>| -> DbResult<Vec<(Tid, Oid)>> {
            rows.into_iter()
                .map(|(t, o)| Ok((Tid(from_sql(t, "tid")?), Oid(from_sql(o, "oid")?))))
                .collect()
        };
        let get = |r: &rusqlite::Row<'_>| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?));
        let min = to_sql(min_tid.0, "tid")?;
        let mut out = conv(self.rows(
            "SELECT tid, oid FROM obj WHERE partition=? AND tid=? AND ?<=oid \
             ORDER BY tid ASC, oid ASC LIMIT ?",
            params![partition, min, to_sql(min_oid.0, "oid")?, limit(length)],
            get,
        )?)?;
        let rest = match length {
            Some(l) => {
                let l = l.saturating_sub(out.len() as u64);
                if l == 0 {
                    return Ok(out);
                }
                Some(l)
            }
            None => None,
        };
        out.extend(conv(self.rows(
            "SELECT tid, oid FROM obj WHERE partition=? AND ?<tid AND tid<=? \
             ORDER BY tid ASC, oid ASC LIMIT ?",
            params![partition, min, to_sql(max_tid.0, "tid")?, limit(rest)],
            get,
        )?)?);
        Ok(out)
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
        let rows = self.rows(
            "SELECT tid, oid FROM obj WHERE partition=? AND tid<=? AND (tid>? OR tid=? AND oid>=?) \
             ORDER BY tid, oid LIMIT ?",
            params![
                partition,
                to_sql(max_tid.0, "tid")?,
                min,
                min,
                to_sql(min_oid.0, "oid")?,
                limit(length)
            ],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )?;
        let rows = rows
            .into_iter()
            .map(|(t, o)| Ok((from_sql(t, "tid")?, from_sql(o, "oid")?)))
            .collect::<DbResult<Vec<_>>>()?;
        Ok(serial_range_check(&rows))
    }

    fn delete_transaction(&mut self, tid: Tid) -> DbResult<()> {
        let p = self.view()?.partition(tid.0)?;
        let t = to_sql(tid.0, "tid")?;
        self.exec(
            "DELETE FROM pack WHERE tid=?",
            [t],
            "deleting a transaction",
        )?;
        self.exec(
            "DELETE FROM trans WHERE partition=? AND tid=?",
            params![p, t],
            "deleting a transaction",
        )?;
        Ok(())
    }

    fn delete_object(&mut self, oid: Oid, serial: Option<Tid>) -> DbResult<()> {
        let p = self.view()?.partition(oid.0)?;
        let o = to_sql(oid.0, "oid")?;
        let ids = match serial {
            None => {
                let ids = self.data_ids_of(
                    "SELECT DISTINCT data_id FROM obj WHERE partition=? AND oid=? AND data_id IS NOT NULL",
                    params![p, o],
                )?;
                self.exec(
                    "DELETE FROM obj WHERE partition=? AND oid=?",
                    params![p, o],
                    "deleting an object",
                )?;
                ids
            }
            Some(s) => {
                let s = to_sql(s.0, "tid")?;
                let ids = self.data_ids_of(
                    "SELECT DISTINCT data_id FROM obj WHERE partition=? AND oid=? AND tid=? AND data_id IS NOT NULL",
                    params![p, o, s],
                )?;
                self.exec(
                    "DELETE FROM obj WHERE partition=? AND oid=? AND tid=?",
                    params![p, o, s],
                    "deleting an object",
                )?;
                ids
            }
        };
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
        let mut filter = format!(" WHERE partition={partition}");
        if let Some(m) = min_tid {
            filter += &format!(" AND {} < tid", to_sql(m.0, "tid")?);
        }
        if let Some(m) = max_tid {
            filter += &format!(" AND tid <= {}", to_sql(m.0, "tid")?);
        }
        const CTX: &str = "deleting a range";
        self.exec_batch(
            &format!("DELETE FROM pack WHERE tid IN (SELECT tid FROM trans JOIN pack USING (tid){filter})"),
            CTX,
        )?;
        self.exec_batch(&format!("DELETE FROM trans{filter}"), CTX)?;
        let ids = self.data_ids_of(
            &format!("SELECT DISTINCT data_id FROM obj{filter} AND data_id IS NOT NULL"),
            [],
        )?;
        self.exec_batch(&format!("DELETE FROM obj{filter}"), CTX)?;
        self.prune_data(&ids)?;
        Ok(())
    }

    fn drop_partition_step(&mut self, partition: u32, count: u64) -> DbResult<DropStep> {
        let rows = self.rows(
            "SELECT oid, tid, data_id FROM obj WHERE partition=? ORDER BY tid, oid LIMIT ?",
            params![partition, limit(Some(count))],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                ))
            },
        )?;
        if !rows.is_empty() {
            let mut ids = BTreeSet::new();
            for (oid, tid, data_id) in rows {
                self.exec(
                    "DELETE FROM obj WHERE partition=? AND oid=? AND tid=?",
                    params![partition, oid, tid],
                    "dropping a partition",
                )?;
                if let Some(d) = data_id {
                    ids.insert(from_sql(d, "data_id")?);
                }
            }
            return Ok(DropStep::Objects(ids.into_iter().collect()));
        }
        self.exec(
            "DELETE FROM pack WHERE tid IN \
             (SELECT tid FROM trans JOIN pack USING (tid) WHERE partition=?)",
            [partition],
            "dropping a partition",
        )?;
        let n = self.exec(
            "DELETE FROM trans WHERE partition=?",
            [partition],
            "dropping a partition",
        )?;
        Ok(DropStep::Transactions(n as u64))
    }

    fn pack_orders(&mut self, min_completed: Tid) -> DbResult<Vec<PackOrder>> {
        let view = self.view()?.clone();
        if view.np == 0 {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT tid, approved, partial, oids, pack_tid FROM pack \
             WHERE tid >= ? AND tid % {} IN ({}) ORDER BY tid",
            view.np,
            in_list(view.readable.iter().map(|&p| u64::from(p)))
        );
        let rows = self.rows(&sql, [to_sql(min_completed.0, "tid")?], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<bool>>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, Option<Vec<u8>>>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })?;
        rows.into_iter()
            .map(|(id, approved, partial, oids, pack_tid)| {
                let id = from_sql(id, "pack id")?;
                Ok(PackOrder {
                    id: Tid(id),
                    approved,
                    partial,
                    oids: oids.map(|o| split_oids(id, &o)).transpose()?,
                    pack_tid: Tid(from_sql(pack_tid.unwrap_or(0), "pack tid")?),
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
        let changed = self.tids(&format!("SELECT tid FROM pack{filter}"), [])?;
        if !changed.is_empty() {
            self.exec_batch(
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
        let groups_sql = match scope {
            PackScope::From { min_oid, limit: l } => format!(
                "SELECT COUNT(*), oid, MAX(tid) FROM obj WHERE partition={partition} \
                 AND tid<={t} AND oid>={} GROUP BY oid ORDER BY oid LIMIT {}",
                to_sql(min_oid.0, "oid")?,
                limit(Some(l))
            ),
            PackScope::Oids(oids) => {
                let list = oids
                    .iter()
                    .map(|o| to_sql(o.0, "oid").map(|v| v as u64))
                    .collect::<DbResult<Vec<_>>>()?;
                format!(
                    "SELECT COUNT(*), oid, MAX(tid) FROM obj WHERE partition={partition} \
                     AND tid<={t} AND oid IN ({}) GROUP BY oid",
                    in_list(list)
                )
            }
        };
        let groups = self.rows(&groups_sql, [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut data_ids = std::collections::BTreeSet::new();
        let mut last = None;
        for (count, oid, max_tid) in groups {
            last = Some(oid);
            let latest = self.row(
                "SELECT data_id IS NULL FROM obj WHERE partition=? AND oid=? AND tid=?",
                params![partition, oid, max_tid],
                |r| r.get::<_, bool>(0),
            )?;
            let bound = match latest {
                Some(true) => max_tid.checked_add(1).ok_or(DbError::OutOfRange {
                    what: "tid",
                    value: max_tid as u64,
                })?,
                Some(false) if count > 1 => max_tid,
                _ => continue,
            };
            data_ids.extend(self.data_ids_of(
                "SELECT DISTINCT data_id FROM obj WHERE partition=? AND oid=? AND tid<?",
                params![partition, oid, bound],
            )?);
            self.exec(
                "DELETE FROM obj WHERE partition=? AND oid=? AND tid<?",
                params![partition, oid, bound],
                "packing",
            )?;
        }
        let ids: Vec<DataId> = data_ids.into_iter().collect();
        self.prune_data(&ids)?;
        let last = match scope {
            PackScope::From { .. } => opt_u64(last, "oid")?.map(Oid),
            PackScope::Oids(_) => None,
        };
        Ok((last, ids.len()))
    }
}
