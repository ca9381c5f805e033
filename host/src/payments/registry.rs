//! The plugins a host has loaded, the verifiers it opened, and the gate that answers
//! "is this buyer valid?" for one product.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use abi_stable::std_types::{RStr, RString};
use dazaar_plugin_api::{
    Grant, Key, KeyBytes, PaymentInstructions, PaymentTerms, UserMessage, VerifierBox,
};

use super::loader::{plugin_file_name, LoadError, LoadedPlugin};
use super::pool::{CallFailure, CallLimits, CallPool, Lane};
use super::wire::MAX_USER_MESSAGE;
use crate::monitor::names;

/// What a peer is told when its payment could not be checked (a plugin or backend error,
/// a timeout, a panic): the detail goes to the log, never to the peer.
pub const PUBLIC_UNAVAILABLE: &str = "payment check unavailable, try later";

/// What a peer is told when its check was not made because the seller is busy (admission
/// control, or the plugin's queue for strangers is full).
pub const PUBLIC_BUSY: &str = "payment check busy, try later";

/// How a plugin's own error reason starts when the plugin itself panicked (the plugin
/// API's guard writes it).
const PANIC_PREFIX: &str = "plugin panicked in ";

/// Why a plugin call gave no usable answer. The reason never includes the plugin's
/// configuration.
///
/// Only a [`Plugin`](Self::Plugin) refusal is meant for the buyer; every other kind is a
/// failure whose detail is for the seller's log ([`public_reason`](Self::public_reason)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PaymentError {
    /// The plugin refused, with a reason meant for the buyer ("no payment recorded for
    /// this buyer").
    #[error("{plugin}: {reason}")]
    Plugin {
        /// Plugin name.
        plugin: String,
        /// Its reason.
        reason: String,
    },
    /// The plugin could not check: its error was marked with
    /// [`dazaar_plugin_api::unavailable`] (a backend it could not reach, an answer it
    /// could not read).
    #[error("{plugin}: {detail}")]
    Unavailable {
        /// Plugin name.
        plugin: String,
        /// What failed (for the log).
        detail: String,
    },
    /// The plugin panicked (caught inside it).
    #[error("{plugin}: {detail}")]
    Panicked {
        /// Plugin name.
        plugin: String,
        /// The panic, as the plugin reported it.
        detail: String,
    },
    /// No answer in time.
    #[error("{plugin}: no answer within {timeout_ms} ms")]
    TimedOut {
        /// Plugin name.
        plugin: String,
        /// The timeout.
        timeout_ms: u128,
    },
    /// All of the plugin's call threads are stuck or busy.
    #[error("{plugin}: too many calls waiting (the plugin may be hung)")]
    Busy {
        /// Plugin name.
        plugin: String,
    },
    /// The call was lost (its thread is gone).
    #[error("{plugin}: the call was lost")]
    Lost {
        /// Plugin name.
        plugin: String,
    },
    /// The plugin gave an answer this host cannot read.
    #[error("{plugin}: unreadable answer: {detail}")]
    BadAnswer {
        /// Plugin name.
        plugin: String,
        /// What was wrong.
        detail: String,
    },
    /// The plugin lacks a function this host needs (it was built before it existed).
    #[error(
        "plugin `{plugin}` (built against API {api}) has no `{function}`, which API {since} added"
    )]
    MissingFunction {
        /// Plugin name.
        plugin: String,
        /// Its API version.
        api: String,
        /// The function.
        function: &'static str,
        /// The API version that added it.
        since: &'static str,
    },
    /// No plugin of that name is loaded.
    #[error("no payment plugin named `{0}` is loaded")]
    UnknownPlugin(String),
    /// No loaded plugin serves a card entry.
    #[error("no payment plugin serves method `{method}` with currency `{currency}`")]
    Unsupported {
        /// Card method.
        method: String,
        /// Card currency.
        currency: String,
    },
    /// The host could not start the plugin's call threads.
    #[error("{plugin}: cannot start call threads: {reason}")]
    Threads {
        /// Plugin name.
        plugin: String,
        /// The OS error.
        reason: String,
    },
}

