//! Pricing by data and one-time purchases, between processes with the ledger plugin:
//! the seller meters the bytes it uploads against what the buyer paid for, keeps the
//! count across a `kill -9`, and a one-time price grants access for good.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dazaar_tests::*;

/// A feed of `blocks` blocks of `size` bytes each.
fn make_block_feed(dir: &Path, blocks: usize, size: usize) {
    let o = dazaar(&["feed", "create", s(dir)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let input = dir.with_extension("bin");
    let data: Vec<u8> = (0..blocks * size).map(|i| b'a' + (i % 26) as u8).collect();
    std::fs::write(&input, data).expect("write");
    let size = size.to_string();
    let o = dazaar(&["feed", "append", s(dir), s(&input), "--block-size", &size]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `dazaar feed info DIR --json`.
fn feed_info(dir: &Path) -> serde_json::Value {
    let o = dazaar(&["feed", "info", s(dir), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    json_lines(&o.stdout).remove(0)
}

/// A seller of `feed` through the ledger plugin, with the price given as `price`
/// (`--amount`, `--unit`, `--interval`, ...).
struct Shop {
    dir: PathBuf,
    feed: PathBuf,
    plugins: PathBuf,
    ledger: PathBuf,
    seller_data: PathBuf,
    buyer_data: PathBuf,
    out: PathBuf,
}

impl Shop {
    fn new(dir: &Path) -> Shop {
        let plugins = dir.join("plugins");
        std::fs::create_dir_all(&plugins).expect("mkdir");
        copy_plugin("ledger", &plugins, None);
        Shop {
            dir: dir.to_path_buf(),
            feed: dir.join("feed"),
            plugins,
            ledger: dir.join("ledger.jsonl"),
            seller_data: dir.join("seller"),
            buyer_data: dir.join("buyer"),
            out: dir.join("bought"),
        }
    }

    /// Starts `dazaar sell` and returns it with its seller key and address.
    fn sell(&self, price: &[&str]) -> (Proc, String, String) {
        let plugin_config = format!("file = {:?}\nreload_ms = 0", s(&self.ledger));
        let mut args = vec![
            "--data-dir",
            s(&self.seller_data),
            s(&self.feed),
            "--listen",
            "127.0.0.1:0",
            "--payment",
            "ledger",
            "--plugin-dir",
            s(&self.plugins),
            "--plugin-config",
            &plugin_config,
            "--revalidate-ms",
            "200",
        ];
        args.extend_from_slice(price);
        let (seller, info) = sell(&args);
        let key = info["sellerKey"].as_str().expect("key").to_owned();
        let addr = info["addr"].as_str().expect("addr").to_owned();
        (seller, key, addr)
    }

    /// Records a payment of `amount` credits from the buyer.
    fn pay(&self, amount: &str) {
        let buyer = buyer_key(&self.buyer_data);
        let o = dazaar(&[
            "ledger",
            "add",
            "--file",
            s(&self.ledger),
            "--buyer",
            &buyer,
            "--amount",
            amount,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    /// `dazaar buy KEY --live --json` into the shop's output directory.
    fn buy_live(&self, key: &str, addr: &str) -> Proc {
        Proc::spawn(dazaar_cmd(&[
            "--data-dir",
            s(&self.buyer_data),
            "buy",
            key,
            "--connect",
            addr,
            "--out",
            s(&self.out),
            "--live",
            "--json",
        ]))
    }

    /// Blocks the buyer holds (its process must have ended).
    fn held(&self) -> u64 {
        feed_info(&self.out)["held"].as_u64().expect("held")
    }
}

const WAIT: Duration = Duration::from_secs(20);

fn used_up(v: &serde_json::Value) -> bool {
    v["event"] == "invalid" && v["error"] == "paid data is used up"
}

/// 1 credit buys 10,000 bytes; blocks are 1,000 bytes: 5 credits give 50 blocks (one
/// more or less), with `dazaar/valid` of type bytes and then `dazaar/invalid` saying the
/// paid data is used up; 10 more credits, paid while connected, resume the upload up to
/// 150 blocks.
#[test]
fn data_priced_sale_stops_at_the_allowance_and_resumes_on_payment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shop = Shop::new(dir.path());
    make_block_feed(&shop.feed, 300, 1000);
    let (_seller, key, addr) =
        shop.sell(&["--amount", "1", "--unit", "bytes", "--interval", "10000"]);
    shop.pay("5");

    let buyer = shop.buy_live(&key, &addr);
    let valid = buyer.json_where(WAIT, "valid", |v| v["event"] == "valid");
    assert_eq!(valid["info"]["type"], "bytes", "{valid}");
    let remaining = valid["info"]["remaining"].as_u64().expect("remaining");
    assert!(
        remaining > 0 && remaining <= 50_000,
        "bytes left: {remaining}"
    );
    buyer.json_where(WAIT, "the data to be used up", used_up);
    drop(buyer);
    let held = shop.held();
    assert!(
        (49..=51).contains(&held),
        "held {held} blocks for 5 credits"
    );

    // Reconnecting gives nothing more; paying 10 more while connected resumes.
    let buyer = shop.buy_live(&key, &addr);
    buyer.json_where(WAIT, "used up on reconnecting", used_up);
    shop.pay("10");
    let valid = buyer.json_where(WAIT, "valid again", |v| v["event"] == "valid");
    assert_eq!(valid["info"]["type"], "bytes", "{valid}");
    buyer.json_where(WAIT, "the data to be used up again", used_up);
    drop(buyer);
    let held = shop.held();
    assert!(
        (149..=151).contains(&held),
        "held {held} blocks for 15 credits"
    );
    let _ = &shop.dir;
}

/// The count of bytes sent is reserved in the seller's state before the bytes go out: a
/// seller killed with SIGKILL and restarted on the same state gives no unpaid block.
#[test]
fn a_killed_seller_gives_no_unpaid_block_after_restarting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shop = Shop::new(dir.path());
    make_block_feed(&shop.feed, 200, 1000);
    let price = ["--amount", "1", "--unit", "bytes", "--interval", "10000"];
    let (mut seller, key, addr) = shop.sell(&price);
    shop.pay("5");
    let buyer = shop.buy_live(&key, &addr);
    buyer.json_where(WAIT, "the data to be used up", used_up);
    seller.kill9();
    drop(buyer);
    let before = shop.held();
    assert!((49..=51).contains(&before), "held {before} blocks");

    let (_seller, key, addr) = shop.sell(&price);
    let buyer = shop.buy_live(&key, &addr);
    buyer.json_where(WAIT, "used up after the restart", used_up);
    // Give a wrongly granted upload time to arrive.
    std::thread::sleep(Duration::from_millis(1500));
    drop(buyer);
    assert_eq!(shop.held(), before, "blocks after the restart");
}

/// `--unit once --amount 3`: 2 credits are refused; 3 give live access that does not run
/// out (blocks appended later arrive, and no `dazaar/invalid` comes).
#[test]
fn a_one_time_purchase_is_for_good() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shop = Shop::new(dir.path());
    make_text_feed(&shop.feed, 10);
    let (_seller, key, addr) = shop.sell(&["--amount", "3", "--unit", "once"]);
    shop.pay("2");
    let o = buy_once(&shop.buyer_data, &key, &addr, &shop.out);
    assert!(!o.status.success(), "2 of 3 credits bought access");
    let lines = json_lines(&o.stdout);
    assert!(
        lines.iter().any(|l| l["event"] == "invalid"
            && l["error"]
                .as_str()
                .is_some_and(|e| e.ends_with("the payments do not reach the one-time price"))),
        "{lines:?}"
    );

    shop.pay("1");
    let buyer = shop.buy_live(&key, &addr);
    let valid = buyer.json_where(WAIT, "valid", |v| v["event"] == "valid");
    assert_eq!(valid["info"], serde_json::json!({"type": "once"}));
    buyer.json_where(WAIT, "the first blocks", |v| {
        v["event"] == "synced" && v["length"] == 10
    });
    // Revalidated every 200 ms for 2 s: still valid, and live appends arrive.
    std::thread::sleep(Duration::from_secs(2));
    let extra = dir.path().join("extra.txt");
    std::fs::write(&extra, "later 1\nlater 2\n").expect("write");
    assert!(dazaar(&["feed", "append", s(&shop.feed), s(&extra)])
        .status
        .success());
    let synced = buyer.json_where(WAIT, "the live appends", |v| {
        v["event"] == "invalid" || (v["event"] == "synced" && v["length"] == 12)
    });
    assert_eq!(synced["event"], "synced", "{synced}");
}

/// Cards with data units and `once` (without an interval) validate, and `dazaar quote`
/// prices data with `--bytes` and a one-time entry as its amount.
#[test]
fn cards_and_quotes_for_data_and_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = "ab".repeat(32);
    let card = serde_json::json!({
        "id": key, "name": "ticks",
        "payment": [
            {"method": "ledger", "currency": "credits", "amount": "1", "unit": "kilobytes", "interval": "10"},
            {"method": "ledger", "currency": "credits", "amount": 3, "unit": "once"},
            {"method": "ledger", "currency": "credits", "amount": "2", "unit": "minutes", "interval": "1"}
        ]
    });
    let card_file = dir.path().join("card.json");
    std::fs::write(&card_file, card.to_string()).expect("write");
    let v = dazaar(&["card", "validate", s(&card_file)]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));

    let q = dazaar(&["quote", s(&card_file), "--bytes", "50000", "--json"]);
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    let q = json_lines(&q.stdout);
    assert_eq!(q.len(), 2, "the time entry is not asked: {q:?}");
    assert_eq!(q[0]["bytes"], 50_000);
    assert!(
        (q[0]["amount"].as_f64().expect("amount") - 5.0).abs() < 1e-9,
        "{q:?}"
    );
    assert_eq!(q[1]["once"], true);
    assert!(
        (q[1]["amount"].as_f64().expect("amount") - 3.0).abs() < 1e-9,
        "{q:?}"
    );
    let q = dazaar(&[
        "quote",
        s(&card_file),
        "--seconds",
        "60",
        "--bytes",
        "1000",
        "--json",
    ]);
    assert_eq!(json_lines(&q.stdout).len(), 3);

    // A data unit still needs its interval.
    let bad = serde_json::json!({
        "id": key,
        "payment": [{"method": "ledger", "currency": "credits", "amount": "1", "unit": "bytes"}]
    });
    std::fs::write(&card_file, bad.to_string()).expect("write");
    let v = dazaar(&["card", "validate", s(&card_file)]);
    assert!(!v.status.success());
    assert!(String::from_utf8_lossy(&v.stderr).contains("interval"));
}
