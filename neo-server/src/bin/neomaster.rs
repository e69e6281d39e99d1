//! `neomaster`: the NEO master node; with other masters (`-m`), the primary
//! is elected among them and the others wait as secondaries to take over.
//!
//! Options as NEO's (`neo/master/app.py`): `-c` cluster, `-b` bind
//! (default `127.0.0.1:10000`), `-m` the masters of the cluster (ours may
//! be listed), `-A` autostart, `-r` replicas, `-p` partitions, `-i` node id,
//! `-f`/`-s` configuration file and section (default section `master`),
//! `-l` log file, `--ca/--cert/--key` TLS. `-C`/`-M` (`upstream_cluster`,
//! `upstream_masters` in neo.conf) name the cluster to back up with `neoctl
//! set cluster STARTING_BACKUP`; with `-B` an empty cluster backs up at once.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Arg, ArgAction, ArgMatches, Command};
use log::{error, info};
use neo_proto::tls::TlsConfig;
use neo_proto::{Address, NodeType};
use neo_server::config::{
    merged_args, parse_address, parse_master_list, parse_nid, setup_logging, tls_options,
};
use neo_server::master::{Master, MasterConfig};
use neo_server::runtime;

fn command() -> Command {
    let opt = |name: &'static str, help: &'static str| Arg::new(name).long(name).help(help);
    Command::new("neomaster")
        .about("NEO Master node")
        .args_override_self(true)
        .arg(opt("file", "specify a configuration file").short('f'))
        .arg(opt("section", "specify a configuration section").short('s'))
        .arg(opt("cluster", "the cluster name").short('c').required(true))
        .arg(
            opt("masters", "space-separated list of master node addresses")
                .short('m')
                .default_value(""),
        )
        .arg(
            opt("bind", "the local address to bind to")
                .short('b')
                .default_value("127.0.0.1:10000"),
        )
        .arg(
            opt(
                "dynamic-master-list",
                "path of the file containing dynamic master node list (ignored)",
            )
            .short('D'),
        )
        .arg(opt("logfile", "log to this file instead of stderr").short('l'))
        .arg(opt("ca", "(SSL) certificate authority in PEM format"))
        .arg(opt("cert", "(SSL) certificate in PEM format"))
        .arg(opt("key", "(SSL) private key in PEM format"))
        .arg(
            opt(
                "autostart",
                "minimum number of pending storage nodes to automatically start new \
                 cluster (to avoid unwanted recreation of the cluster, this should be \
                 the total number of storage nodes)",
            )
            .short('A')
            .value_parser(clap::value_parser!(usize)),
        )
        .arg(opt("upstream-cluster", "the name of cluster to backup").short('C'))
        .arg(
            opt(
                "upstream-masters",
                "list of master nodes in the cluster to backup",
            )
            .short('M'),
        )
        .arg(
            Arg::new("backup")
                .long("backup")
                .short('B')
                .action(ArgAction::SetTrue)
                .help("transition automatically toward BACKINGUP"),
        )
        .arg(
            opt(
                "nid",
                "specify an NID to use for this process (number, or M<n>)",
            )
            .short('i'),
        )
        .arg(
            opt("replicas", "replicas number")
                .short('r')
                .default_value("0")
                .value_parser(clap::value_parser!(u32)),
        )
        .arg(
            opt("partitions", "partitions number")
                .short('p')
                .default_value("100")
                .value_parser(clap::value_parser!(u32)),
        )
}

fn tls(m: &ArgMatches) -> Result<Option<TlsConfig>, String> {
    let get = |k: &str| m.get_one::<String>(k).map(String::as_str);
    tls_options(get("ca"), get("cert"), get("key"))
}

/// The cluster to back up: `-C` and `-M` go together, and the upstream
/// cluster has another name than ours (as NEO checks).
fn upstream(
    cluster: Option<&str>,
    masters: Option<&str>,
    ours: &str,
) -> Result<Option<(String, Vec<std::net::SocketAddr>)>, String> {
    match (cluster, masters) {
        (None, None) => Ok(None),
        (Some(name), Some(masters)) => {
            if name == ours {
                return Err("upstream cluster name must be different".into());
            }
            let list = parse_master_list(masters).map_err(|e| e.to_string())?;
            if list.is_empty() {
                return Err("no upstream master".into());
            }
            Ok(Some((name.to_owned(), list)))
        }
        _ => Err("--upstream-cluster and --upstream-masters go together".into()),
    }
}

