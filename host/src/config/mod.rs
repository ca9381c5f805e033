//! The `dazaar.toml` configuration file, shared by seller and buyer, parsed and validated
//! into typed [`Settings`].
//!
//! ```toml
//! data_dir = "~/.local/share/dazaar"
//! listen = "0.0.0.0:0"
//! plugin_dir = "plugins"
//! passphrase_env = "DAZAAR_PASSPHRASE"  # optional: where the master key's passphrase is
//!
//! [discovery]
//! dht = true
//! mdns = true
//! peers = ["192.0.2.1:4000"]
//! bootstrap = []
//!
//! [[sell]]
//! feed = "feeds/market-data"
//! name = "BTC/USD order book"
//! listen = "0.0.0.0:4001"       # optional; default: the top-level listen (or --listen)
//! revalidate_ms = 1000
//! terms = "No redistribution."
//! card = { description = "...", homepage = "...", contact = "...", provider = "..." }
//!
//! [[sell.payment]]
//! plugin = "lnd"
//! method = "Lightning"          # optional; default: the plugin's first method
//! currency = "SATS"
//! amount = "1000"               # string or number
//! unit = "seconds"              # seconds | minutes | hours
//! interval = "600"
//! min_seconds = 1               # optional
//! payment_delay = 5000          # optional, milliseconds
//! pay_to = "account"            # optional
//! [sell.payment.config]         # the plugin's own table, handed over as TOML text
//! address = "https://127.0.0.1:10009"
//!
//! [limits]                      # optional; a seller facing strangers
//! max_connections = 4096        # never more than RLIMIT_NOFILE allows
//! max_connections_per_ip = 32   # 0: no per-address cap
//! unpaid_grace_secs = 60        # a buyer not valid this long is disconnected
//! payment_checks_per_ip = 4     # fresh checks of unknown keys per second per address
//!
//! [metrics]                     # optional; a seller's /metrics and /healthz (HTTP)
//! listen = "127.0.0.1:9464"
//!
//! [state]                       # optional; default sqlite: in data_dir
//! url = "postgres://dazaar:secret@10.0.0.5/dazaar"   # or "sqlite:/var/lib/dazaar/state.db"
//!
//! [buy]
//! [[buy.payment]]
//! plugin = "lnd"
//! [buy.payment.config]
//! address = "https://127.0.0.1:10009"
//! ```
//!
//! Paths may start with `~/`; relative paths are taken from the directory of the config
//! file (inside a plugin's own table, paths are the plugin's business). Unknown keys are
//! errors everywhere except inside a plugin's table. Every error names the file, the line
//! and column, and the key.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::payments::{
    BuyerPlugin, BuyerWallet, CallLimits, GateLimits, PaymentGate, PaymentSpec, PluginRegistry,
};

use dazaar_plugin_api::{PaymentTerms, Price, Unit};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// Why the configuration could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {reason}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// A payment entry's plugin could not be loaded or opened.
    #[error("{file}:{line}: plugin `{plugin}`: {message}")]
    Plugin {
        /// The file.
        file: PathBuf,
        /// The line of the `[[sell.payment]]` entry.
        line: usize,
        /// The plugin name.
        plugin: String,
        /// What went wrong (never the plugin's settings).
        message: String,
    },
    /// A syntax error, an unknown or missing key, a wrong type, or a bad value.
    #[error("{file}:{line}:{column}: {key}: {message}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// 1-based line (0 if unknown).
        line: usize,
        /// 1-based column (0 if unknown).
        column: usize,
        /// The key, as a path: `sell[0].payment[1].unit` (or `(file)` for syntax errors).
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// The line the error points at (0 when unknown).
    pub fn line(&self) -> usize {
        match self {
            ConfigError::Invalid { line, .. } => *line,
            ConfigError::Plugin { line, .. } => *line,
            ConfigError::Read { .. } => 0,
        }
    }

    /// The key the error points at.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } | ConfigError::Plugin { .. } => None,
        }
    }
}

