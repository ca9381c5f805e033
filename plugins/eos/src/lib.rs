//! `dazaar_eos`: payments as EOS (Antelope) token transfers, read from the chain's
//! history API over plain HTTP(S) (ureq + rustls).
//!
//! There is no maintained Rust client crate for the Antelope HTTP API (no crate named
//! `eosio-rs` exists), so the few calls needed are made here directly.
//!
//! - **Seller**, `validate`: the seller account (`account` in the config, else the card's
//!   `payTo`) is read incrementally, from the v1 history API (`POST
//!   /v1/history/get_actions {account_name, pos, offset}`, paging by
//!   `account_action_seq`) or Hyperion (`api = "hyperion"`: `GET
//!   /v2/history/get_actions?account=..&filter=<contract>:transfer&skip=..&limit=..&sort=asc`).
//!   A payment is a `transfer` action of the token contract (default `eosio.token`) to
//!   the seller account, whose memo is exactly `dazaar: <seller> <buyer>` with a seller
//!   key this verifier has been asked about (transfers naming any other seller, such as
//!   a stranger's dust, are not recorded and do not use up `max_payments`; a seller key
//!   first asked about later makes the account's history be read again from the start,
//!   so its earlier payments count), whose
//!   `quantity` (`"1.0000 EOS"`) has the card's symbol (and the configured `precision`,
//!   if set); it counts at its block time (UTC). With `irreversible_only = true` only
//!   actions at or below the node's last irreversible block count. The node is polled at
//!   most every `poll_ms` (from validations); after a failure, the next try waits with
//!   exponential backoff up to `max_backoff_ms`, and meanwhile every validation fails
//!   closed with the reason. When the node answers again, buyers are valid again.
//! - **Buyer**, `payment_request`: without a key, the transfer to make with an external
//!   wallet: `{from, to, quantity, memo}` (as the `invoice`, an action JSON), plus
//!   `pay_to`, `amount` (an asset string) and `memo`. With a key (`private_key_env` or
//!   `private_key_file`, and `from`), the plugin makes the transfer itself: it asks the
//!   node for the chain id, head block time and last irreversible block
//!   (`/v1/chain/get_info`), serializes the `transfer` action ([`tx`]), signs it
//!   (secp256k1, Antelope-canonical, [`keys`]) and pushes it
//!   (`/v1/chain/push_transaction`, [`push`]); the answer then has `paid` = the
//!   transaction id, and the same fields say what was paid. A refusal by the node
//!   (`unsatisfied_authorization`, `expired_tx_exception`, …) is the call's error.
//!   Keys are legacy WIF (`5…`) or `PVT_K1_…`; a key is never accepted inline in the
//!   TOML, and never logged or put in an error. Paying takes two requests of up to
//!   `timeout_ms` each, inside the host's call timeout (`dazaar pay --timeout`, 120 s by default): keep
//!   `timeout_ms` below half of it. A push that times out may still land; paying again
//!   makes a new transaction (a new expiration), so check the seller's view first.
//!
//!
//! With the host's state store (API 1.3) the seller side keeps each account's history
//! cursor and the dazaar transfers found ([`saved`]): a restart resumes reading the
//! history from the saved cursor instead of from the account's first action.
//!
//! Card: currency `EOS` (or `EOS Testnet`; any other symbol through `symbol`), `payTo`
//! the seller's account; amounts in whole tokens.
//!
//! Configuration (`[sell.payment.config]` / `[buy.payment.config]`):
//! ```toml
//! rpc = "https://eos.example:443"   # required: a node with history (v1) or Hyperion
//! api = "v1"                        # v1 | hyperion
//! token_contract = "eosio.token"
//! account = "dazaarseller"          # default: the card's payTo
//! symbol = "EOS"                    # default: from the card's currency
//! precision = 4                     # if set, payments must have it; buyer formatting
//! from = "buyeraccount"             # buyer: filled into the transfer
//! irreversible_only = false
//! poll_ms = 1000                    # at most one history read per interval
//! max_backoff_ms = 30000            # after failures: 2x per failure, up to this
//! timeout_ms = 5000
//! page_size = 100                   # actions per request
//! max_pages = 50                    # requests per poll
//! max_payments = 100000             # payments remembered (to this verifier's sellers)
//! log_file = "/var/log/dazaar-eos.log"   # the plugin's own log (optional; ~/ is home)
//! log_level = "info"
//! # buyer, to sign and push the transfer (else it is printed for an external wallet):
//! private_key_env = "DAZAAR_EOS_KEY"     # an environment variable holding the key
//! private_key_file = "~/.dazaar/eos.key" # or a file holding it (the variable wins)
//! permission = "active"                 # from's permission that signs
//! expire_seconds = 60                   # after the node's head block time
//! ```

