//! What the seller side keeps across restarts in the host's state store (API 1.3): the
//! settled invoices it counted and the invoice indexes it has seen. With them a restart
//! or a reconnect resumes `SubscribeInvoices` from the saved settle index (LND replays
//! what settled since) instead of listing every invoice on the node, and buyers whose
//! invoices were already counted stay valid while the node is being reached.
//!
//! Layout: `settled/<n>` holds up to [`CHUNK_ENTRIES`] fixed-size entries (seller, buyer,
//! payment hash, satoshis, settled at ms), appended to the last chunk; `index` holds the
//! add and settle indexes (16 bytes). An entry is written before the index that covers
//! it, so a crash between the two only replays an invoice (recorded once: by its hash).

use dazaar_plugin_api::{Key, PluginStore};

/// Entries per chunk: 4096 × 112 bytes, under the host's value limit.
pub const CHUNK_ENTRIES: usize = 4096;
const ENTRY_LEN: usize = 32 + 32 + 32 + 8 + 8;
const INDEX_KEY: &str = "index";

/// One settled invoice, as counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettledEntry {
    pub seller: Key,
    pub buyer: Key,
    pub r_hash: [u8; 32],
    pub sats: i64,
    pub at_ms: u64,
}

impl SettledEntry {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.seller);
        out.extend_from_slice(&self.buyer);
        out.extend_from_slice(&self.r_hash);
        out.extend_from_slice(&self.sats.to_le_bytes());
        out.extend_from_slice(&self.at_ms.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Option<SettledEntry> {
        let key = |r: std::ops::Range<usize>| -> Option<[u8; 32]> { b.get(r)?.try_into().ok() };
        let word = |r: std::ops::Range<usize>| -> Option<[u8; 8]> { b.get(r)?.try_into().ok() };
        Some(SettledEntry {
            seller: key(0..32)?,
            buyer: key(32..64)?,
            r_hash: key(64..96)?,
            sats: i64::from_le_bytes(word(96..104)?),
            at_ms: u64::from_le_bytes(word(104..112)?),
        })
    }
}

/// The saved indexes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Indexes {
    pub add: u64,
    pub settle: u64,
}

/// The plugin's checkpoint in the host's store.
#[derive(Debug)]
pub struct Checkpoint {
    store: PluginStore,
    /// The number of the last chunk and its bytes.
    last: usize,
    last_bytes: Vec<u8>,
}

fn chunk_key(n: usize) -> String {
    format!("settled/{n}")
}

impl Checkpoint {
    /// Reads what was saved: the entries (at most `max`) and the indexes (`None`: nothing
    /// was saved yet, the node must be listed).
    pub fn load(
        store: PluginStore,
        max: usize,
    ) -> Result<(Checkpoint, Vec<SettledEntry>, Option<Indexes>), String> {
        let mut entries = Vec::new();
        let mut n = 0;
        let mut last_bytes = Vec::new();
        while let Some(bytes) = store.get(&chunk_key(n))? {
            if bytes.len() % ENTRY_LEN != 0 || bytes.len() > CHUNK_ENTRIES * ENTRY_LEN {
                return Err(format!(
                    "saved chunk {n} has a bad length ({})",
                    bytes.len()
                ));
            }
            for e in bytes.chunks_exact(ENTRY_LEN) {
                if entries.len() < max {
                    entries.extend(SettledEntry::decode(e));
                }
            }
            last_bytes = bytes;
            n += 1;
        }
        let indexes = match store.get(INDEX_KEY)? {
            Some(b) if b.len() == 16 => {
                let word = |r: std::ops::Range<usize>| -> [u8; 8] {
                    b.get(r).and_then(|s| s.try_into().ok()).unwrap_or([0; 8])
                };
                Some(Indexes {
                    add: u64::from_le_bytes(word(0..8)),
                    settle: u64::from_le_bytes(word(8..16)),
                })
            }
            Some(b) => return Err(format!("saved index has a bad length ({})", b.len())),
            None => None,
        };
        let checkpoint = Checkpoint {
            store,
            last: n.saturating_sub(1),
            last_bytes,
        };
        Ok((checkpoint, entries, indexes))
    }

