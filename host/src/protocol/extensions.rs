//! Stream-level extension bookkeeping (`abstract-extension@3.1.1` as hypercore-protocol@8
//! uses it): local names sorted, id = index in the sender's sorted list, an `Options`
//! announcement whenever the local list changed since it was last announced, and incoming
//! ids mapped through the remote's latest list.

/// Most names a side may register locally; dazaar uses six.
pub const MAX_LOCAL_EXTENSIONS: usize = 256;
/// Most remote names kept from an `Options` message (extra names are dropped: ids beyond
/// them can never be mapped, which JS would treat the same as an unknown name).
pub const MAX_REMOTE_EXTENSIONS: usize = 1024;

#[derive(Debug, Default)]
pub(crate) struct Extensions {
    local: Vec<String>,
    /// Bumped on every change; starts at 1 so that the first send always announces (JS
    /// `Local.changes = 1`, stream `_changes = 0`).
    version: u64,
    announced: u64,
    remote: Option<Vec<String>>,
}

impl Extensions {
    pub(crate) fn new() -> Self {
        Self {
            version: 1,
            ..Self::default()
        }
    }

    /// Returns false if the name is already registered.
    pub(crate) fn register(&mut self, name: &str) -> Result<(), &'static str> {
        match self.local.binary_search_by(|n| n.as_str().cmp(name)) {
            Ok(_) => Err("already registered"),
            Err(_) if self.local.len() >= MAX_LOCAL_EXTENSIONS => Err("too many extensions"),
            Err(at) => {
                self.local.insert(at, name.to_string());
                self.version = self.version.wrapping_add(1);
                Ok(())
            }
        }
    }

    pub(crate) fn unregister(&mut self, name: &str) -> bool {
        match self.local.binary_search_by(|n| n.as_str().cmp(name)) {
            Ok(at) => {
                self.local.remove(at);
                self.version = self.version.wrapping_add(1);
                true
            }
            Err(_) => false,
        }
    }

    pub(crate) fn local(&self) -> &[String] {
        &self.local
    }

    pub(crate) fn remote(&self) -> Option<&[String]> {
        self.remote.as_deref()
    }

    /// The id of a local name, if registered.
    pub(crate) fn local_id(&self, name: &str) -> Option<u64> {
        self.local
            .binary_search_by(|n| n.as_str().cmp(name))
            .ok()
            .map(|i| i as u64)
    }

    /// The list to announce before the next extension message, if it changed.
    pub(crate) fn take_announcement(&mut self) -> Option<Vec<String>> {
        if self.announced == self.version {
            return None;
        }
        self.announced = self.version;
        Some(self.local.clone())
    }

    pub(crate) fn set_remote(&mut self, mut names: Vec<String>) {
        names.truncate(MAX_REMOTE_EXTENSIONS);
        // `truncate` keeps the capacity: keep only what the names need.
        names.shrink_to_fit();
        self.remote = Some(names);
    }

    /// Maps an incoming id through the remote list to a locally registered name.
    pub(crate) fn resolve_remote(&self, id: u64) -> Option<&str> {
        let remote = self.remote.as_ref()?;
        let name = remote.get(usize::try_from(id).ok()?)?;
        self.local_id(name)?;
        Some(name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_ids_and_announcements() {
        let mut e = Extensions::new();
        // Nothing registered yet still announces once (JS always sends Options first).
        for name in ["dazaar/valid", "dazaar/invalid", "dazaar/seller-id"] {
            e.register(name).unwrap();
        }
        assert!(e.register("dazaar/valid").is_err());
        assert_eq!(e.local_id("dazaar/invalid"), Some(0));
        assert_eq!(e.local_id("dazaar/valid"), Some(2));
        assert_eq!(e.take_announcement().unwrap().len(), 3);
        assert_eq!(e.take_announcement(), None);
        e.register("dazaar/one-time-feed").unwrap();
        assert_eq!(e.local_id("dazaar/valid"), Some(3));
        assert!(e.take_announcement().is_some());
        assert!(e.unregister("dazaar/valid"));
        assert!(!e.unregister("dazaar/valid"));
        assert!(e.take_announcement().is_some());

        assert_eq!(e.resolve_remote(0), None, "no remote Options yet");
        e.set_remote(vec!["a".into(), "dazaar/seller-id".into()]);
        assert_eq!(e.resolve_remote(0), None, "not registered locally");
        assert_eq!(e.resolve_remote(1), Some("dazaar/seller-id"));
        assert_eq!(e.resolve_remote(u64::MAX), None);
    }
}
