//! Price to access: the rules of `payment-tracker@0.1.0` for time, and the data and
//! one-time rules beside them, as pure functions every plugin shares.
//!
//! A card's `unit` picks the rule ([`Unit`], [`Price`]):
//! - time (`seconds`, `minutes`, `hours`): the draining [`Rate`] below;
//! - data (`bytes`, `kilobytes` = 1e3, `megabytes` = 1e6, `gigabytes` = 1e9): `amount` buys
//!   `interval` units of data. Payments add up to an allowance of bytes, which does not
//!   drain over time ([`DataRate`]); the host meters what it sends against it;
//! - `once`: the sum of payments reaching `amount` grants access for good, including
//!   everything appended later; `interval` is ignored ([`OncePrice`]).
//!
//! A card payment entry says "`amount` buys `interval` `unit`s". That gives a rate
//! `per_second = amount / (interval * unit_seconds)`. Payments, in time order, add funds;
//! funds drain at that rate. A payment made before the funds run out stacks on top; once
//! the funds reach zero, the earlier payments no longer count, so a gap earns nothing.
//! Time left is `floor(funds / per_second * 1000)` milliseconds.
//!
//! Two card options shift the moment at which the funds are measured:
//! `minSeconds` moves it later (a buyer must hold at least that many seconds of access),
//! `paymentDelay` (milliseconds) moves it earlier (grace for a payment still in flight).
//!
//! One deliberate difference from the JS package: an unknown unit is an error here, where
//! JS computes an infinite rate.
//!
//! [`Rate::grant`] is a plugin's answer to `validate` once it has gathered the buyer's
//! payments: free, time left, or a [`Refusal`].

use std::fmt;
use std::str::FromStr;

use crate::abi::Grant;

/// Why a price could not be turned into a rate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PricingError {
    /// The unit is none of [`Unit::NAMES`].
    #[error("unknown unit {0:?} (expected seconds, minutes, hours, bytes, kilobytes, megabytes, gigabytes or once)")]
    UnknownUnit(String),
    /// A time rate was asked for a card priced by data or once.
    #[error("unit {0:?} is not a time unit")]
    NotTime(String),
    /// The amount over the interval is too large or too small a number of bytes per unit
    /// of money to compute with.
    #[error("amount {amount:?} per {interval:?} {unit} is not a usable price")]
    BadDataRate {
        /// The card's amount.
        amount: String,
        /// The card's interval.
        interval: String,
        /// The card's unit.
        unit: DataUnit,
    },
    /// The amount is not a positive finite number.
    #[error("amount {0:?} is not a positive number")]
    BadAmount(String),
    /// The interval is not a positive finite number.
    #[error("interval {0:?} is not a positive number")]
    BadInterval(String),
    /// The amount over the interval is too large or too small a rate to compute with
    /// (it would be infinite, or round to zero, which means free).
    #[error("amount {amount:?} per {interval:?} {unit} is not a usable rate")]
    BadRate {
        /// The card's amount.
        amount: String,
        /// The card's interval.
        interval: String,
        /// The card's unit.
        unit: TimeUnit,
    },
    /// `minSeconds` is negative or not finite.
    #[error("minSeconds {0} is not a non-negative number")]
    BadMinSeconds(f64),
}

/// The time unit of a card payment entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeUnit {
    /// One second.
    Seconds,
    /// Sixty seconds.
    Minutes,
    /// 3600 seconds.
    Hours,
}

impl TimeUnit {
    /// The length of one unit in seconds.
    pub fn seconds(self) -> f64 {
        match self {
            TimeUnit::Seconds => 1.0,
            TimeUnit::Minutes => 60.0,
            TimeUnit::Hours => 3600.0,
        }
    }

    /// The name used on Dazaar cards.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeUnit::Seconds => "seconds",
            TimeUnit::Minutes => "minutes",
            TimeUnit::Hours => "hours",
        }
    }
}

impl fmt::Display for TimeUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TimeUnit {
    type Err = PricingError;

    /// Parses the card spelling exactly as the JS code compares it (`seconds`, `minutes`,
    /// `hours`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "seconds" => Ok(TimeUnit::Seconds),
            "minutes" => Ok(TimeUnit::Minutes),
            "hours" => Ok(TimeUnit::Hours),
            other => Err(PricingError::UnknownUnit(other.to_owned())),
        }
    }
}

/// A price turned into a draining rate, with the card's window options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    per_second: f64,
    min_seconds: f64,
    payment_delay_ms: u64,
}

