//! `dazaar.toml`: a full valid file, and each kind of mistake named by file, line and key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dazaar::config::{self, ConfigError};

const FULL: &str = r#"data_dir = "~/dazaar-data"
listen = "127.0.0.1:4000"
plugin_dir = "plugins"

[discovery]
dht = false
mdns = true
peers = ["192.0.2.1:4000"]
bootstrap = ["router.example:6881"]

[[sell]]
feed = "feeds/market-data"
name = "BTC/USD order book"
revalidate_ms = 500
terms = "No redistribution."
card = { description = "Order book", homepage = "https://example.com", contact = "a@example.com", provider = "Example", keywords = ["btc"] }

[[sell.payment]]
plugin = "lnd"
method = "Lightning"
currency = "SATS"
amount = "1000"
unit = "seconds"
interval = 600
min_seconds = 2
payment_delay = 5000
[sell.payment.config]
address = "https://127.0.0.1:10009"
anything_the_plugin_wants = { nested = [1, 2] }

[[sell.payment]]
plugin = "ledger"
currency = "EUR"
amount = 1.5
unit = "hours"
interval = "1"
[sell.payment.config]
file = "ledger.jsonl"

[[sell]]
feed = "/abs/feed"
name = "free stuff"

[buy]
[[buy.payment]]
plugin = "lnd"
method = "lightning"
[buy.payment.config]
address = "https://127.0.0.1:10009"
"#;

/// The per-second rate of a time price (the entries of `full_valid_file` are all time).
fn time_rate(price: &dazaar_plugin_api::Price) -> f64 {
    match price {
        dazaar_plugin_api::Price::Time(rate) => rate.rate_per_second(),
        other => panic!("not a time price: {other:?}"),
    }
}

fn file() -> PathBuf {
    PathBuf::from("/etc/dazaar/dazaar.toml")
}

fn err(text: &str) -> ConfigError {
    config::parse(text, &file()).expect_err("expected a config error")
}

