//! The seller's state database through the CLI: `dazaar ledger add|list|import` and
//! `dazaar revoke` against the SQLite state in a data directory.

use std::process::Stdio;

use dazaar_tests::proc::{dazaar, dazaar_cmd, s};

/// Twenty `dazaar ledger add` processes started at once keep twenty payments: each is one
/// transaction (the ledger file of earlier versions was appended without a lock).
#[test]
fn concurrent_ledger_adds_keep_every_payment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let children: Vec<_> = (0..20u8)
        .map(|i| {
            dazaar_cmd(&[
                "--data-dir",
                s(&data),
                "ledger",
                "add",
                "--buyer",
                &hex::encode([i; 32]),
                "--amount",
                "2.5",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert!(line["id"].as_i64().is_some_and(|id| id > 0), "{line}");
    }
    let list = dazaar(&["--data-dir", s(&data), "ledger", "list", "--json"]);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 20);
    let mut buyers: Vec<&str> = lines.iter().filter_map(|l| l["buyer"].as_str()).collect();
    buyers.sort_unstable();
    buyers.dedup();
    assert_eq!(buyers.len(), 20);
    assert!(lines.iter().all(|l| l["amount"] == 2.5));
    // One buyer's only.
    let one = dazaar(&[
        "--data-dir",
        s(&data),
        "ledger",
        "list",
        "--json",
        "--buyer",
        &hex::encode([3u8; 32]),
    ]);
    assert_eq!(String::from_utf8_lossy(&one.stdout).lines().count(), 1);
    // Bad input is one clear line, and nothing is written.
    let bad = dazaar(&[
        "--data-dir",
        s(&data),
        "ledger",
        "add",
        "--buyer",
        "zz",
        "--amount",
        "1",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--buyer is not hex"));
    let bad = dazaar(&[
        "--data-dir",
        s(&data),
        "ledger",
        "add",
        "--buyer",
        &hex::encode([1u8; 32]),
        "--amount",
        "-3",
    ]);
    assert!(!bad.status.success());
    let list = dazaar(&["--data-dir", s(&data), "ledger", "list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&list.stdout).lines().count(), 20);
}

/// A ledger file of earlier versions is imported once.
#[test]
fn a_ledger_file_is_imported_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let file = dir.path().join("ledger.jsonl");
    let add = dazaar(&[
        "ledger",
        "add",
        "--file",
        s(&file),
        "--buyer",
        &hex::encode([7u8; 32]),
        "--amount",
        "4",
    ]);
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    for expected in [1, 0] {
        let out = dazaar(&[
            "--data-dir",
            s(&data),
            "ledger",
            "import",
            "--file",
            s(&file),
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["payments"], expected);
    }
    let list = dazaar(&["--data-dir", s(&data), "ledger", "list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&list.stdout).lines().count(), 1);
}

/// Two seller nodes (two data directories) on one PostgreSQL state through `--state`:
/// payments and revocations recorded on one are seen by the other; the password in the
/// URL never reaches an error.
#[test]
fn two_nodes_share_one_postgres_state() {
    let Some(url) = dazaar_tests::pg::PgServer::database("two_nodes_share_one_postgres_state")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("node-a"), dir.path().join("node-b"));
    for (data, buyer) in [(&a, 1u8), (&b, 2u8)] {
        let o = dazaar(&[
            "--data-dir",
            s(data),
            "--state",
            &url,
            "ledger",
            "add",
            "--buyer",
            &hex::encode([buyer; 32]),
            "--amount",
            "3",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for data in [&a, &b] {
        let list = dazaar(&[
            "--data-dir",
            s(data),
            "--state",
            &url,
            "ledger",
            "list",
            "--json",
        ]);
        assert_eq!(String::from_utf8_lossy(&list.stdout).lines().count(), 2);
    }
    // Neither data dir got an SQLite database.
    assert!(!a.join("state.db").exists() && !b.join("state.db").exists());
    // A wrong password: one clear line, no password in it.
    let wrong = url.replacen("postgres://postgres@", "postgres://postgres:hunter2@", 1);
    let bad = dazaar(&[
        "--data-dir",
        s(&a),
        "--state",
        &wrong.replace("/t", "/nodb_t"),
        "ledger",
        "list",
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!err.contains("hunter2"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// A seller running on PostgreSQL state: a revocation recorded through another data dir
/// on the same database refuses the buyer, and the sale before it is in the shared log.
#[test]
fn a_seller_on_postgres_state_logs_sales_and_honours_shared_revocations() {
    use dazaar_tests::proc::{buy_once, json_lines, make_text_feed};
    let Some(url) = dazaar_tests::pg::PgServer::database("a_seller_on_postgres_state") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let feed = dir.path().join("feed");
    make_text_feed(&feed, 5);
    let seller_data = dir.path().join("seller");
    let log = dir.path().join("seller.log");
    let mut seller = dazaar_tests::proc::Proc::spawn_with_stderr(
        dazaar_cmd(&[
            "--data-dir",
            s(&seller_data),
            "--state",
            &url,
            "sell",
            s(&feed),
            "--listen",
            "127.0.0.1:0",
            "--revalidate-ms",
            "100",
            "--json",
        ]),
        std::fs::File::create(&log).expect("log file"),
    );
    let info = seller.event("listening", std::time::Duration::from_secs(20));
    let key = info["sellerKey"].as_str().expect("key").to_owned();
    let addr = info["addr"].as_str().expect("addr").to_owned();
    let buyer_data = dir.path().join("buyer");
    let o = buy_once(&buyer_data, &key, &addr, &dir.path().join("out1"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The sale is in the shared log, read through another data dir.
    let other = dir.path().join("other-node");
    let sales = dazaar(&["--data-dir", s(&other), "--state", &url, "sales", "--json"]);
    let sales = json_lines(&sales.stdout);
    assert_eq!(sales.len(), 1, "{sales:?}");
    assert_eq!(sales[0]["seller"], key.as_str());
    assert_eq!(sales[0]["method"], "free");
    // Revoked from the seller's identity, recorded in the shared state: refused next time.
    let buyer = sales[0]["buyer"].as_str().expect("buyer").to_owned();
    let o = dazaar(&[
        "--data-dir",
        s(&seller_data),
        "--state",
        &url,
        "revoke",
        &buyer,
        "--feed",
        s(&feed),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = buy_once(&buyer_data, &key, &addr, &dir.path().join("out2"));
    assert!(!o.status.success(), "a revoked buyer bought again");
    // The seller still serves others (the refusal was the revocation, not a dead seller).
    let o = buy_once(
        &dir.path().join("buyer2"),
        &key,
        &addr,
        &dir.path().join("out3"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sales = dazaar(&["--data-dir", s(&other), "--state", &url, "sales", "--json"]);
    assert_eq!(json_lines(&sales.stdout).len(), 2);
    // Nothing in the seller went wrong on the way (a panicking task is only logged).
    seller.stop();
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(!log.contains("panicked"), "{log}");
}

/// Two seller nodes (one identity, one feed, one PostgreSQL state) serve one paid product
/// and keep one connection per buyer between them: a buyer live on node A is refused by
/// node B while that connection lives, served by B once it ends; when A is killed with
/// SIGKILL its buyer's lease holds until A's heartbeat lapses, then B serves the buyer.
#[test]
fn two_seller_nodes_keep_one_connection_per_buyer() {
    use dazaar::market::lease::HELD_ELSEWHERE;
    use dazaar_tests::proc::{
        buy_once, buy_until_valid, buyer_key, json_lines, make_text_feed, Proc,
    };
    use std::time::{Duration, Instant};
    let Some(url) = dazaar_tests::pg::PgServer::database("two_seller_nodes") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let feed = dir.path().join("feed");
    make_text_feed(&feed, 5);
    let ledger = dir.path().join("ledger.jsonl");
    let node = |data: &std::path::Path| ledger_seller(dir.path(), &feed, &ledger, data, &url);
    let (a_data, b_data) = (dir.path().join("node-a"), dir.path().join("node-b"));
    let (mut node_a, key, addr_a) = node(&a_data);
    // Node B gets A's identity (the same seller key for the same feed).
    std::fs::create_dir_all(&b_data).expect("mkdir");
    std::fs::copy(a_data.join("master-key"), b_data.join("master-key")).expect("copy identity");
    let (_node_b, key_b, addr_b) = node(&b_data);
    assert_eq!(key, key_b, "both nodes sell under one seller key");

    let buyer_data = dir.path().join("buyer");
    let buyer = buyer_key(&buyer_data);
    let o = dazaar(&[
        "ledger",
        "add",
        "--file",
        s(&ledger),
        "--buyer",
        &buyer,
        "--amount",
        "3600",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let live_on_a = || {
        let p = Proc::spawn(dazaar_cmd(&[
            "--data-dir",
            s(&buyer_data),
            "buy",
            &key,
            "--connect",
            &addr_a,
            "--out",
            s(&dir.path().join("out-a")),
            "--live",
            "--json",
        ]));
        p.json_where(
            Duration::from_secs(20),
            "valid on node A",
            |v: &serde_json::Value| v["event"] == "valid",
        );
        p
    };
    let refused_by_b = |out: &str| {
        let o = buy_once(&buyer_data, &key, &addr_b, &dir.path().join(out));
        assert!(!o.status.success(), "node B served a buyer node A holds");
        let lines = json_lines(&o.stdout);
        assert!(
            lines
                .iter()
                .any(|l| l["event"] == "invalid" && l["error"] == HELD_ELSEWHERE),
            "{lines:?} {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };

    // Live on A: B refuses; the connection ends: B serves.
    let mut on_a = live_on_a();
    refused_by_b("out-b1");
    on_a.stop();
    buy_until_valid(
        &buyer_data,
        &key,
        &addr_b,
        &dir.path().join("out-b2"),
        Duration::from_secs(20),
    );

    // Live on A again, A killed: the lease outlives A until its heartbeat lapses.
    let _on_a = live_on_a();
    node_a.kill9();
    let killed = Instant::now();
    refused_by_b("out-b3");
    buy_until_valid(
        &buyer_data,
        &key,
        &addr_b,
        &dir.path().join("out-b4"),
        Duration::from_secs(40),
    );
    assert!(
        killed.elapsed() >= dazaar::state::NODE_EXPIRY - dazaar::state::NODE_HEARTBEAT,
        "a dead node's lease lapsed before its heartbeat could have"
    );
}

/// The state database goes away under a running seller (PostgreSQL refuses the seller's
/// database and drops its connections): a new buyer is refused (fail closed), a buyer
/// already valid keeps what is left of its time grant and lapses when it runs out, not
/// before; when the database is back, buyers are served again.
#[test]
fn a_valid_buyer_keeps_its_grant_through_a_database_outage() {
    use dazaar::market::seller::STATE_UNAVAILABLE;
    use dazaar_tests::proc::{
        buy_once, buy_until_valid, buyer_key, json_lines, make_text_feed, Proc,
    };
    use std::time::{Duration, Instant};
    let Some(url) = dazaar_tests::pg::PgServer::database("state_outage") else {
        return;
    };
    let (admin_url, name) = url.rsplit_once('/').expect("database name");
    let admin = |sql: &str| {
        let mut c = postgres::Client::connect(&format!("{admin_url}/postgres"), postgres::NoTls)
            .expect("connect as admin");
        c.batch_execute(sql).expect(sql);
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let feed = dir.path().join("feed");
    make_text_feed(&feed, 5);
    let ledger = dir.path().join("ledger.jsonl");
    let seller_data = dir.path().join("seller");
    let (_seller, key, addr) = ledger_seller(dir.path(), &feed, &ledger, &seller_data, &url);
    let pay = |buyer: &str, amount: &str| {
        let o = dazaar(&[
            "ledger",
            "add",
            "--file",
            s(&ledger),
            "--buyer",
            buyer,
            "--amount",
            amount,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    // Buyer 1 pays for 12 seconds (from the payment's time, which is after `paid`).
    let (b1, b2) = (dir.path().join("b1"), dir.path().join("b2"));
    let paid = Instant::now();
    pay(&buyer_key(&b1), "12");
    pay(&buyer_key(&b2), "3600");
    let live = Proc::spawn(dazaar_cmd(&[
        "--data-dir",
        s(&b1),
        "buy",
        &key,
        "--connect",
        &addr,
        "--out",
        s(&dir.path().join("out1")),
        "--live",
        "--json",
    ]));
    live.event("valid", Duration::from_secs(20));

    // The database goes away.
    admin(&format!(
        "ALTER DATABASE {name} ALLOW_CONNECTIONS false; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ));
    let o = buy_once(&b2, &key, &addr, &dir.path().join("out2"));
    assert!(
        !o.status.success(),
        "a buyer was granted access with the state unreadable"
    );
    let lines = json_lines(&o.stdout);
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "invalid" && l["error"] == STATE_UNAVAILABLE),
        "{lines:?}"
    );
    // Buyer 1 lapses when its 12 paid seconds run out, not when the database went.
    live.json_where(Duration::from_secs(40), "buyer 1's lapse", |v| {
        v["event"] == "invalid"
    });
    assert!(
        paid.elapsed() >= Duration::from_secs(11),
        "a valid buyer was cut off by the outage after {:?}",
        paid.elapsed()
    );

    // The database is back: buyers are served again.
    admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"));
    buy_until_valid(
        &b2,
        &key,
        &addr,
        &dir.path().join("out3"),
        Duration::from_secs(30),
    );
}

/// `dazaar ledger add` without `--file` records a payment in the state store; a seller
/// whose ledger plugin has no `file` reads it from there and sells to that buyer, while a
/// buyer without a payment, and a payment for another product, are refused.
#[test]
fn a_ledger_plugin_without_a_file_sells_from_the_state_store() {
    use dazaar_tests::proc::{buy_once, buyer_key, json_lines, make_text_feed, sell};
    let dir = tempfile::tempdir().expect("tempdir");
    let feed = dir.path().join("feed");
    make_text_feed(&feed, 20);
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    dazaar_tests::copy_plugin("ledger", &plugins, None);
    let seller_data = dir.path().join("seller");
    let (_seller, info) = sell(&[
        "--data-dir",
        s(&seller_data),
        s(&feed),
        "--listen",
        "127.0.0.1:0",
        "--payment",
        "ledger",
        "--plugin-dir",
        s(&plugins),
        "--plugin-config",
        "reload_ms = 0",
        "--amount",
        "1",
        "--unit",
        "seconds",
        "--interval",
        "1",
    ]);
    let key = info["sellerKey"].as_str().expect("key").to_owned();
    let addr = info["addr"].as_str().expect("addr").to_owned();
    let (paid, unpaid, elsewhere) = (
        dir.path().join("paid"),
        dir.path().join("unpaid"),
        dir.path().join("elsewhere"),
    );
    let add = |buyer: &str, seller: Option<&str>| {
        let mut args = vec![
            "--data-dir",
            s(&seller_data),
            "ledger",
            "add",
            "--buyer",
            buyer,
            "--amount",
            "600",
        ];
        if let Some(seller) = seller {
            args.extend(["--seller", seller]);
        }
        let o = dazaar(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    add(&buyer_key(&paid), Some(&key));
    add(&buyer_key(&elsewhere), Some(&"ab".repeat(32)));
    let o = buy_once(&paid, &key, &addr, &dir.path().join("out-paid"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (who, data) in [("unpaid", &unpaid), ("paid elsewhere", &elsewhere)] {
        let o = buy_once(data, &key, &addr, &dir.path().join(format!("out-{who}")));
        assert!(!o.status.success(), "a buyer who {who} bought");
        assert!(
            json_lines(&o.stdout).iter().any(|l| l["event"] == "invalid"
                && l["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("no payment recorded for this buyer"))),
            "{who}: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
    // A payment recorded while selling counts without a restart.
    add(&buyer_key(&unpaid), None);
    let o = buy_once(&unpaid, &key, &addr, &dir.path().join("out-late"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `dazaar sell FEED` on the state at `url` with data dir `data`, priced by time (1 credit
/// a second) through the ledger plugin reading `ledger` (plugins copied under `dir`),
/// revalidating every 200 ms; with its seller key and address.
fn ledger_seller(
    dir: &std::path::Path,
    feed: &std::path::Path,
    ledger: &std::path::Path,
    data: &std::path::Path,
    url: &str,
) -> (dazaar_tests::proc::Proc, String, String) {
    let plugins = dir.join("plugins");
    if !plugins.exists() {
        std::fs::create_dir_all(&plugins).expect("mkdir");
        dazaar_tests::copy_plugin("ledger", &plugins, None);
    }
    let plugin_config = format!("file = {:?}\nreload_ms = 0", s(ledger));
    let p = dazaar_tests::proc::Proc::spawn(dazaar_cmd(&[
        "--data-dir",
        s(data),
        "--state",
        url,
        "sell",
        s(feed),
        "--listen",
        "127.0.0.1:0",
        "--payment",
        "ledger",
        "--plugin-dir",
        s(&plugins),
        "--plugin-config",
        &plugin_config,
        "--amount",
        "1",
        "--unit",
        "seconds",
        "--interval",
        "1",
        "--revalidate-ms",
        "200",
        "--json",
    ]));
    let info = p.event("listening", std::time::Duration::from_secs(20));
    let key = info["sellerKey"].as_str().expect("key").to_owned();
    let addr = info["addr"].as_str().expect("addr").to_owned();
    (p, key, addr)
}
