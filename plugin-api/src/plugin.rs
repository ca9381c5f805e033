//! The plain Rust side of a plugin: the trait an author implements, and the glue the
//! [`export_payment_plugin!`](crate::export_payment_plugin) macro uses to turn it into the
//! exported module, catching every panic at the boundary.

use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RErr, RNone, ROk, ROption, RResult, RSome, RStr, RString, RVec};
use serde::{Deserialize, Serialize};

use crate::abi::{
    ApiVersion, Grant, KeyBytes, PaymentTerms, PluginInfo, UserMessage, Verifier, VerifierBox,
    Verifier_TO, API_VERSION,
};
use crate::memo::Key;
use crate::pricing::{Price, PricingError, Rate, Unit};

/// What a plugin says about itself, in plain Rust types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// Short name, also the file stem: `dazaar_<name>`.
    pub name: &'static str,
    /// The plugin's own version (usually `env!("CARGO_PKG_VERSION")`).
    pub version: &'static str,
    /// Card `method` names served (compared case-insensitively).
    pub methods: &'static [&'static str],
    /// Card currencies served; empty means any.
    pub currencies: &'static [&'static str],
}

impl From<&Description> for PluginInfo {
    fn from(d: &Description) -> PluginInfo {
        let list = |items: &[&str]| items.iter().map(|s| RString::from(*s)).collect::<RVec<_>>();
        PluginInfo {
            name: d.name.into(),
            version: d.version.into(),
            methods: list(d.methods),
            currencies: list(d.currencies),
        }
    }
}

/// Who is asking, about what: the buyer, the seller (the product's Noise key) and the card
/// payment entry.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The buyer's public key.
    pub buyer: Key,
    /// The seller's public key for this product.
    pub seller: Key,
    /// The card payment entry.
    pub terms: &'a PaymentTerms,
}

impl Request<'_> {
    /// The memo that binds a payment to this buyer: `dazaar: <seller> <buyer>`.
    pub fn memo(&self) -> String {
        crate::memo::payment_memo(&self.seller, &self.buyer)
    }
}

impl PaymentTerms {
    /// The price under its unit's rule, with `minSeconds` and `paymentDelay` applied to a
    /// time price. Plugins answer `validate` with [`Price::grant`], so all agree.
    pub fn price(&self) -> Result<Price, PricingError> {
        match self.unit.parse::<Unit>()? {
            Unit::Time(_) => self.rate().map(Price::Time),
            _ => Price::from_card(&self.amount, &self.unit, &self.interval),
        }
    }

    /// The price as a draining rate, with `minSeconds` and `paymentDelay` applied; an
    /// error for a card priced by data or once.
    pub fn rate(&self) -> Result<Rate, PricingError> {
        if !matches!(self.unit.parse::<Unit>()?, Unit::Time(_)) {
            return Err(PricingError::NotTime(self.unit.to_string()));
        }
        Ok(Rate::from_card(&self.amount, &self.unit, &self.interval)?
            .with_min_seconds(self.min_seconds)?
            .with_payment_delay_ms(self.payment_delay_ms))
    }

    /// Builds terms from the common fields; `pay_to`, `min_seconds`, `payment_delay_ms`
    /// and `extra_json` start empty.
    pub fn new(method: &str, currency: &str, amount: &str, unit: &str, interval: &str) -> Self {
        PaymentTerms {
            method: method.into(),
            currency: currency.into(),
            amount: amount.into(),
            unit: unit.into(),
            interval: interval.into(),
            pay_to: RNone,
            min_seconds: 0.0,
            payment_delay_ms: 0,
            extra_json: "{}".into(),
        }
    }
}

/// A message a buyer's host should send to the seller as `dazaar/user-message`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutgoingMessage {
    /// Message name, e.g. `lnd-pay-request`.
    pub name: String,
    /// Message body.
    pub message: serde_json::Value,
}

