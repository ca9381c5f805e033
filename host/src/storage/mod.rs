//! Hypercore v9 logs: Merkle tree over the blocks, signed roots, proofs, bitfield,
//! and the stores behind them. No tokio here.

pub mod bitfield;
pub mod cache;
pub mod dir;
pub mod feed;
pub mod flat_tree;
pub mod merkle;
pub mod store;

pub use bitfield::NodeSet;
pub use dir::{open_feed_dir, Access, FeedDirError};
pub use feed::{
    Durability, Feed, FeedError, Proof, PutOutcome, RekeyedSigner, Signer, VerifyError,
    REFRESH_STAMP_MARGIN,
};
pub use merkle::Node;
pub use store::{BitfieldStamp, FsStore, MemStore, Store, StoreError};

#[cfg(test)]
mod tests;
