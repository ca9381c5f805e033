//! Waits between retries after failures, for a plugin that reconnects to or polls a
//! backend: exponential, capped. Pure: the caller counts failures and keeps the clock.

use std::time::Duration;

/// How long to wait after failures in a row: `base` after the first, doubling with each
/// further failure, never more than `max`.
///
/// There is no jitter: a plugin talks to its own backend (one LND node, one account's
/// history), so there is no crowd of clients to spread out, and the waits stay exact
/// for tests in virtual time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    /// Waits starting at `base`, capped at `max` (which wins if it is below `base`).
    pub const fn new(base: Duration, max: Duration) -> Backoff {
        Backoff { base, max }
    }

    /// The wait after `failures` failures in a row: zero for none, else
    /// `base * 2^(failures - 1)`, at most `max`. Never overflows.
    pub fn wait(&self, failures: u32) -> Duration {
        let Some(doublings) = failures.checked_sub(1) else {
            return Duration::ZERO;
        };
        // Past 2^31 the product is past any cap worth having; saturate instead.
        let factor = 1u32 << doublings.min(31);
        self.base.saturating_mul(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let b = Backoff::new(ms(200), ms(1000));
        let waits: Vec<_> = (0..6).map(|n| b.wait(n)).collect();
        assert_eq!(
            waits,
            [ms(0), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
    }

    #[test]
    fn a_cap_below_the_base_wins() {
        let b = Backoff::new(ms(200), ms(50));
        assert_eq!(b.wait(1), ms(50));
        assert_eq!(b.wait(0), ms(0));
    }

    #[test]
    fn never_overflows() {
        let b = Backoff::new(ms(200), Duration::MAX);
        assert_eq!(b.wait(32), ms(200) * (1 << 31));
        assert_eq!(b.wait(u32::MAX), ms(200) * (1 << 31));
        let b = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(b.wait(u32::MAX), Duration::MAX);
        let b = Backoff::new(ms(1), Duration::from_secs(30));
        assert_eq!(b.wait(u32::MAX), Duration::from_secs(30));
    }
}