impl PaymentError {
    /// Whether this is a plugin's refusal, whose reason is meant for the buyer.
    pub fn is_refusal(&self) -> bool {
        matches!(self, PaymentError::Plugin { .. })
    }

    /// What a peer may be told: a refusal's reason (bounded), or a short public text for
    /// every failure ([`PUBLIC_BUSY`], [`PUBLIC_UNAVAILABLE`]).
    pub fn public_reason(&self) -> String {
        match self {
            PaymentError::Plugin { .. } => self.to_string(),
            PaymentError::Busy { .. } => PUBLIC_BUSY.to_owned(),
            _ => PUBLIC_UNAVAILABLE.to_owned(),
        }
    }

    /// The plugin's plugin name, when the error has one.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            PaymentError::Plugin { plugin, .. }
            | PaymentError::Unavailable { plugin, .. }
            | PaymentError::Panicked { plugin, .. }
            | PaymentError::TimedOut { plugin, .. }
            | PaymentError::Busy { plugin }
            | PaymentError::Lost { plugin }
            | PaymentError::BadAnswer { plugin, .. }
            | PaymentError::MissingFunction { plugin, .. }
            | PaymentError::Threads { plugin, .. } => Some(plugin),
            PaymentError::UnknownPlugin(_) | PaymentError::Unsupported { .. } => None,
        }
    }

    fn from_failure(plugin: &str, failure: CallFailure, timeout: Duration) -> PaymentError {
        let plugin = plugin.to_owned();
        match failure {
            CallFailure::TimedOut => PaymentError::TimedOut {
                plugin,
                timeout_ms: timeout.as_millis(),
            },
            CallFailure::Busy => PaymentError::Busy { plugin },
            CallFailure::Lost => PaymentError::Lost { plugin },
        }
    }
}

/// A file in the plugin directory that was not loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadFailure {
    /// The file.
    pub path: PathBuf,
    /// Why it was refused.
    pub error: LoadError,
}

/// The loaded plugins, by name.
#[derive(Debug, Default)]
pub struct PluginRegistry {
    plugins: BTreeMap<String, Arc<LoadedPlugin>>,
    failures: Vec<LoadFailure>,
    /// Where a plugin named but not found in the directory a call names is looked for
    /// next, in order.
    search: Vec<PathBuf>,
}

/// The system-wide plugin directory, last in the search path.
pub const SYSTEM_PLUGIN_DIR: &str = "/usr/lib/dazaar/plugins";

impl PluginRegistry {
    /// An empty registry.
    pub fn new() -> PluginRegistry {
        PluginRegistry::default()
    }

    /// An empty registry that looks for a plugin named by a call (
    /// [`load_named`](Self::load_named)) in the call's directory first, then in `dirs`, in
    /// order: the first directory holding the plugin's file wins.
    pub fn with_search_path(dirs: Vec<PathBuf>) -> PluginRegistry {
        PluginRegistry {
            search: dirs,
            ..PluginRegistry::default()
        }
    }

    /// The directories searched after the one a call names.
    pub fn search_path(&self) -> &[PathBuf] {
        &self.search
    }

    /// The file of plugin `name`: in `dir` if it is there, else in the first directory of
    /// the search path that has it, else (not found) where it would be in `dir`.
    pub fn locate(&self, dir: &Path, name: &str) -> PathBuf {
        let file = plugin_file_name(name);
        std::iter::once(dir)
            .chain(self.search.iter().map(PathBuf::as_path))
            .map(|d| d.join(&file))
            .find(|p| p.is_file())
            .unwrap_or_else(|| dir.join(&file))
    }

