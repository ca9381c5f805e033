//! `dazaar___NAME__`: a Dazaar payment plugin that lets a fixed list of buyers in.
//!
//! Config (the `[sell.payment.config]` table of `dazaar.toml`):
//!
//! ```toml
//! allow = ["<buyer key, 64 hex digits>", ...]   # who may have the data
//! seconds = 3600                                # how long each check grants
//! ```
//!
//! A listed buyer is valid with a time grant of `seconds` (renewed at every
//! revalidation); anyone else is refused with a reason the buyer sees.

use dazaar_plugin_api::{
    export_payment_plugin, parse_key, Description, Grant, Key, PaymentPlugin, Request,
};
use serde::Deserialize;

/// The plugin's settings as written in TOML. `deny_unknown_fields`: a typo in
/// `dazaar.toml` is refused instead of ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    allow: Vec<String>,
    seconds: u64,
}

/// The most buyers the list may hold (every bound is decided, not left to memory).
const MAX_ALLOWED: usize = 100_000;

/// The opened verifier: who is allowed, and for how long each check grants.
#[derive(Debug)]
pub struct AllowList {
    allowed: Vec<Key>,
    grant_ms: u64,
}

impl AllowList {
    /// Reads and checks the settings. Errors never quote the settings' values (a config
    /// may hold secrets; `plugins conformance` checks this).
    fn parse(text: &str) -> Result<AllowList, String> {
        let config: Config =
            toml::from_str(text).map_err(|e| format!("__NAME__ config: {}", e.message()))?;
        if config.seconds == 0 {
            return Err("__NAME__ config: `seconds` must be at least 1".to_owned());
        }
        let grant_ms = config
            .seconds
            .checked_mul(1000)
            .ok_or_else(|| "__NAME__ config: `seconds` is too large".to_owned())?;
        if config.allow.len() > MAX_ALLOWED {
            return Err(format!(
                "__NAME__ config: `allow` lists more than {MAX_ALLOWED} buyers"
            ));
        }
        let mut allowed = Vec::with_capacity(config.allow.len());
        for (i, key) in config.allow.iter().enumerate() {
            let key = parse_key(key).ok_or_else(|| {
                format!("__NAME__ config: allow[{i}] is not a buyer key (64 hex digits)")
            })?;
            allowed.push(key);
        }
        allowed.sort_unstable();
        Ok(AllowList { allowed, grant_ms })
    }
}

impl PaymentPlugin for AllowList {
    fn describe() -> Description {
        Description {
            name: "__NAME__",
            version: env!("CARGO_PKG_VERSION"),
            // The card `method` this plugin serves.
            methods: &["__NAME__"],
            // Empty: any currency.
            currencies: &[],
        }
    }

    fn check_config(config: &str) -> Result<(), String> {
        AllowList::parse(config).map(|_| ())
    }

    fn open(config: &str) -> Result<Self, String> {
        AllowList::parse(config)
    }

    fn validate(&self, req: &Request<'_>, _now_ms: u64) -> Result<Grant, String> {
        if self.allowed.binary_search(&req.buyer).is_ok() {
            Ok(Grant::time_ms(self.grant_ms))
        } else {
            Err("this buyer is not on the seller's allow list".to_owned())
        }
    }
}

export_payment_plugin!(AllowList);

#[cfg(test)]
mod tests {
    //! Unit tests: the plugin called directly, as Rust. `tests/plugin.rs` calls the built
    //! library through the host's loader instead.
    use super::*;
    use dazaar_plugin_api::PaymentTerms;

    fn ask(plugin: &AllowList, buyer: Key) -> Result<Grant, String> {
        let terms = PaymentTerms::new("__NAME__", "", "0", "seconds", "1");
        let req = Request {
            buyer,
            seller: [2; 32],
            terms: &terms,
        };
        plugin.validate(&req, 0)
    }

    #[test]
    fn a_listed_buyer_gets_the_configured_time() {
        let config = format!("allow = [\"{}\"]\nseconds = 90\n", "ab".repeat(32));
        let plugin = AllowList::open(&config).unwrap();
        assert_eq!(ask(&plugin, [0xab; 32]), Ok(Grant::time_ms(90_000)));
    }

    #[test]
    fn anyone_else_is_refused_with_a_reason() {
        let plugin = AllowList::open("allow = []\nseconds = 1\n").unwrap();
        let reason = ask(&plugin, [1; 32]).unwrap_err();
        assert!(reason.contains("not on the seller's allow list"), "{reason}");
    }

    #[test]
    fn bad_settings_are_refused() {
        for bad in [
            "",
            "allow = []",
            "allow = []\nseconds = 0\n",
            "allow = [\"zz\"]\nseconds = 1\n",
            "allow = []\nseconds = 1\ntypo = 1\n",
            "not toml",
        ] {
            assert!(AllowList::check_config(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
