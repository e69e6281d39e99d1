//! `neostorage`: the NEO storage node, on NEO's SQLite database.
//!
//! Options as NEO's (`neo/storage/app.py`): `-c` cluster, `-m` masters,
//! `-b` bind, `-d` database, `-a` adapter (only SQLite here), `-f`/`-s`
//! configuration file and section, `-l` log file, `--ca/--cert/--key` TLS,
//! `-i` node id, `--reset` (recreate the database and exit), `--dedup`,
//! `-w`, `-e`, `--disable-pack`, `--disable-drop-partitions`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Arg, ArgAction, ArgMatches, Command};
use log::{error, info, warn};
use neo_proto::tls::TlsConfig;
use neo_proto::{NodeId, NodeType};
use neo_server::config::{merged_args, parse_address, parse_master_list};
use neo_server::runtime;
use neo_server::storage::node::{StorageConfig, StorageNode};
use neo_server::storage::{SqliteBackend, SqliteOptions};

fn command() -> Command {
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
            opt("adapter", "database adapter to use")
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
                 (-1 = infinite; ignored by SQLite)",
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
}

fn setup_logging(m: &ArgMatches) -> Result<(), String> {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if let Some(path) = m.get_one::<String>("logfile") {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open log file {path}: {e}"))?;
        b.target(env_logger::Target::Pipe(Box::new(f)));
    }
    b.try_init().map_err(|e| e.to_string())
}

/// `-i`: a storage node id, as a number (NEO's int) or as shown (`S1`).
fn parse_nid(s: &str) -> Result<NodeId, String> {
    let n = match s.strip_prefix('S') {
        Some(n) => n
            .parse::<u32>()
            .map(|n| NodeId::new(NodeType::Storage, n))
            .ok(),
        None => s.parse::<i32>().ok().map(NodeId),
    };
    match n {
        Some(n) if n.node_type() == Some(NodeType::Storage) && n.0 != 0 => Ok(n),
        _ => Err(format!("invalid storage node id: {s:?}")),
    }
}

fn tls(m: &ArgMatches) -> Result<Option<TlsConfig>, String> {
    match (
        m.get_one::<String>("ca"),
        m.get_one::<String>("cert"),
        m.get_one::<String>("key"),
    ) {
        (Some(ca), Some(cert), Some(key)) => TlsConfig::from_pem_files(
            &PathBuf::from(ca),
            &PathBuf::from(cert),
            &PathBuf::from(key),
        )
        .map(Some)
        .map_err(|e| e.to_string()),
        (None, None, None) => Ok(None),
        _ => Err(
            "To enable encryption, 3 files must be provided: the CA certificate, \
                  and the certificate of this node with its private key."
                .into(),
        ),
    }
}

fn run(m: &ArgMatches) -> Result<(), String> {
    setup_logging(m)?;
    let get = |k: &str| m.get_one::<String>(k).map(String::as_str);
    let cluster = get("cluster").unwrap_or_default().to_owned();
    if cluster.is_empty() {
        return Err("cluster name must be non-empty".into());
    }
    let adapter = get("adapter").unwrap_or("SQLite");
    if !adapter.eq_ignore_ascii_case("sqlite") {
        return Err(format!(
            "adapter {adapter:?} is not supported (only SQLite)"
        ));
    }
    if m.get_flag("new-nid") {
        return Err("--new-nid is not implemented".into());
    }
    if m.get_flag("disable-drop-partitions") {
        return Err("--disable-drop-partitions is not implemented".into());
    }
    if get("engine").is_some() {
        warn!("--engine is for MySQL only: ignored");
    }
    let masters =
        parse_master_list(get("masters").unwrap_or_default()).map_err(|e| e.to_string())?;
    if masters.is_empty() {
        return Err("no master address".into());
    }
    let bind =
        parse_address(get("bind").unwrap_or("127.0.0.1"), Some(0)).map_err(|e| e.to_string())?;
    let nid = get("nid").map(parse_nid).transpose()?;
    let tls = tls(m)?;
    let database = get("database").unwrap_or_default();
    let (path, mut opts) = SqliteOptions::parse_database(database)?;
    opts.reset = m.get_flag("reset");
    opts.dedup = m.get_flag("dedup");
    let db = SqliteBackend::open(&path, &opts).map_err(|e| e.to_string())?;
    let listener =
        std::net::TcpListener::bind(bind).map_err(|e| format!("cannot bind {bind}: {e}"))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let cfg = StorageConfig {
        cluster,
        masters,
        address,
        nid,
        database: path.display().to_string(),
        disable_pack: m.get_flag("disable-pack"),
    };
    let node = StorageNode::new(cfg, db).map_err(|e| e.to_string())?;
    if opts.reset {
        info!("{}: database reset", path.display());
        return Ok(());
    }
    let exit = node.exit_report();
    info!("listening on {address}");
    let handle = runtime::spawn(node, Some(listener), tls).map_err(|e| e.to_string())?;
    handle.join();
    match exit.failure() {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cmd = command();
    let args = match merged_args(&cmd, argv, "storage") {
        Ok(a) => a,
        Err(e) => {
            eprintln!("neostorage: {e}");
            return ExitCode::from(2);
        }
    };
    let m = match cmd.try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => e.exit(),
    };
    match run(&m) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if m.contains_id("logfile") {
                error!("{e}");
            }
            eprintln!("neostorage: {e}");
            ExitCode::FAILURE
        }
    }
}