    /// Loads every shared library in `dir` (files ending in the platform's library
    /// suffix, in name order). Files that fail are recorded in [`failures`](Self::failures);
    /// only an unreadable directory is an error.
    pub fn scan_dir(dir: &Path) -> Result<PluginRegistry, LoadError> {
        let unreadable = |e: std::io::Error| LoadError::DirUnreadable {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(unreadable)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(std::env::consts::DLL_SUFFIX))
            })
            .collect();
        files.sort();
        let mut registry = PluginRegistry::new();
        for path in files {
            if let Err(error) = registry.load_path(&path) {
                tracing::info!(%error, "payment plugin refused");
                registry.failures.push(LoadFailure { path, error });
            }
        }
        Ok(registry)
    }

    /// Loads the plugin at `path` and adds it. Refuses a second plugin of the same name.
    pub fn load_path(&mut self, path: &Path) -> Result<Arc<LoadedPlugin>, LoadError> {
        let plugin = LoadedPlugin::load(path)?;
        self.insert(plugin)
    }

    /// Loads plugin `name` from `dir` (`libdazaar_<name>.so` on Linux), else from the
    /// first directory of the search path that has it ([`locate`](Self::locate)), unless a
    /// plugin of that name is already loaded.
    pub fn load_named(&mut self, dir: &Path, name: &str) -> Result<Arc<LoadedPlugin>, LoadError> {
        if let Some(p) = self.plugins.get(name) {
            return Ok(Arc::clone(p));
        }
        let path = self.locate(dir, name);
        let plugin = LoadedPlugin::load(&path)?;
        if plugin.name() != name {
            return Err(LoadError::NameMismatch {
                path,
                expected: name.to_owned(),
                actual: plugin.name().to_owned(),
            });
        }
        self.insert(plugin)
    }

    /// Plugin `name` from `dir` as its file is now (a seller reloading its
    /// configuration): the plugin already loaded when it came from that file and the file
    /// is unchanged; else the file's current version, loaded beside the one loaded before
    /// (see [`LoadedPlugin::load_new_version`]: libraries are never unloaded) and taking
    /// its place here; a plugin not loaded yet is loaded.
    pub fn refresh_named(
        &mut self,
        dir: &Path,
        name: &str,
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        let path = self.locate(dir, name);
        match self.plugins.get(name) {
            None => self.load_named(dir, name),
            Some(p) if p.path() == path && !p.file_changed() => Ok(Arc::clone(p)),
            Some(_) => {
                let plugin = LoadedPlugin::load_new_version(&path)?;
                if plugin.name() != name {
                    return Err(LoadError::NameMismatch {
                        path,
                        expected: name.to_owned(),
                        actual: plugin.name().to_owned(),
                    });
                }
                tracing::info!(plugin = %name, path = %path.display(), "a new version of the payment plugin is loaded beside the old one");
                let plugin = Arc::new(plugin);
                self.plugins.insert(name.to_owned(), Arc::clone(&plugin));
                Ok(plugin)
            }
        }
    }

    fn insert(&mut self, plugin: LoadedPlugin) -> Result<Arc<LoadedPlugin>, LoadError> {
        if let Some(first) = self.plugins.get(plugin.name()) {
            return Err(LoadError::Duplicate {
                path: plugin.path().to_path_buf(),
                name: plugin.name().to_owned(),
                first: first.path().to_path_buf(),
            });
        }
        let plugin = Arc::new(plugin);
        self.plugins
            .insert(plugin.name().to_owned(), Arc::clone(&plugin));
        Ok(plugin)
    }

    /// The plugin named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<LoadedPlugin>> {
        self.plugins.get(name)
    }

    /// The first plugin (by name) serving a card entry's method and currency.
    pub fn for_entry(&self, method: &str, currency: &str) -> Option<&Arc<LoadedPlugin>> {
        self.plugins.values().find(|p| p.serves(method, currency))
    }

    /// All loaded plugins, by name.
    pub fn plugins(&self) -> impl Iterator<Item = &Arc<LoadedPlugin>> {
        self.plugins.values()
    }

    /// Files from [`scan_dir`](Self::scan_dir) that were refused.
    pub fn failures(&self) -> &[LoadFailure] {
        &self.failures
    }
}

