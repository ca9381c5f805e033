//! Test kit for Dazaar payment plugins.
//!
//! Loads a built plugin library (`libdazaar_<name>.so`) in-process through the host's own
//! loader, opens it with the host's call threads and timeouts, and calls it across the real
//! ABI with a clock the test sets, so a plugin's tests exercise exactly what a seller
//! runs:
//!
//! ```no_run
//! use std::time::Duration;
//! use dazaar_plugin_kit::{built_plugin, Grant, PluginHarness};
//!
//! let file = built_plugin("myplugin").unwrap();
//! let mut plugin = PluginHarness::open(&file, "allow = []\nseconds = 60\n").unwrap();
//! assert!(plugin.validate([1; 32]).unwrap_err().is_refusal());
//! plugin.advance(Duration::from_secs(3600)); // virtual time: nothing sleeps
//! ```
//!
//! [`run_conformance`] runs the battery `dazaar plugins conformance` runs.
//!
//! Add it as a dev-dependency of the plugin crate (whose `crate-type` includes `cdylib`):
//! cargo builds the library before the crate's integration tests (`tests/*.rs`), and
//! [`built_plugin`] finds it beside the test executable.
//!
//! This crate depends on the host library (`dazaar`) for its loader: a plugin pulls it in
//! as a dev-dependency only; the plugin itself depends on `dazaar-plugin-api` alone.

use std::path::{Path, PathBuf};

pub use dazaar::payments::{
    default_terms, run_conformance, terms_with, CallLimits, CheckResult, CheckStatus,
    ConformanceOptions, ConformanceReport, HarnessError, LoadedPlugin, PaymentError, PluginHarness,
    TrialAnswer, TrialCall, HARNESS_SELLER, HARNESS_START_MS, MARKER_PLACEHOLDER,
};
pub use dazaar_plugin_api::{
    Grant, GrantKind, Key, PaymentInstructions, PaymentTerms, UserMessage,
};

/// The environment variable that names the library to test, overriding the search of
/// [`built_plugin`].
pub const PLUGIN_FILE_ENV: &str = "DAZAAR_PLUGIN_FILE";

/// The built plugin library could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file} was not found in {searched:?} (build the crate first, or set DAZAAR_PLUGIN_FILE)")]
pub struct NotBuilt {
    /// The file name looked for.
    pub file: String,
    /// The directories searched.
    pub searched: Vec<PathBuf>,
}

/// The file name of plugin `name` on this platform: `libdazaar_<name>.so` on Linux.
pub fn plugin_file_name(name: &str) -> String {
    dazaar::payments::plugin_file_name(name)
}

/// The library of plugin `name` as cargo built it for the running test:
/// `$DAZAAR_PLUGIN_FILE` when set, else `libdazaar_<name>.so` in the test executable's
/// directory or the one above it (`target/<profile>/deps/..`).
pub fn built_plugin(name: &str) -> Result<PathBuf, NotBuilt> {
    if let Some(file) = std::env::var_os(PLUGIN_FILE_ENV) {
        return Ok(PathBuf::from(file));
    }
    let file = plugin_file_name(name);
    let exe = std::env::current_exe().unwrap_or_default();
    let searched: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(Path::to_path_buf)
        .collect();
    searched
        .iter()
        .map(|dir| dir.join(&file))
        .find(|p| p.is_file())
        .ok_or(NotBuilt { file, searched })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_says_where_it_looked() {
        let e = built_plugin("no_such_plugin_here").unwrap_err();
        assert_eq!(e.file, plugin_file_name("no_such_plugin_here"));
        assert_eq!(e.searched.len(), 2);
        assert!(e.to_string().contains("DAZAAR_PLUGIN_FILE"));
    }
}
