//! The host's side of a plugin's state store (API 1.3): one plugin's keys for one product
//! in the seller's state database, with the ABI's bounds enforced here (a plugin is not
//! trusted to keep them).

use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RErr, ROk, ROption, RResult, RSlice, RStr, RString, RVec};
use dazaar_plugin_api::{PluginState, PluginState_TO, StateBox, MAX_STATE_KEY, MAX_STATE_VALUE};

use crate::state::{Key, StateStore};

/// Where a plugin's state lives: the store and the product (its feed key) it is kept for.
#[derive(Debug, Clone)]
pub struct StateScope {
    /// The seller's state database.
    pub store: Arc<StateStore>,
    /// The product the entry sells (its feed key).
    pub product: Key,
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
        if let Err(e) = Self::check_key(key.as_str()) {
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
        if let Err(e) = Self::check_key(key.as_str()) {
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
            },
            "lnd",
        ));
        assert_eq!(again.get("settle_index").unwrap(), Some(b"43".to_vec()));
        again.delete("settle_index").unwrap();
        assert_eq!(again.get("settle_index").unwrap(), None);
    }
}