fn positive(text: &str) -> Option<f64> {
    let v: f64 = text.trim().parse().ok()?;
    (v.is_finite() && v > 0.0).then_some(v)
}

impl Rate {
    /// Builds a rate from a card entry's `amount`, `unit` and `interval` (as text, since
    /// cards carry them as strings or numbers). A card's rate is never free: a price so
    /// extreme that its rate overflows or rounds to zero is an error.
    pub fn from_card(amount: &str, unit: &str, interval: &str) -> Result<Rate, PricingError> {
        let unit: TimeUnit = unit.parse()?;
        let amount_v = positive(amount).ok_or_else(|| PricingError::BadAmount(amount.into()))?;
        let interval_v =
            positive(interval).ok_or_else(|| PricingError::BadInterval(interval.into()))?;
        let per_second = amount_v / (interval_v * unit.seconds());
        if !(per_second.is_finite() && per_second > 0.0) {
            return Err(PricingError::BadRate {
                amount: amount.into(),
                interval: interval.into(),
                unit,
            });
        }
        Ok(Rate::per_second(per_second))
    }

    /// A rate of `per_second` units of money per second, without window options.
    /// A rate of zero (or below, or not finite) means free, as in payment-tracker.
    pub fn per_second(per_second: f64) -> Rate {
        Rate {
            per_second: if per_second.is_finite() && per_second > 0.0 {
                per_second
            } else {
                0.0
            },
            min_seconds: 0.0,
            payment_delay_ms: 0,
        }
    }

    /// Sets the card's `minSeconds` (seconds of access a buyer must hold to be active).
    pub fn with_min_seconds(mut self, min_seconds: f64) -> Result<Rate, PricingError> {
        if !(min_seconds.is_finite() && min_seconds >= 0.0) {
            return Err(PricingError::BadMinSeconds(min_seconds));
        }
        self.min_seconds = min_seconds;
        Ok(self)
    }

    /// Sets the card's `paymentDelay` in milliseconds (grace for a payment in flight).
    pub fn with_payment_delay_ms(mut self, payment_delay_ms: u64) -> Rate {
        self.payment_delay_ms = payment_delay_ms;
        self
    }

    /// Money per second.
    pub fn rate_per_second(&self) -> f64 {
        self.per_second
    }

    /// Whether the rate is zero: access is free.
    pub fn is_free(&self) -> bool {
        self.per_second == 0.0
    }

    /// The moment (ms since the epoch, possibly fractional) at which funds are measured.
    fn measure_at(&self, now_ms: u64) -> f64 {
        now_ms as f64 + self.min_seconds * 1000.0 - self.payment_delay_ms as f64
    }

    /// Funds left at `now_ms` after the given payments (any order; they are sorted by time).
    pub fn remaining_funds(&self, payments: &[Payment], now_ms: u64) -> f64 {
        if payments.is_empty() {
            return 0.0;
        }
        let now = self.measure_at(now_ms);
        let sorted;
        let payments = if payments.windows(2).all(|w| w[0].time_ms <= w[1].time_ms) {
            payments
        } else {
            let mut v = payments.to_vec();
            v.sort_by_key(|p| p.time_ms);
            sorted = v;
            &sorted[..]
        };
        let mut funds = 0.0_f64;
        for (i, p) in payments.iter().enumerate() {
            let next = payments.get(i + 1).map_or(now, |n| n.time_ms as f64);
            funds += p.amount;
            funds -= (self.per_second * (next - p.time_ms as f64) / 1000.0).max(0.0);
            if funds < 0.0 {
                // The money ran out before the next payment: everything so far is spent.
                funds = 0.0;
            }
        }
        funds
    }

    /// Milliseconds of access left: `floor(funds / per_second * 1000)`, never negative.
    /// Zero for a free rate (free access has no clock; see [`Rate::is_active`]).
    pub fn remaining_ms(&self, payments: &[Payment], now_ms: u64) -> u64 {
        if self.is_free() {
            return 0;
        }
        let ms = (self.remaining_funds(payments, now_ms) / self.per_second * 1000.0).floor();
        if ms > 0.0 {
            // Saturating float-to-int conversion: more than u64::MAX (or infinitely many)
            // milliseconds are u64::MAX, not none.
            ms as u64
        } else {
            0
        }
    }

    /// Whether a buyer with these payments has access now: a free rate always does,
    /// otherwise funds must be above zero.
    pub fn is_active(&self, payments: &[Payment], now_ms: u64) -> bool {
        self.is_free() || self.remaining_funds(payments, now_ms) > 0.0
    }

