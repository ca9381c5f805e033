//! `dazaar_ledger`: payments recorded by hand, in the seller's state database or in a
//! local ledger file.
//!
//! For tests, demos, and sellers who take payment by other means and write it down.
//!
//! - **Without `file`** (the default), the plugin reads the ledger of the host's state
//!   store (API 1.3), where `dazaar ledger add` (without `--file`) records payments: the
//!   host's read-only view of one buyer's payments for this product
//!   ([`dazaar_plugin_api::ledger_view_key`]). A buyer's payments are re-read at most
//!   every `reload_ms`; at most 4096 buyers are kept in memory. If the state store
//!   fails, a buyer read before keeps the payments read then (its time still runs out);
//!   a buyer never read fails closed. A host without a state store (older than API 1.3)
//!   cannot open it without `file`.
//! - **With `file`**, the plugin reads a file of JSON lines, one payment per line
//!   ([`dazaar_plugin_api::ledger`]):
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
//! selling becomes valid without a restart. `dazaar ledger add --file` appends a line.
//!
//! Configuration (`[sell.payment.config]`):
//! ```toml
//! file = "~/dazaar/ledger.jsonl"   # optional: without it, the host's state store
//! reload_ms = 100                  # optional
//! ```
//! Card method: `ledger`, any currency.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use dazaar_plugin_api::{
    expand_home, export_payment_plugin, ledger_lines, ledger_view_key, unavailable, Description,
    Grant, Key, LedgerLine, Payment, PaymentInstructions, PaymentPlugin, PluginStore, Request,
};
use serde::Deserialize;

/// The plugin's configuration table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerConfig {
    #[serde(default)]
    file: Option<String>,
    #[serde(default = "default_reload_ms")]
    reload_ms: u64,
}

fn default_reload_ms() -> u64 {
    100
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
    for line in ledger_lines(text) {
        let Some(line) = line else {
            bad += 1;
            continue;
        };
        by_buyer
            .entry(line.buyer)
            .or_default()
            .push(Entry::from(&line));
    }
    for list in by_buyer.values_mut() {
        list.sort_by_key(|e| e.payment.time_ms);
    }
    (by_buyer, bad)
}

impl From<&LedgerLine> for Entry {
    fn from(l: &LedgerLine) -> Entry {
        Entry {
            seller: l.seller,
            payment: Payment {
                amount: l.amount,
                time_ms: l.time_ms,
            },
        }
    }
}

/// The most buyers whose payments are kept from the host's state store.
const MAX_CACHED_BUYERS: usize = 4096;

/// Payments read from the host's state store, per buyer, each with when it was read.
#[derive(Debug, Default)]
struct StoreCache {
    by_buyer: HashMap<Key, (Instant, Vec<Entry>)>,
}

impl StoreCache {
    /// Keeps `entries` for `buyer`; when full, the buyer read longest ago goes first.
    fn insert(&mut self, buyer: Key, at: Instant, entries: Vec<Entry>) {
        if !self.by_buyer.contains_key(&buyer) && self.by_buyer.len() >= MAX_CACHED_BUYERS {
            if let Some(oldest) = self
                .by_buyer
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| *k)
            {
                self.by_buyer.remove(&oldest);
            }
        }
        self.by_buyer.insert(buyer, (at, entries));
    }
}

/// Where the payments are read from.
enum Source {
    /// A ledger file, as last read.
    File {
        path: PathBuf,
        state: Mutex<(Option<Instant>, Snapshot)>,
    },
    /// The host's state store, through its ledger view.
    Store {
        store: PluginStore,
        cache: Mutex<StoreCache>,
    },
}

/// The ledger verifier.
pub struct Ledger {
    source: Source,
    reload: Duration,
}

/// Reads the config table: the ledger file (`~/` expanded), if any, and the reload
/// interval.
fn read_config(config: &str) -> Result<(Option<PathBuf>, Duration), String> {
    let c: LedgerConfig =
        toml::from_str(config).map_err(|e| format!("ledger config: {}", e.message()))?;
    let file = c
        .file
        .map(|f| expand_home(&f).map_err(|e| format!("ledger config: file {e}")))
        .transpose()?;
    Ok((file, Duration::from_millis(c.reload_ms)))
}

impl Ledger {
    /// Opens a ledger on `path` (the file may not exist yet: then nobody has paid).
    pub fn new(path: PathBuf, reload: Duration) -> Ledger {
        Ledger {
            source: Source::File {
                path,
                state: Mutex::new((None, Snapshot::default())),
            },
            reload,
        }
    }

    /// Opens a ledger on the host's state store (its ledger view).
    pub fn on_store(store: PluginStore, reload: Duration) -> Ledger {
        Ledger {
            source: Source::Store {
                store,
                cache: Mutex::new(StoreCache::default()),
            },
            reload,
        }
    }

