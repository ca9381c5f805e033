//! `dazaar_free`: the free-access payment plugin.
//!
//! Serves the card method `free` (any currency). Every buyer is valid, with
//! `{"type":"free"}`. It takes no configuration; an empty table is expected, and any key
//! is refused so a typo in `dazaar.toml` is noticed.

use dazaar_plugin_api::{export_payment_plugin, Description, Grant, PaymentPlugin, Request};

/// The free-access verifier. It holds no state.
#[derive(Debug, Default)]
pub struct FreePlugin;

impl PaymentPlugin for FreePlugin {
    fn describe() -> Description {
        Description {
            name: "free",
            version: env!("CARGO_PKG_VERSION"),
            methods: &["free"],
            currencies: &[],
        }
    }

    fn check_config(config: &str) -> Result<(), String> {
        if config.trim().is_empty() {
            Ok(())
        } else {
            Err("the free plugin takes no settings; remove its config table".to_owned())
        }
    }

    fn open(config: &str) -> Result<Self, String> {
        Self::check_config(config)?;
        Ok(FreePlugin)
    }

    fn validate(&self, _req: &Request<'_>, _now_ms: u64) -> Result<Grant, String> {
        Ok(Grant::free())
    }
}

export_payment_plugin!(FreePlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use dazaar_plugin_api::PaymentTerms;

    #[test]
    fn everyone_is_free() {
        let p = FreePlugin::open("").unwrap();
        let terms = PaymentTerms::new("free", "", "0", "seconds", "1");
        let req = Request {
            buyer: [1; 32],
            seller: [2; 32],
            terms: &terms,
        };
        assert_eq!(p.validate(&req, 0), Ok(Grant::free()));
        assert!(FreePlugin::open("x = 1").is_err());
    }
}