    /// A plugin's answer for a buyer whose payments (for this product, in the card's
    /// currency) are `payments`: [`Grant::free`] for a free rate, else
    /// [`Refusal::NoPayment`] when there are none, [`Grant::time_ms`] with the time left
    /// while the buyer [is active](Rate::is_active), and [`Refusal::TimeRanOut`] after.
    ///
    /// Funds above zero but worth less than a millisecond still grant access, with
    /// `remaining` 0: the host asks again at once.
    pub fn grant(&self, payments: &[Payment], now_ms: u64) -> Result<Grant, Refusal> {
        if self.is_free() {
            Ok(Grant::free())
        } else if payments.is_empty() {
            Err(Refusal::NoPayment)
        } else if self.is_active(payments, now_ms) {
            Ok(Grant::time_ms(self.remaining_ms(payments, now_ms)))
        } else {
            Err(Refusal::TimeRanOut)
        }
    }
}

/// Why [`Rate::grant`] refused a buyer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// No payment from this buyer counts. Plugins usually say where they looked, with
    /// [`Refusal::reason`].
    #[error("no payment found for this buyer")]
    NoPayment,
    /// Payments were made, but the time they bought is over.
    #[error("the paid time has run out")]
    TimeRanOut,
    /// Payments were made, but together they do not reach a one-time price.
    #[error("the payments do not reach the one-time price")]
    NotEnough,
}

impl Refusal {
    /// The reason to give the buyer: `no_payment()` (the plugin's own words, e.g. "no
    /// settled invoice with this buyer's memo") for [`Refusal::NoPayment`], the refusal's
    /// own text otherwise.
    pub fn reason(self, no_payment: impl FnOnce() -> String) -> String {
        match self {
            Refusal::NoPayment => no_payment(),
            other => other.to_string(),
        }
    }
}

/// A data unit of a card payment entry: `amount` buys `interval` of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataUnit {
    /// One byte.
    Bytes,
    /// 1,000 bytes.
    Kilobytes,
    /// 10^6 bytes.
    Megabytes,
    /// 10^9 bytes.
    Gigabytes,
}

impl DataUnit {
    /// The size of one unit in bytes.
    pub fn bytes(self) -> f64 {
        match self {
            DataUnit::Bytes => 1.0,
            DataUnit::Kilobytes => 1e3,
            DataUnit::Megabytes => 1e6,
            DataUnit::Gigabytes => 1e9,
        }
    }

    /// The name used on Dazaar cards.
    pub fn as_str(self) -> &'static str {
        match self {
            DataUnit::Bytes => "bytes",
            DataUnit::Kilobytes => "kilobytes",
            DataUnit::Megabytes => "megabytes",
            DataUnit::Gigabytes => "gigabytes",
        }
    }
}

impl fmt::Display for DataUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Any unit a card payment entry may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// Access drains over time.
    Time(TimeUnit),
    /// Payments buy an allowance of bytes.
    Data(DataUnit),
    /// Payments reaching the amount buy permanent access.
    Once,
}

impl Unit {
    /// Every spelling a card may use, time units first.
    pub const NAMES: [&'static str; 8] = [
        "seconds",
        "minutes",
        "hours",
        "bytes",
        "kilobytes",
        "megabytes",
        "gigabytes",
        "once",
    ];

    /// The name used on Dazaar cards.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Time(t) => t.as_str(),
            Unit::Data(d) => d.as_str(),
            Unit::Once => "once",
        }
    }

    /// Whether the card's `interval` means anything for this unit (not for `once`).
    pub fn uses_interval(self) -> bool {
        !matches!(self, Unit::Once)
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Unit {
    type Err = PricingError;

    /// Parses the card spelling exactly (lower case, as the JS code compares units).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bytes" => Ok(Unit::Data(DataUnit::Bytes)),
            "kilobytes" => Ok(Unit::Data(DataUnit::Kilobytes)),
            "megabytes" => Ok(Unit::Data(DataUnit::Megabytes)),
            "gigabytes" => Ok(Unit::Data(DataUnit::Gigabytes)),
            "once" => Ok(Unit::Once),
            other => other.parse().map(Unit::Time),
        }
    }
}

/// A data price: how many bytes one unit of money buys. Payments add up; the allowance
/// never drains with time (the host counts the bytes it sends against it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DataRate {
    bytes_per_unit_of_money: f64,
}

