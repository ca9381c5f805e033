//! A seller's side of data pricing: one [`ByteMeter`] per buyer of a product (bounded),
//! and reserving bytes of a buyer's allowance in the seller's state before they are sent.
//!
//! The plugin grants an allowance: every byte the buyer's payments bought
//! ([`GrantKind::BYTES`](dazaar_plugin_api::GrantKind::BYTES)). The state store counts
//! the bytes reserved for the buyer (`StateStore::add_bytes`); a connection reserves a
//! chunk ([`reservation`]) into its meter's credit, sends blocks against it, and reserves
//! again when the credit runs short. The count in the store is what the buyer is charged
//! with: it survives restarts and is shared between nodes that share the state. A crash
//! loses at most the unsent credit of one reservation, on the seller's side.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::protocol::meter::{reservation, ByteMeter};
use crate::state::{LazyState, StateError};

/// The reason sent as `dazaar/invalid` when a buyer's paid data is all sent.
pub const DATA_USED_UP: &str = "paid data is used up";

/// The reason sent when a product meters as many buyers as it may and none is idle.
pub const TOO_MANY_METERED: &str = "the seller is serving too many buyers, try later";

/// The most buyers one product meters at once.
pub const MAX_METERS: usize = 16_384;

/// One product's meters, by buyer key, at most `max`.
#[derive(Debug)]
pub struct Meters {
    map: Mutex<HashMap<[u8; 32], Arc<ByteMeter>>>,
    max: usize,
}

impl Meters {
    /// No meters yet; at most `max` at once.
    pub fn new(max: usize) -> Meters {
        Meters {
            map: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// `buyer`'s meter (kept across its connections, so reserved credit is not lost on a
    /// reconnect). At the bound, meters no connection uses are forgotten (with the credit
    /// they held: reserved, so the seller loses nothing); `None` when every meter is in
    /// use.
    pub fn get(&self, buyer: [u8; 32]) -> Option<Arc<ByteMeter>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = map.get(&buyer) {
            return Some(Arc::clone(m));
        }
        if map.len() >= self.max {
            map.retain(|_, m| Arc::strong_count(m) > 1);
            if map.len() >= self.max {
                return None;
            }
        }
        let meter = Arc::new(ByteMeter::new());
        map.insert(buyer, Arc::clone(&meter));
        Some(meter)
    }

    /// Meters held now.
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether no meter is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a reservation left: the bytes of the allowance not yet sent or reserved, plus
/// the meter's credit, is what the buyer has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserved {
    /// Bytes added to the meter's credit now.
    pub added: u64,
    /// Bytes the buyer still has: unreserved allowance plus unsent credit.
    pub remaining: u64,
}

/// Reserves the next chunk of `buyer`'s `allowance` (bytes bought in all) of `seller`'s
/// product in the state and adds it to `meter`. Blocking (a state write): call it off
/// the async threads. Two nodes reserving at once may together pass the allowance: the
/// store's new total says how much of this chunk was really left, and only that is
/// credited.
pub fn reserve(
    state: &LazyState,
    seller: &[u8; 32],
    buyer: &[u8; 32],
    allowance: u64,
    meter: &ByteMeter,
) -> Result<Reserved, StateError> {
    let store = state.get()?;
    let used = store.bytes(seller, buyer)?;
    let left = allowance.saturating_sub(used);
    if left == 0 {
        meter.add_credit(0, true);
        return Ok(Reserved {
            added: 0,
            remaining: meter.credit(),
        });
    }
    let chunk = reservation(left);
    let total = store.add_bytes(seller, buyer, chunk)?;
    let before = total.saturating_sub(chunk);
    let added = chunk.min(allowance.saturating_sub(before));
    meter.add_credit(added, total >= allowance);
    Ok(Reserved {
        added,
        remaining: allowance
            .saturating_sub(total)
            .saturating_add(meter.credit()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StatePlace;

    #[test]
    fn reservations_reach_the_allowance_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let state = LazyState::new(&StatePlace::default_in(dir.path()));
        let (seller, buyer) = ([1; 32], [2; 32]);
        let meter = ByteMeter::new();
        let r = reserve(&state, &seller, &buyer, 50_000, &meter).unwrap();
        assert_eq!(r.added, 16_384);
        assert_eq!(r.remaining, 50_000);
        let mut sent = 0;
        while meter.try_spend(1000) {
            sent += 1000;
        }
        assert_eq!(sent, 16_000);
        let mut rounds = 0;
        loop {
            let r = reserve(&state, &seller, &buyer, 50_000, &meter).unwrap();
            while meter.try_spend(1000) {
                sent += 1000;
            }
            rounds += 1;
            if r.added == 0 {
                break;
            }
        }
        assert_eq!(sent, 50_000, "after {rounds} rounds");
        // The count survives: a new meter (a restart) gets nothing more.
        let again = ByteMeter::new();
        let r = reserve(&state, &seller, &buyer, 50_000, &again).unwrap();
        assert_eq!((r.added, r.remaining), (0, 0));
        assert!(!again.try_spend(1));
        // A raised allowance gives more.
        let r = reserve(&state, &seller, &buyer, 150_000, &again).unwrap();
        assert_eq!(r.added, 25_000);
        assert_eq!(r.remaining, 100_000);
    }

    #[test]
    fn meters_are_bounded() {
        let meters = Meters::new(2);
        let a = meters.get([1; 32]).unwrap();
        let _b = meters.get([2; 32]).unwrap();
        assert!(Arc::ptr_eq(&a, &meters.get([1; 32]).unwrap()));
        assert!(meters.get([3; 32]).is_none(), "both in use");
        drop(a);
        assert!(meters.get([3; 32]).is_some(), "an idle meter gave way");
        assert_eq!(meters.len(), 2);
    }
}
