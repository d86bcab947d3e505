//! The `tierkeep` binary: argument parsing, logging set-up and one call into the CLI.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(&args);
    cli::main(args)
}
