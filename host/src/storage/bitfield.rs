//! The hypercore v9 bitfield (`lib/bitfield.js`, `sparse-bitfield`, `memory-pager`) and the
//! tree-index algorithms over tree bits (`lib/tree-index.js`).
//!
//! One page of 3584 bytes holds three regions that share the page numbering:
//! data bits (1024 bytes: block `i` is bit `i`, MSB first), tree bits (2048 bytes: flat
//! node `n`), and the index region (512 bytes: a flat tree summarising the data bytes,
//! used by JS to skip full or empty regions). This is a faithful port so that the pages
//! we write are byte-identical to what JS `hypercore@9` writes.

use std::collections::{BTreeMap, BTreeSet};

use super::flat_tree;

/// Bytes in one bitfield page.
pub const PAGE_SIZE: usize = 3584;

/// One region ("view") of the page, as a `sparse-bitfield` over the shared pager.
#[derive(Clone, Copy)]
struct View {
    page_size: u64,
    offset: usize,
}

const DATA: View = View {
    page_size: 1024,
    offset: 0,
};
const TREE: View = View {
    page_size: 2048,
    offset: 1024,
};
const INDEX: View = View {
    page_size: 512,
    offset: 3072,
};

const DATA_UPDATE_MASK: [u8; 8] = [127, 191, 223, 239, 247, 251, 253, 254];
const INDEX_UPDATE_MASK: [u8; 4] = [63, 207, 243, 252];

fn map_parent_right(b: u8) -> u8 {
    let k = |x: u8| match x {
        15 => 3,
        0 => 0,
        _ => 1,
    };
    (k(b >> 4) << 2) | k(b & 15)
}

fn map_parent_left(b: u8) -> u8 {
    map_parent_right(b) << 4
}

fn index_value(b: u8) -> u8 {
    match b {
        255 => 192,
        0 => 0,
        _ => 64,
    }
}

/// A flat-tree cursor (`flat-tree` Iterator) over index-byte positions.
struct Cursor {
    index: u64,
    offset: u64,
    factor: u64,
}

impl Cursor {
    fn seek(index: u64) -> Self {
        if index & 1 == 1 {
            Cursor {
                index,
                offset: flat_tree::offset(index),
                factor: 2u64 << flat_tree::depth(index),
            }
        } else {
            Cursor {
                index,
                offset: index / 2,
                factor: 2,
            }
        }
    }
    fn is_left(&self) -> bool {
        self.offset & 1 == 0
    }
    /// Moves to the sibling and returns its index.
    fn sibling(&mut self) -> u64 {
        if self.is_left() {
            self.offset += 1;
            self.index += self.factor;
        } else if self.offset > 0 {
            self.offset -= 1;
            self.index -= self.factor;
        }
        self.index
    }
    /// Moves to the parent and returns its index.
    fn parent(&mut self) -> u64 {
        if self.offset & 1 == 1 {
            self.index -= self.factor / 2;
            self.offset = (self.offset - 1) / 2;
        } else {
            self.index += self.factor / 2;
            self.offset /= 2;
        }
        self.factor = self.factor.saturating_mul(2);
        self.index
    }
}

/// The bitfield of a feed: which blocks are held (data bits) and which tree nodes are
/// stored (tree bits), in the on-disk page layout of hypercore v9.
#[derive(Clone, Default)]
pub struct Bitfield {
    pages: BTreeMap<u64, Box<[u8; PAGE_SIZE]>>,
    /// `memory-pager` length: one more than the highest page ever allocated.
    pager_len: u64,
    data_bytes: u64,
    tree_bytes: u64,
    index_bytes: u64,
    /// Pages changed since they were last written (kept after a failed write, so that the
    /// next commit writes them again).
    dirty: BTreeSet<u64>,
    /// How to go back to the state last written, when writing fails: see
    /// [`Bitfield::rollback`]. `None` when nothing changed since.
    undo: Option<Undo>,
}

/// The bitfield as last written: the lengths, and each page changed since as it was then
/// (`None`: not allocated). One page copy per page changed between two commits.
#[derive(Clone)]
struct Undo {
    pager_len: u64,
    data_bytes: u64,
    tree_bytes: u64,
    index_bytes: u64,
    pages: BTreeMap<u64, Option<Box<[u8; PAGE_SIZE]>>>,
}

