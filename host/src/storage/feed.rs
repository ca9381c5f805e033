//! A hypercore v9 feed over a [`Store`]: append, read, roots and signatures, proofs for
//! remotes, and verification of what remotes send before anything is stored.
//!
//! # Durability
//! Every write of an append or a verified download goes to the store in this order:
//! block data, tree nodes, signature, and last the bitfield pages that make them part of
//! the feed. On open, the length is recomputed from the bitfield and its signature is
//! verified (falling back to the longest shorter prefix whose signature verifies), so:
//!
//! - **Process crash** (SIGKILL at any moment): when `append` has returned, the append
//!   survives; an append cut short leaves the previous length, which verifies.
//! - **Power loss**: with [`Durability::Process`] (the default) what survives is what the
//!   kernel wrote back, plus everything up to the last [`Feed::sync`]; with
//!   [`Durability::Power`] every append fsyncs data, tree and signatures before writing
//!   the bitfield and fsyncs that too, so a returned append is on disk. Batching appends
//!   ([`Feed::append_batch`]) amortises both the signature and the fsyncs.
//!
//! A block whose bytes changed on disk is detected on read (its hash no longer matches
//! the tree) and reported as [`FeedError::Corrupt`], never returned as data.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::bitfield::{self, Bitfield, NodeSet, TreeBits};
use super::cache::{BlockCache, NodeCache};
use super::flat_tree;
use super::merkle::{self, Node};
use super::store::{BitfieldStamp, Store, StoreError};
use crate::crypto::{self, Ed25519KeyPair};

/// The largest block a feed accepts (as JS hypercore@9: the replication stream rejects
/// larger frames).
pub const MAX_BLOCK_SIZE: usize = 8 * 1024 * 1024;

/// The most blocks a feed may claim; a remote claiming more is refused (this keeps every
/// index arithmetic far from overflow).
pub const MAX_LENGTH: u64 = 1 << 48;

/// How far below the bitfield's length recovery looks for a verifying prefix.
const MAX_RECOVERY_SCAN: u64 = 1 << 20;

/// When an append is durable; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Ordered writes: survives a process crash once `append` returns.
    #[default]
    Process,
    /// Ordered writes with fsync before and after the bitfield: survives power loss once
    /// `append` returns.
    Power,
}

/// Why a remote's block and proof were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The proof lacks a root needed to check the signature.
    #[error("missing tree roots needed for verify")]
    MissingRoots,
    /// The feed is signed but the remote sent no signature.
    #[error("remote did not include a signature")]
    MissingSignature,
    /// The signature does not verify against the feed key.
    #[error("remote signature could not be verified")]
    BadSignature,
    /// An unsigned feed whose root hash is not the key.
    #[error("remote checksum failed")]
    BadChecksum,
    /// The proof claims a length beyond what we accept.
    #[error("remote claims a feed of {0} blocks, more than the limit")]
    TooLong(u64),
    /// The block is larger than the protocol allows.
    #[error("block of {0} bytes is larger than the limit")]
    BlockTooLarge(usize),
    /// A hash-only proof without its node.
    #[error("empty proof")]
    EmptyProof,
    /// Proof nodes that do not fit the block's position in the tree.
    #[error("proof does not fit the tree: {0}")]
    Malformed(&'static str),
}

/// A feed operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Appending needs the secret key, and this feed has none.
    #[error("this feed has no secret key, so it cannot be appended to")]
    NotWritable,
    /// A block larger than [`MAX_BLOCK_SIZE`].
    #[error("block of {0} bytes is larger than the limit of 8 MiB")]
    BlockTooLarge(usize),
    /// The directory holds no feed (no key).
    #[error("no feed here (no key)")]
    NoFeed,
    /// The directory holds another feed.
    #[error("another hypercore is stored here (key {found}, expected {expected})")]
    KeyMismatch {
        /// The key asked for (hex).
        expected: String,
        /// The key stored (hex).
        found: String,
    },
    /// Stored bytes that do not match their hashes or signatures.
    #[error("corrupt feed: {0}")]
    Corrupt(String),
    /// A remote's block or proof failed verification; nothing was stored.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The block is not held, so no proof can be made.
    #[error("block {0} is not held")]
    NotHeld(u64),
    /// The feed is longer than this implementation's limit.
    #[error("feed length limit reached")]
    TooLong,
}

impl From<crypto::CryptoError> for FeedError {
    fn from(e: crypto::CryptoError) -> Self {
        FeedError::Corrupt(e.to_string())
    }
}

/// Signs the roots of a feed: the writer's key pair over the 40-byte signable, or a
/// rekeyed (per-buyer) key pair over the 32-byte tree hash.
pub trait Signer: Send + Sync {
    /// The public key remotes verify with (the key of the feed they see).
    fn public_key(&self) -> [u8; 32];
    /// The signature for the feed at `length` whose roots hash to `tree_hash`.
    fn sign(&self, tree_hash: &[u8; 32], length: u64) -> [u8; 64];
}

impl Signer for Ed25519KeyPair {
    fn public_key(&self) -> [u8; 32] {
        Ed25519KeyPair::public_key(self)
    }
    fn sign(&self, tree_hash: &[u8; 32], length: u64) -> [u8; 64] {
        Ed25519KeyPair::sign(self, &merkle::signable_from_hash(tree_hash, length))
    }
}

/// A per-buyer signer as Dazaar's rekeyed feeds use (`hypercore-multi-key`): the same
/// tree, signed over the 32-byte tree hash by another key pair, on demand. The last
/// signature is cached, so many requests at one length cost one signing.
pub struct RekeyedSigner {
    pair: Ed25519KeyPair,
    last: Mutex<Option<([u8; 32], [u8; 64])>>,
}

