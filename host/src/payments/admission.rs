//! Admission control for the work strangers can make a seller do: token buckets (per
//! connection, per IP, per plugin, global) and the limits a [`PaymentGate`] applies.
//!
//! Pure state: every decision takes `now` from the caller, so tests advance a virtual
//! clock instead of sleeping.
//!
//! [`PaymentGate`]: super::PaymentGate

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// A token bucket's rate: `burst` at once, then one more every `every`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Tokens a full bucket holds.
    pub burst: u32,
    /// Time to earn one token back (zero: the bucket is always full).
    pub every: Duration,
}

impl RateLimit {
    /// `burst` at once, then one every `every`.
    pub const fn new(burst: u32, every: Duration) -> RateLimit {
        RateLimit { burst, every }
    }

    /// No limit at all (for trusted setups and tests).
    pub const UNLIMITED: RateLimit = RateLimit {
        burst: u32::MAX,
        every: Duration::ZERO,
    };
}

/// The limits a payment gate applies to work that strangers (keys that were never valid)
/// can cause. Buyers that were valid are exempt, except from the per-connection
/// user-message limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct GateLimits {
    /// Plugin checks of unknown keys, per peer IP (IPv6: per /64).
    pub checks_per_ip: RateLimit,
    /// Plugin checks of unknown keys, all peers together.
    pub checks_global: RateLimit,
    /// How long a refusal of an unknown key is reused, even for a new connection of the
    /// same key (at least the revalidation period applies anyway).
    pub refused_for: Duration,
    /// `dazaar/user-message`s per connection.
    pub messages_per_connection: RateLimit,
    /// `dazaar/user-message`s from unknown keys, per peer IP (IPv6: per /64).
    pub messages_per_ip: RateLimit,
    /// `dazaar/user-message`s from unknown keys handed to one entry's plugin.
    pub messages_per_plugin: RateLimit,
    /// How long a buyer that was valid keeps the priority lane after its last valid
    /// answer.
    pub known_for: Duration,
    /// Peer IPs tracked at once per kind of limit; when all are busy, a new IP is refused.
    pub max_tracked_ips: usize,
}

impl Default for GateLimits {
    fn default() -> Self {
        GateLimits {
            // A few fresh checks per address and second (a buyer connects, pays,
            // reconnects); all strangers together get 100 per second, enough to bring a
            // thousand buyers back after a restart in seconds, far below what the
            // backends' own budgets allow.
            checks_per_ip: RateLimit::new(8, Duration::from_millis(250)),
            checks_global: RateLimit::new(256, Duration::from_millis(10)),
            refused_for: Duration::from_secs(3),
            messages_per_connection: RateLimit::new(4, Duration::from_secs(10)),
            messages_per_ip: RateLimit::new(16, Duration::from_secs(2)),
            messages_per_plugin: RateLimit::new(32, Duration::from_millis(200)),
            known_for: Duration::from_secs(24 * 3600),
            max_tracked_ips: 16_384,
        }
    }
}

impl GateLimits {
    /// These limits with fresh checks of unknown keys capped at `per_second` per peer IP
    /// (burst: two seconds' worth), or not capped per IP when `per_second` is 0 (a seller
    /// whose buyers all come through one address, such as a benchmark on loopback).
    pub fn with_checks_per_ip(mut self, per_second: u32) -> GateLimits {
        self.checks_per_ip = match per_second {
            0 => RateLimit::UNLIMITED,
            n => RateLimit::new(
                n.saturating_mul(2),
                Duration::from_nanos(1_000_000_000 / u64::from(n)),
            ),
        };
        self
    }

    /// These limits with fresh checks of unknown keys capped at `per_second` for all peers
    /// together (burst: 256 or two seconds' worth, whichever is more), or not capped
    /// globally when `per_second` is 0.
    pub fn with_checks_global(mut self, per_second: u32) -> GateLimits {
        self.checks_global = match per_second {
            0 => RateLimit::UNLIMITED,
            n => RateLimit::new(
                n.saturating_mul(2).max(256),
                Duration::from_nanos(1_000_000_000 / u64::from(n)),
            ),
        };
        self
    }

