//! Loading one plugin library: checks, in order, that the file is a shared library, that
//! it exports a Dazaar payment plugin, that its API major version is ours, and that its
//! module layout agrees with ours; then asks it to describe itself.
//!
//! Each library is loaded with `lib_header_from_path(..).init_root_module..` rather than
//! `RootModule::load_from_file`, which caches one module per type and would hand back the
//! first plugin for every later path.
//!
//! # Older plugins in a newer host
//!
//! abi_stable's own check refuses a library whose root module (a prefix type) has fewer
//! fields than the host's, i.e. every plugin built before a function was added. We check
//! the layout in both directions instead: the library's layout must either extend ours
//! (a newer plugin) or be a prefix of ours (an older plugin). Fields the library lacks
//! then read as `None` through the prefix accessors, which consult the field count the
//! library itself recorded.

use std::path::{Path, PathBuf};

use abi_stable::abi_stability::abi_checking::check_layout_compatibility;
use abi_stable::library::{lib_header_from_path, LibraryError};
use abi_stable::sabi_types::VersionNumber;
use abi_stable::StableAbi;
use dazaar_plugin_api::{
    ApiVersion, PaymentPluginMod_Ref, PluginInfo, API_VERSION, ROOT_MODULE_NAME,
};

/// Why a plugin library was refused. Each message is one sentence naming the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The path does not exist or is not a file.
    #[error("{path}: no such plugin file")]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// The plugin directory could not be read.
    #[error("cannot read the plugin directory {path}: {reason}")]
    DirUnreadable {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The OS loader refused the file.
    #[error("{path} is not a shared library that can be loaded here ({reason})")]
    NotALibrary {
        /// The file.
        path: PathBuf,
        /// The loader's reason (one line).
        reason: String,
    },
    /// A library without an abi_stable root module.
    #[error("{path} is not a dazaar plugin (it exports no plugin module)")]
    NotAPlugin {
        /// The file.
        path: PathBuf,
    },
    /// An abi_stable library, but for another kind of module.
    #[error("{path} is not a dazaar payment plugin (its module is `{module}`)")]
    OtherModule {
        /// The file.
        path: PathBuf,
        /// The module name it declares.
        module: String,
    },
    /// Built with an abi_stable release whose loader format differs from ours.
    #[error("{path} was built with an incompatible abi_stable release; rebuild it against dazaar-plugin-api {host}")]
    IncompatibleAbiStable {
        /// The file.
        path: PathBuf,
        /// Our API version.
        host: ApiVersion,
    },
    /// Built against another major version of the plugin API.
    #[error("{path} was built against plugin API {plugin}, but this host speaks {host}; rebuild it against dazaar-plugin-api {host}")]
    IncompatibleApi {
        /// The file.
        path: PathBuf,
        /// The version the plugin declares (text, as recorded).
        plugin: String,
        /// Our API version.
        host: ApiVersion,
    },
    /// Same major version, but the module's layout contradicts ours.
    #[error("{path} declares plugin API {plugin} but its module layout does not match this host's (built against a modified dazaar-plugin-api?)")]
    LayoutMismatch {
        /// The file.
        path: PathBuf,
        /// The version the plugin declares.
        plugin: String,
    },
    /// The library's module constructor or `describe` failed.
    #[error("{path} failed to start: {reason}")]
    StartFailed {
        /// The file.
        path: PathBuf,
        /// The plugin's reason.
        reason: String,
    },
    /// `describe` gave an unusable name or no card methods.
    #[error("{path} describes itself badly: {reason}")]
    BadDescription {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another file already provided a plugin of this name.
    #[error("{path} provides plugin `{name}`, which is already loaded from {first}")]
    Duplicate {
        /// The refused file.
        path: PathBuf,
        /// The plugin name.
        name: String,
        /// The file loaded first.
        first: PathBuf,
    },
    /// Loaded by name, but the plugin calls itself something else.
    #[error("{path} was loaded as plugin `{expected}` but calls itself `{actual}`")]
    NameMismatch {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        expected: String,
        /// The name it reported.
        actual: String,
    },
}

impl LoadError {
    /// The same error about the file at `path` (for a library loaded from a copy).
    fn with_path(mut self, to: &Path) -> LoadError {
        match &mut self {
            LoadError::NotFound { path }
            | LoadError::DirUnreadable { path, .. }
            | LoadError::NotALibrary { path, .. }
            | LoadError::NotAPlugin { path }
            | LoadError::OtherModule { path, .. }
            | LoadError::IncompatibleAbiStable { path, .. }
            | LoadError::IncompatibleApi { path, .. }
            | LoadError::LayoutMismatch { path, .. }
            | LoadError::StartFailed { path, .. }
            | LoadError::BadDescription { path, .. }
            | LoadError::Duplicate { path, .. }
            | LoadError::NameMismatch { path, .. } => *path = to.to_path_buf(),
        }
        self
    }
}

/// A plugin library that passed every check. Libraries are never unloaded (abi_stable
/// leaks them on purpose), so the module stays valid for the life of the process.
#[derive(Clone)]
pub struct LoadedPlugin {
    pub(crate) module: PaymentPluginMod_Ref,
    path: PathBuf,
    /// The file as it was when it was loaded (to tell a new version of it).
    stamp: Option<FileStamp>,
    declared_api: String,
    api: ApiVersion,
    info: PluginInfo,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.info.name)
            .field("version", &self.info.version)
            .field("api", &self.api)
            .field("path", &self.path)
            .finish()
    }
}