/// Validated settings.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Settings {
    /// The file they came from.
    pub file: PathBuf,
    /// Identity and feeds.
    pub data_dir: PathBuf,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where plugin libraries are.
    pub plugin_dir: PathBuf,
    /// The environment variable holding the master key's passphrase, when it is
    /// encrypted at rest (never the passphrase itself).
    pub passphrase_env: Option<String>,
    /// How peers are found.
    pub discovery: DiscoverySettings,
    /// Products sold.
    pub sell: Vec<SellSettings>,
    /// How this peer pays when it buys.
    pub buy: BuySettings,
    /// Connection limits of a seller (`[limits]`); unset keys take the defaults.
    pub limits: LimitSettings,
    /// The seller's state database (`[state] url`); `None`: `sqlite:` in the data dir.
    pub state: Option<crate::state::StateUrl>,
    /// Where a seller serves `/metrics` and `/healthz` (`[metrics] listen`); `None`: not
    /// at all (unless `--metrics`).
    pub metrics: Option<SocketAddr>,
}

/// The `[limits]` section: what strangers may hold of a seller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitSettings {
    /// Most connections at once (further capped by RLIMIT_NOFILE).
    pub max_connections: Option<usize>,
    /// Most connections at once from one IP address (0: no cap).
    pub max_connections_per_ip: Option<usize>,
    /// A buyer not valid for this long is disconnected.
    pub unpaid_grace: Option<Duration>,
    /// Fresh payment checks of unknown buyer keys per second from one IP address
    /// (0: no per-address limit).
    pub payment_checks_per_ip: Option<u32>,
    /// Fresh payment checks of unknown buyer keys per second from all addresses
    /// together (0: no global limit).
    pub payment_checks_per_second: Option<u32>,
    /// Ed25519 signatures per second the seller's rekeyed announcements may cost
    /// together (its signature budget; see [`crate::protocol::budget`]).
    pub signatures_per_second: Option<u64>,
}

/// The `[discovery]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiscoverySettings {
    /// Use the BitTorrent mainline DHT.
    pub dht: bool,
    /// Use mDNS on the LAN.
    pub mdns: bool,
    /// Static peer addresses.
    pub peers: Vec<String>,
    /// DHT bootstrap nodes (empty: the defaults).
    pub bootstrap: Vec<String>,
}

/// One `[[sell]]` product.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SellSettings {
    /// The feed's directory.
    pub feed: PathBuf,
    /// Product name (on the card).
    pub name: String,
    /// The product's own address (`listen` in its `[[sell]]`); `None`: the seller's
    /// default (`--listen`, else the top-level `listen`).
    pub listen: Option<SocketAddr>,
    /// How often buyers are revalidated (and how long answers are cached).
    pub revalidate: Duration,
    /// Terms of use buyers must accept, if any.
    pub terms: Option<String>,
    /// Card fields.
    pub card: CardSettings,
    /// Payment entries; empty means free.
    pub payment: Vec<SellPayment>,
}

/// The `card` table of a `[[sell]]` (the card's descriptive fields).
pub use crate::card::CardFields as CardSettings;

/// One `[[sell.payment]]`: a card payment entry and the plugin that checks it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SellPayment {
    /// Plugin name (`dazaar_<plugin>` in the plugin directory).
    pub plugin: String,
    /// Card method, if set (else the plugin's first method).
    pub method: Option<String>,
    /// The card entry, with `method` empty when not set.
    pub terms: PaymentTerms,
    /// The price under its unit's rule (already checked).
    pub price: Price,
    /// The plugin's own table, as TOML text (never logged).
    pub config: String,
    /// Line of the entry in the file.
    pub line: usize,
}

impl SellPayment {
    /// The entry as the payments setup reads it (`payments::open_entry`,
    /// `payments::card_entry`): the method, when unset, is the plugin's first.
    pub fn spec(&self) -> PaymentSpec<'_> {
        PaymentSpec {
            plugin: &self.plugin,
            method: self.method.as_deref(),
            price: &self.terms,
            config: &self.config,
            state: None,
        }
    }
}

/// The `[buy]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BuySettings {
    /// Payment plugins the buyer uses, in order of preference.
    pub payment: Vec<BuyPayment>,
}

/// One `[[buy.payment]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BuyPayment {
    /// Plugin name.
    pub plugin: String,
    /// Only for card entries of this method (else any the plugin serves).
    pub method: Option<String>,
    /// The plugin's own table, as TOML text (never logged).
    pub config: String,
    /// Line of the entry in the file.
    pub line: usize,
}

