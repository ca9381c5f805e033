//! Flat-tree index arithmetic (`flat-tree@1`): the nodes of the Merkle tree numbered
//! in order, leaves even (block `i` is node `2i`), parents odd.
//!
//! ```text
//! depth 2:            3
//! depth 1:      1           5
//! depth 0:   0     2     4     6
//! ```

/// Index of the node at `depth` and `offset` (position among the nodes of that depth).
pub fn index(depth: u32, offset: u64) -> u64 {
    ((1 + 2 * offset) << depth) - 1
}

/// The depth of node `i`: its number of trailing one bits.
pub fn depth(i: u64) -> u32 {
    (!i).trailing_zeros()
}

/// The offset of node `i` among the nodes of its depth.
pub fn offset(i: u64) -> u64 {
    let d = depth(i);
    if d == 0 {
        i / 2
    } else {
        ((i + 1) >> d).saturating_sub(1) / 2
    }
}

/// The parent of node `i`.
pub fn parent(i: u64) -> u64 {
    let d = depth(i);
    index(d + 1, offset(i) >> 1)
}

/// The other child of `parent(i)`.
pub fn sibling(i: u64) -> u64 {
    let d = depth(i);
    index(d, offset(i) ^ 1)
}

/// The left child of `i`, or `None` for a leaf.
pub fn left_child(i: u64) -> Option<u64> {
    let d = depth(i);
    if d == 0 {
        None
    } else {
        Some(index(d - 1, offset(i) * 2))
    }
}

/// The right child of `i`, or `None` for a leaf.
pub fn right_child(i: u64) -> Option<u64> {
    let d = depth(i);
    if d == 0 {
        None
    } else {
        Some(index(d - 1, offset(i) * 2 + 1))
    }
}

/// The leftmost leaf under `i`.
pub fn left_span(i: u64) -> u64 {
    let d = depth(i);
    if d == 0 {
        i
    } else {
        offset(i) * (2u64 << d)
    }
}

/// The rightmost leaf under `i`.
pub fn right_span(i: u64) -> u64 {
    let d = depth(i);
    if d == 0 {
        i
    } else {
        (offset(i) + 1) * (2u64 << d) - 2
    }
}

/// The roots of a tree whose leaves are `[0, index)` (so `full_roots(2 * n)` are the
/// roots of a feed with `n` blocks), in ascending order.
pub fn full_roots(index: u64) -> Vec<u64> {
    let mut roots = Vec::new();
    let mut remaining = index / 2;
    let mut offset = 0u64;
    while remaining > 0 {
        // Largest power of two not above `remaining`.
        let factor = 1u64 << (63 - remaining.leading_zeros());
        roots.push(offset + factor - 1);
        offset += 2 * factor;
        remaining -= factor;
    }
    roots
}

/// Whether `i` is a node of the tree of a feed with `length` blocks, that is, all the
/// leaves under it are below `2 * length`.
pub fn within(i: u64, length: u64) -> bool {
    right_span(i) < 2 * length
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples() {
        assert_eq!(full_roots(2 * 3), vec![1, 4]);
        assert_eq!(full_roots(2 * 5), vec![3, 8]);
        assert_eq!(full_roots(2 * 6), vec![3, 9]);
        assert_eq!(full_roots(2 * 7), vec![3, 9, 12]);
        assert_eq!(full_roots(2 * 8), vec![7]);
        assert_eq!(full_roots(0), Vec::<u64>::new());
        assert_eq!(parent(4), 5);
        assert_eq!(sibling(1), 5);
        assert_eq!(right_span(7), 14);
        assert_eq!(left_span(7), 0);
        assert_eq!(depth(3), 2);
        assert_eq!(offset(5), 1);
        assert_eq!(index(2, 1), 11);
        assert_eq!(left_child(3), Some(1));
        assert_eq!(right_child(3), Some(5));
        assert_eq!(left_child(4), None);
        assert_eq!(parent(0), 1);
        assert_eq!(parent(1), 3);
        assert_eq!(sibling(0), 2);
        assert_eq!(sibling(3), 11);
    }

    #[test]
    fn children_and_parents_agree() {
        for i in 0..2000u64 {
            let p = parent(i);
            assert!(
                left_child(p) == Some(i) || right_child(p) == Some(i),
                "node {i}"
            );
            assert_eq!(parent(sibling(i)), p);
            assert!(left_span(i) <= i && i <= right_span(i));
        }
    }
}