pub mod chain;
#[doc(hidden)]
pub mod fuzzing;
pub mod history;
pub mod keys;
pub mod push;
pub mod saved;
pub mod tx;
pub use dazaar_plugin_api::logging;

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dazaar_plugin_api::logging::LogSettings;
use dazaar_plugin_api::{
    expand_home, export_payment_plugin, parse_payment_memo, unavailable, Backoff, Description,
    Grant, Key, Payment, PaymentInstructions, PaymentPlugin, PluginStore, Request,
};
use serde::Deserialize;
use serde_json::json;

use chain::{Asset, Transfer};
use history::{Api, History};
use keys::PrivateKey;
use push::{Node, TransferOrder};
use saved::{Saved, SavedCursor, SavedTransfer};
use zeroize::Zeroizing;

/// The most seller accounts one verifier watches.
const MAX_ACCOUNTS: usize = 16;
/// The most seller keys (products) one account is read for.
const MAX_SELLERS: usize = 64;

/// The plugin's TOML table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    rpc: String,
    #[serde(default = "default_api")]
    api: Api,
    #[serde(default = "default_contract")]
    token_contract: String,
    account: Option<String>,
    symbol: Option<String>,
    precision: Option<u32>,
    from: Option<String>,
    #[serde(default)]
    irreversible_only: bool,
    #[serde(default = "default_poll_ms")]
    poll_ms: u64,
    #[serde(default = "default_max_backoff_ms")]
    max_backoff_ms: u64,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_page_size")]
    page_size: u64,
    #[serde(default = "default_max_pages")]
    max_pages: usize,
    #[serde(default = "default_max_payments")]
    max_payments: usize,
    log_file: Option<String>,
    log_level: Option<String>,
    /// Buyer: the environment variable that holds the paying account's private key.
    private_key_env: Option<String>,
    /// Buyer: a file that holds it (`~` is the home directory).
    private_key_file: Option<String>,
    /// Buyer: the permission of `from` that signs.
    #[serde(default = "default_permission")]
    permission: String,
    /// Buyer: how long after the head block time the transfer may still be included.
    #[serde(default = "default_expire_seconds")]
    expire_seconds: u32,
    /// Only to refuse it with a clear reason: a key never goes in the config.
    #[serde(default)]
    private_key: Option<toml::Value>,
}

fn default_permission() -> String {
    "active".into()
}
fn default_expire_seconds() -> u32 {
    60
}

fn default_api() -> Api {
    Api::V1
}
fn default_contract() -> String {
    "eosio.token".into()
}
fn default_poll_ms() -> u64 {
    1000
}
fn default_max_backoff_ms() -> u64 {
    30_000
}
fn default_timeout_ms() -> u64 {
    5000
}
fn default_page_size() -> u64 {
    100
}
fn default_max_pages() -> usize {
    50
}
fn default_max_payments() -> usize {
    100_000
}

/// Whether `name` is an Antelope account name: 1–12 of `a-z`, `1-5`, `.`, not ending in
/// `.`.
pub fn is_account_name(name: &str) -> bool {
    (1..=12).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || ('1'..='5').contains(&c) || c == '.')
        && !name.ends_with('.')
}

/// The longest key file read (a key is about 51 characters).
const MAX_KEY_FILE: u64 = 4096;

/// Whether `text` looks like a private key (so it is not a variable name or a path).
fn looks_like_key(text: &str) -> bool {
    let t = text.trim();
    let b58 = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric());
    (t.starts_with("PVT_") && t.len() > 40 && b58(&t[4..].replace('_', "")))
        || ((50..=52).contains(&t.len()) && t.starts_with('5') && b58(t))
}

