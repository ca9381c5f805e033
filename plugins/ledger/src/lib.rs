//! `dazaar_ledger`: payments recorded by hand in a local ledger file.
//!
//! For tests, demos, and sellers who take payment by other means and write it down. The
//! seller's plugin reads a file of JSON lines, one payment per line:
//!
//! ```text
//! {"buyer":"<64 hex>","amount":"100","time":1700000000000}
//! {"buyer":"<64 hex>","amount":50,"time":1700000600000,"seller":"<64 hex>","note":"cash"}
//! ```
//!
//! - `buyer`: the buyer's public key (hex); `amount`: number or string, in the card's
//!   currency; `time`: when it was paid, ms since the Unix epoch.
//! - `seller` (optional): the payment counts only for that product; without it, for every
//!   product this ledger is configured on. `note` and other keys are ignored.
//! - Blank lines and lines starting with `#` are ignored; a malformed line counts for
//!   nothing (it never grants access).
//!
//! Time left follows the card's price with the payment-tracker rules
//! ([`dazaar_plugin_api::Rate`]). The file is re-read when its size or modification time
//! changes (checked at most every `reload_ms`, default 100), so a payment appended while
//! selling becomes valid without a restart. `dazaar ledger add` appends a line.
//!
//! Configuration (`[sell.payment.config]`):
//! ```toml
//! file = "~/dazaar/ledger.jsonl"   # required
//! reload_ms = 100                  # optional
//! ```
//! Card method: `ledger`, any currency.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use dazaar_plugin_api::{
    expand_home, export_payment_plugin, parse_key, Description, Grant, Key, Payment,
    PaymentInstructions, PaymentPlugin, Request,
};
use serde::Deserialize;

/// The plugin's configuration table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerConfig {
    file: String,
    #[serde(default = "default_reload_ms")]
    reload_ms: u64,
}

fn default_reload_ms() -> u64 {
    100
}

/// One line of the ledger file.
#[derive(Debug, Clone, Deserialize)]
struct Line {
    buyer: String,
    amount: serde_json::Value,
    time: u64,
    #[serde(default)]
    seller: Option<String>,
}

/// A recorded payment, with the product it is limited to (if any).
#[derive(Debug, Clone, Copy)]
struct Entry {
    seller: Option<Key>,
    payment: Payment,
}

/// The ledger as last read.
#[derive(Debug, Default)]
struct Snapshot {
    stamp: Option<(u64, SystemTime)>,
    by_buyer: HashMap<Key, Vec<Entry>>,
    bad_lines: usize,
}

/// Parses a ledger file's text.
fn parse_ledger(text: &str) -> (HashMap<Key, Vec<Entry>>, usize) {
    let mut by_buyer: HashMap<Key, Vec<Entry>> = HashMap::new();
    let mut bad = 0;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(entry) = parse_line(line) else {
            bad += 1;
            continue;
        };
        by_buyer.entry(entry.0).or_default().push(entry.1);
    }
    for list in by_buyer.values_mut() {
        list.sort_by_key(|e| e.payment.time_ms);
    }
    (by_buyer, bad)
}

fn parse_line(line: &str) -> Option<(Key, Entry)> {
    let l: Line = serde_json::from_str(line).ok()?;
    let buyer = parse_key(&l.buyer)?;
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
    Some((
        buyer,
        Entry {
            seller,
            payment: Payment {
                amount,
                time_ms: l.time,
            },
        },
    ))
}

/// The ledger verifier.
pub struct Ledger {
    path: PathBuf,
    reload: Duration,
    state: Mutex<(Option<Instant>, Snapshot)>,
}

/// Reads the config table: the ledger file (`~/` expanded) and the reload interval.
fn read_config(config: &str) -> Result<(PathBuf, Duration), String> {
    let c: LedgerConfig =
        toml::from_str(config).map_err(|e| format!("ledger config: {}", e.message()))?;
    let file = expand_home(&c.file).map_err(|e| format!("ledger config: file {e}"))?;
    Ok((file, Duration::from_millis(c.reload_ms)))
}