impl LoadedPlugin {
    /// Loads and checks the library at `path`.
    pub fn load(path: &Path) -> Result<LoadedPlugin, LoadError> {
        if !path.is_file() {
            return Err(LoadError::NotFound {
                path: path.to_path_buf(),
            });
        }
        let stamp = FileStamp::of(path);
        let mut plugin = LoadedPlugin::load_unchecked_path(path)?;
        plugin.stamp = stamp;
        Ok(plugin)
    }

    /// Loads a new version of the library at `path` beside the one loaded from there
    /// before. The OS loader hands back the library already loaded from a path, so the
    /// file is copied to a private path (in the temporary directory) and loaded from
    /// there; the copy is deleted once loaded (its mapping stays). The older version stays
    /// in memory too: libraries are never unloaded.
    pub fn load_new_version(path: &Path) -> Result<LoadedPlugin, LoadError> {
        if !path.is_file() {
            return Err(LoadError::NotFound {
                path: path.to_path_buf(),
            });
        }
        let stamp = FileStamp::of(path);
        let copy = private_copy(path)?;
        let loaded = LoadedPlugin::load_unchecked_path(&copy);
        let _ = std::fs::remove_file(&copy);
        let mut plugin = loaded.map_err(|e| e.with_path(path))?;
        plugin.path = path.to_path_buf();
        plugin.stamp = stamp;
        Ok(plugin)
    }

    /// Whether the file the plugin was loaded from was replaced or changed since (a file
    /// that cannot be read now counts as changed).
    pub fn file_changed(&self) -> bool {
        self.stamp.is_none() || FileStamp::of(&self.path) != self.stamp
    }

