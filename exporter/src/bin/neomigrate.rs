//! `neomigrate`: NEO's FileStorage <-> cluster conversion tool, with its
//! options (`-c CLUSTER [-q] [-l LOGFILE] [--ca --cert --key] SOURCE
//! DESTINATION`). As NEO decides: if SOURCE is an existing file, it is a
//! FileStorage imported into the cluster whose masters are DESTINATION;
//! otherwise SOURCE is the masters and DESTINATION the FileStorage written
//! (by the `neo-export` engine: an existing file is extended).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use neo_exporter::cluster::TlsArgs;
use neo_exporter::progress::Bar;
use neo_exporter::{export, import_fs, ClusterSource, ExportOptions, NoProgress, Progress};
use neo_server::client::{Client, ClientConfig};
use neo_server::config::parse_master_list;

const IMPORT_WARNING: &str = "WARNING: This is not the recommended way to import data to NEO: \
you should use the Importer backend instead.\nThe packed status of transactions is not \
preserved (undo records are, as backpointers).";

/// NEO <-> FileStorage conversion tool.
#[derive(Debug, Parser)]
#[command(name = "neomigrate", version)]
struct Args {
    /// The NEO cluster name.
    #[arg(short = 'c', long)]
    cluster: String,
    /// Print nothing to standard output.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Log file (default: stderr, warnings only).
    #[arg(short = 'l', long)]
    logfile: Option<PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
    /// The source database: a FileStorage path, or the masters
    /// (space-separated HOST:PORT).
    source: String,
    /// The destination database: the masters, or a FileStorage path.
    destination: String,
}

fn init_log(args: &Args) -> Result<(), String> {
    let mut b = env_logger::Builder::new();
    match &args.logfile {
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("{}: {e}", p.display()))?;
            b.filter_level(log::LevelFilter::Info)
                .target(env_logger::Target::Pipe(Box::new(f)));
        }
        None => {
            b.filter_level(log::LevelFilter::Warn);
        }
    }
    b.parse_default_env().init();
    Ok(())
}

fn client_config(args: &Args, masters: &str) -> Result<ClientConfig, String> {
    let masters = parse_master_list(masters).map_err(|e| format!("{masters:?}: {e}"))?;
    let mut cfg = ClientConfig::new(masters, &args.cluster);
    args.tls.apply(&mut cfg)?;
    Ok(cfg)
}

fn progress(args: &Args) -> Box<dyn Progress> {
    if !args.quiet && std::io::stderr().is_terminal() {
        Box::new(Bar::new())
    } else {
        Box::new(NoProgress)
    }
}

/// FileStorage `source` -> the cluster at `masters`.
fn import(args: &Args, source: &Path, masters: &str) -> Result<String, String> {
    let cfg = client_config(args, masters)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the client runtime: {e}"))?;
    let client = rt
        .block_on(Client::connect(cfg))
        .map_err(|e| format!("connecting to cluster {:?}: {e}", args.cluster))?;
    let res = import_fs(&rt, &client, source, progress(args).as_mut());
    rt.block_on(client.close());
    let s = res.map_err(|e| e.to_string())?;
    Ok(format!(
        "{} transactions imported ({} records: {} undo, {} deletions; {} data bytes), \
         {} already in the cluster",
        s.transactions, s.records, s.backpointers, s.deletions, s.data_bytes, s.existing
    ))
}

/// The cluster at `masters` -> FileStorage `out`.
fn export_to(args: &Args, masters: &str, out: &Path) -> Result<String, String> {
    let cfg = client_config(args, masters)?;
    let mut source = ClusterSource::connect(cfg).map_err(|e| e.to_string())?;
    let s = export(
        &mut source,
        out,
        &ExportOptions::default(),
        progress(args).as_mut(),
    )
    .map_err(|e| e.to_string())?;
    Ok(format!(
        "{} transactions exported ({} records: {} backpointers, {} deletions), \
         {} already in the file",
        s.transactions, s.records, s.backpointers, s.deletions, s.existing
    ))
}

fn run(args: &Args) -> Result<(), String> {
    let to_neo = Path::new(&args.source).exists();
    if to_neo && !args.quiet {
        println!("{IMPORT_WARNING}");
    }
    if !args.quiet {
        println!("Migrating from {} to {}", args.source, args.destination);
    }
    let start = Instant::now();
    let done = if to_neo {
        import(args, Path::new(&args.source), &args.destination)?
    } else {
        export_to(args, &args.source, Path::new(&args.destination))?
    };
    log::info!("{done}");
    if !args.quiet {
        println!("{done}");
        println!("Migration done in {:3.5}", start.elapsed().as_secs_f64());
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = init_log(&args) {
        eprintln!("neomigrate: {e}");
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("neomigrate: error: {e}");
            ExitCode::FAILURE
        }
    }
}
