//! `neostorage`: the NEO storage node, with every database adapter:
//! SQLite (the default), MySQL, and the Importer (`-a Importer -d
//! importer.conf`: serve a `Data.fs` live while migrating it into the
//! destination named in `importer.conf`). NEO's options: see
//! `neo_server::storage::cli`. It is built by this crate because it is the
//! one that links every backend.

use std::path::Path;
use std::process::ExitCode;

use neo_importer::config::Adapter;
use neo_importer::{Importer, ImporterConfig};
use neo_server::storage::cli;
use neo_server::storage::{MysqlBackend, MysqlOptions, SqliteOptions};

fn main() -> ExitCode {
    let run = || {
        let args = cli::parse(std::env::args_os().collect())?;
        let Some(args) = cli::serve_builtin(args)? else {
            return Ok(());
        };
        if !args.adapter.eq_ignore_ascii_case("importer") {
            return Err(format!(
                "unknown adapter {:?} (SQLite, MySQL, Importer)",
                args.adapter
            ));
        }
        let path = Path::new(&args.database);
        let cfg = ImporterConfig::read(path).map_err(|e| e.to_string())?;
        let name = format!("importer {}", path.display());
        match cfg.adapter {
            Adapter::Sqlite => {
                let opts = SqliteOptions {
                    reset: args.reset,
                    dedup: args.dedup,
                    ..SqliteOptions::default()
                };
                let db = Importer::open_sqlite(&cfg, &opts).map_err(|e| e.to_string())?;
                cli::serve(args, &name, db)
            }
            Adapter::Mysql => {
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
                let dest =
                    MysqlBackend::open_database(&cfg.database, &opts).map_err(|e| e.to_string())?;
                let db = Importer::open(&cfg, dest).map_err(|e| e.to_string())?;
                cli::serve(args, &name, db)
            }
        }
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cli::fail(&e),
    }
}
