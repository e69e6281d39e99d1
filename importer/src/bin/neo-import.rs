//! `neo-import importer.conf`: a whole local NEO cluster (master, a storage
//! node on the Importer backend, admin) in one process, serving the source
//! `Data.fs` to clients at once while it migrates it in the background into
//! the destination named in `importer.conf` (SQLite by default).
//!
//! It starts the cluster by itself, prints where clients and `neoctl`
//! connect, and shows the migration's progress (a bar on a terminal,
//! periodic lines otherwise). With `--exit-when-done` it stops once every
//! transaction is imported; otherwise it keeps serving until interrupted.
//! Several sources merged at mountpoints are served and imported too (see
//! `neo_importer::staging`). `neoctl -a ADMIN print summary` or `print
//! import` shows the progress; `--max-rate` limits the import's bandwidth.
//! To feed an existing cluster instead, run its storage node with
//! `neostorage -a Importer -d importer.conf -m MASTERS -c CLUSTER`.

use std::io::IsTerminal;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use neo_importer::{Adapter, Importer, ImporterConfig, Progress, ProgressWatch};
use neo_proto::Address;
use neo_server::admin::{Admin, AdminConfig};
use neo_server::config::parse_address;
use neo_server::master::{Master, MasterConfig};
use neo_server::runtime::{self, NodeHandle};
use neo_server::storage::cli::DEFAULT_BUSY_POLL;
use neo_server::storage::node::{StorageConfig, StorageNode};
use neo_server::storage::{Backend, MysqlBackend, MysqlOptions, SqliteOptions};

/// Serve a Data.fs through a local NEO cluster while importing it.
#[derive(Parser, Debug)]
#[command(name = "neo-import", version)]
struct Args {
    /// The importer configuration (NEO's importer.conf syntax).
    config: PathBuf,
    /// Cluster name.
    #[arg(short, long, default_value = "neo-import")]
    cluster: String,
    /// Address of the master (clients connect there).
    #[arg(short = 'm', long, default_value = "127.0.0.1:10000")]
    master: String,
    /// Address of the admin node (neoctl connects there).
    #[arg(short = 'a', long, default_value = "127.0.0.1:9999")]
    admin: String,
    /// Address of the storage node (port 0: any free port).
    #[arg(short = 's', long, default_value = "127.0.0.1:0")]
    storage: String,
    /// Number of partitions of a new database.
    #[arg(short, long, default_value_t = 12)]
    partitions: u32,
    /// Start the import from scratch (drop the destination's tables first).
    #[arg(long)]
    reset: bool,
    /// Import at most this many MB (10^6 bytes) of the source per second.
    #[arg(long, value_name = "MB/S")]
    max_rate: Option<f64>,
    /// Stop the cluster once everything is imported.
    #[arg(long)]
    exit_when_done: bool,
    /// Log to this file (default: warnings to stderr on a terminal, else
    /// everything at info level).
    #[arg(short, long)]
    logfile: Option<PathBuf>,
}

fn setup_logging(args: &Args, tty: bool) -> Result<(), String> {
    let default = if tty && args.logfile.is_none() {
        "warn"
    } else {
        "info"
    };
    let mut b =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    if let Some(path) = &args.logfile {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
        b.target(env_logger::Target::Pipe(Box::new(f)));
    }
    b.try_init().map_err(|e| e.to_string())
}

fn bind(what: &str, addr: &str) -> Result<(TcpListener, SocketAddr), String> {
    let a = parse_address(addr, Some(0)).map_err(|e| format!("{what}: {e}"))?;
    let l = TcpListener::bind(a).map_err(|e| format!("{what}: cannot bind {a}: {e}"))?;
    let a = l.local_addr().map_err(|e| e.to_string())?;
    Ok((l, a))
}

/// Starts the storage node on the import, returning its handle.
fn storage<B: Backend + Send + 'static>(
    cfg: StorageConfig,
    db: B,
    listener: TcpListener,
) -> Result<NodeHandle, String> {
    let node = StorageNode::new(cfg, db).map_err(|e| e.to_string())?;
    let io_threads = neo_server::storage::cli::default_io_threads();
    neo_server::storage::cli::spawn_node(node, listener, None, DEFAULT_BUSY_POLL, io_threads)
}