impl Ledger {
    /// Opens a ledger on `path` (the file may not exist yet: then nobody has paid).
    pub fn new(path: PathBuf, reload: Duration) -> Ledger {
        Ledger {
            path,
            reload,
            state: Mutex::new((None, Snapshot::default())),
        }
    }

    /// Re-reads the file if it changed and the last look is older than `reload`.
    fn refresh(&self, state: &mut (Option<Instant>, Snapshot)) {
        let now = Instant::now();
        if state
            .0
            .is_some_and(|at| now.duration_since(at) < self.reload)
        {
            return;
        }
        state.0 = Some(now);
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
        if stamp == state.1.stamp {
            return;
        }
        let (by_buyer, bad_lines) = match std::fs::read_to_string(&self.path) {
            Ok(text) => parse_ledger(&text),
            Err(_) => (HashMap::new(), 0),
        };
        state.1 = Snapshot {
            stamp,
            by_buyer,
            bad_lines,
        };
    }

    /// Malformed lines in the file as last read.
    pub fn bad_lines(&self) -> usize {
        match self.state.lock() {
            Ok(mut s) => {
                self.refresh(&mut s);
                s.1.bad_lines
            }
            Err(_) => 0,
        }
    }
}

impl PaymentPlugin for Ledger {
    fn describe() -> Description {
        Description {
            name: "ledger",
            version: env!("CARGO_PKG_VERSION"),
            methods: &["ledger"],
            currencies: &[],
        }
    }

    fn check_config(config: &str) -> Result<(), String> {
        read_config(config).map(|_| ())
    }

    fn open(config: &str) -> Result<Self, String> {
        let (file, reload) = read_config(config)?;
        Ok(Ledger::new(file, reload))
    }

    fn validate(&self, req: &Request<'_>, now_ms: u64) -> Result<Grant, String> {
        let price = req
            .terms
            .price()
            .map_err(|e| format!("bad price on the card: {e}"))?;
        let mut state = self
            .state
            .lock()
            .map_err(|_| "ledger state is poisoned".to_owned())?;
        self.refresh(&mut state);
        let payments: Vec<Payment> = state
            .1
            .by_buyer
            .get(&req.buyer)
            .into_iter()
            .flatten()
            .filter(|e| e.seller.is_none_or(|s| s == req.seller))
            .map(|e| e.payment)
            .collect();
        drop(state);
        price.grant(&payments, now_ms)
            .map_err(|r| r.reason(|| "no payment recorded for this buyer".to_owned()))
    }

    fn payment_request(
        &self,
        req: &Request<'_>,
        amount: &str,
    ) -> Result<PaymentInstructions, String> {
        Ok(PaymentInstructions {
            memo: Some(req.memo()),
            amount: Some(amount.to_owned()),
            currency: Some(req.terms.currency.to_string()),
            pay_to: req
                .terms
                .pay_to
                .as_ref()
                .map(|p| p.to_string())
                .into_option(),
            note: Some(
                "pay the seller directly, quoting the memo; the seller records it in the ledger"
                    .to_owned(),
            ),
            ..PaymentInstructions::default()
        })
    }
}

export_payment_plugin!(Ledger);

#[cfg(test)]
mod tests {
    use super::*;
    use dazaar_plugin_api::PaymentTerms;
    use std::io::Write;

    const T0: u64 = 1_700_000_000_000;

    fn line(buyer: &Key, amount: &str, time: u64) -> String {
        format!(
            "{{\"buyer\":\"{}\",\"amount\":{amount},\"time\":{time}}}\n",
            hex::encode(buyer)
        )
    }

    #[test]
    fn payments_become_time_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ledger.jsonl");
        let ledger = Ledger::new(file.clone(), Duration::ZERO);
        let terms = PaymentTerms::new("ledger", "SATS", "1", "seconds", "1");
        let buyer = [7; 32];
        let req = Request {
            buyer,
            seller: [9; 32],
            terms: &terms,
        };
        assert_eq!(
            ledger.validate(&req, T0),
            Err("no payment recorded for this buyer".into())
        );