impl RekeyedSigner {
    /// A signer with `pair`; nothing is stored but the pair.
    pub fn new(pair: Ed25519KeyPair) -> Self {
        Self {
            pair,
            last: Mutex::new(None),
        }
    }
}

impl std::fmt::Debug for RekeyedSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RekeyedSigner")
            .field("pair", &self.pair)
            .finish()
    }
}

impl Signer for RekeyedSigner {
    fn public_key(&self) -> [u8; 32] {
        self.pair.public_key()
    }
    fn sign(&self, tree_hash: &[u8; 32], _length: u64) -> [u8; 64] {
        let mut last = match self.last.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((hash, sig)) = *last {
            if &hash == tree_hash {
                return sig;
            }
        }
        let sig = self.pair.sign(tree_hash);
        *last = Some((*tree_hash, sig));
        sig
    }
}

/// Verifies a signature as hypercore@9 `verifyCompat` does: over the 40-byte signable,
/// or else over the 32-byte tree hash alone (the form rekeyed feeds use).
pub fn verify_signature(
    key: &[u8; 32],
    tree_hash: &[u8; 32],
    length: u64,
    signature: &[u8; 64],
) -> Result<(), crypto::CryptoError> {
    let signable = merkle::signable_from_hash(tree_hash, length);
    crypto::verify(key, &signable, signature).or_else(|_| crypto::verify(key, tree_hash, signature))
}

/// What an uploader sends to prove one block: the tree nodes the remote lacks and, when
/// `verified_by > 0`, the signed length `verified_by / 2` whose roots they lead to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// Proof nodes: path siblings bottom-up, then the remaining roots in ascending order.
    pub nodes: Vec<Node>,
    /// Twice the length whose signature must go with the nodes, or 0 for none.
    pub verified_by: u64,
}

/// A verified download's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOutcome {
    /// Whether the block was new to us.
    pub new_block: bool,
    /// The new feed length when the proof's signature raised it.
    pub new_length: Option<u64>,
}

/// How much older than the read the bitfield's modification time must be for
/// [`Feed::refresh`] to trust an unchanged stamp (file systems keep times in coarse ticks).
pub const REFRESH_STAMP_MARGIN: Duration = Duration::from_millis(100);

/// A hypercore v9 feed over a store.
pub struct Feed<S: Store> {
    store: S,
    key: [u8; 32],
    discovery_key: [u8; 32],
    writer: Option<Ed25519KeyPair>,
    length: u64,
    byte_length: u64,
    /// The number of blocks held below `length` (`bitfield.count_blocks(0, length)`), kept
    /// as blocks arrive so that progress costs nothing per block.
    held: u64,
    /// The roots at `length`, ascending.
    roots: Vec<Node>,
    bitfield: Bitfield,
    durability: Durability,
    /// Verified downloads leave their bitfield pages for [`Feed::flush`].
    defer_commit: bool,
    /// `(index, byte offset)` of the block after the last one read or stored: sequential
    /// replication asks for offsets in order, and each costs a walk over the roots
    /// otherwise. Offsets never change once a block exists.
    next_offset: Mutex<Option<(u64, u64)>>,
    /// What [`Feed::refresh`] last read: the bitfield's stamp and when it was read.
    refreshed: Option<(BitfieldStamp, SystemTime)>,
    /// The length, byte length and roots as last committed, while appends or downloads
    /// since then are not (their bitfield pages unwritten): a commit that fails returns
    /// to them, so that memory says what the disk does.
    committed: Option<Committed>,
    /// Whether [`Feed::put`] checks the signature over the roots a proof reaches: always,
    /// except in a benchmark's light buyer ([`Feed::skip_signature_checks_for_bench`]).
    check_signatures: bool,
    /// Tree nodes and recent blocks read or written, so that proofs for many readers of
    /// the same region do not each go to the store.
    caches: Mutex<Caches>,
}

/// The feed's in-memory caches ([`super::cache`]).
#[derive(Debug, Default)]
struct Caches {
    nodes: NodeCache,
    blocks: BlockCache,
}

/// What a failed commit returns to: see `Feed::committed`.
#[derive(Debug, Clone)]
struct Committed {
    length: u64,
    byte_length: u64,
    roots: Vec<Node>,
}

impl<S: Store> std::fmt::Debug for Feed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("key", &hex::encode(self.key))
            .field("length", &self.length)
            .field("byte_length", &self.byte_length)
            .field("writable", &self.writer.is_some())
            .finish()
    }
}

impl<S: Store> Feed<S> {
    /// Creates a new writable feed with `pair` in an empty store.
    pub fn create(mut store: S, pair: Ed25519KeyPair) -> Result<Self, FeedError> {
        if let Some(found) = store.read_key()? {
            if found != pair.public_key() {
                return Err(FeedError::KeyMismatch {
                    expected: hex::encode(pair.public_key()),
                    found: hex::encode(found),
                });
            }
        }
        store.write_secret_key(&pair.secret_key())?;
        store.write_key(&pair.public_key())?;
        Self::open(store, Some(pair.public_key()))
    }

    /// Creates (or opens) a read-only replica of the feed with public key `key`.
    pub fn create_reader(mut store: S, key: [u8; 32]) -> Result<Self, FeedError> {
        match store.read_key()? {
            Some(found) if found != key => {
                return Err(FeedError::KeyMismatch {
                    expected: hex::encode(key),
                    found: hex::encode(found),
                })
            }
            Some(_) => {}
            None => store.write_key(&key)?,
        }
        Self::open(store, Some(key))
    }

