//! `dazaar_fiat_stripe`: card payments through Stripe.
//!
//! Nothing like it exists in the JS Dazaar world, so this plugin defines the integration
//! (documented for sellers in `docs/stripe.md`):
//!
//! - A payment is a Stripe PaymentIntent (or a paid Checkout Session) whose `metadata`
//!   carries `dazaar_seller` and `dazaar_buyer` (the keys, lowercase hex).
//! - **Seller**, `validate`: the buyer's succeeded payments in the card's currency, net of
//!   refunds (`amount_refunded`) and disputes (a disputed charge counts for nothing), are
//!   turned into time by the card's price ([`dazaar_plugin_api::Rate`]). Payments are
//!   found with the search API (`lookup = "search"`, the default) or by listing
//!   PaymentIntents or Checkout Sessions (`lookup = "payment_intents"` /
//!   `"checkout_sessions"`, for backends without search; a list longer than
//!   `max_pages` counts its newest pages), and reused for `refresh_ms`.
//!   With `webhook_listen`, signed `checkout.session.completed` /
//!   `payment_intent.succeeded` events feed an index (buyer → payments) that answers
//!   without asking Stripe while it makes the buyer valid; refund and dispute events
//!   force a fresh look. Every request to Stripe takes a token of a budget first
//!   (`search_per_s`, `api_per_s`; [`limit`]), and a 429 stops calls until its
//!   `Retry-After`; meanwhile a recent earlier answer stands in. Any failure to ask
//!   Stripe (down, slow past `timeout_ms`, garbage, an error status, throttled with
//!   nothing to stand in) makes the buyer not valid with the reason: fail closed.
//! - **Seller**, `user_message`: `stripe-checkout-request {"amount"}` from a buyer creates
//!   a Checkout Session with the binding metadata and answers `stripe-checkout
//!   {"url","id","amount","currency"}`.
//! - **Buyer**, `payment_request`: with a secret key configured (a seller paying into its
//!   own account, or a trusted checkout service), creates the Checkout Session itself (or
//!   a PaymentIntent with `checkout = "payment_intent"`) and returns its URL; without a
//!   key, returns the `stripe-checkout-request` message to send to the seller.
//!
//! The secret key is read from `secret_key_file` or the environment variable named by
//! `secret_key_env`, never from the TOML, and never appears in a log line or an error.
//!
//! Card method `stripe` (also `card`, `fiat`), currencies: ISO codes; amounts on the card
//! in major units (`"5"` USD), in minor units (cents) at Stripe.

pub mod api;
#[doc(hidden)]
pub mod fuzzing;
pub mod limit;
pub use dazaar_plugin_api::logging;
pub mod money;
pub mod objects;
mod saved;
pub mod secret;
pub mod webhook;

use std::collections::{BTreeSet, HashMap};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dazaar_plugin_api::logging::LogSettings;
use dazaar_plugin_api::{
    export_payment_plugin, unavailable, Description, Grant, Key, OutgoingMessage, Payment,
    PaymentInstructions, PaymentPlugin, PluginStore, Request,
};
use serde::Deserialize;
use serde_json::{json, Value};

use api::{ApiError, StripeApi};
use limit::Priority;
use money::Currency;
use objects::{read_payment, StripePayment, META_BUYER, META_SELLER};
use secret::{Secret, SecretSource};

/// The user message a buyer sends to ask the seller for a checkout link.
pub const MSG_CHECKOUT_REQUEST: &str = "stripe-checkout-request";
/// The seller's answer.
pub const MSG_CHECKOUT: &str = "stripe-checkout";

/// Webhook-delivered payments kept per buyer (the oldest go first).
const PUSH_PER_BUYER: usize = 64;

/// How payments are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lookup {
    /// `GET /v1/payment_intents/search` per buyer.
    Search,
    /// `GET /v1/payment_intents`, all pages, shared by every buyer.
    PaymentIntents,
    /// `GET /v1/checkout/sessions`, all pages, shared by every buyer.
    CheckoutSessions,
}

