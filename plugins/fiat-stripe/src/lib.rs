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
//!   `"checkout_sessions"`, for backends without search), and reused for `refresh_ms`.
//!   With `webhook_listen`, signed `checkout.session.completed` /
//!   `payment_intent.succeeded` events count at once, and refund and dispute events
//!   force a fresh look. Any failure to ask Stripe (down, slow past `timeout_ms`,
//!   garbage, an error status) makes the buyer not valid with the reason: fail closed.
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
pub use dazaar_plugin_api::logging;
pub mod money;
pub mod objects;
pub mod secret;
pub mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dazaar_plugin_api::{
    export_payment_plugin, Description, Grant, Key, OutgoingMessage, Payment, PaymentInstructions,
    PaymentPlugin, Request,
};
use serde::Deserialize;
use serde_json::{json, Value};

use api::{ApiError, StripeApi};
use money::Currency;
use objects::{read_payment, StripePayment, META_BUYER, META_SELLER};
use secret::{Secret, SecretSource};

/// The user message a buyer sends to ask the seller for a checkout link.
pub const MSG_CHECKOUT_REQUEST: &str = "stripe-checkout-request";
/// The seller's answer.
pub const MSG_CHECKOUT: &str = "stripe-checkout";

/// How long a payment delivered by webhook is counted without the API confirming it
/// (Stripe's search index lags up to about a minute).
const PUSH_KEEP: Duration = Duration::from_secs(120);
/// Webhook-delivered payments kept per buyer.
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
    webhook_listen: Option<String>,
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
    log_level: tracing::Level,
}