/// Runs a one-off plugin call (open, check_config) on its own thread, with a timeout. A
/// hung call leaves one parked thread behind; these calls happen once per configured
/// entry at start-up, so that stays bounded.
fn call_once<T: Send + 'static>(
    plugin: &LoadedPlugin,
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PaymentError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    thread::Builder::new()
        .name(format!("plugin-{}-open", plugin.name()))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| PaymentError::Threads {
            plugin: plugin.name().to_owned(),
            reason: e.to_string(),
        })?;
    rx.recv_timeout(timeout).map_err(|e| match e {
        std::sync::mpsc::RecvTimeoutError::Timeout => PaymentError::TimedOut {
            plugin: plugin.name().to_owned(),
            timeout_ms: timeout.as_millis(),
        },
        std::sync::mpsc::RecvTimeoutError::Disconnected => PaymentError::Lost {
            plugin: plugin.name().to_owned(),
        },
    })
}

impl LoadedPlugin {
    /// Asks the plugin to check its TOML table, without opening anything.
    pub fn check_config(&self, config_toml: &str, timeout: Duration) -> Result<(), PaymentError> {
        let Some(check) = self.module.check_config() else {
            return Err(PaymentError::MissingFunction {
                plugin: self.name().to_owned(),
                api: self.declared_api().to_owned(),
                function: "check_config",
                since: "1.1",
            });
        };
        let config = config_toml.to_owned();
        let answer = call_once(self, timeout, move || check(RStr::from_str(&config)))?;
        answer.into_result().map_err(|reason| PaymentError::Plugin {
            plugin: self.name().to_owned(),
            reason: bounded(reason.into_string(), MAX_REASON),
        })
    }

    /// Opens a verifier with the plugin's TOML table and starts its call threads.
    pub fn open(
        self: &Arc<Self>,
        config_toml: &str,
        limits: CallLimits,
    ) -> Result<Arc<OpenedVerifier>, PaymentError> {
        self.open_with_state(config_toml, limits, None)
    }

    /// [`open`](Self::open), handing the plugin `state` (its store for this product) when
    /// it takes one (API 1.3); an older plugin is opened without it.
    pub fn open_with_state(
        self: &Arc<Self>,
        config_toml: &str,
        limits: CallLimits,
        state: Option<&super::plugin_state::StateScope>,
    ) -> Result<Arc<OpenedVerifier>, PaymentError> {
        let config = config_toml.to_owned();
        let with_state = self.module.open_with_state();
        let answer = match (state, with_state) {
            (Some(scope), Some(open)) => {
                let state = super::plugin_state::state_box(scope, self.name());
                call_once(self, limits.timeout, move || {
                    open(RStr::from_str(&config), state)
                })?
            }
            _ => {
                let open = self.module.open();
                call_once(self, limits.timeout, move || open(RStr::from_str(&config)))?
            }
        };
        let verifier = answer
            .into_result()
            .map_err(|reason| PaymentError::Plugin {
                plugin: self.name().to_owned(),
                reason: bounded(reason.into_string(), MAX_REASON),
            })?;
        OpenedVerifier::start(Arc::clone(self), verifier, limits)
    }
}

/// One opened verifier and the threads that call it.
pub struct OpenedVerifier {
    plugin: Arc<LoadedPlugin>,
    pool: CallPool,
    limits: CallLimits,
    /// Why the last payment check failed, if it did (see [`OpenedVerifier::health`]).
    failing: Mutex<Option<String>>,
}

impl std::fmt::Debug for OpenedVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedVerifier")
            .field("plugin", &self.plugin.name())
            .field("limits", &self.limits)
            .finish()
    }
}

/// The longest reason from a plugin passed on (bytes); longer ones are cut.
const MAX_REASON: usize = 1024;

