//! The `percore` command line.

use std::process::ExitCode;

use clap::{Args, Command, FromArgMatches};
use percore::config::{self, ConfigError};
use percore::loadgen::BenchArgs;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for a usage error (sysexits.h EX_USAGE).
const EX_USAGE: u8 = 64;

fn usage(error: &ConfigError) -> ExitCode {
    percore::app::usage("percore", error)
}

fn cli() -> Result<Command, ConfigError> {
    Ok(Command::new("percore")
        .version(env!("CARGO_PKG_VERSION"))
        .about("A thread-per-core, zero-copy HTTP/1.1 API server for Linux on io_uring.")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(config::serve_command(&[])?)
        .subcommand(
            BenchArgs::augment_args(Command::new("bench"))
                .about("Load an HTTP/1.1 server from pinned client cores on io_uring: closed loop, or open loop with --rate.")
                .after_help(percore::loadgen::AFTER_HELP),
        ))
}

fn main() -> ExitCode {
    let matches = match cli().and_then(|cli| Ok(cli.try_get_matches()?)) {
        Ok(matches) => matches,
        Err(error) => return usage(&error),
    };
    match matches.subcommand() {
        Some(("serve", matches)) => {
            // `percore serve` is one application composed on the library.
            let app = percore::api::percore();
            let routes: Vec<&str> = app.routes().into_iter().map(|(_, p)| p).collect();
            match config::from_matches(matches, app.options(), &routes) {
                Ok((config, values)) => percore::app::serve_config(app, &config, values),
                Err(error) => usage(&error),
            }
        }
        Some(("bench", matches)) => match BenchArgs::from_arg_matches(matches) {
            Ok(args) => ExitCode::from(percore::loadgen::command(&args)),
            Err(error) => usage(&ConfigError::Cli(error)),
        },
        _ => ExitCode::from(EX_USAGE),
    }
}