/// What the buyer side creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckoutKind {
    /// A Checkout Session (a URL to pay on).
    Session,
    /// A bare PaymentIntent (its client secret, for Stripe.js), for backends without
    /// Checkout.
    PaymentIntent,
}

/// The plugin's TOML table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_api_base")]
    api_base: String,
    secret_key_file: Option<String>,
    secret_key_env: Option<String>,
    stripe_version: Option<String>,
    #[serde(default = "default_lookup")]
    lookup: Lookup,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_refresh_ms")]
    refresh_ms: u64,
    #[serde(default = "default_max_buyers")]
    max_buyers: usize,
    #[serde(default = "default_max_pages")]
    max_pages: usize,
    #[serde(default = "default_search_per_s")]
    search_per_s: u32,
    #[serde(default = "default_api_per_s")]
    api_per_s: u32,
    #[serde(default = "default_max_stale_ms")]
    max_stale_ms: u64,
    webhook_listen: Option<String>,
    #[serde(default = "default_webhook_max_connections")]
    webhook_max_connections: usize,
    webhook_secret_file: Option<String>,
    webhook_secret_env: Option<String>,
    #[serde(default = "default_tolerance")]
    webhook_tolerance_s: u64,
    success_url: Option<String>,
    cancel_url: Option<String>,
    product_name: Option<String>,
    #[serde(default = "default_checkout")]
    checkout: CheckoutKind,
    log_file: Option<String>,
    log_level: Option<String>,
}

fn default_api_base() -> String {
    "https://api.stripe.com".into()
}
fn default_lookup() -> Lookup {
    Lookup::Search
}
fn default_timeout_ms() -> u64 {
    5000
}
fn default_refresh_ms() -> u64 {
    2000
}
fn default_max_buyers() -> usize {
    10_000
}
fn default_max_pages() -> usize {
    20
}
fn default_search_per_s() -> u32 {
    // Stripe's search limit per account.
    20
}
fn default_api_per_s() -> u32 {
    // Stripe's test-mode limit (live mode allows 100): safe for both.
    25
}
fn default_max_stale_ms() -> u64 {
    300_000
}
fn default_webhook_max_connections() -> usize {
    256
}
fn default_tolerance() -> u64 {
    300
}
fn default_checkout() -> CheckoutKind {
    CheckoutKind::Session
}

/// A parsed, checked configuration with its secrets read.
struct Checked {
    config: Config,
    key: Option<Secret>,
    webhook_secret: Option<Secret>,
    log: LogSettings,
}

fn check(text: &str) -> Result<Checked, String> {
    let config: Config =
        toml::from_str(text).map_err(|e| format!("fiat_stripe config: {}", e.message()))?;
    if !(config.api_base.starts_with("https://") || config.api_base.starts_with("http://")) {
        return Err("fiat_stripe config: api_base must be an http(s) URL".into());
    }
    if config.timeout_ms == 0
        || config.max_buyers == 0
        || config.max_pages == 0
        || config.search_per_s == 0
        || config.api_per_s == 0
        || config.webhook_max_connections == 0
    {
        return Err(
            "fiat_stripe config: timeout_ms, max_buyers, max_pages, search_per_s, api_per_s and webhook_max_connections must be above 0".into(),
        );
    }
    let key = SecretSource::from_pair(
        "secret_key",
        config.secret_key_file.clone(),
        config.secret_key_env.clone(),
    )?
    .map(|s| s.read("the Stripe secret key"))
    .transpose()?;
    let webhook_secret = SecretSource::from_pair(
        "webhook_secret",
        config.webhook_secret_file.clone(),
        config.webhook_secret_env.clone(),
    )?
    .map(|s| s.read("the webhook signing secret"))
    .transpose()?;
    if config.webhook_listen.is_some() && webhook_secret.is_none() {
        return Err(
            "fiat_stripe config: webhook_listen needs webhook_secret_file or webhook_secret_env"
                .into(),
        );
    }
    let log = LogSettings::parse(config.log_file.as_deref(), config.log_level.as_deref())
        .map_err(|e| format!("fiat_stripe config: {e}"))?;
    Ok(Checked {
        config,
        key,
        webhook_secret,
        log,
    })
}

