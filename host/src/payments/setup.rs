//! The one path from "sell with plugin P at this price" to a payment entry: which card
//! method the entry has, whether the plugin serves it, whether the price is one the
//! pricing rules understand, and the opened verifier. `dazaar.toml`'s `[[sell.payment]]`,
//! `dazaar sell --payment`, `dazaar card` and `dazaar demo` all come through here, so the
//! card a seller publishes names exactly the method its gate validates.

use std::path::Path;
use std::sync::Arc;

use dazaar_plugin_api::pricing::Price;
use dazaar_plugin_api::{PaymentTerms, UserMessage, ANY_METHOD, HOST_DESCRIBE_MESSAGE};

use super::gate::PaymentEntry;
use super::loader::{LoadError, LoadedPlugin};
use super::plugin_state::StateScope;
use super::pool::CallLimits;
use super::registry::{OpenedVerifier, PaymentError, PluginRegistry};

/// Why a payment entry cannot be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The plugin library could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The plugin does not list the method (or the currency) of the entry.
    #[error("does not serve method `{method}` with currency `{currency}`")]
    NotServed {
        /// The plugin's name.
        plugin: String,
        /// The entry's method.
        method: String,
        /// The entry's currency.
        currency: String,
    },
    /// The price is not one the pricing rules understand.
    #[error("the price: {0}")]
    Price(String),
    /// The plugin refused its configuration.
    #[error(transparent)]
    Open(#[from] PaymentError),
}

/// One payment entry as a seller states it: the plugin, optionally the card method, the
/// price (its `method` field is ignored: see [`terms_for`]) and the plugin's own TOML.
#[derive(Debug, Clone)]
pub struct PaymentSpec<'a> {
    /// Plugin name (`dazaar_<plugin>` in the plugin directory).
    pub plugin: &'a str,
    /// The card method; `None`: the plugin's first method.
    pub method: Option<&'a str>,
    /// Currency, amount, unit, interval (and `minSeconds`).
    pub price: &'a PaymentTerms,
    /// The plugin's own settings, as TOML text (never logged).
    pub config: &'a str,
    /// Where the plugin keeps its state for this product (API 1.3); `None`: nowhere.
    pub state: Option<&'a StateScope>,
}

/// The card entry of `price` sold through `plugin`: the method is `method` when given,
/// else the plugin's first method other than [`ANY_METHOD`] (the plugin's name only for
/// a plugin that lists none); the plugin must serve that method (a plugin listing
/// [`ANY_METHOD`] serves any) with the entry's currency, and the price must be one
/// [`Price::from_card`] reads.
pub fn terms_for(
    plugin: &LoadedPlugin,
    method: Option<&str>,
    price: &PaymentTerms,
) -> Result<PaymentTerms, SetupError> {
    let mut terms = price.clone();
    let method = method
        .or_else(|| plugin.methods().find(|m| *m != ANY_METHOD))
        .unwrap_or(plugin.name());
    terms.method = method.into();
    let any_method = plugin.methods().any(|m| m == ANY_METHOD);
    if !(plugin.serves(&terms.method, &terms.currency)
        || any_method && plugin.serves(ANY_METHOD, &terms.currency))
    {
        return Err(SetupError::NotServed {
            plugin: plugin.name().to_owned(),
            method: terms.method.to_string(),
            currency: terms.currency.to_string(),
        });
    }
    Price::from_card(&terms.amount, &terms.unit, &terms.interval)
        .map_err(|e| SetupError::Price(e.to_string()))?;
    Ok(terms)
}

/// Whether the card method of `spec` comes from the opened verifier: the plugin lists
/// [`ANY_METHOD`] and the entry names no method.
fn asks_verifier(plugin: &LoadedPlugin, spec: &PaymentSpec<'_>) -> bool {
    spec.method.is_none() && plugin.methods().any(|m| m == ANY_METHOD)
}

/// The most methods or currencies taken from a verifier's answer.
const MAX_DESCRIBED: usize = 32;

