//! The `neostorage` command: NEO's options (`neo/storage/app.py`) and the
//! choice of database adapter, as a library so that the binary that links
//! every backend (the Importer lives in its own crate) shares it.
//!
//! Options: `-c` cluster, `-m` masters, `-b` bind, `-d` database, `-a`
//! adapter, `-f`/`-s` configuration file and section, `-l` log file,
//! `--ca/--cert/--key` TLS, `-i` node id, `--reset` (recreate the database
//! and exit), `--dedup`, `-w`, `-e`, `--disable-pack`,
//! `--disable-drop-partitions`, and ours: `--busy-poll` (see
//! [`runtime::Shell::busy_poll`]).

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{
    merged_args, parse_address, parse_master_list, parse_nid, setup_logging, tls_options,
};
use crate::runtime;
use crate::storage::node::{StorageConfig, StorageNode};
use crate::storage::{Backend, MysqlBackend, MysqlOptions, SqliteBackend, SqliteOptions};
use clap::{Arg, ArgAction, ArgMatches, Command};
use log::{error, info, warn};
use neo_proto::tls::TlsConfig;
use neo_proto::NodeType;

/// The command line of `neostorage`.
pub fn command() -> Command {
    let opt = |name: &'static str, help: &'static str| Arg::new(name).long(name).help(help);
    let flag = |name: &'static str, help: &'static str| {
        Arg::new(name)
            .long(name)
            .action(ArgAction::SetTrue)
            .help(help)
    };
    Command::new("neostorage")
        .about("NEO Storage node")
        .args_override_self(true)
        .arg(opt("file", "specify a configuration file").short('f'))
        .arg(opt("section", "specify a configuration section").short('s'))
        .arg(opt("cluster", "the cluster name").short('c').required(true))
        .arg(
            opt("masters", "space-separated list of master node addresses")
                .short('m')
                .default_value("127.0.0.1:10000"),
        )
        .arg(
            opt("bind", "the local address to bind to")
                .short('b')
                .default_value("127.0.0.1"),
        )
        .arg(opt("logfile", "log to this file instead of stderr").short('l'))
        .arg(opt("ca", "certificate authority in PEM format"))
        .arg(opt("cert", "certificate in PEM format"))
        .arg(opt("key", "private key in PEM format"))
        .arg(
            opt(
                "adapter",
                "database adapter to use (SQLite, MySQL, Importer)",
            )
            .short('a')
            .default_value("SQLite"),
        )
        .arg(
            opt("database", "database connections string")
                .short('d')
                .required(true),
        )
        .arg(
            opt(
                "wait",
                "seconds to wait for backend to be available, before erroring-out \
                 (-1 = infinite; MySQL only)",
            )
            .short('w')
            .value_parser(clap::value_parser!(f64)),
        )
        .arg(flag("disable-pack", "do not process any pack order"))
        .arg(flag(
            "disable-drop-partitions",
            "do not delete data of discarded cells (not implemented: refused)",
        ))
        .arg(flag(
            "new-nid",
            "request a new NID from a cluster that is already operational \
             (not implemented: refused)",
        ))
        .arg(
            opt(
                "nid",
                "specify an NID to use for this process (number, or S<n>)",
            )
            .short('i'),
        )
        .arg(opt("engine", "database engine (MySQL only)").short('e'))
        .arg(flag(
            "dedup",
            "enable deduplication of data when setting up a new storage node",
        ))
        .arg(flag(
            "reset",
            "remove an existing database if any, and exit",
        ))
        .arg(
            Arg::new("busy-poll")
                .long("busy-poll")
                .help(format!(
                    "microseconds the network thread keeps polling after a request \
                     before it sleeps (lower load latency for some CPU; 0: off; \
                     default {})",
                    DEFAULT_BUSY_POLL.as_micros()
                ))
                .value_parser(clap::value_parser!(u64)),
        )
        .arg(
            opt(
                "io-threads",
                "network threads; loads are answered on them (default: half the cores, 1 to 4)",
            )
            .value_parser(clap::value_parser!(u64).range(1..=64)),
        )
}

/// `--busy-poll`'s default.
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(200);

/// `--io-threads`' default: half the cores (the others for the node
/// thread, SQLite's writes and the system), 1 to 4.
pub fn default_io_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 2).clamp(1, 4)
}

fn tls(m: &ArgMatches) -> Result<Option<TlsConfig>, String> {
    let get = |k: &str| m.get_one::<String>(k).map(String::as_str);
    tls_options(get("ca"), get("cert"), get("key"))
}

/// What `neostorage` was asked to run, once the options are checked.
#[derive(Debug)]
pub struct StorageArgs {
    /// `-a`: SQLite, MySQL or Importer (as given).
    pub adapter: String,
    /// `-d`: the adapter's connection string.
    pub database: String,
    /// `--reset`: recreate the database, then exit.
    pub reset: bool,
    /// `--dedup`.
    pub dedup: bool,
    /// `-e`: MySQL engine.
    pub engine: Option<String>,
    /// `-w`: seconds to wait for the database server.
    pub wait: Option<f64>,
    /// `--busy-poll`.
    pub busy_poll: Duration,
    /// `--io-threads`.
    pub io_threads: usize,
    cfg: StorageConfig,
    bind: std::net::SocketAddr,
    tls: Option<TlsConfig>,
}