/// `text`, cut to at most `max` bytes at a character boundary.
fn bounded(mut text: String, max: usize) -> String {
    if text.len() > max {
        text.truncate(dazaar_plugin_api::str_prefix(&text, max).len());
        text.push('…');
    }
    text
}

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl OpenedVerifier {
    fn start(
        plugin: Arc<LoadedPlugin>,
        verifier: VerifierBox,
        limits: CallLimits,
    ) -> Result<Arc<OpenedVerifier>, PaymentError> {
        let pool = CallPool::start(verifier, plugin.name(), limits).map_err(|e| {
            PaymentError::Threads {
                plugin: plugin.name().to_owned(),
                reason: e.to_string(),
            }
        })?;
        Ok(Arc::new(OpenedVerifier {
            plugin,
            pool,
            limits,
            failing: Mutex::new(None),
        }))
    }

    /// Whether the plugin is up, for the seller's health check: `Err` with a short reason
    /// when its last payment check failed (a timeout, a backend it could not reach, a
    /// panic, an unreadable answer, all its threads stuck); up after an answer, a refusal
    /// included, and before any check.
    pub fn health(&self) -> Result<(), String> {
        match &*self.failing.lock().unwrap_or_else(|p| p.into_inner()) {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        }
    }

    /// Records the outcome of a payment check for [`health`](Self::health). A stranger's
    /// call shed as busy says nothing about the plugin (strangers' lane is small).
    pub(crate) fn note_outcome(&self, outcome: Result<(), &PaymentError>, stranger: bool) {
        let failing = match outcome {
            Ok(()) | Err(PaymentError::Plugin { .. }) => None,
            Err(PaymentError::Busy { .. }) if stranger => return,
            Err(e) => Some(failure_kind(e)),
        };
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = failing;
    }

    /// The plugin behind this verifier.
    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.plugin
    }

    /// Calls that reached the plugin so far (queued calls whose caller gave up are not
    /// made, and not counted).
    pub fn calls_made(&self) -> u64 {
        self.pool.calls_made()
    }

    /// Calls refused at once because their lane's queue was full.
    pub fn calls_shed(&self) -> u64 {
        self.pool.calls_shed()
    }

    /// `f` (the plugin function `call`) on the pool, waiting on this thread.
    fn call<T: Send + 'static>(
        &self,
        call: &'static str,
        f: impl FnOnce(&VerifierBox) -> T + Send + 'static,
    ) -> Result<T, PaymentError> {
        let plugin = self.plugin.name();
        self.pool
            .call(Lane::Priority, timed(plugin, call, f))
            .map_err(|e| failure(plugin, call, e, self.limits.timeout))
    }

    /// `f` (the plugin function `call`) on the pool in `lane`, as a future that holds no
    /// thread while it waits.
    fn call_async<T: Send + 'static>(
        &self,
        lane: Lane,
        call: &'static str,
        f: impl FnOnce(&VerifierBox) -> T + Send + 'static,
    ) -> impl Future<Output = Result<T, PaymentError>> + Send + 'static {
        let plugin = self.plugin.name().to_owned();
        let answer = self.pool.call_async(lane, timed(&plugin, call, f));
        let timeout = self.limits.timeout;
        async move { answer.await.map_err(|e| failure(&plugin, call, e, timeout)) }
    }

    fn plugin_error(&self, reason: RString) -> PaymentError {
        plugin_error(self.plugin.name(), reason)
    }

    /// Seller side: asks the plugin whether `buyer` may have the product (no cache), on
    /// this thread (priority lane).
    pub fn validate(
        &self,
        buyer: Key,
        seller: Key,
        terms: &Arc<PaymentTerms>,
        now_ms: u64,
    ) -> Result<Grant, PaymentError> {
        let terms = Arc::clone(terms);
        self.call("validate", move |v| {
            v.validate(
                KeyBytes::from(buyer),
                KeyBytes::from(seller),
                &terms,
                now_ms,
            )
        })?
        .into_result()
        .map_err(|r| self.plugin_error(r))
    }

    /// [`validate`](Self::validate) in `lane`, as a future.
    pub(crate) fn validate_async(
        &self,
        lane: Lane,
        buyer: Key,
        seller: Key,
        terms: &Arc<PaymentTerms>,
        now_ms: u64,
    ) -> impl Future<Output = Result<Grant, PaymentError>> + Send + 'static {
        let terms = Arc::clone(terms);
        let answer = self.call_async(lane, "validate", move |v| {
            v.validate(
                KeyBytes::from(buyer),
                KeyBytes::from(seller),
                &terms,
                now_ms,
            )
        });
        let plugin = self.plugin.name().to_owned();
        async move {
            answer
                .await?
                .into_result()
                .map_err(|r| plugin_error(&plugin, r))
        }
    }

    /// A `dazaar/user-message` from the peer: the plugin's reply, if it has one (on this
    /// thread, priority lane).
    pub fn user_message(
        &self,
        buyer: Key,
        seller: Key,
        terms: &Arc<PaymentTerms>,
        message: UserMessage,
    ) -> Result<Option<UserMessage>, PaymentError> {
        let terms = Arc::clone(terms);
        let answer = self.call("user_message", move |v| {
            v.user_message(
                KeyBytes::from(buyer),
                KeyBytes::from(seller),
                &terms,
                &message,
            )
        })?;
        user_message_reply(self.plugin.name(), answer)
    }

    /// [`user_message`](Self::user_message) in `lane`, as a future.
    pub(crate) fn user_message_async(
        &self,
        lane: Lane,
        buyer: Key,
        seller: Key,
        terms: &Arc<PaymentTerms>,
        message: UserMessage,
    ) -> impl Future<Output = Result<Option<UserMessage>, PaymentError>> + Send + 'static {
        let terms = Arc::clone(terms);
        let answer = self.call_async(lane, "user_message", move |v| {
            v.user_message(
                KeyBytes::from(buyer),
                KeyBytes::from(seller),
                &terms,
                &message,
            )
        });
        let plugin = self.plugin.name().to_owned();
        async move { user_message_reply(&plugin, answer.await?) }
    }

    /// Buyer side: how to pay `amount` for the product sold under `seller`.
    pub fn payment_request(
        &self,
        buyer: Key,
        seller: Key,
        terms: &Arc<PaymentTerms>,
        amount: &str,
    ) -> Result<PaymentInstructions, PaymentError> {
        let terms = Arc::clone(terms);
        let amount = amount.to_owned();
        let json = self
            .call("payment_request", move |v| {
                v.payment_request(
                    KeyBytes::from(buyer),
                    KeyBytes::from(seller),
                    &terms,
                    RStr::from_str(&amount),
                )
            })?
            .into_result()
            .map_err(|r| self.plugin_error(r))?;
        serde_json::from_str(json.as_str()).map_err(|e| PaymentError::BadAnswer {
            plugin: self.plugin.name().to_owned(),
            detail: e.to_string(),
        })
    }

    /// Runs `f` with the verifier on one of the pool's threads (for benchmarks that time
    /// many raw ABI calls inside one job).
    #[doc(hidden)]
    pub fn with_verifier_for_bench<T: Send + 'static>(
        &self,
        f: impl FnOnce(&VerifierBox) -> T + Send + 'static,
    ) -> Result<T, PaymentError> {
        self.call("bench", f)
    }
}

