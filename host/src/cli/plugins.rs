//! `dazaar plugins ...` (list, check) and `dazaar ledger add`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use dazaar::payments::{now_ms, LoadedPlugin, PluginRegistry};
use dazaar_plugin_api::parse_key;

use super::common::Common;

/// Plugin commands.
#[derive(Debug, Subcommand)]
pub enum PluginsCmd {
    /// List the plugins in the plugin directory, and the files that failed to load.
    List {
        /// The plugin directory (default: `plugin_dir` of the config, else ./plugins).
        #[arg(long, value_name = "DIR")]
        plugin_dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Load one plugin file and report what it is, or why it is refused.
    Check {
        /// The library file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Ledger commands.
#[derive(Debug, Subcommand)]
pub enum LedgerCmd {
    /// Append a payment to a ledger file (JSON lines; created if missing).
    Add {
        /// The ledger file.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// The buyer's public key (64 hex characters).
        #[arg(long, value_name = "HEX")]
        buyer: String,
        /// The amount, in the card's currency.
        #[arg(long, value_name = "N")]
        amount: String,
        /// Only for this product (the seller key, 64 hex characters).
        #[arg(long, value_name = "HEX")]
        seller: Option<String>,
        /// When it was paid, ms since the Unix epoch (default: now).
        #[arg(long, value_name = "MS")]
        time: Option<u64>,
        /// A note for people (ignored by the plugin).
        #[arg(long)]
        note: Option<String>,
    },
}

fn plugin_json(p: &LoadedPlugin) -> serde_json::Value {
    serde_json::json!({
        "name": p.name(),
        "version": p.version(),
        "api": p.api_version().to_string(),
        "methods": p.methods().collect::<Vec<_>>(),
        "currencies": p.currencies().collect::<Vec<_>>(),
        "path": p.path().display().to_string(),
    })
}

fn plugin_line(p: &LoadedPlugin) -> String {
    let currencies: Vec<_> = p.currencies().collect();
    format!(
        "{}\t{}\tapi {}\tmethods: {}\tcurrencies: {}\t{}",
        p.name(),
        p.version(),
        p.api_version(),
        p.methods().collect::<Vec<_>>().join(","),
        if currencies.is_empty() {
            "any".to_owned()
        } else {
            currencies.join(",")
        },
        p.path().display()
    )
}

/// Runs a plugin command.
pub fn run(common: &Common, cmd: PluginsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        PluginsCmd::List { plugin_dir, json } => {
            let settings = common.settings()?;
            let dir = common.plugin_dir(plugin_dir.as_deref(), settings.as_ref());
            let registry = PluginRegistry::scan_dir(&dir)?;
            if json {
                let out = serde_json::json!({
                    "plugin_dir": dir.display().to_string(),
                    "plugins": registry.plugins().map(|p| plugin_json(p)).collect::<Vec<_>>(),
                    "refused": registry.failures().iter().map(|f| serde_json::json!({
                        "path": f.path.display().to_string(),
                        "error": f.error.to_string(),
                    })).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                for p in registry.plugins() {
                    println!("{}", plugin_line(p));
                }
                for f in registry.failures() {
                    println!("refused\t{}", f.error);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        PluginsCmd::Check { file, json } => {
            let plugin = LoadedPlugin::load(&file)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&plugin_json(&plugin))?);
            } else {
                println!("{}", plugin_line(&plugin));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs a ledger command.
pub fn run_ledger(cmd: LedgerCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        LedgerCmd::Add {
            file,
            buyer,
            amount,
            seller,
            time,
            note,
        } => {
            if parse_key(&buyer).is_none() {
                bail!("--buyer must be 64 hex characters (a public key)");
            }
            if let Some(s) = &seller {
                if parse_key(s).is_none() {
                    bail!("--seller must be 64 hex characters (a public key)");
                }
            }
            let value: f64 = amount
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v > 0.0)
                .with_context(|| format!("--amount {amount:?} is not a positive number"))?;
            let mut line = serde_json::json!({
                "buyer": buyer.to_ascii_lowercase(),
                "amount": value,
                "time": time.unwrap_or_else(now_ms),
            });
            if let Some(s) = seller {
                line["seller"] = s.to_ascii_lowercase().into();
            }
            if let Some(n) = note {
                line["note"] = n.into();
            }
            let text = format!("{line}\n");
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&file)
                .with_context(|| format!("cannot open {}", file.display()))?;
            // One write of the whole line, so a concurrent reader never sees half of it
            // (appends of this size are atomic on local file systems).
            f.write_all(text.as_bytes())
                .with_context(|| format!("cannot write to {}", file.display()))?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
