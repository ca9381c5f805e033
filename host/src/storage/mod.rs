//! Hypercore v9 logs: Merkle tree over the blocks, signed roots, proofs, bitfield,
//! and the stores behind them. No tokio here.

pub mod flat_tree;