impl std::fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bitfield")
            .field("pages", &self.pages.len())
            .field("dirty", &self.dirty.len())
            .finish()
    }
}

impl Bitfield {
    /// An empty bitfield.
    pub fn new() -> Self {
        Self::default()
    }

    /// A bitfield from the pages stored on disk (page number, bytes), as JS loads it.
    pub fn from_pages(pages: impl IntoIterator<Item = (u64, Box<[u8; PAGE_SIZE]>)>) -> Self {
        let mut bf = Bitfield::new();
        for (n, page) in pages {
            bf.pager_len = bf.pager_len.max(n + 1);
            if page.iter().any(|&b| b != 0) {
                bf.pages.insert(n, page);
            }
        }
        bf.data_bytes = bf.pager_len * DATA.page_size;
        bf.tree_bytes = bf.pager_len * TREE.page_size;
        bf.index_bytes = bf.pager_len * INDEX.page_size;
        bf
    }

    fn byte_len(&mut self, view: View) -> &mut u64 {
        match view.offset {
            0 => &mut self.data_bytes,
            1024 => &mut self.tree_bytes,
            _ => &mut self.index_bytes,
        }
    }

    fn get_byte(&self, view: View, i: u64) -> u8 {
        let page = i / view.page_size;
        let o = (i % view.page_size) as usize + view.offset;
        self.pages.get(&page).map_or(0, |p| p[o])
    }

    /// `sparse-bitfield` setByte: allocates the page (growing the pager), returns whether
    /// the byte changed.
    fn set_byte(&mut self, view: View, i: u64, b: u8) -> bool {
        let page = i / view.page_size;
        let o = (i % view.page_size) as usize + view.offset;
        if self.get_byte(view, i) != b {
            self.remember_page(page);
        }
        self.pager_len = self.pager_len.max(page + 1);
        let buf = self
            .pages
            .entry(page)
            .or_insert_with(|| Box::new([0u8; PAGE_SIZE]));
        if buf[o] == b {
            return false;
        }
        buf[o] = b;
        let len = self.byte_len(view);
        if i >= *len {
            *len = i + 1;
        }
        self.dirty.insert(page);
        true
    }

    fn get_bit(&self, view: View, i: u64) -> bool {
        self.get_byte(view, i / 8) & (128 >> (i & 7)) != 0
    }

    fn set_bit(&mut self, view: View, i: u64, value: bool) -> bool {
        let j = i / 8;
        let mask = 128u8 >> (i & 7);
        let b = self.get_byte(view, j);
        self.set_byte(view, j, if value { b | mask } else { b & !mask })
    }

    /// Whether block `i` is held.
    pub fn has_block(&self, i: u64) -> bool {
        self.get_bit(DATA, i)
    }

    /// Marks block `i` held or not; returns whether it changed. Keeps the index region
    /// up to date as JS does.
    pub fn set_block(&mut self, i: u64, value: bool) -> bool {
        let o = (i & 7) as usize;
        let byte = i / 8;
        let current = self.get_byte(DATA, byte);
        let v = if value {
            current | (128 >> o)
        } else {
            current & DATA_UPDATE_MASK[o]
        };
        if !self.set_byte(DATA, byte, v) {
            return false;
        }
        self.set_index(byte, v);
        true
    }

    fn set_index(&mut self, data_byte: u64, value: u8) {
        let o = (data_byte & 3) as usize;
        let start = 2 * (data_byte / 4);
        let mut byte =
            (self.get_byte(INDEX, start) & INDEX_UPDATE_MASK[o]) | (index_value(value) >> (2 * o));
        let len = 8 * self.index_bytes;
        let max_length = self.pager_len * INDEX.page_size;
        let mut ite = Cursor::seek(start);
        while ite.index < max_length && self.set_byte(INDEX, ite.index, byte) {
            if ite.is_left() {
                let s = ite.sibling();
                byte = map_parent_left(byte) | map_parent_right(self.get_byte(INDEX, s));
            } else {
                let s = ite.sibling();
                byte = map_parent_right(byte) | map_parent_left(self.get_byte(INDEX, s));
            }
            ite.parent();
        }
        if len != 8 * self.index_bytes {
            self.expand(len);
        }
    }

