//! Payment plugins: loading, the registry by card method, and fail-closed validation.
//!
//! ```text
//! PluginRegistry::scan_dir(plugin_dir)         load every library, record refusals
//!   .load_named(dir, "ledger") / .get("ledger") / .for_entry(method, currency)
//! PluginRegistry::with_search_path(dirs)       where a plugin not in the named dir is
//!                                              looked for next (`locate`)
//! LoadedPlugin::open(config_toml, CallLimits)  -> Arc<OpenedVerifier> (own call threads)
//! open_entry(&mut registry, dir, &PaymentSpec { plugin, method, price, config }, limits)
//!                                              -> PaymentEntry: the card method (given, else
//!                                              the plugin's first), checked to be served
//! PaymentGate::new(vec![entry], revalidate)
//!   .check(buyer, seller, ip, fresh, Now::system()).await -> Validation
//!                                               seller, for a peer: cached, admission
//!                                               control for strangers, fail closed
//!   .answer_message(buyer, seller, ip, &mut budget, &msg, now).await
//!                                               seller answers a buyer's request
//!   .validate(buyer, seller) / .validate_at(.., now) / .user_message(..) the same for
//!                                               trusted callers, blocking
//! OpenedVerifier::payment_request(..)           buyer side: how to pay
//! BuyerWallet::new(plugins).payment_request(buyer, seller, &card.payment, None)
//!                                               picks a plugin for the card, asks it
//!   .pay(buyer, seller, &card.payment, None, ask_seller) -> PaymentReport
//! PluginHarness::open(path, config)            one library, a virtual clock: validate /
//!   .advance(d) / .validate(buyer)             payment_request / user_message (`plugins
//!                                              try`, the test kit dazaar-plugin-kit)
//! run_conformance(path, &ConformanceOptions)   the `plugins conformance` battery
//! scaffold_plugin(name, dir, api_path)         `plugins new`: a crate from host/templates
//! ```
//!
//! From `dazaar.toml`: `Settings::payment_gate(&settings.sell[i], &mut registry, limits)`
//! and `Settings::buyer_wallet(&mut registry, limits)` (in [`crate::config`]).
//!
//! Every plugin call runs on the verifier's own bounded thread pool with a timeout, in one
//! of two lanes: buyers that were valid first, strangers in a bounded, shed-when-full
//! share (see `pool`). A refusal makes the buyer invalid with the plugin's reason; an
//! error, a panic (caught inside the plugin) or a timeout makes it invalid with a short
//! public text, the detail going to the log; the host carries on. What strangers can make
//! the gate do is bounded by [`GateLimits`] (see `gate`).

mod admission;
mod buyer;
mod conformance;
mod gate;
mod harness;
mod loader;
mod plugin_state;
mod pool;
mod registry;
mod scaffold;
mod setup;
mod wire;

pub use admission::{GateLimits, RateLimit, TokenBucket};

pub use buyer::{BuyerPlugin, BuyerWallet, PayError, PayTarget, PaymentChoice, PaymentReport};
pub use dazaar_plugin_api::{
    unavailable, ApiVersion, Grant, GrantKind, Key, KeyBytes, PaymentInstructions, PaymentTerms,
    UserMessage, API_VERSION, UNAVAILABLE_PREFIX,
};
pub use harness::{
    default_terms, error_kind, terms_with, try_plugin, HarnessError, PluginHarness, TrialAnswer,
    TrialCall, HARNESS_SELLER, HARNESS_START_MS,
};
pub(crate) use loader::is_plugin_name;
pub use loader::{plugin_file_name, LoadError, LoadedPlugin};

pub use crate::card::{terms_from_card, terms_to_card};
pub use conformance::{
    check_names, child_line, report_from_child, run_conformance, run_conformance_reporting,
    CheckResult, CheckStatus, ConformanceOptions, ConformanceReport, MARKER_PLACEHOLDER,
};
pub use dazaar_plugin_api::{ANY_METHOD, HOST_DESCRIBE_MESSAGE, HOST_MESSAGE_PREFIX};
pub use gate::{
    Admission, AdmittedCall, GateStats, MessageBudget, MessageRefusal, Now, PaymentEntry,
    PaymentGate, Validation, REFUSED_MESSAGE,
};
pub use plugin_state::{state_box, StateScope};
pub use pool::CallLimits;
pub use registry::{
    now_ms, LoadFailure, OpenedVerifier, PaymentError, PluginRegistry, PUBLIC_BUSY,
    PUBLIC_UNAVAILABLE, SYSTEM_PLUGIN_DIR,
};
pub use scaffold::{plugin_crate_files, scaffold_plugin, ScaffoldError};
pub use setup::{card_entry, open_entry, terms_for, PaymentSpec, SetupError};
pub use wire::{encode_user_message, parse_user_message, WireError, MAX_USER_MESSAGE};