fn check(text: &str) -> Result<(Config, LogSettings), String> {
    // Before anything that could quote a value back (parse errors, field checks).
    if text
        .split(['"', '\'', ' ', '=', '\n', '\t'])
        .any(looks_like_key)
    {
        return Err("eos config: it contains what looks like a private key; never put a key in the config (name an environment variable with private_key_env, or a file with private_key_file)".into());
    }
    let c: Config = toml::from_str(text).map_err(|e| format!("eos config: {}", e.message()))?;
    if c.private_key.is_some() {
        return Err("eos config: private_key is not allowed: never put a key in the config; name an environment variable (private_key_env) or a file (private_key_file) that holds it".into());
    }
    if (c.private_key_env.is_some() || c.private_key_file.is_some()) && c.from.is_none() {
        return Err("eos config: a private key (private_key_env / private_key_file) needs from, the paying account".into());
    }
    if !is_account_name(&c.permission) {
        return Err(format!(
            "eos config: permission {:?} is not a permission name",
            c.permission
        ));
    }
    if c.expire_seconds == 0 || c.expire_seconds > 3600 {
        return Err("eos config: expire_seconds must be 1..=3600".into());
    }
    if !(c.rpc.starts_with("http://") || c.rpc.starts_with("https://")) {
        return Err("eos config: rpc must be an http(s) URL".into());
    }
    for (key, name) in [
        ("token_contract", Some(&c.token_contract)),
        ("account", c.account.as_ref()),
        ("from", c.from.as_ref()),
    ] {
        if let Some(n) = name {
            if !is_account_name(n) {
                return Err(format!("eos config: {key} {n:?} is not an account name"));
            }
        }
    }
    if let Some(s) = &c.symbol {
        if Asset::parse(&format!("1 {s}")).is_none() {
            return Err(format!(
                "eos config: symbol {s:?} is not 1-7 uppercase letters"
            ));
        }
    }
    if c.precision.is_some_and(|p| p > 18) {
        return Err("eos config: precision is at most 18".into());
    }
    if c.timeout_ms == 0 || c.page_size == 0 || c.max_pages == 0 || c.max_payments == 0 {
        return Err(
            "eos config: timeout_ms, page_size, max_pages, max_payments must be above 0".into(),
        );
    }
    let log = LogSettings::parse(c.log_file.as_deref(), c.log_level.as_deref())
        .map_err(|e| format!("eos config: {e}"))?;
    Ok((c, log))
}

/// A payment found for a buyer.
#[derive(Debug, Clone)]
struct Found {
    id: String,
    quantity: Asset,
    time_ms: u64,
    block_num: u64,
}

/// What is known of one seller account.
#[derive(Debug, Default)]
struct Account {
    cursor: u64,
    lib: u64,
    caught_up: bool,
    by_buyer: HashMap<(Key, Key), Vec<Found>>,
    /// The seller keys (this verifier's products) validations asked about. Only
    /// transfers whose memo names one of them are recorded: anyone can send dust to the
    /// account with a memo naming some other seller, and those must not use up
    /// `max_payments`.
    sellers: HashSet<Key>,
    payments: usize,
    last_try: Option<Instant>,
    failures: u32,
    last_error: Option<String>,
}

impl Account {
    /// Whether it is time to ask the node again: `poll` after a success, `backoff`'s
    /// wait after failures.
    fn due(&self, poll: Duration, backoff: Backoff) -> bool {
        let Some(at) = self.last_try else {
            return true;
        };
        let wait = if self.failures == 0 {
            poll
        } else {
            backoff.wait(self.failures)
        };
        at.elapsed() >= wait
    }
}

/// Reads the buyer's key from `private_key_env` or `private_key_file` (the variable
/// first when both are set). Errors name where the key was looked for, never its text.
fn load_key(c: &Config) -> Result<Option<PrivateKey>, String> {
    let text = if let Some(var) = &c.private_key_env {
        match std::env::var(var) {
            Ok(v) => Zeroizing::new(v),
            Err(_) if c.private_key_file.is_some() => {
                read_key_file(c.private_key_file.as_deref().unwrap_or_default())?
            }
            Err(_) => {
                return Err(format!(
                    "eos: the environment variable {var} (private_key_env) is not set or not UTF-8"
                ))
            }
        }
    } else if let Some(path) = &c.private_key_file {
        read_key_file(path)?
    } else {
        return Ok(None);
    };
    PrivateKey::parse(&text)
        .map(Some)
        .map_err(|e| format!("eos: the buyer's private key: {e}"))
}

