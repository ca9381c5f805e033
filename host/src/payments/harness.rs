//! Driving one plugin library by hand, with a clock the caller sets: what `dazaar plugins
//! try` runs, and what the plugin test kit (`dazaar-plugin-kit`) gives plugin authors.
//!
//! The library is loaded by the host's own loader ([`LoadedPlugin::load`]) and opened with
//! the host's call threads and timeouts ([`LoadedPlugin::open`]), so a call made here
//! crosses the real ABI exactly as a seller's call does. Only the time is virtual: every
//! `validate` is made at [`PluginHarness::now_ms`], which the caller moves
//! ([`PluginHarness::advance`]) instead of sleeping.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dazaar_plugin_api::{Grant, Key, PaymentInstructions, PaymentTerms, UserMessage};

use super::loader::{LoadError, LoadedPlugin};
use super::pool::CallLimits;
use super::registry::{OpenedVerifier, PaymentError};
use super::wire::MAX_USER_MESSAGE;

/// Where a harness's virtual clock starts: 2023-11-14T22:13:20Z, a plain date after every
/// payment scheme's epoch, so plugins that compare payment times see ordinary numbers.
pub const HARNESS_START_MS: u64 = 1_700_000_000_000;

/// The seller key a harness uses until told otherwise (the bytes 0x5e repeated).
pub const HARNESS_SELLER: Key = [0x5e; 32];

/// Why a harness could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// The library was refused by the loader.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The plugin refused its configuration, or failed to open.
    #[error("cannot open the plugin: {0}")]
    Open(PaymentError),
    /// The card terms given are not a payment entry.
    #[error("the terms are not a card payment entry: {0}")]
    Terms(String),
}

/// One plugin library, opened with a configuration, called with a virtual clock.
#[derive(Debug, Clone)]
pub struct PluginHarness {
    verifier: Arc<OpenedVerifier>,
    terms: Arc<PaymentTerms>,
    seller: Key,
    now_ms: u64,
}

/// The card entry a harness uses by default: the plugin's first method and currency (no
/// currency when it serves any), 1 per second.
pub fn default_terms(plugin: &LoadedPlugin) -> PaymentTerms {
    let method = plugin.methods().next().unwrap_or_default();
    let currency = plugin.currencies().next().unwrap_or_default();
    PaymentTerms::new(method, currency, "1", "seconds", "1")
}

/// `overrides` (a JSON object with some card payment entry fields: `method`, `currency`,
/// `amount`, `unit`, `interval`, `payTo`, `minSeconds`, ...) over the plugin's
/// [`default_terms`].
pub fn terms_with(
    plugin: &LoadedPlugin,
    overrides: &serde_json::Value,
) -> Result<PaymentTerms, HarnessError> {
    let serde_json::Value::Object(given) = overrides else {
        return Err(HarnessError::Terms("not a JSON object".to_owned()));
    };
    let mut entry = crate::card::terms_to_card(&default_terms(plugin));
    if let serde_json::Value::Object(base) = &mut entry {
        for (k, v) in given {
            base.insert(k.clone(), v.clone());
        }
    }
    crate::card::terms_from_card(&entry).map_err(|e| HarnessError::Terms(e.to_string()))
}

impl PluginHarness {
    /// Loads the library at `path` and opens it with `config` (its TOML table, as text),
    /// with the host's default call limits.
    pub fn open(path: &Path, config: &str) -> Result<PluginHarness, HarnessError> {
        PluginHarness::open_with_limits(path, config, CallLimits::default())
    }

    /// [`open`](Self::open) with chosen call limits (timeout, threads, queue).
    pub fn open_with_limits(
        path: &Path,
        config: &str,
        limits: CallLimits,
    ) -> Result<PluginHarness, HarnessError> {
        let plugin = Arc::new(LoadedPlugin::load(path)?);
        PluginHarness::open_loaded(&plugin, config, limits)
    }

    /// Opens an already loaded plugin.
    pub fn open_loaded(
        plugin: &Arc<LoadedPlugin>,
        config: &str,
        limits: CallLimits,
    ) -> Result<PluginHarness, HarnessError> {
        let verifier = plugin.open(config, limits).map_err(HarnessError::Open)?;
        Ok(PluginHarness {
            terms: Arc::new(default_terms(plugin)),
            verifier,
            seller: HARNESS_SELLER,
            now_ms: HARNESS_START_MS,
        })
    }

