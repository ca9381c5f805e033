//! `dazaar config check [FILE]`: parse the file, then load each payment plugin it names
//! and let the plugin check its own table. `dazaar config init [PATH]`: write the
//! commented example.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;

use super::common::Common;

/// Configuration commands.
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Check a configuration file and the plugin settings in it.
    Check {
        /// The file (default: the one dazaar uses: --config, $DAZAAR_CONFIG,
        /// ./dazaar.toml, $XDG_CONFIG_HOME/dazaar/dazaar.toml, /etc/dazaar/dazaar.toml).
        file: Option<PathBuf>,
    },
    /// Write a commented example configuration covering every key.
    Init {
        /// Where (default: ./dazaar.toml); `-` prints it.
        path: Option<PathBuf>,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
}

/// How long a plugin may take to check its table.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a configuration command.
pub fn run(common: &Common, cmd: ConfigCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCmd::Init { path, force } => init(path, force),
        ConfigCmd::Check { file } => {
            let Some(file) = file.or_else(|| common.config_file()) else {
                let looked: Vec<String> = dazaar::config::candidates(None, |k| std::env::var_os(k))
                    .iter()
                    .map(|c| c.path.display().to_string())
                    .collect();
                anyhow::bail!("no configuration file (looked at {})", looked.join(", "));
            };
            let settings = dazaar::config::load(&file)?;
            let mut registry = common.plugin_registry(None, Some(&settings));
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

/// Writes [`dazaar::config::EXAMPLE`] to `path` (default ./dazaar.toml; `-`: stdout),
/// never over an existing file unless `force`.
fn init(path: Option<PathBuf>, force: bool) -> anyhow::Result<ExitCode> {
    let path = path.unwrap_or_else(|| PathBuf::from("dazaar.toml"));
    if path.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        out.write_all(dazaar::config::EXAMPLE.as_bytes())
            .and_then(|()| out.flush())
            .context("writing the example")?;
        return Ok(ExitCode::SUCCESS);
    }
    if path.exists() && !force {
        anyhow::bail!("{}: already exists (--force replaces it)", path.display());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    dazaar::fs_atomic::write_file_atomic(&path, dazaar::config::EXAMPLE.as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))?;
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}
