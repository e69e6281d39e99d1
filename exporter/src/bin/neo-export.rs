//! `neo-export`: writes the history of a NEO storage database to a
//! `Data.fs`, resuming or extending an existing one.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};
use fsformat::Tid;
use neo_exporter::cluster::TlsArgs;
use neo_exporter::progress::{Bar, LogLines};
use neo_exporter::{
    export, BackendSource, ClusterSource, ExportOptions, NoProgress, Progress, Source,
    SqliteSource, MAX_TID,
};
use neo_server::client::ClientConfig;
use neo_server::config::parse_master_list;
use neo_server::storage::{MysqlBackend, MysqlOptions, SqliteBackend, SqliteOptions};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProgressKind {
    /// A bar on a terminal, log lines otherwise.
    Auto,
    /// Always a bar.
    Bar,
    /// Log lines every 10 s.
    Log,
    /// Nothing but the summary.
    None,
}

/// Export a NEO cluster (-m/-c), or a stopped storage node's database
/// (--database), to a FileStorage (Data.fs).
///
/// If OUT.fs exists, it must be a prefix of the database's history (the
/// same transactions, as checked on its first, last and a sample of its
/// transactions, or all with --verify-all): only the missing transactions
/// are appended. An interrupted export is continued the same way.
#[derive(Debug, Parser)]
#[command(name = "neo-export", version)]
struct Args {
    /// The storage node's database (SQLite: a path, or file:PATH?pragma=...).
    /// The storage node must be stopped; it must hold every partition.
    #[arg(
        short = 'd',
        long,
        required_unless_present = "masters",
        conflicts_with = "masters"
    )]
    database: Option<String>,
    /// Master nodes of the cluster to export (space-separated HOST:PORT).
    #[arg(short = 'm', long, requires = "cluster")]
    masters: Option<String>,
    /// Name of the cluster.
    #[arg(short = 'c', long)]
    cluster: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
    /// Database adapter: SQLite, or MySQL (--database
    /// [user[:password]@]database[unix_socket], as NEO).
    #[arg(short = 'a', long, default_value = "SQLite")]
    adapter: String,
    /// First tid to export (16 hex digits, 0x-prefixed hex, or decimal).
    #[arg(long, value_parser = parse_tid)]
    tid_min: Option<Tid>,
    /// Last tid to export.
    #[arg(long, value_parser = parse_tid)]
    tid_max: Option<Tid>,
    /// Compare every transaction of an existing OUT.fs with the database.
    #[arg(long)]
    verify_all: bool,
    /// fsync every this many MiB (resume points; always at the end).
    #[arg(long, default_value_t = 1024)]
    sync_every: u64,
    /// Progress report.
    #[arg(long, value_enum, default_value_t = ProgressKind::Auto)]
    progress: ProgressKind,
    /// Log file (default: stderr).
    #[arg(short = 'l', long)]
    logfile: Option<PathBuf>,
    /// More logging (-v: debug).
    #[arg(short = 'v', long, action = ArgAction::Count)]
    verbose: u8,
    /// Stop after this many transactions, as if interrupted (testing).
    #[arg(long, hide = true)]
    stop_after: Option<u64>,
    /// The FileStorage to write or extend.
    out: PathBuf,
}

fn parse_tid(s: &str) -> Result<Tid, String> {
    let v = if let Some(h) = s.strip_prefix("0x") {
        u64::from_str_radix(h, 16)
    } else if s.len() == 16 {
        u64::from_str_radix(s, 16)
    } else {
        s.parse()
    };
    v.map(Tid).map_err(|e| format!("invalid tid {s:?}: {e}"))
}

fn init_log(args: &Args) -> Result<(), String> {
    let level = match args.verbose {
        0 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    let mut b = env_logger::Builder::new();
    b.filter_level(level).parse_default_env();
    if let Some(p) = &args.logfile {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        b.target(env_logger::Target::Pipe(Box::new(f)));
    }
    b.init();
    Ok(())
}

fn open_source(args: &Args) -> Result<Box<dyn Source + Send>, String> {
    if let Some(masters) = &args.masters {
        let masters = parse_master_list(masters).map_err(|e| e.to_string())?;
        let cluster = args.cluster.as_deref().unwrap_or_default();
        let mut cfg = ClientConfig::new(masters, cluster);
        args.tls.apply(&mut cfg)?;
        return Ok(Box::new(
            ClusterSource::connect(cfg).map_err(|e| e.to_string())?,
        ));
    }
    let database = args.database.as_deref().unwrap_or_default();
    if args.adapter.eq_ignore_ascii_case("mysql") {
        // NEO's [user[:password]@]database[unix_socket]; read through the
        // generic Backend source.
        let db = MysqlBackend::open_database(database, &MysqlOptions::default())
            .map_err(|e| e.to_string())?;
        return Ok(Box::new(BackendSource::new(db).map_err(|e| e.to_string())?));
    }
    if !args.adapter.eq_ignore_ascii_case("sqlite") {
        return Err(format!(
            "adapter {:?} is not supported (SQLite or MySQL)",
            args.adapter
        ));
    }
    let (path, opts) = SqliteOptions::parse_database(database)?;
    if !path.is_file() {
        return Err(format!("{}: no such database", path.display()));
    }
    let db = SqliteBackend::open(&path, &opts).map_err(|e| e.to_string())?;
    Ok(Box::new(SqliteSource::new(db).map_err(|e| e.to_string())?))
}

fn run(args: Args) -> Result<(), String> {
    let mut source = open_source(&args)?;
    let opts = ExportOptions {
        tid_min: args.tid_min.unwrap_or(Tid(0)),
        tid_max: args.tid_max.unwrap_or(MAX_TID),
        verify_all: args.verify_all,
        sync_bytes: args.sync_every.max(1) << 20,
        stop_after: args.stop_after,
        ..ExportOptions::default()
    };
    let mut progress: Box<dyn Progress> = match args.progress {
        ProgressKind::Auto if std::io::stderr().is_terminal() && args.logfile.is_none() => {
            Box::new(Bar::new())
        }
        ProgressKind::Bar => Box::new(Bar::new()),
        ProgressKind::Auto | ProgressKind::Log => Box::new(LogLines::new(Duration::from_secs(10))),
        ProgressKind::None => Box::new(NoProgress),
    };
    let s =
        export(source.as_mut(), &args.out, &opts, progress.as_mut()).map_err(|e| e.to_string())?;
    let secs = s.elapsed.as_secs_f64().max(1e-6);
    println!(
        "{}: {} transactions appended ({} records: {} backpointers, {} deletions; {} data bytes), \
         {} already there ({} checked); {} bytes written in {:.2}s ({:.1} MB/s, {:.0} txn/s); \
         file size {}, last tid {}{}",
        args.out.display(),
        s.transactions,
        s.records,
        s.backpointers,
        s.deletions,
        s.data_bytes,
        s.existing,
        s.verified,
        s.file_bytes,
        secs,
        s.file_bytes as f64 / secs / 1e6,
        s.transactions as f64 / secs,
        s.file_size,
        s.last_tid.map_or("none".to_owned(), |t| t.to_string()),
        if s.complete { "" } else { " (stopped early)" }
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = init_log(&args) {
        eprintln!("neo-export: {e}");
        return ExitCode::from(2);
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("neo-export: error: {e}");
            ExitCode::FAILURE
        }
    }
}