    /// These limits with the rates of fresh checks of unknown keys a seller configured
    /// (`[limits] payment_checks_per_ip` and `payment_checks_per_second`, or their flags):
    /// [`with_checks_per_ip`](Self::with_checks_per_ip) and
    /// [`with_checks_global`](Self::with_checks_global) where given, the defaults where not.
    pub fn with_check_rates(self, per_ip: Option<u32>, per_second: Option<u32>) -> GateLimits {
        let limits = match per_ip {
            Some(n) => self.with_checks_per_ip(n),
            None => self,
        };
        match per_second {
            Some(n) => limits.with_checks_global(n),
            None => limits,
        }
    }

    /// No admission limits (every check and message reaches the plugins, as before these
    /// limits existed); the pool's lanes still apply.
    pub fn unlimited() -> GateLimits {
        GateLimits {
            checks_per_ip: RateLimit::UNLIMITED,
            checks_global: RateLimit::UNLIMITED,
            refused_for: Duration::ZERO,
            messages_per_connection: RateLimit::UNLIMITED,
            messages_per_ip: RateLimit::UNLIMITED,
            messages_per_plugin: RateLimit::UNLIMITED,
            ..GateLimits::default()
        }
    }
}

/// A token bucket. It starts full; `now` comes from the caller.
#[derive(Debug, Clone, Default)]
pub struct TokenBucket {
    /// Tokens taken from a full bucket and not yet earned back.
    spent: u32,
    /// When the last token was earned back (or first taken).
    since: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new() -> TokenBucket {
        TokenBucket::default()
    }

    fn refill(&mut self, rate: RateLimit, now: Instant) {
        let Some(since) = self.since else { return };
        let every = rate.every.as_nanos();
        if every == 0 {
            self.spent = 0;
            self.since = None;
            return;
        }
        let earned = now.saturating_duration_since(since).as_nanos() / every;
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        if earned >= self.spent {
            self.spent = 0;
            self.since = None;
        } else if earned > 0 {
            self.spent -= earned;
            // Keep the part of a token already earned; `earned < spent <= u32::MAX`.
            self.since = rate
                .every
                .checked_mul(earned)
                .and_then(|d| since.checked_add(d))
                .or(Some(now));
        }
    }

    /// Whether a token is there at `now`, without taking it.
    pub fn ready(&mut self, rate: RateLimit, now: Instant) -> bool {
        self.refill(rate, now);
        self.spent < rate.burst
    }

    /// Takes a token if there is one at `now`.
    pub fn take(&mut self, rate: RateLimit, now: Instant) -> bool {
        if !self.ready(rate, now) {
            return false;
        }
        if rate.every.is_zero() {
            return true;
        }
        if self.spent == 0 {
            self.since = Some(now);
        }
        self.spent += 1; // < burst <= u32::MAX
        true
    }

    /// Whether the bucket is full at `now` (it may then be forgotten).
    fn full(&mut self, rate: RateLimit, now: Instant) -> bool {
        self.refill(rate, now);
        self.spent == 0
    }
}