fn read_key_file(path: &str) -> Result<Zeroizing<String>, String> {
    let expanded = expand_home(path).map_err(|e| format!("eos: private_key_file {e}"))?;
    let file = std::fs::File::open(&expanded).map_err(|e| {
        format!(
            "eos: cannot open private_key_file {}: {}",
            expanded.display(),
            e.kind()
        )
    })?;
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_KEY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| {
            format!(
                "eos: cannot read private_key_file {}: {}",
                expanded.display(),
                e.kind()
            )
        })?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(format!(
            "eos: private_key_file {} is larger than a key",
            expanded.display()
        ));
    }
    Ok(text)
}

/// The EOS verifier.
pub struct EosPlugin {
    config: Config,
    history: History,
    /// Buyer: the key that signs transfers, and the node to push them to.
    wallet: Option<(PrivateKey, Node)>,
    accounts: Mutex<HashMap<String, Account>>,
    /// Held while one thread asks the node, so concurrent validations do not all poll.
    polling: Mutex<()>,
    /// The host's state store (API 1.3): cursors and transfers found, across restarts.
    /// Used under `polling`.
    saved: Option<Mutex<Saved>>,
}

impl std::fmt::Debug for EosPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EosPlugin")
            .field("rpc", &self.config.rpc)
            .finish()
    }
}

impl EosPlugin {
    fn account_for(&self, req: &Request<'_>) -> Result<String, String> {
        let card = req
            .terms
            .pay_to
            .as_ref()
            .map(|p| p.to_string())
            .into_option();
        match (&self.config.account, card) {
            (Some(a), Some(c)) if *a != c => Err(format!(
                "the card's payTo {c:?} is not the configured account {a:?}"
            )),
            (Some(a), _) => Ok(a.clone()),
            (None, Some(c)) if is_account_name(&c) => Ok(c),
            (None, Some(c)) => Err(format!("the card's payTo {c:?} is not an account name")),
            (None, None) => {
                Err("no seller account: set payTo on the card or account in the config".into())
            }
        }
    }

    fn symbol_for(&self, currency: &str) -> Result<String, String> {
        if let Some(s) = &self.config.symbol {
            return Ok(s.clone());
        }
        let c = currency.trim();
        if c.eq_ignore_ascii_case("EOS") || c.eq_ignore_ascii_case("EOS Testnet") {
            return Ok("EOS".into());
        }
        let upper = c.to_ascii_uppercase();
        if Asset::parse(&format!("1 {upper}")).is_some() {
            Ok(upper)
        } else {
            Err(format!(
                "currency {currency:?} is not a token symbol; set symbol in the config"
            ))
        }
    }

    /// Reads new actions of `account` if it is due, recording payments to `seller`.
    fn refresh(&self, account: &str, seller: Key) -> Result<(), String> {
        let poll = Duration::from_millis(self.config.poll_ms);
        // After failures: twice the poll interval (at least 100 ms), doubling.
        let backoff = Backoff::new(
            poll.max(Duration::from_millis(50)).saturating_mul(2),
            Duration::from_millis(self.config.max_backoff_ms),
        );
        let _polling = self
            .polling
            .lock()
            .map_err(|_| "the EOS plugin's poll lock is poisoned".to_owned())?;
        self.restore(account)?;
        let cursor = {
            let mut accounts = self.lock()?;
            if !accounts.contains_key(account) && accounts.len() >= MAX_ACCOUNTS {
                return Err(format!("already watching {MAX_ACCOUNTS} accounts"));
            }
            let a = accounts.entry(account.to_owned()).or_default();
            if !a.sellers.contains(&seller) {
                if a.sellers.len() >= MAX_SELLERS {
                    return Err(format!(
                        "already reading {account} for {MAX_SELLERS} seller keys"
                    ));
                }
                a.sellers.insert(seller);
                if a.cursor > 0 {
                    // Payments to this seller key may lie in history already read for
                    // the others: read it again from the start (actions already
                    // recorded are recognised by id).
                    tracing::debug!(account, "a new seller key; reading the history again");
                    a.cursor = 0;
                    a.caught_up = false;
                    a.last_try = None;
                }
            }
            if !a.due(poll, backoff) {
                return Ok(());
            }
            a.last_try = Some(Instant::now());
            a.cursor
        };
        let result = self.history.fetch(account, cursor);
        let mut accounts = self.lock()?;
        let a = accounts.entry(account.to_owned()).or_default();
        // Waits (poll interval, backoff) count from the end of this attempt.
        a.last_try = Some(Instant::now());
        match result {
            Ok(batch) => {
                a.failures = 0;
                a.last_error = None;
                a.cursor = batch.cursor;
                a.caught_up = batch.caught_up;
                if let Some(lib) = batch.lib {
                    a.lib = a.lib.max(lib);
                }
                tracing::debug!(
                    account,
                    actions = batch.actions,
                    cursor = a.cursor,
                    "history read"
                );
                let found: Vec<SavedTransfer> = batch
                    .transfers
                    .into_iter()
                    .filter_map(|t| self.record(account, a, t))
                    .collect();
                let cursor = SavedCursor {
                    cursor: a.cursor,
                    lib: a.lib,
                    sellers: a.sellers.iter().copied().collect(),
                };
                drop(accounts);
                self.save(account, &found, &cursor);
            }
            Err(e) => {
                a.failures = a.failures.saturating_add(1);
                tracing::warn!(account, error = %e, failures = a.failures, "cannot read EOS history");
                a.last_error = Some(e.to_string());
            }
        }
        Ok(())
    }