/// One buyer's payments as last fetched (search mode).
#[derive(Debug)]
struct Fetched {
    at: Instant,
    payments: Vec<StripePayment>,
}

/// Payments by (seller, buyer).
type ByBuyer = HashMap<(Key, Key), Vec<StripePayment>>;

/// The last list walk (list modes), shared by every buyer.
#[derive(Debug)]
struct Snapshot {
    at: Instant,
    map: ByBuyer,
    /// False when only the newest `max_pages` pages were read.
    complete: bool,
}

/// What the plugin remembers. Every map is bounded.
#[derive(Debug, Default)]
struct State {
    /// Search answers per (seller, buyer), with and without payments; at most
    /// `max_buyers`.
    by_buyer: HashMap<(Key, Key), Fetched>,
    /// The list modes' last walk.
    snapshot: Option<Snapshot>,
    /// The webhook index: payments delivered by signed events, per (seller, buyer),
    /// kept until a refund or dispute event names them or the buyer is evicted; at most
    /// `max_buyers` buyers, [`PUSH_PER_BUYER`] payments each.
    index: ByBuyer,
    /// Index buckets changed since the saver last wrote them (with a state store).
    dirty: BTreeSet<u8>,
}

/// The newest payment time of a list (0 when empty), for eviction.
fn newest(list: &[StripePayment]) -> u64 {
    list.iter().map(|p| p.time_ms).max().unwrap_or(0)
}

impl State {
    /// A webhook reported a payment.
    fn push(&mut self, p: StripePayment, max_buyers: usize) {
        let key = (p.seller, p.buyer);
        self.dirty.insert(saved::bucket_of(&p));
        if !self.index.contains_key(&key) && self.index.len() >= max_buyers {
            // Full: the buyer whose newest payment is oldest has most likely used up
            // its time. Events are signed by Stripe, so only real payments get here.
            if let Some(oldest) = self
                .index
                .iter()
                .min_by_key(|(_, v)| newest(v))
                .map(|(k, _)| *k)
            {
                tracing::warn!("webhook index full (max_buyers); the oldest buyer is dropped");
                self.index.remove(&oldest);
                self.dirty.insert(oldest.1[0]);
            }
        }
        let list = self.index.entry(key).or_default();
        list.retain(|q| q.id != p.id);
        if list.len() >= PUSH_PER_BUYER {
            if let Some(i) = list
                .iter()
                .enumerate()
                .min_by_key(|(_, q)| q.time_ms)
                .map(|(i, _)| i)
            {
                list.remove(i);
            }
        }
        list.push(p);
    }

    /// A refund or dispute touched `intent`: forget what we know of it so the next
    /// validation asks Stripe.
    fn invalidate(&mut self, intent: &str) {
        for list in self.index.values_mut() {
            list.retain(|p| {
                let keep = p.id != intent;
                if !keep {
                    self.dirty.insert(saved::bucket_of(p));
                }
                keep
            });
        }
        self.index.retain(|_, v| !v.is_empty());
        self.by_buyer
            .retain(|_, f| !f.payments.iter().any(|p| p.id == intent));
        if let Some(snap) = &self.snapshot {
            if snap.map.values().flatten().any(|p| p.id == intent) {
                self.snapshot = None;
            }
        }
    }

    /// `fetched` plus indexed (webhook) payments not in it: Stripe's own answer wins for
    /// an id both have (it knows of refunds), the index fills in what the search index
    /// does not show yet.
    fn merged(&self, key: &(Key, Key), mut fetched: Vec<StripePayment>) -> Vec<StripePayment> {
        if let Some(list) = self.index.get(key) {
            for p in list {
                if !fetched.iter().any(|f| f.id == p.id) {
                    fetched.push(p.clone());
                }
            }
        }
        fetched
    }

