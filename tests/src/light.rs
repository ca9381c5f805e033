//! The market bench's light buyers: a purchase whose feed keeps only what checking the
//! next block needs, and takes the seller's signatures on trust.
//!
//! A light buyer does everything a buyer does on the wire (its own connection, key and
//! rekeyed feed; Want, Request and every block received, decrypted, decoded and its Merkle
//! proof hashed up to the roots; the same tree nodes held, so its Requests name the same
//! nodes and the seller does exactly the same work for it as for a full buyer). It skips
//! what costs the buyer and not the seller: the Ed25519 verification of the seller's
//! signature over the roots (so it trusts the seller: nothing binds the hashed roots to
//! the feed key), and storage (block bytes and signatures are dropped; tree nodes and
//! bitfield stay in memory, no disk).

use std::collections::BTreeMap;
use std::path::PathBuf;

use dazaar::market::buyer::{buy_into, BuyError, BuyOptions, BuyOutcome, BuyProgress};
use dazaar::market::{BuyerEvent, Identity};
use dazaar::storage::store::Page;
use dazaar::storage::{Feed, Node, Store, StoreError};
use tokio::sync::{mpsc, watch};

/// A feed store that keeps the key, tree nodes and bitfield in memory and drops block
/// bytes and signatures (a read of them fails or finds none).
#[derive(Default)]
pub struct NodeStore {
    key: Option<[u8; 32]>,
    nodes: BTreeMap<u64, Node>,
    pages: BTreeMap<u64, Page>,
}

fn dropped(what: &str) -> StoreError {
    StoreError::NotAFeed {
        file: PathBuf::from("<light buyer>"),
        reason: format!("{what} are not kept"),
    }
}

impl Store for NodeStore {
    fn read_key(&self) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(self.key)
    }
    fn write_key(&mut self, key: &[u8; 32]) -> Result<(), StoreError> {
        self.key = Some(*key);
        Ok(())
    }
    fn read_secret_key(&self) -> Result<Option<[u8; 64]>, StoreError> {
        Ok(None)
    }
    fn write_secret_key(&mut self, _: &[u8; 64]) -> Result<(), StoreError> {
        Err(dropped("secret keys"))
    }
    fn read_data(&self, _: u64, _: u64) -> Result<Vec<u8>, StoreError> {
        Err(dropped("block bytes"))
    }
    fn write_data(&mut self, _: u64, _: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
    fn read_node(&self, index: u64) -> Result<Option<Node>, StoreError> {
        Ok(self.nodes.get(&index).copied())
    }
    fn write_nodes(&mut self, nodes: &[Node]) -> Result<(), StoreError> {
        for node in nodes {
            self.nodes.insert(node.index, *node);
        }
        Ok(())
    }
    fn read_signature(&self, _: u64) -> Result<Option<[u8; 64]>, StoreError> {
        Ok(None)
    }
    fn write_signature(&mut self, _: u64, _: &[u8; 64]) -> Result<(), StoreError> {
        Ok(())
    }
    fn read_bitfield(&self) -> Result<Vec<(u64, Page)>, StoreError> {
        Ok(self.pages.iter().map(|(n, p)| (*n, p.clone())).collect())
    }
    fn write_bitfield(&mut self, pages: &[(u64, Page)]) -> Result<(), StoreError> {
        for (n, page) in pages {
            self.pages.insert(*n, page.clone());
        }
        Ok(())
    }
    fn truncate(&mut self, _: u64, length: u64) -> Result<(), StoreError> {
        self.nodes.retain(|&i, _| i < 2 * length);
        Ok(())
    }
    fn sync_data(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    fn sync_bitfield(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Buys as [`dazaar::market::buyer::buy_with_progress`] does, as a light buyer: into a
/// [`NodeStore`], the seller's signatures taken on trust. `opts.out` is not used, and
/// `opts.report_blocks` reports nothing (the bytes are not kept).
pub async fn buy_light(
    identity: &Identity,
    opts: BuyOptions,
    events: Option<mpsc::Sender<BuyerEvent>>,
    progress: Option<watch::Sender<BuyProgress>>,
    shutdown: watch::Receiver<bool>,
) -> Result<BuyOutcome, BuyError> {
    let out = opts.out.clone();
    let open = move |key| {
        let mut feed =
            Feed::create_reader(NodeStore::default(), key).map_err(|source| BuyError::Feed {
                dir: out.clone(),
                source,
            })?;
        feed.skip_signature_checks_for_bench();
        Ok(feed)
    };
    buy_into(identity, opts, open, events, progress, shutdown).await
}