    /// Records `t` if it pays one of `a`'s sellers and is new; returns it then (to save).
    fn record(&self, account: &str, a: &mut Account, t: Transfer) -> Option<SavedTransfer> {
        if t.contract != self.config.token_contract || t.to != account || t.from == account {
            return None;
        }
        let (seller, buyer) = parse_payment_memo(&t.memo)?;
        if !a.sellers.contains(&seller) {
            return None; // names a seller this verifier does not serve
        }
        // The memo must be exactly the canonical (lowercase) text.
        if t.memo != dazaar_plugin_api::payment_memo(&seller, &buyer) {
            return None;
        }
        let found = Found {
            id: t.id,
            quantity: t.quantity,
            time_ms: t.time_ms,
            block_num: t.block_num,
        };
        tracing::debug!(account, buyer = %hex::encode(buyer), quantity = ?found.quantity, "payment found");
        if !self.keep(account, a, seller, buyer, found.clone()) {
            return None;
        }
        Some(SavedTransfer {
            seller,
            buyer,
            id: found.id,
            quantity: found.quantity,
            time_ms: found.time_ms,
            block_num: found.block_num,
        })
    }

    /// Adds `found` to `a` unless it is known or `max_payments` is reached.
    fn keep(&self, account: &str, a: &mut Account, seller: Key, buyer: Key, found: Found) -> bool {
        let list = a.by_buyer.entry((seller, buyer)).or_default();
        if list.iter().any(|f| f.id == found.id) {
            return false; // the same action seen twice (page overlap, re-indexing)
        }
        if a.payments >= self.config.max_payments {
            tracing::warn!(account, "max_payments reached; a payment was not recorded");
            return false;
        }
        a.payments += 1;
        list.push(found);
        true
    }

