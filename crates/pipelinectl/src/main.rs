//! `pipelinectl`: tools for producers and operators of the event pipeline.

use clap::{CommandFactory, Parser};

/// Tools for the event pipeline.
#[derive(Parser)]
#[command(version)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    let _ = Cli::command().print_help();
}