    /// Opens the feed in `store`, checking its key when `expected` is given, and recovers
    /// the longest prefix whose signature verifies.
    pub fn open(store: S, expected: Option<[u8; 32]>) -> Result<Self, FeedError> {
        let key = store.read_key()?.ok_or(FeedError::NoFeed)?;
        if let Some(expected) = expected {
            if expected != key {
                return Err(FeedError::KeyMismatch {
                    expected: hex::encode(expected),
                    found: hex::encode(key),
                });
            }
        }
        let writer = match store.read_secret_key()? {
            Some(secret) => Some(
                Ed25519KeyPair::from_secret_key(&secret)
                    .map_err(|_| FeedError::Corrupt("secret_key does not belong to key".into()))?,
            ),
            None => None,
        };
        if let Some(w) = &writer {
            if w.public_key() != key {
                return Err(FeedError::Corrupt(
                    "secret_key does not belong to key".into(),
                ));
            }
        }
        let bitfield = Bitfield::from_pages(store.read_bitfield()?);
        let mut feed = Feed {
            discovery_key: crypto::discovery_key(&key),
            store,
            key,
            writer,
            length: 0,
            byte_length: 0,
            held: 0,
            roots: Vec::new(),
            bitfield,
            durability: Durability::default(),
            defer_commit: false,
            next_offset: Mutex::new(None),
            refreshed: None,
            committed: None,
            check_signatures: true,
            caches: Mutex::new(Caches::default()),
        };
        feed.recover()?;
        Ok(feed)
    }

    /// Finds the length to open at: the bitfield's length if its signature verifies, else
    /// the longest shorter one that does. A writer then drops what lies beyond.
    fn recover(&mut self) -> Result<(), FeedError> {
        let claimed =
            bitfield::blocks(&self.bitfield, self.bitfield.tree_bit_len()).min(MAX_LENGTH);
        let mut length = claimed;
        let floor = claimed.saturating_sub(MAX_RECOVERY_SCAN);
        let roots = loop {
            if length == 0 {
                break Vec::new();
            }
            if let Some(roots) = self.verified_roots(length)? {
                break roots;
            }
            length -= 1;
            if length < floor {
                return Err(FeedError::Corrupt(format!(
                    "no verifying signature for any length near {claimed}"
                )));
            }
        };
        self.length = length;
        self.byte_length = roots.iter().map(|r| r.size).sum();
        self.roots = roots;
        if length < claimed {
            tracing::warn!(
                claimed,
                recovered = length,
                "feed recovered to a shorter verifying prefix"
            );
        }
        if self.writer.is_some() && !self.store.is_read_only() {
            self.repair_writer(claimed)?;
        }
        self.recount_held();
        Ok(())
    }

    /// Counts the blocks held below the length again (after the bitfield or the length
    /// changed wholesale: open, refresh, a rolled-back commit).
    fn recount_held(&mut self) {
        self.held = self.bitfield.count_blocks(0, self.length);
    }

    /// Moves the length to `length`, counting the blocks already held in the range gained
    /// (or no longer counting those in the range lost).
    fn set_length(&mut self, length: u64) {
        if length >= self.length {
            self.held += self.bitfield.count_blocks(self.length, length);
        } else {
            self.held = self
                .held
                .saturating_sub(self.bitfield.count_blocks(length, self.length));
        }
        self.length = length;
    }

    /// The roots at `length` if all are stored and the stored signature for `length`
    /// verifies against them.
    fn verified_roots(&self, length: u64) -> Result<Option<Vec<Node>>, FeedError> {
        let Some(sig) = self.store.read_signature(length - 1)? else {
            return Ok(None);
        };
        let mut roots = Vec::new();
        for index in flat_tree::full_roots(2 * length) {
            if !self.bitfield.has_node(index) {
                return Ok(None);
            }
            match self.store.read_node(index)? {
                Some(node) => roots.push(node),
                None => return Ok(None),
            }
        }
        let hash = merkle::tree_hash(&roots);
        Ok(verify_signature(&self.key, &hash, length, &sig)
            .ok()
            .map(|_| roots))
    }

    /// A writer holds exactly the blocks `[0, length)`: clear what lies beyond (left by a
    /// crash), set any data bit a crash left unset, and trim the files.
    fn repair_writer(&mut self, claimed: u64) -> Result<(), FeedError> {
        let length = self.length;
        if claimed > length {
            for i in length..claimed {
                self.bitfield.set_block(i, false);
            }
            // Tree bits of nodes not inside the recovered tree.
            let max = self.bitfield.tree_bit_len();
            for n in (2 * length)..max.min(2 * claimed + 2) {
                if self.bitfield.has_node(n) {
                    clear_tree_bit(&mut self.bitfield, n);
                }
            }
            for root in flat_tree::full_roots(2 * length) {
                let mut p = flat_tree::parent(root);
                while p < 2 * claimed + 2 && flat_tree::depth(p) < 60 {
                    if self.bitfield.has_node(p) {
                        clear_tree_bit(&mut self.bitfield, p);
                    }
                    p = flat_tree::parent(p);
                }
            }
        }
        if self.bitfield.count_blocks(0, length) != length {
            for i in 0..length {
                self.bitfield.set_block(i, true);
            }
        }
        if self.bitfield.is_dirty() {
            let pages = self.bitfield.dirty_pages();
            self.store.write_bitfield(&pages)?;
            self.bitfield.mark_written();
        }
        *self.offset_hint() = None;
        self.clear_caches();
        self.store.truncate(self.byte_length, length)?;
        Ok(())
    }

