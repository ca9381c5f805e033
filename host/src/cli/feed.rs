//! `dazaar feed ...`: create, append, inspect, read and import feeds.

use std::process::ExitCode;

use clap::Subcommand;

/// Feed commands.
#[derive(Debug, Subcommand)]
pub enum FeedCmd {}

/// Runs a feed command.
pub fn run(cmd: FeedCmd) -> anyhow::Result<ExitCode> {
    match cmd {}
}