    /// The plugin (name, version, methods).
    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        self.verifier.plugin()
    }

    /// The opened verifier (its call counters, its health).
    pub fn verifier(&self) -> &Arc<OpenedVerifier> {
        &self.verifier
    }

    /// The card entry calls are made for.
    pub fn terms(&self) -> &PaymentTerms {
        &self.terms
    }

    /// Makes later calls for `terms`.
    pub fn set_terms(&mut self, terms: PaymentTerms) {
        self.terms = Arc::new(terms);
    }

    /// Makes later calls for the card entry `overrides` describes (see [`terms_with`]).
    pub fn set_terms_json(&mut self, overrides: &serde_json::Value) -> Result<(), HarnessError> {
        self.terms = Arc::new(terms_with(self.plugin(), overrides)?);
        Ok(())
    }

    /// The seller key calls are made for.
    pub fn seller(&self) -> Key {
        self.seller
    }

    /// Makes later calls for the product sold under `seller`.
    pub fn set_seller(&mut self, seller: Key) {
        self.seller = seller;
    }

    /// The virtual time `validate` is called at (ms since the Unix epoch).
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Sets the virtual time.
    pub fn set_now_ms(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    /// Moves the virtual time forward by `by` (saturating).
    pub fn advance(&mut self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.now_ms = self.now_ms.saturating_add(ms);
    }

    /// Seller side: may `buyer` have the product now (virtual time)?
    pub fn validate(&self, buyer: Key) -> Result<Grant, PaymentError> {
        self.verifier
            .validate(buyer, self.seller, &self.terms, self.now_ms)
    }

    /// Buyer side: how to pay `amount` for the product.
    pub fn payment_request(
        &self,
        buyer: Key,
        amount: &str,
    ) -> Result<PaymentInstructions, PaymentError> {
        self.verifier
            .payment_request(buyer, self.seller, &self.terms, amount)
    }

    /// A `dazaar/user-message` named `name` with the JSON body `message`, from `buyer`:
    /// the plugin's reply, if any. A message larger than the wire allows is refused
    /// before the plugin sees it, as the seller would.
    pub fn user_message(
        &self,
        buyer: Key,
        name: &str,
        message: &str,
    ) -> Result<Option<UserMessage>, PaymentError> {
        if name.len() + message.len() > MAX_USER_MESSAGE {
            return Err(PaymentError::BadAnswer {
                plugin: self.plugin().name().to_owned(),
                detail: "the user message is larger than the wire allows".to_owned(),
            });
        }
        self.verifier.user_message(
            buyer,
            self.seller,
            &self.terms,
            UserMessage {
                name: name.into(),
                message: message.into(),
            },
        )
    }
}

/// What one call of `dazaar plugins try` asked.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrialCall {
    /// `validate` for the buyer.
    Validate,
    /// `payment_request` for this amount.
    PaymentRequest {
        /// The amount, in the card's currency.
        amount: String,
    },
    /// `user_message` with this name and JSON body.
    UserMessage {
        /// The message name.
        name: String,
        /// The body, JSON text.
        message: String,
    },
}

impl TrialCall {
    /// Reads `NAME:JSON` (the `--user-message` argument).
    pub fn user_message(arg: &str) -> Result<TrialCall, String> {
        let (name, message) = arg
            .split_once(':')
            .ok_or_else(|| "a user message is NAME:JSON".to_owned())?;
        if name.is_empty() {
            return Err("the user message has no name".to_owned());
        }
        serde_json::from_str::<serde_json::Value>(message)
            .map_err(|e| format!("the user message body is not JSON: {e}"))?;
        Ok(TrialCall::UserMessage {
            name: name.to_owned(),
            message: message.to_owned(),
        })
    }
}

/// The plugin's answer to one [`TrialCall`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TrialAnswer {
    /// `validate`'s answer.
    Validate(Result<Grant, PaymentError>),
    /// `payment_request`'s answer.
    PaymentRequest(Result<PaymentInstructions, PaymentError>),
    /// `user_message`'s answer.
    UserMessage(Result<Option<UserMessage>, PaymentError>),
}

/// What kind of failure `e` is, as the `error` field of `plugins try --json` says it.
pub fn error_kind(e: &PaymentError) -> &'static str {
    match e {
        PaymentError::Plugin { .. } => "refused",
        PaymentError::Unavailable { .. } => "unavailable",
        PaymentError::Panicked { .. } => "panicked",
        PaymentError::TimedOut { .. } => "timed_out",
        PaymentError::Busy { .. } => "busy",
        PaymentError::Lost { .. } => "lost",
        PaymentError::BadAnswer { .. } => "bad_answer",
        PaymentError::MissingFunction { .. } => "missing_function",
        _ => "failed",
    }
}