    fn load_unchecked_path(path: &Path) -> Result<LoadedPlugin, LoadError> {
        let path_buf = path.to_path_buf();
        let header = lib_header_from_path(path).map_err(|e| match e {
            LibraryError::OpenError { err, .. } => LoadError::NotALibrary {
                path: path_buf.clone(),
                reason: first_line(&err.to_string()),
            },
            LibraryError::InvalidAbiHeader(_) | LibraryError::InvalidCAbi { .. } => {
                LoadError::IncompatibleAbiStable {
                    path: path_buf.clone(),
                    host: API_VERSION,
                }
            }
            _ => LoadError::NotAPlugin {
                path: path_buf.clone(),
            },
        })?;

        let consts = header.root_mod_consts();
        if consts.name().as_str() != ROOT_MODULE_NAME {
            return Err(LoadError::OtherModule {
                path: path_buf,
                module: consts.name().as_str().to_owned(),
            });
        }
        let declared_api = header.version_strings().version.as_str().to_owned();
        let version = VersionNumber::new(header.version_strings()).map_err(|_| {
            LoadError::IncompatibleApi {
                path: path_buf.clone(),
                plugin: declared_api.clone(),
                host: API_VERSION,
            }
        })?;
        if version.major != u32::from(API_VERSION.major) {
            return Err(LoadError::IncompatibleApi {
                path: path_buf,
                plugin: declared_api,
                host: API_VERSION,
            });
        }
        let Some(layout) = header.layout() else {
            // Without a layout we cannot check anything: refuse.
            return Err(LoadError::LayoutMismatch {
                path: path_buf,
                plugin: declared_api,
            });
        };
        let ours = <PaymentPluginMod_Ref as StableAbi>::LAYOUT;
        let newer_or_same = check_layout_compatibility(ours, layout);
        let compatible = match newer_or_same {
            Ok(()) => true,
            Err(e) => {
                // The plugin may be older: its layout must then be a prefix of ours.
                let older = check_layout_compatibility(layout, ours).is_ok();
                if !older {
                    // The full report is hundreds of lines; keep it out of normal logs.
                    tracing::trace!(path = %path.display(), report = %e, "layout mismatch");
                }
                older
            }
        };
        if !compatible {
            return Err(LoadError::LayoutMismatch {
                path: path_buf,
                plugin: declared_api,
            });
        }
        // SAFETY: the layout was checked just above, in the direction that applies.
        let module =
            unsafe { header.init_root_module_with_unchecked_layout::<PaymentPluginMod_Ref>() }
                .map_err(|e| LoadError::StartFailed {
                    path: path_buf.clone(),
                    reason: first_line(&e.to_string()),
                })?;
        let api = (module.api_version())();
        let info =
            (module.describe())()
                .into_result()
                .map_err(|reason| LoadError::StartFailed {
                    path: path_buf.clone(),
                    reason: reason.into_string(),
                })?;
        if let Err(reason) = check_description(&info) {
            return Err(LoadError::BadDescription {
                path: path_buf,
                reason,
            });
        }
        let plugin = LoadedPlugin {
            module,
            path: path_buf,
            stamp: None,
            declared_api,
            api,
            info,
        };
        if let Some(set_log_sink) = plugin.module.set_log_sink() {
            set_log_sink(
                dazaar_plugin_api::LogSink { log: plugin_log },
                host_log_level(),
            );
        }
        tracing::info!(
            plugin = %plugin.name(),
            version = %plugin.version(),
            api = %plugin.api,
            path = %plugin.path.display(),
            "payment plugin loaded"
        );
        Ok(plugin)
    }

    /// The plugin's name (`free`, `ledger`, ...).
    pub fn name(&self) -> &str {
        self.info.name.as_str()
    }

    /// The plugin's own version.
    pub fn version(&self) -> &str {
        self.info.version.as_str()
    }

    /// The API version the plugin was built against.
    pub fn api_version(&self) -> ApiVersion {
        self.api
    }

    /// The API version recorded in the library header (`major.minor.patch`).
    pub fn declared_api(&self) -> &str {
        &self.declared_api
    }

    /// Card methods served.
    pub fn methods(&self) -> impl Iterator<Item = &str> {
        self.info.methods.iter().map(|m| m.as_str())
    }

    /// Card currencies served (empty: any).
    pub fn currencies(&self) -> impl Iterator<Item = &str> {
        self.info.currencies.iter().map(|c| c.as_str())
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this plugin serves a card entry with this method and currency
    /// (case-insensitive; a plugin that lists no currencies serves any).
    pub fn serves(&self, method: &str, currency: &str) -> bool {
        self.methods().any(|m| m.eq_ignore_ascii_case(method))
            && (self.info.currencies.is_empty()
                || self.currencies().any(|c| c.eq_ignore_ascii_case(currency)))
    }

    /// Asks the plugin to pass on its log events from `max_level` (1 error ... 5 trace)
    /// up, when it takes a log sink (API 1.2). Whether it does.
    pub(crate) fn set_log_level(&self, max_level: u8) -> bool {
        match self.module.set_log_sink() {
            Some(set_log_sink) => {
                set_log_sink(dazaar_plugin_api::LogSink { log: plugin_log }, max_level);
                true
            }
            None => false,
        }
    }

    /// Whether the plugin provides `check_config` (added in API 1.1).
    pub fn has_check_config(&self) -> bool {
        self.module.check_config().is_some()
    }
}

/// What identifies one version of a file: a new version written in place or installed
/// over it (a new inode) changes at least one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            modified: m.modified().ok(),
        })
    }
}