    /// What the last fetch said about `key` and when (search: per buyer; lists: the
    /// snapshot), and whether that answer covered all of Stripe's objects.
    fn cached(
        &self,
        lookup: Lookup,
        key: &(Key, Key),
    ) -> Option<(Instant, Vec<StripePayment>, bool)> {
        match lookup {
            Lookup::Search => self
                .by_buyer
                .get(key)
                .map(|f| (f.at, f.payments.clone(), true)),
            Lookup::PaymentIntents | Lookup::CheckoutSessions => self.snapshot.as_ref().map(|s| {
                (
                    s.at,
                    s.map.get(key).cloned().unwrap_or_default(),
                    s.complete,
                )
            }),
        }
    }

    /// Stores one buyer's search answer, evicting when full: answers without payments
    /// first (strangers' keys), so a flood of unknown keys cannot push out the buyers
    /// who paid; then the oldest.
    fn store(&mut self, key: (Key, Key), payments: Vec<StripePayment>, max_buyers: usize) {
        if !self.by_buyer.contains_key(&key) && self.by_buyer.len() >= max_buyers {
            let victim = self
                .by_buyer
                .iter()
                .min_by_key(|(_, f)| (!f.payments.is_empty(), f.at))
                .map(|(k, _)| *k);
            if let Some(v) = victim {
                self.by_buyer.remove(&v);
            }
        }
        self.by_buyer.insert(
            key,
            Fetched {
                at: Instant::now(),
                payments,
            },
        );
    }
}

/// A buyer's payments as the plugin could establish them.
#[derive(Debug)]
struct Known {
    payments: Vec<StripePayment>,
    /// False when a list walk stopped at `max_pages`: an older payment may exist.
    complete: bool,
}

/// The Stripe verifier.
pub struct StripePlugin {
    api: Option<StripeApi>,
    config: Config,
    state: Arc<Mutex<State>>,
    listener: Option<webhook::Listener>,
    /// Writes the webhook index to the host's state store (API 1.3). Dropped after the
    /// listener, so the last events are written.
    _saver: Option<saved::Saver>,
}

impl std::fmt::Debug for StripePlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripePlugin")
            .field("api", &self.api)
            .field("lookup", &self.config.lookup)
            .finish()
    }
}

fn lock(state: &Mutex<State>) -> Result<std::sync::MutexGuard<'_, State>, String> {
    state
        .lock()
        .map_err(|_| "the Stripe plugin's state is poisoned".to_owned())
}

/// Handles one verified webhook event body; `saver` is woken to write what changed.
fn on_event(state: &Mutex<State>, max_buyers: usize, saver: Option<&SyncSender<()>>, body: &[u8]) {
    let Ok(event) = serde_json::from_slice::<Value>(body) else {
        tracing::debug!("webhook event is not JSON");
        return;
    };
    let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
    let Some(obj) = event.get("data").and_then(|d| d.get("object")) else {
        return;
    };
    tracing::debug!(event = kind, "webhook event");
    let Ok(mut st) = state.lock() else { return };
    match kind {
        "checkout.session.completed"
        | "checkout.session.async_payment_succeeded"
        | "payment_intent.succeeded" => {
            if let Some(p) = read_payment(obj) {
                tracing::debug!(buyer = %hex::encode(p.buyer), id = %p.id, "payment pushed by webhook");
                st.push(p, max_buyers);
            }
        }
        k if k.starts_with("charge.refund")
            || k.starts_with("charge.dispute")
            || k == "charge.refunded" =>
        {
            if let Some(intent) = objects::intent_of(obj) {
                tracing::debug!(event = kind, intent = %intent, "payment changed; will ask again");
                st.invalidate(&intent);
            }
        }
        _ => {}
    }
    drop(st);
    if let Some(wake) = saver {
        // Full: a wake-up is already pending.
        let _ = wake.try_send(());
    }
}

