//! Frozen copies of the root module of earlier API versions.
//!
//! The host never uses these. They exist so that a test plugin can be built exactly as a
//! plugin built against an older `dazaar-plugin-api` was, and the loader can be shown to
//! accept it. When a field is added to [`PaymentPluginMod`](crate::PaymentPluginMod), copy
//! the old definition here first (same type name, same field names and types).

/// The API as released in 1.0: `api_version`, `describe`, `open`; no `check_config`.
pub mod v1_0 {
    use abi_stable::library::RootModule;
    use abi_stable::sabi_types::VersionStrings;
    use abi_stable::std_types::{RResult, RStr, RString};
    use abi_stable::{declare_root_module_statics, StableAbi};

    use crate::abi::{ApiVersion, PluginInfo, VerifierBox, ROOT_MODULE_NAME};

    /// The 1.0 version string.
    pub const API_VERSION_STRING: &str = "1.0.0";

    /// The 1.0 root module.
    #[repr(C)]
    #[derive(StableAbi)]
    #[sabi(kind(Prefix(prefix_ref = PaymentPluginMod_Ref)))]
    #[sabi(missing_field(option))]
    pub struct PaymentPluginMod {
        /// See [`crate::PaymentPluginMod::api_version`].
        pub api_version: extern "C" fn() -> ApiVersion,
        /// See [`crate::PaymentPluginMod::describe`].
        pub describe: extern "C" fn() -> RResult<PluginInfo, RString>,
        /// See [`crate::PaymentPluginMod::open`].
        #[sabi(last_prefix_field)]
        pub open: extern "C" fn(config: RStr<'_>) -> RResult<VerifierBox, RString>,
    }

    impl RootModule for PaymentPluginMod_Ref {
        declare_root_module_statics! {PaymentPluginMod_Ref}
        const BASE_NAME: &'static str = ROOT_MODULE_NAME;
        const NAME: &'static str = ROOT_MODULE_NAME;
        const VERSION_STRINGS: VersionStrings = VersionStrings::new(API_VERSION_STRING);
    }
}

/// The API as released in 1.1: 1.0 plus `check_config`; no `set_log_sink`.
pub mod v1_1 {
    use abi_stable::library::RootModule;
    use abi_stable::sabi_types::VersionStrings;
    use abi_stable::std_types::{RResult, RStr, RString};
    use abi_stable::{declare_root_module_statics, StableAbi};

    use crate::abi::{ApiVersion, PluginInfo, VerifierBox, ROOT_MODULE_NAME};

    /// The 1.1 version string.
    pub const API_VERSION_STRING: &str = "1.1.0";

    /// The 1.1 root module.
    #[repr(C)]
    #[derive(StableAbi)]
    #[sabi(kind(Prefix(prefix_ref = PaymentPluginMod_Ref)))]
    #[sabi(missing_field(option))]
    pub struct PaymentPluginMod {
        /// See [`crate::PaymentPluginMod::api_version`].
        pub api_version: extern "C" fn() -> ApiVersion,
        /// See [`crate::PaymentPluginMod::describe`].
        pub describe: extern "C" fn() -> RResult<PluginInfo, RString>,
        /// See [`crate::PaymentPluginMod::open`].
        #[sabi(last_prefix_field)]
        pub open: extern "C" fn(config: RStr<'_>) -> RResult<VerifierBox, RString>,
        /// See [`crate::PaymentPluginMod::check_config`].
        pub check_config: extern "C" fn(config: RStr<'_>) -> RResult<(), RString>,
    }

    impl RootModule for PaymentPluginMod_Ref {
        declare_root_module_statics! {PaymentPluginMod_Ref}
        const BASE_NAME: &'static str = ROOT_MODULE_NAME;
        const NAME: &'static str = ROOT_MODULE_NAME;
        const VERSION_STRINGS: VersionStrings = VersionStrings::new(API_VERSION_STRING);
    }
}

/// The API as released in 1.2: 1.1 plus `set_log_sink`; no `open_with_state`.
pub mod v1_2 {
    use abi_stable::library::RootModule;
    use abi_stable::sabi_types::VersionStrings;
    use abi_stable::std_types::{RResult, RStr, RString};
    use abi_stable::{declare_root_module_statics, StableAbi};

    use crate::abi::{ApiVersion, LogSink, PluginInfo, VerifierBox, ROOT_MODULE_NAME};

    /// The 1.2 version string.
    pub const API_VERSION_STRING: &str = "1.2.0";

    /// The 1.2 root module.
    #[repr(C)]
    #[derive(StableAbi)]
    #[sabi(kind(Prefix(prefix_ref = PaymentPluginMod_Ref)))]
    #[sabi(missing_field(option))]
    pub struct PaymentPluginMod {
        /// See [`crate::PaymentPluginMod::api_version`].
        pub api_version: extern "C" fn() -> ApiVersion,
        /// See [`crate::PaymentPluginMod::describe`].
        pub describe: extern "C" fn() -> RResult<PluginInfo, RString>,
        /// See [`crate::PaymentPluginMod::open`].
        #[sabi(last_prefix_field)]
        pub open: extern "C" fn(config: RStr<'_>) -> RResult<VerifierBox, RString>,
        /// See [`crate::PaymentPluginMod::check_config`].
        pub check_config: extern "C" fn(config: RStr<'_>) -> RResult<(), RString>,
        /// See [`crate::PaymentPluginMod::set_log_sink`].
        pub set_log_sink: extern "C" fn(sink: LogSink, max_level: u8),
    }

    impl RootModule for PaymentPluginMod_Ref {
        declare_root_module_statics! {PaymentPluginMod_Ref}
        const BASE_NAME: &'static str = ROOT_MODULE_NAME;
        const NAME: &'static str = ROOT_MODULE_NAME;
        const VERSION_STRINGS: VersionStrings = VersionStrings::new(API_VERSION_STRING);
    }
}