    /// Saves one more settled invoice.
    pub fn append(&mut self, e: &SettledEntry) -> Result<(), String> {
        if self.last_bytes.len() >= CHUNK_ENTRIES * ENTRY_LEN {
            self.last += 1;
            self.last_bytes.clear();
        }
        let mut bytes = self.last_bytes.clone();
        e.encode(&mut bytes);
        self.store.put(&chunk_key(self.last), &bytes)?;
        self.last_bytes = bytes;
        Ok(())
    }

    /// Saves the indexes seen so far.
    pub fn save_indexes(&self, i: Indexes) -> Result<(), String> {
        let mut b = Vec::with_capacity(16);
        b.extend_from_slice(&i.add.to_le_bytes());
        b.extend_from_slice(&i.settle.to_le_bytes());
        self.store.put(INDEX_KEY, &b)
    }
}

/// An in-memory [`PluginStore`] for tests: what a host keeps, shared by clones.
#[cfg(test)]
pub(crate) mod memory {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use abi_stable::sabi_trait::TD_Opaque;
    use abi_stable::std_types::{RArc, ROk, ROption, RResult, RSlice, RStr, RString, RVec};
    use dazaar_plugin_api::{PluginState, PluginState_TO, PluginStore};

    #[derive(Clone, Default)]
    pub(crate) struct Memory(pub(crate) Arc<Mutex<HashMap<String, Vec<u8>>>>);

    impl PluginState for Memory {
        fn get(&self, key: RStr<'_>) -> RResult<ROption<RVec<u8>>, RString> {
            let map = self.0.lock().unwrap();
            ROk(map.get(key.as_str()).cloned().map(RVec::from).into())
        }
        fn put(&self, key: RStr<'_>, value: RSlice<'_, u8>) -> RResult<(), RString> {
            self.0
                .lock()
                .unwrap()
                .insert(key.as_str().to_owned(), value.to_vec());
            ROk(())
        }
        fn delete(&self, key: RStr<'_>) -> RResult<(), RString> {
            self.0.lock().unwrap().remove(key.as_str());
            ROk(())
        }
    }

    impl Memory {
        pub(crate) fn store(&self) -> PluginStore {
            PluginStore::new(PluginState_TO::from_ptr(RArc::new(self.clone()), TD_Opaque))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::memory::Memory;
    use super::*;

    fn entry(i: u32) -> SettledEntry {
        let mut r_hash = [0u8; 32];
        r_hash[..4].copy_from_slice(&i.to_le_bytes());
        SettledEntry {
            seller: [1; 32],
            buyer: [2; 32],
            r_hash,
            sats: i64::from(i),
            at_ms: u64::from(i) * 1000,
        }
    }

    #[test]
    fn entries_and_indexes_survive_a_reload_across_chunks() {
        let memory = Memory::default();
        let (mut cp, entries, indexes) = Checkpoint::load(memory.store(), usize::MAX).unwrap();
        assert!(entries.is_empty() && indexes.is_none());
        let n = CHUNK_ENTRIES as u32 + 10;
        for i in 0..n {
            cp.append(&entry(i)).unwrap();
        }
        cp.save_indexes(Indexes { add: 7, settle: 9 }).unwrap();
        assert_eq!(
            memory.0.lock().unwrap().len(),
            3,
            "two chunks and the index"
        );
        let (mut cp, entries, indexes) = Checkpoint::load(memory.store(), usize::MAX).unwrap();
        assert_eq!(entries.len(), n as usize);
        assert_eq!(entries[4100], entry(4100));
        assert_eq!(indexes, Some(Indexes { add: 7, settle: 9 }));
        // Appending after a reload continues the last chunk.
        cp.append(&entry(n)).unwrap();
        let (_, entries, _) = Checkpoint::load(memory.store(), usize::MAX).unwrap();
        assert_eq!(entries.last(), Some(&entry(n)));
        // At most `max` are read back.
        let (_, entries, _) = Checkpoint::load(memory.store(), 5).unwrap();
        assert_eq!(entries.len(), 5);
    }

    #[test]
    fn a_damaged_chunk_is_an_error() {
        let memory = Memory::default();
        memory
            .0
            .lock()
            .unwrap()
            .insert("settled/0".into(), vec![0; 5]);
        assert!(Checkpoint::load(memory.store(), usize::MAX).is_err());
    }
}