impl Settings {
    /// Loads the plugins of one product from `plugin_dir` (through `registry`, so each
    /// library is loaded once), opens a verifier for each payment entry and returns the
    /// product's gate. The first entry that fails stops the setup with its file and line.
    pub fn payment_gate(
        &self,
        product: &SellSettings,
        registry: &mut PluginRegistry,
        limits: CallLimits,
    ) -> Result<PaymentGate, ConfigError> {
        let gate_limits = GateLimits::default().with_check_rates(
            self.limits.payment_checks_per_ip,
            self.limits.payment_checks_per_second,
        );
        self.payment_gate_with(product, registry, limits, gate_limits, None)
    }

    /// [`Settings::payment_gate`] with the gate's limits given (the seller settles them
    /// from its flags and this file's `[limits]`).
    pub fn payment_gate_with(
        &self,
        product: &SellSettings,
        registry: &mut PluginRegistry,
        limits: CallLimits,
        gate_limits: GateLimits,
        state: Option<&crate::payments::StateScope>,
    ) -> Result<PaymentGate, ConfigError> {
        let mut entries = Vec::with_capacity(product.payment.len());
        for p in &product.payment {
            let spec = crate::payments::PaymentSpec { state, ..p.spec() };
            let entry = crate::payments::open_entry(registry, &self.plugin_dir, &spec, limits)
                .map_err(|e| ConfigError::Plugin {
                    file: self.file.clone(),
                    line: p.line,
                    plugin: p.plugin.clone(),
                    message: e.to_string(),
                })?;
            entries.push(entry);
        }
        Ok(PaymentGate::with_limits(
            entries,
            product.revalidate,
            gate_limits,
        ))
    }

    /// Checks every payment entry without opening anything (`dazaar config check`): each
    /// plugin loads, serves its `[[sell.payment]]` entry's method (the plugin's first when
    /// unset) and currency at a price the pricing rules read, and accepts its settings
    /// (through the plugin's `check_config`; a plugin built before that function is
    /// skipped with a warning). Every problem is returned, in file order.
    pub fn check_plugins(
        &self,
        registry: &mut PluginRegistry,
        timeout: Duration,
    ) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        let entries = self
            .sell
            .iter()
            .flat_map(|s| &s.payment)
            .map(|p| (&p.plugin, Some(p), &p.config, p.line))
            .chain(
                self.buy
                    .payment
                    .iter()
                    .map(|p| (&p.plugin, None, &p.config, p.line)),
            );
        for (plugin, sell, config, line) in entries {
            let fail = |message: String| ConfigError::Plugin {
                file: self.file.clone(),
                line,
                plugin: plugin.clone(),
                message,
            };
            let loaded = match registry.load_named(&self.plugin_dir, plugin) {
                Ok(p) => p,
                Err(e) => {
                    problems.push(fail(e.to_string()));
                    continue;
                }
            };
            if let Some(p) = sell {
                if let Err(e) = crate::payments::terms_for(&loaded, p.method.as_deref(), &p.terms) {
                    problems.push(fail(e.to_string()));
                }
            }
            match loaded.check_config(config, timeout) {
                Ok(()) => {}
                Err(crate::payments::PaymentError::MissingFunction { .. }) => {
                    tracing::warn!(plugin = %plugin, "plugin is too old to check its settings; skipped");
                }
                Err(e) => problems.push(fail(format!("settings: {e}"))),
            }
        }
        problems
    }

    /// Loads and opens the buyer's payment plugins (`[[buy.payment]]`), in file order.
    pub fn buyer_wallet(
        &self,
        registry: &mut PluginRegistry,
        limits: CallLimits,
    ) -> Result<BuyerWallet, ConfigError> {
        let mut plugins = Vec::with_capacity(self.buy.payment.len());
        for p in &self.buy.payment {
            let fail = |message: String| ConfigError::Plugin {
                file: self.file.clone(),
                line: p.line,
                plugin: p.plugin.clone(),
                message,
            };
            let plugin = registry
                .load_named(&self.plugin_dir, &p.plugin)
                .map_err(|e| fail(e.to_string()))?;
            let verifier = plugin
                .open(&p.config, limits)
                .map_err(|e| fail(e.to_string()))?;
            plugins.push(BuyerPlugin {
                method: p.method.clone(),
                verifier,
            });
        }
        Ok(BuyerWallet::new(plugins))
    }
}

// ---- the file as written ------------------------------------------------------------

/// A number or a string holding one, as cards allow for `amount` and `interval`.
#[derive(Debug, Clone)]
struct NumberText(String);