/// Sums the amounts that count: finite and positive (a refund or garbage adds nothing).
fn paid(payments: &[Payment]) -> f64 {
    payments
        .iter()
        .map(|p| p.amount)
        .filter(|a| a.is_finite() && *a > 0.0)
        .sum()
}

impl DataRate {
    /// Builds a data price from a card entry: `amount` buys `interval` `unit`s.
    pub fn from_card(amount: &str, unit: DataUnit, interval: &str) -> Result<Self, PricingError> {
        let amount_v = positive(amount).ok_or_else(|| PricingError::BadAmount(amount.into()))?;
        let interval_v =
            positive(interval).ok_or_else(|| PricingError::BadInterval(interval.into()))?;
        let per = interval_v * unit.bytes() / amount_v;
        if !(per.is_finite() && per > 0.0) {
            return Err(PricingError::BadDataRate {
                amount: amount.into(),
                interval: interval.into(),
                unit,
            });
        }
        Ok(DataRate {
            bytes_per_unit_of_money: per,
        })
    }

    /// Bytes bought by one unit of money.
    pub fn bytes_per_unit_of_money(&self) -> f64 {
        self.bytes_per_unit_of_money
    }

    /// What `bytes` of data cost.
    pub fn cost(&self, bytes: u64) -> f64 {
        bytes as f64 / self.bytes_per_unit_of_money
    }

    /// The bytes all these payments bought together: `floor(sum * bytes per unit)`,
    /// saturating at `u64::MAX`. Payment times do not matter.
    pub fn allowance(&self, payments: &[Payment]) -> u64 {
        let b = (paid(payments) * self.bytes_per_unit_of_money).floor();
        if b > 0.0 {
            // Saturating float-to-int conversion.
            b as u64
        } else {
            0
        }
    }

    /// A plugin's answer: [`Refusal::NoPayment`] without payments, otherwise
    /// [`Grant::bytes`] with the whole allowance bought so far (the host subtracts what it
    /// has sent; an allowance of 0 is a grant with nothing to send).
    pub fn grant(&self, payments: &[Payment]) -> Result<Grant, Refusal> {
        if payments.is_empty() {
            Err(Refusal::NoPayment)
        } else {
            Ok(Grant::bytes(self.allowance(payments)))
        }
    }
}

/// A one-time price: once the payments add up to `amount`, access is for good.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OncePrice {
    amount: f64,
}

impl OncePrice {
    /// Builds a one-time price from a card entry's `amount` (the interval is ignored).
    pub fn from_card(amount: &str) -> Result<Self, PricingError> {
        let amount = positive(amount).ok_or_else(|| PricingError::BadAmount(amount.into()))?;
        Ok(OncePrice { amount })
    }

    /// The price.
    pub fn amount(&self) -> f64 {
        self.amount
    }

    /// Whether the payments together reach the price. A relative slack of 1e-9 absorbs
    /// float rounding in sums such as ten payments of 0.1 against 1.
    pub fn is_paid(&self, payments: &[Payment]) -> bool {
        paid(payments) >= self.amount * (1.0 - 1e-9)
    }

    /// A plugin's answer: [`Grant::once`] when paid, [`Refusal::NoPayment`] without
    /// payments, [`Refusal::NotEnough`] when the payments fall short.
    pub fn grant(&self, payments: &[Payment]) -> Result<Grant, Refusal> {
        if payments.is_empty() {
            Err(Refusal::NoPayment)
        } else if self.is_paid(payments) {
            Ok(Grant::once())
        } else {
            Err(Refusal::NotEnough)
        }
    }
}

/// A card payment entry's price under whichever rule its unit picks. This is what a
/// plugin turns a buyer's payments into a [`Grant`] with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Price {
    /// Time that drains.
    Time(Rate),
    /// An allowance of bytes.
    Data(DataRate),
    /// Permanent access once paid.
    Once(OncePrice),
}

impl Price {
    /// Builds the price from a card entry's `amount`, `unit` and `interval` (the interval
    /// is not read for `once`). Time prices have no window options here; see
    /// [`PaymentTerms::price`](crate::PaymentTerms::price).
    pub fn from_card(amount: &str, unit: &str, interval: &str) -> Result<Price, PricingError> {
        match unit.parse::<Unit>()? {
            Unit::Time(_) => Rate::from_card(amount, unit, interval).map(Price::Time),
            Unit::Data(d) => DataRate::from_card(amount, d, interval).map(Price::Data),
            Unit::Once => OncePrice::from_card(amount).map(Price::Once),
        }
    }

