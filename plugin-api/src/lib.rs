//! The stable ABI between the `dazaar` host and its payment verifier plugins.
//!
//! A plugin is a `cdylib` that exports one root module, [`PaymentPluginMod`], with
//! [`export_payment_plugin!`]. The author implements [`PaymentPlugin`], a plain Rust trait;
//! the macro writes the module and wraps every entry in `catch_unwind`, so a panic becomes
//! an error (the buyer is not valid) instead of unwinding into the host.
//!
//! Also here, for plugins and host alike:
//! - [`pricing`]: the price-to-time rules of `payment-tracker@0.1.0` ([`Rate`],
//!   [`Payment`]) and the data and one-time rules beside them ([`Price`], [`Unit`]), so
//!   every plugin reports payments, agrees on what they bought, and answers `validate`
//!   the same way ([`Price::grant`], [`Refusal`]);
//! - [`ledger`]: ledger lines (payments recorded by hand), read and written the same
//!   way by the ledger plugin and the host;
//! - [`memo`]: the memo binding a payment to a buyer, `dazaar: <seller> <buyer>`;
//! - [`settings`]: reading a plugin's config ([`expand_home`]; with the `logging`
//!   feature, `logging::LogSettings` for `log_file` / `log_level`);
//! - [`backoff`]: capped exponential waits between retries of a failing backend.
//!
//! # Versions
//!
//! A plugin records the API version it was built against ([`API_VERSION_STRING`]) in its
//! library header. The host loads plugins of the same major version, older or newer minor.
//!
//! # Evolving the API
//!
//! The root module and the [`Verifier`] vtable are abi_stable *prefix types*: a fixed
//! prefix (up to the field marked `#[sabi(last_prefix_field)]`) followed by fields added
//! in later minor versions. To add a function without breaking built plugins:
//!
//! 1. Copy the current [`PaymentPluginMod`] into [`frozen`] as `v1_<minor>` (same type and
//!    field names), so a test plugin can still be built the old way.
//! 2. Append the new field at the end of [`PaymentPluginMod`] (never before or between
//!    existing fields, never moving `last_prefix_field`), with a doc line saying the
//!    version that added it. Its accessor on [`PaymentPluginMod_Ref`] returns `Option`:
//!    `None` for plugins built before it; the host must handle that ("this plugin is too
//!    old for X").
//! 3. Bump [`API_VERSION`] / [`API_VERSION_STRING`] minor, and fill the field in
//!    `__private::module`.
//!
//! New [`Verifier`] methods go at the end of the trait, after the method marked
//! `#[sabi(last_prefix_field)]`, following the same three steps. The host must only call
//! such a method on plugins whose `api_version()` is at least the version that added it
//! (the loader records it), since an older plugin's vtable does not have it. Structs passed by value
//! ([`PluginInfo`], [`PaymentTerms`], [`Grant`], ...) are frozen: add a new struct and a
//! new function instead of changing one. Removing or reordering anything, or changing a
//! type, is a new major version, which the host refuses with one sentence.
//!
//! abi_stable's own loader (`RootModule::load_from_file`, `init_root_module`) refuses a
//! library whose prefix type has *fewer* fields than the host's; the host's loader accepts
//! that case after checking the library's layout is a prefix of its own (see the host's
//! `payments` module).
#![allow(non_camel_case_types)]
// The abi_stable derive and sabi_trait macros write impls inside constants.
#![allow(non_local_definitions)]

pub mod abi;
pub mod backoff;
pub mod frozen;
pub mod ledger;
#[cfg(feature = "logging")]
pub mod logging;
pub mod memo;
pub mod plugin;
pub mod pricing;
pub mod settings;

