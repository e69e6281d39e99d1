//! `neostorage`: the NEO storage node on a built-in database adapter
//! (SQLite, MySQL). The options are NEO's: see `neo_server::storage::cli`.
//! The Importer adapter is served by `neo-import --storage` (crate
//! `neo-importer`), which shares this command line.

use std::process::ExitCode;

use neo_server::storage::cli;

fn main() -> ExitCode {
    let run = || {
        let args = cli::parse(std::env::args_os().collect())?;
        match cli::serve_builtin(args)? {
            None => Ok(()),
            Some(args) => Err(format!(
                "adapter {:?} is not supported by this binary (SQLite, MySQL; \
                 the Importer: neo-import --storage)",
                args.adapter
            )),
        }
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cli::fail(&e),
    }
}
