//! The types that cross the boundary between the host and a plugin.
//!
//! Only `abi_stable` types and `#[repr(C)]` structs of them appear here, so a plugin built
//! by another compiler version can be loaded safely. These definitions are frozen for the
//! 1.x series: structs are never changed; the root module and the verifier vtable only
//! grow at the end (see the crate docs, "Evolving the API").

use abi_stable::library::RootModule;
use abi_stable::sabi_trait;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RArc, RBox, ROption, RResult, RSlice, RStr, RString, RVec};
use abi_stable::{declare_root_module_statics, StableAbi};

/// The API version this crate defines, as the loader compares it: plugins with the same
/// major version load; a host accepts plugins built against an older or newer minor.
pub const API_VERSION: ApiVersion = ApiVersion { major: 1, minor: 3 };

/// [`API_VERSION`] as the `major.minor.patch` text recorded in every plugin's header.
pub const API_VERSION_STRING: &str = "1.3.0";

/// The name every Dazaar payment plugin's root module carries.
pub const ROOT_MODULE_NAME: &str = "dazaar_payment_plugin";

/// A 32-byte public key as it crosses the boundary (a C struct, so it is passed by value
/// safely).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyBytes {
    /// The key.
    pub bytes: [u8; 32],
}

impl From<[u8; 32]> for KeyBytes {
    fn from(bytes: [u8; 32]) -> Self {
        KeyBytes { bytes }
    }
}

/// A plugin API version.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiVersion {
    /// Incompatible changes bump this.
    pub major: u16,
    /// Additions (new functions at the end of the module or vtable) bump this.
    pub minor: u16,
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What a plugin says about itself.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// Short name, also the file stem (`dazaar_<name>`): `free`, `ledger`, `lnd`.
    pub name: RString,
    /// The plugin's own version.
    pub version: RString,
    /// Card `method` names it serves (compared case-insensitively), e.g. `lightning`.
    pub methods: RVec<RString>,
    /// Card currencies it serves; empty means any.
    pub currencies: RVec<RString>,
}

/// One card payment entry, as the host hands it to a plugin.
///
/// Numbers stay text, as on the card (`amount` and `interval` may be strings or numbers
/// there). Fields the host does not know travel in `extra_json`.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct PaymentTerms {
    /// Card `method`, e.g. `Lightning`.
    pub method: RString,
    /// Card `currency`, e.g. `SATS`.
    pub currency: RString,
    /// Card `amount`.
    pub amount: RString,
    /// Card `unit`: `seconds`, `minutes`, `hours`, `bytes`, `kilobytes`, `megabytes`,
    /// `gigabytes` or `once` (see [`Unit`](crate::pricing::Unit)).
    pub unit: RString,
    /// Card `interval` (ignored, possibly empty, for `once`).
    pub interval: RString,
    /// Card `payTo`, if any.
    pub pay_to: ROption<RString>,
    /// Card `minSeconds` (0 when absent).
    pub min_seconds: f64,
    /// Card `paymentDelay` in milliseconds (0 when absent).
    pub payment_delay_ms: u64,
    /// Any other card fields, as a JSON object (`{}` when none).
    pub extra_json: RString,
}

/// The kind of access a successful validation grants. A wrapped integer rather than an
/// enum so that a later API can add kinds without breaking the layout.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrantKind(pub u8);

impl GrantKind {
    /// Access without a clock.
    pub const FREE: GrantKind = GrantKind(0);
    /// `remaining` is milliseconds of access.
    pub const TIME: GrantKind = GrantKind(1);
    /// `remaining` is the bytes of data all the buyer's payments bought (the allowance,
    /// not what is left: a plugin does not know what was sent; the host meters the bytes
    /// it uploads and subtracts them).
    pub const BYTES: GrantKind = GrantKind(2);
    /// Permanent access bought with a one-time payment (`remaining` is 0). Added without
    /// an API version change: a host that predates it refuses the unknown kind, so a
    /// buyer is never given access by mistake (fail closed).
    pub const ONCE: GrantKind = GrantKind(3);
}

