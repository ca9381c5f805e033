//! How often the plugin may call Stripe: a token bucket per lane (search, everything
//! else) and Stripe's own `429 Too Many Requests` + `Retry-After`, honoured by not
//! calling that lane at all until the time is up.
//!
//! Stripe limits an account's search calls to about 20 a second and its other calls to
//! 100 (live) or 25 (test mode) a second, and answers 429 past that. Without a budget,
//! a seller searching once per connected key would exhaust the search limit with ~40
//! keys, and strangers connecting with random keys could starve the paying buyers'
//! revalidations. So every request takes a token first; when none is left the call is
//! not made and the caller answers from what it already knows (or fails closed).
//!
//! Buyers the plugin already knows to have paid ([`Priority::Known`]) may use the whole
//! bucket; unknown keys ([`Priority::Unknown`]) only what is above a reserve, so a flood
//! of strangers cannot take the last tokens from a paying buyer.
//!
//! Everything takes `now` as an argument, so the tests drive the clock.

use std::time::{Duration, Instant};

/// The longest `Retry-After` honoured: a larger value (a broken or hostile proxy) would
/// otherwise silence the plugin for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
/// The wait after a 429 that carries no usable `Retry-After`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Who a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A buyer with payments on record: may use the reserve.
    Known,
    /// A key with no payment known (a stranger, or a buyer about to pay).
    Unknown,
}

/// Why a request may not be made now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Stripe answered 429; calls resume after this long.
    RetryAfter(Duration),
    /// The request budget is used up for now.
    Budget,
}

/// A token bucket: `rate` tokens a second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `per_second` (at least one a second), holding
    /// `burst` tokens (at least one second's worth).
    pub fn new(per_second: u32, burst: u32, now: Instant) -> TokenBucket {
        let rate = f64::from(per_second.max(1));
        let burst = f64::from(burst).max(rate);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        // A clock that went backwards (it cannot with `Instant`, but a caller may pass
        // an older `now`) adds nothing.
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if now > self.last {
            self.last = now;
        }
    }

    /// Takes one token if at least `1 + reserve` are there.
    pub fn try_take(&mut self, now: Instant, reserve: f64) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 + reserve {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Tokens held at most.
    pub fn burst(&self) -> f64 {
        self.burst
    }
}

/// One lane of calls to Stripe: its budget and, after a 429, when it may call again.
#[derive(Debug, Clone)]
pub struct Lane {
    bucket: TokenBucket,
    blocked_until: Option<Instant>,
    /// Tokens only [`Priority::Known`] requests may take.
    reserve: f64,
}

impl Lane {
    /// A lane allowing `per_second` requests, `burst` at once (at least a second's
    /// worth), a quarter of its bucket reserved for known buyers.
    pub fn new(per_second: u32, burst: u32, now: Instant) -> Lane {
        let bucket = TokenBucket::new(per_second, burst, now);
        // With a bucket of one or two tokens there is nothing to split.
        let reserve = (bucket.burst() / 4.0).floor();
        Lane {
            bucket,
            blocked_until: None,
            reserve,
        }
    }

    /// Whether a request may go out now; takes its token if so.
    pub fn admit(&mut self, now: Instant, priority: Priority) -> Result<(), Denied> {
        if let Some(until) = self.blocked_until {
            if now < until {
                return Err(Denied::RetryAfter(until - now));
            }
            self.blocked_until = None;
        }
        let reserve = match priority {
            Priority::Known => 0.0,
            Priority::Unknown => self.reserve,
        };
        if self.bucket.try_take(now, reserve) {
            Ok(())
        } else {
            Err(Denied::Budget)
        }
    }

    /// Stripe answered 429 with `retry_after` (already capped): no request on this
    /// lane until then.
    pub fn block(&mut self, now: Instant, retry_after: Duration) {
        let until = now + retry_after.min(MAX_RETRY_AFTER);
        // Two answers racing: keep the later end.
        self.blocked_until = Some(self.blocked_until.map_or(until, |u| u.max(until)));
    }
}

/// Reads a `Retry-After` value as Stripe sends it: whole seconds. Anything else (absent,
/// an HTTP date, garbage) waits [`DEFAULT_RETRY_AFTER`]; values are capped at
/// [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: Option<&str>) -> Duration {
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_RETRY_AFTER, |s| {
            Duration::from_secs(s).min(MAX_RETRY_AFTER)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_its_rate_and_no_more() {
        let t0 = Instant::now();
        let mut lane = Lane::new(20, 0, t0);
        // A full second's worth at once (known buyers may take the reserve too).
        let burst = (0..100)
            .filter(|_| lane.admit(t0, Priority::Known).is_ok())
            .count();
        assert_eq!(burst, 20);
        assert_eq!(lane.admit(t0, Priority::Known), Err(Denied::Budget));
        // Then 20 a second: over 10 s of asking every millisecond, 200 more.
        let mut granted = 0;
        for ms in 1..=10_000u64 {
            if lane
                .admit(t0 + Duration::from_millis(ms), Priority::Known)
                .is_ok()
            {
                granted += 1;
            }
        }
        assert!((199..=201).contains(&granted), "{granted}");
    }

    #[test]
    fn strangers_cannot_take_the_reserve() {
        let t0 = Instant::now();
        let mut lane = Lane::new(20, 0, t0);
        let strangers = (0..100)
            .filter(|_| lane.admit(t0, Priority::Unknown).is_ok())
            .count();
        assert_eq!(strangers, 15, "a quarter of 20 is kept back");
        assert_eq!(lane.admit(t0, Priority::Unknown), Err(Denied::Budget));
        let known = (0..100)
            .filter(|_| lane.admit(t0, Priority::Known).is_ok())
            .count();
        assert_eq!(known, 5);
    }

    #[test]
    fn retry_after_stops_every_call_until_it_is_over() {
        let t0 = Instant::now();
        let mut lane = Lane::new(20, 0, t0);
        lane.block(t0, Duration::from_secs(3));
        for ms in [0u64, 1, 1500, 2999] {
            let now = t0 + Duration::from_millis(ms);
            assert_eq!(
                lane.admit(now, Priority::Known),
                Err(Denied::RetryAfter(Duration::from_millis(3000 - ms)))
            );
        }
        assert_eq!(
            lane.admit(t0 + Duration::from_secs(3), Priority::Known),
            Ok(())
        );
        // A shorter Retry-After arriving late does not shorten a longer one.
        lane.block(t0, Duration::from_secs(10));
        lane.block(t0, Duration::from_secs(1));
        assert!(lane
            .admit(t0 + Duration::from_secs(5), Priority::Known)
            .is_err());
    }

    #[test]
    fn retry_after_values() {
        assert_eq!(parse_retry_after(Some("2")), Duration::from_secs(2));
        assert_eq!(parse_retry_after(Some(" 0 ")), Duration::ZERO);
        assert_eq!(parse_retry_after(None), DEFAULT_RETRY_AFTER);
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            DEFAULT_RETRY_AFTER
        );
        assert_eq!(parse_retry_after(Some("99999999")), MAX_RETRY_AFTER);
    }
}