fn check(text: &str) -> Result<Checked, String> {
    let config: Config =
        toml::from_str(text).map_err(|e| format!("fiat_stripe config: {}", e.message()))?;
    if !(config.api_base.starts_with("https://") || config.api_base.starts_with("http://")) {
        return Err("fiat_stripe config: api_base must be an http(s) URL".into());
    }
    if config.timeout_ms == 0 || config.max_buyers == 0 || config.max_pages == 0 {
        return Err(
            "fiat_stripe config: timeout_ms, max_buyers and max_pages must be above 0".into(),
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
    let log_level = logging::parse_level(config.log_level.as_deref().unwrap_or("info"))?;
    Ok(Checked {
        config,
        key,
        webhook_secret,
        log_level,
    })
}

/// One buyer's payments as last fetched.
#[derive(Debug)]
struct Fetched {
    at: Instant,
    payments: Vec<StripePayment>,
}

/// Payments by (seller, buyer).
type ByBuyer = HashMap<(Key, Key), Vec<StripePayment>>;

/// What the plugin remembers. Every map is bounded.
#[derive(Debug, Default)]
struct State {
    /// Per (seller, buyer), in `search` mode; at most `max_buyers`.
    by_buyer: HashMap<(Key, Key), Fetched>,
    /// Everything, in the list modes.
    snapshot: Option<(Instant, ByBuyer)>,
    /// Delivered by webhook, not yet confirmed by a fetch; at most `max_buyers` buyers.
    pushed: HashMap<(Key, Key), Vec<(Instant, StripePayment)>>,
}

impl State {
    /// A webhook reported a payment.
    fn push(&mut self, p: StripePayment, max_buyers: usize) {
        let key = (p.seller, p.buyer);
        if !self.pushed.contains_key(&key) && self.pushed.len() >= max_buyers {
            let now = Instant::now();
            self.pushed
                .retain(|_, v| v.iter().any(|(at, _)| now.duration_since(*at) < PUSH_KEEP));
            if self.pushed.len() >= max_buyers {
                tracing::warn!("webhook payment dropped: too many buyers pending");
                return;
            }
        }
        let list = self.pushed.entry(key).or_default();
        list.retain(|(_, q)| q.id != p.id);
        if list.len() >= PUSH_PER_BUYER {
            list.remove(0);
        }
        list.push((Instant::now(), p));
    }

    /// A refund or dispute touched `intent`: forget what we know of it so the next
    /// validation asks Stripe.
    fn invalidate(&mut self, intent: &str) {
        for list in self.pushed.values_mut() {
            list.retain(|(_, p)| p.id != intent);
        }
        self.pushed.retain(|_, v| !v.is_empty());
        self.by_buyer
            .retain(|_, f| !f.payments.iter().any(|p| p.id == intent));
        if let Some((_, map)) = &self.snapshot {
            if map.values().flatten().any(|p| p.id == intent) {
                self.snapshot = None;
            }
        }
    }

    /// `fetched` plus webhook deliveries not yet in it.
    fn merged(&mut self, key: &(Key, Key), mut fetched: Vec<StripePayment>) -> Vec<StripePayment> {
        if let Some(list) = self.pushed.get_mut(key) {
            let now = Instant::now();
            list.retain(|(at, p)| {
                now.duration_since(*at) < PUSH_KEEP && !fetched.iter().any(|f| f.id == p.id)
            });
            fetched.extend(list.iter().map(|(_, p)| p.clone()));
            if list.is_empty() {
                self.pushed.remove(key);
            }
        }
        fetched
    }
}

/// The Stripe verifier.
pub struct StripePlugin {
    api: Option<StripeApi>,
    config: Config,
    state: Arc<Mutex<State>>,
    listener: Option<webhook::Listener>,
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

/// Handles one verified webhook event body.
fn on_event(state: &Mutex<State>, max_buyers: usize, body: &[u8]) {
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

    /// The payments bound to (seller, buyer), from the cache or from Stripe.
    fn payments_for(&self, seller: Key, buyer: Key) -> Result<Vec<StripePayment>, String> {
        let key = (seller, buyer);
        let refresh = Duration::from_millis(self.config.refresh_ms);
        let api = self.api()?;
        match self.config.lookup {
            Lookup::Search => {
                {
                    let mut st = lock(&self.state)?;
                    if let Some(f) = st.by_buyer.get(&key).filter(|f| f.at.elapsed() < refresh) {
                        let fetched = f.payments.clone();
                        return Ok(st.merged(&key, fetched));
                    }
                }
                let query = format!(
                    "metadata['{META_SELLER}']:'{}' AND metadata['{META_BUYER}']:'{}' AND status:'succeeded'",
                    hex::encode(seller),
                    hex::encode(buyer)
                );
                let found = api
                    .search_all(
                        "/v1/payment_intents/search",
                        &query,
                        &["data.latest_charge"],
                    )
                    .map_err(|e| self.failed(e))?;
                let payments: Vec<StripePayment> = found
                    .iter()
                    .filter_map(read_payment)
                    .filter(|p| p.seller == seller && p.buyer == buyer)
                    .collect();
                let mut st = lock(&self.state)?;
                if !st.by_buyer.contains_key(&key) && st.by_buyer.len() >= self.config.max_buyers {
                    st.by_buyer.retain(|_, f| f.at.elapsed() < refresh);
                    if st.by_buyer.len() >= self.config.max_buyers {
                        // Still full of fresh answers: drop the oldest.
                        if let Some(oldest) = st
                            .by_buyer
                            .iter()
                            .min_by_key(|(_, f)| f.at)
                            .map(|(k, _)| *k)
                        {
                            st.by_buyer.remove(&oldest);
                        }
                    }
                }
                st.by_buyer.insert(
                    key,
                    Fetched {
                        at: Instant::now(),
                        payments: payments.clone(),
                    },
                );
                Ok(st.merged(&key, payments))
            }
            Lookup::PaymentIntents | Lookup::CheckoutSessions => {
                {
                    let mut st = lock(&self.state)?;
                    if let Some((at, map)) = &st.snapshot {
                        if at.elapsed() < refresh {
                            let fetched = map.get(&key).cloned().unwrap_or_default();
                            return Ok(st.merged(&key, fetched));
                        }
                    }
                }
                let (path, expand) = match self.config.lookup {
                    Lookup::CheckoutSessions => {
                        ("/v1/checkout/sessions", "data.payment_intent.latest_charge")
                    }
                    _ => ("/v1/payment_intents", "data.latest_charge"),
                };
                let found = api.list_all(path, &[expand]).map_err(|e| self.failed(e))?;
                let mut map: ByBuyer = HashMap::new();
                for p in found.iter().filter_map(read_payment) {
                    map.entry((p.seller, p.buyer)).or_default().push(p);
                }
                let mut st = lock(&self.state)?;
                let fetched = map.get(&key).cloned().unwrap_or_default();
                st.snapshot = Some((Instant::now(), map));
                Ok(st.merged(&key, fetched))
            }
        }
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
        let Checked {
            config,
            key,
            webhook_secret,
            log_level,
        } = check(config)?;
        if let Some(path) = &config.log_file {
            logging::add_sink(&secret::expand_home(path), log_level)?;
        }
        let api = key.map(|k| {
            StripeApi::new(
                &config.api_base,
                k,
                Duration::from_millis(config.timeout_ms),
                config.stripe_version.clone(),
                config.max_pages,
            )
        });
        let state = Arc::new(Mutex::new(State::default()));
        let listener = match (&config.webhook_listen, webhook_secret) {
            (Some(addr), Some(secret)) => {
                let st = Arc::clone(&state);
                let max = config.max_buyers;
                Some(webhook::Listener::start(
                    addr,
                    secret,
                    Duration::from_secs(config.webhook_tolerance_s),
                    move |body| on_event(&st, max, body),
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
        })
    }

    fn validate(&self, req: &Request<'_>, now_ms: u64) -> Result<Grant, String> {
        let rate = req
            .terms
            .rate()
            .map_err(|e| format!("bad price on the card: {e}"))?;
        let currency = Currency::parse(&req.terms.currency)?;
        let payments: Vec<Payment> = self
            .payments_for(req.seller, req.buyer)?
            .into_iter()
            .filter(|p| p.currency == currency && p.net_minor > 0)
            .map(|p| Payment {
                amount: currency.to_major(p.net_minor),
                time_ms: p.time_ms,
            })
            .collect();
        tracing::trace!(buyer = %hex::encode(req.buyer), count = payments.len(), "payments counted");
        if payments.is_empty() {
            return Err(format!(
                "no Stripe payment in {} found for this buyer",
                currency.code().to_uppercase()
            ));
        }
        if rate.is_active(&payments, now_ms) {
            Ok(Grant::time_ms(rate.remaining_ms(&payments, now_ms)))
        } else {
            Err("the paid time has run out".to_owned())
        }
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
        let how = self.create_checkout(req, &amount)?;
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
    }
}