/// A successful validation: the buyer may have the data.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Grant {
    /// Free, time, bytes or once.
    pub kind: GrantKind,
    /// Milliseconds left, or the bytes bought (0 for free and once).
    pub remaining: u64,
}

impl Grant {
    /// Free access.
    pub const fn free() -> Grant {
        Grant {
            kind: GrantKind::FREE,
            remaining: 0,
        }
    }

    /// Access for `ms` more milliseconds.
    pub const fn time_ms(ms: u64) -> Grant {
        Grant {
            kind: GrantKind::TIME,
            remaining: ms,
        }
    }

    /// Access to `bytes` more bytes.
    pub const fn bytes(bytes: u64) -> Grant {
        Grant {
            kind: GrantKind::BYTES,
            remaining: bytes,
        }
    }

    /// Permanent access: the one-time price is paid.
    pub const fn once() -> Grant {
        Grant {
            kind: GrantKind::ONCE,
            remaining: 0,
        }
    }

    /// The `dazaar/valid` JSON the JS world expects: `{"type":"free"}`,
    /// `{"type":"time","remaining":ms}`, `{"type":"bytes","remaining":n}` or
    /// `{"type":"once"}` (no `remaining`: access does not run out; a JS buyer treats an
    /// unknown type as valid info to show). For bytes the host sends the bytes left after
    /// metering, not the plugin's allowance. `None` for a kind this version does not know.
    pub fn to_json(&self) -> Option<serde_json::Value> {
        match self.kind {
            GrantKind::FREE => Some(serde_json::json!({"type": "free"})),
            GrantKind::TIME => {
                Some(serde_json::json!({"type": "time", "remaining": self.remaining}))
            }
            GrantKind::BYTES => {
                Some(serde_json::json!({"type": "bytes", "remaining": self.remaining}))
            }
            GrantKind::ONCE => Some(serde_json::json!({"type": "once"})),
            _ => None,
        }
    }
}

/// A `dazaar/user-message`: JSON `{"name": ..., "message": ...}` on the wire; here the
/// name and the message (JSON text) separately.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct UserMessage {
    /// The message name, e.g. `lnd-pay-request`.
    pub name: RString,
    /// The message body as JSON text.
    pub message: RString,
}

/// One opened verifier: the plugin's answer to "may this buyer have the data?" and the
/// payment-request exchange. Implemented by the [`export_payment_plugin!`](crate::export_payment_plugin)
/// macro's wrapper; plugin authors implement [`PaymentPlugin`](crate::PaymentPlugin).
///
/// Every method returns `RErr(reason)` for "not valid / not possible", and never panics
/// across the boundary.
#[sabi_trait]
pub trait Verifier: Send + Sync {
    /// Seller side: whether `buyer` may have the product sold under `seller` by `terms`,
    /// at `now_ms` (ms since the Unix epoch).
    fn validate(
        &self,
        buyer: KeyBytes,
        seller: KeyBytes,
        terms: &PaymentTerms,
        now_ms: u64,
    ) -> RResult<Grant, RString>;

    /// A `dazaar/user-message` from the peer. The seller's plugin answers a buyer's
    /// request (e.g. `lnd-pay-request` → `lnd-invoice`); `RNone` means "not mine".
    fn user_message(
        &self,
        buyer: KeyBytes,
        seller: KeyBytes,
        terms: &PaymentTerms,
        message: &UserMessage,
    ) -> RResult<ROption<UserMessage>, RString>;

    /// Buyer side: how to pay `amount` (text, in the card's currency) for `seller`'s
    /// product: JSON [`PaymentInstructions`](crate::PaymentInstructions).
    #[sabi(last_prefix_field)]
    fn payment_request(
        &self,
        buyer: KeyBytes,
        seller: KeyBytes,
        terms: &PaymentTerms,
        amount: RStr<'_>,
    ) -> RResult<RString, RString>;
}

/// An opened verifier as it crosses the boundary.
pub type VerifierBox = Verifier_TO<'static, RBox<()>>;

