//! The plugins a host has loaded, the verifiers it opened, and the gate that answers
//! "is this buyer valid?" for one product.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use abi_stable::std_types::{RStr, RString};
use dazaar_plugin_api::{
    Grant, Key, KeyBytes, PaymentInstructions, PaymentTerms, UserMessage, VerifierBox,
};

use super::loader::{plugin_file_name, LoadError, LoadedPlugin};
use super::pool::{CallFailure, CallLimits, CallPool};
use super::wire::MAX_USER_MESSAGE;

/// Why a plugin call gave no usable answer. The reason never includes the plugin's
/// configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PaymentError {
    /// The plugin answered with an error (a panic inside it becomes one too).
    #[error("{plugin}: {reason}")]
    Plugin {
        /// Plugin name.
        plugin: String,
        /// Its reason.
        reason: String,
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
}

impl PluginRegistry {
    /// An empty registry.
    pub fn new() -> PluginRegistry {
        PluginRegistry::default()
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

    /// Loads plugin `name` from `dir` (`libdazaar_<name>.so` on Linux), unless a plugin of
    /// that name is already loaded.
    pub fn load_named(&mut self, dir: &Path, name: &str) -> Result<Arc<LoadedPlugin>, LoadError> {
        if let Some(p) = self.plugins.get(name) {
            return Ok(Arc::clone(p));
        }
        let path = dir.join(plugin_file_name(name));
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
        let open = self.module.open();
        let config = config_toml.to_owned();
        let answer = call_once(self, limits.timeout, move || open(RStr::from_str(&config)))?;
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
        }))
    }

    /// The plugin behind this verifier.
    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.plugin
    }

    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&VerifierBox) -> T + Send + 'static,
    ) -> Result<T, PaymentError> {
        self.pool
            .call(f)
            .map_err(|e| PaymentError::from_failure(self.plugin.name(), e, self.limits.timeout))
    }

    fn plugin_error(&self, reason: RString) -> PaymentError {
        PaymentError::Plugin {
            plugin: self.plugin.name().to_owned(),
            reason: bounded(reason.into_string(), MAX_REASON),
        }
    }

    /// Seller side: asks the plugin whether `buyer` may have the product (no cache).
    pub fn validate(
        &self,
        buyer: Key,
        seller: Key,
        terms: &Arc<PaymentTerms>,
        now_ms: u64,
    ) -> Result<Grant, PaymentError> {
        let terms = Arc::clone(terms);
        self.call(move |v| {
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

    /// A `dazaar/user-message` from the peer: the plugin's reply, if it has one.
    pub fn user_message(
        &self,
        buyer: Key,
        seller: Key,
        terms: &Arc<PaymentTerms>,
        message: UserMessage,
    ) -> Result<Option<UserMessage>, PaymentError> {
        let terms = Arc::clone(terms);
        let answer = self.call(move |v| {
            v.user_message(
                KeyBytes::from(buyer),
                KeyBytes::from(seller),
                &terms,
                &message,
            )
        })?;
        let reply = answer
            .into_result()
            .map(|o| o.into_option())
            .map_err(|r| self.plugin_error(r))?;
        match reply {
            Some(m) if m.name.len() + m.message.len() > MAX_USER_MESSAGE => {
                Err(PaymentError::BadAnswer {
                    plugin: self.plugin.name().to_owned(),
                    detail: "user message reply larger than the limit".to_owned(),
                })
            }
            other => Ok(other),
        }
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
            .call(move |v| {
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
        self.call(f)
    }
}

/// The answer to "may this buyer have the data?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validation {
    /// Yes: what the buyer gets, and the plugin that said so.
    Valid {
        /// Free, time or bytes left.
        grant: Grant,
        /// The plugin that granted it (`None` when the product is free: no entries).
        plugin: Option<String>,
    },
    /// No, with the reason sent to the buyer.
    Invalid {
        /// Why.
        reason: String,
    },
}

impl Validation {
    /// Whether access is granted.
    pub fn is_valid(&self) -> bool {
        matches!(self, Validation::Valid { .. })
    }

    /// The JSON the seller sends: the grant for `dazaar/valid`, or `{"error": reason}` for
    /// `dazaar/invalid`.
    pub fn to_wire_json(&self) -> serde_json::Value {
        match self {
            Validation::Valid { grant, .. } => grant
                .to_json()
                .unwrap_or_else(|| serde_json::json!({"error": "unknown access kind"})),
            Validation::Invalid { reason } => serde_json::json!({ "error": reason }),
        }
    }
}

/// The most buyers whose answers one gate remembers.
const CACHE_LIMIT: usize = 100_000;

/// One configured payment entry: the card terms and the verifier that checks them.
#[derive(Debug, Clone)]
pub struct PaymentEntry {
    /// The card payment entry.
    pub terms: Arc<PaymentTerms>,
    /// The opened verifier.
    pub verifier: Arc<OpenedVerifier>,
}

/// Answers "is this buyer valid?" for one product: tries each payment entry (the first
/// success wins), caches the answer for the revalidation period, and fails closed.
#[derive(Debug)]
pub struct PaymentGate {
    entries: Vec<PaymentEntry>,
    revalidate: Duration,
    cache: Mutex<HashMap<(Key, Key), (Instant, Validation)>>,
}

impl PaymentGate {
    /// A gate over `entries`; answers are reused for `revalidate`. No entries: free.
    pub fn new(entries: Vec<PaymentEntry>, revalidate: Duration) -> PaymentGate {
        PaymentGate {
            entries,
            revalidate,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The configured entries.
    pub fn entries(&self) -> &[PaymentEntry] {
        &self.entries
    }

    /// Whether `buyer` may have the product sold under `seller`, now. Uses the cached
    /// answer if it is younger than the revalidation period (time left is aged).
    pub fn validate(&self, buyer: Key, seller: Key) -> Validation {
        if let Some(answer) = self.cached(buyer, seller) {
            return answer;
        }
        let now = Instant::now();
        let answer = self.validate_uncached(buyer, seller, now_ms());
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_LIMIT {
                let revalidate = self.revalidate;
                cache.retain(|_, (at, _)| now.saturating_duration_since(*at) < revalidate);
                if cache.len() >= CACHE_LIMIT {
                    cache.clear();
                }
            }
            cache.insert((buyer, seller), (now, answer.clone()));
        }
        answer
    }

    /// The cached answer for `buyer`, if still fresh, without calling any plugin: lets an
    /// async caller answer at once and go to a blocking thread only on a miss.
    pub fn cached(&self, buyer: Key, seller: Key) -> Option<Validation> {
        let cache = self.cache.lock().ok()?;
        let (at, answer) = cache.get(&(buyer, seller))?;
        let age = Instant::now().saturating_duration_since(*at);
        if age < self.revalidate {
            age_answer(answer, age)
        } else {
            None
        }
    }

    /// Forgets the cached answer for `buyer` (e.g. after it reports a payment).
    pub fn forget(&self, buyer: Key, seller: Key) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(&(buyer, seller));
        }
    }

    /// Asks the plugins, without the cache: each entry in order, first success wins; if
    /// none succeeds, the last error; no entries means free.
    pub fn validate_uncached(&self, buyer: Key, seller: Key, now_ms: u64) -> Validation {
        if self.entries.is_empty() {
            return Validation::Valid {
                grant: Grant::free(),
                plugin: None,
            };
        }
        let mut last = None;
        for entry in &self.entries {
            match entry.verifier.validate(buyer, seller, &entry.terms, now_ms) {
                Ok(grant) if grant.to_json().is_some() => {
                    return Validation::Valid {
                        grant,
                        plugin: Some(entry.verifier.plugin().name().to_owned()),
                    }
                }
                Ok(_) => {
                    last = Some(format!(
                        "{}: unknown access kind",
                        entry.verifier.plugin().name()
                    ))
                }
                Err(e) => {
                    if !matches!(e, PaymentError::Plugin { .. }) {
                        tracing::warn!(error = %e, buyer = %hex::encode(buyer), "payment plugin failed");
                    }
                    last = Some(e.to_string());
                }
            }
        }
        Validation::Invalid {
            reason: last.unwrap_or_else(|| "No payment is supported".to_owned()),
        }
    }

    /// Routes a buyer's `dazaar/user-message` to the entries' plugins; the first reply wins.
    /// `Ok(None)`: no plugin handles it.
    pub fn user_message(
        &self,
        buyer: Key,
        seller: Key,
        message: &UserMessage,
    ) -> Result<Option<UserMessage>, PaymentError> {
        let mut last_err = None;
        for entry in &self.entries {
            match entry
                .verifier
                .user_message(buyer, seller, &entry.terms, message.clone())
            {
                Ok(Some(reply)) => return Ok(Some(reply)),
                Ok(None) => {}
                Err(e) => last_err = Some(e),
            }
        }
        match last_err {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }
}

/// A cached answer, `age` later: time left shrinks; a time grant that ran out is not
/// served from the cache.
fn age_answer(answer: &Validation, age: Duration) -> Option<Validation> {
    match answer {
        Validation::Valid { grant, plugin } if grant.kind == dazaar_plugin_api::GrantKind::TIME => {
            let spent = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
            let left = grant.remaining.checked_sub(spent).filter(|l| *l > 0)?;
            Some(Validation::Valid {
                grant: Grant::time_ms(left),
                plugin: plugin.clone(),
            })
        }
        other => Some(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_bounded() {
        assert_eq!(bounded("short".into(), 10), "short");
        assert_eq!(bounded("ééé".into(), 3), "é…");
        assert_eq!(
            bounded("x".repeat(2000), MAX_REASON).len(),
            MAX_REASON + '…'.len_utf8()
        );
    }

    #[test]
    fn cached_time_grants_age() {
        let v = Validation::Valid {
            grant: Grant::time_ms(1000),
            plugin: None,
        };
        assert_eq!(
            age_answer(&v, Duration::from_millis(400)),
            Some(Validation::Valid {
                grant: Grant::time_ms(600),
                plugin: None
            })
        );
        assert_eq!(age_answer(&v, Duration::from_millis(1000)), None);
        let free = Validation::Valid {
            grant: Grant::free(),
            plugin: None,
        };
        assert_eq!(
            age_answer(&free, Duration::from_secs(9)),
            Some(free.clone())
        );
    }
}
