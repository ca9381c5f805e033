//! Payment plugins: loading, the registry by card method, and fail-closed validation.
//!
//! ```text
//! PluginRegistry::scan_dir(plugin_dir)         load every library, record refusals
//!   .load_named(dir, "ledger") / .get("ledger") / .for_entry(method, currency)
//! LoadedPlugin::open(config_toml, CallLimits)  -> Arc<OpenedVerifier> (own call threads)
//! PaymentGate::new(vec![PaymentEntry { terms, verifier }], revalidate)
//!   .validate(buyer, seller) -> Validation      cached, fail closed
//!   .user_message(buyer, seller, &msg)          seller answers a buyer's request
//! OpenedVerifier::payment_request(..)           buyer side: how to pay
//! BuyerWallet::new(plugins).payment_request(buyer, seller, &card["payment"], None)
//!                                               picks a plugin for the card, asks it
//! ```
//!
//! From `dazaar.toml`: `Settings::payment_gate(&settings.sell[i], &mut registry, limits)`
//! and `Settings::buyer_wallet(&mut registry, limits)` (in [`crate::config`]).
//!
//! Every plugin call runs on the verifier's own bounded thread pool with a timeout; an
//! error, a panic (caught inside the plugin) or a timeout makes the buyer invalid with the
//! reason, and the host carries on.

mod buyer;
mod loader;
mod pool;
mod registry;
mod wire;

pub use buyer::{BuyerPlugin, BuyerWallet, PaymentChoice};
pub use dazaar_plugin_api::{
    ApiVersion, Grant, GrantKind, Key, KeyBytes, PaymentInstructions, PaymentTerms, UserMessage,
    API_VERSION,
};
pub(crate) use loader::is_plugin_name;
pub use loader::{plugin_file_name, LoadError, LoadedPlugin};

pub use pool::CallLimits;
pub use registry::{
    now_ms, LoadFailure, OpenedVerifier, PaymentEntry, PaymentError, PaymentGate, PluginRegistry,
    Validation,
};
pub use wire::{
    encode_user_message, parse_user_message, terms_from_card, terms_to_card, WireError,
    MAX_USER_MESSAGE,
};
