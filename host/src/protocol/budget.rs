//! A seller's signature budget: how often its rekeyed channels announce growth.
//!
//! Each buyer of a product has its own rekeyed feed key, so each announcement of growth
//! costs one Ed25519 signature per buyer (the Data messages of one announcement share
//! it). At a fixed announce interval the signatures grow with buyers x time: 1,000 live
//! buyers at 40 ms are 25,000 signatures a second, a third of a core on this project's
//! 2-core test machine. The budget spreads a number of signatures per second over the
//! channels that announce: with few buyers the interval stays at its floor (the channel's
//! own `announce_interval_ms`), with many it widens so that all of them together sign
//! about `per_second` times a second, and never beyond [`MAX_INTERVAL_MS`] (latency
//! matters more than CPU past that point).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// Signatures per second a process spends on announcements by default, about a fifth
/// of a core at the ~10 µs an Ed25519 signature costs here (`cargo bench -p dazaar
/// --bench feed` prints it).
pub const DEFAULT_SIGNATURES_PER_SECOND: u64 = 20_000;

/// The longest interval the budget stretches an announcement to.
pub const MAX_INTERVAL_MS: u64 = 100;

/// Shared by the announcing channels of a process (or of whatever shares it).
#[derive(Debug)]
pub struct SignatureBudget {
    per_second: AtomicU64,
    announcing: AtomicUsize,
}

impl SignatureBudget {
    /// A budget of `per_second` signatures a second (at least 1).
    pub fn new(per_second: u64) -> Arc<Self> {
        Arc::new(Self {
            per_second: AtomicU64::new(per_second.max(1)),
            announcing: AtomicUsize::new(0),
        })
    }

    /// The process-wide budget ([`DEFAULT_SIGNATURES_PER_SECOND`] until set).
    pub fn global() -> Arc<Self> {
        static GLOBAL: OnceLock<Arc<SignatureBudget>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| Self::new(DEFAULT_SIGNATURES_PER_SECOND))
            .clone()
    }

    /// Changes the budget (a seller's `[limits] signatures_per_second`).
    pub fn set_per_second(&self, per_second: u64) {
        self.per_second.store(per_second.max(1), Ordering::Relaxed);
    }

    /// The budget in signatures per second.
    pub fn per_second(&self) -> u64 {
        self.per_second.load(Ordering::Relaxed)
    }

    /// Channels counted as announcing now.
    pub fn announcing(&self) -> usize {
        self.announcing.load(Ordering::Relaxed)
    }

    /// The announce interval for a channel whose own interval is `floor_ms`.
    pub fn interval_ms(&self, floor_ms: u64) -> u64 {
        let n = u64::try_from(self.announcing()).unwrap_or(u64::MAX);
        let spread = n.saturating_mul(1000) / self.per_second();
        spread.min(MAX_INTERVAL_MS).max(floor_ms)
    }

    /// Counts a channel as announcing until the returned guard is dropped.
    pub fn enter(self: &Arc<Self>) -> Announcing {
        self.announcing.fetch_add(1, Ordering::Relaxed);
        Announcing(Arc::clone(self))
    }
}

/// One announcing channel's place in a [`SignatureBudget`].
#[derive(Debug)]
pub struct Announcing(Arc<SignatureBudget>);

impl Drop for Announcing {
    fn drop(&mut self) {
        self.0.announcing.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_widens_with_announcing_channels_within_its_bounds() {
        let b = SignatureBudget::new(10_000);
        assert_eq!(b.interval_ms(40), 40, "no channel: the floor");
        let mut guards: Vec<_> = (0..1000).map(|_| b.enter()).collect();
        // 1,000 channels over 10,000 signatures a second: 100 ms each.
        assert_eq!(b.interval_ms(40), 100);
        guards.truncate(600);
        assert_eq!(b.interval_ms(40), 60);
        assert_eq!(
            b.interval_ms(80),
            80,
            "never below the channel's own interval"
        );
        guards.extend((0..10_000).map(|_| b.enter()));
        assert_eq!(b.interval_ms(40), MAX_INTERVAL_MS, "capped");
        drop(guards);
        assert_eq!(b.announcing(), 0);
        assert_eq!(b.interval_ms(0), 0);
    }
}