impl StripePlugin {
    /// The address the webhook listener bound, if it runs.
    pub fn webhook_addr(&self) -> Option<&str> {
        self.listener.as_ref().map(|l| l.addr())
    }

    fn api(&self) -> Result<&StripeApi, String> {
        self.api.as_ref().ok_or_else(|| {
            "no Stripe secret key configured (secret_key_file or secret_key_env)".to_owned()
        })
    }

    /// The payments bound to (seller, buyer). In order: a fresh answer (younger than
    /// `refresh_ms`); the webhook index, when it alone makes the buyer valid
    /// (`enough`); Stripe, when the request budget allows; while Stripe is throttled
    /// (budget used up, or 429 until its `Retry-After`), the last answer if younger
    /// than `max_stale_ms` and enough. Otherwise the call fails: fail closed.
    fn payments_for(
        &self,
        seller: Key,
        buyer: Key,
        enough: &dyn Fn(&[StripePayment]) -> bool,
    ) -> Result<Known, String> {
        let key = (seller, buyer);
        let lookup = self.config.lookup;
        let refresh = Duration::from_millis(self.config.refresh_ms);
        let max_stale = Duration::from_millis(self.config.max_stale_ms);
        let api = self.api()?;
        let (known, stale_ok) = {
            let st = lock(&self.state)?;
            let cached = st.cached(lookup, &key);
            let age = cached.as_ref().map(|(at, _, _)| at.elapsed());
            let (fetched, complete) = cached.map_or((Vec::new(), true), |(_, p, c)| (p, c));
            let known = Known {
                payments: st.merged(&key, fetched),
                complete,
            };
            if age.is_some_and(|a| a < refresh) {
                return Ok(known);
            }
            if st.index.contains_key(&key) && enough(&known.payments) {
                tracing::trace!(buyer = %hex::encode(buyer), "answered from the webhook index");
                return Ok(known);
            }
            (known, age.is_some_and(|a| a < max_stale))
        };
        let priority = if known.payments.is_empty() {
            Priority::Unknown
        } else {
            Priority::Known
        };
        let fetched = match lookup {
            Lookup::Search => self.search(api, seller, buyer, priority),
            Lookup::PaymentIntents | Lookup::CheckoutSessions => self.list(api),
        };
        match fetched {
            Ok(()) => {
                let st = lock(&self.state)?;
                let (fetched, complete) = st
                    .cached(lookup, &key)
                    .map_or((Vec::new(), true), |(_, p, c)| (p, c));
                Ok(Known {
                    payments: st.merged(&key, fetched),
                    complete,
                })
            }
            Err(e) if e.is_throttled() => {
                // Not asked: an older answer stands in, if it is recent and grants
                // access; the index's payments are Stripe-signed and need no age.
                let fallback = if stale_ok {
                    known
                } else {
                    let st = lock(&self.state)?;
                    Known {
                        payments: st.merged(&key, Vec::new()),
                        complete: known.complete,
                    }
                };
                if enough(&fallback.payments) {
                    tracing::debug!(buyer = %hex::encode(buyer), error = %e, "Stripe throttled; answered from what was known");
                    Ok(fallback)
                } else {
                    Err(self.failed(e))
                }
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Searches one buyer's payments and stores the answer.
    fn search(
        &self,
        api: &StripeApi,
        seller: Key,
        buyer: Key,
        priority: Priority,
    ) -> Result<(), ApiError> {
        let query = format!(
            "metadata['{META_SELLER}']:'{}' AND metadata['{META_BUYER}']:'{}' AND status:'succeeded'",
            hex::encode(seller),
            hex::encode(buyer)
        );
        let found = api.search_all(
            "/v1/payment_intents/search",
            &query,
            &["data.latest_charge"],
            priority,
        )?;
        let payments: Vec<StripePayment> = found
            .iter()
            .filter_map(read_payment)
            .filter(|p| p.seller == seller && p.buyer == buyer)
            .collect();
        let mut st = lock(&self.state).map_err(ApiError::Unreadable)?;
        st.store((seller, buyer), payments, self.config.max_buyers);
        Ok(())
    }

    /// Walks the configured list and stores it as the snapshot. The list is shared by
    /// every buyer and walked at most once per `refresh_ms` whoever asks, so it runs as
    /// a known buyer's request.
    fn list(&self, api: &StripeApi) -> Result<(), ApiError> {
        let (path, expand) = match self.config.lookup {
            Lookup::CheckoutSessions => {
                ("/v1/checkout/sessions", "data.payment_intent.latest_charge")
            }
            _ => ("/v1/payment_intents", "data.latest_charge"),
        };
        let listing = api.list_all(path, &[expand], Priority::Known)?;
        let mut map: ByBuyer = HashMap::new();
        // At most `max_pages` × 100 objects were read, so the map is bounded too.
        for p in listing.objects.iter().filter_map(read_payment) {
            map.entry((p.seller, p.buyer)).or_default().push(p);
        }
        let mut st = lock(&self.state).map_err(ApiError::Unreadable)?;
        st.snapshot = Some(Snapshot {
            at: Instant::now(),
            map,
            complete: listing.complete,
        });
        Ok(())
    }

    fn failed(&self, e: ApiError) -> String {
        tracing::warn!(error = %e, "cannot check payments at Stripe");
        format!("cannot check payments: {e}")
    }

    /// Creates what a buyer pays on: a Checkout Session (URL) or a PaymentIntent.
    fn create_checkout(
        &self,
        req: &Request<'_>,
        amount: &str,
    ) -> Result<PaymentInstructions, String> {
        let api = self.api()?;
        let currency = Currency::parse(&req.terms.currency)?;
        let minor = currency.to_minor(amount)?.to_string();
        let seller = hex::encode(req.seller);
        let buyer = hex::encode(req.buyer);
        let name = self
            .config
            .product_name
            .clone()
            .unwrap_or_else(|| "Dazaar data access".to_owned());
        match self.config.checkout {
            CheckoutKind::Session => {
                let (Some(success), Some(cancel)) =
                    (&self.config.success_url, &self.config.cancel_url)
                else {
                    return Err(
                        "set success_url and cancel_url in the config to create Checkout Sessions"
                            .into(),
                    );
                };
                let form = [
                    ("mode", "payment"),
                    ("success_url", success.as_str()),
                    ("cancel_url", cancel.as_str()),
                    ("client_reference_id", buyer.as_str()),
                    ("line_items[0][quantity]", "1"),
                    ("line_items[0][price_data][currency]", currency.code()),
                    ("line_items[0][price_data][unit_amount]", minor.as_str()),
                    (
                        "line_items[0][price_data][product_data][name]",
                        name.as_str(),
                    ),
                    ("metadata[dazaar_seller]", seller.as_str()),
                    ("metadata[dazaar_buyer]", buyer.as_str()),
                    (
                        "payment_intent_data[metadata][dazaar_seller]",
                        seller.as_str(),
                    ),
                    (
                        "payment_intent_data[metadata][dazaar_buyer]",
                        buyer.as_str(),
                    ),
                ];
                let session = api
                    .post_form("/v1/checkout/sessions", &form)
                    .map_err(|e| format!("cannot create a Checkout Session: {e}"))?;
                let url = session
                    .get("url")
                    .and_then(Value::as_str)
                    .ok_or("Stripe's Checkout Session has no url")?;
                let id = session.get("id").and_then(Value::as_str).unwrap_or("");
                tracing::info!(buyer = %buyer, session = id, "Checkout Session created");
                Ok(PaymentInstructions {
                    memo: Some(req.memo()),
                    amount: Some(amount.to_owned()),
                    currency: Some(req.terms.currency.to_string()),
                    checkout_url: Some(url.to_owned()),
                    invoice: Some(id.to_owned()),
                    note: Some("pay on the Stripe Checkout page".into()),
                    ..PaymentInstructions::default()
                })
            }
            CheckoutKind::PaymentIntent => {
                let form = [
                    ("amount", minor.as_str()),
                    ("currency", currency.code()),
                    ("metadata[dazaar_seller]", seller.as_str()),
                    ("metadata[dazaar_buyer]", buyer.as_str()),
                ];
                let pi = api
                    .post_form("/v1/payment_intents", &form)
                    .map_err(|e| format!("cannot create a PaymentIntent: {e}"))?;
                let secret = pi
                    .get("client_secret")
                    .and_then(Value::as_str)
                    .ok_or("Stripe's PaymentIntent has no client_secret")?;
                Ok(PaymentInstructions {
                    memo: Some(req.memo()),
                    amount: Some(amount.to_owned()),
                    currency: Some(req.terms.currency.to_string()),
                    invoice: Some(secret.to_owned()),
                    note: Some(
                        "confirm this PaymentIntent (its client secret is the invoice) with Stripe.js"
                            .into(),
                    ),
                    ..PaymentInstructions::default()
                })
            }
        }
    }
}

impl PaymentPlugin for StripePlugin {
    fn describe() -> Description {
        Description {
            name: "fiat_stripe",
            version: env!("CARGO_PKG_VERSION"),
            methods: &["stripe", "card", "fiat"],
            currencies: money::LISTED,
        }
    }

    fn check_config(config: &str) -> Result<(), String> {
        check(config).map(|_| ())
    }

    fn open(config: &str) -> Result<Self, String> {
        StripePlugin::open_on(config, None)
    }

    fn open_with_state(config: &str, state: PluginStore) -> Result<Self, String> {
        StripePlugin::open_on(config, Some(state))
    }

    fn validate(&self, req: &Request<'_>, now_ms: u64) -> Result<Grant, String> {
        let price = req
            .terms
            .price()
            .map_err(|e| format!("bad price on the card: {e}"))?;
        let currency = Currency::parse(&req.terms.currency)?;
        let counted = |found: &[StripePayment]| -> Vec<Payment> {
            found
                .iter()
                .filter(|p| p.currency == currency && p.net_minor > 0)
                .map(|p| Payment {
                    amount: currency.to_major(p.net_minor),
                    time_ms: p.time_ms,
                })
                .collect()
        };
        let enough = |found: &[StripePayment]| price.is_active(&counted(found), now_ms);
        // Failures to ask Stripe (HTTP errors, 429, an exhausted budget) are marked
        // `unavailable`: the host logs them and tells the peer only that the check is
        // unavailable.
        let known = self
            .payments_for(req.seller, req.buyer, &enough)
            .map_err(unavailable)?;
        let payments = counted(&known.payments);
        tracing::trace!(buyer = %hex::encode(req.buyer), count = payments.len(), "payments counted");
        price.grant(&payments, now_ms).map_err(|r| {
            r.reason(|| {
                let code = currency.code().to_uppercase();
                if known.complete {
                    format!("no Stripe payment in {code} found for this buyer")
                } else {
                    format!(
                        "no Stripe payment in {code} found for this buyer among the newest {} objects (max_pages)",
                        self.config.max_pages.saturating_mul(100)
                    )
                }
            })
        })
    }

    fn user_message(
        &self,
        req: &Request<'_>,
        name: &str,
        message: &str,
    ) -> Result<Option<(String, String)>, String> {
        if name != MSG_CHECKOUT_REQUEST {
            return Ok(None);
        }
        let body: Value = serde_json::from_str(message)
            .map_err(|_| format!("{MSG_CHECKOUT_REQUEST}: the message is not JSON"))?;
        let amount = match body.get("amount") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            None | Some(Value::Null) => req.terms.amount.to_string(),
            Some(_) => return Err(format!("{MSG_CHECKOUT_REQUEST}: bad amount")),
        };
        let how = self.create_checkout(req, &amount).map_err(unavailable)?;
        let reply = json!({
            "url": how.checkout_url,
            "id": how.invoice,
            "amount": amount,
            "currency": req.terms.currency.as_str(),
        });
        Ok(Some((MSG_CHECKOUT.to_owned(), reply.to_string())))
    }

    fn payment_request(
        &self,
        req: &Request<'_>,
        amount: &str,
    ) -> Result<PaymentInstructions, String> {
        if self.api.is_some() {
            return self.create_checkout(req, amount);
        }
        Ok(PaymentInstructions {
            memo: Some(req.memo()),
            amount: Some(amount.to_owned()),
            currency: Some(req.terms.currency.to_string()),
            send: Some(OutgoingMessage {
                name: MSG_CHECKOUT_REQUEST.to_owned(),
                message: json!({ "amount": amount }),
            }),
            note: Some("the seller answers with a Stripe Checkout link".into()),
            ..PaymentInstructions::default()
        })
    }
}

impl StripePlugin {
    /// Opens the plugin; with `store`, the webhook index saved there is read back and
    /// kept there.
    fn open_on(config: &str, store: Option<PluginStore>) -> Result<Self, String> {
        let Checked {
            config,
            key,
            webhook_secret,
            log,
        } = check(config)?;
        log.apply()?;
        let api = key.map(|k| {
            StripeApi::new(
                &config.api_base,
                k,
                Duration::from_millis(config.timeout_ms),
                config.stripe_version.clone(),
                config.max_pages,
                api::Budget {
                    search_per_s: config.search_per_s,
                    other_per_s: config.api_per_s,
                },
            )
        });
        let state = Arc::new(Mutex::new(State::default()));
        let saver = match store {
            Some(store) => {
                match saved::load(&store) {
                    Ok(payments) => {
                        tracing::info!(payments = payments.len(), "webhook index read back");
                        let mut st = lock(&state)?;
                        for p in payments {
                            st.push(p, config.max_buyers);
                        }
                        st.dirty.clear();
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read the saved webhook index"),
                }
                Some(saved::Saver::start(store, Arc::clone(&state))?)
            }
            None => None,
        };
        let listener = match (&config.webhook_listen, webhook_secret) {
            (Some(addr), Some(secret)) => {
                let st = Arc::clone(&state);
                let max = config.max_buyers;
                let wake = saver.as_ref().map(saved::Saver::waker);
                Some(webhook::Listener::start(
                    addr,
                    secret,
                    Duration::from_secs(config.webhook_tolerance_s),
                    webhook::Limits {
                        max_connections: config.webhook_max_connections,
                        ..webhook::Limits::default()
                    },
                    move |body| on_event(&st, max, wake.as_ref(), body),
                )?)
            }
            _ => None,
        };
        tracing::info!(api = %config.api_base, lookup = ?config.lookup, "Stripe plugin opened");
        Ok(StripePlugin {
            api,
            config,
            state,
            listener,
            _saver: saver,
        })
    }
}

export_payment_plugin!(StripePlugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_checks() {
        assert!(StripePlugin::check_config("").is_ok());
        let e = StripePlugin::check_config("secret_key = \"sk_live_x\"").unwrap_err();
        assert!(e.contains("secret_key") && !e.contains("sk_live_x"), "{e}");
        let e = StripePlugin::check_config("webhook_listen = \"127.0.0.1:0\"").unwrap_err();
        assert!(e.contains("webhook_secret"), "{e}");
        let e = StripePlugin::check_config("lookup = \"grep\"").unwrap_err();
        assert!(e.contains("lookup") || e.contains("grep"), "{e}");
        let e =
            StripePlugin::check_config("secret_key_env = \"DAZAAR_NO_SUCH_VAR_X\"").unwrap_err();
        assert!(e.contains("DAZAAR_NO_SUCH_VAR_X"), "{e}");
        for zero in ["search_per_s", "api_per_s", "webhook_max_connections"] {
            let e = StripePlugin::check_config(&format!("{zero} = 0")).unwrap_err();
            assert!(e.contains(zero), "{e}");
        }
        assert!(StripePlugin::check_config(
            "search_per_s = 5
api_per_s = 10
max_stale_ms = 0"
        )
        .is_ok());
    }
}