/// `f`, timed into [`names::PLUGIN_CALL_SECONDS`] on the plugin's thread (a call that
/// ends after its caller gave up is measured too).
fn timed<T>(
    plugin: &str,
    call: &'static str,
    f: impl FnOnce(&VerifierBox) -> T + Send + 'static,
) -> impl FnOnce(&VerifierBox) -> T + Send + 'static {
    let histogram = metrics::histogram!(
        names::PLUGIN_CALL_SECONDS,
        names::PLUGIN => plugin.to_owned(),
        names::CALL => call,
    );
    move |v| {
        let start = Instant::now();
        let answer = f(v);
        histogram.record(start.elapsed().as_secs_f64());
        answer
    }
}

/// A pool failure as an error, counting timeouts in [`names::PLUGIN_TIMEOUTS`].
fn failure(
    plugin: &str,
    call: &'static str,
    failure: CallFailure,
    timeout: Duration,
) -> PaymentError {
    if failure == CallFailure::TimedOut {
        metrics::counter!(
            names::PLUGIN_TIMEOUTS,
            names::PLUGIN => plugin.to_owned(),
            names::CALL => call,
        )
        .increment(1);
    }
    PaymentError::from_failure(plugin, failure, timeout)
}

/// What kind of failure `e` is, in a few words with the plugin's name (never the
/// plugin's own detail, which may quote its backend).
fn failure_kind(e: &PaymentError) -> String {
    let plugin = e.plugin().unwrap_or("-");
    let kind = match e {
        PaymentError::Plugin { .. } => "refused",
        PaymentError::Unavailable { .. } => "backend unavailable",
        PaymentError::Panicked { .. } => "panicked",
        PaymentError::TimedOut { .. } => "timed out",
        PaymentError::Busy { .. } => "all call threads busy",
        PaymentError::Lost { .. } => "call lost",
        PaymentError::BadAnswer { .. } => "unreadable answer",
        _ => "failed",
    };
    format!("plugin {plugin}: last payment check {kind}")
}

