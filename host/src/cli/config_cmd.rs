//! `dazaar config check [FILE]`: parse the file, then load each payment plugin it names
//! and let the plugin check its own table.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use dazaar::payments::{PaymentError, PluginRegistry};

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
            let mut problems = Vec::new();
            let mut check = |plugin: &str,
                             method: Option<&str>,
                             currency: Option<&str>,
                             config: &str,
                             line: usize| {
                let at = format!("{}:{line}", file.display());
                let loaded = match registry.load_named(&settings.plugin_dir, plugin) {
                    Ok(p) => p,
                    Err(e) => {
                        problems.push(format!("{at}: {e}"));
                        return;
                    }
                };
                if let (Some(m), Some(c)) = (method, currency) {
                    if !loaded.serves(m, c) {
                        problems.push(format!(
                            "{at}: plugin `{plugin}` does not serve method `{m}` with currency `{c}`"
                        ));
                    }
                }
                match loaded.check_config(config, CHECK_TIMEOUT) {
                    Ok(()) => {}
                    Err(PaymentError::MissingFunction { .. }) => {
                        tracing::warn!(plugin, "plugin is too old to check its settings; skipped");
                    }
                    Err(e) => problems.push(format!("{at}: settings for plugin {e}")),
                }
            };
            let mut entries = 0;
            for sell in &settings.sell {
                for p in &sell.payment {
                    entries += 1;
                    check(
                        &p.plugin,
                        p.method.as_deref(),
                        Some(p.terms.currency.as_str()),
                        &p.config,
                        p.line,
                    );
                }
            }
            for p in &settings.buy.payment {
                entries += 1;
                check(&p.plugin, None, None, &p.config, p.line);
            }
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
