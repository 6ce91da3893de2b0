//! The `percore` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use percore::config::ServeArgs;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for a usage or configuration error (sysexits.h EX_USAGE).
const EX_USAGE: u8 = 64;

/// A thread-per-core, zero-copy HTTP/1.1 API server for Linux on io_uring.
#[derive(Debug, Parser)]
#[command(name = "percore", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Serve HTTP: one io core per CPU, each with its own SO_REUSEPORT listener.
    Serve(ServeArgs),
    /// Load an HTTP/1.1 server from pinned client cores on io_uring: closed loop, or open loop with --rate.
    #[command(after_help = percore::loadgen::AFTER_HELP)]
    Bench(percore::loadgen::BenchArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            // --help and --version.
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(EX_USAGE);
        }
    };
    match cli.command {
        Command::Serve(args) => percore::app::serve_args(percore::api::percore(), &args),
        Command::Bench(args) => ExitCode::from(percore::loadgen::command(&args)),
    }
}