        let mut f = std::fs::File::create(&file).unwrap();
        f.write_all(line(&buyer, "10", T0).as_bytes()).unwrap();
        f.write_all(b"not json\n# comment\n").unwrap();
        f.flush().unwrap();
        assert_eq!(ledger.validate(&req, T0 + 4000), Ok(Grant::time_ms(6000)));
        assert_eq!(ledger.bad_lines(), 1);
        assert_eq!(
            ledger.validate(&req, T0 + 11_000),
            Err("the paid time has run out".into())
        );

        // Appending a payment (string amount) is seen without reopening.
        f.write_all(line(&buyer, "\"5\"", T0 + 10_000).as_bytes())
            .unwrap();
        f.flush().unwrap();
        assert_eq!(ledger.validate(&req, T0 + 11_000), Ok(Grant::time_ms(4000)));
    }

    /// Every unit kind goes through the shared rules: data units add payments up to an
    /// allowance, `once` needs the sum to reach the amount, time drains.
    #[test]
    fn each_unit_kind() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ledger.jsonl");
        let buyer = [7; 32];
        let text = format!("{}{}", line(&buyer, "2", T0), line(&buyer, "3", T0 + 1));
        std::fs::write(&file, text).unwrap();
        let ledger = Ledger::new(file, Duration::ZERO);
        let grant = |unit: &str, amount: &str, interval: &str, now: u64| {
            let terms = PaymentTerms::new("ledger", "SATS", amount, unit, interval);
            let req = Request {
                buyer,
                seller: [9; 32],
                terms: &terms,
            };
            ledger.validate(&req, now)
        };
        let later = T0 + 1_000_000_000;
        assert_eq!(grant("bytes", "1", "10000", later), Ok(Grant::bytes(50_000)));
        assert_eq!(grant("kilobytes", "1", "2", later), Ok(Grant::bytes(10_000)));
        assert_eq!(grant("megabytes", "5", "1", later), Ok(Grant::bytes(1_000_000)));
        assert_eq!(
            grant("gigabytes", "1", "1", later),
            Ok(Grant::bytes(5_000_000_000))
        );
        assert_eq!(grant("once", "5", "", later), Ok(Grant::once()));
        assert_eq!(
            grant("once", "6", "", later),
            Err("the payments do not reach the one-time price".into())
        );
        // 5 paid (the last at T0 + 1), 1 ms spent.
        for (unit, full) in [("seconds", 5_000), ("minutes", 300_000), ("hours", 18_000_000)] {
            let g = grant(unit, "1", "1", T0 + 1).unwrap();
            assert_eq!(g.kind, dazaar_plugin_api::GrantKind::TIME, "{unit}");
            assert!((full - 2..full).contains(&g.remaining), "{unit}: {g:?}");
        }
        assert_eq!(
            grant("seconds", "1", "1", T0 + 6_000),
            Err("the paid time has run out".into())
        );
        assert!(grant("days", "1", "1", T0)
            .unwrap_err()
            .contains("bad price on the card"));
    }

    #[test]
    fn seller_scoped_lines() {
        let text = format!(
            "{{\"buyer\":\"{}\",\"amount\":5,\"time\":{T0},\"seller\":\"{}\"}}\n",
            hex::encode([1; 32]),
            hex::encode([2; 32])
        );
        let (m, bad) = parse_ledger(&text);
        assert_eq!(bad, 0);
        assert_eq!(m[&[1; 32]][0].seller, Some([2; 32]));
    }

    #[test]
    fn config_errors() {
        assert!(Ledger::check_config("file = \"x\"").is_ok());
        let e = Ledger::check_config("fil = \"x\"").unwrap_err();
        assert!(e.contains("fil"), "{e}");
        assert!(Ledger::check_config("").is_err());
    }
}