/// Buyer side: how to pay. Every field is optional; a plugin fills in what applies.
/// Readers ignore fields they do not know, so later API versions can add some.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PaymentInstructions {
    /// The memo the payment must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memo: Option<String>,
    /// Where to pay (an account, an address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pay_to: Option<String>,
    /// How much, in `currency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    /// The currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// An invoice to pay (e.g. a BOLT 11 request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice: Option<String>,
    /// A web page that takes the payment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkout_url: Option<String>,
    /// A message to send to the seller first (its answer arrives as a user message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<OutgoingMessage>,
    /// Free text for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Set when the plugin has already paid (it holds the buyer's wallet): the payment's
    /// id, e.g. a transaction id. The other fields then say what was paid, not what to
    /// pay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid: Option<String>,
}

/// The trait a plugin author implements. Plain Rust: errors are `String` reasons, and a
/// panic anywhere becomes an error at the boundary (the buyer is then not valid).
pub trait PaymentPlugin: Sized + Send + Sync + 'static {
    /// Name, version, methods, currencies.
    fn describe() -> Description;

    /// Opens a verifier from the plugin's own TOML table (as text).
    fn open(config: &str) -> Result<Self, String>;

    /// (1.3) Opens a verifier with the host's state store for this plugin and product
    /// (see [`PluginStore`]). The default ignores the store and calls [`open`](Self::open).
    fn open_with_state(config: &str, state: PluginStore) -> Result<Self, String> {
        let _ = state;
        Self::open(config)
    }

    /// Checks the TOML table without side effects. The default parses nothing and accepts.
    fn check_config(config: &str) -> Result<(), String> {
        let _ = config;
        Ok(())
    }

    /// Seller side: may `req.buyer` have the data now? `Err` is the reason it may not.
    fn validate(&self, req: &Request<'_>, now_ms: u64) -> Result<Grant, String>;

    /// A user message from the peer; return a reply to send, or `None` if not handled.
    fn user_message(
        &self,
        req: &Request<'_>,
        name: &str,
        message: &str,
    ) -> Result<Option<(String, String)>, String> {
        let _ = (req, name, message);
        Ok(None)
    }

    /// Buyer side: how to pay `amount` for this product.
    fn payment_request(
        &self,
        req: &Request<'_>,
        amount: &str,
    ) -> Result<PaymentInstructions, String> {
        let _ = (req, amount);
        Err(format!(
            "the {} plugin takes no payments from buyers",
            Self::describe().name
        ))
    }
}

/// The host's key-value store for one plugin and product (API 1.3), as a plugin uses it:
/// committed on return, bounded keys and values ([`crate::MAX_STATE_KEY`],
/// [`crate::MAX_STATE_VALUE`]), errors as reasons. Cheap to clone.
#[derive(Clone)]
pub struct PluginStore {
    inner: crate::abi::StateBox,
}

impl std::fmt::Debug for PluginStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PluginStore")
    }
}

impl PluginStore {
    /// Wraps the store the host passed.
    pub fn new(inner: crate::abi::StateBox) -> PluginStore {
        PluginStore { inner }
    }

    /// The value under `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.inner
            .get(RStr::from_str(key))
            .into_result()
            .map(|v| v.into_option().map(RVec::into_vec))
            .map_err(RString::into_string)
    }

    /// Sets `key` to `value`.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.inner
            .put(RStr::from_str(key), value.into())
            .into_result()
            .map_err(RString::into_string)
    }

    /// Removes `key`.
    pub fn delete(&self, key: &str) -> Result<(), String> {
        self.inner
            .delete(RStr::from_str(key))
            .into_result()
            .map_err(RString::into_string)
    }
}

/// Runs `f`, turning a panic into an error reason.
pub fn guard<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> RResult<T, RString> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => ROk(v),
        Ok(Err(reason)) => RErr(reason.into()),
        Err(payload) => {
            let detail = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            RErr(format!("plugin panicked in {what}: {detail}").into())
        }
    }
}

/// Wraps an author's plugin as the ABI [`Verifier`].
struct Guarded<P>(P);

impl<P: PaymentPlugin> Verifier for Guarded<P> {
    fn validate(
        &self,
        buyer: KeyBytes,
        seller: KeyBytes,
        terms: &PaymentTerms,
        now_ms: u64,
    ) -> RResult<Grant, RString> {
        let req = Request {
            buyer: buyer.bytes,
            seller: seller.bytes,
            terms,
        };
        guard("validate", || self.0.validate(&req, now_ms))
    }

