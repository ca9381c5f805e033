//! The BLAKE2b-256 Merkle hashing of hypercore v9 (`hypercore-crypto@2`): leaves, parents,
//! the tree hash over the roots, and the signable.

use crate::crypto::blake2b256;

/// Prefix byte of a leaf hash.
const LEAF_TYPE: u8 = 0;
/// Prefix byte of a parent hash.
const PARENT_TYPE: u8 = 1;
/// Prefix byte of a tree (root) hash.
const ROOT_TYPE: u8 = 2;

/// A node of the Merkle tree: its flat-tree index, its hash, and the byte size of the
/// blocks under it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Node {
    /// Flat-tree index (block `i` is node `2i`).
    pub index: u64,
    /// BLAKE2b-256 hash.
    pub hash: [u8; 32],
    /// Total byte length of the blocks under this node.
    pub size: u64,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Node({}, {}, {})",
            self.index,
            hex::encode(&self.hash[..8]),
            self.size
        )
    }
}

impl Node {
    /// The leaf node of block `block` holding `data`.
    pub fn leaf(block: u64, data: &[u8]) -> Self {
        Node {
            index: 2 * block,
            hash: leaf_hash(data),
            size: data.len() as u64,
        }
    }

    /// The parent of two sibling nodes (in either order).
    pub fn parent_of(a: &Node, b: &Node) -> Self {
        let (left, right) = if a.index <= b.index { (a, b) } else { (b, a) };
        Node {
            index: super::flat_tree::parent(left.index),
            hash: parent_hash(left, right),
            size: left.size.saturating_add(right.size),
        }
    }
}

/// `BLAKE2b-256(0x00 ‖ u64be(len) ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> [u8; 32] {
    blake2b256(&[&[LEAF_TYPE], &(data.len() as u64).to_be_bytes(), data])
}

/// `BLAKE2b-256(0x01 ‖ u64be(left.size + right.size) ‖ left.hash ‖ right.hash)`.
pub fn parent_hash(left: &Node, right: &Node) -> [u8; 32] {
    let size = left.size.saturating_add(right.size);
    blake2b256(&[&[PARENT_TYPE], &size.to_be_bytes(), &left.hash, &right.hash])
}

/// The tree hash: `BLAKE2b-256(0x02 ‖ for each root: hash ‖ u64be(index) ‖ u64be(size))`,
/// roots in ascending index order.
pub fn tree_hash(roots: &[Node]) -> [u8; 32] {
    let mut state = blake2b_simd::Params::new().hash_length(32).to_state();
    state.update(&[ROOT_TYPE]);
    for root in roots {
        state.update(&root.hash);
        state.update(&root.index.to_be_bytes());
        state.update(&root.size.to_be_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(state.finalize().as_bytes());
    out
}

/// The 40-byte signable of a feed at `length`: `tree_hash(roots) ‖ u64be(length)`.
pub fn signable(roots: &[Node], length: u64) -> [u8; 40] {
    signable_from_hash(&tree_hash(roots), length)
}

/// The 40-byte signable from an already computed tree hash.
pub fn signable_from_hash(tree_hash: &[u8; 32], length: u64) -> [u8; 40] {
    let mut out = [0u8; 40];
    out[..32].copy_from_slice(tree_hash);
    out[32..].copy_from_slice(&length.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples() {
        assert_eq!(
            hex::encode(leaf_hash(b"hello")),
            "6717b25f24d96ccbc95166bacbb671d59eb4263ee5e1aa0f6b1520815cbee80b"
        );
        let a = Node::leaf(0, b"a");
        let b = Node::leaf(1, b"b");
        let c = Node::leaf(2, b"c");
        let ab = Node::parent_of(&b, &a);
        assert_eq!(ab.index, 1);
        assert_eq!(ab.size, 2);
        assert_eq!(
            hex::encode(ab.hash),
            "064321a8413be8c604599689e2c7a59367b031b598bceeeb16556a8f3252e0de"
        );
        assert_eq!(
            hex::encode(tree_hash(&[ab, c])),
            "831f94a88d8a401c88e7628b2b92cbc17c6bbf4bc2d31e241eeedd6f9e89ed47"
        );
        assert_eq!(&signable(&[ab, c], 3)[32..], &[0, 0, 0, 0, 0, 0, 0, 3]);
    }
}
