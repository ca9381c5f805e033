//! The host's side of a plugin's state store (API 1.3): one plugin's keys for one product
//! in the seller's state database, with the ABI's bounds enforced here (a plugin is not
//! trusted to keep them).
//!
//! Keys starting with [`RESERVED_KEY_PREFIX`] (`@`) are the host's: a plugin cannot write
//! them, and reads there are views of the host's own state. The one view so far is the
//! ledger ([`LEDGER_VIEW_PREFIX`]): `@ledger/<buyer hex>` is that buyer's payments for
//! the product's seller in the state store's ledger, as ledger lines, the oldest first
//! (what `dazaar ledger add` recorded without `--file`). A view larger than
//! [`MAX_STATE_VALUE`] drops the oldest payments first.

use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RErr, ROk, ROption, RResult, RSlice, RStr, RString, RVec};
use dazaar_plugin_api::{
    parse_ledger_view_key, LedgerLine, PluginState, PluginState_TO, StateBox, LEDGER_VIEW_PREFIX,
    MAX_STATE_KEY, MAX_STATE_VALUE, RESERVED_KEY_PREFIX,
};

use crate::state::{Key, LedgerPayment, StateStore};

/// Where a plugin's state lives: the store and the product (its feed key) it is kept for.
#[derive(Debug, Clone)]
pub struct StateScope {
    /// The seller's state database.
    pub store: Arc<StateStore>,
    /// The product the entry sells (its feed key).
    pub product: Key,
    /// The product's seller key (what buyers dial, and ledger payments name).
    pub seller: Key,
}

/// One plugin's state for one product.
#[derive(Debug, Clone)]
struct HostPluginState {
    scope: StateScope,
    plugin: String,
}

impl HostPluginState {
    fn check_key(key: &str) -> Result<(), RString> {
        if key.len() > MAX_STATE_KEY {
            return Err(format!(
                "state key of {} bytes is longer than {MAX_STATE_KEY}",
                key.len()
            )
            .into());
        }
        Ok(())
    }

    /// Refuses writes to the host's reserved keys.
    fn check_writable(key: &str) -> Result<(), RString> {
        Self::check_key(key)?;
        if key.starts_with(RESERVED_KEY_PREFIX) {
            return Err(format!(
                "state keys starting with {RESERVED_KEY_PREFIX:?} are the host's (read-only)"
            )
            .into());
        }
        Ok(())
    }

    /// A read of a reserved key: the view it names.
    fn view(&self, key: &str) -> Result<Option<Vec<u8>>, RString> {
        if key.starts_with(LEDGER_VIEW_PREFIX) {
            let buyer = parse_ledger_view_key(key)
                .ok_or_else(|| RString::from("a ledger view key is @ledger/<64 hex>"))?;
            let payments = self
                .scope
                .store
                .ledger(Some(&buyer))
                .map_err(|e| self.fail("ledger read", &e))?;
            return Ok(ledger_view(&self.scope.seller, &payments, MAX_STATE_VALUE));
        }
        Err(format!("no host view under {key:?}").into())
    }

    fn fail(&self, what: &str, e: &crate::state::StateError) -> RString {
        tracing::warn!(plugin = %self.plugin, error = %e, "plugin state {what} failed");
        format!("the host's state store failed ({what})").into()
    }
}

impl PluginState for HostPluginState {
    fn get(&self, key: RStr<'_>) -> RResult<ROption<RVec<u8>>, RString> {
        if let Err(e) = Self::check_key(key.as_str()) {
            return RErr(e);
        }
        if key.as_str().starts_with(RESERVED_KEY_PREFIX) {
            return match self.view(key.as_str()) {
                Ok(v) => ROk(v.map(RVec::from).into()),
                Err(e) => RErr(e),
            };
        }
        match self
            .scope
            .store
            .plugin_get(&self.plugin, &self.scope.product, key.as_str())
        {
            Ok(v) => ROk(v.map(RVec::from).into()),
            Err(e) => RErr(self.fail("read", &e)),
        }
    }

    fn put(&self, key: RStr<'_>, value: RSlice<'_, u8>) -> RResult<(), RString> {
        if let Err(e) = Self::check_writable(key.as_str()) {
            return RErr(e);
        }
        if value.len() > MAX_STATE_VALUE {
            return RErr(
                format!(
                    "state value of {} bytes is larger than {MAX_STATE_VALUE}",
                    value.len()
                )
                .into(),
            );
        }
        match self.scope.store.plugin_put(
            &self.plugin,
            &self.scope.product,
            key.as_str(),
            value.as_slice(),
        ) {
            Ok(()) => ROk(()),
            Err(e) => RErr(self.fail("write", &e)),
        }
    }

    fn delete(&self, key: RStr<'_>) -> RResult<(), RString> {
        if let Err(e) = Self::check_writable(key.as_str()) {
            return RErr(e);
        }
        match self
            .scope
            .store
            .plugin_delete(&self.plugin, &self.scope.product, key.as_str())
        {
            Ok(()) => ROk(()),
            Err(e) => RErr(self.fail("delete", &e)),
        }
    }
}