    fn user_message(
        &self,
        buyer: KeyBytes,
        seller: KeyBytes,
        terms: &PaymentTerms,
        message: &UserMessage,
    ) -> RResult<ROption<UserMessage>, RString> {
        let req = Request {
            buyer: buyer.bytes,
            seller: seller.bytes,
            terms,
        };
        guard("user_message", || {
            Ok(
                match self.0.user_message(&req, &message.name, &message.message)? {
                    Some((name, message)) => RSome(UserMessage {
                        name: name.into(),
                        message: message.into(),
                    }),
                    None => RNone,
                },
            )
        })
    }

    fn payment_request(
        &self,
        buyer: KeyBytes,
        seller: KeyBytes,
        terms: &PaymentTerms,
        amount: RStr<'_>,
    ) -> RResult<RString, RString> {
        let req = Request {
            buyer: buyer.bytes,
            seller: seller.bytes,
            terms,
        };
        guard("payment_request", || {
            let instructions = self.0.payment_request(&req, amount.as_str())?;
            serde_json::to_string(&instructions)
                .map(RString::from)
                .map_err(|e| format!("cannot encode payment instructions: {e}"))
        })
    }
}

/// Glue used by [`export_payment_plugin!`](crate::export_payment_plugin). Not a stable
/// interface for plugin authors.
#[doc(hidden)]
pub mod __private {
    use super::*;
    use abi_stable::prefix_type::PrefixTypeTrait;

    pub use abi_stable;

    use crate::abi::{PaymentPluginMod, PaymentPluginMod_Ref};
    use crate::frozen::v1_0;

    extern "C" fn api_version() -> ApiVersion {
        API_VERSION
    }

    extern "C" fn api_version_1_0() -> ApiVersion {
        ApiVersion { major: 1, minor: 0 }
    }

    extern "C" fn describe<P: PaymentPlugin>() -> RResult<PluginInfo, RString> {
        guard("describe", || Ok(PluginInfo::from(&P::describe())))
    }

    extern "C" fn open<P: PaymentPlugin>(config: RStr<'_>) -> RResult<VerifierBox, RString> {
        guard("open", || {
            let plugin = P::open(config.as_str())?;
            Ok(Verifier_TO::from_value(Guarded(plugin), TD_Opaque))
        })
    }

    extern "C" fn open_with_state<P: PaymentPlugin>(
        config: RStr<'_>,
        state: crate::abi::StateBox,
    ) -> RResult<VerifierBox, RString> {
        guard("open", || {
            let plugin = P::open_with_state(config.as_str(), PluginStore::new(state))?;
            Ok(Verifier_TO::from_value(Guarded(plugin), TD_Opaque))
        })
    }

    extern "C" fn check_config<P: PaymentPlugin>(config: RStr<'_>) -> RResult<(), RString> {
        guard("check_config", || P::check_config(config.as_str()))
    }

    extern "C" fn set_log_sink(sink: crate::abi::LogSink, max_level: u8) {
        // Nothing may unwind into the host.
        let _ = std::panic::catch_unwind(|| {
            #[cfg(feature = "logging")]
            crate::logging::set_host_sink(sink, max_level);
            #[cfg(not(feature = "logging"))]
            let _ = (sink, max_level);
        });
    }

    /// The current root module for plugin `P`.
    pub fn module<P: PaymentPlugin>() -> PaymentPluginMod_Ref {
        PaymentPluginMod {
            api_version,
            describe: describe::<P>,
            open: open::<P>,
            check_config: check_config::<P>,
            set_log_sink,
            open_with_state: open_with_state::<P>,
        }
        .leak_into_prefix()
    }

    /// The root module for plugin `P` as a plugin built against API 1.0 exported it.
    pub fn module_v1_0<P: PaymentPlugin>() -> v1_0::PaymentPluginMod_Ref {
        v1_0::PaymentPluginMod {
            api_version: api_version_1_0,
            describe: describe::<P>,
            open: open::<P>,
        }
        .leak_into_prefix()
    }