/// Copies `path` to a new file of its own in the temporary directory.
fn private_copy(path: &Path) -> Result<PathBuf, LoadError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let failed = |e: std::io::Error| LoadError::NotALibrary {
        path: path.to_path_buf(),
        reason: format!("cannot copy it to load it again: {e}"),
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("plugin");
    let copy = std::env::temp_dir().join(format!(
        "dazaar-{}-{}-{name}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let mut from = std::fs::File::open(path).map_err(failed)?;
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&copy)
        .map_err(failed)?;
    if let Err(e) = std::io::copy(&mut from, &mut to) {
        let _ = std::fs::remove_file(&copy);
        return Err(failed(e));
    }
    Ok(copy)
}

/// The host's level as the ABI number (1 error ... 5 trace, 0 off): plugins pass on
/// what the host would log.
pub(crate) fn host_log_level() -> u8 {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::OFF => 0,
        LevelFilter::ERROR => 1,
        LevelFilter::WARN => 2,
        LevelFilter::INFO => 3,
        LevelFilter::DEBUG => 4,
        _ => 5,
    }
}

/// The most of one plugin log message the host keeps.
const MAX_PLUGIN_LOG: usize = 4096;

/// Where plugins' log events arrive (API 1.2 `set_log_sink`): logged under the target
/// `dazaar::plugin`, with the plugin's own target as a field. Never unwinds into the
/// plugin; bounds the text it keeps.
extern "C" fn plugin_log(
    level: u8,
    target: abi_stable::std_types::RStr<'_>,
    message: abi_stable::std_types::RStr<'_>,
) {
    let _ = std::panic::catch_unwind(|| {
        let from = dazaar_plugin_api::str_prefix(target.as_str(), 128);
        let text = dazaar_plugin_api::str_prefix(message.as_str(), MAX_PLUGIN_LOG);
        // The conformance battery looks for its marker in everything plugins log.
        super::conformance::observe_log(target.as_str(), message.as_str());
        match level {
            1 => tracing::error!(target: "dazaar::plugin", from = %from, "{text}"),
            2 => tracing::warn!(target: "dazaar::plugin", from = %from, "{text}"),
            3 => tracing::info!(target: "dazaar::plugin", from = %from, "{text}"),
            4 => tracing::debug!(target: "dazaar::plugin", from = %from, "{text}"),
            _ => tracing::trace!(target: "dazaar::plugin", from = %from, "{text}"),
        }
    });
}

/// A plugin name is what follows `dazaar_` in its file name: lowercase letters, digits, `_`.
pub(crate) fn is_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn check_description(info: &PluginInfo) -> Result<(), String> {
    if !is_plugin_name(info.name.as_str()) {
        return Err(format!(
            "its name {:?} is not lowercase letters, digits and _",
            info.name.as_str()
        ));
    }
    if info.methods.is_empty() || info.methods.iter().any(|m| m.trim().is_empty()) {
        return Err("it declares no card methods".to_owned());
    }
    Ok(())
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_owned()
}

/// The file name of plugin `name` on this platform: `libdazaar_<name>.so` on Linux.
pub fn plugin_file_name(name: &str) -> String {
    format!(
        "{}dazaar_{}{}",
        std::env::consts::DLL_PREFIX,
        name,
        std::env::consts::DLL_SUFFIX
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi_stable::std_types::RVec;

    fn info(name: &str, methods: &[&str]) -> PluginInfo {
        PluginInfo {
            name: name.into(),
            version: "1".into(),
            methods: methods.iter().map(|m| (*m).into()).collect::<RVec<_>>(),
            currencies: RVec::new(),
        }
    }

    #[test]
    fn descriptions_are_checked() {
        assert!(check_description(&info("lnd", &["lightning"])).is_ok());
        assert!(check_description(&info("", &["x"])).is_err());
        assert!(check_description(&info("../x", &["x"])).is_err());
        assert!(check_description(&info("Big", &["x"])).is_err());
        assert_eq!(
            check_description(&info("x", &[])),
            Err("it declares no card methods".to_owned())
        );
        assert_eq!(
            plugin_file_name("free"),
            format!(
                "{}dazaar_free{}",
                std::env::consts::DLL_PREFIX,
                std::env::consts::DLL_SUFFIX
            )
        );
    }
}