/// `payments` (one buyer's) that count for `seller`, as ledger lines, the oldest first, at
/// most `max` bytes (the oldest dropped first); `None` when there are none.
fn ledger_view(seller: &Key, payments: &[LedgerPayment], max: usize) -> Option<Vec<u8>> {
    let mut lines: Vec<(u64, String)> = payments
        .iter()
        .filter(|p| p.seller.is_none_or(|s| s == *seller))
        .map(|p| {
            let line = LedgerLine {
                buyer: p.buyer,
                seller: p.seller,
                amount: p.amount,
                time_ms: p.time,
                note: None,
            };
            (p.time, line.to_json())
        })
        .collect();
    // Newest first, kept while they fit.
    lines.sort_by_key(|(time, _)| std::cmp::Reverse(*time));
    let mut size = 0usize;
    let kept = lines
        .iter()
        .take_while(|(_, l)| {
            size = size.saturating_add(l.len() + 1);
            size <= max
        })
        .count();
    if kept < lines.len() {
        tracing::warn!(
            dropped = lines.len() - kept,
            "a buyer's ledger is larger than a plugin may read; its oldest payments are left out"
        );
    }
    lines.truncate(kept);
    if lines.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(size.min(max));
    for (_, l) in lines.iter().rev() {
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    Some(out)
}

/// The state store handed to `plugin` for `scope`'s product.
pub fn state_box(scope: &StateScope, plugin: &str) -> StateBox {
    PluginState_TO::from_ptr(
        RArc::new(HostPluginState {
            scope: scope.clone(),
            plugin: plugin.to_owned(),
        }),
        TD_Opaque,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use dazaar_plugin_api::PluginStore;

    #[test]
    fn a_plugin_store_is_namespaced_bounded_and_persistent() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(StateStore::open_in(tmp.path()).unwrap());
        let scope = StateScope {
            store: Arc::clone(&store),
            product: [1; 32],
            seller: [3; 32],
        };
        let lnd = PluginStore::new(state_box(&scope, "lnd"));
        let eos = PluginStore::new(state_box(&scope, "eos"));
        lnd.put("settle_index", b"42").unwrap();
        assert_eq!(lnd.get("settle_index").unwrap(), Some(b"42".to_vec()));
        assert_eq!(eos.get("settle_index").unwrap(), None);
        let other_product = PluginStore::new(state_box(
            &StateScope {
                store: Arc::clone(&store),
                product: [2; 32],
                seller: [3; 32],
            },
            "lnd",
        ));
        assert_eq!(other_product.get("settle_index").unwrap(), None);
        assert!(lnd.put(&"k".repeat(MAX_STATE_KEY + 1), b"v").is_err());
        assert!(lnd.put("big", &vec![0; MAX_STATE_VALUE + 1]).is_err());
        lnd.put("settle_index", b"43").unwrap();
        drop((lnd, eos, other_product, scope, store));
        // A new process (a restart) reads what was committed.
        let store = Arc::new(StateStore::open_in(tmp.path()).unwrap());
        let again = PluginStore::new(state_box(
            &StateScope {
                store,
                product: [1; 32],
                seller: [3; 32],
            },
            "lnd",
        ));
        assert_eq!(again.get("settle_index").unwrap(), Some(b"43".to_vec()));
        again.delete("settle_index").unwrap();
        assert_eq!(again.get("settle_index").unwrap(), None);
    }

    #[test]
    fn the_ledger_view_is_read_only_and_names_this_seller_s_payments() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(StateStore::open_in(tmp.path()).unwrap());
        let (seller, other, buyer) = ([3; 32], [4; 32], [5; 32]);
        let pay = |seller: Option<Key>, amount: f64, time: u64| {
            store
                .ledger_add(&LedgerPayment {
                    id: 0,
                    buyer,
                    seller,
                    amount,
                    time,
                    note: Some("cash".into()),
                })
                .unwrap();
        };
        pay(Some(seller), 1.0, 10);
        pay(None, 2.0, 20);
        pay(Some(other), 3.0, 30);
        let plugin = PluginStore::new(state_box(
            &StateScope {
                store: Arc::clone(&store),
                product: [1; 32],
                seller,
            },
            "ledger",
        ));
        let view = plugin
            .get(&dazaar_plugin_api::ledger_view_key(&buyer))
            .unwrap()
            .unwrap();
        let lines: Vec<LedgerLine> =
            dazaar_plugin_api::ledger_lines(std::str::from_utf8(&view).unwrap())
                .map(Option::unwrap)
                .collect();
        assert_eq!(
            lines.iter().map(|l| l.amount).collect::<Vec<_>>(),
            [1.0, 2.0]
        );
        assert_eq!(
            plugin
                .get(&dazaar_plugin_api::ledger_view_key(&[6; 32]))
                .unwrap(),
            None
        );
        // Reserved keys cannot be written; a malformed view key is an error.
        let key = dazaar_plugin_api::ledger_view_key(&buyer);
        assert!(plugin.put(&key, b"forged").is_err());
        assert!(plugin.delete(&key).is_err());
        assert!(plugin.put("@mine", b"x").is_err());
        assert!(plugin.get("@ledger/zz").is_err());
        assert!(plugin.get("@other").is_err());
        assert_eq!(plugin.get(&key).unwrap(), Some(view));
    }

    #[test]
    fn a_ledger_view_too_large_drops_the_oldest_payments() {
        let payments: Vec<LedgerPayment> = (0..10)
            .map(|i| LedgerPayment {
                id: i,
                buyer: [5; 32],
                seller: None,
                amount: 1.0,
                time: 1000 + u64::try_from(i).unwrap(),
                note: None,
            })
            .collect();
        let one = ledger_view(&[3; 32], &payments[..1], usize::MAX)
            .unwrap()
            .len();
        let view = ledger_view(&[3; 32], &payments, one * 3).unwrap();
        let times: Vec<u64> = dazaar_plugin_api::ledger_lines(std::str::from_utf8(&view).unwrap())
            .map(|l| l.unwrap().time_ms)
            .collect();
        assert_eq!(times, [1007, 1008, 1009]);
        assert_eq!(ledger_view(&[3; 32], &[], 100), None);
    }
}