    /// Re-reads the file if it changed and the last look is older than `reload`.
    fn refresh(&self, path: &Path, state: &mut (Option<Instant>, Snapshot)) {
        let now = Instant::now();
        if state
            .0
            .is_some_and(|at| now.duration_since(at) < self.reload)
        {
            return;
        }
        state.0 = Some(now);
        let stamp = std::fs::metadata(path)
            .ok()
            .map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
        if stamp == state.1.stamp {
            return;
        }
        let (by_buyer, bad_lines) = match std::fs::read_to_string(path) {
            Ok(text) => parse_ledger(&text),
            Err(_) => (HashMap::new(), 0),
        };
        state.1 = Snapshot {
            stamp,
            by_buyer,
            bad_lines,
        };
    }

    /// Malformed lines in the file as last read (0 without a file).
    pub fn bad_lines(&self) -> usize {
        let Source::File { path, state } = &self.source else {
            return 0;
        };
        match state.lock() {
            Ok(mut s) => {
                self.refresh(path, &mut s);
                s.1.bad_lines
            }
            Err(_) => 0,
        }
    }

    /// `buyer`'s payments to `seller`.
    fn payments(&self, buyer: &Key, seller: &Key) -> Result<Vec<Payment>, String> {
        let entries = match &self.source {
            Source::File { path, state } => {
                let mut state = state
                    .lock()
                    .map_err(|_| "ledger state is poisoned".to_owned())?;
                self.refresh(path, &mut state);
                state.1.by_buyer.get(buyer).cloned().unwrap_or_default()
            }
            Source::Store { store, cache } => self.read_store(store, cache, buyer)?,
        };
        Ok(entries
            .iter()
            .filter(|e| e.seller.is_none_or(|s| s == *seller))
            .map(|e| e.payment)
            .collect())
    }

    /// `buyer`'s payments in the host's state store, re-read when older than `reload`.
    /// When the store fails, what was read before stands (its time runs out as usual);
    /// with nothing read before, the check is unavailable.
    fn read_store(
        &self,
        store: &PluginStore,
        cache: &Mutex<StoreCache>,
        buyer: &Key,
    ) -> Result<Vec<Entry>, String> {
        let lock = || {
            cache
                .lock()
                .map_err(|_| "ledger cache is poisoned".to_owned())
        };
        let now = Instant::now();
        if let Some((at, entries)) = lock()?.by_buyer.get(buyer) {
            if now.duration_since(*at) < self.reload {
                return Ok(entries.clone());
            }
        }
        match store.get(&ledger_view_key(buyer)) {
            Ok(value) => {
                let text = value
                    .map(String::from_utf8)
                    .transpose()
                    .map_err(|_| unavailable("the host's ledger view is not text"))?;
                let mut entries: Vec<Entry> = text
                    .as_deref()
                    .map(ledger_lines)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|l| l.buyer == *buyer)
                    .map(|l| Entry::from(&l))
                    .collect();
                entries.sort_by_key(|e| e.payment.time_ms);
                lock()?.insert(*buyer, now, entries.clone());
                Ok(entries)
            }
            Err(e) => match lock()?.by_buyer.get(buyer) {
                Some((_, entries)) => Ok(entries.clone()),
                None => Err(unavailable(format!("the host's state store: {e}"))),
            },
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
        match read_config(config)? {
            (Some(file), reload) => Ok(Ledger::new(file, reload)),
            (None, _) => Err(
                "ledger config: no file, and this host keeps no state store for plugins (set file, or use a host with plugin API 1.3)"
                    .into(),
            ),
        }
    }

    fn open_with_state(config: &str, state: PluginStore) -> Result<Self, String> {
        match read_config(config)? {
            (Some(file), reload) => Ok(Ledger::new(file, reload)),
            (None, reload) => Ok(Ledger::on_store(state, reload)),
        }
    }

    fn validate(&self, req: &Request<'_>, now_ms: u64) -> Result<Grant, String> {
        let price = req
            .terms
            .price()
            .map_err(|e| format!("bad price on the card: {e}"))?;
        let payments = self.payments(&req.buyer, &req.seller)?;
        price
            .grant(&payments, now_ms)
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
        assert_eq!(
            grant("bytes", "1", "10000", later),
            Ok(Grant::bytes(50_000))
        );
        assert_eq!(
            grant("kilobytes", "1", "2", later),
            Ok(Grant::bytes(10_000))
        );
        assert_eq!(
            grant("megabytes", "5", "1", later),
            Ok(Grant::bytes(1_000_000))
        );
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
        for (unit, full) in [
            ("seconds", 5_000),
            ("minutes", 300_000),
            ("hours", 18_000_000),
        ] {
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
        // Without a file: the host's state store.
        assert!(Ledger::check_config("").is_ok());
        assert!(Ledger::open("").is_err());
    }
}
