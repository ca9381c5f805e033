//! `dazaar config check [FILE]`: parse the file, then load each payment plugin it names
//! and let the plugin check its own table.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use dazaar::payments::PluginRegistry;

/// Configuration commands.
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Check a configuration file and the plugin settings in it.
    Check {
        /// The file (default: ./dazaar.toml).
        file: Option<PathBuf>,
    },
}

/// How long a plugin may take to check its table.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a configuration command.
pub fn run(cmd: ConfigCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCmd::Check { file } => {
            let file = file.unwrap_or_else(|| PathBuf::from("dazaar.toml"));
            let settings = dazaar::config::load(&file)?;
            let mut registry = PluginRegistry::new();
            let problems = settings.check_plugins(&mut registry, CHECK_TIMEOUT);
            let entries: usize = settings.sell.iter().map(|s| s.payment.len()).sum::<usize>()
                + settings.buy.payment.len();
            if problems.is_empty() {
                println!(
                    "{}: ok ({} products, {} payment entries)",
                    file.display(),
                    settings.sell.len(),
                    entries
                );
                Ok(ExitCode::SUCCESS)
            } else {
                for p in &problems {
                    eprintln!("{p}");
                }
                Ok(ExitCode::FAILURE)
            }
        }
    }
}