/// A plugin's error reason, typed: a refusal (meant for the buyer), a failure the plugin
/// marked as such, or its own panic. Bounded in length.
fn plugin_error(plugin: &str, reason: RString) -> PaymentError {
    let plugin = plugin.to_owned();
    let reason = bounded(reason.into_string(), MAX_REASON);
    if let Some(detail) = reason.strip_prefix(dazaar_plugin_api::UNAVAILABLE_PREFIX) {
        PaymentError::Unavailable {
            plugin,
            detail: detail.to_owned(),
        }
    } else if reason.starts_with(PANIC_PREFIX) {
        PaymentError::Panicked {
            plugin,
            detail: reason,
        }
    } else {
        PaymentError::Plugin { plugin, reason }
    }
}

/// A plugin's answer to a user message, checked.
fn user_message_reply(
    plugin: &str,
    answer: abi_stable::std_types::RResult<abi_stable::std_types::ROption<UserMessage>, RString>,
) -> Result<Option<UserMessage>, PaymentError> {
    let reply = answer
        .into_result()
        .map(|o| o.into_option())
        .map_err(|r| plugin_error(plugin, r))?;
    match reply {
        Some(m) if m.name.len() + m.message.len() > MAX_USER_MESSAGE => {
            Err(PaymentError::BadAnswer {
                plugin: plugin.to_owned(),
                detail: "user message reply larger than the limit".to_owned(),
            })
        }
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_errors_are_typed_by_their_mark() {
        let e = plugin_error("p", "no payment recorded for this buyer".into());
        assert!(e.is_refusal());
        assert_eq!(e.public_reason(), "p: no payment recorded for this buyer");
        let marked = dazaar_plugin_api::unavailable("HTTP 500 from 10.0.0.7");
        let e = plugin_error("p", marked.into());
        assert_eq!(
            e,
            PaymentError::Unavailable {
                plugin: "p".into(),
                detail: "HTTP 500 from 10.0.0.7".into()
            }
        );
        assert_eq!(e.public_reason(), PUBLIC_UNAVAILABLE);
        assert_eq!(e.to_string(), "p: HTTP 500 from 10.0.0.7");
        let e = plugin_error("p", "plugin panicked in validate: boom".into());
        assert!(matches!(e, PaymentError::Panicked { .. }));
        assert_eq!(e.public_reason(), PUBLIC_UNAVAILABLE);
        let busy = PaymentError::Busy { plugin: "p".into() };
        assert_eq!(busy.public_reason(), PUBLIC_BUSY);
        let slow = PaymentError::TimedOut {
            plugin: "p".into(),
            timeout_ms: 5,
        };
        assert_eq!(slow.public_reason(), PUBLIC_UNAVAILABLE);
    }

    #[test]
    fn reasons_are_bounded() {
        assert_eq!(bounded("short".into(), 10), "short");
        assert_eq!(bounded("ééé".into(), 3), "é…");
        assert_eq!(
            bounded("x".repeat(2000), MAX_REASON).len(),
            MAX_REASON + '…'.len_utf8()
        );
    }
}
