//! `dazaar plugins ...` (list, check).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use dazaar::payments::{LoadedPlugin, PluginRegistry};

use super::common::Common;

/// Plugin commands.
#[derive(Debug, Subcommand)]
pub enum PluginsCmd {
    /// List the plugins in the plugin directory, and the files that failed to load; and
    /// where each plugin the config names is found.
    List {
        /// The plugin directory (default: `plugin_dir` of the config, else ./plugins). The
        /// plugins the config names are also shown where the search finds them: the
        /// config's `plugin_dir`, this directory, the binary's directory, then
        /// /usr/lib/dazaar/plugins.
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
            // Where each plugin the config names is found, in the search order.
            let search = common.plugin_registry(plugin_dir.as_deref(), settings.as_ref());
            let mut named: Vec<(String, Option<PathBuf>)> = Vec::new();
            if let Some(s) = &settings {
                let names = s
                    .sell
                    .iter()
                    .flat_map(|p| p.payment.iter().map(|e| &e.plugin))
                    .chain(s.buy.payment.iter().map(|e| &e.plugin));
                for name in names {
                    if named.iter().any(|(n, _)| n == name) {
                        continue;
                    }
                    let path = search.locate(&s.plugin_dir, name);
                    named.push((name.clone(), path.is_file().then_some(path)));
                }
            }
            if json {
                let out = serde_json::json!({
                    "plugin_dir": dir.display().to_string(),
                    "search": search.search_path().iter().map(|d| d.display().to_string()).collect::<Vec<_>>(),
                    "named": named.iter().map(|(name, path)| serde_json::json!({
                        "name": name,
                        "path": path.as_ref().map(|p| p.display().to_string()),
                    })).collect::<Vec<_>>(),
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
                for (name, path) in &named {
                    match path {
                        Some(p) => println!("named\t{name}\tfound at {}", p.display()),
                        None => println!(
                            "named\t{name}\tnot found (searched {})",
                            search
                                .search_path()
                                .iter()
                                .map(|d| d.display().to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    }
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
