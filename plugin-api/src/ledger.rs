//! Ledger lines: payments recorded by hand, one JSON object per line, as `dazaar ledger
//! add --file` writes them, the ledger plugin reads them, and the host imports them.
//! One parser and one writer, so the three cannot disagree on what a line means.
//!
//! ```text
//! {"buyer":"<64 hex>","amount":"100","time":1700000000000}
//! {"buyer":"<64 hex>","amount":50,"time":1700000600000,"seller":"<64 hex>","note":"cash"}
//! ```
//!
//! - `buyer`: the buyer's public key (hex); `amount`: a number or a decimal string, in
//!   the card's currency, finite and not negative; `time`: when it was paid, ms since the
//!   Unix epoch.
//! - `seller` (optional): the payment counts only for that product's seller key.
//!   `note` is for people; other keys are ignored.
//! - Blank lines and lines starting with `#` are not entries; a malformed line counts for
//!   nothing (it never grants access).
//!
//! The host also hands a plugin the ledger of its state store through the plugin's state
//! ([`ledger_view_key`]): one buyer's payments for the product, as ledger lines.

use serde::Deserialize;

use crate::memo::{parse_key, Key};

/// The prefix of state keys the host reserves: a plugin reads views of the host's own
/// state under it and cannot write there.
pub const RESERVED_KEY_PREFIX: &str = "@";

/// The prefix of the host's read-only ledger view in a plugin's state (API 1.3): the
/// value under `@ledger/<buyer hex>` is that buyer's payments for the product's seller in
/// the host's state store, as ledger lines, the oldest first. A host before this view
/// answers nothing there.
pub const LEDGER_VIEW_PREFIX: &str = "@ledger/";

/// The state key of `buyer`'s ledger view.
pub fn ledger_view_key(buyer: &Key) -> String {
    format!("{LEDGER_VIEW_PREFIX}{}", hex::encode(buyer))
}

/// The buyer a ledger view key names, if `key` is one.
pub fn parse_ledger_view_key(key: &str) -> Option<Key> {
    parse_key(key.strip_prefix(LEDGER_VIEW_PREFIX)?)
}

/// One payment in a ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerLine {
    /// Who paid.
    pub buyer: Key,
    /// The product (seller key) it is limited to, if any.
    pub seller: Option<Key>,
    /// How much, in the card's currency: finite, not negative.
    pub amount: f64,
    /// When it was paid, ms since the Unix epoch.
    pub time_ms: u64,
    /// A note for people.
    pub note: Option<String>,
}

/// A line as written, before its fields are checked.
#[derive(Deserialize)]
struct RawLine {
    buyer: String,
    amount: serde_json::Value,
    time: u64,
    #[serde(default)]
    seller: Option<String>,
    #[serde(default)]
    note: Option<String>,
}

impl LedgerLine {
    /// Reads one line (without its newline); `None` when it is not a payment.
    pub fn parse(line: &str) -> Option<LedgerLine> {
        let l: RawLine = serde_json::from_str(line).ok()?;
        let amount = match &l.amount {
            serde_json::Value::Number(n) => n.as_f64()?,
            serde_json::Value::String(s) => s.trim().parse().ok()?,
            _ => return None,
        };
        if !(amount.is_finite() && amount >= 0.0) {
            return None;
        }
        let seller = match &l.seller {
            Some(s) => Some(parse_key(s)?),
            None => None,
        };
        Some(LedgerLine {
            buyer: parse_key(&l.buyer)?,
            seller,
            amount,
            time_ms: l.time,
            note: l.note,
        })
    }

    /// The line as written (one JSON object, no newline).
    pub fn to_json(&self) -> String {
        let mut v = serde_json::json!({
            "buyer": hex::encode(self.buyer),
            "amount": self.amount,
            "time": self.time_ms,
        });
        if let Some(s) = self.seller {
            v["seller"] = hex::encode(s).into();
        }
        if let Some(n) = &self.note {
            v["note"] = n.as_str().into();
        }
        v.to_string()
    }

    /// Whether it counts for the product sold under `seller`.
    pub fn counts_for(&self, seller: &Key) -> bool {
        self.seller.is_none_or(|s| s == *seller)
    }
}

/// The entries of a ledger's text, in order: `Some` for a payment, `None` for a malformed
/// line (blank and `#` lines are skipped).
pub fn ledger_lines(text: &str) -> impl Iterator<Item = Option<LedgerLine>> + '_ {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(LedgerLine::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn lines_read_back_what_was_written() {
        let line = LedgerLine {
            buyer: [1; 32],
            seller: Some([2; 32]),
            amount: 2.5,
            time_ms: T0,
            note: Some("cash".into()),
        };
        assert_eq!(LedgerLine::parse(&line.to_json()), Some(line.clone()));
        let bare = LedgerLine {
            seller: None,
            note: None,
            ..line
        };
        assert_eq!(LedgerLine::parse(&bare.to_json()), Some(bare.clone()));
        assert!(bare.counts_for(&[9; 32]));
    }

    #[test]
    fn malformed_lines_count_for_nothing() {
        let b = "01".repeat(32);
        let text = format!(
            "# a comment\n\n{{\"buyer\":\"{b}\",\"amount\":\"5\",\"time\":{T0}}}\n\
             not json\n\
             {{\"buyer\":\"{b}\",\"amount\":-1,\"time\":{T0}}}\n\
             {{\"buyer\":\"{b}\",\"amount\":\"NaN\",\"time\":{T0}}}\n\
             {{\"buyer\":\"zz\",\"amount\":1,\"time\":{T0}}}\n\
             {{\"buyer\":\"{b}\",\"amount\":1,\"time\":{T0},\"seller\":\"short\"}}\n\
             {{\"buyer\":\"{b}\",\"amount\":true,\"time\":{T0}}}\n"
        );
        let read: Vec<_> = ledger_lines(&text).collect();
        assert_eq!(read.len(), 7);
        assert_eq!(read[0].as_ref().map(|l| l.amount), Some(5.0));
        assert!(read[1..].iter().all(Option::is_none));
    }

    #[test]
    fn view_keys() {
        let key = ledger_view_key(&[0xab; 32]);
        assert!(key.starts_with(RESERVED_KEY_PREFIX));
        assert_eq!(parse_ledger_view_key(&key), Some([0xab; 32]));
        assert_eq!(parse_ledger_view_key("@ledger/ab"), None);
        assert_eq!(parse_ledger_view_key("ledger/ab"), None);
    }
}