fn run(args: &Args) -> Result<(), String> {
    let tty = std::io::stderr().is_terminal();
    setup_logging(args, tty)?;
    let cfg = ImporterConfig::read(&args.config).map_err(|e| e.to_string())?;
    let (master_l, master_addr) = bind("master", &args.master)?;
    let (storage_l, storage_addr) = bind("storage", &args.storage)?;
    let (admin_l, admin_addr) = bind("admin", &args.admin)?;

    let master = Master::new(MasterConfig {
        cluster: args.cluster.clone(),
        address: Address::new(&master_addr.ip().to_string(), master_addr.port()),
        partitions: args.partitions,
        replicas: 0,
        // One storage node: start as soon as it is there.
        autostart: Some(1),
        nid: None,
    })
    .map_err(|e| e.to_string())?;
    let st_cfg = StorageConfig {
        cluster: args.cluster.clone(),
        masters: vec![master_addr],
        address: storage_addr,
        nid: None,
        database: format!("importer {}", args.config.display()),
        disable_pack: false,
    };
    let (watch, storage_handle): (ProgressWatch, NodeHandle) = match cfg.adapter {
        Adapter::Sqlite => {
            let opts = SqliteOptions {
                reset: args.reset,
                ..SqliteOptions::default()
            };
            let mut db = Importer::open_sqlite(&cfg, &opts).map_err(|e| e.to_string())?;
            db.set_max_rate(args.max_rate.map(|r| r * 1e6));
            (db.watch(), storage(st_cfg, db, storage_l)?)
        }
        Adapter::Mysql => {
            let opts = MysqlOptions {
                reset: args.reset,
                ..MysqlOptions::default()
            };
            let dest =
                MysqlBackend::open_database(&cfg.database, &opts).map_err(|e| e.to_string())?;
            let mut db = Importer::open(&cfg, dest).map_err(|e| e.to_string())?;
            db.set_max_rate(args.max_rate.map(|r| r * 1e6));
            (db.watch(), storage(st_cfg, db, storage_l)?)
        }
    };
    let master_handle = runtime::spawn(master, Some(master_l), None).map_err(|e| e.to_string())?;
    let admin = Admin::new(AdminConfig {
        cluster: args.cluster.clone(),
        masters: vec![master_addr],
        address: admin_addr,
        nid: None,
    });
    let admin_handle = runtime::spawn(admin, Some(admin_l), None).map_err(|e| e.to_string())?;

    eprintln!(
        "neo-import: cluster {:?} serving {} (master {master_addr}, storage {storage_addr}, admin {admin_addr})",
        args.cluster,
        args.config.display()
    );
    eprintln!(
        "  ZODB clients: neo.client.Storage(master_nodes='{master_addr}', name='{}')",
        args.cluster
    );
    eprintln!("  neoctl -a {admin_addr} print summary");

    let done = follow(&watch, tty);
    eprintln!("neo-import: {done}");
    if args.exit_when_done {
        // Every imported transaction is committed by the import step that
        // reported it; stop the nodes, storage last so no commit is cut.
        admin_handle.shutdown();
        master_handle.shutdown();
        storage_handle.shutdown();
        return Ok(());
    }
    eprintln!("neo-import: all data are imported; still serving (Ctrl-C to stop)");
    storage_handle.join();
    Ok(())
}

/// Shows the progress until the import finishes; returns the last state.
fn follow(watch: &ProgressWatch, tty: bool) -> Progress {
    let read = || watch.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let first = read();
    let bar = if tty {
        let b = ProgressBar::new(first.bytes_total);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} importing [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Some(b)
    } else {
        None
    };
    let mut last_line = Instant::now();
    loop {
        let p = read();
        if let Some(b) = &bar {
            b.set_length(p.bytes_total);
            b.set_position(p.bytes_done);
            b.set_message(format!("{}/{} txns", p.txns_done, p.txns_total));
        } else if last_line.elapsed() >= Duration::from_secs(10) {
            eprintln!("neo-import: {p}");
            last_line = Instant::now();
        }
        if p.finished {
            if let Some(b) = bar {
                b.finish();
            }
            return p;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("neo-import: {e}");
            ExitCode::FAILURE
        }
    }
}