/// Parses `argv` (with the program name) like NEO, `neo.conf` included,
/// and sets up logging. Exits the process on `--help` or a usage error.
pub fn parse(argv: Vec<OsString>) -> Result<StorageArgs, String> {
    let cmd = command();
    let args = merged_args(&cmd, argv, "storage").map_err(|e| e.to_string())?;
    let m = match cmd.try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => e.exit(),
    };
    setup_logging(m.get_one::<String>("logfile").map(String::as_str))?;
    let get = |k: &str| m.get_one::<String>(k).map(String::as_str);
    let cluster = get("cluster").unwrap_or_default().to_owned();
    if cluster.is_empty() {
        return Err("cluster name must be non-empty".into());
    }
    if m.get_flag("new-nid") {
        return Err("--new-nid is not implemented".into());
    }
    if m.get_flag("disable-drop-partitions") {
        return Err("--disable-drop-partitions is not implemented".into());
    }
    let masters =
        parse_master_list(get("masters").unwrap_or_default()).map_err(|e| e.to_string())?;
    if masters.is_empty() {
        return Err("no master address".into());
    }
    let bind =
        parse_address(get("bind").unwrap_or("127.0.0.1"), Some(0)).map_err(|e| e.to_string())?;
    let nid = get("nid")
        .map(|s| parse_nid(s, NodeType::Storage))
        .transpose()?;
    let tls = tls(&m)?;
    let database = get("database").unwrap_or_default().to_owned();
    Ok(StorageArgs {
        adapter: get("adapter").unwrap_or("SQLite").to_owned(),
        reset: m.get_flag("reset"),
        dedup: m.get_flag("dedup"),
        engine: get("engine").map(str::to_owned),
        wait: m.get_one::<f64>("wait").copied(),
        cfg: StorageConfig {
            cluster,
            masters,
            // Known once bound, in `serve`.
            address: bind,
            nid,
            database: database.clone(),
            disable_pack: m.get_flag("disable-pack"),
        },
        database,
        bind,
        tls,
        io_threads: m
            .get_one::<u64>("io-threads")
            .map_or_else(default_io_threads, |&n| n as usize),
        busy_poll: m
            .get_one::<u64>("busy-poll")
            .map_or(DEFAULT_BUSY_POLL, |&us| Duration::from_micros(us)),
    })
}

/// Runs the storage node on `db` until it stops (or, with `--reset`,
/// returns once the database is recreated). `name` shows the database in
/// messages.
pub fn serve<B: Backend + Send + 'static>(
    mut args: StorageArgs,
    name: &str,
    db: B,
) -> Result<(), String> {
    let listener = std::net::TcpListener::bind(args.bind)
        .map_err(|e| format!("cannot bind {}: {e}", args.bind))?;
    args.cfg.address = listener.local_addr().map_err(|e| e.to_string())?;
    args.cfg.database = name.to_owned();
    let address = args.cfg.address;
    let node = StorageNode::new(args.cfg, db).map_err(|e| e.to_string())?;
    if args.reset {
        info!("{name}: database reset");
        return Ok(());
    }
    let exit = node.exit_report();
    info!("listening on {address}");
    let handle = spawn_node(node, listener, args.tls, args.busy_poll, args.io_threads)
        .map_err(|e| format!("{name}: {e}"))?;
    handle.join();
    match exit.failure() {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// Runs `node` on `listener`, its loads answered on the network thread when
/// its database has a reader (`StorageNode::load_path`), that thread
/// polling for `busy_poll` after each request.
pub fn spawn_node<B: Backend + Send + 'static>(
    mut node: StorageNode<B>,
    listener: std::net::TcpListener,
    tls: Option<TlsConfig>,
    busy_poll: Duration,
    io_threads: usize,
) -> Result<runtime::NodeHandle, String> {
    let fast_path = node.load_path(io_threads).map_err(|e| e.to_string())?;
    let shell = runtime::Shell {
        tls,
        fast_path: fast_path.map(|f| f as Arc<dyn runtime::FastPath>),
        busy_poll,
        io_threads,
    };
    runtime::spawn_with(node, Some(listener), shell).map_err(|e| e.to_string())
}

/// Opens the database of a built-in adapter (SQLite, MySQL) and serves it;
/// `Ok(None)` gives `args` back for an adapter this crate does not know.
pub fn serve_builtin(args: StorageArgs) -> Result<Option<StorageArgs>, String> {
    if args.adapter.eq_ignore_ascii_case("sqlite") {
        if args.engine.is_some() {
            warn!("--engine is for MySQL only: ignored");
        }
        let (path, mut opts) = SqliteOptions::parse_database(&args.database)?;
        if !opts.pragmas.iter().any(|(k, _)| k == "journal_mode") {
            // Our one default that is not NEO's (NEO leaves SQLite's rollback
            // journal): write-ahead logging, as durable with synchronous=FULL,
            // and a commit costs one sync instead of four syncs and an unlink;
            // the file stays NEO's (a `file:` URI with journal_mode=DELETE
            // turns it back).
            opts.pragmas.push(("journal_mode".into(), "WAL".into()));
        }
        opts.reset = args.reset;
        opts.dedup = args.dedup;
        let db = SqliteBackend::open(&path, &opts).map_err(|e| e.to_string())?;
        let name = path.display().to_string();
        serve(args, &name, db).map(|()| None)
    } else if args.adapter.eq_ignore_ascii_case("mysql") {
        let mut opts = MysqlOptions {
            reset: args.reset,
            dedup: args.dedup,
            ..MysqlOptions::default()
        };
        if let Some(e) = &args.engine {
            opts.engine = e.clone();
        }
        if let Some(w) = args.wait {
            opts.wait = w;
        }
        let db = MysqlBackend::open_database(&args.database, &opts).map_err(|e| e.to_string())?;
        let name = db.describe().to_owned();
        serve(args, &name, db).map(|()| None)
    } else {
        Ok(Some(args))
    }
}

/// Reports a fatal error like NEO: to the log (when it goes to a file) and
/// to stderr.
pub fn fail(e: &str) -> std::process::ExitCode {
    error!("{e}");
    eprintln!("neostorage: {e}");
    std::process::ExitCode::FAILURE
}