    fn expand(&mut self, len: u64) {
        for root in flat_tree::full_roots(2 * len) {
            let mut ite = Cursor::seek(root);
            let mut byte = self.get_byte(INDEX, ite.index);
            loop {
                if ite.is_left() {
                    let s = ite.sibling();
                    byte = map_parent_left(byte) | map_parent_right(self.get_byte(INDEX, s));
                } else {
                    let s = ite.sibling();
                    byte = map_parent_right(byte) | map_parent_left(self.get_byte(INDEX, s));
                }
                let p = ite.parent();
                // setByteNoAlloc: only within the index bytes already in use.
                if p.saturating_mul(8) >= 8 * self.index_bytes || !self.set_byte(INDEX, p, byte) {
                    break;
                }
            }
        }
    }

    /// Whether tree node `n` is stored.
    pub fn has_node(&self, n: u64) -> bool {
        self.get_bit(TREE, n)
    }

    /// Sets a raw tree bit (no parent propagation); returns whether it changed.
    fn set_tree_bit(&mut self, n: u64, value: bool) -> bool {
        self.set_bit(TREE, n, value)
    }

    /// Bit length of the tree region as JS sees it (`8 × tree byte length`).
    pub fn tree_bit_len(&self) -> u64 {
        8 * self.tree_bytes
    }

    /// The number of blocks held in `[start, end)`. Visits only the allocated pages in
    /// the range, so a huge range (a remote may sign a length of 2^48) costs no more
    /// than the pages actually held.
    pub fn count_blocks(&self, start: u64, end: u64) -> u64 {
        if start >= end {
            return 0;
        }
        // Blocks per page: the data region's bits.
        const BLOCKS: u64 = DATA.page_size * 8;
        let mut total = 0;
        for (&n, page) in self.pages.range(start / BLOCKS..=(end - 1) / BLOCKS) {
            let first = n * BLOCKS;
            // The part of [start, end) in this page, as bit offsets into its data region.
            let from = start.saturating_sub(first);
            let to = (end - first).min(BLOCKS);
            total += count_bits(&page[..DATA.page_size as usize], from, to);
        }
        total
    }

    /// The data-bitfield bytes for blocks `[start, start + 8 * n)`, `start` a multiple of 8.
    pub fn data_bytes(&self, start: u64, n: u64) -> Vec<u8> {
        let first = start / 8;
        (first..first + n).map(|j| self.get_byte(DATA, j)).collect()
    }

    /// Byte length of the data region in use (JS `bitfield.data.byteLength`).
    pub fn data_byte_len(&self) -> u64 {
        self.data_bytes
    }

    /// The pages changed since they were last written, with their bytes (to be written to
    /// disk). They stay dirty until [`Bitfield::mark_written`]: a write that fails leaves
    /// them to be written again.
    pub fn dirty_pages(&self) -> Vec<(u64, Box<[u8; PAGE_SIZE]>)> {
        self.dirty
            .iter()
            .map(|&n| {
                let page = self
                    .pages
                    .get(&n)
                    .cloned()
                    .unwrap_or_else(|| Box::new([0u8; PAGE_SIZE]));
                (n, page)
            })
            .collect()
    }

    /// Records that the pages [`Bitfield::dirty_pages`] returned are on disk: this state
    /// is the one a later [`Bitfield::rollback`] returns to.
    pub fn mark_written(&mut self) {
        self.dirty.clear();
        self.undo = None;
    }

    /// Undoes every change since the last [`Bitfield::mark_written`] (or since loading),
    /// after writing them failed: the bitfield is again what was last written. The pages
    /// involved stay dirty (they were never marked written), so that the next commit
    /// writes them again: a write that failed halfway may have left some of them changed
    /// on disk. Returns whether anything was undone.
    pub fn rollback(&mut self) -> bool {
        let Some(undo) = self.undo.take() else {
            return false;
        };
        for (n, page) in undo.pages {
            match page {
                Some(p) => {
                    self.pages.insert(n, p);
                }
                None => {
                    self.pages.remove(&n);
                }
            }
        }
        self.pager_len = undo.pager_len;
        self.data_bytes = undo.data_bytes;
        self.tree_bytes = undo.tree_bytes;
        self.index_bytes = undo.index_bytes;
        true
    }

