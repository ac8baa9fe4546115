//! Command line shared by every consumer binary.

use std::path::PathBuf;

use clap::Parser;

/// Options common to the consumer binaries.
#[derive(Debug, Parser)]
pub struct Args {
    /// Pipeline config file (TOML). Environment overrides: EVENTPIPE__SECTION__KEY, or
    /// <BINARY>__SECTION__KEY for this binary only.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Validate the config, print the effective config with secrets redacted, and exit.
    #[arg(long)]
    pub check: bool,
}
