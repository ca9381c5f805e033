//! Currencies and amounts: Stripe counts in minor units (cents), cards in major units.

/// Currencies Stripe charges with no minor unit (amount 100 JPY is `100`).
const ZERO_DECIMAL: &[&str] = &[
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
    "xaf", "xof", "xpf",
];

/// Currencies with three decimals (amount 1.000 KWD is `1000`).
const THREE_DECIMAL: &[&str] = &["bhd", "jod", "kwd", "omr", "tnd"];

/// Card currencies this plugin lists (Stripe takes more: any ISO code of three letters is
/// accepted on a card entry).
pub const LISTED: &[&str] = &[
    "USD", "EUR", "GBP", "CHF", "JPY", "CAD", "AUD", "NZD", "SEK", "NOK", "DKK", "PLN", "CZK",
    "HUF", "SGD", "HKD", "MXN", "BRL", "INR", "ZAR",
];

/// A currency as Stripe writes it: three lowercase ASCII letters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Currency(String);

impl Currency {
    /// Parses a card or API currency code (any case).
    pub fn parse(text: &str) -> Result<Currency, String> {
        let t = text.trim();
        if t.len() == 3 && t.chars().all(|c| c.is_ascii_alphabetic()) {
            Ok(Currency(t.to_ascii_lowercase()))
        } else {
            Err(format!(
                "currency {text:?} is not a three-letter ISO code Stripe knows"
            ))
        }
    }

    /// Lowercase code, as the API wants it.
    pub fn code(&self) -> &str {
        &self.0
    }

    /// Digits after the decimal point in the API's integer amounts.
    pub fn exponent(&self) -> u32 {
        if ZERO_DECIMAL.contains(&self.0.as_str()) {
            0
        } else if THREE_DECIMAL.contains(&self.0.as_str()) {
            3
        } else {
            2
        }
    }

    /// Minor units to major units (`1999` USD cents → `19.99`).
    pub fn to_major(&self, minor: i64) -> f64 {
        minor as f64 / 10f64.powi(self.exponent() as i32)
    }

    /// A decimal text in major units to minor units, exactly (`"19.99"` → `1999`).
    /// Refuses more decimals than the currency has, signs, and zero.
    pub fn to_minor(&self, text: &str) -> Result<i64, String> {
        let t = text.trim();
        let bad = || format!("amount {text:?} is not a positive {} amount", self.0);
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        if int.is_empty() && frac.is_empty()
            || !int.chars().all(|c| c.is_ascii_digit())
            || !frac.chars().all(|c| c.is_ascii_digit())
        {
            return Err(bad());
        }
        let exp = self.exponent() as usize;
        let frac = frac.trim_end_matches('0');
        if frac.len() > exp {
            return Err(format!(
                "amount {text:?} has more decimals than {} allows ({exp})",
                self.0
            ));
        }
        let mut digits = String::with_capacity(int.len() + exp);
        digits.push_str(int);
        digits.push_str(frac);
        digits.extend(std::iter::repeat_n('0', exp - frac.len()));
        let minor: i64 = digits
            .trim_start_matches('0')
            .parse()
            .or_else(|_| {
                if digits.chars().all(|c| c == '0') {
                    Ok(0)
                } else {
                    Err(())
                }
            })
            .map_err(|_| bad())?;
        // Stripe's largest amount is eight digits; refuse anything absurd early.
        if minor <= 0 || minor > 99_999_999_999 {
            return Err(bad());
        }
        Ok(minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_units() {
        let usd = Currency::parse("USD").unwrap();
        assert_eq!(usd.code(), "usd");
        assert_eq!(usd.to_minor("19.99"), Ok(1999));
        assert_eq!(usd.to_minor("5"), Ok(500));
        assert_eq!(usd.to_minor("0.5"), Ok(50));
        assert_eq!(usd.to_minor("1.50"), Ok(150));
        assert!(usd.to_minor("1.999").is_err());
        assert!(usd.to_minor("-1").is_err());
        assert!(usd.to_minor("0").is_err());
        assert!(usd.to_minor("abc").is_err());
        assert!(usd.to_minor(".").is_err());
        assert!((usd.to_major(1999) - 19.99).abs() < 1e-9);
        let jpy = Currency::parse("jpy").unwrap();
        assert_eq!(jpy.to_minor("100"), Ok(100));
        assert!(jpy.to_minor("1.5").is_err());
        assert_eq!(Currency::parse("kwd").unwrap().to_minor("1.5"), Ok(1500));
        assert!(Currency::parse("US").is_err());
        assert!(Currency::parse("SATS").is_err());
    }
}