    /// Keeps page `n` as it is now (and the lengths, on the first change) for
    /// [`Bitfield::rollback`], unless it was kept since the last write.
    fn remember_page(&mut self, n: u64) {
        if self.undo.as_ref().is_some_and(|u| u.pages.contains_key(&n)) {
            return;
        }
        let before = self.pages.get(&n).cloned();
        let undo = match &mut self.undo {
            Some(undo) => undo,
            None => self.undo.insert(Undo {
                pager_len: self.pager_len,
                data_bytes: self.data_bytes,
                tree_bytes: self.tree_bytes,
                index_bytes: self.index_bytes,
                pages: BTreeMap::new(),
            }),
        };
        undo.pages.insert(n, before);
    }

    /// Whether there are changed pages not yet written.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// How many pages are held in memory (pages never set, or loaded all zero, are not).
    pub fn allocated_pages(&self) -> usize {
        self.pages.len()
    }

    /// The pages with a bit set, for comparing two bitfields in tests.
    #[cfg(test)]
    pub(crate) fn nonzero_pages(&self) -> Vec<(u64, Vec<u8>)> {
        self.pages
            .iter()
            .filter(|(_, p)| p.iter().any(|&b| b != 0))
            .map(|(n, p)| (*n, p.to_vec()))
            .collect()
    }
}

/// The set bits in `[from, to)` of `bytes` (bit `i` is bit `7 - i % 8` of byte `i / 8`,
/// MSB first, as the data region stores blocks); `to` at most `8 * bytes.len()`.
fn count_bits(bytes: &[u8], from: u64, to: u64) -> u64 {
    let mut total = 0u64;
    let mut i = from;
    while i < to {
        let byte = bytes.get((i / 8) as usize).copied().unwrap_or(0);
        if i.is_multiple_of(8) && i + 8 <= to {
            total += u64::from(byte.count_ones());
            i += 8;
        } else {
            total += u64::from(byte & (128 >> (i & 7)) != 0);
            i += 1;
        }
    }
    total
}

/// Read access to a set of tree nodes, for the tree-index algorithms.
pub trait TreeBits {
    /// Whether node `n` is in the set.
    fn get(&self, n: u64) -> bool;
    /// Adds node `n`; returns whether it changed.
    fn set_raw(&mut self, n: u64) -> bool;

    /// `TreeIndex.set`: adds `n`, then its parents while their other child is present.
    fn set(&mut self, n: u64) -> bool {
        if !self.set_raw(n) {
            return false;
        }
        let mut index = n;
        while flat_tree::depth(index) < 62 && self.get(flat_tree::sibling(index)) {
            index = flat_tree::parent(index);
            if !self.set_raw(index) {
                break;
            }
        }
        true
    }
}

impl TreeBits for Bitfield {
    fn get(&self, n: u64) -> bool {
        self.has_node(n)
    }
    fn set_raw(&mut self, n: u64) -> bool {
        self.set_tree_bit(n, true)
    }
}

/// The tree nodes of a feed as it was at `length` blocks: a view of the stored nodes that
/// hides everything a later append added (for proofs against an earlier signed length).
#[derive(Debug, Clone, Copy)]
pub struct Prefix<'a> {
    /// The stored tree.
    pub bitfield: &'a Bitfield,
    /// The length to see the tree at.
    pub length: u64,
}

impl TreeBits for Prefix<'_> {
    fn get(&self, n: u64) -> bool {
        flat_tree::within(n, self.length) && self.bitfield.has_node(n)
    }
    fn set_raw(&mut self, _n: u64) -> bool {
        // A read-only view.
        false
    }
}

/// A sparse set of tree nodes: what one remote peer is known to hold (the uploader's
/// `remoteTree`). Pages of 4096 bits, allocated on first use.
#[derive(Debug, Default, Clone)]
pub struct NodeSet {
    pages: BTreeMap<u64, Box<[u64; 64]>>,
}

impl NodeSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }
}

impl TreeBits for NodeSet {
    fn get(&self, n: u64) -> bool {
        self.pages
            .get(&(n >> 12))
            .is_some_and(|p| p[((n >> 6) & 63) as usize] & (1 << (n & 63)) != 0)
    }
    fn set_raw(&mut self, n: u64) -> bool {
        let page = self
            .pages
            .entry(n >> 12)
            .or_insert_with(|| Box::new([0u64; 64]));
        let word = &mut page[((n >> 6) & 63) as usize];
        let bit = 1u64 << (n & 63);
        if *word & bit != 0 {
            return false;
        }
        *word |= bit;
        true
    }
}