    /// Picks up blocks another process appended to the same store (a seller serving a
    /// feed that `dazaar feed append` writes to). Re-reads the bitfield and, when it
    /// claims a longer feed whose signature verifies, moves to that length. A length
    /// caught mid-write is ignored until a later call. Returns whether the feed grew.
    ///
    /// Callers poll this often, so an unchanged bitfield is not read again: when the
    /// store's size and modification time are those of the last read, and that
    /// modification lay [`REFRESH_STAMP_MARGIN`] before the read, nothing was written
    /// since (a write within the file system's timestamp granularity of the last read is
    /// not trusted to change the time, so such a bitfield is read again).
    ///
    /// `now` is the wall-clock time of this call, taken before it (the storage layer reads
    /// no clock): it is compared with the file system's modification times.
    pub fn refresh(&mut self, now: SystemTime) -> Result<bool, FeedError> {
        let stamp = self.store.bitfield_stamp();
        if let (Some(current), Some((seen, read_at))) = (stamp, self.refreshed) {
            if current == seen && current.modified + REFRESH_STAMP_MARGIN <= read_at {
                return Ok(false);
            }
        }
        let read_at = now;
        let bitfield = Bitfield::from_pages(self.store.read_bitfield()?);
        self.refreshed = stamp.map(|s| (s, read_at));
        let claimed = bitfield::blocks(&bitfield, bitfield.tree_bit_len()).min(MAX_LENGTH);
        if claimed <= self.length {
            return Ok(false);
        }
        let previous = std::mem::replace(&mut self.bitfield, bitfield);
        match self.verified_roots(claimed) {
            Ok(Some(roots)) => {
                self.length = claimed;
                self.byte_length = roots.iter().map(|r| r.size).sum();
                self.roots = roots;
                self.recount_held();
                // What was just read is what the disk holds.
                self.committed = None;
                Ok(true)
            }
            Ok(None) => {
                // Caught mid-write: read again next time whatever the stamp says.
                self.refreshed = None;
                self.bitfield = previous;
                Ok(false)
            }
            Err(e) => {
                self.refreshed = None;
                self.bitfield = previous;
                Err(e)
            }
        }
    }

    /// Lets [`Feed::put`] leave the bitfield pages it changes unwritten until
    /// [`Feed::flush`] (or [`Feed::sync`]): one page write per batch of downloads instead
    /// of one per block. Blocks stored but not yet flushed are simply not held after a
    /// crash (their bits are the commit point), so nothing unverified is ever trusted.
    pub fn set_deferred_commit(&mut self, defer: bool) {
        self.defer_commit = defer;
    }

    /// Writes the bitfield pages changed by deferred downloads.
    pub fn flush(&mut self) -> Result<(), FeedError> {
        self.commit()
    }

    /// Block `index` for sending to a remote, without re-hashing it: the remote verifies
    /// it against the tree anyway (as JS, which never re-checks on upload). `None` when it
    /// is not held.
    pub fn get_for_upload(&self, index: u64) -> Result<Option<Vec<u8>>, FeedError> {
        if index >= self.length || !self.bitfield.has_block(index) {
            return Ok(None);
        }
        if let Some(data) = self.caches().blocks.get(index) {
            return Ok(Some(data.to_vec()));
        }
        let leaf = self.node(2 * index)?.ok_or_else(|| {
            FeedError::Corrupt(format!(
                "block {index} is held but its tree node is missing"
            ))
        })?;
        let offset = self.block_offset(index, &[])?;
        let data = self.store.read_data(offset, leaf.size)?;
        self.remember_offset(index, offset, leaf.size);
        self.caches().blocks.put(index, &data);
        Ok(Some(data))
    }

    /// Chooses when appends are durable.
    pub fn set_durability(&mut self, durability: Durability) {
        self.durability = durability;
    }

    /// The public key.
    pub fn key(&self) -> [u8; 32] {
        self.key
    }

    /// The discovery key (what names the feed on the wire).
    pub fn discovery_key(&self) -> [u8; 32] {
        self.discovery_key
    }

    /// Whether this feed holds its secret key.
    pub fn is_writable(&self) -> bool {
        self.writer.is_some()
    }

    /// The number of blocks in the feed (held or not).
    pub fn length(&self) -> u64 {
        self.length
    }

    /// The total byte length of the blocks in the feed.
    pub fn byte_length(&self) -> u64 {
        self.byte_length
    }

    /// The roots at the current length, ascending.
    pub fn roots(&self) -> &[Node] {
        &self.roots
    }

    /// The tree hash at the current length.
    pub fn tree_hash(&self) -> [u8; 32] {
        merkle::tree_hash(&self.roots)
    }

    /// The bitfield (blocks and tree nodes held).
    pub fn bitfield(&self) -> &Bitfield {
        &self.bitfield
    }