/// Where a plugin's log events go in the host: `level` is 1 error, 2 warn, 3 info,
/// 4 debug, 5 trace; `target` the plugin's module path; `message` the event's message
/// and fields as text. The host's function never panics and bounds what it keeps.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct LogSink {
    /// Called once per event.
    pub log: extern "C" fn(level: u8, target: RStr<'_>, message: RStr<'_>),
}

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogSink")
    }
}

/// (1.3) A key-value store the host keeps for one plugin and product, in the seller's
/// state database: what a plugin must not lose on a restart (an invoice index checkpoint,
/// a history cursor, payments a webhook delivered). A value written is committed when
/// `put` returns. Keys are at most [`MAX_STATE_KEY`] bytes, values at most
/// [`MAX_STATE_VALUE`]; the host refuses larger ones. Errors are reasons as text (the
/// database unreachable, a limit): a plugin then keeps working from what it holds.
#[sabi_trait]
pub trait PluginState: Send + Sync + Clone {
    /// The value under `key`, if any.
    fn get(&self, key: RStr<'_>) -> RResult<ROption<RVec<u8>>, RString>;

    /// Sets `key` to `value`.
    fn put(&self, key: RStr<'_>, value: RSlice<'_, u8>) -> RResult<(), RString>;

    /// Removes `key` (nothing when absent).
    #[sabi(last_prefix_field)]
    fn delete(&self, key: RStr<'_>) -> RResult<(), RString>;
}

/// A [`PluginState`] as it crosses the boundary.
pub type StateBox = PluginState_TO<'static, RArc<()>>;

/// The longest key a [`PluginState`] takes (bytes).
pub const MAX_STATE_KEY: usize = 256;

/// The largest value a [`PluginState`] takes (bytes).
pub const MAX_STATE_VALUE: usize = 1024 * 1024;

/// The root module every plugin exports (API 1.3).
///
/// The first three fields are the fixed prefix of the 1.x series. Fields after
/// `open` were added in later minor versions: their accessors on
/// [`PaymentPluginMod_Ref`] return `Option`, `None` for a plugin built before them.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PaymentPluginMod_Ref)))]
#[sabi(missing_field(option))]
pub struct PaymentPluginMod {
    /// The API version the plugin was built against.
    pub api_version: extern "C" fn() -> ApiVersion,
    /// Name, version, methods and currencies.
    pub describe: extern "C" fn() -> RResult<PluginInfo, RString>,
    /// Opens a verifier from the plugin's own TOML table (as text).
    #[sabi(last_prefix_field)]
    pub open: extern "C" fn(config: RStr<'_>) -> RResult<VerifierBox, RString>,
    /// (1.1) Checks the plugin's TOML table without opening anything (no network).
    pub check_config: extern "C" fn(config: RStr<'_>) -> RResult<(), RString>,
    /// (1.2) Sends the plugin's log events at `max_level` (1..=5, 0 off) and above to the
    /// host's `sink`, so they appear in the host's log. A plugin's `tracing` is its own
    /// copy, separate from the host's; without this its events reach only its own
    /// `log_file`, if any. Called once after loading; calling again replaces the sink.
    pub set_log_sink: extern "C" fn(sink: LogSink, max_level: u8),
    /// (1.3) Opens a verifier like `open`, with the host's [`PluginState`] for this plugin
    /// and product. A host uses it when the plugin has it; a plugin built before 1.3 is
    /// opened with `open` and keeps no state.
    pub open_with_state:
        extern "C" fn(config: RStr<'_>, state: StateBox) -> RResult<VerifierBox, RString>,
}

impl RootModule for PaymentPluginMod_Ref {
    declare_root_module_statics! {PaymentPluginMod_Ref}
    const BASE_NAME: &'static str = ROOT_MODULE_NAME;
    const NAME: &'static str = ROOT_MODULE_NAME;
    const VERSION_STRINGS: VersionStrings = VersionStrings::new(API_VERSION_STRING);
}