    /// The first time `account` is read: what was saved for it (its transfers and its
    /// cursor), so reading resumes there. A store that fails only costs a re-read.
    fn restore(&self, account: &str) -> Result<(), String> {
        let Some(saved) = &self.saved else {
            return Ok(());
        };
        if self.lock()?.contains_key(account) {
            return Ok(());
        }
        let loaded = saved
            .lock()
            .map_err(|_| "the EOS plugin's saved state is poisoned".to_owned())?
            .load(account, self.config.max_payments);
        let (found, cursor) = match loaded {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(account, error = %e, "cannot read the saved cursor; reading the history from the start");
                return Ok(());
            }
        };
        let mut accounts = self.lock()?;
        if accounts.len() >= MAX_ACCOUNTS {
            return Ok(()); // refused by the caller
        }
        let a = accounts.entry(account.to_owned()).or_default();
        if let Some(c) = cursor {
            a.cursor = c.cursor;
            a.lib = c.lib;
            a.sellers = c.sellers.into_iter().take(MAX_SELLERS).collect();
            tracing::info!(
                account,
                cursor = a.cursor,
                payments = found.len(),
                "resuming from the saved cursor"
            );
        }
        for t in found {
            let f = Found {
                id: t.id,
                quantity: t.quantity,
                time_ms: t.time_ms,
                block_num: t.block_num,
            };
            self.keep(account, a, t.seller, t.buyer, f);
        }
        Ok(())
    }

    /// Saves the transfers found, then the cursor that covers them. A failure is logged:
    /// the next restart reads again from the last cursor saved.
    fn save(&self, account: &str, found: &[SavedTransfer], cursor: &SavedCursor) {
        let Some(saved) = &self.saved else {
            return;
        };
        let Ok(mut saved) = saved.lock() else {
            return;
        };
        let result = saved
            .append(account, found)
            .and_then(|()| saved.save_cursor(account, cursor));
        if let Err(e) = result {
            tracing::warn!(account, error = %e, "cannot save the history cursor");
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, Account>>, String> {
        self.accounts
            .lock()
            .map_err(|_| "the EOS plugin's state is poisoned".to_owned())
    }
}

impl PaymentPlugin for EosPlugin {
    fn describe() -> Description {
        Description {
            name: "eos",
            version: env!("CARGO_PKG_VERSION"),
            methods: &["eos"],
            currencies: &["EOS", "EOS Testnet"],
        }
    }

    fn check_config(config: &str) -> Result<(), String> {
        check(config).map(|_| ())
    }

    fn open(config: &str) -> Result<Self, String> {
        let (config, log) = check(config)?;
        log.apply()?;
        let history = History::new(
            &config.rpc,
            config.api,
            &config.token_contract,
            Duration::from_millis(config.timeout_ms),
            config.page_size,
            config.max_pages,
        );
        let wallet = load_key(&config)?.map(|key| {
            tracing::info!(public_key = %key.public_key().to_legacy_string(), "the buyer's key is loaded; payments are signed and pushed");
            (key, Node::new(&config.rpc, Duration::from_millis(config.timeout_ms)))
        });
        tracing::info!(rpc = %config.rpc, api = ?config.api, "EOS plugin opened");
        Ok(EosPlugin {
            config,
            history,
            wallet,
            accounts: Mutex::new(HashMap::new()),
            polling: Mutex::new(()),
            saved: None,
        })
    }

    fn open_with_state(config: &str, state: PluginStore) -> Result<Self, String> {
        let mut plugin = Self::open(config)?;
        plugin.saved = Some(Mutex::new(Saved::new(state)));
        Ok(plugin)
    }

    fn validate(&self, req: &Request<'_>, now_ms: u64) -> Result<Grant, String> {
        let price = req
            .terms
            .price()
            .map_err(|e| format!("bad price on the card: {e}"))?;
        let account = self.account_for(req)?;
        let symbol = self.symbol_for(&req.terms.currency)?;
        // Failures to read the chain are marked `unavailable`: the host logs them and tells
        // the peer only that the check is unavailable.
        self.refresh(&account, req.seller).map_err(unavailable)?;
        let accounts = self.lock().map_err(unavailable)?;
        let a = accounts
            .get(&account)
            .ok_or_else(|| unavailable("the account's history is not loaded"))?;
        if let Some(e) = &a.last_error {
            return Err(unavailable(format!("cannot read EOS history: {e}")));
        }
        let payments: Vec<Payment> = a
            .by_buyer
            .get(&(req.seller, req.buyer))
            .into_iter()
            .flatten()
            .filter(|f| f.quantity.symbol == symbol)
            .filter(|f| {
                self.config
                    .precision
                    .is_none_or(|p| f.quantity.precision == p)
            })
            .filter(|f| !self.config.irreversible_only || f.block_num <= a.lib)
            .map(|f| Payment {
                amount: f.quantity.amount(),
                time_ms: f.time_ms,
            })
            .collect();
        price.grant(&payments, now_ms).map_err(|r| {
            r.reason(|| {
                if a.caught_up {
                    format!("no {symbol} transfer to {account} with this buyer's memo")
                } else {
                    format!("still reading {account}'s history; no payment found yet")
                }
            })
        })
    }

    fn payment_request(
        &self,
        req: &Request<'_>,
        amount: &str,
    ) -> Result<PaymentInstructions, String> {
        let to = self.account_for(req)?;
        let symbol = self.symbol_for(&req.terms.currency)?;
        let precision = self.config.precision.unwrap_or(4);
        let quantity = Asset::format(amount, precision, &symbol).ok_or_else(|| {
            format!("amount {amount:?} is not a positive amount with at most {precision} decimals")
        })?;
        let memo = req.memo();
        let from = self.config.from.clone().unwrap_or_default();
        let mut action = json!({
            "account": self.config.token_contract,
            "name": "transfer",
            "data": {"from": from, "to": to, "quantity": quantity, "memo": memo},
        });
        if !from.is_empty() {
            action["authorization"] =
                json!([{"actor": from, "permission": self.config.permission}]);
        }
        if let Some((key, node)) = &self.wallet {
            let asset = Asset::parse(&quantity)
                .ok_or_else(|| format!("cannot read back the quantity {quantity:?}"))?;
            let pushed = node
                .transfer(
                    key,
                    &TransferOrder {
                        contract: &self.config.token_contract,
                        from: &from,
                        permission: &self.config.permission,
                        to: &to,
                        quantity: &asset,
                        memo: &memo,
                    },
                    self.config.expire_seconds,
                )
                .map_err(|e| {
                    tracing::warn!(error = %e, "the transfer was not pushed");
                    format!("the transfer was not pushed: {e}")
                })?;
            tracing::info!(trx_id = %pushed.id, %from, %to, %quantity, "transfer pushed");
            return Ok(PaymentInstructions {
                memo: Some(memo),
                pay_to: Some(to),
                amount: Some(quantity),
                currency: Some(req.terms.currency.to_string()),
                invoice: Some(action.to_string()),
                note: Some(format!(
                    "paid: transaction {} pushed to {}; the seller counts it once its history shows it",
                    pushed.id, self.config.rpc
                )),
                paid: Some(pushed.id),
                ..PaymentInstructions::default()
            });
        }
        Ok(PaymentInstructions {
            memo: Some(memo),
            pay_to: Some(to),
            amount: Some(quantity),
            currency: Some(req.terms.currency.to_string()),
            invoice: Some(action.to_string()),
            note: Some(format!(
                "transfer with {}::transfer from your wallet, with exactly this memo",
                self.config.token_contract
            )),
            ..PaymentInstructions::default()
        })
    }
}

export_payment_plugin!(EosPlugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_config() {
        assert!(is_account_name("eosio.token"));
        assert!(is_account_name("alice12345"));
        assert!(!is_account_name("Alice"));
        assert!(!is_account_name("toolongaccount1"));
        assert!(!is_account_name("bad6"));
        assert!(EosPlugin::check_config("rpc = \"http://127.0.0.1:8888\"").is_ok());
        assert!(EosPlugin::check_config("").is_err());
        assert!(EosPlugin::check_config("rpc = \"x\"").is_err());
        assert!(EosPlugin::check_config("rpc = \"http://a\"\naccount = \"BAD\"").is_err());
        assert!(EosPlugin::check_config("rpc = \"http://a\"\napi = \"v3\"").is_err());
    }

    #[test]
    fn keys_are_refused_inline_without_being_echoed() {
        let wif = "5KQwrPbwdL6PhXujxW37FSSQZ1JiwsST4cqQzDeyXtP79zkvFD3";
        let pvt = "PVT_K1_2bfGi9rYsXQSXXTvJbDAPhHLQUojjaNLomdm3cEJ1XTzMqUt3V";
        let base = "rpc = \"http://a\"\nfrom = \"buyer\"\n";
        for config in [
            format!("{base}private_key = \"{wif}\""),
            format!("{base}private_key = '{pvt}'"),
            format!("{base}private_key_file = \"{wif}\""),
            format!("{base}memo = \"{pvt}\""),
        ] {
            let e = EosPlugin::check_config(&config).unwrap_err();
            assert!(e.contains("never put a key in the config"), "{e}");
            assert!(!e.contains(&wif[5..25]) && !e.contains(&pvt[10..30]), "{e}");
        }
        // Naming a variable or a file is fine; a variable name like PVT_KEY is not a key.
        assert!(EosPlugin::check_config(&format!("{base}private_key_env = \"PVT_KEY\"")).is_ok());
        assert!(EosPlugin::check_config(&format!("{base}private_key_file = \"~/k\"")).is_ok());
        assert!(EosPlugin::check_config("rpc = \"http://a\"\nprivate_key_env = \"K\"").is_err());
        assert!(EosPlugin::check_config(&format!("{base}permission = \"Owner\"")).is_err());
        assert!(EosPlugin::check_config(&format!("{base}expire_seconds = 0")).is_err());
    }
}