    /// Gives the store back (closing the feed).
    pub fn into_store(self) -> S {
        self.store
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Whether block `index` is held.
    pub fn has(&self, index: u64) -> bool {
        self.bitfield.has_block(index)
    }

    /// The number of blocks held in `[start, end)` (counted from the bitfield: for the
    /// whole feed, [`Feed::held`] is the same number without counting).
    pub fn downloaded(&self, start: u64, end: u64) -> u64 {
        self.bitfield.count_blocks(start, end)
    }

    /// The number of blocks held below the length, `downloaded(0, length())`, kept up to
    /// date as blocks are appended, downloaded or rolled back (what progress reports per
    /// block, at no cost).
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Whether every block of the feed is held.
    pub fn has_all(&self) -> bool {
        self.held == self.length
    }

    /// The stored signature for `length`, if any.
    pub fn signature_at(&self, length: u64) -> Result<Option<[u8; 64]>, FeedError> {
        if length == 0 {
            return Ok(None);
        }
        Ok(self.store.read_signature(length - 1)?)
    }

    /// The stored signature for the current length.
    pub fn signature(&self) -> Result<Option<[u8; 64]>, FeedError> {
        self.signature_at(self.length)
    }

    /// The roots at `length` (at most the current length), read from the store.
    pub fn roots_at(&self, length: u64) -> Result<Vec<Node>, FeedError> {
        if length == self.length {
            return Ok(self.roots.clone());
        }
        flat_tree::full_roots(2 * length)
            .into_iter()
            .map(|i| {
                self.node(i)?
                    .ok_or_else(|| FeedError::Corrupt(format!("missing root {i}")))
            })
            .collect()
    }

    /// Tree node `index` if stored.
    pub fn node(&self, index: u64) -> Result<Option<Node>, FeedError> {
        if !self.bitfield.has_node(index) {
            return Ok(None);
        }
        if let Some(node) = self.caches().nodes.get(index) {
            return Ok(Some(node));
        }
        match self.store.read_node(index)? {
            Some(node) => {
                self.caches().nodes.put(node);
                Ok(Some(node))
            }
            None => Err(FeedError::Corrupt(format!(
                "tree node {index} is marked but blank"
            ))),
        }
    }

    /// Appends one block.
    pub fn append(&mut self, block: &[u8]) -> Result<u64, FeedError> {
        self.append_batch(&[block])
    }

    /// Appends blocks as one batch: one signature (for the new length) and one ordered
    /// write of each kind. Returns the new length.
    pub fn append_batch<B: AsRef<[u8]>>(&mut self, blocks: &[B]) -> Result<u64, FeedError> {
        let writer = self.writer.as_ref().ok_or(FeedError::NotWritable)?;
        if blocks.is_empty() {
            return Ok(self.length);
        }
        for b in blocks {
            if b.as_ref().len() > MAX_BLOCK_SIZE {
                return Err(FeedError::BlockTooLarge(b.as_ref().len()));
            }
        }
        let start = self.length;
        if start + blocks.len() as u64 > MAX_LENGTH {
            return Err(FeedError::TooLong);
        }
        let mut roots = self.roots.clone();
        let mut nodes = Vec::with_capacity(blocks.len() * 2);
        let total: usize = blocks.iter().map(|b| b.as_ref().len()).sum();
        for (k, b) in blocks.iter().enumerate() {
            let leaf = Node::leaf(start + k as u64, b.as_ref());
            nodes.push(leaf);
            roots.push(leaf);
            // Merge while the last two roots are siblings (merkle-tree-stream).
            while roots.len() >= 2 {
                let right = roots[roots.len() - 1];
                let left = roots[roots.len() - 2];
                if flat_tree::sibling(right.index) != left.index {
                    break;
                }
                let parent = Node::parent_of(&left, &right);
                roots.truncate(roots.len() - 2);
                roots.push(parent);
                nodes.push(parent);
            }
        }
        let new_length = start + blocks.len() as u64;
        let tree_hash = merkle::tree_hash(&roots);
        let signature = Signer::sign(writer, &tree_hash, new_length);

        if blocks.len() == 1 {
            self.store
                .write_data(self.byte_length, blocks[0].as_ref())?;
        } else {
            let mut data = Vec::with_capacity(total);
            for b in blocks {
                data.extend_from_slice(b.as_ref());
            }
            self.store.write_data(self.byte_length, &data)?;
        }
        self.store.write_nodes(&nodes)?;
        self.store.write_signature(new_length - 1, &signature)?;
        {
            let mut c = self.caches();
            for n in &nodes {
                c.nodes.put(*n);
            }
            for (i, b) in (start..).zip(blocks) {
                c.blocks.put(i, b.as_ref());
            }
        }

        self.begin_change();
        for i in start..new_length {
            self.bitfield.set_block(i, true);
            TreeBits::set(&mut self.bitfield, 2 * i);
        }
        self.set_length(new_length);
        self.byte_length += total as u64;
        self.roots = roots;
        self.commit()?;
        Ok(new_length)
    }

    /// Keeps the length, byte length and roots as they are (committed) before the first
    /// change since the last commit; see [`Feed::commit`].
    fn begin_change(&mut self) {
        if self.committed.is_none() {
            self.committed = Some(Committed {
                length: self.length,
                byte_length: self.byte_length,
                roots: self.roots.clone(),
            });
        }
    }

    /// Writes the bitfield pages that commit what was written before them.
    ///
    /// When that fails (a full disk, an I/O error), the feed returns to its last committed
    /// state: the appends and downloads since are forgotten (their blocks, nodes and
    /// signatures lie past what the bitfield commits, so they are simply overwritten or
    /// fetched again later) and memory says what reopening the disk would. The pages a
    /// failed write may have half-written are written back as they were; if that fails
    /// too they stay dirty, and the next commit writes them.
    fn commit(&mut self) -> Result<(), FeedError> {
        if !self.bitfield.is_dirty() {
            self.committed = None;
            return Ok(());
        }
        match self.write_dirty_pages() {
            Ok(()) => {
                self.bitfield.mark_written();
                self.committed = None;
                Ok(())
            }
            Err(e) => {
                self.rollback();
                let pages = self.bitfield.dirty_pages();
                match self.store.write_bitfield(&pages) {
                    Ok(()) => self.bitfield.mark_written(),
                    Err(again) => tracing::warn!(
                        error = %again,
                        "restoring the bitfield after a failed commit failed; retried at the next commit"
                    ),
                }
                if self.writer.is_some() && !self.store.is_read_only() {
                    // As on reopen: a writer keeps nothing past its length (this also
                    // drops a stale signature an aborted batch left at its end).
                    self.clear_caches();
                    if let Err(again) = self.store.truncate(self.byte_length, self.length) {
                        tracing::warn!(error = %again, "trimming after a failed commit failed");
                    }
                }
                Err(e)
            }
        }
    }

    /// The writes of [`Feed::commit`]: the bitfield pages, with fsyncs around them for
    /// power-loss durability.
    fn write_dirty_pages(&mut self) -> Result<(), FeedError> {
        if self.durability == Durability::Power {
            self.store.sync_data()?;
        }
        let pages = self.bitfield.dirty_pages();
        self.store.write_bitfield(&pages)?;
        if self.durability == Durability::Power {
            self.store.sync_bitfield()?;
        }
        Ok(())
    }

    /// Returns memory to the last committed state (see [`Feed::commit`]).
    fn rollback(&mut self) {
        let undone = self.bitfield.rollback();
        if let Some(c) = self.committed.take() {
            self.length = c.length;
            self.byte_length = c.byte_length;
            self.roots = c.roots;
        }
        self.recount_held();
        if undone {
            tracing::warn!(
                length = self.length,
                "writing the bitfield failed: the feed is back at its last committed length"
            );
        }
        // The hint may point past a block that is no longer held.
        *self.offset_hint() = None;
    }

    /// Makes everything so far durable on disk (fsync).
    pub fn sync(&mut self) -> Result<(), FeedError> {
        self.store.sync_data()?;
        self.commit()?;
        self.store.sync_bitfield()?;
        Ok(())
    }

    fn caches(&self) -> std::sync::MutexGuard<'_, Caches> {
        match self.caches.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Forgets cached nodes and blocks (the store is being cut back: indexes past the
    /// new end may be written again with other content).
    fn clear_caches(&self) {
        let mut c = self.caches();
        c.nodes.clear();
        c.blocks.clear();
    }

    fn offset_hint(&self) -> std::sync::MutexGuard<'_, Option<(u64, u64)>> {
        match self.next_offset.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Remembers where block `index + 1` starts, given block `index`'s offset and size.
    fn remember_offset(&self, index: u64, offset: u64, size: u64) {
        *self.offset_hint() = Some((index.saturating_add(1), offset.saturating_add(size)));
    }

    /// Byte offset of block `index` in the data: the sizes of the roots left of it.
    fn block_offset(&self, index: u64, extra: &[Node]) -> Result<u64, FeedError> {
        if let Some((next, offset)) = *self.offset_hint() {
            if next == index {
                return Ok(offset);
            }
        }
        let mut offset = 0u64;
        for r in flat_tree::full_roots(2 * index) {
            let node = match extra.iter().find(|n| n.index == r) {
                Some(n) => *n,
                None => self.node(r)?.ok_or_else(|| {
                    FeedError::Corrupt(format!("missing tree node {r} for block offset"))
                })?,
            };
            offset = offset.saturating_add(node.size);
        }
        Ok(offset)
    }

    /// Block `index`, or `None` when it is not held. The bytes are checked against the
    /// tree: a mismatch is [`FeedError::Corrupt`].
    pub fn get(&self, index: u64) -> Result<Option<Vec<u8>>, FeedError> {
        if index >= self.length || !self.bitfield.has_block(index) {
            return Ok(None);
        }
        let leaf = self.node(2 * index)?.ok_or_else(|| {
            FeedError::Corrupt(format!(
                "block {index} is held but its tree node is missing"
            ))
        })?;
        let offset = self.block_offset(index, &[])?;
        let data = self.store.read_data(offset, leaf.size)?;
        if merkle::leaf_hash(&data) != leaf.hash {
            return Err(FeedError::Corrupt(format!(
                "block {index} does not match its hash"
            )));
        }
        Ok(Some(data))
    }

    /// `digest(2 * index)`: what to put in a Request's `nodes` for block `index`.
    pub fn digest(&self, index: u64) -> u64 {
        bitfield::digest(&self.bitfield, self.bitfield.tree_bit_len(), 2 * index)
    }

    /// The proof of block `index` for a remote that says (`digest`) and is known
    /// (`remote`, updated here) to hold some nodes. `hash_only` puts the block's own node
    /// first. Errors with [`FeedError::NotHeld`] when we lack the block's tree node.
    pub fn proof(
        &self,
        index: u64,
        digest: u64,
        remote: &mut NodeSet,
        hash_only: bool,
    ) -> Result<Proof, FeedError> {
        self.proof_in(&self.bitfield, index, digest, remote, hash_only)
    }

    /// The proof of block `index` against the feed as it was at `length` blocks (at most
    /// the current length): `verified_by` is then `2 * length`, so every block proven
    /// against one announced length shares one signature. A seller serving many buyers
    /// their rekeyed views coalesces per-buyer signatures this way.
    pub fn proof_at(
        &self,
        index: u64,
        digest: u64,
        remote: &mut NodeSet,
        hash_only: bool,
        length: u64,
    ) -> Result<Proof, FeedError> {
        if length >= self.length {
            return self.proof(index, digest, remote, hash_only);
        }
        if index >= length {
            return Err(FeedError::NotHeld(index));
        }
        let view = bitfield::Prefix {
            bitfield: &self.bitfield,
            length,
        };
        self.proof_in(&view, index, digest, remote, hash_only)
    }

    fn proof_in<T: TreeBits>(
        &self,
        tree: &T,
        index: u64,
        digest: u64,
        remote: &mut NodeSet,
        hash_only: bool,
    ) -> Result<Proof, FeedError> {
        let leaf = 2 * index;
        if index >= MAX_LENGTH || !tree.get(leaf) {
            return Err(FeedError::NotHeld(index));
        }
        let mut indexes = Vec::new();
        if hash_only {
            indexes.push(leaf);
        }
        if digest == 1 {
            return self.proof_nodes(indexes, 0);
        }
        let mut next = leaf;
        let has_root = digest & 1 == 1;
        let mut digest = digest >> 1;
        while digest != 0 {
            if flat_tree::depth(next) >= 60 {
                break;
            }
            if digest == 1 && has_root {
                if tree.get(next) {
                    remote.set(next);
                }
                if flat_tree::sibling(next) < next {
                    next = flat_tree::sibling(next);
                }
                for r in flat_tree::full_roots(flat_tree::right_span(next) + 2) {
                    if tree.get(r) {
                        remote.set(r);
                    }
                }
                break;
            }
            let sibling = flat_tree::sibling(next);
            if digest & 1 == 1 && tree.get(sibling) {
                remote.set(sibling);
            }
            next = flat_tree::parent(next);
            digest >>= 1;
        }

        let mut next = leaf;
        while !remote.get(next) {
            let sibling = flat_tree::sibling(next);
            if !tree.get(sibling) {
                // `next` is one of our roots.
                let verified_by = bitfield::verified_by(tree, next);
                for r in flat_tree::full_roots(verified_by) {
                    if r != next && !remote.get(r) {
                        indexes.push(r);
                    }
                }
                return self.proof_nodes(indexes, verified_by);
            }
            if !remote.get(sibling) {
                indexes.push(sibling);
            }
            next = flat_tree::parent(next);
            if flat_tree::depth(next) >= 60 {
                break;
            }
        }
        self.proof_nodes(indexes, 0)
    }

    fn proof_nodes(&self, indexes: Vec<u64>, verified_by: u64) -> Result<Proof, FeedError> {
        let nodes = indexes
            .into_iter()
            .map(|i| {
                self.node(i)?
                    .ok_or_else(|| FeedError::Corrupt(format!("missing tree node {i}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Proof { nodes, verified_by })
    }

    /// Benchmarks only, not part of the API: from now on [`Feed::put`] takes the remote's
    /// signature over a proof's roots on trust. It still hashes the proof up to the roots
    /// and refuses a proof without a signature, but nothing binds those roots to the key
    /// any more: the remote is trusted. It lets the market bench run many light buyers
    /// beside the seller it measures; nothing in the library or the CLI calls it, and a
    /// feed checks every signature unless told otherwise.
    #[doc(hidden)]
    pub fn skip_signature_checks_for_bench(&mut self) {
        self.check_signatures = false;
    }

    /// Verifies a remote's block (`value`; `None` for a hash-only answer) with its proof
    /// nodes and signature against this feed's key, and only then stores it.
    pub fn put(
        &mut self,
        index: u64,
        value: Option<&[u8]>,
        proof_nodes: &[Node],
        signature: Option<&[u8; 64]>,
    ) -> Result<PutOutcome, FeedError> {
        if index >= MAX_LENGTH {
            return Err(VerifyError::TooLong(index).into());
        }
        if let Some(v) = value {
            if v.len() > MAX_BLOCK_SIZE {
                return Err(VerifyError::BlockTooLarge(v.len()).into());
            }
        }
        for n in proof_nodes {
            if n.index >= 2 * MAX_LENGTH {
                return Err(VerifyError::TooLong(n.index / 2).into());
            }
        }
        // Step 1 (JS _putBuffer): walk up from the leaf to a trusted node, taking the
        // siblings from the proof or, failing that, from our tree.
        let mut trusted: Option<u64> = None;
        let mut local_idx: Vec<u64> = Vec::new();
        let mut next = 2 * index;
        let mut i = if value.is_some() { 0 } else { 1 };
        loop {
            if self.bitfield.has_node(next) {
                trusted = Some(next);
                break;
            }
            if flat_tree::depth(next) >= 60 {
                break;
            }
            let sib = flat_tree::sibling(next);
            next = flat_tree::parent(next);
            if i < proof_nodes.len() && proof_nodes[i].index == sib {
                i += 1;
                continue;
            }
            if !self.bitfield.has_node(sib) {
                break;
            }
            local_idx.push(sib);
        }
        if trusted.is_none() && self.bitfield.has_node(next) {
            trusted = Some(next);
        }
        let trusted_node = match trusted {
            Some(t) => self.node(t)?,
            None => None,
        };
        let mut local_nodes = Vec::with_capacity(local_idx.len());
        for l in local_idx {
            if let Some(n) = self.node(l)? {
                local_nodes.push(n);
            }
        }

        // Step 2 (JS _verifyAndWrite): hash up to the trusted node or to a root.
        let mut remote: std::collections::VecDeque<Node> = proof_nodes.iter().copied().collect();
        let mut local: std::collections::VecDeque<Node> = local_nodes.into();
        let mut visited: Vec<Node> = Vec::new();
        let mut top = match value {
            Some(v) => Node::leaf(index, v),
            None => {
                let n = remote.pop_front().ok_or(VerifyError::EmptyProof)?;
                if n.index != 2 * index {
                    return Err(
                        VerifyError::Malformed("hash-only proof starts with another node").into(),
                    );
                }
                n
            }
        };
        let matches_trusted =
            |n: &Node| trusted_node.is_some_and(|t| t.index == n.index && t.hash == n.hash);
        if matches_trusted(&top) {
            return self.write_verified(index, value, top, visited, None, None);
        }
        loop {
            if flat_tree::depth(top.index) >= 60 {
                return Err(VerifyError::Malformed("tree too deep").into());
            }
            let sib = flat_tree::sibling(top.index);
            let node = if remote.front().is_some_and(|n| n.index == sib) {
                let n = remote.pop_front().ok_or(VerifyError::EmptyProof)?;
                visited.push(n);
                n
            } else if local.front().is_some_and(|n| n.index == sib) {
                local.pop_front().ok_or(VerifyError::EmptyProof)?
            } else {
                return self.verify_roots_and_write(
                    index,
                    value,
                    top,
                    proof_nodes,
                    remote,
                    visited,
                    signature,
                );
            };
            visited.push(top);
            top = Node::parent_of(&top, &node);
            if matches_trusted(&top) {
                return self.write_verified(index, value, top, visited, None, None);
            }
        }
    }

    /// Step 3 (JS _verifyRootsAndWrite): `top` is a root; check the signature over the
    /// roots of the length the proof reaches.
    #[allow(clippy::too_many_arguments)]
    fn verify_roots_and_write(
        &mut self,
        index: u64,
        value: Option<&[u8]>,
        top: Node,
        proof_nodes: &[Node],
        mut remote: std::collections::VecDeque<Node>,
        mut visited: Vec<Node>,
        signature: Option<&[u8; 64]>,
    ) -> Result<PutOutcome, FeedError> {
        let last = proof_nodes.last().map_or(top.index, |n| n.index);
        let verified_by = flat_tree::right_span(top.index).max(flat_tree::right_span(last)) + 2;
        let length = verified_by / 2;
        if length > MAX_LENGTH {
            return Err(VerifyError::TooLong(length).into());
        }
        let mut roots = Vec::new();
        for r in flat_tree::full_roots(verified_by) {
            if r == top.index {
                roots.push(top);
                visited.push(top);
            } else if remote.front().is_some_and(|n| n.index == r) {
                let n = remote.pop_front().ok_or(VerifyError::MissingRoots)?;
                roots.push(n);
                visited.push(n);
            } else if let Some(n) = self.node(r)? {
                roots.push(n);
            } else {
                return Err(VerifyError::MissingRoots.into());
            }
        }
        let tree_hash = merkle::tree_hash(&roots);
        match signature {
            Some(_) if !self.check_signatures => {}
            Some(sig) => {
                verify_signature(&self.key, &tree_hash, length, sig)
                    .map_err(|_| VerifyError::BadSignature)?;
            }
            None if self.length > 0 || self.store.read_signature(0)?.is_some() => {
                return Err(VerifyError::MissingSignature.into());
            }
            None => {
                if tree_hash != self.key {
                    return Err(VerifyError::BadChecksum.into());
                }
            }
        }
        let top_for_write = top;
        self.write_verified(
            index,
            value,
            top_for_write,
            visited,
            signature.map(|s| (length, *s)),
            Some(roots),
        )
    }

    /// Writes a verified block and its nodes: nodes, data, signature, then the bitfield.
    fn write_verified(
        &mut self,
        index: u64,
        value: Option<&[u8]>,
        _top: Node,
        nodes: Vec<Node>,
        signature: Option<(u64, [u8; 64])>,
        roots: Option<Vec<Node>>,
    ) -> Result<PutOutcome, FeedError> {
        // Nodes first, so that the data offset can be computed from them too. Nodes whose
        // tree bit is set are stored already with this very hash (both verified against
        // the same signed roots), so pipelined proofs that repeat them cost no writes.
        let fresh: Vec<Node> = nodes
            .iter()
            .filter(|n| !self.bitfield.has_node(n.index))
            .copied()
            .collect();
        self.store.write_nodes(&fresh)?;
        {
            let mut c = self.caches();
            for n in &fresh {
                c.nodes.put(*n);
            }
        }
        if let Some(v) = value {
            let offset = self.block_offset(index, &nodes)?;
            self.store.write_data(offset, v)?;
            self.remember_offset(index, offset, v.len() as u64);
        }
        let mut new_length = None;
        if let Some((length, sig)) = signature {
            self.store.write_signature(length - 1, &sig)?;
        }
        self.begin_change();
        if let Some((length, _)) = signature {
            if length > self.length {
                if let Some(roots) = roots {
                    self.byte_length = roots.iter().map(|r| r.size).sum();
                    self.roots = roots;
                }
                self.set_length(length);
                new_length = Some(length);
            }
        } else if let Some(roots) = roots {
            // Unsigned (non-live) feed: the key is the root hash.
            let length = roots
                .last()
                .map_or(0, |r| (flat_tree::right_span(r.index) + 2) / 2);
            if length > self.length {
                self.byte_length = roots.iter().map(|r| r.size).sum();
                self.roots = roots;
                self.set_length(length);
                new_length = Some(length);
            }
        }
        for n in &nodes {
            TreeBits::set(&mut self.bitfield, n.index);
        }
        TreeBits::set(&mut self.bitfield, 2 * index);
        let new_block = value.is_some() && self.bitfield.set_block(index, true);
        if new_block && index < self.length {
            self.held += 1;
        }
        if !self.defer_commit {
            self.commit()?;
        }
        Ok(PutOutcome {
            new_block,
            new_length,
        })
    }
}

/// Clears one tree bit (crash repair only; the tree-index never clears otherwise).
fn clear_tree_bit(bf: &mut Bitfield, n: u64) {
    bf.clear_node(n);
}
