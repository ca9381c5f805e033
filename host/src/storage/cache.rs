//! In-memory caches in front of a [`super::Store`]: tree nodes and recent blocks.
//!
//! A seller answers every buyer's Request with a Merkle proof and the block; with a
//! thousand buyers following the head of a feed, the same few hundred nodes and blocks
//! are read a thousand times each. Without a cache each read is a `pread` (a profile of
//! the market bench at 1,000 buyers spent 64% of the seller's CPU in `read_node`).
//! JS `hypercore@9` keeps a node cache of the same size (`storageCacheSize`, 65,536
//! entries).
//!
//! Both are direct-mapped (a slot per `index % slots`, the newer entry wins): no list
//! to maintain, one comparison per lookup, and the entries a replicating feed reads
//! (nodes and blocks near the head, or a sequential sweep) fall in distinct slots.
//! Written by hand rather than taken from an LRU crate: a lookup is an index and one
//! compare with no hashing and no reordering, memory is allocated by page only where
//! slots are used (a buyer following one feed allocates a few pages), and tree nodes
//! never change once written, which an LRU's bookkeeping would not use.
//!
//! Entries never go stale by themselves: tree nodes and blocks are immutable once
//! written. The owner clears both when the feed is truncated (crash repair, a failed
//! commit rolled back, or another process shortened the feed).

use super::merkle::Node;

/// Slots in the node cache (JS `storageCacheSize`).
pub const NODE_SLOTS: usize = 65_536;
/// Slots per lazily allocated page of the node cache.
const NODE_PAGE: usize = 1024;
/// Slots in the block cache.
pub const BLOCK_SLOTS: usize = 1024;
/// Largest block the block cache keeps (larger ones are read from the store).
pub const BLOCK_MAX: usize = 64 * 1024;
/// Most bytes of blocks the block cache holds; past it, a new block evicts the one in
/// its slot only (and is not cached if that does not make room).
pub const BLOCK_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Marks an empty node slot (no tree node has this index: it would be past the
/// largest feed the flat tree can address).
const EMPTY: u64 = u64::MAX;

/// Tree nodes by flat-tree index.
#[derive(Default)]
pub struct NodeCache {
    pages: Vec<Option<Box<[Node]>>>,
}

impl std::fmt::Debug for NodeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCache")
            .field("pages", &self.pages.iter().filter(|p| p.is_some()).count())
            .finish()
    }
}

impl NodeCache {
    fn slot(index: u64) -> (usize, usize) {
        // The low bits of the index: in range by construction.
        let slot = (index % NODE_SLOTS as u64) as usize;
        (slot / NODE_PAGE, slot % NODE_PAGE)
    }

    /// Node `index`, if cached.
    pub fn get(&self, index: u64) -> Option<Node> {
        let (page, at) = Self::slot(index);
        let node = self.pages.get(page)?.as_ref()?.get(at)?;
        (node.index == index && index != EMPTY).then_some(*node)
    }

    /// Caches `node` (replacing whatever shared its slot).
    pub fn put(&mut self, node: Node) {
        if node.index == EMPTY {
            return;
        }
        let (page, at) = Self::slot(node.index);
        if self.pages.len() <= page {
            self.pages.resize_with(page + 1, || None);
        }
        let Some(entry) = self.pages.get_mut(page) else {
            return;
        };
        let slots = entry.get_or_insert_with(|| {
            vec![
                Node {
                    index: EMPTY,
                    hash: [0; 32],
                    size: 0
                };
                NODE_PAGE
            ]
            .into_boxed_slice()
        });
        if let Some(slot) = slots.get_mut(at) {
            *slot = node;
        }
    }

    /// Forgets every node.
    pub fn clear(&mut self) {
        self.pages = Vec::new();
    }
}

/// Recent blocks by index, bounded in count ([`BLOCK_SLOTS`]) and bytes
/// ([`BLOCK_BYTES_MAX`]).
#[derive(Debug, Default)]
pub struct BlockCache {
    slots: Vec<Option<(u64, Box<[u8]>)>>,
    bytes: usize,
}

