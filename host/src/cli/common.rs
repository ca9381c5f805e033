//! What every command shares: the global options (data dir, config, plugin dir), the
//! async runtime, the shutdown signal, key arguments and `--json` lines.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use dazaar::config::Settings;
use dazaar::market::{self, Identity, KdfParams};
use dazaar::payments::{PluginRegistry, SYSTEM_PLUGIN_DIR};
use dazaar::state::{StatePlace, StateUrl};
use tokio::sync::watch;

/// Options shared by the commands: where identity, state and configuration live.
#[derive(Debug, Clone, Default)]
pub struct Common {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--state`.
    pub state: Option<String>,
}

impl Common {
    /// The configuration file: `--config`, else `$DAZAAR_CONFIG`, else the first that
    /// exists of `./dazaar.toml`, `$XDG_CONFIG_HOME/dazaar/dazaar.toml`,
    /// `/etc/dazaar/dazaar.toml` (see [`dazaar::config::candidates`]).
    pub fn config_file(&self) -> Option<PathBuf> {
        dazaar::config::locate(self.config.as_deref(), |k| std::env::var_os(k))
    }

    /// The configuration, from [`Common::config_file`].
    pub fn settings(&self) -> Result<Option<Settings>> {
        match self.config_file() {
            Some(path) => Ok(Some(dazaar::config::load(&path)?)),
            None => Ok(None),
        }
    }

    /// The data dir: `--data-dir`, else the config's, else `~/.local/share/dazaar`.
    pub fn data_dir(&self, settings: Option<&Settings>) -> PathBuf {
        if let Some(d) = &self.data_dir {
            return d.clone();
        }
        if let Some(s) = settings {
            return s.data_dir.clone();
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        home.join(".local/share/dazaar")
    }

    /// Where the seller's state is: `--state`, else the config's `[state] url`, else
    /// `sqlite:` in the data dir (whose legacy JSON state is imported either way).
    pub fn state(&self, settings: Option<&Settings>) -> Result<StatePlace> {
        let data_dir = self.data_dir(settings);
        let url = match (&self.state, settings.and_then(|s| s.state.clone())) {
            (Some(text), _) => StateUrl::parse(text, &data_dir).context("--state")?,
            (None, Some(url)) => url,
            (None, None) => StateUrl::default_in(&data_dir),
        };
        Ok(StatePlace { url, data_dir })
    }

    /// The plugin dir: `flag`, else the config's `plugin_dir`, else `./plugins`.
    pub fn plugin_dir(&self, flag: Option<&Path>, settings: Option<&Settings>) -> PathBuf {
        flag.map(Path::to_owned)
            .or_else(|| settings.map(|s| s.plugin_dir.clone()))
            .unwrap_or_else(|| PathBuf::from("plugins"))
    }

    /// Where payment plugins are looked for, in order: the config's `plugin_dir`,
    /// `--plugin-dir` (`flag`), the directory of the `dazaar` binary, then
    /// [`SYSTEM_PLUGIN_DIR`] (each once; `./plugins` first when there is neither a config
    /// nor a flag). A command that names a directory ([`Common::plugin_dir`]) looks there
    /// first.
    pub fn plugin_search(&self, flag: Option<&Path>, settings: Option<&Settings>) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        dirs.extend(settings.map(|s| s.plugin_dir.clone()));
        dirs.extend(flag.map(Path::to_owned));
        if dirs.is_empty() {
            dirs.push(PathBuf::from("plugins"));
        }
        if let Some(bin_dir) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_owned))
        {
            dirs.push(bin_dir);
        }
        dirs.push(PathBuf::from(SYSTEM_PLUGIN_DIR));
        let mut unique: Vec<PathBuf> = Vec::with_capacity(dirs.len());
        for d in dirs {
            if !unique.contains(&d) {
                unique.push(d);
            }
        }
        unique
    }

    /// A plugin registry with [`Common::plugin_search`] as its search path.
    pub fn plugin_registry(
        &self,
        flag: Option<&Path>,
        settings: Option<&Settings>,
    ) -> PluginRegistry {
        PluginRegistry::with_search_path(self.plugin_search(flag, settings))
    }

    /// Loads (or creates) the identity of the data dir. An encrypted master key takes its
    /// passphrase from the variable the config names (`passphrase_env`), else
    /// `DAZAAR_PASSPHRASE`, else from a prompt on the terminal.
    pub fn identity(&self, settings: Option<&Settings>) -> Result<Identity> {
        let dir = self.data_dir(settings);
        let var = settings
            .and_then(|s| s.passphrase_env.clone())
            .unwrap_or_else(|| "DAZAAR_PASSPHRASE".into());
        let passphrase = std::env::var(&var).ok();
        match Identity::load_or_create(&dir, passphrase.as_deref(), KdfParams::default()) {
            Err(market::IdentityError::PassphraseRequired(_)) if passphrase.is_none() => {
                let pass = rpassword::prompt_password("dazaar master key passphrase: ").context(
                    "reading the master key passphrase (set the variable named by passphrase_env, or DAZAAR_PASSPHRASE, to pass it without a terminal)",
                )?;
                Ok(Identity::load_or_create(
                    &dir,
                    Some(&pass),
                    KdfParams::default(),
                )?)
            }
            other => Ok(other?),
        }
    }
}

/// Reads a 32-byte key given in hex; `what` names it in the error.
pub fn parse_key(hex_key: &str, what: &str) -> Result<[u8; 32]> {
    let bytes = hex::decode(hex_key.trim()).with_context(|| format!("{what} is not hex"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("{what} is not 32 bytes (64 hex digits)"))
}

/// The async runtime of a command.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    build_runtime(tokio::runtime::Builder::new_multi_thread())
}

/// The async runtime of a command that needs only `workers` threads (a feed server, a
/// DHT node).
pub fn runtime_with_workers(workers: usize) -> Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(workers);
    build_runtime(builder)
}

fn build_runtime(mut builder: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime> {
    builder
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Prints one JSON value on one line and flushes (a parent process may be waiting).
pub fn print_json(v: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn termination() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// The next delivery of `signal`; never when it could not be installed.
async fn recv_or_never(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// A shutdown signal that turns true on SIGINT or SIGTERM (call inside the runtime).
/// The handlers are installed before this returns, not when the task first runs: a
/// SIGTERM that came in between would kill the process without a clean stop.
pub fn signals() -> watch::Receiver<bool> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    tokio::spawn(async move {
        tokio::select! {
            _ = recv_or_never(term.as_mut()) => {}
            _ = recv_or_never(int.as_mut()) => {}
        }
        let _ = tx.send(true);
    });
    rx
}
