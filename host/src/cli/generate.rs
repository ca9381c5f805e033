//! What is generated from the command-line definition itself: shell completions
//! (`dazaar completions bash|zsh|fish`) and the man page (`dazaar man`), so they cannot
//! drift from the commands.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};

/// `dazaar completions SHELL`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish (also elvish, powershell).
    pub shell: clap_complete::Shell,
}

/// Writes the completion script for `args.shell` to stdout, e.g.
/// `dazaar completions bash > /usr/share/bash-completion/completions/dazaar`.
pub fn completions(args: CompletionsArgs) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut super::Cli::command(), "dazaar", &mut out);
    out.flush().context("writing the completions")?;
    Ok(ExitCode::SUCCESS)
}

/// `dazaar man [--dir DIR]`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write one page per command into DIR (`dazaar.1`, `dazaar-sell.1`, ...) instead of
    /// printing the top-level page.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Writes the man page (roff) of `dazaar` to stdout, e.g.
/// `dazaar man > /usr/share/man/man1/dazaar.1`, or with `--dir` every command's page
/// into a directory (and their paths to stdout).
pub fn man(args: ManArgs) -> Result<ExitCode> {
    if let Some(dir) = args.dir {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        clap_mangen::generate_to(super::Cli::command(), &dir)
            .with_context(|| format!("{}: writing the man pages", dir.display()))?;
        let mut pages: Vec<_> = std::fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "1"))
            .collect();
        pages.sort();
        for p in pages {
            println!("{}", p.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(super::Cli::command())
        .render(&mut out)
        .context("writing the man page")?;
    out.flush().context("writing the man page")?;
    Ok(ExitCode::SUCCESS)
}

/// The `--version` text: the release and the plugin API this host accepts.
pub fn version_text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        let api = dazaar_plugin_api::API_VERSION;
        format!(
            "{} (plugin API {}.{}: loads plugins built against API {}.0 to {}.{}, and newer {}.x ones)",
            env!("CARGO_PKG_VERSION"),
            api.major,
            api.minor,
            api.major,
            api.major,
            api.minor,
            api.major,
        )
    })
}