impl BlockCache {
    /// Block `index`, if cached.
    pub fn get(&self, index: u64) -> Option<&[u8]> {
        match self.slots.get((index % BLOCK_SLOTS as u64) as usize)? {
            Some((i, data)) if *i == index => Some(data),
            _ => None,
        }
    }

    /// Caches block `index` if it is small enough and there is room. Whatever happens,
    /// no other content for `index` stays cached.
    pub fn put(&mut self, index: u64, data: &[u8]) {
        if self.slots.is_empty() {
            if data.len() > BLOCK_MAX {
                return;
            }
            self.slots.resize_with(BLOCK_SLOTS, || None);
        }
        let Some(slot) = self.slots.get_mut((index % BLOCK_SLOTS as u64) as usize) else {
            return;
        };
        let freed = slot.as_ref().map_or(0, |(_, d)| d.len());
        let after = self.bytes - freed + data.len();
        if data.len() > BLOCK_MAX || after > BLOCK_BYTES_MAX {
            // Not cached: the slot is emptied if it held this index (other content may
            // have been written there since), and kept otherwise.
            if slot.as_ref().is_some_and(|(i, _)| *i == index) {
                *slot = None;
                self.bytes -= freed;
            }
            return;
        }
        *slot = Some((index, data.into()));
        self.bytes = after;
    }

    /// Forgets every block.
    pub fn clear(&mut self) {
        self.slots = Vec::new();
        self.bytes = 0;
    }

    /// Bytes of blocks held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(index: u64) -> Node {
        Node {
            index,
            hash: [index as u8; 32],
            size: index.wrapping_mul(3),
        }
    }

    #[test]
    fn nodes_are_found_by_index_and_a_slot_holds_the_newest() {
        let mut c = NodeCache::default();
        assert_eq!(c.get(5), None);
        c.put(node(5));
        assert_eq!(c.get(5), Some(node(5)));
        // Same slot, other index: the newer one replaces it; the old one is a miss,
        // never the wrong node.
        let other = 5 + NODE_SLOTS as u64;
        c.put(node(other));
        assert_eq!(c.get(5), None);
        assert_eq!(c.get(other), Some(node(other)));
        // Pages are allocated where used only.
        assert_eq!(c.pages.iter().filter(|p| p.is_some()).count(), 1);
        c.clear();
        assert_eq!(c.get(other), None);
    }

    #[test]
    fn an_empty_slot_never_answers_for_the_sentinel_index() {
        let mut c = NodeCache::default();
        c.put(node(1));
        assert_eq!(c.get(EMPTY), None);
        c.put(node(EMPTY));
        assert_eq!(c.get(EMPTY), None);
    }

    #[test]
    fn blocks_are_bounded_in_size_and_total_bytes() {
        let mut c = BlockCache::default();
        c.put(1, b"one");
        assert_eq!(c.get(1), Some(&b"one"[..]));
        assert_eq!(c.get(1 + BLOCK_SLOTS as u64), None);
        c.put(1 + BLOCK_SLOTS as u64, b"other");
        assert_eq!(c.get(1), None);
        assert_eq!(c.bytes(), 5);
        c.put(2, &vec![0; BLOCK_MAX + 1]);
        assert_eq!(c.get(2), None, "too large to cache");
        // New content for a cached index that is not cached itself still evicts the old.
        c.put(3, b"old");
        c.put(3, &vec![0; BLOCK_MAX + 1]);
        assert_eq!(c.get(3), None, "stale content was kept");
        let big = vec![7u8; BLOCK_MAX];
        for i in 0..BLOCK_SLOTS as u64 {
            c.put(i, &big);
        }
        assert!(c.bytes() <= BLOCK_BYTES_MAX, "{}", c.bytes());
        c.clear();
        assert_eq!(c.bytes(), 0);
        assert_eq!(c.get(0), None);
    }
}
