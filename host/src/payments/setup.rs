//! The one path from "sell with plugin P at this price" to a payment entry: which card
//! method the entry has, whether the plugin serves it, whether the price is one the
//! pricing rules understand, and the opened verifier. `dazaar.toml`'s `[[sell.payment]]`,
//! `dazaar sell --payment`, `dazaar card` and `dazaar demo` all come through here, so the
//! card a seller publishes names exactly the method its gate validates.

use std::path::Path;
use std::sync::Arc;

use dazaar_plugin_api::pricing::Price;
use dazaar_plugin_api::PaymentTerms;

use super::gate::PaymentEntry;
use super::loader::{LoadError, LoadedPlugin};
use super::plugin_state::StateScope;
use super::pool::CallLimits;
use super::registry::{PaymentError, PluginRegistry};

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

/// The method a plugin lists (besides its default ones) to say that it serves whatever
/// card method the seller names: its verifier decides at run time (the `exec` plugin runs
/// a program of the seller's). Only a seller's entry uses it; a buyer's host never picks
/// such a plugin for a card by this wildcard.
pub const ANY_METHOD: &str = "*";

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

/// Loads `spec.plugin` from `plugin_dir` (once per registry), settles its card entry with
/// [`terms_for`] and opens a verifier with `limits`.
pub fn open_entry(
    registry: &mut PluginRegistry,
    plugin_dir: &Path,
    spec: &PaymentSpec<'_>,
    limits: CallLimits,
) -> Result<PaymentEntry, SetupError> {
    let plugin = registry.load_named(plugin_dir, spec.plugin)?;
    let terms = terms_for(&plugin, spec.method, spec.price)?;
    let verifier = plugin.open_with_state(spec.config, limits, spec.state)?;
    Ok(PaymentEntry {
        terms: Arc::new(terms),
        verifier,
    })
}

/// The card entry of `spec` without opening the plugin (for `dazaar card`): the same
/// method and checks as [`open_entry`].
pub fn card_entry(
    registry: &mut PluginRegistry,
    plugin_dir: &Path,
    spec: &PaymentSpec<'_>,
) -> Result<PaymentTerms, SetupError> {
    let plugin = registry.load_named(plugin_dir, spec.plugin)?;
    terms_for(&plugin, spec.method, spec.price)
}