/// `TreeIndex.verifiedBy(i)`: twice the length of the feed whose roots are covered by
/// the nodes from `i` rightwards, or 0 when `i` is absent.
pub fn verified_by(tree: &impl TreeBits, index: u64) -> u64 {
    if !tree.get(index) {
        return 0;
    }
    let mut top = index;
    while flat_tree::depth(top) < 62
        && tree.get(flat_tree::parent(top))
        && tree.get(flat_tree::sibling(top))
    {
        top = flat_tree::parent(top);
    }
    let mut depth = flat_tree::depth(top);
    while depth > 0 {
        let right = flat_tree::index(depth, flat_tree::offset(top) + 1);
        top = flat_tree::left_child(right).unwrap_or(right);
        depth -= 1;
        while !tree.get(top) && depth > 0 {
            top = flat_tree::left_child(top).unwrap_or(top);
            depth -= 1;
        }
    }
    if tree.get(top) {
        top + 2
    } else {
        top
    }
}

/// `TreeIndex.blocks()`: the feed length the stored tree proves, scanning up to
/// `tree_bit_len` as JS does on open.
pub fn blocks(tree: &impl TreeBits, tree_bit_len: u64) -> u64 {
    let mut top = 0;
    let mut next = 0;
    while flat_tree::right_span(next) < tree_bit_len && flat_tree::depth(next) < 62 {
        next = flat_tree::parent(next);
        if tree.get(next) {
            top = next;
        }
    }
    if tree.get(top) {
        verified_by(tree, top) / 2
    } else {
        0
    }
}

/// `TreeIndex.digest(i)`: what the requester tells the uploader about the nodes it holds
/// on the path of node `i` (the `nodes` field of a Request).
pub fn digest(tree: &impl TreeBits, tree_bit_len: u64, index: u64) -> u64 {
    if tree.get(index) {
        return 1;
    }
    let mut digest: u64 = 0;
    let mut next = flat_tree::sibling(index);
    let max = (next + 2).max(tree_bit_len);
    let mut bit: u64 = 2;
    let mut parent = flat_tree::parent(next);
    while flat_tree::right_span(next) < max || flat_tree::left_span(parent) > 0 {
        if tree.get(next) {
            digest += bit;
        }
        if tree.get(parent) {
            digest += 2 * bit;
            if digest & 1 == 0 {
                digest += 1;
            }
            if digest + 1 == 4 * bit {
                return 1;
            }
            return digest;
        }
        if bit >= 1 << 61 || flat_tree::depth(parent) >= 61 {
            break;
        }
        next = flat_tree::sibling(parent);
        parent = flat_tree::parent(next);
        bit *= 2;
    }
    digest
}

impl Bitfield {
    /// Clears tree bit `n` (used only when a writer drops what a crash left beyond its
    /// recovered length).
    pub fn clear_node(&mut self, n: u64) {
        self.set_tree_bit(n, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_blocks_example() {
        let mut bf = Bitfield::new();
        for i in 0..4 {
            bf.set_block(i, true);
            TreeBits::set(&mut bf, 2 * i);
        }
        let pages = bf.dirty_pages();
        assert_eq!(pages.len(), 1);
        let page = &pages[0].1;
        assert_eq!(page[0], 0xf0);
        assert_eq!(page[1024], 0xfe);
        for pos in [0usize, 1, 3, 7, 15] {
            assert_eq!(page[3072 + pos], 0x40, "index byte {pos}");
        }
    }

    #[test]
    fn digest_examples() {
        let mut empty = NodeSet::new();
        assert_eq!(digest(&empty, 0, 2), 0);
        // A replica holding blocks 0..4 of a feed, asking for block 5: digest 10.
        for i in 0..5 {
            empty.set(2 * i);
        }
        assert_eq!(digest(&empty, 4096, 10), 10);
        // A sparse replica that verified block 3 (holds node 1) asking for block 0: 5.
        let mut sparse = NodeSet::new();
        sparse.set_raw(1);
        sparse.set_raw(6);
        sparse.set_raw(4);
        assert_eq!(digest(&sparse, 4096, 0), 5);
    }

    #[test]
    fn verified_by_and_blocks() {
        let mut tree = NodeSet::new();
        for i in 0..5 {
            tree.set(2 * i);
        }
        assert_eq!(verified_by(&tree, 3), 10);
        assert_eq!(blocks(&tree, 16384), 5);
    }
}