    /// A plugin's answer for a buyer whose payments (for this product, in the card's
    /// currency) are `payments`, by the price's rule: [`Rate::grant`],
    /// [`DataRate::grant`] or [`OncePrice::grant`].
    pub fn grant(&self, payments: &[Payment], now_ms: u64) -> Result<Grant, Refusal> {
        match self {
            Price::Time(r) => r.grant(payments, now_ms),
            Price::Data(d) => d.grant(payments),
            Price::Once(o) => o.grant(payments),
        }
    }

    /// Whether these payments grant anything now: time left, a non-empty allowance, or
    /// the one-time price reached. A plugin may stop looking for more payments once true
    /// (for data, more payments would still raise the allowance).
    pub fn is_active(&self, payments: &[Payment], now_ms: u64) -> bool {
        match self {
            Price::Time(r) => r.is_active(payments, now_ms),
            Price::Data(d) => d.allowance(payments) > 0,
            Price::Once(o) => o.is_paid(payments),
        }
    }
}

/// One payment: `amount` units of money received at `time_ms` (ms since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Payment {
    /// Units of money (e.g. satoshis).
    pub amount: f64,
    /// When it was received, in milliseconds since the Unix epoch.
    pub time_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn pay(amount: f64, time_ms: u64) -> Payment {
        Payment { amount, time_ms }
    }

    #[test]
    fn units_and_rate() {
        let r = Rate::from_card("100", "hours", "1").unwrap();
        assert!((r.rate_per_second() - 100.0 / 3600.0).abs() < 1e-12);
        let r = Rate::from_card("1000", "seconds", "600").unwrap();
        assert!((r.rate_per_second() - 1000.0 / 600.0).abs() < 1e-12);
        let r = Rate::from_card("6", "minutes", "2").unwrap();
        assert!((r.rate_per_second() - 6.0 / 120.0).abs() < 1e-12);
    }

    #[test]
    fn unknown_unit_is_an_error() {
        assert_eq!(
            Rate::from_card("1", "days", "1"),
            Err(PricingError::UnknownUnit("days".into()))
        );
        assert!(Rate::from_card("1", "Seconds", "1").is_err());
        let msg = Rate::from_card("1", "weeks", "1").unwrap_err().to_string();
        assert!(
            msg.contains("weeks") && msg.contains("seconds, minutes, hours, bytes"),
            "{msg}"
        );
    }

    #[test]
    fn bad_numbers_are_errors() {
        assert!(matches!(
            Rate::from_card("x", "seconds", "1"),
            Err(PricingError::BadAmount(_))
        ));
        assert!(matches!(
            Rate::from_card("0", "seconds", "1"),
            Err(PricingError::BadAmount(_))
        ));
        assert!(matches!(
            Rate::from_card("1", "seconds", "0"),
            Err(PricingError::BadInterval(_))
        ));
        assert!(Rate::per_second(1.0).with_min_seconds(-1.0).is_err());
    }

    #[test]
    fn extreme_prices_are_errors_not_free() {
        // Both would become a free rate (infinite, or rounded to zero) without the check.
        let huge = Rate::from_card("1e300", "seconds", "1e-300");
        assert!(
            matches!(huge, Err(PricingError::BadRate { .. })),
            "{huge:?}"
        );
        let tiny = Rate::from_card("1e-300", "hours", "1e300");
        assert!(
            matches!(tiny, Err(PricingError::BadRate { .. })),
            "{tiny:?}"
        );
        assert_eq!(
            tiny.unwrap_err().to_string(),
            "amount \"1e-300\" per \"1e300\" hours is not a usable rate"
        );
        // Extreme but computable prices are fine.
        assert!(Rate::from_card("1e300", "seconds", "1").is_ok());
        assert!(Rate::from_card("1e-300", "seconds", "1").is_ok());
    }

    #[test]
    fn remaining_time_saturates() {
        // More milliseconds than a u64 holds (here infinitely many): all of them, not none.
        let r = Rate::per_second(f64::MIN_POSITIVE);
        assert_eq!(r.remaining_ms(&[pay(1e300, T0)], T0), u64::MAX);
        let r = Rate::per_second(1.0);
        assert_eq!(r.remaining_ms(&[pay(f64::MAX, 0)], u64::MAX), u64::MAX);
    }

    // The cases of payment-tracker's own test.js, with virtual time.
    #[test]
    fn no_payments_and_zero_payment() {
        let r = Rate::per_second(1.0);
        assert!(!r.is_active(&[], T0));
        assert_eq!(r.remaining_ms(&[], T0), 0);
        let p = [pay(0.0, T0)];
        assert!(!r.is_active(&p, T0));
        assert_eq!(r.remaining_funds(&p, T0), 0.0);
    }

    #[test]
    fn past_date_has_drained() {
        let r = Rate::per_second(1.0);
        let p = [pay(100.0, 0)];
        assert!(!r.is_active(&p, T0));
        assert_eq!(r.remaining_ms(&p, T0), 0);
    }

    #[test]
    fn free_rate_is_always_active() {
        let r = Rate::per_second(0.0);
        assert!(r.is_free());
        assert!(r.is_active(&[], T0));
        assert_eq!(r.remaining_funds(&[], T0), 0.0);
    }

    #[test]
    fn drains_over_time() {
        // 0.5 units at 1/s lasts 500 ms.
        let r = Rate::per_second(1.0);
        let p = [pay(0.5, T0)];
        assert!(r.is_active(&p, T0));
        assert_eq!(r.remaining_ms(&p, T0), 500);
        assert_eq!(r.remaining_ms(&p, T0 + 200), 300);
        assert!(!r.is_active(&p, T0 + 500));
        assert!(!r.is_active(&p, T0 + 501));
    }

    #[test]
    fn min_seconds_requires_a_cushion() {
        let r = Rate::per_second(1.0).with_min_seconds(1.0).unwrap();
        assert!(!r.is_active(&[pay(0.5, T0)], T0));
        assert!(r.is_active(&[pay(1.5, T0)], T0));
        assert_eq!(r.remaining_ms(&[pay(1.5, T0)], T0), 500);
    }

    #[test]
    fn payment_delay_gives_grace() {
        let r = Rate::per_second(1.0).with_payment_delay_ms(1000);
        let p = [pay(0.5, T0)];
        assert!(r.is_active(&p, T0 + 1000));
        assert!(r.is_active(&p, T0 + 1499));
        assert!(!r.is_active(&p, T0 + 1500));
        // Both options: measured at now + 500 - 1000.
        let r = Rate::per_second(1.0)
            .with_min_seconds(0.5)
            .unwrap()
            .with_payment_delay_ms(1000);
        let p = [pay(1.0, T0)];
        assert!(r.is_active(&p, T0 + 1000));
        assert!(!r.is_active(&p, T0 + 1500));
    }

    #[test]
    fn stacking_payments() {
        // test.js "input 3": rate 10/s, 20+10+5+2+1 at 0,100,..,400 ms, measured at 1 s:
        // 38 paid, 10 spent.
        let r = Rate::per_second(10.0);
        let p = [
            pay(20.0, T0),
            pay(10.0, T0 + 100),
            pay(5.0, T0 + 200),
            pay(2.0, T0 + 300),
            pay(1.0, T0 + 400),
        ];
        let funds = r.remaining_funds(&p, T0 + 1000);
        assert!((funds - 28.0).abs() < 1e-9, "{funds}");
        assert_eq!(r.remaining_ms(&p, T0 + 1000), 2800);
    }

    #[test]
    fn gap_earns_nothing() {
        // test.js "input 4": rate 100/s, 20 at 0 runs out at 200 ms, but 10 at 150 ms tops
        // it up; everything is gone by 1 s.
        let r = Rate::per_second(100.0);
        let p = [
            pay(20.0, T0),
            pay(10.0, T0 + 150),
            pay(2.0, T0 + 200),
            pay(2.0, T0 + 300),
            pay(1.0, T0 + 400),
        ];
        assert_eq!(r.remaining_funds(&p, T0 + 1000), 0.0);
        assert!(!r.is_active(&p, T0 + 1000));

        // A payment after a gap starts from zero: 10 at 0 (lasts 10 s at 1/s), then 5 at
        // 20 s. At 21 s, 4 are left, not 10 + 5 - 21.
        let r = Rate::per_second(1.0);
        let p = [pay(10.0, T0), pay(5.0, T0 + 20_000)];
        assert_eq!(r.remaining_ms(&p, T0 + 21_000), 4000);
        // Paying before running out stacks: 10 at 0, 5 at 5 s: at 6 s, 9 left.
        let p = [pay(10.0, T0), pay(5.0, T0 + 5_000)];
        assert_eq!(r.remaining_ms(&p, T0 + 6_000), 9000);
    }

    #[test]
    fn order_does_not_matter() {
        let r = Rate::per_second(1.0);
        let a = [pay(10.0, T0), pay(5.0, T0 + 20_000)];
        let b = [pay(5.0, T0 + 20_000), pay(10.0, T0)];
        assert_eq!(
            r.remaining_ms(&a, T0 + 21_000),
            r.remaining_ms(&b, T0 + 21_000)
        );
    }

    #[test]
    fn many_small_payments() {
        // test.js "input 1": rate 10/s, 1 unit every 100 ms for 1 s (11 payments).
        let r = Rate::per_second(10.0);
        let p: Vec<_> = (0..=10).map(|i| pay(1.0, T0 + i * 100)).collect();
        assert!(r.is_active(&p, T0 + 1000));
        assert!(r.remaining_funds(&p, T0 + 1000) <= 1.0);
        assert!(r.remaining_ms(&p, T0 + 1000) <= 100);
    }

    #[test]
    fn grant_free_rate() {
        let r = Rate::per_second(0.0);
        assert_eq!(r.grant(&[], T0), Ok(Grant::free()));
        assert_eq!(r.grant(&[pay(1.0, 0)], T0), Ok(Grant::free()));
    }

    #[test]
    fn grant_without_payments() {
        let r = Rate::per_second(1.0);
        assert_eq!(r.grant(&[], T0), Err(Refusal::NoPayment));
        // A payment of nothing is a payment: the time it bought has run out.
        assert_eq!(r.grant(&[pay(0.0, T0)], T0), Err(Refusal::TimeRanOut));
    }

    #[test]
    fn grant_time_left_and_run_out() {
        let r = Rate::per_second(1.0);
        let p = [pay(2.0, T0)];
        assert_eq!(r.grant(&p, T0), Ok(Grant::time_ms(2000)));
        assert_eq!(r.grant(&p, T0 + 1500), Ok(Grant::time_ms(500)));
        // The last millisecond: funds are gone exactly at 2 s.
        assert_eq!(r.grant(&p, T0 + 2000), Err(Refusal::TimeRanOut));
        assert_eq!(r.grant(&p, u64::MAX), Err(Refusal::TimeRanOut));
        // Less than a millisecond of funds is still access, with nothing left to count.
        let r = Rate::per_second(1000.0);
        assert_eq!(r.grant(&[pay(0.5, T0)], T0), Ok(Grant::time_ms(0)));
        // More milliseconds than a u64 holds: all of them.
        let r = Rate::per_second(1.0);
        assert_eq!(
            r.grant(&[pay(f64::MAX, 0)], u64::MAX),
            Ok(Grant::time_ms(u64::MAX))
        );
    }

    #[test]
    fn grant_applies_the_window_options() {
        let r = Rate::per_second(1.0).with_min_seconds(1.0).unwrap();
        assert_eq!(r.grant(&[pay(0.5, T0)], T0), Err(Refusal::TimeRanOut));
        let r = Rate::per_second(1.0).with_payment_delay_ms(1000);
        assert_eq!(r.grant(&[pay(0.5, T0)], T0 + 1200), Ok(Grant::time_ms(300)));
    }

    #[test]
    fn refusal_reasons() {
        let mine = || "no settled invoice with this buyer's memo".to_owned();
        assert_eq!(
            Refusal::NoPayment.reason(mine),
            "no settled invoice with this buyer's memo"
        );
        assert_eq!(
            Refusal::TimeRanOut.reason(mine),
            "the paid time has run out"
        );
        assert_eq!(
            Refusal::NoPayment.to_string(),
            "no payment found for this buyer"
        );
    }

    #[test]
    fn every_unit_parses() {
        for name in Unit::NAMES {
            let unit: Unit = name.parse().unwrap();
            assert_eq!(unit.as_str(), name);
        }
        assert_eq!("once".parse::<Unit>(), Ok(Unit::Once));
        assert!(!Unit::Once.uses_interval());
        assert!("Bytes".parse::<Unit>().is_err());
        assert!("days".parse::<Unit>().is_err());
    }

    #[test]
    fn data_units_buy_bytes() {
        // 1 credit buys 10,000 bytes; 5 credits, 50,000.
        for (unit, size) in [
            ("bytes", 1u64),
            ("kilobytes", 1_000),
            ("megabytes", 1_000_000),
            ("gigabytes", 1_000_000_000),
        ] {
            let p = Price::from_card("1", unit, "10000").unwrap();
            let Price::Data(d) = p else {
                panic!("{unit}: {p:?}")
            };
            assert_eq!(d.allowance(&[pay(5.0, T0)]), 50_000 * size, "{unit}");
            assert_eq!(
                p.grant(&[pay(5.0, T0)], T0),
                Ok(Grant::bytes(50_000 * size))
            );
            // Payments add up, whenever they were made, and do not drain.
            let two = [pay(5.0, 0), pay(10.0, T0)];
            assert_eq!(p.grant(&two, u64::MAX), Ok(Grant::bytes(150_000 * size)));
            assert_eq!(p.grant(&[], T0), Err(Refusal::NoPayment));
            assert!(p.is_active(&two, u64::MAX));
        }
        // 2 credits per kilobyte: 1 credit buys 500 bytes.
        let d = DataRate::from_card("2", DataUnit::Kilobytes, "1").unwrap();
        assert_eq!(d.allowance(&[pay(1.0, T0)]), 500);
        assert!((d.cost(1000) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn data_payments_that_do_not_count() {
        let p = Price::from_card("1", "bytes", "100").unwrap();
        // A refund, a zero or garbage buys nothing and takes nothing away.
        let odd = [
            pay(-5.0, T0),
            pay(f64::NAN, T0),
            pay(f64::INFINITY, T0),
            pay(1.0, T0),
        ];
        assert_eq!(p.grant(&odd, T0), Ok(Grant::bytes(100)));
        assert_eq!(p.grant(&[pay(0.0, T0)], T0), Ok(Grant::bytes(0)));
        assert!(!p.is_active(&[pay(0.0, T0)], T0));
        // Saturates rather than wraps.
        let p = Price::from_card("1e-100", "gigabytes", "1e100").unwrap();
        assert_eq!(p.grant(&[pay(1e300, T0)], T0), Ok(Grant::bytes(u64::MAX)));
    }

    #[test]
    fn data_prices_need_usable_numbers() {
        assert!(matches!(
            Price::from_card("0", "bytes", "1"),
            Err(PricingError::BadAmount(_))
        ));
        assert!(matches!(
            Price::from_card("1", "megabytes", "x"),
            Err(PricingError::BadInterval(_))
        ));
        assert!(matches!(
            Price::from_card("1", "bytes", ""),
            Err(PricingError::BadInterval(_))
        ));
        assert!(matches!(
            Price::from_card("1e-100", "gigabytes", "1e100"),
            Ok(Price::Data(_))
        ));
        assert!(matches!(
            Price::from_card("1e300", "bytes", "1e-300"),
            Err(PricingError::BadDataRate { .. })
        ));
        assert!(matches!(
            Price::from_card("1e-300", "gigabytes", "1e300"),
            Err(PricingError::BadDataRate { .. })
        ));
    }

    #[test]
    fn once_is_paid_for_good() {
        // The interval is not read: empty or garbage is fine.
        for interval in ["", "x", "0", "1"] {
            let p = Price::from_card("3", "once", interval).unwrap();
            assert_eq!(p.grant(&[], T0), Err(Refusal::NoPayment));
            assert_eq!(p.grant(&[pay(2.0, T0)], T0), Err(Refusal::NotEnough));
            assert_eq!(
                p.grant(&[pay(2.0, T0), pay(1.0, T0 + 5)], T0),
                Ok(Grant::once())
            );
            // It does not run out.
            assert_eq!(p.grant(&[pay(3.0, 0)], u64::MAX), Ok(Grant::once()));
            assert!(p.is_active(&[pay(3.0, 0)], u64::MAX));
            assert!(!p.is_active(&[pay(2.5, 0)], 0));
        }
        // Float sums: ten payments of 0.1 pay a price of 1.
        let p = Price::from_card("1", "once", "").unwrap();
        assert_eq!(p.grant(&[pay(0.1, T0); 10], T0), Ok(Grant::once()));
        assert!(matches!(
            Price::from_card("-1", "once", "1"),
            Err(PricingError::BadAmount(_))
        ));
        assert_eq!(
            Refusal::NotEnough.to_string(),
            "the payments do not reach the one-time price"
        );
    }

    #[test]
    fn time_units_keep_their_rule() {
        let p = Price::from_card("1", "seconds", "1").unwrap();
        assert_eq!(p.grant(&[pay(2.0, T0)], T0), Ok(Grant::time_ms(2000)));
        assert_eq!(
            p.grant(&[pay(2.0, T0)], T0 + 2000),
            Err(Refusal::TimeRanOut)
        );
        assert!(matches!(
            Price::from_card("1", "hours", "1"),
            Ok(Price::Time(_))
        ));
    }

    #[test]
    fn future_payment_counts_in_full() {
        let r = Rate::per_second(1.0);
        assert_eq!(r.remaining_ms(&[pay(3.0, T0 + 10_000)], T0), 3000);
    }
}