fn invalid(text: &str) -> (usize, String, String) {
    match err(text) {
        ConfigError::Invalid {
            file: f,
            line,
            key,
            message,
            ..
        } => {
            assert_eq!(f, file());
            (line, key, message)
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn full_valid_file() {
    let s = config::parse(FULL, &file()).unwrap();
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap();
    assert_eq!(s.data_dir, home.join("dazaar-data"));
    assert_eq!(s.listen.to_string(), "127.0.0.1:4000");
    assert_eq!(s.plugin_dir, Path::new("/etc/dazaar/plugins"));
    assert!(!s.discovery.dht && s.discovery.mdns);
    assert_eq!(s.discovery.peers, ["192.0.2.1:4000"]);
    assert_eq!(s.discovery.bootstrap, ["router.example:6881"]);

    assert_eq!(s.sell.len(), 2);
    let a = &s.sell[0];
    assert_eq!(a.feed, Path::new("/etc/dazaar/feeds/market-data"));
    assert_eq!(a.name, "BTC/USD order book");
    assert_eq!(a.revalidate, Duration::from_millis(500));
    assert_eq!(a.terms.as_deref(), Some("No redistribution."));
    assert_eq!(a.card.provider.as_deref(), Some("Example"));
    assert_eq!(a.card.keywords, ["btc"]);

    let lnd = &a.payment[0];
    assert_eq!(lnd.plugin, "lnd");
    assert_eq!(lnd.line, 18);
    assert_eq!(lnd.terms.method.as_str(), "Lightning");
    assert_eq!(lnd.terms.amount.as_str(), "1000");
    assert_eq!(lnd.terms.interval.as_str(), "600");
    assert_eq!(lnd.terms.min_seconds, 2.0);
    assert_eq!(lnd.terms.payment_delay_ms, 5000);
    assert!((time_rate(&lnd.price) - 1000.0 / 600.0).abs() < 1e-12);
    // The plugin's own table arrives as TOML text, unknown keys and all.
    let table: toml::Table = lnd.config.parse().unwrap();
    assert_eq!(table["address"].as_str(), Some("https://127.0.0.1:10009"));
    assert!(table.contains_key("anything_the_plugin_wants"));

    let ledger = &a.payment[1];
    assert_eq!(ledger.method, None);
    assert_eq!(ledger.spec().method, None);
    assert_eq!(ledger.spec().plugin, "ledger");
    assert!((time_rate(&ledger.price) - 1.5 / 3600.0).abs() < 1e-12);

    let b = &s.sell[1];
    assert_eq!(b.feed, Path::new("/abs/feed"));
    assert_eq!(b.revalidate, Duration::from_secs(1));
    assert!(b.payment.is_empty());

    assert_eq!(s.buy.payment.len(), 1);
    assert_eq!(s.buy.payment[0].plugin, "lnd");
    assert!(s.buy.payment[0].config.contains("address"));
}

#[test]
fn empty_file_uses_defaults() {
    let s = config::parse("", Path::new("dazaar.toml")).unwrap();
    assert_eq!(s.listen.to_string(), "0.0.0.0:0");
    assert_eq!(s.plugin_dir, Path::new("plugins"));
    assert!(s.discovery.dht && s.discovery.mdns);
    assert!(s.sell.is_empty() && s.buy.payment.is_empty());
}

#[test]
fn unknown_top_level_key() {
    let (line, key, message) = invalid("listen = \"0.0.0.0:1\"\nlisten_port = 4\n");
    assert_eq!((line, key.as_str()), (2, "listen_port"));
    assert!(message.contains("unknown field `listen_port`"), "{message}");
}

#[test]
fn unknown_key_in_a_payment_entry() {
    let text = FULL.replace("unit = \"hours\"", "unt = \"hours\"");
    let (line, key, message) = invalid(&text);
    assert_eq!(key, "sell[0].payment[1].unt");
    assert_eq!(line, 35);
    assert!(message.contains("unknown field `unt`"), "{message}");
}

#[test]
fn unknown_unit() {
    let text = FULL.replace("unit = \"hours\"", "unit = \"days\"");
    let e = err(&text);
    assert_eq!(e.line(), 35);
    assert_eq!(e.key(), Some("sell[0].payment[1].unit"));
    let shown = e.to_string();
    assert!(shown.starts_with("/etc/dazaar/dazaar.toml:35:"), "{shown}");
    assert!(shown.contains("unknown unit \"days\""), "{shown}");
}

/// `[[sell.payment]] unit = ...` takes the data units and `once`; `once` needs no
/// interval, the others still do.
#[test]
fn data_units_and_once() {
    use dazaar_plugin_api::Price;
    for unit in ["bytes", "kilobytes", "megabytes", "gigabytes"] {
        let text = FULL.replace("unit = \"hours\"", &format!("unit = \"{unit}\""));
        let s = config::parse(&text, &file()).unwrap();
        let p = &s.sell[0].payment[1];
        assert!(matches!(p.price, Price::Data(_)), "{unit}: {:?}", p.price);
        assert_eq!(p.terms.unit.as_str(), unit);
    }
    let text = FULL.replace("unit = \"hours\"\ninterval = \"1\"", "unit = \"once\"");
    let s = config::parse(&text, &file()).unwrap();
    let p = &s.sell[0].payment[1];
    assert!(matches!(p.price, Price::Once(_)), "{:?}", p.price);
    assert_eq!(p.terms.interval.as_str(), "");
    let text = FULL.replace("unit = \"hours\"\ninterval = \"1\"", "unit = \"bytes\"");
    let e = err(&text);
    assert_eq!(e.key(), Some("sell[0].payment[1].interval"));
    assert!(e.to_string().contains("unit bytes needs one"), "{e}");
}

#[test]
fn bad_amount_and_interval() {
    let e = err(&FULL.replace("amount = \"1000\"", "amount = \"lots\""));
    assert_eq!((e.line(), e.key()), (22, Some("sell[0].payment[0].amount")));
    let e = err(&FULL.replace("interval = 600", "interval = 0"));
    assert_eq!(
        (e.line(), e.key()),
        (24, Some("sell[0].payment[0].interval"))
    );
    let e = err(&FULL.replace("amount = \"1000\"", "amount = true"));
    assert_eq!(e.key(), Some("sell[0].payment[0].amount"));
    assert!(e.to_string().contains("a number or a string"), "{e}");
}

#[test]
fn wrong_type() {
    let e = err(&FULL.replace("revalidate_ms = 500", "revalidate_ms = \"fast\""));
    assert_eq!((e.line(), e.key()), (14, Some("sell[0].revalidate_ms")));
    let e = err(&FULL.replace("revalidate_ms = 500", "revalidate_ms = 0"));
    assert_eq!((e.line(), e.key()), (14, Some("sell[0].revalidate_ms")));
    assert!(e.to_string().contains("outside"), "{e}");
}

#[test]
fn missing_key() {
    let e = err(&FULL.replace("name = \"free stuff\"", ""));
    assert_eq!(e.key(), Some("sell[1]"));
    assert!(e.to_string().contains("missing field `name`"), "{e}");
    assert_eq!(e.line(), 40, "the [[sell]] table that lacks it: {e}");
}

#[test]
fn syntax_error_has_a_line() {
    let e = err("listen = \"0.0.0.0:1\"\n[discovery\n");
    assert_eq!(e.line(), 2, "{e}");
}

#[test]
fn bad_address_and_plugin_name() {
    let e = err("listen = \"localhost\"\n");
    assert_eq!((e.line(), e.key()), (1, Some("listen")));
    let e = err(&FULL.replace("plugin = \"ledger\"", "plugin = \"../evil\""));
    assert_eq!((e.line(), e.key()), (32, Some("sell[0].payment[1].plugin")));
}

#[test]
fn unknown_key_in_card_and_discovery() {
    let e = err(&FULL.replace("provider = \"Example\"", "provder = \"Example\""));
    assert_eq!(e.key(), Some("sell[0].card.provder"));
    let e = err(&FULL.replace("mdns = true", "mdsn = true"));
    assert_eq!((e.line(), e.key()), (7, Some("discovery.mdsn")));
}

#[test]
fn missing_file() {
    let e = config::load(Path::new("/nonexistent/dazaar.toml")).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(
        e.to_string()
            .starts_with("/nonexistent/dazaar.toml: cannot read"),
        "{e}"
    );
}
