//! `dazaar plugins ...` (list, check, try, conformance, new).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use dazaar::payments::{
    child_line, now_ms, report_from_child, run_conformance_reporting, scaffold_plugin, try_plugin,
    ConformanceOptions, LoadedPlugin, PluginRegistry, TrialCall,
};

use super::common::{parse_key, Common};

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
    /// Load one plugin file, open it, and ask it once: `validate` (the default), or
    /// `payment_request` / `user_message`. Exits 0 when the plugin says yes, 1 otherwise.
    Try(TryArgs),
    /// Run the conformance battery on one plugin file: a table of checks (or JSON);
    /// exits 1 if any check does not pass. See docs/writing-a-plugin.md.
    Conformance {
        /// The library file.
        file: PathBuf,
        /// The plugin's own settings: its TOML table, as text. `@MARKER@` in it is
        /// replaced by a secret marker that must never show in the plugin's logs or errors.
        #[arg(long, value_name = "TOML", default_value = "")]
        plugin_config: String,
        /// The longest one plugin call may take, in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 5000)]
        timeout_ms: u64,
        /// How many random buyers must be refused.
        #[arg(long, value_name = "N", default_value_t = 1000)]
        buyers: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Run the battery in this process, printing one JSON line per check (what the
        /// command runs in a child process, so a plugin that aborts fails a check
        /// instead of ending the command).
        #[arg(long, hide = true)]
        child: bool,
    },
    /// Write a new plugin crate (an allow-list verifier, with tests and a README) that
    /// `cargo build --release` turns into libdazaar_NAME.so.
    New {
        /// The plugin's name: lowercase letters, digits and _.
        name: String,
        /// Where to write the crate (created; must be empty if it exists).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Depend on the plugin API (and the test kit beside it) by path, e.g. a checkout's
        /// `plugin-api` directory, instead of by version.
        #[arg(long, value_name = "PATH")]
        api_path: Option<PathBuf>,
    },
}

/// `dazaar plugins try`.
#[derive(Debug, clap::Args)]
pub struct TryArgs {
    /// The library file.
    file: PathBuf,
    /// The buyer's key (64 hex digits).
    #[arg(long, value_name = "HEX")]
    buyer: String,
    /// The seller's key (64 hex digits).
    #[arg(long, value_name = "HEX")]
    seller: String,
    /// The plugin's own settings: its TOML table, as text.
    #[arg(long, value_name = "TOML", default_value = "")]
    plugin_config: String,
    /// The card payment entry (JSON object); fields left out come from the plugin's
    /// first method and currency, 1 per second.
    #[arg(long, value_name = "JSON")]
    terms: Option<String>,
    /// The time of the call, ms since the Unix epoch (default: now).
    #[arg(long, value_name = "MS")]
    now: Option<u64>,
    /// Call `payment_request` for this amount instead of `validate`.
    #[arg(long, value_name = "AMOUNT", conflicts_with = "user_message")]
    payment_request: Option<String>,
    /// Call `user_message` with this message (`NAME:JSON`) instead of `validate`.
    #[arg(long, value_name = "NAME:JSON")]
    user_message: Option<String>,
    /// Print JSON: `{"valid":true,"grant":{..}}` or `{"valid":false,"reason":..}`.
    #[arg(long)]
    json: bool,
}

fn try_cmd(args: TryArgs) -> anyhow::Result<ExitCode> {
    let buyer = parse_key(&args.buyer, "--buyer")?;
    let seller = parse_key(&args.seller, "--seller")?;
    let terms = args
        .terms
        .as_deref()
        .map(serde_json::from_str::<serde_json::Value>)
        .transpose()
        .context("--terms is not JSON")?;
    let call = match (args.payment_request, args.user_message) {
        (Some(amount), _) => TrialCall::PaymentRequest { amount },
        (None, Some(m)) => TrialCall::user_message(&m).map_err(anyhow::Error::msg)?,
        (None, None) => TrialCall::Validate,
    };
    let answer = try_plugin(
        &args.file,
        &args.plugin_config,
        terms.as_ref(),
        buyer,
        seller,
        args.now.unwrap_or_else(now_ms),
        &call,
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&answer.to_json())?);
    } else {
        println!("{}", answer.to_text());
    }
    Ok(if answer.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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

/// Runs the battery in a child process (this binary with `--child`), so a plugin that
/// aborts or crashes the process fails the check it was in instead of ending the command.
fn conformance_in_child(
    file: &std::path::Path,
    options: &ConformanceOptions,
) -> anyhow::Result<dazaar::payments::ConformanceReport> {
    let exe = std::env::current_exe().context("cannot find this program to run the battery")?;
    let out = std::process::Command::new(exe)
        .args(["plugins", "conformance", "--child"])
        // One argument, so a table starting with `-` stays a value.
        .arg(format!("--plugin-config={}", options.config))
        .arg("--timeout-ms")
        .arg(options.timeout.as_millis().to_string())
        .arg("--buyers")
        .arg(options.random_buyers.to_string())
        .arg("--")
        .arg(file)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run the battery's process")?;
    let died = (!out.status.success()).then(|| exit_text(out.status));
    Ok(report_from_child(
        file,
        options,
        &String::from_utf8_lossy(&out.stdout),
        died.as_deref(),
    ))
}

/// How a process ended, in a few words.
fn exit_text(status: std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            let name = match signal {
                libc::SIGABRT => " (SIGABRT)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGBUS => " (SIGBUS)",
                _ => "",
            };
            return format!("killed by signal {signal}{name}");
        }
    }
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => "ended abnormally".to_owned(),
    }
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
        PluginsCmd::Try(args) => try_cmd(args),
        PluginsCmd::New {
            name,
            dir,
            api_path,
        } => {
            let api_path = api_path
                .map(|p| std::path::absolute(&p).with_context(|| format!("{}", p.display())))
                .transpose()?;
            let written = scaffold_plugin(&name, &dir, api_path.as_deref())?;
            for file in written {
                println!("wrote {}", file.display());
            }
            println!(
                "build it with: cd {} && cargo build --release",
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        PluginsCmd::Conformance {
            file,
            plugin_config,
            timeout_ms,
            buyers,
            json,
            child,
        } => {
            let options = ConformanceOptions {
                config: plugin_config,
                timeout: Duration::from_millis(timeout_ms),
                random_buyers: buyers,
                ..ConformanceOptions::default()
            };
            if child {
                run_conformance_reporting(&file, &options, &mut |plugin, check| {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{}", child_line(plugin, check));
                    let _ = out.flush();
                });
                return Ok(ExitCode::SUCCESS);
            }
            let report = conformance_in_child(&file, &options)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            } else {
                print!("{}", report.to_table());
            }
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