/// What an opened verifier says it serves ([`HOST_DESCRIBE_MESSAGE`]): its methods (at
/// least one) and currencies; `None` when it does not say (or fails to).
fn described(verifier: &OpenedVerifier, price: &PaymentTerms) -> Option<(String, Vec<String>)> {
    let ask = UserMessage {
        name: HOST_DESCRIBE_MESSAGE.into(),
        message: "{}".into(),
    };
    let reply = verifier
        .user_message([0; 32], [0; 32], &Arc::new(price.clone()), ask)
        .ok()??;
    if reply.name.as_str() != HOST_DESCRIBE_MESSAGE {
        return None;
    }
    let body: serde_json::Value = serde_json::from_str(reply.message.as_str()).ok()?;
    let list = |key: &str| -> Option<Vec<String>> {
        match body.get(key) {
            None | Some(serde_json::Value::Null) => Some(Vec::new()),
            Some(serde_json::Value::Array(items)) if items.len() <= MAX_DESCRIBED => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .filter(|s| !s.trim().is_empty())
                        .map(str::to_owned)
                })
                .collect(),
            Some(_) => None,
        }
    };
    let method = list("methods")?.into_iter().next()?;
    Some((method, list("currencies")?))
}

/// The card entry of `spec` through the opened `verifier`: [`terms_for`], except that an
/// entry without a method for a plugin listing [`ANY_METHOD`] takes the verifier's first
/// described method, and its currency must be one the verifier describes (if it lists
/// any). A verifier that does not describe leaves the plugin's default method.
fn settle_terms(
    plugin: &LoadedPlugin,
    verifier: &OpenedVerifier,
    spec: &PaymentSpec<'_>,
) -> Result<PaymentTerms, SetupError> {
    if !asks_verifier(plugin, spec) {
        return terms_for(plugin, spec.method, spec.price);
    }
    let Some((method, currencies)) = described(verifier, spec.price) else {
        return terms_for(plugin, None, spec.price);
    };
    let currency = spec.price.currency.as_str();
    if !currencies.is_empty() && !currencies.iter().any(|c| c.eq_ignore_ascii_case(currency)) {
        return Err(SetupError::NotServed {
            plugin: plugin.name().to_owned(),
            method,
            currency: currency.to_owned(),
        });
    }
    terms_for(plugin, Some(&method), spec.price)
}

/// Loads `spec.plugin` from `plugin_dir` (once per registry), opens a verifier with
/// `limits` and settles its card entry with [`terms_for`] (the method from the verifier
/// for a plugin that lists [`ANY_METHOD`], when the entry names none).
pub fn open_entry(
    registry: &mut PluginRegistry,
    plugin_dir: &Path,
    spec: &PaymentSpec<'_>,
    limits: CallLimits,
) -> Result<PaymentEntry, SetupError> {
    let plugin = registry.load_named(plugin_dir, spec.plugin)?;
    if !asks_verifier(&plugin, spec) {
        // Checked before opening: a wrong entry never starts a plugin's backend.
        terms_for(&plugin, spec.method, spec.price)?;
    }
    let verifier = plugin.open_with_state(spec.config, limits, spec.state)?;
    let terms = settle_terms(&plugin, &verifier, spec)?;
    Ok(PaymentEntry {
        terms: Arc::new(terms),
        verifier,
    })
}

/// How long `card_entry` waits for a verifier's description.
const DESCRIBE_LIMITS: CallLimits = CallLimits {
    timeout: std::time::Duration::from_secs(5),
    workers: 1,
    queue: 1,
};

/// The card entry of `spec` (for `dazaar card`): the same method and checks as
/// [`open_entry`]. The plugin is opened only when its verifier names the method (a
/// plugin listing [`ANY_METHOD`], an entry without a method).
pub fn card_entry(
    registry: &mut PluginRegistry,
    plugin_dir: &Path,
    spec: &PaymentSpec<'_>,
) -> Result<PaymentTerms, SetupError> {
    let plugin = registry.load_named(plugin_dir, spec.plugin)?;
    if !asks_verifier(&plugin, spec) {
        return terms_for(&plugin, spec.method, spec.price);
    }
    let verifier = plugin.open(spec.config, DESCRIBE_LIMITS)?;
    settle_terms(&plugin, &verifier, spec)
}
