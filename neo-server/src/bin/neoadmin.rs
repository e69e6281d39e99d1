//! `neoadmin`: the NEO admin node. Options as NEO's (`-c` cluster, `-m`
//! masters, `-b` bind, `-f`/`-s` config file and section, `-l` log file,
//! `--ca/--cert/--key` TLS, `-i` node id).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Arg, ArgMatches, Command};
use log::{error, info};
use neo_proto::tls::TlsConfig;
use neo_proto::NodeId;
use neo_server::admin::{Admin, AdminConfig};
use neo_server::config::{merged_args, parse_address, parse_master_list};

fn command() -> Command {
    Command::new("neoadmin")
        .about("NEO Admin node")
        .args_override_self(true)
        .arg(
            Arg::new("file")
                .short('f')
                .long("file")
                .help("specify a configuration file"),
        )
        .arg(
            Arg::new("section")
                .short('s')
                .long("section")
                .help("specify a configuration section"),
        )
        .arg(
            Arg::new("cluster")
                .short('c')
                .long("cluster")
                .required(true)
                .help("the cluster name"),
        )
        .arg(
            Arg::new("masters")
                .short('m')
                .long("masters")
                .default_value("127.0.0.1:10000")
                .help("space-separated list of master node addresses"),
        )
        .arg(
            Arg::new("bind")
                .short('b')
                .long("bind")
                .default_value("127.0.0.1:9999")
                .help("the local address to bind to"),
        )
        .arg(
            Arg::new("logfile")
                .short('l')
                .long("logfile")
                .help("log debugging information to specified SQLite DB"),
        )
        .arg(
            Arg::new("ca")
                .long("ca")
                .help("certificate authority in PEM format"),
        )
        .arg(
            Arg::new("cert")
                .long("cert")
                .help("certificate in PEM format"),
        )
        .arg(
            Arg::new("key")
                .long("key")
                .help("private key in PEM format"),
        )
        .arg(
            Arg::new("nid")
                .short('i')
                .long("nid")
                .value_parser(clap::value_parser!(i32))
                .help("specify an NID to use for this process (testing purpose)"),
        )
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

fn run(m: &ArgMatches) -> Result<(), String> {
    setup_logging(m)?;
    let cluster = m.get_one::<String>("cluster").cloned().unwrap_or_default();
    if cluster.is_empty() {
        return Err("cluster name must be non-empty".into());
    }
    let masters = parse_master_list(m.get_one::<String>("masters").map_or("", |s| s))
        .map_err(|e| e.to_string())?;
    let bind = parse_address(m.get_one::<String>("bind").map_or("", |s| s), Some(0))
        .map_err(|e| e.to_string())?;
    let tls = match (
        m.get_one::<String>("ca"),
        m.get_one::<String>("cert"),
        m.get_one::<String>("key"),
    ) {
        (Some(ca), Some(cert), Some(key)) => Some(
            TlsConfig::from_pem_files(&PathBuf::from(ca), &PathBuf::from(cert), &PathBuf::from(key))
                .map_err(|e| e.to_string())?,
        ),
        (None, None, None) => None,
        _ => return Err("To enable encryption, 3 files must be provided: the CA certificate, and the certificate of this node with its private key.".into()),
    };
    let listener =
        std::net::TcpListener::bind(bind).map_err(|e| format!("cannot bind {bind}: {e}"))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    info!("admin node listening on {address} for cluster {cluster:?}");
    let admin = Admin::new(AdminConfig {
        cluster,
        masters,
        address,
        nid: m.get_one::<i32>("nid").map(|n| NodeId(*n)),
    });
    let report = admin.exit_report();
    let handle = neo_server::runtime::spawn(admin, Some(listener), tls)
        .map_err(|e| format!("cannot start: {e}"))?;
    handle.join();
    let failure = report.lock().unwrap_or_else(|e| e.into_inner()).take();
    match failure {
        Some(why) => Err(why),
        None => {
            info!("admin node stopped");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cmd = command();
    let argv: Vec<OsString> = std::env::args_os().collect();
    let args = match merged_args(&cmd, argv, "admin") {
        Ok(a) => a,
        Err(e) => {
            eprintln!("neoadmin: {e}");
            return ExitCode::from(2);
        }
    };
    let m = cmd.get_matches_from(args);
    match run(&m) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("neoadmin: {e}");
            ExitCode::FAILURE
        }
    }
}