impl<'de> Deserialize<'de> for NumberText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NumberText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or a string holding a number")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumberText, E> {
                Ok(NumberText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumberText, E> {
                Ok(NumberText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<NumberText, E> {
                Ok(NumberText(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NumberText, E> {
                Ok(NumberText(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    data_dir: Option<Spanned<String>>,
    passphrase_env: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
    plugin_dir: Option<Spanned<String>>,
    #[serde(default)]
    discovery: Option<RawDiscovery>,
    #[serde(default)]
    sell: Vec<RawSell>,
    #[serde(default)]
    buy: Option<RawBuy>,
    #[serde(default)]
    limits: Option<RawLimits>,
    #[serde(default)]
    state: Option<RawState>,
    #[serde(default)]
    metrics: Option<RawMetrics>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    url: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<Spanned<u64>>,
    max_connections_per_ip: Option<Spanned<u64>>,
    payment_checks_per_ip: Option<Spanned<u64>>,
    payment_checks_per_second: Option<Spanned<u64>>,
    unpaid_grace_secs: Option<Spanned<u64>>,
    signatures_per_second: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiscovery {
    dht: Option<bool>,
    mdns: Option<bool>,
    #[serde(default)]
    peers: Vec<String>,
    #[serde(default)]
    bootstrap: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSell {
    feed: Spanned<String>,
    name: Spanned<String>,
    listen: Option<Spanned<String>>,
    revalidate_ms: Option<Spanned<u64>>,
    terms: Option<String>,
    #[serde(default)]
    card: Option<RawCard>,
    #[serde(default)]
    payment: Vec<Spanned<RawSellPayment>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCard {
    description: Option<String>,
    homepage: Option<String>,
    contact: Option<String>,
    provider: Option<String>,
    #[serde(default)]
    keywords: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSellPayment {
    plugin: Spanned<String>,
    method: Option<String>,
    currency: String,
    amount: Spanned<NumberText>,
    unit: Spanned<String>,
    /// Required except for unit `once`, which ignores it.
    interval: Option<Spanned<NumberText>>,
    min_seconds: Option<Spanned<f64>>,
    payment_delay: Option<u64>,
    pay_to: Option<String>,
    #[serde(default)]
    config: Option<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuy {
    #[serde(default)]
    payment: Vec<Spanned<RawBuyPayment>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuyPayment {
    plugin: Spanned<String>,
    method: Option<String>,
    #[serde(default)]
    config: Option<toml::Table>,
}

// ---- finding and loading ------------------------------------------------------------

/// A commented example covering every key (`dazaar config init`): it passes `dazaar
/// config check` as it is, and every setting left commented out (`# key = value`) is a
/// valid key.
pub const EXAMPLE: &str = include_str!("example.toml");

/// The variable naming the configuration file when `--config` is not given.
pub const CONFIG_ENV: &str = "DAZAAR_CONFIG";

/// A place the configuration file is looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Candidate {
    /// The file.
    pub path: PathBuf,
    /// Named by the user (`--config`, `DAZAAR_CONFIG`): used even when it does not exist
    /// (loading it then fails), never skipped for a later place.
    pub explicit: bool,
}

/// Where the configuration file is looked for, in order: `flag` (`--config`), the
/// variable [`CONFIG_ENV`], `./dazaar.toml`, `$XDG_CONFIG_HOME/dazaar/dazaar.toml` (with
/// `$XDG_CONFIG_HOME` unset or relative: `$HOME/.config`), `/etc/dazaar/dazaar.toml`.
/// `var` reads the environment.
pub fn candidates(
    flag: Option<&Path>,
    var: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Vec<Candidate> {
    let set = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut out = Vec::with_capacity(5);
    let explicit = |path: PathBuf| Candidate {
        path,
        explicit: true,
    };
    let found = |path: PathBuf| Candidate {
        path,
        explicit: false,
    };
    if let Some(f) = flag {
        out.push(explicit(f.to_path_buf()));
    }
    if let Some(f) = set(CONFIG_ENV) {
        out.push(explicit(f));
    }
    out.push(found(PathBuf::from("dazaar.toml")));
    let xdg = set("XDG_CONFIG_HOME")
        .filter(|p| p.is_absolute())
        .or_else(|| set("HOME").map(|h| h.join(".config")));
    if let Some(dir) = xdg {
        out.push(found(dir.join("dazaar/dazaar.toml")));
    }
    out.push(found(PathBuf::from("/etc/dazaar/dazaar.toml")));
    out
}

/// The configuration file to use: the first of [`candidates`] that is explicit or
/// exists; `None` when there is none.
pub fn locate(
    flag: Option<&Path>,
    var: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    candidates(flag, var)
        .into_iter()
        .find(|c| c.explicit || c.path.is_file())
        .map(|c| c.path)
}

/// Reads and validates `path`.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        file: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    parse(&text, path)
}

/// Parses and validates `text`, which came from `file` (for messages and relative paths).
pub fn parse(text: &str, file: &Path) -> Result<Settings, ConfigError> {
    let ctx = Ctx { text, file };
    let raw: RawFile = serde_path_to_error::deserialize(toml::Deserializer::new(text))
        .map_err(|e| ctx.serde_error(e))?;
    ctx.validate(raw)
}

struct Ctx<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Ctx<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    fn error(&self, span: Option<Range<usize>>, key: String, message: String) -> ConfigError {
        let (line, column) = span.map_or((0, 0), |s| self.line_col(s.start));
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line,
            column,
            key,
            message,
        }
    }

    fn serde_error(&self, e: serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
        // Spanned values add an internal segment to the path; it is not a key.
        let mut key = e
            .path()
            .to_string()
            .split('.')
            .filter(|seg| !seg.starts_with("$__serde_spanned"))
            .collect::<Vec<_>>()
            .join(".");
        let inner = e.inner();
        let message = inner.message().trim().to_owned();
        // "unknown field `x`": the path is the table; name the key itself.
        if let Some(field) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
        {
            let already = key == field || key.ends_with(&format!(".{field}"));
            if !already {
                key = if key == "." || key.is_empty() {
                    field.to_owned()
                } else {
                    format!("{key}.{field}")
                };
            }
        }
        if key == "." || key.is_empty() {
            key = "(top level)".to_owned();
        }
        self.error(inner.span(), key, message)
    }

    fn path(&self, text: &str) -> PathBuf {
        let expanded = match text
            .strip_prefix("~/")
            .or(if text == "~" { Some("") } else { None })
        {
            Some(rest) => match std::env::var_os("HOME") {
                Some(home) => Path::new(&home).join(rest),
                None => PathBuf::from(text),
            },
            None => PathBuf::from(text),
        };
        if expanded.is_relative() {
            match self.file.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.join(expanded),
                _ => expanded,
            }
        } else {
            expanded
        }
    }

    fn validate(&self, raw: RawFile) -> Result<Settings, ConfigError> {
        let data_dir = match &raw.data_dir {
            Some(d) => self.nonempty_path(d, "data_dir")?,
            None => self.path("~/.local/share/dazaar"),
        };
        let listen = match &raw.listen {
            Some(l) => self.address(l, "listen")?,
            None => SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let plugin_dir = match &raw.plugin_dir {
            Some(d) => self.nonempty_path(d, "plugin_dir")?,
            None => self.path("plugins"),
        };
        let discovery = match raw.discovery {
            Some(d) => DiscoverySettings {
                dht: d.dht.unwrap_or(true),
                mdns: d.mdns.unwrap_or(true),
                peers: d.peers,
                bootstrap: d.bootstrap,
            },
            None => DiscoverySettings {
                dht: true,
                mdns: true,
                peers: vec![],
                bootstrap: vec![],
            },
        };
        let mut sell: Vec<SellSettings> = Vec::with_capacity(raw.sell.len());
        for (i, s) in raw.sell.into_iter().enumerate() {
            // Two products cannot listen on one fixed address (port 0 is always free).
            let span = s.listen.as_ref().map(Spanned::span);
            let product = self.sell(i, s)?;
            if let Some(addr) = product.listen {
                if let Some(j) = sell
                    .iter()
                    .position(|o| addr.port() != 0 && o.listen == Some(addr))
                {
                    return Err(self.error(
                        span,
                        format!("sell[{i}].listen"),
                        format!("{addr} is already the address of sell[{j}]"),
                    ));
                }
            }
            sell.push(product);
        }
        let mut buy = BuySettings::default();
        if let Some(b) = raw.buy {
            for (i, p) in b.payment.into_iter().enumerate() {
                let line = self.line_col(p.span().start).0;
                let p = p.into_inner();
                self.plugin_name(&p.plugin, &format!("buy.payment[{i}].plugin"))?;
                buy.payment.push(BuyPayment {
                    plugin: p.plugin.into_inner(),
                    method: p.method,
                    config: table_text(p.config),
                    line,
                });
            }
        }
        let limits = match &raw.limits {
            Some(l) => self.limits(l)?,
            None => LimitSettings::default(),
        };
        let state = match &raw.state {
            Some(s) => Some(
                crate::state::StateUrl::parse(s.url.get_ref(), &data_dir).map_err(|e| {
                    self.error(Some(s.url.span()), "state.url".into(), e.to_string())
                })?,
            ),
            None => None,
        };
        let metrics = match &raw.metrics {
            Some(m) => Some(self.address(&m.listen, "metrics.listen")?),
            None => None,
        };
        let passphrase_env = raw
            .passphrase_env
            .map(|v| v.into_inner())
            .filter(|v| !v.is_empty());
        Ok(Settings {
            file: self.file.to_path_buf(),
            data_dir,
            listen,
            plugin_dir,
            passphrase_env,
            discovery,
            sell,
            buy,
            limits,
            state,
            metrics,
        })
    }

    fn limits(&self, l: &RawLimits) -> Result<LimitSettings, ConfigError> {
        let ranged = |v: &Option<Spanned<u64>>,
                      key: &str,
                      range: std::ops::RangeInclusive<u64>|
         -> Result<Option<u64>, ConfigError> {
            match v {
                Some(n) if !range.contains(n.get_ref()) => Err(self.error(
                    Some(n.span()),
                    format!("limits.{key}"),
                    format!(
                        "{} is outside {}..={}",
                        n.get_ref(),
                        range.start(),
                        range.end()
                    ),
                )),
                Some(n) => Ok(Some(*n.get_ref())),
                None => Ok(None),
            }
        };
        let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Ok(LimitSettings {
            max_connections: ranged(&l.max_connections, "max_connections", 1..=1_000_000)?
                .map(to_usize),
            max_connections_per_ip: ranged(
                &l.max_connections_per_ip,
                "max_connections_per_ip",
                0..=1_000_000,
            )?
            .map(to_usize),
            unpaid_grace: ranged(&l.unpaid_grace_secs, "unpaid_grace_secs", 1..=86_400)?
                .map(Duration::from_secs),
            payment_checks_per_ip: ranged(
                &l.payment_checks_per_ip,
                "payment_checks_per_ip",
                0..=100_000,
            )?
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            payment_checks_per_second: ranged(
                &l.payment_checks_per_second,
                "payment_checks_per_second",
                0..=1_000_000,
            )?
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            signatures_per_second: ranged(
                &l.signatures_per_second,
                "signatures_per_second",
                100..=10_000_000,
            )?,
        })
    }

    fn address(&self, l: &Spanned<String>, key: &str) -> Result<SocketAddr, ConfigError> {
        l.get_ref().parse::<SocketAddr>().map_err(|_| {
            self.error(
                Some(l.span()),
                key.into(),
                format!("{:?} is not an address like 0.0.0.0:4000", l.get_ref()),
            )
        })
    }

    fn nonempty_path(&self, s: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        if s.get_ref().trim().is_empty() {
            return Err(self.error(Some(s.span()), key.into(), "must not be empty".into()));
        }
        Ok(self.path(s.get_ref()))
    }

    fn plugin_name(&self, name: &Spanned<String>, key: &str) -> Result<(), ConfigError> {
        let n = name.get_ref();
        if crate::payments::is_plugin_name(n) {
            Ok(())
        } else {
            Err(self.error(
                Some(name.span()),
                key.into(),
                format!("{n:?} is not a plugin name (lowercase letters, digits and _)"),
            ))
        }
    }

    fn sell(&self, i: usize, s: RawSell) -> Result<SellSettings, ConfigError> {
        let at = |k: &str| format!("sell[{i}].{k}");
        let feed = self.nonempty_path(&s.feed, &at("feed"))?;
        if s.name.get_ref().trim().is_empty() {
            return Err(self.error(Some(s.name.span()), at("name"), "must not be empty".into()));
        }
        let listen = match &s.listen {
            Some(l) => Some(self.address(l, &at("listen"))?),
            None => None,
        };
        let revalidate = match &s.revalidate_ms {
            Some(r) if !(1..=3_600_000).contains(r.get_ref()) => {
                return Err(self.error(
                    Some(r.span()),
                    at("revalidate_ms"),
                    format!("{} is outside 1..=3600000 milliseconds", r.get_ref()),
                ))
            }
            Some(r) => Duration::from_millis(*r.get_ref()),
            None => Duration::from_secs(1),
        };
        let card = s.card.map_or_else(CardSettings::default, |c| CardSettings {
            description: c.description,
            homepage: c.homepage,
            contact: c.contact,
            provider: c.provider,
            keywords: c.keywords,
        });
        let mut payment = Vec::with_capacity(s.payment.len());
        for (j, p) in s.payment.into_iter().enumerate() {
            payment.push(self.sell_payment(i, j, p)?);
        }
        Ok(SellSettings {
            feed,
            name: s.name.into_inner(),
            listen,
            revalidate,
            terms: s.terms,
            card,
            payment,
        })
    }

    fn sell_payment(
        &self,
        i: usize,
        j: usize,
        p: Spanned<RawSellPayment>,
    ) -> Result<SellPayment, ConfigError> {
        let line = self.line_col(p.span().start).0;
        let p = p.into_inner();
        let at = |k: &str| format!("sell[{i}].payment[{j}].{k}");
        self.plugin_name(&p.plugin, &at("plugin"))?;
        let unit = match p.unit.get_ref().parse::<Unit>() {
            Ok(u) => u,
            Err(e) => return Err(self.error(Some(p.unit.span()), at("unit"), e.to_string())),
        };
        let amount = &p.amount.get_ref().0;
        let interval = match (&p.interval, unit.uses_interval()) {
            (Some(i), _) => i.get_ref().0.clone(),
            (None, false) => String::new(),
            (None, true) => {
                return Err(self.error(
                    Some(p.unit.span()),
                    at("interval"),
                    format!("missing (unit {unit} needs one)"),
                ))
            }
        };
        let interval_span = p.interval.as_ref().map(Spanned::span);
        let mut price = match Price::from_card(amount, p.unit.get_ref(), &interval) {
            Ok(r) => r,
            Err(e @ dazaar_plugin_api::PricingError::BadInterval(_)) => {
                return Err(self.error(interval_span, at("interval"), e.to_string()))
            }
            Err(e) => return Err(self.error(Some(p.amount.span()), at("amount"), e.to_string())),
        };
        let mut min_seconds = 0.0;
        let payment_delay_ms = p.payment_delay.unwrap_or(0);
        if let Price::Time(rate) = &mut price {
            if let Some(m) = &p.min_seconds {
                *rate = rate
                    .with_min_seconds(*m.get_ref())
                    .map_err(|e| self.error(Some(m.span()), at("min_seconds"), e.to_string()))?;
                min_seconds = *m.get_ref();
            }
            *rate = rate.with_payment_delay_ms(payment_delay_ms);
        }
        let mut terms = PaymentTerms::new(
            p.method.as_deref().unwrap_or(""),
            &p.currency,
            amount,
            p.unit.get_ref(),
            &interval,
        );
        terms.min_seconds = min_seconds;
        terms.payment_delay_ms = payment_delay_ms;
        terms.pay_to = p.pay_to.map(Into::into).into();
        Ok(SellPayment {
            plugin: p.plugin.into_inner(),
            method: p.method,
            terms,
            price,
            config: table_text(p.config),
            line,
        })
    }
}

/// A plugin's table as TOML text (empty when absent).
fn table_text(table: Option<toml::Table>) -> String {
    match table {
        // Serialising a table that was just parsed cannot fail; fall back to empty.
        Some(t) => toml::to_string(&t).unwrap_or_default(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let ctx = Ctx {
            text: "a\nbc\nd",
            file: Path::new("x"),
        };
        assert_eq!(ctx.line_col(0), (1, 1));
        assert_eq!(ctx.line_col(3), (2, 2));
        assert_eq!(ctx.line_col(5), (3, 1));
    }

    #[test]
    fn limits_section() {
        let file = Path::new("/etc/dazaar/dazaar.toml");
        let s = parse(
            "[limits]\nmax_connections = 100\nmax_connections_per_ip = 0\nunpaid_grace_secs = 5\n\
             signatures_per_second = 5000\npayment_checks_per_second = 0\n",
            file,
        )
        .expect("parses");
        assert_eq!(s.limits.max_connections, Some(100));
        assert_eq!(s.limits.max_connections_per_ip, Some(0));
        assert_eq!(s.limits.unpaid_grace, Some(Duration::from_secs(5)));
        assert_eq!(s.limits.signatures_per_second, Some(5000));
        assert_eq!(s.limits.payment_checks_per_second, Some(0));
        assert_eq!(
            parse("", file).expect("empty").limits,
            LimitSettings::default()
        );
        let e = parse("[limits]\nunpaid_grace_secs = 0\n", file).expect_err("zero grace");
        assert_eq!(e.key(), Some("limits.unpaid_grace_secs"));
        assert_eq!(e.line(), 2);
        let e = parse("[limits]\nsignatures_per_second = 10\n", file).expect_err("too few");
        assert_eq!(e.key(), Some("limits.signatures_per_second"));
        let e = parse("[limits]\nmax_conections = 3\n", file).expect_err("typo");
        assert_eq!(e.key(), Some("limits.max_conections"));
    }

    /// The example with every commented-out setting (`# key`, `# [table]`) switched on.
    fn example_uncommented() -> String {
        EXAMPLE
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_example_parses_as_it_is_and_with_every_setting_on() {
        let file = Path::new("/etc/dazaar/dazaar.toml");
        let s = parse(EXAMPLE, file).expect("the example as written");
        assert_eq!(s.sell.len(), 1);
        assert!(s.sell[0].payment.is_empty() && s.metrics.is_none() && s.state.is_none());
        let all = parse(&example_uncommented(), file).expect("every setting on");
        let sell = &all.sell[0];
        assert!(sell.listen.is_some() && sell.terms.is_some());
        assert!(sell.card.description.is_some() && !sell.card.keywords.is_empty());
        let p = &sell.payment[0];
        assert!(p.method.is_some() && p.terms.pay_to.is_some() && !p.config.is_empty());
        assert_eq!(
            (p.terms.min_seconds, p.terms.payment_delay_ms),
            (60.0, 5000)
        );
        assert!(all.passphrase_env.is_some() && all.metrics.is_some() && all.state.is_some());
        assert_eq!(all.buy.payment.len(), 1);
        assert!(all.buy.payment[0].method.is_some());
        let l = &all.limits;
        assert!(l.max_connections.is_some() && l.max_connections_per_ip.is_some());
        assert!(l.unpaid_grace.is_some() && l.payment_checks_per_ip.is_some());
        assert!(l.signatures_per_second.is_some() && l.payment_checks_per_second.is_some());
    }

    #[test]
    fn config_search_order() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        let paths = |c: Vec<Candidate>| -> Vec<(String, bool)> {
            c.into_iter()
                .map(|c| (c.path.display().to_string(), c.explicit))
                .collect()
        };
        let all = env(&[
            ("DAZAAR_CONFIG", "/srv/d.toml"),
            ("XDG_CONFIG_HOME", "/xdg"),
            ("HOME", "/home/u"),
        ]);
        assert_eq!(
            paths(candidates(Some(Path::new("flag.toml")), all)),
            [
                ("flag.toml".into(), true),
                ("/srv/d.toml".into(), true),
                ("dazaar.toml".into(), false),
                ("/xdg/dazaar/dazaar.toml".into(), false),
                ("/etc/dazaar/dazaar.toml".into(), false),
            ]
        );
        // No XDG_CONFIG_HOME (or a relative one): ~/.config; an empty variable is unset.
        let home = env(&[
            ("DAZAAR_CONFIG", ""),
            ("XDG_CONFIG_HOME", "rel"),
            ("HOME", "/home/u"),
        ]);
        assert_eq!(
            paths(candidates(None, home)),
            [
                ("dazaar.toml".into(), false),
                ("/home/u/.config/dazaar/dazaar.toml".into(), false),
                ("/etc/dazaar/dazaar.toml".into(), false),
            ]
        );
        // An explicit file is used even when missing (loading it then says so).
        assert_eq!(
            locate(None, env(&[("DAZAAR_CONFIG", "/nonexistent/d.toml")])),
            Some(PathBuf::from("/nonexistent/d.toml"))
        );
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let ctx = Ctx {
            text: "",
            file: Path::new("/etc/dazaar/dazaar.toml"),
        };
        assert_eq!(ctx.path("plugins"), PathBuf::from("/etc/dazaar/plugins"));
        assert_eq!(ctx.path("/abs"), PathBuf::from("/abs"));
    }
}