pub use abi::{
    ApiVersion, Grant, GrantKind, KeyBytes, LogSink, PaymentPluginMod, PaymentPluginMod_Ref,
    PaymentTerms, PluginInfo, PluginState, PluginState_TO, StateBox, UserMessage, Verifier,
    VerifierBox, Verifier_TO, API_VERSION, API_VERSION_STRING, MAX_STATE_KEY, MAX_STATE_VALUE,
    ROOT_MODULE_NAME,
};
pub use backoff::Backoff;
pub use ledger::{
    ledger_lines, ledger_view_key, parse_ledger_view_key, LedgerLine, LEDGER_VIEW_PREFIX,
    RESERVED_KEY_PREFIX,
};
pub use memo::{parse_key, parse_payment_memo, payment_memo, Key};
#[doc(hidden)]
pub use plugin::__private;
pub use plugin::{
    guard, Description, OutgoingMessage, PaymentInstructions, PaymentPlugin, PluginStore, Request,
};
pub use pricing::{
    DataRate, DataUnit, OncePrice, Payment, Price, PricingError, Rate, Refusal, TimeUnit, Unit,
};
pub use settings::{expand_home, HomeNotSet};

/// The longest prefix of `text` that is at most `max` bytes and ends on a character
/// boundary: how host and plugins bound the text they pass on or log.
pub fn str_prefix(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// How an error reason starts when it reports that the payment could not be checked (a
/// backend that could not be reached, an answer that could not be read, a timeout), as
/// opposed to a refusal. See [`unavailable`].
pub const UNAVAILABLE_PREFIX: &str = "unavailable: ";

/// An error reason for a failed check: `Err(unavailable(format!("LND: {status}")))`.
///
/// The host logs the detail and tells the peer only that the payment check is
/// unavailable, so backend addresses and error texts never reach strangers. An error
/// reason without this mark is a refusal ("no payment recorded for this buyer") and is
/// sent to the buyer as it is. A plain text convention: no ABI change, and a host that
/// predates it shows the reason with the prefix.
pub fn unavailable(detail: impl std::fmt::Display) -> String {
    format!("{UNAVAILABLE_PREFIX}{detail}")
}

/// The card method a plugin lists (besides its default ones) to say that it serves
/// whatever method the seller names, its verifier deciding at run time (the `exec`
/// plugin, which runs a program of the seller's). Only a seller's entry uses it: a
/// buyer's host never picks a plugin for a card by this wildcard.
pub const ANY_METHOD: &str = "*";

/// The `user_message` names that start with this are the host's own calls to a plugin,
/// never a peer's (the host drops peers' messages with such names).
pub const HOST_MESSAGE_PREFIX: &str = "dazaar-host/";

/// The host's question to an opened verifier of a plugin that lists [`ANY_METHOD`]:
/// which card methods and currencies do you serve? (a `user_message` with this name and
/// the body `{}`, buyer and seller keys zero). A plugin that knows answers with a reply of
/// the same name and the body `{"methods":[...],"currencies":[...]}` (methods first the
/// default; no currencies: any); `None` (or an error) leaves the card method to the sell
/// entry. A plain convention on the existing ABI.
pub const HOST_DESCRIBE_MESSAGE: &str = "dazaar-host/describe";

#[cfg(test)]
mod version_tests {
    /// The crate is published under the API version it defines: `dazaar-plugin-api =
    /// "1.3"` is "plugin API 1.3".
    #[test]
    fn the_crate_version_is_the_api_version() {
        assert_eq!(env!("CARGO_PKG_VERSION"), super::API_VERSION_STRING);
        let api = super::API_VERSION;
        assert!(super::API_VERSION_STRING.starts_with(&format!("{}.{}.", api.major, api.minor)));
    }
}

#[cfg(test)]
mod str_prefix_tests {
    use super::str_prefix;

    #[test]
    fn cuts_on_character_boundaries() {
        assert_eq!(str_prefix("abc", 10), "abc");
        assert_eq!(str_prefix("abc", 2), "ab");
        assert_eq!(str_prefix("aé", 2), "a"); // é is two bytes
        assert_eq!(str_prefix("aé", 3), "aé");
        assert_eq!(str_prefix("ナ", 2), "");
        assert_eq!(str_prefix("", 0), "");
    }
}