/// The key a peer's address is limited under: the IPv4 address, or the IPv6 /64 (one
/// host commonly owns a whole /64). `None`: no address known, one shared bucket.
pub(crate) fn ip_key(ip: Option<IpAddr>) -> Option<IpAddr> {
    match ip? {
        IpAddr::V4(v4) => Some(IpAddr::V4(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Some(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                Some(IpAddr::V6(Ipv6Addr::new(
                    s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                )))
            }
        },
    }
}

/// Token buckets by key, at most `max` of them: full buckets are forgotten when room is
/// needed, and when every bucket is in use a new key gets none.
#[derive(Debug)]
pub(crate) struct BucketMap<K> {
    buckets: HashMap<K, TokenBucket>,
    max: usize,
}

impl<K: Hash + Eq + Clone> BucketMap<K> {
    pub(crate) fn new(max: usize) -> BucketMap<K> {
        BucketMap {
            buckets: HashMap::new(),
            max: max.max(1),
        }
    }

    /// The bucket for `key`, made if there is room; `None` when the map is full of
    /// buckets in use.
    pub(crate) fn bucket(
        &mut self,
        key: &K,
        rate: RateLimit,
        now: Instant,
    ) -> Option<&mut TokenBucket> {
        if !self.buckets.contains_key(key) {
            if self.buckets.len() >= self.max {
                self.buckets.retain(|_, b| !b.full(rate, now));
            }
            if self.buckets.len() >= self.max {
                return None;
            }
            self.buckets.insert(key.clone(), TokenBucket::new());
        }
        self.buckets.get_mut(key)
    }

    /// Buckets held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }
}

/// Takes one token from each of `buckets` at `now`, or none at all if any is empty.
pub(crate) fn take_all(buckets: &mut [(&mut TokenBucket, RateLimit)], now: Instant) -> bool {
    if !buckets.iter_mut().all(|(b, rate)| b.ready(*rate, now)) {
        return false;
    }
    for (b, rate) in buckets.iter_mut() {
        b.take(*rate, now);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let rate = RateLimit::new(3, 100 * MS);
        let t0 = Instant::now();
        let mut b = TokenBucket::new();
        assert!(b.take(rate, t0));
        assert!(b.take(rate, t0));
        assert!(b.take(rate, t0));
        assert!(!b.take(rate, t0));
        assert!(!b.take(rate, t0 + 99 * MS));
        assert!(b.take(rate, t0 + 100 * MS));
        assert!(!b.take(rate, t0 + 150 * MS));
        // The half token earned by 150 ms is kept: the next one is due at 200 ms.
        assert!(b.take(rate, t0 + 200 * MS));
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(3600);
        assert!(b.full(rate, later));
        for _ in 0..3 {
            assert!(b.take(rate, later));
        }
        assert!(!b.take(rate, later));
        // A clock that goes back earns nothing and does not panic.
        assert!(!b.take(rate, t0));
    }

    #[test]
    fn unlimited_and_empty_rates() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new();
        for _ in 0..10_000 {
            assert!(b.take(RateLimit::UNLIMITED, t0));
        }
        let never = RateLimit::new(0, MS);
        assert!(!TokenBucket::new().take(never, t0));
    }

    #[test]
    fn the_global_check_rate_is_set_per_second_or_lifted() {
        let t0 = Instant::now();
        let rate = GateLimits::default().with_checks_global(1000).checks_global;
        assert_eq!(rate, RateLimit::new(2000, Duration::from_millis(1)));
        let slow = GateLimits::default().with_checks_global(10).checks_global;
        assert_eq!(slow, RateLimit::new(256, Duration::from_millis(100)));
        let mut b = TokenBucket::new();
        assert!((0..256).all(|_| b.take(slow, t0)));
        assert!(!b.take(slow, t0));
        assert!(b.take(slow, t0 + Duration::from_millis(100)));
        let lifted = GateLimits::default().with_checks_global(0).checks_global;
        assert_eq!(lifted, RateLimit::UNLIMITED);
        assert_eq!(
            GateLimits::default().with_checks_per_ip(0).checks_global,
            GateLimits::default().checks_global,
            "the per-IP setting leaves the global one"
        );
    }

    #[test]
    fn take_all_takes_from_every_bucket_or_none() {
        let t0 = Instant::now();
        let one = RateLimit::new(1, Duration::from_secs(1));
        let two = RateLimit::new(2, Duration::from_secs(1));
        let (mut a, mut b) = (TokenBucket::new(), TokenBucket::new());
        assert!(take_all(&mut [(&mut a, one), (&mut b, two)], t0));
        // `a` is empty: `b` keeps its second token.
        assert!(!take_all(&mut [(&mut a, one), (&mut b, two)], t0));
        assert!(b.take(two, t0));
        assert!(!b.take(two, t0));
    }

    #[test]
    fn bucket_map_is_bounded_and_forgets_idle_keys() {
        let t0 = Instant::now();
        let rate = RateLimit::new(1, Duration::from_secs(1));
        let mut map = BucketMap::new(2);
        assert!(map.bucket(&1, rate, t0).unwrap().take(rate, t0));
        assert!(map.bucket(&2, rate, t0).unwrap().take(rate, t0));
        // Both in use: a third key gets no bucket (refused), and no memory.
        assert!(map.bucket(&3, rate, t0).is_none());
        assert_eq!(map.len(), 2);
        // Once they are full again they are forgotten to make room.
        let later = t0 + Duration::from_secs(1);
        assert!(map.bucket(&3, rate, later).unwrap().take(rate, later));
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn ipv6_hosts_share_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(Some(a)), ip_key(Some(b)));
        assert_ne!(ip_key(Some(a)), ip_key(Some(c)));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(ip_key(Some(mapped)), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(ip_key(None), None);
    }
}