/// The reason in `e` as the plugin gave it (a refusal's text without the plugin name),
/// or the error's text.
fn reason_of(e: &PaymentError) -> String {
    match e {
        PaymentError::Plugin { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

fn error_json(ok_key: &str, e: &PaymentError) -> serde_json::Value {
    serde_json::json!({ ok_key: false, "reason": reason_of(e), "error": error_kind(e) })
}

impl TrialAnswer {
    /// Makes `call` on `harness` for `buyer`.
    pub fn ask(harness: &PluginHarness, buyer: Key, call: &TrialCall) -> TrialAnswer {
        match call {
            TrialCall::Validate => TrialAnswer::Validate(harness.validate(buyer)),
            TrialCall::PaymentRequest { amount } => {
                TrialAnswer::PaymentRequest(harness.payment_request(buyer, amount))
            }
            TrialCall::UserMessage { name, message } => {
                TrialAnswer::UserMessage(harness.user_message(buyer, name, message))
            }
        }
    }

    /// Whether the plugin answered yes: valid, instructions, a reply (or none).
    pub fn is_ok(&self) -> bool {
        match self {
            TrialAnswer::Validate(r) => r.is_ok(),
            TrialAnswer::PaymentRequest(r) => r.is_ok(),
            TrialAnswer::UserMessage(r) => r.is_ok(),
        }
    }

    /// The answer as JSON: `{"valid":true,"grant":{"type":...,"remaining":...}}` or
    /// `{"valid":false,"reason":...,"error":KIND}` for `validate`;
    /// `{"ok":true,"instructions":{...}}` for `payment_request`;
    /// `{"ok":true,"reply":{"name":...,"message":JSON}|null}` for `user_message`;
    /// `{"ok":false,"reason":...,"error":KIND}` when either fails. `error` is
    /// [`error_kind`]: `refused` for the plugin's own refusal.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            TrialAnswer::Validate(Ok(grant)) => serde_json::json!({
                "valid": true,
                "grant": grant.to_json().unwrap_or_else(|| serde_json::json!({
                    "type": "unknown", "kind": grant.kind.0, "remaining": grant.remaining
                })),
            }),
            TrialAnswer::Validate(Err(e)) => error_json("valid", e),
            TrialAnswer::PaymentRequest(Ok(how)) => {
                serde_json::json!({ "ok": true, "instructions": how })
            }
            TrialAnswer::UserMessage(Ok(reply)) => serde_json::json!({
                "ok": true,
                "reply": reply.as_ref().map(|m| serde_json::json!({
                    "name": m.name.as_str(),
                    // The body as JSON when it is JSON, else as text.
                    "message": serde_json::from_str::<serde_json::Value>(m.message.as_str())
                        .unwrap_or_else(|_| serde_json::Value::String(m.message.to_string())),
                })),
            }),
            TrialAnswer::PaymentRequest(Err(e)) | TrialAnswer::UserMessage(Err(e)) => {
                error_json("ok", e)
            }
        }
    }

    /// The answer as one line for a person.
    pub fn to_text(&self) -> String {
        match self {
            TrialAnswer::Validate(Ok(grant)) => match grant.to_json() {
                Some(json) => format!("valid: {json}"),
                None => format!("valid: unknown grant kind {}", grant.kind.0),
            },
            TrialAnswer::Validate(Err(e)) => {
                format!("not valid ({}): {}", error_kind(e), reason_of(e))
            }
            TrialAnswer::PaymentRequest(Ok(how)) => format!(
                "payment instructions: {}",
                serde_json::to_string(how).unwrap_or_default()
            ),
            TrialAnswer::UserMessage(Ok(None)) => "no reply (not this plugin's message)".to_owned(),
            TrialAnswer::UserMessage(Ok(Some(m))) => {
                format!("reply {}: {}", m.name.as_str(), m.message.as_str())
            }
            TrialAnswer::PaymentRequest(Err(e)) | TrialAnswer::UserMessage(Err(e)) => {
                format!("failed ({}): {}", error_kind(e), reason_of(e))
            }
        }
    }
}

/// One `dazaar plugins try`: loads `path`, opens it with `config`, makes `call` for
/// `buyer` and `seller` at `now_ms` under `terms` (overrides of the default entry, see
/// [`terms_with`]).
pub fn try_plugin(
    path: &Path,
    config: &str,
    terms: Option<&serde_json::Value>,
    buyer: Key,
    seller: Key,
    now_ms: u64,
    call: &TrialCall,
) -> Result<TrialAnswer, HarnessError> {
    let mut harness = PluginHarness::open(path, config)?;
    if let Some(terms) = terms {
        harness.set_terms_json(terms)?;
    }
    harness.set_seller(seller);
    harness.set_now_ms(now_ms);
    Ok(TrialAnswer::ask(&harness, buyer, call))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_message_arguments() {
        assert_eq!(
            TrialCall::user_message("lnd-pay-request:{\"amount\":5}"),
            Ok(TrialCall::UserMessage {
                name: "lnd-pay-request".into(),
                message: "{\"amount\":5}".into()
            })
        );
        assert!(TrialCall::user_message("no-colon").is_err());
        assert!(TrialCall::user_message(":{}").is_err());
        assert!(TrialCall::user_message("x:not json").is_err());
    }

    #[test]
    fn answers_as_json() {
        let valid = TrialAnswer::Validate(Ok(Grant::time_ms(5000)));
        assert_eq!(
            valid.to_json(),
            serde_json::json!({"valid":true,"grant":{"type":"time","remaining":5000}})
        );
        let refused = TrialAnswer::Validate(Err(PaymentError::Plugin {
            plugin: "p".into(),
            reason: "not on the list".into(),
        }));
        assert_eq!(
            refused.to_json(),
            serde_json::json!({"valid":false,"reason":"not on the list","error":"refused"})
        );
        assert!(!refused.is_ok());
        let reply = TrialAnswer::UserMessage(Ok(Some(UserMessage {
            name: "pong".into(),
            message: "{\"a\":1}".into(),
        })));
        assert_eq!(
            reply.to_json(),
            serde_json::json!({"ok":true,"reply":{"name":"pong","message":{"a":1}}})
        );
    }
}