fn run(m: &ArgMatches) -> Result<(), String> {
    setup_logging(m.get_one::<String>("logfile").map(String::as_str))?;
    let get = |k: &str| m.get_one::<String>(k).map(String::as_str);
    let cluster = get("cluster").unwrap_or_default().to_owned();
    if cluster.is_empty() {
        return Err("cluster name must be non-empty".into());
    }
    let upstream = upstream(get("upstream-cluster"), get("upstream-masters"), &cluster)?;
    let at_once = m.get_flag("backup");
    if at_once && upstream.is_none() {
        return Err("--backup needs --upstream-cluster and --upstream-masters".into());
    }
    let partitions = m.get_one::<u32>("partitions").copied().unwrap_or(100);
    if partitions == 0 {
        return Err("partitions must be more than zero".into());
    }
    let replicas = m.get_one::<u32>("replicas").copied().unwrap_or(0);
    let bind = parse_address(get("bind").unwrap_or("127.0.0.1:10000"), Some(0))
        .map_err(|e| e.to_string())?;
    let others =
        parse_master_list(get("masters").unwrap_or_default()).map_err(|e| e.to_string())?;
    let nid = get("nid")
        .map(|s| parse_nid(s, NodeType::Master))
        .transpose()?;
    let tls = tls(m)?;
    let listener =
        std::net::TcpListener::bind(bind).map_err(|e| format!("cannot bind {bind}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    info!("Configuration:");
    info!("Partitions: {partitions}");
    info!("Replicas  : {replicas}");
    info!("Name      : {cluster}");
    let cfg = MasterConfig {
        cluster,
        address: Address::new(&local.ip().to_string(), local.port()),
        partitions,
        replicas,
        autostart: m.get_one::<usize>("autostart").copied(),
        nid,
    };
    let node = Master::new(cfg)
        .map_err(|e| e.to_string())?
        .with_masters(others);
    let node = match upstream {
        Some((name, masters)) => {
            info!("Upstream  : {name} {masters:?}");
            let node = node.with_upstream(name, masters);
            if at_once {
                node.with_backup_at_once()
            } else {
                node
            }
        }
        None => node,
    };
    info!("listening on {local}");
    let handle = runtime::spawn(node, Some(listener), tls).map_err(|e| e.to_string())?;
    handle.join();
    info!("master stopped");
    Ok(())
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cmd = command();
    let args = match merged_args(&cmd, argv, "master") {
        Ok(a) => a,
        Err(e) => {
            eprintln!("neomaster: {e}");
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
            eprintln!("neomaster: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(conf: Option<&str>, args: &[&str]) -> ArgMatches {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut argv: Vec<OsString> = vec!["neomaster".into()];
        if let Some(text) = conf {
            let path = dir.path().join("neo.conf");
            std::fs::write(&path, text).expect("write conf");
            argv.push("-f".into());
            argv.push(path.into_os_string());
        }
        argv.extend(args.iter().map(OsString::from));
        let cmd = command();
        let merged = merged_args(&cmd, argv, "master").expect("merged");
        cmd.try_get_matches_from(merged).expect("valid arguments")
    }

    #[test]
    fn options_like_neo() {
        let m = matches(None, &["-c", "test", "-p", "4", "-r", "1", "-A", "2"]);
        assert_eq!(
            m.get_one::<String>("cluster").map(String::as_str),
            Some("test")
        );
        assert_eq!(m.get_one::<u32>("partitions"), Some(&4));
        assert_eq!(m.get_one::<u32>("replicas"), Some(&1));
        assert_eq!(m.get_one::<usize>("autostart"), Some(&2));
        assert_eq!(
            m.get_one::<String>("bind").map(String::as_str),
            Some("127.0.0.1:10000")
        );
        let m = matches(None, &["-c", "test"]);
        assert_eq!(m.get_one::<u32>("partitions"), Some(&100));
        assert_eq!(m.get_one::<u32>("replicas"), Some(&0));
        assert!(command().try_get_matches_from(["neomaster"]).is_err());
    }

    #[test]
    fn neo_conf_master_section_and_command_line_wins() {
        let conf = "[DEFAULT]\ncluster: prod\nmasters: 127.0.0.1:10000\n\
                    [master]\nbind: 127.0.0.1:10010\npartitions: 12\nautostart: 3\n\
                    [storage]\nbind: 127.0.0.1:20000\n";
        let m = matches(Some(conf), &["-p", "7"]);
        assert_eq!(
            m.get_one::<String>("cluster").map(String::as_str),
            Some("prod")
        );
        assert_eq!(
            m.get_one::<String>("bind").map(String::as_str),
            Some("127.0.0.1:10010")
        );
        assert_eq!(m.get_one::<u32>("partitions"), Some(&7));
        assert_eq!(m.get_one::<usize>("autostart"), Some(&3));
    }

    #[test]
    fn upstream_options() {
        let conf = "[master]\ncluster: backup\nupstream_cluster: main\n\
                    upstream_masters: 127.0.0.1:10000 127.0.0.1:10001\n";
        let m = matches(Some(conf), &[]);
        let get = |k: &str| m.get_one::<String>(k).map(String::as_str);
        let (name, masters) = upstream(get("upstream-cluster"), get("upstream-masters"), "backup")
            .expect("valid")
            .expect("upstream");
        assert_eq!(name, "main");
        assert_eq!(masters.len(), 2);
        let m = matches(None, &["-c", "b", "-C", "main", "-M", "127.0.0.1:10000"]);
        let get = |k: &str| m.get_one::<String>(k).map(String::as_str);
        assert!(
            upstream(get("upstream-cluster"), get("upstream-masters"), "b")
                .expect("valid")
                .is_some()
        );
        assert!(upstream(Some("b"), Some("127.0.0.1:1"), "b").is_err());
        assert!(upstream(Some("main"), None, "b").is_err());
        assert_eq!(upstream(None, None, "b"), Ok(None));
    }
}