    /// The symbol abi_stable 0.11 looks up in a library; checked by a unit test.
    pub const LOADER_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";
}

/// Exports `$plugin` (a type implementing [`PaymentPlugin`]) as a Dazaar payment plugin.
///
/// Put it once in the root of a `cdylib` crate:
/// ```ignore
/// dazaar_plugin_api::export_payment_plugin!(MyPlugin);
/// ```
/// It writes the library header abi_stable's loader looks for, whose module entries call
/// `MyPlugin`'s methods inside `catch_unwind`.
#[macro_export]
macro_rules! export_payment_plugin {
    ($plugin:ty) => {
        // The name is the one abi_stable 0.11's `export_root_module` attribute uses.
        #[no_mangle]
        #[allow(non_upper_case_globals)]
        pub static _1as_0lib_1header_0root_bmodule_bloader:
            $crate::__private::abi_stable::library::LibHeader = {
            extern "C" fn __dazaar_root_module(
            ) -> $crate::__private::abi_stable::library::RootModuleResult {
                $crate::__private::abi_stable::library::__call_root_module_loader(
                    $crate::__private::module::<$plugin>,
                )
            }
            // SAFETY: the constructor returns the root module of type `PaymentPluginMod_Ref`,
            // the type named here.
            unsafe {
                $crate::__private::abi_stable::library::LibHeader::from_constructor::<
                    $crate::PaymentPluginMod_Ref,
                >(
                    __dazaar_root_module,
                    $crate::__private::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_symbol_matches_abi_stable() {
        assert_eq!(
            __private::LOADER_SYMBOL,
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
    }

    #[test]
    fn guard_turns_panics_into_errors() {
        let r: RResult<(), RString> = guard("validate", || panic!("boom"));
        assert_eq!(r, RErr(RString::from("plugin panicked in validate: boom")));
        let r: RResult<u8, RString> = guard("validate", || Err("no".into()));
        assert_eq!(r, RErr(RString::from("no")));
    }

    #[test]
    fn grant_json() {
        assert_eq!(
            Grant::free().to_json(),
            Some(serde_json::json!({"type":"free"}))
        );
        assert_eq!(
            Grant::time_ms(5).to_json(),
            Some(serde_json::json!({"type":"time","remaining":5}))
        );
        assert_eq!(
            Grant::bytes(7).to_json(),
            Some(serde_json::json!({"type":"bytes","remaining":7}))
        );
        assert_eq!(
            Grant::once().to_json(),
            Some(serde_json::json!({"type":"once"}))
        );
        assert_eq!(
            Grant {
                kind: crate::GrantKind(9),
                remaining: 0
            }
            .to_json(),
            None
        );
    }

    #[test]
    fn terms_rate() {
        let mut t = PaymentTerms::new("ledger", "SATS", "10", "seconds", "1");
        t.min_seconds = 2.0;
        let r = t.rate().unwrap();
        assert!((r.rate_per_second() - 10.0).abs() < 1e-12);
        t.unit = "fortnights".into();
        assert!(t.rate().is_err());
        assert!(t.price().is_err());
    }

    #[test]
    fn terms_price_for_each_unit() {
        use crate::pricing::{Payment, Price};
        let pay = [Payment {
            amount: 5.0,
            time_ms: 0,
        }];
        let mut t = PaymentTerms::new("ledger", "SATS", "1", "bytes", "10000");
        assert_eq!(t.price().unwrap().grant(&pay, 1), Ok(Grant::bytes(50_000)));
        assert!(t.rate().is_err(), "a data price is not a rate");
        t.unit = "kilobytes".into();
        assert_eq!(
            t.price().unwrap().grant(&pay, 1),
            Ok(Grant::bytes(50_000_000))
        );
        t.unit = "once".into();
        t.interval = "".into();
        assert_eq!(t.price().unwrap().grant(&pay, 1), Ok(Grant::once()));
        t.unit = "seconds".into();
        t.interval = "1".into();
        t.min_seconds = 2.0;
        assert!(matches!(t.price(), Ok(Price::Time(_))));
        assert_eq!(t.price().unwrap().grant(&pay, 0), Ok(Grant::time_ms(3000)));
    }
}
